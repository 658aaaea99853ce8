//! What a barrier (a flush of this copy and, when connected, of the peer's)
//! allows the activemap to clear.
//!
//! An extent's bit may be cleared only once every write to it is durable on
//! both copies: this copy's `fdatasync` covers its own, the peer's FLUSH its
//! copy. Without the peer's flush nothing is cleared — the peer may hold
//! those writes only in its page cache, or not at all — though the local
//! flush still succeeds: the resource runs degraded, the extents stay dirty
//! and the next connection copies them.

use crate::mutation::{planted, Mutation};

/// The peer's part in a barrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerCopy {
    /// No copy this node answers for: no peer configured, or this node is
    /// the secondary (the primary's barrier covers both).
    NotOurs,
    /// The peer flushed everything it had completed before the barrier.
    Flushed,
    /// The peer is absent, or its flush failed.
    Behind,
}

/// Whether the activemap may clear the extents that were idle when the
/// barrier started (`ActiveMap::barrier_done`), once the local flush
/// succeeded.
pub fn may_clear(peer: PeerCopy) -> bool {
    match peer {
        PeerCopy::NotOurs | PeerCopy::Flushed => true,
        PeerCopy::Behind => planted(Mutation::ClearWithoutPeerFlush),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clears_only_what_both_copies_flushed() {
        assert!(may_clear(PeerCopy::NotOurs));
        assert!(may_clear(PeerCopy::Flushed));
        assert!(!may_clear(PeerCopy::Behind));
    }
}
