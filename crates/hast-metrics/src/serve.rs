//! The listener of `metrics_listen`: it faces whoever can reach the port,
//! so every connection is bounded. One request per connection; the head
//! must arrive within `read_timeout` and fit in [`HEAD_BYTES_MAX`]; the
//! answer must be taken within `write_timeout`; at most `connections_max`
//! connections are open at once.
//!
//! When all slots are taken, the oldest connection still sending its head
//! is closed to make room rather than the newcomer refused: a scraper sends
//! its whole request at once and is answered in milliseconds, so idle or
//! slow connections, however many, cannot keep a real scrape out, while
//! the open connections stay bounded. Only when every slot is answering a
//! request is the newcomer closed at once.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use crate::http::{self, Route, Status, HEAD_BYTES_MAX};
use crate::text::CONTENT_TYPE;

const READ_CHUNK_BYTES: usize = 1024;
/// After the answer, what a client still sends is read and dropped for at
/// most this long or this much, so that closing with unread bytes (a POST
/// body, an endless header) does not reset the connection before the
/// client read the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections_max: usize,
    /// For the whole request head, from the accept.
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// For the daemon to build its snapshot; past it the answer is 503.
    pub render_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            // Prometheus scrapes once per target; a few servers scraping
            // one node, plus a curl, fit with room to spare.
            connections_max: 16,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            // Prometheus' default scrape timeout is 10 s.
            render_timeout: Duration::from_secs(8),
        }
    }
}

/// Binds `host:port` (`[v6]` brackets allowed), as the other listeners.
pub async fn bind(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    TcpListener::bind((host, port)).await
}

struct Open {
    abort: AbortHandle,
    /// Still reading its request head (may be closed to make room).
    reading: Arc<AtomicBool>,
}

/// Serves `GET /metrics` with what `render` returns (`None`: the daemon
/// cannot answer now, 503) until the task is aborted.
pub async fn serve<F, Fut>(listener: TcpListener, limits: Limits, render: F)
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<String>> + Send + 'static,
{
    let render = Arc::new(render);
    let mut open: VecDeque<Open> = VecDeque::with_capacity(limits.connections_max + 1);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: wait instead of spinning.
                tracing::warn!("metrics accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        open.retain(|c| !c.abort.is_finished());
        if open.len() >= limits.connections_max {
            match open.iter().position(|c| c.reading.load(Relaxed)) {
                Some(i) => {
                    if let Some(c) = open.remove(i) {
                        c.abort.abort();
                    }
                    tracing::debug!(%peer, "metrics: all connections busy; closed the oldest idle one");
                }
                None => {
                    tracing::debug!(%peer, "metrics: all connections answering; closed");
                    continue;
                }
            }
        }
        let reading = Arc::new(AtomicBool::new(true));
        let task = tokio::spawn(connection(stream, limits, render.clone(), reading.clone()));
        open.push_back(Open {
            abort: task.abort_handle(),
            reading,
        });
    }
}

async fn connection<F, Fut>(
    mut stream: TcpStream,
    limits: Limits,
    render: Arc<F>,
    reading: Arc<AtomicBool>,
) where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Option<String>> + Send + 'static,
{
    let _ = stream.set_nodelay(true);
    let deadline = tokio::time::Instant::now() + limits.read_timeout;
    let mut buf = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    let route = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(r) = http::route(&buf) {
            break r;
        }
        debug_assert!(buf.len() <= HEAD_BYTES_MAX);
    };
    reading.store(false, Relaxed);
    let answer = match route {
        Route::Metrics => match tokio::time::timeout(limits.render_timeout, render()).await {
            Ok(Some(text)) => http::response(Status::Ok, CONTENT_TYPE, &text),
            Ok(None) | Err(_) => plain(Status::Unavailable),
        },
        other => plain(other.status()),
    };
    if tokio::time::timeout(limits.write_timeout, stream.write_all(&answer))
        .await
        .is_err()
    {
        return;
    }
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        let mut dropped = 0;
        while dropped < LINGER_BYTES_MAX {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    })
    .await;
}

fn plain(status: Status) -> Vec<u8> {
    http::response(
        status,
        "text/plain; charset=utf-8",
        &http::error_body(status),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn start(limits: Limits) -> std::net::SocketAddr {
        let l = bind("127.0.0.1", 0).await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, limits, || async {
            Some("hast_up 1\n".to_string())
        }));
        addr
    }

    async fn ask(addr: std::net::SocketAddr, req: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("answer in time")
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn answers_by_route() {
        let addr = start(Limits::default()).await;
        let cases: &[(&[u8], &str)] = &[
            (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                "HTTP/1.1 200 OK",
            ),
            (b"GET /nope HTTP/1.1\r\n\r\n", "HTTP/1.1 404 "),
            (
                b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
                "HTTP/1.1 405 ",
            ),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
                "HTTP/1.1 400 ",
            ),
        ];
        for (req, want) in cases {
            let got = ask(addr, req).await;
            assert!(
                got.starts_with(want),
                "{:?}: {got}",
                String::from_utf8_lossy(req)
            );
            assert!(got.contains("\r\nConnection: close\r\n"), "{got}");
        }
        let got = ask(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(got.ends_with("\r\n\r\nhast_up 1\n"), "{got}");
        assert!(
            got.contains("Content-Type: text/plain; version=0.0.4"),
            "{got}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_dropped_at_the_read_deadline() {
        let addr = start(Limits::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metr").await.unwrap();
        let mut out = Vec::new();
        // Paused clock: the 5 s deadline passes without waiting 5 s.
        let n = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
            .await
            .expect("closed by the deadline");
        assert_eq!(n.unwrap_or(0), 0);
    }

    #[tokio::test]
    async fn idle_connections_make_room_for_a_scrape() {
        let limits = Limits {
            connections_max: 4,
            ..Limits::default()
        };
        let addr = start(limits).await;
        let mut idle = Vec::new();
        for _ in 0..20 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let got = ask(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 200 OK"), "{got}");
    }

    #[tokio::test]
    async fn a_busy_render_gives_503_in_time() {
        let l = bind("127.0.0.1", 0).await.unwrap();
        let addr = l.local_addr().unwrap();
        let limits = Limits {
            render_timeout: Duration::from_millis(100),
            ..Limits::default()
        };
        tokio::spawn(serve(l, limits, || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Some(String::new())
        }));
        let got = ask(addr, b"GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(got.starts_with("HTTP/1.1 503 "), "{got}");
    }
}
