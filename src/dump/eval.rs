//! Evaluating a rule's matches against the packet being traced.
//!
//! The packet is a new connection (conntrack state NEW, plus DNAT once it was DNATed). There is no
//! `recent` state, so `--rcheck`/`--update`/`--remove` never match and `--set` always does.
//! `-m statistic` is reported as a branch. What the tracer cannot know (output interface, source
//! port, unusual address types) makes the rule "unknown".

use std::net::IpAddr;

use ipnet::IpNet;

use super::matches::{CtState, Direction, Match, RecentMode, StatisticMode};
use super::model::Rule;
use super::target::NatAddr;
use crate::model::Protocol;

/// The traced packet.
#[derive(Debug, Clone)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address (rewritten by DNAT).
    pub dst: IpAddr,
    /// Destination port (rewritten by DNAT with a port).
    pub dport: u16,
    /// Transport protocol.
    pub protocol: Protocol,
    /// The packet mark (`-j MARK`, `-m mark`).
    pub mark: u32,
    /// The DNAT applied, if any.
    pub dnat: Option<NatAddr>,
}

/// What the tracer knows about where the packet comes from.
#[derive(Debug, Clone)]
pub struct Env {
    /// Generated on the node (input interface empty).
    pub local: bool,
    /// The input interface of a packet from the network, if known.
    pub in_iface: Option<String>,
    /// Addresses `addrtype LOCAL` treats as local (loopback always is).
    pub node_ips: Vec<IpAddr>,
}

impl Env {
    /// Whether `ip` is a local address: a node IP, 127.0.0.0/8 or ::1.
    pub fn is_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.node_ips.contains(&ip)
    }
}

/// The result of evaluating a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eval {
    /// Every match holds. `branch` describes a `-m statistic` match, which holds only sometimes.
    Matches {
        /// `Some("random 0.50000000000")` for a probabilistic rule.
        branch: Option<String>,
    },
    /// Some match does not hold.
    NoMatch,
    /// The known matches hold but something cannot be evaluated (the reason).
    Unknown(String),
}

enum One {
    Yes,
    No,
    Unknown(String),
    Branch(String),
}

fn check(holds: bool, negated: bool) -> One {
    if holds != negated { One::Yes } else { One::No }
}

/// Evaluates every match of `rule` against `pkt`.
pub fn eval_rule(rule: &Rule, pkt: &Packet, env: &Env) -> Eval {
    let mut unknown: Vec<String> = Vec::new();
    let mut branch = None;
    for m in &rule.matches {
        match eval_match(m, pkt, env) {
            One::Yes => {}
            One::No => return Eval::NoMatch,
            One::Unknown(why) => unknown.push(why),
            One::Branch(desc) => branch = Some(desc),
        }
    }
    unknown.extend(
        rule.unknown
            .iter()
            .map(|u| format!("`{u}` is not understood")),
    );
    if unknown.is_empty() {
        Eval::Matches { branch }
    } else {
        Eval::Unknown(unknown.join("; "))
    }
}

fn eval_match(m: &Match, pkt: &Packet, env: &Env) -> One {
    match m {
        Match::Source { negated, net } => check(contains(net, pkt.src), *negated),
        Match::Destination { negated, net } => check(contains(net, pkt.dst), *negated),
        Match::InInterface { negated, name } => {
            let iface = if env.local {
                Some("")
            } else {
                env.in_iface.as_deref()
            };
            check(iface.is_some_and(|i| iface_matches(name, i)), *negated)
        }
        Match::OutInterface { name, .. } => {
            One::Unknown(format!("output interface `-o {name}` is not modelled"))
        }
        Match::Protocol { negated, name } => {
            check(name == "all" || name == pkt.protocol.as_str(), *negated)
        }
        Match::SrcType { negated, types } => addr_type(types, pkt.src, *negated, env),
        Match::DstType { negated, types } => addr_type(types, pkt.dst, *negated, env),
        Match::Comment(_) | Match::Nfacct(_) => One::Yes,
        Match::SourcePort { ports, .. } => {
            One::Unknown(format!("source port `--sport {ports}` is not modelled"))
        }
        Match::DestinationPort { negated, ports } => check(ports.contains(pkt.dport), *negated),
        Match::Multiport {
            negated,
            direction,
            ports,
        } => {
            let hit = ports.iter().any(|p| p.contains(pkt.dport));
            match direction {
                Direction::Destination => check(hit, *negated),
                Direction::Either if hit => check(true, *negated),
                Direction::Source | Direction::Either => {
                    One::Unknown("source ports are not modelled".to_string())
                }
            }
        }
        Match::Mark {
            negated,
            value,
            mask,
        } => check(pkt.mark & mask == *value, *negated),
        Match::CtState { negated, states } => {
            let holds = states
                .iter()
                .any(|s| *s == CtState::New || (*s == CtState::Dnat && pkt.dnat.is_some()));
            check(holds, *negated)
        }
        Match::Recent(r) => {
            // No recent state: the list is empty, `--set` adds and matches.
            check(r.mode == RecentMode::Set, r.negated)
        }
        Match::Statistic { mode, .. } => One::Branch(match mode {
            StatisticMode::Random { .. } => format!("random {:.11}", mode.probability()),
            StatisticMode::Nth { every, packet } => format!("nth every {every} packet {packet}"),
        }),
    }
}

fn contains(net: &IpNet, ip: IpAddr) -> bool {
    net.contains(&ip)
}

fn iface_matches(pattern: &str, iface: &str) -> bool {
    match pattern.strip_suffix('+') {
        Some(prefix) => iface.starts_with(prefix),
        None => pattern == iface,
    }
}

fn addr_type(types: &[String], ip: IpAddr, negated: bool, env: &Env) -> One {
    let mut hit = false;
    for t in types {
        let holds = match t.as_str() {
            "LOCAL" => env.is_local(ip),
            "UNICAST" => {
                !env.is_local(ip) && !ip.is_multicast() && !ip.is_unspecified() && !broadcast(ip)
            }
            "MULTICAST" => ip.is_multicast(),
            "BROADCAST" => broadcast(ip),
            other => return One::Unknown(format!("address type `{other}` is not modelled")),
        };
        hit |= holds;
    }
    check(hit, negated)
}

fn broadcast(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::parse::parse_rule_spec;

    fn pkt(src: &str, dst: &str, dport: u16) -> Packet {
        Packet {
            src: src.parse().expect("src"),
            dst: dst.parse().expect("dst"),
            dport,
            protocol: Protocol::Tcp,
            mark: 0,
            dnat: None,
        }
    }

    fn env(local: bool, iface: Option<&str>) -> Env {
        Env {
            local,
            in_iface: iface.map(str::to_string),
            node_ips: vec!["192.168.0.2".parse().expect("ip")],
        }
    }

    fn eval(spec: &str, p: &Packet, e: &Env) -> Eval {
        eval_rule(&parse_rule_spec(spec).expect("rule"), p, e)
    }

    const YES: Eval = Eval::Matches { branch: None };

    #[test]
    fn addresses_ports_protocols() {
        let p = pkt("10.0.0.2", "172.30.0.41", 80);
        let e = env(false, None);
        assert_eq!(
            eval("-d 172.30.0.41/32 -p tcp -m tcp --dport 80 -j X", &p, &e),
            YES
        );
        assert_eq!(
            eval("-d 172.30.0.41/32 -p udp -m udp --dport 80 -j X", &p, &e),
            Eval::NoMatch
        );
        assert_eq!(eval("! -s 10.0.0.0/8 -j X", &p, &e), Eval::NoMatch);
        assert_eq!(
            eval("-p tcp -m multiport --dports 1,70:90 -j X", &p, &e),
            YES
        );
        assert_eq!(
            eval("-p tcp -m tcp --dport 81:90 -j X", &p, &e),
            Eval::NoMatch
        );
    }

    #[test]
    fn addrtype_local_uses_node_ips_and_loopback() {
        let e = env(false, None);
        assert_eq!(
            eval(
                "-m addrtype --dst-type LOCAL -j X",
                &pkt("1.1.1.1", "192.168.0.2", 1),
                &e
            ),
            YES
        );
        assert_eq!(
            eval(
                "-m addrtype --dst-type LOCAL -j X",
                &pkt("1.1.1.1", "127.0.0.1", 1),
                &e
            ),
            YES
        );
        assert_eq!(
            eval(
                "-m addrtype --dst-type LOCAL -j X",
                &pkt("1.1.1.1", "1.2.3.4", 1),
                &e
            ),
            Eval::NoMatch
        );
        assert_eq!(
            eval(
                "-m addrtype ! --src-type LOCAL -j X",
                &pkt("1.1.1.1", "1.2.3.4", 1),
                &e
            ),
            YES
        );
    }

    #[test]
    fn interfaces() {
        let p = pkt("10.0.0.2", "1.2.3.4", 80);
        assert_eq!(eval("-i veth+ -j X", &p, &env(false, Some("veth12"))), YES);
        assert_eq!(
            eval("-i veth+ -j X", &p, &env(false, Some("eth0"))),
            Eval::NoMatch
        );
        assert_eq!(eval("-i eth0 -j X", &p, &env(false, None)), Eval::NoMatch);
        // Locally generated packets have no input interface.
        assert_eq!(eval("! -i cbr0 -j X", &p, &env(true, Some("cbr0"))), YES);
        assert!(matches!(
            eval("-o eth0 -j X", &p, &env(false, None)),
            Eval::Unknown(_)
        ));
    }

    #[test]
    fn marks_conntrack_recent_statistic() {
        let mut p = pkt("10.0.0.2", "1.2.3.4", 80);
        let e = env(false, None);
        let unmarked = "-m mark ! --mark 0x4000/0x4000 -j RETURN";
        assert_eq!(eval(unmarked, &p, &e), YES);
        p.mark = 0x4001;
        assert_eq!(eval(unmarked, &p, &e), Eval::NoMatch);
        assert_eq!(eval("-m conntrack --ctstate NEW -j X", &p, &e), YES);
        assert_eq!(
            eval("-m conntrack --ctstate INVALID -j X", &p, &e),
            Eval::NoMatch
        );
        assert_eq!(
            eval(
                "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j X",
                &p,
                &e
            ),
            YES
        );
        p.dnat = Some(NatAddr {
            ip: "10.1.1.1".parse().expect("ip"),
            port: None,
        });
        assert_eq!(
            eval(
                "-m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j X",
                &p,
                &e
            ),
            Eval::NoMatch
        );
        assert_eq!(
            eval(
                "-m recent --name A --rcheck --seconds 10 --reap -j X",
                &p,
                &e
            ),
            Eval::NoMatch
        );
        assert_eq!(eval("-m recent --name A --set -j X", &p, &e), YES);
        assert_eq!(
            eval("-m statistic --mode random --probability 0.25 -j X", &p, &e),
            Eval::Matches {
                branch: Some("random 0.25000000000".into())
            }
        );
    }

    #[test]
    fn unknown_parts_make_the_rule_unknown_unless_something_else_fails() {
        let p = pkt("10.0.0.2", "1.2.3.4", 80);
        let e = env(false, None);
        assert!(matches!(
            eval("-m limit --limit 1/s -j X", &p, &e),
            Eval::Unknown(_)
        ));
        assert_eq!(
            eval("-d 9.9.9.9 -m limit --limit 1/s -j X", &p, &e),
            Eval::NoMatch
        );
    }
}
