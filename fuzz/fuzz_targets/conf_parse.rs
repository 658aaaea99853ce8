//! Fuzz the hast.conf parser: any text must give a Config or a one-line
//! error, never a panic.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Err(e) = hast_conf::parse(s, std::path::Path::new("fuzz.conf"), "nodea") {
            assert!(!e.to_string().contains('\n'));
        }
    }
});
