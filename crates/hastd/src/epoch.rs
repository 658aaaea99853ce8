//! The epoch (fencing token) rules of `hastctl role [-E epoch]`: which epoch
//! a resource holds after a role request, or why the request is refused.
//! Pure and table-tested; the resource task persists what it decides here in
//! the same crash-atomic header write that records the new role, before the
//! export is offered.
//!
//! | target      | now primary? | `-E e`          | result                         |
//! |-------------|--------------|-----------------|--------------------------------|
//! | primary     | any          | e < current     | refused (stale epoch)          |
//! | primary     | no           | e ≥ current     | e                              |
//! | primary     | no           | absent          | current + 1 (manual promotion) |
//! | primary     | yes          | e ≥ current     | e (no role change)             |
//! | primary     | yes          | absent          | current (no-op)                |
//! | secondary, init | any      | e               | max(current, e)                |
//! | secondary, init | any      | absent          | current                        |
//!
//! An epoch never goes down: every row yields at least `current`.

use hast_api::Role;

/// A promotion asked for an epoch older than the one this copy has seen:
/// some other node was made primary in a later epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stale epoch {requested} < current {current}: a later primary exists; refusing")]
pub struct StaleEpoch {
    pub requested: u64,
    pub current: u64,
}

/// The epoch the resource holds after a request to go to `target` while in
/// `now`, with `current` stored and `requested` given by `-E`.
pub fn after_role_request(
    now: Role,
    target: Role,
    current: u64,
    requested: Option<u64>,
) -> Result<u64, StaleEpoch> {
    match (target, requested) {
        (Role::Primary, Some(e)) if e < current => Err(StaleEpoch {
            requested: e,
            current,
        }),
        (Role::Primary, Some(e)) => Ok(e),
        (Role::Primary, None) if now == Role::Primary => Ok(current),
        // A promotion by hand starts a new epoch, so that a node that was
        // primary before refuses nothing from this one and this one refuses
        // the old primary. Saturates rather than wrapping back to 0.
        (Role::Primary, None) => Ok(current.saturating_add(1)),
        (Role::Secondary | Role::Init, Some(e)) => Ok(e.max(current)),
        (Role::Secondary | Role::Init, None) => Ok(current),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::{Init, Primary, Secondary};

    /// (name, role now, target, stored epoch, `-E`, expected)
    type Row = (
        &'static str,
        Role,
        Role,
        u64,
        Option<u64>,
        Result<u64, StaleEpoch>,
    );

    #[test]
    fn table() {
        let stale = |requested, current| Err(StaleEpoch { requested, current });
        #[rustfmt::skip]
        let cases: &[Row] = &[
            ("promote, lower refused", Secondary, Primary, 5, Some(4), stale(4, 5)),
            ("promote from init, lower refused", Init, Primary, 5, Some(0), stale(0, 5)),
            ("promote, equal accepted", Secondary, Primary, 5, Some(5), Ok(5)),
            ("promote, higher accepted", Init, Primary, 5, Some(9), Ok(9)),
            ("manual promotion bumps", Secondary, Primary, 5, None, Ok(6)),
            ("manual first promotion", Init, Primary, 0, None, Ok(1)),
            ("manual promotion saturates", Init, Primary, u64::MAX, None, Ok(u64::MAX)),
            ("primary again, no epoch: no-op", Primary, Primary, 5, None, Ok(5)),
            ("primary again, equal: no-op", Primary, Primary, 5, Some(5), Ok(5)),
            ("primary again, higher: raised", Primary, Primary, 5, Some(8), Ok(8)),
            ("primary again, lower refused", Primary, Primary, 5, Some(3), stale(3, 5)),
            ("demote with higher", Primary, Secondary, 5, Some(8), Ok(8)),
            ("demote with lower keeps", Primary, Secondary, 5, Some(2), Ok(5)),
            ("demote without", Primary, Secondary, 5, None, Ok(5)),
            ("secondary again, higher", Secondary, Secondary, 5, Some(6), Ok(6)),
            ("init with higher", Secondary, Init, 5, Some(7), Ok(7)),
            ("init while init, lower keeps", Init, Init, 5, Some(1), Ok(5)),
            ("init without", Init, Init, 5, None, Ok(5)),
        ];
        for (name, now, target, current, requested, want) in cases {
            let got = after_role_request(*now, *target, *current, *requested);
            assert_eq!(&got, want, "{name}");
            if let Ok(e) = got {
                assert!(e >= *current, "{name}: epoch went down");
            }
        }
    }

    #[test]
    fn message_names_both_epochs() {
        let e = StaleEpoch {
            requested: 3,
            current: 7,
        };
        assert_eq!(
            e.to_string(),
            "stale epoch 3 < current 7: a later primary exists; refusing"
        );
    }
}
