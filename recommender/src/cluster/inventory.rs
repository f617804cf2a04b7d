//! The inventory: the flat, validated facts leash reads from Kubernetes objects, each input
//! error naming the object at fault.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::batch::v1 as batch;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
pub use leash_records::Protocol;

use super::selector::{LabelSelector, Labels, NAMESPACE_NAME_LABEL};

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
    /// A label selector the API server would reject (unknown operator, bad key or value).
    #[error("{object}: {message}")]
    InvalidSelector {
        /// The object, as `kind namespace/name`.
        object: String,
        /// What is wrong, naming the field.
        message: String,
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

/// Parses the Kubernetes spelling of a protocol (exactly `TCP`, `UDP` or `SCTP`).
pub fn parse_k8s_protocol(s: &str) -> Option<Protocol> {
    match s {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

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
    /// Its labels (ClusterNetworkPolicy's `nodes` peers select by them).
    pub labels: Labels,
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
    /// Phase Running, or no phase stated. A pod that is not (Pending, Unknown) is not a ready
    /// backend of the Services selecting it.
    pub running: bool,
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
    pub selector: Option<LabelSelector>,
    /// The pod template's labels.
    pub template_labels: Labels,
}

/// The flat, validated facts a [`Cluster`](super::Cluster) is indexed from.
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
            labels: node
                .metadata
                .labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
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
            running: matches!(phase, None | Some("Running")),
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
            .map(|s| {
                LabelSelector::parse(s, "spec.selector")
                    .map(LabelSelector::canonical)
                    .map_err(|message| Error::InvalidSelector {
                        object: object.clone(),
                        message,
                    })
            })
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
