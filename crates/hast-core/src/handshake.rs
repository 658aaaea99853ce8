//! What each side says and records around a connection: the HELLO built
//! from a header, and the counters stored once a resync finished.
//! The decision itself is `hast_repl::decide` (pure, table-tested there);
//! the secondary's verdict is [`crate::secondary::accept`].

use hast_meta::{Header, Role, FLAG_INCONSISTENT};
use hast_repl::{Hello, PROTOCOL_VERSION};

/// The HELLO a node sends (primary) or answers with (secondary), from its
/// current header.
pub fn hello_of(h: &Header, node: &str, role: Role) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        resource: h.name.clone(),
        node: if node.is_empty() {
            "-".into()
        } else {
            node.to_string()
        },
        role,
        resuid: h.resuid,
        localcnt: h.localcnt,
        remotecnt: h.remotecnt,
        datasize: h.datasize,
        extentsize: h.extentsize,
        epoch: h.epoch,
        inconsistent: h.flags & FLAG_INCONSISTENT != 0,
    }
}

/// A resync finished and both copies are durable: the counters the
/// secondary is told to store (SYNC_DONE), and the primary's own, which it
/// records only after the secondary acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncDone {
    pub secondary: (u64, u64),
    pub primary: (u64, u64),
}

impl SyncDone {
    pub fn of(primary: &Header, secondary: &Hello) -> SyncDone {
        let own = hello_of(primary, "", Role::Primary);
        let (p, s) = hast_repl::counters_after_sync(&own, secondary);
        SyncDone {
            secondary: s,
            primary: p,
        }
    }

    /// The primary's header once the secondary acknowledged.
    pub fn apply_primary(self, h: &mut Header) {
        (h.localcnt, h.remotecnt) = self.primary;
    }
}
