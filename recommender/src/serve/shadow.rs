//! Shadow enforcement: every stored flow judged against the applied policies and, with
//! `--proposed`, a proposed set, per workload, on any CNI.
//!
//! The proposed set is the given policies (`--proposed DIR|git:REV:PATH`, read with
//! [`PolicySource`]) laid over the applied ones ([`crate::policy_state::combine`]), the rule
//! `audit --policies` follows; its ClusterNetworkPolicies over the applied ones
//! ([`crate::rollout::board::proposed_tiers`]), and leash's guardrails among them make the
//! board's guardrails stage ([`crate::guardrails::stage`]). [`reload`] polls the source and publishes a new [`Proposal`]
//! when the policies it gives differ (a file changed, a new git revision); [`watch`] then
//! re-evaluates the whole store at once, and also every check interval, into a [`Board`]:
//! the guardrails stage and each workload's rollout phase ([`crate::rollout`]). `GET
//! /v1/rollout` answers the board; the metrics count its phases, the stage's phase and what the
//! proposal would deny or break.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use leash_records::Protocol;
use leash_records::error::Chain;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use super::ModelRx;
use crate::cnp::ClusterNetworkPolicy;
use crate::eval::PolicySet;
use crate::guardrails::stage::{self, Stage};
use crate::policy_source::{self, PolicySource};
use crate::rollout::board::{self as rollout_board, State};
use crate::rollout::{self, WorkloadStatus};
use crate::state::ClusterState;
use crate::store::{DnsObservation, FlowObservation, Store};

/// What `leash serve` needs for shadow enforcement.
#[derive(Debug, Clone)]
pub struct Options {
    /// The proposed policies (`--proposed`); `None` for none (no `would-deny`).
    pub proposed: Option<PolicySource>,
    /// How often the proposed source is read again (`--proposed-poll`).
    pub poll: Duration,
    /// A workload observed for less than this is `observing` (`--min-observation`).
    pub min_observation: chrono::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            proposed: None,
            poll: Duration::from_secs(10),
            min_observation: chrono::Duration::hours(24),
        }
    }
}

/// A proposal as loaded: the given policies, before they are laid over the applied ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// Where it was read.
    pub source: PolicySource,
    /// The NetworkPolicies it gives, validated.
    pub policies: Vec<NetworkPolicy>,
    /// The ClusterNetworkPolicies it gives, validated (leash's guardrails among them are the
    /// guardrails stage's proposal).
    pub cluster_policies: Vec<ClusterNetworkPolicy>,
    /// 1 for the first load, +1 per reload that changed the policies.
    pub generation: u64,
}

/// The current proposal, `None` without `--proposed`.
pub type ProposalRx = watch::Receiver<Option<Arc<Proposal>>>;

/// Every workload's rollout phase, as of one evaluation of the store.
#[derive(Debug, Clone)]
pub struct Board {
    /// One per workload, sorted by namespace, kind and name.
    pub statuses: Vec<WorkloadStatus>,
    /// The guardrails stage, the first of the rollout.
    pub stage: Stage,
    /// The cluster model it was evaluated on.
    pub model_generation: u64,
    /// The proposal it was evaluated with, if any.
    pub proposal_generation: Option<u64>,
    /// Stored flow observations evaluated.
    pub flows: usize,
    /// When.
    pub evaluated_at: DateTime<Utc>,
}

/// The latest board, `None` until the first evaluation.
pub type BoardRx = watch::Receiver<Option<Arc<Board>>>;

/// A board receiver that never gets a board, for a router without [`watch`] (tests): the
/// rollout endpoints answer `503`.
pub fn no_board() -> BoardRx {
    watch::channel(None).1
}

/// Errors of shadow evaluation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The proposed policies cannot be read or are invalid.
    #[error(transparent)]
    Source(#[from] policy_source::Error),
    /// The proposed policies laid over the applied ones do not compile as a set.
    #[error("the proposed policies laid over the applied ones")]
    Combine(#[source] rollout_board::Error),
}

/// Reads the proposal once (at start: a bad one stops `leash serve`).
pub fn load(source: &PolicySource) -> Result<Proposal, Error> {
    let (policies, cluster_policies) = source.load_tiers()?.unwrap_or_default();
    Ok(Proposal {
        source: source.clone(),
        policies,
        cluster_policies,
        generation: 1,
    })
}

/// The applied policies of `state`.
fn applied(state: &ClusterState) -> State<'_> {
    State {
        network_policies: &state.policies,
        cluster_policies: &state.cluster_policies,
    }
}

/// The policies `proposal` gives.
fn policies_of(proposal: &Proposal) -> State<'_> {
    State {
        network_policies: &proposal.policies,
        cluster_policies: &proposal.cluster_policies,
    }
}

/// The proposed policy state of `state`: `given` laid over its applied policies, compiled,
/// with its ClusterNetworkPolicies over the applied ones as the tiers
/// ([`rollout_board::proposed_set`]).
pub fn proposed_set(state: &ClusterState, given: &State<'_>) -> Result<PolicySet, Error> {
    rollout_board::proposed_set(&applied(state), given).map_err(Error::Combine)
}

/// Evaluates every stored flow against the applied policies and `proposed` (the compiled
/// proposed state, [`proposed_set`]), and returns each workload's phase and the guardrails
/// stage of `given` (the proposal's policies). Pure.
pub fn evaluate(
    state: &ClusterState,
    proposed: Option<(&PolicySet, &State<'_>)>,
    flows: &[FlowObservation],
    dns: &[DnsObservation],
    min_observation: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<(Vec<WorkloadStatus>, Stage), stage::Error> {
    let (obs, _skipped) = crate::observations::from_stored(&state.cluster, flows, dns);
    let statuses = rollout::phases(
        &state.cluster,
        &obs,
        &rollout::Policies {
            applied: &state.policies,
            applied_set: &state.policy_set,
            proposed: proposed.map(|(set, _)| set),
        },
        &rollout::Options {
            min_observation,
            now,
            namespaces: Default::default(),
        },
    );
    let proposed_guardrails =
        proposed.and_then(|(_, g)| rollout_board::given_guardrails(g.cluster_policies));
    let stage = stage::stage(
        &state.cluster,
        &obs,
        &stage::Input {
            network_policies: &state.policies,
            cluster_policies: &state.cluster_policies,
            proposed: proposed_guardrails.as_deref(),
        },
    )?;
    Ok((statuses, stage))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PhaseLabels {
    phase: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StageLabels {
    phase: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WorkloadLabels {
    namespace: String,
    workload: String,
}

/// The metrics of shadow enforcement.
#[derive(Debug, Clone, Default)]
pub struct ShadowMetrics {
    workloads: Family<PhaseLabels, Gauge>,
    stage: Family<StageLabels, Gauge>,
    breaks: Gauge,
    denied: Family<WorkloadLabels, Counter>,
    reloads: Counter,
    reload_errors: Counter,
}

impl ShadowMetrics {
    /// Registers under `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rollout_workloads",
            "Workloads per rollout phase, as of the latest evaluation of the store",
            self.workloads.clone(),
        );
        registry.register(
            "guardrails_stage",
            "The guardrails stage's phase: 1 for the current one, 0 for the others",
            self.stage.clone(),
        );
        registry.register(
            "guardrails_breaks",
            "Workloads whose observed traffic the proposed guardrails would break",
            self.breaks.clone(),
        );
        registry.register(
            "shadow_denied",
            "Events of stored flows the proposed policies deny: a flow's events when it is \
             first found denied, then its new ones",
            self.denied.clone(),
        );
        registry.register(
            "proposed_reloads",
            "Reloads of the proposed policies that changed them",
            self.reloads.clone(),
        );
        registry.register(
            "proposed_reload_errors",
            "Reads of the proposed policies that failed (the previous ones stay)",
            self.reload_errors.clone(),
        );
    }
}

/// Per (namespace, workload, destination, port, protocol): events already counted.
type Counted = HashMap<(String, String, IpAddr, u16, Protocol), u64>;

impl ShadowMetrics {
    /// Sets the phase gauges from `board` and counts the new events it shows denied.
    fn observe(&self, board: &Board, counted: &mut Counted) {
        for (phase, n) in rollout::counts(&board.statuses) {
            self.workloads
                .get_or_create(&PhaseLabels {
                    phase: phase.to_string(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        for phase in stage::Phase::ALL {
            self.stage
                .get_or_create(&StageLabels {
                    phase: phase.to_string(),
                })
                .set(i64::from(phase == board.stage.phase));
        }
        self.breaks
            .set(i64::try_from(board.stage.breaks.len()).unwrap_or(i64::MAX));
        for s in &board.statuses {
            for f in &s.would_deny {
                let key = (
                    s.namespace.clone(),
                    s.workload.clone(),
                    f.dst,
                    f.dst_port,
                    f.protocol,
                );
                let before = counted.get(&key).copied().unwrap_or(0);
                if f.events > before {
                    self.denied
                        .get_or_create(&WorkloadLabels {
                            namespace: s.namespace.clone(),
                            workload: s.workload.clone(),
                        })
                        .inc_by(f.events - before);
                    counted.insert(key, f.events);
                }
            }
        }
    }
}

/// Reads the proposal again every `poll` and publishes it when its policies changed. A read
/// that fails keeps the previous proposal (logged, counted). Runs until the task is dropped.
pub async fn reload(
    source: PolicySource,
    poll: Duration,
    tx: watch::Sender<Option<Arc<Proposal>>>,
    metrics: ShadowMetrics,
) {
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: the proposal was just loaded.
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let s = source.clone();
        let loaded = match tokio::task::spawn_blocking(move || s.load_tiers()).await {
            Ok(Ok(p)) => p.unwrap_or_default(),
            Ok(Err(e)) => {
                metrics.reload_errors.inc();
                tracing::warn!(error = %Chain(&e), "cannot reload the proposed policies; keeping the previous ones");
                continue;
            }
            Err(e) => {
                metrics.reload_errors.inc();
                tracing::warn!(error = %Chain(&e), "proposed policies reload task failed");
                continue;
            }
        };
        let current = tx.borrow().clone();
        if current
            .as_ref()
            .is_some_and(|c| (&c.policies, &c.cluster_policies) == (&loaded.0, &loaded.1))
        {
            continue;
        }
        let generation = current.map_or(1, |c| c.generation + 1);
        let (policies, cluster_policies) = loaded;
        tracing::info!(source = %source, policies = policies.len(), cluster_policies = cluster_policies.len(), generation, "proposed policies changed: re-evaluating the stored flows");
        metrics.reloads.inc();
        tx.send_replace(Some(Arc::new(Proposal {
            source: source.clone(),
            policies,
            cluster_policies,
            generation,
        })));
    }
}

/// Evaluates the whole store into a [`Board`] at once, then every `interval` and whenever
/// the proposal changes; publishes it on `board` and in the metrics. Runs until the task is
/// dropped.
pub async fn watch(
    store: Arc<dyn Store>,
    mut model: ModelRx,
    mut proposal: ProposalRx,
    interval: Duration,
    min_observation: chrono::Duration,
    metrics: ShadowMetrics,
    board: watch::Sender<Option<Arc<Board>>>,
) {
    if model.wait_for(Option::is_some).await.is_err() {
        return;
    }
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counted = Counted::new();
    // The compiled proposed state, for one (model, proposal) pair.
    let mut compiled: Option<((u64, u64), Arc<PolicySet>)> = None;
    let mut proposal_open = true;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = proposal.changed(), if proposal_open => {
                // Without `--proposed` the sender is gone: only the ticker wakes the loop.
                proposal_open = changed.is_ok();
            }
        }
        let Some(state) = model.borrow().clone() else {
            continue;
        };
        let given = proposal.borrow_and_update().clone();
        let proposed = match &given {
            None => None,
            Some(p) => {
                let key = (state.generation, p.generation);
                match &compiled {
                    Some((k, set)) if *k == key => Some(Arc::clone(set)),
                    _ => match proposed_set(&state, &policies_of(p)) {
                        Ok(set) => {
                            let set = Arc::new(set);
                            compiled = Some((key, Arc::clone(&set)));
                            Some(set)
                        }
                        Err(e) => {
                            tracing::warn!(error = %Chain(&e), "cannot evaluate the proposed policies");
                            continue;
                        }
                    },
                }
            }
        };
        let reader = Arc::clone(&store);
        let proposal_generation = given.as_ref().map(|p| p.generation);
        let task = on_low_priority_thread(move || {
            let flows = reader.flows(None)?;
            let dns = reader.dns(None)?;
            let now = Utc::now();
            let proposal = given.as_deref().map(policies_of);
            let (statuses, stage) = evaluate(
                &state,
                proposed.as_deref().zip(proposal.as_ref()),
                &flows,
                &dns,
                min_observation,
                now,
            )?;
            Ok::<_, BoardError>(Board {
                statuses,
                stage,
                model_generation: state.generation,
                proposal_generation,
                flows: flows.len(),
                evaluated_at: now,
            })
        });
        let answer = match task {
            Ok(rx) => rx.await,
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "cannot start the rollout board thread");
                continue;
            }
        };
        match answer {
            Ok(Ok(b)) => {
                metrics.observe(&b, &mut counted);
                tracing::debug!(
                    flows = b.flows,
                    workloads = b.statuses.len(),
                    "rollout board evaluated"
                );
                board.send_replace(Some(Arc::new(b)));
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %Chain(&e), "cannot evaluate the rollout board")
            }
            Err(_) => tracing::warn!("the rollout board thread stopped without an answer"),
        }
    }
}

/// Why one evaluation of the board failed (the previous board stays).
#[derive(Debug, thiserror::Error)]
enum BoardError {
    /// The stored flows cannot be read.
    #[error("cannot read the stored flows")]
    Store(#[from] crate::store::Error),
    /// The guardrails stage cannot be evaluated.
    #[error("the guardrails stage")]
    Stage(#[from] stage::Error),
}

/// Runs `f` on a thread of its own at the read API's lower CPU priority: evaluating the whole
/// store is CPU-bound, and when it competes with ingest, acknowledgements must win (not on
/// tokio's blocking pool, whose threads ingest uses too).
fn on_low_priority_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<tokio::sync::oneshot::Receiver<T>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("leash-rollout".into())
        .spawn(move || {
            super::http::lower_priority();
            let _ = tx.send(f());
        })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{DeniedFlow, Phase};

    fn status(workload: &str, phase: Phase, events: &[u64]) -> WorkloadStatus {
        WorkloadStatus {
            namespace: "shop".into(),
            workload: workload.into(),
            phase,
            observed_for_seconds: 0,
            would_deny: events
                .iter()
                .enumerate()
                .map(|(i, &events)| DeniedFlow {
                    dst: IpAddr::from([203, 0, 113, u8::try_from(i).unwrap_or(0)]),
                    dst_port: 443,
                    protocol: Protocol::Tcp,
                    events,
                    last_seen: DateTime::UNIX_EPOCH,
                    names: Vec::new(),
                })
                .collect(),
            denied: Vec::new(),
            policies: Vec::new(),
            id: 0,
            min_observation: chrono::Duration::hours(24),
        }
    }

    fn board(statuses: Vec<WorkloadStatus>) -> Board {
        Board {
            statuses,
            stage: Stage {
                phase: stage::Phase::WouldBreak,
                applied: Vec::new(),
                proposed: vec!["guardrails-default-deny".into()],
                breaks: vec![stage::WorkloadFlows {
                    namespace: "shop".into(),
                    workload: "Deployment/api".into(),
                    flows: Vec::new(),
                }],
                denied: Vec::new(),
            },
            model_generation: 1,
            proposal_generation: Some(1),
            flows: 0,
            evaluated_at: DateTime::UNIX_EPOCH,
        }
    }

    fn exposed(metrics: &ShadowMetrics) -> String {
        let mut registry = Registry::with_prefix("leash");
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap_or_default();
        text
    }

    /// The proposed state keeps the applied ClusterNetworkPolicies as its tiers.
    #[test]
    fn the_proposed_set_keeps_the_applied_cluster_network_policies() {
        let text = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: guard}\nspec: {tier: Admin, priority: 1, subject: {namespaces: {}}}\n";
        let snap =
            leash_records::snapshot::parse_str(text, std::path::Path::new("s.yaml")).unwrap();
        let state = ClusterState::build(&snap, 1);
        let set = proposed_set(&state, &State::default()).unwrap();
        let names: Vec<&str> = set
            .cluster_policies()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["guard"]);
    }

    /// The counter counts a denied flow's events once, then only its new events; the gauges
    /// follow the latest board, every phase listed.
    #[test]
    fn denied_events_are_counted_once_and_phases_follow_the_board() {
        let metrics = ShadowMetrics::default();
        let mut counted = Counted::new();
        metrics.observe(
            &board(vec![status("Deployment/api", Phase::WouldDeny, &[3, 2])]),
            &mut counted,
        );
        let text = exposed(&metrics);
        assert!(
            text.contains(
                "leash_shadow_denied_total{namespace=\"shop\",workload=\"Deployment/api\"} 5\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("leash_rollout_workloads{phase=\"would-deny\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("leash_rollout_workloads{phase=\"ready\"} 0\n"),
            "{text}"
        );
        // The guardrails stage: its phase 1, every other listed with 0; one workload broken.
        for line in [
            "leash_guardrails_stage{phase=\"would-break\"} 1\n",
            "leash_guardrails_stage{phase=\"ready\"} 0\n",
            "leash_guardrails_stage{phase=\"absent\"} 0\n",
            "leash_guardrails_breaks 1\n",
        ] {
            assert!(text.contains(line), "{line:?} not in {text}");
        }
        // The same board again adds nothing; one flow's count grew by 4.
        metrics.observe(
            &board(vec![status("Deployment/api", Phase::WouldDeny, &[3, 2])]),
            &mut counted,
        );
        metrics.observe(
            &board(vec![status("Deployment/api", Phase::WouldDeny, &[7, 2])]),
            &mut counted,
        );
        let text = exposed(&metrics);
        assert!(
            text.contains(
                "leash_shadow_denied_total{namespace=\"shop\",workload=\"Deployment/api\"} 9\n"
            ),
            "{text}"
        );
        // Allowed again: the counter stays, the gauges move.
        metrics.observe(
            &board(vec![status("Deployment/api", Phase::Ready, &[])]),
            &mut counted,
        );
        let text = exposed(&metrics);
        assert!(
            text.contains(
                "leash_shadow_denied_total{namespace=\"shop\",workload=\"Deployment/api\"} 9\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("leash_rollout_workloads{phase=\"would-deny\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("leash_rollout_workloads{phase=\"ready\"} 1\n"),
            "{text}"
        );
    }
}
