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
    if !knat::lab::test_prerequisites(
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
