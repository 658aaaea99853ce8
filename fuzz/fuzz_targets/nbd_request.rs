#![no_main]
//! Transmission requests from a hostile client: every 28-byte window of the
//! input is parsed as a request header; a header that parses re-encodes to
//! the same bytes and parses again to the same request, and validation
//! against a fixed export never panics and never lets through a range
//! outside the export, a zero length, or a payload over the maximum.

use hast_nbd::handshake::Negotiated;
use hast_nbd::proto::{BlockSizes, ExportInfo, META_BASE_ALLOCATION_ID, PAYLOAD_MAX, REQUEST_LEN};
use hast_nbd::reply::encode_extents;
use hast_nbd::{validate, BlockExtent, Command, Request};

fn export() -> ExportInfo {
    let mut i = ExportInfo::new((1 << 30) + 512);
    i.can_trim = true;
    i.can_zero = true;
    i.can_fast_zero = true;
    i.can_cache = true;
    i.min_block = 512;
    i
}

fn negotiated(info: &ExportInfo, structured: bool, meta: bool) -> Negotiated {
    Negotiated {
        export: "disk".into(),
        flags: info.transmission_flags(structured),
        structured_replies: structured,
        meta_context: meta.then_some(META_BASE_ALLOCATION_ID),
        block_sizes: BlockSizes::new(info, PAYLOAD_MAX),
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let info = export();
    let modes = [
        negotiated(&info, false, false),
        negotiated(&info, true, false),
        negotiated(&info, true, true),
    ];
    let mut ro = info.clone();
    ro.read_only = true;
    for window in data.chunks(REQUEST_LEN) {
        let mut raw = [0u8; REQUEST_LEN];
        raw[..window.len()].copy_from_slice(window);
        // Half the time force the magic so validation gets exercised.
        if window.first().is_some_and(|b| b & 1 == 1) {
            raw[..4].copy_from_slice(&0x2560_9513u32.to_be_bytes());
        }
        let Ok(req) = Request::parse(&raw) else {
            continue;
        };
        assert_eq!(req.encode(), raw);
        assert_eq!(Request::parse(&req.encode()).ok(), Some(req));
        let _ = req.discard();
        for neg in &modes {
            for inf in [&info, &ro] {
                let Ok(cmd) = validate(&req, inf, neg) else {
                    continue;
                };
                let (offset, len) = match cmd {
                    Command::Read { offset, len }
                    | Command::Write { offset, len, .. }
                    | Command::Trim { offset, len, .. }
                    | Command::Cache { offset, len }
                    | Command::WriteZeroes { offset, len, .. }
                    | Command::BlockStatus { offset, len, .. } => (offset, len),
                    Command::Flush | Command::Disconnect => continue,
                };
                assert!(len > 0);
                assert!(offset
                    .checked_add(u64::from(len))
                    .is_some_and(|e| e <= inf.size));
                if matches!(cmd, Command::Read { .. } | Command::Write { .. }) {
                    assert!(len <= neg.block_sizes.max_payload);
                }
                if matches!(
                    cmd,
                    Command::Write { .. } | Command::Trim { .. } | Command::WriteZeroes { .. }
                ) {
                    assert!(!inf.read_only);
                }
                if let Command::BlockStatus { len, req_one, .. } = cmd {
                    // Extents built from the request bytes themselves.
                    let extents: Vec<BlockExtent> = raw
                        .chunks(4)
                        .map(|c| BlockExtent {
                            len: u32::from(c[0]) << (c[1] % 24),
                            hole: c[2] & 1 == 1,
                            zero: c[3] & 1 == 1,
                        })
                        .collect();
                    let d = encode_extents(&extents, len, req_one);
                    assert!(!d.is_empty() && d.chunks_exact(8).remainder().is_empty());
                }
            }
        }
    }
});
