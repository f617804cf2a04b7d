//! `leash serve` killed with SIGKILL while agents stream batches and group commits are in
//! flight, then restarted on the same SQLite store: agents that resend every batch they have
//! no ack for (as the agent does) end with every batch stored exactly once and every count
//! exact. A batch committed but not acknowledged before the kill is resent and answered
//! `duplicate`, never stored twice.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use leash::store::{BatchId, SqliteStore, Store};
use leash_records::{
    FlowRecord, PodRef, Protocol,
    wire::{self, v1, v1::ingest_client::IngestClient},
};
use support::serve_process::ServeProcess;
use support::snapshots;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// Agents (one per node), batches per agent, flows per batch (each its own port, count 1).
const NODES: usize = 4;
const BATCHES: u64 = 150;
const FLOWS: u16 = 40;
/// Batches an agent sends before their acks, as the agent's pipeline does.
const IN_FLIGHT: usize = 8;

fn node(n: usize) -> String {
    format!("node-{n}")
}

/// Batch `seq` of node `n`: [`FLOWS`] flows of shop/web-x2 to 203.0.113.(10+n), ports
/// 1000.., count 1 each.
fn batch(n: usize, seq: u64) -> v1::Batch {
    let t: DateTime<Utc> = "2026-11-25T09:00:00Z".parse().expect("time");
    let node = node(n);
    let dst = [203, 0, 113, 10 + u8::try_from(n).expect("few nodes")];
    let flows: Vec<FlowRecord> = (0..FLOWS)
        .map(|p| FlowRecord {
            node: node.clone(),
            pod: Some(PodRef {
                uid: "uid-pod-web".into(),
                namespace: "shop".into(),
                name: "web-x2".into(),
            }),
            cgroup: String::new(),
            protocol: Protocol::Tcp,
            dst: dst.into(),
            dst_port: 1000 + p,
            count: 1,
            first_seen: t,
            last_seen: t,
            names: vec!["api.stripe.test".into()],
            outcome: None,
        })
        .collect();
    let id = v1::BatchId {
        node,
        boot_id: "boot-1".into(),
        seq,
    };
    wire::batch_to_wire(id, &flows, &[]).expect("valid batch")
}

/// What one agent saw.
#[derive(Debug, Default)]
struct AgentReport {
    /// Acks answered `duplicate` (committed before the kill, acked only after the resend).
    duplicates: u64,
    /// Batches resent after a reconnect (without an ack when the stream broke).
    resent: u64,
    /// Streams that broke.
    reconnects: u64,
}

/// An agent's sender: batches 1..=[`BATCHES`] in order, up to [`IN_FLIGHT`] without an ack;
/// when the stream breaks it reconnects (to wherever `server` says the recommender now is)
/// and resends every batch without an ack, oldest first.
async fn agent(
    n: usize,
    server: Arc<Mutex<Option<SocketAddr>>>,
    acked: Arc<AtomicU64>,
) -> AgentReport {
    let mut report = AgentReport::default();
    let mut unacked: VecDeque<v1::Batch> = VecDeque::new();
    let mut next = 1;
    loop {
        let addr = *server.lock().expect("lock");
        let Some(addr) = addr else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let Ok(channel) = Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut client = IngestClient::new(channel);
        let (tx, rx) = mpsc::channel(2 * IN_FLIGHT);
        // The resends first, in order.
        report.resent += unacked.len() as u64;
        for b in &unacked {
            let _ = tx.send(b.clone()).await;
        }
        let Ok(answer) = client.push(ReceiverStream::new(rx)).await else {
            report.reconnects += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let mut acks = answer.into_inner();
        loop {
            while unacked.len() < IN_FLIGHT && next <= BATCHES {
                let b = batch(n, next);
                next += 1;
                unacked.push_back(b.clone());
                let _ = tx.send(b).await;
            }
            if unacked.is_empty() {
                return report;
            }
            match acks.message().await {
                Ok(Some(ack)) => {
                    let front = unacked.pop_front().expect("an ack answers a sent batch");
                    assert_eq!(ack.id, front.id, "acks come in stream order");
                    if ack.duplicate {
                        report.duplicates += 1;
                    }
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                // The recommender went away (or refused the stream): reconnect and resend.
                Ok(None) | Err(_) => {
                    report.reconnects += 1;
                    break;
                }
            }
        }
    }
}

fn start(dir: &Path, store: &Path) -> ServeProcess {
    tokio::task::block_in_place(|| {
        ServeProcess::start(dir, store, &dir.join("cluster.yaml"), "1h", &[] as &[&str])
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_three_times_during_group_commits_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("cluster.yaml"),
        snapshots::shop_web_dns_only_and_bank("db"),
    )
    .expect("writes the snapshot");
    let store = dir.path().join("leash.db");
    let total = NODES as u64 * BATCHES;

    let server = start(dir.path(), &store);
    let addr = Arc::new(Mutex::new(Some(server.grpc)));
    let acked = Arc::new(AtomicU64::new(0));
    let agents: Vec<_> = (0..NODES)
        .map(|n| tokio::spawn(agent(n, addr.clone(), acked.clone())))
        .collect();

    // Kill it three times, once a quarter, a half and three quarters of the batches are
    // acknowledged: every agent is streaming, with batches queued, converting and committing.
    let mut server = server;
    let mut kills = Vec::new();
    for quarter in 1..=3 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while acked.load(Ordering::Relaxed) < total * quarter / 4 {
            assert!(tokio::time::Instant::now() < deadline, "agents too slow");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        *addr.lock().expect("lock") = None;
        kills.push(acked.load(Ordering::Relaxed));
        drop(server); // SIGKILL, then wait
        // Down for a moment, then up again on the same file.
        tokio::time::sleep(Duration::from_millis(200)).await;
        server = start(dir.path(), &store);
        *addr.lock().expect("lock") = Some(server.grpc);
    }
    assert!(
        kills.iter().all(|&k| k < total),
        "a kill came after everything was acked: {kills:?}"
    );
    let mut reports = Vec::new();
    for a in agents {
        reports.push(
            tokio::time::timeout(Duration::from_secs(120), a)
                .await
                .expect("agents finish after the restart")
                .expect("agent task"),
        );
    }
    let duplicates: u64 = reports.iter().map(|r| r.duplicates).sum();
    let resent: u64 = reports.iter().map(|r| r.resent).sum();
    // Every kill broke the streams of the agents not yet done.
    assert!(
        reports.iter().map(|r| r.reconnects).sum::<u64>() >= 3,
        "the streams broke: {reports:?}"
    );
    assert!(
        resent > 0,
        "batches were in flight at the kill: {reports:?}"
    );
    let served_dups = server
        .metric("leash_ingest_duplicate_batches_total")
        .unwrap_or(0.0);
    drop(server);

    // Every batch id exactly once (the table's key), none missing, none extra.
    let store = SqliteStore::open_existing(&store).expect("opens the store");
    let ids: Vec<BatchId> = store
        .batch_ids()
        .expect("batch ids")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let unique: BTreeSet<(String, String, u64)> = ids
        .iter()
        .map(|id| (id.node.clone(), id.boot_id.clone(), id.seq))
        .collect();
    assert_eq!(ids.len(), unique.len(), "a batch id stored twice");
    let expected: BTreeSet<(String, String, u64)> = (0..NODES)
        .flat_map(|n| (1..=BATCHES).map(move |s| (node(n), "boot-1".to_owned(), s)))
        .collect();
    assert_eq!(unique, expected, "every batch stored");

    // Counts exact: each (destination, port) counted once per batch.
    let mut counts: BTreeMap<(String, u16), u64> = BTreeMap::new();
    for f in store.flows(None).expect("flows") {
        *counts.entry((f.dst.to_string(), f.port)).or_default() += f.count;
    }
    assert_eq!(counts.len(), NODES * usize::from(FLOWS), "{counts:?}");
    assert!(
        counts.values().all(|&c| c == BATCHES),
        "a batch lost or counted twice: {counts:?}"
    );
    eprintln!(
        "killed at {kills:?} of {total} acks; resent {resent} batches, \
         {duplicates} answered duplicate ({served_dups} by the last server's metric)"
    );
}
