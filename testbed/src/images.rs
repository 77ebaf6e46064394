//! The images the node tier runs, built on this machine (never pulled): knat's own image by the
//! shipped `scripts/image.sh`, and the test images (pause, agnhost, upstream kube-proxy) by
//! `integration/images/build.sh`. Each leaves `<name>.tar` (a docker-archive) and `<name>.ref`
//! (the exact reference it carries) in one directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Image errors.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A build script failed; its output is attached. Not retryable.
    #[error("{script} failed ({status}):\n{output}")]
    Build {
        script: String,
        status: String,
        output: String,
    },
    /// An expected archive or reference file is missing or unreadable. Not retryable.
    #[error("{0}")]
    Missing(String),
}

/// One built image.
#[derive(Debug, Clone)]
pub struct Image {
    /// The archive to import.
    pub archive: PathBuf,
    /// The reference it is imported under (`localhost/knat:0.1.0-abc1234`).
    pub reference: String,
}

/// Every image the node tier needs.
#[derive(Debug, Clone)]
pub struct Images {
    pub knat: Image,
    pub kube_proxy: Image,
    pub agnhost: Image,
    pub pause: Image,
}

impl Images {
    /// All images, for importing.
    pub fn all(&self) -> [&Image; 4] {
        [&self.pause, &self.agnhost, &self.kube_proxy, &self.knat]
    }
}

fn run_script(repo: &Path, script: &str, args: &[&str]) -> Result<(), ImageError> {
    let output = Command::new("bash")
        .arg(repo.join(script))
        .args(args)
        .current_dir(repo)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ImageError::Build {
            script: script.to_string(),
            status: "not started".into(),
            output: e.to_string(),
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        return Err(ImageError::Build {
            script: script.to_string(),
            status: output.status.to_string(),
            output: text,
        });
    }
    eprint!("{text}");
    Ok(())
}

fn image(dir: &Path, name: &str) -> Result<Image, ImageError> {
    let archive = dir.join(format!("{name}.tar"));
    let ref_file = dir.join(format!("{name}.ref"));
    if !archive.is_file() {
        return Err(ImageError::Missing(format!(
            "{} was not built",
            archive.display()
        )));
    }
    let reference = std::fs::read_to_string(&ref_file)
        .map_err(|e| ImageError::Missing(format!("read {}: {e}", ref_file.display())))?
        .trim()
        .to_string();
    Ok(Image { archive, reference })
}

/// Builds (or finds cached) every image into `out`.
pub fn build(repo: &Path, out: &Path) -> Result<Images, ImageError> {
    let dir = out.display().to_string();
    run_script(repo, "scripts/image.sh", &["--out", &dir])?;
    run_script(repo, "integration/images/build.sh", &[&dir])?;
    Ok(Images {
        knat: image(out, "knat")?,
        kube_proxy: image(out, "kube-proxy")?,
        agnhost: image(out, "agnhost")?,
        pause: image(out, "pause")?,
    })
}
