//! The `leash.v1.Ingest` gRPC service: agents stream batches, the recommender commits each one
//! to its [`Store`] and then acknowledges it.
//!
//! Per batch, in stream order: check the record count against [`Limits`] → validate and
//! convert the wire records ([`leash_records::wire`]) → turn them into observations against
//! the current cluster model → [`Store::commit`] (on a blocking thread) → `Ack`. The ack is
//! sent only after the commit returned, so an agent that never got it resends the batch and
//! the store's batch ids make the resend a no-op (`Ack.duplicate`).
//!
//! A rejected batch ends only its own stream, with a status naming the batch and the record:
//! malformed → `INVALID_ARGUMENT`, too many records or too large a message →
//! `RESOURCE_EXHAUSTED`, store failure → `UNAVAILABLE` (the agent reconnects and resends).

pub mod metrics;

use std::{pin::Pin, sync::Arc, time::Instant};

use leash_records::{
    tls::TlsConnectInfo,
    wire::{
        self,
        v1::{
            self,
            ingest_server::{Ingest, IngestServer},
        },
    },
};
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::cluster::{Cluster, ClusterState};
use crate::store::{BatchId, Commit, Store, observe};
pub use metrics::{Cause, Metrics};

/// Bounds on what one agent may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most records (flows + DNS) in one batch.
    pub max_records: usize,
    /// Largest encoded `Batch` accepted, in bytes (gRPC's maximum decoding message size).
    pub max_message_bytes: usize,
}

impl Default for Limits {
    /// 20,000 records and 16 MiB: an agent's batches are a few thousand records of ~100 bytes.
    fn default() -> Self {
        Limits {
            max_records: 20_000,
            max_message_bytes: 16 << 20,
        }
    }
}

/// The ingest service; clone it freely (clones share store, cluster and metrics).
#[derive(Clone)]
pub struct IngestService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    cluster: watch::Receiver<Option<Arc<ClusterState>>>,
    limits: Limits,
    metrics: Metrics,
}

impl IngestService {
    /// A service committing into `store`, attributing records with the cluster model `cluster`
    /// holds when each batch arrives.
    pub fn new(
        store: Arc<dyn Store>,
        cluster: watch::Receiver<Option<Arc<ClusterState>>>,
        limits: Limits,
    ) -> Self {
        IngestService {
            inner: Arc::new(Inner {
                store,
                cluster,
                limits,
                metrics: Metrics::default(),
            }),
        }
    }

    /// The service's metrics, to register with [`Metrics::register`].
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Registers the service's metrics under `leash_ingest_*`.
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
        let peer = describe_peer(&request);
        let mut batches = request.into_inner();
        let inner = self.inner.clone();
        // Acks queue here while the agent reads them; a few suffice as batches are sequential.
        let (tx, rx) = mpsc::channel(8);
        tokio::spawn(async move {
            tracing::debug!(%peer, "ingest stream opened");
            loop {
                let next = tokio::select! {
                    next = batches.message() => next,
                    // The agent went away: stop reading its stream.
                    () = tx.closed() => return,
                };
                let result = match next {
                    Ok(Some(batch)) => inner.ingest(batch).await,
                    Ok(None) => {
                        tracing::debug!(%peer, "ingest stream closed by the agent");
                        return;
                    }
                    Err(status) => match inner.stream_error(status) {
                        Some(status) => Err(status),
                        None => return,
                    },
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
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl Inner {
    async fn ingest(self: &Arc<Self>, batch: v1::Batch) -> Result<v1::Ack, Status> {
        let records = batch.flows.len() + batch.dns.len();
        if records > self.limits.max_records {
            self.metrics.rejected(Cause::TooManyRecords);
            return Err(Status::resource_exhausted(format!(
                "{}: {records} records exceed the limit of {} per batch",
                describe_batch(batch.id.as_ref()),
                self.limits.max_records
            )));
        }
        // `leash serve` accepts agents only once the model exists; stay total regardless.
        let Some(state) = self.cluster.borrow().clone() else {
            return Err(Status::unavailable(
                "the cluster model is not built yet; retry",
            ));
        };
        let this = self.clone();
        // Conversion and commit are CPU and disk work: keep them off the async workers.
        tokio::task::spawn_blocking(move || this.commit(batch, &state.cluster))
            .await
            .map_err(|e| Status::internal(format!("ingest task failed: {e}")))?
    }

    fn commit(&self, batch: v1::Batch, cluster: &Cluster) -> Result<v1::Ack, Status> {
        let name = describe_batch(batch.id.as_ref());
        let batch = wire::batch_from_wire(batch).map_err(|e| {
            self.metrics.rejected(Cause::Malformed);
            Status::invalid_argument(format!("{name}: {e}"))
        })?;
        let (flows, dns) = observe::from_batch(cluster, &batch.flows, &batch.dns);
        let id = BatchId {
            node: batch.id.node.clone(),
            boot_id: batch.id.boot_id.clone(),
            seq: batch.id.seq,
        };
        let start = Instant::now();
        let outcome = self.store.commit(&id, &flows, &dns).map_err(|e| {
            self.metrics.rejected(Cause::Store);
            Status::unavailable(format!("{name}: {e}"))
        })?;
        self.metrics.commit_took(start.elapsed().as_secs_f64());
        let duplicate = match outcome {
            Commit::Stored => {
                self.metrics.stored(batch.flows.len(), batch.dns.len());
                false
            }
            Commit::Duplicate => {
                self.metrics.duplicate();
                true
            }
        };
        Ok(v1::Ack {
            id: Some(batch.id),
            duplicate,
        })
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
        match status.code() {
            Code::Cancelled | Code::Unknown => {
                tracing::debug!("ingest stream ended: {}", status.message());
                None
            }
            _ => Some(status),
        }
    }
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
