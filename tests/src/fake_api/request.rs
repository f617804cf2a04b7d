//! What a request asks for: the recorded [`Request`], the RBAC permission it needs
//! ([`Access`]), and its resource path taken apart.

use serde_json::Value;

/// One request the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, `PATCH`, …
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Query parameters, percent-decoded, in request order.
    pub query: Vec<(String, String)>,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The request body (de-chunked).
    pub body: Vec<u8>,
}

/// The Kubernetes permission a request needs, as RBAC names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    /// The API group (`""` for core).
    pub group: String,
    /// The plural resource, e.g. `pods`.
    pub resource: String,
    /// The RBAC verb: `get`, `list`, `watch`, `create`, `patch`, `update` or `delete`.
    pub verb: &'static str,
    /// The namespace of a namespaced request, `None` for cluster-wide ones.
    pub namespace: Option<String>,
}

impl Request {
    /// The first value of query parameter `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a watch (`watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch"), Some("true" | "1"))
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The permission this request needs, or `None` for paths outside the resource API
    /// (e.g. `/version`).
    pub fn access(&self) -> Option<Access> {
        let target = Target::parse(&self.path)?;
        let verb = match (self.method.as_str(), target.name.is_some()) {
            ("GET", false) if self.is_watch() => "watch",
            ("GET", false) => "list",
            ("GET", true) => "get",
            ("POST", _) => "create",
            ("PATCH", _) => "patch",
            ("PUT", _) => "update",
            ("DELETE", false) => "deletecollection",
            ("DELETE", true) => "delete",
            _ => return None,
        };
        Some(Access {
            group: target.group,
            resource: target.resource,
            verb,
            namespace: target.namespace,
        })
    }
}

/// The collection path of a k8s-openapi type, e.g. `/apis/apps/v1/deployments`.
pub fn collection_path<K: k8s_openapi::Resource>() -> String {
    if K::GROUP.is_empty() {
        format!("/api/{}/{}", K::VERSION, K::URL_PATH_SEGMENT)
    } else {
        format!("/apis/{}/{}/{}", K::GROUP, K::VERSION, K::URL_PATH_SEGMENT)
    }
}

/// A resource request path, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    /// The cluster-wide collection, e.g. `/api/v1/pods`: the key objects are stored under.
    pub(super) collection: String,
    /// The API group (`""` for core).
    pub(super) group: String,
    /// The plural resource, e.g. `pods`.
    pub(super) resource: String,
    /// The namespace of a namespaced path.
    pub(super) namespace: Option<String>,
    /// The object's name, for paths of single objects.
    pub(super) name: Option<String>,
}

impl Target {
    /// Takes a resource path apart; `None` for paths outside the resource API.
    pub(super) fn parse(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (prefix, group, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => (format!("/api/{version}"), String::new(), rest),
            ["apis", group, version, rest @ ..] => (
                format!("/apis/{group}/{version}"),
                (*group).to_owned(),
                rest,
            ),
            _ => return None,
        };
        let (namespace, resource, name) = match rest {
            [resource] => (None, *resource, None),
            ["namespaces", ns, resource] => (Some(*ns), *resource, None),
            ["namespaces", ns, resource, name, ..] => (Some(*ns), *resource, Some(*name)),
            [resource, name, ..] => (None, *resource, Some(*name)),
            _ => return None,
        };
        if resource.is_empty() {
            return None;
        }
        Some(Target {
            collection: format!("{prefix}/{resource}"),
            group,
            resource: resource.to_owned(),
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
        })
    }
}
