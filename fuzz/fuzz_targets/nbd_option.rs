#![no_main]
//! Option haggling from a hostile client: the fuzz input is a client-flags
//! word, a byte choosing the TLS mode (off, optional, required), then option
//! frames (a control byte, option code, payload
//! length, payload). The control byte can corrupt the magic, claim an
//! oversized length, or shape the payload into a well-formed INFO/GO/meta
//! request so the fuzzer gets past the parsers. The negotiation must never
//! panic, every reply must be well-framed option replies (or the
//! EXPORT_NAME answer), once it says stop, it stays stopped, STARTTLS is
//! acknowledged only when TLS is configured and not yet started (the
//! target then plays a TLS handshake that succeeded), and with TLS required
//! no export is entered before TLS.

use hast_nbd::handshake::{
    Catalog, InfoRequest, MetaRequest, Negotiation, OptionHeader, Outcome, TlsMode,
};
use hast_nbd::proto::{
    ExportInfo, OpenError, OPTION_LEN_MAX, OPT_EXPORT_NAME, OPT_GO, OPT_INFO, OPT_LIST,
    OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, PAYLOAD_MAX,
};
use hast_nbd::OptionReplyHeader;

/// Two exports; "gone" answers as a stopping daemon would.
struct Fixed;

impl Catalog for Fixed {
    fn list(&self) -> Vec<(String, Option<String>)> {
        vec![("disk".into(), Some("fuzz".into())), ("".into(), None)]
    }

    fn lookup(&mut self, name: &str) -> Result<ExportInfo, OpenError> {
        match name {
            "disk" | "" => {
                let mut i = ExportInfo::new(1 << 30);
                i.can_trim = true;
                i.can_zero = true;
                i.min_block = 512;
                i.description = Some("fuzz".into());
                Ok(i)
            }
            "gone" => Err(OpenError::shutdown("stopping")),
            _ => Err(OpenError::unknown("no such export")),
        }
    }
}

/// Every reply byte stream is a sequence of complete option replies.
fn well_framed(mut b: &[u8]) -> bool {
    while !b.is_empty() {
        if b.len() < 20 {
            return false;
        }
        let mut h = [0u8; 20];
        h.copy_from_slice(&b[..20]);
        let Some(h) = OptionReplyHeader::parse(&h) else {
            return false;
        };
        let end = 20 + h.len as usize;
        if b.len() < end {
            return false;
        }
        b = &b[end..];
    }
    true
}

/// Turn raw fuzz bytes into a well-formed payload for the options that
/// have structure, so the fuzzer reaches the logic behind the parsers.
fn shaped(option: u32, raw: &[u8]) -> Option<Vec<u8>> {
    let names = ["disk", "", "gone", "nope"];
    let name = names[usize::from(*raw.first()?) % names.len()].to_string();
    let rest = &raw[1..];
    match option {
        OPT_INFO | OPT_GO => Some(
            InfoRequest {
                name,
                requests: rest.iter().map(|b| u16::from(*b % 5)).collect(),
            }
            .encode(),
        ),
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
            let queries = [
                "base:allocation",
                "base:",
                "qemu:dirty-bitmap:x",
                "x-y:",
                "nocolon",
            ];
            Some(
                MetaRequest {
                    name,
                    queries: rest
                        .iter()
                        .map(|b| queries[usize::from(*b) % queries.len()].to_string())
                        .collect(),
                }
                .encode(),
            )
        }
        _ => None,
    }
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let mode = [TlsMode::Off, TlsMode::Optional, TlsMode::Required][usize::from(data[4] % 3)];
    let mut neg = Negotiation::with_tls(PAYLOAD_MAX, mode);
    let flags = [data[0], data[1], data[2], data[3]];
    if neg.client_flags(flags).is_err() {
        return;
    }
    let mut catalog = Fixed;
    let mut ended = false;
    // Frames: control byte, option (4), payload length (2), payload.
    let mut rest = &data[5..];
    while rest.len() >= 7 && !ended {
        let ctl = rest[0];
        let mut option = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        if ctl & 0x02 == 0 {
            option %= 12; // mostly options the server knows (STARTTLS is 5)
        }
        let len = usize::from(u16::from_be_bytes([rest[5], rest[6]]));
        rest = &rest[7..];
        let (raw_payload, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        let shaped_payload = if ctl & 0x10 != 0 {
            shaped(option, raw_payload)
        } else {
            None
        };
        let payload: &[u8] = shaped_payload.as_deref().unwrap_or(raw_payload);
        let mut header = OptionHeader {
            option,
            len: payload.len() as u32,
        };
        if ctl & 0x04 != 0 {
            header.len = OPTION_LEN_MAX + u32::from(ctl); // oversized claim
        }
        let mut raw = header.encode();
        if ctl & 0x08 != 0 {
            raw[0] ^= ctl; // corrupt magic (ctl has bit 3 set: nonzero)
        }
        let header = match neg.option_header(&raw) {
            Ok(h) => h,
            Err(step) => {
                assert!(well_framed(&step.reply));
                assert!(!matches!(step.outcome, Outcome::Continue));
                ended = true;
                break;
            }
        };
        let step = neg.option(header, payload, &mut catalog);
        let export_name_ok =
            header.option == OPT_EXPORT_NAME && matches!(step.outcome, Outcome::Transmission(_));
        if export_name_ok {
            // Size, flags, and 0 or 124 zero bytes: no option reply framing.
            assert!(step.reply.len() == 10 || step.reply.len() == 134);
        } else {
            assert!(well_framed(&step.reply));
        }
        match step.outcome {
            Outcome::Continue => {}
            Outcome::StartTls => {
                assert!(mode != TlsMode::Off && !neg.is_tls());
                assert!(neg.tls_started().is_ok());
            }
            Outcome::Transmission(t) => {
                assert!(mode != TlsMode::Required || neg.is_tls());
                let b = t.negotiated.block_sizes;
                assert!(b.min.is_power_of_two() && b.preferred.is_power_of_two());
                assert!(b.max_payload >= b.preferred && b.max_payload <= PAYLOAD_MAX);
                ended = true;
            }
            Outcome::Abort | Outcome::Reject(_) => ended = true,
        }
    }
    if ended {
        // Once stopped, even a valid option is refused.
        let valid = OptionHeader {
            option: OPT_LIST,
            len: 0,
        };
        assert!(neg.option_header(&valid.encode()).is_err());
    }
});
