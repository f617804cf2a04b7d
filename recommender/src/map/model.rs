//! The map's model: workloads, destination groups, edges and their rows, indexed for the
//! views.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::Range;

use chrono::{DateTime, Utc};
use leash_records::{Outcome, Protocol};
use serde::Serialize;

use super::Verdict;
use crate::eval;
use crate::observations::PodNames;
use crate::rollout::Phase;

/// What a node of the map is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeKind {
    /// A namespace: the group of its workloads (`ns:<namespace>`).
    Namespace,
    /// A workload (`wl:<namespace>/<Kind>/<name>`).
    Workload,
    /// A Service that is not one workload's (`svc:<namespace>/<name>`).
    Service,
    /// The DNS resolvers (`dns`).
    Dns,
    /// The API server (`api-server`).
    ApiServer,
    /// Node addresses and hostNetwork pods (`nodes`).
    Nodes,
    /// External addresses with a DNS name (`ext:<name>`).
    External,
    /// External addresses without a name, by /24 or /64 (`cidr:<net>`).
    Cidr,
}

/// A workload of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadNode {
    /// `wl:<namespace>/<Kind>/<name>`.
    pub id: String,
    /// The namespace.
    pub namespace: String,
    /// `Kind/name` ([`crate::json::workload`]).
    pub workload: String,
    /// Its pods in the cluster model.
    pub pods: usize,
    /// Its rollout phase, when given.
    pub phase: Option<Phase>,
    /// Why it is in that phase ([`crate::rollout::WorkloadStatus::why`]).
    pub why: Option<String>,
    /// What a search matches: `namespace/Kind/name`, lower case.
    pub(super) haystack: String,
}

/// A destination node that is not a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The stable id (`dns`, `api-server`, `nodes`, `svc:…`, `ext:…`, `cidr:…`).
    pub id: String,
    /// What it is.
    pub kind: NodeKind,
    /// What the UI shows: the name, `namespace/name` of a Service, the CIDR.
    pub label: String,
    /// A Service's namespace.
    pub namespace: Option<String>,
    /// What a search matches: the label, lower case.
    pub(super) haystack: String,
}

/// Where an edge goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum To {
    /// A workload, by index into [`Map::workloads`].
    Workload(usize),
    /// A destination group, by index into [`Map::destinations`].
    Group(usize),
}

/// One observed destination of a workload: an address as dialed, a port and a protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The address as dialed (before DNAT).
    pub address: IpAddr,
    /// The port as dialed.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// The Service the address belongs to, `namespace/name`.
    pub service: Option<String>,
    /// Events summed over the workload's pods.
    pub events: u64,
    /// The earliest event.
    pub first_seen: DateTime<Utc>,
    /// The latest event.
    pub last_seen: DateTime<Utc>,
    /// The DNS names it was reached by, and those answered for the address.
    pub names: BTreeSet<String>,
    /// The pods that made it.
    pub pods: PodNames,
    /// TCP outcomes, when known.
    pub outcome: Option<Outcome>,
    /// Under the applied policies: deny when any pod's flow is denied.
    pub applied: eval::Verdict,
    /// Under the proposal, if any.
    pub proposed: Option<eval::Verdict>,
    /// Flagged as DNS drift.
    pub drift: bool,
}

impl Row {
    /// Its style: drift, denied, would-deny or allowed.
    pub fn verdict(&self) -> Verdict {
        verdict_of(self.applied, self.proposed, self.drift)
    }
}

/// The style of applied and proposed verdicts and a drift flag.
pub(super) fn verdict_of(
    applied: eval::Verdict,
    proposed: Option<eval::Verdict>,
    drift: bool,
) -> Verdict {
    if drift {
        Verdict::Drift
    } else if applied == eval::Verdict::Deny {
        Verdict::Denied
    } else if proposed == Some(eval::Verdict::Deny) {
        Verdict::WouldDeny
    } else {
        Verdict::Allowed
    }
}

/// A source workload's egress to one destination node, folded over its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// The source, by index into [`Map::workloads`].
    pub(super) from: usize,
    /// The destination.
    pub(super) to: To,
    /// `from->to` ids.
    pub id: String,
    /// The destination node's id.
    pub to_id: String,
    /// The ports used, sorted.
    pub ports: BTreeSet<(Protocol, u16)>,
    /// Events summed.
    pub events: u64,
    /// The earliest event.
    pub first_seen: DateTime<Utc>,
    /// The latest event.
    pub last_seen: DateTime<Utc>,
    /// Names, over the rows.
    pub names: BTreeSet<String>,
    /// Addresses as dialed, over the rows.
    pub addresses: BTreeSet<IpAddr>,
    /// The pods that made it, over the rows.
    pub pods: PodNames,
    /// TCP outcomes summed over the rows that have them.
    pub outcome: Option<Outcome>,
    /// Deny when any row is denied.
    pub applied: eval::Verdict,
    /// Deny when any row would be denied; `None` without a proposal.
    pub proposed: Option<eval::Verdict>,
    /// Whether any row is drift.
    pub drift: bool,
    /// The greatest of its rows' verdicts.
    pub verdict: Verdict,
    /// Its rows, as a range of [`Map::rows`].
    pub(super) rows: Range<usize>,
    /// What a search matches besides its ends: names and addresses, lower case.
    pub(super) haystack: String,
}

/// The whole egress map: see the module's documentation.
#[derive(Debug, Clone, Default)]
pub struct Map {
    /// When it was built.
    pub(super) at: DateTime<Utc>,
    /// Every workload, sorted by namespace and `Kind/name`.
    pub(super) workloads: Vec<WorkloadNode>,
    /// Every destination group, sorted by id.
    pub(super) destinations: Vec<Destination>,
    /// Every edge, sorted by source, then destination id.
    pub(super) edges: Vec<Edge>,
    /// Every row, in edge order, each edge's sorted by protocol, address and port.
    pub(super) rows: Vec<Row>,
    /// Each workload's edges, a range of `edges`.
    pub(super) out_edges: Vec<Range<usize>>,
    /// The edges into each workload, by index into `edges`, sorted.
    pub(super) in_edges: Vec<Vec<usize>>,
    /// Each namespace's workloads, a range of `workloads`.
    pub(super) namespaces: BTreeMap<String, Range<usize>>,
}

impl Map {
    /// When it was built ([`super::Inputs::now`]).
    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    /// Every workload, sorted by namespace and `Kind/name`.
    pub fn workloads(&self) -> &[WorkloadNode] {
        &self.workloads
    }

    /// Every destination group, sorted by id.
    pub fn destinations(&self) -> &[Destination] {
        &self.destinations
    }

    /// Every edge, sorted by source and destination.
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// An edge's source workload.
    pub fn source(&self, e: &Edge) -> &WorkloadNode {
        &self.workloads[e.from]
    }

    /// An edge's rows.
    pub fn rows(&self, e: &Edge) -> &[Row] {
        &self.rows[e.rows.clone()]
    }

    /// The workload `namespace` `Kind/name`, by index.
    pub(super) fn find(&self, namespace: &str, workload: &str) -> Option<usize> {
        let range = self.namespaces.get(namespace)?.clone();
        let slice = &self.workloads[range.clone()];
        slice
            .binary_search_by(|w| w.workload.as_str().cmp(workload))
            .ok()
            .map(|i| range.start + i)
    }
}
