//! Planted bugs, for proving that the simulator's checks can fail.
//!
//! Each [`Mutation`] names one rule of the core that a plausible bug would
//! break. The rule's code asks [`planted`] whether to break it; without the
//! `mutations` feature (every binary) the answer is a constant `false` and
//! the check compiles away. The simulator's tests plant each one for a run
//! and expect a failure (`tests/mutations.rs`).

/// One deliberately broken rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// fullsync acknowledges a write before the secondary's REPLY.
    AckBeforeReply,
    /// A barrier clears dirty bits although the peer did not flush.
    ClearWithoutPeerFlush,
    /// The data write is issued before its activemap bit is durable.
    SkipMapFlush,
    /// The secondary accepts a primary of an older epoch.
    AcceptOlderEpoch,
    /// The degraded period's record counts for the period current when it
    /// is written, not the write's own, and writes of an older period go
    /// alone (hastd's one flag before seed 38).
    RecordForCurrentPeriod,
    /// A write that began before a handshake goes alone after it (hastd
    /// before seed 3273).
    GoAloneAcrossHandshake,
    /// SYNC_DONE goes while writes that began before the link are still in
    /// flight (hastd before seed 481).
    SyncDoneBeforeOlderWrites,
}

impl Mutation {
    pub const ALL: [Mutation; 7] = [
        Mutation::AckBeforeReply,
        Mutation::ClearWithoutPeerFlush,
        Mutation::SkipMapFlush,
        Mutation::AcceptOlderEpoch,
        Mutation::RecordForCurrentPeriod,
        Mutation::GoAloneAcrossHandshake,
        Mutation::SyncDoneBeforeOlderWrites,
    ];
}

#[cfg(feature = "mutations")]
mod active {
    use super::Mutation;
    use std::cell::Cell;

    thread_local! {
        static PLANTED: Cell<Option<Mutation>> = const { Cell::new(None) };
    }

    /// Plants `m` on this thread until the guard is dropped.
    pub fn plant(m: Option<Mutation>) -> Guard {
        let before = PLANTED.with(|p| p.replace(m));
        Guard(before)
    }

    pub struct Guard(Option<Mutation>);

    impl Drop for Guard {
        fn drop(&mut self) {
            PLANTED.with(|p| p.set(self.0));
        }
    }

    pub fn planted(m: Mutation) -> bool {
        PLANTED.with(|p| p.get() == Some(m))
    }
}

#[cfg(feature = "mutations")]
pub use active::{plant, planted, Guard};

/// Whether the rule `m` is to be broken: never, without the feature.
#[cfg(not(feature = "mutations"))]
#[inline(always)]
pub fn planted(_m: Mutation) -> bool {
    false
}
