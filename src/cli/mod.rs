//! Subcommand implementations: argument structs and the glue from flags to the library.

pub mod cleanup;
pub mod common;
pub mod diff;
pub mod doctor;
pub mod kube_proxy_flags;
pub mod lab;
pub mod node_setup;
pub mod render;
pub mod run;
pub mod trace;
