//! nfacct counters (`nfnetlink_acct`, netlink subsystem `NFNL_SUBSYS_ACCT`), as upstream's
//! `pkg/proxy/util/nfacct` uses them: [`Nfacct::open`] checks that the kernel has the
//! subsystem (a GET of a name that need not exist must answer the counter or `ENOENT`),
//! [`Nfacct::ensure`] creates a counter unless it exists, [`Nfacct::get`] reads one.
//!
//! The wire format ([`request`], [`parse_replies`]) is pure and unit-tested; the socket part is
//! one `NETLINK_NETFILTER` socket (nix), one request and its replies at a time, with a receive
//! timeout so that a silent kernel cannot hang a sync or a scrape. Counters live in the network
//! namespace of the socket, which is the namespace the agent runs in.
//!
//! Why not a crate: the netlink crates (neli, netlink-packet-*) cover rtnetlink, generic
//! netlink and a few netfilter messages, not nfnetlink_acct; these three messages are a header,
//! one string attribute and three numeric ones (`docs/architecture.md`, dependencies).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
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

/// The counter of the KUBE-FORWARD conntrack-INVALID drop (upstream's name).
pub const CT_STATE_INVALID_DROPPED: &str = "ct_state_invalid_dropped_pkts";
/// The counter of the localhost NodePort accept rules (upstream's name).
pub const LOCALHOST_NODEPORTS_ACCEPTED: &str = "localhost_nps_accepted_pkts";
/// Both counters kube-proxy's iptables mode creates.
pub const COUNTERS: [&str; 2] = [CT_STATE_INVALID_DROPPED, LOCALHOST_NODEPORTS_ACCEPTED];
/// The kernel's limit (`NFACCT_NAME_MAX` 32, including the terminating NUL).
pub const MAX_NAME_LEN: usize = 31;

const NFNL_SUBSYS_ACCT: u16 = 7;
const NFNL_MSG_ACCT_NEW: u16 = 0;
const NFNL_MSG_ACCT_GET: u16 = 1;
const NFACCT_NAME: u16 = 1;
const NFACCT_PKTS: u16 = 2;
const NFACCT_BYTES: u16 = 3;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
/// How long one request may wait for the kernel's answer.
const RECV_TIMEOUT: Duration = Duration::from_secs(1);

/// nfacct errors.
#[derive(Debug, thiserror::Error)]
pub enum NfacctError {
    /// No `NETLINK_NETFILTER` socket, or the kernel lacks `nfnetlink_acct`. Not retryable: the
    /// agent runs without the counters (as upstream does) and says so.
    #[error("nfacct is not available: {0}")]
    Unsupported(String),
    /// The counter does not exist.
    #[error("no nfacct counter named {0:?}")]
    NotFound(String),
    /// The name is empty or longer than the kernel allows. Not retryable.
    #[error("invalid nfacct counter name {0:?} (1 to {MAX_NAME_LEN} bytes)")]
    Name(String),
    /// The kernel refused a request (`EPERM` without CAP_NET_ADMIN, `ENOMEM`, ...), or the
    /// socket failed. Retryable: the next full sync tries again.
    #[error("nfacct {operation} of {name:?}: {errno}")]
    Kernel {
        operation: &'static str,
        name: String,
        errno: Errno,
    },
    /// The kernel's answer could not be decoded (a bug here, or an unexpected kernel).
    #[error("undecodable nfacct answer: {0}")]
    Malformed(String),
}

/// One counter's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counter {
    pub name: String,
    pub packets: u64,
    pub bytes: u64,
}

/// What one request's replies said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The kernel acknowledged with error 0 (and sent these counters before it).
    Ok(Vec<Counter>),
    /// The kernel answered an error (a positive errno value).
    Error(i32),
    /// The replies so far end neither with an acknowledgement nor with an error: read more.
    Incomplete(Vec<Counter>),
}

/// The bytes of one request: `nlmsghdr`, `nfgenmsg`, and the `NFACCT_NAME` attribute.
pub fn request(command: u16, flags: u16, seq: u32, name: &str) -> Vec<u8> {
    let attr_len = 4 + name.len() + 1;
    let total = NLMSG_HDRLEN + NFGENMSG_LEN + align4(attr_len);
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_ne_bytes());
    out.extend_from_slice(&((NFNL_SUBSYS_ACCT << 8) | command).to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family AF_UNSPEC, version NFNETLINK_V0, resource id 0 (big endian).
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&u16::try_from(attr_len).unwrap_or(u16::MAX).to_ne_bytes());
    out.extend_from_slice(&NFACCT_NAME.to_ne_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.resize(total, 0);
    out
}

/// Decodes the attributes of one nfacct message (after `nfgenmsg`).
fn counter(payload: &[u8]) -> Result<Counter, NfacctError> {
    let bad = |what: &str| NfacctError::Malformed(what.to_string());
    let mut name = None;
    let (mut packets, mut bytes) = (None, None);
    let attrs = payload.get(NFGENMSG_LEN..).unwrap_or_default();
    for attribute in attributes(attrs) {
        let (kind, data) = attribute.map_err(|e| bad(e.0))?;
        let be64 = || -> Result<u64, NfacctError> {
            Ok(u64::from_be_bytes(
                data.try_into().map_err(|_| bad("counter is not 8 bytes"))?,
            ))
        };
        match kind {
            NFACCT_NAME => {
                let text = data.split(|b| *b == 0).next().unwrap_or_default();
                name = Some(String::from_utf8_lossy(text).into_owned());
            }
            NFACCT_PKTS => packets = Some(be64()?),
            NFACCT_BYTES => bytes = Some(be64()?),
            _ => {}
        }
    }
    match (name, packets, bytes) {
        (Some(name), Some(packets), Some(bytes)) => Ok(Counter {
            name,
            packets,
            bytes,
        }),
        _ => Err(bad("a counter without name, packets or bytes")),
    }
}

/// Decodes the messages of one `recv` belonging to request `seq` (others are ignored), adding
/// to the counters already seen.
pub fn parse_replies(bytes: &[u8], seq: u32, mut seen: Vec<Counter>) -> Result<Reply, NfacctError> {
    let bad = |what: &str| NfacctError::Malformed(what.to_string());
    let mut at = 0;
    while at + NLMSG_HDRLEN <= bytes.len() {
        let len = u32_at(bytes, at).ok_or_else(|| bad("message length"))? as usize;
        let kind = u16_at(bytes, at + 4).ok_or_else(|| bad("message type"))?;
        let msg_seq = u32_at(bytes, at + 8).ok_or_else(|| bad("sequence"))?;
        if len < NLMSG_HDRLEN || at + len > bytes.len() {
            return Err(bad("message overruns the datagram"));
        }
        let payload = &bytes[at + NLMSG_HDRLEN..at + len];
        if msg_seq == seq {
            match kind {
                NLMSG_ERROR => {
                    let code = u32_at(payload, 0).ok_or_else(|| bad("error code"))? as i32;
                    return Ok(if code == 0 {
                        Reply::Ok(seen)
                    } else {
                        Reply::Error(-code)
                    });
                }
                NLMSG_DONE => return Ok(Reply::Ok(seen)),
                k if k >> 8 == NFNL_SUBSYS_ACCT => seen.push(counter(payload)?),
                _ => {}
            }
        }
        at += align4(len);
    }
    Ok(Reply::Incomplete(seen))
}

/// A `NETLINK_NETFILTER` socket for nfacct requests (one at a time; shared behind a mutex).
#[derive(Debug)]
pub struct Nfacct {
    socket: Mutex<OwnedFd>,
    seq: AtomicU32,
}

impl Nfacct {
    /// Opens the socket and checks that the kernel answers nfacct requests: a GET of a name
    /// that need not exist must give the counter or `ENOENT` (upstream's `nfacct.New`).
    pub fn open() -> Result<Nfacct, NfacctError> {
        let unsupported = |what: &str, e: Errno| NfacctError::Unsupported(format!("{what}: {e}"));
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkNetFilter,
        )
        .map_err(|e| unsupported("netlink socket", e))?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))
            .map_err(|e| unsupported("bind netlink socket", e))?;
        setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &TimeVal::new(
                RECV_TIMEOUT.as_secs() as i64,
                i64::from(RECV_TIMEOUT.subsec_micros()),
            ),
        )
        .map_err(|e| unsupported("socket timeout", e))?;
        let client = Nfacct {
            socket: Mutex::new(fd),
            seq: AtomicU32::new(1),
        };
        match client.get("knat-probe") {
            Ok(_) | Err(NfacctError::NotFound(_)) => Ok(client),
            Err(NfacctError::Kernel { errno, .. }) => Err(NfacctError::Unsupported(format!(
                "the kernel answered {errno} (no nfnetlink_acct?)"
            ))),
            Err(other) => Err(NfacctError::Unsupported(other.to_string())),
        }
    }

    fn check_name(name: &str) -> Result<(), NfacctError> {
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('\0') {
            return Err(NfacctError::Name(name.to_string()));
        }
        Ok(())
    }

    fn transact(
        &self,
        operation: &'static str,
        command: u16,
        flags: u16,
        name: &str,
    ) -> Result<Vec<Counter>, NfacctError> {
        Self::check_name(name)?;
        let kernel = |errno: Errno| NfacctError::Kernel {
            operation,
            name: name.to_string(),
            errno,
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let message = request(command, flags, seq, name);
        let fd = self
            .socket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        sendto(
            fd.as_raw_fd(),
            &message,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(kernel)?;
        let mut buffer = vec![0u8; 16 * 1024];
        let mut seen = Vec::new();
        loop {
            let n = recv(fd.as_raw_fd(), &mut buffer, MsgFlags::empty()).map_err(kernel)?;
            match parse_replies(&buffer[..n], seq, seen)? {
                Reply::Ok(counters) => return Ok(counters),
                Reply::Error(code) if code == Errno::ENOENT as i32 => {
                    return Err(NfacctError::NotFound(name.to_string()));
                }
                Reply::Error(code) => return Err(kernel(Errno::from_raw(code))),
                Reply::Incomplete(counters) => seen = counters,
            }
        }
    }

    /// The counter `name` (`NotFound` when it does not exist).
    pub fn get(&self, name: &str) -> Result<Counter, NfacctError> {
        let counters = self.transact("get", NFNL_MSG_ACCT_GET, 0, name)?;
        counters
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| NfacctError::NotFound(name.to_string()))
    }

    /// Creates `name` unless it exists (upstream's `Ensure`). Returns true when it was created.
    pub fn ensure(&self, name: &str) -> Result<bool, NfacctError> {
        match self.get(name) {
            Ok(_) => Ok(false),
            Err(NfacctError::NotFound(_)) => {
                match self.transact("create", NFNL_MSG_ACCT_NEW, NLM_F_CREATE, name) {
                    Ok(_) => Ok(true),
                    // Created in the meantime by someone else.
                    Err(NfacctError::Kernel {
                        errno: Errno::EBUSY,
                        ..
                    }) => Ok(false),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Ensures both of kube-proxy's counters (the condition for the `-m nfacct` clauses); the
    /// error is the first counter's that could not be made.
    pub fn ensure_counters(&self) -> Result<(), NfacctError> {
        for name in COUNTERS {
            self.ensure(name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::netlink_wire::attribute;

    fn header(len: usize, kind: u16, seq: u32) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(len as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out
    }

    /// A counter message as the kernel sends it (`NFACCT_USE` included, to be skipped).
    fn counter_message(seq: u32, name: &str, packets: u64, bytes: u64) -> Vec<u8> {
        let mut body = vec![0, 0, 0, 0];
        let mut text = name.as_bytes().to_vec();
        text.push(0);
        body.extend(attribute(NFACCT_NAME, &text));
        body.extend(attribute(NFACCT_PKTS, &packets.to_be_bytes()));
        body.extend(attribute(NFACCT_BYTES, &bytes.to_be_bytes()));
        body.extend(attribute(4, &1u32.to_be_bytes()));
        let mut out = header(NLMSG_HDRLEN + body.len(), NFNL_SUBSYS_ACCT << 8, seq);
        out.extend(body);
        out
    }

    fn ack(seq: u32, errno: i32) -> Vec<u8> {
        let mut out = header(NLMSG_HDRLEN + 4 + NLMSG_HDRLEN, NLMSG_ERROR, seq);
        out.extend_from_slice(&(-errno).to_ne_bytes());
        out.extend(header(NLMSG_HDRLEN, 0, seq));
        out
    }

    #[test]
    fn request_layout() {
        let bytes = request(
            NFNL_MSG_ACCT_NEW,
            NLM_F_CREATE,
            7,
            "ct_state_invalid_dropped_pkts",
        );
        // 16 header + 4 nfgenmsg + align4(4 + 29 + 1) = 56.
        assert_eq!(bytes.len(), 56);
        assert_eq!(u32_at(&bytes, 0), Some(56));
        assert_eq!(u16_at(&bytes, 4), Some(0x0700));
        assert_eq!(u16_at(&bytes, 6), Some(0x0405));
        assert_eq!(u32_at(&bytes, 8), Some(7));
        assert_eq!(u16_at(&bytes, 20), Some(34));
        assert_eq!(u16_at(&bytes, 22), Some(NFACCT_NAME));
        assert_eq!(&bytes[24..53], b"ct_state_invalid_dropped_pkts");
        assert_eq!(&bytes[53..], &[0, 0, 0]);
        let get = request(NFNL_MSG_ACCT_GET, 0, 8, "ab");
        assert_eq!(get.len(), 28);
        assert_eq!(u16_at(&get, 4), Some(0x0701));
        assert_eq!(u16_at(&get, 6), Some(0x0005));
    }

    #[test]
    fn replies_decode_counters_acks_and_errors() {
        let mut datagram = counter_message(5, "localhost_nps_accepted_pkts", 3, 180);
        datagram.extend(ack(5, 0));
        assert_eq!(
            parse_replies(&datagram, 5, Vec::new()).ok(),
            Some(Reply::Ok(vec![Counter {
                name: "localhost_nps_accepted_pkts".into(),
                packets: 3,
                bytes: 180
            }]))
        );
        // A counter alone asks for more; the acknowledgement in the next datagram ends it.
        let first = counter_message(6, "x", 1, 2);
        let Ok(Reply::Incomplete(seen)) = parse_replies(&first, 6, Vec::new()) else {
            panic!("a counter without an ack is incomplete");
        };
        assert_eq!(
            parse_replies(&ack(6, 0), 6, seen).ok(),
            Some(Reply::Ok(vec![Counter {
                name: "x".into(),
                packets: 1,
                bytes: 2
            }]))
        );
        assert_eq!(
            parse_replies(&ack(9, 2), 9, Vec::new()).ok(),
            Some(Reply::Error(2))
        );
        // Another request's answer is ignored.
        assert_eq!(
            parse_replies(&ack(4, 2), 9, Vec::new()).ok(),
            Some(Reply::Incomplete(Vec::new()))
        );
    }

    #[test]
    fn malformed_replies_are_errors() {
        let mut truncated = counter_message(5, "x", 1, 2);
        truncated.truncate(30);
        assert!(parse_replies(&truncated, 5, Vec::new()).is_err());
        // A counter without its packet count.
        let mut body = vec![0, 0, 0, 0];
        body.extend(attribute(NFACCT_NAME, b"x\0"));
        let mut message = header(NLMSG_HDRLEN + body.len(), NFNL_SUBSYS_ACCT << 8, 5);
        message.extend(body);
        assert!(matches!(
            parse_replies(&message, 5, Vec::new()),
            Err(NfacctError::Malformed(_))
        ));
    }

    #[test]
    fn names_are_checked() {
        assert!(Nfacct::check_name("ct_state_invalid_dropped_pkts").is_ok());
        assert!(Nfacct::check_name("").is_err());
        assert!(Nfacct::check_name(&"x".repeat(32)).is_err());
    }
}
