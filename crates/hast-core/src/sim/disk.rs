//! A simulated local component: sectors that hold the id of the write that
//! last touched them, a page cache in front of them, and a crash that keeps
//! each unsynced sector or loses it independently — a torn write at sector
//! granularity, as a disk without power-loss protection may leave it.

use std::cell::RefCell;
use std::io;

use crate::edge::{Disk, Zeroing};

use super::rng::Rng;

/// Bytes per sector: the unit a crash keeps or loses whole.
pub const SECTOR: u64 = 512;

#[derive(Debug, Clone)]
struct Sectors {
    durable: Vec<u64>,
    cache: Vec<Option<u64>>,
}

/// One copy's data. Write ids are encoded as the sector's bytes (the id
/// repeated), so the core's `Disk` users see ordinary bytes.
#[derive(Debug, Clone)]
pub struct SimDisk(RefCell<Sectors>);

impl SimDisk {
    pub fn new(sectors: usize) -> SimDisk {
        SimDisk(RefCell::new(Sectors {
            durable: vec![0; sectors],
            cache: vec![None; sectors],
        }))
    }

    /// What a read of sector `s` returns now.
    pub fn value(&self, s: usize) -> u64 {
        let d = self.0.borrow();
        d.cache[s].unwrap_or(d.durable[s])
    }

    /// Writes sector ids directly (the simulator's own shorthand for
    /// [`Disk::write`] of the encoded bytes).
    pub fn put(&self, first: usize, values: &[u64]) {
        let mut d = self.0.borrow_mut();
        for (i, v) in values.iter().enumerate() {
            d.cache[first + i] = Some(*v);
        }
    }

    /// Host crash: every unsynced sector is kept or lost, one by one.
    pub fn crash(&self, rng: &mut Rng) {
        let mut d = self.0.borrow_mut();
        for s in 0..d.cache.len() {
            if let Some(v) = d.cache[s].take() {
                if rng.one_in(2) {
                    d.durable[s] = v;
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.0.borrow().durable.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The bytes of a sector holding write `id`.
pub fn encode(id: u64, out: &mut Vec<u8>) {
    for _ in 0..SECTOR / 8 {
        out.extend_from_slice(&id.to_le_bytes());
    }
}

fn check(offset: u64, len: u64) -> io::Result<(usize, usize)> {
    if offset % SECTOR != 0 || len % SECTOR != 0 {
        return Err(io::Error::other("unaligned simulated I/O"));
    }
    Ok(((offset / SECTOR) as usize, (len / SECTOR) as usize))
}

impl Disk for SimDisk {
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let (first, n) = check(offset, buf.len() as u64)?;
        for i in 0..n {
            let v = self.value(first + i).to_le_bytes();
            for w in buf[i * SECTOR as usize..(i + 1) * SECTOR as usize].chunks_mut(8) {
                w.copy_from_slice(&v);
            }
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let (first, n) = check(offset, data.len() as u64)?;
        let mut d = self.0.borrow_mut();
        for i in 0..n {
            let at = i * SECTOR as usize;
            let id = u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes"));
            d.cache[first + i] = Some(id);
        }
        Ok(())
    }

    fn zero(&self, offset: u64, len: u64, _how: Zeroing) -> io::Result<()> {
        let (first, n) = check(offset, len)?;
        let mut d = self.0.borrow_mut();
        for s in first..first + n {
            d.cache[s] = Some(0);
        }
        Ok(())
    }

    fn datasync(&self) -> io::Result<()> {
        let mut d = self.0.borrow_mut();
        for s in 0..d.cache.len() {
            if let Some(v) = d.cache[s].take() {
                d.durable[s] = v;
            }
        }
        Ok(())
    }
}
