//! The KubeProxyConfiguration reader (`knat run --config`): any YAML or JSON is read, or
//! rejected with an error naming the field; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = knat::kube_proxy_config::parse(text, "fuzz.yaml");
});
