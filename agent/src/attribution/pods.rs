//! Pod metadata by UID, from a cluster snapshot or from the Kubernetes API.
//!
//! Both sources fill the same [`PodStore`], so attribution does not care where pods came from.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use k8s_openapi::api::core::v1::Pod;
use leash_records::PodRef;
use leash_records::snapshot::Snapshot;

use super::Result;
use crate::metrics::Metrics;

/// The Kubernetes API permissions the agent's pod watch ([`super::watch_pods`]) uses: it lists and
/// watches the pods of its node (cluster-wide `pods`, narrowed by a `spec.nodeName` field
/// selector). The deploy tests compare this with the agent's ClusterRole.
pub const API_ACCESS: &[leash_records::access::ApiAccess] = &[leash_records::access::ApiAccess {
    group: "",
    resource: "pods",
    verbs: &["list", "watch"],
}];

/// The controller that owns a pod (its controller `ownerReference`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    /// e.g. `ReplicaSet`, `StatefulSet`, `DaemonSet`, `Job`, `Node` (static pods).
    pub kind: String,
    /// The owner's name.
    pub name: String,
}

/// What attribution needs to know about a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`, sorted.
    pub labels: BTreeMap<String, String>,
    /// The controller owner, or the first owner when none is marked as controller.
    pub owner: Option<OwnerRef>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `spec.nodeName`, when scheduled.
    pub node_name: Option<String>,
}

impl PodInfo {
    /// Extracts the metadata of `pod`; `None` when it has no UID (it cannot be matched to a cgroup).
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let uid = meta.uid.clone().filter(|u| !u.is_empty())?;
        let owners = meta.owner_references.as_deref().unwrap_or_default();
        let owner = owners
            .iter()
            .find(|o| o.controller == Some(true))
            .or_else(|| owners.first())
            .map(|o| OwnerRef {
                kind: o.kind.clone(),
                name: o.name.clone(),
            });
        let spec = pod.spec.as_ref();
        Some(Self {
            uid,
            namespace: meta
                .namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned()),
            name: meta.name.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            owner,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            node_name: spec.and_then(|s| s.node_name.clone()),
        })
    }

    /// The pod as the v1 record contract names it.
    pub fn pod_ref(&self) -> PodRef {
        PodRef {
            uid: self.uid.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

type Index = HashMap<String, Arc<PodInfo>>;

/// Pods indexed by UID; a cheap, cloneable handle shared between the filler and the readers.
#[derive(Debug, Clone)]
pub struct PodStore {
    index: Arc<RwLock<Index>>,
    synced: tokio::sync::watch::Sender<bool>,
    metrics: Metrics,
}

impl PodStore {
    /// An empty store, not yet synced.
    pub fn new(metrics: Metrics) -> Self {
        Self {
            index: Arc::default(),
            synced: tokio::sync::watch::Sender::new(false),
            metrics,
        }
    }

    /// A store holding every pod of `snapshot` (all nodes: UIDs are unique cluster-wide).
    pub fn from_snapshot(snapshot: &Snapshot, metrics: Metrics) -> Self {
        let store = Self::new(metrics);
        store.replace_all(snapshot.pods.iter().filter_map(PodInfo::from_pod));
        store
    }

    /// Loads a cluster snapshot file (a `List` or a multi-document YAML stream, YAML or JSON).
    pub fn load_snapshot(path: &Path, metrics: Metrics) -> Result<Self> {
        let snapshot = leash_records::snapshot::load_path(path)?;
        Ok(Self::from_snapshot(&snapshot, metrics))
    }

    /// The pod with `uid`, if known.
    pub fn get(&self, uid: &str) -> Option<Arc<PodInfo>> {
        self.read().get(uid).cloned()
    }

    /// Number of pods known.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no pod is known.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// Every known pod, sorted by namespace, name and UID.
    pub fn pods(&self) -> Vec<Arc<PodInfo>> {
        let mut pods: Vec<_> = self.read().values().cloned().collect();
        pods.sort_by(|a, b| (&a.namespace, &a.name, &a.uid).cmp(&(&b.namespace, &b.name, &b.uid)));
        pods
    }

    /// Adds or updates one pod.
    pub fn upsert(&self, pod: PodInfo) {
        let mut index = self.write();
        index.insert(pod.uid.clone(), Arc::new(pod));
        self.metrics.pod_metadata_size.set(index.len() as i64);
    }

    /// Removes the pod with `uid`.
    pub fn remove(&self, uid: &str) {
        let mut index = self.write();
        index.remove(uid);
        self.metrics.pod_metadata_size.set(index.len() as i64);
    }

    /// Replaces the whole content atomically (a full list) and marks the store synced.
    pub fn replace_all(&self, pods: impl IntoIterator<Item = PodInfo>) {
        let fresh: Index = pods
            .into_iter()
            .map(|p| (p.uid.clone(), Arc::new(p)))
            .collect();
        let len = fresh.len();
        *self.write() = fresh;
        self.metrics.pod_metadata_size.set(len as i64);
        self.synced.send_replace(true);
    }

    /// Whether a full list has been loaded at least once.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until a full list has been loaded at least once.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        // An error means the sender is gone, which cannot happen while `self` holds it.
        let _ = rx.wait_for(|synced| *synced).await;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        // The index is always consistent between statements, so a poisoned lock is still usable.
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leash_lab::k8s;

    const SNAPSHOT: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: payment-7d4-x2
    namespace: shop
    uid: 6f1c2f9e-3b0a-4c1e-9a7d-2d4b5e6f7a8b
    labels: {app: payment, tier: backend}
    ownerReferences:
    - {apiVersion: apps/v1, kind: ReplicaSet, name: payment-7d4, uid: 11111111-2222-3333-4444-555555555555, controller: true}
  spec:
    nodeName: n1
    containers: [{name: app, image: payment:1}]
- apiVersion: v1
  kind: Pod
  metadata:
    name: kube-proxy-abc
    namespace: kube-system
    uid: 0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9
  spec:
    nodeName: n2
    hostNetwork: true
    containers: [{name: kube-proxy, image: kp:1}]
- apiVersion: v1
  kind: Service
  metadata: {name: payment, namespace: shop}
  spec: {ports: [{port: 80}]}
"#;

    #[test]
    fn snapshot_indexes_pods_by_uid() {
        let snapshot =
            leash_records::snapshot::parse_str(SNAPSHOT, Path::new("snap.yaml")).unwrap();
        let metrics = Metrics::new();
        let store = PodStore::from_snapshot(&snapshot, metrics.clone());
        assert!(store.is_synced());
        assert_eq!(store.len(), 2);
        assert_eq!(metrics.pod_metadata_size.get(), 2);
        let p = store.get("6f1c2f9e-3b0a-4c1e-9a7d-2d4b5e6f7a8b").unwrap();
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str()),
            ("shop", "payment-7d4-x2")
        );
        assert_eq!(p.labels.get("app").map(String::as_str), Some("payment"));
        assert_eq!(
            p.owner,
            Some(OwnerRef {
                kind: "ReplicaSet".into(),
                name: "payment-7d4".into()
            })
        );
        assert!(!p.host_network);
        let kp = store.get("0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9").unwrap();
        assert!(kp.host_network);
        assert_eq!(kp.owner, None);
        assert!(store.get("nope").is_none());
    }

    #[test]
    fn snapshot_file_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.yaml");
        std::fs::write(&path, "items: [").unwrap();
        let err = PodStore::load_snapshot(&path, Metrics::new()).unwrap_err();
        assert!(err.to_string().contains("broken.yaml"), "{err}");
        let ok = dir.path().join("ok.yaml");
        std::fs::write(&ok, SNAPSHOT).unwrap();
        assert_eq!(
            PodStore::load_snapshot(&ok, Metrics::new()).unwrap().len(),
            2
        );
    }

    #[test]
    fn builder_pods_round_trip_through_pod_info() {
        let pod = k8s::pod("ns", "web-1")
            .uid("0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9")
            .node("n1")
            .labels(&[("app", "web")])
            .owner("StatefulSet", "web")
            .host_network()
            .build();
        let info = PodInfo::from_pod(&pod).unwrap();
        assert_eq!(
            info.pod_ref(),
            PodRef {
                uid: "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9".into(),
                namespace: "ns".into(),
                name: "web-1".into()
            }
        );
        assert!(info.host_network);
        assert_eq!(info.owner.unwrap().kind, "StatefulSet");
        assert_eq!(info.node_name.as_deref(), Some("n1"));
        let mut no_uid = pod.clone();
        no_uid.metadata.uid = None;
        assert!(PodInfo::from_pod(&no_uid).is_none());
    }

    #[test]
    fn upsert_remove_replace() {
        let store = PodStore::new(Metrics::new());
        assert!(!store.is_synced());
        let a = PodInfo::from_pod(
            &k8s::pod("ns", "a")
                .uid("0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9")
                .node("n1")
                .build(),
        )
        .unwrap();
        let b = PodInfo::from_pod(
            &k8s::pod("ns", "b")
                .uid("6f1c2f9e-3b0a-4c1e-9a7d-2d4b5e6f7a8b")
                .node("n1")
                .build(),
        )
        .unwrap();
        store.upsert(a.clone());
        store.upsert(b.clone());
        assert_eq!(
            store
                .pods()
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        store.remove(&a.uid);
        assert!(store.get(&a.uid).is_none());
        store.replace_all([a.clone()]);
        assert!(store.get(&b.uid).is_none());
        assert!(store.get(&a.uid).is_some());
        assert!(store.is_synced());
    }
}
