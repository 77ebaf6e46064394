//! kube-proxy's configuration file (`--config`): a `kubeproxy.config.k8s.io/v1alpha1`
//! `KubeProxyConfiguration` in YAML or JSON, as kubeadm's and kind's `kube-proxy` ConfigMaps
//! hold it.
//!
//! [`parse`] decodes it as kube-proxy does (unknown fields are ignored, and named in a
//! [`Warning`]), applies kube-proxy's defaults, validates every field knat uses (an invalid
//! value is a [`FileError`] naming the field and the value) and returns [`FileSettings`] in the
//! terms of knat's flags. Which of them a flag given on the command line overrides is the
//! command line's business (`src/cli/kube_proxy_flags.rs`).

pub mod duration;
pub mod feature_gates;
pub mod settings;
pub mod types;
pub mod unknown;
pub mod watch;

use std::path::Path;

pub use settings::{DetectLocalMode, FileSettings};

/// The only version kube-proxy 1.37 reads.
pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";

/// A configuration file that cannot be used. Nothing may be programmed after one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FileError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path} is not a KubeProxyConfiguration (YAML or JSON): {reason}")]
    Syntax { path: String, reason: String },
    /// A field with a value kube-proxy's validation (or knat) refuses.
    #[error("{field}: invalid value {value}: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
    /// An [`Invalid`](FileError::Invalid) field of the file at `path` (as [`load`] reports it).
    #[error("{path}: {error}")]
    InFile { path: String, error: Box<FileError> },
}

/// A field that is set but not used (or not fully used) by knat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The field's dotted path, as in the file.
    pub field: String,
    pub message: String,
}

/// A parsed file: the settings and the warnings to log at start.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub settings: FileSettings,
    pub warnings: Vec<Warning>,
}

/// Reads and parses `path`.
pub fn load(path: &Path) -> Result<Loaded, FileError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| FileError::Read {
        path: name.clone(),
        reason: e.to_string(),
    })?;
    parse(&text, &name).map_err(|e| match e {
        FileError::Invalid { .. } => FileError::InFile {
            path: name,
            error: Box::new(e),
        },
        other => other,
    })
}

/// Parses the text of a configuration file (`name` is used in messages).
pub fn parse(text: &str, name: &str) -> Result<Loaded, FileError> {
    let syntax = |reason: String| FileError::Syntax {
        path: name.to_string(),
        reason,
    };
    let document: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| syntax(e.to_string()))?;
    if !document.is_mapping() {
        return Err(syntax("the document is not a mapping".into()));
    }
    let typed: types::KubeProxyConfiguration = serde_path_to_error::deserialize(
        serde_yaml_ng::Deserializer::from_str(text),
    )
    .map_err(|e| {
        let field = e.path().to_string();
        FileError::Invalid {
            field,
            value: "(as written)".into(),
            reason: e.into_inner().to_string(),
        }
    })?;
    let mut warnings: Vec<Warning> = unknown::unknown_fields(&document)
        .into_iter()
        .map(|field| Warning {
            message: format!(
                "{field} is not a KubeProxyConfiguration field: ignored (kube-proxy decodes such a file leniently and ignores it too)"
            ),
            field,
        })
        .collect();
    let settings = settings::convert(&typed, &document, &mut warnings)?;
    Ok(Loaded { settings, warnings })
}

#[cfg(test)]
mod tests;
