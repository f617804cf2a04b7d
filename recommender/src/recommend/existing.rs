//! The NetworkPolicies already applied in the cluster, as input to a proposal.
//!
//! leash's own policies must stand alone, so a flow another policy already allows is still
//! covered by leash's. But when an egress policy that leash did not write already selects a
//! workload leash proposes a policy for, two authors restrict one workload's egress: a human
//! has to decide who owns it. This module finds those workloads.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::Recommendation;
use crate::cluster::{Cluster, WorkloadId};
use crate::eval::CompiledPolicy;
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
