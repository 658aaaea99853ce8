//! The book of an endpoint: every request a local client sent that no
//! primary has answered yet, in the order it arrived. Pure: the endpoint's
//! driver owns the sockets and the clock and asks the book what to send.
//!
//! A request is answered to the client only when the primary it was sent to
//! answers it; until then it stays here, with the session (one NBD
//! connection to one primary) it was last sent on. The rules:
//!
//! - **Forward.** While a session is attached and no replay is under way, a
//!   new request is sent at once ([`Dispatch::Send`]).
//! - **Hold.** With no session, or while a replay is under way, it waits
//!   ([`Dispatch::Hold`]).
//! - **Lose.** When a session is lost (closed, refused with ESHUTDOWN, or
//!   abandoned for a newer primary), every request sent on it becomes unsent
//!   again ([`Book::lost`]); answers that still arrive from it are ignored
//!   ([`Book::answered`] returns `None`), so a late answer of an old primary
//!   is never taken for the new one's.
//! - **Replay.** A newly attached session gets every unsent request in the
//!   original order ([`Book::dispatch`]): the lost session's first, then
//!   those held meanwhile, which arrived later. A FLUSH is replayed only
//!   once every write before it has been answered by the new session: a
//!   FLUSH answered by a primary then covers writes that primary itself
//!   acknowledged. Requests after it wait with it, so the order holds.
//! - **Give up.** After `ctrl_loss_tmo` with no primary the driver takes
//!   every request out ([`Book::drain`]) and fails it with EIO.
//!
//! Slots are kept in a ring indexed by sequence number (sequence numbers
//! are dense), so the forward path neither searches nor allocates in steady
//! state.

use std::collections::VecDeque;
use std::time::Instant;

/// A request's place in arrival order; also its cookie on the wire.
pub type Seq = u64;
/// One NBD connection to one primary, numbered by the driver.
pub type Session = u64;

/// What a request does, as far as ordering cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    /// WRITE, TRIM and WRITE_ZEROES: they change the data.
    Write,
    Flush,
    /// CACHE (a hint): neither changes nor orders anything.
    Other,
}

/// What the driver does with a request just admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// Send it now on this session.
    Send(Session),
    /// Keep it until a session is attached and the replay is done.
    Hold,
}

#[derive(Debug)]
struct Slot<T> {
    kind: Kind,
    /// The session it was last sent on and not yet lost; `None`: unsent.
    on: Option<Session>,
    /// When it was admitted, or last sent.
    since: Instant,
    /// Sent to an earlier session before (counts as replayed when sent).
    resent: bool,
    item: T,
}

/// Counters for status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests admitted with no session to send to.
    pub held: u64,
    /// Requests sent again after their session was lost.
    pub replayed: u64,
}

/// The pending requests of one endpoint; `T` is the driver's (request and
/// the client's waiting completion).
#[derive(Debug)]
pub struct Book<T> {
    /// Sequence number of `slots[0]`.
    base: Seq,
    slots: VecDeque<Option<Slot<T>>>,
    /// Requests in the book.
    live: usize,
    session: Option<Session>,
    /// Unsent requests remain for the attached session: new requests hold.
    replaying: bool,
    counts: Counts,
}

impl<T> Default for Book<T> {
    fn default() -> Self {
        Book {
            base: 1,
            slots: VecDeque::new(),
            live: 0,
            session: None,
            replaying: false,
            counts: Counts::default(),
        }
    }
}

impl<T> Book<T> {
    pub fn new() -> Book<T> {
        Book::default()
    }

    /// Requests not yet answered.
    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// The session new requests go to, if any.
    pub fn session(&self) -> Option<Session> {
        self.session
    }

    /// A replay is under way on the attached session.
    pub fn replaying(&self) -> bool {
        self.replaying
    }

    /// Take a client's request in; the driver sends it if told to.
    pub fn admit(&mut self, kind: Kind, item: T, now: Instant) -> (Seq, Dispatch) {
        let seq = self.base + self.slots.len() as u64;
        let dispatch = match self.session {
            Some(s) if !self.replaying => Dispatch::Send(s),
            _ => {
                self.counts.held += 1;
                Dispatch::Hold
            }
        };
        let on = match dispatch {
            Dispatch::Send(s) => Some(s),
            Dispatch::Hold => None,
        };
        self.slots.push_back(Some(Slot {
            kind,
            on,
            since: now,
            resent: false,
            item,
        }));
        self.live += 1;
        (seq, dispatch)
    }

    fn slot(&mut self, seq: Seq) -> Option<&mut Option<Slot<T>>> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots.get_mut(i)
    }

    /// The item of a request (to encode it for sending).
    pub fn get(&self, seq: Seq) -> Option<&T> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots.get(i)?.as_ref().map(|s| &s.item)
    }

    /// Mutable access to a request's item (a READ's buffer).
    pub fn get_mut(&mut self, seq: Seq) -> Option<&mut T> {
        self.slot(seq)?.as_mut().map(|s| &mut s.item)
    }

    /// `session` answered `seq`: the request leaves the book and its item
    /// is handed back to be completed. `None` when the answer is not the
    /// one awaited: a late answer of a lost session, or a cookie never
    /// sent on it (a lying server); the driver ignores the former and
    /// drops the session for the latter.
    pub fn answered(&mut self, session: Session, seq: Seq) -> Option<T> {
        let slot = self.slot(seq)?;
        if slot.as_ref()?.on != Some(session) {
            return None;
        }
        let item = slot.take()?.item;
        self.live -= 1;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        Some(item)
    }

    /// Which session `seq` is out on, if any.
    pub fn sent_on(&self, seq: Seq) -> Option<Session> {
        let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        self.slots.get(i)?.as_ref()?.on
    }

    /// `session` is gone: what was sent on it is unsent again. Returns how
    /// many requests it had out.
    pub fn lost(&mut self, session: Session) -> usize {
        if self.session == Some(session) {
            self.session = None;
            self.replaying = false;
        }
        let mut n = 0;
        for slot in self.slots.iter_mut().flatten() {
            if slot.on == Some(session) {
                slot.on = None;
                slot.resent = true;
                n += 1;
            }
        }
        n
    }

    /// Send to `session` from now on. Unsent requests are replayed through
    /// [`Book::dispatch`] before new ones are forwarded.
    pub fn attach(&mut self, session: Session) {
        self.session = Some(session);
        self.replaying = self.slots.iter().flatten().any(|s| s.on.is_none());
    }

    /// Hand the driver, in order, each unsent request that may go to the
    /// attached session now (`send(seq, item)`), marking it sent. Call after
    /// [`Book::attach`] and after every answer while [`Book::replaying`].
    /// Stops at a FLUSH that still has unanswered writes before it; the
    /// replay ends when nothing is left unsent.
    pub fn dispatch(&mut self, now: Instant, mut send: impl FnMut(Seq, &T)) {
        let Some(session) = self.session else {
            return;
        };
        if !self.replaying {
            return;
        }
        let mut writes_before = false;
        let mut blocked = false;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            let Some(slot) = slot else { continue };
            if slot.on.is_none() {
                if slot.kind == Kind::Flush && writes_before {
                    blocked = true;
                    break;
                }
                slot.on = Some(session);
                slot.since = now;
                if slot.resent {
                    self.counts.replayed += 1;
                }
                send(self.base + i as u64, &slot.item);
            }
            if slot.kind == Kind::Write {
                writes_before = true;
            }
        }
        if !blocked {
            self.replaying = false;
        }
    }

    /// When the oldest request still out on the attached session was sent
    /// (the driver's deadline for looking for a newer primary).
    pub fn oldest_out(&self) -> Option<Instant> {
        let session = self.session?;
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.on == Some(session))
            .map(|s| s.since)
            .min()
    }

    /// Take every request out (to fail them): `ctrl_loss_tmo` passed, or
    /// the endpoint is being dropped.
    pub fn drain(&mut self) -> Vec<T> {
        self.base += self.slots.len() as u64;
        let items: Vec<T> = self.slots.drain(..).flatten().map(|s| s.item).collect();
        self.live = 0;
        self.replaying = false;
        items
    }

    /// Take out the unsent requests whose item `dead` says nobody waits
    /// for any more (their client went away while they were held).
    pub fn forget_unsent(&mut self, mut dead: impl FnMut(&T) -> bool) -> usize {
        let mut n = 0;
        for slot in self.slots.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|s| s.on.is_none() && dead(&s.item))
            {
                *slot = None;
                n += 1;
            }
        }
        self.live -= n;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests;
