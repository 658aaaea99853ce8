//! A deterministic simulation of a primary, a secondary, their link, their
//! metadata and their clients, driven by one seed, checking the replication
//! promises after every step.
//!
//! What runs is the real rule code: every client write goes through
//! [`crate::write::WriteOp`], every barrier through [`crate::barrier`], the
//! secondary through [`crate::secondary`], the handshake through
//! `hast_repl::decide` and [`crate::handshake`], the dirty bookkeeping through
//! `hast_meta::ActiveMap`, the metadata through `hast_meta::Header`'s
//! encoding and two-slot choice. What is simulated is everything with I/O:
//! disks ([`disk`]: a page cache, torn sectors at a crash), the link
//! (per-connection FIFO order, loss of a connection with everything in it),
//! time (one step at a time; which runnable thing moves next is the seed's
//! choice), the cluster manager (hastmon's rules, reduced: fail over to a
//! secondary only if it was connected and in sync) and an operator who may
//! promote a cut-off secondary by hand (the way split-brain happens).
//!
//! Checks after every step ([`World::check`]):
//! 1. **No acknowledged write lost.** Each node has a floor per sector: the
//!    newest acknowledged write the modes' promises say it must hold (and a
//!    durable floor: what a crash of the node may not take). A primary's
//!    content is never older than its floor.
//! 2. **Acknowledged per the mode.** A fullsync write is acknowledged only
//!    once the secondary applied it, a memsync one once it received it —
//!    unless this copy recorded itself newer (`localcnt`) first.
//! 3. **The dirty map covers every difference.** While connected, every
//!    sector where the copies differ lies in an extent the primary's map
//!    holds dirty or needsync.
//! 4. **Metadata always decodes** after a crash (header slot choice and map).
//! 5. **Fencing by epoch.** No copy accepts a primary older than an epoch it
//!    recorded.
//! 6. **Split-brain is detected, never merged.** When both copies
//!    acknowledged writes alone, the handshake refuses.
//!
//! Simplifications (each stated where it is made): header writes are atomic
//! steps (their tearing is `hast_meta`'s tested two-slot scheme); no
//! `fence_peer` command; a resync from the secondary copies an extent in one
//! step and clients wait meanwhile.

pub mod disk;
pub mod rng;
mod world;

pub use world::{run, script, shrink, Config, Failure, Faults, Move, Report};
