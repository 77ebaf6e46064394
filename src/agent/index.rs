//! The index: what the sources (API watchers or files) know, as one plain value.
//!
//! [`SourceState`] holds the [`Snapshot`] the compiler reads plus the bookkeeping the sync loop
//! needs to decide whether it may write at all: which kinds have completed their initial
//! list, and whether the Node named like this proxy exists. Watch events are applied with
//! [`SourceState::service_event`], [`SourceState::slice_event`] and
//! [`SourceState::node_event`], which convert objects at the boundary and report whether the
//! published state changed, so no-op updates do not wake the sync loop. A re-list (after a
//! watch error such as 410 Gone) is buffered from `Init` to `InitDone` and then replaces the
//! kind's state: whatever was not re-listed is deleted. Each kind says how it is keyed,
//! converted and stored (`Kind`); one generic `SourceState::apply` and one `Relist`
//! buffer serve all three.
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

/// The result of applying one watch event to the index (not to be confused with
/// `rules::plan::AppliedState`, what the kernel holds).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventOutcome {
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
    relist_services: Relist<ServiceName, Service>,
    relist_slices: Relist<(String, String), EndpointSlice>,
    relist_node: Relist<(), NodeInfo>,
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
            relist_services: Relist::default(),
            relist_slices: Relist::default(),
            relist_node: Relist::default(),
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
    pub fn service_event(&mut self, event: Event<K8sService>) -> EventOutcome {
        self.apply::<Services>(event)
    }

    /// Applies an EndpointSlice watch event.
    pub fn slice_event(&mut self, event: Event<K8sEndpointSlice>) -> EventOutcome {
        self.apply::<Slices>(event)
    }

    /// Applies an event of the own-Node watcher (field selector `metadata.name=<node>`).
    /// Nodes with another name are ignored (defensive; the selector excludes them).
    pub fn node_event(&mut self, event: Event<K8sNode>) -> EventOutcome {
        self.apply::<OwnNode>(event)
    }

    /// One watch event of any kind: the single place where `Apply`, `Delete` and a re-list
    /// (`Init`, `InitApply`, `InitDone`) are told apart, as kube-runtime's
    /// `Writer::apply_watcher_event` does for its store.
    fn apply<K: Kind>(&mut self, event: Event<K::Object>) -> EventOutcome {
        let mut applied = EventOutcome::default();
        let mut convert = |obj: &K::Object| match K::convert(obj) {
            Ok(value) => Some(value),
            Err(skip) => {
                applied.skipped.push((K::describe(obj), skip));
                None
            }
        };
        let changed = match event {
            Event::Apply(obj) if K::relevant(self, &obj) => match convert(&obj) {
                Some(value) => K::upsert(self, K::key(&obj), value, &obj),
                None if K::INVALID_REMOVES => K::remove(self, &K::key(&obj)),
                None => false,
            },
            Event::Delete(obj) if K::relevant(self, &obj) => K::remove(self, &K::key(&obj)),
            Event::Apply(_) | Event::Delete(_) => false,
            Event::Init => {
                K::relist(self).start();
                false
            }
            Event::InitApply(obj) => {
                if K::relevant(self, &obj)
                    && let Some(value) = convert(&obj)
                {
                    K::relist(self).add(K::key(&obj), value);
                }
                false
            }
            Event::InitDone => {
                let fresh = K::relist(self).finish();
                let first = !std::mem::replace(K::listed(self), true);
                K::replace(self, fresh) || first
            }
        };
        applied.changed = changed;
        applied
    }

    /// The slice (namespace, name) as the snapshot holds it, found through its owner.
    fn find_slice(&self, key: &(String, String)) -> Option<&EndpointSlice> {
        self.snapshot.find_slice(&key.0, &key.1)
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
}

/// The objects of one kind listed again since `Init`, held until `InitDone` replaces the
/// kind's state with them (one buffer type for every kind).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Relist<Key, Value> {
    buffer: Option<BTreeMap<Key, Value>>,
}

impl<Key: Ord, Value> Default for Relist<Key, Value> {
    fn default() -> Self {
        Relist { buffer: None }
    }
}

impl<Key: Ord, Value> Relist<Key, Value> {
    fn start(&mut self) {
        self.buffer = Some(BTreeMap::new());
    }

    fn add(&mut self, key: Key, value: Value) {
        self.buffer.get_or_insert_default().insert(key, value);
    }

    fn finish(&mut self) -> BTreeMap<Key, Value> {
        self.buffer.take().unwrap_or_default()
    }
}

/// What [`SourceState::apply`] needs to know of one watched kind: how its objects are keyed and
/// converted, and how the snapshot takes one object or a whole re-list.
trait Kind {
    type Object;
    type Key: Ord;
    type Value;
    /// An object that fails conversion deletes what was there (Services, slices: upstream
    /// skips them); the own Node keeps its last good state instead.
    const INVALID_REMOVES: bool;
    fn key(obj: &Self::Object) -> Self::Key;
    fn describe(obj: &Self::Object) -> String;
    fn convert(obj: &Self::Object) -> Result<Self::Value, Skip>;
    fn relevant(_state: &SourceState, _obj: &Self::Object) -> bool {
        true
    }
    fn relist(state: &mut SourceState) -> &mut Relist<Self::Key, Self::Value>;
    fn listed(state: &mut SourceState) -> &mut bool;
    /// Takes one object; true when the published state changed.
    fn upsert(
        state: &mut SourceState,
        key: Self::Key,
        value: Self::Value,
        obj: &Self::Object,
    ) -> bool;
    /// Deletes one object; true when the published state changed.
    fn remove(state: &mut SourceState, key: &Self::Key) -> bool;
    /// Replaces the kind's state with a completed re-list; true when it changed.
    fn replace(state: &mut SourceState, fresh: BTreeMap<Self::Key, Self::Value>) -> bool;
}

struct Services;

impl Kind for Services {
    type Object = K8sService;
    type Key = ServiceName;
    type Value = Service;
    const INVALID_REMOVES: bool = true;

    fn key(obj: &K8sService) -> ServiceName {
        let (ns, name) = key_of(&obj.metadata);
        ServiceName::new(ns, name)
    }

    fn describe(obj: &K8sService) -> String {
        let (ns, name) = key_of(&obj.metadata);
        format!("Service {ns}/{name}")
    }

    fn convert(obj: &K8sService) -> Result<Service, Skip> {
        convert::service(obj)
    }

    fn relist(state: &mut SourceState) -> &mut Relist<ServiceName, Service> {
        &mut state.relist_services
    }

    fn listed(state: &mut SourceState) -> &mut bool {
        &mut state.listed.services
    }

    fn upsert(state: &mut SourceState, key: ServiceName, value: Service, _: &K8sService) -> bool {
        if state.snapshot.service(&key).map(|old| &**old) == Some(&value) {
            return false;
        }
        state.snapshot.upsert_service(value);
        true
    }

    fn remove(state: &mut SourceState, key: &ServiceName) -> bool {
        state.snapshot.remove_service(key).is_some()
    }

    fn replace(state: &mut SourceState, fresh: BTreeMap<ServiceName, Service>) -> bool {
        // Unchanged Services keep their shared object, so the compiler reuses them.
        let fresh: BTreeMap<ServiceName, Arc<Service>> = fresh
            .into_iter()
            .map(|(name, svc)| {
                let shared = match state.snapshot.service(&name) {
                    Some(old) if **old == svc => old.clone(),
                    _ => Arc::new(svc),
                };
                (name, shared)
            })
            .collect();
        state.snapshot.replace_services(fresh)
    }
}

struct Slices;

impl Kind for Slices {
    type Object = K8sEndpointSlice;
    type Key = (String, String);
    type Value = EndpointSlice;
    const INVALID_REMOVES: bool = true;

    fn key(obj: &K8sEndpointSlice) -> (String, String) {
        key_of(&obj.metadata)
    }

    fn describe(obj: &K8sEndpointSlice) -> String {
        let (ns, name) = key_of(&obj.metadata);
        format!("EndpointSlice {ns}/{name}")
    }

    fn convert(obj: &K8sEndpointSlice) -> Result<EndpointSlice, Skip> {
        convert::endpoint_slice(obj)
    }

    fn relist(state: &mut SourceState) -> &mut Relist<(String, String), EndpointSlice> {
        &mut state.relist_slices
    }

    fn listed(state: &mut SourceState) -> &mut bool {
        &mut state.listed.slices
    }

    fn upsert(
        state: &mut SourceState,
        key: (String, String),
        value: EndpointSlice,
        obj: &K8sEndpointSlice,
    ) -> bool {
        if state.find_slice(&key) == Some(&value) {
            return false;
        }
        state.snapshot.upsert_slice(&key.0, value);
        state.record_trigger(obj);
        true
    }

    fn remove(state: &mut SourceState, (ns, name): &(String, String)) -> bool {
        state.snapshot.remove_slice(ns, name).is_some()
    }

    fn replace(state: &mut SourceState, fresh: BTreeMap<(String, String), EndpointSlice>) -> bool {
        // Owners are rebuilt with the slices (slices deleted meanwhile leave none).
        state
            .snapshot
            .replace_slices(fresh.into_iter().map(|((ns, _), slice)| (ns, slice)))
    }
}

/// The Node named like this proxy (the watch's field selector shows no other).
struct OwnNode;

impl Kind for OwnNode {
    type Object = K8sNode;
    type Key = ();
    type Value = NodeInfo;
    const INVALID_REMOVES: bool = false;

    fn key(_: &K8sNode) {}

    fn describe(obj: &K8sNode) -> String {
        format!("Node {}", obj.metadata.name.as_deref().unwrap_or("?"))
    }

    fn convert(obj: &K8sNode) -> Result<NodeInfo, Skip> {
        convert::node(obj)
    }

    fn relevant(state: &SourceState, obj: &K8sNode) -> bool {
        obj.metadata.name.as_deref() == Some(state.node_name.as_str())
    }

    fn relist(state: &mut SourceState) -> &mut Relist<(), NodeInfo> {
        &mut state.relist_node
    }

    fn listed(state: &mut SourceState) -> &mut bool {
        &mut state.listed.node
    }

    fn upsert(state: &mut SourceState, (): (), value: NodeInfo, _: &K8sNode) -> bool {
        state.set_node(Some(value))
    }

    fn remove(state: &mut SourceState, (): &()) -> bool {
        state.set_node(None)
    }

    fn replace(state: &mut SourceState, mut fresh: BTreeMap<(), NodeInfo>) -> bool {
        state.set_node(fresh.remove(&()))
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
        assert!(s.snapshot.services().is_empty(), "buffered until InitDone");
        assert!(s.service_event(Event::InitDone).changed);
        assert_eq!(s.snapshot.services().len(), 1);
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
            s.snapshot.services().len(),
            2,
            "old state is served until the re-list is complete"
        );
        assert!(s.service_event(Event::InitDone).changed);
        assert_eq!(
            s.snapshot
                .services()
                .keys()
                .map(|k| k.name.as_str())
                .collect::<Vec<_>>(),
            vec!["a"]
        );
        s.slice_event(Event::Init);
        s.slice_event(Event::InitApply(slice("a-1", "a", "10.244.0.1", "node-1")));
        assert!(s.slice_event(Event::InitDone).changed);
        assert_eq!(s.snapshot.slices().len(), 1);
        assert_eq!(
            s.snapshot.slice_owners().keys().collect::<Vec<_>>(),
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
        assert!(s.snapshot.services().is_empty());
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
        assert!(s.snapshot.slices().is_empty());
    }
}
