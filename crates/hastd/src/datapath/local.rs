//! Positional I/O on the data area of the local component.
//!
//! Every call is blocking (pread/pwrite/fallocate/fdatasync on a shared
//! file descriptor) and is run on tokio's blocking pool by the caller, except
//! the two that only touch the page cache: `read_cached` (never waits for
//! the device) and small whole-page writes (see `DataPath::apply_local`). One
//! descriptor serves all requests: positional calls need no seek lock, and a
//! single `fdatasync` covers every write any connection completed, which is
//! what makes `CAN_MULTI_CONN` true.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use hast_core::edge::{Disk, Zeroing};

/// Largest chunk of zeroes written when fallocate cannot zero a range.
const ZERO_CHUNK_BYTES: usize = 1 << 20;

/// Which allocation runs [`LocalData::allocation`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// Every run of the range.
    All,
    /// Only the first (NBD's REQ_ONE).
    First,
}

/// The data area of a local component: data byte `x` lives at file offset
/// `data_offset + x`.
pub struct LocalData<'a> {
    pub file: &'a File,
    pub data_offset: u64,
}

impl LocalData<'_> {
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, self.data_offset + offset)
    }

    /// `len` bytes at `offset` in a new buffer that is never zeroed first:
    /// the kernel fills it straight from the page cache. A client's read
    /// costs one copy, not a memset and a copy (1 MiB reads: the memset was
    /// 3% of hastd's CPU).
    pub fn read_new(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        self.read_into(offset, len, &mut buf)?;
        Ok(buf)
    }

    /// As [`LocalData::read_new`], into `buf` (emptied first): a buffer a
    /// declined [`LocalData::read_cached`] already sized is used again.
    pub fn read_into(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        while buf.len() < len {
            let at = buf.len();
            let n = self.pread_spare(buf, len, offset + at as u64, 0)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    /// Reads the range only if the page cache holds all of it
    /// (`preadv2(RWF_NOWAIT)`) into `buf` (emptied first, never zeroed):
    /// `Ok(true)` with the `len` bytes in `buf`; `Ok(false)` means it would
    /// have waited for the disk (or the kernel cannot tell), and the caller
    /// reads it on the blocking pool instead. Never blocks on the device.
    pub fn read_cached(&self, offset: u64, len: usize, buf: &mut Vec<u8>) -> io::Result<bool> {
        buf.clear();
        match self.pread_spare(buf, len, offset, libc::RWF_NOWAIT) {
            // A short read (part cached) is redone whole on the blocking pool.
            Ok(n) => Ok(n == len),
            Err(e) => match e.raw_os_error() {
                // EAGAIN: not all cached; EOPNOTSUPP/EINVAL: no RWF_NOWAIT here.
                Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::EINVAL) => Ok(false),
                _ => Err(e),
            },
        }
    }

    /// One `preadv2` of up to `len - buf.len()` bytes at data offset
    /// `offset` into `buf`'s spare capacity, which then counts as filled.
    /// EINTR is retried.
    fn pread_spare(
        &self,
        buf: &mut Vec<u8>,
        len: usize,
        offset: u64,
        flags: i32,
    ) -> io::Result<usize> {
        buf.reserve(len.saturating_sub(buf.len()));
        let want = len - buf.len();
        let spare = &mut buf.spare_capacity_mut()[..want];
        let iov = libc::iovec {
            iov_base: spare.as_mut_ptr().cast(),
            iov_len: want,
        };
        loop {
            // SAFETY: one iovec over `want` bytes of `buf`'s spare capacity,
            // which outlives the call; the kernel writes at most that many.
            let n = unsafe {
                libc::preadv2(
                    self.file.as_raw_fd(),
                    &iov,
                    1,
                    (self.data_offset + offset) as libc::off_t,
                    flags,
                )
            };
            if n >= 0 {
                let n = n as usize;
                // SAFETY: the kernel initialised the first `n` (<= want)
                // bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
                return Ok(n);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, self.data_offset + offset)
    }

    pub fn datasync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Makes `[offset, offset+len)` read as zeroes. With `how.punch` the
    /// range may be deallocated (TRIM, WRITE_ZEROES without NO_HOLE);
    /// otherwise it stays allocated. Returns `Unsupported` when
    /// `how.fast_only` and the only way left is writing zeroes.
    pub fn zero(&self, offset: u64, len: u64, how: Zeroing) -> io::Result<()> {
        let start = self.data_offset + offset;
        if how.punch
            && fallocate(
                self.file,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start,
                len,
            )
            .is_ok()
        {
            return Ok(());
        }
        match fallocate(
            self.file,
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            start,
            len,
        ) {
            Ok(()) => return Ok(()),
            Err(e) if !is_unsupported(&e) => return Err(e),
            Err(_) => {}
        }
        if how.fast_only {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let zeroes = vec![0u8; ZERO_CHUNK_BYTES.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], start + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Asks the kernel to read the range ahead (NBD_CMD_CACHE).
    pub fn prefetch(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: plain syscall on a descriptor we own for the call's duration.
        let rc = unsafe {
            libc::posix_fadvise(
                self.file.as_raw_fd(),
                (self.data_offset + offset) as libc::off_t,
                len as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            )
        };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// Allocation map of `[offset, offset+len)` as (length, is_hole) runs,
    /// from SEEK_DATA/SEEK_HOLE. Where the file system cannot tell (block
    /// devices, old file systems) everything is reported as data, which is
    /// always correct. `Runs::First` stops after the first run.
    pub fn allocation(
        &self,
        offset: u64,
        len: u64,
        runs_wanted: Runs,
    ) -> io::Result<Vec<(u64, bool)>> {
        let fd = self.file.as_raw_fd();
        let end = offset + len;
        let mut pos = offset;
        let mut runs = Vec::new();
        while pos < end {
            let abs = (self.data_offset + pos) as libc::off_t;
            let data = match lseek(fd, abs, libc::SEEK_DATA) {
                Ok(d) => d.saturating_sub(self.data_offset),
                // ENXIO: no data after pos, the rest is a hole.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => end,
                Err(_) => {
                    runs.push((end - pos, false));
                    break;
                }
            };
            if data > pos {
                runs.push((data.min(end) - pos, true));
                pos = data.min(end);
            } else {
                let hole = match lseek(fd, abs, libc::SEEK_HOLE) {
                    Ok(h) => h.saturating_sub(self.data_offset),
                    Err(_) => end,
                };
                let stop = hole.clamp(pos + 1, end);
                runs.push((stop - pos, false));
                pos = stop;
            }
            if runs_wanted == Runs::First {
                break;
            }
        }
        Ok(runs)
    }
}

/// The core's view of a copy: the same calls, run where the caller runs them
/// (the blocking pool, or the runtime thread for a page-cache write).
impl Disk for LocalData<'_> {
    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        LocalData::read(self, offset, buf)
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        LocalData::write(self, offset, data)
    }

    fn zero(&self, offset: u64, len: u64, how: Zeroing) -> io::Result<()> {
        LocalData::zero(self, offset, len, how)
    }

    fn datasync(&self) -> io::Result<()> {
        LocalData::datasync(self)
    }
}

fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own for the call's duration.
    let rc = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn lseek(fd: libc::c_int, offset: libc::off_t, whence: libc::c_int) -> io::Result<u64> {
    // SAFETY: lseek only reads its integer arguments.
    let rc = unsafe { libc::lseek(fd, offset, whence) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as u64)
    }
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL) | Some(libc::ENODEV)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpfile(len: u64) -> File {
        let path = std::env::temp_dir().join(format!(
            "hastd-local-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.set_len(len).unwrap();
        f
    }

    #[test]
    fn write_read_zero_and_allocation() {
        let f = tmpfile(8 << 20);
        let d = LocalData {
            file: &f,
            data_offset: 8192,
        };
        d.write(1 << 20, &[7u8; 65536]).unwrap();
        let mut buf = vec![0u8; 65536];
        d.read(1 << 20, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        let runs = d.allocation(0, 4 << 20, Runs::All).unwrap();
        assert_eq!(runs.iter().map(|r| r.0).sum::<u64>(), 4 << 20);
        let punch = Zeroing {
            punch: true,
            fast_only: true,
        };
        d.zero(1 << 20, 65536, punch).unwrap();
        d.read(1 << 20, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        d.write(0, &[1u8; 4096]).unwrap();
        d.zero(0, 4096, Zeroing::default()).unwrap();
        d.read(0, &mut buf[..4096]).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0));
        let one = d.allocation(0, 4 << 20, Runs::First).unwrap();
        assert_eq!(one.len(), 1);
    }

    /// What was just written is in the page cache: `read_cached` returns it
    /// whole, from the data area (not the file start); it never reports a
    /// partial read as done.
    #[test]
    fn read_cached_returns_cached_data_or_declines() {
        let f = tmpfile(8 << 20);
        let d = LocalData {
            file: &f,
            data_offset: 8192,
        };
        let data: Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8).collect();
        d.write(4096, &data).unwrap();
        let mut buf = vec![7u8; 3];
        assert!(d.read_cached(4096, data.len(), &mut buf).unwrap());
        assert_eq!(buf, data);
        assert!(d.read_cached(4096 + 100, 5000, &mut buf).unwrap());
        assert_eq!(buf, data[100..5100]);
        // Past the end of the file: a short read is never "done".
        assert!(!d
            .read_cached((8 << 20) - 8192 - 4096, 8192, &mut buf)
            .unwrap());
    }

    /// `read_new` returns exactly the bytes there, past holes and in one
    /// buffer of the asked length; a range beyond the end is an error, not
    /// a short buffer.
    #[test]
    fn read_new_reads_whole_ranges() {
        let f = tmpfile(8 << 20);
        let d = LocalData {
            file: &f,
            data_offset: 8192,
        };
        // A buffer already holding something is emptied, then filled.
        let mut reused = vec![9u8; 10];
        d.read_into(0, 4096, &mut reused).unwrap();
        assert_eq!(reused, vec![0u8; 4096]);
        let data: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        d.write(1 << 20, &data).unwrap();
        assert_eq!(d.read_new(1 << 20, data.len()).unwrap(), data);
        let around = d.read_new((1 << 20) - 4096, 8192).unwrap();
        assert!(around[..4096].iter().all(|&b| b == 0));
        assert_eq!(around[4096..], data[..4096]);
        let e = d.read_new((8 << 20) - 8192 - 4096, 8192).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
