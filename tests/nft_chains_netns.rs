//! The netlink chain listing (`knat::backend::nft_chains`) against `nft list chains` in a
//! network namespace of its own: the same (table, chain) names, for both families, on tables
//! with thousands of chains in several tables (iptables-nft's nat, filter and mangle, and a
//! native nftables table), so the dump spans many datagrams. Needs root, `ip`, `nft` and the
//! iptables-nft restores; without any of them it fails (it never skips, with or without
//! `CI=true`).
//!
//! Measuring at 10,000 Services: `KNAT_NFT_CHAINS_PAYLOAD=FILE` (an `iptables-restore` payload,
//! e.g. render-bench's `--write` output) and `KNAT_NFT_CHAINS_PAYLOAD6=FILE` (its IPv6
//! counterpart) are loaded in addition, and the test prints both listings' times (use
//! `--release -- --nocapture`).

use std::collections::BTreeSet;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::Instant;

use knat::backend::listed_chains;
use knat::backend::nft_chains::dump_chains;
use knat::model::IpFamily;

/// A network namespace, deleted on drop (also when an assertion fails).
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("knat-nftc-{}-{tag}", std::process::id());
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip");
        assert!(status.success(), "ip netns add {name} failed");
        Netns(name)
    }

    /// Runs `program args` in the namespace with `input` on stdin; panics on failure.
    fn run(&self, program: &str, args: &[&str], input: &str) -> String {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, program])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        let mut stdin = child.stdin.take().expect("stdin");
        let feed = {
            let input = input.to_string();
            std::thread::spawn(move || stdin.write_all(input.as_bytes()))
        };
        let out = child.wait_with_output().expect("wait");
        feed.join().expect("feeder").expect("write stdin");
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The netlink listing, from a thread that entered the namespace.
    fn dump(&self, family: IpFamily) -> Vec<(String, String)> {
        let path = format!("/run/netns/{}", self.0);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path).expect("open the namespace");
                    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("setns");
                    dump_chains(family).unwrap_or_else(|e| panic!("netlink dump: {e}"))
                })
                .join()
                .expect("dump thread")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A restore payload with `per_table` chains (and one rule each) in nat, filter and mangle.
fn many_chains(per_table: usize, address: &str) -> String {
    let mut payload = String::new();
    for table in ["nat", "filter", "mangle"] {
        payload.push_str(&format!("*{table}\n"));
        for i in 0..per_table {
            payload.push_str(&format!(":KNAT-T-{table}-{i} - [0:0]\n"));
        }
        for i in 0..per_table {
            payload.push_str(&format!("-A KNAT-T-{table}-{i} -s {address} -j RETURN\n"));
        }
        payload.push_str("COMMIT\n");
    }
    payload
}

fn set(chains: Vec<(String, String)>) -> BTreeSet<(String, String)> {
    chains.into_iter().collect()
}

#[test]
fn the_netlink_listing_equals_nft_list_chains_in_both_families() {
    let programs = ["ip", "nft", "iptables-nft-restore", "ip6tables-nft-restore"];
    if !knat_testbed::prerequisites::test_prerequisites(
        "the_netlink_listing_equals_nft_list_chains_in_both_families",
        &programs,
    ) {
        return;
    }
    let ns = Netns::new("eq");
    // Empty tables first: nothing, and no error.
    assert!(ns.dump(IpFamily::V4).is_empty());
    assert!(ns.dump(IpFamily::V6).is_empty());

    ns.run(
        "iptables-nft-restore",
        &["--noflush"],
        &many_chains(3000, "192.0.2.1"),
    );
    ns.run(
        "ip6tables-nft-restore",
        &["--noflush"],
        &many_chains(2000, "2001:db8::1"),
    );
    // A native nftables table beside iptables-nft's, with a base chain, in each family.
    ns.run(
        "nft",
        &["-f", "-"],
        "table ip knat_native {\n chain input_hook { type filter hook input priority 10; }\n chain helper { }\n}\n\
         table ip6 knat_native6 {\n chain helper6 { }\n}\n",
    );
    let extra = |var: &str, program: &str| {
        if let Ok(path) = std::env::var(var) {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            let started = Instant::now();
            ns.run(program, &["--noflush"], &text);
            eprintln!("{program} of {path}: {:.2?}", started.elapsed());
        }
    };
    extra("KNAT_NFT_CHAINS_PAYLOAD", "iptables-nft-restore");
    extra("KNAT_NFT_CHAINS_PAYLOAD6", "ip6tables-nft-restore");

    for (family, word, per_table) in [(IpFamily::V4, "ip", 3000), (IpFamily::V6, "ip6", 2000)] {
        // Timed three times over when measuring a large payload, once otherwise.
        let runs = if std::env::var_os("KNAT_NFT_CHAINS_PAYLOAD").is_some() {
            3
        } else {
            1
        };
        let (mut listed, mut dumped) = (String::new(), Vec::new());
        for _ in 0..runs {
            let started = Instant::now();
            listed = ns.run("nft", &["list", "chains", word], "");
            let command_time = started.elapsed();
            let started = Instant::now();
            dumped = ns.dump(family);
            let netlink_time = started.elapsed();
            eprintln!(
                "{word}: {} chains; nft list chains {:.1} ms, netlink dump {:.1} ms",
                dumped.len(),
                command_time.as_secs_f64() * 1000.0,
                netlink_time.as_secs_f64() * 1000.0
            );
        }
        let from_nft = set(listed_chains(&listed));
        let count = dumped.len();
        let from_netlink = set(dumped);
        assert_eq!(count, from_netlink.len(), "{word}: a chain listed twice");
        assert_eq!(from_netlink, from_nft, "{word}: netlink and nft differ");
        for table in ["nat", "filter", "mangle"] {
            let in_table = from_netlink.iter().filter(|(t, _)| t == table).count();
            assert!(
                in_table >= per_table,
                "{word} {table}: {in_table} chains, expected at least {per_table}"
            );
        }
        let native = if family == IpFamily::V4 {
            ("knat_native".to_string(), "input_hook".to_string())
        } else {
            ("knat_native6".to_string(), "helper6".to_string())
        };
        assert!(from_netlink.contains(&native), "{word}: {native:?} missing");
    }
}

/// Dumps taken while another process commits new chains one transaction at a time, every 20 ms
/// (each commit bumps the generation the kernel checks for `NLM_F_DUMP_INTR`), all succeed,
/// each holds every chain that existed before, and the added chains seen never go backwards
/// from one dump to the next. (With commits back to back, faster than a dump of 6,000 chains
/// completes, every attempt was flagged and the listing gave up after five: the agent then
/// falls back to `nft list chains`.)
#[test]
fn dumps_during_concurrent_changes_stay_complete() {
    let programs = ["ip", "nft", "iptables-nft-restore"];
    if !knat_testbed::prerequisites::test_prerequisites(
        "dumps_during_concurrent_changes_stay_complete",
        &programs,
    ) {
        return;
    }
    let ns = Netns::new("churn");
    ns.run(
        "iptables-nft-restore",
        &["--noflush"],
        &many_chains(200, "192.0.2.1"),
    );
    let before = set(ns.dump(IpFamily::V4));
    let name = ns.0.clone();
    let writer = std::thread::spawn(move || {
        for i in 0..150 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            let status = Command::new("ip")
                .args(["netns", "exec", &name, "nft", "add", "chain", "ip", "nat"])
                .arg(format!("KNAT-CHURN-{i}"))
                .status()
                .expect("run nft");
            assert!(status.success(), "nft add chain {i}");
        }
    });
    let mut seen = 0;
    let mut dumps = 0;
    while !writer.is_finished() {
        let now = set(ns.dump(IpFamily::V4));
        assert!(
            now.is_superset(&before),
            "a dump lost chains that existed before"
        );
        let churn = now
            .iter()
            .filter(|(t, c)| t == "nat" && c.starts_with("KNAT-CHURN-"))
            .count();
        assert!(
            churn >= seen,
            "dump {dumps}: {churn} added chains after {seen}"
        );
        seen = churn;
        dumps += 1;
    }
    writer.join().expect("writer");
    let last = set(ns.dump(IpFamily::V4));
    assert_eq!(last.len(), before.len() + 150);
    eprintln!("{dumps} dumps during 150 concurrent commits");
    assert!(dumps > 0, "no dump ran while the writer did");
}
