//! Group commit: one writer thread commits every batch that is ready, from all agents, in one
//! store transaction.
//!
//! A commit's fixed cost is mostly the durable write of the pages it changed, and consecutive
//! batches change many of the same pages, so committing the batches that queued up while the
//! previous transaction ran costs little more than committing one. Streams hand their
//! converted batches to the [`Committer`] in order and get each batch's ack back through a
//! oneshot channel; the queue is FIFO, so every agent's batches commit in its stream's order.
//!
//! While few records wait, the writer holds a group open for up to [`COMMIT_DELAY`] so that
//! batches arriving together share a transaction.
//!
//! One batch must never fail others: when a group's transaction fails, its batches are
//! committed again one by one, so only the batch that caused the failure is rejected.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use leash_records::wire::v1;
use tokio::sync::{mpsc, mpsc::error::TryRecvError, oneshot};
use tonic::Status;

use super::metrics::{Cause, Metrics};
use crate::store::{BatchCommit, BatchId, Commit, DnsObservation, FlowObservation, Store};

/// Batches waiting for the writer; senders wait when it is full (backpressure to the streams).
const QUEUE: usize = 64;

/// Most batches in one transaction.
const MAX_GROUP_BATCHES: usize = 64;

/// Most records in one transaction, so that a group's transaction stays short.
const MAX_GROUP_RECORDS: usize = 100_000;

/// Below this many records, the writer waits up to [`COMMIT_DELAY`] for more batches before
/// committing (as databases delay a commit to group it with others): under load, batches
/// arrive within milliseconds of each other and one transaction then serves several.
const MIN_GROUP_RECORDS: usize = 16_384;

/// The longest a batch waits for others to share its transaction (added to its ack's delay
/// only when fewer than [`MIN_GROUP_RECORDS`] records are waiting).
const COMMIT_DELAY: Duration = Duration::from_millis(5);

/// A converted batch on its way to the store, and where its ack goes.
pub(crate) struct Job {
    /// The id the store records.
    pub id: BatchId,
    /// The id the ack echoes.
    pub ack_id: v1::BatchId,
    /// `batch node/boot/seq`, for statuses.
    pub name: String,
    /// The batch's flow observations.
    pub flows: Vec<FlowObservation>,
    /// The batch's DNS observations.
    pub dns: Vec<DnsObservation>,
    /// The batch's flow and DNS record counts (before aggregation), for metrics and the
    /// group limits.
    pub records: (usize, usize),
    /// Receives the ack, or the status that ends the agent's stream.
    pub reply: oneshot::Sender<Result<v1::Ack, Status>>,
}

impl Job {
    /// Flow and DNS records together.
    fn record_count(&self) -> usize {
        self.records.0 + self.records.1
    }
}

/// The handle streams submit jobs through; the writer thread ends when every handle is gone.
#[derive(Clone)]
pub(crate) struct Committer {
    queue: mpsc::Sender<Job>,
    metrics: Metrics,
    /// Cleared when the writer thread ends, however it ends.
    alive: Arc<AtomicBool>,
}

/// Clears the flag when dropped: on the writer's return and on its unwinding alike.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Committer {
    /// Starts the writer thread for `store`.
    pub fn start(store: Arc<dyn Store>, metrics: Metrics) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let writer = metrics.clone();
        // The writer's own clock for the commit delay; its commits block only its thread.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(Arc::clone(&alive));
        std::thread::Builder::new()
            .name("leash-ingest-commit".to_owned())
            .spawn(move || {
                let _guard = guard;
                runtime.block_on(run(jobs, store.as_ref(), &writer));
            })?;
        Ok(Committer {
            queue,
            metrics,
            alive,
        })
    }

    /// Whether the writer thread is still running (it only ends when every handle is gone,
    /// or by a panic, after which no batch could be stored again).
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Queues `job` (waiting while the queue is full). When the writer is gone, the job's
    /// reply says so.
    pub async fn submit(&self, job: Job) {
        self.metrics.queued(1);
        if let Err(mpsc::error::SendError(job)) = self.queue.send(job).await {
            self.metrics.queued(-1);
            let _ = job.reply.send(Err(Status::unavailable(format!(
                "{}: the store writer has stopped",
                job.name
            ))));
        }
    }
}

/// The writer: takes the first waiting job, then what else is queued (waiting up to
/// [`COMMIT_DELAY`] while the group is small) up to the group limits, commits them together
/// and replies to each.
async fn run(mut jobs: mpsc::Receiver<Job>, store: &dyn Store, metrics: &Metrics) {
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP_BATCHES);
    while let Some(first) = jobs.recv().await {
        let deadline = Instant::now() + COMMIT_DELAY;
        let mut records = first.record_count();
        group.push(first);
        while group.len() < MAX_GROUP_BATCHES && records < MAX_GROUP_RECORDS {
            let next = match jobs.try_recv() {
                Ok(job) => Some(job),
                Err(TryRecvError::Empty) if records < MIN_GROUP_RECORDS => {
                    tokio::time::timeout_at(deadline.into(), jobs.recv())
                        .await
                        .ok()
                        .flatten()
                }
                Err(_) => None,
            };
            let Some(job) = next else { break };
            records += job.record_count();
            group.push(job);
        }
        metrics.queued(-i64::try_from(group.len()).unwrap_or(i64::MAX));
        commit_group(store, metrics, &mut group);
    }
}

fn commit_group(store: &dyn Store, metrics: &Metrics, group: &mut Vec<Job>) {
    let batches: Vec<BatchCommit<'_>> = group
        .iter()
        .map(|j| BatchCommit {
            id: &j.id,
            flows: &j.flows,
            dns: &j.dns,
        })
        .collect();
    let start = Instant::now();
    let outcomes = match store.commit_many(&batches) {
        Ok(outcomes) if outcomes.len() == group.len() => {
            metrics.commit_took(start.elapsed().as_secs_f64(), group.len());
            outcomes.into_iter().map(Ok).collect()
        }
        Ok(_) | Err(_) if group.len() > 1 => {
            // Find the batch at fault: each on its own, so the others still get stored.
            group
                .iter()
                .map(|j| {
                    let start = Instant::now();
                    let outcome = store.commit(&j.id, &j.flows, &j.dns);
                    metrics.commit_took(start.elapsed().as_secs_f64(), 1);
                    outcome.map_err(|e| e.to_string())
                })
                .collect()
        }
        Ok(outcomes) => vec![Err(format!(
            "the store returned {} outcomes for one batch",
            outcomes.len()
        ))],
        Err(e) => vec![Err(e.to_string())],
    };
    drop(batches);
    for (job, outcome) in group.drain(..).zip(outcomes) {
        let reply = match outcome {
            Ok(Commit::Stored) => {
                metrics.stored(job.records.0, job.records.1);
                Ok(v1::Ack {
                    id: Some(job.ack_id),
                    duplicate: false,
                    rejected: Vec::new(),
                })
            }
            Ok(Commit::Duplicate) => {
                metrics.duplicate();
                Ok(v1::Ack {
                    id: Some(job.ack_id),
                    duplicate: true,
                    rejected: Vec::new(),
                })
            }
            Err(e) => {
                metrics.rejected(Cause::Store);
                Err(Status::unavailable(format!("{}: {e}", job.name)))
            }
        };
        // The agent may have gone; its batch is stored (or not) either way.
        let _ = job.reply.send(reply);
    }
}
