//! The snapshot: every Service and EndpointSlice the proxy knows, plus its own Node.
//!
//! It is a plain value with `apply`/`delete` style updates, shared by `knat render` (built from
//! files) and the agent (built from watch events). Compilation reads it and nothing else.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::types::*;

/// The slices of one Service, in slice-name order. A sorted vector rather than a map: most
/// Services have one slice, and a `BTreeMap` allocates a node for eleven (about 1.7 KB per
/// Service, 17 MB at 10,000 services).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceSlices(Vec<EndpointSlice>);

impl ServiceSlices {
    /// Inserts or replaces the slice of the same name.
    pub fn insert(&mut self, slice: EndpointSlice) {
        match self
            .0
            .binary_search_by(|s| s.slice_name.as_str().cmp(&slice.slice_name))
        {
            Ok(i) => self.0[i] = slice,
            Err(i) => self.0.insert(i, slice),
        }
    }

    /// Removes the slice named `name`.
    pub fn remove(&mut self, name: &str) -> Option<EndpointSlice> {
        let i = self
            .0
            .binary_search_by(|s| s.slice_name.as_str().cmp(name))
            .ok()?;
        let removed = self.0.remove(i);
        self.0.shrink_to_fit();
        Some(removed)
    }

    /// The slice named `name`.
    pub fn get(&self, name: &str) -> Option<&EndpointSlice> {
        let i = self
            .0
            .binary_search_by(|s| s.slice_name.as_str().cmp(name))
            .ok()?;
        self.0.get(i)
    }

    /// The slices in name order.
    pub fn values(&self) -> std::slice::Iter<'_, EndpointSlice> {
        self.0.iter()
    }

    /// The slices in name order, mutable (the name must not change).
    pub fn values_mut(&mut self) -> std::slice::IterMut<'_, EndpointSlice> {
        self.0.iter_mut()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Everything compilation needs to know about the cluster. Services and each Service's slices
/// are shared (`Arc`): cloning a snapshot copies pointers, not objects, and the incremental
/// compiler recognises an unchanged Service by pointer.
///
/// The maps are private: every change goes through a method that also notes the Service it
/// touched in the snapshot's [`Journal`], so a compiler can ask which Services changed since
/// it last compiled instead of walking them all.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    services: BTreeMap<ServiceName, Arc<Service>>,
    /// EndpointSlices grouped by the Service they belong to, keyed by slice name.
    slices: BTreeMap<ServiceName, Arc<ServiceSlices>>,
    /// This proxy's own Node, when it is known (not journaled: compilers compare what they
    /// use of it on every call).
    pub node: Option<NodeInfo>,
    /// Which Service each slice (namespace, slice name) was filed under.
    slice_owners: BTreeMap<(String, String), ServiceName>,
    /// [`Snapshot::endpoint_count`], kept up to date by every slice change.
    endpoints: usize,
    journal: Journal,
}

/// Equal contents; the journal is history, not content.
impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.services == other.services
            && self.slices == other.slices
            && self.node == other.node
            && self.slice_owners == other.slice_owners
    }
}

impl Eq for Snapshot {}

/// Endpoints of one Service's slices as upstream counts them (once per port).
fn slices_endpoints(slices: &ServiceSlices) -> usize {
    slices
        .values()
        .map(|s| s.endpoints.len() * s.ports.len().max(1))
        .sum()
}

impl Snapshot {
    /// Every Service, in name order.
    pub fn services(&self) -> &BTreeMap<ServiceName, Arc<Service>> {
        &self.services
    }

    /// One Service.
    pub fn service(&self, name: &ServiceName) -> Option<&Arc<Service>> {
        self.services.get(name)
    }

    /// Every Service's slices (also of names without a Service), in Service-name order.
    pub fn slices(&self) -> &BTreeMap<ServiceName, Arc<ServiceSlices>> {
        &self.slices
    }

    /// The slices filed under `service`, shared.
    pub fn service_slices(&self, service: &ServiceName) -> Option<&Arc<ServiceSlices>> {
        self.slices.get(service)
    }

    /// Which Service each slice (namespace, slice name) is filed under.
    pub fn slice_owners(&self) -> &BTreeMap<(String, String), ServiceName> {
        &self.slice_owners
    }

    /// The slice `name` of `namespace`, found through its owner.
    pub fn find_slice(&self, namespace: &str, name: &str) -> Option<&EndpointSlice> {
        let owner = self
            .slice_owners
            .get(&(namespace.to_string(), name.to_string()))?;
        self.slices.get(owner)?.get(name)
    }

    /// Which Services changed when, for compilers (see [`Journal`]).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Inserts or replaces a Service.
    pub fn upsert_service(&mut self, service: Service) {
        self.journal.record(service.name.clone());
        self.services
            .insert(service.name.clone(), Arc::new(service));
    }

    /// Removes a Service; its slices stay until they are deleted themselves, as upstream.
    pub fn remove_service(&mut self, name: &ServiceName) -> Option<Arc<Service>> {
        let removed = self.services.remove(name)?;
        self.journal.record(name.clone());
        Some(removed)
    }

    /// Replaces every Service (a re-list); returns whether any changed. Unchanged Services
    /// should keep their shared object (the compiler recognises them by pointer); only
    /// Services that differ are journaled.
    pub fn replace_services(&mut self, fresh: BTreeMap<ServiceName, Arc<Service>>) -> bool {
        let old = std::mem::replace(&mut self.services, fresh);
        let mut changed = false;
        for (name, service) in &self.services {
            if !old
                .get(name)
                .is_some_and(|o| Arc::ptr_eq(o, service) || o == service)
            {
                self.journal.record(name.clone());
                changed = true;
            }
        }
        for name in old.keys().filter(|n| !self.services.contains_key(*n)) {
            self.journal.record(name.clone());
            changed = true;
        }
        changed
    }

    /// Inserts or replaces a slice. A slice that moved to another Service is removed from the
    /// old one first.
    pub fn upsert_slice(&mut self, namespace: &str, slice: EndpointSlice) {
        self.remove_slice(namespace, &slice.slice_name);
        self.slice_owners.insert(
            (namespace.to_string(), slice.slice_name.clone()),
            slice.service.clone(),
        );
        self.journal.record(slice.service.clone());
        self.endpoints += slice.endpoints.len() * slice.ports.len().max(1);
        Arc::make_mut(self.slices.entry(slice.service.clone()).or_default()).insert(slice);
    }

    /// Removes a slice by namespace and name; returns the Service it belonged to.
    pub fn remove_slice(&mut self, namespace: &str, slice_name: &str) -> Option<ServiceName> {
        let owner = self
            .slice_owners
            .remove(&(namespace.to_string(), slice_name.to_string()))?;
        self.journal.record(owner.clone());
        if let Some(slices) = self.slices.get_mut(&owner) {
            if let Some(removed) = Arc::make_mut(slices).remove(slice_name) {
                self.endpoints -= removed.endpoints.len() * removed.ports.len().max(1);
            }
            if slices.is_empty() {
                self.slices.remove(&owner);
            }
        }
        Some(owner)
    }

    /// Replaces every slice (a re-list); returns whether any Service's slices changed. A
    /// Service whose slices are equal keeps its shared set, and only Services whose slices
    /// differ are journaled.
    pub fn replace_slices(
        &mut self,
        fresh: impl IntoIterator<Item = (String, EndpointSlice)>,
    ) -> bool {
        let old = std::mem::take(&mut self.slices);
        self.slice_owners.clear();
        self.endpoints = 0;
        let mut slices: BTreeMap<ServiceName, ServiceSlices> = BTreeMap::new();
        for (namespace, slice) in fresh {
            // A slice listed twice under one key keeps the last, as `upsert_slice` does.
            let key = (namespace, slice.slice_name.clone());
            if let Some(previous) = self.slice_owners.insert(key, slice.service.clone())
                && let Some(set) = slices.get_mut(&previous)
            {
                set.remove(&slice.slice_name);
            }
            slices
                .entry(slice.service.clone())
                .or_default()
                .insert(slice);
        }
        let mut changed = false;
        for (name, set) in slices {
            if set.is_empty() {
                continue;
            }
            self.endpoints += slices_endpoints(&set);
            let shared = match old.get(&name) {
                Some(before) if **before == set => before.clone(),
                _ => {
                    self.journal.record(name.clone());
                    changed = true;
                    Arc::new(set)
                }
            };
            self.slices.insert(name, shared);
        }
        for name in old.keys().filter(|n| !self.slices.contains_key(*n)) {
            self.journal.record(name.clone());
            changed = true;
        }
        changed
    }

    /// The slices of one Service.
    pub fn slices_of(&self, service: &ServiceName) -> impl Iterator<Item = &EndpointSlice> {
        self.slices
            .get(service)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Total number of endpoints over all service ports, as upstream counts for its
    /// large-cluster mode (every endpoint, ready or not, once per port it serves).
    pub fn endpoint_count(&self) -> usize {
        self.endpoints
    }
}

/// Journal entries kept; past this many the older half is dropped, and a compiler whose last
/// look is older than what is left walks every Service instead.
const JOURNAL_CAPACITY: usize = 4096;

/// A point in a snapshot's history (what a compiler saw last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalMark(u64);

/// Which Service each change of a snapshot touched, newest first: a persistent list shared by
/// every clone of the snapshot (cloning and appending cost O(1)). Every entry carries a number
/// unique in the process, so a mark from another snapshot's history (or one older than the
/// journal keeps) is recognised as such, never misread.
#[derive(Clone)]
pub struct Journal {
    newest: Option<Arc<JournalEntry>>,
    /// The mark of the state before the oldest entry kept.
    base: u64,
    len: usize,
}

struct JournalEntry {
    seq: u64,
    service: ServiceName,
    older: Option<Arc<JournalEntry>>,
}

/// Dropped one entry at a time: a long list dropped recursively would overflow the stack.
impl Drop for JournalEntry {
    fn drop(&mut self) {
        let mut next = self.older.take();
        while let Some(entry) = next {
            match Arc::try_unwrap(entry) {
                Ok(mut entry) => next = entry.older.take(),
                Err(_) => break,
            }
        }
    }
}

fn next_seq() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            newest: None,
            base: next_seq(),
            len: 0,
        }
    }
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("mark", &self.mark())
            .field("entries", &self.len)
            .finish()
    }
}

impl Journal {
    /// The current point in the history.
    pub fn mark(&self) -> JournalMark {
        JournalMark(self.newest.as_ref().map_or(self.base, |e| e.seq))
    }

    /// Notes a change to `service`.
    fn record(&mut self, service: ServiceName) {
        self.newest = Some(Arc::new(JournalEntry {
            seq: next_seq(),
            service,
            older: self.newest.take(),
        }));
        self.len += 1;
        if self.len > JOURNAL_CAPACITY {
            self.keep_newest(JOURNAL_CAPACITY / 2);
        }
    }

    /// Keeps only the newest `keep` entries (copied, so that clones keep theirs).
    fn keep_newest(&mut self, keep: usize) {
        let mut kept = Vec::with_capacity(keep);
        let mut cursor = self.newest.as_deref();
        while let Some(entry) = cursor.filter(|_| kept.len() < keep) {
            kept.push((entry.seq, entry.service.clone()));
            cursor = entry.older.as_deref();
        }
        if let Some(newest_dropped) = cursor {
            self.base = newest_dropped.seq;
        }
        self.len = kept.len();
        self.newest = None;
        for (seq, service) in kept.into_iter().rev() {
            self.newest = Some(Arc::new(JournalEntry {
                seq,
                service,
                older: self.newest.take(),
            }));
        }
    }

    /// The Services changed after `mark` (sorted, each once), or `None` when `mark` is not a
    /// point of this history (another snapshot's, or older than the entries kept).
    pub fn changed_since(&self, mark: JournalMark) -> Option<Vec<ServiceName>> {
        let mut names = Vec::new();
        let mut cursor = self.newest.as_deref();
        loop {
            match cursor {
                Some(entry) if entry.seq == mark.0 => break,
                Some(entry) if entry.seq < mark.0 => return None,
                Some(entry) => {
                    names.push(entry.service.clone());
                    cursor = entry.older.as_deref();
                }
                None if self.base == mark.0 => break,
                None => return None,
            }
        }
        names.sort_unstable();
        names.dedup();
        Some(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, ip: u8) -> EndpointSlice {
        EndpointSlice {
            slice_name: name.into(),
            service: ServiceName::new("ns", "svc"),
            family: IpFamily::V4,
            ports: Vec::new(),
            endpoints: vec![Endpoint {
                ip: std::net::IpAddr::from([10, 0, 0, ip]),
                ready: true,
                serving: true,
                terminating: false,
                node_name: None,
                topology: None,
            }],
        }
    }

    #[test]
    fn service_slices_stay_in_name_order_and_replace_by_name() {
        let mut slices = ServiceSlices::default();
        slices.insert(slice("b", 1));
        slices.insert(slice("a", 2));
        slices.insert(slice("c", 3));
        slices.insert(slice("b", 4));
        let names: Vec<&str> = slices.values().map(|s| s.slice_name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(
            slices
                .get("b")
                .map(|s| s.endpoints[0].ip.to_string())
                .as_deref(),
            Some("10.0.0.4")
        );
        assert_eq!(
            slices.remove("a").map(|s| s.slice_name),
            Some("a".to_string())
        );
        assert!(slices.remove("a").is_none());
        assert_eq!(slices.len(), 2);
        assert!(slices.get("x").is_none());
    }

    fn service(name: &str) -> Service {
        Service {
            name: ServiceName::new("ns", name),
            service_type: ServiceType::ClusterIp,
            cluster_ips: vec![std::net::IpAddr::from([10, 96, 0, 1])],
            ports: Vec::new(),
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            source_ranges: Vec::new(),
            external_policy_local: false,
            internal_policy_local: false,
            session_affinity_timeout: None,
            health_check_node_port: None,
            uid: None,
        }
    }

    #[test]
    fn the_journal_names_what_changed_since_a_mark_of_its_own_history_only() {
        let mut snap = Snapshot::default();
        let start = snap.journal().mark();
        assert_eq!(snap.journal().changed_since(start), Some(Vec::new()));
        snap.upsert_service(service("svc"));
        snap.upsert_slice("ns", slice("a", 1));
        snap.upsert_service(service("other"));
        let names = |v: Option<Vec<ServiceName>>| {
            v.map(|v| v.into_iter().map(|n| n.name).collect::<Vec<_>>())
        };
        assert_eq!(
            names(snap.journal().changed_since(start)),
            Some(vec!["other".to_string(), "svc".to_string()])
        );
        let mid = snap.journal().mark();
        assert_eq!(snap.endpoint_count(), 1);
        // Two clones diverge: each one's marks mean nothing to the other.
        let mut left = snap.clone();
        let mut right = snap.clone();
        left.remove_slice("ns", "a");
        right.remove_service(&ServiceName::new("ns", "other"));
        assert_eq!(left.endpoint_count(), 0);
        assert_eq!(
            names(left.journal().changed_since(mid)),
            Some(vec!["svc".to_string()])
        );
        assert_eq!(
            names(right.journal().changed_since(mid)),
            Some(vec!["other".to_string()])
        );
        assert_eq!(right.journal().changed_since(left.journal().mark()), None);
        assert_eq!(left.journal().changed_since(right.journal().mark()), None);
        assert_eq!(Snapshot::default().journal().changed_since(mid), None);
        // Removing what is not there journals nothing.
        let before = left.journal().mark();
        assert!(left.remove_slice("ns", "a").is_none());
        assert!(
            left.remove_service(&ServiceName::new("ns", "none"))
                .is_none()
        );
        assert_eq!(left.journal().mark(), before);
        // Past its capacity the journal forgets old marks, never recent ones.
        for i in 0..JOURNAL_CAPACITY {
            left.upsert_slice("ns", slice("b", (i % 200) as u8));
        }
        let recent = left.journal().mark();
        left.upsert_service(service("late"));
        assert_eq!(left.journal().changed_since(mid), None);
        assert_eq!(
            names(left.journal().changed_since(recent)),
            Some(vec!["late".to_string()])
        );
        assert!(left.journal().len <= JOURNAL_CAPACITY);
        // The clone taken before keeps its own history.
        assert_eq!(names(snap.journal().changed_since(mid)), Some(Vec::new()));
    }

    #[test]
    fn a_relist_journals_only_what_differs_and_keeps_shared_sets() {
        let mut snap = Snapshot::default();
        snap.upsert_service(service("svc"));
        snap.upsert_slice("ns", slice("a", 1));
        let shared = snap.service_slices(&ServiceName::new("ns", "svc")).cloned();
        let mark = snap.journal().mark();
        let services = snap.services().clone();
        assert!(!snap.replace_services(services));
        assert!(!snap.replace_slices([("ns".to_string(), slice("a", 1))]));
        assert_eq!(snap.journal().changed_since(mark), Some(Vec::new()));
        assert!(std::sync::Arc::ptr_eq(
            shared.as_ref().expect("slices"),
            snap.service_slices(&ServiceName::new("ns", "svc"))
                .expect("slices")
        ));
        assert!(snap.replace_slices([
            ("ns".to_string(), slice("a", 2)),
            ("ns".to_string(), slice("b", 3))
        ]));
        assert_eq!(snap.endpoint_count(), 2);
        assert_eq!(snap.journal().changed_since(mark).map(|v| v.len()), Some(1));
        assert!(snap.replace_slices(std::iter::empty()));
        assert_eq!(snap.endpoint_count(), 0);
        assert!(snap.slices().is_empty() && snap.slice_owners().is_empty());
    }
}
