//! The checker: the floors each acknowledgement raises (what the modes'
//! promises say each copy must hold), and the checks after every step.

use super::*;

impl World {
    /// The client hears the outcome of write `i`; checks 2 and the floors.
    pub(super) fn answer(&mut self, i: usize, r: Result<(), WFail>) {
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

    pub(super) fn check(&self) -> Result<(), String> {
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
