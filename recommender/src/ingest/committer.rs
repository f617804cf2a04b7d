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
//!
//! The writer publishes when the batch it is working on was queued ([`Committer::waiting`]):
//! the queue is FIFO, so that batch is the oldest one without an answer, and how long it has
//! waited is how far behind the writer is.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use leash_records::error::Chain;
use leash_records::wire::{self, Refused, v1};
use tokio::sync::{mpsc, mpsc::error::TryRecvError, oneshot};
use tonic::Status;

use super::metrics::{Cause, Metrics};
use crate::store::{
    BatchCommit, BatchId, Commit, DnsObservation, Error as StoreError, FlowObservation, Store,
};

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
    /// The batch's valid flow and DNS record counts (before aggregation), for metrics and
    /// the group limits.
    pub records: (usize, usize),
    /// The batch's refused records, for the ack.
    pub refused: Vec<Refused>,
    /// When the batch was queued for the writer (set by [`Committer::submit`]).
    pub queued_at: Instant,
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
    /// When the batch the writer is working on was queued.
    busy: Arc<Busy>,
    /// Why the store's last commit failed, while it fails.
    fault: Arc<Fault>,
}

/// The store's transient failure (a full disk, a read-only file system, a lost database
/// connection) since its first failed commit, cleared by the next commit that succeeds.
#[derive(Default)]
pub(crate) struct Fault(std::sync::Mutex<Option<(chrono::DateTime<chrono::Utc>, String)>>);

impl Fault {
    fn failed(&self, message: &str) {
        let mut fault = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match fault.as_mut() {
            // Keep the first failure's time: how long the store has been failing.
            Some((_, m)) => message.clone_into(m),
            None => *fault = Some((chrono::Utc::now(), message.to_owned())),
        }
    }

    fn cleared(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Since when, and why, commits fail.
    pub(crate) fn get(&self) -> Option<(chrono::DateTime<chrono::Utc>, String)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// When the oldest batch still waiting for its commit was queued, as nanoseconds after
/// `epoch` plus one; 0 while the writer is idle.
struct Busy {
    epoch: Instant,
    since: AtomicU64,
}

impl Busy {
    fn set(&self, queued_at: Instant) {
        let nanos = queued_at.saturating_duration_since(self.epoch).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        self.since.store(nanos + 1, Ordering::Release);
    }

    fn clear(&self) {
        self.since.store(0, Ordering::Release);
    }

    fn waiting(&self) -> Option<Duration> {
        match self.since.load(Ordering::Acquire) {
            0 => None,
            n => {
                let queued = self.epoch + Duration::from_nanos(n - 1);
                Some(Instant::now().saturating_duration_since(queued))
            }
        }
    }
}

/// Clears the flag when dropped: on the writer's return and on its unwinding alike.
struct AliveGuard(Arc<AtomicBool>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Committer {
    /// Starts the writer thread for `store`. Each stored batch's observations go to
    /// `committed` when given, without waiting (a full channel drops them).
    pub fn start(
        store: Arc<dyn Store>,
        metrics: Metrics,
        committed: Option<mpsc::Sender<super::Committed>>,
    ) -> std::io::Result<Self> {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let writer = metrics.clone();
        // The writer's own clock for the commit delay; its commits block only its thread.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let alive = Arc::new(AtomicBool::new(true));
        let guard = AliveGuard(Arc::clone(&alive));
        let busy = Arc::new(Busy {
            epoch: Instant::now(),
            since: AtomicU64::new(0),
        });
        let writer_busy = Arc::clone(&busy);
        let fault = Arc::new(Fault::default());
        let writer_fault = Arc::clone(&fault);
        std::thread::Builder::new()
            .name("leash-ingest-commit".to_owned())
            .spawn(move || {
                let _guard = guard;
                runtime.block_on(run(
                    jobs,
                    store.as_ref(),
                    &writer,
                    &writer_busy,
                    &writer_fault,
                    committed.as_ref(),
                ));
            })?;
        Ok(Committer {
            queue,
            metrics,
            alive,
            busy,
            fault,
        })
    }

    /// Since when, and why, the store's commits fail (`None` while they succeed).
    pub fn fault(&self) -> Option<(chrono::DateTime<chrono::Utc>, String)> {
        self.fault.get()
    }

    /// How long the oldest batch without an answer has waited for the writer, or `None`
    /// when nothing waits.
    pub fn waiting(&self) -> Option<Duration> {
        self.busy.waiting()
    }

    /// Whether the writer thread is still running (it only ends when every handle is gone,
    /// or by a panic, after which no batch could be stored again).
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Queues `job` (waiting while the queue is full). When the writer is gone, the job's
    /// reply says so.
    pub async fn submit(&self, mut job: Job) {
        job.queued_at = Instant::now();
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
async fn run(
    mut jobs: mpsc::Receiver<Job>,
    store: &dyn Store,
    metrics: &Metrics,
    busy: &Busy,
    fault: &Fault,
    committed: Option<&mpsc::Sender<super::Committed>>,
) {
    let mut group: Vec<Job> = Vec::with_capacity(MAX_GROUP_BATCHES);
    while let Some(first) = jobs.recv().await {
        busy.set(first.queued_at);
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
        commit_group(store, metrics, busy, fault, committed, &mut group);
    }
}

/// Commits `group` and answers each batch; `busy` is cleared once the store has answered,
/// before the acks go out.
fn commit_group(
    store: &dyn Store,
    metrics: &Metrics,
    busy: &Busy,
    fault: &Fault,
    committed: Option<&mpsc::Sender<super::Committed>>,
    group: &mut Vec<Job>,
) {
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
                    outcome.map_err(|e| Failure::of(&e))
                })
                .collect()
        }
        Ok(outcomes) => vec![Err(Failure {
            permanent: false,
            message: format!(
                "the store returned {} outcomes for one batch",
                outcomes.len()
            ),
        })],
        Err(e) => vec![Err(Failure::of(&e))],
    };
    drop(batches);
    busy.clear();
    // A transient failure is the store's state (`/healthz` and `leash_ingest_store_failing`
    // say so until a commit succeeds); a batch the store cannot take is that batch's.
    let transient = outcomes
        .iter()
        .find_map(|o: &Result<Commit, Failure>| match o {
            Err(f) if !f.permanent => Some(f.message.as_str()),
            _ => None,
        });
    if let Some(message) = transient {
        fault.failed(message);
        metrics.store_failing(true);
    } else if outcomes.iter().any(Result::is_ok) {
        fault.cleared();
        metrics.store_failing(false);
    }
    for (mut job, outcome) in group.drain(..).zip(outcomes) {
        let reply = match outcome {
            Ok(Commit::Stored) => {
                metrics.stored(job.records.0, job.records.1);
                // Drift is checked as answers arrive; the writer never waits for it.
                if let Some(tx) = committed
                    && !(job.dns.is_empty() && job.flows.is_empty())
                {
                    let batch = super::Committed {
                        flows: std::mem::take(&mut job.flows),
                        dns: std::mem::take(&mut job.dns),
                    };
                    if tx.try_send(batch).is_err() {
                        tracing::debug!(batch = %job.name, "the drift check is behind; a batch was not checked");
                    }
                }
                if !job.refused.is_empty() {
                    log_refused(&job);
                    for r in &job.refused {
                        metrics.refused_record(r.reason);
                    }
                }
                Ok(ack(&job, false))
            }
            Ok(Commit::Duplicate) => {
                // The same records are refused again (validation does not change), so the
                // agent gets the same answer; they were counted when the batch was stored.
                metrics.duplicate();
                Ok(ack(&job, true))
            }
            Err(Failure { permanent, message }) => {
                metrics.rejected(Cause::Store);
                let message = format!("{}: {message}", job.name);
                Err(if permanent {
                    Status::invalid_argument(message)
                } else {
                    Status::unavailable(message)
                })
            }
        };
        // The agent may have gone; its batch is stored (or not) either way.
        let _ = job.reply.send(reply);
    }
}

/// Why a batch was not stored.
struct Failure {
    /// The store cannot take the batch as it is (a value it cannot represent): resending
    /// it cannot help, so it is refused as invalid (INVALID_ARGUMENT, the agent splits and
    /// drops it). Anything else (a lost connection, a restarting PostgreSQL, a full disk, a
    /// deadlock) is transient: UNAVAILABLE, and the agent resends the same batch.
    permanent: bool,
    message: String,
}

impl Failure {
    fn of(e: &StoreError) -> Failure {
        Failure {
            permanent: matches!(
                e,
                StoreError::Invalid { .. } | StoreError::TimeOutOfRange { .. }
            ),
            message: Chain(e).to_string(),
        }
    }
}

fn ack(job: &Job, duplicate: bool) -> v1::Ack {
    v1::Ack {
        id: Some(job.ack_id.clone()),
        duplicate,
        rejected: job.refused.iter().map(Refused::to_wire).collect(),
    }
}

/// One line per batch with refused records, however many: their count by reason and the
/// first one.
fn log_refused(job: &Job) {
    let mut by_reason: Vec<(&'static str, usize)> = Vec::new();
    for r in &job.refused {
        let label = wire::reason_label(r.reason);
        match by_reason.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => by_reason.push((label, 1)),
        }
    }
    by_reason.sort_unstable();
    let counts = by_reason
        .iter()
        .map(|(l, n)| format!("{l}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(first) = job.refused.first() {
        tracing::warn!(
            batch = %job.name,
            refused = job.refused.len(),
            stored = job.records.0 + job.records.1,
            "records refused ({counts}), e.g. {first}"
        );
    }
}
