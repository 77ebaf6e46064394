//! `knat run --from-files` end to end inside a network namespace this test creates; also
//! `route_localnet` handling (`knat run`, `knat node-setup`) and the in-cluster API-server
//! message, where the agent additionally gets a private mount namespace (`unshare`).
//!
//! Needs root, `ip`, `iptables-save` and `curl` (some tests also `unshare`, `mount`,
//! `sysctl`). With `CI=true` missing prerequisites are a failure; otherwise the test prints
//! SKIPPED and returns. Only the namespace it creates is touched; it is deleted (and the
//! agent killed by PID) also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KNAT: &str = env!("CARGO_BIN_EXE_knat");

/// True when the test can run (see `knat_testbed::prerequisites::test_prerequisites`).
fn prerequisites(test: &str) -> bool {
    knat_testbed::prerequisites::test_prerequisites(
        test,
        &["ip", "iptables-save", "iptables-restore", "curl"],
    )
}

/// A network namespace (deleted on drop), the agent running in it (killed on drop) and a
/// scratch directory.
struct Lab {
    ns: String,
    dir: PathBuf,
    agent: Option<Child>,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let ns = format!("knat-{tag}-{}-{nanos}", std::process::id());
        let dir = std::env::temp_dir().join(&ns);
        std::fs::create_dir_all(dir.join("manifests")).expect("scratch dir");
        let lab = Lab {
            ns,
            dir,
            agent: None,
        };
        lab.sh(&["ip", "netns", "add", &lab.ns]);
        lab.exec(&["ip", "link", "set", "lo", "up"]);
        lab
    }

    fn sh(&self, args: &[&str]) -> String {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect("spawn");
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command inside the namespace; returns (success, stdout).
    fn try_exec(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args)
            .output()
            .expect("spawn");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn exec(&self, args: &[&str]) -> String {
        let (ok, out) = self.try_exec(args);
        assert!(ok, "{args:?} failed in {}", self.ns);
        out
    }

    fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    /// The agent's log (plain text: knat colours its log only on a terminal).
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    fn start(&mut self, extra: &[&str]) {
        self.start_wrapped(&[], extra);
    }

    /// `knat run --from-files` behind `wrapper` (see [`Lab::spawn`]).
    fn start_wrapped(&mut self, wrapper: &[&str], extra: &[&str]) {
        let manifests = self.manifests();
        let manifests = manifests.to_string_lossy().into_owned();
        let mut args = vec![
            "run",
            "--from-files",
            &manifests,
            "--healthz-bind-address",
            "127.0.0.1:10256",
            "--metrics-bind-address",
            "127.0.0.1:10249",
            "--iptables-min-sync-period",
            "100ms",
            "--files-poll-interval",
            "100ms",
        ];
        args.extend_from_slice(extra);
        self.spawn(wrapper, &args, &[]);
    }

    /// Starts `knat ARGS` in the namespace with `env` added, behind `wrapper`: a command line
    /// that ends by exec'ing its trailing arguments (`unshare -m sh -c '...; exec "$0" "$@"'`),
    /// so the agent keeps the PID that `stop` and `Drop` signal.
    fn spawn(&mut self, wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.dir.join("agent.log")).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(wrapper)
            .arg(KNAT)
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("KUBECONFIG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn knat");
        self.agent = Some(child);
    }

    fn save(&self) -> String {
        self.exec(&["iptables-save"])
    }

    /// Polls until `cond` holds on `iptables-save`, or fails with the last dump and the log.
    fn wait_rules(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        self.wait(what, || {
            let dump = self.save();
            cond(&dump).then_some(dump)
        })
    }

    fn wait<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = f() {
                return v;
            }
            if let Some(agent) = self.agent.as_ref()
                && let Ok(out) = Command::new("kill")
                    .args(["-0", &agent.id().to_string()])
                    .output()
                && !out.status.success()
            {
                panic!(
                    "agent exited while waiting for {what}\nlog:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\nrules:\n{}\nlog:\n{}",
                self.save(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `curl -i` inside the namespace: (status, lower-cased headers, body).
    fn http(&self, url: &str) -> (u16, String, String) {
        let (_, out) = self.try_exec(&["curl", "-s", "-i", "--max-time", "5", url]);
        let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let mut agent = self.agent.take().expect("agent running");
        let pid = nix::unistd::Pid::from_raw(agent.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = agent.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = agent.kill();
                let _ = agent.wait();
                panic!("agent did not stop on SIGTERM\nlog:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const NODE: &str = "apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
";

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 203.0.113.10}]}}
";

fn slice(endpoints: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
",
    );
    for (ip, node) in endpoints {
        s.push_str(&format!("- addresses: [{ip}]\n  nodeName: {node}\n"));
    }
    s
}

fn write(dir: &Path, name: &str, text: &str) {
    // Write then rename, as a careful operator (or ConfigMap volume) would.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("write manifest");
    std::fs::rename(&tmp, dir.join(name)).expect("rename manifest");
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// "demo/web:http" and its endpoints (chain names from the upstream hash recipe).
const SVC_CHAIN: &str = "KUBE-SVC-XRY76EGRC3BSCIIJ";
const SVL_CHAIN: &str = "KUBE-SVL-XRY76EGRC3BSCIIJ";
const SEP_LOCAL: &str = "KUBE-SEP-NW5VICAF3Z2QABHQ"; // 10.244.1.5:8080

#[test]
fn run_from_files_programs_follows_changes_survives_sigterm_and_cleans_up() {
    if !prerequisites("run_from_files_programs_follows_changes_survives_sigterm_and_cleans_up") {
        return;
    }
    let mut lab = Lab::new("agent");
    let m = lab.manifests();
    write(&m, "node.yaml", NODE);
    write(&m, "service.yaml", SERVICE);
    write(
        &m,
        "slice.yaml",
        &slice(&[("10.244.1.5", "node-1"), ("10.244.2.5", "node-2")]),
    );
    lab.start(&[
        "--hostname-override",
        "node-1",
        "--ip-families",
        "ipv4",
        "--iptables-sync-period",
        "1s",
    ]);

    // 1. Initial full sync: per-service chains, hooks, canaries. On this cold start no hook's
    // target chain exists, so the restore itself inserts every hook (`-I CHAIN 1`, in reverse
    // order): INPUT -> KUBE-FIREWALL is written last and ends up first.
    let dump = lab.wait_rules("initial rules", |d| {
        d.contains(SEP_LOCAL) && d.contains("-A INPUT -j KUBE-FIREWALL")
    });
    assert!(dump.contains(&format!(":{SVC_CHAIN}")), "{dump}");
    assert!(dump.contains(&format!(":{SVL_CHAIN}")), "{dump}");
    assert!(
        dump.contains(
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"
        ),
        "{dump}"
    );
    assert!(dump.contains("-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS"), "{dump}");
    assert!(dump.contains(":KUBE-PROXY-CANARY"), "{dump}");
    let input_hooks: Vec<&str> = dump
        .lines()
        .filter(|l| l.starts_with("-A INPUT "))
        .collect();
    assert_eq!(input_hooks.len(), 4, "{input_hooks:?}");
    assert!(
        input_hooks[0].ends_with("-j KUBE-FIREWALL"),
        "hooks keep RuleSet.hooks order: {input_hooks:?}"
    );
    assert!(
        input_hooks[3].ends_with("-j KUBE-EXTERNAL-SERVICES"),
        "{input_hooks:?}"
    );

    // 2. The health-check node port: one local endpoint -> 200.
    let (status, head, body) = lab.wait("health check server", || {
        let r = lab.http("http://127.0.0.1:32000/");
        (r.0 != 0).then_some(r)
    });
    assert_eq!(status, 200, "{head}{body}");
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(
        head.contains("x-load-balancing-endpoint-weight: 1"),
        "{head}"
    );
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(json["service"]["namespace"], "demo");
    assert_eq!(json["service"]["name"], "web");
    assert_eq!(json["localEndpoints"], 1);
    assert_eq!(json["serviceProxyHealthy"], true);
    let (status, _, body) = lab.http("http://127.0.0.1:10256/healthz");
    assert_eq!(status, 200, "{body}");

    // 3. The local endpoint goes away: a partial sync removes its SEP chain, keeps the rest.
    write(
        &m,
        "slice.yaml",
        &slice(&[("10.244.2.5", "node-2"), ("10.244.2.6", "node-2")]),
    );
    let dump = lab.wait_rules("local endpoint removed", |d| !d.contains(SEP_LOCAL));
    assert!(dump.contains(&format!(":{SVC_CHAIN}")), "{dump}");
    assert!(dump.contains("--to-destination 10.244.2.6:8080"), "{dump}");
    assert!(
        !dump.contains(&format!(":{SVL_CHAIN}")),
        "no local endpoints, no SVL chain: {dump}"
    );
    assert!(
        dump.lines()
            .any(|l| l.starts_with("-A KUBE-EXTERNAL-SERVICES")
                && l.contains("demo/web:http has no local endpoints")
                && l.contains("--dport 30080")
                && l.ends_with("-j DROP")),
        "external NodePort traffic is dropped without local endpoints:\n{dump}"
    );
    let (status, head, body) = lab.wait("health check 503", || {
        let r = lab.http("http://127.0.0.1:32000/");
        (r.0 == 503).then_some(r)
    });
    assert_eq!(status, 503);
    assert!(
        head.contains("x-load-balancing-endpoint-weight: 0"),
        "{head}"
    );
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(json["localEndpoints"], 0);
    let log = lab.log();
    assert!(
        log.contains("sync done kind=\"partial\""),
        "the change is applied as a partial sync:\n{log}"
    );
    let (_, _, metrics) = lab.http("http://127.0.0.1:10249/metrics");
    let partial = metric(
        &metrics,
        "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}",
    );
    assert!(partial.is_some_and(|n| n >= 1.0), "{metrics}");
    assert_eq!(
        metric(&metrics, "knat_node_name_matches"),
        Some(1.0),
        "{metrics}"
    );

    // 4. The local endpoint comes back (partial sync again).
    write(&m, "slice.yaml", &slice(&[("10.244.1.5", "node-1")]));
    lab.wait_rules("local endpoint back", |d| {
        d.contains(SEP_LOCAL) && d.contains(&format!(":{SVL_CHAIN}"))
    });

    // 5. Someone flushes and deletes every nat chain: the canary check (every
    // --iptables-sync-period = 1s here) notices and a full sync restores chains and hooks.
    lab.exec(&["iptables", "-t", "nat", "-F"]);
    lab.exec(&["iptables", "-t", "nat", "-X"]);
    assert!(!lab.save().contains(SVC_CHAIN));
    let dump = lab.wait_rules("rules restored after a flush", |d| {
        d.contains(&format!(":{SVC_CHAIN}")) && d.contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES")
    });
    assert!(dump.contains(SEP_LOCAL), "{dump}");
    assert!(lab.log().contains("canary chain gone"), "{}", lab.log());
    let prerouting_hook =
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES";
    let count = |dump: &str, line: &str| dump.lines().filter(|l| *l == line).count();
    assert_eq!(count(&dump, prerouting_hook), 1, "{dump}");

    // 5b. Someone deletes one hook but not the chain it jumps to, and the mangle canary: the
    // full sync sees KUBE-SERVICES present, checks the hook with -C and inserts it again; the
    // hooks that are still there are not duplicated.
    let full_syncs = || lab.log().matches("sync done kind=\"full\"").count();
    // The initial sync and the one after the flush (whose rules are visible before its log line).
    lab.wait("the full sync after the flush is logged", || {
        (full_syncs() >= 2).then_some(())
    });
    let syncs_before = full_syncs();
    lab.exec(&[
        "iptables",
        "-t",
        "nat",
        "-D",
        "PREROUTING",
        "-m",
        "comment",
        "--comment",
        "kubernetes service portals",
        "-j",
        "KUBE-SERVICES",
    ]);
    // (The canary chain holds one rule: flushed first, as `-X` removes only empty chains.)
    lab.exec(&["iptables", "-t", "mangle", "-F", "KUBE-PROXY-CANARY"]);
    lab.exec(&["iptables", "-t", "mangle", "-X", "KUBE-PROXY-CANARY"]);
    assert_eq!(count(&lab.save(), prerouting_hook), 0);
    lab.wait("a full sync after the canary loss", || {
        (full_syncs() > syncs_before).then_some(())
    });
    let dump = lab.save();
    assert_eq!(count(&dump, prerouting_hook), 1, "{dump}");
    let input_hooks = dump.lines().filter(|l| l.starts_with("-A INPUT ")).count();
    assert_eq!(input_hooks, 4, "{dump}");

    // 6. SIGTERM: clean exit, rules left in place.
    let status = lab.stop();
    assert!(
        status.success(),
        "exit status {status}\nlog:\n{}",
        lab.log()
    );
    let dump = lab.save();
    assert!(
        dump.contains(SEP_LOCAL) && dump.contains("-j KUBE-SERVICES"),
        "rules must survive SIGTERM:\n{dump}"
    );
    assert!(lab.log().contains("rules are left in place"));

    // 7. knat cleanup removes everything but kubelet's KUBE-FIREWALL.
    lab.exec(&[KNAT, "cleanup", "--ip-families", "ipv4"]);
    let dump = lab.save();
    for gone in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-SVC-",
        "KUBE-SEP-",
        "KUBE-EXT-",
        "KUBE-POSTROUTING",
        "KUBE-PROXY-CANARY",
        "KUBE-FORWARD",
        "KNAT-",
    ] {
        assert!(!dump.contains(gone), "{gone} left after cleanup:\n{dump}");
    }
}

#[test]
fn missing_node_is_loud_and_fails_healthz() {
    if !prerequisites("missing_node_is_loud_and_fails_healthz") {
        return;
    }
    let mut lab = Lab::new("nonode");
    let m = lab.manifests();
    write(&m, "node.yaml", NODE);
    write(&m, "service.yaml", SERVICE);
    write(&m, "slice.yaml", &slice(&[("10.244.1.5", "node-1")]));
    // The kubelet registered "node-1", but the agent believes it is "ip-10-0-0-1".
    lab.start(&[
        "--hostname-override",
        "ip-10-0-0-1",
        "--ip-families",
        "ipv4",
    ]);
    lab.wait_rules("rules from the static source", |d| d.contains(SVC_CHAIN));
    let (status, _, body) = lab.wait("healthz", || {
        let r = lab.http("http://127.0.0.1:10256/healthz");
        (r.0 != 0).then_some(r)
    });
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"nodeNameMatches\":false"), "{body}");
    let (status, _, _) = lab.http("http://127.0.0.1:10256/livez");
    assert_eq!(
        status, 200,
        "liveness does not depend on the node name (a restart would not fix it)"
    );
    let (_, _, metrics) = lab.http("http://127.0.0.1:10249/metrics");
    assert_eq!(
        metric(&metrics, "knat_node_name_matches"),
        Some(0.0),
        "{metrics}"
    );
    let log = lab.log();
    assert!(
        log.contains("set --hostname-override=$(NODE_NAME) with NODE_NAME from the downward API spec.nodeName"),
        "{log}"
    );
    assert!(
        log.contains("\\\"ip-10-0-0-1\\\"") || log.contains("\"ip-10-0-0-1\""),
        "{log}"
    );
    let status = lab.stop();
    assert!(status.success());
}

const DNS_SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: dns, namespace: demo}
spec:
  clusterIP: 10.96.0.53
  ports: [{name: dns, port: 53, protocol: UDP}]
";

fn dns_slice(ip: &str) -> String {
    dns_slice_on(ip, 53)
}

/// The DNS service's slice with one endpoint at `ip:port`.
fn dns_slice_on(ip: &str, port: u16) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: dns-1, namespace: demo, labels: {{kubernetes.io/service-name: dns}}}}
addressType: IPv4
ports: [{{name: dns, port: {port}, protocol: UDP}}]
endpoints:
- addresses: [{ip}]
  nodeName: node-1
"
    )
}

/// A lab whose namespace holds two "pods" (10.244.1.5 and .6) as local addresses, so DNATed
/// datagrams are delivered locally, and a route for the service range, as a node has.
fn udp_lab(name: &str) -> Lab {
    let lab = Lab::new(name);
    // (A veth pair with both ends inside: the dummy module is not available everywhere.)
    lab.exec(&[
        "ip",
        "link",
        "add",
        "pods",
        "type",
        "veth",
        "peer",
        "name",
        "pods-peer",
    ]);
    lab.exec(&["ip", "link", "set", "pods", "up"]);
    lab.exec(&["ip", "link", "set", "pods-peer", "up"]);
    lab.exec(&["ip", "addr", "add", "10.244.1.5/32", "dev", "pods"]);
    lab.exec(&["ip", "addr", "add", "10.244.1.6/32", "dev", "pods"]);
    // A route for the service range, as a node has (otherwise the socket fails before NAT).
    lab.exec(&["ip", "route", "add", "10.96.0.0/16", "dev", "pods"]);
    lab
}

/// Upstream's conntrack test "cleanup conntrack entries when UDP service target port changes",
/// in seconds: the same pod, a new target port; the flow pinned to the old port is deleted and
/// the client's next datagram reaches the new one.
#[test]
fn udp_flows_to_an_old_target_port_are_deleted() {
    let test = "udp_flows_to_an_old_target_port_are_deleted";
    if !knat_testbed::prerequisites::test_prerequisites(test, &["ip", "iptables-save", "conntrack"])
    {
        return;
    }
    let mut lab = udp_lab("ctport");
    let m = lab.manifests();
    write(&m, "node.yaml", NODE);
    write(&m, "dns.yaml", DNS_SERVICE);
    write(&m, "slice.yaml", &dns_slice_on("10.244.1.5", 8080));
    lab.start(&["--hostname-override", "node-1", "--ip-families", "ipv4"]);
    lab.wait_rules("the DNS service DNATs to port 8080", |d| {
        d.contains("--to-destination 10.244.1.5:8080")
    });
    let send = || {
        lab.exec(&[
            KNAT,
            "lab-probe",
            "--udp",
            "--connect",
            "10.96.0.53:53",
            "--timeout-ms",
            "100",
        ]);
    };
    let flows = || lab.exec(&["conntrack", "-L", "-p", "udp", "--orig-dst", "10.96.0.53"]);
    send();
    let before = flows();
    assert!(
        before.contains("src=10.244.1.5") && before.contains("sport=8080"),
        "the flow was DNATed to port 8080:\n{before}"
    );
    write(&m, "slice.yaml", &dns_slice_on("10.244.1.5", 9090));
    lab.wait_rules("the DNS service DNATs to port 9090", |d| {
        d.contains("--to-destination 10.244.1.5:9090") && !d.contains("10.244.1.5:8080")
    });
    lab.wait("the flow to the old port is deleted", || {
        let now = flows();
        (!now.contains("sport=8080")).then_some(now)
    });
    send();
    let fresh = flows();
    assert!(
        fresh.contains("sport=9090"),
        "the next datagram is DNATed to the new port:\n{fresh}"
    );
    let status = lab.stop();
    assert!(
        status.success(),
        "knat run exits cleanly on SIGTERM: {status:?}"
    );
}

/// The UDP conntrack reconciler against the real `conntrack` tool: a flow DNATed to an endpoint
/// that goes away is deleted after the next sync (so the client's next datagram is DNATed to the
/// new endpoint), while an unrelated UDP flow is left alone (never a blanket flush).
#[test]
fn udp_flows_to_a_removed_endpoint_are_deleted_and_others_kept() {
    let test = "udp_flows_to_a_removed_endpoint_are_deleted_and_others_kept";
    if !knat_testbed::prerequisites::test_prerequisites(test, &["ip", "iptables-save", "conntrack"])
    {
        return;
    }
    let mut lab = udp_lab("ct");
    let m = lab.manifests();
    write(&m, "node.yaml", NODE);
    write(&m, "dns.yaml", DNS_SERVICE);
    write(&m, "slice.yaml", &dns_slice("10.244.1.5"));
    lab.start(&["--hostname-override", "node-1", "--ip-families", "ipv4"]);
    lab.wait_rules("the DNS service DNATs to 10.244.1.5", |d| {
        d.contains("--to-destination 10.244.1.5:53")
    });

    let send = |to: &str| {
        lab.exec(&[
            KNAT,
            "lab-probe",
            "--udp",
            "--connect",
            to,
            "--timeout-ms",
            "100",
        ]);
    };
    let flows = || lab.exec(&["conntrack", "-L", "-p", "udp"]);
    send("10.96.0.53:53");
    send("10.244.1.6:9999");
    let before = flows();
    assert!(
        before.contains("dst=10.96.0.53") && before.contains("src=10.244.1.5"),
        "the service flow was DNATed to the first endpoint:\n{before}"
    );
    assert!(
        before.contains("dport=9999"),
        "the unrelated flow exists:\n{before}"
    );

    write(&m, "slice.yaml", &dns_slice("10.244.1.6"));
    lab.wait_rules("the DNS service DNATs to 10.244.1.6", |d| {
        d.contains("--to-destination 10.244.1.6:53") && !d.contains("10.244.1.5:53")
    });
    let after = lab.wait("the stale flow is deleted", || {
        let now = flows();
        (!now.contains("dst=10.96.0.53")).then_some(now)
    });
    assert!(
        after.contains("dport=9999"),
        "the unrelated flow must survive:\n{after}"
    );
    assert!(
        lab.log().contains("conntrack") || metric_present(&lab),
        "the deletion is visible in the log or metrics:\n{}",
        lab.log()
    );
    // The next datagram goes to the new endpoint.
    send("10.96.0.53:53");
    let fresh = flows();
    assert!(
        fresh.contains("dst=10.96.0.53") && fresh.contains("src=10.244.1.6"),
        "a new flow is DNATed to the new endpoint:\n{fresh}"
    );
    let status = lab.stop();
    assert!(
        status.success(),
        "knat run exits cleanly on SIGTERM: {status:?}"
    );
}

/// Whether the agent's metrics report deleted conntrack entries.
fn metric_present(lab: &Lab) -> bool {
    let (_, _, body) = lab.http("http://127.0.0.1:10249/metrics");
    metric(
        &body,
        "kubeproxy_conntrack_reconciler_deleted_entries_total",
    )
    .is_some_and(|v| v >= 1.0)
}

/// The namespace's own `route_localnet` file (the test process reads the root namespace's).
const ROUTE_LOCALNET: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";

/// The root namespace's `route_localnet`, read (never written) by this test process.
fn root_route_localnet() -> String {
    std::fs::read_to_string(ROUTE_LOCALNET)
        .expect("read the root namespace's route_localnet")
        .trim()
        .to_string()
}

impl Lab {
    /// `route_localnet` inside the namespace.
    fn route_localnet(&self) -> String {
        self.exec(&["cat", ROUTE_LOCALNET]).trim().to_string()
    }

    /// A NodePort service with a local endpoint, and `route_localnet` 0 in the namespace (a new
    /// namespace's default; set explicitly, inside the namespace, in case the machine makes
    /// new namespaces inherit the root's settings).
    fn localnet_lab(tag: &str) -> Lab {
        let lab = Lab::new(tag);
        let m = lab.manifests();
        write(&m, "node.yaml", NODE);
        write(&m, "service.yaml", SERVICE);
        write(&m, "slice.yaml", &slice(&[("10.244.1.5", "node-1")]));
        lab.exec(&["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=0"]);
        assert_eq!(lab.route_localnet(), "0");
        lab
    }
}

/// Runs its trailing arguments in a private mount namespace whose /proc/sys is read-only, as
/// a non-privileged container sees it. Only that process's view changes.
const READ_ONLY_PROC_SYS: [&str; 7] = [
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec \"$0\" \"$@\"",
];

/// The NodePort dispatch rule of nat KUBE-SERVICES.
fn nodeports_rule(dump: &str) -> String {
    dump.lines()
        .find(|l| l.starts_with("-A KUBE-SERVICES") && l.ends_with("-j KUBE-NODEPORTS"))
        .unwrap_or_else(|| panic!("no KUBE-NODEPORTS dispatch rule:\n{dump}"))
        .to_string()
}

/// knat cannot write route_localnet (a read-only /proc/sys, as in a non-privileged pod): it
/// warns with the fix, writes no NodePort rule for 127.0.0.0/8, and reports it in a metric.
/// The read-only /proc/sys is a bind mount in a private mount namespace of the agent only.
#[test]
fn localhost_nodeports_are_off_when_route_localnet_cannot_be_set() {
    let test = "localhost_nodeports_are_off_when_route_localnet_cannot_be_set";
    if !knat_testbed::prerequisites::test_prerequisites(
        test,
        &["ip", "iptables-save", "curl", "unshare", "mount", "sysctl"],
    ) {
        return;
    }
    let root_before = root_route_localnet();
    let mut lab = Lab::localnet_lab("rolocal");
    lab.start_wrapped(
        &READ_ONLY_PROC_SYS,
        &["--hostname-override", "node-1", "--ip-families", "ipv4"],
    );
    let dump = lab.wait_rules("rules without localhost NodePorts", |d| {
        d.contains(SEP_LOCAL)
    });
    let log = lab.log();
    assert!(
        log.contains(
            "localhost NodePorts are off: net.ipv4.conf.all.route_localnet is 0 and cannot be set: \
             write /proc/sys/net/ipv4/conf/all/route_localnet: Read-only file system (os error 30)"
        ),
        "{log}"
    );
    assert!(
        log.contains("sysctl -w net.ipv4.conf.all.route_localnet=1") && log.contains(" WARN "),
        "{log}"
    );
    assert!(
        nodeports_rule(&dump).contains("! -d 127.0.0.0/8"),
        "127.0.0.0/8 is excluded from NodePorts:\n{dump}"
    );
    assert!(
        !dump.contains("block incoming localnet connections"),
        "no localhost NodePort rules:\n{dump}"
    );
    // As kube-proxy v1.37: KUBE-FIREWALL and its jumps exist in every case, empty here.
    assert!(
        dump.contains("-A INPUT -j KUBE-FIREWALL") && dump.contains("-A OUTPUT -j KUBE-FIREWALL"),
        "KUBE-FIREWALL is hooked (empty) as upstream hooks it:\n{dump}"
    );
    let (_, _, metrics) = lab.wait("metrics", || {
        let r = lab.http("http://127.0.0.1:10249/metrics");
        (r.0 == 200).then_some(r)
    });
    assert_eq!(
        metric(&metrics, "knat_localhost_nodeports"),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        lab.route_localnet(),
        "0",
        "the namespace's value is untouched"
    );
    assert_eq!(
        root_route_localnet(),
        root_before,
        "the root namespace is untouched"
    );
    assert!(lab.stop().success());
}

/// knat can write route_localnet (root in its network namespace): it sets it to 1, says so, and
/// programs localhost NodePorts.
#[test]
fn localhost_nodeports_are_on_after_knat_sets_route_localnet() {
    let test = "localhost_nodeports_are_on_after_knat_sets_route_localnet";
    if !knat_testbed::prerequisites::test_prerequisites(
        test,
        &["ip", "iptables-save", "curl", "sysctl"],
    ) {
        return;
    }
    let root_before = root_route_localnet();
    let mut lab = Lab::localnet_lab("rwlocal");
    lab.start(&["--hostname-override", "node-1", "--ip-families", "ipv4"]);
    let dump = lab.wait_rules("rules with localhost NodePorts", |d| d.contains(SEP_LOCAL));
    assert_eq!(lab.route_localnet(), "1", "knat set it in its namespace");
    let log = lab.log();
    assert!(
        log.contains(
            " INFO knat::cli::run: net.ipv4.conf.all.route_localnet was 0; set it to 1 so \
             NodePorts are served on 127.0.0.1 (--localhost-nodeports)"
        ),
        "{log}"
    );
    assert!(
        !nodeports_rule(&dump).contains("127.0.0.0/8"),
        "NodePorts include 127.0.0.1:\n{dump}"
    );
    assert!(
        dump.lines().any(|l| l.starts_with("-A KUBE-FIREWALL ")
            && l.contains("block incoming localnet connections")
            && l.contains(" -d 127.0.0.0/8")
            && l.ends_with("-j DROP")),
        "the localnet guard is in place:\n{dump}"
    );
    let (_, _, metrics) = lab.wait("metrics", || {
        let r = lab.http("http://127.0.0.1:10249/metrics");
        (r.0 == 200).then_some(r)
    });
    assert_eq!(
        metric(&metrics, "knat_localhost_nodeports"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        root_route_localnet(),
        root_before,
        "the root namespace is untouched"
    );
    assert!(lab.stop().success());
}

/// `knat node-setup` (the init container) sets route_localnet to 1 where it may, and fails
/// with exit status 1 where /proc/sys is read-only, leaving the value alone.
#[test]
fn node_setup_sets_route_localnet_or_fails() {
    let test = "node_setup_sets_route_localnet_or_fails";
    if !knat_testbed::prerequisites::test_prerequisites(test, &["ip", "unshare", "mount", "sysctl"])
    {
        return;
    }
    let root_before = root_route_localnet();
    let lab = Lab::localnet_lab("nodesetup");
    let mut read_only: Vec<&str> = READ_ONLY_PROC_SYS.to_vec();
    read_only.extend([KNAT, "node-setup"]);
    let (ok, _) = lab.try_exec(&read_only);
    assert!(!ok, "node-setup must fail on a read-only /proc/sys");
    assert_eq!(lab.route_localnet(), "0");
    let (ok, _) = lab.try_exec(&[KNAT, "node-setup"]);
    assert!(ok, "node-setup sets it where it may");
    assert_eq!(lab.route_localnet(), "1");
    let (ok, _) = lab.try_exec(&[KNAT, "node-setup"]);
    assert!(ok, "and is idempotent");
    assert_eq!(
        root_route_localnet(),
        root_before,
        "the root namespace is untouched"
    );
}

/// A throwaway CA certificate: kube-rs parses the in-cluster CA before it dials anything.
const FAKE_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBhTCCASugAwIBAgIUDlVDe0r0caApvg4QMjF/ZNzrwwwwCgYIKoZIzj0EAwIw
FzEVMBMGA1UEAwwMa25hdC10ZXN0LWNhMCAXDTI2MTIwNjIyMDMyN1oYDzIxMjYx
MTEyMjIwMzI3WjAXMRUwEwYDVQQDDAxrbmF0LXRlc3QtY2EwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAAQypqTI+CBIvzfDeFfpWe4slqXZ6mA2RLt2tkWOGRtdgY8P
j86AD/GEK2QEl4tsHKUJBaXbrPIkfJlpEAJ2Pj1Xo1MwUTAdBgNVHQ4EFgQULyCC
WmvSk8KUmTXfAXW8d11rZYIwHwYDVR0jBBgwFoAULyCCWmvSk8KUmTXfAXW8d11r
ZYIwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiEAhyw01PUe+oqz
yHdCJ7vm2MtDhzqo11C7JjePG3gRjs8CIC30KE/jndnWr0RVzvDrMH0K+N/6jPnd
ozf668dCgGl3
-----END CERTIFICATE-----
";

/// Finding 1 of issue 21 as a pod sees it: the in-cluster environment names the `kubernetes`
/// Service's ClusterIP (here 127.0.0.1:443 of a fresh namespace, where nothing listens) and
/// the ServiceAccount files are mounted (a tmpfs over /run in the agent's private mount
/// namespace). The log names the address, where it came from, and the ConfigMap fix.
#[test]
fn in_cluster_service_ip_that_nothing_serves_is_explained() {
    let test = "in_cluster_service_ip_that_nothing_serves_is_explained";
    if !knat_testbed::prerequisites::test_prerequisites(test, &["ip", "unshare", "mount"]) {
        return;
    }
    let mut lab = Lab::new("incluster");
    let sa = lab.dir.join("serviceaccount");
    std::fs::create_dir_all(&sa).expect("service account dir");
    std::fs::write(sa.join("ca.crt"), FAKE_CA).expect("ca.crt");
    std::fs::write(sa.join("token"), "not-a-real-token").expect("token");
    std::fs::write(sa.join("namespace"), "kube-system").expect("namespace");
    let sa = sa.to_string_lossy().into_owned();
    let home = lab.dir.to_string_lossy().into_owned();
    let mount_service_account = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        "mount -t tmpfs knat-test /run \
         && mkdir -p /run/secrets/kubernetes.io/serviceaccount \
         && cp \"$KNAT_TEST_SA\"/* /run/secrets/kubernetes.io/serviceaccount/ \
         && exec \"$0\" \"$@\"",
    ];
    let started = Instant::now();
    lab.spawn(
        &mount_service_account,
        &[
            "run",
            "--hostname-override",
            "node-1",
            "--ip-families",
            "ipv4",
            "--iptables-backend",
            "legacy",
            "--localhost-nodeports=false",
            "--healthz-bind-address",
            "127.0.0.1:10256",
            "--metrics-bind-address",
            "127.0.0.1:10249",
        ],
        &[
            ("KNAT_TEST_SA", &sa),
            ("HOME", &home),
            ("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_PORT", "tcp://127.0.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "127.0.0.1"),
        ],
    );
    let line = lab.wait("the unreachable API server is explained", || {
        lab.log()
            .lines()
            .find(|l| l.contains("cannot connect to the API server"))
            .map(str::to_string)
    });
    assert!(
        line.contains(
            " ERROR knat::agent::watch: cannot connect to the API server at 127.0.0.1:443 \
             (from the in-cluster environment KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT)"
        ),
        "{line}"
    );
    assert!(line.contains("Connection refused"), "{line}");
    assert!(
        line.contains(
            "127.0.0.1 is the ClusterIP of the `kubernetes` Service, and no service proxy serves it \
             before knat runs"
        ),
        "{line}"
    );
    assert!(
        line.contains(
            "set KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT in ConfigMap kube-system/knat"
        ),
        "{line}"
    );
    assert!(line.contains("retrying with backoff"), "{line}");
    assert!(
        lab.log().contains("API server api_server=127.0.0.1:443"),
        "{}",
        lab.log()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // Still retrying, not exited.
    assert!(lab.stop().success(), "{}", lab.log());
}
