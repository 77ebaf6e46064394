#!/usr/bin/env bash
# Runs upstream's sig-network e2e suite (e2e.test of the tier's release) against the real-node
# tier twice, with upstream kube-proxy and with knat as the DaemonSet, with the same focus and
# skips, and writes the comparison table (target/upstream-e2e/table.md). Root. Builds what it
# needs first (scripts/build-k8s.sh, scripts/build-e2e.sh, the images; all cached).
#
#   scripts/upstream-e2e.sh [--procs N] [--proxies both|kube-proxy|knat] [--focus RE] [--skip RE]
#
# Exit 1 when a test that passes with kube-proxy does not pass with knat.
# Focus and skips: integration/upstream-e2e/README.md says why each skip is there.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/root.sh
source scripts/lib/root.sh
root_or_reexec scripts/upstream-e2e.sh "$@"
focus='\[sig-network\] (Services|Conntrack|Networking)'
skip='\[Serial\]|\[Disruptive\]|\[Slow\]|\[Flaky\]|\[Feature:[^]]+\]|SCTP|IPv6|DualStack|HealthCheckNodePort correctly when ExternalTrafficPolicy changes'
procs=3
proxies=both
while [ $# -gt 0 ]; do
  case $1 in
    --procs) procs=$2; shift 2 ;;
    --proxies) proxies=$2; shift 2 ;;
    --focus) focus=$2; shift 2 ;;
    --skip) skip=$2; shift 2 ;;
    *) echo "upstream-e2e: unknown argument $1" >&2; exit 2 ;;
  esac
done
bash scripts/build-k8s.sh >/dev/null
e2e_bin=$(bash scripts/build-e2e.sh)
exec cargo run --quiet --release -p knat-testbed --bin upstream-e2e -- \
  --e2e-bin "$e2e_bin" --focus "$focus" --skip "$skip" --procs "$procs" --proxies "$proxies" \
  --out target/upstream-e2e
