//! knat: a kube-proxy (iptables mode) replacement built around `externalTrafficPolicy: Local`.
//!
//! The library is the pure core: domain model, endpoint categorisation, rule compilation,
//! planning and rendering, and the `iptables-save` parser and packet tracer. Nothing in here
//! spawns processes, talks to the Kubernetes API or needs an async runtime.

pub mod agent;
pub mod backend;
pub mod config;
pub mod dump;
pub mod health;
pub mod input;
pub mod lab;
pub mod metrics;
pub mod model;
pub mod rules;
