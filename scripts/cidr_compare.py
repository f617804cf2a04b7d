#!/usr/bin/env python3
"""Compare leash's exact CIDR merge with Python's ipaddress.collapse_addresses.

Generates the same 1M-address input as recommender/benches/cidr.rs (splitmix64, same seed: 1M
draws from 10.0.0.0/11), writes it to a file, runs the Rust example `cidr_collapse` on it and
Python's collapse_addresses on the same list, then prints both times, the speedup and whether
the outputs are identical. Neither side's time includes parsing the input.

With --prefixes the input is instead N random prefixes (/26../32, host bits set, overlapping),
parsed with ip_network(strict=False) on the Python side and merged with merge_v4 on the Rust
side: a check that the two agree on overlaps and containment too.

Usage: scripts/cidr_compare.py [--count N] [--repeat R] [--bin PATH] [--prefixes]
Without --bin the example is built with `cargo build --release -p leash --example cidr_collapse`.
Exit status: 0 if the outputs are identical, 1 otherwise, 2 on usage or build errors.
"""

import argparse
import ipaddress
import os
import subprocess
import sys
import tempfile
import time

MASK64 = (1 << 64) - 1
MERGE_SEED = 0x1EA50001  # recommender/benches/cidr.rs MERGE_SEED


def splitmix64(seed):
    state = seed
    while True:
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        yield z ^ (z >> 31)


def merge_input(count):
    rng = splitmix64(MERGE_SEED)
    return [0x0A000000 | (next(rng) >> 43) for _ in range(count)]


def prefix_input(count):
    rng = splitmix64(MERGE_SEED ^ 0xFFFF)
    out = []
    for _ in range(count):
        x = next(rng)
        out.append((0x0A000000 | (x >> 43), 26 + (x & 0xFFFF) % 7))
    return out


def build_example(repo):
    cmd = ["cargo", "build", "--release", "-q", "-p", "leash", "--example", "cidr_collapse"]
    if subprocess.run(cmd, cwd=repo).returncode != 0:
        sys.exit("cidr_compare: building the cidr_collapse example failed")
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(repo, "target"))
    return os.path.join(target, "release", "examples", "cidr_collapse")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="addresses (default 1M)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per side; best is kept")
    ap.add_argument("--bin", help="prebuilt cidr_collapse binary")
    ap.add_argument("--prefixes", action="store_true", help="random prefixes, not addresses")
    args = ap.parse_args()
    if args.count <= 0 or args.repeat <= 0:
        ap.error("--count and --repeat must be positive")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = args.bin or build_example(repo)

    if args.prefixes:
        raw = prefix_input(args.count)
        lines = [f"{ipaddress.IPv4Address(w)}/{n}" for w, n in raw]
        addrs = [ipaddress.ip_network(line, strict=False) for line in lines]
        what = f"{args.count} prefixes (/26../32) from 10.0.0.0/11"
    else:
        words = merge_input(args.count)
        addrs = [ipaddress.IPv4Address(w) for w in words]
        lines = [str(a) for a in addrs]
        what = f"{args.count} addresses from 10.0.0.0/11 ({len(set(words))} distinct)"
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "addrs.txt")
        with open(path, "w") as f:
            f.write("\n".join(lines))
            f.write("\n")
        run = subprocess.run([binary, path, str(args.repeat)], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"cidr_compare: {binary} failed: {run.stderr.strip()}")
    rust_out = run.stdout.split()
    rust_ms = None
    for field in run.stderr.split():
        if field.startswith("elapsed_ms="):
            rust_ms = float(field.split("=", 1)[1])
    if rust_ms is None:
        sys.exit(f"cidr_compare: no elapsed_ms in {binary} output: {run.stderr.strip()}")

    py_ms = float("inf")
    py_out = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        nets = list(ipaddress.collapse_addresses(addrs))
        py_ms = min(py_ms, (time.perf_counter() - t) * 1e3)
        py_out = nets
    py_out = [str(n) for n in py_out]

    identical = py_out == rust_out
    print(f"input:    {what}, splitmix64 seed {MERGE_SEED:#x}")
    print(f"prefixes: python {len(py_out)}, rust {len(rust_out)}")
    print(f"python ipaddress.collapse_addresses: {py_ms:10.1f} ms (best of {args.repeat})")
    rust_fn = "merge_v4" if args.prefixes else "merge_v4_addrs"
    print(f"rust   leash::cidr::{rust_fn + ':':16} {rust_ms:10.1f} ms (best of {args.repeat})")
    print(f"speedup: {py_ms / rust_ms:.0f}x")
    print(f"identical output: {'yes' if identical else 'NO'}")
    if not identical:
        for i, (p, r) in enumerate(zip(py_out, rust_out)):
            if p != r:
                print(f"first difference at line {i + 1}: python {p}, rust {r}")
                break
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
