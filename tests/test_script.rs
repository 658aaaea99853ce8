//! The test command itself: `scripts/test.sh`'s summary (`scripts/test-summary.sh`)
//! counts a test that skipped itself as skipped, not passed, names it, and never
//! ends with "ALL PASSED" when anything skipped; and the README's list of Debian
//! packages the tests need is exactly `.ci/run`'s `PACKAGES`, so an operator
//! who installs the README's list runs what CI runs.

use std::collections::BTreeSet;
use std::process::Command;

use hast_testkit::env::repo_root;
use hast_testkit::tmp::TempDir;

/// Two test binaries as cargo prints them: `a` with a test that skipped itself
/// (hast-testkit's `skip` line on stderr), `b` clean, plus doc-tests.
const LOG: &str = "\
     Running unittests src/lib.rs (target/debug/deps/hast_meta-0123abcdef012345)
running 3 tests
test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

     Running tests/hastmon.rs (target/debug/deps/hastmon-0123abcdef012345)
running 4 tests

*** SKIPPED: cut_link : needs root (mount, loop devices, /dev/fuse) ***

*** SKIPPED: kill_primary : needs root (mount, loop devices, /dev/fuse) ***
test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.20s

   Doc-tests hast_conf
test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s
";

/// Runs the summary script on `log` and `steps`; returns (exit code, stdout).
fn summary(log: &str, steps: &str) -> (i32, String) {
    let dir = TempDir::new("test-summary");
    let log_path = dir.path().join("test-output.log");
    let steps_path = dir.path().join("test-steps.txt");
    std::fs::write(&log_path, log).expect("write log");
    std::fs::write(&steps_path, steps).expect("write steps");
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/test-summary.sh"))
        .arg(&log_path)
        .arg(&steps_path)
        .output()
        .expect("run scripts/test-summary.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stdout)
}

#[test]
fn skipped_tests_are_counted_and_named_not_passed() {
    let steps = "ok: fuzz nbd_request (20 s)\nSKIPPED: Debian package: not root (dpkg -i)\n";
    let (code, out) = summary(LOG, steps);
    // 3 + 3 + 1 reported passed by libtest, of which 2 skipped; plus one ok step.
    assert!(
        out.contains("6 passed, 0 failed, 3 skipped, 1 ignored"),
        "totals wrong:\n{out}"
    );
    assert!(out.contains("SKIPPED test: cut_link"), "{out}");
    assert!(out.contains("SKIPPED test: kill_primary"), "{out}");
    assert!(out.contains("SKIPPED step: Debian package"), "{out}");
    assert!(
        !out.contains("ALL PASSED"),
        "said all passed with skips:\n{out}"
    );
    assert_eq!(code, 2, "exit status with skips and no failure");
}

#[test]
fn failures_and_a_clean_run() {
    let failing = LOG.replace(
        "test result: ok. 3 passed; 0 failed; 0 ignored",
        "test result: FAILED. 2 passed; 1 failed; 0 ignored",
    );
    let (code, out) = summary(&failing, "FAILED: fuzz nbd_request (exit 1)\n");
    assert!(out.contains("4 passed, 2 failed, 2 skipped"), "{out}");
    assert!(out.contains("FAILED step: fuzz nbd_request"), "{out}");
    assert_eq!(code, 1);

    let clean = LOG.replace("*** SKIPPED", "(not a skip)");
    let (code, out) = summary(&clean, "ok: fuzz nbd_request (20 s)\n");
    assert!(
        out.contains("8 passed, 0 failed, 0 skipped, 1 ignored"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("ALL PASSED"), "{out}");
    assert_eq!(code, 0);
}

/// The words of `.ci/run`'s `PACKAGES=( … )`, comments dropped.
fn ci_packages() -> BTreeSet<String> {
    let run = std::fs::read_to_string(repo_root().join(".ci/run")).expect("read .ci/run");
    let start = run.find("PACKAGES=(").expect(".ci/run has PACKAGES=(") + "PACKAGES=(".len();
    let mut words = BTreeSet::new();
    for line in run[start..].lines() {
        let code = line.split('#').next().unwrap_or("");
        if code.trim() == ")" {
            return words;
        }
        words.extend(code.split_whitespace().map(str::to_owned));
    }
    panic!(".ci/run: PACKAGES=( has no closing line");
}

/// The packages in the README's first backquoted span after "`.ci/run` installs them".
fn readme_packages() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("read README.md");
    let anchor = "`.ci/run` installs them on Debian";
    let at = readme
        .find(anchor)
        .expect("README names what .ci/run installs")
        + anchor.len();
    let rest = &readme[at..];
    let open = rest.find('`').expect("a backquoted package list") + 1;
    let close = open + rest[open..].find('`').expect("closing backquote");
    rest[open..close]
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[test]
fn readme_package_list_is_ci_packages() {
    let ci = ci_packages();
    let readme = readme_packages();
    assert!(ci.len() > 5, ".ci/run PACKAGES parsed as {ci:?}");
    let missing: Vec<_> = ci.difference(&readme).collect();
    let extra: Vec<_> = readme.difference(&ci).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "README.md's package list differs from .ci/run's PACKAGES: missing {missing:?}, not in .ci/run {extra:?}"
    );
}
