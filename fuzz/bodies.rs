//! The bodies of the cargo-fuzz targets, one function per target: `fuzz/fuzz_targets/*.rs`
//! (nightly, libFuzzer) and `tests/fuzz_regressions.rs` (stable, every seed and found input)
//! include this one file, so both run exactly the same code on an input.

use std::net::{IpAddr, Ipv4Addr};

use knat::dump::trace::TraceRequest;
use knat::input::{Source, load};
use knat::model::Protocol;

/// The `iptables_save` fuzz target's body.
pub fn iptables_save(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = knat::dump::read::parse(text);
    let _ = knat::dump::parse::parse_blocks(text);
    if let Some(first) = text.lines().next() {
        let _ = knat::dump::parse::parse_rule_spec(first);
    }
}

/// The `trace` fuzz target's body: 12 bytes of packet, then the dump.
pub fn trace(data: &[u8]) {
    if data.len() < 12 {
        return;
    }
    let (head, rest) = data.split_at(12);
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(dump) = knat::dump::read::parse(text) else {
        return;
    };
    let protocol = match head[10] % 3 {
        0 => Protocol::Tcp,
        1 => Protocol::Udp,
        _ => Protocol::Sctp,
    };
    let req = TraceRequest {
        src: IpAddr::V4(Ipv4Addr::new(head[0], head[1], head[2], head[3])),
        dst: IpAddr::V4(Ipv4Addr::new(head[4], head[5], head[6], head[7])),
        dport: u16::from_be_bytes([head[8], head[9]]),
        protocol,
        local: head[11] & 1 == 1,
        node_ips: vec![IpAddr::V4(Ipv4Addr::new(192, 168, 0, 2))],
        in_iface: (head[11] & 2 == 2).then(|| "eth0".to_string()),
    };
    let _ = knat::dump::trace::trace(&dump, &req);
}

/// The `kube_proxy_config` fuzz target's body.
pub fn kube_proxy_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = knat::kube_proxy_config::parse(text, "fuzz.yaml");
}

/// The `manifests` fuzz target's body.
pub fn manifests(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let source = Source {
        name: "fuzz.yaml".to_string(),
        text: text.to_string(),
    };
    let _ = load(&[source], "node-1");
}
