//! The journal's rules by example (replay, torn tails, running → aborted,
//! retry, pruning, compaction), then by random operation sequences against
//! a plain in-memory model (proptest).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use proptest::prelude::*;

use super::*;

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("hast-events-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }

    /// The state dir (not created: the journal creates it).
    fn dir(&self) -> PathBuf {
        self.0.join("state")
    }

    fn file(&self) -> PathBuf {
        self.dir().join(FILE_NAME)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(t: &TempDir, bounds: Bounds) -> Opened {
    Journal::open(&t.dir(), bounds).expect("open")
}

fn open_clean(t: &TempDir, bounds: Bounds) -> Journal {
    let o = open(t, bounds);
    assert!(o.warnings.is_empty(), "{:?}", o.warnings);
    assert!(o.aborted.is_empty(), "{:?}", o.aborted);
    o.journal
}

fn add(j: &mut Journal, kind: Kind) -> u64 {
    j.append(
        "r0",
        kind,
        vec!["a".into()],
        vec![("ROLE".into(), "primary".into())],
        1000,
    )
    .expect("append")
    .event
    .seq
}

fn all(j: &Journal) -> Vec<Entry> {
    j.entries().cloned().collect()
}

fn file_len(t: &TempDir) -> u64 {
    std::fs::metadata(t.file()).expect("journal file").len()
}

#[test]
fn creates_dir_and_file_private() {
    let t = TempDir::new("create");
    let j = open_clean(&t, Bounds::default());
    assert_eq!(j.path(), t.file());
    let mode = |p: &Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&t.dir()), 0o700);
    assert_eq!(mode(&t.file()), 0o600);
    assert!(j.is_empty());
    assert_eq!(j.next_seq(), 1);
    assert!(j.next_pending().is_none());
}

#[test]
fn ten_thousand_events_survive_reopen() {
    let t = TempDir::new("10k");
    let mut j = open_clean(&t, Bounds::default());
    let start = Instant::now();
    for i in 0..10_000u64 {
        let e = j
            .append(
                &format!("r{}", i % 7),
                Kind::ALL[i as usize % Kind::ALL.len()],
                vec![i.to_string()],
                vec![("EPOCH".into(), i.to_string())],
                1_700_000_000_000 + i,
            )
            .expect("append");
        assert_eq!(e.event.seq, i + 1);
    }
    let appended = start.elapsed();
    // Some handled, in every state.
    for seq in (1..=10_000).step_by(97) {
        j.set_state(seq, State::Running, "").expect("running");
        let st = [State::Done, State::Failed, State::Aborted][seq as usize % 3];
        j.set_state(seq, st, &format!("note {seq}")).expect("state");
    }
    let before = all(&j);
    assert_eq!(before.len(), 10_000);
    drop(j);
    let start = Instant::now();
    let mut j = open_clean(&t, Bounds::default());
    let reopened = start.elapsed();
    eprintln!("10000 appends (each fdatasync'ed): {appended:?}; reopen: {reopened:?}");
    assert_eq!(all(&j), before);
    assert_eq!(j.next_seq(), 10_001);
    assert_eq!(j.next_pending().map(|e| e.event.seq), Some(2));
    assert_eq!(add(&mut j, Kind::Role), 10_001);
}

#[test]
fn running_is_aborted_at_open_durably_and_retryable() {
    let t = TempDir::new("abort");
    let mut j = open_clean(&t, Bounds::default());
    let a = add(&mut j, Kind::Role);
    let b = add(&mut j, Kind::Connect);
    let c = add(&mut j, Kind::Detach);
    j.set_state(a, State::Running, "").expect("running");
    j.set_state(b, State::Running, "").expect("running");
    let failed = j
        .set_state(b, State::Failed, "exit status 3")
        .expect("failed");
    assert_eq!(
        (failed.attempts, failed.note.as_str()),
        (1, "exit status 3")
    );
    // Killed here: a's hook was running.
    drop(j);
    let o = open(&t, Bounds::default());
    assert_eq!(o.aborted, vec![a]);
    assert!(o.warnings.is_empty(), "{:?}", o.warnings);
    let j = o.journal;
    let e = j.get(a).expect("kept");
    assert_eq!(
        (e.state, e.attempts, e.note.as_str()),
        (State::Aborted, 1, ABORTED_NOTE)
    );
    assert_eq!(j.get(b).map(|e| e.state), Some(State::Failed));
    assert_eq!(j.next_pending().map(|e| e.event.seq), Some(c));
    let snapshot = all(&j);
    drop(j);
    // Recorded: the next open finds it aborted already.
    let mut j = open_clean(&t, Bounds::default());
    assert_eq!(all(&j), snapshot);
    assert_eq!(j.retry(None, &[a]).expect("retry"), vec![a]);
    let e = j.get(a).expect("kept");
    assert_eq!((e.state, e.note.as_str()), (State::Pending, ""));
    assert_eq!(j.next_pending().map(|e| e.event.seq), Some(a));
    let e = j.set_state(a, State::Running, "").expect("running");
    assert_eq!(e.attempts, 2, "attempts counted across the abort");
    j.set_state(a, State::Done, "exit status 0").expect("done");
    drop(j);
    let j = open_clean(&t, Bounds::default());
    assert_eq!(
        j.get(a).map(|e| (e.state, e.attempts)),
        Some((State::Done, 2))
    );
}

#[test]
fn unhandled_event_recorded_aborted() {
    // hastd's emit_unhandled: appended, then at once aborted with a note.
    let t = TempDir::new("unhandled");
    let mut j = open_clean(&t, Bounds::default());
    let s = add(&mut j, Kind::Detach);
    j.set_state(s, State::Aborted, "no healthy secondary")
        .expect("aborted");
    assert!(j.next_pending().is_none());
    drop(j);
    let j = open_clean(&t, Bounds::default());
    let e = j.get(s).expect("kept");
    assert_eq!((e.state, e.attempts), (State::Aborted, 0));
    assert_eq!(e.note, "no healthy secondary");
}

#[test]
fn torn_tail_is_truncated_and_appends_follow_it() {
    let t = TempDir::new("torn");
    let mut j = open_clean(&t, Bounds::default());
    for _ in 0..5 {
        add(&mut j, Kind::Role);
    }
    let whole = file_len(&t);
    drop(j);
    // The last record torn by a crash in its write.
    let f = OpenOptions::new().write(true).open(t.file()).expect("file");
    f.set_len(whole - 3).expect("truncate");
    drop(f);
    let o = open(&t, Bounds::default());
    assert_eq!(o.warnings.len(), 2, "{:?}", o.warnings);
    assert!(o.warnings[0].contains("torn tail"), "{:?}", o.warnings);
    assert!(o.warnings[1].contains("truncated"), "{:?}", o.warnings);
    let mut j = o.journal;
    assert_eq!(j.len(), 4);
    let four = file_len(&t);
    assert!(four < whole - 3, "truncated to the last good record");
    // Never acknowledged whole, so its seq was never given out durably.
    assert_eq!(add(&mut j, Kind::Connect), 5);
    let snapshot = all(&j);
    drop(j);
    let j = open_clean(&t, Bounds::default());
    assert_eq!(all(&j), snapshot);
    drop(j);

    // Random garbage after the last record.
    let len = file_len(&t);
    let mut f = OpenOptions::new()
        .append(true)
        .open(t.file())
        .expect("file");
    let mut x: u32 = 0x9e37_79b9;
    let garbage: Vec<u8> = (0..300)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    f.write_all(&garbage).expect("garbage");
    f.write_all(b"HEV1\x10\0\0\0").expect("a torn header too");
    drop(f);
    let o = open(&t, Bounds::default());
    assert!(!o.warnings.is_empty());
    assert_eq!(all(&o.journal), snapshot);
    assert_eq!(file_len(&t), len);
    let mut j = o.journal;
    assert_eq!(add(&mut j, Kind::Thaw), 6);
    drop(j);
    let j = open_clean(&t, Bounds::default());
    assert_eq!(j.len(), 6);
}

#[test]
fn damaged_record_in_the_middle_loses_only_its_event() {
    let t = TempDir::new("middle");
    let mut j = open_clean(&t, Bounds::default());
    let mut ends = Vec::new();
    for _ in 0..3 {
        add(&mut j, Kind::Role);
        ends.push(file_len(&t));
    }
    let snapshot = all(&j);
    drop(j);
    let mut bytes = std::fs::read(t.file()).expect("read");
    bytes[ends[0] as usize + 20] ^= 0xff;
    std::fs::write(t.file(), &bytes).expect("write");
    let o = open(&t, Bounds::default());
    assert_eq!(o.warnings.len(), 1, "{:?}", o.warnings);
    assert!(o.warnings[0].contains("checksum"), "{:?}", o.warnings);
    assert_eq!(
        all(&o.journal),
        vec![snapshot[0].clone(), snapshot[2].clone()]
    );
    assert_eq!(o.journal.next_seq(), 4);
    assert_eq!(file_len(&t), ends[2], "not a tail: nothing truncated");
}

#[test]
fn retry_by_kind_and_by_seq_all_or_nothing() {
    let t = TempDir::new("retry");
    let mut j = open_clean(&t, Bounds::default());
    let kinds = [Kind::Role, Kind::Fence, Kind::Role, Kind::Fence, Kind::Role];
    let seqs: Vec<u64> = kinds.iter().map(|&k| add(&mut j, k)).collect();
    let states = [
        State::Failed,
        State::Aborted,
        State::Aborted,
        State::Done,
        State::Pending,
    ];
    for (&s, &st) in seqs.iter().zip(&states) {
        if st != State::Pending {
            j.set_state(s, State::Running, "").expect("running");
            j.set_state(s, st, "bad").expect("state");
        }
    }
    let before = all(&j);
    let len = file_len(&t);
    // Any one bad seq: an error, nothing changed, nothing written.
    let refused = [
        (Some(Kind::Role), vec![seqs[0], 99]),
        (None, vec![seqs[0], seqs[3]]),
        (None, vec![seqs[4], seqs[1]]),
        (Some(Kind::Role), vec![seqs[0], seqs[1]]),
    ];
    for (kind, list) in &refused {
        let err = j.retry(*kind, list).expect_err("refused");
        match err {
            JournalError::NoSuchEvent(99) => {}
            JournalError::NotRetryable { seq, state } => {
                assert!(
                    (seq, state) == (seqs[3], State::Done)
                        || (seq, state) == (seqs[4], State::Pending)
                );
            }
            JournalError::OtherKind { seq, kind, want } => {
                assert_eq!((seq, kind, want), (seqs[1], Kind::Fence, Kind::Role));
            }
            e => panic!("unexpected {e}"),
        }
        assert_eq!(all(&j), before);
        assert_eq!(file_len(&t), len);
    }
    // By kind: role's failed and aborted, not fence's.
    assert_eq!(
        j.retry(Some(Kind::Role), &[]).expect("retry"),
        vec![seqs[0], seqs[2]]
    );
    assert!(file_len(&t) > len);
    assert_eq!(j.get(seqs[1]).map(|e| e.state), Some(State::Aborted));
    assert_eq!(
        j.retry(Some(Kind::Role), &[]).expect("none left"),
        Vec::<u64>::new()
    );
    // By seq, duplicates and order do not matter.
    assert_eq!(
        j.retry(Some(Kind::Fence), &[seqs[1], seqs[1]])
            .expect("retry"),
        vec![seqs[1]]
    );
    for &s in &seqs[..3] {
        let e = j.get(s).expect("kept");
        assert_eq!(
            (e.state, e.note.as_str(), e.attempts),
            (State::Pending, "", 1)
        );
    }
    assert_eq!(j.next_pending().map(|e| e.event.seq), Some(seqs[0]));
    let after = all(&j);
    drop(j);
    assert_eq!(all(&open_clean(&t, Bounds::default())), after);
}

#[test]
fn clear_dismisses_failed_and_aborted_only() {
    let t = TempDir::new("clear");
    let mut j = open_clean(&t, Bounds::default());
    let seqs: Vec<u64> = (0..3).map(|_| add(&mut j, Kind::Detach)).collect();
    for (&s, st) in seqs.iter().zip([State::Failed, State::Aborted]) {
        j.set_state(s, State::Running, "").expect("running");
        j.set_state(s, st, "bad").expect("state");
    }
    // A pending one among them: refused, nothing changed.
    let before = all(&j);
    let err = j
        .clear(None, &[seqs[0], seqs[2]], "x")
        .expect_err("pending");
    assert!(
        matches!(err, JournalError::NotRetryable { seq, state: State::Pending } if seq == seqs[2])
    );
    assert_eq!(all(&j), before);
    assert_eq!(
        j.clear(Some(Kind::Detach), &[], "cleared by the operator")
            .expect("clear"),
        vec![seqs[0], seqs[1]]
    );
    for &s in &seqs[..2] {
        let e = j.get(s).expect("kept while within the bounds");
        assert_eq!(
            (e.state, e.note.as_str(), e.attempts),
            (State::Done, "cleared by the operator", 1)
        );
    }
    assert_eq!(j.next_pending().map(|e| e.event.seq), Some(seqs[2]));
    let after = all(&j);
    drop(j);
    assert_eq!(all(&open_clean(&t, Bounds::default())), after);
}

#[test]
fn unknown_seq_and_oversize_refused() {
    let t = TempDir::new("refuse");
    let mut j = open_clean(&t, Bounds::default());
    assert!(matches!(
        j.set_state(1, State::Done, ""),
        Err(JournalError::NoSuchEvent(1))
    ));
    let len = file_len(&t);
    let big = vec!["x".repeat(record::MAX_PAYLOAD)];
    let err = j
        .append("r0", Kind::Role, big, vec![], 1)
        .expect_err("too large");
    assert!(
        matches!(err, JournalError::TooLarge { seq: 1, .. }),
        "{err}"
    );
    assert_eq!(file_len(&t), len);
    assert_eq!(add(&mut j, Kind::Role), 1, "the refused event used no seq");
    let note = "n".repeat(record::MAX_PAYLOAD);
    assert!(matches!(
        j.set_state(1, State::Failed, &note),
        Err(JournalError::TooLarge { seq: 1, .. })
    ));
    assert_eq!(j.get(1).map(|e| e.state), Some(State::Pending));
}

#[test]
fn full_when_open_max_events_are_not_done() {
    let t = TempDir::new("full");
    let bounds = Bounds {
        open_max: 3,
        ..Bounds::default()
    };
    let mut j = open_clean(&t, bounds);
    let a = add(&mut j, Kind::Role);
    add(&mut j, Kind::Role);
    let c = add(&mut j, Kind::Role);
    j.set_state(c, State::Failed, "").expect("failed");
    assert!(matches!(
        j.append("r", Kind::Role, vec![], vec![], 0),
        Err(JournalError::Full(3))
    ));
    j.set_state(a, State::Done, "").expect("done");
    assert_eq!(add(&mut j, Kind::Role), 4);
    assert!(matches!(
        j.append("r", Kind::Role, vec![], vec![], 0),
        Err(JournalError::Full(3))
    ));
}

#[test]
fn done_pruned_by_count_and_age_failed_and_aborted_kept() {
    let t = TempDir::new("prune");
    let bounds = Bounds {
        done_max: 3,
        ..Bounds::default()
    };
    let mut j = open_clean(&t, bounds);
    let seqs: Vec<u64> = (0..10).map(|_| add(&mut j, Kind::SyncDone)).collect();
    j.set_state(seqs[0], State::Failed, "").expect("failed");
    j.set_state(seqs[1], State::Aborted, "").expect("aborted");
    for &s in &seqs[2..] {
        j.set_state(s, State::Done, "").expect("done");
    }
    let kept: Vec<u64> = j.entries().map(|e| e.event.seq).collect();
    assert_eq!(kept, vec![seqs[0], seqs[1], seqs[7], seqs[8], seqs[9]]);
    assert!(matches!(
        j.set_state(seqs[2], State::Pending, ""),
        Err(JournalError::NoSuchEvent(_))
    ));
    drop(j);
    let j = open_clean(&t, bounds);
    assert_eq!(j.entries().map(|e| e.event.seq).collect::<Vec<_>>(), kept);
    assert_eq!(j.next_seq(), 11);
    drop(j);

    // By age: the done ones are older than 20 ms once we have slept.
    std::thread::sleep(Duration::from_millis(50));
    let aged = Bounds {
        done_age: Duration::from_millis(20),
        ..bounds
    };
    let mut j = open_clean(&t, aged);
    assert_eq!(
        j.entries().map(|e| e.event.seq).collect::<Vec<_>>(),
        vec![seqs[0], seqs[1]]
    );
    // And while running: a new done one is pruned once it is old.
    let s = add(&mut j, Kind::Role);
    j.set_state(s, State::Done, "").expect("done");
    assert!(j.get(s).is_some());
    std::thread::sleep(Duration::from_millis(50));
    j.set_state(seqs[0], State::Failed, "again")
        .expect("failed");
    assert!(j.get(s).is_none());
    assert_eq!(j.len(), 2);
}

#[test]
fn pruned_stays_pruned_after_reopen() {
    // Found by the proptest: three done at once prune the oldest; one of
    // the others made pending again leaves two done, so a replay that only
    // re-applied the bound would bring the pruned one back.
    let t = TempDir::new("pruned");
    let bounds = Bounds {
        done_max: 2,
        ..Bounds::default()
    };
    let mut j = open_clean(&t, bounds);
    let seqs: Vec<u64> = (0..3).map(|_| add(&mut j, Kind::Role)).collect();
    for &s in &seqs {
        j.set_state(s, State::Done, "").expect("done");
    }
    assert!(j.get(seqs[0]).is_none());
    j.set_state(seqs[1], State::Pending, "").expect("pending");
    let snapshot = all(&j);
    drop(j);
    assert_eq!(all(&open_clean(&t, bounds)), snapshot);
}

#[test]
fn compaction_shrinks_the_file_and_keeps_seqs_increasing() {
    let t = TempDir::new("compact");
    let bounds = Bounds {
        done_max: 0,
        ..Bounds::default()
    };
    let mut j = Journal::open_with(&t.dir(), bounds, 16)
        .expect("open")
        .journal;
    let keep = add(&mut j, Kind::SplitBrain);
    j.set_state(keep, State::Failed, "exit status 1")
        .expect("failed");
    let mut biggest = 0;
    for _ in 0..200 {
        let s = add(&mut j, Kind::Role);
        j.set_state(s, State::Running, "").expect("running");
        j.set_state(s, State::Done, "").expect("done");
        biggest = biggest.max(file_len(&t));
        assert!(j.records() <= 17, "compacted as it goes: {}", j.records());
    }
    assert_eq!(j.len(), 1, "every done one pruned at once");
    assert!(!t.dir().join(TMP_NAME).exists());
    let uncompacted = 200 * 3 * 150;
    assert!(biggest < uncompacted / 10, "{biggest}");
    j.compact().expect("compact");
    // Meta and the one entry left.
    assert_eq!(j.records(), 2);
    let small = file_len(&t);
    let snapshot = all(&j);
    drop(j);
    let o = Journal::open_with(&t.dir(), bounds, 16).expect("open");
    assert!(o.warnings.is_empty(), "{:?}", o.warnings);
    let mut j = o.journal;
    assert_eq!(all(&j), snapshot);
    // Event 201 was pruned and compacted away; its seq is not reused.
    assert_eq!(j.next_seq(), 202);
    assert_eq!(add(&mut j, Kind::Role), 202);
    assert!(file_len(&t) > small);
    drop(j);
    let j = Journal::open_with(&t.dir(), bounds, 16)
        .expect("open")
        .journal;
    assert_eq!(j.next_seq(), 203);
}

#[test]
fn crash_during_compaction_leaves_the_old_file() {
    let t = TempDir::new("crashcompact");
    let mut j = open_clean(&t, Bounds::default());
    for _ in 0..3 {
        add(&mut j, Kind::Role);
    }
    let snapshot = all(&j);
    drop(j);
    // A compaction that died before its rename: a half-written tmp file.
    std::fs::write(t.dir().join(TMP_NAME), b"HEV1\x05\0").expect("tmp");
    let j = open_clean(&t, Bounds::default());
    assert_eq!(all(&j), snapshot);
    assert!(!t.dir().join(TMP_NAME).exists(), "removed");
    drop(j);
    // After the rename, the new file is the journal, complete.
    let mut j = open_clean(&t, Bounds::default());
    j.compact().expect("compact");
    drop(j);
    assert_eq!(all(&open_clean(&t, Bounds::default())), snapshot);
}

#[test]
fn compacted_entry_too_large_for_one_record_is_split() {
    let t = TempDir::new("split");
    let mut j = open_clean(&t, Bounds::default());
    let half = record::MAX_PAYLOAD * 2 / 3;
    let s = j
        .append("r", Kind::IoError, vec!["a".repeat(half)], vec![], 1)
        .expect("fits")
        .event
        .seq;
    j.set_state(s, State::Failed, &"n".repeat(half))
        .expect("fits");
    j.compact().expect("compact");
    assert_eq!(j.records(), 3, "meta, event, state");
    let snapshot = all(&j);
    drop(j);
    assert_eq!(all(&open_clean(&t, Bounds::default())), snapshot);
}

// --- random operation sequences against a model ---------------------------

#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    /// An entry picked by index (one past the end: an unknown seq).
    Set(usize, usize),
    Retry(Option<usize>, Vec<usize>),
    Reopen,
    Compact,
}

const KINDS: [Kind; 3] = [Kind::Role, Kind::Fence, Kind::Detach];
const STATES: [State; 5] = [
    State::Pending,
    State::Running,
    State::Done,
    State::Failed,
    State::Aborted,
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..KINDS.len()).prop_map(Op::Append),
        6 => (0..20usize, 0..STATES.len()).prop_map(|(i, s)| Op::Set(i, s)),
        2 => (proptest::option::of(0..KINDS.len()), proptest::collection::vec(0..20usize, 0..3))
            .prop_map(|(k, v)| Op::Retry(k, v)),
        1 => Just(Op::Reopen),
        1 => Just(Op::Compact),
    ]
}

/// What the model keeps of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct M {
    kind: Kind,
    state: State,
    attempts: u32,
    note: String,
}

struct Model {
    entries: BTreeMap<u64, M>,
    next: u64,
}

const MODEL_BOUNDS: Bounds = Bounds {
    done_max: 2,
    done_age: Duration::from_secs(3600),
    open_max: 6,
};

impl Model {
    fn pick(&self, i: usize) -> u64 {
        self.entries
            .keys()
            .nth(i % (self.entries.len() + 1))
            .copied()
            .unwrap_or(self.next + 7)
    }

    fn prune(&mut self) {
        let done: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, m)| m.state == State::Done)
            .map(|(&s, _)| s)
            .collect();
        for s in done
            .iter()
            .take(done.len().saturating_sub(MODEL_BOUNDS.done_max))
        {
            self.entries.remove(s);
        }
    }

    fn seen(j: &Journal) -> BTreeMap<u64, M> {
        j.entries()
            .map(|e| {
                let m = M {
                    kind: e.event.kind,
                    state: e.state,
                    attempts: e.attempts,
                    note: e.note.clone(),
                };
                (e.event.seq, m)
            })
            .collect()
    }
}

fn open_model_journal(dir: &Path) -> Opened {
    Journal::open_with(dir, MODEL_BOUNDS, 8).expect("open")
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let t = TempDir::new("prop");
    let mut j = open_model_journal(&t.dir()).journal;
    let mut m = Model {
        entries: BTreeMap::new(),
        next: 1,
    };
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Append(k) => {
                let open = m
                    .entries
                    .values()
                    .filter(|e| e.state != State::Done)
                    .count();
                let r = j.append("r", KINDS[*k], vec![], vec![], i as u64);
                if open >= MODEL_BOUNDS.open_max {
                    prop_assert!(
                        matches!(r, Err(JournalError::Full(n)) if n == open),
                        "{r:?}"
                    );
                } else {
                    let e = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    prop_assert_eq!(e.event.seq, m.next);
                    let me = M {
                        kind: KINDS[*k],
                        state: State::Pending,
                        attempts: 0,
                        note: String::new(),
                    };
                    m.entries.insert(m.next, me);
                    m.next += 1;
                }
            }
            Op::Set(pick, st) => {
                let seq = m.pick(*pick);
                let state = STATES[*st];
                let note = format!("op {i}");
                let r = j.set_state(seq, state, &note);
                match m.entries.get_mut(&seq) {
                    None => {
                        prop_assert!(matches!(r, Err(JournalError::NoSuchEvent(s)) if s == seq))
                    }
                    Some(me) => {
                        prop_assert!(r.is_ok(), "{r:?}");
                        me.state = state;
                        me.note = note;
                        if state == State::Running {
                            me.attempts += 1;
                        }
                        m.prune();
                    }
                }
            }
            Op::Retry(kind, picks) => {
                let kind = kind.map(|k| KINDS[k]);
                let seqs: Vec<u64> = picks.iter().map(|&p| m.pick(p)).collect();
                let retryable = |s: State| matches!(s, State::Failed | State::Aborted);
                // The model's answer: the first bad seq in seq order, else
                // the chosen ones.
                let want: Result<Vec<u64>, u64> = if seqs.is_empty() {
                    Ok(m.entries
                        .iter()
                        .filter(|(_, e)| retryable(e.state) && kind.is_none_or(|k| k == e.kind))
                        .map(|(&s, _)| s)
                        .collect())
                } else {
                    let set: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
                    match set.iter().find(|s| {
                        m.entries.get(s).is_none_or(|e| {
                            !retryable(e.state) || kind.is_some_and(|k| k != e.kind)
                        })
                    }) {
                        Some(&bad) => Err(bad),
                        None => Ok(set.into_iter().collect()),
                    }
                };
                let r = j.retry(kind, &seqs);
                match (want, r) {
                    (Ok(w), Ok(got)) => {
                        prop_assert_eq!(&got, &w);
                        for s in w {
                            if let Some(e) = m.entries.get_mut(&s) {
                                e.state = State::Pending;
                                e.note.clear();
                            }
                        }
                    }
                    (Err(bad), Err(e)) => {
                        let seq = match e {
                            JournalError::NoSuchEvent(s) => s,
                            JournalError::NotRetryable { seq, .. } => seq,
                            JournalError::OtherKind { seq, .. } => seq,
                            e => return Err(TestCaseError::fail(e.to_string())),
                        };
                        prop_assert_eq!(seq, bad);
                    }
                    (w, r) => prop_assert!(false, "model {w:?}, journal {r:?}"),
                }
            }
            Op::Reopen => {
                let before: Vec<Entry> = all(&j);
                drop(j);
                let o = open_model_journal(&t.dir());
                prop_assert!(o.warnings.is_empty(), "{:?}", o.warnings);
                let running: Vec<u64> = m
                    .entries
                    .iter()
                    .filter(|(_, e)| e.state == State::Running)
                    .map(|(&s, _)| s)
                    .collect();
                prop_assert_eq!(&o.aborted, &running);
                for s in &running {
                    if let Some(e) = m.entries.get_mut(s) {
                        e.state = State::Aborted;
                        e.note = ABORTED_NOTE.to_owned();
                    }
                }
                j = o.journal;
                // Everything else exactly as it was, times included.
                let kept: Vec<Entry> = before
                    .into_iter()
                    .filter(|e| !running.contains(&e.event.seq))
                    .collect();
                let now: Vec<Entry> = all(&j)
                    .into_iter()
                    .filter(|e| !running.contains(&e.event.seq))
                    .collect();
                prop_assert_eq!(now, kept);
            }
            Op::Compact => {
                j.compact()
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
        prop_assert_eq!(Model::seen(&j), m.entries.clone(), "after {:?}", op);
        prop_assert_eq!(j.next_seq(), m.next);
        let pending = m
            .entries
            .iter()
            .find(|(_, e)| e.state == State::Pending)
            .map(|(&s, _)| s);
        prop_assert_eq!(j.next_pending().map(|e| e.event.seq), pending);
        prop_assert!(
            j.records() <= (2 * j.len()).max(8) + 1,
            "{} records",
            j.records()
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn journal_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops)?;
    }
}
