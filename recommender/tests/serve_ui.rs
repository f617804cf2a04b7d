//! `leash serve`'s two listeners and who may look (`--ui-listen`, `--ui-auth`), on the real
//! binary over loopback HTTP, with the fake API server answering TokenReviews and
//! SubjectAccessReviews over real HTTP: `--http` keeps only health and metrics; the UI
//! listener serves `/v1` with security headers; a non-loopback UI needs `--ui-auth`; with
//! `--ui-auth kube`, tokens are reviewed, a namespace-scoped user sees only its namespaces in
//! every answer, the login form's cookie stands for the token until logout, proxies' identity
//! headers grant nothing, and no token reaches a log or an answer.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use leash_lab::fake_api::{FakeApi, Subject};
use serde_json::Value;
use support::http::{self, Reply, get, request};
use support::serve_process::ServeProcess;
use support::snapshots;
use support::store_flows::{commit, deployment_flow};

const LEASH: &str = env!("CARGO_BIN_EXE_leash");

/// The Content-Security-Policy every answer of the UI listener carries.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Tokens: long and distinctive, so a leak into a log or an answer is found by search.
const ADMIN: &str = "tok-admin-4f0c2a9e7d1b6c3e8a5f";
const ALICE: &str = "tok-alice-9b3e7c1d5a2f8e6b4c0d";
const BOB: &str = "tok-bob-1e8d4c6a2b9f7e3d5c1a";
const WRONG: &str = "tok-wrong-7a2c9e4b1d6f3a8e5c2b";

/// shop/web and bank/ledger, both locked down to DNS: each one's flow is unexpected egress,
/// an alert in its own namespace.
fn cluster() -> String {
    snapshots::list(&[
        snapshots::namespace("shop"),
        snapshots::namespace("bank"),
        snapshots::deployment("shop", "web", "web-x2", "198.51.100.10"),
        snapshots::deployment("bank", "ledger", "ledger-y7", "198.51.100.20"),
        snapshots::dns_only("shop", "web"),
        snapshots::dns_only("bank", "ledger"),
    ])
}

/// The store with one flow of each workload.
fn store(dir: &Path) -> std::path::PathBuf {
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

/// The snapshot's objects into the fake API server, by kind.
fn load_into(api: &FakeApi, snapshot: &str) {
    let list: Value = serde_norway::from_str(snapshot).unwrap();
    for item in list["items"].as_array().unwrap() {
        let collection = match item["kind"].as_str().unwrap() {
            "Namespace" => "/api/v1/namespaces",
            "Pod" => "/api/v1/pods",
            "Deployment" => "/apis/apps/v1/deployments",
            "NetworkPolicy" => "/apis/networking.k8s.io/v1/networkpolicies",
            other => panic!("no collection for {other}"),
        };
        api.apply_json(collection, item.clone());
    }
}

fn wait_for(what: &str, check: impl FnMut() -> bool) {
    http::wait_for(
        what,
        Duration::from_secs(30),
        Duration::from_millis(100),
        check,
    );
}

/// `GET path` on `addr` with `headers`.
fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    request(addr, "GET", path, headers, "").unwrap()
}

fn json(reply: &Reply) -> Value {
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).unwrap()
}

/// The namespaces of a JSON list's items (`namespace`).
fn namespaces(items: &Value) -> BTreeSet<String> {
    items
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["namespace"].as_str().unwrap().to_owned())
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Asserts the security headers of the UI listener.
#[track_caller]
fn assert_security_headers(reply: &Reply, no_store: bool) {
    assert_eq!(reply.header("content-security-policy"), Some(CSP));
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
    if no_store {
        assert_eq!(reply.header("cache-control"), Some("no-store"));
    }
}

#[test]
fn on_loopback_the_ui_listener_serves_v1_without_auth_and_http_keeps_only_health_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = dir.path().join("cluster.yaml");
    std::fs::write(&cluster_file, cluster()).unwrap();
    let db = store(dir.path());
    let no_extra: [&str; 0] = [];
    let server = ServeProcess::start(dir.path(), &db, &cluster_file, "200ms", &no_extra);

    let workloads = get_with(server.ui, "/v1/workloads", &[]);
    assert_eq!(namespaces(&json(&workloads)), set(&["bank", "shop"]));
    assert_security_headers(&workloads, true);
    // Errors carry the headers too.
    let missing = get_with(server.ui, "/v1/namespaces/nowhere/audit", &[]);
    assert_eq!(missing.status, 404, "{}", missing.body);
    assert_security_headers(&missing, true);

    // `--http`: health and metrics only; `/v1` is gone from it.
    for path in ["/v1/workloads", "/v1/alerts", "/v1/rollout"] {
        let (status, _) = get(server.http, path).unwrap();
        assert_eq!(status, 404, "{path} on --http");
    }
    assert_eq!(get(server.http, "/healthz").unwrap().0, 200);
    let (status, metrics) = get(server.http, "/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(metrics.contains("leash_"), "{metrics}");
    // And the UI listener serves no metrics, and no login form without --ui-auth kube.
    assert_eq!(get(server.ui, "/metrics").unwrap().0, 404);
    assert_eq!(get(server.ui, "/login").unwrap().0, 404);
}

#[test]
fn a_ui_beyond_loopback_without_ui_auth_is_refused_and_kube_needs_the_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = dir.path().join("cluster.yaml");
    std::fs::write(&cluster_file, cluster()).unwrap();
    let serve = |extra: &[&str]| {
        Command::new(LEASH)
            .arg("serve")
            .arg("--insecure")
            .args(["--listen", &http::free_port().to_string()])
            .args(["--http", &http::free_port().to_string()])
            .arg("--store")
            .arg(dir.path().join("leash.db"))
            .arg("--cluster")
            .arg(&cluster_file)
            .args(extra)
            .output()
            .unwrap()
    };
    // Refused before anything is bound: the documentation address is never listened on.
    let o = serve(&["--ui-listen", "198.51.100.7:8081"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--ui-listen 198.51.100.7:8081 is not a loopback address")
            && stderr.contains("--ui-auth kube")
            && stderr.contains("--ui-auth none"),
        "{stderr}"
    );

    let o = serve(&[
        "--ui-listen",
        &http::free_port().to_string(),
        "--ui-auth",
        "kube",
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--ui-auth kube needs the API server (--kube)"),
        "{stderr}"
    );

    let o = serve(&["--ui-auth", "password"]);
    assert_eq!(o.status.code(), Some(2));
}

/// Whether the test may make a network namespace of its own (`unshare -rn`: user and network
/// namespaces, with `ip` inside); if not, it skips with the reason, unless
/// `LEASH_REQUIRE_PRIVILEGED=1` makes that a failure.
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

/// `--ui-auth none` on an address that is not loopback starts and serves `/v1`, with a
/// warning. The address exists only in a network namespace of the test's own (`unshare -rn`),
/// where the server and its client run.
#[test]
fn ui_auth_none_serves_beyond_loopback_with_a_warning() {
    if !private_netns_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster_file = dir.path().join("cluster.yaml");
    std::fs::write(&cluster_file, cluster()).unwrap();
    let db = store(dir.path());
    let log = dir.path().join("serve.log");
    let script = r#"
set -e
ip link set lo up
ip addr add 203.0.113.5/32 dev lo
"$LEASH" serve --insecure --listen 127.0.0.1:7443 --http 127.0.0.1:8080 \
    --ui-listen 203.0.113.5:8081 --ui-auth none --store "$DB" --cluster "$CLUSTER" 2>"$LOG" &
pid=$!
code=000
for _ in $(seq 1 300); do
    if exec 3<>/dev/tcp/203.0.113.5/8081; then
        printf 'GET /v1/workloads HTTP/1.1\r\nHost: 203.0.113.5:8081\r\nConnection: close\r\n\r\n' >&3
        read -r _ code _ <&3 || true
        exec 3>&-
        [ "$code" = 200 ] && break
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
        .env("DB", &db)
        .env("CLUSTER", &cluster_file)
        .env("LOG", &log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        stdout.contains("status=200"),
        "{stdout}\n{}\n{log}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        log.contains("--ui-auth none") && log.contains("without authentication"),
        "{log}"
    );
}

/// A fake API server holding the cluster, with tokens and grants: admin may `get`
/// egressmaps everywhere (a ClusterRoleBinding), alice (group team-shop) in shop only (a
/// RoleBinding), bob nowhere.
fn api_with_users(rt: &tokio::runtime::Runtime) -> FakeApi {
    let api = rt.block_on(FakeApi::start()).unwrap();
    load_into(&api, &cluster());
    api.add_token(ADMIN, "admin", &["ops"]);
    api.add_token(ALICE, "alice", &["team-shop"]);
    api.add_token(BOB, "bob", &[]);
    api.grant(
        Subject::User("admin".into()),
        None,
        "get",
        "leash.dev",
        "egressmaps",
    );
    api.grant(
        Subject::Group("team-shop".into()),
        Some("shop"),
        "get",
        "leash.dev",
        "egressmaps",
    );
    // A grant of another resource gives nothing.
    api.grant(
        Subject::User("bob".into()),
        Some("bank"),
        "list",
        "leash.dev",
        "egressmaps",
    );
    api
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn with_kube_auth_each_user_sees_only_the_namespaces_rbac_grants() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = api_with_users(&rt);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let db = store(dir.path());
    let source = ["--kube", "--kubeconfig", kubeconfig.to_str().unwrap()];
    let server =
        ServeProcess::start_from(dir.path(), &db, &source, "200ms", &["--ui-auth", "kube"]);
    let ui = server.ui;
    let admin = bearer(ADMIN);
    let alice = bearer(ALICE);
    let as_admin = [("Authorization", admin.as_str())];
    let as_alice = [("Authorization", alice.as_str())];

    // No token, a malformed header, a wrong token: 401, asking for a bearer token.
    for headers in [
        vec![],
        vec![("Authorization", "Basic YWRtaW46YWRtaW4=")],
        vec![("Authorization", "Bearer")],
    ] {
        let r = get_with(ui, "/v1/workloads", &headers);
        assert_eq!(r.status, 401, "{headers:?}: {}", r.body);
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        assert_security_headers(&r, true);
    }
    let wrong = bearer(WRONG);
    let r = get_with(ui, "/v1/workloads", &[("Authorization", wrong.as_str())]);
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(!r.body.contains(WRONG), "the token is echoed: {}", r.body);
    // A page sends a browser to the login form.
    let r = get_with(ui, "/", &[]);
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));

    // The admin (cluster-wide grant) sees both namespaces; both alerts exist.
    wait_for("both alerts", || {
        let r = get_with(ui, "/v1/alerts", &as_admin);
        r.status == 200 && namespaces(&json(&r)) == set(&["bank", "shop"])
    });
    wait_for("the rollout board", || {
        get_with(ui, "/v1/rollout", &as_admin).status == 200
    });
    let all = json(&get_with(ui, "/v1/workloads", &as_admin));
    assert_eq!(namespaces(&all), set(&["bank", "shop"]));
    let board = json(&get_with(ui, "/v1/rollout", &as_admin));
    assert_eq!(namespaces(&board["workloads"]), set(&["bank", "shop"]));

    // Alice (shop only) sees shop in every cluster-wide answer, and nothing of bank.
    let mine = get_with(ui, "/v1/workloads", &as_alice);
    assert_security_headers(&mine, true);
    assert_eq!(namespaces(&json(&mine)), set(&["shop"]));
    let board = json(&get_with(ui, "/v1/rollout", &as_alice));
    assert_eq!(namespaces(&board["workloads"]), set(&["shop"]));
    for list in ["breaks", "denied"] {
        let listed = namespaces(&board["guardrails"][list]);
        assert!(listed.iter().all(|ns| ns == "shop"), "{list}: {listed:?}");
    }
    let alerts = json(&get_with(ui, "/v1/alerts", &as_alice));
    assert_eq!(namespaces(&alerts), set(&["shop"]));
    assert!(!alerts.to_string().contains("ledger"), "{alerts}");
    let page = get_with(ui, "/v1/workloads?limit=1", &as_alice);
    assert_eq!(namespaces(&json(&page)), set(&["shop"]));
    assert_eq!(page.header("link"), None, "bank's workload is no next page");
    for path in [
        "/v1/namespaces/shop/audit",
        "/v1/namespaces/shop/rollout",
        "/v1/namespaces/shop/recommendations",
        "/v1/namespaces/shop/workloads/Deployment/web/destinations",
        "/v1/alerts?namespace=shop",
    ] {
        let r = get_with(ui, path, &as_alice);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    for path in [
        "/v1/namespaces/bank/audit",
        "/v1/namespaces/bank/rollout",
        "/v1/namespaces/bank/recommendations",
        "/v1/namespaces/bank/workloads/Deployment/ledger/destinations",
        "/v1/namespaces/ba%6Ek/audit",
        "/v1/alerts?namespace=bank",
    ] {
        let r = get_with(ui, path, &as_alice);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert!(!r.body.contains("203.0.113.20"), "{path}: {}", r.body);
        assert_security_headers(&r, true);
    }

    // The egress map: alice's shows only edges from shop; bank's namespace and workloads are
    // 403 by name, and its flow appears nowhere.
    wait_for("the egress map", || {
        get_with(ui, "/v1/map", &as_admin).status == 200
    });
    let map = json(&get_with(ui, "/v1/map", &as_admin));
    assert!(
        map.to_string().contains("wl:bank/Deployment/ledger"),
        "{map}"
    );
    let map = get_with(ui, "/v1/map", &as_alice);
    assert_security_headers(&map, true);
    let map = json(&map);
    let sources: BTreeSet<&str> = map["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["from"].as_str().unwrap())
        .collect();
    assert_eq!(sources, BTreeSet::from(["wl:shop/Deployment/web"]), "{map}");
    assert!(!map.to_string().contains("ledger"), "{map}");
    assert!(!map.to_string().contains("203.0.113.20"), "{map}");
    for path in [
        "/v1/map/namespaces/shop",
        "/v1/map/workloads/shop/Deployment/web",
    ] {
        let r = get_with(ui, path, &as_alice);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    for path in [
        "/v1/map?namespace=bank",
        "/v1/map/namespaces/bank",
        "/v1/map/workloads/bank/Deployment/ledger",
    ] {
        let r = get_with(ui, path, &as_alice);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
        assert!(!r.body.contains("203.0.113.20"), "{path}: {}", r.body);
    }

    // Bob may `get` nowhere (his `list` grant is not `get`): empty answers, 403 by name.
    let bob = bearer(BOB);
    let as_bob = [("Authorization", bob.as_str())];
    assert_eq!(
        json(&get_with(ui, "/v1/workloads", &as_bob)),
        Value::Array(vec![])
    );
    assert_eq!(
        json(&get_with(ui, "/v1/alerts", &as_bob)),
        Value::Array(vec![])
    );
    assert_eq!(
        get_with(ui, "/v1/namespaces/bank/audit", &as_bob).status,
        403
    );
    // No namespace at all is no map, rather than every namespace's.
    assert_eq!(get_with(ui, "/v1/map", &as_bob).status, 403);

    // Identity headers of proxies are not trusted: alone they are no login, and with a
    // token they change nobody's access.
    let forged = [
        ("X-Remote-User", "admin"),
        ("X-Remote-Group", "system:masters"),
        ("X-Forwarded-User", "admin"),
        ("X-Forwarded-Groups", "system:masters"),
        ("Impersonate-User", "admin"),
        ("Impersonate-Group", "system:masters"),
    ];
    let r = get_with(ui, "/v1/workloads", &forged);
    assert_eq!(r.status, 401, "{}", r.body);
    let mut forged_alice = forged.to_vec();
    forged_alice.extend(as_alice);
    let r = get_with(ui, "/v1/workloads", &forged_alice);
    assert_eq!(namespaces(&json(&r)), set(&["shop"]));
    assert_eq!(
        get_with(ui, "/v1/namespaces/bank/audit", &forged_alice).status,
        403
    );

    // The reviews the recommender made: who alice is, then `get` on egressmaps per namespace.
    let requests = api.requests();
    let reviews: Vec<Value> = requests
        .iter()
        .filter(|r| r.path == leash_lab::fake_api::ACCESS_REVIEWS)
        .map(|r| r.body_json().unwrap())
        .collect();
    let for_alice = reviews
        .iter()
        .find(|r| {
            r["spec"]["user"] == "alice" && r["spec"]["resourceAttributes"]["namespace"] == "bank"
        })
        .expect("a SubjectAccessReview of alice in bank");
    assert_eq!(for_alice["spec"]["groups"][0], "team-shop");
    let attributes = &for_alice["spec"]["resourceAttributes"];
    assert_eq!(
        (
            &attributes["verb"],
            &attributes["group"],
            &attributes["resource"]
        ),
        (
            &Value::from("get"),
            &Value::from("leash.dev"),
            &Value::from("egressmaps")
        )
    );
    // Every request the recommender made is one its RBAC grants (deploy/tests/rbac.rs; the
    // Lease of leader election, on by default with --kube: the ha overlay's Role).
    let declared = [
        leash::cluster::watch::API_ACCESS,
        leash::cluster::events::EVENTS_ACCESS,
        leash::serve::auth::review::REVIEW_ACCESS,
        leash::serve::leader::LEASE_ACCESS,
    ]
    .concat();
    for access in requests
        .iter()
        .filter_map(leash_lab::fake_api::Request::access)
    {
        assert!(
            declared.iter().any(|d| d.group == access.group
                && d.resource == access.resource
                && d.verbs.contains(&access.verb)),
            "{access:?} is not declared"
        );
    }
    // Decisions are cached per token: far fewer TokenReviews than requests.
    let token_reviews = requests
        .iter()
        .filter(|r| {
            r.path == leash_lab::fake_api::TOKEN_REVIEWS
                && r.body_json().is_some_and(|b| b["spec"]["token"] == ALICE)
        })
        .count();
    assert!(
        (1..=3).contains(&token_reviews),
        "{token_reviews} TokenReviews of alice"
    );

    // The recommender's own credentials refused by the API server: 503, never access.
    api.refuse_reviews(Some(403));
    let fresh = bearer("tok-fresh-3c8e1a7d5b2f9e4c6a0d");
    let r = get_with(ui, "/v1/workloads", &[("Authorization", fresh.as_str())]);
    assert_eq!(r.status, 503, "{}", r.body);
    api.refuse_reviews(None);

    let log = server.log();
    for token in [ADMIN, ALICE, BOB, WRONG, "tok-fresh-3c8e1a7d5b2f9e4c6a0d"] {
        assert!(!log.contains(token), "a token in the log:\n{log}");
    }
    assert!(log.contains("cannot review a UI request"), "{log}");
}

#[test]
fn the_login_form_opens_a_session_cookie_that_logout_ends() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = api_with_users(&rt);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let db = store(dir.path());
    let source = ["--kube", "--kubeconfig", kubeconfig.to_str().unwrap()];
    let server =
        ServeProcess::start_from(dir.path(), &db, &source, "200ms", &["--ui-auth", "kube"]);
    let ui = server.ui;
    let origin = format!("http://{ui}");
    let form_type = ("Content-Type", "application/x-www-form-urlencoded");

    let form = get_with(ui, "/login", &[]);
    assert_eq!(form.status, 200);
    assert_security_headers(&form, true);
    assert!(
        form.body.contains("<label for=\"token\">") && form.body.contains("id=\"token\""),
        "{}",
        form.body
    );
    assert!(!form.body.contains("<script"), "{}", form.body);

    // A wrong token: no session, and the token is not echoed.
    let body = format!("token={WRONG}");
    let r = request(
        ui,
        "POST",
        "/login",
        &[form_type, ("Origin", origin.as_str())],
        &body,
    )
    .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.header("set-cookie"), None);
    assert!(!r.body.contains(WRONG), "{}", r.body);

    // From another site: refused before the token is looked at.
    let body = format!("token={ALICE}");
    for headers in [
        vec![form_type, ("Origin", "http://evil.test")],
        vec![form_type, ("Referer", "http://evil.test/page")],
        vec![form_type],
        vec![
            form_type,
            ("Origin", origin.as_str()),
            ("Sec-Fetch-Site", "cross-site"),
        ],
    ] {
        let r = request(ui, "POST", "/login", &headers, &body).unwrap();
        assert_eq!(r.status, 403, "{headers:?}: {}", r.body);
        assert_eq!(r.header("set-cookie"), None, "{headers:?}");
    }

    // Alice logs in: a session cookie with exactly the required flags.
    let r = request(
        ui,
        "POST",
        "/login",
        &[form_type, ("Origin", origin.as_str())],
        &body,
    )
    .unwrap();
    assert_eq!(
        (r.status, r.header("location")),
        (303, Some("/")),
        "{}",
        r.body
    );
    let set_cookie = r.header("set-cookie").unwrap().to_owned();
    let (pair, flags) = set_cookie.split_once("; ").unwrap();
    assert_eq!(
        flags,
        "HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=28800"
    );
    let (name, id) = pair.split_once('=').unwrap();
    assert_eq!(name, "leash_session");
    assert!(id.len() >= 43 && !id.contains(ALICE), "{id}");
    assert!(!set_cookie.contains(ALICE));

    // The cookie stands for alice's token: her namespaces, and no others.
    let cookie = format!("leash_session={id}");
    let with_cookie = [("Cookie", cookie.as_str())];
    let r = get_with(ui, "/v1/workloads", &with_cookie);
    assert_eq!(namespaces(&json(&r)), set(&["shop"]));
    assert_eq!(
        get_with(ui, "/v1/namespaces/bank/audit", &with_cookie).status,
        403
    );
    // A made-up session is nobody.
    let r = get_with(ui, "/v1/workloads", &[("Cookie", "leash_session=made-up")]);
    assert_eq!(r.status, 401);

    // Logout from another site does nothing; from the UI it ends the session.
    let r = request(
        ui,
        "POST",
        "/logout",
        &[("Cookie", cookie.as_str()), ("Origin", "http://evil.test")],
        "",
    )
    .unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(get_with(ui, "/v1/workloads", &with_cookie).status, 200);
    let r = request(
        ui,
        "POST",
        "/logout",
        &[("Cookie", cookie.as_str()), ("Origin", origin.as_str())],
        "",
    )
    .unwrap();
    assert_eq!((r.status, r.header("location")), (303, Some("/login")));
    assert!(
        r.header("set-cookie")
            .is_some_and(|c| c.starts_with("leash_session=;") && c.contains("Max-Age=0")),
        "{:?}",
        r.header("set-cookie")
    );
    let r = get_with(ui, "/v1/workloads", &with_cookie);
    assert_eq!(r.status, 401, "the session ended: {}", r.body);

    let log = server.log();
    assert!(!log.contains(ALICE) && !log.contains(WRONG), "{log}");
    assert!(!log.contains(id), "the session id in the log:\n{log}");
}
