//! Golden tests of the renderer: the reference's worked example line by line, and insta
//! snapshots of complete payloads for a mix of service flavours, both families and both
//! dispatch styles.

mod common;

use knat::config::{Dispatch, ProxyConfig};
use knat::model::IpFamily;

fn render(
    fixture: &str,
    node: &str,
    family: IpFamily,
    tweak: impl FnOnce(&mut ProxyConfig),
) -> String {
    common::render_fixture(fixture, node, family, tweak)
}

/// Every rule of §4 of the reference (except the nfacct variant, which knat writes only when
/// nfacct counters exist) appears verbatim.
#[test]
fn worked_example_matches_reference_rules() {
    let payload = render("worked-example.yaml", "node-1", IpFamily::V4, |_| {});
    let expected = [
        r#"-A KUBE-NODEPORTS -m comment --comment "demo/web:http health check node port" -m tcp -p tcp --dport 32000 -j ACCEPT"#,
        r#"-A KUBE-NODEPORTS -m comment --comment demo/web:http -m tcp -p tcp --dport 30080 -j KUBE-EXT-XRY76EGRC3BSCIIJ"#,
        r#"-A KUBE-SERVICES -m comment --comment "demo/web:http cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j KUBE-SVC-XRY76EGRC3BSCIIJ"#,
        r#"-A KUBE-SERVICES -m comment --comment "demo/web:http loadbalancer IP" -m tcp -p tcp -d 198.51.100.10 --dport 80 -j KUBE-EXT-XRY76EGRC3BSCIIJ"#,
        r#"-A KUBE-EXT-XRY76EGRC3BSCIIJ -m comment --comment "pod traffic for demo/web:http external destinations" -s 10.244.0.0/16 -j KUBE-SVC-XRY76EGRC3BSCIIJ"#,
        r#"-A KUBE-EXT-XRY76EGRC3BSCIIJ -m comment --comment "masquerade LOCAL traffic for demo/web:http external destinations" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"#,
        r#"-A KUBE-EXT-XRY76EGRC3BSCIIJ -m comment --comment "route LOCAL traffic for demo/web:http external destinations" -m addrtype --src-type LOCAL -j KUBE-SVC-XRY76EGRC3BSCIIJ"#,
        r#"-A KUBE-EXT-XRY76EGRC3BSCIIJ -j KUBE-SVL-XRY76EGRC3BSCIIJ"#,
        r#"-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"#,
        r#"-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 10.244.1.5:8080" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-NW5VICAF3Z2QABHQ"#,
        r#"-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 10.244.2.7:8080" -j KUBE-SEP-JPICTQTYOLMYNIJ7"#,
        r#"-A KUBE-SVL-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http -> 10.244.1.5:8080" -j KUBE-SEP-NW5VICAF3Z2QABHQ"#,
        r#"-A KUBE-SEP-NW5VICAF3Z2QABHQ -m comment --comment demo/web:http -s 10.244.1.5 -j KUBE-MARK-MASQ"#,
        r#"-A KUBE-SEP-NW5VICAF3Z2QABHQ -m comment --comment demo/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.1.5:8080"#,
        r#"-A KUBE-SEP-JPICTQTYOLMYNIJ7 -m comment --comment demo/web:http -s 10.244.2.7 -j KUBE-MARK-MASQ"#,
        r#"-A KUBE-SEP-JPICTQTYOLMYNIJ7 -m comment --comment demo/web:http -m tcp -p tcp -j DNAT --to-destination 10.244.2.7:8080"#,
        r#"-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN"#,
        r#"-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000"#,
        r#"-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE"#,
        r#"-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000"#,
    ];
    let lines: Vec<&str> = payload.lines().collect();
    for rule in expected {
        assert!(
            lines.contains(&rule),
            "missing rule:\n{rule}\nin payload:\n{payload}"
        );
    }
    // The NodePort tail is the last rule of nat KUBE-SERVICES.
    let services: Vec<&&str> = lines
        .iter()
        .filter(|l| l.starts_with("-A KUBE-SERVICES "))
        .collect();
    assert!(
        services
            .last()
            .is_some_and(|l| l.contains("this must be the last rule"))
    );
}

#[test]
fn worked_example_on_the_node_without_endpoints_drops_external_traffic() {
    let payload = render("worked-example.yaml", "node-3", IpFamily::V4, |_| {});
    assert!(payload.contains(r#"-A KUBE-EXTERNAL-SERVICES -m comment --comment "demo/web:http has no local endpoints" -m tcp -p tcp -d 198.51.100.10 --dport 80 -j DROP"#));
    assert!(payload.contains(r#"-A KUBE-EXTERNAL-SERVICES -m comment --comment "demo/web:http has no local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j DROP"#));
    assert!(
        !payload.contains("KUBE-SVL-"),
        "no SVL chain without local endpoints:\n{payload}"
    );
    assert!(!payload.contains("-j KUBE-SVL"), "{payload}");
}

#[test]
fn mixed_ipv4_linear() {
    insta::assert_snapshot!(render("mixed.yaml", "node-1", IpFamily::V4, |c| c
        .dispatch =
        Dispatch::Linear));
}

#[test]
fn mixed_ipv6_linear() {
    insta::assert_snapshot!(render("mixed.yaml", "node-1", IpFamily::V6, |c| c
        .dispatch =
        Dispatch::Linear));
}

#[test]
fn mixed_ipv4_tree_with_small_leaves() {
    insta::assert_snapshot!(render("mixed.yaml", "node-1", IpFamily::V4, |c| {
        c.dispatch = Dispatch::Tree { leaf_size: 2 }
    }));
}

#[test]
fn mixed_ipv4_masquerade_all_without_localhost_nodeports() {
    insta::assert_snapshot!(render("mixed.yaml", "node-2", IpFamily::V4, |c| {
        c.masquerade_all = true;
        c.localhost_nodeports = false;
        c.random_fully = true;
    }));
}

/// Upstream's large-cluster mode: above the endpoint threshold, SEP rules and the SVC/SVL jumps
/// to them lose their comments; KUBE-SERVICES, EXT and FW rules and the SVC masquerade rule
/// keep theirs.
#[test]
fn large_cluster_mode_drops_per_endpoint_comments_only() {
    let payload = render("mixed.yaml", "node-1", IpFamily::V4, |c| {
        c.large_cluster_threshold = 1
    });
    let sep_rules: Vec<&str> = payload
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SEP-"))
        .collect();
    assert!(!sep_rules.is_empty());
    assert!(
        sep_rules.iter().all(|l| !l.contains("--comment")),
        "{payload}"
    );
    let jumps: Vec<&str> = payload
        .lines()
        .filter(|l| l.starts_with("-A KUBE-SVC-") && l.contains("-j KUBE-SEP-"))
        .collect();
    assert!(!jumps.is_empty());
    assert!(jumps.iter().all(|l| !l.contains("--comment")), "{payload}");
    assert!(
        payload.contains(r#"-A KUBE-SERVICES -m comment --comment "shop/api:https cluster IP""#)
    );
    assert!(payload.contains(r#"-m comment --comment "shop/api:https cluster IP" -m tcp -p tcp -d 10.96.1.1 --dport 443 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"#));
    assert!(payload.contains(
        r#"-m comment --comment "masquerade traffic for shop/api:https external destinations""#
    ));
    // Below the threshold the same rules carry comments.
    let normal = render("mixed.yaml", "node-1", IpFamily::V4, |_| {});
    assert!(
        normal
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SEP-"))
            .all(|l| l.contains("--comment"))
    );
}

/// Many Services are compiled on several threads; the payload must be byte-identical to the
/// one a single thread produces (the fixture's Services copied into 220 namespaces: 660
/// Services, above the parallel threshold).
#[test]
fn parallel_compilation_renders_the_same_payload_as_one_thread() {
    let (fixture, cfg) = common::load_fixture("mixed.yaml", "node-1", IpFamily::V4, |_| {});
    let mut snapshot = knat::model::Snapshot::default();
    snapshot.node = fixture.node.clone();
    for copy in 0..220 {
        for service in fixture.services().values() {
            let mut service = (**service).clone();
            service.name.namespace = format!("{}-{copy}", service.name.namespace);
            snapshot.upsert_service(service);
        }
        for slices in fixture.slices().values() {
            for slice in slices.values() {
                let mut slice = slice.clone();
                slice.service.namespace = format!("{}-{copy}", slice.service.namespace);
                let namespace = slice.service.namespace.clone();
                snapshot.upsert_slice(&namespace, slice);
            }
        }
    }
    assert!(
        snapshot.services().len() > 600,
        "{}",
        snapshot.services().len()
    );
    let render = |threads: usize| {
        let compiled = knat::rules::compile::IncrementalCompiler::with_threads(threads)
            .compile(&snapshot, &cfg);
        knat::rules::render_standalone(&compiled.rules)
    };
    let one = render(1);
    assert!(one.lines().filter(|l| l.starts_with(":KUBE-SEP-")).count() > 600);
    assert_eq!(one, render(3));
}

/// `--detect-local-mode`: the two rules upstream's `syncProxyRules` writes with the detector
/// (`IfNotLocal` in the ClusterIP masquerade rule of KUBE-SVC, `IfLocal` in the pod
/// short-circuit of KUBE-EXT), byte for byte as `localdetector.go` spells each mode, and no
/// other rule carries it.
#[test]
fn detect_local_modes_render_as_upstream() {
    use knat::config::LocalDetector;
    use knat::model::NodeInfo;
    use knat::rules::{compile, render_standalone};

    const SVC: &str = r#"-A KUBE-SVC-XRY76EGRC3BSCIIJ -m comment --comment "demo/web:http cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80"#;
    const EXT: &str = r#"-A KUBE-EXT-XRY76EGRC3BSCIIJ -m comment --comment "pod traffic for demo/web:http external destinations""#;
    let cases = [
        (
            LocalDetector::Cidr("10.244.0.0/16".parse().expect("cidr")),
            "! -s 10.244.0.0/16",
            "-s 10.244.0.0/16",
        ),
        (
            LocalDetector::NodeCidr,
            "! -s 10.244.1.0/24",
            "-s 10.244.1.0/24",
        ),
        (LocalDetector::Bridge("cni0".into()), "! -i cni0", "-i cni0"),
        (
            LocalDetector::InterfacePrefix("veth".into()),
            "! -i veth+",
            "-i veth+",
        ),
    ];
    for (detector, not_local, local) in cases {
        let (mut snapshot, cfg) =
            common::load_fixture("worked-example.yaml", "node-1", IpFamily::V4, |c| {
                c.local_detector = detector.clone()
            });
        snapshot.node = Some(NodeInfo {
            name: "node-1".into(),
            zone: None,
            addresses: vec!["192.168.0.2".parse().expect("ip")],
            pod_cidrs: vec![
                "10.244.1.0/24".parse().expect("cidr"),
                "fd00:10:244:1::/64".parse().expect("cidr"),
            ],
            unschedulable_for_deletion: false,
        });
        let payload = render_standalone(&compile(&snapshot, &cfg).rules);
        let lines: Vec<&str> = payload.lines().collect();
        let masq = format!("{SVC} {not_local} -j KUBE-MARK-MASQ");
        let short = format!("{EXT} {local} -j KUBE-SVC-XRY76EGRC3BSCIIJ");
        for rule in [&masq, &short] {
            assert!(
                lines.contains(&rule.as_str()),
                "{detector:?}: missing\n{rule}\nin\n{payload}"
            );
        }
        let with_detector: Vec<&&str> = lines
            .iter()
            .filter(|l| l.contains(&format!(" {local} ")))
            .collect();
        assert_eq!(
            with_detector.len(),
            2,
            "{detector:?}: only the two rules carry the detector: {with_detector:#?}"
        );
    }
}

/// Without a pod CIDR of the family (NodeCIDR on an IPv4-only Node, rendering IPv6), the
/// detector is upstream's no-op one: no ClusterIP masquerade rule, no pod short-circuit.
#[test]
fn node_cidr_without_a_cidr_of_the_family_writes_neither_rule() {
    use knat::config::LocalDetector;
    use knat::model::NodeInfo;
    use knat::rules::{compile, render_standalone};

    let (mut snapshot, cfg) = common::load_fixture("mixed.yaml", "node-1", IpFamily::V6, |c| {
        c.local_detector = LocalDetector::NodeCidr
    });
    snapshot.node = Some(NodeInfo {
        name: "node-1".into(),
        zone: None,
        addresses: Vec::new(),
        pod_cidrs: vec!["10.244.1.0/24".parse().expect("cidr")],
        unschedulable_for_deletion: false,
    });
    let payload = render_standalone(&compile(&snapshot, &cfg).rules);
    assert!(payload.contains("-A KUBE-SVC-"), "{payload}");
    assert!(
        !payload
            .lines()
            .any(|l| l.starts_with("-A KUBE-SVC-") && l.contains("-j KUBE-MARK-MASQ")),
        "{payload}"
    );
    assert!(!payload.contains("pod traffic for"), "{payload}");
    assert!(!payload.contains(" -s 10.244."), "{payload}");
}

/// Every chain of every Service's group has its owning service port: SVC, SVL, EXT and FW by
/// the port's hash, SEP chains by being a jump target of that port's SVC or SVL chain (what
/// `knat diff` prints next to a chain).
#[test]
fn every_service_chain_has_its_owning_port() {
    for fixture in ["mixed.yaml", "worked-example.yaml"] {
        let (snapshot, cfg) = common::load_fixture(fixture, "node-1", IpFamily::V4, |_| {});
        let compiled = knat::rules::compile(&snapshot, &cfg);
        let checked = check_owners(&compiled);
        assert!(
            checked >= 5,
            "{fixture} has Services with chains ({checked})"
        );
    }
}

/// The assertions of `every_service_chain_has_its_owning_port`; returns the chains checked.
fn check_owners(compiled: &knat::rules::Compiled) -> usize {
    use knat::rules::chain::ServiceChains;
    let owners = compiled.chain_owners();
    let mut checked = 0;
    for group in compiled.rules.nat.groups.iter() {
        let texts: Vec<_> = group.chains().collect();
        for name in group.chain_names() {
            let spn = owners
                .get(name)
                .unwrap_or_else(|| panic!("{name} of {:?} has no owner", group.key));
            assert_eq!(spn.service, group.key, "{name}");
            let own = ServiceChains::new(spn);
            let policy = [&own.svc, &own.svl, &own.ext, &own.fw];
            if name.starts_with("KUBE-SEP-") {
                let jump = format!("-j {name}\n");
                let jumped_from_own_policy = texts.iter().any(|c| {
                    (c.name() == own.svc.as_str() || c.name() == own.svl.as_str())
                        && c.as_str().contains(&jump)
                });
                assert!(
                    jumped_from_own_policy,
                    "{name} is not an endpoint of {spn:?}"
                );
            } else {
                assert!(
                    policy.iter().any(|c| c.as_str() == name),
                    "{name} is not a chain of {spn:?}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, owners.len(), "owners name only the groups' chains");
    checked
}
