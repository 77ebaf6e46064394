//! Validation of a decoded `KubeProxyConfiguration` and its conversion into [`FileSettings`]:
//! kube-proxy's v1alpha1 defaulting (`pkg/proxy/apis/config/v1alpha1/defaults.go`), its
//! validation (`pkg/proxy/apis/config/validation`), and a warning for every field knat does
//! not use.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde_yaml_ng::Value;

use super::duration::{GoDuration, parse_go_duration};
use super::feature_gates;
use super::types::KubeProxyConfiguration;
use super::{FileError, Warning};
use crate::config::NodePortAddress;
use crate::model::convert::{parse_cidr_sloppy, parse_ip_sloppy};

/// `detectLocalMode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectLocalMode {
    ClusterCidr,
    NodeCidr,
    BridgeInterface,
    InterfaceNamePrefix,
}

/// Everything the file decides, after kube-proxy's defaulting, in the terms of knat's flags.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSettings {
    /// `hostnameOverride`, trimmed and lower-cased; `None` when empty.
    pub hostname_override: Option<String>,
    /// `bindAddress` (default 0.0.0.0): when not unspecified, the node's IP of its family.
    pub bind_address: IpAddr,
    pub healthz_bind_address: SocketAddr,
    pub metrics_bind_address: SocketAddr,
    pub masquerade_all: bool,
    pub masquerade_bit: u8,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    pub localhost_nodeports: bool,
    pub nodeport_addresses: Vec<NodePortAddress>,
    pub detect_local_mode: DetectLocalMode,
    /// `clusterCIDR`, split on commas (empty: none).
    pub cluster_cidrs: Vec<IpNet>,
    pub pod_bridge_interface: String,
    pub pod_interface_name_prefix: String,
    /// `clientConnection.kubeconfig`; `None` when empty (in-cluster configuration).
    pub kubeconfig: Option<PathBuf>,
    pub feature_gates: BTreeMap<String, bool>,
    /// `logging.verbosity` (klog's `-v`).
    pub verbosity: u32,
}

/// The default ports of the two servers (`pkg/cluster/ports`).
pub const HEALTHZ_PORT: u16 = 10256;
pub const METRICS_PORT: u16 = 10249;

fn invalid(field: &str, value: impl std::fmt::Display, reason: impl Into<String>) -> FileError {
    FileError::Invalid {
        field: field.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn text(value: &Option<String>) -> &str {
    value.as_deref().unwrap_or("").trim()
}

/// A `metav1.Duration` field: missing, `null`, or zero mean "unset" (`None`).
fn duration(field: &str, value: &Option<String>) -> Result<Option<GoDuration>, FileError> {
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => {
            let d = parse_go_duration(t).map_err(|e| invalid(field, format!("{t:?}"), e))?;
            Ok((!d.magnitude.is_zero()).then_some(d))
        }
    }
}

fn non_negative(field: &str, value: &Option<String>) -> Result<Option<Duration>, FileError> {
    match duration(field, value)? {
        Some(d) if d.is_negative() => Err(invalid(
            field,
            format!("\"-{:?}\"", d.magnitude),
            "must be greater than or equal to 0",
        )),
        other => Ok(other.map(|d| d.magnitude)),
    }
}

/// `IP` or `IP:port`, as kube-proxy's defaulting appends the port to a bare IP.
pub fn parse_bind_address(text: &str, default_port: u16) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Some(ip) = parse_ip_sloppy(text) {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| "must be IP:port".to_string())?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip = parse_ip_sloppy(host).ok_or_else(|| format!("{host:?} must be a valid IP"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(|| format!("{port:?} must be a valid port"))?;
    Ok(SocketAddr::new(ip, port))
}

/// True when a value is what Go's encoder writes for an unset field (`null`, `false`, `0`,
/// `""`, `"0"`, `0s`, or a mapping or sequence of only such values).
fn zeroish(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => matches!(s.trim(), "" | "0" | "0s"),
        Value::Sequence(items) => items.is_empty(),
        Value::Mapping(m) => m.values().all(zeroish),
        Value::Tagged(t) => zeroish(&t.value),
    }
}

/// The value at a dotted path of the raw document.
fn lookup<'a>(document: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(document, |v, key| v.get(key))
}

/// Fields knat reads but does not act on, with what knat does instead. A warning is given
/// for each that the file sets to anything but its zero value.
const UNUSED: &[(&str, &str)] = &[
    (
        "ipvs",
        "applies to mode ipvs only; ignored in iptables mode (as kube-proxy does)",
    ),
    (
        "nftables",
        "applies to mode nftables only; ignored in iptables mode (as kube-proxy does)",
    ),
    ("winkernel", "applies to Windows only; ignored"),
    ("windowsRunAsService", "applies to Windows only; ignored"),
    (
        "bindAddressHardFail",
        "not used: knat always exits when it cannot bind the healthz or metrics address",
    ),
    (
        "enableProfiling",
        "not supported: knat serves no /debug/pprof",
    ),
    (
        "showHiddenMetricsForVersion",
        "not used: knat exports its own metrics (docs/operations.md)",
    ),
    (
        "oomScoreAdj",
        "not used: knat does not change its OOM score; set it in the Pod spec",
    ),
    (
        "configSyncPeriod",
        "not used: knat's watches do not resync periodically",
    ),
    ("portRange", "not used in iptables mode"),
    (
        "clientConnection.acceptContentTypes",
        "not used: knat's client speaks JSON",
    ),
    (
        "clientConnection.contentType",
        "not used: knat's client speaks JSON",
    ),
    (
        "clientConnection.qps",
        "not used: knat's client is not rate-limited",
    ),
    (
        "clientConnection.burst",
        "not used: knat's client is not rate-limited",
    ),
    (
        "logging.flushFrequency",
        "not used: knat writes log lines unbuffered",
    ),
    ("logging.vmodule", "not supported: use RUST_LOG per module"),
    (
        "logging.options",
        "not used: knat writes text logs to stderr",
    ),
];

pub(super) fn convert(
    cfg: &KubeProxyConfiguration,
    document: &Value,
    warnings: &mut Vec<Warning>,
) -> Result<FileSettings, FileError> {
    let mut warn = |field: &str, message: String| {
        warnings.push(Warning {
            field: field.to_string(),
            message,
        })
    };

    // apiVersion and kind: kube-proxy's decoder refuses anything else.
    let api_version = text(&cfg.api_version);
    if api_version != super::API_VERSION {
        return Err(invalid(
            "apiVersion",
            format!("{api_version:?}"),
            format!("must be {}", super::API_VERSION),
        ));
    }
    let kind = text(&cfg.kind);
    if kind != "KubeProxyConfiguration" {
        return Err(invalid(
            "kind",
            format!("{kind:?}"),
            "must be KubeProxyConfiguration",
        ));
    }

    let mode = text(&cfg.mode);
    if !matches!(mode, "" | "iptables") {
        return Err(invalid(
            "mode",
            format!("{mode:?}"),
            "knat is kube-proxy's iptables mode: mode must be \"iptables\" or empty",
        ));
    }

    let bind_text = text(&cfg.bind_address);
    let bind_address = if bind_text.is_empty() {
        IpAddr::from([0, 0, 0, 0])
    } else {
        parse_ip_sloppy(bind_text).ok_or_else(|| {
            invalid(
                "bindAddress",
                format!("{bind_text:?}"),
                "not a valid textual representation of an IP address",
            )
        })?
    };
    // Defaults follow the family of bindAddress (0.0.0.0 / 127.0.0.1, or [::] / [::1]).
    let (healthz_default, metrics_default): (IpAddr, IpAddr) = if bind_address.is_ipv4() {
        ([0, 0, 0, 0].into(), [127, 0, 0, 1].into())
    } else {
        ([0u16; 8].into(), [0, 0, 0, 0, 0, 0, 0, 1u16].into())
    };
    let server = |field: &str, value: &Option<String>, ip: IpAddr, port: u16| {
        let t = text(value);
        if t.is_empty() {
            Ok(SocketAddr::new(ip, port))
        } else {
            parse_bind_address(t, port).map_err(|e| invalid(field, format!("{t:?}"), e))
        }
    };
    let healthz_bind_address = server(
        "healthzBindAddress",
        &cfg.healthz_bind_address,
        healthz_default,
        HEALTHZ_PORT,
    )?;
    let metrics_bind_address = server(
        "metricsBindAddress",
        &cfg.metrics_bind_address,
        metrics_default,
        METRICS_PORT,
    )?;

    let masquerade_bit = match cfg.iptables.masquerade_bit {
        None => 14,
        Some(bit) if (0..=31).contains(&bit) => bit as u8,
        Some(bit) => {
            return Err(invalid(
                "iptables.masqueradeBit",
                bit,
                "must be within the range [0, 31]",
            ));
        }
    };
    let sync_period = match duration("iptables.syncPeriod", &cfg.iptables.sync_period)? {
        None => Duration::from_secs(30),
        Some(d) if d.is_negative() => {
            return Err(invalid(
                "iptables.syncPeriod",
                format!("\"-{:?}\"", d.magnitude),
                "must be greater than 0",
            ));
        }
        Some(d) => d.magnitude,
    };
    let min_sync_period = non_negative("iptables.minSyncPeriod", &cfg.iptables.min_sync_period)?
        .unwrap_or(Duration::from_secs(1));
    if min_sync_period > sync_period {
        return Err(invalid(
            "iptables.syncPeriod",
            format!("{sync_period:?}"),
            format!(
                "must be greater than or equal to iptables.minSyncPeriod ({min_sync_period:?})"
            ),
        ));
    }

    let mut nodeport_addresses = Vec::new();
    for (i, entry) in cfg.node_port_addresses.iter().flatten().enumerate() {
        let field = format!("nodePortAddresses[{i}]");
        let parsed: NodePortAddress = entry
            .parse()
            .map_err(|e: String| invalid(&field, format!("{entry:?}"), e))?;
        if !matches!(parsed, NodePortAddress::Cidr(_)) && nodeport_addresses.contains(&parsed) {
            return Err(invalid(&field, format!("{entry:?}"), "duplicate keyword"));
        }
        nodeport_addresses.push(parsed);
    }

    let detect_text = text(&cfg.detect_local_mode);
    let detect_local_mode = match detect_text {
        "" | "ClusterCIDR" => DetectLocalMode::ClusterCidr,
        "NodeCIDR" => DetectLocalMode::NodeCidr,
        "BridgeInterface" => DetectLocalMode::BridgeInterface,
        "InterfaceNamePrefix" => DetectLocalMode::InterfaceNamePrefix,
        other => {
            return Err(invalid(
                "detectLocalMode",
                format!("{other:?}"),
                "supported values: \"ClusterCIDR\", \"NodeCIDR\", \"BridgeInterface\", \"InterfaceNamePrefix\", \"\"",
            ));
        }
    };
    let pod_bridge_interface = text(&cfg.detect_local.bridge_interface).to_string();
    let pod_interface_name_prefix = text(&cfg.detect_local.interface_name_prefix).to_string();
    if detect_local_mode == DetectLocalMode::BridgeInterface && pod_bridge_interface.is_empty() {
        return Err(invalid(
            "detectLocal.bridgeInterface",
            "\"\"",
            "must not be empty with detectLocalMode BridgeInterface",
        ));
    }
    if detect_local_mode == DetectLocalMode::InterfaceNamePrefix
        && pod_interface_name_prefix.is_empty()
    {
        return Err(invalid(
            "detectLocal.interfaceNamePrefix",
            "\"\"",
            "must not be empty with detectLocalMode InterfaceNamePrefix",
        ));
    }

    let cidr_text = text(&cfg.cluster_cidr);
    let mut cluster_cidrs = Vec::new();
    if !cidr_text.is_empty() {
        for part in cidr_text.split(',') {
            let net = parse_cidr_sloppy(part.trim()).ok_or_else(|| {
                invalid(
                    "clusterCIDR",
                    format!("{part:?}"),
                    "must be a valid CIDR block (e.g. 10.100.0.0/16 or fde4:8dba:82e1::/48)",
                )
            })?;
            cluster_cidrs.push(net);
        }
        let dual_pair = cluster_cidrs.len() == 2
            && cluster_cidrs[0].addr().is_ipv4() != cluster_cidrs[1].addr().is_ipv4();
        if detect_local_mode == DetectLocalMode::ClusterCidr
            && cluster_cidrs.len() > 1
            && !dual_pair
        {
            return Err(invalid(
                "clusterCIDR",
                format!("{cidr_text:?}"),
                "must be either a single CIDR or a dual-stack pair of CIDRs",
            ));
        }
    }

    if let Some(burst) = cfg.client_connection.burst
        && burst < 0
    {
        return Err(invalid(
            "clientConnection.burst",
            burst,
            "must be greater than or equal to 0",
        ));
    }
    if let Some(adj) = cfg.oom_score_adj
        && !(-1000..=1000).contains(&adj)
    {
        return Err(invalid(
            "oomScoreAdj",
            adj,
            "must be within the range [-1000, 1000]",
        ));
    }
    duration("configSyncPeriod", &cfg.config_sync_period)?;

    let format = text(&cfg.logging.format);
    if !matches!(format, "" | "text") {
        warn(
            "logging.format",
            format!("logging.format {format:?} is not supported: knat writes text logs"),
        );
    }

    let feature_gates = cfg.feature_gates.clone().unwrap_or_default();
    for (name, value) in &feature_gates {
        match feature_gates::check(name, *value) {
            feature_gates::Verdict::Honoured => {}
            feature_gates::Verdict::Ignored(why) => warn(
                "featureGates",
                format!("featureGates.{name}={value}: {why}"),
            ),
            feature_gates::Verdict::Refused(why) => {
                return Err(invalid(&format!("featureGates.{name}"), value, why));
            }
        }
    }

    conntrack_warning(cfg, &mut warn)?;

    for (path, why) in UNUSED {
        if let Some(value) = lookup(document, path)
            && !zeroish(value)
        {
            warn(path, format!("{path} is set but {why}"));
        }
    }

    let hostname_override =
        Some(text(&cfg.hostname_override).to_lowercase()).filter(|s| !s.is_empty());
    let kubeconfig = Some(text(&cfg.client_connection.kubeconfig))
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);

    Ok(FileSettings {
        hostname_override,
        bind_address,
        healthz_bind_address,
        metrics_bind_address,
        masquerade_all: cfg.iptables.masquerade_all.unwrap_or(false),
        masquerade_bit,
        min_sync_period,
        sync_period,
        localhost_nodeports: cfg.iptables.localhost_node_ports.unwrap_or(true),
        nodeport_addresses,
        detect_local_mode,
        cluster_cidrs,
        pod_bridge_interface,
        pod_interface_name_prefix,
        kubeconfig,
        feature_gates,
        verbosity: cfg.logging.verbosity.unwrap_or(0),
    })
}

/// knat never writes conntrack sysctls; kube-proxy does on start (`pkg/proxy/conntrack`
/// `SetSysctls`). The values are validated as kube-proxy does, and one warning lists what
/// kube-proxy would have set with them.
fn conntrack_warning(
    cfg: &KubeProxyConfiguration,
    warn: &mut impl FnMut(&str, String),
) -> Result<(), FileError> {
    let ct = &cfg.conntrack;
    for (field, value) in [
        ("conntrack.maxPerCore", ct.max_per_core),
        ("conntrack.min", ct.min),
    ] {
        if let Some(v) = value
            && v < 0
        {
            return Err(invalid(field, v, "must be greater than or equal to 0"));
        }
    }
    let max_per_core = ct.max_per_core.unwrap_or(32 * 1024);
    let min = ct.min.unwrap_or(128 * 1024);
    // A null timeout takes kube-proxy's default; an explicit 0 leaves the sysctl alone.
    let timeout = |field: &str, value: &Option<String>, default: Duration| {
        Ok::<_, FileError>(match value {
            None => Some(default),
            Some(_) => non_negative(field, value)?,
        })
    };
    let established = timeout(
        "conntrack.tcpEstablishedTimeout",
        &ct.tcp_established_timeout,
        Duration::from_secs(86_400),
    )?;
    let close_wait = timeout(
        "conntrack.tcpCloseWaitTimeout",
        &ct.tcp_close_wait_timeout,
        Duration::from_secs(3600),
    )?;
    let udp = non_negative("conntrack.udpTimeout", &ct.udp_timeout)?;
    let udp_stream = non_negative("conntrack.udpStreamTimeout", &ct.udp_stream_timeout)?;
    let mut would = Vec::new();
    if max_per_core > 0 {
        would.push(format!(
            "nf_conntrack_max to at least max(maxPerCore {max_per_core} x CPUs, min {min}) (and the hash size to a quarter of it)"
        ));
    }
    for (name, value) in [
        ("nf_conntrack_tcp_timeout_established", established),
        ("nf_conntrack_tcp_timeout_close_wait", close_wait),
        ("nf_conntrack_udp_timeout", udp),
        ("nf_conntrack_udp_timeout_stream", udp_stream),
    ] {
        if let Some(d) = value {
            would.push(format!("{name}={}", d.as_secs()));
        }
    }
    if ct.tcp_be_liberal == Some(true) {
        would.push(
            "nf_conntrack_tcp_be_liberal=1 (and then leave out the INVALID drop rule)".into(),
        );
    }
    if !would.is_empty() {
        warn(
            "conntrack",
            format!(
                "conntrack: knat does not set conntrack sysctls; kube-proxy with this configuration would set {}. Set them on the node if you rely on them",
                would.join(", ")
            ),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses_take_ip_or_ip_port() {
        assert_eq!(
            parse_bind_address("10.0.0.1", 10256),
            Ok("10.0.0.1:10256".parse().expect("addr"))
        );
        assert_eq!(
            parse_bind_address("10.0.0.1:99", 10256),
            Ok("10.0.0.1:99".parse().expect("addr"))
        );
        assert_eq!(
            parse_bind_address("[::1]:99", 10256),
            Ok("[::1]:99".parse().expect("addr"))
        );
        assert_eq!(
            parse_bind_address("::", 10249),
            Ok("[::]:10249".parse().expect("addr"))
        );
        assert!(parse_bind_address("10.0.0.1:0", 1).is_err());
        assert!(parse_bind_address("10.0.0.1:70000", 1).is_err());
        assert!(parse_bind_address("localhost:80", 1).is_err());
        assert!(parse_bind_address(":80", 1).is_err());
    }

    #[test]
    fn zero_values_are_unset() {
        let v: Value = serde_yaml_ng::from_str(
            "a: null\nb: false\nc: 0\nd: \"\"\ne: 0s\nf: {json: {infoBufferSize: \"0\"}}\ng: []",
        )
        .expect("yaml");
        assert!(zeroish(&v));
        let v: Value = serde_yaml_ng::from_str("scheduler: rr").expect("yaml");
        assert!(!zeroish(&v));
    }
}
