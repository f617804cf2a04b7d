//! Drift as DNS answers are ingested: each stored batch's answers are checked
//! ([`crate::drift::Tracker`]) against the applied policies of the current model, and a drift
//! is an alert ([`Alert`] of kind [`AlertKind::DnsDrift`]) before any connection to the new
//! address: the metric `leash_dns_drift_total`, the sinks (the Event `EgressDrift`, the
//! webhook), the store's alert memory (so a restart does not send it again, and `/v1/alerts`
//! lists it), the pull-request loop's feed (a drift triggers a run at once), and the proposed
//! fix: the egress rule `leash recommend` would write for the new address on the drift's port.
//!
//! Ingest hands over each stored batch without waiting ([`crate::ingest::Committed`], a
//! bounded channel); this task keeps, per workload, its names' addresses and the ports it
//! used, loading a workload's stored history (answers and flows) from the store the first time
//! one of its answers comes, and learning the ports of later batches' flows.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use leash_records::error::Chain;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use rustc_hash::FxHashMap as HashMap;
use tokio::sync::{mpsc, watch};

use super::ModelRx;
use super::alert::{Alert, AlertKey, AlertKind, AlertSink, memory_of, proposed_fix};
use crate::cluster::{Cluster, PodId};
use crate::drift::{Drift, Tracker};
use crate::ingest::Committed;
use crate::recommend;
use crate::store::{
    AlertRecord, DnsObservation, FlowObservation, KIND_POD, Scope, Store, Subject, WorkloadRef,
};

/// Stored batches waiting for the drift check; more are not checked (ingest never waits).
pub const QUEUE: usize = 256;

/// At most this many stored observations of one workload are read as its history.
const MAX_HISTORY: usize = 100_000;

/// The drift check's metric: `leash_dns_drift_total`.
#[derive(Debug, Clone, Default)]
pub struct DriftMetrics {
    drift: Counter,
}

impl DriftMetrics {
    /// Registers under `registry` (at 0 until the first drift).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "dns_drift",
            "DNS answers that moved a name to an address the applied policies deny on the ports they allow for its other addresses (one per workload, name, address and port)",
            self.drift.clone(),
        );
    }
}

/// Where drift alerts go, and what they carry.
pub struct Outputs {
    /// The sinks (Events, webhook).
    pub sinks: Vec<Arc<dyn AlertSink>>,
    /// Open pull requests by namespace.
    pub pull_requests: watch::Receiver<BTreeMap<String, String>>,
    /// The pull-request loop's feed, when it runs.
    pub recurrences: Option<mpsc::Sender<Alert>>,
    /// The recommender's knobs, for the proposed fix.
    pub recommend: recommend::Options,
}

/// The pods standing in for workloads in one model: the first running pod by name, else
/// the first (as stored observations are attached, see `observations::from_stored`).
struct StandIns {
    generation: u64,
    by_name: HashMap<WorkloadRef, Option<PodId>>,
}

impl StandIns {
    fn new(cluster: &Cluster, generation: u64) -> Self {
        let mut by_name = HashMap::default();
        for (id, w) in cluster.workloads.iter().enumerate() {
            let pods = cluster.workload_pods(id);
            let pod = pods
                .iter()
                .copied()
                .find(|&p| !cluster.pods[p].terminated)
                .or_else(|| pods.first().copied());
            by_name.insert(
                WorkloadRef {
                    namespace: w.namespace.clone(),
                    kind: w.kind.clone(),
                    name: w.name.clone(),
                },
                pod,
            );
        }
        StandIns {
            generation,
            by_name,
        }
    }

    fn pod(&self, cluster: &Cluster, w: &WorkloadRef) -> Option<PodId> {
        match self.by_name.get(w) {
            Some(p) => *p,
            None if w.kind == KIND_POD => cluster.pod_by_name(&w.namespace, &w.name),
            None => None,
        }
    }
}

/// The addresses of one DNS observation, with when each was seen: its address history, or
/// (rows without one) the addresses it resolved to, at its last answer.
fn addresses(d: &DnsObservation) -> Vec<(IpAddr, DateTime<Utc>)> {
    if d.addresses.is_empty() {
        let ips: BTreeSet<IpAddr> = d.resolved.iter().map(|(_, ip)| ip.to_canonical()).collect();
        ips.into_iter().map(|ip| (ip, d.last_seen)).collect()
    } else {
        d.addresses
            .iter()
            .map(|(ip, seen)| (ip.to_canonical(), seen.last_seen))
            .collect()
    }
}

/// Learns the ports of `flows` of workloads the tracker knows; the others' are read from the
/// store with their history when their first answer comes.
fn learn_flows(tracker: &mut Tracker, flows: &[FlowObservation]) {
    for f in flows {
        if tracker.knows(&f.workload) {
            tracker.learn_flow(&f.workload, f.dst, (f.protocol, f.port), &f.names);
        }
    }
}

/// Reads the stored flows and DNS answers of `workloads` (on a blocking thread).
async fn stored_history(
    store: &Arc<dyn Store>,
    workloads: Vec<WorkloadRef>,
) -> Vec<(WorkloadRef, Vec<FlowObservation>, Vec<DnsObservation>)> {
    let reader = Arc::clone(store);
    let read = tokio::task::spawn_blocking(move || {
        workloads
            .into_iter()
            .map(|w| {
                let scope = Scope {
                    since: None,
                    subject: Subject::Workload(w.clone()),
                };
                let flows = reader.flows_in(&scope, MAX_HISTORY);
                let dns = reader.dns_in(&scope, MAX_HISTORY);
                (w, flows, dns)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let Ok(read) = read else {
        tracing::warn!("reading workloads' history for the drift check failed");
        return Vec::new();
    };
    read.into_iter()
        .map(|(w, flows, dns)| {
            let flows = flows.unwrap_or_else(|e| {
                tracing::warn!(error = %Chain(&e), workload = %w, "cannot read a workload's flows for the drift check");
                Vec::new()
            });
            let dns = dns.unwrap_or_else(|e| {
                tracing::warn!(error = %Chain(&e), workload = %w, "cannot read a workload's DNS history for the drift check");
                Vec::new()
            });
            (w, flows, dns)
        })
        .collect()
}

/// The alerts of one drift: one per port, each with the fix for its port.
fn alerts_of(
    drift: &Drift,
    workload: &WorkloadRef,
    state: &crate::state::ClusterState,
    outputs: &Outputs,
    now: DateTime<Utc>,
) -> Vec<Alert> {
    let pull_request = outputs
        .pull_requests
        .borrow()
        .get(&workload.namespace)
        .cloned();
    drift
        .ports
        .iter()
        .map(|&(protocol, port)| {
            let flow = FlowObservation {
                workload: workload.clone(),
                protocol,
                dst: drift.address,
                port,
                count: 1,
                first_seen: drift.time,
                last_seen: drift.time,
                names: [drift.name.clone()].into(),
                pods: Default::default(),
                established: 0,
                failed: 0,
            };
            Alert {
                kind: AlertKind::DnsDrift,
                workload: workload.clone(),
                pod: drift.source.name.clone(),
                dst: drift.address,
                port,
                protocol,
                count: 1,
                last_seen: drift.time,
                names: vec![drift.name.clone()],
                policies: drift.policies.iter().map(ToString::to_string).collect(),
                fix: proposed_fix(state, &flow, &outputs.recommend),
                pull_request: pull_request.clone(),
                occurrences: 1,
                first_sent: now,
                last_sent: now,
            }
        })
        .collect()
}

/// Checks the DNS answers of every stored batch `batches` brings, until it closes.
pub async fn watch(
    store: Arc<dyn Store>,
    model: ModelRx,
    mut batches: mpsc::Receiver<Committed>,
    metrics: DriftMetrics,
    outputs: Outputs,
) {
    let mut remembered: HashSet<AlertKey> = match store_alerts(&store).await {
        Some(records) => memory_of(&records).into_keys().collect(),
        None => HashSet::new(),
    };
    let mut tracker = Tracker::new();
    let mut stand_ins: Option<StandIns> = None;
    while let Some(batch) = batches.recv().await {
        let Some(state) = model.borrow().clone() else {
            continue;
        };
        if stand_ins
            .as_ref()
            .is_none_or(|s| s.generation != state.generation)
        {
            tracker.policies_changed();
            stand_ins = Some(StandIns::new(&state.cluster, state.generation));
        }
        let Some(stand_ins) = stand_ins.as_ref() else {
            continue;
        };
        // Workloads seen for the first time: their stored history first (it holds this
        // batch already, as unchecked addresses).
        let new: BTreeSet<WorkloadRef> = batch
            .dns
            .iter()
            .map(|d| &d.workload)
            .filter(|w| !w.is_node() && !tracker.knows(w))
            .cloned()
            .collect();
        if !new.is_empty() {
            for (w, flows, dns) in stored_history(&store, new.into_iter().collect()).await {
                // Known from now on, even with an empty history, so it is read once.
                tracker.start(&w);
                learn_flows(&mut tracker, &flows);
                for d in &dns {
                    tracker.learn_addresses(
                        &w,
                        &d.query,
                        addresses(d).into_iter().map(|(ip, _)| ip),
                    );
                }
            }
        }
        learn_flows(&mut tracker, &batch.flows);
        let now = Utc::now();
        let mut found = Vec::new();
        for d in &batch.dns {
            if d.workload.is_node() || d.query.is_empty() {
                continue;
            }
            let Some(pod) = stand_ins.pod(&state.cluster, &d.workload) else {
                continue;
            };
            let source = &state.cluster.pods[pod];
            for (ip, time) in addresses(d) {
                let Some(drift) = tracker.answer(
                    &state.cluster,
                    &state.policy_set,
                    &d.workload,
                    source,
                    pod,
                    &d.query,
                    ip,
                    time,
                ) else {
                    continue;
                };
                for alert in alerts_of(&drift, &d.workload, &state, &outputs, now) {
                    if remembered.insert(alert.key()) {
                        found.push(alert);
                    }
                }
            }
        }
        if found.is_empty() {
            continue;
        }
        // Replicas sharing a store each check the answers they ingest: another one may have
        // remembered (and sent) the same drift since this one started. Ask the store again.
        if let Some(records) = store_alerts(&store).await {
            let shared = memory_of(&records);
            found.retain(|a| !shared.contains_key(&a.key()));
            remembered.extend(shared.into_keys());
        }
        if found.is_empty() {
            continue;
        }
        // Remembered before they are sent, as the flow check does.
        remember(&store, &found).await;
        for alert in &found {
            metrics.drift.inc();
            tracing::warn!(namespace = %alert.workload.namespace, "{}", alert.message());
            if let Some(tx) = &outputs.recurrences
                && tx.try_send(alert.clone()).is_err()
            {
                tracing::debug!(namespace = %alert.workload.namespace, "the pull-request loop's feed is full or closed; dropped a drift");
            }
            for sink in &outputs.sinks {
                sink.publish(alert).await;
            }
        }
    }
}

/// The remembered alerts; `None` (logged) when they cannot be read.
async fn store_alerts(store: &Arc<dyn Store>) -> Option<Vec<AlertRecord>> {
    let reader = Arc::clone(store);
    match tokio::task::spawn_blocking(move || reader.alerts(None)).await {
        Ok(Ok(records)) => Some(records),
        Ok(Err(e)) => {
            tracing::warn!(error = %Chain(&e), "cannot read remembered alerts; drift may be sent again");
            None
        }
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "reading remembered alerts failed; drift may be sent again");
            None
        }
    }
}

/// Writes drift alerts to the store's alert memory; failures are logged.
async fn remember(store: &Arc<dyn Store>, alerts: &[Alert]) {
    let records: Result<Vec<AlertRecord>, _> = alerts.iter().map(Alert::record).collect();
    let records = match records {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "cannot encode drift alerts to remember");
            return;
        }
    };
    let writer = Arc::clone(store);
    match tokio::task::spawn_blocking(move || writer.remember_alerts(&records)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %Chain(&e), "cannot remember drift alerts; a restart sends them again");
        }
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "remembering drift alerts failed; a restart sends them again");
        }
    }
}
