//! The journal file: `<state_dir>/events.journal`, an append-only sequence
//! of checksummed records (see `record.rs`): one per event appended and one
//! per state change. Every append is fdatasync'ed before it returns, so an
//! event is on disk before anyone handles it.
//!
//! Opening replays the file: the last record of each event wins; a torn or
//! corrupt record is skipped with a warning (a torn tail is truncated away);
//! an event found `running` is recorded `aborted` (the handler died while
//! its hook ran). Done events are pruned by [`Bounds`]; failed and aborted
//! ones are kept until retried. The file is compacted (rewritten with only
//! the live entries, then renamed over the old one) when dead records
//! outnumber live ones.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{Entry, Kind, State};

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
    #[error("event {seq} is {state}: only failed or aborted events can be retried")]
    NotRetryable { seq: u64, state: State },
}

/// A journal just opened, with what replaying it found.
pub struct Opened {
    pub journal: Journal,
    /// One line per skipped record (torn tail, bad checksum).
    pub warnings: Vec<String>,
    /// Events that were `running` and are now `aborted`.
    pub aborted: Vec<u64>,
}

pub struct Journal {
    _private: (),
}

impl Journal {
    /// Opens (creating `dir` with mode 0700 and the file with 0600 if
    /// needed) and replays the journal in `dir`.
    pub fn open(_dir: &Path, _bounds: Bounds) -> Result<Opened, JournalError> {
        unimplemented!("journal")
    }

    /// Appends a new pending event, durably; returns it with its seq.
    pub fn append(
        &mut self,
        _resource: &str,
        _kind: Kind,
        _args: Vec<String>,
        _details: Vec<(String, String)>,
        _time_ms: u64,
    ) -> Result<Entry, JournalError> {
        unimplemented!("journal")
    }

    /// Records a new state of event `seq`, durably (`Running` counts an
    /// attempt); prunes done events beyond the bounds.
    pub fn set_state(
        &mut self,
        _seq: u64,
        _state: State,
        _note: &str,
    ) -> Result<Entry, JournalError> {
        unimplemented!("journal")
    }

    /// Makes failed and aborted events pending again: those of `kind` (any
    /// kind when `None`) when `seqs` is empty, else exactly `seqs` (each
    /// must exist, be failed or aborted, and be of `kind` if given; else
    /// nothing changes). Returns the seqs made pending, in order.
    pub fn retry(&mut self, _kind: Option<Kind>, _seqs: &[u64]) -> Result<Vec<u64>, JournalError> {
        unimplemented!("journal")
    }

    /// The pending event with the lowest seq.
    pub fn next_pending(&self) -> Option<&Entry> {
        unimplemented!("journal")
    }

    /// Every entry kept, in seq order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        std::iter::empty()
    }

    pub fn get(&self, _seq: u64) -> Option<&Entry> {
        unimplemented!("journal")
    }

    pub fn path(&self) -> &Path {
        unimplemented!("journal")
    }
}
