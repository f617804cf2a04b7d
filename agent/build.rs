//! Builds the kernel programs (`agent-ebpf`, bin `leash-ebpf`) for `bpfel-unknown-none` with
//! `cargo +nightly -Z build-std=core` (via aya-build) and leaves the object in `OUT_DIR`, where
//! `capture` embeds it with `include_bytes_aligned!`. Needs what `scripts/setup.sh` installs:
//! the nightly toolchain with `rust-src`, and `bpf-linker` on PATH.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .ok_or_else(|| anyhow!("CARGO_MANIFEST_DIR not set"))?;
    let root = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("agent/ has no parent directory"))?
        .join("agent-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    println!("cargo::rerun-if-changed=build.rs");
    // Set only by `make product-check`: a test-only module compiled without the `testing`
    // feature hits its `compile_error!`.
    println!("cargo::rustc-check-cfg=cfg(leash_product_build)");
    // aya-build relays the nested cargo's stderr as `cargo:warning`s; keep its progress
    // lines ("Compiling ...") out of every build's output. Errors are still printed.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [Package {
            name: "agent-ebpf",
            root_dir: root,
            ..Package::default()
        }],
        Toolchain::Nightly,
    )
    .context(
        "building the eBPF programs failed; run ./scripts/setup.sh (nightly + rust-src + bpf-linker)",
    )
}
