#!/usr/bin/env bash
# Benchmarks mramfs on this machine and prints figures, each as a ratio to a
# baseline measured in the same run (no timed assertions).
#
#   scripts/bench.sh                 # everything (~6-9 minutes on 2 vCPUs), table on stdout
#   scripts/bench.sh --json          # table on stderr, JSON on stdout
#   scripts/bench.sh --sections read --modes cache+pread,dio+splice --densities 1.0 --reps 5
#
# Sections: read (mount vs pread of the image, page cache/direct_io x read=pread/splice,
# 2 GiB at density 1.0 and 0.3), write (create/convert vs cp + fsync), scale (1 TiB
# synthetic guest: mount time, RSS, cp --sparse), diff (mramfs diff of two 5 GiB saves vs
# cat A B > /dev/null). See scripts/bench.py --help.
#
# Builds mramfs in release mode (scratch path .build-bench, so it does not disturb
# other builds), works in a temporary directory on the disk of $MRAMFS_BENCH_DIR
# (default /var/tmp) plus one in /dev/shm, and unmounts and deletes everything on exit.
# Needs root for the readahead setting mramfs makes on mount, and /dev/fuse.
# MRAMFS_BENCH_BIN=/path/to/mramfs skips the build and benchmarks that binary.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -n ${MRAMFS_BENCH_BIN:-} ]]; then
  bin=$MRAMFS_BENCH_BIN # an already built binary (skips the build)
else
  scratch=.build-bench
  echo "bench: swift build -c release --scratch-path $scratch" >&2
  swift build -c release --scratch-path "$scratch" >&2
  bin="$PWD/$scratch/release/mramfs"
fi

work=$(mktemp -d "${MRAMFS_BENCH_DIR:-/var/tmp}/mramfs-bench.XXXXXX")
shm=$(mktemp -d /dev/shm/mramfs-bench.XXXXXX)
cleanup() {
  # Unmount whatever is still mounted under the work directory, then delete it all.
  local m
  while read -r _ m _; do
    case "$m" in
      "$work"/*) "$bin" unmount --lazy "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || true ;;
    esac
  done </proc/mounts
  rm -rf "$work" "$shm"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 scripts/bench.py --bin "$bin" --work "$work" --shm "$shm" "$@"
