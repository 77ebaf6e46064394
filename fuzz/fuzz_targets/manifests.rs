//! The manifest reader and the Kubernetes-object converter (`knat render`, `knat run
//! --from-files`): any YAML or JSON, Services, EndpointSlices, Nodes and Lists of them with any
//! field values, is loaded into a snapshot or rejected with the file and line; never a panic.
#![no_main]

use knat::input::{Source, load};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Source {
        name: "fuzz.yaml".to_string(),
        text: text.to_string(),
    };
    let _ = load(&[source], "node-1");
});
