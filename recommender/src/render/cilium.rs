//! `recommend --format cilium`: a recommendation as one CiliumNetworkPolicy per workload,
//! with external destinations by the DNS name the pods asked for (`toFQDNs`), and its
//! self-check with the subset's evaluator ([`crate::cilium::eval`]).
//!
//! Per workload, from its NetworkPolicy rules ([`crate::recommend::PolicySpec`]):
//! - the DNS rule → `toEndpoints` of the DNS pods (namespace label AND their labels) with
//!   `rules.dns: [{matchPattern: "*"}]` on its ports, so that Cilium's DNS proxy sees every
//!   lookup (`toFQDNs` learns addresses only from lookups it proxied);
//! - workloads → `toEndpoints` with the namespace label, on their targetPorts;
//! - the API server → `toEntities: [kube-apiserver]`; nodes → `toEntities: [host,
//!   remote-node]` (Cilium's CIDR rules never select cluster nodes);
//! - external addresses → `toFQDNs` `matchName` of the names the workload's pods asked
//!   (`Observations::history`, keyed by the query: never a CNAME target or owner), on the
//!   rule's ports; the addresses no valid name explains keep the rule's `toCIDRSet` blocks
//!   (those blocks that contain one), with their `except`s.
//!
//! Traps: a name in the cluster domain (a search-domain expansion such as
//! `api.stripe.test.shop.svc.cluster.local`, NXDOMAIN or answered by a wildcard) is never a
//! `toFQDNs` name; a name the CRD's pattern refuses is never written; an address several
//! names returned is allowed by each name's rule and gets no `toCIDRSet`. Each is a note.
//!
//! `matchPattern` is written only under [`WILDCARD_MIN_SIBLINGS`]: at least that many
//! distinct observed names that are single labels under one parent of at least two labels,
//! on the same ports, become `*.parent`, with a note listing them.
//!
//! The namespaces' `default-deny-egress` stay NetworkPolicies (Cilium enforces them alongside
//! its own policies): the Cilium output is the CiliumNetworkPolicies plus those.
//!
//! Pure and sorted: the same recommendation and observations give the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use leash_records::Protocol;

use crate::cilium::eval::{self, Destination, PolicySet, Source};
use crate::cilium::mixed::{self, AskedNames, api_server_ips, asked_names, is_node};
use crate::cilium::{
    self, CidrRule, CiliumNetworkPolicy, EgressRule as CRule, Entity, FqdnSelector, L7Rules,
    Metadata, PortProtocol, PortProtocolKind, PortRule, Selector,
};
use crate::cluster::{Cluster, LabelSelector, PodId, ServiceLookup, WorkloadId};
use crate::observations::Observations;
use crate::ports::PortRange;
use crate::recommend::{
    self, Denied, EgressPeer, EgressRule, PolicySpec, Recommendation, RuleKind, SelfCheckError,
};

/// The cluster domain: names under it are in-cluster (search-domain expansions), never
/// `toFQDNs` names.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// How many sibling names (single labels under one parent) justify `matchPattern: "*.parent"`.
pub const WILDCARD_MIN_SIBLINGS: usize = 5;

/// The Cilium output of a recommendation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    /// One CiliumNetworkPolicy per workload policy, sorted by (namespace, name).
    pub policies: Vec<CiliumNetworkPolicy>,
    /// What a reviewer should know, per namespace: (policy name, text), sorted. Texts hold
    /// tenant-controlled names: escape them where they are shown.
    pub notes: BTreeMap<String, Vec<(String, String)>>,
}

/// Whether `name` is in the cluster domain.
pub fn in_cluster_domain(name: &str) -> bool {
    let n = name.trim_end_matches('.');
    n == CLUSTER_DOMAIN || n.ends_with(&format!(".{CLUSTER_DOMAIN}"))
}

/// A selector of pods of `namespace`: the namespace label AND `sel`.
fn endpoints(namespace: &str, sel: &LabelSelector) -> Selector {
    let mut s = selector(sel);
    s.match_labels
        .insert(cilium::NAMESPACE_LABEL.to_owned(), namespace.to_owned());
    s
}

fn selector(sel: &LabelSelector) -> Selector {
    let canonical = sel.clone().canonical();
    Selector {
        match_labels: canonical.match_labels,
        match_expressions: canonical
            .match_expressions
            .into_iter()
            .map(|r| cilium::Requirement {
                key: r.key,
                operator: r.operator.as_str().to_owned(),
                values: r.values,
            })
            .collect(),
    }
}

fn ports(ranges: &[PortRange], dns: bool) -> Vec<PortRule> {
    let mut list: Vec<PortProtocol> = ranges
        .iter()
        .map(|p| PortProtocol {
            port: p.port.to_string(),
            end_port: p.end_port,
            protocol: Some(PortProtocolKind::of(p.protocol)),
        })
        .collect();
    list.sort_by_key(|p| (p.protocol, p.port.parse::<u16>().unwrap_or(0), p.end_port));
    // The CRD allows at most 40 ports per entry.
    list.chunks(40)
        .map(|c| PortRule {
            ports: c.to_vec(),
            rules: dns.then(|| L7Rules {
                dns: vec![FqdnSelector::MatchPattern("*".to_owned())],
            }),
        })
        .collect()
}

fn cidr_rule(cidr: &IpNet, except: &[IpNet]) -> CidrRule {
    CidrRule {
        cidr: cidr.to_string(),
        except: except.iter().map(ToString::to_string).collect(),
    }
}

fn in_ports(ranges: &[PortRange], proto: Protocol, port: u16) -> bool {
    ranges
        .iter()
        .any(|r| r.protocol == proto && (r.port..=r.end_port.unwrap_or(r.port)).contains(&port))
}

/// The context the rules of every workload are built in.
struct Ctx<'a> {
    cluster: &'a Cluster,
    asked: AskedNames,
    api: BTreeSet<IpAddr>,
    /// Per workload, the external (direct) destinations observed, with their ports.
    dialed: BTreeMap<WorkloadId, BTreeMap<IpAddr, BTreeSet<(Protocol, u16)>>>,
}

/// Builds the Cilium output of `rec`. Pure: no I/O.
pub fn build(cluster: &Cluster, rec: &Recommendation, obs: &Observations) -> Output {
    let mut dialed: BTreeMap<WorkloadId, BTreeMap<IpAddr, BTreeSet<(Protocol, u16)>>> =
        BTreeMap::new();
    for key in obs.flows.keys() {
        if let Some(w) = cluster.workload_of(key.pod) {
            dialed
                .entry(w)
                .or_default()
                .entry(key.dst.to_canonical())
                .or_default()
                .insert((key.protocol, key.port));
        }
    }
    let ctx = Ctx {
        cluster,
        asked: asked_names(cluster, obs),
        api: api_server_ips(cluster),
        dialed,
    };
    let mut out = Output::default();
    for p in &rec.policies {
        let (cnp, notes) = policy(&ctx, p);
        if !notes.is_empty() {
            out.notes
                .entry(p.namespace.clone())
                .or_default()
                .extend(notes.into_iter().map(|n| (p.name.clone(), n)));
        }
        out.policies.push(cnp);
    }
    for notes in out.notes.values_mut() {
        notes.sort();
        notes.dedup();
    }
    out.policies.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    out
}

/// Rules of one external NetworkPolicy rule: names for the addresses the pods asked a valid
/// name for, blocks for the others.
#[derive(Default)]
struct External {
    names: BTreeSet<String>,
    blocks: BTreeSet<(IpNet, Vec<IpNet>)>,
    api: bool,
}

fn external(ctx: &Ctx<'_>, w: WorkloadId, r: &EgressRule, notes: &mut Vec<String>) -> External {
    let mut ext = External::default();
    let blocks: Vec<(IpNet, Vec<IpNet>)> = r
        .peers
        .iter()
        .filter_map(|p| match p {
            EgressPeer::Block { cidr, except, .. } => Some((*cidr, except.clone())),
            EgressPeer::Pods { .. } => None,
        })
        .collect();
    let inside = |ip: &IpAddr| {
        blocks
            .iter()
            .position(|(c, ex)| c.contains(ip) && !ex.iter().any(|x| x.contains(ip)))
    };
    let empty = BTreeMap::new();
    let asked = ctx.asked.get(&w).unwrap_or(&empty);
    // Per block of the rule: its nameless addresses, and whether it holds named ones.
    let mut nameless: BTreeMap<usize, Vec<IpAddr>> = BTreeMap::new();
    let mut named: BTreeSet<usize> = BTreeSet::new();
    let dialed = ctx.dialed.get(&w).cloned().unwrap_or_default();
    for (ip, used) in &dialed {
        let Some(b) = inside(ip) else { continue };
        if !used
            .iter()
            .any(|(proto, port)| in_ports(&r.ports, *proto, *port))
        {
            continue;
        }
        if ctx.api.contains(ip) {
            ext.api = true;
            continue;
        }
        let mut valid = BTreeSet::new();
        for n in asked.get(ip).into_iter().flatten() {
            if in_cluster_domain(n) {
                notes.push(format!(
                    "{n} returned {ip}, but it is a name in the cluster domain {CLUSTER_DOMAIN} \
                     (a search-domain expansion): not a toFQDNs name"
                ));
            } else if !cilium::valid_match_name(n) {
                notes.push(format!(
                    "{n} returned {ip}, but it is not a name a matchName may hold: not written"
                ));
            } else {
                valid.insert(n.clone());
            }
        }
        if valid.is_empty() {
            nameless.entry(b).or_default().push(*ip);
        } else {
            named.insert(b);
            if valid.len() > 1 {
                notes.push(format!(
                    "{ip} was returned for {}: each name's rule allows it, no toCIDRSet",
                    valid.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            ext.names.extend(valid);
        }
    }
    for (b, ips) in nameless {
        if named.contains(&b) {
            // The block also holds named addresses, which their names allow: the nameless
            // ones alone, exactly.
            ext.blocks
                .extend(ips.into_iter().map(|ip| (IpNet::from(ip), Vec::new())));
        } else {
            ext.blocks.insert(blocks[b].clone());
        }
    }
    // A rule of the previous proposal, or one whose flows are gone: its blocks stand.
    if ext.names.is_empty() && ext.blocks.is_empty() && !ext.api {
        ext.blocks.extend(blocks);
    }
    ext
}

/// Replaces sibling names by `*.parent` where [`WILDCARD_MIN_SIBLINGS`] justify it.
fn fqdn_selectors(names: &BTreeSet<String>, notes: &mut Vec<String>) -> Vec<FqdnSelector> {
    let mut by_parent: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for n in names {
        if let Some((_, parent)) = n.split_once('.')
            && parent.contains('.')
        {
            by_parent.entry(parent).or_default().push(n);
        }
    }
    let mut covered: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    for (parent, kids) in by_parent {
        if kids.len() >= WILDCARD_MIN_SIBLINGS {
            notes.push(format!(
                "matchPattern *.{parent}: {} sibling names under {parent} were observed ({}); \
                 the pattern allows any one label under {parent}, not {parent} itself",
                kids.len(),
                kids.join(", ")
            ));
            covered.extend(kids);
            out.push(FqdnSelector::MatchPattern(format!("*.{parent}")));
        }
    }
    out.extend(
        names
            .iter()
            .filter(|n| !covered.contains(n.as_str()))
            .map(|n| FqdnSelector::MatchName(n.clone())),
    );
    out.sort();
    out
}

fn host_rule(ctx: &Ctx<'_>, r: &EgressRule, notes: &mut Vec<String>) -> Vec<CRule> {
    let mut entities = BTreeSet::new();
    let mut cidrs = BTreeSet::new();
    let mut pods = BTreeSet::new();
    for p in &r.peers {
        match p {
            EgressPeer::Block { cidr, except, .. } => {
                let ip = cidr.addr();
                if cidr.prefix_len() == cidr.max_prefix_len() && ctx.api.contains(&ip) {
                    entities.insert(Entity::KubeApiserver);
                } else if cidr.prefix_len() == cidr.max_prefix_len() && is_node(ctx.cluster, ip) {
                    entities.insert(Entity::Host);
                    entities.insert(Entity::RemoteNode);
                    notes.push(format!(
                        "{ip} is a node: Cilium's CIDR rules never select nodes, so every node \
                         (host, remote-node) is allowed on these ports"
                    ));
                } else if let Some(pod) = ctx.cluster.pod_by_ip(ip) {
                    let pod = &ctx.cluster.pods[pod];
                    pods.insert(endpoints(
                        &pod.namespace,
                        &LabelSelector::labels(pod.labels.clone()),
                    ));
                    notes.push(format!(
                        "{ip} is pod {}/{} without stable labels: selected by all its labels",
                        pod.namespace, pod.name
                    ));
                } else {
                    cidrs.insert((*cidr, except.clone()));
                }
            }
            // Hosts rules hold addresses only.
            EgressPeer::Pods { .. } => {}
        }
    }
    let mut out = Vec::new();
    let to_ports = ports(&r.ports, false);
    if !pods.is_empty() {
        out.push(CRule {
            to_endpoints: pods.into_iter().collect(),
            to_ports: to_ports.clone(),
            ..CRule::default()
        });
    }
    if !entities.is_empty() {
        out.push(CRule {
            to_entities: entities.into_iter().collect(),
            to_ports: to_ports.clone(),
            ..CRule::default()
        });
    }
    if !cidrs.is_empty() {
        out.push(CRule {
            to_cidr_set: cidrs.iter().map(|(c, e)| cidr_rule(c, e)).collect(),
            to_ports,
            ..CRule::default()
        });
    }
    out
}

/// The peers of a rule that are pods, as `toEndpoints`.
fn pod_selectors(own_ns: &str, r: &EgressRule) -> Vec<Selector> {
    let mut out: Vec<Selector> = r
        .peers
        .iter()
        .filter_map(|p| match p {
            EgressPeer::Pods {
                namespace,
                selector,
            } => Some(endpoints(namespace.as_deref().unwrap_or(own_ns), selector)),
            EgressPeer::Block { .. } => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn policy(ctx: &Ctx<'_>, p: &PolicySpec) -> (CiliumNetworkPolicy, Vec<String>) {
    let mut notes = Vec::new();
    let mut rules: Vec<CRule> = Vec::new();
    // The names of every external rule, per port set: one toFQDNs rule each, after the loop
    // (the NetworkPolicy groups addresses by their names; a pattern looks across them).
    let mut fqdns: BTreeMap<String, (Vec<PortRange>, BTreeSet<String>)> = BTreeMap::new();
    for r in &p.rules {
        match &r.kind {
            RuleKind::Dns => {
                let cidrs: Vec<CidrRule> = r
                    .peers
                    .iter()
                    .filter_map(|peer| match peer {
                        EgressPeer::Block { cidr, except, .. } => Some(cidr_rule(cidr, except)),
                        EgressPeer::Pods { .. } => None,
                    })
                    .collect();
                rules.push(CRule {
                    to_endpoints: pod_selectors(&p.namespace, r),
                    to_cidr_set: cidrs,
                    to_ports: ports(&r.ports, true),
                    ..CRule::default()
                });
            }
            RuleKind::Workload(_) => rules.push(CRule {
                to_endpoints: pod_selectors(&p.namespace, r),
                to_ports: ports(&r.ports, false),
                ..CRule::default()
            }),
            RuleKind::Hosts(_) => rules.extend(host_rule(ctx, r, &mut notes)),
            RuleKind::External | RuleKind::Previous => {
                let sels = pod_selectors(&p.namespace, r);
                if !sels.is_empty() {
                    rules.push(CRule {
                        to_endpoints: sels,
                        to_ports: ports(&r.ports, false),
                        ..CRule::default()
                    });
                }
                let ext = external(ctx, p.workload, r, &mut notes);
                if ext.api {
                    rules.push(CRule {
                        to_entities: vec![Entity::KubeApiserver],
                        to_ports: ports(&r.ports, false),
                        ..CRule::default()
                    });
                }
                if !ext.names.is_empty() {
                    fqdns
                        .entry(r.ports_text())
                        .or_insert_with(|| (r.ports.clone(), BTreeSet::new()))
                        .1
                        .extend(ext.names);
                }
                if !ext.blocks.is_empty() {
                    rules.push(CRule {
                        to_cidr_set: ext.blocks.iter().map(|(c, e)| cidr_rule(c, e)).collect(),
                        to_ports: ports(&r.ports, false),
                        ..CRule::default()
                    });
                }
            }
        }
    }
    for (ranges, names) in fqdns.into_values() {
        rules.push(CRule {
            to_fqdns: fqdn_selectors(&names, &mut notes),
            to_ports: ports(&ranges, false),
            ..CRule::default()
        });
    }
    let w = &ctx.cluster.workloads[p.workload];
    let nw = recommend::to_network_policy(ctx.cluster, p);
    let cnp = CiliumNetworkPolicy {
        api_version: cilium::API_VERSION.to_owned(),
        kind: cilium::KIND.to_owned(),
        metadata: Metadata {
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            labels: nw.metadata.labels.unwrap_or_default(),
            annotations: nw.metadata.annotations.unwrap_or_default(),
        },
        spec: cilium::Spec {
            description: Some(format!(
                "Egress of {}, generated by leash recommend from observed traffic",
                crate::json::workload(&w.kind, &w.name)
            )),
            endpoint_selector: selector(&p.pod_selector),
            egress: Some(rules),
        },
    };
    (cnp, notes)
}

/// Errors rendering the Cilium output.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// YAML serialization failed.
    #[error("cannot serialize CiliumNetworkPolicy {name}")]
    Yaml {
        /// The policy, `namespace/name`.
        name: String,
        /// The serializer's error.
        source: serde_norway::Error,
    },
}

/// One policy as a YAML document (no `---`), in the structs' field order, maps sorted.
pub fn policy_yaml(p: &CiliumNetworkPolicy) -> Result<String, Error> {
    serde_norway::to_string(p).map_err(|source| Error::Yaml {
        name: format!("{}/{}", p.metadata.namespace, p.metadata.name),
        source,
    })
}

/// The whole Cilium output as one YAML stream: per namespace its `default-deny-egress`
/// NetworkPolicy (when the recommendation has one), then its CiliumNetworkPolicies by name.
pub fn yaml_stream(rec: &Recommendation, out: &Output) -> Result<String, Error> {
    let namespaces: BTreeSet<&str> = rec
        .default_deny_namespaces
        .iter()
        .map(String::as_str)
        .chain(out.policies.iter().map(|p| p.metadata.namespace.as_str()))
        .collect();
    let mut text = String::new();
    for ns in namespaces {
        if rec.default_deny_namespaces.iter().any(|d| d == ns) {
            text.push_str("---\n");
            text.push_str(&super::policy_yaml(&recommend::default_deny(ns)).map_err(
                |e| match e {
                    super::Error::Yaml { name, source } => Error::Yaml { name, source },
                },
            )?);
        }
        for p in out.policies.iter().filter(|p| p.metadata.namespace == ns) {
            text.push_str("---\n");
            text.push_str(&policy_yaml(p)?);
        }
    }
    Ok(text)
}

/// The `## CiliumNetworkPolicy notes` section of a namespace's REPORT.md (empty without
/// notes). Names are escaped with `render::escape::md`.
pub fn report_section(out: &Output, ns: &str) -> String {
    let Some(notes) = out.notes.get(ns).filter(|n| !n.is_empty()) else {
        return String::new();
    };
    let mut s = String::from(
        "\n## CiliumNetworkPolicy notes\n\n\
         The Cilium output allows named external destinations by the name the pods asked \
         (`toFQDNs`); these are the choices a reviewer should know.\n\n",
    );
    for (policy, text) in notes {
        let _ = writeln!(
            s,
            "- `{}`: {}",
            super::escape::md(policy),
            super::escape::md(text)
        );
    }
    s
}

/// The self-check of the Cilium output: every observed flow of a workload with a policy must
/// be allowed by the CiliumNetworkPolicies, given the names its pods' lookups returned for
/// the address. Flows the report lists elsewhere (hostNetwork, unresolved, loopback) are
/// skipped, as in [`recommend::self_check`].
pub fn self_check(
    cluster: &Cluster,
    obs: &Observations,
    rec: &Recommendation,
    out: &Output,
) -> Result<(), SelfCheckError> {
    let set = PolicySet::new(&out.policies)
        .map_err(|e| SelfCheckError::Invalid(leash_records::error::Chain(&e).to_string()))?;
    let covered: BTreeSet<WorkloadId> = rec.policies.iter().map(|p| p.workload).collect();
    let asked = asked_names(cluster, obs);
    let api = api_server_ips(cluster);
    let none = BTreeSet::new();
    let mut keys: Vec<_> = obs.flows.keys().collect();
    keys.sort();
    let mut denied = Vec::new();
    for key in keys {
        if !crate::recommend::check::must_allow(cluster, &covered, key) {
            continue;
        }
        let pod = &cluster.pods[key.pod];
        let Some(w) = cluster.workload_of(key.pod) else {
            continue;
        };
        let dst = key.dst.to_canonical();
        let targets: Vec<(IpAddr, u16, Option<PodId>)> =
            match cluster.resolve_service(dst, key.port, key.protocol) {
                ServiceLookup::NotService => vec![(dst, key.port, cluster.pod_by_ip(dst))],
                ServiceLookup::Resolved { backends, .. } => {
                    backends.iter().map(|b| (b.ip, b.port, b.pod)).collect()
                }
                // Reported as unresolved, not checked.
                ServiceLookup::NoSuchPort(_) => Vec::new(),
            };
        let source = Source {
            namespace: &pod.namespace,
            labels: &pod.labels,
        };
        for (ip, port, target_pod) in targets {
            let peer = mixed::peer(cluster, mixed::peer_kind(cluster, &api, ip, target_pod));
            let names = asked.get(&w).and_then(|m| m.get(&ip)).unwrap_or(&none);
            let d = Destination { ip, peer, names };
            let v = eval::evaluate(&set, &source, &d, port, key.protocol);
            if !v.allowed {
                let named = if names.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (names: {})",
                        names.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                };
                denied.push(Denied {
                    pod: format!("{}/{}", pod.namespace, pod.name),
                    destination: recommend::dest(key.dst, key.port, key.protocol),
                    reason: format!("{ip}:{port}{named}: {}", v.reason),
                });
            }
        }
    }
    denied.sort();
    denied.dedup();
    if denied.is_empty() {
        Ok(())
    } else {
        Err(SelfCheckError::Denied(denied))
    }
}

/// The output of `leash recommend --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Kubernetes NetworkPolicies (portable, by address).
    #[default]
    NetworkPolicy,
    /// CiliumNetworkPolicies (names by `toFQDNs`), with the default denies as NetworkPolicies.
    Cilium,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "networkpolicy" => Ok(Format::NetworkPolicy),
            "cilium" => Ok(Format::Cilium),
            other => Err(format!(
                "unknown format {other:?} (expected networkpolicy or cilium)"
            )),
        }
    }
}

/// [`build`], self-checked ([`self_check`]): what `recommend --format cilium` writes.
pub fn checked(
    cluster: &Cluster,
    rec: &Recommendation,
    obs: &Observations,
) -> Result<Output, SelfCheckError> {
    let out = build(cluster, rec, obs);
    self_check(cluster, obs, rec, &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_pattern_needs_enough_siblings_under_a_parent_of_two_labels() {
        let mut notes = Vec::new();
        // Five names directly under a one-label parent: never `*.test`.
        let tld = fqdn_selectors(
            &set(&["a.test", "b.test", "c.test", "d.test", "e.test"]),
            &mut notes,
        );
        assert!(
            tld.iter().all(|s| matches!(s, FqdnSelector::MatchName(_))),
            "{tld:?}"
        );
        // Four siblings: not enough.
        let four = fqdn_selectors(
            &set(&["a.x.test", "b.x.test", "c.x.test", "d.x.test"]),
            &mut notes,
        );
        assert_eq!(four.len(), 4);
        assert!(notes.is_empty(), "{notes:?}");
        // Five siblings and a grandchild: the pattern covers the siblings, the grandchild
        // (two labels under the parent) keeps its name.
        let five = fqdn_selectors(
            &set(&[
                "a.x.test",
                "b.x.test",
                "c.x.test",
                "d.x.test",
                "e.x.test",
                "deep.a.x.test",
            ]),
            &mut notes,
        );
        assert_eq!(
            five,
            vec![
                FqdnSelector::MatchName("deep.a.x.test".into()),
                FqdnSelector::MatchPattern("*.x.test".into()),
            ]
        );
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn the_cluster_domain_is_recognised_with_or_without_the_root_dot() {
        assert!(in_cluster_domain("api.stripe.test.shop.svc.cluster.local"));
        assert!(in_cluster_domain("kubernetes.default.svc.cluster.local."));
        assert!(in_cluster_domain("cluster.local"));
        assert!(!in_cluster_domain("notcluster.local"));
        assert!(!in_cluster_domain("api.stripe.test"));
    }
}
