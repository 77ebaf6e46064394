//! Plain domain types for Services, EndpointSlices and Nodes, already validated.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

/// An IP family; each family is compiled into its own payload (iptables / ip6tables).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }

    /// The family of a network.
    pub fn of_net(net: &IpNet) -> Self {
        Self::of(&net.addr())
    }

    /// True when `ip` belongs to this family.
    pub fn contains(self, ip: &IpAddr) -> bool {
        Self::of(ip) == self
    }

    /// Upstream's metric label (`IPv4` / `IPv6`).
    pub fn label(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }
}

/// A transport protocol a Service port can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Parses the Kubernetes spelling (`TCP`, `UDP`, `SCTP`); a missing protocol means TCP.
    pub fn from_k8s(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("TCP") => Some(Protocol::Tcp),
            Some("UDP") => Some(Protocol::Udp),
            Some("SCTP") => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The lower-case name iptables uses (`tcp`, `udp`, `sctp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `namespace/name` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ServiceName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Upstream's `ServicePortName`: rendered `ns/name:port`, or `ns/name` for an unnamed port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub service: ServiceName,
    pub port: String,
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.port.is_empty() {
            write!(f, "{}", self.service)
        } else {
            write!(f, "{}:{}", self.service, self.port)
        }
    }
}

/// The Service type, as far as the proxy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port's name; empty for a single unnamed port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// The node port, when one is allocated.
    pub node_port: Option<u16>,
}

/// A Service, converted and validated. Per-family filtering happens at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: ServiceName,
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (or `spec.clusterIP`), normalised.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    pub external_ips: Vec<IpAddr>,
    /// LB ingress IPs in VIP mode (`ipMode: Proxy` entries are already dropped).
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`, trimmed and parsed.
    pub source_ranges: Vec<IpNet>,
    /// `spec.externalTrafficPolicy == Local` on a Service that is externally accessible at
    /// the API level (upstream's `ExternalPolicyLocal`).
    pub external_policy_local: bool,
    /// `spec.internalTrafficPolicy == Local`.
    pub internal_policy_local: bool,
    /// `sessionAffinity: ClientIP` timeout in seconds.
    pub session_affinity_timeout: Option<u32>,
    /// Only set when the Service needs a health check (LoadBalancer with eTP=Local).
    pub health_check_node_port: Option<u16>,
    /// `metadata.uid`, when known: Events about the Service (`FailedToStartServiceHealthcheck`)
    /// carry it so that `kubectl describe service` lists them.
    pub uid: Option<String>,
}

impl Service {
    /// The ServicePortName of one of this Service's ports.
    pub fn port_name(&self, port: &ServicePort) -> ServicePortName {
        ServicePortName {
            service: self.name.clone(),
            port: port.name.clone(),
            protocol: port.protocol,
        }
    }

    /// The cluster IP of a family, if the Service has one.
    pub fn cluster_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.cluster_ips
            .iter()
            .copied()
            .find(|ip| family.contains(ip))
    }
}

/// An EndpointSlice port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// One endpoint of a slice (only `addresses[0]` is used, as upstream does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// `conditions.ready`, a missing condition meaning ready.
    pub ready: bool,
    /// `conditions.serving`, a missing condition meaning serving.
    pub serving: bool,
    /// `conditions.terminating`, true only when explicitly set.
    pub terminating: bool,
    pub node_name: Option<String>,
    /// Zone and topology hints; most endpoints have none, so they sit behind one pointer
    /// (an endpoint is 56 bytes instead of 120: 6 MB less at 100,000 endpoints).
    pub topology: Option<Box<EndpointTopology>>,
}

/// An endpoint's zone and topology hints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointTopology {
    pub zone: Option<String>,
    /// Topology hints: zones and nodes this endpoint is meant for.
    pub hint_zones: Option<Vec<String>>,
    pub hint_nodes: Option<Vec<String>>,
}

impl Endpoint {
    /// The zones this endpoint is meant for (`hints.forZones`), when hinted.
    pub fn hint_zones(&self) -> Option<&Vec<String>> {
        self.topology.as_ref()?.hint_zones.as_ref()
    }

    /// The nodes this endpoint is meant for (`hints.forNodes`), when hinted.
    pub fn hint_nodes(&self) -> Option<&Vec<String>> {
        self.topology.as_ref()?.hint_nodes.as_ref()
    }
}

/// An EndpointSlice, converted and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    /// The slice's own name (the key together with the namespace).
    pub slice_name: String,
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: ServiceName,
    pub family: IpFamily,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<Endpoint>,
}

/// What the proxy needs from its own Node object.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeInfo {
    pub name: String,
    /// `topology.kubernetes.io/zone`.
    pub zone: Option<String>,
    /// InternalIP first, then ExternalIP.
    pub addresses: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
    /// Being deleted, or tainted `ToBeDeletedByClusterAutoscaler`.
    pub unschedulable_for_deletion: bool,
}
