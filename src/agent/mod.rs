//! The agent behind `knat run`: sources (API watchers or files) publish a [`SourceState`], and
//! one sync loop turns it into iptables rules, health-check servers and metrics.
//!
//! - [`node_identity`]: which Node we are, and the loud error when no Node has that name;
//! - [`node_event`]: the Kubernetes Event on knat's own Pod while that Node is missing;
//! - [`node_cidr`]: `--detect-local-mode=NodeCIDR` waits for (and follows) the Node's podCIDRs;
//! - [`index`]: the pure state the sources update (initial-list gating, re-list replacement);
//! - [`api_server`]: which API server we dial, from where, and the messages when it fails;
//! - [`watch`]: kube-rs watchers (the only code that reads from the API server);
//! - [`files`]: the static `--from-files` source;
//! - [`capabilities`]: nfacct and `--random-fully`, detected at start;
//! - [`localnet`]: `route_localnet`, checked (and set when possible) for localhost NodePorts;
//! - [`sync`]: the scheduler (pure) and the sync loop.

pub mod api_server;
pub mod capabilities;
pub mod files;
pub mod index;
pub mod localnet;
pub mod node_cidr;
pub mod node_event;
pub mod node_identity;
pub mod sync;
pub mod watch;

pub use index::SourceState;
