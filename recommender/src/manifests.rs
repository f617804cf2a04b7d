//! Kubernetes manifest files as the policy readers see them: every YAML (or JSON) document of
//! a file, with the items of a `List` (`kind: List`, `NetworkPolicyList`, …) in its place.
//! One splitting for every kind leash reads from policy files (`cnp`, `cilium`).

use serde::Deserialize;
use serde_json::Value;

/// A document that is not YAML or JSON.
#[derive(Debug)]
pub struct DocumentError {
    /// 1-based document of the file.
    pub document: usize,
    /// The parser's error.
    pub source: serde_norway::Error,
}

/// The objects of a file's text, in file order: each document, or the items of a `List`
/// document in its place.
pub fn objects(text: &str) -> Result<Vec<Value>, DocumentError> {
    let mut out = Vec::new();
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|source| DocumentError {
            document: i + 1,
            source,
        })?;
        let is_list = value
            .get("kind")
            .and_then(Value::as_str)
            .is_some_and(|k| k.ends_with("List"));
        match value {
            Value::Object(mut map) if is_list && map.get("items").is_some_and(Value::is_array) => {
                if let Some(Value::Array(items)) = map.remove("items") {
                    out.extend(items);
                }
            }
            other => out.push(other),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_and_list_items_in_file_order() {
        let text = "kind: A\n---\nkind: NetworkPolicyList\nitems:\n- kind: B\n- kind: C\n---\nkind: D\nitems: [1]\n";
        let kinds: Vec<String> = objects(text)
            .expect("YAML")
            .iter()
            .map(|v| v["kind"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            kinds,
            ["A", "B", "C", "D"],
            "a non-List keeps its items field"
        );
    }

    #[test]
    fn a_bad_document_is_named_by_its_number() {
        let e = objects("kind: A\n---\n[unclosed\n").expect_err("not YAML");
        assert_eq!(e.document, 2);
    }
}
