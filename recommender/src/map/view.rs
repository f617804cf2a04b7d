//! The views the UI reads: the overview, one namespace, one workload's destinations. Each
//! reads the built [`Map`] only, and sorts what it returns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use leash_records::{Outcome, Protocol};
use serde::Serialize;

use super::model::{Edge, Map, NodeKind, To};
use super::{EXPAND_LIMIT, Verdict, port_text, rfc3339};
use crate::eval;
use crate::rollout::Phase;

/// What a view keeps. The default keeps everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only edges whose source is in these namespaces; empty means every namespace. It is
    /// also a namespace-scoped user's scope: a caller scoping a user to no namespace at all
    /// must refuse, not pass an empty set.
    pub namespaces: BTreeSet<String>,
    /// Only edges last seen at or after this (their figures stay those of the whole window).
    pub since: Option<DateTime<Utc>>,
    /// Only edges with this verdict.
    pub verdict: Option<Verdict>,
    /// Only edges whose source or destination workload (`namespace/Kind/name`), destination
    /// group, DNS names or addresses contain this, case-insensitive.
    pub search: Option<String>,
}

impl Filter {
    /// Whether `namespace` is in scope.
    pub fn allows(&self, namespace: &str) -> bool {
        self.namespaces.is_empty() || self.namespaces.contains(namespace)
    }
}

/// A filter ready to test edges.
struct Test<'f> {
    filter: &'f Filter,
    search: Option<String>,
}

impl<'f> Test<'f> {
    fn new(filter: &'f Filter) -> Self {
        let search = filter
            .search
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_lowercase);
        Test { filter, search }
    }

    /// Whether nodes without a shown edge are listed: only when neither time nor verdict
    /// narrows the view.
    fn lists_idle(&self) -> bool {
        self.filter.since.is_none() && self.filter.verdict.is_none()
    }

    fn matches(&self, haystack: &str) -> bool {
        self.search.as_deref().is_none_or(|q| haystack.contains(q))
    }

    /// Whether the edge passes (its source namespace is in scope, checked by the caller).
    fn edge(&self, map: &Map, e: &Edge) -> bool {
        if self.filter.since.is_some_and(|s| e.last_seen < s) {
            return false;
        }
        if self.filter.verdict.is_some_and(|v| e.verdict != v) {
            return false;
        }
        let Some(q) = self.search.as_deref() else {
            return true;
        };
        let to = match e.to {
            To::Workload(w) => map.workloads[w].haystack.as_str(),
            To::Group(g) => map.destinations[g].haystack.as_str(),
        };
        map.workloads[e.from].haystack.contains(q) || to.contains(q) || e.haystack.contains(q)
    }
}

/// Edge counts per verdict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct VerdictCounts {
    /// Allowed.
    pub allowed: usize,
    /// Would be denied by the proposal.
    pub would_deny: usize,
    /// Denied by the applied policies.
    pub denied: usize,
    /// DNS drift.
    pub drift: usize,
}

impl VerdictCounts {
    fn add(&mut self, v: Verdict) {
        let n = match v {
            Verdict::Allowed => &mut self.allowed,
            Verdict::WouldDeny => &mut self.would_deny,
            Verdict::Denied => &mut self.denied,
            Verdict::Drift => &mut self.drift,
        };
        *n += 1;
    }
}

/// A node of a view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViewNode {
    /// The stable id (`ns:…`, `wl:…`, `dns`, `api-server`, `nodes`, `svc:…`, `ext:…`,
    /// `cidr:…`).
    pub id: String,
    /// What it is.
    pub kind: NodeKind,
    /// What the UI shows: the namespace, `Kind/name`, the name, `namespace/name`, the CIDR.
    pub label: String,
    /// A workload's namespace group (`ns:…`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// A workload's or a Service's namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A workload's `Kind/name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// A workload's pods (in scope only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<usize>,
    /// A workload's rollout phase (in scope only, when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// A namespace's workloads (in scope only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workloads: Option<usize>,
    /// A destination group's DNS names, over the edges shown.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// A destination group's addresses as dialed, over the edges shown.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
}

/// An edge of a view: one workload's edge, or several folded between namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ViewEdge {
    /// `from->to`.
    pub id: String,
    /// The source node's id.
    pub from: String,
    /// The destination node's id.
    pub to: String,
    /// Ports used, `port/PROTO`, sorted by protocol and port.
    pub ports: Vec<String>,
    /// Events summed.
    pub events: u64,
    /// The earliest event.
    #[serde(serialize_with = "rfc3339")]
    pub first_seen: DateTime<Utc>,
    /// The latest event.
    #[serde(serialize_with = "rfc3339")]
    pub last_seen: DateTime<Utc>,
    /// The greatest verdict of the workload edges folded.
    pub verdict: Verdict,
    /// The workload edges folded, per verdict.
    pub verdicts: VerdictCounts,
    /// How many workload edges are folded in it.
    pub edges: usize,
}

/// What a view shows, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Workloads in scope (every one, shown or not).
    pub workloads: usize,
    /// Workload edges shown (folded or not).
    pub edges: usize,
    /// Their events.
    pub events: u64,
    /// Their verdicts.
    pub verdicts: VerdictCounts,
}

/// A view: nodes and edges sorted by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct View {
    /// When the map was built.
    #[serde(serialize_with = "rfc3339")]
    pub at: DateTime<Utc>,
    /// The namespace expanded, for [`Map::namespace`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Whether workloads are nodes (else namespaces are).
    pub expanded: bool,
    /// The nodes.
    pub nodes: Vec<ViewNode>,
    /// The edges.
    pub edges: Vec<ViewEdge>,
    /// The figures of what is shown.
    pub totals: Totals,
}

/// One row of a workload's destinations table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DetailRow {
    /// The destination node's id.
    pub to: String,
    /// What it is.
    pub kind: NodeKind,
    /// The destination: `namespace/Kind/name` of a workload, else the node's label.
    pub label: String,
    /// The address as dialed.
    pub address: IpAddr,
    /// The port as dialed.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: &'static str,
    /// The Service dialed, `namespace/name`.
    pub service: Option<String>,
    /// Events.
    pub events: u64,
    /// The earliest event.
    #[serde(serialize_with = "rfc3339")]
    pub first_seen: DateTime<Utc>,
    /// The latest event.
    #[serde(serialize_with = "rfc3339")]
    pub last_seen: DateTime<Utc>,
    /// DNS names, sorted.
    pub names: Vec<String>,
    /// The pods that made it, by name, sorted.
    pub pods: Vec<String>,
    /// At least this many other pods.
    pub more_pods: u64,
    /// TCP outcomes, when known.
    pub outcome: Option<Outcome>,
    /// Under the applied policies.
    pub applied: eval::Verdict,
    /// Under the proposal, if any.
    pub proposed: Option<eval::Verdict>,
    /// Flagged as DNS drift.
    pub drift: bool,
    /// Its style.
    pub verdict: Verdict,
}

/// A workload's panel: its phase and its destinations table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadDetail {
    /// `wl:…`.
    pub id: String,
    /// The namespace.
    pub namespace: String,
    /// `Kind/name`.
    pub workload: String,
    /// Its pods.
    pub pods: usize,
    /// Its rollout phase, when known.
    pub phase: Option<Phase>,
    /// Why.
    pub why: Option<String>,
    /// Every destination row, sorted by destination id, protocol, address and port.
    pub destinations: Vec<DetailRow>,
}

/// A node being gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key<'a> {
    Namespace(&'a str),
    Workload(usize),
    Group(usize),
}

#[derive(Default)]
struct NodeAcc<'a> {
    names: BTreeSet<&'a str>,
    addresses: BTreeSet<IpAddr>,
}

struct EdgeAcc {
    ports: BTreeSet<(Protocol, u16)>,
    events: u64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    verdict: Verdict,
    verdicts: VerdictCounts,
    edges: usize,
}

/// Gathers a view's nodes and edges.
struct Gather<'a> {
    map: &'a Map,
    filter: &'a Filter,
    nodes: BTreeMap<Key<'a>, NodeAcc<'a>>,
    edges: BTreeMap<(Key<'a>, Key<'a>), EdgeAcc>,
    totals: Totals,
}

impl<'a> Gather<'a> {
    fn new(map: &'a Map, filter: &'a Filter) -> Self {
        Gather {
            map,
            filter,
            nodes: BTreeMap::new(),
            edges: BTreeMap::new(),
            totals: Totals::default(),
        }
    }

    fn node(&mut self, k: Key<'a>) {
        self.nodes.entry(k).or_default();
    }

    /// The edge `e`, drawn from `from` to `to`.
    fn edge(&mut self, from: Key<'a>, to: Key<'a>, e: &'a Edge) {
        self.node(from);
        let dest = self.nodes.entry(to).or_default();
        if matches!(to, Key::Group(_)) {
            dest.names.extend(e.names.iter().map(String::as_str));
            dest.addresses.extend(e.addresses.iter().copied());
        }
        self.totals.edges += 1;
        self.totals.events = self.totals.events.saturating_add(e.events);
        self.totals.verdicts.add(e.verdict);
        let acc = self.edges.entry((from, to)).or_insert_with(|| EdgeAcc {
            ports: BTreeSet::new(),
            events: 0,
            first: e.first_seen,
            last: e.last_seen,
            verdict: e.verdict,
            verdicts: VerdictCounts::default(),
            edges: 0,
        });
        acc.ports.extend(e.ports.iter().copied());
        crate::evidence::fold(
            &mut acc.events,
            &mut acc.first,
            &mut acc.last,
            e.events,
            e.first_seen,
            e.last_seen,
        );
        acc.verdict = acc.verdict.max(e.verdict);
        acc.verdicts.add(e.verdict);
        acc.edges += 1;
    }

    /// The destination node of `e`: its workload (or that workload's namespace, collapsed),
    /// or its group.
    fn to(&self, e: &Edge, collapse: impl Fn(&str) -> bool) -> Key<'a> {
        match e.to {
            To::Workload(w) => {
                let ns = self.map.workloads[w].namespace.as_str();
                if collapse(ns) {
                    Key::Namespace(ns)
                } else {
                    Key::Workload(w)
                }
            }
            To::Group(g) => Key::Group(g),
        }
    }

    fn id(&self, k: Key<'_>) -> String {
        match k {
            Key::Namespace(ns) => format!("ns:{ns}"),
            Key::Workload(w) => self.map.workloads[w].id.clone(),
            Key::Group(g) => self.map.destinations[g].id.clone(),
        }
    }

    fn finish(mut self, namespace: Option<String>, expanded: bool) -> View {
        // Every workload sits in its namespace's group.
        let parents: Vec<Key<'a>> = self
            .nodes
            .keys()
            .filter_map(|k| match k {
                Key::Workload(w) => Some(Key::Namespace(self.map.workloads[*w].namespace.as_str())),
                _ => None,
            })
            .collect();
        for p in parents {
            self.node(p);
        }
        let map = self.map;
        let filter = self.filter;
        let mut nodes: Vec<ViewNode> = self
            .nodes
            .iter()
            .map(|(k, acc)| {
                let mut n = ViewNode {
                    id: self.id(*k),
                    kind: NodeKind::Namespace,
                    label: String::new(),
                    parent: None,
                    namespace: None,
                    workload: None,
                    pods: None,
                    phase: None,
                    workloads: None,
                    names: acc.names.iter().map(|s| (*s).to_owned()).collect(),
                    addresses: acc.addresses.iter().copied().collect(),
                };
                match *k {
                    Key::Namespace(ns) => {
                        n.label = ns.to_owned();
                        if filter.allows(ns) {
                            n.workloads = map.namespaces.get(ns).map(ExactSizeIterator::len);
                        }
                    }
                    Key::Workload(w) => {
                        let wl = &map.workloads[w];
                        n.kind = NodeKind::Workload;
                        n.label.clone_from(&wl.workload);
                        n.parent = Some(format!("ns:{}", wl.namespace));
                        n.namespace = Some(wl.namespace.clone());
                        n.workload = Some(wl.workload.clone());
                        // Another namespace's workload: its identity only.
                        if filter.allows(&wl.namespace) {
                            n.pods = Some(wl.pods);
                            n.phase = wl.phase;
                        }
                    }
                    Key::Group(g) => {
                        let d = &map.destinations[g];
                        n.kind = d.kind;
                        n.label.clone_from(&d.label);
                        n.namespace.clone_from(&d.namespace);
                    }
                }
                n
            })
            .collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        let mut edges: Vec<ViewEdge> = self
            .edges
            .iter()
            .map(|((from, to), acc)| {
                let (from, to) = (self.id(*from), self.id(*to));
                ViewEdge {
                    id: format!("{from}->{to}"),
                    from,
                    to,
                    ports: acc.ports.iter().map(|&(p, n)| port_text(p, n)).collect(),
                    events: acc.events,
                    first_seen: acc.first,
                    last_seen: acc.last,
                    verdict: acc.verdict,
                    verdicts: acc.verdicts,
                    edges: acc.edges,
                }
            })
            .collect();
        edges.sort_by(|a, b| a.id.cmp(&b.id));
        View {
            at: map.at,
            namespace,
            expanded,
            nodes,
            edges,
            totals: self.totals,
        }
    }
}

impl Map {
    /// The namespaces in scope, with their workloads.
    fn scoped<'a>(
        &'a self,
        filter: &'a Filter,
    ) -> impl Iterator<Item = (&'a str, std::ops::Range<usize>)> + 'a {
        self.namespaces
            .iter()
            .filter(|(ns, _)| filter.allows(ns))
            .map(|(ns, r)| (ns.as_str(), r.clone()))
    }

    /// The cluster at a glance: one node per namespace in scope and per destination, edges
    /// folded between them; or, when the namespaces in scope hold at most [`EXPAND_LIMIT`]
    /// workloads, the workloads themselves (`expanded`).
    pub fn overview(&self, filter: &Filter) -> View {
        let test = Test::new(filter);
        let workloads: usize = self.scoped(filter).map(|(_, r)| r.len()).sum();
        let expanded = workloads <= EXPAND_LIMIT;
        let mut g = Gather::new(self, filter);
        g.totals.workloads = workloads;
        for (ns, range) in self.scoped(filter) {
            if test.lists_idle() && !expanded && test.matches(&ns.to_lowercase()) {
                g.node(Key::Namespace(ns));
            }
            for w in range {
                if expanded && test.lists_idle() && test.matches(&self.workloads[w].haystack) {
                    g.node(Key::Workload(w));
                }
                for e in &self.edges[self.out_edges[w].clone()] {
                    if !test.edge(self, e) {
                        continue;
                    }
                    let from = if expanded {
                        Key::Workload(w)
                    } else {
                        Key::Namespace(ns)
                    };
                    let to = g.to(e, |_| !expanded);
                    g.edge(from, to, e);
                }
            }
        }
        g.finish(None, expanded)
    }

    /// One namespace expanded: its workloads, their edges (peers of other namespaces as
    /// workloads inside their namespace's group), and the edges into them from other
    /// namespaces in scope, folded per source namespace. Empty when `namespace` is not in
    /// scope or not in the cluster.
    pub fn namespace(&self, namespace: &str, filter: &Filter) -> View {
        let test = Test::new(filter);
        let mut g = Gather::new(self, filter);
        let Some(range) = self
            .namespaces
            .get(namespace)
            .filter(|_| filter.allows(namespace))
        else {
            return g.finish(Some(namespace.to_owned()), true);
        };
        g.totals.workloads = range.len();
        g.node(Key::Namespace(namespace));
        for w in range.clone() {
            if test.lists_idle() && test.matches(&self.workloads[w].haystack) {
                g.node(Key::Workload(w));
            }
            for e in &self.edges[self.out_edges[w].clone()] {
                if test.edge(self, e) {
                    let to = g.to(e, |_| false);
                    g.edge(Key::Workload(w), to, e);
                }
            }
            for &i in &self.in_edges[w] {
                let e = &self.edges[i];
                let src = self.workloads[e.from].namespace.as_str();
                // Its own workloads' edges are drawn above.
                if src == namespace || !filter.allows(src) || !test.edge(self, e) {
                    continue;
                }
                g.edge(Key::Namespace(src), Key::Workload(w), e);
            }
        }
        g.finish(Some(namespace.to_owned()), true)
    }

    /// A workload's panel: its phase and every observed destination with its evidence and
    /// verdicts. The caller checks that the user may read `namespace`.
    pub fn workload(&self, namespace: &str, workload: &str) -> Option<WorkloadDetail> {
        let w = self.find(namespace, workload)?;
        let wl = &self.workloads[w];
        let mut destinations = Vec::new();
        for e in &self.edges[self.out_edges[w].clone()] {
            let (kind, label) = match e.to {
                To::Workload(t) => {
                    let t = &self.workloads[t];
                    (
                        NodeKind::Workload,
                        format!("{}/{}", t.namespace, t.workload),
                    )
                }
                To::Group(gi) => {
                    let d = &self.destinations[gi];
                    (d.kind, d.label.clone())
                }
            };
            for r in self.rows(e) {
                destinations.push(DetailRow {
                    to: e.to_id.clone(),
                    kind,
                    label: label.clone(),
                    address: r.address,
                    port: r.port,
                    protocol: r.protocol.as_str(),
                    service: r.service.clone(),
                    events: r.events,
                    first_seen: r.first_seen,
                    last_seen: r.last_seen,
                    names: r.names.iter().cloned().collect(),
                    pods: r.pods.names.iter().cloned().collect(),
                    more_pods: r.pods.more,
                    outcome: r.outcome,
                    applied: r.applied,
                    proposed: r.proposed,
                    drift: r.drift,
                    verdict: r.verdict(),
                });
            }
        }
        Some(WorkloadDetail {
            id: wl.id.clone(),
            namespace: wl.namespace.clone(),
            workload: wl.workload.clone(),
            pods: wl.pods,
            phase: wl.phase,
            why: wl.why.clone(),
            destinations,
        })
    }
}
