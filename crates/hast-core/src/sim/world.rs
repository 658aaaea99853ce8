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

mod check;
mod clients;
mod link;
mod manager;
mod run;
mod script;

pub use run::{run, shrink, Config, Failure, Faults, Report};
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
