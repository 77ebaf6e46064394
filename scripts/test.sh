#!/usr/bin/env bash
# Runs every knat test: formatting, lints, unit/golden/packet-flow tests, and the real-kernel
# network-namespace tests (root), and the end-to-end tier on a real control plane (etcd,
# kube-apiserver, kube-controller-manager and upstream kube-proxy, built once by
# scripts/build-k8s.sh and cached under /var/cache/knat-e2e; see docs/testing.md). Installs what the tests need first.
# With CI=true a missing tool or missing root privilege fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  if [ "${CI:-}" = "true" ]; then
    echo "test.sh: the real-kernel tests need root (network namespaces, iptables); CI=true, failing" >&2
    exit 1
  fi
  echo "test.sh: WARNING: not root; the network-namespace tests will report SKIPPED" >&2
fi
bash scripts/install-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== scripts/build-k8s.sh (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kube-proxy, kubelet, agnhost for the e2e and node tiers; cached)"
if [ "${CI:-}" = "true" ]; then
  bash scripts/build-k8s.sh >/dev/null
elif ! bash scripts/build-k8s.sh >/dev/null; then
  echo "test.sh: WARNING: could not build the Kubernetes binaries; the e2e tier will report SKIPPED" >&2
fi
echo "== scripts/build-e2e.sh (upstream's e2e.test, ginkgo and CoreDNS for the sig-network conformance comparison; cached)"
if [ "${CI:-}" = "true" ]; then
  bash scripts/build-e2e.sh >/dev/null
elif ! bash scripts/build-e2e.sh >/dev/null; then
  echo "test.sh: WARNING: could not build e2e.test; the upstream conformance comparison will report SKIPPED" >&2
fi
echo "== cargo test (unit, golden, packet-flow, real-kernel namespace tests, real control plane, real kubelet nodes, upstream sig-network conformance with kube-proxy and knat)"
cargo test --workspace --all-targets --no-fail-fast 2>&1 | tee /tmp/knat-test-$$.log
status=${PIPESTATUS[0]}
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' /tmp/knat-test-$$.log | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' /tmp/knat-test-$$.log | awk '{s+=$1} END {print s+0}')
rm -f /tmp/knat-test-$$.log
echo "knat: $passed passed, $failed failed"
exit "$status"
