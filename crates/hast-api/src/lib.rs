//! The control protocol between `hastctl` and `hastd`: typed requests and
//! responses (serde, versioned), their framing on the control socket, and a
//! small blocking client.
//!
//! The control plane is never in the data path: `hastd` answers these
//! requests from its resource tasks, and nothing here touches I/O state.
//! A frame is a 4-byte big-endian length followed by that many bytes of
//! JSON; the length is checked against [`FRAME_MAX`] before anything is
//! allocated, so a hostile or broken peer cannot make either side allocate
//! more than that.

mod client;
mod frame;
mod types;

pub use client::{call, ClientError, Session};
pub use frame::{decode_body, decode_len, encode, FrameError, FRAME_MAX, HEADER_LEN};
pub use types::*;

/// Version of the control protocol. A peer that sends another version gets
/// an error reply, never a misread request.
pub const PROTOCOL_VERSION: u32 = 1;
