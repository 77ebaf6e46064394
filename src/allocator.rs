//! Allocator tuning for the knat binary and the benchmarks (both use mimalloc).
//!
//! This host runs transparent huge pages in `madvise` mode, so memory is mapped in 4 KiB pages
//! unless the allocator asks for more. Compiling 10,000 services touches about 100 MB of fresh
//! memory; in 4 KiB pages the first compile of a process took 320 ms against 125 ms with
//! mimalloc's large OS pages (render benchmark, same resident memory either way). The option
//! only makes mimalloc `madvise(MADV_HUGEPAGE)` the arenas it maps from the OS.
//!
//! mimalloc maps its first arena on the first allocation, which the Rust runtime makes before
//! `main`; so the option is set from an ELF constructor (`.init_array`), which runs before
//! the runtime starts. Only Rust allocations use mimalloc (it does not override `malloc`), so
//! no allocation can come earlier.

/// Sets mimalloc's `allow_large_os_pages`. It must not allocate (that would map the first
/// arena before the option is set), so it does not look at the environment either.
extern "C" fn use_large_pages() {
    // SAFETY: `mi_option_set` only stores an option value, read when mimalloc maps memory.
    unsafe { libmimalloc_sys::mi_option_set(libmimalloc_sys::mi_option_large_os_pages, 1) };
}

#[used]
#[unsafe(link_section = ".init_array")]
static USE_LARGE_PAGES: extern "C" fn() = use_large_pages;
