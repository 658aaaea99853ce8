//! Replication between the two nodes of a resource: the primary's
//! connector and link, the secondary's session, the resync engine, the
//! listener, and the thin framing shell over `hast-repl`'s pure codec.
//! The protocol itself is described in `docs/replication.md`.

pub mod auth;
pub mod link;
pub mod listener;
pub mod primary;
pub mod resync;
pub mod secondary;
pub mod wire;
