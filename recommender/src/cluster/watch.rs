//! Watches the live API server: the cluster model's second source, besides snapshot files.
//!
//! [`watch_cluster`] keeps one kube-rs reflector per modelled kind (namespaces, nodes, pods,
//! services, endpointslices, networkpolicies and the workload controllers). kube-rs's `watcher`
//! lists, watches from the list's version, resumes after a dropped stream and re-lists when the
//! server answers `410 Gone`; the reflector store swaps a re-list in whole, so objects deleted
//! while the watch was down disappear. Once every kind has been listed, and then after each
//! change (debounced), the stores are turned into a `leash_records::Snapshot`, sorted so the
//! result does not depend on event order, and built into whatever the caller asks for through
//! [`FromSnapshot`] (the model with the policies applied in it, for `serve`): the same path a
//! snapshot file takes. [`load_once`] lists each kind once instead, for one-shot commands.
//! ClusterNetworkPolicies, a CRD a cluster may lack, are read by [`cnp`].

pub mod cnp;

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use leash_records::Snapshot;
use leash_records::access::ApiAccess;
use leash_records::error::Chain;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use super::events::EVENTS_ACCESS;
use super::lenient::Lenient;
use super::{Rejected, qualified_name};

/// What a cluster source builds from each snapshot it takes, e.g. the model with the policies
/// applied in it. The source knows only this trait: what consumers derive from the objects is
/// theirs, and the model does not depend on them.
pub trait FromSnapshot: Send + Sync + Sized + 'static {
    /// Builds from the decoded objects. `generation` counts the states a source published (1
    /// for the first); `undecodable` names the objects that did not decode; `watch_errors`
    /// counts the watch errors seen so far (0 for one-shot sources).
    fn from_snapshot(
        snapshot: &Snapshot,
        generation: u64,
        undecodable: Vec<Rejected>,
        watch_errors: u64,
    ) -> Self;

    /// Logs the objects left out, except those `previous` already listed (a live model is
    /// rebuilt often; one bad object is reported when it appears, not on every rebuild).
    fn log_rejected(&self, previous: Option<&Self>);

    /// Logs, at debug level, that the watch published this state.
    fn log_rebuilt(&self);
}

/// The Kubernetes API permissions [`watch_cluster`] and [`load_once`] use: list and watch of
/// every kind the model reads, cluster-wide. The deploy tests compare this with the
/// recommender's ClusterRole.
pub const API_ACCESS: &[ApiAccess] = &[
    access("", "namespaces"),
    access("", "nodes"),
    access("", "pods"),
    access("", "services"),
    access("discovery.k8s.io", "endpointslices"),
    access("networking.k8s.io", "networkpolicies"),
    access("apps", "replicasets"),
    access("apps", "deployments"),
    access("apps", "statefulsets"),
    access("apps", "daemonsets"),
    access("batch", "jobs"),
    access("batch", "cronjobs"),
    access(cnp::GROUP, cnp::PLURAL),
];

const fn access(group: &'static str, resource: &'static str) -> ApiAccess {
    ApiAccess {
        group,
        resource,
        verbs: &["list", "watch"],
    }
}

/// Errors reaching the API server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig file could not be read or used.
    #[error("kubeconfig {}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig was given, and neither `$KUBECONFIG`/`~/.kube/config` nor the in-cluster
    /// service account worked.
    #[error(
        "no kubeconfig given, and neither $KUBECONFIG / ~/.kube/config nor the in-cluster \
         service account gave a configuration"
    )]
    Infer(#[source] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
    /// Listing a resource failed.
    #[error("listing {resource} failed")]
    List {
        /// The resource, e.g. `pods` or `apps/deployments`.
        resource: String,
        /// The API error.
        source: kube::Error,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A Kubernetes client from a kubeconfig file, or, when `kubeconfig` is `None`, from
/// `$KUBECONFIG`, `~/.kube/config` or the in-cluster service account (in that order, as kubectl
/// does). Errors say which source failed.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let err = |source| Error::Kubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(err)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(err)?
        }
        None => kube::Config::infer().await.map_err(Error::Infer)?,
    };
    kube::Client::try_from(config).map_err(Error::Client)
}

/// Settings of [`watch_cluster`].
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// After a change, wait this long (absorbing further changes) before rebuilding the model.
    pub debounce: Duration,
    /// When the API does not serve ClusterNetworkPolicies (no CRD, `404`) or forbids reading
    /// them (`403`), ask again after this long.
    pub cnp_recheck: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            debounce: Duration::from_millis(500),
            cnp_recheck: Duration::from_secs(300),
        }
    }
}

/// The kinds, in [`Stores`] field order; index into `synced`.
const KINDS: [&str; 13] = [
    "namespaces",
    "nodes",
    "pods",
    "services",
    "endpointslices",
    "networkpolicies",
    "replicasets",
    "deployments",
    "statefulsets",
    "daemonsets",
    "jobs",
    "cronjobs",
    "clusternetworkpolicies",
];

/// What one reflector reported.
enum Signal {
    /// A (re-)list completed: the store holds the API's current objects.
    Synced,
    /// An object was added, changed or deleted.
    Changed,
    /// List progress: nothing visible changed yet (the store swaps at the end of a list).
    Progress,
    /// The watch failed; kube-rs retries with backoff.
    Failed(watcher::Error),
}

/// One reflector store per kind.
#[derive(Clone)]
struct Stores {
    namespaces: Store<Lenient<Namespace>>,
    nodes: Store<Lenient<Node>>,
    pods: Store<Lenient<Pod>>,
    services: Store<Lenient<Service>>,
    endpoint_slices: Store<Lenient<EndpointSlice>>,
    network_policies: Store<Lenient<NetworkPolicy>>,
    replica_sets: Store<Lenient<ReplicaSet>>,
    deployments: Store<Lenient<Deployment>>,
    stateful_sets: Store<Lenient<StatefulSet>>,
    daemon_sets: Store<Lenient<DaemonSet>>,
    jobs: Store<Lenient<Job>>,
    cron_jobs: Store<Lenient<CronJob>>,
    cluster_network_policies: Store<kube::api::DynamicObject>,
}

/// The bounds every modelled kind meets.
trait Kind:
    kube::Resource<DynamicType = ()>
    + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>
    + DeserializeOwned
    + Clone
    + Debug
    + Send
    + Sync
    + 'static
{
}

impl<K> Kind for K where
    K: kube::Resource<DynamicType = ()>
        + k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>
        + DeserializeOwned
        + Clone
        + Debug
        + Send
        + Sync
        + 'static
{
}

/// A reflector for kind `K`: its store, and its event stream tagged with `index`.
fn reflect<K: Kind>(
    client: &kube::Client,
    index: usize,
) -> (Store<Lenient<K>>, BoxStream<'static, (usize, Signal)>) {
    let api: Api<Lenient<K>> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let objects = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(strip);
    let events = reflector::reflector(writer, objects)
        .map(move |event| {
            let signal = match event {
                Ok(Event::InitDone) => Signal::Synced,
                Ok(Event::Apply(_) | Event::Delete(_)) => Signal::Changed,
                Ok(Event::Init | Event::InitApply(_)) => Signal::Progress,
                Err(e) => Signal::Failed(e),
            };
            (index, signal)
        })
        .boxed();
    (reader, events)
}

/// Drops the metadata the model never reads and that often outweighs the rest of an object.
fn strip<K: kube::Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// `kubectl apply`'s copy of the whole object.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

impl Stores {
    /// Starts the reflectors; their events come out of the returned stream.
    fn start(
        client: &kube::Client,
        cnp_recheck: Duration,
    ) -> (Self, BoxStream<'static, (usize, Signal)>) {
        let (namespaces, s0) = reflect(client, 0);
        let (nodes, s1) = reflect(client, 1);
        let (pods, s2) = reflect(client, 2);
        let (services, s3) = reflect(client, 3);
        let (endpoint_slices, s4) = reflect(client, 4);
        let (network_policies, s5) = reflect(client, 5);
        let (replica_sets, s6) = reflect(client, 6);
        let (deployments, s7) = reflect(client, 7);
        let (stateful_sets, s8) = reflect(client, 8);
        let (daemon_sets, s9) = reflect(client, 9);
        let (jobs, s10) = reflect(client, 10);
        let (cron_jobs, s11) = reflect(client, 11);
        let (cluster_network_policies, s12) = cnp::reflect(client, 12, cnp_recheck);
        let stores = Stores {
            namespaces,
            nodes,
            pods,
            services,
            endpoint_slices,
            network_policies,
            replica_sets,
            deployments,
            stateful_sets,
            daemon_sets,
            jobs,
            cron_jobs,
            cluster_network_policies,
        };
        let events = stream::select_all([s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12]);
        (stores, events.boxed())
    }

    /// The stores' current objects as a sorted snapshot, and the objects that did not decode.
    fn snapshot(&self) -> (Snapshot, Vec<Rejected>) {
        let mut bad = Vec::new();
        macro_rules! take {
            ($field:ident) => {
                valid_sorted(self.$field.state().iter().map(|o| o.as_ref()), &mut bad)
            };
        }
        let snapshot = Snapshot {
            namespaces: take!(namespaces),
            nodes: take!(nodes),
            pods: take!(pods),
            services: take!(services),
            endpoint_slices: take!(endpoint_slices),
            network_policies: take!(network_policies),
            replica_sets: take!(replica_sets),
            deployments: take!(deployments),
            stateful_sets: take!(stateful_sets),
            daemon_sets: take!(daemon_sets),
            jobs: take!(jobs),
            cron_jobs: take!(cron_jobs),
            ignored: Default::default(),
            cluster_network_policies: cnp::values(
                self.cluster_network_policies
                    .state()
                    .iter()
                    .map(|o| o.as_ref()),
                &mut bad,
            ),
        };
        (snapshot, bad)
    }
}

/// The decodable objects, sorted by namespace and name; the others go to `bad`, named.
fn valid_sorted<'a, K: Kind>(
    objects: impl Iterator<Item = &'a Lenient<K>>,
    bad: &mut Vec<Rejected>,
) -> Vec<K> {
    let mut valid = Vec::new();
    for object in objects {
        match object {
            Lenient::Valid(k) => valid.push(k.clone()),
            Lenient::Invalid { metadata, error } => bad.push(Rejected {
                kind: K::kind(&()).into_owned(),
                name: qualified_name(metadata),
                reason: format!("does not decode: {error}"),
            }),
        }
    }
    valid.sort_by(|a: &K, b: &K| {
        let (a, b) = (
            k8s_openapi::Metadata::metadata(a),
            k8s_openapi::Metadata::metadata(b),
        );
        (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name))
    });
    valid
}

/// Builds a state from the stores' current objects.
fn build<S: FromSnapshot>(stores: &Stores, generation: u64, watch_errors: u64) -> S {
    let (snapshot, undecodable) = stores.snapshot();
    S::from_snapshot(&snapshot, generation, undecodable, watch_errors)
}

/// Watches the cluster and publishes its model.
///
/// The receiver holds `None` until every kind has been listed once (readiness), then the
/// latest state `S`; a new state is published after each change, at most once per
/// [`WatchOptions::debounce`]. Watch failures are logged and retried by kube-rs with its default
/// backoff. The task (and its watches) ends when every receiver is dropped, or when aborted.
/// Must be called inside a tokio runtime.
pub fn watch_cluster<S: FromSnapshot>(
    client: kube::Client,
    options: WatchOptions,
) -> (watch::Receiver<Option<Arc<S>>>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(None);
    let task = tokio::spawn(run(client, options, tx));
    (rx, task)
}

async fn run<S: FromSnapshot>(
    client: kube::Client,
    options: WatchOptions,
    tx: watch::Sender<Option<Arc<S>>>,
) {
    let (stores, mut events) = Stores::start(&client, options.cnp_recheck);
    let mut synced = [false; KINDS.len()];
    // When the first change not yet in the published state arrived.
    let mut dirty_since: Option<Instant> = None;
    let mut generation = 0u64;
    let mut watch_errors = 0u64;
    let mut previous: Option<Arc<S>> = None;
    loop {
        let ready = synced.iter().all(|s| *s);
        let rebuild_at = dirty_since.filter(|_| ready).map(|since| {
            if previous.is_none() {
                since
            } else {
                since + options.debounce
            }
        });
        let rebuild = async {
            match rebuild_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            // Every receiver is gone: nobody needs the model any more.
            () = tx.closed() => return,
            event = events.next() => {
                let Some((index, signal)) = event else {
                    return;
                };
                match signal {
                    Signal::Synced => {
                        if !synced[index] {
                            tracing::debug!(resource = KINDS[index], "initial list done");
                        }
                        synced[index] = true;
                        dirty_since.get_or_insert_with(Instant::now);
                    }
                    Signal::Changed => {
                        dirty_since.get_or_insert_with(Instant::now);
                    }
                    Signal::Progress => {}
                    Signal::Failed(error) => {
                        watch_errors += 1;
                        tracing::warn!(resource = KINDS[index], error = %Chain(&error),
                            "cluster watch failed; retrying with backoff");
                    }
                }
            }
            () = rebuild => {
                dirty_since = None;
                generation += 1;
                let state = {
                    let stores = stores.clone();
                    // Building a large model is CPU work; keep it off the async workers.
                    tokio::task::spawn_blocking(move || build::<S>(&stores, generation, watch_errors))
                        .await
                };
                let state = match state {
                    Ok(state) => Arc::new(state),
                    Err(e) => {
                        tracing::error!(error = %Chain(&e), "building the cluster model failed");
                        continue;
                    }
                };
                state.log_rejected(previous.as_deref());
                state.log_rebuilt();
                previous = Some(state.clone());
                if tx.send(Some(state)).is_err() {
                    // Every receiver is gone: nobody needs the model any more.
                    return;
                }
            }
        }
    }
}

/// Lists every kind once (following continue tokens) and builds the model: for one-shot
/// commands (`leash recommend --kube`). Fails on the first list that fails, naming the
/// resource; objects that do not decode or that the model rejects are left out and listed in
/// the built state (see [`FromSnapshot::from_snapshot`]).
pub async fn load_once<S: FromSnapshot>(client: kube::Client) -> Result<S> {
    let mut bad = Vec::new();
    let snapshot = Snapshot {
        namespaces: list_all(&client, &mut bad).await?,
        nodes: list_all(&client, &mut bad).await?,
        pods: list_all(&client, &mut bad).await?,
        services: list_all(&client, &mut bad).await?,
        endpoint_slices: list_all(&client, &mut bad).await?,
        network_policies: list_all(&client, &mut bad).await?,
        replica_sets: list_all(&client, &mut bad).await?,
        deployments: list_all(&client, &mut bad).await?,
        stateful_sets: list_all(&client, &mut bad).await?,
        daemon_sets: list_all(&client, &mut bad).await?,
        jobs: list_all(&client, &mut bad).await?,
        cron_jobs: list_all(&client, &mut bad).await?,
        ignored: Default::default(),
        cluster_network_policies: cnp::list_all(&client, &mut bad).await?,
    };
    let state = S::from_snapshot(&snapshot, 1, bad, 0);
    state.log_rejected(None);
    Ok(state)
}

/// Every object of kind `K`, page by page.
async fn list_all<K: Kind>(client: &kube::Client, bad: &mut Vec<Rejected>) -> Result<Vec<K>> {
    let api: Api<Lenient<K>> = Api::all(client.clone());
    let mut objects = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await.map_err(|source| {
            let group = K::group(&());
            let plural = K::plural(&());
            Error::List {
                resource: if group.is_empty() {
                    plural.into_owned()
                } else {
                    format!("{group}/{plural}")
                },
                source,
            }
        })?;
        objects.extend(page.items.into_iter().map(|mut o| {
            strip(&mut o);
            o
        }));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    Ok(valid_sorted(objects.iter(), bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_access_covers_every_watched_kind_once() {
        let declared: Vec<&str> = API_ACCESS.iter().map(|a| a.resource).collect();
        assert_eq!(declared, KINDS);
        for a in API_ACCESS {
            assert_eq!(a.verbs, ["list", "watch"]);
        }
    }
}
