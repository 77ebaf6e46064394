//! Appending numbers and addresses to strings without `fmt`: rule sets of 300,000 rules are
//! rendered on every full sync, and the `fmt` machinery per argument costs several times more
//! than appending bytes.

use std::net::IpAddr;

/// Appends the decimal form of `n`.
pub fn push_num(out: &mut String, n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &b in &buf[i..] {
        out.push(char::from(b));
    }
}

/// Appends an address as `Display` would (`10.0.0.1`, `fd00::1`).
pub fn push_ip(out: &mut String, ip: &IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_num(out, u64::from(*octet));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write as _;
            let _ = write!(out, "{v6}");
        }
    }
}

/// Appends `ip:port`, with brackets around IPv6 addresses (Go's `net.JoinHostPort`).
pub fn push_host_port(out: &mut String, ip: &IpAddr, port: u16) {
    if ip.is_ipv6() {
        out.push('[');
        push_ip(out, ip);
        out.push(']');
    } else {
        push_ip(out, ip);
    }
    out.push(':');
    push_num(out, u64::from(port));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_display() {
        for text in ["0.0.0.0", "10.96.0.10", "255.255.255.255", "fd00::5", "::1"] {
            let ip: IpAddr = text.parse().expect("valid address");
            let mut out = String::new();
            push_ip(&mut out, &ip);
            assert_eq!(out, ip.to_string());
        }
        let mut out = String::new();
        push_num(&mut out, 0);
        push_num(&mut out, 18_446_744_073_709_551_615);
        assert_eq!(out, "018446744073709551615");
        let mut out = String::new();
        push_host_port(&mut out, &"fd00::5".parse().expect("valid"), 8080);
        push_host_port(&mut out, &"10.0.0.1".parse().expect("valid"), 80);
        assert_eq!(out, "[fd00::5]:808010.0.0.1:80");
    }
}
