//! hastcd's control requests from an arbitrary local peer: a command or an
//! error reply, never a panic; a decoded request re-encodes to itself.

#![no_main]

use hast_connect::control::{decode_request, Request};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(cmd) = decode_request(data) {
        let again = serde_json::to_vec(&Request::new(cmd.clone())).expect("re-encode");
        assert_eq!(decode_request(&again), Ok(cmd));
    }
});
