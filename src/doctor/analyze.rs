//! The checks: node identity, per-service endpoints and spread, and Services that cannot work.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::advice::{Advice, spread_advice};
use super::imbalance::Spread;
use super::view::View;
use crate::agent::node_identity::MISSING_NODE_FIX;
use crate::model::convert::Skip;
use crate::model::{IpFamily, Protocol, Service, ServiceType};

/// How bad a finding is. Only [`Severity::Broken`] makes `knat doctor` exit non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Traffic is dropped or a Service cannot be programmed.
    Broken,
    /// Works, but not as well as it could (imbalance, surprising configuration).
    Warning,
    /// Worth knowing.
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Broken => "BROKEN",
            Severity::Warning => "WARNING",
            Severity::Info => "info",
        }
    }
}

/// One thing doctor found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// What it is about: a node, a Service, a port.
    pub subject: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// What doctor was told about the node it runs for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeArg {
    pub name: String,
    /// Where the name came from (`--node-name`, `NODE_NAME`, `host name`).
    pub source: String,
}

/// Analysis options.
#[derive(Debug, Clone)]
pub struct Options {
    /// The node to check; `None` with `--all-nodes` and no name given.
    pub node: Option<NodeArg>,
    /// The kernel host name, for the identity check.
    pub hostname: Option<String>,
    /// Also show every node's health-check answers.
    pub all_nodes: bool,
    /// Max/min pod load ratio at which a Local service counts as imbalanced.
    pub imbalance_threshold: f64,
}

/// The identity check of this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeIdentity {
    pub name: String,
    pub source: String,
    /// `None` when the input holds no Node objects at all (nothing to compare with).
    pub exists: Option<bool>,
    pub hostname: Option<String>,
    pub matches_hostname: Option<bool>,
    pub known_nodes: Vec<String>,
}

/// The endpoints of one Local service on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeEndpoints {
    /// The node name the endpoints carry (`(none)` for endpoints without `nodeName`).
    pub node: String,
    /// Distinct ready endpoint addresses.
    pub ready: usize,
    /// Serving but terminating, not ready: used only as a fallback, while the health check says 503.
    pub terminating: usize,
    /// Pod names (or addresses) of the ready endpoints.
    pub pods: Vec<String>,
    /// What the health-check node port answers on this node (200 or 503).
    pub health: u16,
    /// A Node with this name exists.
    pub known_node: bool,
}

/// This node's view of one Local service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThisNode {
    pub local_ready: usize,
    pub health: u16,
    pub explanation: String,
}

/// One `externalTrafficPolicy: Local` service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalService {
    pub service: String,
    pub service_type: String,
    pub health_check_node_port: Option<u16>,
    pub selector: BTreeMap<String, String>,
    pub endpoints: Vec<NodeEndpoints>,
    pub spread: Spread,
    pub imbalanced: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub this_node: Option<ThisNode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advice: Option<Advice>,
}

/// One node's health-check answers (with `--all-nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeOverview {
    pub node: String,
    /// Local services whose health check answers 200 here.
    pub healthy: Vec<String>,
    /// Local services whose health check answers 503 here.
    pub unhealthy: Vec<String>,
}

/// Everything doctor found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeIdentity>,
    pub imbalance_threshold: f64,
    pub local_services: Vec<LocalService>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<NodeOverview>>,
    pub findings: Vec<Finding>,
    pub broken: usize,
    pub warnings: usize,
}

impl Report {
    /// True when something is broken (the exit status is then non-zero).
    pub fn is_broken(&self) -> bool {
        self.broken > 0
    }
}

fn finding(
    severity: Severity,
    subject: impl Into<String>,
    message: impl Into<String>,
    fix: Option<String>,
) -> Finding {
    Finding {
        severity,
        subject: subject.into(),
        message: message.into(),
        fix,
    }
}

fn type_name(t: ServiceType) -> &'static str {
    match t {
        ServiceType::ClusterIp => "ClusterIP",
        ServiceType::NodePort => "NodePort",
        ServiceType::LoadBalancer => "LoadBalancer",
    }
}

/// A node name that looks like the intended one: same name in another case, or one is the
/// other's first DNS label (`node-1` vs `node-1.example.internal`).
fn near_miss<'a>(name: &str, known: &'a [String]) -> Option<&'a str> {
    let first = |s: &str| s.split('.').next().unwrap_or(s).to_lowercase();
    known
        .iter()
        .find(|k| k.eq_ignore_ascii_case(name) || first(k) == first(name))
        .map(String::as_str)
}

/// Runs every check.
pub fn analyze(view: &View, options: &Options) -> Report {
    let mut findings = Vec::new();
    let known: Vec<String> = view.nodes.iter().map(|n| n.name.clone()).collect();
    let node = options
        .node
        .as_ref()
        .map(|arg| identity(arg, options, &known, &mut findings));
    let this_node_name = options.node.as_ref().map(|n| n.name.as_str());

    let mut local_services = Vec::new();
    for service in view.local_services() {
        local_services.push(local_service(
            view,
            service,
            this_node_name,
            options,
            &mut findings,
        ));
    }
    if let Some(id) = &node
        && id.exists == Some(false)
        && !local_services.is_empty()
    {
        findings.push(finding(
            Severity::Broken,
            format!("node {}", id.name),
            format!(
                "all {} externalTrafficPolicy: Local services drop external traffic on this node and their health checks answer 503, \
                 because no endpoint can be recognised as local",
                local_services.len()
            ),
            Some(MISSING_NODE_FIX.to_string()),
        ));
    }
    port_collisions(view, &mut findings);
    skipped_services(view, &mut findings);
    for (what, reason) in &view.broken_objects {
        findings.push(finding(
            Severity::Warning,
            what.clone(),
            format!("skipped, malformed: {reason}"),
            None,
        ));
    }

    let nodes = options.all_nodes.then(|| {
        known
            .iter()
            .map(|name| {
                let mut overview = NodeOverview {
                    node: name.clone(),
                    healthy: Vec::new(),
                    unhealthy: Vec::new(),
                };
                for svc in &local_services {
                    let ready = svc
                        .endpoints
                        .iter()
                        .find(|e| &e.node == name)
                        .map_or(0, |e| e.ready);
                    if ready > 0 {
                        overview.healthy.push(svc.service.clone());
                    } else {
                        overview.unhealthy.push(svc.service.clone());
                    }
                }
                overview
            })
            .collect()
    });

    findings.sort_by(|a, b| {
        a.severity
            .cmp(&b.severity)
            .then_with(|| a.subject.cmp(&b.subject))
    });
    let broken = findings
        .iter()
        .filter(|f| f.severity == Severity::Broken)
        .count();
    let warnings = findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    Report {
        node,
        imbalance_threshold: options.imbalance_threshold,
        local_services,
        nodes,
        findings,
        broken,
        warnings,
    }
}

fn identity(
    arg: &NodeArg,
    options: &Options,
    known: &[String],
    findings: &mut Vec<Finding>,
) -> NodeIdentity {
    let exists = (!known.is_empty()).then(|| known.iter().any(|k| k == &arg.name));
    let hostname = options
        .hostname
        .as_ref()
        .map(|h| h.trim().to_lowercase())
        .filter(|h| !h.is_empty());
    let matches_hostname = hostname.as_ref().map(|h| h == &arg.name);
    let subject = format!("node {}", arg.name);
    match exists {
        Some(false) => {
            let hint = near_miss(&arg.name, known)
                .map(|k| format!(" Did you mean {k:?}?"))
                .unwrap_or_default();
            findings.push(finding(
                Severity::Broken,
                subject.clone(),
                format!(
                    "no Node named {:?} exists (name from {}; Nodes: {}).{hint}",
                    arg.name,
                    arg.source,
                    known.join(", ")
                ),
                Some(MISSING_NODE_FIX.to_string()),
            ));
        }
        None => findings.push(finding(
            Severity::Info,
            subject.clone(),
            "the input holds no Node objects, so the node name cannot be checked",
            None,
        )),
        Some(true) => {}
    }
    if let (Some(false), Some(host)) = (matches_hostname, &hostname) {
        let (severity, message) = if arg.source == "host name" {
            (
                Severity::Warning,
                format!(
                    "the node name was taken from the host name {host:?}; that works only while it equals the Node object's name"
                ),
            )
        } else if known.iter().any(|k| k == host) && exists == Some(false) {
            (
                Severity::Warning,
                format!(
                    "the host name {host:?} is a Node, but the node name is {:?}",
                    arg.name
                ),
            )
        } else {
            (
                Severity::Info,
                format!(
                    "the node name differs from the host name {host:?}; that is fine (and expected on many clouds) when the name comes from spec.nodeName through the downward API"
                ),
            )
        };
        findings.push(finding(severity, subject.clone(), message, None));
    }
    NodeIdentity {
        name: arg.name.clone(),
        source: arg.source.clone(),
        exists,
        hostname,
        matches_hostname,
        known_nodes: known.to_vec(),
    }
}

fn primary_family(service: &Service) -> IpFamily {
    service
        .cluster_ips
        .first()
        .map(IpFamily::of)
        .unwrap_or(IpFamily::V4)
}

fn local_service(
    view: &View,
    service: &Service,
    this_node: Option<&str>,
    options: &Options,
    findings: &mut Vec<Finding>,
) -> LocalService {
    let name = service.name.to_string();
    let endpoints = node_endpoints(view, service);
    let counts: BTreeMap<String, usize> = endpoints
        .iter()
        .filter(|e| e.node != NO_NODE)
        .map(|e| (e.node.clone(), e.ready))
        .collect();
    let spread = Spread::from_counts(&counts);
    let imbalanced = spread.nodes.len() >= 2 && spread.imbalanced(options.imbalance_threshold);
    let selector = view
        .selectors
        .get(&service.name)
        .cloned()
        .unwrap_or_default();
    endpoint_findings(service, &endpoints, &selector, findings);
    let advice = if imbalanced {
        imbalance_finding(view, &name, &spread, &selector, options, findings)
    } else {
        None
    };
    LocalService {
        service: name,
        service_type: type_name(service.service_type).to_string(),
        health_check_node_port: service.health_check_node_port,
        selector,
        this_node: this_node.map(|node| this_node_view(&endpoints, node)),
        endpoints,
        spread,
        imbalanced,
        advice,
    }
}

/// The node of endpoints without a `nodeName`.
const NO_NODE: &str = "(none)";

/// Every Node (and every node the endpoints name) with its ready and terminating endpoints of
/// the Service's primary family.
fn node_endpoints(view: &View, service: &Service) -> Vec<NodeEndpoints> {
    let family = primary_family(service);
    // node name -> (ready IPs, terminating IPs)
    let mut per_node: BTreeMap<String, (BTreeSet<std::net::IpAddr>, BTreeSet<std::net::IpAddr>)> =
        view.nodes
            .iter()
            .map(|n| (n.name.clone(), Default::default()))
            .collect();
    for slice in view
        .snapshot
        .slices_of(&service.name)
        .filter(|s| s.family == family && !s.ports.is_empty())
    {
        for ep in &slice.endpoints {
            let node = ep.node_name.clone().unwrap_or_else(|| NO_NODE.into());
            let entry = per_node.entry(node).or_default();
            if ep.ready {
                entry.0.insert(ep.ip);
            } else if ep.serving && ep.terminating {
                entry.1.insert(ep.ip);
            }
        }
    }
    for (ready, terminating) in per_node.values_mut() {
        terminating.retain(|ip| !ready.contains(ip));
    }
    per_node
        .iter()
        .map(|(node, (ready, terminating))| NodeEndpoints {
            node: node.clone(),
            ready: ready.len(),
            terminating: terminating.len(),
            pods: ready
                .iter()
                .map(|ip| view.pods.get(ip).cloned().unwrap_or_else(|| ip.to_string()))
                .collect(),
            health: if ready.is_empty() { 503 } else { 200 },
            known_node: view.has_node(node),
        })
        .collect()
}

/// What is wrong with a Local Service's endpoints wherever they are: none ready, only
/// terminating ones, endpoints no proxy treats as local, a LoadBalancer without health check.
fn endpoint_findings(
    service: &Service,
    endpoints: &[NodeEndpoints],
    selector: &BTreeMap<String, String>,
    findings: &mut Vec<Finding>,
) {
    let name = service.name.to_string();
    let ready_total: usize = endpoints.iter().map(|e| e.ready).sum();
    let terminating_total: usize = endpoints.iter().map(|e| e.terminating).sum();
    if ready_total == 0 && terminating_total == 0 {
        findings.push(finding(
            Severity::Broken,
            name.clone(),
            "externalTrafficPolicy: Local but no ready endpoint on any node: every node's health check answers 503 \
             and external traffic is dropped everywhere",
            Some(if selector.is_empty() {
                "the Service has no selector: create its EndpointSlice, or check the pods behind it".into()
            } else {
                format!("check the pods selected by {} (kubectl get pods -l {} -o wide)", fmt_selector(selector), fmt_selector(selector))
            }),
        ));
    } else if ready_total == 0 {
        findings.push(finding(
            Severity::Warning,
            name.clone(),
            format!(
                "every endpoint is terminating ({terminating_total}): nodes keep serving them as a fallback, but every health check answers 503"
            ),
            None,
        ));
    }
    for e in endpoints
        .iter()
        .filter(|e| !e.known_node && (e.ready + e.terminating) > 0)
    {
        let message = if e.node == NO_NODE {
            format!(
                "{} endpoints have no nodeName, so no node treats them as local: external traffic never reaches them",
                e.ready + e.terminating
            )
        } else {
            format!(
                "{} endpoints name node {:?}, but no Node has that name: no proxy treats them as local",
                e.ready + e.terminating,
                e.node
            )
        };
        findings.push(finding(Severity::Warning, name.clone(), message, None));
    }
    if service.service_type == ServiceType::LoadBalancer && service.health_check_node_port.is_none()
    {
        findings.push(finding(
            Severity::Warning,
            name,
            "a Local LoadBalancer without healthCheckNodePort: the load balancer cannot tell which nodes have endpoints",
            None,
        ));
    }
}

/// The finding for pods spread unevenly over nodes, and the scheduling advice that evens them.
fn imbalance_finding(
    view: &View,
    name: &str,
    spread: &Spread,
    selector: &BTreeMap<String, String>,
    options: &Options,
    findings: &mut Vec<Finding>,
) -> Option<Advice> {
    let ratio = spread.ratio.unwrap_or(1.0);
    let (max, min) = (
        spread.nodes.iter().map(|n| n.pods).max().unwrap_or(0),
        spread.nodes.iter().map(|n| n.pods).min().unwrap_or(0),
    );
    let advice = spread_advice(
        selector,
        spread.total_pods,
        view.nodes.len().max(spread.nodes.len()),
    );
    findings.push(finding(
        Severity::Warning,
        name.to_string(),
        format!(
            "imbalanced: each pod on a node with {min} pod(s) gets {ratio:.1}x the traffic of each pod on a node with {max} \
             (load balancer splitting evenly over {} nodes; threshold {:.1})",
            spread.nodes.len(),
            options.imbalance_threshold
        ),
        Some(match &advice {
            Some(a) => format!("spread the pods across nodes (snippet under the service above) or use a weighted load balancer; {}", short_rule(a)),
            None => "spread the endpoints across nodes, or use a load balancer that reads X-Load-Balancing-Endpoint-Weight".into(),
        }),
    ));
    advice
}

/// What the health check of `node` answers for the Service, and what that means for traffic.
fn this_node_view(endpoints: &[NodeEndpoints], node: &str) -> ThisNode {
    let here = endpoints.iter().find(|e| e.node == node);
    let (ready, terminating) = here.map_or((0, 0), |e| (e.ready, e.terminating));
    let explanation = if ready > 0 {
        format!(
            "{ready} local ready endpoint(s): the health check answers 200 with X-Load-Balancing-Endpoint-Weight: {ready}; external traffic stays on this node"
        )
    } else if terminating > 0 {
        format!(
            "no ready local endpoint: the health check answers 503 and the load balancer should skip this node; \
             connections that still arrive go to the {terminating} terminating local endpoint(s)"
        )
    } else {
        "this node has none: its health check answers 503, the load balancer should skip it; external traffic that still arrives is dropped".to_string()
    };
    ThisNode {
        local_ready: ready,
        health: if ready > 0 { 200 } else { 503 },
        explanation,
    }
}

fn short_rule(advice: &Advice) -> &'static str {
    match advice.rule {
        super::advice::Rule::PreferredAntiAffinity => {
            "suggested: preferred podAntiAffinity on kubernetes.io/hostname"
        }
        super::advice::Rule::TopologySpread => {
            "suggested: topologySpreadConstraints on kubernetes.io/hostname"
        }
    }
}

/// `k=v,k2=v2`.
pub fn fmt_selector(selector: &BTreeMap<String, String>) -> String {
    selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn port_collisions(view: &View, findings: &mut Vec<Finding>) {
    // port -> users: (description, protocol of a node port; None for a health check)
    let mut users: BTreeMap<u16, Vec<(String, Option<Protocol>)>> = BTreeMap::new();
    for svc in view.snapshot.services().values() {
        if let Some(port) = svc.health_check_node_port {
            users
                .entry(port)
                .or_default()
                .push((format!("{} healthCheckNodePort", svc.name), None));
        }
        let mut seen = BTreeSet::new();
        for p in &svc.ports {
            if let Some(np) = p.node_port
                && seen.insert((np, p.protocol))
            {
                users.entry(np).or_default().push((
                    format!("{} nodePort {}/{}", svc.name, np, p.protocol),
                    Some(p.protocol),
                ));
            }
        }
    }
    for (port, list) in users {
        // A health check (TCP) collides with anything; node ports only within one protocol.
        let hc = list.iter().any(|(_, proto)| proto.is_none());
        let mut protocols = BTreeSet::new();
        let same_protocol = list
            .iter()
            .filter_map(|(_, p)| *p)
            .any(|p| !protocols.insert(p));
        if list.len() < 2 || !(hc || same_protocol) {
            continue;
        }
        findings.push(finding(
            Severity::Broken,
            format!("port {port}"),
            format!(
                "node port {port} is used by {}: only one can have it{}",
                list.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>().join(" and "),
                if hc { "; the health-check server cannot bind, so the load balancer sees failed checks" } else { "" }
            ),
            Some("give each Service its own port (the API server allocates distinct ports when they are left empty)".into()),
        ));
    }
}

fn skipped_services(view: &View, findings: &mut Vec<Finding>) {
    for s in &view.skipped {
        let subject = s.name.to_string();
        match &s.reason {
            Skip::Malformed(reason) => findings.push(finding(
                Severity::Broken,
                subject,
                format!("knat cannot program this Service: {reason}"),
                Some("fix the Service object".into()),
            )),
            Skip::Ignored(reason) if s.expected_to_work() => {
                let what = if s.wants_local {
                    format!("type {} with externalTrafficPolicy: Local", s.service_type)
                } else if let Some(ip) = &s.cluster_ip {
                    format!("type {} with cluster IP {ip}", s.service_type)
                } else {
                    format!("type {}", s.service_type)
                };
                let fix = if reason.contains("service proxy") {
                    "make sure that proxy runs on every node, or remove the label service.kubernetes.io/service-proxy-name"
                } else {
                    "remove the label service.kubernetes.io/headless if the Service should get node rules"
                };
                findings.push(finding(
                    Severity::Warning,
                    subject,
                    format!("{what}, but knat ignores it ({reason}), as kube-proxy would: no rules, no health check"),
                    Some(fix.into()),
                ));
            }
            Skip::Ignored(reason) => findings.push(finding(
                Severity::Info,
                subject,
                format!("ignored ({reason}); clients reach it through DNS or not at all"),
                None,
            )),
        }
    }
}
