//! One service port's rules, upstream's per-port loop cut at its own sections: ClusterIP,
//! externalIPs, LoadBalancer VIPs, NodePorts, health check, internal masquerade, the EXT
//! chain, the FW chain (loadBalancerSourceRanges), policy and endpoint chains, UDP cleanup.

use std::net::IpAddr;
use std::sync::Arc;

use super::UdpServicePort;
use super::builders::{
    comment_match, destination_rule, dst_ip, filter_comment, filter_target, jump, loopback_net,
    proto_port_tcp,
};
use super::fragment::Fragment;
use super::service::{PortContext, ServiceCompiler};
use crate::model::Protocol;
use crate::model::categorize::{Categorized, NodeTopology, categorize};
use crate::model::endpoints::EndpointInfo;
use crate::rules::chain::{ChainName, ServiceChains, endpoint_chain};
use crate::rules::dispatch::Entry;
use crate::rules::local_traffic;
use crate::rules::port_dispatch::PortEntry;
use crate::rules::rule::{Addr, AddrTypeDir, Match, Rule, RuleText, Target};

/// What every section of one service port shares: names, chains, the categorised endpoints
/// and the decisions upstream derives from them.
struct PortPlan<'c> {
    ctx: &'c PortContext<'c>,
    proto: Protocol,
    spn_text: Arc<str>,
    chains: ServiceChains,
    cat: Categorized<'c>,
    has_endpoints: bool,
    /// Traffic to the ClusterIP has somewhere to go (else it is rejected or dropped).
    has_internal: bool,
    /// Traffic to external destinations has somewhere to go.
    has_external: bool,
    uses_cluster_chain: bool,
    uses_local_chain: bool,
    uses_ext_chain: bool,
    uses_fw_chain: bool,
    /// REJECT or DROP in the filter chains.
    filter: Target,
    /// `SPN cluster IP`, the comment of the ClusterIP rules (when there are any).
    cluster_comment: Option<Arc<str>>,
}

impl PortPlan<'_> {
    /// The comment of the filter verdict (rare: made when needed).
    fn filter_comment(&self) -> String {
        filter_comment(self.has_endpoints, &self.spn_text)
    }

    /// `SPN cluster IP` (made once per port when the ClusterIP has rules).
    fn cluster_comment(&self) -> Arc<str> {
        match &self.cluster_comment {
            Some(comment) => comment.clone(),
            None => concat_arc(&[&self.spn_text, " cluster IP"]),
        }
    }

    /// SVL with internalTrafficPolicy Local, else SVC.
    fn internal_chain(&self) -> &ChainName {
        if self.ctx.svc.internal_policy_local {
            &self.chains.svl
        } else {
            &self.chains.svc
        }
    }

    /// SVL with externalTrafficPolicy Local, else SVC.
    fn external_chain(&self) -> &ChainName {
        if self.ctx.svc.external_policy_local {
            &self.chains.svl
        } else {
            &self.chains.svc
        }
    }

    /// Where LoadBalancer VIP traffic goes: through the FW chain when source ranges apply.
    fn lb_chain(&self) -> &ChainName {
        if self.uses_fw_chain {
            &self.chains.fw
        } else {
            &self.chains.ext
        }
    }

    fn proto_port(&self, port: u16) -> [Match; 2] {
        [Match::Proto(self.proto), Match::DPort(port)]
    }

    /// The `-d IP --dport PORT` rule of this port for `ip`.
    fn destination(&self, comment: impl Into<Arc<str>>, ip: IpAddr, target: Target) -> Rule {
        destination_rule(comment, self.proto, ip, self.ctx.port.port, target)
    }
}

impl ServiceCompiler<'_> {
    pub(super) fn service_port(
        &mut self,
        ctx: &PortContext<'_>,
        endpoints: &[EndpointInfo],
        topology: NodeTopology<'_>,
        frag: &mut Fragment,
    ) {
        let p = plan_port(ctx, endpoints, topology);
        if p.has_endpoints && ctx.svc.internal_policy_local && p.cat.local.is_empty() {
            frag.no_local_internal += 1;
        }
        if p.has_endpoints
            && ctx.svc.external_policy_local
            && externally(ctx)
            && p.cat.local.is_empty()
        {
            frag.no_local_external += 1;
        }
        cluster_ip(&p, frag);
        external_ips(&p, frag);
        load_balancer_ips(&p, frag);
        self.node_port(&p, frag);
        health_check(&p, frag);
        self.internal_masquerade(&p, frag);
        self.external_chain(&p, frag);
        self.firewall_chain(&p, frag);
        self.policy_and_endpoint_chains(&p, frag);
        udp(&p, endpoints, frag);
    }

    /// NodePorts: the nat KUBE-NODEPORTS jumps and the filter rejection without endpoints.
    fn node_port(&self, p: &PortPlan<'_>, frag: &mut Fragment) {
        let Some(node_port) = p.ctx.port.node_port else {
            return;
        };
        if p.has_endpoints {
            if self.cfg.nfacct && self.cfg.localhost_nodeports_effective() {
                frag.nodeport_entries.push(PortEntry::new(
                    p.proto,
                    node_port,
                    Rule::new(
                        vec![
                            comment_match(p.spn_text.clone()),
                            Match::Proto(p.proto),
                            Match::Dst {
                                negated: false,
                                addr: Addr::Net(loopback_net()),
                            },
                            Match::DPort(node_port),
                            Match::Nfacct("localhost_nps_accepted_pkts"),
                        ],
                        jump(&p.chains.ext),
                    ),
                ));
            }
            let mut matches = vec![comment_match(p.spn_text.clone())];
            matches.extend(p.proto_port(node_port));
            frag.nodeport_entries.push(PortEntry::new(
                p.proto,
                node_port,
                Rule::new(matches, jump(&p.chains.ext)),
            ));
        }
        if !p.has_external {
            let mut matches = vec![
                comment_match(p.filter_comment()),
                Match::AddrTypeLocal {
                    dir: AddrTypeDir::Dst,
                    negated: false,
                },
            ];
            matches.extend(p.proto_port(node_port));
            frag.filter
                .lists()
                .external
                .push_rule(&Rule::new(matches, p.filter.clone()));
        }
    }

    /// Internal traffic masquerade, the first rule of the internal chain.
    fn internal_masquerade(&self, p: &PortPlan<'_>, frag: &mut Fragment) {
        if !p.has_internal {
            return;
        }
        let mut matches = vec![
            comment_match(p.cluster_comment()),
            Match::Proto(p.proto),
            dst_ip(p.ctx.cluster_ip),
            Match::DPort(p.ctx.port.port),
        ];
        let masq = if self.cfg.masquerade_all {
            true
        } else if let Some(not_local) = local_traffic::not_from_local_pod(&self.cfg.local_detector)
        {
            matches.push(not_local);
            true
        } else {
            false
        };
        if masq {
            frag.nat.push(
                p.internal_chain(),
                Rule::new(matches, jump(&self.kube_mark_masq)),
            );
        }
    }

    /// The EXT chain: external destinations (NodePorts, externalIPs, LoadBalancer VIPs).
    fn external_chain(&self, p: &PortPlan<'_>, frag: &mut Fragment) {
        if !p.uses_ext_chain {
            return;
        }
        let spn_text = &p.spn_text;
        let ext = &p.chains.ext;
        frag.nat.chain(ext);
        if !p.ctx.svc.external_policy_local {
            frag.nat.push(
                ext,
                Rule::new(
                    vec![comment_match(format!(
                        "masquerade traffic for {spn_text} external destinations"
                    ))],
                    jump(&self.kube_mark_masq),
                ),
            );
        } else {
            if let Some(local) = local_traffic::from_local_pod(&self.cfg.local_detector) {
                frag.nat.push(
                    ext,
                    Rule::new(
                        vec![
                            comment_match(format!(
                                "pod traffic for {spn_text} external destinations"
                            )),
                            local,
                        ],
                        jump(&p.chains.svc),
                    ),
                );
            }
            let src_local = Match::AddrTypeLocal {
                dir: AddrTypeDir::Src,
                negated: false,
            };
            frag.nat.push(
                ext,
                Rule::new(
                    vec![
                        comment_match(format!(
                            "masquerade LOCAL traffic for {spn_text} external destinations"
                        )),
                        src_local.clone(),
                    ],
                    jump(&self.kube_mark_masq),
                ),
            );
            frag.nat.push(
                ext,
                Rule::new(
                    vec![
                        comment_match(format!(
                            "route LOCAL traffic for {spn_text} external destinations"
                        )),
                        src_local,
                    ],
                    jump(&p.chains.svc),
                ),
            );
        }
        if p.has_external {
            frag.nat
                .push(ext, Rule::new(vec![], jump(p.external_chain())));
        }
    }

    /// The FW chain: loadBalancerSourceRanges.
    fn firewall_chain(&self, p: &PortPlan<'_>, frag: &mut Fragment) {
        if !p.uses_fw_chain {
            return;
        }
        let ctx = p.ctx;
        let fw = &p.chains.fw;
        let comment = comment_match(format!("{} loadbalancer IP", p.spn_text));
        for range in ctx.ranges {
            frag.nat.push(
                fw,
                Rule::new(
                    vec![
                        comment.clone(),
                        Match::Src {
                            negated: false,
                            addr: Addr::Net(*range),
                        },
                    ],
                    jump(&p.chains.ext),
                ),
            );
        }
        let allow_from_node = self
            .node_ip
            .is_some_and(|ip| ctx.ranges.iter().any(|r| r.contains(&ip)));
        if allow_from_node {
            for &vip in ctx.lb_ips {
                frag.nat.push(
                    fw,
                    Rule::new(
                        vec![
                            comment.clone(),
                            Match::Src {
                                negated: false,
                                addr: Addr::Ip(vip),
                            },
                        ],
                        jump(&p.chains.ext),
                    ),
                );
            }
        }
        frag.nat.push(
            fw,
            Rule::new(
                vec![comment_match(format!(
                    "other traffic to {} will be dropped by KUBE-PROXY-FIREWALL",
                    p.spn_text
                ))],
                Target::None,
            ),
        );
    }

    /// Policy chains (SVC, SVL) and endpoint chains (SEP). SEP names are hashed once per
    /// endpoint.
    fn policy_and_endpoint_chains(&mut self, p: &PortPlan<'_>, frag: &mut Fragment) {
        let spn_text = &p.spn_text;
        let affinity = p.ctx.svc.session_affinity_timeout;
        let seps: Vec<(&EndpointInfo, ChainName)> = p
            .cat
            .all_reachable
            .iter()
            .map(|ep| (*ep, endpoint_chain(spn_text, p.proto, &ep.key)))
            .collect();
        if p.uses_cluster_chain {
            self.endpoint_jumps(
                frag,
                &p.chains.svc,
                spn_text,
                &seps,
                affinity,
                &p.cat.cluster,
            );
        }
        if p.uses_local_chain {
            self.endpoint_jumps(frag, &p.chains.svl, spn_text, &seps, affinity, &p.cat.local);
        }
        for (ep, sep) in seps {
            let mut rules = RuleText::new(sep.clone());
            let comment = (!self.large).then(|| Match::Comment(spn_text.clone()));
            let hairpin = Match::Src {
                negated: false,
                addr: Addr::Ip(ep.ip),
            };
            rules.push(
                comment.iter().chain([&hairpin]),
                &jump(&self.kube_mark_masq),
            );
            let affinity_set = affinity.map(|_| Match::RecentSet { name: sep.clone() });
            let dnat = [comment, affinity_set, Some(Match::Proto(p.proto))];
            rules.push(dnat.iter().flatten(), &Target::Dnat(ep.key.clone()));
            frag.nat.set(rules);
        }
    }

    /// `writeServiceToEndpointRules`: affinity rules, then the probability ladder.
    fn endpoint_jumps(
        &mut self,
        frag: &mut Fragment,
        chain: &ChainName,
        spn_text: &Arc<str>,
        seps: &[(&EndpointInfo, ChainName)],
        affinity: Option<u32>,
        endpoints: &[&EndpointInfo],
    ) {
        let comment = |ep: &EndpointInfo, large: bool| {
            (!large).then(|| Match::EndpointComment {
                spn: spn_text.clone(),
                endpoint: ep.key.clone(),
            })
        };
        // Every endpoint of a policy chain is in `all_reachable`, so it has a SEP name.
        let seps: Vec<ChainName> = endpoints
            .iter()
            .filter_map(|ep| {
                seps.iter()
                    .find(|(e, _)| std::ptr::eq(*e, *ep))
                    .map(|(_, sep)| sep.clone())
            })
            .collect();
        let rules = frag.nat.chain(chain);
        if let Some(seconds) = affinity {
            for (ep, sep) in endpoints.iter().zip(&seps) {
                let check = Match::RecentCheck {
                    name: sep.clone(),
                    seconds,
                };
                let matches = [comment(ep, self.large), Some(check)];
                rules.push(matches.iter().flatten(), &Target::Jump(sep.clone()));
            }
        }
        let n = endpoints.len();
        for (i, (ep, sep)) in endpoints.iter().zip(seps).enumerate() {
            let probability =
                (i + 1 < n).then(|| Match::Probability(self.probabilities.get(n - i)));
            let matches = [comment(ep, self.large), probability];
            rules.push(matches.iter().flatten(), &Target::Jump(sep));
        }
    }
}

/// A NodePort, a LoadBalancer VIP or an externalIP makes the port reachable from outside.
fn externally(ctx: &PortContext<'_>) -> bool {
    ctx.port.node_port.is_some() || !ctx.lb_ips.is_empty() || !ctx.external_ips.is_empty()
}

/// Categorises the endpoints and derives upstream's per-port decisions.
fn plan_port<'c>(
    ctx: &'c PortContext<'c>,
    endpoints: &'c [EndpointInfo],
    topology: NodeTopology<'_>,
) -> PortPlan<'c> {
    let svc = ctx.svc;
    let spn = &ctx.spn;
    let port: [&str; 2] = if spn.port.is_empty() {
        ["", ""]
    } else {
        [":", &spn.port]
    };
    let spn_text = concat_arc(&[
        &spn.service.namespace,
        "/",
        &spn.service.name,
        port[0],
        port[1],
    ]);
    let externally_accessible = externally(ctx);
    let uses_cluster = !svc.internal_policy_local || externally_accessible;
    let uses_local =
        svc.internal_policy_local || (svc.external_policy_local && externally_accessible);
    let cat = categorize(endpoints, uses_cluster, uses_local, topology);
    let has_endpoints = cat.has_any;
    let uses_fw_chain = has_endpoints && !ctx.lb_ips.is_empty() && !ctx.ranges.is_empty();
    let filter = filter_target(has_endpoints);
    let has_internal = has_endpoints && (!svc.internal_policy_local || !cat.local.is_empty());
    PortPlan {
        ctx,
        proto: ctx.port.protocol,
        chains: ServiceChains::new(&ctx.spn),
        has_endpoints,
        has_internal,
        has_external: has_endpoints && (!svc.external_policy_local || !cat.local.is_empty()),
        uses_cluster_chain: uses_cluster && !cat.cluster.is_empty(),
        uses_local_chain: uses_local && !cat.local.is_empty(),
        uses_ext_chain: has_endpoints && externally_accessible,
        uses_fw_chain,
        filter,
        cluster_comment: has_internal.then(|| concat_arc(&[&spn_text, " cluster IP"])),
        spn_text,
        cat,
    }
}

/// ClusterIP: the KUBE-SERVICES entry, or the filter verdict without endpoints.
fn cluster_ip(p: &PortPlan<'_>, frag: &mut Fragment) {
    let ip = p.ctx.cluster_ip;
    if p.has_internal {
        let comment = p.cluster_comment();
        frag.entries.push(Entry::new(
            ip,
            p.destination(comment, ip, jump(p.internal_chain())),
        ));
    } else {
        frag.filter.lists().services.push_rule(&p.destination(
            p.filter_comment(),
            ip,
            p.filter.clone(),
        ));
    }
}

/// externalIPs: KUBE-SERVICES entries, or filter verdicts without (local) endpoints.
fn external_ips(p: &PortPlan<'_>, frag: &mut Fragment) {
    for &ip in p.ctx.external_ips {
        if p.has_endpoints {
            let comment = format!("{} external IP", p.spn_text);
            frag.entries.push(Entry::new(
                ip,
                p.destination(comment, ip, jump(&p.chains.ext)),
            ));
        }
        if !p.has_external {
            frag.filter.lists().external.push_rule(&p.destination(
                p.filter_comment(),
                ip,
                p.filter.clone(),
            ));
        }
    }
}

/// LoadBalancer VIPs: KUBE-SERVICES entries, the firewall's drops, filter verdicts.
fn load_balancer_ips(p: &PortPlan<'_>, frag: &mut Fragment) {
    for &ip in p.ctx.lb_ips {
        if p.has_endpoints {
            let comment = format!("{} loadbalancer IP", p.spn_text);
            frag.entries.push(Entry::new(
                ip,
                p.destination(comment, ip, jump(p.lb_chain())),
            ));
        }
        if p.uses_fw_chain {
            let comment = format!("{} traffic not accepted by {}", p.spn_text, p.chains.fw);
            frag.filter
                .lists()
                .firewall
                .push_rule(&p.destination(comment, ip, Target::Drop));
        }
    }
    if !p.has_external {
        for &ip in p.ctx.lb_ips {
            frag.filter.lists().external.push_rule(&p.destination(
                p.filter_comment(),
                ip,
                p.filter.clone(),
            ));
        }
    }
}

/// Health-check node port: accepted in filter KUBE-NODEPORTS.
fn health_check(p: &PortPlan<'_>, frag: &mut Fragment) {
    if let Some(hc) = p.ctx.svc.health_check_node_port {
        let mut matches = vec![comment_match(format!(
            "{} health check node port",
            p.spn_text
        ))];
        matches.extend(proto_port_tcp(hc));
        frag.filter
            .lists()
            .nodeports
            .push_rule(&Rule::new(matches, Target::Accept));
    }
}

/// UDP service ports, with their serving endpoints, for conntrack cleanup.
fn udp(p: &PortPlan<'_>, endpoints: &[EndpointInfo], frag: &mut Fragment) {
    if p.proto != Protocol::Udp {
        return;
    }
    let ctx = p.ctx;
    let port = ctx.port.port;
    let serving: Vec<(IpAddr, u16)> = endpoints
        .iter()
        .filter(|e| e.serving)
        .map(|e| (e.ip, e.port))
        .collect();
    let mut destinations = vec![(ctx.cluster_ip, port)];
    destinations.extend(
        ctx.external_ips
            .iter()
            .chain(ctx.lb_ips)
            .map(|ip| (*ip, port)),
    );
    frag.udp.push(UdpServicePort {
        spn: ctx.spn.clone(),
        destinations,
        node_port: ctx.port.node_port,
        serving,
    });
}

/// The concatenation of `parts` in one shared string, allocated once (the usual way, a
/// `String` turned into an `Arc<str>`, allocates and copies twice).
fn concat_arc(parts: &[&str]) -> Arc<str> {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    let mut buffer = [0u8; 256];
    if len <= buffer.len() {
        let mut at = 0;
        for part in parts {
            buffer[at..at + part.len()].copy_from_slice(part.as_bytes());
            at += part.len();
        }
        // Whole UTF-8 strings joined are UTF-8.
        if let Ok(text) = std::str::from_utf8(&buffer[..len]) {
            return Arc::from(text);
        }
    }
    Arc::from(parts.concat())
}
