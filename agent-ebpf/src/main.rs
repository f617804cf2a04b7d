//! leash kernel programs (built for `bpfel-unknown-none` by `agent/build.rs`).
//!
//! All programs only observe: they always allow the operation.
//!
//! - `cgroup/connect4|6`, `cgroup/sendmsg4|6` count outbound flows per
//!   (cgroup, protocol, destination, port) in the `FLOWS` LRU map and push a `FlowRecord`
//!   for a new key, or for an active key at most once per refresh interval.
//! - TCP outcome without sock_ops (whose per-callback cost is high): `connect4|6` remember the
//!   flow key of each TCP socket by cookie; `cgroup_skb/ingress` counts a SYN-ACK as
//!   established and an RST as failed; `cgroup/sock_release` counts a socket closed while still
//!   pending as failed (timeout or abandoned connect).
//! - `cgroup_skb/ingress` also copies DNS responses (configurable source ports, UDP and TCP,
//!   IPv4 and IPv6 without extension headers) to the `DNS_EVENTS` ring. For TCP it takes only
//!   segments that start a DNS message (tracked per socket by sequence number: the first
//!   segment of each response, with its 2-byte length prefix); continuation segments and
//!   retransmissions are skipped. If a segment boundary is missed (e.g. two responses in one
//!   segment), the socket's later responses are skipped.
//! - `cgroup_skb/ingress` leaves early for every packet that can be neither a DNS answer nor a
//!   TCP handshake reply: the receiving socket is connected to a port that is not a DNS port
//!   (`__sk_buff.remote_port`, the `DNS_PORTS` bitmap) and, for TCP, the segment has neither SYN
//!   nor RST (one byte read directly from the packet). Only the others are counted in
//!   `PATH_COUNTERS` and inspected.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// Atomic add / compare-exchange intrinsics: the bpf target exposes no `AtomicU64::fetch_add`.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(
    target_arch = "bpf",
    expect(internal_features, reason = "core_intrinsics for BPF atomics")
)]

#[cfg(not(target_arch = "bpf"))]
fn main() {}

#[cfg(target_arch = "bpf")]
mod kernel;
