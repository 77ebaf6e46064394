//! The benchmark's Kubernetes objects and API writes: selector-less Services with one
//! hand-written EndpointSlice each (labelled `kubernetes.io/service-name` and managed by
//! `knat-bench`, so the EndpointSlice controller leaves them alone), created in parallel with
//! kube-rs, and endpoint changes as JSON merge patches of a slice's `endpoints`. Two sets:
//! ClusterIP Services `svc-N`, and LoadBalancer Services `lb-N` (ClusterIP + NodePort
//! `20000 + N` + a VIP written into `status.loadBalancer.ingress`, externalTrafficPolicy
//! Cluster), never in the API at the same time.

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

use crate::sys::BenchError;

/// The Kubernetes namespace of every benchmark object.
pub const NS: &str = "bench";
/// Endpoints per Service.
pub const ENDPOINTS: usize = 10;
/// The pods' port (every endpoint address is local to the echo pods, see `main.rs`).
pub const TARGET_PORT: u16 = 9000;
/// The Services' port.
pub const SERVICE_PORT: u16 = 80;
/// Parallel API requests during bulk creation.
const CONCURRENCY: usize = 24;
/// Bulk creation logs its progress every this many Services.
const PROGRESS_EVERY: usize = 5_000;

/// The first NodePort of the LoadBalancer set (`lb-N` has `20000 + N`).
pub const NODE_PORT_BASE: u16 = 20000;
/// kube-apiserver's `--service-node-port-range`, wide enough for [`MAX_LB`] NodePorts.
pub const NODE_PORT_RANGE: &str = "20000-32767";
/// At most this many LoadBalancer Services (NodePorts and ClusterIPs left for them).
pub const MAX_LB: usize = 12_000;
/// The VIP range of the LoadBalancer set (`lb-N` has `10.100.0.0 + N`).
pub const VIP_RANGE: &str = "10.100.0.0/16";

/// Which Services a set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `svc-N`: ClusterIP only, `10.96.1.0 + N` (up to 50,000: below 10.96.200.0).
    ClusterIp,
    /// `lb-N`: type LoadBalancer, ClusterIP `10.96.200.0 + N`, NodePort, VIP.
    LoadBalancer,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::ClusterIp => "svc",
            Kind::LoadBalancer => "lb",
        }
    }

    /// Service `i`'s name.
    pub fn service_name(self, i: usize) -> String {
        format!("{}-{i}", self.prefix())
    }

    /// The `ns/name:port` text of Service `i`'s port (chain name hashing input).
    pub fn port_name(self, i: usize) -> String {
        format!("{NS}/{}:http", self.service_name(i))
    }

    /// The ClusterIP of Service `i` (10.96.0.1 is `kubernetes`).
    pub fn cluster_ip(self, i: usize) -> Ipv4Addr {
        let base = match self {
            Kind::ClusterIp => Ipv4Addr::new(10, 96, 1, 0),
            Kind::LoadBalancer => Ipv4Addr::new(10, 96, 200, 0),
        };
        Ipv4Addr::from(u32::from(base) + i as u32)
    }

    /// The KUBE-SEP chain both proxies create for `ip` as an endpoint of Service `i`.
    pub fn sep_chain(self, i: usize, ip: Ipv4Addr) -> String {
        knat::rules::chain::endpoint_chain(
            &self.port_name(i),
            knat::model::Protocol::Tcp,
            &format!("{ip}:{TARGET_PORT}"),
        )
        .to_string()
    }
}

/// The NodePort of LoadBalancer Service `i`.
pub fn node_port(i: usize) -> u16 {
    NODE_PORT_BASE + i as u16
}

/// The load-balancer VIP of LoadBalancer Service `i`.
pub fn vip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 100, 0, 0)) + i as u32)
}

/// The initial address of endpoint `j` of Service `i` (10.128.0.0/15).
pub fn initial_endpoint(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * ENDPOINTS + j) as u32)
}

/// The `n`th fresh address used by endpoint changes (10.160.0.0/12).
pub fn fresh_endpoint(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 160, 0, 0)) + n)
}

fn service(kind: Kind, i: usize) -> Result<Service, BenchError> {
    let mut port = serde_json::json!({"name": "http", "port": SERVICE_PORT, "protocol": "TCP",
                                      "targetPort": TARGET_PORT});
    let mut spec = serde_json::json!({
        "type": "ClusterIP",
        "clusterIP": kind.cluster_ip(i).to_string(),
    });
    if kind == Kind::LoadBalancer {
        port["nodePort"] = node_port(i).into();
        spec["type"] = "LoadBalancer".into();
        spec["externalTrafficPolicy"] = "Cluster".into();
    }
    spec["ports"] = serde_json::json!([port]);
    let value = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": kind.service_name(i), "namespace": NS},
        "spec": spec,
    });
    serde_json::from_value(value).map_err(|e| BenchError::Api {
        what: "build a Service".into(),
        detail: e.to_string(),
    })
}

fn endpoints_json(ips: &[Ipv4Addr]) -> serde_json::Value {
    ips.iter()
        .map(|ip| {
            serde_json::json!({
                "addresses": [ip.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
            })
        })
        .collect()
}

fn slice(kind: Kind, i: usize, ips: &[Ipv4Addr]) -> Result<EndpointSlice, BenchError> {
    let value = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{}-bench", kind.service_name(i)), "namespace": NS,
            "labels": {"kubernetes.io/service-name": kind.service_name(i),
                       "endpointslice.kubernetes.io/managed-by": "knat-bench"},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
        "endpoints": endpoints_json(ips),
    });
    serde_json::from_value(value).map_err(|e| BenchError::Api {
        what: "build an EndpointSlice".into(),
        detail: e.to_string(),
    })
}

/// The benchmark's view of the cluster: which Services exist and their endpoint addresses.
pub struct Objects {
    client: Client,
    /// Which set of Services this is.
    pub kind: Kind,
    /// Endpoint addresses per Service, as last written.
    endpoints: Mutex<Vec<Vec<Ipv4Addr>>>,
    /// Bulk creation of ClusterIP Services writes all but the first straight into etcd
    /// (`--create-via etcd`, see `etcd_bulk`).
    via_etcd: bool,
}

/// Fresh endpoint addresses are numbered across the whole run (both sets).
static FRESH: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Objects {
    pub fn new(client: Client, kind: Kind) -> Self {
        Objects {
            client,
            kind,
            endpoints: Mutex::new(Vec::new()),
            via_etcd: false,
        }
    }

    /// Bulk creation (of ClusterIP Services) through etcd from now on.
    pub fn create_via_etcd(mut self) -> Self {
        self.via_etcd = true;
        self
    }

    /// The KUBE-SEP chain of `ip` as an endpoint of this set's Service `i`.
    pub fn sep_chain(&self, i: usize, ip: Ipv4Addr) -> String {
        self.kind.sep_chain(i, ip)
    }

    /// Deletes every Service and slice of this set (one request each, in parallel) and waits
    /// for each answer; a Service without finalizers is gone when its DELETE returns.
    pub async fn delete_all(&self) -> Result<std::time::Duration, BenchError> {
        let start = Instant::now();
        let count = self.count();
        let services: Api<Service> = Api::namespaced(self.client.clone(), NS);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), NS);
        let kind = self.kind;
        futures::stream::iter(0..count)
            .map(|i| {
                let services = services.clone();
                let slices = slices.clone();
                async move {
                    let name = kind.service_name(i);
                    delete(&services, &name).await?;
                    delete(&slices, &format!("{name}-bench")).await
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        self.lock().clear();
        Ok(start.elapsed())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<Ipv4Addr>>> {
        self.endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many Services exist.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Creates the namespace (if missing).
    pub async fn create_namespace(&self) -> Result<(), BenchError> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        let ns = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
        .map_err(|e| BenchError::Api {
            what: "build a Namespace".into(),
            detail: e.to_string(),
        })?;
        match api.create(&PostParams::default(), &ns).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(BenchError::Api {
                what: format!("create namespace {NS}"),
                detail: e.to_string(),
            }),
        }
    }

    /// Takes over the Services and slices of this set that are already in the API (an etcd
    /// state restored from an earlier run, see `--api-state-cache`), reading each slice's
    /// endpoint addresses as that run left them. They must be exactly Services `0..expected`.
    /// Fresh addresses then continue after the highest one in use.
    pub async fn adopt(&self, expected: usize) -> Result<std::time::Duration, BenchError> {
        let start = Instant::now();
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), NS);
        let mut params = kube::api::ListParams::default()
            .labels("endpointslice.kubernetes.io/managed-by=knat-bench")
            .limit(2_000);
        let mut found: Vec<Option<Vec<Ipv4Addr>>> = vec![None; expected];
        let mut extra = Vec::new();
        let mut fresh_next = 0u32;
        let fresh_base = u32::from(fresh_endpoint(0));
        loop {
            let page = slices.list(&params).await.map_err(|e| BenchError::Api {
                what: "list the benchmark's EndpointSlices".into(),
                detail: e.to_string(),
            })?;
            for slice in &page.items {
                let name = slice.metadata.name.clone().unwrap_or_default();
                let index = name
                    .strip_suffix("-bench")
                    .and_then(|n| n.strip_prefix(self.kind.prefix()))
                    .and_then(|n| n.strip_prefix('-'))
                    .and_then(|n| n.parse::<usize>().ok());
                let Some(i) = index else { continue };
                let ips = slice
                    .endpoints
                    .iter()
                    .flatten()
                    .flat_map(|e| e.addresses.iter())
                    .map(|a| a.parse::<Ipv4Addr>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| BenchError::Api {
                        what: format!("the addresses of slice {name}"),
                        detail: e.to_string(),
                    })?;
                for ip in &ips {
                    let n = u32::from(*ip).wrapping_sub(fresh_base);
                    if n < (1 << 20) {
                        fresh_next = fresh_next.max(n + 1);
                    }
                }
                match found.get_mut(i) {
                    Some(slot) => *slot = Some(ips),
                    None => extra.push(name),
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        let missing = found.iter().filter(|f| f.is_none()).count();
        if missing > 0 || !extra.is_empty() {
            return Err(BenchError::Api {
                what: "the restored API state".into(),
                detail: format!(
                    "expected the slices of {} Services 0..{expected}: {missing} missing, {} \
                     more (e.g. {:?}); remove the cached state and run again",
                    self.kind.prefix(),
                    extra.len(),
                    extra.first()
                ),
            });
        }
        FRESH.fetch_max(fresh_next, std::sync::atomic::Ordering::SeqCst);
        *self.lock() = found.into_iter().flatten().collect();
        Ok(start.elapsed())
    }

    /// Creates Services (and their slices) up to `total`; the ones `real` lists get the
    /// given endpoints instead of the generated ones. Returns the time it took.
    pub async fn grow_to(&self, total: usize) -> Result<std::time::Duration, BenchError> {
        let start = Instant::now();
        let from = self.count();
        if total <= from {
            return Ok(start.elapsed());
        }
        if !self.via_etcd || total - from < 2 || self.kind != Kind::ClusterIp {
            self.create_through_api(from, total).await?;
            return Ok(start.elapsed());
        }
        // The first through the API (the templates), the rest straight into etcd.
        self.create_through_api(from, from + 1).await?;
        let templates = crate::etcd_bulk::Templates::fetch(&self.client, self.kind, from).await?;
        let initial = |i: usize| (0..ENDPOINTS).map(|j| initial_endpoint(i, j)).collect();
        crate::etcd_bulk::write(&templates, self.kind, from + 1..total, &initial)?;
        self.wait_visible(total - 1).await?;
        let mut endpoints = self.lock();
        endpoints.resize_with(total, Vec::new);
        for (i, slot) in endpoints.iter_mut().enumerate().skip(from + 1) {
            *slot = initial(i);
        }
        drop(endpoints);
        crate::log(&format!(
            "wrote Services {} to {} into etcd, visible through the API after {:.1?}",
            from + 1,
            total - 1,
            start.elapsed()
        ));
        Ok(start.elapsed())
    }

    /// Waits until the API server serves Service `i` and its slice (its watch of etcd delivers
    /// writes in order, so every earlier one is then there too).
    async fn wait_visible(&self, i: usize) -> Result<(), BenchError> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), NS);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), NS);
        let name = self.kind.service_name(i);
        let limit = std::time::Duration::from_secs(300);
        let start = Instant::now();
        // resourceVersion "0": served from the watch cache, which is what watchers see.
        let cached = kube::api::GetParams::any();
        loop {
            let service = services.get_with(&name, &cached).await;
            let slice = slices.get_with(&format!("{name}-bench"), &cached).await;
            if service.is_ok() && slice.is_ok() {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(BenchError::Timeout {
                    what: format!("{name} and its slice visible through the API"),
                    waited: limit,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    async fn create_through_api(&self, from: usize, total: usize) -> Result<(), BenchError> {
        let services: Api<Service> = Api::namespaced(self.client.clone(), NS);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), NS);
        let mut all = Vec::with_capacity(total - from);
        let kind = self.kind;
        for i in from..total {
            let ips: Vec<Ipv4Addr> = (0..ENDPOINTS).map(|j| initial_endpoint(i, j)).collect();
            all.push((i, service(kind, i)?, slice(kind, i, &ips)?, ips));
        }
        let progress = Progress::new(from, total);
        let created: Vec<(usize, Vec<Ipv4Addr>)> = futures::stream::iter(all)
            .map(|(i, svc, sl, ips)| {
                let services = services.clone();
                let slices = slices.clone();
                let progress = &progress;
                async move {
                    // Slice first: a proxy seeing the Service sees its endpoints at once.
                    let name = kind.service_name(i);
                    create(&slices, &sl, &format!("slice of {name}")).await?;
                    create(&services, &svc, &name).await?;
                    if kind == Kind::LoadBalancer {
                        set_ingress(&services, &name, vip(i)).await?;
                    }
                    progress.one_done();
                    Ok::<_, BenchError>((i, ips))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut endpoints = self.lock();
        endpoints.resize(total, Vec::new());
        for (i, ips) in created {
            if let Some(slot) = endpoints.get_mut(i) {
                *slot = ips;
            }
        }
        Ok(())
    }

    /// Replaces endpoint `slot` of Service `i` with a fresh address. Returns the new address
    /// (its SEP chain is what the proxies must create) once the API has accepted the write.
    pub async fn change_endpoint(&self, i: usize, slot: usize) -> Result<Ipv4Addr, BenchError> {
        let n = FRESH.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let ip = fresh_endpoint(n);
        let ips = {
            let mut endpoints = self.lock();
            let list = endpoints.get_mut(i).ok_or_else(|| BenchError::Api {
                what: format!("change {}", self.kind.service_name(i)),
                detail: "no such service".into(),
            })?;
            let k = slot % list.len().max(1);
            if let Some(old) = list.get_mut(k) {
                *old = ip;
            }
            list.clone()
        };
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), NS);
        let patch = serde_json::json!({"endpoints": endpoints_json(&ips)});
        slices
            .patch(
                &format!("{}-bench", self.kind.service_name(i)),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| BenchError::Api {
                what: format!("patch the slice of {}", self.kind.service_name(i)),
                detail: e.to_string(),
            })?;
        Ok(ip)
    }
}

/// Writes `vip` as the Service's only `status.loadBalancer.ingress` (as a cloud controller
/// would), with a few retries.
async fn set_ingress(api: &Api<Service>, name: &str, vip: Ipv4Addr) -> Result<(), BenchError> {
    let patch =
        serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": vip.to_string()}]}}});
    let mut last = String::new();
    for attempt in 0..5u64 {
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => {
                last = e.to_string();
                tokio::time::sleep(std::time::Duration::from_millis(200 * (attempt + 1))).await;
            }
        }
    }
    Err(BenchError::Api {
        what: format!("set the ingress of {name}"),
        detail: last,
    })
}

/// Bulk creation's progress: every [`PROGRESS_EVERY`] Services, a log line with the count and
/// the rate of the last stretch (so a rate that falls as the API grows shows where).
struct Progress {
    start: Instant,
    done: std::sync::atomic::AtomicUsize,
    from: usize,
    total: usize,
    last: Mutex<Instant>,
}

impl Progress {
    fn new(from: usize, total: usize) -> Self {
        let now = Instant::now();
        Progress {
            start: now,
            done: std::sync::atomic::AtomicUsize::new(0),
            from,
            total,
            last: Mutex::new(now),
        }
    }

    fn one_done(&self) {
        let done = self.done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if !done.is_multiple_of(PROGRESS_EVERY) && self.from + done != self.total {
            return;
        }
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let stretch = last.elapsed().as_secs_f64();
        *last = Instant::now();
        let stretch_count = match done % PROGRESS_EVERY {
            0 => PROGRESS_EVERY,
            rest => rest,
        };
        crate::log(&format!(
            "created {} of {} Services ({:.0?} so far, last {stretch_count} at {:.0}/s)",
            self.from + done,
            self.total,
            self.start.elapsed(),
            stretch_count as f64 / stretch.max(1e-3),
        ));
    }
}

/// Deletes one object (absent is fine), with a few retries.
async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), BenchError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut last = String::new();
    for attempt in 0..5u64 {
        match api.delete(name, &kube::api::DeleteParams::default()).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(e) => {
                last = e.to_string();
                tokio::time::sleep(std::time::Duration::from_millis(200 * (attempt + 1))).await;
            }
        }
    }
    Err(BenchError::Api {
        what: format!("delete {name}"),
        detail: last,
    })
}

async fn create<K>(api: &Api<K>, object: &K, what: &str) -> Result<(), BenchError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    // A few retries: a 2-core API server under a burst of creates may answer 429 or time out.
    let mut last = String::new();
    for attempt in 0..5u64 {
        match api.create(&PostParams::default(), object).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => return Ok(()),
            Err(e) => {
                last = e.to_string();
                tokio::time::sleep(std::time::Duration::from_millis(200 * (attempt + 1))).await;
            }
        }
    }
    Err(BenchError::Api {
        what: format!("create {what}"),
        detail: last,
    })
}
