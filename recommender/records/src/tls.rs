//! rustls for both ends of the `leash.v1` stream: mutual TLS from PEM files, reloaded when the
//! files change; and for HTTPS servers that ask no client certificate (the UI listener).
//!
//! - [`server_config`] / [`client_config`]: one-shot configurations from [`TlsFiles`];
//!   [`https_server_config`] from a [`ServerIdentity`] alone.
//! - [`ReloadingServerConfig`]: either server configuration, re-read whenever one of its files
//!   changes (Kubernetes swaps secret files through symlinks, so the path is stat'ed following
//!   links). A bad file on reload is logged and the previous configuration kept.
//! - [`incoming`]: TLS connections for `tonic::transport::Server::serve_with_incoming`; each
//!   new connection uses the configuration current at its accept, and its peer certificate's
//!   identity is available to handlers as [`TlsConnectInfo`]. [`handshake`] is its step for
//!   one accepted connection, for servers that run their own accept loop.
//! - [`TlsConnector`]: a connector for `tonic::transport::Endpoint::connect_with_connector`
//!   that dials TCP + TLS, building the client configuration from its files on each connection
//!   so that a reconnect picks up renewed certificates.
//!
//! The crypto provider is always ring, passed explicitly: nothing here reads or installs the
//! process-wide default provider.

use std::{
    fmt,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, LazyLock},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, RootCertStore, ServerConfig, crypto::CryptoProvider, server::WebPkiClientVerifier,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_rustls::{TlsAcceptor, client, server};
use tonic::codegen::http::Uri;

use crate::error::Chain;

/// How often [`ReloadingServerConfig`] checks its files by default.
pub const DEFAULT_POLL: Duration = Duration::from_secs(5);

/// How long a client may take to complete the TLS handshake before [`incoming`] drops it.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The ALPN protocol gRPC runs on.
const H2: &[u8] = b"h2";

/// The ALPN protocol of HTTP/1.1, offered by [`https_server_config`] after `h2`.
pub const HTTP1: &[u8] = b"http/1.1";

/// ring, passed to every builder explicitly so the process default never matters.
static PROVIDER: LazyLock<Arc<CryptoProvider>> =
    LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));

/// Errors of this module; each names the file or peer it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A file holds no PEM `CERTIFICATE` block.
    #[error("no certificate in {}", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[error("no private key in {}", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// A file is not valid PEM.
    #[error("invalid PEM in {}: {message}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A certificate of the CA file cannot be used as a trust anchor.
    #[error("cannot use {} as certificate authority: {message}", path.display())]
    Ca {
        /// The CA file.
        path: PathBuf,
        /// What rustls or webpki said.
        message: String,
    },
    /// The certificate chain and the key do not make a usable identity (e.g. they do not match).
    #[error("cannot use certificate {} with key {}: {message}", cert.display(), key.display())]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The name to verify the server by is not a DNS name or IP address.
    #[error("invalid TLS server name {name:?}: {message}")]
    ServerName {
        /// The name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The endpoint URI has no host.
    #[error("endpoint {0} has no host")]
    NoHost(String),
    /// The TCP connection failed.
    #[error("cannot connect to {target}")]
    Connect {
        /// `host:port`.
        target: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The TLS handshake with the server failed.
    #[error("TLS handshake with {target} failed")]
    Handshake {
        /// `host:port`.
        target: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The PEM files of one side of a mutual-TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// This side's certificate chain, leaf first.
    pub cert: PathBuf,
    /// This side's private key.
    pub key: PathBuf,
    /// The CA certificate(s) the other side's certificate must chain to.
    pub ca: PathBuf,
}

impl TlsFiles {
    fn paths(&self) -> [&Path; 3] {
        [&self.cert, &self.key, &self.ca]
    }
}

/// The PEM files of a server that asks no client certificate: its certificate chain (leaf
/// first) and its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerIdentity {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// The certificates of a PEM file, in file order; at least one.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            path: path.to_owned(),
            message: Chain(&e).to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => Error::NoPrivateKey {
            path: path.to_owned(),
        },
        other => Error::Pem {
            path: path.to_owned(),
            message: other.to_string(),
        },
    })
}

fn read_roots(path: &Path) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots.add(cert).map_err(|e| Error::Ca {
            path: path.to_owned(),
            message: Chain(&e).to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

/// Checks that `name` can identify a server: a DNS name or an IP address, as rustls accepts
/// it when verifying the server's certificate.
pub fn check_server_name(name: &str) -> Result<()> {
    ServerName::try_from(name)
        .map(|_| ())
        .map_err(|e| Error::ServerName {
            name: name.to_owned(),
            message: Chain(&e).to_string(),
        })
}

/// A server configuration from PEM files: `files.cert` + `files.key` as the server's identity,
/// client certificates required and verified against `files.ca`, ALPN `h2`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>> {
    let chain = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let roots = read_roots(&files.ca)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, PROVIDER.clone())
        .build()
        .map_err(|e| Error::Ca {
            path: files.ca.clone(),
            message: Chain(&e).to_string(),
        })?;
    let mut config = ServerConfig::builder_with_provider(PROVIDER.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(Chain(&e).to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::Identity {
            cert: files.cert.clone(),
            key: files.key.clone(),
            message: Chain(&e).to_string(),
        })?;
    config.alpn_protocols = vec![H2.to_vec()];
    Ok(Arc::new(config))
}

/// A server configuration for HTTPS from PEM files: `identity` as the server's identity, no
/// client certificate asked, ALPN `h2` then `http/1.1` (a client offering neither gets
/// HTTP/1.1: [`TlsConnection::alpn_protocol`] is `None`).
pub fn https_server_config(identity: &ServerIdentity) -> Result<Arc<ServerConfig>> {
    let chain = read_certs(&identity.cert)?;
    let key = read_key(&identity.key)?;
    let mut config = ServerConfig::builder_with_provider(PROVIDER.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(Chain(&e).to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| Error::Identity {
            cert: identity.cert.clone(),
            key: identity.key.clone(),
            message: Chain(&e).to_string(),
        })?;
    config.alpn_protocols = vec![H2.to_vec(), HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration from PEM files: the server verified against `files.ca`,
/// `files.cert` + `files.key` presented as the client's identity, ALPN `h2`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>> {
    let roots = read_roots(&files.ca)?;
    let chain = read_certs(&files.cert)?;
    let key = read_key(&files.key)?;
    let mut config = ClientConfig::builder_with_provider(PROVIDER.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(Chain(&e).to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| Error::Identity {
            cert: files.cert.clone(),
            key: files.key.clone(),
            message: Chain(&e).to_string(),
        })?;
    config.alpn_protocols = vec![H2.to_vec()];
    Ok(Arc::new(config))
}

/// What identifies a file's current content without reading it. Following symlinks, so a
/// Kubernetes secret update (an atomic swap of the `..data` link) changes the inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<Stamp>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| Stamp {
                dev: m.dev(),
                ino: m.ino(),
                len: m.len(),
                modified: m.modified().ok(),
            })
        })
        .collect()
}

/// A server configuration that follows its files: polled every `poll`, rebuilt when any file's
/// inode, size or mtime changes. Dropping it stops the polling.
#[derive(Debug)]
pub struct ReloadingServerConfig {
    current: watch::Receiver<Arc<ServerConfig>>,
    task: JoinHandle<()>,
}

impl ReloadingServerConfig {
    /// Loads the mutual-TLS configuration ([`server_config`]; an error here is returned: there
    /// is nothing to fall back to) and starts polling its files on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(files: TlsFiles, poll: Duration) -> Result<Self> {
        let paths = files.paths().map(Path::to_path_buf).to_vec();
        Self::follow(paths, files.cert.clone(), poll, move || {
            server_config(&files)
        })
    }

    /// [`Self::start`] for HTTPS without client certificates ([`https_server_config`]).
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start_https(identity: ServerIdentity, poll: Duration) -> Result<Self> {
        let paths = vec![identity.cert.clone(), identity.key.clone()];
        Self::follow(paths, identity.cert.clone(), poll, move || {
            https_server_config(&identity)
        })
    }

    /// The one reload loop: `build` once now, and again whenever a file of `paths` changes.
    fn follow(
        paths: Vec<PathBuf>,
        cert: PathBuf,
        poll: Duration,
        build: impl Fn() -> Result<Arc<ServerConfig>> + Send + 'static,
    ) -> Result<Self> {
        let mut seen = stamps(&paths);
        let config = build()?;
        let (tx, current) = watch::channel(config);
        let task = tokio::spawn(async move {
            let mut last_error: Option<String> = None;
            let mut ticks = tokio::time::interval(poll);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let now = stamps(&paths);
                if now == seen {
                    continue;
                }
                match build() {
                    Ok(config) => {
                        tx.send_replace(config);
                        seen = now;
                        last_error = None;
                        tracing::info!(cert = %cert.display(), "reloaded TLS certificates");
                    }
                    // Keep `seen` so the next poll retries: a secret update may be half done.
                    Err(e) => {
                        let message = Chain(&e).to_string();
                        if last_error.as_ref() != Some(&message) {
                            tracing::warn!("keeping the previous TLS configuration: {message}");
                            last_error = Some(message);
                        }
                    }
                }
            }
        });
        Ok(ReloadingServerConfig { current, task })
    }

    /// The configuration new connections should use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.borrow().clone()
    }

    /// A receiver that always holds the current configuration, for [`incoming`].
    pub fn subscribe(&self) -> watch::Receiver<Arc<ServerConfig>> {
        self.current.clone()
    }
}

impl Drop for ReloadingServerConfig {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The identity in a peer's leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerIdentity {
    /// The subject distinguished name, e.g. `CN=node-a`.
    pub subject: String,
    /// The subject's first common name, if any.
    pub common_name: Option<String>,
    /// DNS names of the subject alternative name extension, in certificate order.
    pub dns_names: Vec<String>,
    /// IP addresses of the subject alternative name extension, in certificate order.
    pub ips: Vec<IpAddr>,
}

impl PeerIdentity {
    /// Parses the identity from a DER certificate; `None` if it cannot be parsed (rustls has
    /// already verified it, so that would be a certificate webpki accepts and x509-parser not).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned);
        let mut dns_names = Vec::new();
        let mut ips = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                    GeneralName::IPAddress(bytes) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                            ips.push(IpAddr::from(v4));
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                            ips.push(IpAddr::from(v6));
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(PeerIdentity {
            subject: cert.subject().to_string(),
            common_name,
            dns_names,
            ips,
        })
    }
}

/// What a gRPC handler knows about the connection a request came on
/// (`request.extensions().get::<TlsConnectInfo>()`).
#[derive(Debug, Clone)]
pub struct TlsConnectInfo {
    /// The client's address.
    pub remote_addr: Option<SocketAddr>,
    /// The server's address.
    pub local_addr: Option<SocketAddr>,
    /// The verified client certificate's identity.
    pub peer: Option<Arc<PeerIdentity>>,
}

/// A server-side TLS connection for tonic: the stream plus its [`TlsConnectInfo`].
pub struct TlsConnection {
    stream: server::TlsStream<TcpStream>,
    info: TlsConnectInfo,
}

impl fmt::Debug for TlsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnection")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl TlsConnection {
    fn new(stream: server::TlsStream<TcpStream>) -> Self {
        let (tcp, session) = stream.get_ref();
        let peer = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| PeerIdentity::from_der(leaf))
            .map(Arc::new);
        let info = TlsConnectInfo {
            remote_addr: tcp.peer_addr().ok(),
            local_addr: tcp.local_addr().ok(),
            peer,
        };
        TlsConnection { stream, info }
    }

    /// The connection's addresses and peer identity.
    pub fn info(&self) -> &TlsConnectInfo {
        &self.info
    }

    /// The application protocol agreed by ALPN (`h2`, [`HTTP1`]), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }
}

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = TlsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Established TLS connections, for `Server::serve_with_incoming`. Dropping it stops accepting.
#[derive(Debug)]
pub struct Incoming {
    connections: tokio_stream::wrappers::ReceiverStream<io::Result<TlsConnection>>,
    task: JoinHandle<()>,
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<TlsConnection>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.connections).poll_next(cx)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Completes the server side of a TLS handshake on an accepted TCP connection with `config`
/// (a client certificate is required by [`server_config`], none by [`https_server_config`]),
/// within `timeout`. A client that
/// does not finish in time gets `TimedOut`: it would otherwise hold its socket and buffers
/// for as long as it likes.
pub async fn handshake(
    tcp: TcpStream,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> io::Result<TlsConnection> {
    // gRPC streams small frames both ways; Nagle would delay acks.
    let _ = tcp.set_nodelay(true);
    match tokio::time::timeout(timeout, TlsAcceptor::from(config).accept(tcp)).await {
        Ok(Ok(stream)) => Ok(TlsConnection::new(stream)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("TLS handshake not finished within {timeout:?}"),
        )),
    }
}

/// Accepts TCP connections on `listener` and completes their TLS handshakes concurrently
/// ([`handshake`]), each with the configuration `config` holds at its accept. A handshake that
/// fails (no or untrusted client certificate) or takes longer than `handshake_timeout` is
/// logged and dropped; it never reaches tonic.
///
/// # Panics
/// Outside a tokio runtime.
pub fn incoming(
    listener: TcpListener,
    config: watch::Receiver<Arc<ServerConfig>>,
    handshake_timeout: Duration,
) -> Incoming {
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!("accept failed: {}", Chain(&e));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let config = config.borrow().clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match handshake(tcp, config, handshake_timeout).await {
                    Ok(connection) => {
                        let _ = tx.send(Ok(connection)).await;
                    }
                    Err(e) => tracing::warn!("TLS handshake with {remote} failed: {}", Chain(&e)),
                }
            });
        }
    });
    Incoming {
        connections: tokio_stream::wrappers::ReceiverStream::new(rx),
        task,
    }
}

/// A tonic connector (`Endpoint::connect_with_connector`) dialing TCP + mutual TLS. The
/// client configuration is rebuilt from the files for every connection, so a reconnect after
/// a certificate renewal uses the new files.
#[derive(Debug, Clone)]
pub struct TlsConnector {
    files: TlsFiles,
    server_name: Option<ServerName<'static>>,
}

impl TlsConnector {
    /// A connector verifying the server by the endpoint URI's host.
    pub fn new(files: TlsFiles) -> Self {
        TlsConnector {
            files,
            server_name: None,
        }
    }

    /// Verifies the server by `name` (a DNS name or IP address) instead of the URI's host.
    pub fn with_server_name(mut self, name: &str) -> Result<Self> {
        let name = ServerName::try_from(name.to_owned()).map_err(|e| Error::ServerName {
            name: name.to_owned(),
            message: Chain(&e).to_string(),
        })?;
        self.server_name = Some(name);
        Ok(self)
    }

    /// Dials `uri` (`https://host:port`, port 443 if absent) and completes the handshake.
    pub async fn connect(&self, uri: &Uri) -> Result<client::TlsStream<TcpStream>> {
        let host = uri
            .host()
            .ok_or_else(|| Error::NoHost(uri.to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let target = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let server_name = match &self.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.clone()).map_err(|e| Error::ServerName {
                name: host.clone(),
                message: Chain(&e).to_string(),
            })?,
        };
        let config = client_config(&self.files)?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| Error::Connect {
                target: target.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(|source| Error::Handshake { target, source })
    }
}

impl tower::Service<Uri> for TlsConnector {
    type Response = TokioIo<client::TlsStream<TcpStream>>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.connect(&uri).await.map(TokioIo::new) })
    }
}
