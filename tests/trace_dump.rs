//! Packet-flow tests of the `dump` module over hand-written rulesets.
//!
//! The same ruleset is written twice: once as knat (and upstream kube-proxy) write it as
//! `iptables-restore` input, and once as `iptables-save` prints it back (addresses first with
//! `/32`, `--set-xmark`, 11-digit probabilities, `recent` defaults, explicit `--reject-with`).
//! Every scenario must trace identically through both.
//!
//! The node is 192.168.0.2, the cluster CIDR 10.244.0.0/16 (detector `-s 10.244.0.0/16`), this
//! node's pods are in 10.244.1.0/24. Services:
//! - demo/web:http: eTP=Local LoadBalancer (§4 of the reference): clusterIP 10.96.0.10:80 to 8080,
//!   nodePort 30080, health check 32000, LB 198.51.100.10; endpoints 10.244.1.5 (local) and
//!   10.244.2.7 (remote).
//! - demo/api:http: eTP=Local LoadBalancer with no local endpoint: clusterIP 10.96.0.20:80 to
//!   9090, nodePort 30081, health check 32001, LB 198.51.100.20; endpoint 10.244.2.8 (remote).
//! - demo/empty:http: ClusterIP 10.96.0.30:80 without endpoints.
//! - demo/sticky:http: ClusterIP 10.96.0.40:80, sessionAffinity ClientIP (10800 s); endpoints
//!   10.244.1.6:80 and 10.244.2.9:80.

use std::net::IpAddr;

use knat::dump::{
    Dump, RestoreError, TraceRequest, TraceResult, Verdict, apply_restore, format_text, parse,
    to_save_text, trace,
};
use knat::model::Protocol;

/// The ruleset as knat writes it (restore input, with the hook jumps as plain `-A` rules).
const KNAT: &str = r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -j KUBE-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-NODEPORTS -m comment --comment "demo/web:http health check node port" -m tcp -p tcp --dport 32000 -j ACCEPT
-A KUBE-NODEPORTS -m comment --comment "demo/api:http health check node port" -m tcp -p tcp --dport 32001 -j ACCEPT
-A KUBE-SERVICES -m comment --comment "demo/empty:http has no endpoints" -m tcp -p tcp -d 10.96.0.30 --dport 80 -j REJECT
-A KUBE-EXTERNAL-SERVICES -m comment --comment "demo/api:http has no local endpoints" -m tcp -p tcp -d 198.51.100.20 --dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -m comment --comment "demo/api:http has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30081 -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name ct_state_invalid_dropped_pkts -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-SVC-XRY76EGRC3BSCIIJ - [0:0]
:KUBE-SVL-XRY76EGRC3BSCIIJ - [0:0]
:KUBE-EXT-XRY76EGRC3BSCIIJ - [0:0]
:KUBE-SEP-NW5VICAF3Z2QABHQ - [0:0]
:KUBE-SEP-JPICTQTYOLMYNIJ7 - [0:0]
:KUBE-SVC-CSGFBKVOQQKWLMAT - [0:0]
:KUBE-EXT-CSGFBKVOQQKWLMAT - [0:0]
:KUBE-SEP-KTLE5QRBMXBP55BF - [0:0]
:KUBE-SVC-AXLOBOE2HHHPV3ST - [0:0]
:KUBE-SEP-XTEAL65X242EMLU3 - [0:0]
:KUBE-SEP-LWAFG5CMXBNP3LHW - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-NODEPORTS -m comment --comment demo/web:http -m tcp -p tcp -d 127.0.0.0/8 --dport 30080 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-XRY76EGRC3BSCIIJ
-A KUBE-NODEPORTS -m comment --comment demo/web:http -m tcp -p tcp --dport 30080 -j KUBE-EXT-XRY76EGRC3BSCIIJ
-A KUBE-NODEPORTS -m comment --comment demo/api:http -m tcp -p tcp -d 127.0.0.0/8 --dport 30081 -m nfacct --nfacct-name localhost_nps_accepted_pkts -j KUBE-EXT-CSGFBKVOQQKWLMAT
-A KUBE-NODEPORTS -m comment --comment demo/api:http -m tcp -p tcp --dport 30081 -j KUBE-EXT-CSGFBKVOQQKWLMAT
-A KUBE-SERVICES -m comment --comment "demo/web:http cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j KUBE-SVC-XRY76EGRC3BSCIIJ
-A KUBE-SERVICES -m comment --comment "demo/web:http loadbalancer IP" -m tcp -p tcp -d 198.51.100.10 --dport 80 -j KUBE-EXT-XRY76EGRC3BSCIIJ
-A KUBE-SERVICES -m comment --comment "demo/api:http cluster IP" -m tcp -p tcp -d 10.96.0.20 --dport 80 -j KUBE-SVC-CSGFBKVOQQKWLMAT
-A KUBE-SERVICES -m comment --comment "demo/api:http loadbalancer IP" -m tcp -p tcp -d 198.51.100.20 --dport 80 -j KUBE-EXT-CSGFBKVOQQKWLMAT
-A KUBE-SERVICES -m comment --comment "demo/sticky:http cluster IP" -m tcp -p tcp -d 10.96.0.40 --dport 80 -j KUBE-SVC-AXLOBOE2HHHPV3ST
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-EXT-XRY76EGRC3BSCIIJ -m comment --comment "pod traffic for demo/web:http external destinations" -s 10.244.0.0/16 -j KUBE-SVC-XRY76EGRC3BSCIIJ
-A KUBE-EXT-XRY76EGRC3BSCIIJ -m comment --comment "masquerade LOCAL traffic for demo/web:http external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-XRY76EGRC3BSCIIJ -m comment --comment "route LOCAL traffic for demo/web:http external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-XRY76EGRC3BSCIIJ
-A KUBE-EXT-XRY76EGRC3BSCIIJ -j KUBE-SVL-XRY76EGRC3BSCIIJ
-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 10.244.1.5:8080" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-NW5VICAF3Z2QABHQ
-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 10.244.2.7:8080" -j KUBE-SEP-JPICTQTYOLMYNIJ7
-A KUBE-SVL-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 10.244.1.5:8080" -j KUBE-SEP-NW5VICAF3Z2QABHQ
-A KUBE-SEP-NW5VICAF3Z2QABHQ -m comment --comment demo/web:http -s 10.244.1.5 -j KUBE-MARK-MASQ
-A KUBE-SEP-NW5VICAF3Z2QABHQ -m comment --comment demo/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.1.5:8080
-A KUBE-SEP-JPICTQTYOLMYNIJ7 -m comment --comment demo/web:http -s 10.244.2.7 -j KUBE-MARK-MASQ
-A KUBE-SEP-JPICTQTYOLMYNIJ7 -m comment --comment demo/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.2.7:8080
-A KUBE-EXT-CSGFBKVOQQKWLMAT -m comment --comment "pod traffic for demo/api:http external destinations" -s 10.244.0.0/16 -j KUBE-SVC-CSGFBKVOQQKWLMAT
-A KUBE-EXT-CSGFBKVOQQKWLMAT -m comment --comment "masquerade LOCAL traffic for demo/api:http external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-CSGFBKVOQQKWLMAT -m comment --comment "route LOCAL traffic for demo/api:http external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-CSGFBKVOQQKWLMAT
-A KUBE-SVC-CSGFBKVOQQKWLMAT -m comment --comment "demo/api:http cluster IP" -m tcp -p tcp -d 10.96.0.20 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-CSGFBKVOQQKWLMAT -m comment --comment "demo/api:http -> 10.244.2.8:9090" -j KUBE-SEP-KTLE5QRBMXBP55BF
-A KUBE-SEP-KTLE5QRBMXBP55BF -m comment --comment demo/api:http -s 10.244.2.8 -j KUBE-MARK-MASQ
-A KUBE-SEP-KTLE5QRBMXBP55BF -m comment --comment demo/api:http -m tcp -p tcp -j DNAT --to-destination 10.244.2.8:9090
-A KUBE-SVC-AXLOBOE2HHHPV3ST -m comment --comment "demo/sticky:http cluster IP" -m tcp -p tcp -d 10.96.0.40 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ
-A KUBE-SVC-AXLOBOE2HHHPV3ST -m comment --comment "demo/sticky:http -> 10.244.1.6:80" -m recent --name KUBE-SEP-XTEAL65X242EMLU3 --rcheck --seconds 10800 --reap -j KUBE-SEP-XTEAL65X242EMLU3
-A KUBE-SVC-AXLOBOE2HHHPV3ST -m comment --comment "demo/sticky:http -> 10.244.2.9:80" -m recent --name KUBE-SEP-LWAFG5CMXBNP3LHW --rcheck --seconds 10800 --reap -j KUBE-SEP-LWAFG5CMXBNP3LHW
-A KUBE-SVC-AXLOBOE2HHHPV3ST -m comment --comment "demo/sticky:http -> 10.244.1.6:80" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-XTEAL65X242EMLU3
-A KUBE-SVC-AXLOBOE2HHHPV3ST -m comment --comment "demo/sticky:http -> 10.244.2.9:80" -j KUBE-SEP-LWAFG5CMXBNP3LHW
-A KUBE-SEP-XTEAL65X242EMLU3 -m comment --comment demo/sticky:http -s 10.244.1.6 -j KUBE-MARK-MASQ
-A KUBE-SEP-XTEAL65X242EMLU3 -m comment --comment demo/sticky:http -m recent --name KUBE-SEP-XTEAL65X242EMLU3 --set -m tcp -p tcp -j DNAT --to-destination 10.244.1.6:80
-A KUBE-SEP-LWAFG5CMXBNP3LHW -m comment --comment demo/sticky:http -s 10.244.2.9 -j KUBE-MARK-MASQ
-A KUBE-SEP-LWAFG5CMXBNP3LHW -m comment --comment demo/sticky:http -m recent --name KUBE-SEP-LWAFG5CMXBNP3LHW --set -m tcp -p tcp -j DNAT --to-destination 10.244.2.9:80
COMMIT
"#;

/// The same ruleset as `iptables-save` prints it.
const SAVED: &str = r#"# Generated by iptables-save v1.8.10 (nf_tables) on Tue Mar  3 10:00:00 2026
*filter
:INPUT ACCEPT [48213:9341122]
:FORWARD ACCEPT [1022:81760]
:OUTPUT ACCEPT [47120:8811302]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -j KUBE-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-EXTERNAL-SERVICES -d 198.51.100.20/32 -p tcp -m comment --comment "demo/api:http has no local endpoints" -m tcp --dport 80 -j DROP
-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment "demo/api:http has no local endpoints" -m addrtype --dst-type LOCAL -m tcp --dport 30081 -j DROP
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -m nfacct --nfacct-name  ct_state_invalid_dropped_pkts -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-NODEPORTS -p tcp -m comment --comment "demo/web:http health check node port" -m tcp --dport 32000 -j ACCEPT
-A KUBE-NODEPORTS -p tcp -m comment --comment "demo/api:http health check node port" -m tcp --dport 32001 -j ACCEPT
-A KUBE-SERVICES -d 10.96.0.30/32 -p tcp -m comment --comment "demo/empty:http has no endpoints" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable
COMMIT
# Completed on Tue Mar  3 10:00:00 2026
# Generated by iptables-save v1.8.10 (nf_tables) on Tue Mar  3 10:00:00 2026
*nat
:PREROUTING ACCEPT [912:54720]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [3310:198600]
:POSTROUTING ACCEPT [3310:198600]
:KUBE-EXT-CSGFBKVOQQKWLMAT - [0:0]
:KUBE-EXT-XRY76EGRC3BSCIIJ - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-JPICTQTYOLMYNIJ7 - [0:0]
:KUBE-SEP-KTLE5QRBMXBP55BF - [0:0]
:KUBE-SEP-LWAFG5CMXBNP3LHW - [0:0]
:KUBE-SEP-NW5VICAF3Z2QABHQ - [0:0]
:KUBE-SEP-XTEAL65X242EMLU3 - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AXLOBOE2HHHPV3ST - [0:0]
:KUBE-SVC-CSGFBKVOQQKWLMAT - [0:0]
:KUBE-SVC-XRY76EGRC3BSCIIJ - [0:0]
:KUBE-SVL-XRY76EGRC3BSCIIJ - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-EXT-CSGFBKVOQQKWLMAT -s 10.244.0.0/16 -m comment --comment "pod traffic for demo/api:http external destinations" -j KUBE-SVC-CSGFBKVOQQKWLMAT
-A KUBE-EXT-CSGFBKVOQQKWLMAT -m comment --comment "masquerade LOCAL traffic for demo/api:http external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-CSGFBKVOQQKWLMAT -m comment --comment "route LOCAL traffic for demo/api:http external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-CSGFBKVOQQKWLMAT
-A KUBE-EXT-XRY76EGRC3BSCIIJ -s 10.244.0.0/16 -m comment --comment "pod traffic for demo/web:http external destinations" -j KUBE-SVC-XRY76EGRC3BSCIIJ
-A KUBE-EXT-XRY76EGRC3BSCIIJ -m comment --comment "masquerade LOCAL traffic for demo/web:http external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ
-A KUBE-EXT-XRY76EGRC3BSCIIJ -m comment --comment "route LOCAL traffic for demo/web:http external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-XRY76EGRC3BSCIIJ
-A KUBE-EXT-XRY76EGRC3BSCIIJ -j KUBE-SVL-XRY76EGRC3BSCIIJ
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-NODEPORTS -d 127.0.0.0/8 -p tcp -m comment --comment "demo/web:http" -m tcp --dport 30080 -m nfacct --nfacct-name  localhost_nps_accepted_pkts -j KUBE-EXT-XRY76EGRC3BSCIIJ
-A KUBE-NODEPORTS -p tcp -m comment --comment "demo/web:http" -m tcp --dport 30080 -j KUBE-EXT-XRY76EGRC3BSCIIJ
-A KUBE-NODEPORTS -d 127.0.0.0/8 -p tcp -m comment --comment "demo/api:http" -m tcp --dport 30081 -m nfacct --nfacct-name  localhost_nps_accepted_pkts -j KUBE-EXT-CSGFBKVOQQKWLMAT
-A KUBE-NODEPORTS -p tcp -m comment --comment "demo/api:http" -m tcp --dport 30081 -j KUBE-EXT-CSGFBKVOQQKWLMAT
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SEP-JPICTQTYOLMYNIJ7 -s 10.244.2.7/32 -m comment --comment "demo/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-JPICTQTYOLMYNIJ7 -p tcp -m comment --comment "demo/web:http" -m tcp -j DNAT --to-destination 10.244.2.7:8080
-A KUBE-SEP-KTLE5QRBMXBP55BF -s 10.244.2.8/32 -m comment --comment "demo/api:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-KTLE5QRBMXBP55BF -p tcp -m comment --comment "demo/api:http" -m tcp -j DNAT --to-destination 10.244.2.8:9090
-A KUBE-SEP-LWAFG5CMXBNP3LHW -s 10.244.2.9/32 -m comment --comment "demo/sticky:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-LWAFG5CMXBNP3LHW -p tcp -m comment --comment "demo/sticky:http" -m recent --set --name KUBE-SEP-LWAFG5CMXBNP3LHW --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.2.9:80
-A KUBE-SEP-NW5VICAF3Z2QABHQ -s 10.244.1.5/32 -m comment --comment "demo/web:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-NW5VICAF3Z2QABHQ -p tcp -m comment --comment "demo/web:http" -m tcp -j DNAT --to-destination 10.244.1.5:8080
-A KUBE-SEP-XTEAL65X242EMLU3 -s 10.244.1.6/32 -m comment --comment "demo/sticky:http" -j KUBE-MARK-MASQ
-A KUBE-SEP-XTEAL65X242EMLU3 -p tcp -m comment --comment "demo/sticky:http" -m recent --set --name KUBE-SEP-XTEAL65X242EMLU3 --mask 255.255.255.255 --rsource -m tcp -j DNAT --to-destination 10.244.1.6:80
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "demo/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-XRY76EGRC3BSCIIJ
-A KUBE-SERVICES -d 198.51.100.10/32 -p tcp -m comment --comment "demo/web:http loadbalancer IP" -m tcp --dport 80 -j KUBE-EXT-XRY76EGRC3BSCIIJ
-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment "demo/api:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-CSGFBKVOQQKWLMAT
-A KUBE-SERVICES -d 198.51.100.20/32 -p tcp -m comment --comment "demo/api:http loadbalancer IP" -m tcp --dport 80 -j KUBE-EXT-CSGFBKVOQQKWLMAT
-A KUBE-SERVICES -d 10.96.0.40/32 -p tcp -m comment --comment "demo/sticky:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-AXLOBOE2HHHPV3ST
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-AXLOBOE2HHHPV3ST ! -s 10.244.0.0/16 -d 10.96.0.40/32 -p tcp -m comment --comment "demo/sticky:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-AXLOBOE2HHHPV3ST -m comment --comment "demo/sticky:http -> 10.244.1.6:80" -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-XTEAL65X242EMLU3 --mask 255.255.255.255 --rsource -j KUBE-SEP-XTEAL65X242EMLU3
-A KUBE-SVC-AXLOBOE2HHHPV3ST -m comment --comment "demo/sticky:http -> 10.244.2.9:80" -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-LWAFG5CMXBNP3LHW --mask 255.255.255.255 --rsource -j KUBE-SEP-LWAFG5CMXBNP3LHW
-A KUBE-SVC-AXLOBOE2HHHPV3ST -m comment --comment "demo/sticky:http -> 10.244.1.6:80" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-XTEAL65X242EMLU3
-A KUBE-SVC-AXLOBOE2HHHPV3ST -m comment --comment "demo/sticky:http -> 10.244.2.9:80" -j KUBE-SEP-LWAFG5CMXBNP3LHW
-A KUBE-SVC-CSGFBKVOQQKWLMAT ! -s 10.244.0.0/16 -d 10.96.0.20/32 -p tcp -m comment --comment "demo/api:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-CSGFBKVOQQKWLMAT -m comment --comment "demo/api:http -> 10.244.2.8:9090" -j KUBE-SEP-KTLE5QRBMXBP55BF
-A KUBE-SVC-XRY76EGRC3BSCIIJ ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment "demo/web:http cluster IP" -m tcp --dport 80 -j KUBE-MARK-MASQ
-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 10.244.1.5:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-NW5VICAF3Z2QABHQ
-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 10.244.2.7:8080" -j KUBE-SEP-JPICTQTYOLMYNIJ7
-A KUBE-SVL-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 10.244.1.5:8080" -j KUBE-SEP-NW5VICAF3Z2QABHQ
COMMIT
# Completed on Tue Mar  3 10:00:00 2026
"#;

const NODE: &str = "192.168.0.2";
const POD: &str = "10.244.1.9";
const CLIENT: &str = "203.0.113.9";
const WEB_LOCAL: &str = "10.244.1.5:8080";
const WEB_REMOTE: &str = "10.244.2.7:8080";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

/// A packet from the network.
fn from(src: &str, dst: &str, dport: u16) -> TraceRequest {
    TraceRequest {
        src: ip(src),
        dst: ip(dst),
        dport,
        protocol: Protocol::Tcp,
        local: false,
        node_ips: vec![ip(NODE)],
        in_iface: None,
    }
}

/// A packet generated on the node.
fn local(src: &str, dst: &str, dport: u16) -> TraceRequest {
    TraceRequest {
        local: true,
        ..from(src, dst, dport)
    }
}

fn knat_dump() -> Dump {
    let mut dump = Dump::default();
    apply_restore(&mut dump, KNAT, false).expect("knat's payload restores");
    dump
}

fn saved_dump() -> Dump {
    parse(SAVED).expect("the iptables-save dump parses")
}

/// Traces through both spellings, checks they agree (verdict, targets, masquerade, branches, and
/// the path apart from each rule's original spelling) and returns the result.
fn trace_both(req: &TraceRequest) -> TraceResult {
    let a = trace(&knat_dump(), req);
    let b = trace(&saved_dump(), req);
    assert_eq!(a.verdict, b.verdict, "{req:?}");
    assert_eq!(a.targets, b.targets, "{req:?}");
    assert_eq!(a.masquerade, b.masquerade, "{req:?}");
    // Branches agree but for each cause's original spelling and line.
    let branches = |r: &TraceResult| -> Vec<String> {
        let cause = |c: &Option<knat::dump::trace::RuleRef>| {
            c.as_ref()
                .map(|c| format!("{} {} #{}", c.table, c.chain, c.rule_index))
        };
        r.branches
            .iter()
            .map(|b| {
                format!(
                    "{:?} {:?} {} {:.6} {:?} {:?}",
                    b.target,
                    b.verdict,
                    b.masquerade,
                    b.chance,
                    cause(&b.mark_set_by),
                    cause(&b.masquerade_by)
                )
            })
            .collect()
    };
    assert_eq!(branches(&a), branches(&b), "{req:?}");
    assert_eq!(a.unknown, Vec::<String>::new(), "{req:?}");
    assert_eq!(b.unknown, Vec::<String>::new(), "{req:?}");
    let shape = |r: &TraceResult| -> Vec<(String, String, usize, String)> {
        r.path
            .iter()
            .map(|s| (s.table.clone(), s.chain.clone(), s.depth, s.action.clone()))
            .collect()
    };
    assert_eq!(shape(&a), shape(&b), "{req:?}");
    a
}

fn visited(r: &TraceResult, table: &str, chain: &str) -> bool {
    r.path.iter().any(|s| s.table == table && s.chain == chain)
}

#[test]
fn both_spellings_are_the_same_ruleset() {
    let knat = knat_dump();
    let saved = saved_dump();
    assert_eq!(knat, saved);
    // And the same as a strict restore of the saved text.
    let mut restored = Dump::default();
    apply_restore(&mut restored, SAVED, false).expect("the saved dump restores");
    assert_eq!(restored, saved);
    assert_eq!(to_save_text(&knat), to_save_text(&saved));
    assert_eq!(saved.tables["nat"].chains.len(), 19);
    assert_eq!(saved.tables["filter"].chains.len(), 9);
}

#[test]
fn cluster_ip_reaches_both_endpoints_without_masquerade() {
    let r = trace_both(&from(POD, "10.96.0.10", 80));
    assert_eq!(r.verdict, Verdict::Dnat);
    assert_eq!(r.targets, vec![WEB_LOCAL, WEB_REMOTE]);
    assert!(!r.masquerade);
    assert_eq!(r.branches.len(), 2);
    // Pod-to-pod traffic is forwarded.
    assert!(visited(&r, "filter", "FORWARD"));
    assert!(visited(&r, "nat", "KUBE-SEP-NW5VICAF3Z2QABHQ"));
    assert!(visited(&r, "nat", "KUBE-SEP-JPICTQTYOLMYNIJ7"));
}

#[test]
fn host_to_cluster_ip_is_masqueraded() {
    let r = trace_both(&local(NODE, "10.96.0.10", 80));
    assert_eq!(r.targets, vec![WEB_LOCAL, WEB_REMOTE]);
    assert!(r.masquerade);
    assert!(r.branches.iter().all(|b| b.masquerade));
    for b in &r.branches {
        // Not from a pod: the service chain's first rule asked for it.
        let mark = b.mark_set_by.as_ref().expect("marked");
        assert!(mark.chain.starts_with("KUBE-SVC-"), "{mark}");
        assert_eq!(mark.rule_index, 1, "{mark}");
        assert!(mark.rule.contains("! -s 10.244.0.0/16"), "{mark}");
        let snat = b.masquerade_by.as_ref().expect("source NAT");
        assert_eq!(snat.chain, "KUBE-POSTROUTING", "{snat}");
        assert!(snat.rule.contains("MASQUERADE"), "{snat}");
    }
    assert!(visited(&r, "nat", "KUBE-MARK-MASQ"));
    assert!(visited(&r, "filter", "OUTPUT"));
}

#[test]
fn etp_local_lb_from_an_external_client_uses_only_the_local_endpoint() {
    let r = trace_both(&from(CLIENT, "198.51.100.10", 80));
    assert_eq!(r.verdict, Verdict::Dnat);
    assert_eq!(r.targets, vec![WEB_LOCAL]);
    assert!(!r.masquerade);
    assert!(visited(&r, "nat", "KUBE-SVL-XRY76EGRC3BSCIIJ"));
    assert!(!visited(&r, "nat", "KUBE-MARK-MASQ"));
}

#[test]
fn etp_local_lb_from_a_pod_is_short_circuited_to_all_endpoints() {
    let r = trace_both(&from(POD, "198.51.100.10", 80));
    assert_eq!(r.targets, vec![WEB_LOCAL, WEB_REMOTE]);
    assert!(!r.masquerade);
    assert!(!visited(&r, "nat", "KUBE-SVL-XRY76EGRC3BSCIIJ"));
}

#[test]
fn etp_local_lb_from_the_node_is_masqueraded_to_all_endpoints() {
    let r = trace_both(&local(NODE, "198.51.100.10", 80));
    assert_eq!(r.verdict, Verdict::Dnat);
    assert_eq!(r.targets, vec![WEB_LOCAL, WEB_REMOTE]);
    assert!(r.masquerade);
    assert!(visited(&r, "nat", "KUBE-POSTROUTING"));
    assert!(r.path.iter().any(|s| s.action == "MASQUERADE"));
}

#[test]
fn node_port_goes_through_the_kube_services_tail_rule() {
    let r = trace_both(&from(CLIENT, NODE, 30080));
    assert_eq!(r.verdict, Verdict::Dnat);
    assert_eq!(r.targets, vec![WEB_LOCAL]);
    assert!(!r.masquerade);
    let tail = r
        .path
        .iter()
        .find(|s| s.chain == "KUBE-SERVICES" && s.action == "jump to KUBE-NODEPORTS")
        .expect("the tail rule was taken");
    assert_eq!(tail.rule_index, Some(6));
    assert!(visited(&r, "nat", "KUBE-EXT-XRY76EGRC3BSCIIJ"));
    // A node port on another address of the cluster is not this node's.
    let other = trace_both(&from(CLIENT, "192.168.0.3", 30080));
    assert_eq!(other.verdict, Verdict::Accept);
    assert!(other.targets.is_empty());
}

#[test]
fn localhost_node_port_reaches_all_endpoints_masqueraded() {
    let r = trace_both(&local("127.0.0.1", "127.0.0.1", 30080));
    assert_eq!(r.targets, vec![WEB_LOCAL, WEB_REMOTE]);
    assert!(r.masquerade);
}

#[test]
fn no_local_endpoints_drops_external_traffic_in_filter() {
    let lb = trace_both(&from(CLIENT, "198.51.100.20", 80));
    assert_eq!(lb.verdict, Verdict::Drop);
    assert!(lb.targets.is_empty());
    assert!(!lb.masquerade);
    assert!(visited(&lb, "filter", "KUBE-EXTERNAL-SERVICES"));
    let last = lb.path.last().expect("path");
    assert_eq!(
        (last.chain.as_str(), last.rule_index, last.action.as_str()),
        ("KUBE-EXTERNAL-SERVICES", Some(1), "DROP")
    );
    let np = trace_both(&from(CLIENT, NODE, 30081));
    assert_eq!(np.verdict, Verdict::Drop);
    assert!(visited(&np, "filter", "INPUT"));
    // Pods and the node still reach the remote endpoint.
    let pod = trace_both(&from(POD, "198.51.100.20", 80));
    assert_eq!((pod.verdict, pod.masquerade), (Verdict::Dnat, false));
    assert_eq!(pod.targets, vec!["10.244.2.8:9090"]);
    let node = trace_both(&local(NODE, NODE, 30081));
    assert_eq!((node.verdict, node.masquerade), (Verdict::Dnat, true));
    assert_eq!(node.targets, vec!["10.244.2.8:9090"]);
}

#[test]
fn service_without_endpoints_is_rejected() {
    let r = trace_both(&from(POD, "10.96.0.30", 80));
    assert_eq!(r.verdict, Verdict::Reject);
    assert!(r.targets.is_empty());
    assert!(!r.masquerade);
    let last = r.path.last().expect("path");
    assert_eq!(
        (
            last.table.as_str(),
            last.chain.as_str(),
            last.action.as_str()
        ),
        ("filter", "KUBE-SERVICES", "REJECT")
    );
    assert_eq!(
        trace_both(&local(NODE, "10.96.0.30", 80)).verdict,
        Verdict::Reject
    );
    // Another port of that address is not the service.
    assert_eq!(
        trace_both(&from(POD, "10.96.0.30", 81)).verdict,
        Verdict::Accept
    );
}

#[test]
fn hairpin_is_masqueraded_only_towards_the_client_itself() {
    let r = trace_both(&from("10.244.1.5", "10.96.0.10", 80));
    assert_eq!(r.targets, vec![WEB_LOCAL, WEB_REMOTE]);
    assert!(r.masquerade);
    let by_target: Vec<(Option<&str>, bool)> = r
        .branches
        .iter()
        .map(|b| (b.target.as_deref(), b.masquerade))
        .collect();
    assert_eq!(
        by_target,
        vec![(Some(WEB_LOCAL), true), (Some(WEB_REMOTE), false)]
    );
    // Half of the new connections each; the hairpin one because of its endpoint chain's
    // `-s <endpoint> -j KUBE-MARK-MASQ`.
    assert!(r.branches.iter().all(|b| (b.chance - 0.5).abs() < 1e-9));
    let hairpin = &r.branches[0];
    let mark = hairpin.mark_set_by.as_ref().expect("marked");
    assert_eq!(mark.chain, "KUBE-SEP-NW5VICAF3Z2QABHQ", "{mark}");
    assert_eq!(mark.rule_index, 1);
    assert!(
        mark.rule.contains("10.244.1.5") && mark.rule.ends_with("-j KUBE-MARK-MASQ"),
        "{mark}"
    );
    let other = &r.branches[1];
    assert_eq!((&other.mark_set_by, &other.masquerade_by), (&None, &None));
    assert!(format_text(&r).contains("masquerade: in some branches only"));
    // The whole report as an operator reads it, and the branches as JSON.
    insta::assert_snapshot!(
        "hairpin_text",
        format_text(&trace(&knat_dump(), &from("10.244.1.5", "10.96.0.10", 80)))
    );
    let json = serde_json::to_value(&r.branches).expect("json");
    insta::assert_snapshot!(
        "hairpin_branches_json",
        serde_json::to_string_pretty(&json).expect("json")
    );
}

#[test]
fn session_affinity_still_finds_every_endpoint() {
    let r = trace_both(&from(POD, "10.96.0.40", 80));
    assert_eq!(r.targets, vec!["10.244.1.6:80", "10.244.2.9:80"]);
    assert!(!r.masquerade);
}

#[test]
fn health_check_port_is_accepted() {
    let r = trace_both(&from(CLIENT, NODE, 32000));
    assert_eq!(r.verdict, Verdict::Accept);
    assert!(r.targets.is_empty());
    let last = r.path.last().expect("path");
    assert_eq!(
        (last.chain.as_str(), last.action.as_str()),
        ("KUBE-NODEPORTS", "ACCEPT")
    );
}

#[test]
fn other_protocols_do_not_match_tcp_services() {
    let mut req = from(POD, "10.96.0.10", 80);
    req.protocol = Protocol::Udp;
    let r = trace_both(&req);
    assert_eq!(r.verdict, Verdict::Accept);
    assert!(r.targets.is_empty());
}

#[test]
fn format_text_is_readable() {
    let r = trace_both(&from(CLIENT, "198.51.100.10", 80));
    let text = format_text(&r);
    assert!(
        text.starts_with("nat PREROUTING: enter nat PREROUTING\n"),
        "{text}"
    );
    assert!(
        text.contains("  nat KUBE-SERVICES #2 (line 64): "),
        "{text}"
    );
    assert!(text.ends_with(
        "verdict: DNAT to 10.244.1.5:8080; masquerade: no (source address preserved)\n"
    ));
}

#[test]
fn noflush_restore_flushes_declared_chains_deletes_and_keeps_the_rest() {
    let mut state = knat_dump();
    // demo/sticky is deleted and demo/empty gets an endpoint-less REJECT on a new port.
    let partial = r#"*filter
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -m comment --comment "demo/empty:http has no endpoints" -m tcp -p tcp -d 10.96.0.30 --dport 8080 -j REJECT
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AXLOBOE2HHHPV3ST - [0:0]
:KUBE-SEP-XTEAL65X242EMLU3 - [0:0]
:KUBE-SEP-LWAFG5CMXBNP3LHW - [0:0]
-A KUBE-SERVICES -m comment --comment "demo/web:http cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j KUBE-SVC-XRY76EGRC3BSCIIJ
-A KUBE-SERVICES -m comment --comment "demo/web:http loadbalancer IP" -m tcp -p tcp -d 198.51.100.10 --dport 80 -j KUBE-EXT-XRY76EGRC3BSCIIJ
-A KUBE-SERVICES -m comment --comment "demo/api:http cluster IP" -m tcp -p tcp -d 10.96.0.20 --dport 80 -j KUBE-SVC-CSGFBKVOQQKWLMAT
-A KUBE-SERVICES -m comment --comment "demo/api:http loadbalancer IP" -m tcp -p tcp -d 198.51.100.20 --dport 80 -j KUBE-EXT-CSGFBKVOQQKWLMAT
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-X KUBE-SVC-AXLOBOE2HHHPV3ST
-X KUBE-SEP-XTEAL65X242EMLU3
-X KUBE-SEP-LWAFG5CMXBNP3LHW
COMMIT
"#;
    apply_restore(&mut state, partial, true).expect("the partial restore applies");
    let nat = &state.tables["nat"];
    // Deleted.
    assert!(!nat.chains.contains_key("KUBE-SVC-AXLOBOE2HHHPV3ST"));
    assert!(!nat.chains.contains_key("KUBE-SEP-XTEAL65X242EMLU3"));
    assert!(!nat.chains.contains_key("KUBE-SEP-LWAFG5CMXBNP3LHW"));
    // Flushed on declaration and refilled.
    assert_eq!(nat.chains["KUBE-SERVICES"].rules.len(), 5);
    assert_eq!(
        state.tables["filter"].chains["KUBE-SERVICES"].rules.len(),
        1
    );
    // Not mentioned: kept as they were.
    assert_eq!(nat.chains["KUBE-SVC-XRY76EGRC3BSCIIJ"].rules.len(), 3);
    assert_eq!(nat.chains["PREROUTING"].rules.len(), 1);
    assert_eq!(
        state.tables["filter"].chains["KUBE-EXTERNAL-SERVICES"]
            .rules
            .len(),
        2
    );
    assert_eq!(nat.chains.len(), 16);

    let sticky = trace(&state, &from(POD, "10.96.0.40", 80));
    assert_eq!(sticky.verdict, Verdict::Accept);
    assert!(sticky.targets.is_empty());
    assert_eq!(
        trace(&state, &from(POD, "10.96.0.30", 80)).verdict,
        Verdict::Accept
    );
    assert_eq!(
        trace(&state, &from(POD, "10.96.0.30", 8080)).verdict,
        Verdict::Reject
    );
    let web = trace(&state, &from(CLIENT, "198.51.100.10", 80));
    assert_eq!(web.targets, vec![WEB_LOCAL]);
}

#[test]
fn noflush_restore_with_a_dangling_jump_changes_nothing() {
    let mut state = knat_dump();
    let before = state.clone();
    // KUBE-SERVICES is rewritten to jump to a chain that is neither declared nor present.
    let broken = r#"*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AXLOBOE2HHHPV3ST - [0:0]
-A KUBE-SERVICES -m comment --comment "demo/new:http cluster IP" -m tcp -p tcp -d 10.96.0.50 --dport 80 -j KUBE-SVC-NOTDECLARED00000
-X KUBE-SVC-AXLOBOE2HHHPV3ST
COMMIT
"#;
    let err = apply_restore(&mut state, broken, true).expect_err("the kernel refuses it");
    match &err {
        RestoreError::DanglingJump {
            line,
            chain,
            target,
            rule_line,
            ..
        } => {
            assert_eq!(*line, 6);
            assert_eq!(*rule_line, 4);
            assert_eq!(chain, "KUBE-SERVICES");
            assert_eq!(target, "KUBE-SVC-NOTDECLARED00000");
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_eq!(err.line(), 6);
    assert_eq!(state, before);
    assert_eq!(to_save_text(&state), to_save_text(&before));
    // Still traces as before.
    let r = trace(&state, &from(POD, "10.96.0.40", 80));
    assert_eq!(r.targets, vec!["10.244.1.6:80", "10.244.2.9:80"]);

    // Deleting a chain that the (unflushed) KUBE-SERVICES still references is refused too.
    let in_use = "*nat\n:KUBE-SVC-AXLOBOE2HHHPV3ST - [0:0]\n-X KUBE-SVC-AXLOBOE2HHHPV3ST\nCOMMIT\n";
    let err = apply_restore(&mut state, in_use, true).expect_err("still referenced");
    assert!(
        matches!(err, RestoreError::ChainInUse { line: 3, .. }),
        "{err:?}"
    );
    assert_eq!(state, before);
}
