//! Noticing that the `--config` file changed. kube-proxy exits when its configuration file is
//! written or replaced ("content of the proxy server's configuration file was updated"), so
//! that its pod restarts and reads the new one; knat does the same. It compares the file's
//! content at an interval instead of watching inotify events: a ConfigMap volume replaces the
//! file through a symlink swap, which a comparison of contents sees whatever the mechanism.

use std::path::PathBuf;
use std::time::Duration;

/// How often `knat run` compares the file.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// Resolves once the content of `path` differs from `initial`. A file that cannot be read (it
/// is briefly missing, or was removed) counts as unchanged, as kube-proxy ignores removals.
pub async fn changed(path: PathBuf, initial: Vec<u8>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let read = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || std::fs::read(path)).await
        };
        if let Ok(Ok(now)) = read
            && now != initial
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_on_a_new_content_only() {
        let dir = std::env::temp_dir().join(format!("knat-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("config.conf");
        std::fs::write(&path, "mode: iptables\n").expect("write");
        let every = Duration::from_millis(10);
        let watch = tokio::spawn(changed(path.clone(), b"mode: iptables\n".to_vec(), every));

        // Rewritten with the same bytes, then briefly missing: still running.
        std::fs::write(&path, "mode: iptables\n").expect("rewrite");
        tokio::time::sleep(Duration::from_millis(60)).await;
        std::fs::remove_file(&path).expect("remove");
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!watch.is_finished());

        std::fs::write(&path, "mode: iptables\nclusterCIDR: 10.0.0.0/8\n").expect("change");
        tokio::time::timeout(Duration::from_secs(5), watch)
            .await
            .expect("noticed within 5 s")
            .expect("task");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
