//! What an operator gets besides the binaries: the manual pages in `man/`
//! document every option each command's `--help` shows (and each
//! subcommand's) and every keyword of hast.conf and hastmon.conf (taken from
//! the parsers' own tables), render with `man -l` without a warning, and
//! `make install` lays out the tree the README promises. The Debian package
//! is built, installed and smoke-tested by `scripts/deb-smoke.sh` (a step of
//! `scripts/test.sh`: it needs a release build).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hast_testkit::env::{repo_root, require_tool};

/// Each command with its page.
const PAGES: &[(&str, &str)] = &[
    ("hastd", "hastd.8"),
    ("hastctl", "hastctl.8"),
    ("hastmon", "hastmon.8"),
    ("hastmonctl", "hastmonctl.8"),
];

fn bin(name: &str) -> PathBuf {
    let path = match name {
        "hastd" => env!("CARGO_BIN_EXE_hastd"),
        "hastctl" => env!("CARGO_BIN_EXE_hastctl"),
        "hastmon" => env!("CARGO_BIN_EXE_hastmon"),
        "hastmonctl" => env!("CARGO_BIN_EXE_hastmonctl"),
        "hastcd" => env!("CARGO_BIN_EXE_hastcd"),
        "hastcctl" => env!("CARGO_BIN_EXE_hastcctl"),
        other => panic!("no binary {other}"),
    };
    PathBuf::from(path)
}

fn page(name: &str) -> String {
    let path = repo_root().join("man").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `cmd args... --help`, which must succeed.
fn help(cmd: &Path, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .arg("--help")
        .stdin(Stdio::null())
        .output()
        .expect("run --help");
    assert!(
        out.status.success(),
        "{} {args:?} --help: {:?}",
        cmd.display(),
        out.status
    );
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// The lines of one `Section:` of clap's help, without the heading.
fn section<'a>(help: &'a str, heading: &str) -> Vec<&'a str> {
    help.lines()
        .skip_while(|l| l.trim_end() != heading)
        .skip(1)
        .take_while(|l| l.starts_with(' '))
        .collect()
}

/// Options shown by one help text: `-d...`, `-c <config>`, `-h, --help`,
/// `-E, --epoch <epoch>`, `--json` become -d, -c, -h, --help, -E, --epoch, --json.
fn options(help: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in section(help, "Options:") {
        for word in line.split_whitespace() {
            if !word.starts_with('-') {
                // The value name (`<config>`) or the description.
                if word.starts_with('<') || word.ends_with(',') {
                    continue;
                }
                break;
            }
            found.insert(
                word.trim_end_matches(',')
                    .trim_end_matches("...")
                    .to_owned(),
            );
        }
    }
    found
}

/// Every option of a command and of its subcommands, each with where it was
/// seen (`hastctl events retry`).
fn all_options(cmd: &Path, path: &mut Vec<String>, out: &mut Vec<(String, String)>) {
    let args: Vec<&str> = path.iter().map(String::as_str).collect();
    let text = help(cmd, &args);
    let name = cmd.file_name().unwrap_or_default().to_string_lossy();
    let at = std::iter::once(name.as_ref())
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    for o in options(&text) {
        out.push((o, at.clone()));
    }
    let subs: Vec<String> = section(&text, "Commands:")
        .iter()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|s| *s != "help")
        .map(str::to_owned)
        .collect();
    for s in subs {
        path.push(s);
        all_options(cmd, path, out);
        path.pop();
    }
}

/// The words that follow `macro` in an mdoc source (`Fl c`, `Ic local`).
fn macro_args(source: &str, mac: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in source.lines().filter(|l| !l.starts_with(".\\\"")) {
        let words: Vec<&str> = line.trim_start_matches('.').split_whitespace().collect();
        for pair in words.windows(2) {
            if pair[0] == mac {
                found.insert(pair[1].to_owned());
            }
        }
    }
    found
}

#[test]
fn every_option_of_every_help_is_in_its_manual_page() {
    let mut missing = Vec::new();
    for (cmd, name) in PAGES {
        let documented = macro_args(&page(name), "Fl");
        let mut opts = Vec::new();
        all_options(&bin(cmd), &mut Vec::new(), &mut opts);
        assert!(
            opts.iter().any(|(o, _)| o == "--help"),
            "{cmd}: no options parsed from --help: {opts:?}"
        );
        for (opt, at) in opts {
            // `-c` is `Fl c`, `--json` is `Fl -json`.
            let mdoc = &opt[1..];
            if !documented.contains(mdoc) {
                missing.push(format!("{name}: {opt} (from `{at} --help`)"));
            }
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "options not documented (as `Fl`):\n{}",
        missing.join("\n")
    );
}

#[test]
fn every_config_keyword_is_in_its_manual_page() {
    let mut missing = Vec::new();
    let lists: [(&str, Vec<&str>); 2] = [
        ("hast.conf.5", hast_conf::keywords().collect()),
        ("hastmon.conf.5", hast_mon::conf::keywords().collect()),
    ];
    for (name, keywords) in lists {
        assert!(keywords.len() > 10, "{name}: keyword list too short");
        let documented = macro_args(&page(name), "Ic");
        for k in keywords {
            if !documented.contains(k) {
                missing.push(format!("{name}: {k}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "keywords not documented (as `Ic`):\n{}",
        missing.join("\n")
    );
}

/// The literal blocks of a page's EXAMPLES section.
fn examples(source: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut in_examples = false;
    let mut block: Option<String> = None;
    for line in source.lines() {
        if let Some(sh) = line.strip_prefix(".Sh ") {
            in_examples = sh == "EXAMPLES";
        } else if in_examples && line.starts_with(".Bd -literal") {
            block = Some(String::new());
        } else if line == ".Ed" {
            blocks.extend(block.take());
        } else if let Some(b) = block.as_mut() {
            b.push_str(&line.replace("\\&", ""));
            b.push('\n');
        }
    }
    blocks
}

#[test]
fn the_example_in_hast_conf_5_parses() {
    let blocks = examples(&page("hast.conf.5"));
    assert_eq!(blocks.len(), 1, "one example in hast.conf(5)");
    for node in ["hasta", "hastb"] {
        let cfg = hast_conf::parse(&blocks[0], Path::new("hast.conf(5)"), node)
            .unwrap_or_else(|e| panic!("hast.conf(5) example for {node}: {e}"));
        assert_eq!(cfg.resources.len(), 2);
    }
}

#[test]
fn manual_pages_render_without_warnings() {
    if !require_tool("man") || !require_tool("groff") {
        return;
    }
    let dir = repo_root().join("man");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("man/")
        .map(|e| e.expect("man/ entry").path())
        .collect();
    pages.sort();
    for (_, name) in PAGES {
        assert!(pages.contains(&dir.join(name)), "man/{name} missing");
    }
    for p in pages {
        let out = Command::new("man")
            .args(["-l", "--warnings", "-E", "UTF-8"])
            .arg(&p)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .stdin(Stdio::null())
            .output()
            .expect("run man");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "man -l --warnings {}: {:?}\n{stderr}",
            p.display(),
            out.status
        );
        assert!(
            out.stdout.len() > 1000,
            "{}: rendered to almost nothing",
            p.display()
        );
    }
}

/// `make install DESTDIR=... PREFIX=...` with the test's own binaries.
fn make(args: &[&str], destdir: &Path, prefix: &str) {
    let bindir = bin("hastd").parent().expect("bin dir").to_path_buf();
    let out = Command::new("make")
        .arg("-C")
        .arg(repo_root())
        .args(args)
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("PREFIX={prefix}"))
        .arg(format!("BINDIR_BUILD={}", bindir.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "make {args:?} PREFIX={prefix}: {:?}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file under `dir`, relative to it.
fn tree(dir: &Path) -> BTreeSet<String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if let Ok(rel) = p.strip_prefix(base) {
                out.insert(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn make_install_lays_out_the_tree() {
    if !require_tool("make") {
        return;
    }
    let tmp = std::env::temp_dir().join(format!("hast-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    for (prefix, root) in [("/usr", "usr"), ("/usr/local", "usr-local")] {
        let dest = tmp.join(root);
        make(&["install"], &dest, prefix);
        let p = prefix.trim_start_matches('/');
        let mut want: BTreeSet<String> = BTreeSet::new();
        for b in [
            "hastd",
            "hastctl",
            "hastmon",
            "hastmonctl",
            "hastcd",
            "hastcctl",
        ] {
            want.insert(format!("{p}/sbin/{b}"));
            want.insert(format!("{p}/share/bash-completion/completions/{b}"));
        }
        want.insert(format!("{p}/libexec/hast/hastmon-hastd"));
        for m in ["hast.conf.5", "hastmon.conf.5"] {
            want.insert(format!("{p}/share/man/man5/{m}"));
        }
        for m in ["hastd.8", "hastctl.8", "hastmon.8", "hastmonctl.8"] {
            want.insert(format!("{p}/share/man/man8/{m}"));
        }
        for u in ["hastd.service", "hastmon.service", "hastcd.service"] {
            want.insert(format!("{p}/lib/systemd/system/{u}"));
        }
        want.insert(format!("{p}/share/doc/hast/examples/hastmon.conf.example"));
        want.insert(format!("{p}/share/doc/hast/examples/hastcd.conf"));
        want.insert(format!("{p}/share/dbus-1/system.d/org.hast.connector.conf"));
        let got = tree(&dest);
        assert_eq!(got, want, "make install PREFIX={prefix}");

        let sbin = dest.join(p).join("sbin");
        assert_eq!(mode(&sbin.join("hastd")), 0o755);
        assert_eq!(
            mode(&dest.join(p).join("libexec/hast/hastmon-hastd")),
            0o755
        );
        assert_eq!(mode(&dest.join(p).join("share/man/man8/hastctl.8")), 0o644);
        // The installed binary runs, and its completion script completes it.
        let out = Command::new(sbin.join("hastctl"))
            .arg("--version")
            .output()
            .expect("run installed hastctl");
        assert!(out.status.success());
        let comp = std::fs::read_to_string(
            dest.join(p)
                .join("share/bash-completion/completions/hastctl"),
        )
        .expect("completion");
        assert!(
            comp.contains("complete -F _hastctl") && comp.contains("freeze"),
            "bash completion of hastctl:\n{comp}"
        );
        // The units and the example point at this prefix.
        for (unit, binary) in [
            ("hastd.service", "hastd"),
            ("hastmon.service", "hastmon"),
            ("hastcd.service", "hastcd"),
        ] {
            let text = std::fs::read_to_string(dest.join(p).join("lib/systemd/system").join(unit))
                .expect("unit");
            assert!(
                text.contains(&format!("ExecStart={prefix}/sbin/{binary} ")),
                "{unit} for PREFIX={prefix}:\n{text}"
            );
        }
        let example = std::fs::read_to_string(
            dest.join(p)
                .join("share/doc/hast/examples/hastmon.conf.example"),
        )
        .expect("example");
        assert!(
            example.contains(&format!("\nexec {prefix}/libexec/hast/hastmon-hastd\n")),
            "hastmon.conf.example for PREFIX={prefix}"
        );

        make(&["uninstall"], &dest, prefix);
        let left = tree(&dest);
        assert!(left.is_empty(), "left after make uninstall: {left:?}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
