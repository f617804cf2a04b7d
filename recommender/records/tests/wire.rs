//! The wire contract: contract → wire → bytes → wire → contract is the identity for valid
//! records, malformed wire records are rejected naming record and field, nothing panics.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use leash_records::wire::{self, RecordIndex, WireError, v1};
use leash_records::{DnsAnswer, DnsRecord, FlowRecord, Outcome, PodRef, Protocol};
use proptest::prelude::*;
use prost::Message as _;

const NODE: &str = "node-a";

fn id() -> v1::BatchId {
    v1::BatchId {
        node: NODE.into(),
        boot_id: "3f0c".into(),
        seq: 7,
    }
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

/// Any time the wire accepts: after the epoch, not after now (record::check_time).
fn time() -> impl Strategy<Value = DateTime<Utc>> {
    let now = Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX);
    (1..now).prop_map(DateTime::from_timestamp_nanos)
}

fn pod() -> impl Strategy<Value = Option<PodRef>> {
    proptest::option::of(
        ("[a-f0-9-]{0,12}", "[a-z]{1,8}", "[a-z0-9-]{1,12}").prop_map(|(uid, namespace, name)| {
            PodRef {
                uid,
                namespace,
                name,
            }
        }),
    )
}

fn flow() -> impl Strategy<Value = FlowRecord> {
    (
        pod(),
        ".{0,20}",
        prop_oneof![
            Just(Protocol::Tcp),
            Just(Protocol::Udp),
            Just(Protocol::Sctp)
        ],
        ip(),
        any::<u16>(),
        any::<u64>(),
        time(),
        time(),
        proptest::collection::vec(".{1,12}", 0..3),
        proptest::option::of(
            (any::<u64>(), any::<u64>()).prop_map(|(established, failed)| Outcome {
                established,
                failed,
            }),
        ),
    )
        .prop_map(
            |(pod, cgroup, protocol, dst, dst_port, count, a, b, names, outcome)| FlowRecord {
                node: NODE.into(),
                pod,
                cgroup,
                protocol,
                dst,
                dst_port,
                count,
                first_seen: a.min(b),
                last_seen: a.max(b),
                names,
                outcome,
            },
        )
}

fn dns() -> impl Strategy<Value = DnsRecord> {
    (
        pod(),
        ".{0,20}",
        ip(),
        ".{1,20}",
        "[A-Z]{1,5}",
        "[A-Z]{1,8}",
        proptest::collection::vec(
            (".{1,12}", "[A-Z]{1,5}", ".{0,12}", any::<u32>()).prop_map(
                |(name, rtype, data, ttl)| DnsAnswer {
                    name,
                    rtype,
                    data,
                    ttl,
                },
            ),
            0..3,
        ),
        time(),
    )
        .prop_map(
            |(pod, cgroup, server, query, qtype, rcode, answers, time)| DnsRecord {
                node: NODE.into(),
                pod,
                cgroup,
                server,
                query,
                qtype,
                rcode,
                answers,
                time,
            },
        )
}

fn wire_flow() -> impl Strategy<Value = v1::Flow> {
    (
        proptest::option::of((".{0,4}", ".{0,4}", ".{0,4}")),
        -2..6i32,
        proptest::collection::vec(any::<u8>(), 0..20),
        prop_oneof![any::<u32>(), 0..70_000u32],
        any::<i64>(),
        any::<i64>(),
        proptest::collection::vec(".{0,3}", 0..3),
        proptest::option::of(any::<(u64, u64)>()),
    )
        .prop_map(
            |(pod, protocol, dst, dst_port, first, last, names, outcome)| v1::Flow {
                pod: pod.map(|(uid, namespace, name)| v1::Pod {
                    uid,
                    namespace,
                    name,
                }),
                cgroup: String::new(),
                protocol,
                dst,
                dst_port,
                count: 1,
                first_seen_unix_nanos: first,
                last_seen_unix_nanos: last,
                names,
                outcome: outcome.map(|(established, failed)| v1::Outcome {
                    established,
                    failed,
                }),
            },
        )
}

fn wire_dns() -> impl Strategy<Value = v1::Dns> {
    (
        proptest::collection::vec(any::<u8>(), 0..20),
        ".{0,3}",
        ".{0,3}",
        ".{0,3}",
        proptest::collection::vec((".{0,3}", ".{0,3}"), 0..3),
        any::<i64>(),
    )
        .prop_map(|(server, query, qtype, rcode, answers, time)| v1::Dns {
            pod: None,
            cgroup: String::new(),
            server,
            query,
            qtype,
            rcode,
            answers: answers
                .into_iter()
                .map(|(name, r#type)| v1::DnsAnswer {
                    name,
                    r#type,
                    data: String::new(),
                    ttl: 0,
                })
                .collect(),
            time_unix_nanos: time,
        })
}

proptest! {
    #[test]
    fn contract_to_wire_to_contract_is_identity(
        flows in proptest::collection::vec(flow(), 0..8),
        dns in proptest::collection::vec(dns(), 0..8),
    ) {
        let batch = wire::batch_to_wire(id(), &flows, &dns).unwrap();
        // Through bytes too, so that the encoding itself is covered.
        let bytes = batch.encode_to_vec();
        let decoded = v1::Batch::decode(bytes.as_slice()).unwrap();
        let back = wire::batch_from_wire(decoded).unwrap();
        prop_assert_eq!(back.id, id());
        prop_assert_eq!(back.flows, flows);
        prop_assert_eq!(back.dns, dns);
    }

    #[test]
    fn arbitrary_wire_records_never_panic(
        flows in proptest::collection::vec(wire_flow(), 0..4),
        dns in proptest::collection::vec(wire_dns(), 0..4),
        groups in proptest::collection::vec(
            (
                proptest::option::of((".{0,4}", ".{0,4}", ".{0,4}")),
                ".{0,4}",
                proptest::collection::vec(wire_flow(), 0..3),
            ),
            0..3,
        ),
        node in ".{0,3}",
    ) {
        let flow_groups: Vec<v1::FlowGroup> = groups
            .into_iter()
            .map(|(pod, cgroup, flows)| v1::FlowGroup {
                pod: pod.map(|(uid, namespace, name)| v1::Pod { uid, namespace, name }),
                cgroup,
                flows,
            })
            .collect();
        let batch = v1::Batch {
            id: Some(v1::BatchId { node, boot_id: "b".into(), seq: 1 }),
            flows,
            dns,
            flow_groups,
        };
        if let Ok(b) = wire::batch_from_wire(batch.clone()) {
            prop_assert_eq!(b.flows.len(), batch.flow_count());
            // Whatever is accepted converts back to a wire message of the same records.
            let again = wire::batch_to_wire(b.id.clone(), &b.flows, &b.dns).unwrap();
            prop_assert!(again.flows.is_empty());
            prop_assert_eq!(&again.dns, &batch.dns);
            prop_assert_eq!(wire::batch_from_wire(again).unwrap(), b);
        }
    }

    #[test]
    fn groups_are_the_runs_of_one_source(
        flows in proptest::collection::vec(flow(), 0..12),
        picks in proptest::collection::vec(0..3usize, 12),
    ) {
        // Few distinct sources, so that runs form.
        let sources: Vec<(Option<PodRef>, String)> = flows
            .iter()
            .take(3)
            .map(|f| (f.pod.clone(), f.cgroup.clone()))
            .collect();
        let mut flows = flows;
        if !sources.is_empty() {
            for (f, pick) in flows.iter_mut().zip(&picks) {
                let (pod, cgroup) = sources[pick % sources.len()].clone();
                f.pod = pod;
                f.cgroup = cgroup;
            }
        }
        let batch = wire::batch_to_wire(id(), &flows, &[]).unwrap();
        let runs = flows
            .windows(2)
            .filter(|w| (&w[0].pod, &w[0].cgroup) != (&w[1].pod, &w[1].cgroup))
            .count()
            + usize::from(!flows.is_empty());
        prop_assert_eq!(batch.flow_groups.len(), runs);
        for g in &batch.flow_groups {
            prop_assert!(!g.flows.is_empty());
            prop_assert!(g.flows.iter().all(|f| f.pod.is_none() && f.cgroup.is_empty()));
        }
        prop_assert_eq!(wire::batch_from_wire(batch).unwrap().flows, flows);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(batch) = v1::Batch::decode(bytes.as_slice()) {
            let _ = wire::batch_from_wire(batch);
        }
    }
}

fn sample_flow() -> FlowRecord {
    FlowRecord {
        node: NODE.into(),
        pod: Some(PodRef {
            uid: "u1".into(),
            namespace: "shop".into(),
            name: "payment-1".into(),
        }),
        cgroup: "/kubepods.slice/x".into(),
        protocol: Protocol::Tcp,
        dst: "203.0.113.10".parse().expect("fixture address"),
        dst_port: 443,
        count: 12,
        first_seen: "2026-11-25T09:00:00Z".parse().expect("fixture time"),
        last_seen: "2026-11-25T09:00:05Z".parse().expect("fixture time"),
        names: vec!["api.stripe.test".into()],
        outcome: Some(Outcome {
            established: 11,
            failed: 1,
        }),
    }
}

fn sample_dns() -> DnsRecord {
    DnsRecord {
        node: NODE.into(),
        pod: None,
        cgroup: "/system.slice/x".into(),
        server: "2001:db8::53".parse().expect("fixture address"),
        query: "api.stripe.test.".into(),
        qtype: "A".into(),
        rcode: "NOERROR".into(),
        answers: vec![DnsAnswer {
            name: "api.stripe.test.".into(),
            rtype: "A".into(),
            data: "203.0.113.10".into(),
            ttl: 60,
        }],
        time: "2026-11-25T09:00:00Z".parse().expect("fixture time"),
    }
}

/// A valid wire batch of 20 flows and 5 DNS records, for breaking one field at a time.
fn valid_batch() -> v1::Batch {
    wire::batch_to_wire(id(), &vec![sample_flow(); 20], &vec![sample_dns(); 5])
        .expect("valid fixture")
}

/// Breaks one field of a valid wire record.
type Breaker<T> = fn(&mut T);

fn rejected(batch: v1::Batch) -> String {
    wire::batch_from_wire(batch)
        .expect_err("the batch is malformed")
        .to_string()
}

#[test]
fn valid_batch_converts_with_the_batch_node() {
    let b = wire::batch_from_wire(valid_batch()).unwrap();
    assert_eq!(b.flows.len(), 20);
    assert_eq!(b.dns.len(), 5);
    assert_eq!(b.flows[17], sample_flow());
    assert_eq!(b.dns[3], sample_dns());
}

/// The same batch with every flow carrying its own pod and cgroup (`flows`, no groups).
fn ungrouped(mut batch: v1::Batch) -> v1::Batch {
    for group in std::mem::take(&mut batch.flow_groups) {
        for mut f in group.flows {
            f.pod.clone_from(&group.pod);
            f.cgroup.clone_from(&group.cgroup);
            batch.flows.push(f);
        }
    }
    batch
}

#[test]
fn flows_of_one_source_cross_the_wire_once_per_group() {
    let a = sample_flow();
    let mut b = sample_flow();
    b.cgroup = "/kubepods.slice/y".into();
    b.pod = None;
    let flows = vec![a.clone(), a.clone(), b, a];
    let batch = wire::batch_to_wire(id(), &flows, &[]).unwrap();
    let sizes: Vec<usize> = batch.flow_groups.iter().map(|g| g.flows.len()).collect();
    assert_eq!(sizes, [2, 1, 1]);
    assert_eq!(batch.flow_groups[1].pod, None);
    assert_eq!(batch.flow_groups[1].cgroup, "/kubepods.slice/y");
    assert_eq!(batch.record_count(), 4);
    // Smaller than the same records each naming their source.
    let grouped = wire::batch_to_wire(id(), &vec![sample_flow(); 20], &[]).unwrap();
    assert!(
        grouped.encoded_len() < ungrouped(grouped.clone()).encoded_len() * 2 / 3,
        "{} vs {}",
        grouped.encoded_len(),
        ungrouped(grouped).encoded_len()
    );
    // Both forms carry the same records, and a batch may mix them.
    let mut mixed = wire::batch_to_wire(id(), &flows[..2], &[]).unwrap();
    mixed.flows = ungrouped(wire::batch_to_wire(id(), &flows[2..], &[]).unwrap()).flows;
    let back = wire::batch_from_wire(mixed).unwrap().flows;
    assert_eq!(back, [&flows[2..], &flows[..2]].concat());
}

#[test]
fn grouped_flows_cannot_name_their_own_source() {
    let mut batch = valid_batch();
    batch.flow_groups[0].flows[5].cgroup = "/elsewhere".into();
    assert_eq!(
        rejected(batch),
        "flow_groups[0].flows[5]: cgroup: set, but a grouped flow takes its group's"
    );
    let mut batch = valid_batch();
    batch.flow_groups[0].flows[6].pod = batch.flow_groups[0].pod.clone();
    assert_eq!(
        rejected(batch),
        "flow_groups[0].flows[6]: pod: set, but a grouped flow takes its group's"
    );
    let mut batch = valid_batch();
    batch.flow_groups[0].pod.as_mut().unwrap().name.clear();
    assert_eq!(rejected(batch), "flow_groups[0]: pod.name: empty");
}

#[test]
fn malformed_flows_are_named_with_their_field() {
    let cases: Vec<(Breaker<v1::Flow>, &str)> = vec![
        (
            |f| f.dst = vec![1, 2, 3],
            "flows[17]: dst: 3 bytes (expected 4 or 16)",
        ),
        (|f| f.protocol = 0, "flows[17]: protocol: unspecified"),
        (|f| f.protocol = 9, "flows[17]: protocol: unknown value 9"),
        (
            |f| f.dst_port = 65_536,
            "flows[17]: dst_port: 65536 exceeds 65535",
        ),
        (
            |f| f.first_seen_unix_nanos = 0,
            "flows[17]: first_seen_unix_nanos: 0 is not after 1970-01-01",
        ),
        (
            |f| f.last_seen_unix_nanos = -5,
            "flows[17]: last_seen_unix_nanos: -5 is not after 1970-01-01",
        ),
        (
            |f| f.first_seen_unix_nanos = f.last_seen_unix_nanos + 1,
            "flows[17]: first_seen_unix_nanos: ",
        ),
        (
            |f| f.names.push(String::new()),
            "flows[17]: names[1]: empty",
        ),
        (
            |f| f.pod.as_mut().unwrap().namespace.clear(),
            "flows[17]: pod.namespace: empty",
        ),
    ];
    for (break_it, want) in cases {
        let mut batch = ungrouped(valid_batch());
        break_it(&mut batch.flows[17]);
        let err = rejected(batch);
        assert!(err.starts_with(want), "want {want:?}, got {err:?}");
        // The same flow in a group is named by its group.
        if want.contains(": pod.") {
            continue;
        }
        let mut batch = valid_batch();
        break_it(&mut batch.flow_groups[0].flows[17]);
        let want = want.replacen("flows[17]", "flow_groups[0].flows[17]", 1);
        let err = rejected(batch);
        assert!(err.starts_with(&want), "want {want:?}, got {err:?}");
    }
}

#[test]
fn malformed_dns_records_are_named_with_their_field() {
    let cases: Vec<(Breaker<v1::Dns>, &str)> = vec![
        (
            |d| d.server.clear(),
            "dns[3]: server: 0 bytes (expected 4 or 16)",
        ),
        (|d| d.query.clear(), "dns[3]: query: empty"),
        (|d| d.qtype.clear(), "dns[3]: qtype: empty"),
        (|d| d.rcode.clear(), "dns[3]: rcode: empty"),
        (
            |d| d.time_unix_nanos = 0,
            "dns[3]: time_unix_nanos: 0 is not after 1970-01-01",
        ),
        (
            |d| d.answers[0].name.clear(),
            "dns[3]: answers[0].name: empty",
        ),
        (
            |d| d.answers[0].r#type.clear(),
            "dns[3]: answers[0].type: empty",
        ),
    ];
    for (break_it, want) in cases {
        let mut batch = valid_batch();
        break_it(&mut batch.dns[3]);
        let err = rejected(batch);
        assert!(err.starts_with(want), "want {want:?}, got {err:?}");
    }
}

#[test]
fn batch_ids_need_node_and_boot_id() {
    let mut b = valid_batch();
    b.id = None;
    assert_eq!(wire::batch_from_wire(b).unwrap_err(), WireError::MissingId);
    let mut b = valid_batch();
    b.id.as_mut().unwrap().node.clear();
    assert_eq!(rejected(b), "batch id: node: empty");
    let mut b = valid_batch();
    b.id.as_mut().unwrap().boot_id.clear();
    assert_eq!(rejected(b), "batch id: boot_id: empty");
}

#[test]
fn to_wire_rejects_records_of_another_node_and_unrepresentable_times() {
    let mut other = sample_dns();
    other.node = "node-b".into();
    let err = wire::batch_to_wire(id(), &[sample_flow()], &[sample_dns(), other]).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"dns[1]: node: "node-b" differs from the batch's node "node-a""#
    );
    let mut old = sample_flow();
    old.first_seen = "1969-12-31T23:59:59Z".parse().unwrap();
    let err = wire::flow_to_wire(RecordIndex::Flow(4), &old).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("flows[4]: first_seen: 1969-12-31"),
        "{err}"
    );
}
