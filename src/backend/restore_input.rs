//! What a command reads on stdin: text parts and planned tables, in order, never joined.
//!
//! [`RestoreInput`] holds references only: prepared text (the canary sections, a cleanup
//! payload, the `-Z` lines of iptables-nft) and the planner's sections ([`TablePayload`]),
//! whose rule text stays in the rule set. [`RestoreInput::chunks`] hands the bytes out in
//! chunks of [`CHUNK_BYTES`] for the pipe, and the same pieces can be walked again after a
//! failure to show the lines around the one the restore named ([`RestoreInput::line_context`]),
//! so the payload is never resident as one string.

use crate::rules::payload::{CHUNK_BYTES, Chunks, Payload, Piece, TablePayload};

/// One part of the input.
#[derive(Debug, Clone, Copy)]
enum Part<'a> {
    Text(&'a str),
    /// A planned section, with a line written right after its `*table` header.
    Table {
        table: &'a TablePayload<'a>,
        after_header: Option<&'static str>,
    },
}

/// The input of one command, in order.
#[derive(Debug, Clone, Default)]
pub struct RestoreInput<'a> {
    parts: Vec<Part<'a>>,
}

impl<'a> RestoreInput<'a> {
    pub fn new() -> Self {
        RestoreInput::default()
    }

    /// Text parts, one after another.
    pub fn of_text(parts: &[&'a str]) -> Self {
        let mut input = RestoreInput::new();
        for part in parts {
            input.push_text(part);
        }
        input
    }

    /// Appends text as it is.
    pub fn push_text(&mut self, text: &'a str) {
        self.parts.push(Part::Text(text));
    }

    /// Appends a planned section; `after_header` is written right after its `*table` line.
    pub fn push_table(&mut self, table: &'a TablePayload<'a>, after_header: Option<&'static str>) {
        self.parts.push(Part::Table {
            table,
            after_header,
        });
    }

    /// Appends every section of `payload` with no inserted line.
    pub fn push_payload(&mut self, payload: &'a Payload<'a>) {
        for table in payload.tables() {
            self.push_table(table, None);
        }
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.pieces().all(|p| p.is_empty())
    }

    /// Every piece, in order.
    pub fn pieces(&self) -> impl Iterator<Item = Piece<'a>> + Send + 'a {
        let parts = self.parts.clone();
        parts.into_iter().flat_map(|part| -> PartPieces<'a> {
            match part {
                Part::Text(text) => Box::new(std::iter::once(Piece::Text(text))),
                Part::Table {
                    table,
                    after_header,
                } => Box::new(table.pieces(after_header)),
            }
        })
    }

    /// The bytes in chunks for a pipe.
    pub fn chunks(&self) -> Chunks<'a, impl Iterator<Item = Piece<'a>> + Send + 'a> {
        Chunks::new(self.pieces(), CHUNK_BYTES)
    }

    /// The whole input as one string (tests, error messages of small inputs).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for piece in self.pieces() {
            piece.write_to(&mut out);
        }
        out
    }

    /// Lines `line - around ..= line + around`, numbered, `line` marked (as
    /// [`super::line_context`] shows them), read from the pieces without joining them.
    pub fn line_context(&self, line: usize, around: usize) -> String {
        let mut window = LineWindow::new(line, around);
        let mut chunks = self.chunks();
        while let Some(chunk) = chunks.next_chunk() {
            if !window.feed(chunk) {
                break;
            }
        }
        window.finish()
    }
}

type PartPieces<'a> = Box<dyn Iterator<Item = Piece<'a>> + Send + 'a>;

/// Collects a window of lines from text fed in pieces that may split lines anywhere.
pub struct LineWindow {
    line: usize,
    first: usize,
    last: usize,
    /// The number of the line being read (1-based).
    current: usize,
    partial: String,
    kept: Vec<String>,
}

impl LineWindow {
    pub fn new(line: usize, around: usize) -> Self {
        LineWindow {
            line,
            first: line.saturating_sub(around).max(1),
            last: line.saturating_add(around),
            current: 1,
            partial: String::new(),
            kept: Vec::new(),
        }
    }

    fn wanted(&self) -> bool {
        (self.first..=self.last).contains(&self.current)
    }

    /// Reads more text; false once the window is complete.
    pub fn feed(&mut self, text: &str) -> bool {
        for segment in text.split_inclusive('\n') {
            if self.current > self.last {
                return false;
            }
            let (body, ended) = match segment.strip_suffix('\n') {
                Some(body) => (body, true),
                None => (segment, false),
            };
            if self.wanted() {
                self.partial.push_str(body);
            }
            if ended {
                self.end_line();
            }
        }
        self.current <= self.last
    }

    fn end_line(&mut self) {
        if self.wanted() {
            let text = std::mem::take(&mut self.partial);
            let mark = if self.current == self.line {
                ">>"
            } else {
                "  "
            };
            self.kept
                .push(format!("{mark} {:>6}: {text}", self.current));
        }
        self.current += 1;
    }

    /// The numbered lines (a last line without a newline counts).
    pub fn finish(mut self) -> String {
        if !self.partial.is_empty() {
            self.end_line();
        }
        self.kept.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_read_in_any_split_equals_the_window_of_the_whole_text() {
        let text = "l1\nl2\n\nl4 long line\nl5\nl6\nl7\nl8 last without newline";
        for line in 1..=9 {
            for around in [0, 1, 3] {
                let whole = super::super::line_context(text, line, around);
                for step in 1..=text.len() {
                    let mut window = LineWindow::new(line, around);
                    let mut rest = text;
                    while !rest.is_empty() {
                        let cut = (1..=step.min(rest.len()))
                            .rev()
                            .find(|&c| rest.is_char_boundary(c))
                            .unwrap_or(rest.len());
                        let (head, tail) = rest.split_at(cut);
                        if !window.feed(head) {
                            break;
                        }
                        rest = tail;
                    }
                    assert_eq!(
                        window.finish(),
                        whole,
                        "line {line} around {around} step {step}"
                    );
                }
            }
        }
    }

    #[test]
    fn text_parts_are_written_in_order_and_context_spans_them() {
        let input = RestoreInput::of_text(&["*nat\n:A - ", "[0:0]\n-A A -j B\n", "COMMIT\n"]);
        assert_eq!(input.to_text(), "*nat\n:A - [0:0]\n-A A -j B\nCOMMIT\n");
        assert!(!input.is_empty());
        assert!(RestoreInput::of_text(&["", ""]).is_empty());
        assert_eq!(
            input.line_context(2, 1),
            "        1: *nat\n>>      2: :A - [0:0]\n        3: -A A -j B"
        );
    }
}
