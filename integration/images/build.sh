#!/usr/bin/env bash
# Builds the images of knat's container tests (test support, not shipped), without a container
# engine or a registry, with the packing helpers of scripts/image.sh (scripts/lib/oci.sh):
#
#   integration/images/build.sh OUTDIR [pause] [agnhost] [kube-proxy]     (root; default: all)
#
# Each writes OUTDIR/<name>.tar (docker-archive) and OUTDIR/<name>.ref (its reference):
#   pause       localhost/pause:3.10        /pause, integration/images/pause.c built static;
#                                           user 65535, as upstream's pause image
#   agnhost     localhost/agnhost:v1.37.2   /agnhost (upstream's e2e workload binary), entrypoint
#                                           ["/agnhost"], cmd ["pause"], minimal /etc, /tmp
#   kube-proxy  localhost/kube-proxy:v1.37.2  /usr/local/bin/kube-proxy on the same minimal
#                                           iptables root filesystem as knat's image
# agnhost and kube-proxy come from scripts/build-k8s.sh's directory (KNAT_K8S_VERSION). Every
# image is cached under /var/cache/knat-e2e/images/<name>-<hash of its inputs> and rebuilt only
# when those inputs change; each is read back and run with runc once, when it is built.
set -euo pipefail
OCI_NAME=images
# shellcheck source=scripts/lib/oci.sh
source "$(dirname "$0")/../../scripts/lib/oci.sh"

[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || oci_die "usage: integration/images/build.sh OUTDIR [pause] [agnhost] [kube-proxy]"
outdir=$1
shift
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(pause agnhost kube-proxy)
[ "$(id -u)" -eq 0 ] || oci_die "needs root (runc, mmdebstrap root mode, files owned by root in the images)"
oci_need gcc sha256sum cp
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
here="$OCI_REPO/integration/images"
k8s_version="${KNAT_K8S_VERSION:-v1.37.2}"
cache="$OCI_CACHE/images"
k8s_bin=""

k8s_bin() {
  if [ -z "$k8s_bin" ]; then
    k8s_bin=$(bash "$OCI_REPO/scripts/build-k8s.sh" --print 2>/dev/null) \
      || oci_die "the Kubernetes binaries are not built yet: run scripts/build-k8s.sh"
  fi
  echo "$k8s_bin"
}

# What every image's key includes: the packing code and the tools that pack.
common_key() {
  cat "$OCI_REPO/scripts/lib/oci.sh" "$here/build.sh"
  umoci --version
  skopeo --version
}

# deliver NAME KEY: copy the cached image to OUTDIR and print its report.
deliver() {
  local name=$1 dir="$cache/$1-$2"
  cp --reflink=auto "$dir/$name.tar" "$outdir/$name.tar.tmp"
  mv "$outdir/$name.tar.tmp" "$outdir/$name.tar"
  cp "$dir/$name.ref" "$outdir/$name.ref"
  sed "s|$dir/|$outdir/|" "$dir/report"
}

# built NAME KEY: true (and OUTDIR holds NAME's files) when the cache has KEY's image.
built() {
  [ -f "$cache/$1-$2/.complete" ] || return 1
  oci_log "$1: cached ($cache/$1-$2)"
  deliver "$1" "$2"
}

# finish NAME KEY TREE ENTRYPOINT_JSON CHECK...: self-check the image just packed into the
# cache directory, record its report, mark it complete, copy it to OUTDIR.
finish() {
  local name=$1 key=$2 tree=$3 ep=$4 dir="$cache/$1-$2"
  shift 4
  oci_selfcheck "$name" "$dir" "$tree" "$ep" "$@"
  oci_report "$name" "$dir" "$tree" >"$dir/report"
  touch "$dir/.complete"
  deliver "$name" "$key"
}

# newdir NAME KEY: an empty cache directory for KEY (stale builds of NAME are removed).
newdir() {
  mkdir -p "$cache"
  rm -rf "${cache:?}/$1"-*
  mkdir -p "$cache/$1-$2"
}

build_pause() {
  local key work tree pid ppid rc
  key=$({ common_key; cat "$here/pause.c"; gcc --version; dpkg-query -W libc6-dev; } | sha256sum | cut -c1-16)
  built pause "$key" && return 0
  oci_tmpdir work
  oci_log "pause: gcc -static $here/pause.c"
  gcc -static -O2 -s -Wall -Wextra -Werror -o "$work/pause" "$here/pause.c"
  # Signal handling and reaping, on the host in a new PID namespace where pause is PID 1: an
  # orphan (sleep 1) is reparented to it and must not stay a zombie; SIGTERM must end it with 0.
  unshare --pid --fork --kill-child sh -c '(sleep 1 &); exec "$0"' "$work/pause" 2>"$work/pause.log" &
  pid=$!
  OCI_PIDS+=("$pid")
  ppid=""
  for _ in $(seq 50); do ppid=$(pgrep -P "$pid" -x pause) && break; sleep 0.1; done
  [ -n "$ppid" ] || oci_die "pause: did not start ($(cat "$work/pause.log"))"
  ps --ppid "$ppid" -o comm= | grep -qx sleep || oci_die "pause: the orphan was not reparented to it"
  for _ in $(seq 30); do [ -z "$(ps --ppid "$ppid" -o stat=)" ] && break; sleep 0.1; done
  [ -z "$(ps --ppid "$ppid" -o stat=)" ] || oci_die "pause: did not reap its orphan: $(ps --ppid "$ppid" -o pid=,stat=,comm=)"
  kill -TERM "$ppid"
  rc=0
  wait "$pid" || rc=$?
  OCI_PIDS=()
  [ $rc -eq 0 ] || oci_die "pause: exited $rc on SIGTERM: $(cat "$work/pause.log")"
  oci_log "pause: reaped an orphan, exited 0 on SIGTERM ($(cat "$work/pause.log"))"
  tree="$work/rootfs"
  install -d -m 755 "$tree"
  install -m 755 "$work/pause" "$tree/pause"
  newdir pause "$key"
  oci_pack pause localhost/pause:3.10 "$tree" "$cache/pause-$key" \
    --config.entrypoint /pause --config.user 65535:65535
  finish pause "$key" "$tree" '["/pause"]' "/pause -v"
}

build_agnhost() {
  local bin key work tree
  bin="$(k8s_bin)/agnhost"
  key=$({ common_key; sha256sum <"$bin"; echo "$k8s_version"; } | sha256sum | cut -c1-16)
  built agnhost "$key" && return 0
  oci_tmpdir work
  tree="$work/rootfs"
  install -d -m 755 "$tree" "$tree/etc" "$tree/uploads"
  install -d -m 1777 "$tree/tmp"
  install -m 755 "$bin" "$tree/agnhost"
  # Upstream's image has these too: agnhost-2 for the entrypoint tests, /uploads for netexec,
  # the user and group its SupplementalGroups test expects.
  ln -s agnhost "$tree/agnhost-2"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' \
    'user-defined-in-image:x:1000:1000::/tmp:/sbin/nologin' >"$tree/etc/passwd"
  printf '%s\n' 'root:x:0:' 'user-defined-in-image:x:1000:' \
    'group-defined-in-image:x:50000:user-defined-in-image' >"$tree/etc/group"
  printf '%s\n' '127.0.0.1 localhost' '::1 localhost ip6-localhost ip6-loopback' >"$tree/etc/hosts"
  printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$tree/etc/nsswitch.conf"
  chmod 644 "$tree"/etc/*
  newdir agnhost "$key"
  oci_pack agnhost "localhost/agnhost:$k8s_version" "$tree" "$cache/agnhost-$key" \
    --config.entrypoint /agnhost --config.cmd pause --config.env "$OCI_PATH_ENV"
  finish agnhost "$key" "$tree" '["/agnhost"]' "/agnhost --help" "/agnhost-2 netexec --help"
}

build_kube_proxy() {
  local bin base key work tree
  bin="$(k8s_bin)/kube-proxy"
  base=$(oci_base_rootfs)
  key=$({ common_key; sha256sum <"$bin"; echo "$k8s_version $base"; } | sha256sum | cut -c1-16)
  built kube-proxy "$key" && return 0
  oci_tmpdir work
  tree="$work/rootfs"
  cp -a "$base" "$tree"
  install -d -m 755 "$tree/usr/local" "$tree/usr/local/bin"
  install -m 755 "$bin" "$tree/usr/local/bin/kube-proxy"
  newdir kube-proxy "$key"
  oci_pack kube-proxy "localhost/kube-proxy:$k8s_version" "$tree" "$cache/kube-proxy-$key" \
    --config.entrypoint /usr/local/bin/kube-proxy --config.env "$OCI_PATH_ENV"
  finish kube-proxy "$key" "$tree" '["/usr/local/bin/kube-proxy"]' "kube-proxy --version" "${OCI_ROOTFS_CHECKS[@]}"
}

start=$(date +%s)
for name in "${names[@]}"; do
  case $name in
    pause) build_pause ;;
    agnhost) build_agnhost ;;
    kube-proxy) build_kube_proxy ;;
    *) oci_die "unknown image '$name' (pause, agnhost, kube-proxy)" ;;
  esac
done
oci_log "done in $(($(date +%s) - start))s: $(for n in "${names[@]}"; do printf '%s ' "$outdir/$n.tar"; done)"
