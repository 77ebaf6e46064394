//! `compile(snapshot, config) -> Compiled`: upstream's `syncProxyRules`, as a pure function.
//!
//! The per-service logic follows `reference/kube-proxy-iptables.md` §3 rule by rule; the only
//! deliberate difference is the optional dispatch tree for nat KUBE-SERVICES
//! (`rules::dispatch`), which keeps every verdict and every per-service chain.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::chain::{ChainName, ServiceChains, endpoint_chain};
use super::dispatch::{self, Entry};
use super::local_traffic;
use super::rule::*;
use crate::config::{LocalDetector, ProxyConfig};
use crate::model::categorize::{NodeTopology, categorize};
use crate::model::endpoints::{EndpointInfo, endpoints_by_port, local_ready_ip_count};
use crate::model::snapshot::ServiceSlices;
use crate::model::{
    IpFamily, Protocol, Service, ServiceName, ServicePort, ServicePortName, Snapshot,
};

/// What the health-check node port of one Service should report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealth {
    pub service: ServiceName,
    pub port: u16,
    /// Distinct local ready endpoint IPs over all ports of the Service.
    pub local_endpoints: usize,
}

/// Destinations of one UDP service port and the endpoints (`IP`, port) serving it, for conntrack
/// cleanup. Every UDP service port is listed, with or without serving endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpServicePort {
    pub spn: ServicePortName,
    pub destinations: Vec<(IpAddr, u16)>,
    pub node_port: Option<u16>,
    pub serving: Vec<(IpAddr, u16)>,
}

/// The result of compilation for one IP family.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub rules: RuleSet,
    pub health: BTreeMap<ServiceName, ServiceHealth>,
    /// Service ports with iTP=Local whose endpoints exist but none is local (DROP).
    pub no_local_endpoints_internal: usize,
    /// Service ports with eTP=Local whose endpoints exist but none is local (DROP).
    pub no_local_endpoints_external: usize,
    /// The per-Service fragments this rule set was assembled from (see `chain_owners`).
    fragments: Vec<Arc<Fragment>>,
    /// UDP service ports with serving endpoints.
    pub udp: Vec<UdpServicePort>,
    /// Per-endpoint comments were left out (more than the large-cluster threshold).
    pub large_cluster: bool,
}

const COMMENT_NODEPORTS_TAIL: &str =
    "kubernetes service nodeports; NOTE: this must be the last rule in this chain";

/// A `-m comment --comment TEXT` match.
fn comment_match(text: impl Into<Arc<str>>) -> Match {
    Match::Comment(text.into())
}

fn dst_ip(ip: IpAddr) -> Match {
    Match::Dst {
        negated: false,
        addr: Addr::Ip(ip),
    }
}

/// `-m comment --comment C -m P -p P -d IP --dport PORT -j TARGET`: the shape of every rule
/// that matches one service destination (KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, firewall).
fn destination_rule(
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

fn jump(chain: &ChainName) -> Target {
    Target::Jump(chain.clone())
}

/// Upstream's probability strings (`%0.10f` of 1/n), cached.
#[derive(Default, Clone)]
struct Probabilities(Vec<Arc<str>>);

impl Probabilities {
    fn get(&mut self, n: usize) -> Arc<str> {
        if n >= self.0.len() {
            let start = self.0.len();
            self.0.extend(
                (start..=n.max(1001)).map(|i| Arc::from(format!("{:.10}", 1.0 / i as f64))),
            );
        }
        self.0[n].clone()
    }
}

struct Compiler<'a> {
    cfg: &'a ProxyConfig,
    family: IpFamily,
    mark: Arc<str>,
    rs: RuleSet,
    services_entries: Vec<Entry>,
    large: bool,
    out_health: BTreeMap<ServiceName, ServiceHealth>,
    no_local_internal: usize,
    no_local_external: usize,
    fragments: Vec<Arc<Fragment>>,
    udp: Vec<UdpServicePort>,
    kube_mark_masq: ChainName,
    kube_services: ChainName,
    kube_ext_services: ChainName,
    kube_nodeports: ChainName,
    kube_proxy_firewall: ChainName,
}

/// What compiling one Service needs: read-only inputs and a cache of probability strings.
/// Each worker thread has its own copy.
#[derive(Clone)]
struct ServiceCompiler<'a> {
    cfg: &'a ProxyConfig,
    /// The group a fragment holds until its own chains are compiled (shared, not allocated).
    empty_group: Arc<ChainGroup>,
    family: IpFamily,
    probabilities: Probabilities,
    large: bool,
    node_ip: Option<IpAddr>,
    kube_mark_masq: ChainName,
    kube_services: ChainName,
    kube_ext_services: ChainName,
    kube_nodeports: ChainName,
    kube_proxy_firewall: ChainName,
}

impl ServiceCompiler<'_> {
    /// Compiles one Service into a fragment.
    fn compile(
        &mut self,
        snapshot: &Snapshot,
        service: &Service,
        topology: NodeTopology<'_>,
    ) -> Fragment {
        let mut frag = self.fragment();
        self.service(snapshot, service, topology, &mut frag);
        let mut chains = std::mem::take(&mut frag.nat.0);
        chains.iter_mut().for_each(RuleText::compact);
        chains.shrink_to_fit();
        frag.owners.shrink_to_fit();
        frag.group = Arc::new(ChainGroup::new(service.name.clone(), chains));
        frag
    }

    /// An empty fragment, its entries in the shared chains addressed to those chains.
    fn fragment(&self) -> Fragment {
        Fragment {
            nat: OwnChains::default(),
            group: self.empty_group.clone(),
            entries: Vec::new(),
            nat_nodeports: RuleText::new(self.kube_nodeports.clone()),
            filter_services: RuleText::new(self.kube_services.clone()),
            filter_external: RuleText::new(self.kube_ext_services.clone()),
            filter_firewall: RuleText::new(self.kube_proxy_firewall.clone()),
            filter_nodeports: RuleText::new(self.kube_nodeports.clone()),
            health: None,
            no_local_internal: 0,
            no_local_external: 0,
            owners: Vec::new(),
            udp: Vec::new(),
            compact: false,
        }
    }

    fn service(
        &mut self,
        snapshot: &Snapshot,
        svc: &Service,
        topology: NodeTopology<'_>,
        frag: &mut Fragment,
    ) {
        let family = self.family;
        let Some(cluster_ip) = svc.cluster_ip(family) else {
            return;
        };
        let by_port = endpoints_by_port(snapshot.slices_of(&svc.name), family, &self.cfg.node_name);
        if let Some(port) = svc.health_check_node_port {
            let local =
                local_ready_ip_count(snapshot.slices_of(&svc.name), family, &self.cfg.node_name);
            frag.health = Some(ServiceHealth {
                service: svc.name.clone(),
                port,
                local_endpoints: local,
            });
        }
        let external_ips: Vec<IpAddr> = svc
            .external_ips
            .iter()
            .copied()
            .filter(|ip| family.contains(ip))
            .collect();
        let lb_ips: Vec<IpAddr> = svc
            .load_balancer_ips
            .iter()
            .copied()
            .filter(|ip| family.contains(ip))
            .collect();
        let mut ranges: Vec<IpNet> = svc
            .source_ranges
            .iter()
            .copied()
            .filter(|n| IpFamily::of_net(n) == family)
            .collect();
        if ranges.iter().any(|n| n.prefix_len() == 0) {
            ranges.clear();
        }
        let empty = Vec::new();
        for port in &svc.ports {
            let endpoints = by_port
                .get(&(port.name.clone(), port.protocol))
                .unwrap_or(&empty);
            let ctx = PortContext {
                svc,
                port,
                spn: svc.port_name(port),
                cluster_ip,
                external_ips: &external_ips,
                lb_ips: &lb_ips,
                ranges: &ranges,
            };
            self.service_port(&ctx, endpoints, topology, frag);
        }
    }

    fn service_port(
        &mut self,
        ctx: &PortContext<'_>,
        endpoints: &[EndpointInfo],
        topology: NodeTopology<'_>,
        frag: &mut Fragment,
    ) {
        let svc = ctx.svc;
        let port = ctx.port;
        let proto = port.protocol;
        let spn_text: Arc<str> = ctx.spn.to_string().into();
        let chains = ServiceChains::new(&ctx.spn);
        let owner = Arc::new(ctx.spn.clone());
        let externally_accessible =
            port.node_port.is_some() || !ctx.lb_ips.is_empty() || !ctx.external_ips.is_empty();
        let uses_cluster = !svc.internal_policy_local || externally_accessible;
        let uses_local =
            svc.internal_policy_local || (svc.external_policy_local && externally_accessible);
        let cat = categorize(endpoints, uses_cluster, uses_local, topology);

        let has_endpoints = cat.has_any;
        let uses_cluster_chain = uses_cluster && !cat.cluster.is_empty();
        let uses_local_chain = uses_local && !cat.local.is_empty();
        let internal_chain = if svc.internal_policy_local {
            &chains.svl
        } else {
            &chains.svc
        };
        let external_chain = if svc.external_policy_local {
            &chains.svl
        } else {
            &chains.svc
        };
        let has_internal = has_endpoints && (!svc.internal_policy_local || !cat.local.is_empty());
        let has_external = has_endpoints && (!svc.external_policy_local || !cat.local.is_empty());
        let uses_ext_chain = has_endpoints && externally_accessible;
        let uses_fw_chain = has_endpoints && !ctx.lb_ips.is_empty() && !ctx.ranges.is_empty();
        let lb_chain = if uses_fw_chain {
            &chains.fw
        } else {
            &chains.ext
        };

        let (internal_filter, internal_comment) = filter_verdict(has_endpoints, &spn_text);
        let (external_filter, external_comment) =
            (internal_filter.clone(), internal_comment.clone());
        if has_endpoints && svc.internal_policy_local && cat.local.is_empty() {
            frag.no_local_internal += 1;
        }
        if has_endpoints
            && svc.external_policy_local
            && externally_accessible
            && cat.local.is_empty()
        {
            frag.no_local_external += 1;
        }
        let proto_port = |p: u16| [Match::Proto(proto), Match::DPort(p)];

        // ClusterIP.
        if has_internal {
            frag.entries.push(Entry::new(
                ctx.cluster_ip,
                destination_rule(
                    format!("{spn_text} cluster IP"),
                    proto,
                    ctx.cluster_ip,
                    port.port,
                    jump(internal_chain),
                ),
            ));
        } else {
            frag.filter_services.push_rule(&destination_rule(
                internal_comment.clone(),
                proto,
                ctx.cluster_ip,
                port.port,
                internal_filter.clone(),
            ));
        }
        // externalIPs.
        for &ip in ctx.external_ips {
            if has_endpoints {
                frag.entries.push(Entry::new(
                    ip,
                    destination_rule(
                        format!("{spn_text} external IP"),
                        proto,
                        ip,
                        port.port,
                        jump(&chains.ext),
                    ),
                ));
            }
            if !has_external {
                frag.filter_external.push_rule(&destination_rule(
                    external_comment.clone(),
                    proto,
                    ip,
                    port.port,
                    external_filter.clone(),
                ));
            }
        }
        // LoadBalancer VIPs.
        for &ip in ctx.lb_ips {
            if has_endpoints {
                frag.entries.push(Entry::new(
                    ip,
                    destination_rule(
                        format!("{spn_text} loadbalancer IP"),
                        proto,
                        ip,
                        port.port,
                        jump(lb_chain),
                    ),
                ));
            }
            if uses_fw_chain {
                frag.filter_firewall.push_rule(&destination_rule(
                    format!("{spn_text} traffic not accepted by {}", chains.fw),
                    proto,
                    ip,
                    port.port,
                    Target::Drop,
                ));
            }
        }
        if !has_external {
            for &ip in ctx.lb_ips {
                frag.filter_external.push_rule(&destination_rule(
                    external_comment.clone(),
                    proto,
                    ip,
                    port.port,
                    external_filter.clone(),
                ));
            }
        }
        // NodePorts.
        if let Some(node_port) = port.node_port {
            if has_endpoints {
                if self.cfg.nfacct && self.cfg.localhost_nodeports_effective() {
                    frag.nat_nodeports.push_rule(&Rule::new(
                        vec![
                            comment_match(spn_text.clone()),
                            Match::Proto(proto),
                            Match::Dst {
                                negated: false,
                                addr: Addr::Net(loopback_net()),
                            },
                            Match::DPort(node_port),
                            Match::Nfacct("localhost_nps_accepted_pkts"),
                        ],
                        jump(&chains.ext),
                    ));
                }
                let mut matches = vec![comment_match(spn_text.clone())];
                matches.extend(proto_port(node_port));
                frag.nat_nodeports
                    .push_rule(&Rule::new(matches, jump(&chains.ext)));
            }
            if !has_external {
                let mut matches = vec![
                    comment_match(external_comment.clone()),
                    Match::AddrTypeLocal {
                        dir: AddrTypeDir::Dst,
                        negated: false,
                    },
                ];
                matches.extend(proto_port(node_port));
                frag.filter_external
                    .push_rule(&Rule::new(matches, external_filter.clone()));
            }
        }
        // Health-check node port.
        if let Some(hc) = svc.health_check_node_port {
            let mut matches = vec![comment_match(format!("{spn_text} health check node port"))];
            matches.extend(proto_port_tcp(hc));
            frag.filter_nodeports
                .push_rule(&Rule::new(matches, Target::Accept));
        }

        // Internal traffic masquerade, first rule of the internal chain.
        if has_internal {
            let mut matches = vec![
                comment_match(format!("{spn_text} cluster IP")),
                Match::Proto(proto),
                dst_ip(ctx.cluster_ip),
                Match::DPort(port.port),
            ];
            let masq = if self.cfg.masquerade_all {
                true
            } else if let Some(not_local) =
                local_traffic::not_from_local_pod(&self.cfg.local_detector)
            {
                matches.push(not_local);
                true
            } else {
                false
            };
            if masq {
                frag.nat.push(
                    internal_chain,
                    Rule::new(matches, jump(&self.kube_mark_masq)),
                );
            }
        }
        // External destinations.
        if uses_ext_chain {
            let ext = &chains.ext;
            frag.nat.chain(ext);
            if !svc.external_policy_local {
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
                            jump(&chains.svc),
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
                        jump(&chains.svc),
                    ),
                );
            }
            if has_external {
                frag.nat.push(ext, Rule::new(vec![], jump(external_chain)));
            }
            frag.owners.push((ext.clone(), owner.clone()));
        }
        // loadBalancerSourceRanges.
        if uses_fw_chain {
            let fw = &chains.fw;
            let comment = comment_match(format!("{spn_text} loadbalancer IP"));
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
                        jump(&chains.ext),
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
                            jump(&chains.ext),
                        ),
                    );
                }
            }
            frag.nat.push(
                fw,
                Rule::new(
                    vec![comment_match(format!(
                        "other traffic to {spn_text} will be dropped by KUBE-PROXY-FIREWALL"
                    ))],
                    Target::None,
                ),
            );
            frag.owners.push((fw.clone(), owner.clone()));
        }
        // Policy chains and endpoint chains. SEP names are hashed once per endpoint.
        let seps: Vec<(&EndpointInfo, ChainName)> = cat
            .all_reachable
            .iter()
            .map(|ep| (*ep, endpoint_chain(&spn_text, proto, &ep.key)))
            .collect();
        if uses_cluster_chain {
            self.endpoint_jumps(
                frag,
                &chains.svc,
                &spn_text,
                &seps,
                svc.session_affinity_timeout,
                &cat.cluster,
            );
            frag.owners.push((chains.svc.clone(), owner.clone()));
        }
        if uses_local_chain {
            self.endpoint_jumps(
                frag,
                &chains.svl,
                &spn_text,
                &seps,
                svc.session_affinity_timeout,
                &cat.local,
            );
            frag.owners.push((chains.svl.clone(), owner.clone()));
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
            let affinity_set = svc
                .session_affinity_timeout
                .map(|_| Match::RecentSet { name: sep.clone() });
            let dnat = [comment, affinity_set, Some(Match::Proto(proto))];
            rules.push(dnat.iter().flatten(), &Target::Dnat(ep.key.clone()));
            frag.owners.push((sep.clone(), owner.clone()));
            frag.nat.set(rules);
        }
        if proto == Protocol::Udp {
            let serving: Vec<(IpAddr, u16)> = endpoints
                .iter()
                .filter(|e| e.serving)
                .map(|e| (e.ip, e.port))
                .collect();
            let mut destinations = vec![(ctx.cluster_ip, port.port)];
            destinations.extend(
                ctx.external_ips
                    .iter()
                    .chain(ctx.lb_ips)
                    .map(|ip| (*ip, port.port)),
            );
            frag.udp.push(UdpServicePort {
                spn: ctx.spn.clone(),
                destinations,
                node_port: port.node_port,
                serving,
            });
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

/// Compiles the snapshot into the rule set for `cfg.family`.
pub fn compile(snapshot: &Snapshot, cfg: &ProxyConfig) -> Compiled {
    IncrementalCompiler::default().compile(snapshot, cfg)
}

impl Compiled {
    /// Which service port owns each per-service chain (for operator-facing explanations).
    pub fn chain_owners(&self) -> BTreeMap<ChainName, ServicePortName> {
        self.fragments
            .iter()
            .flat_map(|f| f.owners.iter().map(|(c, s)| (c.clone(), (**s).clone())))
            .collect()
    }
}

impl IncrementalCompiler {
    /// A compiler that uses exactly `threads` threads when there is a lot to compile.
    pub fn with_threads(threads: usize) -> Self {
        IncrementalCompiler {
            threads: Some(threads.max(1)),
            ..IncrementalCompiler::default()
        }
    }

    /// Compiles like [`compile`], reusing the fragments of unchanged Services.
    pub fn compile(&mut self, snapshot: &Snapshot, cfg: &ProxyConfig) -> Compiled {
        // `--detect-local-mode=NodeCIDR`: the detector is the Node's pod CIDR, so the cache
        // key (which holds the configuration) changes with it.
        let resolved;
        let cfg = if cfg.local_detector == LocalDetector::NodeCidr {
            let pod_cidrs = snapshot.node.as_ref().map_or(&[][..], |n| &n.pod_cidrs[..]);
            resolved = ProxyConfig {
                local_detector: cfg.local_detector.resolve(pod_cidrs, cfg.family),
                ..cfg.clone()
            };
            &resolved
        } else {
            cfg
        };
        let family = cfg.family;
        let node_ip = cfg
            .node_ips
            .iter()
            .copied()
            .find(|ip| family.contains(ip))
            .or_else(|| {
                snapshot
                    .node
                    .as_ref()
                    .and_then(|n| n.addresses.iter().copied().find(|ip| family.contains(ip)))
            });
        let zone = snapshot.node.as_ref().and_then(|n| n.zone.clone());
        let large = snapshot.endpoint_count() > cfg.large_cluster_threshold;
        let key = CacheKey {
            cfg: cfg.clone(),
            zone: zone.clone(),
            node_ip,
            large,
        };
        if self.key.as_ref() != Some(&key) {
            self.cache.clear();
            self.key = Some(key);
        }
        self.cache
            .retain(|name, _| snapshot.services.contains_key(name));
        let mut compiler = Compiler {
            cfg,
            family,
            mark: cfg.masquerade_mark().into(),
            rs: RuleSet::new(family),
            services_entries: Vec::new(),
            large,
            out_health: BTreeMap::new(),
            no_local_internal: 0,
            no_local_external: 0,
            fragments: Vec::with_capacity(snapshot.services.len()),
            udp: Vec::new(),
            kube_mark_masq: ChainName::fixed(ChainName::KUBE_MARK_MASQ),
            kube_services: ChainName::fixed(ChainName::KUBE_SERVICES),
            kube_ext_services: ChainName::fixed(ChainName::KUBE_EXTERNAL_SERVICES),
            kube_nodeports: ChainName::fixed(ChainName::KUBE_NODEPORTS),
            kube_proxy_firewall: ChainName::fixed(ChainName::KUBE_PROXY_FIREWALL),
        };
        compiler.fixed_chains();
        let topology = NodeTopology {
            name: &cfg.node_name,
            zone: zone.as_deref(),
        };
        let workers = ServiceCompiler {
            cfg,
            empty_group: Arc::new(ChainGroup::new(
                ServiceName::new(String::new(), String::new()),
                Vec::new(),
            )),
            family,
            probabilities: Probabilities::default(),
            large,
            node_ip,
            kube_mark_masq: compiler.kube_mark_masq.clone(),
            kube_services: compiler.kube_services.clone(),
            kube_ext_services: compiler.kube_ext_services.clone(),
            kube_nodeports: compiler.kube_nodeports.clone(),
            kube_proxy_firewall: compiler.kube_proxy_firewall.clone(),
        };
        // Reuse what is cached; compile the rest (in parallel when there is a lot of it).
        let services: Vec<&Arc<Service>> = snapshot.services.values().collect();
        let mut fragments: Vec<Option<Arc<Fragment>>> = services
            .iter()
            .map(|service| self.reuse(snapshot, service))
            .collect();
        let todo: Vec<usize> = (0..services.len())
            .filter(|&i| fragments[i].is_none())
            .collect();
        self.last_recompiled = todo.len();
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)));
        let fresh = compile_services(&workers, snapshot, topology, &services, &todo, threads);
        for (i, frag) in todo.into_iter().zip(fresh) {
            let service = services[i];
            let frag = Arc::new(frag);
            self.cache.insert(
                service.name.clone(),
                CachedFragment {
                    service: service.clone(),
                    slices: snapshot.slices.get(&service.name).cloned(),
                    fragment: frag.clone(),
                },
            );
            fragments[i] = Some(frag);
        }
        for fragment in fragments.into_iter().flatten() {
            compiler.merge(fragment);
        }
        compiler.finish()
    }

    /// Releases the text of every cached Service group that still has it (once the kernel has
    /// those chains): only digests are kept, about 33 MB less at 10,000 services x 10
    /// endpoints. Each such fragment is replaced by a compact copy in fresh allocations, so
    /// that the pages the compile threads filled with text and long-lived data alike become
    /// wholly free and go back to the system (releasing in place left a third of the text's
    /// memory resident). Returns (old, new) group pairs for the planner's record; callers go
    /// through [`crate::rules::AppliedState::release_text`], which does both.
    pub(crate) fn release_groups(&mut self) -> Vec<(Arc<ChainGroup>, Arc<ChainGroup>)> {
        let mut swaps = Vec::new();
        for cached in self.cache.values_mut() {
            if cached.fragment.compact {
                continue;
            }
            let compact = cached.fragment.compacted();
            if !Arc::ptr_eq(&compact.group, &cached.fragment.group) {
                swaps.push((cached.fragment.group.clone(), compact.group.clone()));
            }
            cached.fragment = Arc::new(compact);
        }
        swaps
    }

    /// Forgets every cached fragment, so that the next compilation compiles every Service
    /// afresh, with text (full syncs write every chain, and released text cannot be written).
    pub fn forget(&mut self) {
        self.cache.clear();
    }

    /// The cached fragment of `service` if neither it nor its slices changed.
    fn reuse(&mut self, snapshot: &Snapshot, service: &Arc<Service>) -> Option<Arc<Fragment>> {
        let slices = snapshot.slices.get(&service.name);
        let cached = self.cache.get_mut(&service.name)?;
        let unchanged = same(&cached.service, service)
            && match (&cached.slices, slices) {
                (Some(a), Some(b)) => same(a, b),
                (None, None) => true,
                _ => false,
            };
        if !unchanged {
            return None;
        }
        // Equal but re-created objects: keep the snapshot's, so old copies are freed.
        cached.service = service.clone();
        cached.slices = slices.cloned();
        Some(cached.fragment.clone())
    }
}

/// Below this many Services to compile, one thread does it (spawning costs more).
const PARALLEL_THRESHOLD: usize = 512;

/// Compiles `services[i]` for every `i` in `todo`, in order, on up to as many threads as
/// there are CPUs (each Service's fragment depends only on that Service and its slices).
fn compile_services(
    worker: &ServiceCompiler<'_>,
    snapshot: &Snapshot,
    topology: NodeTopology<'_>,
    services: &[&Arc<Service>],
    todo: &[usize],
    threads: usize,
) -> Vec<Fragment> {
    let compile_chunk = |chunk: &[usize]| {
        let mut worker = worker.clone();
        chunk
            .iter()
            .map(|&i| worker.compile(snapshot, services[i], topology))
            .collect::<Vec<_>>()
    };
    if threads == 1 || todo.len() < PARALLEL_THRESHOLD {
        return compile_chunk(todo);
    }
    let chunk_size = todo.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = todo
            .chunks(chunk_size)
            .map(|chunk| scope.spawn(move || compile_chunk(chunk)))
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| match handle.join() {
                Ok(fragments) => fragments,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}

impl Compiler<'_> {
    fn fixed_chains(&mut self) {
        let mark = self.mark.clone();
        for name in [
            ChainName::KUBE_SERVICES,
            ChainName::KUBE_EXTERNAL_SERVICES,
            ChainName::KUBE_FORWARD,
            ChainName::KUBE_NODEPORTS,
            ChainName::KUBE_PROXY_FIREWALL,
        ] {
            self.rs.filter.chain(&ChainName::fixed(name));
        }
        for name in [
            ChainName::KUBE_SERVICES,
            ChainName::KUBE_NODEPORTS,
            ChainName::KUBE_POSTROUTING,
            ChainName::KUBE_MARK_MASQ,
        ] {
            self.rs.nat.chain(&ChainName::fixed(name));
        }
        let postrouting = ChainName::fixed(ChainName::KUBE_POSTROUTING);
        let nat = &mut self.rs.nat;
        nat.push(
            &postrouting,
            Rule::new(
                vec![Match::Mark {
                    negated: true,
                    mark: mark.clone(),
                }],
                Target::Return,
            ),
        );
        nat.push(
            &postrouting,
            Rule::new(vec![], Target::MarkXor(mark.clone())),
        );
        nat.push(
            &postrouting,
            Rule::new(
                vec![comment_match("kubernetes service traffic requiring SNAT")],
                Target::Masquerade {
                    random_fully: self.cfg.random_fully,
                },
            ),
        );
        nat.push(
            &self.kube_mark_masq,
            Rule::new(vec![], Target::MarkOr(mark.clone())),
        );

        let forward = ChainName::fixed(ChainName::KUBE_FORWARD);
        let filter = &mut self.rs.filter;
        if self.cfg.drop_invalid {
            let mut matches = vec![Match::CtState {
                negated: false,
                states: "INVALID",
            }];
            if self.cfg.nfacct {
                matches.push(Match::Nfacct("ct_state_invalid_dropped_pkts"));
            }
            filter.push(&forward, Rule::new(matches, Target::Drop));
        }
        filter.push(
            &forward,
            Rule::new(
                vec![
                    comment_match("kubernetes forwarding rules"),
                    Match::Mark {
                        negated: false,
                        mark: mark.clone(),
                    },
                ],
                Target::Accept,
            ),
        );
        filter.push(
            &forward,
            Rule::new(
                vec![
                    comment_match("kubernetes forwarding conntrack rule"),
                    Match::CtState {
                        negated: false,
                        states: "RELATED,ESTABLISHED",
                    },
                ],
                Target::Accept,
            ),
        );
        // Upstream v1.37 ensures KUBE-FIREWALL and its INPUT/OUTPUT jumps in every family
        // (`iptablesKubeletJumpChains`); its rule exists only with IPv4 localhost NodePorts.
        let fw = ChainName::fixed(ChainName::KUBE_FIREWALL);
        filter.chain(&fw);
        if self.cfg.localhost_nodeports_effective() {
            filter.push(
                &fw,
                Rule::new(
                    vec![
                        comment_match("block incoming localnet connections"),
                        Match::Dst {
                            negated: false,
                            addr: Addr::Net(loopback_net()),
                        },
                        Match::Src {
                            negated: true,
                            addr: Addr::Net(loopback_net()),
                        },
                        Match::CtState {
                            negated: true,
                            states: "RELATED,ESTABLISHED,DNAT",
                        },
                    ],
                    Target::Drop,
                ),
            );
        }
        self.hooks();
    }

    /// The jumps from the builtin chains, in their final top-to-bottom order (upstream inserts
    /// them one by one at position 1, so its list is the reverse of this one per chain).
    fn hooks(&mut self) {
        const EXT: &str = "kubernetes externally-visible service portals";
        const PORTALS: &str = "kubernetes service portals";
        const LB_FIREWALL: &str = "kubernetes load balancer firewall";
        const HEALTH: &str = "kubernetes health check service ports";
        const FORWARDING: &str = "kubernetes forwarding rules";
        const POSTROUTING: &str = "kubernetes postrouting rules";
        // (table, builtin chain, only NEW connections, comment, target); a `None` comment is
        // kubelet's own uncommented jump to KUBE-FIREWALL.
        let f = TableName::Filter;
        let n = TableName::Nat;
        let table: [(TableName, &str, bool, Option<&str>, &str); 14] = [
            (f, "INPUT", false, None, ChainName::KUBE_FIREWALL),
            (
                f,
                "INPUT",
                true,
                Some(LB_FIREWALL),
                ChainName::KUBE_PROXY_FIREWALL,
            ),
            (f, "INPUT", false, Some(HEALTH), ChainName::KUBE_NODEPORTS),
            (
                f,
                "INPUT",
                true,
                Some(EXT),
                ChainName::KUBE_EXTERNAL_SERVICES,
            ),
            (
                f,
                "FORWARD",
                true,
                Some(LB_FIREWALL),
                ChainName::KUBE_PROXY_FIREWALL,
            ),
            (
                f,
                "FORWARD",
                false,
                Some(FORWARDING),
                ChainName::KUBE_FORWARD,
            ),
            (f, "FORWARD", true, Some(PORTALS), ChainName::KUBE_SERVICES),
            (
                f,
                "FORWARD",
                true,
                Some(EXT),
                ChainName::KUBE_EXTERNAL_SERVICES,
            ),
            (f, "OUTPUT", false, None, ChainName::KUBE_FIREWALL),
            (
                f,
                "OUTPUT",
                true,
                Some(LB_FIREWALL),
                ChainName::KUBE_PROXY_FIREWALL,
            ),
            (f, "OUTPUT", true, Some(PORTALS), ChainName::KUBE_SERVICES),
            (
                n,
                "PREROUTING",
                false,
                Some(PORTALS),
                ChainName::KUBE_SERVICES,
            ),
            (n, "OUTPUT", false, Some(PORTALS), ChainName::KUBE_SERVICES),
            (
                n,
                "POSTROUTING",
                false,
                Some(POSTROUTING),
                ChainName::KUBE_POSTROUTING,
            ),
        ];
        self.rs.hooks = table
            .into_iter()
            .map(|(table, chain, new_only, comment, to)| {
                let mut matches = Vec::new();
                if new_only {
                    matches.push(Match::CtState {
                        negated: false,
                        states: "NEW",
                    });
                }
                matches.extend(comment.map(comment_match));
                Hook {
                    table,
                    chain: ChainName::fixed(chain),
                    rule: Rule::new(matches, Target::Jump(ChainName::fixed(to))),
                }
            })
            .collect();
    }

    /// Adds one Service's fragment to the rule set being assembled.
    fn merge(&mut self, frag: Arc<Fragment>) {
        if frag.group.chain_count() > 0 {
            self.rs.nat.groups.push(frag.group.clone());
        }
        self.services_entries.extend(frag.entries.iter().cloned());
        let tables = [
            (&frag.nat_nodeports, &self.kube_nodeports, TableName::Nat),
            (
                &frag.filter_services,
                &self.kube_services,
                TableName::Filter,
            ),
            (
                &frag.filter_external,
                &self.kube_ext_services,
                TableName::Filter,
            ),
            (
                &frag.filter_firewall,
                &self.kube_proxy_firewall,
                TableName::Filter,
            ),
            (
                &frag.filter_nodeports,
                &self.kube_nodeports,
                TableName::Filter,
            ),
        ];
        for (rules, chain, table) in tables {
            if rules.is_empty() {
                continue;
            }
            let target = match table {
                TableName::Nat => &mut self.rs.nat,
                TableName::Filter => &mut self.rs.filter,
            };
            target.chain(chain).append(rules);
        }
        if let Some(health) = &frag.health {
            self.out_health
                .insert(health.service.clone(), health.clone());
        }
        self.no_local_internal += frag.no_local_internal;
        self.no_local_external += frag.no_local_external;
        self.udp.extend(frag.udp.iter().cloned());
        self.fragments.push(frag);
    }

    fn finish(mut self) -> Compiled {
        let entries = std::mem::take(&mut self.services_entries);
        dispatch::build(
            entries,
            self.cfg.dispatch,
            &self.kube_services,
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
        Compiled {
            rules: self.rs,
            health: self.out_health,
            no_local_endpoints_internal: self.no_local_internal,
            no_local_endpoints_external: self.no_local_external,
            fragments: self.fragments,
            udp: self.udp,
            large_cluster: self.large,
        }
    }
}

/// Everything one Service contributes: its own chains, and its entries in the shared chains.
/// Fragments are cached by [`IncrementalCompiler`] and reused while the Service, its slices and
/// the configuration are unchanged.
#[derive(Debug)]
struct Fragment {
    /// The Service's own nat chains while they are compiled (then moved to `group`).
    nat: OwnChains,
    /// The Service's own nat chains (SVC, SVL, EXT, FW, SEP).
    group: Arc<ChainGroup>,
    /// Destination entries for nat KUBE-SERVICES (dispatched linearly or by the tree).
    entries: Vec<Entry>,
    nat_nodeports: RuleText,
    filter_services: RuleText,
    filter_external: RuleText,
    filter_firewall: RuleText,
    filter_nodeports: RuleText,
    health: Option<ServiceHealth>,
    no_local_internal: usize,
    no_local_external: usize,
    owners: Vec<(ChainName, Arc<ServicePortName>)>,
    udp: Vec<UdpServicePort>,
    /// A copy made by [`Fragment::compacted`]: text released, owners dropped.
    compact: bool,
}

impl Fragment {
    /// A deep copy in fresh allocations with the group's text released (digests kept) and
    /// without `owners` (explanations use fresh compilations). An empty group is shared.
    fn compacted(&self) -> Fragment {
        let group = if self.group.chain_count() == 0 {
            self.group.clone()
        } else {
            Arc::new(self.group.released())
        };
        Fragment {
            nat: OwnChains::default(),
            group,
            entries: self.entries.iter().map(Entry::rendered).collect(),
            nat_nodeports: self.nat_nodeports.clone(),
            filter_services: self.filter_services.clone(),
            filter_external: self.filter_external.clone(),
            filter_firewall: self.filter_firewall.clone(),
            filter_nodeports: self.filter_nodeports.clone(),
            health: self.health.clone(),
            no_local_internal: self.no_local_internal,
            no_local_external: self.no_local_external,
            owners: Vec::new(),
            udp: self.udp.clone(),
            compact: true,
        }
    }
}

/// A Service's own chains in the order they were first declared.
#[derive(Debug, Default)]
struct OwnChains(Vec<RuleText>);

impl OwnChains {
    /// Declares a chain (empty if new) and returns its rules for appending. Policy chains are
    /// declared before the endpoint chains, so the search is short.
    fn chain(&mut self, name: &ChainName) -> &mut RuleText {
        let index = match self.0.iter().position(|c| c.chain() == name) {
            Some(index) => index,
            None => {
                self.0.push(RuleText::new(name.clone()));
                self.0.len() - 1
            }
        };
        &mut self.0[index]
    }

    fn push(&mut self, chain: &ChainName, rule: Rule) {
        self.chain(chain).push_rule(&rule);
    }

    /// Adds a complete chain that was not declared before.
    fn set(&mut self, rules: RuleText) {
        self.0.push(rules);
    }
}

/// What a cached fragment was compiled from (shared with the snapshot, so an unchanged Service
/// is recognised by pointer and costs no memory of its own).
#[derive(Debug)]
struct CachedFragment {
    service: Arc<Service>,
    slices: Option<Arc<ServiceSlices>>,
    fragment: Arc<Fragment>,
}

/// Same object, or equal objects (a re-list hands new pointers to unchanged objects).
fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// Inputs shared by every fragment; when any of them changes the cache is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CacheKey {
    cfg: ProxyConfig,
    zone: Option<String>,
    node_ip: Option<IpAddr>,
    large: bool,
}

/// A compiler that remembers each Service's fragment and recompiles only Services whose
/// object or EndpointSlices changed (compared by value, so callers need not track changes).
/// The result is identical to [`compile`]; only the work differs.
#[derive(Debug, Default)]
pub struct IncrementalCompiler {
    key: Option<CacheKey>,
    cache: HashMap<ServiceName, CachedFragment>,
    /// Services recompiled by the last call (the rest were reused).
    pub last_recompiled: usize,
    /// Threads for compiling many Services at once (`None`: one per CPU, at most 8).
    threads: Option<usize>,
}

struct PortContext<'a> {
    svc: &'a Service,
    port: &'a ServicePort,
    spn: ServicePortName,
    cluster_ip: IpAddr,
    external_ips: &'a [IpAddr],
    lb_ips: &'a [IpAddr],
    ranges: &'a [IpNet],
}

fn loopback_net() -> IpNet {
    IpNet::new(IpAddr::from([127, 0, 0, 0]), 8).unwrap_or_default()
}

fn proto_port_tcp(port: u16) -> [Match; 2] {
    [Match::Proto(Protocol::Tcp), Match::DPort(port)]
}

/// REJECT when there are no endpoints at all, DROP when only local ones are missing.
fn filter_verdict(has_endpoints: bool, spn_text: &str) -> (Target, String) {
    if has_endpoints {
        (Target::Drop, format!("{spn_text} has no local endpoints"))
    } else {
        (Target::Reject, format!("{spn_text} has no endpoints"))
    }
}
