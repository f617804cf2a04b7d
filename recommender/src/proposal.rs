//! The whole proposal, as `leash recommend`, `leash pr` and the pull-request loop of
//! `leash serve` make it: the self-checked recommendation over the previous proposal, what
//! the applied policies of other authors mean for it, every workload's rollout phase against
//! it, and `--ready-only`'s filter. Pure: the callers read the inputs and write the result.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::cluster::Cluster;
use crate::observations::Observations;
use crate::recommend::{self, Previous, Recommendation, Stability};
use crate::rollout::{self, WorkloadStatus};

/// Why no proposal could be made.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The generated policies deny an observed flow: a bug of leash's, never an answer.
    #[error("self-check failed, refusing to write policies")]
    SelfCheck(#[source] recommend::SelfCheckError),
    /// An applied policy cannot be evaluated (the rollout phases need every one).
    #[error("{source_name}: an applied NetworkPolicy cannot be evaluated")]
    Applied {
        /// Where the applied policies were read.
        source_name: String,
        /// The evaluator's error.
        source: crate::eval::Error,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a proposal is made from, besides the previous proposal.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The cluster model.
    pub cluster: &'a Cluster,
    /// The NetworkPolicies applied in the cluster.
    pub applied: &'a [NetworkPolicy],
    /// The ClusterNetworkPolicies applied in the cluster (the pull-request loop's guardrails
    /// are proposed over them).
    pub applied_cluster: &'a [crate::cnp::ClusterNetworkPolicy],
    /// Where `applied` was read (a snapshot file, the API server), for errors.
    pub applied_source: &'a str,
    /// The window's observations.
    pub observations: &'a Observations,
    /// The observations of the store's whole retention, when the window is shorter.
    pub history: Option<&'a Observations>,
    /// The end of the window (now for a store; the last observation for record files).
    pub as_of: DateTime<Utc>,
    /// Observations that could not be used, for the report.
    pub skipped: &'a [String],
}

/// How to propose.
#[derive(Debug, Clone)]
pub struct Options {
    /// The recommender's knobs (namespaces, CIDR budget, minimum observation, …).
    pub recommend: recommend::Options,
    /// A previous rule whose last evidence is older than this expires.
    pub expire_after: chrono::Duration,
    /// Policies only for `ready` workloads (and `enforced` ones' kept).
    pub ready_only: bool,
    /// Judge every workload's rollout phase even without `ready_only` (a pull request's
    /// body shows them).
    pub rollout: bool,
}

/// A proposal and the rollout phases it was judged by.
#[derive(Debug, Clone)]
pub struct Proposal {
    /// The recommendation (filtered by `--ready-only` when asked).
    pub recommendation: Recommendation,
    /// Every workload's rollout phase, against the applied policies and the proposal before
    /// the `--ready-only` filter, sorted; `None` unless asked for (`ready_only`, `rollout`).
    pub rollout: Option<Vec<WorkloadStatus>>,
}

/// Makes the proposal over `previous`. `now` is when the rollout phases are judged.
pub fn propose(
    inputs: &Observed<'_>,
    previous: Option<&Previous>,
    opts: &Options,
    now: DateTime<Utc>,
) -> Result<Proposal> {
    let Observed {
        cluster,
        applied,
        applied_source,
        observations,
        ..
    } = *inputs;
    let stability = Stability {
        previous,
        history: inputs.history,
        as_of: inputs.as_of,
        expire_after: opts.expire_after,
    };
    let mut recommendation =
        recommend::checked_stable(cluster, observations, &opts.recommend, &stability)
            .map_err(Error::SelfCheck)?;
    recommendation.skipped_input = inputs.skipped.to_vec();
    recommendation.shared_egress = recommend::shared_egress(cluster, applied, &recommendation);
    recommend::also_allowed(cluster, applied, observations, &mut recommendation);
    // Judging phases evaluates every flow twice: only when asked.
    let rollout = if opts.ready_only || opts.rollout {
        let statuses = phases(
            inputs,
            Some(&recommend::all_policies(cluster, &recommendation)),
            opts.recommend.min_observation,
            opts.recommend.namespaces.clone(),
            now,
        )
        .map_err(|source| Error::Applied {
            source_name: applied_source.to_owned(),
            source,
        })?;
        if opts.ready_only {
            rollout::keep_ready(cluster, &mut recommendation, &statuses);
        }
        Some(statuses)
    } else {
        None
    };
    Ok(Proposal {
        recommendation,
        rollout,
    })
}

/// Every workload's rollout phase against the applied policies (NetworkPolicies and
/// ClusterNetworkPolicies) and, when `given` is, the NetworkPolicies `given` laid over them.
pub fn phases(
    inputs: &Observed<'_>,
    given: Option<&[NetworkPolicy]>,
    min_observation: chrono::Duration,
    namespaces: BTreeSet<String>,
    now: DateTime<Utc>,
) -> Result<Vec<WorkloadStatus>, crate::eval::Error> {
    let applied_set = crate::eval::PolicySet::new(inputs.applied)?
        .with_cluster_policies(inputs.applied_cluster)?;
    let proposed = given
        .map(|g| {
            crate::policy_state::compiled(inputs.applied, g)
                .and_then(|s| s.with_cluster_policies(inputs.applied_cluster))
        })
        .transpose()?;
    Ok(rollout::phases(
        inputs.cluster,
        inputs.observations,
        &rollout::Policies {
            applied: inputs.applied,
            applied_set: &applied_set,
            proposed: proposed.as_ref(),
        },
        &rollout::Options {
            min_observation,
            now,
            namespaces,
        },
    ))
}
