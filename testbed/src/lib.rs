//! knat's test beds, kept out of the shipped crate: a real Kubernetes control plane
//! ([`control_plane`]), real kubelet nodes with a container runtime ([`node`], [`cluster`]),
//! their cgroups ([`cgroups`]) and the images they run ([`images`]), all inside network
//! namespaces on one machine. Used by knat's end-to-end tests and benchmarks.

pub mod cgroups;
pub mod cluster;
pub mod control_plane;
pub mod images;
pub mod node;
pub mod prerequisites;
pub mod proxies;
pub mod traffic;
pub mod upstream_e2e;
