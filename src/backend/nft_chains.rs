//! The nf_tables chains of one family, listed over netlink: one `NFT_MSG_GETCHAIN` dump
//! (`NLM_F_DUMP`, family in `nfgenmsg`) on a `NETLINK_NETFILTER` socket, keeping each chain's
//! table (`NFTA_CHAIN_TABLE`) and name (`NFTA_CHAIN_NAME`). This is what full syncs on
//! iptables-nft use instead of `nft list chains` (0.75 s for `ip`, 0.56 s for `ip6` at 10,000
//! Services on a quiet machine). Measured at 10,000 Services (about 120,000 chains per family)
//! in the same runs on a loaded machine: netlink 629 / 351 ms (release build) against 4,071 /
//! 3,909 ms for `nft list chains`; 800-856 / 733-769 ms (debug build) against 2,222-2,344 /
//! 2,281-2,826 ms (docs/performance.md, issue 17). What remains is kernel time: each 32 KB
//! datagram of a dump walks the table's chain list from its start.
//!
//! The wire format ([`request`], [`parse_batch`]) is pure and unit-tested; [`dump_chains`]
//! reads datagrams until `NLMSG_DONE`, retries a `recv` interrupted by a signal (`EINTR`) and
//! the whole dump when the kernel flags it inconsistent (`NLM_F_DUMP_INTR`: the ruleset changed
//! while it was being dumped), at most [`DUMP_ATTEMPTS`] times.
//!
//! Why not a crate: `nftnl` binds the C library libnftnl (a C dependency for one message),
//! `rustables` is GPL-3.0 (knat is Apache-2.0) and `nftnl-rs` covers sets only; nix's socket
//! API, already used for nfacct ([`super::nfacct`]), is all this needs.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;

use super::netlink_wire::{
    NFGENMSG_LEN, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, align4, attributes, u16_at,
    u32_at,
};

use crate::model::IpFamily;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_NOOP: u16 = 1;
const NLMSG_OVERRUN: u16 = 4;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

/// How many times a dump the kernel flagged inconsistent is started again.
pub const DUMP_ATTEMPTS: usize = 5;
/// How long one `recv` may wait for the kernel (a dump of 114,000 chains takes milliseconds).
const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer: larger than any datagram of a dump (the kernel fills at most 32 KB, or the
/// size of the last read, per datagram); a larger one is reported as [`NftChainsError::Truncated`].
const RECV_BUFFER: usize = 256 * 1024;

/// Errors of the netlink chain listing. All are retryable in the sense that the next full
/// sync lists again; the caller falls back to another listing at once.
#[derive(Debug, thiserror::Error)]
pub enum NftChainsError {
    /// No `NETLINK_NETFILTER` socket, or the namespace could not be entered.
    #[error("netlink socket: {what}: {errno}")]
    Socket { what: &'static str, errno: Errno },
    /// The kernel answered the dump with an error (`EPERM` without CAP_NET_ADMIN, ...).
    #[error("the kernel refused the chain dump: {0}")]
    Kernel(Errno),
    /// Every attempt was flagged inconsistent (the ruleset kept changing during the dump).
    #[error("the chain dump was interrupted by concurrent changes {0} times in a row")]
    Interrupted(usize),
    /// A datagram did not fit the receive buffer.
    #[error("a netlink datagram of {0} bytes did not fit the receive buffer")]
    Truncated(usize),
    /// The kernel's answer could not be decoded (a bug here, or an unexpected kernel).
    #[error("undecodable chain dump: {0}")]
    Malformed(String),
}

/// What one datagram of a dump said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// More datagrams follow.
    More,
    /// `NLMSG_DONE`: the dump is complete.
    Done,
}

/// The state of one dump as its datagrams are parsed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dump {
    /// (table, chain) in the kernel's order.
    pub chains: Vec<(String, String)>,
    /// A message carried `NLM_F_DUMP_INTR`: the listing may be inconsistent, start again.
    pub interrupted: bool,
}

fn nfproto(family: IpFamily) -> u8 {
    match family {
        IpFamily::V4 => NFPROTO_IPV4,
        IpFamily::V6 => NFPROTO_IPV6,
    }
}

/// The bytes of the dump request: `nlmsghdr` and `nfgenmsg` (the family; no attribute, so
/// every table of the family is dumped, as `nft list chains ip` lists them).
pub fn request(family: IpFamily, seq: u32) -> Vec<u8> {
    let total = NLMSG_HDRLEN + NFGENMSG_LEN;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_ne_bytes());
    out.extend_from_slice(&((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETCHAIN).to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version NFNETLINK_V0, resource id 0 (big endian).
    out.extend_from_slice(&[nfproto(family), 0, 0, 0]);
    out
}

/// The NUL-terminated string of one attribute.
fn attribute_text(data: &[u8]) -> Result<String, NftChainsError> {
    let text = data.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8(text.to_vec())
        .map_err(|_| NftChainsError::Malformed("a chain or table name is not UTF-8".into()))
}

/// Table and name of one `NFT_MSG_NEWCHAIN` message (its payload after `nlmsghdr`).
fn chain(payload: &[u8]) -> Result<(String, String), NftChainsError> {
    let bad = |what: &str| NftChainsError::Malformed(what.to_string());
    let (mut table, mut name) = (None, None);
    let attrs = payload.get(NFGENMSG_LEN..).unwrap_or_default();
    for attribute in attributes(attrs) {
        let (kind, data) = attribute.map_err(|e| bad(e.0))?;
        match kind {
            NFTA_CHAIN_TABLE => table = Some(attribute_text(data)?),
            NFTA_CHAIN_NAME => name = Some(attribute_text(data)?),
            _ => {}
        }
    }
    match (table, name) {
        (Some(table), Some(name)) => Ok((table, name)),
        _ => Err(bad("a chain without table or name")),
    }
}

/// The error code of an `NLMSG_ERROR` or `NLMSG_DONE` payload (a negative errno, or 0).
fn error_code(payload: &[u8]) -> Result<i32, NftChainsError> {
    u32_at(payload, 0)
        .map(|code| code as i32)
        .ok_or_else(|| NftChainsError::Malformed("error message without a code".into()))
}

/// Decodes the messages of one datagram that answer request `seq` (others are ignored) into
/// `dump`; says whether the dump is complete.
pub fn parse_batch(bytes: &[u8], seq: u32, dump: &mut Dump) -> Result<Batch, NftChainsError> {
    let bad = |what: &str| NftChainsError::Malformed(what.to_string());
    let mut at = 0;
    while at + NLMSG_HDRLEN <= bytes.len() {
        let len = u32_at(bytes, at).ok_or_else(|| bad("message length"))? as usize;
        let kind = u16_at(bytes, at + 4).ok_or_else(|| bad("message type"))?;
        let flags = u16_at(bytes, at + 6).ok_or_else(|| bad("message flags"))?;
        let msg_seq = u32_at(bytes, at + 8).ok_or_else(|| bad("sequence"))?;
        if len < NLMSG_HDRLEN || at + len > bytes.len() {
            return Err(bad("message overruns the datagram"));
        }
        let payload = &bytes[at + NLMSG_HDRLEN..at + len];
        at += align4(len);
        if msg_seq != seq {
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            dump.interrupted = true;
        }
        match kind {
            NLMSG_NOOP => {}
            NLMSG_OVERRUN => return Err(bad("the kernel reported an overrun")),
            NLMSG_ERROR => match error_code(payload)? {
                0 => return Ok(Batch::Done),
                code => return Err(NftChainsError::Kernel(Errno::from_raw(-code))),
            },
            NLMSG_DONE => match payload.len() {
                // An empty DONE is complete; one with a code says how the dump ended.
                0 => return Ok(Batch::Done),
                _ => match error_code(payload)? {
                    0 => return Ok(Batch::Done),
                    code if -code == Errno::EINTR as i32 => {
                        dump.interrupted = true;
                        return Ok(Batch::Done);
                    }
                    code => return Err(NftChainsError::Kernel(Errno::from_raw(-code))),
                },
            },
            k if k == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN => {
                dump.chains.push(chain(payload)?);
            }
            _ => {}
        }
    }
    Ok(Batch::More)
}

/// Runs `attempt` until it returns a dump that was not interrupted, at most [`DUMP_ATTEMPTS`]
/// times.
pub fn until_consistent(
    mut attempt: impl FnMut() -> Result<Dump, NftChainsError>,
) -> Result<Vec<(String, String)>, NftChainsError> {
    for _ in 0..DUMP_ATTEMPTS {
        let dump = attempt()?;
        if !dump.interrupted {
            return Ok(dump.chains);
        }
        tracing::debug!("the chain dump was interrupted by a concurrent change; dumping again");
    }
    Err(NftChainsError::Interrupted(DUMP_ATTEMPTS))
}

/// A netlink socket of the calling thread's network namespace, bound, with a receive timeout.
fn open_socket() -> Result<OwnedFd, NftChainsError> {
    let failed = |what| move |errno| NftChainsError::Socket { what, errno };
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(failed("socket"))?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(failed("bind"))?;
    let timeout = TimeVal::new(
        RECV_TIMEOUT.as_secs() as i64,
        i64::from(RECV_TIMEOUT.subsec_micros()),
    );
    setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(failed("receive timeout"))?;
    Ok(fd)
}

/// One dump on `fd`: the request, then datagrams until `NLMSG_DONE`.
fn dump_once(fd: &OwnedFd, family: IpFamily, seq: u32) -> Result<Dump, NftChainsError> {
    let failed = |what| move |errno| NftChainsError::Socket { what, errno };
    let message = request(family, seq);
    loop {
        match sendto(
            fd.as_raw_fd(),
            &message,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        ) {
            Err(Errno::EINTR) => continue,
            other => {
                other.map_err(failed("send"))?;
                break;
            }
        }
    }
    let mut buffer = vec![0u8; RECV_BUFFER];
    let mut dump = Dump::default();
    loop {
        // MSG_TRUNC: the datagram's real length, so a truncated one is noticed.
        let n = match recv(fd.as_raw_fd(), &mut buffer, MsgFlags::MSG_TRUNC) {
            Err(Errno::EINTR) => continue,
            other => other.map_err(failed("receive"))?,
        };
        if n > buffer.len() {
            return Err(NftChainsError::Truncated(n));
        }
        if parse_batch(&buffer[..n], seq, &mut dump)? == Batch::Done {
            return Ok(dump);
        }
    }
}

/// Every (table, chain) of `family` in nf_tables, in the kernel's order, in the calling
/// thread's network namespace. Blocking (see docs/performance.md for its cost).
pub fn dump_chains(family: IpFamily) -> Result<Vec<(String, String)>, NftChainsError> {
    let fd = open_socket()?;
    let mut seq = 0u32;
    until_consistent(|| {
        seq += 1;
        dump_once(&fd, family, seq)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::netlink_wire::attribute;

    /// One netlink message: header, then `payload`, padded.
    fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDRLEN + payload.len();
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(align4(out.len()), 0);
        out
    }

    const CHAIN_MSG: u16 = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWCHAIN;
    const NLM_F_MULTI: u16 = 0x2;

    fn chain_message(seq: u32, flags: u16, table: &str, name: &str) -> Vec<u8> {
        let mut payload = vec![NFPROTO_IPV4, 0, 0, 0];
        payload.extend(attribute(NFTA_CHAIN_TABLE, format!("{table}\0").as_bytes()));
        // The handle (NFTA_CHAIN_HANDLE, 2) and a nested hook (NFTA_CHAIN_HOOK, 4) are skipped.
        payload.extend(attribute(2, &7u64.to_be_bytes()));
        payload.extend(attribute(NFTA_CHAIN_NAME, format!("{name}\0").as_bytes()));
        payload.extend(attribute(4 | 0x8000, &attribute(1, &0u32.to_be_bytes())));
        message(CHAIN_MSG, flags | NLM_F_MULTI, seq, &payload)
    }

    fn done(seq: u32, code: i32) -> Vec<u8> {
        message(NLMSG_DONE, NLM_F_MULTI, seq, &code.to_ne_bytes())
    }

    #[test]
    fn the_request_is_a_dump_of_one_family() {
        let bytes = request(IpFamily::V6, 9);
        assert_eq!(bytes.len(), 20);
        assert_eq!(u32_at(&bytes, 0), Some(20));
        assert_eq!(u16_at(&bytes, 4), Some(0x0a04));
        assert_eq!(u16_at(&bytes, 6), Some(NLM_F_REQUEST | NLM_F_DUMP));
        assert_eq!(u32_at(&bytes, 8), Some(9));
        assert_eq!(&bytes[16..], &[NFPROTO_IPV6, 0, 0, 0]);
        assert_eq!(request(IpFamily::V4, 1)[16], NFPROTO_IPV4);
    }

    #[test]
    fn a_multi_part_dump_collects_chains_until_done() {
        let mut first = chain_message(5, 0, "nat", "KUBE-SERVICES");
        first.extend(chain_message(5, 0, "filter", "INPUT"));
        // A message of another request in the same datagram is ignored.
        first.extend(chain_message(4, 0, "nat", "OTHER"));
        let mut dump = Dump::default();
        assert_eq!(parse_batch(&first, 5, &mut dump).unwrap(), Batch::More);
        let mut second = chain_message(5, 0, "nat", "KUBE-SEP-ABC");
        second.extend(done(5, 0));
        assert_eq!(parse_batch(&second, 5, &mut dump).unwrap(), Batch::Done);
        assert_eq!(
            dump.chains,
            [
                ("nat".to_string(), "KUBE-SERVICES".to_string()),
                ("filter".into(), "INPUT".into()),
                ("nat".into(), "KUBE-SEP-ABC".into()),
            ]
        );
        assert!(!dump.interrupted);
    }

    #[test]
    fn an_interrupted_dump_is_flagged_and_retried() {
        let mut bytes = chain_message(1, NLM_F_DUMP_INTR, "nat", "A");
        bytes.extend(done(1, 0));
        let mut dump = Dump::default();
        assert_eq!(parse_batch(&bytes, 1, &mut dump).unwrap(), Batch::Done);
        assert!(dump.interrupted);
        // A DONE carrying -EINTR means the same.
        let mut dump = Dump::default();
        parse_batch(&done(2, -(Errno::EINTR as i32)), 2, &mut dump).unwrap();
        assert!(dump.interrupted);

        let mut attempts = 0;
        let chains = until_consistent(|| {
            attempts += 1;
            Ok(Dump {
                chains: vec![("nat".into(), format!("try-{attempts}"))],
                interrupted: attempts < 3,
            })
        })
        .unwrap();
        assert_eq!(attempts, 3);
        assert_eq!(chains, [("nat".to_string(), "try-3".to_string())]);
        let always = until_consistent(|| {
            Ok(Dump {
                chains: Vec::new(),
                interrupted: true,
            })
        });
        assert!(matches!(
            always,
            Err(NftChainsError::Interrupted(DUMP_ATTEMPTS))
        ));
    }

    #[test]
    fn kernel_errors_and_malformed_messages_are_errors() {
        let mut err = (-(Errno::EPERM as i32)).to_ne_bytes().to_vec();
        err.extend(request(IpFamily::V4, 3));
        let bytes = message(NLMSG_ERROR, 0, 3, &err);
        assert!(matches!(
            parse_batch(&bytes, 3, &mut Dump::default()),
            Err(NftChainsError::Kernel(Errno::EPERM))
        ));
        assert!(matches!(
            parse_batch(&done(3, -(Errno::ENOBUFS as i32)), 3, &mut Dump::default()),
            Err(NftChainsError::Kernel(Errno::ENOBUFS))
        ));
        // A message longer than the datagram.
        let mut cut = chain_message(3, 0, "nat", "KUBE-SERVICES");
        cut.truncate(cut.len() - 8);
        assert!(matches!(
            parse_batch(&cut, 3, &mut Dump::default()),
            Err(NftChainsError::Malformed(_))
        ));
        // A chain message without its name.
        let mut payload = vec![NFPROTO_IPV4, 0, 0, 0];
        payload.extend(attribute(NFTA_CHAIN_TABLE, b"nat\0"));
        let nameless = message(CHAIN_MSG, NLM_F_MULTI, 3, &payload);
        assert!(matches!(
            parse_batch(&nameless, 3, &mut Dump::default()),
            Err(NftChainsError::Malformed(_))
        ));
        // An attribute that claims more than its message holds.
        let mut payload = vec![NFPROTO_IPV4, 0, 0, 0];
        payload.extend_from_slice(&64u16.to_ne_bytes());
        payload.extend_from_slice(&NFTA_CHAIN_NAME.to_ne_bytes());
        payload.extend_from_slice(b"abcd");
        let overrun = message(CHAIN_MSG, NLM_F_MULTI, 3, &payload);
        assert!(matches!(
            parse_batch(&overrun, 3, &mut Dump::default()),
            Err(NftChainsError::Malformed(_))
        ));
        // An empty datagram asks for more.
        assert_eq!(
            parse_batch(&[], 3, &mut Dump::default()).unwrap(),
            Batch::More
        );
    }
}
