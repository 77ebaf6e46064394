//! The module graph of the shipped crate points one way (docs/architecture.md, "Module
//! graph"): no two sibling modules use each other, directly or around a loop, at any level of
//! the tree. Reads `src/` and follows `use crate::`, `use super::` and inline `crate::`/`super::`
//! paths up to the first `#[cfg(test)]` (knat keeps tests last) outside comments; a path to a
//! sibling's descendant counts as a use of that sibling.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const SRC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src");

type ModulePath = Vec<String>;

/// Every module file under `dir`, by module path (`agent/mod.rs` and `main.rs`/`lib.rs` are
/// their directory's module).
fn modules(dir: &Path, prefix: &[String], out: &mut BTreeMap<ModulePath, PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("cannot read {}", dir.display());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            let mut next = prefix.to_vec();
            next.push(name);
            modules(&path, &next, out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let mut module = prefix.to_vec();
            if !matches!(stem, "mod" | "lib" | "main") {
                module.push(stem.to_string());
            }
            out.insert(module, path);
        }
    }
}

/// The source without `#[cfg(test)]` sections (they come last in knat's files) and comments.
fn code(text: &str) -> String {
    let before_tests = text.split("#[cfg(test)]").next().unwrap_or_default();
    before_tests
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `crate::a::b` / `super::b` paths in `code`, each as its segments.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let begin = from + at;
            from = begin + start.len();
            let word_before =
                begin > 0 && (bytes[begin - 1].is_ascii_alphanumeric() || bytes[begin - 1] == b'_');
            if word_before || (begin >= 2 && &code[begin - 2..begin] == "::") {
                continue;
            }
            let tail: String = code[begin..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            out.push(
                tail.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            );
        }
    }
    out
}

/// The module a path names, from inside `module`: the longest known module prefix.
fn target(
    module: &[String],
    path: &[String],
    known: &BTreeMap<ModulePath, PathBuf>,
) -> Option<ModulePath> {
    let (mut base, rest): (ModulePath, &[String]) = match path.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &path[1..]),
        Some("super") => {
            let supers = path.iter().take_while(|s| *s == "super").count();
            let keep = module.len().checked_sub(supers)?;
            (module[..keep].to_vec(), &path[supers..])
        }
        _ => return None,
    };
    base.extend(rest.iter().cloned());
    (1..=base.len())
        .rev()
        .map(|n| base[..n].to_vec())
        .find(|m| known.contains_key(m))
}

/// Uses lifted to siblings: `a::x::y -> a::z::w` becomes `a::x -> a::z`.
fn sibling_edges() -> BTreeMap<ModulePath, BTreeSet<ModulePath>> {
    let mut known = BTreeMap::new();
    modules(Path::new(SRC), &[], &mut known);
    assert!(
        known.len() > 50,
        "found only {} modules under {SRC}",
        known.len()
    );
    let mut edges: BTreeMap<ModulePath, BTreeSet<ModulePath>> = BTreeMap::new();
    for (module, file) in &known {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for path in paths(&code(&text)) {
            let Some(to) = target(module, &path, &known) else {
                continue;
            };
            let common = module.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common < module.len() && common < to.len() {
                edges
                    .entry(module[..=common].to_vec())
                    .or_default()
                    .insert(to[..=common].to_vec());
            }
        }
    }
    edges
}

/// A loop through `start`, if there is one (depth-first search).
fn cycle_through(
    start: &ModulePath,
    edges: &BTreeMap<ModulePath, BTreeSet<ModulePath>>,
) -> Option<Vec<ModulePath>> {
    let mut stack = vec![(start.clone(), vec![start.clone()])];
    let mut seen = BTreeSet::new();
    while let Some((at, trail)) = stack.pop() {
        for next in edges.get(&at).into_iter().flatten() {
            if next == start {
                let mut trail = trail.clone();
                trail.push(next.clone());
                return Some(trail);
            }
            if seen.insert(next.clone()) {
                let mut trail = trail.clone();
                trail.push(next.clone());
                stack.push((next.clone(), trail));
            }
        }
    }
    None
}

#[test]
fn no_two_sibling_modules_use_each_other() {
    let edges = sibling_edges();
    let loops: Vec<String> = edges
        .keys()
        .filter_map(|m| cycle_through(m, &edges))
        .map(|trail| {
            trail
                .iter()
                .map(|m| m.join("::"))
                .collect::<Vec<_>>()
                .join(" -> ")
        })
        .collect();
    assert!(loops.is_empty(), "module cycles:\n{}", loops.join("\n"));
}

#[test]
fn the_graph_is_read_from_the_sources() {
    // The check must see real uses, or it would pass on anything.
    let edges = sibling_edges();
    let uses = |from: &str, to: &str| {
        let split = |s: &str| s.split("::").map(str::to_string).collect::<ModulePath>();
        edges
            .get(&split(from))
            .is_some_and(|t| t.contains(&split(to)))
    };
    assert!(uses("agent::sync", "agent::schedule"), "{edges:?}");
    assert!(uses("rules", "model"), "{edges:?}");
    assert!(uses("dump::read", "dump::parse"), "{edges:?}");
    assert!(!uses("model", "rules"), "{edges:?}");
}

#[test]
fn a_loop_is_found() {
    let m = |s: &str| s.split("::").map(str::to_string).collect::<ModulePath>();
    let mut edges: BTreeMap<ModulePath, BTreeSet<ModulePath>> = BTreeMap::new();
    edges.entry(m("a")).or_default().insert(m("b"));
    edges.entry(m("b")).or_default().insert(m("c"));
    assert_eq!(cycle_through(&m("a"), &edges), None);
    edges.entry(m("c")).or_default().insert(m("a"));
    assert_eq!(
        cycle_through(&m("a"), &edges),
        Some(vec![m("a"), m("b"), m("c"), m("a")])
    );
    let parsed =
        paths("use super::index::{Readiness};\nlet x = crate::rules::plan::SyncKind::Full;");
    let known = BTreeMap::from([
        (m("rules::plan"), PathBuf::new()),
        (m("agent::index"), PathBuf::new()),
    ]);
    let targets: BTreeSet<ModulePath> = parsed
        .iter()
        .filter_map(|p| target(&m("agent::schedule"), p, &known))
        .collect();
    assert_eq!(
        targets,
        BTreeSet::from([m("rules::plan"), m("agent::index")])
    );
}
