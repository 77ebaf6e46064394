# shellcheck shell=bash
# Shared by scripts/image.sh (knat's image) and integration/images/build.sh (the test images):
# images built without a container engine or a registry.
#
#   oci_base_rootfs          the minimal iptables root filesystem of daemonset/image/ (cached)
#   oci_debian_rootfs        a whole Debian root filesystem with given packages (cached)
#   oci_pack                 a directory tree -> OCI layout (umoci) -> docker-archive (skopeo)
#   oci_report               tag, archive digest, archive / gzip / rootfs sizes
#   oci_selfcheck            round trip, entrypoint, and commands run inside the image (runc)
#
# Sourced, not run. The caller sets OCI_NAME (message prefix) and runs with set -euo pipefail.
# Environment: KNAT_E2E_CACHE (cache root, default /var/cache/knat-e2e), KNAT_APT_SOURCES (apt
# sources for mmdebstrap, default the host's /etc/apt/sources.list.d/debian.sources).

OCI_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OCI_CACHE="${KNAT_E2E_CACHE:-/var/cache/knat-e2e}"
OCI_IMAGE_DEF="$OCI_REPO/daemonset/image"
# The PATH of every image (daemonset/Containerfile sets the same).
OCI_PATH_ENV="PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OCI_SUITE=bookworm
# What the self-checks run inside every image built on oci_base_rootfs: both front-ends, the
# unsuffixed names (through /etc/alternatives; upstream kube-proxy runs those), nft, conntrack,
# and `-h` over the dlopened extensions knat and kube-proxy write (a missing one fails `-h`).
# shellcheck disable=SC2034  # used by the scripts that source this file
OCI_ROOTFS_CHECKS=(
  "iptables-nft --version"
  "iptables-legacy --version"
  "nft --version"
  "conntrack --version"
  "iptables --version"
  "ip6tables-legacy-save --version"
  "iptables-nft -p tcp -m tcp -m multiport -m addrtype -m comment -m mark -m conntrack -m statistic -m recent -j DNAT -h"
  "iptables-nft -j MASQUERADE -h"
  "iptables-nft -j MARK -h"
  "ip6tables-nft -p udp -m udp -j REJECT -h"
)

# Temporary directories, runc containers and background processes of this run, removed at
# exit whatever happens.
OCI_TMP=()
OCI_CONTAINERS=()
OCI_PIDS=()
oci_at_exit() {
  local c
  for c in "${OCI_PIDS[@]}"; do
    # Only while it is still our child: a PID that was reaped may belong to anyone by now.
    [ "$(ps -o ppid= -p "$c" 2>/dev/null | tr -d ' ')" != "$$" ] || kill -KILL "$c" 2>/dev/null || true
  done
  for c in "${OCI_CONTAINERS[@]}"; do
    runc --root "${c%% *}" delete --force "${c#* }" >/dev/null 2>&1 || true
    oci_cgroup_cleanup "${c#* }"
  done
  for c in "${OCI_TMP[@]}"; do rm -rf "$c"; done
}
trap oci_at_exit EXIT
# oci_tmpdir VAR: a new temporary directory in VAR (not $(...): the list must be this shell's).
oci_tmpdir() {
  local d
  d=$(mktemp -d "${TMPDIR:-/tmp}/knat-oci.XXXXXX")
  OCI_TMP+=("$d")
  printf -v "$1" %s "$d"
}

oci_log() { echo "${OCI_NAME:-oci}: $*" >&2; }
oci_die() { echo "${OCI_NAME:-oci}: ERROR: $*" >&2; exit 1; }

# oci_need TOOL...: every TOOL on PATH, or a message naming the Debian package.
oci_need() {
  local t pkg missing=()
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 && continue
    case $t in
      objcopy | strip) pkg=binutils ;;
      ctr) pkg=containerd ;;
      sha256sum | stat | install) pkg=coreutils ;;
      *) pkg=$t ;;
    esac
    missing+=("$t (apt-get install $pkg)")
  done
  [ ${#missing[@]} -eq 0 ] || oci_die "missing tools: ${missing[*]}"
}

oci_bytes() { stat -c %s "$1"; }
# oci_human BYTES: "12.3 MB" (decimal, as registries and `podman images` count).
oci_human() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1000000 }'; }
# oci_tree_bytes DIR: the bytes of DIR's regular files (symlinks and directories not counted).
oci_tree_bytes() { find "$1" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}'; }

# oci_packages: the package names of daemonset/image/packages, one per line.
oci_packages() {
  sed -e 's/#.*//' -e 's/[[:space:]]\+/\n/g' "$OCI_IMAGE_DEF/packages" | sed '/^$/d'
}

# oci_apt_sources: the host's apt sources file (deb822 or one-line), which mmdebstrap reuses.
oci_apt_sources() {
  local f candidates=(/etc/apt/sources.list.d/debian.sources /etc/apt/sources.list)
  [ -z "${KNAT_APT_SOURCES:-}" ] || candidates=("$KNAT_APT_SOURCES")
  for f in "${candidates[@]}"; do
    if grep -qsE '^[[:space:]]*(deb|Types:)' "$f"; then
      grep -qw "$OCI_SUITE" "$f" || oci_die "$f has no $OCI_SUITE suite; the image is cut from $OCI_SUITE (set KNAT_APT_SOURCES to a sources file that has it)"
      echo "$f"
      return 0
    fi
  done
  oci_die "no apt sources in ${candidates[*]} (set KNAT_APT_SOURCES to a sources file)"
}

# oci_cached_rootfs DIR LABEL BUILD: print DIR/rootfs, first running `BUILD DIR` (which must
# leave DIR/rootfs) when DIR/.complete is missing; concurrent runs serialise on DIR/.lock.
oci_cached_rootfs() {
  local dir=$1 label=$2 build=$3
  if [ -f "$dir/.complete" ]; then
    oci_log "$label: cached ($dir)"
    echo "$dir/rootfs"
    return 0
  fi
  mkdir -p "$dir"
  (
    exec 9>"$dir/.lock"
    flock 9
    [ -f "$dir/.complete" ] && exit 0
    local start
    start=$(date +%s)
    "$build" "$dir"
    touch "$dir/.complete"
    oci_log "$label built in $(($(date +%s) - start))s: $dir"
  ) || exit 1
  echo "$dir/rootfs"
}

# oci_mmdebstrap PACKAGES TARGET SOURCES LOG: mmdebstrap --variant=essential of $OCI_SUITE with
# the comma-separated PACKAGES into TARGET, output in LOG (its tail on failure).
oci_mmdebstrap() {
  local packages=$1 target=$2 sources=$3 log=$4
  oci_log "mmdebstrap $OCI_SUITE --variant=essential --include=$packages (apt sources: $sources; log: $log)"
  if ! mmdebstrap --variant=essential ${packages:+--include="$packages"} "$OCI_SUITE" "$target" "$sources" \
    >"$log" 2>&1; then
    tail -20 "$log" >&2
    rm -rf "$target"
    oci_die "mmdebstrap failed (log: $log)"
  fi
}

# oci_base_rootfs: print the directory of the minimal root filesystem (daemonset/image/rootfs.sh
# run over an mmdebstrap root of daemonset/image/packages), building it when missing. Cached in
# $OCI_CACHE/image-base/<key>, key = sha256 of the package list, rootfs.sh and the mmdebstrap
# command line (suite, variant, apt sources).
oci_base_rootfs() {
  oci_need mmdebstrap sha256sum flock
  local sources packages key
  sources=$(oci_apt_sources)
  packages=$(oci_packages | paste -sd, -)
  [ -n "$packages" ] || oci_die "$OCI_IMAGE_DEF/packages lists no packages"
  key=$({
    cat "$OCI_IMAGE_DEF/packages" "$OCI_IMAGE_DEF/rootfs.sh"
    echo "mmdebstrap --variant=essential --include=$packages $OCI_SUITE"
    cat "$sources"
  } | sha256sum | cut -c1-16)
  oci_cached_rootfs "$OCI_CACHE/image-base/$key" "base root filesystem" oci_build_base_rootfs
}

oci_build_base_rootfs() {
  local dir=$1
  rm -rf "$dir/staging" "$dir/staging.tmp" "$dir/rootfs" "$dir/rootfs.tmp"
  oci_mmdebstrap "$packages" "$dir/staging.tmp" "$sources" "$dir/mmdebstrap.log"
  mv "$dir/staging.tmp" "$dir/staging"
  oci_log "collecting the minimal root filesystem (daemonset/image/rootfs.sh)"
  bash "$OCI_IMAGE_DEF/rootfs.sh" "$dir/staging" "$dir/rootfs.tmp" || oci_die "daemonset/image/rootfs.sh failed"
  mv "$dir/rootfs.tmp" "$dir/rootfs"
  # shellcheck disable=SC2016,SC2046  # dpkg-query's format; one word per package
  chroot "$dir/staging" dpkg-query -W -f '${Package} ${Version}\n' $(oci_packages) libc6 >"$dir/versions"
}

# oci_debian_rootfs PACKAGE...: print the directory of a whole Debian root filesystem, not a
# collected minimal one: mmdebstrap --variant=essential (dash as /bin/sh, bash, coreutils, grep,
# sed, util-linux, ...) plus PACKAGEs, then documentation, man pages, locales, package lists,
# caches, logs and device nodes removed (the runtime mounts /dev). For the upstream e2e images
# whose tests run shell commands inside them. Cached in $OCI_CACHE/image-debian/<key>, key =
# sha256 of the sorted package list, the mmdebstrap command line, the builder and the apt
# sources. $dir/versions lists every installed package.
oci_debian_rootfs() {
  oci_need mmdebstrap sha256sum flock
  local sources packages key
  sources=$(oci_apt_sources)
  packages=$(printf '%s\n' "$@" | sed '/^$/d' | sort -u | paste -sd, -)
  key=$({
    echo "mmdebstrap --variant=essential --include=$packages $OCI_SUITE"
    declare -f oci_build_debian_rootfs
    cat "$sources"
  } | sha256sum | cut -c1-16)
  oci_cached_rootfs "$OCI_CACHE/image-debian/$key" "Debian root filesystem ($packages)" oci_build_debian_rootfs
}

oci_build_debian_rootfs() {
  local dir=$1
  rm -rf "$dir/rootfs" "$dir/rootfs.tmp"
  oci_mmdebstrap "$packages" "$dir/rootfs.tmp" "$sources" "$dir/mmdebstrap.log"
  # shellcheck disable=SC2016  # dpkg-query's format
  chroot "$dir/rootfs.tmp" dpkg-query -W -f '${Package} ${Version}\n' >"$dir/versions"
  (
    cd "$dir/rootfs.tmp" || exit 1
    rm -rf usr/share/doc usr/share/man usr/share/info usr/share/lintian usr/share/locale \
      var/cache/* var/lib/apt/lists/* var/log/* dev/*
  )
  mv "$dir/rootfs.tmp" "$dir/rootfs"
}

# oci_pack NAME REF TREE OUTDIR [umoci config options...]: one image whose only layer is TREE
# (umoci init / new / unpack / copy / repack / config), exported to OUTDIR/NAME.tar as a
# docker-archive tagged REF (what `ctr images import`, `podman load` and
# `kind load image-archive` read), and OUTDIR/NAME.ref holding REF.
oci_pack() {
  local name=$1 ref=$2 tree=$3 outdir=$4
  shift 4
  oci_need umoci skopeo
  local work tag=image
  oci_tmpdir work
  oci_log "packing $ref (umoci)"
  umoci init --layout "$work/layout"
  umoci new --image "$work/layout:$tag"
  umoci unpack --image "$work/layout:$tag" "$work/bundle" >/dev/null
  cp -a "$tree/." "$work/bundle/rootfs/"
  umoci repack --image "$work/layout:$tag" --history.created_by "knat $OCI_NAME" "$work/bundle"
  umoci config --image "$work/layout:$tag" --os linux --architecture "$(dpkg --print-architecture)" \
    --history.created_by "knat $OCI_NAME" "$@"
  umoci gc --layout "$work/layout"
  mkdir -p "$outdir"
  rm -f "$outdir/$name.tar.tmp"
  oci_log "exporting $outdir/$name.tar (skopeo, docker-archive)"
  skopeo copy --quiet "oci:$work/layout:$tag" "docker-archive:$outdir/$name.tar.tmp:$ref"
  mv "$outdir/$name.tar.tmp" "$outdir/$name.tar"
  echo "$ref" >"$outdir/$name.ref"
}

# oci_report NAME OUTDIR TREE: tag, the archive's sha256, its size, gzip'd size, rootfs size.
oci_report() {
  local name=$1 outdir=$2 tree=$3 tar ref size gz rootfs files
  tar="$outdir/$name.tar"
  ref=$(cat "$outdir/$name.ref")
  size=$(oci_bytes "$tar")
  gz=$(gzip -6 -c "$tar" | wc -c)
  rootfs=$(oci_tree_bytes "$tree")
  files=$(find "$tree" -type f | wc -l)
  printf '%s\n' \
    "$name image: $ref" \
    "  archive: $tar" \
    "  sha256:  $(sha256sum "$tar" | cut -d' ' -f1)" \
    "  archive size:      $size bytes ($(oci_human "$size"))" \
    "  gzip-compressed:   $gz bytes ($(oci_human "$gz"))" \
    "  rootfs (unpacked): $rootfs bytes ($(oci_human "$rootfs")) in $files files"
}

# runc nests the cgroups of a relative cgroupsPath under its own cgroup in each hierarchy (ours:
# runc is our child) and removes them when the container is deleted; remove any left behind.
oci_cgroup_cleanup() {
  local leaf=$1 hier path mnt d
  while IFS=: read -r _ hier path; do
    case $hier in
      "") mnt=/sys/fs/cgroup/unified; [ -d "$mnt" ] || mnt=/sys/fs/cgroup ;;
      name=*) mnt="/sys/fs/cgroup/${hier#name=}" ;;
      *) mnt="/sys/fs/cgroup/${hier%%,*}" ;;
    esac
    d="$mnt${path%/}/$leaf"
    [ ! -d "$d" ] || rmdir "$d" 2>/dev/null || oci_log "WARNING: could not remove cgroup $d"
  done </proc/self/cgroup
}

# oci_selfcheck NAME OUTDIR TREE ENTRYPOINT_JSON CHECK...: reads OUTDIR/NAME.tar back
# (skopeo inspect: the entrypoint must be ENTRYPOINT_JSON, RepoTags must hold OUTDIR/NAME.ref),
# round-trips it (skopeo copy to an OCI layout, umoci unpack: the unpacked tree must equal
# TREE), then runs each CHECK (a command line, split on spaces) in that bundle with runc: fresh
# namespaces (network included), a cgroup nested under ours, no host path mounted. Falls back
# to chroot, saying so, only when runc itself cannot start a container here.
oci_selfcheck() {
  local name=$1 outdir=$2 tree=$3 want_ep=$4
  shift 4
  oci_need skopeo umoci runc jq
  local tar="$outdir/$name.tar" ref work info got_ep n=0 check id out rc mode=runc why="" argv
  ref=$(cat "$outdir/$name.ref")
  oci_tmpdir work
  oci_log "self-check of $tar: skopeo inspect"
  got_ep=$(skopeo inspect --config "docker-archive:$tar" | jq -c '.config.Entrypoint')
  [ "$got_ep" = "$(jq -c . <<<"$want_ep")" ] || oci_die "$tar: entrypoint is $got_ep, want $want_ep"
  tar -xOf "$tar" manifest.json | jq -e --arg ref "$ref" '.[0].RepoTags | index($ref)' >/dev/null \
    || oci_die "$tar: RepoTags $(tar -xOf "$tar" manifest.json | jq -c '.[0].RepoTags') do not hold $ref"
  info=$(skopeo inspect "docker-archive:$tar" | jq -r '"\(.Os)/\(.Architecture), \(.Layers | length) layer(s)"')
  oci_log "  $info, entrypoint $got_ep, tagged $ref"
  oci_log "self-check: round trip (skopeo copy docker-archive: -> oci:, umoci unpack, diff)"
  skopeo copy --quiet "docker-archive:$tar" "oci:$work/layout:check"
  umoci unpack --image "$work/layout:check" "$work/bundle" >/dev/null
  if ! diff -r --no-dereference -q "$tree" "$work/bundle/rootfs" >"$work/diff" 2>&1; then
    head -20 "$work/diff" >&2
    oci_die "$tar: the unpacked image differs from the tree that was packed"
  fi
  for check in "$@"; do
    n=$((n + 1))
    id="knat-oci-check-$$-$n"
    read -ra argv <<<"$check"
    if [ $mode = runc ]; then
      jq --argjson args "$(printf '%s\n' "${argv[@]}" | jq -R . | jq -sc .)" --arg id "$id" \
        '.process.args = $args | .process.terminal = false | .linux.cgroupsPath = $id | .hostname = $id' \
        "$work/bundle/config.json" >"$work/config.json"
      mv "$work/config.json" "$work/bundle/config.json"
      OCI_CONTAINERS+=("$work/runc $id")
      rc=0
      out=$(runc --root "$work/runc" run --bundle "$work/bundle" "$id" </dev/null 2>&1) || rc=$?
      oci_cgroup_cleanup "$id"
      if [ $rc -ne 0 ] && [ $n -eq 1 ] && grep -qE 'runc run failed|level=error' <<<"$out" \
        && ! grep -qE 'exec: |exec format|no such file' <<<"$out"; then
        why=$(head -3 <<<"$out" | tr '\n' ' ')
        mode=chroot
        oci_log "WARNING: runc cannot start a container here ($why); falling back to chroot"
      fi
    fi
    if [ $mode = chroot ]; then
      rc=0
      out=$(env -i "$OCI_PATH_ENV" chroot "$work/bundle/rootfs" "${argv[@]}" </dev/null 2>&1) || rc=$?
    fi
    if [ $rc -ne 0 ]; then
      printf '%s\n' "$out" | sed 's/^/    /' >&2
      oci_die "self-check failed inside $ref ($mode): '$check' exited $rc"
    fi
    oci_log "  ok ($mode): $check -> $(head -1 <<<"$out")"
  done
  [ $mode = runc ] || oci_log "NOTE: the self-check commands ran under chroot, not runc: $why"
}
