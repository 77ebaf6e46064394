//! The incremental compiler: caches each Service's fragment and recompiles only Services whose
//! object or slices changed. It asks the snapshot's journal which Services changed since its
//! last call (a walk over every Service only when the journal cannot tell), and keeps the
//! assembled lists (groups, fragments, health, UDP ports, counts) between calls, so a sync
//! costs what changed: a no-op hands the same shared lists on.

use std::collections::{BTreeMap, HashMap};
use std::iter::Peekable;
use std::net::IpAddr;
use std::sync::Arc;

use super::assemble::Compiler;
use super::fragment::Fragment;
use super::service::{Probabilities, ServiceCompiler};
use super::threads::{CompiledService, PARALLEL_THRESHOLD, compile_services};
use super::{Compiled, ServiceHealth, UdpServicePort};
use crate::config::{LocalDetector, ProxyConfig};
use crate::model::categorize::NodeTopology;
use crate::model::snapshot::{JournalMark, ServiceSlices};
use crate::model::{Service, ServiceName, Snapshot};
use crate::rules::chain::ChainName;
use crate::rules::dispatch::{Entry, EntryRule};
use crate::rules::rule::{ChainGroup, ChainRules, Hook, Lineage, RuleSet};
use crate::rules::service_list::{Keyed, ServiceList};

/// What the last output built from every Service at once.
#[derive(Debug)]
struct Named {
    filter: Arc<HashMap<crate::rules::ChainName, ChainRules>>,
    nat: Arc<HashMap<crate::rules::ChainName, ChainRules>>,
    hooks: Vec<Hook>,
}

impl Named {
    /// The named chains and hooks of `rs` (shared).
    fn of(rs: &RuleSet) -> Self {
        Named {
            filter: rs.filter.chains.clone(),
            nat: rs.nat.chains.clone(),
            hooks: rs.hooks.clone(),
        }
    }
}

/// A Service whose fragment is new this sync: its previous fragment (`None`: new Service) and
/// its current one (`None`: removed).
struct Change {
    name: ServiceName,
    before: Option<Arc<Fragment>>,
    after: Option<Arc<Fragment>>,
}

/// True if the two fragments add the same rules to the shared chains (absent: none).
fn same_shared(a: Option<&Fragment>, b: Option<&Fragment>) -> bool {
    fn rendered(e: &Entry) -> (std::net::IpAddr, Arc<str>) {
        match &e.rule {
            EntryRule::Rendered(text) => (e.dst, text.clone()),
            EntryRule::Typed(_) => match e.rendered().rule {
                EntryRule::Rendered(text) => (e.dst, text),
                EntryRule::Typed(_) => unreachable!("rendered() renders"),
            },
        }
    }
    let empty =
        |f: &Fragment| f.entries.is_empty() && f.nodeport_entries.is_empty() && f.filter.is_empty();
    match (a, b) {
        (None, None) => true,
        (Some(f), None) | (None, Some(f)) => empty(f),
        (Some(a), Some(b)) => {
            a.nodeport_entries.len() == b.nodeport_entries.len()
                && a.nodeport_entries
                    .iter()
                    .zip(&b.nodeport_entries)
                    .all(|(x, y)| (x.proto, x.port, x.text()) == (y.proto, y.port, y.text()))
                && a.filter == b.filter
                && a.entries.len() == b.entries.len()
                && a.entries
                    .iter()
                    .zip(&b.entries)
                    .all(|(x, y)| rendered(x) == rendered(y))
        }
    }
}

/// Advances `iter` to `key` and returns its value there, if it has one.
fn seek<'i, K: Ord + 'i, V: 'i, I: Iterator<Item = (&'i K, V)>>(
    iter: &mut Peekable<I>,
    key: &K,
    mut skipped: impl FnMut(&K),
) -> Option<V> {
    while let Some((k, _)) = iter.peek() {
        if *k >= key {
            break;
        }
        if let Some((k, _)) = iter.next() {
            skipped(k);
        }
    }
    iter.next_if(|(k, _)| *k == key).map(|(_, v)| v)
}

/// What [`IncrementalCompiler::walk`] or [`IncrementalCompiler::check`] found.
struct Found<'s> {
    /// Services to compile, in Service order.
    todo: Vec<&'s Arc<Service>>,
    /// Services that are gone (already removed from the cache).
    changes: Vec<Change>,
}

/// What a cached fragment was compiled from (shared with the snapshot, so an unchanged Service
/// is recognised by pointer and costs no memory of its own).
#[derive(Debug)]
pub(super) struct CachedFragment {
    pub(super) service: Arc<Service>,
    pub(super) slices: Option<Arc<ServiceSlices>>,
    pub(super) fragment: Arc<Fragment>,
}

/// Same object, or equal objects (a re-list hands new pointers to unchanged objects).
pub(super) fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

/// Inputs shared by every fragment; when any of them changes the cache is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CacheKey {
    pub(super) cfg: ProxyConfig,
    pub(super) zone: Option<String>,
    pub(super) node_ip: Option<IpAddr>,
    pub(super) large: bool,
}

/// What the compiler assembled from its cache, kept between calls and changed per Service:
/// a rule set takes the shared lists as they are.
#[derive(Debug, Default)]
struct Assembled {
    /// The non-empty nat groups, in Service order (the rule set's `nat.groups`).
    groups: ServiceList<Arc<ChainGroup>>,
    /// The fragments of those groups ([`Compiled::chain_owners`]).
    fragments: ServiceList<Arc<Fragment>>,
    health: BTreeMap<ServiceName, ServiceHealth>,
    /// UDP service ports per Service, and all of them in Service order.
    udp_by_service: BTreeMap<ServiceName, Vec<UdpServicePort>>,
    udp: Arc<Vec<UdpServicePort>>,
    no_local_internal: usize,
    no_local_external: usize,
}

impl Keyed for Arc<Fragment> {
    fn key(&self) -> &ServiceName {
        &self.group.key
    }
}

impl Assembled {
    /// Everything assembled afresh from the cache (when much changed).
    fn rebuild(cache: &BTreeMap<ServiceName, CachedFragment>) -> Self {
        let fragments = || {
            cache
                .values()
                .map(|c| &c.fragment)
                .filter(|f| f.group.chain_count() > 0)
        };
        let mut assembled = Assembled {
            groups: ServiceList::from_sorted(fragments().map(|f| f.group.clone())),
            fragments: ServiceList::from_sorted(fragments().cloned()),
            ..Assembled::default()
        };
        for (name, cached) in cache {
            assembled.add(name, &cached.fragment);
        }
        assembled.udp = Arc::new(
            assembled
                .udp_by_service
                .values()
                .flatten()
                .cloned()
                .collect(),
        );
        assembled
    }

    /// The health, counts and UDP ports of one fragment (not its group).
    fn add(&mut self, name: &ServiceName, frag: &Fragment) {
        if let Some(health) = &frag.health {
            self.health
                .insert(health.service.clone(), (**health).clone());
        }
        self.no_local_internal += frag.no_local_internal;
        self.no_local_external += frag.no_local_external;
        if !frag.udp.is_empty() {
            self.udp_by_service.insert(name.clone(), frag.udp.clone());
        }
    }

    /// One Service's fragment replaced (`before`/`after` `None`: absent).
    fn apply(&mut self, change: &Change) {
        let mut udp_changed = false;
        if let Some(before) = &change.before {
            if let Some(health) = &before.health {
                self.health.remove(&health.service);
            }
            self.no_local_internal -= before.no_local_internal;
            self.no_local_external -= before.no_local_external;
            udp_changed |= self.udp_by_service.remove(&change.name).is_some();
            self.groups.remove(&change.name);
            self.fragments.remove(&change.name);
        }
        if let Some(after) = &change.after {
            self.add(&change.name, after);
            udp_changed |= !after.udp.is_empty();
            if after.group.chain_count() > 0 {
                self.groups.insert(after.group.clone());
                self.fragments.insert(after.clone());
            }
        }
        if udp_changed {
            self.udp = Arc::new(self.udp_by_service.values().flatten().cloned().collect());
        }
    }
}

/// A compiler that remembers each Service's fragment and recompiles only Services whose
/// object or EndpointSlices changed (compared by value, so callers need not track changes;
/// the snapshot's journal only says where to look). The result is identical to [`compile`];
/// only the work differs.
#[derive(Debug, Default)]
pub struct IncrementalCompiler {
    pub(super) key: Option<CacheKey>,
    /// In Service order, like the snapshot's maps, so one merged walk finds what changed.
    pub(super) cache: BTreeMap<ServiceName, CachedFragment>,
    /// The point of the snapshot's history the cache reflects (`None`: unknown, walk all).
    seen: Option<JournalMark>,
    /// The lists assembled from the cache.
    assembled: Assembled,
    /// The named chains and hooks of the last output, reused while no changed Service alters
    /// its entries in the shared chains.
    named: Option<Named>,
    /// The identity of the last output ([`RuleSet::id`]), the parent of the next.
    last_id: Option<u64>,
    /// Services compiled since the last [`IncrementalCompiler::release_groups`].
    uncompacted: Vec<ServiceName>,
    /// Every cached Service was compiled since then (a compilation from scratch, which does
    /// not list them).
    uncompacted_all: bool,
    /// Services recompiled by the last call (the rest were reused).
    pub last_recompiled: usize,
    /// Services the last call looked at: those the journal named, or every one.
    pub last_examined: usize,
    /// Threads for compiling many Services at once (`None`: one per CPU, at most 8).
    pub(super) threads: Option<usize>,
}

impl IncrementalCompiler {
    /// A compiler that uses exactly `threads` threads when there is a lot to compile.
    pub fn with_threads(threads: usize) -> Self {
        IncrementalCompiler {
            threads: Some(threads.max(1)),
            ..IncrementalCompiler::default()
        }
    }

    /// Compiles like [`compile`], reusing the fragments of unchanged Services.
    pub fn compile(&mut self, snapshot: &Snapshot, cfg: &ProxyConfig) -> Compiled {
        // `--detect-local-mode=NodeCIDR`: the detector is the Node's pod CIDR, so the cache
        // key (which holds the configuration) changes with it.
        let resolved;
        let cfg = if cfg.local_detector == LocalDetector::NodeCidr {
            let pod_cidrs = snapshot.node.as_ref().map_or(&[][..], |n| &n.pod_cidrs[..]);
            resolved = ProxyConfig {
                local_detector: cfg.local_detector.resolve(pod_cidrs, cfg.family),
                ..cfg.clone()
            };
            &resolved
        } else {
            cfg
        };
        let family = cfg.family;
        let node_ip = cfg
            .node_ips
            .iter()
            .copied()
            .find(|ip| family.contains(ip))
            .or_else(|| {
                snapshot
                    .node
                    .as_ref()
                    .and_then(|n| n.addresses.iter().copied().find(|ip| family.contains(ip)))
            });
        let zone = snapshot.node.as_ref().and_then(|n| n.zone.clone());
        // Large-cluster mode is part of the key; when it flips, everything is compiled again.
        let large = snapshot.endpoint_count() > cfg.large_cluster_threshold;
        let same_key = self.key.as_ref().is_some_and(|key| {
            key.large == large && key.node_ip == node_ip && key.zone == zone && key.cfg == *cfg
        });
        if !same_key {
            self.forget();
            self.key = Some(CacheKey {
                cfg: cfg.clone(),
                zone: zone.clone(),
                node_ip,
                large,
            });
        }
        // What to look at: the Services the journal names, or every one.
        let journaled = self
            .seen
            .and_then(|mark| snapshot.journal().changed_since(mark));
        let walked = journaled.is_none();
        let Found { todo, mut changes } = match journaled {
            Some(names) => {
                self.last_examined = names.len();
                self.check(snapshot, names)
            }
            None => {
                self.last_examined = snapshot.services().len();
                self.walk(snapshot)
            }
        };
        self.seen = Some(snapshot.journal().mark());
        let mut compiler = Compiler {
            cfg,
            family,
            mark: cfg.masquerade_mark().into(),
            rs: RuleSet::new(family),
            services_entries: Vec::new(),
            nodeport_entries: Vec::new(),
            kube_mark_masq: ChainName::fixed(ChainName::KUBE_MARK_MASQ),
            kube_services: ChainName::fixed(ChainName::KUBE_SERVICES),
            kube_ext_services: ChainName::fixed(ChainName::KUBE_EXTERNAL_SERVICES),
            kube_nodeports: ChainName::fixed(ChainName::KUBE_NODEPORTS),
            kube_proxy_firewall: ChainName::fixed(ChainName::KUBE_PROXY_FIREWALL),
        };
        let topology = NodeTopology {
            name: &cfg.node_name,
            zone: zone.as_deref(),
        };
        let workers = ServiceCompiler {
            cfg,
            empty_group: Arc::new(ChainGroup::new(
                ServiceName::new(String::new(), String::new()),
                Vec::new(),
            )),
            family,
            probabilities: Probabilities::default(),
            large,
            node_ip,
            kube_mark_masq: compiler.kube_mark_masq.clone(),
        };
        // Compile what is not cached (in parallel when there is a lot of it).
        self.last_recompiled = todo.len();
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(8)));
        let fresh = compile_services(&workers, snapshot, topology, &todo, threads);
        // Every Service compiled afresh, in Service order (nothing was cached, nothing is
        // gone): the cache, the lists and the named chains are built from the fresh fragments.
        let from_scratch = walked && self.cache.is_empty() && changes.is_empty();
        let (reuse_named, changed_groups) = if from_scratch {
            compiler = self.build_from_scratch(compiler, &todo, &fresh, threads);
            let changed_groups: Vec<(ServiceName, Option<Arc<ChainGroup>>)> = match self.last_id {
                Some(_) => todo
                    .iter()
                    .zip(&fresh)
                    .map(|(service, c)| (service.name.clone(), Some(c.fragment.group.clone())))
                    .collect(),
                None => Vec::new(),
            };
            (false, changed_groups)
        } else {
            for (service, compiled) in todo.into_iter().zip(fresh) {
                let frag = compiled.fragment;
                let before = self
                    .cache
                    .insert(
                        service.name.clone(),
                        CachedFragment {
                            service: service.clone(),
                            slices: compiled.slices,
                            fragment: frag.clone(),
                        },
                    )
                    .map(|cached| cached.fragment);
                self.uncompacted.push(service.name.clone());
                changes.push(Change {
                    name: service.name.clone(),
                    before,
                    after: Some(frag),
                });
            }
            // The lists: changed per Service, or assembled afresh when much changed.
            if changes.len() > self.cache.len() / 16 + 16 {
                self.assembled = Assembled::rebuild(&self.cache);
            } else {
                for change in &changes {
                    self.assembled.apply(change);
                }
            }
            // The named chains are rebuilt only when a changed Service changes what it adds
            // to them (an endpoint change does not).
            let reuse_named = self.named.is_some()
                && changes
                    .iter()
                    .all(|c| same_shared(c.before.as_deref(), c.after.as_deref()));
            match self.named.as_ref().filter(|_| reuse_named) {
                Some(named) => {
                    compiler.rs.filter.chains = named.filter.clone();
                    compiler.rs.nat.chains = named.nat.clone();
                    compiler.rs.hooks = named.hooks.clone();
                }
                None => {
                    compiler.build_named(self.cache.values().map(|c| &*c.fragment));
                    self.named = Some(Named::of(&compiler.rs));
                }
            }
            let changed_groups = changes
                .into_iter()
                .map(|c| (c.name, c.after.map(|f| f.group.clone())))
                .collect();
            (reuse_named, changed_groups)
        };
        let mut rs = compiler.rs;
        rs.nat.groups = self.assembled.groups.clone();
        rs.lineage = self.last_id.map(|parent| Lineage {
            parent,
            changed_groups,
            named_unchanged: reuse_named,
        });
        self.last_id = Some(rs.id);
        Compiled {
            rules: rs,
            health: self.assembled.health.clone(),
            no_local_endpoints_internal: self.assembled.no_local_internal,
            no_local_endpoints_external: self.assembled.no_local_external,
            fragments: self.assembled.fragments.clone(),
            udp: self.assembled.udp.clone(),
            large_cluster: large,
        }
    }

    /// Files every fresh fragment (`fresh[i]` compiled from `todo[i]`, in Service order) into
    /// the empty cache and assembles the lists from it, while the named chains are built from
    /// the same fragments on a second thread (when there are threads to spare): both are
    /// serial work over every Service. Returns the compiler with the named chains built.
    fn build_from_scratch<'c>(
        &mut self,
        mut compiler: Compiler<'c>,
        todo: &[&Arc<Service>],
        fresh: &'c [CompiledService],
        threads: usize,
    ) -> Compiler<'c> {
        let build_named = move || {
            compiler.build_named(fresh.iter().map(|c| &*c.fragment));
            compiler
        };
        let file = |this: &mut Self| {
            // Collected from Service order, so the map is built in bulk, not by insertion.
            this.cache = todo
                .iter()
                .zip(fresh)
                .map(|(service, compiled)| {
                    let cached = CachedFragment {
                        service: Arc::clone(service),
                        slices: compiled.slices.clone(),
                        fragment: compiled.fragment.clone(),
                    };
                    (service.name.clone(), cached)
                })
                .collect();
            this.uncompacted.clear();
            this.uncompacted_all = true;
            this.assembled = Assembled::rebuild(&this.cache);
        };
        let compiler = if threads > 1 && fresh.len() >= PARALLEL_THRESHOLD {
            std::thread::scope(|scope| {
                let named = scope.spawn(build_named);
                file(self);
                match named.join() {
                    Ok(compiler) => compiler,
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            })
        } else {
            file(self);
            build_named()
        };
        self.named = Some(Named::of(&compiler.rs));
        compiler
    }

    /// The Services the journal names: compiled when their object or slices differ from the
    /// cache's, removed from the cache when gone.
    fn check<'s>(&mut self, snapshot: &'s Snapshot, names: Vec<ServiceName>) -> Found<'s> {
        let mut found = Found {
            todo: Vec::new(),
            changes: Vec::new(),
        };
        for name in names {
            let slices = snapshot.service_slices(&name);
            match (snapshot.service(&name), self.cache.get_mut(&name)) {
                (Some(service), Some(cached)) => {
                    if reuse(cached, service, slices).is_none() {
                        found.todo.push(service);
                    }
                }
                (Some(service), None) => found.todo.push(service),
                (None, Some(_)) => {
                    let before = self.cache.remove(&name).map(|c| c.fragment);
                    found.changes.push(Change {
                        name,
                        before,
                        after: None,
                    });
                }
                // Slices of a name without a Service compile to nothing.
                (None, None) => {}
            }
        }
        found
    }

    /// One walk over the snapshot's Services and slices and the cache, all in Service order:
    /// what is left to compile (cached fragments are reused where neither the Service nor its
    /// slices changed) and the Services that are gone (removed from the cache). Unchanged
    /// Services are recognised by pointer, without comparing names.
    fn walk<'s>(&mut self, snapshot: &'s Snapshot) -> Found<'s> {
        let mut todo = Vec::new();
        let mut gone: Vec<ServiceName> = Vec::new();
        let mut slices = snapshot.slices().iter().peekable();
        let mut cached = self.cache.iter_mut().peekable();
        for (name, service) in snapshot.services() {
            let entry = match cached.peek() {
                Some((_, c)) if Arc::ptr_eq(&c.service, service) => cached.next().map(|(_, c)| c),
                _ => seek(&mut cached, name, |k| gone.push(k.clone())),
            };
            let fast = match (&entry, slices.peek()) {
                (Some(c), Some((_, s))) => c.slices.as_ref().is_some_and(|c| Arc::ptr_eq(c, s)),
                _ => false,
            };
            let own_slices = if fast {
                slices.next().map(|(_, s)| s)
            } else {
                seek(&mut slices, name, |_| {})
            };
            if entry
                .and_then(|entry| reuse(entry, service, own_slices))
                .is_none()
            {
                todo.push(service);
            }
        }
        gone.extend(cached.map(|(k, _)| k.clone()));
        let changes = gone
            .into_iter()
            .map(|name| {
                let before = self.cache.remove(&name).map(|c| c.fragment);
                Change {
                    name,
                    before,
                    after: None,
                }
            })
            .collect();
        Found { todo, changes }
    }

    /// Releases the text of every cached Service group that still has it (once the kernel has
    /// those chains): only digests are kept, about 33 MB less at 10,000 services x 10
    /// endpoints. Each such fragment is replaced by a compact copy in fresh allocations, so
    /// that the pages the compile threads filled with text and long-lived data alike become
    /// wholly free and go back to the system (releasing in place left a third of the text's
    /// memory resident). Returns (old, new) group pairs for the planner's record; callers go
    /// through [`crate::rules::AppliedState::release_text`], which does both.
    pub(crate) fn release_groups(&mut self) -> Vec<(Arc<ChainGroup>, Arc<ChainGroup>)> {
        let mut swaps = Vec::new();
        let assembled = &mut self.assembled;
        let mut release = |cached: &mut CachedFragment| {
            if cached.fragment.compact {
                return;
            }
            let compact = Arc::new(cached.fragment.compacted());
            if !Arc::ptr_eq(&compact.group, &cached.fragment.group) {
                swaps.push((cached.fragment.group.clone(), compact.group.clone()));
            }
            if compact.group.chain_count() > 0 {
                assembled.groups.insert(compact.group.clone());
                assembled.fragments.insert(compact.clone());
            }
            cached.fragment = compact;
        };
        let names = std::mem::take(&mut self.uncompacted);
        if std::mem::take(&mut self.uncompacted_all) {
            self.cache.values_mut().for_each(release);
        } else {
            for name in names {
                if let Some(cached) = self.cache.get_mut(&name) {
                    release(cached);
                }
            }
        }
        swaps
    }

    /// Forgets every cached fragment, so that the next compilation compiles every Service
    /// afresh, with text (full syncs write every chain, and released text cannot be written).
    pub fn forget(&mut self) {
        self.cache.clear();
        self.seen = None;
        self.assembled = Assembled::default();
        self.named = None;
        self.last_id = None;
        self.uncompacted.clear();
        self.uncompacted_all = false;
    }
}

/// The cached fragment of `service` if neither it nor its slices changed.
fn reuse(
    cached: &mut CachedFragment,
    service: &Arc<Service>,
    slices: Option<&Arc<ServiceSlices>>,
) -> Option<Arc<Fragment>> {
    let unchanged = same(&cached.service, service)
        && match (&cached.slices, slices) {
            (Some(a), Some(b)) => same(a, b),
            (None, None) => true,
            _ => false,
        };
    if !unchanged {
        return None;
    }
    // Equal but re-created objects: keep the snapshot's, so old copies are freed.
    cached.service = service.clone();
    cached.slices = slices.cloned();
    Some(cached.fragment.clone())
}
