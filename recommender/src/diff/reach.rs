//! The exact reachability change between two policy states, computed symbolically.
//!
//! A connection from a source pod to `ip:port/protocol` is allowed when the source's egress
//! allows it and, for a pod-network pod destination, that pod's ingress allows it: the rules of
//! [`crate::eval::evaluate`], which this module must always agree with (a property test checks
//! it against brute-force evaluation). Each direction follows the evaluator's full precedence:
//! the ClusterNetworkPolicy Admin tier, then the NetworkPolicies when any selects the pod, then
//! the Baseline tier, then allow (`tiers`); `domainNames` peers match nothing, as `evaluate`
//! without DNS names. Instead of probing, it works on sets:
//!
//! - ports are interval sets per protocol, addresses interval sets per IP family, over the
//!   whole IPv4 and IPv6 spaces;
//! - pods fall into classes that no policy can tell apart: a **source class** shares namespace,
//!   labels, hostNetwork (and then its node) and which ipBlock interval holds its address; a
//!   **destination class** (one per pod address) shares namespace, labels, container ports,
//!   family and ipBlock interval (the tiers' `networks` ends count as ipBlock boundaries), and
//!   with tiers the Node owning the address, if any (`nodes` peers);
//! - only pairs where the states differ are evaluated: a source class whose egress policies
//!   (NetworkPolicies and the tier policies selecting it) are the same in both states can only
//!   change towards destinations whose ingress changed, and of those only the ones some rule's
//!   peer can match (and vice versa); a changed tier reaches the classes its rules' peers
//!   (in either state) can match;
//! - non-pod destinations are evaluated per interval between the changed rules' ipBlock
//!   boundaries (and the tiers' `networks` ends and Node addresses), then cut around the pod
//!   addresses and Service addresses.
//!
//! Without ClusterNetworkPolicies in either state no tier code runs.
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
//!
//! This module holds the public types and the flow; its submodules one concern each: `classes`
//! (pods no policy can tell apart), `pairs` (which class pairs may change), `rules` (what the
//! rules allow, and the change), `tiers` (the ClusterNetworkPolicy tiers as port sets),
//! `addresses` (the non-pod address space), `naming` (changes to workloads, pods and ranges),
//! `sets` (interval sets of ports and addresses).

mod addresses;
mod classes;
mod naming;
mod pairs;
mod rules;
mod sets;
mod tiers;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use leash_records::Protocol;
use serde::Serialize;

use crate::cluster::{Cluster, LabelSelector, PodId};
use crate::eval::{ClusterPolicies, PolicyId, PolicySet};
use classes::{DestClass, Group, SourceClass};
use pairs::Dests;
use sets::{Family, PortSet};
use tiers::GroupTiers;

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

/// Both states, indexed 0 (`from`) and 1 (`to`).
const STATES: [usize; 2] = [0, 1];

/// Every reachability change from `from` to `to`, sorted, adjacent ranges with the same change
/// merged.
pub fn reachability(cluster: &Cluster, from: &PolicySet, to: &PolicySet) -> Vec<ReachChange> {
    reachability_of(cluster, from, to, |_| true)
}

/// The changes of the sources in the namespaces `wanted` accepts, as [`reachability`] gives
/// them; the other sources are not computed (`leash diff --namespace`: a lockdown namespace by
/// namespace, whose first step changes every destination of a newly isolated workload).
pub fn reachability_of(
    cluster: &Cluster,
    from: &PolicySet,
    to: &PolicySet,
    wanted: impl Fn(&str) -> bool,
) -> Vec<ReachChange> {
    let e = Engine::new(cluster, [from, to]);
    let wanted_source = |sk: usize| {
        e.sources[sk]
            .pods
            .first()
            .and_then(|&p| cluster.pods.get(p))
            .is_some_and(|p| wanted(&p.namespace))
    };
    let mut per_source: Vec<BTreeSet<(Entry, Target)>> = vec![BTreeSet::new(); e.sources.len()];
    let pairs: Vec<(usize, Dests)> = e
        .pairs()
        .into_iter()
        .filter(|(sk, _)| wanted_source(*sk))
        .collect();
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
    // With ClusterNetworkPolicies the group (namespace and labels: the tiers' subject) counts
    // too.
    type Key<'k> = ([Vec<&'k PolicyId>; 2], Option<usize>);
    let mut external: HashMap<Key<'_>, BTreeSet<(Entry, Target)>> = HashMap::new();
    for (sk, out) in per_source.iter_mut().enumerate() {
        if e.egress_changed(sk) && wanted_source(sk) {
            let group = e.sources[sk].group;
            let g = &e.groups[group];
            let key = (
                g.egress
                    .each_ref()
                    .map(|ps| ps.iter().map(|p| &p.id).collect()),
                e.tiers.is_some().then_some(group),
            );
            let found = external
                .entry(key)
                .or_insert_with(|| e.external_changes(sk));
            out.extend(found.iter().cloned());
        }
    }
    e.by_source_workload(&per_source)
}

/// The classes, indexes and address space of one cluster under both states.
struct Engine<'a> {
    cluster: &'a Cluster,
    groups: Vec<Group<'a>>,
    /// The ClusterNetworkPolicies of both states; `None` when neither has any (then no tier
    /// code runs).
    tiers: Option<[&'a ClusterPolicies; 2]>,
    /// Per group, the tier policies selecting it (empty without tiers).
    group_tiers: Vec<GroupTiers<'a>>,
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
        let tiers = states.map(PolicySet::cluster_policies);
        let tiers = tiers.iter().any(|t| !t.is_empty()).then_some(tiers);
        let mut bounds = addresses::policy_bounds(states);
        if let Some(t) = tiers {
            tiers::network_bounds(t, &mut bounds);
            for b in &mut bounds {
                b.sort_unstable();
                b.dedup();
            }
        }
        let mut e = Engine {
            cluster,
            groups: Vec::new(),
            tiers,
            group_tiers: Vec::new(),
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
        e.add_classes(states);
        e.add_address_space();
        e
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
}
