#![no_main]
//! The discovery exchange from a hostile peer, both sides: whatever a
//! stranger sends as REQUEST (to a hastd) or as GREETING / ANSWER (to a
//! connector) never panics, decodes canonically, never opens a resource
//! with a secret, and never passes a client's check made with a key the
//! stranger does not have.

use hast_repl::discover::{self, Entry, Greeting, Offer, Request, Status};

const KEY: &[u8] = b"fuzz-key-0123456789abcdef";
const NEXT: &[u8] = b"fuzz-key-next-0123456789";

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let g = Greeting::new([7; discover::NONCE_LEN]);

    // hastd's side: a REQUEST from anyone.
    if let Ok(req) = Request::decode(data) {
        assert_eq!(
            req.encode().as_slice(),
            data,
            "REQUEST decoding must be canonical"
        );
        let locked = Offer {
            entry: Entry {
                name: "locked".into(),
                export: "locked".into(),
                role: hast_meta::Role::Primary,
                epoch: 1,
                status: Status::Complete,
                size: 4096,
                nbd: vec![],
                nbd_tls: false,
            },
            keys: Some(vec![KEY, NEXT]),
        };
        if let Ok((_, listed)) = discover::answer(&g, &req, &[locked]) {
            assert_eq!(listed, 0, "a stranger's REQUEST opened a locked resource");
        }
    }

    // The connector's side: a GREETING and an ANSWER from a fake server.
    if let Ok(gr) = Greeting::decode(data) {
        assert_eq!(
            gr.encode().as_slice(),
            data,
            "GREETING decoding must be canonical"
        );
    }
    if let Some((prefix, rest)) = data.split_first_chunk::<{ discover::ANSWER_PREFIX_LEN }>() {
        let _ = discover::decode_answer_len(*prefix);
        if let Some((body, tag)) = rest.split_last_chunk::<{ discover::MAC_LEN }>() {
            let req = discover::request(&g, [9; discover::NONCE_LEN], Some(KEY))
                .expect("our own version");
            assert!(
                discover::check_answer(&g, &req, body, tag, Some(KEY)).is_err(),
                "a fake server's answer passed"
            );
            // Without a secret an answer is only decoded.
            let _ = discover::check_answer(&g, &req, body, tag, None);
        }
    }
    if let Ok(entries) = discover::decode_body(data) {
        let again = discover::encode_body(&entries).expect("what decodes, encodes");
        assert_eq!(again, data, "ANSWER body decoding must be canonical");
    }
});
