//! Objects the API server accepts but that are odd (issue 16): what knat programs for each,
//! rendered from manifests the way `knat render` and `knat run --from-files` read them, and
//! compared with what kube-proxy 1.37's iptables mode writes for the same objects.

use knat::config::ProxyConfig;
use knat::input::{Loaded, Source, load};
use knat::model::IpFamily;
use knat::rules::{compile, render_standalone};
use serde_json::{Value, json};

fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": "demo"}, "spec": spec})
}

fn slice(name: &str, service: &str, family: &str, ports: Value, endpoints: Value) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": "demo",
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": family, "ports": ports, "endpoints": endpoints})
}

fn endpoint(ip: &str, node: Option<&str>) -> Value {
    let mut e = json!({"addresses": [ip], "conditions": {"ready": true}});
    if let Some(n) = node {
        e["nodeName"] = json!(n);
    }
    e
}

fn load_items(items: Vec<Value>) -> Loaded {
    let text = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    load(
        &[Source {
            name: "odd.json".into(),
            text,
        }],
        "node-1",
    )
    .expect("the list parses")
}

/// The IPv4 payload of `items` for node-1.
fn render(items: Vec<Value>) -> (String, Loaded) {
    let loaded = load_items(items);
    let cfg = ProxyConfig::new("node-1", IpFamily::V4).expect("node name");
    let payload = render_standalone(&compile(&loaded.snapshot, &cfg).rules);
    (payload, loaded)
}

fn count(payload: &str, prefix: &str) -> usize {
    payload.lines().filter(|l| l.starts_with(prefix)).count()
}

#[test]
fn a_service_with_1000_ports_gets_a_chain_and_a_dispatch_rule_per_port() {
    let ports: Vec<Value> = (1..=1000)
        .map(|p| json!({"name": format!("p{p}"), "port": p, "protocol": "TCP", "targetPort": 10000 + p}))
        .collect();
    let slice_ports: Vec<Value> = (1..=1000)
        .map(|p| json!({"name": format!("p{p}"), "port": 10000 + p, "protocol": "TCP"}))
        .collect();
    let (payload, _) = render(vec![
        service("many", json!({"clusterIP": "10.96.0.20", "ports": ports})),
        slice(
            "many-1",
            "many",
            "IPv4",
            json!(slice_ports),
            json!([endpoint("10.244.1.5", Some("node-1"))]),
        ),
    ]);
    assert_eq!(count(&payload, ":KUBE-SVC-"), 1000);
    assert_eq!(count(&payload, ":KUBE-SEP-"), 1000);
    assert_eq!(
        payload
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES ") && l.contains("-d 10.96.0.20"))
            .count(),
        1000
    );
    for p in [1, 500, 1000] {
        assert!(
            payload.contains(&format!("--to-destination 10.244.1.5:{}", 10000 + p)),
            "port {p}"
        );
        assert!(payload.contains(&format!("-d 10.96.0.20 --dport {p} -j KUBE-SVC-")));
    }
}

#[test]
fn a_slice_with_1000_endpoints_spreads_with_kube_proxys_probabilities() {
    let endpoints: Vec<Value> = (0..1000)
        .map(|i| {
            endpoint(
                &format!("10.244.{}.{}", 1 + i / 200, 1 + i % 200),
                Some("node-2"),
            )
        })
        .collect();
    let (payload, _) = render(vec![
        service(
            "wide",
            json!({"clusterIP": "10.96.0.21",
                   "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}),
        ),
        slice(
            "wide-1",
            "wide",
            "IPv4",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            json!(endpoints),
        ),
    ]);
    assert_eq!(count(&payload, ":KUBE-SEP-"), 1000);
    let jumps: Vec<&str> = payload
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SVC-") && l.contains("-j KUBE-SEP-"))
        .collect();
    assert_eq!(jumps.len(), 1000);
    // As kube-proxy: 1/n, 1/(n-1), ..., with 10 decimals; the last has no statistic match.
    assert!(
        jumps[0].contains("--probability 0.0010000000"),
        "{}",
        jumps[0]
    );
    assert!(jumps[998].contains("--probability 0.5000000000"));
    assert!(!jumps[999].contains("statistic"));
}

#[test]
fn an_endpoint_in_two_slices_is_programmed_once() {
    let ports = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
    let (payload, _) = render(vec![
        service(
            "dup",
            json!({"clusterIP": "10.96.0.22",
                   "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}),
        ),
        slice(
            "dup-1",
            "dup",
            "IPv4",
            ports.clone(),
            json!([
                endpoint("10.244.1.5", Some("node-1")),
                endpoint("10.244.1.6", Some("node-1"))
            ]),
        ),
        slice(
            "dup-2",
            "dup",
            "IPv4",
            ports,
            json!([endpoint("10.244.1.5", Some("node-1"))]),
        ),
    ]);
    assert_eq!(count(&payload, ":KUBE-SEP-"), 2, "{payload}");
    assert_eq!(
        payload.matches("--to-destination 10.244.1.5:8080").count(),
        1
    );
}

#[test]
fn an_endpoint_without_node_name_serves_cluster_traffic_but_is_never_local() {
    let ports = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
    let (payload, _) = render(vec![
        service(
            "nonode",
            json!({"clusterIP": "10.96.0.23", "type": "NodePort",
                   "externalTrafficPolicy": "Local",
                   "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                              "targetPort": 8080, "nodePort": 30123}]}),
        ),
        slice(
            "nonode-1",
            "nonode",
            "IPv4",
            ports,
            json!([endpoint("10.244.1.9", None)]),
        ),
    ]);
    // Cluster traffic (the ClusterIP) reaches it.
    assert!(
        payload.contains("--to-destination 10.244.1.9:8080"),
        "{payload}"
    );
    let svc_jumps = payload
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SVC-") && l.contains("-j KUBE-SEP-"))
        .count();
    assert_eq!(svc_jumps, 1);
    // It is on no node, so not on this one: external traffic to the Local NodePort is dropped
    // in filter and the external chain has no jump to a local-endpoints chain, as kube-proxy.
    assert!(
        payload.contains(
            "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"demo/nonode:http has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30123 -j DROP"
        ),
        "{payload}"
    );
    assert_eq!(count(&payload, ":KUBE-SVL-"), 0, "{payload}");
}

#[test]
fn an_ipv6_slice_of_an_ipv4_service_is_not_used() {
    let (payload, _) = render(vec![
        service(
            "fam",
            json!({"clusterIP": "10.96.0.24",
                   "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}),
        ),
        slice(
            "fam-1",
            "fam",
            "IPv6",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            json!([endpoint("fd00:10:244::5", Some("node-1"))]),
        ),
    ]);
    assert!(!payload.contains("fd00"), "{payload}");
    assert_eq!(count(&payload, ":KUBE-SEP-"), 0);
    // No endpoints of the family: the ClusterIP is rejected in filter, as kube-proxy does.
    assert!(
        payload.contains("-d 10.96.0.24 --dport 80 -j REJECT"),
        "{payload}"
    );
}

#[test]
fn headless_and_external_name_services_program_nothing_and_say_why() {
    let (payload, loaded) = render(vec![
        service(
            "headless",
            json!({"clusterIP": "None",
                   "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}),
        ),
        service(
            "ext",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ),
        slice(
            "headless-1",
            "headless",
            "IPv4",
            json!([{"name": "http", "port": 80, "protocol": "TCP"}]),
            json!([endpoint("10.244.1.5", Some("node-1"))]),
        ),
    ]);
    assert_eq!(count(&payload, ":KUBE-SVC-"), 0, "{payload}");
    assert!(!payload.contains("10.244.1.5"), "{payload}");
    let notes: Vec<String> = loaded.notes.iter().map(|n| n.to_string()).collect();
    assert!(
        notes.iter().any(|n| n.contains("demo/headless")),
        "{notes:?}"
    );
    assert!(notes.iter().any(|n| n.contains("demo/ext")), "{notes:?}");
}

#[test]
fn an_unnamed_port_and_app_protocol_program_as_kube_proxy_does() {
    let with = |app: Option<&str>| {
        let mut port = json!({"port": 80, "protocol": "TCP", "targetPort": 8080});
        // The EndpointSlice controller writes an unnamed port's name as "".
        let mut slice_port = json!({"name": "", "port": 8080, "protocol": "TCP"});
        if let Some(a) = app {
            port["appProtocol"] = json!(a);
            slice_port["appProtocol"] = json!(a);
        }
        render(vec![
            service("plain", json!({"clusterIP": "10.96.0.25", "ports": [port]})),
            slice(
                "plain-1",
                "plain",
                "IPv4",
                json!([slice_port]),
                json!([endpoint("10.244.1.5", Some("node-1"))]),
            ),
        ])
        .0
    };
    let plain = with(None);
    // kube-proxy's service port name without a port name is "namespace/name".
    assert!(
        plain.contains(
            "-A KUBE-SERVICES -m comment --comment \"demo/plain cluster IP\" -m tcp -p tcp -d 10.96.0.25 --dport 80 -j KUBE-SVC-"
        ),
        "{plain}"
    );
    assert!(plain.contains("--to-destination 10.244.1.5:8080"));
    // appProtocol changes nothing in the rules.
    assert_eq!(with(Some("kubernetes.io/h2c")), plain);
}

#[test]
fn a_slice_port_without_a_name_field_is_ignored_as_kube_proxy_does() {
    let (payload, _) = render(vec![
        service(
            "bare",
            json!({"clusterIP": "10.96.0.26",
                   "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}]}),
        ),
        slice(
            "bare-1",
            "bare",
            "IPv4",
            json!([{"port": 8080, "protocol": "TCP"}]),
            json!([endpoint("10.244.1.5", Some("node-1"))]),
        ),
    ]);
    assert!(
        payload.contains(
            "-A KUBE-SERVICES -m comment --comment \"demo/bare has no endpoints\" -m tcp -p tcp -d 10.96.0.26 --dport 80 -j REJECT"
        ),
        "{payload}"
    );
    assert!(!payload.contains("10.244.1.5"), "{payload}");
}
