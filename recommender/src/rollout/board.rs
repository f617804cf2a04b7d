//! The whole rollout board, pure: the guardrails stage first ([`crate::guardrails::stage`]),
//! then every workload's phase ([`super::phases`]), over the applied policy state and, when
//! given, a proposed one.
//!
//! A proposed state may hold NetworkPolicies and ClusterNetworkPolicies. Its NetworkPolicies
//! are laid over the applied ones ([`crate::policy_state::combine`]); its tiers are the
//! applied ClusterNetworkPolicies with the given ones over them ([`proposed_tiers`]): leash's
//! guardrails among the given replace leash's applied guardrails, every other given one
//! replaces the applied one of its name. `leash rollout status` and `leash serve` share it.

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{Options, Policies, WorkloadStatus, phases};
use crate::cluster::Cluster;
use crate::cnp::ClusterNetworkPolicy;
use crate::eval::{self, PolicySet};
use crate::guardrails::{self, stage};
use crate::observations::Observations;

/// A policy state: NetworkPolicies and ClusterNetworkPolicies.
#[derive(Debug, Clone, Copy, Default)]
pub struct State<'a> {
    /// The NetworkPolicies.
    pub network_policies: &'a [NetworkPolicy],
    /// The ClusterNetworkPolicies.
    pub cluster_policies: &'a [ClusterNetworkPolicy],
}

/// The board: the guardrails stage, then the workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Board {
    /// Stage 1: the guardrails.
    pub stage: stage::Stage,
    /// Stage 2: every workload's phase, sorted by namespace, kind and name.
    pub workloads: Vec<WorkloadStatus>,
}

/// Why the board cannot be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The applied policies do not compile as a set.
    #[error("the applied policies cannot be evaluated")]
    Applied(#[source] eval::Error),
    /// The proposed state does not compile as a set.
    #[error("the proposed policies laid over the applied ones cannot be evaluated")]
    Proposed(#[source] eval::Error),
    /// The guardrails stage cannot be evaluated.
    #[error("the guardrails stage")]
    Stage(#[source] stage::Error),
}

/// The proposed state's tiers: `applied` with `given` over them. When `given` holds leash
/// guardrails ([`guardrails::is_guardrail`]) they replace all of leash's applied guardrails
/// ([`guardrails::replace_guardrails`]); every other given policy replaces the applied one of
/// its name ([`guardrails::lay_over`]). Sorted by name.
pub fn proposed_tiers(
    applied: &[ClusterNetworkPolicy],
    given: &[ClusterNetworkPolicy],
) -> Vec<ClusterNetworkPolicy> {
    let (ours, others): (Vec<ClusterNetworkPolicy>, Vec<ClusterNetworkPolicy>) =
        given.iter().cloned().partition(guardrails::is_guardrail);
    if ours.is_empty() {
        guardrails::lay_over(applied, &others)
    } else {
        guardrails::lay_over(&guardrails::replace_guardrails(applied, &ours), &others)
    }
}

/// The given ClusterNetworkPolicies that are leash's guardrails, `None` when there are none:
/// the proposal of the guardrails stage.
pub fn given_guardrails(given: &[ClusterNetworkPolicy]) -> Option<Vec<ClusterNetworkPolicy>> {
    let ours: Vec<ClusterNetworkPolicy> = given
        .iter()
        .filter(|p| guardrails::is_guardrail(p))
        .cloned()
        .collect();
    (!ours.is_empty()).then_some(ours)
}

/// The applied state compiled: its NetworkPolicies with its ClusterNetworkPolicies as tiers.
pub fn applied_set(applied: &State<'_>) -> Result<PolicySet, Error> {
    PolicySet::new(applied.network_policies)
        .and_then(|s| s.with_cluster_policies(applied.cluster_policies))
        .map_err(Error::Applied)
}

/// The proposed state compiled: `given` laid over `applied`, NetworkPolicies and tiers.
pub fn proposed_set(applied: &State<'_>, given: &State<'_>) -> Result<PolicySet, Error> {
    let tiers = proposed_tiers(applied.cluster_policies, given.cluster_policies);
    crate::policy_state::compiled(applied.network_policies, given.network_policies)
        .and_then(|s| s.with_cluster_policies(&tiers))
        .map_err(Error::Proposed)
}

/// The guardrails stage of `applied` and, when given, the guardrails among `given`.
pub fn guardrails_stage(
    cluster: &Cluster,
    obs: &Observations,
    applied: &State<'_>,
    given: Option<&State<'_>>,
) -> Result<stage::Stage, Error> {
    let proposed = given.and_then(|g| given_guardrails(g.cluster_policies));
    stage::stage(
        cluster,
        obs,
        &stage::Input {
            network_policies: applied.network_policies,
            cluster_policies: applied.cluster_policies,
            proposed: proposed.as_deref(),
        },
    )
    .map_err(Error::Stage)
}

/// The board of `cluster` and `obs`: the guardrails stage, and every workload's phase against
/// `applied` and, when given, `given` laid over it.
pub fn board(
    cluster: &Cluster,
    obs: &Observations,
    applied: &State<'_>,
    given: Option<&State<'_>>,
    opts: &Options,
) -> Result<Board, Error> {
    let applied_compiled = applied_set(applied)?;
    let proposed = given.map(|g| proposed_set(applied, g)).transpose()?;
    let workloads = phases(
        cluster,
        obs,
        &Policies {
            applied: applied.network_policies,
            applied_set: &applied_compiled,
            proposed: proposed.as_ref(),
        },
        opts,
    );
    let stage = guardrails_stage(cluster, obs, applied, given)?;
    Ok(Board { stage, workloads })
}

/// `stage` as one namespace sees it: the workloads it breaks and denies of `namespace` only
/// (the phase stays the cluster's).
pub fn stage_of_namespace(stage: &stage::Stage, namespace: &str) -> stage::Stage {
    let mine = |w: &[stage::WorkloadFlows]| -> Vec<stage::WorkloadFlows> {
        w.iter()
            .filter(|w| w.namespace == namespace)
            .cloned()
            .collect()
    };
    stage::Stage {
        breaks: mine(&stage.breaks),
        denied: mine(&stage.denied),
        ..stage.clone()
    }
}
