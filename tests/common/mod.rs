//! Shared by the test binaries that render the fixtures in `tests/fixtures/`.

use knat::config::{LocalDetector, ProxyConfig};
use knat::input::{Source, load};
use knat::model::IpFamily;
use knat::rules::{compile, render_standalone};

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
