//! hastd driven in-process over its control socket (`hastd_control`): the
//! status check and the lease renewal that hastmon makes every few hundred
//! milliseconds, without forking a shell and hastctl each time (under
//! memory or fork pressure the renewal itself would fail). Role changes
//! stay with the `exec` script.
//!
//! Every call has a deadline derived from the resource's timing: a hastd
//! that is stopped, stuck in its disk or livelocked does not answer, and
//! the caller learns so in time to stop vouching for it. A renewal carries
//! an absolute CLOCK_MONOTONIC deadline, so one that hastd reads late (it
//! sat in the socket while hastd was frozen) never extends the lease past
//! what the grantors promised.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

// hastd's role (`hast_meta::Role`) as its status reports it, beside
// hastmon's own `Role` (which has `Watchdog` too).
use hast_api::{
    decode_body, decode_len, encode, ApiError, Envelope, Request, ResourceStatus, Response,
    Role as HastdRole, HEADER_LEN,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::exec::Outcome;
use crate::msg::Role;

/// One resource of the local hastd.
#[derive(Debug, Clone)]
pub struct Hastd {
    pub socket: PathBuf,
    pub resource: String,
}

/// What a status check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// As the script's `status` would end: passes for hastmon's `role` (see
    /// [`verdict`]), with `in-sync <epoch> <generation>` as its line when a
    /// primary's peer caught up, or why it failed.
    pub outcome: Outcome,
    /// hastd's role and epoch.
    pub storage: (Role, u64),
}

impl Hastd {
    /// hastd's status of the resource, judged for hastmon's `role`; a
    /// primary whose local component completed nothing for `stall_limit`
    /// fails (see [`verdict`]).
    pub async fn check(
        &self,
        role: Role,
        deadline: Duration,
        stall_limit: Duration,
    ) -> Result<Checked, String> {
        let req = Request::Status {
            names: vec![self.resource.clone()],
        };
        match self.call(req, deadline).await? {
            Response::Status(mut all) if all.len() == 1 => {
                Ok(verdict(role, &all.remove(0), stall_limit))
            }
            Response::Error(e) => Err(api_error(&e)),
            other => Err(format!("unexpected answer from hastd: {other:?}")),
        }
    }

    /// Renews the lease until `until` (an `Instant`): hastd gets the time
    /// left now and the same deadline on CLOCK_MONOTONIC.
    pub async fn renew(&self, until: Instant, deadline: Duration) -> Result<(), String> {
        // Read the monotonic clock first and the time left after: the
        // absolute deadline errs early, never late.
        let mono = hast_sys::mono_now_ns();
        let left = until.saturating_duration_since(Instant::now());
        let ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
        if ms == 0 {
            return Err("the lease ran out before it could be renewed".into());
        }
        let req = Request::Lease {
            ms: ms.min(hast_api::LEASE_MS_MAX),
            names: vec![self.resource.clone()],
            not_after: Some(
                mono.saturating_add(u64::try_from(left.as_nanos()).unwrap_or(u64::MAX)),
            ),
        };
        match self.call(req, deadline).await? {
            Response::Lease(all) => match all.first().map(|o| &o.result) {
                Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(api_error(e)),
                None => Err("hastd answered no lease".into()),
            },
            Response::Error(e) => Err(api_error(&e)),
            other => Err(format!("unexpected answer from hastd: {other:?}")),
        }
    }

    async fn call(&self, req: Request, deadline: Duration) -> Result<Response, String> {
        let work = exchange(&self.socket, req);
        match tokio::time::timeout(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "hastd ({}) did not answer within {} ms",
                self.socket.display(),
                deadline.as_millis()
            )),
        }
    }
}

async fn exchange(socket: &Path, req: Request) -> Result<Response, String> {
    let io = |e: std::io::Error| format!("hastd control socket {}: {e}", socket.display());
    let mut s = UnixStream::connect(socket).await.map_err(io)?;
    let frame = encode(&Envelope::new(req)).map_err(|e| e.to_string())?;
    s.write_all(&frame).await.map_err(io)?;
    let mut prefix = [0u8; HEADER_LEN];
    s.read_exact(&mut prefix).await.map_err(io)?;
    let len = decode_len(prefix).map_err(|e| e.to_string())?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.map_err(io)?;
    let answer: Envelope<Response> = decode_body(&body).map_err(|e| e.to_string())?;
    if answer.version != hast_api::PROTOCOL_VERSION {
        return Err(format!(
            "hastd speaks control protocol version {}, hastmon {}",
            answer.version,
            hast_api::PROTOCOL_VERSION
        ));
    }
    Ok(answer.body)
}

fn api_error(e: &ApiError) -> String {
    format!("hastd: {}", e.message)
}

/// The rules of the shipped script's `status`, on hastd's status: a primary
/// passes while hastd is primary and its local component has not been
/// stalled (pending I/O, nothing completed) for `stall_limit` — hastd stays
/// responsive while its disk hangs, so its role alone would vouch for a
/// primary that serves nothing — and reports `in-sync` once its peer caught
/// up; any other role passes while hastd holds a consistent secondary copy,
/// ready to take over.
pub fn verdict(role: Role, st: &ResourceStatus, stall_limit: Duration) -> Checked {
    let storage_role = match st.role {
        HastdRole::Init => Role::Init,
        HastdRole::Primary => Role::Primary,
        HastdRole::Secondary => Role::Secondary,
    };
    let epoch = st.epoch.unwrap_or(0);
    let fail = |why: String| Checked {
        outcome: Outcome::failed(why),
        storage: (storage_role, epoch),
    };
    if role == Role::Primary {
        if st.role != HastdRole::Primary {
            return fail(format!("hastd holds {} as {}", st.name, st.role));
        }
        if let Some(ms) = st
            .local_stall_ms
            .filter(|&ms| u128::from(ms) >= stall_limit.as_millis())
        {
            return fail(format!(
                "{}: the local component has completed nothing for {ms} ms",
                st.name
            ));
        }
        let line = if st.status == hast_api::Status::Complete {
            format!("in-sync {epoch} {}", st.fence.map_or(0, |f| f.generation))
        } else {
            String::new()
        };
        return Checked {
            outcome: Outcome {
                line,
                ..Outcome::success()
            },
            storage: (storage_role, epoch),
        };
    }
    if st.role != HastdRole::Secondary {
        return fail(format!("hastd holds {} as {}", st.name, st.role));
    }
    if st.meta.as_ref().is_some_and(|m| m.inconsistent) {
        return fail(format!(
            "{}: the copy is the target of an unfinished resync",
            st.name
        ));
    }
    if st.outdated {
        // hastd would refuse the promotion (the watchdog's mark, passed on).
        return fail(format!(
            "{}: the copy is outdated (the primary wrote without it)",
            st.name
        ));
    }
    if st.status == hast_api::Status::Detached {
        // Its disk failed (`on_io_error`): it lacks what the primary wrote
        // since, and hastd would refuse to promote it anyway.
        return fail(format!(
            "{}: the local component failed and is detached",
            st.name
        ));
    }
    Checked {
        outcome: Outcome::success(),
        storage: (storage_role, epoch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hast_api::{FenceStatus, MetaStatus};

    fn status(role: HastdRole, status: &str, inconsistent: bool) -> ResourceStatus {
        let json = serde_json::json!({
            "name": "r0", "provider_name": "hast/r0", "role": role, "status": status,
            "local": "/dev/x", "remote": "tcp://b", "replication": "fullsync",
            "checksum": "none", "compression": "none", "meta": null, "dirty_bytes": 0,
            "stats": {"reads":0,"writes":0,"deletes":0,"zeroes":0,"flushes":0,"bytes_read":0,
                "bytes_written":0,"activemap_updates":0,"read_errors":0,"write_errors":0,
                "delete_errors":0,"flush_errors":0},
            "queues": {"inflight":0,"connections":0}, "sync": null, "nbd": [],
            "epoch": 7,
        });
        let mut st: ResourceStatus = serde_json::from_value(json).unwrap();
        st.fence = Some(FenceStatus {
            generation: 3,
            fenced: 3,
            pending: false,
        });
        st.meta = Some(MetaStatus {
            datasize: 1,
            extentsize: 1,
            keepdirty: 1,
            resuid: 1,
            localcnt: 0,
            remotecnt: 0,
            epoch: 7,
            inconsistent,
        });
        st
    }

    #[test]
    fn verdict_table() {
        use HastdRole::{Init, Primary, Secondary};
        // (hastmon's role, hastd's role, status, inconsistent, ok, line)
        let cases = [
            (
                Role::Primary,
                Primary,
                "complete",
                false,
                true,
                "in-sync 7 3",
            ),
            (Role::Primary, Primary, "degraded", false, true, ""),
            (Role::Primary, Secondary, "-", false, false, ""),
            (Role::Secondary, Secondary, "-", false, true, ""),
            (Role::Secondary, Secondary, "-", true, false, ""),
            (Role::Secondary, Secondary, "detached", false, false, ""),
            // A detached primary serves from its peer: still vouched for,
            // never in sync.
            (Role::Primary, Primary, "detached", false, true, ""),
            (Role::Secondary, Primary, "complete", false, false, ""),
            (Role::Init, Init, "-", false, false, ""),
            (Role::Init, Primary, "complete", false, false, ""),
        ];
        for (mine, theirs, st, inconsistent, ok, line) in cases {
            let c = verdict(
                mine,
                &status(theirs, st, inconsistent),
                Duration::from_secs(1),
            );
            let case = format!("{mine:?} over hastd {theirs:?} {st} inconsistent={inconsistent}");
            assert_eq!(
                (c.outcome.ok, c.outcome.line.as_str()),
                (ok, line),
                "{case}"
            );
            assert_eq!(c.storage.1, 7, "{case}");
            assert_eq!(c.outcome.error.is_some(), !ok, "{case}");
        }
        // A primary whose disk completes nothing for the limit is not vouched for.
        let limit = Duration::from_secs(1);
        let mut st = status(Primary, "complete", false);
        for (stall, ok) in [(None, true), (Some(999), true), (Some(1000), false)] {
            st.local_stall_ms = stall;
            assert_eq!(
                verdict(Role::Primary, &st, limit).outcome.ok,
                ok,
                "{stall:?}"
            );
        }
        // An outdated copy cannot take over.
        let mut st = status(Secondary, "outdated", false);
        st.outdated = true;
        assert!(!verdict(Role::Secondary, &st, limit).outcome.ok);
        // A secondary's slow disk is not the primary's business here.
        let mut st = status(Secondary, "-", false);
        st.local_stall_ms = Some(5000);
        assert!(verdict(Role::Secondary, &st, limit).outcome.ok);
    }

    #[tokio::test]
    async fn a_silent_hastd_is_noticed_by_the_deadline() {
        // A socket that accepts and never answers: a stopped hastd.
        let dir = std::env::temp_dir().join(format!("hastmon-storage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hastd.sock");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                open.push(s);
            }
        });
        let hastd = Hastd {
            socket: path.clone(),
            resource: "r0".into(),
        };
        let begun = Instant::now();
        let e = hastd
            .check(
                Role::Primary,
                Duration::from_millis(200),
                Duration::from_secs(1),
            )
            .await
            .unwrap_err();
        assert!(e.contains("did not answer within 200 ms"), "{e}");
        let e = hastd
            .renew(
                Instant::now() + Duration::from_secs(1),
                Duration::from_millis(200),
            )
            .await
            .unwrap_err();
        assert!(e.contains("did not answer"), "{e}");
        assert!(begun.elapsed() < Duration::from_secs(5));
        // No hastd at all.
        let gone = Hastd {
            socket: dir.join("missing.sock"),
            resource: "r0".into(),
        };
        let e = gone
            .check(
                Role::Primary,
                Duration::from_millis(200),
                Duration::from_secs(1),
            )
            .await
            .unwrap_err();
        assert!(e.contains("missing.sock"), "{e}");
        held.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
