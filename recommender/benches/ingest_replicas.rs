//! Ingest with one and with two `leash serve` replicas sharing one PostgreSQL database
//! (issue 17, "Two replicas"): real `leash serve` processes, real mutual-TLS gRPC on
//! loopback, PostgreSQL started by the bench (the tests' harness, with production durability:
//! fsync, synchronous_commit and full_page_writes on).
//!
//! Agents (`LEASH_BENCH_AGENTS`, default 4; each its own node, batch ids and stream) stream
//! batches of `LEASH_BENCH_BATCH` records (default 4,000; the data of `ingest.rs`) as fast as
//! the acks come, and after a cut stream resend what has no ack to the next replica, as the
//! agent does behind the Service. A warm-up phase with one replica stores the keys first.
//! Each node runs its own pods (`LEASH_BENCH_SHARED_PODS=1`:
//! every node all of them, so that every agent sends the same keys). Three phases, `LEASH_BENCH_RECORDS` records each (default
//! 400,000):
//!
//! 1. one replica takes every agent;
//! 2. two replicas, the agents split between them;
//! 3. two replicas, and once a third of the phase is acked one is killed (SIGKILL): its
//!    agents reconnect to the other, which takes every agent.
//!
//! Reported per phase: records/s (wall, from the acks), CPU per record of `leash serve` (the
//! processes' utime + stime from `/proc/<pid>/stat`, all threads) and of the database server
//! (the postmaster and its children), the load average; for phase 3 the rates before and
//! after the kill. At the end the stored counts must be exact: every batch id stored once
//! and the flows' counts summing to every record sent.
//!
//! `cargo bench -p leash --bench ingest_replicas`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leash_records::tls::{TlsConnector, TlsFiles};
use leash_records::wire::{self, v1};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

// The tests' PostgreSQL harness: `initdb` in a tempdir (as `nobody` when root), a private port.
#[path = "../tests/support/postgres.rs"]
#[expect(dead_code, reason = "the bench uses only part of the test harness")]
mod postgres;

#[path = "../tests/support/http.rs"]
#[expect(dead_code, reason = "the bench uses only part of the test harness")]
mod http;

#[path = "support/ingest_data.rs"]
mod data;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A `leash serve` process; killed on drop.
struct Replica {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    log: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    /// Starts `leash serve` on the store named in `store_file` with mTLS from `pki`; waits
    /// until `/readyz` answers 200.
    fn start(dir: &Path, pki: &Path, store_file: &Path, cluster: &Path) -> Result<Replica, Error> {
        let (grpc, http, ui) = (http::free_port(), http::free_port(), http::free_port());
        let log = dir.join(format!("serve-{}.log", grpc.port()));
        let child = Command::new(env!("CARGO_BIN_EXE_leash"))
            .arg("serve")
            .args(["--listen", &grpc.to_string()])
            .args(["--http", &http.to_string()])
            .args(["--ui-listen", &ui.to_string()])
            .arg("--store-file")
            .arg(store_file)
            .arg("--cluster")
            .arg(cluster)
            .arg("--tls-cert")
            .arg(pki.join("server.pem"))
            .arg("--tls-key")
            .arg(pki.join("server-key.pem"))
            .arg("--tls-client-ca")
            .arg(pki.join("ca.pem"))
            .args(["--check-interval", "1h"])
            .env("LEASH_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut replica = Replica {
            child,
            grpc,
            http,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = replica.child.try_wait()? {
                return Err(format!("leash serve exited: {status}\n{}", replica.log()).into());
            }
            if matches!(http::get(replica.http, "/readyz"), Ok((200, _))) {
                return Ok(replica);
            }
            if Instant::now() > deadline {
                return Err(format!("leash serve not ready in 60 s\n{}", replica.log()).into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until its start-up work (the first alert check, retention) is done: its CPU
    /// time grows by less than 20 ms in 500 ms, at most 30 s.
    fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = self.cpu();
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(500));
            let now = self.cpu();
            if now - last < 0.02 {
                return;
            }
            last = now;
        }
    }

    /// Transactions committed so far (`leash_ingest_batches_per_commit_count`).
    fn commits(&self) -> f64 {
        http::get(self.http, "/metrics")
            .ok()
            .and_then(|(_, text)| {
                text.lines().find_map(|l| {
                    l.strip_prefix("leash_ingest_batches_per_commit_count ")?
                        .trim()
                        .parse()
                        .ok()
                })
            })
            .unwrap_or(0.0)
    }

    fn cpu(&self) -> f64 {
        data::process_cpu(self.child.id()).unwrap_or(f64::NAN)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The acks so far: (agent, seq) → when, and how many came twice.
#[derive(Default)]
struct Acks {
    at: BTreeMap<(usize, u64), Instant>,
    twice: usize,
    duplicates: usize,
    /// Why streams were cut, and how often.
    cuts: BTreeMap<String, usize>,
}

type Shared = Arc<Mutex<Acks>>;

fn lock(acks: &Shared) -> std::sync::MutexGuard<'_, Acks> {
    acks.lock().unwrap_or_else(|p| p.into_inner())
}

/// One stream to `addr`: sends `batches` and records their acks until each has one, or the
/// stream is cut.
async fn stream_once(
    pki: &Path,
    addr: SocketAddr,
    agent: usize,
    batches: Vec<v1::Batch>,
    acks: &Shared,
) -> Result<(), Error> {
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector(TlsConnector::new(TlsFiles {
            cert: pki.join("bench-agent.pem"),
            key: pki.join("bench-agent-key.pem"),
            ca: pki.join("ca.pem"),
        }))
        .await?;
    let n = batches.len();
    let (tx, rx) = mpsc::channel(8);
    let sender = tokio::spawn(async move {
        for b in batches {
            if tx.send(b).await.is_err() {
                break;
            }
        }
        tx
    });
    let mut client = v1::ingest_client::IngestClient::new(channel);
    let mut stream = client.push(ReceiverStream::new(rx)).await?.into_inner();
    let mut got = 0;
    while got < n {
        let Some(ack) = stream.message().await? else {
            return Err("stream ended early".into());
        };
        let seq = ack.id.map_or(0, |id| id.seq);
        let mut acks = lock(acks);
        if acks.at.insert((agent, seq), Instant::now()).is_some() {
            acks.twice += 1;
        }
        if ack.duplicate {
            acks.duplicates += 1;
        }
        got += 1;
    }
    sender.abort();
    Ok(())
}

/// An agent: streams its batches to `replicas[first]`, and after a cut resends what has no
/// ack to the next replica (a killed one refuses, so it moves on), as behind a Service.
async fn agent(
    pki: PathBuf,
    replicas: Vec<SocketAddr>,
    first: usize,
    agent: usize,
    batches: Vec<v1::Batch>,
    acks: Shared,
) -> Result<(), Error> {
    let mut target = first;
    for _ in 0..200 {
        let rest: Vec<v1::Batch> = {
            let acks = lock(&acks);
            batches
                .iter()
                .filter(|b| {
                    let seq = b.id.as_ref().map_or(0, |id| id.seq);
                    !acks.at.contains_key(&(agent, seq))
                })
                .cloned()
                .collect()
        };
        if rest.is_empty() {
            return Ok(());
        }
        let Some(addr) = replicas.get(target % replicas.len()) else {
            return Err("no replica".into());
        };
        if let Err(e) = stream_once(&pki, *addr, agent, rest, &acks).await {
            *lock(&acks).cuts.entry(e.to_string()).or_default() += 1;
            target += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Err(format!("agent {agent}: not every batch acked in 200 streams").into())
}

/// What one phase measured.
struct Phase {
    label: String,
    records: usize,
    wall: f64,
    serve_cpu: f64,
    db_cpu: f64,
    load: String,
    /// Transactions of the replicas alive at the end.
    transactions: f64,
    /// Phase 3: (records/s before the kill, after it, the survivor's CPU µs/record after it,
    /// the database's CPU µs/record after it, streams cut).
    kill: Option<(f64, f64, f64, f64, usize)>,
}

/// The batches of `agents` agents for phase `index`: `per_agent` batches each, ids (node-i,
/// boot `phase`, 1…), the rounds of the data going on from the phase before (so that every
/// phase has destinations never seen before).
fn batches(
    phase: &str,
    index: usize,
    agents: usize,
    per_agent: usize,
    per_batch: usize,
) -> Result<Vec<Vec<v1::Batch>>, Error> {
    let shared = std::env::var_os("LEASH_BENCH_SHARED_PODS").is_some();
    (0..agents)
        .map(|a| {
            let node = format!("node-{a}");
            // Each node its own pods (a workload's two on one node), or every node all of
            // them (`LEASH_BENCH_SHARED_PODS=1`: the same keys from every agent).
            let share = data::PODS / agents / 2 * 2;
            let pods = if shared {
                0..data::PODS
            } else {
                a * share..(a + 1) * share
            };
            (0..per_agent)
                .map(|r| {
                    let id = v1::BatchId {
                        node: node.clone(),
                        boot_id: phase.to_owned(),
                        seq: r as u64 + 1,
                    };
                    Ok(wire::batch_to_wire(
                        id,
                        &data::records(&node, pods.clone(), index * per_agent + r, per_batch),
                        &[],
                    )?)
                })
                .collect()
        })
        .collect()
}

/// Runs one phase: agent `i` starts on `targets[i % targets.len()]` of `replicas`; with
/// `kill`, `replicas[kill]` is killed once a third of the phase is acked.
#[expect(clippy::too_many_arguments, reason = "one bench phase's knobs")]
fn phase(
    rt: &tokio::runtime::Runtime,
    label: &str,
    pki: &Path,
    replicas: &mut [Option<Replica>],
    targets: &[usize],
    kill: Option<usize>,
    work: Vec<Vec<v1::Batch>>,
    per_batch: usize,
    pg_pid: u32,
) -> Result<Phase, Error> {
    let total: usize = work.iter().map(Vec::len).sum();
    for r in replicas.iter().flatten() {
        r.settle();
    }
    let addrs: Vec<SocketAddr> = replicas.iter().flatten().map(|r| r.grpc).collect();
    let acks = Shared::default();
    let serve_cpu =
        |replicas: &[Option<Replica>]| -> f64 { replicas.iter().flatten().map(Replica::cpu).sum() };
    let commits0: Vec<f64> = replicas
        .iter()
        .map(|r| r.as_ref().map_or(0.0, Replica::commits))
        .collect();
    let cpu0 = serve_cpu(replicas);
    let db0 = data::postgres_cpu(pg_pid)?;
    let start = Instant::now();
    let tasks: Vec<_> = work
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            let first = targets.get(i % targets.len().max(1)).copied().unwrap_or(0);
            rt.spawn(agent(
                pki.to_path_buf(),
                addrs.clone(),
                first,
                i,
                b,
                acks.clone(),
            ))
        })
        .collect();
    let mut killed = None;
    if let Some(k) = kill {
        while lock(&acks).at.len() < total / 3 {
            std::thread::sleep(Duration::from_millis(2));
        }
        // The victim's CPU up to its death: the last reading before SIGKILL.
        let victim_cpu = replicas
            .get(k)
            .and_then(Option::as_ref)
            .map_or(0.0, Replica::cpu);
        let survivors_cpu: f64 = replicas
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != k)
            .filter_map(|(_, r)| r.as_ref())
            .map(Replica::cpu)
            .sum();
        let db_at = data::postgres_cpu(pg_pid)?;
        let at = Instant::now();
        let acked = lock(&acks).at.len();
        if let Some(slot) = replicas.get_mut(k) {
            // Drop kills (SIGKILL) and reaps it.
            drop(slot.take());
        }
        killed = Some((at, acked, victim_cpu, survivors_cpu, db_at));
    }
    for t in tasks {
        rt.block_on(t)??;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu1 = serve_cpu(replicas);
    // The survivors' transactions (a killed replica's are lost with it).
    let transactions: f64 = replicas
        .iter()
        .zip(&commits0)
        .filter_map(|(r, c0)| r.as_ref().map(|r| r.commits() - c0))
        .sum();
    let db1 = data::postgres_cpu(pg_pid)?;
    let acks = lock(&acks);
    let cuts: usize = acks.cuts.values().sum();
    if acks.at.len() != total || acks.twice > 0 {
        return Err(format!(
            "{label}: {} of {total} batches acked, {} twice",
            acks.at.len(),
            acks.twice
        )
        .into());
    }
    let mut kill_figures = None;
    let mut serve_total = cpu1 - cpu0;
    if let Some((at, acked, victim_cpu, survivors_cpu, db_at)) = killed {
        let before = at.duration_since(start).as_secs_f64();
        let end = acks.at.values().max().copied().unwrap_or(at);
        let after = end.saturating_duration_since(at).as_secs_f64();
        let after_records = ((total - acked) * per_batch) as f64;
        // The survivors' CPU is in cpu1; the victim's up to its death is added.
        serve_total = cpu1 - cpu0 + victim_cpu;
        kill_figures = Some((
            (acked * per_batch) as f64 / before,
            after_records / after,
            (cpu1 - survivors_cpu) / after_records * 1e6,
            (db1 - db_at) / after_records * 1e6,
            cuts,
        ));
        println!(
            "  {label}: killed after {acked} of {total} batches; {} resent batches were found stored (duplicate acks); cuts: {:?}",
            acks.duplicates, acks.cuts
        );
    }
    Ok(Phase {
        label: label.to_owned(),
        records: total * per_batch,
        wall,
        serve_cpu: serve_total,
        db_cpu: db1 - db0,
        load: data::load_average(),
        transactions,
        kill: kill_figures,
    })
}

fn main() -> Result<(), Error> {
    let per_batch = env_usize("LEASH_BENCH_BATCH", 4_000).max(1);
    let records = env_usize("LEASH_BENCH_RECORDS", 400_000).max(1);
    let agents = env_usize("LEASH_BENCH_AGENTS", 4).max(2);
    let per_agent = records.div_ceil(per_batch * agents).max(3);
    let Some(bin) = postgres::bin_dir() else {
        println!(
            "ingest_replicas: SKIPPED, PostgreSQL is not installed (./scripts/setup.sh installs it)"
        );
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    leash::certs::generate(&pki, &["127.0.0.1".to_owned()], &["bench-agent".to_owned()])?;
    let cluster = dir.path().join("cluster.json");
    std::fs::write(
        &cluster,
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "v1", "kind": "List", "items": data::pod_objects()
        }))?,
    )?;
    let pg = postgres::Postgres::start_with_settings(
        &bin,
        &["fsync=on", "synchronous_commit=on", "full_page_writes=on"],
    );
    let url = pg.create_database("bench");
    let store_file = dir.path().join("store-url");
    std::fs::write(&store_file, &url)?;
    let pg_pid = pg.pid().ok_or("no postmaster")?;
    let version = pg.psql("bench", "SHOW server_version");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!(
        "ingest_replicas: {agents} agents × {per_agent} batches of {per_batch} flow records per phase, mTLS gRPC on loopback, `leash serve` processes on PostgreSQL {version} (fsync, synchronous_commit, full_page_writes on)"
    );
    let mut replicas = vec![Some(Replica::start(
        dir.path(),
        &pki,
        &store_file,
        &cluster,
    )?)];
    // A warm-up phase stores the keys, so that the measured phases all update as many
    // stored flows and insert as many new ones.
    let mut phases = Vec::new();
    phases.push(phase(
        &rt,
        "warm-up: one replica, every agent (stores the keys)",
        &pki,
        &mut replicas,
        &[0],
        None,
        batches("warm", 0, agents, per_agent, per_batch)?,
        per_batch,
        pg_pid,
    )?);
    phases.push(phase(
        &rt,
        "one replica, every agent",
        &pki,
        &mut replicas,
        &[0],
        None,
        batches("one", 1, agents, per_agent, per_batch)?,
        per_batch,
        pg_pid,
    )?);
    replicas.push(Some(Replica::start(
        dir.path(),
        &pki,
        &store_file,
        &cluster,
    )?));
    phases.push(phase(
        &rt,
        "two replicas, agents split",
        &pki,
        &mut replicas,
        &[0, 1],
        None,
        batches("two", 2, agents, per_agent, per_batch)?,
        per_batch,
        pg_pid,
    )?);
    phases.push(phase(
        &rt,
        "two replicas, one killed (SIGKILL) under load",
        &pki,
        &mut replicas,
        &[0, 1],
        Some(0),
        batches("kill", 3, agents, per_agent, per_batch)?,
        per_batch,
        pg_pid,
    )?);

    // Nothing lost, nothing twice: every batch id once, every record counted once.
    let batches_sent = phases.len() * agents * per_agent;
    let records_sent = batches_sent * per_batch;
    let stored = pg.psql(
        "bench",
        "SELECT count(*) || ' ' || (SELECT coalesce(sum(count), 0) FROM flows) FROM batches",
    );
    let expected = format!("{batches_sent} {}", records_sent as u64 * data::COUNT);
    println!(
        "  stored: {stored} (batch ids, sum of flow counts); expected {expected}: {}",
        if stored == expected {
            "exact"
        } else {
            "MISMATCH"
        }
    );
    for p in &phases {
        let n = p.records as f64;
        println!("  {} (load average {})", p.label, p.load);
        println!(
            "    {} records in {:.2} s → {:.0} records/s; serve CPU {:.2} s ({:.2} µs/record, {:.0} records/s per serve core); database CPU {:.2} s ({:.2} µs/record)",
            p.records,
            p.wall,
            n / p.wall,
            p.serve_cpu,
            p.serve_cpu / n * 1e6,
            n / p.serve_cpu,
            p.db_cpu,
            p.db_cpu / n * 1e6,
        );
        println!(
            "    {:.0} transactions by the replicas alive at the end",
            p.transactions
        );
        if let Some((before, after, serve_us, db_us, cuts)) = p.kill {
            println!(
                "    before the kill {before:.0} records/s; after it, on the survivor alone, {after:.0} records/s ({cuts} streams cut and resumed); survivor CPU {serve_us:.2} µs/record, database {db_us:.2} µs/record after the kill"
            );
        }
    }
    if stored != expected {
        return Err(format!("stored {stored}, expected {expected}").into());
    }
    Ok(())
}
