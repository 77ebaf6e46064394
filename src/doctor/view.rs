//! The cluster as doctor sees it: raw objects converted the way the proxy converts them, with
//! the objects the proxy skips kept alongside (and why), plus what conversion throws away but an
//! operator needs (Service selectors, the pods behind endpoint addresses).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node as K8sNode, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sEndpointSlice;

use crate::model::convert::{self, Skip};
use crate::model::{NodeInfo, Service, ServiceName, Snapshot};

/// Raw objects, as listed from the API or read from files.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub services: Vec<K8sService>,
    pub slices: Vec<K8sEndpointSlice>,
    pub nodes: Vec<K8sNode>,
}

/// What the API said about a Service that the proxy skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedService {
    pub name: ServiceName,
    pub reason: Skip,
    /// `spec.type` as written (`ClusterIP` when absent).
    pub service_type: String,
    /// `spec.externalTrafficPolicy == Local`.
    pub wants_local: bool,
    /// `spec.externalIPs` is not empty.
    pub has_external_ips: bool,
    /// `spec.clusterIP` when it is a real address.
    pub cluster_ip: Option<String>,
}

impl SkippedService {
    /// True when someone probably expects node-level programming for this Service: it is
    /// externally reachable by type, policy or external IPs, or labelled headless while having
    /// a cluster IP.
    pub fn expected_to_work(&self) -> bool {
        self.service_type == "NodePort"
            || self.service_type == "LoadBalancer"
            || self.wants_local
            || self.has_external_ips
            || self.cluster_ip.is_some()
    }
}

/// The converted cluster plus everything doctor needs beside it.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Converted Services and EndpointSlices (the node is not set).
    pub snapshot: Snapshot,
    /// Services the proxy skips, with the reason.
    pub skipped: Vec<SkippedService>,
    /// `spec.selector` of every converted Service (empty when it has none).
    pub selectors: BTreeMap<ServiceName, BTreeMap<String, String>>,
    /// Pod names behind endpoint addresses (from `targetRef`).
    pub pods: BTreeMap<IpAddr, String>,
    /// Every Node, converted.
    pub nodes: Vec<NodeInfo>,
    /// Slices and Nodes that could not be converted: `(what, reason)`.
    pub broken_objects: Vec<(String, String)>,
}

fn service_name(svc: &K8sService) -> ServiceName {
    ServiceName::new(
        svc.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        svc.metadata
            .name
            .clone()
            .unwrap_or_else(|| "<no name>".into()),
    )
}

impl View {
    /// Converts an inventory the way the proxy would.
    pub fn build(inventory: &Inventory) -> View {
        let mut view = View::default();
        for svc in &inventory.services {
            match convert::service(svc) {
                Ok(service) => {
                    let selector = svc
                        .spec
                        .as_ref()
                        .and_then(|s| s.selector.clone())
                        .unwrap_or_default();
                    view.selectors.insert(service.name.clone(), selector);
                    view.snapshot.upsert_service(service);
                }
                Err(reason) => view.skipped.push(skipped(svc, reason)),
            }
        }
        for slice in &inventory.slices {
            let ns = slice
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| "default".into());
            match convert::endpoint_slice(slice) {
                Ok(converted) => {
                    for ep in slice.endpoints.iter().flatten() {
                        let pod = ep
                            .target_ref
                            .as_ref()
                            .filter(|r| r.kind.as_deref() == Some("Pod"));
                        if let (Some(addr), Some(name)) = (
                            ep.addresses
                                .first()
                                .and_then(|a| convert::parse_ip_sloppy(a)),
                            pod.and_then(|r| r.name.clone()),
                        ) {
                            view.pods.insert(addr, name);
                        }
                    }
                    view.snapshot.upsert_slice(&ns, converted);
                }
                Err(Skip::Ignored(_)) => {}
                Err(Skip::Malformed(reason)) => {
                    let name = slice.metadata.name.clone().unwrap_or_default();
                    view.broken_objects
                        .push((format!("EndpointSlice {ns}/{name}"), reason));
                }
            }
        }
        for node in &inventory.nodes {
            match convert::node(node) {
                Ok(info) => view.nodes.push(info),
                Err(reason) => {
                    let name = node.metadata.name.clone().unwrap_or_default();
                    view.broken_objects
                        .push((format!("Node {name}"), reason.to_string()));
                }
            }
        }
        view.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        view
    }

    /// Converted Services with `externalTrafficPolicy: Local`.
    pub fn local_services(&self) -> impl Iterator<Item = &Service> {
        self.snapshot
            .services()
            .values()
            .map(|s| &**s)
            .filter(|s| s.external_policy_local)
    }

    /// True when a Node with this exact name exists.
    pub fn has_node(&self, name: &str) -> bool {
        self.nodes.iter().any(|n| n.name == name)
    }
}

fn skipped(svc: &K8sService, reason: Skip) -> SkippedService {
    let spec = svc.spec.as_ref();
    SkippedService {
        name: service_name(svc),
        reason,
        service_type: spec
            .and_then(|s| s.type_.clone())
            .unwrap_or_else(|| "ClusterIP".into()),
        wants_local: spec.and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local"),
        has_external_ips: spec
            .and_then(|s| s.external_ips.as_ref())
            .is_some_and(|ips| !ips.is_empty()),
        cluster_ip: spec
            .and_then(|s| s.cluster_ip.clone())
            .filter(|ip| !ip.is_empty() && ip != "None"),
    }
}
