//! The one HTTP client of leash's outbound calls (the git providers' APIs, alert webhooks):
//! HTTPS with certificates verified against the system's roots, and a private CA when one
//! is given; plain `http://` only to a loopback address, where nothing crosses a network.
//!
//! Errors name a URL by its origin (`https://host:port`) only: a webhook URL's path is often
//! its secret (Slack's are), and query strings may carry tokens.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use leash_records::error::Chain;

/// How long one request may take, connection and answer included, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer read, by default: the APIs' answers leash reads are a few kilobytes
/// (a list of pull requests is bounded by the page size).
pub const DEFAULT_MAX_BODY: usize = 8 << 20;

/// Errors of the client. None of them includes a URL's path, query or credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL does not parse or has no host.
    #[error("{url}: not a valid http(s) URL ({reason})")]
    Url {
        /// The URL's origin, or `<unparsable>`.
        url: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Plain `http://` to a host that is not a loopback address.
    #[error("{url}: plain http is accepted only for loopback addresses; use https")]
    Insecure {
        /// The URL's origin.
        url: String,
    },
    /// The private CA file cannot be used.
    #[error("the CA file for HTTPS cannot be used")]
    Ca(#[source] leash_records::tls::Error),
    /// A certificate of the private CA file is not a usable trust anchor.
    #[error("{}: not a usable CA certificate: {message}", path.display())]
    Anchor {
        /// The file.
        path: PathBuf,
        /// rustls' reason.
        message: String,
    },
    /// No trusted root at all: the system has none and no CA file was given.
    #[error("no trusted CA certificates: the system's store is empty or unreadable ({message}); give a CA file")]
    NoRoots {
        /// What the system's store said.
        message: String,
    },
    /// The TLS configuration cannot be built.
    #[error("cannot configure TLS: {0}")]
    Tls(String),
    /// The request failed before an answer: connection, TLS handshake (an unverified
    /// certificate lands here), or the exchange.
    #[error("{method} {url}: request failed: {message}")]
    Request {
        /// The method.
        method: String,
        /// The URL's origin.
        url: String,
        /// The cause, with its chain.
        message: String,
    },
    /// No complete answer within the timeout.
    #[error("{method} {url}: no answer within {}", humantime::format_duration(*after))]
    Timeout {
        /// The method.
        method: String,
        /// The URL's origin.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// The answer's body is larger than the client reads.
    #[error("{method} {url}: the answer is larger than {limit} bytes")]
    TooLarge {
        /// The method.
        method: String,
        /// The URL's origin.
        url: String,
        /// The limit.
        limit: usize,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An answer, read whole (bounded).
#[derive(Debug, Clone)]
pub struct Response {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Response {
    /// A header's value as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTP(S) client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    max_body: usize,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("timeout", &self.timeout)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client trusting the system's roots and, when given, the CA certificates of
    /// `ca_file` (PEM) as well.
    pub fn new(ca_file: Option<&Path>) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A system store may hold certificates rustls cannot use; the others still count.
            let _ = roots.add(cert);
        }
        if let Some(path) = ca_file {
            for cert in leash_records::tls::read_certs(path).map_err(Error::Ca)? {
                roots.add(cert).map_err(|e| Error::Anchor {
                    path: path.to_owned(),
                    message: Chain(&e).to_string(),
                })?;
            }
        }
        if roots.is_empty() {
            let message = native
                .errors
                .first()
                .map_or_else(|| "no certificate found".to_owned(), |e| Chain(e).to_string());
            return Err(Error::NoRoots { message });
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(Chain(&e).to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Client {
            inner: HyperClient::builder(TokioExecutor::new()).build(connector),
            timeout: DEFAULT_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
        })
    }

    /// The same client with another timeout per request.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `request` (its URL checked by [`check_url`] first) and reads the answer whole.
    /// Any status is an answer; only a failed exchange is an error.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Response> {
        check_uri(request.uri())?;
        let method = request.method().to_string();
        let url = origin(request.uri());
        let exchange = async {
            let answer = self
                .inner
                .request(request)
                .await
                .map_err(|e| Error::Request {
                    method: method.clone(),
                    url: url.clone(),
                    message: Chain(&e).to_string(),
                })?;
            let (parts, body) = answer.into_parts();
            let body = Limited::new(body, self.max_body)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                        Error::TooLarge {
                            method: method.clone(),
                            url: url.clone(),
                            limit: self.max_body,
                        }
                    } else {
                        Error::Request {
                            method: method.clone(),
                            url: url.clone(),
                            message: Chain(&*e).to_string(),
                        }
                    }
                })?
                .to_bytes();
            Ok(Response {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(answer) => answer,
            Err(_) => Err(Error::Timeout {
                method,
                url,
                after: self.timeout,
            }),
        }
    }
}

/// Parses `url` and checks that leash may call it: `https://`, or `http://` to a loopback
/// address (`localhost`, 127.0.0.0/8, ::1).
pub fn check_url(url: &str) -> Result<Uri> {
    let uri: Uri = url.parse().map_err(|_| Error::Url {
        url: "<unparsable>".to_owned(),
        reason: "it does not parse",
    })?;
    check_uri(&uri)?;
    Ok(uri)
}

fn check_uri(uri: &Uri) -> Result<()> {
    let Some(host) = uri.host() else {
        return Err(Error::Url {
            url: origin(uri),
            reason: "it has no host",
        });
    };
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(Error::Url {
            url: origin(uri),
            reason: "credentials in a URL are refused; give them in a file",
        });
    }
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback(host) => Ok(()),
        Some("http") => Err(Error::Insecure { url: origin(uri) }),
        _ => Err(Error::Url {
            url: origin(uri),
            reason: "the scheme must be https (or http to a loopback address)",
        }),
    }
}

/// Whether `host` (as in a URL, IPv6 in brackets) is a loopback address or `localhost`.
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `scheme://host[:port]`: how errors and logs name a URL.
pub fn origin(uri: &Uri) -> String {
    match (uri.scheme_str(), uri.host()) {
        (Some(scheme), Some(host)) => match uri.port_u16() {
            Some(port) => format!("{scheme}://{host}:{port}"),
            None => format!("{scheme}://{host}"),
        },
        _ => "<no host>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        for ok in [
            "https://api.github.com/repos",
            "http://127.0.0.1:8080/x",
            "http://[::1]:9/x",
            "http://localhost/x",
            "http://127.9.9.9/",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        let e = check_url("http://hooks.example.test/services/T0/B0/SECRETPATH")
            .expect_err("remote http");
        assert_eq!(
            e.to_string(),
            "http://hooks.example.test: plain http is accepted only for loopback addresses; use https"
        );
        for bad in [
            "ftp://127.0.0.1/",
            "/just/a/path",
            "https://user:pw@github.test/",
        ] {
            let e = check_url(bad).expect_err(bad);
            assert!(!e.to_string().contains("pw"), "{e}");
        }
    }

    #[test]
    fn errors_name_the_origin_only() {
        let uri: Uri = "https://hooks.slack.test:8443/services/T0/B0/XXXX?token=abc"
            .parse()
            .expect("uri");
        assert_eq!(origin(&uri), "https://hooks.slack.test:8443");
    }
}
