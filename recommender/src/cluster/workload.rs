//! Owners and workload selectors: which workload each pod belongs to (following controller
//! owner references), and a selector of stable labels for each workload.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::index::{Cluster, WorkloadId};
use super::inventory::{ControllerInfo, PodInfo};
use super::selector::{LabelSelector, Labels};

/// Label keys that controllers stamp per revision, per pod or per run: a selector naming them
/// breaks on the next rollout, so leash never uses them.
const UNSTABLE_KEYS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "job-name",
    "batch.kubernetes.io/job-name",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-completion-index",
];

/// Whether a label key is stable across rollouts and restarts.
pub fn is_stable_key(key: &str) -> bool {
    !UNSTABLE_KEYS.contains(&key) && !key.ends_with("-uid") && !key.ends_with("/uid")
}

/// Whether a label value looks like a Kubernetes uid (8-4-4-4-12 hex).
pub fn looks_like_uid(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The stable subset of `labels`.
pub fn stable_labels(labels: &Labels) -> Labels {
    labels
        .iter()
        .filter(|(k, v)| is_stable_key(k) && !looks_like_uid(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The same selector without any term on an unstable label key or a uid-like value.
fn without_unstable(s: &LabelSelector) -> LabelSelector {
    LabelSelector {
        match_labels: stable_labels(&s.match_labels),
        match_expressions: s
            .match_expressions
            .iter()
            .filter(|r| is_stable_key(&r.key) && r.values.iter().all(|v| !looks_like_uid(v)))
            .cloned()
            .collect(),
    }
}

/// The unit leash writes one policy for: a controller's pods, or a bare pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Workload {
    /// Namespace.
    pub namespace: String,
    /// Kind: Deployment, StatefulSet, DaemonSet, CronJob, Job, ReplicaSet, Pod, or another
    /// controller kind.
    pub kind: String,
    /// Name.
    pub name: String,
    /// A selector of stable labels matching its pods; `None` when its pods have no stable label.
    pub selector: Option<LabelSelector>,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
    }
}

type ControllerIndex<'a> = HashMap<(&'a str, &'a str, &'a str), &'a ControllerInfo>;

/// Follows the owner chain Pod → ReplicaSet → Deployment, Job → CronJob (StatefulSet and
/// DaemonSet own pods directly). Returns (namespace, kind, name, controller selector).
fn resolve_owner(
    p: &PodInfo,
    by_key: &ControllerIndex<'_>,
) -> (String, String, String, Option<LabelSelector>) {
    let ns = p.namespace.clone();
    let Some(owner) = &p.owner else {
        return (ns, "Pod".to_owned(), p.name.clone(), None);
    };
    let lookup = |kind: &str, name: &str| by_key.get(&(p.namespace.as_str(), kind, name)).copied();
    let selector_of = |c: &ControllerInfo| {
        let s = match &c.selector {
            Some(s) => without_unstable(s),
            None => LabelSelector::labels(stable_labels(&c.template_labels)),
        };
        (!s.is_empty()).then_some(s)
    };
    let mut kind = owner.kind.clone();
    let mut name = owner.name.clone();
    let mut ctrl = lookup(&kind, &name);
    // Climb one level: ReplicaSet → Deployment, Job → CronJob.
    if let Some(parent) = ctrl.and_then(|c| c.owner.clone()) {
        if matches!(
            (kind.as_str(), parent.kind.as_str()),
            ("ReplicaSet", "Deployment") | ("Job", "CronJob")
        ) {
            ctrl = lookup(&parent.kind, &parent.name);
            kind = parent.kind;
            name = parent.name;
        }
    } else if ctrl.is_none() && kind == "ReplicaSet" {
        // The ReplicaSet is not in the snapshot: `<deployment>-<pod-template-hash>` is the
        // Deployment controller's naming scheme.
        if let Some(hash) = p.labels.get("pod-template-hash")
            && let Some(dep) = name
                .strip_suffix(hash.as_str())
                .and_then(|s| s.strip_suffix('-'))
        {
            kind = "Deployment".to_owned();
            name = dep.to_owned();
        }
    }
    let selector = ctrl.and_then(selector_of);
    (ns, kind, name, selector)
}

impl Cluster {
    /// Groups the pods into workloads by their owners, and gives each workload a selector: its
    /// controller's (stable terms only), else the smallest unique set of shared stable labels.
    pub(super) fn index_workloads(&mut self, controllers: &[ControllerInfo]) {
        let by_key: HashMap<(&str, &str, &str), &ControllerInfo> = controllers
            .iter()
            .map(|o| ((o.namespace.as_str(), o.kind.as_str(), o.name.as_str()), o))
            .collect();
        // (namespace, kind, name) → (selector from the controller, if usable)
        let mut keys: Vec<(String, String, String, Option<LabelSelector>)> = Vec::new();
        for p in &self.pods {
            keys.push(resolve_owner(p, &by_key));
        }
        let mut ids: BTreeMap<(String, String, String), Option<LabelSelector>> = BTreeMap::new();
        for (ns, kind, name, sel) in &keys {
            let e = ids
                .entry((ns.clone(), kind.clone(), name.clone()))
                .or_insert(None);
            if e.is_none() {
                e.clone_from(sel);
            }
        }
        let index: HashMap<(String, String, String), WorkloadId> = ids
            .keys()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        self.workload_pods = vec![Vec::new(); ids.len()];
        self.pod_workload = keys
            .iter()
            .enumerate()
            .map(|(pod, (ns, kind, name, _))| {
                let w = index
                    .get(&(ns.clone(), kind.clone(), name.clone()))
                    .copied()
                    .unwrap_or_default();
                if let Some(list) = self.workload_pods.get_mut(w) {
                    list.push(pod);
                }
                w
            })
            .collect();
        let mut workloads = Vec::with_capacity(ids.len());
        for (w, ((namespace, kind, name), sel)) in ids.into_iter().enumerate() {
            let selector = match sel {
                Some(s) if !s.is_empty() => Some(s),
                _ => self.minimal_selector(w),
            };
            workloads.push(Workload {
                namespace,
                kind,
                name,
                selector,
            });
        }
        self.workloads = workloads;
    }

    /// The smallest set of stable labels shared by all of workload `w`'s pods that selects no
    /// other live pod in the namespace. Falls back to all shared stable labels when no subset
    /// of up to three labels is unique.
    fn minimal_selector(&self, w: WorkloadId) -> Option<LabelSelector> {
        let members = self.workload_pods.get(w)?;
        let first = *members.first()?;
        let mut common = stable_labels(&self.pods.get(first)?.labels);
        for &p in members {
            let labels = &self.pods[p].labels;
            common.retain(|k, v| labels.get(k) == Some(v));
        }
        if common.is_empty() {
            return None;
        }
        let ns = &self.pods[first].namespace;
        let others: Vec<&Labels> = self
            .pods_in_namespace(ns)
            .filter(|&p| self.pod_workload.get(p) != Some(&w) && !self.pods[p].terminated)
            .map(|p| &self.pods[p].labels)
            .collect();
        let entries: Vec<(&String, &String)> = common.iter().collect();
        let unique = |subset: &[usize]| {
            !others.iter().any(|l| {
                subset
                    .iter()
                    .all(|&i| l.get(entries[i].0) == Some(entries[i].1))
            })
        };
        let n = entries.len();
        for size in 1..=n.min(3) {
            let mut idx: Vec<usize> = (0..size).collect();
            loop {
                if unique(&idx) {
                    let labels = idx
                        .iter()
                        .map(|&i| (entries[i].0.clone(), entries[i].1.clone()))
                        .collect();
                    return Some(LabelSelector::labels(labels));
                }
                // Next combination in lexicographic order.
                let mut i = size;
                while i > 0 && idx[i - 1] == n - size + i - 1 {
                    i -= 1;
                }
                if i == 0 {
                    break;
                }
                idx[i - 1] += 1;
                for j in i..size {
                    idx[j] = idx[j - 1] + 1;
                }
            }
        }
        Some(LabelSelector::labels(common))
    }
}
