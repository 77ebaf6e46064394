//! Parsing the fixtures kubeadm and kind produce, warnings and errors.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::config::NodePortAddress;

const KUBEADM: &str = include_str!("../../tests/fixtures/kube-proxy-config/kubeadm.conf");
const KIND: &str = include_str!("../../tests/fixtures/kube-proxy-config/kind.yaml");
const KIND_CM: &str = include_str!("../../tests/fixtures/kube-proxy-config/kind-configmap.conf");

fn ok(text: &str) -> Loaded {
    parse(text, "test").unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> String {
    match parse(text, "test") {
        Ok(l) => panic!("accepted: {l:?}"),
        Err(e) => e.to_string(),
    }
}

fn doc(body: &str) -> String {
    format!("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{body}")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("addr")
}

#[test]
fn kubeadm_configmap_gives_kube_proxy_defaults() {
    let loaded = ok(KUBEADM);
    let s = &loaded.settings;
    assert_eq!(
        s.cluster_cidrs,
        vec!["10.244.0.0/16".parse().expect("cidr")]
    );
    assert_eq!(s.masquerade_bit, 14);
    assert!(!s.masquerade_all);
    assert!(s.localhost_nodeports);
    assert_eq!(s.min_sync_period, Duration::from_secs(1));
    assert_eq!(s.sync_period, Duration::from_secs(30));
    assert_eq!(s.healthz_bind_address, addr("0.0.0.0:10256"));
    assert_eq!(s.metrics_bind_address, addr("127.0.0.1:10249"));
    assert_eq!(s.detect_local_mode, DetectLocalMode::ClusterCidr);
    assert_eq!(s.nodeport_addresses, vec![]);
    assert_eq!(
        s.kubeconfig.as_deref(),
        Some(Path::new("/var/lib/kube-proxy/kubeconfig.conf"))
    );
    assert_eq!(s.hostname_override, None);
    // Every zero-valued field is quiet; only the conntrack sysctls kube-proxy would set are
    // reported (kubeadm leaves maxPerCore and the TCP timeouts null: kube-proxy's defaults).
    let fields: Vec<&str> = loaded.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(fields, vec!["conntrack"], "{:?}", loaded.warnings);
    let message = &loaded.warnings[0].message;
    assert!(message.contains("nf_conntrack_max"), "{message}");
    assert!(
        message.contains("nf_conntrack_tcp_timeout_established=86400"),
        "{message}"
    );
}

#[test]
fn kind_documents() {
    let section = ok(KIND);
    assert_eq!(section.settings.min_sync_period, Duration::from_secs(1));
    assert_eq!(section.settings.cluster_cidrs, vec![]);
    let fields: Vec<&str> = section.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(
        fields,
        vec!["metadata", "conntrack"],
        "{:?}",
        section.warnings
    );
    let conntrack = &section.warnings[1].message;
    assert!(!conntrack.contains("nf_conntrack_max"), "{conntrack}");

    let cm = ok(KIND_CM);
    assert_eq!(
        cm.settings.cluster_cidrs,
        vec!["10.244.0.0/16".parse().expect("cidr")]
    );
    assert_eq!(cm.settings.min_sync_period, Duration::from_secs(1));
}

#[test]
fn json_is_read_too() {
    let loaded = ok(
        r#"{"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "iptables": {"masqueradeBit": 7, "masqueradeAll": true}, "clusterCIDR": "10.0.0.0/8,fd00::/48",
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"}}"#,
    );
    assert_eq!(loaded.settings.masquerade_bit, 7);
    assert!(loaded.settings.masquerade_all);
    assert_eq!(loaded.settings.cluster_cidrs.len(), 2);
    assert_eq!(
        loaded.warnings,
        vec![],
        "zero conntrack values change no sysctl"
    );
}

#[test]
fn every_iptables_field_is_read() {
    let loaded = ok(&doc(
        "hostnameOverride: \" Node-A \"\nbindAddress: \"fd00::5\"\nhealthzBindAddress: \"fd00::5\"\n\
         metricsBindAddress: \"[::]:9999\"\niptables:\n  masqueradeAll: true\n  masqueradeBit: 3\n  \
         minSyncPeriod: 250ms\n  syncPeriod: 1m\n  localhostNodePorts: false\n\
         nodePortAddresses: [primary, 192.168.0.0/16, localhost]\ndetectLocalMode: BridgeInterface\n\
         detectLocal:\n  bridgeInterface: cni0\nclientConnection:\n  kubeconfig: /k.conf\n\
         featureGates:\n  AllowServiceExternalIPs: true\nlogging:\n  verbosity: 4\n\
         conntrack:\n  maxPerCore: 0\n  tcpEstablishedTimeout: 0s\n  tcpCloseWaitTimeout: 0s\n",
    ));
    let s = loaded.settings;
    assert_eq!(s.hostname_override.as_deref(), Some("node-a"));
    assert_eq!(
        s.bind_address,
        "fd00::5".parse::<std::net::IpAddr>().expect("ip")
    );
    assert_eq!(s.healthz_bind_address, addr("[fd00::5]:10256"));
    assert_eq!(s.metrics_bind_address, addr("[::]:9999"));
    assert!(s.masquerade_all);
    assert_eq!(s.masquerade_bit, 3);
    assert_eq!(s.min_sync_period, Duration::from_millis(250));
    assert_eq!(s.sync_period, Duration::from_secs(60));
    assert!(!s.localhost_nodeports);
    assert_eq!(
        s.nodeport_addresses,
        vec![
            NodePortAddress::Primary,
            NodePortAddress::Cidr("192.168.0.0/16".parse().expect("cidr")),
            NodePortAddress::Localhost
        ]
    );
    assert_eq!(s.detect_local_mode, DetectLocalMode::BridgeInterface);
    assert_eq!(s.pod_bridge_interface, "cni0");
    assert_eq!(s.kubeconfig.as_deref(), Some(Path::new("/k.conf")));
    assert_eq!(s.verbosity, 4);
    assert_eq!(loaded.warnings, vec![]);
}

#[test]
fn ipv6_bind_address_moves_the_default_servers() {
    let s = ok(&doc("bindAddress: \"::\"\n")).settings;
    assert_eq!(s.healthz_bind_address, addr("[::]:10256"));
    assert_eq!(s.metrics_bind_address, addr("[::1]:10249"));
}

#[test]
fn unsupported_fields_are_named_in_warnings() {
    let loaded = ok(&doc(
        "ipvs:\n  scheduler: rr\nenableProfiling: true\noomScoreAdj: -999\nlogging:\n  format: json\n\
         featureGates:\n  KubeletThing: true\niptables:\n  masqueradeBits: 3\n\
         conntrack:\n  maxPerCore: 0\n  tcpEstablishedTimeout: 0s\n  tcpCloseWaitTimeout: 0s\n",
    ));
    let fields: Vec<&str> = loaded.warnings.iter().map(|w| w.field.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "iptables.masqueradeBits",
            "logging.format",
            "featureGates",
            "ipvs",
            "enableProfiling",
            "oomScoreAdj"
        ],
        "{:?}",
        loaded.warnings
    );
    assert!(loaded.warnings[2].message.contains("KubeletThing"));
}

#[test]
fn invalid_values_name_field_and_value() {
    let cases = [
        ("mode: nftables\n", "mode", "\"nftables\""),
        ("mode: ipvs\n", "mode", "\"ipvs\""),
        (
            "iptables:\n  masqueradeBit: 32\n",
            "iptables.masqueradeBit",
            "32",
        ),
        (
            "iptables:\n  masqueradeBit: -1\n",
            "iptables.masqueradeBit",
            "-1",
        ),
        (
            "iptables:\n  masqueradeBit: fourteen\n",
            "iptables.masqueradeBit",
            "fourteen",
        ),
        (
            "iptables:\n  minSyncPeriod: 5 parsecs\n",
            "iptables.minSyncPeriod",
            "5 parsecs",
        ),
        (
            "iptables:\n  minSyncPeriod: -1s\n",
            "iptables.minSyncPeriod",
            "-1s",
        ),
        (
            "iptables:\n  syncPeriod: 1s\n  minSyncPeriod: 2s\n",
            "iptables.syncPeriod",
            "1s",
        ),
        (
            "iptables:\n  syncPeriod: -30s\n",
            "iptables.syncPeriod",
            "30s",
        ),
        ("bindAddress: nowhere\n", "bindAddress", "nowhere"),
        (
            "healthzBindAddress: 1.2.3.4:0\n",
            "healthzBindAddress",
            "1.2.3.4:0",
        ),
        (
            "metricsBindAddress: localhost:10249\n",
            "metricsBindAddress",
            "localhost:10249",
        ),
        ("clusterCIDR: 10.244.0.0\n", "clusterCIDR", "10.244.0.0"),
        (
            "clusterCIDR: 10.0.0.0/8,10.1.0.0/16\n",
            "clusterCIDR",
            "10.0.0.0/8,10.1.0.0/16",
        ),
        (
            "nodePortAddresses: [primary, primary]\n",
            "nodePortAddresses[1]",
            "primary",
        ),
        (
            "nodePortAddresses: [10.0.0.1]\n",
            "nodePortAddresses[0]",
            "10.0.0.1",
        ),
        ("detectLocalMode: Bridge\n", "detectLocalMode", "Bridge"),
        (
            "detectLocalMode: BridgeInterface\n",
            "detectLocal.bridgeInterface",
            "\"\"",
        ),
        (
            "detectLocalMode: InterfaceNamePrefix\n",
            "detectLocal.interfaceNamePrefix",
            "\"\"",
        ),
        (
            "conntrack:\n  maxPerCore: -1\n",
            "conntrack.maxPerCore",
            "-1",
        ),
        (
            "conntrack:\n  udpTimeout: -5s\n",
            "conntrack.udpTimeout",
            "5s",
        ),
        (
            "featureGates:\n  AllowServiceExternalIPs: false\n",
            "featureGates.AllowServiceExternalIPs",
            "false",
        ),
        ("oomScoreAdj: -1001\n", "oomScoreAdj", "-1001"),
        (
            "clientConnection:\n  burst: -1\n",
            "clientConnection.burst",
            "-1",
        ),
    ];
    for (body, field, value) in cases {
        let message = err(&doc(body));
        assert!(
            message.starts_with(&format!("{field}:")),
            "{body:?}: {message}"
        );
        assert!(message.contains(value), "{body:?}: {message}");
    }
    let message =
        err("apiVersion: kubeproxy.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n");
    assert!(message.starts_with("apiVersion:"), "{message}");
    assert!(
        err("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n")
            .starts_with("kind:")
    );
    assert!(err("[1, 2]").contains("not a mapping"));
    assert!(err("a: [").contains("not a KubeProxyConfiguration"));
}
