//! Everything but watches: list (with paging), get, create, patch, replace and delete.

use serde_json::{Map, Value, json};

use super::request::{Request, Target};
use super::select::Filter;
use super::store::{State, key_of, meta_str, set_meta, status};

/// Everything but watches: list, get, create, patch, replace, delete.
pub(super) fn handle(
    state: &mut State,
    req: &Request,
    target: &Target,
    filter: &Filter,
) -> (u16, Value) {
    let not_found = || {
        let name = target.name.as_deref().unwrap_or_default();
        (
            404,
            status(
                404,
                "NotFound",
                &format!("{} {name:?} not found", target.resource),
            ),
        )
    };
    let namespace = target.namespace.clone().unwrap_or_default();
    match (req.method.as_str(), &target.name) {
        ("GET", None) => (200, list(state, target, filter, req)),
        ("GET", Some(name)) => state
            .collections
            .get(&target.collection)
            .and_then(|c| c.objects.get(&(namespace, name.clone())))
            .map_or_else(not_found, |o| (200, o.clone())),
        ("POST", None) => {
            let Some(mut object) = req.body_json().filter(Value::is_object) else {
                return (400, status(400, "BadRequest", "body is not a JSON object"));
            };
            if let Some(ns) = &target.namespace {
                set_meta(&mut object, "namespace", ns.clone());
            }
            if meta_str(&object, "name").is_empty() {
                let prefix = meta_str(&object, "generateName").to_owned();
                if prefix.is_empty() {
                    return (400, status(400, "BadRequest", "metadata.name is required"));
                }
                state.uid_counter += 1;
                let name = format!("{prefix}{:05x}", state.uid_counter);
                set_meta(&mut object, "name", name);
            }
            let key = key_of(&object);
            let exists = state
                .collections
                .get(&target.collection)
                .is_some_and(|c| c.objects.contains_key(&key));
            if exists {
                let msg = format!("{} {:?} already exists", target.resource, key.1);
                return (409, status(409, "AlreadyExists", &msg));
            }
            state.put(&target.collection, object, true);
            let stored = state.collections[&target.collection].objects[&key].clone();
            (201, stored)
        }
        ("PATCH" | "PUT", Some(name)) => {
            let key = (namespace, name.clone());
            let Some(current) = state
                .collections
                .get(&target.collection)
                .and_then(|c| c.objects.get(&key))
                .cloned()
            else {
                return not_found();
            };
            let Some(body) = req.body_json() else {
                return (400, status(400, "BadRequest", "body is not JSON"));
            };
            // A replace carrying a resourceVersion is conditional, as on the real server: a
            // stale one is a `409 Conflict` (optimistic concurrency, e.g. Lease elections).
            let sent = meta_str(&body, "resourceVersion");
            if req.method == "PUT"
                && !sent.is_empty()
                && sent != meta_str(&current, "resourceVersion")
            {
                return (409, conflict(target, name));
            }
            let ct = req.content_type.as_deref().unwrap_or_default();
            let mut object = if req.method == "PUT" {
                body
            } else if ct.starts_with("application/json-patch+json") {
                let msg = "JSON patches are not supported by the fake API server";
                return (415, status(415, "UnsupportedMediaType", msg));
            } else {
                // Merge, strategic-merge and apply patches are all applied as JSON merge
                // patches (RFC 7386): close enough for the metadata and status writes of tests.
                let mut merged = current;
                merge_patch(&mut merged, &body);
                merged
            };
            set_meta(&mut object, "name", key.1.clone());
            if !key.0.is_empty() {
                set_meta(&mut object, "namespace", key.0.clone());
            }
            state.put(&target.collection, object, true);
            let stored = state.collections[&target.collection].objects[&key].clone();
            (200, stored)
        }
        ("DELETE", Some(name)) => state
            .remove(&target.collection, &namespace, name, true)
            .map_or_else(not_found, |o| (200, o)),
        _ => (
            405,
            status(
                405,
                "MethodNotAllowed",
                &format!("{} {} is not supported", req.method, req.path),
            ),
        ),
    }
}

/// The real server's `Status` for a write with a stale `resourceVersion`.
fn conflict(target: &Target, name: &str) -> Value {
    // Collections are `/apis/GROUP/VERSION/PLURAL` or `/api/VERSION/PLURAL` (the core group).
    let group = target
        .collection
        .strip_prefix("/apis/")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    let qualified = if group.is_empty() {
        target.resource.clone()
    } else {
        format!("{}.{group}", target.resource)
    };
    let message = format!(
        "Operation cannot be fulfilled on {qualified} {name:?}: the object has been modified; \
         please apply your changes to the latest version and try again"
    );
    let mut body = status(409, "Conflict", &message);
    body["details"] = json!({"name": name, "group": group, "kind": target.resource});
    body
}

fn list(state: &State, target: &Target, filter: &Filter, req: &Request) -> Value {
    let limit: usize = req
        .param("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    // The continue token is the last key of the previous page.
    let after = req
        .param("continue")
        .and_then(|c| c.split_once('/'))
        .map(|(ns, name)| (ns.to_owned(), name.to_owned()));
    let matching: Vec<&Value> = state
        .collections
        .get(&target.collection)
        .map(|coll| {
            coll.objects
                .iter()
                .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
                .map(|(_, o)| o)
                .filter(|o| filter.matches(o))
                .collect()
        })
        .unwrap_or_default();
    let items: Vec<&Value> = matching.iter().copied().take(limit).collect();
    let next = (matching.len() > items.len())
        .then(|| items.last().map(|o| key_of(o)))
        .flatten()
        .map(|(ns, name)| format!("{ns}/{name}"));
    let mut metadata = json!({"resourceVersion": state.resource_version.to_string()});
    if let Some(token) = next {
        metadata["continue"] = Value::String(token);
    }
    json!({"kind": "List", "apiVersion": "v1", "metadata": metadata, "items": items})
}

/// RFC 7386 JSON merge patch.
pub(super) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (k, v) in patch {
            if v.is_null() {
                target.remove(k);
            } else {
                merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}
