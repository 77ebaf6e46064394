//! The benchmark's Kubernetes objects and API writes: selector-less ClusterIP Services with
//! one hand-written EndpointSlice each (labelled `kubernetes.io/service-name` and managed by
//! `knat-bench`, so the EndpointSlice controller leaves them alone), created in parallel with
//! kube-rs, and endpoint changes as JSON merge patches of a slice's `endpoints`.

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

/// The ClusterIP of Service `i` (10.96.1.0 upwards; 10.96.0.1 is `kubernetes`).
pub fn cluster_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 0)) + i as u32)
}

/// The initial address of endpoint `j` of Service `i` (10.128.0.0/15).
pub fn initial_endpoint(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + (i * ENDPOINTS + j) as u32)
}

/// The `n`th fresh address used by endpoint changes (10.160.0.0/12).
pub fn fresh_endpoint(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 160, 0, 0)) + n)
}

/// Service `i`'s name.
pub fn service_name(i: usize) -> String {
    format!("svc-{i}")
}

/// The `ns/name:port` text of Service `i`'s port (chain name hashing input).
pub fn port_name(i: usize) -> String {
    format!("{NS}/{}:http", service_name(i))
}

/// The KUBE-SEP chain both proxies create for `ip` as an endpoint of Service `i`.
pub fn sep_chain(i: usize, ip: Ipv4Addr) -> String {
    knat::rules::chain::endpoint_chain(
        &port_name(i),
        knat::model::Protocol::Tcp,
        &format!("{ip}:{TARGET_PORT}"),
    )
    .to_string()
}

fn service(i: usize) -> Result<Service, BenchError> {
    let value = serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": service_name(i), "namespace": NS},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip(i).to_string(),
            "ports": [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP",
                       "targetPort": TARGET_PORT}],
        },
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

fn slice(i: usize, ips: &[Ipv4Addr]) -> Result<EndpointSlice, BenchError> {
    let value = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{}-bench", service_name(i)), "namespace": NS,
            "labels": {"kubernetes.io/service-name": service_name(i),
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
    /// Endpoint addresses per Service, as last written.
    endpoints: Mutex<Vec<Vec<Ipv4Addr>>>,
    fresh: std::sync::atomic::AtomicU32,
}

impl Objects {
    pub fn new(client: Client) -> Self {
        Objects {
            client,
            endpoints: Mutex::new(Vec::new()),
            fresh: std::sync::atomic::AtomicU32::new(0),
        }
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

    /// Creates Services (and their slices) up to `total`; the ones `real` lists get the
    /// given endpoints instead of the generated ones. Returns the time it took.
    pub async fn grow_to(&self, total: usize) -> Result<std::time::Duration, BenchError> {
        let start = Instant::now();
        let from = self.count();
        if total <= from {
            return Ok(start.elapsed());
        }
        let services: Api<Service> = Api::namespaced(self.client.clone(), NS);
        let slices: Api<EndpointSlice> = Api::namespaced(self.client.clone(), NS);
        let mut all = Vec::with_capacity(total - from);
        for i in from..total {
            let ips: Vec<Ipv4Addr> = (0..ENDPOINTS).map(|j| initial_endpoint(i, j)).collect();
            all.push((i, service(i)?, slice(i, &ips)?, ips));
        }
        let created: Vec<(usize, Vec<Ipv4Addr>)> = futures::stream::iter(all)
            .map(|(i, svc, sl, ips)| {
                let services = services.clone();
                let slices = slices.clone();
                async move {
                    // Slice first: a proxy seeing the Service sees its endpoints at once.
                    create(&slices, &sl, &format!("slice of {}", service_name(i))).await?;
                    create(&services, &svc, &service_name(i)).await?;
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
        Ok(start.elapsed())
    }

    /// Replaces endpoint `slot` of Service `i` with a fresh address. Returns the new address
    /// (its SEP chain is what the proxies must create) once the API has accepted the write.
    pub async fn change_endpoint(&self, i: usize, slot: usize) -> Result<Ipv4Addr, BenchError> {
        let n = self.fresh.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let ip = fresh_endpoint(n);
        let ips = {
            let mut endpoints = self.lock();
            let list = endpoints.get_mut(i).ok_or_else(|| BenchError::Api {
                what: format!("change {}", service_name(i)),
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
                &format!("{}-bench", service_name(i)),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| BenchError::Api {
                what: format!("patch the slice of {}", service_name(i)),
                detail: e.to_string(),
            })?;
        Ok(ip)
    }
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
