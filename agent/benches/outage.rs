//! The real `leash-agent` streaming to a recommender that goes away and comes back.
//!
//! Builds a lab (one pod, one external host), starts an in-process recording `Ingest` server
//! (tonic, plaintext on loopback) and the release `leash-agent` with `--recommender http://…
//! --insecure` (no `--output`), then from the pod sends steady traffic: every second one
//! datagram to each of `--keys` destinations. After `--warmup` the server is stopped for
//! `--outage` (default 300 s, the five minutes; `--quick` makes it 30 s), then started
//! again; traffic goes on for `--after`, stops, and the agent is stopped with SIGTERM (it waits
//! up to 10 s for the last acks).
//!
//! Measured and printed against the goals:
//! - RSS growth during the outage (`VmRSS` sampled every second): end of the outage vs its
//!   start, goal ≤ +10 %;
//! - counts after reconnection: the sum of `count` the server stored (each batch id once)
//!   = datagrams the pod sent − flow events the agent counted as dropped
//!   (`leash_agent_transport_dropped_events_total`, and the kernel-side drops), exactly.
//!
//! Needs root (lab namespaces and cgroups, BPF). Otherwise it prints why and exits 0, unless
//! `LEASH_REQUIRE_PRIVILEGED=1`. Exits 1 when a goal is missed.
//!
//! `cargo build --release -p leash-agent && cargo bench -p leash-agent --bench outage
//! [-- --quick | --outage SECS] [--keys N --warmup SECS --after SECS]`.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Command, ExitCode},
    time::{Duration, Instant},
};

use leash_agent::transport::testing::RecordingServer;
use leash_lab::{Lab, PodSpec, Port};
use support::Agent;

mod support;

const HOST: &str = "203.0.113.20";
const BASE_PORT: u16 = 20_000;
const GOAL_RSS_GROWTH: f64 = 0.10;
const ATTACH_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(40);

struct Opts {
    keys: usize,
    warmup: Duration,
    outage: Duration,
    after: Duration,
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        keys: 2_000,
        warmup: Duration::from_secs(10),
        outage: Duration::from_secs(300),
        after: Duration::from_secs(10),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |flag: &str| -> Result<u64, String> {
            let v = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            v.parse().map_err(|_| format!("bad {flag} {v:?}"))
        };
        match a.as_str() {
            "--keys" => o.keys = num("--keys")? as usize,
            "--warmup" => o.warmup = Duration::from_secs(num("--warmup")?),
            "--outage" => o.outage = Duration::from_secs(num("--outage")?),
            "--after" => o.after = Duration::from_secs(num("--after")?),
            "--quick" => o.outage = Duration::from_secs(30),
            "--bench" => {}
            other if other.starts_with("--") => return Err(format!("unknown option {other}")),
            _ => {}
        }
    }
    if !(1..=20_000).contains(&o.keys) {
        return Err("--keys must be 1..=20000".into());
    }
    if o.outage > Duration::from_secs(1800) || o.warmup > Duration::from_secs(300) {
        return Err("--outage at most 1800 s, --warmup at most 300 s".into());
    }
    Ok(o)
}

/// Sum of the series whose name (before labels) is `name`.
fn metric(m: &BTreeMap<String, f64>, name: &str) -> u64 {
    m.iter()
        .filter(|(k, _)| *k == name || k.starts_with(&format!("{name}{{")))
        .map(|(_, v)| *v as u64)
        .sum()
}

fn start_agent(bin: &Path, lab: &Lab, url: &str, metrics: SocketAddr) -> Result<Agent, String> {
    let mut command = Command::new(bin);
    command
        .arg("--cgroup")
        .arg(lab.cgroup_root())
        .args(["--recommender", url, "--insecure", "--flush-interval", "1s"])
        .args(["--node-name", lab.node_name()])
        .args(["--metrics-addr", &metrics.to_string()]);
    Agent::spawn(command)
}

/// One datagram to each key; returns the datagrams sent.
fn send_round(lab: &Lab, keys: usize) -> Result<u64, String> {
    let count = keys.to_string();
    let out = lab
        .pod("bench/load")
        .run(&[
            "udp-sendto",
            HOST,
            &BASE_PORT.to_string(),
            "--count",
            &count,
            "--port-span",
            &count,
        ])
        .map_err(|e| format!("lab-client: {e}"))?;
    if !out.success() {
        return Err(format!("lab-client udp-sendto failed: {}", out.json));
    }
    Ok(out.count("sent"))
}

/// Sends a round every second for `length`, sampling the agent's RSS after each; returns the
/// datagrams sent and the samples (KiB).
fn traffic(lab: &Lab, keys: usize, pid: i32, length: Duration) -> Result<(u64, Vec<u64>), String> {
    let start = Instant::now();
    let (mut sent, mut rss) = (0, Vec::new());
    let mut next = start;
    while start.elapsed() < length {
        sent += send_round(lab, keys)?;
        rss.push(support::status_kib(pid, "VmRSS")?);
        next += Duration::from_secs(1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok((sent, rss))
}

fn run(o: &Opts) -> Result<bool, String> {
    let bin = support::agent_binary("outage", false)?;
    let lab = Lab::builder()
        .pod(PodSpec::new("bench", "load").label("app", "load"))
        .external(HOST, [Port::udp(7)])
        .build()
        .map_err(|e| format!("building the lab: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    let mut server = rt.block_on(RecordingServer::start_new(None));
    let metrics_addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("picking a metrics port: {e}"))?;
    let agent = start_agent(&bin, &lab, &server.url(), metrics_addr)?;
    agent.wait_for("capturing", ATTACH_TIMEOUT)?;

    let (mut sent, _) = traffic(&lab, o.keys, agent.pid, o.warmup)?;
    let acked_before = server.seen().acks;
    rt.block_on(server.stop());
    eprintln!(
        "outage: recommender down for {:?} ({} keys, one datagram per key per second; {acked_before} batches acked before)",
        o.outage, o.keys
    );
    let rss_start = support::status_kib(agent.pid, "VmRSS")?;
    let (n, during) = traffic(&lab, o.keys, agent.pid, o.outage)?;
    sent += n;
    let m_outage = support::scrape(metrics_addr)?;
    rt.block_on(server.start());
    eprintln!("outage: recommender back");
    let (n, _) = traffic(&lab, o.keys, agent.pid, o.after)?;
    sent += n;
    // Let the last flush reach the server, then stop (the agent waits for its acks).
    std::thread::sleep(Duration::from_secs(3));
    let m = support::scrape(metrics_addr)?;
    let (status, _) = agent.stop(STOP_TIMEOUT)?;
    let shutdown_line = agent
        .log
        .lock()
        .map(|l| l.iter().find(|l| l.contains("not acknowledged")).cloned())
        .unwrap_or_default();
    let seen = server.seen();
    rt.block_on(server.stop());

    let rss_end = *during.last().unwrap_or(&rss_start);
    let rss_max = during.iter().copied().max().unwrap_or(rss_start);
    let growth = rss_end as f64 / rss_start as f64 - 1.0;
    let growth_max = rss_max as f64 / rss_start as f64 - 1.0;
    let transport_dropped = metric(&m, "leash_agent_transport_dropped_events_total");
    let kernel_drops = metric(&m, "leash_agent_kernel_drops_total");
    let map_failed = metric(
        &m,
        "leash_agent_kernel_drops_total{cause=\"flow_map_update_failed\"}",
    );
    println!();
    println!(
        "outage: {} keys, warm-up {:?}, outage {:?}, after {:?}; {sent} datagrams sent",
        o.keys, o.warmup, o.outage, o.after
    );
    println!(
        "  RSS: start of outage {:.1} MiB, end {:.1} MiB, max {:.1} MiB ({} samples)",
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        rss_max as f64 / 1024.0,
        during.len()
    );
    println!(
        "  during the outage: buffered keys {}, connect errors {}, dropped events {} (buffer_full)",
        metric(&m_outage, "leash_agent_transport_buffered_keys"),
        metric(&m_outage, "leash_agent_transport_connect_errors_total"),
        metric(&m_outage, "leash_agent_transport_dropped_events_total")
    );
    println!(
        "  batches: sent {}, acked {}, resent {}; server stored {} ids ({} arrivals), {} flow records, {} events; agent exit status {status}; kernel drops {kernel_drops}; shutdown: {}",
        metric(&m, "leash_agent_transport_batches_sent_total"),
        metric(&m, "leash_agent_transport_batches_acked_total"),
        metric(&m, "leash_agent_transport_batches_resent_total"),
        seen.arrivals.len(),
        seen.order.len(),
        seen.flows,
        seen.events,
        shutdown_line.as_deref().unwrap_or("all acknowledged")
    );
    let expected = sent.saturating_sub(transport_dropped + map_failed);
    let rows = [
        (
            "RSS growth over the outage (end vs start)",
            format!(
                "{:+.1} % (max {:+.1} %)",
                growth * 100.0,
                growth_max * 100.0
            ),
            format!("<= +{:.0} %", GOAL_RSS_GROWTH * 100.0),
            growth <= GOAL_RSS_GROWTH,
        ),
        (
            "events stored = sent - counted drops",
            format!(
                "{} = {sent} - {}",
                seen.events,
                transport_dropped + map_failed
            ),
            "equal".to_owned(),
            seen.events == expected && shutdown_line.is_none(),
        ),
        (
            "every batch id stored once",
            format!("{} ids, {} invalid", seen.arrivals.len(), seen.invalid),
            "no gaps".to_owned(),
            seen.invalid == 0
                && seen
                    .arrivals
                    .keys()
                    .map(|(_, s)| *s)
                    .eq(1..=seen.arrivals.len() as u64),
        ),
    ];
    println!();
    println!(
        "  {:<44} {:>32} {:>12}  result",
        "goal", "measured", "target"
    );
    for (goal, measured, target, pass) in &rows {
        println!(
            "  {goal:<44} {measured:>32} {target:>12}  {}",
            if *pass { "PASS" } else { "FAIL" }
        );
    }
    Ok(rows.iter().all(|r| r.3))
}

fn main() -> ExitCode {
    let opts = match parse_opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("outage: {e}");
            return ExitCode::from(2);
        }
    };
    if !leash_lab::require_privileged() {
        println!("outage: skipped (see above)");
        return ExitCode::SUCCESS;
    }
    match run(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("outage: {e}");
            ExitCode::FAILURE
        }
    }
}
