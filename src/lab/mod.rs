//! The network-namespace lab: a small cluster made of Linux network namespaces (an external
//! client, nodes on one L2 segment, pods behind each node) in which knat's rules run in the
//! real kernel and are checked with real TCP and UDP packets. `knat demo` and the `netns`
//! integration tests are built on it.
//!
//! This module is shell code: it runs `ip`, `sysctl` and `iptables-*-restore`, and opens
//! sockets. Its pure part, the scenario and the manifests it implies, is [`scenario`].
//!
//! Safety rules it keeps: it never changes the root namespace (veth pairs are created inside
//! lab namespaces with their peer placed straight into another lab namespace; sysctls are set
//! with `ip netns exec`), namespace names are unique per process and lab
//! (`knat-<pid>-<n>-<host>`), iptables backends are called by their explicit binary names, and
//! only processes the lab started are ended, by PID. Teardown happens on drop, on failure while
//! building, and, through a reaper process, when the process dies (Ctrl-C).

mod backend;
pub mod cluster;
pub mod demo;
pub mod echo;
pub mod invalid;
pub mod scenario;
mod sys;

pub use backend::Backend;
pub use cluster::{DEFAULT_PROBE_TIMEOUT, Lab, LabOptions, PodLinks};
pub use demo::{DemoReport, DemoRow, demo_scenario, run_demo};
pub use echo::{
    EchoArgs, EchoReply, EchoServer, ProbeArgs, ProbeResult, probe, run_echo_server, run_probe,
};
pub use scenario::{
    EndpointState, Family, Proto, Role, Scenario, ScenarioError, ServiceSpec, ServiceType,
};
pub use sys::{
    Reaper, describe, effective_uid, find_program, in_netns, preflight, required_programs, run,
};

/// Everything that can go wrong in the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The machine cannot run a lab (not root, a program missing). Not retryable until the
    /// machine is fixed; the list says what to fix.
    #[error("the network-namespace lab cannot run here; missing: {}", .0.join("; "))]
    Unsupported(Vec<String>),
    /// The scenario is inconsistent. Not retryable: fix the scenario.
    #[error("invalid scenario: {0}")]
    Scenario(#[from] ScenarioError),
    /// A command-line argument of `lab-echo` or `lab-probe` is invalid. Not retryable.
    #[error("usage: {0}")]
    Usage(String),
    /// A command ran and failed. Usually not retryable (the error says why).
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    /// A command could not be started (missing binary, permissions). Not retryable.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// A file or socket operation failed. Retryable only if the cause was transient.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A pod's echo server did not start. Not retryable (usually the knat binary lacks the
    /// `lab-echo` subcommand, or an address could not be bound).
    #[error("echo server for pod {pod} did not start: {detail}")]
    EchoServer { pod: String, detail: String },
    /// `lab-probe` printed something that is not a probe result. Not retryable (a bug or a
    /// knat binary without the `lab-probe` subcommand).
    #[error("unexpected probe output {output:?}: {detail}")]
    ProbeOutput { output: String, detail: String },
    /// `knat render` failed for a node. Not retryable.
    #[error("`knat render` for {node} ({family}) failed: {detail}")]
    Render {
        node: String,
        family: Family,
        detail: String,
    },
    /// `iptables-restore` rejected a payload. Not retryable; `offending` is the payload line
    /// the error message points at, when it points at one.
    #[error("{binary} in {namespace} rejected the payload: {detail}{}",
        .offending.as_ref().map(|l| format!(" (offending line: {l})")).unwrap_or_default())]
    Restore {
        namespace: String,
        binary: String,
        detail: String,
        offending: Option<String>,
    },
    /// A host name that is not a client, node or pod of the scenario. Not retryable.
    #[error("no client, node or pod named {0:?} in this lab")]
    UnknownHost(String),
    /// Some teardown steps failed (each listed). The reaper retries the namespaces at exit.
    #[error("teardown incomplete: {}", .0.join("; "))]
    Teardown(Vec<String>),
    /// An internal invariant broke (a bug). Not retryable.
    #[error("internal error: {0}")]
    Internal(String),
}
