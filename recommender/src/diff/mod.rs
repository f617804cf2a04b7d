//! `leash diff`: what exactly changes between two policy states.
//!
//! Two answers, joined in one [`Diff`]:
//! - the exact reachability change ([`reach`]): per source workload, the destinations,
//!   protocols and port ranges that become allowed or denied, computed symbolically;
//! - the observed traffic that changes verdict ([`flows`]): each flow seen in the window,
//!   evaluated under both states; one allowed before and denied after is a break.
//!
//! Pure logic: the command (`main.rs`) loads the cluster, the two states and the
//! observations, and [`render`] writes the report as markdown, a table or JSON lines.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::Cluster;
use crate::eval::PolicySet;
use crate::observations::Observations;

pub mod flows;
pub mod reach;
pub mod render;

pub use flows::{FlowChange, ObservedFlows, WorkloadKey};
pub use reach::{Change, ReachChange, Source, Target};
pub use render::Format;

/// What to compare.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Only sources in these namespaces; all when empty.
    pub namespaces: BTreeSet<String>,
}

/// The changes from one policy state to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diff {
    /// The `from` state, as the user named it (for the report's title).
    pub from: String,
    /// The `to` state, as the user named it.
    pub to: String,
    /// The reachability changes of sources in the namespaces asked for, sorted.
    pub reachability: Vec<ReachChange>,
    /// The observed flows that change verdict; `None` when no traffic was given.
    pub observed: Option<ObservedFlows>,
    /// Every source workload compared (the cluster's, in the namespaces asked for), with the
    /// changes of each: indices into [`Self::reachability`] and the observed changes.
    pub workloads: BTreeMap<WorkloadKey, WorkloadChanges>,
}

/// The changes of one source workload, as indices into its [`Diff`]'s lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadChanges {
    /// Indices into [`Diff::reachability`], in order.
    pub reachability: Vec<usize>,
    /// Indices into the [`ObservedFlows::changes`] of [`Diff::observed`], in order.
    pub flows: Vec<usize>,
}

impl WorkloadChanges {
    /// Whether nothing changes for the workload.
    pub fn is_empty(&self) -> bool {
        self.reachability.is_empty() && self.flows.is_empty()
    }
}

/// The counts of one namespace, for its summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespaceSummary {
    /// Observed flows allowed before and denied after.
    pub breaks: usize,
    /// Observed flows denied before and allowed after.
    pub flows_allowed: usize,
    /// Reachability changes that allow.
    pub newly_allowed: usize,
    /// Reachability changes that deny.
    pub newly_denied: usize,
    /// Workloads with a change.
    pub changed: usize,
    /// Workloads without one.
    pub unchanged: usize,
}

/// Compares the policy states `from` and `to` (named `from_name` and `to_name` in the
/// report) on `cluster`, and on the observed traffic when given.
pub fn diff(
    cluster: &Cluster,
    (from_name, from): (&str, &PolicySet),
    (to_name, to): (&str, &PolicySet),
    observations: Option<&Observations>,
    opts: &Options,
) -> Diff {
    let wanted = |ns: &str| opts.namespaces.is_empty() || opts.namespaces.contains(ns);
    let reachability: Vec<ReachChange> = reach::reachability_of(cluster, from, to, wanted);
    let observed = observations.map(|o| flows::changes(cluster, o, from, to, &opts.namespaces));

    let mut workloads: BTreeMap<WorkloadKey, WorkloadChanges> = cluster
        .workloads
        .iter()
        .filter(|w| wanted(&w.namespace))
        .map(|w| {
            let key = WorkloadKey {
                namespace: w.namespace.clone(),
                workload: crate::json::workload(&w.kind, &w.name),
            };
            (key, WorkloadChanges::default())
        })
        .collect();
    for (i, c) in reachability.iter().enumerate() {
        workloads
            .entry(source_workload(cluster, &c.source))
            .or_default()
            .reachability
            .push(i);
    }
    if let Some(o) = &observed {
        for (i, c) in o.changes.iter().enumerate() {
            workloads.entry(c.source.clone()).or_default().flows.push(i);
        }
    }
    Diff {
        from: from_name.to_owned(),
        to: to_name.to_owned(),
        reachability,
        observed,
        workloads,
    }
}

/// The workload a source belongs to: itself, or a named pod's workload.
fn source_workload(cluster: &Cluster, s: &Source) -> WorkloadKey {
    match s {
        Source::Workload {
            namespace,
            workload,
        } => WorkloadKey {
            namespace: namespace.clone(),
            workload: workload.clone(),
        },
        Source::Pod { namespace, pod } => cluster
            .pod_by_name(namespace, pod)
            .and_then(|id| cluster.pods.get(id))
            .map_or_else(
                || WorkloadKey {
                    namespace: namespace.clone(),
                    workload: crate::json::bare_pod(pod),
                },
                |p| flows::workload_of(cluster, p),
            ),
    }
}

impl Diff {
    /// The observed flows that change verdict (none when no traffic was given).
    pub fn flow_changes(&self) -> &[FlowChange] {
        self.observed.as_ref().map_or(&[], |o| &o.changes)
    }

    /// The observed flows allowed under `from` and denied under `to`.
    pub fn breaks(&self) -> impl Iterator<Item = &FlowChange> {
        self.flow_changes().iter().filter(|c| c.is_break())
    }

    /// The summary line of each namespace compared, by name.
    pub fn summaries(&self) -> BTreeMap<&str, NamespaceSummary> {
        let mut out: BTreeMap<&str, NamespaceSummary> = BTreeMap::new();
        for (w, changes) in &self.workloads {
            let s = out.entry(w.namespace.as_str()).or_default();
            if changes.is_empty() {
                s.unchanged += 1;
            } else {
                s.changed += 1;
            }
            for &i in &changes.reachability {
                match self.reachability.get(i).map(|c| c.change) {
                    Some(Change::NewlyAllowed) => s.newly_allowed += 1,
                    Some(Change::NewlyDenied) => s.newly_denied += 1,
                    None => {}
                }
            }
            for &i in &changes.flows {
                match self.flow_changes().get(i).map(FlowChange::is_break) {
                    Some(true) => s.breaks += 1,
                    Some(false) => s.flows_allowed += 1,
                    None => {}
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use leash_records::Protocol;

    use super::flows::tests::{cluster, policies};
    use super::*;
    use crate::observations::{Evidence, FlowKey};

    fn deny_shop_egress() -> PolicySet {
        policies(
            r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: shop}
spec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Egress]}
",
        )
    }

    fn observations(c: &Cluster) -> Observations {
        let t = DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let mut obs = Observations::default();
        for (pod, ns) in [("web-1", "shop"), ("pg-0", "db")] {
            let key = FlowKey {
                pod: c.pod_by_name(ns, pod).expect("pod"),
                dst: "198.51.100.7".parse().expect("ip"),
                port: 443,
                protocol: Protocol::Tcp,
            };
            obs.flows.insert(key, Evidence::new(1, t, t));
        }
        obs
    }

    #[test]
    fn every_workload_is_compared_and_summed_per_namespace() {
        let c = cluster();
        let obs = observations(&c);
        let d = diff(
            &c,
            ("applied", &PolicySet::default()),
            ("proposal", &deny_shop_egress()),
            Some(&obs),
            &Options::default(),
        );
        assert_eq!(d.breaks().count(), 1);
        let changed: Vec<String> = d
            .workloads
            .iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(w, _)| w.to_string())
            .collect();
        assert_eq!(changed, ["shop/Deployment/web"]);
        assert_eq!(d.workloads.len(), 3);
        // Only web's egress changes, and only towards denial.
        assert!(
            d.reachability
                .iter()
                .all(
                    |r| source_workload(&c, &r.source).to_string() == "shop/Deployment/web"
                        && r.change == Change::NewlyDenied
                ),
            "{:?}",
            d.reachability
        );
        let s = d.summaries();
        assert_eq!(
            s.get("shop").copied(),
            Some(NamespaceSummary {
                breaks: 1,
                newly_denied: d.reachability.len(),
                changed: 1,
                unchanged: 1,
                ..NamespaceSummary::default()
            })
        );
        assert_eq!(
            s.get("db").copied(),
            Some(NamespaceSummary {
                unchanged: 1,
                ..NamespaceSummary::default()
            })
        );
    }

    #[test]
    fn namespaces_limit_the_workloads_compared() {
        let c = cluster();
        let obs = observations(&c);
        let d = diff(
            &c,
            ("applied", &PolicySet::default()),
            ("proposal", &deny_shop_egress()),
            Some(&obs),
            &Options {
                namespaces: BTreeSet::from(["db".to_owned()]),
            },
        );
        assert_eq!(d.breaks().count(), 0);
        assert_eq!(
            d.workloads
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["db/Pod/pg-0"]
        );
        // Without traffic there is nothing observed, and no break.
        let none = diff(
            &c,
            ("a", &PolicySet::default()),
            ("b", &deny_shop_egress()),
            None,
            &Options::default(),
        );
        assert!(none.observed.is_none());
        assert_eq!(none.flow_changes().len(), 0);
    }

    /// A pod source belongs to its workload; a pod the cluster does not know is its own.
    #[test]
    fn pod_sources_count_for_their_workload() {
        let c = cluster();
        let pod = |ns: &str, pod: &str| Source::Pod {
            namespace: ns.into(),
            pod: pod.into(),
        };
        assert_eq!(
            source_workload(&c, &pod("shop", "web-1")).to_string(),
            "shop/Deployment/web"
        );
        assert_eq!(
            source_workload(&c, &pod("shop", "gone")).to_string(),
            "shop/Pod/gone"
        );
        let w = Source::Workload {
            namespace: "db".into(),
            workload: "Pod/pg-0".into(),
        };
        assert_eq!(source_workload(&c, &w).to_string(), "db/Pod/pg-0");
    }
}
