//! The replication rules of one resource, with no I/O: sans-IO state
//! machines that take events and return actions, so that hastd's tokio code
//! is only the driver that performs them, and the same rules run here under
//! a deterministic, seeded simulation of both nodes (`sim`).
//!
//! - [`write`]: the primary's rules for one modification — fence, activemap
//!   before data, send, apply, acknowledge per the mode, degrade on failure.
//! - [`secondary`]: the secondary's — fencing by epoch at the handshake, when
//!   to answer RECEIVED and REPLY, FLUSH after everything before it.
//! - [`handshake`]: the HELLO a header makes, the counters a finished resync
//!   stores.
//! - [`resync`]: when a resync may declare the copies in sync.
//! - [`barrier`]: what a flush of the copies allows the activemap to clear.
//! - [`edge`]: the local disk trait that hastd implements over real files and
//!   the simulator over simulated ones.
//! - [`sim`]: the simulator and its checks; `examples/sim.rs` runs it long.
//! - [`mutation`]: planted bugs the simulator's tests prove it catches.
//!
//! Imports go one way: `hastd → hast-core → hast-repl, hast-meta, hast-conf`.

pub mod barrier;
pub mod edge;
pub mod handshake;
pub mod mutation;
pub mod resync;
pub mod secondary;
pub mod sim;
pub mod write;
