//! The cluster model answers the evaluator's questions from its indexes.
//!
//! This is the evaluator's side of the edge: the model ([`crate::cluster`]) knows nothing of the
//! evaluator, which reaches it only through [`ClusterView`] and [`PodView`].

use std::{collections::BTreeMap, net::IpAddr};

use leash_records::Protocol;

use super::{BackendView, ClusterView, PodView, PolicyId, ServiceRoute};
use crate::cluster::{Cluster, PodInfo};

impl PodView for PodInfo {
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
impl ClusterView for Cluster {
    type Pod = PodInfo;

    fn pod(&self, namespace: &str, name: &str) -> Option<&Self::Pod> {
        self.pod_by_name(namespace, name)
            .and_then(|id| self.pods.get(id))
    }

    fn pod_by_uid(&self, uid: &str) -> Option<&Self::Pod> {
        Cluster::pod_by_uid(self, uid).and_then(|id| self.pods.get(id))
    }

    fn pod_by_ip(&self, ip: IpAddr) -> Option<&Self::Pod> {
        Cluster::pod_by_ip(self, ip).and_then(|id| self.pods.get(id))
    }

    fn namespace_labels(&self, namespace: &str) -> Option<&BTreeMap<String, String>> {
        self.namespaces.get(namespace).map(|n| &n.labels)
    }

    fn node_labels(&self, ip: IpAddr) -> Option<&BTreeMap<String, String>> {
        self.node_by_ip(ip)
            .and_then(|n| self.nodes.get(n))
            .map(|n| &n.labels)
    }

    fn pod_workload(&self, pod: &Self::Pod) -> Option<(&str, &str)> {
        let w = self
            .pod_by_name(&pod.namespace, &pod.name)
            .and_then(|id| self.workload_of(id))
            .and_then(|w| self.workloads.get(w))?;
        Some((&w.kind, &w.name))
    }

    fn service(&self, ip: IpAddr, port: u16, protocol: Protocol) -> ServiceRoute<'_, Self::Pod> {
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
            L::NotService => ServiceRoute::NotAService,
            L::NoSuchPort(sid) => ServiceRoute::NoSuchPort { service: id(sid) },
            L::Resolved {
                service, backends, ..
            } => ServiceRoute::Backends {
                service: id(service),
                backends: backends
                    .iter()
                    .map(|b| BackendView {
                        pod: b.pod.and_then(|p| self.pods.get(p)),
                        ip: b.ip,
                        port: b.port,
                    })
                    .collect(),
            },
        }
    }
}
