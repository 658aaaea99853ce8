//! hast-connect: `hastcd`, the connector on client hosts (docs/overview.md §8, STACD(8)).
//!
//! For every resource it connects, hastcd serves one stable local NBD
//! endpoint and forwards each request to the node that is primary now. It
//! learns who that is by polling the storage nodes' discovery listeners,
//! follows the primary with the highest epoch seen and never goes back to a
//! lower one (client-side fencing). When the primary fails it holds new
//! requests, keeps every request not yet acknowledged, reconnects to the new
//! primary and replays them in their original order: the client sees a
//! pause, not an error.
//!
//! Pure cores (no I/O): [`follow`] (which node to send to) and [`book`] (the
//! requests not yet acknowledged, and what to replay). The drivers around
//! them: [`discover`] (one discovery query to a storage node), [`upstream`] (one NBD client connection to a primary), [`endpoint`]
//! (the local export that forwards and fails over), [`daemon`] (hastcd).
//!
//! Around them: [`conf`] (hastcd.conf), [`cli`] (hastcd's arguments), the
//! operator's surfaces over the [`status::Control`] trait — [`control`]
//! (the root-only socket), [`ctl`] (`hastcctl`), [`dbus`]
//! (`org.hast.connector`).

pub mod book;
pub mod cli;
pub mod conf;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod dbus;
pub mod discover;
pub mod endpoint;
pub mod follow;
pub mod status;
pub mod tls;
pub mod upstream;
