#!/usr/bin/env bash
# Regenerates the example outputs in docs/local-traffic.md by running the commands themselves
# on the fixture clusters under tests/fixtures/doctor/.
#
# Each example sits between `<!-- example:NAME -->` and `<!-- /example -->` in the guide; this
# script replaces the text in between with a fenced block holding the command and its output.
# `knat doctor` runs under `unshare --uts` with the host name set to the node it checks, so the
# examples read as if run on that node (only the new UTS namespace is changed). The `knat diff`
# examples need root and iptables-nft: they load rules into a network namespace created here
# (deleted on exit) and tamper with them there; the root namespace is never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet
KNAT="$PWD/target/debug/knat"
DOC=docs/local-traffic.md
FIX=tests/fixtures/doctor
OUT=$(mktemp -d)
NS="knat-doc-$$"
cleanup() {
  ip netns delete "$NS" 2>/dev/null || true
  rm -rf "$OUT"
}
trap cleanup EXIT

# example NAME "shown command" command...: runs the command, records "$ shown" plus output and exit status.
example() {
  local name=$1 shown=$2
  shift 2
  local status=0
  "$@" >"$OUT/$name.out" 2>/dev/null || status=$?
  {
    echo '```console'
    echo "\$ $shown"
    cat "$OUT/$name.out"
    echo "\$ echo \$?"
    echo "$status"
    echo '```'
  } >"$OUT/$name.md"
}

on_node() { # on_node HOSTNAME command...: run with that host name, in a private UTS namespace
  local host=$1
  shift
  unshare --uts sh -c 'hostname "$0" && exec "$@"' "$host" "$@"
}

example doctor-stacked "knat doctor --from-files $FIX/stacked --node-name node-1" \
  on_node node-1 "$KNAT" doctor --from-files "$FIX/stacked" --node-name node-1
example doctor-all-nodes "knat doctor --from-files $FIX/stacked --all-nodes --imbalance-threshold 4" \
  on_node node-1 "$KNAT" doctor --from-files "$FIX/stacked" --all-nodes --imbalance-threshold 4
example doctor-wrong-name "knat doctor --from-files $FIX/wrong-node-name --node-name node-1" \
  on_node node-1 "$KNAT" doctor --from-files "$FIX/wrong-node-name" --node-name node-1
example doctor-broken "knat doctor --from-files $FIX/no-endpoints --node-name node-1" \
  on_node node-1 "$KNAT" doctor --from-files "$FIX/no-endpoints" --node-name node-1

# knat trace on rendered rules (pure; no root needed).
"$KNAT" render --node-name node-1 "$FIX/wrong-node-name" >"$OUT/wrong.rules" 2>/dev/null
example trace-wrong-name "knat trace --dump node-1-wrong-name.rules --src 203.0.113.7 --dst 198.51.100.10:80 --node-ip 192.168.50.11" \
  "$KNAT" trace --dump "$OUT/wrong.rules" --src 203.0.113.7 --dst 198.51.100.10:80 --node-ip 192.168.50.11
"$KNAT" render --node-name node-3 --cluster-cidr 10.244.0.0/16 "$FIX/stacked" >"$OUT/node3.rules"
grep_nat() { "$@" | grep -E '^ *nat KUBE-|^verdict'; }
example trace-terminating "knat trace --dump node-3.rules --src 203.0.113.7 --dst 198.51.100.10:80 --node-ip 192.168.50.13 | grep -E '^ *nat KUBE-|^verdict'" \
  grep_nat "$KNAT" trace --dump "$OUT/node3.rules" --src 203.0.113.7 --dst 198.51.100.10:80 --node-ip 192.168.50.13
example trace-pod-to-lb "knat trace --dump node-3.rules --src 10.244.3.50 --dst 198.51.100.10:80 --node-ip 192.168.50.13 | grep -E '^ *nat KUBE-|^verdict'" \
  grep_nat "$KNAT" trace --dump "$OUT/node3.rules" --src 10.244.3.50 --dst 198.51.100.10:80 --node-ip 192.168.50.13

# knat diff against a real network namespace.
if [ "$(id -u)" = 0 ] && command -v iptables-nft-restore >/dev/null; then
  ip netns add "$NS"
  "$KNAT" render --node-name node-1 "$FIX/stacked" >"$OUT/node1.rules"
  ip netns exec "$NS" iptables-nft-restore <"$OUT/node1.rules"
  DIFF=(ip netns exec "$NS" "$KNAT" diff --node-name node-1 --ip-family ipv4 "$FIX/stacked")
  example diff-clean "knat diff --node-name node-1 $FIX/stacked" "${DIFF[@]}"
  ip netns exec "$NS" iptables-nft -t nat -D KUBE-SVL-XRY76EGRC3BSCIIJ 2
  ip netns exec "$NS" iptables-nft -t nat -F KUBE-SERVICES
  ip netns exec "$NS" iptables-nft -t filter -A KUBE-FORWARD -s 192.0.2.99 -j ACCEPT
  ip netns exec "$NS" iptables-nft -t nat -N KUBE-SEP-AAAAAAAAAAAAAAAA
  example diff-tampered "knat diff --node-name node-1 $FIX/stacked" "${DIFF[@]}"
else
  echo "not root or no iptables-nft: keeping the knat diff examples as they are" >&2
fi

python3 - "$DOC" "$OUT" <<'PY'
import os, re, sys
doc, out = sys.argv[1], sys.argv[2]
text = open(doc).read()
def fill(m):
    indent, name = m.group(1), m.group(2)
    path = os.path.join(out, name + ".md")
    if not os.path.exists(path):
        return m.group(0)
    body = "".join(indent + line if line.strip() else line for line in open(path).read().splitlines(True))
    return f"{indent}<!-- example:{name} -->\n{body}{indent}<!-- /example -->"
text = re.sub(r"^([ \t]*)<!-- example:([a-z0-9-]+) -->\n.*?^[ \t]*<!-- /example -->", fill, text, flags=re.S | re.M)
open(doc, "w").write(text)
PY
echo "updated $DOC"
