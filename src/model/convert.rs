//! Conversion from k8s-openapi objects into domain types, at the boundary.
//!
//! Objects the proxy deliberately ignores (headless, ExternalName, claimed by another proxy,
//! FQDN slices) come back as [`Skip::Ignored`]; objects that are broken (bad IP, port out of
//! range, unknown protocol, missing fields) come back as [`Skip::Malformed`], so the caller can
//! log and count them while the rest of the cluster keeps working.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node as K8sNode, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sEndpointSlice;

use super::types::*;

/// Label that hands a Service or EndpointSlice to another proxy.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label marking headless Services and their slices.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Label linking an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The node label carrying the zone.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// Taint set by the cluster autoscaler on nodes it is about to delete.
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";

/// Why an object was not turned into a domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// The proxy ignores this object on purpose (as upstream does). Not retryable; not an error.
    #[error("ignored: {0}")]
    Ignored(String),
    /// The object is broken. Not retryable until the object changes; logged and counted.
    #[error("malformed: {0}")]
    Malformed(String),
}

fn malformed(msg: impl Into<String>) -> Skip {
    Skip::Malformed(msg.into())
}

/// Parses an IP address the way Go's "sloppy" parser does: IPv4 octets may carry leading
/// zeros (`172.30.0.041` is `172.30.0.41`).
pub fn parse_ip_sloppy(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if text.contains(':') {
        return None;
    }
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

/// Parses a CIDR sloppily (`203.0.113.000/025` is `203.0.113.0/25`) and truncates host bits.
pub fn parse_cidr_sloppy(text: &str) -> Option<IpNet> {
    let (addr, len) = text.trim().split_once('/')?;
    let ip = parse_ip_sloppy(addr)?;
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    IpNet::new(ip, len).ok().map(|net| net.trunc())
}

fn label<'a>(
    labels: Option<&'a std::collections::BTreeMap<String, String>>,
    key: &str,
) -> Option<&'a str> {
    labels.and_then(|l| l.get(key)).map(String::as_str)
}

fn port_u16(value: i32, what: &str) -> Result<u16, Skip> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| malformed(format!("{what} {value} is out of range 1-65535")))
}

/// Namespace and name of a Service or EndpointSlice that this proxy handles: objects claimed by
/// another proxy (`service.kubernetes.io/service-proxy-name`) or labelled headless are ignored.
fn proxied_identity(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Result<(String, String), Skip> {
    let name = meta
        .name
        .clone()
        .ok_or_else(|| malformed("metadata.name is missing"))?;
    let namespace = meta
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let labels = meta.labels.as_ref();
    if let Some(proxy) = label(labels, LABEL_SERVICE_PROXY_NAME) {
        return Err(Skip::Ignored(format!("handled by service proxy {proxy:?}")));
    }
    if label(labels, LABEL_HEADLESS).is_some() {
        return Err(Skip::Ignored("labelled headless".into()));
    }
    Ok((namespace, name))
}

/// Converts a Service. See the module docs for what is ignored and what is malformed.
pub fn service(svc: &K8sService) -> Result<Service, Skip> {
    let meta = &svc.metadata;
    let (namespace, name) = proxied_identity(meta)?;
    let spec = svc
        .spec
        .as_ref()
        .ok_or_else(|| malformed("spec is missing"))?;
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => return Err(Skip::Ignored("type ExternalName".into())),
        Some(other) => return Err(malformed(format!("unknown service type {other:?}"))),
    };

    let mut raw_cluster_ips: Vec<&str> = spec
        .cluster_ips
        .as_ref()
        .map(|ips| ips.iter().map(String::as_str).collect())
        .unwrap_or_default();
    if raw_cluster_ips.is_empty() {
        raw_cluster_ips.extend(spec.cluster_ip.as_deref());
    }
    if raw_cluster_ips.contains(&"None") {
        return Err(Skip::Ignored("headless (clusterIP None)".into()));
    }
    let raw_cluster_ips: Vec<&str> = raw_cluster_ips
        .into_iter()
        .filter(|ip| !ip.is_empty())
        .collect();
    if raw_cluster_ips.is_empty() {
        return Err(malformed("spec.clusterIP is missing"));
    }
    let cluster_ips = raw_cluster_ips
        .iter()
        .map(|ip| parse_ip_sloppy(ip).ok_or_else(|| malformed(format!("bad cluster IP {ip:?}"))))
        .collect::<Result<Vec<_>, _>>()?;

    let mut ports = Vec::new();
    for port in spec.ports.iter().flatten() {
        let protocol = Protocol::from_k8s(port.protocol.as_deref()).ok_or_else(|| {
            malformed(format!(
                "unknown protocol {:?}",
                port.protocol.as_deref().unwrap_or("")
            ))
        })?;
        let number = port_u16(port.port, "port")?;
        let node_port = match port.node_port {
            None | Some(0) => None,
            Some(np) => Some(port_u16(np, "nodePort")?),
        };
        ports.push(ServicePort {
            name: port.name.clone().unwrap_or_default(),
            protocol,
            port: number,
            node_port,
        });
    }

    let external_ips = spec
        .external_ips
        .iter()
        .flatten()
        .map(|ip| parse_ip_sloppy(ip).ok_or_else(|| malformed(format!("bad external IP {ip:?}"))))
        .collect::<Result<Vec<_>, _>>()?;

    let mut load_balancer_ips = Vec::new();
    if let Some(ingress) = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
    {
        for entry in ingress {
            if entry.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            let Some(ip) = entry.ip.as_deref().filter(|ip| !ip.is_empty()) else {
                continue;
            };
            let ip = parse_ip_sloppy(ip)
                .ok_or_else(|| malformed(format!("bad load balancer ingress IP {ip:?}")))?;
            load_balancer_ips.push(ip);
        }
    }

    let source_ranges = spec
        .load_balancer_source_ranges
        .iter()
        .flatten()
        .map(|r| {
            parse_cidr_sloppy(r)
                .ok_or_else(|| malformed(format!("bad loadBalancerSourceRange {r:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let api_externally_accessible = matches!(
        service_type,
        ServiceType::NodePort | ServiceType::LoadBalancer
    ) || !external_ips.is_empty();
    let external_policy_local =
        api_externally_accessible && spec.external_traffic_policy.as_deref() == Some("Local");
    let internal_policy_local = spec.internal_traffic_policy.as_deref() == Some("Local");
    let session_affinity_timeout = match spec.session_affinity.as_deref() {
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(10800);
            Some(
                u32::try_from(timeout)
                    .map_err(|_| malformed(format!("bad session affinity timeout {timeout}")))?,
            )
        }
        _ => None,
    };
    let health_check_node_port =
        if service_type == ServiceType::LoadBalancer && external_policy_local {
            match spec.health_check_node_port {
                None | Some(0) => None,
                Some(p) => Some(port_u16(p, "healthCheckNodePort")?),
            }
        } else {
            None
        };

    Ok(Service {
        name: ServiceName { namespace, name },
        service_type,
        cluster_ips,
        ports,
        external_ips,
        load_balancer_ips,
        source_ranges,
        external_policy_local,
        internal_policy_local,
        session_affinity_timeout,
        health_check_node_port,
        uid: svc.metadata.uid.clone().filter(|u| !u.is_empty()),
    })
}

/// Converts an EndpointSlice. Ports without a name or number are dropped as upstream does.
pub fn endpoint_slice(slice: &K8sEndpointSlice) -> Result<EndpointSlice, Skip> {
    let meta = &slice.metadata;
    let (namespace, slice_name) = proxied_identity(meta)?;
    let labels = meta.labels.as_ref();
    let service_name = label(labels, LABEL_SERVICE_NAME)
        .ok_or_else(|| malformed(format!("label {LABEL_SERVICE_NAME} is missing")))?;
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        other => return Err(Skip::Ignored(format!("addressType {other}"))),
    };
    let mut ports = Vec::new();
    for port in slice.ports.iter().flatten() {
        let (Some(name), Some(number)) = (port.name.as_ref(), port.port) else {
            continue;
        };
        if number == 0 {
            continue;
        }
        let protocol = Protocol::from_k8s(port.protocol.as_deref()).ok_or_else(|| {
            malformed(format!(
                "unknown protocol {:?}",
                port.protocol.as_deref().unwrap_or("")
            ))
        })?;
        ports.push(SlicePort {
            name: name.clone(),
            port: port_u16(number, "port")?,
            protocol,
        });
    }
    let mut endpoints = Vec::new();
    for ep in slice.endpoints.iter().flatten() {
        let Some(address) = ep.addresses.first() else {
            continue;
        };
        let ip = parse_ip_sloppy(address)
            .ok_or_else(|| malformed(format!("bad endpoint address {address:?}")))?;
        if !family.contains(&ip) {
            return Err(malformed(format!(
                "endpoint address {address} is not of addressType {}",
                slice.address_type
            )));
        }
        let conditions = ep.conditions.as_ref();
        let hints = ep.hints.as_ref();
        endpoints.push(Endpoint {
            ip,
            ready: conditions.and_then(|c| c.ready).unwrap_or(true),
            serving: conditions.and_then(|c| c.serving).unwrap_or(true),
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            node_name: ep.node_name.clone(),
            topology: {
                let topology = EndpointTopology {
                    zone: ep.zone.clone(),
                    hint_zones: hints
                        .and_then(|h| h.for_zones.as_ref())
                        .map(|z| z.iter().map(|z| z.name.clone()).collect()),
                    hint_nodes: hints
                        .and_then(|h| h.for_nodes.as_ref())
                        .map(|n| n.iter().map(|n| n.name.clone()).collect()),
                };
                (topology != EndpointTopology::default()).then(|| Box::new(topology))
            },
        });
    }
    Ok(EndpointSlice {
        slice_name,
        service: ServiceName::new(namespace, service_name),
        family,
        ports,
        endpoints,
    })
}

/// Converts a Node into what the proxy needs from it.
pub fn node(node: &K8sNode) -> Result<NodeInfo, Skip> {
    let name = node
        .metadata
        .name
        .clone()
        .ok_or_else(|| malformed("metadata.name is missing"))?;
    let zone = label(node.metadata.labels.as_ref(), LABEL_ZONE).map(str::to_string);
    let mut addresses = Vec::new();
    if let Some(status_addresses) = node.status.as_ref().and_then(|s| s.addresses.as_ref()) {
        for kind in ["InternalIP", "ExternalIP"] {
            for addr in status_addresses.iter().filter(|a| a.type_ == kind) {
                if let Some(ip) = parse_ip_sloppy(&addr.address) {
                    addresses.push(ip);
                }
            }
        }
    }
    let spec = node.spec.as_ref();
    let mut pod_cidrs: Vec<IpNet> = spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .map(|c| c.iter().filter_map(|c| parse_cidr_sloppy(c)).collect())
        .unwrap_or_default();
    if pod_cidrs.is_empty() {
        pod_cidrs.extend(
            spec.and_then(|s| s.pod_cidr.as_deref())
                .and_then(parse_cidr_sloppy),
        );
    }
    let tainted = spec
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TAINT_TO_BE_DELETED));
    Ok(NodeInfo {
        name,
        zone,
        addresses,
        pod_cidrs,
        unschedulable_for_deletion: tainted || node.metadata.deletion_timestamp.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sloppy_ip_accepts_leading_zeros() {
        assert_eq!(
            parse_ip_sloppy("172.30.0.041"),
            Some("172.30.0.41".parse().unwrap())
        );
        assert_eq!(parse_ip_sloppy("fd00::1"), Some("fd00::1".parse().unwrap()));
        assert_eq!(parse_ip_sloppy("256.0.0.1"), None);
        assert_eq!(parse_ip_sloppy("1.2.3"), None);
        assert_eq!(parse_ip_sloppy("bogus"), None);
    }

    #[test]
    fn sloppy_cidr_accepts_leading_zeros_and_spaces() {
        assert_eq!(
            parse_cidr_sloppy("203.0.113.000/025"),
            Some("203.0.113.0/25".parse().unwrap())
        );
        assert_eq!(
            parse_cidr_sloppy(" 203.0.113.0/25"),
            Some("203.0.113.0/25".parse().unwrap())
        );
        assert_eq!(
            parse_cidr_sloppy("10.0.0.1/8"),
            Some("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(parse_cidr_sloppy("10.0.0.0/33"), None);
    }

    #[test]
    fn endpoint_zone_and_hints_are_kept_only_when_present() {
        let slice: K8sEndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-abc", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "nodeName": "n1", "zone": "z1",
                 "hints": {"forZones": [{"name": "z1"}], "forNodes": [{"name": "n1"}]}},
                {"addresses": ["10.0.0.2"], "nodeName": "n2"}
            ]
        }))
        .expect("valid slice");
        let converted = endpoint_slice(&slice).expect("converts");
        let [hinted, plain] = &converted.endpoints[..] else {
            panic!("two endpoints: {converted:?}");
        };
        assert_eq!(hinted.node_name.as_deref(), Some("n1"));
        assert_eq!(
            hinted.topology.as_deref(),
            Some(&EndpointTopology {
                zone: Some("z1".into()),
                hint_zones: Some(vec!["z1".into()]),
                hint_nodes: Some(vec!["n1".into()]),
            })
        );
        assert_eq!(hinted.hint_zones(), Some(&vec!["z1".to_string()]));
        assert_eq!(hinted.hint_nodes(), Some(&vec!["n1".to_string()]));
        assert_eq!(plain.topology, None);
        assert_eq!(plain.hint_zones(), None);
    }
}
