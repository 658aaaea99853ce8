//! The link and the secondary: frames in per-connection order, the
//! secondary applying what it received as its rules allow, and the resync
//! the primary runs over the link.

use super::*;

impl World {
    pub(super) fn drop_conn(&mut self) {
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

    pub(super) fn deliver(&mut self) {
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
    pub(super) fn secondary_apply(&mut self) {
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
    pub(super) fn apply_queued(&mut self, n: usize, k: usize) -> bool {
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

    pub(super) fn resync(&mut self) {
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

    pub(super) fn resync_reply(&mut self, conn: u64, seq: u64, ok: bool) {
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
}
