//! The `leash serve` read API in process, over a real SQLite store: the bounds that keep it
//! from delaying ingest or growing memory (a concurrency limit answered with `503`, reads
//! scoped to the namespace or workload asked for, paged answers) and its parameter checks.

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
use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use chrono::{DateTime, Utc};
use leash::serve::auth::Auth;
use leash::serve::http::{AppState, ReadLimits, router};
use leash::serve::ui_http::ui_router;
use leash::store::{
    self, BatchId, Commit, DnsObservation, FlowObservation, Scope, SqliteStore, Store, Subject,
    WorkloadRef, WorkloadTotals,
};
use leash_records::Protocol;
use support::snapshots;
use tokio::sync::watch;
use tower::ServiceExt as _;

/// Two namespaces, one Deployment each; shop's egress is locked down to DNS.
fn snapshot() -> String {
    snapshots::shop_web_dns_only_and_bank("ledger")
}

fn workload(ns: &str, name: &str) -> WorkloadRef {
    WorkloadRef {
        namespace: ns.into(),
        kind: "Deployment".into(),
        name: name.into(),
    }
}

fn flow(w: &WorkloadRef, dst: &str, name: &str, at: DateTime<Utc>) -> FlowObservation {
    FlowObservation {
        workload: w.clone(),
        protocol: Protocol::Tcp,
        dst: dst.parse().unwrap(),
        port: 443,
        count: 2,
        first_seen: at,
        last_seen: at,
        names: BTreeSet::from([name.to_owned()]),
        pods: Default::default(),
        established: 2,
        failed: 0,
    }
}

fn dns(w: &WorkloadRef, query: &str, ip: &str, at: DateTime<Utc>) -> DnsObservation {
    let ip: IpAddr = ip.parse().unwrap();
    DnsObservation {
        workload: w.clone(),
        server: "198.51.100.53".parse().unwrap(),
        query: query.into(),
        count: 1,
        first_seen: at,
        last_seen: at,
        resolved: BTreeSet::from([(query.to_owned(), ip)]),
        addresses: Default::default(),
    }
}

/// A store that records the scopes it is asked for and, when armed, holds every scoped read
/// until released: a request held open inside the read API.
struct Probe {
    inner: SqliteStore,
    scopes: Mutex<Vec<Scope>>,
    unscoped: Mutex<u32>,
    hold: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl Probe {
    fn pause(&self) {
        let hold = self.hold.lock().unwrap().take();
        if let Some((entered, release)) = hold {
            entered.send(()).unwrap();
            release.recv().unwrap();
        }
    }
}

impl Store for Probe {
    fn commit(
        &self,
        id: &BatchId,
        flows: &[FlowObservation],
        dns: &[DnsObservation],
    ) -> store::Result<Commit> {
        self.inner.commit(id, flows, dns)
    }

    fn flows(&self, since: Option<DateTime<Utc>>) -> store::Result<Vec<FlowObservation>> {
        *self.unscoped.lock().unwrap() += 1;
        self.inner.flows(since)
    }

    fn dns(&self, since: Option<DateTime<Utc>>) -> store::Result<Vec<DnsObservation>> {
        *self.unscoped.lock().unwrap() += 1;
        self.inner.dns(since)
    }

    fn prune(&self, before: DateTime<Utc>) -> store::Result<u64> {
        self.inner.prune(before)
    }

    fn flows_in(&self, scope: &Scope, max: usize) -> store::Result<Vec<FlowObservation>> {
        self.scopes.lock().unwrap().push(scope.clone());
        self.pause();
        self.inner.flows_in(scope, max)
    }

    fn dns_in(&self, scope: &Scope, max: usize) -> store::Result<Vec<DnsObservation>> {
        self.scopes.lock().unwrap().push(scope.clone());
        self.inner.dns_in(scope, max)
    }

    fn workload_totals(
        &self,
        since: Option<DateTime<Utc>>,
        after: Option<&WorkloadRef>,
        max: usize,
    ) -> store::Result<Vec<WorkloadTotals>> {
        self.pause();
        self.inner.workload_totals(since, after, max)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Arc<Probe>,
    app: axum::Router,
}

/// The read API over a store holding flows of shop/web (203.0.113.10) and bank/ledger
/// (203.0.113.20), and DNS answers of each.
fn fixture(limits: ReadLimits) -> Fixture {
    fixture_with(limits, &snapshot())
}

/// [`fixture`] with the cluster model of `snapshot`.
fn fixture_with(limits: ReadLimits, snapshot: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, snapshot).unwrap();
    let state = leash::serve::state_from_file(&cluster).unwrap();
    let inner = SqliteStore::open(dir.path().join("leash.db")).unwrap();
    let now = Utc::now();
    let (web, ledger) = (workload("shop", "web"), workload("bank", "ledger"));
    inner
        .commit(
            &BatchId {
                node: "n1".into(),
                boot_id: "b".into(),
                seq: 1,
            },
            &[
                flow(&web, "203.0.113.10", "api.shop.test", now),
                flow(&ledger, "203.0.113.20", "api.bank.test", now),
            ],
            &[
                dns(&web, "api.shop.test", "203.0.113.10", now),
                dns(&ledger, "api.bank.test", "203.0.113.20", now),
            ],
        )
        .unwrap();
    let store = Arc::new(Probe {
        inner,
        scopes: Mutex::new(Vec::new()),
        unscoped: Mutex::new(0),
        hold: Mutex::new(None),
    });
    let (_tx, model) = watch::channel(Some(Arc::new(state)));
    let ingest = leash::ingest::IngestService::new(
        Arc::clone(&store) as Arc<dyn Store>,
        model.clone(),
        leash::ingest::Limits::default(),
    )
    .unwrap();
    let state = Arc::new(AppState {
        store: Arc::clone(&store) as Arc<dyn Store>,
        model,
        registry: Arc::new(prometheus_client::registry::Registry::default()),
        ingest_listening: AtomicBool::new(true),
        ingest,
        options: leash::recommend::Options::default(),
        rollout: leash::serve::shadow::no_board(),
        map: leash::serve::map_api::no_map(),
        pull_requests: tokio::sync::watch::channel(Default::default()).1,
    });
    // Both listeners' routes in one router: the UI's `/v1` (without authentication, as on
    // loopback) and `--http`'s health and metrics.
    let app = ui_router(Arc::clone(&state), limits, Auth::open()).merge(router(state));
    Fixture {
        _dir: dir,
        store,
        app,
    }
}

/// GET `path`: status, headers and body.
async fn get(app: &axum::Router, path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let response = app
        .clone()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 16 << 20).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

const V1_PATHS: [&str; 4] = [
    "/v1/workloads",
    "/v1/namespaces/shop/recommendations",
    "/v1/namespaces/shop/workloads/Deployment/web/destinations",
    "/v1/namespaces/shop/audit",
];

#[tokio::test]
async fn since_out_of_range_or_malformed_is_a_bad_request_on_every_path() {
    let f = fixture(ReadLimits::default());
    for path in V1_PATHS {
        // `300000years` before now is not a representable time: it used to panic.
        for since in ["300000years", "1001y", "7", "soon"] {
            let (status, _, body) = get(&f.app, &format!("{path}?since={since}")).await;
            assert_eq!(
                status,
                StatusCode::BAD_REQUEST,
                "{path}?since={since}: {body}"
            );
            assert!(body.contains(since), "the answer names the value: {body}");
        }
        let (status, _, body) = get(&f.app, &format!("{path}?since=1000y")).await;
        assert_eq!(status, StatusCode::OK, "{path}: the longest window: {body}");
    }
}

/// The duration grammar of the flags: `1h30m` (no space) is a window here too, as on the
/// command line (tests/cli_conventions.rs).
#[tokio::test]
async fn since_takes_the_flags_grammar() {
    let f = fixture(ReadLimits::default());
    for path in V1_PATHS {
        for since in ["1h30m", "1h%2030m", "90m"] {
            let (status, _, body) = get(&f.app, &format!("{path}?since={since}")).await;
            assert_eq!(status, StatusCode::OK, "{path}?since={since}: {body}");
        }
    }
}

/// Every JSON answer names a workload by `namespace` plus `workload: "Kind/name"`; `/v1`
/// keeps `kind` and `name` besides.
#[tokio::test]
async fn json_answers_name_workloads_by_namespace_and_kind_slash_name() {
    let f = fixture(ReadLimits::default());
    let (status, _, body) = get(&f.app, "/v1/workloads").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page[0]["namespace"], "bank");
    assert_eq!(page[0]["workload"], "Deployment/ledger");
    assert_eq!(page[0]["kind"], "Deployment");
    assert_eq!(page[0]["name"], "ledger");
    assert_eq!(page[1]["workload"], "Deployment/web");

    let (status, _, body) = get(&f.app, "/v1/namespaces/shop/audit").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let audit: serde_json::Value = serde_json::from_str(&body).unwrap();
    let w = &audit["workloads"][0];
    assert_eq!(w["namespace"], "shop");
    assert_eq!(w["workload"], "Deployment/web");
    assert_eq!(w["pod"], "web-x2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_api_answers_503_beyond_its_concurrency_limit_and_health_stays_up() {
    let f = fixture(ReadLimits {
        concurrent: 1,
        wait: Duration::from_millis(50),
        ..ReadLimits::default()
    });
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    *f.store.hold.lock().unwrap() = Some((entered_tx, release_rx));

    // The first request takes the only slot and stays inside the store until released.
    let app = f.app.clone();
    let held = tokio::spawn(async move {
        get(
            &app,
            "/v1/namespaces/shop/workloads/Deployment/web/destinations",
        )
        .await
    });
    tokio::task::spawn_blocking(move || entered.recv().unwrap())
        .await
        .unwrap();

    for path in V1_PATHS {
        let (status, headers, body) = get(&f.app, path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert_eq!(
            headers
                .get(header::RETRY_AFTER)
                .map(|v| v.to_str().unwrap()),
            Some("1"),
            "{path}"
        );
    }
    // Health and metrics are outside the limit.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, _, body) = get(&f.app, path).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{path} while /v1 is saturated: {body}"
        );
    }

    release.send(()).unwrap();
    let (status, _, body) = held.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("203.0.113.10"), "{body}");
    // The slot is free again.
    let (status, _, body) = get(&f.app, "/v1/namespaces/shop/audit").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn namespace_endpoints_read_and_return_only_that_namespace() {
    let f = fixture(ReadLimits::default());

    let (status, _, audit) = get(&f.app, "/v1/namespaces/shop/audit").await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    assert!(audit.contains("203.0.113.10"), "{audit}");
    assert!(
        !audit.contains("203.0.113.20"),
        "bank's flow in shop's audit: {audit}"
    );
    let audit: serde_json::Value = serde_json::from_str(&audit).unwrap();
    assert_eq!(audit["workloads"].as_array().unwrap().len(), 1);
    assert_eq!(audit["workloads"][0]["name"], "web");

    let (status, _, yaml) = get(&f.app, "/v1/namespaces/bank/recommendations").await;
    assert_eq!(status, StatusCode::OK, "{yaml}");
    assert!(yaml.contains("203.0.113.20/32"), "{yaml}");
    assert!(
        !yaml.contains("203.0.113.10"),
        "shop's flow in bank's policies: {yaml}"
    );
    assert!(!yaml.contains("namespace: shop"), "{yaml}");

    let (status, _, body) = get(
        &f.app,
        "/v1/namespaces/bank/workloads/Deployment/ledger/destinations",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let dests: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dests.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(dests[0]["dst"], "203.0.113.20");

    // What the store was asked for: each namespace or workload, never everything.
    assert_eq!(*f.store.unscoped.lock().unwrap(), 0, "an unscoped read");
    let subjects: Vec<Subject> = f
        .store
        .scopes
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.subject.clone())
        .collect();
    assert_eq!(
        subjects,
        [
            Subject::Namespace("shop".into()),
            Subject::Namespace("bank".into()),
            Subject::Namespace("bank".into()),
            Subject::Workload(workload("bank", "ledger")),
        ]
    );
}

#[tokio::test]
async fn workloads_come_in_pages_linked_by_a_cursor() {
    let f = fixture(ReadLimits::default());
    let (status, headers, body) = get(&f.app, "/v1/workloads?limit=1&since=1d").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page.as_array().unwrap().len(), 1);
    // (namespace, kind, name) order: bank before shop.
    assert_eq!(page[0]["namespace"], "bank");
    assert_eq!(page[0]["present"], true);
    let link = headers.get(header::LINK).unwrap().to_str().unwrap();
    assert_eq!(
        link,
        "</v1/workloads?after=bank%2FDeployment%2Fledger&limit=1&since=1d>; rel=\"next\""
    );
    let next = link
        .strip_prefix('<')
        .and_then(|l| l.split_once('>'))
        .unwrap()
        .0;
    let (status, headers, body) = get(&f.app, next).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["namespace"], "shop");
    assert_eq!(page[0]["destinations"], 1);
    assert_eq!(page[0]["count"], 2);
    assert!(
        headers.get(header::LINK).is_none(),
        "the last page links on"
    );

    let (status, headers, body) = get(&f.app, "/v1/workloads").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(headers.get(header::LINK).is_none());

    for bad in [
        "limit=0",
        "limit=1001",
        "after=shop",
        "after=shop/Deployment",
    ] {
        let (status, _, body) = get(&f.app, &format!("/v1/workloads?{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

#[tokio::test]
async fn answers_past_the_observation_bound_are_refused_not_computed() {
    let f = fixture(ReadLimits {
        max_observations: 0,
        ..ReadLimits::default()
    });
    for path in &V1_PATHS[1..] {
        let (status, _, body) = get(&f.app, path).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
        assert!(body.contains("more than 0 observations"), "{body}");
    }
}

#[tokio::test]
async fn recommendations_are_self_checked_like_leash_recommend() {
    // The ledger pod no longer carries its Deployment's label: the policy leash derives from
    // the Deployment's selector would not select it, and `default-deny-egress` would cut its
    // observed egress. `leash recommend` refuses such policies; the API used to serve them.
    let snapshot = snapshot();
    let relabelled = snapshot.replace(
        "    uid: uid-pod-ledger\n    labels: {app: ledger}",
        "    uid: uid-pod-ledger\n    labels: {app: ledger-canary}",
    );
    assert_ne!(relabelled, snapshot);
    let f = fixture_with(ReadLimits::default(), &relabelled);
    let (status, _, body) = get(&f.app, "/v1/namespaces/bank/recommendations").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(body.contains("self-check failed"), "{body}");
    assert!(body.contains("a bug in leash"), "{body}");
    assert!(
        body.contains("bank/ledger-y7 -> 203.0.113.20:443/TCP"),
        "names the flow it would deny: {body}"
    );
    assert!(!body.contains("kind: NetworkPolicy"), "no policies: {body}");
    // Other namespaces are unaffected.
    let (status, _, yaml) = get(&f.app, "/v1/namespaces/shop/recommendations").await;
    assert_eq!(status, StatusCode::OK, "{yaml}");
    assert!(yaml.contains("203.0.113.10/32"), "{yaml}");
}
