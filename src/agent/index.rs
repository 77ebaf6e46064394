//! The index: what the sources (API watchers or files) know, as one plain value.
//!
//! [`SourceState`] holds the [`Snapshot`] the compiler reads plus the bookkeeping the sync loop
//! needs to decide whether it may write at all: which kinds have completed their initial
//! list, and whether the Node named like this proxy exists. Watch events are applied with
//! [`SourceState::service_event`], [`SourceState::slice_event`] and
//! [`SourceState::node_event`], which convert objects at the boundary and report whether the
//! published state changed, so no-op updates do not wake the sync loop. A re-list (after a
//! watch error such as 410 Gone) is buffered from `Init` to `InitDone` and then replaces the
//! kind's state: whatever was not re-listed is deleted.
//!
//! Everything here is pure and synchronous; the watchers publish it through a
//! `tokio::sync::watch` channel with `send_if_modified`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Node as K8sNode, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice as K8sEndpointSlice;
use kube::runtime::watcher::Event;

use super::node_identity::NodeCheck;
use crate::model::convert::{self, Skip};
use crate::model::{EndpointSlice, NodeInfo, Service, ServiceName, Snapshot};

/// Which kinds have completed their first list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Listed {
    pub services: bool,
    pub slices: bool,
    pub node: bool,
}

impl Listed {
    pub fn all() -> Self {
        Listed {
            services: true,
            slices: true,
            node: true,
        }
    }

    pub fn complete(&self) -> bool {
        self.services && self.slices && self.node
    }
}

/// May the sync loop write rules from this state?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Some kind has not completed its first list: writing now could program "no endpoints".
    WaitingForLists,
    /// Lists are complete but no Node has our name: locality is unknowable (API source only).
    NodeUnverified,
    Ready,
}

/// The result of applying one event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The published state changed (the sync loop must be woken).
    pub changed: bool,
    /// Objects that were not converted, with who they are and why.
    pub skipped: Vec<(String, Skip)>,
}

/// Everything a source knows, published to the sync loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceState {
    pub snapshot: Snapshot,
    pub listed: Listed,
    pub node: NodeCheck,
    /// When true (API-server source) nothing is written while the Node is not found; the
    /// static file source programs anyway and only alarms.
    pub require_node: bool,
    /// This proxy's node name.
    pub node_name: String,
    /// `endpoints.kubernetes.io/last-change-trigger-time` of the slice changes seen, with a
    /// sequence number (the newest [`MAX_TRIGGERS`] only), for the network programming
    /// latency metric.
    pub triggers: Vec<(u64, SystemTime)>,
    next_trigger: u64,
    relist_services: Option<BTreeMap<ServiceName, Service>>,
    relist_slices: Option<BTreeMap<(String, String), EndpointSlice>>,
    relist_node: Option<Option<NodeInfo>>,
}

/// The annotation the EndpointSlice controller sets to the time of the change that caused it.
pub const ANNOTATION_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// How many trigger times are kept between two syncs.
pub const MAX_TRIGGERS: usize = 1000;

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    )
}

impl SourceState {
    pub fn new(node_name: &str, require_node: bool) -> Self {
        SourceState {
            snapshot: Snapshot::default(),
            listed: Listed::default(),
            node: NodeCheck::Unknown,
            require_node,
            node_name: node_name.to_string(),
            triggers: Vec::new(),
            next_trigger: 0,
            relist_services: None,
            relist_slices: None,
            relist_node: None,
        }
    }

    /// Records the change-trigger time of a slice that changed (if it carries one).
    fn record_trigger(&mut self, slice: &K8sEndpointSlice) {
        let Some(time) = slice
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_TRIGGER_TIME))
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map(SystemTime::from)
        else {
            return;
        };
        self.next_trigger += 1;
        self.triggers.push((self.next_trigger, time));
        if self.triggers.len() > MAX_TRIGGERS {
            let excess = self.triggers.len() - MAX_TRIGGERS;
            self.triggers.drain(..excess);
        }
    }

    /// A complete state from a static source (every kind listed).
    pub fn from_static(node_name: &str, snapshot: Snapshot) -> Self {
        let node = if snapshot.node.is_some() {
            NodeCheck::Found
        } else {
            NodeCheck::Missing
        };
        SourceState {
            snapshot,
            listed: Listed::all(),
            node,
            ..SourceState::new(node_name, false)
        }
    }

    pub fn readiness(&self) -> Readiness {
        if !self.listed.complete() {
            Readiness::WaitingForLists
        } else if self.require_node && self.node != NodeCheck::Found {
            Readiness::NodeUnverified
        } else {
            Readiness::Ready
        }
    }

    /// Applies a Service watch event.
    pub fn service_event(&mut self, event: Event<K8sService>) -> Applied {
        let mut applied = Applied::default();
        let convert = |svc: &K8sService, applied: &mut Applied| match convert::service(svc) {
            Ok(s) => Some(s),
            Err(skip) => {
                let (ns, name) = key_of(&svc.metadata);
                applied.skipped.push((format!("Service {ns}/{name}"), skip));
                None
            }
        };
        match event {
            Event::Apply(svc) => {
                let (ns, name) = key_of(&svc.metadata);
                let key = ServiceName::new(ns, name);
                match convert(&svc, &mut applied) {
                    Some(s) => {
                        if self.snapshot.services.get(&key).map(|old| &**old) != Some(&s) {
                            self.snapshot.upsert_service(s);
                            applied.changed = true;
                        }
                    }
                    None => applied.changed = self.snapshot.remove_service(&key).is_some(),
                }
            }
            Event::Delete(svc) => {
                let (ns, name) = key_of(&svc.metadata);
                applied.changed = self
                    .snapshot
                    .remove_service(&ServiceName::new(ns, name))
                    .is_some();
            }
            Event::Init => self.relist_services = Some(BTreeMap::new()),
            Event::InitApply(svc) => {
                if let Some(s) = convert(&svc, &mut applied) {
                    self.relist_services
                        .get_or_insert_default()
                        .insert(s.name.clone(), s);
                }
            }
            Event::InitDone => {
                // Unchanged Services keep their shared object, so the compiler reuses them.
                let fresh: BTreeMap<ServiceName, Arc<Service>> = self
                    .relist_services
                    .take()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(name, svc)| {
                        let shared = match self.snapshot.services.get(&name) {
                            Some(old) if **old == svc => old.clone(),
                            _ => Arc::new(svc),
                        };
                        (name, shared)
                    })
                    .collect();
                applied.changed = fresh != self.snapshot.services || !self.listed.services;
                self.snapshot.services = fresh;
                self.listed.services = true;
            }
        }
        applied
    }

    fn find_slice(&self, ns: &str, name: &str) -> Option<&EndpointSlice> {
        self.snapshot
            .slices
            .iter()
            .filter(|(svc, _)| svc.namespace == ns)
            .find_map(|(_, slices)| slices.get(name))
    }

    /// Applies an EndpointSlice watch event.
    pub fn slice_event(&mut self, event: Event<K8sEndpointSlice>) -> Applied {
        let mut applied = Applied::default();
        let convert = |slice: &K8sEndpointSlice, applied: &mut Applied| {
            match convert::endpoint_slice(slice) {
                Ok(s) => Some(s),
                Err(skip) => {
                    let (ns, name) = key_of(&slice.metadata);
                    applied
                        .skipped
                        .push((format!("EndpointSlice {ns}/{name}"), skip));
                    None
                }
            }
        };
        match event {
            Event::Apply(slice) => {
                let (ns, name) = key_of(&slice.metadata);
                match convert(&slice, &mut applied) {
                    Some(s) => {
                        if self.find_slice(&ns, &name) != Some(&s) {
                            self.snapshot.upsert_slice(&ns, s);
                            self.record_trigger(&slice);
                            applied.changed = true;
                        }
                    }
                    None => applied.changed = self.snapshot.remove_slice(&ns, &name).is_some(),
                }
            }
            Event::Delete(slice) => {
                let (ns, name) = key_of(&slice.metadata);
                applied.changed = self.snapshot.remove_slice(&ns, &name).is_some();
            }
            Event::Init => self.relist_slices = Some(BTreeMap::new()),
            Event::InitApply(slice) => {
                let (ns, name) = key_of(&slice.metadata);
                if let Some(s) = convert(&slice, &mut applied) {
                    self.relist_slices
                        .get_or_insert_default()
                        .insert((ns, name), s);
                }
            }
            Event::InitDone => {
                let fresh = self.relist_slices.take().unwrap_or_default();
                let before = std::mem::take(&mut self.snapshot.slices);
                // Owners are rebuilt with the slices (slices deleted meanwhile leave none).
                self.snapshot.slice_owners.clear();
                for ((ns, _), slice) in fresh {
                    self.snapshot.upsert_slice(&ns, slice);
                }
                applied.changed = before != self.snapshot.slices || !self.listed.slices;
                self.listed.slices = true;
            }
        }
        applied
    }

    fn set_node(&mut self, node: Option<NodeInfo>) -> bool {
        let check = if node.is_some() {
            NodeCheck::Found
        } else {
            NodeCheck::Missing
        };
        let changed = self.node != check || self.snapshot.node != node;
        self.node = check;
        self.snapshot.node = node;
        changed
    }

    /// Applies an event of the own-Node watcher (field selector `metadata.name=<node>`).
    /// Nodes with another name are ignored (defensive; the selector excludes them).
    pub fn node_event(&mut self, event: Event<K8sNode>) -> Applied {
        let mut applied = Applied::default();
        let ours = |n: &K8sNode| n.metadata.name.as_deref() == Some(self.node_name.as_str());
        let mut convert = |n: &K8sNode| match convert::node(n) {
            Ok(info) => Some(info),
            Err(skip) => {
                applied.skipped.push((
                    format!("Node {}", n.metadata.name.as_deref().unwrap_or("?")),
                    skip,
                ));
                None
            }
        };
        let changed = match event {
            Event::Apply(n) if ours(&n) => match convert(&n) {
                Some(info) => self.set_node(Some(info)),
                None => false,
            },
            Event::Delete(n) if ours(&n) => self.set_node(None),
            Event::Apply(_) | Event::Delete(_) => false,
            Event::Init => {
                self.relist_node = Some(None);
                false
            }
            Event::InitApply(n) => {
                if ours(&n)
                    && let Some(info) = convert(&n)
                {
                    self.relist_node = Some(Some(info));
                }
                false
            }
            Event::InitDone => {
                let node = self.relist_node.take().flatten();
                let first = !self.listed.node;
                self.listed.node = true;
                self.set_node(node) || first
            }
        };
        applied.changed = changed;
        applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ip: &str) -> K8sService {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"clusterIP": ip, "ports": [{"name": "p", "port": 80}]}
        }))
        .unwrap()
    }

    fn slice(name: &str, service: &str, ip: &str, node: &str) -> K8sEndpointSlice {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "p", "port": 8080}],
            "endpoints": [{"addresses": [ip], "nodeName": node}]
        }))
        .unwrap()
    }

    fn node(name: &str) -> K8sNode {
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap()
    }

    #[test]
    fn changed_slices_record_their_trigger_time_once() {
        let mut s = SourceState::new("node-1", true);
        let mut with_trigger = slice("a", "svc", "10.0.0.1", "node-1");
        with_trigger.metadata.annotations = Some(
            [(
                ANNOTATION_TRIGGER_TIME.to_string(),
                "2026-11-25T01:00:00Z".to_string(),
            )]
            .into(),
        );
        assert!(s.slice_event(Event::Apply(with_trigger.clone())).changed);
        assert!(!s.slice_event(Event::Apply(with_trigger)).changed);
        let expected = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_568_400);
        assert_eq!(s.triggers, vec![(1, expected)]);
        // A change without the annotation changes the snapshot but records no trigger.
        assert!(
            s.slice_event(Event::Apply(slice("a", "svc", "10.0.0.2", "node-1")))
                .changed
        );
        assert_eq!(s.triggers.len(), 1);
    }

    #[test]
    fn waits_for_every_initial_list_and_the_node() {
        let mut s = SourceState::new("node-1", true);
        assert_eq!(s.readiness(), Readiness::WaitingForLists);
        s.service_event(Event::Init);
        s.service_event(Event::InitApply(svc("a", "10.96.0.1")));
        assert!(s.snapshot.services.is_empty(), "buffered until InitDone");
        assert!(s.service_event(Event::InitDone).changed);
        assert_eq!(s.snapshot.services.len(), 1);
        s.slice_event(Event::Init);
        assert!(
            s.slice_event(Event::InitDone).changed,
            "the first (empty) list completes the kind"
        );
        assert_eq!(s.readiness(), Readiness::WaitingForLists);
        s.node_event(Event::Init);
        s.node_event(Event::InitApply(node("other")));
        assert!(s.node_event(Event::InitDone).changed);
        assert_eq!(s.node, NodeCheck::Missing);
        assert_eq!(s.readiness(), Readiness::NodeUnverified);
        assert!(s.node_event(Event::Apply(node("node-1"))).changed);
        assert_eq!(s.readiness(), Readiness::Ready);
        assert!(s.node_event(Event::Delete(node("node-1"))).changed);
        assert_eq!(s.readiness(), Readiness::NodeUnverified);
        // The static source never blocks on the Node.
        let st = SourceState::from_static("node-1", Snapshot::default());
        assert_eq!(
            (st.readiness(), st.node),
            (Readiness::Ready, NodeCheck::Missing)
        );
    }

    #[test]
    fn relist_replaces_state_and_deletes_what_was_not_relisted() {
        let mut s = SourceState::new("node-1", true);
        s.service_event(Event::Init);
        s.service_event(Event::InitApply(svc("a", "10.96.0.1")));
        s.service_event(Event::InitApply(svc("b", "10.96.0.2")));
        s.service_event(Event::InitDone);
        s.slice_event(Event::Init);
        s.slice_event(Event::InitApply(slice("a-1", "a", "10.244.0.1", "node-1")));
        s.slice_event(Event::InitApply(slice("b-1", "b", "10.244.0.2", "node-1")));
        s.slice_event(Event::InitDone);
        // 410 Gone: the watcher re-lists; b and its slice disappeared meanwhile.
        s.service_event(Event::Init);
        s.service_event(Event::InitApply(svc("a", "10.96.0.1")));
        assert_eq!(
            s.snapshot.services.len(),
            2,
            "old state is served until the re-list is complete"
        );
        assert!(s.service_event(Event::InitDone).changed);
        assert_eq!(
            s.snapshot
                .services
                .keys()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>(),
            vec!["a"]
        );
        s.slice_event(Event::Init);
        s.slice_event(Event::InitApply(slice("a-1", "a", "10.244.0.1", "node-1")));
        assert!(s.slice_event(Event::InitDone).changed);
        assert_eq!(s.snapshot.slices.len(), 1);
        assert_eq!(
            s.snapshot.slice_owners.keys().collect::<Vec<_>>(),
            [&("ns".to_string(), "a-1".to_string())],
            "the slice that was not re-listed has no owner entry left"
        );
        // An identical re-list changes nothing.
        s.slice_event(Event::Init);
        s.slice_event(Event::InitApply(slice("a-1", "a", "10.244.0.1", "node-1")));
        assert!(!s.slice_event(Event::InitDone).changed);
    }

    #[test]
    fn no_op_updates_do_not_wake_and_bad_objects_are_skipped_and_removed() {
        let mut s = SourceState::new("node-1", true);
        assert!(s.service_event(Event::Apply(svc("a", "10.96.0.1"))).changed);
        assert!(!s.service_event(Event::Apply(svc("a", "10.96.0.1"))).changed);
        let bad = s.service_event(Event::Apply(svc("a", "10.96.0.300")));
        assert!(bad.changed, "a Service that became malformed is removed");
        assert!(matches!(bad.skipped[0].1, Skip::Malformed(_)));
        assert!(s.snapshot.services.is_empty());
        assert!(
            s.slice_event(Event::Apply(slice("x", "a", "10.244.0.1", "n")))
                .changed
        );
        assert!(
            !s.slice_event(Event::Apply(slice("x", "a", "10.244.0.1", "n")))
                .changed
        );
        assert!(
            s.slice_event(Event::Apply(slice("x", "a", "10.244.0.9", "n")))
                .changed
        );
        assert!(
            s.slice_event(Event::Delete(slice("x", "a", "10.244.0.9", "n")))
                .changed
        );
        assert!(s.snapshot.slices.is_empty());
    }
}
