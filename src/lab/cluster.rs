//! Building a [`Scenario`] out of real network namespaces, programming its nodes with
//! iptables payloads, and probing it with real connections.
//!
//! Layout (names are `knat-<pid>-<n>-<host>`, unique per process and lab):
//!
//! ```text
//!  client-1 ──┐            fabric namespace: bridge br0 (192.168.77.1, fd00:77::1)
//!  client-2 ──┼── br0 ──┬── node-1 ──┬── pod web-1      (veth per pod, routed, no bridge;
//!             │         │            │                  or a bridge: [`PodLinks`])
//!             │         │            └── pod web-2
//!             │         └── node-2 ───── pod api-1
//! ```
//!
//! Clients own only their external address (`203.0.113.x/32`) and reach the segment on-link;
//! nodes route the client network on-link, their peers' pod CIDRs via the peer (host-gw), and
//! everything else via the fabric. Each pod has a `/32` (`/128`) address and a default route via
//! its node's gateway address, which the node holds on every pod-facing veth. Nodes forward
//! (`ip_forward`, IPv6 forwarding) and have `route_localnet=1`, all set inside the node
//! namespace. Nothing is created in, or changed about, the root namespace: every veth pair is
//! created inside a lab namespace with its peer placed straight into another one.
//!
//! Cleanup: [`Lab`]'s `Drop` stops the echo servers and deletes the namespaces. If the process
//! dies without unwinding (Ctrl-C, a signal, `abort`), the reaper (see `sys.rs`) deletes them,
//! and the echo servers exit because their stdin closes.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::LabError;
use super::backend::Backend;
use super::echo::{ProbeResult, READY_LINE, parse_probe_output};
use super::scenario::{Family, PodSpec, Proto, Role, Scenario, TARGET_PORT};
use super::sys::{Reaper, describe, in_netns, run};

/// Labs built by this process so far; part of every namespace name.
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);
/// How long echo servers get to bind and report ready.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Default per-attempt probe timeout: long enough for a LAN round trip, short enough that a
/// dropped connection costs about a second.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a node's pods are attached to it (what `--detect-local-mode` interface modes see).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodLinks {
    /// One routed veth per pod, named `<prefix>1`, `<prefix>2`, ... on the node, no bridge;
    /// the node holds its gateway address on each (the default, prefix `vp`).
    Routed { prefix: String },
    /// The pods' veths (`veth1`, `veth2`, ...) are ports of this bridge (`cni0` as the CNI
    /// bridge plugin names it), which holds the node's gateway address with the pod CIDR's
    /// prefix length.
    Bridge { name: String },
}

impl Default for PodLinks {
    fn default() -> Self {
        PodLinks::Routed {
            prefix: "vp".into(),
        }
    }
}

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The knat binary: runs `lab-echo`, `lab-probe` and `render` inside namespaces.
    pub knat: PathBuf,
    pub backend: Backend,
    /// Per-attempt probe timeout ([`DEFAULT_PROBE_TIMEOUT`] by default).
    pub probe_timeout: Duration,
    /// How pods are attached to their node ([`PodLinks::Routed`] with prefix `vp` by default).
    pub pod_links: PodLinks,
}

impl LabOptions {
    /// Options with the default probe timeout.
    pub fn new(knat: &Path, backend: Backend) -> Self {
        LabOptions {
            knat: knat.to_path_buf(),
            backend,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            pod_links: PodLinks::default(),
        }
    }
}

/// One running echo server.
#[derive(Debug)]
struct Server {
    pod: String,
    child: Child,
    /// Held open; closing it tells the server to exit.
    stdin: Option<ChildStdin>,
}

/// A running lab cluster. Dropping it tears everything down.
#[derive(Debug)]
pub struct Lab {
    scenario: Scenario,
    options: LabOptions,
    prefix: String,
    namespaces: Vec<String>,
    servers: Vec<Server>,
    workdir: PathBuf,
    reaper: Reaper,
    torn_down: bool,
}

/// Builds the `-batch` input for `ip`: one command per line.
#[derive(Debug, Default)]
struct Batch(Vec<String>);

impl Batch {
    fn add(&mut self, line: impl Into<String>) {
        self.0.push(line.into());
    }

    /// `addr add IP/32` (or `/128`, without duplicate address detection) on `dev`.
    fn add_address(&mut self, ip: IpAddr, dev: &str) {
        self.add(format!(
            "addr add {ip}/{} dev {dev}{}",
            prefix_len(ip),
            nodad(ip)
        ));
    }

    fn text(&self) -> String {
        let mut text = self.0.join("\n");
        text.push('\n');
        text
    }
}

fn nodad(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() { " nodad" } else { "" }
}

fn prefix_len(ip: IpAddr) -> u8 {
    if ip.is_ipv6() { 128 } else { 32 }
}

impl Lab {
    /// Builds the namespaces, links, addresses and routes of `scenario` and starts an echo
    /// server in every pod. Nodes are left without rules; program them with
    /// [`Lab::program_with_render`] or [`Lab::load`]. On error everything built so far is
    /// torn down.
    pub fn build(scenario: Scenario, options: LabOptions) -> Result<Lab, LabError> {
        scenario.validate()?;
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("knat-{}-{n}", std::process::id());
        let workdir = std::env::temp_dir().join(&prefix);
        let mut reaper = Reaper::start()?;
        reaper.track_dir(&workdir)?;
        let mut lab = Lab {
            scenario,
            options,
            prefix,
            namespaces: Vec::new(),
            servers: Vec::new(),
            workdir,
            reaper,
            torn_down: false,
        };
        std::fs::create_dir_all(&lab.workdir).map_err(|source| LabError::Io {
            context: format!("create {}", lab.workdir.display()),
            source,
        })?;
        lab.create_namespaces()?;
        lab.configure_sysctls()?;
        lab.wire()?;
        lab.start_servers()?;
        Ok(lab)
    }

    /// The scenario this lab was built from.
    pub fn scenario(&self) -> &Scenario {
        &self.scenario
    }

    /// The backend programming the nodes.
    pub fn backend(&self) -> Backend {
        self.options.backend
    }

    /// The scratch directory (manifests, rendered payloads, dumps); removed on teardown.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// The namespace prefix, `knat-<pid>-<n>`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every namespace of this lab, in creation order.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    fn fabric(&self) -> String {
        self.ns("fabric")
    }

    /// The fabric namespace (the segment's bridge and gateway, which holds
    /// [`Scenario::fabric_gateway`]); the end-to-end tier runs its control plane there.
    pub fn fabric_namespace(&self) -> String {
        self.fabric()
    }

    /// The namespace of a client, node or pod.
    pub fn namespace(&self, host: &str) -> Result<String, LabError> {
        match self.scenario.role(host) {
            Some(_) => Ok(self.ns(host)),
            None => Err(LabError::UnknownHost(host.to_string())),
        }
    }

    fn create_namespaces(&mut self) -> Result<(), LabError> {
        let scenario = &self.scenario;
        let hosts: Vec<String> = std::iter::once("fabric".to_string())
            .chain(scenario.clients.iter().cloned())
            .chain(scenario.nodes.iter().cloned())
            .chain(scenario.pods.iter().map(|p| p.name.clone()))
            .collect();
        for host in hosts {
            let name = self.ns(&host);
            self.reaper.track_namespace(&name)?;
            run(Command::new("ip").args(["netns", "add", &name]), None)?;
            self.namespaces.push(name);
        }
        Ok(())
    }

    fn configure_sysctls(&self) -> Result<(), LabError> {
        let mut children = Vec::new();
        for host in std::iter::once("fabric")
            .chain(self.scenario.clients.iter().map(String::as_str))
            .chain(self.scenario.nodes.iter().map(String::as_str))
            .chain(self.scenario.pods.iter().map(|p| p.name.as_str()))
        {
            let mut settings = vec![
                // No duplicate address detection: addresses are usable at once.
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ];
            let node = self.scenario.role(host) == Some(Role::Node);
            if node || host == "fabric" {
                settings.extend([
                    "net.ipv4.ip_forward=1",
                    "net.ipv6.conf.all.forwarding=1",
                    // No per-destination ICMP rate limit: every REJECT (and every fabric
                    // "unreachable") must be answered, or a refusal would look like a drop.
                    "net.ipv4.icmp_ratelimit=0",
                    "net.ipv6.icmp.ratelimit=0",
                ]);
            }
            if node {
                settings.push("net.ipv4.conf.all.route_localnet=1");
            }
            if self.scenario.role(host) == Some(Role::Client) {
                // Clients share the fabric bridge with the nodes, so a node that forwards a
                // packet back to the fabric sends an ICMP redirect; a client that followed it
                // would send the rest of a flow past the node (its rules never seeing it).
                settings.extend([
                    // IPv4 follows a redirect if "all" or the device says so: both 0 (the
                    // links are created after this, from "default").
                    "net.ipv4.conf.all.accept_redirects=0",
                    "net.ipv4.conf.default.accept_redirects=0",
                    "net.ipv6.conf.all.accept_redirects=0",
                    "net.ipv6.conf.default.accept_redirects=0",
                ]);
            }
            let mut args = vec!["-q", "-w"];
            args.extend(settings);
            children.push(in_netns(&self.ns(host), "sysctl", args));
        }
        run_all(children)
    }

    /// Creates every link, address and route of the scenario, one `ip -batch` per namespace.
    fn wire(&self) -> Result<(), LabError> {
        let s = &self.scenario;
        self.batch(&self.fabric(), &self.fabric_batch())?;
        let mut batches = Vec::new();
        for node in &s.nodes {
            batches.push((self.ns(node), self.node_batch(node)?));
        }
        for client in &s.clients {
            batches.push((self.ns(client), self.client_batch(client)?));
        }
        // The pods' batches run after the nodes' batches, which create the pods' eth0.
        let mut pod_batches = Vec::new();
        for pod in &s.pods {
            pod_batches.push((self.ns(&pod.name), self.pod_batch(pod)?));
        }
        self.batches(batches)?;
        self.batches(pod_batches)
    }

    /// The fabric: one bridge, a veth to every node and client.
    fn fabric_batch(&self) -> Batch {
        let s = &self.scenario;
        let families = s.families();
        let gateway = |f| s.fabric_gateway(f);
        let mut fabric = Batch::default();
        fabric.add("link set lo up");
        fabric.add("link add br0 type bridge mcast_snooping 0");
        for f in &families {
            let net = s.segment(*f);
            fabric.add(format!(
                "addr add {}/{} dev br0{}",
                gateway(*f),
                net.prefix_len(),
                nodad(gateway(*f))
            ));
        }
        fabric.add("link set br0 up");
        // The fabric routes back to the clients and answers everything else with an ICMP
        // unreachable, so a packet a node forwards unDNATed fails fast and visibly instead of
        // vanishing: a timed-out probe then really means a DROP on a node.
        for f in &families {
            fabric.add(format!("route add {} dev br0", s.client_network(*f)));
            let default = if *f == Family::V6 {
                "::/0"
            } else {
                "0.0.0.0/0"
            };
            fabric.add(format!("route add unreachable {default}"));
        }
        let ports = s
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("n{}", i + 1), n))
            .chain(
                s.clients
                    .iter()
                    .enumerate()
                    .map(|(j, c)| (format!("c{}", j + 1), c)),
            );
        for (port, host) in ports {
            fabric.add(format!(
                "link add {port} type veth peer name eth0 netns {}",
                self.ns(host)
            ));
            fabric.add(format!("link set {port} master br0"));
            fabric.add(format!("link set {port} up"));
        }
        fabric
    }

    /// A node: segment address, routes to the other nodes' pods, and a veth per pod.
    fn node_batch(&self, node: &str) -> Result<Batch, LabError> {
        let s = &self.scenario;
        let families = s.families();
        let gateway = |f| s.fabric_gateway(f);
        let mut b = Batch::default();
        b.add("link set lo up");
        b.add("link set eth0 up");
        for f in &families {
            let ip = s
                .node_ip(node, *f)
                .ok_or_else(|| missing("node address", node))?;
            b.add(format!(
                "addr add {ip}/{} dev eth0{}",
                s.segment(*f).prefix_len(),
                nodad(ip)
            ));
            b.add(format!("route add {} dev eth0", s.client_network(*f)));
            b.add(format!("route add default via {} dev eth0", gateway(*f)));
            for peer in s.nodes.iter().filter(|p| *p != node) {
                let cidr = s
                    .pod_cidr(peer, *f)
                    .ok_or_else(|| missing("pod CIDR", peer))?;
                let via = s
                    .node_ip(peer, *f)
                    .ok_or_else(|| missing("node address", peer))?;
                b.add(format!("route add {cidr} via {via} dev eth0"));
            }
        }
        if let PodLinks::Bridge { name } = &self.options.pod_links {
            self.add_pod_bridge(&mut b, node, name)?;
        }
        for (k, pod) in s.pods_on(node).enumerate() {
            self.add_pod_link(&mut b, node, k, pod)?;
        }
        Ok(b)
    }

    /// `PodLinks::Bridge`: the node's pod bridge, holding the node's gateway addresses.
    fn add_pod_bridge(&self, b: &mut Batch, node: &str, name: &str) -> Result<(), LabError> {
        let s = &self.scenario;
        b.add(format!("link add {name} type bridge mcast_snooping 0"));
        for f in &s.families() {
            let gw = s
                .node_gateway(node, *f)
                .ok_or_else(|| missing("gateway", node))?;
            let cidr = s
                .pod_cidr(node, *f)
                .ok_or_else(|| missing("pod CIDR", node))?;
            b.add(format!(
                "addr add {gw}/{} dev {name}{}",
                cidr.prefix_len(),
                nodad(gw)
            ));
        }
        b.add(format!("link set {name} up"));
        Ok(())
    }

    /// The `k`-th pod's veth on its node: on the pod bridge, or routed with the gateway
    /// address on the node's end.
    fn add_pod_link(
        &self,
        b: &mut Batch,
        node: &str,
        k: usize,
        pod: &PodSpec,
    ) -> Result<(), LabError> {
        let s = &self.scenario;
        let (dev, bridge) = match &self.options.pod_links {
            PodLinks::Routed { prefix } => (format!("{prefix}{}", k + 1), None),
            PodLinks::Bridge { name } => (format!("veth{}", k + 1), Some(name)),
        };
        b.add(format!(
            "link add {dev} type veth peer name eth0 netns {}",
            self.ns(&pod.name)
        ));
        if let Some(bridge) = bridge {
            b.add(format!("link set {dev} master {bridge}"));
            b.add(format!("link set {dev} up"));
            return Ok(());
        }
        b.add(format!("link set {dev} up"));
        for f in &s.families() {
            let gw = s
                .node_gateway(node, *f)
                .ok_or_else(|| missing("gateway", node))?;
            let ip = s
                .pod_ip(&pod.name, *f)
                .ok_or_else(|| missing("pod address", &pod.name))?;
            b.add_address(gw, &dev);
            b.add(format!("route add {ip}/{} dev {dev}", prefix_len(ip)));
        }
        Ok(())
    }

    /// A client: the external address only, the segment on-link, VIP routes to nodes.
    fn client_batch(&self, client: &str) -> Result<Batch, LabError> {
        let s = &self.scenario;
        let mut b = Batch::default();
        b.add("link set lo up");
        b.add("link set eth0 up");
        for f in &s.families() {
            let ip = s
                .client_ip(client, *f)
                .ok_or_else(|| missing("client address", client))?;
            b.add_address(ip, "eth0");
            b.add(format!("route add {} dev eth0", s.segment(*f)));
        }
        for route in &s.routes {
            let family = Family::of(route.destination);
            let via = s
                .node_ip(&route.node, family)
                .ok_or_else(|| missing("node address", &route.node))?;
            b.add(format!(
                "route add {}/{} via {via} dev eth0",
                route.destination,
                prefix_len(route.destination)
            ));
        }
        Ok(b)
    }

    /// A pod: its address and a default route via the node's gateway address.
    fn pod_batch(&self, pod: &PodSpec) -> Result<Batch, LabError> {
        let s = &self.scenario;
        let mut b = Batch::default();
        b.add("link set lo up");
        b.add("link set eth0 up");
        for f in &s.families() {
            let ip = s
                .pod_ip(&pod.name, *f)
                .ok_or_else(|| missing("pod address", &pod.name))?;
            let gw = s
                .node_gateway(&pod.node, *f)
                .ok_or_else(|| missing("gateway", &pod.node))?;
            b.add_address(ip, "eth0");
            b.add(format!("route add {gw}/{} dev eth0", prefix_len(gw)));
            b.add(format!("route add default via {gw} dev eth0"));
        }
        Ok(b)
    }

    fn batch_command(namespace: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["-n", namespace, "-batch", "-"]);
        command
    }

    fn batch(&self, namespace: &str, batch: &Batch) -> Result<(), LabError> {
        run(&mut Self::batch_command(namespace), Some(&batch.text()))
            .map(drop)
            .map_err(|e| with_input(e, &batch.text()))
    }

    fn batches(&self, batches: Vec<(String, Batch)>) -> Result<(), LabError> {
        thread::scope(|scope| {
            let handles: Vec<_> = batches
                .iter()
                .map(|(ns, b)| scope.spawn(move || self.batch(ns, b)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(panicked())))
                .collect::<Result<Vec<()>, LabError>>()
        })
        .map(drop)
    }

    fn start_servers(&mut self) -> Result<(), LabError> {
        let (tx, rx) = mpsc::channel::<(usize, Result<(), String>)>();
        let pods: Vec<_> = self.scenario.pods.clone();
        for (index, pod) in pods.iter().enumerate() {
            let mut args: Vec<String> = vec!["lab-echo".into(), "--name".into(), pod.name.clone()];
            for family in self.scenario.families() {
                let ip = self
                    .scenario
                    .pod_ip(&pod.name, family)
                    .ok_or_else(|| missing("pod address", &pod.name))?;
                args.push("--listen".into());
                args.push(SocketAddr::new(ip, TARGET_PORT).to_string());
            }
            args.push("--exit-on-stdin-eof".into());
            let mut command = in_netns(&self.ns(&pod.name), &self.options.knat, &args);
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let text = describe(&command);
            let mut child = command.spawn().map_err(|source| LabError::Spawn {
                command: text,
                source,
            })?;
            let stdin = child.stdin.take();
            let stdout = child.stdout.take();
            self.servers.push(Server {
                pod: pod.name.clone(),
                child,
                stdin,
            });
            let tx = tx.clone();
            thread::spawn(move || {
                let mut line = String::new();
                let outcome = match stdout.map(BufReader::new) {
                    Some(mut reader) => match reader.read_line(&mut line) {
                        Ok(_) if line.trim() == READY_LINE => Ok(()),
                        Ok(0) => Err("exited before it was ready (does this knat binary have \
                                     the `lab-echo` subcommand? see its stderr above)"
                            .to_string()),
                        Ok(_) => Err(format!(
                            "printed {:?} instead of {READY_LINE:?}",
                            line.trim()
                        )),
                        Err(e) => Err(e.to_string()),
                    },
                    None => Err("no stdout pipe".to_string()),
                };
                let _ = tx.send((index, outcome));
            });
        }
        drop(tx);
        let deadline = Instant::now() + SERVER_START_TIMEOUT;
        let mut pending = pods.len();
        while pending > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((_, Ok(()))) => pending -= 1,
                Ok((index, Err(detail))) => {
                    return Err(LabError::EchoServer {
                        pod: pods.get(index).map(|p| p.name.clone()).unwrap_or_default(),
                        detail,
                    });
                }
                Err(_) => {
                    return Err(LabError::EchoServer {
                        pod: format!("{pending} of {}", pods.len()),
                        detail: format!("not ready after {SERVER_START_TIMEOUT:?}"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Writes the scenario's manifests into the work directory and returns the path.
    pub fn write_manifests(&self) -> Result<PathBuf, LabError> {
        let path = self.workdir.join("cluster.yaml");
        let yaml = self.scenario.manifests()?;
        write_file(&path, &yaml)?;
        Ok(path)
    }

    /// The `knat render` command for one node and family.
    pub fn render_command(&self, node: &str, family: Family, manifests: &Path) -> Command {
        let mut command = Command::new(&self.options.knat);
        command.args(["render", "--node-name", node]);
        command.args(["--cluster-cidr", family.cluster_cidr()]);
        if family == Family::V6 {
            command.args(["--ip-family", "ipv6"]);
        }
        if let Some(ip) = self.scenario.node_ip(node, family) {
            command.args(["--node-ip", &ip.to_string()]);
        }
        command.arg(manifests);
        command
    }

    /// Programs every node (every family) with the payload `knat render` produces for it,
    /// loaded by the lab's backend. Payloads are kept in the work directory as
    /// `<node>.<family>.rules`.
    pub fn program_with_render(&self) -> Result<(), LabError> {
        let manifests = self.write_manifests()?;
        self.program_with(|node, family| {
            let mut command = self.render_command(node, family, &manifests);
            run(&mut command, None).map_err(|e| LabError::Render {
                node: node.to_string(),
                family,
                detail: e.to_string(),
            })
        })
    }

    /// Programs every node (every family) with the payload `payload(node, family)` returns.
    pub fn program_with(
        &self,
        payload: impl Fn(&str, Family) -> Result<String, LabError> + Sync,
    ) -> Result<(), LabError> {
        let jobs: Vec<(String, Family)> = self
            .scenario
            .nodes
            .iter()
            .flat_map(|n| self.scenario.families().into_iter().map(|f| (n.clone(), f)))
            .collect();
        thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|(node, family)| {
                    let payload = &payload;
                    scope.spawn(move || {
                        let text = payload(node, *family)?;
                        let file = self
                            .workdir
                            .join(format!("{node}.{}.rules", family.cli_name()));
                        write_file(&file, &text)?;
                        self.load(node, *family, &text)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(panicked())))
                .collect::<Result<Vec<()>, LabError>>()
        })
        .map(drop)
    }

    /// Loads an `iptables-restore` payload into a node with the lab's backend (a plain restore,
    /// without `--noflush`: the tables in the payload are replaced).
    pub fn load(&self, node: &str, family: Family, payload: &str) -> Result<(), LabError> {
        if self.scenario.role(node) != Some(Role::Node) {
            return Err(LabError::UnknownHost(node.to_string()));
        }
        let namespace = self.ns(node);
        let binary = self.options.backend.restore(family);
        let mut command = in_netns(&namespace, binary, self.options.backend.restore_args());
        run(&mut command, Some(payload)).map(drop).map_err(|e| {
            let detail = match e {
                LabError::Command { stderr, .. } => stderr,
                other => other.to_string(),
            };
            let offending = offending_line(&detail, payload);
            LabError::Restore {
                namespace,
                binary: binary.to_string(),
                detail,
                offending,
            }
        })
    }

    /// The node's current rules, as the backend's `iptables-save` prints them.
    pub fn iptables_save(&self, node: &str, family: Family) -> Result<String, LabError> {
        if self.scenario.role(node) != Some(Role::Node) {
            return Err(LabError::UnknownHost(node.to_string()));
        }
        let binary = self.options.backend.save(family);
        run(&mut in_netns(&self.ns(node), binary, [] as [&str; 0]), None)
    }

    /// Runs `command args...` inside a host's namespace and returns its stdout.
    pub fn exec(&self, host: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
        let namespace = self.namespace(host)?;
        run(&mut in_netns(&namespace, program, args), None)
    }

    /// One probe from `from` (a client, node or pod) to `target`.
    pub fn probe(
        &self,
        from: &str,
        target: SocketAddr,
        proto: Proto,
    ) -> Result<ProbeResult, LabError> {
        let mut results = self.probe_many(from, target, proto, 1)?;
        results.pop().ok_or_else(|| LabError::ProbeOutput {
            output: String::new(),
            detail: "the probe printed nothing".into(),
        })
    }

    /// `count` sequential probes, each a new connection from a new source port.
    pub fn probe_many(
        &self,
        from: &str,
        target: SocketAddr,
        proto: Proto,
        count: u32,
    ) -> Result<Vec<ProbeResult>, LabError> {
        let namespace = self.namespace(from)?;
        let mut args = vec![
            "lab-probe".to_string(),
            "--connect".to_string(),
            target.to_string(),
            "--timeout-ms".to_string(),
            self.options.probe_timeout.as_millis().to_string(),
            "--count".to_string(),
            count.to_string(),
        ];
        if proto == Proto::Udp {
            args.push("--udp".to_string());
        }
        let output = run(&mut in_netns(&namespace, &self.options.knat, &args), None)?;
        let results = parse_probe_output(&output)?;
        if results.len() != count as usize {
            return Err(LabError::ProbeOutput {
                output,
                detail: format!("expected {count} results"),
            });
        }
        Ok(results)
    }

    /// Stops the servers, deletes the namespaces and the work directory. Errors are collected;
    /// every step is attempted.
    pub fn teardown(mut self) -> Result<(), LabError> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<(), LabError> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        for server in &mut self.servers {
            drop(server.stdin.take());
            // The server is our own child (ip exec'd into knat), ended by its PID.
            if let Err(e) = server.child.kill()
                && e.kind() != std::io::ErrorKind::InvalidInput
            {
                problems.push(format!("kill echo server {}: {e}", server.pod));
            }
            let _ = server.child.wait();
        }
        for namespace in self.namespaces.iter().rev() {
            if let Err(e) = run(
                Command::new("ip").args(["netns", "delete", namespace]),
                None,
            ) {
                problems.push(e.to_string());
            }
        }
        self.namespaces.clear();
        if self.workdir.exists()
            && let Err(e) = std::fs::remove_dir_all(&self.workdir)
        {
            problems.push(format!("remove {}: {e}", self.workdir.display()));
        }
        self.reaper.finish();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(LabError::Teardown(problems))
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Err(e) = self.teardown_inner() {
            eprintln!("knat lab: teardown of {} incomplete: {e}", self.prefix);
        }
    }
}

fn run_all(commands: Vec<Command>) -> Result<(), LabError> {
    thread::scope(|scope| {
        let handles: Vec<_> = commands
            .into_iter()
            .map(|mut c| scope.spawn(move || run(&mut c, None)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(panicked())).map(drop))
            .collect::<Result<Vec<()>, LabError>>()
    })
    .map(drop)
}

fn panicked() -> LabError {
    LabError::Internal("a worker thread panicked".into())
}

fn missing(what: &str, host: &str) -> LabError {
    LabError::Internal(format!("no {what} for {host}"))
}

fn write_file(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|source| LabError::Io {
        context: format!("write {}", path.display()),
        source,
    })
}

/// Adds the failing line of an `ip -batch` input (`Command failed -:N`) to the error.
fn with_input(error: LabError, input: &str) -> LabError {
    match error {
        LabError::Command {
            command,
            status,
            stderr,
        } => {
            let line = stderr
                .rsplit_once("-:")
                .and_then(|(_, n)| n.trim().parse::<usize>().ok())
                .and_then(|n| input.lines().nth(n.saturating_sub(1)));
            let stderr = match line {
                Some(line) => format!("{stderr} (batch line: {line:?})"),
                None => stderr,
            };
            LabError::Command {
                command,
                status,
                stderr,
            }
        }
        other => other,
    }
}

/// Finds `line N` in an iptables-restore error and returns that payload line.
fn offending_line(stderr: &str, payload: &str) -> Option<String> {
    let words: Vec<&str> = stderr.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == "line")
        .and_then(|w| {
            w[1].trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse::<usize>()
                .ok()
        })
        .and_then(|n| payload.lines().nth(n.saturating_sub(1)))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offending_lines_are_found() {
        let payload = "*nat\n:KUBE-X - [0:0]\n-A KUBE-X -j NOPE\nCOMMIT\n";
        assert_eq!(
            offending_line("iptables-restore: line 3 failed", payload).as_deref(),
            Some("-A KUBE-X -j NOPE")
        );
        assert_eq!(offending_line("something else", payload), None);
    }

    #[test]
    fn batch_errors_name_the_line() {
        let error = LabError::Command {
            command: "ip -batch -".into(),
            status: "exit status: 1".into(),
            stderr: "Error: bad.\nCommand failed -:2".into(),
        };
        match with_input(error, "link set lo up\nroute add nonsense\n") {
            LabError::Command { stderr, .. } => assert!(stderr.contains("route add nonsense")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn backends_parse_from_their_names() {
        for backend in Backend::ALL {
            assert_eq!(backend.name().parse::<Backend>().ok(), Some(backend));
        }
        assert!(matches!(
            "iptables".parse::<Backend>(),
            Err(LabError::Usage(_))
        ));
    }

    #[test]
    fn backends_name_their_binaries_explicitly() {
        assert_eq!(Backend::Nft.restore(Family::V6), "ip6tables-nft-restore");
        assert_eq!(Backend::Legacy.save(Family::V4), "iptables-legacy-save");
    }
}
