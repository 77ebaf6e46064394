//! Input that does not parse, through the knat binary: a YAML manifest, a JSON manifest, a
//! manifest directory with one broken file, `knat doctor --from-files`, an `iptables-save` dump
//! for `knat trace` and for `knat diff` (IPv4 and IPv6). Each run must exit non-zero (2, the
//! binary's code for an error), name the file, the line and the object (manifests: the document
//! and the kind and name read so far; dumps: the table and the line's text) on stderr, and write
//! nothing to stdout: no rules rendered from the files that did parse, no half trace or diff.
//! (`knat run --from-files` keeping the kernel as it was, and `knat run --config` refusing a
//! broken file before it programs anything, are in tests/faults.rs: they need a namespace.)
//!
//! No root, no network: only the binary and a scratch directory of this process.

use std::path::{Path, PathBuf};
use std::process::Command;

const KNAT: &str = env!("CARGO_BIN_EXE_knat");

/// A Service, then a second document whose flow mapping is never closed.
const BAD_YAML: &str = "apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: shop
spec: {clusterIP: 10.96.0.11, ports: [{port: 443}
";

/// An EndpointSlice cut off in the middle of its endpoints.
const BAD_JSON: &str = r#"{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
 "metadata": {"name": "web-abc", "namespace": "demo",
              "labels": {"kubernetes.io/service-name": "web"}},
 "addressType": "IPv4",
 "endpoints": [{"addresses": ["10.244.1.5"], "nodeName": "node-1"},
"#;

/// A dump whose fourth line has an unterminated quote.
const BAD_DUMP: &str = "*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-SERVICES -m comment --comment \"demo/web:http cluster IP -j KUBE-SVC-X
COMMIT
";

/// An IPv6 dump whose filter table is never committed.
const UNCOMMITTED_DUMP6: &str = "*nat
:PREROUTING ACCEPT [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
-A INPUT -j ACCEPT
";

/// A scratch directory of this process, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("knat-badinput-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("parent dir");
        }
        std::fs::write(&path, text).expect("write input");
        path.to_string_lossy().into_owned()
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs knat with `args`; asserts exit code 2 and an empty stdout; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = Command::new(KNAT)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("NODE_NAME")
        .output()
        .expect("run knat");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "knat {args:?} should fail with 2: {out:?}"
    );
    assert!(
        out.stdout.is_empty(),
        "knat {args:?} wrote to stdout although its input did not parse:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn good_manifest(s: &Scratch) -> String {
    s.file(
        "good.yaml",
        &BAD_YAML[..BAD_YAML.find("---").expect("separator")],
    )
}

#[test]
fn a_yaml_manifest_that_does_not_parse_names_file_line_document_and_object() {
    let s = Scratch::new("yaml");
    let good = good_manifest(&s);
    let bad = s.file("bad.yaml", BAD_YAML);
    let err = fails(&["render", "--node-name", "node-1", &good, &bad]);
    assert!(
        err.contains(&format!(
            "{bad}:14:1: cannot parse document 2 (from line 8, Service shop/api as far as it could be read): "
        )),
        "{err}"
    );
}

#[test]
fn a_json_manifest_that_does_not_parse_names_file_line_document_and_object() {
    let s = Scratch::new("json");
    let bad = s.file("slice.json", BAD_JSON);
    let err = fails(&["render", "--node-name", "node-1", &bad]);
    assert!(
        err.contains(&format!("{bad}:6:1: cannot parse document 1 (from line 1, EndpointSlice demo/web-abc as far as it could be read): ")),
        "{err}"
    );
}

#[test]
fn a_directory_with_one_broken_file_renders_nothing() {
    let s = Scratch::new("dir");
    good_manifest(&s);
    let bad = s.file("z-bad.yaml", BAD_YAML);
    let dir = s.path().to_string_lossy().into_owned();
    let err = fails(&["render", "--node-name", "node-1", &dir]);
    assert!(
        err.contains(&format!("{bad}:14:1: cannot parse document 2")),
        "{err}"
    );
    // The same for knat doctor --from-files.
    let err = fails(&["doctor", "--node-name", "node-1", "--from-files", &dir]);
    assert!(
        err.contains(&format!("{bad}:14:1: cannot parse document 2")),
        "{err}"
    );
}

#[test]
fn a_dump_that_does_not_parse_names_file_line_and_table_for_trace_and_diff() {
    let s = Scratch::new("dump");
    let dump = s.file("nat.dump", BAD_DUMP);
    let err = fails(&[
        "trace",
        "--dump",
        &dump,
        "--src",
        "192.0.2.1",
        "--dst",
        "10.96.0.10:80",
    ]);
    assert!(
        err.contains(&format!("parsing {dump}: line 4 (table nat): unterminated quoted string: `-A KUBE-SERVICES -m comment --comment \"demo/web:http cluster IP -j KUBE-SVC-X`")),
        "{err}"
    );
    let good = good_manifest(&s);
    let err = fails(&[
        "diff",
        "--node-name",
        "node-1",
        "--dump",
        &dump,
        "--ip-family",
        "ipv4",
        &good,
    ]);
    assert!(
        err.contains(&format!(
            "{dump}: line 4 (table nat): unterminated quoted string"
        )),
        "{err}"
    );
    let dump6 = s.file("v6.dump", UNCOMMITTED_DUMP6);
    let err = fails(&[
        "diff",
        "--node-name",
        "node-1",
        "--dump6",
        &dump6,
        "--ip-family",
        "ipv6",
        &good,
    ]);
    assert!(
        err.contains(&format!(
            "{dump6}: line 4 (table filter): table `filter` is never committed (missing COMMIT): `*filter`"
        )),
        "{err}"
    );
}
