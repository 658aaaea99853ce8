//! Automatic failover across network namespaces: two data nodes (hastd +
//! hastmon), a witness (hastmon) and a client, real binaries, real faults.
//!
//! Every scenario runs under a client that writes versioned blocks to
//! whichever node is primary (fullsync, so every acknowledged write must
//! survive), then heals, waits for the copies to be back in sync, and runs
//! the checker: no acknowledged write lost, no phantom or torn block, no
//! epoch with two primaries (from hastd's own role/epoch log lines), and the
//! two data areas byte-identical.
//!
//! Besides kills, pauses and partitions of hosts, the faults hit one part
//! of a host: the primary's hastd alone stopped (its hastmon runs on), the
//! primary's disk hung (the cluster's components are then files behind
//! nbdkit + nbdfuse, `HaOptions::fuse_disks`), fork failing for the
//! primary's hastmon (a full pids cgroup: root is exempt from
//! RLIMIT_NPROC), and the witness killed while it is granting a takeover.
//! The cut replication link is also timed from the client's history: its
//! writes resume within 5 s, and the watchdog's log shows the secondary
//! outdated before the first write acknowledged without it.
//!
//! `random_fault_schedules` draws faults from the same set with a seed:
//! `HAST_HA_SEED` replays one, `HAST_HA_FAULTS` sets how many (default 6).
//! `HAST_HA_ONLY=<part of a fault name>` narrows the scenario test.
//! `failover_time` (ignored; `bench/failover.sh` runs it) measures, for each
//! fault kind of `HAST_HA_KINDS` (comma-separated fault names; default every
//! kind that must take over, and the link cut), fault → first write
//! acknowledged by the new primary as the client sees it, over
//! `HAST_HA_TRIALS` trials (default 20), and prints a markdown table.
//!
//! `adoption_of_a_running_pair` puts a pair run by hastd alone, switched over
//! by hand a few times, under hastmon exactly as the README says, under a
//! client writing: no pause in the client's writes, no refused epoch, the
//! hand-set primary stays; then a kill -9 failover works.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use hast_testkit::cluster::NsProc;
use hast_testkit::hacluster::{other, HaBins, HaCluster, HaOptions, DATA, RES, WITNESS};
use hast_testkit::{output_text, require_python_nbd, tail, timeout_s, wait_for};
use rand::{Rng, SeedableRng};

fn bins() -> HaBins {
    HaBins {
        hastd: env!("CARGO_BIN_EXE_hastd").into(),
        hastctl: env!("CARGO_BIN_EXE_hastctl").into(),
        hastmon: env!("CARGO_BIN_EXE_hastmon").into(),
        hastmonctl: env!("CARGO_BIN_EXE_hastmonctl").into(),
    }
}

const SIZE: u64 = 256 << 20;

/// One cluster at a time: two clusters on two cores would starve each
/// other's heartbeats and measure the machine, not hastmon.
/// (The guard comes first so that it is dropped after the cluster.)
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cluster_with(opts: HaOptions) -> Option<(std::sync::MutexGuard<'static, ()>, HaCluster)> {
    if !require_python_nbd() {
        return None;
    }
    let guard = ONE_CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    HaCluster::start_with(bins(), SIZE, opts).map(|c| (guard, c))
}

/// The cluster the faults `fs` need (FUSE disks if one hangs a disk).
fn cluster_for(fs: &[Fault]) -> Option<(std::sync::MutexGuard<'static, ()>, HaCluster)> {
    cluster_with(HaOptions {
        fuse_disks: fs.iter().any(|f| f.needs_fuse_disks()),
        ..HaOptions::default()
    })
}

/// Now, in seconds since the epoch (the clock of the client's history and of
/// the daemons' log lines).
fn wall() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The time of a daemon log line (`2026-12-04T22:07:25.261511Z  INFO ...`,
/// tracing's UTC timestamp), in seconds since the epoch.
fn log_time(line: &str) -> Option<f64> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let ss = t.next()?.parse::<f64>().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hh * 3600.0 + mm * 60.0 + ss)
}

/// Lines of the log at `path` that contain `what` and were logged at or
/// after `since`, with their times.
fn log_lines_since(path: &Path, since: f64, what: &str) -> Vec<(f64, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| log_time(l).map(|t| (t, l.to_owned())))
        .filter(|(t, _)| *t >= since)
        .collect()
}

/// The client's acknowledgements: (time, uri) of every `ok` line, in order.
fn acks(history: &Path) -> Vec<(f64, String)> {
    std::fs::read_to_string(history)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "ok").then_some(())?;
            let t = w.next()?.parse().ok()?;
            Some((t, w.next()?.to_owned()))
        })
        .collect()
}

/// The longest time without an acknowledgement that overlaps `[from, to]`,
/// and when it ended (the ack that ended it; `to` if none came).
fn longest_gap(acks: &[(f64, String)], from: f64, to: f64) -> (f64, f64) {
    let mut t: Vec<f64> = acks.iter().map(|a| a.0).collect();
    t.sort_by(f64::total_cmp);
    let mut best = (0.0, from);
    let mut prev = t.iter().copied().rfind(|x| *x <= from).unwrap_or(from);
    for &x in t.iter().filter(|x| **x > from) {
        if x - prev > best.0 {
            best = (x - prev, x);
        }
        prev = x;
        if x > to {
            return best;
        }
    }
    if to - prev > best.0 {
        best = (to - prev, to);
    }
    best
}

/// The faults, each with what must follow (whether the secondary takes over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    KillPrimary,
    KillPrimaryHastd,
    KillSecondary,
    KillWitness,
    PausePrimary,
    PauseSecondary,
    IsolatePrimary,
    IsolateSecondary,
    IsolateWitness,
    CutPrimarySecondary,
    CutPrimaryWitness,
    OneWayPrimaryToSecondary,
    OneWaySecondaryToPrimary,
    OneWayPrimaryToWitness,
    OneWayWitnessToPrimary,
    /// SIGSTOP of hastd alone on the primary (its hastmon runs on).
    PausePrimaryHastd,
    /// The primary's disk hangs (nbdkit behind its nbdfuse component stopped).
    PrimaryDiskHang,
    /// fork(2) fails for the primary's hastmon (its pids cgroup is full).
    ForkFailPrimaryMon,
    /// kill -9 of the primary host, then of the witness 1.5 s later, while
    /// the takeover is under way; the witness comes back after the hold.
    WitnessKilledDuringTakeover,
}

const ALL: [Fault; 19] = [
    Fault::KillPrimary,
    Fault::KillPrimaryHastd,
    Fault::KillSecondary,
    Fault::KillWitness,
    Fault::PausePrimary,
    Fault::PauseSecondary,
    Fault::IsolatePrimary,
    Fault::IsolateSecondary,
    Fault::IsolateWitness,
    Fault::CutPrimarySecondary,
    Fault::CutPrimaryWitness,
    Fault::OneWayPrimaryToSecondary,
    Fault::OneWaySecondaryToPrimary,
    Fault::OneWayPrimaryToWitness,
    Fault::OneWayWitnessToPrimary,
    Fault::PausePrimaryHastd,
    Fault::PrimaryDiskHang,
    Fault::ForkFailPrimaryMon,
    Fault::WitnessKilledDuringTakeover,
];

/// The kinds `failover_time` measures by default: every fault that must
/// take over, and the link cut (its figure: writes resuming).
const MEASURED: [Fault; 6] = [
    Fault::KillPrimary,
    Fault::PausePrimary,
    Fault::IsolatePrimary,
    Fault::PausePrimaryHastd,
    Fault::PrimaryDiskHang,
    Fault::CutPrimarySecondary,
];

/// The longest pause of the client's writes a cut link may cause (the issue's
/// bound: the primary notices, fences its peer and writes on alone).
const CUT_RESUME_MAX_S: f64 = 5.0;

impl Fault {
    /// `Some(true)`: the secondary must take over; `Some(false)`: the primary
    /// must stay; `None`: either is correct (only safety is checked).
    fn takeover(self) -> Option<bool> {
        match self {
            Fault::KillPrimary | Fault::PausePrimary | Fault::IsolatePrimary => Some(true),
            Fault::KillPrimaryHastd | Fault::PausePrimaryHastd | Fault::PrimaryDiskHang => {
                Some(true)
            }
            Fault::ForkFailPrimaryMon => Some(false),
            Fault::KillSecondary
            | Fault::KillWitness
            | Fault::PauseSecondary
            | Fault::IsolateSecondary
            | Fault::IsolateWitness
            | Fault::CutPrimarySecondary
            | Fault::CutPrimaryWitness => Some(false),
            _ => None,
        }
    }

    fn needs_fuse_disks(self) -> bool {
        self == Fault::PrimaryDiskHang
    }

    fn parse(name: &str) -> Option<Fault> {
        ALL.into_iter().find(|f| format!("{f:?}") == name.trim())
    }
}

/// What one scenario measured.
#[derive(Debug, Clone, Default)]
struct Measure {
    /// Fault → first write acknowledged by the new primary (takeovers), or →
    /// the end of the longest pause of writes (no takeover), as the client
    /// saw it, in seconds.
    resume_s: Option<f64>,
    /// The longest time without an acknowledgement from the fault to healing.
    longest_gap_s: f64,
    /// Violations found by the checker: lost acknowledged writes, epochs with
    /// two primaries.
    lost: u64,
    split_brain: u64,
}

/// One scenario: writes, the fault for `hold`, healing, then the checks.
struct Run<'a> {
    c: &'a mut HaCluster,
    histories: Vec<PathBuf>,
    n: u64,
    /// Takeover times measured (kill → new primary exporting).
    takeovers: Vec<Duration>,
    /// As the client saw them: connection lost → first write acknowledged
    /// by the new primary (`after_loss_s` of follow_writer's outages).
    client_outages: Vec<f64>,
    /// Record the checker's violations instead of failing (the bench counts
    /// them per kind).
    lenient: bool,
}

fn count_acks(history: &std::path::Path) -> usize {
    std::fs::read_to_string(history)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("ok "))
        .count()
}

/// `NAME` from the environment parsed as a `T`; None when unset or unparsable
/// (the caller's default then applies).
fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

impl<'a> Run<'a> {
    /// A run on `c` with nothing recorded yet.
    fn new(c: &'a mut HaCluster) -> Run<'a> {
        Run {
            c,
            histories: vec![],
            n: 0,
            takeovers: vec![],
            client_outages: vec![],
            lenient: false,
        }
    }
}

impl Run<'_> {
    fn start_writer(&mut self) -> (NsProc, PathBuf, PathBuf) {
        self.n += 1;
        let history = self.c.dir().join(format!("history-{}.txt", self.n));
        let stop = self.c.dir().join(format!("stop-{}", self.n));
        let w = self
            .c
            .start_writer(&history, &stop, self.n, self.n * 100_000_000);
        self.histories.push(history.clone());
        (w, history, stop)
    }

    fn wait_acks(&self, history: &std::path::Path, more_than: usize, what: &str) {
        let ok = wait_for(timeout_s(60), || {
            let n = count_acks(history);
            if n <= more_than {
                std::thread::sleep(Duration::from_millis(100));
            }
            (n > more_than).then_some(n)
        });
        assert!(
            ok.is_some(),
            "{what}: the client got no acknowledgement within 60 s\n{}\n{}",
            tail(&history.with_extension("out"), 20),
            self.c.describe()
        );
    }

    fn scenario(&mut self, fault: Fault, hold: Duration, label: &str) -> Measure {
        let p = self.c.wait_in_sync(timeout_s(120));
        let s = other(p);
        let (mut writer, history, stop) = self.start_writer();
        self.wait_acks(&history, 200, label);
        let t0 = Instant::now();
        let wall0 = wall();
        match fault {
            Fault::KillPrimary => self.c.kill9(p),
            Fault::KillPrimaryHastd => self.c.kill9_hastd(p),
            Fault::KillSecondary => self.c.kill9(s),
            Fault::KillWitness => self.c.kill9(WITNESS),
            Fault::PausePrimary => self.c.pause(p),
            Fault::PauseSecondary => self.c.pause(s),
            Fault::IsolatePrimary => self.c.net.isolate(p),
            Fault::IsolateSecondary => self.c.net.isolate(s),
            Fault::IsolateWitness => self.c.net.isolate(WITNESS),
            Fault::CutPrimarySecondary => self.c.net.cut(p, s),
            Fault::CutPrimaryWitness => self.c.net.cut(p, WITNESS),
            Fault::OneWayPrimaryToSecondary => self.c.net.cut_oneway(p, s),
            Fault::OneWaySecondaryToPrimary => self.c.net.cut_oneway(s, p),
            Fault::OneWayPrimaryToWitness => self.c.net.cut_oneway(p, WITNESS),
            Fault::OneWayWitnessToPrimary => self.c.net.cut_oneway(WITNESS, p),
            Fault::PausePrimaryHastd => self.c.pause_hastd(p),
            Fault::PrimaryDiskHang => self.c.hang_disk(p),
            Fault::ForkFailPrimaryMon => match self.c.fork_fail_hastmon(p) {
                Ok(max) => println!(
                    "{label}: hastmon on {p} in a pids cgroup full at {max} tasks (a probe failed to fork in it)"
                ),
                Err(e) => {
                    hast_testkit::env::skip(&format!("{label}: cannot make fork fail: {e}"));
                }
            },
            Fault::WitnessKilledDuringTakeover => {
                self.c.kill9(p);
                std::thread::sleep(Duration::from_millis(1500));
                self.c.kill9(WITNESS);
            }
        }
        // After the fault is in place (a cut is in effect once its rule is).
        let wall_fault = wall();
        let acks_at_fault = count_acks(&history);
        let mut new_primary = None;
        match fault.takeover() {
            Some(true) => {
                let took = self.c.wait_takeover(p, t0, timeout_s(30));
                let (_, d) = took.unwrap_or_else(|| {
                    panic!("{label}: {s} did not take over\n{}", self.c.describe())
                });
                println!(
                    "{label}: {s} took over {:.2} s after the fault",
                    d.as_secs_f64()
                );
                self.takeovers.push(d);
                new_primary = Some(s);
                // The fault lasts until the client has left the old primary
                // (bounded): healing first would let a frozen primary answer
                // its held requests and shorten what a client of a host that
                // stays hung sees (its request timeout).
                let uri = self.c.uri(s);
                wait_for(timeout_s(30), || {
                    let moved = acks(&history).iter().any(|(t, u)| *t > wall0 && *u == uri);
                    if !moved {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    moved.then_some(())
                });
                std::thread::sleep(hold.saturating_sub(t0.elapsed()));
            }
            Some(false) => {
                std::thread::sleep(hold);
                let prim = self.c.primaries();
                assert!(
                    !prim.contains(&s),
                    "{label}: the secondary {s} took over although the primary was reachable\n{}",
                    self.c.describe()
                );
                // The client keeps being served through the fault.
                self.wait_acks(&history, acks_at_fault, label);
            }
            None => std::thread::sleep(hold),
        }
        let wall_heal = wall();
        // Heal.
        match fault {
            Fault::KillPrimary | Fault::KillPrimaryHastd => self.c.restart(p),
            Fault::KillSecondary => self.c.restart(s),
            Fault::KillWitness => self.c.restart(WITNESS),
            Fault::PausePrimary => self.c.resume(p),
            Fault::PauseSecondary => self.c.resume(s),
            Fault::PausePrimaryHastd => self.c.resume_hastd(p),
            Fault::PrimaryDiskHang => self.c.heal_disk(p),
            Fault::ForkFailPrimaryMon => {
                let refused = self.c.fork_heal_hastmon(p);
                println!("{label}: the pids cgroup refused {refused} forks/threads of hastmon during the fault");
            }
            Fault::WitnessKilledDuringTakeover => {
                let back = Instant::now();
                self.c.restart(WITNESS);
                let prim = wait_for(timeout_s(30), || {
                    let p = self.c.primaries();
                    if p.is_empty() {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    p.first().copied()
                });
                let Some(prim) = prim else {
                    panic!(
                        "{label}: no primary within 30 s of the witness being back\n{}",
                        self.c.describe()
                    );
                };
                println!(
                    "{label}: {prim} primary {:.2} s after the witness was restarted",
                    back.elapsed().as_secs_f64()
                );
                new_primary = Some(prim).filter(|n| *n != p);
                self.c.restart(p);
            }
            _ => self.c.net.heal_all(),
        }
        // Writes flow again, then stop the client.
        let before = count_acks(&history);
        self.wait_acks(&history, before + 100, label);
        std::fs::write(&stop, b"").expect("stop file");
        let st = writer.wait_timeout(timeout_s(90));
        assert!(
            st.is_some_and(|s| s.success()),
            "{label}: writer failed: {}",
            writer.tail(30)
        );
        let summary = writer.tail(1);
        println!("{label}: client {}", summary.trim());
        if fault.takeover() == Some(true) {
            let v: serde_json::Value = serde_json::from_str(summary.trim()).unwrap_or_default();
            if let Some(o) = v["outages"].as_array() {
                self.client_outages
                    .extend(o.iter().filter_map(|o| o["after_loss_s"].as_f64()));
            }
        }
        // What the client saw: its longest pause, and when writes resumed.
        let ack = acks(&history);
        let (gap, gap_end) = longest_gap(&ack, wall0, wall_heal);
        let mut m = Measure {
            longest_gap_s: gap,
            ..Measure::default()
        };
        m.resume_s = match new_primary {
            Some(n) => {
                let uri = self.c.uri(n);
                ack.iter()
                    .find(|(t, u)| *t > wall0 && *u == uri)
                    .map(|(t, _)| t - wall0)
            }
            None => Some(gap_end - wall0),
        };
        if fault == Fault::CutPrimarySecondary {
            self.check_cut(label, p, s, &ack, wall0, wall_fault, wall_heal);
        }
        let (lost, split) = self.verify(label);
        m.lost = lost;
        m.split_brain = split;
        m
    }

    /// The link between the data nodes cut under fullsync writes: the
    /// client's writes resume within [`CUT_RESUME_MAX_S`], the watchdog marks
    /// the secondary outdated before the first write acknowledged without it,
    /// and the secondary is never promoted.
    #[allow(clippy::too_many_arguments)]
    fn check_cut(
        &self,
        label: &str,
        p: &str,
        s: &str,
        ack: &[(f64, String)],
        wall0: f64,
        wall_fault: f64,
        wall_heal: f64,
    ) {
        let (gap, _) = longest_gap(ack, wall0, wall_heal);
        println!("{label}: the client's longest pause without an acknowledgement: {gap:.2} s (bound {CUT_RESUME_MAX_S} s)");
        // Writes invoked after the cut cannot reach the secondary, and the
        // acks of earlier ones cannot come back: any ack later than a round
        // trip after the rule is in place was given without the secondary.
        let first_degraded = ack.iter().map(|a| a.0).find(|t| *t > wall_fault + 0.2);
        let outdated = log_lines_since(
            &self.c.hastmon_log(WITNESS),
            wall0 - 0.5,
            &format!("{s} outdated by {p}"),
        );
        println!(
            "{label}: watchdog: {}; first degraded ack at +{}",
            outdated
                .first()
                .map(|(t, l)| format!("+{:.3} s {}", t - wall0, l.trim()))
                .unwrap_or_else(|| "no outdated mark".into()),
            first_degraded
                .map(|t| format!("{:.3} s", t - wall0))
                .unwrap_or_else(|| "none".into())
        );
        let promoted = log_lines_since(&self.c.hastd_log(s), wall0, "role=primary");
        assert!(
            promoted.is_empty(),
            "{label}: the secondary {s} was promoted during the cut: {promoted:?}"
        );
        assert!(
            gap < CUT_RESUME_MAX_S,
            "{label}: the client's writes paused {gap:.2} s after the cut (bound {CUT_RESUME_MAX_S} s)\n{}",
            self.c.describe()
        );
        if let Some(t_ack) = first_degraded {
            let Some((t_out, _)) = outdated.first() else {
                panic!(
                    "{label}: a write was acknowledged without {s} (+{:.3} s) but the watchdog never marked it outdated\n{}",
                    t_ack - wall0,
                    self.c.describe()
                );
            };
            assert!(
                *t_out < t_ack,
                "{label}: first degraded ack at +{:.3} s before the watchdog's outdated mark at +{:.3} s",
                t_ack - wall0,
                t_out - wall0
            );
        }
    }

    /// Copies identical and the checker clean; returns (lost acknowledged
    /// writes, epochs with two primaries) as the checker counted them (only
    /// non-zero when `lenient`: otherwise a violation fails the test).
    fn verify(&mut self, label: &str) -> (u64, u64) {
        let p = self.c.wait_in_sync(timeout_s(120));
        let ok = wait_for(timeout_s(30), || {
            let r = self.c.copies_identical();
            if r.is_err() {
                std::thread::sleep(Duration::from_millis(300));
            }
            r.ok()
        });
        assert!(
            ok.is_some(),
            "{label}: copies differ after healing: {:?}\n{}",
            self.c.copies_identical(),
            self.c.describe()
        );
        let out = self.c.check(p, &self.histories);
        let text = output_text(&out);
        let summary = String::from_utf8_lossy(&out.stdout);
        let first = summary.lines().next().unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(first).unwrap_or_default();
        let count = |k: &str| v["violations"][k].as_u64().unwrap_or(0);
        let (lost, split) = (count("LOST"), count("SPLIT-BRAIN"));
        if !(self.lenient && v.is_object()) {
            assert!(
                out.status.success(),
                "{label}: checker found violations:\n{text}\n{}",
                self.c.describe()
            );
        } else if !out.status.success() {
            println!("{label}: checker found violations:\n{text}");
        }
        println!("{label}: check {first}");
        (lost, split)
    }
}

#[test]
fn every_fault_keeps_one_primary_and_every_acknowledged_write() {
    // HAST_HA_ONLY=Isolate runs the faults whose name contains it.
    let only = std::env::var("HAST_HA_ONLY").unwrap_or_default();
    let faults: Vec<Fault> = ALL
        .into_iter()
        .filter(|f| format!("{f:?}").contains(&only))
        .collect();
    let hold = Duration::from_secs(8);
    let mut takeovers = vec![];
    // The faults on plain components first, then those that hang a disk on a
    // cluster whose components are on FUSE (one cluster at a time).
    for group in [
        faults
            .iter()
            .copied()
            .filter(|f| !f.needs_fuse_disks())
            .collect::<Vec<_>>(),
        faults
            .iter()
            .copied()
            .filter(|f| f.needs_fuse_disks())
            .collect(),
    ] {
        if group.is_empty() {
            continue;
        }
        let Some((_one, mut c)) = cluster_for(&group) else {
            return;
        };
        let mut run = Run::new(&mut c);
        for f in group {
            run.scenario(f, hold, &format!("{f:?}"));
        }
        takeovers.extend(run.takeovers);
    }
    println!(
        "scenarios: {} faults, takeovers {takeovers:?}",
        faults.len()
    );
}

#[test]
fn random_fault_schedules() {
    let seed: u64 = env_parse("HAST_HA_SEED").unwrap_or_else(rand::random);
    let faults: usize = env_parse("HAST_HA_FAULTS").unwrap_or(6);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let schedule: Vec<(Fault, u64)> = (0..faults)
        .map(|_| {
            (
                ALL[rng.gen_range(0..ALL.len())],
                rng.gen_range(3000..10_000),
            )
        })
        .collect();
    println!("random schedule: HAST_HA_SEED={seed} HAST_HA_FAULTS={faults}: {schedule:?}");
    let kinds: Vec<Fault> = schedule.iter().map(|f| f.0).collect();
    let Some((_one, mut c)) = cluster_for(&kinds) else {
        return;
    };
    let mut run = Run::new(&mut c);
    for (i, (f, hold)) in schedule.iter().enumerate() {
        run.scenario(
            *f,
            Duration::from_millis(*hold),
            &format!("HAST_HA_SEED={seed} fault {i} {f:?} for {hold} ms"),
        );
    }
}

/// Median, p99 and max of `t` (sorted in place); None when empty.
fn stats(t: &mut [f64]) -> Option<(f64, f64, f64)> {
    t.sort_by(f64::total_cmp);
    let last = *t.last()?;
    let pct = |q: f64| t[((t.len() as f64 - 1.0) * q).round() as usize];
    Some((pct(0.5), pct(0.99), last))
}

#[test]
#[ignore = "measurement: run by bench/failover.sh"]
fn failover_time() {
    let trials: usize = env_parse("HAST_HA_TRIALS").unwrap_or(20);
    let kinds: Vec<Fault> = match std::env::var("HAST_HA_KINDS") {
        Ok(k) if !k.trim().is_empty() => k
            .split(',')
            .map(|n| Fault::parse(n).unwrap_or_else(|| panic!("HAST_HA_KINDS: no fault {n:?}")))
            .collect(),
        _ => MEASURED.to_vec(),
    };
    let mut rows = vec![];
    for kind in kinds {
        let Some((_one, mut c)) = cluster_for(&[kind]) else {
            return;
        };
        let mut run = Run::new(&mut c);
        run.lenient = true;
        let mut resume = vec![];
        let (mut lost, mut split) = (0, 0);
        let hold = if kind.takeover() == Some(true) { 1 } else { 8 };
        for i in 0..trials {
            let m = run.scenario(
                kind,
                Duration::from_secs(hold),
                &format!("{kind:?} trial {i}"),
            );
            println!(
                "{kind:?} trial {i}: fault -> writes acknowledged again {} s (longest pause {:.2} s)",
                m.resume_s.map(|r| format!("{r:.2}")).unwrap_or("-".into()),
                m.longest_gap_s
            );
            resume.extend(m.resume_s);
            // The checker reads every history of this cluster each time:
            // its last counts cover all the trials.
            lost = lost.max(m.lost);
            split = split.max(m.split_brain);
        }
        let mut takeover: Vec<f64> = run.takeovers.iter().map(Duration::as_secs_f64).collect();
        let exports = stats(&mut takeover);
        if let Some((med, p99, max)) = exports {
            println!(
                "{kind:?}: fault -> the other node exports as primary, {} trials: median {med:.2} s, p99 {p99:.2} s, max {max:.2} s",
                takeover.len()
            );
        }
        rows.push((kind, trials, stats(&mut resume), exports, lost, split));
    }
    let what = |k: Fault| {
        if k.takeover() == Some(true) {
            "fault -> first write acknowledged by the new primary"
        } else {
            "fault -> writes acknowledged again"
        }
    };
    println!("failover time as the client sees it ({trials} trials per kind, default settings):");
    println!("| kind | figure | trials | median | p99 | max | new primary exports (median / p99) | lost acknowledged writes | epochs with two primaries |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let secs = |x: f64| format!("{x:.2} s");
    for (kind, n, st, exports, lost, split) in &rows {
        let (med, p99, max) = st
            .map(|(a, b, c)| (secs(a), secs(b), secs(c)))
            .unwrap_or_else(|| ("-".into(), "-".into(), "-".into()));
        let exports = exports
            .map(|(a, b, _)| format!("{} / {}", secs(a), secs(b)))
            .unwrap_or_else(|| "-".into());
        println!(
            "| {kind:?} | {} | {n} | {med} | {p99} | {max} | {exports} | {lost} | {split} |",
            what(*kind)
        );
    }
    assert!(
        rows.iter().all(|r| r.4 == 0 && r.5 == 0),
        "violations found (see the table)"
    );
}

/// Log lines that mean a grant or a role request was refused.
const REFUSALS: [&str; 4] = ["stale epoch", "refused", "refusing", "refuses"];

#[test]
fn adoption_of_a_running_pair() {
    let Some((_one, mut c)) = cluster_with(HaOptions {
        hastd_only: true,
        ..HaOptions::default()
    }) else {
        return;
    };
    let mut run = Run::new(&mut c);
    let (mut writer, history, stop) = run.start_writer();
    run.wait_acks(&history, 200, "adoption");
    // A pair run by hand: switched over a few times (each promotion by
    // hand starts a new epoch).
    let mut p = "a";
    for round in 0..5 {
        let s = other(p);
        run.c.hastctl_ok(p, &["role", "secondary", RES]);
        run.c.hastctl_ok(s, &["role", "primary", RES]);
        p = s;
        let before = count_acks(&history);
        run.wait_acks(&history, before + 200, &format!("switchover {round}"));
        let now = run.c.wait_in_sync(timeout_s(60));
        assert_eq!(now, p, "switchover {round}: {p} should be primary");
    }
    let s = other(p);
    let epoch = |c: &HaCluster, n: &str| {
        c.status(n)
            .and_then(|st| st.json.get("epoch").and_then(|e| e.as_u64()))
            .unwrap_or(0)
    };
    let hand_epoch = epoch(run.c, p);
    println!("adoption: {p} primary by hand at epoch {hand_epoch}");
    // Under hastmon exactly as the README says: the watchdog, the primary,
    // the secondary.
    let t_adopt = wall();
    let mut refused = vec![];
    let mut steps: Vec<(&str, &str)> =
        vec![(WITNESS, "watchdog"), (p, "primary"), (s, "secondary")];
    for (n, role) in steps.drain(..) {
        run.c.start_hastmon(n);
        let out = run.c.hastmonctl(n, &["role", role, RES]);
        if !out.status.success() {
            refused.push(format!(
                "hastmonctl role {role} on {n}: {}",
                output_text(&out)
            ));
            // Carry on as an operator would, to see the rest.
            let ok = wait_for(timeout_s(30), || {
                std::thread::sleep(Duration::from_millis(500));
                run.c
                    .hastmonctl(n, &["role", role, RES])
                    .status
                    .success()
                    .then_some(())
            });
            assert!(
                ok.is_some(),
                "hastmonctl role {role} on {n} never succeeded\n{}",
                run.c.describe()
            );
        }
    }
    // A few heartbeats and leases under hastmon, writes going on.
    std::thread::sleep(Duration::from_secs(6));
    let t_end = wall();
    let ack = acks(&history);
    let (gap, gap_end) = longest_gap(&ack, t_adopt, t_end);
    println!(
        "adoption: the client's longest pause while hastmon took over the pair: {gap:.3} s (ended at +{:.3} s)",
        gap_end - t_adopt
    );
    let mon_epoch = run
        .c
        .mon_status(p)
        .and_then(|v| v.get("epoch").and_then(|e| e.as_u64()));
    println!(
        "adoption: hastd epoch on {p} {} (by hand {hand_epoch}), hastmon epoch {mon_epoch:?}",
        epoch(run.c, p)
    );
    // Refusals anywhere since hastmon came.
    let mut logs: Vec<(String, PathBuf)> = vec![];
    for n in DATA {
        logs.push((format!("hastd@{n}"), run.c.hastd_log(n)));
    }
    for n in ["a", "b", WITNESS] {
        logs.push((format!("hastmon@{n}"), run.c.hastmon_log(n)));
    }
    for (name, log) in &logs {
        for (t, l) in std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| REFUSALS.iter().any(|r| l.to_lowercase().contains(r)))
            .filter_map(|l| log_time(l).map(|t| (t, l)))
            .filter(|(t, _)| *t >= t_adopt - 0.5)
        {
            refused.push(format!("{name} +{:.3} s: {}", t - t_adopt, l.trim()));
        }
    }
    let demoted = log_lines_since(&run.c.hastd_log(p), t_adopt, "role=secondary");
    let promoted = log_lines_since(&run.c.hastd_log(s), t_adopt, "role=primary");
    let prim = run.c.primaries();
    for r in &refused {
        println!("adoption: refusal: {r}");
    }
    assert!(
        refused.is_empty() && demoted.is_empty() && promoted.is_empty() && prim == vec![p],
        "adoption: refusals {refused:#?}, {p} demoted {demoted:?}, {s} promoted {promoted:?}, primaries now {prim:?}\n{}",
        run.c.describe()
    );
    assert!(
        gap < 1.0,
        "adoption: the client waited {gap:.3} s for an acknowledgement while hastmon took over the pair (bound: one heartbeat, 1 s)\n{}",
        run.c.describe()
    );
    std::fs::write(&stop, b"").expect("stop file");
    let st = writer.wait_timeout(timeout_s(90));
    assert!(
        st.is_some_and(|s| s.success()),
        "adoption: writer failed: {}",
        writer.tail(30)
    );
    println!("adoption: client {}", writer.tail(1).trim());
    // The adopted pair fails over like any other.
    let m = run.scenario(
        Fault::KillPrimary,
        Duration::from_secs(3),
        "adoption: kill -9 of the primary",
    );
    println!(
        "adoption: kill -9 -> first write acknowledged by the new primary {:?} s",
        m.resume_s
    );
}

/// An outdated secondary says so itself (issue 16, 11): with the link cut
/// under writes, the primary has the watchdog mark its peer outdated, and
/// the secondary's own `hastmonctl status` (text, JSON) shows it while the
/// primary runs; a promotion there is refused naming the mark. Healed and
/// resynced, the mark is cleared and so are the secondary's `outdated` and
/// its refusal (which named the old epoch).
#[test]
fn an_outdated_secondary_says_so_until_resynced() {
    let Some((_one, mut c)) = cluster_with(HaOptions::default()) else {
        return;
    };
    let mut run = Run::new(&mut c);
    let p = run.c.wait_in_sync(timeout_s(120));
    let s = other(p);
    let (mut writer, history, stop) = run.start_writer();
    run.wait_acks(&history, 200, "outdated");
    let outdated = |c: &HaCluster| {
        c.mon_status(s)
            .and_then(|v| v.get("outdated").and_then(|o| o.as_bool()))
    };
    assert_eq!(outdated(run.c), Some(false), "{}", run.c.describe());
    // Polls `cond` every 200 ms until it holds or `bound` passes.
    let until = |bound: Duration, cond: &dyn Fn() -> bool| {
        wait_for(bound, || {
            let o = cond();
            if !o {
                std::thread::sleep(Duration::from_millis(200));
            }
            o.then_some(())
        })
    };
    run.c.net.cut(p, s);
    let seen = until(timeout_s(20), &|| outdated(run.c) == Some(true));
    assert!(
        seen.is_some(),
        "{s} never said it was outdated while cut from {p}\n{}",
        run.c.describe()
    );
    let text = run.c.hastmonctl_ok(s, &["status", RES]);
    assert!(text.contains("outdated: yes"), "{text}");
    // hastmon passed the mark on (`hastmon-hastd outdate`): hastd's own
    // status says so, and hastd itself refuses a promotion.
    let hastd_says = |c: &HaCluster| c.hastctl_ok(s, &["list", RES]).contains("outdated: yes");
    let passed_on = until(timeout_s(10), &|| hastd_says(run.c));
    assert!(
        passed_on.is_some(),
        "{s}'s hastd was not told it is outdated\n{}",
        run.c.describe()
    );
    let text = run.c.hastctl_ok(s, &["status", RES]);
    assert!(text.contains("outdated"), "{text}");
    let out = run.c.hastctl(s, &["role", "primary", RES]);
    assert_eq!(out.status.code(), Some(77), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("outdated"),
        "{}",
        output_text(&out)
    );
    // Still the primary's: writes go on without the peer.
    let before = count_acks(&history);
    run.wait_acks(&history, before + 50, "outdated: degraded writes");
    let out = run.c.hastmonctl(s, &["role", "primary", RES]);
    assert_eq!(out.status.code(), Some(75), "{}", output_text(&out));
    assert!(
        output_text(&out).contains(&format!("{s} is outdated")),
        "{}",
        output_text(&out)
    );
    let refusal = |c: &HaCluster| {
        c.mon_status(s)
            .map(|v| v.get("last_refusal").cloned().unwrap_or_default())
    };
    let why = refusal(run.c).unwrap_or_default();
    assert!(
        why.as_str().is_some_and(|w| w.contains("outdated")),
        "{why}"
    );
    assert_eq!(run.c.primaries(), vec![p], "{}", run.c.describe());
    run.c.net.heal_all();
    run.c.wait_in_sync(timeout_s(120));
    // The watchdog tells at its next heartbeat (1 s).
    let cleared = until(timeout_s(10), &|| {
        outdated(run.c) == Some(false) && refusal(run.c) == Some(serde_json::Value::Null)
    });
    assert!(
        cleared.is_some(),
        "{s} resynced but still says outdated {:?} / refused {:?}\n{}",
        outdated(run.c),
        refusal(run.c),
        run.c.describe()
    );
    let text = run.c.hastmonctl_ok(s, &["status", RES]);
    assert!(
        !text.contains("outdated") && !text.contains("refused"),
        "{text}"
    );
    let text = run.c.hastctl_ok(s, &["list", RES]);
    assert!(!text.contains("outdated"), "{text}");
    std::fs::write(&stop, b"").expect("stop file");
    let st = writer.wait_timeout(timeout_s(90));
    assert!(
        st.is_some_and(|s| s.success()),
        "outdated: writer failed: {}",
        writer.tail(30)
    );
    run.verify("outdated");
}
