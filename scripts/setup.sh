#!/usr/bin/env bash
# Idempotent set-up: installs what a fresh machine lacks to build and test leash.
# - Debian's LLVM 22 (matches nightly rustc's LLVM) for bpf-linker
# - the nightly rust-src component (aya-build uses -Z build-std=core)
# - bpf-linker 0.13.0 built against LLVM 22
# - nftables (lab ClusterIP DNAT), dnsmasq-base (lab DNS), iproute2, util-linux (setpriv; unshare for the tests that expose the UI inside a private network namespace; runuser/setpriv to run the test PostgreSQL unprivileged)
# - git (policy states at a revision, `git:REV:PATH`, and their tests; its http-backend serves the
#   lab's HTTP git server)
# - openssh-server and openssh-client (leash-lab's local sshd, its keys from ssh-keygen, and
#   the ssh client git uses: the tests of git over SSH with a key file)
# - chromium and chromium-driver (the web UI's tests drive a real, headless browser over WebDriver)
# - iperf3 (the agent's data-path benchmark, agent/benches/datapath.rs)
# - postgresql (the PostgreSQL store's tests run a private server: initdb in a temporary
#   directory as an unprivileged user, from /usr/lib/postgresql/*/bin)
# - checks for kubectl (deploy tests), which it cannot install from the package mirrors
set -euo pipefail

BPF_LINKER_VERSION=0.13.0
log() { printf 'setup: %s\n' "$*" >&2; }

need_pkgs=()
for p in llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev nftables dnsmasq-base iproute2 util-linux git openssh-server openssh-client chromium chromium-driver postgresql iperf3; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
    log "installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

# The deploy tests render the kustomizations with `kubectl kustomize` (offline). Machines of this
# project's kind ship kubectl; Debian's own kubernetes-client (1.20) is too old for the overlays
# (`resources: - ../../base`), and the network here reaches only package mirrors, so say so.
if ! command -v kubectl >/dev/null; then
    log "WARNING: kubectl (>= 1.21, for 'kubectl kustomize') is not on PATH; the deploy tests will fail." \
        "Install it from https://kubernetes.io/docs/tasks/tools/ or set KUBECTL=/path/to/kubectl."
fi

# The workspace builds with the default (stable) toolchain; fmt and clippy gate every change.
for c in rustfmt clippy; do
    rustup component list --installed | grep -q "^$c" || rustup component add "$c"
done
if ! rustup toolchain list | grep -q '^nightly'; then
    log "installing nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
    log "adding rust-src to nightly"
    rustup component add rust-src --toolchain nightly
fi

if ! { command -v bpf-linker >/dev/null && bpf-linker --version | grep -q "$BPF_LINKER_VERSION"; }; then
    log "building bpf-linker $BPF_LINKER_VERSION against LLVM 22 (about a minute)"
    PATH=/usr/lib/llvm-22/bin:$PATH cargo install bpf-linker --version "$BPF_LINKER_VERSION" --locked \
        --no-default-features --features llvm-22
fi
log "ok"
