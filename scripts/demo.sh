#!/usr/bin/env bash
# The demo: the shop lab (two namespaces, Services, DNS, external hosts), the real leash-agent
# streaming over mTLS to `leash serve` on SQLite, then `leash recommend` and two audits (every
# observed flow allowed, every probe denied), and a summary table. Needs root (namespaces,
# cgroups, BPF). Then the guardrails, first in a rollout: `leash guardrails` (out/guardrails,
# shop deferred), its diff with no break, and over the proposal (out/guardrails-final) the
# final state audited. Then the lockdown: the proposal applied, one new call, rollout status,
# recommend --previous and diff. Then the loop: the policy repository (a local bare repository)
# holds the applied proposal, `leash serve --pr-repo` raises an alert on the new call and opens
# a pull request at a GitHub stand-in on loopback, and its body is printed. Leaves
# out/cluster.yaml, out/flows.jsonl, out/policies/ (with its REPORT.md index),
# out/cluster-locked.yaml, out/rollout.json, out/diff.jsonl, out/policies.git (branch
# leash/shop), out/pull-request.md, the demo's store out/leash.db and a screenshot of its map
# in headless Chromium, out/map.png.
#
# Usage: scripts/demo.sh [lab-demo options], e.g. `--no-serve` (agent writes flows.jsonl only,
# `leash recommend --flows`) or `--rounds 5`. Set-up and the release build run first; both are
# no-ops when already done, so `make demo` (which also runs them) costs nothing extra.
# LEASH_DEMO_PROFILE=debug uses (and builds) the debug binaries instead of release.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
profile="${LEASH_DEMO_PROFILE:-release}"
case "$profile" in
    release) build_flags=(--release) ;;
    debug) build_flags=() ;;
    *) echo "demo: LEASH_DEMO_PROFILE must be release or debug, not '$profile'" >&2; exit 2 ;;
esac
target="$CARGO_TARGET_DIR/$profile"

if [[ $(id -u) -ne 0 ]]; then
    echo "demo: needs root (network namespaces, cgroups and BPF programs); try: sudo make demo" >&2
    exit 1
fi

echo "== set-up and build"
./scripts/setup.sh
cargo build "${build_flags[@]}" -p leash-agent -p leash -p leash-lab --bins

exec "$target/lab-demo" --out out --leash "$target/leash" --agent "$target/leash-agent" "$@"
