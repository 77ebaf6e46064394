#!/usr/bin/env bash
# Collects the minimal root filesystem of knat's image (also the base of the kube-proxy test
# image) out of a Debian root that has the packages of daemonset/image/packages installed:
#
#   daemonset/image/rootfs.sh STAGING OUT
#
# STAGING is that Debian root: "/" in daemonset/Containerfile's Debian stage, an mmdebstrap
# directory in scripts/image.sh. OUT must be missing or empty. Only this goes into OUT:
#
#   /usr/sbin/xtables-nft-multi, /usr/sbin/xtables-legacy-multi   the two iptables front-ends
#   /usr/sbin/ip{,6}tables{,-nft,-legacy}{,-save,-restore}        their names, symlinks laid out
#                                    as Debian's package does (the unsuffixed ones through
#                                    /etc/alternatives, which points at the nft variants)
#   /usr/lib/<triplet>/xtables/*.so  the extensions, dlopened per match/target (ldd misses them)
#   /usr/sbin/nft, /usr/sbin/conntrack
#   every library in the ldd closure of all of the above, the dynamic loader, and libgcc_s
#                                    (Rust executables such as knat link it; kube-proxy is static)
#   /etc/protocols, /etc/services, /etc/ethertypes (netbase), /etc/xtables/connlabel.conf if
#                                    the packages ship it, and written here: nsswitch.conf
#                                    (files only), passwd and group with root
#   /tmp (1777), /run (/run/xtables.lock is the iptables lock)
#
# Every path is resolved inside STAGING, component by component: a symlink met on the way (the
# merged-/usr links /lib, /lib64, /sbin; /etc/alternatives; libfoo.so.1 -> libfoo.so.1.2.3) is
# copied as the same symlink and its target followed, so OUT resolves each path as STAGING
# does. ldd runs inside STAGING (chroot unless STAGING is /), so host libraries never leak in.
set -euo pipefail

die() { echo "rootfs.sh: $*" >&2; exit 1; }
[ $# -eq 2 ] || die "usage: rootfs.sh STAGING OUT"
staging=${1%/}
out=${2%/}
[ -n "$out" ] || die "OUT must not be /"
[ -x "$staging/usr/sbin/xtables-nft-multi" ] || die "$staging has no /usr/sbin/xtables-nft-multi (install daemonset/image/packages there first)"
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then die "$out is not empty"; fi
mkdir -p "$out"
chmod 755 "$out"

if [ -z "$staging" ]; then
  ldd_in() { ldd "$@"; }
else
  ldd_in() { chroot "$staging" ldd "$@"; }
fi

declare -A added=()
# add PATH: reproduce PATH (absolute, as seen inside STAGING) in OUT; see the header.
add() {
  local path=$1 prefix="" rest comp cur target
  [ -z "${added[$path]:-}" ] || return 0
  added[$path]=1
  rest=${path#/}
  while [ -n "$rest" ]; do
    comp=${rest%%/*}
    if [ "$comp" = "$rest" ]; then rest=""; else rest=${rest#*/}; fi
    case $comp in
      "" | .) continue ;;
      ..) prefix=${prefix%/*}; continue ;;
    esac
    cur="$prefix/$comp"
    if [ -L "$staging$cur" ]; then
      target=$(readlink "$staging$cur")
      [ -L "$out$cur" ] || ln -s "$target" "$out$cur"
      case $target in
        /*) add "$target${rest:+/$rest}" ;;
        *) add "$prefix/$target${rest:+/$rest}" ;;
      esac
      return 0
    elif [ -d "$staging$cur" ]; then
      [ -d "$out$cur" ] || mkdir -m "$(stat -c %a "$staging$cur")" "$out$cur"
    elif [ -e "$staging$cur" ]; then
      [ -z "$rest" ] || die "resolving $path: $cur is not a directory"
      [ -e "$out$cur" ] || cp -a "$staging$cur" "$out$cur"
    else
      die "resolving $path: $cur does not exist in ${staging:-/}"
    fi
    prefix=$cur
  done
}

# --- the programs ---------------------------------------------------------------------------
programs=(/usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi /usr/sbin/nft /usr/sbin/conntrack)
for p in "${programs[@]}"; do add "$p"; done
for base in iptables ip6tables; do
  for mode in "" -nft -legacy; do
    for suffix in "" -save -restore; do
      add "/usr/sbin/$base$mode$suffix"
    done
  done
done

# --- the extensions ---------------------------------------------------------------------------
xtdirs=("$staging"/usr/lib/*/xtables)
[ ${#xtdirs[@]} -eq 1 ] && [ -d "${xtdirs[0]}" ] || die "expected one /usr/lib/<triplet>/xtables in ${staging:-/}, found: ${xtdirs[*]}"
xtdir=${xtdirs[0]#"$staging"}
triplet=${xtdir#/usr/lib/}
triplet=${triplet%/xtables}
extensions=()
for f in "$staging$xtdir"/*.so; do
  add "${f#"$staging"}"
  [ -L "$f" ] || extensions+=("${f#"$staging"}")
done
[ ${#extensions[@]} -gt 0 ] || die "no extensions in ${staging:-/}$xtdir"

# --- their libraries, the loader, libgcc_s ----------------------------------------------------
closure=$(ldd_in "${programs[@]}" "${extensions[@]}" 2>&1) || die "ldd failed inside ${staging:-/}: $closure"
if grep -q 'not found' <<<"$closure"; then
  die "unresolved libraries: $(grep 'not found' <<<"$closure" | sort -u | tr -s ' \t' ' ')"
fi
libs=$(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $2 ~ /^\(/ { print $1 }' <<<"$closure" | sort -u)
for lib in $libs; do add "$lib"; done
add "/usr/lib/$triplet/libgcc_s.so.1"

# --- /etc, /tmp, /run -------------------------------------------------------------------------
for f in /etc/protocols /etc/services /etc/ethertypes; do add "$f"; done
[ ! -e "$staging/etc/xtables/connlabel.conf" ] || add /etc/xtables/connlabel.conf
mkdir -p "$out/etc"
# Debian's nsswitch.conf names "db" and "nis", which glibc would try to dlopen; files (and dns)
# are built into glibc >= 2.34.
cat >"$out/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
shadow: files
hosts: files dns
networks: files
protocols: files
services: files
ethers: files
rpc: files
EOF
echo 'root:x:0:0:root:/root:/usr/sbin/nologin' >"$out/etc/passwd"
echo 'root:x:0:' >"$out/etc/group"
chmod 644 "$out/etc/nsswitch.conf" "$out/etc/passwd" "$out/etc/group"
install -d -m 1777 "$out/tmp"
install -d -m 755 "$out/run"

files=$(find "$out" -type f | wc -l)
bytes=$(find "$out" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
echo "rootfs.sh: $out: $files files, $bytes bytes" >&2
