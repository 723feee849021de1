#!/usr/bin/env bash
# Examples/save-and-grep.sh: save a small running guest with QEMU's mapped-ram
# capability, mount the file with mramfs, and find what the guest wrote.
#
# What it shows: a real QEMU 10 save, `mramfs info`, a mount with one sparse file
# per RAM block, and ordinary tools (grep, strings, hexdump, cp --sparse) on them.
#
# Run:  Examples/save-and-grep.sh [PATH-TO-mramfs]
#       (scripts/demo.sh installs what is needed, builds mramfs and runs this)
# Env:  ACCEL=kvm|tcg (default: tcg, which boots the tiny guest fastest on a
#       machine without hardware virtualisation; kvm works too)
set -euo pipefail
cd "$(dirname "$0")/.."
MRAMFS=${1:-$(swift build -c release --show-bin-path)/mramfs}
ACCEL=${ACCEL:-tcg}
work=$(mktemp -d /tmp/mramfs-example.XXXXXX)
qemu_pid=""
cleanup() {
  mountpoint -q "$work/mnt" 2>/dev/null && "$MRAMFS" unmount "$work/mnt" || true
  [[ -n $qemu_pid ]] && kill "$qemu_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

# 1. A tiny guest kernel (Tests/Guest/guest.S) that writes marker strings into its RAM.
bash scripts/build-guest.sh "$work" >/dev/null

# 2. Start QEMU and let the guest run until it says READY!!! at 0x5000.
qemu-system-x86_64 -machine pc -accel "$ACCEL" -m 256M -display none -nodefaults -no-user-config \
  -kernel "$work/guest.elf" -qmp "unix:$work/qmp.sock,server=on,wait=off" >"$work/qemu.log" 2>&1 &
qemu_pid=$!

# 3. Over QMP: stop the guest and save it with mapped-ram (what `virsh save --image-format sparse` does).
python3 - "$work" <<'PY'
import json, socket, sys, time
work = sys.argv[1]
for _ in range(200):
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(f"{work}/qmp.sock"); break
    except OSError:
        time.sleep(0.05)
f = s.makefile("rw")
def cmd(name, **args):
    f.write(json.dumps({"execute": name, "arguments": args}) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r: return r["return"]
        if "error" in r: sys.exit(f"QMP {name}: {r['error']['desc']}")
json.loads(f.readline()); cmd("qmp_capabilities")
deadline = time.time() + 60
while b"READY!!!" not in bytes.fromhex("".join(
        w[2:] for w in cmd("human-monitor-command", **{"command-line": "xp /8bx 0x5000"}).split() if w.startswith("0x") and len(w) == 4)):
    if time.time() > deadline: sys.exit("the guest did not get ready")
    time.sleep(0.1)
cmd("stop")
cmd("migrate-set-capabilities", capabilities=[{"capability": "mapped-ram", "state": True}])
cmd("migrate", uri=f"file:{work}/vm.mapped")
while (st := cmd("query-migrate").get("status")) not in ("completed", "failed"):
    time.sleep(0.05)
if st != "completed": sys.exit("migration failed")
cmd("quit")
PY
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=""

step mramfs info vm.mapped
"$MRAMFS" info "$work/vm.mapped"

step mramfs mount vm.mapped mnt
mkdir "$work/mnt"
"$MRAMFS" mount "$work/vm.mapped" "$work/mnt"

step ls -la mnt mnt/rom@etc
ls -la "$work/mnt" "$work/mnt/rom@etc"

step "grep -a -o -b MRAMFS-LOW-MARKER mnt/pc.ram      # byte offset = guest-physical address"
LC_ALL=C grep -a -o -b MRAMFS-LOW-MARKER "$work/mnt/pc.ram"

step "strings mnt/pc.ram | grep 'Linux version'"
strings "$work/mnt/pc.ram" | grep 'Linux version'

step "hexdump -C -s 0x300000 -n 32 mnt/pc.ram          # written through VA 0xffffffff80300000"
hexdump -C -s 0x300000 -n 32 "$work/mnt/pc.ram"

step "cp --sparse=always mnt/pc.ram copy; du -h copy   # holes stay holes"
cp --sparse=always "$work/mnt/pc.ram" "$work/copy"
du -h --apparent-size "$work/copy"; du -h "$work/copy"

step mramfs unmount mnt
"$MRAMFS" unmount "$work/mnt"
echo "done"
