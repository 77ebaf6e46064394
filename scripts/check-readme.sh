#!/usr/bin/env bash
# Keeps the README's two commands true (run by scripts/test.sh): reads the first two fenced
# blocks of README.md, which must be one command each,
#   1. the demo command, run here verbatim (bash -c) and required to exit 0 and report that
#      every connection behaved as expected;
#   2. the test command, required to be exactly what .ci/run runs (CI runs it; running it here
#      would recurse).
# Neither may start with sudo: a fresh Debian root login has no sudo, and the scripts re-run
# themselves through sudo for users who are not root.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "check-readme: $*" >&2
  exit 1
}

# The first two fenced blocks' contents, one line each (a block of several lines is refused).
mapfile -t blocks < <(awk '
  /^```/ { if (inside) { print (lines == 1 ? body : "<" lines " lines>"); n++; if (n == 2) exit; inside = 0 }
           else { inside = 1; lines = 0; body = "" } next }
  inside && NF { lines++; body = $0 }
' README.md)
[ "${#blocks[@]}" -eq 2 ] || die "README.md has fewer than two fenced blocks"
demo=${blocks[0]}
tests=${blocks[1]}
for cmd in "$demo" "$tests"; do
  case $cmd in
    "<"*) die "a README command block must hold one command, found $cmd" ;;
    sudo\ *) die "README command '$cmd' starts with sudo, which a fresh root login does not have" ;;
  esac
done

ci_cmd=$(sed -n 's/^exec \(.*\)$/\1/p' .ci/run | tail -1)
[ -n "$ci_cmd" ] || die ".ci/run has no exec line"
[ "$tests" = "$ci_cmd" ] || die "README's test command '$tests' is not what .ci/run runs ('$ci_cmd')"
echo "check-readme: the test command '$tests' is .ci/run's"

echo "check-readme: running the demo command verbatim: $demo"
out=$(mktemp /tmp/knat-readme-demo.XXXXXX)
trap 'rm -f "$out"' EXIT
start=$(date +%s)
status=0
bash -c "$demo" 2>&1 | tee "$out" || status=$?
[ "$status" -eq 0 ] || die "the demo command '$demo' exited $status"
grep -q 'every connection behaved as kube-proxy' "$out" ||
  die "the demo command '$demo' did not report that every connection behaved as expected"
echo "check-readme: the demo command ran to the end in $(($(date +%s) - start)) s"
