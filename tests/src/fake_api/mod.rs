//! A fake Kubernetes API server on 127.0.0.1, for testing watch and write code through kube-rs's
//! real HTTP client.
//!
//! It serves HTTP/1.1 (hyper, through axum) and does what clients of the Kubernetes API do:
//! - **list** `GET /api/v1/pods`, `/apis/apps/v1/namespaces/shop/deployments`, … for any resource
//!   path, with `labelSelector`, `fieldSelector`, `limit` and `continue`;
//! - **watch** the same paths with `watch=true`: a chunked stream of JSON watch events. A watch
//!   from `resourceVersion` N replays every recorded event newer than N (as the real server does
//!   from its watch cache); from `""`/`"0"` it starts with an `ADDED` event per existing object;
//!   from a version older than the last compaction it gets an `ERROR` event with a `410 Gone`
//!   status, which makes kube-rs's watcher re-list. `timeoutSeconds` ends the stream;
//! - **get**, **create** (`POST`), **patch** (`PATCH`, merge semantics), **replace** (`PUT`) and
//!   **delete** of single objects, each producing the matching watch event. A replace carrying a
//!   `metadata.resourceVersion` other than the stored one is refused with the real `409
//!   Conflict` `Status` (optimistic concurrency: Lease leader election relies on it), as is a
//!   create of an existing name (`409 AlreadyExists`).
//!
//! Tests change objects with [`FakeApi::apply`], [`FakeApi::delete`], and their `*_silently`
//! variants (changes no watch will ever replay, as if the events had been compacted away while a
//! client was disconnected); they end watches with [`FakeApi::end_watches`] (the client should
//! resume from its last version), expire them with [`FakeApi::expire_watches`] (the client must
//! re-list), or make the next watches fail at the HTTP level with
//! [`FakeApi::fail_next_watches`]. Every request is recorded ([`FakeApi::requests`]) with its
//! method, path, decoded query and body, and [`Request::access`] names the RBAC verb and resource
//! it needs, so a test can check a client against its declared permissions.
//! [`FakeApi::unserve`] makes a group version answer `404` as when its CRD is not installed;
//! [`FakeApi::serve_kind`] installs it again, with its discovery document (`APIResourceList`).
//! TokenReview and SubjectAccessReview are answered from the tokens ([`FakeApi::add_token`];
//! projected ServiceAccount tokens with their audiences and node,
//! [`FakeApi::add_service_account_token`]) and RBAC grants ([`FakeApi::grant`]) the test
//! configured; [`FakeApi::refuse_reviews`] makes the API refuse the client's own reviews
//! (`401`/`403`). [`FakeApi::start_at`] starts the server on a port clients already know,
//! as an API server coming back after an outage.
//!
//! The server binds 127.0.0.1 only, on a port the kernel picks. Dropping the [`FakeApi`] stops it
//! and ends the open watches.
//!
//! By concern: `request` (what a request asks for), `store` (objects, versions, history,
//! injected failures), `reviews` (TokenReview and SubjectAccessReview), `select` (label and field selectors), `objects` (list, get and the
//! writes), `watch` (replay and streaming), `http` (the HTTP layer), `config` (how clients
//! reach the server).

mod config;
mod http;
mod objects;
mod request;
mod reviews;
mod select;
mod store;
#[cfg(test)]
mod tests;
mod watch;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use request::{Access, Request, collection_path};
pub use reviews::{ACCESS_REVIEWS, API_AUDIENCE, Grant, Subject, TOKEN_REVIEWS, User};
use store::{Failure, State, lock, status, to_json};
use watch::WatchMsg;

/// The fake API server. See the module docs.
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    accept: JoinHandle<()>,
}

impl FakeApi {
    /// Starts a server on 127.0.0.1 (a free port). Needs a tokio runtime.
    pub async fn start() -> io::Result<Self> {
        Self::start_at(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a server on `addr` (a loopback address): on a port a client was given while
    /// nothing listened there, it is an API server coming back after an outage.
    pub async fn start_at(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state: Arc<Mutex<State>> = Arc::default();
        let accept = tokio::spawn(http::serve(listener, state.clone()));
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

    /// Serves `plural` (kind `kind`) in group version `api_version` (e.g.
    /// `policy.networking.k8s.io/v1alpha2`), as installing its CRD does: the group version is
    /// served again if [`Self::unserve`] stopped it, and its discovery document
    /// (`GET /apis/GROUP/VERSION`) lists the resource. (Any other path is served too, without
    /// discovery, as before.)
    pub fn serve_kind(&self, api_version: &str, plural: &str, kind: &str, namespaced: bool) {
        let mut state = self.lock();
        state.unserved.remove(api_version);
        let resources = state.discovery.entry(api_version.to_owned()).or_default();
        resources.retain(|r| r["name"] != plural);
        resources.push(json!({"name": plural, "singularName": kind.to_lowercase(),
            "namespaced": namespaced, "kind": kind,
            "verbs": ["delete", "deletecollection", "get", "list", "patch", "create",
                      "update", "watch"]}));
    }

    /// Stops serving group version `api_version`, as when its CRD is not installed (or is
    /// deleted): every request under it, discovery included, gets the real server's `404`
    /// `Status` ("the server could not find the requested resource"), and open watches of it
    /// end. Stored objects stay, and come back with [`Self::serve_kind`].
    pub fn unserve(&self, api_version: &str) {
        let mut state = self.lock();
        state.unserved.insert(api_version.to_owned());
        let prefix = if api_version.contains('/') {
            format!("/apis/{api_version}/")
        } else {
            format!("/api/{api_version}/")
        };
        state.watchers.retain(|w| {
            if w.collection.starts_with(&prefix) {
                let _ = w.tx.send(WatchMsg::End);
                false
            } else {
                true
            }
        });
    }

    /// Makes `token` authenticate (TokenReview) as `username` in `groups`.
    pub fn add_token(&self, token: &str, username: &str, groups: &[&str]) {
        self.lock().reviews.tokens.insert(
            token.to_owned(),
            User {
                username: username.to_owned(),
                groups: groups.iter().map(|g| (*g).to_owned()).collect(),
                ..User::default()
            },
        );
    }

    /// Makes `token` a projected ServiceAccount token of `namespace/service_account` for
    /// `audiences`, bound to a pod on `node` (its `extra` names the node, as Kubernetes 1.30+
    /// does) or to no node (`None`).
    pub fn add_service_account_token(
        &self,
        token: &str,
        namespace: &str,
        service_account: &str,
        node: Option<&str>,
        audiences: &[&str],
    ) {
        let mut extra = std::collections::BTreeMap::new();
        extra.insert(
            "authentication.kubernetes.io/credential-id".to_owned(),
            vec![format!("JTI={token}-id")],
        );
        if let Some(node) = node {
            extra.insert(
                "authentication.kubernetes.io/node-name".to_owned(),
                vec![node.to_owned()],
            );
            extra.insert(
                "authentication.kubernetes.io/pod-name".to_owned(),
                vec![format!("{service_account}-{node}")],
            );
        }
        self.lock().reviews.tokens.insert(
            token.to_owned(),
            User {
                username: format!("system:serviceaccount:{namespace}:{service_account}"),
                groups: vec![
                    "system:serviceaccounts".to_owned(),
                    format!("system:serviceaccounts:{namespace}"),
                    "system:authenticated".to_owned(),
                ],
                extra,
                audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
            },
        );
    }

    /// Forgets `token`: it no longer authenticates.
    pub fn remove_token(&self, token: &str) {
        self.lock().reviews.tokens.remove(token);
    }

    /// Grants `verb` on `group`/`resource` to `subject`, in `namespace` (a RoleBinding) or
    /// in every namespace (`None`, a ClusterRoleBinding), for SubjectAccessReviews.
    pub fn grant(
        &self,
        subject: Subject,
        namespace: Option<&str>,
        verb: &str,
        group: &str,
        resource: &str,
    ) {
        self.lock().reviews.grants.push(Grant {
            subject,
            namespace: namespace.map(str::to_owned),
            verb: verb.to_owned(),
            group: group.to_owned(),
            resource: resource.to_owned(),
        });
    }

    /// Refuses every TokenReview and SubjectAccessReview with the API's own `status` (`401`:
    /// the client's credentials are bad; `403`: it may not create reviews); `None` answers
    /// them again.
    pub fn refuse_reviews(&self, status: Option<u16>) {
        self.lock().reviews.refuse = status;
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
