//! `hastctl attach` and the retry of an aborted `detach` event: bring a
//! failed or detached local component back (`datapath/detach.rs`).
//!
//! The copy direction is forced: the extents written while detached are
//! copied **from the peer to this copy** (`resync::Direction::FromPeer`),
//! never the other way, and the connector never reconnects while detached,
//! so no handshake reads this copy's stale metadata as current.

use std::sync::Arc;

use super::resync::{self, Direction};
use crate::datapath::{AttachStart, DataPath};

/// Attaches the local component again. Returns at once with what was done
/// (`Ok`), or why nothing changed (`Err`: the component still fails, the
/// peer is not connected, the resource is not open). A detached component
/// is resynced from the peer in a task started here; the `attach` event
/// and the log line `local component attached and resynced` mark its end,
/// and `status` is `complete` again then.
pub async fn recover(dp: &Arc<DataPath>) -> Result<String, String> {
    match dp.attach_start().await? {
        AttachStart::Done(msg) => Ok(msg),
        AttachStart::Resync(link) => {
            let bytes = dp.dirty_bytes();
            let dp = dp.clone();
            tokio::spawn(async move {
                let r = resync::run(dp.clone(), link.clone(), Direction::FromPeer).await;
                let r = match r {
                    Ok(_) => dp.attach_done().await,
                    Err(e) => Err(e),
                };
                if let Err(e) = r {
                    // The copy stays marked inconsistent (never promoted,
                    // never a source), its extents needsync and read from
                    // the peer (or failing without it); `hastctl attach`
                    // again resumes the copy.
                    tracing::error!(resource = %dp.name(), "attach: resync from the secondary failed: {e}; run `hastctl attach` again");
                }
            });
            Ok(format!(
                "local component attached; resyncing up to {bytes} bytes written while detached \
                 from the secondary"
            ))
        }
    }
}
