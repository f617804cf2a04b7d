//! Records shared by the leash kernel programs and `leash-agent`.
//!
//! Every type here is `#[repr(C)]` with explicit padding fields, so that the kernel and user
//! space agree on the layout byte for byte and hash-map keys never contain uninitialised
//! padding (two equal keys must hash equally in the kernel).
//!
//! Addresses are stored as 16 bytes in network order. An IPv4 address (including an
//! IPv4-mapped IPv6 destination, which the programs unwrap) occupies the first four bytes and
//! the rest are zero; [`FlowKey::family`] / [`DnsHeader::family`] say which it is.
//!
//! On non-BPF targets the map key and value types implement `aya::Pod`, so that user space
//! can read them from maps directly.
#![no_std]

/// `family` value of an IPv4 address.
pub const FAMILY_V4: u8 = 4;
/// `family` value of an IPv6 address.
pub const FAMILY_V6: u8 = 6;

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;

/// Name of the LRU hash map `FlowKey -> FlowValue`.
pub const MAP_FLOWS: &str = "FLOWS";
/// Name of the ring buffer carrying [`FlowRecord`]s.
pub const MAP_FLOW_EVENTS: &str = "FLOW_EVENTS";
/// Name of the ring buffer carrying [`DnsRecord`]s.
pub const MAP_DNS_EVENTS: &str = "DNS_EVENTS";
/// Name of the per-CPU `u64` counter array indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Name of the per-CPU `u64` array indexed by [`PathCounter`]: what the programs did on the
/// data path (not drops, so kept apart from [`MAP_COUNTERS`] and its metrics).
pub const MAP_PATH_COUNTERS: &str = "PATH_COUNTERS";
/// Name of the `u64` config array indexed by [`ConfigIndex`].
pub const MAP_CONFIG: &str = "CONFIG";
/// Name of the `u64` array of DNS source ports, a bitmap: port `p` (host order) is enabled
/// when bit `p % 64` of word `p / 64` is set.
pub const MAP_DNS_PORTS: &str = "DNS_PORTS";
/// Number of `u64` words of the DNS port bitmap (65,536 bits).
pub const DNS_PORT_WORDS: u32 = 1024;

/// Capacity of the flow LRU map (number of distinct keys kept in the kernel).
pub const FLOWS_MAX_ENTRIES: u32 = 131_072;
/// Capacity of the map of TCP sockets awaiting their outcome (connects in SYN_SENT).
pub const PENDING_TCP_MAX_ENTRIES: u32 = 65_536;
/// Byte size of the flow ring buffer (a power of two, multiple of the page size).
pub const FLOW_RING_BYTES: u32 = 1 << 20;
/// Byte size of the DNS ring buffer.
pub const DNS_RING_BYTES: u32 = 1 << 21;

/// Default refresh interval: an active key is re-pushed at most once per this many ns.
pub const DEFAULT_REFRESH_NS: u64 = 1_000_000_000;

/// Maximum DNS payload bytes copied per packet (a power of two, ≥ the 1232-byte EDNS default).
pub const DNS_PAYLOAD_MAX: usize = 4096;

/// Aggregation key of one outbound flow: who (cgroup) talked to what (protocol, addr, port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// cgroup v2 id (inode number of the cgroup directory) of the calling task.
    pub cgroup_id: u64,
    /// Destination address, network order; IPv4 in bytes 0..4, rest zero.
    pub addr: [u8; 16],
    /// Destination port, host order (pre-DNAT, as the application asked for it).
    pub port: u16,
    /// IP protocol number ([`PROTO_TCP`], [`PROTO_UDP`], or e.g. ICMP for ping sockets).
    pub protocol: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 4],
}

/// Cumulative state of one [`FlowKey`], kept in the LRU map and updated atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Number of connect/sendmsg events since the key was created (cumulative).
    pub count: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the first event.
    pub first_seen_ns: u64,
    /// `bpf_ktime_get_ns` of the latest event (approximate under cross-CPU races).
    pub last_seen_ns: u64,
    /// Time of the latest successful ring push election; 0 means "push pending/retry".
    pub last_emit_ns: u64,
    /// TCP connections of this key that reached ESTABLISHED (cumulative).
    pub established: u64,
    /// TCP connections of this key that went SYN_SENT -> CLOSE (cumulative).
    pub failed: u64,
    /// The `last_emit_ns` whose window already sent a residual notice (0: none yet). Set by
    /// compare-exchange so that at most one notice is pushed per push window.
    pub notice_emit_ns: u64,
}

/// [`FlowRecord::flags`] bit: the record is a residual notice, not a push. The key had events
/// after its push at `value.last_emit_ns` that did not trigger a push of their own, so user
/// space must read the key back from the map once that push's refresh window is over.
pub const FLOW_RECORD_RESIDUAL: u64 = 1;

/// Ring record for a flow: the key and a snapshot of its cumulative value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowRecord {
    /// The flow key.
    pub key: FlowKey,
    /// Snapshot of the cumulative value, taken right after the triggering event. In a
    /// residual notice, `last_emit_ns` is the push the notice refers to.
    pub value: FlowValue,
    /// Bit set of [`FLOW_RECORD_RESIDUAL`].
    pub flags: u64,
}

/// Header of a [`DnsRecord`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DnsHeader {
    /// cgroup v2 id of the receiving socket (`bpf_skb_cgroup_id`).
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns` at capture.
    pub time_ns: u64,
    /// Source address of the response (the DNS server), network order.
    pub addr: [u8; 16],
    /// Source port of the response, host order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// [`PROTO_UDP`] or [`PROTO_TCP`].
    pub transport: u8,
    /// Bit set of [`DNS_FLAG_TCP_PREFIX`] and [`DNS_FLAG_TRUNCATED`].
    pub flags: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 3],
    /// Number of valid bytes at the start of [`DnsRecord::payload`].
    pub captured_len: u32,
    /// Length of the L4 payload in the packet (may exceed `captured_len`).
    pub payload_len: u32,
}

/// Flag: the payload is TCP and starts with the 2-byte DNS length prefix.
pub const DNS_FLAG_TCP_PREFIX: u8 = 1;
/// Flag: the payload was longer than [`DNS_PAYLOAD_MAX`] and was cut.
pub const DNS_FLAG_TRUNCATED: u8 = 2;

/// Ring record for one DNS response packet. Fixed size because the verifier requires a
/// constant-size ring reservation; the real length is in the header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DnsRecord {
    /// Metadata.
    pub header: DnsHeader,
    /// L4 payload bytes; only the first `header.captured_len` are valid.
    pub payload: [u8; DNS_PAYLOAD_MAX],
}

/// Indices of the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    /// Flow ring pushes attempted (= delivered + [`Counter::FlowRingFull`]).
    FlowProduced = 0,
    /// Flow ring reservations that failed (ring full); the key retries on its next event.
    FlowRingFull = 1,
    /// DNS ring pushes attempted (= delivered + [`Counter::DnsRingFull`] + [`Counter::DnsLoadFailed`]).
    DnsProduced = 2,
    /// DNS ring reservations that failed (ring full); the packet is lost.
    DnsRingFull = 3,
    /// Flow events lost because the LRU map refused a new key.
    FlowMapUpdateFailed = 4,
    /// DNS packets lost because copying the payload failed (record discarded).
    DnsLoadFailed = 5,
    /// TCP outcomes (established/failed) whose flow key had already been evicted.
    OutcomeKeyMissing = 6,
}

impl Counter {
    /// Number of counters (size of the `COUNTERS` array).
    pub const COUNT: u32 = 7;
    /// All counters, in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::FlowProduced,
        Self::FlowRingFull,
        Self::DnsProduced,
        Self::DnsRingFull,
        Self::FlowMapUpdateFailed,
        Self::DnsLoadFailed,
        Self::OutcomeKeyMissing,
    ];
    /// Stable snake_case name (for metrics labels).
    pub const fn name(self) -> &'static str {
        match self {
            Self::FlowProduced => "flow_produced",
            Self::FlowRingFull => "flow_ring_full",
            Self::DnsProduced => "dns_produced",
            Self::DnsRingFull => "dns_ring_full",
            Self::FlowMapUpdateFailed => "flow_map_update_failed",
            Self::DnsLoadFailed => "dns_load_failed",
            Self::OutcomeKeyMissing => "outcome_key_missing",
        }
    }
}

/// Indices of the per-CPU `PATH_COUNTERS` array. Only the slow paths count, so that the fast
/// path stays free: the share of packets that left early is one minus these over the
/// programs' run counts (BPF run-time statistics).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PathCounter {
    /// Ingress packets that passed the early exit and were inspected (possible DNS answers).
    IngressInspected = 0,
}

impl PathCounter {
    /// Number of path counters (size of the `PATH_COUNTERS` array).
    pub const COUNT: u32 = 1;
}

/// Indices of the `CONFIG` array (`u64` values).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigIndex {
    /// Refresh interval in ns; 0 means [`DEFAULT_REFRESH_NS`].
    RefreshNs = 0,
    /// Non-zero disables TCP outcome tracking in `connect4/6` (no pending-socket entry is
    /// made; user space then also leaves `sock_release` detached).
    NoTcpOutcome = 1,
}

impl ConfigIndex {
    /// Number of config slots (size of the `CONFIG` array).
    pub const COUNT: u32 = 2;
}

#[cfg(not(target_arch = "bpf"))]
mod pod {
    // SAFETY: plain-old-data, #[repr(C)], no implicit padding (explicit pad fields), every
    // bit pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    // SAFETY: as above (seven u64).
    unsafe impl aya::Pod for super::FlowValue {}
    // SAFETY: as above (key + value).
    unsafe impl aya::Pod for super::FlowRecord {}
    // SAFETY: as above; explicit pad field, all integer fields.
    unsafe impl aya::Pod for super::DnsHeader {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, size_of};

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FlowKey>(), 8 + 16 + 2 + 1 + 1 + 4);
        assert_eq!(size_of::<FlowValue>(), 7 * 8);
        assert_eq!(size_of::<FlowRecord>(), 32 + 56 + 8);
        assert_eq!(
            size_of::<DnsHeader>(),
            8 + 8 + 16 + 2 + 1 + 1 + 1 + 3 + 4 + 4
        );
        assert_eq!(size_of::<DnsRecord>(), 48 + DNS_PAYLOAD_MAX);
        // Ring reservations are 8-byte aligned.
        assert!(align_of::<FlowRecord>() <= 8);
        assert!(align_of::<DnsRecord>() <= 8);
        assert!(DNS_PAYLOAD_MAX.is_power_of_two() && DNS_PAYLOAD_MAX >= 1232);
    }

    #[test]
    fn counter_indices_are_dense() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
