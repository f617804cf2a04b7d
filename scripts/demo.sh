#!/usr/bin/env bash
# The demo: a lab node with a small shop, the real leash-agent capturing its traffic, and the
# recommender turning what it saw into NetworkPolicies. Needs root (namespaces, cgroups, BPF).
# Leaves out/cluster.yaml, out/flows.jsonl, out/policies/ and out/REPORT.md behind.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}/release"
out=out
rm -rf "$out" && mkdir -p "$out"

echo "== lab + leash-agent (records as JSON lines)"
"$target/lab-demo" --agent "$target/leash-agent" --snapshot "$out/cluster.yaml" \
    --output "$out/flows.jsonl" --duration-secs 6
echo
echo "== leash recommend"
"$target/leash" recommend --cluster "$out/cluster.yaml" --flows "$out/flows.jsonl" -o "$out/policies"
mv "$out/policies/REPORT.md" "$out/REPORT.md"
find "$out/policies" -name '*.yaml' | sort
echo
echo "== leash audit: every observed flow against the proposed policies"
"$target/leash" audit --cluster "$out/cluster.yaml" --policies "$out/policies" \
    --flows "$out/flows.jsonl" --format table --fail-on-deny
echo
echo "Artifacts: $out/cluster.yaml $out/flows.jsonl $out/policies/ $out/REPORT.md"
