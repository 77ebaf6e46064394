//! `iptables-save` / `iptables-restore` text: parsing, a model of restore semantics, and the
//! packet tracer behind `knat trace`.
//!
//! Everything here is pure: functions over strings and values, no processes, no I/O.
//!
//! - [`parse`](mod@parse): text (save output or restore input) to table blocks.
//! - [`restore`]: `iptables-restore [--noflush]` semantics ([`apply_restore`]) and a canonical
//!   rendering ([`to_save_text`]).
//! - [`read`]: text to a [`Dump`] ([`parse()`]), the blocks replayed leniently.
//!
//! Each dependency points one way: `read` → `restore` → `parse` → `rule` → `extensions`, and
//! `report` → `trace` (`report` formats what `trace` returns; `trace` does not import it).
//! - [`trace`](mod@trace): follow one new connection through a dump ([`trace()`], [`format_text`]).
//!
//! The building blocks: [`words`] (tokenizer and quoting), [`values`] (option values),
//! [`matches`](mod@matches) and [`target`] (the typed rule model), [`extensions`] (which options each
//! extension takes and how they become typed), [`rule`] (one rule), [`model`] (tables and
//! chains), [`eval`] (match evaluation) and [`report`] (text output of a trace).

pub mod eval;
pub mod extensions;
pub mod matches;
pub mod model;
pub mod parse;
pub mod read;
pub mod report;
pub mod restore;
pub mod rule;
pub mod target;
pub mod trace;
pub mod values;
pub mod words;

pub use matches::{CtState, Direction, Match, PortRange, Recent, RecentMode, StatisticMode};
pub use model::{Chain, Dump, Rule, Table};
pub use parse::{ParseError, ParseReason, parse_payload, parse_rule_spec};
pub use read::parse;
pub use report::format_text;
pub use restore::{RestoreError, apply_restore, to_save_text};
pub use target::{NatAddr, Target};
pub use trace::{Branch, Step, TraceRequest, TraceResult, Verdict, trace};
