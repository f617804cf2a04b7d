//! Store rows → the engine's [`Observations`], so that `recommend` and `audit` run
//! unchanged on a store.

use std::collections::hash_map::Entry;

use chrono::{DateTime, Utc};
use rustc_hash::FxHashMap as HashMap;

use super::{Evidence, FlowKey, Observations, PodNames};
use crate::cluster::{Cluster, PodId, WorkloadId};
use crate::store::{DnsObservation, FlowObservation, KIND_POD, Store, WorkloadRef};

/// Reads a store's observations last seen at or after `since` and attributes them to the
/// cluster's pods ([`from_stored`]), for `recommend` and `audit`.
pub fn load(
    store: &dyn Store,
    cluster: &Cluster,
    since: Option<DateTime<Utc>>,
) -> crate::store::Result<(Observations, Vec<Skipped>)> {
    let flows = store.flows(since)?;
    let dns = store.dns(since)?;
    Ok(from_stored(cluster, &flows, &dns))
}

/// Why stored observations of a workload were left out of [`Observations`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SkipReason {
    /// The cluster model has no such workload (nor, for kind `Pod`, such a pod).
    NotInCluster,
    /// The workload exists but has no pod to attribute its traffic to.
    NoPods,
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotInCluster => "not in the cluster model (deleted or renamed?)",
            Self::NoPods => "no pods in the cluster model",
        })
    }
}

/// A workload whose stored observations could not be used.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    /// The workload as stored.
    pub workload: WorkloadRef,
    /// Why.
    pub reason: SkipReason,
    /// Flow events left out (summed counts).
    pub flow_events: u64,
    /// DNS answers left out.
    pub dns_answers: u64,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "skipped {}: {} ({} flow events, {} DNS answers)",
            self.workload, self.reason, self.flow_events, self.dns_answers
        )
    }
}

/// Resolves stored workloads to the pod their evidence is attached to.
struct Attach<'c> {
    cluster: &'c Cluster,
    by_name: HashMap<(&'c str, &'c str, &'c str), WorkloadId>,
    resolved: HashMap<WorkloadRef, Result<PodId, SkipReason>>,
}

impl<'c> Attach<'c> {
    fn new(cluster: &'c Cluster) -> Self {
        let by_name = cluster
            .workloads
            .iter()
            .enumerate()
            .map(|(i, w)| ((w.namespace.as_str(), w.kind.as_str(), w.name.as_str()), i))
            .collect();
        Self {
            cluster,
            by_name,
            resolved: HashMap::default(),
        }
    }

    /// The pod a workload's evidence goes to: its first running pod by name, else its first
    /// pod. A kind `Pod` that is no workload of its own resolves to that pod if it now exists.
    fn pod(&mut self, w: &WorkloadRef) -> Result<PodId, SkipReason> {
        if let Some(r) = self.resolved.get(w) {
            return *r;
        }
        let c = self.cluster;
        let r = match self
            .by_name
            .get(&(w.namespace.as_str(), w.kind.as_str(), w.name.as_str()))
        {
            Some(&id) => {
                // Pods are sorted by (namespace, name), and so are a workload's pod ids.
                let pods = c.workload_pods(id);
                pods.iter()
                    .copied()
                    .find(|&p| !c.pods[p].terminated)
                    .or_else(|| pods.first().copied())
                    .ok_or(SkipReason::NoPods)
            }
            None if w.kind == KIND_POD => c
                .pod_by_name(&w.namespace, &w.name)
                .ok_or(SkipReason::NotInCluster),
            None => Err(SkipReason::NotInCluster),
        };
        self.resolved.insert(w.clone(), r);
        r
    }
}

/// Builds the engine's [`Observations`] from stored observations, so that `recommend` and
/// `audit` run unchanged on a store.
///
/// A workload's evidence is attached to one of its pods (the first running one by name; the
/// engine groups by workload anyway). Kind `Node` flows are counted as unattributed; DNS
/// answers of every observation, skipped or not, still teach which names an address had and
/// which addresses are resolvers. Workloads that cannot be attributed are returned as
/// [`Skipped`], sorted. The pods stored with a flow go to [`Observations::pods`] (rows of a
/// store written before pods were stored have none: their stand-in pod is all there is).
pub fn from_stored(
    cluster: &Cluster,
    flows: &[FlowObservation],
    dns: &[DnsObservation],
) -> (Observations, Vec<Skipped>) {
    let mut obs = Observations::default();
    let mut attach = Attach::new(cluster);
    let mut skipped: HashMap<WorkloadRef, Skipped> = HashMap::default();

    for f in flows {
        obs.records += 1;
        if f.workload.is_node() {
            obs.unattributed_flows = obs.unattributed_flows.saturating_add(f.count);
            continue;
        }
        let pod = match attach.pod(&f.workload) {
            Ok(p) => p,
            Err(reason) => {
                let s = skip(&mut skipped, &f.workload, reason);
                s.flow_events = s.flow_events.saturating_add(f.count);
                continue;
            }
        };
        let ev = Evidence {
            names: f.names.clone(),
            ..Evidence::new(f.count, f.first_seen, f.last_seen)
        };
        let key = FlowKey {
            pod,
            dst: f.dst.to_canonical(),
            port: f.port,
            protocol: f.protocol,
        };
        match obs.flows.entry(key) {
            Entry::Occupied(mut e) => e.get_mut().merge(&ev),
            Entry::Vacant(e) => {
                e.insert(ev);
            }
        }
        if f.pods != PodNames::default() {
            match obs.pods.entry(key) {
                Entry::Occupied(mut e) => e.get_mut().merge(&f.pods),
                Entry::Vacant(e) => {
                    e.insert(f.pods.clone());
                }
            }
        }
    }

    for d in dns {
        obs.records += 1;
        let server = d.server.to_canonical();
        obs.resolvers.insert(server);
        for (name, ip) in &d.resolved {
            obs.names_by_ip
                .entry(ip.to_canonical())
                .or_default()
                .insert(name.clone());
        }
        if d.workload.is_node() {
            continue;
        }
        let pod = match attach.pod(&d.workload) {
            Ok(p) => p,
            Err(reason) => {
                let s = skip(&mut skipped, &d.workload, reason);
                s.dns_answers = s.dns_answers.saturating_add(d.count);
                continue;
            }
        };
        if !d.query.is_empty() && !d.addresses.is_empty() {
            let history = obs.history.entry((pod, d.query.clone())).or_default();
            for (ip, seen) in &d.addresses {
                super::merge_seen(history, ip.to_canonical(), seen);
            }
        }
        let u = obs
            .dns
            .entry((pod, server))
            .or_insert_with(|| Evidence::new(0, d.first_seen, d.last_seen));
        u.add(d.count, d.first_seen, d.last_seen);
        if !d.query.is_empty() {
            u.names.insert(d.query.clone());
        }
    }

    let mut skipped: Vec<Skipped> = skipped.into_values().collect();
    skipped.sort();
    (obs, skipped)
}

fn skip<'a>(
    skipped: &'a mut HashMap<WorkloadRef, Skipped>,
    w: &WorkloadRef,
    reason: SkipReason,
) -> &'a mut Skipped {
    skipped.entry(w.clone()).or_insert_with(|| Skipped {
        workload: w.clone(),
        reason,
        flow_events: 0,
        dns_answers: 0,
    })
}
