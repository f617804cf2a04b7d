//! The egress map: the workload-level graph the web UI of `leash serve` reads through `/v1`,
//! and its cheap views. Pure: it takes the cluster model, the observations and the policy
//! sets as values and does no I/O.
//!
//! [`build`] computes the whole [`Map`] once (serve caches it and rebuilds it after commits);
//! the views ([`Map::overview`], [`Map::namespace`], [`Map::workload`]) only read it.
//!
//! # Nodes
//!
//! Sources are workloads (`wl:<namespace>/<Kind>/<name>`). Destinations, after
//! classification ([`crate::classify::Classifier`], after DNAT):
//!
//! - another workload, in any namespace: a pod's workload, or a Service's when all its
//!   backends are the pods of one workload (the edge names the Service);
//! - `svc:<namespace>/<name>`: a Service whose backends span several workloads or are not
//!   pods, or that has no backend;
//! - `dns`: the DNS resolvers (a DNS Service, resolver pods or NodeLocal addresses);
//! - `api-server`: the API server (`default/kubernetes` or one of its endpoints dialed
//!   directly);
//! - `nodes`: node addresses and hostNetwork pods;
//! - `ext:<name>`: external addresses grouped by DNS name. The name is the smallest query
//!   name whose answer gave the source's pods that address (the name's address history),
//!   else the smallest name the address was reached by;
//! - `cidr:<net>`: external addresses without a name, grouped by their /24 (IPv4) or /64
//!   (IPv6), so that one tenant's churning nameless addresses stay one node. Each node lists
//!   its exact addresses.
//!
//! Loopback and port 0 never leave a pod or cannot be written in a policy: they are not edges.
//!
//! # Edges
//!
//! One edge per (source workload, destination node), with the ports it used; the evidence
//! (events, first and last seen, names, pods, TCP outcome) is folded over its rows, one per
//! (address as dialed, port, protocol), which [`Map::workload`] lists. Verdicts come from
//! the one evaluator ([`crate::eval::evaluate_with_names`]) per observed flow of each pod:
//! a row is denied when a pod's flow is denied under the applied set, would-deny under the
//! proposal likewise. A flow to a Service address that leads nowhere is refused by
//! kube-proxy, not by a policy: it counts as allowed, as in [`crate::rollout`]. The edge's
//! [`Verdict`] is the worst of its rows' in the order drift, denied, would-deny, allowed.
//!
//! # Scope
//!
//! [`Filter::namespaces`] is also the RBAC scope of a namespace-scoped user (empty: every
//! namespace). Every view keeps only edges whose *source* namespace is in it. A workload of
//! another namespace appears only as the destination of such an edge, with its identity and
//! nothing else (no pod count, no phase), and its namespace only as the group holding it
//! (no workload count). Destination groups list only the names and addresses of the edges
//! shown. [`Map::workload`] does not check the scope: the caller asks for a namespace the
//! user may read.

use std::collections::HashMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use leash_records::{Outcome, Protocol};
use serde::{Serialize, Serializer};

use crate::classify::ClassifierConfig;
use crate::eval::PolicySet;
use crate::rollout::WorkloadStatus;
use crate::store::FlowObservation;

mod build;
mod model;
mod view;

pub use build::build;
pub use model::{Destination, Edge, Map, NodeKind, Row, WorkloadNode};
pub use view::{
    DetailRow, Filter, Totals, VerdictCounts, View, ViewEdge, ViewNode, WorkloadDetail,
};

/// At most this many workloads (in the filter's namespaces) and the overview shows them
/// directly (`expanded: true`) rather than one node per namespace.
pub const EXPAND_LIMIT: usize = 200;

/// An edge's verdict, as its style shows it. Ordered by precedence: an edge takes the
/// greatest of its rows'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The applied policies allow it, and so does the proposal (or there is none).
    Allowed,
    /// The applied policies allow it, the proposal would deny it.
    WouldDeny,
    /// The applied policies deny it: unexpected egress.
    Denied,
    /// DNS drift: a name moved to an address the applied policies deny ([`crate::drift`]).
    Drift,
}

impl Verdict {
    /// Every verdict, in order of precedence (lowest first).
    pub const ALL: [Verdict; 4] = [
        Verdict::Allowed,
        Verdict::WouldDeny,
        Verdict::Denied,
        Verdict::Drift,
    ];

    /// The verdict's name, as in JSON and query parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::WouldDeny => "would-deny",
            Verdict::Denied => "denied",
            Verdict::Drift => "drift",
        }
    }

    /// The verdict named `s` ([`Verdict::as_str`]), if any.
    pub fn parse(s: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One observed destination of a workload: what drift and TCP outcomes are keyed by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowRef {
    /// The source's namespace.
    pub namespace: String,
    /// The source workload, `Kind/name` ([`crate::json::workload`]).
    pub workload: String,
    /// The destination as dialed (IPv4-mapped addresses as IPv4).
    pub address: IpAddr,
    /// The port as dialed.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

impl FlowRef {
    /// The flows a drift flags: its workload to its address on each of its ports.
    pub fn from_drift(d: &crate::drift::Drift) -> Vec<FlowRef> {
        d.ports
            .iter()
            .map(|&(protocol, port)| FlowRef {
                namespace: d.source.namespace.clone(),
                workload: d.workload.clone(),
                address: d.address.to_canonical(),
                port,
                protocol,
            })
            .collect()
    }
}

/// TCP outcomes per observed destination of a workload (the observations do not carry them;
/// stored rows do).
pub type Outcomes = HashMap<FlowRef, Outcome>;

/// The TCP outcomes of stored flow rows ([`crate::store::Store::flows`]), summed per
/// destination; rows without any outcome are left out.
pub fn outcomes(rows: &[FlowObservation]) -> Outcomes {
    let mut out = Outcomes::new();
    for r in rows {
        if r.established == 0 && r.failed == 0 {
            continue;
        }
        let o = out
            .entry(FlowRef {
                namespace: r.workload.namespace.clone(),
                workload: crate::json::workload(&r.workload.kind, &r.workload.name),
                address: r.dst.to_canonical(),
                port: r.port,
                protocol: r.protocol,
            })
            .or_default();
        o.established = o.established.saturating_add(r.established);
        o.failed = o.failed.saturating_add(r.failed);
    }
    out
}

/// What [`build`] reads besides the cluster and the observations.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The policies applied in the cluster (compiled, ClusterNetworkPolicies included).
    pub applied: &'a PolicySet,
    /// The proposed state (the proposal laid over the applied policies), if any.
    pub proposed: Option<&'a PolicySet>,
    /// Flows flagged as DNS drift ([`FlowRef::from_drift`]).
    pub drifted: &'a [FlowRef],
    /// Rollout phases ([`crate::rollout::phases`]); workloads without one show none.
    pub phases: &'a [WorkloadStatus],
    /// TCP outcomes ([`outcomes`]), when known.
    pub outcomes: Option<&'a Outcomes>,
    /// The classifier's configuration (NodeLocal DNS addresses).
    pub classifier: &'a ClassifierConfig,
    /// When the map is built: every view carries it.
    pub now: DateTime<Utc>,
}

impl<'a> Inputs<'a> {
    /// The applied set at `now`, with the default classifier and nothing else.
    pub fn new(
        applied: &'a PolicySet,
        classifier: &'a ClassifierConfig,
        now: DateTime<Utc>,
    ) -> Self {
        Inputs {
            applied,
            proposed: None,
            drifted: &[],
            phases: &[],
            outcomes: None,
            classifier,
            now,
        }
    }
}

/// Serializes a time as RFC 3339 ([`leash_records::time::rfc3339`]).
fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&leash_records::time::rfc3339(*t))
}

/// `port/PROTO`, as the views list an edge's ports.
fn port_text(protocol: Protocol, port: u16) -> String {
    format!("{port}/{protocol}")
}
