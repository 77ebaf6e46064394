//! cgroups for a test node, nested under the cgroup the test process itself runs in.
//!
//! A kubelet with the cgroupfs driver puts every pod under its `cgroupRoot`, one path used in
//! every hierarchy, and runc mirrors it in the cgroup2 `unified` hierarchy. On a shared machine
//! that tree must sit inside the caller's own cgroup in every hierarchy, and go away
//! afterwards. [`NodeCgroups::create`] picks the path (the deepest of the caller's paths, which
//! must contain the others, plus a per-node leaf), creates it in every mounted hierarchy
//! (cpuset needs `cpuset.cpus`/`cpuset.mems` copied from its parent before it accepts tasks),
//! and [`NodeCgroups::remove`] ends every process left in the tree (all of them were started
//! by the node: nothing else is ever placed there) and removes the directories leaf-first,
//! including the intermediate ones it had to create.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// cgroup errors.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `/proc/self/mounts` or `/proc/self/cgroup` could not be read or understood. Not
    /// retryable.
    #[error("cannot read the cgroup layout: {0}")]
    Layout(String),
    /// The caller's cgroups in two hierarchies are not on one path, so no single
    /// `cgroupRoot` can be nested under both. Not retryable.
    #[error("no cgroupRoot can be nested under the caller's cgroups: {0}")]
    NoCommonPath(String),
    /// A cgroup file operation failed. Not retryable.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Some directories or processes could not be removed (each listed).
    #[error("cgroup cleanup incomplete: {}", .0.join("; "))]
    Cleanup(Vec<String>),
}

/// One mounted hierarchy and the caller's place in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted (`/sys/fs/cgroup/memory`).
    pub mount: PathBuf,
    /// Its controllers as `/proc/self/cgroup` names them (`memory`, `name=systemd`; empty for
    /// cgroup2).
    pub controllers: String,
    /// The caller's cgroup in it (`/` or `/a/b`).
    pub caller: String,
}

/// The hierarchies mounted on this machine, with the caller's cgroup in each, from the texts
/// of `/proc/self/mounts` and `/proc/self/cgroup`.
pub fn parse_layout(mounts: &str, cgroup: &str) -> Result<Vec<Hierarchy>, CgroupError> {
    let mut out = Vec::new();
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, mount, fstype, options, ..] = fields[..] else {
            continue;
        };
        let controllers = match fstype {
            "cgroup2" => String::new(),
            "cgroup" => options
                .split(',')
                .filter(|o| {
                    !matches!(
                        *o,
                        "rw" | "ro"
                            | "nosuid"
                            | "nodev"
                            | "noexec"
                            | "relatime"
                            | "noatime"
                            | "xattr"
                    ) && !o.starts_with("release_agent")
                        && *o != "none"
                })
                .collect::<Vec<_>>()
                .join(","),
            _ => continue,
        };
        let caller = cgroup
            .lines()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, names, path) = (parts.next()?, parts.next()?, parts.next()?);
                Some((names, path))
            })
            .find(|(names, _)| *names == controllers)
            .map(|(_, path)| path.to_string())
            .ok_or_else(|| {
                CgroupError::Layout(format!(
                    "hierarchy {mount} ({controllers:?}) is not in /proc/self/cgroup"
                ))
            })?;
        out.push(Hierarchy {
            mount: PathBuf::from(mount),
            controllers,
            caller,
        });
    }
    if out.is_empty() {
        return Err(CgroupError::Layout("no cgroup hierarchy is mounted".into()));
    }
    Ok(out)
}

/// The one path under which a cgroup is nested in the caller's cgroup of every hierarchy:
/// the deepest caller path, provided every other caller path is a prefix of it.
pub fn common_base(hierarchies: &[Hierarchy]) -> Result<String, CgroupError> {
    let deepest = hierarchies
        .iter()
        .map(|h| h.caller.trim_end_matches('/'))
        .max_by_key(|p| p.len())
        .unwrap_or_default()
        .to_string();
    for h in hierarchies {
        let caller = h.caller.trim_end_matches('/');
        let nested =
            caller.is_empty() || deepest == caller || deepest.starts_with(&format!("{caller}/"));
        if !nested {
            return Err(CgroupError::NoCommonPath(format!(
                "{} is at {}, another hierarchy at {deepest}",
                h.mount.display(),
                h.caller
            )));
        }
    }
    Ok(deepest)
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> CgroupError {
    move |source| CgroupError::Io { context, source }
}

/// A node's cgroup tree in every hierarchy.
#[derive(Debug)]
pub struct NodeCgroups {
    hierarchies: Vec<Hierarchy>,
    /// The node's path, the same in every hierarchy (`/process_api/x/knat-123-node-1`).
    path: String,
    /// Directories this created, in creation order (removed in reverse).
    created: Vec<PathBuf>,
}

impl NodeCgroups {
    /// Creates `<base>/<leaf>` and `<base>/<leaf>/daemons` in every mounted hierarchy.
    pub fn create(leaf: &str) -> Result<NodeCgroups, CgroupError> {
        let read = |p: &str| std::fs::read_to_string(p).map_err(io(format!("read {p}")));
        let hierarchies = parse_layout(&read("/proc/self/mounts")?, &read("/proc/self/cgroup")?)?;
        let path = format!("{}/{leaf}", common_base(&hierarchies)?);
        let mut cgroups = NodeCgroups {
            hierarchies,
            path,
            created: Vec::new(),
        };
        if let Err(e) = cgroups.make(&format!("{}/daemons", cgroups.path)) {
            let _ = cgroups.remove();
            return Err(e);
        }
        Ok(cgroups)
    }

    fn make(&mut self, path: &str) -> Result<(), CgroupError> {
        for h in self.hierarchies.clone() {
            let mut dir = h.mount.clone();
            for part in path.split('/').filter(|p| !p.is_empty()) {
                let parent = dir.clone();
                dir.push(part);
                if dir.is_dir() {
                    continue;
                }
                std::fs::create_dir(&dir).map_err(io(format!("create {}", dir.display())))?;
                self.created.push(dir.clone());
                if h.controllers.split(',').any(|c| c == "cpuset") {
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        let value = std::fs::read_to_string(parent.join(file))
                            .map_err(io(format!("read {}", parent.join(file).display())))?;
                        std::fs::write(dir.join(file), value.trim())
                            .map_err(io(format!("write {}", dir.join(file).display())))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The node's path, for the kubelet's `cgroupRoot`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The `cgroup.procs` files of the node's `daemons` cgroup, one per hierarchy: a process
    /// writes its PID to each to join (its children then inherit it).
    pub fn daemon_procs_files(&self) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|h| self.dir_in(h).join("daemons/cgroup.procs"))
            .collect()
    }

    fn dir_in(&self, h: &Hierarchy) -> PathBuf {
        h.mount.join(self.path.trim_start_matches('/'))
    }

    /// Every process in the node's tree (read from every hierarchy).
    pub fn processes(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for h in &self.hierarchies {
            for dir in walk(&self.dir_in(h)) {
                if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
                }
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Ends every process left in the tree (SIGKILL; each was started by this node) and removes
    /// every directory of the tree and those created above it, leaf-first.
    pub fn remove(&mut self) -> Result<(), CgroupError> {
        let mut problems = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.processes();
            if pids.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                problems.push(format!("processes still in {}: {pids:?}", self.path));
                break;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for h in self.hierarchies.clone() {
            let mut dirs = walk(&self.dir_in(&h));
            dirs.reverse();
            for dir in dirs {
                if let Err(e) = rmdir_retrying(&dir) {
                    problems.push(format!("rmdir {}: {e}", dir.display()));
                }
            }
        }
        for dir in self.created.drain(..).rev() {
            if dir.is_dir()
                && let Err(e) = rmdir_retrying(&dir)
            {
                problems.push(format!("rmdir {}: {e}", dir.display()));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CgroupError::Cleanup(problems))
        }
    }
}

impl Drop for NodeCgroups {
    fn drop(&mut self) {
        if !self.created.is_empty()
            && let Err(e) = self.remove()
        {
            eprintln!("knat-testbed: {e}");
        }
    }
}

/// A cgroup directory and every directory below it, parents before children.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if !root.is_dir() {
        return out;
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
        out.push(dir);
    }
    // Parents before children: sort by depth, stable.
    out.sort_by_key(|p| p.components().count());
    out
}

/// `rmdir` of a cgroup, retried briefly: a cgroup whose last task just exited may still be
/// busy for a moment.
fn rmdir_retrying(dir: &Path) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,nosuid,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,xattr,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
proc /proc proc rw 0 0
";

    #[test]
    fn the_layout_pairs_mounts_with_the_callers_cgroups() {
        let cgroup = "4:memory:/process_api/abc\n1:cpu:/\n9:name=systemd:/\n0::/\n";
        let layout = parse_layout(MOUNTS, cgroup).expect("layout");
        assert_eq!(layout.len(), 4);
        assert_eq!(layout[1].controllers, "memory");
        assert_eq!(layout[1].caller, "/process_api/abc");
        assert_eq!(layout[2].controllers, "name=systemd");
        assert_eq!(layout[3].controllers, "");
        assert_eq!(common_base(&layout).expect("base"), "/process_api/abc");
    }

    #[test]
    fn callers_on_different_paths_have_no_common_root() {
        let h = |m: &str, c: &str| Hierarchy {
            mount: PathBuf::from(m),
            controllers: String::new(),
            caller: c.to_string(),
        };
        let split = [h("/a", "/x/1"), h("/b", "/y")];
        assert!(matches!(
            common_base(&split),
            Err(CgroupError::NoCommonPath(_))
        ));
        let nested = [h("/a", "/x/1"), h("/b", "/x"), h("/c", "/")];
        assert_eq!(common_base(&nested).expect("base"), "/x/1");
        let prefix_only = [h("/a", "/x/10"), h("/b", "/x/1")];
        assert!(common_base(&prefix_only).is_err());
    }

    #[test]
    fn an_unknown_hierarchy_is_an_error() {
        let err = parse_layout(MOUNTS, "1:cpu:/\n").expect_err("memory missing");
        assert!(err.to_string().contains("memory"), "{err}");
    }
}
