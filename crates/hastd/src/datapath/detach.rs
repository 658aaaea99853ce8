//! `on_io_error`: what the primary does when its local component fails a
//! read, a write, a flush or a metadata write (DRBD's `on-io-error`).
//!
//! - `detach` (default): if the peer's copy is current (link up, nothing
//!   left to resync to it), the local component is **detached**: no data nor
//!   metadata goes to it any more, reads are served by the peer, writes go
//!   to the peer alone and are acknowledged on its REPLY (whatever the mode),
//!   flushes are the peer's FLUSH. Every extent written while detached is
//!   kept in an in-memory set; `hastctl attach` (after a repair) checks the
//!   component, marks those extents needsync durably and resyncs them from
//!   the peer (`replication::attach`). Without a healthy peer it cannot
//!   detach: the request fails with the error, the `detach` event is
//!   recorded `aborted`, the resource is marked **failed** (status never
//!   `complete`), and later requests keep trying the local component (so
//!   they work again when the fault clears); `hastctl attach` clears the
//!   mark once the component answers again.
//! - `pass_on`: the error goes to the client (a failed read is still
//!   retried on the peer, as always); the resource is marked failed the same
//!   way until `hastctl attach` or a role change.
//!
//! If the link is lost while detached there is no copy to serve from:
//! requests fail with EIO, and the connector does not reconnect (a
//! handshake would read this copy's stale metadata as current): the
//! resource stays detached until it is demoted (the close then marks the
//! copy inconsistent, with the detached extents dirty, so it is only ever a
//! resync target) or attached once the link is back.
//!
//! The set of extents written while detached lives in memory only, and the
//! detached component's own metadata cannot be written. So before the first
//! write goes to the peer alone, a marker `<state_dir>/<resource>.detached`
//! is made durable (file and directory fsync'd): a hastd that stops or
//! crashes before the attach finds it at the next open, marks the copy
//! inconsistent (never promoted, never a resync source) and, as secondary,
//! every extent needsync, so the peer resyncs it in full. The marker goes
//! when the attach's resync completed, or a close while detached wrote the
//! extents dirty and the copy inconsistent itself. A write for which the
//! marker cannot be made durable is refused (EIO), never acknowledged: a
//! crash could otherwise leave a copy that looks current without it.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use hast_conf::OnIoError;
use hast_events::{Kind, State};

use super::{DataPath, DpError, Side};
use crate::link::Link;

/// The local component's state on a primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalState {
    /// Used for every request.
    Attached,
    /// Failed with no detach possible (or `pass_on`): still used, but the
    /// resource is not `complete` until `hastctl attach`.
    Failed,
    /// Not used at all: the peer serves everything.
    Detached,
}

impl LocalState {
    fn code(self) -> u8 {
        match self {
            LocalState::Attached => 0,
            LocalState::Failed => 1,
            LocalState::Detached => 2,
        }
    }

    fn of(code: u8) -> LocalState {
        match code {
            1 => LocalState::Failed,
            2 => LocalState::Detached,
            _ => LocalState::Attached,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LocalState::Attached => "attached",
            LocalState::Failed => "failed",
            LocalState::Detached => "detached",
        }
    }
}

/// The data path's `on_io_error` state.
pub(super) struct Detach {
    /// `on_io_error detach` (else `pass_on`); applies live on SIGHUP.
    detach: AtomicBool,
    state: AtomicU8,
    /// Local errors since the last attach (or the open).
    errors: AtomicU64,
    /// Extents written while detached, and whether an attach began (a
    /// write tracked after it marks its extent needsync itself).
    written: Mutex<Written>,
    /// An attach's resync from the peer has not finished: needsync extents
    /// are read from the peer, whatever the connector says.
    attaching: AtomicBool,
    /// `<state_dir>/<resource>.detached`.
    marker: PathBuf,
    /// The marker is durable for the current detachment.
    marker_durable: tokio::sync::Mutex<bool>,
}

#[derive(Default)]
pub(super) struct Written {
    pub extents: BTreeSet<u64>,
    pub attaching: bool,
}

impl Detach {
    pub fn new(policy: OnIoError, marker: PathBuf) -> Detach {
        Detach {
            detach: AtomicBool::new(policy == OnIoError::Detach),
            state: AtomicU8::new(LocalState::Attached.code()),
            errors: AtomicU64::new(0),
            written: Mutex::default(),
            attaching: AtomicBool::new(false),
            marker,
            marker_durable: tokio::sync::Mutex::new(false),
        }
    }

    pub fn set_policy(&self, policy: OnIoError) {
        self.detach.store(policy == OnIoError::Detach, Relaxed);
    }

    pub fn detaches(&self) -> bool {
        self.detach.load(Relaxed)
    }

    pub fn state(&self) -> LocalState {
        LocalState::of(self.state.load(SeqCst))
    }

    pub fn set_state(&self, s: LocalState) {
        self.state.store(s.code(), SeqCst);
    }

    pub fn is_detached(&self) -> bool {
        self.state() == LocalState::Detached
    }

    pub fn errors(&self) -> u64 {
        self.errors.load(Relaxed)
    }

    pub fn count_error(&self) {
        self.errors.fetch_add(1, Relaxed);
    }

    pub fn clear_errors(&self) {
        self.errors.store(0, Relaxed);
    }

    pub fn attaching(&self) -> bool {
        self.attaching.load(SeqCst)
    }

    pub fn written(&self) -> std::sync::MutexGuard<'_, Written> {
        self.written.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where the marker of a detached component of `resource` is kept.
pub fn marker_path(state_dir: &Path, resource: &str) -> PathBuf {
    state_dir.join(format!("{resource}.detached"))
}

/// Creates the marker durably (the file, then its directory).
fn write_marker(path: &Path, resource: &str) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::File::create(path)?;
    writeln!(
        f,
        "{resource}: local component detached after an I/O error; its copy is stale until \
         resynced from the peer"
    )?;
    f.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// Removes the marker durably; one that is not there is fine.
pub fn remove_marker(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    std::fs::File::open(path.parent().unwrap_or(Path::new("/")))?.sync_all()
}

/// The errno name of a local error (`EIO`, `ENOSPC`, ...), for the
/// `io-error` event's args; the error's text when it has no errno.
pub(super) fn errno_text(e: &io::Error) -> String {
    // Errors from the metadata store carry the errno only in their text.
    let text = e.to_string();
    let parsed = || {
        let tail = text.rsplit_once("(os error ")?.1;
        tail.strip_suffix(')')?.parse::<i32>().ok()
    };
    match e.raw_os_error().or_else(parsed) {
        Some(n) => nix_name(n),
        None => text,
    }
}

fn nix_name(n: i32) -> String {
    match n {
        libc::EIO => "EIO".into(),
        libc::ENOSPC => "ENOSPC".into(),
        libc::EROFS => "EROFS".into(),
        libc::EDQUOT => "EDQUOT".into(),
        libc::ENXIO => "ENXIO".into(),
        libc::ENODEV => "ENODEV".into(),
        n => format!("errno {n}"),
    }
}

/// What the first half of an attach left to do.
pub enum AttachStart {
    /// Nothing to copy: the component answers again and is in use.
    Done(String),
    /// The extents written while detached are needsync (durably) and
    /// reads of them go to the peer: copy them from it over this link,
    /// then call [`DataPath::attach_done`].
    Resync(Arc<Link>),
}

impl DataPath {
    /// The local component's state (`on_io_error`).
    pub fn local_state(&self) -> LocalState {
        self.detach.state()
    }

    /// Local I/O errors since the component was last attached or opened.
    pub fn local_errors(&self) -> u64 {
        self.detach.errors()
    }

    pub fn is_detached(&self) -> bool {
        self.detach.is_detached()
    }

    /// The local component failed `op` (`read`, `write`, `trim`, `zero`,
    /// `flush`, `metadata`): counted, logged, `io-error <op> <errno>`. A
    /// secondary detaches itself; a primary with `pass_on` is marked
    /// failed; with `detach` the primary's [`DataPath::try_detach`] decides.
    pub(super) fn local_error(&self, op: &str, e: &io::Error) {
        self.detach.count_error();
        let text = errno_text(e);
        tracing::error!(resource = %self.name, op, error = %e, "local component failed");
        // One event per episode, not per failing request: the first error
        // of a component in use; later ones are counted (`list`) and logged.
        if self.detach.state() == LocalState::Attached {
            self.emit(Kind::IoError, &[op, &text], &[("ERROR", e.to_string())]);
        }
        // A secondary detaches itself: its copy is behind (the primary,
        // told by the error in the REPLY, drops the link and goes degraded)
        // and it refuses the primary until `hastctl attach` on it. A primary
        // with `pass_on`: failed until attached again. With `detach` the
        // primary's `try_detach` decides (detached, or failed with the
        // event aborted).
        if self.side == Side::Secondary {
            if self.detach.state() != LocalState::Detached {
                self.detach.set_state(LocalState::Detached);
                tracing::warn!(resource = %self.name, "local component detached: refusing the primary until `hastctl attach {}`", self.name);
                self.emit(Kind::Detach, &[], &[]);
            }
        } else if !self.detach.detaches() && self.detach.state() == LocalState::Attached {
            self.detach.set_state(LocalState::Failed);
        }
    }

    /// The peer's copy is current: linked, nothing left to copy to it (an
    /// attach's resync copies the other way: the peer has everything).
    fn peer_current(&self) -> bool {
        if self.detach.attaching() {
            return self.link().is_some();
        }
        self.link().is_some()
            && !self.syncing()
            && !self.sync_from_peer.load(Relaxed)
            && self.map().needsync_count() == 0
    }

    /// After a local failure: detach the component if the policy says so and
    /// the peer can serve in its place (`possible`: the request at hand can
    /// be completed by the peer). True if the component is detached now.
    /// Otherwise the component is marked failed and, with `detach`, the
    /// `detach` event is recorded aborted (once per failure period).
    pub(super) fn try_detach(&self, possible: bool) -> bool {
        if self.side != Side::Primary {
            return false;
        }
        if !self.detach.detaches() {
            if self.detach.state() == LocalState::Attached {
                self.detach.set_state(LocalState::Failed);
            }
            return false;
        }
        if self.detach.is_detached() {
            return possible && self.link().is_some();
        }
        if possible && self.peer_current() {
            self.detach.set_state(LocalState::Detached);
            {
                // Failed again during an attach: its needsync extents stay
                // in the map; the next attach starts over.
                let mut w = self.detach.written();
                w.attaching = false;
                self.detach.attaching.store(false, SeqCst);
            }
            // Writers waiting for an activemap write leave now (that write
            // will not happen) and go through the peer.
            self.release_map_waiters();
            tracing::warn!(
                resource = %self.name,
                "local component detached after an I/O error: serving from the secondary; \
                 repair it and run `hastctl attach {}`",
                self.name
            );
            self.emit(Kind::Detach, &[], &[]);
            return true;
        }
        if self.detach.state() == LocalState::Attached {
            self.detach.set_state(LocalState::Failed);
            tracing::warn!(
                resource = %self.name,
                "local component failed and cannot be detached (no healthy secondary): \
                 errors go to the clients; `hastctl attach {}` once repaired",
                self.name
            );
            self.events.emit_unhandled(
                &self.name,
                Kind::Detach,
                &[],
                &[("ROLE", self.side.role_name().to_string())],
                State::Aborted,
                "no healthy secondary to serve from",
            );
        }
        false
    }

    /// Before a write goes to the peer alone: the marker that tells a
    /// restarted hastd this copy is stale is durable (written once per
    /// detachment). False if it cannot be: the write is then refused (EIO)
    /// rather than acknowledged on a copy a restart would take for current;
    /// the next write tries again.
    pub(super) async fn detached_durable(&self) -> bool {
        let mut done = self.detach.marker_durable.lock().await;
        if *done {
            return true;
        }
        let path = self.detach.marker.clone();
        let name = self.name.clone();
        let r = tokio::task::spawn_blocking(move || write_marker(&path, &name))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
        match r {
            Ok(()) => *done = true,
            Err(e) => tracing::error!(
                resource = %self.name,
                marker = %self.detach.marker.display(),
                "cannot record the detachment, writes fail until it can: {e}"
            ),
        }
        *done
    }

    /// The detachment is over (attached and resynced, or closed with the
    /// copy marked inconsistent): the marker goes.
    async fn clear_marker(&self) {
        let mut done = self.detach.marker_durable.lock().await;
        let path = self.detach.marker.clone();
        let r = tokio::task::spawn_blocking(move || remove_marker(&path))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e.to_string())));
        match r {
            Ok(()) => *done = false,
            Err(e) => {
                tracing::warn!(resource = %self.name, "cannot remove {}: {e}", self.detach.marker.display())
            }
        }
    }

    /// A write goes to the peer alone (detached): its extents are resynced
    /// from the peer at attach. After an attach began, marked needsync at
    /// once instead.
    pub(super) fn track(&self, offset: u64, len: u64) {
        let mut w = self.detach.written();
        let mut m = self.map();
        let first = m.extent_of(offset);
        let last = m.extent_of(offset + len.max(1) - 1);
        if w.attaching {
            let image = image_of(m.map_bytes().len(), first..=last);
            m.merge_needsync(&image);
            drop(m);
            self.meta_kick.notify_one();
        } else {
            w.extents.extend(first..=last);
        }
    }

    /// Checks that the local component answers again: its header read
    /// back and rewritten (the next generation, crash-atomic), and the data
    /// synced.
    async fn check_local(&self) -> Result<(), String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store.read_header().map_err(|e| e.to_string())?;
            store.file().sync_data().map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())??;
        self.update_header(|_| {})
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// `hastctl attach` (and the retry of an aborted `detach` event), first
    /// half: the component must answer again (else an error, nothing
    /// changed). A component that failed without being detached is simply
    /// in use again. A detached one gets the extents written meanwhile (and
    /// any still dirty) marked needsync durably, reads of them sent to the
    /// peer, and is in use again for everything else; its copy is marked
    /// inconsistent until [`DataPath::attach_done`], so a crash before
    /// that never promotes it. Needs the link: the peer has the data.
    pub async fn attach_start(self: &Arc<Self>) -> Result<AttachStart, String> {
        let _pass = self
            .gate
            .enter()
            .ok_or_else(|| "the resource is closing".to_string())?;
        let state = self.detach.state();
        if self.detach.attaching() && self.syncing() {
            return Ok(AttachStart::Done(
                "the resync from the secondary of an earlier attach is still running".into(),
            ));
        }
        if self.detach.attaching() {
            // An attach's resync did not finish: resume it.
            self.check_local()
                .await
                .map_err(|e| format!("local component still failing: {e}"))?;
            let link = self.link().ok_or_else(|| {
                "the secondary is not connected: the resync of the attach cannot resume".to_string()
            })?;
            return Ok(AttachStart::Resync(link));
        }
        if state == LocalState::Attached && self.detach.errors() == 0 {
            return Ok(AttachStart::Done(
                "local component attached, no errors".into(),
            ));
        }
        if self.side == Side::Secondary {
            // Nothing to copy here: the primary's next connection resyncs
            // this copy (its activemap has every extent it could not
            // apply here).
            self.check_local()
                .await
                .map_err(|e| format!("local component still failing: {e}"))?;
            self.detach.set_state(LocalState::Attached);
            self.detach.clear_errors();
            tracing::info!(resource = %self.name, "local component attached again: accepting the primary");
            self.emit(Kind::Attach, &[], &[]);
            return Ok(AttachStart::Done(
                "local component answers again; the primary's next connection resyncs it".into(),
            ));
        }
        if state == LocalState::Detached && self.link().is_none() {
            return Err(
                "the secondary is not connected: the extents written while detached cannot be \
                 copied back; still detached"
                    .into(),
            );
        }
        self.check_local()
            .await
            .map_err(|e| format!("local component still failing: {e}"))?;
        if state != LocalState::Detached {
            self.detach.set_state(LocalState::Attached);
            self.detach.clear_errors();
            tracing::info!(resource = %self.name, "local component attached again");
            self.emit(Kind::Attach, &[], &[]);
            // This copy served every acknowledged write. Extents a failed
            // write left needsync are copied to the peer by a new
            // connection (the handshake decides, as after any outage), so
            // the copies do not stay apart until a role change.
            let resync = self.map().needsync_count() > 0 && !self.syncing();
            if let Some(link) = self.link().filter(|_| resync) {
                link.fail("attach: reconnecting to copy the extents that failed to the secondary");
                return Ok(AttachStart::Done(
                    "local component answers again; errors cleared; reconnecting to resync the \
                     failed extents to the secondary"
                        .into(),
                ));
            }
            return Ok(AttachStart::Done(
                "local component answers again; errors cleared".into(),
            ));
        }
        let link = self
            .link()
            .ok_or_else(|| "the secondary disconnected: still detached".to_string())?;
        let extents = {
            let mut w = self.detach.written();
            w.attaching = true;
            self.detach.attaching.store(true, SeqCst);
            let mut m = self.map();
            let image = image_of(m.map_bytes().len(), w.extents.iter().copied());
            m.merge_needsync(&image);
            // Whatever is still dirty may have missed this copy (a write
            // whose local sync failed): copied from the peer too.
            m.dirty_to_needsync();
            self.sync_from_peer.store(true, SeqCst);
            self.detach.set_state(LocalState::Attached);
            m.needsync_count()
        };
        let marked = async {
            self.persist_map().await?;
            self.update_header(|h| h.flags |= hast_meta::FLAG_INCONSISTENT)
                .await?;
            Ok::<_, DpError>(())
        };
        if let Err(e) = marked.await {
            self.detach.set_state(LocalState::Detached);
            self.detach.written().attaching = false;
            self.detach.attaching.store(false, SeqCst);
            self.release_map_waiters();
            return Err(format!("local component still failing: {e}"));
        }
        tracing::info!(resource = %self.name, extents, "local component attached: resyncing from the secondary");
        Ok(AttachStart::Resync(link))
    }

    /// `hastctl attach`, second half: the resync from the peer completed
    /// (every extent copied, both copies flushed). The copy is consistent
    /// again; `attach` event.
    pub async fn attach_done(&self) -> Result<(), String> {
        if self.map().needsync_count() > 0 {
            return Err("extents left to copy".into());
        }
        self.update_header(|h| h.flags &= !hast_meta::FLAG_INCONSISTENT)
            .await
            .map_err(|e| e.to_string())?;
        self.sync_from_peer.store(false, Relaxed);
        {
            let mut w = self.detach.written();
            w.attaching = false;
            w.extents.clear();
            self.detach.attaching.store(false, SeqCst);
        }
        self.detach.clear_errors();
        self.clear_marker().await;
        tracing::info!(resource = %self.name, "local component attached and resynced from the secondary");
        self.emit(Kind::Attach, &[], &[]);
        Ok(())
    }

    /// Demotion or stop while detached: the peer flushed; this copy lacks
    /// what was written meanwhile. Those extents (and any dirty) are marked
    /// dirty in its activemap and the copy inconsistent, so it is only ever
    /// the target of a resync (never promoted, never a source). If the
    /// component still fails, the close fails.
    pub(super) async fn close_detached(&self) -> Result<hast_meta::Header, DpError> {
        let flushed = self.barrier().await;
        {
            let w = self.detach.written();
            let mut m = self.map();
            let image = image_of(m.map_bytes().len(), w.extents.iter().copied());
            m.merge_needsync(&image);
        }
        self.detach.set_state(LocalState::Failed);
        self.write_whole_map().await?;
        let h = self
            .update_header(|h| h.flags |= hast_meta::FLAG_INCONSISTENT)
            .await?;
        self.clear_marker().await;
        tracing::warn!(resource = %self.name, "closed while detached: this copy is marked inconsistent until resynced from the peer");
        if let Err(e) = flushed {
            // The peer's copy is the peer's to keep; this one is safe now.
            tracing::warn!(resource = %self.name, "closed while detached: the peer's flush failed: {e}");
        }
        Ok(h)
    }
}

/// An activemap image with the bits of `extents` set.
fn image_of(bytes: usize, extents: impl IntoIterator<Item = u64>) -> Vec<u8> {
    let mut image = vec![0u8; bytes];
    for e in extents {
        if let Some(b) = image.get_mut((e / 8) as usize) {
            *b |= 1 << (e % 8);
        }
    }
    image
}

#[cfg(test)]
mod tests {
    use super::errno_text;
    use std::io;

    #[test]
    fn errno_names() {
        let cases = [
            (io::Error::from_raw_os_error(libc::EIO), "EIO"),
            (io::Error::from_raw_os_error(libc::ENOSPC), "ENOSPC"),
            (io::Error::from_raw_os_error(libc::EROFS), "EROFS"),
            (io::Error::from_raw_os_error(libc::EPERM), "errno 1"),
            (
                io::Error::other("/x: write activemap: No space left on device (os error 28)"),
                "ENOSPC",
            ),
            (io::Error::other("I/O worker failed"), "I/O worker failed"),
        ];
        for (e, want) in cases {
            assert_eq!(errno_text(&e), want, "{e}");
        }
    }
}
