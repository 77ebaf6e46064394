//! Reading a dump as `knat trace` and `knat diff` need it: the table blocks of
//! [`super::parse`] replayed leniently by [`super::restore`] into one [`Dump`].

use super::model::Dump;
use super::parse::{ParseError, ParseReason, parse_payload};
use super::restore::{Mode, replay};

/// Parses text into a [`Dump`]. Tables are replayed leniently and in `--noflush` style (a later
/// block for the same table adds to it): rules may name chains that are not declared (they are
/// created) and jumps are not checked, so a partial dump can still be traced. Use
/// [`super::restore::apply_restore`] for iptables-restore's strict semantics.
pub fn parse(text: &str) -> Result<Dump, ParseError> {
    let mut dump = Dump::default();
    for block in parse_payload(text)? {
        let table = replay(&dump, &block, true, Mode::Lenient).map_err(|e| ParseError {
            line: e.line(),
            text: e.text().to_string(),
            reason: ParseReason::Rejected(e.to_string()),
            table: Some(block.name.clone()),
        })?;
        dump.tables.insert(block.name.clone(), table);
    }
    Ok(dump)
}
