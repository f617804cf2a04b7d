//! Faults under load with the PostgreSQL store (issue 17, section 3), through the real
//! `leash serve` binary, a real PostgreSQL server and an agent-like gRPC client that does
//! what the agent does: it streams batches, keeps every batch without an ack, and after a
//! cut stream resends those (to another replica, or to the same one after a backoff).
//!
//! - A replica is killed mid-stream (SIGKILL: the TCP connection is cut with batches in
//!   flight) and the agent resumes on the other replica: each batch id is stored once and the
//!   stored counts are exact.
//! - PostgreSQL is restarted under load: the ingest answers UNAVAILABLE (and nothing else),
//!   `leash serve` keeps running, the agent retries with backoff, and afterwards nothing is
//!   lost or duplicated.

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

use chrono::Utc;
use leash_records::wire::v1::ingest_client::IngestClient;
use leash_records::wire::{self, v1};
use leash_records::{FlowRecord, PodRef, Protocol};
use support::serve_process::ServeProcess;
use support::snapshots;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Flow records per batch, each to its own destination port with a count of 1.
const RECORDS: u64 = 10;

/// Batch `seq`: `RECORDS` flows of the one pod, to a destination that depends on `seq`.
fn batch(seq: u64) -> v1::Batch {
    let now = Utc::now();
    let flows: Vec<FlowRecord> = (0..RECORDS)
        .map(|j| FlowRecord {
            node: "n1".into(),
            pod: Some(PodRef {
                uid: "uid-pod-web".into(),
                namespace: "shop".into(),
                name: "web-1".into(),
            }),
            cgroup: "/kubepods.slice/web".into(),
            protocol: Protocol::Tcp,
            dst: format!("203.0.113.{}", seq % 50 + 1).parse().unwrap(),
            dst_port: 1000 + u16::try_from(j).unwrap(),
            count: 1,
            first_seen: now,
            last_seen: now,
            names: Vec::new(),
            outcome: None,
        })
        .collect();
    wire::batch_to_wire(
        v1::BatchId {
            node: "n1".into(),
            boot_id: "boot-1".into(),
            seq,
        },
        &flows,
        &[],
    )
    .unwrap()
}

/// Why a stream ended before every batch had its ack.
#[derive(Debug)]
enum Cut {
    /// The server answered (or the transport failed) with this status.
    Status(tonic::Status),
    /// No connection.
    Connect(String),
}

/// The acks the agent has: batch seq → `duplicate`, and any seq acked twice.
#[derive(Default)]
struct Acks {
    by_seq: BTreeMap<u64, bool>,
    twice: Vec<u64>,
}

type Shared = Arc<Mutex<Acks>>;

/// One stream to `addr`: sends `batches` (one every `pace`) and records their acks in `acks`
/// until each has one, or the stream is cut.
async fn stream_once(
    addr: SocketAddr,
    batches: Vec<v1::Batch>,
    acks: Shared,
    pace: Duration,
) -> Result<(), Cut> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| Cut::Connect(e.to_string()))?;
    let n = batches.len();
    let (tx, rx) = mpsc::channel(4);
    let sender = tokio::spawn(async move {
        for b in batches {
            tokio::time::sleep(pace).await;
            if tx.send(b).await.is_err() {
                break;
            }
        }
    });
    let mut client = IngestClient::new(channel);
    let mut stream = client
        .push(ReceiverStream::new(rx))
        .await
        .map_err(Cut::Status)?
        .into_inner();
    let mut got = 0;
    let out = loop {
        if got == n {
            break Ok(());
        }
        match stream.message().await {
            Ok(Some(ack)) => {
                let seq = ack.id.unwrap().seq;
                let mut acks = acks.lock().unwrap();
                if acks.by_seq.insert(seq, ack.duplicate).is_some() {
                    acks.twice.push(seq);
                }
                got += 1;
            }
            Ok(None) => break Err(Cut::Status(tonic::Status::unknown("stream ended early"))),
            Err(status) => break Err(Cut::Status(status)),
        }
    };
    sender.abort();
    out
}

/// The batches of `all` without an ack.
fn unacked(all: &[v1::Batch], acks: &Shared) -> Vec<v1::Batch> {
    let acks = acks.lock().unwrap();
    all.iter()
        .filter(|b| !acks.by_seq.contains_key(&b.id.as_ref().unwrap().seq))
        .cloned()
        .collect()
}

fn acked(acks: &Shared) -> usize {
    acks.lock().unwrap().by_seq.len()
}

fn wait_acked(acks: &Shared, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked(acks) < at_least {
        assert!(Instant::now() < deadline, "{at_least} acks not in 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The cluster: one Deployment `web` in `shop`, its pod `web-1` on node n1.
fn cluster(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("cluster.yaml");
    let yaml = snapshots::list(&[
        snapshots::namespace("shop"),
        snapshots::deployment("shop", "web", "web-1", "198.51.100.10"),
    ]);
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Every batch of 1..=`n` stored once, and the flow counts summing to all their records.
fn assert_stored_exactly(pg: &support::postgres::Postgres, db: &str, n: u64) {
    assert_eq!(
        pg.psql(db, "SELECT count(*), min(seq), max(seq) FROM batches"),
        format!("{n}|1|{n}"),
        "each batch id stored once"
    );
    assert_eq!(
        pg.psql(db, "SELECT sum(count) FROM flows"),
        (n * RECORDS).to_string(),
        "every record counted once"
    );
}

#[test]
fn a_stream_cut_mid_way_resumes_on_the_other_replica_exactly_once() {
    let Some(pg) = support::postgres::postgres_or_skip() else {
        return;
    };
    let url = pg.create_database("cut");
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let store = Path::new(&url);
    let none: [&str; 0] = [];
    let a = ServeProcess::start(dir.path(), store, &cluster, "1h", &none);
    let mut b = ServeProcess::start(dir.path(), store, &cluster, "1h", &none);
    let rt = tokio::runtime::Runtime::new().unwrap();

    const N: u64 = 200;
    let all: Vec<v1::Batch> = (1..=N).map(batch).collect();
    let acks = Shared::default();
    let first = rt.spawn(stream_once(
        a.grpc,
        all.clone(),
        acks.clone(),
        Duration::from_millis(10),
    ));
    wait_acked(&acks, 40);
    // SIGKILL: the connection drops with batches sent and not yet answered.
    drop(a);
    let cut = rt.block_on(first).unwrap();
    assert!(cut.is_err(), "the stream to the killed replica was cut");
    let before = acked(&acks);
    assert!(
        (40..N as usize).contains(&before),
        "cut mid-stream: {before} acks"
    );

    // The agent resends everything without an ack to the other replica.
    let rest = unacked(&all, &acks);
    rt.block_on(stream_once(b.grpc, rest, acks.clone(), Duration::ZERO))
        .unwrap();
    b.assert_running();
    let acks = acks.lock().unwrap();
    eprintln!(
        "cut after {before} acks; the other replica found {} of the resent batches stored",
        acks.by_seq.values().filter(|d| **d).count()
    );
    assert!(acks.twice.is_empty(), "acked twice: {:?}", acks.twice);
    assert_eq!(
        acks.by_seq.keys().copied().collect::<Vec<_>>(),
        (1..=N).collect::<Vec<_>>(),
        "every batch acked once"
    );
    assert_stored_exactly(&pg, "cut", N);
    // The other replica answers from the same store.
    let dests = b.get_json("/v1/namespaces/shop/workloads/Deployment/web/destinations");
    let total: u64 = dests
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, N * RECORDS, "{dests}");
}

#[test]
fn postgres_restarted_under_load_answers_unavailable_and_loses_nothing() {
    let Some(mut pg) = support::postgres::postgres_or_skip() else {
        return;
    };
    let url = pg.create_database("restart");
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(dir.path());
    let none: [&str; 0] = [];
    let mut serve = ServeProcess::start(dir.path(), Path::new(&url), &cluster, "1h", &none);
    let rt = tokio::runtime::Runtime::new().unwrap();

    const N: u64 = 300;
    let all: Vec<v1::Batch> = (1..=N).map(batch).collect();
    let acks = Shared::default();
    let codes: Arc<Mutex<Vec<tonic::Status>>> = Arc::default();
    let addr = serve.grpc;
    // The agent: stream, and after a cut resend what has no ack, backing off 50 ms doubling
    // to 1 s.
    let agent = rt.spawn({
        let (all, acks, codes) = (all.clone(), acks.clone(), codes.clone());
        async move {
            let mut backoff = Duration::from_millis(50);
            for _ in 0..200 {
                let rest = unacked(&all, &acks);
                if rest.is_empty() {
                    return true;
                }
                match stream_once(addr, rest, acks.clone(), Duration::from_millis(10)).await {
                    Ok(()) => continue,
                    Err(Cut::Status(s)) => codes.lock().unwrap().push(s),
                    Err(Cut::Connect(e)) => panic!("leash serve refused a connection: {e}"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            false
        }
    });
    wait_acked(&acks, 40);
    pg.restart();
    assert!(
        rt.block_on(agent).unwrap(),
        "every batch acked within 200 streams"
    );
    serve.assert_running();

    let codes = codes.lock().unwrap();
    eprintln!(
        "restart: {} cut streams: {:?}",
        codes.len(),
        codes.iter().map(|s| s.message()).collect::<Vec<_>>()
    );
    assert!(
        !codes.is_empty(),
        "the restart cut at least one stream: {} acks",
        acked(&acks)
    );
    for s in codes.iter() {
        assert_eq!(
            s.code(),
            tonic::Code::Unavailable,
            "a transient database fault is UNAVAILABLE: {s:?}"
        );
    }
    let acks = acks.lock().unwrap();
    assert!(acks.twice.is_empty(), "acked twice: {:?}", acks.twice);
    assert_eq!(acks.by_seq.len(), N as usize);
    assert_stored_exactly(&pg, "restart", N);
    // The metric counts every stored record once, duplicates not.
    assert_eq!(
        serve.metric("leash_ingest_records_total{kind=\"flow\"}"),
        Some((N * RECORDS) as f64),
        "{}",
        serve.metrics()
    );
}
