//! The indexed model: a [`Cluster`] indexes an [`Inventory`] for the lookups classification,
//! recommendation and evaluation make.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use super::inventory::{
    Inventory, NamespaceInfo, NodeInfo, PodInfo, Protocol, ServiceInfo, SliceInfo,
};
use super::selector::{Labels, NAMESPACE_NAME_LABEL};
use super::workload::Workload;

/// Index of a pod in [`Cluster::pods`].
pub type PodId = usize;
/// Index of a workload in [`Cluster::workloads`].
pub type WorkloadId = usize;
/// Index of a Service in [`Cluster::services`].
pub type ServiceId = usize;
/// Index of a node in [`Cluster::nodes`].
pub type NodeId = usize;

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
    pub(super) slices: BTreeMap<(String, String), Vec<SliceInfo>>,
    pub(super) pod_by_uid: HashMap<String, PodId>,
    pub(super) pod_by_ip: HashMap<IpAddr, PodId>,
    pub(super) host_pods_by_ip: HashMap<IpAddr, Vec<PodId>>,
    pub(super) node_by_ip: HashMap<IpAddr, NodeId>,
    pub(super) service_by_ip: HashMap<IpAddr, ServiceId>,
    /// (nodePort, protocol) → (Service, index of its port).
    pub(super) node_ports: HashMap<(u16, Protocol), (ServiceId, usize)>,
    pub(super) workload_pods: Vec<Vec<PodId>>,
    pub(super) node_local_dns: bool,
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

    /// The address ranges the cluster itself uses, which a recommendation must not open unless
    /// observed: the pod CIDRs (node `podCIDRs`, else the hull of pod IPs) and the Service range
    /// (hull of ClusterIPs). Aggregated and sorted. Ranges protected in every cluster (cloud
    /// metadata, loopback) are `crate::cidr::builtin_protected`'s.
    pub fn pod_and_service_ranges(&self) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = Vec::new();
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
