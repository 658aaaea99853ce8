#![no_main]
//! An event journal from a damaged disk: whatever the file holds, decoding
//! never panics, keeps only records that re-encode and decode to themselves,
//! and truncating the file where decoding says the good records end (what
//! `Journal::open` does to a torn tail) loses none of them.

use hast_events::record::{decode_records, encode_into, HEADER_LEN, MAGIC};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The first byte steers; the rest is the file.
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let wrapped;
    let file = if ctl & 1 != 0 {
        // Reach the payload parser behind the checksum: the rest as the
        // payload of one well-framed record, then the rest again as raw bytes.
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&(rest.len() as u32).to_le_bytes());
        v.extend_from_slice(&crc32c::crc32c(rest).to_le_bytes());
        v.extend_from_slice(rest);
        v.extend_from_slice(rest);
        wrapped = v;
        &wrapped[..]
    } else {
        rest
    };

    let d = decode_records(file);
    assert!(d.good_end <= file.len());
    assert!(d.records.len() <= d.frames);
    assert!(d.frames * HEADER_LEN <= d.good_end);
    if d.good_end < file.len() {
        assert!(!d.warnings.is_empty(), "a dropped tail is warned about");
    }

    // The torn tail cut off: the same records.
    let cut = decode_records(&file[..d.good_end]);
    assert_eq!(cut.records, d.records);
    assert_eq!(cut.good_end, d.good_end);

    // What decoded re-encodes (it fit once) and decodes to itself, cleanly.
    let mut again = Vec::new();
    for r in &d.records {
        encode_into(r, &mut again).expect("a decoded record re-encodes");
    }
    let d2 = decode_records(&again);
    assert_eq!(d2.records, d.records);
    assert!(d2.warnings.is_empty(), "{:?}", d2.warnings);
    assert_eq!(d2.good_end, again.len());
});
