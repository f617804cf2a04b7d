//! Naming the changes found per class: pod addresses as workloads, pods or single addresses,
//! source classes as workloads or pods, each along the port axis.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use leash_records::Protocol;

use super::{Change, Engine, Entry, ReachChange, Source, Target};
use crate::cluster::PodId;

/// Port ranges held by members: (member, first port, last port).
type Held = Vec<(usize, u16, u16)>;

/// Inclusive port ranges.
type Ports = Vec<(u16, u16)>;

impl Engine<'_> {
    /// Turns a source class's changes towards destination classes into targets. Along the
    /// port axis each piece is shared by a fixed set of pod addresses; a piece names a workload
    /// when every address of the workload shares it, else its pods, else single addresses.
    pub(super) fn pod_targets(
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

    /// Per source workload: along the port axis of each (change, protocol, target), a piece
    /// every pod shares goes to the workload, the others to the pods that have it.
    pub(super) fn by_source_workload(
        &self,
        per_source: &[BTreeSet<(Entry, Target)>],
    ) -> Vec<ReachChange> {
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
