//! Property tests of the checkers: they never panic, find nothing in an unchanged value, and
//! find exactly the field that was removed.

use leash_deploy::flags::{flag_names, missing_from_help};
use leash_deploy::strict::dropped_fields;
use proptest::prelude::*;
use serde_json::Value;

/// Arbitrary JSON without nulls (a null in the original counts as absent by design).
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-z0-9 ._-]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z]{1,6}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `parent` + `child` as the checker writes paths (`a.b`, `a[0]`, `[0].b`).
fn join(parent: &str, child: &str) -> String {
    if child.starts_with('[') || parent.is_empty() {
        format!("{parent}{child}")
    } else {
        format!("{parent}.{child}")
    }
}

/// For every object key anywhere in `v`: its path, and a copy of `v` without it.
fn removals(v: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let mut without = map.clone();
                without.remove(k);
                out.push((k.clone(), Value::Object(without)));
                for (p, changed) in removals(child) {
                    let mut copy = map.clone();
                    copy.insert(k.clone(), changed);
                    out.push((join(k, &p), Value::Object(copy)));
                }
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                for (p, changed) in removals(child) {
                    let mut copy = items.clone();
                    copy[i] = changed;
                    out.push((join(&format!("[{i}]"), &p), Value::Array(copy)));
                }
            }
        }
        _ => {}
    }
    out
}

proptest! {
    #[test]
    fn an_unchanged_value_drops_nothing(v in json()) {
        prop_assert!(dropped_fields(&v, &v).is_empty());
    }

    #[test]
    fn a_removed_key_is_reported_at_its_path(v in json()) {
        for (path, without) in removals(&v) {
            prop_assert_eq!(dropped_fields(&v, &without), vec![path]);
        }
    }

    #[test]
    fn flag_helpers_never_panic(args in prop::collection::vec(".{0,12}", 0..8), help in ".{0,200}") {
        let flags = flag_names(&args);
        prop_assert!(flags.iter().all(|f| f.starts_with("--")));
        let missing = missing_from_help(&help, &flags);
        prop_assert!(missing.len() <= flags.len());
    }
}
