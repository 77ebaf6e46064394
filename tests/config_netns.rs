//! `knat run --config FILE` against the equivalent flags, in network namespaces this test
//! creates: kubeadm's and kind's `kube-proxy` ConfigMaps (tests/fixtures/kube-proxy-config/)
//! must program exactly the rules the flags program (`iptables-save`, counters and comments
//! dropped), a file that differs in one setting must program different rules, and an invalid
//! file must stop knat before it programs anything.
//!
//! Needs root, `ip`, `iptables-save`, `iptables-restore`. With `CI=true` missing
//! prerequisites are a failure; otherwise the test prints SKIPPED and returns. Each run gets
//! its own namespace, deleted (and knat killed by PID) also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KNAT: &str = env!("CARGO_BIN_EXE_knat");
const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/kube-proxy-config"
);

const MANIFESTS: &str = "apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 10.0.0.1}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  externalTrafficPolicy: Local
  healthCheckNodePort: 32000
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 203.0.113.10}]}}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: demo}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: https, port: 443, protocol: TCP, targetPort: 8443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.244.1.5]
  nodeName: node-1
- addresses: [10.244.2.7]
  nodeName: node-2
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: demo, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: https, port: 8443, protocol: TCP}]
endpoints:
- addresses: [10.244.2.9]
  nodeName: node-2
";

/// One namespace with `knat run --from-files` in it.
struct Run {
    ns: String,
    dir: PathBuf,
    agent: Option<Child>,
}

impl Run {
    fn new(tag: &str) -> Run {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let ns = format!("knat-cfg-{tag}-{}-{nanos}", std::process::id());
        let dir = std::env::temp_dir().join(&ns);
        std::fs::create_dir_all(dir.join("manifests")).expect("scratch dir");
        std::fs::write(dir.join("manifests/all.yaml"), MANIFESTS).expect("manifests");
        let run = Run {
            ns,
            dir,
            agent: None,
        };
        let ok = Command::new("ip")
            .args(["netns", "add", &run.ns])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip netns add {}", run.ns);
        run.exec(&["ip", "link", "set", "lo", "up"]);
        run
    }

    fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args)
            .output()
            .expect("spawn");
        assert!(out.status.success(), "{args:?} failed in {}", self.ns);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("knat.log")).unwrap_or_default()
    }

    fn spawn(&mut self, args: &[&str]) {
        let manifests = self.dir.join("manifests");
        let log = std::fs::File::create(self.dir.join("knat.log")).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, KNAT, "run", "--from-files"])
            .arg(&manifests)
            .args(["--files-poll-interval", "100ms"])
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .env_remove("KUBECONFIG")
            .env_remove("NODE_NAME")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn knat");
        self.agent = Some(child);
    }

    /// The programmed rules once they contain both services and stop changing.
    fn settled_rules(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        loop {
            if let Some(agent) = self.agent.as_mut()
                && let Ok(Some(status)) = agent.try_wait()
            {
                panic!(
                    "knat exited ({status}) before programming\nlog:\n{}",
                    self.log()
                );
            }
            let now = normalise(&self.exec(&["iptables-save"]));
            if now.contains("demo/web:http") && now.contains("demo/api:https") && now == last {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "rules did not settle\nrules:\n{now}\nlog:\n{}",
                self.log()
            );
            last = now;
            std::thread::sleep(Duration::from_millis(400));
        }
    }

    /// Waits for knat to exit by itself; its status and log.
    fn exit_status(&mut self) -> (std::process::ExitStatus, String) {
        let agent = self.agent.as_mut().expect("agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = agent.try_wait().expect("wait") {
                self.agent = None;
                return (status, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "knat kept running\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `iptables-save` without comment lines and with chain counters zeroed.
fn normalise(dump: &str) -> String {
    dump.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(i)) => format!("{} [0:0]", &l[..i]),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The rules knat programs with these arguments, in a fresh namespace.
fn rules(tag: &str, args: &[&str]) -> String {
    let mut run = Run::new(tag);
    run.spawn(args);
    run.settled_rules()
}

fn fixture(name: &str) -> String {
    format!("{FIXTURES}/{name}")
}

/// A copy of a fixture with one line replaced (the file lives in `dir`).
fn edited(dir: &Path, name: &str, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(fixture(name)).expect("fixture");
    assert!(text.contains(from), "{name} has no {from:?}");
    let path = dir.join(format!("edited-{name}"));
    std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
    path.to_string_lossy().into_owned()
}

fn prerequisites(test: &str) -> bool {
    knat_testbed::prerequisites::test_prerequisites(
        test,
        &["ip", "iptables-save", "iptables-restore"],
    )
}

#[test]
fn kubeadm_and_kind_configmaps_program_what_the_equivalent_flags_program() {
    if !prerequisites("kubeadm_and_kind_configmaps_program_what_the_equivalent_flags_program") {
        return;
    }
    let node = ["--hostname-override", "node-1"];
    let kubeadm = fixture("kubeadm.conf");
    let from_file = rules(
        "kubeadm-file",
        &[&["--config", &kubeadm][..], &node].concat(),
    );
    let from_flags = rules(
        "kubeadm-flags",
        &[&["--cluster-cidr", "10.244.0.0/16"][..], &node].concat(),
    );
    assert!(from_file.contains("10.244.0.0/16"), "{from_file}");
    assert_eq!(
        from_file, from_flags,
        "kubeadm's ConfigMap and its flags differ"
    );

    let kind = fixture("kind-configmap.conf");
    let kind_file = rules("kind-file", &[&["--config", &kind][..], &node].concat());
    let kind_flags = rules(
        "kind-flags",
        &[
            &[
                "--cluster-cidr",
                "10.244.0.0/16",
                "--iptables-min-sync-period",
                "1s",
            ][..],
            &node,
        ]
        .concat(),
    );
    assert_eq!(
        kind_file, kind_flags,
        "kind's ConfigMap and its flags differ"
    );

    // The comparison sees a setting that differs: masqueradeBit 13 in the file.
    let scratch = tempdir("edited");
    let bit13 = edited(
        scratch.path(),
        "kubeadm.conf",
        "  masqueradeBit: null\n  minSyncPeriod",
        "  masqueradeBit: 13\n  minSyncPeriod",
    );
    let file13 = rules("bit13-file", &[&["--config", &bit13][..], &node].concat());
    assert_ne!(file13, from_flags, "masqueradeBit 13 must change the rules");
    assert!(file13.contains("0x2000"), "{file13}");
    let flags13 = rules(
        "bit13-flags",
        &[
            &[
                "--cluster-cidr",
                "10.244.0.0/16",
                "--iptables-masquerade-bit",
                "13",
            ][..],
            &node,
        ]
        .concat(),
    );
    assert_eq!(file13, flags13);
    // A flag given on the command line wins over the file.
    let overridden = rules(
        "bit13-override",
        &[
            &["--config", &bit13, "--iptables-masquerade-bit", "14"][..],
            &node,
        ]
        .concat(),
    );
    assert_eq!(overridden, from_flags);
}

#[test]
fn an_invalid_config_file_programs_nothing() {
    if !prerequisites("an_invalid_config_file_programs_nothing") {
        return;
    }
    let scratch = tempdir("invalid");
    let bad = edited(
        scratch.path(),
        "kubeadm.conf",
        "mode: iptables",
        "mode: nftables",
    );
    let mut run = Run::new("invalid");
    run.spawn(&["--config", &bad, "--hostname-override", "node-1"]);
    let (status, log) = run.exit_status();
    assert!(!status.success(), "{log}");
    assert!(log.contains("mode: invalid value \"nftables\""), "{log}");
    let dump = run.exec(&["iptables-save"]);
    assert!(!dump.contains("KUBE-"), "something was programmed:\n{dump}");
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir(tag: &str) -> TempDir {
    let dir = std::env::temp_dir().join(format!("knat-cfg-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    TempDir(dir)
}

#[test]
fn a_changed_config_file_ends_knat_and_leaves_the_rules() {
    if !prerequisites("a_changed_config_file_ends_knat_and_leaves_the_rules") {
        return;
    }
    let scratch = tempdir("changed");
    let copy = edited(
        scratch.path(),
        "kubeadm.conf",
        "mode: iptables",
        "mode: iptables",
    );
    let mut run = Run::new("changed");
    run.spawn(&["--config", &copy, "--hostname-override", "node-1"]);
    let before = run.settled_rules();
    // Rewriting the same bytes is no change.
    let text = std::fs::read_to_string(&copy).expect("copy");
    std::fs::write(&copy, &text).expect("rewrite");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        run.agent
            .as_mut()
            .is_some_and(|a| matches!(a.try_wait(), Ok(None))),
        "knat exited on an unchanged file\n{}",
        run.log()
    );
    let changed_at = Instant::now();
    std::fs::write(
        &copy,
        text.replacen("  masqueradeBit: null\n", "  masqueradeBit: 13\n", 1),
    )
    .expect("change the file");
    let (status, log) = run.exit_status();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("the content of the --config file changed"),
        "{log}"
    );
    eprintln!(
        "config_netns: knat exited {:.1?} after the file changed",
        changed_at.elapsed()
    );
    assert_eq!(
        normalise(&run.exec(&["iptables-save"])),
        before,
        "the rules must stay when knat exits"
    );
}
