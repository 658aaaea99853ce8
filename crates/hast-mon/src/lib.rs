//! hast-mon: the failover monitor of docs/overview.md §5 (`hastmon`, `hastmonctl`).
//!
//! `conf` reads `/etc/hastmon.conf` (hastmon's grammar, with the tokenizer of
//! hast.conf); `auth` is the sans-IO, replay-protected request/reply framing
//! between hastmon peers, keyed by the shared `key { secret }`; `net` runs
//! that framing over TCP with tokio, one exchange per connection. `msg` is
//! what the exchanges carry and `policy` the pure takeover state machine.
//! `daemon` runs the policies (with `exec` for the resource script,
//! `storage` for hastd's lease and status in-process, and `store` for the
//! watchdog's durable state); `ctl` is the control socket,
//! `metrics` the Prometheus endpoint (`metrics_listen`, served by
//! `hast-metrics`) and `cli` the command lines of `hastmon` and `hastmonctl`.

pub mod auth;
pub mod cli;
pub mod conf;
pub mod ctl;
pub mod daemon;
pub mod exec;
pub mod metrics;
pub mod msg;
pub mod net;
pub mod policy;
pub mod storage;
pub mod store;
