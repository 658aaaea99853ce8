//! The primary's rules for one modification (WRITE, TRIM, WRITE_ZEROES), as
//! a state machine with no I/O: the driver performs each [`Action`] and
//! feeds back what came of it as an [`Event`], until [`Action::Complete`].
//!
//! The order it enforces, and why:
//!
//! 1. **Fence before writing alone.** A configured peer that is not
//!    connected is about to miss this write: with `fence_peer` the write is
//!    held until the peer is fenced ([`Action::Hold`]; a link that comes
//!    back meanwhile takes the write instead), and the first such write of a
//!    degraded period bumps `localcnt` durably ([`Action::RecordDegraded`])
//!    before anything is acknowledged, so the next handshake knows this copy
//!    is newer.
//! 2. **Activemap before data.** The extent's bit must be durable before the
//!    data write is issued anywhere ([`Action::MarkDirty`]): a crash between
//!    the two must leave the extent dirty, or the copies could differ where
//!    no map says so.
//! 3. **Send, then apply.** The change goes to the peer first (it is already
//!    on its way while the local write runs), then to this copy.
//! 4. **Acknowledge per the mode.** fullsync waits for the secondary's REPLY
//!    (applied there); memsync for its RECEIVED (in its memory), async for
//!    nothing. A REPLY that is already in when the mode's wait ends is
//!    recorded at once; otherwise the client is answered first
//!    ([`Action::Reply`]) and the REPLY recorded when it comes.
//! 5. **A peer failure makes the write degraded.** The link is dropped (the
//!    next connection resyncs), the write goes through step 1's fence and
//!    counter rule before it may be acknowledged, and its extents stay dirty.
//! 6. **Clear only what both copies have.** [`Action::Complete`] tells the
//!    activemap whether the write is on both copies (`in_sync`); only then
//!    may a later barrier clear its bits.
//! 7. **A failing local copy is detached, not trusted** (`on_io_error
//!    detach`, [`Params::detach`]). When this copy fails the write (data or
//!    activemap) and the write is (or is about to be) on its way to the
//!    peer, the driver is asked to detach ([`Action::Detach`]; it agrees
//!    only when the peer's copy is current). Once detached
//!    ([`Params::detached`]) a write never touches this copy: its range is
//!    recorded for the resync at attach ([`Action::Track`]), it goes to the
//!    peer alone and is acknowledged only after the peer's REPLY, whatever
//!    the mode (memsync's RECEIVED or async's nothing would rest on no
//!    disk at all). Without a link it fails (EIO). The write that hit the
//!    error is completed the same way: success once the peer applied it.

use hast_conf::Replication;

use crate::mutation::{planted, Mutation};

/// What the resource looks like when the modification arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// The replication mode in force for this write.
    pub mode: Replication,
    /// A peer is configured (`remote` is not `none`).
    pub peer_configured: bool,
    /// A live link to the peer exists right now.
    pub link_up: bool,
    /// `on_io_error detach`: a local failure asks to detach this copy
    /// ([`Action::Detach`]) rather than failing the write.
    pub detach: bool,
    /// This copy is detached: the write goes to the peer alone.
    pub detached: bool,
}

/// Why a modification failed, as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The resource is being demoted or hastd is stopping.
    Shutdown,
    /// This copy (its data or metadata) failed the request.
    Io,
}

/// What the driver must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Wait until the peer is fenced (`fence_peer`) or, with `reroute`, a
    /// link comes back. Answer with [`Event::Fenced`], [`Event::Rerouted`]
    /// (only with `reroute`) or [`Event::Shutdown`].
    Hold { reroute: bool },
    /// Make `localcnt` one higher than the peer has seen, durably, once per
    /// degraded period ([`DegradedPeriods`]). Answer with
    /// [`Event::Recorded`], or [`Event::Superseded`] when the write may not
    /// go alone any more (a handshake began since it started).
    RecordDegraded,
    /// Set the range's activemap bits; with `wait`, wait until they are
    /// durable. Answer with [`Event::Marked`].
    MarkDirty { wait: bool },
    /// Send the change to the peer; `fua` and `want_received` are the
    /// frame's flags. Answer with [`Event::Sent`].
    Send { fua: bool, want_received: bool },
    /// Apply the change to this copy. Answer with [`Event::Applied`].
    ApplyLocal,
    /// Wait for the secondary's RECEIVED. Answer with [`Event::Received`].
    AwaitReceived,
    /// Look whether the REPLY is already in, without waiting. Answer with
    /// [`Event::Polled`].
    PollReply,
    /// Wait for the secondary's REPLY. Answer with [`Event::Replied`].
    AwaitReply,
    /// Drop the link: the peer failed a write and its copy is behind.
    /// Answer with [`Event::LinkFailed`].
    FailLink,
    /// This copy failed the write. Detach it if the peer can serve in its
    /// place (`possible`: the write is on its way to the peer; the driver
    /// also checks the peer's copy is current). Answer with
    /// [`Event::Detached`]: `true` only if this copy is now detached.
    Detach { possible: bool },
    /// Record the range as written while detached (in memory), so that it
    /// is resynced from the peer before this copy serves it again, and make
    /// sure the detachment itself is durable (a restart must not take this
    /// copy for current). Answer with [`Event::Tracked`]: `false` if the
    /// detachment could not be made durable — then the write is not
    /// acknowledged (EIO), whatever the peer does with it.
    Track,
    /// Answer the client now; the write is still being recorded. Answer
    /// with [`Event::Answered`].
    Reply(Result<(), Failure>),
    /// The end: if the range was marked, tell the activemap it is done and
    /// whether both copies have it (`marked: Some(in_sync)`); answer the
    /// client with `reply` unless it was answered already (`None`).
    Complete {
        marked: Option<bool>,
        reply: Option<Result<(), Failure>>,
    },
}

/// What came of the last action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Fenced,
    Rerouted,
    Shutdown,
    Recorded(bool),
    /// A handshake began since the write started: it may not go alone.
    Superseded,
    Marked(bool),
    Sent(bool),
    Applied(Result<(), Failure>),
    Received(bool),
    Polled(Option<bool>),
    Replied(bool),
    LinkFailed,
    Answered,
    Detached(bool),
    Tracked(bool),
}

/// Where the modification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Degraded before it started: fence, then record, then mark.
    HoldBefore,
    RecordBefore,
    Marking,
    Sending,
    /// The send failed: fence and record before applying alone.
    HoldAfterSend,
    RecordAfterSend,
    Applying,
    WaitReceived,
    Polling,
    Answering,
    WaitReply,
    /// The peer failed it after it was applied: drop the link, fence, record.
    Failing,
    HoldAfterRemote,
    RecordAfterRemote,
    /// This copy failed: waiting for the driver's detach verdict.
    Detaching,
    /// Detached: recording the range for the resync at attach.
    Tracking,
    /// Detached: sending to the peer, which alone will have it.
    SendingDetached,
    /// Detached and the peer failed it: drop the link, then fail.
    FailingDetached,
    Done,
}

/// One modification on the primary.
#[derive(Debug, Clone, Copy)]
pub struct WriteOp {
    params: Params,
    fua: bool,
    stage: Stage,
    /// It was (or is being) sent to the peer.
    remote: bool,
    /// This copy's outcome, once applied.
    local: Option<Result<(), Failure>>,
    /// The client was answered already.
    answered: bool,
    /// [`Action::MarkDirty`] was issued: the activemap counts it in flight.
    marked: bool,
    /// Served through the peer alone (this copy detached): acknowledged on
    /// the peer's REPLY, never in sync.
    through_peer: bool,
    /// The change is already on its way to the peer (an [`Action::Send`]
    /// succeeded).
    sent: bool,
    /// The activemap failed it, before anything was written.
    failed_at_mark: bool,
    /// Detached, but the detachment is not durable: never acknowledged.
    unrecorded: bool,
}

impl WriteOp {
    /// A modification with FUA or not; returns the machine and its first
    /// action.
    pub fn start(params: Params, fua: bool) -> (WriteOp, Action) {
        let mut op = WriteOp {
            params,
            fua,
            stage: Stage::Marking,
            remote: params.link_up,
            local: None,
            answered: false,
            marked: false,
            through_peer: false,
            sent: false,
            failed_at_mark: false,
            unrecorded: false,
        };
        if params.detached {
            // No local copy: the peer alone, or nothing.
            if !params.link_up {
                op.remote = false;
                let fail = op.abort(Failure::Io);
                return (op, fail);
            }
            op.through_peer = true;
            op.stage = Stage::Tracking;
            return (op, Action::Track);
        }
        let first = if !params.link_up && params.peer_configured {
            op.stage = Stage::HoldBefore;
            Action::Hold { reroute: true }
        } else {
            op.mark()
        };
        (op, first)
    }

    fn mark(&mut self) -> Action {
        self.stage = Stage::Marking;
        self.marked = true;
        Action::MarkDirty {
            wait: !planted(Mutation::SkipMapFlush),
        }
    }

    fn send_or_apply(&mut self) -> Action {
        if self.remote {
            self.stage = Stage::Sending;
            let mode = self.params.mode;
            Action::Send {
                fua: self.fua && mode != Replication::Async,
                want_received: mode == Replication::Memsync,
            }
        } else {
            self.stage = Stage::Applying;
            Action::ApplyLocal
        }
    }

    fn local(&self) -> Result<(), Failure> {
        self.local.unwrap_or(Err(Failure::Io))
    }

    /// Ends it; the activemap learns whether both copies have it.
    fn complete(&mut self, in_sync: bool, reply: Result<(), Failure>) -> Action {
        self.stage = Stage::Done;
        Action::Complete {
            marked: self.marked.then_some(in_sync),
            reply: (!self.answered).then_some(reply),
        }
    }

    /// Ends it unacknowledged: nothing may claim it is on both copies.
    fn abort(&mut self, why: Failure) -> Action {
        self.complete(false, Err(why))
    }

    /// This copy failed (`local_failed`) at the current stage: ask to
    /// detach with `on_io_error detach`, else the error stands.
    fn local_failed(&mut self) -> Option<Action> {
        if !self.params.detach {
            return None;
        }
        self.stage = Stage::Detaching;
        Some(Action::Detach {
            possible: self.remote,
        })
    }

    /// Detached: the peer alone must have it before it is acknowledged.
    fn through_peer_next(&mut self) -> Action {
        if self.sent {
            self.stage = Stage::WaitReply;
            Action::AwaitReply
        } else {
            self.stage = Stage::SendingDetached;
            Action::Send {
                fua: self.fua,
                want_received: false,
            }
        }
    }

    /// What follows a local outcome `r` of a write sent to the peer (or
    /// not): the wait the mode asks for.
    fn after_apply(&mut self, r: Result<(), Failure>) -> Action {
        self.local = Some(r);
        if !self.remote {
            // Only this copy has it; in sync only without a peer.
            let in_sync = !self.params.peer_configured && r.is_ok();
            return self.complete(in_sync, r);
        }
        match self.params.mode {
            Replication::Fullsync if !planted(Mutation::AckBeforeReply) => {
                self.stage = Stage::WaitReply;
                Action::AwaitReply
            }
            Replication::Memsync => {
                self.stage = Stage::WaitReceived;
                Action::AwaitReceived
            }
            _ => {
                self.stage = Stage::Polling;
                Action::PollReply
            }
        }
    }

    /// The remote outcome is known: in sync, or degraded.
    fn remote_done(&mut self, ok: bool) -> Action {
        if self.through_peer {
            // Detached: the peer's copy is the only one. Applied there:
            // acknowledged (never in sync: this copy lacks it). Failed
            // there: nobody has it; the link goes, the write fails.
            if ok && !self.unrecorded {
                return self.complete(false, Ok(()));
            }
            if ok {
                return self.abort(Failure::Io);
            }
            self.stage = Stage::FailingDetached;
            return Action::FailLink;
        }
        if ok {
            let local = self.local();
            return self.complete(local.is_ok(), local);
        }
        self.stage = Stage::Failing;
        Action::FailLink
    }

    /// Feeds the outcome of the last action; returns the next one.
    /// An event the current stage does not expect is a driver bug; the
    /// write then ends failed and unacknowledged rather than guessing.
    pub fn step(&mut self, ev: Event) -> Action {
        use Event as E;
        use Stage as S;
        match (self.stage, ev) {
            (S::HoldBefore, E::Rerouted) => {
                self.remote = true;
                self.mark()
            }
            (S::HoldBefore, E::Fenced) => {
                self.stage = S::RecordBefore;
                Action::RecordDegraded
            }
            (S::RecordBefore, E::Recorded(true)) => self.mark(),
            (S::Marking, E::Marked(true)) => self.send_or_apply(),
            (S::Sending, E::Sent(true)) => {
                self.sent = true;
                self.stage = S::Applying;
                Action::ApplyLocal
            }
            (S::Sending, E::Sent(false)) => {
                // The link died as the change was being sent: it goes to
                // this copy alone, so the fence comes first (a link without
                // a configured peer has no fence nor degraded period).
                self.remote = false;
                if !self.params.peer_configured {
                    self.stage = S::Applying;
                    return Action::ApplyLocal;
                }
                self.stage = S::HoldAfterSend;
                Action::Hold { reroute: false }
            }
            (S::RecordBefore, E::Superseded) => {
                // Wait for the handshake's outcome; take the link if it came.
                self.stage = S::HoldBefore;
                Action::Hold { reroute: true }
            }
            (S::RecordAfterSend, E::Superseded) => {
                self.stage = S::HoldAfterSend;
                Action::Hold { reroute: true }
            }
            (S::HoldAfterSend, E::Rerouted) => {
                self.remote = true;
                self.send_or_apply()
            }
            (S::RecordAfterRemote, E::Superseded) => {
                // Applied here alone, and the counters the new handshake
                // read do not say so: its resync may overwrite it. Not
                // acknowledged.
                self.abort(Failure::Io)
            }
            (S::HoldAfterSend, E::Fenced) => {
                self.stage = S::RecordAfterSend;
                Action::RecordDegraded
            }
            (S::RecordAfterSend, E::Recorded(true)) => {
                self.stage = S::Applying;
                Action::ApplyLocal
            }
            (S::Applying, E::Applied(Err(f))) if f == Failure::Io => match self.local_failed() {
                Some(a) => a,
                None => self.after_apply(Err(f)),
            },
            (S::Applying, E::Applied(r)) => self.after_apply(r),
            (S::Detaching, E::Detached(true)) if self.remote => {
                self.through_peer = true;
                self.stage = S::Tracking;
                Action::Track
            }
            (S::Detaching, E::Detached(_)) => {
                if self.failed_at_mark {
                    // The activemap failed: nothing was written anywhere.
                    return self.abort(Failure::Io);
                }
                self.after_apply(Err(Failure::Io))
            }
            (S::Tracking, E::Tracked(true)) => self.through_peer_next(),
            (S::Tracking, E::Tracked(false)) => {
                // A crash now would leave a copy that looks current without
                // this write: acknowledge nothing. One already on its way to
                // the peer is waited for, so no reply outlives the request.
                self.unrecorded = true;
                if self.sent {
                    self.stage = S::WaitReply;
                    Action::AwaitReply
                } else {
                    self.abort(Failure::Io)
                }
            }
            (S::SendingDetached, E::Sent(true)) => {
                self.sent = true;
                self.stage = S::WaitReply;
                Action::AwaitReply
            }
            (S::SendingDetached, E::Sent(false)) => {
                // The link died: no copy has it.
                self.remote = false;
                self.abort(Failure::Io)
            }
            (S::FailingDetached, E::LinkFailed) => self.abort(Failure::Io),
            (S::WaitReceived, E::Received(true)) => {
                self.stage = S::Polling;
                Action::PollReply
            }
            (S::WaitReceived, E::Received(false)) => self.remote_done(false),
            (S::Polling, E::Polled(Some(ok))) => self.remote_done(ok),
            (S::Polling, E::Polled(None)) => {
                // Answer now; the REPLY is recorded when it comes. Counted
                // as answered from here, whatever the driver feeds next.
                self.stage = S::Answering;
                self.answered = true;
                Action::Reply(self.local())
            }
            (S::Answering, E::Answered) => {
                self.stage = S::WaitReply;
                Action::AwaitReply
            }
            (S::WaitReply, E::Replied(ok)) => self.remote_done(ok),
            (S::Failing, E::LinkFailed) => {
                self.stage = S::HoldAfterRemote;
                Action::Hold { reroute: false }
            }
            (S::HoldAfterRemote, E::Fenced) => {
                self.stage = S::RecordAfterRemote;
                Action::RecordDegraded
            }
            (S::RecordAfterRemote, E::Recorded(true)) => {
                let local = self.local();
                self.complete(false, local)
            }
            (S::Marking, E::Marked(false)) => match self.local_failed() {
                Some(a) => {
                    self.failed_at_mark = true;
                    a
                }
                None => self.abort(Failure::Io),
            },
            (S::Marking | S::RecordBefore, E::Recorded(false) | E::Marked(false)) => {
                self.abort(Failure::Io)
            }
            (S::RecordAfterSend | S::RecordAfterRemote, E::Recorded(false)) => {
                self.abort(Failure::Io)
            }
            (S::HoldBefore | S::HoldAfterSend | S::HoldAfterRemote, E::Shutdown) => {
                self.abort(Failure::Shutdown)
            }
            _ => self.abort(Failure::Shutdown),
        }
    }

    /// Whether [`Action::Complete`] was returned.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }
}

/// Degraded periods, for [`Action::RecordDegraded`]: when a write may go to
/// this copy alone, and whether it must bump `localcnt` first.
///
/// `localcnt` is bumped once per period in which this copy writes without
/// its peer, before the first such write is applied. A period begins with
/// each handshake (the hello reads the counters), and a write belongs to the
/// period it began in. Two rules, each found by the simulator:
///
/// - **A write of an older period records nothing for the current one**
///   (seed 38). With one flag reset when a link came, a write that began
///   alone and recorded just after a new link set the flag for the in-sync
///   period; after the next cut this copy wrote alone without a bump, and a
///   split-brain was later taken for a plain resync.
/// - **No write goes alone across a handshake** (seed 3273). A write that
///   began without the link but had not recorded when the hello was built
///   bumped `localcnt` after it; the handshake had decided from the older
///   counters that the peer was newer, and the resync copied the peer's
///   extent over the write, acknowledged meanwhile. Now a write may go alone
///   only in the period it began in and while no handshake is under way
///   ([`DegradedPeriods::may_go_alone`], checked together with the record,
///   under the lock the hello is read under); otherwise it waits for the
///   handshake's outcome and takes the link if one came
///   ([`Event::Superseded`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DegradedPeriods {
    current: u64,
    /// The period whose bump is durable; `None` before any.
    recorded: Option<u64>,
    handshaking: bool,
}

impl DegradedPeriods {
    /// The period a write starting now belongs to.
    pub fn current(&self) -> u64 {
        self.current
    }

    /// A handshake begins, before the hello is built from the header.
    pub fn begin_handshake(&mut self) {
        self.current += 1;
        self.handshaking = true;
    }

    /// The handshake ended: a link was installed, or the attempt failed.
    pub fn end_handshake(&mut self) {
        self.handshaking = false;
    }

    pub fn handshaking(&self) -> bool {
        self.handshaking
    }

    /// Whether a write of `period` may go to this copy alone now.
    pub fn may_go_alone(&self, period: u64) -> bool {
        !self.handshaking
            && (period == self.current
                || planted(Mutation::GoAloneAcrossHandshake)
                || planted(Mutation::RecordForCurrentPeriod))
    }

    /// Whether a write of `period` must still bump `localcnt`.
    pub fn needs_record(&self, period: u64) -> bool {
        self.recorded.is_none_or(|r| r < period)
    }

    /// The bump for `period` is durable.
    pub fn recorded(&mut self, period: u64) {
        let period = if planted(Mutation::RecordForCurrentPeriod) {
            self.current
        } else {
            period
        };
        self.recorded = Some(self.recorded.map_or(period, |r| r.max(period)));
    }
}

#[cfg(test)]
mod tests;
