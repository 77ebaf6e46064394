//! The `iptables-save` parser (`knat trace`, `knat doctor`, `knat diff`, the agent's reading
//! of the kernel): any text parses or fails with a typed error; never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Every target includes all bodies and uses one.
#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

fuzz_target!(|data: &[u8]| bodies::iptables_save(data));
