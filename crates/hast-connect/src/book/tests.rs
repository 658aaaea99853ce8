//! The book's rules by example, then by random histories (proptest): every
//! request completes exactly once, only by the session it is out on; a
//! replay sends in arrival order, the held after the lost; a replayed FLUSH
//! goes only after the writes before it were answered by the new session.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn sent(book: &mut Book<&'static str>, now: Instant) -> Vec<(Seq, &'static str)> {
    let mut v = Vec::new();
    book.dispatch(now, |seq, item| v.push((seq, *item)));
    v
}

#[test]
fn forward_lose_hold_replay() {
    let t = Instant::now();
    let mut b: Book<&str> = Book::new();
    // No session yet: held.
    assert_eq!(b.admit(Kind::Write, "w1", t), (1, Dispatch::Hold));
    b.attach(10);
    assert!(b.replaying());
    assert_eq!(sent(&mut b, t), vec![(1, "w1")]);
    assert!(!b.replaying());
    assert_eq!(b.admit(Kind::Read, "r2", t), (2, Dispatch::Send(10)));
    assert_eq!(b.admit(Kind::Write, "w3", t), (3, Dispatch::Send(10)));
    assert_eq!(b.answered(10, 2), Some("r2"));
    // The session dies with w1 and w3 out; w4 arrives meanwhile.
    assert_eq!(b.lost(10), 2);
    assert_eq!(b.admit(Kind::Write, "w4", t), (4, Dispatch::Hold));
    // A late answer of the lost session is ignored.
    assert_eq!(b.answered(10, 1), None);
    b.attach(11);
    assert_eq!(
        b.admit(Kind::Read, "r5", t),
        (5, Dispatch::Hold),
        "held behind the replay"
    );
    assert_eq!(
        sent(&mut b, t),
        vec![(1, "w1"), (3, "w3"), (4, "w4"), (5, "r5")]
    );
    assert_eq!(
        b.counts(),
        Counts {
            held: 3,
            replayed: 2
        }
    );
    assert_eq!(b.admit(Kind::Write, "w6", t), (6, Dispatch::Send(11)));
    for seq in [3, 1, 6, 5, 4] {
        assert!(b.answered(11, seq).is_some());
    }
    assert!(b.is_empty());
    // Wrong session or unknown cookie.
    assert_eq!(b.answered(11, 99), None);
    assert_eq!(b.answered(11, 0), None);
}

#[test]
fn a_replayed_flush_waits_for_the_writes_before_it() {
    let t = Instant::now();
    let mut b: Book<&str> = Book::new();
    b.attach(1);
    b.admit(Kind::Write, "w1", t);
    b.admit(Kind::Flush, "f2", t);
    b.admit(Kind::Write, "w3", t);
    b.lost(1);
    b.attach(2);
    assert_eq!(sent(&mut b, t), vec![(1, "w1")], "f2 and what follows wait");
    assert!(b.replaying());
    assert_eq!(b.admit(Kind::Read, "r4", t).1, Dispatch::Hold);
    assert_eq!(b.answered(2, 1), Some("w1"));
    assert_eq!(sent(&mut b, t), vec![(2, "f2"), (3, "w3"), (4, "r4")]);
    assert!(!b.replaying());
}

#[test]
fn the_oldest_request_out_is_the_deadlines_start() {
    let t = Instant::now();
    let mut b: Book<u8> = Book::new();
    assert_eq!(b.oldest_out(), None);
    b.attach(1);
    b.admit(Kind::Read, 1, t);
    b.admit(Kind::Read, 2, t + Duration::from_secs(1));
    assert_eq!(b.oldest_out(), Some(t));
    b.answered(1, 1);
    assert_eq!(b.oldest_out(), Some(t + Duration::from_secs(1)));
    b.lost(1);
    assert_eq!(b.oldest_out(), None, "nothing is out with no session");
    assert_eq!(b.drain(), vec![2]);
    assert!(b.is_empty());
    // Sequence numbers keep growing after a drain.
    b.attach(2);
    assert_eq!(b.admit(Kind::Read, 3, t).0, 3);
}

#[test]
fn held_requests_of_departed_clients_are_forgotten() {
    let t = Instant::now();
    let mut b: Book<u8> = Book::new();
    for i in 0..4 {
        b.admit(Kind::Write, i, t);
    }
    assert_eq!(b.forget_unsent(|&i| i % 2 == 0), 2);
    b.attach(1);
    let mut v = Vec::new();
    b.dispatch(t, |_, &i| v.push(i));
    assert_eq!(v, vec![1, 3]);
}

/// A random history's step.
#[derive(Debug, Clone)]
enum Step {
    Admit(Kind),
    /// Answer the k-th request out on the attached session.
    Answer(usize),
    /// A late answer from a lost session for the k-th lost request.
    Late(usize),
    Lose,
    Attach,
    Drain,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop_oneof![Just(Kind::Read), Just(Kind::Write), Just(Kind::Flush), Just(Kind::Other)]
            .prop_map(Step::Admit),
        4 => (0usize..8).prop_map(Step::Answer),
        1 => (0usize..8).prop_map(Step::Late),
        1 => Just(Step::Lose),
        1 => Just(Step::Attach),
        1 => Just(Step::Drain),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn histories_keep_the_rules(steps in proptest::collection::vec(step(), 1..120)) {
        let t = Instant::now();
        let mut b: Book<Seq> = Book::new();
        let mut next_session = 1;
        // The model: kind of every admitted request; completion count.
        let mut kinds: BTreeMap<Seq, Kind> = BTreeMap::new();
        let mut done: BTreeMap<Seq, u32> = BTreeMap::new();
        // Requests out per session (in send order); answered by a session.
        let mut out: BTreeMap<Session, Vec<Seq>> = BTreeMap::new();
        let mut lost_sessions: BTreeSet<Session> = BTreeSet::new();
        let mut admitted = 0u64;
        for st in steps {
            match st {
                Step::Admit(kind) => {
                    admitted += 1;
                    let (seq, d) = b.admit(kind, admitted, t);
                    prop_assert_eq!(seq, admitted);
                    kinds.insert(seq, kind);
                    if let Dispatch::Send(s) = d {
                        prop_assert_eq!(Some(s), b.session());
                        prop_assert!(!b.replaying());
                        out.entry(s).or_default().push(seq);
                    }
                }
                Step::Answer(k) => {
                    let Some(s) = b.session() else { continue };
                    let list = out.entry(s).or_default();
                    if list.is_empty() { continue; }
                    let seq = list.remove(k % list.len());
                    let item = b.answered(s, seq);
                    prop_assert_eq!(item, Some(seq));
                    *done.entry(seq).or_default() += 1;
                    let mut newly = Vec::new();
                    b.dispatch(t, |seq, _| newly.push(seq));
                    for seq in newly { check_flush(&kinds, &done, seq)?; out.entry(s).or_default().push(seq); }
                }
                Step::Late(k) => {
                    let Some(&s) = lost_sessions.iter().next_back() else { continue };
                    let list = out.entry(s).or_default();
                    if list.is_empty() { continue; }
                    let seq = list[k % list.len()];
                    prop_assert_eq!(b.answered(s, seq), None, "a lost session's answer counts");
                }
                Step::Lose => {
                    let Some(s) = b.session() else { continue };
                    let n = b.lost(s);
                    prop_assert_eq!(n, out.get(&s).map_or(0, Vec::len));
                    lost_sessions.insert(s);
                }
                Step::Attach => {
                    if let Some(s) = b.session() {
                        b.lost(s);
                        lost_sessions.insert(s);
                    }
                    let s = next_session;
                    next_session += 1;
                    b.attach(s);
                    let mut replayed = Vec::new();
                    b.dispatch(t, |seq, _| replayed.push(seq));
                    prop_assert!(replayed.windows(2).all(|w| w[0] < w[1]), "replay out of order");
                    for &seq in &replayed { check_flush(&kinds, &done, seq)?; }
                    out.insert(s, replayed);
                }
                Step::Drain => {
                    for seq in b.drain() { *done.entry(seq).or_default() += 1; }
                    out.clear();
                }
            }
            prop_assert!(b.len() <= kinds.len());
        }
        for seq in b.drain() { *done.entry(seq).or_default() += 1; }
        for seq in kinds.keys() {
            prop_assert_eq!(done.get(seq).copied(), Some(1), "request {} completed {:?} times", seq, done.get(seq));
        }
    }
}

/// A FLUSH sent by a replay: every write admitted before it is complete
/// (answered, by the new session if it was still out when the old one was
/// lost, since the old one's answers are refused).
fn check_flush(
    kinds: &BTreeMap<Seq, Kind>,
    done: &BTreeMap<Seq, u32>,
    seq: Seq,
) -> Result<(), TestCaseError> {
    if kinds[&seq] != Kind::Flush {
        return Ok(());
    }
    for (&w, &k) in kinds.range(..seq) {
        if k == Kind::Write {
            prop_assert!(
                done.contains_key(&w),
                "flush {} replayed before write {} was answered",
                seq,
                w
            );
        }
    }
    Ok(())
}
