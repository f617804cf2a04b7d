//! A fake Kubernetes API server on 127.0.0.1, for testing watch and write code through kube-rs's
//! real HTTP client.
//!
//! It speaks just enough HTTP/1.1 (one request per connection, `Connection: close`) for what
//! clients of the Kubernetes API do:
//! - **list** `GET /api/v1/pods`, `/apis/apps/v1/namespaces/shop/deployments`, … for any resource
//!   path, with `labelSelector`, `fieldSelector`, `limit` and `continue`;
//! - **watch** the same paths with `watch=true`: a chunked stream of JSON watch events. A watch
//!   from `resourceVersion` N replays every recorded event newer than N (as the real server does
//!   from its watch cache); from `""`/`"0"` it starts with an `ADDED` event per existing object;
//!   from a version older than the last compaction it gets an `ERROR` event with a `410 Gone`
//!   status, which makes kube-rs's watcher re-list. `timeoutSeconds` ends the stream;
//! - **get**, **create** (`POST`), **patch** (`PATCH`, merge semantics), **replace** (`PUT`) and
//!   **delete** of single objects, each producing the matching watch event.
//!
//! Tests change objects with [`FakeApi::apply`], [`FakeApi::delete`], and their `*_silently`
//! variants (changes no watch will ever replay, as if the events had been compacted away while a
//! client was disconnected); they end watches with [`FakeApi::end_watches`] (the client should
//! resume from its last version), expire them with [`FakeApi::expire_watches`] (the client must
//! re-list), or make the next watches fail at the HTTP level with
//! [`FakeApi::fail_next_watches`]. Every request is recorded ([`FakeApi::requests`]) with its
//! method, path, decoded query and body, and [`Request::access`] names the RBAC verb and resource
//! it needs, so a test can check a client against its declared permissions.
//!
//! The server binds 127.0.0.1 only, on a port the kernel picks. Dropping the [`FakeApi`] stops it
//! and ends the open watches.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Requests larger than this (headers or body) are refused; tests never need more.
const MAX_BODY: usize = 16 << 20;
const MAX_HEADER: usize = 64 << 10;

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
struct Target {
    /// The cluster-wide collection, e.g. `/api/v1/pods`: the key objects are stored under.
    collection: String,
    group: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

impl Target {
    fn parse(path: &str) -> Option<Self> {
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

/// What a watch connection receives.
enum WatchMsg {
    /// One JSON event line.
    Event(String),
    /// The end of the stream.
    End,
}

/// Objects of one resource, keyed by (namespace or `""`, name).
#[derive(Default)]
struct Collection {
    objects: BTreeMap<(String, String), Value>,
}

/// A recorded change, for replay to watches resuming from an older version.
struct Change {
    rv: u64,
    collection: String,
    kind: EventKind,
    /// The object before the change (for selector transitions).
    old: Option<Value>,
    /// The object after the change (for `DELETED`, the last state with the new version).
    new: Value,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EventKind {
    Added,
    Modified,
    Deleted,
}

struct Watcher {
    collection: String,
    filter: Filter,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

#[derive(Default)]
struct State {
    resource_version: u64,
    uid_counter: u64,
    collections: BTreeMap<String, Collection>,
    /// Changes since the last compaction.
    log: Vec<Change>,
    /// Watches from a version below this one get `410 Gone`.
    compacted: u64,
    watchers: Vec<Watcher>,
    requests: Vec<Request>,
    /// Injected failures, tried in order.
    failures: Vec<Failure>,
}

/// A failure injected by the test: the next `remaining` requests with this verb (on this
/// collection) get HTTP `status`.
struct Failure {
    verb: String,
    collection: Option<String>,
    status: u16,
    remaining: usize,
}

/// The fake API server. See the module docs.
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl FakeApi {
    /// Starts a server on 127.0.0.1 (a free port). Needs a tokio runtime.
    pub async fn start() -> io::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state: Arc<Mutex<State>> = Arc::default();
        let accept = tokio::spawn({
            let state = state.clone();
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(state.clone(), stream));
                }
            }
        });
        Ok(FakeApi {
            state,
            addr,
            accept,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube-rs configuration pointing at this server (plain HTTP, no credentials).
    pub fn config(&self) -> kube::Config {
        // The URL is built from a socket address, so it always parses.
        let url = self.url().parse().unwrap_or_default();
        kube::Config::new(url)
    }

    /// A kube-rs client for this server. Needs a tokio runtime.
    pub fn client(&self) -> kube::Result<kube::Client> {
        kube::Client::try_from(self.config())
    }

    /// A kubeconfig file's text pointing at this server (context `fake`).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n\
             current-context: fake\n",
            self.url()
        )
    }

    /// Writes [`Self::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Creates or replaces a typed object, sending `ADDED` or `MODIFIED` to matching watches.
    /// Returns the object's new resource version.
    pub fn apply<K: k8s_openapi::Resource + serde::Serialize>(&self, object: &K) -> u64 {
        self.apply_json(&collection_path::<K>(), to_json(object))
    }

    /// Creates or replaces an object given as JSON in `collection` (e.g. `/api/v1/pods`); the
    /// object need not be valid for its kind, which is how tests feed clients broken objects.
    pub fn apply_json(&self, collection: &str, object: Value) -> u64 {
        self.lock().put(collection, object, true)
    }

    /// Creates or replaces a typed object without any watch event ever telling of it.
    pub fn apply_silently<K: k8s_openapi::Resource + serde::Serialize>(&self, object: &K) -> u64 {
        self.lock()
            .put(&collection_path::<K>(), to_json(object), false)
    }

    /// JSON version of [`Self::apply_silently`].
    pub fn apply_json_silently(&self, collection: &str, object: Value) -> u64 {
        self.lock().put(collection, object, false)
    }

    /// Deletes an object (`namespace` `""` for cluster-scoped kinds), sending `DELETED`.
    /// Returns whether it existed.
    pub fn delete<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> bool {
        self.delete_json(&collection_path::<K>(), namespace, name)
    }

    /// [`Self::delete`] by collection path.
    pub fn delete_json(&self, collection: &str, namespace: &str, name: &str) -> bool {
        self.lock()
            .remove(collection, namespace, name, true)
            .is_some()
    }

    /// Deletes an object without any watch event ever telling of it.
    pub fn delete_silently<K: k8s_openapi::Resource>(&self, namespace: &str, name: &str) -> bool {
        self.lock()
            .remove(&collection_path::<K>(), namespace, name, false)
            .is_some()
    }

    /// The stored object, if any.
    pub fn get_json(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .collections
            .get(collection)?
            .objects
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Every stored object of a collection, sorted by namespace and name.
    pub fn objects(&self, collection: &str) -> Vec<Value> {
        self.lock()
            .collections
            .get(collection)
            .map(|c| c.objects.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The current (latest) resource version.
    pub fn resource_version(&self) -> u64 {
        self.lock().resource_version
    }

    /// The number of open watch streams (of `collection`, or all when `None`).
    pub fn watch_count(&self, collection: Option<&str>) -> usize {
        let mut state = self.lock();
        state.watchers.retain(|w| !w.tx.is_closed());
        state
            .watchers
            .iter()
            .filter(|w| collection.is_none_or(|c| w.collection == c))
            .count()
    }

    /// Ends every watch stream cleanly, as the server does at `timeoutSeconds`; clients resume
    /// from their last version and lose nothing.
    pub fn end_watches(&self) {
        for w in self.lock().watchers.drain(..) {
            let _ = w.tx.send(WatchMsg::End);
        }
    }

    /// Forgets the event history: a watch resuming from any version older than now gets an
    /// `ERROR` event with `410 Gone` (the client must re-list).
    pub fn compact(&self) {
        let mut state = self.lock();
        state.compacted = state.resource_version + 1;
        state.log.clear();
    }

    /// Compacts the history and sends every open watch an `ERROR` event with `410 Gone`, then
    /// ends it: kube-rs's watcher re-lists, and must converge to the current objects.
    pub fn expire_watches(&self) {
        self.compact();
        let gone = json!({"type": "ERROR", "object": status(
            410, "Expired", "too old resource version")})
        .to_string();
        for w in self.lock().watchers.drain(..) {
            let _ = w.tx.send(WatchMsg::Event(gone.clone()));
            let _ = w.tx.send(WatchMsg::End);
        }
    }

    /// Answers the next `count` watch requests (of any collection) with HTTP `status` (e.g.
    /// 410 or 500) and a `Status` body, instead of a stream.
    pub fn fail_next_watches(&self, status: u16, count: usize) {
        self.fail_next("watch", None, status, count);
    }

    /// Answers the next `count` requests with RBAC verb `verb` (`list`, `watch`, `create`, …;
    /// see [`Request::access`]) on `collection` (e.g. `/apis/batch/v1/cronjobs`; `None` for
    /// any) with HTTP `status` and a `Status` body.
    pub fn fail_next(&self, verb: &str, collection: Option<&str>, status: u16, count: usize) {
        self.lock().failures.push(Failure {
            verb: verb.to_owned(),
            collection: collection.map(str::to_owned),
            status,
            remaining: count,
        });
    }

    /// Removes every injected failure not yet used up (e.g. one set with `count`
    /// `usize::MAX` to fail until the test says otherwise).
    pub fn clear_failures(&self) {
        self.lock().failures.clear();
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut state) = self.state.lock() {
            for w in state.watchers.drain(..) {
                let _ = w.tx.send(WatchMsg::End);
            }
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panicking test thread must not wedge the server for the others.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn to_json<T: serde::Serialize>(object: &T) -> Value {
    // k8s-openapi types always serialize; a failure would be a bug in the fixture type.
    serde_json::to_value(object).unwrap_or(Value::Null)
}

fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object
        .get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn key_of(object: &Value) -> (String, String) {
    (
        meta_str(object, "namespace").to_owned(),
        meta_str(object, "name").to_owned(),
    )
}

fn set_meta(object: &mut Value, field: &str, value: String) {
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
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl State {
    /// The injected failure status for this request, if any (and counts it down).
    fn injected_failure(&mut self, req: &Request, target: &Target) -> Option<u16> {
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
    fn put(&mut self, collection: &str, mut object: Value, announce: bool) -> u64 {
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

    fn remove(
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

/// The watch event a watcher with `filter` sees for `change`, if any. An object that stops
/// matching the filter is `DELETED` for that watcher, one that starts matching is `ADDED`, as
/// the real server does.
fn event_line(change: &Change, filter: &Filter) -> Option<String> {
    let now = filter.matches(&change.new);
    let before = change.old.as_ref().is_some_and(|o| filter.matches(o));
    let kind = match change.kind {
        EventKind::Added if now => "ADDED",
        EventKind::Deleted if now => "DELETED",
        EventKind::Modified if now && before => "MODIFIED",
        EventKind::Modified if now => "ADDED",
        EventKind::Modified if before => "DELETED",
        _ => return None,
    };
    Some(json!({"type": kind, "object": change.new}).to_string())
}

/// Which objects a list or watch selects: namespace, `labelSelector`, `fieldSelector`.
#[derive(Debug, Clone, Default)]
struct Filter {
    namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<(String, bool, String)>,
}

#[derive(Debug, Clone)]
enum LabelReq {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Filter {
    fn new(target: &Target, req: &Request) -> Result<Self, String> {
        let mut filter = Filter {
            namespace: target.namespace.clone(),
            ..Filter::default()
        };
        if let Some(sel) = req.param("labelSelector") {
            for term in split_terms(sel) {
                filter.labels.push(parse_label_req(term)?);
            }
        }
        if let Some(sel) = req.param("fieldSelector") {
            for term in split_terms(sel) {
                let (path, positive, value) = if let Some((p, v)) = term.split_once("!=") {
                    (p, false, v)
                } else if let Some((p, v)) = term.split_once("==") {
                    (p, true, v)
                } else if let Some((p, v)) = term.split_once('=') {
                    (p, true, v)
                } else {
                    return Err(format!("invalid field selector term {term:?}"));
                };
                filter
                    .fields
                    .push((path.trim().to_owned(), positive, value.trim().to_owned()));
            }
        }
        Ok(filter)
    }

    fn matches(&self, object: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && meta_str(object, "namespace") != ns
        {
            return false;
        }
        let labels = object.get("metadata").and_then(|m| m.get("labels"));
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|req| match req {
            LabelReq::Eq(k, v) => label(k) == Some(v),
            LabelReq::NotEq(k, v) => label(k) != Some(v),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
        });
        let fields_ok = self.fields.iter().all(|(path, positive, want)| {
            let mut v = Some(object);
            for part in path.split('.') {
                v = v.and_then(|v| v.get(part));
            }
            let have = match v {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (have == *want) == *positive
        });
        labels_ok && fields_ok
    }
}

/// Splits a selector at commas outside parentheses.
fn split_terms(sel: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in sel.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&sel[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&sel[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_label_req(term: &str) -> Result<LabelReq, String> {
    let set = |rest: &str| -> Result<Vec<String>, String> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|r| r.strip_suffix(')'))
            .ok_or_else(|| format!("invalid label selector set in {term:?}"))?;
        Ok(inner.split(',').map(|v| v.trim().to_owned()).collect())
    };
    if let Some((k, rest)) = term.split_once(" notin ") {
        return Ok(LabelReq::NotIn(k.trim().to_owned(), set(rest)?));
    }
    if let Some((k, rest)) = term.split_once(" in ") {
        return Ok(LabelReq::In(k.trim().to_owned(), set(rest)?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(LabelReq::NotEq(k.trim().to_owned(), v.trim().to_owned()));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(LabelReq::Eq(k.trim().to_owned(), v.trim().to_owned()));
    }
    if let Some(k) = term.strip_prefix('!') {
        return Ok(LabelReq::NotExists(k.trim().to_owned()));
    }
    if term.contains(char::is_whitespace) || term.contains('(') {
        return Err(format!("invalid label selector term {term:?}"));
    }
    Ok(LabelReq::Exists(term.to_owned()))
}

/// Serves one connection: one request, then close.
async fn serve(state: Arc<Mutex<State>>, stream: TcpStream) {
    let mut reader = BufReader::new(stream);
    let req = match read_request(&mut reader).await {
        Ok(Some(req)) => req,
        Ok(None) => return,
        Err(e) => {
            let body = status(400, "BadRequest", &e.to_string()).to_string();
            let _ = respond(reader.get_mut(), 400, &body).await;
            return;
        }
    };
    let mut stream = reader.into_inner();
    lock(&state).requests.push(req.clone());
    let Some(target) = Target::parse(&req.path) else {
        let body = status(404, "NotFound", &format!("no such path {}", req.path)).to_string();
        let _ = respond(&mut stream, 404, &body).await;
        return;
    };
    let filter = match Filter::new(&target, &req) {
        Ok(f) => f,
        Err(e) => {
            let _ = respond(&mut stream, 400, &status(400, "BadRequest", &e).to_string()).await;
            return;
        }
    };
    let injected = lock(&state).injected_failure(&req, &target);
    if let Some(code) = injected {
        let body = status(code, "Injected", "failure injected by the test").to_string();
        let _ = respond(&mut stream, code, &body).await;
        return;
    }
    if req.method == "GET" && target.name.is_none() && req.is_watch() {
        watch(&state, stream, &target, filter, &req).await;
        return;
    }
    let (code, body) = handle(&mut lock(&state), &req, &target, &filter);
    let _ = respond(&mut stream, code, &body.to_string()).await;
}

/// Everything but watches: list, get, create, patch, replace, delete.
fn handle(state: &mut State, req: &Request, target: &Target, filter: &Filter) -> (u16, Value) {
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
fn merge_patch(target: &mut Value, patch: &Value) {
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

/// The events a new watch starts with, and its registration for the live ones.
fn subscribe(
    st: &mut State,
    target: &Target,
    filter: Filter,
    req: &Request,
) -> mpsc::UnboundedReceiver<WatchMsg> {
    let (tx, rx) = mpsc::unbounded_channel();
    let from = req.param("resourceVersion").unwrap_or_default();
    match from.parse::<u64>() {
        Ok(rv) if rv > 0 && rv < st.compacted => {
            // What kube-apiserver does for a version out of its watch cache: 200, then an
            // ERROR event carrying 410 Gone, then the end of the stream.
            let msg = format!("too old resource version: {rv} ({})", st.compacted);
            let gone = json!({"type": "ERROR", "object": status(410, "Expired", &msg)});
            let _ = tx.send(WatchMsg::Event(gone.to_string()));
            let _ = tx.send(WatchMsg::End);
            return rx;
        }
        Ok(rv) if rv > 0 => {
            for change in st.log.iter().filter(|c| c.rv > rv) {
                if change.collection == target.collection
                    && let Some(line) = event_line(change, &filter)
                {
                    let _ = tx.send(WatchMsg::Event(line));
                }
            }
        }
        _ => {
            // "" or "0": start with the current state, as synthetic ADDED events.
            let current = st
                .collections
                .get(&target.collection)
                .map(|c| c.objects.values().filter(|o| filter.matches(o)));
            for object in current.into_iter().flatten() {
                let line = json!({"type": "ADDED", "object": object}).to_string();
                let _ = tx.send(WatchMsg::Event(line));
            }
        }
    }
    st.watchers.push(Watcher {
        collection: target.collection.clone(),
        filter,
        tx,
    });
    rx
}

async fn watch(
    state: &Mutex<State>,
    mut stream: TcpStream,
    target: &Target,
    filter: Filter,
    req: &Request,
) {
    // Replay and subscribe under one lock, so no event falls in between.
    let mut rx = subscribe(&mut lock(state), target, filter, req);
    let timeout = req
        .param("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map_or(Duration::from_secs(3600), Duration::from_secs);
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    loop {
        let mut probe = [0u8; 1];
        let msg = tokio::select! {
            msg = rx.recv() => msg,
            () = &mut deadline => None,
            // The client hung up (nothing more is expected from it on this connection): the
            // watch is over, so it no longer counts as open.
            _ = stream.read(&mut probe) => return,
        };
        let Some(WatchMsg::Event(line)) = msg else {
            break;
        };
        let chunk = format!("{:x}\r\n{line}\n\r\n", line.len() + 1);
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            return;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let _ = stream.shutdown().await;
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        415 => "Unsupported Media Type",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

async fn respond(stream: &mut TcpStream, code: u16, body: &str) -> io::Result<()> {
    let response = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        reason_phrase(code),
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one request; `Ok(None)` when the client closed the connection without sending one.
async fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let start = head.len();
        let n = (&mut *reader)
            .take((MAX_HEADER + 1 - head.len().min(MAX_HEADER)) as u64)
            .read_until(b'\n', &mut head)
            .await?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(bad("connection closed inside the request head"));
        }
        if head.len() > MAX_HEADER {
            return Err(bad("request head too large"));
        }
        if &head[start..] == b"\r\n" || &head[start..] == b"\n" {
            break;
        }
    }
    let text = String::from_utf8(head).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = text.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(bad(format!("bad request line {request_line:?}")));
    };
    let mut headers = BTreeMap::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if let Some((k, v)) = line.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        read_chunked(reader).await?
    } else {
        let len: usize = match headers.get("content-length") {
            Some(l) => l.parse().map_err(|_| bad("bad Content-Length"))?,
            None => 0,
        };
        if len > MAX_BODY {
            return Err(bad("request body too large"));
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).await?;
        body
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    Ok(Some(Request {
        method: method.to_owned(),
        path: percent_decode(path),
        query,
        content_type: headers.get("content-type").cloned(),
        body,
    }))
}

async fn read_chunked(reader: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        (&mut *reader).take(1024).read_line(&mut line).await?;
        let size = line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size, 16).map_err(|_| bad("bad chunk size"))?;
        if body.len() + size > MAX_BODY {
            return Err(bad("request body too large"));
        }
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                let n = (&mut *reader).take(1024).read_line(&mut line).await?;
                if n == 0 || line.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..]).await?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).await?;
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, query: &[(&str, &str)]) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: query
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            content_type: None,
            body: Vec::new(),
        }
    }

    #[test]
    fn paths_name_group_resource_namespace_and_verb() {
        let a = |m, p, q: &[(&str, &str)]| req(m, p, q).access().unwrap();
        let list = a("GET", "/api/v1/pods", &[]);
        assert_eq!(
            (list.group.as_str(), list.resource.as_str(), list.verb),
            ("", "pods", "list")
        );
        let watch = a(
            "GET",
            "/apis/networking.k8s.io/v1/networkpolicies",
            &[("watch", "true")],
        );
        assert_eq!(
            (watch.group.as_str(), watch.resource.as_str(), watch.verb),
            ("networking.k8s.io", "networkpolicies", "watch")
        );
        let create = a("POST", "/apis/events.k8s.io/v1/namespaces/shop/events", &[]);
        assert_eq!(
            (create.resource.as_str(), create.verb, create.namespace),
            ("events", "create", Some("shop".into()))
        );
        let patch = a(
            "PATCH",
            "/apis/events.k8s.io/v1/namespaces/shop/events/e1",
            &[],
        );
        assert_eq!(patch.verb, "patch");
        let ns = a("GET", "/api/v1/namespaces", &[]);
        assert_eq!((ns.resource.as_str(), ns.verb), ("namespaces", "list"));
        let one = a("GET", "/api/v1/namespaces/shop", &[]);
        assert_eq!((one.resource.as_str(), one.verb), ("namespaces", "get"));
        assert!(req("GET", "/version", &[]).access().is_none());
    }

    #[test]
    fn selectors_match_labels_and_fields() {
        let pod = json!({"metadata": {"name": "a", "namespace": "shop",
            "labels": {"app": "web", "tier": "front"}}, "spec": {"nodeName": "n1"}});
        let f = |labels: &str, fields: &str| {
            let target = Target::parse("/api/v1/pods").unwrap();
            Filter::new(
                &target,
                &req(
                    "GET",
                    "/api/v1/pods",
                    &[("labelSelector", labels), ("fieldSelector", fields)],
                ),
            )
            .unwrap()
            .matches(&pod)
        };
        assert!(f("app=web", "spec.nodeName=n1"));
        assert!(f("app in (db, web),tier", "metadata.namespace==shop"));
        assert!(!f("app notin (web)", ""));
        assert!(!f("", "spec.nodeName=n2"));
        assert!(f("!missing,app!=db", "spec.nodeName!=n2"));
        assert!(!f("missing", ""));
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut doc, &json!({"a": null, "b": {"c": 5}, "e": [1]}));
        assert_eq!(doc, json!({"b": {"c": 5, "d": 3}, "e": [1]}));
    }
}
