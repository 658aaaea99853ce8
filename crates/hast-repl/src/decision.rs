//! What the handshake decides ([`Decision`], the rows of `decide.rs`'s
//! table) and which way a resync copies ([`Direction`]). Its own module
//! because the hello reply carries a decision and `decide.rs` reads hellos.

use std::fmt;

/// Which way data flows during a resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    PrimaryToSecondary,
    SecondaryToPrimary,
}

/// The outcome of comparing the two hellos (rows of the module table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Secondary never synced (resuid 0): it adopts the primary's resuid;
    /// every extent goes primary → secondary.
    FullSync,
    /// Counters equal on both sides: in sync, but still merge both activemaps
    /// and copy the union primary → secondary (extents in flight when the
    /// link dropped, or left by an interrupted merge).
    Merge,
    /// The primary has changes the secondary lacks: copy the union of dirty
    /// extents primary → secondary.
    SyncToSecondary,
    /// The primary is stale: copy the union secondary → primary; meanwhile
    /// reads of those extents on the primary go to the secondary.
    SyncFromSecondary,
    /// Both have changes the other lacks: refuse, move no data.
    SplitBrain,
    /// A counter went backwards ("should never happen"): full sync primary →
    /// secondary, as FreeBSD does.
    FullSyncAnomaly,
    /// The one anomaly where only the secondary has unseen changes (sl > pr,
    /// pl < sr): FreeBSD does a full sync secondary → primary.
    FullSyncAnomalyFromSecondary,
    /// resuid both nonzero and different (or the primary has none): not the
    /// same resource — refuse.
    ResuidMismatch,
    /// datasize/extentsize differ — refuse.
    SizeMismatch,
}

impl Decision {
    pub const ALL: [Decision; 9] = [
        Decision::FullSync,
        Decision::Merge,
        Decision::SyncToSecondary,
        Decision::SyncFromSecondary,
        Decision::SplitBrain,
        Decision::FullSyncAnomaly,
        Decision::ResuidMismatch,
        Decision::SizeMismatch,
        Decision::FullSyncAnomalyFromSecondary,
    ];

    /// Wire code in a HELLO_REPLY (0 there means "no decision").
    pub fn code(self) -> u8 {
        match self {
            Decision::FullSync => 1,
            Decision::Merge => 2,
            Decision::SyncToSecondary => 3,
            Decision::SyncFromSecondary => 4,
            Decision::SplitBrain => 5,
            Decision::FullSyncAnomaly => 6,
            Decision::ResuidMismatch => 7,
            Decision::SizeMismatch => 8,
            Decision::FullSyncAnomalyFromSecondary => 9,
        }
    }

    pub fn from_code(code: u8) -> Option<Decision> {
        Decision::ALL
            .get(usize::from(code).checked_sub(1)?)
            .copied()
    }

    /// Which way data is copied; `None` for the refusals.
    pub fn direction(self) -> Option<Direction> {
        match self {
            Decision::FullSync
            | Decision::Merge
            | Decision::SyncToSecondary
            | Decision::FullSyncAnomaly => Some(Direction::PrimaryToSecondary),
            Decision::SyncFromSecondary | Decision::FullSyncAnomalyFromSecondary => {
                Some(Direction::SecondaryToPrimary)
            }
            Decision::SplitBrain | Decision::ResuidMismatch | Decision::SizeMismatch => None,
        }
    }

    /// Every extent is copied, whatever the activemaps say.
    pub fn is_full(self) -> bool {
        matches!(
            self,
            Decision::FullSync | Decision::FullSyncAnomaly | Decision::FullSyncAnomalyFromSecondary
        )
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Decision::FullSync => "full sync primary → secondary (fresh secondary)",
            Decision::Merge => "in sync; merge activemaps primary → secondary",
            Decision::SyncToSecondary => "sync dirty extents primary → secondary",
            Decision::SyncFromSecondary => "sync dirty extents secondary → primary",
            Decision::SplitBrain => "split-brain",
            Decision::FullSyncAnomaly => "counters inconsistent; full sync primary → secondary",
            Decision::FullSyncAnomalyFromSecondary => {
                "counters inconsistent; full sync secondary → primary"
            }
            Decision::ResuidMismatch => "resource unique id mismatch",
            Decision::SizeMismatch => "datasize or extentsize mismatch",
        })
    }
}
