//! The activemap: which extents may differ between the two nodes, kept in memory
//! as the exact image of the on-disk map plus the bookkeeping that decides when a
//! bit may be set durably and when it may be cleared. Pure: no I/O, no clock, no
//! blocking; the daemon runs the flushes and barriers it asks for.
//!
//! # Terms
//!
//! - *bit*: the extent's bit in the in-memory image ([`ActiveMap::map_bytes`]).
//!   The on-disk map is this image as of the last completed flush job.
//! - *memtab*: number of writes (write/trim/zero) in flight on the extent.
//! - *needsync*: the extent is known or suspected to differ on the peer; only
//!   [`ActiveMap::synced`] ends that.
//! - *LRU*: the `keepdirty` most recently written extents; they stay dirty on disk
//!   so hot extents cost no metadata write each time.
//! - *candidate*: bit set, memtab 0, not in the LRU, not needsync. Recorded with
//!   the number of barriers started when it became one.
//! - *generation*: every flush job carries the next generation; `flushed_gen` is
//!   the generation of the last job that completed.
//!
//! # Invariants
//!
//! 1. memtab > 0 or needsync or in LRU  ⇒  bit set. So any snapshot of the image
//!    (a flush job) has those bits set: no flush job ever clears them.
//! 2. A bit set in memory but maybe not on disk is recorded in `pending` with the
//!    generation whose completion makes it durable (or covered by `bulk_pending`).
//!    `write_start` returns the largest such generation among the bits it relies
//!    on, so a write is issued only after its extents are dirty on disk.
//! 3. At most one flush job is outstanding. Jobs therefore complete in generation
//!    order and a failed job's pages are rewritten by a later, larger generation:
//!    `flushed_gen >= g` really means "everything job g carried is durable".
//! 4. A bit is cleared only at `barrier_done(t)` for a candidate that became one
//!    before barrier `t` started: its last write had completed before a flush of
//!    both copies began, so its data is durable and identical on both nodes.
//! 5. needsync ⊆ bit set; candidates ∩ (memtab > 0 ∪ LRU ∪ needsync) = ∅.
//!
//! Memory: the image (1 bit per extent), a needsync bitmap, a changed-page bitmap,
//! and hash maps whose size is bounded by in-flight extents, `keepdirty`, the
//! extents changed since the last flush, and the current candidates.

use std::collections::{BTreeMap, HashMap};

use crate::error::{HeaderError, MetaError};
use crate::header::{check_extentsize, check_keepdirty, extent_count, map_size};
use crate::{BLOCK_SIZE, MAP_SIZE_MAX};

const PAGE_SIZE: usize = BLOCK_SIZE as usize;
/// Extents per map page.
const PAGE_EXTENTS: u64 = BLOCK_SIZE * 8;

/// Map pages to write out, and the generation their completion makes durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlushJob {
    pub gen: u64,
    /// (offset relative to the map start, 4096 bytes), in ascending offset order.
    pub pages: Vec<(u64, Vec<u8>)>,
}

/// In-memory activemap of one resource.
#[derive(Debug)]
pub struct ActiveMap {
    extentsize: u32,
    datasize: u64,
    extent_count: u64,
    /// The on-disk map image (map_size bytes; bits past extent_count are zero).
    image: Vec<u8>,
    dirty_count: u64,
    needsync: Vec<u64>,
    needsync_count: u64,
    /// In-flight write count per extent; only extents with a count > 0 are present.
    memtab: HashMap<u64, u32>,
    lru: Lru,
    /// Candidate extent -> barriers started when it became a candidate.
    candidates: HashMap<u64, u64>,
    barriers_started: u64,
    /// Extent whose bit is set in memory -> generation that makes it durable.
    pending: HashMap<u64, u64>,
    /// Generation that makes `set_all_needsync`'s bits durable; 0 if none pending.
    bulk_pending: u64,
    changed: Vec<u64>,
    changed_list: Vec<u32>,
    next_gen: u64,
    flushed_gen: u64,
    flush_outstanding: Option<u64>,
    /// End of the last range started, to spot a sequential writer ([`ActiveMap::dirty_ahead`]).
    seq_end: u64,
}

impl ActiveMap {
    /// `ondisk` = the map bytes read from disk (len == map_size). Bits set there are
    /// needsync if `peer_configured` (the peer may lack those writes), else they become
    /// clear candidates (no peer to differ from), cleared after the first barrier.
    pub fn new(
        extentsize: u32,
        datasize: u64,
        keepdirty: u32,
        ondisk: &[u8],
        peer_configured: bool,
    ) -> Result<ActiveMap, MetaError> {
        check_extentsize(u64::from(extentsize))?;
        check_keepdirty(u64::from(keepdirty))?;
        if datasize == 0 {
            return Err(HeaderError::BadDatasize(datasize).into());
        }
        let expected = map_size(datasize, extentsize);
        if expected > MAP_SIZE_MAX {
            return Err(HeaderError::MapTooLarge(expected).into());
        }
        if ondisk.len() as u64 != expected {
            return Err(MetaError::MapSize {
                found: ondisk.len() as u64,
                expected,
            });
        }
        let count = extent_count(datasize, extentsize);
        let pages = ondisk.len() / PAGE_SIZE;
        let mut am = ActiveMap {
            extentsize,
            datasize,
            extent_count: count,
            image: ondisk.to_vec(),
            dirty_count: 0,
            needsync: vec![0; count.div_ceil(64) as usize],
            needsync_count: 0,
            memtab: HashMap::new(),
            lru: Lru::new(keepdirty),
            candidates: HashMap::new(),
            barriers_started: 0,
            pending: HashMap::new(),
            bulk_pending: 0,
            changed: vec![0; pages.div_ceil(64)],
            changed_list: Vec::new(),
            next_gen: 1,
            flushed_gen: 0,
            flush_outstanding: None,
            seq_end: 0,
        };
        // Bits past the last extent mean nothing; drop them and rewrite that page so
        // the disk image is canonical again.
        let tail_start = count / 8;
        let tail_bits = (count % 8) as u32;
        for i in tail_start as usize..am.image.len() {
            let keep = if i as u64 == tail_start && tail_bits > 0 {
                (1u8 << tail_bits) - 1
            } else {
                0
            };
            if am.image[i] & !keep != 0 {
                am.image[i] &= keep;
                am.mark_page((i / PAGE_SIZE) as u64);
            }
        }
        for (i, &byte) in am.image.iter().enumerate() {
            let mut b = byte;
            while b != 0 {
                let extent = i as u64 * 8 + u64::from(b.trailing_zeros());
                b &= b - 1;
                am.dirty_count += 1;
                if peer_configured {
                    set_word_bit(&mut am.needsync, extent);
                    am.needsync_count += 1;
                } else {
                    am.candidates.insert(extent, 0);
                }
            }
        }
        Ok(am)
    }

    /// A write/trim/zero of [offset, offset+len) is about to be issued. Marks its
    /// extents in flight, moves them to the front of the keepdirty LRU and sets their
    /// bits. Returns `Some(gen)` when the caller must wait until
    /// `flushed_gen() >= gen` before issuing the data write (a bit it relies on is not
    /// durable yet, whoever set it), `None` when every bit it needs is durable.
    /// The caller must make sure a flush runs (see [`ActiveMap::begin_flush`]).
    pub fn write_start(&mut self, offset: u64, len: u64) -> Option<u64> {
        let (first, last) = self.extent_range(offset, len)?;
        let mut need = 0;
        if self.bulk_pending > self.flushed_gen {
            need = self.bulk_pending;
        }
        for e in first..=last {
            let count = self.memtab.entry(e).or_insert(0);
            *count = count.saturating_add(1);
            self.candidates.remove(&e);
            if let Some(evicted) = self.lru.touch(e) {
                self.maybe_candidate(evicted);
            }
            if !self.bit(e) {
                self.set_bit(e);
                self.pending.insert(e, self.next_gen);
                need = need.max(self.next_gen);
            } else if let Some(&g) = self.pending.get(&e) {
                need = need.max(g);
            }
        }
        (need > self.flushed_gen).then_some(need)
    }

    /// Call after [`ActiveMap::write_start`]. A sequential writer (this range starts
    /// where the previous one ended) past the middle of its last extent will need the
    /// next extent soon: its bit is set now, as if written (it joins the keepdirty
    /// LRU), so the flush that makes it durable runs while the writer is still in
    /// this extent, instead of holding up the first write of the next one (a
    /// synchronous metadata write, ~0.5 ms here, on one write per extent of a
    /// sequential stream). Returns the extent marked, if any; the caller then makes
    /// sure a flush runs, without waiting for it. Costs at most one extent of extra
    /// resync per sequential stream after a crash; random writes never trigger it.
    pub fn dirty_ahead(&mut self, offset: u64, len: u64) -> Option<u64> {
        let sequential = offset == self.seq_end;
        self.seq_end = offset.saturating_add(len);
        let (_, last) = self.extent_range(offset, len)?;
        let es = u64::from(self.extentsize);
        let next = last + 1;
        let past_middle = self.seq_end > last * es + es / 2;
        if !sequential || !past_middle || next >= self.extent_count || self.bit(next) {
            return None;
        }
        // Bit clear: not in flight, not kept dirty, not needsync, not a candidate.
        if let Some(evicted) = self.lru.touch(next) {
            self.maybe_candidate(evicted);
        }
        self.set_bit(next);
        self.pending.insert(next, self.next_gen);
        Some(next)
    }

    /// The write started with the same range finished on every copy the replication
    /// mode waits for (`in_sync`), or did not reach the peer (`!in_sync`: its extents
    /// become needsync and stay dirty until resynced). memtab -= 1.
    ///
    /// With `in_sync` the extent may be cleared after the next barrier, so that
    /// barrier must cover this write on the peer too (in async mode: a FLUSH sent on
    /// the ordered replication stream after the write).
    pub fn write_done(&mut self, offset: u64, len: u64, in_sync: bool) {
        let Some((first, last)) = self.extent_range(offset, len) else {
            return;
        };
        for e in first..=last {
            match self.memtab.get_mut(&e) {
                Some(count) if *count > 1 => *count -= 1,
                Some(_) => {
                    self.memtab.remove(&e);
                }
                None => debug_assert!(false, "write_done without write_start on extent {e}"),
            }
            if !in_sync {
                self.set_needsync(e);
            }
            self.maybe_candidate(e);
        }
    }

    /// Map pages to write out now. `None` if nothing changed since the last job, or
    /// while the previous job is outstanding (one job at a time keeps `flushed_gen`
    /// exact; call again after `flush_done`/`flush_failed` — changes made meanwhile
    /// are grouped into the next job).
    pub fn begin_flush(&mut self) -> Option<FlushJob> {
        if self.flush_outstanding.is_some() || self.changed_list.is_empty() {
            return None;
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        self.flush_outstanding = Some(gen);
        let mut list = std::mem::take(&mut self.changed_list);
        list.sort_unstable();
        let pages = list
            .iter()
            .map(|&p| {
                clear_word_bit(&mut self.changed, u64::from(p));
                let start = p as usize * PAGE_SIZE;
                (
                    u64::from(p) * BLOCK_SIZE,
                    self.image[start..start + PAGE_SIZE].to_vec(),
                )
            })
            .collect();
        list.clear();
        self.changed_list = list;
        Some(FlushJob { gen, pages })
    }

    /// The pages of job `gen` are durable.
    pub fn flush_done(&mut self, gen: u64) {
        if self.flush_outstanding != Some(gen) {
            debug_assert!(
                false,
                "flush_done({gen}) but outstanding job is {:?}",
                self.flush_outstanding
            );
            return;
        }
        self.flush_outstanding = None;
        self.flushed_gen = gen;
        self.pending.retain(|_, g| *g > gen);
        if self.bulk_pending <= gen {
            self.bulk_pending = 0;
        }
    }

    /// The job could not be written (its pages may be torn on disk): mark them changed
    /// again. The generation does not advance; writers waiting for it are released by
    /// the next successful job, which carries a larger generation.
    pub fn flush_failed(&mut self, job: FlushJob) {
        debug_assert_eq!(self.flush_outstanding, Some(job.gen));
        if self.flush_outstanding == Some(job.gen) {
            self.flush_outstanding = None;
        }
        // Re-marking is always safe: it only rewrites the current image.
        for (offset, _) in &job.pages {
            let page = offset / BLOCK_SIZE;
            if page < self.page_count() {
                self.mark_page(page);
            }
        }
    }

    /// Generation of the last completed flush job (0 before the first).
    pub fn flushed_gen(&self) -> u64 {
        self.flushed_gen
    }

    /// A data durability barrier (a flush covering the local disk and the peer) is
    /// starting. Returns its ticket for `barrier_done`. The barrier must make durable,
    /// on both copies, every write whose `write_done` came before this call.
    pub fn barrier_start(&mut self) -> u64 {
        self.barriers_started += 1;
        self.barriers_started
    }

    /// The barrier with this ticket completed: clear (in memory; written by the next
    /// flush job) every candidate that became one before it started. O(candidates):
    /// those not cleared now became candidates while the barrier ran.
    pub fn barrier_done(&mut self, ticket: u64) {
        if ticket == 0 || ticket > self.barriers_started {
            debug_assert!(false, "barrier_done({ticket}) never started");
            return;
        }
        let ready: Vec<u64> = self
            .candidates
            .iter()
            .filter(|&(_, &since)| since < ticket)
            .map(|(&e, _)| e)
            .collect();
        for e in ready {
            self.candidates.remove(&e);
            debug_assert!(!self.memtab.contains_key(&e) && !self.lru.contains(e));
            debug_assert!(!self.is_needsync(e));
            if self.bit(e) {
                self.clear_bit(e);
            }
            self.pending.remove(&e);
        }
    }

    /// Extents to copy to the peer, ascending.
    pub fn needsync_extents(&self) -> impl Iterator<Item = u64> + '_ {
        let count = self.extent_count;
        self.needsync
            .iter()
            .enumerate()
            .flat_map(|(wi, &w)| BitIter {
                word: w,
                base: wi as u64 * 64,
            })
            .take_while(move |&e| e < count)
    }

    /// Fresh secondary: every extent must be copied.
    pub fn set_all_needsync(&mut self) {
        let full_bytes = (self.extent_count / 8) as usize;
        self.image[..full_bytes].fill(0xff);
        let tail_bits = (self.extent_count % 8) as u32;
        if tail_bits > 0 {
            self.image[full_bytes] = (1u8 << tail_bits) - 1;
        }
        self.dirty_count = self.extent_count;
        let full_words = (self.extent_count / 64) as usize;
        self.needsync[..full_words].fill(u64::MAX);
        let tail_bits = (self.extent_count % 64) as u32;
        if tail_bits > 0 {
            self.needsync[full_words] = (1u64 << tail_bits) - 1;
        }
        self.needsync_count = self.extent_count;
        self.candidates.clear();
        for page in 0..self.page_count() {
            self.mark_page(page);
        }
        // One marker instead of one pending entry per extent: writes wait for the job
        // that carries all these bits.
        self.bulk_pending = self.next_gen;
    }

    /// Marks needsync every extent whose bit is set in `other` (the peer's map
    /// image, same geometry): on connection both maps are merged, so extents
    /// that were in flight or dirty on either side get copied. The bits become
    /// durable with the next flush job; the caller waits for it before syncing.
    /// Returns how many extents became needsync.
    pub fn merge_needsync(&mut self, other: &[u8]) -> u64 {
        let mut added = 0;
        for (i, &byte) in other.iter().enumerate().take(self.image.len()) {
            if byte == 0 {
                continue;
            }
            for b in 0..8u64 {
                let e = i as u64 * 8 + b;
                if e < self.extent_count && byte & (1 << b) != 0 && !self.is_needsync(e) {
                    self.set_needsync(e);
                    added += 1;
                }
            }
        }
        added
    }

    /// Marks every extent whose bit is set in our own image needsync (a
    /// connection after an outage: whatever was dirty here may differ there).
    pub fn dirty_to_needsync(&mut self) -> u64 {
        let own = self.image.clone();
        self.merge_needsync(&own)
    }

    /// The first needsync extent at or after `from`, for the resync cursor.
    pub fn next_needsync(&self, from: u64) -> Option<u64> {
        let mut wi = (from / 64) as usize;
        let mut word = *self.needsync.get(wi)? & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                let e = wi as u64 * 64 + u64::from(word.trailing_zeros());
                return (e < self.extent_count).then_some(e);
            }
            wi += 1;
            word = *self.needsync.get(wi)?;
        }
    }

    /// The generation whose completion makes every bit set so far durable
    /// (None when nothing is pending).
    pub fn pending_gen(&self) -> Option<u64> {
        let g = self
            .pending
            .values()
            .copied()
            .max()
            .unwrap_or(0)
            .max(self.bulk_pending);
        (g > self.flushed_gen).then_some(g)
    }

    /// Resync copied the extent: it is no longer needsync; its bit is cleared after
    /// the next barrier like any candidate.
    pub fn synced(&mut self, extent: u64) {
        if extent >= self.extent_count {
            debug_assert!(false, "synced({extent}) beyond {}", self.extent_count);
            return;
        }
        if self.is_needsync(extent) {
            clear_word_bit(&mut self.needsync, extent);
            self.needsync_count -= 1;
            self.maybe_candidate(extent);
        }
    }

    /// Extents whose bit is set.
    pub fn dirty_count(&self) -> u64 {
        self.dirty_count
    }

    pub fn needsync_count(&self) -> u64 {
        self.needsync_count
    }

    /// Bytes of the data area in dirty extents. The last extent may be
    /// shorter than `extentsize` (datasize need not be a multiple of it), so
    /// this is not `dirty_count * extentsize`, which could exceed datasize
    /// (seen in `hastctl list` when every extent was dirty).
    pub fn dirty_bytes(&self) -> u64 {
        let es = u64::from(self.extentsize);
        let mut bytes = self.dirty_count * es;
        let last = self.extent_count.saturating_sub(1);
        if self.extent_count > 0 && self.is_dirty(last) {
            bytes -= es - (self.datasize - last * es);
        }
        bytes
    }

    /// Extents with at least one write in flight.
    pub fn inflight_extents(&self) -> u64 {
        self.memtab.len() as u64
    }

    /// The full in-memory map image (for the write at clean shutdown).
    pub fn map_bytes(&self) -> &[u8] {
        &self.image
    }

    pub fn extent_of(&self, offset: u64) -> u64 {
        offset / u64::from(self.extentsize)
    }

    pub fn extent_count(&self) -> u64 {
        self.extent_count
    }

    pub fn extentsize(&self) -> u32 {
        self.extentsize
    }

    pub fn datasize(&self) -> u64 {
        self.datasize
    }

    /// The extent's bit is set in the in-memory image.
    pub fn is_dirty(&self, extent: u64) -> bool {
        extent < self.extent_count && self.bit(extent)
    }

    pub fn is_needsync(&self, extent: u64) -> bool {
        extent < self.extent_count && word_bit(&self.needsync, extent)
    }

    /// Extents [first, last] of a range, clamped to the data area. A range past
    /// datasize is a caller bug: asserted in debug builds, clamped in release so it
    /// never indexes out of bounds (start and done clamp identically).
    fn extent_range(&self, offset: u64, len: u64) -> Option<(u64, u64)> {
        if len == 0 {
            return None;
        }
        let end = offset.saturating_add(len);
        debug_assert!(
            end <= self.datasize,
            "range {offset}+{len} beyond datasize {}",
            self.datasize
        );
        let end = end.min(self.datasize);
        if offset >= end {
            return None;
        }
        let es = u64::from(self.extentsize);
        Some((offset / es, (end - 1) / es))
    }

    fn maybe_candidate(&mut self, e: u64) {
        if !self.memtab.contains_key(&e)
            && !self.lru.contains(e)
            && !self.is_needsync(e)
            && self.bit(e)
        {
            self.candidates.entry(e).or_insert(self.barriers_started);
        }
    }

    fn set_needsync(&mut self, e: u64) {
        if !word_bit(&self.needsync, e) {
            set_word_bit(&mut self.needsync, e);
            self.needsync_count += 1;
        }
        self.candidates.remove(&e);
        // Invariant 1 says the bit is already set (memtab > 0); keep it true anyway.
        if !self.bit(e) {
            self.set_bit(e);
            self.pending.insert(e, self.next_gen);
        }
    }

    fn bit(&self, e: u64) -> bool {
        self.image[(e / 8) as usize] & (1 << (e % 8)) != 0
    }

    fn set_bit(&mut self, e: u64) {
        self.image[(e / 8) as usize] |= 1 << (e % 8);
        self.dirty_count += 1;
        self.mark_page(e / PAGE_EXTENTS);
    }

    fn clear_bit(&mut self, e: u64) {
        self.image[(e / 8) as usize] &= !(1 << (e % 8));
        self.dirty_count -= 1;
        self.mark_page(e / PAGE_EXTENTS);
    }

    fn page_count(&self) -> u64 {
        self.image.len() as u64 / BLOCK_SIZE
    }

    fn mark_page(&mut self, page: u64) {
        if !word_bit(&self.changed, page) {
            set_word_bit(&mut self.changed, page);
            // page < MAP_SIZE_MAX / 4096, so it fits.
            self.changed_list.push(page as u32);
        }
    }
}

fn word_bit(words: &[u64], i: u64) -> bool {
    words[(i / 64) as usize] & (1 << (i % 64)) != 0
}

fn set_word_bit(words: &mut [u64], i: u64) {
    words[(i / 64) as usize] |= 1 << (i % 64);
}

fn clear_word_bit(words: &mut [u64], i: u64) {
    words[(i / 64) as usize] &= !(1 << (i % 64));
}

struct BitIter {
    word: u64,
    base: u64,
}

impl Iterator for BitIter {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        if self.word == 0 {
            return None;
        }
        let bit = self.word.trailing_zeros();
        self.word &= self.word - 1;
        Some(self.base + u64::from(bit))
    }
}

/// The keepdirty most recently written extents. Two maps give O(log n) touch and
/// eviction of the oldest; `keepdirty` bounds both.
#[derive(Debug)]
struct Lru {
    capacity: usize,
    clock: u64,
    by_extent: HashMap<u64, u64>,
    by_age: BTreeMap<u64, u64>,
}

impl Lru {
    fn new(capacity: u32) -> Lru {
        Lru {
            capacity: capacity as usize,
            clock: 0,
            by_extent: HashMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    /// Make `e` the most recent; returns the extent evicted to make room, if any.
    fn touch(&mut self, e: u64) -> Option<u64> {
        self.clock += 1;
        if let Some(old) = self.by_extent.insert(e, self.clock) {
            self.by_age.remove(&old);
            self.by_age.insert(self.clock, e);
            return None;
        }
        self.by_age.insert(self.clock, e);
        if self.by_extent.len() > self.capacity {
            let (_, oldest) = self.by_age.pop_first()?;
            self.by_extent.remove(&oldest);
            return Some(oldest);
        }
        None
    }

    fn contains(&self, e: u64) -> bool {
        self.by_extent.contains_key(&e)
    }
}

#[cfg(test)]
mod tests;
