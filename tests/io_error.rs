//! `on_io_error` (docs/overview.md §4.2): a primary whose local component fails writes.
//!
//! - `detach` (default) with a healthy fullsync secondary: the component is
//!   detached, the client sees no error, every acknowledged write reads back;
//!   after the repair `hastctl attach` resyncs what was written meanwhile from
//!   the secondary and the copies are byte-identical. With EIO and ENOSPC.
//! - `detach` with no secondary: the write fails with EIO, the `detach` event
//!   is recorded aborted (hastd's log, until the journal lands), and once the
//!   fault clears `hastctl attach` brings the resource back; the secondary,
//!   when it returns, gets what changed.
//! - `pass_on`: the error goes to the client, `status` is not `complete`.
//! - both copies failing (A detached, then B; or both on the same writes):
//!   every write fails with EIO at once, none is held; demoting A and
//!   promoting B recovers every acknowledged write (fullsync).
//!
//! Errors are injected below A's component as in `tests/read_error.rs`:
//!
//! ```text
//! hastd A --> r0.img (symlink) --> MNT/nbd (nbdfuse) --> nbdkit --filter=error file A.real
//! ```
//!
//! nbdkit's error filter fails every pwrite, zero and trim with `error=` (EIO
//! or ENOSPC) while the file `TRIGGER` exists. Needs root (FUSE) and
//! /dev/fuse. Teardown: hastd first (it holds the FUSE file), then
//! `fusermount3 -u`, then nbdkit, each by PID and bounded in time.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use hast_testkit::pair::{qemu_io, versioned_check, PairBuilder, VersionedWriter};
use hast_testkit::{
    bins, free_port, nbd_info, output_text, require_fuse, require_python_nbd, require_root,
    require_tools, run, tail, timeout_s, wait_for, NbdAddr, NbdFuse, Pair, Proc, Side, TempDir,
    MIB,
};

/// Size of each image file (metadata included).
const FILE_SIZE: u64 = 128 * MIB;
/// Blocks (4 KiB) the versioned writer writes: 16 MiB, 8 extents.
const BLOCKS: u64 = 4096;

fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Everything one test runs. Field order is drop order: hastd (holding the FUSE
/// file) first, then the FUSE mount, then nbdkit, then the directory.
struct Rig {
    pair: Pair,
    fuse: NbdFuse,
    nbdkit: Proc,
    trigger: PathBuf,
    nbdkit_log: PathBuf,
    errno: &'static str,
    dir: TempDir,
}

impl Rig {
    /// Pair built with `options`, A's image moved behind nbdkit+nbdfuse
    /// (writes failing with `errno` while TRIGGER exists), both daemons
    /// started, A primary, B secondary, complete.
    fn new(tag: &str, errno: &'static str, options: &[&str]) -> Rig {
        Rig::with_faulty(tag, errno, options, Side::A, "fullsync")
    }

    /// As [`Rig::new`], with `faulty`'s component behind the error filter
    /// and replication `mode`.
    fn with_faulty(
        tag: &str,
        errno: &'static str,
        options: &[&str],
        faulty: Side,
        mode: &str,
    ) -> Rig {
        let dir = TempDir::new(&format!("{tag}-inject"));
        Rig::build(dir, tag, errno, options, faulty, mode, |b| b)
    }

    /// As [`Rig::with_faulty`], `more` adding to the pair's builder.
    fn build(
        dir: TempDir,
        tag: &str,
        errno: &'static str,
        options: &[&str],
        faulty: Side,
        mode: &str,
        more: impl FnOnce(PairBuilder) -> PairBuilder,
    ) -> Rig {
        let mut b = Pair::builder(bins!())
            .tag(tag)
            .file_size(FILE_SIZE)
            .replication(mode);
        for o in options {
            b = b.option(o);
        }
        let pair = more(b).build();
        let real = dir.join(format!("{faulty}.real"));
        let trigger = dir.join("TRIGGER");
        let nbdkit_log = dir.join("nbdkit.log");
        let image = pair.image(faulty);
        std::fs::rename(&image, &real)
            .unwrap_or_else(|e| panic!("mv {} {}: {e}", image.display(), real.display()));

        let port = free_port();
        let mut cmd = Command::new("nbdkit");
        cmd.args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
            .arg(port.to_string())
            .args(["--filter=error", "file"])
            .arg(format!("file={}", real.display()))
            .arg(format!("error={errno}"));
        for op in ["pwrite", "zero", "trim"] {
            cmd.arg(format!("error-{op}-rate=1"))
                .arg(format!("error-{op}-file={}", trigger.display()));
        }
        let mut nbdkit = Proc::spawn(&mut cmd, "nbdkit", Some(&nbdkit_log))
            .unwrap_or_else(|e| panic!("cannot start nbdkit: {e}"));
        let addr = NbdAddr::local(port);
        let up = wait_for(timeout_s(20), || {
            if !nbdkit.is_running() {
                return Some(false);
            }
            nbd_info(&addr, "", Duration::from_secs(5))
                .ok()
                .map(|_| true)
        });
        assert_eq!(
            up,
            Some(true),
            "nbdkit did not come up:\n{}",
            tail(&nbdkit_log, 40)
        );

        let fuse = NbdFuse::mount(&dir.join("mnt"), &addr.uri(""), &dir.join("nbdfuse.log"));
        std::os::unix::fs::symlink(fuse.file(), &image)
            .unwrap_or_else(|e| panic!("ln -s {} {}: {e}", fuse.file().display(), image.display()));
        let mut rig = Rig {
            pair,
            fuse,
            nbdkit,
            trigger,
            nbdkit_log,
            errno,
            dir,
        };
        rig.pair.start();
        rig.pair.setup(Side::A, timeout_s(60));
        rig
    }

    fn uri(&self) -> String {
        self.pair.uri(Side::A)
    }

    /// Writes to A's component fail from now on (until [`Rig::heal`]).
    fn break_writes(&self) {
        std::fs::write(&self.trigger, self.errno).expect("create TRIGGER");
    }

    fn heal(&self) {
        std::fs::remove_file(&self.trigger).expect("remove TRIGGER");
    }

    /// How many requests the error filter failed so far.
    fn injected(&self) -> usize {
        std::fs::read_to_string(&self.nbdkit_log)
            .unwrap_or_default()
            .matches(&format!("injecting {} error", self.errno))
            .count()
    }

    /// `hastctl attach r0` on A: exit status and output.
    fn attach(&self) -> (bool, String) {
        self.attach_on(Side::A)
    }

    fn attach_on(&self, side: Side) -> (bool, String) {
        let out = self.pair.node(side).hastctl(&["attach", "r0"]);
        (out.status.success(), output_text(&out))
    }

    /// Stop the daemons (asserting a clean exit), then unmount and stop nbdkit.
    fn finish(mut self) {
        for side in [Side::A, Side::B] {
            if self.pair.node_mut(side).daemon_running() {
                self.pair.stop(side);
            }
        }
        let st = self.fuse.unmount().expect("nbdfuse was running");
        assert!(st.success(), "nbdfuse exited with {st}");
        self.nbdkit.stop(timeout_s(10));
    }
}

fn prerequisites() -> bool {
    require_root()
        && require_fuse()
        && require_tools(&["nbdkit", "nbdfuse", "fusermount3", "qemu-io"])
        && require_python_nbd()
}

/// Fullsync pair, a client writing all along: the local component starts
/// failing writes with `errno`, is detached (0 client errors), heals, is
/// attached and resynced; every acknowledged write reads back from A, the
/// copies are identical.
fn detach_and_attach(tag: &str, errno: &'static str, mode: &str) {
    if !prerequisites() {
        return;
    }
    let rig = Rig::with_faulty(tag, errno, &[], Side::A, mode);
    let uri = rig.uri();
    let mut w = VersionedWriter::start(&uri, 0, BLOCKS, rig.dir.path(), "w", 0, 7);
    w.wait_acked(500, timeout_s(60));

    rig.break_writes();
    let st = rig
        .pair
        .wait_status(Side::A, timeout_s(60), "detached", |s| {
            s.status == "detached"
        });
    let at_detach = w.acked();
    say(&format!(
        "{errno}: detached after {at_detach} acknowledged writes, {} injected errors; {}",
        rig.injected(),
        st.brief()
    ));
    assert!(rig.injected() > 0, "nbdkit failed nothing");
    assert_eq!(st.json["local_state"], "detached", "{}", st.json);
    assert!(
        st.json["local_errors"].as_u64().unwrap_or(0) > 0,
        "{}",
        st.json
    );
    // Writes go on, through the secondary alone; one to an extent never
    // written before (not dirty in the activemap: only the set of extents
    // written while detached brings it back at attach).
    qemu_io(&uri, &[format!("write -P 0xd7 {} {MIB}", 100 * MIB)]);
    w.wait_acked(at_detach + 1000, timeout_s(120));
    let list = rig.pair.node(Side::A).hastctl_ok(&["list", "r0"]);
    assert!(list.contains("status: detached"), "{list}");
    assert!(list.contains("local: detached"), "{list}");
    let log = rig.pair.node(Side::A).log();
    assert!(
        log.contains("event=io-error"),
        "no io-error event logged:\n{log}"
    );
    assert!(
        log.contains("event=detach"),
        "no detach event logged:\n{log}"
    );

    // Attach refused while the component still fails: nothing changes.
    let (ok, text) = rig.attach();
    say(&format!("attach while failing: {ok} {text}"));
    assert!(!ok, "attach succeeded with a failing component: {text}");
    assert_eq!(rig.pair.status(Side::A).status, "detached");

    rig.heal();
    let healed = w.acked();
    w.wait_acked(healed + 300, timeout_s(60));
    let (ok, text) = rig.attach();
    say(&format!("attach after the repair: {text}"));
    assert!(
        ok,
        "attach failed after the repair: {text}\n{}",
        rig.pair.describe()
    );
    w.wait_acked(w.acked() + 300, timeout_s(60));
    let summary = w.stop();
    say(&format!("{errno}: writer {summary}"));
    rig.pair.wait_complete(timeout_s(120));
    let st = rig.pair.status(Side::A);
    assert_eq!(st.json["local_state"], "attached", "{}", st.json);
    let log = rig.pair.node(Side::A).log();
    assert!(
        log.contains("event=attach"),
        "no attach event logged:\n{log}"
    );

    qemu_io(&uri, &[format!("read -P 0xd7 {} {MIB}", 100 * MIB)]);
    // Every acknowledged write, read back from A (its own copy now).
    let check = versioned_check(&uri, &[w_log(&rig)]);
    say(&format!("{errno}: check {check}"));
    rig.pair.assert_identical(timeout_s(60));
    rig.finish();
}

fn w_log(rig: &Rig) -> PathBuf {
    rig.dir.join("w.log")
}

#[test]
fn write_errors_eio_detach_and_attach() {
    detach_and_attach("ioerr-eio", "EIO", "fullsync");
}

#[test]
fn write_errors_enospc_detach_and_attach() {
    detach_and_attach("ioerr-nospc", "ENOSPC", "fullsync");
}

/// async and memsync: once detached a write is answered only on the peer's
/// REPLY, and a read of a range still being written waits for it.
#[test]
fn write_errors_async_detach_and_attach() {
    detach_and_attach("ioerr-async", "EIO", "async");
}

#[test]
fn write_errors_memsync_detach_and_attach() {
    detach_and_attach("ioerr-memsync", "ENOSPC", "memsync");
}

/// qemu-io one write at `off` (1 MiB of `byte`) then a flush: its output.
fn write_once(uri: &str, off: u64, byte: u8) -> (bool, String) {
    let out = run(
        Command::new("qemu-io")
            .args(["-f", "raw", uri])
            .arg("-c")
            .arg(format!("write -P 0x{byte:02x} {off} {MIB}"))
            .arg("-c")
            .arg("flush"),
        timeout_s(120),
    );
    let text = output_text(&out);
    let ok = out.status.success() && !text.contains("failed");
    (ok, text)
}

#[test]
fn write_error_without_a_secondary_fails_then_attach_recovers() {
    if !prerequisites() {
        return;
    }
    let mut rig = Rig::new("ioerr-nopeer", "EIO", &[]);
    let uri = rig.uri();
    qemu_io(&uri, &[format!("write -P 0x11 0 {MIB}"), "flush".into()]);
    rig.pair.wait_complete(timeout_s(60));
    rig.pair.stop(Side::B);
    rig.pair
        .wait_status(Side::A, timeout_s(30), "peer gone, degraded", |s| {
            s.peer.as_deref() != Some("connected") && s.status == "degraded"
        });

    rig.break_writes();
    let (ok, text) = write_once(&uri, 8 * MIB, 0x22);
    say(&format!(
        "write with no secondary and a failing disk: {ok}\n{text}"
    ));
    assert!(!ok, "the write succeeded with no copy to take it:\n{text}");
    assert!(
        text.contains("Input/output error"),
        "not EIO:\n{text}\n{}",
        rig.pair.describe()
    );
    // The journal: one io-error, and the detach that could not happen,
    // recorded aborted for `hastctl events retry -k detach`.
    let events = |rig: &Rig| {
        let out = rig
            .pair
            .node(Side::A)
            .hastctl_ok(&["events", "--all", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("events JSON");
        v["events"].as_array().expect("events").clone()
    };
    let of = |list: &[serde_json::Value], kind: &str| -> Vec<serde_json::Value> {
        list.iter()
            .filter(|e| e["event"] == kind)
            .cloned()
            .collect()
    };
    let list = events(&rig);
    let io = of(&list, "io-error");
    assert_eq!(io.len(), 1, "one io-error per episode: {list:?}");
    assert_eq!(io[0]["args"][1], "EIO", "{}", io[0]);
    let detach = of(&list, "detach");
    assert_eq!(detach.len(), 1, "{list:?}");
    assert_eq!(detach[0]["state"], "aborted", "{}", detach[0]);
    assert_eq!(detach[0]["note"], "no healthy secondary to serve from");
    assert_eq!(detach[0]["details"]["DETACHED"], "no", "{}", detach[0]);
    let st = rig.pair.status(Side::A);
    assert_eq!(st.json["local_state"], "failed", "{}", st.json);
    assert_ne!(st.status, "complete");

    // Still failing: the retry of the detach (hastctl attach underneath)
    // refuses, the event is aborted again with the reason, nothing changed.
    rig.pair
        .node(Side::A)
        .hastctl_ok(&["events", "retry", "-k", "detach"]);
    let retried = wait_for(timeout_s(30), || {
        let d = of(&events(&rig), "detach").remove(0);
        (d["state"] == "aborted" && d["attempts"] == 1).then_some(d)
    })
    .expect("the retried detach ends");
    say(&format!("retry while still failing: {}", retried["note"]));
    assert_ne!(retried["note"], "no healthy secondary to serve from");
    let (ok, text) = rig.attach();
    assert!(!ok, "attach succeeded with a failing component: {text}");

    rig.heal();
    rig.pair
        .node(Side::A)
        .hastctl_ok(&["events", "retry", "-k", "detach"]);
    let done = wait_for(timeout_s(30), || {
        let d = of(&events(&rig), "detach").remove(0);
        (d["state"] == "done").then_some(d)
    })
    .expect("the detach retried after the repair is done");
    say(&format!("retry after the repair: {}", done["note"]));
    let st = rig.pair.status(Side::A);
    assert_eq!(st.json["local_state"], "attached", "{}", st.json);
    assert_eq!(st.json["local_errors"], 0, "{}", st.json);
    let (ok, text) = write_once(&uri, 8 * MIB, 0x33);
    assert!(ok, "a write failed after attach:\n{text}");

    // The secondary returns and gets what changed.
    rig.pair.start_daemon(Side::B);
    rig.pair.make_secondary(Side::B);
    rig.pair.wait_complete(timeout_s(60));
    qemu_io(
        &uri,
        &[
            format!("read -P 0x11 0 {MIB}"),
            format!("read -P 0x33 {} {MIB}", 8 * MIB),
        ],
    );
    rig.pair.assert_identical(timeout_s(30));
    rig.finish();
}

#[test]
fn pass_on_gives_the_error_to_the_client_and_status_is_not_complete() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new("ioerr-passon", "EIO", &["on_io_error pass_on"]);
    let uri = rig.uri();
    rig.pair.wait_complete(timeout_s(60));
    rig.break_writes();
    let (ok, text) = write_once(&uri, 4 * MIB, 0x44);
    assert!(!ok, "pass_on: the write succeeded:\n{text}");
    assert!(text.contains("Input/output error"), "not EIO:\n{text}");
    let st = rig.pair.status(Side::A);
    say(&format!("pass_on after a write error: {}", st.json));
    assert_ne!(st.status, "complete", "{}", st.brief());
    assert_ne!(st.status, "detached", "{}", st.brief());
    assert_eq!(st.json["local_state"], "failed", "{}", st.json);
    assert!(
        st.json["local_errors"].as_u64().unwrap_or(0) > 0,
        "{}",
        st.json
    );
    rig.heal();
    let (ok, text) = rig.attach();
    assert!(ok, "attach failed after the repair: {text}");
    let (ok, text) = write_once(&uri, 4 * MIB, 0x55);
    assert!(ok, "a write failed after attach:\n{text}");
    rig.pair.wait_complete(timeout_s(60));
    rig.pair.assert_identical(timeout_s(30));
    rig.finish();
}

/// The detachment cannot be made durable (its marker path is a directory,
/// so creating the file fails): a write that would rest on the peer alone
/// is refused with EIO, never acknowledged; once the marker can be written,
/// writes go through the peer again and attach brings the copies back.
#[test]
fn a_detachment_that_cannot_be_recorded_acknowledges_nothing() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::new("ioerr-nomarker", "EIO", &[]);
    let uri = rig.uri();
    rig.pair.wait_complete(timeout_s(60));
    let marker = rig
        .pair
        .node(Side::A)
        .layout()
        .state_dir
        .join("r0.detached");
    std::fs::create_dir_all(&marker).expect("a directory where the marker goes");
    rig.break_writes();
    let (ok, text) = write_once(&uri, 2 * MIB, 0x66);
    assert!(!ok, "acknowledged with the detachment not durable:\n{text}");
    assert!(text.contains("Input/output error"), "not EIO:\n{text}");
    let log = rig.pair.node(Side::A).log();
    assert!(log.contains("cannot record the detachment"), "{log}");
    std::fs::remove_dir(&marker).expect("rmdir");
    let (ok, text) = write_once(&uri, 2 * MIB, 0x77);
    assert!(
        ok,
        "detached with the marker writable, the write failed:\n{text}"
    );
    assert!(marker.is_file(), "the marker is written");
    rig.heal();
    let (ok, text) = rig.attach();
    assert!(ok, "attach: {text}");
    rig.pair.wait_complete(timeout_s(60));
    qemu_io(&uri, &[format!("read -P 0x77 {} {MIB}", 2 * MIB)]);
    rig.pair.assert_identical(timeout_s(30));
    rig.finish();
}

/// The secondary's component fails writes: it detaches itself and refuses the
/// primary, which goes on degraded with no client error; `hastctl attach` on
/// the secondary after the repair lets the primary in, and its resync brings
/// the copies back to identical.
#[test]
fn secondary_write_errors_detach_the_secondary_until_attach() {
    if !prerequisites() {
        return;
    }
    let rig = Rig::with_faulty("ioerr-sec", "EIO", &[], Side::B, "fullsync");
    let uri = rig.uri();
    let mut w = VersionedWriter::start(&uri, 0, BLOCKS, rig.dir.path(), "w", 0, 11);
    w.wait_acked(300, timeout_s(60));
    rig.break_writes();
    let st = rig
        .pair
        .wait_status(Side::B, timeout_s(60), "detached", |s| {
            s.status == "detached"
        });
    say(&format!("B after its write errors: {}", st.brief()));
    rig.pair
        .wait_status(Side::A, timeout_s(60), "degraded, peer refused", |s| {
            s.status == "degraded" && s.peer.as_deref().is_some_and(|p| p.contains("detached"))
        });
    // Clients go on, with B apart.
    w.wait_acked(w.acked() + 500, timeout_s(60));
    assert_eq!(rig.pair.status(Side::B).status, "detached");

    rig.heal();
    let (ok, text) = rig.attach_on(Side::B);
    say(&format!("attach on B: {text}"));
    assert!(ok, "attach on B failed after the repair: {text}");
    w.wait_acked(w.acked() + 300, timeout_s(60));
    let summary = w.stop();
    say(&format!("writer {summary}"));
    rig.pair.wait_complete(timeout_s(120));
    let check = versioned_check(&uri, &[w_log(&rig)]);
    say(&format!("check {check}"));
    rig.pair.assert_identical(timeout_s(60));
    rig.finish();
}

/// hastd on the detached primary is killed before the attach: the set of
/// extents written meanwhile is gone with it, but the marker in `state_dir`
/// is not. The restarted node refuses promotion, and as secondary is
/// resynced in full by the other node, promoted; nothing acknowledged is lost.
#[test]
fn killed_while_detached_the_stale_copy_never_promotes_and_is_resynced_in_full() {
    if !prerequisites() {
        return;
    }
    let mut rig = Rig::new("ioerr-kill", "EIO", &[]);
    let uri = rig.uri();
    let mut w = VersionedWriter::start(&uri, 0, BLOCKS, rig.dir.path(), "w", 0, 13);
    w.wait_acked(300, timeout_s(60));
    rig.break_writes();
    rig.pair
        .wait_status(Side::A, timeout_s(60), "detached", |s| {
            s.status == "detached"
        });
    qemu_io(&uri, &[format!("write -P 0xd7 {} {MIB}", 100 * MIB)]);
    w.wait_acked(w.acked() + 500, timeout_s(60));
    let summary = w.stop();
    say(&format!("writer {summary}"));
    let marker = rig.pair.node(Side::A).dir().join("state/r0.detached");
    assert!(marker.exists(), "no marker {}", marker.display());

    rig.pair.kill9(Side::A);
    rig.heal();
    rig.pair.start_daemon(Side::A);
    let out = rig.pair.node(Side::A).hastctl(&["role", "primary", "r0"]);
    let text = output_text(&out);
    say(&format!(
        "promotion of the stale copy: {}\n{text}",
        out.status
    ));
    assert!(
        !out.status.success(),
        "the stale copy was promoted:\n{text}"
    );
    assert!(text.contains("detached"), "{text}");

    rig.pair.make_primary(Side::B);
    rig.pair.make_secondary(Side::A);
    rig.pair.wait_complete(timeout_s(120));
    assert!(!marker.exists(), "marker left after the full resync");
    let b_uri = rig.pair.uri(Side::B);
    qemu_io(&b_uri, &[format!("read -P 0xd7 {} {MIB}", 100 * MIB)]);
    let check = versioned_check(&b_uri, &[w_log(&rig)]);
    say(&format!("check on B {check}"));
    rig.pair.assert_identical(timeout_s(60));
    rig.finish();
}

/// The secondary goes away while the primary is detached: no copy is left
/// to serve from, so requests fail with EIO and the primary does not
/// reconnect. Demoted once repaired, its copy is marked inconsistent (never
/// promoted), and the other node, promoted, resyncs it; nothing acknowledged
/// is lost.
#[test]
fn secondary_lost_while_detached_fails_requests_and_demotion_keeps_the_copy_a_target() {
    if !prerequisites() {
        return;
    }
    let mut rig = Rig::new("ioerr-lost", "EIO", &[]);
    let uri = rig.uri();
    let mut w = VersionedWriter::start(&uri, 0, BLOCKS, rig.dir.path(), "w", 0, 17);
    w.wait_acked(300, timeout_s(60));
    rig.break_writes();
    rig.pair
        .wait_status(Side::A, timeout_s(60), "detached", |s| {
            s.status == "detached"
        });
    qemu_io(&uri, &[format!("write -P 0xd7 {} {MIB}", 100 * MIB)]);
    w.wait_acked(w.acked() + 300, timeout_s(60));
    let summary = w.stop();
    say(&format!("writer {summary}"));

    rig.pair.stop(Side::B);
    let st = rig
        .pair
        .wait_status(Side::A, timeout_s(30), "detached, peer gone", |s| {
            s.status == "detached" && s.peer.as_deref() != Some("connected")
        });
    say(&format!("A without B: {}", st.brief()));
    let (ok, text) = write_once(&uri, 8 * MIB, 0x66);
    assert!(!ok, "a write succeeded with no copy to take it:\n{text}");
    assert!(text.contains("Input/output error"), "not EIO:\n{text}");
    let (ok, text) = rig.attach();
    assert!(
        !ok,
        "attach succeeded with no secondary to copy from: {text}"
    );

    rig.heal();
    rig.pair.make_secondary(Side::A);
    let st = rig.pair.status(Side::A);
    assert_eq!(st.inconsistent, Some(true), "{}", st.brief());
    rig.pair.start_daemon(Side::B);
    rig.pair.make_primary(Side::B);
    rig.pair.wait_complete(timeout_s(120));
    let b_uri = rig.pair.uri(Side::B);
    qemu_io(&b_uri, &[format!("read -P 0xd7 {} {MIB}", 100 * MIB)]);
    let check = versioned_check(&b_uri, &[w_log(&rig)]);
    say(&format!("check on B {check}"));
    rig.pair.assert_identical(timeout_s(60));
    rig.finish();
}

/// Both copies fail: A's component is detached, then B's fails its writes
/// too (ENOSPC on both, as when two thin pools fill). No copy is left to
/// take a write, so writes fail with EIO within a bounded time — DRBD's
/// `on-no-data-accessible io-error` — and are never held; reads of what
/// is on B are still served.
fn both_copies_fail(tag: &str, at_once: bool) {
    if !prerequisites() {
        return;
    }
    let dir = TempDir::new(&format!("{tag}-inject"));
    let trigger_b = dir.join("TRIGGER_B");
    let filter_b = [
        "--filter=error".to_string(),
        "error=ENOSPC".to_string(),
        "error-pwrite-rate=1".to_string(),
        format!("error-pwrite-file={}", trigger_b.display()),
        "error-zero-rate=1".to_string(),
        format!("error-zero-file={}", trigger_b.display()),
        "error-trim-rate=1".to_string(),
        format!("error-trim-file={}", trigger_b.display()),
    ];
    let filters: Vec<&str> = filter_b.iter().map(String::as_str).collect();
    let mut rig = Rig::build(dir, tag, "ENOSPC", &[], Side::A, "fullsync", |b| {
        b.fuse_disk_filtered(Side::B, &filters)
    });
    let uri = rig.uri();
    let mut w = VersionedWriter::start(&uri, 0, BLOCKS, rig.dir.path(), "w", 0, 19);
    w.wait_acked(300, timeout_s(60));
    if at_once {
        std::fs::write(&trigger_b, "ENOSPC").expect("create TRIGGER_B");
        rig.break_writes();
    } else {
        rig.break_writes();
        rig.pair
            .wait_status(Side::A, timeout_s(60), "detached", |s| {
                s.status == "detached"
            });
        w.wait_acked(w.acked() + 300, timeout_s(60));
        // B fails under the writer's load.
        std::fs::write(&trigger_b, "ENOSPC").expect("create TRIGGER_B");
    }
    // Every write in flight and after must be answered (with EIO), none held.
    let ended = wait_for(timeout_s(30), || (!w.is_running()).then_some(()));
    let out = w.output();
    say(&format!("writer after B failed too: {out}"));
    assert!(
        ended.is_some(),
        "the writer's requests were held: no answer 30 s after both copies failed\n{out}"
    );
    let summary = w.wait_failed(timeout_s(10));
    say(&format!("writer {summary}"));
    let started = std::time::Instant::now();
    let (ok, text) = write_once(&uri, 8 * MIB, 0x66);
    say(&format!(
        "a write with both copies failing: {} in {:?}\n{text}",
        if ok { "succeeded" } else { "failed" },
        started.elapsed()
    ));
    assert!(!ok, "a write succeeded with no copy to take it:\n{text}");
    assert!(text.contains("Input/output error"), "not EIO:\n{text}");
    // The same again, now that both sides know: at once.
    let (ok, text) = write_once(&uri, 9 * MIB, 0x67);
    assert!(!ok, "a second write succeeded:\n{text}");
    let st = rig.pair.status(Side::A);
    say(&format!("A: {}", st.brief()));
    let st = rig.pair.status(Side::B);
    say(&format!("B: {}", st.brief()));
    // Repaired: A, with no copy to serve from, does not reconnect (as when
    // its secondary is lost); demoted, its copy is a resync target. B,
    // attached, holds every acknowledged write (fullsync) and is promoted.
    std::fs::remove_file(&trigger_b).expect("remove TRIGGER_B");
    rig.heal();
    let (ok, text) = rig.attach_on(Side::B);
    say(&format!("attach on B: {text}"));
    assert!(ok, "attach on B failed after the repair: {text}");
    rig.pair.make_secondary(Side::A);
    let st = rig.pair.status(Side::A);
    assert_eq!(st.inconsistent, Some(true), "{}", st.brief());
    rig.pair.make_primary(Side::B);
    rig.pair.wait_complete(timeout_s(120));
    let uri = rig.pair.uri(Side::B);
    let check = versioned_check(&uri, &[w_log(&rig)]);
    say(&format!("check {check}"));
    rig.pair.assert_identical(timeout_s(60));
    rig.finish();
}

#[test]
fn both_copies_failing_one_after_the_other_writes_fail_with_eio() {
    both_copies_fail("ioerr-both", false);
}

#[test]
fn both_copies_failing_the_same_writes_fail_with_eio() {
    both_copies_fail("ioerr-both2", true);
}
