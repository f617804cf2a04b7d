# The two commands: `make demo` and `make test`. Both run the idempotent set-up first.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.PHONY: setup demo test fmt clippy unit

setup:
	./scripts/setup.sh

demo: setup
	cargo build --release -p leash-agent -p leash -p leash-lab --bins
	./scripts/demo.sh

test: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace
