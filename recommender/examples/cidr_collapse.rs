//! Exact CIDR merge of the IPv4 addresses or prefixes in a file (one per line), for
//! `scripts/cidr_compare.py`.
//!
//! Usage: `cidr_collapse FILE [REPEAT]`. Prints the merged prefixes to stdout, one per line, and
//! the best merge time over REPEAT runs (default 3) to stderr as `elapsed_ms=<float>`. Parsing
//! the file is not timed, just as the Python side times `collapse_addresses` alone. A file of
//! plain addresses goes through `merge_v4_addrs`; if any line is a prefix (`a.b.c.d/n`, host bits
//! allowed), the whole file goes through `merge_v4`.

use std::io::{BufWriter, Write};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use leash_records::error::Chain;
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
            eprintln!("{path}: {}", Chain(&e));
            return ExitCode::from(2);
        }
    };
    let mut nets = Vec::new();
    let mut any_prefix = false;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let parsed = if line.contains('/') {
            any_prefix = true;
            line.parse::<Ipv4Net>().map_err(|e| Chain(&e).to_string())
        } else {
            line.parse::<Ipv4Addr>()
                .map(Ipv4Net::from)
                .map_err(|e| Chain(&e).to_string())
        };
        match parsed {
            Ok(n) => nets.push(n),
            Err(e) => {
                eprintln!("{path}:{}: {line:?}: {e}", i + 1);
                return ExitCode::from(2);
            }
        }
    }
    let addrs: Vec<Ipv4Addr> = nets.iter().map(Ipv4Net::addr).collect();
    let mut best = f64::INFINITY;
    let mut merged = Vec::new();
    for _ in 0..repeat {
        let t = Instant::now();
        merged = if any_prefix {
            leash::cidr::merge_v4(&nets)
        } else {
            leash::cidr::merge_v4_addrs(&addrs)
        };
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
        "elapsed_ms={best:.3} inputs={} prefixes={}",
        nets.len(),
        merged.len()
    );
    ExitCode::SUCCESS
}
