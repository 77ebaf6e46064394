//! Compiling many Services on several threads (each fragment depends only on its Service).

use std::sync::Arc;

use super::fragment::Fragment;
use super::service::ServiceCompiler;
use crate::model::categorize::NodeTopology;
use crate::model::snapshot::ServiceSlices;
use crate::model::{Service, Snapshot};

/// Below this many Services to compile, one thread does it (spawning costs more).
pub(super) const PARALLEL_THRESHOLD: usize = 512;

/// One compiled Service: its fragment, and the slices it was compiled from (looked up on the
/// compiling thread, so the caller's serial part only files them).
pub(super) struct CompiledService {
    pub(super) fragment: Arc<Fragment>,
    pub(super) slices: Option<Arc<ServiceSlices>>,
}

/// Compiles every Service of `services`, in order, on up to `threads` threads (each Service's
/// fragment depends only on that Service and its slices).
pub(super) fn compile_services(
    worker: &ServiceCompiler<'_>,
    snapshot: &Snapshot,
    topology: NodeTopology<'_>,
    services: &[&Arc<Service>],
    threads: usize,
) -> Vec<CompiledService> {
    let compile_chunk = |chunk: &[&Arc<Service>]| {
        let mut worker = worker.clone();
        chunk
            .iter()
            .map(|service| CompiledService {
                fragment: Arc::new(worker.compile(snapshot, service, topology)),
                slices: snapshot.service_slices(&service.name).cloned(),
            })
            .collect::<Vec<_>>()
    };
    if threads == 1 || services.len() < PARALLEL_THRESHOLD {
        return compile_chunk(services);
    }
    let chunk_size = services.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = services
            .chunks(chunk_size)
            .map(|chunk| scope.spawn(move || compile_chunk(chunk)))
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| match handle.join() {
                Ok(fragments) => fragments,
                Err(panic) => std::panic::resume_unwind(panic),
            })
            .collect()
    })
}
