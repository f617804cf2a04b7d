//! Differential: the recommender's hot-loop flow parser (`parse_flow_fast`) against the
//! contract's serde parser (`parse_record`) on one line. The fast parser may decline a line
//! (then the contract parser decides), but a flow it returns must be exactly the contract's.
//! Both sides also agree on what is a flow: the contract's flow is the fast parser's, except
//! where JSON repeats a key (the contract keeps the last value, the fast parser declines).
#![no_main]

use leash::observations::{parse_flow_fast, parse_record};
use leash_records::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let fast = parse_flow_fast(line);
    let slow = parse_record(line);
    match (fast, slow) {
        (Some(fast), Ok(Record::Flow(slow))) => assert_eq!(fast, slow, "{line}"),
        (Some(fast), other) => {
            panic!("the fast parser took {fast:?}, the contract gives {other:?} for {line}")
        }
        (None, Ok(Record::Flow(slow))) => {
            // Declining a valid flow costs speed, not correctness; it is allowed only for the
            // one documented difference, a repeated key.
            assert!(
                has_repeated_key(line),
                "the fast parser declined a valid flow {slow:?}: {line}"
            );
        }
        (None, Ok(Record::Dns(_)) | Err(_)) => {}
    }
});

/// Whether some JSON object in `line` repeats a key (serde_json's `Value` keeps the last).
fn has_repeated_key(line: &str) -> bool {
    // A `Value` drops repeated keys: walk the line with a visitor that sees every key.
    struct Pairs(bool);
    impl<'de> serde::Deserialize<'de> for Pairs {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(PairsVisitor)
        }
    }
    struct PairsVisitor;
    impl<'de> serde::de::Visitor<'de> for PairsVisitor {
        type Value = Pairs;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("any JSON")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Pairs, A::Error> {
            let mut keys = std::collections::HashSet::new();
            let mut repeated = false;
            while let Some(key) = map.next_key::<String>()? {
                repeated |= !keys.insert(key);
                repeated |= map.next_value::<Pairs>()?.0;
            }
            Ok(Pairs(repeated))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Pairs, A::Error> {
            let mut repeated = false;
            while let Some(p) = seq.next_element::<Pairs>()? {
                repeated |= p.0;
            }
            Ok(Pairs(repeated))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Pairs, E> {
            Ok(Pairs(false))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Pairs, E> {
            Ok(Pairs(false))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Pairs, E> {
            Ok(Pairs(false))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Pairs, E> {
            Ok(Pairs(false))
        }
        fn visit_str<E>(self, _: &str) -> Result<Pairs, E> {
            Ok(Pairs(false))
        }
        fn visit_unit<E>(self) -> Result<Pairs, E> {
            Ok(Pairs(false))
        }
    }
    serde_json::from_str::<Pairs>(line).is_ok_and(|p| p.0)
}
