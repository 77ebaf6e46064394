//! Reading Kubernetes manifests (YAML or JSON, multi-document, `v1` Lists) into a snapshot.
