//! Observed traffic that changes verdict between two policy states.
//!
//! Every observed flow (from record files or a store, as [`Observations`]) is evaluated with
//! the one evaluator ([`crate::eval::evaluate`]) under both states, from the pod that made
//! it. Flows whose verdict changes are folded per (source workload, destination, port,
//! protocol, verdicts) with the one evidence fold ([`Evidence::merge`]); one that was allowed
//! and becomes denied is a break.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::cluster::{Cluster, PodInfo};
use crate::eval::{
    ClusterView as _, CompiledPolicy, Flow, PolicySet, ServiceRoute, Verdict, evaluate_with_names,
};
use crate::observations::{Evidence, Observations};

/// The workload a flow came from: its namespace and `Kind/name` (`Pod/<name>` for a bare
/// pod, as in every JSON output).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey {
    /// The namespace.
    pub namespace: String,
    /// `Kind/name` ([`crate::json::workload`]).
    pub workload: String,
}

impl std::fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.workload)
    }
}

/// The workload of the cluster's pod `pod`.
pub fn workload_of(cluster: &Cluster, pod: &crate::cluster::PodInfo) -> WorkloadKey {
    WorkloadKey {
        namespace: pod.namespace.clone(),
        workload: cluster.pod_workload(pod).map_or_else(
            || crate::json::bare_pod(&pod.name),
            |(kind, name)| crate::json::workload(kind, name),
        ),
    }
}

/// Observed flows of one workload to one destination whose verdict changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowChange {
    /// The source workload.
    pub source: WorkloadKey,
    /// The first (by name) of the pods that made these flows.
    pub pod: String,
    /// The destination as dialed (before DNAT), port and protocol.
    pub flow: Flow,
    /// The verdict under the `from` state.
    pub from: Verdict,
    /// The verdict under the `to` state.
    pub to: Verdict,
    /// What was seen: events, first and last seen, and the DNS names of the destination
    /// (those the flows carried and those answered for its address).
    pub evidence: Evidence,
}

impl FlowChange {
    /// Allowed under `from` and denied under `to`.
    pub fn is_break(&self) -> bool {
        self.from == Verdict::Allow && self.to == Verdict::Deny
    }
}

/// What the observed traffic says about a change of policy state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObservedFlows {
    /// The flows whose verdict changes, sorted by source workload, then protocol,
    /// destination, port and verdicts.
    pub changes: Vec<FlowChange>,
    /// The workloads whose observed flows were evaluated (with or without a change).
    pub workloads: BTreeSet<WorkloadKey>,
    /// Observed (workload, destination, port, protocol) evaluated.
    pub evaluated: usize,
    /// Flow events outside pods: not evaluated (NetworkPolicy does not apply to them).
    pub unattributed_events: u64,
}

/// The policies that differ between two states (added, removed, or with another meaning; both
/// versions kept), by namespace. A NetworkPolicy selects pods of its own namespace only, so a
/// flow's verdict can change only when one of these selects its source for egress or one of
/// its destination pods for ingress: every other flow needs no evaluation. At scale most
/// flows are of workloads whose policies did not change.
struct Changed<'a> {
    by_namespace: HashMap<&'a str, Vec<&'a CompiledPolicy>>,
    /// Whether any of them isolates ingress: proposals of egress policies never do, and then
    /// no destination needs resolving.
    any_ingress: bool,
    /// Whether the states' ClusterNetworkPolicies differ: they apply across namespaces, so
    /// then every flow is evaluated.
    tiers_differ: bool,
}

impl<'a> Changed<'a> {
    fn new(from: &'a PolicySet, to: &'a PolicySet) -> Self {
        let mut by_namespace: HashMap<&str, Vec<&CompiledPolicy>> = HashMap::new();
        let mut add = |p: &'a CompiledPolicy| {
            by_namespace
                .entry(p.id.namespace.as_str())
                .or_default()
                .push(p);
        };
        for (this, other) in [(from, to), (to, from)] {
            for p in this.iter() {
                if other.get(&p.id) != Some(p) {
                    add(p);
                }
            }
        }
        let any_ingress = by_namespace.values().flatten().any(|p| p.ingress.is_some());
        let tiers_differ = !from
            .cluster_policies()
            .iter()
            .eq(to.cluster_policies().iter());
        Changed {
            by_namespace,
            any_ingress,
            tiers_differ,
        }
    }

    /// Whether a changed policy selects `pod` in one direction.
    fn selects(&self, pod: &PodInfo, egress: bool) -> bool {
        self.by_namespace
            .get(pod.namespace.as_str())
            .is_some_and(|ps| {
                ps.iter().any(|p| {
                    let isolates = if egress {
                        p.egress.is_some()
                    } else {
                        p.ingress.is_some()
                    };
                    isolates && p.pod_selector.matches(&pod.labels)
                })
            })
    }

    /// Whether the verdict of `flow` from `pod` may differ between the states.
    fn may_change(&self, cluster: &Cluster, pod: &PodInfo, flow: &Flow) -> bool {
        if self.tiers_differ {
            return true;
        }
        if self.by_namespace.is_empty() {
            return false;
        }
        if self.selects(pod, true) {
            return true;
        }
        if !self.any_ingress {
            return false;
        }
        let dst = flow.dst.to_canonical();
        match cluster.service(dst, flow.dst_port, flow.protocol) {
            ServiceRoute::NotAService => crate::eval::ClusterView::pod_by_ip(cluster, dst)
                .is_some_and(|p| self.selects(p, false)),
            ServiceRoute::Backends { backends, .. } => backends
                .iter()
                .any(|b| b.pod.is_some_and(|p| self.selects(p, false))),
            // Denied before any policy is read, in both states.
            ServiceRoute::NoSuchPort { .. } | ServiceRoute::UnknownServiceAddress => false,
        }
    }
}

/// Evaluates every observed flow of a source pod in `namespaces` (all when empty) under
/// `from` and under `to`, and returns those whose verdict changes.
pub fn changes(
    cluster: &Cluster,
    obs: &Observations,
    from: &PolicySet,
    to: &PolicySet,
    namespaces: &BTreeSet<String>,
) -> ObservedFlows {
    type Key = (WorkloadKey, Flow, Verdict, Verdict);
    let mut groups: BTreeMap<Key, (BTreeSet<String>, Evidence)> = BTreeMap::new();
    // Workloads by number, computed once per pod: millions of flows come from a few
    // thousand workloads, and keying every flow by two strings was most of the time.
    let mut workload_ids: HashMap<usize, usize> = HashMap::new();
    let mut interned: HashMap<WorkloadKey, usize> = HashMap::new();
    let mut keys: Vec<WorkloadKey> = Vec::new();
    let mut seen: HashSet<(usize, Flow)> = HashSet::new();
    let mut out = ObservedFlows {
        unattributed_events: obs.unattributed_flows,
        ..ObservedFlows::default()
    };
    let changed = Changed::new(from, to);
    // First the flows a changed policy can reach; then their evaluations, over the cores;
    // then the fold, in the observations' order.
    let mut candidates = Vec::new();
    for (key, ev) in &obs.flows {
        let Some(pod) = cluster.pods.get(key.pod) else {
            continue;
        };
        if !namespaces.is_empty() && !namespaces.contains(&pod.namespace) {
            continue;
        }
        let id = *workload_ids.entry(key.pod).or_insert_with(|| {
            let w = workload_of(cluster, pod);
            *interned.entry(w.clone()).or_insert_with(|| {
                keys.push(w);
                keys.len() - 1
            })
        });
        let flow = Flow {
            protocol: key.protocol,
            dst: key.dst,
            dst_port: key.port,
        };
        seen.insert((id, flow));
        if changed.may_change(cluster, pod, &flow) {
            candidates.push((key, ev, pod, id, flow));
        }
    }
    // A ClusterNetworkPolicy's domainNames peer matches by the names the address resolved to.
    let no_names = BTreeSet::new();
    let verdicts = crate::parallel::map(&candidates, |(_, _, pod, _, flow)| {
        let names = obs
            .names_by_ip
            .get(&flow.dst.to_canonical())
            .unwrap_or(&no_names);
        (
            evaluate_with_names(cluster, from, *pod, flow, names).verdict,
            evaluate_with_names(cluster, to, *pod, flow, names).verdict,
        )
    });
    for ((key, ev, pod, id, flow), (before, after)) in candidates.into_iter().zip(verdicts) {
        if before == after {
            continue;
        }
        // A stored flow's key pod only stands in for its workload: the stored pod names say
        // who made it.
        let pods: Vec<&str> = match obs.pods.get(key) {
            Some(p) if !p.names.is_empty() => p.names.iter().map(String::as_str).collect(),
            _ => vec![pod.name.as_str()],
        };
        let mut evidence = ev.clone();
        if let Some(names) = obs.names_by_ip.get(&key.dst.to_canonical()) {
            evidence.names.extend(names.iter().cloned());
        }
        match groups.entry((keys[id].clone(), flow, before, after)) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                let (names, folded) = e.get_mut();
                names.extend(pods.into_iter().map(str::to_owned));
                folded.merge(&evidence);
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert((pods.into_iter().map(str::to_owned).collect(), evidence));
            }
        }
    }
    out.evaluated = seen.len();
    let ids: HashSet<usize> = seen.iter().map(|(w, _)| *w).collect();
    out.workloads = ids.into_iter().map(|w| keys[w].clone()).collect();
    out.changes = groups
        .into_iter()
        .map(|((source, flow, from, to), (pods, evidence))| FlowChange {
            source,
            pod: pods.into_iter().next().unwrap_or_default(),
            flow,
            from,
            to,
            evidence,
        })
        .collect();
    out
}

#[cfg(test)]
pub(super) mod tests {
    use std::net::IpAddr;
    use std::path::Path;

    use chrono::{DateTime, Utc};
    use leash_lab::k8s;
    use leash_records::Protocol;

    use super::*;
    use crate::eval::evaluate;
    use crate::observations::{FlowKey, PodNames};

    /// shop: Deployment `web` (pods web-1, web-2) and a bare pod `worker`; db: `pg-0`. The
    /// diff module's tests share it.
    pub(in crate::diff) fn cluster() -> Cluster {
        let pods = [
            k8s::pod("shop", "web-1")
                .labels(&[("app", "web")])
                .owner("Deployment", "web")
                .ip("10.244.1.10")
                .build(),
            k8s::pod("shop", "web-2")
                .labels(&[("app", "web")])
                .owner("Deployment", "web")
                .ip("10.244.1.11")
                .build(),
            k8s::pod("shop", "worker")
                .labels(&[("app", "worker")])
                .ip("10.244.1.12")
                .build(),
            k8s::pod("db", "pg-0")
                .labels(&[("app", "pg")])
                .ip("10.244.2.20")
                .build(),
        ];
        let namespaces = [
            k8s::namespace("shop", &[("kubernetes.io/metadata.name", "shop")]),
            k8s::namespace("db", &[("kubernetes.io/metadata.name", "db")]),
        ];
        Cluster::from_objects(
            &namespaces,
            &[],
            &pods,
            &[],
            &[],
            &[],
            &[],
            &[],
            &[],
            &[],
            &[],
        )
        .expect("valid cluster")
    }

    pub(in crate::diff) fn policies(yaml: &str) -> PolicySet {
        let snap =
            leash_records::snapshot::parse_str(yaml, Path::new("p.yaml")).expect("valid YAML");
        PolicySet::new(&snap.network_policies).expect("valid policies")
    }

    /// Everything in shop may only reach 203.0.113.0/24 on 443.
    const ONLY_HTTPS: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: https, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 203.0.113.0/24}}]
    ports: [{port: 443, protocol: TCP}]
";

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn add(obs: &mut Observations, c: &Cluster, pod: &str, dst: &str, port: u16, ev: Evidence) {
        let pod = c.pod_by_name(if pod == "pg-0" { "db" } else { "shop" }, pod);
        let key = FlowKey {
            pod: pod.expect("pod"),
            dst: ip(dst),
            port,
            protocol: Protocol::Tcp,
        };
        obs.flows.insert(key, ev);
    }

    #[test]
    fn flows_that_change_verdict_fold_per_workload_with_names() {
        let c = cluster();
        let mut obs = Observations::default();
        let mut named = Evidence::new(2, t("2026-11-01T00:00:00Z"), t("2026-11-02T00:00:00Z"));
        named.names.insert("a.example.com".into());
        add(&mut obs, &c, "web-2", "198.51.100.7", 443, named);
        add(
            &mut obs,
            &c,
            "web-1",
            "198.51.100.7",
            443,
            Evidence::new(3, t("2026-10-30T00:00:00Z"), t("2026-11-01T12:00:00Z")),
        );
        // Allowed under both: not a change.
        add(
            &mut obs,
            &c,
            "worker",
            "203.0.113.9",
            443,
            Evidence::new(1, t("2026-11-01T00:00:00Z"), t("2026-11-01T00:00:00Z")),
        );
        // db is not isolated by either state.
        add(
            &mut obs,
            &c,
            "pg-0",
            "198.51.100.7",
            443,
            Evidence::new(1, t("2026-11-01T00:00:00Z"), t("2026-11-01T00:00:00Z")),
        );
        obs.names_by_ip
            .entry(ip("198.51.100.7"))
            .or_default()
            .insert("b.example.com".into());
        obs.unattributed_flows = 4;

        let out = changes(
            &c,
            &obs,
            &PolicySet::default(),
            &policies(ONLY_HTTPS),
            &BTreeSet::new(),
        );
        // web-1 and web-2 to one destination are one flow of their workload.
        assert_eq!(out.evaluated, 3);
        assert_eq!(out.unattributed_events, 4);
        assert_eq!(
            out.workloads
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["db/Pod/pg-0", "shop/Deployment/web", "shop/Pod/worker"]
        );
        assert_eq!(out.changes.len(), 1, "{:?}", out.changes);
        let c0 = &out.changes[0];
        assert_eq!(c0.source.to_string(), "shop/Deployment/web");
        assert_eq!(c0.pod, "web-1");
        assert_eq!((c0.from, c0.to), (Verdict::Allow, Verdict::Deny));
        assert!(c0.is_break());
        assert_eq!(c0.evidence.count, 5);
        assert_eq!(c0.evidence.first_seen, t("2026-10-30T00:00:00Z"));
        assert_eq!(c0.evidence.last_seen, t("2026-11-02T00:00:00Z"));
        assert_eq!(
            c0.evidence.names.iter().collect::<Vec<_>>(),
            ["a.example.com", "b.example.com"]
        );

        // The other way round the same flow is newly allowed, not a break.
        let back = changes(
            &c,
            &obs,
            &policies(ONLY_HTTPS),
            &PolicySet::default(),
            &BTreeSet::new(),
        );
        assert_eq!(back.changes.len(), 1);
        assert!(!back.changes[0].is_break());
        assert_eq!(
            (back.changes[0].from, back.changes[0].to),
            (Verdict::Deny, Verdict::Allow)
        );
    }

    /// db only accepts web on 5432.
    const DB_INGRESS: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-web, namespace: db}
spec:
  podSelector: {matchLabels: {app: pg}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
";

    /// Only worker in shop is isolated, and may reach db.
    const WORKER_TO_DB: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: worker, namespace: shop}
spec:
  podSelector: {matchLabels: {app: worker}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: db}}}]
";

    /// The skipping of flows no changed policy can reach loses nothing: for pairs of states
    /// that differ in egress, in ingress, in one workload only, or not at all, the changes
    /// equal those of evaluating every observed flow under both states.
    #[test]
    fn flows_left_unevaluated_cannot_change() {
        let c = cluster();
        let mut obs = Observations::default();
        let one = Evidence::new(1, t("2026-11-01T00:00:00Z"), t("2026-11-01T00:00:00Z"));
        for pod in ["web-1", "web-2", "worker", "pg-0"] {
            for dst in [
                "10.244.1.10",
                "10.244.1.12",
                "10.244.2.20",
                "203.0.113.9",
                "198.51.100.7",
            ] {
                for port in [443, 5432] {
                    add(&mut obs, &c, pod, dst, port, one.clone());
                }
            }
        }
        let states = [
            PolicySet::default(),
            policies(ONLY_HTTPS),
            policies(DB_INGRESS),
            policies(WORKER_TO_DB),
            policies(&format!("{ONLY_HTTPS}---{DB_INGRESS}")),
        ];
        for from in &states {
            for to in &states {
                let mut want = BTreeSet::new();
                for key in obs.flows.keys() {
                    let pod = &c.pods[key.pod];
                    let flow = Flow {
                        protocol: key.protocol,
                        dst: key.dst,
                        dst_port: key.port,
                    };
                    let (a, b) = (
                        evaluate(&c, from, pod, &flow).verdict,
                        evaluate(&c, to, pod, &flow).verdict,
                    );
                    if a != b {
                        want.insert((workload_of(&c, pod), flow, a, b));
                    }
                }
                let got: BTreeSet<_> = changes(&c, &obs, from, to, &BTreeSet::new())
                    .changes
                    .into_iter()
                    .map(|f| (f.source, f.flow, f.from, f.to))
                    .collect();
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn namespaces_filter_sources_and_stored_pods_name_the_flow() {
        let c = cluster();
        let mut obs = Observations::default();
        add(
            &mut obs,
            &c,
            "web-1",
            "198.51.100.7",
            443,
            Evidence::new(1, t("2026-11-01T00:00:00Z"), t("2026-11-01T00:00:00Z")),
        );
        let key = *obs.flows.keys().next().expect("one flow");
        // From a store: web-1 stands in for the workload; web-2 made the connections.
        obs.pods.insert(
            key,
            PodNames {
                names: BTreeSet::from(["web-2".to_owned()]),
                more: 0,
            },
        );
        let to = policies(ONLY_HTTPS);
        let all = changes(&c, &obs, &PolicySet::default(), &to, &BTreeSet::new());
        assert_eq!(all.changes.len(), 1);
        assert_eq!(all.changes[0].pod, "web-2");
        let db_only = changes(
            &c,
            &obs,
            &PolicySet::default(),
            &to,
            &BTreeSet::from(["db".to_owned()]),
        );
        assert!(db_only.changes.is_empty());
        assert_eq!(db_only.evaluated, 0);
        assert!(db_only.workloads.is_empty());
    }
}
