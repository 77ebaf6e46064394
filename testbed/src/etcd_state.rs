//! etcd's data directory kept between runs: a control plane stopped cleanly leaves its data
//! directory behind, which [`save`] copies into a cache (atomically: a temporary sibling renamed
//! into place, so a cut-off copy is never mistaken for a whole one), and [`restore`] copies
//! back into a new control plane's data directory before etcd starts. The side-by-side
//! benchmark uses it for its 50,000-Service state, whose creation through kube-apiserver costs
//! tens of minutes (every ClusterIP allocation lists every IPAddress object to update the
//! allocator's gauges), so that it is paid once per machine and Kubernetes version.

use std::path::Path;

use crate::control_plane::ControlPlaneError;

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> ControlPlaneError {
    move |source| ControlPlaneError::Io { context, source }
}

/// Copies the directory tree `from` into `to` (created; regular files and directories only:
/// etcd's data directory holds nothing else).
fn copy_tree(from: &Path, to: &Path) -> Result<u64, ControlPlaneError> {
    std::fs::create_dir_all(to).map_err(io_err(format!("create {}", to.display())))?;
    let mut bytes = 0;
    let entries =
        std::fs::read_dir(from).map_err(io_err(format!("read directory {}", from.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("read directory {}", from.display())))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry
            .file_type()
            .map_err(io_err(format!("stat {}", source.display())))?;
        if kind.is_dir() {
            bytes += copy_tree(&source, &target)?;
        } else if kind.is_file() {
            bytes += std::fs::copy(&source, &target).map_err(io_err(format!(
                "copy {} to {}",
                source.display(),
                target.display()
            )))?;
        } else {
            return Err(ControlPlaneError::Api {
                what: format!("etcd data directory entry {}", source.display()),
                detail: "neither a file nor a directory".into(),
            });
        }
    }
    Ok(bytes)
}

/// Saves the data directory `data` (of an etcd that has exited) as `cache`, replacing nothing:
/// an existing `cache` is left as it is. Returns the bytes copied (0 when it existed).
pub fn save(data: &Path, cache: &Path) -> Result<u64, ControlPlaneError> {
    if cache.exists() {
        return Ok(0);
    }
    let name = cache
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "etcd".into());
    let partial = cache.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let bytes = copy_tree(data, &partial)?;
    std::fs::rename(&partial, cache).map_err(io_err(format!(
        "rename {} to {}",
        partial.display(),
        cache.display()
    )))?;
    Ok(bytes)
}

/// Fills the (empty) data directory `data` from `cache`. Returns the bytes copied.
pub fn restore(cache: &Path, data: &Path) -> Result<u64, ControlPlaneError> {
    copy_tree(cache, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("knat-etcd-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn save_then_restore_gives_back_the_tree_and_save_never_overwrites() {
        let root = scratch("roundtrip");
        let data = root.join("data");
        std::fs::create_dir_all(data.join("member/wal")).expect("mkdir");
        std::fs::write(data.join("member/wal/0.wal"), b"wal bytes").expect("write");
        std::fs::write(data.join("member/db"), b"db").expect("write");
        let cache = root.join("cache");
        assert_eq!(save(&data, &cache).expect("save"), 11);
        std::fs::write(data.join("member/db"), b"changed").expect("write");
        assert_eq!(
            save(&data, &cache).expect("second save"),
            0,
            "kept the first copy"
        );
        let fresh = root.join("fresh");
        assert_eq!(restore(&cache, &fresh).expect("restore"), 11);
        assert_eq!(
            std::fs::read(fresh.join("member/wal/0.wal")).expect("read"),
            b"wal bytes"
        );
        assert_eq!(std::fs::read(fresh.join("member/db")).expect("read"), b"db");
        let leftovers: Vec<_> = std::fs::read_dir(&root)
            .expect("list")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "no partial copy left behind");
        std::fs::remove_dir_all(&root).expect("clean up");
    }

    #[test]
    fn restoring_a_missing_cache_is_an_error() {
        let root = scratch("missing");
        assert!(restore(&root.join("absent"), &root.join("data")).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }
}
