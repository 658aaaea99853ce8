//! The local component on disk: opening it, reading and writing its header slots
//! and activemap with positional I/O, and `hastctl create`. The only module of the
//! crate that does I/O; all decisions are in `header` and `activemap`.
//!
//! Metadata writes go through a second descriptor opened with `O_DSYNC`: each
//! `pwrite` returns only once those bytes (and the metadata needed to read them
//! back) are on stable storage. That gives a durable write of just the map pages
//! or header slot we touched. The alternative, `fdatasync` on the shared
//! descriptor, would also have to write back every dirty data page of the
//! component that the data path left in the page cache, making each activemap
//! update (which sits in front of client writes) as slow as a full flush.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::MetaError;
use crate::header::{
    check_extentsize, check_keepdirty, map_size, pick_slot, validate_name, Header, Layout, Picked,
    Role,
};
use crate::{DATASIZE_MIN, MAP_OFFSET, SLOT_SIZE};

/// Zero buffer size used to write out a fresh map, so create's memory does not grow
/// with the map.
const ZERO_CHUNK_BYTES: usize = 256 * 1024;

/// An opened local component (regular file or block device).
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    /// The data path's descriptor (ordinary buffered writes).
    file: File,
    /// Same component opened with O_DSYNC, for metadata only (see module docs).
    dsync: File,
    mediasize: u64,
}

impl Store {
    /// Open a component read+write. A component that does not exist is
    /// [`MetaError::NotFound`] (EX_NOINPUT): files are created by the operator.
    pub fn open(path: &Path) -> Result<Store, MetaError> {
        let open = |dsync: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(true);
            if dsync {
                o.custom_flags(libc::O_DSYNC);
            }
            o.open(path).map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    MetaError::NotFound {
                        path: path.to_path_buf(),
                    }
                } else {
                    MetaError::io(path, "open", e)
                }
            })
        };
        let file = open(false)?;
        let dsync = open(true)?;
        // metadata().len() is 0 for a block device; seeking to the end works for both.
        // Offsets of this descriptor are otherwise unused (all I/O is positional).
        let mediasize = (&file)
            .seek(SeekFrom::End(0))
            .map_err(|e| MetaError::io(path, "determine size", e))?;
        Ok(Store {
            path: path.to_path_buf(),
            file,
            dsync,
            mediasize,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the provider in bytes.
    pub fn mediasize(&self) -> u64 {
        self.mediasize
    }

    /// The data descriptor, for the daemon's data path.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Read both header slots and pick the newest valid one. Writes nothing.
    pub fn read_header(&self) -> Result<Picked, MetaError> {
        if self.mediasize < MAP_OFFSET {
            return Err(MetaError::TooSmall {
                path: Some(self.path.clone()),
                mediasize: self.mediasize,
                need: min_provider_size(),
            });
        }
        let mut slots = vec![0u8; MAP_OFFSET as usize];
        self.file
            .read_exact_at(&mut slots, 0)
            .map_err(|e| MetaError::io(&self.path, "read metadata header", e))?;
        let (a, b) = slots.split_at(SLOT_SIZE as usize);
        let picked = pick_slot(Header::decode(a), Header::decode(b)).map_err(|e| match e {
            MetaError::NoValidMetadata { slot_a, slot_b, .. } => MetaError::NoValidMetadata {
                path: Some(self.path.clone()),
                slot_a,
                slot_b,
            },
            other => other,
        })?;
        self.check_fits(&picked.header)?;
        Ok(picked)
    }

    /// Write `h` to slot `h.generation % 2` durably (O_DSYNC). The caller bumps the
    /// generation, so the slot holding the previous header stays intact until this
    /// write is complete.
    pub fn write_header(&self, h: &Header) -> Result<(), MetaError> {
        h.validate()?;
        self.check_fits(h)?;
        let slot = h.generation % 2;
        self.dsync
            .write_all_at(&h.encode()[..], slot * SLOT_SIZE)
            .map_err(|e| MetaError::io(&self.path, "write metadata header", e))
    }

    /// The whole on-disk activemap.
    pub fn read_map(&self, h: &Header) -> Result<Vec<u8>, MetaError> {
        h.validate()?;
        self.check_fits(h)?;
        // Bounded: validate() caps map_size at MAP_SIZE_MAX and it fits the provider.
        let mut map = vec![0u8; h.map_size as usize];
        self.file
            .read_exact_at(&mut map, h.map_offset)
            .map_err(|e| MetaError::io(&self.path, "read activemap", e))?;
        Ok(map)
    }

    /// Write map pages (offsets relative to the map start) durably via O_DSYNC:
    /// with `metaflush on` the daemon relies on this before issuing data writes.
    pub fn write_map_pages(&self, h: &Header, pages: &[(u64, Vec<u8>)]) -> Result<(), MetaError> {
        self.write_pages(&self.dsync, h, pages)
    }

    /// Same through the ordinary descriptor, for `metaflush off`: ordered before the
    /// data write in the kernel, but not forced out of the disk cache.
    pub fn write_map_pages_nosync(
        &self,
        h: &Header,
        pages: &[(u64, Vec<u8>)],
    ) -> Result<(), MetaError> {
        self.write_pages(&self.file, h, pages)
    }

    /// The whole map image durably (clean shutdown).
    pub fn write_map(&self, h: &Header, map: &[u8]) -> Result<(), MetaError> {
        h.validate()?;
        self.check_fits(h)?;
        if map.len() as u64 != h.map_size {
            return Err(MetaError::MapSize {
                found: map.len() as u64,
                expected: h.map_size,
            });
        }
        self.dsync
            .write_all_at(map, h.map_offset)
            .map_err(|e| MetaError::io(&self.path, "write activemap", e))
    }

    fn write_pages(
        &self,
        fd: &File,
        h: &Header,
        pages: &[(u64, Vec<u8>)],
    ) -> Result<(), MetaError> {
        h.validate()?;
        self.check_fits(h)?;
        for (offset, bytes) in pages {
            let inside =
                matches!(offset.checked_add(bytes.len() as u64), Some(end) if end <= h.map_size);
            if !inside {
                return Err(MetaError::Internal("activemap page outside the map"));
            }
        }
        // Contiguous pages go out in one write: with O_DSYNC each write is a cache
        // flush, so fewer writes is cheaper.
        let mut i = 0;
        while i < pages.len() {
            let mut j = i + 1;
            while j < pages.len() && pages[j - 1].0 + pages[j - 1].1.len() as u64 == pages[j].0 {
                j += 1;
            }
            let result = if j == i + 1 {
                fd.write_all_at(&pages[i].1, h.map_offset + pages[i].0)
            } else {
                let run: Vec<u8> = pages[i..j]
                    .iter()
                    .flat_map(|(_, b)| b.iter().copied())
                    .collect();
                fd.write_all_at(&run, h.map_offset + pages[i].0)
            };
            result.map_err(|e| MetaError::io(&self.path, "write activemap", e))?;
            i = j;
        }
        Ok(())
    }

    fn check_fits(&self, h: &Header) -> Result<(), MetaError> {
        let need = h.provider_size_needed();
        if need > self.mediasize {
            return Err(MetaError::ProviderShrunk {
                path: self.path.clone(),
                mediasize: self.mediasize,
                need,
            });
        }
        Ok(())
    }

    /// `hastctl create`: write fresh metadata for resource `name` to the component.
    /// `mediasize` None uses the whole provider; `Some(m)` must not exceed it. The data
    /// area is not touched. Both slots are valid afterwards (generation 0 in slot A,
    /// 1 in slot B); the returned header is generation 1.
    ///
    /// Order matters for a crash in the middle: both slots are zeroed first, so an
    /// interrupted create leaves "no valid metadata" (run create again) rather than an
    /// old header in front of a zeroed map, which would lose its dirty extents.
    pub fn create(
        path: &Path,
        name: &str,
        mediasize: Option<u64>,
        extentsize: u32,
        keepdirty: u32,
    ) -> Result<Header, MetaError> {
        validate_name(name)?;
        check_extentsize(u64::from(extentsize))?;
        check_keepdirty(u64::from(keepdirty))?;
        let store = Store::open(path)?;
        let size = match mediasize {
            Some(m) if m > store.mediasize => {
                return Err(MetaError::MediasizeTooLarge {
                    path: path.to_path_buf(),
                    requested: m,
                    available: store.mediasize,
                })
            }
            Some(m) => m,
            None => store.mediasize,
        };
        let layout = Layout::for_create(size, extentsize).map_err(|e| match e {
            MetaError::TooSmall {
                mediasize, need, ..
            } => MetaError::TooSmall {
                path: Some(path.to_path_buf()),
                mediasize,
                need,
            },
            other => other,
        })?;
        let mut header = Header {
            generation: 0,
            name: name.to_string(),
            datasize: layout.datasize,
            extentsize,
            keepdirty,
            data_offset: layout.data_offset,
            map_offset: layout.map_offset,
            map_size: layout.map_size,
            // 0 = never synced: the first primary assigns a resuid and a
            // secondary with 0 adopts it with a full sync (FreeBSD's rule).
            resuid: 0,
            flags: 0,
            localcnt: 0,
            remotecnt: 0,
            prevrole: Role::Init,
            epoch: 0,
        };
        header.validate()?;

        let zeros = vec![0u8; ZERO_CHUNK_BYTES];
        let write = |buf: &[u8], offset: u64, what| {
            store
                .dsync
                .write_all_at(buf, offset)
                .map_err(|e| MetaError::io(path, what, e))
        };
        write(
            &zeros[..MAP_OFFSET as usize],
            0,
            "invalidate metadata header",
        )?;
        // Written out (not just a hole) so the blocks are allocated now and a later
        // map update cannot fail for lack of space.
        let mut off = 0;
        while off < layout.map_size {
            let n = (layout.map_size - off).min(ZERO_CHUNK_BYTES as u64) as usize;
            write(&zeros[..n], layout.map_offset + off, "write activemap")?;
            off += n as u64;
        }
        store.write_header(&header)?;
        header.generation = 1;
        store.write_header(&header)?;
        store
            .file
            .sync_all()
            .map_err(|e| MetaError::io(path, "fsync", e))?;
        Ok(header)
    }
}

/// The smallest provider `create` accepts (with the smallest map).
pub fn min_provider_size() -> u64 {
    MAP_OFFSET + map_size(DATASIZE_MIN, crate::EXTENT_SIZE_MAX as u32) + DATASIZE_MIN
}

#[cfg(test)]
mod tests;
