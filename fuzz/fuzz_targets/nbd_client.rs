#![no_main]
//! A lying NBD server against the connector's client side: the greeting
//! and every option reply the input makes up. Nothing panics, a header
//! announcing more than `OPTION_LEN_MAX` is refused before its payload is
//! read, and whatever is granted describes the export it was told.

use hast_nbd::client::{parse_greeting, Next, Opening};
use hast_nbd::proto::{GREETING_LEN, OPTION_LEN_MAX, OPTION_REPLY_HEADER_LEN};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() >= GREETING_LEN {
        let mut g = [0u8; GREETING_LEN];
        g.copy_from_slice(&data[..GREETING_LEN]);
        let _ = parse_greeting(&g);
    }
    for mut opening in [Opening::go(), Opening::starttls()] {
        let mut rest = data;
        while rest.len() >= OPTION_REPLY_HEADER_LEN {
            let mut raw = [0u8; OPTION_REPLY_HEADER_LEN];
            raw.copy_from_slice(&rest[..OPTION_REPLY_HEADER_LEN]);
            rest = &rest[OPTION_REPLY_HEADER_LEN..];
            let Ok(h) = opening.header(&raw) else { break };
            assert!(h.len <= OPTION_LEN_MAX);
            let n = (h.len as usize).min(rest.len());
            let (payload, tail) = rest.split_at(n);
            rest = tail;
            match opening.reply(&h, payload) {
                Ok(Next::More) => continue,
                Ok(Next::Open(g)) => {
                    let info = g.export_info();
                    assert_eq!(info.size, g.size);
                    break;
                }
                Err(_) => break,
            }
        }
    }
});
