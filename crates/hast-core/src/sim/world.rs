//! The simulated world: two nodes, one link, clients, a cluster manager, and
//! the checker. One [`World::step`] moves one runnable thing, chosen by the
//! seed.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use hast_conf::Replication;
use hast_meta::{ActiveMap, Header, Role};
use hast_repl::{Decision, Direction, Hello, HelloStatus};

use super::disk::{SimDisk, SECTOR};
use super::rng::Rng;
use crate::barrier::{may_clear, PeerCopy};
use crate::handshake::{hello_of, SyncDone};
use crate::secondary::{self, Adopt, Order};
use crate::write::{Action, DegradedPeriods, Event, Failure as WFail, Params, WriteOp};

mod script;
pub use script::{script, Move};

const EXTENT: u32 = 4096;
const EXTENTS: u64 = 16;
const DATASIZE: u64 = EXTENT as u64 * EXTENTS;
const SECTORS: usize = (DATASIZE / SECTOR) as usize;
const PER_EXTENT: usize = (EXTENT as u64 / SECTOR) as usize;
const KEEPDIRTY: u32 = 3;
/// Client requests in flight at most.
const CLIENT_DEPTH: usize = 6;
/// Events kept for a failing seed's replay.
const TRACE: usize = 60;

/// One run's settings.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub seed: u64,
    pub steps: u64,
    /// Print every event to stderr as it happens (a replay's full story).
    pub verbose: bool,
    /// The kinds of fault the run may inject.
    pub faults: Faults,
}

impl Config {
    /// The replay `HAST_SIM_SEED` asks for (with `HAST_SIM_FAULTS` and
    /// `HAST_SIM_STEPS` when set), verbose; `None` without it.
    pub fn from_env(steps: u64) -> Result<Option<Config>, String> {
        let var = |name: &str| std::env::var(name).ok();
        let Some(seed) = var("HAST_SIM_SEED") else {
            return Ok(None);
        };
        let seed = seed
            .parse()
            .map_err(|e| format!("HAST_SIM_SEED={seed}: {e}"))?;
        let steps = match var("HAST_SIM_STEPS") {
            Some(s) => s.parse().map_err(|e| format!("HAST_SIM_STEPS={s}: {e}"))?,
            None => steps,
        };
        let faults = match var("HAST_SIM_FAULTS") {
            Some(f) => Faults::parse(&f).map_err(|e| format!("HAST_SIM_FAULTS: {e}"))?,
            None => Faults::ALL,
        };
        Ok(Some(Config {
            seed,
            steps,
            verbose: true,
            faults,
        }))
    }

    /// Every fault, not verbose.
    pub fn new(seed: u64, steps: u64) -> Config {
        Config {
            seed,
            steps,
            verbose: false,
            faults: Faults::ALL,
        }
    }
}

/// Kinds of fault, as a set; a replay names the ones it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults(u8);

impl Faults {
    pub const CRASH: Faults = Faults(1);
    pub const CUT: Faults = Faults(2);
    pub const SWITCHOVER: Faults = Faults(4);
    pub const OPERATOR: Faults = Faults(8);
    pub const ALL: Faults = Faults(15);
    const NAMES: [(Faults, &'static str); 4] = [
        (Faults::CRASH, "crash"),
        (Faults::CUT, "cut"),
        (Faults::SWITCHOVER, "switchover"),
        (Faults::OPERATOR, "operator"),
    ];

    pub fn has(self, f: Faults) -> bool {
        self.0 & f.0 != 0
    }

    pub fn without(self, f: Faults) -> Faults {
        Faults(self.0 & !f.0)
    }

    /// `crash,cut,…` (as `HAST_SIM_FAULTS` takes it); `none` for none.
    pub fn parse(s: &str) -> Result<Faults, String> {
        let mut out = Faults(0);
        for word in s
            .split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty() && *w != "none")
        {
            let (f, _) = Faults::NAMES
                .iter()
                .find(|(_, n)| *n == word)
                .ok_or(format!(
                    "unknown fault {word:?} (crash, cut, switchover, operator)"
                ))?;
            out = Faults(out.0 | f.0);
        }
        Ok(out)
    }
}

impl std::fmt::Display for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = Faults::NAMES
            .iter()
            .filter(|(k, _)| self.has(*k))
            .map(|(_, n)| *n)
            .collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub steps: u64,
    /// Steps times the nodes that were up: the simulated work.
    pub node_steps: u64,
    pub mode: Option<Replication>,
    pub acked_writes: u64,
    pub flushes: u64,
    pub crashes: u64,
    pub failovers: u64,
    pub resyncs: u64,
    pub split_brains: u64,
    pub stale_refusals: u64,
}

/// A broken promise: the seed, the step, what, and the last events.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub step: u64,
    pub faults: Faults,
    pub what: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} failed at step {}: {}",
            self.seed, self.step, self.what
        )?;
        writeln!(
            f,
            "replay: HAST_SIM_SEED={} HAST_SIM_FAULTS={} HAST_SIM_STEPS={}; its last events:",
            self.seed, self.faults, self.step
        )?;
        for t in &self.trace {
            writeln!(f, "  {t}")?;
        }
        Ok(())
    }
}

/// Runs one seed; `Err` names the first broken promise.
pub fn run(cfg: Config) -> Result<Report, Failure> {
    let mut w = World::new(cfg.seed);
    w.verbose = cfg.verbose;
    w.faults = cfg.faults;
    for _ in 0..cfg.steps {
        if w.ended {
            break;
        }
        w.step();
        if let Err(what) = w.check() {
            return Err(w.failure(cfg, what));
        }
        if let Some(what) = w.violation.take() {
            return Err(w.failure(cfg, what));
        }
    }
    Ok(w.report)
}

/// The smallest replay of a failure this finds: fault kinds the failure
/// does not need are left out one at a time (a run without a kind draws
/// other choices, so what remains is a different run of the same seed that
/// still fails), and the run stops at the failing step.
pub fn shrink(cfg: Config, failure: Failure) -> Failure {
    let mut best = failure;
    let mut faults = cfg.faults;
    for (kind, _) in Faults::NAMES {
        if !faults.has(kind) {
            continue;
        }
        let trial = Config {
            faults: faults.without(kind),
            verbose: false,
            ..cfg
        };
        if let Err(f) = run(trial) {
            faults = trial.faults;
            best = f;
        }
    }
    best
}

/// A frame on the link.
#[derive(Debug, Clone)]
enum Frame {
    Write {
        seq: u64,
        /// The client write's id; 0 for a resync copy.
        id: u64,
        first: usize,
        values: Vec<u64>,
        fua: bool,
        want_received: bool,
    },
    Flush {
        seq: u64,
    },
    SyncDone {
        seq: u64,
        counters: (u64, u64),
        direction: Direction,
    },
    Received {
        seq: u64,
    },
    Reply {
        seq: u64,
        ok: bool,
    },
}

/// The primary's view of one request it sent.
#[derive(Debug, Clone, Copy, Default)]
struct Waiter {
    received: bool,
    done: Option<bool>,
}

/// Where the resync of a connection stands.
#[derive(Debug, Clone, PartialEq)]
enum Resync {
    Copying,
    Flushing(u64),
    Announcing(u64),
    Finished,
}

/// One live connection, primary → secondary.
#[derive(Debug)]
struct Conn {
    id: u64,
    primary: usize,
    to_sec: VecDeque<Frame>,
    to_pri: VecDeque<Frame>,
    next_seq: u64,
    adopt: Option<Adopt>,
    direction: Direction,
    peer_hello: Hello,
    resync: Resync,
    /// Resync copies in flight: seq → extent.
    copies: HashMap<u64, u64>,
}

/// A node's in-memory state while its hastd runs.
#[derive(Debug)]
struct Live {
    header: Header,
    map: ActiveMap,
    role: Role,
    degraded: DegradedPeriods,
    /// Received from the primary, not yet applied: (conn id, frame).
    queue: Vec<(u64, Frame)>,
    order: Order,
}

#[derive(Debug)]
struct Node {
    disk: SimDisk,
    slots: [Vec<u8>; 2],
    map_ondisk: Vec<u8>,
    live: Option<Live>,
    /// Per sector: the newest acknowledged write this copy must hold, and
    /// the newest a crash of it may not take.
    floor: Vec<u64>,
    dfloor: Vec<u64>,
    /// The highest epoch this copy has recorded, as the checker saw it.
    epoch_seen: u64,
    /// Acknowledged writes while no link was up, since the last sync.
    wrote_alone: bool,
    /// Bumped at every crash: what it applied before is not trusted after.
    incarnation: u64,
    /// Bumped whenever the floors are replaced (a crash, a resync into
    /// this copy): a flush's snapshot of older floors no longer applies.
    floor_gen: u64,
    /// What this copy acknowledged since the last handshake: a resync into
    /// it must keep that, whatever the source had.
    acked_since_link: Vec<u64>,
}

#[derive(Debug)]
struct WriteTask {
    node: usize,
    conn: Option<u64>,
    op: WriteOp,
    act: Action,
    first: usize,
    len: usize,
    id: u64,
    fua: bool,
    seq: Option<u64>,
    gen: Option<u64>,
    /// The link was up when it started (for the split-brain check).
    linked_at_start: bool,
    /// Its node's degraded period was durably recorded on its way.
    recorded: bool,
    /// The degraded period it started in.
    period: u64,
}

#[derive(Debug)]
enum FlushStage {
    Local,
    Remote { conn: u64, seq: u64 },
}

#[derive(Debug)]
struct FlushTask {
    node: usize,
    ticket: u64,
    stage: FlushStage,
    /// Floors when it started: what its success makes durable (with the
    /// floors' generation they were taken from).
    floor: (u64, Vec<u64>),
    peer_floor: Option<(u64, Vec<u64>)>,
}

struct World {
    rng: Rng,
    mode: Replication,
    nodes: [Node; 2],
    conn: Option<Conn>,
    next_conn: u64,
    /// Every request's waiter, by (conn, seq); outlives its connection.
    waiters: HashMap<(u64, u64), Waiter>,
    writes: Vec<WriteTask>,
    flushes: Vec<FlushTask>,
    next_id: u64,
    /// Which write ids each node has applied or received, and in which of
    /// its incarnations (for check 2 and the peer's floors).
    applied: [HashMap<u64, u64>; 2],
    received: [HashMap<u64, u64>; 2],
    /// The node most recently made primary: the manager's choice after a
    /// restart when no node is primary.
    last_primary: usize,
    /// A primary a secondary refused as stale, for the operator to demote.
    stale: Option<usize>,
    /// The secondary of the last connection was in sync when it ended.
    in_sync: bool,
    report: Report,
    trace: VecDeque<String>,
    violation: Option<String>,
    ended: bool,
    verbose: bool,
    faults: Faults,
    flapping: bool,
    slow_disk: bool,
}

fn new_header(resuid: u64) -> Header {
    Header {
        generation: 1,
        name: "r0".into(),
        datasize: DATASIZE,
        extentsize: EXTENT,
        keepdirty: KEEPDIRTY,
        data_offset: hast_meta::MAP_OFFSET + 4096,
        map_offset: hast_meta::MAP_OFFSET,
        map_size: 4096,
        resuid,
        localcnt: 0,
        remotecnt: 0,
        prevrole: Role::Init,
        epoch: 0,
        flags: 0,
    }
}

impl Node {
    fn new(resuid: u64) -> Node {
        let h = new_header(resuid);
        let slot = h.encode().to_vec();
        Node {
            disk: SimDisk::new(SECTORS),
            slots: [vec![0; slot.len()], slot],
            map_ondisk: vec![0; 4096],
            live: None,
            floor: vec![0; SECTORS],
            dfloor: vec![0; SECTORS],
            epoch_seen: 0,
            wrote_alone: false,
            incarnation: 0,
            floor_gen: 0,
            acked_since_link: vec![0; SECTORS],
        }
    }

    /// hastd starts: the header from the valid slot with the highest
    /// generation, the map from disk (its bits become needsync).
    fn start(&mut self, role: Role) -> Result<(), String> {
        let a = Header::decode(&self.slots[0]);
        let b = Header::decode(&self.slots[1]);
        let picked = hast_meta::pick_slot(a, b).map_err(|e| format!("metadata: {e}"))?;
        let h = picked.header;
        let map = ActiveMap::new(
            h.extentsize,
            h.datasize,
            h.keepdirty,
            &self.map_ondisk,
            true,
        )
        .map_err(|e| format!("activemap: {e}"))?;
        self.live = Some(Live {
            header: h,
            map,
            role,
            degraded: DegradedPeriods::default(),
            queue: Vec::new(),
            order: Order::default(),
        });
        Ok(())
    }

    fn live(&mut self) -> &mut Live {
        self.live.as_mut().expect("node is up")
    }

    /// A new header generation, atomically (see the module's
    /// simplifications).
    fn write_header(&mut self, f: impl FnOnce(&mut Header)) {
        let live = self.live.as_mut().expect("node is up");
        let mut next = live.header.clone();
        f(&mut next);
        next.generation = live.header.generation + 1;
        self.slots[(next.generation % 2) as usize] = next.encode().to_vec();
        self.epoch_seen = self.epoch_seen.max(next.epoch);
        live.header = next;
    }

    /// Runs the activemap's pending flush jobs to completion.
    fn flush_map(&mut self) {
        let live = self.live.as_mut().expect("node is up");
        while let Some(job) = live.map.begin_flush() {
            for (off, page) in &job.pages {
                let off = *off as usize;
                self.map_ondisk[off..off + page.len()].copy_from_slice(page);
            }
            live.map.flush_done(job.gen);
        }
    }

    fn is_up(&self) -> bool {
        self.live.is_some()
    }

    fn role(&self) -> Option<Role> {
        self.live.as_ref().map(|l| l.role)
    }
}

impl World {
    fn new(seed: u64) -> World {
        let mut rng = Rng::new(seed);
        let mode = match rng.below(3) {
            0 => Replication::Fullsync,
            1 => Replication::Memsync,
            _ => Replication::Async,
        };
        // One run in four has a flapping link: cut often, redialled at
        // once, so handshakes land while writes are in flight.
        let flapping = rng.one_in(4);
        // And one in four a slow local disk: a write's degraded record and
        // its local write take long, so they straddle handshakes and
        // resyncs (FoundationDB's "buggify" in spirit).
        let slow_disk = rng.one_in(4);
        let mut a = Node::new(0x5eed);
        let mut b = Node::new(0);
        a.start(Role::Primary).expect("fresh metadata");
        b.start(Role::Secondary).expect("fresh metadata");
        a.write_header(|h| h.epoch = 1);
        let mut w = World {
            rng,
            mode,
            nodes: [a, b],
            conn: None,
            next_conn: 1,
            waiters: HashMap::new(),
            writes: Vec::new(),
            flushes: Vec::new(),
            next_id: 1,
            applied: [HashMap::new(), HashMap::new()],
            received: [HashMap::new(), HashMap::new()],
            last_primary: 0,
            stale: None,
            in_sync: false,
            report: Report {
                mode: Some(mode),
                ..Report::default()
            },
            trace: VecDeque::new(),
            violation: None,
            ended: false,
            verbose: false,
            faults: Faults::ALL,
            flapping,
            slow_disk,
        };
        w.note(format!(
            "seed {seed}: mode {mode}, flapping link: {flapping}, slow disk: {slow_disk}"
        ));
        w
    }

    fn failure(&self, cfg: Config, what: String) -> Failure {
        Failure {
            seed: cfg.seed,
            step: self.report.steps,
            faults: cfg.faults,
            what,
            trace: self.trace.iter().cloned().collect(),
        }
    }

    fn note(&mut self, s: String) {
        if self.trace.len() == TRACE {
            self.trace.pop_front();
        }
        let step = self.report.steps;
        if self.verbose {
            eprintln!("{step:>6} {s}");
        }
        self.trace.push_back(format!("{step:>6} {s}"));
    }

    fn fail(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(what);
        }
    }

    fn primaries(&self) -> Vec<usize> {
        (0..2)
            .filter(|&n| self.nodes[n].role() == Some(Role::Primary))
            .collect()
    }

    fn conn_alive(&self, id: Option<u64>) -> bool {
        matches!((&self.conn, id), (Some(c), Some(id)) if c.id == id)
    }

    /// One step: pick a runnable thing by the seed and move it.
    fn step(&mut self) {
        self.report.steps += 1;
        self.report.node_steps += self.nodes.iter().filter(|n| n.is_up()).count() as u64;
        let r = self.rng.below(100);
        if self.flapping && self.faults.has(Faults::CUT) && r < 4 {
            if self.conn.is_some() {
                if self.rng.one_in(16) {
                    self.note("link cut".into());
                    self.drop_conn();
                }
            } else {
                self.connect();
            }
            return;
        }
        match r {
            0..=14 => self.client(),
            15..=39 => self.advance_write(),
            40..=44 => self.advance_flush(),
            45..=49 => self.meta_writer(),
            50..=69 => self.deliver(),
            70..=84 => self.secondary_apply(),
            85..=92 => self.resync(),
            _ => self.manager(),
        }
    }

    // ---- clients -------------------------------------------------------

    fn client(&mut self) {
        let prim = self.primaries();
        if prim.is_empty() || self.writes.len() + self.flushes.len() >= CLIENT_DEPTH {
            return;
        }
        let node = prim[self.rng.below(prim.len() as u64) as usize];
        // Clients wait while the primary is the target of a resync (see
        // the module's simplifications).
        if let Some(c) = &self.conn {
            if c.primary == node
                && c.direction == Direction::SecondaryToPrimary
                && c.resync != Resync::Finished
            {
                return;
            }
        }
        if self.rng.one_in(8) {
            self.start_flush(node);
        } else {
            self.start_write(node);
        }
    }

    fn start_write(&mut self, node: usize) {
        let len = 1 + self.rng.below(12) as usize;
        let first = self.rng.below((SECTORS - len + 1) as u64) as usize;
        let fua = self.rng.one_in(6);
        self.start_write_at(node, first, len, fua);
    }

    fn start_write_at(&mut self, node: usize, first: usize, len: usize, fua: bool) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let conn = self
            .conn
            .as_ref()
            .filter(|c| c.primary == node)
            .map(|c| c.id);
        let params = Params {
            mode: self.mode,
            peer_configured: true,
            link_up: conn.is_some(),
        };
        let (op, act) = WriteOp::start(params, fua);
        let period = self.nodes[node].live().degraded.current();
        self.note(format!(
            "client write #{id} to {node} sectors {first}+{len} fua={fua} link={}",
            conn.is_some()
        ));
        self.writes.push(WriteTask {
            node,
            conn,
            op,
            act,
            first,
            len,
            id,
            fua,
            seq: None,
            gen: None,
            linked_at_start: conn.is_some(),
            recorded: false,
            period,
        });
        id
    }

    fn start_flush(&mut self, node: usize) {
        let ticket = self.nodes[node].live().map.barrier_start();
        let floor = (self.nodes[node].floor_gen, self.nodes[node].floor.clone());
        self.note(format!("client flush on {node}"));
        self.flushes.push(FlushTask {
            node,
            ticket,
            stage: FlushStage::Local,
            floor,
            peer_floor: None,
        });
    }

    // ---- the primary's writes, driven through the core --------------------

    fn advance_write(&mut self) {
        if self.writes.is_empty() {
            return;
        }
        let i = self.rng.below(self.writes.len() as u64) as usize;
        self.advance_write_at(i);
    }

    /// Moves write `i` by one action if it can.
    fn advance_write_at(&mut self, i: usize) {
        // The range lock: overlapping writes run in arrival order, each
        // holding its range until it completes.
        let t = &self.writes[i];
        let waits = self.writes.iter().any(|o| {
            o.node == t.node
                && o.id < t.id
                && o.first < t.first + t.len
                && t.first < o.first + o.len
        });
        if waits {
            return;
        }
        let slow = matches!(
            self.writes[i].act,
            Action::RecordDegraded | Action::ApplyLocal
        );
        if slow && self.slow_disk && !self.rng.one_in(24) {
            return;
        }
        let Some(ev) = self.perform(i) else { return };
        let t = &mut self.writes[i];
        t.act = t.op.step(ev);
        if let Action::Complete { .. } = t.act {
            // Performed at once: Complete needs no waiting.
            self.perform(i);
        }
    }

    /// Performs write `i`'s current action if it can proceed; the event it
    /// produced, or `None` while it must wait.
    fn perform(&mut self, i: usize) -> Option<Event> {
        let act = self.writes[i].act;
        let (node, first, len, id) = {
            let t = &self.writes[i];
            (t.node, t.first, t.len, t.id)
        };
        let (offset, bytes) = (first as u64 * SECTOR, len as u64 * SECTOR);
        match act {
            Action::Hold { reroute } => {
                // No fence_peer configured: the fence allows at once. A
                // write that may reroute begins again in the current period
                // and takes a link that came meanwhile; one held after its
                // link failed keeps the period it began in.
                let link = self
                    .conn
                    .as_ref()
                    .filter(|c| c.primary == node)
                    .map(|c| c.id);
                let t = &mut self.writes[i];
                if reroute {
                    t.period = self.nodes[node].live.as_ref()?.degraded.current();
                    if link.is_some() && t.conn != link {
                        t.conn = link;
                        t.seq = None;
                        return Some(Event::Rerouted);
                    }
                }
                Some(Event::Fenced)
            }
            Action::RecordDegraded => {
                let period = self.writes[i].period;
                let n = &mut self.nodes[node];
                if !n.live().degraded.may_go_alone(period) {
                    return Some(Event::Superseded);
                }
                if n.live().degraded.needs_record(period) {
                    n.write_header(|h| h.localcnt += 1);
                    n.live().degraded.recorded(period);
                    let cnt = n.live().header.localcnt;
                    self.in_sync = false;
                    self.note(format!("{node} records degraded: localcnt {cnt}"));
                }
                self.writes[i].recorded = true;
                Some(Event::Recorded(true))
            }
            Action::MarkDirty { wait } => {
                let t = &mut self.writes[i];
                let map = &mut self.nodes[node].live.as_mut()?.map;
                if t.gen.is_none() {
                    let need = map.write_start(offset, bytes);
                    map.dirty_ahead(offset, bytes);
                    t.gen = Some(need.unwrap_or(0));
                }
                let gen = t.gen.unwrap_or(0);
                if wait && map.flushed_gen() < gen {
                    return None;
                }
                Some(Event::Marked(true))
            }
            Action::Send { fua, want_received } => {
                let conn_id = self.writes[i].conn;
                if !self.conn_alive(conn_id) {
                    return Some(Event::Sent(false));
                }
                let c = self.conn.as_mut().expect("alive");
                let seq = c.next_seq;
                c.next_seq += 1;
                c.to_sec.push_back(Frame::Write {
                    seq,
                    id,
                    first,
                    values: vec![id; len],
                    fua,
                    want_received,
                });
                self.waiters.insert((c.id, seq), Waiter::default());
                self.writes[i].seq = Some(seq);
                Some(Event::Sent(true))
            }
            Action::ApplyLocal => {
                let fua = self.writes[i].fua;
                let n = &mut self.nodes[node];
                n.disk.put(first, &vec![id; len]);
                if fua {
                    use crate::edge::Disk;
                    let _ = n.disk.datasync();
                }
                let inc = self.nodes[node].incarnation;
                self.applied[node].insert(id, inc);
                Some(Event::Applied(Ok(())))
            }
            Action::AwaitReceived => {
                let w = self.waiter(i);
                match w {
                    Some(w) if w.received || w.done.is_some() => {
                        Some(Event::Received(w.done != Some(false)))
                    }
                    _ if !self.conn_alive(self.writes[i].conn) => Some(Event::Received(false)),
                    _ => None,
                }
            }
            Action::PollReply => {
                let w = self.waiter(i);
                match w.and_then(|w| w.done) {
                    Some(ok) => Some(Event::Polled(Some(ok))),
                    None if !self.conn_alive(self.writes[i].conn) => {
                        Some(Event::Polled(Some(false)))
                    }
                    None => Some(Event::Polled(None)),
                }
            }
            Action::AwaitReply => {
                let w = self.waiter(i);
                match w.and_then(|w| w.done) {
                    Some(ok) => Some(Event::Replied(ok)),
                    None if !self.conn_alive(self.writes[i].conn) => Some(Event::Replied(false)),
                    None => None,
                }
            }
            Action::FailLink => {
                if self.conn_alive(self.writes[i].conn) {
                    self.note(format!("write #{id}: the peer failed it, link dropped"));
                    self.drop_conn();
                }
                Some(Event::LinkFailed)
            }
            Action::Reply(r) => {
                self.answer(i, r);
                Some(Event::Answered)
            }
            Action::Complete { marked, reply } => {
                if let Some(in_sync) = marked {
                    if let Some(l) = self.nodes[node].live.as_mut() {
                        l.map.write_done(offset, bytes, in_sync);
                    }
                }
                if let Some(r) = reply {
                    self.answer(i, r);
                }
                self.writes.swap_remove(i);
                None
            }
        }
    }

    fn waiter(&self, i: usize) -> Option<Waiter> {
        let t = &self.writes[i];
        self.waiters.get(&(t.conn?, t.seq?)).copied()
    }

    /// The client hears the outcome of write `i`; checks 2 and the floors.
    fn answer(&mut self, i: usize, r: Result<(), WFail>) {
        let t = &self.writes[i];
        let (node, id, first, len, fua) = (t.node, t.id, t.first, t.len, t.fua);
        let linked = t.linked_at_start;
        if r.is_err() {
            self.note(format!("write #{id} failed: {r:?}"));
            return;
        }
        self.report.acked_writes += 1;
        let peer = 1 - node;
        let recorded = t.recorded;
        let inc = self.nodes[peer].incarnation;
        let on_peer_ever = self.applied[peer].contains_key(&id);
        let got_peer_ever = on_peer_ever || self.received[peer].contains_key(&id);
        // The peer still has it if it has not crashed since.
        let on_peer = self.applied[peer].get(&id) == Some(&inc) && self.nodes[peer].is_up();
        let got_peer =
            on_peer || (self.received[peer].get(&id) == Some(&inc) && self.nodes[peer].is_up());
        // Check 2: the mode's promise, or this copy says it is newer.
        match self.mode {
            Replication::Fullsync if !on_peer_ever && !recorded => self.fail(format!(
                "fullsync write #{id} acknowledged before the secondary applied it, \
                 and no degraded period recorded"
            )),
            Replication::Memsync if !got_peer_ever && !recorded => self.fail(format!(
                "memsync write #{id} acknowledged before the secondary received it, \
                 and no degraded period recorded"
            )),
            _ => {}
        }
        self.note(format!(
            "write #{id} acknowledged by {node} (peer applied={on_peer} received={got_peer} recorded={recorded})"
        ));
        if !linked {
            self.nodes[node].wrote_alone = true;
        }
        for s in first..first + len {
            let n = &mut self.nodes[node];
            n.floor[s] = n.floor[s].max(id);
            n.acked_since_link[s] = n.acked_since_link[s].max(id);
            if fua {
                n.dfloor[s] = n.dfloor[s].max(id);
            }
            let p = &mut self.nodes[peer];
            let holds = match self.mode {
                Replication::Fullsync => on_peer,
                Replication::Memsync => got_peer,
                Replication::Async => false,
            };
            if holds {
                p.floor[s] = p.floor[s].max(id);
            }
            if on_peer && fua && self.mode != Replication::Async {
                p.dfloor[s] = p.dfloor[s].max(id);
            }
        }
    }

    // ---- flushes -------------------------------------------------------

    fn advance_flush(&mut self) {
        if self.flushes.is_empty() {
            return;
        }
        let i = self.rng.below(self.flushes.len() as u64) as usize;
        let node = self.flushes[i].node;
        match self.flushes[i].stage {
            FlushStage::Local => {
                use crate::edge::Disk;
                let _ = self.nodes[node].disk.datasync();
                let conn = self.conn.as_mut().filter(|c| c.primary == node);
                match conn {
                    Some(c) => {
                        let seq = c.next_seq;
                        c.next_seq += 1;
                        c.to_sec.push_back(Frame::Flush { seq });
                        let id = c.id;
                        self.waiters.insert((id, seq), Waiter::default());
                        let peer = &self.nodes[1 - node];
                        self.flushes[i].peer_floor = Some((peer.floor_gen, peer.floor.clone()));
                        self.flushes[i].stage = FlushStage::Remote { conn: id, seq };
                    }
                    None => self.finish_flush(i, PeerCopy::Behind),
                }
            }
            FlushStage::Remote { conn, seq } => {
                let done = self.waiters.get(&(conn, seq)).and_then(|w| w.done);
                match done {
                    Some(true) => self.finish_flush(i, PeerCopy::Flushed),
                    Some(false) => self.finish_flush(i, PeerCopy::Behind),
                    None if !self.conn_alive(Some(conn)) => self.finish_flush(i, PeerCopy::Behind),
                    None => {}
                }
            }
        }
    }

    fn finish_flush(&mut self, i: usize, peer: PeerCopy) {
        let t = self.flushes.swap_remove(i);
        let node = t.node;
        if let Some(l) = self.nodes[node].live.as_mut() {
            if may_clear(peer) {
                l.map.barrier_done(t.ticket);
            }
        }
        self.report.flushes += 1;
        self.note(format!("flush on {node} done, peer {peer:?}"));
        let n = &mut self.nodes[node];
        if n.floor_gen == t.floor.0 {
            raise(&mut n.dfloor, &t.floor.1);
        }
        if let (PeerCopy::Flushed, Some((gen, pf))) = (peer, t.peer_floor) {
            let p = &mut self.nodes[1 - node];
            if p.floor_gen == gen {
                raise(&mut p.dfloor, &pf);
            }
        }
    }

    fn meta_writer(&mut self) {
        let n = self.rng.below(2) as usize;
        if self.nodes[n].is_up() {
            self.nodes[n].flush_map();
        }
    }

    // ---- the link ------------------------------------------------------

    fn drop_conn(&mut self) {
        let Some(c) = self.conn.take() else { return };
        // Everything still in flight fails with the connection.
        for ((cid, _), w) in self.waiters.iter_mut() {
            if *cid == c.id && w.done.is_none() {
                w.done = Some(false);
            }
        }
        self.in_sync = c.resync == Resync::Finished;
        self.note(format!("link {} down", c.id));
    }

    fn deliver(&mut self) {
        let Some(c) = self.conn.as_mut() else { return };
        let to_sec = if c.to_sec.is_empty() {
            false
        } else if c.to_pri.is_empty() {
            true
        } else {
            self.rng.one_in(2)
        };
        let c = self.conn.as_mut().expect("checked");
        let (id, sec) = (c.id, 1 - c.primary);
        if to_sec {
            let f = c.to_sec.pop_front().expect("not empty");
            if let Some(a) = c.adopt.take() {
                self.nodes[sec].write_header(|h| a.apply(h));
            }
            let live = self.nodes[sec].live();
            match &f {
                Frame::Write {
                    seq,
                    want_received,
                    id: wid,
                    ..
                } => {
                    live.order.begin(*seq);
                    let (seq, want, wid) = (*seq, *want_received, *wid);
                    live.queue.push((id, f));
                    let inc = self.nodes[sec].incarnation;
                    if wid != 0 {
                        self.received[sec].insert(wid, inc);
                    }
                    if secondary::early_received(want, false) {
                        let c = self.conn.as_mut().expect("alive");
                        c.to_pri.push_back(Frame::Received { seq });
                    }
                }
                Frame::Flush { seq } | Frame::SyncDone { seq, .. } => {
                    live.order.begin(*seq);
                    live.queue.push((id, f));
                }
                _ => {}
            }
        } else if let Some(f) = c.to_pri.pop_front() {
            match f {
                Frame::Received { seq } => {
                    if let Some(w) = self.waiters.get_mut(&(id, seq)) {
                        w.received = true;
                    }
                }
                Frame::Reply { seq, ok } => {
                    if let Some(w) = self.waiters.get_mut(&(id, seq)) {
                        w.received = true;
                        w.done = Some(ok);
                    }
                    self.resync_reply(id, seq, ok);
                }
                _ => {}
            }
        }
    }

    /// The secondary applies one request it received, in an order its
    /// rules allow: overlapping writes in stream order, a FLUSH or
    /// SYNC_DONE after everything before it.
    fn secondary_apply(&mut self) {
        let queued: Vec<usize> = (0..2)
            .filter(|&n| {
                self.nodes[n]
                    .live
                    .as_ref()
                    .is_some_and(|l| !l.queue.is_empty())
            })
            .collect();
        if queued.is_empty() {
            return;
        }
        let n = queued[self.rng.below(queued.len() as u64) as usize];
        let len = self.nodes[n].live().queue.len();
        // The first request whose turn has come, from a random place.
        let start = self.rng.below(len as u64) as usize;
        for i in 0..len {
            if self.apply_queued(n, (start + i) % len) {
                return;
            }
        }
    }

    /// Applies node `n`'s queued request `k` if its turn has come.
    fn apply_queued(&mut self, n: usize, k: usize) -> bool {
        let Some(live) = self.nodes[n].live.as_ref() else {
            return false;
        };
        let (cid, f) = live.queue[k].clone();
        let eligible = match &f {
            Frame::Write {
                seq, first, values, ..
            } => !live.queue.iter().any(|(c2, g)| match g {
                Frame::Write {
                    seq: s2,
                    first: f2,
                    values: v2,
                    ..
                } => *c2 == cid && s2 < seq && *f2 < first + values.len() && *first < f2 + v2.len(),
                _ => false,
            }),
            Frame::Flush { seq } | Frame::SyncDone { seq, .. } => !live.order.earlier_pending(*seq),
            _ => true,
        };
        if !eligible {
            return false;
        }
        self.nodes[n].live().queue.remove(k);
        let reply = match f {
            Frame::Write {
                seq,
                id,
                first,
                values,
                fua,
                ..
            } => {
                use crate::edge::Disk;
                let node = &mut self.nodes[n];
                if id == 0 {
                    // A resync chunk: the rule every resync target follows.
                    resynced(&node.disk, first, &values);
                } else {
                    node.disk.put(first, &values);
                }
                if fua {
                    let _ = node.disk.datasync();
                }
                if id != 0 {
                    let inc = node.incarnation;
                    self.applied[n].insert(id, inc);
                }
                seq
            }
            Frame::Flush { seq } => {
                use crate::edge::Disk;
                let _ = self.nodes[n].disk.datasync();
                seq
            }
            Frame::SyncDone {
                seq,
                counters,
                direction,
            } => {
                use crate::edge::Disk;
                let node = &mut self.nodes[n];
                let _ = node.disk.datasync();
                node.write_header(|h| secondary::sync_done(h, counters.0, counters.1));
                // The copies mirror each other, both durable (the final
                // barrier came first): the target's floors are the source's,
                // and neither has anything the other has not seen.
                let (src, dst) = match direction {
                    Direction::PrimaryToSecondary => (1 - n, n),
                    Direction::SecondaryToPrimary => (n, 1 - n),
                };
                let (f, d) = (
                    self.nodes[src].floor.clone(),
                    self.nodes[src].dfloor.clone(),
                );
                let target = &mut self.nodes[dst];
                target.floor = f;
                target.dfloor = d;
                target.floor_gen += 1;
                let since = target.acked_since_link.clone();
                raise(&mut target.floor, &since);
                self.nodes[0].wrote_alone = false;
                self.nodes[1].wrote_alone = false;
                let node = &mut self.nodes[n];
                let l = node.live();
                let stale: Vec<u64> = l.map.needsync_extents().collect();
                for e in stale {
                    l.map.synced(e);
                }
                seq
            }
            _ => return false,
        };
        self.nodes[n].live().order.done(reply);
        if let Some(c) = self.conn.as_mut().filter(|c| c.id == cid) {
            c.to_pri.push_back(Frame::Reply {
                seq: reply,
                ok: true,
            });
        }
        true
    }

    // ---- resync --------------------------------------------------------

    fn resync(&mut self) {
        let Some(c) = self.conn.as_ref() else { return };
        if c.resync != Resync::Copying {
            return;
        }
        let (p, id, dir) = (c.primary, c.id, c.direction);
        let s = 1 - p;
        let busy: Vec<u64> = c.copies.values().copied().collect();
        let map = &self.nodes[p].live.as_ref().expect("primary up").map;
        let next = map.needsync_extents().find(|e| !busy.contains(e));
        let Some(e) = next else {
            // Writes that began without this link may still finish alone
            // and leave their extents needsync: they drain first.
            let older = self
                .writes
                .iter()
                .filter(|t| t.node == p && t.conn != Some(id))
                .count();
            if crate::resync::may_finish(busy.len(), older) {
                // Both copies durable before anyone is told they are in sync.
                use crate::edge::Disk;
                let _ = self.nodes[p].disk.datasync();
                let c = self.conn.as_mut().expect("alive");
                let seq = c.next_seq;
                c.next_seq += 1;
                c.to_sec.push_back(Frame::Flush { seq });
                c.resync = Resync::Flushing(seq);
                self.note("resync copied everything: final barrier".into());
            }
            return;
        };
        let (lo, hi) = (e as usize * PER_EXTENT, (e as usize + 1) * PER_EXTENT);
        // The copy holds the extent's range lock: not while a client write
        // to it is in flight.
        let overlaps = self
            .writes
            .iter()
            .any(|t| t.node == p && t.first < hi && lo < t.first + t.len);
        if overlaps {
            return;
        }
        match dir {
            Direction::PrimaryToSecondary => {
                let values: Vec<u64> = (lo..hi).map(|x| self.nodes[p].disk.value(x)).collect();
                let c = self.conn.as_mut().expect("alive");
                let seq = c.next_seq;
                c.next_seq += 1;
                c.to_sec.push_back(Frame::Write {
                    seq,
                    id: 0,
                    first: lo,
                    values,
                    fua: false,
                    want_received: false,
                });
                c.copies.insert(seq, e);
            }
            Direction::SecondaryToPrimary => {
                // In one step (see the module's simplifications), once the
                // secondary has nothing queued for the extent.
                let queued = self.nodes[s]
                    .live
                    .as_ref()
                    .is_some_and(|l| !l.queue.is_empty());
                if queued {
                    return;
                }
                let values: Vec<u64> = (lo..hi).map(|x| self.nodes[s].disk.value(x)).collect();
                resynced(&self.nodes[p].disk, lo, &values);
                self.nodes[p].live().map.synced(e);
                let _ = id;
            }
        }
    }

    fn resync_reply(&mut self, conn: u64, seq: u64, ok: bool) {
        let Some(c) = self.conn.as_mut().filter(|c| c.id == conn) else {
            return;
        };
        let p = c.primary;
        if let Some(e) = c.copies.remove(&seq) {
            if ok {
                self.nodes[p].live().map.synced(e);
            }
            return;
        }
        match c.resync {
            Resync::Flushing(s) if s == seq && self.nodes[p].live().map.needsync_count() > 0 => {
                // Written alone meanwhile: another pass, as hastd's copy_all.
                let c = self.conn.as_mut().expect("alive");
                c.resync = Resync::Copying;
            }
            Resync::Flushing(s) if s == seq => {
                let sd = SyncDone::of(&self.nodes[p].live().header, &c.peer_hello);
                let c = self.conn.as_mut().expect("alive");
                let seq = c.next_seq;
                c.next_seq += 1;
                let direction = c.direction;
                c.to_sec.push_back(Frame::SyncDone {
                    seq,
                    counters: sd.secondary,
                    direction,
                });
                c.resync = Resync::Announcing(seq);
                self.note(format!("resync: SYNC_DONE {:?} sent", sd.secondary));
            }
            Resync::Announcing(s) if s == seq => {
                let peer_hello = c.peer_hello.clone();
                c.resync = Resync::Finished;
                let sd = SyncDone::of(&self.nodes[p].live().header, &peer_hello);
                self.nodes[p].write_header(|h| sd.apply_primary(h));
                self.report.resyncs += 1;
                self.note(format!("resync done on link {conn}: copies in sync"));
            }
            _ => {}
        }
    }

    // ---- the cluster manager and the operator --------------------------

    fn manager(&mut self) {
        let f = self.faults;
        match self.rng.below(12) {
            0 if f.has(Faults::CRASH) => self.crash(),
            1 | 2 => self.restart(),
            3 if f.has(Faults::CUT) => {
                if self.conn.is_some() && self.rng.one_in(8) {
                    self.note("link cut".into());
                    self.drop_conn();
                }
            }
            4..=7 => self.connect(),
            8 if f.has(Faults::SWITCHOVER) => self.switchover(),
            9 if f.has(Faults::OPERATOR) => self.operator_promote(),
            10 => self.operator_demote(),
            _ => {
                self.demote_stale();
                self.elect();
            }
        }
    }

    fn crash(&mut self) {
        if !self.rng.one_in(10) {
            return;
        }
        let n = self.rng.below(2) as usize;
        self.crash_node(n);
    }

    /// Node `n`'s host fails; the manager fails over if it may.
    fn crash_node(&mut self, n: usize) {
        if !self.nodes[n].is_up() {
            return;
        }
        let was_primary = self.nodes[n].role() == Some(Role::Primary);
        let synced_link = self
            .conn
            .as_ref()
            .is_some_and(|c| c.resync == Resync::Finished);
        if self.conn.is_some() {
            self.drop_conn();
        }
        let node = &mut self.nodes[n];
        let floor_before = node.floor.clone();
        node.disk.crash(&mut self.rng);
        let node = &mut self.nodes[n];
        node.live = None;
        node.floor = node.dfloor.clone();
        node.floor_gen += 1;
        self.writes.retain(|t| t.node != n);
        self.flushes.retain(|t| t.node != n);
        node.incarnation += 1;
        self.report.crashes += 1;
        self.note(format!("node {n} crashed (was primary: {was_primary})"));
        // Fail over to a secondary that was connected and in sync.
        let other = 1 - n;
        if was_primary && synced_link && self.nodes[other].role() == Some(Role::Secondary) {
            self.promote(other, "failover");
            self.report.failovers += 1;
            // An in-sync secondary holds every write the old primary
            // acknowledged, except in async mode.
            if self.mode != Replication::Async {
                raise(&mut self.nodes[other].floor, &floor_before);
            }
        }
    }

    /// Makes `n` primary: it first applies what it received (its data path
    /// drains before the role changes), then records a new epoch.
    fn promote(&mut self, n: usize, why: &str) {
        'drain: loop {
            let len = self.nodes[n].live.as_ref().map_or(0, |l| l.queue.len());
            for k in 0..len {
                if self.apply_queued(n, k) {
                    continue 'drain;
                }
            }
            break;
        }
        let epoch = self.nodes[0].epoch_seen.max(self.nodes[1].epoch_seen) + 1;
        let node = &mut self.nodes[n];
        node.write_header(|h| {
            h.epoch = epoch;
            h.prevrole = Role::Primary;
        });
        let l = node.live();
        l.role = Role::Primary;
        self.last_primary = n;
        self.note(format!("{why}: node {n} primary, epoch {epoch}"));
    }

    /// No node is primary: the manager promotes the last primary if it is
    /// up, else the other if its copy was in sync when the link dropped.
    fn elect(&mut self) {
        if !self.primaries().is_empty() {
            return;
        }
        let whole = |w: &World, n: usize| {
            w.nodes[n]
                .live
                .as_ref()
                .is_some_and(|l| whole_copy(&l.header))
        };
        let last = self.last_primary;
        if whole(self, last) {
            self.promote(last, "elect");
        } else if !self.nodes[last].is_up() && self.in_sync && whole(self, 1 - last) {
            self.in_sync = false;
            self.promote(1 - last, "elect");
        }
    }

    /// hastd starts again (as a secondary; the manager gives roles).
    fn restart(&mut self) {
        let n = self.rng.below(2) as usize;
        if self.nodes[n].is_up() {
            return;
        }
        if let Err(e) = self.nodes[n].start(Role::Secondary) {
            self.fail(format!("node {n} cannot start: {e}"));
            return;
        }
        self.note(format!("node {n} restarted"));
        self.elect();
    }

    /// Planned switchover: only while connected, in sync and idle.
    fn switchover(&mut self) {
        let Some(c) = self.conn.as_ref() else { return };
        if c.resync != Resync::Finished || !self.writes.is_empty() || !self.flushes.is_empty() {
            return;
        }
        let (p, s) = (c.primary, 1 - c.primary);
        if !self.nodes[s]
            .live
            .as_ref()
            .is_some_and(|l| l.queue.is_empty())
        {
            return;
        }
        // Demotion: a barrier of both copies, then the role.
        use crate::edge::Disk;
        let _ = self.nodes[p].disk.datasync();
        let _ = self.nodes[s].disk.datasync();
        let ticket = self.nodes[p].live().map.barrier_start();
        if may_clear(PeerCopy::Flushed) {
            self.nodes[p].live().map.barrier_done(ticket);
        }
        for n in [p, s] {
            let f = self.nodes[n].floor.clone();
            self.nodes[n].dfloor = f;
        }
        self.nodes[p].flush_map();
        self.nodes[p].write_header(|h| h.prevrole = Role::Secondary);
        self.nodes[p].live().role = Role::Secondary;
        self.in_sync = true;
        self.drop_conn();
        self.in_sync = true;
        self.promote(s, "switchover");
    }

    /// An operator promotes a cut-off secondary by hand: two primaries.
    fn operator_promote(&mut self) {
        if self.conn.is_some() || !self.rng.one_in(6) {
            return;
        }
        let cand: Vec<usize> = (0..2)
            .filter(|&n| self.nodes[n].role() == Some(Role::Secondary))
            .collect();
        if let Some(&n) = cand.first() {
            if whole_copy(&self.nodes[n].live().header) {
                self.promote(n, "operator");
            }
        }
    }

    /// The operator demotes a primary a secondary refused as stale, once
    /// nothing is in flight on it.
    fn demote_stale(&mut self) {
        let Some(n) = self.stale else { return };
        if self.nodes[n].role() != Some(Role::Primary) {
            self.stale = None;
            return;
        }
        if self.writes.iter().any(|t| t.node == n) || self.flushes.iter().any(|t| t.node == n) {
            return;
        }
        self.stale = None;
        self.demote(n);
        self.note(format!("operator: stale primary {n} demoted"));
    }

    fn demote(&mut self, n: usize) {
        self.nodes[n].flush_map();
        self.nodes[n].write_header(|h| h.prevrole = Role::Secondary);
        self.nodes[n].live().role = Role::Secondary;
        if self.last_primary == n {
            self.last_primary = 1 - n;
        }
    }

    /// An operator demotes one of two primaries.
    fn operator_demote(&mut self) {
        let prim = self.primaries();
        if prim.len() < 2 {
            return;
        }
        let n = prim[self.rng.below(2) as usize];
        if self.writes.iter().any(|t| t.node == n) || self.flushes.iter().any(|t| t.node == n) {
            return;
        }
        self.demote(n);
        self.note(format!("operator: node {n} demoted"));
    }

    /// The primary dials the secondary: hellos, the secondary's verdict,
    /// the primary's map merge, then the resync starts.
    fn connect(&mut self) {
        if self.conn.is_some() {
            return;
        }
        let (Some(p), Some(s)) = (
            (0..2).find(|&n| self.nodes[n].role() == Some(Role::Primary)),
            (0..2).find(|&n| self.nodes[n].role() == Some(Role::Secondary)),
        ) else {
            return;
        };
        // A secondary still applying an old connection's requests finishes
        // them first (its old session drains before a new one is served).
        if !self.nodes[s].live().queue.is_empty() {
            return;
        }
        // A new degraded period; in the simulation the whole handshake is
        // one step, so writes never see it under way.
        self.nodes[p].live().degraded.begin_handshake();
        self.handshake(p, s);
        if let Some(l) = self.nodes[p].live.as_mut() {
            l.degraded.end_handshake();
        }
    }

    /// The hellos, the secondary's verdict, the primary's map merge, and
    /// the link with its resync.
    fn handshake(&mut self, p: usize, s: usize) {
        for n in [p, s] {
            self.nodes[n].acked_since_link = vec![0; SECTORS];
        }
        let ph = hello_of(&self.nodes[p].live().header, "p", Role::Primary);
        let sh = hello_of(&self.nodes[s].live().header, "s", Role::Secondary);
        let both_alone = self.nodes[p].wrote_alone && self.nodes[s].wrote_alone;
        let verdict = secondary::accept(&ph, &sh);
        self.note(format!(
            "connect {p}->{s}: p(l{} r{} e{}) s(l{} r{} e{} inc={}) -> {verdict:?}",
            ph.localcnt,
            ph.remotecnt,
            ph.epoch,
            sh.localcnt,
            sh.remotecnt,
            sh.epoch,
            sh.inconsistent
        ));
        let decision = match verdict {
            Ok(d) => d,
            Err(HelloStatus::SplitBrain) => {
                self.report.split_brains += 1;
                self.note("split-brain detected: run ends (the operator's call)".into());
                self.ended = true;
                return;
            }
            Err(HelloStatus::StaleEpoch) => {
                self.report.stale_refusals += 1;
                // The stale primary stays refused; the operator demotes it
                // (once its data path drained, as a demotion does).
                self.stale = Some(p);
                self.note(format!("stale primary {p} refused"));
                return;
            }
            Err(other) => {
                self.note(format!("refused: {other:?}"));
                return;
            }
        };
        // Check 5: fencing by epoch.
        if ph.epoch < self.nodes[s].epoch_seen {
            self.fail(format!(
                "secondary {s} accepted primary epoch {} after recording epoch {}",
                ph.epoch, self.nodes[s].epoch_seen
            ));
            return;
        }
        // Check 6: split-brain never merged.
        if both_alone {
            self.fail(format!(
                "both copies acknowledged writes alone, yet the handshake decided {decision:?}"
            ));
            return;
        }
        if secondary::must_adopt_epoch(&ph, &sh) {
            self.nodes[s].write_header(|h| h.epoch = h.epoch.max(ph.epoch));
        }
        let adopt = Adopt::of(decision, &ph, &sh);
        let s_map = self.nodes[s].live().map.map_bytes().to_vec();
        let pm = &mut self.nodes[p].live().map;
        if decision.is_full() {
            pm.set_all_needsync();
        } else {
            pm.merge_needsync(&s_map);
            pm.dirty_to_needsync();
        }
        let resync: Vec<u64> = pm.needsync_extents().collect();
        self.note(format!("extents to resync: {resync:?}"));
        // Nothing is sent before the extents to copy are durable.
        self.nodes[p].flush_map();
        let id = self.next_conn;
        self.next_conn += 1;
        let direction = decision
            .direction()
            .unwrap_or(Direction::PrimaryToSecondary);
        self.conn = Some(Conn {
            id,
            primary: p,
            to_sec: VecDeque::new(),
            to_pri: VecDeque::new(),
            next_seq: 1,
            adopt: Some(adopt),
            direction,
            peer_hello: sh,
            resync: Resync::Copying,
            copies: HashMap::new(),
        });
        if decision == Decision::Merge {
            self.note(format!("link {id} up, merge"));
        } else {
            self.note(format!("link {id} up, {decision:?}"));
        }
    }

    // ---- the checker ---------------------------------------------------

    fn check(&self) -> Result<(), String> {
        // Check 1: every primary holds at least its floor.
        for n in self.primaries() {
            let node = &self.nodes[n];
            for s in 0..SECTORS {
                let v = node.disk.value(s);
                if v < node.floor[s] {
                    let mut m = String::new();
                    let _ = write!(
                        m,
                        "acknowledged write lost: primary {n} sector {s} (extent {}) reads write #{v}, \
                         but #{} was acknowledged",
                        s / PER_EXTENT,
                        node.floor[s]
                    );
                    return Err(m);
                }
            }
        }
        // Check 3: while connected (and the secondary took the
        // connection's identity), every difference is in a dirty extent.
        if let Some(c) = &self.conn {
            {
                let (p, s) = (c.primary, 1 - c.primary);
                if let (Some(pl), true) = (&self.nodes[p].live, self.nodes[s].is_up()) {
                    for sec in 0..SECTORS {
                        if self.nodes[p].disk.value(sec) != self.nodes[s].disk.value(sec) {
                            let e = (sec / PER_EXTENT) as u64;
                            if !pl.map.is_dirty(e) && !pl.map.is_needsync(e) {
                                return Err(format!(
                                    "copies differ at sector {sec} (primary {p}: #{}, secondary: #{}) \
                                     but extent {e} is clean in the primary's map",
                                    self.nodes[p].disk.value(sec),
                                    self.nodes[s].disk.value(sec)
                                ));
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// A copy that may serve: it holds the resource (a resync gave it the
/// resource id) and no resync into it is unfinished.
fn whole_copy(h: &Header) -> bool {
    h.resuid != 0 && h.flags & hast_meta::FLAG_INCONSISTENT == 0
}

/// Raises each of `floor`'s sectors to at least `to`'s.
fn raise(floor: &mut [u64], to: &[u64]) {
    for (f, t) in floor.iter_mut().zip(to) {
        *f = (*f).max(*t);
    }
}

/// Writes a resynced chunk through the core's own rule for it, as bytes.
fn resynced(disk: &SimDisk, first: usize, values: &[u64]) {
    let mut bytes = Vec::with_capacity(values.len() * SECTOR as usize);
    for &v in values {
        super::disk::encode(v, &mut bytes);
    }
    // Simulated I/O is aligned and cannot fail.
    let _ = crate::edge::apply_resynced(disk, first as u64 * SECTOR, &bytes);
}
