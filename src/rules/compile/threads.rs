//! Compiling many Services on several threads (each fragment depends only on its Service).

use std::sync::Arc;

use super::fragment::Fragment;
use super::service::ServiceCompiler;
use crate::model::categorize::NodeTopology;
use crate::model::{Service, Snapshot};

/// Below this many Services to compile, one thread does it (spawning costs more).
pub(super) const PARALLEL_THRESHOLD: usize = 512;

/// Compiles `services[i]` for every `i` in `todo`, in order, on up to as many threads as
/// there are CPUs (each Service's fragment depends only on that Service and its slices).
pub(super) fn compile_services(
    worker: &ServiceCompiler<'_>,
    snapshot: &Snapshot,
    topology: NodeTopology<'_>,
    services: &[&Arc<Service>],
    todo: &[usize],
    threads: usize,
) -> Vec<Fragment> {
    let compile_chunk = |chunk: &[usize]| {
        let mut worker = worker.clone();
        chunk
            .iter()
            .map(|&i| worker.compile(snapshot, services[i], topology))
            .collect::<Vec<_>>()
    };
    if threads == 1 || todo.len() < PARALLEL_THRESHOLD {
        return compile_chunk(todo);
    }
    let chunk_size = todo.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = todo
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
