//! The v1 record reader over arbitrary bytes: `leash_records::read_records` (the contract's
//! reader: bounded lines, UTF-8, JSON, times) and the recommender's parallel reader
//! `Observations::read` (blocks cut at line ends, the fast flow path, attribution), each on
//! small limits so that the line and size bounds are reached.
//!
//! Both must end in records or a clear error that names the input's line; they must agree on
//! whether the input is well-formed up to attribution (the recommender may also refuse a
//! record for a pod its cluster does not know).
#![no_main]

use std::path::Path;

use leash::cluster::Cluster;
use leash::observations::{Error as ObsError, Observations};
use leash_records::bounded::Limits;
use leash_records::{RecordError, read_records_limited};
use libfuzzer_sys::fuzz_target;

fn limits() -> Limits {
    Limits {
        max_line: 512,
        max_file: 16 * 1024,
    }
}

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz.jsonl");
    let mut contract_err = None;
    for result in read_records_limited(data, path, limits()) {
        match result {
            Ok(located) => assert!(located.line >= 1),
            Err(e) => {
                if let RecordError::Invalid { line, .. } = &e {
                    assert!(*line >= 1);
                }
                // The message names the input.
                assert!(e.to_string().contains("fuzz.jsonl"), "{e}");
                contract_err = Some(e);
            }
        }
    }

    let Ok(cluster) = Cluster::from_objects(&[], &[], &[], &[], &[], &[], &[], &[], &[], &[], &[])
    else {
        return;
    };
    let mut obs = Observations::default();
    match obs.read_limited(data, path, &cluster, limits()) {
        Ok(()) => assert!(
            contract_err.is_none(),
            "the recommender took input the contract reader refuses: {contract_err:?}"
        ),
        Err(ObsError::Record(e)) => assert!(
            contract_err.is_some(),
            "the recommender refuses input the contract reader takes: {e}"
        ),
        Err(ObsError::UnknownPod { .. } | ObsError::Time { .. }) => {}
    }
});
