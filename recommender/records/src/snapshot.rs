//! Cluster snapshots: a Kubernetes `List` (YAML or JSON), exactly as
//! `kubectl get namespaces,nodes,pods,services,endpointslices,networkpolicies,… -A -o yaml`
//! prints it, or a multi-document YAML stream of objects (a `List` document may appear in it).
//!
//! Objects are decoded into `k8s-openapi` types. Kinds leash does not model are counted in
//! [`Snapshot::ignored`] rather than rejected, so a broader `kubectl get` still loads.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet},
        batch::v1::{CronJob, Job},
        core::v1::{Namespace, Node, Pod, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    serde::Deserialize,
};
use serde_json::Value;

use crate::bounded::{self, InputError};
use crate::error::Chain;

/// A snapshot that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file could not be read within its bounds (size, line length, type, UTF-8).
    #[error(transparent)]
    Input(#[from] InputError),
    /// The text is not valid YAML or JSON.
    #[error("{path}:{line}: invalid YAML/JSON: {message}")]
    Syntax {
        /// The snapshot file.
        path: PathBuf,
        /// 1-based line of the error (0 when unknown).
        line: usize,
        /// What the parser said.
        message: String,
    },
    /// A document or list item is not a Kubernetes object.
    #[error("{path}: {location}: not a Kubernetes object: {message}")]
    NotAnObject {
        /// The snapshot file.
        path: PathBuf,
        /// Which document or item, e.g. `document 2, item 7`.
        location: String,
        /// What is missing.
        message: String,
    },
    /// An object of a known kind does not match its schema.
    #[error("{path}: {location} ({kind} {name}): {message}")]
    InvalidObject {
        /// The snapshot file.
        path: PathBuf,
        /// Which document or item.
        location: String,
        /// The object's kind.
        kind: String,
        /// `namespace/name` or `name`.
        name: String,
        /// What is wrong.
        message: String,
    },
}

/// `Result` with [`SnapshotError`].
pub type Result<T, E = SnapshotError> = std::result::Result<T, E>;

/// The objects of a cluster snapshot, by kind, in file order.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Namespaces.
    pub namespaces: Vec<Namespace>,
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices (`discovery.k8s.io/v1`).
    pub endpoint_slices: Vec<EndpointSlice>,
    /// NetworkPolicies (`networking.k8s.io/v1`).
    pub network_policies: Vec<NetworkPolicy>,
    /// ReplicaSets.
    pub replica_sets: Vec<ReplicaSet>,
    /// Deployments.
    pub deployments: Vec<Deployment>,
    /// StatefulSets.
    pub stateful_sets: Vec<StatefulSet>,
    /// DaemonSets.
    pub daemon_sets: Vec<DaemonSet>,
    /// Jobs.
    pub jobs: Vec<Job>,
    /// CronJobs.
    pub cron_jobs: Vec<CronJob>,
    /// Objects of kinds leash does not model, counted by `apiVersion/kind`.
    pub ignored: BTreeMap<String, usize>,
    /// ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`), as read: the recommender
    /// reads and validates them against their CRD.
    pub cluster_network_policies: Vec<Value>,
}

/// Loads a snapshot file (YAML or JSON), read within the [`Limits`](bounded::Limits) of the
/// environment. A FIFO or device named here is read (`<(kubectl get …)`), bounded all the same.
pub fn load_path(path: &Path) -> Result<Snapshot> {
    let text = bounded::read_to_string(path, false, bounded::Limits::from_env()?)?;
    parse_str(&text, path)
}

/// Checks what leash relies on in an object, as the API server would have: a non-empty
/// `metadata.name`, and label keys and values of valid syntax in its labels and in the label
/// selectors and pod-template labels of workloads and Services (they become the selectors of
/// generated policies). Shared by the snapshot loader and the API watchers.
pub fn check_object(item: &Value) -> std::result::Result<(), String> {
    fn at<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a Value> {
        v.and_then(|v| v.get(key))
    }
    let meta = item.get("metadata");
    match at(meta, "name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => {}
        _ => return Err("metadata.name is missing or empty".into()),
    }
    check_labels("metadata.labels", at(meta, "labels"))?;
    let spec = item.get("spec");
    check_selector("spec.selector", at(spec, "selector"))?;
    fn template_labels(t: Option<&Value>) -> Option<&Value> {
        at(at(t, "metadata"), "labels")
    }
    check_labels(
        "spec.template.metadata.labels",
        template_labels(at(spec, "template")),
    )?;
    let job = at(at(spec, "jobTemplate"), "spec");
    check_selector("spec.jobTemplate.spec.selector", at(job, "selector"))?;
    check_labels(
        "spec.jobTemplate.spec.template.metadata.labels",
        template_labels(at(job, "template")),
    )
}

/// A map of labels (or a Service's selector) at `field`.
fn check_labels(field: &str, labels: Option<&Value>) -> std::result::Result<(), String> {
    for (k, v) in labels.and_then(Value::as_object).into_iter().flatten() {
        crate::names::label_key(k)
            .map_err(|e| format!("{field}: invalid label key {k:?}: {}", Chain(&e)))?;
        if let Some(v) = v.as_str() {
            crate::names::label_value(v)
                .map_err(|e| format!("{field}[{k}]: invalid label value {v:?}: {}", Chain(&e)))?;
        }
    }
    Ok(())
}

/// A `LabelSelector` (`matchLabels`, `matchExpressions`), or a Service's plain map.
fn check_selector(field: &str, selector: Option<&Value>) -> std::result::Result<(), String> {
    let Some(sel) = selector else {
        return Ok(());
    };
    if sel.get("matchLabels").is_none() && sel.get("matchExpressions").is_none() {
        return check_labels(field, Some(sel));
    }
    check_labels(&format!("{field}.matchLabels"), sel.get("matchLabels"))?;
    let exprs = sel.get("matchExpressions").and_then(Value::as_array);
    for (i, e) in exprs.into_iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        if let Some(k) = e.get("key").and_then(Value::as_str) {
            crate::names::label_key(k)
                .map_err(|err| format!("{at}.key: invalid label key {k:?}: {}", Chain(&err)))?;
        }
        let values = e.get("values").and_then(Value::as_array);
        for v in values.into_iter().flatten().filter_map(Value::as_str) {
            crate::names::label_value(v).map_err(|err| {
                format!("{at}.values: invalid label value {v:?}: {}", Chain(&err))
            })?;
        }
    }
    Ok(())
}

/// Parses snapshot text; `source` names it in errors.
pub fn parse_str(text: &str, source: &Path) -> Result<Snapshot> {
    let mut snapshot = Snapshot::default();
    for (doc_index, mut doc) in documents(text, source)?.into_iter().enumerate() {
        let doc_loc = format!("document {}", doc_index + 1);
        if doc.is_null() {
            continue;
        }
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        if kind == "List" || (kind.ends_with("List") && doc.get("items").is_some()) {
            // Take the items out of the document: a large snapshot is not copied.
            let items = match doc.as_object_mut().and_then(|o| o.remove("items")) {
                Some(Value::Array(items)) => items,
                Some(Value::Null) | None => Vec::new(),
                Some(_) => {
                    return Err(SnapshotError::NotAnObject {
                        path: source.to_path_buf(),
                        location: doc_loc,
                        message: "`items` must be a list".into(),
                    });
                }
            };
            // Items of a typed list (`PodList`) may omit kind/apiVersion; infer them.
            let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
            let api_version = doc.get("apiVersion").cloned();
            for (i, mut item) in items.into_iter().enumerate() {
                if let (Some(k), Some(obj)) = (item_kind, item.as_object_mut()) {
                    obj.entry("kind").or_insert_with(|| Value::String(k.into()));
                    if let Some(av) = &api_version {
                        obj.entry("apiVersion").or_insert_with(|| av.clone());
                    }
                }
                snapshot.add(item, &format!("{doc_loc}, item {}", i + 1), source)?;
            }
        } else {
            snapshot.add(doc, &doc_loc, source)?;
        }
    }
    Ok(snapshot)
}

/// Splits the text into JSON values: one JSON document, or a YAML stream.
fn documents(text: &str, source: &Path) -> Result<Vec<Value>> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return serde_json::from_str::<Value>(text)
            .map(|v| vec![v])
            .map_err(|e| SnapshotError::Syntax {
                path: source.to_path_buf(),
                line: e.line(),
                message: Chain(&e).to_string(),
            });
    }
    let mut docs = Vec::new();
    for de in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(de).map_err(|e| SnapshotError::Syntax {
            path: source.to_path_buf(),
            line: e.location().map_or(0, |l| l.line()),
            message: Chain(&e).to_string(),
        })?;
        docs.push(value);
    }
    Ok(docs)
}

fn object_name(item: &Value) -> String {
    let meta = item.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

impl Snapshot {
    fn add(&mut self, item: Value, location: &str, source: &Path) -> Result<()> {
        let not_object = |message: &str| SnapshotError::NotAnObject {
            path: source.to_path_buf(),
            location: location.to_string(),
            message: message.to_string(),
        };
        if !item.is_object() {
            return Err(not_object("expected a mapping"));
        }
        let kind = item
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| not_object("missing `kind`"))?
            .to_string();
        let api_version = item
            .get("apiVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| not_object("missing `apiVersion`"))?
            .to_string();
        let name = object_name(&item);
        let invalid = |e: serde_json::Error| SnapshotError::InvalidObject {
            path: source.to_path_buf(),
            location: location.to_string(),
            kind: kind.clone(),
            name: name.clone(),
            message: Chain(&e).to_string(),
        };
        if is_modeled(&api_version, &kind) {
            check_object(&item).map_err(|message| SnapshotError::InvalidObject {
                path: source.to_path_buf(),
                location: location.to_string(),
                kind: kind.clone(),
                name: name.clone(),
                message,
            })?;
        }
        match (api_version.as_str(), kind.as_str()) {
            ("v1", "Namespace") => self.namespaces.push(decode(item).map_err(invalid)?),
            ("v1", "Node") => self.nodes.push(decode(item).map_err(invalid)?),
            ("v1", "Pod") => self.pods.push(decode(item).map_err(invalid)?),
            ("v1", "Service") => self.services.push(decode(item).map_err(invalid)?),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                self.endpoint_slices.push(decode(item).map_err(invalid)?)
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                self.network_policies.push(decode(item).map_err(invalid)?)
            }
            ("apps/v1", "ReplicaSet") => self.replica_sets.push(decode(item).map_err(invalid)?),
            ("apps/v1", "Deployment") => self.deployments.push(decode(item).map_err(invalid)?),
            ("apps/v1", "StatefulSet") => self.stateful_sets.push(decode(item).map_err(invalid)?),
            ("apps/v1", "DaemonSet") => self.daemon_sets.push(decode(item).map_err(invalid)?),
            ("batch/v1", "Job") => self.jobs.push(decode(item).map_err(invalid)?),
            ("batch/v1", "CronJob") => self.cron_jobs.push(decode(item).map_err(invalid)?),
            ("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy") => {
                self.cluster_network_policies.push(item)
            }
            _ => {
                *self
                    .ignored
                    .entry(format!("{api_version}/{kind}"))
                    .or_default() += 1
            }
        }
        Ok(())
    }
}

/// Whether leash models objects of this kind (the others are only counted).
fn is_modeled(api_version: &str, kind: &str) -> bool {
    matches!(
        (api_version, kind),
        ("v1", "Namespace" | "Node" | "Pod" | "Service")
            | ("discovery.k8s.io/v1", "EndpointSlice")
            | ("networking.k8s.io/v1", "NetworkPolicy")
            | (
                "apps/v1",
                "ReplicaSet" | "Deployment" | "StatefulSet" | "DaemonSet"
            )
            | ("batch/v1", "Job" | "CronJob")
    )
}

fn decode<T: serde::de::DeserializeOwned>(item: Value) -> serde_json::Result<T> {
    serde_json::from_value(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = r#"apiVersion: v1
kind: List
metadata:
  resourceVersion: ""
items:
- apiVersion: v1
  kind: Namespace
  metadata:
    name: shop
    labels:
      kubernetes.io/metadata.name: shop
- apiVersion: v1
  kind: Pod
  metadata:
    name: frontend-7d4-x2
    namespace: shop
    uid: 0b7e3a52-1111-4c1e-9d7a-0123456789ab
    labels:
      app: frontend
  spec:
    nodeName: n1
    containers:
    - name: web
      image: nginx
      ports:
      - name: http
        containerPort: 8080
        protocol: TCP
  status:
    podIP: 198.51.100.10
    podIPs:
    - ip: 198.51.100.10
- apiVersion: v1
  kind: ConfigMap
  metadata:
    name: c
    namespace: shop
"#;

    #[test]
    fn loads_a_kubectl_list() {
        let s = parse_str(LIST, Path::new("c.yaml")).unwrap();
        assert_eq!(s.namespaces.len(), 1);
        assert_eq!(s.pods.len(), 1);
        let pod = &s.pods[0];
        assert_eq!(pod.metadata.namespace.as_deref(), Some("shop"));
        let ports = &pod.spec.as_ref().unwrap().containers[0].ports;
        assert_eq!(ports.as_ref().unwrap()[0].container_port, 8080);
        assert_eq!(s.ignored.get("v1/ConfigMap"), Some(&1));
    }

    #[test]
    fn loads_json_and_multi_document_streams() {
        let json = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"a"}}]}"#;
        assert_eq!(
            parse_str(json, Path::new("c.json"))
                .unwrap()
                .namespaces
                .len(),
            1
        );
        let stream = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n";
        assert_eq!(
            parse_str(stream, Path::new("s.yaml"))
                .unwrap()
                .namespaces
                .len(),
            2
        );
        let typed = "apiVersion: v1\nkind: PodList\nitems:\n- metadata: {name: p, namespace: a}\n";
        assert_eq!(parse_str(typed, Path::new("p.yaml")).unwrap().pods.len(), 1);
    }

    #[test]
    fn errors_name_the_file_line_and_object() {
        let err = parse_str("items: [\n  - a: b\n  c", Path::new("bad.yaml")).unwrap_err();
        assert!(
            matches!(err, SnapshotError::Syntax { line, .. } if line > 0),
            "{err}"
        );
        assert!(err.to_string().starts_with("bad.yaml:"), "{err}");

        let bad_pod = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p, namespace: shop}\n  spec: {containers: 7}\n";
        let err = parse_str(bad_pod, Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("c.yaml: document 1, item 1 (Pod shop/p):"),
            "{err}"
        );

        let err = parse_str("- 1\n", Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a Kubernetes object"), "{err}");
    }

    #[test]
    fn objects_without_a_name_or_with_invalid_labels_are_named() {
        let list = |item: &str| {
            format!(
                "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {{name: shop}}\n{item}"
            )
        };
        let unnamed = list("- apiVersion: v1\n  kind: Pod\n  metadata: {namespace: shop}\n");
        let err = parse_str(&unnamed, Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "c.yaml: document 1, item 2 (Pod shop/<unnamed>): metadata.name is missing or empty"
        );
        let bad_key = list(
            "- apiVersion: v1\n  kind: Pod\n  metadata: {name: p, namespace: shop, labels: {\"bad key\": x}}\n",
        );
        let err = parse_str(&bad_key, Path::new("c.yaml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "c.yaml: document 1, item 2 (Pod shop/p): metadata.labels: invalid label key \"bad key\": character not allowed at byte 3"
        );
        let bad_value =
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {team: \"-x\"}}\n";
        let err = parse_str(bad_value, Path::new("n.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "n.yaml: document 1 (Namespace a): metadata.labels[team]: invalid label value"
            ),
            "{err}"
        );
        let bad_selector = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: shop}\nspec:\n  selector: {matchLabels: {\"app d!\": x}}\n  template: {metadata: {labels: {app: d}}, spec: {containers: []}}\n";
        let err = parse_str(bad_selector, Path::new("d.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("d.yaml: document 1 (Deployment shop/d): spec.selector.matchLabels: invalid label key \"app d!\""), "{err}");
        let bad_service = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: shop}\nspec: {selector: {app: \"a b\"}}\n";
        let err = parse_str(bad_service, Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("(Service shop/s): spec.selector[app]: invalid label value \"a b\""),
            "{err}"
        );
        // Kinds leash only counts are not checked.
        let other = "apiVersion: v1\nkind: ConfigMap\nmetadata: {labels: {\"bad key\": x}}\n";
        assert_eq!(
            parse_str(other, Path::new("o.yaml")).unwrap().ignored.len(),
            1
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".{0,300}") {
            let _ = parse_str(&s, Path::new("x"));
        }
    }
}
