#!/usr/bin/env bash
# Checks scripts/install.sh the way a user meets its result: installs into a staging
# DESTDIR, then runs the installed binary, renders the man page with `man -l` and looks
# for every subcommand in it, and checks the three completion scripts. Exits non-zero
# with the reason on the first failure. Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

stage=$(mktemp -d /tmp/mramfs-install-check.XXXXXX)
trap 'rm -rf "$stage"' EXIT
fail() { echo "check-install: FAILED: $*" >&2; exit 1; }

DESTDIR="$stage" PREFIX=/usr/local bash scripts/install.sh
root="$stage/usr/local"
bin="$root/bin/mramfs"

[[ -x $bin ]] || fail "no executable at $bin"
"$bin" --version | grep -q '^[0-9]' || fail "mramfs --version printed no version"
if ldd "$bin" | grep -q libswiftCore; then fail "the installed binary needs the Swift runtime: $(ldd "$bin" | grep libswiftCore)"; fi
# The installed binary does real work: write a small synthetic guest and read it back.
"$bin" synth -o "$stage/small.mapped" --ram 16M --density 0.1 >/dev/null || fail "mramfs synth failed"
"$bin" info --json "$stage/small.mapped" | grep -q '"format" : "mapped-ram"' || fail "mramfs info did not read its own file"

page="$root/share/man/man1/mramfs.1"
[[ -f $page ]] || fail "no man page at $page"
text=$(MANWIDTH=120 man -l "$page" 2>"$stage/man.err") || fail "man -l failed: $(cat "$stage/man.err")"
[[ ! -s $stage/man.err ]] || fail "man -l warned: $(cat "$stage/man.err")"
subcommands=$("$bin" --help | awk '/^SUBCOMMANDS:/ {on = 1; next} on && /^  [a-z]/ {print $1}')
[[ -n $subcommands ]] || fail "mramfs --help lists no subcommands"
for sub in $subcommands; do
  grep -Eq "^ +$sub( |$)" <<<"$text" || fail "the man page has no section for '$sub'"
done

for f in share/bash-completion/completions/mramfs share/zsh/site-functions/_mramfs share/fish/vendor_completions.d/mramfs.fish; do
  [[ -s $root/$f ]] || fail "no completion script at $root/$f"
  for sub in $subcommands; do
    grep -q -- "$sub" "$root/$f" || fail "$f does not complete '$sub'"
  done
done
bash -n "$root/share/bash-completion/completions/mramfs" || fail "the bash completion does not parse"

echo "check-install: ok: binary, man page ($(wc -l <"$page") lines, subcommands: $(echo $subcommands)), bash/zsh/fish completions" >&2
