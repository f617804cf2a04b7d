//! `leash pr` at the scale: the 5,000-node, 150,000-pod synthetic cluster of the
//! `recommend` bench (500 namespaces), proposed to a local bare repository that holds only
//! the team's README, with `--provider none` (git only; the provider's calls are one request
//! each and do not depend on the cluster's size).
//!
//! Runs the release `leash pr` twice on the same records: the first run pushes one branch
//! per namespace (the first lockdown), the second finds every branch up to date and pushes
//! nothing. Prints each run's wall time and the peak RSS of the largest child process, and
//! checks the outcomes (every namespace pushed, then every one up to date, no branch moved).
//!
//! `cargo bench -p leash --bench pr` runs the full size; `LEASH_BENCH_SCALE=0.1` a tenth.

use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use leash_lab::git_server;
use leash_lab::synthetic::{self, Shape};

/// One `leash pr` run: its wall time and stdout.
fn leash_pr(dir: &Path, bare: &Path) -> Result<(Duration, String), Box<dyn std::error::Error>> {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_leash"))
        .arg("pr")
        .arg("--cluster")
        .arg(dir.join("cluster.json"))
        .arg("--flows")
        .arg(dir.join("flows.jsonl"))
        .arg("--repo")
        .arg(bare)
        .args(["--provider", "none", "--path", "policies"])
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .env_remove("LEASH_GIT_TOKEN")
        .output()?;
    let elapsed = t.elapsed();
    if !out.status.success() {
        return Err(format!(
            "leash pr exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok((elapsed, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shape = Shape::for_bench(0.2)?;
    let dir = tempfile::tempdir()?;
    {
        let mut w = BufWriter::new(std::fs::File::create(dir.path().join("cluster.json"))?);
        synthetic::write_snapshot(&shape, &mut w)?;
        w.flush()?;
        let mut w = BufWriter::new(std::fs::File::create(dir.path().join("flows.jsonl"))?);
        synthetic::write_flows(&shape, &mut w)?;
        w.flush()?;
    }
    let bare =
        git_server::create_bare_repo(dir.path(), "policies.git", &[("README.md", "team\n")])?;

    let (first, out) = leash_pr(dir.path(), &bare)?;
    let rss_first = leash_lab::children_peak_rss_kb();
    let pushed = out.lines().filter(|l| l.contains(": pushed ")).count();
    if pushed != shape.namespaces as usize {
        return Err(format!(
            "the first run pushed {pushed} branches for {} namespaces:\n{out}",
            shape.namespaces
        )
        .into());
    }
    let tips = git_server::git(
        &bare,
        &["for-each-ref", "--format=%(objectname) %(refname)"],
    )?;

    let (second, out) = leash_pr(dir.path(), &bare)?;
    let up_to_date = out.lines().filter(|l| l.contains("already holds")).count();
    if up_to_date != pushed || out.lines().any(|l| l.contains(": pushed ")) {
        return Err(format!("the second run changed something:\n{out}").into());
    }
    let after = git_server::git(
        &bare,
        &["for-each-ref", "--format=%(objectname) %(refname)"],
    )?;
    if after != tips {
        return Err("the second run moved a branch".into());
    }

    println!(
        "pr: {} nodes, {} pods, {} namespaces, {} flow records (--provider none, local bare repository)",
        shape.nodes,
        shape.pods(),
        shape.namespaces,
        shape.flow_records
    );
    println!(
        "  {:<52} {:>8.2} s   {pushed} branches pushed",
        "first run (every namespace a new branch)",
        first.as_secs_f64()
    );
    println!(
        "  {:<52} {:>8.2} s   {up_to_date} up to date, nothing pushed",
        "second run (same records)",
        second.as_secs_f64()
    );
    println!(
        "  {:<52} {:>8} MB",
        "peak RSS of the largest child (leash pr or git)",
        rss_first.map_or_else(|| "?".to_owned(), |k| (k / 1024).to_string())
    );
    Ok(())
}
