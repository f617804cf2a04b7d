//! What the rules of each state allow between a source and a destination, and the change
//! between the two.

use std::net::IpAddr;

use super::classes::source_ip;
use super::sets::PortSet;
use super::tiers;
use super::{Change, Engine, Entry, STATES};
use crate::cluster::{Labels, NAMESPACE_NAME_LABEL, PodInfo};
use crate::eval::{
    ClusterPeer, CompiledPolicy, NamespaceMatch, PodView, PolicyPeer, PolicyRule, PortMatch,
};

impl Engine<'_> {
    /// The change set between one source class and one destination class (as if on
    /// different nodes: `pod_targets` leaves out a hostNetwork source's own node).
    pub(super) fn pair_changes(&self, sk: usize, dk: usize) -> Vec<Entry> {
        let s = &self.sources[sk];
        let src = &self.cluster.pods[s.pods[0]];
        let d = &self.dests[dk];
        let (dpid, dip) = self.units[d.units[0]];
        let dst = &self.cluster.pods[dpid];
        let sg = &self.groups[s.group];
        let dg = &self.groups[d.group];
        let src_ip = source_ip(src, d.family);
        let verdicts = STATES.map(|st| {
            let egress = if s.host_node.is_some() {
                PortSet::full()
            } else {
                self.tiered(
                    st,
                    s.group,
                    true,
                    |p| self.tier_egress_peer(p, Some(dst), dip),
                    Some(dst),
                    || {
                        (!sg.egress[st].is_empty()).then(|| {
                            allowed(
                                &sg.egress[st],
                                true,
                                |p| self.egress_peer(p, Some(dst), dip),
                                Some(dst),
                            )
                        })
                    },
                )
            };
            if egress.is_empty() {
                return egress;
            }
            let ingress = self.tiered(
                st,
                d.group,
                false,
                |p| self.tier_ingress_peer(p, src),
                Some(dst),
                || {
                    (!dg.ingress[st].is_empty()).then(|| {
                        allowed(
                            &dg.ingress[st],
                            false,
                            |p| self.ingress_peer(p, src, src_ip),
                            Some(dst),
                        )
                    })
                },
            );
            egress.intersect(&ingress)
        });
        entries(&verdicts)
    }

    /// What one direction allows in state `st` for a pod of `group`: the tiers around the
    /// NetworkPolicies (`np`: `None` when none selects the pod), or the NetworkPolicies alone
    /// (everything when none selects it) when neither state has a ClusterNetworkPolicy.
    pub(super) fn tiered(
        &self,
        st: usize,
        group: usize,
        egress: bool,
        tier_peer: impl Fn(&ClusterPeer) -> bool,
        dst: Option<&PodInfo>,
        np: impl FnOnce() -> Option<PortSet>,
    ) -> PortSet {
        match self.group_tiers.get(group) {
            Some(t) => {
                let list = if egress {
                    &t.egress[st]
                } else {
                    &t.ingress[st]
                };
                tiers::allowed(list, egress, tier_peer, dst, np)
            }
            None => np().unwrap_or_else(PortSet::full),
        }
    }

    pub(super) fn egress_peer(&self, peer: &PolicyPeer, dst: Option<&PodInfo>, ip: IpAddr) -> bool {
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
}

/// The entries of a change from `v[0]` (from) to `v[1]` (to).
pub(super) fn entries(v: &[PortSet; 2]) -> Vec<Entry> {
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
pub(super) fn allowed(
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

pub(super) fn direction(p: &CompiledPolicy, egress: bool) -> &[PolicyRule] {
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
pub(super) fn same_rules(p: &[Vec<&CompiledPolicy>; 2], egress: bool) -> bool {
    p[0].len() == p[1].len()
        && p[0]
            .iter()
            .zip(&p[1])
            .all(|(a, b)| a.id == b.id && direction(a, egress) == direction(b, egress))
}

/// The rules of both states when every peer-less destination is denied in both (both states
/// isolate, every rule names peers); `None` when any destination may change.
pub(super) fn changed_rules<'p>(
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
