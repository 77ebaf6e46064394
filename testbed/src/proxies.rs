//! The two service proxies as DaemonSets on a [`NodeCluster`]: upstream kube-proxy laid out as
//! kubeadm deploys it (`testbed/manifests/kube-proxy.yaml`), and knat's shipped `daemonset/`
//! through the overlay an operator writes (only the image, the API server address and the pod
//! CIDR). Deploying waits until every node runs a Ready, up-to-date pod.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cluster::{CLUSTER_CIDR, ClusterError, FABRIC_IP, NodeCluster};
use crate::images::Images;

/// How long a DaemonSet may take to be Ready everywhere.
pub const DAEMONSET_TIMEOUT: Duration = Duration::from_secs(180);

/// Which proxy runs as the DaemonSet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxy {
    KubeProxy,
    Knat,
}

impl Proxy {
    /// The DaemonSet's name.
    pub fn daemonset(self) -> &'static str {
        match self {
            Proxy::KubeProxy => "kube-proxy",
            Proxy::Knat => "knat",
        }
    }

    /// Its pods' label selector.
    pub fn selector(self) -> &'static str {
        match self {
            Proxy::KubeProxy => "k8s-app=kube-proxy",
            Proxy::Knat => "app.kubernetes.io/name=knat",
        }
    }
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> ClusterError {
    move |source| ClusterError::Lab(knat::lab::LabError::Io { context, source })
}

/// kube-proxy's manifest with the API server, image and pod CIDR filled in.
pub fn kube_proxy_manifest(repo: &Path, image: &str) -> Result<String, ClusterError> {
    let path = repo.join("testbed/manifests/kube-proxy.yaml");
    let text = std::fs::read_to_string(&path).map_err(io(format!("read {}", path.display())))?;
    Ok(text
        .replace("@SERVER@", &format!("https://{FABRIC_IP}:6443"))
        .replace("@IMAGE@", image)
        .replace("@CLUSTER_CIDR@", CLUSTER_CIDR))
}

/// Writes the overlay an operator writes for `daemonset/` into `dir/knat-overlay`: the image,
/// and ConfigMap `knat` with the API server's address and the pod CIDR. Returns its path.
pub fn write_knat_overlay(repo: &Path, dir: &Path, image: &str) -> Result<PathBuf, ClusterError> {
    let overlay = dir.join("knat-overlay");
    std::fs::create_dir_all(&overlay).map_err(io(format!("create {}", overlay.display())))?;
    let base = repo.join("daemonset");
    let base = base
        .canonicalize()
        .map_err(io(format!("find {}", base.display())))?;
    // kustomize takes the base as a path relative to the overlay.
    let depth = overlay.components().count().saturating_sub(1);
    let relative = format!(
        "{}{}",
        "../".repeat(depth),
        base.display().to_string().trim_start_matches('/')
    );
    let (name, tag) = image.rsplit_once(':').ok_or_else(|| {
        ClusterError::Lab(knat::lab::LabError::Internal(format!(
            "image reference {image:?} has no tag"
        )))
    })?;
    let kustomization = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {relative}\n\
         images:\n  - name: knat\n    newName: {name}\n    newTag: {tag}\n\
         patches:\n  - path: config.yaml\n"
    );
    let config = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: knat\n  namespace: kube-system\ndata:\n  \
         KUBERNETES_SERVICE_HOST: \"{FABRIC_IP}\"\n  KUBERNETES_SERVICE_PORT: \"6443\"\n  \
         KNAT_CLUSTER_CIDR: \"{CLUSTER_CIDR}\"\n"
    );
    for (file, text) in [
        ("kustomization.yaml", kustomization),
        ("config.yaml", config),
    ] {
        let path = overlay.join(file);
        std::fs::write(&path, text).map_err(io(format!("write {}", path.display())))?;
    }
    Ok(overlay)
}

/// Applies `proxy`'s DaemonSet and waits until it is Ready on every node; returns the time
/// from the apply.
pub fn deploy(
    cluster: &NodeCluster,
    proxy: Proxy,
    repo: &Path,
    images: &Images,
) -> Result<Duration, ClusterError> {
    let start = Instant::now();
    match proxy {
        Proxy::KubeProxy => {
            let manifest = kube_proxy_manifest(repo, &images.kube_proxy.reference)?;
            cluster.kubectl(&["apply", "-f", "-"], Some(&manifest))?;
        }
        Proxy::Knat => {
            let overlay = write_knat_overlay(repo, cluster.workdir(), &images.knat.reference)?;
            cluster.kubectl(&["apply", "-k", &overlay.display().to_string()], None)?;
        }
    }
    wait_daemonset(cluster, proxy.daemonset())?;
    Ok(start.elapsed())
}

/// Deletes `proxy`'s DaemonSet (its rules stay in the kernel) and waits until its pods are gone.
pub fn remove(cluster: &NodeCluster, proxy: Proxy) -> Result<(), ClusterError> {
    cluster.kubectl(
        &[
            "-n",
            "kube-system",
            "delete",
            "ds",
            proxy.daemonset(),
            "--wait=true",
        ],
        None,
    )?;
    cluster.wait_for_within(
        &format!("{} pods gone", proxy.daemonset()),
        DAEMONSET_TIMEOUT,
        || {
            let out = cluster.kubectl(
                &[
                    "-n",
                    "kube-system",
                    "get",
                    "pods",
                    "-l",
                    proxy.selector(),
                    "-o",
                    "name",
                ],
                None,
            )?;
            Ok(out.trim().is_empty().then_some(()))
        },
    )
}

/// Waits until DaemonSet `name` (in kube-system) has a Ready, up-to-date pod on every node of
/// the cluster and its controller has seen the latest spec; returns how long that took.
pub fn wait_daemonset(cluster: &NodeCluster, name: &str) -> Result<Duration, ClusterError> {
    let start = Instant::now();
    let nodes = cluster.nodes().len().to_string();
    let result = cluster.wait_for_within(
        &format!("DaemonSet {name} ready"),
        DAEMONSET_TIMEOUT,
        || {
            let out = cluster.kubectl(
                &[
                    "-n",
                    "kube-system",
                    "get",
                    "ds",
                    name,
                    "-o",
                    "jsonpath={.status.desiredNumberScheduled} {.status.numberReady} \
                     {.status.updatedNumberScheduled} {.status.observedGeneration} \
                     {.metadata.generation}",
                ],
                None,
            )?;
            let v: Vec<&str> = out.split_whitespace().collect();
            let ready = v.len() == 5 && v[..3].iter().all(|n| *n == nodes) && v[3] == v[4];
            Ok(ready.then_some(()))
        },
    );
    match result {
        Ok(()) => Ok(start.elapsed()),
        Err(ClusterError::Timeout {
            what,
            waited,
            detail,
        }) => {
            let pods = cluster
                .kubectl(&["-n", "kube-system", "get", "pods", "-o", "wide"], None)
                .unwrap_or_default();
            Err(ClusterError::Timeout {
                what,
                waited,
                detail: format!("{detail}\n{pods}"),
            })
        }
        Err(other) => Err(other),
    }
}
