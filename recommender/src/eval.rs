//! The one NetworkPolicy evaluator of leash: pure, exact, no I/O.
//!
//! A connection from a source pod to `ip:port/protocol` is allowed when the source's egress
//! allows it **and** the destination pod's ingress allows it (when the destination is a
//! pod-network pod of the cluster). A Service address is first translated, as kube-proxy's
//! DNAT does, to every ready backend on its resolved targetPort; the connection is allowed
//! only if it is allowed to every backend.
//!
//! The semantics follow `shared/docs/networkpolicy-semantics.md`:
//! - `policyTypes` defaulting, absent `podSelector` = all pods (applied once, when a
//!   [`PolicySet`] validates the policies; anything the API server would reject is an error);
//! - selectors with matchExpressions (`NotIn`/`DoesNotExist` match a missing key);
//! - ipBlock with `except`, matching pod IPs too, only within its own IP family;
//! - protocol default TCP, named ports resolved on the **destination** pod, `endPort`;
//! - hostNetwork pods are never matched by selectors (they appear as their node IP), cannot
//!   be isolated, and their own egress cannot be restricted;
//! - ingress from the destination pod's own node (a hostNetwork source on that node) is
//!   always allowed;
//! - a namespace missing from the cluster still carries `kubernetes.io/metadata.name`;
//! - an IPv4-mapped IPv6 destination is evaluated as the IPv4 address.
//!
//! Deliberate choice: a flow to a Service address that leads nowhere (no ready backends, a port
//! the Service does not expose, or an address in the Service range that no Service owns) is a
//! **deny** with a [`Problem`], not an error: kube-proxy rejects such connections, and one stale
//! flow should not stop an audit of thousands.
//!
//! ClusterNetworkPolicies (`cluster_policy`) wrap the NetworkPolicies, in both directions:
//! the Admin tier by priority (the first matching rule decides: Accept allows, Deny denies,
//! Pass goes on), then the NetworkPolicies (when any selects the pod in that direction they
//! decide, and the Baseline tier is never reached), then the Baseline tier, then allow.
//! Equal-priority policies of one tier that match and disagree deny, with a [`Conflict`].
//!
//! The cluster is reached through [`ClusterView`] (implemented by `cluster::Cluster`, in
//! `cluster_view`); pods through [`PodView`].

mod cluster_policy;
mod cluster_view;
mod policy;
mod view;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    net::IpAddr,
};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::cnp::{Action, ClusterNetworkPolicy, Tier};
use leash_records::Protocol;
use serde::Serialize;

pub use cluster_policy::{
    ClusterPeer, ClusterPolicies, ClusterPort, ClusterRule, ClusterRuleMatch,
    CompiledClusterPolicy, Conflict, PodSelection, TierDirection, TierOutcome, name_matches,
};
pub use policy::{CompiledPolicy, NamespaceMatch, PolicyPeer, PolicyRule, PortMatch, PortRule};
pub use view::{BackendView, ClusterView, PodView, ServiceRoute};

/// Errors of the evaluator: only invalid policies; evaluation itself cannot fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A policy the API server would reject.
    #[error("NetworkPolicy {policy}: {message}")]
    InvalidPolicy {
        /// `namespace/name`.
        policy: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// Two policies with the same namespace and name.
    #[error("NetworkPolicy {policy} is defined twice")]
    DuplicatePolicy {
        /// `namespace/name`.
        policy: String,
    },
    /// A ClusterNetworkPolicy the API server would reject.
    #[error("ClusterNetworkPolicy {policy}: {message}")]
    InvalidClusterPolicy {
        /// The name.
        policy: String,
        /// The rule it breaks, naming the field.
        message: String,
    },
    /// Two ClusterNetworkPolicies with the same name.
    #[error("ClusterNetworkPolicy {policy} is defined twice")]
    DuplicateClusterPolicy {
        /// The name.
        policy: String,
    },
}

/// The evaluator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A namespaced object's identity, printed and sorted as `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl PolicyId {
    /// A ClusterNetworkPolicy's identity among policies: no namespace, and its name as
    /// `ClusterNetworkPolicy/name`.
    pub fn cluster(name: &str) -> Self {
        PolicyId {
            namespace: String::new(),
            name: format!("{}/{name}", crate::cnp::KIND),
        }
    }
}

impl fmt::Display for PolicyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Cluster-scoped objects have no namespace.
        if self.namespace.is_empty() {
            return f.write_str(&self.name);
        }
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Serialize for PolicyId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The connection is allowed.
    Allow,
    /// The connection is denied.
    Deny,
}

impl Verdict {
    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }

    fn from_bool(allowed: bool) -> Self {
        if allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated set of policies, indexed by namespace and sorted by name.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    // Sorted by id, so every result lists policies in `ns/name` order.
    policies: Vec<CompiledPolicy>,
    // Per namespace, which policies can select a pod: generated policy sets hold one policy
    // per workload, so scanning every policy of a namespace for every flow would be
    // quadratic in practice.
    index: HashMap<String, NamespaceIndex>,
    // The Admin and Baseline tiers around the NetworkPolicies.
    cluster: ClusterPolicies,
}

/// Candidate policies of one namespace, by the anchor label of their pod selector.
#[derive(Debug, Clone, Default)]
struct NamespaceIndex {
    /// Label key → label value → policies whose selector requires `key in (…value…)`.
    by_label: HashMap<String, HashMap<String, Vec<usize>>>,
    /// Policies whose selector has no `In`/`matchLabels` requirement: always candidates.
    unanchored: Vec<usize>,
}

impl PolicySet {
    /// Validates every policy. Fails on the first invalid or duplicate policy, naming it.
    pub fn new(policies: &[NetworkPolicy]) -> Result<Self> {
        let mut compiled = policies
            .iter()
            .map(CompiledPolicy::compile)
            .collect::<Result<Vec<_>>>()?;
        compiled.sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(w) = compiled.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(Error::DuplicatePolicy {
                policy: w[0].id.to_string(),
            });
        }
        let mut index: HashMap<String, NamespaceIndex> = HashMap::new();
        for (i, p) in compiled.iter().enumerate() {
            let ns = index.entry(p.id.namespace.clone()).or_default();
            match p.pod_selector.anchor() {
                // A pod has one value per key, so it finds the policy in at most one bucket.
                Some((key, values)) => {
                    let by_value = ns.by_label.entry(key.to_string()).or_default();
                    for v in values {
                        by_value.entry(v.clone()).or_default().push(i);
                    }
                }
                None => ns.unanchored.push(i),
            }
        }
        Ok(PolicySet {
            policies: compiled,
            index,
            cluster: ClusterPolicies::default(),
        })
    }

    /// This set with the ClusterNetworkPolicies `cluster` (validated: the CRD's limits and
    /// CEL rules) as its Admin and Baseline tiers, replacing any it had.
    pub fn with_cluster_policies(mut self, cluster: &[ClusterNetworkPolicy]) -> Result<Self> {
        self.cluster = ClusterPolicies::new(cluster)?;
        Ok(self)
    }

    /// The ClusterNetworkPolicies, by tier and priority.
    pub fn cluster_policies(&self) -> &ClusterPolicies {
        &self.cluster
    }

    /// Every policy, sorted by `namespace/name`.
    pub fn iter(&self) -> impl Iterator<Item = &CompiledPolicy> {
        self.policies.iter()
    }

    /// The policy `namespace/name`.
    pub fn get(&self, id: &PolicyId) -> Option<&CompiledPolicy> {
        self.policies
            .binary_search_by(|p| p.id.cmp(id))
            .ok()
            .map(|i| &self.policies[i])
    }

    /// The number of NetworkPolicies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether the set holds no policy of either kind.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.cluster.is_empty()
    }

    /// The policies of `ns` whose pod selector may match `labels` (a superset of those that
    /// do), in `ns/name` order.
    fn candidates(&self, ns: &str, labels: &BTreeMap<String, String>) -> Vec<&CompiledPolicy> {
        let Some(idx) = self.index.get(ns) else {
            return Vec::new();
        };
        let mut ids: Vec<usize> = idx.unanchored.clone();
        for (k, v) in labels {
            if let Some(list) = idx.by_label.get(k).and_then(|by_value| by_value.get(v)) {
                ids.extend_from_slice(list);
            }
        }
        ids.sort_unstable();
        ids.into_iter()
            .filter_map(|i| self.policies.get(i))
            .collect()
    }
}

/// A connection attempt as the source pod sees it (before any DNAT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flow {
    /// The transport protocol.
    pub protocol: Protocol,
    /// The destination address the pod connected to.
    pub dst: IpAddr,
    /// The destination port the pod connected to.
    pub dst_port: u16,
}

/// Why a direction was allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// No policy with this direction selects the pod: everything is allowed.
    NotIsolated,
    /// Egress of a hostNetwork pod cannot be restricted by NetworkPolicy.
    SourceHostNetwork,
    /// Ingress is only checked at pod-network pods; this destination is not one.
    DestinationNotAPod,
    /// The destination is a hostNetwork pod, which NetworkPolicy cannot isolate.
    DestinationHostNetwork,
    /// Ingress from the destination pod's own node is always allowed.
    FromOwnNode,
    /// At least one rule of an isolating policy matched.
    RuleMatched,
    /// The pod is isolated and no rule matched.
    NoRuleMatched,
    /// A ClusterNetworkPolicy rule of the Admin tier accepted it.
    AdminAccept,
    /// A ClusterNetworkPolicy rule of the Admin tier denied it.
    AdminDeny,
    /// A ClusterNetworkPolicy rule of the Baseline tier accepted it.
    BaselineAccept,
    /// A ClusterNetworkPolicy rule of the Baseline tier denied it.
    BaselineDeny,
    /// ClusterNetworkPolicies of equal priority disagreed: denied (fail closed).
    TierConflict,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::NotIsolated => "no policy isolates the pod in this direction",
            Reason::SourceHostNetwork => {
                "the source is a hostNetwork pod, whose egress NetworkPolicy cannot restrict"
            }
            Reason::DestinationNotAPod => "the destination is not a pod of the cluster",
            Reason::DestinationHostNetwork => {
                "the destination is a hostNetwork pod, which NetworkPolicy cannot isolate"
            }
            Reason::FromOwnNode => "ingress from the pod's own node is always allowed",
            Reason::RuleMatched => "allowed by a rule",
            Reason::NoRuleMatched => "isolated, and no rule allows it",
            Reason::AdminAccept => "accepted by a ClusterNetworkPolicy of the Admin tier",
            Reason::AdminDeny => "denied by a ClusterNetworkPolicy of the Admin tier",
            Reason::BaselineAccept => "accepted by a ClusterNetworkPolicy of the Baseline tier",
            Reason::BaselineDeny => "denied by a ClusterNetworkPolicy of the Baseline tier",
            Reason::TierConflict => {
                "ClusterNetworkPolicies of equal priority disagree; evaluated as deny"
            }
        })
    }
}

/// A rule that matched: which policy, which rule, and which peer and port entry matched first.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleMatch {
    /// The policy.
    pub policy: PolicyId,
    /// The 0-based index of the rule in `spec.egress` or `spec.ingress`.
    pub rule: usize,
    /// The 0-based index of the matching `to`/`from` entry; `None` when the rule has none.
    pub peer: Option<usize>,
    /// The 0-based index of the matching `ports` entry; `None` when the rule has none.
    pub port: Option<usize>,
}

/// The outcome of one direction (egress at the source or ingress at the destination).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectionResult {
    /// Allowed or denied.
    pub verdict: Verdict,
    /// Why.
    pub reason: Reason,
    /// The policies that isolate the pod in this direction, sorted.
    pub isolated_by: Vec<PolicyId>,
    /// Every rule that allows the connection, sorted by policy and rule index.
    pub matches: Vec<RuleMatch>,
    /// When denied: the rules that matched the peer but no port, or a port but no peer,
    /// sorted. They are what a reader most likely meant to allow.
    pub near_misses: Vec<NearMiss>,
    /// The ClusterNetworkPolicy rules reached, in evaluation order: Admin then Baseline,
    /// each tier's Pass or deciding rules.
    pub cluster: Vec<ClusterRuleMatch>,
    /// Set when equal-priority ClusterNetworkPolicies disagreed (the direction is denied).
    pub conflict: Option<Conflict>,
}

/// A rule that matched one half of a connection (peer or port) but not the other.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NearMiss {
    /// The policy.
    pub policy: PolicyId,
    /// The 0-based rule index.
    pub rule: usize,
    /// Which half matched.
    pub matched: Half,
}

/// One half of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Half {
    /// The peer (`to`/`from`) matched, at this index (`None`: the rule has no peers); no port did.
    Peer(Option<usize>),
    /// A port matched, at this index (`None`: the rule has no ports); no peer did.
    Port(Option<usize>),
}

impl DirectionResult {
    fn exempt(reason: Reason) -> Self {
        DirectionResult {
            verdict: Verdict::Allow,
            reason,
            isolated_by: Vec::new(),
            matches: Vec::new(),
            near_misses: Vec::new(),
            cluster: Vec::new(),
            conflict: None,
        }
    }

    /// The ClusterNetworkPolicy rule that decided, when a tier decided.
    pub fn deciding_cluster_rule(&self) -> Option<&ClusterRuleMatch> {
        match self.reason {
            Reason::AdminAccept
            | Reason::AdminDeny
            | Reason::BaselineAccept
            | Reason::BaselineDeny => self.cluster.last(),
            _ => None,
        }
    }
}

/// What a (post-DNAT) destination address is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Destination {
    /// A pod-network pod of the cluster.
    Pod(PolicyId),
    /// A hostNetwork pod: reachable only by ipBlock, never isolated.
    HostNetworkPod(PolicyId),
    /// Anything else: a node, the API server, an address outside the cluster.
    External,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Pod(id) => write!(f, "pod {id}"),
            Destination::HostNetworkPod(id) => write!(f, "hostNetwork pod {id}"),
            Destination::External => f.write_str("a non-pod address"),
        }
    }
}

/// The evaluation against one concrete destination (the flow's own, or one Service backend).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetResult {
    /// What the destination is.
    pub destination: Destination,
    /// The destination address after DNAT.
    pub ip: IpAddr,
    /// The destination port after DNAT (the targetPort for a Service).
    pub port: u16,
    /// Egress at the source pod.
    pub egress: DirectionResult,
    /// Ingress at the destination.
    pub ingress: DirectionResult,
}

impl TargetResult {
    /// Allowed when both directions allow.
    pub fn verdict(&self) -> Verdict {
        Verdict::from_bool(
            self.egress.verdict == Verdict::Allow && self.ingress.verdict == Verdict::Allow,
        )
    }
}

/// Why a flow to a Service address could not be evaluated against any backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The Service has no ready backend for this port and protocol.
    NoReadyBackends(PolicyId),
    /// The Service does not expose this port and protocol.
    NoSuchServicePort(PolicyId),
    /// The address is in the Service range but no Service owns it.
    UnknownServiceAddress,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::NoReadyBackends(s) => {
                write!(f, "Service {s} has no ready backend for this port")
            }
            Problem::NoSuchServicePort(s) => {
                write!(f, "Service {s} does not expose this port and protocol")
            }
            Problem::UnknownServiceAddress => {
                f.write_str("the address is in the Service range but no Service owns it")
            }
        }
    }
}

/// The full result of evaluating one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// Allowed only when every target allows it in both directions (and there is no problem).
    pub verdict: Verdict,
    /// Egress at the source, over every target.
    pub egress: Verdict,
    /// Ingress at the destination(s), over every target; `allow` for non-pod destinations.
    pub ingress: Verdict,
    /// The Service the destination address belongs to, when DNAT applied.
    pub service: Option<PolicyId>,
    /// Set when the flow leads to no backend at all (then it is denied, with no targets).
    pub problem: Option<Problem>,
    /// One result per destination: the flow's own, or one per ready Service backend,
    /// sorted by address and port.
    pub targets: Vec<TargetResult>,
    /// Equal-priority ClusterNetworkPolicies that matched and disagreed, over every target
    /// and direction, sorted: warnings (each was evaluated as deny).
    pub conflicts: Vec<Conflict>,
}

impl Evaluation {
    /// The deciding policies, sorted and deduplicated: for an allowed flow the policies whose
    /// rules allow it; for a denied flow the policies that isolate it in a denying direction.
    /// A ClusterNetworkPolicy that decided a direction counts as deciding, as
    /// [`PolicyId::cluster`].
    pub fn policies(&self) -> Vec<PolicyId> {
        let mut out = BTreeSet::new();
        for t in &self.targets {
            for d in [&t.egress, &t.ingress] {
                if let Some(c) = &d.conflict {
                    if d.verdict == Verdict::Deny && self.verdict == Verdict::Deny {
                        out.extend(c.rules.iter().map(|r| PolicyId::cluster(&r.policy)));
                    }
                    continue;
                }
                if let Some(r) = d.deciding_cluster_rule() {
                    if self.verdict == Verdict::Allow || d.verdict == Verdict::Deny {
                        out.insert(PolicyId::cluster(&r.policy));
                    }
                    continue;
                }
                if self.verdict == Verdict::Allow {
                    out.extend(d.matches.iter().map(|m| m.policy.clone()));
                } else if d.verdict == Verdict::Deny {
                    out.extend(d.isolated_by.iter().cloned());
                }
            }
        }
        out.into_iter().collect()
    }
}

/// What ingress needs to know about the source of a connection.
struct SourceInfo<'a, P> {
    pod: &'a P,
    host_network: bool,
}

/// Evaluates one flow from `source` against `policies`, resolving destinations with `view`.
/// ClusterNetworkPolicies' `domainNames` match nothing: see [`evaluate_with_names`].
pub fn evaluate<V: ClusterView + ?Sized>(
    view: &V,
    policies: &PolicySet,
    source: &V::Pod,
    flow: &Flow,
) -> Evaluation {
    evaluate_with_names(view, policies, source, flow, &BTreeSet::new())
}

/// [`evaluate`], with the DNS names the source's lookups returned the flow's destination
/// address for (leash's DNS evidence): ClusterNetworkPolicies' `domainNames` peers match them.
pub fn evaluate_with_names<V: ClusterView + ?Sized>(
    view: &V,
    policies: &PolicySet,
    source: &V::Pod,
    flow: &Flow,
    names: &BTreeSet<String>,
) -> Evaluation {
    let src = SourceInfo {
        pod: source,
        host_network: source.host_network(),
    };
    // Dual-stack sockets report IPv4 peers as IPv4-mapped IPv6 addresses; policies see IPv4.
    let dst_ip = flow.dst.to_canonical();
    let denied = |service, problem| Evaluation {
        verdict: Verdict::Deny,
        egress: Verdict::Deny,
        ingress: Verdict::Deny,
        service,
        problem: Some(problem),
        targets: Vec::new(),
        conflicts: Vec::new(),
    };
    let (service, backends) = match view.service(dst_ip, flow.dst_port, flow.protocol) {
        ServiceRoute::NotAService => {
            let backend = BackendView {
                pod: view.pod_by_ip(dst_ip),
                ip: dst_ip,
                port: flow.dst_port,
            };
            (None, vec![backend])
        }
        ServiceRoute::Backends { service, backends } if backends.is_empty() => {
            return denied(Some(service.clone()), Problem::NoReadyBackends(service));
        }
        ServiceRoute::Backends { service, backends } => (Some(service), backends),
        ServiceRoute::NoSuchPort { service } => {
            return denied(Some(service.clone()), Problem::NoSuchServicePort(service));
        }
        ServiceRoute::UnknownServiceAddress => {
            return denied(None, Problem::UnknownServiceAddress);
        }
    };
    let mut targets: Vec<TargetResult> = backends
        .iter()
        .map(|b| evaluate_target(view, policies, &src, flow.protocol, b, names))
        .collect();
    targets.sort_by(|a, b| (a.ip, a.port, &a.destination).cmp(&(b.ip, b.port, &b.destination)));
    targets.dedup();
    let egress = Verdict::from_bool(targets.iter().all(|t| t.egress.verdict == Verdict::Allow));
    let ingress = Verdict::from_bool(targets.iter().all(|t| t.ingress.verdict == Verdict::Allow));
    let conflicts: BTreeSet<Conflict> = targets
        .iter()
        .flat_map(|t| [&t.egress.conflict, &t.ingress.conflict])
        .flatten()
        .cloned()
        .collect();
    Evaluation {
        verdict: Verdict::from_bool(egress == Verdict::Allow && ingress == Verdict::Allow),
        egress,
        ingress,
        service,
        problem: None,
        targets,
        conflicts: conflicts.into_iter().collect(),
    }
}

fn pod_id<P: PodView>(pod: &P) -> PolicyId {
    PolicyId {
        namespace: pod.namespace().to_string(),
        name: pod.name().to_string(),
    }
}

/// A destination as rules see it: a pod-network pod is matchable by selectors and named
/// ports; anything else only by ipBlock.
struct DstInfo<'a, P> {
    pod: Option<&'a P>,
    ip: IpAddr,
    port: u16,
    protocol: Protocol,
    /// The names the destination address was resolved from (ClusterNetworkPolicy's
    /// `domainNames`).
    names: &'a BTreeSet<String>,
}

fn evaluate_target<V: ClusterView + ?Sized>(
    view: &V,
    policies: &PolicySet,
    src: &SourceInfo<'_, V::Pod>,
    protocol: Protocol,
    backend: &BackendView<'_, V::Pod>,
    names: &BTreeSet<String>,
) -> TargetResult {
    let (destination, dst_pod) = match backend.pod {
        Some(p) if p.host_network() => (Destination::HostNetworkPod(pod_id(p)), None),
        Some(p) => (Destination::Pod(pod_id(p)), Some(p)),
        None => (Destination::External, None),
    };
    let dst = DstInfo {
        pod: dst_pod,
        ip: backend.ip,
        port: backend.port,
        protocol,
        names,
    };
    let egress = if src.host_network {
        DirectionResult::exempt(Reason::SourceHostNetwork)
    } else {
        tiered(
            view,
            policies,
            src.pod,
            TierDirection::Egress,
            |peer| cluster_egress_peer_matches(view, peer, &dst),
            &dst,
            || {
                evaluate_direction(
                    policies,
                    src.pod,
                    Direction::Egress,
                    |peer| egress_peer_matches(view, peer, &dst),
                    &dst,
                )
            },
        )
    };
    let ingress = match dst_pod {
        Some(pod) if src.host_network && same_node(src.pod, pod) => {
            let mut r = evaluate_direction(policies, pod, Direction::Ingress, |_| false, &dst);
            if r.verdict == Verdict::Deny {
                r.verdict = Verdict::Allow;
                r.reason = Reason::FromOwnNode;
            }
            r
        }
        Some(pod) => {
            let src_ip = source_ip(src, backend.ip);
            tiered(
                view,
                policies,
                pod,
                TierDirection::Ingress,
                |peer| cluster_ingress_peer_matches(view, peer, src),
                &dst,
                || {
                    evaluate_direction(
                        policies,
                        pod,
                        Direction::Ingress,
                        |peer| ingress_peer_matches(view, peer, src, src_ip),
                        &dst,
                    )
                },
            )
        }
        None if matches!(destination, Destination::HostNetworkPod(_)) => {
            DirectionResult::exempt(Reason::DestinationHostNetwork)
        }
        None => DirectionResult::exempt(Reason::DestinationNotAPod),
    };
    TargetResult {
        destination,
        ip: backend.ip,
        port: backend.port,
        egress,
        ingress,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Ingress,
    Egress,
}

/// Runs the policies of `pod`'s namespace that select it and isolate `dir`.
fn evaluate_direction<P: PodView>(
    policies: &PolicySet,
    pod: &P,
    dir: Direction,
    peer_matches: impl Fn(&PolicyPeer) -> bool,
    dst: &DstInfo<'_, P>,
) -> DirectionResult {
    if pod.host_network() {
        // Unreachable through `evaluate_target`, but a hostNetwork pod is never isolated,
        // whatever selects it.
        return DirectionResult::exempt(Reason::NotIsolated);
    }
    let labels = pod.labels();
    let mut isolated_by = Vec::new();
    let mut matches = Vec::new();
    let mut near_misses = Vec::new();
    for p in policies.candidates(pod.namespace(), labels) {
        let rules = match dir {
            Direction::Ingress => &p.ingress,
            Direction::Egress => &p.egress,
        };
        let Some(rules) = rules else { continue };
        if !p.pod_selector.matches(labels) {
            continue;
        }
        isolated_by.push(p.id.clone());
        for (i, rule) in rules.iter().enumerate() {
            let peer = if rule.peers.is_empty() {
                Some(None)
            } else {
                rule.peers.iter().position(&peer_matches).map(Some)
            };
            let port = if rule.ports.is_empty() {
                Some(None)
            } else {
                rule.ports
                    .iter()
                    .position(|pr| port_matches(pr, dst))
                    .map(Some)
            };
            let half = match (peer, port) {
                (Some(peer), Some(port)) => {
                    matches.push(RuleMatch {
                        policy: p.id.clone(),
                        rule: i,
                        peer,
                        port,
                    });
                    continue;
                }
                (Some(peer), None) => Half::Peer(peer),
                (None, Some(port)) => Half::Port(port),
                (None, None) => continue,
            };
            // Only worth reporting while nothing allows the connection.
            if matches.is_empty() {
                near_misses.push(NearMiss {
                    policy: p.id.clone(),
                    rule: i,
                    matched: half,
                });
            }
        }
    }
    let (verdict, reason) = if isolated_by.is_empty() {
        (Verdict::Allow, Reason::NotIsolated)
    } else if matches.is_empty() {
        (Verdict::Deny, Reason::NoRuleMatched)
    } else {
        near_misses.clear();
        (Verdict::Allow, Reason::RuleMatched)
    };
    DirectionResult {
        verdict,
        reason,
        isolated_by,
        matches,
        near_misses,
        cluster: Vec::new(),
        conflict: None,
    }
}

/// A namespace's labels; an unknown namespace still carries its automatic name label.
fn ns_labels<'a, V: ClusterView + ?Sized>(
    view: &'a V,
    ns: &str,
) -> std::borrow::Cow<'a, BTreeMap<String, String>> {
    match view.namespace_labels(ns) {
        Some(labels) => std::borrow::Cow::Borrowed(labels),
        None => std::borrow::Cow::Owned(BTreeMap::from([(
            "kubernetes.io/metadata.name".to_string(),
            ns.to_string(),
        )])),
    }
}

/// The full precedence for one direction of a pod-network `pod`: the Admin tier, then the
/// NetworkPolicies (`network_policies`, which decide when any selects the pod), then the
/// Baseline tier, then allow.
fn tiered<V: ClusterView + ?Sized>(
    view: &V,
    policies: &PolicySet,
    pod: &V::Pod,
    dir: TierDirection,
    peer_matches: impl Fn(&ClusterPeer) -> bool,
    dst: &DstInfo<'_, V::Pod>,
    network_policies: impl FnOnce() -> DirectionResult,
) -> DirectionResult {
    let tiers = &policies.cluster;
    if tiers.is_empty() || pod.host_network() {
        return network_policies();
    }
    let ns = ns_labels(view, pod.namespace());
    let run = |tier| {
        tiers.evaluate(tier, dir, &ns, pod.labels(), &peer_matches, |p| {
            cluster_port_matches(p, dst)
        })
    };
    let decided = |outcome: TierOutcome, mut prior: Vec<ClusterRuleMatch>, tier| {
        let (verdict, reason) = match (outcome.decision, tier) {
            (_, _) if outcome.conflict.is_some() => (Verdict::Deny, Reason::TierConflict),
            (Some(Action::Accept), Tier::Admin) => (Verdict::Allow, Reason::AdminAccept),
            (Some(Action::Accept), Tier::Baseline) => (Verdict::Allow, Reason::BaselineAccept),
            (_, Tier::Admin) => (Verdict::Deny, Reason::AdminDeny),
            (_, Tier::Baseline) => (Verdict::Deny, Reason::BaselineDeny),
        };
        prior.extend(outcome.matched);
        DirectionResult {
            verdict,
            reason,
            isolated_by: Vec::new(),
            matches: Vec::new(),
            near_misses: Vec::new(),
            cluster: prior,
            conflict: outcome.conflict,
        }
    };
    let admin = run(Tier::Admin);
    if admin.decision.is_some() {
        return decided(admin, Vec::new(), Tier::Admin);
    }
    let mut np = network_policies();
    np.cluster = admin.matched;
    if !np.isolated_by.is_empty() || np.reason != Reason::NotIsolated {
        return np;
    }
    let baseline = run(Tier::Baseline);
    if baseline.decision.is_some() {
        return decided(baseline, np.cluster, Tier::Baseline);
    }
    np.cluster.extend(baseline.matched);
    np
}

/// A ClusterNetworkPolicy port: a protocol's number or range, or a named container port of
/// the destination pod (with its protocol).
fn cluster_port_matches<P: PodView>(port: &ClusterPort, dst: &DstInfo<'_, P>) -> bool {
    match port {
        ClusterPort::Range(proto, a, b) => *proto == dst.protocol && (*a..=*b).contains(&dst.port),
        ClusterPort::Named(name) => {
            dst.pod.and_then(|p| p.named_port(name, dst.protocol)) == Some(dst.port)
        }
    }
}

fn cluster_egress_peer_matches<V: ClusterView + ?Sized>(
    view: &V,
    peer: &ClusterPeer,
    dst: &DstInfo<'_, V::Pod>,
) -> bool {
    match peer {
        // `dst.pod` is a pod-network pod: host-networked pods are never selected.
        ClusterPeer::Pods(sel) => dst
            .pod
            .is_some_and(|p| sel.matches(&ns_labels(view, p.namespace()), p.labels())),
        ClusterPeer::Networks(nets) => nets.iter().any(|n| n.contains(&dst.ip)),
        ClusterPeer::Nodes(sel) => view.node_labels(dst.ip).is_some_and(|l| sel.matches(l)),
        ClusterPeer::DomainNames(patterns) => patterns
            .iter()
            .any(|p| dst.names.iter().any(|n| name_matches(p, n))),
    }
}

fn cluster_ingress_peer_matches<V: ClusterView + ?Sized>(
    view: &V,
    peer: &ClusterPeer,
    src: &SourceInfo<'_, V::Pod>,
) -> bool {
    match peer {
        ClusterPeer::Pods(sel) => {
            !src.host_network
                && sel.matches(&ns_labels(view, src.pod.namespace()), src.pod.labels())
        }
        // Ingress peers are namespaces and pods only.
        ClusterPeer::Networks(_) | ClusterPeer::Nodes(_) | ClusterPeer::DomainNames(_) => false,
    }
}

/// Ports are always those of the destination, after DNAT, for both directions.
fn port_matches<P: PodView>(rule: &PortRule, dst: &DstInfo<'_, P>) -> bool {
    if rule.protocol != dst.protocol {
        return false;
    }
    match &rule.port {
        PortMatch::Any => true,
        PortMatch::Range(a, b) => (*a..=*b).contains(&dst.port),
        // Named ports exist only on pod-network destination pods.
        PortMatch::Named(name) => {
            dst.pod.and_then(|p| p.named_port(name, dst.protocol)) == Some(dst.port)
        }
    }
}

fn namespace_matches<V: ClusterView + ?Sized>(view: &V, m: &NamespaceMatch, ns: &str) -> bool {
    match m {
        NamespaceMatch::Own(own) => own == ns,
        NamespaceMatch::Selector(sel) => match view.namespace_labels(ns) {
            Some(labels) => sel.matches(labels),
            // An unknown namespace still carries its automatic name label.
            None => sel.matches(&BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                ns.to_string(),
            )])),
        },
    }
}

fn egress_peer_matches<V: ClusterView + ?Sized>(
    view: &V,
    peer: &PolicyPeer,
    dst: &DstInfo<'_, V::Pod>,
) -> bool {
    match peer {
        PolicyPeer::IpBlock { cidr, except } => PolicyPeer::block_contains(cidr, except, dst.ip),
        PolicyPeer::Pods { namespaces, pods } => dst.pod.is_some_and(|p| {
            namespace_matches(view, namespaces, p.namespace()) && pods.matches(p.labels())
        }),
    }
}

fn ingress_peer_matches<V: ClusterView + ?Sized>(
    view: &V,
    peer: &PolicyPeer,
    src: &SourceInfo<'_, V::Pod>,
    src_ip: Option<IpAddr>,
) -> bool {
    match peer {
        PolicyPeer::IpBlock { cidr, except } => {
            src_ip.is_some_and(|ip| PolicyPeer::block_contains(cidr, except, ip))
        }
        PolicyPeer::Pods { namespaces, pods } => {
            !src.host_network
                && namespace_matches(view, namespaces, src.pod.namespace())
                && pods.matches(src.pod.labels())
        }
    }
}

/// The source address the destination sees: the source's IP of the destination's family
/// (a hostNetwork pod's IPs are its node's).
fn source_ip<P: PodView>(src: &SourceInfo<'_, P>, dst_ip: IpAddr) -> Option<IpAddr> {
    src.pod
        .ips()
        .into_iter()
        .map(|ip| ip.to_canonical())
        .find(|ip| ip.is_ipv4() == dst_ip.is_ipv4())
}

fn same_node<P: PodView>(a: &P, b: &P) -> bool {
    matches!((a.node(), b.node()), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels_strategy() -> impl Strategy<Value = BTreeMap<String, String>> {
        proptest::collection::btree_map(
            proptest::sample::select(vec!["a", "b", "c"]).prop_map(str::to_string),
            proptest::sample::select(vec!["x", "y", "z"]).prop_map(str::to_string),
            0..3,
        )
    }

    /// A random pod selector over keys a-c and values x-z, as JSON.
    fn selector_strategy() -> impl Strategy<Value = serde_json::Value> {
        let expr = (
            proptest::sample::select(vec!["a", "b", "c"]),
            proptest::sample::select(vec!["In", "NotIn", "Exists", "DoesNotExist"]),
            proptest::sample::subsequence(vec!["x", "y", "z"], 1..3),
        )
            .prop_map(|(k, op, vs)| {
                if op == "Exists" || op == "DoesNotExist" {
                    serde_json::json!({"key": k, "operator": op})
                } else {
                    serde_json::json!({"key": k, "operator": op, "values": vs})
                }
            });
        (labels_strategy(), proptest::collection::vec(expr, 0..3))
            .prop_map(|(ml, ex)| serde_json::json!({"matchLabels": ml, "matchExpressions": ex}))
    }

    proptest! {
        /// The selector index never loses a policy: candidates filtered by the selector are
        /// exactly the namespace's policies whose selector matches.
        #[test]
        fn index_finds_exactly_the_selecting_policies(
            selectors in proptest::collection::vec((selector_strategy(), any::<bool>()), 0..12),
            labels in labels_strategy(),
        ) {
            let nps: Vec<NetworkPolicy> = selectors
                .iter()
                .enumerate()
                .map(|(i, (sel, other_ns))| {
                    serde_json::from_value(serde_json::json!({
                        "apiVersion": "networking.k8s.io/v1",
                        "kind": "NetworkPolicy",
                        "metadata": {"name": format!("p{i}"), "namespace": if *other_ns { "other" } else { "ns" }},
                        "spec": {"podSelector": sel, "policyTypes": ["Egress"]},
                    }))
                    .unwrap()
                })
                .collect();
            let set = PolicySet::new(&nps).unwrap();
            let got: Vec<&PolicyId> = set
                .candidates("ns", &labels)
                .into_iter()
                .filter(|p| p.pod_selector.matches(&labels))
                .map(|p| &p.id)
                .collect();
            let want: Vec<&PolicyId> = set
                .iter()
                .filter(|p| p.id.namespace == "ns" && p.pod_selector.matches(&labels))
                .map(|p| &p.id)
                .collect();
            prop_assert_eq!(got, want);
        }
    }
}
