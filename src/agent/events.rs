//! Publishing Kubernetes Events (events.k8s.io/v1) through kube-rs's `Recorder`: the code every
//! Event of knat shares.
//!
//! [`publish`] sends one Event with a time limit, logs the outcome and counts it in
//! `knat_events_total{reason,result}`; a failure is never returned, so recording an Event can
//! never disturb syncing. [`Outbox`] is the channel the sync loop hands its Events to (it never
//! waits for the API server), and [`run_outbox`] the task that publishes them. The references
//! ([`node_reference`], [`service_reference`]) are the ones kube-proxy attaches its Events to.
//! Which Events to record, and when, is decided elsewhere by pure throttles
//! ([`super::node_event`], [`super::health_event`], [`super::sync_event`]).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, Recorder, Reporter};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::model::ServiceName;

/// The events.k8s.io `reportingController`.
pub const CONTROLLER: &str = "knat";
/// The API server's limit of `note`, in bytes.
pub const NOTE_LIMIT: usize = 1024;
/// The API server's limit of `reportingInstance`, in bytes.
pub const INSTANCE_LIMIT: usize = 128;
/// One publish attempt gives up after this long (the next one comes with the next decision).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);
/// Events waiting for the publishing task; more are dropped (and counted as failed).
pub const OUTBOX_CAPACITY: usize = 64;

/// `s` cut to at most `limit` bytes, at a character boundary.
pub fn cut(s: &str, limit: usize) -> &str {
    let mut end = s.len().min(limit);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The recorder: controller [`CONTROLLER`], instance the node name used (within the limit).
pub fn recorder(client: Client, node_name: &str) -> Recorder {
    Recorder::new(
        client,
        Reporter {
            controller: CONTROLLER.into(),
            instance: Some(cut(node_name, INSTANCE_LIMIT).to_string()),
        },
    )
}

/// The Node, as kube-proxy and the kubelet refer to it: the name doubles as the UID, which is
/// what `kubectl describe node` looks for. Node Events live in the `default` namespace.
pub fn node_reference(node_name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node_name.to_string()),
        uid: Some(node_name.to_string()),
        ..ObjectReference::default()
    }
}

/// A Service. With its real UID `kubectl describe service` lists the Event; without one, the
/// UID is `namespace/name`, as kube-proxy writes it.
pub fn service_reference(service: &ServiceName, uid: Option<&str>) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        name: Some(service.name.clone()),
        namespace: Some(service.namespace.clone()),
        uid: Some(uid.map_or_else(|| service.to_string(), str::to_string)),
        ..ObjectReference::default()
    }
}

/// Publishes one Event about `regarding`; the outcome is logged and counted, never returned.
/// True when the API server accepted it.
pub async fn publish(
    recorder: &Recorder,
    regarding: &ObjectReference,
    reason: &'static str,
    ev: &Event,
    metrics: &Metrics,
) -> bool {
    let kind = regarding.kind.as_deref().unwrap_or_default();
    let name = regarding.name.as_deref().unwrap_or_default();
    let result = match tokio::time::timeout(PUBLISH_TIMEOUT, recorder.publish(ev, regarding)).await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err(format!("no answer within {PUBLISH_TIMEOUT:?}")),
    };
    metrics.event(reason, result.is_ok());
    match result {
        Ok(()) => {
            tracing::info!(reason, kind, name, "Kubernetes Event recorded");
            true
        }
        Err(err) => {
            tracing::warn!(reason, kind, name, %err, "cannot record the Kubernetes Event (syncing is not affected)");
            false
        }
    }
}

/// One Event waiting to be published.
pub struct Outgoing {
    pub regarding: ObjectReference,
    /// The reason as a static string (the metric's label).
    pub reason: &'static str,
    pub event: Event,
}

/// Where the sync loop leaves its Events: never blocks, drops (and counts) when full.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    metrics: Arc<Metrics>,
}

impl Outbox {
    /// An outbox and the receiver [`run_outbox`] reads.
    pub fn new(metrics: Arc<Metrics>) -> (Outbox, mpsc::Receiver<Outgoing>) {
        let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
        (Outbox { tx, metrics }, rx)
    }

    /// Queues an Event for publishing.
    pub fn send(&self, out: Outgoing) {
        if let Err(err) = self.tx.try_send(out) {
            let (reason, why) = match &err {
                mpsc::error::TrySendError::Full(o) => (o.reason, "too many Events queued"),
                mpsc::error::TrySendError::Closed(o) => (o.reason, "the Event task has stopped"),
            };
            self.metrics.event(reason, false);
            tracing::warn!(reason, "Kubernetes Event dropped: {why}");
        }
    }
}

/// Publishes what arrives in the outbox, one at a time, until every [`Outbox`] is dropped.
pub async fn run_outbox(
    recorder: Recorder,
    mut rx: mpsc::Receiver<Outgoing>,
    metrics: Arc<Metrics>,
) {
    while let Some(out) = rx.recv().await {
        publish(&recorder, &out.regarding, out.reason, &out.event, &metrics).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_whole_characters() {
        let name = "é".repeat(200);
        assert_eq!(cut(&name, INSTANCE_LIMIT).len(), INSTANCE_LIMIT);
        assert_eq!(cut(&name, INSTANCE_LIMIT - 1).len(), INSTANCE_LIMIT - 2);
        assert_eq!(cut("node-1", INSTANCE_LIMIT), "node-1");
    }

    #[test]
    fn references_as_kube_proxy_writes_them() {
        let node = node_reference("node-1");
        assert_eq!(node.kind.as_deref(), Some("Node"));
        assert_eq!(node.name.as_deref(), Some("node-1"));
        assert_eq!(node.uid.as_deref(), Some("node-1"));
        assert_eq!(node.namespace, None);

        let svc = ServiceName::new("web", "shop");
        let with_uid = service_reference(&svc, Some("7d0c-uid"));
        assert_eq!(with_uid.kind.as_deref(), Some("Service"));
        assert_eq!(with_uid.namespace.as_deref(), Some("web"));
        assert_eq!(with_uid.name.as_deref(), Some("shop"));
        assert_eq!(with_uid.uid.as_deref(), Some("7d0c-uid"));
        assert_eq!(
            service_reference(&svc, None).uid.as_deref(),
            Some("web/shop")
        );
    }

    #[tokio::test]
    async fn a_full_outbox_drops_and_counts() {
        let metrics = Arc::new(Metrics::new());
        let (outbox, mut rx) = Outbox::new(metrics.clone());
        let out = || Outgoing {
            regarding: node_reference("node-1"),
            reason: "SyncProxyRulesFailed",
            event: Event {
                type_: kube::runtime::events::EventType::Warning,
                reason: "SyncProxyRulesFailed".into(),
                note: None,
                action: "SyncProxyRules".into(),
                secondary: None,
            },
        };
        for _ in 0..OUTBOX_CAPACITY + 2 {
            outbox.send(out());
        }
        let text = metrics.encode();
        assert!(
            text.contains("knat_events_total{reason=\"SyncProxyRulesFailed\",result=\"failed\"} 2"),
            "{text}"
        );
        let mut queued = 0;
        while rx.try_recv().is_ok() {
            queued += 1;
        }
        assert_eq!(queued, OUTBOX_CAPACITY);
    }
}
