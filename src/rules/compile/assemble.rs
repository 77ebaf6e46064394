//! Assembling the shared chains of a rule set from fragments: the filter KUBE-* lists, the
//! dispatch of nat KUBE-SERVICES and KUBE-NODEPORTS, and the NodePort tail rule (the
//! Services' own groups are kept by the incremental compiler's lists).

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::builders::{COMMENT_NODEPORTS_TAIL, comment_match, dst_ip, jump, loopback_net};
use super::fragment::Fragment;
use crate::config::ProxyConfig;
use crate::model::IpFamily;
use crate::rules::chain::ChainName;
use crate::rules::dispatch::{self, Entry};
use crate::rules::port_dispatch::{self, PortEntry};
use crate::rules::rule::{Addr, AddrTypeDir, Match, Rule, RuleSet};

pub(super) struct Compiler<'a> {
    pub(super) cfg: &'a ProxyConfig,
    pub(super) family: IpFamily,
    pub(super) mark: Arc<str>,
    pub(super) rs: RuleSet,
    /// The KUBE-SERVICES entries of the merged fragments (borrowed from them).
    pub(super) services_entries: Vec<&'a Entry>,
    pub(super) nodeport_entries: Vec<PortEntry>,
    pub(super) kube_mark_masq: ChainName,
    pub(super) kube_services: ChainName,
    pub(super) kube_ext_services: ChainName,
    pub(super) kube_nodeports: ChainName,
    pub(super) kube_proxy_firewall: ChainName,
}

impl<'a> Compiler<'a> {
    /// The named chains (fixed ones, then the shared chains with every fragment's entries, in
    /// the given order).
    pub(super) fn build_named(&mut self, fragments: impl IntoIterator<Item = &'a Fragment>) {
        self.fixed_chains();
        for frag in fragments {
            self.merge_shared(frag);
        }
        self.finish_shared();
    }

    /// Adds one Service's entries in the shared chains (KUBE-SERVICES, KUBE-NODEPORTS,
    /// KUBE-EXTERNAL-SERVICES, KUBE-PROXY-FIREWALL), in Service order.
    pub(super) fn merge_shared(&mut self, frag: &'a Fragment) {
        self.services_entries.extend(frag.entries.iter());
        self.nodeport_entries
            .extend(frag.nodeport_entries.iter().cloned());
        let Some(filter) = frag.filter.chains() else {
            return;
        };
        let lists = [
            (&filter.services, &self.kube_services),
            (&filter.external, &self.kube_ext_services),
            (&filter.firewall, &self.kube_proxy_firewall),
            (&filter.nodeports, &self.kube_nodeports),
        ];
        for (rules, chain) in lists {
            if !rules.is_empty() {
                self.rs.filter.chain(chain).append(rules);
            }
        }
    }

    /// Builds the dispatch of nat KUBE-SERVICES from the merged entries, then its NodePort
    /// tail rule.
    pub(super) fn finish_shared(&mut self) {
        let entries = std::mem::take(&mut self.services_entries);
        dispatch::build(
            entries,
            self.cfg.dispatch,
            &self.kube_services,
            &mut self.rs.nat,
        );
        port_dispatch::build(
            std::mem::take(&mut self.nodeport_entries),
            self.cfg.dispatch,
            &self.kube_nodeports,
            &mut self.rs.nat,
        );
        // The NodePort tail rule, last in nat KUBE-SERVICES.
        let tail_comment = comment_match(COMMENT_NODEPORTS_TAIL);
        if self.cfg.nodeports_match_all() {
            let mut matches = vec![
                tail_comment,
                Match::AddrTypeLocal {
                    dir: AddrTypeDir::Dst,
                    negated: false,
                },
            ];
            match self.family {
                IpFamily::V6 => matches.push(Match::Dst {
                    negated: true,
                    addr: Addr::Net(
                        IpNet::new(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]), 128)
                            .unwrap_or_default(),
                    ),
                }),
                IpFamily::V4 if !self.cfg.localhost_nodeports_effective() => {
                    matches.push(Match::Dst {
                        negated: true,
                        addr: Addr::Net(loopback_net()),
                    })
                }
                IpFamily::V4 => {}
            }
            self.rs.nat.push(
                &self.kube_services,
                Rule::new(matches, jump(&self.kube_nodeports)),
            );
        } else {
            let nets = self.cfg.family_nodeport_addresses();
            let localhost = self.cfg.localhost_nodeports_effective();
            let mut addresses: Vec<IpAddr> = self
                .cfg
                .local_addresses
                .iter()
                .copied()
                .filter(|ip| self.family.contains(ip) && nets.iter().any(|n| n.contains(ip)))
                .filter(|ip| !ip.is_loopback() || localhost)
                .collect();
            addresses.sort();
            addresses.dedup();
            for ip in addresses {
                self.rs.nat.push(
                    &self.kube_services,
                    Rule::new(
                        vec![tail_comment.clone(), dst_ip(ip)],
                        jump(&self.kube_nodeports),
                    ),
                );
            }
        }
    }
}
