//! Replication between the two nodes of a resource: the primary's
//! connector and link, the secondary's session, the resync engine, the
//! listener, the thin framing shell over `hast-repl`'s pure codec, and the
//! connection itself (`stream`: plain TCP or TLS, `tls`: pinned certificates).
//! The protocol itself is described in `docs/replication.md`.

pub mod auth;
pub mod heartbeat;
pub mod link;
pub mod listener;
pub mod primary;
pub mod resync;
pub mod secondary;
pub mod stream;
pub mod tls;
pub mod wire;
