#!/usr/bin/env bash
# Builds mramfs in release mode and installs it like any other tool:
#
#   $PREFIX/bin/mramfs                                   the command (Swift runtime linked in)
#   $PREFIX/share/man/man1/mramfs.1                      its manual, every subcommand included
#   $PREFIX/share/bash-completion/completions/mramfs     bash completion
#   $PREFIX/share/zsh/site-functions/_mramfs             zsh completion
#   $PREFIX/share/fish/vendor_completions.d/mramfs.fish  fish completion
#
# The manual and the completions are generated from the command's own argument parser
# (swift-argument-parser's generate-manual plugin and --generate-completion-script), so they
# always match `mramfs --help`.
#
# Environment:
#   PREFIX   where to install (default /usr/local)
#   DESTDIR  a staging root prepended to every path (for packaging), default empty
#
# Examples:
#   sudo bash scripts/install.sh                     # /usr/local/bin/mramfs, man mramfs
#   DESTDIR=/tmp/stage PREFIX=/usr bash scripts/install.sh
#
# `mount -t fuse.mramfs FILE DIR` and fstab lines find the command through mount.fuse3,
# which runs `mramfs` from /bin/sh's default PATH (/usr/local/sbin:/usr/local/bin:/usr/sbin:
# /usr/bin:/sbin:/bin): the default PREFIX is on it; for another PREFIX, link
# $PREFIX/bin/mramfs into /usr/local/bin.
#
# Needs a Swift 6 toolchain and libfuse3-dev (scripts/install-deps.sh installs the latter).
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=${PREFIX:-/usr/local}
destdir=${DESTDIR:-}
case $prefix in
  /*) ;;
  *) echo "install: PREFIX must be an absolute path, not '$prefix'" >&2; exit 2 ;;
esac
if ! pkg-config --exists fuse3 2>/dev/null; then
  echo "install: libfuse3-dev is missing; run scripts/install-deps.sh (or apt-get install libfuse3-dev pkg-config)" >&2
  exit 1
fi

# A scratch path of its own: the static Swift runtime is a link setting the other builds lack.
scratch=.build-install

# The plugin builds every product in release mode (without the static runtime) and runs
# `mramfs --experimental-dump-help` to write the page; so it goes first, and the build
# below relinks the binary that is installed.
echo "install: generating the manual (swift package generate-manual)" >&2
swift package --scratch-path "$scratch" generate-manual --authors "the mramfs developers" >&2
manual="$scratch/plugins/GenerateManual/outputs/MramfsCLI/mramfs.1"
[[ -f $manual ]] || { echo "install: the plugin did not write $manual" >&2; exit 1; }

echo "install: swift build -c release --static-swift-stdlib (into $scratch)" >&2
swift build -c release --static-swift-stdlib --product mramfs --scratch-path "$scratch" >&2
bin="$(swift build -c release --static-swift-stdlib --scratch-path "$scratch" --show-bin-path)/mramfs"
[[ -x $bin ]] || { echo "install: the build did not produce $bin" >&2; exit 1; }

root="$destdir$prefix"
install -d "$root/bin" "$root/share/man/man1" "$root/share/bash-completion/completions" \
  "$root/share/zsh/site-functions" "$root/share/fish/vendor_completions.d"
install -m 0755 "$bin" "$root/bin/mramfs"
# The generator copies each subcommand's discussion verbatim, blank lines between paragraphs
# included; mdoc wants a .Pp there (man -l warns "Empty input line" otherwise).
sed 's/^$/.Pp/' "$manual" >"$root/share/man/man1/mramfs.1"
chmod 0644 "$root/share/man/man1/mramfs.1"
"$bin" --generate-completion-script bash >"$root/share/bash-completion/completions/mramfs"
"$bin" --generate-completion-script zsh >"$root/share/zsh/site-functions/_mramfs"
"$bin" --generate-completion-script fish >"$root/share/fish/vendor_completions.d/mramfs.fish"

echo "installed mramfs $("$root/bin/mramfs" --version) into $root:" >&2
for f in bin/mramfs share/man/man1/mramfs.1 share/bash-completion/completions/mramfs \
  share/zsh/site-functions/_mramfs share/fish/vendor_completions.d/mramfs.fish; do
  echo "  $root/$f" >&2
done
