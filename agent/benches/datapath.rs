//! What the kernel programs cost on a pod's data path (issue 18, "free on the data path").
//!
//! Builds a lab (one pod in its own network namespace and cgroup, an external host at
//! 203.0.113.20 in the external namespace, routed through the node namespace over veths) and
//! runs an `iperf3` server in the external namespace. Then, in alternating rounds with the
//! programs attached to the lab's cgroup and not (the order flips every round, so that machine
//! load and drift hit both sides alike), it measures from inside the pod:
//!
//! - `tcp_rx`: bulk TCP receive into the pod (`iperf3 -R`, the pod's receive throughput);
//! - `udp_tx`: 64-byte UDP datagrams sent from the pod (`iperf3 -u -l 64 -b 0`, sender rate);
//! - `connect`: loopback `connect()` latency in the pod's namespace (the median of each
//!   round's connects; the listener runs outside the cgroup, like a server in another pod).
//!
//! and prints each workload's median over the rounds, attached and not, side by side with
//! their ratio. Then, with the kernel's BPF run-time statistics on (`BPF_ENABLE_STATS`, which
//! `kernel.bpf_stats_enabled` reports; off again when the bench exits), it runs each workload
//! attached for `--stats-rounds` rounds and prints each program's `run_time_ns / run_cnt` per
//! workload (mean and 95% confidence interval over the rounds) and the share of ingress packets
//! that left at the early exit (1 − `ingress_inspected` / the ingress program's runs).
//!
//! `cargo bench -p leash-agent --bench datapath [-- --rounds N --secs S --connects N
//! --stats-rounds N]` (defaults 8, 3, 500, 5; `-- --test`: one short round). Needs root and `iperf3` (`scripts/setup.sh`);
//! otherwise it prints why and exits 0 (or fails with `LEASH_REQUIRE_PRIVILEGED=1`).

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use leash_agent::capture::{Capture, CaptureConfig, PathCounter, enable_run_time_stats};
use leash_lab::{Lab, PodSpec};

/// The external host iperf3 listens on.
const EXTERNAL: &str = "203.0.113.20";
const IPERF_PORT: &str = "5201";
/// Worker modes of this executable (re-run inside the pod's namespace).
const SERVER_ENV: &str = "LEASH_DATAPATH_SERVER";
const CONNECT_ENV: &str = "LEASH_DATAPATH_CONNECT";

#[derive(Clone, Copy, Debug)]
struct Opts {
    rounds: usize,
    secs: u64,
    connects: usize,
    stats_rounds: usize,
}

fn parse_opts() -> Result<Opts, String> {
    let mut o = Opts {
        rounds: 8,
        secs: 3,
        connects: 500,
        stats_rounds: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .ok_or(format!("{name} needs a number"))
        };
        match a.as_str() {
            "--rounds" => o.rounds = value("--rounds")?.clamp(1, 100) as usize,
            "--secs" => o.secs = value("--secs")?.clamp(1, 60),
            "--connects" => o.connects = value("--connects")?.clamp(10, 100_000) as usize,
            "--stats-rounds" => o.stats_rounds = value("--stats-rounds")?.clamp(2, 100) as usize,
            // `cargo bench -- --test`: one short round, to check that the bench runs.
            "--test" => {
                o.rounds = 1;
                o.secs = 1;
                o.connects = 50;
                o.stats_rounds = 2;
            }
            // cargo bench passes `--bench`; ignore it and anything unknown to cargo's harness.
            _ => {}
        }
    }
    Ok(o)
}

/// The workloads, in the order each round runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Workload {
    TcpRx,
    UdpTx,
    Connect,
}

impl Workload {
    const ALL: [Self; 3] = [Self::TcpRx, Self::UdpTx, Self::Connect];

    fn name(self) -> &'static str {
        match self {
            Self::TcpRx => "tcp_rx (bulk TCP receive, Gbit/s)",
            Self::UdpTx => "udp_tx (64 B UDP send, Mbit/s)",
            Self::Connect => "connect (loopback, median µs)",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Self::TcpRx => "tcp_rx",
            Self::UdpTx => "udp_tx",
            Self::Connect => "connect",
        }
    }

    /// Whether a larger figure is better (throughput), or smaller (latency).
    fn higher_is_better(self) -> bool {
        !matches!(self, Self::Connect)
    }

    /// The goal on attached / not attached.
    fn goal(self) -> (&'static str, f64) {
        match self {
            Self::TcpRx | Self::UdpTx => (">=", 0.99),
            Self::Connect => ("<=", 1.03),
        }
    }
}

/// A child process killed and reaped when dropped (the iperf3 server, the loopback listener).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Server mode: accept and close loopback connections until killed (bounded to 30 minutes).
fn serve() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback listener");
    println!("{}", listener.local_addr().expect("listener address"));
    let deadline = Instant::now() + Duration::from_secs(1800);
    listener.set_nonblocking(true).expect("nonblocking");
    while Instant::now() < deadline {
        if listener.accept().is_err() {
            thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Connect mode: `n` connects to `addr`, then prints the median in ns.
fn connect_worker(spec: &str) {
    let mut parts = spec.split(',');
    let (Some(Ok(addr)), Some(Ok(n))) = (
        parts.next().map(str::parse::<SocketAddr>),
        parts.next().map(str::parse::<usize>),
    ) else {
        eprintln!("bad {CONNECT_ENV}={spec}");
        std::process::exit(2);
    };
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let s = TcpStream::connect(addr);
        times.push(t.elapsed());
        drop(s);
    }
    times.sort_unstable();
    println!("{}", times[times.len() / 2].as_nanos());
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Mean and half-width of its 95% confidence interval (Student's t).
fn mean_ci(v: &[f64]) -> (f64, f64) {
    let n = v.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = v.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, f64::NAN);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    // Two-sided 97.5% quantiles of Student's t for 1..=10 degrees of freedom, then ~normal.
    const T: [f64; 10] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    ];
    let t = T.get(n - 2).copied().unwrap_or(2.0);
    (mean, t * (var / n as f64).sqrt())
}

struct Bench<'a> {
    lab: &'a Lab,
    opts: Opts,
    connect_addr: SocketAddr,
}

impl Bench<'_> {
    /// Runs iperf3 in the pod; returns the JSON's `end` section.
    fn iperf(&self, extra: &[&str]) -> Result<serde_json::Value, String> {
        let secs = self.opts.secs.to_string();
        let mut args = vec!["-c", EXTERNAL, "-p", IPERF_PORT, "-t", &secs, "-J"];
        args.extend_from_slice(extra);
        let out = self
            .lab
            .pod("bench/iperf")
            .command("iperf3")
            .args(&args)
            // iperf3's own bound: the run's length plus its connection time-out.
            .args(["--connect-timeout", "3000"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running iperf3: {e}"))?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "iperf3 {args:?} printed no JSON ({e}); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if let Some(err) = json.get("error") {
            return Err(format!("iperf3 {args:?}: {err}"));
        }
        json.get("end")
            .cloned()
            .ok_or_else(|| format!("iperf3 {args:?}: no `end` in its JSON"))
    }

    fn bits_per_second(end: &serde_json::Value, sum: &str) -> Result<f64, String> {
        end.get(sum)
            .and_then(|s| s.get("bits_per_second"))
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| format!("iperf3: no end.{sum}.bits_per_second"))
    }

    /// One workload once; the figure in its unit (Gbit/s, Mbit/s, µs).
    fn run(&self, w: Workload) -> Result<f64, String> {
        match w {
            Workload::TcpRx => {
                Ok(Self::bits_per_second(&self.iperf(&["-R"])?, "sum_received")? / 1e9)
            }
            Workload::UdpTx => Ok(Self::bits_per_second(
                &self.iperf(&["-u", "-l", "64", "-b", "0"])?,
                "sum_sent",
            )? / 1e6),
            Workload::Connect => {
                let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
                let out = self
                    .lab
                    .pod("bench/iperf")
                    .command(exe)
                    .env(
                        CONNECT_ENV,
                        format!("{},{}", self.connect_addr, self.opts.connects),
                    )
                    .stdin(Stdio::null())
                    .output()
                    .map_err(|e| format!("running the connect worker: {e}"))?;
                let text = String::from_utf8_lossy(&out.stdout);
                let ns: f64 = text.trim().parse().map_err(|_| {
                    format!(
                        "connect worker printed {text:?}; stderr: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )
                })?;
                Ok(ns / 1e3)
            }
        }
    }
}

fn attach(lab: &Lab) -> Result<Capture, String> {
    Capture::start(&CaptureConfig::new(lab.cgroup_root()))
        .map_err(|e| format!("Capture::start: {}", leash_records::error::Chain(&e)))
}

/// Reads (and drops) what the programs reported, so the rings never fill.
fn drain(capture: &mut Capture) -> u64 {
    let mut n = 0;
    while let Ok(Some(_)) = capture.try_next_event() {
        n += 1;
        if n > 10_000_000 {
            break;
        }
    }
    n
}

fn run() -> Result<(), String> {
    let opts = parse_opts()?;
    let which = Command::new("iperf3").arg("--version").output();
    if which.is_err() {
        if std::env::var("LEASH_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1") {
            return Err("iperf3 is not installed (run ./scripts/setup.sh)".into());
        }
        println!("datapath: skipped (iperf3 is not installed; run ./scripts/setup.sh)");
        return Ok(());
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("bench", "iperf").label("app", "iperf"))
        .external(EXTERNAL, [])
        .build()
        .map_err(|e| format!("building the lab: {}", leash_records::error::Chain(&e)))?;
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // The iperf3 server in the external namespace (one test at a time, which is how the
    // rounds run), and the loopback listener in the pod's namespace but outside its cgroup.
    let _iperf_server = Reaped(
        Command::new("ip")
            .args(["netns", "exec", lab.external_netns(), "iperf3", "-s"])
            .args(["-B", EXTERNAL, "-p", IPERF_PORT])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting the iperf3 server: {e}"))?,
    );
    let mut listener = Reaped(
        Command::new("ip")
            .args(["netns", "exec", lab.pod("bench/iperf").netns()])
            .arg(&exe)
            .env(SERVER_ENV, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the loopback listener: {e}"))?,
    );
    let mut line = String::new();
    listener
        .0
        .stdout
        .take()
        .map(|out| BufReader::new(out).read_line(&mut line))
        .transpose()
        .map_err(|e| format!("reading the listener's address: {e}"))?;
    let connect_addr: SocketAddr = line
        .trim()
        .parse()
        .map_err(|_| format!("the listener printed {line:?}"))?;
    // The server binds asynchronously; give it up to 5 s.
    let bench = Bench {
        lab: &lab,
        opts,
        connect_addr,
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match bench.run(Workload::TcpRx) {
            Ok(_) => break,
            Err(e) if Instant::now() >= deadline => return Err(format!("warm-up: {e}")),
            Err(_) => thread::sleep(Duration::from_millis(200)),
        }
    }
    bench.run(Workload::UdpTx)?;
    bench.run(Workload::Connect)?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let _guard = rt.enter();

    let load_before = load_average();
    println!(
        "datapath: {} rounds, iperf3 {} s per run, {} connects per round; load average {load_before}",
        opts.rounds, opts.secs, opts.connects
    );
    // (workload, attached) -> one figure per round.
    let mut figures: BTreeMap<(Workload, bool), Vec<f64>> = BTreeMap::new();
    let mut records = 0u64;
    for round in 0..opts.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for attached in order {
            let mut capture = if attached { Some(attach(&lab)?) } else { None };
            for w in Workload::ALL {
                let v = bench.run(w)?;
                figures.entry((w, attached)).or_default().push(v);
                if let Some(c) = capture.as_mut() {
                    records += drain(c);
                }
            }
        }
        let row: Vec<String> = Workload::ALL
            .iter()
            .map(|&w| {
                let f = |a| figures[&(w, a)].last().copied().unwrap_or(f64::NAN);
                format!("{} {:.3}/{:.3}", w.short(), f(false), f(true))
            })
            .collect();
        println!(
            "  round {}: {} (not attached/attached)",
            round + 1,
            row.join(", ")
        );
    }
    let load_after = load_average();
    println!(
        "datapath: medians over {} rounds ({records} ring records read); load average {load_before} -> {load_after}",
        opts.rounds
    );
    println!(
        "  {:<36} {:>14} {:>14} {:>8}  goal",
        "workload", "not attached", "attached", "ratio"
    );
    for w in Workload::ALL {
        let a = median(&figures[&(w, false)]);
        let b = median(&figures[&(w, true)]);
        let ratio = b / a;
        let (op, goal) = w.goal();
        let met = if w.higher_is_better() {
            ratio >= goal
        } else {
            ratio <= goal
        };
        println!(
            "  {:<36} {a:>14.3} {b:>14.3} {ratio:>7.3}x  {op} {goal:.2}x {}",
            w.name(),
            if met { "met" } else { "NOT met" }
        );
    }

    // The programs' own cost, with run-time statistics on for this phase only.
    let stats_fd = enable_run_time_stats()
        .map_err(|e| format!("enabling statistics: {}", leash_records::error::Chain(&e)))?;
    println!(
        "datapath: programs' own cost, {} rounds per workload with BPF run-time statistics on \
         (BPF_ENABLE_STATS: the switch of kernel.bpf_stats_enabled, off again at exit), \
         ns per run: mean ± 95% CI over the rounds",
        opts.stats_rounds,
    );
    let phases = [
        (Workload::TcpRx, true),
        (Workload::UdpTx, true),
        (Workload::Connect, true),
        // What TCP outcome tracking adds to a connect.
        (Workload::Connect, false),
    ];
    for (w, tcp_outcome) in phases {
        let mut capture = Capture::start(&CaptureConfig {
            tcp_outcome,
            ..CaptureConfig::new(lab.cgroup_root())
        })
        .map_err(|e| format!("Capture::start: {}", leash_records::error::Chain(&e)))?;
        // program -> (ns/run per round, runs per round)
        let mut per_prog: BTreeMap<String, (Vec<f64>, u64)> = BTreeMap::new();
        let (mut ingress_runs, mut inspected) = (0u64, 0u64);
        for _ in 0..opts.stats_rounds {
            let before = capture
                .program_stats()
                .map_err(|e| leash_records::error::Chain(&e).to_string())?;
            let counted = capture
                .path_counter(PathCounter::IngressInspected)
                .map_err(|e| leash_records::error::Chain(&e).to_string())?;
            bench.run(w)?;
            let after = capture
                .program_stats()
                .map_err(|e| leash_records::error::Chain(&e).to_string())?;
            let counted_after = capture
                .path_counter(PathCounter::IngressInspected)
                .map_err(|e| leash_records::error::Chain(&e).to_string())?;
            drain(&mut capture);
            for (b, a) in before.iter().zip(&after) {
                let runs = a.run_count.saturating_sub(b.run_count);
                if runs == 0 {
                    continue;
                }
                let ns = a.run_time_ns.saturating_sub(b.run_time_ns) as f64 / runs as f64;
                let e = per_prog.entry(a.name.clone()).or_default();
                e.0.push(ns);
                e.1 += runs;
                if a.name == "leash_ingress" {
                    ingress_runs += runs;
                }
            }
            inspected += counted_after.saturating_sub(counted);
        }
        let share = if ingress_runs == 0 {
            "-".to_owned()
        } else {
            format!(
                "{:.2}%",
                100.0 * (1.0 - inspected as f64 / ingress_runs as f64)
            )
        };
        println!(
            "  {}{}: ingress packets leaving at the early exit {share} ({inspected} of {ingress_runs} inspected)",
            w.short(),
            if tcp_outcome {
                ""
            } else {
                " without TCP outcome tracking"
            }
        );
        for (name, (ns, runs)) in &per_prog {
            let (mean, ci) = mean_ci(ns);
            println!(
                "    {name:<20} {mean:>8.1} ± {ci:>5.1} ns/run  ({runs} runs, {:.0} per round)",
                *runs as f64 / opts.stats_rounds as f64
            );
        }
    }
    drop(stats_fd);
    Ok(())
}

fn main() -> ExitCode {
    if std::env::var_os(SERVER_ENV).is_some() {
        serve();
        return ExitCode::SUCCESS;
    }
    if let Some(spec) = std::env::var_os(CONNECT_ENV) {
        connect_worker(&spec.to_string_lossy());
        return ExitCode::SUCCESS;
    }
    if !leash_lab::require_privileged() {
        println!("datapath: skipped (see above)");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("datapath: {e}");
            ExitCode::FAILURE
        }
    }
}
