//! The manifest reader and the Kubernetes-object converter (`knat render`, `knat run
//! --from-files`): any YAML or JSON, Services, EndpointSlices, Nodes and Lists of them with any
//! field values, is loaded into a snapshot or rejected with the file and line; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Every target includes all bodies and uses one.
#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

fuzz_target!(|data: &[u8]| bodies::manifests(data));
