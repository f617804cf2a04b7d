//! The ClusterNetworkPolicy tiers around the NetworkPolicies, as port sets: the precedence of
//! [`crate::eval`] (`cluster_policy`) for one (subject, peer) pair at once.
//!
//! For a subject pod and a fixed other side, whether a rule's peers match does not depend on
//! the port, so each tier splits the port space: walking priorities, each policy's rules in
//! order take the ports no earlier rule of that policy took; per priority the ports whose
//! policies agree get the action, the ports where they disagree are denied (a conflict), and
//! every port a priority reaches leaves the tier (a Pass goes on to the next stage). Nothing
//! here runs when neither state has a ClusterNetworkPolicy.
//!
//! `domainNames` peers match nothing: the symbolic diff has no DNS evidence, as
//! [`crate::eval::evaluate`] without names.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::net::IpAddr;

use super::sets::{PROTOCOLS, PortSet, key};
use super::{Engine, STATES};
use crate::cluster::{Labels, NAMESPACE_NAME_LABEL, PodInfo};
use crate::cnp::{Action, Tier};
use crate::eval::{
    ClusterPeer, ClusterPolicies, ClusterPort, ClusterRule, CompiledClusterPolicy, PodView,
};

/// The tier policies that select one group as their subject, in evaluation order (Admin then
/// Baseline, each by priority and name), per state and direction.
#[derive(Default)]
pub(super) struct GroupTiers<'a> {
    pub(super) egress: [Vec<&'a CompiledClusterPolicy>; 2],
    pub(super) ingress: [Vec<&'a CompiledClusterPolicy>; 2],
    pub(super) egress_changed: bool,
    pub(super) ingress_changed: bool,
}

impl<'a> GroupTiers<'a> {
    /// The policies of both states selecting a pod-network pod with these labels.
    pub(super) fn of(
        states: [&'a ClusterPolicies; 2],
        ns_labels: &Labels,
        labels: &Labels,
    ) -> Self {
        let select = |st: usize, egress: bool| -> Vec<&'a CompiledClusterPolicy> {
            states[st]
                .iter()
                .filter(|c| {
                    let rules = if egress { &c.egress } else { &c.ingress };
                    !rules.is_empty() && c.subject.matches(ns_labels, labels)
                })
                .collect()
        };
        let egress = STATES.map(|st| select(st, true));
        let ingress = STATES.map(|st| select(st, false));
        GroupTiers {
            egress_changed: !same(&egress, true),
            ingress_changed: !same(&ingress, false),
            egress,
            ingress,
        }
    }
}

fn rules(c: &CompiledClusterPolicy, egress: bool) -> &[ClusterRule] {
    if egress { &c.egress } else { &c.ingress }
}

fn same(p: &[Vec<&CompiledClusterPolicy>; 2], egress: bool) -> bool {
    p[0].len() == p[1].len()
        && p[0].iter().zip(&p[1]).all(|(a, b)| {
            a.name == b.name
                && a.tier == b.tier
                && a.priority == b.priority
                && rules(a, egress) == rules(b, egress)
        })
}

/// The ports a rule names; `dst` resolves named ports (`None`: not a pod-network pod).
fn rule_ports(rule: &ClusterRule, dst: Option<&PodInfo>) -> PortSet {
    if rule.ports.is_empty() {
        return PortSet::full();
    }
    let mut out = PortSet::empty();
    for p in &rule.ports {
        match p {
            ClusterPort::Range(proto, a, b) => out.add(*proto, *a, *b),
            ClusterPort::Named(name) => {
                for proto in PROTOCOLS {
                    if let Some(port) = dst.and_then(|d| d.named_port(name, proto)) {
                        out.add(proto, port, port);
                    }
                }
            }
        }
    }
    out
}

/// One tier over the ports `open`: (the ports it accepts, the ports it leaves to the next
/// stage: passed or reached by no rule). The rest of `open` it denies.
fn tier(
    policies: &[&CompiledClusterPolicy],
    which: Tier,
    egress: bool,
    peer: &impl Fn(&ClusterPeer) -> bool,
    dst: Option<&PodInfo>,
    open: PortSet,
) -> (PortSet, PortSet) {
    let mut accepted = PortSet::empty();
    let mut passed = PortSet::empty();
    let mut undecided = open;
    let list: Vec<&CompiledClusterPolicy> = policies
        .iter()
        .copied()
        .filter(|c| c.tier == which)
        .collect();
    let mut i = 0;
    while i < list.len() && !undecided.is_empty() {
        let priority = list[i].priority;
        let end = list[i..]
            .iter()
            .position(|c| c.priority != priority)
            .map_or(list.len(), |n| i + n);
        // Per action, the ports some policy of this priority takes with it.
        let mut took = [PortSet::empty(), PortSet::empty(), PortSet::empty()];
        for c in &list[i..end] {
            let mut left = PortSet::full();
            for r in rules(c, egress) {
                if !r.peers.iter().any(peer) {
                    continue;
                }
                let m = rule_ports(r, dst).intersect(&left);
                if m.is_empty() {
                    continue;
                }
                left = left.minus(&m);
                let a = match r.action {
                    Action::Accept => 0,
                    Action::Deny => 1,
                    Action::Pass => 2,
                };
                took[a].union_with(&m);
                if left.is_empty() {
                    break;
                }
            }
        }
        i = end;
        let [a, d, p] = took;
        // Only the ports all matching policies agree on keep their action; the others deny.
        accepted.union_with(&a.minus(&d).minus(&p).intersect(&undecided));
        passed.union_with(&p.minus(&a).minus(&d).intersect(&undecided));
        let mut reached = a;
        reached.union_with(&d);
        reached.union_with(&p);
        undecided = undecided.minus(&reached);
    }
    passed.union_with(&undecided);
    (accepted, passed)
}

/// The full precedence for one direction: the Admin tier, then the NetworkPolicies (`np`:
/// `None` when none selects the pod in this direction), then the Baseline tier, then allow.
pub(super) fn allowed(
    policies: &[&CompiledClusterPolicy],
    egress: bool,
    peer: impl Fn(&ClusterPeer) -> bool,
    dst: Option<&PodInfo>,
    np: impl FnOnce() -> Option<PortSet>,
) -> PortSet {
    if policies.is_empty() {
        return np().unwrap_or_else(PortSet::full);
    }
    let (mut out, rest) = tier(policies, Tier::Admin, egress, &peer, dst, PortSet::full());
    if rest.is_empty() {
        return out;
    }
    match np() {
        Some(np) => out.union_with(&rest.intersect(&np)),
        None => {
            let (accepted, rest) = tier(policies, Tier::Baseline, egress, &peer, dst, rest);
            out.union_with(&accepted);
            out.union_with(&rest);
        }
    }
    out
}

impl<'a> Engine<'a> {
    /// A namespace's labels; an unknown namespace still carries its automatic name label.
    pub(super) fn namespace_labels(&self, ns: &str) -> Cow<'a, Labels> {
        match self.cluster.namespaces.get(ns) {
            Some(n) => Cow::Borrowed(&n.labels),
            None => Cow::Owned(Labels::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                ns.to_string(),
            )])),
        }
    }

    /// Whether a tier's egress peer matches a destination: a pod-network pod (`dst`) at `ip`,
    /// or an address (`dst` `None`).
    pub(super) fn tier_egress_peer(
        &self,
        peer: &ClusterPeer,
        dst: Option<&PodInfo>,
        ip: IpAddr,
    ) -> bool {
        match peer {
            ClusterPeer::Pods(sel) => {
                dst.is_some_and(|p| sel.matches(&self.namespace_labels(&p.namespace), &p.labels))
            }
            ClusterPeer::Networks(nets) => nets.iter().any(|n| n.contains(&ip)),
            ClusterPeer::Nodes(sel) => self.node_labels(ip).is_some_and(|l| sel.matches(l)),
            ClusterPeer::DomainNames(_) => false,
        }
    }

    /// Whether a tier's ingress peer matches a source pod (namespaces and pods only, never a
    /// hostNetwork pod).
    pub(super) fn tier_ingress_peer(&self, peer: &ClusterPeer, src: &PodInfo) -> bool {
        match peer {
            ClusterPeer::Pods(sel) => {
                !src.host_network
                    && sel.matches(&self.namespace_labels(&src.namespace), &src.labels)
            }
            ClusterPeer::Networks(_) | ClusterPeer::Nodes(_) | ClusterPeer::DomainNames(_) => false,
        }
    }

    fn node_labels(&self, ip: IpAddr) -> Option<&'a Labels> {
        let cluster = self.cluster;
        cluster
            .node_by_ip(ip)
            .and_then(|n| cluster.nodes.get(n))
            .map(|n| &n.labels)
    }

    /// The node a pod address belongs to too (a `nodes` peer matches it), when tiers are in
    /// play: it splits destination classes.
    pub(super) fn tier_node_of(&self, ip: IpAddr) -> Option<usize> {
        self.tiers.as_ref()?;
        self.cluster.node_by_ip(ip)
    }

    /// The destination classes a tier egress peer can match.
    pub(super) fn dests_for_tier_peer(&self, peer: &ClusterPeer, out: &mut BTreeSet<usize>) {
        match peer {
            ClusterPeer::Pods(sel) => {
                for (ns, dks) in &self.dests_by_namespace {
                    if !sel.namespaces.matches(&self.namespace_labels(ns)) {
                        continue;
                    }
                    for &dk in dks {
                        let labels = self.groups[self.dests[dk].group].labels;
                        if sel.pods.as_ref().is_none_or(|p| p.matches(labels)) {
                            out.insert(dk);
                        }
                    }
                }
            }
            ClusterPeer::Networks(nets) => {
                for net in nets {
                    for dk in self.in_block(&self.dests_by_atom, net) {
                        let (_, ip) = self.units[self.dests[dk].units[0]];
                        if net.contains(&ip) {
                            out.insert(dk);
                        }
                    }
                }
            }
            ClusterPeer::Nodes(_) => {
                for (dk, d) in self.dests.iter().enumerate() {
                    let (pid, ip) = self.units[d.units[0]];
                    if self.tier_egress_peer(peer, self.cluster.pods.get(pid), ip) {
                        out.insert(dk);
                    }
                }
            }
            ClusterPeer::DomainNames(_) => {}
        }
    }

    /// The source classes a tier ingress peer can match.
    pub(super) fn sources_for_tier_peer(&self, peer: &ClusterPeer, out: &mut BTreeSet<usize>) {
        if let ClusterPeer::Pods(sel) = peer {
            for (ns, sks) in &self.sources_by_namespace {
                if !sel.namespaces.matches(&self.namespace_labels(ns)) {
                    continue;
                }
                for &sk in sks {
                    let labels = self.groups[self.sources[sk].group].labels;
                    if sel.pods.as_ref().is_none_or(|p| p.matches(labels)) {
                        out.insert(sk);
                    }
                }
            }
        }
    }

    /// The peers of every rule, in both states, of the tier policies selecting a group in one
    /// direction.
    pub(super) fn tier_peers(&self, group: usize, egress: bool) -> Vec<&'a ClusterPeer> {
        let Some(t) = self.group_tiers.get(group) else {
            return Vec::new();
        };
        let lists = if egress { &t.egress } else { &t.ingress };
        lists
            .iter()
            .flatten()
            .flat_map(|c| rules(c, egress))
            .flat_map(|r| &r.peers)
            .collect()
    }

    /// The address-space cuts the tiers of a group's egress make: their networks' ends, and
    /// every Node address when a `nodes` peer is among them, per family.
    pub(super) fn tier_bounds(&self, group: usize, bounds: &mut [Vec<u128>; 2]) {
        for peer in self.tier_peers(group, true) {
            match peer {
                ClusterPeer::Networks(nets) => {
                    for net in nets {
                        super::addresses::push_bounds(bounds, net);
                    }
                }
                ClusterPeer::Nodes(_) => {
                    for ip in self.cluster.nodes.iter().flat_map(|n| n.ips.iter()) {
                        let (f, x) = key(*ip);
                        bounds[f.index()].push(x);
                        if x < f.max() {
                            bounds[f.index()].push(x + 1);
                        }
                    }
                }
                ClusterPeer::Pods(_) | ClusterPeer::DomainNames(_) => {}
            }
        }
    }
}

/// The `networks` ends of every tier policy of both states, for the ipBlock boundaries.
pub(super) fn network_bounds(states: [&ClusterPolicies; 2], bounds: &mut [Vec<u128>; 2]) {
    for s in STATES {
        for c in states[s].iter() {
            for peer in c.egress.iter().flat_map(|r| &r.peers) {
                if let ClusterPeer::Networks(nets) = peer {
                    for net in nets {
                        super::addresses::push_bounds(bounds, net);
                    }
                }
            }
        }
    }
}
