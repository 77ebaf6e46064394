//! The iptables backends a lab programs its nodes with, and their binaries' names (always the
//! explicit `iptables-nft-*` / `iptables-legacy-*`, never through `update-alternatives`).

use super::LabError;
use super::scenario::Family;

/// Which iptables backend programs the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// `iptables-nft-restore` (nf_tables).
    Nft,
    /// `iptables-legacy-restore` (x_tables).
    Legacy,
}

impl Backend {
    /// Both backends.
    pub const ALL: [Backend; 2] = [Backend::Nft, Backend::Legacy];

    /// The restore binary of a family, called by its explicit name (never through
    /// `update-alternatives`).
    pub fn restore(self, family: Family) -> &'static str {
        match (self, family) {
            (Backend::Nft, Family::V4) => "iptables-nft-restore",
            (Backend::Nft, Family::V6) => "ip6tables-nft-restore",
            (Backend::Legacy, Family::V4) => "iptables-legacy-restore",
            (Backend::Legacy, Family::V6) => "ip6tables-legacy-restore",
        }
    }

    /// The save binary of a family.
    pub fn save(self, family: Family) -> &'static str {
        match (self, family) {
            (Backend::Nft, Family::V4) => "iptables-nft-save",
            (Backend::Nft, Family::V6) => "ip6tables-nft-save",
            (Backend::Legacy, Family::V4) => "iptables-legacy-save",
            (Backend::Legacy, Family::V6) => "ip6tables-legacy-save",
        }
    }

    /// Extra arguments for restore: legacy takes the global xtables lock, so wait for it.
    pub(super) fn restore_args(self) -> &'static [&'static str] {
        match self {
            Backend::Nft => &[],
            Backend::Legacy => &["-w", "10"],
        }
    }

    /// `nft` or `legacy`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Legacy => "legacy",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = LabError;

    /// Parses `nft` or `legacy` (so a CLI can take `--backend nft|legacy`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "nft" => Ok(Backend::Nft),
            "legacy" => Ok(Backend::Legacy),
            other => Err(LabError::Usage(format!(
                "unknown iptables backend {other:?}: use nft or legacy"
            ))),
        }
    }
}
