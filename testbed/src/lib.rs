//! knat's test beds, kept out of the shipped crate: a real Kubernetes control plane
//! ([`control_plane`]) and real kubelet nodes with a container runtime ([`nodes`]), all inside
//! network namespaces on one machine. Used by knat's end-to-end tests and benchmarks.

pub mod control_plane;
