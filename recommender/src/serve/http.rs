//! The HTTP side of `leash serve`: health, metrics and a read API.
//!
//! - `GET /healthz`: the process is up and ingest can still store batches.
//! - `GET /readyz`: the store is open, the cluster model is built, ingest is listening and its
//!   store writer keeps up (no batch has waited longer than `Limits::slow_commit`).
//! - `GET /metrics`: Prometheus text.
//! - `GET /v1/workloads`: every workload with stored observations, with totals.
//! - `GET /v1/namespaces/{ns}/recommendations`: the recommended policies as a YAML stream.
//! - `GET /v1/namespaces/{ns}/workloads/{kind}/{name}/destinations`: observed destinations.
//! - `GET /v1/namespaces/{ns}/audit`: each workload's stored flows against the applied policies.
//!
//! Every answer is computed from the store and the current model, and sorted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use super::ModelRx;
use super::verdicts::judge;
use crate::cluster::ClusterState;
use crate::eval::Verdict;
use crate::ingest::IngestService;
use crate::store::{DnsObservation, FlowObservation, Store, WorkloadRef};
use crate::synth;

/// What the handlers share.
pub struct AppState {
    /// The observations.
    pub store: Arc<dyn Store>,
    /// The current cluster model.
    pub model: ModelRx,
    /// Every metric of the process.
    pub registry: Arc<Registry>,
    /// Set once the gRPC listener accepts connections.
    pub ingest_listening: AtomicBool,
    /// The ingest service: `/healthz` fails when its writer has stopped (the kubelet then
    /// restarts the process), `/readyz` while its writer is slow ([`IngestService::ready`]).
    pub ingest: IngestService,
    /// Knobs for recommendations.
    pub options: synth::Options,
}

/// The router over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/workloads", get(workloads))
        .route(
            "/v1/namespaces/{namespace}/recommendations",
            get(recommendations),
        )
        .route(
            "/v1/namespaces/{namespace}/workloads/{kind}/{name}/destinations",
            get(destinations),
        )
        .route("/v1/namespaces/{namespace}/audit", get(audit))
        .with_state(state)
}

/// An error answer: a status and a one-line message.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn unavailable(what: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, what.to_string())
}

async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    if s.ingest.writer_alive() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "ingest store writer stopped: batches can no longer be stored\n",
        )
            .into_response()
    }
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let mut missing = Vec::new();
    if s.model.borrow().is_none() {
        missing.push("cluster model not built yet".to_owned());
    }
    if !s.ingest_listening.load(Ordering::Acquire) {
        missing.push("ingest not listening yet".to_owned());
    }
    if let Err(slow) = s.ingest.ready() {
        missing.push(slow);
    }
    if missing.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", missing.join("; ")),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &s.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        )
            .into_response(),
    }
}

/// `?since=7d`: only observations last seen within this long.
#[derive(Debug, Deserialize)]
struct Window {
    since: Option<String>,
}

impl Window {
    fn cutoff(&self) -> ApiResult<Option<DateTime<Utc>>> {
        let Some(s) = &self.since else {
            return Ok(None);
        };
        let d = humantime::parse_duration(s)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("since={s:?}: {e}")))?;
        let d = chrono::Duration::from_std(d)
            .map_err(|_| ApiError(StatusCode::BAD_REQUEST, format!("since={s:?}: too long")))?;
        Ok(Some(Utc::now() - d))
    }
}

fn current_model(s: &AppState) -> ApiResult<Arc<ClusterState>> {
    s.model
        .borrow()
        .clone()
        .ok_or_else(|| unavailable("the cluster model is not built yet"))
}

/// Reads the store off the async runtime (SQLite is blocking).
async fn read_store(
    s: &Arc<AppState>,
    since: Option<DateTime<Utc>>,
    with_dns: bool,
) -> ApiResult<(Vec<FlowObservation>, Vec<DnsObservation>)> {
    let store = Arc::clone(&s.store);
    tokio::task::spawn_blocking(move || {
        let flows = store.flows(since)?;
        let dns = if with_dns {
            store.dns(since)?
        } else {
            Vec::new()
        };
        Ok::<_, crate::store::Error>((flows, dns))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(unavailable)
}

fn known_namespace(model: &ClusterState, ns: &str) -> ApiResult<()> {
    if model.cluster.namespaces.contains_key(ns) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("namespace {ns:?} is not in the cluster model"),
        ))
    }
}

/// Totals of one workload's stored flows.
#[derive(Debug, Serialize)]
struct WorkloadSummary {
    namespace: String,
    kind: String,
    name: String,
    destinations: usize,
    count: u64,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    /// Whether the workload still exists in the cluster model.
    present: bool,
}

async fn workloads(State(s): State<Arc<AppState>>, Query(w): Query<Window>) -> ApiResult<Response> {
    let model = current_model(&s)?;
    let (flows, _) = read_store(&s, w.cutoff()?, false).await?;
    let mut by: BTreeMap<&WorkloadRef, WorkloadSummary> = BTreeMap::new();
    for f in &flows {
        let e = by.entry(&f.workload).or_insert_with(|| WorkloadSummary {
            namespace: f.workload.namespace.clone(),
            kind: f.workload.kind.clone(),
            name: f.workload.name.clone(),
            destinations: 0,
            count: 0,
            first_seen: f.first_seen,
            last_seen: f.last_seen,
            present: present(&model, &f.workload),
        });
        e.destinations += 1;
        e.count = e.count.saturating_add(f.count);
        e.first_seen = e.first_seen.min(f.first_seen);
        e.last_seen = e.last_seen.max(f.last_seen);
    }
    Ok(axum::Json(by.into_values().collect::<Vec<_>>()).into_response())
}

async fn recommendations(
    State(s): State<Arc<AppState>>,
    Path(ns): Path<String>,
    Query(w): Query<Window>,
) -> ApiResult<Response> {
    let model = current_model(&s)?;
    known_namespace(&model, &ns)?;
    let (mut flows, mut dns) = read_store(&s, w.cutoff()?, true).await?;
    flows.retain(|f| f.workload.namespace == ns);
    dns.retain(|d| d.workload.namespace == ns);
    let mut opts = s.options.clone();
    opts.namespaces = BTreeSet::from([ns.clone()]);
    let text = tokio::task::spawn_blocking(move || {
        let (obs, _skipped) = crate::store::observe::observations(&model.cluster, &flows, &dns);
        let rec = synth::recommend(&model.cluster, &obs, &opts);
        crate::render::yaml_stream(&synth::all_policies(&model.cluster, &rec))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/yaml")], text).into_response())
}

/// One observed destination of a workload.
#[derive(Debug, Serialize)]
struct Destination {
    protocol: &'static str,
    dst: IpAddr,
    port: u16,
    count: u64,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    names: Vec<String>,
    established: u64,
    failed: u64,
}

impl Destination {
    fn from_record(f: &leash_records::FlowRecord) -> Self {
        Destination {
            protocol: f.protocol.as_str(),
            dst: f.dst,
            port: f.dst_port,
            count: f.count,
            first_seen: f.first_seen,
            last_seen: f.last_seen,
            names: f.names.clone(),
            established: f.outcome.map_or(0, |o| o.established),
            failed: f.outcome.map_or(0, |o| o.failed),
        }
    }
}

impl From<&FlowObservation> for Destination {
    fn from(f: &FlowObservation) -> Self {
        Destination {
            protocol: f.protocol.as_str(),
            dst: f.dst,
            port: f.port,
            count: f.count,
            first_seen: f.first_seen,
            last_seen: f.last_seen,
            names: f.names.iter().cloned().collect(),
            established: f.established,
            failed: f.failed,
        }
    }
}

async fn destinations(
    State(s): State<Arc<AppState>>,
    Path((ns, kind, name)): Path<(String, String, String)>,
    Query(w): Query<Window>,
) -> ApiResult<Response> {
    let (flows, _) = read_store(&s, w.cutoff()?, false).await?;
    let workload = WorkloadRef {
        namespace: ns,
        kind,
        name,
    };
    let list: Vec<Destination> = flows
        .iter()
        .filter(|f| f.workload == workload)
        .map(Destination::from)
        .collect();
    if list.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "no observations for {}/{}/{}",
                workload.namespace, workload.kind, workload.name
            ),
        ));
    }
    Ok(axum::Json(list).into_response())
}

/// One stored flow's verdict under the applied policies.
#[derive(Debug, Serialize)]
struct AuditedFlow {
    #[serde(flatten)]
    destination: Destination,
    verdict: Verdict,
    egress: Verdict,
    ingress: Verdict,
    policies: Vec<String>,
}

/// One workload's audit.
#[derive(Debug, Serialize)]
struct WorkloadAudit {
    kind: String,
    name: String,
    /// The pod the flows were evaluated as.
    pod: String,
    allowed: usize,
    denied: usize,
    flows: Vec<AuditedFlow>,
}

/// The audit of one namespace.
#[derive(Debug, Serialize)]
struct NamespaceAudit {
    namespace: String,
    applied_policies: usize,
    model_generation: u64,
    workloads: Vec<WorkloadAudit>,
    /// Workloads with stored flows but no current pod to evaluate them as.
    skipped: Vec<String>,
}

async fn audit(
    State(s): State<Arc<AppState>>,
    Path(ns): Path<String>,
    Query(w): Query<Window>,
) -> ApiResult<Response> {
    let model = current_model(&s)?;
    known_namespace(&model, &ns)?;
    let (mut flows, _) = read_store(&s, w.cutoff()?, false).await?;
    flows.retain(|f| f.workload.namespace == ns);
    let report = tokio::task::spawn_blocking(move || audit_namespace(&model, &ns, &flows))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(axum::Json(report).into_response())
}

/// Evaluates the namespace's stored flows and groups the verdicts by workload.
fn audit_namespace(
    state: &ClusterState,
    ns: &str,
    flows: &[FlowObservation],
) -> Result<NamespaceAudit, crate::audit::Error> {
    let (judged, skipped) = judge(state, flows)?;
    let mut workloads: BTreeMap<WorkloadRef, WorkloadAudit> = BTreeMap::new();
    for j in judged {
        let entry = workloads
            .entry(j.workload.clone())
            .or_insert_with(|| WorkloadAudit {
                kind: j.workload.kind.clone(),
                name: j.workload.name.clone(),
                pod: j.pod.clone(),
                allowed: 0,
                denied: 0,
                flows: Vec::new(),
            });
        if j.evaluation.verdict == Verdict::Allow {
            entry.allowed += 1;
        } else {
            entry.denied += 1;
        }
        entry.flows.push(AuditedFlow {
            destination: Destination::from_record(&j.flow),
            verdict: j.evaluation.verdict,
            egress: j.evaluation.egress,
            ingress: j.evaluation.ingress,
            policies: j
                .evaluation
                .policies()
                .iter()
                .map(ToString::to_string)
                .collect(),
        });
    }
    Ok(NamespaceAudit {
        namespace: ns.to_string(),
        applied_policies: state.policies.len(),
        model_generation: state.generation,
        workloads: workloads.into_values().collect(),
        skipped: skipped.iter().map(ToString::to_string).collect(),
    })
}

/// Whether a stored workload still exists in the model.
fn present(state: &ClusterState, w: &WorkloadRef) -> bool {
    let c = &state.cluster;
    // `workloads` is sorted, and its order starts with (namespace, kind, name).
    let key = (w.namespace.as_str(), w.kind.as_str(), w.name.as_str());
    c.workloads
        .binary_search_by(|x| (x.namespace.as_str(), x.kind.as_str(), x.name.as_str()).cmp(&key))
        .is_ok()
        || (w.kind == crate::store::observe::KIND_POD
            && c.pod_by_name(&w.namespace, &w.name).is_some())
}
