//! Bulk creation of the benchmark's objects straight into etcd (`--create-via etcd`), for the
//! 50,000-Service size: kube-apiserver v1.37's ClusterIP allocator lists every IPAddress object
//! twice per allocation (to update its gauges), so creating N Services through the API costs
//! O(N^2) and 50,000 take over an hour on this machine (docs/performance.md, cluster
//! benchmark). Here the first Service of a batch is created through the API as usual; its
//! Service, EndpointSlice and IPAddress, read back through the API, are the templates of the
//! others, which differ only in name, uid, ClusterIP, parent reference and endpoint addresses.
//! They are written as JSON (which kube-apiserver's storage decoder reads besides protobuf)
//! under the keys the API server uses, in etcd transactions of [`TXN_OPS`] puts through etcd's
//! JSON gateway; the API server's watch of etcd then brings them into its cache and to every
//! watcher, as if they had been created through it. Proxies see the same objects either way.

use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::IPAddress;
use kube::Client;
use kube::api::Api;
use serde_json::Value;

use crate::api::{Kind, NS};
use crate::sys::{BenchError, io_err};

/// etcd's client URL inside the fabric namespace (where the driver runs).
const ETCD: &str = "http://127.0.0.1:2379";
/// Puts per transaction (etcd's default `--max-txn-ops` is 128): 42 Services' three objects.
const TXN_OPS: usize = 126;

/// One API-created Service's three objects, as JSON, without server-set fields.
pub struct Templates {
    service: Value,
    slice: Value,
    address: Value,
}

fn api_err(what: String) -> impl FnOnce(kube::Error) -> BenchError {
    move |e| BenchError::Api {
        what,
        detail: e.to_string(),
    }
}

fn json_err(what: &str) -> impl FnOnce(serde_json::Error) -> BenchError + '_ {
    move |e| BenchError::Api {
        what: what.to_string(),
        detail: e.to_string(),
    }
}

/// Drops what the API server sets on every write (resourceVersion, managedFields, uid).
fn strip(mut object: Value) -> Value {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in ["resourceVersion", "managedFields", "uid", "generation"] {
            meta.remove(field);
        }
    }
    object
}

impl Templates {
    /// Reads Service `i` of `kind` (created through the API), its slice and its IPAddress.
    pub async fn fetch(client: &Client, kind: Kind, i: usize) -> Result<Templates, BenchError> {
        let name = kind.service_name(i);
        let services: Api<Service> = Api::namespaced(client.clone(), NS);
        let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), NS);
        let addresses: Api<IPAddress> = Api::all(client.clone());
        let service = services
            .get(&name)
            .await
            .map_err(api_err(format!("get Service {name}")))?;
        let slice = slices
            .get(&format!("{name}-bench"))
            .await
            .map_err(api_err(format!("get the slice of {name}")))?;
        let ip = kind.cluster_ip(i).to_string();
        let address = addresses
            .get(&ip)
            .await
            .map_err(api_err(format!("get IPAddress {ip}")))?;
        Ok(Templates {
            service: strip(serde_json::to_value(service).map_err(json_err("a Service"))?),
            slice: strip(serde_json::to_value(slice).map_err(json_err("a slice"))?),
            address: strip(serde_json::to_value(address).map_err(json_err("an IPAddress"))?),
        })
    }

    /// The three (key, JSON) pairs of Service `i` with endpoint addresses `ips`.
    fn objects(&self, kind: Kind, i: usize, ips: &[Ipv4Addr]) -> [(String, Value); 3] {
        let name = kind.service_name(i);
        let ip = kind.cluster_ip(i).to_string();
        let uid = |what: u32| format!("6b6e6174-{what:04x}-4000-8000-{i:012x}");
        let mut service = self.service.clone();
        service["metadata"]["name"] = name.clone().into();
        service["metadata"]["uid"] = uid(1).into();
        service["spec"]["clusterIP"] = ip.clone().into();
        service["spec"]["clusterIPs"] = serde_json::json!([ip]);
        let mut slice = self.slice.clone();
        let slice_name = format!("{name}-bench");
        slice["metadata"]["name"] = slice_name.clone().into();
        slice["metadata"]["uid"] = uid(2).into();
        slice["metadata"]["labels"]["kubernetes.io/service-name"] = name.clone().into();
        let mut endpoint = slice["endpoints"][0].clone();
        slice["endpoints"] = ips
            .iter()
            .map(|a| {
                endpoint["addresses"] = serde_json::json!([a.to_string()]);
                endpoint.clone()
            })
            .collect();
        let mut address = self.address.clone();
        address["metadata"]["name"] = ip.clone().into();
        address["metadata"]["uid"] = uid(3).into();
        address["spec"]["parentRef"]["name"] = name.clone().into();
        [
            (format!("/registry/services/specs/{NS}/{name}"), service),
            (format!("/registry/endpointslices/{NS}/{slice_name}"), slice),
            (format!("/registry/ipaddresses/{ip}"), address),
        ]
    }
}

/// Writes Services `range` (their slices with `endpoints(i)`, their IPAddresses) into etcd.
pub fn write(
    templates: &Templates,
    kind: Kind,
    range: std::ops::Range<usize>,
    endpoints: &dyn Fn(usize) -> Vec<Ipv4Addr>,
) -> Result<(), BenchError> {
    let per_txn = TXN_OPS / 3;
    let all: Vec<usize> = range.collect();
    for batch in all.chunks(per_txn) {
        let puts: Vec<Value> = batch
            .iter()
            .flat_map(|&i| templates.objects(kind, i, &endpoints(i)))
            .map(|(key, value)| {
                serde_json::json!({"requestPut": {
                    "key": STANDARD.encode(key),
                    "value": STANDARD.encode(value.to_string()),
                }})
            })
            .collect();
        let body = serde_json::json!({ "success": puts }).to_string();
        let answer = post("/v3/kv/txn", &body)?;
        if answer.get("succeeded").and_then(Value::as_bool) != Some(true) {
            return Err(BenchError::Api {
                what: "an etcd transaction of bench objects".into(),
                detail: answer.to_string().chars().take(400).collect(),
            });
        }
    }
    Ok(())
}

/// POSTs `body` to etcd's JSON gateway (curl, the body on stdin) and parses the answer.
fn post(path: &str, body: &str) -> Result<Value, BenchError> {
    let mut child = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "-X",
            "POST",
            "--data-binary",
            "@-",
        ])
        .arg(format!("{ETCD}{path}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io_err("run curl"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(body.as_bytes())
            .map_err(io_err("write to curl"))?;
    }
    let out = child.wait_with_output().map_err(io_err("wait for curl"))?;
    if !out.status.success() {
        return Err(BenchError::Command {
            command: format!("curl {ETCD}{path}"),
            detail: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    serde_json::from_slice(&out.stdout).map_err(|e| BenchError::Api {
        what: format!("etcd {path}"),
        detail: format!("{e}: {}", String::from_utf8_lossy(&out.stdout)),
    })
}
