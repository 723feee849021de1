#!/usr/bin/env bash
# Fuzzes the format library (Sources/MigrationFormat) and the layers above it with libFuzzer and AddressSanitizer.
#
#   scripts/fuzz.sh [SECONDS]      run for SECONDS (default 300), then print the figures
#
# Builds the harness in Fuzz/ (its own package, so -sanitize=fuzzer never reaches the
# main build) into .build-fuzz, writes fresh seeds into .fuzz/seeds (synthetic streams, and
# shrunk copies of the real QEMU files when they are there), and runs one libFuzzer job.
# The corpus grows in .fuzz/corpus across runs; crashes land in .fuzz/crashes. A crash
# becomes a regression file in Tests/SaveFilesystemTests/Regressions once its bug is fixed;
# those files seed every run too.
#
# Environment:
#   MRAMFS_FIXTURES  real QEMU files to seed from (default: .fixtures when it has manifest.json)
#   FUZZ_ARGS        more libFuzzer flags, e.g. FUZZ_ARGS=-seed=1
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-300}
if [[ ! $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS]" >&2
  exit 2
fi

# -parse-as-library: libFuzzer supplies main(); the harness only defines LLVMFuzzerTestOneInput.
# Release: the Swift code runs about eight times as many inputs a second as in debug, and keeps
# its overflow and bounds checks.
build=(-c release --package-path Fuzz --scratch-path "$PWD/.build-fuzz"
  -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library)
echo "fuzz: building the harness" >&2
swift build "${build[@]}" 2>&1 | grep -v "Cannot export local symbol '__asan" >&2 || true
bin="$(swift build "${build[@]}" --show-bin-path)/mramfs-fuzz"
[[ -x $bin ]] || { echo "fuzz: the build did not produce $bin" >&2; exit 1; }

work=.fuzz
rm -rf "$work/seeds"
mkdir -p "$work/corpus" "$work/crashes"
fixtures=${MRAMFS_FIXTURES:-$PWD/.fixtures}
if [[ -f $fixtures/manifest.json ]]; then
  export MRAMFS_FIXTURES=$fixtures
else
  echo "fuzz: no real QEMU files at $fixtures (scripts/make-fixtures.py makes them); synthetic seeds only" >&2
  unset MRAMFS_FIXTURES
fi
# The Swift runtime's backtracer reads the stack in ways AddressSanitizer reports as a bug of
# its own; with it off, a trap goes straight to libFuzzer, which saves the input.
export SWIFT_BACKTRACE=enable=no
MRAMFS_FUZZ_SEEDS="$work/seeds" "$bin"

log="$work/last.log"
echo "fuzz: running for ${seconds}s; log in $log" >&2
status=0
touch "$work/.started"
# -max_len: seeds from real files are up to ~300 KB; 1 MiB leaves room to grow.
# -malloc_limit_mb: a single allocation above 1 GiB from a 1 MiB input is a bug too.
# shellcheck disable=SC2086
"$bin" "$work/corpus" "$work/seeds" $(ls -d Tests/SaveFilesystemTests/Regressions 2>/dev/null) \
  -dict=Fuzz/mramfs.dict \
  -max_total_time="$seconds" -max_len=1048576 \
  -rss_limit_mb=4096 -malloc_limit_mb=1024 -timeout=30 \
  -artifact_prefix="$work/crashes/" -print_final_stats=1 ${FUZZ_ARGS:-} \
  >"$log" 2>&1 || status=$?

start=$(grep -m1 -E '^#[0-9]+[[:space:]]+INITED' "$log" || true)
final=$(grep -E '^#[0-9]+[[:space:]]+(DONE|NEW|REDUCE|pulse|INITED)' "$log" | tail -1 || true)
stat() { grep -m1 "^stat::$1:" "$log" | awk '{print $2}'; }
echo
echo "fuzz: $seconds s, exit status $status"
echo "  start:       ${start:-?}"
echo "  final:       ${final:-?}"
echo "  executions:  $(stat number_of_executed_units) ($(stat average_exec_per_sec) exec/s)"
echo "  new units:   $(stat new_units_added); corpus now $(find "$work/corpus" -type f | wc -l) files"
echo "  peak rss:    $(stat peak_rss_mb) MB"
crashes=$(find "$work/crashes" -type f -newer "$work/.started" | wc -l)
echo "  crashes:     $crashes new in $work/crashes"
if ((status != 0)); then
  grep -m5 -E 'ERROR|Fatal error|SUMMARY' "$log" | sed 's/^/    /' || true
fi
exit "$status"
