//! Which way to resync, and what, decided from the two hellos on every
//! connection (FreeBSD `secondary.c` `init_remote`), plus the counters both
//! sides store once the resync finished. Pure and table-tested: this is the
//! function that must never copy stale data over newer data.
//!
//! `P` is the primary's hello, `S` the secondary's; `pl/pr` are P's
//! localcnt/remotecnt, `sl/sr` S's. A node bumps its own localcnt on its first
//! write while the peer is away; remotecnt is the peer's localcnt as last seen
//! in sync. So `pl > sr` means "P wrote things S has not seen", `sl > pr` the
//! same for S. Rows are evaluated top to bottom; the first that matches wins:
//!
//! | # | condition                                   | decision                       | data copied            |
//! |---|---------------------------------------------|--------------------------------|------------------------|
//! | 1 | P.resuid == 0                               | `ResuidMismatch`               | nothing                |
//! | 2 | S.resuid ≠ 0 and S.resuid ≠ P.resuid        | `ResuidMismatch`               | nothing                |
//! | 3 | datasize or extentsize differ               | `SizeMismatch`                 | nothing                |
//! | 4 | S.resuid == 0 (never synced)                | `FullSync`                     | every extent P → S     |
//! | 5 | sl == pr and sr == pl                       | `Merge`                        | union of maps P → S    |
//! | 6 | sl == pr and sr < pl                        | `SyncToSecondary`              | union of maps P → S    |
//! | 7 | sl > pr and sr == pl                        | `SyncFromSecondary`            | union of maps S → P    |
//! | 8 | sl > pr and pl > sr                         | `SplitBrain`                   | nothing                |
//! | 9 | otherwise, sl > pr (so pl < sr)             | `FullSyncAnomalyFromSecondary` | every extent S → P     |
//! |10 | otherwise (sl < pr, or sl == pr and sr > pl)| `FullSyncAnomaly`              | every extent P → S     |
//!
//! Rows 9 and 10 are FreeBSD's "should never happen" cases (a counter went
//! backwards: metadata restored from an old copy, say); FreeBSD then does a
//! full sync, from the secondary in the one case where only the secondary has
//! unseen changes (row 9), from the primary in the others.
//!
//! **Invariant:** no decision ever copies data in both directions (a decision
//! has at most one [`Direction`]), and `SplitBrain`, `ResuidMismatch` and
//! `SizeMismatch` copy nothing.
//!
//! **Inconsistent copies.** A node that was the target of a resync that did
//! not finish says `inconsistent` in its hello. Its counters are only raised
//! by SYNC_DONE, so an interrupted resync comes back as the same decision
//! (`SyncToSecondary`, or `Merge` when it was a merge) and resumes from the
//! union of the maps — the target keeps the extents it has not received dirty
//! in its own map — and it is never taken as "in sync, nothing to do".
//! [`accept`] refuses (`PeerRefused`) any decision whose *source* is
//! inconsistent: an inconsistent primary is accepted only as the target of
//! `SyncFromSecondary` / `FullSyncAnomalyFromSecondary`, and an inconsistent
//! secondary never as a source.

pub use crate::decision::{Decision, Direction};
use hast_meta::Role;

use crate::hello::{Hello, HelloReply, HelloStatus, PROTOCOL_VERSION};

// Here rather than in `decision.rs`: the status is the hello's vocabulary.
impl Decision {
    /// The status a secondary answers with for this decision.
    pub fn status(self) -> HelloStatus {
        match self {
            Decision::SplitBrain => HelloStatus::SplitBrain,
            Decision::ResuidMismatch => HelloStatus::ResuidMismatch,
            Decision::SizeMismatch => HelloStatus::SizeMismatch,
            _ => HelloStatus::Ok,
        }
    }
}

/// The module table: the resync decision from the counters alone.
pub fn decide(primary: &Hello, secondary: &Hello) -> Decision {
    let (p, s) = (primary, secondary);
    if p.resuid == 0 || (s.resuid != 0 && s.resuid != p.resuid) {
        return Decision::ResuidMismatch;
    }
    if p.datasize != s.datasize || p.extentsize != s.extentsize {
        return Decision::SizeMismatch;
    }
    if s.resuid == 0 {
        return Decision::FullSync;
    }
    let (pl, pr, sl, sr) = (p.localcnt, p.remotecnt, s.localcnt, s.remotecnt);
    if sl == pr && sr == pl {
        Decision::Merge
    } else if sl == pr && sr < pl {
        Decision::SyncToSecondary
    } else if sl > pr && sr == pl {
        Decision::SyncFromSecondary
    } else if sl > pr && pl > sr {
        Decision::SplitBrain
    } else if sl > pr {
        Decision::FullSyncAnomalyFromSecondary
    } else {
        Decision::FullSyncAnomaly
    }
}

/// The secondary's whole verdict on a HELLO: protocol version, resource,
/// roles, epoch, then [`decide`], then the inconsistent-copy rule. `Ok` is a
/// decision that moves data (or merges); `Err` is the status to reply with.
/// The caller has already checked that the resource is configured (else
/// UnknownResource) and that no other primary is attached (else Busy).
pub fn accept(primary: &Hello, secondary: &Hello) -> Result<Decision, HelloStatus> {
    if primary.version != PROTOCOL_VERSION || secondary.version != PROTOCOL_VERSION {
        return Err(HelloStatus::VersionMismatch);
    }
    if primary.resource != secondary.resource {
        return Err(HelloStatus::UnknownResource);
    }
    match secondary.role {
        Role::Secondary => {}
        Role::Primary => return Err(HelloStatus::BothPrimary),
        Role::Init => return Err(HelloStatus::NotSecondary),
    }
    if primary.role != Role::Primary {
        return Err(HelloStatus::PeerRefused);
    }
    // Fencing: a primary from an older epoch has been superseded.
    if primary.epoch < secondary.epoch {
        return Err(HelloStatus::StaleEpoch);
    }
    let d = decide(primary, secondary);
    let Some(dir) = d.direction() else {
        return Err(d.status());
    };
    // Never copy from a half-written copy.
    let source_inconsistent = match dir {
        Direction::PrimaryToSecondary => primary.inconsistent,
        Direction::SecondaryToPrimary => secondary.inconsistent,
    };
    if source_inconsistent {
        return Err(HelloStatus::PeerRefused);
    }
    Ok(d)
}

/// The primary's check of a HELLO_REPLY: the secondary must have said Ok,
/// sent its hello and a decision, and that decision must be the one the
/// primary computes itself from the two hellos. Two nodes that disagree
/// about the direction must not start copying.
pub fn verify_reply(primary: &Hello, reply: &HelloReply) -> Result<Decision, HelloStatus> {
    if reply.status != HelloStatus::Ok {
        return Err(reply.status);
    }
    let (Some(secondary), Some(theirs)) = (&reply.hello, reply.decision) else {
        return Err(HelloStatus::PeerRefused);
    };
    let ours = accept(primary, secondary)?;
    if ours != theirs {
        return Err(HelloStatus::PeerRefused);
    }
    Ok(ours)
}

/// The `(localcnt, remotecnt)` each side stores once a resync in either
/// direction completed (or at once for a Merge with nothing to copy): after
/// any successful sync both agree that they have seen each other's changes,
/// `secondary.remotecnt := primary.localcnt`, `primary.remotecnt :=
/// secondary.localcnt`; each keeps its own localcnt. The next hello exchange
/// then decides `Merge`. Meaningless for the refusals; callers don't call it.
pub fn counters_after_sync(primary: &Hello, secondary: &Hello) -> ((u64, u64), (u64, u64)) {
    (
        (primary.localcnt, secondary.localcnt),
        (secondary.localcnt, primary.localcnt),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use Decision::*;

    const UID: u64 = 0xfeed;
    const GIB: u64 = 1 << 30;

    fn node(role: Role, resuid: u64, local: u64, remote: u64) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            resource: "shared".into(),
            node: format!("{role}"),
            role,
            resuid,
            localcnt: local,
            remotecnt: remote,
            datasize: GIB,
            extentsize: 2 << 20,
            epoch: 1,
            inconsistent: false,
        }
    }

    /// (name, P resuid, pl, pr, S resuid, sl, sr, expected)
    type Row = (&'static str, u64, u64, u64, u64, u64, u64, Decision);

    #[rustfmt::skip]
    const ROWS: &[Row] = &[
        // row 1/2: resuid
        ("both resuid zero", 0, 0, 0, 0, 0, 0, ResuidMismatch),
        ("primary resuid zero", 0, 1, 0, UID, 0, 1, ResuidMismatch),
        ("different resuid", UID, 1, 1, UID + 1, 1, 1, ResuidMismatch),
        ("different resuid, split counters", UID, 5, 1, 7, 9, 2, ResuidMismatch),
        // row 4: fresh secondary
        ("fresh secondary, fresh primary", UID, 0, 0, 0, 0, 0, FullSync),
        ("fresh secondary, primary wrote", UID, 4, 2, 0, 0, 0, FullSync),
        ("fresh secondary with garbage counters", UID, 1, 1, 0, 9, 9, FullSync),
        // row 5: in sync
        ("all counters zero", UID, 0, 0, UID, 0, 0, Merge),
        ("in sync 3/3", UID, 3, 3, UID, 3, 3, Merge),
        ("in sync asymmetric", UID, 7, 2, UID, 2, 7, Merge),
        // row 6: secondary stale (FreeBSD table: S 3/3, P 4/3)
        ("primary wrote while degraded", UID, 4, 3, UID, 3, 3, SyncToSecondary),
        ("primary wrote, first time", UID, 1, 0, UID, 0, 0, SyncToSecondary),
        ("secondary far behind", UID, 100, 5, UID, 5, 1, SyncToSecondary),
        // row 7: primary stale (FreeBSD: S 3/3, P 3/2)
        ("primary stale", UID, 3, 2, UID, 3, 3, SyncFromSecondary),
        ("failed-over node wrote", UID, 1, 0, UID, 1, 1, SyncFromSecondary),
        // row 8: split-brain (FreeBSD: S 3/3, P 4/2)
        ("split-brain 4/2 vs 3/3", UID, 4, 2, UID, 3, 3, SplitBrain),
        ("split-brain from zero", UID, 1, 0, UID, 1, 0, SplitBrain),
        ("split-brain far apart", UID, 50, 10, UID, 40, 20, SplitBrain),
        // row 9: anomaly, secondary ahead (FreeBSD: S 3/3, P 2/2)
        ("anomaly: primary rolled back", UID, 2, 2, UID, 3, 3, FullSyncAnomalyFromSecondary),
        // row 10: anomalies from the primary (FreeBSD: S 3/3 vs P 2/3, 2/4, 3/4, 4/4)
        ("anomaly 2/3", UID, 2, 3, UID, 3, 3, FullSyncAnomaly),
        ("anomaly 2/4", UID, 2, 4, UID, 3, 3, FullSyncAnomaly),
        ("anomaly 3/4", UID, 3, 4, UID, 3, 3, FullSyncAnomaly),
        ("anomaly 4/4", UID, 4, 4, UID, 3, 3, FullSyncAnomaly),
        ("anomaly: secondary remotecnt ahead", UID, 1, 0, UID, 0, 5, FullSyncAnomaly),
    ];

    #[test]
    fn decision_table() {
        assert!(ROWS.len() >= 20);
        for &(name, puid, pl, pr, suid, sl, sr, want) in ROWS {
            let p = node(Role::Primary, puid, pl, pr);
            let s = node(Role::Secondary, suid, sl, sr);
            assert_eq!(decide(&p, &s), want, "{name}");
        }
    }

    #[test]
    fn size_mismatch_rows() {
        let p = node(Role::Primary, UID, 3, 3);
        #[rustfmt::skip]
        let cases: [(&str, u64, u64, u32, Decision); 5] = [
            ("datasize", UID, GIB * 2, 2 << 20, SizeMismatch),
            ("extentsize", UID, GIB, 1 << 20, SizeMismatch),
            ("fresh secondary of another size", 0, GIB + 4096, 2 << 20, SizeMismatch),
            // A resuid mismatch is reported first: not the same resource at all.
            ("both differ", UID + 1, GIB * 2, 2 << 20, ResuidMismatch),
            ("same", UID, GIB, 2 << 20, Merge),
        ];
        for (name, suid, datasize, extentsize, want) in cases {
            let s = Hello {
                datasize,
                extentsize,
                ..node(Role::Secondary, suid, 3, 3)
            };
            assert_eq!(decide(&p, &s), want, "{name}");
        }
    }

    #[test]
    fn counters_after_sync_converge_to_merge() {
        for &(name, puid, pl, pr, suid, sl, sr, d) in ROWS {
            if d.direction().is_none() {
                continue;
            }
            let p = node(Role::Primary, puid, pl, pr);
            let s = node(Role::Secondary, suid, sl, sr);
            let ((pl2, pr2), (sl2, sr2)) = counters_after_sync(&p, &s);
            assert_eq!((pl2, sr2), (pl, pl), "{name}: primary's changes seen");
            assert_eq!((sl2, pr2), (sl, sl), "{name}: secondary's changes seen");
            let p2 = Hello {
                localcnt: pl2,
                remotecnt: pr2,
                ..p
            };
            let s2 = Hello {
                resuid: puid,
                localcnt: sl2,
                remotecnt: sr2,
                ..s
            };
            assert_eq!(decide(&p2, &s2), Merge, "{name}");
        }
    }

    #[test]
    fn directions_and_fullness() {
        #[rustfmt::skip]
        let cases: [(Decision, Option<Direction>, bool, HelloStatus); 9] = [
            (FullSync, Some(Direction::PrimaryToSecondary), true, HelloStatus::Ok),
            (Merge, Some(Direction::PrimaryToSecondary), false, HelloStatus::Ok),
            (SyncToSecondary, Some(Direction::PrimaryToSecondary), false, HelloStatus::Ok),
            (SyncFromSecondary, Some(Direction::SecondaryToPrimary), false, HelloStatus::Ok),
            (SplitBrain, None, false, HelloStatus::SplitBrain),
            (FullSyncAnomaly, Some(Direction::PrimaryToSecondary), true, HelloStatus::Ok),
            (FullSyncAnomalyFromSecondary, Some(Direction::SecondaryToPrimary), true, HelloStatus::Ok),
            (ResuidMismatch, None, false, HelloStatus::ResuidMismatch),
            (SizeMismatch, None, false, HelloStatus::SizeMismatch),
        ];
        for (d, dir, full, status) in cases {
            assert_eq!(d.direction(), dir, "{d}");
            assert_eq!(d.is_full(), full, "{d}");
            assert_eq!(d.status(), status, "{d}");
            assert_eq!(Decision::from_code(d.code()), Some(d));
        }
        assert_eq!(Decision::from_code(0), None);
        assert_eq!(Decision::from_code(10), None);
    }

    #[test]
    fn accept_table() {
        let p = node(Role::Primary, UID, 4, 3);
        let s = node(Role::Secondary, UID, 3, 3);
        let inc = |h: &Hello| Hello {
            inconsistent: true,
            ..h.clone()
        };
        #[rustfmt::skip]
        let cases: Vec<(&str, Hello, Hello, Result<Decision, HelloStatus>)> = vec![
            ("ok", p.clone(), s.clone(), Ok(SyncToSecondary)),
            ("version", Hello { version: PROTOCOL_VERSION + 1, ..p.clone() }, s.clone(), Err(HelloStatus::VersionMismatch)),
            ("resource", Hello { resource: "other".into(), ..p.clone() }, s.clone(), Err(HelloStatus::UnknownResource)),
            ("both primary", p.clone(), Hello { role: Role::Primary, ..s.clone() }, Err(HelloStatus::BothPrimary)),
            ("secondary in init", p.clone(), Hello { role: Role::Init, ..s.clone() }, Err(HelloStatus::NotSecondary)),
            ("peer not primary", Hello { role: Role::Secondary, ..p.clone() }, s.clone(), Err(HelloStatus::PeerRefused)),
            ("stale epoch", p.clone(), Hello { epoch: 2, ..s.clone() }, Err(HelloStatus::StaleEpoch)),
            ("newer epoch", Hello { epoch: 5, ..p.clone() }, s.clone(), Ok(SyncToSecondary)),
            ("split-brain", node(Role::Primary, UID, 4, 2), s.clone(), Err(HelloStatus::SplitBrain)),
            ("resuid", node(Role::Primary, UID + 1, 4, 3), s.clone(), Err(HelloStatus::ResuidMismatch)),
            ("size", p.clone(), Hello { datasize: 4096, ..s.clone() }, Err(HelloStatus::SizeMismatch)),
            // An inconsistent secondary resumes as the target.
            ("inconsistent secondary resumes sync", p.clone(), inc(&s), Ok(SyncToSecondary)),
            ("inconsistent secondary, equal counters: merge", node(Role::Primary, UID, 3, 3), inc(&s), Ok(Merge)),
            ("inconsistent fresh secondary", p.clone(), inc(&node(Role::Secondary, 0, 0, 0)), Ok(FullSync)),
            // ... but is never a source.
            ("inconsistent secondary as source", node(Role::Primary, UID, 3, 2), inc(&s), Err(HelloStatus::PeerRefused)),
            ("inconsistent secondary, anomaly source", node(Role::Primary, UID, 2, 2), inc(&s), Err(HelloStatus::PeerRefused)),
            // An inconsistent primary only as the target.
            ("inconsistent primary as target", inc(&node(Role::Primary, UID, 3, 2)), s.clone(), Ok(SyncFromSecondary)),
            ("inconsistent primary, anomaly target", inc(&node(Role::Primary, UID, 2, 2)), s.clone(), Ok(FullSyncAnomalyFromSecondary)),
            ("inconsistent primary, merge", inc(&node(Role::Primary, UID, 3, 3)), s.clone(), Err(HelloStatus::PeerRefused)),
            ("inconsistent primary, to secondary", inc(&p), s.clone(), Err(HelloStatus::PeerRefused)),
            ("inconsistent primary, fresh secondary", inc(&p), node(Role::Secondary, 0, 0, 0), Err(HelloStatus::PeerRefused)),
            ("both inconsistent", inc(&node(Role::Primary, UID, 3, 2)), inc(&s), Err(HelloStatus::PeerRefused)),
        ];
        for (name, p, s, want) in cases {
            assert_eq!(accept(&p, &s), want, "{name}");
        }
    }

    #[test]
    fn verify_reply_table() {
        let p = node(Role::Primary, UID, 4, 3);
        let s = node(Role::Secondary, UID, 3, 3);
        let reply = |status, hello: Option<&Hello>, decision| HelloReply {
            status,
            message: String::new(),
            hello: hello.cloned(),
            decision,
        };
        let split = node(Role::Secondary, UID, 5, 3);
        #[rustfmt::skip]
        let cases: Vec<(&str, HelloReply, Result<Decision, HelloStatus>)> = vec![
            ("agree", reply(HelloStatus::Ok, Some(&s), Some(SyncToSecondary)), Ok(SyncToSecondary)),
            ("refused", reply(HelloStatus::Busy, None, None), Err(HelloStatus::Busy)),
            ("split reported", reply(HelloStatus::SplitBrain, Some(&split), Some(SplitBrain)), Err(HelloStatus::SplitBrain)),
            ("no hello", reply(HelloStatus::Ok, None, Some(SyncToSecondary)), Err(HelloStatus::PeerRefused)),
            ("no decision", reply(HelloStatus::Ok, Some(&s), None), Err(HelloStatus::PeerRefused)),
            ("disagree on direction", reply(HelloStatus::Ok, Some(&s), Some(SyncFromSecondary)), Err(HelloStatus::PeerRefused)),
            ("secondary missed a split-brain", reply(HelloStatus::Ok, Some(&split), Some(SyncToSecondary)), Err(HelloStatus::SplitBrain)),
        ];
        for (name, r, want) in cases {
            assert_eq!(verify_reply(&p, &r), want, "{name}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Random counters: the invariants of the module doc hold, split-brain is
        /// exactly "both have unseen changes", and a completed sync converges.
        #[test]
        fn invariants(pl in 0u64..6, pr in 0u64..6, sl in 0u64..6, sr in 0u64..6, fresh in any::<bool>(),
                      pinc in any::<bool>(), sinc in any::<bool>()) {
            let p = Hello { inconsistent: pinc, ..node(Role::Primary, UID, pl, pr) };
            let s = Hello { inconsistent: sinc, ..node(Role::Secondary, if fresh { 0 } else { UID }, sl, sr) };
            let d = decide(&p, &s);
            if !fresh {
                prop_assert_eq!(d == SplitBrain, sl > pr && pl > sr);
            }
            prop_assert_ne!(d, ResuidMismatch);
            prop_assert_ne!(d, SizeMismatch);
            match accept(&p, &s) {
                Ok(a) => {
                    prop_assert_eq!(a, d);
                    let dir = a.direction();
                    prop_assert!(dir.is_some());
                    // The source of any copy is consistent.
                    if dir == Some(Direction::PrimaryToSecondary) { prop_assert!(!pinc); } else { prop_assert!(!sinc); }
                    let ((pl2, pr2), (sl2, sr2)) = counters_after_sync(&p, &s);
                    let p2 = Hello { localcnt: pl2, remotecnt: pr2, inconsistent: false, ..p.clone() };
                    let s2 = Hello { resuid: UID, localcnt: sl2, remotecnt: sr2, inconsistent: false, ..s.clone() };
                    prop_assert_eq!(decide(&p2, &s2), Merge);
                }
                Err(status) => prop_assert_ne!(status, HelloStatus::Ok),
            }
        }
    }
}
