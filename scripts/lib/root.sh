# shellcheck shell=bash
# Root for the scripts that need it (sourced). The README's and docs' commands are written
# without `sudo` so that they run verbatim as root on a machine that has no sudo (a fresh
# Debian root login); for a user who is not root they re-run themselves through sudo.
#
#   source scripts/lib/root.sh
#   root_or_reexec "$0" "$@"      # at the top of a script that needs root, before anything else
#
# Root: returns. Not root with sudo: says so on stderr and execs `sudo` on the same script and
# arguments, keeping PATH (cargo, go and rustup under $HOME are on the user's PATH, not on
# sudo's secure_path), CARGO_HOME, RUSTUP_HOME (rustup's defaults under the user's home when
# they exist, so that the user's toolchain is found; cargo then writes its registry cache there
# as root), GOPATH, GOCACHE, GOMODCACHE, KNAT_E2E_CACHE and CI. Not root and no sudo: one line
# saying how to run it, exit 1.
root_or_reexec() {
  local script=$1
  shift
  [ "$(id -u)" -eq 0 ] && return 0
  local name
  name=$(basename "$script")
  if ! command -v sudo >/dev/null 2>&1; then
    echo "$name: needs root (network namespaces, iptables) and sudo is not installed:" \
      "run it as root, e.g. su -c 'bash $script $*'" >&2
    exit 1
  fi
  echo "$name: not root; re-running through sudo" >&2
  local keep=("PATH=$PATH")
  local var
  for var in CARGO_HOME RUSTUP_HOME GOPATH GOCACHE GOMODCACHE CI KNAT_E2E_CACHE; do
    [ -n "${!var:-}" ] && keep+=("$var=${!var}")
  done
  # rustup's default homes are under the invoking user's HOME, which sudo may reset.
  [ -z "${CARGO_HOME:-}" ] && [ -d "$HOME/.cargo" ] && keep+=("CARGO_HOME=$HOME/.cargo")
  [ -z "${RUSTUP_HOME:-}" ] && [ -d "$HOME/.rustup" ] && keep+=("RUSTUP_HOME=$HOME/.rustup")
  exec sudo env "${keep[@]}" bash "$script" "$@"
}
