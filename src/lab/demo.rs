//! `knat demo`: builds a two-node lab cluster, programs it with `knat render`, makes real
//! connections and prints what each one did, then shows how to debug the dropped one with
//! `iptables-save` and `knat trace`. Finishes in a few seconds and cleans up after itself.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::Instant;

use super::LabError;
use super::backend::Backend;
use super::cluster::{Lab, LabOptions};
use super::echo::ProbeResult;
use super::scenario::{Family, Proto, Role, Scenario, ServiceSpec};
use super::sys::{find_program, preflight, run};

/// Kubernetes namespace of the demo's Services.
const NAMESPACE: &str = "demo";
const CLIENT: &str = "client";
const VIP_NODE1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const VIP_NODE2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const WEB_NODE_PORT: u16 = 30080;
const API_NODE_PORT: u16 = 30081;
const EMPTY_NODE_PORT: u16 = 30082;

/// What a demo connection is expected to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Reaches a pod, which sees the sender's own address.
    Kept,
    /// Reaches a pod, which sees an address of the node the connection entered through.
    Masqueraded,
    /// Dropped (times out).
    Dropped,
    /// Refused.
    Refused,
}

/// One connection of the demo and what happened.
#[derive(Debug, Clone)]
pub struct DemoRow {
    pub from: String,
    pub target: SocketAddr,
    /// What the target is, e.g. `web LB VIP`.
    pub what: String,
    /// The node the connection entered the cluster through.
    pub via: String,
    pub expect: Expect,
    pub result: ProbeResult,
    /// Whether the result matches `expect`.
    pub as_expected: bool,
    /// What the pod saw, explained (`203.0.113.10 (client address kept)`), or `-`.
    pub saw: String,
}

/// What `knat demo` did.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub backend: Backend,
    pub rows: Vec<DemoRow>,
    /// `knat trace` output for the dropped packet, if `knat trace` ran.
    pub trace: Option<String>,
}

impl DemoReport {
    /// True when every connection behaved as expected.
    pub fn all_as_expected(&self) -> bool {
        self.rows.iter().all(|r| r.as_expected)
    }
}

fn ip4(ip: Ipv4Addr) -> IpAddr {
    IpAddr::V4(ip)
}

/// The demo cluster: a client, two nodes, web-1 and web-2 on node-1, api-1 on node-2; `web`
/// is an `externalTrafficPolicy: Local` LoadBalancer whose load balancer sends to both nodes
/// (one VIP routed to each), `api` a Cluster-policy NodePort, `empty` a NodePort without
/// endpoints.
pub fn demo_scenario() -> Scenario {
    Scenario::new(NAMESPACE)
        .node("node-1")
        .node("node-2")
        .pod("web-1", "node-1")
        .pod("web-2", "node-1")
        .pod("api-1", "node-2")
        .client(CLIENT)
        .service(
            ServiceSpec::load_balancer("web", 80, WEB_NODE_PORT)
                .local()
                .health_check(32080)
                .vip(ip4(VIP_NODE1))
                .vip(ip4(VIP_NODE2))
                .endpoint("web-1")
                .endpoint("web-2"),
        )
        .service(ServiceSpec::node_port("api", 80, API_NODE_PORT).endpoint("api-1"))
        .service(ServiceSpec::node_port("empty", 80, EMPTY_NODE_PORT))
        .route(ip4(VIP_NODE1), "node-1")
        .route(ip4(VIP_NODE2), "node-2")
}

struct Plan {
    from: &'static str,
    target: SocketAddr,
    what: &'static str,
    expect: Expect,
}

fn plan(s: &Scenario) -> Vec<Plan> {
    let node_port = |node: &str, port: u16| {
        SocketAddr::new(
            s.node_ip(node, Family::V4)
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            port,
        )
    };
    let vip = |ip: Ipv4Addr| SocketAddr::new(ip4(ip), 80);
    vec![
        Plan {
            from: CLIENT,
            target: vip(VIP_NODE1),
            what: "web LB VIP (Local)",
            expect: Expect::Kept,
        },
        Plan {
            from: CLIENT,
            target: node_port("node-1", WEB_NODE_PORT),
            what: "web NodePort (Local)",
            expect: Expect::Kept,
        },
        Plan {
            from: CLIENT,
            target: vip(VIP_NODE2),
            what: "web LB VIP (Local)",
            expect: Expect::Dropped,
        },
        Plan {
            from: CLIENT,
            target: node_port("node-2", WEB_NODE_PORT),
            what: "web NodePort (Local)",
            expect: Expect::Dropped,
        },
        Plan {
            from: CLIENT,
            target: node_port("node-1", API_NODE_PORT),
            what: "api NodePort (Cluster)",
            expect: Expect::Masqueraded,
        },
        Plan {
            from: CLIENT,
            target: node_port("node-2", API_NODE_PORT),
            what: "api NodePort (Cluster)",
            expect: Expect::Masqueraded,
        },
        Plan {
            from: CLIENT,
            target: node_port("node-1", EMPTY_NODE_PORT),
            what: "empty NodePort (no endpoints)",
            expect: Expect::Refused,
        },
        Plan {
            from: "api-1",
            target: vip(VIP_NODE1),
            what: "web LB VIP (Local)",
            expect: Expect::Kept,
        },
        Plan {
            from: "node-2",
            target: vip(VIP_NODE1),
            what: "web LB VIP (Local)",
            expect: Expect::Masqueraded,
        },
    ]
}

/// The node a connection from `from` to `target` enters the cluster through.
fn entry_node(s: &Scenario, from: &str, target: SocketAddr) -> String {
    let found = match s.role(from) {
        Some(Role::Node) => Some(from),
        Some(Role::Pod) => s.pod_spec(from).map(|p| p.node.as_str()),
        _ => s
            .node_owning(target.ip())
            .or_else(|| s.routed_node(target.ip())),
    };
    found.unwrap_or("?").to_string()
}

fn judge(
    s: &Scenario,
    from: &str,
    via: &str,
    expect: Expect,
    result: &ProbeResult,
) -> (bool, String) {
    let Some(reply) = result.reply() else {
        let ok = matches!(
            (expect, result),
            (Expect::Dropped, ProbeResult::TimedOut) | (Expect::Refused, ProbeResult::Refused)
        );
        return (ok, "-".to_string());
    };
    let saw = reply.saw.ip();
    if s.role(from) == Some(Role::Node) {
        // A node's own connection is masqueraded to its own address: nothing to tell apart.
        let ok = expect == Expect::Masqueraded && s.node_owning(saw) == Some(from);
        return (ok, format!("{saw} (masqueraded to {from} itself)"));
    }
    let own = s.host_ip(from, Family::of(saw));
    if own == Some(saw) {
        let whose = if s.role(from) == Some(Role::Pod) {
            "pod"
        } else {
            "client"
        };
        return (
            expect == Expect::Kept,
            format!("{saw} ({whose} address kept)"),
        );
    }
    if let Some(node) = s.node_owning(saw) {
        let ok = expect == Expect::Masqueraded && node == via;
        let side = if s.node_gateway(node, Family::of(saw)) == Some(saw) {
            "'s pod-side address"
        } else {
            ""
        };
        return (ok, format!("{saw} (masqueraded to {node}{side})"));
    }
    (false, format!("{saw} (unexpected)"))
}

fn io_error(source: std::io::Error) -> LabError {
    LabError::Io {
        context: "write the demo output".into(),
        source,
    }
}

fn pick_backend(requested: Option<Backend>) -> Result<Backend, LabError> {
    if let Some(backend) = requested {
        preflight(&[backend], false)?;
        return Ok(backend);
    }
    let mut last = None;
    for backend in Backend::ALL {
        match preflight(&[backend], false) {
            Ok(()) => return Ok(backend),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| LabError::Internal("no backend to try".into())))
}

/// Runs the demo, writing a readable report to `out`. `knat` is the knat binary (for
/// `render`, `trace`, and the `lab-echo`/`lab-probe` helpers); `backend` chooses the iptables
/// backend, or `None` for nft if available, else legacy.
pub fn run_demo(
    knat: &Path,
    backend: Option<Backend>,
    out: &mut impl Write,
) -> Result<DemoReport, LabError> {
    let started = Instant::now();
    let backend = pick_backend(backend)?;
    let scenario = demo_scenario();
    writeln!(
        out,
        "knat demo: a 2-node cluster in network namespaces, programmed by `knat render`, \
         iptables backend {backend}\n"
    )
    .map_err(io_error)?;
    describe_cluster(&scenario, out)?;

    let lab = Lab::build(scenario, LabOptions::new(knat, backend))?;
    lab.program_with_render()?;
    writeln!(
        out,
        "\nCluster built and programmed in {} ms (namespaces {}-*). Connections:\n",
        started.elapsed().as_millis(),
        lab.prefix()
    )
    .map_err(io_error)?;

    let rows = probe_all(&lab)?;
    print_table(&rows, out)?;
    let trace = debug_section(&lab, knat, out)?;
    let report = DemoReport {
        backend,
        rows,
        trace,
    };
    let verdict = if report.all_as_expected() {
        "every connection behaved as kube-proxy's rules prescribe"
    } else {
        "SOME CONNECTIONS DID NOT BEHAVE AS EXPECTED (marked with !)"
    };
    lab.teardown()?;
    writeln!(
        out,
        "\nDone in {} ms: {verdict}. All namespaces removed.",
        started.elapsed().as_millis()
    )
    .map_err(io_error)?;
    Ok(report)
}

fn describe_cluster(s: &Scenario, out: &mut impl Write) -> Result<(), LabError> {
    let v4 = Family::V4;
    let show = |ip: Option<IpAddr>| ip.map(|ip| ip.to_string()).unwrap_or_default();
    let mut lines = vec![format!(
        "  {CLIENT:<8} {:<15} external client; LB routes: {VIP_NODE1} -> node-1, {VIP_NODE2} -> node-2",
        show(s.client_ip(CLIENT, v4))
    )];
    for node in &s.nodes {
        let pods: Vec<String> = s
            .pods_on(node)
            .map(|p| format!("{} {}", p.name, show(s.pod_ip(&p.name, v4))))
            .collect();
        lines.push(format!(
            "  {node:<8} {:<15} pods: {}",
            show(s.node_ip(node, v4)),
            pods.join(", ")
        ));
    }
    lines.push(String::new());
    for service in &s.services {
        let endpoints: Vec<&str> = service.endpoints.iter().map(|e| e.pod.as_str()).collect();
        let policy = if service.external_local {
            "Local"
        } else {
            "Cluster"
        };
        lines.push(format!(
            "  service {NAMESPACE}/{:<6} clusterIP {}:{}  nodePort {}  externalTrafficPolicy {policy:<7}  endpoints: {}",
            service.name,
            show(s.cluster_ip(&service.name, v4)),
            service.port,
            service.node_port.map(|p| p.to_string()).unwrap_or_default(),
            if endpoints.is_empty() {
                "none".to_string()
            } else {
                endpoints.join(", ")
            }
        ));
    }
    writeln!(out, "{}", lines.join("\n")).map_err(io_error)
}

fn probe_all(lab: &Lab) -> Result<Vec<DemoRow>, LabError> {
    let s = lab.scenario();
    let plans = plan(s);
    let results: Vec<Result<ProbeResult, LabError>> = thread::scope(|scope| {
        let handles: Vec<_> = plans
            .iter()
            .map(|p| scope.spawn(move || lab.probe(p.from, p.target, Proto::Tcp)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(LabError::Internal("probe thread panicked".into())))
            })
            .collect()
    });
    plans
        .iter()
        .zip(results)
        .map(|(p, result)| {
            let result = result?;
            let via = entry_node(s, p.from, p.target);
            let (as_expected, saw) = judge(s, p.from, &via, p.expect, &result);
            Ok(DemoRow {
                from: p.from.to_string(),
                target: p.target,
                what: p.what.to_string(),
                via,
                expect: p.expect,
                result,
                as_expected,
                saw,
            })
        })
        .collect()
}

fn print_table(rows: &[DemoRow], out: &mut impl Write) -> Result<(), LabError> {
    let header = ["FROM", "TO", "WHAT", "VIA", "OUTCOME", "POD SAW SOURCE"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            let mark = if r.as_expected { " " } else { "!" };
            [
                format!("{mark}{}", r.from),
                r.target.to_string(),
                r.what.clone(),
                r.via.clone(),
                r.result.describe(),
                r.saw.clone(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cols: Vec<&str>| -> String {
        cols.iter()
            .zip(widths.iter())
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut text = vec![line(
        std::iter::once(" FROM")
            .chain(header.iter().skip(1).copied())
            .collect(),
    )];
    for row in &cells {
        text.push(line(row.iter().map(String::as_str).collect()));
    }
    writeln!(out, "{}", text.join("\n")).map_err(io_error)?;
    writeln!(
        out,
        "\n  Local: the client's address reaches the pod unchanged; a node without a local endpoint\n  \
         drops the packet (the load balancer's health check on port 32080 takes that node out).\n  \
         Cluster: any node forwards, and the pod sees the forwarding node's address (masquerade).\n  \
         A pod calling the LB VIP is short-circuited to an endpoint and keeps its own address."
    )
    .map_err(io_error)
}

/// Lines of an `iptables-save` dump that belong to one service port: rules with its comment
/// and every rule of a per-service chain such a rule mentions.
pub fn excerpt_for(dump: &str, port_name: &str) -> Vec<String> {
    let service_chain = |token: &str| {
        [
            "KUBE-SVC-",
            "KUBE-SVL-",
            "KUBE-EXT-",
            "KUBE-FW-",
            "KUBE-SEP-",
        ]
        .iter()
        .any(|p| token.starts_with(p))
    };
    let chain_of = |line: &str| -> Option<String> {
        line.strip_prefix("-A ")
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_string)
    };
    // Chains named by the service's own rules, then every chain those chains jump to.
    let mut chains = std::collections::BTreeSet::new();
    loop {
        let before = chains.len();
        for line in dump.lines() {
            let relevant =
                line.contains(port_name) || chain_of(line).is_some_and(|c| chains.contains(&c));
            if relevant {
                for token in line.split_whitespace().filter(|t| service_chain(t)) {
                    chains.insert(token.to_string());
                }
            }
        }
        if chains.len() == before {
            break;
        }
    }
    let mut lines = Vec::new();
    for line in dump.lines() {
        let in_chain = chain_of(line).is_some_and(|chain| chains.contains(&chain));
        if line.starts_with('*') || in_chain || (line.starts_with("-A") && line.contains(port_name))
        {
            lines.push(line.to_string());
        }
    }
    lines
}

fn debug_section(lab: &Lab, knat: &Path, out: &mut impl Write) -> Result<Option<String>, LabError> {
    let s = lab.scenario();
    let node = "node-2";
    let node_ip = s
        .node_ip(node, Family::V4)
        .ok_or_else(|| LabError::UnknownHost(node.into()))?;
    let client_ip = s
        .client_ip(CLIENT, Family::V4)
        .ok_or_else(|| LabError::UnknownHost(CLIENT.into()))?;
    let dump = lab.iptables_save(node, Family::V4)?;
    let dump_file = lab.workdir().join("node-2.iptables-save");
    std::fs::write(&dump_file, &dump).map_err(|source| LabError::Io {
        context: format!("write {}", dump_file.display()),
        source,
    })?;
    let port_name = format!("{NAMESPACE}/web:http");
    writeln!(
        out,
        "\nDebugging the drop: node-2 has no local endpoint for {port_name}.\n\n\
         $ ip netns exec {} {} | (rules of {port_name})",
        lab.namespace(node)?,
        lab.backend().save(Family::V4)
    )
    .map_err(io_error)?;
    for line in excerpt_for(&dump, &port_name) {
        writeln!(out, "  {line}").map_err(io_error)?;
    }
    let dst = SocketAddr::new(ip4(VIP_NODE2), 80);
    let args = [
        "trace".to_string(),
        "--dump".to_string(),
        dump_file.display().to_string(),
        "--src".to_string(),
        client_ip.to_string(),
        "--dst".to_string(),
        dst.to_string(),
        "--node-ip".to_string(),
        node_ip.to_string(),
    ];
    writeln!(out, "\n$ knat {}", args.join(" ")).map_err(io_error)?;
    let mut command = Command::new(knat);
    command.args(&args);
    let trace = match run(&mut command, None) {
        Ok(text) => {
            for line in text.lines() {
                writeln!(out, "  {line}").map_err(io_error)?;
            }
            Some(text)
        }
        Err(e) => {
            writeln!(out, "  [knat trace is not available in this build: {e}]")
                .map_err(io_error)?;
            None
        }
    };
    if find_program("conntrack").is_some() {
        writeln!(
            out,
            "\n(Live flows: `ip netns exec {} conntrack -L` while the demo runs.)",
            lab.namespace(node)?
        )
        .map_err(io_error)?;
    }
    Ok(trace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::echo::EchoReply;

    #[test]
    fn the_demo_scenario_is_valid() {
        assert_eq!(demo_scenario().validate(), Ok(()));
        assert_eq!(plan(&demo_scenario()).len(), 9);
    }

    #[test]
    fn entry_nodes_follow_routes_and_ownership() {
        let s = demo_scenario();
        let vip2 = SocketAddr::new(ip4(VIP_NODE2), 80);
        assert_eq!(entry_node(&s, CLIENT, vip2), "node-2");
        assert_eq!(entry_node(&s, "api-1", vip2), "node-2");
        let np = SocketAddr::new(ip4(Ipv4Addr::new(192, 168, 77, 11)), 30080);
        assert_eq!(entry_node(&s, CLIENT, np), "node-1");
    }

    #[test]
    fn judging_tells_kept_from_masqueraded() {
        let s = demo_scenario();
        let reached = |saw: [u8; 4]| ProbeResult::Reached {
            reply: EchoReply {
                pod: "web-1".into(),
                proto: "tcp".into(),
                saw: SocketAddr::from((saw, 40000)),
                local: SocketAddr::from(([10, 244, 1, 11], 8080)),
            },
        };
        let (ok, text) = judge(
            &s,
            CLIENT,
            "node-1",
            Expect::Kept,
            &reached([203, 0, 113, 10]),
        );
        assert!(ok, "{text}");
        let (ok, text) = judge(
            &s,
            CLIENT,
            "node-1",
            Expect::Masqueraded,
            &reached([192, 168, 77, 11]),
        );
        assert!(ok && text.contains("masqueraded to node-1"), "{text}");
        let (ok, _) = judge(
            &s,
            CLIENT,
            "node-2",
            Expect::Masqueraded,
            &reached([192, 168, 77, 11]),
        );
        assert!(!ok);
        let (ok, text) = judge(
            &s,
            "node-2",
            "node-2",
            Expect::Masqueraded,
            &reached([192, 168, 77, 12]),
        );
        assert!(ok, "{text}");
        let (ok, _) = judge(
            &s,
            CLIENT,
            "node-2",
            Expect::Dropped,
            &ProbeResult::TimedOut,
        );
        assert!(ok);
        let (ok, _) = judge(&s, CLIENT, "node-2", Expect::Dropped, &ProbeResult::Refused);
        assert!(!ok);
    }

    #[test]
    fn excerpts_follow_the_service_chains() {
        let dump = "*nat\n\
            -A KUBE-SERVICES -m comment --comment \"demo/web:http cluster IP\" -j KUBE-SVC-AAA\n\
            -A KUBE-SERVICES -m comment --comment \"demo/api:http cluster IP\" -j KUBE-SVC-BBB\n\
            -A KUBE-SVC-AAA -j KUBE-SEP-CCC\n\
            -A KUBE-SEP-CCC -j DNAT --to-destination 10.244.1.11:8080\n\
            -A KUBE-SVC-BBB -j KUBE-SEP-DDD\n\
            COMMIT\n";
        let lines = excerpt_for(dump, "demo/web:http");
        assert_eq!(lines.len(), 4);
        assert!(lines.iter().any(|l| l == "-A KUBE-SVC-AAA -j KUBE-SEP-CCC"));
        assert!(!lines.iter().any(|l| l.contains("BBB")));
    }
}
