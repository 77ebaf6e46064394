//! From a snapshot to iptables rules: chain naming, typed rules, compilation, planning, rendering.
//!
//! `compile` is pure: `compile(&Snapshot, &ProxyConfig) -> Compiled`. `render` turns a rule set
//! into `iptables-restore` text, and `plan` decides which chains a `--noflush` restore must
//! rewrite given what was applied before.

pub mod chain;
pub mod compile;
pub mod dispatch;
pub mod layered;
pub mod local_traffic;
pub mod payload;
pub mod plan;
pub mod port_dispatch;
pub mod render;
pub mod rule;
pub mod service_list;

pub use chain::ChainName;
pub use compile::{Compiled, ServiceHealth, compile};
pub use plan::{
    AppliedState, ChainOrder, Plan, PlanError, PlanStats, PlannedRestore, plan, plan_restore,
    plan_with_hooks,
};
pub use render::render_standalone;
pub use rule::{ChainGroup, Match, Rule, RuleSet, RuleText, Table, TableName, Target};
