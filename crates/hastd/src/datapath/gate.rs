//! The gate every client request passes: counts requests in flight and lets
//! a role change close the resource and wait until they have all finished.
//!
//! `enter` increments before it checks `closed`, and `close` sets `closed`
//! before it reads the count (both SeqCst), so a request either sees the
//! gate closed or is counted by the drain: none slips past a demotion.
//!
//! [`Hold`] is the freeze's admission of modifications (`hastctl freeze`),
//! passed after the gate: unlike the gate it opens again (at the thaw), and
//! what it holds waits instead of failing. The same ordering argument makes
//! a modification either wait or be counted by [`Hold::drained`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use tokio::sync::Notify;

#[derive(Default)]
pub struct Gate {
    active: AtomicU64,
    closed: AtomicBool,
    changed: Notify,
}

pub struct Pass<'a>(&'a Gate);

/// A pass that may outlive the request's future: the tail of a memsync or
/// async write that waits for the peer after the client was answered.
pub struct OwnedPass(std::sync::Arc<Gate>);

impl Gate {
    /// Admits one request, or `None` once the gate is closed.
    pub fn enter(&self) -> Option<Pass<'_>> {
        self.active.fetch_add(1, SeqCst);
        if self.closed.load(SeqCst) {
            self.leave();
            return None;
        }
        Some(Pass(self))
    }

    pub fn enter_owned(self: &std::sync::Arc<Self>) -> Option<OwnedPass> {
        let pass = self.enter()?;
        std::mem::forget(pass);
        Some(OwnedPass(self.clone()))
    }

    fn leave(&self) {
        if self.active.fetch_sub(1, SeqCst) == 1 && self.closed.load(SeqCst) {
            self.changed.notify_waiters();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    pub fn inflight(&self) -> u64 {
        self.active.load(SeqCst)
    }

    /// Refuses new requests from now on (wakes `closed()` waiters).
    pub fn close(&self) {
        self.closed.store(true, SeqCst);
        self.changed.notify_waiters();
    }

    /// Resolves once the gate is closed.
    pub async fn closed(&self) {
        loop {
            let n = self.changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_closed() {
                return;
            }
            n.await;
        }
    }

    /// Closes the gate and waits until no request is in flight.
    pub async fn close_and_drain(&self) {
        self.close();
        loop {
            let n = self.changed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.active.load(SeqCst) == 0 {
                return;
            }
            n.await;
        }
    }
}

/// Holds new modifications while a freeze is on; counts those admitted.
#[derive(Default)]
pub struct Hold {
    held: AtomicBool,
    /// Modifications admitted and not finished (their replication tail
    /// included).
    active: AtomicU64,
    /// Wakes the modifications waiting for the release.
    released: Notify,
    /// Wakes [`Hold::drained`] when the last admitted one finishes.
    idle: Notify,
}

/// An admitted modification; dropped when it has finished everywhere.
pub struct HoldPass(std::sync::Arc<Hold>);

impl Hold {
    /// Admits one modification: at once unless held (one increment and one
    /// load); while held, waits for the release. `None` once `gate` closes
    /// while it waits (a demotion: the caller answers `Shutdown`).
    pub async fn admit(self: &std::sync::Arc<Self>, gate: &Gate) -> Option<HoldPass> {
        loop {
            self.active.fetch_add(1, SeqCst);
            if !self.held.load(SeqCst) {
                return Some(HoldPass(self.clone()));
            }
            self.leave();
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if !self.held.load(SeqCst) {
                continue;
            }
            if gate.is_closed() {
                return None;
            }
            tokio::select! {
                _ = released => {}
                // Checked again at the top: a release that came with the
                // close (hastd stopping thaws first) still admits.
                _ = gate.closed() => {
                    if self.held.load(SeqCst) {
                        return None;
                    }
                }
            }
        }
    }

    fn leave(&self) {
        if self.active.fetch_sub(1, SeqCst) == 1 && self.held.load(SeqCst) {
            self.idle.notify_waiters();
        }
    }

    /// From now on new modifications wait.
    pub fn hold(&self) {
        self.held.store(true, SeqCst);
    }

    /// Lets the waiting modifications (and new ones) through.
    pub fn release(&self) {
        self.held.store(false, SeqCst);
        self.released.notify_waiters();
    }

    /// Resolves once no admitted modification is unfinished.
    pub async fn drained(&self) {
        loop {
            let n = self.idle.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.active.load(SeqCst) == 0 {
                return;
            }
            n.await;
        }
    }
}

impl Drop for HoldPass {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl Drop for OwnedPass {
    fn drop(&mut self) {
        self.0.leave();
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn drain_waits_for_inflight_and_refuses_new() {
        let g = Arc::new(Gate::default());
        let pass = g.enter().unwrap();
        let g2 = g.clone();
        let drain = tokio::spawn(async move { g2.close_and_drain().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !drain.is_finished(),
            "drain must wait for the request in flight"
        );
        assert!(g.enter().is_none(), "closed gate admits nobody");
        drop(pass);
        tokio::time::timeout(Duration::from_secs(1), drain)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(g.inflight(), 0);
    }

    #[tokio::test]
    async fn hold_waits_for_the_admitted_and_holds_new_ones_until_released() {
        let g = Arc::new(Gate::default());
        let h = Arc::new(Hold::default());
        let first = h.admit(&g).await.unwrap();
        h.hold();
        let (h2, g2) = (h.clone(), g.clone());
        let held = tokio::spawn(async move { h2.admit(&g2).await.map(drop).is_some() });
        let h3 = h.clone();
        let drain = tokio::spawn(async move { h3.drained().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drain.is_finished(), "the admitted one is unfinished");
        assert!(!held.is_finished(), "a new one waits while held");
        drop(first);
        tokio::time::timeout(Duration::from_secs(1), drain)
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!held.is_finished(), "drained, still held");
        h.release();
        let admitted = tokio::time::timeout(Duration::from_secs(1), held)
            .await
            .unwrap()
            .unwrap();
        assert!(admitted, "released: admitted, not failed");
    }

    #[tokio::test]
    async fn a_held_modification_fails_when_the_gate_closes_unless_released_first() {
        let g = Arc::new(Gate::default());
        let h = Arc::new(Hold::default());
        h.hold();
        let (h2, g2) = (h.clone(), g.clone());
        let held = tokio::spawn(async move { h2.admit(&g2).await.map(drop).is_some() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        g.close();
        let admitted = tokio::time::timeout(Duration::from_secs(1), held)
            .await
            .unwrap()
            .unwrap();
        assert!(!admitted, "a demotion ends the wait");
        // Released, then closed (hastd stopping thaws first): admitted.
        let g = Arc::new(Gate::default());
        let (h2, g2) = (h.clone(), g.clone());
        let held = tokio::spawn(async move { h2.admit(&g2).await.map(drop).is_some() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        h.release();
        g.close();
        let admitted = tokio::time::timeout(Duration::from_secs(1), held)
            .await
            .unwrap()
            .unwrap();
        assert!(admitted);
        assert_eq!(h.active.load(SeqCst), 0);
    }
}
