use super::*;

fn at(base: Instant, ms: u64) -> Now {
    Now {
        mono: base + Duration::from_millis(ms),
        wall_ms: 1_000_000 + ms,
    }
}

fn names(s: &[&str]) -> Vec<String> {
    s.iter().map(|n| n.to_string()).collect()
}

#[test]
fn timeout_table() {
    let s = Duration::from_secs;
    #[rustfmt::skip]
    let cases: &[(&str, Asked, &[u32], Option<Duration>)] = &[
        ("-t 5", Asked::Seconds(5), &[60], Some(s(5))),
        ("-t above the maximum is capped", Asked::Seconds(u64::MAX), &[60], Some(s(TIMEOUT_MAX_SECS))),
        ("-t -1: none", Asked::Never, &[60], None),
        ("-t 0: configured", Asked::Configured, &[60], Some(s(60))),
        ("configured: the shortest member", Asked::Configured, &[60, 7, 30], Some(s(7))),
        ("configured 0 is no timeout", Asked::Configured, &[0], None),
        ("configured: 0 members do not count", Asked::Configured, &[0, 30], Some(s(30))),
        ("configured, no member", Asked::Configured, &[], None),
    ];
    for (name, asked, conf, want) in cases {
        assert_eq!(timeout(*asked, conf), *want, "{name}");
    }
    assert_eq!(freezing_bound(None), FREEZING_MAX);
    assert_eq!(freezing_bound(Some(s(2))), s(2));
    assert_eq!(freezing_bound(Some(s(3600))), FREEZING_MAX);
}

#[test]
fn a_group_freezes_commits_and_thaws_by_command() {
    let t0 = Instant::now();
    let mut b = Book::default();
    let g = b
        .begin(
            &names(&["a", "b", "a"]),
            at(t0, 0),
            Some(Duration::from_secs(10)),
        )
        .unwrap();
    assert_eq!(
        g.members,
        names(&["a", "b"]),
        "duplicates dropped, order kept"
    );
    assert_eq!(g.deadline(), Some(t0 + Duration::from_secs(10)));
    assert_eq!(
        g.left(t0 + Duration::from_secs(4)),
        Some(Duration::from_secs(6))
    );
    assert_eq!(g.left(t0 + Duration::from_secs(40)), Some(Duration::ZERO));
    assert!(b.may_change("a").unwrap_err().contains("being frozen"));
    assert!(b.may_change("c").is_ok());
    let c = b.commit(g.generation).unwrap();
    assert!(c.committed);
    assert!(b
        .may_change("b")
        .unwrap_err()
        .starts_with("b is frozen (group a b, since "));
    assert!(matches!(b.view("a"), View::Frozen(ref g) if g.committed));

    // `thaw b` thaws the group it is in, once.
    let (groups, refused) = b.thaw_command(&names(&["b", "a"]), at(t0, 500));
    assert_eq!(groups, vec![g.generation]);
    assert!(refused.is_empty());
    let thawed = b.thaw(g.generation, Reason::Command, at(t0, 500)).unwrap();
    assert_eq!(thawed.members, names(&["a", "b"]));
    assert!(
        b.thaw(g.generation, Reason::Timeout, at(t0, 600)).is_none(),
        "thawed once"
    );
    assert!(b.may_change("a").is_ok());
    match b.view("a") {
        View::Thawed(t) => {
            assert_eq!(t.reason, Reason::Command);
            assert_eq!(t.at_ms, 1_000_500);
            assert_eq!(t.frozen_at_ms, 1_000_000);
            assert_eq!(t.group, names(&["a", "b"]));
        }
        v => panic!("{v:?}"),
    }
}

/// (case, how the last freeze of `a` ended, what `thaw a` answers)
#[test]
fn thaw_of_a_thawed_resource_table() {
    let t0 = Instant::now();
    #[rustfmt::skip]
    let cases: &[(&str, Option<Reason>, &str)] = &[
        ("never frozen", None, "a is not frozen"),
        ("thawed by thaw", Some(Reason::Command), "a is not frozen: thawed by hastctl thaw at"),
        ("thawed by the timeout", Some(Reason::Timeout), "a was already thawed at 1970-01-01T00:16:42.000Z (3.0s ago) by timeout, 2.0s after its freeze"),
        ("thawed by a lost peer", Some(Reason::PeerLost), "by peer lost"),
        ("thawed by hastd stopping", Some(Reason::Stopping), "by hastd stopping"),
        ("thawed by a demotion", Some(Reason::Demoted), "by demoted"),
    ];
    for (case, ended, want) in cases {
        let mut b = Book::default();
        if let Some(reason) = ended {
            let g = b.begin(&names(&["a"]), at(t0, 0), None).unwrap();
            b.commit(g.generation).unwrap();
            b.thaw(g.generation, *reason, at(t0, 2000)).unwrap();
        }
        let (groups, refused) = b.thaw_command(&names(&["a"]), at(t0, 5000));
        assert!(groups.is_empty(), "{case}");
        assert_eq!(refused.len(), 1, "{case}");
        let msg = refused[0].to_string();
        assert!(msg.contains(want), "{case}: {msg}");
        let by_itself = matches!(refused[0], ThawRefusal::ThawedBy { .. });
        assert_eq!(
            by_itself,
            ended.is_some_and(|r| r != Reason::Command),
            "{case}"
        );
        if by_itself {
            assert!(msg.contains("may not be coherent"), "{case}: {msg}");
        }
    }
}

#[test]
fn a_freeze_never_takes_a_resource_already_in_a_group_and_changes_nothing() {
    let t0 = Instant::now();
    let mut b = Book::default();
    let g1 = b.begin(&names(&["a", "b"]), at(t0, 0), None).unwrap();
    let e = b.begin(&names(&["c", "b"]), at(t0, 1), None).unwrap_err();
    assert!(
        matches!(e, FreezeRefusal::BeingFrozen { ref name, .. } if name == "b"),
        "{e}"
    );
    assert!(b.group_of("c").is_none(), "the refused freeze took nothing");
    b.commit(g1.generation).unwrap();
    let e = b.begin(&names(&["a"]), at(t0, 2), None).unwrap_err();
    assert!(matches!(e, FreezeRefusal::AlreadyFrozen { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with("a is already frozen (group a b, since "),
        "{e}"
    );
    assert_eq!(
        b.begin(&[], at(t0, 3), None).unwrap_err(),
        FreezeRefusal::Empty
    );
    // After the thaw the same names freeze again, in a new generation.
    b.thaw(g1.generation, Reason::Command, at(t0, 4)).unwrap();
    let g2 = b.begin(&names(&["b", "c"]), at(t0, 5), None).unwrap();
    assert!(g2.generation > g1.generation);
}

#[test]
fn a_freeze_thawed_or_aborted_before_its_commit_fails_and_records_nothing() {
    let t0 = Instant::now();
    let mut b = Book::default();
    // Thawed while freezing (the timeout, a thaw command, a demotion):
    // the commit fails with that reason, no thaw is remembered.
    let g = b
        .begin(&names(&["a"]), at(t0, 0), Some(Duration::from_secs(1)))
        .unwrap();
    let (groups, _) = b.thaw_command(&names(&["a"]), at(t0, 10));
    assert_eq!(
        groups,
        vec![g.generation],
        "a group being frozen can be thawed"
    );
    b.thaw(g.generation, Reason::Timeout, at(t0, 1000)).unwrap();
    assert_eq!(
        b.commit(g.generation),
        Err(ThawedWhileFreezing {
            reason: Reason::Timeout
        })
    );
    assert_eq!(b.view("a"), View::Never);
    assert!(b.ended.is_empty(), "the reason is given once");
    // Aborted (a member was not primary): as if never begun.
    let g = b.begin(&names(&["a", "b"]), at(t0, 2000), None).unwrap();
    assert!(b.abort(g.generation).is_some());
    assert!(b.abort(g.generation).is_none());
    assert_eq!(b.view("a"), View::Never);
    assert!(b.may_change("b").is_ok());
    assert!(b.begin(&names(&["a", "b"]), at(t0, 3000), None).is_ok());
}

#[test]
fn the_last_thaw_is_kept_per_resource_across_later_groups() {
    let t0 = Instant::now();
    let mut b = Book::default();
    let g = b.begin(&names(&["a", "b"]), at(t0, 0), None).unwrap();
    b.commit(g.generation).unwrap();
    b.thaw(g.generation, Reason::PeerLost, at(t0, 100)).unwrap();
    // `a` alone is frozen and thawed by command again; `b`'s last freeze
    // still ended by the peer.
    let g = b.begin(&names(&["a"]), at(t0, 200), None).unwrap();
    b.commit(g.generation).unwrap();
    b.thaw(g.generation, Reason::Command, at(t0, 300)).unwrap();
    let (_, refused) = b.thaw_command(&names(&["a", "b"]), at(t0, 400));
    assert!(
        matches!(refused[0], ThawRefusal::NotFrozen { .. }),
        "{:?}",
        refused[0]
    );
    assert!(
        matches!(
            refused[1],
            ThawRefusal::ThawedBy {
                reason: Reason::PeerLost,
                ..
            }
        ),
        "{:?}",
        refused[1]
    );
}
