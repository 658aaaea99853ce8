//! Scripted runs: named moves instead of the seed's choices, for races the
//! seeds reach too rarely to be a test's budget. The same world, the same
//! rules and the same checks after every move; the seed still orders what
//! [`Move::Settle`] and [`Move::Finish`] interleave.

use hast_conf::Replication;
use hast_meta::Role;

use super::{Failure, Report, World};

/// One scripted move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// A client write to `node`'s sectors `first..first + len`; writes are
    /// numbered 1, 2, … in the order the script starts them.
    Write {
        node: usize,
        first: usize,
        len: usize,
    },
    /// Write `n` performs one action (the metadata writer runs first, so a
    /// wait for the activemap is over).
    Step(u64),
    /// Write `n` runs until it completed, the link and the secondary moving
    /// along with it.
    Finish(u64),
    /// A client flush on `node`, run to its end (a barrier: extents idle
    /// before it may be cleared).
    Flush(usize),
    /// The link, the secondary, the metadata writer and the resync run until
    /// quiet; client writes stand still.
    Settle,
    /// The link is cut.
    Cut,
    /// The primary dials the secondary (which may refuse).
    Connect,
    /// Node `n`'s host fails (the manager fails over if it may).
    Crash(usize),
    /// Node `n` is made primary by hand, with a new epoch.
    Promote(usize),
    /// Node `n` is made secondary by hand.
    Demote(usize),
}

/// Runs `moves` from the usual start (node 0 primary, node 1 a fresh
/// secondary) in `mode`; `Err` is the first broken promise.
pub fn script(seed: u64, mode: Replication, moves: &[Move]) -> Result<Report, Failure> {
    let mut w = World::new(seed);
    w.mode = mode;
    w.flapping = false;
    w.slow_disk = false;
    w.verbose = std::env::var_os("HAST_SIM_VERBOSE").is_some();
    let cfg = super::Config::new(seed, 0);
    for (k, &m) in moves.iter().enumerate() {
        w.note(format!("script move {k}: {m:?}"));
        w.perform_move(m)
            .map_err(|what| w.failure(cfg, format!("move {k} ({m:?}): {what}")))?;
        w.check().map_err(|what| w.failure(cfg, what))?;
        if let Some(what) = w.violation.take() {
            return Err(w.failure(cfg, what));
        }
    }
    Ok(w.report.clone())
}

/// Attempts a bounded move makes before it is called stuck.
const BOUND: usize = 20_000;

impl World {
    fn index_of(&self, id: u64) -> Option<usize> {
        self.writes.iter().position(|t| t.id == id)
    }

    /// One step of everything but clients, faults and client writes.
    fn protocol_step(&mut self) {
        match self.rng.below(5) {
            0 => self.advance_flush(),
            1 => self.meta_writer(),
            2 => self.deliver(),
            3 => self.secondary_apply(),
            _ => self.resync(),
        }
    }

    fn perform_move(&mut self, m: Move) -> Result<(), String> {
        match m {
            Move::Write { node, first, len } => {
                if self.nodes[node].role() != Some(Role::Primary) {
                    return Err(format!("node {node} is not primary"));
                }
                self.start_write_at(node, first, len, false);
            }
            Move::Step(id) => {
                let i = self
                    .index_of(id)
                    .ok_or(format!("write #{id} is not in flight"))?;
                let node = self.writes[i].node;
                self.nodes[node].flush_map();
                self.advance_write_at(i);
            }
            Move::Finish(id) => {
                for _ in 0..BOUND {
                    let Some(i) = self.index_of(id) else {
                        return Ok(());
                    };
                    self.advance_write_at(i);
                    self.protocol_step();
                }
                return Err(format!("write #{id} never completed"));
            }
            Move::Flush(node) => {
                self.start_flush(node);
                for _ in 0..BOUND {
                    if !self.flushes.iter().any(|f| f.node == node) {
                        return Ok(());
                    }
                    self.protocol_step();
                }
                return Err(format!("the flush on {node} never completed"));
            }
            Move::Settle => {
                for _ in 0..BOUND {
                    self.protocol_step();
                }
            }
            Move::Cut => {
                self.note("link cut".into());
                self.drop_conn();
            }
            // A refusal is an outcome, not an error: the checks judge it.
            Move::Connect => self.connect(),
            Move::Crash(n) => self.crash_node(n),
            Move::Promote(n) => self.promote(n, "script"),
            Move::Demote(n) => {
                self.demote(n);
                self.note(format!("script: node {n} demoted"));
            }
        }
        Ok(())
    }
}
