//! The store against real files in the temp directory.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use super::*;
use crate::error::{EX_DATAERR, EX_NOINPUT, EX_SOFTWARE, EX_USAGE};
use crate::header::check_name;

const MIB: u64 = 1 << 20;

/// A file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(size: u64) -> TempFile {
        let t = TempFile::path_only();
        fs::File::create(&t.0).unwrap().set_len(size).unwrap();
        t
    }
    fn path_only() -> TempFile {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        TempFile(std::env::temp_dir().join(format!("hast-meta-test-{}-{n}", std::process::id())))
    }
    fn bytes(&self) -> Vec<u8> {
        fs::read(&self.0).unwrap()
    }
    fn poke(&self, offset: u64, bytes: &[u8]) {
        let f = fs::OpenOptions::new().write(true).open(&self.0).unwrap();
        f.write_all_at(bytes, offset).unwrap();
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn created(size: u64) -> (TempFile, Header) {
    let t = TempFile::new(size);
    let h = Store::create(&t.0, "r0", None, 4096, 64).unwrap();
    (t, h)
}

#[test]
fn create_then_read_header() {
    let (t, h) = created(4 * MIB);
    assert_eq!(h.generation, 1);
    assert_eq!(h.name, "r0");
    assert_eq!(h.resuid, 0, "never synced: the first primary assigns it");
    assert_eq!(h.flags, 0);
    assert_eq!((h.localcnt, h.remotecnt, h.epoch), (0, 0, 0));
    assert_eq!(h.prevrole, Role::Init);
    assert_eq!(h.map_offset, MAP_OFFSET);
    assert!(h.provider_size_needed() <= 4 * MIB);

    let store = Store::open(&t.0).unwrap();
    assert_eq!(store.mediasize(), 4 * MIB);
    let p = store.read_header().unwrap();
    assert_eq!((p.slot, &p.header), (1, &h));
    assert!(p.other_error.is_none(), "both slots are valid after create");
    assert!(check_name(&p.header, "r0").is_ok());
    let bytes = t.bytes();
    assert_eq!(Header::decode(&bytes[..4096]).unwrap().generation, 0);
    let map = store.read_map(&p.header).unwrap();
    assert_eq!(map.len() as u64, h.map_size);
    assert!(map.iter().all(|&b| b == 0));
}

#[test]
fn create_does_not_touch_the_data_area() {
    let t = TempFile::new(0);
    t.poke(0, &vec![0xaa; 4 * MIB as usize]);
    let h = Store::create(&t.0, "r0", None, 2 << 20, 64).unwrap();
    let bytes = t.bytes();
    assert!(bytes[h.data_offset as usize..].iter().all(|&b| b == 0xaa));
    assert!(bytes[MAP_OFFSET as usize..h.data_offset as usize]
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn header_update_goes_to_the_other_slot() {
    let (t, mut h) = created(4 * MIB);
    let store = Store::open(&t.0).unwrap();
    h.generation += 1;
    h.localcnt = 1;
    h.prevrole = Role::Primary;
    store.write_header(&h).unwrap();
    let p = store.read_header().unwrap();
    assert_eq!((p.slot, &p.header), (0, &h));
    assert!(p.other_error.is_none());
    // Slot B still holds generation 1.
    assert_eq!(
        Header::decode(&t.bytes()[4096..8192]).unwrap().generation,
        1
    );
}

/// Damage to the newest slot falls back to the older one and says why.
#[test]
fn damaged_slot_falls_back_to_the_other() {
    // (what, offset of the damage in the file, bytes, expected message for slot A)
    let cases: &[(&str, u64, Vec<u8>, &str)] = &[
        (
            "flipped byte",
            20,
            vec![0x5a],
            "metadata slot A: bad checksum",
        ),
        (
            "torn write: tail of slot zeroed",
            64,
            vec![0; 4096 - 64],
            "metadata slot A: bad checksum",
        ),
        (
            "zeroed slot",
            0,
            vec![0; 4096],
            "metadata slot A: bad magic",
        ),
    ];
    for (what, off, bytes, msg) in cases {
        let (t, mut h) = created(4 * MIB);
        let store = Store::open(&t.0).unwrap();
        h.generation = 2;
        store.write_header(&h).unwrap();
        t.poke(*off, bytes);
        let p = store.read_header().unwrap();
        assert_eq!((p.slot, p.header.generation), (1, 1), "{what}");
        let other = p.other_error.unwrap().to_string();
        assert!(other.starts_with(msg), "{what}: {other}");
    }
}

#[test]
fn both_slots_bad_is_an_error_and_nothing_is_written() {
    let (t, _) = created(4 * MIB);
    t.poke(0, b"XASTMETA");
    t.poke(4096 + 30, &[0xff]);
    let before = t.bytes();
    let store = Store::open(&t.0).unwrap();
    let err = store.read_header().unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.exit_code(), EX_DATAERR);
    assert!(
        msg.starts_with(&format!(
            "no valid metadata on {} (slot A: bad magic; slot B: bad checksum",
            t.0.display()
        )),
        "{msg}"
    );
    assert!(msg.ends_with("— run hastctl create"), "{msg}");
    drop(store);
    assert!(before == t.bytes(), "reading must not write");
}

#[test]
fn create_argument_errors() {
    let missing = TempFile::path_only();
    // (provider size or None for missing, mediasize, extentsize, keepdirty, name, exit code, message start)
    type Case = (
        Option<u64>,
        Option<u64>,
        u32,
        u32,
        &'static str,
        i32,
        &'static str,
    );
    let cases: &[Case] = &[
        (Some(65536), None, 4096, 64, "r0", EX_DATAERR, "provider "),
        (
            Some(4 * MIB),
            Some(65536),
            4096,
            64,
            "r0",
            EX_DATAERR,
            "provider ",
        ),
        (
            Some(4 * MIB),
            None,
            3000,
            64,
            "r0",
            EX_USAGE,
            "extent size 3000 is not a power of two",
        ),
        (
            Some(4 * MIB),
            None,
            2048,
            64,
            "r0",
            EX_USAGE,
            "extent size 2048",
        ),
        (Some(4 * MIB), None, 4096, 0, "r0", EX_USAGE, "keepdirty 0"),
        (
            Some(4 * MIB),
            Some(8 * MIB),
            4096,
            64,
            "r0",
            EX_USAGE,
            "mediasize 8388608 is larger than provider",
        ),
        (
            Some(4 * MIB),
            None,
            4096,
            64,
            "bad/name",
            EX_DATAERR,
            "invalid resource name",
        ),
        (None, None, 4096, 64, "r0", EX_NOINPUT, "provider "),
    ];
    for (size, m, es, kd, name, code, msg) in cases {
        let file = size.map(TempFile::new);
        let path = file.as_ref().map_or(&missing.0, |f| &f.0);
        let before = file.as_ref().map(|f| f.bytes());
        let err = Store::create(path, name, *m, *es, *kd).unwrap_err();
        assert_eq!(err.exit_code(), *code, "{err}");
        assert!(err.to_string().starts_with(msg), "{err}");
        assert_eq!(
            file.as_ref().map(|f| f.bytes()),
            before,
            "failed create wrote: {err}"
        );
    }
    let err = Store::create(&missing.0, "r0", None, 4096, 64).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "provider {} does not exist (create it first)",
            missing.0.display()
        )
    );
    let t = TempFile::new(65536);
    let err = Store::create(&t.0, "r0", None, 4096, 64).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "provider {} too small: 65536 bytes, need at least {}",
            t.0.display(),
            min_provider_size()
        )
    );
}

#[test]
fn mediasize_limits_the_resource() {
    let t = TempFile::new(8 * MIB);
    let h = Store::create(&t.0, "r0", Some(2 * MIB), 4096, 64).unwrap();
    assert!(h.provider_size_needed() <= 2 * MIB);
    assert!(h.datasize >= MIB);
}

#[test]
fn provider_shrunk_below_the_metadata() {
    let (t, _) = created(4 * MIB);
    fs::OpenOptions::new()
        .write(true)
        .open(&t.0)
        .unwrap()
        .set_len(2 * MIB)
        .unwrap();
    let err = Store::open(&t.0).unwrap().read_header().unwrap_err();
    assert!(matches!(err, MetaError::ProviderShrunk { .. }), "{err}");
    let tiny = TempFile::new(100);
    let err = Store::open(&tiny.0).unwrap().read_header().unwrap_err();
    assert!(matches!(err, MetaError::TooSmall { .. }), "{err}");
}

#[test]
fn invalid_header_is_never_written() {
    let (t, mut h) = created(4 * MIB);
    let before = t.bytes();
    let store = Store::open(&t.0).unwrap();
    h.generation = 2;
    h.extentsize = 3000;
    assert!(store.write_header(&h).is_err());
    assert!(before == t.bytes());
}

#[test]
fn map_pages_round_trip() {
    // 160 MiB of 4 KiB extents: 40958 extents, a two-page map (sparse file).
    let t = TempFile::new(160 * MIB);
    let h = Store::create(&t.0, "r0", None, 4096, 64).unwrap();
    assert!(h.map_size >= 8192, "two map pages: {}", h.map_size);
    let store = Store::open(&t.0).unwrap();
    let p0 = vec![0x01; 4096];
    let p1 = vec![0x80; 4096];
    store
        .write_map_pages(&h, &[(0, p0.clone()), (4096, p1.clone())])
        .unwrap();
    let map = store.read_map(&h).unwrap();
    assert_eq!(&map[..4096], &p0[..]);
    assert_eq!(&map[4096..8192], &p1[..]);
    store
        .write_map_pages_nosync(&h, &[(4096, vec![0x02; 4096])])
        .unwrap();
    assert!(store.read_map(&h).unwrap()[4096..8192]
        .iter()
        .all(|&b| b == 0x02));
    // Whole-map write at shutdown.
    let full = vec![0x33; h.map_size as usize];
    store.write_map(&h, &full).unwrap();
    assert_eq!(store.read_map(&h).unwrap(), full);
    // The map stays between the slots and the data.
    let mut first_data = vec![0xffu8; 4096];
    store
        .file()
        .read_exact_at(&mut first_data, h.data_offset)
        .unwrap();
    assert!(first_data.iter().all(|&b| b == 0));
    assert!(store.read_header().is_ok());
    // A page outside the map is refused before anything is written.
    let err = store
        .write_map_pages(&h, &[(0, p0.clone()), (h.map_size, p1)])
        .unwrap_err();
    assert_eq!(err.exit_code(), EX_SOFTWARE);
    assert_eq!(store.read_map(&h).unwrap(), full);
}

/// The activemap's flush jobs land where read_map finds them.
#[test]
fn activemap_flush_through_the_store() {
    let (t, h) = created(4 * MIB);
    let store = Store::open(&t.0).unwrap();
    let mut am = crate::ActiveMap::new(
        h.extentsize,
        h.datasize,
        h.keepdirty,
        &store.read_map(&h).unwrap(),
        true,
    )
    .unwrap();
    assert!(am.write_start(5 * 4096, 4096).is_some());
    let job = am.begin_flush().unwrap();
    store.write_map_pages(&h, &job.pages).unwrap();
    am.flush_done(job.gen);
    let map = store.read_map(&h).unwrap();
    assert_eq!(map[0], 1 << 5);
    let again = crate::ActiveMap::new(h.extentsize, h.datasize, h.keepdirty, &map, true).unwrap();
    assert_eq!(again.needsync_extents().collect::<Vec<_>>(), [5]);
}
