//! What a clean clone holds (issue 16): only the project at the top level,
//! and no reference to documents outside the repository — what a reader
//! needs is in `docs/`. Every `docs/overview.md §N` cited names a section
//! that page has.

use std::process::Command;

use hast_testkit::env::repo_root;
use hast_testkit::{require_tools, run, timeout_s};

fn tracked() -> Vec<String> {
    let out = run(
        Command::new("git")
            .arg("-C")
            .arg(repo_root())
            .args(["ls-files", "-z"]),
        timeout_s(30),
    );
    assert!(out.status.success(), "git ls-files: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split('\0')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn top_level_holds_only_the_project() {
    if !require_tools(&["git"]) {
        return;
    }
    const TOP: &[&str] = &[
        ".gitignore",
        "ARCHITECTURE.md",
        "Cargo.lock",
        "Cargo.toml",
        "Makefile",
        "README.md",
        "quickstart",
    ];
    let stray: Vec<String> = tracked()
        .into_iter()
        .filter(|f| !f.contains('/') && !TOP.contains(&f.as_str()))
        .collect();
    assert!(
        stray.is_empty(),
        "files at the top level that are not the project: {stray:?}"
    );
}

#[test]
fn no_reference_outside_the_repository() {
    if !require_tools(&["git"]) {
        return;
    }
    let root = repo_root();
    let overview = std::fs::read_to_string(root.join("docs/overview.md")).unwrap();
    let mut bad = Vec::new();
    for f in tracked() {
        let Ok(text) = std::fs::read_to_string(root.join(&f)) else {
            continue;
        };
        // Spelled in two pieces so that this file does not match itself.
        for outside in [
            concat!("../", "shared"),
            concat!("SPEC", ".md"),
            concat!("SPEC", " §"),
        ] {
            if text.contains(outside) {
                bad.push(format!("{f}: {outside}"));
            }
        }
        for (i, _) in text.match_indices("overview.md §") {
            let n: String = text[i + "overview.md §".len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            if n.is_empty() {
                // Not a citation: this file's own strings, a `§N` placeholder.
                continue;
            }
            let heading = format!("## {n}. ");
            let sub = format!("**{n}.");
            if !(overview.contains(&heading) || overview.contains(&sub)) {
                bad.push(format!("{f}: overview.md §{n} is no section"));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}
