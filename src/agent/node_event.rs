//! A Kubernetes Event on knat's own Pod while no Node has knat's node name, and when one appears.
//!
//! The right Node cannot be known (that is the problem), so the Event regards the Pod, which the
//! DaemonSet names through the downward API (`POD_NAME`, `POD_NAMESPACE`, and `POD_UID`, without
//! which `kubectl describe pod` does not list the Event). [`Throttle`] decides (pure) when to
//! record: a Warning [`REASON_MISMATCH`] when the Node is first seen missing and again every
//! [`REPEAT`] while it stays missing, and a Normal [`REASON_FOUND`] when it appears after a
//! Warning. [`run`] follows the source state in its own task and publishes with kube-rs's
//! `Recorder` (events.k8s.io/v1: create, and patch for a repeat inside the recorder's series
//! window, through [`super::events::publish`]). A failed Event is logged and counted in
//! `knat_events_total{result="failed"}`; it never touches syncing.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use tokio::sync::watch;
use tokio::time::Instant;

use super::events::{self, NOTE_LIMIT, cut};
use super::index::SourceState;
use super::node_identity::{NameSource, NodeCheck, missing_message};
use crate::metrics::Metrics;

/// The Warning's reason (upstream style: CamelCase, what is wrong).
pub const REASON_MISMATCH: &str = "NodeNameMismatch";
/// The Normal reason recorded when the Node appears after a Warning.
pub const REASON_FOUND: &str = "NodeFound";
/// The events.k8s.io `action`: what knat was doing when it noticed.
pub const ACTION: &str = "CheckNodeName";
/// A Warning is repeated this often while the Node stays missing.
pub const REPEAT: Duration = Duration::from_secs(600);

/// Why no Event can be recorded: the Pod to attach it to is not known.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodRefError {
    /// Not running in a pod, or a DaemonSet without the downward API variables.
    #[error("POD_NAME is not set (not in a pod?): no Kubernetes Events are recorded")]
    NoName,
    /// The DaemonSet sets POD_NAME but not POD_NAMESPACE: a manifest mistake.
    #[error(
        "POD_NAME is set but POD_NAMESPACE is not: no Kubernetes Events are recorded; set POD_NAMESPACE from the downward API metadata.namespace"
    )]
    NoNamespace,
}

/// The reference to knat's own Pod, from the downward API variables (trimmed; empty is unset).
/// The UID is optional: without it the Event exists but `kubectl describe pod` omits it.
pub fn pod_reference(
    name: Option<&str>,
    namespace: Option<&str>,
    uid: Option<&str>,
) -> Result<ObjectReference, PodRefError> {
    let clean = |v: Option<&str>| {
        v.map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let name = clean(name).ok_or(PodRefError::NoName)?;
    let namespace = clean(namespace).ok_or(PodRefError::NoNamespace)?;
    Ok(ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name),
        namespace: Some(namespace),
        uid: clean(uid),
        ..ObjectReference::default()
    })
}

/// Which Event to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEventKind {
    /// Warning [`REASON_MISMATCH`].
    Mismatch,
    /// Normal [`REASON_FOUND`].
    Found,
}

impl NodeEventKind {
    pub fn reason(self) -> &'static str {
        match self {
            NodeEventKind::Mismatch => REASON_MISMATCH,
            NodeEventKind::Found => REASON_FOUND,
        }
    }
}

/// When to record (pure): on the first Missing, on every flip, and every `repeat` while the
/// Node stays missing. A Node found at start is not news and records nothing.
#[derive(Debug, Clone)]
pub struct Throttle {
    repeat: Duration,
    last: Option<(NodeEventKind, Instant)>,
}

impl Throttle {
    pub fn new(repeat: Duration) -> Self {
        Throttle { repeat, last: None }
    }

    /// The node check seen at `now`; returns the Event to record now, if any (and counts it as
    /// recorded: a failed publish is not retried before the next decision).
    pub fn observe(&mut self, check: NodeCheck, now: Instant) -> Option<NodeEventKind> {
        let kind = match (check, self.last) {
            (NodeCheck::Missing, None | Some((NodeEventKind::Found, _))) => NodeEventKind::Mismatch,
            (NodeCheck::Missing, Some((NodeEventKind::Mismatch, at)))
                if now >= at + self.repeat =>
            {
                NodeEventKind::Mismatch
            }
            (NodeCheck::Found, Some((NodeEventKind::Mismatch, _))) => NodeEventKind::Found,
            _ => return None,
        };
        self.last = Some((kind, now));
        Some(kind)
    }

    /// When the next repeat is due if nothing changes (only while a Warning stands).
    pub fn next_at(&self) -> Option<Instant> {
        match self.last {
            Some((NodeEventKind::Mismatch, at)) => Some(at + self.repeat),
            _ => None,
        }
    }
}

/// `make(name)` within [`NOTE_LIMIT`] bytes: a name too long for it is shortened (with "…")
/// rather than the end of the message, where the fix is.
fn note_with_name(name: &str, make: impl Fn(&str) -> String) -> String {
    let full = make(name);
    if full.len() <= NOTE_LIMIT {
        return full;
    }
    let ellipsis = "…";
    let mut budget = NOTE_LIMIT.saturating_sub(make("").len() + ellipsis.len());
    let mut short = String::new();
    for c in name.chars() {
        // An upper bound of the character's size in bytes in the message's `{:?}`.
        let size: usize = c.escape_debug().map(char::len_utf8).sum();
        if size > budget {
            break;
        }
        budget -= size;
        short.push(c);
    }
    short.push_str(ellipsis);
    cut(&make(&short), NOTE_LIMIT).to_string()
}

/// The Normal note: the Node exists after all.
pub fn found_message(node_name: &str, source: NameSource, frozen: bool) -> String {
    let effect = if frozen { "; rule updates resume" } else { "" };
    format!(
        "Node {node_name:?} exists (name taken from {}): endpoints on this node are recognised as local again{effect}",
        source.as_str()
    )
}

/// The Event of `kind` for this node name.
pub fn event(kind: NodeEventKind, node_name: &str, source: NameSource, frozen: bool) -> Event {
    let (type_, note) = match kind {
        NodeEventKind::Mismatch => (
            EventType::Warning,
            note_with_name(node_name, |n| missing_message(n, source, frozen)),
        ),
        NodeEventKind::Found => (
            EventType::Normal,
            note_with_name(node_name, |n| found_message(n, source, frozen)),
        ),
    };
    Event {
        type_,
        reason: kind.reason().into(),
        note: Some(note),
        action: ACTION.into(),
        secondary: None,
    }
}

/// Follows the source state until its sender goes away, recording Events on `pod`.
pub async fn run(
    recorder: Recorder,
    pod: ObjectReference,
    node_name: String,
    source: NameSource,
    mut rx: watch::Receiver<SourceState>,
    metrics: Arc<Metrics>,
) {
    let mut throttle = Throttle::new(REPEAT);
    loop {
        let (check, frozen) = {
            let state = rx.borrow_and_update();
            (state.node, state.require_node)
        };
        if let Some(kind) = throttle.observe(check, Instant::now()) {
            let ev = event(kind, &node_name, source, frozen);
            events::publish(&recorder, &pod, kind.reason(), &ev, &metrics).await;
        }
        let next = throttle.next_at();
        let repeat = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = repeat => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use kube::Client;

    use super::*;
    use crate::agent::node_identity::MISSING_NODE_FIX;

    const MIN: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn first_missing_then_every_ten_minutes_then_found_once() {
        let mut t = Throttle::new(REPEAT);
        let t0 = Instant::now();
        assert_eq!(t.observe(NodeCheck::Unknown, t0), None, "nothing known yet");
        assert_eq!(t.next_at(), None);
        assert_eq!(
            t.observe(NodeCheck::Missing, t0),
            Some(NodeEventKind::Mismatch)
        );
        assert_eq!(t.next_at(), Some(t0 + REPEAT));
        for m in [1, 5, 9] {
            assert_eq!(t.observe(NodeCheck::Missing, t0 + m * MIN), None, "{m} min");
        }
        assert_eq!(
            t.observe(NodeCheck::Missing, t0 + 10 * MIN),
            Some(NodeEventKind::Mismatch),
            "repeated after 10 minutes"
        );
        assert_eq!(t.next_at(), Some(t0 + 20 * MIN));
        assert_eq!(t.observe(NodeCheck::Missing, t0 + 19 * MIN), None);
        assert_eq!(
            t.observe(NodeCheck::Found, t0 + 19 * MIN),
            Some(NodeEventKind::Found),
            "recovery is recorded at once"
        );
        assert_eq!(t.next_at(), None, "no repeat while found");
        assert_eq!(t.observe(NodeCheck::Found, t0 + 60 * MIN), None);
        assert_eq!(
            t.observe(NodeCheck::Missing, t0 + 61 * MIN),
            Some(NodeEventKind::Mismatch),
            "a flip back is recorded at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn found_at_start_is_not_news() {
        let mut t = Throttle::new(REPEAT);
        let t0 = Instant::now();
        assert_eq!(t.observe(NodeCheck::Found, t0), None);
        assert_eq!(t.observe(NodeCheck::Found, t0 + 60 * MIN), None);
        assert_eq!(t.next_at(), None);
    }

    #[test]
    fn pod_reference_from_the_downward_api() {
        let pod = pod_reference(Some("knat-x7k2p"), Some(" kube-system\n"), Some("uid-1"));
        assert_eq!(
            pod,
            Ok(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some("knat-x7k2p".into()),
                namespace: Some("kube-system".into()),
                uid: Some("uid-1".into()),
                ..ObjectReference::default()
            })
        );
        assert_eq!(
            pod_reference(Some("knat-x7k2p"), Some("kube-system"), Some("")).map(|r| r.uid),
            Ok(None)
        );
        assert_eq!(
            pod_reference(None, Some("kube-system"), None),
            Err(PodRefError::NoName)
        );
        assert_eq!(
            pod_reference(Some(" "), Some("kube-system"), None),
            Err(PodRefError::NoName)
        );
        assert_eq!(
            pod_reference(Some("knat-x7k2p"), None, None),
            Err(PodRefError::NoNamespace)
        );
    }

    #[test]
    fn warning_names_the_name_its_source_and_the_fix() {
        let ev = event(
            NodeEventKind::Mismatch,
            "ip-10-0-0-1",
            NameSource::Hostname,
            true,
        );
        assert_eq!(ev.type_, EventType::Warning);
        assert_eq!(ev.reason, "NodeNameMismatch");
        assert_eq!(ev.action, "CheckNodeName");
        let note = ev.note.unwrap_or_default();
        assert!(
            note.starts_with("no Node named \"ip-10-0-0-1\" exists (name taken from host name)"),
            "{note}"
        );
        assert!(note.contains("rules are not being updated"), "{note}");
        assert!(note.ends_with(MISSING_NODE_FIX), "{note}");
        assert!(note.len() <= NOTE_LIMIT);

        let ev = event(NodeEventKind::Found, "node-1", NameSource::Flag, true);
        assert_eq!(ev.type_, EventType::Normal);
        assert_eq!(ev.reason, "NodeFound");
        assert_eq!(
            ev.note.as_deref(),
            Some(
                "Node \"node-1\" exists (name taken from --hostname-override): endpoints on this node are recognised as local again; rule updates resume"
            )
        );
    }

    #[test]
    fn an_absurd_name_is_shortened_and_the_fix_kept() {
        for name in ["x".repeat(5000), "ü\u{7}".repeat(2000)] {
            let ev = event(NodeEventKind::Mismatch, &name, NameSource::Flag, true);
            let note = ev.note.unwrap_or_default();
            assert!(note.len() <= NOTE_LIMIT, "{} bytes", note.len());
            assert!(note.ends_with(MISSING_NODE_FIX), "{note}");
            assert!(note.contains("…\" exists"), "{note}");
        }
    }

    type Requests = tokio::sync::mpsc::UnboundedReceiver<(String, String, Value)>;

    /// An API server that forwards every request (method, path, JSON body) and answers with
    /// `status`, echoing the body.
    fn api(status: u16) -> (Client, Requests) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let tx = tx.clone();
            async move {
                let method = req.method().to_string();
                let path = req.uri().path().to_string();
                let bytes = req.into_body().collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let _ = tx.send((method, path, body.clone()));
                let reply = if status < 300 {
                    body
                } else {
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "message": "boom", "reason": "InternalError", "code": status})
                };
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(
                            serde_json::to_vec(&reply).unwrap_or_default(),
                        ))
                        .expect("response"),
                )
            }
        });
        (Client::new(service, "default"), rx)
    }

    async fn next(requests: &mut Requests) -> (String, String, Value) {
        match tokio::time::timeout(Duration::from_secs(5), requests.recv()).await {
            Ok(Some(r)) => r,
            other => panic!("no request: {other:?}"),
        }
    }

    fn start(
        client: Client,
    ) -> (
        watch::Sender<SourceState>,
        Arc<Metrics>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = watch::channel(SourceState::new("node-1", true));
        let metrics = Arc::new(Metrics::new());
        let pod = pod_reference(Some("knat-abcde"), Some("kube-system"), Some("uid-1"))
            .expect("pod reference");
        let task = tokio::spawn(run(
            events::recorder(client, "node-1"),
            pod,
            "node-1".into(),
            NameSource::Flag,
            rx,
            metrics.clone(),
        ));
        (tx, metrics, task)
    }

    /// While the Node stays missing: one Warning at once, the next after 10 minutes (not
    /// before), a Normal at recovery, then silence.
    #[tokio::test(start_paused = true)]
    async fn run_records_on_change_and_repeats_every_ten_minutes() {
        let (client, mut requests) = api(201);
        let (tx, metrics, task) = start(client);
        let t0 = Instant::now();
        tx.send_modify(|s| s.node = NodeCheck::Missing);
        let (method, path, body) = next(&mut requests).await;
        assert_eq!(method, "POST");
        assert_eq!(path, "/apis/events.k8s.io/v1/namespaces/kube-system/events");
        assert_eq!(body["reason"], "NodeNameMismatch");
        assert_eq!(body["type"], "Warning");

        // Other changes (Services, slices) while still missing: nothing new.
        tx.send_modify(|s| s.listed.services = true);
        tokio::time::sleep_until(t0 + REPEAT - Duration::from_secs(1)).await;
        assert!(requests.try_recv().is_err(), "repeated too early");
        let (_, _, body) = next(&mut requests).await;
        assert!(Instant::now() >= t0 + REPEAT);
        assert_eq!(body["reason"], "NodeNameMismatch");

        tx.send_modify(|s| s.node = NodeCheck::Found);
        let (_, _, body) = next(&mut requests).await;
        assert_eq!(body["reason"], "NodeFound");
        assert_eq!(body["type"], "Normal");
        tokio::time::sleep(3600 * Duration::from_secs(1)).await;
        assert!(requests.try_recv().is_err(), "nothing while found");
        let text = metrics.encode();
        assert!(
            text.contains("knat_events_total{reason=\"NodeNameMismatch\",result=\"recorded\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("knat_events_total{reason=\"NodeFound\",result=\"recorded\"} 1"),
            "{text}"
        );
        drop(tx);
        assert!(
            tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .is_ok(),
            "ends with its source"
        );
    }

    /// A rejected Event is counted and not retried in a loop; the task keeps going.
    #[tokio::test(start_paused = true)]
    async fn failures_are_counted_and_not_retried_at_once() {
        let (client, mut requests) = api(500);
        let (tx, metrics, task) = start(client);
        tx.send_modify(|s| s.node = NodeCheck::Missing);
        let (_, _, body) = next(&mut requests).await;
        assert_eq!(body["reason"], "NodeNameMismatch");
        tokio::time::sleep(5 * MIN).await;
        assert!(requests.try_recv().is_err(), "no retry before the repeat");
        tx.send_modify(|s| s.node = NodeCheck::Found);
        let (_, _, body) = next(&mut requests).await;
        assert_eq!(body["reason"], "NodeFound");
        let text = metrics.encode();
        assert!(
            text.contains("knat_events_total{reason=\"NodeNameMismatch\",result=\"failed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("knat_events_total{reason=\"NodeFound\",result=\"failed\"} 1"),
            "{text}"
        );
        assert!(!task.is_finished());
        task.abort();
    }
}
