//! The KubeProxyConfiguration reader (`knat run --config`): any YAML or JSON is read, or
//! rejected with an error naming the field; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

// Every target includes all bodies and uses one.
#[allow(dead_code)]
#[path = "../bodies.rs"]
mod bodies;

fuzz_target!(|data: &[u8]| bodies::kube_proxy_config(data));
