//! `./quickstart` and the README's ext4 recipe, run as printed: the script
//! itself (with its own directory and ports through the environment it
//! documents), and the fenced block README.md marks for this file, found by
//! its first line and run by bash with only the port and the two mount
//! points replaced.
//! Also what issue 16 found: a second quickstart on a running one's
//! directory is refused and changes nothing; a port in use stops it with
//! hastd's own cause and a non-zero status, instead of "Export ready".

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hast_testkit::env::repo_root;
use hast_testkit::{bins, free_port, readme, run, wait_for, Proc, TempDir};

const WAIT: Duration = Duration::from_secs(60);

/// A running `./quickstart`; dropping it stops it with SIGINT (Ctrl-C) and
/// then, should any be left, its daemons by the pids in their pidfiles.
struct Quickstart {
    proc: Proc,
    dir: PathBuf,
}

/// Two consecutive free loopback ports (nodea's, nodeb's = +1).
fn port_pair() -> u16 {
    wait_for(WAIT, || {
        let p = free_port();
        std::net::TcpListener::bind(("127.0.0.1", p + 1))
            .ok()
            .map(|_| p)
    })
    .expect("two consecutive free ports")
}

fn quickstart(dir: &Path, nbd: u16, repl: u16) -> Command {
    let hastd = bins!().hastd;
    let mut c = Command::new(repo_root().join("quickstart"));
    c.env("HAST_DIR", dir)
        .env("HAST_SIZE", "256M")
        .env("HAST_NBD_PORT", nbd.to_string())
        .env("HAST_REPL_PORT", repl.to_string())
        .env("HAST_BIN", hastd.parent().unwrap());
    c
}

impl Quickstart {
    fn start(tmp: &TempDir, nbd: u16, repl: u16) -> Quickstart {
        let dir = tmp.join("qs");
        let out = tmp.join("quickstart.out");
        let mut proc = Proc::spawn(&mut quickstart(&dir, nbd, repl), "quickstart", Some(&out))
            .expect("spawn ./quickstart");
        let ready = wait_for(WAIT, || {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            (text.contains("Export ready") || !proc.is_running()).then_some(())
        });
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        assert!(
            ready.is_some() && text.contains("Export ready"),
            "quickstart not ready: {text}"
        );
        Quickstart { proc, dir }
    }

    fn pids(&self) -> Vec<i32> {
        ["nodea", "nodeb"]
            .iter()
            .filter_map(|n| {
                std::fs::read_to_string(self.dir.join(n).join("hastd.pid"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            })
            .collect()
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let pids = self.pids();
        self.proc.signal(libc::SIGINT);
        let _ = self.proc.wait_timeout(WAIT);
        for pid in pids {
            if alive(pid) {
                // SAFETY: a daemon this test started, by the pid it wrote.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn readme_quickstart_then_ext4_recipe() {
    if !hast_testkit::tools::require_ext4(&["flock", "timeout"]) {
        return;
    }
    let tmp = TempDir::new("quickstart-readme");
    let (nbd, repl) = (port_pair(), port_pair());
    let qs = Quickstart::start(&tmp, nbd, repl);
    let (x, fs) = (tmp.join("x"), tmp.join("fs"));
    let recipe = readme::substitute(
        &readme::sh_block("mkdir -p /mnt/x /mnt/fs"),
        &[
            ("10809", &nbd.to_string()),
            ("/mnt/x", &x.display().to_string()),
            ("/mnt/fs", &fs.display().to_string()),
        ],
    );
    let out = run(
        Command::new("bash").args(["-euo", "pipefail", "-c", &recipe]),
        WAIT,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "hello",
        "the README's ext4 recipe failed as printed:\n{recipe}\n{out:?}"
    );
    assert!(
        hast_testkit::tmp::mounts_below(tmp.path()).is_empty(),
        "the recipe leaves nothing mounted"
    );
    // Ctrl-C: quickstart exits 0 and both daemons stop.
    let pids = qs.pids();
    assert_eq!(pids.len(), 2, "both pidfiles");
    let mut qs = qs;
    qs.proc.signal(libc::SIGINT);
    let st = qs
        .proc
        .wait_timeout(WAIT)
        .expect("quickstart exits on Ctrl-C");
    assert_eq!(st.code(), Some(0));
    let gone = wait_for(WAIT, || pids.iter().all(|&p| !alive(p)).then_some(()));
    assert!(gone.is_some(), "both hastd stopped");
    // Ctrl-C is answered on the terminal (issue 16: it printed nothing).
    let said = std::fs::read_to_string(tmp.join("quickstart.out")).unwrap();
    assert!(
        said.contains("quickstart: stopping both hastd") && said.contains("quickstart: stopped"),
        "{said}"
    );
    let log = std::fs::read_to_string(qs.dir.join("nodea/hastd.log")).unwrap();
    // quickstart's own Ctrl-C handler stops them with SIGTERM, and the
    // log says so.
    assert!(log.contains("stopping on SIGTERM"), "{log}");
}

/// Issue 16: the second quickstart rewrote hast.conf under the running
/// daemons and printed "Export ready" although its hastd had died.
#[test]
fn second_quickstart_on_a_running_one_is_refused() {
    if !hast_testkit::env::require_tools(&["flock"]) {
        return;
    }
    let tmp = TempDir::new("quickstart-twice");
    let (nbd, repl) = (port_pair(), port_pair());
    let qs = Quickstart::start(&tmp, nbd, repl);
    let conf = std::fs::read(qs.dir.join("hast.conf")).unwrap();
    let (nbd2, repl2) = (port_pair(), port_pair());
    let out = run(&mut quickstart(&qs.dir, nbd2, repl2), WAIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert!(err.contains("already running"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Export ready"));
    assert_eq!(
        std::fs::read(qs.dir.join("hast.conf")).unwrap(),
        conf,
        "hast.conf unchanged"
    );
    assert!(qs.pids().iter().all(|&p| alive(p)), "the first one runs on");
}

/// Issue 16: with the NBD port taken quickstart waited 10 s and blamed a
/// hastd that was not running; the cause was only in hastd.log.
#[test]
fn quickstart_says_why_a_port_in_use_stops_it() {
    let tmp = TempDir::new("quickstart-port");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nbd = taken.local_addr().unwrap().port();
    let out = run(&mut quickstart(&tmp.join("qs"), nbd, port_pair()), WAIT);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(73), "hastd's EX_CANTCREAT: {out:?}");
    assert!(err.contains("Address already in use"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{nbd}")), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Export ready"));
}
