//! Async socket plumbing shared by the NBD server (`hast-nbd`) and the
//! replication link (`hastd::replication`): the [`Outbox`], through which
//! every task of a connection sends its frames.

mod outbox;

pub use outbox::{Closed, OutFrame, Outbox};
