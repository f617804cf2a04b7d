//! The UI listener over TLS (`--ui-tls-cert`, `--ui-tls-key`), on the real binary over
//! loopback with certificates made by `leash certs`' code and a real rustls client: HTTPS
//! with the right CA (HTTP/1.1 and h2), the login cookie over it, nothing for a client of
//! another CA or plain HTTP, a certificate replaced on disk served after the reload interval;
//! and `--ui-auth kube` beyond loopback refused without TLS unless `--ui-insecure-http`.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use leash_lab::fake_api::{FakeApi, Subject};
use serde_json::Value;
use support::http::{self, Reply};
use support::serve_process::ServeProcess;
use support::snapshots;
use support::store_flows::{commit, deployment_flow};

const LEASH: &str = env!("CARGO_BIN_EXE_leash");

/// Long and distinctive, so a leak into the log is found by search.
const ALICE: &str = "tok-alice-tls-5d2b8f1e7c3a9e6b4d0f";

/// shop/web and bank/ledger.
fn cluster() -> String {
    snapshots::list(&[
        snapshots::namespace("shop"),
        snapshots::namespace("bank"),
        snapshots::deployment("shop", "web", "web-x2", "198.51.100.10"),
        snapshots::deployment("bank", "ledger", "ledger-y7", "198.51.100.20"),
    ])
}

/// The store with one flow of each workload.
fn store(dir: &Path) -> PathBuf {
    let db = dir.join("leash.db");
    let now = Utc::now();
    commit(
        &db,
        1,
        &[
            deployment_flow("shop", "web", "203.0.113.10", 443, &["api.shop.test"], now),
            deployment_flow(
                "bank",
                "ledger",
                "203.0.113.20",
                443,
                &["api.bank.test"],
                now,
            ),
        ],
    );
    db
}

/// A CA and a server certificate for 127.0.0.1 in `dir` (`ca.pem`, `server.pem`,
/// `server-key.pem`), as `leash certs` makes them.
fn pki(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    leash::certs::generate(dir, &["127.0.0.1".to_owned()], &[]).unwrap();
    dir.to_owned()
}

/// Puts `from`'s server certificate and key at `cert` and `key`, each by an atomic rename.
fn install(from: &Path, cert: &Path, key: &Path) {
    for (src, dst) in [("server.pem", cert), ("server-key.pem", key)] {
        let tmp = dst.with_extension("tmp");
        std::fs::copy(from.join(src), &tmp).unwrap();
        std::fs::rename(&tmp, dst).unwrap();
    }
}

/// A rustls client trusting only `ca`, offering `alpn`.
fn client_config(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in leash_records::tls::read_certs(ca).unwrap() {
        roots.add(cert).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// An HTTPS/1.1 request to `addr`, verifying the server against `ca` by its IP address.
fn https(
    addr: SocketAddr,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Reply> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let connection = rustls::ClientConnection::new(client_config(ca, &[b"http/1.1"]), name)
        .map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    http::request_on(&mut tls, addr, method, path, headers, body)
}

fn get(addr: SocketAddr, ca: &Path, path: &str, headers: &[(&str, &str)]) -> Reply {
    https(addr, ca, "GET", path, headers, "").unwrap()
}

/// The namespaces of `/v1/workloads`' answer.
fn namespaces(reply: &Reply) -> Vec<String> {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let items: Value = serde_json::from_str(&reply.body).unwrap();
    let mut names: Vec<String> = items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["namespace"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// One request over HTTP/2 (ALPN `h2` only): the version answered, the status, the
/// `Set-Cookie` header and the body.
async fn h2_request(
    addr: SocketAddr,
    ca: &Path,
    request: axum::http::Request<axum::body::Body>,
) -> (axum::http::Version, u16, Option<String>, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(client_config(ca, &[b"h2"]))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    let version = response.version();
    let status = response.status().as_u16();
    let cookie = response
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(axum::body::Body::new(response.into_body()), 1 << 20)
        .await
        .unwrap();
    (
        version,
        status,
        cookie,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[test]
fn over_https_the_right_ca_gets_the_ui_and_the_login_cookie_round_trips() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(FakeApi::start()).unwrap();
    let list: Value = serde_norway::from_str(&cluster()).unwrap();
    for item in list["items"].as_array().unwrap() {
        let collection = match item["kind"].as_str().unwrap() {
            "Namespace" => "/api/v1/namespaces",
            "Pod" => "/api/v1/pods",
            "Deployment" => "/apis/apps/v1/deployments",
            other => panic!("no collection for {other}"),
        };
        api.apply_json(collection, item.clone());
    }
    api.add_token(ALICE, "alice", &["team-shop"]);
    api.grant(
        Subject::Group("team-shop".into()),
        Some("shop"),
        "get",
        "leash.dev",
        "egressmaps",
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let db = store(dir.path());
    let ours = pki(&dir.path().join("ours"));
    let theirs = pki(&dir.path().join("theirs"));
    let ca = ours.join("ca.pem");
    let source = ["--kube", "--kubeconfig", kubeconfig.to_str().unwrap()];
    let extra = [
        "--ui-auth",
        "kube",
        "--ui-tls-cert",
        ours.join("server.pem").to_str().unwrap(),
        "--ui-tls-key",
        ours.join("server-key.pem").to_str().unwrap(),
    ]
    .map(str::to_owned);
    let server = ServeProcess::start_from(dir.path(), &db, &source, "200ms", &extra);
    let ui = server.ui;
    let origin = format!("https://{ui}");

    // HTTPS: nobody without a token, the login form to anyone.
    assert_eq!(get(ui, &ca, "/v1/workloads", &[]).status, 401);
    let form = get(ui, &ca, "/login", &[]);
    assert_eq!(form.status, 200, "{}", form.body);
    assert!(form.body.contains("id=\"token\""), "{}", form.body);

    // Alice logs in over HTTPS; the Secure cookie she gets stands for her token.
    let body = format!("token={ALICE}");
    let form_type = ("Content-Type", "application/x-www-form-urlencoded");
    let r = https(
        ui,
        &ca,
        "POST",
        "/login",
        &[form_type, ("Origin", origin.as_str())],
        &body,
    )
    .unwrap();
    assert_eq!(r.status, 303, "{}", r.body);
    let set_cookie = r.header("set-cookie").unwrap().to_owned();
    assert!(set_cookie.contains("; Secure;"), "{set_cookie}");
    let pair = set_cookie.split_once("; ").unwrap().0.to_owned();
    let cookie = [("Cookie", pair.as_str())];
    assert_eq!(
        namespaces(&get(ui, &ca, "/v1/workloads", &cookie)),
        ["shop"]
    );
    assert_eq!(
        get(ui, &ca, "/v1/namespaces/bank/audit", &cookie).status,
        403
    );

    // HTTP/2 by ALPN: the same answers, and the login form's origin check sees the host
    // HTTP/2 sends as `:authority`.
    let request = |method: &str, path: &str, headers: &[(&str, &str)], body: &str| {
        let mut builder = axum::http::Request::builder()
            .method(method)
            .uri(format!("https://{ui}{path}"));
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(axum::body::Body::from(body.to_owned()))
            .unwrap()
    };
    let (version, status, _, body) = rt.block_on(h2_request(
        ui,
        &ca,
        request("GET", "/v1/workloads", &cookie, ""),
    ));
    assert_eq!(
        (version, status),
        (axum::http::Version::HTTP_2, 200),
        "{body}"
    );
    let login = request(
        "POST",
        "/login",
        &[form_type, ("Origin", origin.as_str())],
        &format!("token={ALICE}"),
    );
    let (_, status, h2_cookie, body) = rt.block_on(h2_request(ui, &ca, login));
    assert_eq!(status, 303, "{body}");
    assert!(h2_cookie.is_some_and(|c| c.starts_with("leash_session=")));
    let evil = request(
        "POST",
        "/login",
        &[form_type, ("Origin", "https://evil.test")],
        &format!("token={ALICE}"),
    );
    assert_eq!(rt.block_on(h2_request(ui, &ca, evil)).1, 403);

    // A client trusting another CA does not get through the handshake.
    let e = https(ui, &theirs.join("ca.pem"), "GET", "/login", &[], "")
        .err()
        .expect("a server of another CA is refused");
    assert!(e.to_string().contains("certificate"), "{e}");

    // Plain HTTP to the TLS port gets no HTTP answer: the handshake fails and the
    // connection is closed.
    if let Ok(reply) = http::request(ui, "GET", "/v1/workloads", &[("Cookie", pair.as_str())], "") {
        assert_eq!(reply.status, 0, "plain HTTP answered: {}", reply.body);
    }
    // And the listener still serves TLS after it.
    assert_eq!(get(ui, &ca, "/v1/workloads", &cookie).status, 200);

    let log = server.log();
    let plain = regex::Regex::new("\x1b\\[[0-9;]*m")
        .unwrap()
        .replace_all(&log, "");
    assert!(plain.contains("ui_auth=kube ui_tls=true"), "{plain}");
    assert!(!log.contains(ALICE), "a token in the log:\n{log}");
}

#[test]
fn a_certificate_replaced_on_disk_is_served_after_the_reload_interval() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = dir.path().join("cluster.yaml");
    std::fs::write(&cluster_file, cluster()).unwrap();
    let db = store(dir.path());
    let old = pki(&dir.path().join("old"));
    let new = pki(&dir.path().join("new"));
    let (cert, key) = (dir.path().join("ui.pem"), dir.path().join("ui-key.pem"));
    install(&old, &cert, &key);
    let extra = [
        "--ui-tls-cert",
        cert.to_str().unwrap(),
        "--ui-tls-key",
        key.to_str().unwrap(),
    ];
    let server = ServeProcess::start(dir.path(), &db, &cluster_file, "200ms", &extra);
    let (old_ca, new_ca) = (old.join("ca.pem"), new.join("ca.pem"));
    assert_eq!(
        namespaces(&get(server.ui, &old_ca, "/v1/workloads", &[])),
        ["bank", "shop"]
    );
    assert!(https(server.ui, &new_ca, "GET", "/v1/workloads", &[], "").is_err());

    install(&new, &cert, &key);
    // The files are polled every 5 s (`leash_records::tls::DEFAULT_POLL`).
    http::wait_for(
        "the new certificate to be served",
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            https(server.ui, &new_ca, "GET", "/v1/workloads", &[], "")
                .is_ok_and(|r| r.status == 200)
        },
    );
    assert!(
        https(server.ui, &old_ca, "GET", "/v1/workloads", &[], "").is_err(),
        "the old certificate is still served"
    );
    let log = server.log();
    assert!(log.contains("reloaded TLS certificates"), "{log}");
}

/// `leash serve` with the UI on `ui` and `extra`, the model from a kubeconfig whose API server
/// is not there (nothing reaches it before the refusal or the bind).
fn serve_exposed(dir: &Path, ui: &str, extra: &[&str]) -> (Option<i32>, String) {
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: k\n\
         contexts: [{name: k, context: {cluster: k, user: k}}]\n\
         clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\n\
         users: [{name: k, user: {token: t}}]\n",
    )
    .unwrap();
    let o = Command::new(LEASH)
        .arg("serve")
        .arg("--insecure")
        .args(["--listen", &http::free_port().to_string()])
        .args(["--http", &http::free_port().to_string()])
        .args(["--ui-listen", ui])
        .arg("--store")
        .arg(dir.join("leash.db"))
        .arg("--kube")
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(extra)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn kube_auth_beyond_loopback_needs_tls_unless_ui_insecure_http_is_said() {
    let dir = tempfile::tempdir().unwrap();
    let certs = pki(&dir.path().join("certs"));
    let (cert, key) = (certs.join("server.pem"), certs.join("server-key.pem"));
    let tls = [
        "--ui-tls-cert",
        cert.to_str().unwrap(),
        "--ui-tls-key",
        key.to_str().unwrap(),
    ];
    // The documentation address is on no interface here: a start that gets past the checks
    // fails to bind it (exit 1); a refusal comes first (exit 2) and binds nothing.
    let exposed = "198.51.100.7:8081";

    let (code, stderr) = serve_exposed(dir.path(), exposed, &["--ui-auth", "kube"]);
    assert_eq!(code, Some(2), "{stderr}");
    for said in [
        "--ui-auth kube on --ui-listen 198.51.100.7:8081",
        "needs TLS",
        "--ui-tls-cert",
        "--ui-tls-key",
        "--ui-insecure-http",
    ] {
        assert!(stderr.contains(said), "{said}: {stderr}");
    }

    // With TLS, or with the escape hatch (warned about), the checks pass.
    let mut with_tls = vec!["--ui-auth", "kube"];
    with_tls.extend(tls);
    let (code, stderr) = serve_exposed(dir.path(), exposed, &with_tls);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot listen on 198.51.100.7:8081 (UI)"),
        "{stderr}"
    );
    assert!(!stderr.contains("--ui-insecure-http"), "{stderr}");
    let (code, stderr) = serve_exposed(
        dir.path(),
        exposed,
        &["--ui-auth", "kube", "--ui-insecure-http"],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot listen on 198.51.100.7:8081 (UI)")
            && stderr.contains("--ui-insecure-http: the UI listener speaks plain HTTP")
            && stderr.contains("in clear"),
        "{stderr}"
    );

    // `none` beyond loopback warns, saying whether TLS is on.
    let mut none_tls = vec!["--ui-auth", "none"];
    none_tls.extend(tls);
    let (_, stderr) = serve_exposed(dir.path(), exposed, &none_tls);
    assert!(
        stderr.contains("without authentication, over HTTPS"),
        "{stderr}"
    );
    let (_, stderr) = serve_exposed(dir.path(), exposed, &["--ui-auth", "none"]);
    assert!(
        stderr.contains("without authentication, over plain HTTP"),
        "{stderr}"
    );

    // A key file that cannot be read is the user's input: exit 2, naming it.
    let loopback = http::free_port().to_string();
    let mut bad_key = vec!["--ui-auth", "kube", "--ui-tls-cert"];
    bad_key.extend([
        cert.to_str().unwrap(),
        "--ui-tls-key",
        "/nonexistent/ui-key.pem",
    ]);
    let (code, stderr) = serve_exposed(dir.path(), &loopback, &bad_key);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("/nonexistent/ui-key.pem"), "{stderr}");

    // Usage: the key goes with the certificate; TLS and the escape hatch exclude each other.
    let mut both = vec!["--ui-insecure-http"];
    both.extend(tls);
    for extra in [
        &["--ui-tls-cert", cert.to_str().unwrap()][..],
        &["--ui-tls-key", key.to_str().unwrap()][..],
        &both[..],
    ] {
        let (code, stderr) = serve_exposed(dir.path(), exposed, extra);
        assert_eq!(code, Some(2), "{extra:?}: {stderr}");
    }
}

/// Whether the test may make a network namespace of its own (`unshare -rn`, with `ip`); if
/// not, it skips with the reason, unless `LEASH_REQUIRE_PRIVILEGED=1` makes that a failure.
fn private_netns_available() -> bool {
    let ok = Command::new("unshare")
        .args(["-rn", "bash", "-c", "ip link set lo up"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("LEASH_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "LEASH_REQUIRE_PRIVILEGED=1 but `unshare -rn` (with ip) cannot run"
        );
        eprintln!("skipped: no private network namespace (`unshare -rn`, ip)");
    }
    ok
}

/// `--ui-insecure-http` serves `--ui-auth kube` over plain HTTP on an address that is not
/// loopback (in a network namespace of the test's own): a request without a token gets `401`.
#[test]
fn ui_insecure_http_serves_kube_auth_beyond_loopback_in_plain_http() {
    if !private_netns_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: k\n\
         contexts: [{name: k, context: {cluster: k, user: k}}]\n\
         clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\n\
         users: [{name: k, user: {token: t}}]\n",
    )
    .unwrap();
    let log = dir.path().join("serve.log");
    let script = r#"
set -e
ip link set lo up
ip addr add 203.0.113.5/32 dev lo
"$LEASH" serve --insecure --listen 127.0.0.1:7443 --http 127.0.0.1:8080 \
    --ui-listen 203.0.113.5:8081 --ui-auth kube --ui-insecure-http \
    --store "$DB" --kube --kubeconfig "$KUBECONFIG_FILE" 2>"$LOG" &
pid=$!
code=000
for _ in $(seq 1 300); do
    if exec 3<>/dev/tcp/203.0.113.5/8081; then
        printf 'GET /v1/workloads HTTP/1.1\r\nHost: 203.0.113.5:8081\r\nConnection: close\r\n\r\n' >&3
        read -r _ code _ <&3 || true
        exec 3>&-
        [ "$code" = 401 ] && break
    fi
    sleep 0.1
done 2>/dev/null
kill "$pid"
wait "$pid" || true
echo "status=$code"
"#;
    let o = Command::new("unshare")
        .args(["-rn", "bash", "-c", script])
        .env("LEASH", LEASH)
        .env("DB", dir.path().join("leash.db"))
        .env("KUBECONFIG_FILE", &kubeconfig)
        .env("LOG", &log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        stdout.contains("status=401"),
        "{stdout}\n{}\n{log}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(log.contains("--ui-insecure-http"), "{log}");
}
