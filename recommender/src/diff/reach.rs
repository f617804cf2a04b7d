// STUB: replaced by the reach branch
//! The exact reachability change between two policy states (the symbolic engine).

use std::net::IpAddr;

use serde::Serialize;

/// Who a reachability change is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Source {
    /// All pods of a workload: `"Kind/name"`, or `"Pod/<name>"` for a bare pod.
    Workload {
        /// The namespace.
        namespace: String,
        /// `Kind/name`.
        workload: String,
    },
    /// One pod of a workload whose pods change differently.
    Pod {
        /// The namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
    },
}

/// What a source reaches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Target {
    /// The pods of a workload.
    Workload {
        /// The namespace.
        namespace: String,
        /// `Kind/name`.
        workload: String,
    },
    /// One pod.
    Pod {
        /// The namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
    },
    /// Addresses that are no pod's, from `first` to `last` inclusive.
    Range {
        /// The first address.
        first: IpAddr,
        /// The last address.
        last: IpAddr,
    },
}

/// How a verdict changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Change {
    /// Denied under `from`, allowed under `to`.
    NewlyAllowed,
    /// Allowed under `from`, denied under `to`.
    NewlyDenied,
}

/// One destination, protocol and port range whose verdict changes for one source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ReachChange {
    /// Who connects.
    pub source: Source,
    /// How the verdict changes.
    pub change: Change,
    /// The protocol.
    pub protocol: leash_records::Protocol,
    /// The first port of the range.
    pub port_from: u16,
    /// The last port of the range.
    pub port_to: u16,
    /// What is reached.
    pub destination: Target,
}

/// Every reachability change from `from` to `to`, sorted.
pub fn reachability(
    _cluster: &crate::cluster::Cluster,
    _from: &crate::eval::PolicySet,
    _to: &crate::eval::PolicySet,
) -> Vec<ReachChange> {
    Vec::new()
}
