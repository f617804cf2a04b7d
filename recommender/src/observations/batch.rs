//! One agent batch → per-workload store rows: what `leash serve` commits.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

// Fx hashing: these maps are probed once per record on the ingest path.
use leash_records::{DnsRecord, FlowRecord, Outcome, PodRef, Protocol, wire::SourceFlows};
use rustc_hash::FxHashMap as HashMap;

use super::{PodNames, answer_addresses, answer_names, normalize_name, resolve_pod};
use crate::cluster::Cluster;
use crate::evidence::fold;
use crate::store::{DnsObservation, FlowObservation, KIND_NODE, KIND_POD, WorkloadRef};

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
    let sourced = flows
        .iter()
        .map(|f| (f.pod.as_ref(), f.node.as_str(), std::slice::from_ref(f)));
    aggregate(cluster, sourced, flows.len(), dns)
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
        .map(|g| (g.pod.as_ref(), node, g.flows.as_slice()));
    let records = groups.iter().map(|g| g.flows.len()).sum();
    aggregate(cluster, sourced, records, dns)
}

/// Aggregates flow records, each with the pod and node it came from, and DNS records.
fn aggregate<'r>(
    cluster: &Cluster,
    sources: impl Iterator<Item = (Option<&'r PodRef>, &'r str, &'r [FlowRecord])>,
    records: usize,
    dns: &'r [DnsRecord],
) -> (Vec<FlowObservation>, Vec<DnsObservation>) {
    let mut workloads = Workloads::new(cluster);

    let mut flow_index: HashMap<(usize, IpAddr, u16, Protocol), usize> =
        HashMap::with_capacity_and_hasher(records, Default::default());
    let mut flow_out: Vec<FlowObservation> = Vec::new();
    // The pods of each observation, borrowed from the batch until it is bounded below.
    let mut flow_pods: Vec<BTreeSet<&'r str>> = Vec::new();
    for (pod, node, flows) in sources {
        // One lookup of the workload per source, not per record.
        let w = workloads.of(pod, node);
        for f in flows {
            let dst = f.dst.to_canonical();
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
                        pods: PodNames::default(),
                        established: 0,
                        failed: 0,
                    });
                    flow_pods.push(BTreeSet::new());
                    flow_out.len() - 1
                });
            if let (Some(p), Some(pods)) = (pod, flow_pods.get_mut(i)) {
                pods.insert(p.name.as_str());
            }
            let o = &mut flow_out[i];
            fold(
                &mut o.count,
                &mut o.first_seen,
                &mut o.last_seen,
                f.count,
                first,
                last,
            );
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
    }

    // The store keeps the smallest names, whatever order the pods came in.
    for (o, pods) in flow_out.iter_mut().zip(flow_pods) {
        let all = pods.len();
        o.pods.names = pods
            .into_iter()
            .take(PodNames::MAX)
            .map(str::to_owned)
            .collect();
        o.pods.more = u64::try_from(all - o.pods.names.len()).unwrap_or(u64::MAX);
    }

    let mut dns_index: HashMap<(usize, IpAddr, String), usize> = HashMap::default();
    let mut dns_out: Vec<DnsObservation> = Vec::new();
    for d in dns {
        let w = workloads.of(d.pod.as_ref(), &d.node);
        let server = d.server.to_canonical();
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
                    addresses: BTreeMap::new(),
                });
                dns_out.len() - 1
            });
        let o = &mut dns_out[i];
        fold(
            &mut o.count,
            &mut o.first_seen,
            &mut o.last_seen,
            1,
            d.time,
            d.time,
        );
        o.resolved.extend(answer_names(d));
        for (ip, seen) in answer_addresses(d) {
            super::merge_seen(&mut o.addresses, ip, &seen);
        }
    }

    (flow_out, dns_out)
}
