//! The packet tracer over any dump that parses: the first 12 bytes choose the packet (source,
//! destination, port, protocol, locally generated or not), the rest is the dump text.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use knat::dump::trace::{TraceRequest, trace};
use knat::model::Protocol;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
    let _ = trace(&dump, &req);
});
