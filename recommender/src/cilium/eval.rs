//! The evaluator of leash's CiliumNetworkPolicy subset, from Cilium's documented semantics
//! (docs.cilium.io, "Policy Language", "DNS based", "Using Kubernetes Constructs In Policy"):
//!
//! - a policy applies to the endpoints of its own namespace its `endpointSelector` matches;
//! - an endpoint selected by a policy with egress rules is in default deny for egress: only
//!   what some rule of some selecting policy allows passes (rules are a union of allows);
//!   an endpoint no such policy selects is not restricted;
//! - a rule allows a destination its peers match (any of `toEndpoints`, `toEntities`,
//!   `toCIDRSet`, `toFQDNs`; a rule with none applies to every destination) on a port its
//!   `toPorts` match (none: every port);
//! - `toEndpoints` without the namespace label selects endpoints of the policy's namespace;
//! - `toCIDRSet` and `toFQDNs` select addresses outside the cluster (the `world`), never
//!   endpoints, nodes or the API server; `except` blocks are carved out of their `cidr`;
//! - `toFQDNs` allows only the addresses the DNS proxy saw returned for a matching name: the
//!   caller passes those names (what the endpoint's lookups returned the address for);
//!   `matchName` is exact (case-insensitive, trailing dot ignored), `*` in `matchPattern`
//!   matches any run of DNS characters within one label, so `*.x.test` matches `a.x.test`
//!   but not `x.test` nor `a.b.x.test`, and `*` alone matches every name;
//! - `rules.dns` on a port sends lookups there through the DNS proxy, which lets through
//!   the names its selectors match ([`lookup`]).
//!
//! Pure: policies, a source, a destination and a port in; a verdict with the rule out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use leash_records::Protocol;

use super::{CiliumNetworkPolicy, Entity, FqdnSelector, PortProtocolKind, Selector};
use crate::cluster::{LabelSelector, Labels, Operator, Requirement};

/// The label key (source prefix removed) of an endpoint's namespace.
const NAMESPACE_KEY: &str = "io.kubernetes.pod.namespace";

/// Errors compiling a policy of the subset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A field's value is outside what the evaluator understands or what Cilium accepts.
    #[error("CiliumNetworkPolicy {policy}: {field}: {what}")]
    Invalid {
        /// `namespace/name`.
        policy: String,
        /// The field's path (`spec.egress[0].toCIDRSet[1].cidr`).
        field: String,
        /// What is wrong.
        what: String,
    },
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A compiled selector: requirements on an endpoint's labels, the namespace one included.
#[derive(Debug, Clone)]
struct Compiled {
    selector: LabelSelector,
}

impl Compiled {
    fn matches(&self, namespace: &str, labels: &Labels) -> bool {
        // The endpoint's labels as Cilium sees them: the pod's and its namespace.
        let mut all = labels.clone();
        all.insert(NAMESPACE_KEY.to_owned(), namespace.to_owned());
        self.selector.matches(&all)
    }
}

/// A label key without its source prefix (`k8s:`, `any:`); other sources are not in the
/// subset.
fn strip_source(key: &str) -> Option<&str> {
    match key.split_once(':') {
        None => Some(key),
        Some(("k8s" | "any", rest)) => Some(rest),
        Some(_) => None,
    }
}

/// Compiles a selector; `namespace`: the policy's, added when the selector says none.
fn compile_selector(
    sel: &Selector,
    namespace: &str,
    err: &dyn Fn(String) -> Error,
) -> Result<Compiled> {
    let mut match_labels = BTreeMap::new();
    for (k, v) in &sel.match_labels {
        let key = strip_source(k).ok_or_else(|| err(format!("unsupported label source in {k}")))?;
        match_labels.insert(key.to_owned(), v.clone());
    }
    let mut match_expressions = Vec::new();
    for r in &sel.match_expressions {
        let key = strip_source(&r.key)
            .ok_or_else(|| err(format!("unsupported label source in {}", r.key)))?;
        let operator = match r.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => return Err(err(format!("unknown operator {other:?}"))),
        };
        match_expressions.push(Requirement {
            key: key.to_owned(),
            operator,
            values: r.values.clone(),
        });
    }
    let names_namespace = match_labels.contains_key(NAMESPACE_KEY)
        || match_expressions.iter().any(|r| r.key == NAMESPACE_KEY);
    if !names_namespace {
        match_labels.insert(NAMESPACE_KEY.to_owned(), namespace.to_owned());
    }
    Ok(Compiled {
        selector: LabelSelector {
            match_labels,
            match_expressions,
        },
    })
}

/// A compiled port entry.
#[derive(Debug, Clone)]
struct Port {
    first: u16,
    last: u16,
    protocol: PortProtocolKind,
}

/// A compiled `toPorts` entry.
#[derive(Debug, Clone)]
struct PortRule {
    ports: Vec<Port>,
    dns: Option<Vec<FqdnSelector>>,
}

/// A compiled egress rule.
#[derive(Debug, Clone)]
struct Rule {
    endpoints: Vec<Compiled>,
    entities: Vec<Entity>,
    cidrs: Vec<(IpNet, Vec<IpNet>)>,
    fqdns: Vec<FqdnSelector>,
    ports: Vec<PortRule>,
    no_peer: bool,
}

/// A compiled policy.
#[derive(Debug, Clone)]
struct Policy {
    id: String,
    namespace: String,
    selector: Compiled,
    /// `None` or empty: the policy does not restrict egress.
    egress: Vec<Rule>,
}

/// Policies of the subset, compiled and validated, in `namespace/name` order.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: Vec<Policy>,
}

fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

impl PolicySet {
    /// Compiles `policies`; the first one outside the subset is an error naming it and the
    /// field.
    pub fn new(policies: &[CiliumNetworkPolicy]) -> Result<Self> {
        let mut out: Vec<Policy> = policies.iter().map(compile).collect::<Result<_>>()?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Self { policies: out })
    }

    /// How many policies.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// The policies (`namespace/name`) that select the endpoint for egress, sorted.
    pub fn selecting(&self, source: &Source<'_>) -> Vec<String> {
        self.policies
            .iter()
            .filter(|p| {
                !p.egress.is_empty()
                    && p.namespace == source.namespace
                    && p.selector.matches(source.namespace, source.labels)
            })
            .map(|p| p.id.clone())
            .collect()
    }
}

fn compile(p: &CiliumNetworkPolicy) -> Result<Policy> {
    let id = format!("{}/{}", p.metadata.namespace, p.metadata.name);
    let at = |field: String| {
        let id = id.clone();
        move |what: String| Error::Invalid {
            policy: id.clone(),
            field: field.clone(),
            what,
        }
    };
    if p.api_version != super::API_VERSION || p.kind != super::KIND {
        return Err(at("apiVersion".into())(format!(
            "{}/{} is not {}/{}",
            p.api_version,
            p.kind,
            super::API_VERSION,
            super::KIND
        )));
    }
    let ns = &p.metadata.namespace;
    if ns.is_empty() {
        return Err(at("metadata.namespace".into())("missing".into()));
    }
    let selector = compile_selector(
        &p.spec.endpoint_selector,
        ns,
        &at("spec.endpointSelector".into()),
    )?;
    let mut egress = Vec::new();
    for (i, r) in p.spec.egress.iter().flatten().enumerate() {
        let f = |s: &str| format!("spec.egress[{i}].{s}");
        let endpoints = r
            .to_endpoints
            .iter()
            .enumerate()
            .map(|(j, s)| compile_selector(s, ns, &at(f(&format!("toEndpoints[{j}]")))))
            .collect::<Result<_>>()?;
        let mut cidrs = Vec::new();
        for (j, c) in r.to_cidr_set.iter().enumerate() {
            let field = f(&format!("toCIDRSet[{j}]"));
            let net = parse_net(&c.cidr)
                .ok_or_else(|| at(field.clone())(format!("not a CIDR: {:?}", c.cidr)))?;
            let mut except = Vec::new();
            for e in &c.except {
                let x = parse_net(e)
                    .ok_or_else(|| at(field.clone())(format!("except: not a CIDR: {e:?}")))?;
                if !net.contains(&x) {
                    return Err(at(field.clone())(format!("except {x} is not inside {net}")));
                }
                except.push(x);
            }
            cidrs.push((net.trunc(), except));
        }
        for (j, q) in r.to_fqdns.iter().enumerate() {
            check_fqdn(q).map_err(at(f(&format!("toFQDNs[{j}]"))))?;
        }
        let mut ports = Vec::new();
        for (j, pr) in r.to_ports.iter().enumerate() {
            let field = f(&format!("toPorts[{j}]"));
            let mut list = Vec::new();
            for pp in &pr.ports {
                let first: u16 = pp.port.parse().map_err(|_| {
                    at(field.clone())(format!(
                        "port {:?}: only numeric ports are in leash's subset",
                        pp.port
                    ))
                })?;
                let last = match pp.end_port {
                    Some(e) if e < first => {
                        return Err(at(field.clone())(format!(
                            "endPort {e} is below port {first}"
                        )));
                    }
                    Some(e) if first != 0 => e,
                    // Port 0 is every port, whatever the end.
                    _ if first == 0 => u16::MAX,
                    _ => first,
                };
                list.push(Port {
                    first,
                    last,
                    protocol: pp.protocol.unwrap_or(PortProtocolKind::Any),
                });
            }
            let dns = match &pr.rules {
                Some(l7) => {
                    for q in &l7.dns {
                        check_fqdn(q).map_err(at(format!("{field}.rules.dns")))?;
                    }
                    Some(l7.dns.clone())
                }
                None => None,
            };
            ports.push(PortRule { ports: list, dns });
        }
        egress.push(Rule {
            endpoints,
            entities: r.to_entities.clone(),
            cidrs,
            fqdns: r.to_fqdns.clone(),
            ports,
            no_peer: r.no_peer(),
        });
    }
    Ok(Policy {
        id: id.clone(),
        namespace: ns.clone(),
        selector,
        egress,
    })
}

fn check_fqdn(q: &FqdnSelector) -> std::result::Result<(), String> {
    let (s, star) = match q {
        FqdnSelector::MatchName(s) => (s, false),
        FqdnSelector::MatchPattern(s) => (s, true),
    };
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') || (star && b == b'*')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("not a DNS name or pattern: {s:?}"))
    }
}

/// The endpoint whose egress is evaluated.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its pod's labels.
    pub labels: &'a Labels,
}

/// What a destination address is, as Cilium's identities see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer<'a> {
    /// A pod (an endpoint Cilium manages).
    Endpoint {
        /// Its namespace.
        namespace: &'a str,
        /// Its labels.
        labels: &'a Labels,
    },
    /// The Kubernetes API server.
    KubeApiserver,
    /// The source's own node.
    Host,
    /// Another node of the cluster.
    RemoteNode,
    /// An address outside the cluster.
    World,
}

/// A destination after service translation.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// The address.
    pub ip: IpAddr,
    /// What it is.
    pub peer: Peer<'a>,
    /// The names the source's DNS lookups returned this address for (normalized: lower case,
    /// no trailing dot); `toFQDNs` allows the address only through them.
    pub names: &'a BTreeSet<String>,
}

/// Why egress was allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// No policy with egress rules selects the endpoint.
    NotSelected,
    /// A rule allows it.
    RuleMatched,
    /// Selected for egress, and no rule allows it.
    NoRuleMatched,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::NotSelected => "no CiliumNetworkPolicy selects the endpoint for egress",
            Reason::RuleMatched => "allowed by a rule",
            Reason::NoRuleMatched => "selected for egress (default deny), and no rule allows it",
        })
    }
}

/// The rule that allowed a flow.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuleRef {
    /// The policy, `namespace/name`.
    pub policy: String,
    /// The 0-based index in `spec.egress`.
    pub rule: usize,
    /// The peer that matched: `toFQDNs matchName api.stripe.test`, `toEntities
    /// kube-apiserver`, `toCIDRSet 203.0.113.0/24`, `toEndpoints[0]`, `any destination`.
    pub peer: String,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} egress[{}] {}", self.policy, self.rule, self.peer)
    }
}

/// The verdict on one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Allowed.
    pub allowed: bool,
    /// Why.
    pub reason: Reason,
    /// The first rule (in policy and rule order) that allows it.
    pub matched: Option<RuleRef>,
    /// The policies that select the endpoint for egress, sorted.
    pub selected_by: Vec<String>,
}

/// Whether `name` matches a `toFQDNs`/`rules.dns` selector.
pub fn name_matches(sel: &FqdnSelector, name: &str) -> bool {
    let name = normalize(name);
    match sel {
        FqdnSelector::MatchName(m) => normalize(m) == name,
        FqdnSelector::MatchPattern(p) => pattern_matches(&normalize(p), &name),
    }
}

fn normalize(s: &str) -> String {
    s.trim_end_matches('.').to_ascii_lowercase()
}

/// `*` alone: every name; else `*` matches a run (possibly empty) of DNS characters other
/// than the dot, everything else literally.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    // Dynamic programming over (pattern, name) prefixes: linear in their product, whatever
    // the stars (a hostile pattern must not make backtracking explode).
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    // row[j]: pattern[..i] matches name[..j].
    let mut row = vec![false; n.len() + 1];
    row[0] = true;
    for &c in p {
        let mut next = vec![false; n.len() + 1];
        if c == b'*' {
            // Either the star takes nothing, or one more non-dot character.
            for j in 0..=n.len() {
                next[j] = row[j] || (j > 0 && next[j - 1] && n[j - 1] != b'.');
            }
        } else {
            for j in 1..=n.len() {
                next[j] = row[j - 1] && n[j - 1] == c;
            }
        }
        row = next;
    }
    row[n.len()]
}

fn port_matches(rule: &Rule, port: u16, protocol: Protocol) -> Option<Option<&PortRule>> {
    if rule.ports.is_empty() {
        return Some(None);
    }
    let want = PortProtocolKind::of(protocol);
    rule.ports
        .iter()
        .find(|pr| {
            pr.ports.is_empty()
                || pr.ports.iter().any(|p| {
                    (p.protocol == PortProtocolKind::Any || p.protocol == want)
                        && (p.first == 0 || (p.first..=p.last).contains(&port))
                })
        })
        .map(Some)
}

/// The peer of `rule` that matches `dst`, described.
fn peer_match(rule: &Rule, dst: &Destination<'_>) -> Option<String> {
    if rule.no_peer {
        return Some("any destination".to_owned());
    }
    if let Peer::Endpoint { namespace, labels } = dst.peer
        && let Some(j) = rule
            .endpoints
            .iter()
            .position(|s| s.matches(namespace, labels))
    {
        return Some(format!("toEndpoints[{j}]"));
    }
    for e in &rule.entities {
        let hit = match e {
            Entity::All => true,
            Entity::World => dst.peer == Peer::World,
            Entity::Cluster => dst.peer != Peer::World,
            Entity::Host => dst.peer == Peer::Host,
            Entity::RemoteNode => dst.peer == Peer::RemoteNode,
            Entity::KubeApiserver => dst.peer == Peer::KubeApiserver,
        };
        if hit {
            return Some(format!("toEntities {}", e.as_str()));
        }
    }
    if dst.peer != Peer::World {
        return None;
    }
    let ip = dst.ip.to_canonical();
    for (net, except) in &rule.cidrs {
        if net.contains(&ip) && !except.iter().any(|x| x.contains(&ip)) {
            return Some(format!("toCIDRSet {net}"));
        }
    }
    for sel in &rule.fqdns {
        if let Some(n) = dst.names.iter().find(|n| name_matches(sel, n)) {
            return Some(match sel {
                FqdnSelector::MatchName(m) => format!("toFQDNs matchName {m}"),
                FqdnSelector::MatchPattern(p) => format!("toFQDNs matchPattern {p} ({n})"),
            });
        }
    }
    None
}

/// Evaluates egress of `source` to `dst` on `port`/`protocol`.
pub fn evaluate(
    set: &PolicySet,
    source: &Source<'_>,
    dst: &Destination<'_>,
    port: u16,
    protocol: Protocol,
) -> Verdict {
    decide(set, source, dst, port, protocol, None)
}

/// Evaluates a DNS lookup of `query` sent from `source` to the resolver `dst` on
/// `port`/`protocol`: the connection must be allowed, and when the allowing rule's port has
/// `rules.dns`, one of its selectors must match the query (the DNS proxy refuses others).
pub fn lookup(
    set: &PolicySet,
    source: &Source<'_>,
    dst: &Destination<'_>,
    port: u16,
    protocol: Protocol,
    query: &str,
) -> Verdict {
    decide(set, source, dst, port, protocol, Some(query))
}

fn decide(
    set: &PolicySet,
    source: &Source<'_>,
    dst: &Destination<'_>,
    port: u16,
    protocol: Protocol,
    query: Option<&str>,
) -> Verdict {
    let selecting: Vec<&Policy> = set
        .policies
        .iter()
        .filter(|p| {
            !p.egress.is_empty()
                && p.namespace == source.namespace
                && p.selector.matches(source.namespace, source.labels)
        })
        .collect();
    let selected_by: Vec<String> = selecting.iter().map(|p| p.id.clone()).collect();
    if selecting.is_empty() {
        return Verdict {
            allowed: true,
            reason: Reason::NotSelected,
            matched: None,
            selected_by,
        };
    }
    for p in &selecting {
        for (i, rule) in p.egress.iter().enumerate() {
            let Some(peer) = peer_match(rule, dst) else {
                continue;
            };
            let Some(port_rule) = port_matches(rule, port, protocol) else {
                continue;
            };
            if let (Some(q), Some(PortRule { dns: Some(dns), .. })) = (query, port_rule)
                && !dns.iter().any(|s| name_matches(s, q))
            {
                continue;
            }
            return Verdict {
                allowed: true,
                reason: Reason::RuleMatched,
                matched: Some(RuleRef {
                    policy: p.id.clone(),
                    rule: i,
                    peer,
                }),
                selected_by,
            };
        }
    }
    Verdict {
        allowed: false,
        reason: Reason::NoRuleMatched,
        matched: None,
        selected_by,
    }
}
