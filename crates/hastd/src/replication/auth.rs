//! The tokio shell around `hast_repl::auth`: the first three frames of
//! every replication connection, on both sides. Nothing here reads or
//! changes resource state; the listener calls [`respond`] before it looks
//! at a HELLO, the primary's connector calls [`initiate`] before it sends
//! one.

use std::time::Duration;

use hast_repl::auth::{self, Auth, AuthError, AuthReply, Challenge};
use hast_repl::Kind;
use rand::RngCore;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::link::wire::{read_frame, write_all};

/// "auth: ..." in status: what protects a resource's replication link.
pub fn mode(secret: Option<&hast_conf::Secret>) -> &'static str {
    match secret {
        Some(_) => "hmac-sha256",
        None => "none",
    }
}

/// The keys a resource accepts, the offered one first (`None`: no secret).
pub fn keys(secret: Option<&hast_conf::Secret>) -> Option<Vec<&[u8]>> {
    secret.map(|s| s.accepted().collect())
}

fn nonce() -> auth::Nonce {
    let mut n = [0u8; auth::NONCE_LEN];
    // The OS's CSPRNG: a predictable nonce would let a recorded exchange
    // be replayed.
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}

pub async fn send<W: AsyncWrite + Unpin>(
    wr: &mut W,
    kind: Kind,
    payload: &[u8],
    timeout: Duration,
) -> Result<(), String> {
    let mut out = Vec::new();
    hast_repl::encode_message_frame(kind, 0, 0, 0, payload, &mut out);
    write_all(wr, &out, timeout)
        .await
        .map_err(|e| e.to_string())
}

/// Reads one frame that must be of `kind` (its checksum verified).
pub async fn expect<R: AsyncRead + Unpin>(
    rd: &mut R,
    kind: Kind,
    timeout: Duration,
) -> Result<Vec<u8>, String> {
    let f = read_frame(rd, timeout, timeout)
        .await
        .map_err(|e| e.to_string())?;
    if f.header.kind != kind {
        return Err(format!("expected {kind}, got {}", f.header.kind));
    }
    Ok(f.payload)
}

/// The secondary's side, first half: sends a fresh CHALLENGE and reads the
/// primary's AUTH. The caller then finds the resource it names and calls
/// [`finish`].
pub async fn challenge<R, W>(
    rd: &mut R,
    wr: &mut W,
    timeout: Duration,
) -> Result<(Challenge, Auth), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let ch = Challenge::new(nonce());
    send(wr, Kind::Challenge, &ch.encode(), timeout).await?;
    let payload = expect(rd, Kind::Auth, timeout).await?;
    let a = Auth::decode(&payload).map_err(|e| e.to_string())?;
    Ok((ch, a))
}

/// The secondary's side, second half: checks the AUTH against the resource's
/// `secret` and answers; a refusal is sent without a reason (the caller logs
/// it). `Err` means the connection must be closed.
pub async fn finish<W: AsyncWrite + Unpin>(
    wr: &mut W,
    ch: &Challenge,
    a: &Auth,
    secret: Option<&hast_conf::Secret>,
    own_node: &str,
    timeout: Duration,
) -> Result<(), String> {
    let keys = keys(secret);
    match auth::answer(ch, a, keys.as_deref(), own_node) {
        Ok(reply) => send(wr, Kind::AuthReply, &reply.encode(), timeout).await,
        Err(e) => {
            refuse(wr, timeout).await;
            Err(e.to_string())
        }
    }
}

/// Answers AUTH_REPLY refused (no reason) and closes the write half.
pub async fn refuse<W: AsyncWrite + Unpin>(wr: &mut W, timeout: Duration) {
    let _ = send(wr, Kind::AuthReply, &AuthReply::Refused.encode(), timeout).await;
    let _ = tokio::io::AsyncWriteExt::shutdown(wr).await;
}

/// The primary's side: answers the secondary's CHALLENGE and checks its
/// proof. Returns the secondary's node name.
pub async fn initiate<R, W>(
    rd: &mut R,
    wr: &mut W,
    resource: &str,
    own_node: &str,
    secret: Option<&hast_conf::Secret>,
    timeout: Duration,
) -> Result<String, String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let payload = expect(rd, Kind::Challenge, timeout).await.map_err(|e| {
        format!(
            "no authentication challenge from the secondary ({e}): it closes connections \
                 from addresses that are no resource's remote there, see its log"
        )
    })?;
    let ch = Challenge::decode(&payload).map_err(|e| e.to_string())?;
    if ch.version != hast_repl::PROTOCOL_VERSION {
        return Err(AuthError::Version { theirs: ch.version }.to_string());
    }
    let mut a = Auth {
        nonce: nonce(),
        tag: [0; auth::MAC_LEN],
        resource: resource.to_string(),
        node: own_node.to_string(),
    };
    a.tag = a.transcript(&ch).primary_tag(secret.map(|s| s.current()));
    send(wr, Kind::Auth, &a.encode(), timeout).await?;
    let payload = expect(rd, Kind::AuthReply, timeout).await?;
    let reply = AuthReply::decode(&payload).map_err(|e| e.to_string())?;
    let keys = keys(secret);
    auth::check_reply(&ch, &a, &reply, keys.as_deref()).map_err(|e| e.to_string())
}
