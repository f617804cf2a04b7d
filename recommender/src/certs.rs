//! `leash certs`: a self-signed CA plus server and client certificates for the agent →
//! recommender mTLS, for labs and clusters without cert-manager.
//!
//! Writes into the output directory: `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem`,
//! and `<client>.pem`, `<client>-key.pem` per client. Key files are created with mode 0600,
//! and no key is ever printed.
//!
//! An existing CA (`ca.pem` and `ca-key.pem`) in the directory is reused to sign the new
//! certificates, so that certificates issued earlier stay valid; only `force` makes a new CA.
//! Other files of those names are replaced (atomically, so a server polling them never reads
//! half a file).

use std::{
    io::Write as _,
    net::IpAddr,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use chrono::{Datelike as _, Days, NaiveDate, Utc};
use leash_records::error::Chain;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// How long the CA is valid.
const CA_DAYS: u64 = 3650;
/// How long server and client certificates are valid.
const LEAF_DAYS: u64 = 365;

/// Errors of [`generate`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No server name was given; clients verify the server by one of them.
    #[error("at least one server name (DNS name or IP address) is needed")]
    NoServerName,
    /// A server name is neither a DNS name nor an IP address.
    #[error("invalid server name {name:?}: {message}")]
    ServerName {
        /// The name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A client name cannot be used as a file name or clashes with the CA or server files.
    #[error("invalid client name {name:?}: {reason}")]
    ClientName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// rcgen failed to build a key or certificate.
    #[error("cannot generate {what}: {message}")]
    Generate {
        /// Which certificate or key.
        what: String,
        /// What rcgen said.
        message: String,
    },
    /// Only one of `ca.pem` and `ca-key.pem` exists: reusing is impossible, and replacing
    /// would orphan what the other signed.
    #[error("{} exists but {} does not; pass --force to create a new CA", present.display(), missing.display())]
    CaIncomplete {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// The existing CA cannot be used (unreadable, not PEM, or its key does not match).
    #[error("cannot reuse the CA in {}: {message}; pass --force to create a new CA", dir.display())]
    CaUnusable {
        /// The output directory.
        dir: PathBuf,
        /// What is wrong (never the key's contents).
        message: String,
    },
    /// A file could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the CA that signed the certificates came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaSource {
    /// The CA already in the output directory.
    Reused,
    /// A CA made by this run (none was there, or `force`).
    Created,
}

/// Writes a server certificate whose SANs are `server_names` (DNS names or IP addresses; the
/// first is also its CN), and one client certificate per `client_names` entry with CN = the
/// name, as PEM into `out_dir` (created if missing), signed by the CA in `out_dir` (`ca.pem`
/// and `ca-key.pem`). Without one, a new CA is made and written first.
pub fn generate(
    out_dir: &Path,
    server_names: &[String],
    client_names: &[String],
) -> Result<CaSource> {
    generate_with(out_dir, server_names, client_names, false)
}

/// [`generate`]; with `force`, a new CA replaces the one in `out_dir`.
pub fn generate_with(
    out_dir: &Path,
    server_names: &[String],
    client_names: &[String],
    force: bool,
) -> Result<CaSource> {
    let first_server = server_names.first().ok_or(Error::NoServerName)?;
    let sans = server_names
        .iter()
        .map(|n| san(n))
        .collect::<Result<Vec<_>>>()?;
    let mut seen = std::collections::BTreeSet::new();
    for name in client_names {
        check_client_name(name)?;
        if !seen.insert(name) {
            return Err(Error::ClientName {
                name: name.clone(),
                reason: "given twice",
            });
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|source| Error::Write {
        path: out_dir.to_owned(),
        source,
    })?;

    let gen_err = |what: &str| {
        let what = what.to_owned();
        move |e: rcgen::Error| Error::Generate {
            what: what.clone(),
            message: Chain(&e).to_string(),
        }
    };

    let (issuer, source) = match existing_ca(out_dir, force)? {
        Some(issuer) => (issuer, CaSource::Reused),
        None => {
            let mut ca = CertificateParams::default();
            ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            ca.distinguished_name.push(DnType::CommonName, "leash CA");
            ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            set_validity(&mut ca, CA_DAYS);
            let ca_key = KeyPair::generate().map_err(gen_err("the CA key"))?;
            let ca_cert = ca
                .self_signed(&ca_key)
                .map_err(gen_err("the CA certificate"))?;
            write(out_dir, "ca.pem", &ca_cert.pem(), false)?;
            write(out_dir, "ca-key.pem", &ca_key.serialize_pem(), true)?;
            (Issuer::new(ca, ca_key), CaSource::Created)
        }
    };

    let mut server = leaf_params(first_server, ExtendedKeyUsagePurpose::ServerAuth);
    server.subject_alt_names = sans;
    let server_key = KeyPair::generate().map_err(gen_err("the server key"))?;
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .map_err(gen_err("the server certificate"))?;
    write(out_dir, "server.pem", &server_cert.pem(), false)?;
    write(out_dir, "server-key.pem", &server_key.serialize_pem(), true)?;

    for name in client_names {
        let params = leaf_params(name, ExtendedKeyUsagePurpose::ClientAuth);
        let key = KeyPair::generate().map_err(gen_err(&format!("the key of client {name}")))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(gen_err(&format!("the certificate of client {name}")))?;
        write(out_dir, &format!("{name}.pem"), &cert.pem(), false)?;
        write(
            out_dir,
            &format!("{name}-key.pem"),
            &key.serialize_pem(),
            true,
        )?;
    }
    Ok(source)
}

/// The CA in `dir` to sign with, unless `force` or there is none. Half a CA (one of the
/// two files), an unreadable one, or a key that is not the certificate's is an error: making
/// a new CA then would silently invalidate every certificate the old one signed.
fn existing_ca(dir: &Path, force: bool) -> Result<Option<Issuer<'static, KeyPair>>> {
    let (cert_path, key_path) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
    let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    match (force, exists(&cert_path), exists(&key_path)) {
        (true, _, _) | (false, false, false) => return Ok(None),
        (false, true, true) => {}
        (false, cert, _) => {
            let (present, missing) = if cert {
                (cert_path, key_path)
            } else {
                (key_path, cert_path)
            };
            return Err(Error::CaIncomplete { present, missing });
        }
    }
    let unusable = |message: String| Error::CaUnusable {
        dir: dir.to_path_buf(),
        message,
    };
    let cert = leash_records::tls::read_certs(&cert_path)
        .map_err(|e| unusable(Chain(&e).to_string()))?
        .swap_remove(0);
    // Read bounded and as a regular file only; the error names the file, never its text.
    let key_pem = leash_records::bounded::read_to_string(
        &key_path,
        true,
        leash_records::bounded::Limits::default(),
    )
    .map_err(|e| unusable(Chain(&e).to_string()))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|_| {
        unusable(format!(
            "{} holds no usable private key",
            key_path.display()
        ))
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
        .map_err(|e| unusable(format!("{}: {}", cert_path.display(), Chain(&e))))?;
    if parsed
        .tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .as_ref()
        != key.public_key_raw()
    {
        return Err(unusable(format!(
            "{} is not the key of {}",
            key_path.display(),
            cert_path.display()
        )));
    }
    Issuer::from_ca_cert_der(&cert, key)
        .map(Some)
        .map_err(|e| unusable(format!("{}: {}", cert_path.display(), Chain(&e))))
}

fn leaf_params(cn: &str, usage: ExtendedKeyUsagePurpose) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_DAYS);
    params
}

/// Valid from yesterday (tolerating clock skew between machines) for `days` days.
fn set_validity(params: &mut CertificateParams, days: u64) {
    let today = Utc::now().date_naive();
    let ymd = |d: NaiveDate| {
        // Month and day always fit in a u8.
        rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
    };
    params.not_before = ymd(today.checked_sub_days(Days::new(1)).unwrap_or(today));
    params.not_after = ymd(today.checked_add_days(Days::new(days)).unwrap_or(today));
}

fn san(name: &str) -> Result<SanType> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let invalid = |message: String| Error::ServerName {
        name: name.to_owned(),
        message,
    };
    // The same check a client applies when it verifies the server by this name.
    leash_records::tls::check_server_name(name).map_err(|e| match e {
        leash_records::tls::Error::ServerName { message, .. } => invalid(message),
        other => invalid(Chain(&other).to_string()),
    })?;
    let ia5 = name
        .try_into()
        .map_err(|e: rcgen::Error| invalid(Chain(&e).to_string()))?;
    Ok(SanType::DnsName(ia5))
}

fn check_client_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.starts_with('.') || name.starts_with('-') {
        "starts with '.' or '-'"
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        "only ASCII letters, digits, '.', '-' and '_' are allowed (it names files)"
    } else if matches!(name, "ca" | "ca-key" | "server" | "server-key") || name.ends_with("-key") {
        "clashes with the CA, server or key file names"
    } else {
        return Ok(());
    };
    Err(Error::ClientName {
        name: name.to_owned(),
        reason,
    })
}

/// Writes `name` in `dir` through a temporary file and a rename; keys get mode 0600 from
/// creation on, so they are never readable by others, not even briefly.
fn write(dir: &Path, name: &str, contents: &str, secret: bool) -> Result<()> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let write_err = |source| Error::Write {
        path: path.clone(),
        source,
    };
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(write_err)?;
    file.write_all(contents.as_bytes()).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    std::fs::rename(&tmp, &path).map_err(write_err)
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt as _, time::Duration};

    use leash_records::tls::{self, PeerIdentity, TlsConnector, TlsFiles};
    use tokio_stream::StreamExt as _;

    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn generated_certificates_complete_an_mtls_handshake() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        generate(
            &out,
            &names(&["leash.leash.svc", "127.0.0.1"]),
            &names(&["node-a", "node-b"]),
        )
        .unwrap();

        let mode = |f: &str| std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
        for key in [
            "ca-key.pem",
            "server-key.pem",
            "node-a-key.pem",
            "node-b-key.pem",
        ] {
            assert_eq!(mode(key), 0o600, "{key}");
        }
        assert_eq!(mode("server.pem"), 0o644);

        let server_chain = tls::read_certs(&out.join("server.pem")).unwrap();
        let server_id = PeerIdentity::from_der(&server_chain[0]).unwrap();
        assert_eq!(server_id.common_name.as_deref(), Some("leash.leash.svc"));
        assert_eq!(server_id.dns_names, ["leash.leash.svc"]);
        assert_eq!(server_id.ips, ["127.0.0.1".parse::<IpAddr>().unwrap()]);

        let server_files = TlsFiles {
            cert: out.join("server.pem"),
            key: out.join("server-key.pem"),
            ca: out.join("ca.pem"),
        };
        let config = tls::ReloadingServerConfig::start(server_files, tls::DEFAULT_POLL).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut incoming = tls::incoming(listener, config.subscribe(), Duration::from_secs(5));
        for client in ["node-a", "node-b"] {
            let files = TlsFiles {
                cert: out.join(format!("{client}.pem")),
                key: out.join(format!("{client}-key.pem")),
                ca: out.join("ca.pem"),
            };
            // By IP, and by DNS name (dialing 127.0.0.1 but verifying the name).
            let uri = format!("https://127.0.0.1:{port}").parse().unwrap();
            TlsConnector::new(files.clone())
                .connect(&uri)
                .await
                .unwrap();
            TlsConnector::new(files)
                .with_server_name("leash.leash.svc")
                .unwrap()
                .connect(&uri)
                .await
                .unwrap();
            for _ in 0..2 {
                let conn = tokio::time::timeout(Duration::from_secs(5), incoming.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                let peer = conn.info().peer.clone().unwrap();
                assert_eq!(peer.common_name.as_deref(), Some(client));
            }
        }
    }

    #[tokio::test]
    async fn a_reused_ca_keeps_earlier_clients_valid() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let server = names(&["127.0.0.1"]);
        assert_eq!(
            generate(&out, &server, &names(&["old"])).unwrap(),
            CaSource::Created
        );
        // A second run for a new client: the CA signs again, and the client issued by the
        // first run still completes a handshake with the server certificate of the second.
        assert_eq!(
            generate(&out, &server, &names(&["new"])).unwrap(),
            CaSource::Reused
        );
        let files = |cert: &str, key: &str| TlsFiles {
            cert: out.join(cert),
            key: out.join(key),
            ca: out.join("ca.pem"),
        };
        let config = tls::ReloadingServerConfig::start(
            files("server.pem", "server-key.pem"),
            tls::DEFAULT_POLL,
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut incoming = tls::incoming(listener, config.subscribe(), Duration::from_secs(5));
        let uri = format!("https://127.0.0.1:{port}").parse().unwrap();
        for client in ["old", "new"] {
            let connector = TlsConnector::new(files(
                &format!("{client}.pem"),
                &format!("{client}-key.pem"),
            ));
            tokio::time::timeout(Duration::from_secs(5), connector.connect(&uri))
                .await
                .unwrap()
                .unwrap();
            let conn = tokio::time::timeout(Duration::from_secs(5), incoming.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(
                conn.info().peer.clone().unwrap().common_name.as_deref(),
                Some(client)
            );
        }
    }

    #[test]
    fn bad_names_are_rejected_before_writing_anything() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("pki");
        let cases: [(&[&str], &[&str], &str); 6] = [
            (&[], &["a"], "at least one server name"),
            (&["bad name"], &["a"], "invalid server name \"bad name\""),
            (&["ok"], &["../x"], "invalid client name \"../x\""),
            (&["ok"], &["server"], "clashes"),
            (&["ok"], &["n", "n"], "given twice"),
            (&["ok"], &[""], "empty"),
        ];
        for (servers, clients, want) in cases {
            let err = generate(&out, &names(servers), &names(clients))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{servers:?} {clients:?}: {err}");
        }
        assert!(!out.exists());
    }
}
