//! The failover policy of one resource on one node: a pure state machine
//! with an injected monotonic clock (`now` in milliseconds). It never does
//! I/O; it returns [`Action`]s (send a request, run the `exec` script,
//! persist the witness state) that the daemon carries out and reports back.
//!
//! The rules (SPEC §5, HASTMON(8) plus what makes it safe):
//! - **Lease.** The primary heartbeats every remote each `heartbeat_interval`.
//!   A remote that grants promises, on its own clock, not to help anyone take
//!   over for `lease` from when it received the heartbeat. The primary counts
//!   its lease from when it *sent* the heartbeat and shortens it by the
//!   clock-rate drift bound ρ on both sides: `lease·(1−ρ)/(1+ρ)`. So the
//!   primary's lease ends (in real time) before any grantor's promise does.
//!   When it ends, the primary fences itself: stops the resource, becomes
//!   secondary. (hastd enforces the same deadline on its own, see
//!   `hastctl lease`.)
//! - **Takeover** (HASTMON(8)): a secondary asks for it when the primary has
//!   not heartbeated it for a whole promise AND the watchdog complained
//!   `complaint_count` times (+ `priority`) within `complaint_interval`.
//!   The watchdog grants only when its own promise to every other node has
//!   expired and the asker is not outdated, then raises the **epoch** and
//!   persists it before answering. The epoch is the fencing token hastd
//!   enforces. A node that restarts assumes it granted a promise just before:
//!   it supports no takeover for one `lease` after its start.
//! - **Outdated.** Before the primary acknowledges writes without its peer,
//!   hastd's `fence_peer` hook makes it tell the watchdog (`Outdate`); only
//!   an in-sync report for a later (epoch, seq) clears the mark. An outdated
//!   node is never granted a takeover.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::msg::{ReplyBody, RequestBody, Role, RunState};

/// Milliseconds of a monotonic clock.
pub type Ms = u64;

/// The refusal of a node that is not the watchdog (asked because the asker
/// did not know yet which remote is).
pub const NOT_WATCHDOG: &str = "not the watchdog";

/// Default bound on clock-rate drift between any two hosts: 5 %.
pub const DRIFT_PPM: u64 = 50_000;

/// Timing of one resource, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub heartbeat: Ms,
    pub lease: Ms,
    pub complaint_count: u32,
    pub complaint_interval: Ms,
    pub attempts: u32,
    pub priority: u32,
    /// Clock-rate drift bound ρ in parts per million.
    pub drift_ppm: u64,
    /// How long an exchange may take before it counts as failed.
    pub timeout: Ms,
}

impl Params {
    /// How long after *sending* a granted heartbeat the primary may act:
    /// `lease·(1−ρ)/(1+ρ)`.
    pub fn holder_lease(&self) -> Ms {
        let d = self.drift_ppm.min(500_000);
        self.lease * (1_000_000 - d) / (1_000_000 + d)
    }
}

/// The watchdog's durable state of a resource (persisted before any answer
/// that depends on it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessState {
    /// The highest epoch granted.
    pub epoch: u64,
    /// The node that holds `epoch`.
    pub primary: Option<String>,
    /// Outdated nodes, with the (epoch, seq) of the degradation that made them so.
    pub outdated: BTreeMap<String, (u64, u64)>,
}

/// What the `exec` script is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exec {
    Start,
    Stop,
    Status,
    Role(Role),
    Connect,
    Disconnect,
    Complain,
    /// Renew the storage's own lease for this many milliseconds.
    Lease(Ms),
}

impl Exec {
    /// The script's arguments.
    pub fn args(self) -> Vec<String> {
        match self {
            Exec::Start => vec!["start".into()],
            Exec::Stop => vec!["stop".into()],
            Exec::Status => vec!["status".into()],
            Exec::Role(r) => vec!["role".into(), r.as_str().into()],
            Exec::Connect => vec!["connect".into()],
            Exec::Disconnect => vec!["disconnect".into()],
            Exec::Complain => vec!["complain".into()],
            Exec::Lease(ms) => vec!["lease".into(), ms.to_string()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `req` to remote number `to`; report with [`Policy::on_reply`].
    Send { to: usize, req: RequestBody },
    /// Run the exec script; report with [`Policy::on_exec`].
    Exec(Exec),
    /// Persist [`Policy::witness`] durably before sending the reply returned
    /// with this action.
    Persist,
    /// Something an operator wants in the log.
    Log(String),
}

/// What this node knows of one remote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerView {
    pub name: Option<String>,
    pub role: Option<Role>,
    pub state: Option<RunState>,
    pub connected: bool,
    pub last_ok: Option<Ms>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    node: String,
    p: Params,
    role: Role,
    epoch: u64,
    state: RunState,
    started: Ms,
    next_heartbeat: Ms,
    peers: Vec<PeerView>,
    /// Why the last request of ours was refused, for `hastmonctl status`.
    pub last_refusal: Option<String>,
    // Primary.
    lease_until: Option<Ms>,
    status_failures: u32,
    status_running: bool,
    // Secondary.
    promise_until: Option<Ms>,
    primary_name: Option<String>,
    primary_connected: bool,
    complaints: VecDeque<Ms>,
    outdated_me: bool,
    /// The last status check of the local resource passed: it can take over.
    ready: bool,
    takeover_sent: Option<Ms>,
    /// After a refusal, the next request waits until then.
    takeover_retry_at: Ms,
    manual_takeover: bool,
    // Watchdog.
    witness: WitnessState,
    promises: BTreeMap<String, Ms>,
    round: BTreeMap<usize, (Role, RunState)>,
    round_open: bool,
    complaint_rounds: u32,
}

impl Policy {
    /// A node that starts now, in role init, with the persisted witness state.
    pub fn new(node: &str, p: Params, remotes: usize, witness: WitnessState, now: Ms) -> Policy {
        Policy {
            node: node.to_owned(),
            p,
            role: Role::Init,
            epoch: witness.epoch,
            state: RunState::Stopped,
            started: now,
            next_heartbeat: now,
            peers: vec![PeerView::default(); remotes],
            last_refusal: None,
            lease_until: None,
            status_failures: 0,
            status_running: false,
            // We may have granted a promise just before a restart: keep it.
            promise_until: Some(now + p.lease),
            primary_name: None,
            primary_connected: false,
            complaints: VecDeque::new(),
            outdated_me: false,
            ready: false,
            takeover_sent: None,
            takeover_retry_at: 0,
            manual_takeover: false,
            witness,
            promises: BTreeMap::new(),
            round: BTreeMap::new(),
            round_open: false,
            complaint_rounds: 0,
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn state(&self) -> RunState {
        self.state
    }
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    pub fn witness(&self) -> &WitnessState {
        &self.witness
    }
    pub fn peers(&self) -> &[PeerView] {
        &self.peers
    }
    pub fn attempts(&self) -> u32 {
        self.status_failures
    }
    /// Remaining lease of a primary at `now`.
    pub fn lease_left(&self, now: Ms) -> Option<Ms> {
        self.lease_until.map(|l| l.saturating_sub(now))
    }
    /// Complaints received within the window ending at `now`.
    pub fn complaints(&self, now: Ms) -> usize {
        let from = now.saturating_sub(self.p.complaint_interval);
        self.complaints.iter().filter(|&&t| t >= from).count()
    }
    /// Consecutive watchdog rounds without a running primary.
    pub fn complaint_rounds(&self) -> u32 {
        self.complaint_rounds
    }
    /// A takeover request is waiting for the watchdog's answer.
    pub fn takeover_pending(&self) -> bool {
        self.takeover_sent.is_some()
    }

    /// The primary this secondary last granted a lease to.
    pub fn primary_name(&self) -> Option<&str> {
        self.primary_name.as_deref()
    }

    /// New timing (and number of remotes) from a configuration reload; the
    /// role, epoch, leases and promises stay.
    pub fn reconfigure(&mut self, p: Params, remotes: usize) {
        self.p = p;
        self.peers.resize(remotes, PeerView::default());
    }

    /// Operator's `hastmonctl role`.
    pub fn set_role(&mut self, role: Role, now: Ms) -> Vec<Action> {
        let mut out = Vec::new();
        if role == self.role && !(role == Role::Secondary && self.takeover_sent.is_some()) {
            return out;
        }
        self.last_refusal = None;
        match role {
            Role::Primary => {
                if self.role == Role::Watchdog {
                    self.last_refusal = Some("a watchdog cannot become primary".into());
                    return out;
                }
                // Ask the witness for the next epoch; promotion happens on Granted.
                self.manual_takeover = true;
                self.request_takeover(now, &mut out);
            }
            Role::Secondary | Role::Init => {
                self.takeover_sent = None;
                self.manual_takeover = false;
                if self.role == Role::Primary {
                    self.step_down(role, "role changed by the operator", &mut out);
                } else {
                    self.role = role;
                    self.ready = false;
                    out.push(Action::Exec(Exec::Role(role)));
                }
            }
            Role::Watchdog => {
                if self.role == Role::Primary {
                    self.step_down(Role::Init, "becoming the watchdog", &mut out);
                }
                self.role = Role::Watchdog;
                // Promises made before are unknown: honour one lease.
                self.started = now;
                self.round_open = false;
                self.complaint_rounds = 0;
            }
        }
        out
    }

    /// Called every few hundred milliseconds.
    pub fn tick(&mut self, now: Ms) -> Vec<Action> {
        let mut out = Vec::new();
        match self.role {
            Role::Primary => {
                if self.lease_until.is_some_and(|l| now >= l) {
                    self.step_down(
                        Role::Secondary,
                        "lease expired: no remote renewed it",
                        &mut out,
                    );
                    return out;
                }
                if now >= self.next_heartbeat {
                    self.next_heartbeat = now + self.p.heartbeat;
                    for to in 0..self.peers.len() {
                        out.push(Action::Send {
                            to,
                            req: RequestBody::Heartbeat {
                                epoch: self.epoch,
                                state: self.state,
                            },
                        });
                    }
                    if matches!(self.state, RunState::Run | RunState::Failing)
                        && !self.status_running
                    {
                        self.status_running = true;
                        out.push(Action::Exec(Exec::Status));
                    }
                }
            }
            Role::Secondary => {
                // Check every heartbeat that the local resource could take over.
                if now >= self.next_heartbeat {
                    self.next_heartbeat = now + self.p.heartbeat;
                    if !self.status_running {
                        self.status_running = true;
                        out.push(Action::Exec(Exec::Status));
                    }
                }
                if self.primary_connected && self.promise_until.is_some_and(|p| now >= p) {
                    self.primary_connected = false;
                    out.push(Action::Exec(Exec::Disconnect));
                }
                if self
                    .takeover_sent
                    .is_some_and(|t| now >= t + self.p.timeout)
                {
                    self.takeover_sent = None;
                }
                if self.takeover_sent.is_none() && self.may_take_over(now) {
                    self.request_takeover(now, &mut out);
                }
            }
            Role::Watchdog => {
                if now >= self.next_heartbeat {
                    self.next_heartbeat = now + self.p.heartbeat;
                    if self.round_open {
                        self.close_round(&mut out);
                    }
                    self.round.clear();
                    self.round_open = true;
                    for to in 0..self.peers.len() {
                        out.push(Action::Send {
                            to,
                            req: RequestBody::Status,
                        });
                    }
                }
            }
            Role::Init => {}
        }
        out
    }

    /// The secondary's half of the takeover rule.
    fn may_take_over(&self, now: Ms) -> bool {
        let promise_over = self.promise_until.is_none_or(|p| now >= p);
        let needed = self.p.complaint_count as usize + self.p.priority as usize;
        promise_over
            && self.ready
            && !self.outdated_me
            && now >= self.takeover_retry_at
            && self.complaints(now) >= needed
    }

    fn request_takeover(&mut self, now: Ms, out: &mut Vec<Action>) {
        // From now on we support no other primary's lease.
        self.takeover_sent = Some(now);
        let manual = self.manual_takeover;
        for to in 0..self.peers.len() {
            if self.peers[to].role == Some(Role::Primary) && !manual {
                continue;
            }
            out.push(Action::Send {
                to,
                req: RequestBody::Takeover {
                    epoch_seen: self.epoch,
                    manual,
                },
            });
        }
    }

    /// The watchdog's verdict on the round that just ended.
    fn close_round(&mut self, out: &mut Vec<Action>) {
        let running = self
            .round
            .values()
            .any(|&(r, s)| r == Role::Primary && s == RunState::Run);
        if running {
            self.complaint_rounds = 0;
            return;
        }
        self.complaint_rounds += 1;
        let outdated: Vec<String> = self.witness.outdated.keys().cloned().collect();
        for (&to, &(r, _)) in &self.round {
            if r == Role::Secondary {
                out.push(Action::Send {
                    to,
                    req: RequestBody::Complain {
                        epoch: self.witness.epoch,
                        outdated: outdated.clone(),
                    },
                });
            }
        }
    }

    fn step_down(&mut self, role: Role, why: &str, out: &mut Vec<Action>) {
        out.push(Action::Log(format!(
            "stepping down from primary (epoch {}): {why}",
            self.epoch
        )));
        self.role = role;
        self.state = RunState::Stopped;
        self.ready = false;
        self.lease_until = None;
        self.status_failures = 0;
        self.takeover_sent = None;
        self.manual_takeover = false;
        // We hold no promise for anyone yet.
        self.promise_until = None;
        self.complaints.clear();
        out.push(Action::Exec(Exec::Stop));
        out.push(Action::Exec(Exec::Role(role)));
    }

    /// A request from node `from`; returns the reply and what to do. If the
    /// actions hold [`Action::Persist`], persist before replying.
    pub fn on_request(
        &mut self,
        from: &str,
        req: &RequestBody,
        now: Ms,
    ) -> (ReplyBody, Vec<Action>) {
        let mut out = Vec::new();
        let reply = match *req {
            RequestBody::Heartbeat { epoch, .. } => {
                let granted = self.grant(from, epoch, now, &mut out);
                ReplyBody::Lease {
                    granted,
                    epoch: self.known_epoch(),
                    node: self.node.clone(),
                    role: self.role,
                }
            }
            RequestBody::Status => ReplyBody::Status {
                node: self.node.clone(),
                role: self.role,
                state: self.state,
                epoch: self.known_epoch(),
            },
            RequestBody::Complain {
                epoch,
                ref outdated,
            } => {
                if self.role == Role::Secondary {
                    self.complaints.push_back(now);
                    while self.complaints.len() > 64 {
                        self.complaints.pop_front();
                    }
                    self.outdated_me = outdated.iter().any(|n| n == &self.node);
                    self.epoch = self.epoch.max(epoch);
                    out.push(Action::Exec(Exec::Complain));
                }
                ReplyBody::Ack
            }
            RequestBody::Takeover { epoch_seen, manual } => {
                self.judge_takeover(from, epoch_seen, manual, now, &mut out)
            }
            RequestBody::Outdate {
                epoch,
                ref peer,
                seq,
            } => {
                if let Some(refusal) = self.refuse_unless_primary(from, epoch) {
                    refusal
                } else {
                    let mark = self
                        .witness
                        .outdated
                        .entry(peer.clone())
                        .or_insert((epoch, seq));
                    *mark = (*mark).max((epoch, seq));
                    out.push(Action::Persist);
                    out.push(Action::Log(format!(
                        "{peer} outdated by {from} at epoch {epoch} seq {seq}"
                    )));
                    ReplyBody::Ack
                }
            }
            RequestBody::Clear {
                epoch,
                ref peer,
                seq,
            } => {
                if let Some(refusal) = self.refuse_unless_primary(from, epoch) {
                    refusal
                } else {
                    match self.witness.outdated.get(peer) {
                        Some(&mark) if (epoch, seq) >= mark => {
                            self.witness.outdated.remove(peer);
                            out.push(Action::Persist);
                            out.push(Action::Log(format!(
                                "{peer} in sync again (epoch {epoch} seq {seq})"
                            )));
                            ReplyBody::Ack
                        }
                        Some(&(e, s)) => {
                            self.refuse(&format!("{peer} was outdated later (epoch {e} seq {s})"))
                        }
                        None => ReplyBody::Ack,
                    }
                }
            }
        };
        (reply, out)
    }

    /// Outdate and clear marks are the watchdog's, and only the primary of
    /// the current epoch may set or clear them.
    fn refuse_unless_primary(&self, from: &str, epoch: u64) -> Option<ReplyBody> {
        if self.role != Role::Watchdog {
            Some(self.refuse(NOT_WATCHDOG))
        } else if self.witness.primary.as_deref() != Some(from) || epoch != self.witness.epoch {
            Some(self.refuse(&format!(
                "{from} is not the primary of epoch {}",
                self.witness.epoch
            )))
        } else {
            None
        }
    }

    fn refuse(&self, reason: &str) -> ReplyBody {
        ReplyBody::Refused {
            reason: reason.to_owned(),
            epoch: self.known_epoch(),
        }
    }

    fn known_epoch(&self) -> u64 {
        self.epoch.max(self.witness.epoch)
    }

    /// Whether to renew `from`'s lease.
    fn grant(&mut self, from: &str, epoch: u64, now: Ms, out: &mut Vec<Action>) -> bool {
        match self.role {
            Role::Watchdog => {
                let w = &mut self.witness;
                if epoch < w.epoch
                    || (epoch == w.epoch && w.primary.as_deref().is_some_and(|p| p != from))
                {
                    return false;
                }
                if epoch > w.epoch || w.primary.is_none() {
                    // We lost our state, or the primary was promoted by
                    // hand: adopt what it says.
                    w.epoch = epoch;
                    w.primary = Some(from.to_owned());
                    out.push(Action::Persist);
                }
                self.promises.insert(from.to_owned(), now + self.p.lease);
                true
            }
            Role::Secondary => {
                if epoch < self.epoch || self.takeover_sent.is_some() {
                    return false;
                }
                self.epoch = epoch;
                self.promise_until = Some(now + self.p.lease);
                self.primary_name = Some(from.to_owned());
                self.complaints.clear();
                if !self.primary_connected {
                    self.primary_connected = true;
                    out.push(Action::Exec(Exec::Connect));
                }
                true
            }
            Role::Primary => {
                if epoch > self.epoch {
                    self.step_down(
                        Role::Secondary,
                        &format!("{from} is primary in the newer epoch {epoch}"),
                        out,
                    );
                    return self.grant(from, epoch, now, out);
                }
                false
            }
            Role::Init => false,
        }
    }

    fn judge_takeover(
        &mut self,
        from: &str,
        epoch_seen: u64,
        manual: bool,
        now: Ms,
        out: &mut Vec<Action>,
    ) -> ReplyBody {
        if self.role != Role::Watchdog {
            return self.refuse(NOT_WATCHDOG);
        }
        if let Some(&(e, s)) = self.witness.outdated.get(from) {
            return self.refuse(&format!("{from} is outdated (epoch {e} seq {s})"));
        }
        if now < self.started + self.p.lease {
            return self.refuse("watchdog started less than a lease ago");
        }
        if let Some((n, _)) = self
            .promises
            .iter()
            .find(|&(n, &until)| n != from && now < until)
        {
            return self.refuse(&format!("{n} holds a lease"));
        }
        if !manual && self.complaint_rounds < self.p.complaint_count {
            return self.refuse("no complaints: a primary is running");
        }
        let epoch = self.witness.epoch.max(epoch_seen) + 1;
        self.witness.epoch = epoch;
        self.witness.primary = Some(from.to_owned());
        self.promises.insert(from.to_owned(), now + self.p.lease);
        self.complaint_rounds = 0;
        out.push(Action::Persist);
        out.push(Action::Log(format!(
            "takeover by {from} granted: epoch {epoch}"
        )));
        ReplyBody::Granted { epoch }
    }

    /// The answer to (or failure of) a request sent at `sent_at` to remote `to`.
    pub fn on_reply(
        &mut self,
        to: usize,
        req: &RequestBody,
        reply: Option<&ReplyBody>,
        sent_at: Ms,
        now: Ms,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        if let Some(peer) = self.peers.get_mut(to) {
            peer.connected = reply.is_some();
            if reply.is_some() {
                peer.last_ok = Some(now);
            }
        }
        let Some(reply) = reply else { return out };
        match (req, reply) {
            (
                RequestBody::Heartbeat { epoch, .. },
                ReplyBody::Lease {
                    granted,
                    epoch: theirs,
                    node,
                    role,
                },
            ) => {
                if let Some(peer) = self.peers.get_mut(to) {
                    peer.name = Some(node.clone());
                    peer.role = Some(*role);
                }
                if self.role != Role::Primary || *epoch != self.epoch {
                    return out;
                }
                if *granted {
                    let until = sent_at + self.p.holder_lease();
                    if self.lease_until.is_none_or(|l| until > l) {
                        self.lease_until = Some(until);
                        out.push(Action::Exec(Exec::Lease(until.saturating_sub(now))));
                    }
                } else if *theirs > self.epoch {
                    self.step_down(
                        Role::Secondary,
                        &format!("a remote knows the newer epoch {theirs}"),
                        &mut out,
                    );
                }
            }
            (
                RequestBody::Status,
                ReplyBody::Status {
                    node,
                    role,
                    state,
                    epoch,
                },
            ) => {
                if let Some(peer) = self.peers.get_mut(to) {
                    peer.name = Some(node.clone());
                    peer.role = Some(*role);
                    peer.state = Some(*state);
                }
                self.epoch = self.epoch.max(*epoch);
                if self.role == Role::Watchdog && self.round_open {
                    self.round.insert(to, (*role, *state));
                }
            }
            (RequestBody::Takeover { .. }, ReplyBody::Granted { epoch }) => {
                if self.takeover_sent.is_none() || self.role == Role::Primary {
                    return out;
                }
                self.takeover_sent = None;
                self.manual_takeover = false;
                // Only the watchdog grants: now we know which remote it is.
                if let Some(peer) = self.peers.get_mut(to) {
                    peer.role = Some(Role::Watchdog);
                }
                self.role = Role::Primary;
                self.epoch = *epoch;
                self.state = RunState::Starting;
                self.status_failures = 0;
                self.lease_until = Some(sent_at + self.p.holder_lease());
                self.next_heartbeat = now;
                self.promise_until = None;
                out.push(Action::Log(format!(
                    "taking over as primary in epoch {epoch}"
                )));
                out.push(Action::Exec(Exec::Role(Role::Primary)));
                out.push(Action::Exec(Exec::Start));
            }
            (RequestBody::Takeover { .. }, ReplyBody::Refused { reason, epoch }) => {
                self.epoch = self.epoch.max(*epoch);
                if reason != NOT_WATCHDOG {
                    if let Some(peer) = self.peers.get_mut(to) {
                        peer.role = Some(Role::Watchdog);
                    }
                    self.last_refusal = Some(reason.clone());
                    // An operator's request is answered: it is over. A
                    // secondary's own request is retried on later complaints.
                    self.takeover_sent = None;
                    self.manual_takeover = false;
                    self.takeover_retry_at = now + self.p.heartbeat;
                }
            }
            _ => {}
        }
        out
    }

    /// The exec script finished (`ok` = exit 0).
    pub fn on_exec(&mut self, what: Exec, ok: bool) -> Vec<Action> {
        let mut out = Vec::new();
        if self.role != Role::Primary {
            if what == Exec::Status {
                self.status_running = false;
                self.ready = ok && self.role == Role::Secondary;
            }
            return out;
        }
        match what {
            Exec::Role(Role::Primary) if !ok => {
                self.step_down(
                    Role::Secondary,
                    "the exec script could not promote",
                    &mut out,
                );
            }
            Exec::Start | Exec::Status => {
                if what == Exec::Status {
                    self.status_running = false;
                }
                if ok {
                    self.status_failures = 0;
                    if self.state != RunState::Stopped {
                        self.state = RunState::Run;
                    }
                } else {
                    self.status_failures += 1;
                    self.state = RunState::Failing;
                    if self.status_failures >= self.p.attempts {
                        self.step_down(
                            Role::Secondary,
                            &format!("the resource failed {} checks", self.status_failures),
                            &mut out,
                        );
                    }
                }
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests;
