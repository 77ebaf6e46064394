//! Parsers for option values: addresses and networks, ports and port lists, numbers and marks,
//! probabilities, conntrack states and NAT addresses.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use thiserror::Error;

use super::matches::{CtState, PROBABILITY_SCALE, PortRange};
use super::target::NatAddr;

/// A value that iptables itself would refuse.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValueError {
    /// Not an address, `ADDR/LEN` or `ADDR/DOTTED-MASK`. Not retryable: the input is malformed.
    #[error("invalid address or network `{0}`")]
    Address(String),
    /// Not a port, `A:B`, `A:` or `:B` with A <= B. Not retryable: the input is malformed.
    #[error("invalid port or port range `{0}`")]
    Port(String),
    /// Not an unsigned 32-bit number (decimal, `0x` hex or leading-zero octal). Not retryable.
    #[error("invalid number `{0}`")]
    Number(String),
    /// Not a probability between 0 and 1. Not retryable: the input is malformed.
    #[error("invalid probability `{0}`")]
    Probability(String),
    /// Not a conntrack state name. Not retryable: the input is malformed.
    #[error("invalid conntrack state `{0}`")]
    CtState(String),
}

/// Parses `-s`/`-d` values: `1.2.3.4`, `1.2.3.0/24`, `1.2.3.0/255.255.255.0`, `fd00::/8`.
/// Host bits are cleared, as the kernel does.
pub fn parse_net(value: &str) -> Result<IpNet, ValueError> {
    let err = || ValueError::Address(value.to_string());
    let net = match value.split_once('/') {
        None => IpNet::from(value.parse::<IpAddr>().map_err(|_| err())?),
        Some((addr, len)) => {
            let addr: IpAddr = addr.parse().map_err(|_| err())?;
            let prefix = match len.parse::<u8>() {
                Ok(p) => p,
                Err(_) => dotted_prefix(addr, len).ok_or_else(err)?,
            };
            IpNet::new(addr, prefix).map_err(|_| err())?
        }
    };
    Ok(net.trunc())
}

fn dotted_prefix(addr: IpAddr, mask: &str) -> Option<u8> {
    if !addr.is_ipv4() {
        return None;
    }
    let bits = u32::from(mask.parse::<Ipv4Addr>().ok()?);
    let ones = bits.leading_ones();
    // Only contiguous masks are expressible as a prefix.
    if bits.checked_shl(ones).unwrap_or(0) != 0 {
        return None;
    }
    u8::try_from(ones).ok()
}

/// Parses `80`, `80:90`, `80:` (to 65535) and `:90` (from 0).
pub fn parse_port_range(value: &str) -> Result<PortRange, ValueError> {
    let err = || ValueError::Port(value.to_string());
    let port = |s: &str, default: u16| -> Result<u16, ValueError> {
        if s.is_empty() {
            Ok(default)
        } else {
            s.parse::<u16>().map_err(|_| err())
        }
    };
    let range = match value.split_once(':') {
        None => PortRange::single(value.parse::<u16>().map_err(|_| err())?),
        Some((a, b)) => PortRange {
            start: port(a, 0)?,
            end: port(b, u16::MAX)?,
        },
    };
    if range.start > range.end {
        return Err(err());
    }
    Ok(range)
}

/// Parses a multiport list: `80,443,8000:8080`.
pub fn parse_port_list(value: &str) -> Result<Vec<PortRange>, ValueError> {
    value.split(',').map(parse_port_range).collect()
}

/// Parses a number as `strtoul(.., 0)` does: `0x` hex, leading-zero octal, else decimal.
pub fn parse_u32(value: &str) -> Result<u32, ValueError> {
    let err = || ValueError::Number(value.to_string());
    let parsed = if let Some(hex) = value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        u32::from_str_radix(hex, 16)
    } else if value.len() > 1 && value.starts_with('0') {
        u32::from_str_radix(&value[1..], 8)
    } else {
        value.parse::<u32>()
    };
    parsed.map_err(|_| err())
}

/// Parses `V` or `V/M` into `(value, mask)`; the mask defaults to all ones.
pub fn parse_mark(value: &str) -> Result<(u32, u32), ValueError> {
    match value.split_once('/') {
        None => Ok((parse_u32(value)?, u32::MAX)),
        Some((v, m)) => Ok((parse_u32(v)?, parse_u32(m)?)),
    }
}

/// Parses `--probability P` into the kernel's fixed point, `round(P * 2^31)`.
pub fn parse_probability(value: &str) -> Result<u32, ValueError> {
    let err = || ValueError::Probability(value.to_string());
    let p: f64 = value.parse().map_err(|_| err())?;
    if !(0.0..=1.0).contains(&p) {
        return Err(err());
    }
    let fixed = (p * PROBABILITY_SCALE).round();
    // 0 <= fixed <= 2^31, so the conversion cannot truncate.
    Ok(fixed as u32)
}

/// Parses `--ctstate A,B` into sorted, deduplicated states.
pub fn parse_ctstates(value: &str) -> Result<Vec<CtState>, ValueError> {
    let mut states = value
        .split(',')
        .map(|s| CtState::parse(s).ok_or_else(|| ValueError::CtState(s.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    states.sort();
    states.dedup();
    Ok(states)
}

/// Parses a single NAT address (`ip`, `ip:port`, `[v6]`, `[v6]:port`, bare `v6`). Ranges
/// (`a-b`, `:p1-p2`) are valid iptables but not modelled: they give `None`.
pub fn parse_nat_addr(value: &str) -> Option<NatAddr> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Some(NatAddr { ip, port: None });
    }
    if let Some(rest) = value.strip_prefix('[') {
        let (ip, after) = rest.split_once(']')?;
        let ip: IpAddr = ip.parse().ok()?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse::<u16>().ok()?),
        };
        return Some(NatAddr { ip, port });
    }
    let (ip, port) = value.rsplit_once(':')?;
    let ip: IpAddr = ip.parse().ok()?;
    if !ip.is_ipv4() {
        return None;
    }
    Some(NatAddr {
        ip,
        port: Some(port.parse().ok()?),
    })
}

/// Normalises a protocol name: lower case, and the numbers of tcp, udp and sctp to their names.
pub fn normalise_protocol(value: &str) -> String {
    match value.to_ascii_lowercase().as_str() {
        "6" => "tcp".into(),
        "17" => "udp".into(),
        "132" => "sctp".into(),
        "0" => "all".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nets_are_normalised() {
        assert_eq!(
            parse_net("172.30.0.41").map(|n| n.to_string()),
            Ok("172.30.0.41/32".into())
        );
        assert_eq!(
            parse_net("10.1.2.3/8").map(|n| n.to_string()),
            Ok("10.0.0.0/8".into())
        );
        assert_eq!(
            parse_net("10.0.0.0/255.255.0.0").map(|n| n.to_string()),
            Ok("10.0.0.0/16".into())
        );
        assert_eq!(
            parse_net("::1").map(|n| n.to_string()),
            Ok("::1/128".into())
        );
        assert!(parse_net("10.0.0.0/255.0.255.0").is_err());
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("example.com").is_err());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("80"), Ok(PortRange::single(80)));
        assert_eq!(
            parse_port_range("80:90"),
            Ok(PortRange { start: 80, end: 90 })
        );
        assert_eq!(
            parse_port_range("80:"),
            Ok(PortRange {
                start: 80,
                end: 65535
            })
        );
        assert_eq!(parse_port_range(":90"), Ok(PortRange { start: 0, end: 90 }));
        assert!(parse_port_range("90:80").is_err());
        assert!(parse_port_range("http").is_err());
        assert_eq!(parse_port_list("1,2:3").map(|l| l.len()), Ok(2));
    }

    #[test]
    fn numbers_and_marks() {
        assert_eq!(parse_u32("0x4000"), Ok(0x4000));
        assert_eq!(parse_u32("0x00004000"), Ok(0x4000));
        assert_eq!(parse_u32("16384"), Ok(0x4000));
        assert_eq!(parse_u32("010"), Ok(8));
        assert_eq!(parse_u32("0"), Ok(0));
        assert_eq!(parse_mark("0x4000/0x4000"), Ok((0x4000, 0x4000)));
        assert_eq!(parse_mark("0x4000"), Ok((0x4000, u32::MAX)));
        assert!(parse_mark("0x/1").is_err());
    }

    #[test]
    fn probabilities_use_kernel_fixed_point() {
        // knat writes %0.10f, iptables-save prints %.11f of the fixed point: both must agree.
        assert_eq!(
            parse_probability("0.5000000000"),
            parse_probability("0.50000000000")
        );
        assert_eq!(
            parse_probability("0.3333333333"),
            parse_probability("0.33333333349")
        );
        assert_eq!(parse_probability("0.2500000000"), Ok(1 << 29));
        assert!(parse_probability("1.5").is_err());
        assert!(parse_probability("x").is_err());
    }

    #[test]
    fn nat_addresses() {
        let s = |v: &str| parse_nat_addr(v).map(|a| a.to_string());
        assert_eq!(s("10.0.0.1:80"), Some("10.0.0.1:80".into()));
        assert_eq!(s("10.0.0.1"), Some("10.0.0.1".into()));
        assert_eq!(s("[fd00::1]:80"), Some("[fd00::1]:80".into()));
        assert_eq!(s("fd00::1"), Some("fd00::1".into()));
        assert_eq!(s("10.0.0.1-10.0.0.9"), None);
        assert_eq!(s("10.0.0.1:80-90"), None);
    }

    #[test]
    fn ctstates_sorted() {
        assert_eq!(
            parse_ctstates("ESTABLISHED,RELATED,DNAT"),
            Ok(vec![CtState::Related, CtState::Established, CtState::Dnat])
        );
        assert!(parse_ctstates("NEW,BOGUS").is_err());
    }
}
