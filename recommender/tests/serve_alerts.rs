//! Alerts people receive from `leash serve`: the webhook sink against a real loopback HTTP
//! receiver (retries on `503` and `429` with `Retry-After`, no retry on `400`, Slack escaping,
//! the alert's JSON and its proposed fix, checked with leash's evaluator), alerts remembered in
//! the store across a restart, re-sent after `--alert-repeat`, `/v1/alerts`, and the
//! recurrence feed of the pull-request loop.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use k8s_openapi::api::networking::v1::NetworkPolicyEgressRule;
use leash::eval::Verdict;
use leash::serve::alert::{self, Alert, AlertSink};
use leash::store::{FlowObservation, SqliteStore, Store};
use support::http::{self, get};
use support::serve_process::ServeProcess;
use support::snapshots;
use support::store_flows::{self, commit};

/// shop/web is locked down to DNS; bank/db is a workload it may come to call.
fn snapshot() -> String {
    snapshots::shop_web_dns_only_and_bank("db")
}

/// A DNS name a tenant controls: Slack link and mention syntax, a pipe, a line break.
const HOSTILE: &str = "<!channel>&<https://evil.test|click>\nforged.test";

/// The secret part of the webhook URL: never in a log line.
const SECRET_PATH: &str = "/services/T0/B0/SECRETPATH";

fn flow(dst: &str, port: u16, names: &[&str], at: DateTime<Utc>) -> FlowObservation {
    store_flows::deployment_flow("shop", "web", dst, port, names, at)
}

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Hit {
    at: Instant,
    path: String,
    content_type: Option<String>,
    body: serde_json::Value,
    answered: u16,
}

/// A webhook receiver over real HTTP on loopback: answers each request by its script
/// (status, `Retry-After`), then `200`, and records every request.
struct Receiver {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    _rt: tokio::runtime::Runtime,
}

type Script = Arc<Vec<(u16, Option<&'static str>)>>;

async fn receive(
    State((hits, script)): State<(Arc<Mutex<Vec<Hit>>>, Script)>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut hits = hits.lock().unwrap();
    let (status, retry_after) = script.get(hits.len()).copied().unwrap_or((200, None));
    hits.push(Hit {
        at: Instant::now(),
        path: uri.path().to_owned(),
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        answered: status,
    });
    let mut response = (StatusCode::from_u16(status).unwrap(), "answer").into_response();
    if let Some(ra) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", ra.parse().unwrap());
    }
    response
}

impl Receiver {
    fn start(script: Vec<(u16, Option<&'static str>)>) -> Receiver {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(receive)
            .with_state((Arc::clone(&hits), Arc::new(script)));
        rt.spawn(async move { axum::serve(listener, app).await });
        Receiver {
            addr,
            hits,
            _rt: rt,
        }
    }

    fn url(&self) -> String {
        format!("http://{}{SECRET_PATH}", self.addr)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

/// `leash serve` over the snapshot and store in `dir`, checking every 200 ms.
struct Server(ServeProcess);

impl Server {
    fn start(dir: &Path, extra: &[&str]) -> Server {
        Server(ServeProcess::start(
            dir,
            &dir.join("leash.db"),
            &dir.join("cluster.yaml"),
            "200ms",
            extra,
        ))
    }

    fn get(&self, path: &str) -> serde_json::Value {
        self.0.get_json(path)
    }

    fn metric(&self, line: &str) -> bool {
        get(self.0.http, "/metrics").is_ok_and(|(_, m)| m.lines().any(|l| l == line))
    }

    /// The number of checks so far.
    fn checks(&self) -> u64 {
        self.0
            .metrics()
            .lines()
            .find_map(|l| l.strip_prefix("leash_egress_checks_total "))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Waits until `n` more checks have run.
    fn wait_checks(&self, n: u64) {
        let start = self.checks();
        wait_for("more checks", || self.checks() >= start + n);
    }

    fn log(&self) -> String {
        self.0.log()
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
/// The verdict of web's flow to `dst:port/TCP` under the snapshot's policies plus a policy
/// for web whose egress is `fix`, with leash's evaluator.
fn verdict_with_fix(dir: &Path, fix: &str, dst: &str, port: u16) -> Verdict {
    let rules: Vec<NetworkPolicyEgressRule> = serde_norway::from_str(fix).unwrap();
    let policy = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "web-fix", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"], "egress": rules},
    });
    let snapshot = format!(
        "{}- {}\n",
        snapshot(),
        serde_json::to_string(&policy).unwrap()
    );
    let path = dir.join("with-fix.yaml");
    std::fs::write(&path, snapshot).unwrap();
    let state = leash::serve::state_from_file(&path).unwrap();
    let (judged, skipped) =
        leash::serve::verdicts::judge(&state, &[flow(dst, port, &[], Utc::now())]).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(judged.len(), 1);
    judged[0].evaluation.verdict
}

#[test]
fn webhook_delivers_after_retries_and_a_restart_does_not_send_again() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), snapshot()).unwrap();
    let db = dir.path().join("leash.db");
    let receiver = Receiver::start(vec![(503, None), (429, Some("1"))]);
    let url_file = dir.path().join("webhook-url");
    std::fs::write(&url_file, format!("{}\n", receiver.url())).unwrap();
    let webhook = ["--alert-webhook-file", url_file.to_str().unwrap()];

    commit(&db, 1, &[flow("203.0.113.10", 443, &[HOSTILE], Utc::now())]);
    let server = Server::start(dir.path(), &webhook);
    wait_for("the third delivery attempt", || receiver.hits().len() >= 3);
    wait_for("the delivery metric", || {
        server.metric("leash_alert_webhook_deliveries_total{result=\"delivered\"} 1")
    });
    let hits = receiver.hits();
    assert_eq!(
        hits.iter().map(|h| h.answered).collect::<Vec<_>>(),
        vec![503, 429, 200],
        "retried after 503 and 429, delivered once"
    );
    assert!(
        hits[2].at.duration_since(hits[1].at) >= Duration::from_millis(950),
        "Retry-After: 1 was honoured"
    );
    for h in &hits {
        assert_eq!(h.path, SECRET_PATH);
        assert_eq!(h.content_type.as_deref(), Some("application/json"));
        assert_eq!(h.body, hits[0].body, "every attempt sends the same alert");
    }

    // The text: one line, and nothing from the name can open a link or a mention.
    let body = &hits[2].body;
    let text = body["text"].as_str().unwrap();
    assert!(
        !text.contains(['<', '>', '\n']),
        "Slack control characters escaped: {text}"
    );
    assert!(
        text.contains("(&lt;!channel&gt;&amp;&lt;https://evil.test|click&gt;\u{fffd}forged.test)"),
        "{text}"
    );
    assert!(
        text.starts_with("leash: Deployment/web web-x2 sent 2 egress to 203.0.113.10:443/TCP"),
        "{text}"
    );

    // The alert, in the /v1 shape.
    let a = &body["alert"];
    assert_eq!(a["namespace"], "shop");
    assert_eq!(a["workload"], "Deployment/web");
    assert_eq!(
        (a["kind"].as_str(), a["name"].as_str()),
        (Some("Deployment"), Some("web"))
    );
    assert_eq!(a["pod"], "web-x2");
    assert_eq!(a["dst"], "203.0.113.10");
    assert_eq!(a["port"], 443);
    assert_eq!(a["protocol"], "TCP");
    assert_eq!(a["count"], 2);
    assert_eq!(a["occurrences"], 1);
    assert_eq!(a["names"], serde_json::json!([HOSTILE]));
    assert_eq!(a["policies"], serde_json::json!(["shop/web-dns-only"]));
    assert_eq!(a["pull_request"], serde_json::Value::Null);
    for t in ["first_sent", "last_sent", "last_seen"] {
        let s = a[t].as_str().unwrap();
        assert!(
            DateTime::parse_from_rfc3339(s).is_ok() && s.ends_with('Z') && !s.contains('.'),
            "{t}: {s}"
        );
    }
    let keys: Vec<&String> = a.as_object().unwrap().keys().collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "keys in sorted order");

    // The proposed fix: a /32 for exactly that address and port, which allows the flow and
    // nothing next to it.
    let fix = a["fix"].as_str().unwrap();
    let rules: Vec<NetworkPolicyEgressRule> = serde_norway::from_str(fix).unwrap();
    assert_eq!(rules.len(), 1, "{fix}");
    let to = rules[0].to.as_ref().unwrap();
    assert_eq!(to.len(), 1, "{fix}");
    assert_eq!(to[0].ip_block.as_ref().unwrap().cidr, "203.0.113.10/32");
    let ports = rules[0].ports.as_ref().unwrap();
    assert_eq!(ports.len(), 1, "{fix}");
    assert_eq!(ports[0].protocol.as_deref(), Some("TCP"));
    assert_eq!(
        ports[0].port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(443))
    );
    assert_eq!(
        verdict_with_fix(dir.path(), fix, "203.0.113.10", 443),
        Verdict::Allow
    );
    assert_eq!(
        verdict_with_fix(dir.path(), fix, "203.0.113.10", 444),
        Verdict::Deny
    );
    assert_eq!(
        verdict_with_fix(dir.path(), fix, "203.0.113.11", 443),
        Verdict::Deny
    );

    // /v1/alerts remembers it, in the webhook's shape.
    assert_eq!(server.get("/v1/alerts"), serde_json::json!([a]));
    assert_eq!(
        server.get("/v1/alerts?namespace=shop"),
        serde_json::json!([a])
    );
    assert_eq!(
        server.get("/v1/alerts?namespace=bank"),
        serde_json::json!([])
    );

    // The webhook URL's secret path is never logged, though failures were (at debug).
    let log = server.log();
    assert!(log.contains(&format!("http://{}", receiver.addr)), "{log}");
    assert!(!log.contains("SECRETPATH"), "{log}");
    drop(server);

    // A restart with the same store remembers the alert: nothing is sent again.
    let server = Server::start(dir.path(), &webhook);
    server.wait_checks(3);
    assert_eq!(receiver.hits().len(), 3, "not sent again after a restart");
    assert_eq!(server.get("/v1/alerts")[0]["occurrences"], 1);

    // New events within --alert-repeat: one more occurrence, not sent again.
    commit(&db, 2, &[flow("203.0.113.10", 443, &[], Utc::now())]);
    wait_for("the second occurrence", || {
        server.get("/v1/alerts")[0]["occurrences"] == 2
    });
    server.wait_checks(2);
    assert_eq!(
        server.get("/v1/alerts")[0]["occurrences"],
        2,
        "no new events, no occurrence"
    );
    assert_eq!(
        receiver.hits().len(),
        3,
        "not sent again within --alert-repeat"
    );
    assert!(!server.log().contains("SECRETPATH"));
}

#[test]
fn a_refused_alert_is_not_retried_and_a_recurring_one_is_sent_again_after_the_repeat() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), snapshot()).unwrap();
    let db = dir.path().join("leash.db");
    let receiver = Receiver::start(vec![(400, None)]);
    let url = receiver.url();
    let args = ["--alert-webhook", url.as_str(), "--alert-repeat", "1s"];

    commit(
        &db,
        1,
        &[flow("203.0.113.10", 443, &["api.test"], Utc::now())],
    );
    let server = Server::start(dir.path(), &args);
    wait_for("the failure metric", || {
        server.metric("leash_alert_webhook_deliveries_total{result=\"failed\"} 1")
    });
    assert_eq!(receiver.hits().len(), 1, "a 400 is not retried");
    assert!(
        server.log().contains("answered 400 Bad Request"),
        "{}",
        server.log()
    );

    // New events after --alert-repeat: sent again, with the occurrences counted.
    for (seq, occurrences) in [(2, 2), (3, 3)] {
        std::thread::sleep(Duration::from_millis(1100));
        commit(&db, seq, &[flow("203.0.113.10", 443, &[], Utc::now())]);
        wait_for("the alert sent again", || {
            receiver.hits().len() == usize::try_from(occurrences).unwrap()
        });
        let hit = receiver.hits().pop().unwrap();
        assert_eq!(hit.answered, 200);
        assert_eq!(hit.body["alert"]["occurrences"], occurrences);
        assert_eq!(
            hit.body["alert"]["count"],
            2 * occurrences,
            "the events so far"
        );
        assert_eq!(hit.body["alert"]["names"], serde_json::json!(["api.test"]));
    }
    wait_for("the delivery metric", || {
        server.metric("leash_alert_webhook_deliveries_total{result=\"delivered\"} 2")
    });
    let listed = server.get("/v1/alerts");
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["occurrences"], 3);
    assert_ne!(listed[0]["first_sent"], listed[0]["last_sent"]);
}

/// Records what it is given.
#[derive(Default)]
struct Recorder(Mutex<Vec<Alert>>);

impl AlertSink for Recorder {
    fn publish<'a>(&'a self, alert: &'a Alert) -> futures::future::BoxFuture<'a, ()> {
        self.0.lock().unwrap().push(alert.clone());
        Box::pin(async {})
    }
}

async fn wait_async(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recurrences_feed_the_pull_request_loop_and_alerts_carry_the_pull_request() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), snapshot()).unwrap();
    let db = dir.path().join("leash.db");
    let state = leash::serve::state_from_file(&dir.path().join("cluster.yaml")).unwrap();
    let (_model_tx, model) = tokio::sync::watch::channel(Some(Arc::new(state)));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&db).unwrap());
    let (prs_tx, prs) = tokio::sync::watch::channel(BTreeMap::new());
    prs_tx
        .send(BTreeMap::from([(
            "shop".to_owned(),
            "https://git.test/shop/policies/pull/7".to_owned(),
        )]))
        .unwrap();
    let (recur_tx, mut recur_rx) = tokio::sync::mpsc::channel(16);
    let recorder = Arc::new(Recorder::default());
    let task = tokio::spawn(alert::watch(
        Arc::clone(&store),
        model,
        alert::Options {
            interval: Duration::from_millis(50),
            repeat: Duration::from_secs(3600),
            retention: Duration::from_secs(86_400),
            recommend: leash::recommend::Options::default(),
        },
        alert::AlertMetrics::default(),
        vec![Arc::clone(&recorder) as Arc<dyn AlertSink>],
        prs,
        Some(recur_tx),
    ));

    // web calls bank/db's pod directly: the fix selects it by namespace and labels.
    commit(&db, 1, &[flow("198.51.100.20", 5432, &[], Utc::now())]);
    wait_async("the first alert", || !recorder.0.lock().unwrap().is_empty()).await;
    let first = recorder.0.lock().unwrap()[0].clone();
    assert_eq!(first.occurrences, 1);
    assert_eq!(
        first.pull_request.as_deref(),
        Some("https://git.test/shop/policies/pull/7")
    );
    let fix = first.fix.clone().unwrap();
    let rules: Vec<NetworkPolicyEgressRule> = serde_norway::from_str(&fix).unwrap();
    assert_eq!(rules.len(), 1, "{fix}");
    let peer = &rules[0].to.as_ref().unwrap()[0];
    assert!(peer.ip_block.is_none(), "{fix}");
    assert_eq!(
        peer.namespace_selector.as_ref().unwrap().match_labels,
        Some(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_owned(),
            "bank".to_owned()
        )])),
        "{fix}"
    );
    assert_eq!(
        peer.pod_selector.as_ref().unwrap().match_labels,
        Some(BTreeMap::from([("app".to_owned(), "db".to_owned())])),
        "{fix}"
    );
    assert_eq!(
        verdict_with_fix(dir.path(), &fix, "198.51.100.20", 5432),
        Verdict::Allow
    );
    assert_eq!(
        verdict_with_fix(dir.path(), &fix, "198.51.100.20", 5433),
        Verdict::Deny
    );
    let text = leash::serve::webhook::text(&first);
    assert!(
        text.ends_with(
            "; proposed fix in <https://git.test/shop/policies/pull/7|the pull request>"
        ),
        "{text}"
    );

    // A new alert is fed as it is found (occurrences 1); each check that finds new events is
    // a recurrence, fed with its occurrences; within the repeat interval it is not published
    // again.
    let found = tokio::time::timeout(Duration::from_secs(20), recur_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.occurrences, 1);
    assert_eq!(found.key(), first.key());
    for (seq, occurrences) in [(2, 2), (3, 3)] {
        commit(&db, seq, &[flow("198.51.100.20", 5432, &[], Utc::now())]);
        let recurred = tokio::time::timeout(Duration::from_secs(20), recur_rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(recurred.occurrences, occurrences);
        assert_eq!(recurred.key(), first.key());
        assert_eq!(recurred.first_sent, first.first_sent);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(recur_rx.try_recv().is_err(), "no new events, no recurrence");
    assert_eq!(recorder.0.lock().unwrap().len(), 1, "published once");
    let remembered = store.alerts(Some("shop")).unwrap();
    assert_eq!(remembered.len(), 1);
    assert_eq!(remembered[0].occurrences, 3);
    task.abort();
}
