//! The recommender's ingest conversion of a protobuf batch: bytes → `leash.v1.Batch` (prost,
//! as `leash_records::codec` decodes it), → contract records
//! (`wire::grouped_batch_from_wire`, record by record, and the strict `batch_from_wire`), →
//! observations (`leash::observations::from_groups`, what ingest stores).
//!
//! Every record is kept or refused, never both or neither; the strict conversion fails exactly
//! when one is refused; and the records kept survive the agent's encoding (`batch_to_wire`)
//! unchanged.
#![no_main]

use leash::cluster::Cluster;
use leash::observations::from_groups;
use leash_records::wire::{self, v1};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = v1::Batch::decode(data) else {
        return;
    };
    let total = batch.flows.len()
        + batch
            .flow_groups
            .iter()
            .map(|g| g.flows.len())
            .sum::<usize>()
        + batch.dns.len();
    let strict = wire::batch_from_wire(batch.clone());
    let Ok(grouped) = wire::grouped_batch_from_wire(batch) else {
        assert!(strict.is_err());
        return;
    };
    assert_eq!(
        grouped.flow_count() + grouped.dns.len() + grouped.refused.len(),
        total,
        "every record is kept or refused"
    );
    assert_eq!(strict.is_ok(), grouped.refused.is_empty());
    for refused in &grouped.refused {
        assert!(!refused.detail().is_empty());
        let _ = refused.to_wire();
    }

    if let Ok(cluster) =
        Cluster::from_objects(&[], &[], &[], &[], &[], &[], &[], &[], &[], &[], &[])
    {
        let _ = from_groups(&cluster, &grouped.id.node, &grouped.groups, &grouped.dns);
    }

    // What was kept, sent again as the agent sends it, comes back the same.
    let kept = grouped.into_batch();
    let again = wire::batch_to_wire(kept.id.clone(), &kept.flows, &kept.dns)
        .expect("records the recommender kept encode again");
    let back = wire::batch_from_wire(again).expect("records the recommender kept are valid");
    assert_eq!(back, kept);
});
