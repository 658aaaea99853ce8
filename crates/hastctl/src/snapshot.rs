//! `hastctl snapshot`: asks hastd for a group's point-in-time images and
//! follows the background copy to its end — a bar on a terminal, JSON
//! Lines with `--json` — then reports the frozen time and the copy time
//! apart. Interrupting it (Ctrl-C) abandons the snapshot: hastd sees the
//! connection close and removes the partial images.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use hast_api::{FreezeTimeout, Request, Response, Session, SnapshotReport};

use crate::{exit, Fail, Res};

/// Longest wait for any answer: the freeze may take up to a minute
/// (hastd's bound on draining), progress comes every 250 ms after it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(90);

pub fn run(socket: &Path, names: &[String], timeout: FreezeTimeout, dir: &Path, json: bool) -> Res {
    // hastd wants an absolute path to an existing directory; say here,
    // with the caller's own words, what is wrong with it.
    let dir = dir.canonicalize().map_err(|e| {
        Fail(
            exit::CANTCREAT,
            format!("snapshot directory {}: {e}", dir.display()),
        )
    })?;
    let dir_str = dir.to_str().ok_or_else(|| {
        Fail(
            exit::USAGE,
            format!("snapshot directory {}: not UTF-8", dir.display()),
        )
    })?;
    let req = Request::Snapshot {
        names: names.to_vec(),
        timeout,
        dir: dir_str.to_string(),
    };
    let mut session = Session::open(socket, req, Some(ANSWER_TIMEOUT)).map_err(client)?;
    let mut bar: Option<indicatif::ProgressBar> = None;
    loop {
        let answer = session.recv().map_err(client)?;
        match answer {
            Some(Response::SnapshotStarted(r)) => {
                if json {
                    line("started", &r)?;
                } else if std::io::stderr().is_terminal() {
                    bar = Some(progress_bar(&r));
                }
            }
            Some(Response::SnapshotProgress(r)) => {
                if json {
                    line("progress", &r)?;
                } else if let Some(b) = &bar {
                    b.set_position(r.images.iter().map(|i| i.done_bytes).sum());
                }
            }
            Some(Response::SnapshotDone(r)) => {
                if let Some(b) = bar.take() {
                    b.finish_and_clear();
                }
                if json {
                    line("done", &r)?;
                } else {
                    summary(&r);
                }
                return Ok(());
            }
            Some(Response::Error(e)) => {
                if let Some(b) = bar.take() {
                    b.abandon();
                }
                return Err(Fail(e.kind.exit_code(), e.message));
            }
            Some(_) => return Err(Fail(exit::PROTOCOL, "unexpected answer from hastd".into())),
            None => {
                return Err(Fail(
                    exit::TEMPFAIL,
                    "hastd closed the connection before the snapshot completed".into(),
                ))
            }
        }
    }
}

fn client(e: hast_api::ClientError) -> Fail {
    Fail(e.exit_code(), e.to_string())
}

/// One JSON Lines record: the report with what it is.
fn line(what: &str, r: &SnapshotReport) -> Res {
    let mut v = serde_json::to_value(r).map_err(|e| Fail(exit::SOFTWARE, e.to_string()))?;
    if let Some(o) = v.as_object_mut() {
        o.insert("event".into(), serde_json::Value::from(what));
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")
        .and_then(|()| out.flush())
        .map_err(|e| Fail(exit::IOERR, format!("cannot write to stdout: {e}")))
}

fn progress_bar(r: &SnapshotReport) -> indicatif::ProgressBar {
    let total = r.images.iter().map(|i| i.size).sum();
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let style = indicatif::ProgressStyle::with_template(
        "snapshot {bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta} ({msg})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(format!("frozen {} ms", r.frozen_ms));
    bar
}

fn summary(r: &SnapshotReport) {
    println!(
        "snapshot {}: frozen {} ms (the freeze took {} ms), copied in {:.2} s",
        r.generation,
        r.frozen_ms,
        r.freeze_ms,
        r.copy_ms as f64 / 1000.0
    );
    for i in &r.images {
        println!(
            "{}: {} ({} bytes, {} written, {} copied before a write)",
            i.name, i.path, i.size, i.written_bytes, i.preserved_bytes
        );
    }
}
