//! The guardrails as the first stage of a cluster-wide rollout, pure.
//!
//! A rollout goes guardrails first (in audit, then enforced), then namespace by namespace
//! ([`super::STAGE_ORDER`]). The stage compares the applied state (NetworkPolicies and
//! ClusterNetworkPolicies) with the same state where leash's guardrails are replaced by the
//! proposed ones, over the observed flows, with the one observed-flow diff
//! ([`crate::diff::flows::changes`]): every workload whose observed traffic the proposal would
//! break is listed, and there must be none. Its phase is the first that applies:
//!
//! | phase | meaning |
//! |---|---|
//! | `would-break` | a proposal differs from the applied guardrails and denies observed flows the applied state allows |
//! | `ready` | a proposal differs from the applied guardrails and breaks no observed flow: apply it, in audit first |
//! | `drifted` | leash's applied guardrails deny observed flows |
//! | `enforced` | leash's guardrails are applied (and equal the proposal, if any) and deny no observed flow |
//! | `absent` | no guardrails applied or proposed |
//!
//! `leash rollout status`, `leash serve` (`GET /v1/rollout`) and the pull-request loop share it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Serialize;

use super::{is_guardrail, object_yaml, replace_guardrails};
use crate::cluster::Cluster;
use crate::cnp::ClusterNetworkPolicy;
use crate::diff::flows::{FlowChange, WorkloadKey, changes};
use crate::eval::{self, PolicySet, Verdict};
use crate::observations::Observations;
use crate::rollout::{Denials, DeniedFlow, add_denied};

/// The guardrails stage's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// A proposal would break observed traffic.
    WouldBreak,
    /// A proposal breaks nothing: apply it, in audit (shadow) first.
    Ready,
    /// leash's applied guardrails deny observed flows.
    Drifted,
    /// leash's guardrails are applied and deny no observed flow.
    Enforced,
    /// No guardrails applied or proposed.
    Absent,
}

impl Phase {
    /// Every phase, in order of precedence.
    pub const ALL: [Phase; 5] = [
        Phase::WouldBreak,
        Phase::Ready,
        Phase::Drifted,
        Phase::Enforced,
        Phase::Absent,
    ];

    /// The phase's name, as in JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::WouldBreak => "would-break",
            Phase::Ready => "ready",
            Phase::Drifted => "drifted",
            Phase::Enforced => "enforced",
            Phase::Absent => "absent",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One workload's flows that a policy state denies (summed over its pods).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadFlows {
    /// The namespace.
    pub namespace: String,
    /// `Kind/name` ([`crate::json`]).
    pub workload: String,
    /// The flows, sorted by destination.
    pub flows: Vec<DeniedFlow>,
}

/// The guardrails stage: the JSON object of `leash rollout status` and `GET /v1/rollout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// The phase.
    pub phase: Phase,
    /// leash's guardrails applied in the cluster, by name.
    pub applied: Vec<String>,
    /// The proposed guardrails, by name (empty without a proposal).
    pub proposed: Vec<String>,
    /// The workloads whose observed traffic the proposal would break (allowed by the applied
    /// state, denied with the proposal), sorted. Must be empty before it is applied.
    pub breaks: Vec<WorkloadFlows>,
    /// The workloads whose observed flows leash's applied guardrails deny, sorted.
    pub denied: Vec<WorkloadFlows>,
}

impl Stage {
    /// Why it is in its phase, in one line.
    pub fn why(&self) -> String {
        match self.phase {
            Phase::WouldBreak => format!(
                "the proposed guardrails would break the observed traffic of {}",
                workloads_text(&self.breaks)
            ),
            Phase::Ready => format!(
                "{} proposed guardrail{} break no workload's observed traffic: apply them \
                 first, in audit (shadow), then enforce",
                self.proposed.len(),
                if self.proposed.len() == 1 { "" } else { "s" }
            ),
            Phase::Drifted => format!(
                "the applied guardrails deny observed flows of {}",
                workloads_text(&self.denied)
            ),
            Phase::Enforced => format!(
                "{} guardrail{} applied, denying no observed flow",
                self.applied.len(),
                if self.applied.len() == 1 { "" } else { "s" }
            ),
            Phase::Absent => {
                "no guardrails applied or proposed (leash guardrails proposes them)".to_owned()
            }
        }
    }
}

/// `2 workloads: shop/Deployment/web (3 flows), …`.
fn workloads_text(w: &[WorkloadFlows]) -> String {
    const SHOWN: usize = 3;
    let mut out = format!(
        "{} workload{}: ",
        w.len(),
        if w.len() == 1 { "" } else { "s" }
    );
    let shown: Vec<String> = w
        .iter()
        .take(SHOWN)
        .map(|w| {
            format!(
                "{}/{} ({})",
                w.namespace,
                w.workload,
                crate::render::plural(w.flows.len(), "flow", "flows")
            )
        })
        .collect();
    out.push_str(&shown.join(", "));
    if w.len() > SHOWN {
        out.push_str(&format!(" and {} more", w.len() - SHOWN));
    }
    out
}

/// Why the stage cannot be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A policy state does not compile.
    #[error("{what}: the policies cannot be evaluated")]
    Eval {
        /// Which state.
        what: &'static str,
        /// The evaluator's error.
        source: eval::Error,
    },
}

/// The applied state, and what the stage compares with it.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The NetworkPolicies in force (applied, or applied with merged proposals over them).
    pub network_policies: &'a [NetworkPolicy],
    /// The ClusterNetworkPolicies applied.
    pub cluster_policies: &'a [ClusterNetworkPolicy],
    /// The proposed guardrails, if any.
    pub proposed: Option<&'a [ClusterNetworkPolicy]>,
}

/// Canonical texts of leash's guardrails, sorted: equal exactly when they mean the same.
pub fn canonical(policies: &[ClusterNetworkPolicy]) -> Vec<String> {
    let mut out: Vec<String> = policies
        .iter()
        .map(|p| object_yaml(p).unwrap_or_else(|e| format!("unrenderable: {e}")))
        .collect();
    out.sort();
    out
}

/// The stage of the guardrails for this cluster, these observations and policies.
pub fn stage(cluster: &Cluster, obs: &Observations, input: &Input<'_>) -> Result<Stage, Error> {
    let applied_guardrails: Vec<ClusterNetworkPolicy> = input
        .cluster_policies
        .iter()
        .filter(|p| is_guardrail(p))
        .cloned()
        .collect();
    let before = PolicySet::new(input.network_policies)
        .and_then(|s| s.with_cluster_policies(input.cluster_policies))
        .map_err(|source| Error::Eval {
            what: "the applied policies",
            source,
        })?;
    let names = |ps: &[ClusterNetworkPolicy]| -> Vec<String> {
        let mut n: Vec<String> = ps.iter().map(|p| p.name().to_owned()).collect();
        n.sort();
        n
    };
    let proposed = input
        .proposed
        .filter(|p| canonical(p) != canonical(&applied_guardrails));
    let mut out = Stage {
        phase: Phase::Absent,
        applied: names(&applied_guardrails),
        proposed: input.proposed.map(names).unwrap_or_default(),
        breaks: Vec::new(),
        denied: Vec::new(),
    };
    if let Some(proposed) = proposed {
        let tiers = replace_guardrails(input.cluster_policies, proposed);
        let after = PolicySet::new(input.network_policies)
            .and_then(|s| s.with_cluster_policies(&tiers))
            .map_err(|source| Error::Eval {
                what: "the proposed guardrails",
                source,
            })?;
        let diff = changes(cluster, obs, &before, &after, &BTreeSet::new());
        out.breaks = by_workload(diff.changes.iter().filter(|c| c.is_break()));
        out.phase = if out.breaks.is_empty() {
            Phase::Ready
        } else {
            Phase::WouldBreak
        };
    }
    if !applied_guardrails.is_empty() {
        out.denied = denied_by(cluster, obs, &before, &out.applied);
        if proposed.is_none() {
            out.phase = if out.denied.is_empty() {
                Phase::Enforced
            } else {
                Phase::Drifted
            };
        }
    }
    Ok(out)
}

/// The observed flows whose deny is decided by one of the ClusterNetworkPolicies `names`.
fn denied_by(
    cluster: &Cluster,
    obs: &Observations,
    set: &PolicySet,
    names: &[String],
) -> Vec<WorkloadFlows> {
    let keys: Vec<_> = obs
        .flows
        .iter()
        .filter_map(|(k, ev)| cluster.pods.get(k.pod).map(|pod| (k, ev, pod)))
        .filter(|(_, _, pod)| !pod.host_network)
        .collect();
    let judge = |(k, _, pod): &(
        &crate::observations::FlowKey,
        &crate::observations::Evidence,
        &crate::cluster::PodInfo,
    )| {
        let e = eval::evaluate(cluster, set, *pod, &flow_of(k));
        e.problem.is_none()
            && e.verdict == Verdict::Deny
            && e.targets.iter().any(|t| {
                t.egress
                    .deciding_cluster_rule()
                    .is_some_and(|m| names.contains(&m.policy))
            })
    };
    let verdicts = crate::parallel::map(&keys, judge);
    let mut out: BTreeMap<WorkloadKey, Denials> = BTreeMap::new();
    for ((k, ev, pod), denied) in keys.iter().zip(verdicts) {
        if !denied {
            continue;
        }
        let w = crate::diff::flows::workload_of(cluster, pod);
        let mut ev = (*ev).clone();
        if let Some(n) = obs.names_by_ip.get(&k.dst.to_canonical()) {
            ev.names.extend(n.iter().cloned());
        }
        add_denied(out.entry(w).or_default(), &flow_of(k), &ev);
    }
    finish(out)
}

/// Breaks folded per workload.
fn by_workload<'a>(changes: impl Iterator<Item = &'a FlowChange>) -> Vec<WorkloadFlows> {
    let mut out: BTreeMap<WorkloadKey, Denials> = BTreeMap::new();
    for c in changes {
        add_denied(
            out.entry(c.source.clone()).or_default(),
            &c.flow,
            &c.evidence,
        );
    }
    finish(out)
}

fn flow_of(k: &crate::observations::FlowKey) -> eval::Flow {
    eval::Flow {
        protocol: k.protocol,
        dst: k.dst,
        dst_port: k.port,
    }
}

fn finish(by: BTreeMap<WorkloadKey, Denials>) -> Vec<WorkloadFlows> {
    by.into_iter()
        .map(|(w, flows)| WorkloadFlows {
            namespace: w.namespace,
            workload: w.workload,
            flows: flows.into_values().collect(),
        })
        .collect()
}
