#!/usr/bin/env bash
# Builds the cargo-fuzz targets of tests/fuzz once, then runs each for FUZZ_SECONDS (`make fuzz`;
# `make test` runs a short pass). Exits non-zero if any target finds a crash, a panic, a hang
# or runaway memory; the input is saved under tests/fuzz/artifacts/<target>/ and the command
# to replay it is printed.
#
# Environment: FUZZ_SECONDS (default 60), FUZZ_TARGETS (default: all), FUZZ_SANITIZER (default
# none; `address` builds again with AddressSanitizer), FUZZ_PROFILE (release, the default:
# optimised with debug assertions; `dev`: unoptimised, a build in about half the time for short
# passes such as `make test`'s), FUZZ_TARGET_DIR (build and working corpus; default
# $CARGO_TARGET_DIR/fuzz, else target/fuzz).
#
# The stable toolchain builds it: RUSTC_BOOTSTRAP=1 lets it accept the `-Z` flags libFuzzer's
# instrumentation needs (sanitizer coverage), as a nightly toolchain would.
set -euo pipefail
cd "$(dirname "$0")/../.."
log() { printf 'fuzz: %s\n' "$*" >&2; }

seconds=${FUZZ_SECONDS:-60}
sanitizer=${FUZZ_SANITIZER:-none}
case ${FUZZ_PROFILE:-release} in
    release) profile=(--release --debug-assertions) ;;
    dev) profile=(--dev) ;;
    *) log "FUZZ_PROFILE must be release or dev"; exit 2 ;;
esac
targets=${FUZZ_TARGETS:-dns_payload record_reader flow_line snapshot proto_batch cidr_ports ip_ranges}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/fuzz}
export RUSTC_BOOTSTRAP=1
fuzz=(cargo fuzz)

if ! cargo fuzz --version >/dev/null 2>&1; then
    log "cargo-fuzz is missing: run ./scripts/setup.sh"
    exit 1
fi

start=$SECONDS
"${fuzz[@]}" build --fuzz-dir tests/fuzz --sanitizer "$sanitizer" "${profile[@]}"
log "built in $((SECONDS - start)) s"

failed=()
for t in $targets; do
    # Findings go to the working corpus (outside the tree); the committed seeds are read only.
    corpus=$CARGO_TARGET_DIR/corpus/$t
    mkdir -p "$corpus" "tests/fuzz/artifacts/$t"
    out=$CARGO_TARGET_DIR/$t.log
    # Inputs that once failed (each also a regression test in its crate) are replayed first.
    regressions=()
    [ -d "tests/fuzz/regressions/$t" ] && regressions=("tests/fuzz/regressions/$t")
    # -timeout: one input taking longer is a hang; -rss_limit_mb: memory is bounded.
    if "${fuzz[@]}" run --fuzz-dir tests/fuzz --sanitizer "$sanitizer" "${profile[@]}" "$t" "$corpus" "tests/fuzz/seeds/$t" \
        ${regressions[@]+"${regressions[@]}"} -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$out" 2>&1; then
        runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out" | grep -o '[0-9]*$' || echo '?')
        cov=$(grep -o 'cov: [0-9]*' "$out" | tail -1 || true)
        log "$t: ok, $runs inputs in ${seconds} s ($cov)"
    else
        log "$t: FAILED (log: $out)"
        tail -n 40 "$out" >&2
        failed+=("$t")
    fi
done
if ((${#failed[@]})); then
    log "findings in: ${failed[*]} (inputs under tests/fuzz/artifacts/; replay with" \
        "RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$CARGO_TARGET_DIR cargo fuzz run --fuzz-dir tests/fuzz -s $sanitizer ${profile[*]} TARGET FILE)"
    exit 1
fi
log "all targets ok ($((SECONDS - start)) s)"
