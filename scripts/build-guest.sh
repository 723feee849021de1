#!/usr/bin/env bash
# Builds the mramfs test guest (Tests/Guest/guest.S) into OUTDIR/guest.elf.
# Usage: scripts/build-guest.sh OUTDIR
# Needs only GNU binutils (as, ld). The result is a 32-bit multiboot ELF for
# `qemu-system-x86_64 -kernel OUTDIR/guest.elf` (QEMU's multiboot loader does
# not take 64-bit ELF images; the kernel switches to long mode itself).
# Rebuilds only when guest.S or this script is newer than guest.elf.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src="$here/../Tests/Guest/guest.S"
out=$1
mkdir -p "$out"
elf="$out/guest.elf"

for tool in as ld; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build-guest: '$tool' not found (install binutils)" >&2; exit 1; }
done
[[ -f $src ]] || { echo "build-guest: $src not found" >&2; exit 1; }

if [[ -f $elf && $elf -nt $src && $elf -nt ${BASH_SOURCE[0]} ]]; then
  exit 0
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/mramfs-guest.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
as --32 -o "$tmp/guest.o" "$src"
# -n: no page alignment of the text in the file, so the multiboot header is
# well inside the first 8 KiB; load address 1 MiB.
ld -m elf_i386 -n -Ttext=0x100000 -e _start --build-id=none \
   --no-warn-rwx-segments -o "$tmp/guest.elf" "$tmp/guest.o" 2>"$tmp/ld.err" || {
  # older binutils lack --no-warn-rwx-segments
  ld -m elf_i386 -n -Ttext=0x100000 -e _start --build-id=none \
     -o "$tmp/guest.elf" "$tmp/guest.o"
}
mv -f "$tmp/guest.elf" "$elf"
