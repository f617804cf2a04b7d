//! The `leash.v1.Ingest` gRPC service: agents stream batches, the recommender commits each one
//! to its [`Store`] and then acknowledges it.
//!
//! Per batch, in stream order: check the record count against [`Limits`] → validate and
//! convert the wire records ([`leash_records::wire`]) → turn them into observations against
//! the current cluster model (on a blocking thread) → the store's writer thread, which
//! commits all batches waiting from every stream in one transaction ([`Store::commit_many`],
//! a group commit) → `Ack`. A stream keeps reading while its earlier batches wait for their
//! commit (up to a few in flight), and acks go out in stream order. The ack is sent only
//! after the commit returned, so an agent that never got it resends the batch and the
//! store's batch ids make the resend a no-op (`Ack.duplicate`).
//!
//! Records are validated one by one ([`wire::grouped_batch_from_wire_with`]): an invalid record
//! (a name that is no DNS or Kubernetes name, a bound exceeded, a bad field) is refused alone,
//! the batch's other records are stored, and the ack lists the refused ones (`Ack.rejected`:
//! index, reason, field). A batch whose records are all refused is still acknowledged. The
//! refused records are counted by reason (`leash_ingest_rejected_records_total`) and logged
//! once per batch, as a summary.
//!
//! A rejected batch ends only its own stream, with a status naming the batch: a bad batch id
//! or a message that does not decode → `INVALID_ARGUMENT`, too many records or too large a
//! message → `RESOURCE_EXHAUSTED`, store failure → `UNAVAILABLE` (the agent reconnects and
//! resends).
//!
//! Who may write which node's batches is [`identity`]'s (`--agent-auth`): with `token`, a
//! stream without a valid agent token is `UNAUTHENTICATED` (`UNAVAILABLE` while the API server
//! cannot review it), another ServiceAccount's or a token bound to no node `PERMISSION_DENIED`,
//! both before any batch is read; a batch of another node than the token's is refused with
//! `PERMISSION_DENIED`, permanent (`leash_ingest_rejected_batches_total{cause="wrong_node"}`).
//!
//! Readiness ([`IngestService::ready`]): the service is not ready while a batch has waited for
//! its commit longer than [`Limits::slow_commit`], which a slow store or a backlog causes; it
//! is ready again once the writer catches up. Only a dead writer makes it unhealthy
//! ([`IngestService::writer_alive`]).

mod committer;
pub mod identity;
pub mod metrics;

use std::{pin::Pin, sync::Arc, time::Duration};

use leash_records::error::Chain;
use leash_records::{
    PodRef, names,
    tls::TlsConnectInfo,
    wire::{
        self,
        v1::{
            self,
            ingest_server::{Ingest, IngestServer},
        },
    },
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::cluster::Cluster;
use crate::observations;
use crate::state::ClusterState;
use crate::store::{BatchId, Store, WorkloadRef};
use committer::{Committer, Job};
use identity::{Caller, Identity, Refusal};
pub use metrics::{Cause, Metrics};

/// Bounds on what one agent may send, and on how long the store may keep a batch waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most records (flows + DNS) in one batch.
    pub max_records: usize,
    /// Largest encoded `Batch` accepted, in bytes (gRPC's maximum decoding message size).
    pub max_message_bytes: usize,
    /// The service is not ready ([`IngestService::ready`]) while a batch has waited this long
    /// for its commit.
    pub slow_commit: Duration,
}

impl Default for Limits {
    /// 20,000 records and 16 MiB: an agent's batches are a few thousand records of ~100 bytes.
    /// Slow after 10 s: a commit normally takes milliseconds, and agents' acks wait for it.
    fn default() -> Self {
        Limits {
            max_records: 20_000,
            max_message_bytes: 16 << 20,
            slow_commit: Duration::from_secs(10),
        }
    }
}

/// A stored batch's observations, for those who act on them as they arrive.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    /// The batch's flow observations.
    pub flows: Vec<crate::store::FlowObservation>,
    /// The batch's DNS observations.
    pub dns: Vec<crate::store::DnsObservation>,
}

/// The ingest service; clone it freely (clones share store, cluster and metrics).
#[derive(Clone)]
pub struct IngestService {
    inner: Arc<Inner>,
}

struct Inner {
    committer: Committer,
    cluster: watch::Receiver<Option<Arc<ClusterState>>>,
    limits: Limits,
    metrics: Metrics,
    identity: Identity,
}

impl IngestService {
    /// A service committing into `store`, attributing records with the cluster model `cluster`
    /// holds when each batch arrives.
    ///
    /// Starts the store's writer thread, which group-commits the batches of all streams;
    /// fails when that thread cannot be started.
    pub fn new(
        store: Arc<dyn Store>,
        cluster: watch::Receiver<Option<Arc<ClusterState>>>,
        limits: Limits,
    ) -> std::io::Result<Self> {
        Self::with_committed(store, cluster, limits, None)
    }

    /// [`IngestService::new`], and each stored batch goes to `committed` after its commit,
    /// before its ack (`leash serve`'s drift check). The writer never waits
    /// for it: when the channel is full, the batch is not sent.
    pub fn with_committed(
        store: Arc<dyn Store>,
        cluster: watch::Receiver<Option<Arc<ClusterState>>>,
        limits: Limits,
        committed: Option<mpsc::Sender<Committed>>,
    ) -> std::io::Result<Self> {
        Self::with_identity(store, cluster, limits, committed, Identity::mtls())
    }

    /// [`IngestService::with_committed`], with agents authenticated by `identity`
    /// (`--agent-auth`).
    pub fn with_identity(
        store: Arc<dyn Store>,
        cluster: watch::Receiver<Option<Arc<ClusterState>>>,
        limits: Limits,
        committed: Option<mpsc::Sender<Committed>>,
        identity: Identity,
    ) -> std::io::Result<Self> {
        let metrics = Metrics::default();
        Ok(IngestService {
            inner: Arc::new(Inner {
                committer: Committer::start(store, metrics.clone(), committed)?,
                cluster,
                limits,
                metrics,
                identity,
            }),
        })
    }

    /// The service's metrics, to register with [`Metrics::register`].
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Whether the store's writer thread still runs. It stops only with a bug (a panic); then
    /// no batch can be stored any more, and the process should be restarted.
    pub fn writer_alive(&self) -> bool {
        self.inner.committer.alive()
    }

    /// Whether ingest keeps up, for `/readyz`: an error saying why not when the writer has
    /// stopped, or when a batch has waited longer than [`Limits::slow_commit`] for its
    /// commit (the writer is stuck in a slow commit, or far behind). A slow writer is not a
    /// dead one: it makes the server not ready, never unhealthy.
    pub fn ready(&self) -> Result<(), String> {
        if !self.writer_alive() {
            return Err("ingest store writer stopped".to_owned());
        }
        match self.inner.committer.waiting() {
            Some(waited) if waited > self.inner.limits.slow_commit => Err(format!(
                "ingest store writer slow: a batch has waited {:.1} s for its commit (more than {} s)",
                waited.as_secs_f64(),
                self.inner.limits.slow_commit.as_secs_f64()
            )),
            _ => Ok(()),
        }
    }

    /// Registers the service's metrics under `ingest_*` of `registry` (`leash_ingest_*` in
    /// `leash serve`'s registry, prefixed `leash`).
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        self.inner.metrics.register(registry);
    }

    /// The tonic server for `Server::add_service`, with the maximum message size applied.
    pub fn into_server(self) -> IngestServer<IngestService> {
        let max = self.inner.limits.max_message_bytes;
        IngestServer::new(self).max_decoding_message_size(max)
    }
}

/// The stream of acks of one `Push` call.
pub type AckStream = Pin<Box<dyn Stream<Item = Result<v1::Ack, Status>> + Send>>;

#[tonic::async_trait]
impl Ingest for IngestService {
    type PushStream = AckStream;

    async fn push(
        &self,
        request: Request<Streaming<v1::Batch>>,
    ) -> Result<Response<AckStream>, Status> {
        let mut peer = describe_peer(&request);
        let caller = match self.inner.identity.authenticate(request.metadata()).await {
            Ok(caller) => caller,
            Err(refusal) => {
                self.inner.count(&refusal);
                tracing::warn!(%peer, cause = refusal.cause(), "agent stream refused: {}", Chain(&refusal));
                return Err(refusal.status());
            }
        };
        if let Some(node) = caller.node() {
            peer = format!("node {node} ({peer})");
        }
        let batches = request.into_inner();
        // Acks queue here while the agent reads them; a few suffice as batches are sequential.
        let (tx, rx) = mpsc::channel(8);
        // Batches read but not yet answered, in stream order: the stream keeps reading (and
        // converting) while earlier batches wait for their group commit.
        let (pending_tx, mut pending) = mpsc::channel::<Pending>(MAX_IN_FLIGHT);
        tokio::spawn(
            self.inner
                .clone()
                .read(batches, pending_tx, peer.clone(), caller),
        );
        tokio::spawn(async move {
            while let Some(reply) = pending.recv().await {
                let result = match reply.await {
                    Ok(result) => result,
                    Err(_) => Err(Status::internal("ingest task failed")),
                };
                match result {
                    Ok(ack) => {
                        if tx.send(Ok(ack)).await.is_err() {
                            return;
                        }
                    }
                    Err(status) => {
                        tracing::warn!(%peer, code = ?status.code(), "rejected: {}", status.message());
                        let _ = tx.send(Err(status)).await;
                        // Dropping `pending` stops the reader: nothing after a rejected
                        // batch is read.
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Batches one stream may have read but not yet answered.
const MAX_IN_FLIGHT: usize = 8;

/// The answer to one batch, once it is known.
type Pending = oneshot::Receiver<Result<v1::Ack, Status>>;

/// A reply that is already known (a rejection before the store).
fn ready(result: Result<v1::Ack, Status>) -> Pending {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(result);
    rx
}

impl Inner {
    /// Reads one agent's stream: each batch is checked, converted and queued for the store,
    /// and its pending answer handed on in order. Ends with the stream, after an error, or
    /// when nobody waits for answers any more.
    async fn read(
        self: Arc<Self>,
        mut batches: Streaming<v1::Batch>,
        pending: mpsc::Sender<Pending>,
        peer: String,
        caller: Caller,
    ) {
        tracing::debug!(%peer, "ingest stream opened");
        loop {
            let next = tokio::select! {
                next = batches.message() => next,
                // The answers are no longer read (the agent went away or a batch was
                // rejected): stop reading its stream.
                () = pending.closed() => return,
            };
            let (reply, last) = match next {
                Ok(Some(batch)) => match self.authorize(&caller, &batch).await {
                    Ok(()) => (self.submit(batch).await, false),
                    Err(status) => (ready(Err(status)), true),
                },
                Ok(None) => {
                    tracing::debug!(%peer, "ingest stream closed by the agent");
                    return;
                }
                Err(status) => match self.stream_error(status) {
                    Some(status) => (ready(Err(status)), true),
                    None => return,
                },
            };
            if pending.send(reply).await.is_err() || last {
                return;
            }
        }
    }

    /// Whether `caller` may write `batch` ([`Identity::authorize`]); a refusal is counted.
    async fn authorize(&self, caller: &Caller, batch: &v1::Batch) -> Result<(), Status> {
        if matches!(caller, Caller::Any) && self.identity.mode() == identity::AgentAuth::Mtls {
            return Ok(());
        }
        let name = describe_batch(batch.id.as_ref());
        self.identity
            .authorize(caller, batch.id.as_ref(), &name)
            .await
            .map_err(|refusal| {
                self.count(&refusal);
                refusal.status()
            })
    }

    /// Counts a refusal: a batch of another node as a rejected batch, the rest as a refused
    /// stream.
    fn count(&self, refusal: &Refusal) {
        match refusal {
            Refusal::WrongNode { .. } => self.metrics.rejected(Cause::WrongNode),
            other => self.metrics.refused_stream(other.cause()),
        }
    }

    /// Checks and converts one batch, then queues it for the group commit.
    async fn submit(self: &Arc<Self>, batch: v1::Batch) -> Pending {
        let records = batch.record_count();
        if records > self.limits.max_records {
            self.metrics.rejected(Cause::TooManyRecords);
            return ready(Err(Status::resource_exhausted(format!(
                "{}: {records} records exceed the limit of {} per batch",
                describe_batch(batch.id.as_ref()),
                self.limits.max_records
            ))));
        }
        // `leash serve` accepts agents only once the model exists; stay total regardless.
        let Some(state) = self.cluster.borrow().clone() else {
            return ready(Err(Status::unavailable(
                "the cluster model is not built yet; retry",
            )));
        };
        let this = self.clone();
        // Conversion is CPU work: keep it off the async workers.
        match tokio::task::spawn_blocking(move || this.convert(batch, &state.cluster)).await {
            Ok(Ok((job, answer))) => {
                self.committer.submit(job).await;
                answer
            }
            Ok(Err(status)) => ready(Err(status)),
            Err(e) => ready(Err(Status::internal(format!(
                "ingest task failed: {}",
                Chain(&e)
            )))),
        }
    }

    /// Validates and converts a batch into the store's job, and the receiver of its answer.
    /// Invalid records are left out and listed in the job, for the ack.
    fn convert(&self, batch: v1::Batch, cluster: &Cluster) -> Result<(Job, Pending), Status> {
        let name = describe_batch(batch.id.as_ref());
        // The workload a pod's records are stored under comes from the cluster model, where
        // its kind and name may come from the pod's owner references, which the API server
        // does not check as names: check them before they reach the store.
        let mut last: Option<(PodRef, Result<(), String>)> = None;
        let check = |pod: &PodRef| match &last {
            Some((p, verdict)) if p == pod => verdict.clone(),
            _ => {
                let verdict = check_workload(&observations::workload_ref(cluster, pod));
                last = Some((pod.clone(), verdict.clone()));
                verdict
            }
        };
        let batch = wire::grouped_batch_from_wire_with(batch, check).map_err(|e| {
            self.metrics.rejected(Cause::Malformed);
            Status::invalid_argument(format!("{name}: {}", Chain(&e)))
        })?;
        let (flows, dns) =
            observations::from_groups(cluster, &batch.id.node, &batch.groups, &batch.dns);
        let records = (batch.flow_count(), batch.dns.len());
        let id = BatchId {
            node: batch.id.node.clone(),
            boot_id: batch.id.boot_id.clone(),
            seq: batch.id.seq,
        };
        let (reply, answer) = oneshot::channel();
        let job = Job {
            id,
            ack_id: batch.id,
            name,
            flows,
            dns,
            records,
            refused: batch.refused,
            queued_at: std::time::Instant::now(),
            reply,
        };
        Ok((job, answer))
    }

    /// Maps an error reading the stream to the status to end it with, or `None` when the
    /// agent itself ended the stream (cancelled, reset) and nobody is listening.
    fn stream_error(&self, status: Status) -> Option<Status> {
        // tonic reports an oversized message as OUT_OF_RANGE; to the agent that is a resource
        // limit of this server.
        if status.code() == Code::OutOfRange && status.message().contains("too large") {
            self.metrics.rejected(Cause::TooLarge);
            return Some(Status::resource_exhausted(format!(
                "batch message too large (the limit is {} bytes): {}",
                self.limits.max_message_bytes,
                status.message()
            )));
        }
        // Per the gRPC spec tonic reports a message that does not parse as INTERNAL; to the
        // agent it is a malformed batch.
        if status.code() == Code::Internal
            && status
                .message()
                .starts_with("failed to decode Protobuf message")
        {
            self.metrics.rejected(Cause::Malformed);
            return Some(Status::invalid_argument(format!(
                "batch does not decode as leash.v1.Batch: {}",
                status.message()
            )));
        }
        match status.code() {
            Code::Cancelled | Code::Unknown => {
                tracing::debug!("ingest stream ended: {}", status.message());
                None
            }
            _ => Some(status),
        }
    }
}

/// Checks the names a workload is stored under: a Kubernetes namespace and object name, and a
/// kind made of letters and digits. The problem names the part, with the value escaped.
fn check_workload(w: &WorkloadRef) -> Result<(), String> {
    let shown = |what: &str, value: &str, e: names::NameError| {
        format!("{what} {}: {}", names::display_prefix(value), Chain(&e))
    };
    names::dns1123_label(&w.namespace).map_err(|e| shown("namespace", &w.namespace, e))?;
    // Kinds are CamelCase words (`Deployment`); no Kubernetes name rule covers them.
    if w.kind.is_empty()
        || w.kind.len() > names::MAX_LABEL
        || !w.kind.bytes().all(|c| c.is_ascii_alphanumeric())
    {
        return Err(format!(
            "kind {}: not 1 to {} letters and digits",
            names::display_prefix(&w.kind),
            names::MAX_LABEL
        ));
    }
    names::dns1123_subdomain(&w.name).map_err(|e| shown("name", &w.name, e))
}

fn describe_batch(id: Option<&v1::BatchId>) -> String {
    match id {
        Some(id) => format!("batch {}/{}/{}", id.node, id.boot_id, id.seq),
        None => "batch without id".to_owned(),
    }
}

/// The client certificate's common name and the remote address, for logs.
fn describe_peer<T>(request: &Request<T>) -> String {
    match request.extensions().get::<TlsConnectInfo>() {
        Some(info) => {
            let cn = info
                .peer
                .as_ref()
                .and_then(|p| p.common_name.clone())
                .unwrap_or_default();
            match info.remote_addr {
                Some(addr) => format!("{cn}@{addr}"),
                None => cn,
            }
        }
        None => request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
    }
}
