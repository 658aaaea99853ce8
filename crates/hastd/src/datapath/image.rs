//! A point-in-time image of a primary's data (`hastctl snapshot`), kept
//! point-in-time by copy-before-write, as qemu's backup job and LVM
//! snapshots do: the image begins while the resource is frozen, and from
//! then on a modification first copies the 64 KiB chunks it is about to
//! change into the image, unless they were copied already; a background
//! copier ([`DataPath::copy_image`]) settles the rest. So the image is
//! what the data was at the freeze, and the freeze lasts only as long as
//! installing the image takes, whatever the size.
//!
//! The invariant everything here keeps: **a chunk not marked copied still
//! holds, on the local component, what it held at the freeze**, because a
//! modification changes a chunk only once it is marked, and marks are
//! never cleared. Marking needs no lock: whoever copies a chunk (a write's
//! copy-before-write or the background copier) reads it, then checks that
//! it is still unmarked — if so, nothing changed it before the read ended,
//! so what was read is the data at the freeze — writes that into the image
//! and only then marks it. Two that race on one chunk both write the same
//! old bytes. A chunk the copier finds in a hole is marked without a copy
//! (nothing was written there since, and the image's hole reads as zeroes).
//! So the copier, which runs at the lowest priority, never holds anything
//! a client's write would wait for.
//!
//! What the image cannot follow ends it, never the resource: a failed
//! write into the image (a full disk), the local copy detached or
//! resynced from the peer, a demotion. The image is then marked failed
//! and every later write goes on as if there were none.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};

use super::local::{LocalData, Runs};
use super::{DataPath, Side};

/// The copy-before-write unit: a write copies at most this much around
/// each of its ends into the image.
pub const CHUNK: u64 = 64 << 10;
/// Chunks per read: the copier's, and a large write's copy-before-write.
const GROUP_CHUNKS: u64 = 16;
/// The copier asks the file system where the holes are this much at once.
const HOLE_WINDOW: u64 = 64 << 20;

/// The chunks that `[offset, offset + len)` touches, of a volume of
/// `size` bytes (none for an empty range).
pub fn chunks(offset: u64, len: u64, size: u64) -> Range<u64> {
    let end = offset.saturating_add(len).min(size);
    if len == 0 || offset >= end {
        return 0..0;
    }
    offset / CHUNK..end.div_ceil(CHUNK)
}

/// The byte range of chunk `c` (the last one may be short).
pub fn chunk_span(c: u64, size: u64) -> Range<u64> {
    let start = c * CHUNK;
    start..(start + CHUNK).min(size)
}

/// The chunks of `range` that fall in group `g`.
fn in_group(range: &Range<u64>, g: u64) -> Range<u64> {
    let first = g * GROUP_CHUNKS;
    range.start.max(first)..range.end.min(first + GROUP_CHUNKS)
}

/// One resource's image under way.
pub struct Image {
    file: File,
    size: u64,
    /// One bit per chunk: copied (or known a hole).
    copied: Vec<AtomicU64>,
    done: AtomicU64,
    written: AtomicU64,
    preserved: AtomicU64,
    /// Why the image can no longer be point-in-time, once it cannot.
    failed: OnceLock<String>,
    /// Writes into the image can be page-cache copies (not on FUSE): a
    /// write's copy-before-write may then be done on the runtime thread.
    inline_ok: bool,
}

/// An image's counters (bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImageCounts {
    pub done: u64,
    pub written: u64,
    pub preserved: u64,
}

impl Image {
    /// An image of `size` bytes written into `file` (already sized, all
    /// holes).
    pub fn new(file: File, size: u64) -> Image {
        let n = size.div_ceil(CHUNK);
        Image {
            size,
            copied: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            done: AtomicU64::new(0),
            written: AtomicU64::new(0),
            preserved: AtomicU64::new(0),
            failed: OnceLock::new(),
            inline_ok: super::inline::page_cache_writes(&file),
            file,
        }
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn counts(&self) -> ImageCounts {
        ImageCounts {
            done: self.done.load(SeqCst),
            written: self.written.load(SeqCst),
            preserved: self.preserved.load(SeqCst),
        }
    }

    /// Why the image failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Marks the image failed (the first reason stays).
    pub fn fail(&self, why: impl Into<String>) {
        let _ = self.failed.set(why.into());
    }

    fn is_copied(&self, c: u64) -> bool {
        self.copied[(c / 64) as usize].load(SeqCst) & (1 << (c % 64)) != 0
    }

    /// Marks chunk `c` settled; counts it once.
    fn mark(&self, c: u64) {
        let bit = 1 << (c % 64);
        if self.copied[(c / 64) as usize].fetch_or(bit, SeqCst) & bit == 0 {
            let span = chunk_span(c, self.size);
            self.done.fetch_add(span.end - span.start, SeqCst);
        }
    }

    fn all_copied(&self, range: Range<u64>) -> bool {
        range.into_iter().all(|c| self.is_copied(c))
    }

    /// Copies the unsettled chunks of `range` from the local component into
    /// the image, with one read; marks them. A chunk found marked after the
    /// read is left alone (see the header). `preserve`: for a write about
    /// to change them (counted apart).
    fn copy_chunks(&self, d: &LocalData<'_>, range: Range<u64>, preserve: bool) -> io::Result<()> {
        let Some((chunks, bytes)) = self.unsettled(range) else {
            return Ok(());
        };
        let mut buf = vec![0u8; (bytes.end - bytes.start) as usize];
        d.read(bytes.start, &mut buf)?;
        self.store(chunks, bytes.start, &buf, preserve)
    }

    /// The chunks of `range` from its first unsettled one to its last, and
    /// their bytes; `None` if all are settled.
    fn unsettled(&self, range: Range<u64>) -> Option<(Range<u64>, Range<u64>)> {
        let first = range.clone().find(|&c| !self.is_copied(c))?;
        let last = range.rev().find(|&c| !self.is_copied(c)).unwrap_or(first);
        let bytes = chunk_span(first, self.size).start..chunk_span(last, self.size).end;
        Some((first..last + 1, bytes))
    }

    /// Writes the chunks of `buf` (read from `start` on, after which each
    /// chunk's mark is checked again: see the header) that are still
    /// unsettled into the image, and marks them.
    fn store(&self, chunks: Range<u64>, start: u64, buf: &[u8], preserve: bool) -> io::Result<()> {
        for c in chunks {
            if self.is_copied(c) {
                continue;
            }
            let span = chunk_span(c, self.size);
            let data = &buf[(span.start - start) as usize..(span.end - start) as usize];
            // Zeroes stay a hole in the image.
            if data.iter().any(|&b| b != 0) {
                self.file.write_all_at(data, span.start)?;
                self.written.fetch_add(data.len() as u64, SeqCst);
            }
            if preserve {
                self.preserved.fetch_add(data.len() as u64, SeqCst);
            }
            self.mark(c);
        }
        Ok(())
    }
}

impl DataPath {
    /// Begins a point-in-time image of this primary's data into `file`
    /// (sized to the data, all holes). Called while the resource is
    /// frozen, so the image is of the data at the freeze. Refused if the
    /// local copy is not the current one or an image is under way.
    pub fn begin_image(&self, file: File) -> Result<Arc<Image>, String> {
        if self.side != Side::Primary {
            return Err(format!("{} is not primary", self.name));
        }
        if self.local_may_be_stale(0, self.datasize) {
            return Err(format!(
                "{}: the local copy is not current (detached, or being resynced from the peer); \
                 a snapshot is taken from it",
                self.name
            ));
        }
        let mut slot = self.image.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Err(format!("{}: a snapshot of it is under way", self.name));
        }
        let img = Arc::new(Image::new(file, self.datasize));
        *slot = Some(img.clone());
        self.image_on.store(true, SeqCst);
        Ok(img)
    }

    /// Ends the image `img` (done or abandoned): writes no longer copy
    /// into it.
    pub fn end_image(&self, img: &Arc<Image>) {
        let mut slot = self.image.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, img)) {
            *slot = None;
            self.image_on.store(false, SeqCst);
        }
    }

    /// The image under way, if any (one atomic load when there is none).
    pub(super) fn image(&self) -> Option<Arc<Image>> {
        if !self.image_on.load(SeqCst) {
            return None;
        }
        self.image.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Copy-before-write: called by a modification of `[offset, offset +
    /// len)` holding its range, before it changes anything. A failure
    /// fails the image, never the write. `inline`: the write itself is a
    /// page-cache copy on this thread ([`DataPath::applies_in_memory`]);
    /// then so is its copy-before-write, when the cache holds the chunks —
    /// the trip to the blocking pool would cost more than the copy.
    pub(super) async fn preserve(&self, img: &Arc<Image>, offset: u64, len: u64, inline: bool) {
        if img.failure().is_some() {
            return;
        }
        let range = chunks(offset, len, self.datasize);
        if img.all_copied(range.clone()) {
            return;
        }
        if self.detach.is_detached() {
            img.fail("the local component was detached");
            return;
        }
        let groups = range.start / GROUP_CHUNKS..(range.end - 1) / GROUP_CHUNKS + 1;
        for g in groups {
            let part = in_group(&range, g);
            if img.all_copied(part.clone()) {
                continue;
            }
            if inline {
                match self.preserve_inline(img, part.clone()) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) => {
                        img.fail(format!("copy-before-write failed: {e}"));
                        return;
                    }
                }
            }
            let img2 = img.clone();
            let res = self
                .blocking(move |d| img2.copy_chunks(&d, part, true))
                .await;
            if let Err(e) = res {
                img.fail(format!("copy-before-write failed: {e}"));
                return;
            }
        }
    }

    /// Copies the unsettled chunks of `part` on this thread if the page
    /// cache holds them all (`Ok(false)`: it does not, nothing done). A
    /// copy into the image that sleeps in the kernel pauses inline writes,
    /// as a slow inline write does.
    fn preserve_inline(&self, img: &Image, part: Range<u64>) -> io::Result<bool> {
        if !img.inline_ok {
            return Ok(false);
        }
        let Some((chunks, bytes)) = img.unsettled(part) else {
            return Ok(true);
        };
        let mut buf = Vec::new();
        if !self.read_cached(bytes.start, (bytes.end - bytes.start) as usize, &mut buf)? {
            return Ok(false);
        }
        let began = std::time::Instant::now();
        img.store(chunks, bytes.start, &buf, true)?;
        if began.elapsed() > super::INLINE_SLOW {
            self.pause_inline();
        }
        Ok(true)
    }

    /// A resync from the peer is about to change `[offset, offset + len)`
    /// of the local copy behind the image's back: the image cannot be
    /// point-in-time any more.
    pub(super) fn image_overtaken(&self, offset: u64, len: u64) {
        if let Some(img) = self.image() {
            if !img.all_copied(chunks(offset, len, self.datasize)) {
                img.fail("the local copy was resynced from the peer during the snapshot");
            }
        }
    }

    /// The background copy of `img`: every chunk not copied yet, in order,
    /// holes skipped; `Ok` once all are settled. Fails if the image
    /// failed (or was abandoned), the resource is demoted or its local
    /// copy stops being current.
    ///
    /// Blocking: it runs on a thread of its own ([`spawn_copier`]) at the
    /// lowest CPU and I/O priority, so that on a busy machine clients'
    /// requests (and the copy-before-write they do) go first and the copy
    /// takes the time left over.
    fn copy_image_blocking(&self, img: &Image) -> Result<(), String> {
        let total = self.datasize.div_ceil(CHUNK);
        let mut window = 0..0;
        let mut g = 0;
        while g * GROUP_CHUNKS < total {
            if let Some(why) = img.failure() {
                return Err(why.to_string());
            }
            let part = in_group(&(0..total), g);
            if !img.all_copied(part.clone()) {
                let Some(_pass) = self.gate.enter() else {
                    return Err(format!("{} was demoted", self.name));
                };
                if self.local_may_be_stale(0, self.datasize) {
                    img.fail("the local copy stopped being current (detached, or resynced from the peer)");
                    continue;
                }
                let _pending = self.progress.begin();
                let offset = part.start * CHUNK;
                if !window.contains(&offset) {
                    window = offset..(offset + HOLE_WINDOW).min(self.datasize);
                    self.settle_holes(img, window.clone())?;
                    if img.all_copied(part.clone()) {
                        g += 1;
                        continue;
                    }
                }
                img.copy_chunks(&self.local(), part, false).map_err(|e| {
                    let why = format!("copy failed: {e}");
                    img.fail(why.clone());
                    why
                })?;
            }
            g += 1;
        }
        match img.failure() {
            Some(why) => Err(why.to_string()),
            None => Ok(()),
        }
    }

    /// Marks settled every chunk wholly inside a hole of `window`. A chunk
    /// not copied yet holds what it held at the freeze (the header's
    /// invariant), so a hole now was a hole then.
    fn settle_holes(&self, img: &Image, window: Range<u64>) -> Result<(), String> {
        let (start, len) = (window.start, window.end - window.start);
        let runs = self
            .local()
            .allocation(start, len, Runs::All)
            .map_err(|e| format!("cannot read the allocation map: {e}"))?;
        let mut pos = start;
        for (n, hole) in runs {
            if hole {
                for c in pos.div_ceil(CHUNK)..(pos + n) / CHUNK {
                    img.mark(c);
                }
                // The volume's short last chunk, when the hole reaches it.
                if pos + n == self.datasize && !self.datasize.is_multiple_of(CHUNK) {
                    let last = self.datasize / CHUNK;
                    if last * CHUNK >= pos {
                        img.mark(last);
                    }
                }
            }
            pos += n;
        }
        Ok(())
    }
}

/// Starts the background copy of `img` on its own thread; the receiver
/// gets its outcome.
pub fn spawn_copier(
    dp: Arc<DataPath>,
    img: Arc<Image>,
) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = dp.name().to_string();
    let spawned = std::thread::Builder::new()
        .name("hast-snapshot".into())
        .spawn(move || {
            lowest_priority();
            let _ = tx.send(dp.copy_image_blocking(&img));
        });
    if let Err(e) = spawned {
        tracing::error!(resource = %name, "cannot start the snapshot copier: {e}");
    }
    // A thread that could not start drops its sender: the receiver says so.
    rx
}

/// This thread at nice 19 and the lowest best-effort I/O priority: it
/// yields the CPU and the disk to anything else hastd does.
fn lowest_priority() {
    // SAFETY: gettid has no arguments; setpriority and ioprio_set take
    // plain integers naming this thread. Failures only leave the
    // priority as it was.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
        // IOPRIO_WHO_PROCESS = 1; class best-effort (2) << 13, level 7.
        libc::syscall(libc::SYS_ioprio_set, 1, tid, (2 << 13) | 7);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: u64 = 1024;

    #[test]
    fn the_chunks_a_range_touches() {
        let size = 1 << 30;
        for (offset, len, want) in [
            (0, 0, 0..0),
            (0, 1, 0..1),
            (0, CHUNK, 0..1),
            (0, CHUNK + 1, 0..2),
            (CHUNK - 1, 2, 0..2),
            (CHUNK, 4 * K, 1..2),
            (3 * CHUNK + 512, 4 * K, 3..4),
            // Clipped at the volume's end.
            (size - 4 * K, 64 * K, size / CHUNK - 1..size / CHUNK),
            (size, 4 * K, 0..0),
        ] {
            assert_eq!(chunks(offset, len, size), want, "{offset}+{len}");
        }
        // A volume that does not end on a chunk: its short last chunk.
        let size = 10 * CHUNK + 4 * K;
        assert_eq!(chunks(10 * CHUNK, 8 * K, size), 10..11);
        assert_eq!(chunk_span(10, size), 10 * CHUNK..size);
        assert_eq!(chunk_span(9, size), 9 * CHUNK..10 * CHUNK);
    }

    #[test]
    fn a_range_is_split_by_group() {
        let r = 10..40;
        assert_eq!(in_group(&r, 0), 10..16);
        assert_eq!(in_group(&r, 1), 16..32);
        assert_eq!(in_group(&r, 2), 32..40);
        assert!(in_group(&r, 3).is_empty());
    }

    fn scratch(name: &str, size: u64) -> (std::path::PathBuf, File) {
        let dir = std::env::temp_dir().join(format!("hast-image-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&dir)
            .unwrap();
        f.set_len(size).unwrap();
        (dir, f)
    }

    #[test]
    fn copied_chunks_are_never_copied_again_and_zeroes_stay_holes() {
        let size = 3 * CHUNK + 100;
        let (src_path, src) = scratch("src", size);
        src.write_all_at(&[7u8; 10], CHUNK + 5).unwrap();
        src.write_all_at(&[9u8; 3], 3 * CHUNK + 1).unwrap();
        let (img_path, out) = scratch("img", size);
        let img = Image::new(out, size);
        let d = LocalData {
            file: &src,
            data_offset: 0,
        };
        img.copy_chunks(&d, 1..2, true).unwrap();
        assert_eq!(
            img.counts(),
            ImageCounts {
                done: CHUNK,
                written: CHUNK,
                preserved: CHUNK
            }
        );
        // The source changes after chunk 1 was copied: the image keeps
        // the old bytes, the rest is copied as it is now.
        src.write_all_at(&[1u8; 10], CHUNK + 5).unwrap();
        img.copy_chunks(&d, 0..4, false).unwrap();
        let c = img.counts();
        assert_eq!(c.done, size);
        assert_eq!(c.written, CHUNK + 100, "chunk 0 and 2 are zeroes: holes");
        assert_eq!(c.preserved, CHUNK);
        let mut got = [0u8; 10];
        img.file().read_exact_at(&mut got, CHUNK + 5).unwrap();
        assert_eq!(got, [7u8; 10]);
        let mut got = [0u8; 3];
        img.file().read_exact_at(&mut got, 3 * CHUNK + 1).unwrap();
        assert_eq!(got, [9u8; 3]);
        let _ = std::fs::remove_file(src_path);
        let _ = std::fs::remove_file(img_path);
    }
}
