#!/usr/bin/env bash
# Fetches Debian testing's (forky's) crash into CACHE/crash-forky without installing anything,
# and prints the path of a wrapper that runs it: crash 9.x with its own libc, through its own
# loader (it needs a newer glibc than bookworm's). Why not bookworm's crash: 8.0.2 cannot list
# the tasks of current bookworm 6.1 kernels (struct pid.numbers became a flexible array in a
# stable backport), and trixie's 8.0.6 stops at start-up on the cloud kernel (no
# CONFIG_X86_MCE: a zero-size exception stack read is fatal there).
#
# Usage: scripts/fetch-crash.sh CACHE     (idempotent; progress on stderr, the wrapper's path on stdout)
# Environment: CRASH_SUITE (default forky). Private apt lists under CACHE/apt-SUITE, same mirror
# as the host's main Debian source. Needs the network once (Debian's archive).
set -euo pipefail
cache=${1:?usage: fetch-crash.sh CACHE}
suite=${CRASH_SUITE:-forky}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
root="$cache/crash-$suite"
if [[ ! -x $root/crash ]]; then
  mirror=$(awk '/^URIs:/ && !/security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-$(awk '/^deb / && !/security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
  [[ -n $mirror ]] || { echo "fetch-crash: cannot find the Debian mirror in the apt sources" >&2; exit 1; }
  st="$cache/apt-$suite"
  mkdir -p "$st/lists/partial" "$st/cache/archives/partial" "$root/debs"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" >"$st/sources.list"
  O=(-o "Dir::Etc::SourceList=$st/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o "Dir::State::Lists=$st/lists" -o "Dir::Cache=$st/cache" -o Dir::State::status=/dev/null)
  echo "fetch-crash: apt-get update ($suite lists, private)" >&2
  apt-get "${O[@]}" update -qq >&2
  deps=$(apt-cache "${O[@]}" show --no-all-versions crash | sed -n 's/^Depends: //p' |
         tr ',' '\n' | sed 's/(.*)//; s/|.*//; s/ //g' | grep -v '^binutils$' | grep -v '^$')
  echo "fetch-crash: downloading crash and" $deps "from $suite" >&2
  # As root apt warns that _apt cannot write here; harmless.
  # shellcheck disable=SC2086
  (cd "$root/debs" && apt-get "${O[@]}" download -q crash $deps 2>&1 >/dev/null | grep -v '^W: Download is performed unsandboxed' >&2 || true)
  ls "$root"/debs/crash_*.deb >/dev/null 2>&1 || { echo "fetch-crash: crash was not downloaded" >&2; exit 1; }
  for d in "$root"/debs/*.deb; do dpkg-deb -x "$d" "$root/sysroot"; done
  cat >"$root/crash" <<WRAP
#!/bin/sh
# Debian $suite's crash, run with its own libc through its own loader (nothing installed).
R="$root/sysroot"
exec "\$R/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "\$R/usr/lib/x86_64-linux-gnu" "\$R/usr/bin/crash" "\$@"
WRAP
  chmod +x "$root/crash"
fi
"$root/crash" --version 2>/dev/null | grep -m1 '^crash' >&2
echo "$root/crash"
