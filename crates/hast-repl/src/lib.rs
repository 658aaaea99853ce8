//! The HAST replication protocol, pure: no sockets, no clock, no tokio.
//!
//! - [`frame`]: the wire frame (32-byte header, digest, payload), its per-kind
//!   limits checked before anything is allocated, and the data encodings
//!   (hole, lz4) with their checksums ([`checksum`]).
//! - [`auth`]: mutual authentication (CHALLENGE, AUTH, AUTH_REPLY) before
//!   the hello, HMAC-SHA256 over both nonces.
//! - [`discover`]: the read-only discovery exchange (which resources, in
//!   which role and epoch, where their NBD exports are), HMAC-SHA256 over both
//!   nonces, resources with a secret shown only to clients holding it.
//! - [`hello`]: the HELLO / HELLO_REPLY messages exchanged on every connection.
//! - [`mod@decide`]: FreeBSD's rules choosing the resync direction from both
//!   nodes' resuid and counters, and the counters stored once it finished.
//! - [`map`]: chunking and strict reassembly of the activemap sent after the hello.
//!
//! `hastd` wraps these in its tokio tasks; everything here is table-tested and
//! fuzzed (`fuzz/fuzz_targets/repl_frame.rs`).

pub mod auth;
pub mod checksum;
pub mod decide;
mod decision;
pub mod discover;
mod error;
pub mod frame;
pub mod hello;
mod kind;
pub mod map;

pub use checksum::{ChecksumKind, Digest, DIGEST_MAX};
pub use decide::{accept, counters_after_sync, decide, verify_reply, Decision, Direction};
pub use error::ReplError;
pub use frame::{
    decode_data, decode_sync_done, encode_control_frame, encode_data_frame, encode_data_head,
    encode_message_frame, encode_sync_done, flags, lz4_payload_max, verify_message, Compression,
    Data, FrameHeader, Kind, DATA_MAX, GOODBYE_MAX, HEADER_LEN, HELLO_MAX, LZ4_PREFIX_LEN, MAGIC,
    MAP_CHUNK_MAX, MAP_MAX, PAYLOAD_MAX, SYNC_DONE_LEN, VERSION,
};
pub use hello::{Hello, HelloReply, HelloStatus, PROTOCOL_VERSION};
pub use map::{map_chunks, MapAssembler};
