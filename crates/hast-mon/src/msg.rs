//! The messages hastmon peers exchange, one request and one reply per
//! authenticated exchange (see [`crate::auth`]). JSON bodies: small, rare
//! (a few per second), and readable in a packet capture.

use serde::{Deserialize, Serialize};

/// Largest JSON body accepted (the exchange layer also bounds frames).
pub const BODY_MAX: usize = 16 * 1024;

/// Whether the resource runs on the node that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Started and its last status check passed.
    Run,
    /// Not running (secondary, init, or gave up).
    Stopped,
    /// Being started or stopped.
    Starting,
    /// The status check failed; retrying up to `attempts`.
    Failing,
}

/// hastmon's role for one resource on one node. Not `hast_meta::Role`:
/// hastmon's own protocol has a fourth role (`Watchdog`, a node that only
/// watches) and encodes it with serde in its messages, so it stays its own
/// type; hastd's roles are the three of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Init,
    Primary,
    Secondary,
    Watchdog,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Init => "init",
            Role::Primary => "primary",
            Role::Secondary => "secondary",
            Role::Watchdog => "watchdog",
        }
    }
}

/// What a request is about, sent by `from` for `resource`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub resource: String,
    pub from: String,
    pub body: RequestBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RequestBody {
    /// Primary → everyone, every heartbeat: "I run it in `epoch`; renew my
    /// lease". The answer is a [`ReplyBody::Lease`].
    Heartbeat { epoch: u64, state: RunState },
    /// Watchdog → everyone, every heartbeat: "what are you?". `outdated`:
    /// the nodes the watchdog holds outdated, so that an outdated node
    /// knows it (and its `hastmonctl status` says so) while a primary runs,
    /// and knows when the mark is cleared; `None` from a watchdog that
    /// predates the field (the node's knowledge then stays as it was).
    Status {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outdated: Option<Vec<String>>,
    },
    /// Watchdog → secondaries when no node is primary/run.
    Complain {
        epoch: u64,
        /// Nodes the witness knows to be outdated (the primary ran without them).
        outdated: Vec<String>,
    },
    /// Secondary (or `hastmonctl role primary`) → watchdog: "give me the
    /// next epoch". `manual` skips the complaint requirement, never the lease.
    Takeover { epoch_seen: u64, manual: bool },
    /// Primary → watchdog, before it acknowledges writes without `peer`:
    /// "`peer` is outdated as of (epoch, seq)".
    Outdate { epoch: u64, peer: String, seq: u64 },
    /// Primary → watchdog: "`peer` caught up with everything up to (epoch, seq)".
    Clear { epoch: u64, peer: String, seq: u64 },
}

impl RequestBody {
    /// A status request that says nothing of outdated nodes.
    pub const STATUS: RequestBody = RequestBody::Status { outdated: None };
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReplyBody {
    /// The lease is renewed (`granted`) or refused; `epoch` is the highest
    /// epoch the replier knows; `node` and `role` say who answered (the
    /// primary learns which remote is the watchdog from these).
    Lease {
        granted: bool,
        epoch: u64,
        node: String,
        role: Role,
    },
    Status {
        node: String,
        role: Role,
        state: RunState,
        epoch: u64,
        /// The role the node's storage (hastd) reported at its last check,
        /// whatever hastmon's own role: a pair run by hand before hastmon
        /// was started has a primary the watchdog must not complain about.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        storage: Option<Role>,
    },
    /// Takeover granted: promote with this epoch. `node` names the
    /// watchdog, so the new primary knows at once which node is its data
    /// peer (its `fence_peer` needs it on the first degraded write).
    Granted {
        epoch: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
    },
    /// Request refused, with the reason (logged by the asker). `retry_ms`:
    /// the refusal is temporary and the same request may succeed that many
    /// milliseconds later (the watchdog still honours a lease).
    Refused {
        reason: String,
        epoch: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_ms: Option<u64>,
    },
    Ack,
}

/// Parses a JSON body, bounded by [`BODY_MAX`].
pub fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, String> {
    if body.len() > BODY_MAX {
        return Err(format!(
            "message of {} bytes exceeds {BODY_MAX}",
            body.len()
        ));
    }
    serde_json::from_slice(body).map_err(|e| format!("malformed message: {e}"))
}

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these plain structs cannot fail.
    serde_json::to_vec(msg).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let r = Request {
            resource: "r0".into(),
            from: "nodea".into(),
            body: RequestBody::Outdate {
                epoch: 3,
                peer: "nodeb".into(),
                seq: 2,
            },
        };
        let back: Request = decode(&encode(&r)).unwrap();
        assert_eq!(back, r);
        assert!(decode::<Request>(b"{\"resource\":1}").is_err());
        assert!(decode::<Request>(&vec![b' '; BODY_MAX + 1]).is_err());
        let rep = ReplyBody::Status {
            node: "nodew".into(),
            role: Role::Watchdog,
            state: RunState::Stopped,
            epoch: 1,
            storage: None,
        };
        assert_eq!(decode::<ReplyBody>(&encode(&rep)).unwrap(), rep);
    }

    /// Replies of a hastmon that predates `storage`, `node` and `retry_ms`
    /// still decode, and the new fields are left out when empty.
    #[test]
    fn older_replies_decode() {
        let cases: [(&str, ReplyBody); 3] = [
            (
                r#"{"kind":"status","node":"a","role":"init","state":"stopped","epoch":7}"#,
                ReplyBody::Status {
                    node: "a".into(),
                    role: Role::Init,
                    state: RunState::Stopped,
                    epoch: 7,
                    storage: None,
                },
            ),
            (
                r#"{"kind":"granted","epoch":8}"#,
                ReplyBody::Granted {
                    epoch: 8,
                    node: None,
                },
            ),
            (
                r#"{"kind":"refused","reason":"no","epoch":8}"#,
                ReplyBody::Refused {
                    reason: "no".into(),
                    epoch: 8,
                    retry_ms: None,
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(decode::<ReplyBody>(text.as_bytes()).unwrap(), want);
            assert_eq!(encode(&want), text.as_bytes());
        }
    }

    /// A status request without `outdated` (an older watchdog) decodes,
    /// and one with it still decodes in a hastmon that predates the field
    /// (there `status` had no fields: serde skips the unknown one).
    #[test]
    fn status_requests_across_versions() {
        let old = r#"{"kind":"status"}"#;
        assert_eq!(
            decode::<RequestBody>(old.as_bytes()).unwrap(),
            RequestBody::STATUS
        );
        assert_eq!(encode(&RequestBody::STATUS), old.as_bytes());
        let new = RequestBody::Status {
            outdated: Some(vec!["b".into()]),
        };
        let text = encode(&new);
        assert_eq!(text, br#"{"kind":"status","outdated":["b"]}"#);
        assert_eq!(decode::<RequestBody>(&text).unwrap(), new);
        #[derive(Debug, PartialEq, Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        enum Before {
            Status,
            Complain { epoch: u64, outdated: Vec<String> },
        }
        assert_eq!(decode::<Before>(&text).unwrap(), Before::Status);
        assert!(decode::<Before>(br#"{"kind":"complain","epoch":1,"outdated":[]}"#).is_ok());
    }
}
