//! Faults a node sees in the field, each under continuous client traffic that is counted:
//! other writers flushing knat's tables, the node's rules lost, `iptables-restore` failing,
//! hanging, and the xtables lock held by another process. Every test prints a figures row
//! (`cargo test --test faults -- --nocapture`) and asserts its bounds; docs/reliability.md
//! has the measured table.
//!
//! The node is a network namespace this test creates: two "pod" addresses on a veth pair whose
//! ends are both inside, an echo server on them, a ClusterIP Service in front, `knat run
//! --from-files` programming it, and a client thread (entered into the namespace with
//! `setns`) that opens a new connection to the ClusterIP every 20 ms. Faulty `iptables-restore`
//! behaviour comes from a wrapper script put first on the agent's `PATH`; the xtables lock is
//! a private file (`XTABLES_LOCKFILE`), never the machine's `/run/xtables.lock`.
//!
//! Also here, because they need the same namespace: manifests and `--config` files that do
//! not parse (nothing applied), and what each listener binds and answers.
//!
//! Needs root, `ip`, `iptables`, `iptables-save`, `iptables-restore`, `nft`, `curl`, `flock`,
//! `bash`, `ss`; with `CI=true` a missing one fails the test. Only the namespace it creates is
//! touched; it is deleted, and every process the test started is killed by PID, also on
//! failure.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const KNAT: &str = env!("CARGO_BIN_EXE_knat");

/// `--iptables-sync-period` of every agent here: the canary period; `/healthz` fails after a
/// sync has been owed for twice this; commands are killed after 30 s (the minimum limit).
const SYNC_PERIOD: Duration = Duration::from_secs(2);
/// Slack for a loaded 2-core machine on top of the bounds the design gives.
const SLACK: Duration = Duration::from_secs(3);
const CLUSTER_IP: &str = "10.96.0.10:80";
const POD_A: &str = "10.244.1.5";
const POD_B: &str = "10.244.1.6";

fn prerequisites(test: &str) -> bool {
    knat_testbed::prerequisites::test_prerequisites(
        test,
        &[
            "ip",
            "iptables",
            "iptables-save",
            "iptables-restore",
            "nft",
            "curl",
            "flock",
            "bash",
            "ss",
        ],
    )
}

/// One row of the figures table.
struct Figure {
    fault: String,
    attempted: usize,
    failed: usize,
    recovery: Duration,
    logged: String,
    counted: String,
    healthz: String,
}

fn print_figures(rows: &[Figure]) {
    println!(
        "\n| fault | connections attempted / failed | recovery | logged | counted | /healthz |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} / {} | {:.1} s | {} | {} | {} |",
            r.fault,
            r.attempted,
            r.failed,
            r.recovery.as_secs_f64(),
            r.logged,
            r.counted,
            r.healthz
        );
    }
}

/// A client opening one new TCP connection to the ClusterIP every 20 ms from inside the
/// namespace, recording when each attempt started and whether the echo server answered.
struct Traffic {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<(Instant, bool)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Traffic {
    fn start(ns: &str) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let netns = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
        let target: SocketAddr = CLUSTER_IP.parse().expect("address");
        let (stop2, log2) = (stop.clone(), log.clone());
        let started = Instant::now();
        let thread = std::thread::spawn(move || {
            nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("enter the node's network namespace");
            while !stop2.load(Ordering::Relaxed) {
                let at = Instant::now();
                let result =
                    knat::lab::probe(target, knat::lab::Proto::Tcp, Duration::from_millis(300));
                let ok = result.reply().is_some();
                if !ok {
                    eprintln!(
                        "traffic: {:.3} s into the run: {} after {:.0?}",
                        at.duration_since(started).as_secs_f64(),
                        result.describe(),
                        at.elapsed()
                    );
                }
                log2.lock().expect("traffic log").push((at, ok));
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Traffic {
            stop,
            log,
            thread: Some(thread),
        }
    }

    /// (attempted, failed) among attempts started in `[from, to)`.
    fn counts(&self, from: Instant, to: Instant) -> (usize, usize) {
        let log = self.log.lock().expect("traffic log");
        let window: Vec<bool> = log
            .iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, ok)| *ok)
            .collect();
        (window.len(), window.iter().filter(|ok| !**ok).count())
    }

    /// When the last failed attempt started, if any failed after `from`.
    fn last_failure_after(&self, from: Instant) -> Option<Instant> {
        let log = self.log.lock().expect("traffic log");
        log.iter()
            .filter(|(at, ok)| *at >= from && !ok)
            .map(|(at, _)| *at)
            .max()
    }

    fn wait_for_success_after(&self, from: Instant, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self
                .log
                .lock()
                .expect("traffic log")
                .iter()
                .any(|(at, ok)| *at >= from && *ok)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Samples the number of child processes of `pid` every 50 ms and keeps the maximum.
struct ChildCounter {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

fn children_of(pid: u32) -> usize {
    children_in_state(pid, |_| true)
}

/// Children of `pid` that have exited and were not reaped (state `Z`).
fn zombie_children_of(pid: u32) -> usize {
    children_in_state(pid, |state| state == "Z")
}

fn children_in_state(pid: u32, state_matches: impl Fn(&str) -> bool) -> usize {
    proc_children(pid)
        .filter(|child| state_matches(&child.state))
        .count()
}

/// A process whose parent is the one asked for, from `/proc/PID/stat`.
struct ProcChild {
    pid: u32,
    state: String,
    path: std::path::PathBuf,
}

/// The children of `parent` now (one pass over `/proc`).
fn proc_children(parent: u32) -> impl Iterator<Item = ProcChild> {
    let entries = std::fs::read_dir("/proc").into_iter().flatten().flatten();
    entries.filter_map(move |e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
        // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
        let state = fields.next()?.to_string();
        let ppid: u32 = fields.next()?.parse().ok()?;
        (ppid == parent).then(|| ProcChild {
            pid,
            state,
            path: e.path(),
        })
    })
}

impl ChildCounter {
    fn start(pid: u32) -> ChildCounter {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicUsize::new(0));
        let (stop2, max2) = (stop.clone(), max.clone());
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                max2.fetch_max(children_of(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        ChildCounter {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.max.load(Ordering::Relaxed)
    }
}

/// Processes whose command line starts with `marker` (the wrapper's hanging grandchild).
fn processes_named(marker: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| c.starts_with(marker.as_bytes()))
        .count()
}

/// The `iptables-nft-restore` wrapper: passes through to the real binary, or, by the word in
/// its mode file, corrupts the payload's last endpoint DNAT rule (port 99999, so the real
/// binary rejects the whole transaction with its own message, `Port `99999' not valid`, and
/// the line; exit code 2), or hangs once
/// (a grandchild named by the marker, then the mode turns back to `pass`). Each call appends
/// `<mode> <line>` to `calls`.
const WRAPPER: &str = r#"#!/bin/bash
dir="$(dirname "$0")"
mode="$(cat "$dir/mode")"
case "$mode" in
fail)
    payload="$(mktemp)"
    cat > "$payload"
    n="$(grep -n '^-A KUBE-SEP-.*--to-destination' "$payload" | tail -n 1 | cut -d: -f1)"
    if [ -z "$n" ]; then
        echo "fail -" >> "$dir/calls"
        echo "iptables-nft-restore: line 1 failed" >&2
        exit 1
    fi
    echo "fail $n" >> "$dir/calls"
    sed -n "${n}p" "$payload" > "$dir/last-corrupted"
    sed -i -E "${n}s/(--to-destination [0-9.]+):[0-9]+/\1:99999/" "$payload"
    "$REAL_RESTORE" "$@" < "$payload"
    rc=$?
    rm -f "$payload"
    exit $rc
    ;;
hang-once)
    echo pass > "$dir/mode"
    echo "hang -" >> "$dir/calls"
    (exec -a "$HANG_MARKER" sleep 600) &
    wait
    ;;
*)
    echo "pass -" >> "$dir/calls"
    exec "$REAL_RESTORE" "$@"
    ;;
esac
"#;

const NODE: &str = "apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
";

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
";

fn slice(pods: &[&str]) -> String {
    let mut s = String::from(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
",
    );
    for ip in pods {
        s.push_str(&format!("- addresses: [{ip}]\n  nodeName: node-1\n"));
    }
    s
}

/// Which iptables front-end the agent uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Front {
    Nft,
    Legacy,
}

/// The node: a namespace, its echo server, the agent and a scratch directory; everything is
/// ended (by PID) and removed on drop.
struct Node {
    ns: String,
    dir: PathBuf,
    front: Front,
    echo: Option<(Child, ChildStdin)>,
    agent: Option<Child>,
}

impl Node {
    fn new(tag: &str, front: Front) -> Node {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let ns = format!("knat-flt-{tag}-{}-{nanos}", std::process::id());
        let dir = std::env::temp_dir().join(&ns);
        std::fs::create_dir_all(dir.join("manifests")).expect("scratch dir");
        std::fs::create_dir_all(dir.join("bin")).expect("wrapper dir");
        let mut node = Node {
            ns,
            dir,
            front,
            echo: None,
            agent: None,
        };
        let out = Command::new("ip")
            .args(["netns", "add", &node.ns])
            .output()
            .expect("ip");
        assert!(out.status.success(), "ip netns add: {out:?}");
        node.exec(&["ip", "link", "set", "lo", "up"]);
        node.exec(&[
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
        node.exec(&["ip", "link", "set", "pods", "up"]);
        node.exec(&["ip", "link", "set", "pods-peer", "up"]);
        for pod in [POD_A, POD_B] {
            node.exec(&["ip", "addr", "add", &format!("{pod}/32"), "dev", "pods"]);
        }
        node.exec(&["ip", "route", "add", "10.96.0.0/16", "dev", "pods"]);
        node.start_echo();
        node.write("node.yaml", NODE);
        node.write("service.yaml", SERVICE);
        node.write("slice.yaml", &slice(&[POD_A]));
        node
    }

    fn start_echo(&mut self) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns, KNAT, "lab-echo", "--name", "web"])
            .args(["--listen", &format!("{POD_A}:8080")])
            .args(["--listen", &format!("{POD_B}:8080")])
            .arg("--exit-on-stdin-eof")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the echo server");
        let stdin = child.stdin.take().expect("echo stdin");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("echo stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("echo ready line");
        assert_eq!(line.trim(), knat::lab::echo::READY_LINE);
        self.echo = Some((child, stdin));
    }

    fn write(&self, name: &str, text: &str) {
        let m = self.dir.join("manifests");
        let tmp = m.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write manifest");
        std::fs::rename(&tmp, m.join(name)).expect("rename manifest");
    }

    fn lockfile(&self) -> PathBuf {
        self.dir.join("xtables.lock")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .args(args)
            .env("XTABLES_LOCKFILE", self.lockfile());
        cmd
    }

    fn try_exec(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.command(args).output().expect("spawn");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn exec(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.try_exec(args);
        assert!(ok, "{args:?} failed in {}: {err}", self.ns);
        out
    }

    fn exec_with_input(&self, args: &[&str], input: &str) {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write input");
        assert!(child.wait().expect("wait").success(), "{args:?} failed");
    }

    fn ipt(&self) -> &'static str {
        match self.front {
            Front::Nft => "iptables-nft",
            Front::Legacy => "iptables-legacy",
        }
    }

    fn save(&self) -> String {
        match self.front {
            Front::Nft => self.exec(&["iptables-nft-save"]),
            Front::Legacy => self.exec(&["iptables-legacy-save"]),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Installs the restore wrapper (see [`WRAPPER`]) in mode `pass`.
    fn install_wrapper(&self) {
        let bin = self.dir.join("bin");
        let path = bin.join("iptables-nft-restore");
        std::fs::write(&path, WRAPPER).expect("wrapper");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        self.set_mode("pass");
    }

    fn set_mode(&self, mode: &str) {
        std::fs::write(self.dir.join("bin").join("mode"), format!("{mode}\n")).expect("mode");
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("bin").join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn hang_marker(&self) -> String {
        format!("knat-fault-hang-{}", self.ns)
    }

    fn start_agent(&mut self) {
        self.start_agent_listening(&[
            "--healthz-bind-address",
            "127.0.0.1:10256",
            "--metrics-bind-address",
            "127.0.0.1:10249",
        ]);
    }

    /// Starts the agent with `listeners` (bind-address flags; none: knat's defaults).
    fn start_agent_listening(&mut self, listeners: &[&str]) {
        let manifests = self.dir.join("manifests").to_string_lossy().into_owned();
        let log = std::fs::File::create(self.dir.join("agent.log")).expect("log file");
        let path = format!(
            "{}:{}",
            self.dir.join("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let backend = match self.front {
            Front::Nft => "nft",
            Front::Legacy => "legacy",
        };
        let child = self
            .command(&[KNAT, "run", "--from-files", &manifests])
            .args(["--hostname-override", "node-1", "--ip-families", "ipv4"])
            .args(["--iptables-backend", backend, "--localhost-nodeports=false"])
            .args(["--iptables-sync-period", "2s"])
            .args(["--iptables-min-sync-period", "100ms"])
            .args(["--files-poll-interval", "100ms"])
            .args(listeners)
            .env("PATH", path)
            .env("REAL_RESTORE", "/usr/sbin/iptables-nft-restore")
            .env("HANG_MARKER", self.hang_marker())
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("KUBECONFIG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn knat");
        self.agent = Some(child);
    }

    fn agent_pid(&self) -> u32 {
        self.agent.as_ref().expect("agent").id()
    }

    fn wait<T>(&self, what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out ({limit:?}) waiting for {what}\nrules:\n{}\nlog:\n{}",
                self.save(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// knat's rules for the Service are in place: the DNAT to every pod in `pods`, the
    /// locally-generated traffic hook, and the canary rule in every table.
    fn programmed(&self, pods: &[&str]) -> bool {
        let dump = self.save();
        pods.iter()
            .all(|p| dump.contains(&format!("--to-destination {p}:8080")))
            && dump.contains(
                "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            )
            && dump.matches(&knat::backend::canary_rule_line()).count() == 3
    }

    fn http(&self, url: &str) -> (u16, String) {
        let (_, out, _) =
            self.try_exec(&["curl", "-s", "-w", "\n%{http_code}", "--max-time", "3", url]);
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    fn healthz(&self) -> u16 {
        self.http("http://127.0.0.1:10256/healthz").0
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.http("http://127.0.0.1:10249/metrics");
        body.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Starts the agent and waits until it has programmed the Service and traffic flows.
    fn ready(&mut self) {
        self.start_agent();
        self.wait("the initial rules", Duration::from_secs(20), || {
            self.programmed(&[POD_A]).then_some(())
        });
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        if let Some((mut echo, stdin)) = self.echo.take() {
            drop(stdin);
            let _ = echo.kill();
            let _ = echo.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `iptables-save` without counters or comments, for comparing rule sets.
fn rules_only(dump: &str) -> String {
    dump.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.find(" [") {
            Some(i) if l.starts_with(':') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Lines of `iptables-save` written by someone other than knat (or kube-proxy).
fn foreign_lines(dump: &str) -> Vec<String> {
    dump.lines()
        .filter(|l| l.starts_with("-A ") && !l.contains("KUBE-") && !l.contains("KNAT-"))
        .map(str::to_string)
        .collect()
}

/// Rules of another writer in the three tables knat writes into.
const FOREIGN: [(&str, &str, &str); 5] = [
    ("nat", "POSTROUTING", "-s 198.18.0.0/15 -j FOREIGN-NAT"),
    ("nat", "FOREIGN-NAT", "-s 192.0.2.0/24 -j RETURN"),
    ("filter", "INPUT", "-s 192.0.2.66/32 -j DROP"),
    ("filter", "FOREIGN-FILTER", "-s 192.0.2.67/32 -j RETURN"),
    (
        "mangle",
        "PREROUTING",
        "-s 192.0.2.77/32 -j MARK --set-xmark 0x7/0xffffffff",
    ),
];

fn install_foreign(node: &Node) {
    for (table, chain) in [("nat", "FOREIGN-NAT"), ("filter", "FOREIGN-FILTER")] {
        let _ = node.try_exec(&[node.ipt(), "-t", table, "-N", chain]);
    }
    for (table, chain, rule) in FOREIGN {
        let spec: Vec<&str> = rule.split(' ').collect();
        let mut check = vec![node.ipt(), "-t", table, "-C", chain];
        check.extend(&spec);
        if !node.try_exec(&check).0 {
            let mut add = vec![node.ipt(), "-t", table, "-A", chain];
            add.extend(&spec);
            node.exec(&add);
        }
    }
}

/// A firewalld-style reload: a full `iptables-restore` (no `--noflush`) of a foreign nat table,
/// which replaces the whole table, knat's chains included.
const FOREIGN_NAT_TABLE: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:FIREWALLD-NAT - [0:0]
-A POSTROUTING -j FIREWALLD-NAT
-A FIREWALLD-NAT -s 192.0.2.0/24 -j MASQUERADE
COMMIT
";

/// Another writer flushes or replaces knat's tables, and the node loses every rule: knat
/// notices on its next canary check and restores within one canary period; rules of other
/// writers that the fault left are still there afterwards.
#[test]
fn foreign_flushes_and_lost_rules_are_repaired_within_one_canary_period() {
    let test = "foreign_flushes_and_lost_rules_are_repaired_within_one_canary_period";
    if !prerequisites(test) {
        return;
    }
    let mut node = Node::new("flush", Front::Nft);
    node.ready();
    let traffic = Traffic::start(&node.ns);
    assert!(
        traffic.wait_for_success_after(Instant::now(), Duration::from_secs(5)),
        "traffic flows through the ClusterIP\n{}",
        node.log()
    );
    type Inject = fn(&Node);
    let faults: [(&str, Inject); 4] = [
        ("another writer: `iptables -t nat -F`", |n| {
            n.exec(&["iptables-nft", "-t", "nat", "-F"]);
        }),
        (
            "another writer: `iptables -t nat -F` then `-X KUBE-SERVICES`",
            |n| {
                n.exec(&["iptables-nft", "-t", "nat", "-F"]);
                n.exec(&["iptables-nft", "-t", "nat", "-X", "KUBE-SERVICES"]);
            },
        ),
        (
            "firewalld-style reload: `iptables-restore` of a foreign nat table",
            |n| {
                n.exec_with_input(&["iptables-nft-restore"], FOREIGN_NAT_TABLE);
            },
        ),
        (
            "the netns loses every rule (as after a reboot): `nft flush ruleset`",
            |n| {
                n.exec(&["nft", "flush", "ruleset"]);
            },
        ),
    ];
    let mut rows = Vec::new();
    for (name, inject) in faults {
        install_foreign(&node);
        let canary_logs = node.log().matches("canary chain gone").count();
        let full_syncs = node.metric("kubeproxy_sync_full_proxy_rules_duration_seconds_count");
        let t0 = Instant::now();
        inject(&node);
        let left = foreign_lines(&node.save());
        assert!(
            !node.programmed(&[POD_A]),
            "{name}: the fault removed knat's rules"
        );
        let recovered = node.wait(name, SYNC_PERIOD * 2 + SLACK, || {
            node.programmed(&[POD_A]).then(Instant::now)
        });
        let recovery = recovered - t0;
        assert!(
            recovery <= SYNC_PERIOD + SLACK,
            "{name}: restored after {recovery:?}, more than one canary period ({SYNC_PERIOD:?}) plus {SLACK:?}\n{}",
            node.log()
        );
        assert!(
            traffic.wait_for_success_after(recovered, Duration::from_secs(3)),
            "{name}: traffic is back"
        );
        std::thread::sleep(Duration::from_millis(500));
        let dump = node.save();
        for line in &left {
            assert!(
                dump.lines().any(|l| l == line),
                "{name}: another writer's rule was removed: {line}\n{dump}"
            );
        }
        if name.starts_with("firewalld") {
            assert!(
                dump.contains("-A FIREWALLD-NAT -s 192.0.2.0/24 -j MASQUERADE"),
                "{dump}"
            );
        }
        let (attempted, failed) = traffic.counts(t0, Instant::now());
        // Connections that start once the rules are back succeed.
        if let Some(last) = traffic.last_failure_after(t0) {
            assert!(
                last < recovered,
                "{name}: a connection started {:?} after recovery failed",
                last - recovered
            );
        }
        let canary_logged = node.log().matches("canary chain gone").count() - canary_logs;
        assert!(
            canary_logged >= 1,
            "{name}: the loss is logged\n{}",
            node.log()
        );
        let full_after = node.metric("kubeproxy_sync_full_proxy_rules_duration_seconds_count");
        assert!(full_after > full_syncs, "{name}: a full sync is counted");
        let healthz = node.healthz();
        assert_eq!(healthz, 200, "{name}: healthy again");
        rows.push(Figure {
            fault: name.to_string(),
            attempted,
            failed,
            recovery,
            logged: format!("WARN `canary chain gone ... full sync` x{canary_logged}"),
            counted: format!(
                "full syncs {full_syncs} -> {full_after}; {} foreign rules kept",
                left.len()
            ),
            healthz: format!("{healthz} after"),
        });
    }
    drop(traffic);
    print_figures(&rows);
}

/// `iptables-restore` rejects every transaction for a while (the real binary, fed a payload
/// whose last endpoint rule jumps to a missing chain): the kernel keeps the old rules, traffic
/// to the existing endpoint never fails, each failure is counted and logged with the offending
/// line, `/healthz` fails once a sync has been owed for twice the sync period, and the first
/// sync that succeeds is a full one.
#[test]
fn failing_restores_leave_the_kernel_unchanged_and_fail_healthz() {
    let test = "failing_restores_leave_the_kernel_unchanged_and_fail_healthz";
    if !prerequisites(test) {
        return;
    }
    let mut node = Node::new("fail", Front::Nft);
    node.install_wrapper();
    node.ready();
    assert!(
        node.calls().iter().any(|c| c.starts_with("pass")),
        "the agent runs the wrapper: {:?}\n{}",
        node.calls(),
        node.log()
    );
    let traffic = Traffic::start(&node.ns);
    let before = rules_only(&node.save());
    node.set_mode("fail");
    let t0 = Instant::now();
    node.write("slice.yaml", &slice(&[POD_A, POD_B]));
    let failed_calls = || {
        node.calls()
            .iter()
            .filter(|c| c.starts_with("fail"))
            .count()
    };
    node.wait("a failed restore", Duration::from_secs(10), || {
        (failed_calls() >= 1).then_some(())
    });
    let unhealthy_at = node.wait("/healthz 503", SYNC_PERIOD * 2 + SLACK * 2, || {
        (node.healthz() == 503).then(Instant::now)
    });
    let failures_when_unhealthy = failed_calls();
    assert_eq!(
        rules_only(&node.save()),
        before,
        "the kernel is unchanged by the failed transactions"
    );
    // The offending line is logged with its number and its text as knat wrote it.
    let line: String = node
        .calls()
        .iter()
        .rev()
        .find_map(|c| c.strip_prefix("fail ").map(str::to_string))
        .expect("a failed call");
    let corrupted =
        std::fs::read_to_string(node.dir.join("bin").join("last-corrupted")).expect("line");
    let log = node.log();
    assert!(
        log.contains("sync failed; retrying with a full sync"),
        "{log}"
    );
    assert!(log.contains(&format!("failed at line {line}")), "{log}");
    let marked = format!(">> {:>6}: {}", line, corrupted.trim_end());
    assert!(log.contains(&marked), "the log marks `{marked}`:\n{log}");
    let counted = node.metric("kubeproxy_sync_proxy_rules_iptables_restore_failures_total");
    let partial = node.metric("kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total");
    assert!(counted >= failures_when_unhealthy as f64 - 1.0, "{counted}");
    assert!(
        partial >= 1.0,
        "the first failure was a partial sync: {partial}"
    );

    node.set_mode("pass");
    let released = Instant::now();
    let recovered = node.wait(
        "the new endpoint programmed",
        Duration::from_secs(10),
        || node.programmed(&[POD_A, POD_B]).then(Instant::now),
    );
    // The kernel holds the rules a moment before the agent logs the sync.
    let after_failure = node.wait(
        "the sync after the failures logged",
        Duration::from_secs(5),
        || {
            node.log()
                .rsplit("sync failed")
                .next()
                .and_then(|rest| rest.lines().find(|l| l.contains("sync done")))
                .map(str::to_string)
        },
    );
    assert!(
        after_failure.contains("kind=\"full\""),
        "the first sync after failures is full: {after_failure}"
    );
    node.wait("/healthz 200", Duration::from_secs(5), || {
        (node.healthz() == 200).then_some(())
    });
    // A sync that no source change asked for (a lost canary) and that keeps failing still
    // fails /healthz once it has been owed for twice the sync period.
    node.set_mode("fail");
    let t1 = Instant::now();
    node.exec(&["iptables-nft", "-t", "mangle", "-F", "KUBE-PROXY-CANARY"]);
    let canary_unhealthy = node.wait(
        "/healthz 503 while the resync after a lost canary fails",
        SYNC_PERIOD * 3 + SLACK * 2,
        || (node.healthz() == 503).then(Instant::now),
    );
    node.set_mode("pass");
    node.wait(
        "canary repaired and /healthz 200",
        Duration::from_secs(10),
        || (node.programmed(&[POD_A, POD_B]) && node.healthz() == 200).then_some(()),
    );
    let (attempted, failed) = traffic.counts(t0, Instant::now());
    let failures = failed_calls();
    let counted_end = node.metric("kubeproxy_sync_proxy_rules_iptables_restore_failures_total");
    assert_eq!(
        counted_end, failures as f64,
        "every failed restore is counted once"
    );
    drop(traffic);
    assert_eq!(failed, 0, "connections failed during failing restores");
    print_figures(&[Figure {
        fault: "`iptables-restore` rejects every transaction (then succeeds)".into(),
        attempted,
        failed,
        recovery: recovered - released,
        logged: format!("ERROR `sync failed` with `at line {line}` and the line marked `>>`"),
        counted: format!(
            "restore_failures_total {counted_end} for {failures} failed restores (partial {partial})"
        ),
        healthz: format!(
            "503 after {:.1} s ({failures_when_unhealthy} failures; {:.1} s when a lost canary's resync fails), 200 after recovery",
            (unhealthy_at - t0).as_secs_f64(),
            (canary_unhealthy - t1).as_secs_f64()
        ),
    }]);
}

/// A manifest that does not parse (`--from-files`): knat logs the file, line, document and the
/// object read so far and keeps the rules it had (nothing of the directory applied, not even
/// the files that parse), traffic is untouched and `/healthz` stays 200; the fixed file is
/// applied. Then a `--config` file that does not parse stops `knat run` (exit 2) before it
/// writes a rule: the kernel holds what the stopped agent left.
#[test]
fn manifests_and_config_files_that_do_not_parse_change_nothing() {
    let test = "manifests_and_config_files_that_do_not_parse_change_nothing";
    if !prerequisites(test) {
        return;
    }
    let mut node = Node::new("badin", Front::Nft);
    node.ready();
    let traffic = Traffic::start(&node.ns);
    let before = rules_only(&node.save());
    let t0 = Instant::now();
    // POD_B added, then a second document cut off in the middle of its metadata.
    let broken = format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: extra, namespace: demo\nspec: {{}}\n",
        slice(&[POD_A, POD_B])
    );
    let broken_lines = slice(&[POD_A, POD_B]).lines().count();
    node.write("slice.yaml", &broken);
    let expected = format!(
        "slice.yaml:{}:5: cannot parse document 2 (from line {}, Service demo/extra as far as it could be read)",
        broken_lines + 5,
        broken_lines + 2
    );
    let logged_at = node.wait("the parse error logged", Duration::from_secs(10), || {
        node.log().contains(&expected).then(Instant::now)
    });
    assert!(
        node.log()
            .contains("manifests not applied; keeping the previous state"),
        "{}",
        node.log()
    );
    // Two canary periods (full syncs) later the kernel still holds the old rules.
    std::thread::sleep(SYNC_PERIOD * 2 + Duration::from_millis(500));
    assert_eq!(
        rules_only(&node.save()),
        before,
        "a manifest that does not parse changed the rules"
    );
    assert_eq!(node.healthz(), 200, "/healthz after the parse error");
    node.write("slice.yaml", &slice(&[POD_A, POD_B]));
    let fixed = Instant::now();
    let applied = node.wait("the fixed file applied", Duration::from_secs(10), || {
        node.programmed(&[POD_A, POD_B]).then(Instant::now)
    });
    let (attempted, failed) = traffic.counts(t0, Instant::now());
    drop(traffic);
    assert_eq!(
        failed, 0,
        "connections failed around a manifest that does not parse"
    );

    // knat run --config with a file that does not parse, in the same namespace after the agent
    // is stopped (SIGKILL: its rules stay).
    let mut agent = node.agent.take().expect("agent");
    agent.kill().expect("stop knat");
    let _ = agent.wait();
    let left = rules_only(&node.save());
    let config = node.dir.join("kube-proxy.conf");
    std::fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: \"iptables\niptables:\n  masqueradeBit: 14\n",
    )
    .expect("write the config");
    let config = config.to_string_lossy().into_owned();
    let manifests = node.dir.join("manifests").to_string_lossy().into_owned();
    let args = [
        "timeout",
        "20",
        KNAT,
        "run",
        "--config",
        &config,
        "--from-files",
        &manifests,
        "--hostname-override",
        "node-1",
    ];
    let out = node.command(&args).output().expect("run knat");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr.contains(&format!(
            "{config} is not a KubeProxyConfiguration (YAML or JSON): "
        )),
        "{stderr}"
    );
    assert_eq!(
        rules_only(&node.save()),
        left,
        "a config that does not parse changed the rules"
    );
    // A field with a value of the wrong type names the file and the field.
    std::fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\niptables:\n  masqueradeBit: fourteen\n",
    )
    .expect("write the config");
    let out = node.command(&args).output().expect("run knat");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr.contains(&format!(
            "{config}: iptables.masqueradeBit: invalid value (as written): "
        )),
        "{stderr}"
    );
    assert_eq!(
        rules_only(&node.save()),
        left,
        "a config that does not parse changed the rules"
    );
    print_figures(&[Figure {
        fault: "a manifest that does not parse (`--from-files`), then fixed; a `--config` file that does not parse".into(),
        attempted,
        failed,
        recovery: applied - fixed,
        logged: format!(
            "ERROR `manifests not applied; keeping the previous state` with `{expected}` {:.1} s after the write; `--config`: exit 2 naming the file (and the field)",
            (logged_at - t0).as_secs_f64()
        ),
        counted: "no metric (logged only); rules unchanged for two canary periods and after the refused `--config` runs".into(),
        healthz: "200 throughout".into(),
    }]);
}

/// A LoadBalancer Service with `externalTrafficPolicy: Local` and a health-check node port.
const LB_SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: lb, namespace: demo}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-1, namespace: demo, labels: {kubernetes.io/service-name: lb}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.5]
  nodeName: node-1
";

/// What each listener answers, with knat's default bind addresses: the metrics server only
/// on 127.0.0.1:10249 (refused on the node's other addresses), the health server on
/// 0.0.0.0:10256 with `/healthz` and `/livez` and nothing else (404, as kube-proxy's mux), the
/// metrics server `/metrics`, `/healthz` and `/proxyMode` and nothing else (kube-proxy also
/// has `/configz` and, when enabled, pprof; knat has neither), a health-check node port any
/// path with the Service's JSON (kube-proxy's handler is the whole server). No other TCP
/// listener.
#[test]
fn listeners_bind_and_answer_only_what_kube_proxy_s_do() {
    let test = "listeners_bind_and_answer_only_what_kube_proxy_s_do";
    if !prerequisites(test) {
        return;
    }
    let mut node = Node::new("listen", Front::Nft);
    node.write("lb.yaml", LB_SERVICE);
    node.start_agent_listening(&[]);
    node.wait(
        "the health-check node port",
        Duration::from_secs(20),
        || (node.http("http://127.0.0.1:32100/").0 == 200).then_some(()),
    );
    let (_, sockets, _) = node.try_exec(&["ss", "-Hltn"]);
    let mut listening: Vec<String> = sockets
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect();
    listening.sort();
    // The echo server's two pod addresses, and knat's three listeners.
    let mut expected: Vec<String> = vec![
        format!("{POD_A}:8080"),
        format!("{POD_B}:8080"),
        "127.0.0.1:10249".into(),
        "0.0.0.0:10256".into(),
        // One dual-stack wildcard socket (IPv4 and IPv6), as Go's listener on `:port`.
        "*:32100".into(),
    ];
    expected.sort();
    assert_eq!(listening, expected, "TCP listeners in the node:\n{sockets}");
    // /metrics is refused on any address but loopback.
    let (code, _) = node.http(&format!("http://{POD_A}:10249/metrics"));
    assert_eq!(code, 0, "the metrics server answers on {POD_A}");
    let (code, _) = node.http(&format!("http://{POD_A}:10256/healthz"));
    assert_eq!(
        code, 200,
        "/healthz answers on every address (0.0.0.0, as kube-proxy)"
    );
    let health = |path: &str| node.http(&format!("http://{POD_A}:10256{path}")).0;
    let metrics = |path: &str| node.http(&format!("http://127.0.0.1:10249{path}"));
    for (path, code) in [
        ("/healthz", 200),
        ("/livez", 200),
        ("/", 404),
        ("/metrics", 404),
        ("/configz", 404),
        ("/debug/pprof/", 404),
        ("/proxyMode", 404),
        ("/healthz/extra", 404),
    ] {
        assert_eq!(health(path), code, "health server {path}");
    }
    for (path, code) in [
        ("/metrics", 200),
        ("/healthz", 200),
        ("/proxyMode", 200),
        ("/", 404),
        ("/livez", 404),
        ("/configz", 404),
        ("/debug/pprof/", 404),
    ] {
        assert_eq!(metrics(path).0, code, "metrics server {path}");
    }
    assert_eq!(metrics("/proxyMode").1.trim(), "iptables");
    for path in ["/", "/healthz", "/anything/at/all"] {
        let (code, body) = node.http(&format!("http://{POD_A}:32100{path}"));
        assert_eq!(code, 200, "health-check node port {path}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(
            v,
            serde_json::json!({"service": {"namespace": "demo", "name": "lb"},
                               "localEndpoints": 1, "serviceProxyHealthy": true}),
            "{path}: {body}"
        );
    }
    println!(
        "\nlisteners: {listening:?}; health server: /healthz /livez; metrics server (loopback only): /metrics /healthz /proxyMode; health-check node port: any path"
    );
}

/// `iptables-restore` hangs: knat kills it (and the process group a wrapper started) at the
/// command limit, never runs a second one meanwhile, and the retry programs the change.
#[test]
fn a_hanging_restore_is_killed_at_its_limit_without_piling_up_processes() {
    let test = "a_hanging_restore_is_killed_at_its_limit_without_piling_up_processes";
    if !prerequisites(test) {
        return;
    }
    let mut node = Node::new("hang", Front::Nft);
    node.install_wrapper();
    node.ready();
    let traffic = Traffic::start(&node.ns);
    let counter = ChildCounter::start(node.agent_pid());
    node.set_mode("hang-once");
    let t0 = Instant::now();
    node.write("slice.yaml", &slice(&[POD_A, POD_B]));
    node.wait("the hanging restore", Duration::from_secs(10), || {
        (processes_named(&node.hang_marker()) == 1).then_some(())
    });
    let unhealthy_at = node.wait(
        "/healthz 503 while the sync hangs",
        SYNC_PERIOD * 2 + SLACK * 2,
        || (node.healthz() == 503).then(Instant::now),
    );
    let limit = knat::backend::MIN_COMMAND_TIMEOUT;
    let recovered = node.wait(
        "the change programmed after the kill",
        limit + SLACK * 3,
        || node.programmed(&[POD_A, POD_B]).then(Instant::now),
    );
    let recovery = recovered - t0;
    assert!(
        recovery >= limit,
        "not killed before its limit: {recovery:?}"
    );
    assert!(
        recovery <= limit + SYNC_PERIOD + SLACK,
        "retried soon after the kill: {recovery:?}"
    );
    assert_eq!(
        processes_named(&node.hang_marker()),
        0,
        "the wrapper's grandchild was killed with its process group"
    );
    let max_children = counter.finish();
    assert!(
        max_children <= 1,
        "at most one iptables process at a time, saw {max_children}"
    );
    // knat may be running its next command right now (a canary check, a listing): what must
    // not exist is a child that exited and stays unreaped. An exit is reaped within
    // milliseconds; one still unreaped after 2 s is a zombie.
    let reaped = (0..40).any(|_| {
        let none = zombie_children_of(node.agent_pid()) == 0;
        if !none {
            std::thread::sleep(Duration::from_millis(50));
        }
        none
    });
    assert!(
        reaped,
        "no zombie left: {} unreaped after 2 s",
        zombie_children_of(node.agent_pid())
    );
    let log = node.log();
    let killed = format!(
        "did not finish within {} s; killed it and its process group",
        limit.as_secs()
    );
    assert!(log.contains(&killed), "{log}");
    node.wait("/healthz 200", Duration::from_secs(5), || {
        (node.healthz() == 200).then_some(())
    });
    let counted = node.metric("kubeproxy_sync_proxy_rules_iptables_restore_failures_total");
    assert!(counted >= 1.0);
    let (attempted, failed) = traffic.counts(t0, Instant::now());
    drop(traffic);
    assert_eq!(failed, 0, "connections failed while a restore hung");
    print_figures(&[Figure {
        fault: format!(
            "`iptables-restore` hangs (killed at the {} s limit)",
            limit.as_secs()
        ),
        attempted,
        failed,
        recovery,
        logged:
            "ERROR `sync failed: ... did not finish within 30 s; killed it and its process group`"
                .into(),
        counted: format!(
            "restore_failures_total {counted}; at most {max_children} child process at a time, 0 left"
        ),
        healthz: format!(
            "503 after {:.1} s (sync owed > 2 x sync period), 200 after recovery",
            (unhealthy_at - t0).as_secs_f64()
        ),
    }]);
}

/// SIGTERM while `iptables-restore` hangs: knat stops the restore (the wrapper and the
/// grandchild in its process group), exits 0 within 2 s instead of waiting for the restore's
/// 30 s limit, logs which process it stopped, and the rules are the ones before that restore.
#[test]
fn sigterm_during_a_hanging_restore_stops_it_and_exits_at_once() {
    let test = "sigterm_during_a_hanging_restore_stops_it_and_exits_at_once";
    if !prerequisites(test) {
        return;
    }
    let mut node = Node::new("term", Front::Nft);
    node.install_wrapper();
    node.ready();
    let before = rules_only(&node.save());
    node.set_mode("hang-once");
    node.write("slice.yaml", &slice(&[POD_A, POD_B]));
    let agent_pid = node.agent_pid();
    let wrapper = node.dir.join("bin").join("iptables-nft-restore");
    // The hanging restore: knat's child running the wrapper, whose grandchild sleeps.
    let restore = node.wait("the hanging restore", Duration::from_secs(10), || {
        if processes_named(&node.hang_marker()) != 1 {
            return None;
        }
        proc_children(agent_pid).find_map(|child| {
            let cmdline = std::fs::read(child.path.join("cmdline")).ok()?;
            let runs_wrapper = cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == wrapper.as_os_str().as_encoded_bytes());
            runs_wrapper.then_some(child.pid)
        })
    });
    let mut agent = node.agent.take().expect("agent");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(agent_pid).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM knat");
    let termed = Instant::now();
    let status = loop {
        if let Some(status) = agent.try_wait().expect("wait for knat") {
            break status;
        }
        if termed.elapsed() > Duration::from_secs(10) {
            let _ = agent.kill();
            let _ = agent.wait();
            panic!("knat still runs 10 s after SIGTERM\n{}", node.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let exited = termed.elapsed();
    let log = node.log();
    assert!(status.success(), "knat exited with {status}\n{log}");
    assert!(
        exited <= Duration::from_secs(2),
        "knat took {exited:?} to exit after SIGTERM\n{log}"
    );
    // The restore led its own process group: nothing of it may be left, the grandchild
    // included (SIGKILL is delivered at once, the exit may take the kernel a moment).
    let group = nix::unistd::Pid::from_raw(i32::try_from(restore).expect("pid"));
    let deadline = Instant::now() + Duration::from_secs(2);
    while nix::sys::signal::killpg(group, None).is_ok() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        nix::sys::signal::killpg(group, None),
        Err(nix::errno::Errno::ESRCH),
        "a process of the restore's group {restore} is left"
    );
    assert_eq!(
        processes_named(&node.hang_marker()),
        0,
        "the grandchild is gone"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{restore}")).exists(),
        "the restore {restore} is gone"
    );
    let stopped = format!(
        "shutting down during a sync: stopped iptables-nft-restore (pid {restore}) and its process group; each table of a restore is committed whole at its COMMIT line"
    );
    assert!(log.contains(&stopped), "no line {stopped:?} in\n{log}");
    assert!(
        !log.contains("sync failed"),
        "a stopped sync is not a failure\n{log}"
    );
    // The wrapper never passed the payload on: every table is as before the change.
    assert_eq!(rules_only(&node.save()), before, "the rules changed");
    println!(
        "\nSIGTERM during a hanging restore: knat exited 0 after {:.0} ms; process group {restore} gone",
        exited.as_secs_f64() * 1000.0
    );
}

/// Another process holds the xtables lock for 30 s (iptables-legacy; a private lock file):
/// every command knat runs waits at most its `-w 5`, one at a time, and the change is
/// programmed soon after the lock is released.
#[test]
fn the_xtables_lock_held_for_30_s_delays_syncs_without_piling_up_processes() {
    let test = "the_xtables_lock_held_for_30_s_delays_syncs_without_piling_up_processes";
    if !prerequisites(test)
        || !knat_testbed::prerequisites::test_prerequisites(
            test,
            &["iptables-legacy", "iptables-legacy-save"],
        )
    {
        return;
    }
    let mut node = Node::new("lock", Front::Legacy);
    node.ready();
    let traffic = Traffic::start(&node.ns);
    let counter = ChildCounter::start(node.agent_pid());
    let hold = Duration::from_secs(30);
    let mut holder = Command::new("flock")
        .arg(node.lockfile())
        .args(["sleep", &hold.as_secs().to_string()])
        .spawn()
        .expect("flock");
    // flock(1) takes the lock before it starts sleep; give it a moment.
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    node.write("slice.yaml", &slice(&[POD_A, POD_B]));
    node.wait("a restore that gave up on the lock", hold, || {
        node.log()
            .contains("Another app is currently holding the xtables lock")
            .then_some(())
    });
    assert!(
        !node.programmed(&[POD_A, POD_B]),
        "nothing written while the lock is held"
    );
    let status = holder.wait().expect("flock ends");
    assert!(status.success());
    let released = Instant::now();
    let recovered = node.wait(
        "the change after the lock",
        SYNC_PERIOD * 3 + SLACK * 2,
        || node.programmed(&[POD_A, POD_B]).then(Instant::now),
    );
    let max_children = counter.finish();
    assert!(
        max_children <= 1,
        "at most one iptables process at a time, saw {max_children}"
    );
    let recovery = recovered - released;
    // Waits of at most -w 5 each and the backoff (at most the sync period) after a failure.
    assert!(
        recovery <= Duration::from_secs(5) + SYNC_PERIOD + SLACK,
        "recovered {recovery:?} after the release\n{}",
        node.log()
    );
    let log = node.log();
    let lock_failures = log.matches("sync failed").count();
    let counted = node.metric("kubeproxy_sync_proxy_rules_iptables_restore_failures_total");
    let (attempted, failed) = traffic.counts(t0, Instant::now());
    drop(traffic);
    assert_eq!(failed, 0, "connections failed while the lock was held");
    print_figures(&[Figure {
        fault: "xtables lock held by another process for 30 s (iptables-legacy)".into(),
        attempted,
        failed,
        recovery,
        logged: format!(
            "ERROR `sync failed` with `Another app is currently holding the xtables lock` x{lock_failures}"
        ),
        counted: format!(
            "restore_failures_total {counted}; at most {max_children} child process at a time"
        ),
        healthz: format!("{} after recovery", node.healthz()),
    }]);
}

/// The `i`-th of the many Services: `bulk-i` in `demo` at 10.96.(1 + i / 250).(1 + i % 250),
/// one endpoint (pod A).
fn bulk_ip(i: usize) -> String {
    format!("10.96.{}.{}", 1 + i / 250, 1 + i % 250)
}

/// The `i`-th of the many Services and its one EndpointSlice, the endpoint at `pod`.
fn bulk_service(i: usize, pod: &str) -> [serde_json::Value; 2] {
    [
        serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("bulk-{i}"), "namespace": "demo"},
            "spec": {"clusterIP": bulk_ip(i),
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}
        }),
        serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("bulk-{i}-1"), "namespace": "demo",
                         "labels": {"kubernetes.io/service-name": format!("bulk-{i}")}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [pod], "nodeName": "node-1"}]
        }),
    ]
}

/// A `v1` List (JSON) of `n` Services with one EndpointSlice each.
fn bulk_list(n: usize) -> String {
    let mut items = Vec::with_capacity(2 * n);
    for i in 0..n {
        items.extend(bulk_service(i, POD_A));
    }
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// The `iptables-nft-restore` child of `parent`, if one runs.
fn restore_child_of(parent: u32) -> Option<u32> {
    proc_children(parent).find_map(|child| {
        let cmdline = std::fs::read(child.path.join("cmdline")).ok()?;
        let argv0 = cmdline.split(|b| *b == 0).next()?;
        argv0
            .ends_with(b"iptables-nft-restore")
            .then_some(child.pid)
    })
}

/// Service chains declared in the nat table of a dump.
fn nat_service_chains(dump: &str) -> usize {
    let nat = dump
        .split("*nat\n")
        .nth(1)
        .and_then(|rest| rest.split("COMMIT").next())
        .unwrap_or_default();
    nat.lines().filter(|l| l.starts_with(":KUBE-SVC-")).count()
}

/// One TCP probe from inside the namespace.
fn probe_in(ns: &str, target: SocketAddr) -> bool {
    let netns = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
    std::thread::spawn(move || {
        nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("enter the node's network namespace");
        knat::lab::probe(target, knat::lab::Proto::Tcp, Duration::from_secs(1))
            .reply()
            .is_some()
    })
    .join()
    .unwrap_or(false)
}

/// knat is SIGKILLed while `iptables-restore` applies 10,000 new Services (at three points:
/// as the restore starts, 0.5 s and 2 s into it): the nat table then holds the old rule set or
/// the new one, never part of it; traffic to the existing Service never fails; started
/// again, knat converges to the new set.
#[test]
fn sigkill_during_a_10000_service_restore_leaves_old_or_new_and_the_restart_converges() {
    let test = "sigkill_during_a_10000_service_restore_leaves_old_or_new_and_the_restart_converges";
    if !prerequisites(test) {
        return;
    }
    const N: usize = 10_000;
    let mut node = Node::new("kill", Front::Nft);
    node.ready();
    let traffic = Traffic::start(&node.ns);
    let bulk = bulk_list(N);
    let t_all = Instant::now();
    let mut rows = Vec::new();
    for delay_ms in [0u64, 500, 2000] {
        let t0 = Instant::now();
        node.write("bulk.json", &bulk);
        let pid = node.agent_pid();
        let restore = node.wait("the big restore", Duration::from_secs(60), || {
            restore_child_of(pid)
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        let mut agent = node.agent.take().expect("agent");
        agent.kill().expect("SIGKILL knat");
        let killed = Instant::now();
        let _ = agent.wait();
        // The orphaned restore reads to the end of its input and ends on its own.
        node.wait(
            "the orphaned restore to end",
            Duration::from_secs(60),
            || (!std::path::Path::new(&format!("/proc/{restore}")).exists()).then_some(()),
        );
        let chains = nat_service_chains(&node.save());
        let state = match chains {
            1 => "old (1 Service)",
            c if c == N + 1 => "new (10,001 Services)",
            c => panic!("the nat table holds {c} Service chains after the kill: a mix"),
        };
        node.start_agent();
        let restarted = Instant::now();
        node.wait(
            "convergence after the restart",
            Duration::from_secs(120),
            || {
                (nat_service_chains(&node.save()) == N + 1 && node.programmed(&[POD_A]))
                    .then_some(())
            },
        );
        let converged = Instant::now();
        for i in [0, N / 2, N - 1] {
            let target: SocketAddr = format!("{}:80", bulk_ip(i)).parse().expect("address");
            assert!(
                probe_in(&node.ns, target),
                "bulk-{i} answers after the restart"
            );
        }
        node.wait("/healthz 200", Duration::from_secs(10), || {
            (node.healthz() == 200).then_some(())
        });
        // Back to the old state for the next round.
        std::fs::remove_file(node.dir.join("manifests").join("bulk.json")).expect("remove");
        node.wait(
            "the 10,000 Services removed",
            Duration::from_secs(120),
            || (nat_service_chains(&node.save()) == 1).then_some(()),
        );
        let (attempted, failed) = traffic.counts(t0, Instant::now());
        rows.push(Figure {
            fault: format!(
                "SIGKILL {delay_ms} ms into the restore of 10,000 Services, then restart"
            ),
            attempted,
            failed,
            recovery: converged - restarted,
            logged: format!(
                "nat table after the kill: {state}; killed {:.1} s after the change",
                (killed - t0).as_secs_f64()
            ),
            counted: format!(
                "{} Service chains after the restart; bulk-0, bulk-{}, bulk-{} answer",
                N + 1,
                N / 2,
                N - 1
            ),
            healthz: "200 after the restart".into(),
        });
    }
    let (attempted, failed) = traffic.counts(t_all, Instant::now());
    drop(traffic);
    print_figures(&rows);
    assert_eq!(
        failed, 0,
        "connections to the existing Service failed ({failed} of {attempted})"
    );
}

/// `n` Services (as [`bulk_list`]) in churn generation `g`: every other Service's endpoint
/// moves between the two pods each generation, and 1 to 10 extra Services come and go.
fn churn_list(n: usize, g: usize) -> String {
    let extra = 1 + g % 10;
    let mut items = Vec::with_capacity(2 * (n + extra));
    for i in 0..n + extra {
        let pod = if (i + g).is_multiple_of(2) {
            POD_A
        } else {
            POD_B
        };
        items.extend(bulk_service(i, pod));
    }
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How often the soak samples knat's RSS.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);

/// Least-squares slope of `(x, y)` points.
fn slope(points: &[(f64, f64)]) -> f64 {
    slope_with_error(points).0
}

/// Least-squares slope of `(x, y)` points and its standard error (0 with fewer than 3 points).
fn slope_with_error(points: &[(f64, f64)]) -> (f64, f64) {
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (num, den) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| {
        (a + (x - mx) * (y - my), b + (x - mx) * (x - mx))
    });
    if den == 0.0 {
        return (0.0, 0.0);
    }
    let b = num / den;
    if points.len() < 3 {
        return (b, 0.0);
    }
    let residuals: f64 = points
        .iter()
        .map(|(x, y)| (y - my - b * (x - mx)).powi(2))
        .sum();
    (b, (residuals / (n - 2.0) / den).sqrt())
}

/// One-sided 95% quantile of Student's t with `dof` degrees of freedom.
fn t95(dof: usize) -> f64 {
    const TABLE: [f64; 10] = [6.31, 2.92, 2.35, 2.13, 2.02, 1.94, 1.89, 1.86, 1.83, 1.81];
    match dof {
        0 => f64::INFINITY,
        d if d <= TABLE.len() => TABLE[d - 1],
        d if d <= 20 => 1.75,
        _ => 1.70,
    }
}

/// The minimum of each window of `window` minutes over `points` (minutes, KiB), placed at the
/// window's middle; a last window shorter than half of `window` is dropped.
fn window_minima(points: &[(f64, f64)], window: f64) -> Vec<(f64, f64)> {
    let Some(&(start, _)) = points.first() else {
        return Vec::new();
    };
    let end = points.last().map_or(start, |p| p.0);
    let mut minima = Vec::new();
    let mut from = start;
    while from + window / 2.0 <= end {
        let min = points
            .iter()
            .filter(|(m, _)| *m >= from && *m < from + window)
            .map(|(_, kib)| *kib)
            .fold(f64::INFINITY, f64::min);
        if min.is_finite() {
            minima.push((from + window / 2.0, min));
        }
        from += window;
    }
    minima
}

/// Churn at 1,000 Services (a change every 500 ms: 500 endpoints move, Services come and go)
/// for `KNAT_SOAK_SECONDS` (60 unless set; docs/reliability.md has a 600 s run) with knat's RSS
/// sampled every 200 ms (written as CSV to `KNAT_SOAK_SAMPLES` when set). After a 10 s warm-up
/// the samples are cut into ten windows (5 s to 60 s long) and the least-squares slope of the
/// windows' minima, less its one-sided 95% uncertainty (t times its standard error), must stay
/// under 1% of their mean a minute, or 5% over the run's steady part when that is more (6% a
/// minute in CI's 60 s run: see the bound's comment), with 95% confidence (and the rules follow
/// the last generation).
///
/// Why the minima: a single sample lands anywhere in a sync (1,000 Services rendered, a restore
/// payload built and freed on the runtime's worker threads, whose mimalloc heaps return freed
/// pages only when that thread allocates again or goes idle), so one-second samples swung
/// between 38 and 58 MB with no trend (150 s measured: max - min 45% of the mean) and a slope
/// over them depended on where the last syncs' peaks fell (a 60 s run measured +12% per minute,
/// a 600 s run -1.3%, neither a leak). The floor between syncs is what a leak raises. Why the
/// uncertainty: even the floor moves by 1-3 MB between windows, so a 60 s run cannot resolve 1%
/// a minute (the 10 s minima of 60 s stretches of one 150 s run gave slopes from -8.7% to
/// +9.3% a minute); subtracting the uncertainty keeps noise from failing the test while a
/// leak, which lifts every window, still fails it. A 600 s run (docs/reliability.md) resolves
/// well under 1%.
#[test]
fn churn_soak_at_1000_services_shows_no_rss_growth() {
    let test = "churn_soak_at_1000_services_shows_no_rss_growth";
    if !prerequisites(test) {
        return;
    }
    const N: usize = 1_000;
    let seconds: u64 = std::env::var("KNAT_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut node = Node::new("soak", Front::Nft);
    node.ready();
    let pid = node.agent_pid();
    let traffic = Traffic::start(&node.ns);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(seconds);
    let warm_up = Duration::from_secs(10);
    let mut samples = Vec::new();
    let mut next_sample = t0;
    let mut generation = 0;
    while Instant::now() < end {
        node.write("bulk.json", &churn_list(N, generation));
        generation += 1;
        let step_end = Instant::now() + Duration::from_millis(500);
        while Instant::now() < step_end {
            if Instant::now() >= next_sample {
                let at = next_sample - t0;
                let rss = rss_kib(pid).expect("knat is running");
                samples.push((at.as_secs_f64() / 60.0, rss));
                next_sample += SAMPLE_EVERY;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let last = generation - 1;
    let extra = 1 + last % 10;
    node.wait("the last generation", Duration::from_secs(30), || {
        let dump = node.save();
        (nat_service_chains(&dump) == N + extra + 1).then_some(())
    });
    let (attempted, failed) = traffic.counts(t0, Instant::now());
    drop(traffic);
    if let Ok(path) = std::env::var("KNAT_SOAK_SAMPLES") {
        let csv: String = samples
            .iter()
            .map(|(m, kib)| format!("{:.1},{kib}\n", m * 60.0))
            .collect();
        std::fs::write(&path, format!("seconds,rss_kib\n{csv}")).expect("write the samples");
    }
    let steady: Vec<(f64, f64)> = samples
        .iter()
        .copied()
        .filter(|(m, _)| *m * 60.0 >= warm_up.as_secs_f64())
        .collect();
    assert!(steady.len() >= 10, "too few samples: {}", steady.len());
    let steady_minutes = (seconds as f64 - warm_up.as_secs_f64()) / 60.0;
    let window = (steady_minutes / 10.0).clamp(5.0 / 60.0, 1.0);
    let minima = window_minima(&steady, window);
    assert!(minima.len() >= 4, "too few windows: {minima:?}");
    let (floor_per_min, floor_error) = slope_with_error(&minima);
    let floor_low = floor_per_min - t95(minima.len() - 2) * floor_error;
    let floor_mean = minima.iter().map(|(_, y)| y).sum::<f64>() / minima.len() as f64;
    let all_per_min = slope(&steady);
    let mean = steady.iter().map(|(_, y)| y).sum::<f64>() / steady.len() as f64;
    let (min, max) = steady
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), (_, y)| (a.min(*y), b.max(*y)));
    let minima_text: Vec<String> = minima.iter().map(|(_, k)| format!("{k:.0}")).collect();
    println!(
        "\nsoak: {seconds} s, {generation} generations at {N} Services, {} RSS samples; after {} s: mean {:.0} KiB, min {:.0}, max {:.0}, slope of all samples {:+.1} KiB/min ({:+.3}%/min); {} windows of {:.0} s, minima [{}] KiB, slope of the minima {:+.1} ± {:.1} KiB/min ({:+.3}% of their mean per minute, at least {:+.3}% with 95% confidence); traffic {attempted} / {failed} failed",
        samples.len(),
        warm_up.as_secs(),
        mean,
        min,
        max,
        all_per_min,
        100.0 * all_per_min / mean,
        minima.len(),
        window * 60.0,
        minima_text.join(", "),
        floor_per_min,
        floor_error,
        100.0 * floor_per_min / floor_mean,
        100.0 * floor_low / floor_mean
    );
    // The bound: 1% a minute (the issue's), but at least 5% of the floor over the run's steady
    // part. CI's 60 s run (50 steady seconds) thus allows 6% a minute: the floor's own swings
    // between 5 s windows are a few per cent (36.2-38.0 MB in one CI rehearsal, the allocator
    // returning arenas at different moments), and that rehearsal failed a flat 1%/min bound at
    // +1.4%/min (95% lower bound) with no leak. A deliberate leak of 40 KB per sync (about
    // 5 MB a minute here) measured +10.2%/min (lower bound) in 60 s and fails; from 500 steady
    // seconds on the bound is the 1%/min of the 600 s runs in docs/reliability.md.
    let bound_per_min = (0.05 / steady_minutes).max(0.01);
    assert!(
        floor_low < bound_per_min * floor_mean,
        "knat's RSS floor grows {floor_per_min:.1} ± {floor_error:.1} KiB/min, at least {floor_low:.1} KiB/min with 95% confidence (more than {:.1}% a minute of the minima's mean {floor_mean:.0} KiB over {steady_minutes:.1} steady minutes; minima {minima:?})",
        100.0 * bound_per_min
    );
    assert_eq!(failed, 0, "connections to the existing Service failed");
}
