#!/usr/bin/env bash
# Builds (once) and caches upstream's end-to-end suite, `e2e.test` (k8s.io/kubernetes/test/e2e,
# the same release and the same tool module as scripts/build-k8s.sh's binaries), the `ginkgo`
# CLI of the same module graph (only needed to run the suite in parallel processes; e2e.test
# runs standalone with --ginkgo.* flags), `regression-issue-74839` (the server of the
# Conntrack invalid-state test's image, test/images/regression-issue-74839), and `coredns` (the
# cluster DNS, from the tool module integration/upstream-e2e/coredns: only the plugins used).
#
#   scripts/build-e2e.sh            build if missing, then print the bin directory
#   scripts/build-e2e.sh --print    print the bin directory, exit 1 if the binaries are missing
#
# Environment:
#   KNAT_K8S_VERSION   k8s.io/kubernetes version (default v1.37.2)
#   KNAT_ETCD_VERSION  only to find scripts/build-k8s.sh's directory (default v3.7.3)
#   KNAT_E2E_CACHE     cache root (default /var/cache/knat-e2e); binaries land in
#                      $KNAT_E2E_CACHE/e2e-$KNAT_K8S_VERSION/bin
#
# The tool module is the one scripts/build-k8s.sh built the cluster's binaries with (its
# generated copy when present, else integration/k8s-tools/kubernetes when it pins the same
# release), so the suite and the components share one module graph. The version variables are
# set as build-k8s.sh sets them, so the framework reports the release (not v0.0.0-master).
# Idempotent: when every binary and the stamp are present it returns at once. Concurrent runs
# serialise on a lock file. A cold build takes many minutes on a small machine
# (integration/upstream-e2e/README.md); it runs under `nice` with -trimpath, stripped.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
k8s_version="${KNAT_K8S_VERSION:-v1.37.2}"
etcd_version="${KNAT_ETCD_VERSION:-v3.7.3}"
cache="${KNAT_E2E_CACHE:-/var/cache/knat-e2e}"
root="$cache/e2e-$k8s_version"
bin="$root/bin"
stamp="$bin/.complete"
tools=(e2e.test ginkgo regression-issue-74839 coredns)

coredns_mod="$repo/integration/upstream-e2e/coredns"
coredns_version=$(sed -n 's|^require github.com/coredns/coredns \(v[0-9.]*\)$|\1|p' "$coredns_mod/go.mod")

# Complete: every binary, and the stamp names the CoreDNS version the tool module pins now.
complete() {
  [ -f "$stamp" ] || return 1
  grep -qx "coredns $coredns_version" "$stamp" || return 1
  for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done
}

# shellcheck source=scripts/lib/build-cache.sh
source "$repo/scripts/lib/build-cache.sh"
build_cache_gate build-e2e "${1:-}"

log() { echo "build-e2e: $*" >&2; }
start=$(date +%s)
src="$root/src"
rm -rf "$src" "$bin.tmp"
mkdir -p "$src" "$bin.tmp"
export GOFLAGS="-trimpath -buildvcs=false -mod=mod"
export CGO_ENABLED=0

# --- the tool module -----------------------------------------------------------------------------
k8s_src="$cache/k8s-$k8s_version-etcd-$etcd_version/src/kubernetes"
kmod="$repo/integration/k8s-tools/kubernetes/go.mod"
if [ -f "$k8s_src/go.mod" ] && grep -q "k8s.io/kubernetes $k8s_version\$" "$k8s_src/go.mod"; then
  moddir="$k8s_src"
elif [ -f "$kmod" ] && grep -q "k8s.io/kubernetes $k8s_version\$" "$kmod"; then
  moddir="$(dirname "$kmod")"
else
  log "no tool module for k8s.io/kubernetes $k8s_version: run KNAT_K8S_VERSION=$k8s_version scripts/build-k8s.sh first"
  exit 1
fi
cp "$moddir/go.mod" "$src/go.mod"
[ -f "$moddir/go.sum" ] && cp "$moddir/go.sum" "$src/go.sum"
log "tool module: $moddir/go.mod"

pkg="k8s.io/component-base/version"
cgo="k8s.io/client-go/pkg/version"
major="${k8s_version#v}"; major="${major%%.*}"
minor="${k8s_version#v*.}"; minor="${minor%%.*}"
vflags=""
for p in "$pkg" "$cgo"; do
  vflags="$vflags -X $p.gitVersion=$k8s_version -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done

log "building e2e.test $k8s_version (go test -c k8s.io/kubernetes/test/e2e; log: $root/build.log)"
(
  cd "$src"
  nice -n 10 go test -c -ldflags "-s -w $vflags" -o "$bin.tmp/e2e.test" k8s.io/kubernetes/test/e2e
) >>"$root/build.log" 2>&1 || { log "e2e.test build failed:"; tail -40 "$root/build.log" >&2; exit 1; }
e2e_done=$(date +%s)

log "building regression-issue-74839"
(
  cd "$src"
  nice -n 10 go build -ldflags "-s -w" -o "$bin.tmp/regression-issue-74839" k8s.io/kubernetes/test/images/regression-issue-74839
) >>"$root/build.log" 2>&1 || { log "regression-issue-74839 build failed:"; tail -40 "$root/build.log" >&2; exit 1; }

log "building coredns $coredns_version ($coredns_mod)"
mkdir -p "$src/coredns"
cp "$coredns_mod/go.mod" "$coredns_mod/go.sum" "$coredns_mod/main.go" "$src/coredns/"
(
  cd "$src/coredns"
  nice -n 10 go build -ldflags "-s -w" -o "$bin.tmp/coredns" .
) >>"$root/build.log" 2>&1 || { log "coredns build failed:"; tail -40 "$root/build.log" >&2; exit 1; }

# The ginkgo CLI at the version k8s.io/kubernetes requires (the suite refuses a CLI whose
# version differs from the library's).
ginkgo_version=$(cd "$src" && go list -m -f '{{.Version}}' github.com/onsi/ginkgo/v2)
log "building ginkgo $ginkgo_version"
(
  cd "$src"
  nice -n 10 go build -ldflags "-s -w" -o "$bin.tmp/ginkgo" github.com/onsi/ginkgo/v2/ginkgo
) >>"$root/build.log" 2>&1 || { log "ginkgo build failed:"; tail -40 "$root/build.log" >&2; exit 1; }

"$bin.tmp/e2e.test" --list-images >"$bin.tmp/images.txt" 2>>"$root/build.log" \
  || { log "e2e.test --list-images failed:"; tail -20 "$root/build.log" >&2; exit 1; }

rm -rf "$bin"
mv "$bin.tmp" "$bin"
printf 'kubernetes %s\nginkgo %s\ncoredns %s\ntool module %s\nbuilt %s in %ss (e2e.test %ss)\n' "$k8s_version" \
  "$ginkgo_version" "$coredns_version" "$moddir/go.mod" "$(date -u +%FT%TZ)" "$(( $(date +%s) - start ))" \
  "$(( e2e_done - start ))" >"$stamp"
log "done in $(( $(date +%s) - start ))s: $bin"
echo "$bin"
