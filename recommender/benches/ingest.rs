//! Ingest throughput of `leash serve`: a real gRPC client on loopback, mutual TLS, streaming
//! batches of agent flow records into the ingest service backed by the SQLite store.
//!
//! The client runs in a child process (this binary re-executed), so that the server's CPU time
//! is this process's `getrusage(RUSAGE_SELF)` over the run, and records/s per core is records
//! divided by the server's CPU seconds. The client builds and encodes all batches before the
//! clock starts.
//!
//! Data (`support/ingest_data.rs`): 200 DaemonSet workloads with 2 pods each, every pod
//! talking to many destinations; each batch carries `LEASH_BENCH_BATCH` (default 4,000)
//! distinct pod-level keys, taken in turn from a universe of 400 pods × 100 destinations, so
//! keys repeat across batches as an agent's do; every 20th record goes to a destination never
//! seen before. Records come by cgroup, as the agent sends them, about 10 per pod per batch.
//!
//! The same flow is measured side by side into SQLite and into PostgreSQL (a server started
//! by the bench with the tests' harness, fsync and synchronous_commit on as in production,
//! then once more with synchronous_commit off), with the database server's CPU read from
//! `/proc` (its processes' utime + stime) before and after.
//!
//! Flows go to PostgreSQL by one `unnest` upsert per table (the store's default), and, in a
//! run of their own, by `COPY` into a staging table then `INSERT … SELECT … ON CONFLICT`.
//!
//! `cargo bench -p leash --bench ingest` (env `LEASH_BENCH_RECORDS`, default 1,000,000).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use leash::{
    cluster::Cluster,
    ingest::{IngestService, Limits},
    observations::{from_batch, from_groups},
    state::ClusterState,
    store::{
        BatchCommit, BatchId, Store, location::Location, postgres::PostgresStore,
        sqlite::SqliteStore,
    },
};
use leash_records::{
    FlowRecord, Snapshot,
    tls::{self, TlsConnector, TlsFiles},
    wire::{self, v1},
};
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

// The tests' PostgreSQL harness: `initdb` in a tempdir (as `nobody` when root), a private port.
#[path = "../tests/support/postgres.rs"]
#[expect(dead_code, reason = "the bench uses only part of the test harness")]
mod postgres;

#[path = "support/ingest_data.rs"]
#[expect(dead_code, reason = "each ingest bench uses part of the data")]
mod data;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The cluster the server attributes records with: `WORKLOADS` DaemonSets of two pods.
fn cluster() -> Result<Cluster, Error> {
    let pods = data::pod_objects()
        .into_iter()
        .map(serde_json::from_value)
        .collect::<Result<Vec<_>, _>>()?;
    let snapshot = Snapshot {
        pods,
        ..Snapshot::default()
    };
    Ok(Cluster::from_snapshot(&snapshot)?)
}

/// The records of batch `round` (0-based) of the one agent, `node-1`.
fn records(round: usize, per_batch: usize) -> Vec<FlowRecord> {
    data::records("node-1", 0..data::PODS, round, per_batch)
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

/// What one run measured.
struct Run {
    wall: f64,
    server_cpu: f64,
    db_cpu: Option<f64>,
    transactions: f64,
    observations: usize,
    /// The load average at the end of the run.
    load: String,
}

/// Streams `total` records from a child client into a new ingest service on `store`.
fn run(
    rt: &tokio::runtime::Runtime,
    pki: &Path,
    store: Arc<dyn Store>,
    db_cpu: &dyn Fn() -> Result<Option<f64>, Error>,
    total: usize,
    per_batch: usize,
) -> Result<Run, Error> {
    let (addr, service) = start_server(rt, pki, store.clone(), cluster()?)?;
    let mut child = Command::new(std::env::current_exe()?)
        .env("LEASH_BENCH_CLIENT", addr.to_string())
        .env("LEASH_BENCH_PKI", pki)
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
    let db0 = db_cpu()?;
    let cpu0 = rusage(libc::RUSAGE_SELF)?;
    writeln!(to_child, "go")?;
    line.clear();
    from_child.read_line(&mut line)?;
    let cpu1 = rusage(libc::RUSAGE_SELF)?;
    let db1 = db_cpu()?;
    let wall: f64 = line
        .trim()
        .strip_prefix("done ")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("client: {line:?}"))?;
    let status = child.wait()?;
    if !status.success() {
        return Err(format!("client exited with {status}").into());
    }
    // Prefixed as `leash serve`'s registry is.
    let mut registry = prometheus_client::registry::Registry::with_prefix("leash");
    service.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    let stored = metric(&text, "leash_ingest_records_total{kind=\"flow\"}");
    if stored != total as f64 {
        return Err(format!("stored {stored} records of {total}").into());
    }
    Ok(Run {
        wall,
        server_cpu: (cpu1.user - cpu0.user) + (cpu1.sys - cpu0.sys),
        db_cpu: db0.zip(db1).map(|(a, b)| b - a),
        transactions: metric(&text, "leash_ingest_batches_per_commit_count"),
        observations: store.flows(None)?.len(),
        load: data::load_average(),
    })
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
    let sqlite = Arc::new(SqliteStore::open(dir.path().join("leash.db"))?);
    let rt = tokio::runtime::Runtime::new()?;
    let batches = total.div_ceil(per_batch);
    println!(
        "ingest: {total} flow records in {batches} batches of {per_batch}, one mTLS gRPC stream on loopback into `leash serve`'s ingest service (group commit: Store::commit_many)"
    );
    let mut runs: Vec<(String, Run)> = Vec::new();
    let no_db = || Ok(None);
    runs.push((
        "SQLite (WAL, synchronous=NORMAL) in a tempdir".to_owned(),
        run(&rt, &pki, sqlite.clone(), &no_db, total, per_batch)?,
    ));

    // PostgreSQL as in production (fsync, synchronous_commit, full_page_writes on), then
    // with synchronous_commit off; each a new server on the same machine.
    // Flows sent by one `unnest` upsert (the default), then by `COPY` into a staging table
    // and one `INSERT … SELECT … ON CONFLICT`, each on a new server.
    let production: &[&str] = &["fsync=on", "synchronous_commit=on", "full_page_writes=on"];
    let pg_settings: [(&str, &[&str], bool); 3] = [
        (
            "PostgreSQL unnest, fsync=on synchronous_commit=on full_page_writes=on",
            production,
            false,
        ),
        (
            "PostgreSQL COPY, fsync=on synchronous_commit=on full_page_writes=on",
            production,
            true,
        ),
        (
            "PostgreSQL unnest, fsync=on synchronous_commit=OFF full_page_writes=on",
            &["fsync=on", "synchronous_commit=off", "full_page_writes=on"],
            false,
        ),
    ];
    match postgres::bin_dir() {
        None => println!("  PostgreSQL: SKIPPED, not installed (./scripts/setup.sh installs it)"),
        Some(bin) => {
            // `LEASH_BENCH_PG_STATEMENTS=1`: the server's time by statement, to profile.
            let statements = std::env::var_os("LEASH_BENCH_PG_STATEMENTS").is_some();
            for (label, settings, copy) in pg_settings {
                let mut settings = settings.to_vec();
                if statements {
                    settings.push("shared_preload_libraries=pg_stat_statements");
                }
                let pg = postgres::Postgres::start_with_settings(&bin, &settings);
                let url = pg.create_database("bench");
                let Ok(Location::Postgres(url)) = url.parse::<Location>() else {
                    return Err("not a PostgreSQL URL".into());
                };
                let store = Arc::new(PostgresStore::connect(&url)?);
                store.set_copy_upserts(copy);
                let pid = pg.pid().ok_or("no postmaster")?;
                let db = move || data::postgres_cpu(pid).map(Some);
                let version = pg.psql("bench", "SHOW server_version");
                runs.push((
                    format!("{label} (server {version})"),
                    run(&rt, &pki, store, &db, total, per_batch)?,
                ));
                if statements {
                    pg.psql("bench", "CREATE EXTENSION pg_stat_statements");
                    println!("  {label}: server time by statement (ms, calls, rows)");
                    let top = pg.psql(
                        "bench",
                        "SELECT round(total_exec_time)::text || ' ' || calls || ' ' || rows || ' '
                             || left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
                         FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 8",
                    );
                    for line in top.lines() {
                        println!("    {line}");
                    }
                }
            }
        }
    }
    let n = total as f64;
    for (label, r) in &runs {
        println!("  {label} (load average {})", r.load);
        println!(
            "    wall {:.3} s → {:.0} records/s; {} flow observations stored; {} transactions ({:.1} batches each)",
            r.wall,
            n / r.wall,
            r.observations,
            r.transactions,
            batches as f64 / r.transactions
        );
        println!(
            "    serve CPU {:.3} s → {:.0} records/s per serve core ({:.3} µs/record)",
            r.server_cpu,
            n / r.server_cpu,
            r.server_cpu / n * 1e6
        );
        if let Some(db) = r.db_cpu {
            println!(
                "    database server CPU {db:.3} s → {:.0} records/s per database core; database/serve CPU ratio {:.2}",
                n / db,
                db / r.server_cpu
            );
        }
    }
    if let [(_, base), rest @ ..] = runs.as_slice() {
        for (label, r) in rest {
            println!(
                "  serve CPU per record vs SQLite: {:.2}× ({label})",
                r.server_cpu / base.server_cpu
            );
        }
    }
    breakdown(&sqlite, &cluster()?, per_batch, 25)?;
    Ok(())
}
