//! The gate every client request passes: counts requests in flight and lets
//! a role change close the resource and wait until they have all finished.
//!
//! `enter` increments before it checks `closed`, and `close` sets `closed`
//! before it reads the count (both SeqCst), so a request either sees the
//! gate closed or is counted by the drain: none slips past a demotion.

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
}
