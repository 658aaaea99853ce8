//! hastmon peer messages from an arbitrary network: CHALLENGE, REQUEST and
//! REPLY decoding never panics; a challenge that decodes re-encodes to the
//! same bytes; nothing forged without the key opens; and whatever the
//! sealing side produces opens back to the same body.

#![no_main]

use hast_mon::auth::{
    frame_len, open_reply, open_request, seal_reply, seal_request, Challenge, FrameKind, Key,
    PREFIX_LEN,
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(key) = Key::new(*b"fuzz-key-0123456789") else {
        return;
    };
    let ns = [0x5a; 16];
    let nc = [0xa5; 16];

    // The JSON bodies inside authenticated frames, and the control socket's.
    let _ = hast_mon::msg::decode::<hast_mon::msg::Request>(data);
    let _ = hast_mon::msg::decode::<hast_mon::msg::ReplyBody>(data);
    let _ = hast_api::decode_body::<hast_mon::ctl::CtlRequest>(data);

    if let Ok(c) = Challenge::decode(data) {
        assert_eq!(
            &c.encode()[..],
            data,
            "challenge decoding must be canonical"
        );
    }
    // Arbitrary bytes carry no valid MAC under a key the input cannot know.
    assert!(open_request(&key, &ns, data).is_err());
    assert!(open_reply(&key, &nc, &ns, data).is_err());
    if let Some((prefix, _)) = data.split_first_chunk::<PREFIX_LEN>() {
        for kind in [FrameKind::Request, FrameKind::Reply] {
            if let Ok(len) = frame_len(*prefix, kind) {
                assert!(len <= hast_mon::auth::FRAME_LEN_MAX);
            }
        }
    }

    // The input as a body: sealed frames open back to it, under the right
    // nonces only.
    if let Ok(req) = seal_request(&key, &ns, &nc, data) {
        assert_eq!(open_request(&key, &ns, &req), Ok((nc, data)));
        assert!(open_request(&key, &nc, &req).is_err());
    }
    if let Ok(rep) = seal_reply(&key, &nc, &ns, data) {
        assert_eq!(open_reply(&key, &nc, &ns, &rep), Ok(data));
        assert!(open_reply(&key, &ns, &nc, &rep).is_err());
    }
});
