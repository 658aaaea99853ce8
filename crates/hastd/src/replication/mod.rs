//! Replication between the two nodes of a resource: setting connections
//! up and running their sessions — the primary's connector, the secondary's
//! session, the resync engine, the listener, the handshake's authentication
//! (`auth`) and this node's certificates (`tls`). The connection itself
//! (framing, sending, matching replies, liveness) is `crate::link`, which
//! the data path uses too; imports run `replication → datapath, link` and
//! never back. The protocol is described in `docs/replication.md`.

pub mod attach;
pub mod auth;
pub mod listener;
pub mod primary;
pub mod resync;
pub mod secondary;
pub mod tls;
