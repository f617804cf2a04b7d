//! `leash diff`'s exact reachability change at the scale: the 5,000-node, 150,000-pod
//! synthetic cluster of the `recommend` bench, between two proposals for it.
//!
//! Generates the snapshot and records, runs `recommend` (as `leash recommend` does) for the
//! first proposal, and derives the second by changing a tenth of its workload policies (one
//! in twenty loses its last egress rule, one in twenty gains a rule to a new address block
//! and port). Then times `diff::reach::reachability` both ways and prints the number of
//! changes and the process's peak resident memory (VmHWM); finally runs the release `leash
//! diff` itself on the two proposals written as policy directories, with the records, and
//! reports its wall time and peak RSS. The target is < 30 s.
//!
//! `cargo bench -p leash --bench diff` runs the full size; set `LEASH_BENCH_SCALE=0.1` (a
//! fraction of namespaces and records) for a quick run.

use std::io::{BufWriter, Write as _};
use std::time::Instant;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use leash::diff::reach::{Change, reachability};
use leash::eval::PolicySet;
use leash_lab::synthetic::{self, Shape};

/// Peak resident set size of this process, from /proc (kB), if available.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn mb(kb: Option<u64>) -> String {
    kb.map_or_else(|| "?".to_owned(), |k| (k / 1024).to_string())
}

/// The second proposal: a tenth of the workload policies changed.
fn changed(policies: &[NetworkPolicy]) -> (Vec<NetworkPolicy>, usize) {
    let mut out = policies.to_vec();
    let mut n = 0;
    for (i, p) in out.iter_mut().enumerate() {
        let Some(spec) = p.spec.as_mut() else {
            continue;
        };
        let Some(egress) = spec.egress.as_mut().filter(|e| !e.is_empty()) else {
            continue;
        };
        match i % 20 {
            0 => {
                egress.pop();
                n += 1;
            }
            10 => {
                egress.push(NetworkPolicyEgressRule {
                    to: Some(vec![NetworkPolicyPeer {
                        ip_block: Some(IPBlock {
                            cidr: "198.51.100.0/24".to_owned(),
                            except: Some(vec!["198.51.100.128/25".to_owned()]),
                        }),
                        ..Default::default()
                    }]),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(8443)),
                        protocol: Some("TCP".to_owned()),
                        end_port: None,
                    }]),
                });
                n += 1;
            }
            _ => {}
        }
    }
    (out, n)
}

/// Writes each policy set to its own directory (one JSON file per policy), runs the release
/// `leash diff --from A --to B --flows …` and returns its wall time and peak RSS (kB).
fn command(
    dir: &std::path::Path,
    snapshot: &std::path::Path,
    flows: &std::path::Path,
    first: &[NetworkPolicy],
    second: &[NetworkPolicy],
) -> Result<(std::time::Duration, Option<u64>), Box<dyn std::error::Error>> {
    let mut dirs = Vec::new();
    for (name, set) in [("first", first), ("second", second)] {
        let d = dir.join(name);
        for p in set {
            let ns = p.metadata.namespace.as_deref().unwrap_or("default");
            let file = d.join(ns).join(format!(
                "{}.json",
                p.metadata.name.as_deref().unwrap_or("policy")
            ));
            std::fs::create_dir_all(d.join(ns))?;
            std::fs::write(file, serde_json::to_vec(p)?)?;
        }
        dirs.push(d);
    }
    let out = std::fs::File::create(dir.join("diff.jsonl"))?;
    let t = Instant::now();
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_leash"))
        .arg("diff")
        .arg("--cluster")
        .arg(snapshot)
        .arg("--from")
        .arg(&dirs[0])
        .arg("--to")
        .arg(&dirs[1])
        .arg("--flows")
        .arg(flows)
        .args(["--format", "json"])
        .stdout(out)
        .status()?;
    let elapsed = t.elapsed();
    if !status.success() {
        return Err(format!("leash diff exited with {status}").into());
    }
    Ok((elapsed, leash_lab::children_peak_rss_kb()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A fifth of the recommend bench's records still gives every workload its destinations.
    let shape = Shape::for_bench(0.2)?;
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
    let cluster = leash::cluster::Cluster::load(&snap_path)?;
    let obs =
        leash::observations::Observations::read_paths(std::slice::from_ref(&flows_path), &cluster)?;
    let rec = leash::recommend::recommend(&cluster, &obs, &leash::recommend::Options::default());
    let first = leash::recommend::all_policies(&cluster, &rec);
    let (second, n_changed) = changed(&first);
    let setup = t.elapsed();
    let rss_setup = peak_rss_kb();

    let t = Instant::now();
    let a = PolicySet::new(&first)?;
    let b = PolicySet::new(&second)?;
    let compile = t.elapsed();

    let t = Instant::now();
    let forward = reachability(&cluster, &a, &b);
    let t_forward = t.elapsed();
    let t = Instant::now();
    let backward = reachability(&cluster, &b, &a);
    let t_backward = t.elapsed();
    // The same change seen from the other side: every newly allowed becomes newly denied.
    let mut flipped: Vec<_> = forward
        .iter()
        .cloned()
        .map(|mut c| {
            c.change = match c.change {
                Change::NewlyAllowed => Change::NewlyDenied,
                Change::NewlyDenied => Change::NewlyAllowed,
            };
            c
        })
        .collect();
    flipped.sort();
    if flipped != backward {
        return Err(format!(
            "diff is not symmetric: {} changes forward, {} backward",
            forward.len(),
            backward.len()
        )
        .into());
    }
    let t = Instant::now();
    let same = reachability(&cluster, &a, &a);
    let t_same = t.elapsed();
    if !same.is_empty() {
        return Err("a state compared with itself changes something".into());
    }

    println!(
        "diff: {} nodes, {} pods, {} policies ({} changed)",
        shape.nodes,
        cluster.pods.len(),
        first.len(),
        n_changed
    );
    println!(
        "  {:<40} {:>9.2} s",
        "setup: generate, load, recommend (not in total)",
        setup.as_secs_f64()
    );
    println!(
        "  {:<40} {:>9.2} s",
        "compile both policy sets",
        compile.as_secs_f64()
    );
    println!(
        "  {:<40} {:>9.2} s   {} changes",
        "reachability first -> second",
        t_forward.as_secs_f64(),
        forward.len()
    );
    println!(
        "  {:<40} {:>9.2} s   {} changes",
        "reachability second -> first",
        t_backward.as_secs_f64(),
        backward.len()
    );
    println!(
        "  {:<40} {:>9.2} s",
        "reachability first -> first",
        t_same.as_secs_f64()
    );
    // The whole command, as a user runs it: both proposals as policy directories, the
    // snapshot and the records from files, JSON lines out.
    let (t_command, command_rss) = command(dir.path(), &snap_path, &flows_path, &first, &second)?;
    println!(
        "  {:<40} {:>9.2} s   peak RSS {} MB",
        "leash diff (the command, end to end)",
        t_command.as_secs_f64(),
        mb(command_rss)
    );
    let worst = t_forward.max(t_backward).max(t_command);
    println!(
        "  target < 30 s per diff: {}",
        if worst.as_secs() < 30 {
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
        "  peak RSS {} MB (after setup {} MB)",
        mb(peak_rss_kb()),
        mb(rss_setup)
    );
    Ok(())
}
