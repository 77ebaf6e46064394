#!/usr/bin/env bash
# knat in a kind cluster, for machines with a container engine (it cannot run on the
# development machines, which have none). Steps:
#   1. create the cluster from kind-config.yaml (kubeProxyMode: none),
#   2. build the image from daemonset/Containerfile and load it into the nodes,
#   3. apply daemonset/ with ConfigMap knat filled in: the API server's node address (no proxy
#      serves the kubernetes Service yet) and the pod CIDR, and the image,
#   4. the knat checks: Local NodePort traffic keeps the client address, nodes without
#      endpoints drop, the health-check node port answers 200 / 503, scale to zero rejects,
#   5. the upstream [sig-network] Services / LoadBalancer e2e focus (--provider=local), built
#      from the same k8s.io/kubernetes release as the rest of the e2e tier.
#
# Environment: KIND (default kind), ENGINE (docker or podman, default: whichever exists),
# KEEP_CLUSTER=1 to keep the cluster, SKIP_UPSTREAM_E2E=1 to stop after step 4,
# KNAT_K8S_VERSION (default v1.37.2; kind node image kindest/node:$KNAT_K8S_VERSION).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
here="$repo/integration/kind"
kind="${KIND:-kind}"
engine="${ENGINE:-$(command -v docker >/dev/null 2>&1 && echo docker || echo podman)}"
version="${KNAT_K8S_VERSION:-v1.37.2}"
image="localhost/knat:kind"
cluster=knat
log() { echo "kind-e2e: $*" >&2; }
fail() { echo "kind-e2e: FAIL: $*" >&2; exit 1; }

cleanup() {
  if [ "${KEEP_CLUSTER:-}" != "1" ]; then
    "$kind" delete cluster --name "$cluster" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

log "creating the cluster ($version, kube-proxy disabled)"
"$kind" create cluster --config "$here/kind-config.yaml" --image "kindest/node:$version" --wait 0s
kubectl() { command kubectl --context "kind-$cluster" "$@"; }

log "building $image with $engine"
"$engine" build -f "$repo/daemonset/Containerfile" -t "$image" "$repo"
if [ "$engine" = podman ]; then
  archive=$(mktemp --suffix .tar)
  podman save -o "$archive" "$image"
  "$kind" load image-archive "$archive" --name "$cluster"
  rm -f "$archive"
else
  "$kind" load docker-image "$image" --name "$cluster"
fi

# Without a service proxy the kubernetes Service (10.96.0.1) is unreachable, so knat talks to
# the API server on the control-plane node's address, as every kube-proxy replacement does.
api_host=$("$engine" inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$cluster-control-plane")
log "applying daemonset/ (API server at $api_host:6443)"
overlay=$(mktemp -d)
cat >"$overlay/kustomization.yaml" <<EOF
resources: [$(realpath --relative-to="$overlay" "$repo/daemonset")]
images: [{name: knat, newName: ${image%:*}, newTag: ${image##*:}}]
patches:
  - patch: |-
      {apiVersion: v1, kind: ConfigMap, metadata: {name: knat, namespace: kube-system},
       data: {KUBERNETES_SERVICE_HOST: "$api_host", KUBERNETES_SERVICE_PORT: "6443",
              KNAT_CLUSTER_CIDR: 10.244.0.0/16}}
EOF
kubectl kustomize "$overlay" | kubectl apply -f -
rm -rf "$overlay"
kubectl -n kube-system rollout status ds/knat --timeout=180s
kubectl wait --for=condition=Ready nodes --all --timeout=180s

log "knat checks"
kubectl apply -f "$here/checks.yaml"
kubectl -n knat-e2e rollout status deploy/web --timeout=180s
node_ip() { "$engine" inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$1"; }
with_pods=$(node_ip "$cluster-worker")
without=$(node_ip "$cluster-worker2")
node_port=$(kubectl -n knat-e2e get svc web -o jsonpath='{.spec.ports[0].nodePort}')
hc_port=$(kubectl -n knat-e2e get svc web -o jsonpath='{.spec.healthCheckNodePort}')
# The client is a pod on the host network of the control-plane node: its address is the
# control-plane node's, which the server must see (no masquerade for Local).
client_ip=$api_host
run_client() { "$engine" exec "$cluster-control-plane" "$@"; }

deadline=$((SECONDS + 60))
until seen=$(run_client curl -s --max-time 2 "http://$with_pods:$node_port/clientip"); do
  [ $SECONDS -lt $deadline ] || fail "no answer on $with_pods:$node_port"
  sleep 1
done
[ "${seen%:*}" = "$client_ip" ] || fail "client address not preserved: server saw $seen, client is $client_ip"
log "ok: Local NodePort on the node with endpoints answers and sees $seen"
if run_client curl -s --max-time 2 "http://$without:$node_port/clientip" >/dev/null; then
  fail "the node without endpoints answered a Local NodePort"
fi
log "ok: the node without endpoints drops"
code=$(run_client curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$with_pods:$hc_port/" || true)
[ "$code" = 200 ] || fail "health check on $with_pods answered $code, expected 200"
code=$(run_client curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$without:$hc_port/" || true)
[ "$code" = 503 ] || fail "health check on $without answered $code, expected 503"
log "ok: health-check node port 200 / 503"
kubectl -n knat-e2e scale deploy/web --replicas=0
kubectl -n knat-e2e wait --for=delete pod -l app=web --timeout=120s
deadline=$((SECONDS + 30))
while :; do
  out=$(run_client curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$with_pods:$node_port/" 2>&1 || true)
  # REJECT answers at once (connection refused: 000 quickly); a DROP would time out.
  start=$SECONDS
  run_client curl -s --max-time 3 "http://$with_pods:$node_port/" >/dev/null 2>&1 || true
  [ $((SECONDS - start)) -lt 2 ] && break
  [ $SECONDS -lt $deadline ] || fail "no endpoints: expected REJECT, got a timeout ($out)"
  sleep 1
done
log "ok: scaled to zero, the NodePort rejects"
kubectl -n knat-e2e scale deploy/web --replicas=2
kubectl -n knat-e2e rollout status deploy/web --timeout=180s
log "knat checks passed"

if [ "${SKIP_UPSTREAM_E2E:-}" = "1" ]; then
  exit 0
fi

log "building the upstream e2e suite ($version)"
bin=$(bash "$repo/scripts/build-k8s.sh")
src="$(dirname "$bin")/src/kubernetes"
e2e="$(dirname "$bin")/e2e.test"
if [ ! -x "$e2e" ]; then
  (cd "$src" && GOFLAGS="-trimpath -mod=mod" go test -c -o "$e2e" k8s.io/kubernetes/test/e2e)
fi
kubeconfig=$(mktemp)
"$kind" get kubeconfig --name "$cluster" >"$kubeconfig"
# Focus: the Services and LoadBalancer tests kube-proxy replacements run. Skips:
#   Serial|Disruptive   restart nodes or the API server (covered by integration/e2e.rs)
#   Flaky|Slow          upstream-marked
#   SCTP                knat renders SCTP rules, but kind nodes lack the sctp module
#   IPv6|DualStack      the kind config is single-stack IPv4
#   Feature:LoadBalancer  needs a load-balancer provider (run cloud-provider-kind and drop
#                         this skip to include them)
#   GCE|AWS|Azure|ESIPP provider-specific (ESIPP tests need cloud LBs)
#   NetworkPolicy       not a service-proxy feature
#   ProxyTerminatingEndpoints [Feature:...] tests that need kubelet graceful shutdown
skip='\[Serial\]|\[Disruptive\]|\[Flaky\]|\[Slow\]|SCTP|IPv6|DualStack|\[Feature:LoadBalancer\]|GCE|\[Feature:AWS\]|Azure|ESIPP|NetworkPolicy|\[Feature:GracefulNodeShutdown\]'
if command -v cloud-provider-kind >/dev/null 2>&1; then
  log "cloud-provider-kind found: including [Feature:LoadBalancer]"
  cloud-provider-kind >/tmp/cloud-provider-kind.log 2>&1 &
  cpk=$!
  trap 'kill $cpk 2>/dev/null || true; cleanup' EXIT
  skip='\[Serial\]|\[Disruptive\]|\[Flaky\]|\[Slow\]|SCTP|IPv6|DualStack|GCE|\[Feature:AWS\]|Azure|NetworkPolicy|\[Feature:GracefulNodeShutdown\]'
fi
"$e2e" --provider=local --kubeconfig="$kubeconfig" \
  --ginkgo.focus='\[sig-network\] (Services|LoadBalancers)' \
  --ginkgo.skip="$skip" \
  --ginkgo.timeout=2h --ginkgo.v --report-dir="${REPORT_DIR:-/tmp/knat-kind-e2e}"
log "upstream [sig-network] Services / LoadBalancers e2e passed"
