//! What the evaluator needs to know about the cluster, as a trait, plus a small in-memory
//! implementation over plain `k8s-openapi` objects.
//!
//! The evaluator only asks questions (which pod has this IP, what are this namespace's labels,
//! where does this ClusterIP lead), so any cluster model can answer them with a few lines.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
};

use ipnet::IpNet;
use k8s_openapi::{
    api::{
        core::v1::{Namespace, Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use leash_records::{PodRef, Protocol};

use super::PolicyId;

/// What the evaluator needs to know about a pod.
pub trait PodView {
    /// Its namespace.
    fn namespace(&self) -> &str;
    /// Its name.
    fn name(&self) -> &str;
    /// Its labels.
    fn labels(&self) -> &BTreeMap<String, String>;
    /// Its IPs; for a hostNetwork pod, its node's.
    fn ips(&self) -> Vec<IpAddr>;
    /// Whether it runs in the host's network namespace.
    fn host_network(&self) -> bool;
    /// The node it runs on, when scheduled.
    fn node(&self) -> Option<&str>;
    /// Resolves a named container port: name and protocol must both match.
    fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16>;
}

/// One backend of a Service after kube-proxy's DNAT.
#[derive(Debug)]
pub struct Backend<'a, P> {
    /// The backend pod, when the endpoint is a known pod (it may be a hostNetwork pod).
    /// `None` for endpoints that are not pods, such as the API server behind `kubernetes`.
    pub pod: Option<&'a P>,
    /// The endpoint address the connection is DNATed to.
    pub ip: IpAddr,
    /// The resolved targetPort on that endpoint.
    pub port: u16,
}

impl<P> Clone for Backend<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for Backend<'_, P> {}

/// Where a destination address and port lead, Service-wise.
#[derive(Debug, Clone)]
pub enum ServiceLookup<'a, P> {
    /// The address is not a Service address: evaluate it as it is.
    NotAService,
    /// A Service listens here; these are its ready backends (possibly none).
    Backends {
        /// The Service, as `namespace/name`.
        service: PolicyId,
        /// Its ready backends for this port and protocol.
        backends: Vec<Backend<'a, P>>,
    },
    /// The address belongs to a Service that exposes no such port and protocol.
    NoSuchPort {
        /// The Service, as `namespace/name`.
        service: PolicyId,
    },
    /// The address is inside the cluster's Service range, but no Service owns it.
    UnknownServiceAddress,
}

/// The questions the evaluator asks about the cluster.
pub trait ClusterView {
    /// The cluster's pod type.
    type Pod: PodView;
    /// The pod `namespace/name`.
    fn pod(&self, namespace: &str, name: &str) -> Option<&Self::Pod>;
    /// The pod with this `metadata.uid`.
    fn pod_by_uid(&self, uid: &str) -> Option<&Self::Pod>;
    /// The pod-network (not hostNetwork) pod that owns this IP, in any of its `podIPs`.
    fn pod_by_ip(&self, ip: IpAddr) -> Option<&Self::Pod>;
    /// A namespace's labels; `None` when the namespace is unknown.
    fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>>;
    /// Where a connection to `ip:port/protocol` goes when `ip` may be a Service address.
    fn service(&self, ip: IpAddr, port: u16, protocol: Protocol) -> ServiceLookup<'_, Self::Pod>;

    /// The workload running a pod, `(kind, name)`; `None` when the pod is its own (a bare
    /// pod, or a view without owners).
    fn pod_workload(&self, _pod: &Self::Pod) -> Option<(&str, &str)> {
        None
    }

    /// Resolves a record's pod: by uid when it has one, else by namespace and name.
    fn pod_by_ref(&self, pod: &PodRef) -> Option<&Self::Pod> {
        if !pod.uid.is_empty()
            && let Some(p) = self.pod_by_uid(&pod.uid)
        {
            return Some(p);
        }
        self.pod(&pod.namespace, &pod.name)
    }
}

impl PodView for Pod {
    fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    fn labels(&self) -> &BTreeMap<String, String> {
        pod_labels(self)
    }

    fn ips(&self) -> Vec<IpAddr> {
        let ips = pod_ips(self);
        if ips.is_empty() && is_host_network(self) {
            return host_ips(self);
        }
        ips
    }

    fn host_network(&self) -> bool {
        is_host_network(self)
    }

    fn node(&self) -> Option<&str> {
        self.spec.as_ref().and_then(|s| s.node_name.as_deref())
    }

    fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        resolve_named_port(self, name, protocol)
    }
}

/// Whether a pod runs in the host's network namespace.
pub fn is_host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// A pod's labels (empty when it has none).
pub fn pod_labels(pod: &Pod) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    pod.metadata.labels.as_ref().unwrap_or(&EMPTY)
}

/// A pod's IPs from `status.podIPs`, or `status.podIP` when the list is absent. Unparseable
/// entries are skipped: they can never be the address of a flow.
pub fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_deref().and_then(|s| s.parse().ok())
    {
        ips.push(ip);
    }
    ips
}

/// The node IPs a pod runs on, from `status.hostIPs` or `status.hostIP`.
pub fn host_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .host_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.host_ip.as_deref().and_then(|s| s.parse().ok())
    {
        ips.push(ip);
    }
    ips
}

/// Resolves a named port on a pod's containers (and restartable init containers, i.e.
/// sidecars): the name and the protocol must both match.
pub fn resolve_named_port(pod: &Pod, name: &str, protocol: Protocol) -> Option<u16> {
    let spec = pod.spec.as_ref()?;
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    spec.containers
        .iter()
        .chain(sidecars)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| {
            p.name.as_deref() == Some(name)
                && p.protocol.as_deref().unwrap_or("TCP") == protocol.as_str()
        })
        .and_then(|p| u16::try_from(p.container_port).ok())
}

fn same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// A plain in-memory [`ClusterView`] over `k8s-openapi` objects, with the indexes the
/// evaluator needs. Used by tests and usable by any caller that has the raw objects.
#[derive(Debug, Default)]
pub struct StaticCluster {
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pods: Vec<Pod>,
    services: Vec<Service>,
    endpoint_slices: Vec<EndpointSlice>,
    service_cidrs: Vec<IpNet>,
    by_name: HashMap<(String, String), usize>,
    by_uid: HashMap<String, usize>,
    by_ip: HashMap<IpAddr, usize>,
}

impl StaticCluster {
    /// Indexes the objects. Namespaces always carry `kubernetes.io/metadata.name`, as the API
    /// server guarantees; it is added when a snapshot lacks it.
    pub fn new(
        namespaces: Vec<Namespace>,
        pods: Vec<Pod>,
        services: Vec<Service>,
        endpoint_slices: Vec<EndpointSlice>,
    ) -> Self {
        let mut ns_labels = BTreeMap::new();
        for ns in namespaces {
            let Some(name) = ns.metadata.name.clone() else {
                continue;
            };
            let mut labels = ns.metadata.labels.unwrap_or_default();
            labels
                .entry("kubernetes.io/metadata.name".to_string())
                .or_insert_with(|| name.clone());
            ns_labels.insert(name, labels);
        }
        let mut c = StaticCluster {
            namespaces: ns_labels,
            pods,
            services,
            endpoint_slices,
            ..Default::default()
        };
        for (i, p) in c.pods.iter().enumerate() {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            let name = p.metadata.name.clone().unwrap_or_default();
            c.by_name.insert((ns, name), i);
            if let Some(uid) = &p.metadata.uid {
                c.by_uid.insert(uid.clone(), i);
            }
            if !is_host_network(p) {
                for ip in pod_ips(p) {
                    c.by_ip.insert(ip, i);
                }
            }
        }
        c
    }

    /// Declares the cluster's Service CIDRs, so that an address inside them that no Service
    /// owns is reported as such instead of being treated as an external address.
    pub fn with_service_cidrs(mut self, cidrs: Vec<IpNet>) -> Self {
        self.service_cidrs = cidrs;
        self
    }

    fn backends_from_slices<'a>(
        &'a self,
        svc_ns: &str,
        svc_name: &str,
        port_name: &str,
        protocol: Protocol,
        family_of: IpAddr,
    ) -> Option<Vec<Backend<'a, Pod>>> {
        let slices: Vec<&EndpointSlice> = self
            .endpoint_slices
            .iter()
            .filter(|s| {
                s.metadata.namespace.as_deref() == Some(svc_ns)
                    && s.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("kubernetes.io/service-name"))
                        .map(String::as_str)
                        == Some(svc_name)
            })
            .collect();
        if slices.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        for slice in slices {
            let Some(port) = slice.ports.iter().flatten().find(|p| {
                p.name.as_deref().unwrap_or("") == port_name
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol.as_str()
            }) else {
                continue;
            };
            let Some(port) = port.port.and_then(|p| u16::try_from(p).ok()) else {
                continue;
            };
            for ep in slice.endpoints.iter().flatten() {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                // Addresses of one endpoint are fungible: kube-proxy uses the first.
                let Some(ip) = ep.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else {
                    continue;
                };
                if !ready || !same_family(ip, family_of) {
                    continue;
                }
                let pod = ep
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        let ns = r.namespace.as_deref().unwrap_or(svc_ns);
                        self.pod(ns, r.name.as_deref()?)
                    })
                    .or_else(|| self.pod_by_ip(ip));
                out.push(Backend { pod, ip, port });
            }
        }
        Some(out)
    }

    fn backends_from_selector<'a>(
        &'a self,
        svc: &Service,
        target: &IntOrString,
        protocol: Protocol,
        family_of: IpAddr,
    ) -> Vec<Backend<'a, Pod>> {
        let ns = svc.metadata.namespace.as_deref().unwrap_or("");
        let Some(selector) = svc.spec.as_ref().and_then(|s| s.selector.as_ref()) else {
            return Vec::new();
        };
        if selector.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for pod in &self.pods {
            let labels = pod_labels(pod);
            let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if pod.metadata.namespace.as_deref() != Some(ns)
                || !running
                || !selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            {
                continue;
            }
            let port = match target {
                IntOrString::Int(n) => u16::try_from(*n).ok(),
                IntOrString::String(name) => resolve_named_port(pod, name, protocol),
            };
            let Some(port) = port else { continue };
            let ips = if is_host_network(pod) {
                host_ips(pod)
            } else {
                pod_ips(pod)
            };
            if let Some(ip) = ips.into_iter().find(|ip| same_family(*ip, family_of)) {
                out.push(Backend {
                    pod: Some(pod),
                    ip,
                    port,
                });
            }
        }
        out
    }
}

impl ClusterView for StaticCluster {
    type Pod = Pod;

    fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.by_name
            .get(&(namespace.to_string(), name.to_string()))
            .map(|&i| &self.pods[i])
    }

    fn pod_by_uid(&self, uid: &str) -> Option<&Pod> {
        self.by_uid.get(uid).map(|&i| &self.pods[i])
    }

    fn pod_by_ip(&self, ip: IpAddr) -> Option<&Pod> {
        self.by_ip.get(&ip).map(|&i| &self.pods[i])
    }

    fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(namespace)
    }

    fn service(&self, ip: IpAddr, port: u16, protocol: Protocol) -> ServiceLookup<'_, Pod> {
        let owner = self.services.iter().find(|s| {
            let Some(spec) = &s.spec else { return false };
            if spec.type_.as_deref() == Some("ExternalName") {
                return false;
            }
            spec.cluster_ips
                .iter()
                .flatten()
                .chain(spec.cluster_ip.iter())
                .any(|a| a.parse::<IpAddr>().ok() == Some(ip))
        });
        let Some(svc) = owner else {
            return if self.service_cidrs.iter().any(|c| c.contains(&ip)) {
                ServiceLookup::UnknownServiceAddress
            } else {
                ServiceLookup::NotAService
            };
        };
        let id = PolicyId {
            namespace: svc.metadata.namespace.clone().unwrap_or_default(),
            name: svc.metadata.name.clone().unwrap_or_default(),
        };
        let sp = svc.spec.as_ref().and_then(|s| {
            s.ports.iter().flatten().find(|p| {
                i32::from(port) == p.port
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol.as_str()
            })
        });
        let Some(sp) = sp else {
            return ServiceLookup::NoSuchPort { service: id };
        };
        let port_name = sp.name.as_deref().unwrap_or("");
        let backends =
            match self.backends_from_slices(&id.namespace, &id.name, port_name, protocol, ip) {
                Some(b) => b,
                None => {
                    let target = sp.target_port.clone().unwrap_or(IntOrString::Int(sp.port));
                    self.backends_from_selector(svc, &target, protocol, ip)
                }
            };
        ServiceLookup::Backends {
            service: id,
            backends,
        }
    }
}

impl PodView for crate::cluster::PodInfo {
    fn namespace(&self) -> &str {
        &self.namespace
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    fn ips(&self) -> Vec<IpAddr> {
        self.ips.clone()
    }

    fn host_network(&self) -> bool {
        self.host_network
    }

    fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// The cluster model answers the evaluator's questions from its indexes.
impl ClusterView for crate::cluster::Cluster {
    type Pod = crate::cluster::PodInfo;

    fn pod(&self, namespace: &str, name: &str) -> Option<&Self::Pod> {
        self.pod_by_name(namespace, name)
            .and_then(|id| self.pods.get(id))
    }

    fn pod_by_uid(&self, uid: &str) -> Option<&Self::Pod> {
        crate::cluster::Cluster::pod_by_uid(self, uid).and_then(|id| self.pods.get(id))
    }

    fn pod_by_ip(&self, ip: IpAddr) -> Option<&Self::Pod> {
        crate::cluster::Cluster::pod_by_ip(self, ip).and_then(|id| self.pods.get(id))
    }

    fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(namespace).map(|n| &n.labels)
    }

    fn pod_workload(&self, pod: &Self::Pod) -> Option<(&str, &str)> {
        let w = self
            .pod_by_name(&pod.namespace, &pod.name)
            .and_then(|id| self.workload_of(id))
            .and_then(|w| self.workloads.get(w))?;
        Some((&w.kind, &w.name))
    }

    fn service(&self, ip: IpAddr, port: u16, protocol: Protocol) -> ServiceLookup<'_, Self::Pod> {
        use crate::cluster::ServiceLookup as L;
        let id = |sid: usize| {
            self.services.get(sid).map_or_else(
                || PolicyId {
                    namespace: String::new(),
                    name: format!("service#{sid}"),
                },
                |s| PolicyId {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                },
            )
        };
        match self.resolve_service(ip, port, protocol) {
            L::NotService => ServiceLookup::NotAService,
            L::NoSuchPort(sid) => ServiceLookup::NoSuchPort { service: id(sid) },
            L::Resolved {
                service, backends, ..
            } => ServiceLookup::Backends {
                service: id(service),
                backends: backends
                    .iter()
                    .map(|b| Backend {
                        pod: b.pod.and_then(|p| self.pods.get(p)),
                        ip: b.ip,
                        port: b.port,
                    })
                    .collect(),
            },
        }
    }
}
