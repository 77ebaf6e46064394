//! The `iptables-save` parser (`knat trace`, `knat doctor`, `knat diff`, the agent's reading
//! of the kernel): any text parses or fails with a typed error; never a panic or a hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = knat::dump::read::parse(text);
    let _ = knat::dump::parse::parse_blocks(text);
    if let Some(first) = text.lines().next() {
        let _ = knat::dump::parse::parse_rule_spec(first);
    }
});
