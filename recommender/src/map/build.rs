//! [`build`]: the cluster, the observations and the policy sets to the [`Map`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use leash_records::{Outcome, Protocol};

use super::model::{Destination, Edge, Map, NodeKind, Row, To, WorkloadNode, verdict_of};
use super::{FlowRef, Inputs};
use crate::classify::{Class, Classifier, DestinationPeer, HostKind, Target};
use crate::cluster::{Cluster, PodId};
use crate::eval::{self, Flow, PolicySet, evaluate_with_names};
use crate::observations::{FlowKey, Observations, PodNames};

/// Where a flow goes, before the groups are numbered.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Dest {
    /// A workload, by index into the map's workloads.
    Workload(usize),
    /// A destination group: id, kind, label, a Service's namespace.
    Group(String, NodeKind, String, Option<String>),
}

/// The fixed destination groups.
fn group(id: &str, kind: NodeKind, label: &str) -> Dest {
    Dest::Group(id.to_owned(), kind, label.to_owned(), None)
}

/// A Service's group: `svc:namespace/name`.
fn service_group(cluster: &Cluster, s: usize) -> Dest {
    let svc = &cluster.services[s];
    let label = format!("{}/{}", svc.namespace, svc.name);
    Dest::Group(
        format!("svc:{label}"),
        NodeKind::Service,
        label,
        Some(svc.namespace.clone()),
    )
}

/// An external address's group: by name, else by its /24 or /64.
fn external(ip: IpAddr, name: Option<&str>) -> Dest {
    if let Some(n) = name {
        return Dest::Group(format!("ext:{n}"), NodeKind::External, n.to_owned(), None);
    }
    let len = if ip.is_ipv4() { 24 } else { 64 };
    let net = IpNet::new(ip, len).map_or_else(|_| IpNet::from(ip), |n| n.trunc());
    let label = net.to_string();
    Dest::Group(format!("cidr:{label}"), NodeKind::Cidr, label, None)
}

/// What the build needs to place destinations.
struct Placer<'a> {
    cluster: &'a Cluster,
    /// Cluster workload → map index.
    index: &'a [usize],
    /// The API server's endpoint addresses.
    api: HashSet<IpAddr>,
}

impl Placer<'_> {
    /// The workload of the pod at `ip`, if any.
    fn pod_workload(&self, ip: IpAddr) -> Option<usize> {
        let p = self.cluster.pod_by_ip(ip)?;
        let w = self.cluster.workload_of(p)?;
        self.index.get(w).copied()
    }

    /// The node of a target, besides externals.
    fn target(&self, t: &Target) -> Option<Dest> {
        match t.peer {
            DestinationPeer::Workload(w) => self.index.get(w).map(|&i| Dest::Workload(i)),
            DestinationPeer::Host(_, HostKind::ApiServer) => {
                Some(group("api-server", NodeKind::ApiServer, "API server"))
            }
            DestinationPeer::Host(_, HostKind::Node) => {
                Some(group("nodes", NodeKind::Nodes, "nodes"))
            }
            DestinationPeer::Host(ip, HostKind::UnselectablePod) => {
                self.pod_workload(ip).map(Dest::Workload)
            }
            DestinationPeer::Host(_, HostKind::Endpoint) | DestinationPeer::External(_) => None,
        }
    }

    /// Where a flow to `dst` classified as `class` goes, and the Service it went through;
    /// `None` for what is not egress (loopback, port 0).
    fn place(
        &self,
        class: &Class,
        dst: IpAddr,
        port: u16,
        name: Option<&str>,
    ) -> Option<(Dest, Option<usize>)> {
        if crate::classify::unenforceable(dst, port).is_some() {
            return None;
        }
        if self.api.contains(&dst) {
            return Some((group("api-server", NodeKind::ApiServer, "API server"), None));
        }
        match class {
            Class::Dns(_) => Some((group("dns", NodeKind::Dns, "DNS"), None)),
            Class::Direct(t) => match t.peer {
                DestinationPeer::External(ip) => Some((external(ip, name), None)),
                DestinationPeer::Host(ip, HostKind::Endpoint) => Some((external(ip, name), None)),
                _ => Some((self.target(t).unwrap_or_else(|| external(dst, name)), None)),
            },
            Class::Service { service, targets } => {
                let svc = &self.cluster.services[*service];
                if svc.namespace == "default" && svc.name == "kubernetes" {
                    return Some((group("api-server", NodeKind::ApiServer, "API server"), None));
                }
                // One workload behind the Service: the edge goes to it, naming the Service.
                let places: BTreeSet<Option<Dest>> =
                    targets.iter().map(|t| self.target(t)).collect();
                let dest = match places.into_iter().collect::<Vec<_>>().as_slice() {
                    [Some(d @ Dest::Workload(_))] => d.clone(),
                    _ => service_group(self.cluster, *service),
                };
                Some((dest, Some(*service)))
            }
            Class::Unresolved(_) => {
                // A Service without such a port or without endpoints.
                let s = self.cluster.service_by_ip(dst)?;
                Some((service_group(self.cluster, s), Some(s)))
            }
        }
    }
}

/// Builds the whole map: every workload of `cluster`, every observed flow of `obs` placed,
/// judged and folded. See the module's documentation.
pub fn build(cluster: &Cluster, obs: &Observations, inputs: &Inputs<'_>) -> Map {
    // Workloads, sorted by namespace and `Kind/name`.
    let mut order: Vec<(String, String, usize)> = cluster
        .workloads
        .iter()
        .enumerate()
        .map(|(i, w)| {
            (
                w.namespace.clone(),
                crate::json::workload(&w.kind, &w.name),
                i,
            )
        })
        .collect();
    order.sort();
    let mut index = vec![0; cluster.workloads.len()];
    let phases: HashMap<(&str, &str), &crate::rollout::WorkloadStatus> = inputs
        .phases
        .iter()
        .map(|s| ((s.namespace.as_str(), s.workload.as_str()), s))
        .collect();
    let mut workloads = Vec::with_capacity(order.len());
    let mut namespaces: BTreeMap<String, std::ops::Range<usize>> = BTreeMap::new();
    for (i, (ns, workload, w)) in order.into_iter().enumerate() {
        index[w] = i;
        let status = phases.get(&(ns.as_str(), workload.as_str()));
        namespaces
            .entry(ns.clone())
            .and_modify(|r| r.end = i + 1)
            .or_insert(i..i + 1);
        workloads.push(WorkloadNode {
            id: format!("wl:{ns}/{workload}"),
            haystack: format!("{ns}/{workload}").to_lowercase(),
            pods: cluster.workload_pods(w).len(),
            phase: status.map(|s| s.phase),
            why: status.map(|s| s.why()),
            namespace: ns,
            workload,
        });
    }
    let api: HashSet<IpAddr> = cluster
        .endpoint_slices("default", "kubernetes")
        .iter()
        .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.iter().copied()))
        .collect();
    let placer = Placer {
        cluster,
        index: &index,
        api,
    };

    // The smallest query name whose answer gave a pod each address.
    let mut asked: HashMap<(PodId, IpAddr), &str> = HashMap::new();
    for ((pod, query), history) in &obs.history {
        for ip in history.keys() {
            asked
                .entry((*pod, ip.to_canonical()))
                .and_modify(|q| {
                    if query.as_str() < *q {
                        *q = query.as_str();
                    }
                })
                .or_insert(query.as_str());
        }
    }

    // Every flow of a pod, sorted, judged over the cores.
    let mut keys: Vec<(&FlowKey, &crate::observations::Evidence)> = obs
        .flows
        .iter()
        .filter(|(k, _)| cluster.pods.get(k.pod).is_some())
        .collect();
    keys.sort_by_key(|(k, _)| **k);
    let judge = |(k, ev): &(&FlowKey, &crate::observations::Evidence)| {
        let pod = &cluster.pods[k.pod];
        let flow = Flow {
            protocol: k.protocol,
            dst: k.dst,
            dst_port: k.port,
        };
        let denies = |set: &PolicySet| {
            let e = evaluate_with_names(cluster, set, pod, &flow, &ev.names);
            e.verdict == eval::Verdict::Deny && e.problem.is_none()
        };
        (denies(inputs.applied), inputs.proposed.map(denies))
    };
    let verdicts = crate::parallel::map(&keys, judge);

    let mut classifier = Classifier::new(cluster, inputs.classifier, obs);
    type RowKey = (usize, Dest, Protocol, IpAddr, u16);
    let mut rows: BTreeMap<RowKey, Row> = BTreeMap::new();
    for ((k, ev), (denied, would)) in keys.iter().zip(verdicts) {
        let Some(w) = cluster.workload_of(k.pod) else {
            continue;
        };
        let src = index[w];
        let dst = k.dst.to_canonical();
        let mut names = ev.names.clone();
        if let Some(more) = obs.names_by_ip.get(&dst) {
            names.extend(more.iter().cloned());
        }
        let name = asked
            .get(&(k.pod, dst))
            .copied()
            .or_else(|| names.first().map(String::as_str));
        let class = classifier.classify(dst, k.port, k.protocol);
        let Some((dest, service)) = placer.place(&class, dst, k.port, name) else {
            continue;
        };
        let pods = match obs.pods.get(k) {
            Some(p) if !p.names.is_empty() || p.more > 0 => p.clone(),
            _ => PodNames {
                names: BTreeSet::from([cluster.pods[k.pod].name.clone()]),
                more: 0,
            },
        };
        let deny = |d: bool| {
            if d {
                eval::Verdict::Deny
            } else {
                eval::Verdict::Allow
            }
        };
        match rows.entry((src, dest, k.protocol, dst, k.port)) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                let r = e.get_mut();
                crate::evidence::fold(
                    &mut r.events,
                    &mut r.first_seen,
                    &mut r.last_seen,
                    ev.count,
                    ev.first_seen,
                    ev.last_seen,
                );
                r.names.extend(names);
                r.pods.merge(&pods);
                r.applied = r.applied.max(deny(denied));
                r.proposed = r.proposed.max(would.map(deny));
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Row {
                    address: dst,
                    port: k.port,
                    protocol: k.protocol,
                    service: service.map(|s| {
                        let s = &cluster.services[s];
                        format!("{}/{}", s.namespace, s.name)
                    }),
                    events: ev.count,
                    first_seen: ev.first_seen,
                    last_seen: ev.last_seen,
                    names,
                    pods,
                    outcome: None,
                    applied: deny(denied),
                    proposed: would.map(deny),
                    drift: false,
                });
            }
        }
    }

    // Drift and outcomes, per row.
    let drifted: HashSet<&FlowRef> = inputs.drifted.iter().collect();
    let mut flow_ref = FlowRef {
        namespace: String::new(),
        workload: String::new(),
        address: IpAddr::from([0, 0, 0, 0]),
        port: 0,
        protocol: Protocol::Tcp,
    };

    // Destination groups, numbered by id.
    let mut groups: BTreeMap<String, (NodeKind, String, Option<String>)> = BTreeMap::new();
    for (_, dest, ..) in rows.keys() {
        if let Dest::Group(id, kind, label, ns) = dest
            && !groups.contains_key(id)
        {
            groups.insert(id.clone(), (*kind, label.clone(), ns.clone()));
        }
    }
    let group_index: HashMap<&str, usize> = groups
        .keys()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let to_of = |d: &Dest| match d {
        Dest::Workload(i) => (To::Workload(*i), workloads[*i].id.clone()),
        Dest::Group(id, ..) => (To::Group(group_index[id.as_str()]), id.clone()),
    };

    // Edges: rows grouped by (source, destination id), in that order.
    let mut by_edge: BTreeMap<(usize, String), (To, Vec<Row>)> = BTreeMap::new();
    for ((src, dest, ..), acc) in rows {
        let (to, to_id) = to_of(&dest);
        let mut row = acc;
        let wl = &workloads[src];
        flow_ref.namespace.clone_from(&wl.namespace);
        flow_ref.workload.clone_from(&wl.workload);
        flow_ref.address = row.address;
        flow_ref.port = row.port;
        flow_ref.protocol = row.protocol;
        row.drift = drifted.contains(&flow_ref);
        row.outcome = inputs.outcomes.and_then(|o| o.get(&flow_ref).copied());
        by_edge
            .entry((src, to_id))
            .or_insert_with(|| (to, Vec::new()))
            .1
            .push(row);
    }
    let mut edges = Vec::with_capacity(by_edge.len());
    let mut all_rows = Vec::new();
    for ((from, to_id), (to, mut rs)) in by_edge {
        rs.sort_by_key(|r| (r.protocol, r.address, r.port));
        let start = all_rows.len();
        edges.push(fold_edge(&workloads[from].id, from, to, to_id, &rs, start));
        all_rows.extend(rs);
    }

    let mut out_edges = vec![0..0; workloads.len()];
    let mut in_edges = vec![Vec::new(); workloads.len()];
    for (i, e) in edges.iter().enumerate() {
        let r = &mut out_edges[e.from];
        if r.start == r.end {
            *r = i..i + 1;
        } else {
            r.end = i + 1;
        }
        if let To::Workload(w) = e.to {
            in_edges[w].push(i);
        }
    }
    let destinations = groups
        .into_iter()
        .map(|(id, (kind, label, namespace))| Destination {
            haystack: label.to_lowercase(),
            id,
            kind,
            label,
            namespace,
        })
        .collect();
    Map {
        at: inputs.now,
        workloads,
        destinations,
        edges,
        rows: all_rows,
        out_edges,
        in_edges,
        namespaces,
    }
}

/// One edge over its rows (sorted, not empty).
fn fold_edge(
    from_id: &str,
    from: usize,
    to: To,
    to_id: String,
    rows: &[Row],
    start: usize,
) -> Edge {
    let mut ports = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    let mut events = 0u64;
    let mut first = rows.first().map(|r| r.first_seen).unwrap_or_default();
    let mut last = rows.first().map(|r| r.last_seen).unwrap_or_default();
    let mut applied = eval::Verdict::Allow;
    let mut proposed: Option<eval::Verdict> = None;
    let mut drift = false;
    let mut verdict = super::Verdict::Allowed;
    let mut pods = PodNames::default();
    let mut outcome = None;
    for r in rows {
        pods.merge(&r.pods);
        outcome = add_outcome(outcome, r.outcome);
        ports.insert((r.protocol, r.port));
        names.extend(r.names.iter().cloned());
        addresses.insert(r.address);
        crate::evidence::fold(
            &mut events,
            &mut first,
            &mut last,
            r.events,
            r.first_seen,
            r.last_seen,
        );
        applied = applied.max(r.applied);
        proposed = proposed.max(r.proposed);
        drift |= r.drift;
        verdict = verdict.max(verdict_of(r.applied, r.proposed, r.drift));
    }
    let mut haystack = String::new();
    for n in &names {
        haystack.push_str(&n.to_lowercase());
        haystack.push('\n');
    }
    for a in &addresses {
        haystack.push_str(&a.to_string());
        haystack.push('\n');
    }
    Edge {
        from,
        to,
        id: format!("{from_id}->{to_id}"),
        to_id,
        ports,
        events,
        first_seen: first,
        last_seen: last,
        names,
        addresses,
        pods,
        outcome,
        applied,
        proposed,
        drift,
        verdict,
        rows: start..start + rows.len(),
        haystack,
    }
}

/// Sums two TCP outcomes.
pub(super) fn add_outcome(a: Option<Outcome>, b: Option<Outcome>) -> Option<Outcome> {
    match (a, b) {
        (None, x) | (x, None) => x,
        (Some(a), Some(b)) => Some(Outcome {
            established: a.established.saturating_add(b.established),
            failed: a.failed.saturating_add(b.failed),
        }),
    }
}
