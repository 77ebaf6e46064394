//! One real Kubernetes node: a kubelet and containerd (with runc and the CNI plugins from
//! Debian) inside the node's network namespace and a private mount and UTS namespace of its
//! own, on a shared machine.
//!
//! What the private mount namespace holds (see `shared/reference/real-nodes-here.md` for why
//! each is needed here):
//! - the cgroup hierarchies mounted again over the fresh `/sys` that `ip netns exec` mounts
//!   (the kubelet needs them), as the host has them;
//! - a tmpfs on `/run` (containerd's shim sockets, the xtables lock) and per-node directories
//!   bound over `/var/lib` and `/var/log` (the kubelet's, CNI's and the pod logs' fixed paths);
//! - regular files bound over the kernel tunables the kubelet would set machine-wide
//!   (`vm.overcommit_memory`, `vm.panic_on_oom`, `kernel.panic`, `kernel.panic_on_oops`,
//!   `kernel.keys.root_max*`), holding the values it wants, with `protectKernelDefaults: true`
//!   as a second guard: the host's values cannot change;
//! - its own host name (UTS namespace), which may differ from the Node name on purpose.
//!
//! A holder process (`sleep`) keeps the namespaces; containerd and the kubelet enter them with
//! `nsenter` after joining the node's cgroup, so every process of the node, shims and
//! containers included, is in the node's cgroup tree (nested under the test's own cgroup) and
//! is ended from there at teardown.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use knat::lab::run;

use crate::cgroups::{CgroupError, NodeCgroups};
use crate::control_plane::{ControlPlane, ControlPlaneError, Daemon, K8sBinaries, tail};

/// The kernel tunables the kubelet sets, with the values it wants (`protectKernelDefaults`
/// makes it check them instead).
pub const KUBELET_TUNABLES: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];
/// The image the CRI uses for pod sandboxes (built by `integration/images/build.sh`).
pub const PAUSE_IMAGE: &str = "localhost/pause:3.10";
/// The cluster DNS Service address pods are pointed at (kube-dns's usual ClusterIP).
pub const CLUSTER_DNS: &str = "10.96.0.10";
const SOCKET_TIMEOUT: Duration = Duration::from_secs(30);

/// Node errors.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Starting or talking to a component failed.
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    /// The node's cgroups could not be made or removed.
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    /// A command failed.
    #[error(transparent)]
    Lab(#[from] knat::lab::LabError),
    /// A file operation failed. Not retryable.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A component did not come up in time; its log tail is attached.
    #[error("node {node}: {what} not ready after {waited:?}; log tail:\n{log}")]
    NotReady {
        node: String,
        what: String,
        waited: Duration,
        log: String,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
    let context = context.into();
    move |source| NodeError::Io { context, source }
}

/// What a node is.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The Node object's name (`--hostname-override`).
    pub name: String,
    /// The host name inside the node (`uname -n`); may differ from `name`.
    pub hostname: String,
    /// The network namespace, already wired.
    pub netns: String,
    /// The node's address (`--node-ip`).
    pub ip: Ipv4Addr,
}

/// A running node. Dropping it stops everything it started.
#[derive(Debug)]
pub struct Node {
    spec: NodeSpec,
    dir: PathBuf,
    cgroups: Option<NodeCgroups>,
    holder: Option<Daemon>,
    containerd: Option<Daemon>,
    kubelet: Option<Daemon>,
}

impl Node {
    /// Prepares the node's namespaces and cgroups and starts containerd (not yet the kubelet:
    /// import images first, then [`start_kubelet`](Self::start_kubelet)).
    /// `cgroup` is the node's cgroup path below the caller's own cgroup.
    pub fn start(spec: NodeSpec, workdir: &Path, cgroup: &str) -> Result<Node, NodeError> {
        let dir = workdir.join(&spec.name);
        for sub in [
            "var-lib",
            "var-log",
            "tunables",
            "containerd",
            "cni-net.d",
            "certs",
        ] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(io(format!("create {}", path.display())))?;
        }
        let cgroups = NodeCgroups::create(cgroup)?;
        let mut node = Node {
            spec,
            dir,
            cgroups: Some(cgroups),
            holder: None,
            containerd: None,
            kubelet: None,
        };
        node.start_holder()?;
        node.start_containerd()?;
        Ok(node)
    }

    /// The node's spec.
    pub fn spec(&self) -> &NodeSpec {
        &self.spec
    }

    /// The node's scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// The node's cgroup path (the kubelet's `cgroupRoot`).
    pub fn cgroup_path(&self) -> &str {
        self.cgroups.as_ref().map(|c| c.path()).unwrap_or_default()
    }

    fn setup_script(&self) -> String {
        let d = self.dir.display();
        let mut s = String::from("set -eu\nmount --make-rprivate /\n");
        // The cgroup hierarchies, as on the host (`ip netns exec` mounted a fresh /sys).
        s.push_str("mount -t tmpfs -o mode=755 cgroup-root /sys/fs/cgroup\n");
        for line in std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
        {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 || !f[1].starts_with("/sys/fs/cgroup/") {
                continue;
            }
            match f[2] {
                "cgroup" => s.push_str(&format!(
                    "mkdir -p {m}\nmount -t cgroup -o {o} cgroup {m}\n",
                    m = f[1],
                    o = f[3]
                )),
                "cgroup2" => s.push_str(&format!(
                    "mkdir -p {m}\nmount -t cgroup2 cgroup2 {m}\n",
                    m = f[1]
                )),
                _ => {}
            }
        }
        s.push_str("mount -t tmpfs -o mode=755 node-run /run\n");
        s.push_str(&format!(
            "mount --bind {d}/var-lib /var/lib\nmount --bind {d}/var-log /var/log\n"
        ));
        for (path, _) in KUBELET_TUNABLES {
            let file = path.replace('/', ".");
            s.push_str(&format!(
                "mount --bind {d}/tunables/{file} /proc/sys/{path}\n"
            ));
        }
        s.push_str(&format!("hostname {}\n", self.spec.hostname));
        s.push_str(&format!("touch {d}/holder.ready\nexec sleep infinity\n"));
        s
    }

    fn start_holder(&mut self) -> Result<(), NodeError> {
        for (path, value) in KUBELET_TUNABLES {
            let file = self.dir.join("tunables").join(path.replace('/', "."));
            std::fs::write(&file, format!("{value}\n"))
                .map_err(io(format!("write {}", file.display())))?;
        }
        let script = self.dir.join("setup.sh");
        std::fs::write(&script, self.setup_script())
            .map_err(io(format!("write {}", script.display())))?;
        let args = vec![
            "--mount".to_string(),
            "--uts".to_string(),
            "--propagation".to_string(),
            "private".to_string(),
            "sh".to_string(),
            script.display().to_string(),
        ];
        let holder = Daemon::spawn(
            "node-holder",
            &self.spec.netns,
            Path::new("unshare"),
            &args,
            &self.dir.join("holder.log"),
        )?;
        self.holder = Some(holder);
        let ready = self.dir.join("holder.ready");
        self.wait_for("namespace holder", SOCKET_TIMEOUT, "holder.log", || {
            ready.exists()
        })?;
        // The enter script: join the node's cgroups, then its namespaces.
        let cgroups = self.cgroups.as_ref().map(|c| c.daemon_procs_files());
        let mut enter = String::from("#!/bin/sh\nset -e\n");
        for file in cgroups.unwrap_or_default() {
            enter.push_str(&format!("echo $$ > {}\n", file.display()));
        }
        enter.push_str(&format!(
            "exec nsenter --target {} --mount --uts --net -- \"$@\"\n",
            self.holder_pid()
        ));
        let path = self.enter_script();
        std::fs::write(&path, enter).map_err(io(format!("write {}", path.display())))?;
        Ok(())
    }

    fn holder_pid(&self) -> u32 {
        self.holder.as_ref().map(Daemon::pid).unwrap_or_default()
    }

    fn enter_script(&self) -> PathBuf {
        self.dir.join("enter.sh")
    }

    /// A command that runs `program args` inside the node (its cgroup and namespaces).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("sh");
        command.arg(self.enter_script()).arg(program).args(args);
        command
    }

    /// Runs `program args` inside the node and returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, NodeError> {
        Ok(run(&mut self.command(program, args), None)?)
    }

    fn spawn_inside(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
    ) -> Result<Daemon, NodeError> {
        let mut all = vec![self.enter_script().display().to_string()];
        all.push(program.display().to_string());
        all.extend(args.iter().cloned());
        Ok(Daemon::spawn_command(
            name,
            Path::new("sh"),
            &all,
            &self.dir.join(format!("{name}.log")),
        )?)
    }

    fn containerd_config(&self) -> String {
        let d = self.dir.display();
        format!(
            r#"version = 2
root = "{d}/containerd/root"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{d}/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  # CAP_SYS_RESOURCE is not in this machine's bounding set: negative OOM scores are refused.
  restrict_oom_score_adj = true
  systemd_cgroup = false
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni-net.d"
"#
        )
    }

    fn start_containerd(&mut self) -> Result<(), NodeError> {
        let config = self.dir.join("containerd.toml");
        std::fs::write(&config, self.containerd_config())
            .map_err(io(format!("write {}", config.display())))?;
        let args = vec![
            "--config".to_string(),
            config.display().to_string(),
            "--log-level".to_string(),
            "warn".to_string(),
        ];
        self.containerd = Some(self.spawn_inside("containerd", Path::new("containerd"), &args)?);
        let socket = self.socket();
        self.wait_for("containerd", SOCKET_TIMEOUT, "containerd.log", || {
            socket.exists()
        })
    }

    /// `ctr` against this node's containerd, in the CRI's image namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<String, NodeError> {
        let socket = self.socket().display().to_string();
        let mut command = Command::new("ctr");
        command
            .args(["--address", &socket, "--namespace", "k8s.io"])
            .args(args);
        Ok(run(&mut command, None)?)
    }

    /// Imports a docker-archive into the node's runtime (never pulled).
    pub fn import_image(&self, archive: &Path) -> Result<(), NodeError> {
        let path = archive.display().to_string();
        self.ctr(&["images", "import", "--no-unpack", &path])?;
        Ok(())
    }

    fn kubelet_config(&self, control_plane: &ControlPlane) -> String {
        let d = self.dir.display();
        format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {cgroup}
cgroupsPerQOS: true
enforceNodeAllocatable: []
failSwapOn: false
protectKernelDefaults: true
containerRuntimeEndpoint: unix://{d}/containerd.sock
podLogsDir: /var/log/pods
resolvConf: ""
# Cluster DNS (CoreDNS as kube-dns, deployed by the upstream e2e runner); without it pods
# only get a search path and an unanswered name server.
clusterDNS: [{CLUSTER_DNS}]
clusterDomain: cluster.local
address: {ip}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: true}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: Webhook}}
evictionHard: {{memory.available: "1Mi", nodefs.available: "1%", nodefs.inodesFree: "1%", imagefs.available: "1%"}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
nodeStatusReportFrequency: 10s
nodeStatusUpdateFrequency: 5s
"#,
            cgroup = self.cgroup_path(),
            ip = self.spec.ip,
            ca = control_plane.dir().join("ca.crt").display(),
        )
    }

    /// Starts the kubelet, registered with `control_plane` with the node's own credentials
    /// (`system:node:<name>`).
    pub fn start_kubelet(
        &mut self,
        control_plane: &ControlPlane,
        binaries: &K8sBinaries,
    ) -> Result<(), NodeError> {
        let name = &self.spec.name;
        let kubeconfig = control_plane.write_kubeconfig(
            &format!("kubelet-{name}"),
            &format!("system:node:{name}"),
            &["system:nodes"],
        )?;
        let config = self.dir.join("kubelet.yaml");
        std::fs::write(&config, self.kubelet_config(control_plane))
            .map_err(io(format!("write {}", config.display())))?;
        let args = vec![
            format!("--config={}", config.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            "--root-dir=/var/lib/kubelet".to_string(),
            format!("--cert-dir={}/certs", self.dir.display()),
            format!("--hostname-override={name}"),
            format!("--node-ip={}", self.spec.ip),
            "--v=1".to_string(),
        ];
        self.kubelet = Some(self.spawn_inside("kubelet", &binaries.path("kubelet"), &args)?);
        Ok(())
    }

    /// Writes the CNI configuration for the node's pod CIDR (the bridge plugin, host-local IPAM,
    /// no masquerade: the proxies decide that).
    pub fn write_cni_config(&self, pod_cidr: &str) -> Result<(), NodeError> {
        let config = format!(
            r#"{{
  "cniVersion": "0.4.0",
  "name": "knat-pods",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{pod_cidr}"}}]], "routes": [{{"dst": "0.0.0.0/0"}}]}}
    }},
    {{"type": "portmap", "capabilities": {{"portMappings": true}}}}
  ]
}}
"#
        );
        let path = self.dir.join("cni-net.d/10-knat-pods.conflist");
        std::fs::write(&path, config).map_err(io(format!("write {}", path.display())))
    }

    /// The last lines of one of the node's logs (`kubelet`, `containerd`, `holder`).
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        tail(&self.dir.join(format!("{name}.log")), lines)
    }

    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        log: &str,
        mut done: impl FnMut() -> bool,
    ) -> Result<(), NodeError> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if done() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(NodeError::NotReady {
            node: self.spec.name.clone(),
            what: what.to_string(),
            waited: start.elapsed(),
            log: tail(&self.dir.join(log), 30),
        })
    }

    /// Stops the node: the kubelet, every container and task, containerd, whatever is left in
    /// the node's cgroups, the namespace holder; then removes the cgroups.
    pub fn stop(&mut self) -> Result<(), NodeError> {
        if let Some(mut kubelet) = self.kubelet.take() {
            kubelet.stop();
        }
        if self.containerd.as_mut().is_some_and(Daemon::is_running) {
            if let Ok(tasks) = self.ctr(&["tasks", "ls", "-q"]) {
                for task in tasks.lines().filter(|l| !l.trim().is_empty()) {
                    let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", task.trim()]);
                }
                std::thread::sleep(Duration::from_millis(300));
                for task in tasks.lines().filter(|l| !l.trim().is_empty()) {
                    let _ = self.ctr(&["tasks", "delete", "--force", task.trim()]);
                }
            }
            if let Ok(containers) = self.ctr(&["containers", "ls", "-q"]) {
                for c in containers.lines().filter(|l| !l.trim().is_empty()) {
                    let _ = self.ctr(&["containers", "delete", c.trim()]);
                }
            }
        }
        if let Some(mut containerd) = self.containerd.take() {
            containerd.stop();
        }
        let result = match self.cgroups.as_mut() {
            Some(cgroups) => cgroups.remove().map_err(NodeError::from),
            None => Ok(()),
        };
        if let Some(mut holder) = self.holder.take() {
            holder.stop();
        }
        self.cgroups = None;
        result
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("knat-testbed: node {}: {e}", self.spec.name);
        }
    }
}
