//! Fuzz the hastmon.conf parser: any text must give a Config or a one-line
//! `file:line: message` error, never a panic; a parsed config names only
//! resources with 2 or 3 nodes and a lease at least twice the heartbeat.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match hast_mon::conf::parse(text, std::path::Path::new("fuzz.conf"), "nodea") {
        Ok(config) => {
            for r in &config.resources {
                assert!((2..=3).contains(&r.nodes.len()));
                assert!(r.nodes.iter().all(|n| !n.remote.is_empty()));
                assert!(r.timing.lease >= r.timing.heartbeat_interval * 2);
            }
        }
        Err(e) => {
            let line = e.to_string();
            assert!(line.starts_with("fuzz.conf"), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }
});
