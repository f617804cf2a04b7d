//! The self-check: the generated policies, evaluated with the one NetworkPolicy evaluator,
//! must allow every observed flow they govern.

use std::collections::BTreeSet;
use std::net::IpAddr;

use leash_records::Protocol;
use leash_records::error::Chain;

use super::{Recommendation, all_policies, dest};
use crate::classify;
use crate::cluster::{Cluster, WorkloadId};
use crate::eval::{self, ClusterView, PolicySet};
use crate::observations::Observations;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Denied {
    /// The source pod, `namespace/name`.
    pub pod: String,
    /// `dst:port/proto` as dialed.
    pub destination: String,
    /// The evaluator's reason.
    pub reason: String,
}

/// Whether a self-check must find the observed flow `key` allowed: its pod is known, not on
/// the host network, of a workload with a policy (`covered`), and its destination is one a
/// policy can enforce. Every output format's self-check asks this one question.
pub fn must_allow(
    cluster: &Cluster,
    covered: &BTreeSet<WorkloadId>,
    key: &crate::observations::FlowKey,
) -> bool {
    let Some(pod) = cluster.pods.get(key.pod) else {
        return false;
    };
    cluster
        .workload_of(key.pod)
        .is_some_and(|w| covered.contains(&w))
        && !pod.host_network
        && classify::unenforceable(key.dst, key.port).is_none()
}

/// Checks the recommendation with the one NetworkPolicy evaluator: every observed flow from a
/// pod that got a policy must be allowed at egress by the generated policies (the default
/// denies included). Flows the report already lists as unresolved, hostNetwork or from
/// unselectable workloads are skipped. Returns the denied flows, sorted.
pub fn self_check<V: ClusterView + Sync + ?Sized>(
    cluster: &Cluster,
    view: &V,
    obs: &Observations,
    rec: &Recommendation,
) -> Result<(), SelfCheckError> {
    let set = PolicySet::new(&all_policies(cluster, rec))
        .map_err(|e| SelfCheckError::Invalid(Chain(&e).to_string()))?;
    let covered: BTreeSet<WorkloadId> = rec.policies.iter().map(|p| p.workload).collect();
    // Egress depends on the source only through its namespace and labels: evaluate each
    // distinct (namespace, labels) once per destination, with a representative pod.
    let mut reps: std::collections::HashMap<(&str, &crate::cluster::Labels), usize> =
        std::collections::HashMap::new();
    let mut checks: BTreeSet<(usize, IpAddr, u16, Protocol)> = BTreeSet::new();
    for key in obs.flows.keys() {
        if !must_allow(cluster, &covered, key) {
            continue;
        }
        let pod = &cluster.pods[key.pod];
        let rep = *reps.entry((&pod.namespace, &pod.labels)).or_insert(key.pod);
        checks.insert((rep, key.dst, key.port, key.protocol));
    }
    let checks: Vec<_> = checks.into_iter().collect();
    let check_one = |&(rep, dst, port, protocol): &(usize, IpAddr, u16, Protocol)| {
        let pod = &cluster.pods[rep];
        let source = view.pod(&pod.namespace, &pod.name)?;
        let flow = eval::Flow {
            protocol,
            dst,
            dst_port: port,
        };
        let ev = eval::evaluate(view, &set, source, &flow);
        // A flow with no backend at all is reported as unresolved, not checked here.
        if ev.problem.is_some() || ev.egress != eval::Verdict::Deny {
            return None;
        }
        let reason = ev
            .targets
            .iter()
            .filter(|t| t.egress.verdict == eval::Verdict::Deny)
            .map(|t| format!("{} {}:{}: {}", t.destination, t.ip, t.port, t.egress.reason))
            .collect::<Vec<_>>()
            .join("; ");
        Some(Denied {
            pod: format!("{}/{}", pod.namespace, pod.name),
            destination: dest(dst, port, protocol),
            reason,
        })
    };
    // Evaluations are independent: spread them over the available cores.
    let mut denied: Vec<Denied> = crate::parallel::map(&checks, check_one)
        .into_iter()
        .flatten()
        .collect();
    denied.sort();
    if denied.is_empty() {
        Ok(())
    } else {
        Err(SelfCheckError::Denied(denied))
    }
}

/// Why the self-check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelfCheckError {
    /// A generated policy fails the evaluator's validation.
    #[error("a generated policy is invalid: {0}")]
    Invalid(String),
    /// Observed flows would be denied.
    #[error("{} observed flow(s) would be denied, first: {} -> {} ({})",
        .0.len(),
        .0.first().map_or("", |d| d.pod.as_str()),
        .0.first().map_or("", |d| d.destination.as_str()),
        .0.first().map_or("", |d| d.reason.as_str()))]
    Denied(Vec<Denied>),
}
