//! Between agents' records and the store's observations, both ways.
//!
//! [`from_batch`] turns one batch of records into per-workload observations (what `leash
//! serve` commits); [`observations`] turns stored observations back into the engine's
//! [`Observations`], so that `recommend` and `audit` run unchanged on a store.

use std::collections::BTreeSet;
use std::collections::hash_map::Entry;
use std::net::IpAddr;
use std::path::Path;

// Fx hashing: these maps are probed once per record on the ingest path.
use leash_records::{DnsRecord, FlowRecord, Outcome, PodRef, Protocol, wire::SourceFlows};
use rustc_hash::FxHashMap as HashMap;

use super::{DnsObservation, FlowObservation, WorkloadRef};
use crate::audit::LocatedFlow;
use crate::cluster::{Cluster, PodId, WorkloadId};
use crate::input::{
    DnsUse, Evidence, FlowKey, Observations, answer_names, canonical_ip, normalize_name,
    resolve_pod,
};

/// The kind of [`WorkloadRef`] for processes outside any pod.
pub const KIND_NODE: &str = "Node";
/// The kind of [`WorkloadRef`] for a bare pod, or a pod the cluster model does not know.
pub const KIND_POD: &str = "Pod";

/// Interns the workloads of one batch: records of a pod resolve once.
struct Workloads<'c, 'r> {
    cluster: &'c Cluster,
    refs: Vec<WorkloadRef>,
    by_ref: HashMap<WorkloadRef, usize>,
    /// A record's pod → index in `refs`.
    by_pod: HashMap<&'r PodRef, usize>,
    /// Node name → index in `refs`.
    by_node: HashMap<&'r str, usize>,
}

impl<'c, 'r> Workloads<'c, 'r> {
    fn new(cluster: &'c Cluster) -> Self {
        Self {
            cluster,
            refs: Vec::new(),
            by_ref: HashMap::default(),
            by_pod: HashMap::default(),
            by_node: HashMap::default(),
        }
    }

    fn intern(&mut self, r: WorkloadRef) -> usize {
        match self.by_ref.entry(r) {
            Entry::Occupied(e) => *e.get(),
            Entry::Vacant(e) => {
                self.refs.push(e.key().clone());
                *e.insert(self.refs.len() - 1)
            }
        }
    }

    /// The workload of a record: its pod's workload, the pod itself when the model does not
    /// know it, or the node for records without a pod.
    fn of(&mut self, pod: Option<&'r PodRef>, node: &'r str) -> usize {
        match pod {
            None => {
                if let Some(&i) = self.by_node.get(node) {
                    return i;
                }
                let i = self.intern(WorkloadRef {
                    namespace: String::new(),
                    kind: KIND_NODE.to_owned(),
                    name: node.to_owned(),
                });
                self.by_node.insert(node, i);
                i
            }
            Some(p) => {
                if let Some(&i) = self.by_pod.get(p) {
                    return i;
                }
                let r = workload_ref(self.cluster, p);
                let i = self.intern(r);
                self.by_pod.insert(p, i);
                i
            }
        }
    }
}

/// The workload a record's pod belongs to, as the cluster model names it; a pod the model
/// does not know is its own workload of kind `Pod`.
pub fn workload_ref(cluster: &Cluster, pod: &PodRef) -> WorkloadRef {
    let known = resolve_pod(cluster, pod).and_then(|id| cluster.workload_of(id));
    match known.and_then(|w| cluster.workloads.get(w)) {
        Some(w) => WorkloadRef {
            namespace: w.namespace.clone(),
            kind: w.kind.clone(),
            name: w.name.clone(),
        },
        None => WorkloadRef {
            namespace: pod.namespace.clone(),
            kind: KIND_POD.to_owned(),
            name: pod.name.clone(),
        },
    }
}

/// Aggregates one batch of records into observations, merging records of the same key.
///
/// Every record becomes part of an observation: a record's pod is resolved (by uid, else by
/// namespace and name) to its workload; a pod the cluster model does not know is kept as kind
/// `Pod` under its own name; records without a pod go to kind `Node` under the record's node.
/// Addresses are canonical (IPv4-mapped IPv6 as IPv4) and names normalized, as when records
/// are read from files. A record whose `first_seen` is after its `last_seen` contributes both
/// times as bounds rather than being dropped.
///
/// Observations come in the order their keys first appear in the batch (deterministic; not
/// sorted, since the store orders its writes itself and sorting by workload names costs
/// more than the rest of this function).
pub fn from_batch(
    cluster: &Cluster,
    flows: &[FlowRecord],
    dns: &[DnsRecord],
) -> (Vec<FlowObservation>, Vec<DnsObservation>) {
    let sourced = flows.iter().map(|f| (f.pod.as_ref(), f.node.as_str(), f));
    aggregate(cluster, sourced, dns)
}

/// [`from_batch`] for a batch whose flows are kept by source, as ingest reads them: each
/// group's pod is resolved once, and records carry no copy of it (see [`SourceFlows`]).
pub fn from_groups(
    cluster: &Cluster,
    node: &str,
    groups: &[SourceFlows],
    dns: &[DnsRecord],
) -> (Vec<FlowObservation>, Vec<DnsObservation>) {
    let sourced = groups
        .iter()
        .flat_map(|g| g.flows.iter().map(move |f| (g.pod.as_ref(), node, f)));
    aggregate(cluster, sourced, dns)
}

/// Aggregates flow records, each with the pod and node it came from, and DNS records.
fn aggregate<'r>(
    cluster: &Cluster,
    flows: impl Iterator<Item = (Option<&'r PodRef>, &'r str, &'r FlowRecord)>,
    dns: &'r [DnsRecord],
) -> (Vec<FlowObservation>, Vec<DnsObservation>) {
    let mut workloads = Workloads::new(cluster);

    let mut flow_index: HashMap<(usize, IpAddr, u16, Protocol), usize> = HashMap::default();
    let mut flow_out: Vec<FlowObservation> = Vec::new();
    for (pod, node, f) in flows {
        let w = workloads.of(pod, node);
        let dst = canonical_ip(f.dst);
        let (first, last) = (f.first_seen.min(f.last_seen), f.first_seen.max(f.last_seen));
        let Outcome {
            established,
            failed,
        } = f.outcome.unwrap_or_default();
        let i = *flow_index
            .entry((w, dst, f.dst_port, f.protocol))
            .or_insert_with(|| {
                flow_out.push(FlowObservation {
                    workload: workloads.refs[w].clone(),
                    protocol: f.protocol,
                    dst,
                    port: f.dst_port,
                    count: 0,
                    first_seen: first,
                    last_seen: last,
                    names: BTreeSet::new(),
                    established: 0,
                    failed: 0,
                });
                flow_out.len() - 1
            });
        let o = &mut flow_out[i];
        o.count = o.count.saturating_add(f.count);
        o.first_seen = o.first_seen.min(first);
        o.last_seen = o.last_seen.max(last);
        o.established = o.established.saturating_add(established);
        o.failed = o.failed.saturating_add(failed);
        for n in &f.names {
            // Agents send names normalized already: look up before allocating a copy.
            let trimmed = n.trim_end_matches('.');
            let normalized = trimmed.bytes().all(|b| !b.is_ascii_uppercase());
            if !(normalized && o.names.contains(trimmed)) {
                o.names.insert(normalize_name(n));
            }
        }
    }

    let mut dns_index: HashMap<(usize, IpAddr, String), usize> = HashMap::default();
    let mut dns_out: Vec<DnsObservation> = Vec::new();
    for d in dns {
        let w = workloads.of(d.pod.as_ref(), &d.node);
        let server = canonical_ip(d.server);
        let query = normalize_name(&d.query);
        let i = *dns_index
            .entry((w, server, query.clone()))
            .or_insert_with(|| {
                dns_out.push(DnsObservation {
                    workload: workloads.refs[w].clone(),
                    server,
                    query,
                    count: 0,
                    first_seen: d.time,
                    last_seen: d.time,
                    resolved: BTreeSet::new(),
                });
                dns_out.len() - 1
            });
        let o = &mut dns_out[i];
        o.count = o.count.saturating_add(1);
        o.first_seen = o.first_seen.min(d.time);
        o.last_seen = o.last_seen.max(d.time);
        o.resolved.extend(answer_names(d));
    }

    (flow_out, dns_out)
}

impl WorkloadRef {
    /// Whether this is the pseudo-workload of processes outside pods.
    pub fn is_node(&self) -> bool {
        self.kind == KIND_NODE && self.namespace.is_empty()
    }
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_node() {
            write!(f, "Node/{}", self.name)
        } else {
            write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
        }
    }
}

/// The documented order of flow observations: workload, destination, port, protocol.
pub fn flow_order(o: &FlowObservation) -> (&WorkloadRef, IpAddr, u16, Protocol) {
    (&o.workload, o.dst, o.port, o.protocol)
}

/// The documented order of DNS observations: workload, resolver, query.
pub fn dns_order(o: &DnsObservation) -> (&WorkloadRef, IpAddr, &str) {
    (&o.workload, o.server, o.query.as_str())
}

/// Why stored observations of a workload were left out of [`Observations`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SkipReason {
    /// The cluster model has no such workload (nor, for kind `Pod`, such a pod).
    NotInCluster,
    /// The workload exists but has no pod to attribute its traffic to.
    NoPods,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotInCluster => "not in the cluster model (deleted or renamed?)",
            Self::NoPods => "no pods in the cluster model",
        })
    }
}

/// A workload whose stored observations could not be used.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    /// The workload as stored.
    pub workload: WorkloadRef,
    /// Why.
    pub reason: SkipReason,
    /// Flow events left out (summed counts).
    pub flow_events: u64,
    /// DNS answers left out.
    pub dns_answers: u64,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "skipped {}: {} ({} flow events, {} DNS answers)",
            self.workload, self.reason, self.flow_events, self.dns_answers
        )
    }
}

/// Resolves stored workloads to the pod their evidence is attached to.
struct Attach<'c> {
    cluster: &'c Cluster,
    by_name: HashMap<(&'c str, &'c str, &'c str), WorkloadId>,
    resolved: HashMap<WorkloadRef, Result<PodId, SkipReason>>,
}

impl<'c> Attach<'c> {
    fn new(cluster: &'c Cluster) -> Self {
        let by_name = cluster
            .workloads
            .iter()
            .enumerate()
            .map(|(i, w)| ((w.namespace.as_str(), w.kind.as_str(), w.name.as_str()), i))
            .collect();
        Self {
            cluster,
            by_name,
            resolved: HashMap::default(),
        }
    }

    /// The pod a workload's evidence goes to: its first running pod by name, else its first
    /// pod. A kind `Pod` that is no workload of its own resolves to that pod if it now exists.
    fn pod(&mut self, w: &WorkloadRef) -> Result<PodId, SkipReason> {
        if let Some(r) = self.resolved.get(w) {
            return *r;
        }
        let c = self.cluster;
        let r = match self
            .by_name
            .get(&(w.namespace.as_str(), w.kind.as_str(), w.name.as_str()))
        {
            Some(&id) => {
                // Pods are sorted by (namespace, name), and so are a workload's pod ids.
                let pods = c.workload_pods(id);
                pods.iter()
                    .copied()
                    .find(|&p| !c.pods[p].terminated)
                    .or_else(|| pods.first().copied())
                    .ok_or(SkipReason::NoPods)
            }
            None if w.kind == KIND_POD => c
                .pod_by_name(&w.namespace, &w.name)
                .ok_or(SkipReason::NotInCluster),
            None => Err(SkipReason::NotInCluster),
        };
        self.resolved.insert(w.clone(), r);
        r
    }
}

/// Builds the engine's [`Observations`] from stored observations, so that `recommend` and
/// `audit` run unchanged on a store.
///
/// A workload's evidence is attached to one of its pods (the first running one by name; the
/// engine groups by workload anyway). Kind `Node` flows are counted as unattributed; DNS
/// answers of every observation, skipped or not, still teach which names an address had and
/// which addresses are resolvers. Workloads that cannot be attributed are returned as
/// [`Skipped`], sorted.
pub fn observations(
    cluster: &Cluster,
    flows: &[FlowObservation],
    dns: &[DnsObservation],
) -> (Observations, Vec<Skipped>) {
    let mut obs = Observations::default();
    let mut attach = Attach::new(cluster);
    let mut skipped: HashMap<WorkloadRef, Skipped> = HashMap::default();

    for f in flows {
        obs.records += 1;
        if f.workload.is_node() {
            obs.unattributed_flows = obs.unattributed_flows.saturating_add(f.count);
            continue;
        }
        let pod = match attach.pod(&f.workload) {
            Ok(p) => p,
            Err(reason) => {
                let s = skip(&mut skipped, &f.workload, reason);
                s.flow_events = s.flow_events.saturating_add(f.count);
                continue;
            }
        };
        let ev = Evidence {
            count: f.count,
            first_seen: f.first_seen,
            last_seen: f.last_seen,
            names: f.names.clone(),
        };
        let key = FlowKey {
            pod,
            dst: canonical_ip(f.dst),
            port: f.port,
            protocol: f.protocol,
        };
        match obs.flows.entry(key) {
            Entry::Occupied(mut e) => e.get_mut().merge(&ev),
            Entry::Vacant(e) => {
                e.insert(ev);
            }
        }
    }

    for d in dns {
        obs.records += 1;
        let server = canonical_ip(d.server);
        obs.resolvers.insert(server);
        for (name, ip) in &d.resolved {
            obs.names_by_ip
                .entry(canonical_ip(*ip))
                .or_default()
                .insert(name.clone());
        }
        if d.workload.is_node() {
            continue;
        }
        let pod = match attach.pod(&d.workload) {
            Ok(p) => p,
            Err(reason) => {
                let s = skip(&mut skipped, &d.workload, reason);
                s.dns_answers = s.dns_answers.saturating_add(d.count);
                continue;
            }
        };
        let u = obs.dns.entry((pod, server)).or_insert_with(|| DnsUse {
            queries: 0,
            first_seen: d.first_seen,
            last_seen: d.last_seen,
            names: BTreeSet::new(),
        });
        u.queries = u.queries.saturating_add(d.count);
        u.first_seen = u.first_seen.min(d.first_seen);
        u.last_seen = u.last_seen.max(d.last_seen);
        if !d.query.is_empty() {
            u.names.insert(d.query.clone());
        }
    }

    let mut skipped: Vec<Skipped> = skipped.into_values().collect();
    skipped.sort();
    (obs, skipped)
}

fn skip<'a>(
    skipped: &'a mut HashMap<WorkloadRef, Skipped>,
    w: &WorkloadRef,
    reason: SkipReason,
) -> &'a mut Skipped {
    skipped.entry(w.clone()).or_insert_with(|| Skipped {
        workload: w.clone(),
        reason,
        flow_events: 0,
        dns_answers: 0,
    })
}

/// Stored flows as `audit` input: one flow per (pod, destination, port, protocol) of
/// [`observations`], sorted, each "located" at `path` with its 1-based position as line.
pub fn audit_flows(cluster: &Cluster, obs: &Observations, path: &Path) -> Vec<LocatedFlow> {
    let mut keys: Vec<(&FlowKey, &Evidence)> = obs.flows.iter().collect();
    keys.sort_by_key(|(k, _)| **k);
    keys.into_iter()
        .filter_map(|(k, ev)| {
            let pod = cluster.pods.get(k.pod)?;
            Some((k, ev, pod))
        })
        .enumerate()
        .map(|(i, (k, ev, pod))| LocatedFlow {
            path: path.to_path_buf(),
            line: i + 1,
            flow: FlowRecord {
                node: pod.node.clone().unwrap_or_default(),
                pod: Some(PodRef {
                    uid: pod.uid.clone().unwrap_or_default(),
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                }),
                cgroup: String::new(),
                protocol: k.protocol,
                dst: k.dst,
                dst_port: k.port,
                count: ev.count,
                first_seen: ev.first_seen,
                last_seen: ev.last_seen,
                names: ev.names.iter().cloned().collect(),
                outcome: None,
            },
        })
        .collect()
}
