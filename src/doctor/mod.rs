//! `knat doctor`'s analysis: is this node's identity right, how is each
//! `externalTrafficPolicy: Local` service spread over the nodes, and which Services cannot work.
//!
//! Pure: it reads an [`Inventory`] of raw objects (listed from the API or read from files by the
//! CLI) and returns a [`Report`]; no I/O, no clock. [`view`] converts the objects as the proxy
//! does while keeping what the proxy skips, [`imbalance`] is the load arithmetic, [`advice`]
//! writes the scheduling snippets, [`analyze`](mod@analyze) runs the checks and [`render`]
//! prints the table and JSON.

pub mod advice;
pub mod analyze;
pub mod imbalance;
pub mod render;
pub mod view;

pub use analyze::{Finding, NodeArg, Options, Report, Severity, analyze};
pub use imbalance::Spread;
pub use view::{Inventory, View};

/// Doctor errors.
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// The report could not be serialised as JSON. Not retryable (a bug).
    #[error("cannot write the report as JSON: {0}")]
    Json(#[source] serde_json::Error),
}

/// Converts the inventory and runs every check.
pub fn diagnose(inventory: &Inventory, options: &Options) -> Report {
    analyze(&View::build(inventory), options)
}
