//! Fuzz the hastcd.conf parser: any text must give a Config or a one-line
//! `FILE:LINE: ...` error, never a panic.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let file = std::path::Path::new("fuzz.conf");
        if let Err(e) = hast_connect::conf::parse(s, file) {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            assert!(msg.starts_with("fuzz.conf"), "{msg}");
        }
    }
});
