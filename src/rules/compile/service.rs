//! Compiling one Service into its fragment: the per-Service inputs, then one call per port.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::ServiceHealth;
use super::fragment::{FilterRules, Fragment, OwnChains};
use crate::config::ProxyConfig;
use crate::model::categorize::NodeTopology;
use crate::model::endpoints::{endpoints_by_port, local_ready_ip_count};
use crate::model::{IpFamily, Service, ServicePort, ServicePortName, Snapshot};
use crate::rules::chain::ChainName;
use crate::rules::rule::ChainGroup;

/// Upstream's probability strings (`%0.10f` of 1/n), cached.
#[derive(Default, Clone)]
pub(super) struct Probabilities(Vec<Arc<str>>);

impl Probabilities {
    pub(super) fn get(&mut self, n: usize) -> Arc<str> {
        if n >= self.0.len() {
            let start = self.0.len();
            self.0.extend(
                (start..=n.max(1001)).map(|i| Arc::from(format!("{:.10}", 1.0 / i as f64))),
            );
        }
        self.0[n].clone()
    }
}

/// What compiling one Service needs: read-only inputs and a cache of probability strings.
/// Each worker thread has its own copy.
#[derive(Clone)]
pub(super) struct ServiceCompiler<'a> {
    pub(super) cfg: &'a ProxyConfig,
    /// The group a fragment holds until its own chains are compiled (shared, not allocated).
    pub(super) empty_group: Arc<ChainGroup>,
    pub(super) family: IpFamily,
    pub(super) probabilities: Probabilities,
    pub(super) large: bool,
    pub(super) node_ip: Option<IpAddr>,
    pub(super) kube_mark_masq: ChainName,
}

impl ServiceCompiler<'_> {
    /// Compiles one Service into a fragment.
    pub(super) fn compile(
        &mut self,
        snapshot: &Snapshot,
        service: &Service,
        topology: NodeTopology<'_>,
    ) -> Fragment {
        let mut frag = self.fragment();
        self.service(snapshot, service, topology, &mut frag);
        let chains = std::mem::take(&mut frag.nat.0);
        frag.owners.shrink_to_fit();
        frag.group = Arc::new(ChainGroup::new(service.name.clone(), chains));
        frag
    }

    /// An empty fragment, its entries in the shared chains addressed to those chains.
    pub(super) fn fragment(&self) -> Fragment {
        Fragment {
            nat: OwnChains::default(),
            group: self.empty_group.clone(),
            entries: Vec::new(),
            nodeport_entries: Vec::new(),
            filter: FilterRules::default(),
            health: None,
            no_local_internal: 0,
            no_local_external: 0,
            owners: Vec::new(),
            udp: Vec::new(),
            compact: false,
        }
    }

    pub(super) fn service(
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
            frag.health = Some(Box::new(ServiceHealth {
                service: svc.name.clone(),
                port,
                local_endpoints: local,
            }));
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
            let declared = frag.nat.0.len();
            self.service_port(&ctx, endpoints, topology, frag);
            if frag.nat.0.len() > declared {
                frag.owners.push((frag.nat.0.len(), Arc::new(ctx.spn)));
            }
        }
    }
}

pub(super) struct PortContext<'a> {
    pub(super) svc: &'a Service,
    pub(super) port: &'a ServicePort,
    pub(super) spn: ServicePortName,
    pub(super) cluster_ip: IpAddr,
    pub(super) external_ips: &'a [IpAddr],
    pub(super) lb_ips: &'a [IpAddr],
    pub(super) ranges: &'a [IpNet],
}
