//! Rollout phases: per workload, how far it is on the way from observed to enforced.
//!
//! Each workload's recent flows are evaluated with the one evaluator ([`crate::eval`])
//! against the policies applied in the cluster and, when one is given, a proposal (a policy
//! state laid over the applied one, [`crate::policy_state::combine`]). Its phase is the first
//! of these that applies ([`Phase`], in this order):
//!
//! | phase | meaning |
//! |---|---|
//! | `unmanaged` | an egress NetworkPolicy that leash did not write selects it |
//! | `drifted` | the applied policies deny some of its recent flows |
//! | `enforced` | a leash workload policy selects it, and no recent flow is denied |
//! | `observing` | observed for less than the minimum observation |
//! | `would-deny` | the proposal denies some of its recent flows (listed) |
//! | `ready` | observed long enough, and the proposal denies none of its flows |
//!
//! Without a proposal there is no `would-deny`. Only namespaced NetworkPolicies count:
//! ClusterNetworkPolicies never make a workload `unmanaged`, and a policy that selects every
//! pod of its namespace (a default-deny) does not make a workload `enforced`.
//!
//! Pure: [`phases`] takes the model, the observations, the compiled policy sets and `now`,
//! and does no I/O (it spreads the evaluations over the available cores, as the
//! recommendation's self-check does). `leash rollout status`, `leash serve` (`GET /v1/rollout`, the metrics)
//! and `leash recommend --ready-only` share it.
//!
//! The board puts the guardrails first, as their own stage ([`board`],
//! [`crate::guardrails::stage`]); [`render`] writes it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use leash_records::Protocol;
use serde::{Serialize, Serializer};

use crate::cluster::{Cluster, WorkloadId};
use crate::eval::{CompiledPolicy, Flow, PolicySet, Verdict, evaluate};
use crate::observations::Observations;
use crate::policy_state::is_managed;
use crate::recommend::{Recommendation, Withheld};

pub mod board;
pub mod render;

pub use render::{Format, render, to_json_lines, to_table};

/// A workload's rollout phase, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// An egress NetworkPolicy that leash did not write selects it.
    Unmanaged,
    /// The applied policies deny some of its recent flows.
    Drifted,
    /// A leash workload policy selects it, and no recent flow is denied.
    Enforced,
    /// Observed for less than the minimum observation.
    Observing,
    /// The proposal denies some of its recent flows.
    WouldDeny,
    /// Observed long enough, and the proposal denies none of its flows.
    Ready,
}

impl Phase {
    /// Every phase, in order of precedence.
    pub const ALL: [Phase; 6] = [
        Phase::Unmanaged,
        Phase::Drifted,
        Phase::Enforced,
        Phase::Observing,
        Phase::WouldDeny,
        Phase::Ready,
    ];

    /// The phase's name, as in JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Unmanaged => "unmanaged",
            Phase::Drifted => "drifted",
            Phase::Enforced => "enforced",
            Phase::Observing => "observing",
            Phase::WouldDeny => "would-deny",
            Phase::Ready => "ready",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The policies a workload's flows are evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct Policies<'a> {
    /// The NetworkPolicies applied in the cluster, as objects: which ones select a workload,
    /// and whether leash wrote them.
    pub applied: &'a [NetworkPolicy],
    /// The same, compiled.
    pub applied_set: &'a PolicySet,
    /// The proposed policy state (the proposal combined with the applied policies), if any.
    pub proposed: Option<&'a PolicySet>,
}

/// The knobs of [`phases`].
#[derive(Debug, Clone)]
pub struct Options {
    /// A workload observed for less than this is `observing`.
    pub min_observation: Duration,
    /// The time observed-for is counted to.
    pub now: DateTime<Utc>,
    /// Only workloads of these namespaces; empty means all.
    pub namespaces: BTreeSet<String>,
}

/// One flow of a workload that a policy set denies, summed over the workload's pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeniedFlow {
    /// The destination as dialed.
    pub dst: IpAddr,
    /// The port as dialed.
    pub dst_port: u16,
    /// The protocol.
    #[serde(serialize_with = "protocol")]
    pub protocol: Protocol,
    /// Events seen.
    pub events: u64,
    /// When it was last seen.
    #[serde(serialize_with = "rfc3339")]
    pub last_seen: DateTime<Utc>,
    /// DNS names the destination was reached by, sorted.
    pub names: Vec<String>,
}

impl DeniedFlow {
    /// `ip:port/PROTO`, an IPv6 address in brackets.
    pub fn destination(&self) -> String {
        match self.dst {
            IpAddr::V4(a) => format!("{a}:{}/{}", self.dst_port, self.protocol),
            IpAddr::V6(a) => format!("[{a}]:{}/{}", self.dst_port, self.protocol),
        }
    }
}

fn protocol<S: Serializer>(p: &Protocol, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.as_str())
}

fn rfc3339<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&leash_records::time::rfc3339(*t))
}

/// One workload's phase and what decided it: the JSON object of `leash rollout status
/// --format json` and `GET /v1/rollout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadStatus {
    /// The namespace.
    pub namespace: String,
    /// `Kind/name` ([`crate::json`]).
    pub workload: String,
    /// The phase.
    pub phase: Phase,
    /// Now minus the first time any evidence of it was seen (0 when none was).
    pub observed_for_seconds: u64,
    /// The recent flows the proposal denies, sorted by destination; empty without one.
    pub would_deny: Vec<DeniedFlow>,
    /// The recent flows the applied policies deny, sorted by destination.
    pub denied: Vec<DeniedFlow>,
    /// The applied egress policies that select it, `namespace/name`, sorted: for
    /// `unmanaged` those leash did not write, else leash's workload policies.
    pub policies: Vec<String>,
    /// The workload in the cluster model.
    #[serde(skip)]
    pub id: WorkloadId,
    /// The minimum observation the phase was decided with.
    #[serde(skip)]
    pub min_observation: Duration,
}

/// At most this many flows are named in a one-line reason.
const SHOWN: usize = 3;

impl WorkloadStatus {
    /// Why it is in its phase, in one line.
    pub fn why(&self) -> String {
        let observed = crate::render::human_duration(Duration::seconds(
            i64::try_from(self.observed_for_seconds).unwrap_or(i64::MAX),
        ));
        match self.phase {
            Phase::Unmanaged => format!(
                "an egress NetworkPolicy leash did not write selects it ({})",
                self.policies.join(", ")
            ),
            Phase::Drifted => format!(
                "the applied policies deny {}",
                flows_text(&self.denied, "recent flow", "recent flows")
            ),
            Phase::Enforced => format!(
                "leash's policy selects it ({}) and no recent flow is denied",
                self.policies.join(", ")
            ),
            Phase::Observing => format!(
                "observed for {observed}, less than the minimum of {}",
                crate::render::human_duration(self.min_observation)
            ),
            Phase::WouldDeny => format!(
                "the proposal denies {}",
                flows_text(&self.would_deny, "recent flow", "recent flows")
            ),
            Phase::Ready => {
                format!("observed for {observed}; the proposal denies none of its flows")
            }
        }
    }
}

/// `2 recent flows: 203.0.113.10:443/TCP (3 events), … and 4 more`.
fn flows_text(flows: &[DeniedFlow], one: &str, many: &str) -> String {
    let mut out = format!(
        "{} {}: ",
        flows.len(),
        if flows.len() == 1 { one } else { many }
    );
    let shown: Vec<String> = flows
        .iter()
        .take(SHOWN)
        .map(|f| {
            let names = if f.names.is_empty() {
                String::new()
            } else {
                format!(" {}", f.names.join(" "))
            };
            let events = usize::try_from(f.events).unwrap_or(usize::MAX);
            let events = crate::render::plural(events, "event", "events");
            format!("{}{names} ({events})", f.destination())
        })
        .collect();
    out.push_str(&shown.join(", "));
    if flows.len() > SHOWN {
        let _ = write!(out, " and {} more", flows.len() - SHOWN);
    }
    out
}

/// The applied egress policies of one namespace that may select a workload.
#[derive(Default)]
struct EgressPolicies {
    /// Those leash did not write.
    foreign: Vec<CompiledPolicy>,
    /// leash's, each with whether it selects every pod of the namespace.
    managed: Vec<(CompiledPolicy, bool)>,
}

/// A flow of the observations in scope: its key and evidence, its pod and workload.
type Keyed<'a> = (
    &'a crate::observations::FlowKey,
    &'a crate::observations::Evidence,
    &'a crate::cluster::PodInfo,
    WorkloadId,
);

/// Summed denied flows of one workload, by destination.
pub(crate) type Denials = BTreeMap<(IpAddr, u16, Protocol), DeniedFlow>;

/// Adds `ev` of `flow` to `d` (events summed, last seen and names merged).
pub(crate) fn add_denied(d: &mut Denials, flow: &Flow, ev: &crate::observations::Evidence) {
    let e = d
        .entry((flow.dst, flow.dst_port, flow.protocol))
        .or_insert_with(|| DeniedFlow {
            dst: flow.dst,
            dst_port: flow.dst_port,
            protocol: flow.protocol,
            events: 0,
            last_seen: ev.last_seen,
            names: Vec::new(),
        });
    e.events = e.events.saturating_add(ev.count);
    e.last_seen = e.last_seen.max(ev.last_seen);
    let mut names: BTreeSet<String> = std::mem::take(&mut e.names).into_iter().collect();
    names.extend(ev.names.iter().cloned());
    e.names = names.into_iter().collect();
}

/// What was seen of one workload.
#[derive(Default)]
struct Seen {
    first: Option<DateTime<Utc>>,
    denied: Denials,
    would_deny: Denials,
}

impl Seen {
    fn saw(&mut self, t: DateTime<Utc>) {
        self.first = Some(self.first.map_or(t, |f| f.min(t)));
    }
}

/// The phase of every workload of `cluster` (in `opts.namespaces`, when given) that has a
/// pod on the pod network, sorted by namespace, kind and name. Its recent flows are those of
/// `obs`; its first evidence the earliest flow or DNS query of its pods there.
pub fn phases(
    cluster: &Cluster,
    obs: &Observations,
    policies: &Policies<'_>,
    opts: &Options,
) -> Vec<WorkloadStatus> {
    let in_scope = |ns: &str| opts.namespaces.is_empty() || opts.namespaces.contains(ns);
    let mut by_namespace: BTreeMap<String, EgressPolicies> = BTreeMap::new();
    for np in policies.applied {
        // A policy the evaluator refuses applies to nothing (the cluster state leaves it out).
        let Ok(p) = CompiledPolicy::compile(np) else {
            continue;
        };
        if p.egress.is_none() {
            continue;
        }
        let ns = by_namespace.entry(p.id.namespace.clone()).or_default();
        if is_managed(&np.metadata) {
            let all = p.pod_selector.is_empty();
            ns.managed.push((p, all));
        } else {
            ns.foreign.push(p);
        }
    }

    // Sorted, so that equal inputs give equal lists whatever the map order.
    let mut keys: Vec<_> = obs
        .flows
        .iter()
        .filter_map(|(k, ev)| {
            let pod = cluster.pods.get(k.pod)?;
            let w = cluster.workload_of(k.pod)?;
            in_scope(&pod.namespace).then_some((k, ev, pod, w))
        })
        .collect();
    keys.sort_by_key(|(k, ..)| **k);
    let flow_of = |k: &crate::observations::FlowKey| Flow {
        protocol: k.protocol,
        dst: k.dst,
        dst_port: k.port,
    };
    // (applied denies, proposal denies) per key. A flow to a Service address that leads
    // nowhere (no backend, no such port) is denied by kube-proxy, not by a policy: it makes no
    // workload drifted nor a proposal wrong (recommend's self-check skips it too).
    // Evaluations are independent: spread them over the available cores.
    let judge = |(k, _, pod, _): &Keyed<'_>| {
        let flow = flow_of(k);
        let denies = |set: &PolicySet| {
            let e = evaluate(cluster, set, *pod, &flow);
            e.verdict == Verdict::Deny && e.problem.is_none()
        };
        (
            denies(policies.applied_set),
            policies.proposed.is_some_and(denies),
        )
    };
    let verdicts: Vec<(bool, bool)> = crate::parallel::map(&keys, judge);
    let mut seen: BTreeMap<WorkloadId, Seen> = BTreeMap::new();
    for ((k, ev, _, w), (denied, would)) in keys.iter().zip(verdicts) {
        let s = seen.entry(*w).or_default();
        s.saw(ev.first_seen);
        let flow = flow_of(k);
        if denied {
            add_denied(&mut s.denied, &flow, ev);
        }
        if would {
            add_denied(&mut s.would_deny, &flow, ev);
        }
    }
    for (&(pod, _), ev) in &obs.dns {
        if let Some(w) = cluster.workload_of(pod)
            && cluster
                .pods
                .get(pod)
                .is_some_and(|p| in_scope(&p.namespace))
        {
            seen.entry(w).or_default().saw(ev.first_seen);
        }
    }

    let empty = EgressPolicies::default();
    let mut out = Vec::new();
    for (id, wl) in cluster.workloads.iter().enumerate() {
        if !in_scope(&wl.namespace) {
            continue;
        }
        let pods = cluster.workload_pods(id);
        let live: Vec<_> = pods
            .iter()
            .map(|&p| &cluster.pods[p])
            .filter(|p| !p.terminated)
            .collect();
        let members = if live.is_empty() {
            pods.iter().map(|&p| &cluster.pods[p]).collect()
        } else {
            live
        };
        // NetworkPolicy cannot restrict a hostNetwork pod's egress: nothing to roll out.
        if members.iter().all(|p| p.host_network) {
            continue;
        }
        let selects =
            |p: &CompiledPolicy| members.iter().any(|m| p.pod_selector.matches(&m.labels));
        let ns = by_namespace.get(&wl.namespace).unwrap_or(&empty);
        let foreign: Vec<String> = ns
            .foreign
            .iter()
            .filter(|p| selects(p))
            .map(|p| p.id.to_string())
            .collect();
        let own: Vec<String> = ns
            .managed
            .iter()
            .filter(|(p, all)| !all && selects(p))
            .map(|(p, _)| p.id.to_string())
            .collect();
        let s = seen.remove(&id).unwrap_or_default();
        let observed_for = s
            .first
            .map_or(Duration::zero(), |f| (opts.now - f).max(Duration::zero()));
        let denied: Vec<DeniedFlow> = s.denied.into_values().collect();
        let would_deny: Vec<DeniedFlow> = s.would_deny.into_values().collect();
        let phase = if !foreign.is_empty() {
            Phase::Unmanaged
        } else if !denied.is_empty() {
            Phase::Drifted
        } else if !own.is_empty() {
            Phase::Enforced
        } else if s.first.is_none() || observed_for < opts.min_observation {
            Phase::Observing
        } else if !would_deny.is_empty() {
            Phase::WouldDeny
        } else {
            Phase::Ready
        };
        out.push(WorkloadStatus {
            namespace: wl.namespace.clone(),
            workload: crate::json::workload(&wl.kind, &wl.name),
            phase,
            observed_for_seconds: u64::try_from(observed_for.num_seconds()).unwrap_or(0),
            would_deny,
            denied,
            policies: if phase == Phase::Unmanaged {
                foreign
            } else {
                own
            },
            id,
            min_observation: opts.min_observation,
        });
    }
    out
}

/// How many workloads are in each phase, every phase listed (0 for none), in order.
pub fn counts(statuses: &[WorkloadStatus]) -> Vec<(Phase, usize)> {
    Phase::ALL
        .iter()
        .map(|&p| (p, statuses.iter().filter(|s| s.phase == p).count()))
        .collect()
}

/// `recommend --ready-only`: keeps the policies of `ready` workloads, and of `enforced` ones
/// (their policy is applied already: leaving it out of the output directory would remove it
/// on the next apply), and moves the others to [`Recommendation::withheld`] with their phase
/// and why. A namespace keeps its `default-deny-egress` only when none of its proposed
/// workloads was withheld: the default-deny would otherwise cut off their egress. The
/// report's other findings then speak only of the policies kept.
pub fn keep_ready(cluster: &Cluster, rec: &mut Recommendation, statuses: &[WorkloadStatus]) {
    let by_id: BTreeMap<WorkloadId, &WorkloadStatus> = statuses.iter().map(|s| (s.id, s)).collect();
    let mut withheld = Vec::new();
    rec.policies.retain(|p| {
        let Some(s) = by_id.get(&p.workload) else {
            // Not on the board (no pod on the pod network): no phase, so not ready.
            withheld.push(Withheld {
                workload: p.workload,
                phase: "unknown".to_owned(),
                why: "no pod on the pod network".to_owned(),
            });
            return false;
        };
        if matches!(s.phase, Phase::Ready | Phase::Enforced) {
            return true;
        }
        withheld.push(Withheld {
            workload: p.workload,
            phase: s.phase.to_string(),
            why: s.why(),
        });
        false
    });
    let namespace_of = |w: WorkloadId| cluster.workloads.get(w).map(|w| w.namespace.as_str());
    let blocked: BTreeSet<&str> = withheld
        .iter()
        .filter_map(|w| namespace_of(w.workload))
        .collect();
    rec.default_deny_namespaces
        .retain(|ns| !blocked.contains(ns.as_str()));
    let denying: BTreeSet<&str> = rec
        .default_deny_namespaces
        .iter()
        .map(String::as_str)
        .collect();
    rec.isolated
        .retain(|&w| namespace_of(w).is_some_and(|ns| denying.contains(ns)));
    let kept: BTreeSet<WorkloadId> = rec.policies.iter().map(|p| p.workload).collect();
    rec.briefly_observed.retain(|(w, _)| kept.contains(w));
    rec.shared_egress.retain(|e| kept.contains(&e.workload));
    withheld.sort_by_key(|w| w.workload);
    rec.withheld = withheld;
}

/// The REPORT.md section of [`Recommendation::withheld`] (`recommend --ready-only`), appended
/// to `out`; whether there was one.
pub fn report_withheld(out: &mut String, cluster: &Cluster, withheld: &[Withheld]) -> bool {
    if withheld.is_empty() {
        return false;
    }
    let _ = writeln!(
        out,
        "### Not ready: no policy written (--ready-only)\n\nThese workloads' policies were \
         left out because their rollout phase is not `ready`; their namespaces get no \
         `default-deny-egress` yet. `leash rollout status` shows the phases.\n\n\
         | workload | phase | why |\n|---|---|---|"
    );
    for w in withheld {
        let name = cluster
            .workloads
            .get(w.workload)
            .map_or_else(String::new, ToString::to_string);
        let _ = writeln!(
            out,
            "| {} | `{}` | {} |",
            table_cell(&name),
            w.phase,
            table_cell(&w.why)
        );
    }
    out.push('\n');
    true
}

/// Text made safe for one Markdown table cell.
fn table_cell(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .replace('|', "\\|")
        .replace('`', "'")
}
