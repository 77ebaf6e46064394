//! Small rule shapes shared by the compiler's parts (comments, destinations, verdicts).

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::model::Protocol;
use crate::rules::chain::ChainName;
use crate::rules::rule::{Addr, Match, Rule, Target};

pub(super) const COMMENT_NODEPORTS_TAIL: &str =
    "kubernetes service nodeports; NOTE: this must be the last rule in this chain";

/// A `-m comment --comment TEXT` match.
pub(super) fn comment_match(text: impl Into<Arc<str>>) -> Match {
    Match::Comment(text.into())
}

pub(super) fn dst_ip(ip: IpAddr) -> Match {
    Match::Dst {
        negated: false,
        addr: Addr::Ip(ip),
    }
}

/// `-m comment --comment C -m P -p P -d IP --dport PORT -j TARGET`: the shape of every rule
/// that matches one service destination (KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, firewall).
pub(super) fn destination_rule(
    comment: impl Into<Arc<str>>,
    proto: Protocol,
    ip: IpAddr,
    port: u16,
    target: Target,
) -> Rule {
    Rule::new(
        vec![
            comment_match(comment),
            Match::Proto(proto),
            dst_ip(ip),
            Match::DPort(port),
        ],
        target,
    )
}

pub(super) fn jump(chain: &ChainName) -> Target {
    Target::Jump(chain.clone())
}

pub(super) fn loopback_net() -> IpNet {
    IpNet::new(IpAddr::from([127, 0, 0, 0]), 8).unwrap_or_default()
}

pub(super) fn proto_port_tcp(port: u16) -> [Match; 2] {
    [Match::Proto(Protocol::Tcp), Match::DPort(port)]
}

/// REJECT when there are no endpoints at all, DROP when only local ones are missing.
pub(super) fn filter_target(has_endpoints: bool) -> Target {
    if has_endpoints {
        Target::Drop
    } else {
        Target::Reject
    }
}

/// The comment of [`filter_target`]'s rules.
pub(super) fn filter_comment(has_endpoints: bool, spn_text: &str) -> String {
    if has_endpoints {
        format!("{spn_text} has no local endpoints")
    } else {
        format!("{spn_text} has no endpoints")
    }
}
