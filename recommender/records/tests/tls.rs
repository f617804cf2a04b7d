//! Mutual TLS (and HTTPS without client certificates) on loopback with certificates generated
//! by rcgen: handshakes that must succeed,
//! clients that must be rejected, and certificate reloads.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use leash_records::error::Chain;
use leash_records::tls::{self, TlsConnection, TlsConnector, TlsFiles};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use tokio_stream::StreamExt as _;

const WAIT: Duration = Duration::from_secs(5);

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("key");
    let cert = params.self_signed(&key).expect("self-signed CA");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A leaf certificate and key (PEM) signed by `ca`, with CN `cn` and the given SANs.
fn leaf(ca: &Ca, cn: &str, sans: &[&str]) -> (String, String) {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .expect("valid names");
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &ca.issuer).expect("signed leaf");
    (cert.pem(), key.serialize_pem())
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write fixture");
}

/// A directory with `ca.pem`, `server.pem`, `server-key.pem`, `node-a.pem`, `node-a-key.pem`.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = ca("leash test CA");
        write(&dir.path().join("ca.pem"), &ca.pem);
        let (cert, key) = leaf(&ca, "leash", &["localhost", "127.0.0.1"]);
        write(&dir.path().join("server.pem"), &cert);
        write(&dir.path().join("server-key.pem"), &key);
        let (cert, key) = leaf(&ca, "node-a", &[]);
        write(&dir.path().join("node-a.pem"), &cert);
        write(&dir.path().join("node-a-key.pem"), &key);
        Pki { dir, ca }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server-key.pem"),
            ca: self.path("ca.pem"),
        }
    }

    fn client_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.path("node-a.pem"),
            key: self.path("node-a-key.pem"),
            ca: self.path("ca.pem"),
        }
    }
}

struct Server {
    // Kept alive: dropping it would stop the reload polling.
    _config: tls::ReloadingServerConfig,
    incoming: tls::Incoming,
    uri: tonic::codegen::http::Uri,
}

async fn serve(files: TlsFiles, poll: Duration) -> Server {
    let config = tls::ReloadingServerConfig::start(files, poll).expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let incoming = tls::incoming(listener, config.subscribe(), Duration::from_secs(5));
    Server {
        _config: config,
        incoming,
        uri: format!("https://127.0.0.1:{port}").parse().expect("uri"),
    }
}

async fn next_connection(server: &mut Server) -> Option<TlsConnection> {
    match tokio::time::timeout(Duration::from_millis(700), server.incoming.next()).await {
        Ok(Some(conn)) => Some(conn.expect("incoming never yields errors")),
        Ok(None) | Err(_) => None,
    }
}

/// The server rejects the client: the client's first read fails or sees EOF, and no
/// connection reaches the server's stream.
async fn assert_rejected(
    server: &mut Server,
    client: Result<impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, tls::Error>,
) {
    if let Ok(mut stream) = client {
        // TLS 1.3: the client finishes its handshake before the server has checked the
        // client certificate; the rejection arrives as an alert on the first read.
        let _ = stream.write_all(b"ping").await;
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the server answers");
        assert!(
            matches!(read, Err(_) | Ok(0)),
            "client was served: {read:?}"
        );
    }
    assert!(
        next_connection(server).await.is_none(),
        "a rejected client reached the server"
    );
}

#[tokio::test]
async fn valid_client_completes_handshake_and_is_identified() {
    let pki = Pki::new();
    let mut server = serve(pki.server_files(), tls::DEFAULT_POLL).await;
    let mut client = TlsConnector::new(pki.client_files())
        .connect(&server.uri)
        .await
        .expect("handshake");
    assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    client.write_all(b"ping").await.expect("write");
    let mut conn = next_connection(&mut server).await.expect("connection");
    let peer = conn.info().peer.clone().expect("client certificate");
    assert_eq!(peer.common_name.as_deref(), Some("node-a"));
    assert_eq!(peer.subject, "CN=node-a");
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"ping");
    assert_eq!(
        conn.info().remote_addr.map(|a| a.ip()),
        Some("127.0.0.1".parse().expect("ip"))
    );
}

#[tokio::test]
async fn client_without_certificate_is_rejected() {
    let pki = Pki::new();
    let mut server = serve(pki.server_files(), tls::DEFAULT_POLL).await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.path("ca.pem")).expect("ca"))
        .expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let port = server.uri.port_u16().expect("port");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("tcp");
    let client = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("127.0.0.1".try_into().expect("name"), tcp)
        .await
        .map_err(|source| tls::Error::Handshake {
            target: "test".into(),
            source,
        });
    assert_rejected(&mut server, client).await;
}

#[tokio::test]
async fn client_signed_by_another_ca_is_rejected() {
    let pki = Pki::new();
    let mut server = serve(pki.server_files(), tls::DEFAULT_POLL).await;
    let rogue = ca("rogue CA");
    let (cert, key) = leaf(&rogue, "node-a", &[]);
    write(&pki.path("rogue.pem"), &cert);
    write(&pki.path("rogue-key.pem"), &key);
    let files = TlsFiles {
        cert: pki.path("rogue.pem"),
        key: pki.path("rogue-key.pem"),
        ca: pki.path("ca.pem"),
    };
    let client = TlsConnector::new(files).connect(&server.uri).await;
    assert_rejected(&mut server, client).await;
    // The same server still serves a valid client.
    TlsConnector::new(pki.client_files())
        .connect(&server.uri)
        .await
        .expect("valid client");
    assert!(next_connection(&mut server).await.is_some());
}

#[tokio::test]
async fn client_refuses_a_server_of_another_ca() {
    let pki = Pki::new();
    let server = serve(pki.server_files(), tls::DEFAULT_POLL).await;
    let other = ca("other CA");
    write(&pki.path("other-ca.pem"), &other.pem);
    let files = TlsFiles {
        ca: pki.path("other-ca.pem"),
        ..pki.client_files()
    };
    let err = TlsConnector::new(files)
        .connect(&server.uri)
        .await
        .expect_err("untrusted server");
    assert!(
        err.to_string().starts_with("TLS handshake with 127.0.0.1:"),
        "{err}"
    );
}

/// The peer certificate the client sees on a fresh connection.
async fn server_cert(uri: &tonic::codegen::http::Uri, files: &TlsFiles) -> CertificateDer<'static> {
    let client = TlsConnector::new(files.clone())
        .connect(uri)
        .await
        .expect("handshake");
    client
        .get_ref()
        .1
        .peer_certificates()
        .expect("server chain")[0]
        .clone()
}

fn leaf_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem")
}

#[cfg(unix)]
#[tokio::test]
async fn swapped_secret_files_are_served_to_new_connections_and_bad_ones_ignored() {
    // Lay the server files out as a Kubernetes secret volume: server.pem -> ..data/server.pem,
    // ..data -> ..v1; an update writes ..v2 and atomically renames a new ..data link.
    let pki = Pki::new();
    let vol = pki.path("secret");
    std::fs::create_dir_all(vol.join("..v1")).expect("mkdir");
    for f in ["server.pem", "server-key.pem", "ca.pem"] {
        std::fs::copy(pki.path(f), vol.join("..v1").join(f)).expect("copy");
        std::os::unix::fs::symlink(Path::new("..data").join(f), vol.join(f)).expect("link");
    }
    std::os::unix::fs::symlink("..v1", vol.join("..data")).expect("link");
    let files = TlsFiles {
        cert: vol.join("server.pem"),
        key: vol.join("server-key.pem"),
        ca: vol.join("ca.pem"),
    };
    let mut server = serve(files, Duration::from_millis(50)).await;
    let first = server_cert(&server.uri, &pki.client_files()).await;
    assert_eq!(
        first,
        leaf_der(&std::fs::read_to_string(pki.path("server.pem")).expect("read"))
    );

    let swap = |version: &str, cert: &str, key: &str| {
        let dir = vol.join(version);
        std::fs::create_dir_all(&dir).expect("mkdir");
        write(&dir.join("server.pem"), cert);
        write(&dir.join("server-key.pem"), key);
        write(&dir.join("ca.pem"), &pki.ca.pem);
        let tmp = vol.join("..data_tmp");
        std::os::unix::fs::symlink(version, &tmp).expect("link");
        std::fs::rename(&tmp, vol.join("..data")).expect("rename");
    };

    let (cert, key) = leaf(&pki.ca, "leash-renewed", &["localhost", "127.0.0.1"]);
    swap("..v2", &cert, &key);
    let renewed = leaf_der(&cert);
    let deadline = Instant::now() + WAIT;
    loop {
        if server_cert(&server.uri, &pki.client_files()).await == renewed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "renewed certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A broken update (key missing) is ignored: the renewed certificate stays in use.
    swap("..v3", &cert, "not a key\n");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server_cert(&server.uri, &pki.client_files()).await, renewed);
    while next_connection(&mut server).await.is_some() {}
}

#[tokio::test]
async fn connector_reads_client_files_on_each_connection() {
    let pki = Pki::new();
    let mut server = serve(pki.server_files(), tls::DEFAULT_POLL).await;
    let connector = TlsConnector::new(pki.client_files());
    let _a = connector.connect(&server.uri).await.expect("handshake");
    let cn = |c: &TlsConnection| c.info().peer.as_ref().and_then(|p| p.common_name.clone());
    let conn = next_connection(&mut server).await.expect("connection");
    assert_eq!(cn(&conn).as_deref(), Some("node-a"));
    let (cert, key) = leaf(&pki.ca, "node-a-renewed", &[]);
    write(&pki.path("node-a.pem"), &cert);
    write(&pki.path("node-a-key.pem"), &key);
    let _b = connector.connect(&server.uri).await.expect("handshake");
    let conn = next_connection(&mut server).await.expect("connection");
    assert_eq!(cn(&conn).as_deref(), Some("node-a-renewed"));
}

#[test]
fn errors_name_the_file_and_the_problem() {
    let pki = Pki::new();
    let files = pki.server_files();
    let missing = TlsFiles {
        ca: pki.path("nope/ca.pem"),
        ..files.clone()
    };
    // As a person sees it: the message, then its cause.
    let err = Chain(&tls::server_config(&missing).expect_err("missing CA")).to_string();
    assert!(
        err.starts_with(&format!(
            "cannot read {}: ",
            pki.path("nope/ca.pem").display()
        )),
        "{err}"
    );

    let key_is_cert = TlsFiles {
        key: pki.path("server.pem"),
        ..files.clone()
    };
    let err = tls::server_config(&key_is_cert)
        .expect_err("no key")
        .to_string();
    assert_eq!(
        err,
        format!("no private key in {}", pki.path("server.pem").display())
    );

    let cert_is_key = TlsFiles {
        cert: pki.path("server-key.pem"),
        ..files.clone()
    };
    let err = tls::client_config(&cert_is_key)
        .expect_err("no cert")
        .to_string();
    assert_eq!(
        err,
        format!("no certificate in {}", pki.path("server-key.pem").display())
    );

    let mismatched = TlsFiles {
        key: pki.path("node-a-key.pem"),
        ..files
    };
    let err = tls::server_config(&mismatched)
        .expect_err("mismatch")
        .to_string();
    assert!(
        err.starts_with(&format!(
            "cannot use certificate {} with key {}: ",
            pki.path("server.pem").display(),
            pki.path("node-a-key.pem").display()
        )),
        "{err}"
    );
}

/// A client trusting `ca_pem`, without a certificate of its own, offering `alpn`; returns the
/// server's leaf and the protocol agreed.
async fn https_client(
    uri: &tonic::codegen::http::Uri,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> (CertificateDer<'static>, Option<Vec<u8>>) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(leaf_der(ca_pem)).expect("CA");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp =
        tokio::net::TcpStream::connect(("127.0.0.1", uri.port_u16().expect("the URI has a port")))
            .await
            .expect("connect");
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake without a client certificate");
    let session = stream.get_ref().1;
    (
        session.peer_certificates().expect("server chain")[0].clone(),
        session.alpn_protocol().map(<[u8]>::to_vec),
    )
}

#[tokio::test]
async fn https_asks_no_client_certificate_agrees_h2_or_http1_and_follows_its_files() {
    let pki = Pki::new();
    let identity = tls::ServerIdentity {
        cert: pki.path("server.pem"),
        key: pki.path("server-key.pem"),
    };
    let config = tls::ReloadingServerConfig::start_https(identity, Duration::from_millis(50))
        .expect("server config");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut server = Server {
        incoming: tls::incoming(listener, config.subscribe(), WAIT),
        _config: config,
        uri: format!("https://127.0.0.1:{port}").parse().expect("uri"),
    };
    for (offered, agreed) in [
        (&[&b"h2"[..], b"http/1.1"][..], Some(&b"h2"[..])),
        (&[&b"http/1.1"[..]][..], Some(tls::HTTP1)),
        (&[][..], None),
    ] {
        let (_, alpn) = https_client(&server.uri, &pki.ca.pem, offered).await;
        assert_eq!(alpn.as_deref(), agreed, "{offered:?}");
        let connection = next_connection(&mut server).await.expect("served");
        assert_eq!(connection.alpn_protocol(), agreed);
        assert!(connection.info().peer.is_none());
    }

    // A renewed certificate written over the files is served to new connections.
    let (cert, key) = leaf(&pki.ca, "leash-renewed", &["127.0.0.1"]);
    for (name, text) in [("server-key.pem", &key), ("server.pem", &cert)] {
        let tmp = pki.path("tmp.pem");
        write(&tmp, text);
        std::fs::rename(&tmp, pki.path(name)).expect("rename");
    }
    let renewed = leaf_der(&cert);
    let deadline = Instant::now() + WAIT;
    while https_client(&server.uri, &pki.ca.pem, &[]).await.0 != renewed {
        assert!(
            Instant::now() < deadline,
            "renewed certificate never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while next_connection(&mut server).await.is_some() {}
}
