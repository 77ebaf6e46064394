//! The netlink wire format shared by knat's two nfnetlink clients (`nfacct` counters and the
//! `nft_chains` dump): header constants, alignment and native-endian reads.

/// Flags of `nlmsghdr`.
pub const NLM_F_REQUEST: u16 = 0x1;
/// Message types every netlink family uses.
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
/// `sizeof(struct nlmsghdr)` and `sizeof(struct nfgenmsg)`.
pub const NLMSG_HDRLEN: usize = 16;
pub const NFGENMSG_LEN: usize = 4;
/// The attribute type without the nested / byte-order flags.
pub const NLA_TYPE_MASK: u16 = 0x3fff;

/// `n` rounded up to netlink's 4-byte alignment.
pub fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The native-endian u16 at `at`, if the bytes are there.
pub fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

/// The native-endian u32 at `at`, if the bytes are there.
pub fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// One attribute (`nlattr` header, data, padding), as the kernel writes it: for tests that
/// build kernel replies.
#[cfg(test)]
pub fn attribute(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(
        &u16::try_from(4 + data.len())
            .unwrap_or(u16::MAX)
            .to_ne_bytes(),
    );
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(align4(out.len()), 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stop_at_the_end_and_attributes_are_padded() {
        assert_eq!(align4(5), 8);
        assert_eq!(align4(8), 8);
        assert_eq!(u16_at(&[1, 0], 0), Some(u16::from_ne_bytes([1, 0])));
        assert_eq!(u32_at(&[1, 2, 3], 0), None);
        assert_eq!(attribute(3, b"abcde").len(), 12);
    }
}
