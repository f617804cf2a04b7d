//! What the evaluator needs to know about the cluster, as traits.
//!
//! The evaluator only asks questions (which pod has this IP, what are this namespace's labels,
//! where does this ClusterIP lead), so any cluster model can answer them with a few lines; the
//! cluster model's answers are in `cluster_view`.

use std::{collections::BTreeMap, net::IpAddr};

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
pub struct BackendView<'a, P> {
    /// The backend pod, when the endpoint is a known pod (it may be a hostNetwork pod).
    /// `None` for endpoints that are not pods, such as the API server behind `kubernetes`.
    pub pod: Option<&'a P>,
    /// The endpoint address the connection is DNATed to.
    pub ip: IpAddr,
    /// The resolved targetPort on that endpoint.
    pub port: u16,
}

impl<P> Clone for BackendView<'_, P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for BackendView<'_, P> {}

/// Where a destination address and port lead, Service-wise.
#[derive(Debug, Clone)]
pub enum ServiceRoute<'a, P> {
    /// The address is not a Service address: evaluate it as it is.
    NotAService,
    /// A Service listens here; these are its backends (possibly none).
    Backends {
        /// The Service, as `namespace/name`.
        service: PolicyId,
        /// Its backends for this port and protocol: the ready ones, or the not-ready ones when
        /// none is ready.
        backends: Vec<BackendView<'a, P>>,
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
    fn service(&self, ip: IpAddr, port: u16, protocol: Protocol) -> ServiceRoute<'_, Self::Pod>;

    /// The labels of the Node that has this address (in `status.addresses`); `None` when no
    /// Node does, or the view knows no Nodes.
    fn node_labels(&self, _ip: IpAddr) -> Option<&BTreeMap<String, String>> {
        None
    }

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
