//! What this node's kernel and iptables offer beyond the basics, decided once at start the way
//! upstream kube-proxy v1.37 decides it, and said in the log:
//!
//! - nfacct ([`nfacct_client`]): with the kernel's `nfnetlink_acct`, the counters
//!   `ct_state_invalid_dropped_pkts` and `localhost_nps_accepted_pkts` are created on every
//!   full sync, the rules carry `-m nfacct` clauses, and `/metrics` exports kube-proxy's two
//!   counters from them. Without it: no clauses, no localhost-NodePort counting rules, no such
//!   metrics, as upstream.
//! - `MASQUERADE --random-fully` ([`random_fully`], see [`crate::backend::random_fully`]).
//!
//! `--nfacct` and `--random-fully` given on the command line override the detection
//! (`--nfacct=true` makes a missing nfacct fatal).

use std::sync::Arc;

use crate::backend::Iptables;
use crate::backend::nfacct::{COUNTERS, Nfacct, NfacctError};
use crate::backend::random_fully;

/// The nfacct client the agent uses, or None (with the reason logged). `requested`: the
/// `--nfacct` flag (None: detect; Some(false): off; Some(true): required).
pub fn nfacct_client(requested: Option<bool>) -> Result<Option<Arc<Nfacct>>, NfacctError> {
    if requested == Some(false) {
        tracing::info!(
            "nfacct counters off (--nfacct=false): no -m nfacct clauses, no localhost NodePort counting rules, no nfacct metrics"
        );
        return Ok(None);
    }
    match Nfacct::open() {
        Ok(client) => {
            tracing::info!(
                counters = ?COUNTERS,
                "nfacct available (NFNL_SUBSYS_ACCT): counters are created on every full sync and exported as kubeproxy_iptables_ct_state_invalid_dropped_packets_total and kubeproxy_iptables_localhost_nodeports_accepted_packets_total"
            );
            Ok(Some(Arc::new(client)))
        }
        Err(err) if requested.is_none() => {
            tracing::warn!(%err, "nfacct not available: rules without -m nfacct clauses and without the localhost NodePort counting rules, and no nfacct metrics (as upstream kube-proxy without nfacct)");
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// Whether MASQUERADE gets `--random-fully` for `ipt`'s family: `requested` (the
/// `--random-fully` flag) when given, else what the binary and kernel support.
pub async fn random_fully(requested: Option<bool>, ipt: &Iptables) -> bool {
    if let Some(value) = requested {
        tracing::info!(
            family = ipt.family.label(),
            random_fully = value,
            "MASQUERADE --random-fully as requested (--random-fully={value})"
        );
        return value;
    }
    let found = random_fully::detect(ipt).await;
    if found.usable() {
        tracing::info!(
            family = ipt.family.label(),
            random_fully = true,
            "MASQUERADE --random-fully: {}",
            found.reason()
        );
    } else {
        tracing::warn!(
            family = ipt.family.label(),
            random_fully = false,
            "MASQUERADE without --random-fully: {}",
            found.reason()
        );
    }
    found.usable()
}
