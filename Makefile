# The two commands: `make demo` and `make test`. Both run the idempotent set-up first.
SHELL := /bin/bash
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.PHONY: setup demo test fmt clippy unit product-check

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

# The agent's library as the product builds it (no `testing` feature), with the cfg that turns
# each test-only module into a compile_error!: passes only if none of them is compiled.
product-check:
	cargo rustc -p leash-agent --lib --profile check -- --cfg leash_product_build
