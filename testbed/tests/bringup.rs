//! Scratch bring-up (temporary).
use knat_testbed::cluster::{NodeCluster, NodeRequest};
use knat_testbed::control_plane::K8sBinaries;
use std::path::Path;

#[test]
fn bringup() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bins = K8sBinaries::locate(&repo, false).expect("binaries");
    let reqs = vec![
        NodeRequest {
            name: "node-1".into(),
            hostname: "h-node-1".into(),
        },
        NodeRequest {
            name: "node-2".into(),
            hostname: "h-node-2".into(),
        },
    ];
    let t = std::time::Instant::now();
    let cluster = NodeCluster::start(bins, &reqs, &[]);
    match cluster {
        Ok(c) => {
            eprintln!("up in {:?}", t.elapsed());
            eprintln!(
                "{}",
                c.kubectl(&["get", "nodes", "-o", "wide"], None).unwrap()
            );
            eprintln!("{:?}", c.pod_cidrs());
        }
        Err(e) => panic!("{e}"),
    }
}
