//! Scenario tables for the activemap, and a model-based property test of its
//! safety invariants under random interleavings, flush failures and torn flushes.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;

const ES: u64 = 4096;

/// One step of a scenario. Extents are in extent units (extent size 4096).
#[derive(Debug, Clone, Copy)]
enum Op {
    /// write_start(first extent, extent count) and the expected answer.
    Start(u64, u64, Option<u64>),
    /// write_start on a raw byte range.
    StartAt(u64, u64, Option<u64>),
    Done(u64, u64, bool),
    DoneAt(u64, u64, bool),
    /// begin_flush; expected job generation (None = no job).
    Begin(Option<u64>),
    /// Page offsets of the last job.
    Pages(&'static [u64]),
    /// flush_done(gen): the last job's pages reach the simulated disk.
    FlushDone(u64),
    /// flush_failed(last job).
    Fail,
    /// begin_flush + flush_done; a job must exist.
    Flush,
    /// barrier_start, expected ticket.
    BStart(u64),
    BDone(u64),
    /// barrier_start + barrier_done.
    Barrier,
    Synced(u64),
    AllNeedsync,
    /// Exact set of bits in the in-memory image.
    Dirty(&'static [u64]),
    /// Exact set of bits on the simulated disk.
    Durable(&'static [u64]),
    Needsync(&'static [u64]),
    Flushed(u64),
    Inflight(u64),
}
use Op::*;

fn bits(map: &[u8]) -> Vec<u64> {
    (0..map.len() as u64 * 8)
        .filter(|&e| map[(e / 8) as usize] & (1 << (e % 8)) != 0)
        .collect()
}

fn run(name: &str, extents: u64, keepdirty: u32, ops: &[Op]) {
    let datasize = extents * ES;
    let mut disk = vec![0u8; map_size(datasize, ES as u32) as usize];
    let mut am = ActiveMap::new(ES as u32, datasize, keepdirty, &disk, true).unwrap();
    let mut job: Option<FlushJob> = None;
    for (i, op) in ops.iter().enumerate() {
        let at = format!("{name}: step {i} {op:?}");
        match *op {
            Start(e, n, want) => assert_eq!(am.write_start(e * ES, n * ES), want, "{at}"),
            StartAt(o, l, want) => assert_eq!(am.write_start(o, l), want, "{at}"),
            Done(e, n, ok) => am.write_done(e * ES, n * ES, ok),
            DoneAt(o, l, ok) => am.write_done(o, l, ok),
            Begin(want) => {
                let j = am.begin_flush();
                assert_eq!(j.as_ref().map(|j| j.gen), want, "{at}");
                if j.is_some() {
                    job = j;
                }
            }
            Pages(want) => {
                let got: Vec<u64> = job.as_ref().unwrap().pages.iter().map(|p| p.0).collect();
                assert_eq!(got, want, "{at}");
            }
            FlushDone(gen) => {
                let j = job.take().unwrap();
                assert_eq!(j.gen, gen, "{at}");
                for (off, bytes) in &j.pages {
                    disk[*off as usize..*off as usize + bytes.len()].copy_from_slice(bytes);
                }
                am.flush_done(gen);
            }
            Fail => am.flush_failed(job.take().unwrap()),
            Flush => {
                let j = am.begin_flush().unwrap_or_else(|| panic!("{at}: no job"));
                for (off, bytes) in &j.pages {
                    disk[*off as usize..*off as usize + bytes.len()].copy_from_slice(bytes);
                }
                am.flush_done(j.gen);
            }
            BStart(want) => assert_eq!(am.barrier_start(), want, "{at}"),
            BDone(t) => am.barrier_done(t),
            Barrier => {
                let t = am.barrier_start();
                am.barrier_done(t);
            }
            Synced(e) => am.synced(e),
            AllNeedsync => am.set_all_needsync(),
            Dirty(want) => {
                assert_eq!(bits(am.map_bytes()), want, "{at}");
                assert_eq!(am.dirty_count(), want.len() as u64, "{at}");
            }
            Durable(want) => assert_eq!(bits(&disk), want, "{at}"),
            Needsync(want) => {
                assert_eq!(am.needsync_extents().collect::<Vec<_>>(), want, "{at}");
                assert_eq!(am.needsync_count(), want.len() as u64, "{at}");
            }
            Flushed(g) => assert_eq!(am.flushed_gen(), g, "{at}"),
            Inflight(n) => assert_eq!(am.inflight_extents(), n, "{at}"),
        }
    }
}

#[test]
fn scenarios() {
    let all10: &[u64] = &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
    let table: &[(&str, u64, u32, &[Op])] = &[
        (
            "nothing changed, nothing to flush",
            16,
            4,
            &[Begin(None), Barrier, Begin(None)],
        ),
        (
            "first write to a clean extent waits for the flush that sets its bit",
            16,
            4,
            &[
                Start(0, 1, Some(1)),
                Dirty(&[0]),
                Durable(&[]),
                Begin(Some(1)),
                Pages(&[0]),
                Flushed(0),
                FlushDone(1),
                Durable(&[0]),
                Flushed(1),
                Start(0, 1, None),
                Inflight(1),
                Done(0, 1, true),
                Done(0, 1, true),
                Inflight(0),
            ],
        ),
        (
            "a second writer before flush_done waits too, also after the snapshot",
            16,
            4,
            &[
                Start(0, 1, Some(1)),
                Start(0, 1, Some(1)),
                Begin(Some(1)),
                Start(0, 1, Some(1)),
                FlushDone(1),
                Start(0, 1, None),
                Begin(None),
            ],
        ),
        (
            "a bit set after the snapshot goes with the next generation",
            16,
            4,
            &[
                Start(0, 1, Some(1)),
                Begin(Some(1)),
                Start(1, 1, Some(2)),
                Begin(None), // one job at a time
                FlushDone(1),
                Durable(&[0]),
                Start(1, 1, Some(2)),
                Begin(Some(2)),
                FlushDone(2),
                Durable(&[0, 1]),
                Start(1, 1, None),
            ],
        ),
        (
            "a write spanning two extents",
            16,
            4,
            &[
                StartAt(ES - 512, 1024, Some(1)),
                Dirty(&[0, 1]),
                Inflight(2),
                Flush,
                Durable(&[0, 1]),
                StartAt(ES - 512, 1024, None),
                Inflight(2),
                DoneAt(ES - 512, 1024, true),
                DoneAt(ES - 512, 1024, true),
                Inflight(0),
            ],
        ),
        (
            "a write spanning two map pages flushes both",
            70000,
            4,
            &[
                Start(32767, 2, Some(1)),
                Begin(Some(1)),
                Pages(&[0, 4096]),
                FlushDone(1),
                Durable(&[32767, 32768]),
            ],
        ),
        (
            "keepdirty: the oldest becomes a candidate, cleared only by a barrier started after",
            16,
            2,
            &[
                Start(0, 1, Some(1)),
                Flush,
                Done(0, 1, true),
                Start(1, 1, Some(2)),
                Flush,
                Done(1, 1, true),
                Barrier,
                Dirty(&[0, 1]), // both kept dirty
                BStart(2),
                Start(2, 1, Some(3)),
                Flush,
                Done(2, 1, true), // evicts 0
                BDone(2),
                Dirty(&[0, 1, 2]), // barrier 2 started before 0 was evicted
                BStart(3),
                BDone(3),
                Dirty(&[1, 2]),
                Durable(&[0, 1, 2]),
                Flush,
                Durable(&[1, 2]),
            ],
        ),
        (
            "rewriting a kept-dirty extent costs no metadata write",
            16,
            2,
            &[
                Start(0, 1, Some(1)),
                Flush,
                Done(0, 1, true),
                Barrier,
                Start(0, 1, None),
                Done(0, 1, true),
                Begin(None),
            ],
        ),
        (
            "an extent with a write in flight is never cleared",
            16,
            1,
            &[
                Start(0, 1, Some(1)),
                Start(1, 1, Some(1)),
                Flush,
                Done(1, 1, true), // 0 evicted while in flight
                Barrier,
                Dirty(&[0, 1]),
                Done(0, 1, true),
                Dirty(&[0, 1]),
                Barrier,
                Dirty(&[1]),
                Flush,
                Durable(&[1]),
            ],
        ),
        (
            "needsync stays across barriers until synced, then needs a barrier",
            16,
            1,
            &[
                Start(0, 1, Some(1)),
                Flush,
                Done(0, 1, false),
                Start(1, 1, Some(2)),
                Flush,
                Done(1, 1, true),
                Barrier,
                Barrier,
                Dirty(&[0, 1]),
                Needsync(&[0]),
                BStart(3),
                Synced(0),
                Needsync(&[]),
                BDone(3),
                Dirty(&[0, 1]),
                Barrier,
                Dirty(&[1]),
                Flush,
                Durable(&[1]),
            ],
        ),
        (
            "a failed flush keeps its pages changed; the next generation releases waiters",
            16,
            4,
            &[
                Start(0, 1, Some(1)),
                Begin(Some(1)),
                Begin(None),
                Fail,
                Flushed(0),
                Start(0, 1, Some(1)),
                Begin(Some(2)),
                Pages(&[0]),
                FlushDone(2),
                Flushed(2),
                Durable(&[0]),
                Start(0, 1, None),
            ],
        ),
        (
            "a cleared bit set again waits for the next flush",
            16,
            1,
            &[
                Start(0, 1, Some(1)),
                Flush,
                Done(0, 1, true),
                Start(1, 1, Some(2)),
                Flush,
                Done(1, 1, true), // 0 is a candidate
                Barrier,
                Dirty(&[1]),
                Begin(Some(3)),       // carries 0 cleared
                Start(0, 1, Some(4)), // set again after the snapshot
                FlushDone(3),
                Durable(&[1]),
                Start(0, 1, Some(4)),
                Begin(Some(4)),
                FlushDone(4),
                Durable(&[0, 1]),
                Start(0, 1, None),
            ],
        ),
        (
            "barriers completing out of order",
            16,
            1,
            &[
                Start(0, 1, Some(1)),
                Flush,
                Done(0, 1, true),
                BStart(1),
                Start(1, 1, Some(2)),
                Flush,
                Done(1, 1, true), // 0 candidate after barrier 1 started
                BStart(2),
                BStart(3),
                BDone(1),
                Dirty(&[0, 1]),
                BDone(3),
                Dirty(&[1]),
                BDone(2),
                Dirty(&[1]),
            ],
        ),
        (
            "set_all_needsync: every write waits for the bulk flush; barriers clear nothing",
            10,
            2,
            &[
                AllNeedsync,
                Dirty(all10),
                Needsync(all10),
                Start(3, 1, Some(1)),
                Begin(Some(1)),
                Start(4, 1, Some(1)),
                FlushDone(1),
                Durable(all10),
                Start(5, 1, None),
                Done(3, 1, true),
                Done(4, 1, true),
                Done(5, 1, true),
                Barrier,
                Dirty(all10),
                Synced(0),
                Synced(9),
                Needsync(&[1, 2, 3, 4, 5, 6, 7, 8]),
                Barrier,
                Dirty(&[1, 2, 3, 4, 5, 6, 7, 8]),
            ],
        ),
        (
            "a partial last extent",
            3,
            4,
            &[
                StartAt(2 * ES + 100, ES - 100, Some(1)),
                Dirty(&[2]),
                Flush,
                Durable(&[2]),
            ],
        ),
    ];
    for &(name, extents, keepdirty, ops) in table {
        run(name, extents, keepdirty, ops);
    }
}

#[test]
fn new_from_ondisk_map() {
    // 20 extents of 4096 bytes: one map page.
    let datasize = 20 * ES;
    let mut ondisk = vec![0u8; 4096];
    ondisk[0] = 0b1000_0101; // extents 0, 2, 7
    ondisk[2] = 0b1111_0000; // extents 20..23 are past the end: ignored
    ondisk[100] = 0xff; // likewise
    for peer in [true, false] {
        let mut am = ActiveMap::new(ES as u32, datasize, 4, &ondisk, peer).unwrap();
        assert_eq!(am.extent_count(), 20);
        assert_eq!(am.dirty_count(), 3, "peer {peer}");
        assert_eq!(bits(am.map_bytes()), [0, 2, 7]);
        // Bits past the end were dropped: the page is rewritten.
        let job = am.begin_flush().unwrap();
        assert_eq!(bits(&job.pages[0].1), [0, 2, 7]);
        am.flush_done(job.gen);
        // Bits read from disk are durable: writes there need no flush.
        assert_eq!(am.write_start(2 * ES, ES), None);
        am.write_done(2 * ES, ES, true);
        let t = am.barrier_start();
        am.barrier_done(t);
        if peer {
            // The peer may lack those writes: resync them, keep them dirty.
            assert_eq!(am.needsync_extents().collect::<Vec<_>>(), [0, 2, 7]);
            assert_eq!(bits(am.map_bytes()), [0, 2, 7]);
        } else {
            // No peer: nothing to differ from; cleared after the first barrier, except
            // the extent just written (kept dirty by the LRU).
            assert_eq!(am.needsync_count(), 0);
            assert_eq!(bits(am.map_bytes()), [2]);
        }
    }
    // A clean map has nothing to flush.
    let mut am = ActiveMap::new(ES as u32, datasize, 4, &[0u8; 4096], true).unwrap();
    assert!(am.begin_flush().is_none());
}

#[test]
fn new_rejects_bad_arguments() {
    let map = vec![0u8; 4096];
    let cases: &[(u32, u64, u32, usize, i32)] = &[
        (3000, 1 << 20, 4, 4096, crate::error::EX_USAGE),
        (4096, 1 << 20, 0, 4096, crate::error::EX_USAGE),
        (4096, 1 << 20, 65537, 4096, crate::error::EX_USAGE),
        (4096, 1 << 20, 4, 4095, crate::error::EX_DATAERR),
        (4096, 1 << 20, 4, 0, crate::error::EX_DATAERR),
        (4096, 0, 4, 0, crate::error::EX_DATAERR),
        // 2^29 extents would need a 64 MiB map: refused before allocating.
        (4096, 1 << 41, 4, 4096, crate::error::EX_DATAERR),
    ];
    for &(es, datasize, kd, len, code) in cases {
        let err = ActiveMap::new(es, datasize, kd, &map[..len.min(4096)], true).unwrap_err();
        assert_eq!(err.exit_code(), code, "{es} {datasize} {kd} {len}: {err}");
    }
}

/// In release builds a range past datasize is clamped (debug builds assert: it is a
/// caller bug).
#[test]
#[cfg_attr(debug_assertions, should_panic)]
fn range_past_datasize_is_clamped() {
    let mut am = ActiveMap::new(ES as u32, 4 * ES, 4, &[0u8; 4096], true).unwrap();
    assert_eq!(am.write_start(3 * ES, 10 * ES), Some(1));
    assert_eq!(bits(am.map_bytes()), [3]);
    assert_eq!(am.write_start(100 * ES, ES), None);
    am.write_done(3 * ES, 10 * ES, true);
    assert_eq!(am.inflight_extents(), 0);
}

// ---- model-based property test ----

/// 40000 extents: two map pages. Operations touch a few extents around the page
/// boundaries so pages, LRU eviction and reuse all happen.
const EXTENTS: u64 = 40000;
const HOT: [u64; 10] = [0, 1, 2, 3, 4, 32766, 32767, 32768, 32769, 39999];

/// Every extent a step can touch (a write covers up to two, `dirty_ahead` the next).
fn touched() -> Vec<u64> {
    let mut v: Vec<u64> = HOT
        .iter()
        .flat_map(|&e| [e, e + 1, e + 2])
        .filter(|&e| e < EXTENTS)
        .collect();
    v.sort();
    v.dedup();
    v
}

#[derive(Debug, Clone)]
enum Step {
    Start(usize, u64),
    /// A write of n extents starting where the last one ended (a sequential stream).
    Next(u64),
    Done(usize, bool),
    Begin,
    FlushDone,
    /// The job failed after writing the pages selected by the mask (torn).
    FlushFail(u8),
    BarrierStart,
    BarrierDone(usize),
    Synced(usize),
    AllNeedsync,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..HOT.len(), 1u64..=2).prop_map(|(i, n)| Step::Start(i, n)),
        2 => (1u64..=2).prop_map(Step::Next),
        5 => (any::<usize>(), prop::bool::weighted(0.8)).prop_map(|(i, ok)| Step::Done(i, ok)),
        3 => Just(Step::Begin),
        3 => Just(Step::FlushDone),
        1 => any::<u8>().prop_map(Step::FlushFail),
        2 => Just(Step::BarrierStart),
        2 => any::<usize>().prop_map(Step::BarrierDone),
        1 => (0..HOT.len()).prop_map(Step::Synced),
        1 => prop::bool::weighted(0.05).prop_map(|b| if b { Step::AllNeedsync } else { Step::Begin }),
    ]
}

struct Writer {
    first: u64,
    n: u64,
    /// Generation to wait for; None once it may be issued.
    wait: Option<u64>,
}

/// What the activemap must respect, kept the simple way.
struct Model {
    keepdirty: usize,
    memtab: HashMap<u64, u32>,
    needsync: HashSet<u64>,
    all_needsync: bool,
    /// Write order, most recent last (distinct).
    lru: Vec<u64>,
    /// Extents whose last completed write (or resync) is not yet covered by a barrier
    /// that started after it: extent -> barriers started at completion.
    uncovered: HashMap<u64, u64>,
    barriers: u64,
}

impl Model {
    fn in_lru(&self, e: u64) -> bool {
        self.lru.iter().rev().take(self.keepdirty).any(|&x| x == e)
    }
    fn needsync(&self, e: u64) -> bool {
        self.needsync.contains(&e)
    }
}

fn disk_bit(disk: &[u8], e: u64) -> bool {
    disk[(e / 8) as usize] & (1 << (e % 8)) != 0
}

fn apply(disk: &mut [u8], pages: &[(u64, Vec<u8>)], mask: u8) {
    for (i, (off, bytes)) in pages.iter().enumerate() {
        if mask & (1 << (i % 8)) != 0 {
            disk[*off as usize..*off as usize + bytes.len()].copy_from_slice(bytes);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn safety_invariants_hold(keepdirty in 1u32..=4, steps in prop::collection::vec(step(), 1..120)) {
        let datasize = EXTENTS * ES;
        let mut disk = vec![0u8; map_size(datasize, ES as u32) as usize];
        let mut am = ActiveMap::new(ES as u32, datasize, keepdirty, &disk, true).unwrap();
        let mut m = Model {
            keepdirty: keepdirty as usize, memtab: HashMap::new(), needsync: HashSet::new(),
            all_needsync: false, lru: Vec::new(), uncovered: HashMap::new(), barriers: 0,
        };
        let mut writers: Vec<Writer> = Vec::new();
        let mut job: Option<FlushJob> = None;
        let mut tickets: Vec<u64> = Vec::new();
        let mut last_end = 0u64;

        for s in &steps {
            let start = match *s {
                Step::Start(i, n) => Some((HOT[i], n)),
                Step::Next(n) if last_end < EXTENTS => Some((last_end, n)),
                _ => None,
            };
            if let Some((first, n)) = start {
                let n = n.min(EXTENTS - first);
                let wait = am.write_start(first * ES, n * ES);
                if let Some(g) = wait {
                    prop_assert!(g > am.flushed_gen());
                }
                for e in first..first + n {
                    *m.memtab.entry(e).or_insert(0) += 1;
                    m.lru.retain(|&x| x != e);
                    m.lru.push(e);
                }
                if let Some(e) = am.dirty_ahead(first * ES, n * ES) {
                    // Marked as if written: the model keeps it dirty the same way.
                    prop_assert_eq!(first * ES, last_end * ES, "not sequential");
                    prop_assert_eq!(e, first + n);
                    m.lru.retain(|&x| x != e);
                    m.lru.push(e);
                }
                last_end = first + n;
                writers.push(Writer { first, n, wait });
            }
            match *s {
                Step::Start(..) | Step::Next(_) => {}
                Step::Done(i, ok) => {
                    if !writers.is_empty() {
                        let w = writers.swap_remove(i % writers.len());
                        am.write_done(w.first * ES, w.n * ES, ok);
                        for e in w.first..w.first + w.n {
                            let c = m.memtab.get_mut(&e).unwrap();
                            *c -= 1;
                            if *c == 0 {
                                m.memtab.remove(&e);
                            }
                            if !ok {
                                m.needsync.insert(e);
                            }
                            m.uncovered.insert(e, m.barriers);
                        }
                    }
                }
                Step::Begin => {
                    if let Some(j) = am.begin_flush() {
                        prop_assert!(job.is_none(), "two jobs outstanding");
                        // No job ever clears a bit that must stay set.
                        for (off, bytes) in &j.pages {
                            for e in touched() {
                                let first = off * 8;
                                if e < first || e >= first + bytes.len() as u64 * 8 {
                                    continue;
                                }
                                if !disk_bit(bytes, e - first) {
                                    prop_assert!(!m.memtab.contains_key(&e), "cleared in flight {e}");
                                    prop_assert!(!m.needsync(e), "cleared needsync {e}");
                                    prop_assert!(!m.in_lru(e), "cleared kept-dirty {e}");
                                    prop_assert!(!m.uncovered.contains_key(&e), "cleared before a barrier {e}");
                                }
                            }
                        }
                        job = Some(j);
                    } else {
                        // Liveness: nobody waits for a generation no job will bring.
                        prop_assert!(job.is_some() || writers.iter().all(|w| w.wait.is_none()),
                            "waiters but nothing to flush");
                    }
                }
                Step::FlushDone => {
                    if let Some(j) = job.take() {
                        apply(&mut disk, &j.pages, 0xff);
                        am.flush_done(j.gen);
                        prop_assert_eq!(am.flushed_gen(), j.gen);
                    }
                }
                Step::FlushFail(mask) => {
                    if let Some(j) = job.take() {
                        let before = am.flushed_gen();
                        apply(&mut disk, &j.pages, mask);
                        am.flush_failed(j);
                        prop_assert_eq!(am.flushed_gen(), before);
                    }
                }
                Step::BarrierStart => {
                    tickets.push(am.barrier_start());
                    m.barriers += 1;
                }
                Step::BarrierDone(i) => {
                    if !tickets.is_empty() {
                        let t = tickets.swap_remove(i % tickets.len());
                        am.barrier_done(t);
                        m.uncovered.retain(|_, since| *since >= t);
                    }
                }
                Step::Synced(i) => {
                    let e = HOT[i];
                    am.synced(e);
                    if m.needsync.remove(&e) {
                        m.uncovered.insert(e, m.barriers);
                    }
                }
                Step::AllNeedsync => {
                    am.set_all_needsync();
                    m.all_needsync = true;
                    m.needsync.extend(touched());
                }
            }
            // Writers whose generation is durable may issue their data write.
            for w in writers.iter_mut() {
                if w.wait.is_some_and(|g| am.flushed_gen() >= g) {
                    w.wait = None;
                }
            }
            // The safety invariant: every issued write has its bits durable.
            for w in writers.iter().filter(|w| w.wait.is_none()) {
                for e in w.first..w.first + w.n {
                    prop_assert!(disk_bit(&disk, e), "issued write on {} but bit not durable", e);
                }
            }
            let ones: u64 = am
                .map_bytes()
                .chunks_exact(8)
                .map(|c| u64::from(u64::from_le_bytes(c.try_into().unwrap()).count_ones()))
                .sum();
            prop_assert_eq!(am.dirty_count(), ones);
            prop_assert_eq!(am.inflight_extents(), m.memtab.len() as u64);
            if !m.all_needsync {
                let want: Vec<u64> = { let mut v: Vec<u64> = m.needsync.iter().copied().collect(); v.sort(); v };
                prop_assert_eq!(am.needsync_extents().collect::<Vec<_>>(), want);
            }
        }

        // Liveness: finish everything, resync everything, one more barrier and
        // flush; exactly the kept-dirty extents remain dirty on disk.
        if let Some(j) = job.take() {
            apply(&mut disk, &j.pages, 0xff);
            am.flush_done(j.gen);
        }
        for w in writers.drain(..) {
            am.write_done(w.first * ES, w.n * ES, true);
        }
        for t in tickets.drain(..) {
            am.barrier_done(t);
        }
        let ns: Vec<u64> = am.needsync_extents().collect();
        for e in ns {
            am.synced(e);
        }
        let t = am.barrier_start();
        am.barrier_done(t);
        while let Some(j) = am.begin_flush() {
            apply(&mut disk, &j.pages, 0xff);
            am.flush_done(j.gen);
        }
        let mut kept: Vec<u64> = m.lru.iter().rev().take(m.keepdirty).copied().collect();
        kept.sort();
        prop_assert_eq!(bits(&disk), kept.clone());
        prop_assert_eq!(bits(am.map_bytes()), kept);
        prop_assert_eq!(am.inflight_extents(), 0);
        prop_assert_eq!(am.needsync_count(), 0);
    }
}

#[test]
fn merge_and_cursor() {
    // 20 extents of 4 KiB; the peer had extents 3 and 17 dirty.
    let mut m = ActiveMap::new(4096, 20 * ES, 4, &[0u8; 4096], true).unwrap();
    let mut peer = vec![0u8; 4096];
    peer[0] = 1 << 3;
    peer[2] = 1 << 1;
    assert_eq!(m.merge_needsync(&peer), 2);
    assert_eq!(m.merge_needsync(&peer), 0, "merging twice adds nothing");
    assert_eq!(m.needsync_count(), 2);
    assert_eq!(m.next_needsync(0), Some(3));
    assert_eq!(m.next_needsync(4), Some(17));
    assert_eq!(m.next_needsync(18), None);
    // The merged bits must reach the disk before a sync relies on them.
    let g = m.pending_gen().expect("merged bits pending");
    let job = m.begin_flush().unwrap();
    assert_eq!(job.gen, g);
    m.flush_done(job.gen);
    assert_eq!(m.pending_gen(), None);
    m.synced(3);
    assert_eq!(m.next_needsync(0), Some(17));
    // Own dirty bits (a write that never reached the peer) become needsync too.
    let mut n = ActiveMap::new(4096, 20 * ES, 4, &[0u8; 4096], true).unwrap();
    n.write_start(5 * ES, ES);
    n.write_done(5 * ES, ES, true);
    assert_eq!(n.needsync_count(), 0);
    assert_eq!(n.dirty_to_needsync(), 1);
    assert_eq!(n.next_needsync(0), Some(5));
}

/// `dirty_ahead` on a stream of 1 KiB writes over 4 KiB extents:
/// (offset, len) -> the extent marked ahead.
#[test]
fn dirty_ahead_marks_the_next_extent_of_a_sequential_stream_only() {
    const K: u64 = 1024;
    let mut am = ActiveMap::new(ES as u32, 8 * ES, 16, &[0u8; 4096], true).unwrap();
    let cases: &[(u64, u64, Option<u64>, &str)] = &[
        (0, K, None, "first quarter of extent 0"),
        (K, K, None, "up to the middle of 0, not past it"),
        (2 * K, K, Some(1), "past the middle of 0: 1 is marked"),
        (3 * K, K, None, "1 is dirty already"),
        (4 * K, 2 * K, None, "first half of 1"),
        (6 * K, K, Some(2), "past the middle of 1: 2"),
        (20 * K, K, None, "a jump is not sequential"),
        (21 * K, K, None, "sequential again, up to the middle of 5"),
        (22 * K, K, Some(6), "past the middle of 5: 6"),
        (23 * K, K, None, "6 is dirty already"),
        (28 * K, 4 * K, None, "extent 7 is the last, no next"),
        (6 * K, 3 * K, None, "a jump back is not sequential"),
    ];
    for &(offset, len, want, what) in cases {
        am.write_start(offset, len);
        assert_eq!(am.dirty_ahead(offset, len), want, "{what}");
        am.write_done(offset, len, true);
    }
    // The marked extents are dirty in memory and go out with the next flush,
    // after which a write there has nothing to wait for.
    assert!(am.is_dirty(1) && am.is_dirty(2) && am.is_dirty(6));
    assert!(!am.is_dirty(3) && !am.is_dirty(4));
    let job = am.begin_flush().expect("a flush job");
    am.flush_done(job.gen);
    assert_eq!(am.write_start(8 * K, K), None, "2 is durable: no wait");
    assert!(
        am.write_start(16 * K, K).is_some(),
        "4 was never marked: wait"
    );
}

/// A data area that ends inside its last extent: with every extent dirty,
/// `dirty_bytes` is the data size, never `extents * extentsize` past it.
#[test]
fn dirty_bytes_never_exceed_datasize() {
    let datasize = 3 * ES + 512;
    let ondisk = vec![0u8; map_size(datasize, ES as u32) as usize];
    let mut am = ActiveMap::new(ES as u32, datasize, 8, &ondisk, true).unwrap();
    assert_eq!(am.dirty_bytes(), 0);
    am.write_start(0, ES);
    assert_eq!(am.dirty_bytes(), ES);
    am.write_start(3 * ES, 512);
    assert_eq!(am.dirty_bytes(), ES + 512);
    am.set_all_needsync();
    am.write_start(0, datasize);
    assert_eq!(am.dirty_count(), 4);
    assert_eq!(am.dirty_bytes(), datasize);
}
