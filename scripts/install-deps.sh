#!/usr/bin/env bash
# Installs what mramfs needs on Debian 12 (bookworm) when it is missing:
# libfuse3-dev, fuse3, pkg-config, binutils (to assemble the test guest;
# readelf checks vmcore), gdb (reads vmcore's registers), python3-venv (for
# Volatility 3 in .venv), man-db (scripts/check-install.sh renders the man page), and QEMU 10 from bookworm-backports. Safe to run again; it does nothing
# when everything is present. Needs root (or sudo).
set -euo pipefail

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
for p in libfuse3-dev fuse3 pkg-config binutils python3 python3-venv xxd gdb man-db; do
  have_pkg "$p" || need+=("$p")
done

qemu_ok=false
if command -v qemu-system-x86_64 >/dev/null 2>&1; then
  v=$(qemu-system-x86_64 --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -1)
  [[ -n $v && $v -ge 9 ]] && qemu_ok=true
fi

if ((${#need[@]} == 0)) && $qemu_ok; then
  exit 0
fi

src=/etc/apt/sources.list.d/debian.sources
if ! $qemu_ok; then
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "install-deps: adding the bookworm-backports suite for QEMU 10" >&2
    if [[ -f $src ]]; then
      # Same URIs as the main suite, as a deb822 stanza of its own.
      uris=$(awk '/^URIs:/ && !/security/ {print $2; exit}' "$src")
      printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "${uris:-http://deb.debian.org/debian}" | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
    else
      echo 'deb http://deb.debian.org/debian bookworm-backports main' | $SUDO tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
    fi
  fi
fi

echo "install-deps: apt-get update" >&2
$SUDO apt-get update -qq
if ((${#need[@]})); then
  echo "install-deps: installing ${need[*]}" >&2
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! $qemu_ok; then
  echo "install-deps: installing QEMU from bookworm-backports" >&2
  $SUDO apt-get install -y -qq -t bookworm-backports --no-install-recommends qemu-system-x86 qemu-utils >/dev/null
fi
qemu-system-x86_64 --version | head -1 >&2
