//! Async socket plumbing shared by the NBD server (`hast-nbd`) and the
//! replication link (`hastd::replication`): the [`Outbox`], through which
//! every task of a connection sends its frames, and [`LowWater`], the read
//! half of a TCP connection that wakes for a large payload once it is whole.

mod lowat;
mod outbox;

pub use lowat::{LowWater, LOWAT_MAX, LOWAT_MIN};
pub use outbox::{Closed, OutFrame, Outbox};
