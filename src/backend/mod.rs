//! The iptables backend: the only code that runs `iptables`, `iptables-save` and
//! `iptables-restore` (and, in [`conntrack`], the `conntrack` binary).
//!
//! - [`detect_mode`] chooses between the nft and legacy iptables front-ends the way
//!   kubernetes-sigs `iptables-wrappers` does, so one image works on any host.
//! - [`Iptables::restore`] applies one payload (each table atomically, at its `COMMIT`) with
//!   `iptables-restore -w 5 -W 100000 --noflush --counters` and, on failure, reports the offending
//!   line with context; [`Iptables::restore_parts`] streams several pieces into one
//!   restore without joining them, and [`Iptables::restore_planned`] feeds the planner's
//!   sections to the restore's stdin chunk by chunk from the rule set's own text
//!   ([`restore_input`]), so a full payload never exists as one string.
//! - [`Iptables::ensure_hooks`] makes sure the builtin-chain jumps exist (`-C`, then `-I`), on
//!   full syncs only, for hooks whose target chain already existed; the others cannot exist
//!   yet and are inserted by the restore itself ([`ChainListing::split_hooks`]).
//! - [`canary_payload`] (written by full syncs) / [`Iptables::canaries_present`] implement the
//!   `KUBE-PROXY-CANARY` flush detection: a chain with one rule in mangle, nat and filter.
//! - Every command has a time limit ([`command_timeout`]) and runs in its own process group,
//!   which is killed when the limit passes, or when shutdown asks it to stop ([`stop`]).
//! - [`Iptables::list_chains`] lists the chains present in the kernel (on iptables-nft over
//!   netlink, [`nft_chains`]): full syncs delete the per-service ones that are not wanted any
//!   more.
//!
//! Text handling (splitting rule arguments, parsing `iptables-save` output, the cleanup
//! payload) is pure and unit-tested here.

pub mod conntrack;
pub mod netlink_wire;
pub mod nfacct;
pub mod nft_chains;
pub mod random_fully;
pub mod restore_input;
pub mod stop;

use std::collections::HashSet;
use std::process::Stdio;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::dump::words::{TokenError, split};
use crate::model::IpFamily;
use crate::rules::payload::{Payload, Piece};
use crate::rules::rule::Hook;
use crate::rules::{ChainName, ChainOrder, TableName, Target};
pub use restore_input::RestoreInput;
pub use stop::{Stop, StopHandle, Stopped};

/// Errors of the iptables backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A binary could not be started (not installed, not executable). Retryable in principle
    /// (the sync loop retries with backoff), but usually needs the operator to fix the image.
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// `iptables-restore` rejected the payload; the table whose block failed is unchanged (each
    /// table is committed whole at its `COMMIT` line; one committed before it stays).
    /// Retryable: the sync loop retries with a full sync and backoff.
    #[error("{program} failed{}: {stderr}\n{context}", line.map(|l| format!(" at line {l}")).unwrap_or_default())]
    Restore {
        program: String,
        /// The 1-based payload line iptables-restore named, when it named one.
        line: Option<usize>,
        /// The offending line with up to three lines of context either side, numbered.
        context: String,
        stderr: String,
    },
    /// A command did not finish within its time limit ([`command_timeout`]); it was killed
    /// with its process group. Retryable: the next sync is full; a table whose transaction had
    /// not been committed when the restore was killed is unchanged.
    #[error("{program} did not finish within {} s; killed it and its process group", limit.as_secs())]
    Timeout { program: String, limit: Duration },
    /// Shutdown stopped the command: it was killed with its process group and reaped, or not
    /// started ([`stop`]). Not retried: the agent is exiting.
    #[error("{0}")]
    Stopped(Stopped),
    /// Another iptables command failed. Retryable (transient lock contention, a chain that
    /// another agent just removed); persistent failures are logged on every attempt.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
}

/// Which iptables front-end to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `iptables-nft` (the nf_tables kernel API with iptables syntax).
    Nft,
    /// `iptables-legacy` (the x_tables kernel API).
    Legacy,
}

impl Mode {
    /// The chain order that keeps this front-end's tools fast (see [`ChainOrder`]).
    pub fn chain_order(self) -> ChainOrder {
        match self {
            Mode::Nft => ChainOrder::Scattered,
            Mode::Legacy => ChainOrder::Descending,
        }
    }
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Nft => "nft",
            Mode::Legacy => "legacy",
        }
    }
}

/// Arguments that make iptables wait for the xtables lock (5 s, polling every 100 ms), as
/// upstream passes to iptables >= 1.6.2.
pub const WAIT_ARGS: [&str; 4] = ["-w", "5", "-W", "100000"];

/// True when `program` is an executable file somewhere on `PATH` (or is a path to one).
fn on_path(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// The three binaries of one family and mode, falling back to the unsuffixed names when the
/// suffixed ones are not installed (distributions that ship only one front-end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    pub iptables: String,
    pub save: String,
    pub restore: String,
    /// The `nft` command line, when installed (used on iptables-nft to list chain names).
    pub nft: Option<String>,
}

impl Binaries {
    pub fn new(family: IpFamily, mode: Mode) -> Self {
        let base = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let pick = |suffix: &str| {
            let specific = format!("{base}-{}{suffix}", mode.as_str());
            if on_path(&specific) {
                specific
            } else {
                format!("{base}{suffix}")
            }
        };
        Binaries {
            iptables: pick(""),
            save: pick("-save"),
            restore: pick("-restore"),
            nft: (mode == Mode::Nft && on_path("nft")).then(|| "nft".to_string()),
        }
    }
}

/// Output of a finished command.
#[derive(Debug)]
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs one command to its end, within `limit`, unless `stop` asks it to stop first (then it
/// is not started, or is killed with its process group and reaped).
async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&RestoreInput<'_>>,
    limit: Duration,
    stop: &Stop,
) -> Result<Finished, BackendError> {
    let spawn_err = |source| BackendError::Spawn {
        program: program.to_string(),
        source,
    };
    let stopped = |pid| {
        BackendError::Stopped(Stopped {
            program: program.to_string(),
            pid,
            restore: stdin.is_some(),
        })
    };
    if stop.requested() {
        return Err(stopped(None));
    }
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout or a stop also ends whatever a wrapper script
        // started.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let pid = child.id();
    let input = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let work = async {
        let feed = async {
            if let (Some(stdin), Some(mut pipe)) = (stdin, input) {
                // Written chunk by chunk (one pipe's worth, or one large chain's text), never
                // joined into one copy. A restore that stops at a bad line stops reading (or
                // dies): its exit status and message say why, so a closed pipe is not an
                // error of its own.
                let mut chunks = stdin.chunks();
                while let Some(chunk) = chunks.next_chunk() {
                    match pipe.write_all(chunk.as_bytes()).await {
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                        Err(e) => return Err(e),
                        Ok(()) => {}
                    }
                }
            }
            Ok(())
        };
        let (fed, out, err) = tokio::join!(feed, read_all(stdout), read_all(stderr));
        fed?;
        let status = child.wait().await?;
        Ok::<_, std::io::Error>((status, out?, err?))
    };
    // `work` (which borrows the child) is gone once this is decided.
    let ended = tokio::select! {
        done = tokio::time::timeout(limit, work) => Some(done),
        () = stop.wait() => None,
    };
    match ended {
        Some(Ok(done)) => {
            let (status, out, err) = done.map_err(spawn_err)?;
            Ok(Finished {
                code: status.code(),
                stdout: String::from_utf8_lossy(&out).into_owned(),
                stderr: String::from_utf8_lossy(&err).trim().to_string(),
            })
        }
        Some(Err(_)) => {
            end_process_group(&mut child).await;
            Err(BackendError::Timeout {
                program: program.to_string(),
                limit,
            })
        }
        None => {
            end_process_group(&mut child).await;
            Err(stopped(pid))
        }
    }
}

/// Reads a child's pipe to the end (nothing when it was not captured).
async fn read_all(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut pipe) = pipe {
        pipe.read_to_end(&mut buf).await?;
    }
    Ok(buf)
}

/// SIGKILLs the process group a timed-out or stopped child leads and reaps the child, so no
/// process of it is left behind or becomes a zombie.
async fn end_process_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        let group = nix::unistd::Pid::from_raw(pid);
        if let Err(err) = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL) {
            tracing::warn!(pid, %err, "cannot kill the process group of a command");
        }
    }
    let _ = child.kill().await;
}

/// How long one iptables command may run before it is killed: twice the sync period (a sync
/// that takes longer has made `/healthz` fail already), and never less than
/// [`MIN_COMMAND_TIMEOUT`], so that a restore of a large table on a slow node is not cut short
/// by a small `--iptables-sync-period`.
pub fn command_timeout(sync_period: Duration) -> Duration {
    (2 * sync_period).max(MIN_COMMAND_TIMEOUT)
}

/// The shortest command timeout: the lock wait (`-w 5`) with a wide margin; a restore of
/// 10,000 services takes 3-9 s on the 2-core development machine.
pub const MIN_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// `--iptables-sync-period`'s default, for backends built outside the agent (cleanup, diff).
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);

fn command_error(program: &str, args: &[&str], out: &Finished) -> BackendError {
    BackendError::Command {
        command: format!("{program} {}", args.join(" ")),
        status: out
            .code
            .map(|c| format!("exit {c}"))
            .unwrap_or_else(|| "killed".into()),
        stderr: out.stderr.clone(),
    }
}

/// The iptables front-end of one IP family.
#[derive(Debug, Clone)]
pub struct Iptables {
    pub family: IpFamily,
    pub mode: Mode,
    pub bins: Binaries,
    /// The time limit of each command ([`command_timeout`]).
    pub timeout: Duration,
    /// Shutdown's request to stop the running command ([`stop`]; never, unless the sync loop
    /// sets it).
    pub stop: Stop,
}

impl Iptables {
    pub fn new(family: IpFamily, mode: Mode) -> Self {
        Iptables {
            family,
            mode,
            bins: Binaries::new(family, mode),
            timeout: command_timeout(DEFAULT_SYNC_PERIOD),
            stop: Stop::never(),
        }
    }

    async fn iptables(&self, args: &[&str]) -> Result<Finished, BackendError> {
        let mut full: Vec<&str> = WAIT_ARGS.to_vec();
        full.extend_from_slice(args);
        run(&self.bins.iptables, &full, None, self.timeout, &self.stop).await
    }

    /// Applies `payload` in one `iptables-restore --noflush --counters` transaction.
    pub async fn restore(&self, payload: &str) -> Result<(), BackendError> {
        self.restore_parts(&[payload]).await
    }

    /// Applies the concatenation of `parts` (each made of whole `*table ... COMMIT` sections)
    /// in one `iptables-restore --noflush --counters` transaction, written one after another
    /// (see [`Iptables::restore_input`]).
    pub async fn restore_parts(&self, parts: &[&str]) -> Result<(), BackendError> {
        let mut input = RestoreInput::new();
        for part in parts {
            self.push_text(&mut input, part);
        }
        self.restore_input(&input).await
    }

    /// Applies a planned payload and then `trailer` (whole sections, e.g. the canaries) in one
    /// transaction. The restore's stdin is fed chunk by chunk from the rule set's text (the
    /// payload never exists as one string: 33 MB at 10,000 Services).
    pub async fn restore_planned(
        &self,
        payload: &Payload<'_>,
        trailer: &[&str],
    ) -> Result<(), BackendError> {
        let mut input = RestoreInput::new();
        for table in payload.tables() {
            let zero = self.mode == Mode::Nft && table.declared() > NFT_BULK_CHAINS;
            input.push_table(table, zero.then_some(ZERO_LINE));
        }
        for part in trailer {
            self.push_text(&mut input, part);
        }
        self.restore_input(&input).await
    }

    /// Appends prepared text, on iptables-nft with the `-Z` lines of its large tables
    /// ([`nft_bulk_splits`]) between slices of it.
    fn push_text<'a>(&self, input: &mut RestoreInput<'a>, part: &'a str) {
        let splits = match self.mode {
            Mode::Nft => nft_bulk_splits(part, NFT_BULK_CHAINS),
            Mode::Legacy => Vec::new(),
        };
        for slice in with_zero_lines(part, &splits) {
            input.push_text(slice);
        }
    }

    /// The one place a restore runs: `input` goes to `iptables-restore --noflush --counters`
    /// in pieces, never copied; on iptables-nft, tables that declare many chains carry a `-Z`
    /// line after their header ([`nft_bulk_splits`]). A failure names the offending line with
    /// context, read back from the same pieces.
    pub async fn restore_input(&self, input: &RestoreInput<'_>) -> Result<(), BackendError> {
        let mut args: Vec<&str> = WAIT_ARGS.to_vec();
        args.extend(["--noflush", "--counters"]);
        if self.mode == Mode::Nft && input.pieces().any(|p| p == Piece::Text(ZERO_LINE)) {
            tracing::info!(
                family = ?self.family,
                "large restore on iptables-nft: zeroing the table's counters first (-Z) so that iptables-nft does not track each chain in a sorted list (quadratic at 10,000 services)"
            );
        }
        let out = run(
            &self.bins.restore,
            &args,
            Some(input),
            self.timeout,
            &self.stop,
        )
        .await?;
        if out.code == Some(0) {
            return Ok(());
        }
        let line = failed_line(&out.stderr);
        Err(BackendError::Restore {
            program: self.bins.restore.clone(),
            line,
            context: line.map(|l| input.line_context(l, 3)).unwrap_or_default(),
            stderr: out.stderr,
        })
    }

    /// `iptables-save [-t TABLE]`.
    pub async fn save(&self, table: Option<&str>) -> Result<String, BackendError> {
        let args: Vec<&str> = match table {
            Some(t) => vec!["-t", t],
            None => vec![],
        };
        let out = run(&self.bins.save, &args, None, self.timeout, &self.stop).await?;
        if out.code != Some(0) {
            return Err(command_error(&self.bins.save, &args, &out));
        }
        Ok(out.stdout)
    }

    /// Ensures every hook jump exists; returns how many were inserted. Hooks are inserted at
    /// position 1 in reverse order, so on a pristine chain they end up in `hooks` order.
    /// Jumps that already exist are not moved, as upstream.
    pub async fn ensure_hooks(&self, hooks: &[&Hook]) -> Result<usize, BackendError> {
        let mut inserted = 0;
        for hook in hooks.iter().rev() {
            let rendered = hook.rule.to_string();
            let rule_args = split_args(&rendered).map_err(|e| BackendError::Command {
                command: format!("iptables -C {} {rendered}", hook.chain.as_str()),
                status: "not run".into(),
                stderr: format!("the hook rule does not split into arguments: {e}"),
            })?;
            let rule: Vec<&str> = rule_args.iter().map(String::as_str).collect();
            let mut check = vec!["-t", hook.table.as_str(), "-C", hook.chain.as_str()];
            check.extend(&rule);
            let out = self.iptables(&check).await?;
            match out.code {
                Some(0) => continue,
                Some(1) => {}
                _ => return Err(command_error(&self.bins.iptables, &check, &out)),
            }
            let mut insert = vec!["-t", hook.table.as_str(), "-I", hook.chain.as_str(), "1"];
            insert.extend(&rule);
            let out = self.iptables(&insert).await?;
            if out.code != Some(0) {
                return Err(command_error(&self.bins.iptables, &insert, &out));
            }
            inserted += 1;
        }
        Ok(inserted)
    }

    /// True when every canary chain still exists and still holds [`CANARY_RULE`]. Unlike
    /// upstream (which checks only that the mangle chain exists, issue #129128), every table is
    /// checked, and a flush that leaves the chains (`iptables -t nat -F`) is noticed too.
    pub async fn canaries_present(&self) -> Result<bool, BackendError> {
        let marker = canary_rule_line();
        for table in CANARY_TABLES {
            let out = self
                .iptables(&["-t", table, "-S", ChainName::KUBE_PROXY_CANARY])
                .await?;
            if out.code != Some(0) || !out.stdout.lines().any(|l| l.trim_end() == marker) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Every (table, chain) of this family in the kernel. On iptables-nft the names come from
    /// a netlink dump of the nf_tables chains ([`nft_chains`]: 0.75 s -> see
    /// docs/performance.md at 10,000 services); if that fails, from `nft list chains` when the
    /// `nft` command is installed, else from `iptables-save` (2.7 s on iptables-nft, which
    /// translates every rule back to text). On iptables-legacy from `iptables-save` (0.7 s),
    /// which also shows the builtin chains' rules.
    pub async fn list_chains(&self) -> Result<ChainListing, BackendError> {
        if self.mode == Mode::Nft {
            let family = self.family;
            let dumped = tokio::task::spawn_blocking(move || nft_chains::dump_chains(family))
                .await
                .unwrap_or_else(|join| {
                    Err(nft_chains::NftChainsError::Malformed(format!(
                        "the listing thread failed: {join}"
                    )))
                });
            match dumped {
                Ok(chains) => return Ok(ChainListing::names_only(chains)),
                Err(err) => tracing::warn!(
                    family = ?self.family,
                    %err,
                    "cannot list the nf_tables chains over netlink; listing them with the nft or iptables-save command"
                ),
            }
        }
        self.list_chains_with_commands().await
    }

    /// [`Self::list_chains`] through `nft list chains` (iptables-nft with `nft` installed) or
    /// `iptables-save`.
    async fn list_chains_with_commands(&self) -> Result<ChainListing, BackendError> {
        match &self.bins.nft {
            Some(nft) => {
                let family = match self.family {
                    IpFamily::V4 => "ip",
                    IpFamily::V6 => "ip6",
                };
                let args = ["list", "chains", family];
                let out = run(nft, &args, None, self.timeout, &self.stop).await?;
                if out.code != Some(0) {
                    return Err(command_error(nft, &args, &out));
                }
                Ok(ChainListing::names_only(listed_chains(&out.stdout)))
            }
            None => Ok(saved_listing(&self.save(None).await?)),
        }
    }
}

/// The chains present in the kernel, as (table, chain) names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainListing {
    pub chains: HashSet<(String, String)>,
    /// The rules of the builtin chains as `iptables-save` prints them, (table, "CHAIN spec"),
    /// when the listing came from `iptables-save`; `None` from the netlink dump or `nft list
    /// chains`, which carry no rules.
    pub builtin_rules: Option<HashSet<(String, String)>>,
}

impl ChainListing {
    /// A listing of chain names without rules (netlink, `nft list chains`).
    pub fn names_only(chains: Vec<(String, String)>) -> Self {
        ChainListing {
            chains: chains.into_iter().collect(),
            builtin_rules: None,
        }
    }

    /// The per-service chains (knat's or upstream's) in the nat table; full syncs delete those
    /// knat did not write.
    pub fn service_chains(&self) -> Vec<(TableName, ChainName)> {
        let mut out: Vec<(TableName, ChainName)> = self
            .chains
            .iter()
            .filter(|(t, c)| t == "nat" && ChainName::new(c.as_str()).is_service_chain())
            .map(|(_, c)| (TableName::Nat, ChainName::new(c.as_str())))
            .collect();
        out.sort_unstable();
        out
    }

    /// Splits hooks into those that cannot exist yet, because the chain they jump to does not
    /// (iptables refuses a jump to a missing chain), and those to check with `-C`. The first
    /// kind is inserted by the restore that creates the chain, with no process of its own (on
    /// iptables-legacy at 10,000 services each `-C`/`-I` copies the whole nat table: about
    /// 0.5 s per hook). A hook whose exact text the listing shows in its builtin chain is in
    /// neither: it is in place (the text `iptables-save` prints is the kernel's rule), so a
    /// restart or an hourly full sync probes nothing. Text that differs only in form is
    /// still checked with `-C`, never inserted twice.
    pub fn split_hooks<'h>(&self, hooks: &'h [Hook]) -> (Vec<&'h Hook>, Vec<&'h Hook>) {
        let (in_restore, rest): (Vec<&Hook>, Vec<&Hook>) =
            hooks.iter().partition(|hook| match &hook.rule.target {
                Target::Jump(target) => !self
                    .chains
                    .contains(&(hook.table.as_str().to_string(), target.as_str().to_string())),
                _ => false,
            });
        let to_check = rest.into_iter().filter(|hook| !self.shows(hook)).collect();
        (in_restore, to_check)
    }

    /// True when the listing has `hook`'s exact rule in its builtin chain.
    fn shows(&self, hook: &Hook) -> bool {
        self.builtin_rules.as_ref().is_some_and(|rules| {
            rules.contains(&(
                hook.table.as_str().to_string(),
                format!("{} {}", hook.chain, hook.rule),
            ))
        })
    }

    /// The canary tables whose `KUBE-PROXY-CANARY` chain the listing does not show.
    pub fn missing_canaries(&self) -> Vec<&'static str> {
        CANARY_TABLES
            .into_iter()
            .filter(|table| {
                !self
                    .chains
                    .contains(&(table.to_string(), ChainName::KUBE_PROXY_CANARY.to_string()))
            })
            .collect()
    }
}

/// The tables that carry a canary chain, checked in this order.
pub const CANARY_TABLES: [&str; 3] = ["mangle", "nat", "filter"];

/// The one rule of each canary chain. Nothing jumps to the chain, so it never sees a packet;
/// it is there because flushing a table (`iptables -t nat -F`) removes every rule but keeps
/// every chain, which an empty canary chain would survive unnoticed.
pub const CANARY_RULE: &str = "-m comment --comment \"knat flush canary\" -j RETURN";

/// [`CANARY_RULE`] as `iptables -S` and `iptables-save` print it.
pub fn canary_rule_line() -> String {
    format!("-A {} {CANARY_RULE}", ChainName::KUBE_PROXY_CANARY)
}

/// The restore sections that (re)create the canary chain with its rule in every canary
/// table; full syncs append them to their payload (declaring the chain flushes it, so the
/// rule is never doubled).
pub fn canary_payload() -> String {
    let mut out = String::new();
    for table in CANARY_TABLES {
        out.push_str(&format!(
            "*{table}\n:{} - [0:0]\n{}\nCOMMIT\n",
            ChainName::KUBE_PROXY_CANARY,
            canary_rule_line()
        ));
    }
    out
}

/// Tables whose payload declares more chains than this get a leading `-Z` on iptables-nft.
pub const NFT_BULK_CHAINS: usize = 10_000;

/// iptables-nft (1.8.x) records the chain of every command of a `--noflush` restore in a sorted
/// linked list, one walk per command: a restore of 110,000 chains and 430,000 rules spends
/// minutes in `strcmp` (measured: over 300 s at 10,000 services, against 9 s with the fix). A
/// command without a chain switches that bookkeeping off for the transaction; the only one
/// with no side effect on rules is `-Z` (zero the counters of every rule and chain in the
/// table). So tables that declare more than `threshold` chains get `-Z` right after their
/// `*table` line; this returns the byte offsets of `payload` where a `-Z` line goes (just after
/// such a header line), none when no table needs it. Counters of other components' rules in
/// that table are reset too (documented in docs/operations.md).
pub fn nft_bulk_splits(payload: &str, threshold: usize) -> Vec<usize> {
    let mut splits = Vec::new();
    let mut rest = payload;
    while let Some(start) = rest.find('*') {
        let at_line_start = start == 0 || rest.as_bytes()[start - 1] == b'\n';
        let header_end = rest[start..]
            .find('\n')
            .map_or(rest.len(), |e| start + e + 1);
        if !at_line_start {
            rest = &rest[header_end..];
            continue;
        }
        let body_end = rest[header_end..]
            .find("\nCOMMIT")
            .map_or(rest.len(), |e| header_end + e);
        let declared = rest[header_end..body_end]
            .lines()
            .filter(|l| l.starts_with(':'))
            .count();
        if declared > threshold {
            splits.push(payload.len() - rest.len() + header_end);
        }
        rest = &rest[body_end..];
    }
    splits
}

/// The `-Z` line [`nft_bulk_splits`] places.
const ZERO_LINE: &str = "-Z\n";

/// `payload` as slices with a `-Z` line at each of `splits` (ascending offsets into it).
pub fn with_zero_lines<'a>(payload: &'a str, splits: &[usize]) -> Vec<&'a str> {
    let mut pieces = Vec::with_capacity(2 * splits.len() + 1);
    let mut copied = 0;
    for &at in splits {
        pieces.push(&payload[copied..at]);
        pieces.push(ZERO_LINE);
        copied = at;
    }
    pieces.push(&payload[copied..]);
    pieces
}

/// The payload with the `-Z` lines of [`nft_bulk_splits`], as one string; `None` when no table
/// needs one. (The agent writes [`with_zero_lines`]' slices instead, without this copy.)
pub fn nft_bulk_payload(payload: &str, threshold: usize) -> Option<String> {
    let splits = nft_bulk_splits(payload, threshold);
    (!splits.is_empty()).then(|| with_zero_lines(payload, &splits).concat())
}

/// Extracts N from iptables-restore's "line N failed" (nft) or "line N:" (legacy) message.
pub fn failed_line(stderr: &str) -> Option<usize> {
    let mut rest = stderr;
    while let Some(pos) = rest.find("line") {
        rest = rest[pos + 4..].trim_start_matches([':', ' ']);
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse() {
            return Some(n);
        }
    }
    None
}

/// Lines `line - around ..= line + around` of `payload`, numbered, the offending one marked.
pub fn line_context(payload: &str, line: usize, around: usize) -> String {
    let first = line.saturating_sub(around).max(1);
    payload
        .lines()
        .enumerate()
        .map(|(i, text)| (i + 1, text))
        .filter(|(n, _)| *n >= first && *n <= line + around)
        .map(|(n, text)| format!("{} {n:>6}: {text}", if n == line { ">>" } else { "  " }))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A rendered rule or an `iptables-save` rule line split into arguments as iptables-restore
/// splits it (the one tokenizer, [`crate::dump::words::split`]).
pub fn split_args(text: &str) -> Result<Vec<String>, TokenError> {
    Ok(split(text)?.into_iter().map(|word| word.text).collect())
}

/// `(table, chain)` for every chain declared in `iptables-save` output (builtins included).
///
/// A scan of the `*table` and `:chain` lines only, not a second parser: the agent's chain
/// listing needs no rule, and [`crate::dump::parse`] would tokenize and type every one of them
/// (a hundred thousand at 10,000 Services) on each full sync.
pub fn saved_chains(text: &str) -> Vec<(String, String)> {
    let mut table = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
        } else if let Some(decl) = line.strip_prefix(':')
            && let Some(name) = decl.split_whitespace().next()
        {
            out.push((table.clone(), name.to_string()));
        }
    }
    out
}

/// Chains and builtin-chain rules in `iptables-save` output (see [`ChainListing`]).
pub fn saved_listing(text: &str) -> ChainListing {
    let mut table = "";
    let mut builtin_rules = HashSet::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim();
        } else if let Some(rule) = line.strip_prefix("-A ")
            && let Some((chain, _)) = rule.split_once(' ')
            && BUILTIN_CHAINS.contains(&chain)
        {
            builtin_rules.insert((table.to_string(), rule.to_string()));
        }
    }
    ChainListing {
        chains: saved_chains(text).into_iter().collect(),
        builtin_rules: Some(builtin_rules),
    }
}

/// The builtin chains of the filter, nat and mangle tables.
const BUILTIN_CHAINS: [&str; 5] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// (table, chain) pairs in `nft list chains` output (`table ip nat {` then `chain NAME {`).
pub fn listed_chains(text: &str) -> Vec<(String, String)> {
    let mut table = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("table"), Some(_family), Some(name)) => table = name.to_string(),
            (Some("chain"), Some(name), Some("{")) => out.push((table.clone(), name.to_string())),
            _ => {}
        }
    }
    out
}

/// Number of rules (`-A` lines) in `iptables-save` output.
pub fn count_rules(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("-A ")).count()
}

/// Chains kubelet creates to tell kube-proxy which front-end it uses.
const KUBELET_HINT_CHAINS: [&str; 2] = ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"];

fn has_kubelet_hint(mangle_save: &str) -> bool {
    saved_chains(mangle_save)
        .iter()
        .any(|(_, c)| KUBELET_HINT_CHAINS.contains(&c.as_str()))
}

/// What [`detect_mode`] saw for one front-end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModeEvidence {
    pub kubelet_hint: bool,
    pub rules: usize,
}

/// The iptables-wrappers decision: a front-end with kubelet's hint chains wins (nft first);
/// otherwise legacy only if it has strictly more rules than nft; otherwise nft.
pub fn choose_mode(nft: ModeEvidence, legacy: ModeEvidence) -> Mode {
    if nft.kubelet_hint {
        return Mode::Nft;
    }
    if legacy.kubelet_hint || legacy.rules > nft.rules {
        return Mode::Legacy;
    }
    Mode::Nft
}

async fn evidence(mode: Mode) -> ModeEvidence {
    let mut ev = ModeEvidence::default();
    for family in [IpFamily::V4, IpFamily::V6] {
        let bins = Binaries::new(family, mode);
        // Only the explicitly suffixed binaries count as evidence for a mode.
        if !bins.save.contains(mode.as_str()) {
            continue;
        }
        if let Ok(out) = run(
            &bins.save,
            &["-t", "mangle"],
            None,
            MIN_COMMAND_TIMEOUT,
            &Stop::never(),
        )
        .await
            && out.code == Some(0)
        {
            ev.kubelet_hint |= has_kubelet_hint(&out.stdout);
        }
        if let Ok(out) = run(&bins.save, &[], None, MIN_COMMAND_TIMEOUT, &Stop::never()).await
            && out.code == Some(0)
        {
            ev.rules += count_rules(&out.stdout);
        }
    }
    ev
}

/// Detects the front-end the host uses (see [`choose_mode`]).
pub async fn detect_mode() -> (Mode, ModeEvidence, ModeEvidence) {
    let nft = evidence(Mode::Nft).await;
    let legacy = evidence(Mode::Legacy).await;
    (choose_mode(nft, legacy), nft, legacy)
}

/// Hook targets knat or kube-proxy installs; jumps to these from builtin chains are removed by
/// cleanup. `KUBE-FIREWALL` is not in the list: kubelet may own it.
pub const HOOK_TARGETS: [&str; 6] = [
    ChainName::KUBE_SERVICES,
    ChainName::KUBE_EXTERNAL_SERVICES,
    ChainName::KUBE_NODEPORTS,
    ChainName::KUBE_FORWARD,
    ChainName::KUBE_PROXY_FIREWALL,
    ChainName::KUBE_POSTROUTING,
];

/// Fixed chains cleanup deletes, per table (upstream `cleanup.go`, never `KUBE-FIREWALL`).
fn cleanup_fixed(table: &str) -> &'static [&'static str] {
    match table {
        "nat" => &[
            ChainName::KUBE_SERVICES,
            ChainName::KUBE_NODEPORTS,
            ChainName::KUBE_POSTROUTING,
            ChainName::KUBE_MARK_MASQ,
            ChainName::KUBE_PROXY_CANARY,
        ],
        "filter" => &[
            ChainName::KUBE_SERVICES,
            ChainName::KUBE_EXTERNAL_SERVICES,
            ChainName::KUBE_FORWARD,
            ChainName::KUBE_NODEPORTS,
            ChainName::KUBE_PROXY_FIREWALL,
            ChainName::KUBE_PROXY_CANARY,
        ],
        "mangle" => &[ChainName::KUBE_PROXY_CANARY],
        _ => &[],
    }
}

/// Older per-service prefix (before SVL/EXT) that cleanup also removes.
const LEGACY_SERVICE_PREFIXES: [&str; 1] = ["KUBE-XLB-"];

fn cleanup_owned(table: &str, chain: &str) -> bool {
    cleanup_fixed(table).contains(&chain)
        || (table == "nat"
            && (ChainName::new(chain).is_service_chain()
                || LEGACY_SERVICE_PREFIXES.iter().any(|p| chain.starts_with(p))))
}

/// The `iptables-restore --noflush` payload that removes everything knat or kube-proxy
/// (iptables mode) installed, given a full `iptables-save`: per table, first every rule in
/// another chain that jumps to one of the removed chains (the hook jumps), then the chains
/// (`:X` flush, `-X X`). Returns an empty string when there is nothing to remove.
pub fn cleanup_payload(save: &str) -> String {
    let mut out = String::new();
    let mut table = String::new();
    let mut lines: Vec<&str> = Vec::new();
    let flush = |out: &mut String, table: &str, lines: &[&str]| {
        if table.is_empty() {
            return;
        }
        let owned: Vec<String> = saved_chains(&lines.join("\n"))
            .into_iter()
            .map(|(_, c)| c)
            .filter(|c| cleanup_owned(table, c))
            .collect();
        let mut deletes = Vec::new();
        for line in lines {
            let Some(rule) = line.strip_prefix("-A ") else {
                continue;
            };
            // A line iptables-save printed always splits; one that does not is not touched.
            let Ok(args) = split_args(rule) else { continue };
            let Some(chain) = args.first() else { continue };
            if owned.contains(chain) {
                continue;
            }
            let target = args
                .iter()
                .position(|a| a == "-j" || a == "-g")
                .and_then(|i| args.get(i + 1));
            if target.is_some_and(|t| owned.contains(t)) {
                deletes.push(format!("-D {rule}"));
            }
        }
        if owned.is_empty() && deletes.is_empty() {
            return;
        }
        out.push_str(&format!("*{table}\n"));
        for d in &deletes {
            out.push_str(d);
            out.push('\n');
        }
        for c in &owned {
            out.push_str(&format!(":{c} - [0:0]\n"));
        }
        for c in &owned {
            out.push_str(&format!("-X {c}\n"));
        }
        out.push_str("COMMIT\n");
    };
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim().to_string();
            lines.clear();
        } else if line.trim() == "COMMIT" {
            flush(&mut out, &table, &lines);
            table.clear();
            lines.clear();
        } else if !line.starts_with('#') {
            lines.push(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_go_into_the_restore_only_when_their_target_chain_is_missing() {
        use crate::rules::Rule;
        let hook = |table: TableName, chain: &str, target: &str| Hook {
            table,
            chain: ChainName::new(chain),
            rule: Rule::new(Vec::new(), Target::Jump(ChainName::new(target))),
        };
        let hooks = [
            hook(TableName::Nat, "PREROUTING", "KUBE-SERVICES"),
            hook(TableName::Filter, "INPUT", "KUBE-FIREWALL"),
            hook(TableName::Filter, "FORWARD", "KUBE-SERVICES"),
        ];
        // KUBE-SERVICES exists in filter only: the nat hook cannot exist yet.
        let listing = ChainListing {
            chains: [
                ("filter", "KUBE-SERVICES"),
                ("filter", "INPUT"),
                ("nat", "KUBE-SEP-X"),
            ]
            .into_iter()
            .map(|(t, c)| (t.to_string(), c.to_string()))
            .collect(),
            ..ChainListing::default()
        };
        let (in_restore, to_check) = listing.split_hooks(&hooks);
        assert_eq!(in_restore, [&hooks[0], &hooks[1]]);
        assert_eq!(to_check, [&hooks[2]]);
        assert_eq!(
            listing.service_chains(),
            [(TableName::Nat, ChainName::new("KUBE-SEP-X"))]
        );
        // Cold start: nothing exists, every hook goes into the restore.
        let (in_restore, to_check) = ChainListing::default().split_hooks(&hooks);
        assert_eq!(in_restore.len(), 3);
        assert!(to_check.is_empty());
    }

    #[test]
    fn nft_bulk_payload_zeroes_only_tables_with_many_chains() {
        let payload = "*filter\n:KUBE-SERVICES - [0:0]\nCOMMIT\n*nat\n:A - [0:0]\n:B - [0:0]\n:C - [0:0]\n-A A -j B\nCOMMIT\n";
        assert_eq!(nft_bulk_payload(payload, 3), None);
        assert_eq!(
            nft_bulk_payload(payload, 2).as_deref(),
            Some(
                "*filter\n:KUBE-SERVICES - [0:0]\nCOMMIT\n*nat\n-Z\n:A - [0:0]\n:B - [0:0]\n:C - [0:0]\n-A A -j B\nCOMMIT\n"
            )
        );
        assert_eq!(
            nft_bulk_payload(payload, 0).as_deref(),
            Some(
                "*filter\n-Z\n:KUBE-SERVICES - [0:0]\nCOMMIT\n*nat\n-Z\n:A - [0:0]\n:B - [0:0]\n:C - [0:0]\n-A A -j B\nCOMMIT\n"
            )
        );
        // A '*' inside a rule is not a table header.
        let odd = "*nat\n:A - [0:0]\n-A A -m comment --comment \"a*b\" -j RETURN\nCOMMIT\n";
        assert_eq!(
            nft_bulk_payload(odd, 0).as_deref(),
            Some("*nat\n-Z\n:A - [0:0]\n-A A -m comment --comment \"a*b\" -j RETURN\nCOMMIT\n")
        );
    }

    #[test]
    fn zero_lines_go_between_slices_of_each_part() {
        let big = "*nat\n:A - [0:0]\n:B - [0:0]\n-A A -j B\nCOMMIT\n*filter\n:C - [0:0]\n:D - [0:0]\nCOMMIT\n";
        let canary = "*mangle\n:X - [0:0]\nCOMMIT\n";
        assert_eq!(nft_bulk_splits(big, 1), [5, big.find(":C").unwrap()]);
        assert!(nft_bulk_splits(canary, 1).is_empty());
        let pieces: Vec<&str> = [big, canary]
            .iter()
            .flat_map(|part| with_zero_lines(part, &nft_bulk_splits(part, 1)))
            .collect();
        let joined = format!("{big}{canary}");
        assert_eq!(
            pieces.concat(),
            nft_bulk_payload(&joined, 1).expect("two large tables")
        );
        assert_eq!(with_zero_lines(canary, &[]), [canary]);
    }

    #[tokio::test]
    async fn parts_reach_the_child_in_order() {
        let out = run(
            "cat",
            &[],
            Some(&RestoreInput::of_text(&["*nat\n", "-Z\n", "COMMIT\n", ""])),
            Duration::from_secs(10),
            &Stop::never(),
        )
        .await
        .expect("cat runs");
        assert_eq!(out.stdout, "*nat\n-Z\nCOMMIT\n");
    }

    #[test]
    fn failed_line_from_both_front_ends() {
        assert_eq!(
            failed_line("iptables-nft-restore: line 4 failed: No chain/target/match by that name."),
            Some(4)
        );
        assert_eq!(
            failed_line(
                "Ignoring deprecated --wait-interval option.\niptables-restore: line 12 failed"
            ),
            Some(12)
        );
        assert_eq!(
            failed_line(
                "iptables-restore v1.8.9 (legacy): Couldn't load target `X':No such file\n\nError occurred at line: 7"
            ),
            Some(7)
        );
        assert_eq!(failed_line("something else"), None);
    }

    #[test]
    fn context_marks_the_offending_line() {
        let payload = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let ctx = line_context(payload, 5, 2);
        assert_eq!(
            ctx,
            "        3: c\n        4: d\n>>      5: e\n        6: f\n        7: g"
        );
        assert!(line_context(payload, 1, 3).starts_with(">>      1: a"));
    }

    #[test]
    fn split_args_handles_quotes() {
        assert_eq!(
            split_args("-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES")
                .unwrap(),
            vec![
                "-m",
                "comment",
                "--comment",
                "kubernetes service portals",
                "-j",
                "KUBE-SERVICES"
            ]
        );
        assert_eq!(
            split_args("-m comment --comment \"\" -j X").unwrap(),
            vec!["-m", "comment", "--comment", "", "-j", "X"]
        );
        assert_eq!(split_args("  ").unwrap(), Vec::<String>::new());
        assert!(split_args("-m comment --comment \"unterminated").is_err());
    }

    #[test]
    fn mode_choice_follows_iptables_wrappers() {
        let ev = |kubelet_hint, rules| ModeEvidence {
            kubelet_hint,
            rules,
        };
        assert_eq!(choose_mode(ev(false, 0), ev(false, 0)), Mode::Nft);
        assert_eq!(choose_mode(ev(false, 3), ev(false, 10)), Mode::Legacy);
        assert_eq!(choose_mode(ev(false, 10), ev(false, 10)), Mode::Nft);
        assert_eq!(choose_mode(ev(false, 0), ev(true, 0)), Mode::Legacy);
        assert_eq!(choose_mode(ev(true, 0), ev(true, 50)), Mode::Nft);
    }

    const SAVE: &str = "# Generated by iptables-save
*mangle
:PREROUTING ACCEPT [0:0]
:KUBE-PROXY-CANARY - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-SERVICES - [0:0]
:CNI-FORWARD - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -j CNI-FORWARD
-A KUBE-FIREWALL -d 127.0.0.0/8 -j DROP
-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp -j REJECT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
:KUBE-MARK-DROP - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.10/32 -j KUBE-SVC-XPGD46QRK7WJZT7O
COMMIT
";

    #[test]
    fn cleanup_removes_jumps_then_chains_but_never_kube_firewall() {
        let payload = cleanup_payload(SAVE);
        let expected = "*mangle
:KUBE-PROXY-CANARY - [0:0]
-X KUBE-PROXY-CANARY
COMMIT
*filter
-D INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-D OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-SERVICES - [0:0]
-X KUBE-EXTERNAL-SERVICES
-X KUBE-SERVICES
COMMIT
*nat
-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
:KUBE-SERVICES - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
-X KUBE-SERVICES
-X KUBE-SVC-XPGD46QRK7WJZT7O
COMMIT
";
        assert_eq!(payload, expected);
        assert!(!payload.contains("KUBE-FIREWALL"));
        assert!(!payload.contains("KUBE-MARK-DROP"));
        assert!(!payload.contains("KUBELET"));
        assert_eq!(
            cleanup_payload("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"),
            ""
        );
    }

    #[test]
    fn listed_chains_from_nft_output() {
        let text = "table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n\tchain KUBE-SERVICES {\n\t}\n}\ntable ip nat {\n\tchain KUBE-SEP-ABC {\n\t}\n\tchain KUBE-SERVICES {\n\t}\n}\n";
        let chains = listed_chains(text);
        assert_eq!(
            chains,
            [
                ("filter".to_string(), "INPUT".to_string()),
                ("filter".into(), "KUBE-SERVICES".into()),
                ("nat".into(), "KUBE-SEP-ABC".into()),
                ("nat".into(), "KUBE-SERVICES".into()),
            ]
        );
    }

    #[test]
    fn a_saved_listing_shows_hooks_in_place_and_missing_canaries() {
        use crate::rules::Rule;
        use crate::rules::rule::Match;
        let listing = saved_listing(SAVE);
        let portals = |table: TableName, chain: &str| Hook {
            table,
            chain: ChainName::new(chain),
            rule: Rule::new(
                vec![Match::Comment("kubernetes service portals".into())],
                Target::Jump(ChainName::new("KUBE-SERVICES")),
            ),
        };
        // nat PREROUTING has this exact rule; nat OUTPUT does not; filter OUTPUT has it with a
        // conntrack match in front, which is another rule.
        let hooks = [
            portals(TableName::Nat, "PREROUTING"),
            portals(TableName::Nat, "OUTPUT"),
            portals(TableName::Filter, "OUTPUT"),
        ];
        let (in_restore, to_check) = listing.split_hooks(&hooks);
        assert!(in_restore.is_empty());
        assert_eq!(to_check, [&hooks[1], &hooks[2]]);
        // Only mangle has a canary chain.
        assert_eq!(listing.missing_canaries(), ["nat", "filter"]);
        let names_only = ChainListing {
            builtin_rules: None,
            ..listing
        };
        assert_eq!(names_only.split_hooks(&hooks).1.len(), 3);
    }

    #[test]
    fn the_canary_payload_declares_and_fills_one_chain_per_table() {
        let payload = canary_payload();
        assert_eq!(
            payload,
            "*mangle\n:KUBE-PROXY-CANARY - [0:0]\n-A KUBE-PROXY-CANARY -m comment --comment \"knat flush canary\" -j RETURN\nCOMMIT\n\
             *nat\n:KUBE-PROXY-CANARY - [0:0]\n-A KUBE-PROXY-CANARY -m comment --comment \"knat flush canary\" -j RETURN\nCOMMIT\n\
             *filter\n:KUBE-PROXY-CANARY - [0:0]\n-A KUBE-PROXY-CANARY -m comment --comment \"knat flush canary\" -j RETURN\nCOMMIT\n"
        );
        // Cleanup still removes the chain with its rule.
        let save = format!(
            "*nat\n:KUBE-PROXY-CANARY - [0:0]\n{}\nCOMMIT\n",
            canary_rule_line()
        );
        assert_eq!(
            cleanup_payload(&save),
            "*nat\n:KUBE-PROXY-CANARY - [0:0]\n-X KUBE-PROXY-CANARY\nCOMMIT\n"
        );
    }

    #[test]
    fn command_timeout_is_twice_the_sync_period_and_at_least_the_minimum() {
        assert_eq!(
            command_timeout(Duration::from_secs(30)),
            Duration::from_secs(60)
        );
        assert_eq!(command_timeout(Duration::from_secs(1)), MIN_COMMAND_TIMEOUT);
    }

    /// Processes whose command line starts with `marker`, once at most 2 s passed for them to
    /// go: SIGKILL is delivered at once but the exit is not.
    async fn left_after_kill(marker: &str) -> usize {
        let alive = || {
            std::fs::read_dir("/proc")
                .expect("/proc")
                .flatten()
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .filter(|cmdline| cmdline.starts_with(marker.as_bytes()))
                .count()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while alive() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        alive()
    }

    /// Whether `pid` is still a process (a zombie included): a reaped child is not.
    fn exists(pid: u32) -> bool {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    }

    #[tokio::test]
    async fn a_command_past_its_limit_is_killed_with_its_process_group() {
        // The shell starts a grandchild and waits for it: both must be gone after the limit.
        let marker = format!("knat-timeout-test-{}", std::process::id());
        let script = format!("(exec -a {marker} sleep 30) & wait");
        let started = std::time::Instant::now();
        let err = run(
            "bash",
            &["-c", &script],
            None,
            Duration::from_millis(300),
            &Stop::never(),
        )
        .await
        .expect_err("the command outlives its limit");
        assert!(matches!(err, BackendError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            left_after_kill(&marker).await,
            0,
            "the grandchild was killed with the group"
        );
    }

    #[tokio::test]
    async fn a_stopped_command_is_killed_with_its_process_group_and_reaped() {
        // A restore-like child (fed input) whose wrapper shell waits on a grandchild.
        let marker = format!("knat-stop-test-{}", std::process::id());
        let script = format!("(exec -a {marker} sleep 30) & wait");
        let (handle, stop) = Stop::channel();
        let stopper = async {
            while left_after_kill(&marker).await == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            handle.stop();
        };
        let started = std::time::Instant::now();
        let input = RestoreInput::of_text(&["*nat\n"]);
        let args = ["-c", script.as_str()];
        let (result, ()) = tokio::join!(
            run("bash", &args, Some(&input), Duration::from_secs(60), &stop,),
            stopper
        );
        let err = result.expect_err("the command was stopped");
        let BackendError::Stopped(stopped) = &err else {
            panic!("not a stop: {err}");
        };
        let pid = stopped.pid.expect("it had started");
        assert_eq!(stopped.program, "bash");
        assert!(stopped.restore, "it was fed input");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "stopped long before its limit"
        );
        assert!(!exists(pid), "the child was reaped (no zombie)");
        assert_eq!(
            left_after_kill(&marker).await,
            0,
            "the grandchild was killed with the group"
        );
        // Once stopped, nothing starts any more.
        let again = run("true", &[], None, Duration::from_secs(10), &stop).await;
        match again {
            Err(BackendError::Stopped(Stopped { pid: None, .. })) => {}
            other => panic!("a command started after the stop: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_child_that_stops_reading_its_input_reports_its_own_error() {
        // 1 MB of payload into a process that reads nothing and fails: its message, not EPIPE.
        let payload = "x".repeat(1 << 20);
        let out = run(
            "sh",
            &["-c", "echo 'line 1 failed' >&2; exit 1"],
            Some(&RestoreInput::of_text(&[payload.as_str()])),
            Duration::from_secs(10),
            &Stop::never(),
        )
        .await
        .expect("a finished command");
        assert_eq!(out.code, Some(1));
        assert_eq!(out.stderr, "line 1 failed");
    }

    #[test]
    fn saved_chains_and_rule_count() {
        assert_eq!(count_rules(SAVE), 8);
        let chains = saved_chains(SAVE);
        assert!(chains.contains(&("nat".into(), "KUBE-SVC-XPGD46QRK7WJZT7O".into())));
        assert!(chains.contains(&("mangle".into(), "KUBE-KUBELET-CANARY".into())));
        assert!(has_kubelet_hint(SAVE));
    }
}
