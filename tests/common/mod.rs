//! Shared by the test binaries (fixtures in `tests/fixtures/`, cold-start plans) and by the
//! render benchmark (`bench/render.rs` includes this module for [`first_sync`]).

use knat::config::{LocalDetector, ProxyConfig};
use knat::input::{Source, load};
use knat::model::{IpFamily, Snapshot};
use knat::rules::compile::IncrementalCompiler;
use knat::rules::plan::SyncKind;
use knat::rules::{
    AppliedState, ChainOrder, Plan, RuleSet, compile, plan_with_hooks, render_standalone,
};

/// The snapshot of a fixture and the configuration for `node` (the fixtures' pod CIDRs as the
/// local detector, `tweak` applied).
#[allow(dead_code)] // not every test binary that includes this module uses every helper
pub fn load_fixture(
    fixture: &str,
    node: &str,
    family: IpFamily,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> (knat::model::Snapshot, ProxyConfig) {
    let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture exists");
    let source = Source {
        name: fixture.into(),
        text,
    };
    let loaded = load(&[source], node).expect("fixture parses");
    let mut cfg = ProxyConfig::new(node, family).expect("valid node name");
    let cidrs = [
        "10.244.0.0/16".parse().expect("cidr"),
        "fd00:10:244::/48".parse().expect("cidr"),
    ];
    cfg.local_detector = LocalDetector::from_cidrs(&cidrs, family);
    tweak(&mut cfg);
    (loaded.snapshot, cfg)
}

/// The complete payload for `node` from a fixture (see [`load_fixture`]).
#[allow(dead_code)]
pub fn render_fixture(
    fixture: &str,
    node: &str,
    family: IpFamily,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> String {
    let (snapshot, cfg) = load_fixture(fixture, node, family, tweak);
    render_standalone(&compile(&snapshot, &cfg).rules)
}

/// The cold-start plan of a fresh compilation: a full sync from nothing, every hook inserted
/// by the restore, chains in `order`.
#[allow(dead_code)]
pub fn cold_start_plan(rules: &RuleSet, order: ChainOrder) -> Plan {
    let hooks: Vec<_> = rules.hooks.iter().collect();
    plan_with_hooks(
        &AppliedState::default(),
        rules,
        SyncKind::Full,
        &[],
        &hooks,
        order,
    )
    .expect("a fresh compilation has all its text")
}

/// The agent's first full sync with an incremental compiler: compile everything and plan it
/// onto an empty kernel, without hooks (the compiled result is dropped, as the agent drops it
/// before releasing text).
#[allow(dead_code)]
pub fn first_sync(compiler: &mut IncrementalCompiler, snap: &Snapshot, cfg: &ProxyConfig) -> Plan {
    let compiled = compiler.compile(snap, cfg);
    plan_with_hooks(
        &AppliedState::default(),
        &compiled.rules,
        SyncKind::Full,
        &[],
        &[],
        ChainOrder::Descending,
    )
    .expect("a fresh compilation has all its text")
}
