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
    /// A rule of the previous proposal, kept: inside the expiry period, and not covered by
    /// the rules of this window's observations.
    Previous,
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
    /// A rule kept from the previous proposal that no observation of this window backs: its
    /// evidence is the previous proposal's, or older observations of the store.
    pub not_seen_in_window: bool,
    /// Applied NetworkPolicies leash did not write that also allow this rule's observed
    /// flows (`namespace/name`, sorted). leash's rule stays: its policies must stand alone.
    pub also_allowed_by: Vec<String>,
}

impl EgressRule {
    /// A rule with no notes, seen in this window, allowed by no other policy.
    pub fn new(
        kind: RuleKind,
        peers: Vec<EgressPeer>,
        ports: Vec<PortRange>,
        evidence: RuleEvidence,
    ) -> Self {
        EgressRule {
            kind,
            peers,
            ports,
            evidence,
            unobserved_addresses: None,
            budget_met: true,
            notes: Vec::new(),
            not_seen_in_window: false,
            also_allowed_by: Vec::new(),
        }
    }

    /// The rule's destinations, one text per peer: `10.0.0.0/24 except 10.0.0.8/29`,
    /// `pods app=api`, `ns data AND pods app=db`.
    pub fn peer_texts(&self) -> Vec<String> {
        self.peers.iter().map(ToString::to_string).collect()
    }

    /// The rule's ports as text: `53/UDP, 8000-8080/TCP`.
    pub fn ports_text(&self) -> String {
        self.ports
            .iter()
            .map(|p| match p.end_port {
                Some(e) => format!("{}-{}/{}", p.port, e, p.protocol),
                None => format!("{}/{}", p.port, p.protocol),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// What the rule allows, as one line (`to … on …`): the key that matches a rule of one
    /// run with its evidence in `evidence.json`, and the text of the changes section.
    pub fn key(&self) -> String {
        format!(
            "to {} on {}",
            self.peer_texts().join(" | "),
            self.ports_text()
        )
    }
}

impl std::fmt::Display for EgressPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EgressPeer::Pods {
                namespace: Some(ns),
                selector,
            } => write!(f, "ns {ns} AND pods {selector}"),
            EgressPeer::Pods {
                namespace: None,
                selector,
            } => write!(f, "pods {selector}"),
            EgressPeer::Block { cidr, except, .. } => {
                write!(f, "{cidr}")?;
                if !except.is_empty() {
                    let ex: Vec<String> = except.iter().map(ToString::to_string).collect();
                    write!(f, " except {}", ex.join(","))?;
                }
                Ok(())
            }
        }
    }
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
    /// Whether a previous proposal was given (`--previous`, or leash's applied policies);
    /// without one, REPORT.md says every rule is new.
    pub has_previous: bool,
    /// What changed since the previous proposal, sorted by (namespace, policy, kind, rule).
    pub changes: Vec<Change>,
    /// Policies left out by `recommend --ready-only` (`crate::rollout::keep_ready`), sorted.
    pub withheld: Vec<Withheld>,
    /// The external rules of each policy grouped by DNS name, with each name's addresses and
    /// churn ([`super::names`]).
    pub names: super::names::Names,
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

/// How a rule changed since the previous proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// A rule that allows something the previous proposal did not.
    Added,
    /// A previous rule replaced by one that allows more.
    Widened,
    /// A previous rule, expired, replaced by one that allows less.
    Narrowed,
    /// A previous rule dropped: its last evidence is older than `--expire-after`, or its
    /// workload is gone.
    Removed,
}

impl ChangeKind {
    /// `added`, `widened`, `narrowed`, `removed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Widened => "widened",
            ChangeKind::Narrowed => "narrowed",
            ChangeKind::Removed => "removed",
        }
    }
}

/// One change of a policy since the previous proposal, with the evidence that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The namespace.
    pub namespace: String,
    /// The policy name.
    pub policy: String,
    /// The workload, `Kind/name`.
    pub workload: String,
    /// What happened.
    pub kind: ChangeKind,
    /// The previous rule ([`EgressRule::key`]), for widened, narrowed and removed rules.
    pub before: Option<String>,
    /// The new rule, for added, widened and narrowed rules.
    pub after: Option<String>,
    /// The evidence that caused it: the new rule's, or the removed rule's last.
    pub evidence: RuleEvidence,
    /// Why, in words (`last seen … , older than --expire-after 30d`).
    pub why: String,
}
