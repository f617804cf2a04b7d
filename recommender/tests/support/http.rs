//! Loopback HTTP for the tests that run `leash serve` as a process: a free port, a minimal
//! GET (no client library, so the tests see the status and body the server wrote), and a
//! poll loop.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A loopback address with a port nothing listens on (the OS picked it, then it was freed).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}

/// An answer to [`get_answer`].
pub struct Answer {
    /// The status code (0 when the status line did not parse).
    pub status: u16,
    /// Whether the body came with `Transfer-Encoding: chunked` (it is decoded in `body`).
    pub chunked: bool,
    /// The body.
    pub body: String,
}

/// A minimal HTTP/1.1 GET: the status and the body.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    get_answer(addr, path).map(|a| (a.status, a.body))
}

/// A minimal HTTP/1.1 GET (`Connection: close`, read until EOF, at most 30 s of silence).
pub fn get_answer(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    Ok(parse_answer(&raw))
}

/// The status and body of an HTTP/1.1 answer read to its end.
pub fn parse_answer(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Answer {
        status,
        chunked,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `check` every `every` until it holds; fails the test after `within`.
#[track_caller]
pub fn wait_for(what: &str, within: Duration, every: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(every);
    }
}

/// An answer to [`request`]: status, headers (names lower-case, in order) and body.
pub struct Reply {
    /// The status code (0 when the status line did not parse).
    pub status: u16,
    /// The headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: String,
}

impl Reply {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 request with `headers` and `body` (`Connection: close`, read until EOF):
/// for the tests of headers, cookies and forms.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    request_on(&mut s, addr, method, path, headers, body)
}

/// [`request`] on a connection already open to `addr` (e.g. TLS over it). A connection that
/// ends without TLS's close_notify after an answer counts as ended.
pub fn request_on(
    s: &mut (impl std::io::Read + std::io::Write),
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Reply> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        other => {
            other?;
        }
    }
    let answer = parse_answer(&raw);
    let text = String::from_utf8_lossy(&raw);
    let head = text.split_once("\r\n\r\n").map_or(&*text, |(h, _)| h);
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(Reply {
        status: answer.status,
        headers,
        body: answer.body,
    })
}
