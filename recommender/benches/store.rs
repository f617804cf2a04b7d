//! SQLite store throughput, as `leash serve` uses it: batches of agent records aggregated per
//! workload ([`from_batch`]) and committed in one transaction each.
//!
//! The store is first filled with 20,000 flow keys (200 workloads × 100 destinations); each
//! batch then carries 4,096 flow observations of which 95% update existing keys and 5% are
//! new keys, and a few DNS observations (each with an address of its history). Throughput is in flow observations (or records) per
//! second, on one thread.
//!
//! `cargo bench -p leash --bench store`

use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, Duration, Utc};
use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use leash::cluster::Cluster;
use leash::observations::from_batch;
use leash::store::{
    AddressSeen, BatchId, DnsObservation, FlowObservation, SqliteStore, Store, WorkloadRef,
};
use leash_records::{FlowRecord, PodRef, Protocol, Snapshot};

const WORKLOADS: usize = 200;
const DESTINATIONS: usize = 100;
const BATCH: usize = 4096;

fn base_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default()
}

fn workload(i: usize) -> WorkloadRef {
    WorkloadRef {
        namespace: format!("ns{}", i % 10),
        kind: "Deployment".into(),
        name: format!("app-{i}"),
    }
}

fn dst(i: usize) -> IpAddr {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    IpAddr::V4(Ipv4Addr::from(
        0xCB00_7100u32.wrapping_add(i % 256) ^ ((i / 256) << 8),
    ))
}

/// A batch: `BATCH` observations over existing keys, every 20th a key never seen before.
fn batch(round: usize, fresh: &mut usize) -> Vec<FlowObservation> {
    let t = base_time() + Duration::seconds(i64::try_from(round).unwrap_or(0));
    (0..BATCH)
        .map(|i| {
            let k = (round * BATCH + i) % (WORKLOADS * DESTINATIONS);
            let (w, d) = if i % 20 == 0 {
                *fresh += 1;
                (k % WORKLOADS, DESTINATIONS + *fresh)
            } else {
                (k % WORKLOADS, k / WORKLOADS)
            };
            FlowObservation {
                workload: workload(w),
                protocol: Protocol::Tcp,
                dst: dst(d),
                port: 443,
                count: 3,
                first_seen: t,
                last_seen: t + Duration::milliseconds(900),
                names: Default::default(),
                pods: Default::default(),
                established: 1,
                failed: 0,
            }
        })
        .collect()
}

fn dns_batch(round: usize) -> Vec<DnsObservation> {
    let t = base_time() + Duration::seconds(i64::try_from(round).unwrap_or(0));
    (0..16)
        .map(|i| DnsObservation {
            workload: workload(i),
            server: "10.96.0.10"
                .parse()
                .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            query: format!("svc{i}.example.test"),
            count: 2,
            first_seen: t,
            last_seen: t,
            resolved: [(format!("svc{i}.example.test"), dst(i))]
                .into_iter()
                .collect(),
            // The query's address history: one address with its TTL, as an answer gives it.
            addresses: [(
                dst(i),
                AddressSeen {
                    first_seen: t,
                    last_seen: t,
                    ttl: 30,
                    chain: Vec::new(),
                },
            )]
            .into_iter()
            .collect(),
        })
        .collect()
}

fn filled_store(dir: &tempfile::TempDir) -> SqliteStore {
    let store = SqliteStore::open(dir.path().join("bench.db")).expect("store opens");
    let t = base_time();
    for (seq, chunk) in (0..WORKLOADS * DESTINATIONS)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .enumerate()
    {
        let flows: Vec<FlowObservation> = chunk
            .iter()
            .map(|&k| FlowObservation {
                workload: workload(k % WORKLOADS),
                protocol: Protocol::Tcp,
                dst: dst(k / WORKLOADS),
                port: 443,
                count: 1,
                first_seen: t,
                last_seen: t,
                names: ["api.example.test".to_owned()].into_iter().collect(),
                pods: Default::default(),
                established: 0,
                failed: 0,
            })
            .collect();
        store
            .commit(&id(seq as u64), &flows, &[])
            .expect("fill commit");
    }
    store
}

fn id(seq: u64) -> BatchId {
    BatchId {
        node: "node-1".into(),
        boot_id: "bench".into(),
        seq,
    }
}

/// A cluster of `WORKLOADS` DaemonSet-owned pods (two per workload), for `from_batch`.
fn cluster() -> Cluster {
    let pods: Vec<serde_json::Value> = (0..WORKLOADS * 2)
        .map(|p| {
            let w = p / 2;
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("app-{w}-{p}"), "namespace": format!("ns{}", w % 10),
                    "uid": format!("uid-{p}"), "labels": {"app": format!("app-{w}")},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                        "name": format!("app-{w}"), "uid": "x", "controller": true}]},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i"}]},
                "status": {"phase": "Running", "podIP": format!("10.244.{}.{}", p / 250, p % 250)}
            })
        })
        .collect();
    let snapshot = Snapshot {
        pods: pods
            .into_iter()
            .map(|v| serde_json::from_value(v).expect("pod"))
            .collect(),
        ..Snapshot::default()
    };
    Cluster::from_snapshot(&snapshot).expect("cluster")
}

/// Agent records for one batch: each observation of [`batch`] as records of the workload's
/// two pods (uids as the agent sends them).
fn records(round: usize, fresh: &mut usize) -> Vec<FlowRecord> {
    batch(round, fresh)
        .into_iter()
        .enumerate()
        .map(|(i, o)| {
            let w: usize = o.workload.name["app-".len()..].parse().unwrap_or(0);
            let p = w * 2 + i % 2;
            FlowRecord {
                node: "node-1".into(),
                pod: Some(PodRef {
                    uid: format!("uid-{p}"),
                    namespace: o.workload.namespace.clone(),
                    name: format!("app-{w}-{p}"),
                }),
                cgroup: String::new(),
                protocol: o.protocol,
                dst: o.dst,
                dst_port: o.port,
                count: o.count,
                first_seen: o.first_seen,
                last_seen: o.last_seen,
                names: Vec::new(),
                outcome: None,
            }
        })
        .collect()
}

fn bench_store(c: &mut Criterion) {
    let mut group = c.benchmark_group("store");
    group.sample_size(20);
    group.throughput(Throughput::Elements(BATCH as u64));

    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled_store(&dir);
    let mut round = 0usize;
    let mut fresh = 0usize;
    // Batches are built outside the timed part, so every batch's new keys are really new.
    group.bench_function("commit 4096 flow observations (95% updates)", |b| {
        b.iter_batched(
            || {
                round += 1;
                (round, batch(round, &mut fresh), dns_batch(round))
            },
            |(r, flows, dns)| store.commit(&id(r as u64), &flows, &dns).expect("commit"),
            BatchSize::LargeInput,
        );
    });

    let cluster = cluster();
    group.bench_function("from_batch + commit 4096 flow records", |b| {
        b.iter_batched(
            || {
                round += 1;
                (round, records(round, &mut fresh))
            },
            |(r, recs)| {
                let (f, d) = from_batch(&cluster, &recs, &[]);
                store.commit(&id(r as u64), &f, &d).expect("commit")
            },
            BatchSize::LargeInput,
        );
    });
    group.bench_function("from_batch 4096 flow records", |b| {
        b.iter_batched(
            || {
                round += 1;
                records(round, &mut fresh)
            },
            |recs| from_batch(&cluster, &recs, &[]),
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

/// CPU time of the calling thread (user + system), from /proc, in USER_HZ = 100 ticks/s.
fn thread_cpu() -> std::time::Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return std::time::Duration::ZERO;
    };
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    std::time::Duration::from_millis((field(11) + field(12)) * 10)
}

/// The same two workloads timed by this thread's CPU time rather than wall time, so that a
/// busy machine (other processes on the cores) does not deflate the figure: records per
/// CPU-second of one core, fsync waits excluded.
fn cpu_figures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = filled_store(&dir);
    let cluster = cluster();
    let mut fresh = 0usize;
    let rounds = 300usize;
    let obs: Vec<_> = (0..rounds).map(|r| batch(r + 1, &mut fresh)).collect();
    let start = thread_cpu();
    for (r, flows) in obs.iter().enumerate() {
        store.commit(&id(r as u64), flows, &[]).expect("commit");
    }
    let commit = thread_cpu() - start;
    let recs: Vec<_> = (0..rounds).map(|r| records(r + 1, &mut fresh)).collect();
    let start = thread_cpu();
    for (r, recs) in recs.iter().enumerate() {
        let (f, d) = from_batch(&cluster, recs, &[]);
        store
            .commit(&id((rounds + r) as u64), &f, &d)
            .expect("commit");
    }
    let both = thread_cpu() - start;
    let per_s = |d: std::time::Duration| (rounds * BATCH) as f64 / d.as_secs_f64().max(1e-9);
    println!(
        "store CPU time: commit {:.0} observations/s per core; from_batch + commit {:.0} records/s per core",
        per_s(commit),
        per_s(both)
    );
}

criterion_group!(benches, bench_store);

fn main() {
    benches();
    cpu_figures();
    Criterion::default().configure_from_args().final_summary();
}
