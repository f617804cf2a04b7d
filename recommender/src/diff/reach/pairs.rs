//! Which (source class, destination class) pairs may change verdict: only those where a
//! changed direction's rules can match the other side.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::Engine;
use super::classes::source_ip;
use super::rules::changed_rules;
use super::sets::{Family, key};
use crate::eval::{NamespaceMatch, PolicyPeer};

/// Either every destination class, or some.
pub(super) enum Dests {
    All,
    Some(BTreeSet<usize>),
}

impl<'a> Engine<'a> {
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
    pub(super) fn pairs(&self) -> BTreeMap<usize, Dests> {
        let mut pairs: BTreeMap<usize, Dests> = BTreeMap::new();
        // Sources whose egress changed: every destination some peer of theirs can match.
        for sk in 0..self.sources.len() {
            if !self.egress_changed(sk) {
                continue;
            }
            let group = self.sources[sk].group;
            let g = &self.groups[group];
            let mut set = BTreeSet::new();
            if g.egress_changed {
                let Some(rules) = changed_rules(&g.egress, true) else {
                    pairs.insert(sk, Dests::All);
                    continue;
                };
                for peer in rules.iter().flat_map(|r| &r.peers) {
                    self.dests_for_peer(peer, &mut set);
                }
            }
            // A destination no tier rule of either state can match sees the tiers pass it
            // by in both: only the NetworkPolicies (above) can change it.
            if self.tier_changed(group, true) {
                for peer in self.tier_peers(group, true) {
                    self.dests_for_tier_peer(peer, &mut set);
                }
            }
            pairs.insert(sk, Dests::Some(set));
        }
        // Destinations whose ingress changed: every source some peer of theirs can match (the
        // same for every destination class of a group and family).
        let mut candidates: HashMap<(usize, Family), Vec<usize>> = HashMap::new();
        for (dk, d) in self.dests.iter().enumerate() {
            let g = &self.groups[d.group];
            let tier_changed = self.tier_changed(d.group, false);
            if !g.ingress_changed && !tier_changed {
                continue;
            }
            let sks = candidates.entry((d.group, d.family)).or_insert_with(|| {
                let mut set = BTreeSet::new();
                if g.ingress_changed {
                    let Some(rules) = changed_rules(&g.ingress, false) else {
                        return (0..self.sources.len()).collect();
                    };
                    for peer in rules.iter().flat_map(|r| &r.peers) {
                        self.sources_for_peer(peer, d.family, &mut set);
                    }
                }
                if tier_changed {
                    for peer in self.tier_peers(d.group, false) {
                        self.sources_for_tier_peer(peer, &mut set);
                    }
                }
                set.into_iter().collect()
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
    pub(super) fn in_block(
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
}
