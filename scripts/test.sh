#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine:
#   installs what is missing (libfuse3-dev, fuse3, QEMU 10 from bookworm-backports),
#   builds the test guest, saves real QEMU guests with mapped-ram (pc and q35,
#   256 MiB and 5 GiB, multifd, libvirt prefix, live save, classic, no vmdesc),
#   boots real Debian Linux guests (fetching Debian's cloud kernel, its vmlinux and
#   busybox-static into the download cache), installs Volatility 3 and drgn into .venv and
#   Debian forky's crash into the download cache, then runs `swift test`: unit tests, tests
#   against the real QEMU files, and mount tests through the kernel; then checks
#   scripts/install.sh (scripts/check-install.sh).
#
# Environment:
#   MRAMFS_FIXTURES  where the QEMU files go (default: .fixtures in the checkout);
#                    reused when its manifest is newer than the guest and the scripts
#                    that make it (scripts/make-fixtures.py, scripts/fixtures/)
#   MRAMFS_FRESH=1   remake the QEMU files even if they are there
#   MRAMFS_VOLATILITY  Volatility 3's `vol` (default: .venv/bin/vol, installed from PyPI)
#   MRAMFS_DOWNLOADS Debian packages and tools the Linux-guest tests need, kept across
#                    `rm -rf .fixtures` (default: .fixtures-downloads in the checkout)
#   MRAMFS_DRGN, MRAMFS_CRASH  drgn (default: .venv/bin/drgn, from PyPI) and crash (default:
#                    Debian forky's, run from MRAMFS_DOWNLOADS by scripts/fetch-crash.sh)
#   CI=true          a missing prerequisite fails the run instead of skipping a test
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

export MRAMFS_FIXTURES="${MRAMFS_FIXTURES:-$PWD/.fixtures}"
export MRAMFS_DOWNLOADS="${MRAMFS_DOWNLOADS:-$PWD/.fixtures-downloads}"
manifest="$MRAMFS_FIXTURES/manifest.json"
# Stale when the guest, scripts/make-fixtures.py or any file of its package scripts/fixtures/ is newer.
if [[ ${MRAMFS_FRESH:-0} == 1 || ! -f $manifest || Tests/Guest/guest.S -nt $manifest ||
      -n $(find scripts/make-fixtures.py scripts/fixtures -newer "$manifest" -print -quit) ]]; then
  echo "test: saving real QEMU guests into $MRAMFS_FIXTURES" >&2
  rm -rf "$MRAMFS_FIXTURES"
  python3 scripts/make-fixtures.py "$MRAMFS_FIXTURES"
else
  echo "test: reusing the QEMU files in $MRAMFS_FIXTURES (MRAMFS_FRESH=1 remakes them)" >&2
fi

# Volatility 3 (PyPI volatility3) in .venv, for the test that runs it over a mount.
if [[ ! -x .venv/bin/vol ]]; then
  echo "test: installing volatility3 into .venv" >&2
  [[ -x .venv/bin/pip ]] || python3 -m venv .venv
  .venv/bin/pip install --quiet volatility3
fi
export MRAMFS_VOLATILITY="${MRAMFS_VOLATILITY:-$PWD/.venv/bin/vol}"

# drgn and crash, for the Linux-guest tests (drgn from PyPI; crash from Debian, see
# scripts/fetch-crash.sh). Without CI a failed download leaves them out: those tests skip.
missing() {
  if [[ ${CI:-} == true ]]; then echo "test: $1 (CI=true: a failure)" >&2; exit 1; fi
  echo "test: warning: $1; the tests that need it will skip" >&2
}
if [[ ! -x .venv/bin/drgn ]]; then
  echo "test: installing drgn into .venv" >&2
  .venv/bin/pip install --quiet drgn || missing "pip install drgn failed"
fi
[[ -x .venv/bin/drgn ]] && export MRAMFS_DRGN="${MRAMFS_DRGN:-$PWD/.venv/bin/drgn}"
if [[ -z ${MRAMFS_CRASH:-} ]]; then
  if crash=$(bash scripts/fetch-crash.sh "$MRAMFS_DOWNLOADS"); then
    export MRAMFS_CRASH=$crash
  else
    missing "fetching Debian's crash failed"
  fi
fi

swift build --build-tests
export MRAMFS_BIN_DIR="$(swift build --show-bin-path)"
swift test --skip-build "$@"

# The installer, as a user meets it: binary, man page and completions (skipped when the
# caller asked for a subset of the tests, e.g. `scripts/test.sh --filter NAME`).
if (($# == 0)); then
  bash scripts/check-install.sh
fi
