//! Rendering a lab as the Kubernetes `List` that
//! `kubectl get namespaces,nodes,pods,services,endpointslices,replicasets,deployments -A -o yaml`
//! would print for it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use leash_records::error::Chain;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::lab::{Lab, Pod, Service, resolve_target, uid_for};
use crate::spec::{Owner, TargetPort};

/// Creation time stamped on every object (fixed, so snapshots are deterministic).
const CREATED: &str = "2026-01-01T00:00:00Z";

fn labels_value(labels: &BTreeMap<String, String>) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// Kind, apiVersion and object name of a pod's direct controller.
fn controller(lab: &Lab, pod: &Pod) -> Option<(&'static str, &'static str, String)> {
    Some(match pod.owner.as_ref()? {
        Owner::Deployment(d) => ("apps/v1", "ReplicaSet", rs_name(lab, pod.namespace(), d)),
        Owner::ReplicaSet(n) => ("apps/v1", "ReplicaSet", n.clone()),
        Owner::StatefulSet(n) => ("apps/v1", "StatefulSet", n.clone()),
        Owner::DaemonSet(n) => ("apps/v1", "DaemonSet", n.clone()),
        Owner::Job(n) => ("batch/v1", "Job", n.clone()),
    })
}

fn rs_name(lab: &Lab, ns: &str, deploy: &str) -> String {
    let h = uid_for(&["rs", lab.id(), ns, deploy]).replace('-', "");
    // ReplicaSet hashes are 10 characters from a restricted alphabet; any stable suffix will do.
    format!("{deploy}-{}", &h[..10])
}

fn owner_ref(api: &str, kind: &str, name: &str, uid: &str) -> Value {
    json!({
        "apiVersion": api,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

fn meta(lab: &Lab, kind: &str, ns: Option<&str>, name: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("name".into(), name.into());
    if let Some(ns) = ns {
        m.insert("namespace".into(), ns.into());
    }
    m.insert(
        "uid".into(),
        uid_for(&[kind, lab.id(), ns.unwrap_or(""), name]).into(),
    );
    m.insert("creationTimestamp".into(), CREATED.into());
    m.insert("resourceVersion".into(), "1".into());
    m
}

fn pod_value(lab: &Lab, pod: &Pod) -> Value {
    let mut m = meta(lab, "Pod", Some(pod.namespace()), pod.name());
    m.insert("uid".into(), pod.uid().into());
    if !pod.labels().is_empty() {
        m.insert("labels".into(), labels_value(pod.labels()));
    }
    if let Some((api, kind, name)) = controller(lab, pod) {
        let uid = uid_for(&[kind, lab.id(), pod.namespace(), &name]);
        m.insert(
            "ownerReferences".into(),
            json!([owner_ref(api, kind, &name, &uid)]),
        );
    }
    let ports: Vec<Value> = pod
        .ports
        .iter()
        .map(|p| {
            let mut o = Map::new();
            o.insert("containerPort".into(), p.port.into());
            if let Some(n) = &p.name {
                o.insert("name".into(), n.clone().into());
            }
            o.insert("protocol".into(), p.proto.as_str().into());
            Value::Object(o)
        })
        .collect();
    let mut container = Map::new();
    container.insert("name".into(), pod.container.clone().into());
    container.insert("image".into(), pod.image.clone().into());
    if !ports.is_empty() {
        container.insert("ports".into(), Value::Array(ports));
    }
    let mut spec = Map::new();
    spec.insert("containers".into(), json!([container]));
    spec.insert("nodeName".into(), lab.node_name().into());
    if pod.is_host_network() {
        spec.insert("hostNetwork".into(), true.into());
    }
    spec.insert("restartPolicy".into(), "Always".into());
    let node_ips = [
        crate::lab::NODE_IPV4.to_string(),
        crate::lab::NODE_IPV6.to_string(),
    ];
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": m,
        "spec": spec,
        "status": {
            "phase": "Running",
            "qosClass": pod.qos.as_str(),
            "hostIP": node_ips[0],
            "hostIPs": [{"ip": node_ips[0]}, {"ip": node_ips[1]}],
            "podIP": pod.ipv4().to_string(),
            "podIPs": [{"ip": pod.ipv4().to_string()}, {"ip": pod.ipv6().to_string()}],
            "startTime": CREATED,
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{
                "name": pod.container,
                "image": pod.image,
                "containerID": format!("{}://{}", pod.runtime_scheme, pod.container_id()),
                "ready": true,
                "started": true,
                "restartCount": 0,
                "state": {"running": {"startedAt": CREATED}},
            }],
        },
    })
}

fn service_value(lab: &Lab, s: &Service) -> Value {
    let mut m = meta(lab, "Service", Some(&s.namespace), &s.name);
    m.insert("uid".into(), s.uid.clone().into());
    if !s.labels.is_empty() {
        m.insert("labels".into(), labels_value(&s.labels));
    }
    let ports: Vec<Value> = s
        .ports
        .iter()
        .map(|p| {
            let mut o = Map::new();
            if let Some(n) = &p.name {
                o.insert("name".into(), n.clone().into());
            }
            o.insert("port".into(), p.port.into());
            o.insert("protocol".into(), p.proto.as_str().into());
            o.insert(
                "targetPort".into(),
                match &p.target {
                    TargetPort::Number(n) => (*n).into(),
                    TargetPort::Named(n) => n.clone().into(),
                },
            );
            Value::Object(o)
        })
        .collect();
    let mut spec = Map::new();
    spec.insert("type".into(), "ClusterIP".into());
    spec.insert("clusterIP".into(), s.cluster_ip.to_string().into());
    spec.insert(
        "clusterIPs".into(),
        json!([s.cluster_ip.to_string(), s.cluster_ip_v6.to_string()]),
    );
    spec.insert("ipFamilies".into(), json!(["IPv4", "IPv6"]));
    spec.insert("ipFamilyPolicy".into(), "PreferDualStack".into());
    spec.insert("ports".into(), Value::Array(ports));
    if !s.selector.is_empty() {
        spec.insert("selector".into(), labels_value(&s.selector));
    }
    spec.insert("sessionAffinity".into(), "None".into());
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": m,
        "spec": spec,
        "status": {"loadBalancer": {}},
    })
}

fn endpointslices(lab: &Lab, s: &Service) -> Vec<Value> {
    let mut out = Vec::new();
    for (family, v6) in [("IPv4", false), ("IPv6", true)] {
        let name = format!(
            "{}-{}",
            s.name,
            &uid_for(&["eps", lab.id(), &s.namespace, &s.name, family]).replace('-', "")[..5]
        );
        let mut m = meta(lab, "EndpointSlice", Some(&s.namespace), &name);
        let mut labels = BTreeMap::new();
        labels.insert("kubernetes.io/service-name".to_owned(), s.name.clone());
        labels.insert(
            "endpointslice.kubernetes.io/managed-by".to_owned(),
            "endpointslice-controller.k8s.io".to_owned(),
        );
        m.insert("labels".into(), labels_value(&labels));
        m.insert(
            "ownerReferences".into(),
            json!([owner_ref("v1", "Service", &s.name, &s.uid)]),
        );
        let pods: Vec<&Pod> = s.backends.iter().map(|&i| &lab.pods[i]).collect();
        let mut endpoints: Vec<Value> = pods
            .iter()
            .map(|p| {
                let ip = if v6 {
                    p.ipv6().to_string()
                } else {
                    p.ipv4().to_string()
                };
                json!({
                    "addresses": [ip],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "nodeName": lab.node_name(),
                    "targetRef": {
                        "kind": "Pod",
                        "name": p.name(),
                        "namespace": p.namespace(),
                        "uid": p.uid(),
                    },
                })
            })
            .collect();
        endpoints.extend(
            s.manual_endpoints
                .iter()
                .filter(|ip| ip.is_ipv6() == v6)
                .map(|ip| {
                    json!({
                        "addresses": [ip.to_string()],
                        "conditions": {"ready": true, "serving": true, "terminating": false},
                    })
                }),
        );
        let ports: Vec<Value> = s
            .ports
            .iter()
            .filter_map(|sp| {
                let port = match &sp.target {
                    TargetPort::Number(n) => Some(*n),
                    TargetPort::Named(_) => pods.iter().find_map(|p| resolve_target(p, sp)),
                }?;
                Some(json!({
                    "name": sp.name.clone().unwrap_or_default(),
                    "port": port,
                    "protocol": sp.proto.as_str(),
                }))
            })
            .collect();
        out.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": m,
            "addressType": family,
            "endpoints": endpoints,
            "ports": ports,
        }));
    }
    out
}

/// Labels shared by all of `pods`.
fn common_labels(pods: &[&Pod]) -> BTreeMap<String, String> {
    let Some(first) = pods.first() else {
        return BTreeMap::new();
    };
    first
        .labels()
        .iter()
        .filter(|(k, v)| pods.iter().all(|p| p.labels().get(*k) == Some(*v)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn workload(
    lab: &Lab,
    api: &str,
    kind: &str,
    ns: &str,
    name: &str,
    pods: &[&Pod],
    owner: Option<Value>,
) -> Value {
    let mut m = meta(lab, kind, Some(ns), name);
    m.insert("uid".into(), uid_for(&[kind, lab.id(), ns, name]).into());
    let labels = common_labels(pods);
    if !labels.is_empty() {
        m.insert("labels".into(), labels_value(&labels));
    }
    if let Some(o) = owner {
        m.insert("ownerReferences".into(), json!([o]));
    }
    let replicas = pods.len();
    let container = pods.first().map_or_else(
        || json!({"name": "app", "image": "registry.lab.test/app:1"}),
        |p| json!({"name": p.container, "image": p.image}),
    );
    let mut spec = json!({
        "selector": {"matchLabels": labels_value(&labels)},
        "template": {
            "metadata": {"labels": labels_value(&labels)},
            "spec": {"containers": [container]},
        },
    });
    if kind != "DaemonSet"
        && kind != "Job"
        && let Some(o) = spec.as_object_mut()
    {
        o.insert("replicas".into(), replicas.into());
    }
    json!({
        "apiVersion": api,
        "kind": kind,
        "metadata": m,
        "spec": spec,
        "status": {"replicas": replicas, "readyReplicas": replicas},
    })
}

/// The lab as a `v1/List` value.
pub fn snapshot_value(lab: &Lab) -> Value {
    let mut items = Vec::new();
    for ns in &lab.namespaces {
        let mut m = meta(lab, "Namespace", None, ns);
        m.insert("labels".into(), json!({"kubernetes.io/metadata.name": ns}));
        items.push(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": m,
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }));
    }
    let mut node_meta = meta(lab, "Node", None, lab.node_name());
    node_meta.insert(
        "labels".into(),
        json!({
            "kubernetes.io/hostname": lab.node_name(),
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
        }),
    );
    items.push(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": node_meta,
        "spec": {
            "podCIDR": crate::lab::POD_CIDR_V4,
            "podCIDRs": [crate::lab::POD_CIDR_V4, crate::lab::POD_CIDR_V6],
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": crate::lab::NODE_IPV4.to_string()},
                {"type": "InternalIP", "address": crate::lab::NODE_IPV6.to_string()},
                {"type": "Hostname", "address": lab.node_name()},
            ],
        },
    }));
    let mut pods: Vec<&Pod> = lab.pods.iter().collect();
    pods.sort_by_key(|p| p.key());
    items.extend(pods.iter().map(|p| pod_value(lab, p)));
    let mut services: Vec<&Service> = lab.services.iter().collect();
    services.sort_by_key(|s| s.key());
    items.extend(services.iter().map(|s| service_value(lab, s)));
    for s in &services {
        items.extend(endpointslices(lab, s));
    }
    // Controllers: group pods by (kind, namespace, name).
    let mut groups: BTreeMap<(String, String, String), Vec<&Pod>> = BTreeMap::new();
    let mut deployments: BTreeSet<(String, String)> = BTreeSet::new();
    for p in &pods {
        let Some((_, kind, name)) = controller(lab, p) else {
            continue;
        };
        groups
            .entry((kind.to_owned(), p.namespace().to_owned(), name))
            .or_default()
            .push(p);
        if let Some(Owner::Deployment(d)) = &p.owner {
            deployments.insert((p.namespace().to_owned(), d.clone()));
        }
    }
    for ((kind, ns, name), members) in &groups {
        let api = if kind == "Job" { "batch/v1" } else { "apps/v1" };
        let owner = members.first().and_then(|p| match &p.owner {
            Some(Owner::Deployment(d)) => Some(owner_ref(
                "apps/v1",
                "Deployment",
                d,
                &uid_for(&["Deployment", lab.id(), ns, d]),
            )),
            _ => None,
        });
        items.push(workload(lab, api, kind, ns, name, members, owner));
    }
    for (ns, d) in &deployments {
        let members: Vec<&Pod> = pods
            .iter()
            .copied()
            .filter(|p| {
                p.namespace() == ns && matches!(&p.owner, Some(Owner::Deployment(x)) if x == d)
            })
            .collect();
        items.push(workload(
            lab,
            "apps/v1",
            "Deployment",
            ns,
            d,
            &members,
            None,
        ));
    }
    items.extend(lab.extra_objects.iter().cloned());
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items,
        "metadata": {"resourceVersion": ""},
    })
}

/// The lab as YAML, as `kubectl get … -o yaml` prints a `List`.
pub fn snapshot_yaml(lab: &Lab) -> Result<String> {
    serde_norway::to_string(&snapshot_value(lab))
        .map_err(|e| Error::Snapshot(Chain(&e).to_string()))
}

/// Writes [`snapshot_yaml`] to `path`.
pub fn write_snapshot(lab: &Lab, path: &Path) -> Result<()> {
    let y = snapshot_yaml(lab)?;
    std::fs::write(path, y).map_err(|e| Error::io("write", path, e))
}

impl Lab {
    /// The lab as a Kubernetes `List` value (namespaces, node, pods, services, endpointslices,
    /// replicasets, deployments, other controllers).
    pub fn snapshot_value(&self) -> Value {
        snapshot_value(self)
    }

    /// The lab as `kubectl … -o yaml` YAML.
    pub fn snapshot_yaml(&self) -> Result<String> {
        snapshot_yaml(self)
    }

    /// Writes the YAML snapshot to `path` (for `leash-agent --cluster-snapshot`).
    pub fn write_snapshot(&self, path: &Path) -> Result<()> {
        write_snapshot(self, path)
    }
}
