//! knat's test beds, kept out of the shipped crate: a real Kubernetes control plane
//! ([`control_plane`]), real kubelet nodes with a container runtime ([`node`], [`cluster`]),
//! their cgroups ([`cgroups`]) and the images they run ([`images`]), all inside network
//! namespaces on one machine, and what the tests on them share: whether they can run
//! ([`prerequisites`]), etcd state kept between benchmark runs ([`etcd_state`]), a control plane set up on a lab ([`lab_plane`]) and waiting for a
//! proxy's rules to settle ([`settle`]). Used by knat's end-to-end tests and benchmarks.

pub mod cgroups;
pub mod cluster;
pub mod control_plane;
pub mod etcd_state;
pub mod images;
pub mod lab_plane;
pub mod node;
pub mod prerequisites;
pub mod proxies;
pub mod settle;
pub mod traffic;
pub mod upstream_e2e;
