//! The packet tracer over any dump that parses: the first 12 bytes choose the packet (source,
//! destination, port, protocol, locally generated or not), the rest is the dump text.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Every target includes all bodies and uses one.
#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

fuzz_target!(|data: &[u8]| bodies::trace(data));
