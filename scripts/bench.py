#!/usr/bin/env python3
"""mramfs benchmark: every figure is a ratio to a baseline measured in the same run.

Called by scripts/bench.sh (which builds mramfs in release mode, makes the work
directory and unmounts/cleans up on exit). Nothing here asserts a time: the
output is a table of figures (and --json), plus "ok"/"MISMATCH" for the
correctness checks done on the way (bytes through the mount == bytes of the image).

Sections:
  read   mount vs pread of the image's pages region (2 GiB, density 1.0 and 0.3),
         for page cache/direct_io x read=pread/splice
  scale  1 TiB synthetic guest: synth, info, mount->ls time, daemon RSS, cp --sparse
  write  mramfs create / convert vs cp (+fsync) of the same bytes
  diff   mramfs diff of two synthetic saves (5 GiB, ~200 MiB of data each) vs `cat A B > /dev/null`
         of the same two files, with their page cache warm and evicted
"""

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time

MiB = 1 << 20
GiB = 1 << 30

MODES = {
    # name: mount -o options
    "cache+pread": [],
    "cache+splice": ["read=splice"],
    "dio+pread": ["direct_io"],
    "dio+splice": ["direct_io,read=splice"],
}

NEEDLE = "page 424242 offset"  # a rare string in synth pages (pc.ram page 424242 < 2 GiB)


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args):
        self.a = args
        self.bin = args.bin
        self.work = args.work
        self.shm = args.shm
        self.mounts = set()
        self.results = {"meta": {}, "read": {}, "scale": {}, "write": {}, "diff": {}, "checks": []}
        self.mount_times = []

    # ---------------------------------------------------------------- utilities
    def sh(self, cmd, **kw):
        """Runs cmd, returns (seconds, CompletedProcess). Raises on failure."""
        t = time.perf_counter()
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        dt = time.perf_counter() - t
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
        return dt, p

    def check(self, what, ok, detail=""):
        self.results["checks"].append({"check": what, "ok": bool(ok), "detail": detail})
        log(f"  check {'ok' if ok else 'MISMATCH'}: {what} {detail}")

    def synth(self, out, ram, density, extra=()):
        dt, p = self.sh([self.bin, "synth", "-o", out, "--ram", ram, "--density", str(density), "--json", *extra])
        summary = json.loads(p.stdout)
        return dt, summary

    def info_json(self, image):
        _, p = self.sh([self.bin, "info", "--json", image])
        return json.loads(p.stdout)

    def mount(self, image, mnt, opts):
        os.makedirs(mnt, exist_ok=True)
        cmd = [self.bin, "mount", image, mnt]
        for o in opts:
            cmd += ["-o", o]
        t0 = time.perf_counter()
        self.sh(cmd)
        self.mounts.add(mnt)
        t1 = time.perf_counter()
        subprocess.run(["ls", "-la", mnt], stdout=subprocess.DEVNULL, check=True)
        t2 = time.perf_counter()
        self.mount_times.append((t1 - t0, t2 - t0))
        return t1 - t0, t2 - t0

    def unmount(self, mnt):
        pid = self.daemon_pid(mnt)
        self.sh([self.bin, "unmount", mnt])
        self.mounts.discard(mnt)
        # Wait for the daemon to go, so the next mount does not compete with it.
        for _ in range(200):
            if pid is None or not os.path.exists(f"/proc/{pid}"):
                break
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split(") ")[1].startswith("Z"):
                        break
            except OSError:
                break
            time.sleep(0.01)

    def cleanup(self):
        for m in list(self.mounts):
            subprocess.run([self.bin, "unmount", "--lazy", m], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.mounts.discard(m)

    @staticmethod
    def daemon_pid(mnt):
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"mount" in argv and mnt.encode() in argv and b"--ready-fd" in argv:
                return int(d)
        return None

    @staticmethod
    def proc_status(pid, key):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return None

    @staticmethod
    def proc_io(pid, key):
        try:
            with open(f"/proc/{pid}/io") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    # ----------------------------------------------------------------- readers
    @staticmethod
    def read_seq(path, base, length, bs):
        """pread `length` bytes from `base` in `bs` pieces into one reused buffer; returns seconds."""
        buf = bytearray(bs)
        bufs = [buf]
        fd = os.open(path, os.O_RDONLY)
        try:
            off, end = base, base + length
            preadv = os.preadv
            t = time.perf_counter()
            while off < end:
                n = preadv(fd, bufs, off)
                if n <= 0:
                    raise RuntimeError(f"short read at {off} of {path}")
                off += n
            return time.perf_counter() - t
        finally:
            os.close(fd)

    @staticmethod
    def read_random(path, base, offsets, bs=4096):
        buf = bytearray(bs)
        bufs = [buf]
        fd = os.open(path, os.O_RDONLY)
        try:
            preadv = os.preadv
            offs = [base + o for o in offsets]
            t = time.perf_counter()
            for o in offs:
                preadv(fd, bufs, o)
            return time.perf_counter() - t
        finally:
            os.close(fd)

    @staticmethod
    def read_at(path, off, n):
        fd = os.open(path, os.O_RDONLY)
        try:
            return os.pread(fd, n, off)
        finally:
            os.close(fd)

    def dd_seconds(self, path, skip, count, bs):
        t, _ = self.sh(["dd", f"if={path}", "of=/dev/null", f"bs={bs}", "iflag=skip_bytes,count_bytes",
                        f"skip={skip}", f"count={count}", "status=none"])
        return t

    # ------------------------------------------------------------------ stats
    @staticmethod
    def summarize(values, nbytes=None, ops=None):
        """values: seconds per repetition. Returns a dict with median seconds, rate and spread."""
        med = statistics.median(values)
        d = {"seconds": values, "median_s": med, "min_s": min(values), "max_s": max(values)}
        if nbytes:
            d["bytes"] = nbytes
            d["MBps"] = nbytes / med / 1e6
            d["MBps_min"] = nbytes / max(values) / 1e6
            d["MBps_max"] = nbytes / min(values) / 1e6
        if ops:
            d["ops"] = ops
            d["iops"] = ops / med
            d["iops_min"] = ops / max(values)
            d["iops_max"] = ops / min(values)
        return d

    # ---------------------------------------------------------- read section
    def read_section(self, density, cases):
        """Each mount measurement is paired with a baseline run right after it (same bytes, same
        read size, straight from the image or the raw copy), so the ratio of a pair is robust to
        other load on the machine; the table shows the median ratio and its spread."""
        reps = self.a.reps
        tag = f"{self.a.read_ram}@{density}"
        log(f"== read: {tag} ==")
        image = os.path.join(self.work, f"read-{density}.mapped")
        raw = os.path.join(self.work, f"read-{density}.raw")
        mnt = os.path.join(self.work, "mnt")
        dt, s = self.synth(image, self.a.read_ram, density)
        log(f"  synth {self.a.read_ram} density {density}: {dt:.1f} s")
        info = self.info_json(image)
        blk = [b for b in info["blocks"] if b["name"] == "pc.ram"][0]
        base, length = blk["pagesOffset"], blk["length"]
        # A raw copy of the same bytes, made from the image directly (not through mramfs),
        # sparse where the image is: the baseline for grep and cp, and the input of `create`.
        self.sh(["dd", f"if={image}", f"of={raw}", "bs=1M", "iflag=skip_bytes,count_bytes", f"skip={base}",
                 f"count={length}", "conv=sparse", "status=none"])
        # Warm both files' page cache (the baseline is a warm pread).
        for p, b in ((image, base), (raw, 0)):
            self.read_seq(p, b, length, MiB)
        rst = os.stat(raw)
        R = {"image": os.path.basename(image), "synth_s": dt, "length": length, "pages_offset": base,
             "populated_pages": s["populatedPages"], "raw_allocated": rst.st_blocks * 512,
             "baseline": {}, "modes": {}}
        self.results["read"][tag] = R
        seq4k_len = min(length, self.a.seq4k_mib * MiB)
        rng = random.Random(1234)
        rand_offs = [rng.randrange(length // 4096) * 4096 for _ in range(self.a.rand_count)]
        shm_out = os.path.join(self.shm, "cp.out")

        # Sanity: the Python reader against dd on the same bytes.
        if density == 1.0:
            py1 = min(self.read_seq(image, base, length, MiB) for _ in range(3))
            dd1 = min(self.dd_seconds(image, base, length, MiB) for _ in range(3))
            py4 = min(self.read_seq(image, base, seq4k_len, 4096) for _ in range(3))
            dd4 = min(self.dd_seconds(image, base, seq4k_len, 4096) for _ in range(3))
            R["python_vs_dd"] = {"seq1M_python_MBps": length / py1 / 1e6, "seq1M_dd_MBps": length / dd1 / 1e6,
                                 "seq4K_python_MBps": seq4k_len / py4 / 1e6, "seq4K_dd_MBps": seq4k_len / dd4 / 1e6}
            log(f"  python reader vs dd: 1M {length/py1/1e6:.0f} vs {length/dd1/1e6:.0f} MB/s, "
                f"4K {seq4k_len/py4/1e6:.0f} vs {seq4k_len/dd4/1e6:.0f} MB/s")

        _, grep_raw = self.grep(raw)

        def cp_raw():
            t, _ = self.sh(["cp", "--sparse=always", raw, shm_out])
            os.unlink(shm_out)
            return t

        # Baselines: name -> (function returning seconds, bytes, ops)
        baselines = {
            "seq1M": (lambda: self.read_seq(image, base, length, MiB), length, None),
            "seq128K": (lambda: self.read_seq(image, base, length, 128 << 10), length, None),
            "seq4K": (lambda: self.read_seq(image, base, seq4k_len, 4096), seq4k_len, None),
            "rand4K": (lambda: self.read_random(image, base, rand_offs), None, len(rand_offs)),
            "grep": (lambda: self.grep(raw)[0], length, None),
            "cp": (cp_raw, length, None),
        }
        base_times = {k: [] for k in baselines}

        def seq1m(f, mode, r):
            out = {"seq1M_cold": self.read_seq(f, 0, length, MiB), "seq1M_warm": self.read_seq(f, 0, length, MiB)}
            if r == 0:
                ok = all(self.read_at(f, o, 4096) == self.read_at(image, base + o, 4096) for o in rand_offs[:200])
                self.check(f"{tag} {mode}: 200 random pages equal the image's", ok)
            return out

        def rand4k(f, mode, r):
            return {"rand4K_cold": self.read_random(f, 0, rand_offs), "rand4K_warm": self.read_random(f, 0, rand_offs)}

        def grep(f, mode, r):
            t, c = self.grep(f)
            if r == 0:
                self.check(f"{tag} {mode}: grep -c count equals the raw copy's", c == grep_raw, f"({c} vs {grep_raw})")
            return {"grep": t}

        extra = {}

        def cp(f, mode, r):
            pid = self.daemon_pid(mnt)
            io0 = self.proc_io(pid, "rchar") if pid else None
            t, _ = self.sh(["cp", "--sparse=always", f, shm_out])
            io1 = self.proc_io(pid, "rchar") if pid else None
            if r == 0:
                same = subprocess.run(["cmp", "-s", shm_out, raw]).returncode == 0
                st = os.stat(shm_out)
                self.check(f"{tag} {mode}: cp of pc.ram equals the raw bytes", same,
                           f"(copy allocates {st.st_blocks * 512 / MiB:.0f} MiB of {length / MiB:.0f})")
                if io0 is not None and io1 is not None:
                    extra["cp_daemon_rchar"] = io1 - io0
            os.unlink(shm_out)
            return {"cp": t}

        plan = [("seq1M", seq1m, "seq1M")]
        if "seq128K" in cases:
            plan.append(("seq128K", lambda f, m, r: {"seq128K": self.read_seq(f, 0, length, 128 << 10)}, "seq128K"))
        if "seq4K" in cases:
            plan.append(("seq4K", lambda f, m, r: {"seq4K": self.read_seq(f, 0, seq4k_len, 4096)}, "seq4K"))
        plan += [("rand4K", rand4k, "rand4K"), ("grep", grep, "grep"), ("cp", cp, "cp")]

        for mode in self.a.modes:
            opts = MODES[mode]
            M = {}
            R["modes"][mode] = M
            extra.clear()
            evicted = {}
            log(f"  mode {mode}")
            for _, fn, bkey in plan:
                bfn, nbytes, ops = baselines[bkey]
                times, ratios = {}, {}
                for r in range(reps):
                    self.mount(image, mnt, opts)
                    got = fn(os.path.join(mnt, "pc.ram"), mode, r)
                    # read=splice with the page cache moves (steals) the image's pages into the mount's
                    # cache: measure how much of the image left memory, then warm it again for what follows.
                    lost = 1 - self.resident(image) / os.path.getsize(image)
                    evicted[bkey] = max(evicted.get(bkey, 0.0), lost)
                    self.unmount(mnt)
                    self.warm(image, base, length, raw)
                    b = bfn()  # the paired baseline, right after
                    base_times[bkey].append(b)
                    for k, t in got.items():
                        times.setdefault(k, []).append(t)
                        ratios.setdefault(k, []).append(b / t)
                for k in times:
                    M[k] = self.summarize(times[k], nbytes, ops)
                    M[k]["ratios"] = ratios[k]
                    M[k]["ratio"] = statistics.median(ratios[k])
                    M[k]["ratio_min"], M[k]["ratio_max"] = min(ratios[k]), max(ratios[k])
                    M[k]["baseline"] = bkey
                    bt = [base_times[bkey][i] for i in range(len(base_times[bkey]) - reps, len(base_times[bkey]))]
                    M[k]["ratio_best"] = min(bt) / min(times[k])
            M.update(extra)
            M["image_evicted"] = evicted
            log("    " + ", ".join(f"{k} {v['ratio']:.2f}x" for k, v in M.items() if isinstance(v, dict) and "ratio" in v))
        for k, ts in base_times.items():
            if ts:
                _, nbytes, ops = baselines[k]
                R["baseline"][k] = self.summarize(ts, nbytes, ops)
        R["baseline"]["grep"]["count"] = grep_raw
        if not self.a.keep_raw or density != 1.0:
            os.unlink(raw)
        os.unlink(image)

    def grep(self, path):
        t = time.perf_counter()
        p = subprocess.run(["grep", "-c", NEEDLE, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, LC_ALL="C"))
        dt = time.perf_counter() - t
        if p.returncode not in (0, 1):
            raise RuntimeError(f"grep {path}: {p.stderr}")
        return dt, int(p.stdout.strip() or 0)

    # --------------------------------------------------------- scale section
    def scale_section(self):
        log(f"== scale: {self.a.scale_ram} synthetic guest ==")
        S = self.results["scale"]
        image = os.path.join(self.work, "big.mapped")
        mnt = os.path.join(self.work, "mnt")
        dt, s = self.synth(image, self.a.scale_ram, self.a.scale_density)
        st = os.stat(image)
        S.update({"ram": self.a.scale_ram, "density": self.a.scale_density, "synth_s": dt,
                  "populated_pages": s["populatedPages"], "apparent_bytes": st.st_size,
                  "allocated_bytes": st.st_blocks * 512})
        log(f"  synth {self.a.scale_ram}: {dt:.1f} s, {st.st_size / GiB:.0f} GiB apparent, "
            f"{st.st_blocks * 512 / MiB:.0f} MiB allocated")
        def mount_stats(img):
            d = {"info": self.summarize([self.sh([self.bin, "info", img])[0] for _ in range(3)])}
            mounts, lss, rss, anon = [], [], [], []
            for _ in range(3):
                tm, tls = self.mount(img, mnt, [])
                mounts.append(tm)
                lss.append(tls)
                pid = self.daemon_pid(mnt)
                rss.append(self.proc_status(pid, "VmRSS"))
                anon.append(self.proc_status(pid, "RssAnon"))
                self.unmount(mnt)
            d["mount_s"] = self.summarize(mounts)
            d["mount_to_ls_s"] = self.summarize(lss)
            d["rss_after_ls"] = statistics.median(rss)
            d["rss_anon_after_ls"] = statistics.median(anon)
            return d

        # The same density at a small size first, to show what grows with the RAM size.
        small = os.path.join(self.work, "small.mapped")
        self.synth(small, self.a.scale_small_ram, self.a.scale_density)
        S["small"] = {"ram": self.a.scale_small_ram, **mount_stats(small)}
        os.unlink(small)
        S.update(mount_stats(image))
        # cp --sparse=always of the whole 1 TiB file, twice: to /dev/shm and to the same disk.
        for dest_name, dest in (("shm", os.path.join(self.shm, "big.copy")), ("disk", os.path.join(self.work, "big.copy"))):
            self.mount(image, mnt, [])
            pid = self.daemon_pid(mnt)
            f = os.path.join(mnt, "pc.ram")
            io0 = self.proc_io(pid, "rchar")
            t, _ = self.sh(["cp", "--sparse=always", f, dest])
            io1 = self.proc_io(pid, "rchar")
            cst = os.stat(dest)
            D = {"seconds": t, "copy_apparent": cst.st_size, "copy_allocated": cst.st_blocks * 512,
                 "daemon_rchar": (io1 - io0) if io0 is not None and io1 is not None else None,
                 "rss_after_cp": self.proc_status(pid, "VmRSS"), "hwm_after_cp": self.proc_status(pid, "VmHWM")}
            # Compare the copy with the mount at the first data extents and at random data pages.
            fd = os.open(dest, os.O_RDONLY)
            offs = []
            try:
                o = 0
                while len(offs) < 50:
                    try:
                        o = os.lseek(fd, o, os.SEEK_DATA)
                    except OSError:
                        break
                    offs.append(o)
                    o = os.lseek(fd, o, os.SEEK_HOLE)
            finally:
                os.close(fd)
            # Data offsets according to the mount itself (its SEEK_DATA follows the bitmap).
            mfd = os.open(f, os.O_RDONLY)
            moffs = []
            try:
                o = 0
                while len(moffs) < 50:
                    try:
                        o = os.lseek(mfd, o, os.SEEK_DATA)
                    except OSError:
                        break
                    moffs.append(o)
                    o = os.lseek(mfd, o, os.SEEK_HOLE)
            finally:
                os.close(mfd)
            rng = random.Random(7)
            probe = offs[:20] + [rng.randrange(cst.st_size // 4096) * 4096 for _ in range(20)]
            same = all(self.read_at(dest, p, 4096) == self.read_at(f, p, 4096) for p in probe)
            nonzero = sum(1 for p in offs[:20] if any(self.read_at(dest, p, 4096)))
            self.check(f"scale: cp to {dest_name} equals the mount at 40 offsets ({nonzero}/20 data probes non-zero)",
                       same and nonzero == len(offs[:20]) and len(offs) > 0)
            self.check(f"scale: first 50 data extents of the copy ({dest_name}) equal the mount's SEEK_DATA",
                       offs == moffs, f"({len(offs)} vs {len(moffs)})")
            if dest_name == "shm":
                D["copy_extents"] = self.count_extents(dest)
            self.unmount(mnt)
            os.unlink(dest)
            S[f"cp_{dest_name}"] = D
            log(f"  cp --sparse=always to {dest_name}: {t:.2f} s, copy {cst.st_blocks * 512 / MiB:.0f} MiB allocated, "
                f"daemon read {D['daemon_rchar'] / MiB if D['daemon_rchar'] is not None else -1:.0f} MiB, "
                f"RSS {D['rss_after_cp'] / MiB:.1f} MiB (peak {D['hwm_after_cp'] / MiB:.1f})")
        log(f"  info {S['info']['median_s']:.3f} s, mount {S['mount_s']['median_s']:.3f} s, "
            f"mount->ls {S['mount_to_ls_s']['median_s']:.3f} s, RSS {S['rss_after_ls'] / MiB:.1f} MiB "
            f"(at {self.a.scale_small_ram}: {S['small']['mount_to_ls_s']['median_s']:.3f} s, "
            f"{S['small']['rss_after_ls'] / MiB:.1f} MiB)")
        os.unlink(image)

    @staticmethod
    def resident(path):
        """Bytes of `path` in the page cache (util-linux fincore)."""
        p = subprocess.run(["fincore", "-b", "-n", "-o", "RES", path], stdout=subprocess.PIPE, text=True)
        try:
            return int(p.stdout.split()[0])
        except (ValueError, IndexError):
            return os.path.getsize(path)

    def warm(self, image, base, length, raw=None):
        """Reads the image (and the raw copy) into the page cache again if some of it left."""
        if self.resident(image) < 0.995 * os.path.getsize(image):
            self.read_seq(image, 0, os.path.getsize(image), MiB)
        if raw and self.resident(raw) < 0.995 * os.path.getsize(raw):
            self.read_seq(raw, 0, os.path.getsize(raw), MiB)

    @staticmethod
    def count_extents(path):
        fd = os.open(path, os.O_RDONLY)
        n, o = 0, 0
        try:
            while True:
                try:
                    o = os.lseek(fd, o, os.SEEK_DATA)
                except OSError:
                    return n
                n += 1
                o = os.lseek(fd, o, os.SEEK_HOLE)
        finally:
            os.close(fd)

    # --------------------------------------------------------- write section
    def timed_write(self, cmd, out, fsync_after=False):
        subprocess.run(["sync"], check=True)
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
        t1 = time.perf_counter()
        if fsync_after:
            subprocess.run(["sync", out], check=True)  # coreutils sync FILE = fsync(FILE)
        t2 = time.perf_counter()
        return t1 - t, t2 - t

    def write_section(self):
        log("== write ==")
        W = self.results["write"]
        reps = self.a.reps
        raw = os.path.join(self.work, "read-1.0.raw")
        made_raw = False
        if not os.path.exists(raw):
            img = os.path.join(self.work, "w.mapped")
            self.synth(img, self.a.read_ram, 1.0)
            info = self.info_json(img)
            blk = [b for b in info["blocks"] if b["name"] == "pc.ram"][0]
            self.sh(["dd", f"if={img}", f"of={raw}", "bs=1M", "iflag=skip_bytes,count_bytes",
                     f"skip={blk['pagesOffset']}", f"count={blk['length']}", "status=none"])
            os.unlink(img)
            made_raw = True
        self.read_seq(raw, 0, os.path.getsize(raw), MiB)  # warm input
        n = os.path.getsize(raw)
        out = os.path.join(self.work, "w.out")
        cp_out = os.path.join(self.work, "w.cp")

        def pair(mram_cmd, src, what):
            cp_buf, cp_sync, mr = [], [], []
            outsize = None
            for _ in range(reps):
                a, b = self.timed_write(["cp", src, cp_out], cp_out, fsync_after=True)
                cp_buf.append(a)
                cp_sync.append(b)
                os.unlink(cp_out)
                _, c = self.timed_write(mram_cmd, out)
                mr.append(c)
                outsize = os.stat(out)
                os.unlink(out)
            insize = os.path.getsize(src)
            return {"input_bytes": insize, "output_bytes": outsize.st_size,
                    "output_allocated": outsize.st_blocks * 512,
                    "cp_buffered": self.summarize(cp_buf, insize), "cp_fsync": self.summarize(cp_sync, insize),
                    "mramfs": self.summarize(mr, insize)}

        W["create"] = pair([self.bin, "create", "-o", out, "--block", f"pc.ram={raw}"], raw, "create")
        log(f"  create {n / GiB:.0f} GiB: mramfs {W['create']['mramfs']['MBps']:.0f} MB/s, "
            f"cp+fsync {W['create']['cp_fsync']['MBps']:.0f} MB/s, cp buffered {W['create']['cp_buffered']['MBps']:.0f} MB/s")
        if made_raw or not self.a.keep_raw:
            os.unlink(raw)
        else:
            os.unlink(raw)
        classic = os.path.join(self.work, "w.classic")
        dt, s = self.synth(classic, self.a.classic_ram, 1.0, ["--format", "classic", "--dirty-passes", "1"])
        W["classic_synth_s"] = dt
        self.read_seq(classic, 0, os.path.getsize(classic), MiB)
        W["convert"] = pair([self.bin, "convert", classic, "-o", out], classic, "convert")
        log(f"  convert {os.path.getsize(classic) / GiB:.2f} GiB classic: mramfs {W['convert']['mramfs']['MBps']:.0f} MB/s "
            f"(of input), cp+fsync {W['convert']['cp_fsync']['MBps']:.0f} MB/s")
        os.unlink(classic)

    # ---------------------------------------------------------- diff section
    @staticmethod
    def evict(*paths):
        """Drops these files' pages from the page cache (only theirs: other work keeps its cache)."""
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def timed_diff(self, a, b):
        """Seconds of `mramfs diff --stat A B` and its exit status (1: they differ)."""
        t = time.perf_counter()
        p = subprocess.run([self.bin, "diff", "--stat", a, b], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        dt = time.perf_counter() - t
        if p.returncode not in (0, 1):
            raise RuntimeError(f"mramfs diff failed ({p.returncode}): {p.stderr.strip()}")
        return dt, p

    def timed_cat(self, a, b):
        t = time.perf_counter()
        subprocess.run(f"cat '{a}' '{b}' > /dev/null", shell=True, check=True)
        return time.perf_counter() - t

    def diff_section(self):
        log("== diff ==")
        D = self.results["diff"]
        ram, density, reps = self.a.diff_ram, self.a.diff_density, self.a.reps
        a = os.path.join(self.work, "diff-a.mapped")
        dt, s = self.synth(a, ram, density, ["--seed", "1"])
        D.update({"ram": ram, "density": density, "populated_pages": s["populatedPages"], "synth_s": dt})
        info = self.info_json(a)
        blk = [x for x in info["blocks"] if x["name"] == "pc.ram"][0]
        with open(a, "rb") as f:
            f.seek(blk["bitmapOffset"])
            bitmap = f.read(blk["bitmapSize"])
        populated = [i * 8 + j for i, byte in enumerate(bitmap) if byte for j in range(8) if byte >> j & 1]
        # edited: a copy of A with 1% of its populated pages rewritten in place and 0.5% of its bits
        # cleared (their bytes left behind): what one guest saved twice looks like.
        edited = os.path.join(self.work, "diff-edited.mapped")
        self.sh(["cp", "--sparse=always", a, edited])
        rng = random.Random(7)
        with open(edited, "r+b") as f:
            for p in populated[::100]:
                f.seek(blk["pagesOffset"] + p * 4096)
                f.write(rng.randbytes(4096))
            cleared = bytearray(bitmap)
            for p in populated[50::200]:
                cleared[p // 8] &= ~(1 << (p % 8)) & 0xFF
            f.seek(blk["bitmapOffset"])
            f.write(bytes(cleared))
        expected_changed = len(set(populated[::100]) | set(populated[50::200]))
        # reseeded: another synthetic guest of the same size: every populated page of either differs.
        reseeded = os.path.join(self.work, "diff-reseeded.mapped")
        self.synth(reseeded, ram, density, ["--seed", "2"])
        for case, b in (("edited", edited), ("reseeded", reseeded)):
            _, p = self.timed_diff(a, b)
            line = [x for x in p.stdout.splitlines() if x.startswith("pc.ram")][0].split()
            changed = int(line[line.index("changed") + 1])
            if case == "edited":
                self.check("diff finds the edited pages", changed == expected_changed, f"{changed} vs {expected_changed}")
            C = {"changed_pages": changed, "data_bytes": os.stat(a).st_blocks * 512 + os.stat(b).st_blocks * 512,
                 "apparent_bytes": os.path.getsize(a) + os.path.getsize(b)}
            for temp in ("warm", "cold"):
                diffs, cats = [], []
                if temp == "warm":
                    self.timed_cat(a, b)
                for _ in range(reps):
                    if temp == "cold":
                        self.evict(a, b)
                    cats.append(self.timed_cat(a, b))
                    if temp == "cold":
                        self.evict(a, b)
                    diffs.append(self.timed_diff(a, b)[0])
                C[temp] = {"diff": self.summarize(diffs), "cat": self.summarize(cats),
                           "ratio": statistics.median(diffs) / statistics.median(cats)}
                log(f"  {case} {temp}: diff {C[temp]['diff']['median_s']:.3f} s, cat A B {C[temp]['cat']['median_s']:.3f} s "
                    f"-> {C[temp]['ratio']:.3f}x")
            D[case] = C
            os.unlink(b)
        os.unlink(a)

    # ----------------------------------------------------------------- report
    def report(self):
        R = self.results
        out = []
        p = out.append

        def ratio(x, b):
            return x / b if b else float("nan")

        for tag, r in R["read"].items():
            p(f"\nREAD {tag}: pc.ram {r['length'] / GiB:.0f} GiB, {r['populated_pages']} pages populated "
              f"(synth {r['synth_s']:.1f} s)")
            p(f"  cell = median (min-max) over {self.a.reps} repetitions of baseline time / mount time, each mount run "
              f"paired with a baseline run right after it; then the mount's median MB/s or IOPS.")
            p("  baseline: pread of the same bytes from the image (warm page cache, same read size); grep and cp: "
              "the same command on a raw copy on the same disk (warm), cp --sparse=always to /dev/shm.")
            if "python_vs_dd" in r:
                v = r["python_vs_dd"]
                p(f"  reader check: python pread 1M {v['seq1M_python_MBps']:.0f} MB/s vs dd {v['seq1M_dd_MBps']:.0f}; "
                  f"4K {v['seq4K_python_MBps']:.0f} vs dd {v['seq4K_dd_MBps']:.0f}")
            B = r["baseline"]
            cases = [("seq1M_cold", "seq1M"), ("seq1M_warm", "seq1M"), ("seq128K", "seq128K"), ("seq4K", "seq4K"),
                     ("rand4K_cold", "rand4K"), ("rand4K_warm", "rand4K"), ("grep", "grep"), ("cp", "cp")]
            cases = [c for c in cases if c[1] in B]
            modes = list(r["modes"])
            hdr = f"  {'case':<12} {'baseline':>16} " + " ".join(f"{m:>24}" for m in modes)
            p(hdr)
            for case, bkey in cases:
                b = B[bkey]
                unit = "iops" if "iops" in b else "MBps"
                bs = f"{b[unit] / 1000:.0f}k IOPS" if unit == "iops" else f"{b[unit]:.0f} MB/s"
                cells = []
                for m in modes:
                    x = r["modes"][m].get(case)
                    if not x:
                        cells.append(f"{'-':>24}")
                        continue
                    if unit == "iops":
                        absv = f"{x['iops'] / 1000:.0f}k"
                    else:
                        absv = f"{x['MBps']:.0f}"
                    cells.append(f"{x['ratio']:.2f}x ({x['ratio_min']:.2f}-{x['ratio_max']:.2f}) {absv:>5}".rjust(24))
                p(f"  {case:<12} {bs:>16} " + " ".join(cells))
            p("  ratio of the best times (best baseline / best mount run; less sensitive to other load):")
            for case, bkey in cases:
                p(f"  {case:<12} {'':>16} " + " ".join(
                    f"{r['modes'][m][case]['ratio_best']:.2f}x".rjust(24) if case in r["modes"][m] else f"{'-':>24}"
                    for m in modes))
            ev = {m: max(r["modes"][m].get("image_evicted", {}).values(), default=0) for m in modes}
            p("  image page cache gone after a pass through the mount (worst case): " +
              ", ".join(f"{m} {v * 100:.0f}%" for m, v in ev.items()) + "; re-warmed before every run")
            rc = {m: r["modes"][m].get("cp_daemon_rchar") for m in modes}
            p("  daemon bytes read during cp (rchar; splice moves bytes without counting them): " + ", ".join(
                f"{m} {v / MiB:.0f} MiB" if v is not None else f"{m} -" for m, v in rc.items()))
        if R["scale"]:
            S = R["scale"]
            p(f"\nSCALE {S['ram']} guest, density {S['density']}: synth {S['synth_s']:.1f} s, "
              f"{S['apparent_bytes'] / GiB:.0f} GiB apparent, {S['allocated_bytes'] / MiB:.0f} MiB allocated, "
              f"{S['populated_pages']} pages")
            sm = S.get("small")
            p(f"  {'(median of 3)':<24} {S['ram']:>14} {('vs ' + sm['ram']) if sm else '':>14}")
            rows = [("mramfs info", lambda d: f"{d['info']['median_s']:.3f} s"),
                    ("mount returns", lambda d: f"{d['mount_s']['median_s']:.3f} s"),
                    ("mount start -> ls done", lambda d: f"{d['mount_to_ls_s']['median_s']:.3f} s"),
                    ("daemon VmRSS after ls", lambda d: f"{d['rss_after_ls'] / MiB:.1f} MiB"),
                    ("  of which anonymous", lambda d: f"{d['rss_anon_after_ls'] / MiB:.1f} MiB")]
            for name, fn in rows:
                p(f"  {name:<24} {fn(S):>14} {fn(sm) if sm else '':>14}")
            p("  targets: mount -> ls < 1 s, RSS < 64 MiB (VmRSS counts ~20 MiB of shared Swift/Foundation libraries)")
            for k in ("cp_shm", "cp_disk"):
                if k in S:
                    D = S[k]
                    p(f"  cp --sparse=always {S['ram']} -> {k[3:]:<4} {D['seconds']:.2f} s, copy {D['copy_allocated'] / MiB:.0f} MiB allocated, "
                      f"daemon read {D['daemon_rchar'] / MiB:.0f} MiB, daemon RSS {D['rss_after_cp'] / MiB:.1f} MiB "
                      f"(peak {D['hwm_after_cp'] / MiB:.1f})" + (f", {D['copy_extents']} data extents" if "copy_extents" in D else ""))
        if R["write"]:
            W = R["write"]
            p(f"\nWRITE (median of {self.a.reps}; mramfs fsyncs its output, so the baseline is cp + fsync of the copy)")
            for k in ("create", "convert"):
                if k not in W:
                    continue
                w = W[k]
                m, c, cb = w["mramfs"], w["cp_fsync"], w["cp_buffered"]
                p(f"  {k:<8} in {w['input_bytes'] / GiB:.2f} GiB -> out {w['output_bytes'] / GiB:.2f} GiB: "
                  f"mramfs {m['median_s']:.2f} s ({m['min_s']:.2f}-{m['max_s']:.2f}), "
                  f"cp+fsync {c['median_s']:.2f} s ({c['min_s']:.2f}-{c['max_s']:.2f}), cp alone {cb['median_s']:.2f} s "
                  f"-> ratio {c['median_s'] / m['median_s']:.2f}x of cp+fsync ({cb['median_s'] / m['median_s']:.2f}x of buffered cp); "
                  f"target >= 0.7x")
            if "classic_synth_s" in W:
                p(f"  (synth of the classic input: {W['classic_synth_s']:.1f} s)")
        if R["diff"]:
            D = R["diff"]
            p(f"\nDIFF two synthetic {D['ram']} saves, density {D['density']} ({D['populated_pages']} pages, "
              f"{D['populated_pages'] * 4096 / MiB:.0f} MiB of data each); median of {self.a.reps}; "
              "baseline: cat A B > /dev/null of the same two files (reads every byte, holes included)")
            for case in ("edited", "reseeded"):
                if case not in D:
                    continue
                C = D[case]
                what = ("B = A with 1% of its pages rewritten and 0.5% of its bits cleared" if case == "edited"
                        else "B = another guest (other seed): every populated page differs")
                p(f"  {case:<9} {what}; {C['changed_pages']} pages changed")
                for temp in ("warm", "cold"):
                    x = C[temp]
                    p(f"    {temp:<5} diff {x['diff']['median_s']:.3f} s ({x['diff']['min_s']:.3f}-{x['diff']['max_s']:.3f}), "
                      f"cat {x['cat']['median_s']:.2f} s -> diff/cat {x['ratio']:.3f}x (target: well below 1.0)")
        if self.mount_times:
            ms = sorted(x[0] for x in self.mount_times)
            p(f"\nall {len(ms)} mounts: `mramfs mount` returned in {statistics.median(ms):.3f} s median "
              f"({ms[0]:.3f}-{ms[-1]:.3f})")
        secs = R["meta"].get("sections", [])
        if secs:
            p("sections: " + "; ".join(f"{x['section']} {x['seconds']:.0f} s (load {x['load_before']:.1f}->{x['load_after']:.1f})"
                                       for x in secs) + f"; {os.cpu_count()} CPUs: a load well above 1 means other work "
              "shared the machine (the paired ratios are meant to absorb some of it)")
        bad = [c for c in R["checks"] if not c["ok"]]
        p(f"checks: {len(R['checks']) - len(bad)} ok, {len(bad)} mismatched" +
          "".join(f"\n  MISMATCH {c['check']} {c['detail']}" for c in bad))
        return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True, help="scratch directory on the disk under test")
    ap.add_argument("--shm", required=True, help="scratch directory on tmpfs")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout (the table goes to stderr)")
    ap.add_argument("--sections", default="read,scale,write,diff")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--densities", default="1.0,0.3")
    ap.add_argument("--read-ram", default="2G")
    ap.add_argument("--seq4k-mib", type=int, default=256, help="bytes read by the sequential 4 KiB case")
    ap.add_argument("--rand-count", type=int, default=50000)
    ap.add_argument("--scale-ram", default="1T")
    ap.add_argument("--scale-density", type=float, default=0.0001)
    ap.add_argument("--scale-small-ram", default="16G", help="a small guest at the same density, for comparison")
    ap.add_argument("--classic-ram", default="1G")
    ap.add_argument("--diff-ram", default="5G")
    ap.add_argument("--diff-density", type=float, default=0.04, help="0.04 of 5 GiB is about 200 MiB of data")
    a = ap.parse_args()
    a.modes = [m for m in a.modes.split(",") if m]
    for m in a.modes:
        if m not in MODES:
            ap.error(f"unknown mode {m}; modes: {', '.join(MODES)}")
    sections = set(a.sections.split(","))
    a.keep_raw = "write" in sections
    b = Bench(a)

    def on_signal(sig, _):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    t0 = time.perf_counter()
    try:
        b.results["meta"] = {"kernel": os.uname().release, "cpus": os.cpu_count(), "reps": a.reps,
                             "modes": a.modes, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        def timed(name, fn, *args):
            l0 = open("/proc/loadavg").read().split()[0]
            t = time.perf_counter()
            fn(*args)
            b.results["meta"].setdefault("sections", []).append(
                {"section": name, "seconds": time.perf_counter() - t, "load_before": float(l0),
                 "load_after": float(open("/proc/loadavg").read().split()[0])})

        if "read" in sections:
            for d in [float(x) for x in a.densities.split(",") if x]:
                cases = {"seq128K", "seq4K"} if d == 1.0 else set()
                timed(f"read {a.read_ram}@{d}", b.read_section, d, cases)
        if "write" in sections:
            timed("write", b.write_section)
        if "scale" in sections:
            timed("scale", b.scale_section)
        if "diff" in sections:
            timed("diff", b.diff_section)
    finally:
        b.cleanup()
    b.results["meta"]["seconds"] = time.perf_counter() - t0
    table = b.report() + f"\ntotal {b.results['meta']['seconds']:.0f} s"
    if a.json:
        print(table, file=sys.stderr)
        print(json.dumps(b.results, indent=1))
    else:
        print(table)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        log("bench: interrupted; mounts were unmounted")
        sys.exit(130)
