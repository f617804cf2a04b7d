//! The HTTP side of `leash serve`: health and metrics on `--http` ([`router`]), and the read
//! API that the UI listener serves ([`api_router_with`], mounted by [`super::ui_http`]).
//!
//! - `GET /healthz`: the process is up and ingest's writer runs (`200`); while the store's
//!   commits fail (a full disk, a read-only file system) still `200`, saying why.
//! - `GET /readyz`: the store is open, the cluster model is built, ingest is listening and its
//!   store writer keeps up (no batch has waited longer than `Limits::slow_commit`).
//! - `GET /metrics`: Prometheus text.
//! - `GET /v1/workloads`: workloads with stored observations, with totals, a page at a time.
//! - `GET /v1/namespaces/{ns}/recommendations`: the recommended policies as a YAML stream.
//! - `GET /v1/namespaces/{ns}/workloads/{kind}/{name}/destinations`: observed destinations.
//! - `GET /v1/namespaces/{ns}/audit`: each workload's stored flows against the applied policies.
//! - `GET /v1/rollout`, `GET /v1/namespaces/{ns}/rollout`: the guardrails stage and each
//!   workload's rollout phase, `{"guardrails":…,"workloads":[…]}`, from the latest board of
//!   [`super::shadow`] (the whole store against the applied and the proposed policies).
//! - `GET /v1/alerts[?namespace=NS]`: the alerts remembered in the store ([`super::alert`]), as
//!   the webhook sends them.
//! - `GET /v1/map…`: the egress map ([`super::map_api`]).
//!
//! Every answer is computed from the store and the current model, and sorted. Every `/v1`
//! handler takes the request's [`Access`] (decided by [`super::auth::gate`]) and shows only
//! its namespaces: a path naming another is `403`, a cluster-wide answer is filtered.
//!
//! The `/v1` API must not slow ingest down nor grow memory without bound ([`ReadLimits`]):
//! it reads on the store's read connections, which never wait for the commit writer; each
//! request reads only the namespace or workload it names; at most `concurrent` requests
//! are answered at once, and the others wait briefly, then get `503` with `Retry-After`;
//! answers are paged (`/v1/workloads`) or computed from at most `max_observations`
//! observations (`422` beyond). Health and metrics are outside the limit.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRef, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use leash_records::error::Chain;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::ModelRx;
use super::auth::{Access, Forbidden};
use super::verdicts::judge;
use crate::eval::Verdict;
use crate::ingest::IngestService;
use crate::recommend;
use crate::state::ClusterState;
use crate::store::{FlowObservation, Scope, Store, Subject, WorkloadRef, WorkloadTotals};

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
    pub options: recommend::Options,
    /// The latest rollout board ([`super::shadow::watch`]).
    pub rollout: super::shadow::BoardRx,
    /// Each namespace's open pull request (`serve --pr-repo`): a remembered alert shows the
    /// current one, even when its flow stopped before the pull request was opened.
    pub pull_requests: tokio::sync::watch::Receiver<std::collections::BTreeMap<String, String>>,
    /// The latest egress map ([`super::map_api::watch`]).
    pub map: super::map_api::MapRx,
}

/// Bounds of the `/v1` read API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// At most this many `/v1` requests are answered at once.
    pub concurrent: usize,
    /// How long a request waits for one of them before it gets `503`.
    pub wait: Duration,
    /// At most this many flow (and as many DNS) observations are read for one answer.
    pub max_observations: usize,
    /// Workloads per `/v1/workloads` page unless `?limit=` says fewer.
    pub page: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            // Reads are CPU-bound: more at once than CPUs only adds memory and contention.
            concurrent: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            wait: Duration::from_secs(2),
            max_observations: 200_000,
            page: 1_000,
        }
    }
}

/// The `Retry-After` of a `503` for a busy read API, in seconds.
const RETRY_AFTER_SECS: u64 = 1;

/// The router's state: the shared state, and the read API's slots.
#[derive(Clone)]
pub(super) struct Shared {
    app: Arc<AppState>,
    limits: ReadLimits,
    slots: Arc<Semaphore>,
}

impl FromRef<Shared> for Arc<AppState> {
    fn from_ref(s: &Shared) -> Self {
        Arc::clone(&s.app)
    }
}

/// The `--http` router over `state`: `/healthz`, `/readyz` and `/metrics`, for the kubelet
/// and Prometheus. The read API is not here: it is on the UI listener, behind its gate.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The `/v1` read API over `state`, bounded by `limits`. Its handlers need an [`Access`] in
/// each request's extensions: serve it through [`super::ui_http::ui_router`], whose gate puts
/// it there (without one, a handler answers `403`).
pub fn api_router_with(state: Arc<AppState>, limits: ReadLimits) -> Router {
    let shared = Shared {
        app: state,
        limits,
        slots: Arc::new(Semaphore::new(limits.concurrent.max(1))),
    };
    Router::new()
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
        .route("/v1/rollout", get(rollout))
        .route("/v1/alerts", get(alerts))
        .route("/v1/namespaces/{namespace}/rollout", get(namespace_rollout))
        // The egress map (`super::map_api`).
        .merge(super::map_api::routes())
        .with_state(shared)
}

/// One of the read API's concurrent slots, held until the answer is computed. Handlers move
/// it into their blocking task, so that a client that hangs up does not free the slot while
/// the work it started still runs.
pub(super) struct Slot {
    _permit: OwnedSemaphorePermit,
    limits: ReadLimits,
}

impl FromRequestParts<Shared> for Slot {
    type Rejection = Response;

    async fn from_request_parts(_parts: &mut Parts, s: &Shared) -> Result<Self, Self::Rejection> {
        match tokio::time::timeout(s.limits.wait, Arc::clone(&s.slots).acquire_owned()).await {
            Ok(Ok(permit)) => Ok(Slot {
                _permit: permit,
                limits: s.limits,
            }),
            // Timed out, or the semaphore was closed (never done): busy either way.
            Ok(Err(_)) | Err(_) => {
                let mut response = ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "busy: {} /v1 requests are being answered; retry later",
                        s.limits.concurrent.max(1)
                    ),
                )
                .into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
                Err(response)
            }
        }
    }
}

/// An error answer: a status and a one-line message.
#[derive(Debug)]
pub(super) struct ApiError(pub(super) StatusCode, pub(super) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, format!("{}\n", self.1)).into_response()
    }
}

pub(super) type ApiResult<T> = Result<T, ApiError>;

impl From<Forbidden> for ApiError {
    fn from(f: Forbidden) -> Self {
        ApiError(StatusCode::FORBIDDEN, f.to_string())
    }
}

pub(super) fn unavailable(what: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::SERVICE_UNAVAILABLE, what.to_string())
}

async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    if s.ingest.writer_alive() {
        // A failing store is said, not failed: a restart frees no disk, and the agents keep
        // their batches until a commit succeeds again (see `ingest`'s module doc).
        match s.ingest.store_fault() {
            None => (StatusCode::OK, "ok\n").into_response(),
            Some((since, why)) => (
                StatusCode::OK,
                format!(
                    "ok, degraded: store commits fail since {}: {why}; batches are answered \
                     UNAVAILABLE and agents keep them until a commit succeeds\n",
                    leash_records::time::rfc3339(since)
                ),
            )
                .into_response(),
        }
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
            format!("cannot encode metrics: {}\n", Chain(&e)),
        )
            .into_response(),
    }
}

/// `?since=7d`: only observations last seen within this long.
#[derive(Debug, Deserialize)]
pub(super) struct Window {
    pub(super) since: Option<String>,
}

impl Window {
    /// The earliest last-seen time kept; `None` for everything. A duration outside the one
    /// grammar (`leash_records::duration`) or its range is a `400`.
    pub(super) fn cutoff(&self) -> ApiResult<Option<DateTime<Utc>>> {
        let Some(s) = &self.since else {
            return Ok(None);
        };
        let d = leash_records::duration::parse(s)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("since: {}", Chain(&e))))?;
        Ok(leash_records::duration::window_start(Utc::now(), d))
    }
}

pub(super) fn current_model(s: &AppState) -> ApiResult<Arc<ClusterState>> {
    s.model
        .borrow()
        .clone()
        .ok_or_else(|| unavailable("the cluster model is not built yet"))
}

/// How much lower than ingest a read thread runs (`nice` +10: under CPU contention the
/// scheduler gives it about a tenth of the share of a normal thread).
const READ_NICE: libc::c_int = 10;

/// Runs `f` off the async runtime (SQLite and the engine are blocking), holding `slot`, on a
/// thread of its own at a lower CPU priority than ingest: when reads and ingest compete for
/// the CPU, acknowledgements win. (Not on tokio's blocking pool: ingest uses it too, and a
/// thread's priority cannot be raised back without privileges.)
pub(super) async fn blocking<T: Send + 'static>(
    slot: Slot,
    f: impl FnOnce(&ReadLimits) -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("leash-http-read".into())
        .spawn(move || {
            lower_priority();
            let out = f(&slot.limits);
            drop(slot);
            let _ = tx.send(out);
        })
        .map_err(|e| unavailable(format!("cannot start a read thread: {}", Chain(&e))))?;
    rx.await.map_err(|_| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the read thread stopped without an answer".into(),
        )
    })?
}

/// Lowers the calling thread's CPU priority by [`READ_NICE`]; failing that, it runs as is.
pub(super) fn lower_priority() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let Ok(tid) = libc::id_t::try_from(tid) else {
        return;
    };
    // SAFETY: setpriority on this thread's own id; on Linux PRIO_PROCESS with a thread id
    // changes only that thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, READ_NICE) } != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the priority of a read thread"
        );
    }
}

/// A store failure as an answer.
pub(super) fn store_error(e: crate::store::Error) -> ApiError {
    unavailable(Chain(&e))
}

/// `422` for an answer that would need more than `max` observations.
fn too_many(what: &str, max: usize) -> ApiError {
    ApiError(
        StatusCode::UNPROCESSABLE_ENTITY,
        format!(
            "{what} has more than {max} observations in the window: narrow it with ?since=, \
             or use `leash recommend --store` / `leash audit --store` on the store file"
        ),
    )
}

/// Reads the flow observations of `scope`, refusing more than `max`.
pub(super) fn scoped_flows(
    store: &dyn Store,
    scope: &Scope,
    max: usize,
    what: &str,
) -> ApiResult<Vec<FlowObservation>> {
    let flows = store
        .flows_in(scope, max.saturating_add(1))
        .map_err(store_error)?;
    if flows.len() > max {
        return Err(too_many(what, max));
    }
    Ok(flows)
}

/// The current model and the scope of a per-namespace request: the namespace must be known,
/// and the window is the request's `?since=`.
fn namespace_scope(s: &AppState, ns: &str, w: &Window) -> ApiResult<(Arc<ClusterState>, Scope)> {
    let model = current_model(s)?;
    known_namespace(&model, ns)?;
    let scope = Scope {
        since: w.cutoff()?,
        subject: Subject::Namespace(ns.to_owned()),
    };
    Ok((model, scope))
}

pub(super) fn known_namespace(model: &ClusterState, ns: &str) -> ApiResult<()> {
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
    /// `Kind/name` ([`crate::json`]).
    workload: String,
    kind: String,
    name: String,
    destinations: u64,
    count: u64,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    /// Whether the workload still exists in the cluster model.
    present: bool,
}

/// `/v1/workloads?since=&limit=&after=`: a page of workloads.
#[derive(Debug, Deserialize)]
struct Page {
    since: Option<String>,
    /// Workloads per page, at most [`ReadLimits::page`].
    limit: Option<usize>,
    /// The last workload of the previous page, `NAMESPACE/KIND/NAME`.
    after: Option<String>,
}

/// Parses a page cursor, `NAMESPACE/KIND/NAME` (the namespace is empty for node processes).
fn parse_after(s: &str) -> ApiResult<WorkloadRef> {
    let mut parts = s.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(namespace), Some(kind), Some(name)) if !kind.is_empty() && !name.is_empty() => {
            Ok(WorkloadRef {
                namespace: namespace.to_owned(),
                kind: kind.to_owned(),
                name: name.to_owned(),
            })
        }
        _ => Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("after={s:?}: expected NAMESPACE/KIND/NAME"),
        )),
    }
}

async fn workloads(
    slot: Slot,
    access: Access,
    State(s): State<Arc<AppState>>,
    Query(p): Query<Page>,
) -> ApiResult<Response> {
    let model = current_model(&s)?;
    let since = Window {
        since: p.since.clone(),
    }
    .cutoff()?;
    let limit = match p.limit {
        None => slot.limits.page,
        Some(n) if (1..=slot.limits.page).contains(&n) => n,
        Some(n) => {
            return Err(ApiError(
                StatusCode::BAD_REQUEST,
                format!("limit={n}: must be 1 to {}", slot.limits.page),
            ));
        }
    };
    let after = p.after.as_deref().map(parse_after).transpose()?;
    let store = Arc::clone(&s.store);
    let (body, next) = blocking(slot, move |_| {
        let mut page = visible_totals(store.as_ref(), &access, since, after, limit)?;
        // One more than the page was asked for: whether there is a next page.
        let next = if page.len() > limit {
            page.truncate(limit);
            page.last().map(|last| next_page(last, &p, limit))
        } else {
            None
        };
        let summaries: Vec<WorkloadSummary> = page
            .into_iter()
            .map(|t| WorkloadSummary {
                present: present(&model, &t.workload),
                workload: crate::json::workload(&t.workload.kind, &t.workload.name),
                namespace: t.workload.namespace,
                kind: t.workload.kind,
                name: t.workload.name,
                destinations: t.destinations,
                count: t.count,
                first_seen: t.first_seen,
                last_seen: t.last_seen,
            })
            .collect();
        Ok((to_json(&summaries)?, next))
    })
    .await?;
    let mut response = json_response(body);
    if let Some(link) = next.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LINK, link);
    }
    Ok(response)
}

/// Up to `limit + 1` workload totals after `after` (one more than a page: whether there is a
/// next one), of the namespaces `access` shows: the store's pages are read and filtered until
/// enough are visible or the store has no more.
fn visible_totals(
    store: &dyn Store,
    access: &Access,
    since: Option<DateTime<Utc>>,
    mut after: Option<WorkloadRef>,
    limit: usize,
) -> ApiResult<Vec<WorkloadTotals>> {
    let want = limit.saturating_add(1);
    let mut out = Vec::new();
    loop {
        let mut page = store
            .workload_totals(since, after.as_ref(), want)
            .map_err(store_error)?;
        let exhausted = page.len() < want;
        after = page.last().map(|t| t.workload.clone());
        access.retain(&mut page, |t| t.workload.namespace.as_str());
        out.extend(page);
        if exhausted || out.len() >= want || access.is_all() {
            out.truncate(want);
            return Ok(out);
        }
    }
}

/// JSON bytes, serialized on the read thread rather than on the runtime that also serves
/// ingest.
pub(super) fn to_json<T: Serialize>(value: &T) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(value)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, Chain(&e).to_string()))
}

pub(super) fn json_response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The `Link` header value pointing to the page after `last`.
fn next_page(last: &WorkloadTotals, p: &Page, limit: usize) -> String {
    let w = &last.workload;
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("after", &format!("{}/{}/{}", w.namespace, w.kind, w.name));
    query.append_pair("limit", &limit.to_string());
    if let Some(since) = &p.since {
        query.append_pair("since", since);
    }
    format!("</v1/workloads?{}>; rel=\"next\"", query.finish())
}

async fn recommendations(
    slot: Slot,
    access: Access,
    State(s): State<Arc<AppState>>,
    Path(ns): Path<String>,
    Query(w): Query<Window>,
) -> ApiResult<Response> {
    access.require(&ns)?;
    let (model, scope) = namespace_scope(&s, &ns, &w)?;
    let mut opts = s.options.clone();
    opts.namespaces = BTreeSet::from([ns.clone()]);
    let store = Arc::clone(&s.store);
    let text = blocking(slot, move |limits| {
        let max = limits.max_observations;
        let what = format!("namespace {ns:?}");
        let flows = scoped_flows(store.as_ref(), &scope, max, &what)?;
        let dns = store
            .dns_in(&scope, max.saturating_add(1))
            .map_err(store_error)?;
        if dns.len() > max {
            return Err(too_many(&what, max));
        }
        let (obs, _skipped) = crate::observations::from_stored(&model.cluster, &flows, &dns);
        drop((flows, dns));
        // The same self-check as `leash recommend`: policies that would deny an observed flow
        // are a bug in leash, answered as one, never served. (Its worker threads inherit this
        // thread's lower priority.)
        let rec = recommend::checked(&model.cluster, &obs, &opts).map_err(|e| {
            tracing::error!(namespace = %ns, "self-check failed: {}", Chain(&e));
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "self-check failed, refusing to answer policies (a bug in leash): {}",
                    Chain(&e)
                ),
            )
        })?;
        crate::render::yaml_stream(&recommend::all_policies(&model.cluster, &rec))
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, Chain(&e).to_string()))
    })
    .await?;
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
    /// A judged flow: its evidence is summed over the workload's pods, without outcomes.
    fn judged(f: &crate::eval::Flow, e: &crate::observations::Evidence) -> Self {
        Destination {
            protocol: f.protocol.as_str(),
            dst: f.dst,
            port: f.dst_port,
            count: e.count,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
            names: e.names.iter().cloned().collect(),
            established: 0,
            failed: 0,
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
    slot: Slot,
    access: Access,
    State(s): State<Arc<AppState>>,
    Path((ns, kind, name)): Path<(String, String, String)>,
    Query(w): Query<Window>,
) -> ApiResult<Response> {
    access.require(&ns)?;
    let workload = WorkloadRef {
        namespace: ns,
        kind,
        name,
    };
    let scope = Scope {
        since: w.cutoff()?,
        subject: Subject::Workload(workload.clone()),
    };
    let store = Arc::clone(&s.store);
    let what = format!("{}/{}/{}", workload.namespace, workload.kind, workload.name);
    let list = blocking(slot, move |limits| {
        let flows = scoped_flows(store.as_ref(), &scope, limits.max_observations, &what)?;
        if flows.is_empty() {
            return Ok(None);
        }
        let list: Vec<Destination> = flows.iter().map(Destination::from).collect();
        to_json(&list).map(Some)
    })
    .await?;
    let Some(list) = list else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "no observations for {}/{}/{}",
                workload.namespace, workload.kind, workload.name
            ),
        ));
    };
    Ok(json_response(list))
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
    namespace: String,
    /// `Kind/name` ([`crate::json`]).
    workload: String,
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
    slot: Slot,
    access: Access,
    State(s): State<Arc<AppState>>,
    Path(ns): Path<String>,
    Query(w): Query<Window>,
) -> ApiResult<Response> {
    access.require(&ns)?;
    let (model, scope) = namespace_scope(&s, &ns, &w)?;
    let store = Arc::clone(&s.store);
    let report = blocking(slot, move |limits| {
        let what = format!("namespace {ns:?}");
        let flows = scoped_flows(store.as_ref(), &scope, limits.max_observations, &what)?;
        let report = audit_namespace(&model, &ns, &flows)
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, Chain(&e).to_string()))?;
        to_json(&report)
    })
    .await?;
    Ok(json_response(report))
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
                namespace: j.workload.namespace.clone(),
                workload: crate::json::workload(&j.workload.kind, &j.workload.name),
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
            destination: Destination::judged(&j.flow, &j.evidence),
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
        || (w.kind == crate::store::KIND_POD && c.pod_by_name(&w.namespace, &w.name).is_some())
}

/// The latest rollout board, or `503` until the first evaluation.
fn current_board(s: &AppState) -> ApiResult<Arc<super::shadow::Board>> {
    s.rollout
        .borrow()
        .clone()
        .ok_or_else(|| unavailable("the rollout board is not evaluated yet"))
}

/// The answer of the rollout endpoints: the guardrails stage and the workloads, each as
/// `leash rollout status --format json` writes them (without its `kind`).
#[derive(Serialize)]
struct RolloutAnswer<'a, W: Serialize> {
    guardrails: &'a crate::guardrails::stage::Stage,
    workloads: W,
}

/// `/v1/rollout`: the guardrails stage and every workload's rollout phase.
async fn rollout(
    slot: Slot,
    access: Access,
    State(s): State<Arc<AppState>>,
) -> ApiResult<Response> {
    let board = current_board(&s)?;
    let body = blocking(slot, move |_| {
        if access.is_all() {
            return to_json(&RolloutAnswer {
                guardrails: &board.stage,
                workloads: &board.statuses,
            });
        }
        let mut stage = board.stage.clone();
        access.retain(&mut stage.breaks, |w| w.namespace.as_str());
        access.retain(&mut stage.denied, |w| w.namespace.as_str());
        let mut mine: Vec<&crate::rollout::WorkloadStatus> = board.statuses.iter().collect();
        access.retain(&mut mine, |w| w.namespace.as_str());
        to_json(&RolloutAnswer {
            guardrails: &stage,
            workloads: mine,
        })
    })
    .await?;
    Ok(json_response(body))
}

/// `/v1/namespaces/{ns}/rollout`: the guardrails stage as the namespace sees it (its
/// workloads the proposal would break or the guardrails deny) and the rollout phases of its
/// workloads.
async fn namespace_rollout(
    slot: Slot,
    access: Access,
    State(s): State<Arc<AppState>>,
    Path(ns): Path<String>,
) -> ApiResult<Response> {
    access.require(&ns)?;
    let model = current_model(&s)?;
    known_namespace(&model, &ns)?;
    let board = current_board(&s)?;
    let body = blocking(slot, move |_| {
        let mine: Vec<&crate::rollout::WorkloadStatus> = board
            .statuses
            .iter()
            .filter(|w| w.namespace == ns)
            .collect();
        to_json(&RolloutAnswer {
            guardrails: &crate::rollout::board::stage_of_namespace(&board.stage, &ns),
            workloads: mine,
        })
    })
    .await?;
    Ok(json_response(body))
}

/// A remembered alert in the shape of the webhook's `alert`, with its namespace's open pull
/// request (`pulls`: namespace → URL).
pub(super) fn remembered_alert(
    r: &crate::store::AlertRecord,
    pulls: &BTreeMap<String, String>,
) -> ApiResult<super::alert::AlertJson> {
    let mut alert: super::alert::AlertJson = serde_json::from_str(&r.detail).map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "a remembered alert of {} is not readable: {}",
                r.workload,
                Chain(&e)
            ),
        )
    })?;
    if let Some(url) = pulls.get(&alert.namespace) {
        alert.pull_request = Some(url.clone());
    }
    Ok(alert)
}

/// `/v1/alerts?namespace=`: remembered alerts of one namespace, or of all.
#[derive(Debug, Deserialize)]
struct AlertsQuery {
    namespace: Option<String>,
}

/// `/v1/alerts`: the remembered alerts, sorted by workload, destination, port and protocol,
/// each in the shape of the webhook's `alert` ([`super::alert::AlertJson`]).
async fn alerts(
    slot: Slot,
    access: Access,
    State(s): State<Arc<AppState>>,
    Query(q): Query<AlertsQuery>,
) -> ApiResult<Response> {
    if let Some(ns) = &q.namespace {
        access.require(ns)?;
    }
    let store = Arc::clone(&s.store);
    let pulls = s.pull_requests.borrow().clone();
    let body = blocking(slot, move |_| {
        let records = store.alerts(q.namespace.as_deref()).map_err(store_error)?;
        let mut out = records
            .iter()
            .map(|r| remembered_alert(r, &pulls))
            .collect::<ApiResult<Vec<_>>>()?;
        access.retain(&mut out, |a| a.namespace.as_str());
        to_json(&out)
    })
    .await?;
    Ok(json_response(body))
}
