//! Stored flows judged against the policies applied in the cluster, with the one evaluator
//! `leash audit` uses: each workload's flows are evaluated as one of its current pods.

use crate::audit;
use crate::eval::{Evaluation, Flow};
use crate::observations::{self, Evidence, Skipped};
use crate::state::ClusterState;
use crate::store::{FlowObservation, KIND_POD, WorkloadRef};

/// One stored flow and its verdict.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The workload it belongs to.
    pub workload: WorkloadRef,
    /// The pod it was evaluated as.
    pub pod: String,
    /// The destination as dialed.
    pub flow: Flow,
    /// Its summed evidence.
    pub evidence: Evidence,
    /// The evaluator's answer.
    pub evaluation: Evaluation,
}

/// Evaluates `flows` against `state`'s applied policies. Workloads without a current pod
/// cannot be evaluated and come back as skipped. Sorted by pod, destination, port, protocol.
pub fn judge(
    state: &ClusterState,
    flows: &[FlowObservation],
) -> Result<(Vec<Judged>, Vec<Skipped>), audit::Error> {
    let cluster = &state.cluster;
    let (obs, skipped) = observations::from_stored(cluster, flows, &[]);
    let (attributed, evidence): (Vec<_>, Vec<_>) =
        audit::stored_flows(cluster, &obs).into_iter().unzip();
    let report = audit::audit(cluster, &state.policy_set, &attributed)?;
    let judged = report
        .entries
        .into_iter()
        .zip(evidence)
        .map(|(entry, ev)| {
            let workload = cluster
                .pod_by_name(&entry.source.namespace, &entry.source.name)
                .and_then(|p| cluster.workload_of(p))
                .and_then(|w| cluster.workloads.get(w))
                .map_or_else(
                    || WorkloadRef {
                        namespace: entry.source.namespace.clone(),
                        kind: KIND_POD.to_owned(),
                        name: entry.source.name.clone(),
                    },
                    |w| WorkloadRef {
                        namespace: w.namespace.clone(),
                        kind: w.kind.clone(),
                        name: w.name.clone(),
                    },
                );
            Judged {
                workload,
                pod: entry.source.name,
                flow: entry.flow,
                evidence: ev.clone(),
                evaluation: entry.evaluation,
            }
        })
        .collect();
    Ok((judged, skipped))
}
