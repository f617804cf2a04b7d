//! The one indexed model of the cluster.
//!
//! Construction and indexing are separate on purpose: an [`Inventory`] is a flat, validated list of
//! the facts leash needs (built from a snapshot file today, from a kube watch later, or directly by
//! test fixtures), and [`Cluster::new`] indexes it. Indexing is infallible; every input error is
//! reported while building the inventory, naming the offending object.
//!
//! One model, two sources: a snapshot file ([`Cluster::load`]) or the live API server
//! ([`kube::watch_cluster`], kept current by kube-rs reflectors, and [`kube::load_once`]). Both
//! end in a [`ClusterState`] built from a `leash_records::Snapshot`; [`events`] publishes
//! Kubernetes Events about workloads.

pub mod events;
pub mod kube;
mod lenient;
mod state;

pub use state::{ClusterState, Rejected};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Labels of an object, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// The label every namespace carries with its own name (GA since Kubernetes 1.22).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Errors building the cluster model; each names the object at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An address field of an object does not hold an IP address.
    #[error("{object}: invalid IP address {value:?} in {field}")]
    InvalidIp {
        /// The object, as `kind namespace/name`.
        object: String,
        /// The field holding the bad value.
        field: &'static str,
        /// The offending text.
        value: String,
    },
    /// A CIDR field of an object is not a canonical CIDR.
    #[error("{object}: invalid CIDR {value:?} in {field}")]
    InvalidCidr {
        /// The object, as `kind namespace/name`.
        object: String,
        /// The field holding the bad value.
        field: &'static str,
        /// The offending text.
        value: String,
    },
    /// A port number is outside 1..=65535.
    #[error("{object}: port {value} out of range in {field}")]
    InvalidPort {
        /// The object, as `kind namespace/name`.
        object: String,
        /// The field holding the bad value.
        field: &'static str,
        /// The offending number.
        value: i64,
    },
    /// A protocol other than TCP, UDP or SCTP.
    #[error("{object}: unknown protocol {value:?} in {field}")]
    InvalidProtocol {
        /// The object, as `kind namespace/name`.
        object: String,
        /// The field holding the bad value.
        field: &'static str,
        /// The offending text.
        value: String,
    },
    /// A label selector uses an operator other than In, NotIn, Exists, DoesNotExist.
    #[error("{object}: unknown label selector operator {value:?}")]
    InvalidSelector {
        /// The object, as `kind namespace/name`.
        object: String,
        /// The offending operator.
        value: String,
    },
    /// A required field (such as `metadata.name`) is missing.
    #[error("{kind} object without {field}")]
    MissingField {
        /// The object's kind.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use leash_records::Protocol;

/// Parses the Kubernetes spelling of a protocol (exactly `TCP`, `UDP` or `SCTP`).
pub fn parse_k8s_protocol(s: &str) -> Option<Protocol> {
    match s {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// One requirement of a label selector (`matchExpressions` entry).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The operator.
    pub operator: Operator,
    /// The values (sorted; empty for Exists / DoesNotExist).
    pub values: Vec<String>,
}

/// A label selector operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    /// The label is present with one of the values.
    In,
    /// The label is absent or has none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

impl Operator {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::In => "In",
            Self::NotIn => "NotIn",
            Self::Exists => "Exists",
            Self::DoesNotExist => "DoesNotExist",
        }
    }
}

/// A label selector: `matchLabels` AND every `matchExpressions` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Selector {
    /// Exact label matches.
    pub match_labels: Labels,
    /// Requirements, sorted.
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    /// A selector of exactly these labels.
    pub fn labels(labels: Labels) -> Self {
        Self {
            match_labels: labels,
            match_expressions: Vec::new(),
        }
    }

    /// True when the selector has no terms (it selects everything).
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let got = labels.get(&r.key);
                match r.operator {
                    Operator::In => got.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => got.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => got.is_some(),
                    Operator::DoesNotExist => got.is_none(),
                }
            })
    }

    /// Parses a Kubernetes label selector; `object` names the owner for errors.
    pub fn from_k8s(sel: &meta::LabelSelector, object: &str) -> Result<Self> {
        let mut match_expressions = Vec::new();
        for e in sel.match_expressions.iter().flatten() {
            let operator = match e.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(Error::InvalidSelector {
                        object: object.to_owned(),
                        value: other.to_owned(),
                    });
                }
            };
            let mut values = e.values.clone().unwrap_or_default();
            values.sort();
            values.dedup();
            match_expressions.push(Requirement {
                key: e.key.clone(),
                operator,
                values,
            });
        }
        match_expressions.sort();
        match_expressions.dedup();
        Ok(Self {
            match_labels: sel.match_labels.clone().unwrap_or_default(),
            match_expressions,
        })
    }

    /// The Kubernetes form, with empty parts omitted.
    pub fn to_k8s(&self) -> meta::LabelSelector {
        meta::LabelSelector {
            match_labels: (!self.match_labels.is_empty()).then(|| self.match_labels.clone()),
            match_expressions: (!self.match_expressions.is_empty()).then(|| {
                self.match_expressions
                    .iter()
                    .map(|r| meta::LabelSelectorRequirement {
                        key: r.key.clone(),
                        operator: r.operator.as_str().to_owned(),
                        values: (!r.values.is_empty()).then(|| r.values.clone()),
                    })
                    .collect()
            }),
        }
    }

    /// The same selector without any term on an unstable label key.
    pub fn without_unstable(&self) -> Self {
        Self {
            match_labels: stable_labels(&self.match_labels),
            match_expressions: self
                .match_expressions
                .iter()
                .filter(|r| is_stable_key(&r.key) && r.values.iter().all(|v| !looks_like_uid(v)))
                .cloned()
                .collect(),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.match_labels {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{k}={v}")?;
        }
        for r in &self.match_expressions {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(
                f,
                "{} {} ({})",
                r.key,
                r.operator.as_str(),
                r.values.join(",")
            )?;
        }
        if first {
            f.write_str("{}")?;
        }
        Ok(())
    }
}

/// Label keys that controllers stamp per revision, per pod or per run: a selector naming them
/// breaks on the next rollout, so leash never uses them.
const UNSTABLE_KEYS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "job-name",
    "batch.kubernetes.io/job-name",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-completion-index",
];

/// Whether a label key is stable across rollouts and restarts.
pub fn is_stable_key(key: &str) -> bool {
    !UNSTABLE_KEYS.contains(&key) && !key.ends_with("-uid") && !key.ends_with("/uid")
}

/// Whether a label value looks like a Kubernetes uid (8-4-4-4-12 hex).
pub fn looks_like_uid(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The stable subset of `labels`.
pub fn stable_labels(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(k, v)| is_stable_key(k) && !looks_like_uid(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Inventory: the flat facts.

/// A namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Name.
    pub name: String,
    /// Labels, always including `kubernetes.io/metadata.name`.
    pub labels: Labels,
}

/// A node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Name.
    pub name: String,
    /// Its addresses (InternalIP, ExternalIP), sorted.
    pub ips: Vec<IpAddr>,
    /// `spec.podCIDRs`.
    pub pod_cidrs: Vec<IpNet>,
}

/// A declared container port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ContainerPort {
    /// The port's name, if any.
    pub name: Option<String>,
    /// The number.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

/// A controller owner reference.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OwnerRef {
    /// Kind, e.g. `ReplicaSet`.
    pub kind: String,
    /// Name (same namespace as the owned object).
    pub name: String,
}

/// A pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// uid, if known.
    pub uid: Option<String>,
    /// Labels.
    pub labels: Labels,
    /// All pod IPs (for hostNetwork pods these are the node's).
    pub ips: Vec<IpAddr>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// The node it runs on.
    pub node: Option<String>,
    /// Declared container ports (for named port resolution).
    pub ports: Vec<ContainerPort>,
    /// The controller owner, if any.
    pub owner: Option<OwnerRef>,
    /// Phase Succeeded or Failed: its IPs may already belong to another pod.
    pub terminated: bool,
}

/// How a Service port reaches its backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    /// A number.
    Number(u16),
    /// A container port name, resolved on each backend pod.
    Name(String),
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Name (matches the EndpointSlice port name).
    pub name: Option<String>,
    /// The Service port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Target port (defaults to `port`).
    pub target_port: TargetPort,
    /// The node port, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
}

/// A Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// ClusterIPs (empty for headless and ExternalName services).
    pub cluster_ips: Vec<IpAddr>,
    /// externalIPs and load balancer ingress IPs, treated like the ClusterIP from inside.
    pub external_ips: Vec<IpAddr>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// The pod selector, if any.
    pub selector: Option<Labels>,
}

/// One endpoint of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Addresses.
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (absent counts as ready).
    pub ready: bool,
    /// The backing pod's name when `targetRef` is a Pod.
    pub pod: Option<String>,
}

/// A port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePort {
    /// Name (matches the Service port name).
    pub name: Option<String>,
    /// The resolved target port number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// An EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    /// Namespace.
    pub namespace: String,
    /// The owning Service (label `kubernetes.io/service-name`).
    pub service: String,
    /// Ports.
    pub ports: Vec<SlicePort>,
    /// Endpoints.
    pub endpoints: Vec<EndpointInfo>,
}

/// A workload controller (ReplicaSet, Deployment, StatefulSet, DaemonSet, Job, CronJob).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerInfo {
    /// Namespace.
    pub namespace: String,
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// Its own controller owner.
    pub owner: Option<OwnerRef>,
    /// `spec.selector`.
    pub selector: Option<Selector>,
    /// The pod template's labels.
    pub template_labels: Labels,
}

/// The flat, validated facts a [`Cluster`] is indexed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Namespaces.
    pub namespaces: Vec<NamespaceInfo>,
    /// Nodes.
    pub nodes: Vec<NodeInfo>,
    /// Pods.
    pub pods: Vec<PodInfo>,
    /// Services.
    pub services: Vec<ServiceInfo>,
    /// EndpointSlices.
    pub slices: Vec<SliceInfo>,
    /// Workload controllers.
    pub controllers: Vec<ControllerInfo>,
}

fn object_name(kind: &str, meta: &meta::ObjectMeta) -> String {
    match (&meta.namespace, &meta.name) {
        (Some(ns), Some(n)) => format!("{kind} {ns}/{n}"),
        (None, Some(n)) => format!("{kind} {n}"),
        _ => kind.to_owned(),
    }
}

fn parse_ip(object: &str, field: &'static str, s: &str) -> Result<IpAddr> {
    s.parse().map_err(|_| Error::InvalidIp {
        object: object.to_owned(),
        field,
        value: s.to_owned(),
    })
}

fn parse_port(object: &str, field: &'static str, n: i32) -> Result<u16> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(Error::InvalidPort {
            object: object.to_owned(),
            field,
            value: i64::from(n),
        })
}

fn parse_protocol(object: &str, field: &'static str, p: Option<&String>) -> Result<Protocol> {
    match p {
        None => Ok(Protocol::Tcp),
        Some(s) => parse_k8s_protocol(s).ok_or_else(|| Error::InvalidProtocol {
            object: object.to_owned(),
            field,
            value: s.clone(),
        }),
    }
}

fn required_name(kind: &'static str, meta: &meta::ObjectMeta) -> Result<String> {
    meta.name.clone().ok_or(Error::MissingField {
        kind,
        field: "metadata.name",
    })
}

fn namespace_of(meta: &meta::ObjectMeta) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

fn controller_of(meta: &meta::ObjectMeta) -> Option<OwnerRef> {
    let refs = meta.owner_references.as_ref()?;
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
        .map(|r| OwnerRef {
            kind: r.kind.clone(),
            name: r.name.clone(),
        })
}

impl Inventory {
    /// Adds a Namespace object.
    pub fn add_namespace(&mut self, ns: &core::Namespace) -> Result<()> {
        let name = required_name("Namespace", &ns.metadata)?;
        let mut labels = ns.metadata.labels.clone().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.clone());
        self.namespaces.push(NamespaceInfo { name, labels });
        Ok(())
    }

    /// Adds a Node object.
    pub fn add_node(&mut self, node: &core::Node) -> Result<()> {
        let name = required_name("Node", &node.metadata)?;
        let object = object_name("Node", &node.metadata);
        let mut ips = Vec::new();
        for a in node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .into_iter()
            .flatten()
        {
            if a.type_ == "InternalIP" || a.type_ == "ExternalIP" {
                ips.push(parse_ip(&object, "status.addresses", &a.address)?);
            }
        }
        ips.sort();
        ips.dedup();
        let mut pod_cidrs = Vec::new();
        if let Some(spec) = &node.spec {
            let list = spec
                .pod_cidrs
                .clone()
                .unwrap_or_else(|| spec.pod_cidr.clone().into_iter().collect());
            for c in list {
                let net: IpNet = c.parse().map_err(|_| Error::InvalidCidr {
                    object: object.clone(),
                    field: "spec.podCIDRs",
                    value: c.clone(),
                })?;
                pod_cidrs.push(net.trunc());
            }
        }
        pod_cidrs.sort();
        pod_cidrs.dedup();
        self.nodes.push(NodeInfo {
            name,
            ips,
            pod_cidrs,
        });
        Ok(())
    }

    /// Adds a Pod object.
    pub fn add_pod(&mut self, pod: &core::Pod) -> Result<()> {
        let name = required_name("Pod", &pod.metadata)?;
        let object = object_name("Pod", &pod.metadata);
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips = Vec::new();
        if let Some(list) = status.and_then(|s| s.pod_ips.as_ref()) {
            for p in list {
                ips.push(parse_ip(&object, "status.podIPs", &p.ip)?);
            }
        }
        if let Some(ip) = status.and_then(|s| s.pod_ip.as_ref()) {
            ips.push(parse_ip(&object, "status.podIP", ip)?);
        }
        ips.sort();
        ips.dedup();
        let mut ports = Vec::new();
        for c in spec.into_iter().flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        }) {
            for p in c.ports.iter().flatten() {
                ports.push(ContainerPort {
                    name: p.name.clone(),
                    port: parse_port(&object, "containerPort", p.container_port)?,
                    protocol: parse_protocol(&object, "ports.protocol", p.protocol.as_ref())?,
                });
            }
        }
        ports.sort();
        ports.dedup();
        let phase = status.and_then(|s| s.phase.as_deref());
        self.pods.push(PodInfo {
            namespace: namespace_of(&pod.metadata),
            name,
            uid: pod.metadata.uid.clone(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            ips,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            node: spec.and_then(|s| s.node_name.clone()),
            ports,
            owner: controller_of(&pod.metadata),
            terminated: matches!(phase, Some("Succeeded" | "Failed")),
        });
        Ok(())
    }

    /// Adds a Service object.
    pub fn add_service(&mut self, svc: &core::Service) -> Result<()> {
        let name = required_name("Service", &svc.metadata)?;
        let object = object_name("Service", &svc.metadata);
        let spec = svc.spec.clone().unwrap_or_default();
        let mut cluster_ips = Vec::new();
        let listed = spec
            .cluster_ips
            .clone()
            .unwrap_or_else(|| spec.cluster_ip.clone().into_iter().collect());
        for ip in listed.iter().chain(spec.cluster_ip.iter()) {
            if ip.is_empty() || ip == "None" {
                continue;
            }
            cluster_ips.push(parse_ip(&object, "spec.clusterIPs", ip)?);
        }
        cluster_ips.sort();
        cluster_ips.dedup();
        let mut external_ips = Vec::new();
        for ip in spec.external_ips.iter().flatten() {
            external_ips.push(parse_ip(&object, "spec.externalIPs", ip)?);
        }
        for ing in svc
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
        {
            if let Some(ip) = &ing.ip {
                external_ips.push(parse_ip(&object, "status.loadBalancer.ingress", ip)?);
            }
        }
        external_ips.sort();
        external_ips.dedup();
        let mut ports = Vec::new();
        for p in spec.ports.iter().flatten() {
            let port = parse_port(&object, "spec.ports.port", p.port)?;
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => {
                    TargetPort::Number(parse_port(&object, "spec.ports.targetPort", *n)?)
                }
                Some(IntOrString::String(s)) => match s.parse::<i32>() {
                    Ok(n) => TargetPort::Number(parse_port(&object, "spec.ports.targetPort", n)?),
                    Err(_) => TargetPort::Name(s.clone()),
                },
            };
            let node_port = p
                .node_port
                .filter(|n| *n != 0)
                .map(|n| parse_port(&object, "spec.ports.nodePort", n))
                .transpose()?;
            ports.push(ServicePort {
                name: p.name.clone(),
                node_port,
                port,
                protocol: parse_protocol(&object, "spec.ports.protocol", p.protocol.as_ref())?,
                target_port,
            });
        }
        self.services.push(ServiceInfo {
            namespace: namespace_of(&svc.metadata),
            name,
            cluster_ips,
            external_ips,
            ports,
            selector: spec.selector.clone().filter(|s| !s.is_empty()),
        });
        Ok(())
    }

    /// Adds an EndpointSlice object (slices without a `kubernetes.io/service-name` label are
    /// ignored: nothing routes to them through a ClusterIP).
    pub fn add_endpoint_slice(&mut self, slice: &discovery::EndpointSlice) -> Result<()> {
        let object = object_name("EndpointSlice", &slice.metadata);
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .cloned()
        else {
            return Ok(());
        };
        if slice.address_type == "FQDN" {
            return Ok(());
        }
        let mut ports = Vec::new();
        for p in slice.ports.iter().flatten() {
            let Some(n) = p.port else { continue };
            ports.push(SlicePort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port: parse_port(&object, "ports.port", n)?,
                protocol: parse_protocol(&object, "ports.protocol", p.protocol.as_ref())?,
            });
        }
        let mut endpoints = Vec::new();
        for e in slice.endpoints.iter().flatten() {
            let mut addresses = Vec::new();
            for a in &e.addresses {
                addresses.push(parse_ip(&object, "endpoints.addresses", a)?);
            }
            let pod = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            endpoints.push(EndpointInfo {
                addresses,
                ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
                pod,
            });
        }
        self.slices.push(SliceInfo {
            namespace: namespace_of(&slice.metadata),
            service,
            ports,
            endpoints,
        });
        Ok(())
    }

    fn add_controller(
        &mut self,
        kind: &'static str,
        meta: &meta::ObjectMeta,
        selector: Option<&meta::LabelSelector>,
        template_labels: Option<&Labels>,
    ) -> Result<()> {
        let name = required_name(kind, meta)?;
        let object = object_name(kind, meta);
        let selector = selector
            .map(|s| Selector::from_k8s(s, &object))
            .transpose()?;
        self.controllers.push(ControllerInfo {
            namespace: namespace_of(meta),
            kind: kind.to_owned(),
            name,
            owner: controller_of(meta),
            selector,
            template_labels: template_labels.cloned().unwrap_or_default(),
        });
        Ok(())
    }

    /// Adds a ReplicaSet.
    pub fn add_replica_set(&mut self, o: &apps::ReplicaSet) -> Result<()> {
        let spec = Some(&o.spec);
        self.add_controller(
            "ReplicaSet",
            &o.metadata,
            spec.map(|s| &s.selector),
            spec.and_then(|s| s.template.as_ref())
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.as_ref()),
        )
    }

    /// Adds a Deployment.
    pub fn add_deployment(&mut self, o: &apps::Deployment) -> Result<()> {
        let spec = Some(&o.spec);
        self.add_controller(
            "Deployment",
            &o.metadata,
            spec.map(|s| &s.selector),
            spec.and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.as_ref()),
        )
    }

    /// Adds a StatefulSet.
    pub fn add_stateful_set(&mut self, o: &apps::StatefulSet) -> Result<()> {
        let spec = Some(&o.spec);
        self.add_controller(
            "StatefulSet",
            &o.metadata,
            spec.map(|s| &s.selector),
            spec.and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.as_ref()),
        )
    }

    /// Adds a DaemonSet.
    pub fn add_daemon_set(&mut self, o: &apps::DaemonSet) -> Result<()> {
        let spec = Some(&o.spec);
        self.add_controller(
            "DaemonSet",
            &o.metadata,
            spec.map(|s| &s.selector),
            spec.and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.as_ref()),
        )
    }

    /// Adds a Job. Its generated selector names a uid, so only the template labels are kept.
    pub fn add_job(&mut self, o: &batch::Job) -> Result<()> {
        let spec = o.spec.as_ref();
        self.add_controller(
            "Job",
            &o.metadata,
            None,
            spec.and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.labels.as_ref()),
        )
    }

    /// Adds a CronJob (selector: its job template's pod labels).
    pub fn add_cron_job(&mut self, o: &batch::CronJob) -> Result<()> {
        let labels = o
            .spec
            .job_template
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.labels.as_ref());
        self.add_controller("CronJob", &o.metadata, None, labels)
    }
}

// ---------------------------------------------------------------------------------------------
// The indexed model.

/// Index of a pod in [`Cluster::pods`].
pub type PodId = usize;
/// Index of a workload in [`Cluster::workloads`].
pub type WorkloadId = usize;
/// Index of a Service in [`Cluster::services`].
pub type ServiceId = usize;
/// Index of a node in [`Cluster::nodes`].
pub type NodeId = usize;

/// The unit leash writes one policy for: a controller's pods, or a bare pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    /// Namespace.
    pub namespace: String,
    /// Kind: Deployment, StatefulSet, DaemonSet, CronJob, Job, ReplicaSet, Pod, or another
    /// controller kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// A selector of stable labels matching its pods; `None` when its pods have no stable label.
    pub selector: Option<Selector>,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

/// Where a Service port leads for one backend address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    /// The backend address.
    pub ip: IpAddr,
    /// The resolved numeric target port.
    pub port: u16,
    /// The backend pod, when known.
    pub pod: Option<PodId>,
}

/// Outcome of [`Cluster::resolve_service`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceLookup {
    /// The address belongs to no Service.
    NotService,
    /// The Service has no port matching the flow's port and protocol.
    NoSuchPort(ServiceId),
    /// Resolved (the backend list may be empty when nothing backs the Service).
    Resolved {
        /// The Service.
        service: ServiceId,
        /// The matched Service port.
        port: ServicePort,
        /// The backends, sorted; ready ones only unless none are ready.
        backends: Vec<Backend>,
    },
}

/// The indexed cluster model.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, NamespaceInfo>,
    /// Nodes, sorted by name.
    pub nodes: Vec<NodeInfo>,
    /// Pods, sorted by (namespace, name).
    pub pods: Vec<PodInfo>,
    /// Services, sorted by (namespace, name).
    pub services: Vec<ServiceInfo>,
    /// Workloads, sorted.
    pub workloads: Vec<Workload>,
    /// The workload of each pod (parallel to `pods`).
    pub pod_workload: Vec<WorkloadId>,
    slices: BTreeMap<(String, String), Vec<SliceInfo>>,
    pod_by_uid: HashMap<String, PodId>,
    pod_by_ip: HashMap<IpAddr, PodId>,
    host_pods_by_ip: HashMap<IpAddr, Vec<PodId>>,
    node_by_ip: HashMap<IpAddr, NodeId>,
    service_by_ip: HashMap<IpAddr, ServiceId>,
    /// (nodePort, protocol) → (Service, index of its port).
    node_ports: HashMap<(u16, Protocol), (ServiceId, usize)>,
    workload_pods: Vec<Vec<PodId>>,
    node_local_dns: bool,
}

impl Cluster {
    /// Indexes an inventory.
    pub fn new(inv: Inventory) -> Self {
        let Inventory {
            namespaces,
            mut nodes,
            mut pods,
            mut services,
            slices,
            controllers,
        } = inv;
        let mut c = Cluster::default();
        for ns in namespaces {
            c.namespaces.insert(ns.name.clone(), ns);
        }
        // Every namespace a pod or Service lives in exists, even when the snapshot omitted it.
        for ns in pods
            .iter()
            .map(|p| &p.namespace)
            .chain(services.iter().map(|s| &s.namespace))
        {
            c.namespaces
                .entry(ns.clone())
                .or_insert_with(|| NamespaceInfo {
                    name: ns.clone(),
                    labels: Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), ns.clone())]),
                });
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        nodes.dedup_by(|a, b| a.name == b.name);
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        pods.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        services.dedup_by(|a, b| a.namespace == b.namespace && a.name == b.name);

        for (i, n) in nodes.iter().enumerate() {
            for ip in &n.ips {
                c.node_by_ip.entry(*ip).or_insert(i);
            }
        }
        for (i, p) in pods.iter().enumerate() {
            if let Some(uid) = &p.uid {
                c.pod_by_uid.insert(uid.clone(), i);
            }
            for ip in &p.ips {
                if p.host_network {
                    c.host_pods_by_ip.entry(*ip).or_default().push(i);
                    continue;
                }
                // A running pod wins an address over a terminated one that used to hold it.
                match c.pod_by_ip.get(ip) {
                    Some(&j) if !pods[j].terminated || p.terminated => {}
                    _ => {
                        c.pod_by_ip.insert(*ip, i);
                    }
                }
            }
        }
        for (i, s) in services.iter().enumerate() {
            for ip in s.cluster_ips.iter().chain(&s.external_ips) {
                c.service_by_ip.entry(*ip).or_insert(i);
            }
            for (j, p) in s.ports.iter().enumerate() {
                if let Some(np) = p.node_port {
                    c.node_ports.entry((np, p.protocol)).or_insert((i, j));
                }
            }
        }
        for s in slices {
            c.slices
                .entry((s.namespace.clone(), s.service.clone()))
                .or_default()
                .push(s);
        }
        // The upstream NodeLocal DNSCache DaemonSet labels its pods `k8s-app: node-local-dns`.
        c.node_local_dns = pods.iter().any(|p| {
            p.labels
                .get("k8s-app")
                .is_some_and(|v| v == "node-local-dns")
        });
        c.nodes = nodes;
        c.pods = pods;
        c.services = services;
        c.index_workloads(&controllers);
        c
    }

    fn index_workloads(&mut self, controllers: &[ControllerInfo]) {
        let by_key: HashMap<(&str, &str, &str), &ControllerInfo> = controllers
            .iter()
            .map(|o| ((o.namespace.as_str(), o.kind.as_str(), o.name.as_str()), o))
            .collect();
        // (namespace, kind, name) → (selector from the controller, if usable)
        let mut keys: Vec<(String, String, String, Option<Selector>)> = Vec::new();
        for p in &self.pods {
            keys.push(resolve_owner(p, &by_key));
        }
        let mut ids: BTreeMap<(String, String, String), Option<Selector>> = BTreeMap::new();
        for (ns, kind, name, sel) in &keys {
            let e = ids
                .entry((ns.clone(), kind.clone(), name.clone()))
                .or_insert(None);
            if e.is_none() {
                e.clone_from(sel);
            }
        }
        let index: HashMap<(String, String, String), WorkloadId> = ids
            .keys()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        self.workload_pods = vec![Vec::new(); ids.len()];
        self.pod_workload = keys
            .iter()
            .enumerate()
            .map(|(pod, (ns, kind, name, _))| {
                let w = index
                    .get(&(ns.clone(), kind.clone(), name.clone()))
                    .copied()
                    .unwrap_or_default();
                if let Some(list) = self.workload_pods.get_mut(w) {
                    list.push(pod);
                }
                w
            })
            .collect();
        let mut workloads = Vec::with_capacity(ids.len());
        for (w, ((namespace, kind, name), sel)) in ids.into_iter().enumerate() {
            let selector = match sel {
                Some(s) if !s.is_empty() => Some(s),
                _ => self.minimal_selector(w),
            };
            workloads.push(Workload {
                namespace,
                kind,
                name,
                selector,
            });
        }
        self.workloads = workloads;
    }

    /// The smallest set of stable labels shared by all of workload `w`'s pods that selects no
    /// other live pod in the namespace. Falls back to all shared stable labels when no subset
    /// of up to three labels is unique.
    fn minimal_selector(&self, w: WorkloadId) -> Option<Selector> {
        let members = self.workload_pods.get(w)?;
        let first = *members.first()?;
        let mut common = stable_labels(&self.pods.get(first)?.labels);
        for &p in members {
            let labels = &self.pods[p].labels;
            common.retain(|k, v| labels.get(k) == Some(v));
        }
        if common.is_empty() {
            return None;
        }
        let ns = &self.pods[first].namespace;
        let others: Vec<&Labels> = self
            .pods_in_namespace(ns)
            .filter(|&p| self.pod_workload.get(p) != Some(&w) && !self.pods[p].terminated)
            .map(|p| &self.pods[p].labels)
            .collect();
        let entries: Vec<(&String, &String)> = common.iter().collect();
        let unique = |subset: &[usize]| {
            !others.iter().any(|l| {
                subset
                    .iter()
                    .all(|&i| l.get(entries[i].0) == Some(entries[i].1))
            })
        };
        let n = entries.len();
        for size in 1..=n.min(3) {
            let mut idx: Vec<usize> = (0..size).collect();
            loop {
                if unique(&idx) {
                    let labels = idx
                        .iter()
                        .map(|&i| (entries[i].0.clone(), entries[i].1.clone()))
                        .collect();
                    return Some(Selector::labels(labels));
                }
                // Next combination in lexicographic order.
                let mut i = size;
                while i > 0 && idx[i - 1] == n - size + i - 1 {
                    i -= 1;
                }
                if i == 0 {
                    break;
                }
                idx[i - 1] += 1;
                for j in i..size {
                    idx[j] = idx[j - 1] + 1;
                }
            }
        }
        Some(Selector::labels(common))
    }

    /// Pods of a namespace, as a range of ids (pods are sorted by namespace).
    pub fn pods_in_namespace(&self, ns: &str) -> impl Iterator<Item = PodId> + '_ {
        let start = self.pods.partition_point(|p| p.namespace.as_str() < ns);
        let end = self.pods.partition_point(|p| p.namespace.as_str() <= ns);
        start..end
    }

    /// Whether NodeLocal DNSCache runs in the cluster (pods labelled
    /// `k8s-app: node-local-dns`).
    pub fn runs_node_local_dns(&self) -> bool {
        self.node_local_dns
    }

    /// The pod with this uid.
    pub fn pod_by_uid(&self, uid: &str) -> Option<PodId> {
        self.pod_by_uid.get(uid).copied()
    }

    /// The pod `namespace/name`.
    pub fn pod_by_name(&self, namespace: &str, name: &str) -> Option<PodId> {
        // Pods are sorted by (namespace, name).
        self.pods
            .binary_search_by(|p| (p.namespace.as_str(), p.name.as_str()).cmp(&(namespace, name)))
            .ok()
    }

    /// The (non-hostNetwork) pod holding this IP.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<PodId> {
        self.pod_by_ip.get(&ip).copied()
    }

    /// hostNetwork pods on the node with this IP.
    pub fn host_pods_by_ip(&self, ip: IpAddr) -> &[PodId] {
        self.host_pods_by_ip.get(&ip).map_or(&[], Vec::as_slice)
    }

    /// The node with this address.
    pub fn node_by_ip(&self, ip: IpAddr) -> Option<NodeId> {
        self.node_by_ip.get(&ip).copied()
    }

    /// The Service owning this ClusterIP (or external / load balancer IP).
    pub fn service_by_ip(&self, ip: IpAddr) -> Option<ServiceId> {
        self.service_by_ip.get(&ip).copied()
    }

    /// The Service `namespace/name`.
    pub fn service_by_name(&self, namespace: &str, name: &str) -> Option<ServiceId> {
        self.services
            .binary_search_by(|s| (s.namespace.as_str(), s.name.as_str()).cmp(&(namespace, name)))
            .ok()
    }

    /// The workload of a pod.
    pub fn workload_of(&self, pod: PodId) -> Option<WorkloadId> {
        self.pod_workload.get(pod).copied()
    }

    /// The pods of a workload.
    pub fn workload_pods(&self, w: WorkloadId) -> &[PodId] {
        self.workload_pods.get(w).map_or(&[], Vec::as_slice)
    }

    /// Labels of a namespace (at least `kubernetes.io/metadata.name`).
    pub fn namespace_labels(&self, ns: &str) -> Labels {
        self.namespaces.get(ns).map_or_else(
            || Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), ns.to_owned())]),
            |n| n.labels.clone(),
        )
    }

    /// The EndpointSlices of a Service.
    pub fn endpoint_slices(&self, namespace: &str, service: &str) -> &[SliceInfo] {
        self.slices
            .get(&(namespace.to_owned(), service.to_owned()))
            .map_or(&[], Vec::as_slice)
    }

    /// Resolves a connection to `ip:port/proto` through a Service, as kube-proxy's DNAT would:
    /// EndpointSlices when the Service has any, else its selector, with named target ports
    /// resolved on each backend pod for the flow's protocol.
    pub fn resolve_service(&self, ip: IpAddr, port: u16, proto: Protocol) -> ServiceLookup {
        let (sid, sp) = if let Some(sid) = self.service_by_ip(ip) {
            let svc = &self.services[sid];
            match svc
                .ports
                .iter()
                .find(|p| p.port == port && p.protocol == proto)
            {
                Some(sp) => (sid, sp),
                None => return ServiceLookup::NoSuchPort(sid),
            }
        } else if let Some(&(sid, idx)) = self.node_ports.get(&(port, proto))
            && (self.node_by_ip(ip).is_some() || !self.host_pods_by_ip(ip).is_empty())
        {
            // A NodePort reached from inside the cluster is DNATed like the ClusterIP.
            (sid, &self.services[sid].ports[idx])
        } else {
            return ServiceLookup::NotService;
        };
        let svc = &self.services[sid];
        let family_ok = |a: &IpAddr| a.is_ipv4() == ip.is_ipv4();
        let slices = self.endpoint_slices(&svc.namespace, &svc.name);
        let mut ready = Vec::new();
        let mut all = Vec::new();
        if !slices.is_empty() {
            for s in slices {
                let Some(slp) = s
                    .ports
                    .iter()
                    .find(|p| p.name == sp.name && p.protocol == proto)
                else {
                    continue;
                };
                for e in &s.endpoints {
                    for a in e.addresses.iter().filter(|a| family_ok(a)) {
                        let pod = e
                            .pod
                            .as_ref()
                            .and_then(|n| self.pod_by_name(&svc.namespace, n))
                            .or_else(|| self.pod_by_ip(*a));
                        let b = Backend {
                            ip: *a,
                            port: slp.port,
                            pod,
                        };
                        if e.ready {
                            ready.push(b.clone());
                        }
                        all.push(b);
                    }
                }
            }
        } else if let Some(sel) = &svc.selector {
            for p in self.pods_in_namespace(&svc.namespace) {
                let pod = &self.pods[p];
                if pod.terminated || !sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
                    continue;
                }
                let target = match &sp.target_port {
                    TargetPort::Number(n) => Some(*n),
                    TargetPort::Name(name) => pod
                        .ports
                        .iter()
                        .find(|c| c.name.as_deref() == Some(name) && c.protocol == proto)
                        .map(|c| c.port),
                };
                let Some(target) = target else { continue };
                for a in pod.ips.iter().filter(|a| family_ok(a)) {
                    ready.push(Backend {
                        ip: *a,
                        port: target,
                        pod: Some(p),
                    });
                }
            }
        }
        let mut backends = if ready.is_empty() { all } else { ready };
        backends.sort();
        backends.dedup();
        ServiceLookup::Resolved {
            service: sid,
            port: sp.clone(),
            backends,
        }
    }

    /// The target port of Service `sid` for the given Service port and protocol, resolved to
    /// numbers over its backends (several when named ports differ between pods).
    pub fn service_target_ports(&self, sid: ServiceId, port: u16, proto: Protocol) -> Vec<u16> {
        let Some(svc) = self.services.get(sid) else {
            return Vec::new();
        };
        let Some(ip) = svc.cluster_ips.first().or(svc.external_ips.first()) else {
            return Vec::new();
        };
        match self.resolve_service(*ip, port, proto) {
            ServiceLookup::Resolved { backends, .. } => {
                let set: BTreeSet<u16> = backends.iter().map(|b| b.port).collect();
                set.into_iter().collect()
            }
            _ => Vec::new(),
        }
    }

    /// Address ranges a recommendation must not open unless observed: the cluster's pod CIDRs
    /// (node `podCIDRs`, else the hull of pod IPs), the Service range (hull of ClusterIPs),
    /// cloud metadata, loopback and IPv6 unique-local space. Sorted, deduplicated.
    pub fn protected_ranges(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = ["169.254.169.254/32", "127.0.0.0/8", "::1/128", "fc00::/7"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let node_cidrs: Vec<IpNet> = self
            .nodes
            .iter()
            .flat_map(|n| n.pod_cidrs.clone())
            .collect();
        let pod_ips = self
            .pods
            .iter()
            .filter(|p| !p.host_network)
            .flat_map(|p| p.ips.iter().copied());
        for v4 in [true, false] {
            let fam: Vec<IpNet> = node_cidrs
                .iter()
                .filter(|n| matches!(n, IpNet::V4(_)) == v4)
                .copied()
                .collect();
            if fam.is_empty() {
                out.extend(hull(pod_ips.clone().filter(|a| a.is_ipv4() == v4)));
            } else {
                out.extend(fam);
            }
            out.extend(hull(
                self.services
                    .iter()
                    .flat_map(|s| s.cluster_ips.iter().copied())
                    .filter(|a| a.is_ipv4() == v4),
            ));
        }
        out.sort();
        out.dedup();
        IpNet::aggregate(&out)
    }
}

/// The smallest prefix containing every address (all of one family); `None` when empty.
pub fn hull(addrs: impl Iterator<Item = IpAddr>) -> Option<IpNet> {
    let mut lo: Option<IpAddr> = None;
    let mut hi: Option<IpAddr> = None;
    for a in addrs {
        lo = Some(lo.map_or(a, |l| l.min(a)));
        hi = Some(hi.map_or(a, |h| h.max(a)));
    }
    match (lo?, hi?) {
        (IpAddr::V4(l), IpAddr::V4(h)) => {
            let diff = u32::from(l) ^ u32::from(h);
            let len = u8::try_from(diff.leading_zeros()).unwrap_or(32);
            ipnet::Ipv4Net::new(l, len)
                .ok()
                .map(|n| IpNet::V4(n.trunc()))
        }
        (IpAddr::V6(l), IpAddr::V6(h)) => {
            let diff = u128::from(l) ^ u128::from(h);
            let len = u8::try_from(diff.leading_zeros()).unwrap_or(128);
            ipnet::Ipv6Net::new(l, len)
                .ok()
                .map(|n| IpNet::V6(n.trunc()))
        }
        _ => None,
    }
}

type ControllerIndex<'a> = HashMap<(&'a str, &'a str, &'a str), &'a ControllerInfo>;

/// Follows the owner chain Pod → ReplicaSet → Deployment, Job → CronJob (StatefulSet and
/// DaemonSet own pods directly). Returns (namespace, kind, name, controller selector).
fn resolve_owner(
    p: &PodInfo,
    by_key: &ControllerIndex<'_>,
) -> (String, String, String, Option<Selector>) {
    let ns = p.namespace.clone();
    let Some(owner) = &p.owner else {
        return (ns, "Pod".to_owned(), p.name.clone(), None);
    };
    let lookup = |kind: &str, name: &str| by_key.get(&(p.namespace.as_str(), kind, name)).copied();
    let selector_of = |c: &ControllerInfo| {
        let s = match &c.selector {
            Some(s) => s.without_unstable(),
            None => Selector::labels(stable_labels(&c.template_labels)),
        };
        (!s.is_empty()).then_some(s)
    };
    let mut kind = owner.kind.clone();
    let mut name = owner.name.clone();
    let mut ctrl = lookup(&kind, &name);
    // Climb one level: ReplicaSet → Deployment, Job → CronJob.
    if let Some(parent) = ctrl.and_then(|c| c.owner.clone()) {
        if matches!(
            (kind.as_str(), parent.kind.as_str()),
            ("ReplicaSet", "Deployment") | ("Job", "CronJob")
        ) {
            ctrl = lookup(&parent.kind, &parent.name);
            kind = parent.kind;
            name = parent.name;
        }
    } else if ctrl.is_none() && kind == "ReplicaSet" {
        // The ReplicaSet is not in the snapshot: `<deployment>-<pod-template-hash>` is the
        // Deployment controller's naming scheme.
        if let Some(hash) = p.labels.get("pod-template-hash")
            && let Some(dep) = name
                .strip_suffix(hash.as_str())
                .and_then(|s| s.strip_suffix('-'))
        {
            kind = "Deployment".to_owned();
            name = dep.to_owned();
        }
    }
    let selector = ctrl.and_then(selector_of);
    (ns, kind, name, selector)
}

impl Cluster {
    /// Builds the model from the parsed Kubernetes objects of a snapshot.
    #[expect(
        clippy::too_many_arguments,
        reason = "one slice per object kind of a snapshot"
    )]
    pub fn from_objects(
        namespaces: &[core::Namespace],
        nodes: &[core::Node],
        pods: &[core::Pod],
        services: &[core::Service],
        slices: &[discovery::EndpointSlice],
        replica_sets: &[apps::ReplicaSet],
        deployments: &[apps::Deployment],
        stateful_sets: &[apps::StatefulSet],
        daemon_sets: &[apps::DaemonSet],
        jobs: &[batch::Job],
        cron_jobs: &[batch::CronJob],
    ) -> Result<Self> {
        let mut inv = Inventory::default();
        namespaces.iter().try_for_each(|o| inv.add_namespace(o))?;
        nodes.iter().try_for_each(|o| inv.add_node(o))?;
        pods.iter().try_for_each(|o| inv.add_pod(o))?;
        services.iter().try_for_each(|o| inv.add_service(o))?;
        slices.iter().try_for_each(|o| inv.add_endpoint_slice(o))?;
        replica_sets
            .iter()
            .try_for_each(|o| inv.add_replica_set(o))?;
        deployments.iter().try_for_each(|o| inv.add_deployment(o))?;
        stateful_sets
            .iter()
            .try_for_each(|o| inv.add_stateful_set(o))?;
        daemon_sets.iter().try_for_each(|o| inv.add_daemon_set(o))?;
        jobs.iter().try_for_each(|o| inv.add_job(o))?;
        cron_jobs.iter().try_for_each(|o| inv.add_cron_job(o))?;
        Ok(Self::new(inv))
    }
}

impl Cluster {
    /// Loads a snapshot file (a Kubernetes `List` or a multi-document stream, YAML or JSON).
    pub fn load(path: &Path) -> std::result::Result<Self, LoadError> {
        let snap = leash_records::snapshot::load_path(path)?;
        Self::from_snapshot(&snap).map_err(|source| LoadError::Model {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Builds the model from a parsed snapshot.
    pub fn from_snapshot(s: &leash_records::Snapshot) -> Result<Self> {
        Self::from_objects(
            &s.namespaces,
            &s.nodes,
            &s.pods,
            &s.services,
            &s.endpoint_slices,
            &s.replica_sets,
            &s.deployments,
            &s.stateful_sets,
            &s.daemon_sets,
            &s.jobs,
            &s.cron_jobs,
        )
    }
}

/// Errors loading a snapshot file into a [`Cluster`].
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is unreadable or not a valid snapshot.
    #[error(transparent)]
    Snapshot(#[from] leash_records::SnapshotError),
    /// An object in the snapshot holds an invalid value.
    #[error("{}: {source}", path.display())]
    Model {
        /// The snapshot file.
        path: std::path::PathBuf,
        /// What is wrong.
        source: Error,
    },
}
