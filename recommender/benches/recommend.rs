//! End-to-end `recommend` at the scale: 5,000 nodes, 150,000 pods, 10M flow records.
//!
//! Generates the snapshot (JSON List) and the records (JSON lines) into a temporary directory,
//! then runs the library exactly as `leash recommend -o DIR` does (load, read, classify,
//! synthesize, self-check with the evaluator, render) and prints the wall time of each phase
//! and the process's peak resident memory (VmHWM). The target is < 60 s.
//!
//! `cargo bench -p leash --bench recommend` runs the full size; set
//! `LEASH_BENCH_SCALE=0.1` (a fraction of namespaces and records) for a quick run.

use std::io::{BufWriter, Write as _};
use std::time::Instant;

use leash_lab::synthetic::{self, Shape};

/// Peak resident set size of this process, from /proc (kB), if available.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU time of the whole process (user + system, all threads), from /proc/self/stat, so
/// that a busy machine inflates wall time but not this figure. Linux reports it in
/// USER_HZ = 100 ticks per second.
fn cpu_time() -> std::time::Duration {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return std::time::Duration::ZERO;
    };
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    std::time::Duration::from_millis(ticks * 10)
}

/// Wall and CPU time of a phase.
struct Phase {
    wall: std::time::Duration,
    cpu: std::time::Duration,
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Phase) {
    let (w, c) = (Instant::now(), cpu_time());
    let out = f();
    (
        out,
        Phase {
            wall: w.elapsed(),
            cpu: cpu_time().saturating_sub(c),
        },
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shape = Shape::for_bench(1.0)?;
    let dir = tempfile::tempdir()?;
    let snap_path = dir.path().join("cluster.json");
    let flows_path = dir.path().join("flows.jsonl");

    let t = Instant::now();
    {
        let mut w = BufWriter::new(std::fs::File::create(&snap_path)?);
        synthetic::write_snapshot(&shape, &mut w)?;
        w.flush()?;
        let mut w = BufWriter::new(std::fs::File::create(&flows_path)?);
        synthetic::write_flows(&shape, &mut w)?;
        w.flush()?;
    }
    let gen_time = t.elapsed();
    let flows_bytes = std::fs::metadata(&flows_path)?.len();
    let rss_after_gen = peak_rss_kb();

    // The record parser alone (the leash-records contract), to separate it from aggregation.
    let (parsed, parse_only) = timed(|| -> Result<u64, Box<dyn std::error::Error>> {
        let mut n = 0u64;
        let file = std::io::BufReader::new(std::fs::File::open(&flows_path)?);
        for r in leash_records::read_records(file, &flows_path) {
            r?;
            n += 1;
        }
        Ok(n)
    });
    let parsed = parsed?;

    let opts = leash::recommend::Options::default();
    let (cluster, p_load) = timed(|| leash::cluster::Cluster::load(&snap_path));
    let cluster = cluster?;
    let (obs, p_read) = timed(|| {
        leash::observations::Observations::read_paths(std::slice::from_ref(&flows_path), &cluster)
    });
    let obs = obs?;
    let (rec, p_synth) = timed(|| leash::recommend::recommend(&cluster, &obs, &opts));
    let (check, p_check) = timed(|| leash::recommend::self_check(&cluster, &cluster, &obs, &rec));
    check?;
    let out = dir.path().join("out");
    let (written, p_render) =
        timed(|| leash::render::write_dir(&out, &cluster, &rec, &opts.namespaces));
    written?;
    let phases = [
        ("load snapshot", &p_load),
        ("read records", &p_read),
        ("synthesize", &p_synth),
        ("self-check (evaluator)", &p_check),
        ("render -o DIR", &p_render),
    ];
    let wall: std::time::Duration = phases.iter().map(|(_, p)| p.wall).sum();
    let cpu: std::time::Duration = phases.iter().map(|(_, p)| p.cpu).sum();

    println!(
        "recommend: {} nodes, {} pods, {} flow records ({:.1} MB), {} distinct flow keys",
        shape.nodes,
        cluster.pods.len(),
        obs.records,
        flows_bytes as f64 / 1e6,
        obs.flows.len()
    );
    println!("  {:<32} {:>9} {:>9}", "phase", "wall s", "cpu s");
    println!(
        "  {:<32} {:>9.2} {:>9}",
        "generate (not in total)",
        gen_time.as_secs_f64(),
        ""
    );
    println!(
        "  {:<32} {:>9.2} {:>9.2}",
        format!("parse {parsed} (not in total)"),
        parse_only.wall.as_secs_f64(),
        parse_only.cpu.as_secs_f64()
    );
    for (name, p) in phases {
        println!(
            "  {name:<32} {:>9.2} {:>9.2}",
            p.wall.as_secs_f64(),
            p.cpu.as_secs_f64()
        );
    }
    println!(
        "  {:<32} {:>9.2} {:>9.2}   (target < 60 s: {})",
        "total",
        wall.as_secs_f64(),
        cpu.as_secs_f64(),
        if wall.as_secs() < 60 {
            "met"
        } else {
            "MISSED on this run"
        }
    );
    println!(
        "  machine: {} cores, load average {}",
        std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    );
    println!(
        "  policies {}, namespaces {}, peak RSS {} MB (after generation {} MB)",
        rec.policies.len(),
        rec.default_deny_namespaces.len(),
        peak_rss_kb().map_or_else(|| "?".to_owned(), |k| (k / 1024).to_string()),
        rss_after_gen.map_or_else(|| "?".to_owned(), |k| (k / 1024).to_string()),
    );
    Ok(())
}
