# The two commands: `make demo` and `make test`. Both run the idempotent set-up first.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.PHONY: setup demo test fmt clippy unit product-check fuzz

setup:
	./scripts/setup.sh

# demo.sh runs the set-up and the release build itself.
demo:
	./scripts/demo.sh

test: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace
	$(MAKE) product-check
	$(MAKE) fuzz FUZZ_SECONDS=$(FUZZ_CI_SECONDS) FUZZ_PROFILE=$(FUZZ_CI_PROFILE)

# The agent's library as the product builds it (no `testing` feature), with the cfg that turns
# each test-only module into a compile_error!: passes only if none of them is compiled.
product-check:
	cargo rustc -p leash-agent --lib --profile check -- --cfg leash_product_build

# The cargo-fuzz targets of tests/fuzz (README "Fuzzing"), FUZZ_SECONDS each; any finding fails.
# `make test` runs them FUZZ_CI_SECONDS each from an unoptimised build (half the build time).
# Stable toolchain with RUSTC_BOOTSTRAP=1 (run.sh).
FUZZ_SECONDS ?= 60
FUZZ_PROFILE ?= release
FUZZ_CI_SECONDS ?= 15
FUZZ_CI_PROFILE ?= dev
fuzz: setup
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_PROFILE=$(FUZZ_PROFILE) ./tests/fuzz/run.sh
