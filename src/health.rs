//! Health: the proxier health state behind `/healthz` and `/livez`, the per-Service
//! health-check node port servers, and the small HTTP servers that expose them
//! (`reference/kube-proxy-iptables.md` §5).
//!
//! The decisions are pure and take `now` ([`ProxyHealth`]); the servers are thin axum apps.
//! `/healthz` additionally fails while no Node named like this proxy exists: a proxy that
//! cannot tell local endpoints from remote ones must not be reported ready.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::metrics::{Labels, Metrics};
use crate::model::{IpFamily, ServiceName};
use crate::rules::ServiceHealth;
use prometheus_client::metrics::{counter::Counter, family::Family};

/// Health server errors.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// A listener could not be bound (port in use, bad address). For `--healthz-bind-address`
    /// and `--metrics-bind-address` this is fatal at startup (not retryable); for health-check
    /// node ports it is retried on the next sync, as upstream does.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, Default)]
struct FamilyHealth {
    oldest_pending: Option<Instant>,
}

/// The proxier health state (upstream `ProxyHealthServer`), with `now` passed in.
#[derive(Debug, Clone)]
pub struct ProxyHealth {
    timeout: Duration,
    families: BTreeMap<IpFamily, FamilyHealth>,
    last_updated: SystemTime,
    /// False while the Node is being deleted or tainted ToBeDeletedByClusterAutoscaler.
    pub node_eligible: bool,
    /// False while no Node named like this proxy is known (knat addition to `/healthz`).
    pub node_name_ok: bool,
}

impl ProxyHealth {
    /// `timeout` is 2 x `--iptables-sync-period`, as upstream.
    pub fn new(timeout: Duration, families: &[IpFamily]) -> Self {
        ProxyHealth {
            timeout,
            families: families
                .iter()
                .map(|f| (*f, FamilyHealth::default()))
                .collect(),
            last_updated: SystemTime::now(),
            node_eligible: true,
            node_name_ok: true,
        }
    }

    /// A sync was requested for `family`; remembers the oldest unserved request.
    pub fn queued(&mut self, family: IpFamily, now: Instant) {
        let f = self.families.entry(family).or_default();
        f.oldest_pending.get_or_insert(now);
    }

    /// The rules of `family` were applied (or the sync loop started).
    pub fn updated(&mut self, family: IpFamily) {
        self.families.entry(family).or_default().oldest_pending = None;
        self.last_updated = SystemTime::now();
    }

    /// Healthy unless some family has had a sync pending for longer than the timeout.
    pub fn is_healthy(&self, now: Instant) -> bool {
        self.families.values().all(|f| {
            f.oldest_pending
                .is_none_or(|t| now.saturating_duration_since(t) < self.timeout)
        })
    }

    /// `/healthz`: healthy, node eligible and node name verified.
    pub fn healthz(&self, now: Instant) -> bool {
        self.is_healthy(now) && self.node_eligible && self.node_name_ok
    }
}

/// Formats a wall-clock time as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Serialises with tab indentation, as Go's `json.MarshalIndent(v, "", "\t")`.
pub fn to_tab_json<T: Serialize>(value: &T) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    // Serialising plain structs of strings, numbers and bools cannot fail.
    let _ = value.serialize(&mut ser);
    String::from_utf8(buf).unwrap_or_default()
}

fn json_response(status: StatusCode, body: String, weight: Option<usize>) -> Response {
    let mut resp = (status, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "X-Content-Type-Options",
        HeaderValue::from_static("nosniff"),
    );
    if let Some(w) = weight {
        headers.insert("X-Load-Balancing-Endpoint-Weight", HeaderValue::from(w));
    }
    resp
}

/// Shared state of the admin servers.
#[derive(Clone)]
pub struct AdminState {
    pub health: Arc<Mutex<ProxyHealth>>,
    pub metrics: Arc<Metrics>,
}

impl AdminState {
    fn snapshot(&self) -> ProxyHealth {
        match self.health.lock() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthzBody {
    last_updated: String,
    current_time: String,
    node_eligible: bool,
    node_name_matches: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LivezBody {
    last_updated: String,
    current_time: String,
}

/// What `/healthz` and `/livez` share: the status code for `ok` (counted in `answers`), and
/// the two timestamps (last updated is now while healthy, as upstream reports it).
fn health_answer(
    ok: bool,
    last_updated: SystemTime,
    answers: &Family<Labels, Counter>,
) -> (StatusCode, String, String) {
    let now = SystemTime::now();
    let (code, label) = if ok {
        (StatusCode::OK, "200")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "503")
    };
    answers.get_or_create(&vec![("code", label)]).inc();
    let last = if ok { now } else { last_updated };
    (code, rfc3339(last), rfc3339(now))
}

async fn healthz(State(state): State<AdminState>) -> Response {
    let h = state.snapshot();
    let ok = h.healthz(Instant::now());
    let (code, last_updated, current_time) =
        health_answer(ok, h.last_updated, &state.metrics.healthz_total);
    let body = HealthzBody {
        last_updated,
        current_time,
        node_eligible: h.node_eligible,
        node_name_matches: h.node_name_ok,
    };
    json_response(code, serde_json::to_string(&body).unwrap_or_default(), None)
}

async fn livez(State(state): State<AdminState>) -> Response {
    let h = state.snapshot();
    let ok = h.is_healthy(Instant::now());
    let (code, last_updated, current_time) =
        health_answer(ok, h.last_updated, &state.metrics.livez_total);
    let body = LivezBody {
        last_updated,
        current_time,
    };
    json_response(code, serde_json::to_string(&body).unwrap_or_default(), None)
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    let mut resp = state.metrics.encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HealthError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError::Bind { addr, source })
}

fn serve(listener: TcpListener, app: Router) -> JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(%err, "HTTP server stopped");
        }
    })
}

/// Serves `/healthz` and `/livez` (the `--healthz-bind-address` server).
pub fn serve_healthz(listener: TcpListener, state: AdminState) -> JoinHandle<()> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .with_state(state);
    serve(listener, app)
}

/// Serves `/metrics`, a plain `/healthz` and `/proxyMode` (the `--metrics-bind-address` server).
pub fn serve_metrics(listener: TcpListener, state: AdminState) -> JoinHandle<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/proxyMode", get(|| async { "iptables" }))
        .with_state(state);
    serve(listener, app)
}

#[derive(Serialize)]
struct ServiceRef<'a> {
    namespace: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ServiceHealthBody<'a> {
    service: ServiceRef<'a>,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

/// The response of a health-check node port: 200 iff `local_endpoints > 0` and the proxy is
/// healthy (node eligibility is ignored, as upstream), else 503.
pub fn service_health_response(
    service: &ServiceName,
    local_endpoints: usize,
    proxy_healthy: bool,
) -> Response {
    let ok = local_endpoints > 0 && proxy_healthy;
    let body = ServiceHealthBody {
        service: ServiceRef {
            namespace: &service.namespace,
            name: &service.name,
        },
        local_endpoints,
        service_proxy_healthy: proxy_healthy,
    };
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(code, to_tab_json(&body), Some(local_endpoints))
}

#[derive(Clone)]
struct ServiceServerState {
    service: ServiceName,
    local: Arc<AtomicUsize>,
    health: Arc<Mutex<ProxyHealth>>,
}

async fn service_handler(State(state): State<ServiceServerState>) -> Response {
    let healthy = match state.health.lock() {
        Ok(h) => h.is_healthy(Instant::now()),
        Err(p) => p.into_inner().is_healthy(Instant::now()),
    };
    service_health_response(&state.service, state.local.load(Ordering::Relaxed), healthy)
}

struct Running {
    port: u16,
    local: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The set of health-check node port servers, opened and closed as Services change.
pub struct ServiceHealthServers {
    health: Arc<Mutex<ProxyHealth>>,
    /// Addresses to listen on; empty means the wildcard (dual-stack when possible).
    addresses: Vec<IpAddr>,
    running: BTreeMap<ServiceName, Running>,
}

impl ServiceHealthServers {
    pub fn new(health: Arc<Mutex<ProxyHealth>>, addresses: Vec<IpAddr>) -> Self {
        ServiceHealthServers {
            health,
            addresses,
            running: BTreeMap::new(),
        }
    }

    /// Services with a listening server, and their ports.
    pub fn ports(&self) -> BTreeMap<ServiceName, u16> {
        self.running
            .iter()
            .map(|(k, r)| (k.clone(), r.port))
            .collect()
    }

    async fn listen(&self, port: u16) -> Result<Vec<TcpListener>, HealthError> {
        if self.addresses.is_empty() {
            // `[::]` accepts IPv4 too unless IPv6 is disabled; fall back to 0.0.0.0.
            let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
            if let Ok(l) = TcpListener::bind(v6).await {
                return Ok(vec![l]);
            }
            return Ok(vec![
                bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)).await?,
            ]);
        }
        let mut out = Vec::new();
        for ip in &self.addresses {
            out.push(bind(SocketAddr::new(*ip, port)).await?);
        }
        Ok(out)
    }

    /// Closes servers that are gone or moved, opens new ones and sets the local endpoint
    /// counts. Returns the errors of servers that could not be opened (retried next time).
    pub async fn sync(
        &mut self,
        desired: &BTreeMap<ServiceName, ServiceHealth>,
    ) -> Vec<(ServiceName, HealthError)> {
        self.running
            .retain(|name, r| desired.get(name).is_some_and(|d| d.port == r.port));
        let mut errors = Vec::new();
        for (name, want) in desired {
            if let Some(r) = self.running.get(name) {
                r.local.store(want.local_endpoints, Ordering::Relaxed);
                continue;
            }
            match self.listen(want.port).await {
                Ok(listeners) => {
                    let local = Arc::new(AtomicUsize::new(want.local_endpoints));
                    let state = ServiceServerState {
                        service: name.clone(),
                        local: local.clone(),
                        health: self.health.clone(),
                    };
                    let tasks = listeners
                        .into_iter()
                        .map(|l| {
                            serve(
                                l,
                                Router::new()
                                    .fallback(service_handler)
                                    .with_state(state.clone()),
                            )
                        })
                        .collect();
                    tracing::info!(service = %name, port = want.port, "health check server listening");
                    self.running.insert(
                        name.clone(),
                        Running {
                            port: want.port,
                            local,
                            tasks,
                        },
                    );
                }
                Err(err) => errors.push((name.clone(), err)),
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_health_times_out_pending_syncs() {
        let start = Instant::now();
        let mut h = ProxyHealth::new(Duration::from_secs(60), &[IpFamily::V4]);
        assert!(h.is_healthy(start));
        h.queued(IpFamily::V4, start);
        h.queued(IpFamily::V4, start + Duration::from_secs(50));
        assert!(h.is_healthy(start + Duration::from_secs(59)));
        assert!(!h.is_healthy(start + Duration::from_secs(60)));
        h.updated(IpFamily::V4);
        assert!(h.is_healthy(start + Duration::from_secs(61)));
        h.node_name_ok = false;
        assert!(!h.healthz(start) && h.is_healthy(start));
        h.node_name_ok = true;
        h.node_eligible = false;
        assert!(!h.healthz(start) && h.is_healthy(start));
    }

    #[test]
    fn rfc3339_formats_known_times() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_709_251_199_123)),
            "2024-02-29T23:59:59.123Z"
        );
    }

    #[test]
    fn service_health_body_and_headers() {
        let name = ServiceName::new("demo", "web");
        let resp = service_health_response(&name, 2, true);
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["X-Load-Balancing-Endpoint-Weight"], "2");
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert_eq!(resp.headers()["x-content-type-options"], "nosniff");
        assert_eq!(
            service_health_response(&name, 0, true).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            service_health_response(&name, 3, false).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let body = ServiceHealthBody {
            service: ServiceRef {
                namespace: "demo",
                name: "web",
            },
            local_endpoints: 1,
            service_proxy_healthy: true,
        };
        assert_eq!(
            to_tab_json(&body),
            "{\n\t\"service\": {\n\t\t\"namespace\": \"demo\",\n\t\t\"name\": \"web\"\n\t},\n\t\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}"
        );
    }

    async fn http_get(port: u16) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"GET /anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn servers_open_update_and_close_over_real_http() {
        let health = Arc::new(Mutex::new(ProxyHealth::new(
            Duration::from_secs(60),
            &[IpFamily::V4],
        )));
        let mut servers =
            ServiceHealthServers::new(health.clone(), vec!["127.0.0.1".parse().unwrap()]);
        let port = free_port();
        let name = ServiceName::new("demo", "web");
        let mut desired = BTreeMap::new();
        desired.insert(
            name.clone(),
            ServiceHealth {
                service: name.clone(),
                port,
                local_endpoints: 0,
            },
        );
        assert!(servers.sync(&desired).await.is_empty());
        let resp = http_get(port).await;
        assert!(resp.starts_with("HTTP/1.1 503"), "{resp}");
        assert!(resp.contains("\"localEndpoints\": 0"), "{resp}");

        desired.get_mut(&name).unwrap().local_endpoints = 2;
        assert!(servers.sync(&desired).await.is_empty());
        let resp = http_get(port).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(
            resp.to_ascii_lowercase()
                .contains("x-load-balancing-endpoint-weight: 2"),
            "{resp}"
        );

        servers.sync(&BTreeMap::new()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
        );
    }
}
