//! `hastctl snapshot [-t timeout] -o DIR all | name ...`: a coherent,
//! point-in-time image of a group of primary resources, whose frozen time
//! does not grow with their size.
//!
//! The steps: create `DIR/<name>.img.partial` for each (before anything
//! is held); freeze the group as `hastctl freeze` does, but without its
//! flush ([`Settle::Drain`]: the image is read from the local copy, which
//! has every completed write); begin each member's image
//! (`datapath::Image`, copy-before-write) while still frozen; thaw (reason
//! `snapshot begun`); then copy in the background, sending progress; at
//! the end fsync each image, rename it to `DIR/<name>.img` and fsync the
//! directory.
//!
//! The snapshot is one unit: if any image fails (a full disk, a demotion,
//! the local copy detached), if the group was thawed by anything else
//! before the images began, if the client leaves or hastd stops, every
//! image is abandoned and its partial file removed; the resources never
//! notice (a failed image fails no write). A hastd killed mid-copy leaves
//! the `.partial` files, named as what they are.

use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use hast_api::{ApiError, ErrorKind, FreezeTimeout, ImageProgress, Response, SnapshotReport};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

use crate::control::{freeze_group, select, send, Resources};
use crate::datapath::{spawn_copier, DataPath, Image};
use crate::freeze::policy::Reason;
use crate::freeze::{Freezer, Settle};

/// What `hastctl snapshot` asked.
pub struct Ask {
    pub names: Vec<String>,
    pub timeout: FreezeTimeout,
    pub dir: String,
}

/// One member's image and where it goes.
struct Out {
    name: String,
    partial: PathBuf,
    path: PathBuf,
    /// Until the image begins: the file it is written into.
    file: Option<File>,
    begun: Option<(Arc<DataPath>, Arc<Image>)>,
    size: u64,
    /// Complete under its final name.
    renamed: bool,
}

fn err(kind: ErrorKind, message: impl Into<String>) -> ApiError {
    ApiError {
        kind,
        message: message.into(),
    }
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Serves one `snapshot` request on its control connection, to the end.
pub async fn serve(
    stream: &mut UnixStream,
    ask: Ask,
    resources: &Resources,
    freezer: &Arc<Freezer>,
) -> io::Result<()> {
    let started = Instant::now();
    let mut outs = match prepare(&ask, resources).await {
        Ok(o) => o,
        Err(e) => return send(stream, &Response::Error(e)).await,
    };
    let begun = match begin(&ask, &mut outs, resources, freezer, started).await {
        Ok(r) => r,
        Err(e) => {
            abandon(&mut outs, &e.message);
            return send(stream, &Response::Error(e)).await;
        }
    };
    tracing::info!(
        group = %ask_names(&outs),
        generation = begun.generation,
        frozen_ms = begun.frozen_ms,
        "snapshot begun"
    );
    let res = copy(stream, &mut outs, &begun).await;
    match res {
        Ok(report) => {
            tracing::info!(group = %ask_names(&outs), copy_ms = report.copy_ms, "snapshot complete");
            send(stream, &Response::SnapshotDone(report)).await
        }
        Err(e) => {
            tracing::warn!(group = %ask_names(&outs), "snapshot abandoned: {}", e.message);
            abandon(&mut outs, &e.message);
            // The client may be gone already: nothing more to do then.
            send(stream, &Response::Error(e)).await
        }
    }
}

fn ask_names(outs: &[Out]) -> String {
    outs.iter()
        .map(|o| o.name.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks the directory and creates each member's partial file; nothing
/// is held yet.
async fn prepare(ask: &Ask, resources: &Resources) -> Result<Vec<Out>, ApiError> {
    let dir = Path::new(&ask.dir);
    if !dir.is_absolute() {
        return Err(err(
            ErrorKind::Usage,
            format!("snapshot directory {}: not an absolute path", ask.dir),
        ));
    }
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(err(
                ErrorKind::CantCreat,
                format!("snapshot directory {}: not a directory", ask.dir),
            ))
        }
        Err(e) => {
            return Err(err(
                ErrorKind::CantCreat,
                format!("snapshot directory {}: {e}", ask.dir),
            ))
        }
    }
    let all = resources.read().await.clone();
    let mut names: Vec<String> = Vec::new();
    for r in select(&ask.names, &all)? {
        if !names.contains(&r.name) {
            names.push(r.name.clone());
        }
    }
    let mut outs: Vec<Out> = Vec::new();
    for name in names {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            abandon(&mut outs, "");
            return Err(err(
                ErrorKind::Usage,
                format!("resource name {name:?} cannot name a file"),
            ));
        }
        let path = dir.join(format!("{name}.img"));
        let partial = dir.join(format!("{name}.img.partial"));
        let exists = |p: &Path| p.symlink_metadata().is_ok();
        let taken = [&path, &partial].into_iter().find(|p| exists(p));
        if let Some(p) = taken {
            abandon(&mut outs, "");
            return Err(err(
                ErrorKind::CantCreat,
                format!(
                    "{} exists: remove it or choose another directory; nothing frozen",
                    p.display()
                ),
            ));
        }
        // The image holds the volume's data: root's only, and never
        // through a link someone planted meanwhile (O_EXCL).
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&partial);
        match file {
            Ok(f) => outs.push(Out {
                name,
                partial,
                path,
                file: Some(f),
                begun: None,
                size: 0,
                renamed: false,
            }),
            Err(e) => {
                abandon(&mut outs, "");
                return Err(err(
                    ErrorKind::CantCreat,
                    format!("cannot create {}: {e}; nothing frozen", partial.display()),
                ));
            }
        }
    }
    Ok(outs)
}

/// Freezes the group, begins every image, thaws. The report's times.
async fn begin(
    ask: &Ask,
    outs: &mut [Out],
    resources: &Resources,
    freezer: &Arc<Freezer>,
    started: Instant,
) -> Result<SnapshotReport, ApiError> {
    let names: Vec<String> = outs.iter().map(|o| o.name.clone()).collect();
    let done = freeze_group(&names, ask.timeout, resources, freezer, Settle::Drain).await?;
    let freeze_ms = ms(started);
    let generation = done.generation;
    let mut failed = None;
    for dp in freezer.members(generation) {
        let Some(out) = outs.iter_mut().find(|o| o.name == dp.name()) else {
            continue;
        };
        let Some(file) = out.file.take() else {
            continue;
        };
        out.size = dp.datasize();
        // Only a size: the image stays all holes until copied into.
        if let Err(e) = file.set_len(out.size) {
            failed = Some(err(
                ErrorKind::CantCreat,
                format!("cannot size {}: {e}", out.partial.display()),
            ));
            break;
        }
        match dp.begin_image(file) {
            Ok(img) => out.begun = Some((dp, img)),
            Err(why) => {
                failed = Some(err(ErrorKind::TempFail, why));
                break;
            }
        }
    }
    if failed.is_none() && outs.iter().any(|o| o.begun.is_none()) {
        failed = Some(err(
            ErrorKind::TempFail,
            "a member left the group before its image began",
        ));
    }
    let thawed = freezer.thaw_group(generation, Reason::Snapshot);
    if let Some(e) = failed {
        return Err(e);
    }
    let Some(g) = thawed else {
        // Thawed by something else (its timeout, a lost peer, a
        // demotion) — maybe before every image began: writes may have
        // passed that some image does not have.
        let why = names
            .first()
            .and_then(|n| freezer.thaw_reason(generation, n))
            .map_or_else(|| "something else".to_string(), |r| r.to_string());
        return Err(err(
            ErrorKind::DataErr,
            format!("the group was thawed by {why} before its images began: no coherent snapshot"),
        ));
    };
    Ok(SnapshotReport {
        generation,
        frozen_ms: u64::try_from(g.since.mono.elapsed().as_millis()).unwrap_or(u64::MAX),
        freeze_ms,
        copy_ms: 0,
        images: progress(outs),
    })
}

fn progress(outs: &[Out]) -> Vec<ImageProgress> {
    outs.iter()
        .map(|o| {
            let c = o
                .begun
                .as_ref()
                .map(|(_, img)| img.counts())
                .unwrap_or_default();
            ImageProgress {
                name: o.name.clone(),
                path: o.partial.display().to_string(),
                size: o.size,
                done_bytes: c.done,
                written_bytes: c.written,
                preserved_bytes: c.preserved,
            }
        })
        .collect()
}

/// The background copy of every image, with progress to the client, then
/// the images made durable under their final names.
async fn copy(
    stream: &mut UnixStream,
    outs: &mut [Out],
    begun: &SnapshotReport,
) -> Result<SnapshotReport, ApiError> {
    let thawed = Instant::now();
    let mut report = begun.clone();
    send(stream, &Response::SnapshotStarted(report.clone()))
        .await
        .map_err(|e| err(ErrorKind::TempFail, format!("the client left: {e}")))?;
    let mut set = tokio::task::JoinSet::new();
    for o in outs.iter() {
        if let Some((dp, img)) = &o.begun {
            let copier = spawn_copier(dp.clone(), img.clone());
            set.spawn(async move {
                copier
                    .await
                    .unwrap_or_else(|_| Err("the copier thread did not start".into()))
            });
        }
    }
    let (mut rd, mut wr) = stream.split();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(
        hast_api::SNAPSHOT_PROGRESS_MS,
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut byte = [0u8; 1];
    let copied = loop {
        tokio::select! {
            r = set.join_next() => match r {
                None => break Ok(()),
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(why))) => break Err(err(ErrorKind::IoErr, why)),
                Some(Err(e)) => break Err(err(ErrorKind::Software, e.to_string())),
            },
            _ = tick.tick() => {
                report.copy_ms = ms(thawed);
                report.images = progress(outs);
                if let Err(e) = send(&mut wr, &Response::SnapshotProgress(report.clone())).await {
                    break Err(err(ErrorKind::TempFail, format!("the client left: {e}")));
                }
            }
            // The client sends nothing more: any read result means it left.
            _ = rd.read(&mut byte) => {
                break Err(err(ErrorKind::TempFail, "the client left"));
            }
        }
    };
    if let Err(e) = copied {
        // The copier threads stop at their next group: `abandon` fails
        // every image.
        set.abort_all();
        return Err(e);
    }
    for o in outs.iter_mut() {
        finish(o).await?;
    }
    report.copy_ms = ms(thawed);
    report.images = progress(outs);
    for (img, o) in report.images.iter_mut().zip(outs.iter()) {
        img.path = o.path.display().to_string();
    }
    Ok(report)
}

/// Makes one complete image durable under its final name.
async fn finish(o: &mut Out) -> Result<(), ApiError> {
    let Some((dp, img)) = o.begun.clone() else {
        return Ok(());
    };
    dp.end_image(&img);
    let (partial, path) = (o.partial.clone(), o.path.clone());
    let res = tokio::task::spawn_blocking(move || -> io::Result<()> {
        img.file().sync_all()?;
        std::fs::rename(&partial, &path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })
    .await
    .map_err(|e| io::Error::other(e.to_string()))
    .and_then(|r| r);
    o.renamed = res.is_ok();
    res.map_err(|e| {
        err(
            ErrorKind::IoErr,
            format!("cannot complete {}: {e}", o.path.display()),
        )
    })
}

/// Ends every image and removes its file, partial or complete: a group
/// with a member missing is no coherent snapshot. Only files this
/// snapshot created are removed (`prepare` refused existing ones).
fn abandon(outs: &mut [Out], why: &str) {
    for o in outs.iter_mut() {
        if let Some((dp, img)) = o.begun.take() {
            img.fail(format!("snapshot abandoned: {why}"));
            dp.end_image(&img);
        }
        o.file = None;
        let created = if o.renamed { &o.path } else { &o.partial };
        let _ = std::fs::remove_file(created);
    }
}
