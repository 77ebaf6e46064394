//! kube-rs watchers: Services and EndpointSlices (with upstream's label selector) and the own
//! Node (by field selector). This is the only code that reads from the API server (the one
//! write, an Event on knat's own Pod, is [`super::node_event`]'s).
//!
//! Each watcher uses `kube::runtime::watcher`, retried after errors as
//! [`super::watch_retry`] says (exponential backoff; a 410 Gone re-lists at once); its events
//! are applied to the shared [`SourceState`] with `send_if_modified`, so only real changes wake
//! the sync loop. The watcher re-lists after errors (410 Gone included) and the index turns a
//! re-list into a replacement of the kind's state. Errors are logged with the API server's address and
//! where it came from ([`super::api_server`]) and counted in `knat_api_watch_errors_total`.

use std::path::PathBuf;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Node as K8sNode, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sEndpointSlice;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Api, Client};
use tokio::sync::watch;

use super::api_server::{
    ApiTarget, ConfigSource, Failure, Placeholder, ServiceIp, check_placeholder, error_chain,
    failure_message,
};
use super::index::{EventOutcome, SourceState};
use super::watch_retry::{Retry, RetryPolicy, is_expired};
use crate::metrics::Metrics;
use crate::model::convert::Skip;

/// Upstream's label selector for Services and EndpointSlices: skip objects handed to another
/// proxy and headless services.
pub const LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// Errors creating the API client.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// No usable configuration (kubeconfig unreadable, not in a cluster). Not retryable.
    #[error("cannot load the Kubernetes client configuration: {0}")]
    Config(String),
    /// The in-cluster address is still the ConfigMap's placeholder. Not retryable: the
    /// operator must fill in ConfigMap kube-system/knat.
    #[error(transparent)]
    Placeholder(#[from] Placeholder),
    /// The client could not be built (TLS setup). Not retryable.
    #[error("cannot create the Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// The client configuration, in `kube::Config::infer`'s order (a kubeconfig from `KUBECONFIG`
/// or `~/.kube/config`, else in-cluster) after `--kubeconfig`, remembering which one it was.
async fn load_config(
    kubeconfig: Option<PathBuf>,
) -> Result<(kube::Config, ConfigSource), WatchError> {
    let options = kube::config::KubeConfigOptions::default();
    if let Some(path) = kubeconfig {
        let kc = kube::config::Kubeconfig::read_from(&path)
            .map_err(|e| WatchError::Config(format!("{}: {e}", path.display())))?;
        let config = kube::Config::from_custom_kubeconfig(kc, &options)
            .await
            .map_err(|e| WatchError::Config(format!("{}: {e}", path.display())))?;
        return Ok((config, ConfigSource::Flag(path)));
    }
    let (mut config, source) = match kube::Config::from_kubeconfig(&options).await {
        Ok(config) => {
            let source = match std::env::var("KUBECONFIG") {
                Ok(value) if !value.is_empty() => ConfigSource::KubeconfigEnv(value),
                _ => ConfigSource::DefaultKubeconfig,
            };
            (config, source)
        }
        Err(kubeconfig_err) => {
            // kube accepts any host; the placeholder would only fail later, at DNS.
            check_placeholder(std::env::var("KUBERNETES_SERVICE_HOST").ok().as_deref())?;
            let config = kube::Config::incluster().map_err(|e| {
                WatchError::Config(format!(
                    "no kubeconfig ({kubeconfig_err}) and no in-cluster configuration ({e})"
                ))
            })?;
            (config, ConfigSource::InCluster)
        }
    };
    config.apply_debug_overrides();
    Ok((config, source))
}

/// A client from `--kubeconfig`, else `KUBECONFIG`/`~/.kube/config`, else in-cluster, and the
/// API server it talks to.
pub async fn connect(kubeconfig: Option<PathBuf>) -> Result<(Client, ApiTarget), WatchError> {
    let (config, source) = load_config(kubeconfig).await?;
    let url = &config.cluster_url;
    let target = ApiTarget::new(
        url.scheme_str(),
        url.host(),
        url.port_u16(),
        source,
        ServiceIp::from_process_env(),
    );
    Ok((Client::try_from(config)?, target))
}

/// A client as [`connect`] makes it.
pub async fn client(kubeconfig: Option<PathBuf>) -> Result<Client, WatchError> {
    Ok(connect(kubeconfig).await?.0)
}

/// Connection failures (refused, timed out, DNS, TLS handshake: a transport error with an I/O
/// error among its causes) as opposed to answers from the server and local failures (a token
/// that is not a valid header, ...).
fn classify(err: &watcher::Error) -> Failure {
    match err {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e)
            if matches!(e, kube::Error::Service(_) | kube::Error::HyperError(_))
                && has_io_cause(e) =>
        {
            Failure::Unreachable
        }
        _ => Failure::Other,
    }
}

fn has_io_cause(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = err.source();
    while let Some(e) = cause {
        if e.is::<std::io::Error>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Logs and counts one watch error (the watcher retries on its own, with backoff).
fn report_error(kind: &'static str, err: &watcher::Error, target: &ApiTarget, metrics: &Metrics) {
    let failure = classify(err);
    metrics.api_error(kind, failure.as_str());
    let message = failure_message(target, failure, kind, &error_chain(err));
    match failure {
        Failure::Unreachable => tracing::error!(kind, "{message}"),
        Failure::Other => tracing::warn!(kind, "{message}"),
    }
}

fn report(kind: &'static str, applied: &EventOutcome, metrics: &Metrics) {
    for (what, skip) in &applied.skipped {
        let malformed = matches!(skip, Skip::Malformed(_));
        metrics.skipped(kind, malformed);
        if malformed {
            tracing::warn!("{what} skipped: {skip}");
        } else {
            tracing::debug!("{what} skipped: {skip}");
        }
    }
}

/// Applies the events of one watcher stream until it ends, waiting after each error as
/// [`RetryPolicy`] says.
pub async fn drive<K, S>(
    stream: S,
    kind: &'static str,
    tx: &watch::Sender<SourceState>,
    apply: fn(&mut SourceState, Event<K>) -> EventOutcome,
    on_change: impl Fn(),
    target: &ApiTarget,
    metrics: &Metrics,
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut retry = RetryPolicy::default();
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                retry.on_success();
                let boundary = match &event {
                    Event::Init => Some("re-list started"),
                    Event::InitDone => Some("list complete"),
                    _ => None,
                };
                let mut applied = EventOutcome::default();
                tx.send_if_modified(|state| {
                    applied = apply(state, event);
                    applied.changed
                });
                if let Some(what) = boundary {
                    tracing::debug!(kind, "{what}");
                }
                if applied.changed {
                    on_change();
                }
                report(kind, &applied, metrics);
            }
            Err(err) => {
                report_error(kind, &err, target, metrics);
                match retry.on_error(is_expired(&err), std::time::Instant::now()) {
                    Retry::RelistNow => {
                        tracing::info!(kind, "the watch expired (410 Gone): re-listing at once");
                    }
                    Retry::After(delay) => tokio::time::sleep(delay).await,
                }
            }
        }
    }
}

/// Runs the three watchers until they end (they do not, unless the task is aborted).
pub async fn run(
    client: Client,
    target: ApiTarget,
    node_name: String,
    tx: watch::Sender<SourceState>,
    metrics: Arc<Metrics>,
) {
    let labelled = watcher::Config::default().labels(LABEL_SELECTOR);
    let services = watcher(Api::<K8sService>::all(client.clone()), labelled.clone());
    let slices = watcher(Api::<K8sEndpointSlice>::all(client.clone()), labelled);
    let node_cfg = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let nodes = watcher(Api::<K8sNode>::all(client), node_cfg);
    let m = &metrics;
    let t = &target;
    tokio::join!(
        drive(
            services,
            "Service",
            &tx,
            SourceState::service_event,
            || {
                m.service_changes_total.inc();
            },
            t,
            m
        ),
        drive(
            slices,
            "EndpointSlice",
            &tx,
            SourceState::slice_event,
            || {
                m.endpoint_changes_total.inc();
            },
            t,
            m
        ),
        drive(nodes, "Node", &tx, SourceState::node_event, || (), t, m),
    );
}

#[cfg(test)]
mod tests {
    //! The watchers against a mock API server (a tower service behind a real kube `Client`).

    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::agent::index::Readiness;
    use crate::agent::node_identity::NodeCheck;

    #[derive(Default)]
    struct Cluster {
        services: Vec<Value>,
        slices: Vec<Value>,
        nodes: Vec<Value>,
        queries: Vec<String>,
        watches: HashMap<&'static str, usize>,
        /// Events written: method, path and body.
        events: Vec<(String, String, Value)>,
    }

    fn svc(name: &str, ip: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns"},
               "spec": {"clusterIP": ip, "ports": [{"name": "p", "port": 80}]}})
    }

    fn slice(name: &str, service: &str) -> Value {
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
               "metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": service}},
               "addressType": "IPv4", "ports": [{"name": "p", "port": 8080}],
               "endpoints": [{"addresses": ["10.244.0.1"], "nodeName": "node-1"}]})
    }

    fn node(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    }

    fn decode(q: &str) -> String {
        let mut out = Vec::new();
        let b = q.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%'
                && let Some(v) = q
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn respond(body: Value) -> http::Response<kube::client::Body> {
        http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(kube::client::Body::from(
                serde_json::to_vec(&body).expect("JSON"),
            ))
            .expect("response")
    }

    /// A mock API server: lists come from `cluster`; the first watch of each kind answers
    /// 410 Gone once `expire` turns true (forcing a re-list), every other watch hangs. Node
    /// lists wait for `release_nodes`. Events (events.k8s.io/v1) are stored and echoed.
    fn mock(
        cluster: Arc<Mutex<Cluster>>,
        expire: tokio::sync::watch::Receiver<bool>,
        release_nodes: tokio::sync::watch::Receiver<bool>,
    ) -> Client {
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let cluster = cluster.clone();
            let mut expire = expire.clone();
            let mut release_nodes = release_nodes.clone();
            async move {
                let path = req.uri().path().to_string();
                let query = decode(req.uri().query().unwrap_or(""));
                if path.starts_with("/apis/events.k8s.io/v1/namespaces/") {
                    let method = req.method().to_string();
                    let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
                    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    let mut c = cluster.lock().unwrap_or_else(|p| p.into_inner());
                    c.events.push((method, path, body.clone()));
                    return Ok(respond(body));
                }
                let (kind, list_kind, api_version) = match path.as_str() {
                    "/api/v1/services" => ("services", "ServiceList", "v1"),
                    "/apis/discovery.k8s.io/v1/endpointslices" => {
                        ("slices", "EndpointSliceList", "discovery.k8s.io/v1")
                    }
                    "/api/v1/nodes" => ("nodes", "NodeList", "v1"),
                    _ => {
                        return Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(404)
                                .body(kube::client::Body::empty())
                                .expect("response"),
                        );
                    }
                };
                let watch_no = {
                    let mut c = cluster.lock().unwrap_or_else(|p| p.into_inner());
                    c.queries.push(format!("{path}?{query}"));
                    if query.contains("watch=true") {
                        let n = c.watches.entry(kind).or_default();
                        *n += 1;
                        Some(*n)
                    } else {
                        None
                    }
                };
                match watch_no {
                    Some(1) => {
                        let _ = expire.wait_for(|v| *v).await;
                        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}});
                        Ok(respond(gone))
                    }
                    Some(_) => {
                        std::future::pending::<()>().await;
                        unreachable!()
                    }
                    None => {
                        if kind == "nodes" {
                            let _ = release_nodes.wait_for(|v| *v).await;
                        }
                        let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
                        let items: Vec<Value> = match kind {
                            "services" => c.services.clone(),
                            "slices" => c.slices.clone(),
                            _ => c
                                .nodes
                                .iter()
                                .filter(|n| {
                                    query.contains(&format!(
                                        "fieldSelector=metadata.name={}",
                                        n["metadata"]["name"].as_str().unwrap_or("")
                                    ))
                                })
                                .cloned()
                                .collect(),
                        };
                        Ok(respond(
                            json!({"apiVersion": api_version, "kind": list_kind, "metadata": {"resourceVersion": "1"}, "items": items}),
                        ))
                    }
                }
            }
        });
        Client::new(service, "default")
    }

    fn mock_target() -> ApiTarget {
        ApiTarget::new(
            Some("https"),
            Some("10.96.0.1"),
            None,
            ConfigSource::InCluster,
            Some(ServiceIp("10.96.0.1".into())),
        )
    }

    async fn wait_for(
        rx: &mut tokio::sync::watch::Receiver<SourceState>,
        what: &str,
        f: impl Fn(&SourceState) -> bool,
    ) {
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|s| f(s))).await,
            Ok(Ok(_))
        );
        assert!(ok, "timed out waiting for {what}: {:?}", *rx.borrow());
    }

    #[tokio::test]
    async fn initial_lists_gate_writes_relist_replaces_state_and_node_is_checked() {
        let cluster = Arc::new(Mutex::new(Cluster {
            services: vec![svc("a", "10.96.0.1"), svc("b", "10.96.0.2")],
            slices: vec![slice("a-1", "a"), slice("b-1", "b")],
            nodes: vec![node("other-node")],
            ..Cluster::default()
        }));
        let (expire_tx, expire_rx) = tokio::sync::watch::channel(false);
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let client = mock(cluster.clone(), expire_rx, release_rx);
        let (tx, mut rx) = tokio::sync::watch::channel(SourceState::new("node-1", true));
        let metrics = Arc::new(Metrics::new());
        let task = tokio::spawn(run(
            client,
            mock_target(),
            "node-1".into(),
            tx,
            metrics.clone(),
        ));

        // Services and slices listed, the Node list still pending: still not writable.
        wait_for(&mut rx, "services and slices listed", |s| {
            s.listed.services && s.listed.slices
        })
        .await;
        assert_eq!(rx.borrow().readiness(), Readiness::WaitingForLists);
        assert_eq!(rx.borrow().snapshot.services().len(), 2);

        // The Node list completes without a Node named node-1: unverified, nothing written.
        release_tx.send_replace(true);
        wait_for(&mut rx, "node list", |s| s.listed.node).await;
        assert_eq!(rx.borrow().node, NodeCheck::Missing);
        assert_eq!(rx.borrow().readiness(), Readiness::NodeUnverified);

        // Meanwhile b is deleted and node-1 registers; the watches expire (410 Gone) and the
        // re-lists replace the state.
        {
            let mut c = cluster.lock().unwrap_or_else(|p| p.into_inner());
            c.services.retain(|s| s["metadata"]["name"] != "b");
            c.slices.retain(|s| s["metadata"]["name"] != "b-1");
            c.nodes.push(node("node-1"));
        }
        expire_tx.send_replace(true);
        wait_for(&mut rx, "re-listed state", |s| {
            s.readiness() == Readiness::Ready
                && s.snapshot.services().len() == 1
                && s.snapshot.slices().len() == 1
        })
        .await;
        let state = rx.borrow().clone();
        assert_eq!(state.node, NodeCheck::Found);
        assert!(state.snapshot.services().keys().all(|k| k.name == "a"));
        assert_eq!(
            state.snapshot.node.as_ref().map(|n| n.name.as_str()),
            Some("node-1")
        );

        let queries = cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queries
            .clone();
        let selector = format!("labelSelector={LABEL_SELECTOR}");
        assert!(
            queries
                .iter()
                .filter(|q| q.starts_with("/api/v1/services"))
                .all(|q| q.contains(&selector)),
            "{queries:?}"
        );
        assert!(
            queries
                .iter()
                .filter(|q| q.contains("endpointslices"))
                .all(|q| q.contains(&selector)),
            "{queries:?}"
        );
        assert!(
            queries
                .iter()
                .filter(|q| q.starts_with("/api/v1/nodes"))
                .all(|q| q.contains("fieldSelector=metadata.name=node-1")),
            "{queries:?}"
        );
        assert!(
            metrics
                .encode()
                .contains("kubeproxy_sync_proxy_rules_service_changes_total")
        );
        task.abort();
    }

    /// The Node list completes without our Node: a Warning Event on knat's own Pod (the Node
    /// cannot be named); when the Node registers, a Normal one.
    #[tokio::test]
    async fn missing_node_records_a_warning_event_on_the_pod() {
        use crate::agent::node_event;
        use crate::agent::node_identity::{MISSING_NODE_FIX, NameSource};

        let cluster = Arc::new(Mutex::new(Cluster {
            nodes: vec![node("other-node")],
            ..Cluster::default()
        }));
        let (expire_tx, expire_rx) = tokio::sync::watch::channel(false);
        let (_release_tx, release_rx) = tokio::sync::watch::channel(true);
        let client = mock(cluster.clone(), expire_rx, release_rx);
        let (tx, rx) = tokio::sync::watch::channel(SourceState::new("node-1", true));
        let metrics = Arc::new(Metrics::new());
        let pod = node_event::pod_reference(
            Some("knat-x7k2p"),
            Some("kube-system"),
            Some("0b5c1f9e-uid"),
        )
        .expect("pod reference");
        let events = tokio::spawn(node_event::run(
            crate::agent::events::recorder(client.clone(), "node-1"),
            pod,
            "node-1".into(),
            NameSource::Flag,
            rx,
            metrics.clone(),
        ));
        let watchers = tokio::spawn(run(client, mock_target(), "node-1".into(), tx, metrics));

        let written = |n: usize| {
            let cluster = cluster.clone();
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                loop {
                    let events = cluster
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .events
                        .clone();
                    if events.len() >= n {
                        return events;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{n} events expected: {events:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        let events_written = written(1).await;
        let (method, path, ev) = &events_written[0];
        assert_eq!(method, "POST");
        assert_eq!(path, "/apis/events.k8s.io/v1/namespaces/kube-system/events");
        assert_eq!(ev["apiVersion"], "events.k8s.io/v1");
        assert_eq!(ev["kind"], "Event");
        assert_eq!(ev["type"], "Warning");
        assert_eq!(ev["reason"], "NodeNameMismatch");
        assert_eq!(ev["action"], "CheckNodeName");
        assert_eq!(ev["reportingController"], "knat");
        assert_eq!(ev["reportingInstance"], "node-1");
        assert_eq!(ev["metadata"]["namespace"], "kube-system");
        assert!(ev["eventTime"].is_string(), "{ev}");
        assert_eq!(
            ev["regarding"],
            json!({"apiVersion": "v1", "kind": "Pod", "name": "knat-x7k2p",
                   "namespace": "kube-system", "uid": "0b5c1f9e-uid"})
        );
        let note = ev["note"].as_str().unwrap_or_default();
        assert!(
            note.starts_with(
                "no Node named \"node-1\" exists (name taken from --hostname-override)"
            ),
            "{note}"
        );
        assert!(note.contains(MISSING_NODE_FIX), "{note}");

        // node-1 registers; the re-list finds it: one Normal Event, on the same Pod.
        cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .nodes
            .push(node("node-1"));
        expire_tx.send_replace(true);
        let events_written = written(2).await;
        let (method, _, ev) = &events_written[1];
        assert_eq!(method, "POST");
        assert_eq!(ev["type"], "Normal");
        assert_eq!(ev["reason"], "NodeFound");
        assert_eq!(ev["regarding"]["name"], "knat-x7k2p");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            cluster
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .events
                .len(),
            2,
            "one Event per change"
        );
        watchers.abort();
        events.abort();
    }

    /// A failure that is not a connection failure (here: a header the client cannot build) is
    /// counted as `other`, not blamed on the address.
    #[test]
    fn only_io_causes_count_as_unreachable() {
        let refused = watcher::Error::InitialListFailed(kube::Error::Service(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        )));
        let wrapped =
            watcher::Error::InitialListFailed(kube::Error::Service("invalid bearer token".into()));
        assert_eq!(classify(&refused), Failure::Unreachable);
        assert_eq!(classify(&wrapped), Failure::Other);
        assert_eq!(classify(&watcher::Error::NoResourceVersion), Failure::Other);
    }

    /// A transport that refuses every connection, as an unserved ClusterIP does: every kind's
    /// list fails, is counted as unreachable, and the state stays unlisted (nothing to write).
    #[tokio::test]
    async fn connection_failures_are_counted_as_unreachable() {
        let service = tower::service_fn(|_req: http::Request<kube::client::Body>| async {
            Err::<http::Response<kube::client::Body>, _>(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            ))
        });
        let client = Client::new(service, "default");
        let (tx, rx) = tokio::sync::watch::channel(SourceState::new("node-1", true));
        let metrics = Arc::new(Metrics::new());
        let task = tokio::spawn(run(
            client,
            mock_target(),
            "node-1".into(),
            tx,
            metrics.clone(),
        ));
        let want = [
            "knat_api_watch_errors_total{kind=\"Service\",reason=\"unreachable\"}",
            "knat_api_watch_errors_total{kind=\"EndpointSlice\",reason=\"unreachable\"}",
            "knat_api_watch_errors_total{kind=\"Node\",reason=\"unreachable\"}",
        ];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = metrics.encode();
            if want.iter().all(|w| text.contains(w)) {
                assert!(!text.contains("reason=\"other\""), "{text}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "errors not counted:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!rx.borrow().listed.node);
        assert_eq!(rx.borrow().readiness(), Readiness::WaitingForLists);
        task.abort();
    }
}
