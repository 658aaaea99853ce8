#![no_main]
//! The authenticated handshake from a hostile peer, both sides: whatever a
//! stranger sends as AUTH (to a secondary) or as CHALLENGE / AUTH_REPLY (to
//! a primary) never panics, decodes canonically, and never passes a check
//! made with a key the stranger does not have.

use hast_repl::auth::{self, Auth, AuthReply, Challenge};

const KEY: &[u8] = b"fuzz-key-0123456789abcdef";
const NEXT: &[u8] = b"fuzz-key-next-0123456789";

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let ch = Challenge::new([7; auth::NONCE_LEN]);
    let keys: &[&[u8]] = &[KEY, NEXT];

    // The secondary's side: an AUTH from anyone.
    if let Ok(a) = Auth::decode(data) {
        assert_eq!(a.encode(), data, "AUTH decoding must be canonical");
        assert!(
            auth::answer(&ch, &a, Some(keys), "nodeb").is_err(),
            "a stranger's AUTH passed"
        );
        // Without a secret the answer is an unauthenticated Ok, never a panic.
        let _ = auth::answer(&ch, &a, None, "nodeb");
    }

    // The primary's side: a CHALLENGE and an AUTH_REPLY from a fake secondary.
    if let Ok(c) = Challenge::decode(data) {
        assert_eq!(c.encode(), data, "CHALLENGE decoding must be canonical");
    }
    if let Ok(reply) = AuthReply::decode(data) {
        assert_eq!(reply.encode(), data, "AUTH_REPLY decoding must be canonical");
        let mut mine = Auth {
            nonce: [9; auth::NONCE_LEN],
            tag: [0; auth::MAC_LEN],
            resource: "r0".into(),
            node: "nodea".into(),
        };
        mine.tag = mine.transcript(&ch).primary_tag(Some(KEY));
        assert!(
            auth::check_reply(&ch, &mine, &reply, Some(keys)).is_err(),
            "a fake secondary's reply passed"
        );
    }
});
