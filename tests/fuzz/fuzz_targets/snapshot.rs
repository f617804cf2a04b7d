//! The snapshot loader over arbitrary text: `leash_records::snapshot::parse_str` (YAML or JSON,
//! multi-document, `List`s, object checks into `k8s-openapi` types), then the recommender's
//! model of the cluster from it, strict (`Cluster::from_snapshot`) and lenient
//! (`Cluster::from_snapshot_lenient`, serve's view). Errors must name the file.
//!
//! The strict model builds exactly when the lenient one rejects nothing.
#![no_main]

use std::path::Path;

use leash::cluster::Cluster;
use leash_records::snapshot::parse_str;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let snapshot = match parse_str(text, Path::new("fuzz-cluster.yaml")) {
        Ok(s) => s,
        Err(e) => {
            assert!(e.to_string().contains("fuzz-cluster.yaml"), "{e}");
            return;
        }
    };
    let strict = Cluster::from_snapshot(&snapshot);
    let (_lenient, rejected) = Cluster::from_snapshot_lenient(&snapshot);
    assert_eq!(
        strict.is_ok(),
        rejected.is_empty(),
        "strict: {:?}, lenient rejected: {rejected:?}",
        strict.err()
    );
});
