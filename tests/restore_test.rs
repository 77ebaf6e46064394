//! The kernel's own parser accepts what knat renders: every golden fixture, both families,
//! both dispatch styles, loaded with `iptables-restore --test` (and then for real) on the nft
//! and the legacy backend inside a network namespace of its own.

use std::io::Write;
use std::process::{Command, Stdio};

mod common;

use knat::config::Dispatch;
use knat::model::IpFamily;

/// A network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("knat-rt-{}-{tag}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip");
        assert!(status.success(), "ip netns add {name} failed");
        Netns(name)
    }

    /// Feeds `payload` to `binary args...` inside the namespace; returns (success, stderr).
    fn restore(&self, binary: &str, args: &[&str], payload: &str) -> (bool, String) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, binary])
            .args(args)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn restore");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(payload.as_bytes())
            .expect("write payload");
        let out = child.wait_with_output().expect("wait for restore");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn payload(fixture: &str, node: &str, family: IpFamily, dispatch: Dispatch) -> String {
    common::render_fixture(fixture, node, family, |cfg| {
        cfg.dispatch = dispatch;
        cfg.random_fully = true;
    })
}

#[test]
fn rendered_payloads_pass_iptables_restore_on_both_backends() {
    let programs = [
        "ip",
        "iptables-nft-restore",
        "iptables-legacy-restore",
        "ip6tables-nft-restore",
        "ip6tables-legacy-restore",
    ];
    if !knat_testbed::prerequisites::test_prerequisites(
        "rendered_payloads_pass_iptables_restore_on_both_backends",
        &programs,
    ) {
        return;
    }
    let mut checked = 0;
    for (backend, v4, v6) in [
        ("nft", "iptables-nft-restore", "ip6tables-nft-restore"),
        (
            "legacy",
            "iptables-legacy-restore",
            "ip6tables-legacy-restore",
        ),
    ] {
        for fixture in ["worked-example.yaml", "mixed.yaml"] {
            for node in ["node-1", "node-3"] {
                for dispatch in [Dispatch::Linear, Dispatch::Tree { leaf_size: 2 }] {
                    for (family, binary) in [(IpFamily::V4, v4), (IpFamily::V6, v6)] {
                        let text = payload(fixture, node, family, dispatch);
                        let ns = Netns::new(&format!("{checked}"));
                        let (ok, err) = ns.restore(binary, &["--test"], &text);
                        assert!(
                            ok,
                            "{backend} {binary} --test rejected {fixture} for {node} ({dispatch:?}):\n{err}\n{text}"
                        );
                        let (ok, err) = ns.restore(binary, &[], &text);
                        assert!(
                            ok,
                            "{backend} {binary} rejected {fixture} for {node} ({dispatch:?}):\n{err}"
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 32);
}

/// A restore of more than `NFT_BULK_CHAINS` chains through knat's own backend on iptables-nft:
/// the `-Z` knat puts in front lets iptables-nft skip its per-command chain bookkeeping. The
/// rules land, and (the documented side effect) the table's counters are zeroed. Then the
/// stale-chain listing through `nft list chains` finds a leftover per-service chain.
#[test]
fn bulk_restore_on_iptables_nft_lands_every_chain_and_zeroes_counters() {
    let programs = [
        "ip",
        "iptables-nft",
        "iptables-nft-restore",
        "iptables-nft-save",
    ];
    if !knat_testbed::prerequisites::test_prerequisites(
        "bulk_restore_on_iptables_nft_lands_every_chain_and_zeroes_counters",
        &programs,
    ) {
        return;
    }
    use knat::backend::{Iptables, Mode, NFT_BULK_CHAINS};
    let ns = Netns::new("bulk");
    // A rule with counters that is not knat's.
    let (ok, err) = ns.restore(
        "iptables-nft-restore",
        &["--counters"],
        "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SEP-LEFTOVER0000000 - [0:0]\n[7:420] -A PREROUTING -s 192.0.2.1/32 -j RETURN\nCOMMIT\n",
    );
    assert!(ok, "{err}");
    // iptables-nft-restore inside the namespace, under the name knat calls.
    let dir = std::env::temp_dir().join(format!("knat-bulk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let wrapper = dir.join("restore");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec ip netns exec {} iptables-nft-restore \"$@\"\n",
            ns.0
        ),
    )
    .expect("write wrapper");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let nft = dir.join("nft");
    std::fs::write(
        &nft,
        format!("#!/bin/sh\nexec ip netns exec {} nft \"$@\"\n", ns.0),
    )
    .expect("write nft wrapper");
    std::fs::set_permissions(&nft, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut ipt = Iptables::new(IpFamily::V4, Mode::Nft);
    ipt.bins.restore = wrapper.display().to_string();
    ipt.bins.nft = Some(nft.display().to_string());

    let chains = NFT_BULK_CHAINS + 500;
    let mut payload = String::from("*nat\n");
    for i in 0..chains {
        payload.push_str(&format!(":KNAT-BULK-{i} - [0:0]\n"));
    }
    for i in 0..chains {
        payload.push_str(&format!(
            "-A KNAT-BULK-{i} -s 198.51.100.{}/32 -j RETURN\n",
            i % 256
        ));
    }
    payload.push_str("COMMIT\n");
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime
        .block_on(ipt.restore(&payload))
        .unwrap_or_else(|e| panic!("bulk restore failed: {e}"));
    eprintln!(
        "bulk restore of {chains} chains took {:.2?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);

    let save = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.0,
            "iptables-nft-save",
            "-c",
            "-t",
            "nat",
        ])
        .output()
        .expect("run iptables-nft-save");
    let text = String::from_utf8_lossy(&save.stdout);
    let declared = text
        .lines()
        .filter(|l| l.starts_with(":KNAT-BULK-"))
        .count();
    assert_eq!(declared, chains);
    let rules = text.lines().filter(|l| l.contains("-A KNAT-BULK-")).count();
    assert_eq!(rules, chains);
    assert!(
        text.contains("[0:0] -A PREROUTING -s 192.0.2.1/32 -j RETURN"),
        "the foreign rule should be kept with zeroed counters:\n{}",
        text.lines()
            .filter(|l| l.contains("PREROUTING"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Hooks inserted by the restore itself (what a cold-start full sync sends) land in the real
/// kernel on both backends: every builtin chain starts with its hooks in `RuleSet.hooks` order,
/// each once; and the chain listing of the result tells the next full sync that none of them
/// can be missing for want of its target chain.
#[test]
fn hooks_inserted_by_the_restore_land_once_in_order_on_both_backends() {
    let programs = [
        "ip",
        "iptables-nft-restore",
        "iptables-nft-save",
        "iptables-legacy-restore",
        "iptables-legacy-save",
    ];
    if !knat_testbed::prerequisites::test_prerequisites(
        "hooks_inserted_by_the_restore_land_once_in_order_on_both_backends",
        &programs,
    ) {
        return;
    }
    use knat::backend::{ChainListing, Mode, saved_listing};
    use knat::rules::compile;
    let (snapshot, cfg) = common::load_fixture("mixed.yaml", "node-1", IpFamily::V4, |_| {});
    let rules = compile(&snapshot, &cfg).rules;
    for (backend, restore, save, mode) in [
        (
            "nft",
            "iptables-nft-restore",
            "iptables-nft-save",
            Mode::Nft,
        ),
        (
            "legacy",
            "iptables-legacy-restore",
            "iptables-legacy-save",
            Mode::Legacy,
        ),
    ] {
        let payload = common::cold_start_plan(&rules, mode.chain_order()).payload;
        let ns = Netns::new(&format!("hooks-{backend}"));
        let (ok, err) = ns.restore(restore, &["--noflush"], &payload);
        assert!(ok, "{backend}: {err}");
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.0, save])
            .output()
            .expect("run iptables-save");
        let dump = String::from_utf8_lossy(&out.stdout);
        let mut table = "";
        let mut builtin: std::collections::BTreeMap<(String, String), Vec<String>> =
            Default::default();
        for line in dump.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = if t == "filter" || t == "nat" { t } else { "" };
            } else if let Some(rule) = line.strip_prefix("-A ")
                && !table.is_empty()
                && let Some((chain, spec)) = rule.split_once(' ')
                && chain.chars().all(|c| c.is_ascii_uppercase())
            {
                builtin
                    .entry((table.to_string(), chain.to_string()))
                    .or_default()
                    .push(spec.to_string());
            }
        }
        let mut wanted: std::collections::BTreeMap<(String, String), Vec<String>> =
            Default::default();
        for hook in &rules.hooks {
            wanted
                .entry((hook.table.as_str().to_string(), hook.chain.to_string()))
                .or_default()
                .push(hook.rule.to_string());
        }
        assert_eq!(builtin, wanted, "{backend}:\n{dump}");
        // The listing iptables-save gives shows every hook in place: a restart probes none.
        let listing = saved_listing(&dump);
        let (in_restore, to_check) = listing.split_hooks(&rules.hooks);
        assert!(in_restore.is_empty(), "{backend}: {in_restore:?}");
        assert!(to_check.is_empty(), "{backend}: {to_check:?}");
        assert!(
            listing.missing_canaries().len() == 3,
            "{backend}: the payload has no canary"
        );
        // From `nft list chains` (no rules) every hook whose chain exists is still checked.
        let names_only = ChainListing {
            chains: listing.chains.clone(),
            builtin_rules: None,
        };
        assert_eq!(
            names_only.split_hooks(&rules.hooks).1.len(),
            rules.hooks.len()
        );
    }
}
