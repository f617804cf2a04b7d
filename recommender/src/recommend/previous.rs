//! The previous proposal as input, so that proposals stay stable over time.
//!
//! A proposal may change only where the traffic changed. Given the last proposal (its
//! policies, and the evidence of each rule when `evidence.json` was kept):
//! - a previous rule that a rule of this window's observations contains is replaced by it
//!   (unchanged, or widened);
//! - a previous rule whose last evidence is older than `--expire-after` is dropped (removed,
//!   or narrowed to the new rule inside it);
//! - any other previous rule is kept, and the new rules it contains fold into it: a rule
//!   without evidence in the window but inside the expiry period stays, marked "not seen in
//!   this window";
//! - new rules that none of these explain are added.
//!
//! Rules keep the order of the previous proposal and new ones come last, so an unchanged
//! input gives unchanged bytes. A previous rule's last evidence is the latest of its
//! `evidence.json` and the observations of the whole store retention that it allows (asked
//! of [`eval`](crate::eval), the one evaluator).
//!
//! Pure: takes values, does no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use leash_records::Protocol;

use super::{
    ANNOTATION_WORKLOAD, Change, ChangeKind, EgressPeer, EgressRule, PolicySpec, RuleEvidence,
    RuleKind,
};
use crate::cluster::{Cluster, LabelSelector, NAMESPACE_NAME_LABEL, WorkloadId};
use crate::eval::{self, ClusterView, PolicySet};
use crate::observations::Observations;
use crate::policy_state::is_managed;
use crate::ports::PortRange;

/// The last proposal: leash's workload policies, each rule with the evidence that backed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Previous {
    /// leash's workload policies, sorted by (namespace, name).
    pub policies: Vec<PreviousPolicy>,
}

/// One workload policy of the previous proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousPolicy {
    /// Namespace.
    pub namespace: String,
    /// Policy name.
    pub name: String,
    /// The workload it was for, `Kind/name` (the `leash.dev/workload` annotation).
    pub workload: Option<String>,
    /// Its egress rules, in order.
    pub rules: Vec<PreviousRule>,
}

/// One egress rule of the previous proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousRule {
    /// Peers (OR).
    pub peers: Vec<EgressPeer>,
    /// Ports (OR).
    pub ports: Vec<PortRange>,
    /// Its evidence from `evidence.json`; `None` when there was none (leash's applied
    /// policies, or a proposal written before evidence files).
    pub evidence: Option<RuleEvidence>,
}

impl PreviousRule {
    /// The rule in the model's shape, kind [`RuleKind::Previous`].
    fn to_rule(&self) -> EgressRule {
        let mut r = EgressRule::new(
            RuleKind::Previous,
            self.peers.clone(),
            self.ports.clone(),
            self.evidence.clone().unwrap_or_default(),
        );
        r.not_seen_in_window = true;
        r
    }

    /// [`EgressRule::key`] of this rule.
    pub fn key(&self) -> String {
        self.to_rule().key()
    }
}

/// The evidence of previous rules, by (namespace, policy name, [`EgressRule::key`]).
pub type EvidenceIndex = BTreeMap<(String, String, String), RuleEvidence>;

impl Previous {
    /// The previous proposal of `policies`: those leash manages (its label), except the
    /// namespaces' default denies, with each rule's evidence from `evidence`. Rules leash
    /// could not have written (named ports, other peers) cannot be carried and are returned
    /// as lines for the caller to show; the rest of their policy is kept.
    pub fn from_policies(
        policies: &[NetworkPolicy],
        evidence: &EvidenceIndex,
    ) -> (Self, Vec<String>) {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        for np in policies.iter().filter(|np| is_managed(&np.metadata)) {
            let (Some(namespace), Some(name)) = (&np.metadata.namespace, &np.metadata.name) else {
                continue;
            };
            let Some(spec) = &np.spec else { continue };
            let Some(egress) = spec.egress.as_ref().filter(|e| !e.is_empty()) else {
                // The default deny, or a policy that allows nothing: no rule to carry.
                continue;
            };
            let mut rules = Vec::new();
            for (i, r) in egress.iter().enumerate() {
                match rule_of(r) {
                    Some((peers, ports)) => {
                        let mut rule = PreviousRule {
                            peers,
                            ports,
                            evidence: None,
                        };
                        rule.evidence = evidence
                            .get(&(namespace.clone(), name.clone(), rule.key()))
                            .cloned();
                        rules.push(rule);
                    }
                    None => skipped.push(format!(
                        "previous policy {namespace}/{name}: egress rule {} is not one leash writes; it is not carried",
                        i + 1
                    )),
                }
            }
            out.push(PreviousPolicy {
                namespace: namespace.clone(),
                name: name.clone(),
                workload: np
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_WORKLOAD))
                    .cloned(),
                rules,
            });
        }
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out.dedup_by(|a, b| (&a.namespace, &a.name) == (&b.namespace, &b.name));
        (Previous { policies: out }, skipped)
    }
}

/// A Kubernetes egress rule in the shape leash writes: peers that are ipBlocks or pod
/// selectors (with at most a namespace by name), numeric ports with a protocol.
fn rule_of(r: &NetworkPolicyEgressRule) -> Option<(Vec<EgressPeer>, Vec<PortRange>)> {
    let peers: Vec<EgressPeer> = r.to.as_ref()?.iter().map(peer_of).collect::<Option<_>>()?;
    let ports: Vec<PortRange> = r
        .ports
        .as_ref()?
        .iter()
        .map(|p| {
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                _ => return None,
            };
            let IntOrString::Int(port) = p.port.as_ref()? else {
                return None;
            };
            let port = u16::try_from(*port).ok().filter(|p| *p > 0)?;
            let end_port = match p.end_port {
                Some(e) => Some(u16::try_from(e).ok().filter(|e| *e > port)?),
                None => None,
            };
            Some(PortRange {
                protocol,
                port,
                end_port,
                unobserved: 0,
            })
        })
        .collect::<Option<_>>()?;
    (!peers.is_empty() && !ports.is_empty()).then_some((peers, ports))
}

fn peer_of(p: &NetworkPolicyPeer) -> Option<EgressPeer> {
    if let Some(b) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return None;
        }
        let cidr: IpNet = b.cidr.parse().ok()?;
        let except = b
            .except
            .iter()
            .flatten()
            .map(|e| e.parse().ok())
            .collect::<Option<Vec<IpNet>>>()?;
        return Some(EgressPeer::Block {
            cidr: cidr.trunc(),
            except,
            unobserved: 0,
        });
    }
    let selector = LabelSelector::parse(p.pod_selector.as_ref()?, "podSelector")
        .ok()?
        .canonical();
    let namespace = match &p.namespace_selector {
        None => None,
        Some(ns) => {
            let labels = ns.match_labels.as_ref()?;
            if ns.match_expressions.as_ref().is_some_and(|e| !e.is_empty()) || labels.len() != 1 {
                return None;
            }
            Some(labels.get(NAMESPACE_NAME_LABEL)?.clone())
        }
    };
    Some(EgressPeer::Pods {
        namespace,
        selector,
    })
}

/// What a stable proposal needs besides the observations of its window.
#[derive(Debug, Clone, Copy)]
pub struct Stability<'a> {
    /// The previous proposal; `None` when there is none.
    pub previous: Option<&'a Previous>,
    /// The observations of the whole retention period, for the last evidence of previous
    /// rules; `None` when they are the window's.
    pub history: Option<&'a Observations>,
    /// The end of the window: evidence older than `as_of - expire_after` has expired.
    pub as_of: DateTime<Utc>,
    /// `--expire-after`.
    pub expire_after: Duration,
}

impl Stability<'_> {
    /// No previous proposal.
    pub fn none() -> Self {
        Stability {
            previous: None,
            history: None,
            as_of: DateTime::<Utc>::MIN_UTC,
            expire_after: Duration::days(30),
        }
    }
}

/// The last time anything of `obs` was seen: the end of a window of record files.
pub fn window_end(obs: &Observations) -> Option<DateTime<Utc>> {
    obs.flows
        .values()
        .chain(obs.dns.values())
        .map(|e| e.last_seen)
        .max()
}

/// A previous rule inside the expiry period.
#[derive(Debug, Clone)]
pub(super) struct Live {
    pub rule: PreviousRule,
    /// Its last evidence, when any is known.
    pub last_seen: Option<DateTime<Utc>>,
}

/// The previous rules of one workload, split by expiry.
#[derive(Debug, Clone, Default)]
pub(super) struct Carried {
    /// The previous policy's name.
    pub policy: String,
    /// Inside the expiry period (or of unknown age: kept, since nothing shows it expired).
    pub live: Vec<Live>,
    /// Expired, with their last evidence.
    pub expired: Vec<(PreviousRule, DateTime<Utc>)>,
}

/// The previous policies of the workloads of `cluster` (in scope), their rules split by
/// expiry; and the removals of previous policies whose workload is gone.
pub(super) fn carried(
    cluster: &Cluster,
    window: &Observations,
    stab: &Stability<'_>,
    in_scope: impl Fn(&str) -> bool,
) -> (BTreeMap<WorkloadId, Carried>, Vec<Change>) {
    let mut out = BTreeMap::new();
    let mut gone = Vec::new();
    let Some(prev) = stab.previous else {
        return (out, gone);
    };
    let history = by_workload(cluster, stab.history.unwrap_or(window));
    let cutoff = stab.as_of - stab.expire_after;
    let workloads: BTreeMap<(&str, &str, &str), WorkloadId> = cluster
        .workloads
        .iter()
        .enumerate()
        .map(|(i, w)| ((w.namespace.as_str(), w.kind.as_str(), w.name.as_str()), i))
        .collect();
    for p in prev.policies.iter().filter(|p| in_scope(&p.namespace)) {
        let Some(w) = find_workload(cluster, &workloads, p) else {
            for r in &p.rules {
                gone.push(Change {
                    namespace: p.namespace.clone(),
                    policy: p.name.clone(),
                    workload: p.workload.clone().unwrap_or_default(),
                    kind: ChangeKind::Removed,
                    before: Some(r.key()),
                    after: None,
                    evidence: r.evidence.clone().unwrap_or_default(),
                    why: "its workload is no longer in the cluster".to_owned(),
                });
            }
            continue;
        };
        let seen = history.get(&w).map_or_else(
            || vec![None; p.rules.len()],
            |h| history_last_seen(cluster, h, w, p),
        );
        let c: &mut Carried = out.entry(w).or_default();
        c.policy.clone_from(&p.name);
        for (rule, seen) in p.rules.iter().zip(seen) {
            let last = rule.evidence.as_ref().and_then(|e| e.last_seen).max(seen);
            match last {
                Some(l) if l < cutoff => c.expired.push((rule.clone(), l)),
                _ => {
                    let mut rule = rule.clone();
                    if let Some(e) = rule.evidence.as_mut() {
                        e.last_seen = last;
                    } else if last.is_some() {
                        rule.evidence = Some(RuleEvidence {
                            first_seen: last,
                            last_seen: last,
                            ..RuleEvidence::default()
                        });
                    }
                    c.live.push(Live {
                        rule,
                        last_seen: last,
                    });
                }
            }
        }
    }
    (out, gone)
}

/// The workload a previous policy was for: by its `leash.dev/workload` annotation, else by
/// the name leash gives a workload's policy.
fn find_workload(
    cluster: &Cluster,
    index: &BTreeMap<(&str, &str, &str), WorkloadId>,
    p: &PreviousPolicy,
) -> Option<WorkloadId> {
    if let Some((kind, name)) = p.workload.as_deref().and_then(|w| w.split_once('/')) {
        return index.get(&(p.namespace.as_str(), kind, name)).copied();
    }
    index
        .range((p.namespace.as_str(), "", "")..)
        .take_while(|((ns, _, _), _)| *ns == p.namespace)
        .find(|((_, _, name), _)| super::policy_name(name) == p.name)
        .map(|(_, &w)| w)
        .filter(|&w| cluster.workloads[w].namespace == p.namespace)
}

/// A workload's observed destinations (address, port, protocol) with their latest time,
/// and a pod of it to evaluate them from.
struct History {
    pod: usize,
    dests: BTreeMap<(IpAddr, u16, Protocol), DateTime<Utc>>,
}

/// The flows of `obs` per workload (pod-network pods only: hostNetwork egress is never in a
/// policy).
fn by_workload(cluster: &Cluster, obs: &Observations) -> BTreeMap<WorkloadId, History> {
    let mut out: BTreeMap<WorkloadId, History> = BTreeMap::new();
    for (k, ev) in &obs.flows {
        let (Some(w), Some(pod)) = (cluster.workload_of(k.pod), cluster.pods.get(k.pod)) else {
            continue;
        };
        if pod.host_network {
            continue;
        }
        let h = out.entry(w).or_insert_with(|| History {
            pod: k.pod,
            dests: BTreeMap::new(),
        });
        // The lowest pod id, whatever the map's order.
        h.pod = h.pod.min(k.pod);
        let e = h
            .dests
            .entry((k.dst, k.port, k.protocol))
            .or_insert(ev.last_seen);
        *e = (*e).max(ev.last_seen);
    }
    out
}

/// Per rule of `p`, the latest observation in `history` (of workload `w`) that the rule
/// allows at egress, by the one evaluator.
fn history_last_seen(
    cluster: &Cluster,
    history: &History,
    w: WorkloadId,
    p: &PreviousPolicy,
) -> Vec<Option<DateTime<Utc>>> {
    let mut last = vec![None; p.rules.len()];
    let pod = &cluster.pods[history.pod];
    let Some(source) = ClusterView::pod(cluster, &pod.namespace, &pod.name) else {
        return last;
    };
    // The policy selects every pod of the namespace: egress then depends on the destination
    // only, and one pod of the workload stands for all.
    let spec = PolicySpec {
        workload: w,
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        pod_selector: LabelSelector::default(),
        rules: p.rules.iter().map(PreviousRule::to_rule).collect(),
        evidence: RuleEvidence::default(),
    };
    let Ok(set) = PolicySet::new(&[super::to_network_policy(cluster, &spec)]) else {
        return last;
    };
    for (&(dst, port, protocol), &seen) in &history.dests {
        let flow = eval::Flow {
            protocol,
            dst,
            dst_port: port,
        };
        let ev = eval::evaluate(cluster, &set, source, &flow);
        for t in &ev.targets {
            for m in &t.egress.matches {
                if let Some(l) = last.get_mut(m.rule) {
                    *l = Some(l.map_or(seen, |l: DateTime<Utc>| l.max(seen)));
                }
            }
        }
    }
    last
}

/// Whether every connection `inner` allows, `outer` allows too (conservatively: each peer
/// inside one peer of `outer`, each port range inside one of its port ranges).
pub fn contains(outer: &EgressRule, inner: &EgressRule) -> bool {
    inner
        .peers
        .iter()
        .all(|i| outer.peers.iter().any(|o| peer_contains(o, i)))
        && inner.ports.iter().all(|i| {
            outer
                .ports
                .iter()
                .any(|o| o.protocol == i.protocol && o.port <= i.port && i.last() <= o.last())
        })
}

fn peer_contains(outer: &EgressPeer, inner: &EgressPeer) -> bool {
    match (outer, inner) {
        (EgressPeer::Pods { .. }, EgressPeer::Pods { .. }) => outer == inner,
        (
            EgressPeer::Block {
                cidr: oc,
                except: oe,
                ..
            },
            EgressPeer::Block {
                cidr: ic,
                except: ie,
                ..
            },
        ) => {
            oc.contains(ic)
                && oe.iter().all(|x| {
                    !(x.contains(ic) || ic.contains(x)) || ie.iter().any(|y| y.contains(x))
                })
        }
        _ => false,
    }
}

/// The ipBlocks without `except` of a previous rule: what a cover can keep.
pub(super) fn blocks_of(l: &Live) -> Vec<IpNet> {
    l.rule
        .peers
        .iter()
        .filter_map(|p| match p {
            EgressPeer::Block { cidr, except, .. } if except.is_empty() => Some(*cidr),
            _ => None,
        })
        .collect()
}

/// The first previous rule that already allows `ip` on every port of `ports`: the
/// destination is explained by it, and its rule is built against that rule's blocks alone,
/// so that new evidence for an old destination changes no spec.
pub(super) fn explaining(
    live: &[Live],
    ip: IpAddr,
    ports: &BTreeSet<(Protocol, u16)>,
) -> Option<usize> {
    live.iter().position(|l| {
        let holds = l.rule.peers.iter().any(|p| match p {
            EgressPeer::Block { cidr, except, .. } => {
                cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
            }
            EgressPeer::Pods { .. } => false,
        });
        holds
            && ports
                .iter()
                .all(|&(proto, port)| l.rule.ports.iter().any(|r| r.allows(proto, port)))
    })
}

/// The blocks of `live` rules that the cover of an external rule towards `ips` on `ports`
/// keeps (hysteresis): all blocks of each previous ipBlock rule of the same ports that holds
/// one of `ips`, unless an earlier group claimed it (that group's rule then contains it, and
/// this group's rule folds into that one, [`merge`]). Blocks of rules of other ports are
/// not taken: they would open these ports to them.
pub(super) fn kept_blocks(
    live: &[Live],
    claimed: &mut BTreeSet<usize>,
    ips: &[IpAddr],
    ports: &[PortRange],
) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, l) in live.iter().enumerate() {
        let same_ports = l
            .rule
            .ports
            .iter()
            .map(|p| (p.protocol, p.port, p.end_port))
            .eq(ports.iter().map(|p| (p.protocol, p.port, p.end_port)));
        if !same_ports || claimed.contains(&i) {
            continue;
        }
        let blocks = blocks_of(l);
        if blocks.len() != l.rule.peers.len() {
            continue;
        }
        if blocks.iter().any(|b| ips.iter().any(|ip| b.contains(ip))) {
            claimed.insert(i);
            out.extend(blocks);
        }
    }
    out.sort();
    out.dedup();
    out
}

/// One workload's rules after the previous proposal: the previous order kept, new rules
/// last; and what changed. `policy` and `namespace` of the changes are filled later.
pub(super) fn merge(
    new: Vec<EgressRule>,
    c: Option<&Carried>,
    expire_after: Duration,
) -> (Vec<EgressRule>, Vec<Change>) {
    let Some(c) = c else {
        let changes = new
            .iter()
            .map(|n| change(ChangeKind::Added, None, Some(n), "observed in this window"))
            .collect();
        return (new, changes);
    };
    let mut placed = vec![false; new.len()];
    let mut out: Vec<EgressRule> = Vec::new();
    let mut changes = Vec::new();
    for l in &c.live {
        let prev = l.rule.to_rule();
        if let Some(i) = new.iter().position(|n| contains(n, &prev)) {
            if new[i].key() != prev.key() {
                changes.push(Change {
                    before: Some(prev.key()),
                    ..change(
                        ChangeKind::Widened,
                        None,
                        Some(&new[i]),
                        "observed in this window, beyond the previous rule",
                    )
                });
            }
            if !placed[i] {
                placed[i] = true;
                out.push(new[i].clone());
            }
            continue;
        }
        let mut kept = prev;
        let mut window = RuleEvidence::default();
        let mut seen = false;
        for (i, n) in new.iter().enumerate() {
            if !placed[i] && contains(&kept, n) {
                placed[i] = true;
                if !seen {
                    kept.kind = n.kind.clone();
                }
                seen = true;
                window.merge(&n.evidence);
                kept.notes.extend(n.notes.iter().cloned());
            }
        }
        if seen {
            kept.evidence = window;
            kept.not_seen_in_window = false;
        } else {
            kept.notes.push(match l.last_seen {
                Some(t) => format!(
                    "not seen in this window; last seen {}, kept until {} (--expire-after)",
                    leash_records::time::rfc3339(t),
                    leash_records::time::rfc3339(t + expire_after)
                ),
                None => {
                    "not seen in this window; last seen unknown (no evidence kept), kept".to_owned()
                }
            });
        }
        out.push(kept);
    }
    for (prev, last) in &c.expired {
        let prev = prev.to_rule();
        let why = format!(
            "last seen {}, older than --expire-after",
            leash_records::time::rfc3339(*last)
        );
        let mut ev = prev.evidence.clone();
        ev.last_seen = Some(*last);
        match new.iter().position(|n| contains(&prev, n)) {
            Some(i) => changes.push(Change {
                before: Some(prev.key()),
                why: format!("the rest of the previous rule was {why}"),
                ..change(ChangeKind::Narrowed, None, Some(&new[i]), "")
            }),
            None => changes.push(Change {
                evidence: ev,
                why,
                ..change(ChangeKind::Removed, Some(&prev), None, "")
            }),
        }
    }
    let narrowed: BTreeSet<String> = changes
        .iter()
        .filter(|ch| ch.kind == ChangeKind::Narrowed)
        .filter_map(|ch| ch.after.clone())
        .collect();
    for (i, n) in new.into_iter().enumerate() {
        if placed[i] {
            continue;
        }
        // Inside a rule already written (another group's cover kept a previous block that
        // holds it): its evidence joins that rule, and the spec does not change.
        if let Some(o) = out.iter_mut().find(|o| contains(o, &n)) {
            if o.not_seen_in_window {
                o.evidence = RuleEvidence::default();
                o.not_seen_in_window = false;
                o.notes
                    .retain(|n| !n.starts_with("not seen in this window"));
            }
            o.evidence.merge(&n.evidence);
            continue;
        }
        if !narrowed.contains(&n.key()) {
            changes.push(change(
                ChangeKind::Added,
                None,
                Some(&n),
                "observed in this window",
            ));
        }
        out.push(n);
    }
    (out, changes)
}

fn change(
    kind: ChangeKind,
    before: Option<&EgressRule>,
    after: Option<&EgressRule>,
    why: &str,
) -> Change {
    Change {
        namespace: String::new(),
        policy: String::new(),
        workload: String::new(),
        kind,
        before: before.map(EgressRule::key),
        after: after.map(EgressRule::key),
        evidence: after
            .or(before)
            .map(|r| r.evidence.clone())
            .unwrap_or_default(),
        why: why.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(c: &str, ports: &[u16]) -> EgressRule {
        EgressRule::new(
            RuleKind::External,
            vec![EgressPeer::Block {
                cidr: c.parse().expect("cidr"),
                except: Vec::new(),
                unobserved: 0,
            }],
            ports
                .iter()
                .map(|&port| PortRange {
                    protocol: Protocol::Tcp,
                    port,
                    end_port: None,
                    unobserved: 0,
                })
                .collect(),
            RuleEvidence::default(),
        )
    }

    #[test]
    fn containment_is_by_block_and_port() {
        assert!(contains(
            &block("10.0.0.0/24", &[443]),
            &block("10.0.0.8/29", &[443])
        ));
        assert!(!contains(
            &block("10.0.0.8/29", &[443]),
            &block("10.0.0.0/24", &[443])
        ));
        assert!(!contains(
            &block("10.0.0.0/24", &[443]),
            &block("10.0.0.8/29", &[80])
        ));
        assert!(contains(
            &block("10.0.0.0/24", &[80, 443]),
            &block("10.0.0.0/24", &[443])
        ));
    }

    fn prev(c: &str, ports: &[u16]) -> PreviousRule {
        let r = block(c, ports);
        PreviousRule {
            peers: r.peers,
            ports: r.ports,
            evidence: None,
        }
    }

    #[test]
    fn wider_new_rules_widen_and_narrower_ones_narrow_an_expired_rule() {
        let t = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("time");
        let carried = Carried {
            policy: "web-egress".into(),
            live: vec![Live {
                rule: prev("10.0.0.0/25", &[443]),
                last_seen: Some(t),
            }],
            expired: vec![(prev("192.0.2.0/24", &[443]), t)],
        };
        let new = vec![block("10.0.0.0/24", &[443]), block("192.0.2.7/32", &[443])];
        let (rules, changes) = merge(new, Some(&carried), Duration::days(30));
        let keys: Vec<String> = rules.iter().map(EgressRule::key).collect();
        assert_eq!(
            keys,
            ["to 10.0.0.0/24 on 443/TCP", "to 192.0.2.7/32 on 443/TCP"]
        );
        let got: Vec<(ChangeKind, Option<&str>, Option<&str>)> = changes
            .iter()
            .map(|c| (c.kind, c.before.as_deref(), c.after.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (
                    ChangeKind::Widened,
                    Some("to 10.0.0.0/25 on 443/TCP"),
                    Some("to 10.0.0.0/24 on 443/TCP")
                ),
                (
                    ChangeKind::Narrowed,
                    Some("to 192.0.2.0/24 on 443/TCP"),
                    Some("to 192.0.2.7/32 on 443/TCP")
                ),
            ]
        );
    }

    #[test]
    fn only_leash_policies_in_leash_shapes_are_carried_with_their_evidence() {
        let yaml = |name: &str, labels: &str, egress: &str| -> NetworkPolicy {
            serde_norway::from_str(&format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: shop\n  labels: {labels}\n  annotations: {{leash.dev/workload: Deployment/web}}\nspec:\n  podSelector: {{}}\n  egress: {egress}\n"
            ))
            .expect("a policy")
        };
        let managed = "{app.kubernetes.io/managed-by: leash}";
        let rules = "[{to: [{ipBlock: {cidr: 10.0.0.0/24}}], ports: [{protocol: TCP, port: 443}]}, \
                     {to: [{namespaceSelector: {matchLabels: {team: x}}}], ports: [{port: 80}]}, \
                     {to: [{ipBlock: {cidr: 10.0.1.0/24}}], ports: [{port: http}]}]";
        let policies = [
            yaml("web-egress", managed, rules),
            yaml("theirs", "{}", rules),
            yaml("default-deny-egress", managed, "[]"),
        ];
        let key = prev("10.0.0.0/24", &[443]).key();
        let evidence = EvidenceIndex::from([(
            ("shop".into(), "web-egress".into(), key.clone()),
            RuleEvidence {
                count: 3,
                ..RuleEvidence::default()
            },
        )]);
        let (p, skipped) = Previous::from_policies(&policies, &evidence);
        assert_eq!(p.policies.len(), 1, "{p:?}");
        let web = &p.policies[0];
        assert_eq!(web.workload.as_deref(), Some("Deployment/web"));
        assert_eq!(web.rules.len(), 1);
        assert_eq!(web.rules[0].key(), key);
        assert_eq!(web.rules[0].evidence.as_ref().map(|e| e.count), Some(3));
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(
            skipped[0].contains("shop/web-egress: egress rule 2"),
            "{skipped:?}"
        );
    }

    #[test]
    fn an_unseen_rule_is_kept_and_an_expired_one_removed() {
        let t = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).expect("time");
        let prev = |c: &str| PreviousRule {
            peers: block(c, &[443]).peers,
            ports: block(c, &[443]).ports,
            evidence: None,
        };
        let carried = Carried {
            policy: "web-egress".into(),
            live: vec![Live {
                rule: prev("10.0.0.0/24"),
                last_seen: Some(t),
            }],
            expired: vec![(prev("10.9.0.0/24"), t)],
        };
        let (rules, changes) = merge(
            vec![block("192.0.2.1/32", &[443])],
            Some(&carried),
            Duration::days(30),
        );
        assert_eq!(rules.len(), 2);
        assert!(
            rules[0].not_seen_in_window && rules[0].notes[0].contains("not seen in this window")
        );
        let kinds: Vec<ChangeKind> = changes.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [ChangeKind::Removed, ChangeKind::Added]);
        assert!(
            changes[0].why.contains("older than --expire-after"),
            "{:?}",
            changes[0]
        );
    }
}
