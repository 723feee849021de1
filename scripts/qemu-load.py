#!/usr/bin/env python3
"""qemu-load.py — restore a QEMU migration file into a fresh QEMU and dump its RAM.

Usage:
    scripts/qemu-load.py FILE --pcram OUT --fixtures DIR --scenario NAME [options]
    scripts/qemu-load.py FILE --pcram OUT --machine ARG --mem SIZE [--vga] [options]

Options: --accel tcg|kvm (default: the scenario's, else tcg), --mapped-ram auto|on|off
(default auto: on when the file's configuration record lists mapped-ram), --offset
auto|N (default auto: 92 + data_len behind a libvirt header, else 0), --run-seconds S
(default 1), --qemu PATH, --timeout S (default 300), --keep-log PATH.

What it does (the restore half of the fixtures' ground truth, see make-fixtures.py):

  1. starts qemu-system-x86_64 with the machine options of the VM that was saved
     (-machine ARG -m SIZE [-vga std] -smp 1 -nodefaults, as make-fixtures.py
     runs it; no -kernel, RAM comes from the stream) plus `-incoming defer -S`;
  2. sets the capability mapped-ram on or off, as the file needs, and runs
     `migrate-incoming file:FILE[,offset=N]` (exit-on-error off, so a refused
     file is reported with QEMU's own error text);
  3. waits for the incoming migration to complete (the guest stays paused: -S);
  4. pmemsaves main RAM into OUT, a sparse file laid out like the fixtures'
     .pcram: guest-physical [0, L) then [4 GiB, 4 GiB + R - L) (L: FORMAT.md §6.1);
  5. reads the guest's heartbeat (u64 at GPA 0x5008, incremented while the test
     guest polls the keyboard), runs `cont`, waits --run-seconds, reads it again.

It prints one JSON object on standard output:
  {"pcram", "heartbeat_before", "heartbeat_after", "status" (run state after
   cont and the wait), "status_after_load", "mapped_ram", "offset", "machine_arg",
   "mem", "accel", "ramblocks" (info ramblock), "qemu_args", "seconds"}
and exits 0; on any failure it prints {"error": "...", "qemu_log_tail": "..."} and
exits 1. Python standard library only (it reuses the QMP client and the sparse
pmemsave of the fixtures package, scripts/fixtures/).
"""

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # no scripts/fixtures/__pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fixtures.common import GiB, MiB, Fail, lowmem  # noqa: E402
from fixtures.guest import HEARTBEAT_GPA  # noqa: E402
from fixtures.qmp import QMP, parse_ramblocks, quit_qemu, wait_migration  # noqa: E402
from fixtures.truth import pmemsave_sparse  # noqa: E402


def stream_facts(path):
    """(stream offset, capabilities, machine type) from the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(92)
        offset = 0
        if head[:12] == b"LibvirtQemud":
            version, data_len = struct.unpack("<II", head[16:24])
            if version > 2:
                data_len = struct.unpack(">I", head[20:24])[0]
            offset = 92 + data_len
        f.seek(offset)
        if f.read(8) != b"QEVM\x00\x00\x00\x03":
            raise Fail(f"{path}: no QEMU stream header at offset {offset}")
        caps, machine = [], None
        if f.read(1) == b"\x07":
            (n,) = struct.unpack(">I", f.read(4))
            machine = f.read(n).decode(errors="replace")
            while f.read(1) == b"\x05":
                name = f.read(f.read(1)[0]).decode()
                f.read(4)  # version
                if name == "configuration/capabilities":
                    (k,) = struct.unpack(">I", f.read(4))
                    for _ in range(k):
                        caps.append(f.read(f.read(1)[0]).decode())
                elif name == "configuration/target-page-bits":
                    f.read(4)
                elif name == "configuration/uuid":
                    f.read(16)
                else:
                    break
    return offset, caps, machine


def scenario_from_manifest(directory, name):
    with open(os.path.join(directory, "manifest.json")) as f:
        m = json.load(f)
    for s in m.get("scenarios", []) + m.get("extra_scenarios", []):
        if s["name"] == name:
            return s
    raise Fail(f"{directory}/manifest.json has no scenario {name}")


def main():
    ap = argparse.ArgumentParser(description="Restore a migration file into a fresh QEMU and dump its RAM.")
    ap.add_argument("file")
    ap.add_argument("--pcram", required=True)
    ap.add_argument("--fixtures")
    ap.add_argument("--scenario")
    ap.add_argument("--machine")
    ap.add_argument("--mem")
    ap.add_argument("--vga", action="store_true")
    ap.add_argument("--accel", choices=["tcg", "kvm"])
    ap.add_argument("--mapped-ram", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--offset", default="auto")
    ap.add_argument("--run-seconds", type=float, default=1.0)
    ap.add_argument("--qemu", default=os.environ.get("QEMU", "qemu-system-x86_64"))
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--keep-log")
    a = ap.parse_args()

    t0 = time.time()
    workdir = tempfile.mkdtemp(prefix="mramfs-load-")
    logpath = os.path.join(workdir, "qemu.log")
    proc = None
    q = None
    result = {}

    def log_tail():
        try:
            with open(logpath, "rb") as f:
                return f.read()[-3000:].decode(errors="replace")
        except OSError:
            return ""

    try:
        if a.scenario:
            if not a.fixtures:
                raise Fail("--scenario needs --fixtures DIR")
            s = scenario_from_manifest(a.fixtures, a.scenario)
            machine_arg, mem, vga = s["machine_arg"], f"{s['ram_bytes'] // MiB}M", bool(s.get("vga"))
            accel = a.accel or s.get("accel") or "tcg"
        else:
            if not (a.machine and a.mem):
                raise Fail("give --fixtures DIR --scenario NAME, or --machine ARG --mem SIZE [--vga]")
            machine_arg, mem, vga, accel = a.machine, a.mem, a.vga, a.accel or "tcg"
        m = re.fullmatch(r"(\d+)([MG])", mem)
        if not m:
            raise Fail(f"--mem {mem}: expected NNNM or NNG")
        ram = int(m.group(1)) * (MiB if m.group(2) == "M" else GiB)
        family = machine_arg.split(",")[0]
        low = lowmem(family, ram)

        detected_offset, caps, file_machine = stream_facts(a.file)
        offset = detected_offset if a.offset == "auto" else int(a.offset, 0)
        mapped = ("mapped-ram" in caps) if a.mapped_ram == "auto" else a.mapped_ram == "on"
        if "," in os.path.abspath(a.file):
            raise Fail("the file's path must not contain a comma (QEMU file: URI)")

        qemu = shutil.which(a.qemu)
        if not qemu:
            raise Fail(f"{a.qemu} not found (install qemu-system-x86, e.g. scripts/install-deps.sh)")
        sock = os.path.join(workdir, "qmp.sock")
        args = [qemu, "-machine", machine_arg, "-accel", accel, "-m", mem, "-smp", "1",
                "-display", "none", "-nodefaults", "-no-user-config",
                "-qmp", f"unix:{sock},server=on,wait=off", "-incoming", "defer", "-S"]
        if vga:
            args += ["-vga", "std"]
        result.update({"file": a.file, "machine_arg": machine_arg, "mem": mem, "accel": accel,
                       "mapped_ram": mapped, "offset": offset, "file_machine_type": file_machine,
                       "file_capabilities": caps, "qemu_args": args[1:]})
        with open(logpath, "wb") as logf:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)
        q = QMP(sock, proc, "load")
        q.cmd("migrate-set-capabilities", capabilities=[{"capability": "mapped-ram", "state": mapped}])
        uri = f"file:{os.path.abspath(a.file)}" + (f",offset={offset}" if offset else "")
        q.cmd("migrate-incoming", uri=uri, **{"exit-on-error": False})
        t_load = time.time()
        wait_migration(q, "loading the file (incoming migration)", a.timeout, proc)
        result["load_seconds"] = round(time.time() - t_load, 2)
        result["status_after_load"] = q.cmd("query-status").get("status")
        result["ramblocks"] = parse_ramblocks(q.hmp("info ramblock"))

        parts = [(0, min(ram, low), 0)]
        if ram > low:
            parts.append((1 << 32, ram - low, low))
        out = os.path.abspath(a.pcram)
        pmemsave_sparse(q, parts, out, ram, workdir)
        result["pcram"] = out
        result["pcram_layout"] = [{"gpa": g, "length": n, "pcram_offset": o} for g, n, o in parts]
        result["lowmem"] = low

        result["heartbeat_before"] = struct.unpack("<Q", q.read_phys(HEARTBEAT_GPA, 8))[0]
        q.cmd("cont")
        time.sleep(a.run_seconds)
        result["heartbeat_after"] = struct.unpack("<Q", q.read_phys(HEARTBEAT_GPA, 8))[0]
        result["status"] = q.cmd("query-status").get("status")
        result["seconds"] = round(time.time() - t0, 2)
        code = 0
    except Exception as e:  # noqa: BLE001
        result = {"error": str(e), "qemu_log_tail": log_tail(), **result}
        code = 1
    finally:
        quit_qemu(proc, q)
        if a.keep_log:
            try:
                shutil.copyfile(logpath, a.keep_log)
            except OSError:
                pass
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
