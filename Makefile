# The two commands: `make demo` and `make test`. Both run the idempotent set-up first.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.PHONY: setup demo test fmt clippy unit

setup:
	./scripts/setup.sh

# demo.sh runs the set-up and the release build itself.
demo:
	./scripts/demo.sh

test: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace
