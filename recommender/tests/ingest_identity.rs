//! Agents' identities (`--agent-auth token`): the ingest service over real gRPC on loopback
//! with mutual TLS, its TokenReviews answered by the fake API server as kube-apiserver
//! answers them. A batch from node A with node A's token is stored; a batch claiming node B
//! with node A's token is refused for good (PERMISSION_DENIED), counted, nothing stored; no
//! token or one for another audience is UNAUTHENTICATED; another ServiceAccount's token, or
//! one bound to no node, PERMISSION_DENIED; an unreachable API server UNAVAILABLE, and the
//! same batch accepted once it is back. Verdicts are cached per token, and an open stream
//! ends once its token stops being valid. `leash serve --kube`
//! asks for tokens by default and refuses `--agent-auth token` without an API server.

#![expect(
    clippy::unwrap_used,
    reason = "test set-up: a failed step must fail the test loudly"
)]
#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use leash::cluster::Cluster;
use leash::ingest::identity::{DEFAULT_AGENT_USER, Identity};
use leash::ingest::{IngestService, Limits};
use leash::state::ClusterState;
use leash::store::{Store, sqlite::SqliteStore};
use leash_lab::fake_api::{FakeApi, TOKEN_REVIEWS};
use leash_records::tls::{self, TlsConnector, TlsFiles};
use leash_records::wire::{self, v1, v1::ingest_client::IngestClient};
use leash_records::{FlowRecord, PodRef, Protocol};
use tokio::sync::watch;
use tonic::transport::Endpoint;
use tonic::{Code, Status};

const WAIT: Duration = Duration::from_secs(20);
const TOKEN_A: &str = "token-of-the-agent-on-node-a";

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        leash::certs::generate(dir.path(), &["127.0.0.1".to_owned()], &["agent".to_owned()])
            .unwrap();
        Pki { dir }
    }

    fn files(&self, name: &str) -> TlsFiles {
        let p = |f: String| self.dir.path().join(f);
        TlsFiles {
            cert: p(format!("{name}.pem")),
            key: p(format!("{name}-key.pem")),
            ca: p("ca.pem".to_owned()),
        }
    }
}

/// The ingest service with `identity` over mutual TLS on loopback, into a SQLite store.
struct Ingest {
    addr: SocketAddr,
    service: IngestService,
    store: Arc<SqliteStore>,
    task: tokio::task::JoinHandle<()>,
    _tls: tls::ReloadingServerConfig,
}

impl Drop for Ingest {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(pki: &Pki, db: &Path, identity: Identity) -> Ingest {
    let config = tls::ReloadingServerConfig::start(pki.files("server"), tls::DEFAULT_POLL).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store = Arc::new(SqliteStore::open(db).unwrap());
    let (_tx, cluster) = watch::channel(Some(Arc::new(ClusterState::from_cluster(
        Cluster::default(),
    ))));
    let service =
        IngestService::with_identity(store.clone(), cluster, Limits::default(), None, identity)
            .unwrap();
    let server = service.clone().into_server();
    let incoming = tls::incoming(listener, config.subscribe(), Duration::from_secs(5));
    let task = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .serve_with_incoming(server, incoming)
            .await;
    });
    Ingest {
        addr,
        service,
        store,
        task,
        _tls: config,
    }
}

impl Ingest {
    /// The stored batch ids, as `node/seq`.
    fn stored(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .store
            .batch_ids()
            .unwrap()
            .into_iter()
            .map(|(id, _)| format!("{}/{}", id.node, id.seq))
            .collect();
        ids.sort();
        ids
    }

    /// The value of metric line `name` (e.g. `leash_ingest_rejected_batches_total{...}`).
    fn metric(&self, name: &str) -> u64 {
        let mut registry = prometheus_client::registry::Registry::with_prefix("leash");
        self.service.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text.lines()
            .find_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                (k == name).then(|| v.parse().ok())?
            })
            .unwrap_or(0)
    }
}

fn flow(node: &str) -> FlowRecord {
    let t: DateTime<Utc> = "2026-12-01T09:00:00Z".parse().unwrap();
    FlowRecord {
        node: node.into(),
        pod: Some(PodRef {
            uid: String::new(),
            namespace: "shop".into(),
            name: "web".into(),
        }),
        cgroup: String::new(),
        protocol: Protocol::Tcp,
        dst: [203, 0, 113, 10].into(),
        dst_port: 443,
        count: 1,
        first_seen: t,
        last_seen: t,
        names: vec!["api.stripe.test".into()],
        outcome: None,
    }
}

fn batch(node: &str, seq: u64) -> v1::Batch {
    let id = v1::BatchId {
        node: node.into(),
        boot_id: "boot-1".into(),
        seq,
    };
    wire::batch_to_wire(id, &[flow(node)], &[]).unwrap()
}

/// One stream with `token` (none: no `authorization`) sending `batches`: the acks' ids, then
/// the status that ended it (`None`: ended cleanly).
async fn push(
    pki: &Pki,
    addr: SocketAddr,
    token: Option<&str>,
    batches: Vec<v1::Batch>,
) -> (Vec<u64>, Option<Status>) {
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .connect_with_connector(TlsConnector::new(pki.files("agent")))
        .await
        .unwrap();
    let mut client = IngestClient::new(channel);
    let mut request = tonic::Request::new(tokio_stream::iter(batches));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let mut acks = match tokio::time::timeout(WAIT, client.push(request))
        .await
        .unwrap()
    {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Some(status)),
    };
    let mut seqs = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, acks.message()).await.unwrap() {
            Ok(Some(ack)) => seqs.push(ack.id.unwrap().seq),
            Ok(None) => return (seqs, None),
            Err(status) => return (seqs, Some(status)),
        }
    }
}

fn reviews(api: &FakeApi) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == TOKEN_REVIEWS)
        .count()
}

async fn api_with_agents() -> FakeApi {
    let api = FakeApi::start().await.unwrap();
    api.add_service_account_token(
        TOKEN_A,
        "leash-system",
        "leash-agent",
        Some("node-a"),
        &["leash"],
    );
    api
}

fn token_identity(api: &FakeApi) -> Identity {
    Identity::token(api.client().unwrap(), DEFAULT_AGENT_USER.to_owned())
}

#[tokio::test]
async fn a_nodes_batches_are_stored_and_another_nodes_are_refused_for_good() {
    let api = api_with_agents().await;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ingest = serve(&pki, &dir.path().join("leash.db"), token_identity(&api)).await;

    let (acks, end) = push(&pki, ingest.addr, Some(TOKEN_A), vec![batch("node-a", 1)]).await;
    assert_eq!((acks, end.map(|s| s.code())), (vec![1], None));
    assert_eq!(ingest.stored(), ["node-a/1"]);

    // Node A's token claiming node B: refused, permanently, naming the batch; the stream
    // ends there, so a later batch of its own is not read either.
    let (acks, end) = push(
        &pki,
        ingest.addr,
        Some(TOKEN_A),
        vec![batch("node-a", 2), batch("node-b", 1), batch("node-a", 3)],
    )
    .await;
    assert_eq!(acks, vec![2]);
    let status = end.expect("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("batch node-b/boot-1/1"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("\"node-a\""),
        "{}",
        status.message()
    );
    assert!(!status.message().contains(TOKEN_A));
    assert_eq!(ingest.stored(), ["node-a/1", "node-a/2"]);
    assert_eq!(
        ingest.metric("leash_ingest_rejected_batches_total{cause=\"wrong_node\"}"),
        1
    );
    // The verdict is cached per token: one review for both streams.
    assert_eq!(reviews(&api), 1);
    let review = api
        .requests()
        .into_iter()
        .find(|r| r.path == TOKEN_REVIEWS)
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&review.body).unwrap();
    assert_eq!(body["spec"]["audiences"], serde_json::json!(["leash"]));
}

#[tokio::test]
async fn a_stream_without_a_valid_agent_token_is_unauthenticated() {
    let api = api_with_agents().await;
    // Valid tokens, but not for audience `leash`: a user's, and a pod's default token.
    api.add_token("token-of-a-user", "alice", &["team-shop"]);
    api.add_service_account_token(
        "default-token",
        "leash-system",
        "leash-agent",
        Some("node-a"),
        &[leash_lab::fake_api::API_AUDIENCE],
    );
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ingest = serve(&pki, &dir.path().join("leash.db"), token_identity(&api)).await;
    for (token, cause) in [
        (None, "no_token"),
        (Some("not-a-token-the-api-knows"), "invalid_token"),
        (Some("token-of-a-user"), "invalid_token"),
        (Some("default-token"), "invalid_token"),
    ] {
        let (acks, end) = push(&pki, ingest.addr, token, vec![batch("node-a", 1)]).await;
        let status = end.expect("refused");
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{token:?}: {status:?}"
        );
        assert!(acks.is_empty());
        if let Some(token) = token {
            assert!(!status.message().contains(token));
        }
        let line = format!("leash_ingest_refused_streams_total{{cause=\"{cause}\"}}");
        assert!(ingest.metric(&line) >= 1, "{line}");
    }
    assert!(ingest.stored().is_empty());
}

#[tokio::test]
async fn another_service_account_or_a_token_of_no_node_is_permission_denied() {
    let api = api_with_agents().await;
    api.add_service_account_token("web-token", "shop", "web", Some("node-a"), &["leash"]);
    api.add_service_account_token("unbound", "leash-system", "leash-agent", None, &["leash"]);
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ingest = serve(&pki, &dir.path().join("leash.db"), token_identity(&api)).await;
    for (token, cause, says) in [
        (
            "web-token",
            "wrong_identity",
            "system:serviceaccount:shop:web",
        ),
        (
            "unbound",
            "no_node",
            "authentication.kubernetes.io/node-name",
        ),
    ] {
        let (acks, end) = push(&pki, ingest.addr, Some(token), vec![batch("node-a", 1)]).await;
        let status = end.expect("refused");
        assert_eq!(status.code(), Code::PermissionDenied, "{token}: {status:?}");
        assert!(status.message().contains(says), "{}", status.message());
        assert!(acks.is_empty());
        let line = format!("leash_ingest_refused_streams_total{{cause=\"{cause}\"}}");
        assert_eq!(ingest.metric(&line), 1, "{line}");
    }
    assert!(ingest.stored().is_empty());
}

#[tokio::test]
async fn an_api_server_that_cannot_review_is_unavailable_and_the_batch_is_taken_later() {
    // A port nothing listens on, then the API server on it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client =
        kube::Client::try_from(kube::Config::new(format!("http://{addr}").parse().unwrap()))
            .unwrap();
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::token(client, DEFAULT_AGENT_USER.to_owned());
    let ingest = serve(&pki, &dir.path().join("leash.db"), identity).await;

    let (_, end) = push(&pki, ingest.addr, Some(TOKEN_A), vec![batch("node-a", 1)]).await;
    let status = end.expect("refused for now");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(ingest.stored().is_empty());

    let api = FakeApi::start_at(addr).await.unwrap();
    api.add_service_account_token(
        TOKEN_A,
        "leash-system",
        "leash-agent",
        Some("node-a"),
        &["leash"],
    );
    // The API server answers, but refuses the recommender's own review (no RBAC): still
    // the recommender's problem, not the agent's.
    api.refuse_reviews(Some(403));
    let (_, end) = push(&pki, ingest.addr, Some(TOKEN_A), vec![batch("node-a", 1)]).await;
    assert_eq!(end.map(|s| s.code()), Some(Code::Unavailable));
    api.refuse_reviews(None);

    let (acks, end) = push(&pki, ingest.addr, Some(TOKEN_A), vec![batch("node-a", 1)]).await;
    assert_eq!((acks, end.map(|s| s.code())), (vec![1], None));
    assert_eq!(ingest.stored(), ["node-a/1"]);
    assert_eq!(
        ingest.metric("leash_ingest_refused_streams_total{cause=\"review_unavailable\"}"),
        2
    );
}

/// A stream outlives its token by at most the verdict's lifetime: once the API server no
/// longer authenticates it (expired, its pod deleted), the next batch after the verdict
/// expired ends the stream with UNAUTHENTICATED, and nothing of it is stored.
#[tokio::test]
async fn an_open_stream_ends_when_its_token_stops_being_valid() {
    let api = api_with_agents().await;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ttl = Duration::from_millis(300);
    let identity = token_identity(&api).with_verdict_ttl(ttl);
    let ingest = serve(&pki, &dir.path().join("leash.db"), identity).await;
    let channel = Endpoint::from_shared(format!("https://{}", ingest.addr))
        .unwrap()
        .connect_with_connector(TlsConnector::new(pki.files("agent")))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN_A}").parse().unwrap(),
    );
    let mut acks = IngestClient::new(channel)
        .push(request)
        .await
        .unwrap()
        .into_inner();
    tx.send(batch("node-a", 1)).await.unwrap();
    let ack = tokio::time::timeout(WAIT, acks.message()).await.unwrap();
    assert_eq!(ack.unwrap().unwrap().id.unwrap().seq, 1);

    api.remove_token(TOKEN_A);
    tokio::time::sleep(ttl * 2).await;
    tx.send(batch("node-a", 2)).await.unwrap();
    let end = tokio::time::timeout(WAIT, acks.message()).await.unwrap();
    assert_eq!(end.expect_err("ended").code(), Code::Unauthenticated);
    assert_eq!(ingest.stored(), ["node-a/1"]);
    assert_eq!(reviews(&api), 2, "reviewed again once the verdict expired");
}

#[tokio::test]
async fn with_mtls_alone_any_agent_writes_for_any_node() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let ingest = serve(&pki, &dir.path().join("leash.db"), Identity::mtls()).await;
    let (acks, end) = push(&pki, ingest.addr, None, vec![batch("node-b", 1)]).await;
    assert_eq!((acks, end.map(|s| s.code())), (vec![1], None));
    assert_eq!(ingest.stored(), ["node-b/1"]);
}

/// `leash serve --kube` asks agents for tokens without being told; `--cluster FILE` has no
/// API server, so `--agent-auth token` is refused there (exit 2).
#[test]
fn serve_with_kube_asks_for_tokens_by_default() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(api_with_agents());
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let source = ["--kube", "--kubeconfig", kubeconfig.to_str().unwrap()];
    let db = dir.path().join("leash.db");
    let server = support::serve_process::ServeProcess::start_from(
        dir.path(),
        &db,
        &source,
        "1h",
        &[] as &[&str],
    );
    let push_plain = |token: Option<&'static str>, node: &'static str, seq| {
        let grpc = server.grpc;
        rt.block_on(async move {
            let channel = Endpoint::from_shared(format!("http://{grpc}"))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut request = tonic::Request::new(tokio_stream::iter(vec![batch(node, seq)]));
            if let Some(token) = token {
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
            }
            let mut client = IngestClient::new(channel);
            match client.push(request).await {
                Ok(r) => r.into_inner().message().await.map(|a| a.is_some()),
                Err(status) => Err(status),
            }
        })
    };
    let refused = push_plain(None, "node-a", 1).expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(push_plain(Some(TOKEN_A), "node-a", 1).ok(), Some(true));
    let forged = push_plain(Some(TOKEN_A), "node-b", 1).expect_err("another node");
    assert_eq!(forged.code(), Code::PermissionDenied);
    let metrics = server.metrics();
    assert!(
        metrics.contains("leash_ingest_rejected_batches_total{cause=\"wrong_node\"} 1"),
        "{metrics}"
    );
    // No warning that any agent may write for any node.
    assert!(
        !server.log().contains("--agent-auth mtls"),
        "{}",
        server.log()
    );

    let snapshot = dir.path().join("cluster.yaml");
    std::fs::write(&snapshot, "apiVersion: v1\nkind: List\nitems: []\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leash"))
        .args(["serve", "--insecure", "--agent-auth", "token", "--cluster"])
        .arg(&snapshot)
        .arg("--store")
        .arg(dir.path().join("other.db"))
        .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--agent-auth token needs the API server"),
        "{stderr}"
    );
}
