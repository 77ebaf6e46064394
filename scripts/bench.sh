#!/usr/bin/env bash
# Runs the side-by-side cluster benchmark (issues 6 and 17): builds knat and the benchmark
# (release), the Kubernetes binaries (scripts/build-k8s.sh, cached under /var/cache/knat-e2e),
# then runs knat and upstream kube-proxy against one real kube-apiserver inside network
# namespaces and writes the table into docs/performance.md, between the markers of the run's
# backend (`cluster-bench:begin legacy` / `nft`). Needs root (re-runs itself through sudo when
# not root). Arguments go to the benchmark, e.g.
#   scripts/bench.sh --backend legacy --sizes 1000,10000,50000 --lb-sizes 100,10000 \
#       --churn-sizes 10000 --churn-secs 60 --samples 200 --changes 5
# (see bench/cluster/main.rs). It never touches the root network namespace.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib/root.sh
source scripts/lib/root.sh
root_or_reexec scripts/bench.sh "$@"
for tool in ip nft iptables-nft iptables-nft-restore openssl getconf; do
  command -v "$tool" >/dev/null || { echo "bench.sh: missing $tool (scripts/install-deps.sh)" >&2; exit 1; }
done
bash scripts/build-k8s.sh >/dev/null
cargo build --release --bin knat --example cluster-bench
exec target/release/examples/cluster-bench "$@"
