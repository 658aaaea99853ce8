//! The secondary's rules: whom it accepts at the handshake, what it records
//! when, when it answers RECEIVED and REPLY, and in which order a FLUSH runs.
//!
//! - **Fencing by epoch.** A primary whose epoch is older than one this copy
//!   has seen was superseded and is refused ([`accept`]); a newer epoch is
//!   made durable before the handshake is answered ([`must_adopt_epoch`]),
//!   so a restart cannot forget it.
//! - **Identity and inconsistency on the first frame** ([`Adopt`]): the
//!   target of a resync marks itself inconsistent, and a first full sync
//!   takes the primary's resource id, only once the primary sends something:
//!   by then what this copy lacks is durable in the primary's activemap.
//! - **RECEIVED before REPLY** ([`early_received`]) only when the primary
//!   asked (memsync) and the write is not in memory the moment it is applied.
//! - **FLUSH covers exactly what came before it** ([`Order`]): it runs once
//!   every request numbered below it finished.
//! - **SYNC_DONE** stores the counters the primary sends and clears the
//!   inconsistent and outdated flags ([`sync_done`]): the copy is now the
//!   primary's.

use std::collections::BTreeSet;

use hast_meta::{Header, FLAG_INCONSISTENT, FLAG_OUTDATED};
use hast_repl::{Decision, Direction, Hello, HelloStatus};

use crate::mutation::{planted, Mutation};

/// The secondary's verdict on a primary's HELLO (`own` is this copy's):
/// [`hast_repl::accept`], which refuses an older epoch among the rest.
pub fn accept(primary: &Hello, own: &Hello) -> Result<Decision, HelloStatus> {
    if planted(Mutation::AcceptOlderEpoch) && primary.epoch < own.epoch {
        let mut forged = primary.clone();
        forged.epoch = own.epoch;
        return hast_repl::accept(&forged, own);
    }
    hast_repl::accept(primary, own)
}

/// The primary's epoch is newer: record it durably before answering.
pub fn must_adopt_epoch(primary: &Hello, own: &Hello) -> bool {
    primary.epoch > own.epoch
}

/// Header changes an accepted handshake decided, recorded on the first
/// frame after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopt {
    /// A first full sync: take the primary's resource id.
    pub resuid: Option<u64>,
    /// This copy is the resync's target: inconsistent until SYNC_DONE.
    pub inconsistent: bool,
}

impl Adopt {
    pub fn of(decision: Decision, primary: &Hello, own: &Hello) -> Adopt {
        Adopt {
            resuid: (decision.is_full() && own.resuid != primary.resuid).then_some(primary.resuid),
            inconsistent: decision.direction() == Some(Direction::PrimaryToSecondary),
        }
    }

    /// Applies it to the header about to be written.
    pub fn apply(self, h: &mut Header) {
        if let Some(id) = self.resuid {
            h.resuid = id;
        }
        if self.inconsistent {
            h.flags |= FLAG_INCONSISTENT;
        }
    }
}

/// Whether a replicated write gets a RECEIVED before its REPLY: the primary
/// asked (`want`, memsync) and the write is not in memory as soon as it is
/// applied (a page-cache copy answers with the REPLY alone, which follows at
/// once: one frame and one wake-up of the primary instead of two).
pub fn early_received(want: bool, in_memory: bool) -> bool {
    want && !in_memory
}

/// SYNC_DONE: the counters both sides agreed on, and the copy is whole and
/// up to date with the primary (no longer outdated either).
pub fn sync_done(h: &mut Header, localcnt: u64, remotecnt: u64) {
    h.localcnt = localcnt;
    h.remotecnt = remotecnt;
    h.flags &= !(FLAG_INCONSISTENT | FLAG_OUTDATED);
}

/// The requests being applied, by sequence number: what a FLUSH (or
/// SYNC_DONE) must wait for.
#[derive(Debug, Default)]
pub struct Order {
    inflight: BTreeSet<u64>,
}

impl Order {
    /// Request `seq` was read off the stream and is being applied.
    pub fn begin(&mut self, seq: u64) {
        self.inflight.insert(seq);
    }

    /// Request `seq` finished (its REPLY is on its way).
    pub fn done(&mut self, seq: u64) {
        self.inflight.remove(&seq);
    }

    /// Whether a request numbered below `seq` is still being applied.
    pub fn earlier_pending(&self, seq: u64) -> bool {
        self.inflight.range(..seq).next().is_some()
    }

    /// Number of requests being applied.
    pub fn len(&self) -> usize {
        self.inflight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hast_meta::Role;
    use hast_repl::PROTOCOL_VERSION;

    fn hello(role: Role, epoch: u64) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            resource: "r0".into(),
            node: "n".into(),
            role,
            resuid: 7,
            localcnt: 1,
            remotecnt: 1,
            datasize: 1 << 20,
            extentsize: 1 << 16,
            epoch,
            inconsistent: false,
        }
    }

    #[test]
    fn epoch_fencing() {
        let own = hello(Role::Secondary, 5);
        assert_eq!(
            accept(&hello(Role::Primary, 4), &own),
            Err(HelloStatus::StaleEpoch)
        );
        assert_eq!(accept(&hello(Role::Primary, 5), &own), Ok(Decision::Merge));
        assert!(!must_adopt_epoch(&hello(Role::Primary, 5), &own));
        assert!(must_adopt_epoch(&hello(Role::Primary, 6), &own));
    }

    #[test]
    fn received_table() {
        assert!(early_received(true, false));
        assert!(!early_received(true, true));
        assert!(!early_received(false, false));
        assert!(!early_received(false, true));
    }

    #[test]
    fn sync_done_clears_inconsistent_and_outdated_only() {
        let mut h = Header {
            generation: 1,
            name: "r0".into(),
            datasize: 1 << 20,
            extentsize: 1 << 16,
            keepdirty: 64,
            data_offset: 0,
            map_offset: 0,
            map_size: 0,
            resuid: 7,
            localcnt: 1,
            remotecnt: 1,
            prevrole: Role::Secondary,
            epoch: 5,
            flags: FLAG_INCONSISTENT | FLAG_OUTDATED,
        };
        sync_done(&mut h, 9, 4);
        assert_eq!((h.localcnt, h.remotecnt, h.flags), (9, 4, 0));
        // Adopting as a resync's target marks inconsistent, never clears
        // outdated: only SYNC_DONE says the copy is the primary's again.
        h.flags = FLAG_OUTDATED;
        Adopt {
            resuid: None,
            inconsistent: true,
        }
        .apply(&mut h);
        assert_eq!(h.flags, FLAG_INCONSISTENT | FLAG_OUTDATED);
    }

    #[test]
    fn flush_waits_for_earlier_only() {
        let mut o = Order::default();
        o.begin(3);
        o.begin(5);
        assert!(!o.earlier_pending(3));
        assert!(o.earlier_pending(4));
        o.done(3);
        assert!(!o.earlier_pending(5));
        assert!(o.earlier_pending(6));
        o.done(5);
        assert!(o.is_empty());
    }
}
