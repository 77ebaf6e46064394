#!/usr/bin/env bash
# Pairs the images integration/images/build.sh builds for upstream's e2e suite with the exact
# references the suite asks for, so that a runner can import each archive into a node's
# containerd and tag it under those names (the nodes never pull):
#
#   e2e.test --list-images | integration/upstream-e2e/image-map.sh IMAGES_DIR
#   integration/upstream-e2e/image-map.sh IMAGES_DIR LIST_FILE
#
# Prints one "<archive> <reference>" line per reference the suite wants that a local image
# stands in for (IMAGES_DIR/<name>.tar; the reference it was built under is in
# IMAGES_DIR/<name>.ref). Matching is by the image's base name (the last path component before
# the tag), whatever registry and version the suite names:
#
#   agnhost                 -> e2e-agnhost.tar   (every agnhost version the suite lists)
#   busybox                 -> e2e-busybox.tar
#   pause                   -> pause.tar
#   regression-issue-74839  -> e2e-regression-issue-74839.tar
#
# References in a registry path containing "authenticated", and those whose host starts with
# "invalid.", are left out: the suite uses them to check that a pull fails or needs
# credentials, and a local stand-in would make those checks lie. Every reference left unmapped
# is named on stderr. Exit 1 when a needed archive is missing from IMAGES_DIR.
#
# Then, per node (the node tier's containerd, CRI namespace k8s.io):
#   image-map.sh DIR <images.txt | while read -r archive ref; do
#     ctr -n k8s.io images import --no-unpack "$archive"      # once per archive is enough
#     ctr -n k8s.io images tag --force "$(cat "${archive%.tar}.ref")" "$ref"
#   done
set -euo pipefail

die() { echo "image-map: $*" >&2; exit 1; }
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: image-map.sh IMAGES_DIR [LIST_FILE]  (the list on stdin when no file)"
dir=${1%/}
[ -d "$dir" ] || die "$dir is not a directory"
list=${2:-/dev/stdin}

archive_for() {
  case $1 in
    agnhost) echo e2e-agnhost ;;
    busybox) echo e2e-busybox ;;
    pause) echo pause ;;
    regression-issue-74839) echo e2e-regression-issue-74839 ;;
    *) return 1 ;;
  esac
}

missing=0
unmapped=()
while IFS= read -r ref || [ -n "$ref" ]; do
  ref=${ref//[[:space:]]/}
  [ -n "$ref" ] || continue
  case $ref in
    */*) ;;
    *) unmapped+=("$ref"); continue ;;  # not an image reference (a log line)
  esac
  host=${ref%%/*}
  repo_path=${ref%/*}   # registry host (maybe with a port) and path, without the image name
  base=${ref##*/}
  base=${base%%[:@]*}   # the image name without tag or digest
  if [[ $host == invalid.* || $repo_path == *authenticated* ]]; then
    unmapped+=("$ref (kept: the suite expects it not to be pullable)")
    continue
  fi
  if ! name=$(archive_for "$base"); then
    unmapped+=("$ref")
    continue
  fi
  if [ ! -f "$dir/$name.tar" ] || [ ! -f "$dir/$name.ref" ]; then
    echo "image-map: $dir/$name.tar (or .ref) missing for $ref: run integration/images/build.sh $dir e2e pause" >&2
    missing=1
    continue
  fi
  echo "$dir/$name.tar $ref"
done <"$list"

if [ ${#unmapped[@]} -gt 0 ]; then
  echo "image-map: ${#unmapped[@]} reference(s) without a local image:" >&2
  printf '  %s\n' "${unmapped[@]}" >&2
fi
exit $missing
