//! CiliumNetworkPolicies next to NetworkPolicies, as Cilium enforces both: a pod selected
//! for egress by either kind is in default deny, and a connection is allowed when a rule of
//! either kind allows it. [`Overlay::apply`] lays the CiliumNetworkPolicies' verdicts over
//! an evaluation of the NetworkPolicy engine ([`crate::eval`]), target by target, so that
//! `audit` and `explain` keep one evaluation per flow.
//!
//! Also the facts both the Cilium output and its checks take from the model and the
//! observations: the names each workload's lookups returned per address ([`asked_names`]),
//! the API server's addresses ([`api_server_ips`]) and what an address is to Cilium
//! ([`peer_kind`]).
//!
//! Pure: values in, values out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use leash_records::Protocol;

use super::eval::{self, Destination, Peer, PolicySet, Source};
use crate::cluster::{Cluster, PodId, ServiceLookup, WorkloadId};
use crate::eval::{Evaluation, PolicyId, Reason, RuleMatch, Verdict};
use crate::observations::Observations;

/// Per workload, per address: the query names its pods' lookups returned the address for
/// (never a CNAME target or owner: what the pod asked).
pub type AskedNames = BTreeMap<WorkloadId, BTreeMap<IpAddr, BTreeSet<String>>>;

/// The names of [`AskedNames`] from the observations' address history.
pub fn asked_names(cluster: &Cluster, obs: &Observations) -> AskedNames {
    let mut out: AskedNames = BTreeMap::new();
    for ((pod, query), history) in &obs.history {
        let Some(w) = cluster.workload_of(*pod) else {
            continue;
        };
        let by_ip = out.entry(w).or_default();
        for ip in history.keys() {
            by_ip
                .entry(ip.to_canonical())
                .or_default()
                .insert(query.clone());
        }
    }
    out
}

/// The API server's addresses: the endpoints of `default/kubernetes` that are not pods.
pub fn api_server_ips(cluster: &Cluster) -> BTreeSet<IpAddr> {
    let mut out = BTreeSet::new();
    let Some(s) = cluster.service_by_name("default", "kubernetes") else {
        return out;
    };
    let svc = &cluster.services[s];
    for ip in &svc.cluster_ips {
        for p in &svc.ports {
            if let ServiceLookup::Resolved { backends, .. } =
                cluster.resolve_service(*ip, p.port, p.protocol)
            {
                out.extend(backends.iter().filter(|b| b.pod.is_none()).map(|b| b.ip));
            }
        }
    }
    out
}

/// Whether `ip` is a node's (or a hostNetwork pod's) address.
pub fn is_node(cluster: &Cluster, ip: IpAddr) -> bool {
    cluster.node_by_ip(ip).is_some() || !cluster.host_pods_by_ip(ip).is_empty()
}

/// What a (translated) destination is to Cilium: a pod-network pod, the API server, a node,
/// or the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// A pod-network pod.
    Pod(PodId),
    /// The API server.
    KubeApiserver,
    /// A node, or a hostNetwork pod on it.
    Node,
    /// Outside the cluster.
    World,
}

/// The [`PeerKind`] of `ip`, the pod at it when known.
pub fn peer_kind(
    cluster: &Cluster,
    api: &BTreeSet<IpAddr>,
    ip: IpAddr,
    pod: Option<PodId>,
) -> PeerKind {
    match pod.or_else(|| cluster.pod_by_ip(ip)) {
        Some(p) if !cluster.pods[p].host_network => PeerKind::Pod(p),
        Some(_) => PeerKind::Node,
        None if api.contains(&ip) => PeerKind::KubeApiserver,
        None if is_node(cluster, ip) => PeerKind::Node,
        None => PeerKind::World,
    }
}

/// The evaluator's [`Peer`] of a [`PeerKind`].
pub fn peer<'a>(cluster: &'a Cluster, kind: PeerKind) -> Peer<'a> {
    match kind {
        PeerKind::Pod(p) => Peer::Endpoint {
            namespace: &cluster.pods[p].namespace,
            labels: &cluster.pods[p].labels,
        },
        PeerKind::KubeApiserver => Peer::KubeApiserver,
        PeerKind::Node => Peer::RemoteNode,
        PeerKind::World => Peer::World,
    }
}

/// CiliumNetworkPolicies to lay over NetworkPolicy evaluations, with the DNS evidence their
/// `toFQDNs` rules need.
#[derive(Debug, Clone)]
pub struct Overlay {
    set: PolicySet,
    api: BTreeSet<IpAddr>,
    asked: AskedNames,
    /// Names given for every address (`explain --name`), besides the evidence.
    extra: BTreeSet<String>,
}

impl Overlay {
    /// The overlay of `set` in `cluster`, with the names of `obs`'s lookups (per workload)
    /// and `extra` names for every address.
    pub fn new(
        cluster: &Cluster,
        set: PolicySet,
        obs: Option<&Observations>,
        extra: BTreeSet<String>,
    ) -> Self {
        Self {
            set,
            api: api_server_ips(cluster),
            asked: obs.map(|o| asked_names(cluster, o)).unwrap_or_default(),
            extra,
        }
    }

    /// Lays the CiliumNetworkPolicies over `ev`, the evaluation of a flow of `protocol` from
    /// pod `source`: per target, egress is denied when either kind selects the pod and no
    /// rule of either allows it. Returns one line per target the CiliumNetworkPolicies
    /// decided on (`explain` shows them), in target order.
    pub fn apply(
        &self,
        cluster: &Cluster,
        source: PodId,
        protocol: Protocol,
        ev: &mut Evaluation,
    ) -> Vec<String> {
        let Some(pod) = cluster.pods.get(source) else {
            return Vec::new();
        };
        let mut lines = Vec::new();
        // CiliumNetworkPolicies do not select hostNetwork pods.
        if pod.host_network {
            return lines;
        }
        let src = Source {
            namespace: &pod.namespace,
            labels: &pod.labels,
        };
        let workload = cluster.workload_of(source);
        let none = BTreeMap::new();
        let asked = workload.and_then(|w| self.asked.get(&w)).unwrap_or(&none);
        for t in &mut ev.targets {
            let kind = match &t.destination {
                crate::eval::Destination::Pod(id) => cluster
                    .pod_by_name(&id.namespace, &id.name)
                    .map_or(PeerKind::World, PeerKind::Pod),
                crate::eval::Destination::HostNetworkPod(_) => PeerKind::Node,
                crate::eval::Destination::External => peer_kind(cluster, &self.api, t.ip, None),
            };
            let mut names = asked.get(&t.ip).cloned().unwrap_or_default();
            names.extend(self.extra.iter().cloned());
            let d = Destination {
                ip: t.ip,
                peer: peer(cluster, kind),
                names: &names,
            };
            let v = eval::evaluate(&self.set, &src, &d, t.port, protocol);
            if v.selected_by.is_empty() {
                continue;
            }
            // The ClusterNetworkPolicies' Admin tier comes before both kinds; a pod a
            // CiliumNetworkPolicy selects never reaches the Baseline tier.
            let admin = |tier: Option<crate::cnp::Tier>| tier == Some(crate::cnp::Tier::Admin);
            if matches!(t.egress.reason, Reason::AdminAccept | Reason::AdminDeny)
                || admin(t.egress.conflict.as_ref().map(|c| c.tier))
            {
                lines.push(String::from(
                    "CiliumNetworkPolicy: not consulted, the Admin tier decided",
                ));
                continue;
            }
            if t.egress.conflict.is_some()
                || matches!(
                    t.egress.reason,
                    Reason::BaselineAccept | Reason::BaselineDeny
                )
            {
                t.egress
                    .cluster
                    .retain(|m| m.tier == crate::cnp::Tier::Admin);
                t.egress.conflict = None;
                t.egress.reason = Reason::NotIsolated;
            }
            let named = if names.is_empty() {
                String::from(" (no DNS lookup returned this address)")
            } else {
                format!(
                    " (names: {})",
                    names.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            };
            let e = &mut t.egress;
            match &v.matched {
                Some(m) => {
                    lines.push(format!("CiliumNetworkPolicy: allowed by {m}{named}"));
                    if e.reason != Reason::RuleMatched {
                        e.verdict = Verdict::Allow;
                        e.reason = Reason::RuleMatched;
                        e.near_misses.clear();
                    }
                    e.matches.push(RuleMatch {
                        policy: policy_id(&m.policy),
                        rule: m.rule,
                        peer: None,
                        port: None,
                    });
                    e.matches.sort();
                }
                None => {
                    lines.push(format!(
                        "CiliumNetworkPolicy: selected by {}, no rule allows it{named}",
                        v.selected_by.join(", ")
                    ));
                    if e.reason != Reason::RuleMatched {
                        e.verdict = Verdict::Deny;
                        e.reason = Reason::NoRuleMatched;
                    }
                }
            }
            e.isolated_by
                .extend(v.selected_by.iter().map(|p| policy_id(p)));
            e.isolated_by.sort();
            e.isolated_by.dedup();
        }
        if ev.problem.is_none() && !ev.targets.is_empty() {
            let all = |f: &dyn Fn(&crate::eval::TargetResult) -> bool| {
                if ev.targets.iter().all(f) {
                    Verdict::Allow
                } else {
                    Verdict::Deny
                }
            };
            ev.egress = all(&|t| t.egress.verdict == Verdict::Allow);
            ev.verdict = all(&|t| t.verdict() == Verdict::Allow);
        }
        let conflicts: BTreeSet<_> = ev
            .targets
            .iter()
            .flat_map(|t| [&t.egress.conflict, &t.ingress.conflict])
            .flatten()
            .cloned()
            .collect();
        ev.conflicts = conflicts.into_iter().collect();
        lines
    }
}

fn policy_id(id: &str) -> PolicyId {
    let (namespace, name) = id.split_once('/').unwrap_or(("", id));
    PolicyId {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}
