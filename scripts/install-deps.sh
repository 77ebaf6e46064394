#!/usr/bin/env bash
# Installs the system tools knat's tests and demo need (Debian/Ubuntu): iptables (both the nft
# and legacy backends), nftables (the `nft` command), iproute2, conntrack, and openssl + curl for
# the end-to-end tier, and for the real-node tier and knat's image: containerd (with ctr), runc,
# the CNI plugins, umoci, skopeo and mmdebstrap; python3 and jq for the scripts. Runs apt-get
# only when something is missing.
set -euo pipefail
need=()
for tool in iptables-nft-restore iptables-legacy-restore nft ip conntrack sysctl openssl curl flock \
  containerd ctr runc umoci skopeo mmdebstrap nsenter unshare python3 jq; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
[ -x /usr/lib/cni/bridge ] || need+=("/usr/lib/cni/bridge")
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${need[*]} and not root; install iptables nftables iproute2 conntrack" >&2
  exit 1
fi
# shellcheck source=scripts/lib/progress.sh
source "$(dirname "$0")/lib/progress.sh"
progress "install-deps: installing Debian packages (missing: ${need[*]}); about 1-2 min the first time"
export DEBIAN_FRONTEND=noninteractive
progress_run "apt-get update" "a few seconds to a minute" apt-get update -qq
progress_run "apt-get install" "about 1 min" apt-get install -y -qq iptables nftables iproute2 \
  conntrack procps openssl curl util-linux python3 jq \
  containerd runc containernetworking-plugins umoci skopeo mmdebstrap >/dev/null
