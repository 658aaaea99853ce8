//! The journal file: `<state_dir>/events.journal` (mode 0600), an
//! append-only sequence of checksummed records (see [`crate::record`]): one
//! per event appended, one per state change, one per event pruned. Every
//! change is one write, fdatasync'ed before it returns, so an event is on
//! disk before anyone handles it.
//!
//! Opening replays the file: the last record of each event wins; a corrupt
//! record is skipped with a warning, and a torn tail is truncated away (so
//! appends never land behind it); an event found `running` is recorded
//! `aborted` (the handler died while its hook ran). Done events are pruned
//! by [`Bounds`], and the pruning is recorded, so a replay does not bring
//! them back; failed and aborted ones are kept until retried.
//!
//! The file is compacted when it holds more than max(2 × entries, 1024)
//! records: rewritten with a `Meta` record (the next seq, so seqs of
//! pruned events are never reused) and one record per live entry, fsynced
//! under `events.journal.tmp`, then renamed over the old file and the
//! directory fsynced; a crash leaves one complete file or the other.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::record::{self, Body, EncodeError};
use crate::{now_ms, Entry, Event, Kind, State};

/// The journal's file name in the state directory.
pub const FILE_NAME: &str = "events.journal";
/// Where compaction writes the new file before renaming it over the old.
pub const TMP_NAME: &str = "events.journal.tmp";
/// The note of an event found running at open.
pub const ABORTED_NOTE: &str = "hastd stopped while its hook ran";
/// Compaction waits for at least this many records in the file, so a small
/// journal is not rewritten all the time.
pub const COMPACT_MIN: usize = 1024;

/// How much the journal keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// Done events kept (the newest ones).
    pub done_max: usize,
    /// Done events older than this are pruned.
    pub done_age: Duration,
    /// Events not done (pending, running, failed, aborted) at most; an
    /// append beyond it fails with [`JournalError::Full`].
    pub open_max: usize,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds {
            done_max: 1000,
            done_age: Duration::from_secs(7 * 24 * 3600),
            open_max: 100_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("event journal is full: {0} events not handled yet")]
    Full(usize),
    #[error("no event {0} in the journal")]
    NoSuchEvent(u64),
    #[error("event {seq} is {state}: only failed or aborted events can be retried or cleared")]
    NotRetryable { seq: u64, state: State },
    #[error("event {seq} is a {kind} event, not {want}")]
    OtherKind { seq: u64, kind: Kind, want: Kind },
    /// A record over [`record::MAX_PAYLOAD`]: the caller must keep args,
    /// details and notes short.
    #[error("event {seq}: record of {len} bytes is over the journal's limit of {max}")]
    TooLarge { seq: u64, len: usize, max: usize },
}

/// A journal just opened, with what replaying it found.
#[derive(Debug)]
pub struct Opened {
    pub journal: Journal,
    /// One line per skipped record (torn tail, bad checksum).
    pub warnings: Vec<String>,
    /// Events that were `running` and are now `aborted`.
    pub aborted: Vec<u64>,
}

/// The journal of one node: the live entries in memory, the file they were
/// replayed from and are appended to.
pub struct Journal {
    dir: PathBuf,
    path: PathBuf,
    /// Opened with O_APPEND: every write goes to the end.
    file: File,
    bounds: Bounds,
    compact_min: usize,
    entries: BTreeMap<u64, Entry>,
    /// The seqs of the pending entries, so `next_pending` is not a scan.
    pending: BTreeSet<u64>,
    /// The seqs of the done entries, oldest first, for pruning.
    done: BTreeSet<u64>,
    /// One more than the highest seq ever used.
    next_seq: u64,
    /// Records in the file, for the compaction rule.
    records: usize,
    /// The file's length after the last durable write: a failed write is
    /// truncated back to it, so later records are not behind a torn one.
    len: u64,
    /// A compaction renamed the file but fsyncing the directory failed:
    /// until it succeeds, the rename (and so every later append) is not
    /// known durable, so each write retries it.
    dir_unsynced: bool,
    /// After a failed compaction, no automatic one before the file holds
    /// this many records (the old file is still complete, only longer).
    compact_after: usize,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal")
            .field("path", &self.path)
            .field("entries", &self.entries.len())
            .field("open", &self.open_count())
            .field("next_seq", &self.next_seq)
            .field("records", &self.records)
            .finish_non_exhaustive()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl Journal {
    /// Opens (creating `dir` with mode 0700 and the file with 0600 if
    /// needed) and replays the journal in `dir`.
    pub fn open(dir: &Path, bounds: Bounds) -> Result<Opened, JournalError> {
        Journal::open_with(dir, bounds, COMPACT_MIN)
    }

    /// [`Journal::open`] with another compaction floor (tests compact
    /// small journals).
    pub(crate) fn open_with(
        dir: &Path,
        bounds: Bounds,
        compact_min: usize,
    ) -> Result<Opened, JournalError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let path = dir.join(FILE_NAME);
        // Left by a compaction that did not reach its rename: the journal
        // itself is the old file, complete.
        let tmp = dir.join(TMP_NAME);
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp)(e)),
            _ => {}
        }
        let mut file = match OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => {
                // The new file's directory entry, durably.
                sync_dir(dir)?;
                f
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(io(&path))?,
            Err(e) => return Err(io(&path)(e)),
        };
        let mut buf = Vec::new();
        file.read_to_end(&mut buf).map_err(io(&path))?;
        let decoded = record::decode_records(&buf);
        let torn = decoded.torn_tail(buf.len());
        let mut warnings = decoded.warnings;
        if torn {
            // Appends must not land behind the damage, where a later
            // replay would have to skip over it to find them.
            file.set_len(decoded.good_end as u64)
                .and_then(|()| file.sync_data())
                .map_err(io(&path))?;
            warnings.push(format!(
                "{}: truncated from {} to {} bytes",
                path.display(),
                buf.len(),
                decoded.good_end
            ));
        }
        drop(buf);

        let mut j = Journal {
            dir: dir.to_path_buf(),
            path,
            file,
            bounds,
            compact_min,
            entries: BTreeMap::new(),
            pending: BTreeSet::new(),
            done: BTreeSet::new(),
            next_seq: 1,
            records: decoded.frames,
            len: decoded.good_end as u64,
            dir_unsynced: false,
            compact_after: 0,
        };
        for body in decoded.records {
            if let Some(seq) = body.seq() {
                j.next_seq = j.next_seq.max(seq.saturating_add(1));
            }
            match body {
                Body::Meta { next_seq } => j.next_seq = j.next_seq.max(next_seq),
                Body::Event(event) => j.put(Entry {
                    updated_ms: event.time_ms,
                    event,
                    state: State::Pending,
                    attempts: 0,
                    note: String::new(),
                }),
                Body::Entry(entry) => j.put(entry),
                Body::Pruned { seq } => j.remove(seq),
                Body::State {
                    seq,
                    state,
                    updated_ms,
                    attempts,
                    note,
                } => match j.entries.get(&seq).cloned() {
                    Some(mut e) => {
                        e.state = state;
                        e.updated_ms = updated_ms;
                        e.attempts = attempts;
                        e.note = note;
                        j.put(e);
                    }
                    // Its event record was damaged.
                    None => warnings.push(format!("state of unknown event {seq} ignored")),
                },
            }
        }

        // The handler died while these ran: never re-run them by itself.
        let now = now_ms();
        let aborted: Vec<Entry> = j
            .entries
            .values()
            .filter(|e| e.state == State::Running)
            .map(|e| Entry {
                state: State::Aborted,
                updated_ms: now,
                note: ABORTED_NOTE.to_owned(),
                ..e.clone()
            })
            .collect();
        let aborted_seqs = aborted.iter().map(|e| e.event.seq).collect();
        // With pruning under (maybe new) bounds, in the same write.
        j.commit(aborted, now)?;
        if let Err(e) = j.maybe_compact() {
            warnings.push(format!("compaction failed: {e}"));
        }
        Ok(Opened {
            journal: j,
            warnings,
            aborted: aborted_seqs,
        })
    }

    /// Appends a new pending event, durably; returns it with its seq.
    pub fn append(
        &mut self,
        resource: &str,
        kind: Kind,
        args: Vec<String>,
        details: Vec<(String, String)>,
        time_ms: u64,
    ) -> Result<Entry, JournalError> {
        let open = self.open_count();
        if open >= self.bounds.open_max {
            return Err(JournalError::Full(open));
        }
        let seq = self.next_seq;
        let next = seq.checked_add(1).ok_or_else(|| JournalError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("event seqs exhausted"),
        })?;
        let event = Event {
            seq,
            time_ms,
            resource: resource.to_owned(),
            kind,
            args,
            details,
        };
        let mut buf = Vec::new();
        self.encode(&Body::Event(event.clone()), &mut buf)?;
        // Used even if the write fails: a failed write may still have
        // reached the disk, and a seq is never given to two events.
        self.next_seq = next;
        self.write(&buf, 1)?;
        let entry = Entry {
            updated_ms: event.time_ms,
            event,
            state: State::Pending,
            attempts: 0,
            note: String::new(),
        };
        self.put(entry.clone());
        self.compact_quietly();
        Ok(entry)
    }

    /// Records a new state of event `seq`, durably (`Running` counts an
    /// attempt); prunes done events beyond the bounds.
    pub fn set_state(&mut self, seq: u64, state: State, note: &str) -> Result<Entry, JournalError> {
        let mut e = self
            .entries
            .get(&seq)
            .cloned()
            .ok_or(JournalError::NoSuchEvent(seq))?;
        let now = now_ms();
        e.state = state;
        e.updated_ms = now;
        if state == State::Running {
            e.attempts = e.attempts.saturating_add(1);
        }
        e.note = note.to_owned();
        self.commit(vec![e.clone()], now)?;
        self.compact_quietly();
        Ok(e)
    }

    /// Makes failed and aborted events pending again: those of `kind` (any
    /// kind when `None`) when `seqs` is empty, else exactly `seqs` (each
    /// must exist, be failed or aborted, and be of `kind` if given; else
    /// nothing changes). Returns the seqs made pending, in order.
    pub fn retry(&mut self, kind: Option<Kind>, seqs: &[u64]) -> Result<Vec<u64>, JournalError> {
        self.reopen_or_close(kind, seqs, State::Pending, "")
    }

    /// The operator dismisses failed and aborted events (chosen as by
    /// [`Journal::retry`]): they become done, with `note` saying so, and
    /// are pruned like any done event. Returns the seqs cleared.
    pub fn clear(
        &mut self,
        kind: Option<Kind>,
        seqs: &[u64],
        note: &str,
    ) -> Result<Vec<u64>, JournalError> {
        self.reopen_or_close(kind, seqs, State::Done, note)
    }

    /// Moves the failed and aborted events chosen by `kind` and `seqs` to
    /// `to` with `note`, all or none, in one durable write.
    fn reopen_or_close(
        &mut self,
        kind: Option<Kind>,
        seqs: &[u64],
        to: State,
        note: &str,
    ) -> Result<Vec<u64>, JournalError> {
        let retryable = |s: State| matches!(s, State::Failed | State::Aborted);
        let chosen: Vec<&Entry> = if seqs.is_empty() {
            self.entries
                .values()
                .filter(|e| retryable(e.state) && kind.is_none_or(|k| e.event.kind == k))
                .collect()
        } else {
            // Every seq is checked before anything is written.
            let wanted: BTreeSet<u64> = seqs.iter().copied().collect();
            let mut v = Vec::with_capacity(wanted.len());
            for seq in wanted {
                let e = self
                    .entries
                    .get(&seq)
                    .ok_or(JournalError::NoSuchEvent(seq))?;
                if !retryable(e.state) {
                    return Err(JournalError::NotRetryable {
                        seq,
                        state: e.state,
                    });
                }
                if let Some(want) = kind.filter(|&k| k != e.event.kind) {
                    return Err(JournalError::OtherKind {
                        seq,
                        kind: e.event.kind,
                        want,
                    });
                }
                v.push(e);
            }
            v
        };
        let now = now_ms();
        let retried: Vec<Entry> = chosen
            .into_iter()
            .map(|e| Entry {
                state: to,
                updated_ms: now,
                note: note.to_string(),
                ..e.clone()
            })
            .collect();
        if retried.is_empty() {
            return Ok(Vec::new());
        }
        let seqs = retried.iter().map(|e| e.event.seq).collect();
        self.commit(retried, now)?;
        self.compact_quietly();
        Ok(seqs)
    }

    /// The pending event with the lowest seq.
    pub fn next_pending(&self) -> Option<&Entry> {
        self.pending.first().and_then(|s| self.entries.get(s))
    }

    /// Every entry kept, in seq order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    pub fn get(&self, seq: u64) -> Option<&Entry> {
        self.entries.get(&seq)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many entries are kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many entries are not done (what [`Bounds::open_max`] bounds).
    pub fn open_count(&self) -> usize {
        self.entries.len() - self.done.len()
    }

    /// The seq the next appended event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// How many records the file holds.
    pub fn records(&self) -> usize {
        self.records
    }

    /// Rewrites the file with only the live entries. Crash-safe: the new
    /// file is written and fsynced under [`TMP_NAME`], then renamed over
    /// the journal, so a crash leaves either the old file or the new one,
    /// each complete. Done by itself when the file holds more than
    /// max(2 × entries, 1024) records.
    pub fn compact(&mut self) -> Result<(), JournalError> {
        let mut buf = Vec::new();
        // First, so the highest seq survives even when its event was pruned.
        self.encode(
            &Body::Meta {
                next_seq: self.next_seq,
            },
            &mut buf,
        )?;
        let mut n = 1;
        for e in self.entries.values() {
            match record::encode_into(&Body::Entry(e.clone()), &mut buf) {
                Ok(()) => n += 1,
                // The event and its state each fit (they were written),
                // together they may not: as they were written.
                Err(EncodeError::TooLarge { .. }) => {
                    self.encode(&Body::Event(e.event.clone()), &mut buf)?;
                    self.encode(&state_body(e), &mut buf)?;
                    n += 2;
                }
                Err(EncodeError::Json(err)) => return Err(io(&self.path)(err.into())),
            }
        }
        let tmp = self.dir.join(TMP_NAME);
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp)(e)),
            _ => {}
        }
        let written = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&buf)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &self.path)?;
                Ok(f)
            });
        let file = match written {
            Ok(f) => f,
            Err(e) => {
                // Best effort: the next open removes it too.
                let _ = std::fs::remove_file(&tmp);
                return Err(io(&tmp)(e));
            }
        };
        // The rename is done: the new file is the journal from now on.
        self.file = file;
        self.len = buf.len() as u64;
        self.records = n;
        self.compact_after = 0;
        self.dir_unsynced = true;
        sync_dir(&self.dir)?;
        self.dir_unsynced = false;
        Ok(())
    }

    /// Indexes `e`, replacing any entry of its seq.
    fn put(&mut self, e: Entry) {
        let seq = e.event.seq;
        self.unindex(seq);
        match e.state {
            State::Pending => {
                self.pending.insert(seq);
            }
            State::Done => {
                self.done.insert(seq);
            }
            _ => {}
        }
        self.entries.insert(seq, e);
    }

    fn unindex(&mut self, seq: u64) {
        self.pending.remove(&seq);
        self.done.remove(&seq);
    }

    fn remove(&mut self, seq: u64) {
        self.unindex(seq);
        self.entries.remove(&seq);
    }

    /// The done entries that `done_age` and `done_max` drop once
    /// `changed` is taken in: those older than `done_age`, then the oldest
    /// (lowest seqs) beyond `done_max`. Others are never pruned: they need
    /// the handler or the operator.
    fn victims(&self, changed: &[Entry], now: u64) -> Vec<u64> {
        let age = u64::try_from(self.bounds.done_age.as_millis()).unwrap_or(u64::MAX);
        // Seq → when done, after the change.
        let mut done: BTreeMap<u64, u64> = self
            .done
            .iter()
            .filter_map(|s| self.entries.get(s).map(|e| (*s, e.updated_ms)))
            .collect();
        for e in changed {
            match e.state {
                State::Done => done.insert(e.event.seq, e.updated_ms),
                _ => done.remove(&e.event.seq),
            };
        }
        let mut victims: Vec<u64> = Vec::new();
        done.retain(|&seq, &mut updated| {
            let old = now.saturating_sub(updated) > age;
            if old {
                victims.push(seq);
            }
            !old
        });
        let excess = done.len().saturating_sub(self.bounds.done_max);
        victims.extend(done.keys().take(excess));
        victims.sort_unstable();
        victims
    }

    fn encode(&self, body: &Body, out: &mut Vec<u8>) -> Result<(), JournalError> {
        record::encode_into(body, out).map_err(|e| match e {
            EncodeError::TooLarge { len } => JournalError::TooLarge {
                seq: body.seq().unwrap_or(0),
                len,
                max: record::MAX_PAYLOAD,
            },
            EncodeError::Json(err) => io(&self.path)(err.into()),
        })
    }

    /// Records the new states of `changed` and the pruning they lead to
    /// in one durable write, then takes them in. Pruning is recorded, not
    /// redone at replay: which done events a bound drops depends on the
    /// order of changes, which replaying the last state of each cannot see.
    fn commit(&mut self, changed: Vec<Entry>, now: u64) -> Result<(), JournalError> {
        let victims = self.victims(&changed, now);
        if changed.is_empty() && victims.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for e in &changed {
            self.encode(&state_body(e), &mut buf)?;
        }
        for &seq in &victims {
            self.encode(&Body::Pruned { seq }, &mut buf)?;
        }
        self.write(&buf, changed.len() + victims.len())?;
        for e in changed {
            self.put(e);
        }
        for seq in victims {
            self.remove(seq);
        }
        Ok(())
    }

    /// Appends `buf` (`n` whole records) with one write and fdatasyncs it.
    fn write(&mut self, buf: &[u8], n: usize) -> Result<(), JournalError> {
        let r = self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data())
            .map_err(io(&self.path))
            .and_then(|()| match self.dir_unsynced {
                true => sync_dir(&self.dir),
                false => Ok(()),
            });
        match r {
            Ok(()) => {
                self.dir_unsynced = false;
                self.len += buf.len() as u64;
                self.records += n;
                Ok(())
            }
            Err(e) => {
                // Best effort: cut a partial record off, so the next one
                // follows the last good record (a replay would skip it
                // with a warning otherwise).
                let _ = self.file.set_len(self.len);
                Err(e)
            }
        }
    }

    fn maybe_compact(&mut self) -> Result<(), JournalError> {
        let limit = (2 * self.entries.len()).max(self.compact_min);
        if self.records <= limit || self.records < self.compact_after {
            return Ok(());
        }
        self.compact().inspect_err(|_| {
            self.compact_after = self.records.saturating_mul(2);
        })
    }

    /// Compaction after a write that succeeded: its failure must not fail
    /// the write (the state is durable, and the old file is still complete
    /// and right, only longer); it is tried again when the file has grown.
    fn compact_quietly(&mut self) {
        let _ = self.maybe_compact();
    }
}

fn state_body(e: &Entry) -> Body {
    Body::State {
        seq: e.event.seq,
        state: e.state,
        updated_ms: e.updated_ms,
        attempts: e.attempts,
        note: e.note.clone(),
    }
}

#[cfg(test)]
mod tests;
