//! A planned `iptables-restore` payload as pieces of text, written without building it.
//!
//! [`super::plan`] decides which chains a restore declares, writes and deletes; a
//! [`TablePayload`] keeps that decision for one table as references into the rule set, and a
//! [`Payload`] is the tables in order. Turning it into bytes goes through [`Piece`]s only,
//! either one after another into a `String` ([`Payload::to_text`], for tests and benchmarks)
//! or in bounded chunks for a pipe ([`Chunks`], what the agent writes to the restore's stdin):
//! the same pieces, so the same bytes. At 10,000 Services the full payload is 33 MB; streamed,
//! what exists of it at any time is one chunk ([`CHUNK_BYTES`]).

use std::iter::Peekable;

use super::chain::ChainName;
use super::rule::{ChainText, TableName};

/// One piece of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Written as it is: a chain's rule lines, a hook line, `COMMIT`, or a line the writer
    /// inserts after a header.
    Text(&'a str),
    /// `*table`
    Header(TableName),
    /// `:CHAIN - [0:0]` (declared: created, or flushed under `--noflush`).
    Declare(&'a str),
    /// `-X CHAIN`
    Delete(&'a ChainName),
}

const DECLARE_TAIL: &str = " - [0:0]\n";
const COMMIT: &str = "COMMIT\n";

impl Piece<'_> {
    /// Its length in bytes, as [`Piece::write_to`] writes it.
    pub fn len(&self) -> usize {
        match self {
            Piece::Text(text) => text.len(),
            Piece::Header(table) => table.as_str().len() + 2,
            Piece::Declare(name) => 1 + name.len() + DECLARE_TAIL.len(),
            Piece::Delete(name) => 3 + name.as_str().len() + 1,
        }
    }

    /// True for a piece with no bytes (an empty text).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the piece's text to `out`.
    pub fn write_to(&self, out: &mut String) {
        match self {
            Piece::Text(text) => out.push_str(text),
            Piece::Header(table) => {
                out.push('*');
                out.push_str(table.as_str());
                out.push('\n');
            }
            Piece::Declare(name) => {
                out.push(':');
                out.push_str(name);
                out.push_str(DECLARE_TAIL);
            }
            Piece::Delete(name) => {
                out.push_str("-X ");
                out.push_str(name.as_str());
                out.push('\n');
            }
        }
    }
}

/// One table's `*table ... COMMIT` section: declarations first (written chains, then deleted
/// ones), then the rules of the written chains, copied straight from the rule set, then the
/// deletions and the hook lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePayload<'a> {
    table: TableName,
    written: Vec<ChainText<'a>>,
    deletes: Vec<ChainName>,
    /// Whole lines (`-I CHAIN 1 ...\n`), in the order they are written.
    hook_lines: Vec<String>,
}

impl<'a> TablePayload<'a> {
    /// A section that writes `written` and deletes `deletes`, in the given orders, then runs
    /// `hook_lines` (each one whole line).
    pub fn new(
        table: TableName,
        written: Vec<ChainText<'a>>,
        deletes: Vec<ChainName>,
        hook_lines: Vec<String>,
    ) -> Self {
        TablePayload {
            table,
            written,
            deletes,
            hook_lines,
        }
    }

    pub fn table(&self) -> TableName {
        self.table
    }

    /// How many `:CHAIN` lines the section has (what iptables-nft's bulk workaround counts).
    pub fn declared(&self) -> usize {
        self.written.len() + self.deletes.len()
    }

    /// The chains written, in payload order.
    pub fn written(&self) -> &[ChainText<'a>] {
        &self.written
    }

    /// The chains deleted, in payload order.
    pub fn deletes(&self) -> &[ChainName] {
        &self.deletes
    }

    /// The section's pieces; `after_header`, when given, is written right after the `*table`
    /// line (the backend's `-Z` on iptables-nft).
    pub fn pieces<'s>(
        &'s self,
        after_header: Option<&'s str>,
    ) -> impl Iterator<Item = Piece<'s>> + Send + 's {
        let declarations = self
            .written
            .iter()
            .map(|c| c.name())
            .chain(self.deletes.iter().map(ChainName::as_str))
            .map(Piece::Declare);
        std::iter::once(Piece::Header(self.table))
            .chain(after_header.map(Piece::Text))
            .chain(declarations)
            .chain(self.written.iter().map(|c| Piece::Text(c.as_str())))
            .chain(self.deletes.iter().map(Piece::Delete))
            .chain(self.hook_lines.iter().map(|l| Piece::Text(l)))
            .chain(std::iter::once(Piece::Text(COMMIT)))
    }
}

/// The sections of one restore, in order; empty when nothing needs to change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload<'a> {
    tables: Vec<TablePayload<'a>>,
}

impl<'a> Payload<'a> {
    pub fn new(tables: Vec<TablePayload<'a>>) -> Self {
        Payload { tables }
    }

    pub fn tables(&self) -> &[TablePayload<'a>] {
        &self.tables
    }

    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Every piece, in order.
    pub fn pieces(&self) -> impl Iterator<Item = Piece<'_>> + Send + '_ {
        self.tables.iter().flat_map(|t| t.pieces(None))
    }

    /// Its length in bytes (counted from the pieces; nothing is written).
    pub fn len(&self) -> usize {
        self.pieces().map(|p| p.len()).sum()
    }

    /// The whole payload as one string.
    pub fn to_text(&self) -> String {
        let mut out = String::with_capacity(self.len());
        for piece in self.pieces() {
            piece.write_to(&mut out);
        }
        out
    }
}

/// The size of the chunks [`Chunks`] hands out: a Linux pipe's default capacity.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// Pieces gathered into chunks of at least `limit` bytes (the last may be shorter): small
/// pieces are copied into one reused buffer, a text piece of `limit` bytes or more is handed
/// out as it is (never copied).
pub struct Chunks<'p, I: Iterator<Item = Piece<'p>>> {
    pieces: Peekable<I>,
    buf: String,
    limit: usize,
}

impl<'p, I: Iterator<Item = Piece<'p>>> Chunks<'p, I> {
    pub fn new(pieces: I, limit: usize) -> Self {
        Chunks {
            pieces: pieces.peekable(),
            buf: String::new(),
            limit: limit.max(1),
        }
    }

    /// The next chunk; `None` once every piece was handed out. Never an empty chunk.
    pub fn next_chunk(&mut self) -> Option<&str> {
        self.buf.clear();
        while let Some(piece) = self.pieces.peek().copied() {
            if let Piece::Text(text) = piece
                && text.len() >= self.limit
            {
                if !self.buf.is_empty() {
                    break;
                }
                self.pieces.next();
                return Some(text);
            }
            self.pieces.next();
            piece.write_to(&mut self.buf);
            if self.buf.len() >= self.limit {
                break;
            }
        }
        (!self.buf.is_empty()).then_some(self.buf.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::rule::RuleText;

    /// A chain with the given rules (what follows `-A CHAIN `).
    fn chain(name: &str, rules: &[&str]) -> RuleText {
        let mut text = RuleText::new(ChainName::new(name));
        for rule in rules {
            text.push_rendered(rule);
        }
        text
    }

    #[test]
    fn a_section_declares_writes_deletes_then_hooks_and_commits() {
        let svc = chain("KUBE-SVC-A", &["-j KUBE-SEP-B"]);
        let sep = chain("KUBE-SEP-B", &["-j DNAT --to-destination 10.0.0.1:80"]);
        let table = TablePayload::new(
            TableName::Nat,
            vec![svc.view(), sep.view()],
            vec![ChainName::new("KUBE-SEP-OLD")],
            vec!["-I PREROUTING 1 -j KUBE-SERVICES\n".to_string()],
        );
        assert_eq!(table.declared(), 3);
        let payload = Payload::new(vec![table]);
        let expected = "*nat\n:KUBE-SVC-A - [0:0]\n:KUBE-SEP-B - [0:0]\n:KUBE-SEP-OLD - [0:0]\n\
            -A KUBE-SVC-A -j KUBE-SEP-B\n-A KUBE-SEP-B -j DNAT --to-destination 10.0.0.1:80\n\
            -X KUBE-SEP-OLD\n-I PREROUTING 1 -j KUBE-SERVICES\nCOMMIT\n";
        assert_eq!(payload.to_text(), expected);
        assert_eq!(payload.len(), expected.len());
        let zeroed: String = {
            let mut out = String::new();
            for piece in payload.tables()[0].pieces(Some("-Z\n")) {
                piece.write_to(&mut out);
            }
            out
        };
        assert_eq!(zeroed, expected.replacen("*nat\n", "*nat\n-Z\n", 1));
        assert!(Payload::default().is_empty());
        assert_eq!(Payload::default().to_text(), "");
    }

    #[test]
    fn chunks_join_to_the_text_and_respect_the_limit() {
        let big_line = "x".repeat(300);
        let big = chain("BIG", &[&big_line, &big_line]);
        let small: Vec<RuleText> = (0..40)
            .map(|i| chain(&format!("C{i}"), &["-j RETURN"]))
            .collect();
        let mut written: Vec<ChainText<'_>> = small.iter().map(RuleText::view).collect();
        written.insert(7, big.view());
        let payload = Payload::new(vec![TablePayload::new(
            TableName::Filter,
            written,
            vec![],
            vec![],
        )]);
        let text = payload.to_text();
        for limit in [1, 2, 17, 64, 600, 1 << 20] {
            let mut chunks = Chunks::new(payload.pieces(), limit);
            let mut joined = String::new();
            let mut sizes = Vec::new();
            while let Some(chunk) = chunks.next_chunk() {
                assert!(!chunk.is_empty());
                sizes.push(chunk.len());
                joined.push_str(chunk);
            }
            assert_eq!(joined, text, "limit {limit}");
            // A chunk is at most one piece past the limit (or one large piece alone).
            let longest_piece = payload.pieces().map(|p| p.len()).max().unwrap_or(0);
            assert!(
                sizes.iter().all(|&s| s < limit + longest_piece),
                "{sizes:?}"
            );
            if limit == 1 << 20 {
                assert_eq!(sizes.len(), 1);
            }
        }
    }

    #[test]
    fn a_large_text_piece_is_handed_out_without_a_copy() {
        let line = "y".repeat(100);
        let big = chain("BIG", &[&line, &line, &line]);
        let payload = Payload::new(vec![TablePayload::new(
            TableName::Nat,
            vec![big.view()],
            vec![],
            vec![],
        )]);
        let mut chunks = Chunks::new(payload.pieces(), 64);
        let mut handed = Vec::new();
        while let Some(chunk) = chunks.next_chunk() {
            handed.push((chunk.as_ptr(), chunk.len()));
        }
        assert!(
            handed
                .iter()
                .any(|&(ptr, len)| ptr == big.as_str().as_ptr() && len == big.as_str().len()),
            "the chain's own text is one chunk"
        );
    }
}
