//! End-to-end `recommend` at the scale: 5,000 nodes, 150,000 pods, 10M flow records.
//!
//! Generates the snapshot (JSON List) and the records (JSON lines) into a temporary directory,
//! then runs the library exactly as `leash recommend -o DIR` does (load, read, classify,
//! synthesize, self-check with the evaluator, render) and prints the wall time of each phase
//! and the process's peak resident memory (VmHWM). The target is < 60 s.
//!
//! `cargo bench -p leash --bench recommend` runs the full size; set
//! `LEASH_BENCH_SCALE=0.1` (a fraction of namespaces and records) for a quick run.

#[path = "../tests/fixtures/recommend/synthetic.rs"]
mod synthetic;

use std::io::{BufWriter, Write as _};
use std::time::Instant;

use synthetic::Shape;

/// Peak resident set size of this process, from /proc (kB), if available.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: do a tiny run then.
    let benching = std::env::args().any(|a| a == "--bench");
    let scale: f64 = match std::env::var("LEASH_BENCH_SCALE") {
        Ok(s) => s.parse()?,
        Err(_) if benching => 1.0,
        Err(_) => 0.002,
    };
    let full = Shape::FULL;
    let scaled = |n: u32| ((f64::from(n) * scale).round() as u32).max(1);
    let shape = Shape {
        nodes: scaled(full.nodes),
        namespaces: scaled(full.namespaces),
        flow_records: ((full.flow_records as f64 * scale) as u64).max(1),
        ..full
    };
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
    let t = Instant::now();
    let mut parsed = 0u64;
    let file = std::io::BufReader::new(std::fs::File::open(&flows_path)?);
    for r in leash_records::read_records(file, &flows_path) {
        r?;
        parsed += 1;
    }
    let t_parse_only = t.elapsed();

    let opts = leash::synth::Options::default();
    let t = Instant::now();
    let cluster = leash::cluster::Cluster::load(&snap_path)?;
    let t_load = t.elapsed();
    let t2 = Instant::now();
    let obs = leash::input::Observations::read_paths(std::slice::from_ref(&flows_path), &cluster)?;
    let t_read = t2.elapsed();
    let t3 = Instant::now();
    let rec = leash::synth::recommend(&cluster, &obs, &opts);
    let t_synth = t3.elapsed();
    let t4 = Instant::now();
    leash::synth::self_check(&cluster, &cluster, &obs, &rec)?;
    let t_check = t4.elapsed();
    let t5 = Instant::now();
    let out = dir.path().join("out");
    leash::render::write_dir(&out, &cluster, &rec)?;
    let t_render = t5.elapsed();
    let total = t.elapsed();

    println!(
        "recommend: {} nodes, {} pods, {} flow records ({:.1} MB), {} distinct flow keys",
        shape.nodes,
        cluster.pods.len(),
        obs.records,
        flows_bytes as f64 / 1e6,
        obs.flows.len()
    );
    println!(
        "  generate (not timed in total) {:>8.2} s",
        gen_time.as_secs_f64()
    );
    println!(
        "  parse only, {parsed} records (not in total) {:>8.2} s",
        t_parse_only.as_secs_f64()
    );
    for (name, d) in [
        ("load snapshot", t_load),
        ("read records", t_read),
        ("synthesize", t_synth),
        ("self-check (evaluator)", t_check),
        ("render -o DIR", t_render),
    ] {
        println!("  {name:<28} {:>8.2} s", d.as_secs_f64());
    }
    println!(
        "  total                        {:>8.2} s   (target < 60 s: {})",
        total.as_secs_f64(),
        if total.as_secs() < 60 {
            "met"
        } else {
            "MISSED"
        }
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
