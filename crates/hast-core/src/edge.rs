//! The edge of the core that is shared code rather than an action: the
//! local disk. hastd implements [`Disk`] over a real file
//! (`datapath::local::LocalData`), the simulator over sectors in memory
//! that a crash can lose or tear (`sim::disk::SimDisk`), and
//! [`apply_resynced`] runs over either.
//!
//! The other edges are actions and events of the state machines, not
//! traits: the peer link is `write::Action::Send`/`AwaitReply`/… answered
//! by the driver (hastd's `link::Link`, the simulator's FIFO queues), and
//! no rule here reads a clock — the timed rules (lease, heartbeat) are pure
//! functions of instants passed in, in hastd's `datapath/lease.rs` and
//! `link/heartbeat.rs` and in hastmon's policy.

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
