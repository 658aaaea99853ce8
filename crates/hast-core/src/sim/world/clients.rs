//! The clients and the primary's side of their requests: writes driven
//! through the core's `WriteOp` (each action performed here, its outcome fed
//! back), and flushes as the core's barrier rule has them.

use super::*;

impl World {
    pub(super) fn client(&mut self) {
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

    pub(super) fn start_write(&mut self, node: usize) {
        let len = 1 + self.rng.below(12) as usize;
        let first = self.rng.below((SECTORS - len + 1) as u64) as usize;
        let fua = self.rng.one_in(6);
        self.start_write_at(node, first, len, fua);
    }

    pub(super) fn start_write_at(
        &mut self,
        node: usize,
        first: usize,
        len: usize,
        fua: bool,
    ) -> u64 {
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
            // The simulated disks never fail: no detach.
            detach: false,
            detached: false,
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

    pub(super) fn start_flush(&mut self, node: usize) {
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

    pub(super) fn advance_write(&mut self) {
        if self.writes.is_empty() {
            return;
        }
        let i = self.rng.below(self.writes.len() as u64) as usize;
        self.advance_write_at(i);
    }

    /// Moves write `i` by one action if it can.
    pub(super) fn advance_write_at(&mut self, i: usize) {
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
    pub(super) fn perform(&mut self, i: usize) -> Option<Event> {
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
            // Simulated disks never fail, so nothing asks to detach.
            Action::Detach { .. } => Some(Event::Detached(false)),
            Action::Track => Some(Event::Tracked(true)),
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

    pub(super) fn waiter(&self, i: usize) -> Option<Waiter> {
        let t = &self.writes[i];
        self.waiters.get(&(t.conn?, t.seq?)).copied()
    }

    pub(super) fn advance_flush(&mut self) {
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

    pub(super) fn finish_flush(&mut self, i: usize, peer: PeerCopy) {
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

    pub(super) fn meta_writer(&mut self) {
        let n = self.rng.below(2) as usize;
        if self.nodes[n].is_up() {
            self.nodes[n].flush_map();
        }
    }
}
