#!/usr/bin/env bash
# Installs the system tools knat's tests and demo need (Debian/Ubuntu): iptables (both the nft
# and legacy backends), nftables (the `nft` command), iproute2, conntrack, and openssl + curl for
# the end-to-end tier. Runs apt-get only when something is missing.
set -euo pipefail
need=()
for tool in iptables-nft-restore iptables-legacy-restore nft ip conntrack sysctl openssl curl flock; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing ${need[*]} and not root; install iptables nftables iproute2 conntrack" >&2
  exit 1
fi
echo "install-deps: installing iptables nftables iproute2 conntrack (missing: ${need[*]})"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq iptables nftables iproute2 conntrack procps openssl curl util-linux >/dev/null
