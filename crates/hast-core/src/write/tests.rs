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
    ];
    // Every sequence of up to 6 events from a small seeded walk.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..20_000 {
        for mode in [FULL, MEM, ASYNC] {
            for (peer, link) in [(false, false), (true, false), (true, true)] {
                let (mut op, mut act) = WriteOp::start(params(mode, peer, link), false);
                let mut answers = 0;
                let mut applied_ok = false;
                for _ in 0..12 {
                    match act {
                        A::Reply(r) => {
                            answers += 1;
                            assert!(r.is_err() || applied_ok);
                        }
                        A::Complete { reply, .. } => {
                            if let Some(r) = reply {
                                answers += 1;
                                assert!(r.is_err() || applied_ok, "success without local apply");
                            }
                            break;
                        }
                        _ => {}
                    }
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let e = events[(x % events.len() as u64) as usize];
                    if e == E::Applied(OK) && act == A::ApplyLocal {
                        applied_ok = true;
                    }
                    act = op.step(e);
                }
                assert!(answers <= 1, "answered {answers} times");
            }
        }
    }
}
