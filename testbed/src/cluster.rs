//! A cluster of real kubelet nodes on one machine: the control plane (with scheduler and every
//! default controller) in a fabric namespace, kubelet nodes (see [`crate::node`]) on its
//! bridge, and an external client that reaches LoadBalancer VIPs through a node, as a cloud
//! load balancer would route them.
//!
//! ```text
//!  client 203.0.113.10/32 ─┐
//!                          br0 (fabric 192.168.78.1: etcd, kube-apiserver :6443,
//!   ┌──────────────────────┤       kube-controller-manager, kube-scheduler)
//! node-1 .11  kubelet    node-2 .12  kubelet ...
//!   cni0 10.244.x.1/24     cni0 10.244.y.1/24   (pod CIDRs from node IPAM, routed host-gw)
//! ```
//!
//! Nothing in the root namespace changes: every veth pair is created inside a cluster
//! namespace with its peer moved straight into another, sysctls are set inside the node
//! namespaces, and the reaper deletes the namespaces even if the test process dies.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use knat::lab::{Reaper, in_netns, run};

use crate::cgroups::{CgroupError, NodeCgroups};
use crate::control_plane::{
    ControlPlane, ControlPlaneError, ControlPlaneOptions, K8sBinaries, RealNodes,
};
use crate::images::Image;
use crate::node::{Node, NodeError, NodeSpec};

/// The pod network node IPAM carves from.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The fabric's address (the API server's).
pub const FABRIC_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 78, 1);
/// The external client's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const NODE_READY_TIMEOUT: Duration = Duration::from_secs(120);

static CLUSTER_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Cluster errors.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Lab(#[from] knat::lab::LabError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// Something did not happen in time. Not retryable; the detail says what was seen.
    #[error("timed out after {waited:?} waiting for {what}: {detail}")]
    Timeout {
        what: String,
        waited: Duration,
        detail: String,
    },
}

/// A node to create: its Node name and the host name it has inside.
#[derive(Debug, Clone)]
pub struct NodeRequest {
    pub name: String,
    pub hostname: String,
}

/// A running cluster. Dropping it stops the nodes, the control plane, and deletes the
/// namespaces.
pub struct NodeCluster {
    prefix: String,
    workdir: PathBuf,
    nodes: Vec<Node>,
    control_plane: Option<ControlPlane>,
    binaries: K8sBinaries,
    reaper: Reaper,
    namespaces: Vec<String>,
    pod_cidrs: Vec<String>,
    /// The parent of every node's cgroup tree (so that the intermediate directories it had to
    /// create are removed once, after the last node).
    cgroups: Option<NodeCgroups>,
}

impl NodeCluster {
    /// Wires the namespaces, starts the control plane and the nodes, imports `images` into
    /// every node, and waits until every Node is Ready with its pod network configured.
    pub fn start(
        binaries: K8sBinaries,
        requests: &[NodeRequest],
        images: &[&Image],
    ) -> Result<NodeCluster, ClusterError> {
        let n = CLUSTER_COUNTER.fetch_add(1, Ordering::SeqCst);
        let test_id = format!("{}-{n}", std::process::id());
        let prefix = format!("kn{test_id}");
        let workdir = std::env::temp_dir().join(format!("knat-nodes-{test_id}"));
        std::fs::create_dir_all(&workdir).map_err(|source| knat::lab::LabError::Io {
            context: format!("create {}", workdir.display()),
            source,
        })?;
        let mut reaper = Reaper::start()?;
        reaper.track_dir(&workdir)?;
        let mut cluster = NodeCluster {
            prefix,
            workdir,
            nodes: Vec::new(),
            control_plane: None,
            binaries,
            reaper,
            namespaces: Vec::new(),
            pod_cidrs: Vec::new(),
            cgroups: None,
        };
        cluster.cgroups = Some(NodeCgroups::create(&format!("knat-{test_id}"))?);
        cluster.wire(requests)?;
        cluster.control_plane = Some(ControlPlane::start(ControlPlaneOptions {
            binaries: cluster.binaries.clone(),
            namespace: cluster.ns("fabric"),
            address: IpAddr::V4(FABRIC_IP),
            extra_sans: Vec::new(),
            real_nodes: Some(RealNodes {
                cluster_cidr: CLUSTER_CIDR.to_string(),
            }),
        })?);
        for (i, request) in requests.iter().enumerate() {
            let spec = NodeSpec {
                name: request.name.clone(),
                hostname: request.hostname.clone(),
                netns: cluster.ns(&request.name),
                ip: node_ip(i),
            };
            let cgroup = format!("knat-{test_id}/{}", request.name);
            let node = Node::start(spec, &cluster.workdir, &cgroup)?;
            cluster.nodes.push(node);
        }
        for node in &cluster.nodes {
            for image in images {
                node.import_image(&image.archive)?;
            }
        }
        if let Some(cp) = cluster.control_plane.as_ref() {
            for node in &mut cluster.nodes {
                node.start_kubelet(cp, &cluster.binaries)?;
            }
        }
        cluster.configure_pod_network()?;
        cluster.wait_nodes_ready()?;
        Ok(cluster)
    }

    fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    /// The network namespace of a host (`fabric`, `client` or a node name).
    pub fn netns(&self, host: &str) -> String {
        self.ns(host)
    }

    /// The control plane.
    pub fn control_plane(&self) -> Result<&ControlPlane, ClusterError> {
        self.control_plane.as_ref().ok_or_else(|| {
            ClusterError::Lab(knat::lab::LabError::Internal(
                "the control plane is not running".into(),
            ))
        })
    }

    /// The nodes, in the order requested.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.spec().name == name)
    }

    /// The pod CIDRs node IPAM gave the nodes, in node order.
    pub fn pod_cidrs(&self) -> &[String] {
        &self.pod_cidrs
    }

    /// The scratch directory.
    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// `kubectl` as cluster admin.
    pub fn kubectl(&self, args: &[&str], input: Option<&str>) -> Result<String, ClusterError> {
        Ok(self.control_plane()?.kubectl(args, input)?)
    }

    /// Runs `program args` in a host's network namespace (not in a node's mount namespace).
    pub fn exec_in(
        &self,
        host: &str,
        program: &str,
        args: &[&str],
    ) -> Result<String, ClusterError> {
        Ok(run(&mut in_netns(&self.ns(host), program, args), None)?)
    }

    fn ip(&self, host: &str, batch: &[String]) -> Result<(), ClusterError> {
        let mut command = Command::new("ip");
        command.args(["-n", &self.ns(host), "-batch", "-"]);
        run(&mut command, Some(&(batch.join("\n") + "\n")))?;
        Ok(())
    }

    fn add_namespace(&mut self, host: &str) -> Result<(), ClusterError> {
        let name = self.ns(host);
        self.reaper.track_namespace(&name)?;
        run(Command::new("ip").args(["netns", "add", &name]), None)?;
        self.namespaces.push(name);
        Ok(())
    }

    fn wire(&mut self, requests: &[NodeRequest]) -> Result<(), ClusterError> {
        self.add_namespace("fabric")?;
        self.add_namespace("client")?;
        for r in requests {
            self.add_namespace(&r.name)?;
        }
        let mut fabric = vec![
            "link set lo up".to_string(),
            "link add br0 type bridge mcast_snooping 0".to_string(),
            format!("addr add {FABRIC_IP}/24 dev br0"),
            "link set br0 up".to_string(),
            format!("route add {CLIENT_IP}/32 dev br0"),
        ];
        let mut ports: Vec<(String, String)> = vec![("cl".into(), self.ns("client"))];
        for (i, r) in requests.iter().enumerate() {
            ports.push((format!("n{}", i + 1), self.ns(&r.name)));
        }
        for (port, peer) in &ports {
            fabric.push(format!(
                "link add {port} type veth peer name eth0 netns {peer}"
            ));
            fabric.push(format!("link set {port} master br0"));
            fabric.push(format!("link set {port} up"));
        }
        self.ip("fabric", &fabric)?;
        self.exec_in("fabric", "sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"])?;
        self.ip(
            "client",
            &[
                "link set lo up".into(),
                "link set eth0 up".into(),
                format!("addr add {CLIENT_IP}/32 dev eth0"),
                "route add 192.168.78.0/24 dev eth0".into(),
            ],
        )?;
        for (i, r) in requests.iter().enumerate() {
            self.ip(
                &r.name,
                &[
                    "link set lo up".into(),
                    "link set eth0 up".into(),
                    format!("addr add {}/24 dev eth0", node_ip(i)),
                    format!("route add default via {FABRIC_IP} dev eth0"),
                    format!("route add {CLIENT_IP}/32 dev eth0"),
                ],
            )?;
            // Forwarding for pods, bridged pod traffic through iptables (per namespace on this
            // kernel), as a kubeadm node has them.
            self.exec_in(
                &r.name,
                "sysctl",
                &[
                    "-q",
                    "-w",
                    "net.ipv4.ip_forward=1",
                    "net.bridge.bridge-nf-call-iptables=1",
                ],
            )?;
        }
        Ok(())
    }

    /// Routes a VIP from the client to a node, as a cloud load balancer would.
    pub fn route_vip(&self, vip: Ipv4Addr, node: &str) -> Result<(), ClusterError> {
        let node = self
            .node(node)
            .ok_or_else(|| knat::lab::LabError::UnknownHost(node.to_string()))?;
        self.ip(
            "client",
            &[format!(
                "route replace {vip}/32 via {} dev eth0",
                node.spec().ip
            )],
        )
    }

    fn configure_pod_network(&mut self) -> Result<(), ClusterError> {
        let mut cidrs = Vec::new();
        for node in &self.nodes {
            let name = node.spec().name.clone();
            let cidr = self.wait_for(&format!("node {name} to get a pod CIDR"), || {
                let out = self.kubectl(
                    &["get", "node", &name, "-o", "jsonpath={.spec.podCIDR}"],
                    None,
                )?;
                Ok((!out.trim().is_empty()).then(|| out.trim().to_string()))
            })?;
            node.write_cni_config(&cidr)?;
            cidrs.push(cidr);
        }
        for (i, cidr) in cidrs.iter().enumerate() {
            let via = node_ip(i);
            self.ip("fabric", &[format!("route add {cidr} via {via} dev br0")])?;
            for (j, other) in self.nodes.iter().enumerate() {
                if i != j {
                    self.ip(
                        &other.spec().name,
                        &[format!("route add {cidr} via {via} dev eth0")],
                    )?;
                }
            }
        }
        self.pod_cidrs = cidrs;
        Ok(())
    }

    fn wait_nodes_ready(&self) -> Result<(), ClusterError> {
        for node in &self.nodes {
            let name = node.spec().name.clone();
            self.wait_for(&format!("node {name} Ready"), || {
                let out = self.kubectl(
                    &[
                        "get",
                        "node",
                        &name,
                        "-o",
                        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                    ],
                    None,
                )?;
                Ok((out.trim() == "True").then_some(()))
            })
            .map_err(|e| match e {
                ClusterError::Timeout {
                    what,
                    waited,
                    detail,
                } => ClusterError::Timeout {
                    what,
                    waited,
                    detail: format!("{detail}\nkubelet log:\n{}", node.log_tail("kubelet", 30)),
                },
                other => other,
            })?;
        }
        Ok(())
    }

    /// Polls `check` every 500 ms until it returns a value, for [`NODE_READY_TIMEOUT`].
    pub fn wait_for<T>(
        &self,
        what: &str,
        mut check: impl FnMut() -> Result<Option<T>, ClusterError>,
    ) -> Result<T, ClusterError> {
        self.wait_for_within(what, NODE_READY_TIMEOUT, &mut check)
    }

    /// As [`wait_for`](Self::wait_for), with a timeout of its own.
    pub fn wait_for_within<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Result<Option<T>, ClusterError>,
    ) -> Result<T, ClusterError> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < timeout {
            match check() {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => last = "not yet".into(),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Err(ClusterError::Timeout {
            what: what.to_string(),
            waited: start.elapsed(),
            detail: last,
        })
    }

    /// Stops everything and deletes the namespaces; reports what could not be cleaned.
    pub fn shutdown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        // Pods first, through the API, so the kubelets tear their sandboxes down cleanly.
        if let Some(cp) = &self.control_plane {
            let _ = cp.kubectl(
                &[
                    "delete",
                    "pods",
                    "--all",
                    "--all-namespaces",
                    "--grace-period=1",
                    "--wait=false",
                ],
                None,
            );
        }
        for mut node in self.nodes.drain(..) {
            if let Err(e) = node.stop() {
                problems.push(e.to_string());
            }
        }
        if let Some(mut cgroups) = self.cgroups.take()
            && let Err(e) = cgroups.remove()
        {
            problems.push(e.to_string());
        }
        if let Some(mut cp) = self.control_plane.take() {
            cp.shutdown();
        }
        for ns in self.namespaces.drain(..) {
            if let Err(e) = run(Command::new("ip").args(["netns", "delete", &ns]), None) {
                problems.push(e.to_string());
            }
        }
        if std::env::var_os("KNAT_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.workdir);
        }
        self.reaper.finish();
        problems
    }
}

impl Drop for NodeCluster {
    fn drop(&mut self) {
        for problem in self.shutdown() {
            eprintln!("knat-testbed: cleanup: {problem}");
        }
    }
}

/// The programs a node cluster needs (Debian's containerd, runc, CNI plugins, umoci, skopeo,
/// mmdebstrap; util-linux; curl for the checks).
pub const PROGRAMS: [&str; 10] = [
    "ip",
    "containerd",
    "ctr",
    "runc",
    "umoci",
    "skopeo",
    "mmdebstrap",
    "nsenter",
    "unshare",
    "curl",
];

/// For tests on a node cluster: true when root and every program and the CNI bridge plugin
/// are there; otherwise false (a skip), and under `CI=true` a panic naming what is missing.
pub fn test_prerequisites(test: &str) -> bool {
    if !crate::prerequisites::test_prerequisites(test, &PROGRAMS) {
        return false;
    }
    let cni = std::path::Path::new("/usr/lib/cni/bridge").is_file();
    if !cni && std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: /usr/lib/cni/bridge missing (containernetworking-plugins); CI=true");
    }
    cni
}

/// The address of the `i`-th node on the fabric.
pub fn node_ip(i: usize) -> Ipv4Addr {
    let last = u8::try_from(11 + i).unwrap_or(254);
    Ipv4Addr::new(192, 168, 78, last)
}
