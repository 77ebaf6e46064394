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

/// What was wrong with a message's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadAttribute(pub &'static str);

/// The attributes (`nlattr`: length, type, data, padding to 4 bytes) that fill `bytes`, as
/// (type without the nested / byte-order flags, data). A header cut short or a length that
/// overruns `bytes` ends the walk with one error.
pub fn attributes(bytes: &[u8]) -> Attributes<'_> {
    Attributes {
        bytes,
        at: 0,
        failed: false,
    }
}

/// The iterator of [`attributes`].
pub struct Attributes<'a> {
    bytes: &'a [u8],
    at: usize,
    failed: bool,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Result<(u16, &'a [u8]), BadAttribute>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.at + 4 > self.bytes.len() {
            return None;
        }
        let at = self.at;
        let header = u16_at(self.bytes, at).zip(u16_at(self.bytes, at + 2));
        let item = match header {
            Some((len, kind))
                if usize::from(len) >= 4 && at + usize::from(len) <= self.bytes.len() =>
            {
                let len = usize::from(len);
                self.at = at + align4(len);
                Ok((kind & NLA_TYPE_MASK, &self.bytes[at + 4..at + len]))
            }
            _ => Err(BadAttribute("attribute overruns the message")),
        };
        self.failed = item.is_err();
        Some(item)
    }
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

    #[test]
    fn attributes_walk_padding_and_flags_and_stop_at_an_overrun() {
        let mut bytes = attribute(3 | 0x8000, b"abcde");
        bytes.extend(attribute(7, b"xy"));
        let walked: Vec<_> = attributes(&bytes).collect();
        assert_eq!(walked, vec![Ok((3, &b"abcde"[..])), Ok((7, &b"xy"[..]))]);
        let mut bad = attribute(1, b"ok");
        bad.extend_from_slice(&40u16.to_ne_bytes());
        bad.extend_from_slice(&2u16.to_ne_bytes());
        let walked: Vec<_> = attributes(&bad).collect();
        assert_eq!(walked.len(), 2, "one error, then the walk ends");
        assert_eq!(
            walked[1],
            Err(BadAttribute("attribute overruns the message"))
        );
        let short = [0u8; 3];
        assert_eq!(
            attributes(&short).count(),
            0,
            "a tail under a header is padding"
        );
    }
}
