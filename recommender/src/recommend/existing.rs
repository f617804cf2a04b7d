//! The NetworkPolicies already applied in the cluster, as input to a proposal.
//!
//! leash's own policies must stand alone, so a flow another policy already allows is still
//! covered by leash's. But when an egress policy that leash did not write already selects a
//! workload leash proposes a policy for, two authors restrict one workload's egress: a human
//! has to decide who owns it. This module finds those workloads ([`shared_egress`]), and
//! names the other policies that also allow each rule's flows ([`also_allowed`]).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::Recommendation;
use crate::cluster::{Cluster, WorkloadId};
use crate::eval::{self, ClusterView, CompiledPolicy, PolicySet};
use crate::observations::Observations;
use crate::policy_state::is_managed;

/// A workload leash proposes an egress policy for, whose pods an applied egress
/// NetworkPolicy that leash did not write already selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEgress {
    /// The workload.
    pub workload: WorkloadId,
    /// The other author's policies that select its pods, `namespace/name`, sorted.
    pub policies: Vec<String>,
}

/// The workloads of `rec` whose egress an applied non-leash NetworkPolicy already restricts
/// (a policy whose effective `policyTypes` include Egress and whose pod selector matches one
/// of the workload's pods), sorted by workload. Applied policies that do not compile are
/// left out: they select nothing the evaluator would apply either.
pub fn shared_egress(
    cluster: &Cluster,
    applied: &[NetworkPolicy],
    rec: &Recommendation,
) -> Vec<SharedEgress> {
    let foreign: Vec<CompiledPolicy> = applied
        .iter()
        .filter(|np| !is_managed(&np.metadata))
        .filter_map(|np| CompiledPolicy::compile(np).ok())
        .filter(|p| p.egress.is_some())
        .collect();
    if foreign.is_empty() {
        return Vec::new();
    }
    let proposed: BTreeSet<WorkloadId> = rec.policies.iter().map(|p| p.workload).collect();
    let mut found: BTreeMap<WorkloadId, BTreeSet<String>> = BTreeMap::new();
    for (pod_id, pod) in cluster.pods.iter().enumerate() {
        let Some(w) = cluster.workload_of(pod_id).filter(|w| proposed.contains(w)) else {
            continue;
        };
        for p in &foreign {
            if p.id.namespace == pod.namespace && p.pod_selector.matches(&pod.labels) {
                found.entry(w).or_default().insert(p.id.to_string());
            }
        }
    }
    found
        .into_iter()
        .map(|(workload, policies)| SharedEgress {
            workload,
            policies: policies.into_iter().collect(),
        })
        .collect()
}

/// Fills every rule's [`also_allowed_by`](super::EgressRule::also_allowed_by): the applied
/// NetworkPolicies leash did not write whose egress rules also allow one of the observed
/// flows the rule allows, asked of the one evaluator. leash's rule stays either way (its
/// policies must stand alone if the others are deleted); the report names them. Applied
/// policies that do not compile are left out, as in [`shared_egress`].
pub fn also_allowed(
    cluster: &Cluster,
    applied: &[NetworkPolicy],
    obs: &Observations,
    rec: &mut Recommendation,
) {
    let foreign: Vec<NetworkPolicy> = applied
        .iter()
        .filter(|np| !is_managed(&np.metadata) && CompiledPolicy::compile(np).is_ok())
        .cloned()
        .collect();
    if foreign.is_empty() || rec.policies.is_empty() {
        return;
    }
    let (Ok(others), Ok(ours)) = (
        PolicySet::new(&foreign),
        PolicySet::new(&super::all_policies(cluster, rec)),
    ) else {
        return;
    };
    let index: BTreeMap<(&str, &str), usize> = rec
        .policies
        .iter()
        .enumerate()
        .map(|(i, p)| ((p.namespace.as_str(), p.name.as_str()), i))
        .collect();
    let with_policy: BTreeSet<WorkloadId> = rec.policies.iter().map(|p| p.workload).collect();
    // Egress depends on the source through its namespace and labels only: one evaluation
    // per distinct (namespace, labels) and destination, from the lowest pod id among them.
    let mut reps: BTreeMap<(&str, &crate::cluster::Labels), usize> = BTreeMap::new();
    let mut keys: Vec<_> = obs.flows.keys().collect();
    keys.sort();
    let mut checks: BTreeSet<(usize, std::net::IpAddr, u16, leash_records::Protocol)> =
        BTreeSet::new();
    for k in keys {
        let Some(pod) = cluster.pods.get(k.pod) else {
            continue;
        };
        let covered = cluster
            .workload_of(k.pod)
            .is_some_and(|w| with_policy.contains(&w));
        if covered && !pod.host_network {
            let rep = *reps.entry((&pod.namespace, &pod.labels)).or_insert(k.pod);
            checks.insert((rep, k.dst, k.port, k.protocol));
        }
    }
    let mut found: BTreeMap<(usize, usize), BTreeSet<String>> = BTreeMap::new();
    for (pod_id, dst, dst_port, protocol) in checks {
        let pod = &cluster.pods[pod_id];
        let Some(source) = ClusterView::pod(cluster, &pod.namespace, &pod.name) else {
            continue;
        };
        let flow = eval::Flow {
            protocol,
            dst,
            dst_port,
        };
        let mine = eval::evaluate(cluster, &ours, source, &flow);
        let theirs = eval::evaluate(cluster, &others, source, &flow);
        for (a, b) in mine.targets.iter().zip(&theirs.targets) {
            for m in &a.egress.matches {
                let Some(&p) = index.get(&(m.policy.namespace.as_str(), m.policy.name.as_str()))
                else {
                    continue;
                };
                for o in &b.egress.matches {
                    found
                        .entry((p, m.rule))
                        .or_default()
                        .insert(o.policy.to_string());
                }
            }
        }
    }
    for ((p, r), names) in found {
        if let Some(rule) = rec.policies[p].rules.get_mut(r) {
            rule.also_allowed_by = names.into_iter().collect();
        }
    }
}
