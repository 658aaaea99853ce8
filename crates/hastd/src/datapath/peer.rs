//! The state of the link to the peer, as `hastctl status` shows it in its
//! `peer` field. Typed here, so the status rules ask `is_connected()` or
//! `is_split_brain()` instead of comparing text; the JSON keeps the same
//! strings (`connected`, `split-brain: …`, the last connection error).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerState {
    /// No remote is configured.
    None,
    /// A primary's first connection attempt is under way.
    Connecting,
    Connected,
    /// The link went away; why, when it is worth saying ("primary of epoch
    /// 3 superseded").
    Disconnected(Option<String>),
    /// The last handshake found that both copies were written alone: the
    /// message says how it was detected.
    SplitBrain(String),
    /// The last handshake was refused for another reason (a stale epoch,
    /// another resource); the message says which.
    Refused(String),
    /// The last connection attempt failed before a handshake decided
    /// anything (no route, timeout, authentication).
    Failed(String),
}

impl PeerState {
    /// The state of a resource with or without a remote, before any
    /// connection.
    pub fn initial(peer_configured: bool) -> PeerState {
        if peer_configured {
            PeerState::Connecting
        } else {
            PeerState::None
        }
    }

    pub fn is_connected(&self) -> bool {
        *self == PeerState::Connected
    }

    pub fn is_split_brain(&self) -> bool {
        matches!(self, PeerState::SplitBrain(_))
    }
}

/// A connection attempt's error text is a failure unless a handshake rule
/// classified it.
impl From<String> for PeerState {
    fn from(why: String) -> PeerState {
        PeerState::Failed(why)
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerState::None => f.write_str("none"),
            PeerState::Connecting => f.write_str("connecting"),
            PeerState::Connected => f.write_str("connected"),
            PeerState::Disconnected(None) => f.write_str("disconnected"),
            PeerState::Disconnected(Some(why)) => write!(f, "disconnected: {why}"),
            PeerState::SplitBrain(m) | PeerState::Refused(m) | PeerState::Failed(m) => {
                f.write_str(m)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_as_before() {
        // (state, the status text it had as a string, connected, split-brain)
        let cases = [
            (PeerState::initial(false), "none", false, false),
            (PeerState::initial(true), "connecting", false, false),
            (PeerState::Connected, "connected", true, false),
            (PeerState::Disconnected(None), "disconnected", false, false),
            (
                PeerState::Disconnected(Some("primary of epoch 3 superseded".into())),
                "disconnected: primary of epoch 3 superseded",
                false,
                false,
            ),
            (
                PeerState::SplitBrain("split-brain".into()),
                "split-brain",
                false,
                true,
            ),
            (
                PeerState::SplitBrain("split-brain: both copies were written".into()),
                "split-brain: both copies were written",
                false,
                true,
            ),
            (
                PeerState::Refused("refused: stale epoch".into()),
                "refused: stale epoch",
                false,
                false,
            ),
            (
                PeerState::from("10.0.0.2:8457: connection refused".to_owned()),
                "10.0.0.2:8457: connection refused",
                false,
                false,
            ),
        ];
        for (state, text, connected, split) in cases {
            assert_eq!(state.to_string(), text);
            assert_eq!(state.is_connected(), connected, "{text}");
            assert_eq!(state.is_split_brain(), split, "{text}");
        }
    }
}
