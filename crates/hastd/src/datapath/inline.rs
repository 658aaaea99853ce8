//! Which writes and reads the runtime thread does itself, in the page
//! cache, instead of sending them to tokio's blocking pool: whole-page
//! writes of up to 1 MiB without FUA and reads the cache holds in full. A trip to the pool
//! and back costs more than such a copy; the rules here keep the exceptions
//! safe (FUSE components never, a slow copy pauses them for a while).

use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::DataPath;

/// Writes up to this size that cover whole pages and ask for no FUA are
/// copied into the page cache on the runtime thread itself: a buffered pwrite
/// of whole pages reads nothing from the device, and is cheaper than the
/// trip to the blocking pool and back (measured: 4 KiB QD1 write latency of a
/// fullsync pair 106 -> 78 us). It can still sleep in the kernel (dirty-page
/// throttling, reclaim), which stalls every task of the runtime as long: so
/// one that takes longer than [`INLINE_SLOW`] sends small writes to the
/// blocking pool for [`INLINE_PAUSE`]. Larger writes, partial pages, zeroing
/// and syncs always go to the blocking pool. Up to 1 MiB, like reads: a
/// 1 MiB copy holds the thread ~100 µs, and the pool's hand-off costs two
/// futex wake-ups and a context switch each way; `fio` 1 MiB writes at QD4
/// on one node, 3 alternating runs: 4,070–4,290 IOPS at 64 KiB here,
/// 5,360–5,780 at 1 MiB (nbdkit file 5,470–7,230 in the same runs).
const INLINE_WRITE_MAX: usize = 1 << 20;

/// An inline write this slow slept in the kernel: dirty-page throttling
/// pauses last 10-200 ms. Shorter delays are mostly the thread losing its
/// core to another process, which the blocking pool would not avoid.
pub(super) const INLINE_SLOW: Duration = Duration::from_millis(20);

/// How long small writes then stay on the blocking pool.
const INLINE_PAUSE: Duration = Duration::from_secs(1);

/// Reads up to this size are first tried from the page cache on the worker
/// (`read_cached`, which never waits for the device). A 1 MiB copy from the
/// cache holds the worker ~100 µs, less than the hand-off to the blocking
/// pool and back costs in wake-ups: 1 MiB reads at QD4, 256 KiB → 1 MiB
/// here: ~200 → ~170 µs of CPU per request (with `tcp::BULK_SNDBUF`).
const INLINE_READ_MAX: usize = 1 << 20;

/// The page size the inline-write rule counts whole pages in.
const PAGE: u64 = 4096;

impl DataPath {
    /// Reads `len` bytes into `buf` from the page cache without leaving the
    /// worker, if all of it is cached; `Ok(false)` sends the caller to the
    /// blocking pool.
    pub(super) fn read_cached(
        &self,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> io::Result<bool> {
        if len > INLINE_READ_MAX {
            return Ok(false);
        }
        self.local().read_cached(offset, len, buf)
    }

    /// This write would be copied into the page cache at once, on the
    /// runtime thread: small, whole pages, no FUA ([`inline_write`]), and
    /// small writes not paused after a slow one. Such a write is in memory as
    /// soon as it is applied, so a memsync secondary answers it with its
    /// REPLY alone, no RECEIVED before it.
    pub fn applies_in_memory(&self, offset: u64, len: usize, fua: bool) -> bool {
        let now = self.opened.elapsed().as_millis() as u64;
        self.inline_ok
            && inline_write(offset, len, fua)
            && now >= self.inline_paused_until.load(Relaxed)
    }

    pub(super) fn pause_inline(&self) {
        let until = (self.opened.elapsed() + INLINE_PAUSE).as_millis() as u64;
        self.inline_paused_until.store(until, Relaxed);
        tracing::debug!(resource = %self.name, "slow page-cache write: small writes use the blocking pool for {INLINE_PAUSE:?}");
    }
}

/// Whether a buffered write to `file` can be a mere page-cache copy. Not on
/// FUSE (without writeback caching, which nbdfuse and most servers leave
/// off): there every pwrite is a synchronous round trip to the userspace
/// server, so an inline write would hold a runtime thread for as long as
/// that server takes — with a slow or stalled server, long enough to starve
/// the tasks that send keepalives (seen: a secondary on nbdfuse whose nbdkit
/// stalled 1.7 s was declared dead by a primary with `ping_timeout 1`).
pub(super) fn page_cache_writes(file: &std::fs::File) -> bool {
    use std::os::unix::io::AsRawFd;
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    // SAFETY: statfs is plain integers, for which all zeroes is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a statfs buffer of the right type.
    let r = unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) };
    // f_type is i64 on x86_64 glibc, narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    let f_type = i64::from(st.f_type);
    r != 0 || f_type != FUSE_SUPER_MAGIC
}

/// A write the runtime thread may copy into the page cache itself (see
/// [`INLINE_WRITE_MAX`]): small, whole pages, no FUA.
fn inline_write(offset: u64, len: usize, fua: bool) -> bool {
    !fua && len <= INLINE_WRITE_MAX
        && offset.is_multiple_of(PAGE)
        && (len as u64).is_multiple_of(PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which writes the worker copies into the page cache itself.
    #[test]
    fn inline_write_rule() {
        let cases: [(u64, usize, bool, bool); 10] = [
            // offset, len, fua, inline
            (0, 4096, false, true),
            (8192, 65536, false, true),
            (0, 4096, true, false), // FUA: a sync follows, blocking pool
            (0, 65536 + 4096, false, true),
            (0, (1 << 20) + 4096, false, false), // larger than INLINE_WRITE_MAX
            (512, 4096, false, false),           // partial first page: may read it
            (4096, 512, false, false),           // partial page
            (4096, 6144, false, false),          // partial last page
            (1 << 40, 4096, false, true),
            (0, 1 << 20, false, true),
        ];
        for (offset, len, fua, want) in cases {
            assert_eq!(inline_write(offset, len, fua), want, "{offset} {len} {fua}");
        }
    }
}
