//! `--detect-local-mode` with real packets: each of kube-proxy's four modes on both iptables
//! backends, in a lab whose pods are attached the way the mode expects (routed veths `vpN` for
//! ClusterCIDR and NodeCIDR, a `cni0` bridge for BridgeInterface, routed veths `vethN` for
//! InterfaceNamePrefix).
//!
//! ```text
//!  client-1 ── br0 ──┬── node-1 (knat's rules, the mode under test) ── pod cli-1 (local pod)
//!                    ├── node-2 (no rules) ── pod rp-2 (a pod of another node)
//!                    └── node-3 (no rules) ── pod web-3 (every endpoint)
//! ```
//!
//! `web` is a ClusterIP Service and `lcl` a NodePort Service with `externalTrafficPolicy:
//! Local`, both served only by web-3, so node-1 has no local endpoint of `lcl`. client-1 and
//! node-2 route `web`'s ClusterIP to node-1, and node-3 routes node-2's pod CIDR through node-1,
//! so every connection node-1 translates comes back through it. Only node-1 has rules.
//!
//! Every mode is run with `--cluster-cidr 10.244.0.0/16` too (kube-proxy ignores it outside
//! ClusterCIDR), so a mode that fell back to the cluster CIDR fails the checks that tell the
//! modes apart: the source address the endpoint sees is asserted for each connection.
//!
//! | connection | ClusterCIDR | NodeCIDR, BridgeInterface, InterfaceNamePrefix |
//! |---|---|---|
//! | cli-1 -> web ClusterIP | source cli-1 | source cli-1 |
//! | client-1 -> web ClusterIP (routed to node-1) | masqueraded (node-1) | masqueraded (node-1) |
//! | rp-2 -> web ClusterIP (routed to node-1) | source rp-2 (a pod) | masqueraded (not this node's pod) |
//! | cli-1 -> node-1:lcl NodePort | short-circuit, source cli-1 | short-circuit, source cli-1 |
//! | client-1 -> node-1:lcl NodePort | dropped (no local endpoint) | dropped |
//! | rp-2 -> node-1:lcl NodePort | short-circuit, source rp-2 | dropped |
//!
//! Needs root, iproute2 and the iptables backend; without them SKIPPED, or a failure with
//! `CI=true`. Each test builds its own lab (namespace names carry the process id and a
//! counter) and tears it down, also when it fails.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;

use knat::lab::{
    Backend, Family, Lab, LabOptions, PodLinks, ProbeResult, Proto, Scenario, ServiceSpec,
    preflight,
};

const KNAT: &str = env!("CARGO_BIN_EXE_knat");
const NODE: &str = "node-1";
const LOCAL_POD: &str = "cli-1";
const REMOTE_POD: &str = "rp-2";
const CLIENT: &str = "client-1";
const ENDPOINT: &str = "web-3";

/// A mode under test: the flags `knat render` gets and how the lab attaches pods.
struct Mode {
    flags: &'static [&'static str],
    links: PodLinks,
    /// Whether a pod of another node counts as pod traffic (only ClusterCIDR).
    remote_pods_are_local: bool,
    /// The detector rules node-1 must hold (local / not local), as upstream writes them.
    detector: (&'static str, &'static str),
}

fn cluster_cidr() -> Mode {
    Mode {
        flags: &["--detect-local-mode", "ClusterCIDR"],
        links: PodLinks::default(),
        remote_pods_are_local: true,
        detector: ("-s 10.244.0.0/16", "! -s 10.244.0.0/16"),
    }
}

fn node_cidr() -> Mode {
    Mode {
        flags: &["--detect-local-mode", "NodeCIDR"],
        links: PodLinks::default(),
        remote_pods_are_local: false,
        detector: ("-s 10.244.1.0/24", "! -s 10.244.1.0/24"),
    }
}

fn bridge_interface() -> Mode {
    Mode {
        flags: &[
            "--detect-local-mode",
            "BridgeInterface",
            "--pod-bridge-interface",
            "cni0",
        ],
        links: PodLinks::Bridge {
            name: "cni0".into(),
        },
        remote_pods_are_local: false,
        detector: ("-i cni0", "! -i cni0"),
    }
}

fn interface_name_prefix() -> Mode {
    Mode {
        flags: &[
            "--detect-local-mode",
            "InterfaceNamePrefix",
            "--pod-interface-name-prefix",
            "veth",
        ],
        links: PodLinks::Routed {
            prefix: "veth".into(),
        },
        remote_pods_are_local: false,
        detector: ("-i veth+", "! -i veth+"),
    }
}

fn scenario() -> Scenario {
    Scenario::new("detect")
        .node(NODE)
        .node("node-2")
        .node("node-3")
        .pod(LOCAL_POD, NODE)
        .pod(REMOTE_POD, "node-2")
        .pod(ENDPOINT, "node-3")
        .client(CLIENT)
        .service(ServiceSpec::cluster_ip("web", 80).endpoint(ENDPOINT))
        .service(
            ServiceSpec::node_port("lcl", 80, 30081)
                .local()
                .endpoint(ENDPOINT),
        )
        // The first Service's ClusterIP (see the scenario's address plan).
        .route(IpAddr::from([10, 96, 0, 10]), NODE)
}

fn can_run(backend: Backend) -> bool {
    match preflight(&[backend], false) {
        Ok(()) => true,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("CI=true and the detect-local netns tests cannot run: {e}");
            }
            eprintln!("\n*** SKIPPED: {e} ***\n");
            false
        }
    }
}

fn addr(lab: &Lab, host: &str) -> IpAddr {
    lab.scenario()
        .host_ip(host, Family::V4)
        .unwrap_or_else(|| panic!("{host} has no IPv4 address"))
}

/// Builds the lab, programs node-1 with `knat render` and the mode's flags, adds the routes
/// that bring every translated connection back through node-1, and returns node-1's rules.
fn build(mode: &Mode, backend: Backend) -> (Lab, String) {
    let mut options = LabOptions::new(Path::new(KNAT), backend);
    options.pod_links = mode.links.clone();
    let lab = Lab::build(scenario(), options).unwrap_or_else(|e| panic!("lab: {e}"));
    let manifests = lab.write_manifests().expect("manifests");
    let node_ip = addr(&lab, NODE).to_string();
    let out = Command::new(KNAT)
        .args(["render", "--node-name", NODE, "--node-ip", &node_ip])
        .args(["--cluster-cidr", "10.244.0.0/16"])
        .args(mode.flags)
        .arg(&manifests)
        .output()
        .expect("run knat render");
    assert!(
        out.status.success(),
        "knat render {:?}: {}",
        mode.flags,
        String::from_utf8_lossy(&out.stderr)
    );
    let payload = String::from_utf8_lossy(&out.stdout).into_owned();
    lab.load(NODE, Family::V4, &payload)
        .unwrap_or_else(|e| panic!("loading node-1's rules: {e}"));
    let s = lab.scenario();
    let cluster_ip = s.cluster_ip("web", Family::V4).expect("ClusterIP");
    let via_node1 = addr(&lab, NODE).to_string();
    let remote_cidr = s
        .pod_cidr("node-2", Family::V4)
        .expect("node-2 pod CIDR")
        .to_string();
    lab.exec(
        "node-2",
        "ip",
        &[
            "route",
            "add",
            &format!("{cluster_ip}/32"),
            "via",
            &via_node1,
        ],
    )
    .expect("node-2 routes the ClusterIP to node-1");
    lab.exec(
        "node-3",
        "ip",
        &["route", "replace", &remote_cidr, "via", &via_node1],
    )
    .expect("node-3 routes node-2's pods through node-1");
    let saved = lab.iptables_save(NODE, Family::V4).expect("iptables-save");
    (lab, payload + &saved)
}

/// The source address the endpoint saw, or the probe's failure.
fn seen_from(lab: &Lab, from: &str, to: SocketAddr) -> Result<IpAddr, ProbeResult> {
    match lab.probe(from, to, Proto::Tcp) {
        Ok(ProbeResult::Reached { reply }) => {
            assert_eq!(reply.pod, ENDPOINT, "{from} -> {to}: the only endpoint");
            Ok(reply.saw.ip())
        }
        Ok(other) => Err(other),
        Err(e) => panic!("probe {from} -> {to} could not run: {e}"),
    }
}

fn check(mode: Mode, backend: Backend) {
    if !can_run(backend) {
        return;
    }
    let (lab, rules) = build(&mode, backend);
    let (local, not_local) = mode.detector;
    assert!(
        rules.contains(&format!("{not_local} -j KUBE-MARK-MASQ"))
            && rules.contains(&format!("{local} -j KUBE-SVC-")),
        "{backend}: node-1 lacks the detector rules {local:?} / {not_local:?}:\n{rules}"
    );
    let s = lab.scenario();
    let cluster = s.cluster_addr("web", Family::V4).expect("ClusterIP");
    let node_port = s.node_port_addr("lcl", NODE, Family::V4).expect("NodePort");
    let node1 = addr(&lab, NODE);
    let (local_pod, remote_pod) = (addr(&lab, LOCAL_POD), addr(&lab, REMOTE_POD));
    let flags = mode.flags.join(" ");
    let ctx = |what: &str| format!("{backend}, {flags}: {what}\nnode-1's rules:\n{rules}");

    assert_eq!(
        seen_from(&lab, LOCAL_POD, cluster),
        Ok(local_pod),
        "{}",
        ctx("a local pod's ClusterIP connection keeps its source")
    );
    assert_eq!(
        seen_from(&lab, CLIENT, cluster),
        Ok(node1),
        "{}",
        ctx("a non-pod source routed to the ClusterIP is masqueraded")
    );
    let remote_expected = if mode.remote_pods_are_local {
        remote_pod
    } else {
        node1
    };
    assert_eq!(
        seen_from(&lab, REMOTE_POD, cluster),
        Ok(remote_expected),
        "{}",
        ctx("another node's pod routed to the ClusterIP")
    );
    assert_eq!(
        seen_from(&lab, LOCAL_POD, node_port),
        Ok(local_pod),
        "{}",
        ctx(
            "a local pod's NodePort connection to a Local service without local endpoints is short-circuited to the cluster-wide endpoints, unmasqueraded"
        )
    );
    assert_eq!(
        seen_from(&lab, CLIENT, node_port),
        Err(ProbeResult::TimedOut),
        "{}",
        ctx(
            "an external client's NodePort connection to a Local service without local endpoints is dropped"
        )
    );
    let remote_node_port = if mode.remote_pods_are_local {
        Ok(remote_pod)
    } else {
        Err(ProbeResult::TimedOut)
    };
    assert_eq!(
        seen_from(&lab, REMOTE_POD, node_port),
        remote_node_port,
        "{}",
        ctx("another node's pod at this node's Local NodePort")
    );
    lab.teardown().expect("teardown");
}

macro_rules! modes {
    ($($name:ident: $mode:ident, $backend:ident;)*) => {
        $(
            #[test]
            fn $name() {
                check($mode(), Backend::$backend);
            }
        )*
    };
}

modes! {
    cluster_cidr_nft: cluster_cidr, Nft;
    cluster_cidr_legacy: cluster_cidr, Legacy;
    node_cidr_nft: node_cidr, Nft;
    node_cidr_legacy: node_cidr, Legacy;
    bridge_interface_nft: bridge_interface, Nft;
    bridge_interface_legacy: bridge_interface, Legacy;
    interface_name_prefix_nft: interface_name_prefix, Nft;
    interface_name_prefix_legacy: interface_name_prefix, Legacy;
}
