//! Stand-ins for the code forges' REST APIs, over real HTTP on 127.0.0.1: [`github::GitHub`]
//! (REST v3 pull requests) and [`gitlab::GitLab`] (REST v4 merge requests).
//!
//! Each stand-in serves HTTP/1.1 (hyper, through axum) on a thread of its own with its own
//! runtime, so it answers whether the test is async or blocks on a child process (`leash pr`,
//! `git push`). It
//! - **records** every request ([`Request`]: method, raw path, decoded query, headers, JSON body,
//!   time), whatever the answer was (only a body over [`MAX_API_BODY`], refused with 413, is
//!   not recorded);
//! - **checks** what the providers document: the method and path, the token (GitHub:
//!   `Authorization: Bearer T` or `token T`; GitLab: `PRIVATE-TOKEN: T` or `Authorization:
//!   Bearer T`), `Content-Type: application/json` on writes, GitHub's `Accept` and `User-Agent`,
//!   the body's fields and their types (a field the API does not document is refused, where the
//!   real API would silently ignore it, so a misspelt field fails a test instead of passing
//!   unnoticed), and the body size limits;
//! - **answers** with the providers' shapes, errors included: 401, 404, GitHub's 422 "A pull
//!   request already exists", GitLab's 409 "Another open merge request already exists", rate
//!   limits (GitHub 403/429 with `x-ratelimit-*` or `retry-after`, GitLab 429 with `Retry-After`
//!   and `RateLimit-*`) for the next N requests when a test asks;
//! - lets a test act as a user would (close or merge a pull request) and read the pull requests.
//!
//! They serve plain HTTP (which a product should accept for loopback addresses only), or HTTPS
//! with a certificate from a [`TestCa`] made for the run (`tls(&ca)` on the builders), so a test
//! can show that a client trusts exactly the CA it is given (`--api-ca-file`) and no other.
//!
//! Tokens are generated per run with [`random_token`]; nothing secret is committed. Dropping a
//! stand-in stops its server (its runtime and every connection with it).
//!
//! The loopback server underneath is shared with [`crate::git_server`].

pub mod github;
pub mod gitlab;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::Request as HttpRequest;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::Value;
use tokio::sync::oneshot;

/// Request bodies larger than this are refused with 413 (GitLab's description limit is 1 MiB
/// of characters, up to 4 MiB of UTF-8; nothing a test sends is larger).
pub const MAX_API_BODY: usize = 8 << 20;

/// One request as a stand-in received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `GET`, `POST`, `PATCH`, `PUT`, …
    pub method: String,
    /// The path exactly as sent, percent-escapes included (GitLab's project ids are
    /// `group%2Fproject`).
    pub path: String,
    /// The decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// Every header, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, when it is JSON.
    pub json: Option<Value>,
    /// The body as text (lossy UTF-8); empty when there was none.
    pub body: String,
    /// When the request arrived.
    pub at: SystemTime,
}

impl Request {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `METHOD path` (with the raw query when there is one), for assertions and messages.
    pub fn line(&self) -> String {
        if self.query.is_empty() {
            format!("{} {}", self.method, self.path)
        } else {
            let query: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&self.query)
                .finish();
            format!("{} {}?{}", self.method, self.path, query)
        }
    }

    /// Whether `text` appears anywhere in the request except the header named `except` (used to
    /// check that a token travels only where it belongs).
    pub fn contains_outside(&self, text: &str, except: &str) -> bool {
        self.path.contains(text)
            || self
                .query
                .iter()
                .any(|(k, v)| k.contains(text) || v.contains(text))
            || self.body.contains(text)
            || self
                .headers
                .iter()
                .any(|(n, v)| !n.eq_ignore_ascii_case(except) && v.contains(text))
    }
}

/// A fresh random token, `prefix` followed by 40 hex digits from the kernel's random source:
/// generated per run, so no secret is ever committed.
pub fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 20];
    let mut filled = 0;
    // getrandom(2) may return fewer bytes than asked; a bounded number of tries.
    for _ in 0..16 {
        if filled == bytes.len() {
            break;
        }
        let rest = &mut bytes[filled..];
        // SAFETY: the pointer and length describe the writable `rest` slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n > 0 {
            filled += n.unsigned_abs();
        }
    }
    assert_eq!(filled, bytes.len(), "getrandom(2) gave no randomness");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// An answer: status, headers and body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
}

impl Reply {
    /// A JSON answer.
    pub(crate) fn json(status: u16, body: &Value) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            content_type: "application/json; charset=utf-8",
            body: body.to_string().into_bytes(),
        }
    }

    /// A plain-text answer.
    pub(crate) fn text(status: u16, body: &str) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            content_type: "text/plain",
            body: body.as_bytes().to_vec(),
        }
    }

    /// Adds a header.
    pub(crate) fn with(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_owned(), value.into()));
        self
    }

    /// The HTTP response.
    pub(crate) fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(self.content_type),
        );
        for (name, value) in self.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(&value),
            ) {
                headers.append(name, value);
            }
        }
        response
    }
}

/// Reads a request whole (at most [`MAX_API_BODY`] bytes) into its recorded form; an oversized
/// or broken body gives the answer to send instead.
pub(crate) async fn read_request(request: HttpRequest) -> Result<Request, Reply> {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_API_BODY) {
        return Err(Reply::text(413, "request body too large"));
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_API_BODY).await else {
        return Err(Reply::text(413, "request body too large or broken"));
    };
    let query = parts
        .uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Ok(Request {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query,
        headers,
        json: serde_json::from_slice(&body).ok(),
        body: String::from_utf8_lossy(&body).into_owned(),
        at: SystemTime::now(),
    })
}

/// Whether the request's `Content-Type` is JSON (`application/json`, parameters allowed).
pub(crate) fn is_json_content(req: &Request) -> bool {
    req.header("content-type").is_some_and(|v| {
        v.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    })
}

/// The value of an `Authorization` header with `scheme` (any case), if the request has one.
pub(crate) fn authorization<'a>(req: &'a Request, scheme: &str) -> Option<&'a str> {
    let value = req.header("authorization")?;
    let (s, rest) = value.split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

/// Checks a JSON object body against the documented fields: `fields` maps each name to its
/// kind. Returns the object, or the first problem: not an object, an undocumented field, or a
/// field of the wrong kind.
pub(crate) fn check_fields<'a>(
    body: &'a Value,
    fields: &[(&str, Kind)],
) -> Result<&'a serde_json::Map<String, Value>, String> {
    let object = body
        .as_object()
        .ok_or_else(|| "the body is not a JSON object".to_owned())?;
    for (name, value) in object {
        let Some((_, kind)) = fields.iter().find(|(n, _)| n == name) else {
            return Err(format!("{name:?} is not a documented field"));
        };
        if !kind.accepts(value) {
            return Err(format!("{name:?}: {value} is not {}", kind.name()));
        }
    }
    Ok(object)
}

/// The JSON kind of a documented field.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// A string.
    Str,
    /// A boolean.
    Bool,
    /// An integer.
    Int,
    /// An array of integers.
    IntArray,
    /// A string, or an array of strings (GitLab's labels).
    StrOrStrArray,
}

impl Kind {
    fn accepts(self, v: &Value) -> bool {
        match self {
            Kind::Str => v.is_string(),
            Kind::Bool => v.is_boolean(),
            Kind::Int => v.is_i64() || v.is_u64(),
            Kind::IntArray => v
                .as_array()
                .is_some_and(|a| a.iter().all(|x| x.is_i64() || x.is_u64())),
            Kind::StrOrStrArray => {
                v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
            }
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Str => "a string",
            Kind::Bool => "a boolean",
            Kind::Int => "an integer",
            Kind::IntArray => "an array of integers",
            Kind::StrOrStrArray => "a string or an array of strings",
        }
    }
}

/// The next `count` requests answered as rate limited, then normal service.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Throttle {
    /// Requests still to refuse.
    pub(crate) remaining: usize,
    /// How long after the refusal the limit resets (the headers' reset time / retry-after).
    pub(crate) reset_after: Duration,
    /// GitHub: secondary limit (retry-after) instead of the primary one.
    pub(crate) secondary: bool,
    /// The status to answer (GitHub documents 403 or 429; GitLab 429).
    pub(crate) status: u16,
}

impl Throttle {
    /// Whether this request is refused (and counts it).
    pub(crate) fn take(&mut self) -> bool {
        if self.remaining == 0 {
            return false;
        }
        self.remaining -= 1;
        true
    }
}

/// Seconds since the epoch `after` from now, rounded up (so a client that waits until then is
/// never early).
pub(crate) fn epoch_after(after: Duration) -> u64 {
    let at = SystemTime::now() + after;
    let d = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Whole seconds in `d`, rounded up.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Now as `2026-12-07T14:00:00Z` (GitHub) or with milliseconds (GitLab).
pub(crate) fn timestamp(millis: bool) -> String {
    let now = chrono::Utc::now();
    if millis {
        now.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
    } else {
        now.format("%Y-%m-%dT%H:%M:%SZ").to_string()
    }
}

/// Locks a stand-in's state, surviving a panicked holder (the state stays usable for the
/// assertions that follow).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A private certificate authority made for one run, and the server certificate it signed for
/// `127.0.0.1` and `localhost`: what a stand-in serves HTTPS with, and what a client must be
/// told to trust (a product's `--api-ca-file`, git's `http.sslCAInfo`).
#[derive(Clone)]
pub struct TestCa {
    ca_pem: String,
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl TestCa {
    /// Generates the CA and the server certificate (ECDSA P-256; nothing is written to disk).
    pub fn generate() -> io::Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, SanType,
        };
        let err = |e: rcgen::Error| io::Error::other(format!("generating the test CA: {e}"));
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name
            .push(DnType::CommonName, "leash-lab test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
        let ca_pem = ca_cert.pem();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).map_err(err)?;
        leaf.subject_alt_names
            .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().map_err(err)?;
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(err)?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![leaf_cert.der().clone()], key)
        .map_err(io::Error::other)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TestCa {
            ca_pem,
            config: Arc::new(config),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

/// A TLS listener for axum: accepts TCP, then completes the handshake (at most 5 s; a failed
/// handshake, such as a client that does not trust the CA, drops that connection only).
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                // Out of descriptors or similar: wait a little instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let handshake = self.acceptor.accept(tcp);
            if let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(5), handshake).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// An HTTP server on 127.0.0.1 (a port the kernel picks) serving a router on a thread of its
/// own, with its own single-threaded runtime; HTTPS when given a [`TestCa`]. Dropping it stops
/// the runtime: the listener, every connection and every task.
pub(crate) struct Loopback {
    addr: SocketAddr,
    tls: bool,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Loopback {
    /// Binds and starts serving `app`.
    pub(crate) fn start(name: &str, app: Router, tls: Option<&TestCa>) -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let acceptor = tls.map(|ca| tokio_rustls::TlsAcceptor::from(ca.config.clone()));
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(tcp) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    match acceptor {
                        None => tokio::select! {
                            _ = axum::serve(tcp, app) => {}
                            _ = stopped => {}
                        },
                        Some(acceptor) => tokio::select! {
                            _ = axum::serve(TlsListener { tcp, acceptor }, app) => {}
                            _ = stopped => {}
                        },
                    }
                });
                // Dropping the runtime here cancels the connections' tasks.
            })?;
        Ok(Loopback {
            addr,
            tls: tls.is_some(),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT` or `https://…`.
    pub(crate) fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
