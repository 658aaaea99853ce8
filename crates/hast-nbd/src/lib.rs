//! hast-nbd: the NBD protocol as hast's client access path (docs/overview.md §2).
//!
//! A pure, sans-IO codec — [`proto`] (constants and value types),
//! [`handshake`] (fixed-newstyle option haggling as the [`Negotiation`]
//! state machine), [`request`] (request headers and [`validate`]) and
//! [`reply`] (simple and structured replies) — and a thin tokio shell,
//! [`server`], that serves one connection per [`serve`] (or
//! [`serve_split`]) call over any byte stream, or per [`serve_tls`] with
//! `NBD_OPT_STARTTLS` (the TLS library is the caller's, behind [`StartTls`]). The daemon supplies exports
//! through the [`Exports`] and [`Export`] traits; this crate knows nothing
//! of replication.
//!
//! Network input never panics: malformed options get an option error or a
//! closed connection, malformed requests an NBD error reply (the connection
//! keeps serving) or, when the stream is out of sync, a closed connection.

pub mod budget;
pub mod client;
pub mod error;
pub mod handshake;
pub mod proto;
pub mod reply;
pub mod request;
pub mod server;

pub use budget::Budget;
pub use error::NbdError;
pub use handshake::{
    greeting, Catalog, ClientFlags, InfoRequest, MetaRequest, Negotiated, Negotiation,
    OptionHeader, OptionReplyHeader, Outcome, Step, TlsMode, Transmission, TLS_REQUIRED_MESSAGE,
};
pub use proto::{
    BlockExtent, BlockSizes, Errno, ExportInfo, OpenError, OpenErrorKind, OPTION_LEN_MAX,
    PAYLOAD_MAX,
};
pub use request::{validate, Command, CommandType, Discard, Rejected, Request};
pub use server::{
    refuse, serve, serve_split, serve_tls, Export, Exports, IntoHalves, Limits, StartTls,
    PAYLOAD_TIMEOUT,
};
