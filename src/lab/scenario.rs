//! The lab's scenario: which nodes, pods, clients and Services exist, the address plan that
//! follows from it, and the Kubernetes manifests (Nodes, Services, EndpointSlices) it implies.
//!
//! Everything here is pure: no namespaces, no processes. The address plan is deterministic and
//! derived from positions in the scenario, so a test can name any address without asking the
//! kernel:
//!
//! | what | IPv4 | IPv6 |
//! |---|---|---|
//! | node segment (bridge in the fabric namespace) | `192.168.77.0/24`, gateway `.1` | `fd00:77::/64`, gateway `::1` |
//! | node `i` (1-based) | `192.168.77.(10+i)` | `fd00:77::1i` (`0x10 + i`) |
//! | pod CIDR of node `i` | `10.244.i.0/24` | `fd00:10:244:i::/64` |
//! | node `i`'s gateway address towards its pods | `10.244.i.1` | `fd00:10:244:i::1` |
//! | `k`-th pod (1-based) on node `i` | `10.244.i.(10+k)` | `fd00:10:244:i::(0x10+k)` |
//! | client `j` (1-based) | `203.0.113.(9+j)` | `fd00:203::(0xf+j)` |
//! | ClusterIP of Service `s` (0-based) | `10.96.0.(10+s)` | `fd00:10:96::(0x10+s)` |
//!
//! Load-balancer VIPs and externalIPs are chosen by the scenario (use `198.51.100.0/24` and
//! `fd00:198:51:100::/64`); each is delivered to one node by a route on every client, as a cloud
//! load balancer would.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeSpec,
    NodeStatus, Service, ServicePort, ServiceSpec as K8sServiceSpec, ServiceStatus,
    SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The port every pod's echo server listens on (TCP and UDP); every Service targets it.
pub const TARGET_PORT: u16 = 8080;
/// The IPv4 cluster CIDR (`--cluster-cidr`), containing every node's IPv4 pod CIDR.
pub const CLUSTER_CIDR_V4: &str = "10.244.0.0/16";
/// The IPv6 cluster CIDR, containing every node's IPv6 pod CIDR.
pub const CLUSTER_CIDR_V6: &str = "fd00:10:244::/48";
/// Session-affinity timeout written into ClientIP Services (the API server's default).
pub const AFFINITY_TIMEOUT_SECONDS: i32 = 10800;
/// Names that the lab uses for its own namespaces and may not be used for a host.
const RESERVED_NAMES: [&str; 1] = ["fabric"];
/// Upper bound for nodes, pods per node, clients and Services (keeps the address plan valid).
const MAX_PER_KIND: usize = 200;

/// Why a scenario cannot be built. Never retryable: the scenario itself must change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// A host name is not a short DNS label, or is reserved.
    #[error(
        "bad name {0:?}: use 1-20 characters of a-z, 0-9 and '-', not starting with '-' (and not \"fabric\")"
    )]
    BadName(String),
    /// Two hosts (nodes, pods, clients) or two Services share a name.
    #[error("the name {0:?} is used twice")]
    DuplicateName(String),
    /// A reference (pod to node, endpoint to pod, route to node) names nothing.
    #[error("{what} refers to unknown {kind} {name:?}")]
    Unknown {
        what: String,
        kind: &'static str,
        name: String,
    },
    /// Too many nodes, pods on one node, clients or Services for the address plan.
    #[error("too many {0} (at most {MAX_PER_KIND})")]
    TooMany(&'static str),
    /// An IPv6 address is used but the scenario is IPv4-only.
    #[error("{0} is IPv6 but the scenario has IPv6 disabled")]
    Ipv6Disabled(IpAddr),
    /// Serialising a manifest failed (a bug, not an input problem).
    #[error("cannot serialise the manifest for {name}: {detail}")]
    Serialize { name: String, detail: String },
}

/// An IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The spelling `knat render --ip-family` takes (`ipv4`, `ipv6`).
    pub fn cli_name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    /// The Kubernetes spelling (`IPv4`, `IPv6`), as in `ipFamilies` and `addressType`.
    pub fn k8s_name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The cluster CIDR of this family.
    pub fn cluster_cidr(self) -> &'static str {
        match self {
            Family::V4 => CLUSTER_CIDR_V4,
            Family::V6 => CLUSTER_CIDR_V6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.k8s_name())
    }
}

/// A transport protocol the lab's echo servers speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The Kubernetes spelling (`TCP`, `UDP`).
    pub fn k8s_name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// The Service type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    fn k8s_name(self) -> &'static str {
        match self {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// The conditions an endpoint is published with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// ready, serving, not terminating.
    Ready,
    /// not ready, serving, terminating (a pod draining connections).
    ServingTerminating,
    /// not ready, not serving, not terminating.
    NotReady,
}

/// A pod: a namespace behind a node, running an echo server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    pub name: String,
    pub node: String,
}

/// One endpoint of a Service: a pod and the conditions it is published with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub pod: String,
    pub state: EndpointState,
}

/// A single-port Service targeting [`TARGET_PORT`] on its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub service_type: ServiceType,
    pub proto: Proto,
    /// The port name (the part after `:` in `namespace/name:port`).
    pub port_name: String,
    pub port: u16,
    pub node_port: Option<u16>,
    pub health_check_node_port: Option<u16>,
    /// `externalTrafficPolicy: Local`.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_local: bool,
    /// `status.loadBalancer.ingress[*].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    pub external_ips: Vec<IpAddr>,
    pub source_ranges: Vec<IpNet>,
    /// `sessionAffinity: ClientIP`.
    pub session_affinity: bool,
    pub endpoints: Vec<EndpointSpec>,
}

impl ServiceSpec {
    fn new(name: &str, service_type: ServiceType, port: u16, node_port: Option<u16>) -> Self {
        ServiceSpec {
            name: name.to_string(),
            service_type,
            proto: Proto::Tcp,
            port_name: "http".to_string(),
            port,
            node_port,
            health_check_node_port: None,
            external_local: false,
            internal_local: false,
            load_balancer_ips: Vec::new(),
            external_ips: Vec::new(),
            source_ranges: Vec::new(),
            session_affinity: false,
            endpoints: Vec::new(),
        }
    }

    /// A ClusterIP Service.
    pub fn cluster_ip(name: &str, port: u16) -> Self {
        Self::new(name, ServiceType::ClusterIp, port, None)
    }

    /// A NodePort Service.
    pub fn node_port(name: &str, port: u16, node_port: u16) -> Self {
        Self::new(name, ServiceType::NodePort, port, Some(node_port))
    }

    /// A LoadBalancer Service (with its node port); add VIPs with [`ServiceSpec::vip`].
    pub fn load_balancer(name: &str, port: u16, node_port: u16) -> Self {
        Self::new(name, ServiceType::LoadBalancer, port, Some(node_port))
    }

    /// `externalTrafficPolicy: Local`.
    pub fn local(mut self) -> Self {
        self.external_local = true;
        self
    }

    /// `internalTrafficPolicy: Local`.
    pub fn internal_local(mut self) -> Self {
        self.internal_local = true;
        self
    }

    /// Makes the port UDP (port name `udp`).
    pub fn udp(mut self) -> Self {
        self.proto = Proto::Udp;
        self.port_name = "udp".to_string();
        self
    }

    /// Sets the health-check node port (LoadBalancer with `externalTrafficPolicy: Local`).
    pub fn health_check(mut self, port: u16) -> Self {
        self.health_check_node_port = Some(port);
        self
    }

    /// Adds a load-balancer ingress IP.
    pub fn vip(mut self, ip: IpAddr) -> Self {
        self.load_balancer_ips.push(ip);
        self
    }

    /// Adds an externalIP.
    pub fn external_ip(mut self, ip: IpAddr) -> Self {
        self.external_ips.push(ip);
        self
    }

    /// Adds a `loadBalancerSourceRanges` entry.
    pub fn source_range(mut self, net: IpNet) -> Self {
        self.source_ranges.push(net);
        self
    }

    /// `sessionAffinity: ClientIP`.
    pub fn affinity(mut self) -> Self {
        self.session_affinity = true;
        self
    }

    /// Adds a ready endpoint.
    pub fn endpoint(self, pod: &str) -> Self {
        self.endpoint_in(pod, EndpointState::Ready)
    }

    /// Adds an endpoint in the given state.
    pub fn endpoint_in(mut self, pod: &str, state: EndpointState) -> Self {
        self.endpoints.push(EndpointSpec {
            pod: pod.to_string(),
            state,
        });
        self
    }

    /// `namespace/name:port` as kube-proxy spells it in comments.
    pub fn port_display(&self, namespace: &str) -> String {
        format!("{namespace}/{}:{}", self.name, self.port_name)
    }
}

/// A route installed on every client: traffic for `destination` goes to `node`, as a cloud
/// load balancer delivers a VIP (or a router an externalIP) to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalRoute {
    pub destination: IpAddr,
    pub node: String,
}

/// The whole lab cluster, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// The Kubernetes namespace of every Service and EndpointSlice.
    pub namespace: String,
    pub nodes: Vec<String>,
    pub pods: Vec<PodSpec>,
    pub clients: Vec<String>,
    pub services: Vec<ServiceSpec>,
    pub routes: Vec<ExternalRoute>,
    /// Give every host IPv6 addresses too and make every Service dual-stack.
    pub ipv6: bool,
}

/// What role a host name has in a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Node,
    Pod,
}

fn v6(segments: [u16; 8]) -> IpAddr {
    let [a, b, c, d, e, f, g, h] = segments;
    IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h))
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

/// Small positions fit the plan's octets; `validate` guarantees `pos <= MAX_PER_KIND`.
fn octet(base: usize, pos: usize) -> u8 {
    u8::try_from(base + pos).unwrap_or(u8::MAX)
}

fn segment(base: usize, pos: usize) -> u16 {
    u16::try_from(base + pos).unwrap_or(u16::MAX)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 20
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !RESERVED_NAMES.contains(&name)
}

impl Scenario {
    /// An empty scenario in Kubernetes namespace `namespace`, IPv4 only.
    pub fn new(namespace: &str) -> Self {
        Scenario {
            namespace: namespace.to_string(),
            nodes: Vec::new(),
            pods: Vec::new(),
            clients: Vec::new(),
            services: Vec::new(),
            routes: Vec::new(),
            ipv6: false,
        }
    }

    /// Enables IPv6 (dual-stack hosts and Services).
    pub fn with_ipv6(mut self) -> Self {
        self.ipv6 = true;
        self
    }

    /// Adds a node.
    pub fn node(mut self, name: &str) -> Self {
        self.nodes.push(name.to_string());
        self
    }

    /// Adds a pod on `node`.
    pub fn pod(mut self, name: &str, node: &str) -> Self {
        self.pods.push(PodSpec {
            name: name.to_string(),
            node: node.to_string(),
        });
        self
    }

    /// Adds an external client.
    pub fn client(mut self, name: &str) -> Self {
        self.clients.push(name.to_string());
        self
    }

    /// Adds a Service.
    pub fn service(mut self, service: ServiceSpec) -> Self {
        self.services.push(service);
        self
    }

    /// Delivers `destination` (a VIP or externalIP) from every client to `node`.
    pub fn route(mut self, destination: IpAddr, node: &str) -> Self {
        self.routes.push(ExternalRoute {
            destination,
            node: node.to_string(),
        });
        self
    }

    /// The families the scenario uses: IPv4, and IPv6 when enabled.
    pub fn families(&self) -> Vec<Family> {
        if self.ipv6 {
            vec![Family::V4, Family::V6]
        } else {
            vec![Family::V4]
        }
    }

    /// Checks names, references and limits.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.nodes.len() > MAX_PER_KIND {
            return Err(ScenarioError::TooMany("nodes"));
        }
        if self.clients.len() > MAX_PER_KIND {
            return Err(ScenarioError::TooMany("clients"));
        }
        if self.services.len() > MAX_PER_KIND {
            return Err(ScenarioError::TooMany("services"));
        }
        let mut hosts = BTreeSet::new();
        let all = self
            .nodes
            .iter()
            .chain(self.clients.iter())
            .chain(self.pods.iter().map(|p| &p.name));
        for name in all {
            if !valid_name(name) {
                return Err(ScenarioError::BadName(name.clone()));
            }
            if !hosts.insert(name.as_str()) {
                return Err(ScenarioError::DuplicateName(name.clone()));
            }
        }
        let mut per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for pod in &self.pods {
            if !self.nodes.contains(&pod.node) {
                return Err(ScenarioError::Unknown {
                    what: format!("pod {}", pod.name),
                    kind: "node",
                    name: pod.node.clone(),
                });
            }
            let count = per_node.entry(pod.node.as_str()).or_default();
            *count += 1;
            if *count > MAX_PER_KIND {
                return Err(ScenarioError::TooMany("pods on one node"));
            }
        }
        let mut services = BTreeSet::new();
        for service in &self.services {
            if !valid_name(&service.name) {
                return Err(ScenarioError::BadName(service.name.clone()));
            }
            if !services.insert(service.name.as_str()) {
                return Err(ScenarioError::DuplicateName(service.name.clone()));
            }
            for endpoint in &service.endpoints {
                if self.pod_spec(&endpoint.pod).is_none() {
                    return Err(ScenarioError::Unknown {
                        what: format!("service {}", service.name),
                        kind: "pod",
                        name: endpoint.pod.clone(),
                    });
                }
            }
            let ips = service
                .load_balancer_ips
                .iter()
                .chain(service.external_ips.iter())
                .copied()
                .chain(service.source_ranges.iter().map(|n| n.addr()));
            for ip in ips {
                if !self.ipv6 && ip.is_ipv6() {
                    return Err(ScenarioError::Ipv6Disabled(ip));
                }
            }
        }
        for route in &self.routes {
            if !self.nodes.contains(&route.node) {
                return Err(ScenarioError::Unknown {
                    what: format!("route to {}", route.destination),
                    kind: "node",
                    name: route.node.clone(),
                });
            }
            if !self.ipv6 && route.destination.is_ipv6() {
                return Err(ScenarioError::Ipv6Disabled(route.destination));
            }
        }
        Ok(())
    }

    /// The role of a host name, if it names a node, pod or client.
    pub fn role(&self, host: &str) -> Option<Role> {
        if self.nodes.iter().any(|n| n == host) {
            Some(Role::Node)
        } else if self.pods.iter().any(|p| p.name == host) {
            Some(Role::Pod)
        } else if self.clients.iter().any(|c| c == host) {
            Some(Role::Client)
        } else {
            None
        }
    }

    /// A pod by name.
    pub fn pod_spec(&self, pod: &str) -> Option<&PodSpec> {
        self.pods.iter().find(|p| p.name == pod)
    }

    /// A Service by name.
    pub fn service_spec(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The pods on `node`, in scenario order.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a PodSpec> + 'a {
        self.pods.iter().filter(move |p| p.node == node)
    }

    fn node_pos(&self, node: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n == node).map(|i| i + 1)
    }

    /// The fabric's (the segment gateway's) address.
    pub fn fabric_gateway(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => v4(192, 168, 77, 1),
            Family::V6 => v6([0xfd00, 0x77, 0, 0, 0, 0, 0, 1]),
        }
    }

    /// The node segment with its prefix.
    pub fn segment(&self, family: Family) -> IpNet {
        match family {
            Family::V4 => IpNet::new(v4(192, 168, 77, 0), 24),
            Family::V6 => IpNet::new(v6([0xfd00, 0x77, 0, 0, 0, 0, 0, 0]), 64),
        }
        .unwrap_or_default()
    }

    /// The network every client address lives in (routed on-link by the nodes).
    pub fn client_network(&self, family: Family) -> IpNet {
        match family {
            Family::V4 => IpNet::new(v4(203, 0, 113, 0), 24),
            Family::V6 => IpNet::new(v6([0xfd00, 0x203, 0, 0, 0, 0, 0, 0]), 64),
        }
        .unwrap_or_default()
    }

    /// A node's address on the segment (its InternalIP).
    pub fn node_ip(&self, node: &str, family: Family) -> Option<IpAddr> {
        let i = self.node_pos(node)?;
        Some(match family {
            Family::V4 => v4(192, 168, 77, octet(10, i)),
            Family::V6 => v6([0xfd00, 0x77, 0, 0, 0, 0, 0, segment(0x10, i)]),
        })
    }

    /// A node's pod CIDR.
    pub fn pod_cidr(&self, node: &str, family: Family) -> Option<IpNet> {
        let i = self.node_pos(node)?;
        match family {
            Family::V4 => IpNet::new(v4(10, 244, octet(0, i), 0), 24).ok(),
            Family::V6 => IpNet::new(v6([0xfd00, 0x10, 0x244, segment(0, i), 0, 0, 0, 0]), 64).ok(),
        }
    }

    /// The node's address on its pod-facing veths (its pods' default gateway).
    pub fn node_gateway(&self, node: &str, family: Family) -> Option<IpAddr> {
        let i = self.node_pos(node)?;
        Some(match family {
            Family::V4 => v4(10, 244, octet(0, i), 1),
            Family::V6 => v6([0xfd00, 0x10, 0x244, segment(0, i), 0, 0, 0, 1]),
        })
    }

    /// Every address a node owns (segment address and pod gateway), for masquerade checks.
    pub fn node_addresses(&self, node: &str) -> Vec<IpAddr> {
        self.families()
            .into_iter()
            .flat_map(|f| [self.node_ip(node, f), self.node_gateway(node, f)])
            .flatten()
            .collect()
    }

    /// The node owning `ip`, if any node does.
    pub fn node_owning(&self, ip: IpAddr) -> Option<&str> {
        self.nodes
            .iter()
            .find(|n| self.node_addresses(n).contains(&ip))
            .map(String::as_str)
    }

    /// A pod's address.
    pub fn pod_ip(&self, pod: &str, family: Family) -> Option<IpAddr> {
        let spec = self.pod_spec(pod)?;
        let i = self.node_pos(&spec.node)?;
        let k = self.pods_on(&spec.node).position(|p| p.name == pod)? + 1;
        Some(match family {
            Family::V4 => v4(10, 244, octet(0, i), octet(10, k)),
            Family::V6 => v6([
                0xfd00,
                0x10,
                0x244,
                segment(0, i),
                0,
                0,
                0,
                segment(0x10, k),
            ]),
        })
    }

    /// A client's address.
    pub fn client_ip(&self, client: &str, family: Family) -> Option<IpAddr> {
        let j = self.clients.iter().position(|c| c == client)? + 1;
        Some(match family {
            Family::V4 => v4(203, 0, 113, octet(9, j)),
            Family::V6 => v6([0xfd00, 0x203, 0, 0, 0, 0, 0, segment(0xf, j)]),
        })
    }

    /// A host's own address (client, node segment address, or pod).
    pub fn host_ip(&self, host: &str, family: Family) -> Option<IpAddr> {
        match self.role(host)? {
            Role::Client => self.client_ip(host, family),
            Role::Node => self.node_ip(host, family),
            Role::Pod => self.pod_ip(host, family),
        }
    }

    /// The ClusterIP of a Service.
    pub fn cluster_ip(&self, service: &str, family: Family) -> Option<IpAddr> {
        let s = self.services.iter().position(|s| s.name == service)?;
        Some(match family {
            Family::V4 => v4(10, 96, 0, octet(10, s)),
            Family::V6 => v6([0xfd00, 0x10, 0x96, 0, 0, 0, 0, segment(0x10, s)]),
        })
    }

    /// `ClusterIP:port` of a Service.
    pub fn cluster_addr(&self, service: &str, family: Family) -> Option<SocketAddr> {
        let port = self.service_spec(service)?.port;
        Some(SocketAddr::new(self.cluster_ip(service, family)?, port))
    }

    /// `nodeIP:nodePort` of a Service on a node.
    pub fn node_port_addr(&self, service: &str, node: &str, family: Family) -> Option<SocketAddr> {
        let port = self.service_spec(service)?.node_port?;
        Some(SocketAddr::new(self.node_ip(node, family)?, port))
    }

    /// The node an external route delivers `ip` to.
    pub fn routed_node(&self, ip: IpAddr) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| r.destination == ip)
            .map(|r| r.node.as_str())
    }

    /// Every Node, Service and EndpointSlice as one multi-document YAML string, the input of
    /// `knat render`.
    pub fn manifests(&self) -> Result<String, ScenarioError> {
        self.validate()?;
        let mut docs = Vec::new();
        for node in &self.nodes {
            docs.push(to_yaml(node, &self.node_manifest(node))?);
        }
        for service in &self.services {
            docs.push(to_yaml(&service.name, &self.service_manifest(service))?);
            for family in self.families() {
                let slice = self.slice_manifest(service, family);
                docs.push(to_yaml(&service.name, &slice)?);
            }
        }
        Ok(docs
            .iter()
            .map(|d| format!("---\n{d}"))
            .collect::<Vec<_>>()
            .concat())
    }

    fn node_manifest(&self, node: &str) -> Node {
        let families = self.families();
        let cidrs: Vec<String> = families
            .iter()
            .filter_map(|f| self.pod_cidr(node, *f))
            .map(|c| c.to_string())
            .collect();
        let mut addresses: Vec<NodeAddress> = families
            .iter()
            .filter_map(|f| self.node_ip(node, *f))
            .map(|ip| NodeAddress {
                address: ip.to_string(),
                type_: "InternalIP".to_string(),
            })
            .collect();
        addresses.push(NodeAddress {
            address: node.to_string(),
            type_: "Hostname".to_string(),
        });
        Node {
            metadata: ObjectMeta {
                name: Some(node.to_string()),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/hostname".to_string(),
                    node.to_string(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                pod_cidr: cidrs.first().cloned(),
                pod_cidrs: Some(cidrs),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                addresses: Some(addresses),
                ..NodeStatus::default()
            }),
        }
    }

    fn service_manifest(&self, service: &ServiceSpec) -> Service {
        let families = self.families();
        let cluster_ips: Vec<String> = families
            .iter()
            .filter_map(|f| self.cluster_ip(&service.name, *f))
            .map(|ip| ip.to_string())
            .collect();
        let externally_accessible =
            service.service_type != ServiceType::ClusterIp || !service.external_ips.is_empty();
        let policy = |local: bool| if local { "Local" } else { "Cluster" }.to_string();
        let strings = |ips: &[IpAddr]| -> Option<Vec<String>> {
            (!ips.is_empty()).then(|| ips.iter().map(IpAddr::to_string).collect())
        };
        let ingress: Vec<LoadBalancerIngress> = service
            .load_balancer_ips
            .iter()
            .map(|ip| LoadBalancerIngress {
                ip: Some(ip.to_string()),
                ip_mode: Some("VIP".to_string()),
                ..LoadBalancerIngress::default()
            })
            .collect();
        Service {
            metadata: ObjectMeta {
                name: Some(service.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(K8sServiceSpec {
                type_: Some(service.service_type.k8s_name().to_string()),
                cluster_ip: cluster_ips.first().cloned(),
                cluster_ips: Some(cluster_ips),
                ip_families: Some(families.iter().map(|f| f.k8s_name().to_string()).collect()),
                ip_family_policy: Some(
                    if self.ipv6 {
                        "RequireDualStack"
                    } else {
                        "SingleStack"
                    }
                    .to_string(),
                ),
                ports: Some(vec![ServicePort {
                    name: Some(service.port_name.clone()),
                    protocol: Some(service.proto.k8s_name().to_string()),
                    port: i32::from(service.port),
                    target_port: Some(IntOrString::Int(i32::from(TARGET_PORT))),
                    node_port: service.node_port.map(i32::from),
                    ..ServicePort::default()
                }]),
                selector: Some(BTreeMap::from([("app".to_string(), service.name.clone())])),
                external_traffic_policy: externally_accessible
                    .then(|| policy(service.external_local)),
                internal_traffic_policy: Some(policy(service.internal_local)),
                health_check_node_port: service.health_check_node_port.map(i32::from),
                external_ips: strings(&service.external_ips),
                load_balancer_source_ranges: (!service.source_ranges.is_empty())
                    .then(|| service.source_ranges.iter().map(IpNet::to_string).collect()),
                session_affinity: Some(
                    if service.session_affinity {
                        "ClientIP"
                    } else {
                        "None"
                    }
                    .to_string(),
                ),
                session_affinity_config: service.session_affinity.then_some(
                    SessionAffinityConfig {
                        client_ip: Some(ClientIPConfig {
                            timeout_seconds: Some(AFFINITY_TIMEOUT_SECONDS),
                        }),
                    },
                ),
                ..K8sServiceSpec::default()
            }),
            status: Some(ServiceStatus {
                load_balancer: Some(LoadBalancerStatus {
                    ingress: (!ingress.is_empty()).then_some(ingress),
                }),
                ..ServiceStatus::default()
            }),
        }
    }

    fn slice_manifest(&self, service: &ServiceSpec, family: Family) -> EndpointSlice {
        let endpoints: Vec<Endpoint> = service
            .endpoints
            .iter()
            .filter_map(|e| {
                let pod = self.pod_spec(&e.pod)?;
                let ip = self.pod_ip(&e.pod, family)?;
                let (ready, serving, terminating) = match e.state {
                    EndpointState::Ready => (true, true, false),
                    EndpointState::ServingTerminating => (false, true, true),
                    EndpointState::NotReady => (false, false, false),
                };
                Some(Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(ready),
                        serving: Some(serving),
                        terminating: Some(terminating),
                    }),
                    node_name: Some(pod.node.clone()),
                    hostname: None,
                    ..Endpoint::default()
                })
            })
            .collect();
        let suffix = family.cli_name();
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{}-{suffix}", service.name)),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (
                        "kubernetes.io/service-name".to_string(),
                        service.name.clone(),
                    ),
                    (
                        "endpointslice.kubernetes.io/managed-by".to_string(),
                        "knat-lab".to_string(),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            address_type: family.k8s_name().to_string(),
            endpoints: Some(endpoints),
            ports: Some(vec![EndpointPort {
                name: Some(service.port_name.clone()),
                port: Some(i32::from(TARGET_PORT)),
                protocol: Some(service.proto.k8s_name().to_string()),
                app_protocol: None,
            }]),
        }
    }
}

fn to_yaml<T: serde::Serialize>(name: &str, value: &T) -> Result<String, ScenarioError> {
    serde_yaml_ng::to_string(value).map_err(|e| ScenarioError::Serialize {
        name: name.to_string(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test addresses are valid")
    }

    fn sample() -> Scenario {
        Scenario::new("lab")
            .with_ipv6()
            .node("node-1")
            .node("node-2")
            .pod("web-1", "node-1")
            .pod("web-2", "node-1")
            .pod("api-1", "node-2")
            .client("client-1")
            .service(
                ServiceSpec::load_balancer("web", 80, 30080)
                    .local()
                    .health_check(32080)
                    .vip(ip("198.51.100.10"))
                    .endpoint("web-1")
                    .endpoint_in("web-2", EndpointState::ServingTerminating),
            )
            .route(ip("198.51.100.10"), "node-1")
    }

    #[test]
    fn address_plan_is_deterministic() {
        let s = sample();
        assert_eq!(s.node_ip("node-2", Family::V4), Some(v4(192, 168, 77, 12)));
        assert_eq!(
            s.node_ip("node-1", Family::V6).map(|ip| ip.to_string()),
            Some("fd00:77::11".to_string())
        );
        assert_eq!(s.pod_ip("web-2", Family::V4), Some(v4(10, 244, 1, 12)));
        assert_eq!(s.pod_ip("api-1", Family::V4), Some(v4(10, 244, 2, 11)));
        assert_eq!(
            s.pod_ip("api-1", Family::V6).map(|ip| ip.to_string()),
            Some("fd00:10:244:2::11".to_string())
        );
        assert_eq!(
            s.client_ip("client-1", Family::V4),
            Some(v4(203, 0, 113, 10))
        );
        assert_eq!(
            s.client_ip("client-1", Family::V6).map(|ip| ip.to_string()),
            Some("fd00:203::10".to_string())
        );
        assert_eq!(s.cluster_ip("web", Family::V4), Some(v4(10, 96, 0, 10)));
        assert_eq!(
            s.pod_cidr("node-2", Family::V6).map(|n| n.to_string()),
            Some("fd00:10:244:2::/64".to_string())
        );
        assert_eq!(s.node_owning(v4(10, 244, 1, 1)), Some("node-1"));
        assert_eq!(s.role("api-1"), Some(Role::Pod));
        assert_eq!(s.role("nobody"), None);
    }

    #[test]
    fn every_address_lies_in_its_networks() {
        let s = sample();
        for family in s.families() {
            let cluster: IpNet = match family.cluster_cidr().parse() {
                Ok(net) => net,
                Err(e) => panic!("cluster CIDR does not parse: {e}"),
            };
            for node in &s.nodes {
                let cidr = s.pod_cidr(node, family);
                assert!(cidr.is_some_and(|c| cluster.contains(&c)));
                let ip = s.node_ip(node, family);
                assert!(ip.is_some_and(|ip| s.segment(family).contains(&ip)));
            }
            for pod in &s.pods {
                let ip = s.pod_ip(&pod.name, family);
                let cidr = s.pod_cidr(&pod.node, family);
                assert!(matches!((ip, cidr), (Some(ip), Some(c)) if c.contains(&ip)));
            }
        }
    }

    #[test]
    fn validation_catches_bad_references() {
        let s = sample().pod("web-3", "node-9");
        assert!(matches!(s.validate(), Err(ScenarioError::Unknown { .. })));
        let s = sample().client("web-1");
        assert_eq!(
            s.validate(),
            Err(ScenarioError::DuplicateName("web-1".into()))
        );
        let s = sample().node("Fabric");
        assert!(matches!(s.validate(), Err(ScenarioError::BadName(_))));
        let s = sample().node("fabric");
        assert!(matches!(s.validate(), Err(ScenarioError::BadName(_))));
        let mut s = sample();
        s.ipv6 = false;
        s = s.route(v6([0xfd00, 0, 0, 0, 0, 0, 0, 1]), "node-1");
        assert!(matches!(s.validate(), Err(ScenarioError::Ipv6Disabled(_))));
    }

    #[test]
    fn manifests_parse_back_as_kubernetes_objects() {
        let yaml = match sample().manifests() {
            Ok(yaml) => yaml,
            Err(e) => panic!("manifests failed: {e}"),
        };
        let mut kinds = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&yaml) {
            let value = match <serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc) {
                Ok(v) => v,
                Err(e) => panic!("bad YAML document: {e}"),
            };
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or_default()
                .to_string();
            match kind.as_str() {
                "Service" => {
                    let svc: Result<Service, _> = serde_yaml_ng::from_value(value);
                    let svc = match svc {
                        Ok(svc) => svc,
                        Err(e) => panic!("not a Service: {e}"),
                    };
                    let spec = svc.spec.unwrap_or_default();
                    assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
                    assert_eq!(spec.health_check_node_port, Some(32080));
                    assert_eq!(
                        spec.cluster_ips,
                        Some(vec!["10.96.0.10".into(), "fd00:10:96::10".into()])
                    );
                }
                "EndpointSlice" => {
                    let slice: Result<EndpointSlice, _> = serde_yaml_ng::from_value(value);
                    let slice = match slice {
                        Ok(slice) => slice,
                        Err(e) => panic!("not an EndpointSlice: {e}"),
                    };
                    let endpoints = slice.endpoints.unwrap_or_default();
                    assert_eq!(endpoints.len(), 2);
                    let terminating = &endpoints[1];
                    assert_eq!(terminating.node_name.as_deref(), Some("node-1"));
                    let conditions = terminating.conditions.clone().unwrap_or_default();
                    assert_eq!(conditions.terminating, Some(true));
                    assert_eq!(conditions.ready, Some(false));
                }
                "Node" => {
                    let node: Result<Node, _> = serde_yaml_ng::from_value(value);
                    assert!(node.is_ok());
                }
                other => panic!("unexpected kind {other:?}"),
            }
            kinds.push(kind);
        }
        assert_eq!(
            kinds,
            ["Node", "Node", "Service", "EndpointSlice", "EndpointSlice"]
        );
    }
}
