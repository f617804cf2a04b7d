//! The ingest service over a real gRPC connection on loopback with mutual TLS (certificates
//! from `leash certs`): acks after commit, duplicates, refused records listed in the ack while
//! the others are stored, rejections and their statuses, isolation between agents, acks an
//! older agent still reads, readiness while commits are slow, and clients without a valid
//! certificate.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use chrono::{DateTime, Utc};
use leash::{
    cluster::Cluster,
    ingest::{Committed, IngestService, Limits},
    state::ClusterState,
    store::{
        self, BatchCommit, BatchId, Commit, DnsObservation, FlowObservation, Store,
        sqlite::SqliteStore,
    },
};
use leash_records::{
    FlowRecord, PodRef, Protocol,
    tls::{self, TlsConnector, TlsFiles},
    wire::{self, v1, v1::ingest_client::IngestClient},
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Code, Status, Streaming,
    codegen::http::Uri,
    transport::{Channel, Endpoint},
};

const WAIT: Duration = Duration::from_secs(10);

// ---- an in-memory store --------------------------------------------------------------------

/// Batch ids and flow counts per (workload, dst, port), with a gate that holds commits and a
/// switch that makes them fail. Batches from node `poison` fail to commit, and so does every
/// group commit that contains one (atomically, as a database transaction would).
#[derive(Default)]
struct MemStore {
    state: Mutex<MemState>,
    gate: Condvar,
}

#[derive(Default)]
struct MemState {
    batches: HashSet<BatchId>,
    counts: HashMap<(String, String, u16), u64>,
    /// The size of every group commit, in order.
    groups: Vec<usize>,
    held: bool,
    failing: bool,
    /// Commits waiting at the gate.
    waiting: usize,
}

const POISON: &str = "poison";
/// Batches from this node make the store panic, as a bug would.
const CRASH: &str = "crash";

impl MemStore {
    fn hold(&self, held: bool) {
        self.state.lock().expect("lock").held = held;
        self.gate.notify_all();
    }

    fn fail(&self, failing: bool) {
        self.state.lock().expect("lock").failing = failing;
    }

    fn batches(&self) -> usize {
        self.state.lock().expect("lock").batches.len()
    }

    fn waiting(&self) -> usize {
        self.state.lock().expect("lock").waiting
    }

    fn count(&self, pod: &str, dst: &str) -> Option<u64> {
        let state = self.state.lock().expect("lock");
        state.counts.get(&(pod.into(), dst.into(), 443)).copied()
    }

    /// Waits while held, records a group commit's size, then fails when failing or when a
    /// batch is poisoned.
    fn enter(&self, ids: &[&BatchId], group: bool) -> store::Result<MutexGuard<'_, MemState>> {
        let mut state = self.state.lock().expect("lock");
        state.waiting += 1;
        while state.held {
            state = self.gate.wait(state).expect("lock");
        }
        state.waiting -= 1;
        if group {
            state.groups.push(ids.len());
        }
        if state.failing {
            return Err(store::Error::Database {
                path: "mem".into(),
                message: "disk full".into(),
            });
        }
        if ids.iter().any(|id| id.node == CRASH) {
            drop(state);
            panic!("a bug in the store (test)");
        }
        if ids.iter().any(|id| id.node == POISON) {
            return Err(store::Error::Database {
                path: "mem".into(),
                message: "poisoned batch".into(),
            });
        }
        Ok(state)
    }
}

fn apply(state: &mut MemState, id: &BatchId, flows: &[FlowObservation]) -> Commit {
    if !state.batches.insert(id.clone()) {
        return Commit::Duplicate;
    }
    for f in flows {
        *state
            .counts
            .entry((f.workload.name.clone(), f.dst.to_string(), f.port))
            .or_default() += f.count;
    }
    Commit::Stored
}

impl Store for MemStore {
    fn commit(
        &self,
        id: &BatchId,
        flows: &[FlowObservation],
        _dns: &[DnsObservation],
    ) -> store::Result<Commit> {
        let mut state = self.enter(&[id], false)?;
        Ok(apply(&mut state, id, flows))
    }

    fn commit_many(&self, batches: &[BatchCommit<'_>]) -> store::Result<Vec<Commit>> {
        let ids: Vec<&BatchId> = batches.iter().map(|b| b.id).collect();
        let mut state = self.enter(&ids, true)?;
        Ok(batches
            .iter()
            .map(|b| apply(&mut state, b.id, b.flows))
            .collect())
    }

    fn flows_in(&self, _scope: &store::Scope, _max: usize) -> store::Result<Vec<FlowObservation>> {
        Ok(Vec::new())
    }

    fn dns_in(&self, _scope: &store::Scope, _max: usize) -> store::Result<Vec<DnsObservation>> {
        Ok(Vec::new())
    }

    fn prune(&self, _before: DateTime<Utc>) -> store::Result<u64> {
        Ok(0)
    }
}

// ---- server and clients --------------------------------------------------------------------

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        leash::certs::generate(
            dir.path(),
            &["127.0.0.1".to_owned()],
            &["node-a".to_owned(), "node-b".to_owned()],
        )
        .expect("certificates");
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn client(&self, name: &str) -> TlsFiles {
        TlsFiles {
            cert: self.path(&format!("{name}.pem")),
            key: self.path(&format!("{name}-key.pem")),
            ca: self.path("ca.pem"),
        }
    }
}

struct Server {
    addr: SocketAddr,
    service: IngestService,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(pki: &Pki, store: Arc<dyn Store>, limits: Limits) -> Server {
    serve_model(pki, store, limits, Cluster::default()).await
}

async fn serve_model(pki: &Pki, store: Arc<dyn Store>, limits: Limits, model: Cluster) -> Server {
    serve_with(pki, store, limits, model, None).await
}

/// [`serve_model`], handing each stored batch to `committed`.
async fn serve_with(
    pki: &Pki,
    store: Arc<dyn Store>,
    limits: Limits,
    model: Cluster,
    committed: Option<mpsc::Sender<Committed>>,
) -> Server {
    let files = TlsFiles {
        cert: pki.path("server.pem"),
        key: pki.path("server-key.pem"),
        ca: pki.path("ca.pem"),
    };
    let config = tls::ReloadingServerConfig::start(files, tls::DEFAULT_POLL).expect("tls");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (_tx, cluster) = watch::channel(Some(Arc::new(ClusterState::from_cluster(model))));
    let service =
        IngestService::with_committed(store, cluster, limits, committed).expect("ingest service");
    let server = service.clone().into_server();
    let incoming = tls::incoming(listener, config.subscribe(), Duration::from_secs(5));
    let task = tokio::spawn(async move {
        let _config = config;
        // tonic's router feature is off: the one service is served directly.
        tonic::transport::Server::builder()
            .serve_with_incoming(server, incoming)
            .await
            .expect("server");
    });
    Server {
        addr,
        service,
        task,
    }
}

async fn client(pki: &Pki, name: &str, addr: SocketAddr) -> IngestClient<Channel> {
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .expect("uri")
        .connect_with_connector(TlsConnector::new(pki.client(name)))
        .await
        .expect("connect");
    IngestClient::new(channel)
}

/// One `Push` call: batches go in through `tx`, acks come out of `acks`.
struct Push {
    tx: mpsc::Sender<v1::Batch>,
    acks: Streaming<v1::Ack>,
}

async fn push(client: &mut IngestClient<Channel>) -> Push {
    let (tx, rx) = mpsc::channel(16);
    let acks = client
        .push(ReceiverStream::new(rx))
        .await
        .expect("push")
        .into_inner();
    Push { tx, acks }
}

impl Push {
    async fn send(&self, batch: v1::Batch) {
        self.tx.send(batch).await.expect("stream open");
    }

    async fn next(&mut self) -> Result<Option<v1::Ack>, Status> {
        tokio::time::timeout(WAIT, self.acks.message())
            .await
            .expect("an answer in time")
    }

    async fn ack(&mut self) -> v1::Ack {
        self.next().await.expect("ack").expect("stream open")
    }

    async fn status(&mut self) -> Status {
        self.next().await.expect_err("the batch is rejected")
    }
}

fn id(node: &str, seq: u64) -> v1::BatchId {
    v1::BatchId {
        node: node.into(),
        boot_id: "boot-1".into(),
        seq,
    }
}

fn flow(node: &str, pod: &str, dst: u8, count: u64) -> FlowRecord {
    let t: DateTime<Utc> = "2026-11-25T09:00:00Z".parse().expect("time");
    FlowRecord {
        node: node.into(),
        pod: Some(PodRef {
            uid: String::new(),
            namespace: "shop".into(),
            name: pod.into(),
        }),
        cgroup: String::new(),
        protocol: Protocol::Tcp,
        dst: [203, 0, 113, dst].into(),
        dst_port: 443,
        count,
        first_seen: t,
        last_seen: t,
        names: vec!["api.stripe.test".into()],
        outcome: None,
    }
}

fn batch(node: &str, seq: u64, flows: &[FlowRecord]) -> v1::Batch {
    wire::batch_to_wire(id(node, seq), flows, &[]).expect("valid batch")
}

fn metrics(server: &Server) -> String {
    // Prefixed as `leash serve`'s registry is.
    let mut registry = prometheus_client::registry::Registry::with_prefix("leash");
    server.service.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
    text
}

fn metric_line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

// ---- tests ---------------------------------------------------------------------------------

/// Polls `done` every 10 ms for up to [`WAIT`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn metric_value(server: &Server, name: &str) -> Option<f64> {
    let text = metrics(server);
    let line = metric_line(&text, &format!("{name} "))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn queued_batches_commit_together_and_a_failing_one_fails_alone() {
    let pki = Pki::new();
    let store = Arc::new(MemStore::default());
    let server = serve(&pki, store.clone(), Limits::default()).await;
    let (mut ca, mut cb, mut cp) = (
        client(&pki, "node-a", server.addr).await,
        client(&pki, "node-b", server.addr).await,
        client(&pki, "node-b", server.addr).await,
    );
    let (mut a, mut b, mut p) = (
        push(&mut ca).await,
        push(&mut cb).await,
        push(&mut cp).await,
    );
    let queued = "leash_ingest_queued_batches";

    // The writer takes the first batch and waits at the gate; the next ones queue up behind
    // it, three of them from one stream (a stream keeps reading while it waits for acks).
    store.hold(true);
    a.send(batch("node-a", 1, &[flow("node-a", "payment-1", 10, 1)]))
        .await;
    wait_until("the writer holds batch a1", || store.waiting() == 1).await;
    a.send(batch("node-a", 2, &[flow("node-a", "payment-1", 10, 2)]))
        .await;
    a.send(batch("node-a", 3, &[flow("node-a", "payment-1", 11, 4)]))
        .await;
    b.send(batch("node-b", 1, &[flow("node-b", "payment-2", 10, 8)]))
        .await;
    p.send(batch(POISON, 1, &[flow(POISON, "payment-3", 10, 16)]))
        .await;
    wait_until("four batches queued", || {
        metric_value(&server, queued) == Some(4.0)
    })
    .await;
    store.hold(false);

    // Every good batch is stored and acked, in each stream's order...
    for seq in 1..=3 {
        let ack = a.ack().await;
        assert_eq!(ack.id, Some(id("node-a", seq)));
        assert!(!ack.duplicate);
    }
    assert_eq!(b.ack().await.id, Some(id("node-b", 1)));
    // ...and only the poisoned one is refused, by name.
    let status = p.status().await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("batch poison/boot-1/1"),
        "{status:?}"
    );
    assert_eq!(store.batches(), 4);
    assert_eq!(store.count("payment-1", "203.0.113.10"), Some(3));
    assert_eq!(store.count("payment-1", "203.0.113.11"), Some(4));
    assert_eq!(store.count("payment-2", "203.0.113.10"), Some(8));
    assert_eq!(store.count("payment-3", "203.0.113.10"), None);
    // a1 alone, then the four queued ones in one transaction (which failed, so each was
    // committed again on its own).
    assert_eq!(store.state.lock().expect("lock").groups, [1, 4]);

    // Without a poisoned batch, the queued ones go in as one group.
    store.hold(true);
    a.send(batch("node-a", 4, &[flow("node-a", "payment-1", 10, 32)]))
        .await;
    wait_until("the writer holds batch a4", || store.waiting() == 1).await;
    a.send(batch("node-a", 5, &[flow("node-a", "payment-1", 10, 64)]))
        .await;
    b.send(batch("node-b", 2, &[flow("node-b", "payment-2", 10, 128)]))
        .await;
    wait_until("two batches queued", || {
        metric_value(&server, queued) == Some(2.0)
    })
    .await;
    store.hold(false);
    assert_eq!(a.ack().await.id, Some(id("node-a", 4)));
    assert_eq!(a.ack().await.id, Some(id("node-a", 5)));
    assert_eq!(b.ack().await.id, Some(id("node-b", 2)));
    assert_eq!(store.state.lock().expect("lock").groups, [1, 4, 1, 2]);
    assert_eq!(store.count("payment-1", "203.0.113.10"), Some(3 + 32 + 64));
    assert_eq!(store.count("payment-2", "203.0.113.10"), Some(8 + 128));
    assert_eq!(metric_value(&server, queued), Some(0.0));
}

#[tokio::test]
async fn a_writer_that_died_is_reported_and_batches_are_refused() {
    let pki = Pki::new();
    let store = Arc::new(MemStore::default());
    let server = serve(&pki, store.clone(), Limits::default()).await;
    assert!(server.service.writer_alive());
    let mut c = client(&pki, "node-a", server.addr).await;
    let mut p = push(&mut c).await;
    p.send(batch(CRASH, 1, &[flow(CRASH, "payment-1", 10, 1)]))
        .await;
    assert_eq!(p.status().await.code(), Code::Internal);
    wait_until("the writer is reported dead", || {
        !server.service.writer_alive()
    })
    .await;
    let mut p = push(&mut c).await;
    p.send(batch("node-a", 1, &[flow("node-a", "payment-1", 10, 1)]))
        .await;
    let status = p.status().await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("the store writer has stopped"),
        "{status:?}"
    );
    assert_eq!(store.batches(), 0);
}

#[tokio::test]
async fn acks_arrive_only_after_the_commit() {
    let pki = Pki::new();
    let store = Arc::new(MemStore::default());
    let server = serve(&pki, store.clone(), Limits::default()).await;
    let mut c = client(&pki, "node-a", server.addr).await;
    let mut p = push(&mut c).await;

    store.hold(true);
    p.send(batch("node-a", 1, &[flow("node-a", "payment-1", 10, 3)]))
        .await;
    let early = tokio::time::timeout(Duration::from_millis(400), p.acks.message()).await;
    assert!(early.is_err(), "acked before the commit: {early:?}");
    assert_eq!(store.batches(), 0);

    store.hold(false);
    let ack = p.ack().await;
    assert_eq!(ack.id, Some(id("node-a", 1)));
    assert!(!ack.duplicate);
    assert_eq!(store.batches(), 1);
    let counts = store.state.lock().expect("lock").counts.clone();
    assert_eq!(
        counts.get(&("payment-1".into(), "203.0.113.10".into(), 443)),
        Some(&3)
    );
}

/// Each stored batch goes to the drift check after its commit, before its ack; one that nobody
/// takes never holds an ack back (the channel full, batches are not handed over), and a
/// duplicate is not handed over again.
#[tokio::test]
async fn stored_batches_are_handed_over_without_waiting() {
    let pki = Pki::new();
    let store = Arc::new(MemStore::default());
    let (tx, mut rx) = mpsc::channel(1);
    let server = serve_with(
        &pki,
        store.clone(),
        Limits::default(),
        Cluster::default(),
        Some(tx),
    )
    .await;
    let mut c = client(&pki, "node-a", server.addr).await;
    let mut p = push(&mut c).await;
    let t: DateTime<Utc> = "2026-11-25T09:00:00Z".parse().expect("time");
    let answer = |address: &str| leash_records::DnsRecord {
        node: "node-a".into(),
        pod: Some(PodRef {
            uid: String::new(),
            namespace: "shop".into(),
            name: "payment-1".into(),
        }),
        cgroup: String::new(),
        server: "10.96.0.10".parse().expect("address"),
        query: "api.stripe.test.".into(),
        qtype: "A".into(),
        rcode: "NOERROR".into(),
        answers: vec![leash_records::DnsAnswer {
            name: "api.stripe.test.".into(),
            rtype: "A".into(),
            data: address.into(),
            ttl: 60,
        }],
        time: t,
    };
    let with_dns = |seq: u64, address: &str| {
        wire::batch_to_wire(id("node-a", seq), &[], &[answer(address)]).expect("valid batch")
    };
    for seq in 1..=3 {
        p.send(with_dns(seq, &format!("203.0.113.{seq}"))).await;
        let ack = p.ack().await;
        assert!(!ack.duplicate);
    }
    assert_eq!(store.batches(), 3);
    let first = rx.try_recv().expect("the first batch was handed over");
    let addresses: Vec<String> = first
        .dns
        .iter()
        .flat_map(|d| d.addresses.keys().map(ToString::to_string))
        .collect();
    assert_eq!(addresses, ["203.0.113.1"]);
    assert!(rx.try_recv().is_err(), "the full channel took nothing more");
    // Room again; a resend is stored once, and handed over once.
    p.send(with_dns(1, "203.0.113.1")).await;
    assert!(p.ack().await.duplicate);
    assert!(rx.try_recv().is_err(), "a duplicate is not handed over");
    p.send(with_dns(4, "203.0.113.4")).await;
    assert!(!p.ack().await.duplicate);
    assert_eq!(rx.try_recv().expect("handed over").dns.len(), 1);
}

/// Sends batch 1 twice on one stream and once more on a new connection: stored once.
async fn resend_is_a_duplicate(store: Arc<dyn Store>) -> Server {
    let pki = Pki::new();
    let server = serve(&pki, store, Limits::default()).await;
    let b1 = batch(
        "node-a",
        1,
        &[
            flow("node-a", "payment-1", 10, 3),
            flow("node-a", "payment-1", 11, 4),
        ],
    );
    let mut c = client(&pki, "node-a", server.addr).await;
    let mut p = push(&mut c).await;
    p.send(b1.clone()).await;
    assert!(!p.ack().await.duplicate);
    p.send(b1.clone()).await;
    assert!(p.ack().await.duplicate);
    drop(p);
    let mut c = client(&pki, "node-a", server.addr).await;
    let mut p = push(&mut c).await;
    p.send(b1).await;
    assert!(p.ack().await.duplicate);
    p.send(batch("node-a", 2, &[flow("node-a", "payment-1", 10, 5)]))
        .await;
    assert!(!p.ack().await.duplicate);

    let text = metrics(&server);
    assert_eq!(
        metric_line(&text, "leash_ingest_batches_stored_total"),
        Some("leash_ingest_batches_stored_total 2"),
        "{text}"
    );
    assert_eq!(
        metric_line(&text, "leash_ingest_duplicate_batches_total"),
        Some("leash_ingest_duplicate_batches_total 2"),
        "{text}"
    );
    assert_eq!(
        metric_line(&text, "leash_ingest_records_total{kind=\"flow\"}"),
        Some("leash_ingest_records_total{kind=\"flow\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("leash_ingest_commit_seconds_count 4"),
        "{text}"
    );
    server
}

#[tokio::test]
async fn resent_batch_is_acked_as_duplicate_and_counted_once() {
    let store = Arc::new(MemStore::default());
    let _server = resend_is_a_duplicate(store.clone()).await;
    assert_eq!(store.batches(), 2);
    let counts = store.state.lock().expect("lock").counts.clone();
    assert_eq!(
        counts.get(&("payment-1".into(), "203.0.113.10".into(), 443)),
        Some(&8)
    );
    assert_eq!(
        counts.get(&("payment-1".into(), "203.0.113.11".into(), 443)),
        Some(&4)
    );
}

#[tokio::test]
async fn resent_batch_is_counted_once_in_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(dir.path().join("leash.db")).expect("store"));
    let _server = resend_is_a_duplicate(store.clone()).await;
    let flows = store.flows(None).expect("flows");
    let counts: Vec<_> = flows
        .iter()
        .map(|f| (f.workload.name.as_str(), f.dst.to_string(), f.port, f.count))
        .collect();
    assert_eq!(
        counts,
        [
            ("payment-1", "203.0.113.10".to_owned(), 443, 8),
            ("payment-1", "203.0.113.11".to_owned(), 443, 4)
        ]
    );
}

/// A batch the store cannot take as it is (here a sequence number over SQLite's and
/// PostgreSQL's 2^63-1) is refused as invalid, a permanent answer the agent does not resend
/// as it is; a transient store failure stays UNAVAILABLE (tests above and
/// `serve_pg_faults.rs`). The stream's earlier batch is stored and acked.
#[tokio::test]
async fn a_batch_the_store_cannot_take_is_invalid_not_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(dir.path().join("leash.db")).expect("store"));
    let pki = Pki::new();
    let server = serve(&pki, store.clone(), Limits::default()).await;
    let mut c = client(&pki, "node-a", server.addr).await;
    let mut p = push(&mut c).await;
    p.send(batch("node-a", 1, &[flow("node-a", "payment-1", 10, 1)]))
        .await;
    assert_eq!(p.ack().await.id, Some(id("node-a", 1)));
    p.send(batch(
        "node-a",
        u64::MAX,
        &[flow("node-a", "payment-1", 10, 2)],
    ))
    .await;
    let status = p.status().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("exceeds 2^63-1"), "{status:?}");
    assert_eq!(store.batch_ids().expect("batch ids").len(), 1);
}

/// The refused records of an ack, as (index, reason, detail).
fn refused(ack: &v1::Ack) -> Vec<(u32, v1::RejectReason, &str)> {
    ack.rejected
        .iter()
        .map(|r| {
            let reason = v1::RejectReason::try_from(r.reason).expect("a known reason");
            (r.index, reason, r.detail.as_str())
        })
        .collect()
}

/// The (destination, port) of every stored flow observation, sorted.
fn stored_flows(store: &SqliteStore) -> Vec<(String, String)> {
    let mut flows: Vec<(String, String)> = store
        .flows(None)
        .expect("flows")
        .iter()
        .map(|f| (f.workload.name.clone(), f.dst.to_string()))
        .collect();
    flows.sort();
    flows
}

#[tokio::test]
async fn a_bad_record_is_refused_in_the_ack_and_the_others_are_stored() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(dir.path().join("leash.db")).expect("store"));
    let server = serve(&pki, store.clone(), Limits::default()).await;
    let mut a = client(&pki, "node-a", server.addr).await;
    let mut b = client(&pki, "node-b", server.addr).await;
    let mut pa = push(&mut a).await;
    let mut pb = push(&mut b).await;

    let flows: Vec<FlowRecord> = (0..5)
        .map(|i| flow("node-a", "payment-1", 10 + i, 1))
        .collect();
    let mut bad = batch("node-a", 1, &flows);
    bad.flow_groups[0].flows[1].dst = vec![203, 0, 113];
    // The finding: an answer owned by the root name `.` became the name "".
    bad.flow_groups[0].flows[3].names = vec![String::new()];
    pa.send(bad.clone()).await;
    let ack = pa.ack().await;
    assert_eq!(ack.id, Some(id("node-a", 1)));
    assert!(!ack.duplicate);
    assert_eq!(
        refused(&ack),
        [
            (
                1,
                v1::RejectReason::InvalidField,
                "dst: 3 bytes (expected 4 or 16)"
            ),
            (3, v1::RejectReason::InvalidName, "names[0]: empty"),
        ]
    );
    let payment = |dst: &str| ("payment-1".to_owned(), format!("203.0.113.{dst}"));
    assert_eq!(
        stored_flows(&store),
        [payment("10"), payment("12"), payment("14")]
    );
    // The stream goes on; a resend gets the same answer, as a duplicate.
    pa.send(batch("node-a", 2, &[flow("node-a", "payment-1", 20, 1)]))
        .await;
    let ack = pa.ack().await;
    assert_eq!((ack.id, ack.rejected.len()), (Some(id("node-a", 2)), 0));
    pa.send(bad).await;
    let ack = pa.ack().await;
    assert!(ack.duplicate);
    assert_eq!(refused(&ack).len(), 2);
    // Another agent was never affected.
    pb.send(batch("node-b", 1, &[flow("node-b", "api-1", 20, 1)]))
        .await;
    assert_eq!(pb.ack().await.id, Some(id("node-b", 1)));

    let text = metrics(&server);
    for reason in ["invalid_field", "invalid_name"] {
        let want = format!("leash_ingest_rejected_records_total{{reason=\"{reason}\"}} 1");
        assert!(text.lines().any(|l| l == want), "{want}\n{text}");
    }
    // Every cause is served at 0 from the start; none counted a batch.
    assert!(
        text.lines()
            .filter(|l| l.starts_with("leash_ingest_rejected_batches_total{"))
            .all(|l| l.ends_with(" 0")),
        "{text}"
    );
}

#[tokio::test]
async fn a_batch_whose_records_are_all_refused_is_still_acknowledged() {
    let pki = Pki::new();
    let store = Arc::new(MemStore::default());
    let server = serve(&pki, store.clone(), Limits::default()).await;
    let mut c = client(&pki, "node-a", server.addr).await;
    let mut p = push(&mut c).await;
    let mut bad = batch("node-a", 1, &vec![flow("node-a", "payment-1", 10, 1); 2]);
    bad.flow_groups[0].pod.as_mut().expect("pod").name = "Payment 1".into();
    p.send(bad.clone()).await;
    let ack = p.ack().await;
    let detail = r#"pod.name: "Payment\u{20}1": character not allowed at byte 0"#;
    assert_eq!(
        refused(&ack),
        [
            (0, v1::RejectReason::InvalidPod, detail),
            (1, v1::RejectReason::InvalidPod, detail),
        ]
    );
    // The batch id is stored, so a resend is a duplicate; no record was.
    assert_eq!(store.batches(), 1);
    assert_eq!(store.count("Payment 1", "203.0.113.10"), None);
    p.send(bad).await;
    assert!(p.ack().await.duplicate);
}

#[tokio::test]
async fn a_16_mib_name_is_refused_alone_and_the_other_records_are_stored() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(dir.path().join("leash.db")).expect("store"));
    let server = serve(&pki, store.clone(), Limits::default()).await;
    let mut c = client(&pki, "node-a", server.addr).await;
    let mut p = push(&mut c).await;
    let flows: Vec<FlowRecord> = (0..3)
        .map(|i| flow("node-a", "payment-1", 10 + i, 1))
        .collect();
    let mut b = batch("node-a", 1, &flows);
    // As large as the default message limit allows.
    let huge = "x".repeat((16 << 20) - 4096);
    b.flow_groups[0].flows[1].names.push(huge);
    assert!(prost::Message::encoded_len(&b) < Limits::default().max_message_bytes);
    p.send(b).await;
    let ack = p.ack().await;
    assert_eq!(ack.id, Some(id("node-a", 1)));
    let got = refused(&ack);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].0, got[0].1), (1, v1::RejectReason::InvalidName));
    assert!(
        got[0].2.starts_with("names[1]: \"xxxx") && got[0].2.len() < 200,
        "{}",
        got[0].2
    );
    let payment = |dst: &str| ("payment-1".to_owned(), format!("203.0.113.{dst}"));
    assert_eq!(stored_flows(&store), [payment("10"), payment("12")]);
    // No stored name is longer than a DNS name.
    let names = store.flows(None).expect("flows");
    assert!(names.iter().flat_map(|f| &f.names).all(|n| n.len() <= 253));
}

#[tokio::test]
async fn a_bad_batch_id_still_refuses_the_whole_batch() {
    let pki = Pki::new();
    let store = Arc::new(MemStore::default());
    let server = serve(&pki, store.clone(), Limits::default()).await;
    let mut c = client(&pki, "node-a", server.addr).await;
    let mut p = push(&mut c).await;
    let mut bad = batch("node-a", 1, &[flow("node-a", "payment-1", 10, 1)]);
    bad.id = Some(id("Node|A", 1));
    p.send(bad).await;
    let status = p.status().await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        status.message(),
        r#"batch Node|A/boot-1/1: batch id: node: "Node\u{7c}A": character not allowed at byte 0"#
    );
    assert!(matches!(p.next().await, Ok(None) | Err(_)));
    assert_eq!(store.batches(), 0);
    let text = metrics(&server);
    assert_eq!(
        metric_line(
            &text,
            "leash_ingest_rejected_batches_total{cause=\"malformed\"}"
        ),
        Some("leash_ingest_rejected_batches_total{cause=\"malformed\"} 1"),
        "{text}"
    );
}

/// `leash.v1.Ack` as agents before `rejected` existed compiled it.
#[derive(Clone, PartialEq, prost::Message)]
struct OldAck {
    #[prost(message, optional, tag = "1")]
    id: Option<v1::BatchId>,
    #[prost(bool, tag = "2")]
    duplicate: bool,
}

#[tokio::test]
async fn an_old_agent_reads_the_new_ack_and_moves_on() {
    // The encoding: the new field is skipped by an old decoder.
    let new = v1::Ack {
        id: Some(id("node-a", 7)),
        duplicate: true,
        rejected: vec![v1::RejectedRecord {
            index: 3,
            reason: v1::RejectReason::InvalidName as i32,
            detail: "names[0]: empty".into(),
        }],
    };
    let old = <OldAck as prost::Message>::decode(prost::Message::encode_to_vec(&new).as_slice())
        .expect("an old agent decodes the new ack");
    assert_eq!(
        old,
        OldAck {
            id: Some(id("node-a", 7)),
            duplicate: true
        }
    );

    // Over gRPC, an old agent's stream: it reads each ack's id and sends the next batch.
    let pki = Pki::new();
    let store = Arc::new(MemStore::default());
    let server = serve(&pki, store.clone(), Limits::default()).await;
    let mut grpc = raw_client(&pki, &server).await;
    let (tx, rx) = mpsc::channel(4);
    let codec = tonic_prost::ProstCodec::<v1::Batch, OldAck>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/leash.v1.Ingest/Push");
    let mut acks = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec)
        .await
        .expect("call")
        .into_inner();
    for seq in 1..=2 {
        let mut b = batch("node-a", seq, &vec![flow("node-a", "payment-1", 10, 1); 3]);
        b.flow_groups[0].flows[0].names = vec![".".into()];
        tx.send(b).await.expect("stream open");
        let ack = tokio::time::timeout(WAIT, acks.message())
            .await
            .expect("an answer in time")
            .expect("acked")
            .expect("stream open");
        assert_eq!(
            ack,
            OldAck {
                id: Some(id("node-a", seq)),
                duplicate: false
            }
        );
    }
    assert_eq!(store.batches(), 2);
    assert_eq!(store.count("payment-1", "203.0.113.10"), Some(4));
}

/// A cluster with two pods in `shop`: `web-1` of Deployment `web`, and `evil-1`, whose owner
/// reference (which the API server does not check as a name) names a Deployment
/// `evil|<img src=x>`.
fn cluster_with_a_hostile_owner() -> Cluster {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    let pod = |name: &str, owner: &str| Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            uid: Some(format!("uid-{name}")),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "Deployment".into(),
                name: owner.into(),
                uid: format!("uid-{owner}"),
                controller: Some(true),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    };
    let mut inventory = leash::cluster::Inventory::default();
    inventory.add_pod(&pod("web-1", "web")).expect("pod");
    inventory
        .add_pod(&pod("evil-1", "evil|<img src=x>"))
        .expect("pod");
    Cluster::new(inventory)
}

#[tokio::test]
async fn a_workload_with_a_hostile_name_never_reaches_the_store() {
    let pki = Pki::new();
    let store = Arc::new(MemStore::default());
    let server = serve_model(
        &pki,
        store.clone(),
        Limits::default(),
        cluster_with_a_hostile_owner(),
    )
    .await;
    let mut c = client(&pki, "node-a", server.addr).await;
    let mut p = push(&mut c).await;
    let flows = [
        flow("node-a", "web-1", 10, 1),
        flow("node-a", "evil-1", 11, 2),
        flow("node-a", "evil-1", 12, 4),
    ];
    p.send(batch("node-a", 1, &flows)).await;
    let ack = p.ack().await;
    let detail = r#"workload: name "evil\u{7c}\u{3c}img\u{20}src\u{3d}x\u{3e}": character not allowed at byte 4"#;
    assert_eq!(
        refused(&ack),
        [
            (1, v1::RejectReason::InvalidPod, detail),
            (2, v1::RejectReason::InvalidPod, detail)
        ]
    );
    assert_eq!(store.count("web", "203.0.113.10"), Some(1));
    let state = store.state.lock().expect("lock");
    assert!(
        state.counts.keys().all(|(w, _, _)| w == "web"),
        "{:?}",
        state.counts
    );
}

/// GETs `path` from the HTTP router of `service`: the status and the body.
async fn http_get(service: &IngestService, path: &str) -> (u16, String) {
    use tower::ServiceExt as _;
    let (_tx, model) = watch::channel(Some(Arc::new(ClusterState::from_cluster(
        Cluster::default(),
    ))));
    let state = Arc::new(leash::serve::http::AppState {
        store: Arc::new(MemStore::default()),
        model,
        registry: Arc::new(prometheus_client::registry::Registry::default()),
        ingest_listening: true.into(),
        ingest: service.clone(),
        options: leash::recommend::Options::default(),
        rollout: leash::serve::shadow::no_board(),
        map: leash::serve::map_api::no_map(),
        pull_requests: tokio::sync::watch::channel(Default::default()).1,
    });
    let request = axum::http::Request::get(path)
        .body(axum::body::Body::empty())
        .expect("request");
    let response = leash::serve::http::router(state)
        .oneshot(request)
        .await
        .expect("response");
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn readyz_is_not_ready_while_a_commit_is_slow_and_healthz_stays_ok() {
    let pki = Pki::new();
    let store = Arc::new(MemStore::default());
    let limits = Limits {
        slow_commit: Duration::from_millis(200),
        ..Limits::default()
    };
    let server = serve(&pki, store.clone(), limits).await;
    let mut c = client(&pki, "node-a", server.addr).await;
    let mut p = push(&mut c).await;
    assert_eq!(http_get(&server.service, "/readyz").await.0, 200);

    // The store takes its time over a commit.
    store.hold(true);
    p.send(batch("node-a", 1, &[flow("node-a", "payment-1", 10, 1)]))
        .await;
    wait_until("the writer is in the commit", || store.waiting() == 1).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let (status, body) = loop {
        let (status, body) = http_get(&server.service, "/readyz").await;
        if status != 200 || tokio::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("ingest store writer slow: a batch has waited"),
        "{body}"
    );
    // Busy is not dead: the liveness probe must not restart a server under load.
    assert_eq!(
        http_get(&server.service, "/healthz").await,
        (200, "ok\n".to_owned())
    );

    store.hold(false);
    assert_eq!(p.ack().await.id, Some(id("node-a", 1)));
    assert_eq!(
        http_get(&server.service, "/readyz").await,
        (200, "ready\n".to_owned())
    );
    let text = metrics(&server);
    assert!(
        text.contains("leash_ingest_commit_seconds_count 1"),
        "{text}"
    );
}

#[tokio::test]
async fn oversized_messages_and_batches_are_resource_exhausted() {
    let pki = Pki::new();
    let store = Arc::new(MemStore::default());
    let limits = Limits {
        max_records: 100,
        max_message_bytes: 64 << 10,
        ..Limits::default()
    };
    let server = serve(&pki, store.clone(), limits).await;
    let mut a = client(&pki, "node-a", server.addr).await;
    let mut b = client(&pki, "node-b", server.addr).await;
    let mut pb = push(&mut b).await;

    // 90 records (under the count limit) of ~1.1 KB each: over 64 KiB.
    let mut big = flow("node-a", "payment-1", 10, 1);
    big.names = (0..20)
        .map(|i| format!("name-{i:02}-{}", "x".repeat(40)))
        .collect();
    let mut pa = push(&mut a).await;
    pa.send(batch("node-a", 1, &vec![big; 90])).await;
    let status = pa.status().await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status
            .message()
            .contains("too large (the limit is 65536 bytes)"),
        "{status:?}"
    );

    let mut pa = push(&mut a).await;
    pa.send(batch(
        "node-a",
        2,
        &vec![flow("node-a", "payment-1", 10, 1); 101],
    ))
    .await;
    let status = pa.status().await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(
        status.message(),
        "batch node-a/boot-1/2: 101 records exceed the limit of 100 per batch"
    );

    pb.send(batch(
        "node-b",
        1,
        &vec![flow("node-b", "api-1", 20, 1); 100],
    ))
    .await;
    assert!(!pb.ack().await.duplicate);
    assert_eq!(store.batches(), 1);
    let text = metrics(&server);
    for cause in ["too_large", "too_many_records"] {
        let want = format!("leash_ingest_rejected_batches_total{{cause=\"{cause}\"}} 1");
        assert!(text.lines().any(|l| l == want), "{want}\n{text}");
    }
}

#[tokio::test]
async fn store_failure_is_unavailable_and_the_resend_succeeds() {
    let pki = Pki::new();
    let store = Arc::new(MemStore::default());
    let server = serve(&pki, store.clone(), Limits::default()).await;
    let mut c = client(&pki, "node-a", server.addr).await;
    let b1 = batch("node-a", 1, &[flow("node-a", "payment-1", 10, 2)]);
    store.fail(true);
    let mut p = push(&mut c).await;
    p.send(b1.clone()).await;
    let status = p.status().await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.message(),
        "batch node-a/boot-1/1: store mem: disk full"
    );
    store.fail(false);
    let mut p = push(&mut c).await;
    p.send(b1).await;
    assert!(!p.ack().await.duplicate);
    assert_eq!(store.batches(), 1);
}

/// A connector that speaks TLS (trusting the CA) but presents no client certificate.
#[derive(Clone)]
struct NoCertConnector {
    config: Arc<rustls::ClientConfig>,
}

impl NoCertConnector {
    fn new(ca: &Path) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for cert in tls::read_certs(ca).expect("ca") {
            roots.add(cert).expect("root");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        NoCertConnector {
            config: Arc::new(config),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl tower::Service<Uri> for NoCertConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.config.clone();
        Box::pin(async move {
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
            let name = "127.0.0.1".try_into().map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}

async fn push_fails(channel: Result<Channel, tonic::transport::Error>) {
    let Ok(channel) = channel else { return };
    let (tx, rx) = mpsc::channel(1);
    tx.send(batch("node-a", 1, &[flow("node-a", "payment-1", 10, 1)]))
        .await
        .expect("queued");
    let result = tokio::time::timeout(WAIT, async move {
        let mut acks = IngestClient::new(channel)
            .push(ReceiverStream::new(rx))
            .await?
            .into_inner();
        acks.message().await
    })
    .await
    .expect("an answer in time");
    assert!(
        result.is_err(),
        "a client without a valid certificate was served: {result:?}"
    );
}

#[tokio::test]
async fn clients_without_a_valid_certificate_cannot_push() {
    let pki = Pki::new();
    let store = Arc::new(MemStore::default());
    let server = serve(&pki, store.clone(), Limits::default()).await;
    let endpoint = Endpoint::from_shared(format!("https://{}", server.addr)).expect("uri");

    // TLS without a client certificate.
    push_fails(
        endpoint
            .connect_with_connector(NoCertConnector::new(&pki.path("ca.pem")))
            .await,
    )
    .await;
    // Plaintext HTTP/2.
    push_fails(
        Endpoint::from_shared(format!("http://{}", server.addr))
            .expect("uri")
            .connect()
            .await,
    )
    .await;
    // A certificate of another CA.
    let other = tempfile::tempdir().expect("tempdir");
    leash::certs::generate(
        other.path(),
        &["127.0.0.1".to_owned()],
        &["node-a".to_owned()],
    )
    .expect("certificates");
    let files = TlsFiles {
        ca: pki.path("ca.pem"),
        cert: other.path().join("node-a.pem"),
        key: other.path().join("node-a-key.pem"),
    };
    push_fails(
        endpoint
            .connect_with_connector(TlsConnector::new(files))
            .await,
    )
    .await;

    assert_eq!(store.batches(), 0);
    // The server is fine for valid clients.
    let mut c = client(&pki, "node-a", server.addr).await;
    let mut p = push(&mut c).await;
    p.send(batch("node-a", 1, &[flow("node-a", "payment-1", 10, 1)]))
        .await;
    assert!(!p.ack().await.duplicate);
}

/// Field 1 of `Batch` is a message; this puts a varint there, so the bytes do not decode.
#[derive(Clone, PartialEq, prost::Message)]
struct NotABatch {
    #[prost(uint64, tag = "1")]
    id: u64,
}

#[tokio::test]
async fn bytes_that_do_not_decode_are_invalid_argument() {
    let pki = Pki::new();
    let store = Arc::new(MemStore::default());
    let server = serve(&pki, store.clone(), Limits::default()).await;
    let mut grpc = raw_client(&pki, &server).await;
    let (tx, rx) = mpsc::channel(1);
    tx.send(NotABatch { id: 7 }).await.expect("queued");
    let codec = tonic_prost::ProstCodec::<NotABatch, v1::Ack>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/leash.v1.Ingest/Push");
    let mut acks = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec)
        .await
        .expect("call")
        .into_inner();
    let status = tokio::time::timeout(WAIT, acks.message())
        .await
        .expect("an answer in time")
        .expect_err("rejected");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().starts_with(
            "batch does not decode as leash.v1.Batch: failed to decode Protobuf message"
        ),
        "{status:?}"
    );
    assert_eq!(store.batches(), 0);
    let text = metrics(&server);
    assert_eq!(
        metric_line(
            &text,
            "leash_ingest_rejected_batches_total{cause=\"malformed\"}"
        ),
        Some("leash_ingest_rejected_batches_total{cause=\"malformed\"} 1"),
        "{text}"
    );
}

/// A generic gRPC client over mutual TLS as `node-a`, for streams with message types of the
/// test's own (an old agent's `Ack`, bytes that are no `Batch`).
async fn raw_client(pki: &Pki, server: &Server) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = Endpoint::from_shared(format!("https://{}", server.addr))
        .expect("uri")
        .connect_with_connector(TlsConnector::new(pki.client("node-a")))
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    grpc
}
