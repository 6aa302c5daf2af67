//! The workspace's tidy checks (after rust-analyzer's): invariants of the source tree itself,
//! run as unit tests of the crate every other depends on.
//!
//! - Dependencies point one way: `core <- models <- rewards <- decoding <- rl`; `eval` may use
//!   core, models, rewards and decoding but never rl; the binary (`cli`) and `xtask` sit on top.
//!   A crate's `[dependencies]` naming a crate at its own level or above fails.
//! - Every Rust source file under `crates/*/src` and `xtask/src` opens with a `//!` header.

#![cfg(test)]

use std::path::{Path, PathBuf};

/// Each library crate's directory with the workspace crates it may depend on.
const LAYERS: [(&str, &[&str]); 7] = [
    ("core", &[]),
    ("kernels", &[]),
    ("models", &["core", "kernels"]),
    ("rewards", &["core", "models"]),
    ("decoding", &["core", "models", "rewards"]),
    ("rl", &["core", "models", "rewards", "decoding"]),
    ("eval", &["core", "models", "rewards", "decoding"]),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The workspace crates (by directory name) that `manifest`'s `[dependencies]` names.
fn workspace_dependencies(manifest: &str) -> Vec<String> {
    let table: toml::Table = manifest.parse().expect("a Cargo.toml parses");
    table
        .get("dependencies")
        .and_then(|d| d.as_table())
        .map(|d| {
            d.keys()
                .filter_map(|k| k.strip_prefix("infalign-"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Library crates that depend on a crate they may not.
fn upward_dependencies(read: impl Fn(&str) -> String) -> Vec<String> {
    let mut bad = Vec::new();
    for (name, allowed) in LAYERS {
        for dep in workspace_dependencies(&read(name)) {
            if !allowed.contains(&dep.as_str()) {
                bad.push(format!("{name} depends on {dep}"));
            }
        }
    }
    bad
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_crate_depends_upward() {
    let root = workspace();
    let read = |name: &str| {
        std::fs::read_to_string(root.join("crates").join(name).join("Cargo.toml"))
            .expect("every layer has a Cargo.toml")
    };
    assert_eq!(upward_dependencies(read), Vec::<String>::new());
    // The check itself bites: models naming rl is caught.
    let upward = |name: &str| {
        if name == "models" {
            "[dependencies]\ninfalign-core = 1\ninfalign-rl = 1\n".to_string()
        } else {
            read(name)
        }
    };
    assert_eq!(upward_dependencies(upward), vec!["models depends on rl"]);
}

#[test]
fn every_source_file_opens_with_its_header() {
    let root = workspace();
    let mut files = Vec::new();
    for dir in std::fs::read_dir(root.join("crates")).expect("crates/ is readable") {
        let src = dir.expect("a directory entry").path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    rust_files(&root.join("xtask/src"), &mut files);
    assert!(files.len() > 50, "found only {} source files", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            !std::fs::read_to_string(f)
                .expect("a source file is readable")
                .starts_with("//!")
        })
        .collect();
    assert!(missing.is_empty(), "no `//!` header: {missing:?}");
}
