#![no_main]
//! Control-socket frames from an arbitrary peer: never a panic, never an
//! allocation beyond the frame limit.

use hast_api::{decode_body, decode_len, Envelope, Request, Response, HEADER_LEN};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER_LEN {
        return;
    }
    let prefix = [data[0], data[1], data[2], data[3]];
    if let Ok(len) = decode_len(prefix) {
        let body = &data[HEADER_LEN..];
        let body = &body[..body.len().min(len)];
        if let Ok(req) = decode_body::<Envelope<Request>>(body) {
            let again = hast_api::encode(&req).expect("re-encode");
            let back: Envelope<Request> = decode_body(&again[HEADER_LEN..]).expect("decode");
            assert_eq!(back, req);
        }
        let _ = decode_body::<Envelope<Response>>(body);
    }
});
