//! UDP conntrack cleanup, as upstream's reconciler (`pkg/proxy/conntrack/cleanup.go`) does it.
//!
//! For every UDP service port, entries whose original destination is a service `IP:port`
//! (ClusterIP, external IP, LB VIP) are deleted when their reply source `IP:port` is not one of
//! the serving endpoints (a port without serving endpoints loses every such entry: they were
//! DNATed to endpoints that are gone, before the REJECT rule could see them); entries whose
//! original destination port is the NodePort likewise, but only for ports with serving
//! endpoints (a NodePort match is on the port alone, so with none it would hit unrelated
//! flows). Matching the endpoint's port as well as its IP removes flows pinned to an endpoint
//! whose target port changed (same pod, new port). That removes "black hole" entries (created
//! while the service had no endpoints, reply source = the service IP) and entries pinned to a
//! gone backend; nothing is ever flushed wholesale.
//!
//! The decision ([`stale_entries`]) is pure; [`Conntrack`] lists and deletes with the
//! `conntrack` binary, one exact-tuple delete per stale entry.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Stdio;

use tokio::process::Command;

use crate::model::IpFamily;
use crate::rules::compile::UdpServicePort;

/// Conntrack errors.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    /// The `conntrack` binary could not be run. Not retryable until the image is fixed; the
    /// proxy keeps working, only stale UDP flows are not cleaned.
    #[error("cannot run conntrack: {0}")]
    Spawn(#[source] std::io::Error),
    /// `conntrack -L` failed. Retryable on the next endpoint change.
    #[error("conntrack -L failed: {0}")]
    List(String),
}

/// The part of a conntrack entry the reconciler looks at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Flow {
    pub orig_src: IpAddr,
    pub orig_dst: IpAddr,
    pub orig_sport: u16,
    pub orig_dport: u16,
    pub reply_src: IpAddr,
    pub reply_sport: u16,
}

/// Parses one line of `conntrack -L -p udp` (original tuple first, then the reply tuple).
pub fn parse_flow(line: &str) -> Option<Flow> {
    let mut srcs = Vec::new();
    let mut dsts = Vec::new();
    let mut sports = Vec::new();
    let mut dports = Vec::new();
    for field in line.split_whitespace() {
        if let Some(v) = field.strip_prefix("src=") {
            srcs.push(v.parse::<IpAddr>().ok()?);
        } else if let Some(v) = field.strip_prefix("dst=") {
            dsts.push(v.parse::<IpAddr>().ok()?);
        } else if let Some(v) = field.strip_prefix("sport=") {
            sports.push(v.parse::<u16>().ok()?);
        } else if let Some(v) = field.strip_prefix("dport=") {
            dports.push(v.parse::<u16>().ok()?);
        }
    }
    Some(Flow {
        orig_src: *srcs.first()?,
        orig_dst: *dsts.first()?,
        orig_sport: *sports.first()?,
        orig_dport: *dports.first()?,
        reply_src: *srcs.get(1)?,
        reply_sport: *sports.get(1)?,
    })
}

/// The flows to delete, given the UDP service ports of one family (upstream's reconciler).
pub fn stale_entries(ports: &[UdpServicePort], flows: &[Flow]) -> Vec<Flow> {
    type Serving = BTreeSet<(IpAddr, u16)>;
    let mut by_dest: BTreeMap<(IpAddr, u16), Serving> = BTreeMap::new();
    let mut by_nodeport: BTreeMap<u16, Serving> = BTreeMap::new();
    for port in ports {
        for dest in &port.destinations {
            by_dest
                .entry(*dest)
                .or_default()
                .extend(port.serving.iter().copied());
        }
        if let Some(np) = port.node_port
            && !port.serving.is_empty()
        {
            by_nodeport
                .entry(np)
                .or_default()
                .extend(port.serving.iter().copied());
        }
    }
    flows
        .iter()
        .filter(|f| {
            let backend = (f.reply_src, f.reply_sport);
            let stale_dest = by_dest
                .get(&(f.orig_dst, f.orig_dport))
                .is_some_and(|set| !set.contains(&backend));
            let stale_np = by_nodeport
                .get(&f.orig_dport)
                .is_some_and(|set| !set.contains(&backend));
            stale_dest || stale_np
        })
        .cloned()
        .collect()
}

/// The `conntrack` binary for one family.
#[derive(Debug, Clone)]
pub struct Conntrack {
    pub family: IpFamily,
    pub program: String,
}

impl Conntrack {
    pub fn new(family: IpFamily) -> Self {
        Conntrack {
            family,
            program: "conntrack".into(),
        }
    }

    fn family_arg(&self) -> &'static str {
        match self.family {
            IpFamily::V4 => "ipv4",
            IpFamily::V6 => "ipv6",
        }
    }

    /// Lists UDP flows, finds the stale ones and deletes them; returns how many were deleted.
    pub async fn reconcile(&self, ports: &[UdpServicePort]) -> Result<usize, ConntrackError> {
        if ports.is_empty() {
            return Ok(0);
        }
        let out = Command::new(&self.program)
            .args(["-L", "-p", "udp", "-f", self.family_arg()])
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(ConntrackError::Spawn)?;
        if !out.status.success() {
            return Err(ConntrackError::List(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let flows: Vec<Flow> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(parse_flow)
            .collect();
        let mut deleted = 0;
        for flow in stale_entries(ports, &flows) {
            let status = Command::new(&self.program)
                .args(["-D", "-p", "udp", "-f", self.family_arg()])
                .args([
                    "--orig-src",
                    &flow.orig_src.to_string(),
                    "--orig-dst",
                    &flow.orig_dst.to_string(),
                ])
                .args(["--orig-port-src", &flow.orig_sport.to_string()])
                .args(["--orig-port-dst", &flow.orig_dport.to_string()])
                .args(["--reply-src", &flow.reply_src.to_string()])
                .args(["--reply-port-src", &flow.reply_sport.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .map_err(ConntrackError::Spawn)?;
            // Exit 1 means the entry expired meanwhile: nothing to do.
            if status.success() {
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, ServiceName, ServicePortName};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_conntrack_lines() {
        let line = "udp      17 29 src=10.0.0.1 dst=10.96.0.10 sport=5000 dport=53 src=10.244.1.5 dst=10.0.0.1 sport=53 dport=5000 mark=0 use=1";
        let flow = parse_flow(line).unwrap();
        assert_eq!(flow.orig_dst, ip("10.96.0.10"));
        assert_eq!(flow.orig_dport, 53);
        assert_eq!(flow.reply_src, ip("10.244.1.5"));
        assert_eq!(
            parse_flow("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been shown."),
            None
        );
    }

    #[test]
    fn deletes_only_flows_not_answered_by_serving_endpoints() {
        let spn = ServicePortName {
            service: ServiceName::new("ns", "dns"),
            port: "dns".into(),
            protocol: Protocol::Udp,
        };
        let ports = vec![
            UdpServicePort {
                spn: spn.clone(),
                destinations: vec![(ip("10.96.0.10"), 53)],
                node_port: Some(30053),
                serving: vec![(ip("10.244.1.5"), 53)],
            },
            // No serving endpoints: its service IP's flows go, its NodePort's stay.
            UdpServicePort {
                spn,
                destinations: vec![(ip("10.96.0.11"), 53)],
                node_port: Some(30054),
                serving: vec![],
            },
        ];
        let flow = |dst: &str, dport, reply: &str, reply_port| Flow {
            orig_src: ip("10.0.0.1"),
            orig_dst: ip(dst),
            orig_sport: 5000,
            orig_dport: dport,
            reply_src: ip(reply),
            reply_sport: reply_port,
        };
        let flows = vec![
            flow("10.96.0.10", 53, "10.244.1.5", 53),         // 0 good
            flow("10.96.0.10", 53, "10.96.0.10", 53),         // 1 black hole
            flow("10.96.0.10", 53, "10.244.9.9", 53),         // 2 gone backend
            flow("192.168.1.1", 30053, "192.168.1.1", 30053), // 3 NodePort black hole
            flow("192.168.1.1", 30053, "10.244.1.5", 53),     // 4 NodePort good
            flow("10.96.0.11", 53, "10.244.2.2", 53),         // 5 backend of a port with none left
            flow("10.96.0.99", 53, "10.96.0.99", 53),         // 6 not a service
            flow("10.96.0.10", 53, "10.244.1.5", 5353),       // 7 same pod, old target port
            flow("192.168.1.1", 30053, "10.244.1.5", 5353),   // 8 NodePort, old target port
            flow("192.168.1.1", 30054, "10.244.2.2", 53),     // 9 NodePort without endpoints
        ];
        let stale = stale_entries(&ports, &flows);
        let expected: Vec<Flow> = [1, 2, 3, 5, 7, 8]
            .iter()
            .map(|i| flows[*i].clone())
            .collect();
        assert_eq!(stale, expected);
    }

    #[test]
    fn parses_the_reply_source_port() {
        let line = "udp      17 29 src=10.244.0.7 dst=192.168.78.12 sport=12345 dport=31319 src=10.244.1.9 dst=10.244.0.7 sport=8080 dport=12345 mark=0 use=1";
        let flow = parse_flow(line).expect("flow");
        assert_eq!((flow.reply_src, flow.reply_sport), (ip("10.244.1.9"), 8080));
        assert_eq!(flow.orig_dport, 31319);
    }
}
