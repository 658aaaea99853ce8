//! The cluster manager (hastmon's rules, reduced: fail over only to a
//! secondary that was connected and in sync), the operator who promotes and
//! demotes by hand, and the handshake a primary makes when it dials.

use super::*;

impl World {
    pub(super) fn manager(&mut self) {
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

    pub(super) fn crash(&mut self) {
        if !self.rng.one_in(10) {
            return;
        }
        let n = self.rng.below(2) as usize;
        self.crash_node(n);
    }

    /// Node `n`'s host fails; the manager fails over if it may.
    pub(super) fn crash_node(&mut self, n: usize) {
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
    pub(super) fn promote(&mut self, n: usize, why: &str) {
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
    pub(super) fn elect(&mut self) {
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
    pub(super) fn restart(&mut self) {
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
    pub(super) fn switchover(&mut self) {
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
    pub(super) fn operator_promote(&mut self) {
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
    pub(super) fn demote_stale(&mut self) {
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

    pub(super) fn demote(&mut self, n: usize) {
        self.nodes[n].flush_map();
        self.nodes[n].write_header(|h| h.prevrole = Role::Secondary);
        self.nodes[n].live().role = Role::Secondary;
        if self.last_primary == n {
            self.last_primary = 1 - n;
        }
    }

    /// An operator demotes one of two primaries.
    pub(super) fn operator_demote(&mut self) {
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
    pub(super) fn connect(&mut self) {
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
    pub(super) fn handshake(&mut self, p: usize, s: usize) {
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
}
