//! Pure decoding of the kernel's ring records and map entries (no I/O, never panics).

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, SystemTime},
};

use agent_ebpf::{
    DNS_FLAG_TCP_PREFIX, DNS_FLAG_TRUNCATED, DNS_PAYLOAD_MAX, DnsHeader, FAMILY_V4, FAMILY_V6,
    FLOW_RECORD_RESIDUAL, FlowKey, FlowRecord, FlowValue, PROTO_TCP, PROTO_UDP,
};

/// Converts kernel `bpf_ktime_get_ns` timestamps (CLOCK_MONOTONIC) to wall-clock time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelClock {
    /// Wall-clock time at monotonic 0, in ns since the Unix epoch (may be negative in theory;
    /// stored as i128 to avoid overflow).
    boot_realtime_ns: i128,
}

impl KernelClock {
    /// A clock whose monotonic 0 is `boot_realtime_ns` ns after the Unix epoch.
    pub const fn from_offset_ns(boot_realtime_ns: i128) -> Self {
        Self { boot_realtime_ns }
    }

    /// Samples CLOCK_REALTIME and CLOCK_MONOTONIC now to derive the offset.
    pub fn now() -> Self {
        let mono = monotonic_now_ns();
        let real = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Self {
            boot_realtime_ns: real - i128::from(mono),
        }
    }

    /// Wall-clock time of a kernel monotonic timestamp.
    pub fn to_system_time(&self, mono_ns: u64) -> SystemTime {
        let ns = self.boot_realtime_ns + i128::from(mono_ns);
        if ns <= 0 {
            return SystemTime::UNIX_EPOCH;
        }
        let ns = u64::try_from(ns).unwrap_or(u64::MAX);
        SystemTime::UNIX_EPOCH + Duration::from_nanos(ns)
    }
}

/// Current CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Identity of an outbound flow: the kernel aggregation key, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId {
    /// cgroup v2 id (directory inode) of the task that connected/sent.
    pub cgroup_id: u64,
    /// IP protocol number (6 = TCP, 17 = UDP; others possible, e.g. ICMP ping sockets).
    pub protocol: u8,
    /// Destination address as requested (pre-DNAT); IPv4-mapped IPv6 is reported as IPv4.
    pub dst: IpAddr,
    /// Destination port.
    pub dst_port: u16,
}

impl FlowId {
    /// Decodes a kernel key; `None` if its family byte is unknown.
    pub fn from_key(key: &FlowKey) -> Option<Self> {
        let dst = decode_addr(key.family, &key.addr)?;
        Some(Self {
            cgroup_id: key.cgroup_id,
            protocol: key.protocol,
            dst,
            dst_port: key.port,
        })
    }

    /// The kernel key of this flow (for map lookups).
    pub fn to_key(&self) -> FlowKey {
        let mut addr = [0u8; 16];
        let family = match self.dst {
            IpAddr::V4(v4) => {
                addr[..4].copy_from_slice(&v4.octets());
                FAMILY_V4
            }
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                // The kernel stores mapped destinations as IPv4.
                Some(v4) => {
                    addr[..4].copy_from_slice(&v4.octets());
                    FAMILY_V4
                }
                None => {
                    addr = v6.octets();
                    FAMILY_V6
                }
            },
        };
        FlowKey {
            cgroup_id: self.cgroup_id,
            addr,
            port: self.dst_port,
            protocol: self.protocol,
            family,
            pad: [0; 4],
        }
    }

    /// "TCP", "UDP" or the protocol number as text.
    pub fn protocol_name(&self) -> std::borrow::Cow<'static, str> {
        match self.protocol {
            PROTO_TCP => "TCP".into(),
            PROTO_UDP => "UDP".into(),
            1 => "ICMP".into(),
            58 => "ICMPv6".into(),
            n => n.to_string().into(),
        }
    }
}

/// One observation of a flow's **cumulative** kernel state (from a ring record or a map read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSample {
    /// The flow.
    pub id: FlowId,
    /// Events since the kernel entry was created (cumulative).
    pub count: u64,
    /// Kernel monotonic ns of the entry's first event; identifies the entry's incarnation.
    pub first_seen_ns: u64,
    /// Kernel monotonic ns of the latest event.
    pub last_seen_ns: u64,
    /// Kernel monotonic ns of the entry's latest ring push (0: a push failed and is pending);
    /// in a residual notice, the push the notice refers to.
    pub emitted_ns: u64,
    /// True for a residual notice: the key had events after its push at `emitted_ns` that
    /// were not pushed, so it must be read back once that push's refresh window is over.
    /// The cumulative fields are still a valid snapshot.
    pub residual_notice: bool,
    /// TCP connections that reached ESTABLISHED (cumulative).
    pub established: u64,
    /// TCP connections that failed in SYN_SENT (cumulative).
    pub failed: u64,
    /// `first_seen_ns` as wall-clock time.
    pub first_seen: SystemTime,
    /// `last_seen_ns` as wall-clock time.
    pub last_seen: SystemTime,
}

impl FlowSample {
    /// Builds a sample from a kernel key and value; `None` if the key is malformed.
    pub fn from_kernel(key: &FlowKey, value: &FlowValue, clock: &KernelClock) -> Option<Self> {
        Some(Self {
            id: FlowId::from_key(key)?,
            count: value.count,
            first_seen_ns: value.first_seen_ns,
            last_seen_ns: value.last_seen_ns,
            emitted_ns: value.last_emit_ns,
            residual_notice: false,
            established: value.established,
            failed: value.failed,
            first_seen: clock.to_system_time(value.first_seen_ns),
            last_seen: clock.to_system_time(value.last_seen_ns),
        })
    }
}

/// Transport of a captured DNS response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DnsTransport {
    /// DNS over UDP.
    Udp,
    /// DNS over TCP (first segment; the 2-byte length prefix is already stripped).
    Tcp,
}

/// One DNS response packet received by a socket in the attached cgroup tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsPacket {
    /// cgroup v2 id of the receiving socket.
    pub cgroup_id: u64,
    /// Capture time.
    pub time: SystemTime,
    /// The responding server (the packet's source address).
    pub server: IpAddr,
    /// The server's port (the packet's source port).
    pub server_port: u16,
    /// UDP or TCP.
    pub transport: DnsTransport,
    /// The DNS message bytes (for TCP without the length prefix), possibly truncated.
    pub payload: Vec<u8>,
    /// True if `payload` is shorter than the message (kernel copy limit, or a TCP message
    /// spanning several segments).
    pub truncated: bool,
}

/// Why a ring record could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The record is shorter than its fixed layout.
    #[error("{kind} ring record of {len} bytes is shorter than {expected}")]
    Short {
        /// "flow" or "dns".
        kind: &'static str,
        /// Bytes received.
        len: usize,
        /// Bytes required.
        expected: usize,
    },
    /// The address family byte is neither 4 nor 6.
    #[error("{kind} ring record has unknown address family {family}")]
    Family {
        /// "flow" or "dns".
        kind: &'static str,
        /// The family byte.
        family: u8,
    },
}

fn decode_addr(family: u8, addr: &[u8; 16]) -> Option<IpAddr> {
    match family {
        FAMILY_V4 => Some(IpAddr::V4(Ipv4Addr::new(
            addr[0], addr[1], addr[2], addr[3],
        ))),
        FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(*addr))),
        _ => None,
    }
}

/// Decodes a flow ring record.
pub fn decode_flow(bytes: &[u8], clock: &KernelClock) -> Result<FlowSample, DecodeError> {
    let expected = size_of::<FlowRecord>();
    if bytes.len() < expected {
        return Err(DecodeError::Short {
            kind: "flow",
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: length checked; FlowRecord is plain data valid for any bit pattern;
    // read_unaligned because ring data carries no alignment guarantee for our type.
    let record: FlowRecord = unsafe { bytes.as_ptr().cast::<FlowRecord>().read_unaligned() };
    let mut sample =
        FlowSample::from_kernel(&record.key, &record.value, clock).ok_or(DecodeError::Family {
            kind: "flow",
            family: record.key.family,
        })?;
    sample.residual_notice = record.flags & FLOW_RECORD_RESIDUAL != 0;
    Ok(sample)
}

/// Decodes a DNS ring record (header + payload).
pub fn decode_dns(bytes: &[u8], clock: &KernelClock) -> Result<DnsPacket, DecodeError> {
    let header_len = size_of::<DnsHeader>();
    if bytes.len() < header_len {
        return Err(DecodeError::Short {
            kind: "dns",
            len: bytes.len(),
            expected: header_len,
        });
    }
    // SAFETY: length checked; plain data valid for any bit pattern.
    let header: DnsHeader = unsafe { bytes.as_ptr().cast::<DnsHeader>().read_unaligned() };
    let server = decode_addr(header.family, &header.addr).ok_or(DecodeError::Family {
        kind: "dns",
        family: header.family,
    })?;
    let available = &bytes[header_len..];
    let captured = (header.captured_len as usize)
        .min(DNS_PAYLOAD_MAX)
        .min(available.len());
    let mut payload = &available[..captured];
    let mut truncated =
        header.flags & DNS_FLAG_TRUNCATED != 0 || (header.payload_len as usize) > captured;
    let transport = if header.transport == PROTO_TCP {
        DnsTransport::Tcp
    } else {
        DnsTransport::Udp
    };
    if header.flags & DNS_FLAG_TCP_PREFIX != 0 {
        // RFC 1035 4.2.2: a 2-byte big-endian message length precedes the message.
        match payload {
            [hi, lo, rest @ ..] => {
                let message_len = usize::from(u16::from_be_bytes([*hi, *lo]));
                if message_len > rest.len() {
                    truncated = true;
                    payload = rest;
                } else {
                    // Pipelined responses after the first one are not decoded.
                    truncated = false;
                    payload = &rest[..message_len];
                }
            }
            _ => {
                truncated = true;
                payload = &[];
            }
        }
    }
    Ok(DnsPacket {
        cgroup_id: header.cgroup_id,
        time: clock.to_system_time(header.time_ns),
        server,
        server_port: header.port,
        transport,
        payload: payload.to_vec(),
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_ebpf::DnsRecord;
    use proptest::prelude::*;

    fn flow_bytes(record: &FlowRecord) -> Vec<u8> {
        // SAFETY: FlowRecord is plain data without implicit padding.
        unsafe {
            std::slice::from_raw_parts(
                (record as *const FlowRecord).cast::<u8>(),
                size_of::<FlowRecord>(),
            )
        }
        .to_vec()
    }

    fn dns_bytes(header: DnsHeader, payload: &[u8]) -> Vec<u8> {
        let mut record = DnsRecord {
            header,
            payload: [0; DNS_PAYLOAD_MAX],
        };
        record.payload[..payload.len()].copy_from_slice(payload);
        // SAFETY: DnsRecord is plain data without implicit padding.
        unsafe {
            std::slice::from_raw_parts(
                (&record as *const DnsRecord).cast::<u8>(),
                size_of::<DnsRecord>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn flow_record_round_trips_through_flow_id() {
        let clock = KernelClock::from_offset_ns(1_700_000_000_000_000_000);
        let id = FlowId {
            cgroup_id: 42,
            protocol: PROTO_TCP,
            dst: "2001:db8::7".parse().unwrap(),
            dst_port: 443,
        };
        let value = FlowValue {
            count: 9,
            first_seen_ns: 5,
            last_seen_ns: 1_000_000_005,
            last_emit_ns: 5,
            established: 3,
            failed: 1,
            notice_emit_ns: 0,
        };
        let sample = decode_flow(
            &flow_bytes(&FlowRecord {
                key: id.to_key(),
                value,
                flags: 0,
            }),
            &clock,
        )
        .unwrap();
        assert_eq!(sample.id, id);
        assert!(!sample.residual_notice);
        let notice = decode_flow(
            &flow_bytes(&FlowRecord {
                key: id.to_key(),
                value,
                flags: FLOW_RECORD_RESIDUAL,
            }),
            &clock,
        )
        .unwrap();
        assert!(notice.residual_notice);
        assert_eq!(notice.emitted_ns, 5);
        assert_eq!((sample.count, sample.established, sample.failed), (9, 3, 1));
        assert_eq!(
            sample.last_seen.duration_since(sample.first_seen).unwrap(),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn mapped_ipv6_keys_are_ipv4() {
        let id = FlowId {
            cgroup_id: 1,
            protocol: PROTO_UDP,
            dst: "::ffff:203.0.113.9".parse().unwrap(),
            dst_port: 53,
        };
        let key = id.to_key();
        assert_eq!(key.family, FAMILY_V4);
        assert_eq!(
            FlowId::from_key(&key).unwrap().dst,
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn short_and_bad_family_records_are_errors() {
        let clock = KernelClock::from_offset_ns(0);
        assert!(matches!(
            decode_flow(&[0; 10], &clock),
            Err(DecodeError::Short { .. })
        ));
        let mut record = FlowRecord::default();
        record.key.family = 9;
        assert_eq!(
            decode_flow(&flow_bytes(&record), &clock),
            Err(DecodeError::Family {
                kind: "flow",
                family: 9
            })
        );
    }

    fn header(flags: u8, transport: u8, captured: u32, payload_len: u32) -> DnsHeader {
        DnsHeader {
            cgroup_id: 7,
            time_ns: 0,
            addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: 53,
            family: FAMILY_V4,
            transport,
            flags,
            pad: [0; 3],
            captured_len: captured,
            payload_len,
        }
    }

    #[test]
    fn tcp_prefix_is_stripped() {
        let clock = KernelClock::from_offset_ns(0);
        let bytes = dns_bytes(
            header(DNS_FLAG_TCP_PREFIX, PROTO_TCP, 5, 5),
            &[0, 3, 1, 2, 3],
        );
        let packet = decode_dns(&bytes, &clock).unwrap();
        assert_eq!(packet.payload, vec![1, 2, 3]);
        assert!(!packet.truncated);
        assert_eq!(packet.transport, DnsTransport::Tcp);
        // A message longer than the segment is flagged truncated.
        let bytes = dns_bytes(
            header(DNS_FLAG_TCP_PREFIX, PROTO_TCP, 5, 5),
            &[0, 9, 1, 2, 3],
        );
        let packet = decode_dns(&bytes, &clock).unwrap();
        assert_eq!(packet.payload, vec![1, 2, 3]);
        assert!(packet.truncated);
    }

    #[test]
    fn udp_truncation_flag_is_reported() {
        let clock = KernelClock::from_offset_ns(0);
        let bytes = dns_bytes(
            header(DNS_FLAG_TRUNCATED, PROTO_UDP, 4, 5000),
            &[1, 2, 3, 4],
        );
        let packet = decode_dns(&bytes, &clock).unwrap();
        assert_eq!(packet.payload, vec![1, 2, 3, 4]);
        assert!(packet.truncated);
        assert_eq!(packet.server, "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let clock = KernelClock::from_offset_ns(0);
            let _ = decode_flow(&bytes, &clock);
            if let Ok(packet) = decode_dns(&bytes, &clock) {
                prop_assert!(packet.payload.len() <= DNS_PAYLOAD_MAX);
            }
        }
    }
}
