//! Which node an endpoint sends to: the follow policy, pure and
//! table-tested.
//!
//! Each poll of the controllers yields, per node, what it says of the
//! resource: its role and its epoch (the fencing token hastd stores with
//! every promotion; `hastmon` promotes with a higher one each time). The
//! rules:
//!
//! 1. Only a node that says it is primary is a target.
//! 2. The highest epoch any primary has shown is remembered
//!    ([`Follow::seen`]); a primary with a lower epoch is never a target
//!    again, even if it is the only one answering (client-side fencing: an
//!    old primary cut off from the cluster may still accept writes until its
//!    lease runs out; they would be lost).
//! 3. Among the primaries at the highest epoch, the node the endpoint is
//!    connected to now stays the target; otherwise exactly one must be at
//!    that epoch. Two primaries claiming the same epoch is a split brain
//!    made by hand: hastcd waits rather than guess.
//! 4. A connected endpoint moves only to a primary with a strictly higher
//!    epoch than its own ([`Follow::newer`]): the old primary's late answers
//!    are then ignored, and its writes cannot reach the new primary, which
//!    refuses a lower epoch.
//!
//! Secondaries' epochs are not remembered: a secondary may carry a higher
//! epoch than the primary after a manual switchover, and following that
//! would leave the endpoint waiting for a primary that is not coming.

use hast_meta::Role;

/// One node's answer about the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// The controller (discovery address, `host:port`) that answered.
    pub node: String,
    pub role: Role,
    pub epoch: u64,
}

/// Where to send next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// Connect to (or stay with) the sighting at this index.
    Go(usize),
    /// No node qualifies now.
    Wait(Why),
}

/// Why no node qualifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No node says it is primary.
    NoPrimary,
    /// Every primary has an epoch below one already seen.
    Stale { best: u64, seen: u64 },
    /// Several nodes are primary at the same highest epoch.
    Ambiguous { epoch: u64 },
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::NoPrimary => write!(f, "no node is primary"),
            Why::Stale { best, seen } => {
                write!(
                    f,
                    "the only primary has epoch {best}, below epoch {seen} already seen"
                )
            }
            Why::Ambiguous { epoch } => write!(f, "several nodes are primary at epoch {epoch}"),
        }
    }
}

/// The policy's memory: the highest primary epoch seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Follow {
    seen: u64,
}

impl Follow {
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// Take a poll's sightings into account (rule 2).
    pub fn observe(&mut self, sightings: &[Sighting]) {
        for s in sightings {
            if s.role == Role::Primary {
                self.seen = self.seen.max(s.epoch);
            }
        }
    }

    /// Where to send, given this poll's sightings and the node the endpoint
    /// is connected to now (if any). Call [`Follow::observe`] first.
    pub fn choose(&self, sightings: &[Sighting], current: Option<&str>) -> Choice {
        let primaries: Vec<usize> = (0..sightings.len())
            .filter(|&i| sightings[i].role == Role::Primary)
            .collect();
        let Some(best) = primaries.iter().map(|&i| sightings[i].epoch).max() else {
            return Choice::Wait(Why::NoPrimary);
        };
        if best < self.seen {
            return Choice::Wait(Why::Stale {
                best,
                seen: self.seen,
            });
        }
        let top: Vec<usize> = primaries
            .into_iter()
            .filter(|&i| sightings[i].epoch == best)
            .collect();
        if let Some(&i) = top
            .iter()
            .find(|&&i| Some(sightings[i].node.as_str()) == current)
        {
            return Choice::Go(i);
        }
        match top.as_slice() {
            [i] => Choice::Go(*i),
            _ => Choice::Wait(Why::Ambiguous { epoch: best }),
        }
    }

    /// A connected endpoint at `epoch`: the sighting it must move to now,
    /// if a primary with a strictly higher epoch exists (rule 4).
    pub fn newer(&self, sightings: &[Sighting], epoch: u64, current: &str) -> Option<usize> {
        match self.choose(sightings, Some(current)) {
            Choice::Go(i) if sightings[i].epoch > epoch && sightings[i].node != current => Some(i),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(node: &str, role: Role, epoch: u64) -> Sighting {
        Sighting {
            node: node.into(),
            role,
            epoch,
        }
    }
    use Role::{Init, Primary as P, Secondary as S};

    #[test]
    fn choose_table() {
        // (seen before, sightings, current, expected)
        type Row = (u64, Vec<Sighting>, Option<&'static str>, Choice);
        let rows: Vec<Row> = vec![
            (0, vec![], None, Choice::Wait(Why::NoPrimary)),
            (
                0,
                vec![s("a", S, 3), s("b", Init, 0)],
                None,
                Choice::Wait(Why::NoPrimary),
            ),
            (0, vec![s("a", P, 3), s("b", S, 3)], None, Choice::Go(0)),
            (
                3,
                vec![s("a", S, 3), s("b", P, 4)],
                Some("a"),
                Choice::Go(1),
            ),
            // The old primary, cut off, still says primary at 3: the newer wins.
            (
                3,
                vec![s("a", P, 3), s("b", P, 4)],
                Some("a"),
                Choice::Go(1),
            ),
            // Only the stale primary answers: never go back.
            (
                4,
                vec![s("a", P, 3)],
                Some("a"),
                Choice::Wait(Why::Stale { best: 3, seen: 4 }),
            ),
            (
                4,
                vec![s("a", P, 3), s("b", S, 4)],
                None,
                Choice::Wait(Why::Stale { best: 3, seen: 4 }),
            ),
            // Two primaries at the same epoch: stay where we are, or wait.
            (
                5,
                vec![s("a", P, 5), s("b", P, 5)],
                Some("b"),
                Choice::Go(1),
            ),
            (
                5,
                vec![s("a", P, 5), s("b", P, 5)],
                None,
                Choice::Wait(Why::Ambiguous { epoch: 5 }),
            ),
            // A secondary's higher epoch does not hold the endpoint back.
            (0, vec![s("a", P, 6), s("b", S, 9)], None, Choice::Go(0)),
        ];
        for (i, (seen, sightings, current, want)) in rows.into_iter().enumerate() {
            let mut f = Follow { seen };
            f.observe(&sightings);
            assert_eq!(f.choose(&sightings, current), want, "row {i}");
        }
    }

    #[test]
    fn the_seen_epoch_never_goes_down_and_ignores_secondaries() {
        let mut f = Follow::default();
        f.observe(&[s("a", P, 7), s("b", S, 12)]);
        assert_eq!(f.seen(), 7);
        f.observe(&[s("a", P, 2)]);
        assert_eq!(f.seen(), 7);
        f.observe(&[s("b", P, 8)]);
        assert_eq!(f.seen(), 8);
    }

    #[test]
    fn a_connected_endpoint_moves_only_to_a_higher_epoch() {
        let mut f = Follow::default();
        let same = [s("a", P, 4), s("b", S, 4)];
        f.observe(&same);
        assert_eq!(f.newer(&same, 4, "a"), None);
        let moved = [s("a", P, 4), s("b", P, 5)];
        f.observe(&moved);
        assert_eq!(f.newer(&moved, 4, "a"), Some(1));
        // The current node promoted again (epoch grew in place): stay.
        let again = [s("a", P, 6)];
        f.observe(&again);
        assert_eq!(f.newer(&again, 5, "a"), None);
    }
}
