//! Recommendation: classified observations → one egress NetworkPolicy per workload.
//!
//! The result, [`Recommendation`], is a plain model (policies, rules with their evidence, and
//! the findings the report lists); [`to_network_policy`] turns a policy into the Kubernetes
//! object. Everything is sorted so that the same observations always give the same bytes.
//!
//! Pure: every function takes values and does no I/O; the commands read the snapshot, the
//! records or the store, and write the output.
//!
//! - this module: the walk over the observations ([`recommend`]) and the checked entry point
//!   ([`checked`]) that `leash recommend` and `GET /v1/namespaces/NS/recommendations` share;
//! - [`model`]: what was decided (policies, rules, peers, findings);
//! - [`evidence`]: what backs a rule;
//! - `rules`: a workload's observed destinations → its egress rules (ports, CIDR covers,
//!   selectors);
//! - [`objects`]: policy names and the Kubernetes objects;
//! - [`check`]: the self-check with the one NetworkPolicy evaluator;
//! - [`names`]: external rules grouped by DNS name, with each name's address churn.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use chrono::Duration;
use leash_records::Protocol;

use crate::cidr::CoverOptions;
use crate::classify::{self, Class, Classifier, DestinationPeer, Resolver, Target};
use crate::cluster::{Cluster, WorkloadId};
use crate::observations::{Evidence, Observations};
use crate::ports;

pub mod check;
pub mod evidence;
pub mod existing;
pub mod model;
pub mod names;
pub mod objects;
pub mod previous;
mod published;
mod rules;

use objects::name_policies;
use rules::build_rules;
/// The DNS rule's peers for a resolver (also the guardrails' Baseline DNS rule).
pub(crate) use rules::dns_peers;

pub use check::{Denied, SelfCheckError, self_check};
pub use evidence::RuleEvidence;
use evidence::Who;
pub use existing::{SharedEgress, also_allowed, shared_egress};
pub use model::{
    Change, ChangeKind, EgressPeer, EgressRule, HostNetworkFinding, PolicySpec, Recommendation,
    RuleKind, Unresolved, Withheld,
};
pub use objects::{
    ANNOTATION_GENERATED_BY, ANNOTATION_WORKLOAD, DEFAULT_DENY_NAME, all_policies, default_deny,
    evidence_summary, policy_name, to_network_policy,
};
pub use previous::{Previous, Stability};

/// Knobs of [`recommend`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Resolver discovery.
    pub classify: classify::ClassifierConfig,
    /// At most this many ipBlocks per external rule (`--max-cidrs`).
    pub max_cidrs: usize,
    /// Never widen an IPv4 block past this prefix (`--max-prefix-v4`).
    pub max_prefix_v4: u8,
    /// Never widen an IPv6 block past this prefix (`--max-prefix-v6`).
    pub max_prefix_v6: u8,
    /// Workloads observed for less than this are flagged (`--min-observation`).
    pub min_observation: Duration,
    /// Only these source namespaces (`--namespace`); empty means all.
    pub namespaces: BTreeSet<String>,
    /// Consecutive ports from which a run becomes `port`/`endPort`.
    pub min_port_run: usize,
    /// Published provider ranges (`--ip-ranges`); empty by default.
    pub published: std::sync::Arc<crate::ranges::PublishedRanges>,
    /// A published IPv4 range no wider than this prefix may stand for a name's addresses
    /// (`--max-published-prefix-v4`).
    pub max_published_prefix_v4: u8,
    /// The same for IPv6 (`--max-published-prefix-v6`).
    pub max_published_prefix_v6: u8,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            classify: classify::ClassifierConfig::default(),
            max_cidrs: 8,
            max_prefix_v4: 24,
            max_prefix_v6: 48,
            min_observation: Duration::hours(24),
            namespaces: BTreeSet::new(),
            min_port_run: ports::DEFAULT_MIN_RUN,
            published: std::sync::Arc::default(),
            max_published_prefix_v4: 16,
            max_published_prefix_v6: 40,
        }
    }
}

/// Per-workload accumulation before rules are built.
#[derive(Default)]
struct Acc {
    dns: BTreeMap<Resolver, RuleEvidence>,
    peers: BTreeMap<DestinationPeer, BTreeMap<(Protocol, u16), RuleEvidence>>,
}

/// A destination as dialed, for the report: `ip:port/PROTO`, an IPv6 address in brackets.
pub(crate) fn dest(ip: IpAddr, port: u16, proto: Protocol) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}/{proto}"),
        IpAddr::V6(a) => format!("[{a}]:{port}/{proto}"),
    }
}

/// Builds the recommendation, without a previous proposal. Pure: no I/O.
pub fn recommend(cluster: &Cluster, obs: &Observations, opts: &Options) -> Recommendation {
    recommend_stable(cluster, obs, opts, &Stability::none())
}

/// Builds the recommendation over the previous proposal of `stab` ([`previous`]): previous
/// rules are kept until they expire, previous blocks are kept by the covers, and the changes
/// are listed. Pure: no I/O.
pub fn recommend_stable(
    cluster: &Cluster,
    obs: &Observations,
    opts: &Options,
    stab: &Stability<'_>,
) -> Recommendation {
    let mut classifier = Classifier::new(cluster, &opts.classify, obs);
    let in_scope = |ns: &str| opts.namespaces.is_empty() || opts.namespaces.contains(ns);
    let mut accs: BTreeMap<WorkloadId, Acc> = BTreeMap::new();
    let mut host_network: BTreeMap<WorkloadId, RuleEvidence> = BTreeMap::new();
    let mut unresolved: BTreeMap<(WorkloadId, String, String), u64> = BTreeMap::new();

    // Sorted iteration keeps every derived set independent of the input order.
    let mut keys: Vec<_> = obs.flows.iter().collect();
    keys.sort_by_key(|(k, _)| **k);
    for (key, ev) in keys {
        let Some(pod) = cluster.pods.get(key.pod) else {
            continue;
        };
        let Some(w) = cluster.workload_of(key.pod) else {
            continue;
        };
        if !in_scope(&pod.namespace) {
            continue;
        }
        let dialed = dest(key.dst, key.port, key.protocol);
        let who = obs.pods.get(key).map_or(Who::Pod(&pod.name), Who::Stored);
        if pod.host_network {
            host_network.entry(w).or_default().add(ev, who, dialed);
            continue;
        }
        let acc = accs.entry(w).or_default();
        match classifier.classify(key.dst, key.port, key.protocol) {
            Class::Dns(r) => acc.dns.entry(r).or_default().add(ev, who, dialed),
            Class::Direct(t) => add_target(acc, t, ev, who, dialed),
            Class::Service { service, targets } => {
                let svc = &cluster.services[service];
                let label = format!(
                    "Service {}/{} {}/{}",
                    svc.namespace, svc.name, key.port, key.protocol
                );
                for t in targets {
                    add_target(acc, t, ev, who, format!("{label} → {}", t.port));
                }
            }
            Class::Unresolved(reason) => {
                *unresolved.entry((w, dialed, reason)).or_default() += ev.count;
            }
        }
    }
    // DNS records: a workload that resolved names gets the DNS rule even without a flow.
    for (&(pod_id, server), u) in &obs.dns {
        let Some(pod) = cluster.pods.get(pod_id) else {
            continue;
        };
        let Some(w) = cluster.workload_of(pod_id) else {
            continue;
        };
        if !in_scope(&pod.namespace) || pod.host_network {
            continue;
        }
        let r = classifier.resolver(server);
        accs.entry(w).or_default().dns.entry(r).or_default().add(
            u,
            Who::Pod(&pod.name),
            format!("{server} (DNS queries)"),
        );
    }

    let (carried, gone) = previous::carried(cluster, obs, stab, in_scope);
    let mut rec = Recommendation {
        min_observation: opts.min_observation,
        unattributed_flows: obs.unattributed_flows,
        has_previous: stab.previous.is_some(),
        ..Recommendation::default()
    };
    let cover_opts = CoverOptions {
        max_cidrs: opts.max_cidrs,
        max_prefix_v4: opts.max_prefix_v4,
        max_prefix_v6: opts.max_prefix_v6,
        protected: ipnet::IpNet::aggregate(
            &[
                crate::cidr::builtin_protected(),
                cluster.pod_and_service_ranges(),
            ]
            .concat(),
        ),
    };
    // Workloads with observations in the window, or a previous policy.
    let mut workloads: BTreeMap<WorkloadId, Option<Acc>> =
        carried.keys().map(|&w| (w, None)).collect();
    for (w, acc) in accs {
        workloads.insert(w, Some(acc));
    }
    let named = published::NameIndex::new(cluster, &obs.history);
    let mut changes: Vec<(WorkloadId, Change)> = Vec::new();
    for (w, acc) in workloads {
        let wl = &cluster.workloads[w];
        let Some(selector) = wl.selector.clone() else {
            if acc.is_some() {
                rec.unselectable.push(w);
            }
            continue;
        };
        let prev = carried.get(&w);
        let live = prev.map_or(&[][..], |c| c.live.as_slice());
        let new = match acc {
            Some(acc) => build_rules(
                cluster,
                &classifier,
                obs,
                &cover_opts,
                opts,
                w,
                &named,
                acc,
                live,
            ),
            None => Vec::new(),
        };
        let (rules, ch) = if rec.has_previous {
            previous::merge(new, prev, stab.expire_after)
        } else {
            (new, Vec::new())
        };
        changes.extend(ch.into_iter().map(|c| (w, c)));
        if rules.is_empty() {
            continue;
        }
        let mut evidence = RuleEvidence::default();
        for r in &rules {
            evidence.merge(&r.evidence);
        }
        if evidence.span() < opts.min_observation {
            rec.briefly_observed.push((w, evidence.span()));
        }
        rec.policies.push(PolicySpec {
            workload: w,
            namespace: wl.namespace.clone(),
            name: String::new(),
            pod_selector: selector,
            rules,
            evidence,
        });
    }
    name_policies(cluster, &mut rec.policies);
    rec.policies
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rec.names = names::churn(cluster, obs, &mut classifier, &rec.policies);
    let names: BTreeMap<WorkloadId, &str> = rec
        .policies
        .iter()
        .map(|p| (p.workload, p.name.as_str()))
        .collect();
    for (w, mut c) in changes {
        let wl = &cluster.workloads[w];
        c.namespace.clone_from(&wl.namespace);
        c.workload = crate::json::workload(&wl.kind, &wl.name);
        c.policy = match names.get(&w) {
            Some(n) => (*n).to_owned(),
            None => carried
                .get(&w)
                .map(|c| c.policy.clone())
                .unwrap_or_default(),
        };
        rec.changes.push(c);
    }
    rec.changes.extend(gone);
    rec.changes.sort_by(|a, b| {
        (&a.namespace, &a.policy, a.kind, &a.before, &a.after).cmp(&(
            &b.namespace,
            &b.policy,
            b.kind,
            &b.before,
            &b.after,
        ))
    });
    let deny: BTreeSet<String> = rec.policies.iter().map(|p| p.namespace.clone()).collect();
    let with_policy: BTreeSet<WorkloadId> = rec.policies.iter().map(|p| p.workload).collect();
    for (w, wl) in cluster.workloads.iter().enumerate() {
        let live = cluster
            .workload_pods(w)
            .iter()
            .any(|&p| !cluster.pods[p].terminated && !cluster.pods[p].host_network);
        if live
            && deny.contains(&wl.namespace)
            && !with_policy.contains(&w)
            && !rec.unselectable.contains(&w)
        {
            rec.isolated.push(w);
        }
    }
    rec.default_deny_namespaces = deny.into_iter().collect();
    rec.host_network = host_network
        .into_iter()
        .map(|(workload, evidence)| HostNetworkFinding { workload, evidence })
        .collect();
    rec.unresolved = unresolved
        .into_iter()
        .map(|((workload, destination, reason), count)| Unresolved {
            workload,
            destination,
            reason,
            count,
        })
        .collect();
    rec
}

fn add_target(acc: &mut Acc, t: Target, ev: &Evidence, pods: Who<'_>, destination: String) {
    acc.peers
        .entry(t.peer)
        .or_default()
        .entry((t.protocol, t.port))
        .or_default()
        .add(ev, pods, destination);
}

/// The recommendation, self-checked: what `leash recommend` writes and
/// `GET /v1/namespaces/NS/recommendations` answers. Every observed flow of a workload that got
/// a policy is evaluated against the generated policies, with the cluster model as the
/// evaluator's view; a flow they would deny is a bug in leash, never an answer.
pub fn checked(
    cluster: &Cluster,
    obs: &Observations,
    opts: &Options,
) -> Result<Recommendation, SelfCheckError> {
    checked_stable(cluster, obs, opts, &Stability::none())
}

/// [`checked`] over a previous proposal ([`recommend_stable`]).
pub fn checked_stable(
    cluster: &Cluster,
    obs: &Observations,
    opts: &Options,
    stab: &Stability<'_>,
) -> Result<Recommendation, SelfCheckError> {
    let rec = recommend_stable(cluster, obs, opts, stab);
    self_check(cluster, cluster, obs, &rec)?;
    Ok(rec)
}

/// The report lines of skipped observations (e.g. the store's `Skipped`), sorted.
pub fn skipped_lines<T: std::fmt::Display>(skipped: &[T]) -> Vec<String> {
    let mut lines: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    lines.sort();
    lines
}
