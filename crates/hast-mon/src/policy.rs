//! The failover policy of one resource on one node: a pure state machine
//! with an injected monotonic clock (`now` in milliseconds). It never does
//! I/O; it returns [`Action`]s (send a request, run the `exec` script,
//! persist the witness state) that the daemon carries out and reports back.
//!
//! The rules (docs/overview.md §5, HASTMON(8) plus what makes it safe):
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
//! - **Vouching.** A primary heartbeats only while its storage answers: the
//!   status check runs every `check_interval` and must answer within
//!   `check_deadline`; once no check has passed for longer than both, the
//!   primary reports `failing` and stops heartbeating. A hung hastd (SIGSTOP,
//!   D state on a dying disk, livelock) is then replaced as soon as the
//!   promises it already got run out — never sooner (hastd still fences
//!   itself at its own lease deadline).
//! - **Adoption.** Every node reports the role and epoch its storage holds;
//!   the watchdog grants above every epoch it has seen and does not complain
//!   while a node's storage is primary, so a pair run by hand can be put
//!   under hastmon without a takeover.
//! - **Outdated.** Before the primary acknowledges writes without its peer,
//!   hastd's `fence_peer` hook makes it tell the watchdog (`Outdate`); only
//!   an in-sync report for a later (epoch, seq) clears the mark. An outdated
//!   node is never granted a takeover. Every status request of the watchdog
//!   lists the outdated nodes, so a node knows (and shows) that it is one
//!   while a primary runs, and when it no longer is.

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
    /// How often a primary checks its storage (the status check).
    pub check_interval: Ms,
    /// A check not answered by then has failed (the daemon bounds it).
    pub check_deadline: Ms,
    /// Checks are cheap and tell the storage's role and epoch in any role
    /// (in-process hastd): run them also in init, to learn a running pair.
    pub probe_storage: bool,
}

impl Params {
    /// Failed checks in a row after which a primary gives up: `attempts`
    /// heartbeats' worth of checks.
    fn checks_max(&self) -> u32 {
        let per_heartbeat = (self.heartbeat / self.check_interval.max(1)).max(1);
        self.attempts
            .saturating_mul(u32::try_from(per_heartbeat).unwrap_or(u32::MAX))
    }

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
    /// Renew the storage's own lease until this time of the policy's clock
    /// (the daemon passes what is left when it runs, and hastd clamps to
    /// the absolute deadline, so a late renewal never extends the lease).
    Lease(Ms),
    /// The watchdog holds this node outdated: mark the storage's copy so
    /// (`hastctl outdate`), so that it refuses a promotion by itself and
    /// its own status says so. Run when the mark appears; a script that
    /// does not know the action changes nothing but a warning.
    Outdate,
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
            Exec::Lease(until) => vec!["lease".into(), until.to_string()],
            Exec::Outdate => vec!["outdate".into()],
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
    /// Why the last request of ours was refused, for `hastmonctl status`;
    /// cleared by the next role command, a grant, or the watchdog clearing
    /// our outdated mark (the refusal's reason and epoch are then history).
    pub last_refusal: Option<String>,
    // Storage checks (every role but the watchdog).
    /// When the running check started.
    check_started: Option<Ms>,
    next_check: Ms,
    /// When the last check that passed started.
    last_check_ok: Option<Ms>,
    /// The role and epoch the storage reported at the last check.
    storage: Option<(Role, u64)>,
    /// The watchdog's node name, once known (from its requests or grant).
    watchdog_name: Option<String>,
    // Primary.
    lease_until: Option<Ms>,
    status_failures: u32,
    // Secondary.
    promise_until: Option<Ms>,
    primary_name: Option<String>,
    primary_connected: bool,
    complaints: VecDeque<Ms>,
    /// The watchdog holds this node's copy outdated (as of its last status
    /// request or complaint).
    outdated_me: bool,
    /// The last status check of the local resource passed: it can take over.
    ready: bool,
    takeover_sent: Option<Ms>,
    /// After a refusal, the next request waits until then.
    takeover_retry_at: Ms,
    manual_takeover: bool,
    /// An operator's takeover is retried after temporary refusals until then.
    manual_until: Ms,
    // Watchdog.
    witness: WitnessState,
    promises: BTreeMap<String, Ms>,
    /// The round's answers: (role, state, storage role) per remote; `None`
    /// for a remote that did not answer.
    round: BTreeMap<usize, Option<(Role, RunState, Option<Role>)>>,
    round_open: bool,
    round_started: Ms,
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
            check_started: None,
            next_check: now,
            last_check_ok: None,
            storage: None,
            watchdog_name: None,
            lease_until: None,
            status_failures: 0,
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
            manual_until: 0,
            witness,
            promises: BTreeMap::new(),
            round: BTreeMap::new(),
            round_open: false,
            round_started: 0,
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
    /// A takeover request is waiting for the watchdog's answer, or an
    /// operator's is retried after a temporary refusal.
    /// Whether the watchdog, when it last said, held this copy outdated.
    pub fn outdated(&self) -> bool {
        self.outdated_me
    }

    pub fn takeover_pending(&self) -> bool {
        self.takeover_sent.is_some() || self.manual_takeover
    }

    /// The role and epoch the storage reported at its last check.
    pub fn storage(&self) -> Option<(Role, u64)> {
        self.storage
    }

    /// The other data node of a resource whose nodes are `nodes`: not us,
    /// not the watchdog. `None` while a third node could be either.
    pub fn data_peer<'a>(&self, nodes: &'a [String]) -> Option<&'a str> {
        let watchdogs: Vec<&str> = self
            .peers
            .iter()
            .filter(|p| p.role == Some(Role::Watchdog))
            .filter_map(|p| p.name.as_deref())
            .chain(self.watchdog_name.as_deref())
            .collect();
        if watchdogs.is_empty() && nodes.len() > 2 {
            return None;
        }
        nodes
            .iter()
            .map(String::as_str)
            .find(|n| *n != self.node && !watchdogs.contains(n))
    }

    /// What the storage reported at the check that is about to be passed
    /// to [`Policy::on_exec`]: its role and epoch. A node learns the epochs
    /// a pair run by hand already holds, and says so in every reply.
    pub fn observe_storage(&mut self, role: Role, epoch: u64) {
        self.storage = Some((role, epoch));
    }

    /// The primary this secondary last granted a lease to.
    pub fn primary_name(&self) -> Option<&str> {
        self.primary_name.as_deref()
    }

    /// New timing (and number of remotes) from a configuration reload; the
    /// role, epoch, leases and promises stay.
    pub fn params(&self) -> &Params {
        &self.p
    }

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
                // Ask the witness for the next epoch; promotion happens on
                // Granted. Temporary refusals are retried as long as
                // `hastmonctl role primary` waits for the answer.
                self.manual_takeover = true;
                self.manual_until = now + MANUAL_WAIT;
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
                self.check_started = None;
            }
        }
        out
    }

    /// Called every few hundred milliseconds.
    pub fn tick(&mut self, now: Ms) -> Vec<Action> {
        let mut out = Vec::new();
        if self.role != Role::Watchdog {
            self.manual_retry(now, &mut out);
        }
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
                let checking = matches!(self.state, RunState::Run | RunState::Failing);
                if checking {
                    self.check(now, self.p.check_interval, &mut out);
                }
                // Vouch for the storage only while it answers: a check that
                // passed must have started within the last interval plus its
                // deadline (or the start, which is a check, is under way).
                let vouching = self.state == RunState::Starting
                    || self
                        .last_check_ok
                        .is_some_and(|t| now <= t + self.p.check_interval + self.p.check_deadline);
                if checking && !vouching && self.state == RunState::Run {
                    self.state = RunState::Failing;
                    out.push(Action::Log(format!(
                        "the storage has not answered a check for {} ms: no longer vouching for it (heartbeats stop; the lease runs out)",
                        now.saturating_sub(self.last_check_ok.unwrap_or(now))
                    )));
                }
                if now >= self.next_heartbeat && vouching {
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
                }
            }
            Role::Secondary => {
                // Check every heartbeat that the local resource could take over.
                self.check(now, self.p.heartbeat, &mut out);
                if self.primary_connected && self.promise_until.is_some_and(|p| now >= p) {
                    self.primary_connected = false;
                    out.push(Action::Exec(Exec::Disconnect));
                }
                if self.takeover_sent.is_none() && !self.manual_takeover && self.may_take_over(now)
                {
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
                    self.round_started = now;
                    // Each node learns from it whether it is outdated.
                    let outdated = self.witness.outdated.keys().cloned().collect();
                    let req = RequestBody::Status {
                        outdated: Some(outdated),
                    };
                    for to in 0..self.peers.len() {
                        out.push(Action::Send {
                            to,
                            req: req.clone(),
                        });
                    }
                }
            }
            Role::Init => {
                if self.p.probe_storage {
                    self.check(now, self.p.heartbeat, &mut out);
                }
            }
        }
        out
    }

    /// Starts a status check every `every` unless one is running.
    fn check(&mut self, now: Ms, every: Ms, out: &mut Vec<Action>) {
        if now >= self.next_check && self.check_started.is_none() {
            self.next_check = now + every;
            self.check_started = Some(now);
            out.push(Action::Exec(Exec::Status));
        }
    }

    /// A takeover request that got no answer is over; an operator's is
    /// sent again while its time lasts.
    fn manual_retry(&mut self, now: Ms, out: &mut Vec<Action>) {
        if self
            .takeover_sent
            .is_some_and(|t| now >= t + self.p.timeout)
        {
            self.takeover_sent = None;
            if self.manual_takeover {
                self.takeover_retry_at = now;
            }
        }
        if !self.manual_takeover || self.takeover_sent.is_some() || now < self.takeover_retry_at {
            return;
        }
        if now >= self.manual_until {
            self.manual_takeover = false;
            if self.last_refusal.is_none() {
                self.last_refusal = Some("no answer from the watchdog".into());
            }
            return;
        }
        self.request_takeover(now, out);
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
                    epoch_seen: self.known_epoch(),
                    manual,
                },
            });
        }
    }

    /// The watchdog's verdict on the round that just ended.
    fn close_round(&mut self, out: &mut Vec<Action>) {
        self.round_open = false;
        // A primary that runs, or a node whose storage is primary while
        // hastmon does not manage it yet (a pair run by hand, being
        // adopted): no complaint, so no secondary takes over from it.
        let running = self.round.values().flatten().any(|&(r, s, storage)| {
            (r == Role::Primary && s == RunState::Run)
                || (r == Role::Init && storage == Some(Role::Primary))
        });
        if running {
            self.complaint_rounds = 0;
            return;
        }
        self.complaint_rounds += 1;
        let outdated: Vec<String> = self.witness.outdated.keys().cloned().collect();
        for (&to, answer) in &self.round {
            if matches!(answer, Some((Role::Secondary, _, _))) {
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
            RequestBody::Status { ref outdated } => {
                // Only the watchdog asks.
                self.watchdog_name = Some(from.to_owned());
                if let Some(list) = outdated {
                    if self.role != Role::Watchdog {
                        self.learn_outdated(list, &mut out);
                    }
                }
                ReplyBody::Status {
                    node: self.node.clone(),
                    role: self.role,
                    state: self.state,
                    epoch: self.known_epoch(),
                    storage: self.storage.map(|(r, _)| r),
                }
            }
            RequestBody::Complain {
                epoch,
                ref outdated,
            } => {
                self.watchdog_name = Some(from.to_owned());
                if self.role == Role::Secondary {
                    self.complaints.push_back(now);
                    while self.complaints.len() > 64 {
                        self.complaints.pop_front();
                    }
                    self.learn_outdated(outdated, &mut out);
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

    /// The watchdog's list of outdated nodes: whether we are one. When the
    /// mark appears on a node that holds a copy (not primary), the storage
    /// is told too ([`Exec::Outdate`]): its status then says so and it
    /// refuses a promotion itself; its own resync clears it there. When our
    /// mark is cleared (the primary resynced us), a refusal we got for being
    /// outdated is history and goes with it.
    fn learn_outdated(&mut self, list: &[String], out: &mut Vec<Action>) {
        let now = list.iter().any(|n| n == &self.node);
        if now && !self.outdated_me {
            out.push(Action::Log(
                "the watchdog holds this copy outdated: no takeover until the primary has resynced it"
                    .into(),
            ));
            if matches!(self.role, Role::Secondary | Role::Init) {
                out.push(Action::Exec(Exec::Outdate));
            }
        } else if !now && self.outdated_me {
            self.last_refusal = None;
            out.push(Action::Log(
                "the watchdog no longer holds this copy outdated".into(),
            ));
        }
        self.outdated_me = now;
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
            retry_ms: None,
        }
    }

    /// A refusal that may turn into a grant `retry_ms` from now.
    fn refuse_for(&self, reason: &str, retry_ms: Ms) -> ReplyBody {
        ReplyBody::Refused {
            reason: format!("{reason} (retry in {:.1} s)", retry_ms as f64 / 1000.0),
            epoch: self.known_epoch(),
            retry_ms: Some(retry_ms.max(1)),
        }
    }

    /// The highest epoch this node knows: its own, the witness's, its
    /// storage's.
    fn known_epoch(&self) -> u64 {
        self.epoch
            .max(self.witness.epoch)
            .max(self.storage.map_or(0, |(_, e)| e))
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
            return self.refuse_for(
                "watchdog started less than a lease ago",
                self.started + self.p.lease - now,
            );
        }
        if let Some((n, &until)) = self
            .promises
            .iter()
            .find(|&(n, &until)| n != from && now < until)
        {
            return self.refuse_for(&format!("{n} holds a lease"), until - now);
        }
        if !manual && self.complaint_rounds < self.p.complaint_count {
            return self.refuse("no complaints: a primary is running");
        }
        // Above every epoch seen: ours, the asker's, and every node's
        // storage (a pair switched by hand holds epochs we never granted).
        let Some(epoch) = self.known_epoch().max(epoch_seen).checked_add(1) else {
            return self.refuse("no epoch left above the one seen");
        };
        self.witness.epoch = epoch;
        self.witness.primary = Some(from.to_owned());
        self.promises.insert(from.to_owned(), now + self.p.lease);
        self.complaint_rounds = 0;
        out.push(Action::Persist);
        out.push(Action::Log(format!(
            "takeover by {from} granted: epoch {epoch}"
        )));
        ReplyBody::Granted {
            epoch,
            node: Some(self.node.clone()),
        }
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
        let mut out = self.handle_reply(to, req, reply, sent_at, now);
        // The watchdog judges a round as soon as every remote answered (or
        // failed to), not only at the next tick: a dead or failing primary
        // is complained about without waiting out the round.
        if self.role == Role::Watchdog
            && self.round_open
            && matches!(req, RequestBody::Status { .. })
            && sent_at >= self.round_started
        {
            let answer = match reply {
                Some(&ReplyBody::Status {
                    role,
                    state,
                    storage,
                    ..
                }) => Some((role, state, storage)),
                _ => None,
            };
            self.round.insert(to, answer);
            if self.round.len() >= self.peers.len() {
                self.close_round(&mut out);
            }
        }
        out
    }

    fn handle_reply(
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
                        out.push(Action::Exec(Exec::Lease(until)));
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
                RequestBody::Status { .. },
                ReplyBody::Status {
                    node,
                    role,
                    state,
                    epoch,
                    ..
                },
            ) => {
                if let Some(peer) = self.peers.get_mut(to) {
                    peer.name = Some(node.clone());
                    peer.role = Some(*role);
                    peer.state = Some(*state);
                }
                self.epoch = self.epoch.max(*epoch);
            }
            (RequestBody::Takeover { .. }, ReplyBody::Granted { epoch, node }) => {
                if self.takeover_sent.is_none() || self.role == Role::Primary {
                    return out;
                }
                self.takeover_sent = None;
                self.manual_takeover = false;
                self.last_refusal = None;
                // Only the watchdog grants: now we know which remote it is,
                // and so which node is the data peer `fence_peer` names.
                if let Some(peer) = self.peers.get_mut(to) {
                    peer.role = Some(Role::Watchdog);
                    if node.is_some() {
                        peer.name.clone_from(node);
                    }
                }
                if node.is_some() {
                    self.watchdog_name.clone_from(node);
                }
                self.role = Role::Primary;
                self.epoch = *epoch;
                self.state = RunState::Starting;
                self.status_failures = 0;
                self.last_check_ok = None;
                self.lease_until = Some(sent_at + self.p.holder_lease());
                self.next_heartbeat = now;
                self.promise_until = None;
                out.push(Action::Log(format!(
                    "taking over as primary in epoch {epoch}"
                )));
                out.push(Action::Exec(Exec::Role(Role::Primary)));
                out.push(Action::Exec(Exec::Start));
            }
            (
                RequestBody::Takeover { .. },
                ReplyBody::Refused {
                    reason,
                    epoch,
                    retry_ms,
                },
            ) => {
                self.epoch = self.epoch.max(*epoch);
                if reason != NOT_WATCHDOG {
                    if let Some(peer) = self.peers.get_mut(to) {
                        peer.role = Some(Role::Watchdog);
                    }
                    self.last_refusal = Some(reason.clone());
                    self.takeover_sent = None;
                    match retry_ms {
                        // An operator's request refused for a while only
                        // (the watchdog honours a lease): ask again then,
                        // as long as `hastmonctl role primary` waits.
                        // (A lying watchdog's huge value must not overflow.)
                        Some(ms)
                            if self.manual_takeover
                                && now.saturating_add(*ms) < self.manual_until =>
                        {
                            self.takeover_retry_at = now + ms;
                        }
                        // Otherwise an operator's request is answered: it
                        // is over. A secondary's own request is retried on
                        // later complaints.
                        _ => {
                            self.manual_takeover = false;
                            self.takeover_retry_at = now + self.p.heartbeat;
                        }
                    }
                }
            }
            _ => {}
        }
        out
    }

    /// The exec script (or the in-process storage call) finished at `now`
    /// (`ok` = exit 0).
    pub fn on_exec(&mut self, what: Exec, ok: bool, now: Ms) -> Vec<Action> {
        let mut out = Vec::new();
        let started = match what {
            Exec::Status => self.check_started.take(),
            _ => None,
        };
        if self.role != Role::Primary {
            if what == Exec::Status {
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
            // A renewal that succeeded says no more than the last check.
            Exec::Lease(_) if ok => {}
            Exec::Start | Exec::Status | Exec::Lease(_) => {
                if ok {
                    self.status_failures = 0;
                    // A check vouches from when it started; the start
                    // from when it finished.
                    self.last_check_ok = Some(started.unwrap_or(now));
                    if self.state != RunState::Stopped {
                        self.state = RunState::Run;
                    }
                } else {
                    self.status_failures += 1;
                    self.last_check_ok = None;
                    if self.state != RunState::Failing {
                        out.push(Action::Log(format!(
                            "storage check failed ({}): no longer vouching for it",
                            what.args().join(" ")
                        )));
                    }
                    self.state = RunState::Failing;
                    if self.status_failures >= self.p.checks_max() {
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

/// How long an operator's `role primary` is retried after temporary
/// refusals (`hastmonctl` waits as long for the answer).
pub const MANUAL_WAIT: Ms = 15_000;

#[cfg(test)]
mod tests;
