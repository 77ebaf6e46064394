#!/usr/bin/env bash
# Peak RSS of knat's first full sync (docs/performance.md, "Peak RSS of the first full sync").
#
#   scripts/peak-rss.sh BACKEND KNAT_BINARY TAG [SERVICES]
#
# BACKEND is nft or legacy. Writes SERVICES (10,000 by default) ClusterIP Services with ten
# endpoints each over 100 nodes into one manifest, starts `KNAT_BINARY run --from-files` in a
# network namespace of its own (created and deleted here), samples VmRSS every 50 ms until 3 s
# after the `sync done` line, and prints that line and VmHWM / VmRSS. Samples and the agent's
# log go to $PEAK_RSS_DIR (default /tmp/knat-peak-rss): TAG.rss ("ms-since-start KiB
# [restore-running]") and TAG.log. Root only; touches nothing outside its namespace.
set -euo pipefail

backend=${1:?backend: nft or legacy}
bin=${2:?knat binary}
tag=${3:?tag}
services=${4:-10000}
dir=${PEAK_RSS_DIR:-/tmp/knat-peak-rss}
mkdir -p "$dir/manifests-$services"
manifest=$dir/manifests-$services/all.yaml
if [ ! -s "$manifest" ]; then
  python3 - "$services" "$manifest" <<'EOF'
import sys
count, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as out:
    out.write("apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\nstatus:\n"
              "  addresses: [{type: InternalIP, address: 192.168.0.2}]\n")
    for svc in range(count):
        ns = f"ns{svc % 50}"
        vip = f"10.{96 + (svc >> 16)}.{(svc >> 8) & 255}.{svc & 255}"
        out.write(f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{svc}, namespace: {ns}}}\n"
                  f"spec:\n  type: ClusterIP\n  clusterIP: {vip}\n  ports:\n"
                  f"  - {{name: http, port: 80, protocol: TCP, targetPort: 9000}}\n")
        out.write(f"---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n"
                  f"  name: svc{svc}-x\n  namespace: {ns}\n  labels: {{kubernetes.io/service-name: svc{svc}}}\n"
                  f"addressType: IPv4\nports: [{{name: http, port: 9000, protocol: TCP}}]\nendpoints:\n")
        for ep in range(10):
            k = svc * 10 + ep
            out.write(f"- addresses: [10.{128 + (k >> 16)}.{(k >> 8) & 255}.{k & 255}]\n"
                      f"  nodeName: node-{(svc + ep) % 100}\n  conditions: {{ready: true}}\n")
EOF
fi

ns=knat-peak-rss-$$-$tag
ip netns add "$ns"
pid=
cleanup() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  ip netns del "$ns"
}
trap cleanup EXIT
ip netns exec "$ns" ip link set lo up
log=$dir/$tag.log
rss=$dir/$tag.rss
: >"$log"
ip netns exec "$ns" "$bin" run --from-files "$dir/manifests-$services" --hostname-override node-1 \
  --cluster-cidr 10.244.0.0/16 --iptables-backend "$backend" --ip-families ipv4 \
  --iptables-sync-period 1h --healthz-bind-address 127.0.0.1:10256 \
  --metrics-bind-address 127.0.0.1:10249 >/dev/null 2>>"$log" &
pid=$!
start=$(date +%s%N)
done_at=
: >"$rss"
# At most 20 minutes (an iptables-nft restore of 10,000 Services takes 13-120 s here).
for _ in $(seq 1 24000); do
  now=$(date +%s%N)
  kib=$(awk '/VmRSS/{print $2}' "/proc/$pid/status" 2>/dev/null || true)
  child=$(pgrep -P "$pid" | head -1 || true)
  echo "$(((now - start) / 1000000)) ${kib:-gone} ${child:+restore-running}" >>"$rss"
  if [ -z "$done_at" ] && grep -q "sync done" "$log"; then done_at=$now; fi
  if [ -n "$done_at" ] && [ $((now - done_at)) -ge 3000000000 ]; then break; fi
  sleep 0.05
done
if [ -z "$done_at" ]; then
  echo "$tag: no 'sync done' line; log: $log" >&2
  exit 1
fi
sed 's/\x1b\[[0-9;]*m//g' "$log" | grep "sync done" | head -1
echo "$tag $backend: $(grep -E 'VmHWM|VmRSS' "/proc/$pid/status" | tr -s ' \n' ' ')load $(cut -d' ' -f1-3 /proc/loadavg)"
