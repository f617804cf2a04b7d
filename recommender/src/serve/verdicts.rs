//! Stored flows judged against the policies applied in the cluster, with the one evaluator
//! `leash audit` uses: each workload's flows are evaluated as one of its current pods.

use std::path::Path;

use crate::audit;
use crate::eval::Evaluation;
use crate::state::ClusterState;
use crate::store::{FlowObservation, Skipped, WorkloadRef, observe};
use leash_records::FlowRecord;

/// One stored flow and its verdict.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The workload it belongs to.
    pub workload: WorkloadRef,
    /// The pod it was evaluated as.
    pub pod: String,
    /// The flow, with its summed evidence.
    pub flow: FlowRecord,
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
    let (obs, skipped) = observe::observations(cluster, flows, &[]);
    let located = observe::audit_flows(cluster, &obs, Path::new("store"));
    let report = audit::audit(cluster, &state.policy_set, &located)?;
    let judged = located
        .into_iter()
        .zip(report.entries)
        .map(|(lf, entry)| {
            let workload = cluster
                .pod_by_name(&entry.source.namespace, &entry.source.name)
                .and_then(|p| cluster.workload_of(p))
                .and_then(|w| cluster.workloads.get(w))
                .map_or_else(
                    || WorkloadRef {
                        namespace: entry.source.namespace.clone(),
                        kind: observe::KIND_POD.to_owned(),
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
                flow: lf.flow,
                evaluation: entry.evaluation,
            }
        })
        .collect();
    Ok((judged, skipped))
}
