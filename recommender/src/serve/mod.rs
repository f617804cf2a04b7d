//! `leash serve`: the recommender as a service.
//!
//! Agents stream batches over gRPC ([`crate::ingest`]) into the [`crate::store`]; the cluster
//! model comes from a snapshot file or is kept live from the API server; `--http` ([`http`])
//! serves health and metrics, the UI listener ([`ui_http`]) the read API and the UI behind
//! [`auth`]; [`alert`] reports egress that the
//! applied policies deny; [`drift`] checks DNS answers as they are stored and alerts when a
//! name moved to an address the applied policies deny; [`shadow`] judges the stored flows against a proposed set too and
//! keeps the rollout board; [`map_api`] keeps the egress map and [`ui`] serves the web UI. Data flows one way: agents → ingest → store → recommendations.

pub mod alert;
pub mod auth;
pub mod conn;
pub mod drift;
pub mod http;
pub mod leader;
pub mod map_api;
pub mod propose;
pub mod ranges;
pub mod shadow;
pub mod ui;
pub mod ui_http;
pub mod verdicts;
pub mod webhook;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::Utc;
use leash_records::error::Chain;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::recommend;
use crate::state::ClusterState;
use crate::store::Store;

/// The current cluster state, or `None` until the first one is built.
pub type ModelRx = watch::Receiver<Option<Arc<ClusterState>>>;

/// Where the cluster model comes from.
#[derive(Debug, Clone)]
pub enum ClusterSource {
    /// A snapshot file, read once.
    File(PathBuf),
    /// The API server (in-cluster config, or this kubeconfig), watched.
    Kube {
        /// A kubeconfig file; `None` means in-cluster config or `$KUBECONFIG`.
        kubeconfig: Option<PathBuf>,
    },
}

/// Everything `leash serve` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// gRPC ingest address.
    pub listen: SocketAddr,
    /// HTTP address (health and metrics).
    pub http: SocketAddr,
    /// The UI listener's address (`/v1` and the UI).
    pub ui: SocketAddr,
    /// How the UI listener authenticates (`--ui-auth`); `None` when not given: [`run`]
    /// settles it with [`auth::decide`], refusing a non-loopback `ui` without it.
    pub ui_auth: Option<auth::UiAuth>,
    /// Whether the UI listener speaks HTTPS (`--ui-tls-cert`/`--ui-tls-key`) or plain HTTP;
    /// [`run`] refuses `kube` auth over plain HTTP beyond loopback ([`auth::check_transport`]).
    pub ui_transport: auth::UiTransport,
    /// The store (`crate::store::Location`: a SQLite file or a PostgreSQL URL).
    pub store: crate::store::Location,
    /// The cluster model's source.
    pub cluster: ClusterSource,
    /// mTLS for ingest (`ca` verifies agents' client certificates); `None` only with
    /// `--insecure`.
    pub tls: Option<leash_records::tls::TlsFiles>,
    /// Observations last seen longer ago than this are deleted.
    pub retention: Duration,
    /// How often stored flows are checked against the applied policies, and the rollout
    /// board evaluated again.
    pub check_interval: Duration,
    /// At most this many records in one batch.
    pub max_batch_records: usize,
    /// At most this many bytes in one gRPC message.
    pub max_message_bytes: usize,
    /// Knobs for recommendations served over HTTP.
    pub options: recommend::Options,
    /// What one gRPC client may hold (connections, streams, time, memory in flight);
    /// `handshake_timeout` also bounds HTTP request headers.
    pub limits: conn::Limits,
    /// Shadow enforcement and the rollout board (`--proposed`, `--min-observation`).
    pub rollout: shadow::Options,
    /// The pull-request loop (`--pr-repo` and its twins); `None` without it.
    pub pull_requests: Option<Arc<propose::Options>>,
    /// The published range files to read again when they change (`--ip-ranges`), for the
    /// pull-request loop; the ranges read at start are `options.published`.
    pub ranges: Option<ranges::Options>,
    /// Alerts: how long before a recurring one is sent again (`--alert-repeat`), and the
    /// webhook sink (`--alert-webhook`).
    pub alerts: AlertOptions,
    /// Elect a leader with this Lease (needs [`ClusterSource::Kube`]); `None`: this replica
    /// is the only one and runs the singleton work itself.
    pub leader: Option<leader::LeaseRef>,
    /// How agents are identified (`--agent-auth`, `--agent-service-account`).
    pub agents: crate::ingest::identity::Options,
}

/// Where alerts go besides logs, metrics and (with `--kube`) Kubernetes Events.
#[derive(Debug, Clone)]
pub struct AlertOptions {
    /// A recurring alert is sent again once this has passed since it was last sent.
    pub repeat: Duration,
    /// The webhook sink, when configured.
    pub webhook: Option<webhook::Options>,
}

impl Default for AlertOptions {
    /// Sent again after a day, no webhook: the defaults of the flags.
    fn default() -> Self {
        AlertOptions {
            repeat: Duration::from_secs(24 * 3600),
            webhook: None,
        }
    }
}

/// Alerts waiting for the pull-request loop; more are dropped (the next check feeds them
/// again).
const RECURRENCES: usize = 256;

/// How often the server pings an HTTP/2 connection to learn that its client is still there.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long the server waits for a ping's answer before it closes the connection.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors that stop `leash serve`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store cannot be opened.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The cluster snapshot cannot be loaded.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::LoadError),
    /// An address cannot be bound.
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `gRPC` or `HTTP`.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS files cannot be loaded.
    #[error(transparent)]
    Tls(#[from] leash_records::tls::Error),
    /// The Kubernetes API client cannot be built.
    #[error(transparent)]
    Kube(#[from] crate::cluster::watch::Error),
    /// The gRPC server failed.
    #[error("gRPC server on {addr} failed")]
    Grpc {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: tonic::transport::Error,
    },
    /// The ingest service's store writer thread cannot be started.
    #[error("cannot start the ingest store writer thread")]
    Writer(#[source] std::io::Error),
    /// The proposed policies (`--proposed`) cannot be read.
    #[error(transparent)]
    Proposed(#[from] shadow::Error),
    /// The alert webhook cannot be set up.
    #[error(transparent)]
    Webhook(#[from] webhook::Error),
    /// The UI listener's settings are refused.
    #[error(transparent)]
    UiAuth(#[from] auth::ModeError),
    /// `--agent-auth token` without the API server.
    #[error(transparent)]
    AgentAuth(#[from] crate::ingest::identity::NoApiServer),
    /// Leader election was asked for without the API server.
    #[error("leader election needs the API server (--kube)")]
    LeaderNeedsKube,
    /// The HTTP server failed.
    #[error("HTTP server on {addr} failed")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds the cluster state from a snapshot file. Objects the model rejects are logged and
/// left out, as with the live source.
pub fn state_from_file(path: &std::path::Path) -> Result<ClusterState> {
    let snap = leash_records::snapshot::load_path(path)
        .map_err(|e| Error::Cluster(crate::cluster::LoadError::Snapshot(e)))?;
    let state = ClusterState::build(&snap, 1);
    state.log_rejected(None);
    Ok(state)
}

/// Publishes alerts as Kubernetes Events on the pod the flow was evaluated as.
struct EventAlerts {
    publisher: crate::cluster::events::EventPublisher,
    model: ModelRx,
}

impl alert::AlertSink for EventAlerts {
    fn publish<'a>(&'a self, alert: &'a alert::Alert) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            let reference = {
                let current = self.model.borrow().clone();
                current.and_then(|state| {
                    state
                        .cluster
                        .pod_by_name(&alert.workload.namespace, &alert.pod)
                        .map(|p| crate::cluster::events::pod_reference(&state.cluster, p))
                })
            };
            let Some(reference) = reference else {
                return;
            };
            let message = alert.message();
            let (published, reason) = match alert.kind {
                alert::AlertKind::EgressDenied => (
                    self.publisher
                        .publish_unexpected_egress(&reference, &message)
                        .await,
                    crate::cluster::events::REASON_UNEXPECTED_EGRESS,
                ),
                alert::AlertKind::DnsDrift => (
                    self.publisher
                        .publish_egress_drift(&reference, &message)
                        .await,
                    crate::cluster::events::REASON_EGRESS_DRIFT,
                ),
            };
            if let Err(e) = published {
                tracing::warn!(error = %Chain(&e), pod = %alert.pod, "cannot create the {reason} event");
            }
        })
    }
}

/// Deletes observations older than the retention window, every hour and once at start.
async fn prune_loop(store: Arc<dyn Store>, retention: Duration) {
    let mut ticker = tokio::time::interval(Duration::from_secs(3600));
    loop {
        ticker.tick().await;
        let Ok(window) = chrono::Duration::from_std(retention) else {
            return;
        };
        let before = Utc::now() - window;
        let s = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || s.prune(before)).await {
            Ok(Ok(n)) if n > 0 => {
                tracing::info!(removed = n, %before, "retention: pruned observations")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %Chain(&e), "retention: prune failed"),
            Err(e) => tracing::warn!(error = %Chain(&e), "retention: prune task failed"),
        }
    }
}

/// Serves until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    // The UI's authentication is settled before anything starts.
    let api_server = matches!(config.cluster, ClusterSource::Kube { .. });
    let ui_auth = auth::decide(config.ui_auth, config.ui, api_server)?;
    auth::check_transport(ui_auth, config.ui, &config.ui_transport)?;
    auth::warn_exposed(ui_auth, config.ui, &config.ui_transport);
    let agent_auth = crate::ingest::identity::decide(config.agents.mode, api_server)?;
    if agent_auth == crate::ingest::identity::AgentAuth::Mtls {
        tracing::warn!(
            "--agent-auth mtls: agents are identified by the shared client certificate only, so any agent may write records for any node (--agent-auth token binds each batch to its node; it needs --kube)"
        );
    }
    let ui_tls = match &config.ui_transport {
        auth::UiTransport::Https(identity) => {
            Some(leash_records::tls::ReloadingServerConfig::start_https(
                identity.clone(),
                leash_records::tls::DEFAULT_POLL,
            )?)
        }
        _ => None,
    };
    let mut registry = Registry::with_prefix("leash");
    // Opening may connect to a database: on a blocking thread, not on an async worker.
    let location = config.store.clone();
    let store: Arc<dyn Store> = Arc::from(
        tokio::task::spawn_blocking(move || location.open())
            .await
            .map_err(|e| crate::store::Error::Database {
                path: config.store.to_string(),
                message: e.to_string(),
            })??,
    );
    // A proposal that cannot be read is refused at start; later, a bad reload keeps the last.
    let proposal = match &config.rollout.proposed {
        Some(source) => Some(Arc::new(shadow::load(source)?)),
        None => None,
    };
    let (proposal_tx, proposal_rx) = watch::channel(proposal.clone());

    let mut kube_client = None;
    // One model, two sources: a file read once, or the API server watched.
    let (model_rx, mut alert_sinks, _watch_task): (ModelRx, Vec<Arc<dyn alert::AlertSink>>, _) =
        match &config.cluster {
            ClusterSource::File(path) => {
                let state = Arc::new(state_from_file(path)?);
                let (_tx, rx) = watch::channel(Some(state));
                // The sender is dropped: receivers keep the last value forever.
                (rx, Vec::new(), None)
            }
            ClusterSource::Kube { kubeconfig } => {
                let client = crate::cluster::watch::client(kubeconfig.as_deref()).await?;
                kube_client = Some(client.clone());
                let (rx, task) = crate::cluster::watch::watch_cluster(
                    client.clone(),
                    crate::cluster::watch::WatchOptions::default(),
                );
                let instance = std::env::var(crate::cluster::events::INSTANCE_ENV).ok();
                let sink = EventAlerts {
                    publisher: crate::cluster::events::EventPublisher::new(client, instance),
                    model: rx.clone(),
                };
                (
                    rx,
                    vec![Arc::new(sink) as Arc<dyn alert::AlertSink>],
                    Some(AbortOnDrop(task)),
                )
            }
        };

    let alert_metrics = alert::AlertMetrics::default();
    alert_metrics.register(&mut registry);
    let leader_metrics = leader::LeaderMetrics::default();
    leader_metrics.register(&mut registry);
    if config.leader.is_some() && kube_client.is_none() {
        return Err(Error::LeaderNeedsKube);
    }
    let leadership = leader::start(config.leader.clone(), kube_client.clone(), leader_metrics);
    // Registered without a webhook too: the family is served, at 0.
    let webhook_metrics = webhook::WebhookMetrics::default();
    webhook_metrics.register(&mut registry);
    if let Some(options) = &config.alerts.webhook {
        alert_sinks.push(Arc::new(webhook::WebhookSink::start(
            options,
            webhook_metrics,
        )?));
    }
    // The pull-request loop sends each namespace's open pull request here; alerts carry it.
    let (pull_requests_tx, pull_requests_rx) = watch::channel(std::collections::BTreeMap::new());
    let pr_metrics = propose::PrMetrics::default();
    pr_metrics.register(&mut registry);
    // Alerts feed the loop's triggers; without the loop there is no feed.
    let (recurrences_tx, recurrences_rx) = match &config.pull_requests {
        Some(_) => {
            let (tx, rx) = tokio::sync::mpsc::channel(RECURRENCES);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let shadow_metrics = shadow::ShadowMetrics::default();
    shadow_metrics.register(&mut registry);
    let (board_tx, board_rx) = watch::channel(None);
    // DNS answers are checked for drift as they are stored, not on the check interval.
    let drift_metrics = drift::DriftMetrics::default();
    drift_metrics.register(&mut registry);
    let (drift_tx, drift_rx) = tokio::sync::mpsc::channel(drift::QUEUE);
    let identity = match (agent_auth, &kube_client) {
        (crate::ingest::identity::AgentAuth::Token, Some(client)) => {
            crate::ingest::identity::Identity::token(client.clone(), config.agents.user.clone())
        }
        (crate::ingest::identity::AgentAuth::Token, None) => {
            return Err(crate::ingest::identity::NoApiServer.into());
        }
        (crate::ingest::identity::AgentAuth::Mtls, _) => crate::ingest::identity::Identity::mtls(),
    };
    let (ingest, ingest_handle) = ingest_service(
        identity,
        &config,
        Arc::clone(&store),
        model_rx.clone(),
        &mut registry,
        drift_tx,
    )?;
    let connections = conn::Shared::new(config.limits);
    connections.register(&mut registry);

    let grpc = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            what: "gRPC",
            source,
        })?;
    let http_listener = tokio::net::TcpListener::bind(config.http)
        .await
        .map_err(|source| Error::Bind {
            addr: config.http,
            what: "HTTP",
            source,
        })?;
    let ui_listener = tokio::net::TcpListener::bind(config.ui)
        .await
        .map_err(|source| Error::Bind {
            addr: config.ui,
            what: "UI",
            source,
        })?;
    let ui_gate = match (ui_auth, kube_client) {
        (auth::UiAuth::Kube, Some(client)) => auth::Auth::kube(client),
        (auth::UiAuth::Kube, None) => return Err(auth::ModeError::NoApiServer.into()),
        (auth::UiAuth::None, _) => auth::Auth::open(),
    };
    let tls = match &config.tls {
        Some(files) => Some(leash_records::tls::ReloadingServerConfig::start(
            files.clone(),
            leash_records::tls::DEFAULT_POLL,
        )?),
        None => {
            tracing::warn!("--insecure: agents connect over plaintext gRPC without certificates");
            None
        }
    };
    // The egress map of the web UI, built again as the store and the board change.
    let (map_tx, map_rx) = watch::channel(None);
    let _map = AbortOnDrop(tokio::spawn(map_api::watch(
        map_api::Sources {
            store: Arc::clone(&store),
            model: model_rx.clone(),
            board: board_rx.clone(),
            proposal: proposal_rx.clone(),
            ingest: ingest_handle.clone(),
            classifier: config.options.classify.clone(),
        },
        map_tx,
    )));
    let state = Arc::new(http::AppState {
        store: Arc::clone(&store),
        model: model_rx.clone(),
        registry: Arc::new(registry),
        ingest_listening: false.into(),
        ingest: ingest_handle,
        options: config.options.clone(),
        rollout: board_rx.clone(),
        pull_requests: pull_requests_rx.clone(),
        map: map_rx,
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let resign = leadership.resign();
    tokio::spawn({
        let resign = resign.clone();
        async move {
            shutdown.await;
            let _ = stop_tx.send(true);
            // A leader hands the Lease over now, not after it expires.
            resign.ask();
        }
    });
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // Singleton work (retention, the alert checks, the pull-request loop) runs on the leader
    // only: `leader::while_leading` starts it with leadership and aborts it when lost.
    let leading = leadership.leading();
    let _prune = AbortOnDrop(tokio::spawn(leader::while_leading(leading.clone(), {
        let (store, retention) = (Arc::clone(&store), config.retention);
        move || prune_loop(Arc::clone(&store), retention)
    })));
    let _drift = AbortOnDrop(tokio::spawn(drift::watch(
        Arc::clone(&store),
        model_rx.clone(),
        drift_rx,
        drift_metrics,
        drift::Outputs {
            sinks: alert_sinks.clone(),
            pull_requests: pull_requests_rx.clone(),
            recurrences: recurrences_tx.clone(),
            recommend: config.options.clone(),
        },
    )));
    let check_options = alert::Options {
        interval: config.check_interval,
        repeat: config.alerts.repeat,
        retention: config.retention,
        recommend: config.options.clone(),
    };
    let _check = AbortOnDrop(tokio::spawn(leader::while_leading(leading.clone(), {
        let (store, model) = (Arc::clone(&store), model_rx.clone());
        move || {
            alert::watch(
                Arc::clone(&store),
                model.clone(),
                check_options.clone(),
                alert_metrics.clone(),
                alert_sinks.clone(),
                pull_requests_rx.clone(),
                recurrences_tx.clone(),
            )
        }
    })));

    let _shadow = AbortOnDrop(tokio::spawn(shadow::watch(
        Arc::clone(&store),
        model_rx.clone(),
        proposal_rx,
        config.check_interval,
        config.rollout.min_observation,
        shadow_metrics.clone(),
        board_tx,
    )));
    // The loop follows the range files; nothing else re-reads them.
    let (ranges_rx, _ranges_task) = match (&config.ranges, &config.pull_requests) {
        (Some(r), Some(_)) if !r.files.is_empty() => {
            let (tx, rx) = watch::channel(Arc::clone(&config.options.published));
            let task = AbortOnDrop(tokio::spawn(ranges::watch(r.clone(), tx)));
            (Some(rx), Some(task))
        }
        _ => (None, None),
    };
    let _pull_requests = match (&config.pull_requests, recurrences_rx) {
        (Some(options), Some(recurrences)) => {
            // The loop takes its receiver by value: each term gets a fresh one, relayed.
            let recurrences = Arc::new(tokio::sync::Mutex::new(recurrences));
            let (store, model, options) =
                (Arc::clone(&store), model_rx.clone(), Arc::clone(options));
            Some(AbortOnDrop(tokio::spawn(leader::while_leading(
                leading.clone(),
                move || {
                    let (rx, relay) = leader::relay(Arc::clone(&recurrences), RECURRENCES);
                    let run = propose::watch(
                        Arc::clone(&store),
                        model.clone(),
                        board_rx.clone(),
                        rx,
                        Arc::clone(&options),
                        pr_metrics.clone(),
                        pull_requests_tx.clone(),
                        ranges_rx.clone(),
                    );
                    async move {
                        tokio::join!(relay, run);
                    }
                },
            ))))
        }
        _ => None,
    };
    // Without `--proposed` the sender is dropped: the board is evaluated without a proposal.
    let _reload = match (&config.rollout.proposed, proposal) {
        (Some(source), Some(_)) => Some(AbortOnDrop(tokio::spawn(shadow::reload(
            source.clone(),
            config.rollout.poll,
            proposal_tx,
            shadow_metrics,
        )))),
        _ => {
            drop(proposal_tx);
            None
        }
    };

    let http_task = tokio::spawn(conn::serve_http(
        http_listener,
        http::router(Arc::clone(&state)),
        config.limits.handshake_timeout,
        stop_rx.clone(),
    ));
    let ui_router = ui_http::ui_router(Arc::clone(&state), http::ReadLimits::default(), ui_gate);
    let header_timeout = config.limits.handshake_timeout;
    let ui_task = match &ui_tls {
        Some(tls) => tokio::spawn(conn::serve_https(
            ui_listener,
            ui_router,
            tls.subscribe(),
            header_timeout,
            stop_rx.clone(),
        )),
        None => tokio::spawn(conn::serve_http(
            ui_listener,
            ui_router,
            header_timeout,
            stop_rx.clone(),
        )),
    };

    // Ingest starts once the model exists, so every batch is attributed to workloads.
    let mut ready = model_rx.clone();
    let mut stop = stop_rx.clone();
    tokio::select! {
        r = ready.wait_for(Option::is_some) => { let _ = r; }
        _ = stop.wait_for(|s| *s) => {}
    }
    // Agents need one stream each; the windows bound what a connection buffers below tonic
    // (see `conn`); keepalive pings find clients that went away without closing.
    let server = tonic::transport::Server::builder()
        .max_concurrent_streams(config.limits.max_streams_per_connection)
        .initial_connection_window_size(conn::CONNECTION_WINDOW)
        .initial_stream_window_size(conn::CONNECTION_WINDOW)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    state.ingest_listening.store(true, Ordering::Release);
    tracing::info!(grpc = %config.listen, http = %config.http, ui = %config.ui, ui_auth = %ui_auth, ui_tls = ui_tls.is_some(), store = %config.store, tls = tls.is_some(), agent_auth = %agent_auth, "leash serve ready");
    let grpc_result = match &tls {
        Some(reloading) => {
            let current = reloading.subscribe();
            let timeout = config.limits.handshake_timeout;
            let incoming = conn::incoming(grpc, Arc::clone(&connections), move |tcp| {
                leash_records::tls::handshake(tcp, current.borrow().clone(), timeout)
            });
            server
                .layer(
                    conn::StreamLayer::<leash_records::tls::TlsConnectInfo>::new(Arc::clone(
                        &connections,
                    )),
                )
                .serve_with_incoming_shutdown(ingest, incoming, stopped(stop_rx.clone()))
                .await
        }
        None => {
            let incoming = conn::incoming(grpc, Arc::clone(&connections), |tcp| async move {
                let _ = tcp.set_nodelay(true);
                Ok(tcp)
            });
            server
                .layer(
                    conn::StreamLayer::<tonic::transport::server::TcpConnectInfo>::new(Arc::clone(
                        &connections,
                    )),
                )
                .serve_with_incoming_shutdown(ingest, incoming, stopped(stop_rx.clone()))
                .await
        }
    };
    state.ingest_listening.store(false, Ordering::Release);
    let http_result = http_task.await;
    let ui_result = ui_task.await;
    // Also when a listener failed: the election ends with the process.
    resign.ask();
    resign.finished().await;
    grpc_result.map_err(|source| Error::Grpc {
        addr: config.listen,
        source,
    })?;
    http_result.map_err(|e| Error::Http {
        addr: config.http,
        source: std::io::Error::other(e),
    })?;
    ui_result.map_err(|e| Error::Http {
        addr: config.ui,
        source: std::io::Error::other(e),
    })
}

/// The gRPC ingest service over `store`, attributing with the current model, and a handle to
/// it for the health check.
fn ingest_service(
    identity: crate::ingest::identity::Identity,
    config: &Config,
    store: Arc<dyn Store>,
    model: ModelRx,
    registry: &mut Registry,
    drift: tokio::sync::mpsc::Sender<crate::ingest::Committed>,
) -> Result<(
    leash_records::wire::v1::ingest_server::IngestServer<crate::ingest::IngestService>,
    crate::ingest::IngestService,
)> {
    let service = crate::ingest::IngestService::with_identity(
        store,
        model,
        crate::ingest::Limits {
            max_records: config.max_batch_records,
            max_message_bytes: config.max_message_bytes,
            ..crate::ingest::Limits::default()
        },
        Some(drift),
        identity,
    )
    .map_err(Error::Writer)?;
    service.register(registry);
    Ok((service.clone().into_server(), service))
}

/// Aborts a background task when dropped, so `run` leaves nothing behind.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
