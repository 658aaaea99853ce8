//! Failover that never waits on a hung daemon: the hastd side, with real
//! processes on loopback (a proxy on A's link to B).
//!
//! - **heartbeat**: the link is blackholed (sockets stay open, nothing moves,
//!   no RST) under a steady fullsync writer with `fence_peer`; with the default
//!   `ping_timeout` (3 s, `timeout` left at 20 s) the primary declares the
//!   peer dead, fences it and acknowledges writes again within 5 s of the cut
//!   (the longest gap between two acknowledgements is printed);
//! - **lease**: a primary with a lease whose `fence_peer` hangs (sleeps) and
//!   whose peer is silenced: writes issued after the cut fail with ESHUTDOWN as
//!   the NBD client sees it within the lease plus a small margin, and `hastctl
//!   status` says secondary by then.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hast_testkit::{
    bins, python_command, require_python_nbd, timeout_s, wait_for, Pair, Proc, Side,
};

fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "[link_heartbeat] {msg}");
}

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `tests/py/follow_writer.py` on one URI, history in `dir/name.hist`.
struct Writer {
    proc: Proc,
    history: PathBuf,
    stop_file: PathBuf,
}

impl Writer {
    fn start(uri: &str, dir: &Path, name: &str, inflight: u32, fua_one_in: u32) -> Writer {
        let history = dir.join(format!("{name}.hist"));
        let stop_file = dir.join(format!("{name}.stop"));
        let out = dir.join(format!("{name}.out"));
        let mut cmd = python_command(
            "follow_writer.py",
            &[
                "--uri",
                uri,
                "--history",
                history.to_str().expect("utf-8 path"),
                "--blocks",
                "4096",
                "--inflight",
                &inflight.to_string(),
                "--fua-one-in",
                &fua_one_in.to_string(),
                // Never abandon a request: the test wants its real answer.
                "--request-timeout",
                "120",
                "--reconnect-timeout",
                "120",
                "--duration",
                "300",
                "--stop-file",
                stop_file.to_str().expect("utf-8 path"),
            ],
        );
        let proc = Proc::spawn(&mut cmd, name, Some(&out)).expect("start follow_writer.py");
        Writer {
            proc,
            history,
            stop_file,
        }
    }

    /// `(kind, t, rest)` of every history line.
    fn events(&self) -> Vec<(String, f64, Vec<String>)> {
        std::fs::read_to_string(&self.history)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let kind = w.next()?.to_string();
                let t: f64 = w.next()?.parse().ok()?;
                Some((kind, t, w.map(str::to_string).collect()))
            })
            .collect()
    }

    fn acks(&self) -> Vec<f64> {
        self.events()
            .into_iter()
            .filter(|(k, _, _)| k == "ok")
            .map(|(_, t, _)| t)
            .collect()
    }

    fn stop(mut self) {
        let _ = std::fs::write(&self.stop_file, b"stop");
        if self.proc.wait_timeout(timeout_s(30)).is_none() {
            self.proc.kill9();
        }
    }
}

/// The longest time between two acknowledgements after `from`, counted from
/// `from` for the first one.
fn longest_gap(acks: &[f64], from: f64) -> f64 {
    let mut last = from;
    let mut gap: f64 = 0.0;
    for &t in acks.iter().filter(|&&t| t > from) {
        gap = gap.max(t - last);
        last = t;
    }
    gap
}

#[test]
fn blackholed_link_under_fullsync_writes_recovers_within_5s() {
    if !require_python_nbd() {
        return;
    }
    // `timeout` as FreeBSD's default: only the heartbeat can be this quick.
    let mut pair = Pair::builder(bins!())
        .tag("hb-blackhole")
        .timeout(20)
        .proxy()
        .option("fence_peer /bin/true")
        .start();
    pair.setup(Side::A, timeout_s(60));
    let dir = pair.node(Side::A).dir().to_path_buf();
    let writer = Writer::start(&pair.uri(Side::A), &dir, "steady", 8, 8);
    let got = wait_for(timeout_s(30), || (writer.acks().len() > 500).then_some(()));
    assert!(got.is_some(), "writer never got going");

    let t_cut = wall();
    let cut = Instant::now();
    pair.proxy().blackhole();
    let st = pair.wait_status(Side::A, timeout_s(15), "degraded", |s| {
        s.status == "degraded"
    });
    let noticed = cut.elapsed();
    say(&format!(
        "A degraded {noticed:?} after the blackhole: {}",
        st.brief()
    ));
    // Let the writer show that it goes on.
    std::thread::sleep(Duration::from_secs(3));
    let acks = writer.acks();
    let fails: Vec<_> = writer
        .events()
        .into_iter()
        .filter(|(k, _, _)| k == "fail" || k == "disconnect")
        .collect();
    writer.stop();
    let gap = longest_gap(&acks, t_cut);
    let after = acks.iter().filter(|&&t| t > t_cut + gap - 0.001).count();
    say(&format!(
        "longest gap between acknowledgements after the cut: {gap:.2} s \
         ({after} writes acknowledged after it)"
    ));
    assert!(fails.is_empty(), "writes failed: {fails:?}");
    assert!(after > 10, "writes did not resume: {after}");
    assert!(
        gap < 5.0,
        "writes stalled {gap:.2} s after the cut (want < 5 s)"
    );
    let log = pair.node(Side::A).log();
    assert!(
        log.contains("peer silent for 3 s"),
        "the primary did not time the silent peer out by ping_timeout:\n{log}"
    );
    // The secondary lets go of the silent primary by the same rule.
    let st = pair.wait_status(Side::B, timeout_s(10), "primary gone", |s| {
        s.peer.as_deref() != Some("connected")
    });
    say(&format!("B after {:?}: {}", cut.elapsed(), st.brief()));
    pair.proxy().heal();
    pair.wait_complete(timeout_s(60));
    pair.assert_identical(timeout_s(30));
}
