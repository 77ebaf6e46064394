//! First-connection latency: which bench Service is first and last in kube-proxy's dispatch
//! chains (Go map order, new on every full sync), and timed `connect()` calls from a node
//! namespace, each a new connection whose SYN walks the nat OUTPUT chain.

use std::path::Path;

use crate::api;
use crate::proxy::Side;
use crate::report::Latency;
use crate::sys::{self, BenchError};

/// Warm-up connects before the measured ones (neighbour caches, page cache).
const WARM_UP: u32 = 20;

/// What a dispatch rule leads to, as kube-proxy's rule comments say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// `KUBE-SERVICES`, comment `bench/NAME:http cluster IP`.
    ClusterIp,
    /// `KUBE-SERVICES`, comment `bench/NAME:http loadbalancer IP`.
    LoadBalancerIp,
    /// `KUBE-NODEPORTS`, comment `bench/NAME:http`.
    NodePort,
}

impl Entry {
    fn chain(self) -> &'static str {
        match self {
            Entry::ClusterIp | Entry::LoadBalancerIp => "KUBE-SERVICES",
            Entry::NodePort => "KUBE-NODEPORTS",
        }
    }

    fn matches(self, tail: &str) -> bool {
        let tail = tail.trim_start_matches("http");
        match self {
            Entry::ClusterIp => tail.starts_with(" cluster IP"),
            Entry::LoadBalancerIp => tail.starts_with(" loadbalancer IP"),
            // iptables prints a comment without spaces unquoted.
            Entry::NodePort => tail.starts_with(' ') || tail.starts_with('"'),
        }
    }
}

/// The indices of `kind`'s Services in the order of kube-proxy's rules for `entry`.
pub fn upstream_order(
    side: &Side,
    kind: api::Kind,
    entry: Entry,
) -> Result<Vec<usize>, BenchError> {
    let iptables = sys::IptBackend::current().binary("iptables");
    let out = sys::netns_run_locked(
        &side.namespace,
        &side.lock_file,
        &iptables,
        &["-t", "nat", "-S", entry.chain()],
    )?;
    Ok(parse_order(&out, kind, entry))
}

fn parse_order(listing: &str, kind: api::Kind, entry: Entry) -> Vec<usize> {
    let prefix = format!("{}/{}", api::NS, kind.service_name(0));
    // `bench/svc-0` -> `bench/svc-`
    let prefix = prefix.trim_end_matches('0');
    listing
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find(prefix)? + prefix.len()..];
            let (n, tail) = rest.split_once(':')?;
            entry.matches(tail).then(|| n.parse().ok())?
        })
        .collect()
}

/// `samples` sequential connects to `target` (`ip:port`) from `namespace`, after a warm-up.
pub fn connect_latency(
    me: &Path,
    namespace: &str,
    target: &str,
    samples: u32,
) -> Result<Latency, BenchError> {
    let me = me.display().to_string();
    sys::netns_run(
        namespace,
        &me,
        &["helper-connect", target, &WARM_UP.to_string()],
    )?;
    let out = sys::netns_run(
        namespace,
        &me,
        &["helper-connect", target, &samples.to_string()],
    )?;
    let mut values: Vec<f64> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let failed = out.lines().filter(|l| l.trim() == "fail").count();
    values.sort_by(f64::total_cmp);
    Ok(Latency::from_sorted(&values, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_proxy_comments_give_the_order() {
        let services = "-A KUBE-SERVICES -d 10.96.1.7/32 -p tcp -m comment --comment \"bench/svc-7:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-A\n\
            -A KUBE-SERVICES -d 10.96.1.3/32 -p tcp -m comment --comment \"bench/svc-3:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-B\n\
            -A KUBE-SERVICES -d 10.100.0.2/32 -p tcp -m comment --comment \"bench/lb-2:http loadbalancer IP\" -m tcp --dport 80 -j KUBE-EXT-C\n\
            -A KUBE-SERVICES -d 10.96.200.2/32 -p tcp -m comment --comment \"bench/lb-2:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-C\n";
        assert_eq!(
            parse_order(services, api::Kind::ClusterIp, Entry::ClusterIp),
            vec![7, 3]
        );
        assert_eq!(
            parse_order(services, api::Kind::LoadBalancer, Entry::LoadBalancerIp),
            vec![2]
        );
        let nodeports = "-A KUBE-NODEPORTS -p tcp -m comment --comment bench/lb-12:http -m tcp --dport 20012 -j KUBE-EXT-D\n\
            -A KUBE-NODEPORTS -p tcp -m comment --comment \"bench/lb-4:http\" -m tcp --dport 20004 -j KUBE-EXT-E\n";
        assert_eq!(
            parse_order(nodeports, api::Kind::LoadBalancer, Entry::NodePort),
            vec![12, 4]
        );
    }
}
