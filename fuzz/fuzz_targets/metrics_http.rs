//! The metrics endpoint's request head from an arbitrary client: routing
//! never panics, a buffer past the head limit always gets an answer (the
//! server never waits for more), and every answer is a well-formed status
//! line that closes the connection.

#![no_main]

use hast_metrics::http::{error_body, response, route, HEAD_BYTES_MAX};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let routed = route(data);
    if data.len() > HEAD_BYTES_MAX {
        assert!(routed.is_some(), "waiting for more past the head limit");
    }
    if let Some(r) = routed {
        let status = r.status();
        let answer = response(status, "text/plain", &error_body(status));
        let text = String::from_utf8(answer).expect("answers are ASCII");
        assert!(text.starts_with(&format!("HTTP/1.1 {} ", status.code())));
        assert!(text.contains("\r\nConnection: close\r\n\r\n"));
    }
});
