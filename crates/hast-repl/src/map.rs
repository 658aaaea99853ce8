//! Sending an activemap over the wire: cutting it into MAP frames
//! ([`map_chunks`]) and putting it back together strictly ([`MapAssembler`]).
//! The map decides which extents a resync copies, so a chunk that is missing,
//! repeated, out of place or cut short must fail the connection rather than
//! leave a clean bit where a dirty one was sent.
//!
//! Chunks travel in order: each starts where the previous ended, and the last
//! (possibly empty, for an empty map) carries LAST.

use crate::error::ReplError;
use crate::frame::MAP_MAX;

/// Cuts `map` into `(offset, chunk, last)` pieces of at most `chunk_max`
/// bytes (at least 1; callers use [`crate::MAP_CHUNK_MAX`]). An empty map
/// yields one empty LAST chunk so every transfer ends with LAST.
pub fn map_chunks(map: &[u8], chunk_max: usize) -> impl Iterator<Item = (u64, &[u8], bool)> {
    let chunk_max = chunk_max.max(1);
    let count = map.len().div_ceil(chunk_max).max(1);
    (0..count).map(move |i| {
        let start = i * chunk_max;
        let end = (start + chunk_max).min(map.len());
        (start as u64, &map[start..end], i + 1 == count)
    })
}

/// Reassembles a map of a known length from in-order chunks.
#[derive(Debug)]
pub struct MapAssembler {
    map_len: usize,
    buf: Vec<u8>,
    done: bool,
}

impl MapAssembler {
    /// `expected_len` comes from the local geometry (both sides have checked
    /// they agree on datasize and extentsize), and is still capped at 32 MiB.
    pub fn new(expected_len: usize) -> Result<MapAssembler, ReplError> {
        if expected_len as u64 > MAP_MAX {
            return Err(ReplError::MapTooLarge {
                len: expected_len as u64,
                max: MAP_MAX,
            });
        }
        Ok(MapAssembler {
            map_len: expected_len,
            buf: Vec::with_capacity(expected_len),
            done: false,
        })
    }

    /// Bytes received so far.
    pub fn received(&self) -> usize {
        self.buf.len()
    }

    /// Adds one chunk; returns the whole map with the LAST chunk.
    pub fn add(
        &mut self,
        offset: u64,
        chunk: &[u8],
        last: bool,
    ) -> Result<Option<Vec<u8>>, ReplError> {
        if self.done {
            return Err(ReplError::MapDone);
        }
        let expected = self.buf.len() as u64;
        if offset > expected {
            return Err(ReplError::MapGap { offset, expected });
        }
        if offset < expected {
            return Err(ReplError::MapOverlap { offset, expected });
        }
        let map_len = self.map_len as u64;
        let end = offset.saturating_add(chunk.len() as u64);
        if end > map_len {
            return Err(ReplError::MapOutOfRange {
                offset,
                len: chunk.len() as u64,
                map_len,
            });
        }
        // An empty chunk is only the terminator of an empty map or after a
        // full one; otherwise it is noise a broken sender could loop on.
        if chunk.is_empty() && !last {
            return Err(ReplError::MapGap { offset, expected });
        }
        match (last, end == map_len) {
            (true, false) => {
                return Err(ReplError::MapEarlyLast {
                    received: end,
                    map_len,
                })
            }
            (false, true) => return Err(ReplError::MapMissingLast { map_len }),
            _ => {}
        }
        self.buf.extend_from_slice(chunk);
        if last {
            self.done = true;
            return Ok(Some(std::mem::take(&mut self.buf)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 1) as u8).collect()
    }

    #[test]
    fn chunks_cover_the_map() {
        #[rustfmt::skip]
        let cases: [(usize, usize, usize); 7] = [
            // (map len, chunk_max, chunks)
            (0, 4, 1),
            (1, 4, 1),
            (4, 4, 1),
            (5, 4, 2),
            (9, 4, 3),
            (10, 1, 10),
            (3, 0, 3), // chunk_max 0 behaves as 1
        ];
        for (len, max, n) in cases {
            let map = sample(len);
            let chunks: Vec<_> = map_chunks(&map, max).collect();
            assert_eq!(chunks.len(), n, "len {len} max {max}");
            let mut asm = MapAssembler::new(len).unwrap();
            let mut whole = None;
            for (i, (off, c, last)) in chunks.iter().enumerate() {
                assert_eq!(*last, i + 1 == n);
                assert!(c.len() <= max.max(1));
                whole = asm.add(*off, c, *last).unwrap();
            }
            assert_eq!(whole, Some(map));
        }
    }

    #[test]
    fn assembler_rejections_table() {
        // Map of 10 bytes; each case is a sequence of adds, the last must fail.
        type Add = (u64, usize, bool);
        #[rustfmt::skip]
        let cases: [(&str, &[Add], &str); 10] = [
            ("gap at start", &[(2, 4, false)], "expected offset 0 (gap)"),
            ("gap", &[(0, 4, false), (5, 5, true)], "expected offset 4 (gap)"),
            ("overlap", &[(0, 4, false), (3, 7, true)], "overlaps"),
            ("repeat", &[(0, 4, false), (0, 4, false)], "overlaps"),
            ("past end", &[(0, 4, false), (4, 7, true)], "runs past the map end 10"),
            ("huge offset", &[(u64::MAX, 1, true)], "gap"),
            ("early last", &[(0, 4, true)], "LAST chunk after 4 of 10 bytes"),
            ("complete without last", &[(0, 10, false)], "lacks LAST"),
            ("empty non-last chunk", &[(0, 0, false)], "gap"),
            ("after done", &[(0, 10, true), (10, 0, true)], "after the transfer finished"),
        ];
        let map = sample(10);
        for (name, adds, text) in cases {
            let mut asm = MapAssembler::new(10).unwrap();
            let (init, tail) = adds.split_at(adds.len() - 1);
            for &(off, len, last) in init {
                let s = off as usize;
                asm.add(off, &map[s..s + len], last)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            let (off, len, last) = tail[0];
            let chunk = vec![0u8; len];
            let e = asm.add(off, &chunk, last).expect_err(name);
            assert!(e.to_string().contains(text), "{name}: {e}");
        }
    }

    #[test]
    fn size_limit() {
        assert!(MapAssembler::new(MAP_MAX as usize).is_ok());
        let e = MapAssembler::new(MAP_MAX as usize + 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "activemap of 33554433 bytes exceeds 33554432"
        );
    }

    proptest! {
        #[test]
        fn random_chunks_never_panic(len in 0usize..64, ops in prop::collection::vec((0u64..80, 0usize..40, any::<bool>()), 0..20)) {
            let mut asm = MapAssembler::new(len).unwrap();
            let data = [0u8; 40];
            for (off, n, last) in ops {
                if let Ok(Some(m)) = asm.add(off, &data[..n], last) {
                    prop_assert_eq!(m.len(), len);
                }
            }
        }

        #[test]
        fn round_trip(map in prop::collection::vec(any::<u8>(), 0..300), max in 1usize..64) {
            let mut asm = MapAssembler::new(map.len()).unwrap();
            let mut got = None;
            for (off, c, last) in map_chunks(&map, max) {
                got = asm.add(off, c, last).unwrap();
            }
            prop_assert_eq!(got, Some(map));
        }
    }
}
