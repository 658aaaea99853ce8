//! Length-prefixed frames: `u32` big-endian body length, then the body.

use serde::{de::DeserializeOwned, Serialize};

/// Largest frame body either side accepts (1 MiB): a status of a thousand
/// resources fits many times over.
pub const FRAME_MAX: u32 = 1 << 20;
/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer announced a body larger than [`FRAME_MAX`].
    #[error("control frame of {0} bytes exceeds the limit of {FRAME_MAX} bytes")]
    TooLarge(u32),
    /// The body is not the JSON we expect.
    #[error("malformed control message: {0}")]
    Malformed(String),
}

/// Encodes `msg` as one frame (prefix + JSON body).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let body = serde_json::to_vec(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|&l| l <= FRAME_MAX)
        .ok_or(FrameError::TooLarge(u32::MAX))?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads the body length from a frame prefix, checking the limit before the
/// caller allocates the body buffer.
pub fn decode_len(prefix: [u8; HEADER_LEN]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix);
    if len > FRAME_MAX {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len as usize)
}

/// Parses a frame body.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| FrameError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Envelope, Request, Role};

    #[test]
    fn round_trip() {
        let reqs = [
            Request::Role {
                role: Role::Primary,
                names: vec!["shared".into()],
                epoch: Some(7),
                force: false,
            },
            Request::Lease {
                ms: 3000,
                names: Vec::new(),
                not_after: None,
            },
            Request::Lease {
                ms: 3000,
                names: vec!["r0".into()],
                not_after: Some(123_456_789_000),
            },
        ];
        for req in reqs {
            let req = Envelope::new(req);
            let frame = encode(&req).unwrap();
            let len = decode_len(frame[..4].try_into().unwrap()).unwrap();
            assert_eq!(len, frame.len() - 4);
            let back: Envelope<Request> = decode_body(&frame[4..]).unwrap();
            assert_eq!(back, req);
        }
    }

    /// The typed role and status travel as the strings they always were.
    #[test]
    fn role_and_status_strings() {
        use crate::Status;
        let cases = [
            (serde_json::to_string(&Role::Init), "\"init\""),
            (serde_json::to_string(&Role::Primary), "\"primary\""),
            (serde_json::to_string(&Role::Secondary), "\"secondary\""),
            (serde_json::to_string(&Status::Complete), "\"complete\""),
            (serde_json::to_string(&Status::Degraded), "\"degraded\""),
            (
                serde_json::to_string(&Status::SplitBrain),
                "\"split-brain\"",
            ),
            (serde_json::to_string(&Status::Inactive), "\"-\""),
        ];
        for (json, want) in cases {
            assert_eq!(json.unwrap(), want);
        }
        for st in [
            Status::Complete,
            Status::Degraded,
            Status::SplitBrain,
            Status::Inactive,
        ] {
            let json = format!("\"{st}\"");
            assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), st);
        }
    }

    /// A role request from a hastctl that predates `-E` still decodes.
    #[test]
    fn role_without_epoch_decodes() {
        let body = br#"{"version":1,"body":{"Role":{"role":"primary","names":["r0"]}}}"#;
        let req: Envelope<Request> = decode_body(body).unwrap();
        assert_eq!(
            req.body,
            Request::Role {
                role: Role::Primary,
                names: vec!["r0".into()],
                epoch: None,
                force: false,
            }
        );
    }

    /// A lease request from a hastctl that predates `not_after` still decodes.
    #[test]
    fn lease_without_not_after_decodes() {
        let body = br#"{"version":1,"body":{"Lease":{"ms":1500,"names":["r0"]}}}"#;
        let req: Envelope<Request> = decode_body(body).unwrap();
        assert_eq!(
            req.body,
            Request::Lease {
                ms: 1500,
                names: vec!["r0".into()],
                not_after: None
            }
        );
    }

    #[test]
    fn limits_and_garbage() {
        let cases: &[([u8; 4], bool)] = &[
            ([0, 0, 0, 0], true),
            ([0, 0x10, 0, 0], true),
            ([0, 0x10, 0, 1], false),
            ([0xff, 0xff, 0xff, 0xff], false),
        ];
        for (prefix, ok) in cases {
            assert_eq!(decode_len(*prefix).is_ok(), *ok, "{prefix:?}");
        }
        assert!(decode_body::<Envelope<Request>>(b"{").is_err());
        assert!(
            decode_body::<Envelope<Request>>(b"{\"version\":1,\"body\":{\"Bogus\":{}}}").is_err()
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(data: Vec<u8>) {
            let _ = decode_body::<Envelope<Request>>(&data);
            let _ = decode_body::<Envelope<crate::Response>>(&data);
        }
    }
}
