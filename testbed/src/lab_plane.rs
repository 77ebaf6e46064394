//! A real control plane on a lab's fabric, set up the way every control-plane test starts:
//! etcd, kube-apiserver and kube-controller-manager on the fabric gateway's address, a log
//! directory for the proxies, and, when asked, knat's DaemonSet RBAC, the test's namespace and
//! the lab's nodes registered as Node objects. What a test adds beyond that stays in the test.

use std::path::PathBuf;
use std::time::Instant;

use knat::lab::{Family, Lab};

use crate::control_plane::{
    ControlPlane, ControlPlaneError, ControlPlaneOptions, K8sBinaries, SERVICE_CIDR,
};

/// What to set up besides the control plane itself.
#[derive(Debug, Clone, Copy)]
pub struct LabPlaneOptions<'a> {
    /// The Service CIDR(s); two (comma-separated) make a dual-stack cluster.
    pub service_cidr: &'a str,
    /// Apply `daemonset/serviceaccount.yaml` and `daemonset/rbac.yaml`.
    pub knat_rbac: bool,
    /// Create this Kubernetes namespace for the test's objects.
    pub namespace: Option<&'a str>,
    /// Register every node of the lab's scenario (IPv4 address and pod CIDR).
    pub register_nodes: bool,
}

impl Default for LabPlaneOptions<'_> {
    fn default() -> Self {
        LabPlaneOptions {
            service_cidr: SERVICE_CIDR,
            knat_rbac: false,
            namespace: None,
            register_nodes: false,
        }
    }
}

/// A started control plane and where the proxies' logs go (inside its directory).
pub struct LabPlane {
    pub cp: ControlPlane,
    pub logs: PathBuf,
}

/// Starts the control plane for `lab` and sets up what `options` asks for; `test` names the
/// test in the startup time it prints.
pub fn start(
    test: &str,
    lab: &Lab,
    binaries: K8sBinaries,
    options: &LabPlaneOptions,
) -> Result<LabPlane, ControlPlaneError> {
    let t = Instant::now();
    let cp = ControlPlane::start_with_service_cidr(
        ControlPlaneOptions {
            binaries,
            namespace: lab.fabric_namespace(),
            address: lab.scenario().fabric_gateway(Family::V4),
            extra_sans: Vec::new(),
            real_nodes: None,
        },
        options.service_cidr,
    )?;
    eprintln!("{test}: control plane ready in {:.1?}", t.elapsed());
    let logs = cp.dir().join("proxies");
    std::fs::create_dir_all(&logs).map_err(|source| ControlPlaneError::Io {
        context: format!("create {}", logs.display()),
        source,
    })?;
    if options.knat_rbac {
        apply_knat_rbac(&cp)?;
    }
    if let Some(namespace) = options.namespace {
        cp.kubectl(&["create", "namespace", namespace], None)?;
    }
    if options.register_nodes {
        register_nodes(&cp, lab)?;
    }
    Ok(LabPlane { cp, logs })
}

/// knat's DaemonSet identity: its ServiceAccount and RBAC, from the repository's manifests.
fn apply_knat_rbac(cp: &ControlPlane) -> Result<(), ControlPlaneError> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../daemonset"));
    for file in ["serviceaccount.yaml", "rbac.yaml"] {
        let path = dir.join(file);
        let yaml = std::fs::read_to_string(&path).map_err(|source| ControlPlaneError::Io {
            context: format!("read {}", path.display()),
            source,
        })?;
        cp.apply(&yaml)?;
    }
    Ok(())
}

/// Every node of the lab's scenario as a Node object with its IPv4 address and pod CIDR.
fn register_nodes(cp: &ControlPlane, lab: &Lab) -> Result<(), ControlPlaneError> {
    let s = lab.scenario();
    for node in &s.nodes {
        let missing = |what: &str| ControlPlaneError::Api {
            what: format!("node {node}"),
            detail: format!("the scenario has no IPv4 {what}"),
        };
        let ip = s
            .node_ip(node, Family::V4)
            .ok_or_else(|| missing("address"))?;
        let cidr = s
            .pod_cidr(node, Family::V4)
            .ok_or_else(|| missing("pod CIDR"))?;
        cp.register_node(node, ip, &cidr.to_string())?;
    }
    Ok(())
}
