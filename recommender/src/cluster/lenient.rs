//! Objects decoded leniently: an object that does not match its k8s-openapi schema is kept as
//! its metadata and the decode error, instead of failing the whole list or watch.
//!
//! kube-rs decodes a list page or a watch event as one document; with plain typed objects, one
//! object the types cannot represent (a newer API version's field shape, a hand-edited object)
//! would make every list fail and the watcher retry forever. Wrapped in [`Lenient`], that object
//! takes its place in the reflector store (so a later fix or deletion still applies to it) and
//! the model builder names and skips it.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use leash_records::error::Chain;
use serde::{Deserialize, Deserializer, de::DeserializeOwned};
use serde_json::Value;

/// A `K`, or what could be read of an object that is not a valid `K`.
#[derive(Debug, Clone)]
pub(crate) enum Lenient<K> {
    /// The object decoded.
    Valid(K),
    /// The object did not decode.
    Invalid {
        /// Its metadata, as far as it could be read (name, namespace, resourceVersion); boxed,
        /// as this is the rare case.
        metadata: Box<ObjectMeta>,
        /// The decode error.
        error: String,
    },
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Lenient<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        // The same check as a snapshot's: a label leash would turn into a selector must be
        // valid, whichever way the object came.
        let decoded = K::deserialize(&value)
            .map_err(|e| Chain(&e).to_string())
            .and_then(|object| {
                leash_records::snapshot::check_object(&value)?;
                Ok(object)
            });
        match decoded {
            Ok(object) => Ok(Lenient::Valid(object)),
            Err(error) => Ok(Lenient::Invalid {
                metadata: Box::new(salvage_metadata(&value)),
                error,
            }),
        }
    }
}

/// The metadata of an undecodable object: all of it if it decodes, else the identifying strings.
fn salvage_metadata(value: &Value) -> ObjectMeta {
    let meta = value.get("metadata");
    if let Some(m) = meta.and_then(|m| ObjectMeta::deserialize(m).ok()) {
        return m;
    }
    let text = |field: &str| {
        meta.and_then(|m| m.get(field))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    ObjectMeta {
        name: text("name"),
        namespace: text("namespace"),
        resource_version: text("resourceVersion"),
        uid: text("uid"),
        ..ObjectMeta::default()
    }
}

impl<K> kube::Resource for Lenient<K>
where
    K: kube::Resource<DynamicType = ()>,
{
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Lenient::Valid(k) => k.meta(),
            Lenient::Invalid { metadata, .. } => metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Lenient::Valid(k) => k.meta_mut(),
            Lenient::Invalid { metadata, .. } => metadata,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::Resource;

    #[test]
    fn invalid_objects_keep_their_identity() {
        let ok: Lenient<Pod> =
            serde_json::from_str(r#"{"metadata":{"name":"a","namespace":"shop"}}"#).unwrap();
        assert!(matches!(ok, Lenient::Valid(_)));
        let bad: Lenient<Pod> = serde_json::from_str(
            r#"{"metadata":{"name":"b","namespace":"shop","resourceVersion":"9"},"spec":{"containers":7}}"#,
        )
        .unwrap();
        let Lenient::Invalid { error, .. } = &bad else {
            panic!("decoded {bad:?}");
        };
        assert!(error.contains("invalid type"), "{error}");
        assert_eq!(bad.meta().name.as_deref(), Some("b"));
        assert_eq!(bad.meta().resource_version.as_deref(), Some("9"));
        let worse: Lenient<Pod> =
            serde_json::from_str(r#"{"metadata":{"name":"c","labels":[1]}}"#).unwrap();
        assert_eq!(worse.meta().name.as_deref(), Some("c"));
        assert_eq!(<Lenient<Pod>>::plural(&()), "pods");
        let bad_label: Lenient<Pod> = serde_json::from_str(
            r#"{"metadata":{"name":"d","namespace":"shop","labels":{"bad key":"x"}}}"#,
        )
        .unwrap();
        let Lenient::Invalid { error, .. } = &bad_label else {
            panic!("decoded {bad_label:?}");
        };
        assert_eq!(
            error,
            "metadata.labels: invalid label key \"bad key\": character not allowed at byte 3"
        );
        assert_eq!(bad_label.meta().name.as_deref(), Some("d"));
    }
}
