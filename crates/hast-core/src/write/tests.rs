//! Every path of a modification, as a table: the events fed in, the actions
//! expected out.

use super::*;
use Action as A;
use Event as E;

const FULL: Replication = Replication::Fullsync;
const MEM: Replication = Replication::Memsync;
const ASYNC: Replication = Replication::Async;

fn params(mode: Replication, peer_configured: bool, link_up: bool) -> Params {
    Params {
        mode,
        peer_configured,
        link_up,
        detach: false,
        detached: false,
    }
}

/// `on_io_error detach` (`detached`: this copy is detached already).
fn detaching(mode: Replication, link_up: bool, detached: bool) -> Params {
    Params {
        detach: true,
        detached,
        ..params(mode, true, link_up)
    }
}

/// The actions the machine returns, the first from `start`, then one per event.
fn run(p: Params, fua: bool, events: &[Event]) -> Vec<Action> {
    let (mut op, first) = WriteOp::start(p, fua);
    let mut out = vec![first];
    for &e in events {
        assert!(!op.is_done(), "event {e:?} after the end: {out:?}");
        out.push(op.step(e));
    }
    out
}

/// (name, params, fua, events fed, actions expected)
type Row = (&'static str, Params, bool, Vec<Event>, Vec<Action>);

const OK: Result<(), Failure> = Ok(());
const MARK: Action = A::MarkDirty { wait: true };

fn done(in_sync: bool, reply: Result<(), Failure>) -> Action {
    A::Complete {
        marked: Some(in_sync),
        reply: Some(reply),
    }
}

#[test]
fn table() {
    let send = |fua, want_received| A::Send { fua, want_received };
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("no peer configured: local only, in sync",
         params(FULL, false, false), false,
         vec![E::Marked(true), E::Applied(OK)],
         vec![MARK, A::ApplyLocal, done(true, OK)]),
        ("fullsync waits for the REPLY",
         params(FULL, true, true), true,
         vec![E::Marked(true), E::Sent(true), E::Applied(OK), E::Replied(true)],
         vec![MARK, send(true, false), A::ApplyLocal, A::AwaitReply, done(true, OK)]),
        ("fullsync, peer fails: link dropped, fenced, recorded, then acknowledged dirty",
         params(FULL, true, true), false,
         vec![E::Marked(true), E::Sent(true), E::Applied(OK), E::Replied(false),
              E::LinkFailed, E::Fenced, E::Recorded(true)],
         vec![MARK, send(false, false), A::ApplyLocal, A::AwaitReply, A::FailLink,
              A::Hold { reroute: false }, A::RecordDegraded, done(false, OK)]),
        ("memsync waits for RECEIVED, answers, then records the REPLY",
         params(MEM, true, true), false,
         vec![E::Marked(true), E::Sent(true), E::Applied(OK), E::Received(true),
              E::Polled(None), E::Answered, E::Replied(true)],
         vec![MARK, send(false, true), A::ApplyLocal, A::AwaitReceived, A::PollReply,
              A::Reply(OK), A::AwaitReply, A::Complete { marked: Some(true), reply: None }]),
        ("memsync, REPLY already in: recorded before the answer",
         params(MEM, true, true), true,
         vec![E::Marked(true), E::Sent(true), E::Applied(OK), E::Received(true),
              E::Polled(Some(true))],
         vec![MARK, send(true, true), A::ApplyLocal, A::AwaitReceived, A::PollReply,
              done(true, OK)]),
        ("memsync, link lost before RECEIVED: degraded",
         params(MEM, true, true), false,
         vec![E::Marked(true), E::Sent(true), E::Applied(OK), E::Received(false),
              E::LinkFailed, E::Fenced, E::Recorded(true)],
         vec![MARK, send(false, true), A::ApplyLocal, A::AwaitReceived, A::FailLink,
              A::Hold { reroute: false }, A::RecordDegraded, done(false, OK)]),
        ("async answers at once; FUA is not sent",
         params(ASYNC, true, true), true,
         vec![E::Marked(true), E::Sent(true), E::Applied(OK), E::Polled(None),
              E::Answered, E::Replied(true)],
         vec![MARK, send(false, false), A::ApplyLocal, A::PollReply, A::Reply(OK),
              A::AwaitReply, A::Complete { marked: Some(true), reply: None }]),
        ("async, REPLY fails after the answer: degraded, not answered again",
         params(ASYNC, true, true), false,
         vec![E::Marked(true), E::Sent(true), E::Applied(OK), E::Polled(None),
              E::Answered, E::Replied(false), E::LinkFailed, E::Fenced, E::Recorded(true)],
         vec![MARK, send(false, false), A::ApplyLocal, A::PollReply, A::Reply(OK),
              A::AwaitReply, A::FailLink, A::Hold { reroute: false }, A::RecordDegraded,
              A::Complete { marked: Some(false), reply: None }]),
        ("peer absent: fenced and recorded before the mark",
         params(FULL, true, false), false,
         vec![E::Fenced, E::Recorded(true), E::Marked(true), E::Applied(OK)],
         vec![A::Hold { reroute: true }, A::RecordDegraded, MARK, A::ApplyLocal,
              done(false, OK)]),
        ("peer absent, link back while held: replicated",
         params(FULL, true, false), false,
         vec![E::Rerouted, E::Marked(true), E::Sent(true), E::Applied(OK), E::Replied(true)],
         vec![A::Hold { reroute: true }, MARK, send(false, false), A::ApplyLocal,
              A::AwaitReply, done(true, OK)]),
        ("peer absent, demoted while held: nothing marked, shut down",
         params(FULL, true, false), false,
         vec![E::Shutdown],
         vec![A::Hold { reroute: true },
              A::Complete { marked: None, reply: Some(Err(Failure::Shutdown)) }]),
        ("degraded counter cannot be written: fails, nothing marked",
         params(FULL, true, false), false,
         vec![E::Fenced, E::Recorded(false)],
         vec![A::Hold { reroute: true }, A::RecordDegraded,
              A::Complete { marked: None, reply: Some(Err(Failure::Io)) }]),
        ("activemap write fails: fails, marked range released dirty",
         params(FULL, true, true), false,
         vec![E::Marked(false)],
         vec![MARK, done(false, Err(Failure::Io))]),
        ("send fails: fenced and recorded before applying alone",
         params(MEM, true, true), false,
         vec![E::Marked(true), E::Sent(false), E::Fenced, E::Recorded(true), E::Applied(OK)],
         vec![MARK, send(false, true), A::Hold { reroute: false }, A::RecordDegraded,
              A::ApplyLocal, done(false, OK)]),
        ("send fails without a configured peer: applied alone, no fence, no counter",
         params(FULL, false, true), false,
         vec![E::Marked(true), E::Sent(false), E::Applied(OK)],
         vec![MARK, send(false, false), A::ApplyLocal, done(true, OK)]),
        ("send fails, demoted while held: shut down, range dirty",
         params(FULL, true, true), false,
         vec![E::Marked(true), E::Sent(false), E::Shutdown],
         vec![MARK, send(false, false), A::Hold { reroute: false },
              done(false, Err(Failure::Shutdown))]),
        ("local write fails, peer has it: the error is the answer, not in sync",
         params(FULL, true, true), false,
         vec![E::Marked(true), E::Sent(true), E::Applied(Err(Failure::Io)), E::Replied(true)],
         vec![MARK, send(false, false), A::ApplyLocal, A::AwaitReply,
              done(false, Err(Failure::Io))]),
        ("began alone, a handshake came before the record: takes the new link",
         params(FULL, true, false), false,
         vec![E::Fenced, E::Superseded, E::Rerouted, E::Marked(true), E::Sent(true),
              E::Applied(OK), E::Replied(true)],
         vec![A::Hold { reroute: true }, A::RecordDegraded, A::Hold { reroute: true }, MARK,
              send(false, false), A::ApplyLocal, A::AwaitReply, done(true, OK)]),
        ("began alone, the handshake failed: records for the new period, goes alone",
         params(FULL, true, false), false,
         vec![E::Fenced, E::Superseded, E::Fenced, E::Recorded(true), E::Marked(true),
              E::Applied(OK)],
         vec![A::Hold { reroute: true }, A::RecordDegraded, A::Hold { reroute: true },
              A::RecordDegraded, MARK, A::ApplyLocal, done(false, OK)]),
        ("send failed, a handshake came before the record: sent on the new link",
         params(FULL, true, true), false,
         vec![E::Marked(true), E::Sent(false), E::Fenced, E::Superseded, E::Rerouted,
              E::Sent(true), E::Applied(OK), E::Replied(true)],
         vec![MARK, send(false, false), A::Hold { reroute: false }, A::RecordDegraded,
              A::Hold { reroute: true }, send(false, false), A::ApplyLocal, A::AwaitReply,
              done(true, OK)]),
        ("applied, peer failed, a handshake came before the record: not acknowledged",
         params(FULL, true, true), false,
         vec![E::Marked(true), E::Sent(true), E::Applied(OK), E::Replied(false),
              E::LinkFailed, E::Fenced, E::Superseded],
         vec![MARK, send(false, false), A::ApplyLocal, A::AwaitReply, A::FailLink,
              A::Hold { reroute: false }, A::RecordDegraded, done(false, Err(Failure::Io))]),
        ("unexpected event: ends failed, never acknowledged",
         params(FULL, true, true), false,
         vec![E::Answered],
         vec![MARK, done(false, Err(Failure::Shutdown))]),
    ];
    for (name, p, fua, events, want) in rows {
        assert_eq!(run(p, fua, &events), want, "{name}");
    }
}

#[test]
fn detach_table() {
    let send = |fua, want_received| A::Send { fua, want_received };
    let io = Err(Failure::Io);
    let peer_only = |reply| A::Complete {
        marked: None,
        reply: Some(reply),
    };
    #[rustfmt::skip]
    let rows: Vec<Row> = vec![
        ("local write fails, detach allowed, peer applied it: acknowledged, not in sync",
         detaching(FULL, true, false), false,
         vec![E::Marked(true), E::Sent(true), E::Applied(io), E::Detached(true), E::Tracked(true),
              E::Replied(true)],
         vec![MARK, send(false, false), A::ApplyLocal, A::Detach { possible: true }, A::Track,
              A::AwaitReply, done(false, OK)]),
        ("local write fails, detached, peer fails it too: the link goes, the write fails",
         detaching(FULL, true, false), false,
         vec![E::Marked(true), E::Sent(true), E::Applied(io), E::Detached(true), E::Tracked(true),
              E::Replied(false), E::LinkFailed],
         vec![MARK, send(false, false), A::ApplyLocal, A::Detach { possible: true }, A::Track,
              A::AwaitReply, A::FailLink, done(false, io)]),
        ("local write fails, detach refused (peer not current): the error is the answer",
         detaching(FULL, true, false), false,
         vec![E::Marked(true), E::Sent(true), E::Applied(io), E::Detached(false),
              E::Replied(true)],
         vec![MARK, send(false, false), A::ApplyLocal, A::Detach { possible: true },
              A::AwaitReply, done(false, io)]),
        ("memsync, local write fails, detached: waits for the REPLY, not RECEIVED",
         detaching(MEM, true, false), false,
         vec![E::Marked(true), E::Sent(true), E::Applied(io), E::Detached(true), E::Tracked(true),
              E::Replied(true)],
         vec![MARK, send(false, true), A::ApplyLocal, A::Detach { possible: true }, A::Track,
              A::AwaitReply, done(false, OK)]),
        ("async, local write fails, detached: never answered before the REPLY",
         detaching(ASYNC, true, false), true,
         vec![E::Marked(true), E::Sent(true), E::Applied(io), E::Detached(true), E::Tracked(true),
              E::Replied(true)],
         vec![MARK, send(false, false), A::ApplyLocal, A::Detach { possible: true }, A::Track,
              A::AwaitReply, done(false, OK)]),
        ("no link, local write fails: cannot detach, EIO",
         detaching(FULL, false, false), false,
         vec![E::Fenced, E::Recorded(true), E::Marked(true), E::Applied(io), E::Detached(false)],
         vec![A::Hold { reroute: true }, A::RecordDegraded, MARK, A::ApplyLocal,
              A::Detach { possible: false }, done(false, io)]),
        ("no link, the driver says detached anyway: still EIO (nobody has it)",
         detaching(FULL, false, false), false,
         vec![E::Fenced, E::Recorded(true), E::Marked(true), E::Applied(io), E::Detached(true)],
         vec![A::Hold { reroute: true }, A::RecordDegraded, MARK, A::ApplyLocal,
              A::Detach { possible: false }, done(false, io)]),
        ("activemap write fails, detach allowed: sent to the peer alone, acknowledged on REPLY",
         detaching(FULL, true, false), true,
         vec![E::Marked(false), E::Detached(true), E::Tracked(true), E::Sent(true), E::Replied(true)],
         vec![MARK, A::Detach { possible: true }, A::Track, send(true, false), A::AwaitReply,
              done(false, OK)]),
        ("activemap write fails, detach refused: fails, nothing written",
         detaching(FULL, true, false), false,
         vec![E::Marked(false), E::Detached(false)],
         vec![MARK, A::Detach { possible: true }, done(false, io)]),
        ("detached: tracked, to the peer alone with FUA, acknowledged on the REPLY",
         detaching(FULL, true, true), true,
         vec![E::Tracked(true), E::Sent(true), E::Replied(true)],
         vec![A::Track, send(true, false), A::AwaitReply, peer_only(OK)]),
        ("detached, the detachment cannot be made durable: EIO, nothing sent",
         detaching(FULL, true, true), false,
         vec![E::Tracked(false)],
         vec![A::Track, peer_only(io)]),
        ("local write fails, detached but not durably: the REPLY is awaited, then EIO",
         detaching(FULL, true, false), false,
         vec![E::Marked(true), E::Sent(true), E::Applied(io), E::Detached(true), E::Tracked(false),
              E::Replied(true)],
         vec![MARK, send(false, false), A::ApplyLocal, A::Detach { possible: true }, A::Track,
              A::AwaitReply, done(false, io)]),
        ("detached, async: still waits for the REPLY",
         detaching(ASYNC, true, true), false,
         vec![E::Tracked(true), E::Sent(true), E::Replied(true)],
         vec![A::Track, send(false, false), A::AwaitReply, peer_only(OK)]),
        ("detached, no link: EIO at once, nothing touched",
         detaching(FULL, false, true), false,
         vec![],
         vec![peer_only(io)]),
        ("detached, the link dies on the send: EIO",
         detaching(FULL, true, true), false,
         vec![E::Tracked(true), E::Sent(false)],
         vec![A::Track, send(false, false), peer_only(io)]),
        ("detached, the peer fails it: link dropped, EIO",
         detaching(MEM, true, true), false,
         vec![E::Tracked(true), E::Sent(true), E::Replied(false), E::LinkFailed],
         vec![A::Track, send(false, false), A::AwaitReply, A::FailLink, peer_only(io)]),
        ("pass_on: a local failure is the answer, nothing asks to detach",
         params(FULL, true, true), false,
         vec![E::Marked(true), E::Sent(true), E::Applied(io), E::Replied(true)],
         vec![MARK, send(false, false), A::ApplyLocal, A::AwaitReply, done(false, io)]),
    ];
    for (name, p, fua, events, want) in rows {
        assert_eq!(run(p, fua, &events), want, "{name}");
    }
}

/// Whatever the events, a write is never answered twice, never answered
/// with success unless applied locally, and ends with at most one Complete.
#[test]
fn never_answered_twice_nor_falsely() {
    let events = [
        E::Fenced,
        E::Rerouted,
        E::Shutdown,
        E::Recorded(true),
        E::Recorded(false),
        E::Superseded,
        E::Marked(true),
        E::Marked(false),
        E::Sent(true),
        E::Sent(false),
        E::Applied(OK),
        E::Applied(Err(Failure::Io)),
        E::Received(true),
        E::Received(false),
        E::Polled(None),
        E::Polled(Some(true)),
        E::Polled(Some(false)),
        E::Replied(true),
        E::Replied(false),
        E::LinkFailed,
        E::Answered,
        E::Detached(true),
        E::Detached(false),
        E::Tracked(true),
    ];
    // Every sequence of up to 6 events from a small seeded walk.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        for mode in [FULL, MEM, ASYNC] {
            for (peer, link, detach, detached) in [
                (false, false, false, false),
                (true, false, false, false),
                (true, true, false, false),
                (true, true, true, false),
                (true, false, true, false),
                (true, true, true, true),
                (true, false, true, true),
            ] {
                let p = Params {
                    detach,
                    detached,
                    ..params(mode, peer, link)
                };
                let (mut op, mut act) = WriteOp::start(p, false);
                let mut answers = 0;
                let mut applied_ok = false;
                // Served by the peer alone: success needs its REPLY, and
                // only once the copy is detached (or was).
                let mut detached_now = detached;
                let mut peer_applied = false;
                let mut unrecorded = false;
                for _ in 0..12 {
                    match act {
                        A::Reply(r) => {
                            answers += 1;
                            assert!(r.is_err() || applied_ok);
                            assert!(!detached_now, "answered early while detached");
                        }
                        A::Complete { reply, marked } => {
                            if let Some(r) = reply {
                                answers += 1;
                                if detached_now {
                                    assert!(
                                        r.is_err() || peer_applied,
                                        "detached: success without the peer's REPLY"
                                    );
                                    assert!(
                                        r.is_err() || !unrecorded,
                                        "detached: success while the detachment is not durable"
                                    );
                                    assert_ne!(marked, Some(true), "detached: in sync");
                                } else {
                                    assert!(
                                        r.is_err() || applied_ok,
                                        "success without local apply"
                                    );
                                }
                            }
                            break;
                        }
                        A::ApplyLocal => assert!(!detached_now, "detached copy written"),
                        A::MarkDirty { .. } => assert!(!detached_now, "detached map written"),
                        _ => {}
                    }
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Half the time an answer the action expects (so deep
                    // paths such as a detach are walked), else anything.
                    let pick = x % (2 * events.len() as u64);
                    let e = match (pick % 2, act) {
                        (0, A::MarkDirty { .. }) => E::Marked(x & 4 == 0),
                        (0, A::Send { .. }) => E::Sent(x & 4 == 0),
                        (0, A::ApplyLocal) => {
                            E::Applied(if x & 4 == 0 { OK } else { Err(Failure::Io) })
                        }
                        (0, A::Detach { .. }) => E::Detached(x & 4 == 0),
                        (0, A::Track) => E::Tracked(x & 4 == 0),
                        (0, A::AwaitReply) => E::Replied(x & 4 == 0),
                        (0, A::Hold { .. }) => E::Fenced,
                        (0, A::RecordDegraded) => E::Recorded(x & 4 == 0),
                        _ => events[(pick / 2) as usize],
                    };
                    if e == E::Applied(OK) && act == A::ApplyLocal {
                        applied_ok = true;
                    }
                    if e == E::Detached(true) && act == (A::Detach { possible: true }) {
                        detached_now = true;
                        applied_ok = false;
                    }
                    if e == E::Replied(true) && act == A::AwaitReply {
                        peer_applied = true;
                    }
                    if e == E::Tracked(false) && act == A::Track {
                        // Not durably detached: no success may follow.
                        unrecorded = true;
                    }
                    act = op.step(e);
                }
                assert!(answers <= 1, "answered {answers} times");
            }
        }
    }
}
