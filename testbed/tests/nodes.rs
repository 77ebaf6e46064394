//! The real-node tier: knat as operators run it. Two kubelet nodes (kubelet + containerd +
//! runc + CNI bridge, see `knat_testbed::node`), knat's image built by `scripts/image.sh`, its
//! DaemonSet applied from `daemonset/` through a kustomize overlay holding only what an
//! operator sets (image, API server address, cluster CIDR), taking over live from upstream
//! kube-proxy's DaemonSet under continuous client traffic, and handing back to it.
//!
//! Every step's connection counts are printed as a table at the end; the goal for every
//! switch is zero failed connections. Root, the Kubernetes binaries (`scripts/build-k8s.sh`),
//! containerd, runc, the CNI plugins, umoci, skopeo and mmdebstrap are needed; under `CI=true`
//! their absence fails the test.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use knat_testbed::cluster::{CLIENT_IP, NodeCluster, NodeRequest, node_ip};
use knat_testbed::control_plane::K8sBinaries;
use knat_testbed::images::{self, Images};
use knat_testbed::node::KUBELET_TUNABLES;
use knat_testbed::proxies::{self, Proxy};
use knat_testbed::traffic::Traffic;

const NODE1: &str = "node-1";
const NODE2: &str = "node-2";
const SPREAD_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const SOLO_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 11);
const STACKED_VIP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 12);
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// Settle time after a switch during which attempts still count in its phase.
const SETTLE: Duration = Duration::from_secs(5);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn host_tunables() -> Vec<(String, String)> {
    KUBELET_TUNABLES
        .iter()
        .chain([("net/ipv4/conf/all/route_localnet", "")].iter())
        .map(|(path, _)| {
            let value = std::fs::read_to_string(format!("/proc/sys/{path}")).unwrap_or_default();
            (path.to_string(), value.trim().to_string())
        })
        .collect()
}

fn kubectl(c: &NodeCluster, args: &[&str]) -> String {
    match c.kubectl(args, None) {
        Ok(out) => out,
        Err(e) => panic!("kubectl {}: {e}", args.join(" ")),
    }
}

fn apply(c: &NodeCluster, yaml: &str) {
    if let Err(e) = c.kubectl(&["apply", "-f", "-"], Some(yaml)) {
        panic!("kubectl apply: {e}");
    }
}

fn daemonset_ready(c: &NodeCluster, name: &str) -> Duration {
    proxies::wait_daemonset(c, name).unwrap_or_else(|e| panic!("{e}"))
}

/// One field of knat's DaemonSet (`-o jsonpath=...`).
fn knat_ds(c: &NodeCluster, jsonpath: &str) -> String {
    kubectl(
        c,
        &["-n", "kube-system", "get", "ds", "knat", "-o", jsonpath],
    )
}

fn curl(c: &NodeCluster, host: &str, url: &str) -> Result<String, String> {
    c.exec_in(host, "curl", &["-sS", "-m", "3", "-i", url])
        .map_err(|e| e.to_string())
}

/// The body of a 200 answer, or what went wrong.
fn get_body(c: &NodeCluster, host: &str, url: &str) -> Result<String, String> {
    let text = curl(c, host, url)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {text}"))?;
    if head.starts_with("HTTP/1.1 200") {
        Ok(body.trim().to_string())
    } else {
        Err(head.lines().next().unwrap_or_default().to_string())
    }
}

fn client_ip_of(answer: &str) -> String {
    answer
        .rsplit_once(':')
        .map(|(ip, _)| ip)
        .unwrap_or(answer)
        .to_string()
}

fn service_port(c: &NodeCluster, service: &str, field: &str) -> u16 {
    let out = kubectl(
        c,
        &[
            "-n",
            "web",
            "get",
            "svc",
            service,
            "-o",
            &format!("jsonpath={{{field}}}"),
        ],
    );
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{service} {field}: {e} in {out:?}"))
}

fn set_lb_ip(c: &NodeCluster, service: &str, vip: Ipv4Addr) {
    let patch = format!(r#"{{"status":{{"loadBalancer":{{"ingress":[{{"ip":"{vip}"}}]}}}}}}"#);
    kubectl(
        c,
        &[
            "-n",
            "web",
            "patch",
            "svc",
            service,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ],
    );
}

fn pod_on(c: &NodeCluster, app: &str, node: &str) -> (String, String) {
    let out = kubectl(
        c,
        &[
            "-n",
            "web",
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "--field-selector",
            &format!("spec.nodeName={node},status.phase=Running"),
            "-o",
            "jsonpath={.items[0].metadata.name} {.items[0].status.podIP}",
        ],
    );
    let mut parts = out.split_whitespace();
    let name = parts.next().unwrap_or_default().to_string();
    let ip = parts.next().unwrap_or_default().to_string();
    assert!(!ip.is_empty(), "no running {app} pod on {node}: {out:?}");
    (name, ip)
}

fn knat_logs(c: &NodeCluster, node: &str) -> String {
    let pod = kubectl(
        c,
        &[
            "-n",
            "kube-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=knat",
            "--field-selector",
            &format!("spec.nodeName={node}"),
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    );
    c.kubectl(
        &["-n", "kube-system", "logs", pod.trim(), "-c", "knat"],
        None,
    )
    .unwrap_or_else(|e| format!("(no logs: {e})"))
}

struct Row {
    step: &'static str,
    /// Whether the goal for this step is zero failed connections (the incident step shows
    /// what a misnamed proxy does, so it has none).
    goal_zero: bool,
    attempted: usize,
    failed: usize,
    note: String,
}

#[test]
fn knat_daemonset_on_real_kubelet_nodes() {
    if !knat_testbed::cluster::test_prerequisites("real-node tier") {
        return;
    }
    let tunables_before = host_tunables();
    let repo = repo();
    let binaries = K8sBinaries::locate(&repo, std::env::var("CI").as_deref() == Ok("true"))
        .expect("Kubernetes binaries (scripts/build-k8s.sh)");
    let image_dir = repo.join("target/images");
    let t = Instant::now();
    let images: Images = images::build(&repo, &image_dir).unwrap_or_else(|e| panic!("{e}"));
    let image_time = t.elapsed();

    let requests = [
        NodeRequest {
            name: NODE1.into(),
            hostname: format!("host-of-{NODE1}"),
        },
        NodeRequest {
            name: NODE2.into(),
            hostname: format!("host-of-{NODE2}"),
        },
    ];
    let t = Instant::now();
    let c =
        NodeCluster::start(binaries, &requests, &images.all()).unwrap_or_else(|e| panic!("{e}"));
    let cluster_time = t.elapsed();
    let mut rows: Vec<Row> = Vec::new();

    // --- upstream kube-proxy as the DaemonSet, workloads, traffic -----------------------------
    let up = |proxy| proxies::deploy(&c, proxy, &repo, &images).unwrap_or_else(|e| panic!("{e}"));
    let down = |proxy| proxies::remove(&c, proxy).unwrap_or_else(|e| panic!("{e}"));
    let kube_proxy_ready = up(Proxy::KubeProxy);
    let workloads = std::fs::read_to_string(repo.join("testbed/manifests/workloads.yaml"))
        .expect("workloads manifest")
        .replace("@IMAGE@", &images.agnhost.reference)
        .replace("@NODE1@", NODE1)
        .replace("@NODE2@", NODE2);
    apply(&c, &workloads);
    for (service, vip) in [
        ("spread-lb", SPREAD_VIP),
        ("solo-local", SOLO_VIP),
        ("stacked-lb", STACKED_VIP),
    ] {
        set_lb_ip(&c, service, vip);
    }
    for deployment in ["solo", "stacked-a", "stacked-b"] {
        kubectl(
            &c,
            &[
                "-n",
                "web",
                "rollout",
                "status",
                &format!("deploy/{deployment}"),
                "--timeout=180s",
            ],
        );
    }
    // Anti-affinity: one spread pod per node, the third Pending.
    c.wait_for_within("two spread pods Ready", READY_TIMEOUT, || {
        let out = c.kubectl(
            &[
                "-n",
                "web",
                "get",
                "deploy",
                "spread",
                "-o",
                "jsonpath={.status.readyReplicas}",
            ],
            None,
        )?;
        Ok((out.trim() == "2").then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let phases = kubectl(
        &c,
        &[
            "-n",
            "web",
            "get",
            "pods",
            "-l",
            "app=spread",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ],
    );
    let mut phases: Vec<&str> = phases.split_whitespace().collect();
    phases.sort_unstable();
    assert_eq!(
        phases,
        ["Pending", "Running", "Running"],
        "anti-affinity: one pod per node, one Pending"
    );

    c.route_vip(SPREAD_VIP, NODE1).expect("route");
    c.route_vip(SOLO_VIP, NODE2).expect("route");
    c.route_vip(STACKED_VIP, NODE1).expect("route");
    let answer = get_body(&c, "client", &format!("http://{SPREAD_VIP}/clientip"));
    assert_eq!(
        answer.as_deref().map(client_ip_of),
        Ok(CLIENT_IP.to_string()),
        "kube-proxy: Local LB keeps the client address"
    );

    let target = SocketAddr::from((SPREAD_VIP, 80));
    let traffic =
        Traffic::start(&c.netns("client"), target, "/clientip", "kube-proxy").expect("traffic");
    traffic.wait_attempts("kube-proxy", 40, Duration::from_secs(30));
    let kp = traffic.counts("kube-proxy");
    rows.push(Row {
        goal_zero: true,
        step: "kube-proxy serving",
        attempted: kp.attempted,
        failed: kp.failed,
        note: format!("DaemonSet Ready {:.1?} after apply", kube_proxy_ready),
    });

    // --- takeover: remove kube-proxy's DaemonSet (its rules stay), apply knat's ----------------
    traffic.phase("takeover");
    down(Proxy::KubeProxy);
    let knat_ready = up(Proxy::Knat);
    std::thread::sleep(SETTLE);
    let takeover = traffic.counts("takeover");
    let log1 = knat_logs(&c, NODE1);
    assert!(
        log1.contains("sync done"),
        "knat on {NODE1} synced:\n{log1}"
    );
    rows.push(Row {
        goal_zero: true,
        step: "kube-proxy -> knat",
        attempted: takeover.attempted,
        failed: takeover.failed,
        note: format!("knat Ready {:.1?} after apply", knat_ready),
    });
    traffic.phase("knat");

    // --- what the DaemonSet must do, checked with real packets ---------------------------------
    let spread = get_body(&c, "client", &format!("http://{SPREAD_VIP}/clientip"))
        .expect("spread LB via node-1");
    assert_eq!(
        client_ip_of(&spread),
        CLIENT_IP.to_string(),
        "Local LB: the pod sees the client"
    );
    let solo_np = service_port(&c, "solo-local", ".spec.ports[0].nodePort");
    let n1 = node_ip(0);
    let n2 = node_ip(1);
    let via_node1 = get_body(&c, "client", &format!("http://{n1}:{solo_np}/clientip"))
        .expect("Local NodePort on node-1");
    assert_eq!(
        client_ip_of(&via_node1),
        CLIENT_IP.to_string(),
        "Local NodePort: the pod sees the client"
    );
    assert!(
        get_body(&c, "client", &format!("http://{n2}:{solo_np}/clientip")).is_err(),
        "Local NodePort on a node without endpoints drops"
    );
    assert!(
        get_body(&c, "client", &format!("http://{SOLO_VIP}/clientip")).is_err(),
        "Local LB VIP routed to a node without endpoints drops"
    );
    let hc = service_port(&c, "solo-local", ".spec.healthCheckNodePort");
    let hc1 = curl(&c, "client", &format!("http://{n1}:{hc}/")).expect("health check node-1");
    assert!(
        hc1.starts_with("HTTP/1.1 200"),
        "health check on node-1: {hc1}"
    );
    assert!(
        hc1.contains("\"localEndpoints\": 1") || hc1.contains("\"localEndpoints\":1"),
        "local count: {hc1}"
    );
    assert!(
        hc1.to_ascii_lowercase()
            .contains("x-load-balancing-endpoint-weight: 1"),
        "weight header: {hc1}"
    );
    let hc2 = curl(&c, "client", &format!("http://{n2}:{hc}/")).expect("health check node-2");
    assert!(
        hc2.starts_with("HTTP/1.1 503"),
        "health check on node-2: {hc2}"
    );
    let cluster_np = service_port(&c, "solo-cluster", ".spec.ports[0].nodePort");
    let masq = get_body(&c, "client", &format!("http://{n2}:{cluster_np}/clientip"))
        .expect("Cluster NodePort via node-2");
    assert_ne!(
        client_ip_of(&masq),
        CLIENT_IP.to_string(),
        "Cluster policy masquerades"
    );
    let cluster_ip = kubectl(
        &c,
        &[
            "-n",
            "web",
            "get",
            "svc",
            "solo-cluster",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    );
    let (_, pod_ip) = pod_on(&c, "spread", NODE2);
    let dial = get_body(
        &c,
        NODE2,
        &format!(
            "http://{pod_ip}:8080/dial?request=clientip&host={}&port=80&protocol=http&tries=1",
            cluster_ip.trim()
        ),
    )
    .expect("pod dials a ClusterIP");
    assert!(
        dial.contains(&pod_ip),
        "a pod reaches a ClusterIP (and the pod behind it sees the pod): {dial}"
    );
    let localhost = get_body(&c, NODE1, &format!("http://127.0.0.1:{solo_np}/clientip"));
    assert!(
        localhost.is_ok(),
        "localhost NodePort on node-1 answers: {localhost:?}"
    );
    // Only the ServiceAccount token and knat's RBAC: what it may and may not do.
    // `kubectl auth can-i` answers by exit status: 0 for yes, 1 for no.
    let can = |verb: &str, resource: &str| {
        let args = [
            "auth",
            "can-i",
            verb,
            resource,
            "--as=system:serviceaccount:kube-system:knat",
        ];
        match c.kubectl(&args, None) {
            Ok(out) => out.trim().to_string(),
            Err(e) if e.to_string().contains("exit status: 1") => "no".to_string(),
            Err(e) => panic!("kubectl auth can-i: {e}"),
        }
    };
    assert_eq!(can("watch", "endpointslices.discovery.k8s.io"), "yes");
    assert_eq!(can("list", "services"), "yes");
    assert_eq!(can("get", "secrets"), "no");
    assert_eq!(can("update", "services"), "no");
    let spec = knat_ds(
        &c,
        "jsonpath={.spec.template.spec.containers[0].securityContext}",
    );
    assert!(
        spec.contains("\"privileged\":false")
            && spec.contains("NET_ADMIN")
            && spec.contains("NET_RAW"),
        "unprivileged, NET_ADMIN+NET_RAW: {spec}"
    );

    // --- knat doctor, live: spread is balanced, stacked is 3:1 ----------------------------------
    let knat_bin = repo.join("target/release/knat");
    let kubeconfig = c
        .control_plane()
        .expect("control plane")
        .admin_kubeconfig()
        .display()
        .to_string();
    let doctor = std::process::Command::new("ip")
        .args(["netns", "exec", &c.netns("fabric")])
        .arg(&knat_bin)
        .args(["doctor", "--kubeconfig", &kubeconfig, "--node-name", NODE1])
        .output()
        .expect("run knat doctor");
    let doctor_text = String::from_utf8_lossy(&doctor.stdout).to_string();
    eprintln!(
        "knat doctor (live):\n{doctor_text}{}",
        String::from_utf8_lossy(&doctor.stderr)
    );
    // Each Service's block runs from its header line to the next blank line.
    let block_of = |svc: &str| {
        let start = doctor_text
            .find(&format!("{svc}  "))
            .unwrap_or(doctor_text.len());
        let rest = &doctor_text[start..];
        rest[..rest.find("\n\n").unwrap_or(rest.len())].to_string()
    };
    let stacked = block_of("web/stacked-lb");
    assert!(
        stacked.contains("max/min pod load: 3.00  IMBALANCED"),
        "doctor reports stacked-lb 3:1 and imbalanced:\n{doctor_text}"
    );
    let balanced = block_of("web/spread-lb");
    assert!(
        balanced.contains("max/min pod load: 1.00") && !balanced.contains("IMBALANCED"),
        "doctor reports spread-lb balanced:\n{doctor_text}"
    );

    // --- rolling update to a new tag under traffic ---------------------------------------------
    let (name, tag) = images.knat.reference.rsplit_once(':').expect("tag");
    let rolled = format!("{name}:{tag}-rollout");
    for node in c.nodes() {
        node.ctr(&["images", "tag", "--force", &images.knat.reference, &rolled])
            .expect("ctr tag");
    }
    traffic.phase("rollout");
    kubectl(
        &c,
        &[
            "-n",
            "kube-system",
            "set",
            "image",
            "ds/knat",
            &format!("knat={rolled}"),
        ],
    );
    let rollout = daemonset_ready(&c, "knat");
    std::thread::sleep(SETTLE);
    let r = traffic.counts("rollout");
    rows.push(Row {
        goal_zero: true,
        step: "knat rolling update",
        attempted: r.attempted,
        failed: r.failed,
        note: format!("new tag on both nodes in {rollout:.1?}"),
    });

    // --- the seed's incident: a DaemonSet without --hostname-override --------------------------
    // The nodes' host names (host-of-node-N) differ from their Node names, as on many clouds.
    traffic.phase("incident");
    let args = knat_ds(&c, "jsonpath={.spec.template.spec.containers[0].args}");
    let args: Vec<String> = serde_json::from_str(&args).expect("args are a JSON list");
    let without: Vec<String> = args
        .into_iter()
        .filter(|a| !a.starts_with("--hostname-override"))
        .collect();
    let patch = serde_json::json!([
        {"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": without},
    ]);
    kubectl(
        &c,
        &[
            "-n",
            "kube-system",
            "patch",
            "ds",
            "knat",
            "--type=json",
            "-p",
            &patch.to_string(),
        ],
    );
    kubectl(
        &c,
        &[
            "-n",
            "kube-system",
            "set",
            "env",
            "ds/knat",
            "-c",
            "knat",
            "NODE_NAME-",
        ],
    );
    // maxUnavailable rounds to one node: the first misnamed pod must never become Ready.
    let misnamed = c
        .wait_for_within("a misnamed knat pod running", READY_TIMEOUT, || {
            let out = c.kubectl(&["-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/name=knat", "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.containerStatuses[0].started} {.status.containerStatuses[0].ready} {.spec.containers[0].args}{\"\\n\"}{end}"], None)?;
            Ok(out.lines().find(|l| l.contains(" true false") && !l.contains("hostname-override")).map(|l| {
                let mut f = l.split_whitespace();
                (f.next().unwrap_or_default().to_string(), f.next().unwrap_or_default().to_string())
            }))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::sleep(Duration::from_secs(10));
    let ready = kubectl(
        &c,
        &[
            "-n",
            "kube-system",
            "get",
            "pod",
            &misnamed.0,
            "-o",
            "jsonpath={.status.containerStatuses[0].ready}",
        ],
    );
    assert_eq!(
        ready.trim(),
        "false",
        "a knat pod whose name is not its Node's stays not Ready"
    );
    let log = c
        .kubectl(
            &["-n", "kube-system", "logs", &misnamed.0, "-c", "knat"],
            None,
        )
        .unwrap_or_default();
    assert!(
        log.contains("--hostname-override=$(NODE_NAME)"),
        "the log gives the fix:\n{log}"
    );
    assert!(
        log.contains(&format!("host-of-{}", misnamed.1)),
        "the log names the wrong name it used:\n{log}"
    );
    let events = c
        .wait_for_within("a NodeNameMismatch Event", Duration::from_secs(30), || {
            let selector = format!("reason=NodeNameMismatch,involvedObject.name={}", misnamed.0);
            let out = c.kubectl(
                &[
                    "-n",
                    "kube-system",
                    "get",
                    "events",
                    "--field-selector",
                    &selector,
                    "-o",
                    "jsonpath={range .items[*]}{.type} {.reason} {.message}{\"\\n\"}{end}",
                ],
                None,
            )?;
            Ok((!out.trim().is_empty()).then_some(out))
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        events.starts_with("Warning NodeNameMismatch")
            && events.contains("--hostname-override=$(NODE_NAME)"),
        "a Warning Event on the pod gives the fix: {events}"
    );
    let misnamed_ip = if misnamed.1 == NODE1 {
        node_ip(0)
    } else {
        node_ip(1)
    };
    let metrics =
        get_body(&c, "client", &format!("http://{misnamed_ip}:10249/metrics")).expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("knat_node_name_matches") && l.trim_end().ends_with(" 0")),
        "knat_node_name_matches is 0 on the misnamed node:\n{metrics}"
    );
    let incident = traffic.counts("incident");
    kubectl(&c, &["-n", "kube-system", "rollout", "undo", "ds/knat"]);
    let fixed = daemonset_ready(&c, "knat");
    std::thread::sleep(SETTLE);
    let after = traffic.counts("incident");
    rows.push(Row {
        goal_zero: false,
        step: "misnamed DaemonSet, then undo",
        attempted: after.attempted,
        failed: after.failed,
        note: format!(
            "{} of {} failed while misnamed; shipped DaemonSet back and Ready in {fixed:.1?}",
            incident.failed, incident.attempted
        ),
    });
    eprintln!(
        "misnamed knat log ({}):\n{}",
        misnamed.0,
        log.lines().take(30).collect::<Vec<_>>().join("\n")
    );

    // --- knat's DaemonSet deleted: rules stay, traffic flows -----------------------------------
    traffic.phase("deleted");
    down(Proxy::Knat);
    std::thread::sleep(SETTLE);
    let d = traffic.counts("deleted");
    rows.push(Row {
        goal_zero: true,
        step: "knat DaemonSet deleted",
        attempted: d.attempted,
        failed: d.failed,
        note: "no proxy running".into(),
    });

    // --- the way back: kube-proxy takes over from knat -----------------------------------------
    traffic.phase("way-back");
    let back = up(Proxy::KubeProxy);
    std::thread::sleep(SETTLE);
    let w = traffic.counts("way-back");
    rows.push(Row {
        goal_zero: true,
        step: "knat -> kube-proxy",
        attempted: w.attempted,
        failed: w.failed,
        note: format!("kube-proxy Ready {back:.1?} after apply"),
    });
    let mut traffic = traffic;
    traffic.stop();

    eprintln!(
        "\nreal-node tier: images {image_time:.1?}, cluster (control plane + 2 nodes Ready) {cluster_time:.1?}"
    );
    eprintln!("| step | connections attempted | failed | note |\n|---|---|---|---|");
    for row in &rows {
        eprintln!(
            "| {} | {} | {} | {} |",
            row.step, row.attempted, row.failed, row.note
        );
    }
    for phase in ["takeover", "rollout", "deleted", "way-back"] {
        for a in traffic
            .attempts(phase)
            .iter()
            .filter(|a| a.outcome.is_err())
            .take(5)
        {
            eprintln!("failed in {phase}: {:?}", a.outcome);
        }
    }
    drop(c);
    assert_eq!(
        host_tunables(),
        tunables_before,
        "the host's kernel tunables are unchanged"
    );
    for row in rows.iter().filter(|r| r.goal_zero) {
        assert_eq!(
            row.failed, 0,
            "{}: {} of {} connections failed",
            row.step, row.failed, row.attempted
        );
        assert!(row.attempted > 0, "{}: no traffic measured", row.step);
    }
}
