//! What [`recommend`](super::recommend) decided: one policy per workload, its rules with their
//! peers and evidence, and the findings the report lists.

use std::collections::BTreeSet;

use chrono::Duration;
use ipnet::IpNet;

use super::RuleEvidence;
use crate::classify::HostKind;
use crate::cluster::{LabelSelector, WorkloadId};
use crate::ports::PortRange;

/// A peer of a generated rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum EgressPeer {
    /// Pods by labels; `namespace` set adds a namespaceSelector on
    /// `kubernetes.io/metadata.name` in the **same** peer (AND).
    Pods {
        /// The namespace, when it is not the policy's own.
        namespace: Option<String>,
        /// The pod selector.
        selector: LabelSelector,
    },
    /// An ipBlock.
    Block {
        /// Canonical CIDR.
        cidr: IpNet,
        /// Canonical CIDRs strictly inside `cidr`.
        except: Vec<IpNet>,
        /// Addresses the block allows that were never observed.
        unobserved: u128,
    },
}

/// What a rule is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RuleKind {
    /// DNS resolution.
    Dns,
    /// Pods of a workload (directly or behind a Service).
    Workload(String),
    /// Addresses selectors cannot match.
    Hosts(BTreeSet<HostKind>),
    /// External addresses.
    External,
}

/// One egress rule with its justification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    /// What it is for.
    pub kind: RuleKind,
    /// Peers (OR).
    pub peers: Vec<EgressPeer>,
    /// Ports (OR); never empty, protocol always explicit.
    pub ports: Vec<PortRange>,
    /// Evidence.
    pub evidence: RuleEvidence,
    /// For ipBlock rules: addresses allowed that were never observed.
    pub unobserved_addresses: Option<u128>,
    /// For ipBlock rules: whether the CIDR budget could be met.
    pub budget_met: bool,
    /// Things a reviewer should know about this rule.
    pub notes: Vec<String>,
}

/// The recommended policy of one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// The workload.
    pub workload: WorkloadId,
    /// Namespace.
    pub namespace: String,
    /// Policy name (`<workload>-egress`).
    pub name: String,
    /// The workload's pod selector.
    pub pod_selector: LabelSelector,
    /// Rules, in a fixed order: DNS, workloads, hosts, externals.
    pub rules: Vec<EgressRule>,
    /// All evidence of the workload.
    pub evidence: RuleEvidence,
}

/// Egress of a hostNetwork workload: reported, never enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetworkFinding {
    /// The workload.
    pub workload: WorkloadId,
    /// Evidence.
    pub evidence: RuleEvidence,
}

/// A flow that could not become a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unresolved {
    /// The source workload.
    pub workload: WorkloadId,
    /// `dst:port/proto` as dialed.
    pub destination: String,
    /// Why.
    pub reason: String,
    /// Events.
    pub count: u64,
}

/// Everything `recommend` decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recommendation {
    /// One policy per workload with observed egress, sorted by (namespace, name).
    pub policies: Vec<PolicySpec>,
    /// Namespaces that get `default-deny-egress`, sorted.
    pub default_deny_namespaces: Vec<String>,
    /// Workloads in those namespaces without observed egress: default-deny isolates them.
    pub isolated: Vec<WorkloadId>,
    /// Workloads whose egress was observed for less than `--min-observation`, with the span.
    pub briefly_observed: Vec<(WorkloadId, Duration)>,
    /// hostNetwork workloads' egress.
    pub host_network: Vec<HostNetworkFinding>,
    /// Workloads with egress but no stable label to select them by.
    pub unselectable: Vec<WorkloadId>,
    /// Flows that became no rule.
    pub unresolved: Vec<Unresolved>,
    /// Flow events not attributed to a pod.
    pub unattributed_flows: u64,
    /// The minimum observation span used.
    pub min_observation: Duration,
    /// Observations that were left out, one line each (e.g. stored workloads that are gone
    /// from the cluster model), sorted: their traffic is in no policy. Filled by the caller
    /// that read them (`recommend --store`).
    pub skipped_input: Vec<String>,
    /// Workloads whose egress an applied NetworkPolicy leash did not write already restricts
    /// ([`super::shared_egress`]). Filled by the caller that has the applied policies
    /// (`recommend`).
    pub shared_egress: Vec<super::SharedEgress>,
    /// Policies left out by `recommend --ready-only` (`crate::rollout::keep_ready`), sorted.
    pub withheld: Vec<Withheld>,
}

/// A workload whose policy `recommend --ready-only` left out: its rollout phase and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Withheld {
    /// The workload.
    pub workload: WorkloadId,
    /// Its rollout phase (`crate::rollout::Phase`).
    pub phase: String,
    /// Why it is in that phase, one line.
    pub why: String,
}
