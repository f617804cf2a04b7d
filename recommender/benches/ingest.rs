//! Ingest throughput of `leash serve`: a real gRPC client on loopback, mutual TLS, streaming
//! batches of agent flow records into the ingest service backed by the SQLite store.
//!
//! The client runs in a child process (this binary re-executed), so that the server's CPU time
//! is this process's `getrusage(RUSAGE_SELF)` over the run, and records/s per core is records
//! divided by the server's CPU seconds. The client builds and encodes all batches before the
//! clock starts.
//!
//! Data: 200 DaemonSet workloads with 2 pods each, every pod talking to many destinations;
//! each batch carries `LEASH_BENCH_BATCH` (default 4,000) distinct pod-level keys, taken in
//! turn from a universe of 400 pods × 100 destinations, so keys repeat across batches as an
//! agent's do; every 20th record goes to a destination never seen before. Records come by
//! cgroup, as the agent sends them, about 10 per pod per batch.
//!
//! `cargo bench -p leash --bench ingest` (env `LEASH_BENCH_RECORDS`, default 1,000,000).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use leash::{
    cluster::Cluster,
    ingest::{IngestService, Limits},
    observations::{from_batch, from_groups},
    state::ClusterState,
    store::{BatchCommit, BatchId, Store, sqlite::SqliteStore},
};
use leash_records::{
    FlowRecord, Outcome, PodRef, Protocol, Snapshot,
    tls::{self, TlsConnector, TlsFiles},
    wire::{self, v1},
};
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

const WORKLOADS: usize = 200;
const PODS: usize = WORKLOADS * 2;
const DESTINATIONS: usize = 100;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn base_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default()
}

fn dst(i: usize) -> IpAddr {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    // 203.0.113.0/24 and, past 256 destinations, the same low byte in other /24s of
    // 198.51.100.0/22-like blocks: the address value itself does not matter to the store.
    IpAddr::V4(Ipv4Addr::from(
        0xCB00_7100u32 + (i % 256) + ((i / 256) << 8),
    ))
}

fn pod(p: usize) -> PodRef {
    let w = p / 2;
    PodRef {
        uid: format!("6f1c2a9e-0000-4000-8000-{p:012}"),
        namespace: format!("ns{}", w % 10),
        name: format!("app-{w}-{p}"),
    }
}

/// The cluster the server attributes records with: `WORKLOADS` DaemonSets of two pods.
fn cluster() -> Result<Cluster, Error> {
    let pods = (0..PODS)
        .map(|p| {
            let w = p / 2;
            let PodRef {
                uid,
                namespace,
                name,
            } = pod(p);
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "uid": uid,
                    "labels": {"app": format!("app-{w}")},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                        "name": format!("app-{w}"), "uid": "x", "controller": true}]},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i"}]},
                "status": {"phase": "Running", "podIP": format!("10.244.{}.{}", p / 250, p % 250)}
            }))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let snapshot = Snapshot {
        pods,
        ..Snapshot::default()
    };
    Ok(Cluster::from_snapshot(&snapshot)?)
}

/// The records of batch `round` (0-based), as an agent on `node-1` sends them: in the order
/// its merge buffer cuts them, by cgroup (so `batch_to_wire` sends each pod's runs as one
/// flow group, as the agent's batches do).
fn records(round: usize, per_batch: usize) -> Vec<FlowRecord> {
    let t = base_time() + chrono::Duration::seconds(i64::try_from(round).unwrap_or(0));
    let mut records: Vec<FlowRecord> = (0..per_batch)
        .map(|i| {
            let k = (round * per_batch + i) % (PODS * DESTINATIONS);
            let p = k % PODS;
            let d = if i % 20 == 0 {
                DESTINATIONS + round * per_batch / 20 + i / 20
            } else {
                k / PODS
            };
            let pod = pod(p);
            FlowRecord {
                node: "node-1".into(),
                cgroup: format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{:064x}.scope",
                    pod.uid.replace('-', "_"),
                    p
                ),
                pod: Some(pod),
                protocol: Protocol::Tcp,
                dst: dst(d),
                dst_port: 443,
                count: 3,
                first_seen: t,
                last_seen: t + chrono::Duration::milliseconds(900),
                names: vec![format!("svc-{}.example.test", d % 50)],
                outcome: Some(Outcome {
                    established: 3,
                    failed: 0,
                }),
            }
        })
        .collect();
    records.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
    records
}

fn batch_id(boot: &str, seq: u64) -> v1::BatchId {
    v1::BatchId {
        node: "node-1".into(),
        boot_id: boot.into(),
        seq,
    }
}

#[derive(Debug, Clone, Copy)]
struct Cpu {
    user: f64,
    sys: f64,
}

fn rusage(who: libc::c_int) -> Result<Cpu, Error> {
    // SAFETY: getrusage writes one rusage struct into the zeroed value we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage.
    if unsafe { libc::getrusage(who, &raw mut u) } != 0 {
        return Err(format!("getrusage: {}", std::io::Error::last_os_error()).into());
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Cpu {
        user: secs(u.ru_utime),
        sys: secs(u.ru_stime),
    })
}

/// This thread's CPU time in seconds, with nanosecond resolution (rusage counts in ticks).
fn thread_cpu() -> Result<f64, Error> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) } != 0 {
        return Err(format!("clock_gettime: {}", std::io::Error::last_os_error()).into());
    }
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

fn client_files(pki: &Path) -> TlsFiles {
    TlsFiles {
        cert: pki.join("bench-agent.pem"),
        key: pki.join("bench-agent-key.pem"),
        ca: pki.join("ca.pem"),
    }
}

/// The child process: connect, build all batches, say `ready`, wait for `go`, stream them,
/// wait for every ack, say `done`.
fn client(addr: &str, pki: &Path, total: usize, per_batch: usize) -> Result<(), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
            .connect_with_connector(TlsConnector::new(client_files(pki)))
            .await?;
        let mut client = v1::ingest_client::IngestClient::new(channel);
        let batches: Vec<v1::Batch> = (0..total.div_ceil(per_batch))
            .map(|r| {
                let n = per_batch.min(total - r * per_batch);
                wire::batch_to_wire(batch_id("bench", r as u64 + 1), &records(r, n), &[])
            })
            .collect::<Result<_, _>>()?;
        let count = batches.len();
        let mut stdin = BufReader::new(std::io::stdin());
        println!("ready");
        let mut line = String::new();
        stdin.read_line(&mut line)?;
        let (tx, rx) = mpsc::channel(8);
        let start = Instant::now();
        let sender = tokio::spawn(async move {
            for b in batches {
                if tx.send(b).await.is_err() {
                    break;
                }
            }
            // Keep the request stream open until the acks are read.
            tx
        });
        let mut acks = client.push(ReceiverStream::new(rx)).await?.into_inner();
        let mut acked = 0;
        while acked < count {
            let Some(ack) = acks.message().await? else {
                return Err("stream ended early".into());
            };
            if ack.duplicate {
                return Err(format!("unexpected duplicate ack {:?}", ack.id).into());
            }
            acked += 1;
        }
        let elapsed = start.elapsed();
        drop(sender.await?);
        println!("done {}", elapsed.as_secs_f64());
        Ok(())
    })
}

fn start_server(
    rt: &tokio::runtime::Runtime,
    pki: &Path,
    store: Arc<dyn Store>,
    cluster: Cluster,
) -> Result<(SocketAddr, IngestService), Error> {
    let files = TlsFiles {
        cert: pki.join("server.pem"),
        key: pki.join("server-key.pem"),
        ca: pki.join("ca.pem"),
    };
    let (_keep, cluster) = watch::channel(Some(Arc::new(ClusterState::from_cluster(cluster))));
    let service = IngestService::new(store, cluster, Limits::default())?;
    let server = service.clone().into_server();
    let addr = rt.block_on(async {
        let config = tls::ReloadingServerConfig::start(files, tls::DEFAULT_POLL)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let incoming = tls::incoming(listener, config.subscribe(), Duration::from_secs(10));
        tokio::spawn(async move {
            let _config = config;
            if let Err(e) = tonic::transport::Server::builder()
                .serve_with_incoming(server, incoming)
                .await
            {
                eprintln!("server failed: {e}");
            }
        });
        Ok::<_, Error>(addr)
    })?;
    Ok((addr, service))
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Where one batch's server time goes, measured in this process on one thread.
fn breakdown(
    store: &SqliteStore,
    cluster: &Cluster,
    per_batch: usize,
    rounds: usize,
) -> Result<(), Error> {
    let encoded: Vec<Vec<u8>> = (0..rounds)
        .map(|r| {
            wire::batch_to_wire(
                batch_id("breakdown", r as u64 + 1),
                &records(r, per_batch),
                &[],
            )
            .map(|b| b.encode_to_vec())
        })
        .collect::<Result<_, _>>()?;
    // Thread CPU time per stage: the machine may be shared, wall time would count waiting.
    let cpu = thread_cpu;
    let (mut decode, mut convert, mut observe, mut commit, mut commit_wall) =
        (0.0, 0.0, 0.0, 0.0, 0.0);
    for bytes in &encoded {
        let t = cpu()?;
        let batch = v1::Batch::decode(bytes.as_slice())?;
        let t1 = cpu()?;
        decode += t1 - t;
        let batch = wire::grouped_batch_from_wire(batch)?;
        let t2 = cpu()?;
        convert += t2 - t1;
        let (flows, dns) = from_groups(cluster, &batch.id.node, &batch.groups, &batch.dns);
        let t3 = cpu()?;
        observe += t3 - t2;
        let id = BatchId {
            node: batch.id.node,
            boot_id: batch.id.boot_id,
            seq: batch.id.seq,
        };
        let wall = Instant::now();
        store.commit(&id, &flows, &dns)?;
        commit_wall += wall.elapsed().as_secs_f64();
        commit += cpu()? - t3;
    }
    let n = (rounds * per_batch) as f64;
    let us = |s: f64| s / n * 1e6;
    let sum = decode + convert + observe + commit;
    println!("  per record, in-process on one thread, thread CPU time ({rounds} batches):");
    println!("    prost decode       {:6.3} µs", us(decode));
    println!("    wire → record      {:6.3} µs", us(convert));
    println!("    from_groups        {:6.3} µs", us(observe));
    println!(
        "    Store::commit      {:6.3} µs  (wall {:.3} µs)",
        us(commit),
        us(commit_wall)
    );
    println!(
        "    sum                {:6.3} µs  (≈ {:.0} records/s per core without gRPC and TLS)",
        us(sum),
        n / sum
    );

    // The same rounds again (new batch ids), committed in groups as the ingest writer does
    // when batches queue up.
    for group in [1usize, 4, 8] {
        let prepared: Vec<(BatchId, Vec<_>, Vec<_>)> = (0..rounds)
            .map(|r| {
                let (flows, dns) = from_batch(cluster, &records(r, per_batch), &[]);
                let id = BatchId {
                    node: "node-1".into(),
                    boot_id: format!("breakdown-group-{group}"),
                    seq: r as u64 + 1,
                };
                (id, flows, dns)
            })
            .collect();
        let t = cpu()?;
        for chunk in prepared.chunks(group) {
            let batches: Vec<BatchCommit<'_>> = chunk
                .iter()
                .map(|(id, flows, dns)| BatchCommit { id, flows, dns })
                .collect();
            store.commit_many(&batches)?;
        }
        println!(
            "    Store::commit_many {:6.3} µs  ({group} batches per transaction)",
            us(cpu()? - t)
        );
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let per_batch = env_usize("LEASH_BENCH_BATCH", 4_000).max(1);
    let total = env_usize("LEASH_BENCH_RECORDS", 1_000_000).max(1);
    if let Ok(addr) = std::env::var("LEASH_BENCH_CLIENT") {
        let pki = PathBuf::from(std::env::var("LEASH_BENCH_PKI")?);
        return client(&addr, &pki, total, per_batch);
    }

    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    leash::certs::generate(&pki, &["127.0.0.1".to_owned()], &["bench-agent".to_owned()])?;
    let store = Arc::new(SqliteStore::open(dir.path().join("leash.db"))?);
    let rt = tokio::runtime::Runtime::new()?;
    let (addr, service) = start_server(&rt, &pki, store.clone(), cluster()?)?;

    let mut child = Command::new(std::env::current_exe()?)
        .env("LEASH_BENCH_CLIENT", addr.to_string())
        .env("LEASH_BENCH_PKI", &pki)
        .env("LEASH_BENCH_RECORDS", total.to_string())
        .env("LEASH_BENCH_BATCH", per_batch.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut to_child = child.stdin.take().ok_or("no child stdin")?;
    let mut from_child = BufReader::new(child.stdout.take().ok_or("no child stdout")?);
    let mut line = String::new();
    from_child.read_line(&mut line)?;
    if line.trim() != "ready" {
        return Err(format!("client: {line:?}").into());
    }
    let cpu0 = rusage(libc::RUSAGE_SELF)?;
    writeln!(to_child, "go")?;
    line.clear();
    from_child.read_line(&mut line)?;
    let cpu1 = rusage(libc::RUSAGE_SELF)?;
    let wall: f64 = line
        .trim()
        .strip_prefix("done ")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("client: {line:?}"))?;
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("client exited with {status}").into());
    }
    let client_cpu = rusage(libc::RUSAGE_CHILDREN)?;

    // Prefixed as `leash serve`'s registry is.
    let mut registry = prometheus_client::registry::Registry::with_prefix("leash");
    service.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    let stored = metric(&text, "leash_ingest_records_total{kind=\"flow\"}");
    let commit_secs = metric(&text, "leash_ingest_commit_seconds_sum");
    let transactions = metric(&text, "leash_ingest_batches_per_commit_count");

    let n = total as f64;
    let server_cpu = (cpu1.user - cpu0.user) + (cpu1.sys - cpu0.sys);
    let observations = store.flows(None)?.len();
    println!(
        "ingest: {total} flow records in {} batches of {per_batch}, one mTLS gRPC stream on loopback, SQLite (WAL) in a tempdir",
        total.div_ceil(per_batch)
    );
    println!("  stored records (metric)       {stored}");
    println!("  flow observations in store    {observations}");
    println!(
        "  wall time                     {wall:.3} s  → {:.0} records/s",
        n / wall
    );
    println!(
        "  server CPU (this process)     {server_cpu:.3} s (user {:.3}, sys {:.3}) → {:.3} µs/record",
        cpu1.user - cpu0.user,
        cpu1.sys - cpu0.sys,
        server_cpu / n * 1e6
    );
    println!("  records/s per core (server)   {:.0}", n / server_cpu);
    println!(
        "  store transactions            {transactions} ({:.1} batches each on average)",
        total.div_ceil(per_batch) as f64 / transactions
    );
    println!(
        "  of which commits (wall)       {commit_secs:.3} s ({:.0}% of server CPU)",
        commit_secs / server_cpu * 100.0
    );
    println!(
        "  client CPU (child process)    {:.3} s, including building the batches",
        client_cpu.user + client_cpu.sys
    );
    breakdown(&store, &cluster()?, per_batch, 25)?;
    Ok(())
}
