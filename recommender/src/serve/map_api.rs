//! The egress map over `/v1`, which the web UI ([`super::ui`]) reads:
//!
//! - `GET /v1/map?since=&verdict=&q=&namespace=`: the overview ([`Map::overview`]);
//! - `GET /v1/map/namespaces/{ns}?since=&verdict=&q=`: one namespace expanded
//!   ([`Map::namespace`]);
//! - `GET /v1/map/workloads/{ns}/{kind}/{name}`: a workload's panel ([`Map::workload`]), with
//!   leash's proposed policy for it (from the store, as `/v1/namespaces/{ns}/recommendations`
//!   makes it), the applied policy of the same name, the diff of the one against the other
//!   ([`crate::diff`]), and its remembered alerts.
//!
//! The [`Map`] is built by [`watch`], off the runtime at the read API's lower priority,
//! whenever ingest stored batches, the rollout board was evaluated again, the proposal or the
//! model changed, at most every [`MIN_REBUILD`]; the views only read the latest one.
//!
//! Every handler takes the namespaces the request may read from the gate's [`Access`]
//! ([`super::auth::gate`]) through one function, [`scope`]: they are the map's
//! [`Filter::namespaces`] (only edges from them; other namespaces' workloads only as their
//! destinations), and a namespace or a workload outside them is `403`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, Utc};
use leash_records::error::Chain;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::ModelRx;
use super::alert::{AlertJson, AlertKind};
use super::auth::Access;
use super::http::{self as api, ApiError, ApiResult, AppState, Shared, Slot};
use super::shadow::{BoardRx, ProposalRx};
use crate::diff::{self, Diff, ObservedFlows, WorkloadChanges, WorkloadKey};
use crate::eval::PolicySet;
use crate::map::{self, Filter, FlowRef, Map, Verdict};
use crate::rollout::board::State as Policies;
use crate::state::ClusterState;
use crate::store::{Scope, Store, Subject, WorkloadRef};

/// The latest egress map, `None` until the first is built.
pub type MapRx = watch::Receiver<Option<Arc<Map>>>;

/// A map receiver that never gets a map, for a router without [`watch`] (tests): the map
/// endpoints answer `503`.
pub fn no_map() -> MapRx {
    watch::channel(None).1
}

/// The map is built again at most this often (it reads the whole store).
pub const MIN_REBUILD: Duration = Duration::from_secs(3);

/// After a build that took `t`, the next waits `IDLE_FACTOR × t` more: on a store large enough
/// for a build to take longer than [`MIN_REBUILD`], rebuilding under steady ingest uses at
/// most about a fifth of one core (at the read API's lower priority).
const IDLE_FACTOR: u32 = 4;

/// The longest search (`?q=`), in characters.
pub const MAX_SEARCH: usize = 256;

/// The routes of the map's API, on the read API's state (its slots bound them).
pub(super) fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/map", get(overview))
        .route("/v1/map/namespaces/{namespace}", get(namespace))
        .route("/v1/map/workloads/{namespace}/{kind}/{name}", get(workload))
}

/// The namespaces `access` may read, as the map's [`Filter::namespaces`]: empty for every
/// namespace. A user who may read none is refused (`403`): an empty set would mean all.
pub(super) fn scope(access: &Access) -> ApiResult<NamespaceScope> {
    match access {
        Access::All => Ok(NamespaceScope(BTreeSet::new())),
        Access::Namespaces(set) if set.is_empty() => Err(ApiError(
            StatusCode::FORBIDDEN,
            "forbidden: get egressmaps.leash.dev is granted in no namespace".into(),
        )),
        Access::Namespaces(set) => Ok(NamespaceScope(set.as_ref().clone())),
    }
}

/// The namespaces a request may read ([`scope`]); empty for every namespace.
pub(super) struct NamespaceScope(BTreeSet<String>);

impl NamespaceScope {
    fn allows(&self, namespace: &str) -> bool {
        self.0.is_empty() || self.0.contains(namespace)
    }

    /// `403` unless `namespace` is in scope.
    fn check(&self, namespace: &str) -> ApiResult<()> {
        if self.allows(namespace) {
            Ok(())
        } else {
            Err(ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "forbidden: get egressmaps.leash.dev in namespace {namespace:?} is not granted"
                ),
            ))
        }
    }
}

/// The query of the map's views. Unknown parameters are refused (`400`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapQuery {
    /// Only edges last seen within this long (the duration grammar); `all` or absent for
    /// every edge.
    since: Option<String>,
    /// Only edges with this verdict; `all` or absent for every verdict.
    verdict: Option<String>,
    /// Only edges whose ends, names or addresses contain this, case-insensitive.
    q: Option<String>,
    /// The overview of one namespace only.
    namespace: Option<String>,
}

/// The map's [`Filter`] from a query and the request's scope: bad values are `400`.
fn filter(q: &MapQuery, scope: &NamespaceScope) -> ApiResult<Filter> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let since = match q.since.as_deref().map(str::trim) {
        None | Some("" | "all") => None,
        Some(s) => api::Window {
            since: Some(s.to_owned()),
        }
        .cutoff()?,
    };
    let verdict = match q.verdict.as_deref().map(str::trim) {
        None | Some("" | "all") => None,
        Some(v) => Some(Verdict::parse(v).ok_or_else(|| {
            let all: Vec<&str> = Verdict::ALL.iter().map(|v| v.as_str()).collect();
            bad(format!(
                "verdict={v:?}: expected all or one of {}",
                all.join(", ")
            ))
        })?),
    };
    let search = match q.q.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) if s.chars().count() > MAX_SEARCH => {
            return Err(bad(format!(
                "q: at most {MAX_SEARCH} characters, got {}",
                s.chars().count()
            )));
        }
        Some(s) => Some(s.to_owned()),
    };
    let namespaces = match q.namespace.as_deref().map(str::trim) {
        None | Some("") => scope.0.clone(),
        Some(ns) => {
            scope.check(ns)?;
            BTreeSet::from([ns.to_owned()])
        }
    };
    Ok(Filter {
        namespaces,
        since,
        verdict,
        search,
    })
}

fn current_map(s: &AppState) -> ApiResult<Arc<Map>> {
    s.map
        .borrow()
        .clone()
        .ok_or_else(|| api::unavailable("the egress map is not built yet"))
}

/// `GET /v1/map`: the overview.
async fn overview(
    slot: Slot,
    access: Access,
    State(s): State<Arc<AppState>>,
    Query(q): Query<MapQuery>,
) -> ApiResult<Response> {
    let scope = scope(&access)?;
    let filter = filter(&q, &scope)?;
    let map = current_map(&s)?;
    let body = api::blocking(slot, move |_| api::to_json(&map.overview(&filter))).await?;
    Ok(api::json_response(body))
}

/// `GET /v1/map/namespaces/{ns}`: one namespace expanded.
async fn namespace(
    slot: Slot,
    access: Access,
    State(s): State<Arc<AppState>>,
    Path(ns): Path<String>,
    Query(q): Query<MapQuery>,
) -> ApiResult<Response> {
    if q.namespace.is_some() {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "namespace=: the namespace is the path's".into(),
        ));
    }
    let scope = scope(&access)?;
    scope.check(&ns)?;
    let filter = filter(&q, &scope)?;
    let model = api::current_model(&s)?;
    api::known_namespace(&model, &ns)?;
    let map = current_map(&s)?;
    let body = api::blocking(slot, move |_| api::to_json(&map.namespace(&ns, &filter))).await?;
    Ok(api::json_response(body))
}

/// A policy as text.
#[derive(Debug, Serialize)]
struct PolicyText {
    /// `metadata.name`.
    name: String,
    /// Its canonical YAML ([`crate::render::policy_yaml`]).
    yaml: String,
}

/// A workload's panel.
#[derive(Debug, Serialize)]
struct WorkloadAnswer {
    /// Phase, why, and the destinations table with its evidence.
    #[serde(flatten)]
    detail: map::WorkloadDetail,
    /// leash's proposed policy for it, from every stored observation of it (none without
    /// observed egress).
    proposed: Option<PolicyText>,
    /// Why there is no proposed policy, when it failed.
    proposed_error: Option<String>,
    /// The applied policy of the proposed one's name, if any.
    applied: Option<PolicyText>,
    /// The diff of the proposed policy laid over the applied ones against the applied ones,
    /// for this workload, as `leash diff --format table` writes it.
    diff: Option<String>,
    /// Observed flows the proposed policy would deny (breaks).
    breaks: usize,
    /// Its remembered alerts, as `/v1/alerts` answers them.
    alerts: Vec<AlertJson>,
}

/// `GET /v1/map/workloads/{ns}/{kind}/{name}`: a workload's panel.
async fn workload(
    slot: Slot,
    access: Access,
    State(s): State<Arc<AppState>>,
    Path((ns, kind, name)): Path<(String, String, String)>,
) -> ApiResult<Response> {
    scope(&access)?.check(&ns)?;
    let map = current_map(&s)?;
    let model = api::current_model(&s)?;
    let workload = crate::json::workload(&kind, &name);
    let Some(detail) = map.workload(&ns, &workload) else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("workload {ns}/{workload} is not in the egress map"),
        ));
    };
    let store = Arc::clone(&s.store);
    let options = s.options.clone();
    let pulls = s.pull_requests.borrow().clone();
    let body = api::blocking(slot, move |limits| {
        let who = WorkloadRef {
            namespace: ns.clone(),
            kind,
            name,
        };
        let mut answer = proposal(
            &model,
            store.as_ref(),
            &who,
            &options,
            limits.max_observations,
        )?;
        answer.alerts = alerts_of(store.as_ref(), &who, &pulls)?;
        let answer = WorkloadAnswer { detail, ..answer };
        api::to_json(&answer)
    })
    .await?;
    Ok(api::json_response(body))
}

/// leash's proposed policy for `who`, the applied one of its name and their diff; the
/// detail and alerts are left empty.
fn proposal(
    state: &ClusterState,
    store: &dyn Store,
    who: &WorkloadRef,
    options: &crate::recommend::Options,
    max: usize,
) -> ApiResult<WorkloadAnswer> {
    let mut answer = WorkloadAnswer {
        detail: map::WorkloadDetail {
            id: String::new(),
            namespace: String::new(),
            workload: String::new(),
            pods: 0,
            phase: None,
            why: None,
            destinations: Vec::new(),
        },
        proposed: None,
        proposed_error: None,
        applied: None,
        diff: None,
        breaks: 0,
        alerts: Vec::new(),
    };
    let scope = Scope {
        since: None,
        subject: Subject::Workload(who.clone()),
    };
    let what = format!("{}/{}/{}", who.namespace, who.kind, who.name);
    let flows = api::scoped_flows(store, &scope, max, &what)?;
    let dns = store
        .dns_in(&scope, max.saturating_add(1))
        .map_err(api::store_error)?;
    let (obs, _skipped) = crate::observations::from_stored(&state.cluster, &flows, &dns);
    drop((flows, dns));
    let mut opts = options.clone();
    opts.namespaces = BTreeSet::from([who.namespace.clone()]);
    let rec = match crate::recommend::checked(&state.cluster, &obs, &opts) {
        Ok(rec) => rec,
        Err(e) => {
            answer.proposed_error = Some(format!(
                "self-check failed, no policy proposed (a bug in leash): {}",
                Chain(&e)
            ));
            return Ok(answer);
        }
    };
    let spec = rec.policies.iter().find(|p| {
        state.cluster.workloads.get(p.workload).is_some_and(|w| {
            w.namespace == who.namespace && w.kind == who.kind && w.name == who.name
        })
    });
    let Some(spec) = spec else {
        return Ok(answer);
    };
    let internal = |e: crate::render::Error| {
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, Chain(&e).to_string())
    };
    let policy = crate::recommend::to_network_policy(&state.cluster, spec);
    answer.proposed = Some(PolicyText {
        name: spec.name.clone(),
        yaml: crate::render::policy_yaml(&policy).map_err(internal)?,
    });
    if let Some(applied) = state.policies.iter().find(|p| {
        p.metadata.namespace.as_deref() == Some(who.namespace.as_str())
            && p.metadata.name.as_deref() == Some(spec.name.as_str())
    }) {
        answer.applied = Some(PolicyText {
            name: spec.name.clone(),
            yaml: crate::render::policy_yaml(applied).map_err(internal)?,
        });
    }
    let given = Policies {
        network_policies: std::slice::from_ref(&policy),
        cluster_policies: &[],
    };
    match super::shadow::proposed_set(state, &given) {
        Ok(set) => {
            let d = diff::diff(
                &state.cluster,
                ("applied", &state.policy_set),
                ("proposed", &set),
                Some(&obs),
                &diff::Options {
                    namespaces: BTreeSet::from([who.namespace.clone()]),
                },
            );
            let key = WorkloadKey {
                namespace: who.namespace.clone(),
                workload: crate::json::workload(&who.kind, &who.name),
            };
            let mine = only(d, &key);
            answer.breaks = mine.breaks().count();
            answer.diff = Some(diff::render::render(&mine, diff::Format::Table));
        }
        Err(e) => {
            answer.proposed_error = Some(format!("cannot diff the proposed policy: {}", Chain(&e)))
        }
    }
    Ok(answer)
}

/// `d` with the changes of `key` only.
fn only(d: Diff, key: &WorkloadKey) -> Diff {
    let changes = d.workloads.get(key).cloned().unwrap_or_default();
    let reachability: Vec<_> = changes
        .reachability
        .iter()
        .filter_map(|&i| d.reachability.get(i).cloned())
        .collect();
    let observed = d.observed.map(|o| ObservedFlows {
        changes: changes
            .flows
            .iter()
            .filter_map(|&i| o.changes.get(i).cloned())
            .collect(),
        workloads: o.workloads.into_iter().filter(|w| w == key).collect(),
        evaluated: o.evaluated,
        unattributed_events: o.unattributed_events,
    });
    let mine = WorkloadChanges {
        reachability: (0..reachability.len()).collect(),
        flows: (0..observed.as_ref().map_or(0, |o| o.changes.len())).collect(),
    };
    Diff {
        from: d.from,
        to: d.to,
        reachability,
        observed,
        workloads: BTreeMap::from([(key.clone(), mine)]),
    }
}

/// The remembered alerts of `who`, with its namespace's open pull request.
fn alerts_of(
    store: &dyn Store,
    who: &WorkloadRef,
    pulls: &BTreeMap<String, String>,
) -> ApiResult<Vec<AlertJson>> {
    let records = store
        .alerts(Some(&who.namespace))
        .map_err(api::store_error)?;
    records
        .iter()
        .filter(|r| r.workload.kind == who.kind && r.workload.name == who.name)
        .map(|r| api::remembered_alert(r, pulls))
        .collect()
}

/// What [`watch`] builds the map from.
pub struct Sources {
    /// The observations and the remembered alerts (DNS drift).
    pub store: Arc<dyn Store>,
    /// The cluster model and its applied policies.
    pub model: ModelRx,
    /// The rollout board: phases, and a new evaluation to follow.
    pub board: BoardRx,
    /// The proposal (`--proposed`), if any.
    pub proposal: ProposalRx,
    /// Ingest: its count of stored batches says when the store changed.
    pub ingest: crate::ingest::IngestService,
    /// The classifier's configuration.
    pub classifier: crate::classify::ClassifierConfig,
}

/// What a built map reflects: when none of it changed, the map is not built again.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Inputs {
    model: u64,
    board: Option<DateTime<Utc>>,
    proposal: Option<u64>,
    batches: u64,
}

/// Builds the map once the model exists, then again at most every [`MIN_REBUILD`] (and
/// [`IDLE_FACTOR`] times a build's duration) when batches were stored, the board was
/// evaluated, or the model or the proposal changed; publishes it on `tx`. A failed build keeps the previous map. Runs until dropped.
pub async fn watch(sources: Sources, tx: watch::Sender<Option<Arc<Map>>>) {
    let mut model = sources.model.clone();
    if model.wait_for(Option::is_some).await.is_err() {
        return;
    }
    let sources = Arc::new(sources);
    let mut ticker = tokio::time::interval(MIN_REBUILD);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut built: Option<Inputs> = None;
    // The compiled proposed state, for one (model, proposal) pair.
    let mut compiled: Option<((u64, u64), Arc<PolicySet>)> = None;
    loop {
        ticker.tick().await;
        let Some(state) = sources.model.borrow().clone() else {
            continue;
        };
        let board = sources.board.borrow().clone();
        let given = sources.proposal.borrow().clone();
        let inputs = Inputs {
            model: state.generation,
            board: board.as_ref().map(|b| b.evaluated_at),
            proposal: given.as_ref().map(|p| p.generation),
            batches: sources.ingest.metrics().batches_stored(),
        };
        if built.as_ref() == Some(&inputs) {
            continue;
        }
        let proposed = match &given {
            None => None,
            Some(p) => {
                let key = (state.generation, p.generation);
                match &compiled {
                    Some((k, set)) if *k == key => Some(Arc::clone(set)),
                    _ => {
                        let given = Policies {
                            network_policies: &p.policies,
                            cluster_policies: &p.cluster_policies,
                        };
                        match super::shadow::proposed_set(&state, &given) {
                            Ok(set) => {
                                let set = Arc::new(set);
                                compiled = Some((key, Arc::clone(&set)));
                                Some(set)
                            }
                            Err(e) => {
                                tracing::warn!(error = %Chain(&e), "egress map: cannot compile the proposed policies");
                                None
                            }
                        }
                    }
                }
            }
        };
        let s = Arc::clone(&sources);
        let started = std::time::Instant::now();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("leash-map".into())
            .spawn(move || {
                super::http::lower_priority();
                let _ = done_tx.send(build(&s, &state, proposed.as_deref(), board.as_deref()));
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %Chain(&e), "cannot start the egress map thread");
            continue;
        }
        match done_rx.await {
            Ok(Ok(map)) => {
                tracing::debug!(
                    workloads = map.workloads().len(),
                    edges = map.edges().len(),
                    "egress map built"
                );
                tx.send_replace(Some(Arc::new(map)));
                built = Some(inputs);
            }
            Ok(Err(e)) => tracing::warn!(error = %Chain(&e), "cannot build the egress map"),
            Err(_) => tracing::warn!("the egress map thread stopped without an answer"),
        }
        tokio::time::sleep(started.elapsed().saturating_mul(IDLE_FACTOR)).await;
    }
}

/// The remembered alert's type only.
#[derive(Deserialize)]
struct AlertType {
    #[serde(rename = "type", default)]
    kind: AlertKind,
}

/// Builds the map from the whole store.
fn build(
    sources: &Sources,
    state: &ClusterState,
    proposed: Option<&PolicySet>,
    board: Option<&super::shadow::Board>,
) -> Result<Map, crate::store::Error> {
    let flows = sources.store.flows(None)?;
    let dns = sources.store.dns(None)?;
    let drifted: Vec<FlowRef> = sources
        .store
        .alerts(None)?
        .iter()
        .filter(|r| {
            serde_json::from_str::<AlertType>(&r.detail)
                .is_ok_and(|t| t.kind == AlertKind::DnsDrift)
        })
        .map(|r| FlowRef {
            namespace: r.workload.namespace.clone(),
            workload: crate::json::workload(&r.workload.kind, &r.workload.name),
            address: r.dst.to_canonical(),
            port: r.port,
            protocol: r.protocol,
        })
        .collect();
    let outcomes = map::outcomes(&flows);
    let (obs, _skipped) = crate::observations::from_stored(&state.cluster, &flows, &dns);
    drop((flows, dns));
    Ok(map::build(
        &state.cluster,
        &obs,
        &map::Inputs {
            applied: &state.policy_set,
            proposed,
            drifted: &drifted,
            phases: board.map_or(&[], |b| b.statuses.as_slice()),
            outcomes: Some(&outcomes),
            classifier: &sources.classifier,
            now: Utc::now(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(since: Option<&str>, verdict: Option<&str>, search: Option<&str>) -> MapQuery {
        MapQuery {
            since: since.map(str::to_owned),
            verdict: verdict.map(str::to_owned),
            q: search.map(str::to_owned),
            namespace: None,
        }
    }

    fn message(r: ApiResult<Filter>) -> (StatusCode, String) {
        match r {
            Ok(f) => panic!("accepted: {f:?}"),
            Err(ApiError(code, m)) => (code, m),
        }
    }

    /// Good values make the filter; `all` and empty values filter nothing.
    #[test]
    fn the_query_makes_the_filter() {
        let all = NamespaceScope(BTreeSet::new());
        let f = filter(&q(Some("1h"), Some("would-deny"), Some(" Api ")), &all).unwrap();
        let since = f.since.unwrap();
        let hour_ago = Utc::now() - chrono::Duration::hours(1);
        assert!((since - hour_ago).num_seconds().abs() < 5, "{since}");
        assert_eq!(f.verdict, Some(Verdict::WouldDeny));
        assert_eq!(f.search.as_deref(), Some("Api"));
        assert!(f.namespaces.is_empty());
        let f = filter(&q(Some("all"), Some("all"), Some("  ")), &all).unwrap();
        assert_eq!(f, Filter::default());
    }

    /// Bad values are `400` naming the parameter; a namespace out of scope is `403`.
    #[test]
    fn bad_values_are_refused() {
        let all = NamespaceScope(BTreeSet::new());
        let (code, m) = message(filter(&q(Some("soon"), None, None), &all));
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(m.starts_with("since: "), "{m}");
        let (code, m) = message(filter(&q(None, Some("blocked"), None), &all));
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(m.contains("allowed, would-deny, denied, drift"), "{m}");
        let long = "x".repeat(MAX_SEARCH + 1);
        let (code, m) = message(filter(&q(None, None, Some(&long)), &all));
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(m.starts_with("q: at most 256"), "{m}");
        let shop = NamespaceScope(BTreeSet::from(["shop".to_owned()]));
        let mut other = q(None, None, None);
        other.namespace = Some("bank".into());
        let (code, _) = message(filter(&other, &shop));
        assert_eq!(code, StatusCode::FORBIDDEN);
        // The scope is the filter's namespaces when none is asked for.
        let f = filter(&q(None, None, None), &shop).unwrap();
        assert_eq!(f.namespaces, BTreeSet::from(["shop".to_owned()]));
    }

    /// The gate's access is the scope: every namespace is the empty set; none at all is
    /// refused rather than read as every namespace.
    #[test]
    fn the_scope_comes_from_the_access() {
        assert!(scope(&Access::All).unwrap().0.is_empty());
        let shop = BTreeSet::from(["shop".to_owned()]);
        let s = scope(&Access::Namespaces(Arc::new(shop.clone()))).unwrap();
        assert_eq!(s.0, shop);
        assert!(s.check("shop").is_ok());
        assert!(matches!(
            s.check("bank"),
            Err(ApiError(StatusCode::FORBIDDEN, _))
        ));
        let none = scope(&Access::Namespaces(Arc::new(BTreeSet::new())));
        assert!(matches!(none, Err(ApiError(StatusCode::FORBIDDEN, _))));
    }
}
