//! Exact CIDR merge of the addresses in a file (one per line), for `scripts/cidr_compare.py`.
//!
//! Usage: `cidr_collapse FILE [REPEAT]`. Prints the merged prefixes to stdout, one per line, and
//! the best merge time over REPEAT runs (default 3) to stderr as `elapsed_ms=<float>`. Parsing
//! the file is not timed, just as the Python side times `collapse_addresses` alone.

use std::io::{BufWriter, Write};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: cidr_collapse FILE [REPEAT]");
        return ExitCode::from(2);
    };
    let repeat: u32 = match args.next().map(|r| r.parse()) {
        None => 3,
        Some(Ok(r)) if r > 0 => r,
        Some(_) => {
            eprintln!("REPEAT must be a positive integer");
            return ExitCode::from(2);
        }
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{path}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut addrs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match line.parse::<Ipv4Addr>() {
            Ok(a) => addrs.push(a),
            Err(e) => {
                eprintln!("{path}:{}: {line:?}: {e}", i + 1);
                return ExitCode::from(2);
            }
        }
    }
    let mut best = f64::INFINITY;
    let mut merged = Vec::new();
    for _ in 0..repeat {
        let t = Instant::now();
        merged = leash::cidr::merge_v4_addrs(&addrs);
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    for net in &merged {
        if writeln!(out, "{net}").is_err() {
            return ExitCode::from(1);
        }
    }
    if out.flush().is_err() {
        return ExitCode::from(1);
    }
    eprintln!(
        "elapsed_ms={best:.3} addresses={} prefixes={}",
        addrs.len(),
        merged.len()
    );
    ExitCode::SUCCESS
}
