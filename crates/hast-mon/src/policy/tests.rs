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
                assert_eq!(reply, ReplyBody::Granted { epoch: e }, "{case}");
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
    assert_eq!(reply, ReplyBody::Granted { epoch: 10 });
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
    b.on_exec(Exec::Status, true);
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
    b.on_exec(Exec::Status, false);
    assert_eq!(takeovers(&b.tick(2100)), 0);
    b.on_exec(Exec::Status, true);
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
        Some(&ReplyBody::Granted { epoch: 2 }),
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
    b.on_exec(Exec::Status, true);
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
        Some(&ReplyBody::Granted { epoch: 1 }),
        0,
        10,
    );
    assert_eq!(a.role(), Role::Primary);
    a.on_exec(Exec::Start, true);
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
    assert!(acts.contains(&Action::Exec(Exec::Lease(1000 + 1809 - 1010))));
    // A refusal from an older epoch changes nothing; one from a newer epoch demotes.
    let stale = ReplyBody::Lease {
        granted: false,
        epoch: 1,
        node: "w".into(),
        role: Role::Watchdog,
    };
    assert!(a.on_reply(1, &hb, Some(&stale), 1000, 1010).is_empty());
    // Three failed status checks give up.
    for i in 1..=3 {
        let acts = a.on_exec(Exec::Status, false);
        assert_eq!(a.role() == Role::Primary, i < 3, "after {i} failures");
        if i == 3 {
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
        Some(&ReplyBody::Granted { epoch: 1 }),
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
                Action::Exec(e) => {
                    if e == Exec::Role(Role::Primary) {
                        let epoch = self.nodes[n].epoch();
                        self.promotions.push((n, epoch));
                    }
                    let acts = self.nodes[n].on_exec(e, true);
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
            Fault::HealAll => self.down = [[false; 3]; 3],
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
    let cases: [(&str, Fault, Option<&str>); 9] = [
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
        b.on_exec(Exec::Status, true);
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
