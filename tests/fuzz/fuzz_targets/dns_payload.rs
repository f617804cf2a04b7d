//! The agent's DNS path, from the kernel's ring record to the v1 record the recommender stores:
//! `capture::decode_dns` (header, DNS-over-TCP length prefix: the agent's TCP reassembly of an
//! answer's first segment), then `dns::DnsTracker::observe` (hickory parsing, name checks,
//! bounds, the IP → names cache).
//!
//! Input: byte 0 picks the mode. Bit 0 set: the rest is a raw ring record (any header). Else a
//! header is built around the rest as the payload: bit 1 `DNS_FLAG_TCP_PREFIX`, bit 2
//! `DNS_FLAG_TRUNCATED`, bit 3 TCP transport, bit 4 an IPv6 server; byte 1 is how many bytes
//! the packet had beyond those captured.
//!
//! Besides not panicking, every record the agent builds must be one the recommender takes:
//! its JSON line reads back equal (`leash::observations::parse_record`) and the gRPC batch
//! carrying it converts back with nothing refused (`wire::grouped_batch_from_wire`).
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use agent_ebpf::{DNS_FLAG_TCP_PREFIX, DNS_FLAG_TRUNCATED, DnsHeader, FAMILY_V4, FAMILY_V6};
use chrono::{DateTime, TimeDelta, Utc};
use leash_agent::attribution::Attribution;
use leash_agent::capture::{KernelClock, decode_dns};
use leash_agent::dns::{DnsCacheConfig, DnsTracker};
use leash_agent::metrics::Metrics;
use leash_records::Record;
use leash_records::wire::{self, v1};
use libfuzzer_sys::fuzz_target;

/// 2026-11-25T09:00:00Z: a fixed capture time keeps runs reproducible.
const T0: i64 = 1_795_597_200;

fn ring_record(mode: u8, extra: u8, payload: &[u8]) -> Vec<u8> {
    let v6 = mode & 16 != 0;
    let header = DnsHeader {
        cgroup_id: 42,
        time_ns: 1_000_000_000,
        addr: if v6 {
            // 2001:db8::53
            [
                0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x53,
            ]
        } else {
            [198, 51, 100, 53, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        },
        port: 53,
        family: if v6 { FAMILY_V6 } else { FAMILY_V4 },
        transport: if mode & 8 != 0 { 6 } else { 17 },
        flags: (if mode & 2 != 0 {
            DNS_FLAG_TCP_PREFIX
        } else {
            0
        }) | (if mode & 4 != 0 { DNS_FLAG_TRUNCATED } else { 0 }),
        pad: [0; 3],
        captured_len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        payload_len: u32::try_from(payload.len() + usize::from(extra)).unwrap_or(u32::MAX),
    };
    // SAFETY: DnsHeader is #[repr(C)] plain data without implicit padding (`pad` is explicit).
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&raw const header).cast::<u8>(),
            std::mem::size_of::<DnsHeader>(),
        )
    };
    let mut record = bytes.to_vec();
    record.extend_from_slice(payload);
    record
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let record = if mode & 1 != 0 {
        rest.to_vec()
    } else {
        let Some((&extra, payload)) = rest.split_first() else {
            return;
        };
        ring_record(mode, extra, payload)
    };
    let clock = KernelClock::from_offset_ns(i128::from(T0) * 1_000_000_000);
    let Ok(packet) = decode_dns(&record, &clock) else {
        return;
    };
    assert!(packet.payload.len() <= record.len());

    let time = DateTime::<Utc>::from_timestamp(T0, 0).unwrap_or_default();
    let server = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 53));
    let attribution = Attribution::cgroup_only("/kubepods.slice/fuzz");
    let mut tracker = DnsTracker::new(DnsCacheConfig::default(), Metrics::new());
    let Some(dns) = tracker.observe(&packet.payload, server, time, "node-1", &attribution) else {
        return;
    };
    for answer in &dns.answers {
        if let Ok(ip) = answer.data.parse::<IpAddr>() {
            let _ = tracker.names_for(&attribution, ip, time);
        }
    }
    tracker.purge(time + TimeDelta::days(1));

    // The JSON line the agent writes reads back as the same record.
    let record = Record::Dns(dns.clone());
    let line = record.to_json_line();
    assert_eq!(
        leash::observations::parse_record(&line).as_ref(),
        Ok(&record),
        "{line}"
    );

    // The batch the agent sends is taken whole by the recommender.
    let id = v1::BatchId {
        node: "node-1".into(),
        boot_id: "3f0e6b7a-0000-4000-8000-000000000001".into(),
        seq: 1,
    };
    let batch = wire::batch_to_wire(id, &[], std::slice::from_ref(&dns))
        .expect("the agent's DNS record converts to the wire");
    let back = wire::grouped_batch_from_wire(batch).expect("the batch id is valid");
    assert!(
        back.refused.is_empty(),
        "the recommender refuses a record the agent built: {:?}",
        back.refused
            .iter()
            .map(wire::Refused::detail)
            .collect::<Vec<_>>()
    );
    assert_eq!(back.dns, vec![dns]);
});
