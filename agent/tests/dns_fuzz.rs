//! Inputs the `dns_payload` fuzz target (tests/fuzz) found, fed to the production DNS path: each
//! once made the agent build a record that breaks the agent–recommender contract.

use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, Utc};
use leash_agent::attribution::Attribution;
use leash_agent::dns::{DnsCacheConfig, DnsTracker};
use leash_agent::metrics::Metrics;
use leash_records::DnsRecord;
use leash_records::wire::{self, v1};

/// A response for `www.shop.test. AAAA` whose first answer is a `PTR` to `edge.c\377n.test.`
/// (a byte no hostname has); the three answers after it are owned by names compressed through
/// that label, so they are invalid too. The agent kept the `PTR` (it checked only CNAME
/// targets), and the recommender refused the whole record for it:
/// `answers[0].data: "edge.c\u{5c}377n.test.": character not allowed at byte 6`.
const PTR_WITH_INVALID_NAME: &[u8] = &[
    0x22, 0x22, 0x81, 0x80, 0x00, 0x01, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x03, 0x77, 0x77, 0x77,
    0x04, 0x73, 0x68, 0x6f, 0x70, 0x04, 0x74, 0x65, 0x73, 0x74, 0x00, 0x00, 0x1c, 0x00, 0x01, 0xc0,
    0x0c, 0x00, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x04, 0x65, 0x64, 0x67, 0x65,
    0x03, 0x63, 0xff, 0x6e, 0xc0, 0x15, 0xc0, 0x2b, 0x02, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00, 0x1e,
    0x00, 0x0a, 0x07, 0x65, 0x64, 0x67, 0x65, 0x2d, 0x76, 0x35, 0xc0, 0x30, 0xc0, 0x42, 0x00, 0x1c,
    0x00, 0x01, 0x00, 0x00, 0x00, 0x1e, 0x00, 0x10, 0x65, 0x64, 0x67, 0x65, 0x2d, 0x76, 0x36, 0x2e,
    0x63, 0x64, 0x6e, 0x2e, 0x74, 0x00, 0x00, 0x10, 0xc0, 0x42, 0x00, 0x1c, 0x00, 0x01, 0x00, 0x10,
    0x00, 0x1e, 0x00, 0x10, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x6b, 0x69, 0x6e,
    0x64, 0x00, 0x00, 0x11,
];

/// The record the agent builds for `payload`, and its metrics.
fn observe(payload: &[u8]) -> (Option<DnsRecord>, Metrics) {
    let metrics = Metrics::new();
    let mut tracker = DnsTracker::new(DnsCacheConfig::default(), metrics.clone());
    let time = DateTime::<Utc>::from_timestamp(1_795_597_200, 0).unwrap_or_default();
    let record = tracker.observe(
        payload,
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 53)),
        time,
        "node-1",
        &Attribution::cgroup_only("/kubepods.slice/fuzz"),
    );
    (record, metrics)
}

/// What the recommender refuses of `record` when the agent sends it.
fn refused(record: &DnsRecord) -> Vec<String> {
    let id = v1::BatchId {
        node: "node-1".into(),
        boot_id: "3f0e6b7a-0000-4000-8000-000000000001".into(),
        seq: 1,
    };
    let batch = wire::batch_to_wire(id, &[], std::slice::from_ref(record))
        .unwrap_or_else(|e| panic!("the agent's record does not encode: {e}"));
    let back = wire::grouped_batch_from_wire(batch)
        .unwrap_or_else(|e| panic!("the batch id is refused: {e}"));
    back.refused.iter().map(wire::Refused::detail).collect()
}

#[test]
fn a_ptr_answer_with_an_invalid_name_is_left_out_not_the_record() {
    let (record, metrics) = observe(PTR_WITH_INVALID_NAME);
    let record = record.unwrap_or_else(|| panic!("the question name is valid: a record is built"));
    assert_eq!(record.query, "www.shop.test.");
    assert_eq!(record.answers, Vec::new(), "every answer is left out");
    assert_eq!(refused(&record), Vec::<String>::new());
    let text = metrics
        .encode()
        .unwrap_or_else(|e| panic!("metrics encode: {e}"));
    assert!(
        text.contains(r#"leash_agent_dns_answers_cut_total{cause="invalid_name"} 4"#),
        "{text}"
    );
}

#[test]
fn the_recommender_names_the_data_it_refuses() {
    // The check the agent now applies is the recommender's: it refuses such data with a
    // message naming the answer and the byte.
    let err = wire::answer_data("PTR", "edge.c\\377n.test.")
        .err()
        .unwrap_or_else(|| panic!("an escaped byte is not a hostname character"));
    assert!(matches!(err, wire::AnswerDataError::Name(_)), "{err:?}");
    assert_eq!(
        wire::answer_data("A", ""),
        Err(wire::AnswerDataError::NotAnAddress { family: "IPv4" })
    );
    assert_eq!(wire::answer_data("TXT", "\"v=spf1 -all\""), Ok(()));
}
