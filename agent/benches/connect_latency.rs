//! Added latency of `connect()` with the leash programs attached, on loopback, in one run.
//!
//! Starts a loopback listener in a separate process (outside the observed cgroup, like a
//! server in another pod), moves this process into a temporary cgroup, then alternates rounds
//! of TCP connects with the programs detached and attached, and prints the medians and their
//! ratio (goal ≤ 1.10×). Needs root; otherwise prints why and exits 0.
//!
//! `cargo bench -p leash-agent --bench connect_latency [-- ROUNDS CONNECTS_PER_ROUND]`

use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use leash_agent::capture::{Capture, CaptureConfig};

fn own_cgroup(mount: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(rel.trim_start_matches('/')))
}

fn move_self(cgroup: &Path) -> std::io::Result<()> {
    std::fs::write(cgroup.join("cgroup.procs"), b"0")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn round(addr: SocketAddr, n: usize, out: &mut Vec<Duration>) {
    for _ in 0..n {
        let t = Instant::now();
        let s = TcpStream::connect(addr);
        out.push(t.elapsed());
        drop(s);
    }
}

const SERVER_ENV: &str = "LEASH_BENCH_SERVER";

/// Server mode: accept and close loopback connections until killed (bounded to 10 minutes).
fn serve() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback listener");
    println!("{}", listener.local_addr().expect("listener address"));
    let deadline = Instant::now() + Duration::from_secs(600);
    listener.set_nonblocking(true).expect("nonblocking");
    while Instant::now() < deadline {
        if listener.accept().is_err() {
            thread::sleep(Duration::from_micros(50));
        }
    }
}

fn main() {
    if std::env::var_os(SERVER_ENV).is_some() {
        serve();
        return;
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = args.first().copied().unwrap_or(20);
    let per_round = args.get(1).copied().unwrap_or(500);
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("connect_latency: skipped (needs root to attach eBPF programs)");
        return;
    }
    let Ok(mount) = leash_agent::attribution::find_cgroup2_mount() else {
        println!("connect_latency: skipped (no cgroup2 mount)");
        return;
    };
    let Some(original) = own_cgroup(&mount) else {
        println!("connect_latency: skipped (cannot read /proc/self/cgroup)");
        return;
    };
    // The server process is spawned before this process changes cgroup, so it stays outside.
    let mut server = match Command::new(std::env::current_exe().expect("current_exe"))
        .env(SERVER_ENV, "1")
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            println!("connect_latency: skipped (spawning the server: {e})");
            return;
        }
    };
    let mut line = String::new();
    let read = server
        .stdout
        .take()
        .map(|out| BufReader::new(out).read_line(&mut line));
    let Some(addr) = read
        .and_then(Result::ok)
        .and_then(|_| line.trim().parse::<SocketAddr>().ok())
    else {
        println!("connect_latency: skipped (server did not report its address)");
        let _ = server.kill();
        return;
    };
    let cg = mount.join(format!("leash-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&cg).and_then(|()| move_self(&cg)) {
        println!("connect_latency: skipped (cgroup {}: {e})", cg.display());
        let _ = std::fs::remove_dir(&cg);
        return;
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (mut without, mut with, mut flows_only) = (Vec::new(), Vec::new(), Vec::new());
    round(addr, per_round, &mut without); // warm-up
    without.clear();
    let mut records = 0u64;
    let _guard = rt.enter();
    // Interleaved rounds, so that machine noise hits all three variants alike.
    for _ in 0..rounds {
        round(addr, per_round, &mut without);
        for (tcp_outcome, out) in [(true, &mut with), (false, &mut flows_only)] {
            let config = CaptureConfig {
                tcp_outcome,
                ..CaptureConfig::new(&cg)
            };
            let mut capture = Capture::start(&config).expect("Capture::start");
            round(addr, per_round, out);
            while let Ok(Some(_)) = capture.try_next_event() {
                records += 1;
            }
        }
    }
    let _ = server.kill();
    let _ = server.wait();
    let _ = move_self(&original);
    let _ = std::fs::remove_dir(&cg);

    let (a, b, c) = (median(without), median(with), median(flows_only));
    let ratio = |x: Duration| x.as_secs_f64() / a.as_secs_f64().max(1e-12);
    println!(
        "connect_latency: {rounds} rounds x {per_round} loopback TCP connects (median), \
         {records} ring records\n  \
         without programs:               {a:>10.3?}  1.000x\n  \
         all programs (with TCP outcome): {b:>10.3?}  {:.3}x (goal <= 1.10x)\n  \
         without TCP outcome tracking:   {c:>10.3?}  {:.3}x",
        ratio(b),
        ratio(c)
    );
}
