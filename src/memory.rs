//! Returning freed memory to the system: at once, and from idle worker threads.
//!
//! The knat binary allocates with mimalloc, which by default keeps freed pages for a delay
//! (1 s in this build) and returns them only when the thread that freed them allocates again. An
//! agent that goes idle after a full sync therefore kept the garbage of that sync resident (the
//! 33 MB payload, the compile threads' scratch, the initial lists' decoded objects): 249 MiB
//! three seconds after programming 10,000 services, against 166 MiB once later syncs had
//! touched the heaps again (cluster benchmark). Purging at once brought the first figure to 187
//! MiB; the price is about 15 ms more for a cold compile of 10,000 services (render benchmark).
//! Collecting after the sync instead (`mi_collect`, right away, 500 ms or 2 s later) changed
//! nothing on its own: it collects only the calling thread's heap. What did help, once the
//! agent kept far less data: every runtime worker collects its own heap when it goes idle
//! ([`collect_idle_thread`]), so pages that other threads freed into it are returned (103 ->
//! about 80 MiB at 10,000 services, cluster benchmark).

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_t` of mimalloc v3; the Rust
/// binding does not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// Its default in the mimalloc v3 that libmimalloc-sys builds (`MIMALLOC_VERBOSE=1` prints it),
/// used to check that the position is right before changing it.
const PURGE_DELAY_DEFAULT_MS: std::os::raw::c_long = 1000;

/// Makes mimalloc return freed pages to the system immediately. Returns false (and changes
/// nothing) if the option is not where it is expected or was set from the environment
/// (`MIMALLOC_PURGE_DELAY`, which then wins). Harmless when mimalloc is not the global
/// allocator (tests): it then owns no memory.
pub fn purge_immediately() -> bool {
    // SAFETY: reading and storing an option value; no pointers are involved.
    unsafe {
        if libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) != PURGE_DELAY_DEFAULT_MS {
            return false;
        }
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) == 0
    }
}

/// Runtime worker threads call this when they go idle (tokio's `on_thread_park`): mimalloc
/// returns a page only when the thread that owns it processes the frees made into it, and an
/// idle worker does not, so garbage freed by another thread (a decoded API list, a sync's
/// scratch) stayed resident until the next burst of work. At most every 100 ms per thread.
pub fn collect_idle_thread() {
    use std::cell::Cell;
    use std::time::Instant;
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST.with(|last| {
        let due = collect_due(last.get(), now);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        // SAFETY: collects the calling thread's heap; no pointers are passed.
        unsafe { libmimalloc_sys::mi_collect(false) }
    }
}

/// The least time between two collections of one idle worker.
const COLLECT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// True when a worker that last collected at `last` should collect again at `now`.
fn collect_due(last: Option<std::time::Instant>, now: std::time::Instant) -> bool {
    last.is_none_or(|at| now.duration_since(at) >= COLLECT_INTERVAL)
}

#[cfg(test)]
mod tests {
    #[test]
    fn idle_collection_is_rate_limited_per_thread() {
        let t0 = std::time::Instant::now();
        assert!(super::collect_due(None, t0));
        assert!(!super::collect_due(
            Some(t0),
            t0 + super::COLLECT_INTERVAL / 2
        ));
        assert!(super::collect_due(Some(t0), t0 + super::COLLECT_INTERVAL));
        // Harmless with any allocator: collects this thread's (empty) mimalloc heap.
        super::collect_idle_thread();
    }

    #[test]
    fn the_option_position_holds_the_documented_default() {
        // SAFETY: reading an option value.
        let value = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        // The default unless this test process already switched it.
        assert!(
            value == super::PURGE_DELAY_DEFAULT_MS || value == 0,
            "mi_option_t position {} holds {value}: not purge_delay?",
            super::MI_OPTION_PURGE_DELAY
        );
    }
}
