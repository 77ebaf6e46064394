//! Flag handling shared by several subcommands.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use knat::input::Source;

/// Reads files (or standard input for `-` or when no file is given) into sources.
pub fn read_sources(files: &[String]) -> anyhow::Result<Vec<Source>> {
    let names: Vec<String> = if files.is_empty() {
        vec!["-".to_string()]
    } else {
        files.to_vec()
    };
    let mut sources = Vec::new();
    for name in names {
        if name == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            sources.push(Source {
                name: "<stdin>".into(),
                text,
            });
        } else if Path::new(&name).is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(&name)
                .with_context(|| format!("reading directory {name}"))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.extension()
                        .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
                })
                .collect();
            entries.sort();
            for path in entries {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                sources.push(Source {
                    name: path.display().to_string(),
                    text,
                });
            }
        } else {
            let text = std::fs::read_to_string(&name).with_context(|| format!("reading {name}"))?;
            sources.push(Source { name, text });
        }
    }
    Ok(sources)
}

/// `--ip-family` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum FamilyArg {
    Ipv4,
    Ipv6,
}

impl From<FamilyArg> for knat::model::IpFamily {
    fn from(value: FamilyArg) -> Self {
        match value {
            FamilyArg::Ipv4 => knat::model::IpFamily::V4,
            FamilyArg::Ipv6 => knat::model::IpFamily::V6,
        }
    }
}

/// Writes command output to stdout; a closed pipe (`knat ... | head`) is not an error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other.context("writing to standard output")?),
    }
}
