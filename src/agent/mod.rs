//! The agent behind `knat run`: sources (API watchers or files) publish a [`SourceState`], and
//! one sync loop turns it into iptables rules, health-check servers and metrics.
//!
//! - [`node_identity`]: which Node we are, and the loud error when no Node has that name;
//! - [`events`]: publishing Kubernetes Events (shared by the three below);
//! - [`node_event`]: the Kubernetes Event on knat's own Pod while that Node is missing;
//! - [`health_event`], [`sync_event`]: `FailedToStartServiceHealthcheck` on a Service, and
//!   repeated sync failures on the Node; [`loop_events`] feeds them from the sync loop;
//! - [`node_cidr`]: `--detect-local-mode=NodeCIDR` waits for (and follows) the Node's podCIDRs;
//! - [`index`]: the pure state the sources update (initial-list gating, re-list replacement);
//! - [`api_server`]: which API server we dial, from where, and the messages when it fails;
//! - [`watch`]: kube-rs watchers (the only code that reads from the API server);
//! - [`watch_retry`]: how long a watcher waits after an error (a 410 Gone re-lists at once);
//! - [`files`]: the static `--from-files` source;
//! - [`capabilities`]: nfacct and `--random-fully`, detected at start;
//! - [`localnet`]: `route_localnet`, checked (and set when possible) for localhost NodePorts;
//! - [`schedule`]: every deadline of the sync loop, as a pure state machine;
//! - [`family_sync`]: one sync of one IP family, step by step;
//! - [`sync`]: the sync loop, which carries out what the scheduler decides.

pub mod api_server;
pub mod capabilities;
pub mod cpu_time;
pub mod events;
pub mod family_sync;
pub mod files;
pub mod health_event;
pub mod index;
pub mod localnet;
pub mod loop_events;
pub mod node_cidr;
pub mod node_event;
pub mod node_identity;
pub mod schedule;
pub mod sync;
pub mod sync_event;
pub mod watch;
pub mod watch_retry;

pub use index::SourceState;
