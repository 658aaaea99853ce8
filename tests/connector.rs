//! The connector's promise (docs/overview.md §8, issue 12): a filesystem on hastcd's
//! endpoint does not notice a failover.
//!
//! In network namespaces (`hast_testkit::hacluster`): data hosts `a`, `b`
//! (hastd with a discovery listener, hastmon), the witness `w`, and hastcd
//! on the client host `c`. The client is in the test's own namespaces and
//! reaches hastcd's Unix endpoint by its path: nbdfuse, a loop device and
//! ext4 on the first 160 MiB of the export, and two writers at once:
//! `tests/py/fsync_writer.py` creating files with known contents in ext4,
//! fsyncing each and timing every operation, and `tests/py/follow_writer.py`
//! writing versioned blocks through the same endpoint after the filesystem's
//! end. Faults (`HAST_CONN_TRIALS`, default 10, cycling through the kinds):
//! kill -9 of the primary host's hastd and hastmon, the primary isolated,
//! the primary's daemons SIGSTOPped past their lease. After each: no writer
//! saw an error or a lost connection, ext4 is still mounted read-write with
//! `errors_count` 0, every fsynced file reads back with its checksum, and
//! the pause is measured (the longest time without a completed file
//! operation from the fault to the healing). At the end: `fsck.ext4 -n -f`
//! clean, every file intact again through a fresh nbdfuse, the
//! versioned-block checker (`tests/py/cluster_check.py`) through the
//! connector finds nothing lost, the copies are identical, and the pauses'
//! median / p99 / max are printed: p99 must stay within 5 s.
//!
//! `control_straight_to_the_primary` (ignored; `bench/connector.sh control`)
//! runs the same workload and checks with nbdfuse connected straight to the
//! primary's NBD address: a failover must break the promise there (I/O
//! errors, a read-only ext4), and the test passes only if the checks say so
//! — the proof that they can fail.
//!
//! The connector's other behaviours: `ctrl_loss_tmo` (no primary anywhere:
//! held requests fail with EIO after the timeout, and I/O works again once a
//! primary is back, hastcd not restarted); SIGHUP reloads keep a connected
//! client; `exclude =` and manual `connection =` entries; `hastcctl` and the
//! JSON shapes of `ls`/`status`; a bad hastcd.conf gives `FILE:LINE: ...`
//! and exit 78.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use hast_testkit::cluster::NsProc;
use hast_testkit::hacluster::{other, HaBins, HaCluster, HaOptions, CLIENT, DATA, RES};
use hast_testkit::hastcd::{hastcd_once, netns_path, ConnBins, Ext4Client, Hastcd, HastcdConf};
use hast_testkit::tools::require_ext4;
use hast_testkit::{
    output_text, py_script, python_command, require_python_nbd, run, tail, timeout_s, wait_for,
    Proc, PYTHON,
};

fn ha_bins() -> HaBins {
    HaBins {
        hastd: env!("CARGO_BIN_EXE_hastd").into(),
        hastctl: env!("CARGO_BIN_EXE_hastctl").into(),
        hastmon: env!("CARGO_BIN_EXE_hastmon").into(),
        hastmonctl: env!("CARGO_BIN_EXE_hastmonctl").into(),
    }
}

/// `option_env!`: the test compiles while the connector's binaries are
/// still being written; a test that needs one fails loudly without it.
fn conn_bins() -> ConnBins {
    ConnBins {
        hastcd: option_env!("CARGO_BIN_EXE_hastcd").map(PathBuf::from),
        hastcctl: option_env!("CARGO_BIN_EXE_hastcctl").map(PathBuf::from),
    }
}

const SIZE: u64 = 256 << 20;
/// ext4 takes the start of the export; the versioned blocks follow it.
const FS_SIZE: u64 = 160 << 20;
const VB_FIRST_LBA: u64 = FS_SIZE / 4096;
const VB_BLOCKS: u64 = 4096;
/// The promise's bound on the pause at p99.
const PAUSE_P99_MAX_S: f64 = 5.0;
/// Violations of one kind shown per trial.
const SHOWN: usize = 3;
/// How long a trial waits for I/O to come back before calling it lost.
const RESUME_BOUND_S: u64 = 30;

/// One cluster at a time (two on two cores would measure the machine).
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cluster(opts: HaOptions) -> Option<(std::sync::MutexGuard<'static, ()>, HaCluster)> {
    if !(require_python_nbd() && require_ext4(&["nsenter", "sha256sum"])) {
        return None;
    }
    let guard = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    HaCluster::start_with(ha_bins(), SIZE, opts).map(|c| (guard, c))
}

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `HH:MM:SS.mmm` (UTC) of a wall-clock time, to find a trial in the
/// daemons' logs.
fn time_of_day(t: f64) -> String {
    let ms = (t * 1000.0) as u64 % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// Named as tests/hastmon.rs names the same faults.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// kill -9 of the primary host's hastd and hastmon.
    KillPrimary,
    /// The primary cut from every other host (the client's hastcd too).
    IsolatePrimary,
    /// SIGSTOP of the primary's hastd and hastmon until the other node has
    /// taken over (past the lease: a takeover needs it expired).
    PausePrimary,
}

const KINDS: [Fault; 3] = [
    Fault::KillPrimary,
    Fault::IsolatePrimary,
    Fault::PausePrimary,
];

/// How the client reaches the storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// hastcd's Unix endpoint.
    Connector,
    /// The primary's own NBD address (from host `c`'s network namespace).
    Direct,
}

/// The fsync writer's log: completions (t_start, t_end), live files
/// (relpath -> sha256), errors.
#[derive(Debug, Default)]
struct FsLog {
    done: Vec<(f64, f64)>,
    live: BTreeMap<String, String>,
    errors: Vec<String>,
}

fn read_fs_log(path: &Path) -> FsLog {
    let mut l = FsLog::default();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok());
        match f.first() {
            Some(&"ok") if f.len() >= 6 => {
                if let (Some(a), Some(b)) = (t(1), t(2)) {
                    l.done.push((a, b));
                }
                l.live.insert(f[3].to_owned(), f[5].to_owned());
            }
            Some(&"rm") if f.len() >= 4 => {
                if let (Some(a), Some(b)) = (t(1), t(2)) {
                    l.done.push((a, b));
                }
                l.live.remove(f[3]);
            }
            Some(&"error") => l.errors.push(line.to_owned()),
            _ => {}
        }
    }
    l
}

/// Lines of follow_writer's history that a client of the connector must
/// never see: a failed write, a lost connection.
fn follow_trouble(history: &Path) -> Vec<String> {
    std::fs::read_to_string(history)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("fail ") || l.starts_with("disconnect "))
        .map(str::to_owned)
        .collect()
}

/// The longest time without a completion that overlaps `[from, to]`.
fn longest_gap(done: &[(f64, f64)], from: f64, to: f64) -> f64 {
    let mut t: Vec<f64> = done.iter().map(|d| d.1).collect();
    t.sort_by(f64::total_cmp);
    let mut prev = t.iter().copied().rfind(|x| *x <= from).unwrap_or(from);
    let mut best: f64 = 0.0;
    for &x in t.iter().filter(|x| **x > from) {
        best = best.max(x - prev);
        prev = x;
        if x > to {
            return best;
        }
    }
    best.max(to - prev)
}

/// Median, p99 and max (sorts `t`).
fn stats(t: &mut [f64]) -> Option<(f64, f64, f64)> {
    t.sort_by(f64::total_cmp);
    let last = *t.last()?;
    let pct = |q: f64| t[((t.len() as f64 - 1.0) * q).ceil() as usize];
    Some((pct(0.5), pct(0.99), last))
}

/// The client host's workload: ext4 with the fsync writer, and the
/// versioned-block writer, on one URI. Field order is drop order: writers
/// first, then the filesystem and nbdfuse.
struct Client {
    fs_writer: Option<Proc>,
    follow: Option<NsProc>,
    ext4: Ext4Client,
    dir: PathBuf,
    /// Where nbdfuse runs (`Via::Direct`: host `c`'s network namespace).
    netns: Option<PathBuf>,
    fs_log: PathBuf,
    history: PathBuf,
    stop: PathBuf,
}

impl Client {
    fn start(c: &HaCluster, via: Via, uri: &str) -> Client {
        let dir = c.dir().join("client");
        std::fs::create_dir_all(&dir).expect("client dir");
        let netns = (via == Via::Direct).then(|| netns_path(c, CLIENT));
        let ext4 = Ext4Client::mount(&dir, uri, netns.as_deref(), FS_SIZE, true);
        let fs_log = dir.join("fs-writer.log");
        let history = dir.join("follow-history.txt");
        let stop = dir.join("stop");
        let mut cl = Client {
            fs_writer: None,
            follow: None,
            ext4,
            dir,
            netns,
            fs_log,
            history,
            stop,
        };
        let mnt = cl.ext4.mountpoint().display().to_string();
        let log = cl.fs_log.display().to_string();
        let stop = cl.stop.display().to_string();
        let mut cmd = python_command(
            "fsync_writer.py",
            &[
                "--dir",
                &mnt,
                "--log",
                &log,
                "--stop-file",
                &stop,
                "--duration",
                "900",
                "--seed",
                "12",
            ],
        );
        cl.fs_writer = Some(
            Proc::spawn(
                &mut cmd,
                "fsync_writer",
                Some(&cl.dir.join("fs-writer.out")),
            )
            .expect("spawn fsync_writer"),
        );
        // Through the connector a lost connection or a failed write is a
        // broken promise, so follow_writer must not give up on its own:
        // its request timeout and reconnect bound are far beyond a failover.
        let mut cmd = c.net.command(CLIENT, PYTHON);
        cmd.arg(py_script("follow_writer.py"))
            .args(["--uri", uri, "--history"])
            .arg(&cl.history)
            .arg("--stop-file")
            .arg(&cl.stop)
            .args(["--ack-is-durable", "--duration", "900", "--inflight", "4"])
            .args(["--request-timeout", "120", "--reconnect-timeout"])
            .arg(if via == Via::Direct { "5" } else { "120" })
            .args(["--first-lba", &VB_FIRST_LBA.to_string()])
            .args(["--blocks", &VB_BLOCKS.to_string(), "--seed", "7"]);
        cl.follow = Some(
            NsProc::spawn(&mut cmd, "follow_writer", &cl.dir.join("follow.out"))
                .expect("spawn follow_writer"),
        );
        cl
    }

    fn fs(&self) -> FsLog {
        read_fs_log(&self.fs_log)
    }

    /// Waits until the fsync writer completes `n` more operations ending
    /// after `after` (bounded); false if it did not.
    fn wait_done_after(&self, after: f64, n: usize, bound: Duration) -> bool {
        wait_for(bound, || {
            let k = self.fs().done.iter().filter(|d| d.1 > after).count();
            if k < n {
                std::thread::sleep(Duration::from_millis(100));
            }
            (k >= n).then_some(())
        })
        .is_some()
    }

    /// `sha256sum -c` of every live file (an outside tool reads them);
    /// the failures, or `Err` with its complaint.
    fn verify_files(&self, root: &Path, tag: &str) -> Result<usize, String> {
        let live = self.fs().live;
        if live.is_empty() {
            return Ok(0);
        }
        let manifest = self.dir.join(format!("manifest-{tag}.txt"));
        let text: String = live
            .iter()
            .map(|(rel, sum)| format!("{sum}  {rel}\n"))
            .collect();
        std::fs::write(&manifest, text).expect("manifest");
        let out = run(
            Command::new("sha256sum")
                .args(["--quiet", "--strict", "-c"])
                .arg(&manifest)
                .current_dir(root),
            timeout_s(120),
        );
        if out.status.success() {
            return Ok(live.len());
        }
        // The writer goes on meanwhile and unlinks its oldest files: a file
        // that cannot be opened because it was removed since is fine; a
        // wrong checksum, or a live file missing, is not.
        let now = self.fs().live;
        let text = String::from_utf8_lossy(&out.stdout);
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| match l.strip_suffix(": FAILED open or read") {
                Some(rel) => now.contains_key(rel),
                None => !l.trim().is_empty(),
            })
            .collect();
        if bad.is_empty() {
            return Ok(live.len());
        }
        let mut t = format!("{bad:?}\n{}", output_text(&out));
        t.truncate(3000);
        Err(format!("{} live files, sha256sum -c: {t}", live.len()))
    }

    /// Stops both writers (bounded); their summaries, and a complaint if one
    /// failed.
    fn stop_writers(&mut self) -> Vec<String> {
        std::fs::write(&self.stop, b"").expect("stop file");
        let mut bad = vec![];
        if let Some(mut p) = self.fs_writer.take() {
            match p.wait_timeout(timeout_s(60)) {
                Some(st) if st.success() => {}
                st => bad.push(format!(
                    "fsync_writer ended {st:?}: {}",
                    tail(&self.dir.join("fs-writer.out"), 5)
                )),
            }
        }
        if let Some(mut p) = self.follow.take() {
            match p.wait_timeout(timeout_s(90)) {
                Some(st) if st.success() => {
                    println!("follow_writer: {}", p.tail(1).trim());
                }
                st => bad.push(format!("follow_writer ended {st:?}: {}", p.tail(5))),
            }
        }
        bad
    }

    /// Whether the writers are still running (a dead one is a violation).
    fn writers_running(&mut self) -> Vec<String> {
        let mut dead = vec![];
        if let Some(p) = self.fs_writer.as_mut() {
            if !p.is_running() {
                dead.push(format!(
                    "fsync_writer exited: {}",
                    tail(&self.dir.join("fs-writer.out"), 3)
                ));
            }
        }
        if let Some(p) = self.follow.as_mut() {
            if !p.is_running() {
                dead.push(format!("follow_writer exited: {}", p.tail(3)));
            }
        }
        dead
    }
}

/// What one trial saw.
#[derive(Debug)]
struct Trial {
    label: String,
    kind: Fault,
    pause_s: f64,
    violations: Vec<String>,
}

fn apply(c: &mut HaCluster, f: Fault, p: &str) {
    match f {
        Fault::KillPrimary => c.kill9(p),
        Fault::IsolatePrimary => c.net.isolate(p),
        Fault::PausePrimary => c.pause(p),
    }
}

fn heal(c: &mut HaCluster, f: Fault, p: &str) {
    match f {
        Fault::KillPrimary => c.restart(p),
        Fault::IsolatePrimary => c.net.heal_all(),
        Fault::PausePrimary => c.resume(p),
    }
}

/// One fault under the writers, healed; the checks of the promise.
fn trial(
    c: &mut HaCluster,
    cl: &mut Client,
    hastcd: Option<&Hastcd>,
    fault: Fault,
    label: &str,
) -> Trial {
    let p = c.wait_in_sync(timeout_s(120));
    let s = other(p);
    let mut v = vec![];
    // Writes flowing before the fault.
    if !cl.wait_done_after(wall(), 20, timeout_s(60)) {
        v.push(format!("{label}: no I/O before the fault"));
    }
    let errors_before = cl.fs().errors.len();
    let trouble_before = follow_trouble(&cl.history).len();
    let wall0 = wall();
    let t0 = Instant::now();
    apply(c, fault, p);
    let took = c.wait_takeover(p, t0, timeout_s(30));
    let takeover = match took {
        Some((_, d)) => format!("{:.2} s", d.as_secs_f64()),
        None => {
            v.push(format!("{label}: {s} did not take over within 30 s"));
            "none".into()
        }
    };
    // I/O back: operations completed after the new primary was seen
    // exporting (for a frozen or cut-off primary nothing else can answer).
    let resumed = cl.wait_done_after(wall(), 5, timeout_s(RESUME_BOUND_S));
    if !resumed {
        v.push(format!(
            "{label}: the filesystem's I/O did not resume within {RESUME_BOUND_S} s"
        ));
    }
    std::thread::sleep(Duration::from_millis(500));
    let wall_heal = wall();
    heal(c, fault, p);
    let fs = cl.fs();
    let pause = longest_gap(&fs.done, wall0, wall_heal);
    let longest_op = fs
        .done
        .iter()
        .filter(|d| d.1 > wall0)
        .map(|d| d.1 - d.0)
        .fold(0.0, f64::max);
    // The first few of each, and how many (an ext4 gone read-only fails
    // every operation after the first error).
    let errors = &fs.errors[errors_before..];
    for e in errors.iter().take(SHOWN) {
        v.push(format!("{label}: fsync_writer: {e}"));
    }
    if errors.len() > SHOWN {
        v.push(format!(
            "{label}: fsync_writer: {} errors in all",
            errors.len()
        ));
    }
    let trouble = &follow_trouble(&cl.history)[trouble_before..];
    for t in trouble.iter().take(SHOWN) {
        v.push(format!("{label}: follow_writer: {t}"));
    }
    if trouble.len() > SHOWN {
        v.push(format!(
            "{label}: follow_writer: {} failures or disconnections in all",
            trouble.len()
        ));
    }
    v.extend(cl.writers_running());
    if !cl.ext4.is_rw() {
        v.push(format!(
            "{label}: ext4 is no longer mounted read-write: {:?}",
            cl.ext4.mount_entry()
        ));
    }
    if let Err(e) = cl.ext4.write_probe() {
        v.push(format!("{label}: ext4 refuses writes: {e}"));
    }
    match cl.ext4.errors_count() {
        Some(0) => {}
        n => v.push(format!("{label}: ext4 errors_count {n:?}")),
    }
    let tag: String = label
        .chars()
        .map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '-' })
        .collect();
    let files = cl.verify_files(cl.ext4.mountpoint(), &tag);
    match &files {
        Ok(_) => {}
        Err(e) => v.push(format!("{label}: fsynced files damaged: {e}")),
    }
    let hastcd_pause = hastcd
        .and_then(|h| h.endpoint(RES))
        .map(|e| format!("{} ms", e["last_pause_ms"]))
        .unwrap_or_else(|| "-".into());
    println!(
        "{label}: fault at {} UTC, {p} -> {s}, takeover {takeover}, I/O pause {pause:.2} s (longest file operation {longest_op:.2} s), hastcd last_pause {hastcd_pause}, {} files verified, {} violations",
        time_of_day(wall0),
        files.unwrap_or(0),
        v.len()
    );
    Trial {
        label: label.to_owned(),
        kind: fault,
        pause_s: pause,
        violations: v,
    }
}

/// The promise's run: `trials` faults cycling through `kinds` under the
/// client on `via`; stops after the first trial with violations. Returns
/// the trials and every violation (also those of the final checks).
fn promise(via: Via, trials: usize, kinds: &[Fault]) -> Option<(Vec<Trial>, Vec<String>)> {
    let conn = conn_bins();
    let (_one, mut c) = cluster(HaOptions {
        discovery: via == Via::Connector,
        ..HaOptions::default()
    })?;
    let hastcd = match via {
        Via::Connector => {
            let h = Hastcd::start(&c, &conn, &HastcdConf::for_cluster(&c));
            let size = h.wait_endpoint(RES, timeout_s(30));
            assert!(
                size.is_some(),
                "hastcd's endpoint for {RES} never answered\n{}{}",
                h.describe(),
                c.describe()
            );
            Some(h)
        }
        Via::Direct => None,
    };
    let uri = match &hastcd {
        Some(h) => h.uri(RES),
        None => c.uri("a"),
    };
    println!("promise via {via:?}: client on {uri}");
    let mut cl = Client::start(&c, via, &uri);
    let mut done = vec![];
    let mut all = vec![];
    for i in 0..trials {
        let f = kinds[i % kinds.len()];
        let t = trial(
            &mut c,
            &mut cl,
            hastcd.as_ref(),
            f,
            &format!("trial {i} {f:?}"),
        );
        let bad = !t.violations.is_empty();
        all.extend(t.violations.iter().cloned());
        done.push(t);
        if bad {
            break;
        }
    }
    all.extend(cl.stop_writers());
    let files = cl.fs().live.len();
    if trials > 0 && files == 0 {
        all.push("the fsync writer made no file".into());
    }
    if !all.is_empty() {
        return Some((done, all));
    }
    // After the trials: fsck of the unmounted filesystem, then every file
    // read again through a fresh nbdfuse (nothing cached).
    cl.ext4.unmount_fs();
    let out = hast_testkit::tools::fsck_ext4(&cl.ext4.image());
    println!("fsck.ext4 -n -f: exit {}", out.status);
    if !out.status.success() {
        all.push(format!("fsck.ext4 -n -f:\n{}", output_text(&out)));
    }
    if let Some(st) = cl.ext4.unmount_all() {
        if !st.success() {
            all.push(format!("nbdfuse exited {st}"));
        }
    }
    {
        let again = Ext4Client::mount(
            &cl.dir.join("again"),
            &uri,
            cl.netns.as_deref(),
            FS_SIZE,
            false,
        );
        match cl.verify_files(again.mountpoint(), "final") {
            Ok(n) => println!("{n} fsynced files intact after remounting"),
            Err(e) => all.push(format!("after remounting: {e}")),
        }
    }
    // The versioned blocks through the connector: nothing acknowledged lost.
    c.wait_in_sync(timeout_s(120));
    let mut cmd = c.net.command(CLIENT, PYTHON);
    cmd.arg(py_script("cluster_check.py"))
        .args(["--uri", &uri, "--history"])
        .arg(&cl.history);
    for d in DATA {
        cmd.arg("--hastd-log")
            .arg(format!("{d}={}", c.hastd_log(d).display()));
    }
    let out = run(&mut cmd, timeout_s(300));
    let summary = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    println!("cluster_check through the connector: {summary}");
    if !out.status.success() {
        all.push(format!("cluster_check:\n{}", output_text(&out)));
    }
    let same = wait_for(timeout_s(30), || {
        let r = c.copies_identical();
        if r.is_err() {
            std::thread::sleep(Duration::from_millis(300));
        }
        r.ok()
    });
    if same.is_none() {
        all.push(format!("copies differ: {:?}", c.copies_identical()));
    }
    if let Some(h) = &hastcd {
        if let Some(e) = h.endpoint(RES) {
            println!("hastcd: {e}");
        }
    }
    Some((done, all))
}

#[test]
fn the_promise_ext4_never_notices_a_failover() {
    let trials: usize = env_parse("HAST_CONN_TRIALS").unwrap_or(10);
    let started = Instant::now();
    let Some((done, violations)) = promise(Via::Connector, trials, &KINDS) else {
        return;
    };
    assert!(
        violations.is_empty(),
        "the promise is broken:\n{}",
        violations.join("\n")
    );
    assert_eq!(done.len(), trials);
    let mut pauses: Vec<f64> = done.iter().map(|t| t.pause_s).collect();
    let (med, p99, max) = stats(&mut pauses).expect("trials");
    println!("| fault | pause (s) |\n|---|---:|");
    for t in &done {
        println!("| {} | {:.2} |", t.label, t.pause_s);
    }
    println!("| fault kind | trials | median | p99 | max |\n|---|---:|---:|---:|---:|");
    for k in KINDS {
        let mut p: Vec<f64> = done
            .iter()
            .filter(|t| t.kind == k)
            .map(|t| t.pause_s)
            .collect();
        if let Some((a, b, c)) = stats(&mut p) {
            println!("| {k:?} | {} | {a:.2} s | {b:.2} s | {c:.2} s |", p.len());
        }
    }
    println!(
        "I/O pause over {trials} failovers: median {med:.2} s, p99 {p99:.2} s, max {max:.2} s ({:.0} s in all)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        p99 <= PAUSE_P99_MAX_S,
        "p99 of the pause {p99:.2} s > {PAUSE_P99_MAX_S} s"
    );
}

#[test]
#[ignore = "control experiment, run by bench/connector.sh control: the promise must break without the connector"]
fn control_straight_to_the_primary() {
    let Some((done, violations)) = promise(Via::Direct, 1, &[Fault::KillPrimary]) else {
        return;
    };
    println!(
        "straight to the primary: {} trial(s), {} violations:",
        done.len(),
        violations.len()
    );
    for v in &violations {
        println!("  {v}");
    }
    assert!(
        !violations.is_empty(),
        "a client connected straight to the primary saw nothing wrong across a failover: the checks cannot fail"
    );
}

// ---- the connector's other behaviours ---------------------------------------

/// `tests/py/endpoint_io.py` on a URI: a block written (FUA) and read back
/// every 100 ms on one connection, each outcome logged.
struct Probe {
    proc: Option<Proc>,
    log: PathBuf,
    stop: PathBuf,
    out: PathBuf,
}

/// One line of the probe's log: kind, start time, end time, the rest.
#[derive(Debug, Clone)]
struct ProbeLine {
    kind: String,
    t0: f64,
    t1: f64,
    rest: String,
}

impl Probe {
    fn start(dir: &Path, uri: &str, name: &str) -> Probe {
        let log = dir.join(format!("probe-{name}.log"));
        let stop = dir.join(format!("probe-{name}.stop"));
        let out = dir.join(format!("probe-{name}.out"));
        let (l, s) = (log.display().to_string(), stop.display().to_string());
        let mut cmd = python_command(
            "endpoint_io.py",
            &[
                "--uri",
                uri,
                "--log",
                &l,
                "--stop-file",
                &s,
                "--duration",
                "600",
            ],
        );
        let proc = Proc::spawn(&mut cmd, &format!("probe-{name}"), Some(&out)).expect("probe");
        Probe {
            proc: Some(proc),
            log,
            stop,
            out,
        }
    }

    fn lines(&self) -> Vec<ProbeLine> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let kind = f.next()?.to_owned();
                let t0: f64 = f.next()?.parse().ok()?;
                let rest: Vec<&str> = f.collect();
                let t1 = match kind.as_str() {
                    "ok" | "err" => rest.first().and_then(|x| x.parse().ok()).unwrap_or(t0),
                    _ => t0,
                };
                Some(ProbeLine {
                    kind,
                    t0,
                    t1,
                    rest: rest.join(" "),
                })
            })
            .collect()
    }

    /// Lines of `kind` that started after `t`.
    fn after(&self, kind: &str, t: f64) -> Vec<ProbeLine> {
        self.lines()
            .into_iter()
            .filter(|l| l.kind == kind && l.t0 > t)
            .collect()
    }

    /// Waits (bounded) for `n` successful rounds started after `t`.
    fn wait_ok_after(&self, t: f64, n: usize, bound: Duration) -> bool {
        wait_for(bound, || {
            let k = self.after("ok", t).len();
            if k < n {
                std::thread::sleep(Duration::from_millis(100));
            }
            (k >= n).then_some(())
        })
        .is_some()
    }

    /// Stops it (bounded); its JSON summary.
    fn stop(&mut self) -> serde_json::Value {
        std::fs::write(&self.stop, b"").expect("probe stop");
        if let Some(mut p) = self.proc.take() {
            let st = p.wait_timeout(timeout_s(60));
            assert!(
                st.is_some_and(|s| s.success()),
                "endpoint_io.py ended {st:?}: {}",
                tail(&self.out, 10)
            );
        }
        let last = tail(&self.out, 1);
        serde_json::from_str(last.trim()).unwrap_or_default()
    }
}

#[test]
fn ctrl_loss_tmo_gives_eio_then_io_works_again() {
    let conn = conn_bins();
    let Some((_one, mut c)) = cluster(HaOptions {
        discovery: true,
        hastd_only: true,
        ..HaOptions::default()
    }) else {
        return;
    };
    let tmo = 4.0;
    let mut conf = HastcdConf::for_cluster(&c);
    conf.ctrl_loss_tmo = tmo;
    let h = Hastcd::start(&c, &conn, &conf);
    let pid = h.pid();
    assert!(
        h.wait_endpoint(RES, timeout_s(30)).is_some(),
        "no endpoint\n{}",
        h.describe()
    );
    let mut probe = Probe::start(c.dir(), &h.uri(RES), "tmo");
    assert!(
        probe.wait_ok_after(0.0, 10, timeout_s(30)),
        "no I/O through the endpoint: {}\n{}",
        tail(&probe.log, 10),
        h.describe()
    );
    // No hastd anywhere: no primary to find.
    let t_stop = wall();
    for n in DATA {
        c.kill9_hastd(n);
    }
    let first = wait_for(Duration::from_secs_f64(tmo + 20.0), || {
        let e = probe.after("err", t_stop);
        if e.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
        e.first().cloned()
    });
    let Some(first) = first else {
        panic!(
            "no error {} s after both hastd were killed (ctrl_loss_tmo {tmo}): {}\n{}",
            tmo + 20.0,
            tail(&probe.log, 10),
            h.describe()
        );
    };
    let waited = first.t1 - t_stop;
    assert_eq!(
        first.rest.split_whitespace().nth(1),
        Some("EIO"),
        "{first:?}"
    );
    assert!(
        waited >= tmo - 0.5 && waited <= tmo + 5.0,
        "the first EIO came {waited:.2} s after the loss, ctrl_loss_tmo is {tmo} s"
    );
    assert!(
        probe.after("ok", t_stop + 0.5).is_empty(),
        "I/O succeeded with no hastd running: {}",
        tail(&probe.log, 20)
    );
    // Lost: new requests fail at once.
    let fast = wait_for(timeout_s(10), || {
        let e: Vec<ProbeLine> = probe.after("err", first.t1);
        if e.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
        e.first().cloned()
    })
    .expect("no second request failed");
    let state = h.endpoint(RES).map(|e| e["state"].clone());
    println!(
        "no primary: first EIO after {waited:.2} s (ctrl_loss_tmo {tmo} s), the next request failed in {:.0} ms, state {state:?}",
        (fast.t1 - fast.t0) * 1000.0
    );
    assert!(
        fast.t1 - fast.t0 < 1.0,
        "a request after ctrl_loss_tmo took {:.2} s to fail",
        fast.t1 - fast.t0
    );
    assert_eq!(state, Some(serde_json::json!("lost")), "{}", h.describe());
    // A primary again: I/O works without restarting hastcd.
    for n in DATA {
        c.start_hastd(n);
    }
    c.hastctl_ok("a", &["role", "primary", RES]);
    c.hastctl_ok("b", &["role", "secondary", RES]);
    let t_back = wall();
    assert!(
        probe.wait_ok_after(t_back, 5, timeout_s(30)),
        "no I/O within 30 s of a primary being back: {}\n{}",
        tail(&probe.log, 20),
        h.describe()
    );
    let back = probe.after("ok", t_back)[0].t1 - t_back;
    let mut h = h;
    assert!(h.is_running() && h.pid() == pid, "hastcd restarted");
    let summary = probe.stop();
    println!(
        "primary back: I/O again {back:.2} s later, same hastcd (pid {pid:?}); probe {summary}"
    );
    let st = h.endpoint(RES).expect("status");
    assert_eq!(st["state"], "connected", "{st}");
    assert!(st["failed"].as_u64().unwrap_or(0) >= 1, "{st}");
}

/// The keys of `hastcctl ls --json` entries.
const LS_KEYS: [&str; 5] = ["resource", "uris", "state", "primary", "epoch"];
/// The keys of `hastcctl status --json` entries (EndpointStatus).
const STATUS_KEYS: [&str; 15] = [
    "resource",
    "uris",
    "state",
    "primary",
    "nbd",
    "epoch",
    "epoch_seen",
    "size",
    "clients",
    "failovers",
    "pending",
    "held",
    "replayed",
    "failed",
    "last_pause_ms",
];

fn keys(v: &serde_json::Value) -> std::collections::BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// `hastcctl ARGS` must succeed; its stdout.
fn cctl_ok(h: &Hastcd, args: &[&str]) -> String {
    let out = h
        .hastcctl(args)
        .unwrap_or_else(|| panic!("hastcctl {args:?} did not answer within 10 s"));
    assert!(
        out.status.success(),
        "hastcctl {args:?}: {}\n{}",
        output_text(&out),
        h.describe()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cctl_json(h: &Hastcd, args: &[&str]) -> serde_json::Value {
    let text = cctl_ok(h, args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("hastcctl {args:?}: {e}: {text}"))
}

/// `hastcctl ls --json` and `status --json` against the contract, with `r0`
/// connected to `a`.
fn check_json_shapes(c: &HaCluster, h: &Hastcd) {
    let ls = cctl_json(h, &["ls", "--json"]);
    let arr = ls.as_array().expect("ls --json: an array");
    assert_eq!(arr.len(), 1, "ls --json: {ls}");
    let e = &arr[0];
    let want: std::collections::BTreeSet<String> = LS_KEYS.iter().map(|k| k.to_string()).collect();
    assert_eq!(keys(e), want, "ls --json keys: {e}");
    assert_eq!(e["resource"], RES);
    assert!(
        e["uris"]
            .as_array()
            .is_some_and(|u| u.iter().any(|u| u == &serde_json::json!(h.uri(RES)))),
        "ls --json: no {} in uris: {e}",
        h.uri(RES)
    );
    assert_eq!(e["state"], "connected", "{e}");
    let primary = format!(
        "{}:{}",
        c.net.addr("a"),
        hast_testkit::hacluster::DISCOVERY_PORT
    );
    assert_eq!(e["primary"], serde_json::json!(primary), "{e}");
    assert!(e["epoch"].as_u64().is_some_and(|n| n > 0), "{e}");

    let st = cctl_json(h, &["status", "--json"]);
    let arr = st.as_array().expect("status --json: an array");
    assert_eq!(arr.len(), 1, "status --json: {st}");
    let e = &arr[0];
    let want: std::collections::BTreeSet<String> =
        STATUS_KEYS.iter().map(|k| k.to_string()).collect();
    assert_eq!(keys(e), want, "status --json keys: {e}");
    assert_eq!(e["resource"], RES);
    assert_eq!(e["state"], "connected");
    assert_eq!(e["primary"], serde_json::json!(primary), "{e}");
    assert!(
        e["nbd"]
            .as_str()
            .is_some_and(|n| n.contains(&c.net.addr("a").to_string())),
        "status nbd: {e}"
    );
    let num = |k: &str| {
        e[k].as_u64()
            .unwrap_or_else(|| panic!("status --json: {k} is not a number: {e}"))
    };
    assert!(num("epoch") > 0 && num("epoch_seen") >= num("epoch"), "{e}");
    assert!(num("size") > FS_SIZE, "{e}");
    assert!(num("clients") >= 1, "a probe is connected: {e}");
    for k in ["failovers", "pending", "held", "replayed", "failed"] {
        num(k);
    }
    assert!(
        e["last_pause_ms"].is_null() || e["last_pause_ms"].is_u64(),
        "{e}"
    );
    // One resource's status, as JSON and as text; an unknown one fails.
    let one = cctl_json(h, &["status", RES, "--json"]);
    assert!(
        one.as_array().is_some_and(|a| a.len() == 1) && one[0]["resource"] == RES,
        "status {RES} --json: {one}"
    );
    let text = cctl_ok(h, &["status", RES]);
    assert!(text.contains(RES), "status {RES}: {text}");
    let out = h.hastcctl(&["status", "nosuch"]).expect("hastcctl answers");
    assert!(
        !out.status.success(),
        "status nosuch: {}",
        output_text(&out)
    );
    let text = cctl_ok(h, &["ls"]);
    assert!(text.contains(RES), "ls: {text}");
}

#[test]
fn reload_entries_and_hastcctl() {
    let conn = conn_bins();
    let Some((_one, c)) = cluster(HaOptions {
        discovery: true,
        hastd_only: true,
        ..HaOptions::default()
    }) else {
        return;
    };
    let conf = HastcdConf::for_cluster(&c);
    let mut h = Hastcd::start(&c, &conn, &conf);
    assert!(
        h.wait_endpoint(RES, timeout_s(30)).is_some(),
        "no endpoint\n{}",
        h.describe()
    );
    let mut probe = Probe::start(c.dir(), &h.uri(RES), "reload");
    assert!(
        probe.wait_ok_after(0.0, 10, timeout_s(30)),
        "{}",
        tail(&probe.log, 10)
    );

    // hastcctl against the running daemon.
    check_json_shapes(&c, &h);
    cctl_ok(&h, &["tron"]);
    cctl_ok(&h, &["troff"]);
    println!("hastcctl ls/status --json shapes as documented; tron, troff");

    // SIGHUP with new timings, then with a broken file: the client's
    // connection stays and its I/O goes on, hastcd keeps its PID.
    let pid = h.pid();
    let t0 = wall();
    let mut changed = conf.clone();
    changed.poll_interval = 1.0;
    changed.request_timeout = 3.0;
    changed.ctrl_loss_tmo = 30.0;
    h.write_conf(&changed);
    h.reload();
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(h.conf(), "[Global]\nctrl_loss_tmo = banana\n").expect("bad conf");
    h.reload();
    std::thread::sleep(Duration::from_secs(2));
    h.write_conf(&changed);
    h.reload();
    assert!(
        probe.wait_ok_after(wall(), 10, timeout_s(30)),
        "{}",
        tail(&probe.log, 10)
    );
    for kind in ["err", "lost", "connect", "mismatch"] {
        let bad = probe.after(kind, t0);
        assert!(
            bad.is_empty(),
            "across the reloads the client saw {kind}: {bad:?}\n{}",
            h.describe()
        );
    }
    assert!(h.is_running() && h.pid() == pid, "hastcd restarted");
    let e = h.endpoint(RES).expect("status");
    assert_eq!(e["state"], "connected", "{e}");
    assert!(e["clients"].as_u64() >= Some(1), "{e}");
    let log = std::fs::read_to_string(h.log()).unwrap_or_default();
    println!(
        "SIGHUP x3 (one with a bad file): same connection, {} rounds since, hastcd pid {pid:?}; log mentions the bad file: {}",
        probe.after("ok", t0).len(),
        log.contains("banana") || log.contains(":2:")
    );

    // disconnect drops the endpoint's clients; connect brings it back.
    let t1 = wall();
    cctl_ok(&h, &["disconnect", RES]);
    let dropped = wait_for(timeout_s(10), || {
        let l = probe.after("lost", t1).len() + probe.after("err", t1).len();
        if l == 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
        (l > 0).then_some(())
    });
    assert!(
        dropped.is_some(),
        "hastcctl disconnect {RES}: the client kept working: {}",
        tail(&probe.log, 10)
    );
    let out = h.hastcctl(&["connect", RES]).expect("hastcctl answers");
    let text = output_text(&out);
    assert!(
        out.status.success() || text.contains("already"),
        "hastcctl connect {RES}: {text}"
    );
    assert!(
        probe.wait_ok_after(wall(), 5, timeout_s(30)),
        "no I/O after hastcctl connect: {}\n{}",
        tail(&probe.log, 10),
        h.describe()
    );
    println!("hastcctl disconnect/connect: the client was dropped, then served again");
    probe.stop();

    // exclude = resource=r0: found by discovery, not connected.
    let mut ex = conf.clone();
    ex.excludes = vec![RES.into()];
    h.write_conf(&ex);
    h.restart(&c);
    std::thread::sleep(Duration::from_secs(3));
    let ls = cctl_json(&h, &["ls", "--json"]);
    assert_eq!(
        ls,
        serde_json::json!([]),
        "exclude = resource={RES}: ls --json"
    );
    assert!(
        !h.socket(RES).exists(),
        "exclude = resource={RES}: {} exists",
        h.socket(RES).display()
    );
    println!("exclude: {RES} found but not connected (6 polls)");

    // A manual connection entry for a resource discovery cannot find (the
    // only controller polled is the witness, which runs no hastd).
    let mut manual = conf.clone();
    manual.controllers = vec![format!(
        "host={};port={}",
        c.net.addr(WITNESS_HOST),
        hast_testkit::hacluster::DISCOVERY_PORT
    )];
    manual.connections = vec![(
        RES.into(),
        DATA.iter()
            .map(|n| {
                format!(
                    "{}:{}",
                    c.net.addr(n),
                    hast_testkit::hacluster::DISCOVERY_PORT
                )
            })
            .collect(),
    )];
    h.write_conf(&manual);
    h.restart(&c);
    assert!(
        h.wait_endpoint(RES, timeout_s(30)).is_some(),
        "connection = resource={RES};controller=...: no endpoint\n{}",
        h.describe()
    );
    let mut probe = Probe::start(c.dir(), &h.uri(RES), "manual");
    assert!(
        probe.wait_ok_after(0.0, 5, timeout_s(30)),
        "{}",
        tail(&probe.log, 10)
    );
    probe.stop();
    let ls = cctl_json(&h, &["ls", "--json"]);
    assert_eq!(ls[0]["resource"], RES, "{ls}");
    println!("manual connection entry: {RES} served; ls {ls}");
}

const WITNESS_HOST: &str = hast_testkit::hacluster::WITNESS;

/// hastcd.conf errors: exit 78 (EX_CONFIG) and one line on stderr naming
/// the file and the line.
#[test]
fn bad_config_names_file_and_line() {
    let conn = conn_bins();
    let dir = hast_testkit::TempDir::new("hastcd-conf");
    let cases: [(&str, &str, usize); 7] = [
        (
            "bad number",
            "[Global]\nctrl_loss_tmo = 60\npoll_interval = soon\n",
            3,
        ),
        ("unknown key", "[Global]\n# a comment\nfrobnicate = 1\n", 3),
        ("no =", "[Global]\n; comment\n\nsocket_dir\n", 4),
        (
            "controller without host",
            "[Global]\n[Controllers]\ncontroller = port=8459\n",
            3,
        ),
        ("bad dbus", "[Global]\ndbus = maybe\n", 2),
        (
            "connection without resource",
            "[Controllers]\nconnection = controller=10.0.0.1:8459\n",
            2,
        ),
        ("bad socket_mode", "[Global]\nsocket_mode = rw\n", 2),
    ];
    for (i, (what, text, line)) in cases.iter().enumerate() {
        let f = dir.join(format!("bad{i}.conf"));
        std::fs::write(&f, text).expect("write conf");
        let out = hastcd_once(&conn, &["-f", f.to_str().expect("utf-8 path")]);
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        let want = format!("{}:{line}:", f.display());
        assert_eq!(
            out.status.code(),
            Some(78),
            "{what}: exit {:?}\n{}",
            out.status,
            output_text(&out)
        );
        assert!(
            lines.len() == 1 && lines[0].contains(&want),
            "{what}: want one line with {want:?}, got {lines:?}"
        );
        println!("{what}: {}", lines[0]);
    }
}
