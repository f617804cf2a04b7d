//! A Service and an external host of a running lab.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::spec::{Port, ServicePort};

/// A Service of a running lab.
#[derive(Clone, Debug)]
pub struct Service {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) cluster_ip: Ipv4Addr,
    pub(crate) cluster_ip_v6: Ipv6Addr,
    pub(crate) ports: Vec<ServicePort>,
    pub(crate) selector: BTreeMap<String, String>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) uid: String,
    /// Indices into the lab's pods.
    pub(crate) backends: Vec<usize>,
    /// Endpoints given by address (Services without selector).
    pub(crate) manual_endpoints: Vec<IpAddr>,
}

impl Service {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The IPv4 ClusterIP.
    pub fn cluster_ip(&self) -> Ipv4Addr {
        self.cluster_ip
    }

    /// The IPv6 ClusterIP.
    pub fn cluster_ip_v6(&self) -> Ipv6Addr {
        self.cluster_ip_v6
    }

    /// The ports.
    pub fn ports(&self) -> &[ServicePort] {
        &self.ports
    }

    /// The Service's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Service's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// An external host (in the lab's "external" namespace, routed via the node).
#[derive(Clone, Debug)]
pub struct External {
    /// Its address.
    pub ip: IpAddr,
    /// Its served ports.
    pub ports: Vec<Port>,
}
