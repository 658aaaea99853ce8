#![no_main]
//! Metadata from a damaged or hostile disk: a header slot never panics the
//! decoder, a slot that decodes re-encodes to the same bytes (the format is
//! canonical, nothing on disk is silently ignored), and any on-disk activemap
//! loads and then keeps the "bit durable before the data write" rule under the
//! operations the input drives.

use hast_meta::{map_size, reseal, ActiveMap, FlushJob, Header, MAP_SIZE_MAX, SLOT_SIZE};

/// A small geometry: 40000 extents of 4 KiB, a two-page map.
const EXTENT_SIZE: u32 = 4096;
const DATASIZE: u64 = 40_000 * 4096;
/// Operations driven per input.
const OPS_MAX: usize = 256;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Bytes of any length.
    let _ = Header::decode(data);

    // The first byte steers; the rest is the slot, then the map.
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let mut slot = vec![0u8; SLOT_SIZE as usize];
    let n = rest.len().min(slot.len());
    slot[..n].copy_from_slice(&rest[..n]);
    if ctl & 1 != 0 {
        // Reach the field checks behind the checksum.
        reseal(&mut slot);
    }
    if let Ok(h) = Header::decode(&slot) {
        let again = h.encode();
        assert_eq!(&again[..], &slot[..], "decoding must be canonical");
        assert_eq!(
            Header::decode(&again[..]).expect("re-encoded header decodes"),
            h
        );
        assert!(h.map_size <= MAP_SIZE_MAX);
        assert!(h.data_offset.checked_add(h.datasize).is_some());
    }

    // A map of the wrong length is an error, not a panic.
    let _ = ActiveMap::new(EXTENT_SIZE, DATASIZE, 4, rest, true);

    let mut disk = vec![0u8; map_size(DATASIZE, EXTENT_SIZE) as usize];
    let n = rest.len().min(disk.len());
    disk[..n].copy_from_slice(&rest[..n]);
    let keepdirty = 1 + u32::from(ctl >> 5);
    let mut am = ActiveMap::new(EXTENT_SIZE, DATASIZE, keepdirty, &disk, ctl & 2 != 0)
        .expect("valid geometry and map length");
    let count = am.extent_count();
    let set_bits = (0..count)
        .filter(|&e| disk[(e / 8) as usize] & (1 << (e % 8)) != 0)
        .count() as u64;
    assert_eq!(am.dirty_count(), set_bits);

    // Drive it with the input: (op, extent lo, extent hi) triples.
    let es = u64::from(EXTENT_SIZE);
    let mut writes: Vec<(u64, Option<u64>)> = Vec::new();
    let mut job: Option<FlushJob> = None;
    let mut tickets: Vec<u64> = Vec::new();
    for op in rest.chunks_exact(3).take(OPS_MAX) {
        let extent = u64::from(u16::from_le_bytes([op[1], op[2]])) % count;
        match op[0] % 8 {
            0 | 1 => {
                writes.push((extent, am.write_start(extent * es, es)));
                // Half of them also as a sequential stream's step (bit 7).
                if op[0] & 0x80 != 0 {
                    if let Some(next) = am.dirty_ahead(extent * es, es) {
                        assert!(next < count && am.is_dirty(next));
                    }
                }
            }
            2 => {
                if let Some((e, _)) = writes.pop() {
                    am.write_done(e * es, es, op[0] & 0x80 == 0);
                }
            }
            3 => {
                if job.is_none() {
                    job = am.begin_flush();
                }
            }
            4 => {
                if let Some(j) = job.take() {
                    for (off, page) in &j.pages {
                        disk[*off as usize..*off as usize + page.len()].copy_from_slice(page);
                    }
                    am.flush_done(j.gen);
                }
            }
            5 => {
                if let Some(j) = job.take() {
                    am.flush_failed(j);
                }
            }
            6 => tickets.push(am.barrier_start()),
            _ => {
                if op[0] & 0x80 != 0 {
                    am.synced(extent);
                } else if let Some(t) = tickets.pop() {
                    am.barrier_done(t);
                }
            }
        }
        // Writes told to go ahead (now or after waiting) have their bit on disk.
        for (e, wait) in &writes {
            if wait.is_none_or(|g| am.flushed_gen() >= g) {
                assert!(disk[(e / 8) as usize] & (1 << (e % 8)) != 0, "extent {e}");
            }
        }
    }
});
