//! The group-coherence check of `tests/freeze.rs` and `tests/snapshot.rs`:
//! `tests/py/dependent_writer.py` writes record N to one export and, only
//! once that was acknowledged, commit N to another, each into slot
//! `N % slots` (a 4 KiB block starting with N as eight little-endian
//! bytes). At every instant each commit slot is at most its record slot,
//! so a copy of both that shows a commit newer than its record was not
//! taken at one instant.

use std::path::PathBuf;

use crate::env::timeout_s;
use crate::proc::Proc;
use crate::tools::python_command;

/// Bytes per slot.
pub const SLOT: usize = 4096;

/// The slot values (the first 8 bytes of each 4 KiB block) of `raw`.
pub fn slots(raw: &[u8]) -> Vec<u64> {
    raw.chunks(SLOT)
        .map(|b| u64::from_le_bytes(b[..8].try_into().expect("8 bytes")))
        .collect()
}

/// The slots where a commit is newer than its record: `(slot, record,
/// commit)`.
pub fn violations(records: &[u64], commits: &[u64]) -> Vec<(usize, u64, u64)> {
    records
        .iter()
        .zip(commits)
        .enumerate()
        .filter(|(_, (r, c))| c > r)
        .map(|(i, (r, c))| (i, *r, *c))
        .collect()
}

/// `dependent_writer.py` running against two exports.
pub struct DependentWriter {
    proc: Proc,
    stop: PathBuf,
    out: PathBuf,
}

impl DependentWriter {
    /// Starts it: records to `records`, commits to `commits` (NBD URIs),
    /// `slots` slots; its files in `dir`.
    pub fn start(dir: &std::path::Path, records: &str, commits: &str, slots: usize) -> Self {
        let stop = dir.join("writer.stop");
        let out = dir.join("writer.out");
        let mut cmd = python_command(
            "dependent_writer.py",
            &[
                "--records",
                records,
                "--commits",
                commits,
                "--slots",
                &slots.to_string(),
                "--stop-file",
                stop.to_str().expect("utf-8 path"),
            ],
        );
        let proc = Proc::spawn(&mut cmd, "dependent_writer", Some(&out)).expect("start writer");
        DependentWriter { proc, stop, out }
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Stops it and asserts that every request succeeded.
    pub fn finish(mut self) {
        std::fs::write(&self.stop, "").expect("stop file");
        let st = self.proc.wait_timeout(timeout_s(30)).expect("writer stops");
        assert!(st.success(), "writer failed ({st}):\n{}", self.output());
    }
}
