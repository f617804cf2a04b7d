//! The exact reachability change between two policy states, computed symbolically.
//!
//! A connection from a source pod to `ip:port/protocol` is allowed when the source's egress
//! allows it and, for a pod-network pod destination, that pod's ingress allows it: the rules of
//! [`crate::eval::evaluate`], which this module must always agree with (a property test checks
//! it against brute-force evaluation). Instead of probing, it works on sets:
//!
//! - ports are interval sets per protocol, addresses interval sets per IP family, over the
//!   whole IPv4 and IPv6 spaces;
//! - pods fall into classes that no policy can tell apart: a **source class** shares namespace,
//!   labels, hostNetwork (and then its node) and which ipBlock interval holds its address; a
//!   **destination class** (one per pod address) shares namespace, labels, container ports,
//!   family and ipBlock interval;
//! - only pairs where the states differ are evaluated: a source class whose egress policies are
//!   the same in both states can only change towards destinations whose ingress changed, and
//!   of those only the ones some rule's peer can match (and vice versa);
//! - non-pod destinations are evaluated per interval between the changed rules' ipBlock
//!   boundaries, then cut around the pod addresses and Service addresses.
//!
//! What is a destination:
//! - a Service address is never one: a connection to it is a connection to its backends on
//!   their targetPort, which appear as pod destinations (or addresses); the ports of NodePort
//!   Services on node addresses are left out of address ranges for the same reason;
//! - a pod-network pod is named by its workload ([`Target::Workload`]), or by itself
//!   ([`Target::Pod`]) when its workload's pods change differently, or by its own address
//!   ([`Target::Range`] of one address) in the rare case that its addresses (dual stack) change
//!   differently;
//! - everything else (nodes, hostNetwork pods, the world) is an address range, maximal for each
//!   (change, protocol, port range). IPv4-mapped IPv6 addresses are evaluated as IPv4 by the
//!   evaluator, so they are left out of the IPv6 ranges.
//!
//! Sources are workloads, or single pods ([`Source::Pod`]) for the entries that not every pod of
//! their workload shares.

mod sets;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use leash_records::Protocol;
use serde::Serialize;

use crate::cluster::{Cluster, LabelSelector, Labels, NAMESPACE_NAME_LABEL, PodId, PodInfo};
use crate::eval::{
    CompiledPolicy, NamespaceMatch, PodView, PolicyId, PolicyPeer, PolicyRule, PolicySet, PortMatch,
};
use sets::{Family, PortSet, addr, key, merge_ranges, without};

/// Who connects: a workload, or one pod of it when its pods would change differently.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Source {
    /// Every pod of a workload.
    Workload {
        /// The namespace.
        namespace: String,
        /// `Kind/name`; a bare pod is `Pod/<name>`.
        workload: String,
    },
    /// One pod.
    Pod {
        /// The namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
    },
}

/// Where to: a workload's pods, one pod, or a range of non-pod addresses.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Target {
    /// Every pod-network pod of a workload that has an address.
    Workload {
        /// The namespace.
        namespace: String,
        /// `Kind/name`; a bare pod is `Pod/<name>`.
        workload: String,
    },
    /// One pod (every address of it).
    Pod {
        /// The namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
    },
    /// An inclusive range of addresses of one family.
    Range {
        /// The first address.
        first: IpAddr,
        /// The last address.
        last: IpAddr,
    },
}

/// The direction of a verdict change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Change {
    /// Denied in `from`, allowed in `to`.
    NewlyAllowed,
    /// Allowed in `from`, denied in `to`.
    NewlyDenied,
}

/// One change: from `source` to `destination` on `protocol` ports `port_from..=port_to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ReachChange {
    /// Who connects.
    pub source: Source,
    /// Which way the verdict changes.
    pub change: Change,
    /// The protocol.
    pub protocol: Protocol,
    /// The first port of the range.
    pub port_from: u16,
    /// The last port of the range (inclusive).
    pub port_to: u16,
    /// Where to.
    pub destination: Target,
}

/// (change, protocol, first port, last port): one entry of a change set.
type Entry = (Change, Protocol, u16, u16);

/// Port ranges held by members: (member, first port, last port).
type Held = Vec<(usize, u16, u16)>;

/// Inclusive port ranges.
type Ports = Vec<(u16, u16)>;

/// Both states, indexed 0 (`from`) and 1 (`to`).
const STATES: [usize; 2] = [0, 1];

/// Every reachability change from `from` to `to`, sorted, adjacent ranges with the same change
/// merged.
pub fn reachability(cluster: &Cluster, from: &PolicySet, to: &PolicySet) -> Vec<ReachChange> {
    let e = Engine::new(cluster, [from, to]);
    let mut per_source: Vec<BTreeSet<(Entry, Target)>> = vec![BTreeSet::new(); e.sources.len()];
    let pairs: Vec<(usize, Dests)> = e.pairs().into_iter().collect();
    // Source classes are independent: spread them over the available cores.
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let chunk = pairs.len().div_ceil(threads).max(1);
    let towards_pods: Vec<(usize, BTreeSet<(Entry, Target)>)> = std::thread::scope(|s| {
        let handles: Vec<_> = pairs
            .chunks(chunk)
            .map(|part| {
                let e = &e;
                s.spawn(move || {
                    part.iter()
                        .map(|(sk, dests)| (*sk, e.towards_pods(*sk, dests)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                // A panic here is a bug; re-raise it on this thread.
                h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
            })
            .collect()
    });
    for (sk, found) in towards_pods {
        per_source[sk] = found;
    }
    // Towards addresses only egress counts: the same for every class with the same egress
    // policies (pods of a StatefulSet, say, each with its own labels).
    let mut external: HashMap<[Vec<&PolicyId>; 2], BTreeSet<(Entry, Target)>> = HashMap::new();
    for (sk, out) in per_source.iter_mut().enumerate() {
        if e.egress_changed(sk) {
            let g = &e.groups[e.sources[sk].group];
            let key = g
                .egress
                .each_ref()
                .map(|ps| ps.iter().map(|p| &p.id).collect());
            let found = external
                .entry(key)
                .or_insert_with(|| e.external_changes(sk));
            out.extend(found.iter().cloned());
        }
    }
    e.by_source_workload(&per_source)
}

/// The policies selecting one (namespace, labels) group, per state.
struct Group<'a> {
    labels: &'a Labels,
    egress: [Vec<&'a CompiledPolicy>; 2],
    ingress: [Vec<&'a CompiledPolicy>; 2],
    egress_changed: bool,
    ingress_changed: bool,
}

/// A source class: pods no policy can tell apart as sources.
struct SourceClass {
    group: usize,
    /// The node of a hostNetwork source (ingress from a pod's own node is always allowed).
    host_node: Option<Option<String>>,
    /// The member pods; the first is the representative.
    pods: Vec<PodId>,
}

/// A destination class: pod addresses no policy can tell apart.
struct DestClass {
    group: usize,
    family: Family,
    /// Indices into `Engine::units`; the first is the representative.
    units: Vec<usize>,
}

/// Either every destination class, or some.
enum Dests {
    All,
    Some(BTreeSet<usize>),
}

struct Engine<'a> {
    cluster: &'a Cluster,
    groups: Vec<Group<'a>>,
    sources: Vec<SourceClass>,
    dests: Vec<DestClass>,
    /// Pod destinations: (pod, address).
    units: Vec<(PodId, IpAddr)>,
    /// How many units each pod and each workload has.
    units_of_pod: HashMap<PodId, usize>,
    units_of_workload: HashMap<usize, usize>,
    /// ipBlock boundaries of both states, per family: the start of every interval.
    bounds: [Vec<u128>; 2],
    dests_by_namespace: HashMap<&'a str, Vec<usize>>,
    dests_by_atom: BTreeMap<(Family, usize), Vec<usize>>,
    sources_by_namespace: HashMap<&'a str, Vec<usize>>,
    sources_by_atom: BTreeMap<(Family, usize), Vec<usize>>,
    namespace_cache: std::sync::Mutex<HashMap<LabelSelector, Vec<&'a str>>>,
    /// Addresses that are not destinations of their own: pod addresses and Service addresses
    /// (and IPv4-mapped IPv6), per family, sorted and merged.
    holes: [Vec<(u128, u128)>; 2],
    /// Node addresses, where NodePort ports lead to Services, per family, sorted.
    node_addresses: [Vec<u128>; 2],
    node_ports: PortSet,
}

impl<'a> Engine<'a> {
    fn new(cluster: &'a Cluster, states: [&'a PolicySet; 2]) -> Self {
        let mut by_ns: [HashMap<&'a str, Vec<&'a CompiledPolicy>>; 2] =
            [HashMap::new(), HashMap::new()];
        let mut bounds: [Vec<u128>; 2] = [Vec::new(), Vec::new()];
        for s in STATES {
            for p in states[s].iter() {
                by_ns[s].entry(&p.id.namespace).or_default().push(p);
                for rule in p.egress.iter().chain(&p.ingress).flatten() {
                    for peer in &rule.peers {
                        if let PolicyPeer::IpBlock { cidr, except } = peer {
                            for net in std::iter::once(cidr).chain(except) {
                                push_bounds(&mut bounds, net);
                            }
                        }
                    }
                }
            }
        }
        for b in &mut bounds {
            b.sort_unstable();
            b.dedup();
        }
        let mut e = Engine {
            cluster,
            groups: Vec::new(),
            sources: Vec::new(),
            dests: Vec::new(),
            units: Vec::new(),
            units_of_pod: HashMap::new(),
            units_of_workload: HashMap::new(),
            bounds,
            dests_by_namespace: HashMap::new(),
            dests_by_atom: BTreeMap::new(),
            sources_by_namespace: HashMap::new(),
            sources_by_atom: BTreeMap::new(),
            namespace_cache: std::sync::Mutex::new(HashMap::new()),
            holes: [Vec::new(), Vec::new()],
            node_addresses: [Vec::new(), Vec::new()],
            node_ports: PortSet::empty(),
        };

        // Groups of pods by (namespace, labels): what selectors see.
        let mut group_of: HashMap<(&str, &Labels), usize> = HashMap::new();
        let mut pod_group = Vec::with_capacity(cluster.pods.len());
        for pod in &cluster.pods {
            let k = (pod.namespace.as_str(), &pod.labels);
            let next = e.groups.len();
            let g = *group_of.entry(k).or_insert(next);
            if g == next {
                let select = |s: usize, egress: bool| -> Vec<&CompiledPolicy> {
                    by_ns[s]
                        .get(pod.namespace.as_str())
                        .into_iter()
                        .flatten()
                        .copied()
                        .filter(|p| {
                            let dir = if egress { &p.egress } else { &p.ingress };
                            dir.is_some() && p.pod_selector.matches(&pod.labels)
                        })
                        .collect()
                };
                let egress = [select(0, true), select(1, true)];
                let ingress = [select(0, false), select(1, false)];
                e.groups.push(Group {
                    labels: &pod.labels,
                    egress_changed: !same_rules(&egress, true),
                    ingress_changed: !same_rules(&ingress, false),
                    egress,
                    ingress,
                });
            }
            pod_group.push(g);
        }

        // Source classes.
        let mut source_of: HashMap<SourceKey, usize> = HashMap::new();
        for (pid, pod) in cluster.pods.iter().enumerate() {
            let atoms = Family::ALL.map(|f| source_ip(pod, f).map(|ip| e.atom(ip)));
            let k = SourceKey {
                group: pod_group[pid],
                host_node: pod.host_network.then(|| pod.node.clone()),
                atoms,
            };
            let next = e.sources.len();
            let sk = *source_of.entry(k.clone()).or_insert(next);
            if sk == next {
                e.sources.push(SourceClass {
                    group: k.group,
                    host_node: k.host_node,
                    pods: Vec::new(),
                });
                if !pod.host_network {
                    e.sources_by_namespace
                        .entry(&pod.namespace)
                        .or_default()
                        .push(sk);
                }
                for (f, a) in Family::ALL.iter().zip(atoms) {
                    if let Some(a) = a {
                        e.sources_by_atom.entry((*f, a)).or_default().push(sk);
                    }
                }
            }
            e.sources[sk].pods.push(pid);
        }

        // Destination classes: every address a pod-network pod owns (as the evaluator's
        // lookup sees it) that is not a Service address.
        let mut dest_of: HashMap<DestKey<'_>, usize> = HashMap::new();
        let mut holes: [Vec<(u128, u128)>; 2] = [Vec::new(), Vec::new()];
        for (pid, pod) in cluster.pods.iter().enumerate() {
            if pod.host_network {
                continue;
            }
            for &ip in &pod.ips {
                if ip.to_canonical() != ip
                    || cluster.pod_by_ip(ip) != Some(pid)
                    || cluster.service_by_ip(ip).is_some()
                {
                    continue;
                }
                let (f, x) = key(ip);
                holes[f.index()].push((x, x));
                let k = DestKey {
                    group: pod_group[pid],
                    ports: pod
                        .ports
                        .iter()
                        .filter_map(|p| Some((p.name.as_deref()?, p.protocol, p.port)))
                        .collect(),
                    family: f,
                    atom: e.atom(ip),
                };
                let unit = e.units.len();
                e.units.push((pid, ip));
                *e.units_of_pod.entry(pid).or_default() += 1;
                if let Some(w) = cluster.workload_of(pid) {
                    *e.units_of_workload.entry(w).or_default() += 1;
                }
                let next = e.dests.len();
                let dk = *dest_of.entry(k).or_insert(next);
                if dk == next {
                    e.dests.push(DestClass {
                        group: pod_group[pid],
                        family: f,
                        units: Vec::new(),
                    });
                    e.dests_by_namespace
                        .entry(&pod.namespace)
                        .or_default()
                        .push(dk);
                    e.dests_by_atom.entry((f, e.atom(ip))).or_default().push(dk);
                }
                e.dests[dk].units.push(unit);
            }
        }
        for s in &cluster.services {
            for &ip in s.cluster_ips.iter().chain(&s.external_ips) {
                let (f, x) = key(ip);
                holes[f.index()].push((x, x));
            }
        }
        // ::ffff:0:0/96: the evaluator reads these as IPv4 addresses.
        holes[1].push((0xffff_0000_0000, 0xffff_ffff_ffff));
        e.holes = holes.map(merge_ranges);

        // NodePorts: on a node's address they lead to a Service, not to the node.
        for s in &cluster.services {
            for p in &s.ports {
                if let Some(np) = p.node_port {
                    e.node_ports.add(p.protocol, np, np);
                }
            }
        }
        let node_ips = cluster.nodes.iter().flat_map(|n| n.ips.iter()).chain(
            cluster
                .pods
                .iter()
                .filter(|p| p.host_network)
                .flat_map(|p| p.ips.iter()),
        );
        for ip in node_ips {
            let (f, x) = key(*ip);
            e.node_addresses[f.index()].push(x);
        }
        for v in &mut e.node_addresses {
            v.sort_unstable();
            v.dedup();
        }
        e
    }

    /// The ipBlock interval holding `ip`: addresses in the same one are in the same blocks.
    fn atom(&self, ip: IpAddr) -> usize {
        let (f, x) = key(ip);
        self.bounds[f.index()].partition_point(|b| *b <= x)
    }

    fn egress_changed(&self, sk: usize) -> bool {
        let s = &self.sources[sk];
        s.host_node.is_none() && self.groups[s.group].egress_changed
    }

    /// The namespaces a peer's namespace part matches.
    fn namespaces(&self, m: &'a NamespaceMatch) -> Vec<&'a str> {
        match m {
            NamespaceMatch::Own(ns) => vec![ns.as_str()],
            NamespaceMatch::Selector(sel) => {
                // A poisoned cache only means another thread panicked: its entries are whole.
                let mut cache = self
                    .namespace_cache
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                cache
                    .entry(sel.clone())
                    .or_insert_with(|| {
                        self.cluster
                            .namespaces
                            .values()
                            .filter(|n| sel.matches(&n.labels))
                            .map(|n| n.name.as_str())
                            .collect()
                    })
                    .clone()
            }
        }
    }

    /// Every (source class, destination classes) pair whose verdicts may differ.
    fn pairs(&self) -> BTreeMap<usize, Dests> {
        let mut pairs: BTreeMap<usize, Dests> = BTreeMap::new();
        // Sources whose egress changed: every destination some peer of theirs can match.
        for sk in 0..self.sources.len() {
            if !self.egress_changed(sk) {
                continue;
            }
            let g = &self.groups[self.sources[sk].group];
            let Some(rules) = changed_rules(&g.egress, true) else {
                pairs.insert(sk, Dests::All);
                continue;
            };
            let mut set = BTreeSet::new();
            for peer in rules.iter().flat_map(|r| &r.peers) {
                self.dests_for_peer(peer, &mut set);
            }
            pairs.insert(sk, Dests::Some(set));
        }
        // Destinations whose ingress changed: every source some peer of theirs can match (the
        // same for every destination class of a group and family).
        let mut candidates: HashMap<(usize, Family), Vec<usize>> = HashMap::new();
        for (dk, d) in self.dests.iter().enumerate() {
            let g = &self.groups[d.group];
            if !g.ingress_changed {
                continue;
            }
            let sks = candidates
                .entry((d.group, d.family))
                .or_insert_with(|| match changed_rules(&g.ingress, false) {
                    None => (0..self.sources.len()).collect(),
                    Some(rules) => {
                        let mut set = BTreeSet::new();
                        for peer in rules.iter().flat_map(|r| &r.peers) {
                            self.sources_for_peer(peer, d.family, &mut set);
                        }
                        set.into_iter().collect()
                    }
                });
            for &sk in sks.iter() {
                match pairs
                    .entry(sk)
                    .or_insert_with(|| Dests::Some(BTreeSet::new()))
                {
                    Dests::All => {}
                    Dests::Some(set) => {
                        set.insert(dk);
                    }
                }
            }
        }
        pairs
    }

    fn dests_for_peer(&self, peer: &'a PolicyPeer, out: &mut BTreeSet<usize>) {
        match peer {
            PolicyPeer::Pods { namespaces, pods } => {
                for ns in self.namespaces(namespaces) {
                    for &dk in self.dests_by_namespace.get(ns).into_iter().flatten() {
                        if pods.matches(self.groups[self.dests[dk].group].labels) {
                            out.insert(dk);
                        }
                    }
                }
            }
            PolicyPeer::IpBlock { cidr, except } => {
                for dk in self.in_block(&self.dests_by_atom, cidr) {
                    let (_, ip) = self.units[self.dests[dk].units[0]];
                    if PolicyPeer::block_contains(cidr, except, ip) {
                        out.insert(dk);
                    }
                }
            }
        }
    }

    fn sources_for_peer(&self, peer: &'a PolicyPeer, family: Family, out: &mut BTreeSet<usize>) {
        match peer {
            PolicyPeer::Pods { namespaces, pods } => {
                for ns in self.namespaces(namespaces) {
                    for &sk in self.sources_by_namespace.get(ns).into_iter().flatten() {
                        if pods.matches(self.groups[self.sources[sk].group].labels) {
                            out.insert(sk);
                        }
                    }
                }
            }
            PolicyPeer::IpBlock { cidr, except } => {
                for sk in self.in_block(&self.sources_by_atom, cidr) {
                    let pod = &self.cluster.pods[self.sources[sk].pods[0]];
                    if source_ip(pod, family)
                        .is_some_and(|ip| PolicyPeer::block_contains(cidr, except, ip))
                    {
                        out.insert(sk);
                    }
                }
            }
        }
    }

    /// The classes indexed under the ipBlock intervals inside `cidr`.
    fn in_block(
        &self,
        index: &BTreeMap<(Family, usize), Vec<usize>>,
        cidr: &ipnet::IpNet,
    ) -> Vec<usize> {
        let first = self.atom(cidr.network());
        let last = self.atom(cidr.broadcast());
        let (f, _) = key(cidr.network());
        index
            .range((f, first)..=(f, last))
            .flat_map(|(_, v)| v.iter().copied())
            .collect()
    }

    /// The change set between one source class and one destination class (as if on
    /// different nodes: `pod_targets` leaves out a hostNetwork source's own node).
    fn pair_changes(&self, sk: usize, dk: usize) -> Vec<Entry> {
        let s = &self.sources[sk];
        let src = &self.cluster.pods[s.pods[0]];
        let d = &self.dests[dk];
        let (dpid, dip) = self.units[d.units[0]];
        let dst = &self.cluster.pods[dpid];
        let sg = &self.groups[s.group];
        let dg = &self.groups[d.group];
        let src_ip = source_ip(src, d.family);
        let verdicts = STATES.map(|st| {
            let egress = if s.host_node.is_some() || sg.egress[st].is_empty() {
                PortSet::full()
            } else {
                allowed(
                    &sg.egress[st],
                    true,
                    |p| self.egress_peer(p, Some(dst), dip),
                    Some(dst),
                )
            };
            if egress.is_empty() {
                return egress;
            }
            let ingress = if dg.ingress[st].is_empty() {
                PortSet::full()
            } else {
                allowed(
                    &dg.ingress[st],
                    false,
                    |p| self.ingress_peer(p, src, src_ip),
                    Some(dst),
                )
            };
            egress.intersect(&ingress)
        });
        entries(&verdicts)
    }

    fn egress_peer(&self, peer: &PolicyPeer, dst: Option<&PodInfo>, ip: IpAddr) -> bool {
        match peer {
            PolicyPeer::IpBlock { cidr, except } => PolicyPeer::block_contains(cidr, except, ip),
            PolicyPeer::Pods { namespaces, pods } => dst.is_some_and(|p| {
                self.namespace_matches(namespaces, &p.namespace) && pods.matches(&p.labels)
            }),
        }
    }

    fn ingress_peer(&self, peer: &PolicyPeer, src: &PodInfo, src_ip: Option<IpAddr>) -> bool {
        match peer {
            PolicyPeer::IpBlock { cidr, except } => {
                src_ip.is_some_and(|ip| PolicyPeer::block_contains(cidr, except, ip))
            }
            PolicyPeer::Pods { namespaces, pods } => {
                !src.host_network
                    && self.namespace_matches(namespaces, &src.namespace)
                    && pods.matches(&src.labels)
            }
        }
    }

    fn namespace_matches(&self, m: &NamespaceMatch, ns: &str) -> bool {
        match m {
            NamespaceMatch::Own(own) => own == ns,
            NamespaceMatch::Selector(sel) => match self.cluster.namespaces.get(ns) {
                Some(n) => sel.matches(&n.labels),
                None => sel.matches(&Labels::from([(
                    NAMESPACE_NAME_LABEL.to_string(),
                    ns.to_string(),
                )])),
            },
        }
    }

    /// The changes of a source class towards the destination classes paired with it.
    fn towards_pods(&self, sk: usize, dests: &Dests) -> BTreeSet<(Entry, Target)> {
        let changes = |dk: usize| {
            let entries = self.pair_changes(sk, dk);
            (!entries.is_empty()).then_some((dk, entries))
        };
        let found: Vec<(usize, Vec<Entry>)> = match dests {
            Dests::All => (0..self.dests.len()).filter_map(changes).collect(),
            Dests::Some(set) => set.iter().copied().filter_map(changes).collect(),
        };
        let mut out = BTreeSet::new();
        self.pod_targets(sk, &found, &mut out);
        out
    }

    /// Turns a source class's changes towards destination classes into targets. Along the
    /// port axis each piece is shared by a fixed set of pod addresses; a piece names a workload
    /// when every address of the workload shares it, else its pods, else single addresses.
    fn pod_targets(
        &self,
        sk: usize,
        found: &[(usize, Vec<Entry>)],
        out: &mut BTreeSet<(Entry, Target)>,
    ) {
        let host_node = self.sources[sk].host_node.as_ref();
        let mut items: BTreeMap<(Change, Protocol), Held> = BTreeMap::new();
        for (dk, entries) in found {
            for &unit in &self.dests[*dk].units {
                let pod = &self.cluster.pods[self.units[unit].0];
                // Ingress from a pod's own node is always allowed: a hostNetwork source
                // changes nothing towards the pods of its node.
                if let Some(Some(node)) = host_node
                    && pod.node.as_deref() == Some(node.as_str())
                {
                    continue;
                }
                for &(c, p, lo, hi) in entries {
                    items.entry((c, p)).or_default().push((unit, lo, hi));
                }
            }
        }
        for ((c, p), list) in items {
            for (lo, hi, units) in segment(list) {
                for t in self.targets_of(&units) {
                    out.insert(((c, p, lo, hi), t));
                }
            }
        }
    }

    /// Names a set of pod addresses: whole workloads, else whole pods, else addresses.
    fn targets_of(&self, units: &[usize]) -> Vec<Target> {
        let mut out = Vec::new();
        let mut by_workload: BTreeMap<usize, BTreeMap<PodId, Vec<IpAddr>>> = BTreeMap::new();
        for &unit in units {
            let (pid, ip) = self.units[unit];
            let w = self.cluster.workload_of(pid).unwrap_or(usize::MAX);
            by_workload
                .entry(w)
                .or_default()
                .entry(pid)
                .or_default()
                .push(ip);
        }
        for (w, pods) in by_workload {
            let count: usize = pods.values().map(Vec::len).sum();
            if let Some(wl) = self.cluster.workloads.get(w)
                && self.units_of_workload.get(&w) == Some(&count)
            {
                out.push(Target::Workload {
                    namespace: wl.namespace.clone(),
                    workload: crate::json::workload(&wl.kind, &wl.name),
                });
                continue;
            }
            for (pid, ips) in pods {
                let pod = &self.cluster.pods[pid];
                if self.units_of_pod.get(&pid) == Some(&ips.len()) {
                    out.push(Target::Pod {
                        namespace: pod.namespace.clone(),
                        pod: pod.name.clone(),
                    });
                } else {
                    out.extend(ips.into_iter().map(|ip| Target::Range {
                        first: ip,
                        last: ip,
                    }));
                }
            }
        }
        out
    }

    /// The changes of a source class (whose egress changed) towards non-pod addresses.
    fn external_changes(&self, sk: usize) -> BTreeSet<(Entry, Target)> {
        let mut out = BTreeSet::new();
        let g = &self.groups[self.sources[sk].group];
        // The intervals between this class's own ipBlock boundaries.
        let mut bounds: [Vec<u128>; 2] = [Vec::new(), Vec::new()];
        for st in STATES {
            for rule in g.egress[st].iter().flat_map(|p| direction(p, true)) {
                for peer in &rule.peers {
                    if let PolicyPeer::IpBlock { cidr, except } = peer {
                        for net in std::iter::once(cidr).chain(except) {
                            push_bounds(&mut bounds, net);
                        }
                    }
                }
            }
        }
        for f in Family::ALL {
            let mut starts = std::mem::take(&mut bounds[f.index()]);
            starts.push(0);
            starts.sort_unstable();
            starts.dedup();
            let mut runs = Runs::default();
            for (i, &lo) in starts.iter().enumerate() {
                let hi = starts.get(i + 1).map_or(f.max(), |next| next - 1);
                let ip = addr(f, lo);
                let verdicts = STATES.map(|st| {
                    if g.egress[st].is_empty() {
                        PortSet::full()
                    } else {
                        allowed(&g.egress[st], true, |p| self.egress_peer(p, None, ip), None)
                    }
                });
                if verdicts[0] == verdicts[1] {
                    continue;
                }
                let plain = entries(&verdicts);
                let cut = verdicts.clone().map(|v| v.minus(&self.node_ports));
                let at_node = entries(&cut);
                for (plo, phi) in without(lo, hi, &self.holes[f.index()]) {
                    // On a node's address, NodePorts lead to Services: leave them out.
                    let nodes: &[u128] = if self.node_ports.is_empty() {
                        &[]
                    } else {
                        let n = &self.node_addresses[f.index()];
                        let a = n.partition_point(|x| *x < plo);
                        let z = n.partition_point(|x| *x <= phi);
                        &n[a..z]
                    };
                    let mut cur = Some(plo);
                    for &n in nodes {
                        let c = cur.unwrap_or(n);
                        if n > c {
                            runs.add(c, n - 1, &plain, f, &mut out);
                        }
                        runs.add(n, n, &at_node, f, &mut out);
                        cur = n.checked_add(1);
                    }
                    if let Some(c) = cur
                        && c <= phi
                    {
                        runs.add(c, phi, &plain, f, &mut out);
                    }
                }
            }
            runs.flush(f, &mut out);
        }
        out
    }

    /// Per source workload: along the port axis of each (change, protocol, target), a piece
    /// every pod shares goes to the workload, the others to the pods that have it.
    fn by_source_workload(&self, per_source: &[BTreeSet<(Entry, Target)>]) -> Vec<ReachChange> {
        let mut class_of = vec![0usize; self.cluster.pods.len()];
        for (sk, s) in self.sources.iter().enumerate() {
            for &pid in &s.pods {
                class_of[pid] = sk;
            }
        }
        let mut groups: Vec<(Option<usize>, Vec<PodId>)> = (0..self.cluster.workloads.len())
            .map(|w| (Some(w), self.cluster.workload_pods(w).to_vec()))
            .collect();
        let mut seen = vec![false; self.cluster.pods.len()];
        for &p in groups.iter().flat_map(|(_, pods)| pods) {
            seen[p] = true;
        }
        // A pod the model left without a workload (not expected) is its own source.
        groups.extend(
            seen.iter()
                .enumerate()
                .filter(|(_, s)| !**s)
                .map(|(pid, _)| (None, vec![pid])),
        );
        let mut out: BTreeMap<(Source, Change, Protocol, Target), Ports> = BTreeMap::new();
        for (w, pods) in groups {
            let mut members: BTreeMap<usize, Vec<PodId>> = BTreeMap::new();
            for &p in &pods {
                members.entry(class_of[p]).or_default().push(p);
            }
            let (classes, pods_of_class): (Vec<usize>, Vec<Vec<PodId>>) =
                members.into_iter().unzip();
            if classes.iter().all(|c| per_source[*c].is_empty()) {
                continue;
            }
            let workload =
                w.and_then(|w| self.cluster.workloads.get(w))
                    .map(|wl| Source::Workload {
                        namespace: wl.namespace.clone(),
                        workload: crate::json::workload(&wl.kind, &wl.name),
                    });
            let mut items: BTreeMap<(Change, Protocol, &Target), Held> = BTreeMap::new();
            for (i, c) in classes.iter().enumerate() {
                for ((chg, proto, lo, hi), t) in &per_source[*c] {
                    items
                        .entry((*chg, *proto, t))
                        .or_default()
                        .push((i, *lo, *hi));
                }
            }
            for ((chg, proto, t), list) in items {
                for (lo, hi, members) in segment(list) {
                    let sources: Vec<Source> = match &workload {
                        Some(src) if members.len() == classes.len() => vec![src.clone()],
                        _ => members
                            .iter()
                            .flat_map(|m| &pods_of_class[*m])
                            .map(|&pid| {
                                let p = &self.cluster.pods[pid];
                                Source::Pod {
                                    namespace: p.namespace.clone(),
                                    pod: p.name.clone(),
                                }
                            })
                            .collect(),
                    };
                    for src in sources {
                        out.entry((src, chg, proto, t.clone()))
                            .or_default()
                            .push((lo, hi));
                    }
                }
            }
        }
        let mut changes: Vec<ReachChange> = Vec::new();
        for ((source, change, protocol, destination), ranges) in out {
            for (port_from, port_to) in merge_ports(ranges) {
                changes.push(ReachChange {
                    source: source.clone(),
                    change,
                    protocol,
                    port_from,
                    port_to,
                    destination: destination.clone(),
                });
            }
        }
        changes.sort();
        changes.dedup();
        changes
    }
}

/// Splits the port ranges of several members into pieces each held by a fixed set of members
/// (sorted), merging adjacent pieces held by the same set.
fn segment(mut items: Held) -> Vec<(u16, u16, Vec<usize>)> {
    items.sort_unstable();
    let mut cuts: Vec<u32> = items
        .iter()
        .flat_map(|&(_, lo, hi)| [u32::from(lo), u32::from(hi) + 1])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); cuts.len().saturating_sub(1)];
    for &(m, lo, hi) in &items {
        let first = cuts.partition_point(|c| *c < u32::from(lo));
        let end = cuts.partition_point(|c| *c <= u32::from(hi));
        for piece in &mut members[first..end] {
            if piece.last() != Some(&m) {
                piece.push(m);
            }
        }
    }
    let mut out: Vec<(u16, u16, Vec<usize>)> = Vec::new();
    for (i, set) in members.into_iter().enumerate() {
        if set.is_empty() {
            continue;
        }
        let lo = u16::try_from(cuts[i]).unwrap_or(u16::MAX);
        let hi = u16::try_from(cuts[i + 1] - 1).unwrap_or(u16::MAX);
        match out.last_mut() {
            Some(last) if last.2 == set && u32::from(last.1) + 1 == u32::from(lo) => last.1 = hi,
            _ => out.push((lo, hi, set)),
        }
    }
    out
}

/// Sorted port ranges with overlapping and adjacent ones merged.
fn merge_ports(mut v: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    v.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(v.len());
    for (lo, hi) in v {
        match out.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct SourceKey {
    group: usize,
    host_node: Option<Option<String>>,
    atoms: [Option<usize>; 2],
}

#[derive(PartialEq, Eq, Hash)]
struct DestKey<'a> {
    group: usize,
    ports: Vec<(&'a str, Protocol, u16)>,
    family: Family,
    atom: usize,
}

/// Open address runs per entry, so that adjacent pieces with the same entry merge.
#[derive(Default)]
struct Runs {
    open: BTreeMap<Entry, (u128, u128)>,
}

impl Runs {
    fn add(
        &mut self,
        lo: u128,
        hi: u128,
        entries: &[Entry],
        f: Family,
        out: &mut BTreeSet<(Entry, Target)>,
    ) {
        for e in entries {
            match self.open.get_mut(e) {
                Some(run) if run.1.checked_add(1) == Some(lo) => run.1 = hi,
                Some(run) => {
                    let old = std::mem::replace(run, (lo, hi));
                    out.insert((*e, range(f, old)));
                }
                None => {
                    self.open.insert(*e, (lo, hi));
                }
            }
        }
    }

    fn flush(&mut self, f: Family, out: &mut BTreeSet<(Entry, Target)>) {
        for (e, run) in std::mem::take(&mut self.open) {
            out.insert((e, range(f, run)));
        }
    }
}

fn range(f: Family, (lo, hi): (u128, u128)) -> Target {
    Target::Range {
        first: addr(f, lo),
        last: addr(f, hi),
    }
}

/// The entries of a change from `v[0]` (from) to `v[1]` (to).
fn entries(v: &[PortSet; 2]) -> Vec<Entry> {
    let allowed = v[1].minus(&v[0]);
    let denied = v[0].minus(&v[1]);
    allowed
        .ranges()
        .map(|(p, a, b)| (Change::NewlyAllowed, p, a, b))
        .chain(
            denied
                .ranges()
                .map(|(p, a, b)| (Change::NewlyDenied, p, a, b)),
        )
        .collect()
}

/// The ports the rules of `policies` (one direction) allow towards a destination, given which
/// peers match it; `dst` resolves named ports (`None`: not a pod-network pod).
fn allowed(
    policies: &[&CompiledPolicy],
    egress: bool,
    peer_matches: impl Fn(&PolicyPeer) -> bool,
    dst: Option<&PodInfo>,
) -> PortSet {
    let mut out = PortSet::empty();
    for rule in policies.iter().flat_map(|p| direction(p, egress)) {
        if rule.peers.is_empty() || rule.peers.iter().any(&peer_matches) {
            out.union_with(&rule_ports(rule, dst));
            if out.is_full() {
                break;
            }
        }
    }
    out
}

fn direction(p: &CompiledPolicy, egress: bool) -> &[PolicyRule] {
    let rules = if egress { &p.egress } else { &p.ingress };
    rules.as_deref().unwrap_or_default()
}

fn rule_ports(rule: &PolicyRule, dst: Option<&PodInfo>) -> PortSet {
    if rule.ports.is_empty() {
        return PortSet::full();
    }
    let mut out = PortSet::empty();
    for pr in &rule.ports {
        match &pr.port {
            PortMatch::Any => out.add_protocol(pr.protocol),
            PortMatch::Range(a, b) => out.add(pr.protocol, *a, *b),
            PortMatch::Named(name) => {
                if let Some(port) = dst.and_then(|d| d.named_port(name, pr.protocol)) {
                    out.add(pr.protocol, port, port);
                }
            }
        }
    }
    out
}

/// Whether the policies of one direction mean the same in both states.
fn same_rules(p: &[Vec<&CompiledPolicy>; 2], egress: bool) -> bool {
    p[0].len() == p[1].len()
        && p[0]
            .iter()
            .zip(&p[1])
            .all(|(a, b)| a.id == b.id && direction(a, egress) == direction(b, egress))
}

/// The rules of both states when every peer-less destination is denied in both (both states
/// isolate, every rule names peers); `None` when any destination may change.
fn changed_rules<'p>(
    p: &[Vec<&'p CompiledPolicy>; 2],
    egress: bool,
) -> Option<Vec<&'p PolicyRule>> {
    if p[0].is_empty() || p[1].is_empty() {
        return None;
    }
    let rules: Vec<&PolicyRule> = p
        .iter()
        .flatten()
        .copied()
        .flat_map(|pol| direction(pol, egress))
        .collect();
    rules.iter().all(|r| !r.peers.is_empty()).then_some(rules)
}

/// The address a pod connects from towards a destination of `family` (the evaluator's rule:
/// its first address of that family).
fn source_ip(pod: &PodInfo, family: Family) -> Option<IpAddr> {
    pod.ips
        .iter()
        .map(|ip| ip.to_canonical())
        .find(|ip| key(*ip).0 == family)
}

fn push_bounds(bounds: &mut [Vec<u128>; 2], net: &ipnet::IpNet) {
    let (f, lo) = key(net.network());
    let (_, hi) = key(net.broadcast());
    bounds[f.index()].push(lo);
    if hi < f.max() {
        bounds[f.index()].push(hi + 1);
    }
}
