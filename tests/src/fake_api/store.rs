//! The stored objects, their resource versions and the change log watches replay, plus the
//! failures a test injects.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};

use serde_json::{Map, Value, json};

use super::request::{Request, Target};
use super::watch::{WatchMsg, Watcher, event_line};

/// Objects of one resource, keyed by (namespace or `""`, name).
#[derive(Default)]
pub(super) struct Collection {
    pub(super) objects: BTreeMap<(String, String), Value>,
}

/// A recorded change, for replay to watches resuming from an older version.
pub(super) struct Change {
    pub(super) rv: u64,
    pub(super) collection: String,
    pub(super) kind: EventKind,
    /// The object before the change (for selector transitions).
    pub(super) old: Option<Value>,
    /// The object after the change (for `DELETED`, the last state with the new version).
    pub(super) new: Value,
}

/// What a change did to its object.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum EventKind {
    Added,
    Modified,
    Deleted,
}

/// The whole server state, behind one mutex.
#[derive(Default)]
pub(super) struct State {
    pub(super) resource_version: u64,
    pub(super) uid_counter: u64,
    pub(super) collections: BTreeMap<String, Collection>,
    /// Changes since the last compaction.
    pub(super) log: Vec<Change>,
    /// Watches from a version below this one get `410 Gone`.
    pub(super) compacted: u64,
    pub(super) watchers: Vec<Watcher>,
    pub(super) requests: Vec<Request>,
    /// Injected failures, tried in order.
    pub(super) failures: Vec<Failure>,
    /// Group versions (`policy.networking.k8s.io/v1alpha2`) the server does not serve, as
    /// when their CRD is not installed: every path under them answers `404`.
    pub(super) unserved: BTreeSet<String>,
    /// Discovery: the `APIResource` entries of each group version registered with
    /// [`super::FakeApi::serve_kind`].
    pub(super) discovery: BTreeMap<String, Vec<Value>>,
    /// Tokens, users and grants for TokenReview and SubjectAccessReview.
    pub(super) reviews: super::reviews::Reviews,
}

/// A failure injected by the test: the next `remaining` requests with this verb (on this
/// collection) get HTTP `status`.
pub(super) struct Failure {
    pub(super) verb: String,
    pub(super) collection: Option<String>,
    pub(super) status: u16,
    pub(super) remaining: usize,
}

/// Locks the state.
pub(super) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking test thread must not wedge the server for the others.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A typed object as JSON.
pub(super) fn to_json<T: serde::Serialize>(object: &T) -> Value {
    // k8s-openapi types always serialize; a failure would be a bug in the fixture type.
    serde_json::to_value(object).unwrap_or(Value::Null)
}

/// A `metadata` string field, `""` when absent.
pub(super) fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The (namespace, name) key an object is stored under.
pub(super) fn key_of(object: &Value) -> (String, String) {
    (
        meta_str(object, "namespace").to_owned(),
        meta_str(object, "name").to_owned(),
    )
}

/// Sets a `metadata` string field, creating `metadata` if needed.
pub(super) fn set_meta(object: &mut Value, field: &str, value: String) {
    if !object.is_object() {
        *object = Value::Object(Map::new());
    }
    if let Some(obj) = object.as_object_mut() {
        let meta = obj
            .entry("metadata")
            .or_insert_with(|| Value::Object(Map::new()));
        if !meta.is_object() {
            *meta = Value::Object(Map::new());
        }
        if let Some(meta) = meta.as_object_mut() {
            meta.insert(field.to_owned(), Value::String(value));
        }
    }
}

/// A Kubernetes `Status` object.
pub(super) fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl State {
    /// The injected failure status for this request, if any (and counts it down).
    pub(super) fn injected_failure(&mut self, req: &Request, target: &Target) -> Option<u16> {
        let verb = req.access()?.verb;
        let rule = self.failures.iter_mut().find(|f| {
            f.remaining > 0
                && f.verb == verb
                && f.collection
                    .as_ref()
                    .is_none_or(|c| *c == target.collection)
        })?;
        rule.remaining -= 1;
        let status = rule.status;
        self.failures.retain(|f| f.remaining > 0);
        Some(status)
    }

    fn next_rv(&mut self) -> u64 {
        self.resource_version += 1;
        self.resource_version
    }

    /// Stores `object` with a new version; `announce` records and sends the event.
    pub(super) fn put(&mut self, collection: &str, mut object: Value, announce: bool) -> u64 {
        let rv = self.next_rv();
        set_meta(&mut object, "resourceVersion", rv.to_string());
        if meta_str(&object, "uid").is_empty() {
            self.uid_counter += 1;
            let uid = format!("00000000-0000-4000-8000-{:012x}", self.uid_counter);
            set_meta(&mut object, "uid", uid);
        }
        let key = key_of(&object);
        let old = self
            .collections
            .entry(collection.to_owned())
            .or_default()
            .objects
            .insert(key, object.clone());
        if announce {
            let kind = if old.is_some() {
                EventKind::Modified
            } else {
                EventKind::Added
            };
            self.record(Change {
                rv,
                collection: collection.to_owned(),
                kind,
                old,
                new: object,
            });
        }
        rv
    }

    pub(super) fn remove(
        &mut self,
        collection: &str,
        namespace: &str,
        name: &str,
        announce: bool,
    ) -> Option<Value> {
        let mut object = self
            .collections
            .get_mut(collection)?
            .objects
            .remove(&(namespace.to_owned(), name.to_owned()))?;
        let rv = self.next_rv();
        set_meta(&mut object, "resourceVersion", rv.to_string());
        if announce {
            self.record(Change {
                rv,
                collection: collection.to_owned(),
                kind: EventKind::Deleted,
                old: None,
                new: object.clone(),
            });
        }
        Some(object)
    }

    fn record(&mut self, change: Change) {
        self.watchers.retain(|w| {
            if w.collection != change.collection {
                return true;
            }
            match event_line(&change, &w.filter) {
                Some(line) => w.tx.send(WatchMsg::Event(line)).is_ok(),
                None => !w.tx.is_closed(),
            }
        });
        self.log.push(change);
    }
}
