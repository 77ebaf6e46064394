//! Render and plan benchmark: prints a table of compile, render and plan costs for synthetic
//! clusters of 1,000 / 10,000 / 50,000 services with 10 endpoints each.
//!
//! Each size runs in child processes of its own (`--runs`, default 5) so that the peak resident
//! memory reported (VmHWM) belongs to that size alone and first-touch page faults are counted
//! as the agent pays them; the row shown is the run with the median compile+render. Run with:
//!     cargo run --release --example render-bench [-- --sizes 1000,10000,50000 --runs 5]

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Instant;

use ipnet::IpNet;
use knat::config::{Dispatch, LocalDetector, ProxyConfig};
use knat::model::*;
use knat::rules::compile::IncrementalCompiler;
use knat::rules::plan::SyncKind;
use knat::rules::{AppliedState, ChainName, RuleSet, compile, plan, render_standalone};

#[path = "../tests/common/mod.rs"]
mod common;

// The same allocator as the knat binary, so the numbers describe what the agent does.
#[global_allocator]
static GLOBAL: CountingMimalloc = CountingMimalloc;

/// mimalloc, plus a count of live heap bytes while [`COUNTING`] is on (`--profile-compile`
/// only, so timed rows pay nothing but a relaxed load): RSS minus live bytes is what the
/// allocator keeps for itself.
struct CountingMimalloc;
static COUNTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static LIVE_BYTES: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

fn count(delta: isize) {
    use std::sync::atomic::Ordering::Relaxed;
    if COUNTING.load(Relaxed) {
        LIVE_BYTES.fetch_add(delta, Relaxed);
    }
}

/// Live heap MiB counted since counting was switched on.
fn live_mib() -> isize {
    LIVE_BYTES.load(std::sync::atomic::Ordering::Relaxed) >> 20
}

// SAFETY: every call is forwarded unchanged to mimalloc; only a counter is updated.
unsafe impl std::alloc::GlobalAlloc for CountingMimalloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: forwarded with the caller's layout.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        count(-(layout.size() as isize));
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: forwarded with the caller's layout.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: forwarded with the caller's pointer, layout and size.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

const ENDPOINTS: usize = 10;
const NODES: usize = 100;

fn service_ip(i: usize) -> IpAddr {
    // Spread over 10.96.0.0/12 like an allocator would (a fixed odd stride permutes the range).
    let offset = ((i as u64 * 2_654_435_761) % (1 << 20)) as u32;
    IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(10, 96, 0, 0)) + offset,
    ))
}

fn endpoint_ip(i: usize, j: usize) -> IpAddr {
    let n = (i * ENDPOINTS + j) as u32;
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + n))
}

/// First NodePort of the NodePort rows (a widened `--service-node-port-range`: the default
/// 30000-32767 holds only 2,768).
const NODE_PORT_BASE: usize = 20_000;

/// NodePort rows: every Service is of type NodePort (set once per process by `--nodeports`).
static NODEPORTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn nodeports() -> bool {
    NODEPORTS.load(std::sync::atomic::Ordering::Relaxed)
}

fn node_port(i: usize) -> u16 {
    u16::try_from(NODE_PORT_BASE + i).expect("NodePort rows have at most 45,535 Services")
}

fn snapshot(services: usize) -> Snapshot {
    let mut snap = Snapshot::default();
    for i in 0..services {
        let name = ServiceName::new(format!("ns{}", i % 50), format!("svc{i}"));
        snap.upsert_service(Service {
            name: name.clone(),
            service_type: if nodeports() {
                ServiceType::NodePort
            } else {
                ServiceType::ClusterIp
            },
            cluster_ips: vec![service_ip(i)],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: nodeports().then(|| node_port(i)),
            }],
            external_ips: vec![],
            load_balancer_ips: vec![],
            source_ranges: vec![],
            external_policy_local: false,
            internal_policy_local: false,
            session_affinity_timeout: None,
            health_check_node_port: None,
            uid: None,
        });
        let endpoints = (0..ENDPOINTS)
            .map(|j| Endpoint {
                ip: endpoint_ip(i, j),
                ready: true,
                serving: true,
                terminating: false,
                node_name: Some(format!("node-{}", (i + j) % NODES)),
                topology: None,
            })
            .collect();
        let namespace = name.namespace.clone();
        snap.upsert_slice(
            &namespace,
            EndpointSlice {
                slice_name: format!("svc{i}-abcde"),
                service: name,
                family: IpFamily::V4,
                ports: vec![SlicePort {
                    name: "http".into(),
                    port: 8080,
                    protocol: Protocol::Tcp,
                }],
                endpoints,
            },
        );
    }
    snap
}

/// What a KUBE-SERVICES or dispatch rule matches on, read once from its text.
struct WalkRule {
    dst: Option<IpNet>,
    dport: Option<(u16, u16)>,
    addrtype: bool,
    jump: Option<String>,
}

/// The nat KUBE-SERVICES and dispatch chains, parsed for walking.
struct Walker(std::collections::HashMap<String, Vec<WalkRule>>);

impl Walker {
    fn new(rs: &RuleSet) -> Self {
        let mut chains = std::collections::HashMap::new();
        for rules in rs.nat.chains.values() {
            let name = rules.chain().as_str();
            if name != ChainName::KUBE_SERVICES
                && name != ChainName::KUBE_NODEPORTS
                && !name.starts_with("KNAT-DST-")
                && !name.starts_with("KNAT-NP-")
            {
                continue;
            }
            let parsed = rules
                .lines()
                .map(|line| {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let value = |flag: &str| {
                        words
                            .windows(2)
                            .find(|w| w[0] == flag)
                            .map(|w| w[1])
                            .filter(|_| !words.contains(&"!"))
                    };
                    WalkRule {
                        dst: value("-d").and_then(|d| {
                            d.parse::<IpNet>()
                                .ok()
                                .or_else(|| d.parse::<IpAddr>().ok().map(IpNet::from))
                        }),
                        dport: value("--dport").and_then(|p| match p.split_once(':') {
                            Some((lo, hi)) => Some((lo.parse().ok()?, hi.parse().ok()?)),
                            None => p.parse().ok().map(|p| (p, p)),
                        }),
                        addrtype: words.contains(&"addrtype"),
                        jump: value("-j").map(str::to_string),
                    }
                })
                .collect();
            chains.insert(name.to_string(), parsed);
        }
        Walker(chains)
    }

    /// Number of rules a new connection to `dst:80` is compared with in KUBE-SERVICES and the
    /// dispatch chains before it matches its service rule.
    fn rules_walked(&self, dst: IpAddr) -> usize {
        let mut count = 0;
        self.walk(ChainName::KUBE_SERVICES, dst, 80, &mut count);
        count
    }

    /// Number of rules a new connection to NodePort `port` on a node address is compared
    /// with in KUBE-NODEPORTS and the NodePort dispatch chains (after KUBE-SERVICES).
    fn nodeport_rules_walked(&self, port: u16) -> usize {
        let mut count = 0;
        self.walk(
            ChainName::KUBE_NODEPORTS,
            IpAddr::from([192, 0, 2, 1]),
            port,
            &mut count,
        );
        count
    }

    fn walk(&self, chain: &str, dst: IpAddr, port: u16, count: &mut usize) -> bool {
        let Some(rules) = self.0.get(chain) else {
            return false;
        };
        for rule in rules {
            *count += 1;
            let matched = rule.dst.is_none_or(|net| net.contains(&dst))
                && rule.dport.is_none_or(|(lo, hi)| (lo..=hi).contains(&port))
                && !rule.addrtype;
            if !matched {
                continue;
            }
            match &rule.jump {
                Some(next) if next.starts_with("KNAT-DST-") || next.starts_with("KNAT-NP-") => {
                    if self.walk(next, dst, port, count) {
                        return true;
                    }
                }
                _ => return true,
            }
        }
        false
    }
}

/// One endpoint of the middle Service gets a new address.
fn change_one_endpoint(snap: &mut Snapshot, services: usize) {
    change_endpoint_of(
        snap,
        services / 2,
        IpAddr::V4(Ipv4Addr::new(10, 127, 255, 254)),
    );
}

/// The first endpoint of Service `i` gets the address `ip` (a slice update, as the agent's
/// watch applies it).
fn change_endpoint_of(snap: &mut Snapshot, i: usize, ip: IpAddr) {
    let target = ServiceName::new(format!("ns{}", i % 50), format!("svc{i}"));
    let slice = snap.slices_of(&target).next().cloned();
    if let Some(mut slice) = slice {
        slice.endpoints[0].ip = ip;
        let namespace = target.namespace.clone();
        snap.upsert_slice(&namespace, slice);
    }
}

/// Median of `times` in ms.
fn median_ms(mut times: Vec<std::time::Duration>) -> f64 {
    times.sort();
    times.get(times.len() / 2).map_or(f64::NAN, |d| ms(*d))
}

/// Changes measured per row (each a different Service), and no-op syncs.
const CHANGES: usize = 7;

/// A memory figure of this process from `/proc/self/status` (`VmHWM`, `VmRSS`), in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| {
                    l.strip_prefix(field)
                        .is_some_and(|rest| rest.starts_with(':'))
                })
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn peak_rss_kib() -> u64 {
    status_kib("VmHWM")
}

fn rss_kib() -> u64 {
    status_kib("VmRSS")
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn run_size(services: usize, dispatch: Dispatch) -> String {
    let build_start = Instant::now();
    let mut snap = snapshot(services);
    let build = build_start.elapsed();
    let mut cfg = ProxyConfig::new("node-1", IpFamily::V4).expect("valid node name");
    cfg.local_detector = LocalDetector::Cidr("10.128.0.0/9".parse().expect("valid CIDR"));
    cfg.dispatch = dispatch;

    let cpu_before = cpu_time();
    let t = Instant::now();
    let compiled = compile(&snap, &cfg);
    let compile_time = t.elapsed();
    let t = Instant::now();
    let standalone = render_standalone(&compiled.rules);
    let render_time = t.elapsed();
    let compile_render_cpu = cpu_time().saturating_sub(cpu_before);
    let t = Instant::now();
    let full = plan(
        &AppliedState::default(),
        &compiled.rules,
        SyncKind::Full,
        &[],
    )
    .expect("a fresh compilation has all its text");
    let plan_full_time = t.elapsed();

    // The agent's path: an incremental compiler that saw the cluster before the change.
    let mut incremental = IncrementalCompiler::default();
    let mut applied = common::first_sync(&mut incremental, &snap, &cfg).next;
    // As the agent does once the restore succeeded: keep digests only.
    applied.release_text(&mut incremental);
    change_one_endpoint(&mut snap, services);
    let t = Instant::now();
    let compiled2 = incremental.compile(&snap, &cfg);
    let partial = plan(&applied, &compiled2.rules, SyncKind::Partial, &[])
        .expect("changed chains are compiled afresh");
    let change_time = t.elapsed();
    let recompiled = incremental.last_recompiled;
    let noop = plan(&partial.next, &compiled2.rules, SyncKind::Partial, &[])
        .expect("a no-op writes nothing");
    // As the agent goes on: adopt, release, then more single changes and no-op syncs.
    let mut applied = partial.next;
    drop(compiled2);
    applied.release_text(&mut incremental);
    let mut change_times = vec![change_time];
    for k in 1..CHANGES {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 127, 255, 254 - k as u8));
        change_endpoint_of(&mut snap, (services / 2 + k * 7919) % services, ip);
        let t = Instant::now();
        let compiled = incremental.compile(&snap, &cfg);
        let partial = plan(&applied, &compiled.rules, SyncKind::Partial, &[])
            .expect("changed chains are compiled afresh");
        change_times.push(t.elapsed());
        assert_eq!(incremental.last_recompiled, 1, "one Service changed");
        applied = partial.next;
        drop(compiled);
        applied.release_text(&mut incremental);
    }
    let mut noop_times = Vec::new();
    for _ in 0..CHANGES {
        let t = Instant::now();
        let compiled = incremental.compile(&snap, &cfg);
        let partial = plan(&applied, &compiled.rules, SyncKind::Partial, &[])
            .expect("a no-op writes nothing");
        noop_times.push(t.elapsed());
        assert!(partial.payload.is_empty(), "a no-op sync writes nothing");
        applied = partial.next;
        drop(compiled);
        applied.release_text(&mut incremental);
    }
    let change_median = median_ms(change_times);
    let noop_median = median_ms(noop_times);

    let walker = Walker::new(&compiled.rules);
    let walked = |i: usize| {
        if nodeports() {
            walker.nodeport_rules_walked(node_port(i))
        } else {
            walker.rules_walked(service_ip(i))
        }
    };
    let first = walked(0);
    let worst = (0..services).map(walked).max().unwrap_or(0);
    let mode = match (dispatch, nodeports()) {
        (Dispatch::Linear, false) => "linear",
        (Dispatch::Tree { .. }, false) => "tree",
        (Dispatch::Linear, true) => "linear, NodePorts",
        (Dispatch::Tree { .. }, true) => "tree, NodePorts",
    };
    format!(
        "| {services} | {mode} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} | {:.2} | {} | {} | {} | {} | {:.0} |",
        ms(build),
        ms(compile_time),
        ms(render_time),
        ms(compile_time + render_time),
        ms(plan_full_time),
        standalone.len(),
        full.stats.bytes,
        partial.stats.bytes,
        format_args!("{change_median:.2} ({recompiled} svc)"),
        noop_median,
        noop.stats.bytes,
        format_args!("{first}/{worst}"),
        peak_rss_kib() / 1024,
        compiled.rules.nat.chain_count(),
        ms(compile_render_cpu),
    )
}

/// CPU time (user and system) this process used so far, over all its threads, finished ones
/// included: on a shared machine steadier than wall time, which waits for a core.
fn cpu_time() -> std::time::Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return std::time::Duration::ZERO;
    };
    let duration = |t: nix::sys::time::TimeVal| {
        std::time::Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + std::time::Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    duration(usage.user_time()) + duration(usage.system_time())
}

fn main() {
    // As the knat binary does (see src/memory.rs).
    knat::memory::purge_immediately();
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "--profile-compile") {
        // Compile (and render) the same snapshot repeatedly, for a profiler.
        let size: usize = args
            .get(pos + 1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(10_000);
        COUNTING.store(
            std::env::var_os("KNAT_BENCH_NO_COUNT").is_none(),
            std::sync::atomic::Ordering::Relaxed,
        );
        let snap = snapshot(size);
        let snapshot_rss = rss_kib() / 1024;
        println!(
            "snapshot: RSS {snapshot_rss} MiB, live heap {} MiB",
            live_mib()
        );
        let mut cfg = ProxyConfig::new("node-1", IpFamily::V4).expect("valid node name");
        cfg.local_detector = LocalDetector::Cidr("10.128.0.0/9".parse().expect("valid CIDR"));
        for _ in 0..5 {
            let t = Instant::now();
            let compiled = compile(&snap, &cfg);
            let c = t.elapsed();
            let after_compile = rss_kib() / 1024;
            let live_after_compile = live_mib();
            let t = Instant::now();
            let text = render_standalone(&compiled.rules);
            let r = t.elapsed();
            println!(
                "compile {:.1} ms, render {:.1} ms ({} bytes); RSS {} MiB with the snapshot, {after_compile} MiB (live heap {live_after_compile}) after compile, {} MiB after render",
                ms(c),
                ms(r),
                text.len(),
                snapshot_rss,
                rss_kib() / 1024,
            );
        }
        {
            // The agent's steady state: compiled, applied, then only digests kept.
            let mut compiler = IncrementalCompiler::default();
            let full = common::first_sync(&mut compiler, &snap, &cfg);
            let after_plan = rss_kib() / 1024;
            let live_after_plan = live_mib();
            let mut applied = full.next;
            drop(full.payload);
            let t = Instant::now();
            let released = applied.release_text(&mut compiler);
            let took = t.elapsed();
            println!(
                "agent steady state: RSS {after_plan} MiB (live heap {live_after_plan}) after compile + plan, {} MiB (live heap {}) after releasing the text of {released} groups ({:.1} ms)",
                rss_kib() / 1024,
                live_mib(),
                ms(took),
            );
            drop(applied);
            println!("without the applied state: live heap {} MiB", live_mib());
            drop(compiler);
            println!(
                "without compiler and applied state: RSS {} MiB, live heap {} MiB",
                rss_kib() / 1024,
                live_mib()
            );
        }
        if let Some(dir) = args
            .iter()
            .position(|a| a == "--write")
            .and_then(|p| args.get(p + 1))
        {
            // The standalone payload and the partial payload of one endpoint change, for timing
            // iptables-restore on its own.
            let mut compiler = IncrementalCompiler::default();
            let full = common::first_sync(&mut compiler, &snap, &cfg);
            let mut applied = full.next;
            applied.release_text(&mut compiler);
            let mut snap = snap;
            change_one_endpoint(&mut snap, size);
            let after = compiler.compile(&snap, &cfg);
            let change = plan(&applied, &after.rules, SyncKind::Partial, &[])
                .expect("changed chains are compiled afresh");
            let write = |name: &str, text: &str| {
                let path = std::path::Path::new(dir).join(name);
                std::fs::write(&path, text).expect("writable output directory");
                println!("wrote {} ({} bytes)", path.display(), text.len());
            };
            write("full.txt", &full.payload);
            write("change.txt", &change.payload);
        }
        return;
    }
    if let Some(pos) = args.iter().position(|a| a == "--profile-sync") {
        // Many single-endpoint changes and no-op syncs on one cluster, for a profiler.
        let size: usize = args
            .get(pos + 1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(10_000);
        let mut snap = snapshot(size);
        let mut cfg = ProxyConfig::new("node-1", IpFamily::V4).expect("valid node name");
        cfg.local_detector = LocalDetector::Cidr("10.128.0.0/9".parse().expect("valid CIDR"));
        let mut compiler = IncrementalCompiler::default();
        let mut applied = common::first_sync(&mut compiler, &snap, &cfg).next;
        applied.release_text(&mut compiler);
        let (mut changes, mut noops) = (Vec::new(), Vec::new());
        for k in 0..200usize {
            let ip = IpAddr::V4(Ipv4Addr::new(10, 127, (k / 250) as u8, (k % 250) as u8));
            change_endpoint_of(&mut snap, (k * 7919) % size, ip);
            for times in [&mut changes, &mut noops] {
                let t = Instant::now();
                let compiled = compiler.compile(&snap, &cfg);
                let partial = plan(&applied, &compiled.rules, SyncKind::Partial, &[])
                    .expect("changed chains are compiled afresh");
                times.push(t.elapsed());
                applied = partial.next;
                drop(compiled);
                applied.release_text(&mut compiler);
            }
        }
        println!(
            "{size} services: one-endpoint change {:.2} ms, no-op {:.2} ms (medians of 200)",
            median_ms(changes),
            median_ms(noops)
        );
        return;
    }
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        let size: usize = args
            .get(pos + 1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(1000);
        let dispatch = if args.iter().any(|a| a == "--linear") {
            Dispatch::Linear
        } else {
            Dispatch::Tree {
                leaf_size: knat::config::DEFAULT_LEAF_SIZE,
            }
        };
        NODEPORTS.store(
            args.iter().any(|a| a == "--nodeports"),
            std::sync::atomic::Ordering::Relaxed,
        );
        println!("{}", run_size(size, dispatch));
        return;
    }
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|p| args.get(p + 1))
        .map(|s| s.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![1000, 10_000, 50_000]);
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|p| args.get(p + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let exe = std::env::current_exe().expect("own path");
    println!(
        "knat render/plan benchmark: {ENDPOINTS} endpoints per service, {NODES} nodes, {runs} fresh processes per row; each row is the run with the median compile+render, whose column also shows min-max over the runs"
    );
    println!();
    println!(
        "| services | dispatch | build snapshot ms | compile ms | render ms | compile+render ms | plan full ms | full payload bytes | noflush full bytes | one-endpoint change bytes | change: incremental compile+plan ms, median of 7 | no-op sync: compile+plan ms, median of 7 | no-op bytes | rules walked first/worst | peak RSS MiB | nat chains | compile+render CPU ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    // NodePort rows (every Service a NodePort; "rules walked" counts KUBE-NODEPORTS and its
    // dispatch chains) for the sizes a widened NodePort range holds.
    let nodeport_sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--nodeport-sizes")
        .and_then(|p| args.get(p + 1))
        .map(|s| s.split(',').filter_map(|v| v.parse().ok()).collect())
        .unwrap_or_else(|| vec![100, 10_000]);
    let rows = sizes
        .into_iter()
        .map(|size| (size, false))
        .chain(nodeport_sizes.into_iter().map(|size| (size, true)));
    for (size, nodeport_row) in rows {
        for linear in [true, false] {
            let mut rows: Vec<(f64, String)> = Vec::new();
            for _ in 0..runs {
                let mut cmd = Command::new(&exe);
                cmd.arg("--child").arg(size.to_string());
                if linear {
                    cmd.arg("--linear");
                }
                if nodeport_row {
                    cmd.arg("--nodeports");
                }
                match cmd.output() {
                    Ok(out) if out.status.success() => {
                        let row = String::from_utf8_lossy(&out.stdout).trim().to_string();
                        let total = row
                            .split('|')
                            .nth(6)
                            .and_then(|cell| cell.trim().parse::<f64>().ok())
                            .unwrap_or(f64::NAN);
                        rows.push((total, row));
                    }
                    Ok(out) => println!(
                        "| {size} | child failed: {} |",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                    Err(e) => println!("| {size} | error: {e} |"),
                }
            }
            if rows.is_empty() {
                continue;
            }
            rows.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (min, max) = (rows[0].0, rows[rows.len() - 1].0);
            let (median, row) = &rows[rows.len() / 2];
            let cells: Vec<String> = row
                .split('|')
                .enumerate()
                .map(|(i, cell)| {
                    if i == 6 {
                        format!(" {median:.1} ({min:.1}-{max:.1}) ")
                    } else {
                        cell.to_string()
                    }
                })
                .collect();
            println!("{}", cells.join("|"));
        }
    }
}
