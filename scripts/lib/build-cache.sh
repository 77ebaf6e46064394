# shellcheck shell=bash disable=SC2154  # $root and $bin are the caller's
# The build-once gate scripts/build-k8s.sh and scripts/build-e2e.sh share (sourced). The caller
# defines `complete` (0 when every binary and the stamp are in place) and sets $root and $bin.
#
#   build_cache_gate NAME [--print]
#
# --print: print $bin and exit 0 when complete, else exit 1 with a message. Otherwise: print
# $bin and exit 0 when complete; else check that go is installed, take the lock $root/.lock
# (fd 9, held until the script exits, so concurrent runs serialise) and return to build,
# unless another run completed the build while this one waited.
build_cache_gate() {
  local name=$1 mode=${2:-}
  if [ "$mode" = "--print" ]; then
    complete || { echo "$name: binaries missing in $bin" >&2; exit 1; }
    echo "$bin"
    exit 0
  fi
  if complete; then
    echo "$bin"
    exit 0
  fi
  command -v go >/dev/null 2>&1 || { echo "$name: go is not installed" >&2; exit 1; }
  mkdir -p "$root"
  exec 9>"$root/.lock"
  flock 9
  if complete; then # another run finished it while we waited
    echo "$bin"
    exit 0
  fi
}
