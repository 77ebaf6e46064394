//! The `kubeproxy.config.k8s.io/v1alpha1` `KubeProxyConfiguration` as written in a file,
//! field for field (`k8s.io/kube-proxy/config/v1alpha1/types.go`, Kubernetes 1.37).
//!
//! Every field is optional here: Go's decoder leaves a missing or `null` field at its zero
//! value, and kube-proxy's defaulting treats the zero value as "unset". Free-form parts
//! (`featureGates`, `logging.options`, `logging.vmodule`, `logging.flushFrequency`) are kept as
//! values. Serializing [`KubeProxyConfiguration::default`] yields every known key (all
//! `null`), which is what [`super::unknown`] compares a file with.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct KubeProxyConfiguration {
    #[serde(rename = "apiVersion")]
    pub api_version: Option<String>,
    pub kind: Option<String>,
    #[serde(rename = "featureGates")]
    pub feature_gates: Option<BTreeMap<String, bool>>,
    #[serde(rename = "clientConnection")]
    pub client_connection: ClientConnection,
    pub logging: Logging,
    #[serde(rename = "hostnameOverride")]
    pub hostname_override: Option<String>,
    #[serde(rename = "bindAddress")]
    pub bind_address: Option<String>,
    #[serde(rename = "healthzBindAddress")]
    pub healthz_bind_address: Option<String>,
    #[serde(rename = "metricsBindAddress")]
    pub metrics_bind_address: Option<String>,
    #[serde(rename = "bindAddressHardFail")]
    pub bind_address_hard_fail: Option<bool>,
    #[serde(rename = "enableProfiling")]
    pub enable_profiling: Option<bool>,
    #[serde(rename = "showHiddenMetricsForVersion")]
    pub show_hidden_metrics_for_version: Option<String>,
    pub mode: Option<String>,
    pub iptables: IpTables,
    pub ipvs: Ipvs,
    pub nftables: NfTables,
    pub winkernel: Winkernel,
    #[serde(rename = "detectLocalMode")]
    pub detect_local_mode: Option<String>,
    #[serde(rename = "detectLocal")]
    pub detect_local: DetectLocal,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    #[serde(rename = "nodePortAddresses")]
    pub node_port_addresses: Option<Vec<String>>,
    #[serde(rename = "oomScoreAdj")]
    pub oom_score_adj: Option<i64>,
    pub conntrack: Conntrack,
    #[serde(rename = "configSyncPeriod")]
    pub config_sync_period: Option<String>,
    #[serde(rename = "portRange")]
    pub port_range: Option<String>,
    #[serde(rename = "windowsRunAsService")]
    pub windows_run_as_service: Option<bool>,
}

/// `clientConnection` (component-base `ClientConnectionConfiguration`).
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct ClientConnection {
    pub kubeconfig: Option<String>,
    #[serde(rename = "acceptContentTypes")]
    pub accept_content_types: Option<String>,
    #[serde(rename = "contentType")]
    pub content_type: Option<String>,
    pub qps: Option<f64>,
    pub burst: Option<i64>,
}

/// `logging` (component-base `LoggingConfiguration`); only `verbosity` is used.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Logging {
    pub format: Option<String>,
    #[serde(rename = "flushFrequency")]
    pub flush_frequency: Option<Value>,
    pub verbosity: Option<u32>,
    pub vmodule: Option<Value>,
    pub options: Option<Value>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct IpTables {
    #[serde(rename = "masqueradeBit")]
    pub masquerade_bit: Option<i64>,
    #[serde(rename = "masqueradeAll")]
    pub masquerade_all: Option<bool>,
    #[serde(rename = "localhostNodePorts")]
    pub localhost_node_ports: Option<bool>,
    #[serde(rename = "syncPeriod")]
    pub sync_period: Option<String>,
    #[serde(rename = "minSyncPeriod")]
    pub min_sync_period: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Ipvs {
    #[serde(rename = "syncPeriod")]
    pub sync_period: Option<String>,
    #[serde(rename = "minSyncPeriod")]
    pub min_sync_period: Option<String>,
    pub scheduler: Option<String>,
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    #[serde(rename = "strictARP")]
    pub strict_arp: Option<bool>,
    #[serde(rename = "tcpTimeout")]
    pub tcp_timeout: Option<String>,
    #[serde(rename = "tcpFinTimeout")]
    pub tcp_fin_timeout: Option<String>,
    #[serde(rename = "udpTimeout")]
    pub udp_timeout: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct NfTables {
    #[serde(rename = "masqueradeBit")]
    pub masquerade_bit: Option<i64>,
    #[serde(rename = "masqueradeAll")]
    pub masquerade_all: Option<bool>,
    #[serde(rename = "syncPeriod")]
    pub sync_period: Option<String>,
    #[serde(rename = "minSyncPeriod")]
    pub min_sync_period: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Winkernel {
    #[serde(rename = "networkName")]
    pub network_name: Option<String>,
    #[serde(rename = "sourceVip")]
    pub source_vip: Option<String>,
    #[serde(rename = "enableDSR")]
    pub enable_dsr: Option<bool>,
    #[serde(rename = "rootHnsEndpointName")]
    pub root_hns_endpoint_name: Option<String>,
    #[serde(rename = "forwardHealthCheckVip")]
    pub forward_health_check_vip: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct DetectLocal {
    #[serde(rename = "bridgeInterface")]
    pub bridge_interface: Option<String>,
    #[serde(rename = "interfaceNamePrefix")]
    pub interface_name_prefix: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Conntrack {
    #[serde(rename = "maxPerCore")]
    pub max_per_core: Option<i64>,
    pub min: Option<i64>,
    #[serde(rename = "tcpEstablishedTimeout")]
    pub tcp_established_timeout: Option<String>,
    #[serde(rename = "tcpCloseWaitTimeout")]
    pub tcp_close_wait_timeout: Option<String>,
    #[serde(rename = "tcpBeLiberal")]
    pub tcp_be_liberal: Option<bool>,
    #[serde(rename = "udpTimeout")]
    pub udp_timeout: Option<String>,
    #[serde(rename = "udpStreamTimeout")]
    pub udp_stream_timeout: Option<String>,
}
