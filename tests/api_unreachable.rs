//! The real `knat run` against an API server address where nothing listens, and with the
//! shipped ConfigMap's placeholder: what the operator reads in the log.
//!
//! Needs nothing special (no root): the agent runs in this machine's namespaces, but with
//! `--localhost-nodeports=false` (no sysctl is touched), `--iptables-backend legacy` (no
//! detection) and loopback admin ports chosen by the kernel, and it never gets past waiting
//! for its first lists, so it writes no rule. Each agent is killed by PID, also on failure.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KNAT: &str = env!("CARGO_BIN_EXE_knat");

/// A scratch directory (removed on drop) and the agent started in it (killed on drop).
struct Scratch {
    dir: PathBuf,
    agent: Option<Child>,
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("knat-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch { dir, agent: None }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// `knat run` with `args` and only `env` (plus PATH and HOME = the scratch directory, so no
    /// `~/.kube/config` is found).
    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(KNAT);
        command
            .arg("run")
            .args([
                "--hostname-override",
                "node-1",
                "--ip-families",
                "ipv4",
                "--iptables-backend",
                "legacy",
                "--localhost-nodeports=false",
                "--healthz-bind-address",
                "127.0.0.1:0",
                "--metrics-bind-address",
                "127.0.0.1:0",
            ])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    fn start(&mut self, args: &[&str], env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.dir.join("agent.log")).expect("log file");
        let child = self
            .command(args, env)
            .stderr(log)
            .spawn()
            .expect("spawn knat run");
        self.agent = Some(child);
    }

    /// The first log line containing `needle`, waiting up to 10 s; fails if the agent exits.
    fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            if let Some(agent) = self.agent.as_mut()
                && let Ok(Some(status)) = agent.try_wait()
            {
                panic!(
                    "knat run exited ({status}) before logging {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} within 10 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// True when the agent is still running (still retrying).
    fn running(&mut self) -> bool {
        self.agent
            .as_mut()
            .is_some_and(|a| matches!(a.try_wait(), Ok(None)))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            let _ = agent.kill();
            let _ = agent.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nothing listens on (bound, then released).
fn unused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// A kubeconfig for `https://127.0.0.1:PORT` with a fake token (no CA needed).
fn kubeconfig(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("kubeconfig.conf");
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster: {{server: \"https://127.0.0.1:{port}\", insecure-skip-tls-verify: true}}
users:
- name: test
  user: {{token: not-a-real-token}}
contexts:
- name: test
  context: {{cluster: test, user: test}}
current-context: test
"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// The address is the one the kubelet announced as the `kubernetes` Service's ClusterIP:
/// the line names the address, where it came from (KUBECONFIG), that nothing proxies it, and
/// the ConfigMap fix; the agent keeps retrying.
#[test]
fn unreachable_service_ip_is_named_with_the_config_map_fix() {
    let mut s = Scratch::new("api-svc");
    let port = unused_port();
    let kc = kubeconfig(&s.dir, port);
    let kc = kc.to_string_lossy().into_owned();
    let port_env = format!("tcp://127.0.0.1:{port}");
    let started = Instant::now();
    s.start(
        &[],
        &[
            ("KUBECONFIG", &kc),
            ("KUBERNETES_PORT_443_TCP_ADDR", "127.0.0.1"),
            ("KUBERNETES_PORT", &port_env),
        ],
    );
    let line = s.wait_line("cannot connect to the API server");
    let expected = format!(
        "ERROR knat::agent::watch: cannot connect to the API server at 127.0.0.1:{port} (from the \
         kubeconfig KUBECONFIG={kc}) to list "
    );
    assert!(line.contains(&expected), "{line}");
    assert!(line.contains("Connection refused"), "{line}");
    assert!(
        line.contains(
            "127.0.0.1 is the ClusterIP of the `kubernetes` Service, and no service proxy serves \
             it before knat runs"
        ),
        "{line}"
    );
    assert!(
        line.contains(
            "set KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT in ConfigMap kube-system/knat \
             to the API server's real address"
        ),
        "{line}"
    );
    assert!(line.contains("retrying with backoff"), "{line}");
    assert!(
        s.log()
            .contains(&format!("API server api_server=127.0.0.1:{port}")),
        "the address is logged at start:\n{}",
        s.log()
    );
    assert!(s.running(), "knat keeps retrying:\n{}", s.log());
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A real address (not the ClusterIP) that does not answer: the line names it and its source
/// (--kubeconfig) and does not blame the `kubernetes` Service.
#[test]
fn unreachable_configured_address_is_named_with_its_source() {
    let mut s = Scratch::new("api-cfg");
    let port = unused_port();
    let kc = kubeconfig(&s.dir, port);
    let kc = kc.to_string_lossy().into_owned();
    s.start(
        &["--kubeconfig", &kc],
        // The kubelet's variables name the real ClusterIP, which is not what knat dials.
        &[("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1")],
    );
    let line = s.wait_line("cannot connect to the API server");
    assert!(
        line.contains(&format!(
            "cannot connect to the API server at 127.0.0.1:{port} (from the kubeconfig {kc} \
             (--kubeconfig))"
        )),
        "{line}"
    );
    assert!(!line.contains("ClusterIP"), "{line}");
    assert!(
        line.contains("check that this node reaches that address and port"),
        "{line}"
    );
    assert!(s.running(), "knat keeps retrying:\n{}", s.log());
}

/// The shipped ConfigMap, not filled in: knat refuses to start and names the ConfigMap.
#[test]
fn placeholder_address_fails_at_start_naming_the_config_map() {
    let s = Scratch::new("api-placeholder");
    let started = Instant::now();
    let out = s
        .command(
            &[],
            &[
                (
                    "KUBERNETES_SERVICE_HOST",
                    "SET-ME-to-the-API-server-address",
                ),
                ("KUBERNETES_SERVICE_PORT", "6443"),
                ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
            ],
        )
        .stderr(Stdio::piped())
        .output()
        .expect("run knat");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "knat: error: KUBERNETES_SERVICE_HOST is still the placeholder \
             \"SET-ME-to-the-API-server-address\" of ConfigMap kube-system/knat"
        ),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}
