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

/// The payload text as the planner wrote it before it streamed: its `write_table` (declarations,
/// rules, deletions, hooks in reverse, `COMMIT`, per table), kept here as the oracle that the
/// pieces of [`knat::rules::payload::Payload`] are checked against. `hooks` are the hooks the
/// plan was given.
#[allow(dead_code)]
pub fn payload_text_as_before(
    payload: &knat::rules::payload::Payload<'_>,
    hooks: &[&knat::rules::rule::Hook],
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for table in payload.tables() {
        let _ = writeln!(out, "*{}", table.table().as_str());
        for name in table
            .written()
            .iter()
            .map(|c| c.name())
            .chain(table.deletes().iter().map(|c| c.as_str()))
        {
            out.push(':');
            out.push_str(name);
            out.push_str(" - [0:0]\n");
        }
        for chain_rules in table.written() {
            out.push_str(chain_rules.as_str());
        }
        for name in table.deletes() {
            let _ = writeln!(out, "-X {name}");
        }
        for hook in hooks.iter().rev().filter(|h| h.table == table.table()) {
            let _ = write!(out, "-I {} 1 ", hook.chain);
            hook.rule.write_to(&mut out);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// The payload as the restore's stdin gets it: its chunks (of at least `limit` bytes) joined.
#[allow(dead_code)]
pub fn streamed_text(payload: &knat::rules::payload::Payload<'_>, limit: usize) -> String {
    let mut chunks = knat::rules::payload::Chunks::new(payload.pieces(), limit);
    let mut out = String::new();
    while let Some(chunk) = chunks.next_chunk() {
        assert!(!chunk.is_empty(), "a chunk is never empty");
        out.push_str(chunk);
    }
    out
}
