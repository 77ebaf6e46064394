//! A packet conntrack classifies as INVALID, for the real-packet test of upstream's
//! `KUBE-FORWARD` drop rule and its nfacct counter: an ICMP (or ICMPv6) echo *reply* that
//! answers no request. Conntrack starts a new ICMP connection only with a request
//! (`nf_conntrack_proto_icmp`: echo, timestamp, info, address-mask requests), so an unsolicited
//! reply has no connection and is `--ctstate INVALID`. `knat lab-invalid --to IP` sends one
//! from a raw socket (root); the kernel routes it like any other packet.

use std::net::{IpAddr, SocketAddr};

use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrStorage, sendto, socket,
};
use std::os::fd::AsRawFd;

use super::LabError;

/// ICMP type 0 / ICMPv6 type 129: echo reply.
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// The Internet checksum (RFC 1071) of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|pair| u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo-reply message: type, code 0, checksum, identifier, sequence, 8 bytes of data. The
/// ICMPv6 checksum covers a pseudo-header the kernel fills in on raw ICMPv6 sockets, so it is
/// left 0 there.
pub fn echo_reply(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let kind = if v6 {
        ICMPV6_ECHO_REPLY
    } else {
        ICMP_ECHO_REPLY
    };
    let mut out = vec![kind, 0, 0, 0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(b"knat-lab");
    if !v6 {
        let sum = checksum(&out);
        out[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    out
}

/// Sends `count` unsolicited echo replies to `to`.
pub fn send_unsolicited_echo_replies(to: IpAddr, count: u16) -> Result<(), LabError> {
    let io = |context: &str, e: nix::Error| LabError::Io {
        context: context.to_string(),
        source: std::io::Error::from(e),
    };
    let (family, protocol) = match to {
        IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp),
        IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6),
    };
    let fd = socket(family, SockType::Raw, SockFlag::SOCK_CLOEXEC, protocol)
        .map_err(|e| io("raw ICMP socket (root needed)", e))?;
    let target = SockaddrStorage::from(SocketAddr::new(to, 0));
    for seq in 0..count {
        let message = echo_reply(to.is_ipv6(), 0x6b6e, seq);
        sendto(fd.as_raw_fd(), &message, &target, MsgFlags::empty())
            .map_err(|e| io(&format!("send an echo reply to {to}"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2, complement 220d.
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }

    #[test]
    fn echo_reply_layout() {
        let v4 = echo_reply(false, 1, 2);
        assert_eq!(v4[0], 0);
        assert_eq!(v4.len(), 16);
        // A correct checksum makes the whole message sum to zero.
        assert_eq!(checksum(&v4), 0);
        let v6 = echo_reply(true, 1, 2);
        assert_eq!((v6[0], v6[2], v6[3]), (129, 0, 0));
    }
}
