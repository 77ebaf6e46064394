//! Real-kernel tests: knat's rendered rules loaded into network-namespace nodes, checked with
//! real TCP and UDP connections from a client, from pods and from nodes.
//!
//! One lab per iptables backend (nft and legacy) is built on first use and shared by that
//! backend's tests (probes only read it). Namespace names carry the process id and a counter,
//! so runs and labs never collide. Shared labs are torn down when the test process exits (the
//! lab's reaper deletes the namespaces, the echo servers exit with their stdin); the tests that
//! build their own lab tear it down themselves.
//!
//! Needs root, iproute2 and both iptables backends. Without them the tests print a loud
//! `SKIPPED:` line and pass, except with `CI=true`, where they fail.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use knat::lab::{
    Backend, EchoReply, EndpointState, Family, Lab, LabOptions, ProbeResult, Proto, Scenario,
    ServiceSpec, demo_scenario, preflight, run_demo,
};

const KNAT: &str = env!("CARGO_BIN_EXE_knat");

fn ip(text: &str) -> IpAddr {
    match text.parse() {
        Ok(ip) => ip,
        Err(e) => panic!("bad test address {text:?}: {e}"),
    }
}

/// True when the machine can run labs; otherwise SKIPPED (or a failure under `CI=true`).
fn can_run(backends: &[Backend]) -> bool {
    match preflight(backends, true) {
        Ok(()) => true,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true and the netns tests cannot run: {e}");
            }
            eprintln!("\n*** SKIPPED: {e} ***\n");
            false
        }
    }
}

/// The shared test cluster.
///
/// - node-1: web-1, web-2; node-2: api-1; node-3: tool-1; clients client-1 (203.0.113.10)
///   and client-2 (203.0.113.11).
/// - `web`: LoadBalancer, eTP=Local, endpoints web-1 and web-2 (node-1 only); VIP .10 and
///   externalIP .20 are routed to node-1, VIP .11 and externalIP .21 to node-2.
/// - `api`: NodePort, eTP=Cluster, endpoint api-1. `empty`: NodePort, no endpoints.
/// - `itl`: ClusterIP, iTP=Local, endpoints web-1 and api-1.
/// - `drain`: NodePort, eTP=Local, web-1 serving-terminating, api-1 ready.
/// - `sticky`: NodePort, eTP=Cluster, ClientIP affinity, endpoints web-1, web-2, api-1.
/// - `ranged`: LoadBalancer, eTP=Local, VIP .30 (node-1), source range 203.0.113.10/32, web-1.
/// - `dns`: UDP NodePort, eTP=Local, endpoint web-1.
fn test_scenario() -> Scenario {
    Scenario::new("lab")
        .with_ipv6()
        .node("node-1")
        .node("node-2")
        .node("node-3")
        .pod("web-1", "node-1")
        .pod("web-2", "node-1")
        .pod("api-1", "node-2")
        .pod("tool-1", "node-3")
        .client("client-1")
        .client("client-2")
        .service(
            ServiceSpec::load_balancer("web", 80, 30080)
                .local()
                .health_check(32080)
                .vip(ip("198.51.100.10"))
                .vip(ip("198.51.100.11"))
                .external_ip(ip("198.51.100.20"))
                .external_ip(ip("198.51.100.21"))
                .endpoint("web-1")
                .endpoint("web-2"),
        )
        .service(ServiceSpec::node_port("api", 80, 30081).endpoint("api-1"))
        .service(ServiceSpec::node_port("empty", 80, 30082))
        .service(
            ServiceSpec::cluster_ip("itl", 80)
                .internal_local()
                .endpoint("web-1")
                .endpoint("api-1"),
        )
        .service(
            ServiceSpec::node_port("drain", 80, 30084)
                .local()
                .endpoint_in("web-1", EndpointState::ServingTerminating)
                .endpoint("api-1"),
        )
        .service(
            ServiceSpec::node_port("sticky", 80, 30085)
                .affinity()
                .endpoint("web-1")
                .endpoint("web-2")
                .endpoint("api-1"),
        )
        .service(
            ServiceSpec::load_balancer("ranged", 80, 30086)
                .local()
                .health_check(32086)
                .vip(ip("198.51.100.30"))
                .source_range(match "203.0.113.10/32".parse() {
                    Ok(net) => net,
                    Err(e) => panic!("bad range: {e}"),
                })
                .endpoint("web-1"),
        )
        .service(
            ServiceSpec::node_port("dns", 53, 30087)
                .udp()
                .local()
                .endpoint("web-1"),
        )
        .route(ip("198.51.100.10"), "node-1")
        .route(ip("198.51.100.11"), "node-2")
        .route(ip("198.51.100.20"), "node-1")
        .route(ip("198.51.100.21"), "node-2")
        .route(ip("198.51.100.30"), "node-1")
}

fn build_lab(backend: Backend) -> Result<Lab, String> {
    let started = Instant::now();
    let lab = Lab::build(test_scenario(), LabOptions::new(Path::new(KNAT), backend))
        .map_err(|e| format!("building the {backend} lab failed: {e}"))?;
    lab.program_with_render()
        .map_err(|e| format!("programming the {backend} lab failed: {e}"))?;
    eprintln!(
        "{backend} lab {} ready in {} ms",
        lab.prefix(),
        started.elapsed().as_millis()
    );
    Ok(lab)
}

static NFT_LAB: OnceLock<Result<Lab, String>> = OnceLock::new();
static LEGACY_LAB: OnceLock<Result<Lab, String>> = OnceLock::new();

/// The shared lab of a backend, or `None` when the machine cannot run labs (SKIPPED).
fn shared(backend: Backend) -> Option<&'static Lab> {
    if !can_run(&[backend]) {
        return None;
    }
    let cell = match backend {
        Backend::Nft => &NFT_LAB,
        Backend::Legacy => &LEGACY_LAB,
    };
    match cell.get_or_init(|| build_lab(backend)) {
        Ok(lab) => Some(lab),
        Err(e) => panic!("{e}"),
    }
}

fn probe(lab: &Lab, from: &str, to: SocketAddr, proto: Proto) -> ProbeResult {
    match lab.probe(from, to, proto) {
        Ok(result) => result,
        Err(e) => panic!("probe {from} -> {to}/{proto} could not run: {e}"),
    }
}

fn probe_many(lab: &Lab, from: &str, to: SocketAddr, proto: Proto, n: u32) -> Vec<ProbeResult> {
    match lab.probe_many(from, to, proto, n) {
        Ok(results) => results,
        Err(e) => panic!("probes {from} -> {to}/{proto} could not run: {e}"),
    }
}

fn reached(lab: &Lab, from: &str, to: SocketAddr, proto: Proto) -> EchoReply {
    match probe(lab, from, to, proto) {
        ProbeResult::Reached { reply } => reply,
        other => panic!(
            "{from} -> {to}/{proto} on {}: expected to reach a pod, got {other:?}",
            lab.backend()
        ),
    }
}

fn assert_dropped(lab: &Lab, from: &str, to: SocketAddr, proto: Proto) {
    let result = probe(lab, from, to, proto);
    assert_eq!(
        result,
        ProbeResult::TimedOut,
        "{from} -> {to}/{proto} on {}: expected a DROP (timeout)",
        lab.backend()
    );
}

fn assert_refused(lab: &Lab, from: &str, to: SocketAddr, proto: Proto) {
    let result = probe(lab, from, to, proto);
    assert_eq!(
        result,
        ProbeResult::Refused,
        "{from} -> {to}/{proto} on {}: expected a REJECT (refused)",
        lab.backend()
    );
}

fn host_ip(lab: &Lab, host: &str, family: Family) -> IpAddr {
    match lab.scenario().host_ip(host, family) {
        Some(ip) => ip,
        None => panic!("{host} has no {family} address"),
    }
}

fn node_port(lab: &Lab, service: &str, node: &str, family: Family) -> SocketAddr {
    match lab.scenario().node_port_addr(service, node, family) {
        Some(addr) => addr,
        None => panic!("{service} has no node port on {node}"),
    }
}

fn cluster(lab: &Lab, service: &str) -> SocketAddr {
    match lab.scenario().cluster_addr(service, Family::V4) {
        Some(addr) => addr,
        None => panic!("{service} has no ClusterIP"),
    }
}

fn at(text: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(text), port)
}

fn pods(results: &[ProbeResult]) -> BTreeSet<String> {
    results
        .iter()
        .map(|r| match r.pod() {
            Some(pod) => pod.to_string(),
            None => panic!("a connection did not reach a pod: {r:?}"),
        })
        .collect()
}

fn assert_one_of(reply: &EchoReply, allowed: &[&str]) {
    assert!(
        allowed.contains(&reply.pod.as_str()),
        "reached {} but only {allowed:?} are valid endpoints",
        reply.pod
    );
}

// ---- the checks, shared by both backends -----------------------------------------------

fn local_nodeport_keeps_client_address(lab: &Lab) {
    let reply = reached(
        lab,
        "client-1",
        node_port(lab, "web", "node-1", Family::V4),
        Proto::Tcp,
    );
    assert_one_of(&reply, &["web-1", "web-2"]);
    assert_eq!(reply.saw.ip(), host_ip(lab, "client-1", Family::V4));
}

fn local_nodeport_drops_without_local_endpoint(lab: &Lab) {
    for node in ["node-2", "node-3"] {
        assert_dropped(
            lab,
            "client-1",
            node_port(lab, "web", node, Family::V4),
            Proto::Tcp,
        );
    }
}

fn local_vip_keeps_client_address(lab: &Lab) {
    let reply = reached(lab, "client-1", at("198.51.100.10", 80), Proto::Tcp);
    assert_one_of(&reply, &["web-1", "web-2"]);
    assert_eq!(reply.saw.ip(), host_ip(lab, "client-1", Family::V4));
}

fn local_vip_drops_on_node_without_endpoint(lab: &Lab) {
    assert_dropped(lab, "client-1", at("198.51.100.11", 80), Proto::Tcp);
}

fn local_external_ip_keeps_client_address(lab: &Lab) {
    let reply = reached(lab, "client-1", at("198.51.100.20", 80), Proto::Tcp);
    assert_one_of(&reply, &["web-1", "web-2"]);
    assert_eq!(reply.saw.ip(), host_ip(lab, "client-1", Family::V4));
}

fn local_external_ip_drops_on_node_without_endpoint(lab: &Lab) {
    assert_dropped(lab, "client-1", at("198.51.100.21", 80), Proto::Tcp);
}

fn cluster_policy_reaches_via_every_node_masqueraded(lab: &Lab) {
    for node in ["node-1", "node-2", "node-3"] {
        let reply = reached(
            lab,
            "client-1",
            node_port(lab, "api", node, Family::V4),
            Proto::Tcp,
        );
        assert_eq!(reply.pod, "api-1");
        let node_addresses = lab.scenario().node_addresses(node);
        assert!(
            node_addresses.contains(&reply.saw.ip()),
            "via {node}: the pod saw {} but masquerade should give one of {node_addresses:?}",
            reply.saw
        );
    }
}

fn no_endpoints_is_refused(lab: &Lab) {
    assert_refused(
        lab,
        "client-1",
        node_port(lab, "empty", "node-1", Family::V4),
        Proto::Tcp,
    );
    assert_refused(lab, "tool-1", cluster(lab, "empty"), Proto::Tcp);
}

fn pod_to_local_vip_from_node_without_endpoints_keeps_pod_address(lab: &Lab) {
    for vip in ["198.51.100.10", "198.51.100.11"] {
        let reply = reached(lab, "api-1", at(vip, 80), Proto::Tcp);
        assert_one_of(&reply, &["web-1", "web-2"]);
        assert_eq!(
            reply.saw.ip(),
            host_ip(lab, "api-1", Family::V4),
            "the pod's own address must be preserved (short-circuit)"
        );
    }
}

fn node_to_local_vip_without_endpoints_reaches_remote_endpoint(lab: &Lab) {
    let reply = reached(lab, "node-2", at("198.51.100.10", 80), Proto::Tcp);
    assert_one_of(&reply, &["web-1", "web-2"]);
    assert!(
        lab.scenario()
            .node_addresses("node-2")
            .contains(&reply.saw.ip()),
        "host traffic is masqueraded to the node, the pod saw {}",
        reply.saw
    );
}

fn hairpin_through_cluster_ip(lab: &Lab) {
    let reply = reached(lab, "api-1", cluster(lab, "api"), Proto::Tcp);
    assert_eq!(reply.pod, "api-1");
    let gateway = lab.scenario().node_gateway("node-2", Family::V4);
    assert_eq!(
        Some(reply.saw.ip()),
        gateway,
        "a pod reaching itself is masqueraded to its node"
    );
}

fn internal_traffic_policy_local(lab: &Lab) {
    let results = probe_many(lab, "web-2", cluster(lab, "itl"), Proto::Tcp, 8);
    assert_eq!(pods(&results), BTreeSet::from(["web-1".to_string()]));
    let reply = reached(lab, "api-1", cluster(lab, "itl"), Proto::Tcp);
    assert_eq!(reply.pod, "api-1");
    assert_dropped(lab, "tool-1", cluster(lab, "itl"), Proto::Tcp);
}

fn terminating_endpoint_fallback_for_local(lab: &Lab) {
    let client = host_ip(lab, "client-1", Family::V4);
    let reply = reached(
        lab,
        "client-1",
        node_port(lab, "drain", "node-1", Family::V4),
        Proto::Tcp,
    );
    assert_eq!(
        reply.pod, "web-1",
        "node-1 falls back to its serving-terminating endpoint"
    );
    assert_eq!(reply.saw.ip(), client);
    let reply = reached(
        lab,
        "client-1",
        node_port(lab, "drain", "node-2", Family::V4),
        Proto::Tcp,
    );
    assert_eq!(reply.pod, "api-1");
    assert_eq!(reply.saw.ip(), client);
    assert_dropped(
        lab,
        "client-1",
        node_port(lab, "drain", "node-3", Family::V4),
        Proto::Tcp,
    );
}

fn session_affinity_sticks(lab: &Lab) {
    let target = node_port(lab, "sticky", "node-1", Family::V4);
    let results = probe_many(lab, "client-1", target, Proto::Tcp, 12);
    let seen = pods(&results);
    assert_eq!(
        seen.len(),
        1,
        "ClientIP affinity must pin one backend, saw {seen:?}"
    );
}

fn traffic_spreads_without_affinity(lab: &Lab) {
    let results = probe_many(lab, "client-1", at("198.51.100.10", 80), Proto::Tcp, 16);
    let seen = pods(&results);
    assert!(seen.len() > 1, "16 connections all went to {seen:?}");
}

fn source_ranges_block_vip_not_node_port(lab: &Lab) {
    let reply = reached(lab, "client-1", at("198.51.100.30", 80), Proto::Tcp);
    assert_eq!(reply.saw.ip(), host_ip(lab, "client-1", Family::V4));
    assert_dropped(lab, "client-2", at("198.51.100.30", 80), Proto::Tcp);
    let reply = reached(
        lab,
        "client-2",
        node_port(lab, "ranged", "node-1", Family::V4),
        Proto::Tcp,
    );
    assert_eq!(reply.pod, "web-1");
    assert_eq!(reply.saw.ip(), host_ip(lab, "client-2", Family::V4));
}

fn udp_service(lab: &Lab) {
    let reply = reached(
        lab,
        "client-1",
        node_port(lab, "dns", "node-1", Family::V4),
        Proto::Udp,
    );
    assert_eq!(reply.pod, "web-1");
    assert_eq!(reply.proto, "udp");
    assert_eq!(reply.saw.ip(), host_ip(lab, "client-1", Family::V4));
    assert_dropped(
        lab,
        "client-1",
        node_port(lab, "dns", "node-2", Family::V4),
        Proto::Udp,
    );
    let reply = reached(lab, "tool-1", cluster(lab, "dns"), Proto::Udp);
    assert_eq!(reply.pod, "web-1");
    assert_eq!(reply.saw.ip(), host_ip(lab, "tool-1", Family::V4));
}

fn ipv6_local_nodeport(lab: &Lab) {
    let reply = reached(
        lab,
        "client-1",
        node_port(lab, "web", "node-1", Family::V6),
        Proto::Tcp,
    );
    assert_one_of(&reply, &["web-1", "web-2"]);
    assert_eq!(reply.saw.ip(), host_ip(lab, "client-1", Family::V6));
    assert!(reply.local.is_ipv6());
    assert_dropped(
        lab,
        "client-1",
        node_port(lab, "web", "node-2", Family::V6),
        Proto::Tcp,
    );
}

macro_rules! backend_tests {
    ($module:ident, $backend:expr, [$($check:ident),* $(,)?]) => {
        mod $module {
            $(
                #[test]
                fn $check() {
                    if let Some(lab) = super::shared($backend) {
                        super::$check(lab);
                    }
                }
            )*
        }
    };
}

backend_tests!(
    nft,
    knat::lab::Backend::Nft,
    [
        local_nodeport_keeps_client_address,
        local_nodeport_drops_without_local_endpoint,
        local_vip_keeps_client_address,
        local_vip_drops_on_node_without_endpoint,
        local_external_ip_keeps_client_address,
        local_external_ip_drops_on_node_without_endpoint,
        cluster_policy_reaches_via_every_node_masqueraded,
        no_endpoints_is_refused,
        pod_to_local_vip_from_node_without_endpoints_keeps_pod_address,
        node_to_local_vip_without_endpoints_reaches_remote_endpoint,
        hairpin_through_cluster_ip,
        internal_traffic_policy_local,
        terminating_endpoint_fallback_for_local,
        session_affinity_sticks,
        traffic_spreads_without_affinity,
        source_ranges_block_vip_not_node_port,
        udp_service,
        ipv6_local_nodeport,
    ]
);

backend_tests!(
    legacy,
    knat::lab::Backend::Legacy,
    [
        local_nodeport_keeps_client_address,
        local_nodeport_drops_without_local_endpoint,
        local_vip_keeps_client_address,
        local_vip_drops_on_node_without_endpoint,
        local_external_ip_keeps_client_address,
        local_external_ip_drops_on_node_without_endpoint,
        cluster_policy_reaches_via_every_node_masqueraded,
        no_endpoints_is_refused,
        pod_to_local_vip_from_node_without_endpoints_keeps_pod_address,
        node_to_local_vip_without_endpoints_reaches_remote_endpoint,
        hairpin_through_cluster_ip,
        internal_traffic_policy_local,
        terminating_endpoint_fallback_for_local,
        session_affinity_sticks,
        traffic_spreads_without_affinity,
        source_ranges_block_vip_not_node_port,
        udp_service,
        ipv6_local_nodeport,
    ]
);

// ---- lifecycle and the demo ----------------------------------------------------------------

fn lab_namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let output = Command::new("ip").args(["netns", "list"]).output();
    let text = match output {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => panic!("ip netns list: {e}"),
    };
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| name.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

#[test]
fn teardown_removes_every_namespace() {
    if !can_run(&[Backend::Nft]) {
        return;
    }
    let scenario = Scenario::new("lab")
        .node("node-1")
        .pod("web-1", "node-1")
        .client("client-1")
        .route(ip("198.51.100.10"), "node-1");
    let lab = match Lab::build(scenario, LabOptions::new(Path::new(KNAT), Backend::Nft)) {
        Ok(lab) => lab,
        Err(e) => panic!("build failed: {e}"),
    };
    let prefix = format!("{}-", lab.prefix());
    let workdir = lab.workdir().to_path_buf();
    assert_eq!(lab_namespaces_with_prefix(&prefix).len(), 4);
    // Without rules, the node routes the pod's address: plumbing works on its own.
    let reply = reached(&lab, "node-1", at("10.244.1.11", 8080), Proto::Tcp);
    assert_eq!(reply.pod, "web-1");
    // An unprogrammed node forwards a VIP packet to the fabric, which answers "unreachable":
    // so when a programmed node's probe times out, the node's rules dropped it.
    let result = probe(&lab, "client-1", at("198.51.100.10", 80), Proto::Tcp);
    assert!(
        matches!(result, ProbeResult::Failed { .. }),
        "expected an ICMP unreachable from the fabric, got {result:?}"
    );
    if let Err(e) = lab.teardown() {
        panic!("teardown failed: {e}");
    }
    assert!(lab_namespaces_with_prefix(&prefix).is_empty());
    assert!(!workdir.exists());
}

#[test]
fn dropping_a_lab_after_a_failure_cleans_up() {
    if !can_run(&[Backend::Nft]) {
        return;
    }
    let scenario = Scenario::new("lab").node("node-1").client("client-1");
    let lab = match Lab::build(scenario, LabOptions::new(Path::new(KNAT), Backend::Nft)) {
        Ok(lab) => lab,
        Err(e) => panic!("build failed: {e}"),
    };
    let prefix = format!("{}-", lab.prefix());
    let bad = lab.load(
        "node-1",
        Family::V4,
        "*nat\n-A NO-SUCH-CHAIN -j ACCEPT\nCOMMIT\n",
    );
    let message = match bad {
        Err(e) => e.to_string(),
        Ok(()) => panic!("a broken payload was accepted"),
    };
    assert!(
        message.contains("NO-SUCH-CHAIN") || message.contains("line"),
        "{message}"
    );
    drop(lab);
    assert!(lab_namespaces_with_prefix(&prefix).is_empty());
}

#[test]
fn demo_behaves_as_expected() {
    if !can_run(&[Backend::Nft]) {
        return;
    }
    assert!(demo_scenario().validate().is_ok());
    let mut out = Vec::new();
    let started = Instant::now();
    let report = match run_demo(Path::new(KNAT), Some(Backend::Nft), &mut out) {
        Ok(report) => report,
        Err(e) => panic!("demo failed: {e}\n{}", String::from_utf8_lossy(&out)),
    };
    let text = String::from_utf8_lossy(&out);
    assert!(report.all_as_expected(), "{text}");
    assert!(
        text.contains("dropped (timeout)") && text.contains("refused"),
        "{text}"
    );
    assert!(
        text.contains("KUBE-EXTERNAL-SERVICES"),
        "the excerpt shows the DROP:\n{text}"
    );
    assert!(
        report.trace.as_deref().is_some_and(|t| t.contains("DROP")),
        "`knat trace` explains the dropped packet:\n{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the demo took {:?}",
        started.elapsed()
    );
}

#[test]
fn demo_cleans_up_on_ctrl_c() {
    if !can_run(&[Backend::Nft]) {
        return;
    }
    let child = Command::new(KNAT)
        .arg("demo")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => panic!("cannot start knat demo: {e}"),
    };
    let prefix = format!("knat-{}-", child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab_namespaces_with_prefix(&prefix).is_empty() && Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("knat demo exited ({status}) before building its lab");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !lab_namespaces_with_prefix(&prefix).is_empty(),
        "the demo built no lab"
    );
    // Ctrl-C, sent to the demo process only (by its PID). A shell running the tests in the
    // background makes children ignore SIGINT; then SIGKILL stands in for it: either way the
    // process ends without unwinding and only the reaper can clean up.
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -INT failed");
    let deadline = Instant::now() + Duration::from_millis(300);
    let mut status = None;
    while status.is_none() && Instant::now() < deadline {
        status = child.try_wait().ok().flatten();
        std::thread::sleep(Duration::from_millis(10));
    }
    if status.is_none() {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
        status = child.wait().ok();
    }
    assert!(
        status.is_some_and(|s| !s.success()),
        "the demo was expected to be interrupted, it ended with {status:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab_namespaces_with_prefix(&prefix).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lab_namespaces_with_prefix(&prefix), Vec::<String>::new());
}

/// The demo's manifests, checked in so they can be read and fed to `knat render` by hand.
/// Regenerate with `KNAT_UPDATE_FIXTURES=1 cargo test --test netns demo_fixture`.
#[test]
fn demo_fixture_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures/demo-cluster.yaml");
    let generated = match demo_scenario().manifests() {
        Ok(yaml) => format!(
            "# The `knat demo` cluster (generated from knat::lab::demo_scenario; do not edit).\n\
             # Try: knat render --node-name node-2 --cluster-cidr 10.244.0.0/16 \
             --node-ip 192.168.77.12 {}\n{yaml}",
            "integration/fixtures/demo-cluster.yaml"
        ),
        Err(e) => panic!("demo manifests: {e}"),
    };
    if std::env::var("KNAT_UPDATE_FIXTURES").is_ok_and(|v| v == "1")
        && let Err(e) = std::fs::write(&path, &generated)
    {
        panic!("write {}: {e}", path.display());
    }
    let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "{} is stale; regenerate with KNAT_UPDATE_FIXTURES=1 cargo test --test netns demo_fixture",
        path.display()
    );
}

/// Kills the agent (by PID) when the test ends, also on failure.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The cluster of the agent test: `web` is a NodePort service on two nodes; `endpoints` and
/// `local` are what the test changes in the manifests the agent reads.
fn agent_scenario(endpoints: &[&str], local: bool) -> Scenario {
    let mut web = ServiceSpec::node_port("web", 80, 30080);
    if local {
        web = web.local();
    }
    for pod in endpoints {
        web = web.endpoint(pod);
    }
    Scenario::new("agent")
        .node("node-1")
        .node("node-2")
        .pod("web-1", "node-1")
        .pod("web-2", "node-2")
        .client("client-1")
        .service(web)
}

/// `knat run --from-files` as node-1's agent (issue 4): the packets follow the manifests as a
/// pod is added and removed and the traffic policy flips, with no `knat render` involved.
#[test]
fn agent_from_files_programs_a_node_and_packets_follow_changes() {
    if !can_run(&[Backend::Nft]) {
        return;
    }
    let lab = Lab::build(
        agent_scenario(&["web-1"], true),
        LabOptions::new(Path::new(KNAT), Backend::Nft),
    )
    .expect("build the lab");
    let dir = lab.workdir().join("agent-manifests");
    std::fs::create_dir_all(&dir).expect("manifests dir");
    let write = |scenario: &Scenario| {
        let yaml = scenario.manifests().expect("manifests");
        let tmp = dir.join(".cluster.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write manifests");
        std::fs::rename(&tmp, dir.join("cluster.yaml")).expect("rename manifests");
    };
    write(&agent_scenario(&["web-1"], true));
    let node = lab.namespace("node-1").expect("node-1 namespace");
    let log = std::fs::File::create(lab.workdir().join("agent.log")).expect("agent log");
    let _agent = Agent(
        Command::new("ip")
            .args(["netns", "exec", &node, KNAT, "run", "--from-files"])
            .arg(&dir)
            .args([
                "--hostname-override",
                "node-1",
                "--cluster-cidr",
                "10.244.0.0/16",
            ])
            .args(["--iptables-backend", "nft", "--ip-families", "ipv4"])
            .args([
                "--iptables-min-sync-period",
                "100ms",
                "--files-poll-interval",
                "100ms",
            ])
            .args(["--healthz-bind-address", "127.0.0.1:10256"])
            .args(["--metrics-bind-address", "127.0.0.1:10249"])
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start knat run"),
    );
    let s = lab.scenario();
    let client = s.client_ip("client-1", Family::V4).expect("client address");
    let target = SocketAddr::new(
        s.node_ip("node-1", Family::V4).expect("node-1 address"),
        30080,
    );
    let agent_log = || std::fs::read_to_string(lab.workdir().join("agent.log")).unwrap_or_default();
    // Waits (bounded) until a probe from the client gives what `want` accepts.
    let wait_for = |what: &str, want: &dyn Fn(&ProbeResult) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = lab.probe("client-1", target, Proto::Tcp).expect("probe");
            if want(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: last probe {got:?}\nagent log:\n{}",
                agent_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let reached =
        |pod: &'static str| move |r: &ProbeResult| r.reply().is_some_and(|e| e.pod == pod);

    // Local, local endpoint: reached, client address kept.
    let got = wait_for("Local with web-1 on node-1", &reached("web-1"));
    assert_eq!(got.reply().map(|r| r.saw.ip()), Some(client), "{got:?}");

    // The local pod goes away, a remote one remains: Local drops on node-1.
    write(&agent_scenario(&["web-2"], true));
    wait_for("Local without a local endpoint", &|r| {
        matches!(r, ProbeResult::TimedOut)
    });

    // Flip to Cluster: node-1 forwards to web-2 on node-2, masqueraded.
    write(&agent_scenario(&["web-2"], false));
    let got = wait_for("Cluster to web-2", &reached("web-2"));
    assert_ne!(
        got.reply().map(|r| r.saw.ip()),
        Some(client),
        "masqueraded: {got:?}"
    );

    // Back to Local with web-1 added again: the client address is kept again.
    write(&agent_scenario(&["web-1", "web-2"], true));
    let got = wait_for("Local with web-1 back", &reached("web-1"));
    assert_eq!(got.reply().map(|r| r.saw.ip()), Some(client), "{got:?}");
    for _ in 0..8 {
        let r = lab.probe("client-1", target, Proto::Tcp).expect("probe");
        assert_eq!(
            r.reply().map(|e| e.pod.as_str()),
            Some("web-1"),
            "only the local pod: {r:?}"
        );
    }
}
