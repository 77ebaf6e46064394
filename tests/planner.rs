//! Property tests of the planner against the `iptables-restore` model: applying the partial
//! `--noflush` payload to the kernel state left by the old rules yields exactly the state the new
//! rules produce from scratch, and a no-op sync writes nothing.

use std::net::{IpAddr, Ipv4Addr};

use knat::config::{Dispatch, LocalDetector, ProxyConfig};
use knat::dump::{Dump, apply_restore};
use knat::model::*;
use knat::rules::compile::IncrementalCompiler;
use knat::rules::plan::SyncKind;
use knat::rules::{AppliedState, ChainOrder, Plan, PlanError, RuleSet, compile, plan_with_hooks};

/// Plans with every hook already present. Every plan is also made the agent's way
/// ([`knat::rules::plan_restore`], the payload as pieces): the same record and counts, and the
/// payload's chunks, in small and pipe-sized chunks, join to the text the planner wrote before
/// it streamed ([`common::payload_text_as_before`]), which is the text returned.
fn plan(
    applied: &AppliedState,
    desired: &RuleSet,
    kind: SyncKind,
    stale: &[(knat::rules::TableName, knat::rules::ChainName)],
) -> Plan {
    let plan = knat::rules::plan(applied, desired, kind, stale)
        .expect("every chain to write has its text");
    let planned =
        knat::rules::plan_restore(applied, desired, kind, stale, &[], ChainOrder::Descending)
            .expect("every chain to write has its text");
    let before = common::payload_text_as_before(&planned.payload, &[]);
    assert_eq!(
        plan.payload, before,
        "the planner's text is the old writer's"
    );
    // Limits between one piece and the whole payload make chunks that gather small pieces
    // and then meet a chain's text as long as the limit or longer.
    for limit in [1, 13, 200, 4096, knat::rules::payload::CHUNK_BYTES] {
        assert_eq!(
            common::streamed_text(&planned.payload, limit),
            before,
            "chunks of {limit}"
        );
    }
    assert_eq!(planned.stats, plan.stats);
    assert_eq!(plan.stats.bytes, plan.payload.len());
    assert_eq!(planned.next, plan.next);
    plan
}
use proptest::prelude::*;

mod common;

/// A compact description of one service for generation.
#[derive(Debug, Clone)]
struct SvcSpec {
    kind: u8,
    etp_local: bool,
    itp_local: bool,
    affinity: bool,
    udp: bool,
    /// Per endpoint: (host byte, on this node, ready, serving+terminating).
    endpoints: Vec<(u8, bool, bool, bool)>,
}

/// Up to five Services (and gaps), for a cluster before and after a change.
fn cluster() -> impl Strategy<Value = Vec<Option<SvcSpec>>> {
    prop::collection::vec(prop::option::of(svc_spec()), 0..6)
}

fn svc_spec() -> impl Strategy<Value = SvcSpec> {
    (
        0u8..3,
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec((1u8..12, any::<bool>(), any::<bool>(), any::<bool>()), 0..5),
    )
        .prop_map(
            |(kind, etp_local, itp_local, affinity, udp, endpoints)| SvcSpec {
                kind,
                etp_local,
                itp_local,
                affinity,
                udp,
                endpoints,
            },
        )
}

fn build(specs: &[Option<SvcSpec>]) -> Snapshot {
    let mut snap = Snapshot::default();
    for (i, spec) in specs.iter().enumerate() {
        let Some(spec) = spec else { continue };
        let name = ServiceName::new("ns", format!("svc{i}"));
        let service_type = match spec.kind {
            0 => ServiceType::ClusterIp,
            1 => ServiceType::NodePort,
            _ => ServiceType::LoadBalancer,
        };
        let protocol = if spec.udp {
            Protocol::Udp
        } else {
            Protocol::Tcp
        };
        let external = service_type != ServiceType::ClusterIp;
        snap.upsert_service(Service {
            name: name.clone(),
            service_type,
            cluster_ips: vec![IpAddr::V4(Ipv4Addr::new(172, 30, i as u8, 1))],
            ports: vec![ServicePort {
                name: "p".into(),
                protocol,
                port: 80,
                node_port: external.then_some(30000 + i as u16),
            }],
            external_ips: vec![],
            load_balancer_ips: if service_type == ServiceType::LoadBalancer {
                vec![IpAddr::V4(Ipv4Addr::new(1, 2, 3, i as u8))]
            } else {
                vec![]
            },
            source_ranges: vec![],
            external_policy_local: external && spec.etp_local,
            internal_policy_local: spec.itp_local,
            session_affinity_timeout: spec.affinity.then_some(10800),
            health_check_node_port: (service_type == ServiceType::LoadBalancer && spec.etp_local)
                .then_some(31000 + i as u16),
            uid: None,
        });
        let endpoints = spec
            .endpoints
            .iter()
            .map(|&(host, local, ready, terminating)| Endpoint {
                ip: IpAddr::V4(Ipv4Addr::new(10, 180, i as u8, host)),
                ready,
                serving: ready || terminating,
                terminating: !ready && terminating,
                node_name: Some(if local {
                    "test-node".into()
                } else {
                    "other".into()
                }),
                topology: None,
            })
            .collect();
        snap.upsert_slice(
            "ns",
            EndpointSlice {
                slice_name: format!("svc{i}-x"),
                service: name,
                family: IpFamily::V4,
                ports: vec![SlicePort {
                    name: "p".into(),
                    port: 8080,
                    protocol,
                }],
                endpoints,
            },
        );
    }
    snap
}

fn config(tree: bool) -> ProxyConfig {
    let mut cfg = ProxyConfig::new("test-node", IpFamily::V4).expect("valid");
    cfg.local_detector = LocalDetector::Cidr("10.0.0.0/8".parse().expect("cidr"));
    cfg.dispatch = if tree {
        Dispatch::Tree { leaf_size: 2 }
    } else {
        Dispatch::Linear
    };
    cfg
}

/// The kernel state after a `--noflush` restore of `payload` onto `state`.
fn restored(mut state: Dump, payload: &str) -> Dump {
    apply_restore(&mut state, payload, true)
        .unwrap_or_else(|e| panic!("restore failed: {e}\n{payload}"));
    state
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn partial_payload_reaches_the_same_state_as_a_fresh_full_one(
        old in cluster(),
        new in cluster(),
        tree in any::<bool>(),
    ) {
        let cfg = config(tree);
        let old_rules = compile(&build(&old), &cfg).rules;
        let new_rules = compile(&build(&new), &cfg).rules;

        let first = plan(&AppliedState::default(), &old_rules, SyncKind::Full, &[]);
        let kernel = restored(Dump::default(), &first.payload);

        let partial = plan(&first.next, &new_rules, SyncKind::Partial, &[]);
        let after_partial = restored(kernel.clone(), &partial.payload);

        let fresh = plan(&AppliedState::default(), &new_rules, SyncKind::Full, &[]);
        let expected = restored(Dump::default(), &fresh.payload);
        prop_assert_eq!(&after_partial, &expected, "partial payload:\n{}", partial.payload);

        // A full resync on top of the old state also converges.
        let full_again = plan(&first.next, &new_rules, SyncKind::Full, &[]);
        prop_assert_eq!(&restored(kernel, &full_again.payload), &expected);

        // A no-op sync writes nothing at all.
        let noop = plan(&partial.next, &new_rules, SyncKind::Partial, &[]);
        prop_assert!(noop.payload.is_empty(), "no-op payload:\n{}", noop.payload);
        prop_assert_eq!(noop.stats.chains_written, 0);
    }

    /// The agent's path: the incremental compiler, whose applied Service chains keep only
    /// digests, plans the same partial payload as fresh compilations with all their text.
    #[test]
    fn released_text_plans_the_same_partial_payload(
        old in cluster(),
        new in cluster(),
        tree in any::<bool>(),
    ) {
        let cfg = config(tree);
        let (old_snap, new_snap) = (build(&old), build(&new));
        let with_text = {
            let first = plan(&AppliedState::default(), &compile(&old_snap, &cfg).rules, SyncKind::Full, &[]);
            plan(&first.next, &compile(&new_snap, &cfg).rules, SyncKind::Partial, &[])
        };

        let mut compiler = IncrementalCompiler::default();
        let mut applied = common::first_sync(&mut compiler, &old_snap, &cfg).next;
        applied.release_text(&mut compiler);
        let compiled = compiler.compile(&new_snap, &cfg);
        let partial = plan(&applied, &compiled.rules, SyncKind::Partial, &[]);
        prop_assert_eq!(&partial.payload, &with_text.payload);

        // And a no-op on top of released text is still empty.
        let mut applied = partial.next;
        drop(compiled);
        applied.release_text(&mut compiler);
        let compiled = compiler.compile(&new_snap, &cfg);
        prop_assert_eq!(plan(&applied, &compiled.rules, SyncKind::Partial, &[]).payload, "");
    }
}

/// Released text is never written: a full plan over cached chains whose text was released is
/// an error naming the chain, and after `forget` the compiler has all the text again.
#[test]
fn released_text_is_never_written() {
    let spec = SvcSpec {
        kind: 0,
        etp_local: false,
        itp_local: false,
        affinity: false,
        udp: false,
        endpoints: vec![(1, true, true, false)],
    };
    let snap = build(&[Some(spec)]);
    let cfg = config(false);
    let mut compiler = IncrementalCompiler::default();
    let full = common::first_sync(&mut compiler, &snap, &cfg);
    let mut applied = full.next;
    assert_eq!(
        applied.release_text(&mut compiler),
        1,
        "one Service group released"
    );

    let cached = compiler.compile(&snap, &cfg);
    let err: PlanError = knat::rules::plan(&applied, &cached.rules, SyncKind::Full, &[])
        .expect_err("released text cannot be written");
    assert!(err.chain.as_str().starts_with("KUBE-S"), "{err}");
    // A partial sync of the unchanged state needs no text at all.
    assert_eq!(
        plan(&applied, &cached.rules, SyncKind::Partial, &[]).payload,
        ""
    );
    drop(cached);

    compiler.forget();
    let fresh = compiler.compile(&snap, &cfg);
    let again = plan(&applied, &fresh.rules, SyncKind::Full, &[]);
    assert_eq!(again.payload, full.payload);
}

/// A one-endpoint change writes only the service's policy chain and the new SEP chain, and
/// deletes the old SEP chain: not KUBE-SERVICES, not other services.
#[test]
fn one_endpoint_change_touches_only_that_service() {
    let spec = |host: u8| SvcSpec {
        kind: 0,
        etp_local: false,
        itp_local: false,
        affinity: false,
        udp: false,
        endpoints: vec![(host, true, true, false), (9, false, true, false)],
    };
    let cfg = config(false);
    let before: Vec<Option<SvcSpec>> = (0..5).map(|_| Some(spec(1))).collect();
    let mut after = before.clone();
    after[2] = Some(spec(2));
    let old_rules = compile(&build(&before), &cfg).rules;
    let new_rules = compile(&build(&after), &cfg).rules;
    let first = plan(&AppliedState::default(), &old_rules, SyncKind::Full, &[]);
    let partial = plan(&first.next, &new_rules, SyncKind::Partial, &[]);
    assert_eq!(partial.stats.chains_written, 2, "{}", partial.payload);
    assert_eq!(partial.stats.chains_deleted, 1, "{}", partial.payload);
    assert!(
        !partial.payload.contains(":KUBE-SERVICES"),
        "{}",
        partial.payload
    );
    assert!(
        partial.payload.contains("10.180.2.2:8080"),
        "{}",
        partial.payload
    );
    assert!(
        partial
            .payload
            .lines()
            .any(|l| l.starts_with("-X KUBE-SEP-")),
        "{}",
        partial.payload
    );
    assert!(
        partial.stats.bytes * 5 < first.stats.bytes,
        "partial {} vs full {}",
        partial.stats.bytes,
        first.stats.bytes
    );
}

/// Hooks that cannot exist yet (cold start) are inserted by the restore itself: applied to an
/// empty kernel, the payload leaves every builtin chain starting with its hooks in
/// `RuleSet.hooks` order, each once, exactly what `-C`/`-I` after the restore produced.
#[test]
fn hooks_inserted_by_the_restore_land_once_in_order() {
    let spec = SvcSpec {
        kind: 1,
        etp_local: true,
        itp_local: false,
        affinity: false,
        udp: false,
        endpoints: vec![(1, true, true, false)],
    };
    let rules = compile(&build(&[Some(spec)]), &config(true)).rules;
    assert!(rules.hooks.len() >= 8, "{:?}", rules.hooks);
    let planned = common::cold_start_plan(&rules, ChainOrder::Descending);
    let kernel = restored(Dump::default(), &planned.payload);
    // With hooks too, the pieces the agent streams are the old writer's text.
    let hooks: Vec<_> = rules.hooks.iter().collect();
    for order in [ChainOrder::Descending, ChainOrder::Scattered] {
        let streamed = knat::rules::plan_restore(
            &AppliedState::default(),
            &rules,
            SyncKind::Full,
            &[],
            &hooks,
            order,
        )
        .expect("fresh text");
        let text = common::cold_start_plan(&rules, order).payload;
        assert!(text.contains("-I "), "{text}");
        assert_eq!(
            common::payload_text_as_before(&streamed.payload, &hooks),
            text
        );
        assert_eq!(common::streamed_text(&streamed.payload, 5), text);
    }
    for hook in &rules.hooks {
        let chain = &kernel.tables[hook.table.as_str()].chains[hook.chain.as_str()];
        let wanted: Vec<String> = rules
            .hooks
            .iter()
            .filter(|h| h.table == hook.table && h.chain == hook.chain)
            .map(|h| h.rule.to_string())
            .collect();
        let got: Vec<String> = chain.rules.iter().map(|r| r.text.clone()).collect();
        assert_eq!(
            got,
            wanted,
            "{} {}:\n{}",
            hook.table.as_str(),
            hook.chain,
            planned.payload
        );
    }
    // Without hooks the payload is the plain plan.
    let plain = plan(&AppliedState::default(), &rules, SyncKind::Full, &[]);
    assert_eq!(
        plain.payload,
        plan_with_hooks(
            &AppliedState::default(),
            &rules,
            SyncKind::Full,
            &[],
            &[],
            ChainOrder::Descending
        )
        .expect("fresh text")
        .payload
    );
    assert!(!plain.payload.contains("-I "), "{}", plain.payload);
    // The scattered order (iptables-nft) writes the same lines and reaches the same kernel
    // state; only the order of chains differs.
    let scattered = common::cold_start_plan(&rules, ChainOrder::Scattered);
    assert_ne!(scattered.payload, planned.payload);
    let sorted_lines = |payload: &str| {
        let mut lines: Vec<&str> = payload.lines().collect();
        lines.sort_unstable();
        lines.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(
        sorted_lines(&scattered.payload),
        sorted_lines(&planned.payload)
    );
    assert_eq!(restored(Dump::default(), &scattered.payload), kernel);
}

/// One step of a cluster's history: a Service slot replaced (added, changed or removed), or
/// only its endpoints changed (the common sync, which reuses the shared chains).
#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, Option<SvcSpec>),
    Endpoints(usize, Vec<(u8, bool, bool, bool)>),
    /// The Service goes, its slice stays (as upstream, until the slice is deleted too).
    RemoveServiceOnly(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0usize..6, prop::option::of(svc_spec())).prop_map(|(i, s)| Edit::Replace(i, s)),
        (
            0usize..6,
            prop::collection::vec((1u8..12, any::<bool>(), any::<bool>(), any::<bool>()), 0..5)
        )
            .prop_map(|(i, e)| Edit::Endpoints(i, e)),
        (0usize..6).prop_map(Edit::RemoveServiceOnly),
    ]
}

/// Applies `edit` to the cluster description; `orphans` are the slots whose Service was
/// removed while its slice stays.
fn apply_edit(cluster: &mut Vec<Option<SvcSpec>>, orphans: &mut Vec<usize>, edit: &Edit) {
    let slot = match edit {
        Edit::Replace(i, _) | Edit::Endpoints(i, _) | Edit::RemoveServiceOnly(i) => *i,
    };
    orphans.retain(|&o| o != slot);
    if cluster.len() <= slot {
        cluster.resize(slot + 1, None);
    }
    match edit {
        Edit::Replace(_, spec) => cluster[slot] = spec.clone(),
        Edit::Endpoints(_, endpoints) => {
            if let Some(spec) = &mut cluster[slot] {
                spec.endpoints = endpoints.clone();
            }
        }
        Edit::RemoveServiceOnly(_) => {
            if cluster[slot].is_some() {
                orphans.push(slot);
            }
        }
    }
}

/// The cluster's snapshot, with the Services of `orphans` removed and their slices kept.
fn build_with_orphans(cluster: &[Option<SvcSpec>], orphans: &[usize]) -> Snapshot {
    let mut snap = build(cluster);
    for &slot in orphans {
        snap.remove_service(&ServiceName::new("ns", format!("svc{slot}")));
    }
    snap
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The agent's path over a history of syncs: one incremental compiler (whose rule sets
    /// carry their lineage, so the planner looks only at what changed), text released after
    /// every successful restore, and some restores failing (the record is then not adopted).
    /// After every successful sync the kernel holds exactly what a fresh full sync of a fresh
    /// compilation of that cluster produces, and the named chains equal a fresh compilation's.
    #[test]
    fn incremental_syncs_reach_the_state_of_full_syncs(
        start in cluster(),
        steps in prop::collection::vec((edit(), prop::bool::weighted(0.2)), 1..8),
        tree in any::<bool>(),
        large in any::<bool>(),
    ) {
        let mut cfg = config(tree);
        if large {
            // Large-cluster mode (no per-endpoint comments) switches on and off as endpoints
            // come and go; every switch recompiles everything.
            cfg.large_cluster_threshold = 6;
        }
        let mut cluster = start;
        let mut orphans = Vec::new();
        let mut compiler = IncrementalCompiler::default();
        let first = common::first_sync(&mut compiler, &build(&cluster), &cfg);
        let mut kernel = restored(Dump::default(), &first.payload);
        let mut applied = first.next;
        applied.release_text(&mut compiler);
        for (edit, restore_fails) in &steps {
            apply_edit(&mut cluster, &mut orphans, edit);
            let snap = build_with_orphans(&cluster, &orphans);
            let compiled = compiler.compile(&snap, &cfg);
            let fresh = compile(&snap, &cfg);
            prop_assert_eq!(compiled.large_cluster, fresh.large_cluster);
            prop_assert_eq!(&compiled.rules.nat.chains, &fresh.rules.nat.chains);
            prop_assert_eq!(&compiled.rules.filter.chains, &fresh.rules.filter.chains);
            prop_assert_eq!(&compiled.rules.hooks, &fresh.rules.hooks);
            let partial = plan(&applied, &compiled.rules, SyncKind::Partial, &[]);
            drop(compiled);
            if *restore_fails {
                // Nothing reached the kernel; the agent keeps its record (and the cache's
                // fresh fragments keep their text until a restore succeeds).
                continue;
            }
            kernel = restored(kernel, &partial.payload);
            let expected = restored(
                Dump::default(),
                &plan(&AppliedState::default(), &fresh.rules, SyncKind::Full, &[]).payload,
            );
            prop_assert_eq!(&kernel, &expected, "after {:?}, partial payload:\n{}", edit, partial.payload);
            applied = partial.next;
            applied.release_text(&mut compiler);
        }
    }
}

/// Slices whose Service is gone still count for large-cluster mode, as upstream counts them,
/// and the incremental compiler (which counts while walking its cache) agrees.
#[test]
fn orphan_slices_count_for_large_cluster_mode() {
    let spec = SvcSpec {
        kind: 0,
        etp_local: false,
        itp_local: false,
        affinity: false,
        udp: false,
        endpoints: vec![
            (1, true, true, false),
            (2, true, true, false),
            (3, false, true, false),
        ],
    };
    let cluster = vec![Some(spec.clone()), Some(spec.clone()), Some(spec)];
    let mut cfg = config(false);
    cfg.large_cluster_threshold = 7;
    let mut compiler = IncrementalCompiler::default();
    let all = build(&cluster);
    assert!(
        compiler.compile(&all, &cfg).large_cluster,
        "9 endpoints > 7"
    );
    // svc1 goes, its slice stays: still 9 endpoints in slices.
    let orphaned = build_with_orphans(&cluster, &[1]);
    let fresh = compile(&orphaned, &cfg);
    assert!(fresh.large_cluster, "upstream counts the orphan slice");
    assert_eq!(
        compiler.compile(&orphaned, &cfg).large_cluster,
        fresh.large_cluster
    );
    // Its slice goes too: 6 endpoints.
    let mut gone = orphaned.clone();
    gone.remove_slice("ns", "svc1-x");
    assert!(!compiler.compile(&gone, &cfg).large_cluster);
    assert!(!compile(&gone, &cfg).large_cluster);
}

/// Brings `live` to the contents of `target` through the snapshot's journaling methods, as
/// the agent's watch does: only the Services and slices that differ are touched.
fn sync_snapshot(live: &mut Snapshot, target: &Snapshot) {
    let gone: Vec<ServiceName> = live
        .services()
        .keys()
        .filter(|name| !target.services().contains_key(*name))
        .cloned()
        .collect();
    for name in gone {
        live.remove_service(&name);
    }
    for (name, service) in target.services() {
        if live.service(name) != Some(service) {
            live.upsert_service((**service).clone());
        }
    }
    let stale: Vec<(String, String)> = live
        .slice_owners()
        .keys()
        .filter(|key| !target.slice_owners().contains_key(*key))
        .cloned()
        .collect();
    for (namespace, name) in stale {
        live.remove_slice(&namespace, &name);
    }
    for (namespace, name) in target.slice_owners().keys() {
        let wanted = target.find_slice(namespace, name);
        if live.find_slice(namespace, name) != wanted
            && let Some(slice) = wanted
        {
            live.upsert_slice(namespace, slice.clone());
        }
    }
    assert_eq!(live, target, "the journaled updates reach the target");
}

/// One Service group as compared: its Service and per chain name, rule count and digest.
type GroupSummary = (ServiceName, Vec<(String, usize, u128)>);

/// How one sync of a history ends.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Restored,
    /// The restore fails: the kernel and the record stay as they were.
    Fails,
    /// A full resync (as the agent makes after a failure): the cache is forgotten, every chain
    /// written, stale chains found in the kernel deleted.
    FullResync,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        6 => Just(Outcome::Restored),
        2 => Just(Outcome::Fails),
        1 => Just(Outcome::FullResync),
    ]
}

/// The nat chains in the kernel model that knat owns (what the agent's listing reports).
fn owned_chains(kernel: &Dump) -> Vec<(knat::rules::TableName, knat::rules::ChainName)> {
    kernel
        .tables
        .get("nat")
        .into_iter()
        .flat_map(|t| t.chains.keys())
        .map(|name| knat::rules::ChainName::new(name.as_str()))
        .filter(|name| name.is_service_chain())
        .map(|name| (knat::rules::TableName::Nat, name))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// The agent's path with the snapshot's journal: one live snapshot changed only through
    /// its journaling methods, one incremental compiler that looks only at the Services the
    /// journal names, changes arriving between a compile and its restore (which then succeeds
    /// or fails), slices deleted while their Service stays, failed restores and full resyncs. After every successful sync the kernel
    /// holds exactly what a fresh full sync of a fresh compilation of the compiled cluster
    /// produces, and the compiler looked at no more Services than the journal named.
    #[test]
    fn journaled_syncs_reach_the_state_of_full_syncs(
        start in cluster(),
        steps in prop::collection::vec(
            (edit(), outcome(), prop::option::weighted(0.3, edit()), prop::option::weighted(0.2, 0usize..6)),
            1..10,
        ),
        tree in any::<bool>(),
        large in any::<bool>(),
    ) {
        let mut cfg = config(tree);
        if large {
            cfg.large_cluster_threshold = 6;
        }
        let mut cluster = start;
        let mut orphans = Vec::new();
        let mut live = Snapshot::default();
        sync_snapshot(&mut live, &build(&cluster));
        let mut compiler = IncrementalCompiler::default();
        let mut was_large = live.endpoint_count() > cfg.large_cluster_threshold;
        let first = common::first_sync(&mut compiler, &live, &cfg);
        let mut kernel = restored(Dump::default(), &first.payload);
        let mut applied = first.next;
        applied.release_text(&mut compiler);
        // Edits since the last compile (each touches one Service's name).
        let mut pending = 0;
        // Slots whose slice was deleted while the Service stays (until the slot is edited).
        let mut sliceless: Vec<usize> = Vec::new();
        let target = |cluster: &[Option<SvcSpec>], orphans: &[usize], sliceless: &[usize]| {
            let mut snap = build_with_orphans(cluster, orphans);
            for slot in sliceless {
                snap.remove_slice("ns", &format!("svc{slot}-x"));
            }
            snap
        };
        for (edit, outcome, late, drop_slice) in &steps {
            apply_edit(&mut cluster, &mut orphans, edit);
            let slot = match edit {
                Edit::Replace(i, _) | Edit::Endpoints(i, _) | Edit::RemoveServiceOnly(i) => *i,
            };
            sliceless.retain(|&s| s != slot);
            if let Some(slot) = drop_slice {
                sliceless.push(*slot);
                pending += 1;
            }
            sync_snapshot(&mut live, &target(&cluster, &orphans, &sliceless));
            pending += 1;
            let full = matches!(outcome, Outcome::FullResync);
            if full {
                compiler.forget();
            }
            let compiled = compiler.compile(&live, &cfg);
            // Large-cluster mode flipping recompiles everything; otherwise the journal says
            // where to look.
            if !full && compiled.large_cluster == was_large {
                prop_assert!(
                    compiler.last_examined <= pending,
                    "looked at {} Services for {} edits", compiler.last_examined, pending
                );
            }
            was_large = compiled.large_cluster;
            pending = 0;
            let as_compiled = live.clone();
            if let Some(late) = late {
                // A change arrives while the restore runs: the next sync must pick it up.
                apply_edit(&mut cluster, &mut orphans, late);
                let slot = match late {
                    Edit::Replace(i, _) | Edit::Endpoints(i, _) | Edit::RemoveServiceOnly(i) => *i,
                };
                sliceless.retain(|&s| s != slot);
                sync_snapshot(&mut live, &target(&cluster, &orphans, &sliceless));
                pending += 1;
            }
            let fresh = compile(&as_compiled, &cfg);
            prop_assert_eq!(compiled.large_cluster, fresh.large_cluster);
            prop_assert_eq!(&compiled.rules.nat.chains, &fresh.rules.nat.chains);
            prop_assert_eq!(&compiled.rules.filter.chains, &fresh.rules.filter.chains);
            prop_assert_eq!(&compiled.rules.hooks, &fresh.rules.hooks);
            // Groups: the same Services, chains, counts and digests (reused ones have only
            // their digests left).
            let groups = |rs: &RuleSet| -> Vec<GroupSummary> {
                rs.nat
                    .groups
                    .iter()
                    .chain(rs.filter.groups.iter())
                    .map(|g| {
                        let chains = g
                            .summaries()
                            .into_iter()
                            .map(|c| (c.name.to_string(), c.count, c.digest))
                            .collect();
                        (g.key.clone(), chains)
                    })
                    .collect()
            };
            prop_assert_eq!(groups(&compiled.rules), groups(&fresh.rules));
            prop_assert_eq!(compiled.rules.nat.rule_count(), fresh.rules.nat.rule_count());
            prop_assert_eq!(compiled.rules.nat.chain_count(), fresh.rules.nat.chain_count());
            prop_assert_eq!(&compiled.health, &fresh.health);
            prop_assert_eq!(&compiled.udp, &fresh.udp);
            prop_assert_eq!(compiled.no_local_endpoints_internal, fresh.no_local_endpoints_internal);
            prop_assert_eq!(compiled.no_local_endpoints_external, fresh.no_local_endpoints_external);
            let planned = if full {
                plan(&applied, &compiled.rules, SyncKind::Full, &owned_chains(&kernel))
            } else {
                plan(&applied, &compiled.rules, SyncKind::Partial, &[])
            };
            drop(compiled);
            if matches!(outcome, Outcome::Fails) {
                continue;
            }
            kernel = restored(kernel, &planned.payload);
            let expected = restored(
                Dump::default(),
                &plan(&AppliedState::default(), &fresh.rules, SyncKind::Full, &[]).payload,
            );
            prop_assert_eq!(&kernel, &expected, "after {:?}, payload:\n{}", edit, planned.payload);
            applied = planned.next;
            applied.release_text(&mut compiler);
        }
    }
}
