//! Acknowledgement latency of `leash serve` under hostile load: the real binary, a steady
//! agent pushing batches over mTLS gRPC and timing each acknowledgement, while
//!
//! - (a) 64 HTTP clients read the `/v1` API as fast as they can (no authentication needed),
//! - (b) 60 gRPC streams, each on its own mTLS connection with a valid client certificate,
//!   announce a 16 MB message, send 15 MB of it and stall.
//!
//! `LEASH_BENCH_SERVE_ARGS` adds flags to `leash serve` (e.g. `--max-connections-per-address
//! 100`, so that every stalled stream gets a connection from the bench's one address).
//! Each scenario runs `LEASH_BENCH_SECS` (default 20) seconds; the agent alone runs first as
//! the baseline. Printed per scenario: acknowledgement latency p50/p99/max, what the load
//! achieved, and the server's RSS (from `/proc/PID/status`) before, at its peak and after.
//!
//! The store is prefilled (`LEASH_BENCH_PREFILL` flow observations, default 50,000, over 200
//! DaemonSets in 10 namespaces) so that reads have something to read.
//!
//! `cargo bench -p leash --bench serve_load`

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use http_body::Frame;
use leash::store::{BatchId, FlowObservation, SqliteStore, Store, WorkloadRef};
use leash_records::tls::{TlsConnector, TlsFiles};
use leash_records::wire::{self, v1};
use leash_records::{FlowRecord, Outcome, PodRef, Protocol};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::Bytes;
use tower::ServiceExt as _;

type Error = Box<dyn std::error::Error + Send + Sync>;

const LEASH: &str = env!("CARGO_BIN_EXE_leash");
const NAMESPACES: usize = 10;
const WORKLOADS: usize = 200;
const PODS: usize = WORKLOADS * 2;
/// Records per agent batch, and the agent's push interval.
const BATCH_RECORDS: usize = 500;
const PUSH_EVERY: Duration = Duration::from_millis(50);
const HTTP_CLIENTS: usize = 64;
const STALLED_STREAMS: usize = 60;
/// The stalled streams announce this many bytes and send `STALL_SENT` of them.
const STALL_ANNOUNCED: u32 = 16_000_000;
const STALL_SENT: usize = 15_000_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn dst(i: usize) -> IpAddr {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    // 203.0.113.0/24 and further /24s above it: the address value does not matter here.
    IpAddr::V4(Ipv4Addr::from(
        0xCB00_7100u32 + (i % 256) + ((i / 256) << 8),
    ))
}

fn namespace(w: usize) -> String {
    format!("ns{}", w % NAMESPACES)
}

fn pod(p: usize) -> PodRef {
    let w = p / 2;
    PodRef {
        uid: format!("6f1c2a9e-0000-4000-8000-{p:012}"),
        namespace: namespace(w),
        name: format!("app-{w}-{p}"),
    }
}

/// The cluster snapshot: `NAMESPACES` namespaces, `WORKLOADS` DaemonSets of two pods.
fn snapshot() -> serde_json::Value {
    let mut items: Vec<serde_json::Value> = (0..NAMESPACES)
        .map(|n| {
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": format!("ns{n}"),
                    "labels": {"kubernetes.io/metadata.name": format!("ns{n}")}}})
        })
        .collect();
    for w in 0..WORKLOADS {
        items.push(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": format!("app-{w}"), "namespace": namespace(w), "uid": format!("ds-{w}")},
            "spec": {"selector": {"matchLabels": {"app": format!("app-{w}")}},
                "template": {"metadata": {"labels": {"app": format!("app-{w}")}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}}}
        }));
    }
    for p in 0..PODS {
        let w = p / 2;
        let PodRef {
            uid,
            namespace,
            name,
        } = pod(p);
        items.push(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": uid,
                "labels": {"app": format!("app-{w}")},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                    "name": format!("app-{w}"), "uid": format!("ds-{w}"), "controller": true}]},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": format!("198.51.100.{}", p % 250)}
        }));
    }
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// Commits `total` flow observations spread over the workloads, before the server starts.
fn prefill(db: &Path, total: usize) -> Result<(), Error> {
    let store = SqliteStore::open(db)?;
    let now = Utc::now();
    let per_workload = total.div_ceil(WORKLOADS).max(1);
    for w in 0..WORKLOADS {
        let workload = WorkloadRef {
            namespace: namespace(w),
            kind: "DaemonSet".into(),
            name: format!("app-{w}"),
        };
        let flows: Vec<FlowObservation> = (0..per_workload)
            .map(|d| FlowObservation {
                workload: workload.clone(),
                protocol: Protocol::Tcp,
                dst: dst(d),
                port: 443,
                count: 3,
                first_seen: now,
                last_seen: now,
                names: BTreeSet::from([format!("svc-{}.example.test", d % 50)]),
                pods: Default::default(),
                established: 3,
                failed: 0,
            })
            .collect();
        let id = BatchId {
            node: "prefill".into(),
            boot_id: "prefill".into(),
            seq: w as u64 + 1,
        };
        store.commit(&id, &flows, &[])?;
    }
    Ok(())
}

fn free_port() -> Result<SocketAddr, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The server's resident set size in MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// A minimal HTTP/1.1 GET on a new connection: the status, or 0 when the request failed.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, usize) {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    match tokio::time::timeout(Duration::from_secs(30), attempt).await {
        Ok(Ok(raw)) => {
            let status = std::str::from_utf8(&raw[..raw.len().min(16)])
                .ok()
                .and_then(|h| h.split_whitespace().nth(1))
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            (status, raw.len())
        }
        _ => (0, 0),
    }
}

fn client_files(pki: &Path) -> TlsFiles {
    TlsFiles {
        cert: pki.join("bench-agent.pem"),
        key: pki.join("bench-agent-key.pem"),
        ca: pki.join("ca.pem"),
    }
}

async fn channel(pki: &Path, grpc: SocketAddr) -> Result<tonic::transport::Channel, Error> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("https://{grpc}"))?
            .connect_with_connector(TlsConnector::new(client_files(pki)))
            .await?,
    )
}

/// The agent's batch `seq`: records of pods in turn, to destinations they already have.
fn agent_batch(boot: &str, seq: u64) -> Result<v1::Batch, Error> {
    let now: DateTime<Utc> = Utc::now();
    let start = usize::try_from(seq).unwrap_or(0) * BATCH_RECORDS;
    let mut records: Vec<FlowRecord> = (0..BATCH_RECORDS)
        .map(|i| {
            let k = start + i;
            let p = k % PODS;
            let pod = pod(p);
            FlowRecord {
                node: "node-1".into(),
                cgroup: format!("/kubepods.slice/pod{}.slice/cri-{p:064x}.scope", pod.uid),
                pod: Some(pod),
                protocol: Protocol::Tcp,
                dst: dst((k / PODS) % 250),
                dst_port: 443,
                count: 1,
                first_seen: now,
                last_seen: now,
                names: vec![format!("svc-{}.example.test", (k / PODS) % 50)],
                outcome: Some(Outcome {
                    established: 1,
                    failed: 0,
                }),
            }
        })
        .collect();
    records.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
    Ok(wire::batch_to_wire(
        v1::BatchId {
            node: "node-1".into(),
            boot_id: boot.into(),
            seq,
        },
        &records,
        &[],
    )?)
}

/// What the steady agent saw.
struct AgentRun {
    latencies: Vec<Duration>,
    sent: usize,
}

/// Pushes a batch every `PUSH_EVERY` until `until` over one stream; each acknowledgement's
/// latency is from handing the batch to the stream to reading its ack. Waits at most 30 s
/// for the last acks.
async fn steady_agent(
    pki: PathBuf,
    grpc: SocketAddr,
    boot: String,
    until: Instant,
) -> Result<AgentRun, Error> {
    let mut client = v1::ingest_client::IngestClient::new(channel(&pki, grpc).await?);
    let (tx, rx) = mpsc::channel(4096);
    let pending: Arc<Mutex<VecDeque<Instant>>> = Arc::default();
    let mut acks = client.push(ReceiverStream::new(rx)).await?.into_inner();
    let sender = {
        let pending = Arc::clone(&pending);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(PUSH_EVERY);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0u64;
            while Instant::now() < until {
                ticker.tick().await;
                seq += 1;
                let Ok(batch) = agent_batch(&boot, seq) else {
                    break;
                };
                if let Ok(mut p) = pending.lock() {
                    p.push_back(Instant::now());
                }
                if tx.send(batch).await.is_err() {
                    break;
                }
            }
            // Keep the request stream open until the acks are read.
            (tx, seq)
        })
    };
    let mut latencies = Vec::new();
    let deadline = until + Duration::from_secs(30);
    loop {
        let outstanding = pending.lock().map(|p| p.len()).unwrap_or(0);
        if Instant::now() >= until && sender.is_finished() && outstanding == 0 {
            break;
        }
        let Ok(next) = tokio::time::timeout_at(deadline.into(), acks.message()).await else {
            break;
        };
        let Some(_ack) = next? else {
            break;
        };
        let sent_at = pending.lock().ok().and_then(|mut p| p.pop_front());
        if let Some(t) = sent_at {
            latencies.push(t.elapsed());
        }
    }
    sender.abort();
    let sent = latencies.len() + pending.lock().map(|p| p.len()).unwrap_or(0);
    Ok(AgentRun { latencies, sent })
}

/// HTTP clients reading the `/v1` API in a loop until `until`: statuses counted.
#[derive(Default)]
struct HttpStats {
    ok: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
}

fn read_path(n: usize) -> String {
    let w = n % WORKLOADS;
    let ns = namespace(w);
    match n % 4 {
        0 => "/v1/workloads".to_owned(),
        1 => format!("/v1/namespaces/{ns}/recommendations"),
        2 => format!("/v1/namespaces/{ns}/audit"),
        _ => format!("/v1/namespaces/{ns}/workloads/DaemonSet/app-{w}/destinations"),
    }
}

async fn http_reader(http: SocketAddr, first: usize, until: Instant, stats: Arc<HttpStats>) {
    let mut n = first;
    while Instant::now() < until {
        let (status, bytes) = http_get(http, &read_path(n)).await;
        n += HTTP_CLIENTS;
        stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        let counter = match status {
            200 => &stats.ok,
            503 => &stats.busy,
            0 => &stats.failed,
            _ => &stats.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A gRPC request body that announces a `STALL_ANNOUNCED`-byte message, sends `STALL_SENT`
/// bytes of it and then never sends more, nor ends.
struct StalledBody {
    header_sent: bool,
    sent: usize,
    progress: Arc<AtomicU64>,
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl http_body::Body for StalledBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if !self.header_sent {
            self.header_sent = true;
            let mut header = vec![0u8];
            header.extend_from_slice(&STALL_ANNOUNCED.to_be_bytes());
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(header)))));
        }
        if self.sent < STALL_SENT {
            let n = ZEROS.len().min(STALL_SENT - self.sent);
            self.sent += n;
            self.progress.fetch_add(n as u64, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&ZEROS[..n])))));
        }
        // Stalled: never woken, dropped when the scenario ends.
        Poll::Pending
    }
}

/// Opens one stalled stream on its own connection; runs until aborted.
async fn stalled_stream(pki: PathBuf, grpc: SocketAddr, progress: Arc<AtomicU64>) {
    let Ok(channel) = channel(&pki, grpc).await else {
        return;
    };
    let body = tonic::body::Body::new(StalledBody {
        header_sent: false,
        sent: 0,
        progress,
    });
    let Ok(request) = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!("https://{grpc}/leash.v1.Ingest/Push"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
    else {
        return;
    };
    // The answer (if the server gives up on the stream) is awaited and ignored; the body
    // keeps the stream open as long as the server lets it.
    if let Ok(response) = channel.oneshot(request).await {
        let _keep = response;
        std::future::pending::<()>().await;
    }
}

/// The server's RSS, sampled every 200 ms until `until`: the peak.
async fn peak_rss(pid: u32, until: Instant) -> f64 {
    let mut peak = rss_mib(pid);
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(rss_mib(pid));
    }
    peak
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

fn report(name: &str, run: &AgentRun, rss: (f64, f64, f64), load: &str) {
    let mut l = run.latencies.clone();
    l.sort();
    println!(
        "  {name:<22} acks {:>4}/{:<4} p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  RSS {:.0} → peak {:.0} → {:.0} MiB  {load}",
        l.len(),
        run.sent,
        percentile(&l, 0.50),
        percentile(&l, 0.99),
        l.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        rss.0,
        rss.1,
        rss.2,
    );
}

/// A running `leash serve`, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<(), Error> {
    let secs = env_usize("LEASH_BENCH_SECS", 20).max(1) as u64;
    let scenario = Duration::from_secs(secs);
    let prefill_flows = env_usize("LEASH_BENCH_PREFILL", 50_000);
    let extra_args = std::env::var("LEASH_BENCH_SERVE_ARGS").unwrap_or_default();

    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    leash::certs::generate(&pki, &["127.0.0.1".to_owned()], &["bench-agent".to_owned()])?;
    let cluster = dir.path().join("cluster.json");
    std::fs::write(&cluster, serde_json::to_vec(&snapshot())?)?;
    let db = dir.path().join("leash.db");
    prefill(&db, prefill_flows)?;

    let (grpc, http, ui) = (free_port()?, free_port()?, free_port()?);
    let server = Server(
        Command::new(LEASH)
            .arg("serve")
            .args(["--listen", &grpc.to_string(), "--http", &http.to_string()])
            .args(["--ui-listen", &ui.to_string()])
            .arg("--store")
            .arg(&db)
            .arg("--cluster")
            .arg(&cluster)
            .arg("--tls-cert")
            .arg(pki.join("server.pem"))
            .arg("--tls-key")
            .arg(pki.join("server-key.pem"))
            .arg("--tls-client-ca")
            .arg(pki.join("ca.pem"))
            // e.g. `--max-connections-per-address 100`, to let all stalled streams in.
            .args(extra_args.split_whitespace())
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let pid = server.0.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ready_by = Instant::now() + Duration::from_secs(60);
        while http_get(http, "/readyz").await.0 != 200 {
            if Instant::now() > ready_by {
                return Err::<(), Error>("leash serve not ready in 60 s".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "serve_load: leash serve (release binary), store prefilled with {prefill_flows} flow observations \
             over {WORKLOADS} workloads in {NAMESPACES} namespaces; steady agent: {BATCH_RECORDS} records \
             every {} ms over mTLS gRPC; {secs} s per scenario",
            PUSH_EVERY.as_millis()
        );

        // Baseline: the agent alone.
        let before = rss_mib(pid);
        let until = Instant::now() + scenario;
        let (run, peak) = tokio::join!(
            steady_agent(pki.clone(), grpc, "alone".into(), until),
            peak_rss(pid, until)
        );
        report("agent alone", &run?, (before, peak, rss_mib(pid)), "");

        // (a) 64 HTTP clients on the read API.
        let before = rss_mib(pid);
        let until = Instant::now() + scenario;
        let stats = Arc::new(HttpStats::default());
        let readers: Vec<_> = (0..HTTP_CLIENTS)
            .map(|i| tokio::spawn(http_reader(ui, i, until, Arc::clone(&stats))))
            .collect();
        let (run, peak) = tokio::join!(
            steady_agent(pki.clone(), grpc, "readers".into(), until),
            peak_rss(pid, until)
        );
        for r in readers {
            let _ = tokio::time::timeout(Duration::from_secs(35), r).await;
        }
        let load = |s: &HttpStats| {
            format!(
                "HTTP: {} ok, {} busy (503), {} other, {} failed, {:.0} MiB read",
                s.ok.load(Ordering::Relaxed),
                s.busy.load(Ordering::Relaxed),
                s.other.load(Ordering::Relaxed),
                s.failed.load(Ordering::Relaxed),
                s.bytes.load(Ordering::Relaxed) as f64 / 1_048_576.0
            )
        };
        report(
            "(a) 64 HTTP readers",
            &run?,
            (before, peak, rss_mib(pid)),
            &load(&stats),
        );

        // (b) 60 stalled streams.
        let before = rss_mib(pid);
        let until = Instant::now() + scenario;
        let progress = Arc::new(AtomicU64::new(0));
        let stalled: Vec<_> = (0..STALLED_STREAMS)
            .map(|_| tokio::spawn(stalled_stream(pki.clone(), grpc, Arc::clone(&progress))))
            .collect();
        let (run, peak) = tokio::join!(
            steady_agent(pki.clone(), grpc, "stalled".into(), until),
            peak_rss(pid, until)
        );
        let during = rss_mib(pid);
        for s in &stalled {
            s.abort();
        }
        // Give the server a moment to notice the closed connections.
        tokio::time::sleep(Duration::from_secs(3)).await;
        report(
            "(b) 60 stalled streams",
            &run?,
            (before, peak, rss_mib(pid)),
            &format!(
                "{:.0} MiB of stalled messages sent; RSS {during:.0} MiB while stalled, {:.0} MiB 3 s after they closed",
                progress.load(Ordering::Relaxed) as f64 / 1_048_576.0,
                rss_mib(pid)
            ),
        );
        Ok(())
    })?;
    drop(server);
    Ok(())
}
