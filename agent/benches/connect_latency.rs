//! Added latency of `connect()` with the leash programs attached, on loopback, in one run.
//!
//! Moves this process into a temporary cgroup, then alternates rounds of TCP connects to a
//! loopback listener with the programs detached and attached, and prints the medians and
//! their ratio (goal ≤ 1.10×). Needs root; otherwise prints why and exits 0.
//!
//! `cargo bench -p leash-agent --bench connect_latency [-- ROUNDS CONNECTS_PER_ROUND]`

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use leash_agent::capture::{Capture, CaptureConfig, cgroup2_mount};

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

fn main() {
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
    let Some(mount) = cgroup2_mount() else {
        println!("connect_latency: skipped (no cgroup2 mount)");
        return;
    };
    let Some(original) = own_cgroup(&mount) else {
        println!("connect_latency: skipped (cannot read /proc/self/cgroup)");
        return;
    };
    let cg = mount.join(format!("leash-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir(&cg).and_then(|()| move_self(&cg)) {
        println!("connect_latency: skipped (cgroup {}: {e})", cg.display());
        let _ = std::fs::remove_dir(&cg);
        return;
    }

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback listener");
    let addr = listener.local_addr().expect("listener address");
    listener.set_nonblocking(true).expect("nonblocking");
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if listener.accept().is_err() {
                    thread::sleep(Duration::from_micros(50));
                }
            }
        })
    };

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (mut without, mut with) = (Vec::new(), Vec::new());
    round(addr, per_round, &mut without); // warm-up
    without.clear();
    let mut records = 0u64;
    for _ in 0..rounds {
        round(addr, per_round, &mut without);
        let _guard = rt.enter();
        let mut capture = Capture::start(&CaptureConfig::new(&cg)).expect("Capture::start");
        round(addr, per_round, &mut with);
        while let Ok(Some(_)) = capture.try_next_event() {
            records += 1;
        }
        drop(capture);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = acceptor.join();
    let _ = move_self(&original);
    let _ = std::fs::remove_dir(&cg);

    let (a, b) = (median(without), median(with));
    println!(
        "connect_latency: {rounds} rounds x {per_round} loopback TCP connects; \
         median without programs {a:?}, with programs {b:?}, ratio {:.3}x (goal <= 1.10x); \
         {records} ring records",
        b.as_secs_f64() / a.as_secs_f64().max(1e-12)
    );
}
