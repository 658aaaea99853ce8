//! Tables of cases for the policy, and a three-node simulation with
//! drifting clocks and faults that checks the safety invariant at every
//! millisecond step: never two nodes acting as primary at once, never one
//! epoch on two nodes.

use super::*;

fn params() -> Params {
    Params {
        heartbeat: 1000,
        lease: 2000,
        complaint_count: 2,
        complaint_interval: 10_000,
        attempts: 3,
        priority: 0,
        drift_ppm: DRIFT_PPM,
        timeout: 1000,
        check_interval: 250,
        check_deadline: 500,
        probe_storage: true,
    }
}

#[test]
fn holder_lease_is_shortened_by_the_drift_bound() {
    let cases = [
        // (lease, drift ppm, holder lease)
        (2000, 0, 2000),
        (2000, 50_000, 1809),
        (2000, 100_000, 1636),
        (10_000, 50_000, 9047),
        (1000, 900_000, 333), // capped at 50 %
    ];
    for (lease, drift_ppm, want) in cases {
        let p = Params {
            lease,
            drift_ppm,
            ..params()
        };
        assert_eq!(p.holder_lease(), want, "lease {lease} drift {drift_ppm}");
    }
}

fn witness(epoch: u64, primary: Option<&str>) -> WitnessState {
    WitnessState {
        epoch,
        primary: primary.map(str::to_owned),
        outdated: BTreeMap::new(),
    }
}

/// A watchdog that has run for a while, with `complaint_rounds` rounds
/// without a running primary.
fn watchdog(epoch: u64, primary: Option<&str>, rounds: u32) -> Policy {
    let mut w = Policy::new("w", params(), 2, witness(epoch, primary), 0);
    w.set_role(Role::Watchdog, 0);
    w.complaint_rounds = rounds;
    w
}

#[test]
fn witness_takeover_table() {
    // (case, setup, asker, manual, now, expect granted epoch)
    type Setup = fn(&mut Policy);
    let none: Setup = |_| {};
    type Case = (&'static str, Setup, &'static str, bool, Ms, Option<u64>);
    let cases: [Case; 8] = [
        ("complaints and no lease", none, "b", false, 5000, Some(4)),
        ("just restarted", none, "b", false, 1500, None),
        (
            "the old primary still holds a lease",
            |w| {
                w.promises.insert("a".into(), 6000);
            },
            "b",
            false,
            5000,
            None,
        ),
        (
            "the old primary's lease ran out",
            |w| {
                w.promises.insert("a".into(), 5000);
            },
            "b",
            false,
            5000,
            Some(4),
        ),
        (
            "asker outdated",
            |w| {
                w.witness.outdated.insert("b".into(), (3, 1));
            },
            "b",
            false,
            5000,
            None,
        ),
        (
            "not enough complaint rounds",
            |w| w.complaint_rounds = 1,
            "b",
            false,
            5000,
            None,
        ),
        (
            "manual needs no complaints",
            |w| w.complaint_rounds = 0,
            "b",
            true,
            5000,
            Some(4),
        ),
        (
            "manual still waits for the lease",
            |w| {
                w.complaint_rounds = 0;
                w.promises.insert("a".into(), 9000);
            },
            "b",
            true,
            5000,
            None,
        ),
    ];
    for (case, setup, asker, manual, now, want) in cases {
        let mut w = watchdog(3, Some("a"), 2);
        setup(&mut w);
        let (reply, actions) = w.on_request(
            asker,
            &RequestBody::Takeover {
                epoch_seen: 3,
                manual,
            },
            now,
        );
        match want {
            Some(e) => {
                assert_eq!(
                    reply,
                    ReplyBody::Granted {
                        epoch: e,
                        node: Some("w".into())
                    },
                    "{case}"
                );
                assert!(actions.contains(&Action::Persist), "{case}: persist first");
                assert_eq!(w.witness().primary.as_deref(), Some(asker), "{case}");
            }
            None => {
                assert!(
                    matches!(reply, ReplyBody::Refused { .. }),
                    "{case}: {reply:?}"
                );
                assert_eq!(w.witness().epoch, 3, "{case}: epoch unchanged");
            }
        }
    }
}

/// A primary that is granted and running at `now`, its last check passed.
fn running_primary(now: Ms) -> Policy {
    let mut a = Policy::new("a", params(), 2, WitnessState::default(), 0);
    a.set_role(Role::Secondary, 0);
    a.takeover_sent = Some(now);
    a.on_reply(
        1,
        &RequestBody::Takeover {
            epoch_seen: 0,
            manual: true,
        },
        Some(&ReplyBody::Granted {
            epoch: 1,
            node: Some("w".into()),
        }),
        now,
        now,
    );
    a.on_exec(Exec::Start, true, now);
    assert_eq!(a.state(), RunState::Run);
    a
}

fn heartbeats(acts: &[Action]) -> usize {
    acts.iter()
        .filter(|a| {
            matches!(
                a,
                Action::Send {
                    req: RequestBody::Heartbeat { .. },
                    ..
                }
            )
        })
        .count()
}

#[test]
fn a_primary_vouches_only_for_storage_that_answers() {
    let mut a = running_primary(0);
    // Healthy: a check every 250 ms, heartbeats every second.
    let acts = a.tick(100);
    assert_eq!(heartbeats(&acts), 2, "first heartbeat to both remotes");
    assert!(acts.contains(&Action::Exec(Exec::Status)));
    a.on_exec(Exec::Status, true, 101);
    assert!(a.tick(200).is_empty(), "nothing due");
    // The storage hangs: the check started at 350 never answers.
    assert!(a.tick(350).contains(&Action::Exec(Exec::Status)));
    assert!(
        !a.tick(400).contains(&Action::Exec(Exec::Status)),
        "one check at a time"
    );
    // The last check that passed started at 100: vouching ends at
    // 100 + 250 + 500 = 850; the heartbeat due at 1100 is not sent.
    a.tick(850);
    assert_eq!(a.state(), RunState::Run);
    let acts = a.tick(851);
    assert_eq!(a.state(), RunState::Failing, "{acts:?}");
    assert!(acts.iter().any(|x| matches!(x, Action::Log(_))));
    assert_eq!(
        heartbeats(&a.tick(1100)),
        0,
        "no heartbeat for a hung storage"
    );
    // The daemon's bound reports the hung check failed; the next passes.
    a.on_exec(Exec::Status, false, 850);
    assert_eq!(a.role(), Role::Primary);
    assert!(a.tick(1200).contains(&Action::Exec(Exec::Status)));
    a.on_exec(Exec::Status, true, 1201);
    assert_eq!(a.state(), RunState::Run);
    assert_eq!(heartbeats(&a.tick(1300)), 2, "vouching again");
    // A lease renewal the storage refused also stops the vouching at once.
    a.on_exec(Exec::Lease(3000), false, 1400);
    assert_eq!(a.state(), RunState::Failing);
    assert_eq!(heartbeats(&a.tick(1500)), 0);
    // With nothing vouched for (no heartbeat was granted in this table),
    // the lease of the grant runs out and the primary fences itself.
    let acts = a.tick(1809);
    assert_eq!(a.role(), Role::Secondary);
    assert!(acts.contains(&Action::Exec(Exec::Stop)));
}

#[test]
fn a_grant_names_the_watchdog_so_the_data_peer_is_known() {
    let nodes: Vec<String> = ["a", "b", "w"].iter().map(|n| n.to_string()).collect();
    let a = running_primary(0);
    assert_eq!(a.data_peer(&nodes), Some("b"));
    // Without the name (an older watchdog), the peer is unknown with three nodes…
    let mut old = Policy::new("a", params(), 2, WitnessState::default(), 0);
    old.set_role(Role::Secondary, 0);
    assert_eq!(old.data_peer(&nodes), None);
    // …until the watchdog's own requests name it.
    old.on_request("w", &RequestBody::STATUS, 10);
    assert_eq!(old.data_peer(&nodes), Some("b"));
    // With two nodes there is no doubt.
    assert_eq!(old.data_peer(&nodes[..2]), Some("b"));
}

#[test]
fn adoption_epochs_and_storage_primaries() {
    // A node in init whose storage is primary in epoch 7 (switched by hand)
    // says so; the watchdog does not complain about it, and grants above 7.
    let mut a = Policy::new("a", params(), 2, WitnessState::default(), 0);
    assert!(
        a.tick(0).contains(&Action::Exec(Exec::Status)),
        "init probes its storage"
    );
    a.observe_storage(Role::Primary, 7);
    a.on_exec(Exec::Status, false, 1);
    let (st, _) = a.on_request("w", &RequestBody::STATUS, 10);
    assert_eq!(
        st,
        ReplyBody::Status {
            node: "a".into(),
            role: Role::Init,
            state: RunState::Stopped,
            epoch: 7,
            storage: Some(Role::Primary),
        }
    );
    let mut w = watchdog(0, None, 0);
    let b_status = ReplyBody::Status {
        node: "b".into(),
        role: Role::Secondary,
        state: RunState::Stopped,
        epoch: 6,
        storage: Some(Role::Secondary),
    };
    for round in 0..3u64 {
        let now = 3000 + round * 1000;
        w.tick(now);
        let acts = w.on_reply(0, &RequestBody::STATUS, Some(&st), now, now + 1);
        assert!(acts.is_empty());
        let acts = w.on_reply(1, &RequestBody::STATUS, Some(&b_status), now, now + 2);
        assert!(
            !acts.iter().any(|x| matches!(
                x,
                Action::Send {
                    req: RequestBody::Complain { .. },
                    ..
                }
            )),
            "round {round}: no complaint while a storage is primary: {acts:?}"
        );
    }
    // The operator's `role primary` on a: granted above every epoch seen.
    let (reply, _) = w.on_request(
        "a",
        &RequestBody::Takeover {
            epoch_seen: 7,
            manual: true,
        },
        6000,
    );
    assert_eq!(
        reply,
        ReplyBody::Granted {
            epoch: 8,
            node: Some("w".into())
        }
    );
    // A watchdog that only saw the epoch in a status reply grants above it too.
    let mut w2 = watchdog(0, None, 2);
    w2.tick(3000);
    w2.on_reply(0, &RequestBody::STATUS, Some(&st), 3000, 3001);
    let (reply, _) = w2.on_request(
        "b",
        &RequestBody::Takeover {
            epoch_seen: 0,
            manual: true,
        },
        3100,
    );
    assert!(
        matches!(reply, ReplyBody::Granted { epoch: 8, .. }),
        "{reply:?}"
    );
}

#[test]
fn a_round_is_judged_once_every_remote_answered() {
    // Both remotes answered (the primary failed to): complain at once,
    // not at the next tick.
    let mut w = watchdog(1, Some("a"), 0);
    w.tick(3000);
    assert!(w
        .on_reply(0, &RequestBody::STATUS, None, 3000, 3005)
        .is_empty());
    let b_status = ReplyBody::Status {
        node: "b".into(),
        role: Role::Secondary,
        state: RunState::Stopped,
        epoch: 1,
        storage: None,
    };
    let acts = w.on_reply(1, &RequestBody::STATUS, Some(&b_status), 3000, 3010);
    assert_eq!(
        acts,
        vec![Action::Send {
            to: 1,
            req: RequestBody::Complain {
                epoch: 1,
                outdated: vec![]
            }
        }]
    );
    assert_eq!(w.complaint_rounds(), 1);
    // A late answer to the previous round counts for nothing, and the
    // tick does not judge the same round twice.
    assert!(w
        .on_reply(1, &RequestBody::STATUS, Some(&b_status), 2000, 3020)
        .is_empty());
    w.tick(4000);
    assert_eq!(w.complaint_rounds(), 1);
    // A failing primary is no running primary.
    let failing = ReplyBody::Status {
        node: "a".into(),
        role: Role::Primary,
        state: RunState::Failing,
        epoch: 1,
        storage: Some(Role::Primary),
    };
    w.on_reply(0, &RequestBody::STATUS, Some(&failing), 4000, 4001);
    w.on_reply(1, &RequestBody::STATUS, Some(&b_status), 4000, 4002);
    assert_eq!(w.complaint_rounds(), 2);
}

#[test]
fn an_operators_takeover_waits_out_a_young_watchdog() {
    let mut a = Policy::new("a", params(), 2, WitnessState::default(), 0);
    let mut w = Policy::new("w", params(), 2, WitnessState::default(), 0);
    w.set_role(Role::Watchdog, 0);
    let acts = a.set_role(Role::Primary, 500);
    let send = |acts: &[Action]| {
        acts.iter()
            .find_map(|x| match x {
                Action::Send { to: 1, req } => Some(req.clone()),
                _ => None,
            })
            .expect("a takeover request to the watchdog")
    };
    let req = send(&acts);
    let (reply, _) = w.on_request("a", &req, 500);
    match &reply {
        ReplyBody::Refused {
            reason, retry_ms, ..
        } => {
            assert_eq!(*retry_ms, Some(1500));
            assert!(reason.contains("retry in 1.5 s"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    a.on_reply(1, &req, Some(&reply), 500, 510);
    assert!(a.takeover_pending(), "hastmonctl keeps waiting");
    assert!(!a
        .tick(1500)
        .iter()
        .any(|x| matches!(x, Action::Send { .. })));
    let acts = a.tick(2100);
    let req = send(&acts);
    let (reply, _) = w.on_request("a", &req, 2100);
    a.on_reply(1, &req, Some(&reply), 2100, 2110);
    assert_eq!(a.role(), Role::Primary);
    assert!(!a.takeover_pending());
    // Another node's lease: asked again when it ends, as long as the
    // operator waits, and the refusal says when.
    let mut b = Policy::new("b", params(), 2, WitnessState::default(), 0);
    let req = send(&b.set_role(Role::Primary, 3000));
    let (reply, _) = w.on_request("b", &req, 3000);
    b.on_reply(1, &req, Some(&reply), 3000, 3010);
    assert!(b.takeover_pending());
    let why = b.last_refusal.clone().unwrap();
    assert!(why.contains("a holds a lease (retry in 1.1 s)"), "{why}");
    // An outdated node is refused for good: the request ends at once.
    w.witness.outdated.insert("b".into(), (2, 1));
    let req = send(&b.tick(4200));
    let (reply, _) = w.on_request("b", &req, 4200);
    b.on_reply(1, &req, Some(&reply), 4200, 4210);
    assert!(!b.takeover_pending());
    assert!(b.last_refusal.as_deref().unwrap().contains("outdated"));
}

#[test]
fn lying_numbers_never_overflow() {
    // An asker claiming the last epoch is refused, not granted a wrapped one.
    let mut w = watchdog(3, Some("a"), 2);
    let (reply, _) = w.on_request(
        "b",
        &RequestBody::Takeover {
            epoch_seen: u64::MAX,
            manual: true,
        },
        5000,
    );
    assert!(matches!(reply, ReplyBody::Refused { .. }), "{reply:?}");
    assert_eq!(w.witness().epoch, 3);
    // A watchdog answering "retry in u64::MAX ms" ends the operator's request.
    let mut a = Policy::new("a", params(), 2, WitnessState::default(), 0);
    a.set_role(Role::Primary, 100);
    let req = RequestBody::Takeover {
        epoch_seen: 0,
        manual: true,
    };
    let lie = ReplyBody::Refused {
        reason: "later".into(),
        epoch: 0,
        retry_ms: Some(u64::MAX),
    };
    a.on_reply(1, &req, Some(&lie), 100, 110);
    assert!(!a.takeover_pending());
}

#[test]
fn epoch_is_above_everything_seen() {
    let mut w = watchdog(3, Some("a"), 2);
    let (reply, _) = w.on_request(
        "b",
        &RequestBody::Takeover {
            epoch_seen: 9,
            manual: false,
        },
        5000,
    );
    assert_eq!(
        reply,
        ReplyBody::Granted {
            epoch: 10,
            node: Some("w".into())
        }
    );
}

#[test]
fn witness_lease_grant_table() {
    // (case, witness epoch, witness primary, heartbeat from, epoch, granted)
    let cases = [
        ("the primary of the epoch", 3, Some("a"), "a", 3, true),
        ("an older epoch", 3, Some("a"), "b", 2, false),
        (
            "another node in the same epoch",
            3,
            Some("a"),
            "b",
            3,
            false,
        ),
        (
            "a newer epoch (promoted by hand)",
            3,
            Some("a"),
            "b",
            4,
            true,
        ),
        ("no primary known yet", 0, None, "a", 0, true),
    ];
    for (case, we, wp, from, epoch, want) in cases {
        let mut w = watchdog(we, wp, 0);
        let (reply, _) = w.on_request(
            from,
            &RequestBody::Heartbeat {
                epoch,
                state: RunState::Run,
            },
            5000,
        );
        assert!(
            matches!(reply, ReplyBody::Lease { granted, .. } if granted == want),
            "{case}: {reply:?}"
        );
    }
}

#[test]
fn outdate_and_clear_table() {
    let mut w = watchdog(3, Some("a"), 0);
    let req = |epoch, seq, clear| {
        if clear {
            RequestBody::Clear {
                epoch,
                peer: "b".into(),
                seq,
            }
        } else {
            RequestBody::Outdate {
                epoch,
                peer: "b".into(),
                seq,
            }
        }
    };
    // (case, from, epoch, seq, clear, acked, outdated after)
    let steps = [
        (
            "outdate from a stale primary",
            "a",
            2,
            1,
            false,
            false,
            false,
        ),
        ("outdate from a non-primary", "b", 3, 1, false, false, false),
        ("outdate", "a", 3, 2, false, true, true),
        (
            "clear from an earlier degradation",
            "a",
            3,
            1,
            true,
            false,
            true,
        ),
        (
            "clear of the same degradation",
            "a",
            3,
            2,
            true,
            true,
            false,
        ),
        ("outdate again", "a", 3, 3, false, true, true),
        ("clear from another node", "b", 3, 3, true, false, true),
        ("clear later", "a", 3, 4, true, true, false),
    ];
    for (case, from, epoch, seq, clear, acked, outdated) in steps {
        let (reply, _) = w.on_request(from, &req(epoch, seq, clear), 1000);
        assert_eq!(reply == ReplyBody::Ack, acked, "{case}: {reply:?}");
        assert_eq!(w.witness().outdated.contains_key("b"), outdated, "{case}");
    }
}

#[test]
fn secondary_takes_over_only_after_promise_and_complaints() {
    let p = params();
    let mut b = Policy::new("b", p, 2, WitnessState::default(), 0);
    b.set_role(Role::Secondary, 0);
    assert!(b.tick(0).contains(&Action::Exec(Exec::Status)));
    b.on_exec(Exec::Status, true, 0);
    let hb = RequestBody::Heartbeat {
        epoch: 1,
        state: RunState::Run,
    };
    let (r, _) = b.on_request("a", &hb, 100);
    assert!(matches!(r, ReplyBody::Lease { granted: true, .. }));
    let complain = RequestBody::Complain {
        epoch: 1,
        outdated: vec![],
    };
    let takeovers = |acts: &[Action]| {
        acts.iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Send {
                        req: RequestBody::Takeover { .. },
                        ..
                    }
                )
            })
            .count()
    };
    b.on_request("w", &complain, 1000);
    b.on_request("w", &complain, 1500);
    // Two complaints, but the promise to a runs until 2100.
    assert_eq!(takeovers(&b.tick(2000)), 0);
    // The local resource is not ready (its status check failed): no.
    b.on_exec(Exec::Status, false, 0);
    assert_eq!(takeovers(&b.tick(2100)), 0);
    b.on_exec(Exec::Status, true, 0);
    assert_eq!(takeovers(&b.tick(2100)), 2);
    // While asking, a's heartbeats are refused.
    let (r, _) = b.on_request("a", &hb, 2200);
    assert!(matches!(r, ReplyBody::Lease { granted: false, .. }));
    // Granted: b is primary with a lease counted from the request.
    let acts = b.on_reply(
        1,
        &RequestBody::Takeover {
            epoch_seen: 1,
            manual: false,
        },
        Some(&ReplyBody::Granted {
            epoch: 2,
            node: None,
        }),
        2100,
        2150,
    );
    assert_eq!(b.role(), Role::Primary);
    assert_eq!(b.epoch(), 2);
    assert_eq!(b.lease_left(2150), Some(2100 + p.holder_lease() - 2150));
    assert!(acts.contains(&Action::Exec(Exec::Role(Role::Primary))));
    assert!(acts.contains(&Action::Exec(Exec::Start)));
}

#[test]
fn outdated_secondary_never_asks() {
    let mut b = Policy::new("b", params(), 2, WitnessState::default(), 0);
    b.set_role(Role::Secondary, 0);
    b.on_exec(Exec::Status, true, 0);
    let complain = RequestBody::Complain {
        epoch: 1,
        outdated: vec!["b".into()],
    };
    for t in [3000, 3500, 4000, 4500] {
        b.on_request("w", &complain, t);
    }
    assert!(!b
        .tick(5000)
        .iter()
        .any(|a| matches!(a, Action::Send { .. })));
}

/// The watchdog's status requests tell each node whether it is outdated,
/// also while a primary runs (no complaints then); the refusal an outdated
/// node got goes when its mark is cleared, and a grant clears any refusal.
#[test]
fn a_node_knows_it_is_outdated_and_forgets_the_refusal_once_cleared() {
    let mut w = watchdog(3, Some("a"), 0);
    let mut b = Policy::new("b", params(), 2, WitnessState::default(), 0);
    b.set_role(Role::Secondary, 0);
    let status_req = |w: &mut Policy, now| {
        w.tick(now)
            .into_iter()
            .find_map(|x| match x {
                Action::Send { to: 1, req } => Some(req),
                _ => None,
            })
            .expect("a status request to b")
    };
    let (reply, _) = w.on_request(
        "a",
        &RequestBody::Outdate {
            epoch: 3,
            peer: "b".into(),
            seq: 1,
        },
        1000,
    );
    assert_eq!(reply, ReplyBody::Ack);
    let req = status_req(&mut w, 3000);
    assert_eq!(
        req,
        RequestBody::Status {
            outdated: Some(vec!["b".into()])
        }
    );
    let (_, acts) = b.on_request("w", &req, 3000);
    assert!(b.outdated());
    assert!(
        acts.iter()
            .any(|x| matches!(x, Action::Log(l) if l.contains("holds this copy outdated"))),
        "{acts:?}"
    );
    // The storage is told once, when the mark appears.
    assert!(acts.contains(&Action::Exec(Exec::Outdate)), "{acts:?}");
    let (_, acts) = b.on_request("w", &req, 3050);
    assert!(!acts.contains(&Action::Exec(Exec::Outdate)), "{acts:?}");
    // An operator's takeover is refused, and says why.
    let take = b
        .set_role(Role::Primary, 3100)
        .into_iter()
        .find_map(|x| match x {
            Action::Send { to: 1, req } => Some(req),
            _ => None,
        })
        .expect("a takeover request");
    let (reply, _) = w.on_request("b", &take, 3100);
    b.on_reply(1, &take, Some(&reply), 3100, 3110);
    let why = b.last_refusal.clone().unwrap();
    assert!(why.contains("b is outdated (epoch 3 seq 1)"), "{why}");
    // An older watchdog's status request (no list) changes nothing.
    b.on_request("w", &RequestBody::STATUS, 3500);
    assert!(b.outdated());
    assert!(b.last_refusal.is_some());
    // The primary resynced b and cleared the mark: the next status request
    // says so, and the refusal (with its old epoch) is gone.
    let (reply, _) = w.on_request(
        "a",
        &RequestBody::Clear {
            epoch: 3,
            peer: "b".into(),
            seq: 1,
        },
        3900,
    );
    assert_eq!(reply, ReplyBody::Ack);
    let req = status_req(&mut w, 4000);
    assert_eq!(
        req,
        RequestBody::Status {
            outdated: Some(vec![])
        }
    );
    b.on_request("w", &req, 4000);
    assert!(!b.outdated());
    assert_eq!(b.last_refusal, None);
    // A refusal for another reason, then a grant: the grant clears it.
    let mut c = Policy::new("b", params(), 2, WitnessState::default(), 0);
    c.last_refusal = Some("a holds a lease (retry in 1.0 s)".into());
    c.takeover_sent = Some(0);
    c.on_reply(
        1,
        &RequestBody::Takeover {
            epoch_seen: 3,
            manual: true,
        },
        Some(&ReplyBody::Granted {
            epoch: 4,
            node: Some("w".into()),
        }),
        0,
        10,
    );
    assert_eq!(c.role(), Role::Primary);
    assert_eq!(c.last_refusal, None);
}

#[test]
fn primary_table() {
    // A primary granted at 0 (holder lease 1809), heartbeats renew it.
    let mut a = Policy::new("a", params(), 2, WitnessState::default(), 0);
    a.set_role(Role::Secondary, 0);
    a.takeover_sent = Some(0);
    a.on_reply(
        1,
        &RequestBody::Takeover {
            epoch_seen: 0,
            manual: true,
        },
        Some(&ReplyBody::Granted {
            epoch: 1,
            node: None,
        }),
        0,
        10,
    );
    assert_eq!(a.role(), Role::Primary);
    a.on_exec(Exec::Start, true, 0);
    assert_eq!(a.state(), RunState::Run);
    let hb = RequestBody::Heartbeat {
        epoch: 1,
        state: RunState::Run,
    };
    let granted = ReplyBody::Lease {
        granted: true,
        epoch: 1,
        node: "b".into(),
        role: Role::Secondary,
    };
    let acts = a.on_reply(0, &hb, Some(&granted), 1000, 1010);
    assert!(acts.contains(&Action::Exec(Exec::Lease(1000 + 1809))));
    // A refusal from an older epoch changes nothing; one from a newer epoch demotes.
    let stale = ReplyBody::Lease {
        granted: false,
        epoch: 1,
        node: "w".into(),
        role: Role::Watchdog,
    };
    assert!(a.on_reply(1, &hb, Some(&stale), 1000, 1010).is_empty());
    // `attempts` heartbeats' worth of failed checks (3 × 4) give up.
    for i in 1..=12 {
        let acts = a.on_exec(Exec::Status, false, 0);
        assert_eq!(a.role() == Role::Primary, i < 12, "after {i} failures");
        if i == 12 {
            assert!(acts.contains(&Action::Exec(Exec::Stop)));
        }
    }
    // A primary whose lease is not renewed fences itself at the deadline.
    let mut a = Policy::new("a", params(), 2, WitnessState::default(), 0);
    a.set_role(Role::Secondary, 0);
    a.takeover_sent = Some(0);
    a.on_reply(
        1,
        &RequestBody::Takeover {
            epoch_seen: 0,
            manual: true,
        },
        Some(&ReplyBody::Granted {
            epoch: 1,
            node: None,
        }),
        0,
        10,
    );
    assert_eq!(a.role(), Role::Primary);
    a.tick(1808);
    assert_eq!(a.role(), Role::Primary);
    let acts = a.tick(1809);
    assert_eq!(a.role(), Role::Secondary);
    assert!(acts.contains(&Action::Exec(Exec::Stop)));
    let newer = ReplyBody::Lease {
        granted: false,
        epoch: 5,
        node: "w".into(),
        role: Role::Watchdog,
    };
    let mut a2 = a.clone();
    a2.role = Role::Primary;
    a2.epoch = 1;
    a2.lease_until = Some(9999);
    a2.on_reply(0, &hb, Some(&newer), 1000, 1010);
    assert_eq!(a2.role(), Role::Secondary);
}

// ---- Simulation -------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// The node's processes die (it answers nothing, does nothing).
    Kill(usize),
    /// The node is frozen; it resumes at the given real time.
    Pause(usize, u64),
    /// Links between the two nodes drop, both ways.
    Cut(usize, usize),
    /// Messages from the first to the second are dropped.
    CutOneWay(usize, usize),
    Isolate(usize),
    /// The node's storage stops answering (hastd stopped or stuck in its
    /// disk) while hastmon runs: checks and renewals fail at their deadline.
    HangStorage(usize),
    HealAll,
}

struct Sim {
    nodes: Vec<Policy>,
    /// Clock rate of each node (1.0 = real time).
    rate: Vec<f64>,
    dead: Vec<bool>,
    paused_until: Vec<u64>,
    /// down[from][to]: messages from → to are lost.
    down: [[bool; 3]; 3],
    t: u64,
    /// (node, epoch) of every promotion.
    promotions: Vec<(usize, u64)>,
    names: [&'static str; 3],
    hung: [bool; 3],
    /// Storage calls of hung nodes: (real time of the failure report, node, call).
    pending: Vec<(u64, usize, Exec)>,
}

impl Sim {
    fn new(rate: [f64; 3]) -> Sim {
        Sim::with(rate, params())
    }

    fn with(rate: [f64; 3], p: Params) -> Sim {
        let names = ["a", "b", "w"];
        let mut nodes: Vec<Policy> = names
            .iter()
            .map(|n| Policy::new(n, p, 2, WitnessState::default(), 0))
            .collect();
        nodes[2].set_role(Role::Watchdog, 0);
        let mut sim = Sim {
            nodes,
            rate: rate.to_vec(),
            dead: vec![false; 3],
            paused_until: vec![0; 3],
            down: [[false; 3]; 3],
            t: 0,
            promotions: vec![],
            names,
            hung: [false; 3],
            pending: vec![],
        };
        // The operator makes a primary once the watchdog honoured its lease.
        sim.run_until(2500);
        let now = sim.local(0);
        let acts = sim.nodes[0].set_role(Role::Primary, now);
        sim.apply(0, acts);
        let now = sim.local(1);
        let acts = sim.nodes[1].set_role(Role::Secondary, now);
        sim.apply(1, acts);
        sim.run_until(3000);
        assert_eq!(sim.nodes[0].role(), Role::Primary, "initial promotion");
        sim
    }

    fn local(&self, n: usize) -> Ms {
        (self.t as f64 * self.rate[n]) as Ms
    }

    /// Remote index `i` of node `n` → node number.
    fn remote(n: usize, i: usize) -> usize {
        [[1, 2], [0, 2], [0, 1]][n][i]
    }

    fn up(&self, n: usize) -> bool {
        !self.dead[n] && self.t >= self.paused_until[n]
    }

    fn apply(&mut self, n: usize, acts: Vec<Action>) {
        for a in acts {
            match a {
                Action::Send { to, req } => {
                    let m = Self::remote(n, to);
                    let sent_at = self.local(n);
                    let reply = if self.up(m) && !self.down[n][m] {
                        let name = self.names[n];
                        let now = self.local(m);
                        let (reply, acts) = self.nodes[m].on_request(name, &req, now);
                        self.apply(m, acts);
                        (!self.down[m][n]).then_some(reply)
                    } else {
                        None
                    };
                    let now = self.local(n);
                    let acts = self.nodes[n].on_reply(to, &req, reply.as_ref(), sent_at, now);
                    self.apply(n, acts);
                }
                Action::Exec(e @ (Exec::Status | Exec::Lease(_))) if self.hung[n] => {
                    // The daemon reports the failure at the check's deadline.
                    let deadline = self.nodes[n].params().check_deadline;
                    self.pending.push((self.t + deadline, n, e));
                }
                Action::Exec(e) => {
                    if e == Exec::Role(Role::Primary) {
                        let epoch = self.nodes[n].epoch();
                        self.promotions.push((n, epoch));
                    }
                    let now = self.local(n);
                    let acts = self.nodes[n].on_exec(e, true, now);
                    self.apply(n, acts);
                }
                Action::Persist | Action::Log(_) => {}
            }
        }
    }

    /// Nodes that may act as primary right now: role primary with a lease
    /// that has not run out on their own clock.
    fn acting_primaries(&self) -> Vec<usize> {
        (0..3)
            .filter(|&n| {
                let p = &self.nodes[n];
                p.role() == Role::Primary
                    && p.lease_left(self.local(n)).is_some_and(|l| l > 0)
                    && !self.dead[n]
            })
            .collect()
    }

    fn run_until(&mut self, end: u64) {
        while self.t < end {
            self.t += 10;
            let (due, later): (Vec<_>, Vec<_>) =
                self.pending.drain(..).partition(|&(at, _, _)| at <= self.t);
            self.pending = later;
            for (_, n, e) in due {
                if self.up(n) {
                    let now = self.local(n);
                    let acts = self.nodes[n].on_exec(e, false, now);
                    self.apply(n, acts);
                }
            }
            for n in 0..3 {
                if self.up(n) && self.t % 100 == 0 {
                    let now = self.local(n);
                    let acts = self.nodes[n].tick(now);
                    self.apply(n, acts);
                }
            }
            let acting = self.acting_primaries();
            assert!(
                acting.len() <= 1,
                "two primaries at real time {} ms: {acting:?}",
                self.t
            );
            let mut seen = BTreeMap::new();
            for &(n, e) in &self.promotions {
                if let Some(&m) = seen.get(&e) {
                    assert_eq!(m, n, "epoch {e} on two nodes");
                }
                seen.insert(e, n);
            }
        }
    }

    fn fault(&mut self, f: Fault) {
        match f {
            Fault::Kill(n) => self.dead[n] = true,
            Fault::Pause(n, until) => self.paused_until[n] = until,
            Fault::Cut(a, b) => {
                self.down[a][b] = true;
                self.down[b][a] = true;
            }
            Fault::CutOneWay(a, b) => self.down[a][b] = true,
            Fault::Isolate(n) => {
                for m in 0..3 {
                    self.down[n][m] = true;
                    self.down[m][n] = true;
                }
            }
            Fault::HangStorage(n) => self.hung[n] = true,
            Fault::HealAll => {
                self.down = [[false; 3]; 3];
                self.hung = [false; 3];
            }
        }
    }

    fn primary(&self) -> Option<&'static str> {
        let acting = self.acting_primaries();
        acting.first().map(|&n| self.names[n])
    }
}

const A: usize = 0;
const B: usize = 1;
const W: usize = 2;

#[test]
fn simulated_faults_never_make_two_primaries() {
    let rates = [
        [1.0, 1.0, 1.0],
        [1.05, 0.95, 0.95],
        [0.95, 1.05, 1.05],
        [1.05, 1.05, 0.95],
        [0.95, 0.95, 1.05],
    ];
    // (case, fault, then (after 10 s) who is primary: None = nobody acts)
    let cases: [(&str, Fault, Option<&str>); 11] = [
        (
            "the primary's storage hangs",
            Fault::HangStorage(A),
            Some("b"),
        ),
        (
            "the secondary's storage hangs",
            Fault::HangStorage(B),
            Some("a"),
        ),
        ("kill -9 of the primary", Fault::Kill(A), Some("b")),
        ("kill -9 of the secondary", Fault::Kill(B), Some("a")),
        ("kill -9 of the watchdog", Fault::Kill(W), Some("a")),
        ("primary isolated", Fault::Isolate(A), Some("b")),
        ("secondary isolated", Fault::Isolate(B), Some("a")),
        ("watchdog isolated", Fault::Isolate(W), Some("a")),
        (
            "primary cut from the secondary only",
            Fault::Cut(A, B),
            Some("a"),
        ),
        (
            "primary cut from the watchdog only",
            Fault::Cut(A, W),
            Some("a"),
        ),
        (
            "primary paused longer than the lease",
            Fault::Pause(A, 9000),
            Some("b"),
        ),
    ];
    // Safety must not lean on the complaint delay: also with one complaint.
    let timings = [
        params(),
        Params {
            complaint_count: 1,
            ..params()
        },
    ];
    for (rate, p) in rates
        .iter()
        .flat_map(|r| timings.iter().map(move |p| (*r, *p)))
    {
        for (case, fault, want) in cases {
            let mut sim = Sim::with(rate, p);
            sim.run_until(5000);
            sim.fault(fault);
            sim.run_until(15_000);
            assert_eq!(sim.primary(), want, "{case} with clock rates {rate:?}");
            sim.fault(Fault::HealAll);
            sim.run_until(25_000);
            assert!(
                sim.primary().is_some(),
                "{case}: nobody primary after healing"
            );
        }
    }
}

#[test]
fn one_way_partitions_never_make_two_primaries() {
    for (from, to) in [(A, B), (B, A), (A, W), (W, A), (B, W), (W, B)] {
        for rate in [[1.05, 0.95, 0.95], [0.95, 1.05, 1.05]] {
            let mut sim = Sim::new(rate);
            sim.run_until(5000);
            sim.fault(Fault::CutOneWay(from, to));
            sim.run_until(20_000);
            assert!(
                sim.primary().is_some(),
                "{from}->{to} {rate:?}: nobody primary"
            );
        }
    }
}

#[test]
fn takeover_time_after_kill_is_a_few_seconds() {
    let mut sim = Sim::new([1.0; 3]);
    sim.run_until(5000);
    sim.fault(Fault::Kill(A));
    let killed = sim.t;
    while sim.primary() != Some("b") && sim.t < killed + 10_000 {
        sim.run_until(sim.t + 10);
    }
    let took = sim.t - killed;
    // lease (2 s) + complaints (2 rounds of 1 s) overlap: well under 5 s.
    assert!(took <= 3500, "takeover took {took} ms");
}

#[test]
fn takeover_time_after_the_primarys_storage_hangs_is_that_of_a_kill() {
    // The fault at every phase of the heartbeat and check cycle.
    let mut worst = 0;
    for phase in (0..1000).step_by(50) {
        let mut sim = Sim::new([1.0; 3]);
        sim.run_until(5000 + phase);
        sim.fault(Fault::HangStorage(A));
        let hung = sim.t;
        while sim.primary() != Some("b") && sim.t < hung + 10_000 {
            sim.run_until(sim.t + 10);
        }
        worst = worst.max(sim.t - hung);
    }
    // The promises already given (≤ 2 s) and two complaints judged as soon
    // as the round is answered; without the vouching rule it is never.
    assert!(worst <= 3500, "takeover took up to {worst} ms");
}

#[test]
fn priority_delays_the_takeover_by_that_many_complaints() {
    // (priority, complaints received, asks)
    let cases = [
        (0, 2, true),
        (1, 2, false),
        (1, 3, true),
        (3, 4, false),
        (3, 5, true),
    ];
    for (priority, complaints, asks) in cases {
        let p = Params {
            priority,
            ..params()
        };
        let mut b = Policy::new("b", p, 2, WitnessState::default(), 0);
        b.set_role(Role::Secondary, 0);
        b.on_exec(Exec::Status, true, 0);
        let complain = RequestBody::Complain {
            epoch: 1,
            outdated: vec![],
        };
        for i in 0..complaints {
            b.on_request("w", &complain, 3000 + i * 100);
        }
        let asked = b.tick(5000).iter().any(|a| {
            matches!(
                a,
                Action::Send {
                    req: RequestBody::Takeover { .. },
                    ..
                }
            )
        });
        assert_eq!(asked, asks, "priority {priority}, {complaints} complaints");
    }
}
