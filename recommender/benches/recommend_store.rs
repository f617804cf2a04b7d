//! `leash recommend --store` at scale, SQLite and PostgreSQL side by side in one run.
//!
//! Builds the synthetic cluster of the `recommend` bench (`leash_lab::synthetic`, 5,000
//! nodes, 15,000 Deployments, 150,000 pods at full size) and loads it with the production
//! loader (`Cluster::load`); generates `LEASH_BENCH_FLOWS` (default 10M × scale) distinct
//! stored flow observations over its workloads, about 670 per workload (a pod of the cluster
//! on 8080, external IPv4 and IPv6 addresses on many ports, some UDP; 40% with a DNS name;
//! every flow with one or two of the workload's pods by name), plus one DNS observation per
//! 20 flows (each with its answers' names and its address history, a fifth with a CNAME
//! chain). They arrive in 20 rounds, each a slice of every workload's, so that rows are not
//! stored in key order. The same observations go into a SQLite store and a PostgreSQL store
//! through the `Store` API (`commit_many`, 20,000 flows per batch, 10 batches per transaction; both
//! stores filled at once on two threads), with PostgreSQL a server started by the bench with
//! the tests' harness (`recommender/tests/support/postgres.rs`, default settings but for
//! the harness's `fsync=off`, which only speeds the fill).
//!
//! Then the release `leash recommend --cluster SNAPSHOT --store STORE` runs against each in
//! turn (SQLite first), as a child process: wall time, CPU (user + system of the child, from
//! `wait4`), peak RSS (the child's VmHWM, sampled every 50 ms), and for PostgreSQL the database server's CPU over the
//! run; then the PostgreSQL/SQLite ratios. Both outputs must be byte-identical (the bench
//! fails otherwise). `LEASH_BENCH_RUNS` (default 1) repeats the pair.
//!
//! Besides, `Store::flows` and `Store::dns` alone, in this process, on each store: the part
//! of `recommend` the store decides (the command's remaining time is the engine's).
//!
//! Everything lives in a temporary directory under the target directory (`target/tmp`),
//! removed at the end: per million flows, the SQLite file takes about 0.11 GB, the PostgreSQL
//! database 0.65 GB, and `recommend` peaks at about 2.5 GB of RSS (the engine's: the same on
//! both stores), so that the full 10M needs a machine of more than 25 GB.
//!
//! `cargo bench -p leash --bench recommend_store` (full size); `LEASH_BENCH_SCALE=0.1` for a
//! tenth of the cluster and of the observations; `-- --test` for a tiny run. To iterate on
//! the read path without filling again: `LEASH_BENCH_DIR=DIR` keeps the snapshot and the
//! SQLite store in `DIR`, and `LEASH_BENCH_PG_URL=postgres://…` uses that database instead
//! of starting a server; when `DIR/filled` exists (written after a fill), both are reused.

use std::io::{BufWriter, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use leash::cluster::Cluster;
use leash::evidence::PodNames;
use leash::store::{
    AddressSeen, BatchCommit, BatchId, DnsObservation, FlowObservation, PostgresStore, SqliteStore,
    Store, WorkloadRef, location::Location,
};
use leash_lab::synthetic::{self, Shape};
use leash_records::Protocol;

// The tests' PostgreSQL harness: `initdb` in a tempdir (as `nobody` when root), a private port.
#[path = "../tests/support/postgres.rs"]
#[expect(dead_code, reason = "the bench uses only part of the test harness")]
mod postgres;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Flow observations per batch, and batches per `commit_many` transaction, of the fill.
const BATCH_FLOWS: usize = 20_000;
const BATCHES_PER_COMMIT: usize = 10;

/// Each workload's observations arrive in this many rounds, interleaved with the other
/// workloads' (as agents' batches do), so that the tables' rows are not stored in key order.
const ROUNDS: usize = 20;

/// The synthetic cluster's DNS Service address (`leash_lab::synthetic`).
const DNS_SERVER: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn scale() -> Result<f64, Error> {
    match std::env::var("LEASH_BENCH_SCALE") {
        Ok(s) => Ok(s
            .parse()
            .map_err(|_| format!("LEASH_BENCH_SCALE={s:?} is not a number"))?),
        // `cargo bench -- --test`: a tiny run that checks the bench works.
        Err(_) if std::env::args().any(|a| a == "--test") => Ok(0.002),
        Err(_) => Ok(1.0),
    }
}

fn base_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default()
}

/// What the generator needs of the cluster: its workloads with their pods' names, and every
/// pod's address.
struct Universe {
    workloads: Vec<(WorkloadRef, Vec<String>)>,
    pod_ips: Vec<IpAddr>,
}

impl Universe {
    fn new(cluster: &Cluster) -> Self {
        let workloads = cluster
            .workloads
            .iter()
            .enumerate()
            .filter_map(|(id, w)| {
                let pods: Vec<String> = cluster
                    .workload_pods(id)
                    .iter()
                    .map(|&p| cluster.pods[p].name.clone())
                    .collect();
                (!pods.is_empty()).then(|| {
                    (
                        WorkloadRef {
                            namespace: w.namespace.clone(),
                            kind: w.kind.clone(),
                            name: w.name.clone(),
                        },
                        pods,
                    )
                })
            })
            .collect();
        let pod_ips = cluster
            .pods
            .iter()
            .filter_map(|p| p.ips.first().copied())
            .collect();
        Self { workloads, pod_ips }
    }

    /// How many flows workload `i` has, so that they add up to `total`.
    fn flows_of(&self, i: usize, total: usize) -> usize {
        let n = self.workloads.len().max(1);
        total / n + usize::from(i < total % n)
    }

    /// Round `round` of `ROUNDS` of workload `i`'s flow and DNS observations: its flows
    /// `j` in the round's share of `0..n`, and the DNS observations `k` with `20 k` there.
    /// Every flow key is distinct within the workload (`j` determines the destination, port
    /// and protocol one to one).
    fn observations(
        &self,
        i: usize,
        total: usize,
        round: usize,
    ) -> (Vec<FlowObservation>, Vec<DnsObservation>) {
        let Some((workload, pods)) = self.workloads.get(i) else {
            return (Vec::new(), Vec::new());
        };
        let n = self.flows_of(i, total);
        let (lo, hi) = (n * round / ROUNDS, n * (round + 1) / ROUNDS);
        let t0 = base_time();
        let flows = (lo..hi)
            .map(|j| {
                let jj = u32::try_from(j).unwrap_or(u32::MAX);
                let (dst, port, protocol, name) = match j % 8 {
                    0 => {
                        // A pod of the cluster (consecutive pods: a few peer workloads).
                        let p = (i * 7919 + j / 8) % self.pod_ips.len().max(1);
                        let ip = self
                            .pod_ips
                            .get(p)
                            .copied()
                            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
                        (ip, 8080, Protocol::Tcp, None)
                    }
                    1..=4 => {
                        let net = if (j / 256) % 2 == 0 {
                            [203, 0, 113]
                        } else {
                            [198, 51, 100]
                        };
                        let ip = Ipv4Addr::new(net[0], net[1], net[2], (jj % 256) as u8);
                        let port = 1024 + u16::try_from(j / 512).unwrap_or(0);
                        let name = (j % 8 == 1).then(|| format!("api-{}.example.test", j % 64));
                        (IpAddr::V4(ip), port, Protocol::Tcp, name)
                    }
                    5 | 6 => {
                        let w = u16::try_from(i & 0xffff).unwrap_or(0);
                        let ip = Ipv6Addr::new(0x2001, 0xdb8, 0, w, 0, 0, 0, (jj & 0xffff) as u16);
                        let name = Some(format!("cdn-{}.example.test", j % 97));
                        (IpAddr::V6(ip), 443, Protocol::Tcp, name)
                    }
                    _ => {
                        let ip = Ipv4Addr::new(203, 0, 113, (jj % 256) as u8);
                        let port = 5000 + u16::try_from(j / 256).unwrap_or(0);
                        (IpAddr::V4(ip), port, Protocol::Udp, None)
                    }
                };
                let count = 1 + ((i * 31 + j) % 1000) as u64;
                let first_seen = t0 + Duration::seconds(((i * 17 + j * 13) % 600_000) as i64);
                let last_seen = first_seen + Duration::seconds((j % 3600) as i64);
                let mut pod_names: std::collections::BTreeSet<String> =
                    std::collections::BTreeSet::new();
                if let Some(p) = pods.get(j % pods.len()) {
                    pod_names.insert(p.clone());
                }
                if j % 3 == 0
                    && let Some(p) = pods.get((j + 1) % pods.len())
                {
                    pod_names.insert(p.clone());
                }
                let tcp = protocol == Protocol::Tcp;
                FlowObservation {
                    workload: workload.clone(),
                    protocol,
                    dst,
                    port,
                    count,
                    first_seen,
                    last_seen,
                    names: name.into_iter().collect(),
                    pods: PodNames {
                        names: pod_names,
                        more: 0,
                    },
                    established: if tcp { count } else { 0 },
                    failed: u64::from(tcp && j % 17 == 0),
                }
            })
            .collect();
        let dns = (lo.div_ceil(20)..hi.div_ceil(20).min(n / 20))
            .map(|k| {
                let query = format!("api-{k}.example.test");
                let first_seen = t0 + Duration::seconds(((i * 7 + k * 11) % 600_000) as i64);
                let last_seen = first_seen + Duration::seconds((k % 7200) as i64);
                let kk = u32::try_from(k).unwrap_or(u32::MAX);
                let ip4 = IpAddr::V4(Ipv4Addr::new(203, 0, 113, (kk % 256) as u8));
                let chain: Vec<String> = if k % 5 == 0 {
                    vec![format!("edge-{k}.example.test")]
                } else {
                    Vec::new()
                };
                let mut resolved = std::collections::BTreeSet::new();
                let mut addresses = std::collections::BTreeMap::new();
                let mut ips = vec![ip4];
                if k % 4 == 0 {
                    ips.push(IpAddr::V6(Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        1,
                        0,
                        0,
                        0,
                        0,
                        (kk & 0xffff) as u16,
                    )));
                }
                for ip in ips {
                    resolved.insert((query.clone(), ip));
                    for c in &chain {
                        resolved.insert((c.clone(), ip));
                    }
                    addresses.insert(
                        ip,
                        AddressSeen {
                            first_seen,
                            last_seen,
                            ttl: 30 + (kk % 300),
                            chain: chain.clone(),
                        },
                    );
                }
                DnsObservation {
                    workload: workload.clone(),
                    server: IpAddr::V4(DNS_SERVER),
                    query,
                    count: 1 + (k % 50) as u64,
                    first_seen,
                    last_seen,
                    resolved,
                    addresses,
                }
            })
            .collect();
        (flows, dns)
    }
}

/// Fills `store` with every workload's observations, round by round, in `commit_many`
/// groups.
fn fill(store: &dyn Store, universe: &Universe, total: usize) -> Result<(usize, usize), Error> {
    let mut batches: Vec<(BatchId, Vec<FlowObservation>, Vec<DnsObservation>)> = Vec::new();
    let mut pending = (Vec::new(), Vec::new());
    let (mut flows, mut dns) = (0usize, 0usize);
    let mut seq = 0u64;
    let flush = |batches: &mut Vec<(BatchId, Vec<FlowObservation>, Vec<DnsObservation>)>|
     -> Result<(), Error> {
        let group: Vec<BatchCommit<'_>> = batches
            .iter()
            .map(|(id, f, d)| BatchCommit {
                id,
                flows: f,
                dns: d,
            })
            .collect();
        store.commit_many(&group)?;
        batches.clear();
        Ok(())
    };
    let workloads = universe.workloads.len();
    for step in 0..ROUNDS * workloads {
        let (round, i) = (step / workloads, step % workloads);
        let (f, d) = universe.observations(i, total, round);
        flows += f.len();
        dns += d.len();
        pending.0.extend(f);
        pending.1.extend(d);
        let last = step + 1 == ROUNDS * workloads;
        if pending.0.len() >= BATCH_FLOWS || last {
            seq += 1;
            let id = BatchId {
                node: "node-0".into(),
                boot_id: "bench-fill".into(),
                seq,
            };
            batches.push((
                id,
                std::mem::take(&mut pending.0),
                std::mem::take(&mut pending.1),
            ));
        }
        if batches.len() >= BATCHES_PER_COMMIT || (last && !batches.is_empty()) {
            flush(&mut batches)?;
        }
    }
    Ok((flows, dns))
}

/// `/proc/<pid>/stat`'s fields after the command name.
fn proc_stat(pid: u32) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

/// The CPU seconds of the PostgreSQL server: the postmaster's own and its reaped children's
/// time, plus that of its live children (backends, WAL writer, checkpointer, …).
fn postgres_cpu(postmaster: u32) -> f64 {
    // SAFETY: plain sysconf.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let Some(main) = proc_stat(postmaster) else {
        return 0.0;
    };
    // utime, stime, cutime, cstime are fields 14–17: indices 11–14 from field 3.
    let mut total: u64 = main.get(11..15).map_or(0, |f| f.iter().sum());
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(f) = proc_stat(pid)
            && f.get(1) == Some(&u64::from(postmaster))
        {
            total += f.get(11..13).map_or(0, |f| f.iter().sum::<u64>());
        }
    }
    total as f64 / ticks
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// This process's CPU seconds (user + system, all threads).
fn self_cpu() -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &raw mut u) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// A whole read of a store, as `recommend` makes it.
struct Read {
    wall: f64,
    cpu: f64,
    db_cpu: Option<f64>,
    flows: usize,
    dns: usize,
}

fn read_all(store: &dyn Store, postmaster: Option<u32>) -> Result<Read, Error> {
    let db_before = postmaster.map(postgres_cpu);
    let (start, cpu) = (Instant::now(), self_cpu());
    let flows = store.flows(None)?;
    let dns = store.dns(None)?;
    Ok(Read {
        wall: start.elapsed().as_secs_f64(),
        cpu: self_cpu() - cpu,
        db_cpu: postmaster.map(|p| postgres_cpu(p) - db_before.unwrap_or(0.0)),
        flows: flows.len(),
        dns: dns.len(),
    })
}

/// One `leash recommend` run.
struct Measured {
    wall: f64,
    cpu: f64,
    peak_rss_mib: f64,
    db_cpu: Option<f64>,
    status: i32,
    load: String,
}

/// Runs `leash recommend --cluster SNAPSHOT --store STORE` with stdout into `out`.
fn recommend(
    snapshot: &Path,
    store: &str,
    out: &Path,
    postmaster: Option<u32>,
) -> Result<Measured, Error> {
    let stdout = std::fs::File::create(out)?;
    let stderr = std::fs::File::create(out.with_extension("stderr"))?;
    let db_before = postmaster.map(postgres_cpu);
    let start = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_leash"))
        .arg("recommend")
        .arg("--cluster")
        .arg(snapshot)
        .args(["--store", store])
        .env_remove("LEASH_STORE")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()?;
    let pid = libc::pid_t::try_from(child.id())?;
    // The child's own peak RSS: `ru_maxrss` would also count the memory of this process,
    // which the child shares until it execs. VmHWM of the child's (new) memory map only
    // grows; it is read until the child exits.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hwm = std::thread::spawn({
        let done = done.clone();
        move || {
            let mut peak_kib = 0u64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(kib) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .as_deref()
                    .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:")))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                {
                    peak_kib = peak_kib.max(kib);
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            peak_kib
        }
    });
    let mut status = 0;
    // SAFETY: wait4 writes one rusage into the zeroed value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: reaping our own child; `status` and `usage` are valid and writable. `child` is
    // not waited for again (dropping a `Child` does not wait).
    if unsafe { libc::wait4(pid, &raw mut status, 0, &raw mut usage) } != pid {
        return Err(format!("wait4: {}", std::io::Error::last_os_error()).into());
    }
    let wall = start.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak_kib = hwm.join().map_err(|_| "the RSS sampler panicked")?;
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Measured {
        wall,
        cpu: secs(usage.ru_utime) + secs(usage.ru_stime),
        peak_rss_mib: peak_kib as f64 / 1024.0,
        db_cpu: postmaster.map(|p| postgres_cpu(p) - db_before.unwrap_or(0.0)),
        status: if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        },
        load: load_average(),
    })
}

fn main() -> Result<(), Error> {
    let scale = scale()?;
    let full = Shape::FULL;
    let scaled = |n: u32| ((f64::from(n) * scale).round() as u32).max(1);
    let shape = Shape {
        nodes: scaled(full.nodes),
        namespaces: scaled(full.namespaces),
        flow_records: 1,
        ..full
    };
    let total: usize = match std::env::var("LEASH_BENCH_FLOWS") {
        Ok(v) => v.replace('_', "").parse()?,
        Err(_) => ((10_000_000.0 * scale) as usize).max(1),
    };
    let runs: usize = std::env::var("LEASH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);

    // The stores live under the target directory, not in /tmp. PostgreSQL's harness makes
    // its own tempdir (in TMPDIR), which `nobody` must reach: target/tmp is world-readable.
    let tmp_root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    // SAFETY: no other thread runs yet.
    unsafe { std::env::set_var("TMPDIR", &tmp_root) };
    let temp = tempfile::Builder::new()
        .prefix("leash-recommend-store-")
        .tempdir_in(&tmp_root)?;
    let dir = match std::env::var_os("LEASH_BENCH_DIR") {
        Some(d) => {
            std::fs::create_dir_all(&d)?;
            PathBuf::from(d)
        }
        None => temp.path().to_path_buf(),
    };
    let external_pg = std::env::var("LEASH_BENCH_PG_URL").ok();
    let reuse = dir.join("filled").exists() && external_pg.is_some();

    let snapshot = dir.join("cluster.json");
    if !reuse {
        let mut w = BufWriter::new(std::fs::File::create(&snapshot)?);
        synthetic::write_snapshot(&shape, &mut w)?;
        w.flush()?;
    }
    let cluster = Cluster::load(&snapshot)?;
    let universe = Universe::new(&cluster);
    drop(cluster);

    let server = match (&external_pg, postgres::bin_dir()) {
        (Some(_), _) => None,
        (None, Some(bin)) => Some(postgres::Postgres::start(&bin)),
        (None, None) => {
            println!(
                "recommend --store: SKIPPED, PostgreSQL is not installed (./scripts/setup.sh)"
            );
            return Ok(());
        }
    };
    let pg_url = match (&external_pg, &server) {
        (Some(u), _) => u.clone(),
        (None, Some(pg)) => pg.create_database("bench"),
        (None, None) => return Err("no PostgreSQL".into()),
    };
    let postmaster = server.as_ref().and_then(postgres::Postgres::pid);
    let sqlite_path = dir.join("leash.db");
    println!(
        "recommend --store: {} workloads, {} pods, {} nodes; {total} stored flow observations (+ DNS, 1 per 20 flows); load average {}",
        universe.workloads.len(),
        universe.pod_ips.len(),
        shape.nodes,
        load_average()
    );

    if !reuse {
        let Ok(Location::Postgres(url)) = pg_url.parse::<Location>() else {
            return Err("not a PostgreSQL URL".into());
        };
        let start = Instant::now();
        let (lite, pg) = std::thread::scope(|s| {
            let lite = s.spawn(|| -> Result<(usize, usize, f64), Error> {
                let store = SqliteStore::open(&sqlite_path)?;
                let (f, d) = fill(&store, &universe, total)?;
                Ok((f, d, start.elapsed().as_secs_f64()))
            });
            let pg = s.spawn(|| -> Result<(usize, usize, f64), Error> {
                let store = PostgresStore::connect(&url)?;
                let (f, d) = fill(&store, &universe, total)?;
                Ok((f, d, start.elapsed().as_secs_f64()))
            });
            (
                lite.join().map_err(|_| "the SQLite fill panicked"),
                pg.join().map_err(|_| "the PostgreSQL fill panicked"),
            )
        });
        let (lf, ld, lt) = lite??;
        let (pf, pd, pt) = pg??;
        println!(
            "  filled (both at once): SQLite {lf} flows + {ld} DNS in {lt:.1} s; PostgreSQL {pf} flows + {pd} DNS in {pt:.1} s"
        );
        if external_pg.is_some() {
            std::fs::write(dir.join("filled"), b"")?;
        }
    }
    // Its memory is not the commands'.
    drop(universe);
    let sqlite_size = std::fs::metadata(&sqlite_path).map_or(0, |m| m.len());
    println!("  SQLite file {:.2} GB", sqlite_size as f64 / 1e9);
    if let Some(pg) = &server {
        println!(
            "  PostgreSQL {} database {}",
            pg.psql("bench", "SHOW server_version"),
            pg.psql("bench", "SELECT pg_size_pretty(pg_database_size('bench'))")
        );
    }

    // The store's part alone: what `recommend` reads, in this process.
    let Ok(Location::Postgres(url)) = pg_url.parse::<Location>() else {
        return Err("not a PostgreSQL URL".into());
    };
    let lite_read = read_all(&SqliteStore::open(&sqlite_path)?, None)?;
    let pg_read = read_all(&PostgresStore::connect(&url)?, postmaster)?;
    for (label, r) in [("SQLite    ", &lite_read), ("PostgreSQL", &pg_read)] {
        println!(
            "  Store::flows + Store::dns alone (in this process): {label} wall {:.2} s, CPU {:.2} s{}; {} flows, {} DNS",
            r.wall,
            r.cpu,
            r.db_cpu
                .map(|c| format!(", database server CPU {c:.2} s"))
                .unwrap_or_default(),
            r.flows,
            r.dns
        );
    }
    println!(
        "  Store::flows + Store::dns alone: PostgreSQL/SQLite wall {:.2}×, CPU {:.2}×; load average {}",
        pg_read.wall / lite_read.wall,
        pg_read.cpu / lite_read.cpu,
        load_average()
    );
    if (lite_read.flows, lite_read.dns) != (pg_read.flows, pg_read.dns) {
        return Err("the stores returned different numbers of observations".into());
    }

    let sqlite_arg = format!("sqlite:{}", sqlite_path.display());
    for run in 0..runs {
        let lite_out = dir.join(format!("sqlite-{run}.yaml"));
        let pg_out = dir.join(format!("postgres-{run}.yaml"));
        let lite = recommend(&snapshot, &sqlite_arg, &lite_out, None)?;
        let pg = recommend(&snapshot, &pg_url, &pg_out, postmaster)?;
        let same = std::fs::read(&lite_out)? == std::fs::read(&pg_out)?;
        let out_size = std::fs::metadata(&lite_out).map_or(0, |m| m.len());
        for (label, m) in [("SQLite    ", &lite), ("PostgreSQL", &pg)] {
            println!(
                "  run {}: {label} wall {:.2} s, CPU {:.2} s, peak RSS {:.0} MiB{}, exit {}, load average {}",
                run + 1,
                m.wall,
                m.cpu,
                m.peak_rss_mib,
                m.db_cpu
                    .map(|c| format!(", database server CPU {c:.2} s"))
                    .unwrap_or_default(),
                m.status,
                m.load
            );
        }
        println!(
            "  run {}: PostgreSQL/SQLite wall {:.2}×, CPU {:.2}×, peak RSS {:.2}×; output {:.1} MB, {}",
            run + 1,
            pg.wall / lite.wall,
            pg.cpu / lite.cpu,
            pg.peak_rss_mib / lite.peak_rss_mib,
            out_size as f64 / 1e6,
            if same { "byte-identical" } else { "DIFFERENT" }
        );
        if !same || lite.status != pg.status {
            return Err(format!(
                "the outputs differ (exit {} and {}): {} and {}",
                lite.status,
                pg.status,
                lite_out.display(),
                pg_out.display()
            )
            .into());
        }
    }
    // The server stops and its files go with `server`; the tempdir with `temp`.
    Ok(())
}
