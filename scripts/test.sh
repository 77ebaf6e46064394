#!/usr/bin/env bash
# Runs every knat test (root; re-runs itself through sudo when not root): installs what the
# tests need, then formatting, lints, the README's demo command verbatim, unit/golden/
# packet-flow tests, the real-kernel network-namespace tests, the end-to-end tier on a real
# control plane (etcd, kube-apiserver, kube-controller-manager and upstream kube-proxy), the
# real-kubelet-node tier and upstream's sig-network conformance tests with kube-proxy and knat.
# The Kubernetes binaries and e2e.test are built from Go modules once by scripts/build-k8s.sh and
# scripts/build-e2e.sh and cached under /var/cache/knat-e2e (see docs/testing.md). Each step
# says what it does and how long it takes on a first run; the times are printed at the end.
# With CI=true a tool that cannot be built or installed fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/root.sh
source scripts/lib/root.sh
root_or_reexec scripts/test.sh "$@"
# shellcheck source=scripts/lib/progress.sh
source scripts/lib/progress.sh

# A full run needs a few GB: the test build (1.8 GB measured), the images and, the first time, the
# Go build cache. Say so before a linker dies of a full disk halfway through.
free_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ "$free_kb" -lt $((3 * 1024 * 1024)) ]; then
  echo "test.sh: only $((free_kb / 1024)) MB free on the filesystem of $(pwd); a full run needs about 3 GB (here, with empty caches, the Go module and build caches took 7.6 GB more and /var/cache/knat-e2e 2.4 GB)" >&2
  exit 1
fi

run_start=$(date +%s)
times=()
step_start=$run_start
# step_done NAME: records the time since the previous step_done (or the start).
step_done() {
  local now
  now=$(date +%s)
  times+=("$(printf '%-52s %5d s' "$1" $((now - step_start)))")
  step_start=$now
}

bash scripts/install-deps.sh
step_done "install packages"

progress "cargo fmt --check"
cargo fmt --all -- --check
progress_cargo "cargo clippy, the whole workspace" "compiles it: about 5 min the first time" \
  clippy --workspace --all-targets -- -D warnings
step_done "fmt and clippy"

bash scripts/check-readme.sh
bash scripts/check-root-reexec.sh
step_done "the README's two commands (the demo run verbatim)"

progress "scripts/build-k8s.sh: etcd and the Kubernetes components from Go modules (about 10 min the first time, cached afterwards)"
if [ "${CI:-}" = "true" ]; then
  bash scripts/build-k8s.sh >/dev/null
elif ! bash scripts/build-k8s.sh >/dev/null; then
  echo "test.sh: WARNING: could not build the Kubernetes binaries; the e2e tier will report SKIPPED" >&2
fi
progress "scripts/build-e2e.sh: upstream's e2e.test, ginkgo and CoreDNS (about 5 min the first time, 15 min with an empty Go build cache; cached afterwards)"
if [ "${CI:-}" = "true" ]; then
  bash scripts/build-e2e.sh >/dev/null
elif ! bash scripts/build-e2e.sh >/dev/null; then
  echo "test.sh: WARNING: could not build e2e.test; the upstream conformance comparison will report SKIPPED" >&2
fi
step_done "Kubernetes binaries and e2e.test (build or cache)"

progress_cargo "compiling the test binaries" "about 5 min the first time" \
  test --workspace --all-targets --no-run
step_done "compile the tests"

# The long tiers run one by one with their output shown as it comes (their steps say what they
# are doing); every other target (a new one too) runs in the first group.
declare -A slow=(
  [netns]="real kernel: the lab cluster in network namespaces, both iptables backends (about 15 s)"
  [agent_netns]="real kernel: knat run in network namespaces (about 30 s)"
  [faults]="real kernel: faults under counted traffic (flushes, failing/hanging restores, xtables lock, SIGKILL at 10,000 Services, a 60 s churn soak, bad manifests and config, listeners) (about 2 min)"
  [e2e]="real control plane: knat beside upstream kube-proxy (about 3.5 min: 10 API server restarts and the watch expiry included)"
  [rule_diff]="real control plane: every rule of knat and kube-proxy compared, nft and legacy, IPv4 and IPv6 (about 20 s)"
  [events]="real control plane: knat's Kubernetes Events (port taken, failing restores; about 20 s)"
  [rbac]="real control plane: kubectl auth can-i --list as knat's ServiceAccount equals docs/operations.md (about 10 s)"
  [nodes]="real kubelet nodes: the DaemonSet takes over from kube-proxy (about 2 min, plus 5-10 min of image builds the first time)"
  [upstream_conformance]="upstream's sig-network conformance tests, kube-proxy then knat (about 4 min)"
)
order=(netns agent_netns faults e2e rule_diff events rbac nodes upstream_conformance)
mapfile -t all_tests < <(cargo metadata --no-deps --format-version 1 --quiet |
  python3 -c 'import json, sys
for p in json.load(sys.stdin)["packages"]:
    for t in p["targets"]:
        if "test" in t["kind"]:
            print(t["name"])')
fast_args=()
for t in "${all_tests[@]}"; do
  [ -n "${slow[$t]:-}" ] || fast_args+=(--test "$t")
done

# is_test_target NAME: whether cargo lists NAME as a test target. (Not `printf | grep -q`: grep
# exits at its first match, printf then dies of SIGPIPE, and pipefail turned a found target into
# "no test target e2e" in a CI rehearsal.)
is_test_target() {
  local name
  for name in "${all_tests[@]}"; do
    [ "$name" = "$1" ] && return 0
  done
  return 1
}

log=$(mktemp /tmp/knat-test.XXXXXX)
trap 'rm -f "$log"' EXIT
status=0
progress "unit, golden, planner, packet-flow and the shorter real-kernel tests: lib, bins, examples and ${fast_args[*]//--test /} (about 1 min)"
cargo test --workspace --no-fail-fast --lib --bins --examples "${fast_args[@]}" 2>&1 | tee -a "$log" ||
  status=1
step_done "unit and short tests"
for t in "${order[@]}"; do
  is_test_target "$t" || { echo "test.sh: no test target $t" >&2; exit 1; }
  progress "${slow[$t]}"
  cargo test --workspace --no-fail-fast --test "$t" -- --nocapture 2>&1 | tee -a "$log" || status=1
  step_done "$t"
done

passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed; [0-9]+ failed' "$log" | awk '{s+=$6} END {print s+0}')
echo
echo "times:"
printf '  %s\n' "${times[@]}"
printf '  %-52s %5d s\n' "total" $(($(date +%s) - run_start))
echo "knat: $passed passed, $failed failed"
exit "$status"
