//! The static source: `knat run --from-files DIR`.
//!
//! Reads every `*.yaml`, `*.yml` and `*.json` in DIR (not recursive) with [`crate::input`],
//! publishes a complete [`SourceState`], and polls the directory: when the set of files or any
//! file's modification time or size changes, it re-reads everything. Text that does not parse
//! is logged and the previous state is kept, so a half-written file never removes rules.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::index::SourceState;
use crate::input::{self, InputError, Severity, Source};
use crate::metrics::Metrics;

/// Errors of the file source.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// The directory or a file could not be read. Retryable: polled again.
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file does not parse. Retryable once the file changes; the previous state is kept.
    #[error(transparent)]
    Input(#[from] InputError),
}

/// What identifies the directory's content cheaply: file names, mtimes and sizes.
pub type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn manifest_paths(dir: &Path) -> Result<Vec<PathBuf>, FilesError> {
    let read = |source| FilesError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        })
        .collect();
    paths.sort();
    Ok(paths)
}

/// The directory's fingerprint.
pub fn fingerprint(dir: &Path) -> Result<Fingerprint, FilesError> {
    Ok(manifest_paths(dir)?
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let mtime = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map(|m| m.len()).unwrap_or(0);
            (p, mtime, len)
        })
        .collect())
}

/// Loads the directory into a complete source state.
pub fn load_dir(
    dir: &Path,
    node_name: &str,
    metrics: Option<&Metrics>,
) -> Result<SourceState, FilesError> {
    let mut sources = Vec::new();
    for path in manifest_paths(dir)? {
        let text = std::fs::read_to_string(&path).map_err(|source| FilesError::Read {
            path: path.clone(),
            source,
        })?;
        sources.push(Source {
            name: path.display().to_string(),
            text,
        });
    }
    let loaded = input::load(&sources, node_name)?;
    for note in &loaded.notes {
        match note.severity {
            Severity::Warning => tracing::warn!("{}", note.message),
            Severity::Info => tracing::debug!("{}", note.message),
        }
        if let Some(m) = metrics {
            m.skipped("manifest", note.severity == Severity::Warning);
        }
    }
    Ok(SourceState::from_static(node_name, loaded.snapshot))
}

/// Publishes the directory's content into `tx` and re-reads it whenever it changes.
/// Runs until the receiver side is gone.
pub async fn run(
    dir: PathBuf,
    node_name: String,
    tx: watch::Sender<SourceState>,
    poll: Duration,
    metrics: std::sync::Arc<Metrics>,
) {
    let mut last: Option<Fingerprint> = None;
    loop {
        match fingerprint(&dir) {
            Ok(fp) if last.as_ref() != Some(&fp) => {
                match load_dir(&dir, &node_name, Some(&metrics)) {
                    Ok(state) => {
                        let services = state.snapshot.services().len();
                        let slices: usize = state.snapshot.slices().values().map(|m| m.len()).sum();
                        let changed = tx.send_if_modified(|current| {
                            if *current == state {
                                false
                            } else {
                                *current = state;
                                true
                            }
                        });
                        if changed {
                            metrics.service_changes_total.inc();
                            tracing::info!(dir = %dir.display(), services, slices, "manifests loaded");
                        }
                    }
                    Err(err) => {
                        tracing::error!(%err, "manifests not applied; keeping the previous state")
                    }
                }
                last = Some(fp);
            }
            Ok(_) => {}
            Err(err) => tracing::error!(%err, "cannot read the manifest directory"),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::index::Readiness;
    use crate::agent::node_identity::NodeCheck;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("knat-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: demo}\nspec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80}]}\n";
    const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n";

    #[tokio::test]
    async fn publishes_and_follows_changes_and_keeps_state_on_parse_errors() {
        let dir = temp_dir("follow");
        std::fs::write(dir.join("svc.yaml"), SVC).unwrap();
        std::fs::write(dir.join("ignored.txt"), "not a manifest").unwrap();
        let (tx, mut rx) = watch::channel(SourceState::new("node-1", false));
        let metrics = std::sync::Arc::new(Metrics::new());
        let task = tokio::spawn(run(
            dir.clone(),
            "node-1".into(),
            tx,
            Duration::from_millis(20),
            metrics,
        ));
        rx.changed().await.unwrap();
        {
            let s = rx.borrow_and_update();
            assert_eq!(s.readiness(), Readiness::Ready);
            assert_eq!(s.node, NodeCheck::Missing);
            assert_eq!(s.snapshot.services().len(), 1);
        }
        std::fs::write(dir.join("node.yaml"), NODE).unwrap();
        rx.changed().await.unwrap();
        assert_eq!(rx.borrow_and_update().node, NodeCheck::Found);
        std::fs::write(dir.join("svc.yaml"), "kind: Service\nmetadata: {name: [\n").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !rx.has_changed().unwrap(),
            "a broken file keeps the previous state"
        );
        assert_eq!(rx.borrow().snapshot.services().len(), 1);
        std::fs::remove_file(dir.join("svc.yaml")).unwrap();
        rx.changed().await.unwrap();
        assert!(rx.borrow().snapshot.services().is_empty());
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
