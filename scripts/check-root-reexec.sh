#!/usr/bin/env bash
# Unit test of scripts/lib/root.sh (run by scripts/test.sh, as root): the demo and test scripts
# started by a user who is not root (nobody, through setpriv) must
#   1. without sudo on PATH: exit 1 with one line saying to run as root, before doing anything;
#   2. with sudo on PATH: exec sudo with env PATH=<the user's PATH> bash <the script> <args>.
# sudo is a stand-in here that records its arguments (this is a test of the shell logic; the
# real sudo needs a sudoers entry this machine does not have).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "check-root-reexec: needs root (setpriv to nobody)" >&2; exit 1; }
command -v setpriv >/dev/null || { echo "check-root-reexec: setpriv (util-linux) is missing" >&2; exit 1; }

work=$(mktemp -d /tmp/knat-root-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
# A PATH with only what the scripts run before they re-exec, so that a real sudo is not found.
mkdir "$work/bin"
for tool in bash id basename dirname; do
  ln -s "$(command -v "$tool")" "$work/bin/$tool"
done
as_nobody() {
  setpriv --reuid=65534 --regid=65534 --clear-groups env -i "PATH=$1" HOME=/nonexistent "${@:2}"
}
fail() {
  echo "check-root-reexec: FAILED: $*" >&2
  exit 1
}

for script in scripts/demo.sh scripts/test.sh; do
  status=0
  out=$(as_nobody "$work/bin" bash "$script" --example-arg 2>&1) || status=$?
  [ "$status" -eq 1 ] || fail "$script without root or sudo exited $status, not 1: $out"
  case $out in
    *"needs root"*"sudo is not installed"*"run it as root"*) ;;
    *) fail "$script without root or sudo said: $out" ;;
  esac
  [ "$(printf '%s\n' "$out" | wc -l)" -eq 1 ] || fail "$script said more than one line: $out"
done
echo "check-root-reexec: without root or sudo, demo.sh and test.sh stop with: $out"

cat >"$work/bin/sudo" <<EOF
#!$(command -v bash)
printf '%s\n' "\$@" > "$work/sudo-args"
EOF
chmod 755 "$work/bin/sudo"
chmod 777 "$work"
for script in scripts/demo.sh scripts/test.sh; do
  rm -f "$work/sudo-args"
  out=$(as_nobody "$work/bin" bash "$script" --example-arg 2>&1) || fail "$script with sudo: $out"
  [ -f "$work/sudo-args" ] || fail "$script did not run sudo: $out"
  expected=$(printf '%s\n' env "PATH=$work/bin" bash "$script" --example-arg)
  [ "$(cat "$work/sudo-args")" = "$expected" ] ||
    fail "$script ran sudo with $(tr '\n' ' ' <"$work/sudo-args"), expected $(echo "$expected" | tr '\n' ' ')"
done
echo "check-root-reexec: with sudo, demo.sh and test.sh re-run as: sudo $(tr '\n' ' ' <"$work/sudo-args")"
