//! Prometheus metrics, with upstream kube-proxy's names (`reference/kube-proxy-iptables.md` §9)
//! where a metric means the same thing, plus knat's own `knat_*` metrics.
//!
//! Counters are registered without the `_total` suffix; the OpenMetrics encoder appends it, so
//! the exposed names are exactly upstream's.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::backend::nfacct::{self, Nfacct};
use crate::model::IpFamily;

/// kube-proxy's metrics read from the nfacct counters on every scrape, as upstream's
/// `nfacctMetricCollector` does: a counter that cannot be read (not created yet) is left out
/// of that scrape, with a debug message.
#[derive(Debug)]
pub struct NfacctCollector {
    client: Arc<Nfacct>,
}

/// (metric name without `_total`, help, nfacct counter).
const NFACCT_METRICS: [(&str, &str, &str); 2] = [
    (
        "kubeproxy_iptables_ct_state_invalid_dropped_packets",
        "packets dropped by iptables to work around conntrack problems",
        nfacct::CT_STATE_INVALID_DROPPED,
    ),
    (
        "kubeproxy_iptables_localhost_nodeports_accepted_packets",
        "Number of packets accepted on nodeports of loopback interface",
        nfacct::LOCALHOST_NODEPORTS_ACCEPTED,
    ),
];

impl Collector for NfacctCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (metric, help, counter) in NFACCT_METRICS {
            match self.client.get(counter) {
                Ok(value) => {
                    let sample =
                        encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
                    ConstCounter::new(value.packets).encode(sample)?;
                }
                Err(err) => tracing::debug!(%err, counter, "nfacct counter not read"),
            }
        }
        Ok(())
    }
}

/// A label set: `(name, value)` pairs with static strings.
pub type Labels = Vec<(&'static str, &'static str)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn sync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

fn programming_histogram() -> Histogram {
    // Upstream: 0.25, 0.5, 1..59 (step 1), 60..115 (step 5), 120..300 (step 30).
    let mut buckets = vec![0.25, 0.5];
    buckets.extend((1..60).map(f64::from));
    buckets.extend((60..120).step_by(5).map(f64::from));
    buckets.extend((120..=300).step_by(30).map(f64::from));
    Histogram::new(buckets)
}

fn fam(family: IpFamily) -> Labels {
    vec![("ip_family", family.label())]
}

/// Every metric knat exports.
pub struct Metrics {
    registry: Registry,
    pub sync_duration: HistogramFamily,
    pub sync_full_duration: HistogramFamily,
    pub sync_partial_duration: HistogramFamily,
    pub last_sync_timestamp: Family<Labels, Gauge<f64, AtomicU64>>,
    pub last_queued_timestamp: Family<Labels, Gauge<f64, AtomicU64>>,
    pub network_programming: HistogramFamily,
    pub restore_failures: Family<Labels, Counter>,
    pub partial_restore_failures: Family<Labels, Counter>,
    pub rules_total: Family<Labels, Gauge>,
    pub rules_last: Family<Labels, Gauge>,
    pub chains_written: Family<Labels, Counter>,
    pub no_local_endpoints: Family<Labels, Gauge>,
    pub healthz_total: Family<Labels, Counter>,
    pub livez_total: Family<Labels, Counter>,
    pub conntrack_deleted: Family<Labels, Counter>,
    pub conntrack_duration: HistogramFamily,
    pub service_changes_total: Counter,
    pub endpoint_changes_total: Counter,
    pub objects_skipped: Family<Labels, Counter>,
    pub node_name_matches: Gauge,
    pub health_check_servers: Gauge,
    pub api_watch_errors: Family<Labels, Counter>,
    pub localhost_nodeports: Gauge,
    pub events: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let hist = || HistogramFamily::new_with_constructor(sync_histogram as fn() -> Histogram);
        let m = Metrics {
            sync_duration: hist(),
            sync_full_duration: hist(),
            sync_partial_duration: hist(),
            last_sync_timestamp: Family::default(),
            last_queued_timestamp: Family::default(),
            network_programming: HistogramFamily::new_with_constructor(
                programming_histogram as fn() -> Histogram,
            ),
            restore_failures: Family::default(),
            partial_restore_failures: Family::default(),
            rules_total: Family::default(),
            rules_last: Family::default(),
            chains_written: Family::default(),
            no_local_endpoints: Family::default(),
            healthz_total: Family::default(),
            livez_total: Family::default(),
            conntrack_deleted: Family::default(),
            conntrack_duration: hist(),
            service_changes_total: Counter::default(),
            endpoint_changes_total: Counter::default(),
            objects_skipped: Family::default(),
            node_name_matches: Gauge::default(),
            health_check_servers: Gauge::default(),
            api_watch_errors: Family::default(),
            localhost_nodeports: Gauge::default(),
            events: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds (full and partial)",
            m.sync_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            m.sync_full_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            m.sync_partial_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            m.last_sync_timestamp.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            m.last_queued_timestamp.clone(),
        );
        r.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            m.network_programming.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_iptables_restore_failures",
            "Cumulative proxy iptables restore failures",
            m.restore_failures.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures",
            "Cumulative proxy iptables partial restore failures",
            m.partial_restore_failures.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_iptables_total",
            "Total number of iptables rules owned by knat",
            m.rules_total.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_iptables_last",
            "Number of iptables rules written by knat in last sync",
            m.rules_last.clone(),
        );
        r.register(
            "knat_chains_written",
            "Chains written by iptables-restore",
            m.chains_written.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            m.no_local_endpoints.clone(),
        );
        r.register(
            "kubeproxy_proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            m.healthz_total.clone(),
        );
        r.register(
            "kubeproxy_proxy_livez",
            "Cumulative proxy livez HTTP status",
            m.livez_total.clone(),
        );
        r.register(
            "kubeproxy_conntrack_reconciler_deleted_entries",
            "Cumulative conntrack flows deleted by conntrack reconciler",
            m.conntrack_deleted.clone(),
        );
        r.register(
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            "ReconcileConntrackFlowsLatency latency in seconds",
            m.conntrack_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            m.service_changes_total.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules EndpointSlice changes",
            m.endpoint_changes_total.clone(),
        );
        r.register(
            "knat_objects_skipped",
            "Kubernetes objects not turned into rules, by kind and reason (ignored or malformed)",
            m.objects_skipped.clone(),
        );
        r.register(
            "knat_node_name_matches",
            "1 when a Node named like this proxy (--hostname-override) exists, else 0",
            m.node_name_matches.clone(),
        );
        r.register(
            "knat_health_check_servers",
            "Health-check node port servers currently listening",
            m.health_check_servers.clone(),
        );
        r.register(
            "knat_api_watch_errors",
            "Failed lists and watches, by kind and reason (unreachable: no connection to the API server; other)",
            m.api_watch_errors.clone(),
        );
        r.register(
            "knat_localhost_nodeports",
            "1 when NodePorts are programmed on 127.0.0.1 (IPv4), 0 when not (--localhost-nodeports=false, or route_localnet could not be set)",
            m.localhost_nodeports.clone(),
        );
        r.register(
            "knat_events",
            "Kubernetes Events knat tried to record (on its own Pod, a Service or its Node), by reason and result (recorded or failed)",
            m.events.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Exports kube-proxy's two nfacct-based counters from `client` (only when nfacct works,
    /// as upstream registers them only then).
    pub fn register_nfacct(&mut self, client: Arc<Nfacct>) {
        self.registry
            .register_collector(Box::new(NfacctCollector { client }));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Records a finished sync of one family.
    pub fn observe_sync(&self, family: IpFamily, full: bool, seconds: f64) {
        self.sync_duration
            .get_or_create(&fam(family))
            .observe(seconds);
        let which = if full {
            &self.sync_full_duration
        } else {
            &self.sync_partial_duration
        };
        which.get_or_create(&fam(family)).observe(seconds);
    }

    /// Records a failed restore of one family.
    pub fn restore_failed(&self, family: IpFamily, full: bool) {
        self.restore_failures.get_or_create(&fam(family)).inc();
        if !full {
            self.partial_restore_failures
                .get_or_create(&fam(family))
                .inc();
        }
    }

    /// Records the rule counts after a successful restore.
    #[allow(clippy::too_many_arguments)]
    pub fn rules(
        &self,
        family: IpFamily,
        filter_total: usize,
        nat_total: usize,
        written: usize,
        chains: usize,
    ) {
        let f = family.label();
        self.rules_total
            .get_or_create(&vec![("table", "filter"), ("ip_family", f)])
            .set(filter_total as i64);
        self.rules_total
            .get_or_create(&vec![("table", "nat"), ("ip_family", f)])
            .set(nat_total as i64);
        self.rules_last
            .get_or_create(&vec![("ip_family", f)])
            .set(written as i64);
        self.chains_written
            .get_or_create(&fam(family))
            .inc_by(chains as u64);
    }

    /// Sets the no-local-endpoints gauges of one family.
    pub fn no_local(&self, family: IpFamily, internal: usize, external: usize) {
        let f = family.label();
        self.no_local_endpoints
            .get_or_create(&vec![("traffic_policy", "internal"), ("ip_family", f)])
            .set(internal as i64);
        self.no_local_endpoints
            .get_or_create(&vec![("traffic_policy", "external"), ("ip_family", f)])
            .set(external as i64);
    }

    /// Wall-clock "now" in seconds, for the timestamp gauges.
    pub fn unix_now() -> f64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0)
    }

    pub fn synced_now(&self, family: IpFamily) {
        self.last_sync_timestamp
            .get_or_create(&fam(family))
            .set(Self::unix_now());
    }

    pub fn queued_now(&self, family: IpFamily) {
        self.last_queued_timestamp
            .get_or_create(&fam(family))
            .set(Self::unix_now());
    }

    /// Counts a failed list or watch of `kind`; `reason` is `unreachable` or `other`.
    pub fn api_error(&self, kind: &'static str, reason: &'static str) {
        self.api_watch_errors
            .get_or_create(&vec![("kind", kind), ("reason", reason)])
            .inc();
    }

    /// Counts a Kubernetes Event knat tried to record (`ok`: the API server accepted it).
    pub fn event(&self, reason: &'static str, ok: bool) {
        let result = if ok { "recorded" } else { "failed" };
        self.events
            .get_or_create(&vec![("reason", reason), ("result", result)])
            .inc();
    }

    /// Counts an object skipped at conversion.
    pub fn skipped(&self, kind: &'static str, malformed: bool) {
        let reason = if malformed { "malformed" } else { "ignored" };
        self.objects_skipped
            .get_or_create(&vec![("kind", kind), ("reason", reason)])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_upstream_names() {
        let m = Metrics::new();
        m.observe_sync(IpFamily::V4, false, 0.01);
        m.restore_failed(IpFamily::V4, false);
        m.node_name_matches.set(1);
        m.healthz_total.get_or_create(&vec![("code", "503")]).inc();
        m.api_error("Node", "unreachable");
        m.localhost_nodeports.set(0);
        let text = m.encode();
        assert!(
            text.contains("knat_api_watch_errors_total{kind=\"Node\",reason=\"unreachable\"} 1"),
            "{text}"
        );
        assert!(text.contains("knat_localhost_nodeports 0"), "{text}");
        assert!(
            text.contains(
                "kubeproxy_sync_partial_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=\"IPv4\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total{ip_family=\"IPv4\"} 1"));
        assert!(text.contains("knat_node_name_matches 1"), "{text}");
        assert!(
            text.contains("kubeproxy_proxy_healthz_total{code=\"503\"} 1"),
            "{text}"
        );
    }
}
