//! ClusterNetworkPolicies compiled for the evaluator: the Admin and Baseline tiers.
//!
//! Semantics (network-policy-api v0.2.0, the CRD's documentation):
//! - within a tier, policies are checked by `priority`, lower values first; within a policy,
//!   rules in order, and the first rule whose peers and protocols match decides for it;
//! - `Accept` allows and `Deny` denies, and no later policy or tier is consulted; `Pass`
//!   skips the rest of its tier;
//! - policies of equal priority whose matching rules disagree leave the result undefined:
//!   leash reports a [`Conflict`] naming both and denies (fail closed);
//! - subjects and `namespaces`/`pods` peers never select hostNetwork pods; `networks`
//!   match any address, pods' included; `nodes` match the selected Nodes' addresses;
//!   `domainNames` match the addresses the names resolved to (leash's DNS evidence);
//! - `protocols` absent means every port; a named port is a container port of the
//!   destination pod, with its protocol.
//!
//! Pure: the evaluator hands in closures that answer peer and port questions.

use std::{collections::BTreeMap, fmt};

use ipnet::IpNet;
use leash_records::Protocol;
use serde::Serialize;

use super::{Error, Result};
use crate::cluster::LabelSelector;
use crate::cnp::{
    self, Action, ClusterNetworkPolicy, EgressPeer, IngressPeer, NamespacedPod, ProtocolPort, Tier,
};

/// Which pods a subject or a selector peer reaches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodSelection {
    /// The namespaces (by their labels).
    pub namespaces: LabelSelector,
    /// The pods inside them; `None` for every pod.
    pub pods: Option<LabelSelector>,
}

impl PodSelection {
    /// Whether a (pod-network) pod with these namespace and pod labels is selected.
    pub fn matches(
        &self,
        ns_labels: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
    ) -> bool {
        self.namespaces.matches(ns_labels) && self.pods.as_ref().is_none_or(|p| p.matches(labels))
    }
}

/// One compiled peer of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterPeer {
    /// Pod-network pods (a `namespaces` or `pods` peer).
    Pods(PodSelection),
    /// Address ranges, truncated to their networks.
    Networks(Vec<IpNet>),
    /// The addresses of the Nodes whose labels match.
    Nodes(LabelSelector),
    /// Domain names, exact or `*.` wildcards, lower-cased without a trailing dot.
    DomainNames(Vec<String>),
}

/// One compiled `protocols` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterPort {
    /// A protocol and a port range, both ends included (a number is a range of one).
    Range(Protocol, u16, u16),
    /// A container port's name on the destination pod.
    Named(String),
}

/// One compiled rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRule {
    /// Its 0-based index in `spec.ingress` or `spec.egress`.
    pub index: usize,
    /// Its `name`, when set.
    pub name: Option<String>,
    /// What it does.
    pub action: Action,
    /// Its peers (at least one).
    pub peers: Vec<ClusterPeer>,
    /// Its ports; empty for every port.
    pub ports: Vec<ClusterPort>,
}

/// One compiled ClusterNetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledClusterPolicy {
    /// `metadata.name`.
    pub name: String,
    /// Its tier.
    pub tier: Tier,
    /// Its priority (lower first).
    pub priority: i32,
    /// The pods it applies to.
    pub subject: PodSelection,
    /// Ingress rules, in order.
    pub ingress: Vec<ClusterRule>,
    /// Egress rules, in order.
    pub egress: Vec<ClusterRule>,
}

type K8sSelector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Compiles a selector; `cnp::validate` checked it already, so an error here names the field
/// all the same.
fn selector(s: &K8sSelector, at: &str) -> Result<LabelSelector, String> {
    LabelSelector::parse(s, at)
}

fn pod_peer(
    ns: Option<&K8sSelector>,
    pods: Option<&NamespacedPod>,
    at: &str,
) -> Result<Option<PodSelection>, String> {
    Ok(match (ns, pods) {
        (Some(n), _) => Some(PodSelection {
            namespaces: selector(n, &format!("{at}.namespaces"))?,
            pods: None,
        }),
        (None, Some(p)) => Some(PodSelection {
            namespaces: match &p.namespace_selector {
                Some(n) => selector(n, &format!("{at}.pods.namespaceSelector"))?,
                // Absent, like empty: every namespace.
                None => LabelSelector::default(),
            },
            pods: Some(selector(
                &p.pod_selector,
                &format!("{at}.pods.podSelector"),
            )?),
        }),
        (None, None) => None,
    })
}

fn ingress_peer(p: &IngressPeer, at: &str) -> Result<Vec<ClusterPeer>, String> {
    Ok(pod_peer(p.namespaces.as_ref(), p.pods.as_ref(), at)?
        .map(ClusterPeer::Pods)
        .into_iter()
        .collect())
}

fn egress_peer(p: &EgressPeer, at: &str) -> Result<Vec<ClusterPeer>, String> {
    let mut out: Vec<ClusterPeer> = pod_peer(p.namespaces.as_ref(), p.pods.as_ref(), at)?
        .map(ClusterPeer::Pods)
        .into_iter()
        .collect();
    if let Some(nets) = &p.networks {
        let mut compiled = Vec::new();
        for (i, n) in nets.iter().enumerate() {
            compiled.push(
                cnp::validate::parse_cel_cidr(n)
                    .ok_or_else(|| format!("{at}.networks[{i}]: Invalid CIDR format provided"))?,
            );
        }
        out.push(ClusterPeer::Networks(compiled));
    }
    if let Some(n) = &p.nodes {
        out.push(ClusterPeer::Nodes(selector(n, &format!("{at}.nodes"))?));
    }
    if let Some(names) = &p.domain_names {
        out.push(ClusterPeer::DomainNames(
            names.iter().map(|n| normal_name(n)).collect(),
        ));
    }
    Ok(out)
}

fn normal_name(n: &str) -> String {
    n.strip_suffix('.').unwrap_or(n).to_ascii_lowercase()
}

fn ports(list: Option<&[ProtocolPort]>) -> Vec<ClusterPort> {
    let mut out = Vec::new();
    for p in list.into_iter().flatten() {
        if let Some(n) = &p.destination_named_port {
            out.push(ClusterPort::Named(n.clone()));
        }
        for (proto, ports) in [
            (Protocol::Tcp, &p.tcp),
            (Protocol::Udp, &p.udp),
            (Protocol::Sctp, &p.sctp),
        ] {
            let Some(port) = ports.as_ref().and_then(|p| p.destination_port.as_ref()) else {
                continue;
            };
            // Validated: 1 to 65535.
            let clamp = |n: i32| u16::try_from(n).unwrap_or(0);
            match (port.number, &port.range) {
                (Some(n), _) => out.push(ClusterPort::Range(proto, clamp(n), clamp(n))),
                (None, Some(r)) => {
                    out.push(ClusterPort::Range(proto, clamp(r.start), clamp(r.end)))
                }
                (None, None) => {}
            }
        }
    }
    out
}

impl CompiledClusterPolicy {
    /// Validates (the CRD's limits and CEL rules) and compiles one policy.
    pub fn compile(c: &ClusterNetworkPolicy) -> Result<Self> {
        let invalid = |message: String| Error::InvalidClusterPolicy {
            policy: c.name().to_owned(),
            message,
        };
        cnp::validate(c).map_err(|e| invalid(e.to_string()))?;
        let s = &c.spec;
        let subject = pod_peer(
            s.subject.namespaces.as_ref(),
            s.subject.pods.as_ref(),
            "spec.subject",
        )
        .map_err(invalid)?
        .unwrap_or_default();
        let mut ingress = Vec::new();
        for (i, r) in s.ingress.iter().enumerate() {
            let mut peers = Vec::new();
            for (j, p) in r.from.iter().enumerate() {
                peers.extend(
                    ingress_peer(p, &format!("spec.ingress[{i}].from[{j}]")).map_err(invalid)?,
                );
            }
            ingress.push(ClusterRule {
                index: i,
                name: r.name.clone(),
                action: r.action,
                peers,
                ports: ports(r.protocols.as_deref()),
            });
        }
        let mut egress = Vec::new();
        for (i, r) in s.egress.iter().enumerate() {
            let mut peers = Vec::new();
            for (j, p) in r.to.iter().enumerate() {
                peers
                    .extend(egress_peer(p, &format!("spec.egress[{i}].to[{j}]")).map_err(invalid)?);
            }
            egress.push(ClusterRule {
                index: i,
                name: r.name.clone(),
                action: r.action,
                peers,
                ports: ports(r.protocols.as_deref()),
            });
        }
        Ok(Self {
            name: c.name().to_owned(),
            tier: s.tier,
            priority: s.priority,
            subject,
            ingress,
            egress,
        })
    }
}

/// Whether a domain-name peer matches a name: exactly, or `*.` for one or more labels.
pub fn name_matches(pattern: &str, name: &str) -> bool {
    let name = normal_name(name);
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .strip_suffix(suffix)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == name,
    }
}

/// A ClusterNetworkPolicy rule that matched a connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ClusterRuleMatch {
    /// The tier.
    pub tier: Tier,
    /// The policy's priority.
    pub priority: i32,
    /// The policy's name.
    pub policy: String,
    /// The 0-based rule index in `spec.egress` or `spec.ingress`.
    pub rule: usize,
    /// The rule's name, when set.
    pub name: Option<String>,
    /// Its action.
    pub action: Action,
}

impl fmt::Display for ClusterRuleMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tier: ClusterNetworkPolicy {} (priority {}) rule {}",
            self.tier.as_str(),
            self.policy,
            self.priority,
            self.rule
        )?;
        if let Some(n) = &self.name {
            write!(f, " ({n:?})")?;
        }
        write!(f, ": {}", self.action.as_str())
    }
}

/// Policies of equal priority in one tier whose matching rules disagree: the API leaves the
/// result undefined; leash denies.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Conflict {
    /// The tier.
    pub tier: Tier,
    /// The shared priority.
    pub priority: i32,
    /// The matching rules, one per policy, sorted by policy name.
    pub rules: Vec<ClusterRuleMatch>,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let each: Vec<String> = self
            .rules
            .iter()
            .map(|r| format!("{} ({} by rule {})", r.policy, r.action.as_str(), r.rule))
            .collect();
        write!(
            f,
            "ClusterNetworkPolicies {} have the same priority {} in the {} tier and disagree; evaluated as deny",
            each.join(" and "),
            self.priority,
            self.tier.as_str()
        )
    }
}

/// What one tier decided for one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierOutcome {
    /// `Some(Accept)` or `Some(Deny)` when the tier decided; `None` when no rule matched or a
    /// rule passed.
    pub decision: Option<Action>,
    /// The rules that matched, in the order they were reached (a Pass, or the deciding ones).
    pub matched: Vec<ClusterRuleMatch>,
    /// Set when equal-priority policies disagreed (then the decision is Deny).
    pub conflict: Option<Conflict>,
}

/// The compiled ClusterNetworkPolicies, per tier, sorted by priority then name.
#[derive(Debug, Clone, Default)]
pub struct ClusterPolicies {
    admin: Vec<CompiledClusterPolicy>,
    baseline: Vec<CompiledClusterPolicy>,
}

/// The direction a tier is evaluated in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierDirection {
    /// Rules of `spec.ingress`, subject = the destination pod.
    Ingress,
    /// Rules of `spec.egress`, subject = the source pod.
    Egress,
}

impl ClusterPolicies {
    /// Validates and compiles; refuses a name given twice.
    pub fn new(policies: &[ClusterNetworkPolicy]) -> Result<Self> {
        let mut compiled = policies
            .iter()
            .map(CompiledClusterPolicy::compile)
            .collect::<Result<Vec<_>>>()?;
        compiled.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        let mut names: Vec<&str> = compiled.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::DuplicateClusterPolicy {
                policy: w[0].to_owned(),
            });
        }
        let (admin, baseline) = compiled.into_iter().partition(|c| c.tier == Tier::Admin);
        Ok(Self { admin, baseline })
    }

    /// Every policy: the Admin tier, then the Baseline tier, each by priority and name.
    pub fn iter(&self) -> impl Iterator<Item = &CompiledClusterPolicy> {
        self.admin.iter().chain(&self.baseline)
    }

    /// The number of policies.
    pub fn len(&self) -> usize {
        self.admin.len() + self.baseline.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.admin.is_empty() && self.baseline.is_empty()
    }

    /// Whether a rule has a `domainNames` peer: evaluations then need the names each
    /// address was resolved from.
    pub fn has_domain_names(&self) -> bool {
        self.iter()
            .flat_map(|c| &c.egress)
            .flat_map(|r| &r.peers)
            .any(|p| matches!(p, ClusterPeer::DomainNames(_)))
    }

    /// Evaluates `tier` for a pod-network pod (`ns_labels`, `labels`) in `dir`: by priority,
    /// each selecting policy's first matching rule; equal priorities that disagree deny.
    pub fn evaluate(
        &self,
        tier: Tier,
        dir: TierDirection,
        ns_labels: &BTreeMap<String, String>,
        labels: &BTreeMap<String, String>,
        peer_matches: impl Fn(&ClusterPeer) -> bool,
        port_matches: impl Fn(&ClusterPort) -> bool,
    ) -> TierOutcome {
        let list = match tier {
            Tier::Admin => &self.admin,
            Tier::Baseline => &self.baseline,
        };
        let mut i = 0;
        while i < list.len() {
            let priority = list[i].priority;
            let end = list[i..]
                .iter()
                .position(|c| c.priority != priority)
                .map_or(list.len(), |n| i + n);
            let mut hits: Vec<ClusterRuleMatch> = Vec::new();
            for c in &list[i..end] {
                if !c.subject.matches(ns_labels, labels) {
                    continue;
                }
                let rules = match dir {
                    TierDirection::Ingress => &c.ingress,
                    TierDirection::Egress => &c.egress,
                };
                let first = rules.iter().find(|r| {
                    r.peers.iter().any(&peer_matches)
                        && (r.ports.is_empty() || r.ports.iter().any(&port_matches))
                });
                if let Some(r) = first {
                    hits.push(ClusterRuleMatch {
                        tier,
                        priority,
                        policy: c.name.clone(),
                        rule: r.index,
                        name: r.name.clone(),
                        action: r.action,
                    });
                }
            }
            i = end;
            let Some(action) = hits.first().map(|h| h.action) else {
                continue;
            };
            if hits.iter().any(|h| h.action != action) {
                return TierOutcome {
                    decision: Some(Action::Deny),
                    conflict: Some(Conflict {
                        tier,
                        priority,
                        rules: hits.clone(),
                    }),
                    matched: hits,
                };
            }
            return TierOutcome {
                decision: (action != Action::Pass).then_some(action),
                matched: hits,
                conflict: None,
            };
        }
        TierOutcome::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CRD's examples for `domainNames`.
    #[test]
    fn domain_names_match_as_documented() {
        let cases = [
            ("kubernetes.io", "kubernetes.io", true),
            ("kubernetes.io", "www.kubernetes.io", false),
            ("kubernetes.io", "my-kubernetes.io", false),
            ("blog.kubernetes.io", "blog.kubernetes.io", true),
            ("blog.kubernetes.io", "kubernetes.io", false),
            ("*.kubernetes.io", "www.kubernetes.io", true),
            ("*.kubernetes.io", "latest.blog.kubernetes.io", true),
            ("*.kubernetes.io", "kubernetes.io", false),
            ("*.kubernetes.io", "wikipedia.org", false),
            ("*.kubernetes.io", "xkubernetes.io", false),
            // DNS names compare without case and without the root's dot.
            ("kubernetes.io", "Kubernetes.IO.", true),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(
                name_matches(&normal_name(pattern), name),
                want,
                "{pattern} {name}"
            );
        }
    }
}
