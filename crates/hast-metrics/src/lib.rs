//! hast-metrics: the Prometheus endpoint (`metrics_listen`, docs/overview.md §9) that
//! hastd and hastmon share. Each daemon builds a snapshot of its own state
//! and renders it with [`text`]; this crate serves the result.
//!
//! - [`text`] writes the text exposition format 0.0.4 (pure);
//! - [`histogram`] a latency histogram of atomic bucket counters, cheap
//!   enough for the data path (no lock, no allocation per observation);
//! - [`http`] parses a request head and builds the answer (pure, fuzzed:
//!   `fuzz/fuzz_targets/metrics_http.rs`);
//! - [`serve`] the listener: one GET per connection, bounded in size, time
//!   and number of connections.
//!
//! Why no HTTP or Prometheus crate: the endpoint answers one request, `GET
//! /metrics`, with one text body. hyper would bring a general HTTP stack
//! (keep-alive, chunked bodies, upgrades) to a port that faces strangers,
//! where a few dozen lines that accept only a bounded request head are
//! easier to bound and to fuzz. `prometheus-client` wants metrics registered
//! as its own live objects, while ours are read from the status snapshot
//! `hastctl status` already uses at scrape time; the encoder that format
//! needs is a hundred lines (escaping, HELP/TYPE, histogram buckets).

pub mod histogram;
pub mod http;
pub mod serve;
pub mod text;

pub use histogram::{Histogram, HistogramSnapshot};
pub use serve::{bind, serve, Limits};
pub use text::{Exposition, Kind};
