//! The edges of the core: what it needs from a local disk and a clock.
//! hastd implements them over a real file (`datapath::local::LocalData`)
//! and the monotonic clock; the simulator over sectors in memory that a
//! crash can lose or tear (`sim::disk`) and a clock it advances itself.

use std::io;

/// How a range is zeroed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Zeroing {
    /// The range may be deallocated (punched).
    pub punch: bool,
    /// Fail with `Unsupported` rather than write zeroes slowly.
    pub fast_only: bool,
}

/// One copy's data, addressed from 0 to the data size.
pub trait Disk {
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    fn zero(&self, offset: u64, len: u64, how: Zeroing) -> io::Result<()>;
    /// Makes every completed write durable.
    fn datasync(&self) -> io::Result<()>;
}

/// Writes one resynced chunk to the target `disk`: a chunk of zeroes is
/// punched, so the copy stays as sparse as its source.
pub fn apply_resynced(disk: &impl Disk, offset: u64, data: &[u8]) -> io::Result<()> {
    if data.iter().all(|&b| b == 0) {
        let how = Zeroing {
            punch: true,
            fast_only: false,
        };
        disk.zero(offset, data.len() as u64, how)
    } else {
        disk.write(offset, data)
    }
}

/// Milliseconds on a clock that never goes back.
pub trait Clock {
    fn now_ms(&self) -> u64;
}
