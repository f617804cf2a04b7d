#!/usr/bin/env bash
# Runs the agent's performance benchmarks (issue 2, "Performance") and prints their figures:
#   connect   agent/benches/connect_latency.rs  added connect() latency, loopback (goal <= 1.10x)
#   pipeline  agent/benches/pipeline.rs         user-space ns per kernel record (goal <= 1 us)
#   scale     agent/benches/agent_scale.rs      real agent, 100k keys: CPU/record, RSS (<= 64 MiB),
#                                               produced = delivered + drops, exact counts; run
#                                               twice: paced, then all keys in one burst
#   datapath  agent/benches/datapath.rs         the programs on a pod's data path: iperf3 bulk TCP
#                                               receive (>= 0.99x) and 64-byte UDP send (>= 0.99x),
#                                               loopback connect (<= 1.03x), attached vs not in
#                                               alternating rounds; then ns per program run
#                                               (BPF run-time statistics) and the early-exit share
#   outage    agent/benches/outage.rs           real agent streaming to a recommender that is down
#                                               for 5 minutes: RSS growth (<= +10%), exact counts
# Usage: scripts/bench-agent.sh [connect] [pipeline] [scale] [datapath] [outage]   (default: the first three;
#        outage takes over 5 minutes, OUTAGE_ARGS=--quick makes it 30 s)
# connect, scale and datapath need root (BPF, namespaces, cgroups), datapath also iperf3 (scripts/setup.sh); without it they print why and skip.
# Extra arguments: CONNECT_ARGS="ROUNDS PER_ROUND", SCALE_ARGS="--keys N --active N --rounds N",
# OUTAGE_ARGS="--quick | --outage SECS --keys N",
# DATAPATH_ARGS="--rounds N --secs S --connects N --stats-rounds N".
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

which=("$@")
[ ${#which[@]} -eq 0 ] && which=(connect pipeline scale)
for w in "${which[@]}"; do
    case "$w" in
        connect | pipeline | scale | datapath | outage) ;;
        *)
            echo "unknown benchmark '$w' (expected connect, pipeline, scale, datapath or outage)" >&2
            exit 2
            ;;
    esac
done
wants() { [[ " ${which[*]} " == *" $1 "* ]]; }

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
echo "== machine: $(nproc) vCPU (${cpu:-unknown CPU}), kernel $(uname -r), $(rustc --version)"

# The benches run under cargo's bench profile (= release); the scale bench runs the release
# agent binary and lab-client, so build them first.
if wants scale || wants outage; then
    cargo build --release -p leash-agent --bin leash-agent
    cargo build --release -p leash-lab --bin lab-client
fi

status=0
if wants connect; then
    echo "== connect latency (connect_latency)"
    # shellcheck disable=SC2086 # CONNECT_ARGS is a list of words
    cargo bench -p leash-agent --bench connect_latency -- ${CONNECT_ARGS:-} || status=1
fi

if wants pipeline; then
    echo "== user-space cost per kernel record (pipeline)"
    cargo bench -p leash-agent --bench pipeline || status=1
    # Criterion's estimates are per iteration; each iteration handles `elements` records.
    if command -v python3 >/dev/null; then
        python3 - "$CARGO_TARGET_DIR/criterion" <<'EOF' || true
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
rows = []
for group in ("per_record", "per_dns_record"):
    for bench in sorted((root / group).glob("**/new/benchmark.json")):
        meta = json.loads(bench.read_text())
        est = json.loads((bench.parent / "estimates.json").read_text())
        n = (meta.get("throughput") or {}).get("Elements")
        if not n:
            continue
        rows.append((meta["full_id"], est["median"]["point_estimate"] / n))
print(f"{'benchmark':<40} {'ns/record (median)':>20}")
for name, ns in rows:
    print(f"{name:<40} {ns:>20.1f}")
EOF
    fi
fi

if wants scale; then
    echo "== real agent at 100k keys (agent_scale)"
    # shellcheck disable=SC2086 # SCALE_ARGS is a list of words
    cargo bench -p leash-agent --bench agent_scale -- ${SCALE_ARGS:-} || status=1
    echo "== real agent, the same 100k keys in one burst with a 1 s flush (counted drops, if the ring overruns, are recovered by a sweep)"
    cargo bench -p leash-agent --bench agent_scale -- --chunk 100000 --flush-ms 1000 || status=1
fi
if wants datapath; then
    echo "== the programs on a pod's data path (datapath)"
    # shellcheck disable=SC2086 # DATAPATH_ARGS is a list of words
    cargo bench -p leash-agent --bench datapath -- ${DATAPATH_ARGS:-} || status=1
fi
if wants outage; then
    echo "== real agent, recommender down and back (outage)"
    # shellcheck disable=SC2086 # OUTAGE_ARGS is a list of words
    cargo bench -p leash-agent --bench outage -- ${OUTAGE_ARGS:-} || status=1
fi
exit $status
