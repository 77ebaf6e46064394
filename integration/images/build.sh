#!/usr/bin/env bash
# Builds the images of knat's container tests (test support, not shipped), without a container
# engine or a registry, with the packing helpers of scripts/image.sh (scripts/lib/oci.sh):
#
#   integration/images/build.sh OUTDIR [NAME...]     (root; default: pause agnhost kube-proxy)
#
# Each writes OUTDIR/<name>.tar (docker-archive) and OUTDIR/<name>.ref (its reference):
#   pause       localhost/pause:3.10        /pause, integration/images/pause.c built static;
#                                           user 65535, as upstream's pause image
#   agnhost     localhost/agnhost:v1.37.2   /agnhost (upstream's e2e workload binary), entrypoint
#                                           ["/agnhost"], cmd ["pause"], minimal /etc, /tmp
#   kube-proxy  localhost/kube-proxy:v1.37.2  /usr/local/bin/kube-proxy on the same minimal
#                                           iptables root filesystem as knat's image
# For upstream's e2e suite (integration/upstream-e2e/; the name `e2e` builds all four), images
# whose tests run shell commands inside them, each on a Debian root (oci_debian_rootfs):
#   e2e-agnhost localhost/e2e/agnhost:v1.37.2  /agnhost as above, on Debian with the tools
#                                           upstream's image has: sh (dash), bash, curl, nc
#                                           (netcat-openbsd), ss and ip (iproute2), dig and
#                                           nslookup, wget, iperf, socat, ps; users as above
#   e2e-busybox localhost/e2e/busybox:1.35.0  Debian's static busybox as /bin/busybox with every
#                                           applet linked in /bin, cmd ["sh"]
#   e2e-regression-issue-74839  localhost/e2e/regression-issue-74839:v1.37.2  the Conntrack
#                                           invalid-state test's server, on Debian essential
#   e2e-coredns localhost/e2e/coredns:v1.15.0  the cluster DNS (integration/upstream-e2e/
#                                           coredns.yaml): /coredns, static, nothing else
# (The e2e- prefix keeps their cache directories apart from pause-*, agnhost-*, kube-proxy-*.)
# The references are neutral local names; integration/upstream-e2e/image-map.sh pairs each
# archive with the reference `e2e.test --list-images` asks for, to tag at run time.
# agnhost and kube-proxy come from scripts/build-k8s.sh's directory (KNAT_K8S_VERSION),
# regression-issue-74839 and coredns from scripts/build-e2e.sh's. Every
# image is cached under /var/cache/knat-e2e/images/<name>-<hash of its inputs> and rebuilt only
# when those inputs change; each is read back and run with runc once, when it is built.
set -euo pipefail
# shellcheck source=scripts/lib/root.sh
source "$(dirname "$0")/../../scripts/lib/root.sh"
root_or_reexec "$0" "$@"
OCI_NAME=images
# shellcheck source=scripts/lib/oci.sh
source "$(dirname "$0")/../../scripts/lib/oci.sh"

all_names="pause agnhost kube-proxy e2e-agnhost e2e-busybox e2e-regression-issue-74839 e2e-coredns"
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || oci_die "usage: integration/images/build.sh OUTDIR [NAME...] ($all_names, or e2e)"
outdir=$1
shift
names=()
for n in "$@"; do
  if [ "$n" = e2e ]; then names+=(e2e-agnhost e2e-busybox e2e-regression-issue-74839 e2e-coredns); else names+=("$n"); fi
done
[ ${#names[@]} -gt 0 ] || names=(pause agnhost kube-proxy)
[ "$(id -u)" -eq 0 ] || oci_die "needs root (runc, mmdebstrap root mode, files owned by root in the images)"
oci_need gcc sha256sum cp
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
here="$OCI_REPO/integration/images"
k8s_version="${KNAT_K8S_VERSION:-v1.37.2}"
cache="$OCI_CACHE/images"
k8s_bin=""
e2e_bin=""

e2e_bin() {
  if [ -z "$e2e_bin" ]; then
    e2e_bin=$(bash "$OCI_REPO/scripts/build-e2e.sh" --print 2>/dev/null) \
      || oci_die "the e2e binaries are not built yet: run scripts/build-e2e.sh"
  fi
  echo "$e2e_bin"
}

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

# The tools upstream's agnhost image installs (apk: bind-tools curl netcat-openbsd iproute2
# iperf bash util-linux-misc socat; busybox gives it wget and ps), as Debian packages.
AGNHOST_E2E_PACKAGES=(curl netcat-openbsd iproute2 bind9-dnsutils wget iperf socat procps)

build_agnhost_e2e() {
  local bin base key work tree
  bin="$(k8s_bin)/agnhost"
  base=$(oci_debian_rootfs "${AGNHOST_E2E_PACKAGES[@]}")
  key=$({ common_key; sha256sum <"$bin"; echo "$k8s_version $base"; } | sha256sum | cut -c1-16)
  built e2e-agnhost "$key" && return 0
  oci_tmpdir work
  tree="$work/rootfs"
  cp -a "$base" "$tree"
  install -m 755 "$bin" "$tree/agnhost"
  ln -s agnhost "$tree/agnhost-2"
  install -d -m 755 "$tree/uploads"
  # The user and group of upstream's SupplementalGroups test (adduser -u 1000 -D, addgroup -g
  # 50000, the user a member of it).
  echo 'user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh' >>"$tree/etc/passwd"
  echo 'user-defined-in-image:!:19000:0:99999:7:::' >>"$tree/etc/shadow"
  printf '%s\n' 'user-defined-in-image:x:1000:' 'group-defined-in-image:x:50000:user-defined-in-image' >>"$tree/etc/group"
  install -d -m 755 -o 1000 -g 1000 "$tree/home/user-defined-in-image"
  newdir e2e-agnhost "$key"
  oci_pack e2e-agnhost "localhost/e2e/agnhost:$k8s_version" "$tree" "$cache/e2e-agnhost-$key" \
    --config.entrypoint /agnhost --config.cmd pause --config.env "$OCI_PATH_ENV"
  finish e2e-agnhost "$key" "$tree" '["/agnhost"]' "/agnhost --help" "/agnhost-2 netexec --help" \
    "sh -c true" "bash --version" "curl --version" "nc -h" "ss -V" "ip -V" "dig -v" \
    "nslookup -version" "wget --version" "seq 1 2" "ps --version" "socat -V" \
    "id user-defined-in-image"
}

build_busybox() {
  local base version key work tree applet n=0
  base=$(oci_debian_rootfs busybox-static)
  version=$(awk '$1 == "busybox-static" {print $2}' "$(dirname "$base")/versions" | sed 's/^[0-9]*://; s/-.*//')
  [ -n "$version" ] || oci_die "busybox: no busybox-static version in $(dirname "$base")/versions"
  key=$({ common_key; sha256sum <"$base/usr/bin/busybox"; echo "$version"; } | sha256sum | cut -c1-16)
  built e2e-busybox "$key" && return 0
  oci_tmpdir work
  tree="$work/rootfs"
  # As the busybox image upstream's is built from: everything in /bin, a few users.
  install -d -m 755 "$tree" "$tree/bin" "$tree/etc" "$tree/home" "$tree/var" "$tree/usr"
  install -d -m 700 "$tree/root"
  install -d -m 1777 "$tree/tmp"
  install -m 755 "$base/usr/bin/busybox" "$tree/bin/busybox"
  for applet in $(chroot "$base" /usr/bin/busybox --list); do
    [ "$applet" = busybox ] && continue
    ln -s busybox "$tree/bin/$applet"
    n=$((n + 1))
  done
  oci_log "busybox $version: $n applets linked in /bin"
  printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'daemon:x:1:1:daemon:/usr/sbin:/bin/false' \
    'nobody:x:65534:65534:nobody:/home:/bin/false' >"$tree/etc/passwd"
  printf '%s\n' 'root:x:0:' 'daemon:x:1:' 'nogroup:x:65534:' >"$tree/etc/group"
  printf '%s\n' '127.0.0.1 localhost' '::1 localhost ip6-localhost ip6-loopback' >"$tree/etc/hosts"
  chmod 644 "$tree"/etc/*
  newdir e2e-busybox "$key"
  oci_pack e2e-busybox "localhost/e2e/busybox:$version" "$tree" "$cache/e2e-busybox-$key" \
    --config.cmd sh --config.env "$OCI_PATH_ENV"
  finish e2e-busybox "$key" "$tree" 'null' "sh -c true" "nc --help" "wget --help" "seq 1 2" "sleep 0" "id"
}

build_regression_issue_74839() {
  local bin base key work tree
  bin="$(e2e_bin)/regression-issue-74839"
  base=$(oci_debian_rootfs)
  key=$({ common_key; sha256sum <"$bin"; echo "$k8s_version $base"; } | sha256sum | cut -c1-16)
  built e2e-regression-issue-74839 "$key" && return 0
  oci_tmpdir work
  tree="$work/rootfs"
  cp -a "$base" "$tree"
  install -m 755 "$bin" "$tree/regression-issue-74839"
  newdir e2e-regression-issue-74839 "$key"
  oci_pack e2e-regression-issue-74839 "localhost/e2e/regression-issue-74839:$k8s_version" "$tree" \
    "$cache/e2e-regression-issue-74839-$key" \
    --config.entrypoint /regression-issue-74839 --config.env "$OCI_PATH_ENV"
  finish e2e-regression-issue-74839 "$key" "$tree" '["/regression-issue-74839"]' "sh -c true" \
    "ls -l /regression-issue-74839"
}

build_coredns() {
  local bin version key work tree
  bin="$(e2e_bin)/coredns"
  version=$("$bin" -version | sed -n 's/^CoreDNS-\([0-9.]*\)$/\1/p')
  [ -n "$version" ] || oci_die "coredns: $bin -version names no version"
  key=$({ common_key; sha256sum <"$bin"; } | sha256sum | cut -c1-16)
  built e2e-coredns "$key" && return 0
  oci_tmpdir work
  tree="$work/rootfs"
  install -d -m 755 "$tree" "$tree/etc"
  install -d -m 1777 "$tree/tmp"
  install -m 755 "$bin" "$tree/coredns"
  printf '%s\n' 'root:x:0:0:root:/root:/sbin/nologin' 'nobody:x:65534:65534:nobody:/:/sbin/nologin' >"$tree/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$tree/etc/group"
  chmod 644 "$tree"/etc/*
  newdir e2e-coredns "$key"
  oci_pack e2e-coredns "localhost/e2e/coredns:v$version" "$tree" "$cache/e2e-coredns-$key" \
    --config.entrypoint /coredns
  finish e2e-coredns "$key" "$tree" '["/coredns"]' "/coredns -version" "/coredns -plugins"
}

start=$(date +%s)
for name in "${names[@]}"; do
  case $name in
    pause) build_pause ;;
    agnhost) build_agnhost ;;
    kube-proxy) build_kube_proxy ;;
    e2e-agnhost) build_agnhost_e2e ;;
    e2e-busybox) build_busybox ;;
    e2e-regression-issue-74839) build_regression_issue_74839 ;;
    e2e-coredns) build_coredns ;;
    *) oci_die "unknown image '$name' ($all_names, or e2e)" ;;
  esac
done
oci_log "done in $(($(date +%s) - start))s: $(for n in "${names[@]}"; do printf '%s ' "$outdir/$n.tar"; done)"
