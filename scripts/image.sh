#!/usr/bin/env bash
# Builds knat's container image without a container engine or a registry (root):
#
#   scripts/image.sh [--out DIR]        DIR defaults to target/images
#
# 1. the minimal root filesystem defined in daemonset/image/ (package list + rootfs.sh), cut
#    from an mmdebstrap root of bookworm made with the host's apt sources; cached under
#    /var/cache/knat-e2e/image-base/ (see scripts/lib/oci.sh), so later runs skip it;
# 2. cargo build --release --locked --bin knat; the image gets a stripped copy, the debug
#    info stays beside it as DIR/knat.debug (the binary carries a .gnu_debuglink to it);
# 3. umoci packs the image, skopeo exports DIR/knat.tar (docker-archive, for
#    `ctr -n k8s.io images import`, `podman load`, `kind load image-archive`) tagged
#    localhost/knat:<crate version>-<git short sha>[-dirty]; DIR/knat.ref holds that reference;
# 4. self-check: the archive is read back and knat, iptables-nft, iptables-legacy, nft and
#    conntrack run inside it with runc (own namespaces, cgroup nested under this process's).
#
# Progress goes to stderr; the tag, digest and sizes to stdout. daemonset/Containerfile builds
# the same image with an engine, from the same daemonset/image/ files.
set -euo pipefail
# shellcheck source=scripts/lib/root.sh
source "$(dirname "$0")/lib/root.sh"
root_or_reexec "$0" "$@"
OCI_NAME=image.sh
# shellcheck source=scripts/lib/oci.sh
source "$(dirname "$0")/lib/oci.sh"
cd "$OCI_REPO"

out=target/images
while [ $# -gt 0 ]; do
  case $1 in
    --out) [ $# -ge 2 ] || oci_die "--out needs a directory"; out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    -h | --help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) oci_die "unknown argument '$1' (usage: scripts/image.sh [--out DIR])" ;;
  esac
done
[ "$(id -u)" -eq 0 ] || oci_die "needs root (mmdebstrap root mode, runc, files owned by root in the image)"
oci_need cargo git objcopy strip jq gzip
mkdir -p "$out"
out=$(cd "$out" && pwd)
start=$(date +%s)

version=$(sed -n '/^\[package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -1)
[ -n "$version" ] || oci_die "no package version in Cargo.toml"
sha=$(git rev-parse --short HEAD) || oci_die "not a git checkout (the tag names the commit)"
tag="$version-$sha"
[ -z "$(git status --porcelain)" ] || tag="$tag-dirty"
ref="localhost/knat:$tag"

base=$(oci_base_rootfs)

oci_log "cargo build --release --locked --bin knat"
cargo build --release --locked --bin knat
bin="${CARGO_TARGET_DIR:-$OCI_REPO/target}/release/knat"
[ -x "$bin" ] || oci_die "cargo did not produce $bin"

oci_tmpdir work
tree="$work/rootfs"
cp -a "$base" "$tree"
install -d -m 755 "$tree/usr/local" "$tree/usr/local/bin"
oci_log "splitting debug info: $out/knat.debug; stripped binary -> /usr/local/bin/knat"
objcopy --only-keep-debug "$bin" "$out/knat.debug.tmp"
mv "$out/knat.debug.tmp" "$out/knat.debug"
strip --strip-all -o "$work/knat" "$bin"
(cd "$out" && objcopy --add-gnu-debuglink=knat.debug "$work/knat")
install -m 755 "$work/knat" "$tree/usr/local/bin/knat"

oci_pack knat "$ref" "$tree" "$out" \
  --config.entrypoint /usr/local/bin/knat --config.cmd run --config.env "$OCI_PATH_ENV" \
  --config.workingdir / \
  --config.label "org.opencontainers.image.title=knat" \
  --config.label "org.opencontainers.image.version=$tag" \
  --config.label "org.opencontainers.image.revision=$(git rev-parse HEAD)"

oci_selfcheck knat "$out" "$tree" '["/usr/local/bin/knat"]' "knat --version" "${OCI_ROOTFS_CHECKS[@]}"

oci_report knat "$out" "$tree"
echo "  base rootfs:       $(oci_tree_bytes "$base") bytes ($(oci_human "$(oci_tree_bytes "$base")")); knat $(oci_bytes "$tree/usr/local/bin/knat") bytes stripped, $(oci_bytes "$bin") unstripped"
echo "  debug info:        $out/knat.debug ($(oci_human "$(oci_bytes "$out/knat.debug")"))"
echo "  reference file:    $out/knat.ref"
oci_log "done in $(($(date +%s) - start))s"
