#!/usr/bin/env bash
# The main job on a built-in sample, from a fresh Debian 12 machine: installs
# what is missing (libfuse3-dev, fuse3, QEMU 10 from bookworm-backports), builds
# mramfs, saves a small real guest with QEMU's mapped-ram, mounts it and shows it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
swift build -c release
bash Examples/save-and-grep.sh "$(swift build -c release --show-bin-path)/mramfs"
