//! Just enough HTTP/1.1 for a scrape, with no I/O: [`route`] reads the bytes
//! received so far and says whether the request head is complete and what
//! it asks for; [`response`] builds the whole answer. Every answer closes
//! the connection (one request per connection), so bodies, keep-alive and
//! pipelining do not exist here. Anything that is not a well-formed request
//! line and header block is a 400; nothing here panics or allocates more
//! than the bytes it was given.

/// The request line and headers may not be longer; a scrape sends about
/// 200 bytes.
pub const HEAD_BYTES_MAX: usize = 8 * 1024;

/// What a request head asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (any query string).
    Metrics,
    /// Another path.
    NotFound,
    /// A method other than GET.
    MethodNotAllowed,
    /// Not a request line and headers of HTTP/1.0 or 1.1.
    BadRequest,
    /// No end of the head within [`HEAD_BYTES_MAX`].
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    BadRequest,
    NotFound,
    MethodNotAllowed,
    HeaderTooLarge,
    Unavailable,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::MethodNotAllowed => 405,
            Status::HeaderTooLarge => 431,
            Status::Unavailable => 503,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::BadRequest => "Bad Request",
            Status::NotFound => "Not Found",
            Status::MethodNotAllowed => "Method Not Allowed",
            Status::HeaderTooLarge => "Request Header Fields Too Large",
            Status::Unavailable => "Service Unavailable",
        }
    }
}

impl Route {
    /// The status of the answer, for routes answered without the daemon.
    pub fn status(self) -> Status {
        match self {
            Route::Metrics => Status::Ok,
            Route::NotFound => Status::NotFound,
            Route::MethodNotAllowed => Status::MethodNotAllowed,
            Route::BadRequest => Status::BadRequest,
            Route::TooLarge => Status::HeaderTooLarge,
        }
    }
}

/// `None` while the head is incomplete (read more); the route once the
/// blank line that ends it arrived, or once `buf` is too long to be a head.
pub fn route(buf: &[u8]) -> Option<Route> {
    // RFC 9112 §2.2: empty lines before the request line are ignored.
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let buf = &buf[start..];
    let Some(end) = head_end(buf) else {
        return (start + buf.len() > HEAD_BYTES_MAX).then_some(Route::TooLarge);
    };
    if start + end > HEAD_BYTES_MAX {
        return Some(Route::TooLarge);
    }
    let mut lines = buf[..end].split(|&b| b == b'\n').map(trim_cr);
    let request_line = lines.next().unwrap_or_default();
    let Some((method, target)) = request_line_parts(request_line) else {
        return Some(Route::BadRequest);
    };
    for h in lines.filter(|l| !l.is_empty()) {
        if !header_ok(h) {
            return Some(Route::BadRequest);
        }
    }
    if method != b"GET" {
        return Some(Route::MethodNotAllowed);
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    Some(if path == b"/metrics" {
        Route::Metrics
    } else {
        Route::NotFound
    })
}

/// The index just past the blank line that ends the head (`\r\n\r\n` or a
/// bare `\n\n`).
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut prev_newline = false;
    let mut i = 0;
    while i < buf.len() {
        match buf[i] {
            b'\n' if prev_newline => return Some(i + 1),
            b'\n' => prev_newline = true,
            b'\r' if buf.get(i + 1) == Some(&b'\n') => {}
            _ => prev_newline = false,
        }
        i += 1;
    }
    None
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `METHOD SP target SP HTTP/1.x` → (method, target).
fn request_line_parts(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut parts = line.split(|&b| b == b' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return None;
    }
    let target_ok = (target.first() == Some(&b'/') || target == b"*")
        && target.iter().all(|&b| b.is_ascii_graphic());
    (target_ok && (version == b"HTTP/1.1" || version == b"HTTP/1.0")).then_some((method, target))
}

/// `name: value` with a token name and no control bytes but tab.
fn header_ok(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && name.iter().all(|&b| is_tchar(b))
        && value.iter().all(|&b| b == b'\t' || !b.is_ascii_control())
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The whole answer: status line, headers, body; the connection closes
/// after it.
pub fn response(status: Status, content_type: &str, body: &str) -> Vec<u8> {
    let allow = if status == Status::MethodNotAllowed {
        "Allow: GET\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        status.code(),
        status.reason(),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The short text body of an answer other than 200.
pub fn error_body(status: Status) -> String {
    format!("{} {}\n", status.code(), status.reason())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let cases: &[(&[u8], Option<Route>)] = &[
            (b"", None),
            (b"GET /metrics HTTP/1.1\r\n", None),
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\n", None),
            (b"GET /metrics HTTP/1.1\r\n\r\n", Some(Route::Metrics)),
            (
                b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9100\r\nUser-Agent: Prometheus/2.42.0\r\nAccept: text/plain;version=0.0.4;q=1\r\nX-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n",
                Some(Route::Metrics),
            ),
            (b"GET /metrics?x=1 HTTP/1.0\n\n", Some(Route::Metrics)),
            (b"\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n", Some(Route::Metrics)),
            (b"GET / HTTP/1.1\r\n\r\n", Some(Route::NotFound)),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Some(Route::NotFound)),
            (b"GET * HTTP/1.1\r\n\r\n", Some(Route::NotFound)),
            (b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\n", Some(Route::MethodNotAllowed)),
            (b"HEAD /metrics HTTP/1.1\r\n\r\n", Some(Route::MethodNotAllowed)),
            (b"get /metrics HTTP/1.1\r\n\r\n", Some(Route::MethodNotAllowed)),
            (b"GET /metrics HTTP/2.0\r\n\r\n", Some(Route::BadRequest)),
            (b"GET /metrics\r\n\r\n", Some(Route::BadRequest)),
            (b"GET  /metrics HTTP/1.1\r\n\r\n", Some(Route::BadRequest)),
            (b"GET metrics HTTP/1.1\r\n\r\n", Some(Route::BadRequest)),
            (b"GET /metrics HTTP/1.1 x\r\n\r\n", Some(Route::BadRequest)),
            (b"G(T /metrics HTTP/1.1\r\n\r\n", Some(Route::BadRequest)),
            (b"GET /met\x01rics HTTP/1.1\r\n\r\n", Some(Route::BadRequest)),
            (b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n", Some(Route::BadRequest)),
            (b"GET /metrics HTTP/1.1\r\n: empty name\r\n\r\n", Some(Route::BadRequest)),
            (b"GET /metrics HTTP/1.1\r\nX: a\x00b\r\n\r\n", Some(Route::BadRequest)),
            (b"\xff\xfe\r\n\r\n", Some(Route::BadRequest)),
            (b"hello\n\n", Some(Route::BadRequest)),
        ];
        for (bytes, want) in cases {
            assert_eq!(route(bytes), *want, "{:?}", String::from_utf8_lossy(bytes));
        }
    }

    #[test]
    fn head_size_is_bounded() {
        let mut endless = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while endless.len() <= HEAD_BYTES_MAX {
            assert_eq!(route(&endless), None);
            endless.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(route(&endless), Some(Route::TooLarge));
        endless.extend_from_slice(b"\r\n");
        assert_eq!(route(&endless), Some(Route::TooLarge));
        // Blank lines count too: they are bytes the client sent.
        assert_eq!(route(&[b'\n'; HEAD_BYTES_MAX + 1]), Some(Route::TooLarge));
    }

    #[test]
    fn answers() {
        let ok = response(Status::Ok, "text/plain", "a 1\n");
        assert_eq!(
            ok,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\na 1\n"
        );
        let body = error_body(Status::MethodNotAllowed);
        let text =
            String::from_utf8(response(Status::MethodNotAllowed, "text/plain", &body)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nAllow: GET\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n405 Method Not Allowed\n"), "{text}");
    }
}
