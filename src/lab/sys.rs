//! Running the lab's commands (`ip`, `sysctl`, `iptables-*-restore`), checking up front that
//! the machine can run a lab at all, and the reaper that removes a lab's namespaces even when
//! the process that built it dies without unwinding (Ctrl-C, `kill -9`, `abort`).

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use super::LabError;
use super::backend::Backend;

/// Renders a command line for error messages.
pub fn describe(command: &Command) -> String {
    let mut parts = vec![command.get_program().to_string_lossy().into_owned()];
    parts.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    parts.join(" ")
}

/// Runs a command to completion, feeding `input` on stdin; returns stdout, or a
/// [`LabError::Command`] carrying stderr.
pub fn run(command: &mut Command, input: Option<&str>) -> Result<String, LabError> {
    let text = describe(command);
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|source| LabError::Spawn {
        command: text.clone(),
        source,
    })?;
    if let Some(input) = input
        && let Some(mut stdin) = child.stdin.take()
    {
        // A child that exits early closes the pipe; its status tells the real story.
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child.wait_with_output().map_err(|source| LabError::Spawn {
        command: text.clone(),
        source,
    })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LabError::Command {
            command: text,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// `ip netns exec NS program args...` as a command, not yet run.
pub fn in_netns<I, S>(namespace: &str, program: impl AsRef<OsStr>, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", namespace])
        .arg(program)
        .args(args);
    command
}

/// The effective user id, read from `/proc/self/status` (no libc needed).
pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Finds an executable on `PATH` (plus the sbin directories, which non-login shells may lack).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// What the lab needs from the machine, for the given backends and families.
pub fn required_programs(backends: &[Backend], ipv6: bool) -> Vec<&'static str> {
    let mut programs = vec!["ip", "sysctl", "sh"];
    for backend in backends {
        programs.push(backend.restore(super::scenario::Family::V4));
        programs.push(backend.save(super::scenario::Family::V4));
        if ipv6 {
            programs.push(backend.restore(super::scenario::Family::V6));
            programs.push(backend.save(super::scenario::Family::V6));
        }
    }
    programs
}

/// Checks that this process can build labs: root, the programs from [`required_programs`],
/// and IPv6 support when asked. Returns [`LabError::Unsupported`] listing everything missing.
pub fn preflight(backends: &[Backend], ipv6: bool) -> Result<(), LabError> {
    let mut missing = Vec::new();
    match effective_uid() {
        Some(0) => {}
        Some(uid) => missing.push(format!(
            "root (running as uid {uid}; network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)"
        )),
        None => missing.push("root (cannot read /proc/self/status to check)".to_string()),
    }
    for program in required_programs(backends, ipv6) {
        if find_program(program).is_none() {
            let package = match program {
                "ip" => "iproute2",
                "sysctl" => "procps",
                "sh" => "dash",
                _ => "iptables",
            };
            missing.push(format!("`{program}` (Debian package {package})"));
        }
    }
    if ipv6 && !Path::new("/proc/sys/net/ipv6").exists() {
        missing.push("IPv6 support in the kernel (/proc/sys/net/ipv6 is absent)".to_string());
    }
    if !Path::new("/proc/sys/net").exists() {
        missing.push("/proc/sys/net (is /proc mounted?)".to_string());
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::Unsupported(missing))
    }
}

/// The shell script the reaper runs: collect names until stdin closes, then delete them.
/// Lines are `ns NAME` (a namespace) or `dir PATH` (a scratch directory).
const REAPER_SCRIPT: &str = r#"
nss=""
dirs=""
while IFS=' ' read -r kind value; do
  case "$kind" in
    ns) nss="$nss $value" ;;
    dir) dirs="$dirs $value" ;;
  esac
done
for ns in $nss; do ip netns delete "$ns" 2>/dev/null; done
for dir in $dirs; do rm -rf -- "$dir"; done
exit 0
"#;

/// A child `sh` in its own process group that deletes the namespaces it was told about as soon
/// as its stdin closes, which happens when the lab is dropped or its process dies for any
/// reason. Being in its own process group, it does not receive the terminal's Ctrl-C.
#[derive(Debug)]
pub struct Reaper {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Reaper {
    /// Starts the reaper.
    pub fn start() -> Result<Reaper, LabError> {
        let mut command = Command::new("sh");
        command
            .args(["-c", REAPER_SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = command.spawn().map_err(|source| LabError::Spawn {
            command: "sh -c <reaper script>".to_string(),
            source,
        })?;
        let stdin = child.stdin.take();
        Ok(Reaper { child, stdin })
    }

    fn send(&mut self, kind: &str, value: &str) -> Result<(), LabError> {
        if value.contains(char::is_whitespace) {
            return Err(LabError::Internal(format!(
                "reaper entries may not contain whitespace: {value:?}"
            )));
        }
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| LabError::Internal("the reaper was already finished".into()))?;
        writeln!(stdin, "{kind} {value}")
            .and_then(|()| stdin.flush())
            .map_err(|source| LabError::Io {
                context: "tell the reaper about a namespace".into(),
                source,
            })
    }

    /// Registers a namespace for deletion; call this before creating it.
    pub fn track_namespace(&mut self, name: &str) -> Result<(), LabError> {
        self.send("ns", name)
    }

    /// Registers a scratch directory for removal.
    pub fn track_dir(&mut self, path: &Path) -> Result<(), LabError> {
        let text = path
            .to_str()
            .ok_or_else(|| LabError::Internal(format!("non-UTF-8 path {path:?}")))?;
        self.send("dir", text)
    }

    /// Closes the reaper's stdin and waits for it to finish deleting.
    pub fn finish(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_joins_program_and_arguments() {
        let mut command = Command::new("ip");
        command.args(["-n", "x", "link"]);
        assert_eq!(describe(&command), "ip -n x link");
    }

    #[test]
    fn failing_commands_carry_their_stderr() {
        let result = run(
            Command::new("sh").args(["-c", "echo oops >&2; exit 3"]),
            None,
        );
        match result {
            Err(LabError::Command { stderr, .. }) => assert_eq!(stderr, "oops"),
            other => panic!("expected a command error, got {other:?}"),
        }
        let echoed = run(&mut Command::new("cat"), Some("hello"));
        assert_eq!(echoed.ok().as_deref(), Some("hello"));
    }

    #[test]
    fn sh_is_found() {
        assert!(find_program("sh").is_some());
        assert!(find_program("definitely-not-a-program-knat").is_none());
    }
}
