//! Which API server `knat run` talks to, where that address came from, and what the operator
//! is told when it cannot be reached.
//!
//! The usual first failure of a kube-proxy replacement: the kubelet injects
//! `KUBERNETES_SERVICE_HOST` = the `kubernetes` Service's ClusterIP (10.96.0.1), and no service
//! proxy serves that address before the service proxy itself runs. The DaemonSet therefore
//! takes the real address from the ConfigMap `kube-system/knat` (`envFrom`, which overrides the
//! kubelet's service variables). The kubelet also sets `KUBERNETES_PORT_443_TCP_ADDR` (and
//! `KUBERNETES_PORT`) to the ClusterIP and the ConfigMap does not touch those, so "the address
//! tried equals `KUBERNETES_PORT_443_TCP_ADDR`" means "we are dialling the ClusterIP".
//!
//! Everything here but [`ServiceIp::from_process_env`] is pure and takes its inputs.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

/// The ConfigMap the DaemonSet takes the API server's address from.
pub const CONFIG_MAP: &str = "kube-system/knat";

/// `daemonset/config.yaml` ships `KUBERNETES_SERVICE_HOST` with a value starting with this.
pub const PLACEHOLDER_PREFIX: &str = "SET-ME";

/// The fix for an API server address nothing serves, repeated in every such message.
pub const ADDRESS_FIX: &str = "set KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT in \
     ConfigMap kube-system/knat to the API server's real address (kubeadm: the control-plane \
     endpoint, or deploy overlays/kubeadm; kind: the control-plane container's \
     address, port 6443), then `kubectl -n kube-system rollout restart ds/knat` \
     (daemonset/README.md)";

/// Where the client configuration (and so the API server's address) came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// `--kubeconfig PATH`.
    Flag(PathBuf),
    /// The `KUBECONFIG` environment variable (its value).
    KubeconfigEnv(String),
    /// `~/.kube/config`.
    DefaultKubeconfig,
    /// `KUBERNETES_SERVICE_HOST` / `KUBERNETES_SERVICE_PORT` and the ServiceAccount files.
    InCluster,
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Flag(path) => {
                write!(f, "the kubeconfig {} (--kubeconfig)", path.display())
            }
            ConfigSource::KubeconfigEnv(value) => write!(f, "the kubeconfig KUBECONFIG={value}"),
            ConfigSource::DefaultKubeconfig => f.write_str("the kubeconfig ~/.kube/config"),
            ConfigSource::InCluster => f.write_str(
                "the in-cluster environment KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT",
            ),
        }
    }
}

/// The `kubernetes` Service's ClusterIP as the kubelet announced it to this container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceIp(pub String);

impl ServiceIp {
    /// From `KUBERNETES_PORT_443_TCP_ADDR`, else the host of `KUBERNETES_PORT`
    /// (`tcp://10.96.0.1:443`); `None` outside a pod.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Option<ServiceIp> {
        let clean = |s: String| {
            let s = s.trim().to_string();
            (!s.is_empty()).then_some(s)
        };
        if let Some(addr) = var("KUBERNETES_PORT_443_TCP_ADDR").and_then(clean) {
            return Some(ServiceIp(addr));
        }
        let port = var("KUBERNETES_PORT").and_then(clean)?;
        let rest = port.strip_prefix("tcp://")?;
        let host = match rest.rsplit_once(':') {
            Some((host, p)) if p.parse::<u16>().is_ok() => host,
            _ => rest,
        };
        clean(unbracket(host).to_string()).map(ServiceIp)
    }

    /// [`ServiceIp::from_env`] on this process's environment.
    pub fn from_process_env() -> Option<ServiceIp> {
        Self::from_env(|name| std::env::var(name).ok())
    }
}

fn unbracket(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The API server knat dials, and where that came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTarget {
    /// Host as in the URL (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub source: ConfigSource,
    /// The `kubernetes` Service's ClusterIP, when the kubelet announced it.
    pub service_ip: Option<ServiceIp>,
}

impl ApiTarget {
    /// From the parts of the client's cluster URL (`https://10.96.0.1`,
    /// `https://[fd00::1]:6443`): scheme, host (bracketed or not) and explicit port.
    pub fn new(
        scheme: Option<&str>,
        host: Option<&str>,
        port: Option<u16>,
        source: ConfigSource,
        service_ip: Option<ServiceIp>,
    ) -> Self {
        let https = scheme != Some("http");
        ApiTarget {
            host: unbracket(host.unwrap_or_default()).to_string(),
            port: port.unwrap_or(if https { 443 } else { 80 }),
            source,
            service_ip,
        }
    }

    /// `host:port`, IPv6 hosts bracketed.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// True when the address dialled is the `kubernetes` Service's ClusterIP.
    pub fn is_service_ip(&self) -> bool {
        let Some(ServiceIp(service)) = &self.service_ip else {
            return false;
        };
        match (self.host.parse::<IpAddr>(), service.parse::<IpAddr>()) {
            (Ok(a), Ok(b)) => a == b,
            _ => self.host.eq_ignore_ascii_case(service),
        }
    }
}

/// What kind of failure a watch error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection (refused, timed out, no route, DNS, TLS handshake).
    Unreachable,
    /// The API server answered, with an error (RBAC, 410 Gone, ...), or something else failed.
    Other,
}

impl Failure {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Unreachable => "unreachable",
            Failure::Other => "other",
        }
    }
}

/// The log line for a failed list or watch of `kind` against `target`; `error` is the whole
/// error chain as text.
pub fn failure_message(target: &ApiTarget, failure: Failure, kind: &str, error: &str) -> String {
    let addr = target.address();
    let from = &target.source;
    match failure {
        Failure::Unreachable if target.is_service_ip() => format!(
            "cannot connect to the API server at {addr} (from {from}) to list {kind}s: {error}; \
             {host} is the ClusterIP of the `kubernetes` Service, and no service proxy serves it \
             before knat runs (knat is the node's service proxy): {ADDRESS_FIX}; retrying with \
             backoff",
            host = target.host,
        ),
        Failure::Unreachable => format!(
            "cannot connect to the API server at {addr} (from {from}) to list {kind}s: {error}; \
             check that this node reaches that address and port (in the DaemonSet it comes from \
             ConfigMap {CONFIG_MAP}, or from the server of the --kubeconfig file); retrying with \
             backoff"
        ),
        Failure::Other => format!(
            "watching {kind}s on the API server at {addr} (from {from}) failed: {error}; \
             retrying with backoff"
        ),
    }
}

/// The in-cluster `KUBERNETES_SERVICE_HOST` still holds the ConfigMap's placeholder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "KUBERNETES_SERVICE_HOST is still the placeholder {value:?} of ConfigMap kube-system/knat \
     (daemonset/config.yaml): knat cannot use the kubernetes Service's ClusterIP, because no \
     service proxy serves it before knat runs; {ADDRESS_FIX}"
)]
pub struct Placeholder {
    pub value: String,
}

/// Fails when `host` (`KUBERNETES_SERVICE_HOST`) is the shipped placeholder.
pub fn check_placeholder(host: Option<&str>) -> Result<(), Placeholder> {
    match host.map(str::trim) {
        Some(value)
            if value
                .get(..PLACEHOLDER_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(PLACEHOLDER_PREFIX)) =>
        {
            Err(Placeholder {
                value: value.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// An error and its sources as one line (`a: b: c`), skipping a source whose text the line
/// already contains (kube's errors repeat their source in their own message).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    /// `scheme://host[:port]` split as `http::Uri` would (enough for the tests' URLs).
    fn target(url: &str, source: ConfigSource, service: Option<&str>) -> ApiTarget {
        let (scheme, rest) = url.split_once("://").expect("test URL has a scheme");
        let authority = rest.trim_end_matches('/');
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(':') && (h.ends_with(']') || !h.contains(':')) => {
                (h, p.parse().ok())
            }
            _ => (authority, None),
        };
        let service = service.map(|s| ServiceIp(s.to_string()));
        ApiTarget::new(Some(scheme), Some(host), port, source, service)
    }

    #[test]
    fn service_ip_comes_from_the_kubelet_variables() {
        assert_eq!(
            ServiceIp::from_env(env(&[
                ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
                ("KUBERNETES_PORT", "tcp://10.0.0.9:443"),
            ])),
            Some(ServiceIp("10.96.0.1".into()))
        );
        assert_eq!(
            ServiceIp::from_env(env(&[("KUBERNETES_PORT", "tcp://10.96.0.1:443")])),
            Some(ServiceIp("10.96.0.1".into()))
        );
        assert_eq!(
            ServiceIp::from_env(env(&[("KUBERNETES_PORT", "tcp://[fd00:96::1]:443")])),
            Some(ServiceIp("fd00:96::1".into()))
        );
        assert_eq!(ServiceIp::from_env(env(&[])), None);
        assert_eq!(
            ServiceIp::from_env(env(&[("KUBERNETES_PORT_443_TCP_ADDR", " ")])),
            None
        );
    }

    #[test]
    fn target_names_host_and_port() {
        let t = target("https://10.96.0.1", ConfigSource::InCluster, None);
        assert_eq!(t.address(), "10.96.0.1:443");
        let t = target("https://[fd00::1]:6443", ConfigSource::InCluster, None);
        assert_eq!(
            (t.host.as_str(), t.address().as_str()),
            ("fd00::1", "[fd00::1]:6443")
        );
        let t = target(
            "http://api.example:8080/",
            ConfigSource::DefaultKubeconfig,
            None,
        );
        assert_eq!(t.address(), "api.example:8080");
    }

    #[test]
    fn the_service_ip_is_recognised_only_when_the_address_is_it() {
        let kubelet = Some("10.96.0.1");
        assert!(target("https://10.96.0.1", ConfigSource::InCluster, kubelet).is_service_ip());
        // The ConfigMap overrode KUBERNETES_SERVICE_HOST: the kubelet's variable differs.
        assert!(
            !target("https://192.0.2.10:6443", ConfigSource::InCluster, kubelet).is_service_ip()
        );
        assert!(!target("https://10.96.0.1", ConfigSource::InCluster, None).is_service_ip());
        assert!(
            target(
                "https://[fd00:96::1]",
                ConfigSource::InCluster,
                Some("fd00:96:0::1")
            )
            .is_service_ip()
        );
    }

    #[test]
    fn unreachable_service_ip_names_address_source_and_fix() {
        let t = target(
            "https://10.96.0.1",
            ConfigSource::InCluster,
            Some("10.96.0.1"),
        );
        let msg = failure_message(
            &t,
            Failure::Unreachable,
            "Service",
            "client error (Connect)",
        );
        assert_eq!(
            msg,
            "cannot connect to the API server at 10.96.0.1:443 (from the in-cluster environment \
             KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT) to list Services: client error \
             (Connect); 10.96.0.1 is the ClusterIP of the `kubernetes` Service, and no service \
             proxy serves it before knat runs (knat is the node's service proxy): set \
             KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT in ConfigMap kube-system/knat \
             to the API server's real address (kubeadm: the control-plane endpoint, or deploy \
             overlays/kubeadm; kind: the control-plane container's address, port \
             6443), then `kubectl -n kube-system rollout restart ds/knat` \
             (daemonset/README.md); retrying with backoff"
        );
    }

    #[test]
    fn unreachable_real_address_points_at_the_source_not_the_service() {
        let t = target(
            "https://192.0.2.10:6443",
            ConfigSource::Flag("/etc/knat/kubeconfig.conf".into()),
            Some("10.96.0.1"),
        );
        let msg = failure_message(&t, Failure::Unreachable, "Node", "tcp connect error");
        assert!(msg.starts_with("cannot connect to the API server at 192.0.2.10:6443 (from the kubeconfig /etc/knat/kubeconfig.conf (--kubeconfig)) to list Nodes: tcp connect error;"), "{msg}");
        assert!(!msg.contains("ClusterIP"), "{msg}");
        assert!(msg.contains("ConfigMap kube-system/knat"), "{msg}");
        assert!(msg.ends_with("retrying with backoff"), "{msg}");

        let t = target(
            "https://api:6443",
            ConfigSource::KubeconfigEnv("/k.conf".into()),
            None,
        );
        let msg = failure_message(&t, Failure::Other, "EndpointSlice", "ApiError: forbidden");
        assert_eq!(
            msg,
            "watching EndpointSlices on the API server at api:6443 (from the kubeconfig \
             KUBECONFIG=/k.conf) failed: ApiError: forbidden; retrying with backoff"
        );
    }

    #[test]
    fn placeholder_is_refused_with_the_config_map_named() {
        let err = check_placeholder(Some("SET-ME-to-the-API-server-address"));
        let Err(err) = err else {
            panic!("the placeholder must be refused");
        };
        let text = err.to_string();
        assert!(
            text.starts_with("KUBERNETES_SERVICE_HOST is still the placeholder \"SET-ME-to-the-API-server-address\" of ConfigMap kube-system/knat"),
            "{text}"
        );
        assert!(text.contains(ADDRESS_FIX), "{text}");
        assert!(check_placeholder(Some(" set-me ")).is_err());
        assert_eq!(check_placeholder(Some("192.0.2.10")), Ok(()));
        assert_eq!(check_placeholder(Some("SET")), Ok(()));
        assert_eq!(check_placeholder(None), Ok(()));
    }

    #[test]
    fn error_chain_adds_only_new_sources() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: {0}")]
        struct Repeats(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner")]
        struct Inner(#[source] std::io::Error);
        let err = Repeats(Inner(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(error_chain(&err), "outer: inner: connection refused");
    }
}
