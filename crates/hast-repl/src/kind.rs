//! The frame kinds of the replication protocol, their wire codes and the
//! flag bits each may carry (the other per-kind rules are `frame.rs`'s). Its own module because the errors name
//! a kind and the frame codec returns those errors.

use std::fmt;

/// Frame flag bits.
pub mod flags {
    /// Write through to stable storage before replying.
    pub const FUA: u8 = 0x01;
    /// No payload: the range reads as zeroes.
    pub const ZERO: u8 = 0x02;
    /// The payload is an lz4 block with a size prefix.
    pub const LZ4: u8 = 0x04;
    /// Resync traffic (not a client request).
    pub const SYNC: u8 = 0x08;
    /// Zeroing may deallocate.
    pub const PUNCH: u8 = 0x10;
    /// Last chunk of an activemap transfer.
    pub const LAST: u8 = 0x20;
    /// memsync: answer RECEIVED as soon as the write is in memory. The
    /// primary asks per request, so the secondary follows the primary's
    /// mode, also after a live change of `replication`.
    pub const RECEIVED: u8 = 0x40;
    /// Every defined bit.
    pub const ALL: u8 = FUA | ZERO | LZ4 | SYNC | PUNCH | LAST | RECEIVED;
}

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Hello,
    HelloReply,
    Map,
    Write,
    Zero,
    Flush,
    Read,
    Keepalive,
    SyncDone,
    Reply,
    Received,
    Goodbye,
    /// Authentication (`auth`): the secondary's nonce, before anything else.
    Challenge,
    /// The primary's claim (resource, node) and proof.
    Auth,
    /// The secondary's verdict and proof.
    AuthReply,
}

impl Kind {
    /// Every kind, in wire-code order.
    pub const ALL: [Kind; 15] = [
        Kind::Hello,
        Kind::HelloReply,
        Kind::Map,
        Kind::Write,
        Kind::Zero,
        Kind::Flush,
        Kind::Read,
        Kind::Keepalive,
        Kind::SyncDone,
        Kind::Reply,
        Kind::Received,
        Kind::Goodbye,
        Kind::Challenge,
        Kind::Auth,
        Kind::AuthReply,
    ];

    pub fn code(self) -> u8 {
        match self {
            Kind::Hello => 1,
            Kind::HelloReply => 2,
            Kind::Map => 3,
            Kind::Write => 4,
            Kind::Zero => 5,
            Kind::Flush => 6,
            Kind::Read => 7,
            Kind::Keepalive => 8,
            Kind::SyncDone => 9,
            Kind::Reply => 10,
            Kind::Received => 11,
            Kind::Goodbye => 12,
            Kind::Challenge => 13,
            Kind::Auth => 14,
            Kind::AuthReply => 15,
        }
    }

    pub fn from_code(code: u8) -> Option<Kind> {
        Kind::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }

    /// Flags this kind may carry.
    pub fn allowed_flags(self) -> u8 {
        use flags::*;
        match self {
            Kind::Write => FUA | ZERO | LZ4 | SYNC | PUNCH | RECEIVED,
            Kind::Zero => FUA | SYNC | PUNCH | RECEIVED,
            Kind::Flush | Kind::Read => SYNC,
            Kind::Reply => LZ4 | SYNC,
            Kind::Map => LAST,
            Kind::Hello
            | Kind::HelloReply
            | Kind::Keepalive
            | Kind::SyncDone
            | Kind::Received
            | Kind::Goodbye
            | Kind::Challenge
            | Kind::Auth
            | Kind::AuthReply => 0,
        }
    }

    /// Kinds sent with [`encode_message_frame`]: always crc32c-checksummed.
    pub fn is_message(self) -> bool {
        matches!(
            self,
            Kind::Hello
                | Kind::HelloReply
                | Kind::Map
                | Kind::SyncDone
                | Kind::Goodbye
                | Kind::Challenge
                | Kind::Auth
                | Kind::AuthReply
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Hello => "HELLO",
            Kind::HelloReply => "HELLO_REPLY",
            Kind::Map => "MAP",
            Kind::Write => "WRITE",
            Kind::Zero => "ZERO",
            Kind::Flush => "FLUSH",
            Kind::Read => "READ",
            Kind::Keepalive => "KEEPALIVE",
            Kind::SyncDone => "SYNC_DONE",
            Kind::Reply => "REPLY",
            Kind::Received => "RECEIVED",
            Kind::Goodbye => "GOODBYE",
            Kind::Challenge => "CHALLENGE",
            Kind::Auth => "AUTH",
            Kind::AuthReply => "AUTH_REPLY",
        })
    }
}
