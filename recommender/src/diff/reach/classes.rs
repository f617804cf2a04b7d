//! Pods that no policy can tell apart: groups by (namespace, labels), source classes and
//! destination classes, each with the policies that select it.

use std::collections::HashMap;
use std::net::IpAddr;

use leash_records::Protocol;

use super::rules::same_rules;
use super::sets::{Family, key};
use super::tiers::GroupTiers;
use super::{Engine, STATES};
use crate::cluster::{Labels, PodId, PodInfo};
use crate::eval::{CompiledPolicy, PolicySet};

/// The policies selecting one (namespace, labels) group, per state.
pub(super) struct Group<'a> {
    pub(super) labels: &'a Labels,
    pub(super) egress: [Vec<&'a CompiledPolicy>; 2],
    pub(super) ingress: [Vec<&'a CompiledPolicy>; 2],
    pub(super) egress_changed: bool,
    pub(super) ingress_changed: bool,
}

/// A source class: pods no policy can tell apart as sources.
pub(super) struct SourceClass {
    pub(super) group: usize,
    /// The node of a hostNetwork source (ingress from a pod's own node is always allowed).
    pub(super) host_node: Option<Option<String>>,
    /// The member pods; the first is the representative.
    pub(super) pods: Vec<PodId>,
}

/// A destination class: pod addresses no policy can tell apart.
pub(super) struct DestClass {
    pub(super) group: usize,
    pub(super) family: Family,
    /// Indices into `Engine::units`; the first is the representative.
    pub(super) units: Vec<usize>,
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
    /// The Node owning the address too (a tier's `nodes` peer matches it); only with tiers.
    node: Option<usize>,
}

impl<'a> Engine<'a> {
    /// Fills the groups, the source classes and the destination classes (with their pod
    /// addresses, `units`) of the cluster's pods under both states.
    pub(super) fn add_classes(&mut self, states: [&'a PolicySet; 2]) {
        let cluster = self.cluster;
        let mut by_ns: [HashMap<&'a str, Vec<&'a CompiledPolicy>>; 2] =
            [HashMap::new(), HashMap::new()];
        for s in STATES {
            for p in states[s].iter() {
                by_ns[s].entry(&p.id.namespace).or_default().push(p);
            }
        }

        // Groups of pods by (namespace, labels): what selectors see.
        let mut group_of: HashMap<(&str, &Labels), usize> = HashMap::new();
        let mut pod_group = Vec::with_capacity(cluster.pods.len());
        for pod in &cluster.pods {
            let k = (pod.namespace.as_str(), &pod.labels);
            let next = self.groups.len();
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
                if let Some(t) = self.tiers {
                    let ns_labels = self.namespace_labels(&pod.namespace);
                    self.group_tiers
                        .push(GroupTiers::of(t, &ns_labels, &pod.labels));
                }
                self.groups.push(Group {
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
            let atoms = Family::ALL.map(|f| source_ip(pod, f).map(|ip| self.atom(ip)));
            let k = SourceKey {
                group: pod_group[pid],
                host_node: pod.host_network.then(|| pod.node.clone()),
                atoms,
            };
            let next = self.sources.len();
            let sk = *source_of.entry(k.clone()).or_insert(next);
            if sk == next {
                self.sources.push(SourceClass {
                    group: k.group,
                    host_node: k.host_node,
                    pods: Vec::new(),
                });
                if !pod.host_network {
                    self.sources_by_namespace
                        .entry(&pod.namespace)
                        .or_default()
                        .push(sk);
                }
                for (f, a) in Family::ALL.iter().zip(atoms) {
                    if let Some(a) = a {
                        self.sources_by_atom.entry((*f, a)).or_default().push(sk);
                    }
                }
            }
            self.sources[sk].pods.push(pid);
        }

        // Destination classes: every address a pod-network pod owns (as the evaluator's
        // lookup sees it) that is not a Service address.
        let mut dest_of: HashMap<DestKey<'_>, usize> = HashMap::new();
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
                let (f, _) = key(ip);
                let k = DestKey {
                    group: pod_group[pid],
                    ports: pod
                        .ports
                        .iter()
                        .filter_map(|p| Some((p.name.as_deref()?, p.protocol, p.port)))
                        .collect(),
                    family: f,
                    atom: self.atom(ip),
                    node: self.tier_node_of(ip),
                };
                let unit = self.units.len();
                self.units.push((pid, ip));
                *self.units_of_pod.entry(pid).or_default() += 1;
                if let Some(w) = cluster.workload_of(pid) {
                    *self.units_of_workload.entry(w).or_default() += 1;
                }
                let next = self.dests.len();
                let dk = *dest_of.entry(k).or_insert(next);
                if dk == next {
                    self.dests.push(DestClass {
                        group: pod_group[pid],
                        family: f,
                        units: Vec::new(),
                    });
                    self.dests_by_namespace
                        .entry(&pod.namespace)
                        .or_default()
                        .push(dk);
                    self.dests_by_atom
                        .entry((f, self.atom(ip)))
                        .or_default()
                        .push(dk);
                }
                self.dests[dk].units.push(unit);
            }
        }
    }

    /// The ipBlock interval holding `ip`: addresses in the same one are in the same blocks.
    pub(super) fn atom(&self, ip: IpAddr) -> usize {
        let (f, x) = key(ip);
        self.bounds[f.index()].partition_point(|b| *b <= x)
    }

    pub(super) fn egress_changed(&self, sk: usize) -> bool {
        let s = &self.sources[sk];
        s.host_node.is_none()
            && (self.groups[s.group].egress_changed || self.tier_changed(s.group, true))
    }

    /// Whether the tier policies selecting a group in one direction differ between the states.
    pub(super) fn tier_changed(&self, group: usize, egress: bool) -> bool {
        self.group_tiers.get(group).is_some_and(|t| {
            if egress {
                t.egress_changed
            } else {
                t.ingress_changed
            }
        })
    }
}

/// The address a pod connects from towards a destination of `family` (the evaluator's rule:
/// its first address of that family).
pub(super) fn source_ip(pod: &PodInfo, family: Family) -> Option<IpAddr> {
    pod.ips
        .iter()
        .map(|ip| ip.to_canonical())
        .find(|ip| key(*ip).0 == family)
}
