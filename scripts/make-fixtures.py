#!/usr/bin/env python3
"""make-fixtures.py — real QEMU migration files plus ground truth for mramfs tests.

Usage:
    scripts/make-fixtures.py OUTDIR [--only NAME ...] [--list] [--accel tcg|kvm|auto]
                             [--jobs N] [--qemu PATH]

Restoring a file into a fresh QEMU (the other half of the ground truth) is
scripts/qemu-load.py.

What it makes, and why
----------------------
mramfs reads QEMU "mapped-ram" migration files. Synthetic files only prove that
the reader agrees with its own writer; these fixtures are written by the real
qemu-system-x86_64 (10.x), from a real running guest, and come with independent
ground truth taken from the same QEMU process, so tests can check every byte.

The guest is Tests/Guest/guest.S (built by scripts/build-guest.sh into
OUTDIR/guest.elf), a tiny multiboot kernel that enters long mode with page
tables at 0x200000 (CR3), writes known markers and patterns into RAM, sets
recognisable registers, writes "READY!!!" at GPA 0x5000 and then polls the
i8042 keyboard controller; a QMP send-key makes it zero a 1 MiB "stale" region
and write "ZEROED!!" at 0x5000.

For every scenario the script starts QEMU (TCG by default: it boots this tiny
guest in ~0.2 s, where KVM without hardware virtualisation took 6-14 s; --accel
kvm, or auto = KVM when /dev/kvm opens read-write and a probe VM starts;
recorded as "accel"), waits for
READY!!!, checks the markers over HMP, stops the guest (except the live
scenario), saves it with `migrate file:...`, and records, with the guest
paused after the migration:

  * NAME.pcram      sparse file = the contents of the main RAM block `pc.ram`
                    (guest-physical [0, L) then [4 GiB, 4 GiB + R - L)), made
                    with HMP/QMP pmemsave through a FIFO so holes stay holes;
  * `info ramblock` and `info registers` (raw text plus parsed values);
  * the resolved machine type, lowmem L, the guest markers present;
  * NAME.elf        (pc-256, q35-256-mfd, pc-5g, q35-5g-mfd, pc-numa-5g) QEMU's
                    own `dump-guest-memory` of the same paused guest (QMP,
                    paging=false, format elf, protocol file:), written through a
                    FIFO so zero pages stay holes; manifest key elf_dump (file
                    name) and elf_dump_loads ([{paddr, offset, filesz}] of its
                    PT_LOAD headers). The script checks that every PT_LOAD byte
                    of main RAM equals NAME.pcram outside compare_exclude
                    (elf_dump_check).

Then it re-reads every file it made with a small independent reader written
here (stream header, configuration, ram block list, mapped-ram headers,
LE-64 bitmaps; the classic page records for the classic file) and compares the
main RAM block page by page with NAME.pcram. Any mismatch outside
compare_exclude (the legacy VGA/BIOS window [0xa0000, 0x100000), which reads
differently through the guest-physical address space than the RAM block holds)
is a failure. Results go into the manifest under "self_check".

Scenarios (file stems): pc-256, q35-256-mfd, pc-5g, q35-5g-mfd, pc-256-libvirt,
pc-256-libvirt-part, pc-256-live, pc-256-classic, pc-256-novmdesc, and the extra
scenarios pc-256-live-classic and pc-numa-5g (see --list).

NUMA (pc-numa-5g): -m 5G made of two memory backends as libvirt names them,
ram-node0 (1 GiB, node 0) and ram-node1 (4 GiB, node 1); there is no pc.ram.
QEMU puts the node blocks back to back in node order as the machine's main RAM
and splits that at lowmem like pc.ram, so node 0 is GPA [0, 1 GiB), node 1 is
[1 GiB, 3 GiB) and [4 GiB, 6 GiB). NAME.pcram then holds the main RAM in that
order (node 0's bytes, then node 1's), the self-check compares each node block
with its part of it, and the entry has main_ram_blocks (block names in node
order) and numa_nodes ([{node, block, size}]).
Files: NAME.mapped (mapped-ram), NAME.sav (libvirt header + mapped-ram at
offset 65713), NAME.classic (classic stream), NAME.pcram (ground truth; the
libvirt-part scenario reuses pc-256-libvirt.pcram), logs/NAME.log (QEMU output).

Pairs: pc-256, q35-256-mfd, pc-5g and q35-5g-mfd save the same stopped guest
twice, first as a classic stream (NAME.classic, multifd off), then with
mapped-ram (NAME.mapped). QEMU 10 refuses a second migration from the
'postmigrate' state ("Can't migrate the vm that was paused due to previous
migration") and `stop` does not leave it, so the script runs `cont; stop`
(~20 ms) in between; the guest only polls the keyboard then, so the two saves
differ in exactly one thing, the heartbeat u64 at 0x5008. The manifest entry
gets classic_file, classic_file_size, classic_file_info, classic_self_check
(the classic pc.ram against NAME.pcram, with the heartbeat put back),
classic_migration, classic_heartbeat (value in the classic save), heartbeat
(value in NAME.mapped and NAME.pcram), classic_differs ([{gpa, length, what,
classic_value}]) and pair. NAME.pcram is taken after the mapped-ram save, as for
every scenario.

pc-256-live-classic is a LIVE classic save, paced like pc-256-live (by scanning
the growing stream for the stale pages' records): pass 1 sends the stale region
as 0xA5 PAGE records, the guest zeroes it, a later pass re-sends those pages as
ZERO records. The self-check requires exactly that history for all 256 pages
(stale_region.first_record / last_record) and that the last record of every
pc.ram page equals the ground truth. Its entry is in the manifest's
"extra_scenarios" list (same schema as "scenarios"), so readers that enumerate
"scenarios" keep their set.

The live scenario (pc-256-live) is paced by watching the output file: QEMU
pwrite()s pages in ascending order, so once the last page of the stale region
(GPA 0x3000000, 1 MiB of 0xA5) is in the file the script cuts max-bandwidth to
10 B/s (about one page per 100 ms, so pass 1 cannot finish), sends the key,
waits for ZEROED!!, then lifts the limit. The next dirty sync re-sends the
zeroed pages as zero pages, which in mapped-ram only clears their bitmap bits:
the file keeps 256 pages of 0xA5 whose bits are clear. The script fails if it
does not find exactly that.

libvirt: the header is written before the migration and rewritten after it
("...Part" then "...Save"); QEMU 10.0 keeps the bytes before offset=N (it
truncates the file to N, not to 0) — recorded per scenario as
libvirt.prefix_written_before_migration_survived.

OUTDIR/manifest.json: {"format": 1, "qemu_version", "extra_scenarios": [...],
"guest": {marker strings,
pattern rule, stale region, registers, ...}, "scenarios": [ {name, description,
file, kind ("mapped-ram" | "libvirt" | "libvirt-part" | "classic"), machine_arg,
machine_type (resolved, from the file's configuration record, cross-checked
with query-machines), ram_bytes, multifd, accel, live, vmdesc, stream_offset,
libvirt (null or {magic, version, data_len, was_running, format, cookie_offset,
xml, ...}), ramblocks [{name, page_size, offset, used_length, max_length,
read_only}], info_ramblock_raw, pcram, pcram_layout, lowmem (L), compare_exclude,
info_registers_raw, registers (parsed), markers {name: gpa}, virtual_markers,
ready_marker_at_save, stale_region (null or {gpa, length, ...}), file_size,
file_info (what the independent reader found: blocks with header/bitmap/pages
offsets and bits_set, capabilities, sections, vmdesc offset/length),
self_check, migration, qemu_args, seconds}, ...]}. Integers are plain JSON
numbers; paths are relative to OUTDIR. With --only, other scenarios already in
the manifest (whose files still exist) are kept.

Any failure (QEMU missing, migration failed, marker missing, self-check
mismatch, live save that did not catch the stale bytes) exits non-zero with
a message; nothing is skipped silently. Uses only the Python standard library,
QEMU, and binutils (for the guest).
"""

import argparse
import concurrent.futures
import errno
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD_GUEST = os.path.join(HERE, "build-guest.sh")

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4096
CHUNK = 1 * MiB
ZERO_PAGE = bytes(PAGE)
ZERO_CHUNK = bytes(CHUNK)

# ---------------------------------------------------------------------------
# What the guest writes (keep in sync with Tests/Guest/guest.S)
# ---------------------------------------------------------------------------
READY_GPA = 0x5000
HEARTBEAT_GPA = 0x5008
READY = b"READY!!!"
ZEROED = b"ZEROED!!"
BANNER = (b"Linux version 6.1.0-mramfs-test (mramfs@test) (gcc (Debian 12.2.0-14) 12.2.0, "
          b"GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.0-1 (2026-01-01)\n")
MARKER_STRINGS = {
    "virt_marker": b"MRAMFS-VIRT-MARKER-0123456789",
    "low_marker": b"MRAMFS-LOW-MARKER",
    "linux_banner": BANNER + b"\0",
    "high_marker": b"DRAMHIGH",
}
LOW_MARKERS = {
    "ready": READY_GPA,
    "heartbeat": HEARTBEAT_GPA,
    "page_tables": 0x200000,
    "virt_marker": 0x300000,
    "low_marker": 0x400000,
    "linux_banner": 0x1000000,
    "pattern": 0x2000000,
    "stale": 0x3000000,
}
HIGH_MARKERS = {"high_marker": 0x140000000, "high_pattern": 0x140100000}
VIRT_MARKER_VA = 0xFFFFFFFF80300000
PATTERN = (0x2000000, 8 * MiB)
HIGH_PATTERN = (0x140100000, 1 * MiB)
STALE = (0x3000000, 1 * MiB)
CR3 = 0x200000
LEGACY_WINDOW = [0xA0000, 0x100000]
GUEST_REGS = {"RBX": 0x0123456789ABCDEF, "R14": 0x4D52414D46532121, "R15": 0xFEEDFACECAFEBEEF}

LIBVIRT_STREAM_OFFSET = 65713  # 92-byte header + XML + padding, deliberately unaligned


def pattern_page(gpa_page, index):
    """Expected 4 KiB of pattern page number `index` (0-based in its region) at gpa_page."""
    if index % 7 == 6:
        return ZERO_PAGE
    return struct.pack("<Q", gpa_page | 1) * (PAGE // 8)


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------
class Scenario:
    def __init__(self, name, desc, machine="pc", mem="256M", multifd=False, vga=False,
                 kind="mapped-ram", live=False, libvirt=False, derived_from=None, vmdesc=True,
                 pair_classic=False, extra=False, elf_dump=False, numa=None):
        self.name, self.desc, self.machine_arg, self.mem = name, desc, machine, mem
        self.multifd, self.vga, self.kind, self.live = multifd, vga, kind, live
        self.libvirt, self.derived_from, self.vmdesc = libvirt, derived_from, vmdesc
        # pair_classic: the same stopped guest is first saved as a classic stream
        # (NAME.classic, manifest key classic_file), then with mapped-ram (NAME.mapped).
        self.pair_classic = pair_classic
        # extra: listed under the manifest's "extra_scenarios", not "scenarios".
        self.extra = extra
        # elf_dump: also save QEMU's dump-guest-memory (ELF) of the paused guest as NAME.elf.
        self.elf_dump = elf_dump
        # numa: node sizes ("1G", "4G"): memory backends ram-node0, ram-node1, ... instead of pc.ram.
        self.numa = numa

    @property
    def main_ram_blocks(self):
        """The blocks that make the machine's main RAM, in node order."""
        return [f"ram-node{i}" for i in range(len(self.numa))] if self.numa else ["pc.ram"]

    @property
    def numa_sizes(self):
        return [self._bytes(n) for n in self.numa or []]

    @staticmethod
    def _bytes(text):
        m = re.fullmatch(r"(\d+)([MG])", text)
        return int(m.group(1)) * (MiB if m.group(2) == "M" else GiB)

    @property
    def machine_family(self):
        return self.machine_arg.split(",")[0]

    @property
    def ram_bytes(self):
        m = re.fullmatch(r"(\d+)([MG])", self.mem)
        return int(m.group(1)) * (MiB if m.group(2) == "M" else GiB)

    @property
    def ext(self):
        return {"classic": ".classic", "libvirt": ".sav", "libvirt-part": ".sav"}.get(self.kind, ".mapped")


SCENARIOS = [
    Scenario("pc-256", "pc, 256 MiB, mapped-ram, -vga std (block name with a slash); the same stopped "
             "guest also saved as a classic stream first (classic_file)", vga=True, pair_classic=True,
             elf_dump=True),
    Scenario("q35-256-mfd", "q35, 256 MiB, mapped-ram + multifd x4, -vga std; the same stopped guest "
             "also saved as a classic stream first (classic_file)", machine="q35",
             multifd=True, vga=True, pair_classic=True, elf_dump=True),
    Scenario("pc-5g", "pc, 5 GiB (3 GiB low + 2 GiB at 4 GiB), mapped-ram; the same stopped guest also "
             "saved as a classic stream first (classic_file)", mem="5G", pair_classic=True, elf_dump=True),
    Scenario("q35-5g-mfd", "q35, 5 GiB (2 GiB low + 3 GiB at 4 GiB), mapped-ram + multifd x4; the same "
             "stopped guest also saved as a classic stream first (classic_file)",
             machine="q35", mem="5G", multifd=True, pair_classic=True, elf_dump=True),
    Scenario("pc-256-libvirt", "pc, 256 MiB, mapped-ram at file offset 65713 behind a libvirt "
             "'LibvirtQemudSave' header (format 6 = sparse)", kind="libvirt", libvirt=True),
    Scenario("pc-256-libvirt-part", "copy of pc-256-libvirt with magic 'LibvirtQemudPart'",
             kind="libvirt-part", libvirt=True, derived_from="pc-256-libvirt"),
    Scenario("pc-256-live", "pc, 256 MiB, LIVE mapped-ram save: the 1 MiB stale region was written "
             "in pass 1 (0xA5) and zeroed by the guest afterwards, so its bytes are in the pages "
             "region but its bitmap bits are clear", live=True),
    Scenario("pc-256-classic", "pc, 256 MiB, classic stream (mapped-ram off), -vga std",
             kind="classic", vga=True),
    Scenario("pc-256-novmdesc", "pc, 256 MiB, mapped-ram, suppress-vmdesc=on (ends with EOF byte)",
             machine="pc,suppress-vmdesc=on", vmdesc=False),
    # Listed under "extra_scenarios" in the manifest (consumers of "scenarios" keep their set).
    Scenario("pc-256-live-classic", "pc, 256 MiB, LIVE classic save: pass 1 sent the 1 MiB stale region "
             "as 0xA5 PAGE records, the guest zeroed it while the save ran, and a later pass re-sent "
             "those pages as ZERO records (the last record of a page wins)",
             kind="classic", live=True, extra=True),
    Scenario("pc-numa-5g", "pc, 5 GiB in two NUMA nodes backed by ram-node0 (1 GiB) and ram-node1 (4 GiB), "
             "as libvirt names them; no pc.ram. The main RAM is the node blocks in node order, split at "
             "lowmem (3 GiB low + 2 GiB at 4 GiB); ram-node1 is listed first in the stream",
             mem="5G", numa=["1G", "4G"], extra=True, elf_dump=True),
]
BY_NAME = {s.name: s for s in SCENARIOS}


class Fail(Exception):
    pass


class Retry(Fail):
    """A timing race in the live scenario; the scenario is run again (at most 3 times)."""


_print_lock = threading.Lock()


def log(name, msg):
    with _print_lock:
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {msg}", flush=True)


def lowmem(machine_family, ram):
    """L of FORMAT.md §6.1 (default max-ram-below-4g)."""
    if machine_family == "pc":
        limit = 0xE0000000
        low = 0xC0000000 if ram >= limit else limit
    elif machine_family == "q35":
        low = 0x80000000 if ram >= 0xB0000000 else 0xB0000000
    else:
        raise Fail(f"unknown machine family {machine_family}")
    return min(ram, low)


def ram_off_to_gpa(off, low):
    return off if off < low else (1 << 32) + (off - low)


# ---------------------------------------------------------------------------
# QMP
# ---------------------------------------------------------------------------
class QMP:
    def __init__(self, path, proc, name, timeout=60):
        self.name, self.proc = name, proc
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise Fail(f"QEMU exited with status {proc.returncode} before QMP was up")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(path)
                break
            except OSError:
                s.close()
                if time.time() > deadline:
                    raise Fail(f"cannot connect to QMP socket {path}")
                time.sleep(0.05)
        s.settimeout(600)
        self.sock = s
        self.f = s.makefile("rwb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise Fail(f"unexpected QMP greeting {greeting}")
        self.version = greeting["QMP"]["version"]
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.f.readline()
        if not line:
            raise Fail("QMP connection closed (QEMU died?)")
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()
        while True:
            m = self._read()
            if "return" in m:
                return m["return"]
            if "error" in m:
                raise Fail(f"QMP {name} {args}: {m['error'].get('class')}: {m['error'].get('desc')}")
            # events are ignored

    def hmp(self, line):
        return self.cmd("human-monitor-command", **{"command-line": line})

    def read_phys(self, gpa, n):
        """n bytes of guest-physical memory via HMP xp (small n only)."""
        out = bytearray()
        pos = 0
        while pos < n:
            k = min(256, n - pos)
            text = self.hmp(f"xp /{k}bx {gpa + pos:#x}")
            vals = []
            for line in text.splitlines():
                if ":" not in line:
                    continue
                head, rest = line.split(":", 1)
                for tok in rest.split():
                    if not tok.startswith("0x"):
                        raise Fail(f"xp {gpa + pos:#x}: unexpected output {text.strip()!r}")
                    vals.append(int(tok, 16))
            if len(vals) != k:
                raise Fail(f"xp {gpa + pos:#x}: expected {k} bytes, got {text.strip()!r}")
            out += bytes(vals)
            pos += k
        return bytes(out)


def parse_ramblocks(text):
    blocks = []
    for line in text.splitlines():
        m = re.match(r"\s*(\S+)\s+(\d+)\s+(KiB|MiB|GiB|B)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)"
                     r"(?:\s+0x[0-9a-f]+)?(?:\s+(rw|ro))?\s*$", line)
        if not m:
            continue
        unit = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB}[m.group(3)]
        blocks.append({
            "name": m.group(1),
            "page_size": int(m.group(2)) * unit,
            "offset": int(m.group(4), 16),
            "used_length": int(m.group(5), 16),
            "max_length": int(m.group(6), 16),
            "read_only": m.group(7) == "ro" if m.group(7) else None,
        })
    return blocks


def parse_registers(text):
    regs = {}
    for k, v in re.findall(r"\b(R[A-Z0-9]{1,2}|RIP|RFL|CR[0234]|EFER|DR[0-7])\s*=([0-9a-f]+)\b", text):
        regs.setdefault(k, int(v, 16))
    segs = {}
    for m in re.finditer(r"^(ES|CS|SS|DS|FS|GS|LDT|TR)\s*=([0-9a-f]{4}) ([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+)",
                         text, re.M):
        segs[m.group(1)] = {"selector": int(m.group(2), 16), "base": int(m.group(3), 16),
                            "limit": int(m.group(4), 16), "flags": int(m.group(5), 16)}
    for m in re.finditer(r"^(GDT|IDT)=\s*([0-9a-f]+) ([0-9a-f]+)", text, re.M):
        segs[m.group(1)] = {"base": int(m.group(2), 16), "limit": int(m.group(3), 16)}
    regs["segments"] = segs
    return regs


# ---------------------------------------------------------------------------
# Independent reader for what QEMU wrote (self-check)
# ---------------------------------------------------------------------------
F_ZERO, F_MEM_SIZE, F_PAGE, F_EOS, F_CONTINUE, F_XBZRLE, F_HOOK, F_MULTIFD_FLUSH = \
    0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80, 0x200


class Cursor:
    """Reads a stream front to back through a 1 MiB read-ahead window (a classic 5 GiB
    save is over a million tiny ZERO records). `pos` may be moved freely."""

    def __init__(self, fd, pos, size):
        self.fd, self.pos, self.size = fd, pos, size
        self.buf, self.buf_at = b"", 0

    def read(self, n):
        if self.pos + n > self.size:
            raise Fail(f"stream truncated: need {n} bytes at {self.pos:#x}, file size {self.size:#x}")
        i = self.pos - self.buf_at
        if not (0 <= i and i + n <= len(self.buf)):
            self.buf = os.pread(self.fd, max(n, CHUNK), self.pos)
            self.buf_at, i = self.pos, 0
        b = self.buf[i:i + n]
        if len(b) != n:
            raise Fail(f"short read at {self.pos:#x}")
        self.pos += n
        return b

    def u8(self):
        return self.read(1)[0]

    def be16(self):
        return struct.unpack(">H", self.read(2))[0]

    def be32(self):
        return struct.unpack(">I", self.read(4))[0]

    def be64(self):
        return struct.unpack(">Q", self.read(8))[0]

    def name(self):
        return self.read(self.u8()).decode("latin-1")


def parse_stream(path, start=0, stop_after_block=None, want_pages_for="pc.ram", track=None):
    """Parse a QEMU migration stream up to the first non-RAM section.

    Returns a dict with machine_type, capabilities, blocks (name, used_length,
    header_offset, bitmap_offset, pages_offset for mapped-ram), sections seen.
    For classic streams also returns pages[want_pages_for] = {page: bytes|None}.
    With stop_after_block, returns as soon as that block's entry was read (for
    reading a file that QEMU is still writing). With track=(first, end) page
    numbers of want_pages_for, classic streams also return tracked[page] = the
    records of each such page in stream order ("a5" = a PAGE of 0xA5 bytes,
    "data" = another PAGE, "zero" = a ZERO record or an all-zero PAGE)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        c = Cursor(fd, start, size)
        info = {"stream_offset": start, "file_size": size}
        if c.read(4) != b"QEVM":
            raise Fail(f"no QEVM magic at {start:#x}")
        if c.be32() != 3:
            raise Fail("stream version is not 3")
        caps = []
        if c.u8() != 0x07:
            raise Fail("no configuration record after the header")
        info["machine_type"] = c.read(c.be32()).decode()
        info["config_subsections"] = []
        while os.pread(fd, 1, c.pos) == b"\x05":
            c.u8()
            sub = c.name()
            c.be32()  # version
            info["config_subsections"].append(sub)
            if sub == "configuration/capabilities":
                for _ in range(c.be32()):
                    caps.append(c.name())
            elif sub == "configuration/target-page-bits":
                info["target_page_bits"] = c.be32()
            elif sub == "configuration/uuid":
                info["uuid"] = c.read(16).hex()
            else:
                raise Fail(f"unknown configuration subsection {sub}")
        info["capabilities"] = caps
        mapped = "mapped-ram" in caps
        ign = "x-ignore-shared" in caps
        info["mapped_ram"] = mapped
        blocks = []
        info["blocks"] = blocks
        pages = {}
        info["pages"] = pages
        tracked = {}
        if track:
            info["tracked"] = tracked
        ram_id = None
        sections = []
        info["sections"] = sections
        counts = {"zero_records": 0, "page_records": 0}

        # A CONTINUE record refers to the block of the previous page record, even one
        # in an earlier PART section (QEMU's loader keeps the last block across calls).
        last_block = [None]

        def ram_body(first):
            saw_mem_size = False
            while True:
                w = c.be64()
                flags, addr = w & (PAGE - 1), w & ~(PAGE - 1)
                if flags == F_EOS:
                    return saw_mem_size
                if flags & F_MEM_SIZE:
                    if not first or saw_mem_size:
                        raise Fail("unexpected MEM_SIZE record")
                    saw_mem_size = True
                    total, remaining = addr, addr
                    info["mem_size_total"] = total
                    while remaining > 0:
                        entry = c.pos
                        name = c.name()
                        used = c.be64()
                        b = {"name": name, "used_length": used, "entry_offset": entry}
                        if ign:
                            b["mr_addr"] = c.be64()
                        if mapped:
                            h = c.pos
                            ver, psz, bmo, pgo = struct.unpack(">IQQQ", c.read(28))
                            if ver != 1 or psz != PAGE:
                                raise Fail(f"{name}: mapped-ram header version {ver} page_size {psz}")
                            b.update(header_offset=h, bitmap_offset=bmo, pages_offset=pgo,
                                     bitmap_size=((used // PAGE + 63) // 64) * 8)
                            if bmo != h + 28:
                                b["note"] = "bitmap_offset != header+28"
                            if pgo % PAGE:
                                raise Fail(f"{name}: pages_offset {pgo:#x} not page aligned")
                            c.pos = pgo + used
                        if used > remaining:
                            raise Fail("block list overshoots MEM_SIZE total")
                        remaining -= used
                        blocks.append(b)
                        if stop_after_block == name:
                            raise _Stop()
                    continue
                if flags & (F_ZERO | F_PAGE):
                    if mapped:
                        raise Fail(f"page record {w:#x} in a mapped-ram stream at {c.pos - 8:#x}")
                    if not flags & F_CONTINUE:
                        last_block[0] = c.name()
                    elif last_block[0] is None:
                        raise Fail("CONTINUE without a previous block")
                    cur = last_block[0]
                    idx = addr // PAGE
                    if flags & F_ZERO:
                        fill = c.u8()
                        counts["zero_records"] += 1
                        data = None if fill == 0 else bytes([fill]) * PAGE
                    else:
                        data = c.read(PAGE)
                        counts["page_records"] += 1
                        if data == ZERO_PAGE:
                            data = None
                    if track and cur == want_pages_for and track[0] <= idx < track[1]:
                        tracked.setdefault(idx, []).append(
                            "zero" if data is None else "a5" if data == b"\xa5" * PAGE else "data")
                    if cur == want_pages_for:
                        if data is None:
                            pages.pop(idx, None)
                        else:
                            pages[idx] = data
                    continue
                if flags == F_MULTIFD_FLUSH:
                    continue
                raise Fail(f"unexpected ram record word {w:#x} at {c.pos - 8:#x}")

        ids = {}
        ram_done = False
        while True:
            at = c.pos
            t = c.u8()
            if t in (0x01, 0x04):
                sid, name = c.be32(), c.name()
                inst, ver = c.be32(), c.be32()
                ids[sid] = name
                if t == 0x04:
                    if not ram_done:
                        raise Fail(f"FULL section {name} before the ram END section")
                    info["first_full_section"] = {"offset": at, "name": name}
                    break
                sections.append(["START", name, at])
                if name != "ram":
                    raise Fail(f"unexpected iterative section {name}")
                if ver != 4:
                    raise Fail(f"ram section version {ver}")
                ram_id = sid
                info["ram_section_id"] = sid
                if not ram_body(True):
                    raise Fail("ram START without MEM_SIZE")
                info["ram_start_eos_offset"] = c.pos - 8
            elif t in (0x02, 0x03):
                sid = c.be32()
                if sid != ram_id:
                    raise Fail(f"PART/END for unknown section {sid}")
                sections.append(["PART" if t == 2 else "END", "ram", at])
                ram_body(False)
                if t == 0x03:
                    ram_done = True
            elif t == 0x7E:
                sid = c.be32()
                if sid not in ids:
                    raise Fail(f"footer for unknown section id {sid} at {at:#x}")
            elif t == 0x08:
                cmd, ln = c.be16(), c.be16()
                if cmd == 7:
                    raise Fail("PACKAGED command")
                c.read(ln)
                sections.append([f"COMMAND {cmd}", "", at])
            elif t == 0x00:
                info["eof_offset"] = at
                break
            else:
                raise Fail(f"unknown record type {t:#x} at {at:#x}")
        info["record_counts"] = counts
        # vmdesc at the tail
        info["vmdesc"] = find_vmdesc(fd, size)
        info["last_byte"] = os.pread(fd, 1, size - 1)[0] if size else None
        if mapped:
            for b in blocks:
                bm = os.pread(fd, b["bitmap_size"], b["bitmap_offset"])
                b["bits_set"] = sum(bin(x).count("1") for x in bm)
        else:
            info["pages_nonzero_" + want_pages_for] = len(pages)
        return info
    except _Stop:
        return info
    finally:
        os.close(fd)


class _Stop(Exception):
    pass


def find_vmdesc(fd, size):
    tail = min(size, 8 * MiB)
    data = os.pread(fd, tail, size - tail)
    base = size - tail
    i = len(data)
    while True:
        i = data.rfind(b"\x00\x06", 0, i)
        if i < 0:
            return None
        x = i + 1
        if x + 5 <= len(data):
            ln = struct.unpack(">I", data[x + 1:x + 5])[0]
            if ln == size - (base + x + 5) and data[x + 5:x + 6] == b"{":
                js = json.loads(data[x + 5:].decode())
                return {"offset": base + x, "length": ln, "page_size": js.get("page_size"),
                        "devices": len(js.get("devices", []))}


def data_chunks(fd, start, end, base):
    """Indices k of CHUNK-sized chunks [base + k*CHUNK, ...) that hold data in [start, end)."""
    out = set()
    off = start
    while off < end:
        try:
            d = os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        if d >= end:
            break
        h = min(os.lseek(fd, d, os.SEEK_HOLE), end)
        for k in range((d - base) // CHUNK, (h - 1 - base) // CHUNK + 1):
            out.add(k)
        off = h
    return out


def ranges_of(pages):
    """[[first, last+1], ...] of consecutive page numbers."""
    out = []
    for p in sorted(pages):
        if out and out[-1][1] == p:
            out[-1][1] = p + 1
        else:
            out.append([p, p + 1])
    return out


def compare_main_ram(path, info, pcram_path, low, exclude_gpa, classic_pages=None, block="pc.ram", base=0):
    """Compare a main RAM block in the migration file (pc.ram, or one NUMA node's block, which
    is main RAM [base, base + its length)) with the pmemsave ground truth."""
    blk = next((b for b in info["blocks"] if b["name"] == block), None)
    if blk is None:
        raise Fail(f"no {block} block in the file")
    used = blk["used_length"]
    npages = used // PAGE
    if os.path.getsize(pcram_path) < base + used:
        raise Fail(f"pcram size {os.path.getsize(pcram_path):#x} < {block} end in main RAM {base + used:#x}")

    def excluded(page):
        g = ram_off_to_gpa(base + page * PAGE, low)
        return any(a <= g < b for a, b in exclude_gpa)

    res = {"pages": npages, "bits_set": 0, "mismatch_pages": [], "excluded_diff_pages": [],
           "set_bit_zero_pages": [], "clear_bit_data_pages": [], "clear_bit_data_a5_pages": 0}
    pfd = os.open(pcram_path, os.O_RDONLY)
    mfd = os.open(path, os.O_RDONLY)
    try:
        nchunks = (used + CHUNK - 1) // CHUNK
        want = data_chunks(pfd, base, base + used, base)
        if classic_pages is not None:
            want |= {p * PAGE // CHUNK for p in classic_pages}
        else:
            po, bo = blk["pages_offset"], blk["bitmap_offset"]
            bitmap = os.pread(mfd, blk["bitmap_size"], bo)
            res["bits_set"] = sum(bin(x).count("1") for x in bitmap)
            want |= data_chunks(mfd, po, po + used, po)
            ppc = CHUNK // PAGE
            for k in range(nchunks):
                if any(bitmap[k * ppc // 8:(k + 1) * ppc // 8]):
                    want.add(k)
        for k in sorted(want):
            if k >= nchunks:
                continue
            off = k * CHUNK
            n = min(CHUNK, used - off)
            exp = os.pread(pfd, n, base + off)
            if classic_pages is None:
                raw = os.pread(mfd, n, po + off)
                if len(raw) < n:
                    raw += bytes(n - len(raw))
            for i in range(n // PAGE):
                p = off // PAGE + i
                e = exp[i * PAGE:(i + 1) * PAGE]
                if classic_pages is not None:
                    got = classic_pages.get(p, ZERO_PAGE)
                else:
                    r = raw[i * PAGE:(i + 1) * PAGE]
                    bit = (bitmap[p >> 3] >> (p & 7)) & 1
                    got = r if bit else ZERO_PAGE
                    if bit and r == ZERO_PAGE:
                        res["set_bit_zero_pages"].append(p)
                    if not bit and r != ZERO_PAGE:
                        res["clear_bit_data_pages"].append(p)
                        if r == b"\xa5" * PAGE:
                            res["clear_bit_data_a5_pages"] += 1
                if got != e:
                    (res["excluded_diff_pages"] if excluded(p) else res["mismatch_pages"]).append(p)
    finally:
        os.close(pfd)
        os.close(mfd)
    if classic_pages is not None:
        res["bits_set"] = None
        res["nonzero_pages_in_stream"] = len(classic_pages)
    # compact representation (ram offsets in bytes)
    out = {"pages": res["pages"], "bits_set": res["bits_set"]}
    if "nonzero_pages_in_stream" in res:
        out["nonzero_pages_in_stream"] = res["nonzero_pages_in_stream"]
    for key in ("mismatch_pages", "excluded_diff_pages", "set_bit_zero_pages", "clear_bit_data_pages"):
        out[key.replace("_pages", "_ranges")] = [[base + a * PAGE, base + b * PAGE] for a, b in ranges_of(res[key])]
        out[key.replace("_pages", "_count")] = len(res[key])
    out["clear_bit_data_a5_pages"] = res["clear_bit_data_a5_pages"]
    return out


def compare_main_ram_blocks(path, info, pcram_path, low, exclude_gpa, blocks):
    """compare_main_ram over the main RAM blocks in node order, merged into one result whose
    ranges are main RAM offsets (as for pc.ram)."""
    results, base = [], 0
    for name in blocks:
        results.append(compare_main_ram(path, info, pcram_path, low, exclude_gpa, block=name, base=base))
        base += next(b["used_length"] for b in info["blocks"] if b["name"] == name)
    if len(results) == 1:
        return results[0]
    out = {}
    for r in results:
        for k, v in r.items():
            out[k] = out.get(k, [] if isinstance(v, list) else 0) + v
    return out


# ---------------------------------------------------------------------------
# QEMU's own dump-guest-memory (ELF), and a check of it against the ground truth
# ---------------------------------------------------------------------------
def qmp_into_sparse(fifo, fd, base, command, what, timeout):
    """Runs `command()` (a QMP command that writes to the path `fifo`) while a reader thread
    copies what arrives into `fd` from offset `base`, writing only the non-zero pages, so the
    file stays sparse. Returns the number of bytes QEMU wrote."""
    if os.path.exists(fifo):
        os.unlink(fifo)
    os.mkfifo(fifo, 0o600)
    result = {"n": 0, "err": None}

    def reader():
        try:
            rfd = os.open(fifo, os.O_RDONLY)
            try:
                try:
                    import fcntl
                    fcntl.fcntl(rfd, 1031, MiB)  # F_SETPIPE_SZ
                except OSError:
                    pass
                buf = bytearray(CHUNK)
                mv = memoryview(buf)
                while True:
                    got = 0
                    while got < CHUNK:
                        r = os.readv(rfd, [mv[got:]])
                        if r == 0:
                            break
                        got += r
                    if got == 0:
                        break
                    if got < CHUNK or buf != ZERO_CHUNK:  # bytearray == bytes: memcmp
                        write_nonzero_pages(fd, mv[:got], base + result["n"])
                    result["n"] += got
                    if got < CHUNK:
                        break
            finally:
                os.close(rfd)
        except Exception as e:  # noqa: BLE001
            result["err"] = e

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        try:
            command()
        except Fail:
            try:  # unblock the reader
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
            raise
        t.join(timeout)
        if t.is_alive():
            raise Fail(f"{what} reader did not finish")
        if result["err"]:
            raise Fail(f"{what} reader: {result['err']}")
    finally:
        os.unlink(fifo)
    return result["n"]


def dump_guest_memory_sparse(q, out_path, workdir):
    """QMP dump-guest-memory (paging=false, format elf) of the paused guest into a FIFO whose
    reader writes only the non-zero pages of the stream, so the ELF file is sparse."""
    fifo = os.path.join(workdir, "dump.fifo")
    tmp = out_path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        n = qmp_into_sparse(
            fifo, fd, 0,
            lambda: q.cmd("dump-guest-memory", paging=False, protocol=f"file:{fifo}", format="elf"),
            "dump-guest-memory", 300)
        os.ftruncate(fd, n)
    finally:
        os.close(fd)
    os.replace(tmp, out_path)


def elf_loads(path):
    """The PT_LOAD program headers of a 64-bit little-endian ELF core: [{paddr, offset, filesz}]."""
    with open(path, "rb") as f:
        eh = f.read(64)
        if eh[:4] != b"\x7fELF" or eh[4] != 2 or eh[5] != 1:
            raise Fail(f"{path}: not a 64-bit little-endian ELF file")
        phoff, = struct.unpack_from("<Q", eh, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", eh, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    loads = []
    for i in range(phnum):
        p_type, _flags, off, _vaddr, paddr, filesz = struct.unpack_from("<IIQQQQ", table, i * phentsize)
        if p_type == 1:
            loads.append({"paddr": paddr, "offset": off, "filesz": filesz})
    return loads


def check_elf_dump(elf_path, pcram_path, parts, exclude_gpa):
    """Every PT_LOAD byte that is main RAM (parts: [(gpa, size, pcram_offset)]) must equal the
    ground truth, outside exclude_gpa. Compares only where either file holds data."""
    loads = elf_loads(elf_path)
    res = {"loads": len(loads), "compared_bytes": 0, "excluded_diff_ranges": [], "main_ram_not_in_dump": [],
           "other_loads": []}

    def next_data(fd, off):
        try:
            return os.lseek(fd, off, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                return None
            raise

    dfd = os.open(elf_path, os.O_RDONLY)
    pfd = os.open(pcram_path, os.O_RDONLY)
    try:
        for ld in loads:
            lo, hi = ld["paddr"], ld["paddr"] + ld["filesz"]
            covered = 0
            for gpa, size, poff in parts:
                g0, g1 = max(lo, gpa), min(hi, gpa + size)
                if g0 >= g1:
                    continue
                covered += g1 - g0
                dbase, pbase = ld["offset"] + (g0 - lo), poff + (g0 - gpa)
                g = g0
                while g < g1:
                    # Skip to the first data in either file; holes in both are zeros in both.
                    d_at = next_data(dfd, dbase + g - g0)
                    p_at = next_data(pfd, pbase + g - g0)
                    starts = [g0 + (d_at - dbase)] if d_at is not None else []
                    starts += [g0 + (p_at - pbase)] if p_at is not None else []
                    if not starts:
                        break
                    g = max(g, min(starts) // PAGE * PAGE)
                    if g >= g1:
                        break
                    n = min(CHUNK, g1 - g)
                    a = os.pread(dfd, n, dbase + g - g0)
                    b = os.pread(pfd, n, pbase + g - g0)
                    res["compared_bytes"] += n
                    if a != b:
                        for i in range(0, n, PAGE):
                            if a[i:i + PAGE] != b[i:i + PAGE]:
                                page = g + i
                                if not any(x <= page < y for x, y in exclude_gpa):
                                    raise Fail(f"{elf_path}: GPA {page:#x} differs from the ground truth "
                                               f"outside {exclude_gpa}")
                                r = res["excluded_diff_ranges"]
                                if r and r[-1][1] == page:
                                    r[-1][1] = page + PAGE
                                else:
                                    r.append([page, page + PAGE])
                    g += n
            if covered < ld["filesz"]:
                res["other_loads"].append({"paddr": lo, "filesz": ld["filesz"], "main_ram_bytes": covered})
        # Main RAM that no PT_LOAD covers (the VGA window when a VGA device maps it).
        for gpa, size, _ in parts:
            pos = gpa
            for lo, hi in sorted((ld["paddr"], ld["paddr"] + ld["filesz"]) for ld in loads):
                if hi <= pos or lo >= gpa + size:
                    continue
                if lo > pos:
                    res["main_ram_not_in_dump"].append([pos, lo])
                pos = max(pos, hi)
            if pos < gpa + size:
                res["main_ram_not_in_dump"].append([pos, gpa + size])
    finally:
        os.close(dfd)
        os.close(pfd)
    for a, b in res["main_ram_not_in_dump"]:
        if not any(x <= a and b <= y for x, y in exclude_gpa):
            raise Fail(f"{elf_path}: main RAM [{a:#x}, {b:#x}) is in no PT_LOAD segment")
    return loads, res


# ---------------------------------------------------------------------------
# Ground truth: sparse pmemsave through a FIFO
# ---------------------------------------------------------------------------
def write_nonzero_pages(fd, mv, off):
    """pwrite only the non-zero 4 KiB pages of mv (runs coalesced), so holes = zero pages."""
    n = len(mv)
    p = 0
    while p < n:
        while p < n and mv[p:p + PAGE] == ZERO_PAGE[:min(PAGE, n - p)]:
            p += PAGE
        q = p
        while q < n and mv[q:q + PAGE] != ZERO_PAGE[:min(PAGE, n - q)]:
            q += PAGE
        if q > p:
            os.pwrite(fd, mv[p:min(q, n)], off + p)
        p = q


def pmemsave_sparse(q, parts, out_path, total, workdir):
    """parts: [(gpa, size, file_offset)]; writes a sparse file of `total` bytes."""
    tmp = out_path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, total)
        fifo = os.path.join(workdir, "pmem.fifo")
        for gpa, size, foff in parts:
            n = qmp_into_sparse(
                fifo, fd, foff, lambda: q.cmd("pmemsave", val=gpa, size=size, filename=fifo), "pmemsave", 120)
            if n != size:
                raise Fail(f"pmemsave {gpa:#x}+{size:#x}: got {n:#x} bytes")
    finally:
        os.close(fd)
    os.replace(tmp, out_path)


# ---------------------------------------------------------------------------
# libvirt header
# ---------------------------------------------------------------------------
def libvirt_xml(machine_type, ram):
    return (
        "<domain type='kvm'>\n"
        "  <name>mramfs-test</name>\n"
        "  <uuid>6d72616d-6673-4000-8000-746573740001</uuid>\n"
        f"  <memory unit='KiB'>{ram // KiB}</memory>\n"
        f"  <currentMemory unit='KiB'>{ram // KiB}</currentMemory>\n"
        "  <vcpu placement='static'>1</vcpu>\n"
        "  <os>\n"
        f"    <type arch='x86_64' machine='{machine_type}'>hvm</type>\n"
        "    <kernel>/var/lib/libvirt/images/mramfs-guest.elf</kernel>\n"
        "  </os>\n"
        "  <features>\n    <acpi/>\n  </features>\n"
        "  <clock offset='utc'/>\n"
        "  <on_poweroff>destroy</on_poweroff>\n"
        "  <on_reboot>restart</on_reboot>\n"
        "  <on_crash>destroy</on_crash>\n"
        "  <devices>\n"
        "    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n"
        "    <controller type='pci' index='0' model='pci-root'/>\n"
        "    <memballoon model='none'/>\n"
        "  </devices>\n"
        "</domain>\n"
    )


def libvirt_header(magic, xml, stream_offset):
    data_len = stream_offset - 92
    xb = xml.encode() + b"\0"
    if len(xb) > data_len:
        raise Fail("libvirt XML too long")
    hdr = magic + struct.pack("<IIIII", 2, data_len, 0, 6, 0) + bytes(14 * 4)
    assert len(hdr) == 92
    return hdr + xb + bytes(data_len - len(xb))


def sparse_copy(src, dst):
    sfd = os.open(src, os.O_RDONLY)
    dfd = os.open(dst + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        size = os.fstat(sfd).st_size
        os.ftruncate(dfd, size)
        off = 0
        while off < size:
            try:
                d = os.lseek(sfd, off, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            h = os.lseek(sfd, d, os.SEEK_HOLE)
            p = d
            while p < h:
                b = os.pread(sfd, min(8 * MiB, h - p), p)
                os.pwrite(dfd, b, p)
                p += len(b)
            off = h
    finally:
        os.close(sfd)
        os.close(dfd)
    os.replace(dst + ".tmp", dst)


# ---------------------------------------------------------------------------
# Running QEMU
# ---------------------------------------------------------------------------
def kvm_usable(qemu):
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError as e:
        return False, f"/dev/kvm: {e.strerror}"
    try:
        p = subprocess.run([qemu, "-machine", "none", "-accel", "kvm", "-display", "none",
                            "-nodefaults", "-S", "-qmp", "stdio"],
                           input=b'{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n',
                           capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False, "KVM probe timed out"
    if p.returncode != 0:
        return False, "KVM probe failed: " + p.stderr.decode(errors="replace").strip()[-300:]
    return True, "ok"


class Run:
    """One QEMU process for one scenario."""

    def __init__(self, sc, ctx):
        self.sc, self.ctx = sc, ctx
        self.workdir = tempfile.mkdtemp(prefix="mramfs-fx-")
        self.sock = os.path.join(self.workdir, "qmp.sock")
        self.proc = None
        self.q = None

    def start(self):
        sc, ctx = self.sc, self.ctx
        args = [ctx.qemu, "-machine", sc.machine_arg, "-accel", ctx.accel, "-m", sc.mem, "-smp", "1",
                "-display", "none", "-nodefaults", "-no-user-config",
                "-qmp", f"unix:{self.sock},server=on,wait=off",
                "-kernel", ctx.guest]
        if sc.vga:
            args += ["-vga", "std"]
        for i, size in enumerate(sc.numa or []):
            # As libvirt does: one backend per node, named ram-node<N>.
            args += ["-object", f"memory-backend-ram,id=ram-node{i},size={size}",
                     "-numa", f"node,nodeid={i},memdev=ram-node{i}"]
        self.args = args
        os.makedirs(os.path.join(ctx.outdir, "logs"), exist_ok=True)
        self.logf = open(os.path.join(ctx.outdir, "logs", sc.name + ".log"), "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.logf, stderr=subprocess.STDOUT)
        self.q = QMP(self.sock, self.proc, sc.name)

    def qemu_log_tail(self):
        try:
            with open(os.path.join(self.ctx.outdir, "logs", self.sc.name + ".log"), "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            try:
                if self.q:
                    self.q.cmd("quit")
            except Exception:  # noqa: BLE001
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if hasattr(self, "logf"):
            self.logf.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def wait_ready(q, name, timeout):
    t0 = time.time()
    while True:
        b = q.read_phys(READY_GPA, 8)
        if b == READY:
            return time.time() - t0
        if b == ZEROED:
            raise Fail("guest says ZEROED!! before any key was sent (spurious keyboard byte?)")
        if time.time() - t0 > timeout:
            raise Fail(f"guest did not write READY!!! at {READY_GPA:#x} within {timeout}s (saw {b!r})")
        time.sleep(0.1)


def check_markers(q, sc, high):
    for name in ("virt_marker", "low_marker", "linux_banner"):
        s = MARKER_STRINGS[name]
        got = q.read_phys(LOW_MARKERS[name], len(s))
        if got != s:
            raise Fail(f"marker {name} at {LOW_MARKERS[name]:#x}: expected {s!r}, got {got!r}")
    gpa = q.hmp(f"gva2gpa {VIRT_MARKER_VA:#x}").strip()
    if gpa != f"gpa: {LOW_MARKERS['virt_marker']:#x}":
        raise Fail(f"gva2gpa {VIRT_MARKER_VA:#x}: {gpa!r}")
    regions = [PATTERN] + ([HIGH_PATTERN] if high else [])
    for base, ln in regions:
        for i in (0, 1, 5, 6, 7, 13, ln // PAGE - 1):
            g = base + i * PAGE
            got = q.read_phys(g, 16) + q.read_phys(g + PAGE - 16, 16)
            exp = pattern_page(g, i)
            if got != exp[:16] + exp[-16:]:
                raise Fail(f"pattern page {i} at {g:#x}: got {got.hex()}")
    if high:
        got = q.read_phys(HIGH_MARKERS["high_marker"], 8)
        if got != MARKER_STRINGS["high_marker"]:
            raise Fail(f"DRAMHIGH missing at {HIGH_MARKERS['high_marker']:#x}: {got!r}")
    st = q.read_phys(STALE[0], 16) + q.read_phys(STALE[0] + STALE[1] - 16, 16)
    if st != b"\xa5" * 32:
        raise Fail(f"stale region not filled with 0xA5: {st.hex()}")


def check_pcram(pcram, low, high, live):
    """The ground truth file must hold the guest's markers at the pc.ram offsets of §6.1."""
    def at(gpa, n):
        off = gpa if gpa < (1 << 32) else low + gpa - (1 << 32)
        return os.pread(fd, n, off)
    fd = os.open(pcram, os.O_RDONLY)
    try:
        for name in ("virt_marker", "low_marker", "linux_banner"):
            if at(LOW_MARKERS[name], len(MARKER_STRINGS[name])) != MARKER_STRINGS[name]:
                raise Fail(f"{pcram}: marker {name} not at its pc.ram offset")
        regions = [PATTERN] + ([HIGH_PATTERN] if high else [])
        for base, ln in regions:
            for i in range(ln // PAGE):
                if at(base + i * PAGE, PAGE) != pattern_page(base + i * PAGE, i):
                    raise Fail(f"{pcram}: pattern page {base + i * PAGE:#x} wrong")
        if high and at(HIGH_MARKERS["high_marker"], 8) != MARKER_STRINGS["high_marker"]:
            raise Fail(f"{pcram}: DRAMHIGH not at pc.ram offset {low + HIGH_MARKERS['high_marker'] - (1 << 32):#x}")
        want = bytes(STALE[1]) if live else b"\xa5" * STALE[1]
        if at(STALE[0], STALE[1]) != want:
            raise Fail(f"{pcram}: stale region is not {'zero' if live else '0xA5'}")
        if at(READY_GPA, 8) != (ZEROED if live else READY):
            raise Fail(f"{pcram}: wrong marker at {READY_GPA:#x}")
    finally:
        os.close(fd)


def migrate(run, uri, caps, params, live_hook=None, timeout=600):
    q = run.q
    q.cmd("migrate-set-capabilities",
          capabilities=[{"capability": k, "state": v} for k, v in caps.items()])
    if params:
        q.cmd("migrate-set-parameters", **params)
    q.cmd("migrate", uri=uri)
    t0 = time.time()
    hooked = False
    while True:
        st = q.cmd("query-migrate")
        status = st.get("status")
        if status == "completed":
            if live_hook and not hooked:
                raise Retry("live migration completed before the key was sent; nothing would be tested")
            return st
        if status in ("failed", "cancelled"):
            raise Fail(f"migration {status}: {st.get('error-desc', '(no error-desc)')}")
        if live_hook and not hooked:
            if live_hook(st):
                hooked = True
        if time.time() - t0 > timeout:
            raise Fail(f"migration still {status} after {timeout}s")
        time.sleep(0.01 if live_hook and not hooked else 0.05)


def classic_page_sent(path, off, state):
    """Whether a classic stream QEMU is still writing holds a PAGE record of pc.ram offset `off`
    with 0xA5 data. Scans only what was added since the last call (per offset)."""
    pats = [struct.pack(">Q", off | F_PAGE | F_CONTINUE) + b"\xa5" * 64,
            struct.pack(">Q", off | F_PAGE) + b"\x06pc.ram" + b"\xa5" * 64]
    scan = state.setdefault("scan", {})
    pos = scan.get(off, 0)
    overlap = max(len(p) for p in pats)
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            data = f.read()
    except OSError:
        return False
    if any(p in data for p in pats):
        return True
    scan[off] = max(0, pos + len(data) - overlap)
    return False


def run_scenario(sc, ctx):
    name = sc.name
    t_start = time.time()
    run = Run(sc, ctx)
    path = os.path.join(ctx.outdir, name + sc.ext)
    pcram = os.path.join(ctx.outdir, name + ".pcram")
    classic_path = os.path.join(ctx.outdir, name + ".classic") if sc.pair_classic else None
    elf_path = os.path.join(ctx.outdir, name + ".elf") if sc.elf_dump else None
    for p in (path, pcram, classic_path, elf_path):
        if p and os.path.exists(p):
            os.unlink(p)
    ram = sc.ram_bytes
    low = lowmem(sc.machine_family, ram)
    high = ram > low and (1 << 32) + (ram - low) >= HIGH_PATTERN[0] + HIGH_PATTERN[1]
    stream_offset = LIBVIRT_STREAM_OFFSET if sc.libvirt else 0
    entry = {"name": name, "description": sc.desc}
    live_info = {}
    pair = None
    try:
        run.start()
        qemu_version = run.q.version["qemu"]
        machines = run.q.cmd("query-machines")
        fam = sc.machine_family
        resolved = next((m["name"] for m in machines if m.get("alias") == fam or m["name"] == fam), None)
        if resolved is None:
            raise Fail(f"QEMU does not know machine {fam}")
        boot = wait_ready(run.q, name, ctx.boot_timeout)
        log(name, f"guest ready after {boot:.1f}s ({ctx.accel})")
        check_markers(run.q, sc, high)
        if not sc.live:
            run.q.cmd("stop")
        if sc.pair_classic:
            # The same stopped guest, saved twice: first a classic stream (multifd off: a
            # file: URI needs mapped-ram for multifd), then with mapped-ram (capabilities
            # reset). QEMU 10 refuses to migrate from 'postmigrate' ("Can't migrate the vm
            # that was paused due to previous migration"), and `stop` does not leave that
            # state, so the guest is let run for a moment (cont; stop) in between. The guest
            # then only polls the keyboard with interrupts off, so the one thing it changes is
            # its heartbeat counter (u64 at HEARTBEAT_GPA); the self-check below proves that
            # the classic stream equals the ground truth everywhere else.
            hb_classic = run.q.read_phys(HEARTBEAT_GPA, 8)
            t_c = time.time()
            st_c = migrate(run, f"file:{classic_path}", {"mapped-ram": False, "multifd": False}, {})
            pair = {"st": st_c, "seconds": round(time.time() - t_c, 2),
                    "runstate_after": run.q.cmd("query-status").get("status"),
                    "heartbeat": struct.unpack("<Q", hb_classic)[0]}
            log(name, f"classic save of the stopped guest completed in {pair['seconds']:.1f}s")
            run.q.cmd("cont")
            time.sleep(0.02)
            run.q.cmd("stop")
            if run.q.cmd("query-status").get("status") != "paused":
                raise Fail(f"guest not paused after cont/stop: {run.q.cmd('query-status')}")
        caps = {"mapped-ram": sc.kind != "classic", "multifd": sc.multifd}
        params = {}
        if sc.multifd:
            params["multifd-channels"] = 4
        uri = f"file:{path}" + (f",offset={stream_offset}" if stream_offset else "")
        prefix_survived = None
        if sc.libvirt:
            # Write the header BEFORE migrating too, to record whether QEMU keeps it.
            with open(path, "wb") as f:
                f.write(libvirt_header(b"LibvirtQemudPart", libvirt_xml(resolved, ram), stream_offset))
        hook = None
        if sc.live:
            # Pace pass 1 by watching the file: QEMU pwrite()s pages in ascending order, so
            # once the last stale page holds 0xA5 the region is in the file. Then throttle
            # the migration to a crawl (10 B/s ~ one page per 100 ms window), so pass 1
            # cannot finish and converge while the guest zeroes the region.
            params["max-bandwidth"] = 8 * MiB
            stale_first = STALE[0]
            stale_last = STALE[0] + STALE[1] - PAGE

            def page_in_file(off):
                if sc.kind == "classic":
                    return classic_page_sent(path, off, live_info)
                try:
                    with open(path, "rb") as f:
                        f.seek(live_info["po"] + off)
                        return f.read(PAGE) == b"\xa5" * PAGE
                except OSError:
                    return False

            def ram_stats():
                st = run.q.cmd("query-migrate")
                r = st.get("ram", {})
                return st.get("status"), {k: r.get(k) for k in
                                          ("transferred", "dirty-sync-count", "normal", "duplicate")}

            def hook(st):
                if "po" not in live_info and sc.kind != "classic":
                    try:
                        inf = parse_stream(path, 0, stop_after_block="pc.ram")
                        live_info["po"] = next(b for b in inf["blocks"] if b["name"] == "pc.ram")["pages_offset"]
                    except (Fail, StopIteration, OSError):
                        return False
                if "slow" not in live_info:
                    if not page_in_file(stale_first):
                        return False
                    run.q.cmd("migrate-set-parameters", **{"max-bandwidth": 1 * MiB})
                    live_info["slow"] = True
                if not page_in_file(stale_last):
                    return False
                run.q.cmd("migrate-set-parameters", **{"max-bandwidth": 10})
                status, live_info["at_key"] = ram_stats()
                if status != "active":
                    raise Retry(f"live migration is '{status}' before the key could be sent")
                log(name, f"stale region is in the file; sending a key (ram {live_info['at_key']})")
                run.q.cmd("send-key", keys=[{"type": "qcode", "data": "a"}])
                t0 = time.time()
                while run.q.read_phys(READY_GPA, 8) != ZEROED:
                    if time.time() - t0 > 30:
                        raise Fail("guest did not write ZEROED!! after send-key")
                    time.sleep(0.02)
                status, live_info["at_zeroed"] = ram_stats()
                if status != "active":
                    raise Retry(f"live migration '{status}' before the guest zeroed the region")
                log(name, "guest zeroed the stale region; letting the migration finish")
                run.q.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
                return True
        t_mig = time.time()
        st = migrate(run, uri, caps, params, live_hook=hook)
        mig_secs = time.time() - t_mig
        log(name, f"migration completed in {mig_secs:.1f}s")
        status = run.q.cmd("query-status")
        if status.get("running"):
            raise Fail(f"guest still running after the migration: {status}")
        ready_now = run.q.read_phys(READY_GPA, 8)
        if ready_now != (ZEROED if sc.live else READY):
            raise Fail(f"unexpected marker at {READY_GPA:#x} after saving: {ready_now!r}")
        # ground truth, guest paused
        ramblock_raw = run.q.hmp("info ramblock")
        ramblocks = parse_ramblocks(ramblock_raw)
        if not all(any(b["name"] == n for b in ramblocks) for n in sc.main_ram_blocks):
            raise Fail(f"no {sc.main_ram_blocks} in info ramblock (or cannot parse it):\n{ramblock_raw}")
        if sc.numa and [next(b["used_length"] for b in ramblocks if b["name"] == n)
                        for n in sc.main_ram_blocks] != sc.numa_sizes:
            raise Fail(f"NUMA node blocks are not {sc.numa}:\n{ramblock_raw}")
        regs_raw = run.q.hmp("info registers")
        regs = parse_registers(regs_raw)
        if regs.get("CR3") != CR3:
            raise Fail(f"CR3 is {regs.get('CR3')}, expected {CR3:#x}")
        for k, v in GUEST_REGS.items():
            if regs.get(k) != v:
                raise Fail(f"{k} is {regs.get(k)}, expected {v:#x}")
        parts = [(0, min(ram, low), 0)]
        if ram > low:
            parts.append((1 << 32, ram - low, low))
        t_pm = time.time()
        pmemsave_sparse(run.q, parts, pcram, ram, run.workdir)
        log(name, f"pmemsave ground truth in {time.time() - t_pm:.1f}s")
        if elf_path:
            t_dump = time.time()
            dump_guest_memory_sparse(run.q, elf_path, run.workdir)
            log(name, f"dump-guest-memory (ELF) in {time.time() - t_dump:.1f}s")
    except Fail as e:
        tail = run.qemu_log_tail()
        raise type(e)(f"{e}" + (f"\n--- QEMU log tail ---\n{tail}" if tail.strip() else "")) from None
    finally:
        run.stop()

    os.chmod(path, 0o644)
    libvirt = None
    if sc.libvirt:
        with open(path, "r+b") as f:
            head = f.read(stream_offset)
            prefix_survived = head[:16] == b"LibvirtQemudPart"
            if not prefix_survived and head != bytes(stream_offset):
                raise Fail(f"QEMU wrote non-zero bytes into the first {stream_offset} bytes")
            xml = libvirt_xml(resolved, ram)
            f.seek(0)
            f.write(libvirt_header(b"LibvirtQemudSave", xml, stream_offset))
        libvirt = {"magic": "LibvirtQemudSave", "version": 2, "data_len": stream_offset - 92,
                   "was_running": 0, "format": 6, "cookie_offset": 0, "xml": xml,
                   "prefix_written_before_migration_survived": prefix_survived}

    check_pcram(pcram, low, high, sc.live)

    # self-check with the independent reader
    stale_pages = (STALE[0] // PAGE, (STALE[0] + STALE[1]) // PAGE)
    info = parse_stream(path, stream_offset, track=stale_pages if sc.live and sc.kind == "classic" else None)
    tracked = info.pop("tracked", None)
    if info["machine_type"] != resolved:
        raise Fail(f"machine type in file {info['machine_type']} != QEMU's {resolved}")
    if sc.kind == "classic":
        if info["mapped_ram"]:
            raise Fail("classic file lists mapped-ram")
    elif info["capabilities"] != ["mapped-ram"]:
        raise Fail(f"unexpected capabilities {info['capabilities']}")
    if sc.vmdesc and not info["vmdesc"]:
        raise Fail("no vmdesc JSON at the end of the file")
    if not sc.vmdesc and (info["vmdesc"] or info["last_byte"] != 0):
        raise Fail("suppress-vmdesc: file does not end with the EOF byte")
    file_blocks = {b["name"]: b["used_length"] for b in info["blocks"]}
    qemu_blocks = {b["name"]: b["used_length"] for b in ramblocks}
    if file_blocks != qemu_blocks:
        raise Fail(f"block list differs from info ramblock: file {file_blocks} qemu {qemu_blocks}")
    classic_pages = info.pop("pages") if sc.kind == "classic" else None
    info.pop("pages", None)
    if os.path.getsize(pcram) != ram:
        raise Fail(f"pcram size {os.path.getsize(pcram):#x} != RAM size {ram:#x}")
    if sc.numa:
        cmp = compare_main_ram_blocks(path, info, pcram, low, [LEGACY_WINDOW], sc.main_ram_blocks)
    else:
        cmp = compare_main_ram(path, info, pcram, low, [LEGACY_WINDOW], classic_pages)
    if cmp["mismatch_count"]:
        raise Fail(f"{'+'.join(sc.main_ram_blocks)} differs from pmemsave outside {LEGACY_WINDOW}: "
                   f"{cmp['mismatch_ranges'][:10]}")
    if not sc.live and cmp.get("clear_bit_data_count"):
        raise Fail(f"stopped guest but pages with data and a clear bit: {cmp['clear_bit_data_ranges'][:10]}")
    if cmp.get("set_bit_zero_count"):
        raise Fail(f"bits set for zero pages: {cmp['set_bit_zero_ranges'][:10]}")
    stale_region = None
    if sc.live and sc.kind == "classic":
        # Every stale page must have been sent with the guest's 0xA5 first and, after the
        # guest zeroed it, once more as zero (a ZERO record): the last record wins.
        n = STALE[1] // PAGE
        bad = [p for p in range(*stale_pages)
               if not tracked.get(p) or tracked[p][0] != "a5" or tracked[p][-1] != "zero"]
        if bad:
            raise Fail(f"live classic save: {len(bad)} of the {n} stale pages were not sent as 0xA5 and then "
                       f"as zero, e.g. page {bad[0]:#x}: {tracked.get(bad[0])}")
        sends = [len(v) for v in tracked.values()]
        stale_region = {"gpa": STALE[0], "length": STALE[1], "fill_in_stream": 0xA5,
                        "first_record": "page 0xA5", "last_record": "zero", "guest_value": 0,
                        "records_per_page_min": min(sends), "records_per_page_max": max(sends)}
    elif sc.live:
        n = STALE[1] // PAGE
        stale_ranges = [[STALE[0], STALE[0] + STALE[1]]]
        if cmp["clear_bit_data_a5_pages"] != n or cmp["clear_bit_data_ranges"] != stale_ranges:
            raise Fail(f"live save: expected exactly the {n} stale pages with 0xA5 data and clear bits, got "
                       f"{cmp['clear_bit_data_a5_pages']} (ranges {cmp['clear_bit_data_ranges'][:10]})")
        stale_region = {"gpa": STALE[0], "length": STALE[1], "fill_in_pages_region": 0xA5,
                        "bits": "clear", "guest_value": 0}
    log(name, f"self-check ok: {cmp['bits_set']} bits set / {cmp['pages']} pages; legacy-window pages "
              f"differing: {cmp['excluded_diff_count']}")

    elf_entry = {}
    if elf_path:
        os.chmod(elf_path, 0o644)
        loads, echeck = check_elf_dump(elf_path, pcram, parts, [LEGACY_WINDOW])
        log(name, f"ELF dump self-check ok: {len(loads)} PT_LOAD segments, main RAM equals pmemsave outside "
                  f"{LEGACY_WINDOW} (differing there: {echeck['excluded_diff_ranges']}; not dumped: "
                  f"{echeck['main_ram_not_in_dump']})")
        elf_entry = {"elf_dump": os.path.basename(elf_path), "elf_dump_size": os.path.getsize(elf_path),
                     "elf_dump_loads": loads, "elf_dump_check": echeck,
                     "elf_dump_command": {"execute": "dump-guest-memory",
                                          "arguments": {"paging": False, "protocol": "file:PATH",
                                                        "format": "elf"}}}
    if sc.numa:
        elf_entry["main_ram_blocks"] = sc.main_ram_blocks
        elf_entry["numa_nodes"] = [{"node": i, "block": b, "size": n}
                                   for i, (b, n) in enumerate(zip(sc.main_ram_blocks, sc.numa_sizes))]

    pair_entry = {}
    if sc.pair_classic:
        os.chmod(classic_path, 0o644)
        cinfo = parse_stream(classic_path, 0)
        if cinfo["machine_type"] != resolved or cinfo["mapped_ram"]:
            raise Fail(f"classic_file: machine {cinfo['machine_type']}, capabilities {cinfo['capabilities']}")
        if [(b["name"], b["used_length"]) for b in cinfo["blocks"]] != \
                [(b["name"], b["used_length"]) for b in info["blocks"]]:
            raise Fail("classic_file lists other blocks than the mapped-ram file")
        if sc.vmdesc and not cinfo["vmdesc"]:
            raise Fail("classic_file has no vmdesc JSON at the end")
        cpages = cinfo.pop("pages")
        # The heartbeat page: the classic stream must hold the counter as it was at its save;
        # with those 8 bytes put back to the ground truth's, the page must equal it.
        hb_page, hb_at = HEARTBEAT_GPA // PAGE, HEARTBEAT_GPA % PAGE
        with open(pcram, "rb") as f:
            f.seek(HEARTBEAT_GPA)
            hb_truth = f.read(8)
        hp = cpages.get(hb_page, ZERO_PAGE)
        if hp[hb_at:hb_at + 8] != struct.pack("<Q", pair["heartbeat"]):
            raise Fail(f"classic_file heartbeat {hp[hb_at:hb_at + 8].hex()} != {pair['heartbeat']:#x} read before its save")
        cpages[hb_page] = hp[:hb_at] + hb_truth + hp[hb_at + 8:]
        ccmp = compare_main_ram(classic_path, cinfo, pcram, low, [LEGACY_WINDOW], cpages)
        if ccmp["mismatch_count"]:
            raise Fail(f"classic_file pc.ram differs from pmemsave outside {LEGACY_WINDOW}: "
                       f"{ccmp['mismatch_ranges'][:10]}")
        if ccmp["nonzero_pages_in_stream"] != cmp["bits_set"]:
            raise Fail(f"same stopped guest, but the classic stream has {ccmp['nonzero_pages_in_stream']} non-zero "
                       f"pc.ram pages and the mapped-ram file {cmp['bits_set']} bits set")
        log(name, f"classic_file self-check ok: {ccmp['nonzero_pages_in_stream']} non-zero pc.ram pages, "
                  f"{cinfo['record_counts']}")
        pst = pair["st"]
        pair_entry = {
            "classic_file": os.path.basename(classic_path),
            "classic_file_size": os.path.getsize(classic_path),
            "classic_file_info": cinfo,
            "classic_self_check": ccmp,
            "classic_migration": {"total_time_ms": pst.get("total-time"), "seconds": pair["seconds"],
                                  "capabilities": {"mapped-ram": False, "multifd": False}},
            "classic_heartbeat": pair["heartbeat"],
            "heartbeat": struct.unpack("<Q", hb_truth)[0],
            "classic_differs": [{"gpa": HEARTBEAT_GPA, "length": 8, "what": "heartbeat",
                                 "classic_value": pair["heartbeat"]}],
            "pair": {"order": ["classic_file", "file"],
                     "runstate_after_classic": pair["runstate_after"],
                     "note": "classic_file and file are two saves of the same guest, stopped, classic first; "
                             "QEMU refuses a second migration from 'postmigrate', so the guest ran for ~20 ms "
                             "(cont; stop) in between. pcram was taken after the mapped-ram save. The guest "
                             "only polls the keyboard with interrupts off, so the saves differ only in the "
                             "heartbeat u64 at heartbeat_gpa (classic_differs; checked for pc.ram)"},
        }

    markers = dict(LOW_MARKERS)
    if high:
        markers.update(HIGH_MARKERS)
    entry.update({
        "file": os.path.basename(path),
        "kind": sc.kind,
        "machine_arg": sc.machine_arg,
        "machine_type": info["machine_type"],
        "ram_bytes": ram,
        "multifd": sc.multifd,
        "multifd_channels": 4 if sc.multifd else None,
        "accel": ctx.accel,
        "live": sc.live,
        "vmdesc": sc.vmdesc,
        "vga": sc.vga,
        "stream_offset": stream_offset,
        "libvirt": libvirt,
        "ramblocks": ramblocks,
        "info_ramblock_raw": ramblock_raw,
        "pcram": os.path.basename(pcram),
        "pcram_layout": [{"gpa": g, "length": n, "pcram_offset": o} for g, n, o in parts],
        "lowmem": low,
        "compare_exclude": [LEGACY_WINDOW],
        "info_registers_raw": regs_raw,
        "registers": regs,
        "registers_hex": {k: f"{v:#x}" for k, v in regs.items() if isinstance(v, int)},
        "markers": markers,
        "virtual_markers": {"virt_marker": {"va": VIRT_MARKER_VA, "va_hex": f"{VIRT_MARKER_VA:#x}",
                                            "gpa": LOW_MARKERS["virt_marker"]}},
        "ready_marker_at_save": ready_now.decode(),
        "stale_region": stale_region,
        "file_size": os.path.getsize(path),
        "file_info": info,
        "self_check": cmp,
        "migration": {"total_time_ms": st.get("total-time"), "downtime_ms": st.get("downtime"),
                      "dirty_sync_count": st.get("ram", {}).get("dirty-sync-count"),
                      "live": live_info or None, "seconds": round(mig_secs, 2)},
        "qemu_version": qemu_version,
        "qemu_args": run.args[1:],
        "seconds": round(time.time() - t_start, 2),
    })
    entry.update(pair_entry)
    entry.update(elf_entry)
    return entry


def make_part(base_entry, sc, ctx):
    src = os.path.join(ctx.outdir, base_entry["file"])
    dst = os.path.join(ctx.outdir, sc.name + sc.ext)
    sparse_copy(src, dst)
    with open(dst, "r+b") as f:
        if f.read(16) != b"LibvirtQemudSave":
            raise Fail(f"{src} does not start with LibvirtQemudSave")
        f.seek(0)
        f.write(b"LibvirtQemudPart")
    e = json.loads(json.dumps(base_entry))
    e.update({"name": sc.name, "description": sc.desc, "file": os.path.basename(dst), "kind": sc.kind,
              "derived_from": base_entry["name"]})
    e["libvirt"]["magic"] = "LibvirtQemudPart"
    e["file_size"] = os.path.getsize(dst)
    info = parse_stream(dst, e["stream_offset"])
    info.pop("pages", None)
    if info["blocks"] != base_entry["file_info"]["blocks"]:
        raise Fail("libvirt-part copy parses differently from its source")
    log(sc.name, f"copied from {base_entry['name']} with magic LibvirtQemudPart")
    return e


class Ctx:
    pass


def main():
    ap = argparse.ArgumentParser(description="Make real QEMU mapped-ram fixtures + ground truth.")
    ap.add_argument("outdir", nargs="?")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="only these scenarios")
    ap.add_argument("--list", action="store_true", help="list the scenarios and exit")
    ap.add_argument("--accel", choices=["auto", "kvm", "tcg"], default="tcg",
                    help="tcg (default: boots the tiny guest in ~0.2 s, where KVM without hardware "
                         "virtualisation took 6-14 s), kvm, or auto (KVM when usable, else TCG)")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="QEMU instances at a time (default: min(2, CPUs))")
    ap.add_argument("--qemu", default=os.environ.get("QEMU", "qemu-system-x86_64"))
    ap.add_argument("--boot-timeout", type=float, default=180)
    a = ap.parse_args()

    if a.list:
        for s in SCENARIOS:
            print(f"{s.name:22} {s.desc}")
        return 0
    if not a.outdir:
        ap.error("OUTDIR is required")
    names = a.only or [s.name for s in SCENARIOS]
    for n in names:
        if n not in BY_NAME:
            print(f"make-fixtures: unknown scenario {n!r} (see --list)", file=sys.stderr)
            return 2
    sel = [s for s in SCENARIOS if s.name in names]
    # derived scenarios need their source in this run
    for s in list(sel):
        if s.derived_from and BY_NAME[s.derived_from] not in sel:
            sel.insert(0, BY_NAME[s.derived_from])

    ctx = Ctx()
    ctx.outdir = os.path.abspath(a.outdir)
    if "," in ctx.outdir:
        print("make-fixtures: OUTDIR must not contain a comma (QEMU file: URI)", file=sys.stderr)
        return 2
    os.makedirs(ctx.outdir, exist_ok=True)
    ctx.qemu = shutil.which(a.qemu)
    if not ctx.qemu:
        print(f"make-fixtures: {a.qemu} not found (install qemu-system-x86, e.g. scripts/install-deps.sh)",
              file=sys.stderr)
        return 1
    ver = subprocess.run([ctx.qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    ctx.boot_timeout = a.boot_timeout
    if a.accel == "auto":
        ok, why = kvm_usable(ctx.qemu)
        ctx.accel = "kvm" if ok else "tcg"
        if not ok:
            print(f"make-fixtures: KVM not usable ({why}); using TCG", file=sys.stderr)
    else:
        ctx.accel = a.accel
    r = subprocess.run(["bash", BUILD_GUEST, ctx.outdir], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"make-fixtures: building the guest failed:\n{r.stdout}{r.stderr}", file=sys.stderr)
        return 1
    ctx.guest = os.path.join(ctx.outdir, "guest.elf")
    print(f"make-fixtures: {ver}; accel {ctx.accel}; {len(sel)} scenario(s) into {ctx.outdir}", flush=True)

    t0 = time.time()
    results = {}
    direct = [s for s in sel if not s.derived_from]
    failed = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        def attempt(s):
            for n in range(3):
                try:
                    return run_scenario(s, ctx)
                except Retry as e:
                    if n == 2:
                        raise
                    log(s.name, f"timing race ({e}); trying again")
        futs = {ex.submit(attempt, s): s for s in direct}
        for f in concurrent.futures.as_completed(futs):
            s = futs[f]
            try:
                results[s.name] = f.result()
            except Exception as e:  # noqa: BLE001
                failed.append((s.name, e))
                log(s.name, f"FAILED: {e}")
    if not failed:
        for s in sel:
            if s.derived_from:
                try:
                    results[s.name] = make_part(results[s.derived_from], s, ctx)
                except Exception as e:  # noqa: BLE001
                    failed.append((s.name, e))
    if failed:
        print("make-fixtures: FAILED:", file=sys.stderr)
        for n, e in failed:
            print(f"  {n}: {e}", file=sys.stderr)
        return 1

    mpath = os.path.join(ctx.outdir, "manifest.json")
    old = {}
    if a.only and os.path.exists(mpath):
        try:
            with open(mpath) as f:
                om = json.load(f)
                for e in om.get("scenarios", []) + om.get("extra_scenarios", []):
                    if os.path.exists(os.path.join(ctx.outdir, e.get("file", ""))):
                        old[e["name"]] = e
        except (OSError, ValueError):
            old = {}
    old.update(results)
    manifest = {
        "format": 1,
        "generator": "scripts/make-fixtures.py",
        "qemu_version": ver,
        "guest": {
            "file": "guest.elf",
            "cr3": CR3,
            "ready_gpa": READY_GPA,
            "ready_values": [READY.decode(), ZEROED.decode()],
            "heartbeat_gpa": HEARTBEAT_GPA,
            "marker_strings": {k: v.decode() for k, v in MARKER_STRINGS.items()},
            "patterns": [
                {"gpa": PATTERN[0], "length": PATTERN[1], "only_if_high_ram": False},
                {"gpa": HIGH_PATTERN[0], "length": HIGH_PATTERN[1], "only_if_high_ram": True},
            ],
            "pattern_rule": "page i of a pattern region (GPA g) holds u64 little-endian (g | 1) repeated "
                            "512 times; pages with i % 7 == 6 are zero",
            "stale": {"gpa": STALE[0], "length": STALE[1], "fill": 0xA5,
                      "zeroed_after_key": True},
            "virtual_markers": {"virt_marker": {"va": VIRT_MARKER_VA, "va_hex": f"{VIRT_MARKER_VA:#x}",
                                                "gpa": LOW_MARKERS["virt_marker"]}},
            "registers": GUEST_REGS,
            "registers_hex": {k: f"{v:#x}" for k, v in GUEST_REGS.items()},
            "note": "64-bit values above 2^53 are also given as hex strings (*_hex) for JSON readers "
                    "that parse numbers as doubles",
        },
        "scenarios": [old[s.name] for s in SCENARIOS if s.name in old and not s.extra],
        # Scenarios added later, with the same schema; kept out of "scenarios" so that readers
        # which enumerate that list keep their set.
        "extra_scenarios": [old[s.name] for s in SCENARIOS if s.name in old and s.extra],
    }
    with open(mpath + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    os.replace(mpath + ".tmp", mpath)
    print(f"make-fixtures: {len(results)} scenario(s) ok in {time.time() - t0:.1f}s; wrote {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
