//! The domain model: small, validated types that Kubernetes objects become at the boundary.
//!
//! `types` holds the plain data, `convert` turns k8s-openapi objects into it (skipping malformed
//! objects with a reason), `endpoints` merges EndpointSlices into per-port endpoint lists, and
//! `categorize` decides which endpoints each traffic policy uses, as upstream's
//! `CategorizeEndpoints` does.

pub mod categorize;
pub mod convert;
pub mod endpoints;
pub mod snapshot;
pub mod types;

pub use snapshot::Snapshot;
pub use types::*;
