//! knat: a kube-proxy (iptables mode) replacement built around `externalTrafficPolicy: Local`.
//!
//! The pure core (`config`, `model`, `input`, `rules`, `dump`) decides what the rules are:
//! domain model, endpoint categorisation, compilation, planning and rendering, and the
//! `iptables-save` parser and packet tracer. Nothing in it spawns processes, talks to the
//! Kubernetes API or needs an async runtime.
//!
//! The shell does only I/O: `agent` (watchers, the sync loop, the static file source),
//! `backend` (iptables-restore, conntrack), `health`, `metrics`, and `lab` (the
//! network-namespace cluster behind `knat demo` and the real-kernel tests).

pub mod agent;
pub mod backend;
pub mod config;
pub mod diff;
pub mod doctor;
pub mod dump;
pub mod health;
pub mod input;
pub mod kube_proxy_config;
pub mod lab;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod rules;
pub mod text;
