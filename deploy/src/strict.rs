//! Unknown-field detection. k8s-openapi (like serde by default) ignores fields it does not
//! know, so a misspelt `readOnlyRootFilesystem` would parse and silently do nothing. Comparing
//! the original JSON with the typed value serialised back finds every field that was dropped.

use serde_json::Value;

/// The paths of the fields in `original` that `typed` (the same object after a round trip
/// through its typed form) lost or changed. `null` in the original counts as absent, since
/// typed forms omit unset fields. Sorted, deterministic.
pub fn dropped_fields(original: &Value, typed: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(original, typed, &mut String::new(), &mut out);
    out.sort();
    out
}

fn walk(original: &Value, typed: &Value, path: &mut String, out: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => {
            for (key, value) in o {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                match t.get(key) {
                    _ if value.is_null() => {}
                    None => out.push(path.clone()),
                    Some(tv) => walk(value, tv, path, out),
                }
                path.truncate(len);
            }
        }
        (Value::Array(o), Value::Array(t)) => {
            for (i, value) in o.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                match t.get(i) {
                    None => out.push(path.clone()),
                    Some(tv) => walk(value, tv, path, out),
                }
                path.truncate(len);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (o, t) if o == t => {}
        (o, t) => out.push(format!(
            "{} ({o} became {t})",
            if path.is_empty() { "<root>" } else { path }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identical_values_drop_nothing() {
        let v = json!({"a": {"b": [1, {"c": "x"}]}, "n": null});
        let t = json!({"a": {"b": [1, {"c": "x"}]}});
        assert!(dropped_fields(&v, &t).is_empty());
    }

    #[test]
    fn nested_and_indexed_paths_are_named() {
        let v =
            json!({"spec": {"containers": [{"name": "a"}, {"name": "b", "typo": true}]}, "x": 1});
        let t = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        assert_eq!(
            dropped_fields(&v, &t),
            vec!["spec.containers[1].typo".to_owned(), "x".to_owned()]
        );
    }

    #[test]
    fn changed_scalars_and_lost_items_are_reported() {
        let v = json!({"a": [1, 2], "b": "s"});
        let t = json!({"a": [1], "b": 3});
        assert_eq!(
            dropped_fields(&v, &t),
            vec!["a[1]".to_owned(), "b (\"s\" became 3)".to_owned()]
        );
    }
}
