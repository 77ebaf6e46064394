//! The restore's stdin is fed from the planner's pieces ([`Iptables::restore_planned`]) and
//! gets exactly the bytes the agent sent before it streamed: the payload string the planner
//! wrote, then the canary sections, with iptables-nft's `-Z` lines where `nft_bulk_splits`
//! puts them. Checked on the golden fixtures (both families, both dispatch styles, full and
//! partial syncs) and on a generated cluster large enough for the `-Z` line, through a real
//! pipe into a stand-in restore program that saves what it reads. And a restore that dies
//! while it is written to is an ordinary restore failure with its own message.
//!
//! Needs only `sh` and `cat` (no root): the stand-in restore does not touch the kernel;
//! `restore_test` and `netns` restore the same pieces for real.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

mod common;

use knat::backend::{
    BackendError, Iptables, Mode, NFT_BULK_CHAINS, canary_payload, nft_bulk_splits, with_zero_lines,
};
use knat::config::{Dispatch, ProxyConfig};
use knat::input::{Source, load};
use knat::model::{IpFamily, Snapshot};
use knat::rules::plan::SyncKind;
use knat::rules::{AppliedState, RuleSet, compile, plan_restore};

/// A directory of this test process, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("knat-stream-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    /// An executable script in the directory.
    fn script(&self, name: &str, body: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// An iptables front-end whose restore program is `program`.
fn backend(mode: Mode, program: &Path) -> Iptables {
    let mut ipt = Iptables::new(IpFamily::V4, mode);
    ipt.bins.restore = program.display().to_string();
    ipt
}

/// What the agent wrote to the restore before it streamed: the parts one after another, each
/// with the `-Z` lines iptables-nft gets ([`nft_bulk_splits`] over its text).
fn sent_before(mode: Mode, parts: &[&str]) -> String {
    parts
        .iter()
        .flat_map(|part| {
            let splits = match mode {
                Mode::Nft => nft_bulk_splits(part, NFT_BULK_CHAINS),
                Mode::Legacy => Vec::new(),
            };
            with_zero_lines(part, &splits)
        })
        .collect()
}

/// `services` ClusterIP Services with ten endpoints each, as manifests (`bump` changes the
/// endpoints of Service 0).
fn cluster(services: usize, bump: bool) -> Snapshot {
    let mut text = String::new();
    for i in 0..services {
        let ip = format!("10.96.{}.{}", i >> 8, i & 255);
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{i}, namespace: ns}}\n\
             spec:\n  clusterIP: {ip}\n  ports:\n  - {{name: http, port: 80, protocol: TCP}}\n\
             ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: svc{i}-x, namespace: ns, labels: {{kubernetes.io/service-name: svc{i}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n"
        ));
        for j in 0..10 {
            let k = i * 10 + j + usize::from(bump && i == 0) * 7;
            text.push_str(&format!(
                "- {{addresses: [10.{}.{}.{}], nodeName: node-{}}}\n",
                128 + (k >> 16),
                (k >> 8) & 255,
                k & 255,
                j % 3
            ));
        }
    }
    let source = Source {
        name: "generated.yaml".into(),
        text,
    };
    load(&[source], "node-1")
        .expect("generated manifests parse")
        .snapshot
}

/// Plans `desired` onto `applied` (hooks all in the restore), streams it with the canaries
/// through `mode`'s backend into the capturing stand-in, and compares with what was sent
/// before. Returns the bytes captured.
fn check_streamed(
    rt: &tokio::runtime::Runtime,
    scratch: &Scratch,
    applied: &AppliedState,
    desired: &RuleSet,
    kind: SyncKind,
    mode: Mode,
    what: &str,
) -> (String, AppliedState) {
    let out = scratch.0.join("captured");
    let capture = scratch.script("capture-restore", &format!("cat > '{}'", out.display()));
    let hooks: Vec<_> = desired.hooks.iter().collect();
    let planned =
        plan_restore(applied, desired, kind, &[], &hooks, mode.chain_order()).expect("fresh text");
    let text = common::payload_text_as_before(&planned.payload, &hooks);
    assert_eq!(planned.stats.bytes, text.len(), "{what}");
    let canaries = canary_payload();
    let trailer: Vec<&str> = match kind {
        SyncKind::Full => vec![canaries.as_str()],
        SyncKind::Partial => vec![],
    };
    let _ = std::fs::remove_file(&out);
    rt.block_on(backend(mode, &capture).restore_planned(&planned.payload, &trailer))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let captured = std::fs::read_to_string(&out).expect("the stand-in saved its input");
    let mut parts = vec![text.as_str()];
    parts.extend(&trailer);
    let expected = sent_before(mode, &parts);
    assert!(
        captured == expected,
        "{what}: {} bytes restored, {} sent before; first difference at byte {}",
        captured.len(),
        expected.len(),
        captured
            .bytes()
            .zip(expected.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(captured.len().min(expected.len()))
    );
    (captured, planned.next)
}

#[test]
fn the_restore_gets_the_bytes_sent_before_on_the_golden_fixtures() {
    let rt = runtime();
    let scratch = Scratch::new("golden");
    let mut checked = 0;
    for fixture in ["worked-example.yaml", "mixed.yaml"] {
        for node in ["node-1", "node-3"] {
            for family in [IpFamily::V4, IpFamily::V6] {
                for dispatch in [Dispatch::Linear, Dispatch::Tree { leaf_size: 2 }] {
                    let tweak = |cfg: &mut ProxyConfig| cfg.dispatch = dispatch;
                    let (snapshot, cfg) = common::load_fixture(fixture, node, family, tweak);
                    let rules = compile(&snapshot, &cfg).rules;
                    for mode in [Mode::Nft, Mode::Legacy] {
                        let what = format!("{fixture} {node} {family:?} {dispatch:?} {mode:?}");
                        let (captured, next) = check_streamed(
                            &rt,
                            &scratch,
                            &AppliedState::default(),
                            &rules,
                            SyncKind::Full,
                            mode,
                            &what,
                        );
                        assert!(captured.contains("KUBE-PROXY-CANARY"), "{what}");
                        // The same Services on another node: a partial sync of what differs.
                        let (other, other_cfg) =
                            common::load_fixture(fixture, "node-2", family, tweak);
                        assert_eq!(other_cfg.dispatch, cfg.dispatch);
                        let changed = compile(&other, &other_cfg).rules;
                        check_streamed(
                            &rt,
                            &scratch,
                            &next,
                            &changed,
                            SyncKind::Partial,
                            mode,
                            &format!("{what}, partial"),
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 32);
}

#[test]
fn a_cluster_with_a_bulk_table_gets_its_zero_line_where_it_went_before() {
    let rt = runtime();
    let scratch = Scratch::new("bulk");
    // 1,100 Services with ten endpoints: over 12,000 nat chains, past NFT_BULK_CHAINS; linear
    // dispatch, so KUBE-SERVICES is one chain longer than a chunk (handed out as it is, after
    // the chunk of declarations before it).
    let mut cfg = ProxyConfig::new("node-1", IpFamily::V4).expect("valid node name");
    cfg.dispatch = Dispatch::Linear;
    let rules = compile(&cluster(1_100, false), &cfg).rules;
    assert!(
        rules.nat.chain_count() > NFT_BULK_CHAINS,
        "{}",
        rules.nat.chain_count()
    );
    let longest = rules.nat.chains.values().map(|c| c.as_str().len()).max();
    assert!(
        longest > Some(knat::rules::payload::CHUNK_BYTES),
        "a chain longer than a chunk: {longest:?}"
    );
    for mode in [Mode::Nft, Mode::Legacy] {
        let what = format!("1,100 services {mode:?}");
        let (captured, next) = check_streamed(
            &rt,
            &scratch,
            &AppliedState::default(),
            &rules,
            SyncKind::Full,
            mode,
            &what,
        );
        assert!(captured.len() > 1 << 20, "{what}: {} bytes", captured.len());
        assert_eq!(
            captured.contains("*nat\n-Z\n"),
            mode == Mode::Nft,
            "{what}: -Z after the nat header on iptables-nft only"
        );
        assert!(
            !captured.contains("*filter\n-Z\n"),
            "{what}: a small table has none"
        );
        // One Service's endpoints change.
        let changed = compile(&cluster(1_100, true), &cfg).rules;
        let (partial, _) = check_streamed(
            &rt,
            &scratch,
            &next,
            &changed,
            SyncKind::Partial,
            mode,
            &format!("{what}, partial"),
        );
        assert!(
            partial.len() < captured.len() / 100,
            "{what}: {} bytes",
            partial.len()
        );
        assert!(!partial.contains("\n-Z\n"), "{what}");
    }
}

/// The restore stops reading early and fails (at a bad line, or because it died): the result
/// is the restore's own failure with its message and the offending line shown, never a broken
/// pipe or a panic, whichever way the pipe closed.
#[test]
fn a_restore_that_dies_while_it_is_written_to_is_an_ordinary_restore_failure() {
    let rt = runtime();
    let scratch = Scratch::new("dies");
    let cfg = ProxyConfig::new("node-1", IpFamily::V4).expect("valid node name");
    let rules = compile(&cluster(300, false), &cfg).rules;
    let planned = plan_restore(
        &AppliedState::default(),
        &rules,
        SyncKind::Full,
        &[],
        &[],
        Mode::Legacy.chain_order(),
    )
    .expect("fresh text");
    let text = common::payload_text_as_before(&planned.payload, &[]);
    assert!(
        text.len() > 8 * 65_536,
        "larger than a pipe: {} bytes",
        text.len()
    );
    let third = text.lines().nth(2).expect("a third line").to_string();
    for (tag, body) in [
        (
            "reads-some",
            "head -c 100000 >/dev/null; echo 'iptables-restore: line 3 failed' >&2; exit 1",
        ),
        (
            "reads-nothing",
            "echo 'iptables-restore: line 3 failed' >&2; exit 1",
        ),
        (
            "killed",
            "head -c 200000 >/dev/null; echo 'iptables-restore: line 3 failed' >&2; kill -9 $$",
        ),
    ] {
        let program = scratch.script(tag, body);
        let err = rt
            .block_on(backend(Mode::Legacy, &program).restore_planned(&planned.payload, &[]))
            .expect_err("the restore failed");
        match &err {
            BackendError::Restore {
                line,
                context,
                stderr,
                ..
            } => {
                assert_eq!(*line, Some(3), "{tag}: {err}");
                assert_eq!(stderr, "iptables-restore: line 3 failed", "{tag}");
                assert!(
                    context.contains(&format!(">>      3: {third}")),
                    "{tag}: {context}"
                );
            }
            other => panic!("{tag}: not a restore failure: {other}"),
        }
    }
}
