//! The snapshot: every Service and EndpointSlice the proxy knows, plus its own Node.
//!
//! It is a plain value with `apply`/`delete` style updates, shared by `knat render` (built from
//! files) and the agent (built from watch events). Compilation reads it and nothing else.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::types::*;

/// The slices of one Service, keyed by slice name.
pub type ServiceSlices = BTreeMap<String, EndpointSlice>;

/// Everything compilation needs to know about the cluster. Services and each Service's slices
/// are shared (`Arc`): cloning a snapshot copies pointers, not objects, and the incremental
/// compiler recognises an unchanged Service by pointer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub services: BTreeMap<ServiceName, Arc<Service>>,
    /// EndpointSlices grouped by the Service they belong to, keyed by slice name.
    pub slices: BTreeMap<ServiceName, Arc<ServiceSlices>>,
    /// This proxy's own Node, when it is known.
    pub node: Option<NodeInfo>,
    /// Which Service each slice (namespace, slice name) was filed under. Kept by
    /// `upsert_slice`/`remove_slice`; mutate `slices` through those methods.
    pub slice_owners: BTreeMap<(String, String), ServiceName>,
}

impl Snapshot {
    /// Inserts or replaces a Service.
    pub fn upsert_service(&mut self, service: Service) {
        self.services
            .insert(service.name.clone(), Arc::new(service));
    }

    /// Removes a Service; its slices stay until they are deleted themselves, as upstream.
    pub fn remove_service(&mut self, name: &ServiceName) -> Option<Arc<Service>> {
        self.services.remove(name)
    }

    /// Inserts or replaces a slice. A slice that moved to another Service is removed from the
    /// old one first.
    pub fn upsert_slice(&mut self, namespace: &str, slice: EndpointSlice) {
        self.remove_slice(namespace, &slice.slice_name);
        self.slice_owners.insert(
            (namespace.to_string(), slice.slice_name.clone()),
            slice.service.clone(),
        );
        Arc::make_mut(self.slices.entry(slice.service.clone()).or_default())
            .insert(slice.slice_name.clone(), slice);
    }

    /// Removes a slice by namespace and name; returns the Service it belonged to.
    pub fn remove_slice(&mut self, namespace: &str, slice_name: &str) -> Option<ServiceName> {
        let owner = self
            .slice_owners
            .remove(&(namespace.to_string(), slice_name.to_string()))?;
        if let Some(slices) = self.slices.get_mut(&owner) {
            Arc::make_mut(slices).remove(slice_name);
            if slices.is_empty() {
                self.slices.remove(&owner);
            }
        }
        Some(owner)
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
        self.slices
            .values()
            .flat_map(|m| m.values())
            .map(|s| s.endpoints.len() * s.ports.len().max(1))
            .sum()
    }
}
