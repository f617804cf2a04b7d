//! The wire contract: contract → wire → bytes → wire → contract is the identity for valid
//! records, malformed wire records are refused one by one (index, reason, field) while the
//! others are kept, a bad batch id refuses the batch, nothing panics.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use leash_records::wire::{self, RecordIndex, Refused, WireError, v1};
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
        (
            "[a-f0-9-]{0,12}",
            "[a-z]{1,8}",
            "[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?",
        )
            .prop_map(|(uid, namespace, name)| PodRef {
                uid,
                namespace,
                name,
            }),
    )
}

/// A valid DNS name, sometimes fully qualified.
fn dns_name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9_-]{1,10}(\\.[a-z0-9_-]{1,10}){0,2}\\.?"
}

/// A valid answer: its type, and data of that type.
fn answer_data() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        any::<std::net::Ipv4Addr>().prop_map(|a| ("A".to_owned(), a.to_string())),
        any::<std::net::Ipv6Addr>().prop_map(|a| ("AAAA".to_owned(), a.to_string())),
        dns_name().prop_map(|n| ("CNAME".to_owned(), n)),
        ".{0,12}".prop_map(|t| ("TXT".to_owned(), t)),
    ]
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
        proptest::collection::vec(dns_name(), 0..3),
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
        dns_name(),
        "[A-Z]{1,5}",
        "[A-Z]{1,8}",
        proptest::collection::vec(
            (dns_name(), answer_data(), any::<u32>()).prop_map(|(name, (rtype, data), ttl)| {
                DnsAnswer {
                    name,
                    rtype,
                    data,
                    ttl,
                }
            }),
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
        proptest::option::of((
            "[a-f0-9]{0,4}|.{0,4}",
            "[a-z]{1,4}|.{0,4}",
            "[a-z]{1,4}|.{0,4}",
        )),
        -2..6i32,
        proptest::collection::vec(any::<u8>(), 0..20),
        prop_oneof![any::<u32>(), 0..70_000u32],
        any::<i64>(),
        any::<i64>(),
        proptest::collection::vec(prop_oneof!["[a-z]{1,3}", ".{0,3}"], 0..3),
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
        "[a-z]{1,3}|.{0,3}",
        "[A-Z]{1,3}|.{0,3}",
        "[A-Z]{1,3}|.{0,3}",
        proptest::collection::vec(("[a-z]{1,3}|.{0,3}", "TXT|.{0,3}"), 0..3),
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
                proptest::option::of(("[a-f0-9]{0,4}|.{0,4}", "[a-z]{1,4}|.{0,4}", "[a-z]{1,4}|.{0,4}")),
                ".{0,4}",
                proptest::collection::vec(wire_flow(), 0..3),
            ),
            0..3,
        ),
        node in "[a-z]{1,3}|.{0,3}",
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
        let Ok(grouped) = wire::grouped_batch_from_wire(batch.clone()) else {
            // Only the batch id refuses a whole batch.
            prop_assert!(wire::batch_from_wire(batch).is_err());
            return Ok(());
        };
        // Every record is either kept or refused, once, by its index in the contract's order.
        let kept = grouped.flow_count() + grouped.dns.len();
        prop_assert_eq!(kept + grouped.refused.len(), batch.record_count());
        let indices: Vec<u32> = grouped.refused.iter().map(|r| r.index).collect();
        prop_assert!(indices.windows(2).all(|w| w[0] < w[1]), "{:?}", indices);
        prop_assert!(indices.iter().all(|&i| (i as usize) < batch.record_count()));
        for r in &grouped.refused {
            prop_assert!(r.reason != v1::RejectReason::Unspecified);
            prop_assert!(r.detail().len() < 256, "{}", r.detail());
        }
        match wire::batch_from_wire(batch.clone()) {
            Ok(b) => {
                prop_assert!(grouped.refused.is_empty());
                prop_assert_eq!(b.flows.len(), batch.flow_count());
                // Whatever is accepted converts back to a wire message of the same records.
                let again = wire::batch_to_wire(b.id.clone(), &b.flows, &b.dns).unwrap();
                prop_assert!(again.flows.is_empty());
                prop_assert_eq!(&again.dns, &batch.dns);
                prop_assert_eq!(wire::batch_from_wire(again).unwrap(), b);
            }
            // The strict form fails with the first refused record.
            Err(e) => prop_assert_eq!(e.to_string(), grouped.refused[0].to_string()),
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
    assert_eq!(rejected(batch), "flow_groups[0].flows[0]: pod.name: empty");
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

/// The refused records of `batch`, as (index, reason, detail), and the counts of kept flows
/// and DNS records.
fn refusals(batch: v1::Batch) -> (Vec<(u32, v1::RejectReason, String)>, usize, usize) {
    let g = wire::grouped_batch_from_wire(batch).expect("a valid batch id");
    let refused = g
        .refused
        .iter()
        .map(|r| (r.index, r.reason, r.detail()))
        .collect();
    (refused, g.flow_count(), g.dns.len())
}

#[test]
fn one_bad_record_is_refused_and_the_others_kept() {
    use v1::RejectReason::{InvalidField, InvalidName};
    let mut batch = valid_batch();
    // The root-owned answer of the finding: an empty name.
    batch.flow_groups[0].flows[3].names[0] = String::new();
    batch.dns[2].query = ".".into();
    batch.dns[4].server = vec![1, 2, 3];
    let (refused, flows, dns) = refusals(batch.clone());
    assert_eq!(
        refused,
        [
            (3, InvalidName, "names[0]: empty".to_owned()),
            (22, InvalidName, r#"query: ".": empty"#.to_owned()),
            (
                24,
                InvalidField,
                "server: 3 bytes (expected 4 or 16)".to_owned()
            ),
        ]
    );
    assert_eq!((flows, dns), (19, 3));
    // The records kept are the valid ones, unchanged.
    let g = wire::grouped_batch_from_wire(batch).unwrap();
    assert_eq!(g.groups.len(), 1);
    assert_eq!(g.into_batch().flows[3], sample_flow());
}

#[test]
fn indices_follow_the_contract_order_and_a_bad_source_refuses_its_group() {
    use v1::RejectReason::{InvalidField, InvalidPod};
    // `flows` (2), then groups of 3 and 2 flows, then 2 DNS records: indices 0..=8.
    let mut batch = wire::batch_to_wire(id(), &vec![sample_flow(); 3], &vec![sample_dns(); 2])
        .expect("valid fixture");
    let mut other = sample_flow();
    other.cgroup = "/kubepods.slice/y".into();
    batch.flow_groups.extend(
        wire::batch_to_wire(id(), &vec![other; 2], &[])
            .expect("valid fixture")
            .flow_groups,
    );
    batch.flows = ungrouped(wire::batch_to_wire(id(), &vec![sample_flow(); 2], &[]).unwrap()).flows;
    assert_eq!(batch.record_count(), 9);
    batch.flows[1].dst_port = 70_000;
    batch.flow_groups[1].pod.as_mut().unwrap().namespace = "../../escape-ns".into();
    batch.flow_groups[0].flows[2].protocol = 0;
    batch.dns[0].time_unix_nanos = -1;
    let g = wire::grouped_batch_from_wire(batch).unwrap();
    let got: Vec<(u32, RecordIndex, v1::RejectReason, &str)> = g
        .refused
        .iter()
        .map(|r| (r.index, r.record, r.reason, r.field.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1, RecordIndex::Flow(1), InvalidField, "dst_port"),
            (
                4,
                RecordIndex::GroupedFlow { group: 0, flow: 2 },
                InvalidField,
                "protocol"
            ),
            (
                5,
                RecordIndex::GroupedFlow { group: 1, flow: 0 },
                InvalidPod,
                "pod.namespace"
            ),
            (
                6,
                RecordIndex::GroupedFlow { group: 1, flow: 1 },
                InvalidPod,
                "pod.namespace"
            ),
            (7, RecordIndex::Dns(0), InvalidField, "time_unix_nanos"),
        ]
    );
    assert_eq!(
        g.refused[2].problem,
        r#""..\u{2f}..\u{2f}escape-ns": character not allowed at byte 0"#.replace("\\\\", "\\")
    );
    assert_eq!((g.flow_count(), g.dns.len()), (3, 1));
    // A refused record becomes the ack's entry.
    assert_eq!(
        g.refused[0].to_wire(),
        v1::RejectedRecord {
            index: 1,
            reason: InvalidField as i32,
            detail: "dst_port: 70000 exceeds 65535".into(),
        }
    );
}

#[test]
fn names_and_answers_per_record_and_cgroups_are_bounded() {
    use v1::RejectReason::TooLarge;
    let names = |n: usize| (0..n).map(|i| format!("n{i}.test")).collect::<Vec<_>>();
    let mut batch = valid_batch();
    batch.flow_groups[0].flows[0].names = names(wire::MAX_NAMES_PER_RECORD);
    batch.flow_groups[0].flows[1].names = names(wire::MAX_NAMES_PER_RECORD + 1);
    let answer = sample_dns().answers[0].clone();
    let answers = |n: usize| {
        vec![
            v1::DnsAnswer {
                name: answer.name.clone(),
                r#type: answer.rtype.clone(),
                data: answer.data.clone(),
                ttl: answer.ttl,
            };
            n
        ]
    };
    batch.dns[0].answers = answers(wire::MAX_ANSWERS_PER_RECORD);
    batch.dns[1].answers = answers(wire::MAX_ANSWERS_PER_RECORD + 1);
    batch.dns[2].cgroup = "c".repeat(wire::MAX_CGROUP_BYTES);
    batch.dns[3].cgroup = "c".repeat(wire::MAX_CGROUP_BYTES + 1);
    let (refused, flows, dns) = refusals(batch);
    assert_eq!(
        refused,
        [
            (1, TooLarge, "names: 65 names, more than 64".to_owned()),
            (
                21,
                TooLarge,
                "answers: 129 answers, more than 128".to_owned()
            ),
            (
                23,
                TooLarge,
                "cgroup: 4097 bytes, more than 4096".to_owned()
            ),
        ]
    );
    assert_eq!((flows, dns), (19, 3));
    // A group's cgroup refuses all its flows.
    let mut batch = valid_batch();
    batch.flow_groups[0].cgroup = "c".repeat(wire::MAX_CGROUP_BYTES + 1);
    let (refused, flows, _) = refusals(batch);
    assert_eq!(refused.len(), 20);
    assert!(
        refused
            .iter()
            .all(|r| r.1 == TooLarge && r.2.starts_with("cgroup: "))
    );
    assert_eq!(flows, 0);
}

#[test]
fn a_16_mib_name_is_refused_alone_with_a_short_detail() {
    let mut batch = valid_batch();
    batch.flow_groups[0].flows[7]
        .names
        .push("x".repeat(16 << 20));
    let g = wire::grouped_batch_from_wire(batch).unwrap();
    assert_eq!(g.refused.len(), 1);
    let r = &g.refused[0];
    assert_eq!((r.index, r.reason), (7, v1::RejectReason::InvalidName));
    assert_eq!(
        r.detail(),
        format!(
            "names[1]: \"{}\"… (16777216 bytes): 16777216 bytes, more than 253",
            "x".repeat(64)
        )
    );
    assert_eq!((g.flow_count(), g.dns.len()), (19, 5));
}

#[test]
fn hostile_names_are_refused_and_never_echoed_raw() {
    use v1::RejectReason::{InvalidField, InvalidName, InvalidPod, TooLarge};
    let hostile = [
        "<script>alert(1)</script>",
        "a|b",
        "line\nbreak.test",
        "[x](https://evil.test)",
        "`code`",
        "a..b",
        "é.test",
        &"a".repeat(64),
    ];
    for name in hostile {
        let mut batch = valid_batch();
        batch.flow_groups[0].flows[0].names = vec![name.to_owned()];
        batch.dns[0].query = name.to_owned();
        batch.dns[1].answers[0].name = name.to_owned();
        batch.dns[2].answers[0].r#type = "CNAME".into();
        batch.dns[2].answers[0].data = name.to_owned();
        let (refused, flows, dns) = refusals(batch);
        let got: Vec<(u32, v1::RejectReason)> = refused.iter().map(|r| (r.0, r.1)).collect();
        assert_eq!(
            got,
            [
                (0, InvalidName),
                (20, InvalidName),
                (21, InvalidName),
                (22, InvalidName)
            ],
            "{name:?}"
        );
        assert_eq!((flows, dns), (19, 2));
        for (_, _, detail) in &refused {
            // After the field, which is ours (`names[0]`): the escaped value and the problem.
            let (_, told) = detail.split_once(": ").expect("field: problem");
            for c in ['<', '>', '|', '\n', '[', '`'] {
                assert!(!told.contains(c), "{detail:?}");
            }
        }
    }
    // Pod names are Kubernetes names; answer data matches its type.
    let cases: Vec<(Breaker<v1::Dns>, v1::RejectReason, &str)> = vec![
        (
            |d| {
                d.pod = Some(v1::Pod {
                    uid: String::new(),
                    namespace: "Shop".into(),
                    name: "web".into(),
                })
            },
            InvalidPod,
            r#"pod.namespace: "Shop": character not allowed at byte 0"#,
        ),
        (
            |d| {
                d.pod = Some(v1::Pod {
                    uid: String::new(),
                    namespace: "shop".into(),
                    name: "web/../x".into(),
                })
            },
            InvalidPod,
            r#"pod.name: "web\u{2f}..\u{2f}x": character not allowed at byte 3"#,
        ),
        (
            |d| {
                d.pod = Some(v1::Pod {
                    uid: "a b".into(),
                    namespace: "shop".into(),
                    name: "web".into(),
                })
            },
            InvalidPod,
            r#"pod.uid: "a\u{20}b": character not allowed at byte 1"#,
        ),
        (
            |d| d.answers[0].data = "example".into(),
            InvalidField,
            r#"answers[0].data: "example": not an IPv4 address"#,
        ),
        (
            |d| {
                d.answers[0].r#type = "TXT".into();
                d.answers[0].data = "t".repeat(wire::MAX_ANSWER_DATA_BYTES + 1);
            },
            TooLarge,
            "answers[0].data: 4097 bytes, more than 4096",
        ),
        (
            |d| d.qtype = "A<b>".into(),
            InvalidField,
            r#"qtype: "A\u{3c}b\u{3e}": not a mnemonic (letters and digits, at most 16 bytes)"#,
        ),
    ];
    for (break_it, reason, detail) in cases {
        let mut batch = valid_batch();
        break_it(&mut batch.dns[3]);
        let (refused, _, dns) = refusals(batch);
        assert_eq!(refused, [(23, reason, detail.to_owned())]);
        assert_eq!(dns, 4);
    }
    // TXT data is not a name: any short text is kept.
    let mut batch = valid_batch();
    batch.dns[3].answers[0].r#type = "TXT".into();
    batch.dns[3].answers[0].data = "v=spf1 include:_spf.example.test ~all".into();
    assert_eq!(refusals(batch).0, []);
}

#[test]
fn a_bad_batch_id_refuses_the_whole_batch() {
    let mut b = valid_batch();
    b.id.as_mut().unwrap().node = "Node_A".into();
    let err = wire::grouped_batch_from_wire(b).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"batch id: node: "Node_A": character not allowed at byte 0"#
    );
    let mut b = valid_batch();
    b.id.as_mut().unwrap().boot_id = "x".repeat(200);
    assert!(matches!(
        wire::grouped_batch_from_wire(b),
        Err(WireError::BatchId {
            field: "boot_id",
            ..
        })
    ));
}

#[test]
fn refused_records_name_their_place() {
    let r = Refused {
        record: RecordIndex::GroupedFlow { group: 2, flow: 5 },
        index: 40,
        reason: v1::RejectReason::InvalidName,
        field: "names[0]".into(),
        problem: "empty".into(),
    };
    assert_eq!(r.to_string(), "flow_groups[2].flows[5]: names[0]: empty");
    assert_eq!(r.detail(), "names[0]: empty");
    assert_eq!(wire::reason_label(r.reason), "invalid_name");
}
