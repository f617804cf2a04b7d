//! The programs themselves; see the crate docs for the overview.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd},
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
};

use agent_ebpf::{
    ConfigIndex, Counter, DEFAULT_REFRESH_NS, DNS_FLAG_TCP_PREFIX, DNS_FLAG_TRUNCATED,
    DNS_PAYLOAD_MAX, DNS_PORT_WORDS, DNS_RING_BYTES, DnsHeader, DnsRecord, FAMILY_V4, FAMILY_V6,
    FLOW_RECORD_RESIDUAL, FLOW_RING_BYTES, FLOWS_MAX_ENTRIES, FlowKey, FlowRecord, FlowValue,
    PENDING_TCP_MAX_ENTRIES, PROTO_TCP, PROTO_UDP, PathCounter,
};
use aya_ebpf::{
    bindings::__sk_buff,
    bindings::{BPF_NOEXIST, BPF_SK_STORAGE_GET_F_CREATE},
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_sk_storage_get,
        bpf_skb_cgroup_id, bpf_skb_load_bytes,
    },
    macros::{btf_map, cgroup_skb, cgroup_sock, cgroup_sock_addr, map},
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{SkBuffContext, SockAddrContext, SockContext, sk_buff::SkBuff},
};

/// Verdict of cgroup_sock_addr / cgroup_skb programs that lets the operation proceed.
const ALLOW: i32 = 1;
const EEXIST: i64 = 17;

#[map]
static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::with_max_entries(FLOWS_MAX_ENTRIES, 0);

#[map]
static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_RING_BYTES, 0);

#[map]
static DNS_EVENTS: RingBuf = RingBuf::with_byte_size(DNS_RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Counter::COUNT, 0);

#[map]
static PATH_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(PathCounter::COUNT, 0);

#[map]
static CONFIG: Array<u64> = Array::with_max_entries(ConfigIndex::COUNT, 0);

/// DNS source ports as a bitmap: bit `port % 64` of word `port / 64`. An array lookup is
/// inlined by the verifier, so a test costs a few instructions and no hashing.
#[map]
static DNS_PORTS: Array<u64> = Array::with_max_entries(DNS_PORT_WORDS, 0);

/// The flow key of each TCP socket in SYN_SENT, by socket cookie, stored at connect time so
/// that the outcome can be credited to the pre-DNAT destination and the connecting task's
/// cgroup later, in contexts (softirq) where the current cgroup is unrelated. The entry is
/// removed at the outcome: a SYN-ACK (established) or RST (refused) seen by `leash_ingress`,
/// or the socket's release while still pending (failed: timed out or abandoned). LRU bounds
/// the map if an outcome is ever missed. A preallocated hash costs no allocation per connect.
/// Measured with `benches/datapath.rs` (`connect4` ns per run, README): socket storage
/// (allocated per socket) and a plain preallocated hash cost the same as this LRU hash, so
/// the LRU stays.
#[map]
static PENDING_TCP: LruHashMap<u64, FlowKey> =
    LruHashMap::with_max_entries(PENDING_TCP_MAX_ENTRIES, 0);

/// Atomic `*p += 1` (BPF `lock xadd`). The bpf target has no `AtomicU64::fetch_add`
/// (it declares no CAS support), so the intrinsic is used directly.
///
/// # Safety
/// `p` must point to a live, 8-byte aligned u64 (a map value field).
#[inline(always)]
unsafe fn atomic_inc(p: *mut u64) {
    // SAFETY: guaranteed by the caller.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1) };
}

/// Atomic compare-exchange (BPF_CMPXCHG, ISA v3); true if `*p` was `old` and is now `new`.
///
/// # Safety
/// As [`atomic_inc`].
#[inline(always)]
unsafe fn atomic_cas(p: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: guaranteed by the caller.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(p, old, new)
    }
    .1
}

#[inline(always)]
fn bump(counter: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: `p` points into this CPU's slot of a live map value; the atomic add keeps a
        // softirq on the same CPU from losing an increment.
        unsafe { atomic_inc(p) };
    }
}

#[inline(always)]
fn refresh_ns() -> u64 {
    match CONFIG.get(ConfigIndex::RefreshNs as u32) {
        Some(&ns) if ns != 0 => ns,
        _ => DEFAULT_REFRESH_NS,
    }
}

/// Pushes a snapshot of `key`'s value with `flags`; in a residual notice (`flags` has
/// [`FLOW_RECORD_RESIDUAL`]) the snapshot's `last_emit_ns` is replaced by `emit_ns`, the push the
/// notice refers to. Returns false (and counts the cause) on failure.
#[inline(always)]
fn push_record(key: &FlowKey, value: *const FlowValue, flags: u64, emit_ns: u64) -> bool {
    bump(Counter::FlowProduced);
    match FLOW_EVENTS.reserve::<FlowRecord>(0) {
        Some(mut entry) => {
            // SAFETY: `value` points at a live map value (or a stack copy).
            let mut value = unsafe { read_volatile(value) };
            if flags & FLOW_RECORD_RESIDUAL != 0 {
                value.last_emit_ns = emit_ns;
            }
            entry.write(FlowRecord {
                key: *key,
                value,
                flags,
            });
            entry.submit(0);
            true
        }
        None => {
            bump(Counter::FlowRingFull);
            false
        }
    }
}

/// Pushes a snapshot of `key`'s value; returns false (and counts the cause) on failure.
#[inline(always)]
fn push_flow(key: &FlowKey, value: *const FlowValue) -> bool {
    push_record(key, value, 0, 0)
}

/// An event of `key` was counted but not pushed because the push at `emit` is less than one
/// refresh interval old: tells user space once per push window, so that it reads the key back
/// only when there is something to read.
#[inline(always)]
fn notice_residual(key: &FlowKey, value: *mut FlowValue, emit: u64) {
    // SAFETY: `value` is a live map value; its fields are naturally aligned u64s.
    let notice = unsafe { addr_of_mut!((*value).notice_emit_ns) };
    // SAFETY: as above.
    let seen = unsafe { read_volatile(notice) };
    if emit == 0 || seen == emit {
        return;
    }
    // SAFETY: as above. Only the CPU that swaps in `emit` sends the notice.
    if !unsafe { atomic_cas(notice, seen, emit) } {
        return;
    }
    if !push_record(key, value, FLOW_RECORD_RESIDUAL, emit) {
        // Counted as a flow drop (user space then sweeps the map); let a later event retry.
        // SAFETY: as above.
        unsafe { atomic_cas(notice, emit, seen) };
    }
}

/// Pushes a record for an existing key if its last push is at least one refresh interval old
/// (or failed: `last_emit_ns == 0`). A compare-exchange elects a single pusher across CPUs.
/// Otherwise the event is a residual of the latest push: see [`notice_residual`].
#[inline(always)]
fn maybe_emit(key: &FlowKey, value: *mut FlowValue, now: u64) {
    // SAFETY: `value` is a live map value; its fields are naturally aligned u64s.
    let last_emit = unsafe { addr_of_mut!((*value).last_emit_ns) };
    // SAFETY: as above.
    let previous = unsafe { read_volatile(last_emit) };
    if previous != 0 && (now <= previous || now - previous < refresh_ns()) {
        notice_residual(key, value, previous);
        return;
    }
    // SAFETY: as above.
    if !unsafe { atomic_cas(last_emit, previous, now) } {
        // Another CPU pushed (or failed) first; its snapshot may not include this event, so
        // treat the event as a residual of whatever push is current.
        // SAFETY: as above.
        let current = unsafe { read_volatile(last_emit) };
        notice_residual(key, value, current);
        return;
    }
    if !push_flow(key, value) {
        // Leave the entry marked so that the next event retries the push. If another CPU
        // already re-marked it, keep its state.
        // SAFETY: as above.
        unsafe { atomic_cas(last_emit, now, 0) };
    }
}

/// Counts one event for an existing entry.
#[inline(always)]
fn add_event(key: &FlowKey, value: *mut FlowValue, now: u64) {
    // SAFETY: live map value, aligned u64 fields.
    unsafe {
        atomic_inc(addr_of_mut!((*value).count));
        // A plain store: concurrent writers race benignly (both are "now").
        write_volatile(addr_of_mut!((*value).last_seen_ns), now);
    }
    maybe_emit(key, value, now);
}

/// Counts one connect/sendmsg event for `key`.
#[inline(always)]
fn record_flow(key: &FlowKey) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(value) = FLOWS.get_ptr_mut(key) {
        add_event(key, value, now);
        return;
    }
    let fresh = FlowValue {
        count: 1,
        first_seen_ns: now,
        last_seen_ns: now,
        last_emit_ns: now,
        established: 0,
        failed: 0,
        notice_emit_ns: 0,
    };
    match FLOWS.insert(key, fresh, BPF_NOEXIST.into()) {
        Ok(()) => {
            if !push_flow(key, &fresh)
                && let Some(value) = FLOWS.get_ptr_mut(key)
            {
                // SAFETY: live map value.
                unsafe { atomic_cas(addr_of_mut!((*value).last_emit_ns), now, 0) };
            }
        }
        // Another CPU created the key between our lookup and insert.
        Err(e) if i64::from(e) == -EEXIST => match FLOWS.get_ptr_mut(key) {
            Some(value) => add_event(key, value, now),
            None => bump(Counter::FlowMapUpdateFailed),
        },
        Err(_) => bump(Counter::FlowMapUpdateFailed),
    }
}

#[inline(always)]
fn v4_key(cgroup_id: u64, ip_be: u32, port: u16, protocol: u8) -> FlowKey {
    let mut addr = [0u8; 16];
    let b = ip_be.to_ne_bytes();
    addr[0] = b[0];
    addr[1] = b[1];
    addr[2] = b[2];
    addr[3] = b[3];
    FlowKey {
        cgroup_id,
        addr,
        port,
        protocol,
        family: FAMILY_V4,
        pad: [0; 4],
    }
}

/// Builds the flow key of a sock_addr hook call. `v6` selects `user_ip6` (with IPv4-mapped
/// addresses unwrapped to IPv4).
#[inline(always)]
fn sock_addr_key(ctx: &SockAddrContext, v6: bool) -> FlowKey {
    let sa = ctx.sock_addr;
    // SAFETY: the context pointer is valid for the whole program run; every field is read
    // with a single aligned load at a constant offset, as the verifier requires.
    let (port, protocol) = unsafe {
        (
            u16::from_be(read_volatile(addr_of!((*sa).user_port)) as u16),
            read_volatile(addr_of!((*sa).protocol)) as u8,
        )
    };
    // SAFETY: helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    if !v6 {
        // SAFETY: as above.
        let ip = unsafe { read_volatile(addr_of!((*sa).user_ip4)) };
        return v4_key(cgroup_id, ip, port, protocol);
    }
    // SAFETY: as above; the four words are read separately (an array read through the
    // context pointer is rejected as a "modified ctx ptr" dereference).
    let w = unsafe {
        [
            read_volatile(addr_of!((*sa).user_ip6[0])),
            read_volatile(addr_of!((*sa).user_ip6[1])),
            read_volatile(addr_of!((*sa).user_ip6[2])),
            read_volatile(addr_of!((*sa).user_ip6[3])),
        ]
    };
    if w[0] == 0 && w[1] == 0 && w[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff]) {
        return v4_key(cgroup_id, w[3], port, protocol);
    }
    let mut addr = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = w[i].to_ne_bytes();
        addr[i * 4] = b[0];
        addr[i * 4 + 1] = b[1];
        addr[i * 4 + 2] = b[2];
        addr[i * 4 + 3] = b[3];
        i += 1;
    }
    FlowKey {
        cgroup_id,
        addr,
        port,
        protocol,
        family: FAMILY_V6,
        pad: [0; 4],
    }
}

#[inline(always)]
fn try_connect(ctx: &SockAddrContext, v6: bool) -> Result<i32, i32> {
    let key = sock_addr_key(ctx, v6);
    record_flow(&key);
    if key.protocol == PROTO_TCP
        && !matches!(CONFIG.get(ConfigIndex::NoTcpOutcome as u32), Some(&v) if v != 0)
    {
        // SAFETY: helper on this program's context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast()) };
        // A failed insert only loses this socket's outcome (counted as missing later).
        let _ = PENDING_TCP.insert(cookie, key, 0);
    }
    Ok(ALLOW)
}

#[inline(always)]
fn try_sendmsg(ctx: &SockAddrContext, v6: bool) -> Result<i32, i32> {
    let key = sock_addr_key(ctx, v6);
    record_flow(&key);
    Ok(ALLOW)
}

/// Observes IPv4 `connect()` (TCP, connected UDP).
#[cgroup_sock_addr(connect4)]
pub fn leash_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect(&ctx, false) {
        Ok(v) | Err(v) => v,
    }
}

/// Observes IPv6 `connect()`, including IPv4-mapped destinations.
#[cgroup_sock_addr(connect6)]
pub fn leash_connect6(ctx: SockAddrContext) -> i32 {
    match try_connect(&ctx, true) {
        Ok(v) | Err(v) => v,
    }
}

/// Observes unconnected IPv4 UDP `sendto()/sendmsg()`.
#[cgroup_sock_addr(sendmsg4)]
pub fn leash_sendmsg4(ctx: SockAddrContext) -> i32 {
    match try_sendmsg(&ctx, false) {
        Ok(v) | Err(v) => v,
    }
}

/// Observes unconnected IPv6 UDP `sendto()/sendmsg()`.
#[cgroup_sock_addr(sendmsg6)]
pub fn leash_sendmsg6(ctx: SockAddrContext) -> i32 {
    match try_sendmsg(&ctx, true) {
        Ok(v) | Err(v) => v,
    }
}

/// Which TCP outcome to count.
#[derive(Clone, Copy)]
enum Outcome {
    Established,
    Failed,
}

/// Credits the outcome of a pending TCP connect (by socket cookie) to its flow, once.
#[inline(always)]
fn settle_pending(cookie: u64, outcome: Outcome) {
    // SAFETY: the value is copied out before the entry is removed.
    let Some(key) = (unsafe { PENDING_TCP.get(cookie) }).copied() else {
        return;
    };
    // Only the CPU whose delete succeeds counts, so a race never counts twice.
    if PENDING_TCP.remove(cookie).is_err() {
        return;
    }
    let Some(value) = FLOWS.get_ptr_mut(key) else {
        bump(Counter::OutcomeKeyMissing);
        return;
    };
    // SAFETY: live map value, aligned u64 fields.
    unsafe {
        let field = match outcome {
            Outcome::Established => addr_of_mut!((*value).established),
            Outcome::Failed => addr_of_mut!((*value).failed),
        };
        atomic_inc(field);
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    maybe_emit(&key, value, now);
}

/// A TCP socket is released (closed): if its connect never got a SYN-ACK or RST, it failed
/// (timed out, or was given up by the application).
#[cgroup_sock(sock_release)]
pub fn leash_sock_release(ctx: SockContext) -> i32 {
    match try_sock_release(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

fn try_sock_release(ctx: &SockContext) -> Result<i32, i32> {
    // SAFETY: ctx field read at a constant offset.
    let protocol = unsafe { read_volatile(addr_of!((*ctx.sock).protocol)) };
    if protocol == u32::from(PROTO_TCP) {
        // SAFETY: helper on this program's context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
        settle_pending(cookie, Outcome::Failed);
    }
    Ok(ALLOW)
}

/// Per-socket position of the next DNS message in a TCP stream (RFC 1035 4.2.2 framing).
#[repr(C)]
#[derive(Clone, Copy)]
struct DnsTcpState {
    /// Sequence number at which the next 2-byte length prefix starts.
    next_seq: u32,
    /// 0 until the first DNS segment of the socket was seen.
    valid: u32,
}

/// Lets `leash_dns_ingress` take only segments that start a DNS message (the first segment
/// of each response), skipping continuation segments and retransmissions.
#[btf_map]
static DNS_TCP: SkStorage<DnsTcpState> = SkStorage::new();

/// Decides whether a TCP segment with sequence `seq` starts a DNS message and, if so, records
/// where the following message starts. Without socket storage it errs on capturing.
#[inline(always)]
fn tcp_segment_starts_message(skb: &SkBuff, seq: u32, message_len: u16) -> bool {
    // SAFETY: ctx field read; the verifier types it as a nullable socket pointer.
    let sk = unsafe { read_volatile(addr_of!((*skb.skb).__bindgen_anon_2.sk)) };
    if sk.is_null() {
        return true;
    }
    let map = core::ptr::from_ref(&DNS_TCP).cast_mut().cast::<c_void>();
    // SAFETY: the helper validates `sk` (full socket only) and zero-initialises a new value.
    let state = unsafe {
        bpf_sk_storage_get(
            map,
            sk.cast(),
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
    }
    .cast::<DnsTcpState>();
    if state.is_null() {
        return true;
    }
    // SAFETY: non-null pointer to this socket's storage; the socket is locked on receive.
    unsafe {
        if (*state).valid != 0 && (*state).next_seq != seq {
            return false;
        }
        (*state).next_seq = seq.wrapping_add(2).wrapping_add(u32::from(message_len));
        (*state).valid = 1;
    }
    true
}

#[inline(always)]
fn is_dns_port(port: u16) -> bool {
    DNS_PORTS
        .get(u32::from(port >> 6))
        .is_some_and(|&word| word & (1u64 << (port & 63)) != 0)
}

const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// Whether the `CONFIG` slot `index` is non-zero.
#[inline(always)]
fn config_flag(index: ConfigIndex) -> bool {
    matches!(CONFIG.get(index as u32), Some(&v) if v != 0)
}

/// The early exit: true if the packet can be neither a DNS answer nor a TCP handshake reply,
/// decided from the receiving socket and, for TCP, the flags byte read directly from the
/// packet (no helper call, no hash lookup).
///
/// A connected socket (a non-zero remote port: every TCP socket, a connected UDP socket)
/// receives only from its peer, so a packet's source port is the socket's remote port: if that
/// is not a DNS port, the packet is no DNS answer. What remains is a TCP SYN-ACK or RST, whose
/// outcome `connect4/6` may be waiting for. Unconnected sockets and listeners (remote port 0),
/// DNS peers and anything the direct read cannot see go the slow path, unchanged.
#[inline(always)]
fn leaves_early(skb: *mut __sk_buff) -> bool {
    // SAFETY: ctx field reads at constant offsets; the verifier rewrites `remote_port` into a
    // load of the socket's `skc_dport` (network order, in the upper 16 bits on little-endian)
    // and `data`/`data_end` into packet pointers (CAP_BPF).
    let (remote, data, end) = unsafe {
        (
            read_volatile(addr_of!((*skb).remote_port)),
            read_volatile(addr_of!((*skb).data)) as usize,
            read_volatile(addr_of!((*skb).data_end)) as usize,
        )
    };
    let remote = u16::from_be((remote >> 16) as u16);
    if remote == 0 || is_dns_port(remote) {
        return false;
    }
    if config_flag(ConfigIndex::NoTcpOutcome) {
        return true;
    }
    if data + 40 > end {
        return false;
    }
    // SAFETY: bounds checked against `data_end` just above (40 bytes: either IP header).
    let first = unsafe { *(data as *const u8) };
    let (protocol, l4) = match first >> 4 {
        // SAFETY: as above.
        4 => (
            unsafe { *((data + 9) as *const u8) },
            usize::from(first & 0x0f) * 4,
        ),
        // SAFETY: as above.
        6 => (unsafe { *((data + 6) as *const u8) }, 40),
        _ => return false,
    };
    if protocol != PROTO_TCP {
        // The slow path inspects only UDP and TCP.
        return true;
    }
    if data + l4 + 14 > end {
        return false;
    }
    // SAFETY: bounds checked just above; `l4` is at most 60.
    let flags = unsafe { *((data + l4 + 13) as *const u8) };
    flags & (TCP_SYN | TCP_RST) == 0
}

fn try_ingress(ctx: &SkBuffContext) -> Result<i32, i32> {
    let skb = &ctx.skb;
    if leaves_early(skb.skb) {
        return Ok(ALLOW);
    }
    if let Some(p) = PATH_COUNTERS.get_ptr_mut(PathCounter::IngressInspected as u32) {
        // SAFETY: this CPU's slot of a live map value. A plain add: ingress programs run with
        // bottom halves off and do not nest on one CPU, and nothing else writes this slot.
        unsafe { *p += 1 };
    }
    let len = skb.len();
    let first: u8 = skb.load(0).map_err(|_| ALLOW)?;
    let (family, l4, protocol) = match first >> 4 {
        4 => {
            let protocol: u8 = skb.load(9).map_err(|_| ALLOW)?;
            (FAMILY_V4, u32::from(first & 0x0f) * 4, protocol)
        }
        // No extension headers: the next header must be UDP or TCP directly.
        6 => (FAMILY_V6, 40, skb.load::<u8>(6).map_err(|_| ALLOW)?),
        _ => return Ok(ALLOW),
    };
    let (payload_off, flags) = match protocol {
        PROTO_UDP => (l4 + 8, 0u8),
        PROTO_TCP => {
            // Data offset and flags bytes.
            let [doff, tcp_flags]: [u8; 2] = skb.load(l4 as usize + 12).map_err(|_| ALLOW)?;
            // TCP outcome of our connects: SYN-ACK = established, RST in SYN_SENT = refused.
            if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN | TCP_ACK {
                // SAFETY: helper on this program's skb.
                settle_pending(
                    unsafe { bpf_get_socket_cookie(skb.skb.cast()) },
                    Outcome::Established,
                );
            } else if tcp_flags & TCP_RST != 0 {
                // SAFETY: as above.
                settle_pending(
                    unsafe { bpf_get_socket_cookie(skb.skb.cast()) },
                    Outcome::Failed,
                );
            }
            (l4 + u32::from(doff >> 4) * 4, DNS_FLAG_TCP_PREFIX)
        }
        _ => return Ok(ALLOW),
    };
    let sport = u16::from_be(skb.load::<u16>(l4 as usize).map_err(|_| ALLOW)?);
    if !is_dns_port(sport) || payload_off >= len {
        return Ok(ALLOW);
    }
    let mut addr = [0u8; 16];
    if family == FAMILY_V4 {
        let src: [u8; 4] = skb.load(12).map_err(|_| ALLOW)?;
        addr[0] = src[0];
        addr[1] = src[1];
        addr[2] = src[2];
        addr[3] = src[3];
    } else {
        addr = skb.load(8).map_err(|_| ALLOW)?;
    }
    let payload_len = len - payload_off;
    if protocol == PROTO_TCP {
        let seq = u32::from_be(skb.load::<u32>(l4 as usize + 4).map_err(|_| ALLOW)?);
        // A 1-byte segment cannot hold the prefix; take it as a message start anyway.
        let message_len = if payload_len >= 2 {
            u16::from_be(skb.load::<u16>(payload_off as usize).map_err(|_| ALLOW)?)
        } else {
            0
        };
        if !tcp_segment_starts_message(skb, seq, message_len) {
            return Ok(ALLOW);
        }
    }
    bump(Counter::DnsProduced);
    let Some(mut entry) = DNS_EVENTS.reserve::<DnsRecord>(0) else {
        bump(Counter::DnsRingFull);
        return Ok(ALLOW);
    };
    let max = DNS_PAYLOAD_MAX as u32;
    let (n, flags) = if payload_len > max {
        (max, flags | DNS_FLAG_TRUNCATED)
    } else {
        (payload_len, flags)
    };
    // `n >= 1` holds (payload_off < len); this form lets the verifier bound it to 1..=MAX.
    // SAFETY: reading a local.
    let n = ((unsafe { read_volatile(&n) } - 1) & (max - 1)) + 1;
    let record = entry.as_mut_ptr();
    // SAFETY: `record` is a reserved, writable ring slot of size_of::<DnsRecord>() bytes;
    // the helper writes at most `n <= DNS_PAYLOAD_MAX` bytes into the payload array.
    let rc = unsafe {
        bpf_skb_load_bytes(
            skb.skb.cast::<c_void>().cast_const(),
            payload_off,
            addr_of_mut!((*record).payload).cast(),
            n,
        )
    };
    if rc < 0 {
        entry.discard(0);
        bump(Counter::DnsLoadFailed);
        return Ok(ALLOW);
    }
    // SAFETY: helper on this program's skb; helper without arguments.
    let (cgroup_id, time_ns) = unsafe { (bpf_skb_cgroup_id(skb.skb), bpf_ktime_get_ns()) };
    // SAFETY: as above, writing the header part of the slot.
    unsafe {
        addr_of_mut!((*record).header).write(DnsHeader {
            cgroup_id,
            time_ns,
            addr,
            port: sport,
            family,
            transport: protocol,
            flags,
            pad: [0; 3],
            captured_len: n,
            payload_len,
        });
    }
    entry.submit(0);
    Ok(ALLOW)
}

/// Copies DNS responses received by sockets of the cgroup to user space, and settles the
/// outcome of pending TCP connects (SYN-ACK / RST).
#[cgroup_skb(ingress)]
pub fn leash_ingress(ctx: SkBuffContext) -> i32 {
    match try_ingress(&ctx) {
        Ok(v) | Err(v) => v,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// Only non-GPL helpers are used; the project's own license applies.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 11] = *b"Apache-2.0\0";
