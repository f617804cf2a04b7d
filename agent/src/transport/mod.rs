//! Streaming records to the recommender over gRPC (`--recommender`).
//!
//! [`GrpcSink`] is a [`Sink`]: the flush loop hands it records, which it merges into a bounded
//! [`MergeBuffer`] under a lock held for microseconds, so the loop never waits on the network.
//! A background task ([`client`]) cuts batches from the buffer, numbers them
//! `(node, boot_id, seq)`, streams them over `Ingest.Push`, and keeps each batch until its
//! `Ack`. After a reconnect (jittered exponential [`backoff`]) it resends the un-acked batches
//! first, in order and with their original ids; the recommender ignores ids it already stored.
//! The un-acked window is bounded too: when it is full, no batch is cut and the merge buffer
//! keeps absorbing (merging repeats of the same keys, so memory stays flat in an outage).
//!
//! What the recommender refuses for good is never resent as it is (`Ack` in `ingest.proto`).
//! Records its ack lists as refused were not stored: they are counted by reason
//! (`leash_agent_transport_rejected_records_total{reason}`) and dropped. A batch refused whole
//! (INVALID_ARGUMENT, RESOURCE_EXHAUSTED, or OUT_OF_RANGE for a message over the limit) ends
//! the stream: it is [`split`] into halves with fresh ids, resent first on a new stream over the
//! same connection, down to single records; a single refused record is dropped. Every other
//! error (UNAVAILABLE, a broken connection, no ack in time) is transient: the same batches are
//! resent after the backoff. A batch refused with PERMISSION_DENIED (its node is not the node
//! of the agent's token) is dropped whole, never split or resent (`forbidden`).
//! UNAUTHENTICATED (no valid token yet) is transient: the stream is retried with backoff,
//! reading the token file again.
//!
//! With `--token-file` every stream carries the agent's ServiceAccount token as
//! `authorization: Bearer` ([`token`]), read again for each stream and while one is open.
//!
//! What cannot be delivered is counted, never lost silently
//! (`leash_agent_transport_dropped_{records,events}_total{cause}`): `buffer_full` (a new flow
//! key when the buffer holds `--buffer-keys` keys), `dns_buffer_full`, `shutdown` (what was
//! still buffered or un-acked when the shutdown deadline passed), `rejected` (refused as
//! invalid: listed in an ack, or a single record answered INVALID_ARGUMENT), `too_large` (a
//! single record answered RESOURCE_EXHAUSTED or OUT_OF_RANGE), `forbidden` (a batch answered
//! PERMISSION_DENIED) and `unencodable`. So the sum of
//! `count` the recommender stored equals the sum written to the sink minus the dropped events.

pub mod backoff;
pub mod buffer;
pub mod client;
pub mod split;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod token;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use leash_records::DnsRecord;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::metrics::{Metrics, TransportMetrics};
use crate::sink::{self, FlowView, Sink};

pub use buffer::{BatchRecords, MergeBuffer, Pushed};

/// Errors of the transport's configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The recommender URL is not `https://HOST:PORT` (or `http://` with `--insecure`).
    #[error("invalid --recommender URL {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// TLS files are missing or were given together with `--insecure`.
    #[error("{0}")]
    TlsOptions(String),
    /// A TLS file could not be read or parsed.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The token file cannot be used at start.
    #[error(transparent)]
    Token(#[from] token::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use leash_records::tls::TlsFiles;

/// How to reach the recommender and how much to buffer.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// `https://HOST:PORT`, or `http://HOST:PORT` when `tls` is `None`.
    pub url: String,
    /// Mutual TLS; `None` only with `--insecure`.
    pub tls: Option<TlsFiles>,
    /// The projected ServiceAccount token sent on every stream (`--token-file`).
    pub token_file: Option<PathBuf>,
    /// How often the token file is read again while a stream is open.
    pub token_check: Duration,
    /// The node name: the `node` of every batch id and record.
    pub node: String,
    /// Most flow keys buffered (`--buffer-keys`).
    pub buffer_keys: usize,
    /// Most DNS records buffered.
    pub buffer_dns: usize,
    /// Most names a buffered flow key carries ([`buffer::DEFAULT_MAX_NAMES`]).
    pub max_names_per_key: usize,
    /// Most records per batch.
    pub batch_records: usize,
    /// Most batches sent and not acknowledged.
    pub max_unacked: usize,
    /// First reconnect delay ceiling.
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// How long a batch may go without its Ack before the stream is considered broken.
    pub ack_timeout: Duration,
    /// How long [`Sink::close`] waits for the last acks (`--shutdown-timeout`).
    pub shutdown_timeout: Duration,
}

impl TransportConfig {
    /// Defaults for `url` and `node`: no token, read again every 60 s when given, 100,000
    /// keys, 10,000 DNS records, 64 names per key, 2,000 records per batch,
    /// 16 batches in flight, backoff 100 ms to 30 s, 30 s ack timeout, 10 s shutdown deadline.
    pub fn new(url: &str, tls: Option<TlsFiles>, node: &str) -> Self {
        Self {
            url: url.to_owned(),
            tls,
            token_file: None,
            token_check: Duration::from_secs(60),
            node: node.to_owned(),
            buffer_keys: 100_000,
            buffer_dns: 10_000,
            max_names_per_key: buffer::DEFAULT_MAX_NAMES,
            batch_records: 2_000,
            max_unacked: 16,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            ack_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
        }
    }

    /// Checks the URL scheme against the TLS choice: `https` needs all three TLS files,
    /// `http` (plaintext) only with `--insecure` (`tls: None`).
    pub fn validate(
        url: &str,
        insecure: bool,
        tls: [Option<&PathBuf>; 3],
    ) -> Result<Option<TlsFiles>> {
        let bad = |reason: &str| Error::Url {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected https://HOST:PORT"))?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(bad("expected https://HOST:PORT without a path"));
        }
        let given = tls.iter().filter(|f| f.is_some()).count();
        match (scheme, insecure) {
            ("https", false) => match tls {
                [Some(ca), Some(cert), Some(key)] => Ok(Some(TlsFiles {
                    ca: ca.clone(),
                    cert: cert.clone(),
                    key: key.clone(),
                })),
                _ => Err(Error::TlsOptions(
                    "--recommender https://… needs --tls-ca, --tls-cert and --tls-key (mutual TLS), or --insecure with http://".to_owned(),
                )),
            },
            ("http", true) if given == 0 => Ok(None),
            ("http", true) => Err(Error::TlsOptions(
                "--insecure sends plaintext: do not give --tls-ca/--tls-cert/--tls-key with it"
                    .to_owned(),
            )),
            ("http", false) => Err(bad(
                "plaintext http:// is refused unless --insecure is given explicitly",
            )),
            ("https", true) => Err(bad("--insecure needs an http:// URL (it disables TLS)")),
            _ => Err(bad("the scheme must be https (or http with --insecure)")),
        }
    }
}

/// A batch cut from the buffer and sent at least once, kept (encoded) until its Ack.
#[derive(Debug, Clone)]
struct SentBatch {
    /// The batch's sequence number (the id's `seq`).
    seq: u64,
    /// Records in it.
    records: u64,
    /// Flow events (sum of `count`) in it.
    events: u64,
    /// The wire message, resent as is after a reconnect.
    batch: leash_records::wire::v1::Batch,
}

/// State shared by the sink (writer side) and the sender task.
#[derive(Debug)]
struct State {
    buffer: MergeBuffer,
    /// Sent, not yet acknowledged, in sequence order.
    unacked: VecDeque<SentBatch>,
    next_seq: u64,
    /// Set by `close`: cut everything, then stop once all is acknowledged.
    closing: bool,
    /// When drops were last logged, and how many since (rate limit).
    last_drop_log: Option<Instant>,
    drops_since_log: u64,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the sender: new records, or closing.
    wake: Notify,
    /// Cuts a reconnect delay short on close (the deadline is short, the delay may be long).
    closed: Notify,
    metrics: TransportMetrics,
    config: TransportConfig,
    boot_id: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the buffer half-updated in a way that
        // matters more than losing the agent's output, so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A random id for this process start: the kernel's UUID generator, or time and pid.
pub fn new_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            format!("{:x}-{:x}", now.as_nanos(), std::process::id())
        })
}

/// The sink that streams to the recommender. See the module docs.
#[derive(Debug)]
pub struct GrpcSink {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl GrpcSink {
    /// Starts the sender task (it connects in the background; records are buffered until it
    /// does). Must be called within a tokio runtime.
    pub fn start(config: TransportConfig, metrics: &Metrics) -> Result<Self> {
        Self::start_with_boot_id(config, metrics, new_boot_id())
    }

    /// [`GrpcSink::start`] with a given boot id (tests).
    pub fn start_with_boot_id(
        config: TransportConfig,
        metrics: &Metrics,
        boot_id: String,
    ) -> Result<Self> {
        let connector = client::Connector::new(&config)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                buffer: MergeBuffer::new(config.buffer_keys, config.buffer_dns)
                    .with_max_names(config.max_names_per_key),
                unacked: VecDeque::new(),
                next_seq: 1,
                closing: false,
                last_drop_log: None,
                drops_since_log: 0,
            }),
            wake: Notify::new(),
            closed: Notify::new(),
            metrics: metrics.transport.clone(),
            config,
            boot_id,
        });
        let task = tokio::spawn(client::run(shared.clone(), connector));
        Ok(Self {
            shared,
            task: Some(task),
        })
    }

    /// This process's boot id (the `boot_id` of every batch id).
    pub fn boot_id(&self) -> &str {
        &self.shared.boot_id
    }

    /// Flow keys buffered now.
    pub fn buffered_keys(&self) -> usize {
        self.shared.lock().buffer.keys()
    }

    fn dropped(&self, state: &mut State, cause: &'static str, records: u64, events: u64) {
        self.shared.metrics.add_dropped(cause, records, events);
        state.drops_since_log += records;
        let now = Instant::now();
        // At most one warning per 10 s: an outage with a full buffer drops on every flush.
        if state
            .last_drop_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            tracing::warn!(
                cause,
                records = state.drops_since_log,
                buffered_keys = state.buffer.keys(),
                "recommender transport buffer full: dropping records (counted in leash_agent_transport_dropped_records_total)"
            );
            state.last_drop_log = Some(now);
            state.drops_since_log = 0;
        }
    }

    async fn close_inner(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        self.shared.closed.notify_one();
        let Some(task) = self.task.take() else {
            return;
        };
        let deadline = self.shared.config.shutdown_timeout;
        let mut task = task;
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
        // Whatever is left was not delivered: count it.
        let mut state = self.shared.lock();
        let node = self.shared.config.node.clone();
        let rest = state.buffer.take_all(&node);
        let (mut records, mut events) = (rest.len() as u64, rest.events());
        for batch in state.unacked.drain(..) {
            records += batch.records;
            events += batch.events;
        }
        self.shared.metrics.unacked_batches.set(0);
        self.shared.metrics.buffered_keys.set(0);
        self.shared.metrics.buffered_dns.set(0);
        self.shared.metrics.connected.set(0);
        if records > 0 {
            self.shared.metrics.add_dropped("shutdown", records, events);
            tracing::warn!(
                records,
                events,
                timeout = ?deadline,
                "records not acknowledged by the recommender before the shutdown deadline"
            );
        }
    }
}

impl Sink for GrpcSink {
    fn write_flow(&mut self, flow: &FlowView<'_>) {
        let mut state = self.shared.lock();
        if state.buffer.push_flow(flow) == Pushed::Dropped {
            self.dropped(&mut state, "buffer_full", 1, flow.count);
        }
        let names = state.buffer.take_names_dropped();
        if names > 0 {
            self.shared.metrics.names_dropped.inc_by(names);
        }
    }

    fn write_dns(&mut self, dns: &DnsRecord) {
        let mut state = self.shared.lock();
        if !state.buffer.push_dns(dns) {
            self.dropped(&mut state, "dns_buffer_full", 1, 0);
        }
    }

    fn flush(&mut self) -> BoxFuture<'_, sink::Result<()>> {
        {
            let state = self.shared.lock();
            self.shared
                .metrics
                .buffered_keys
                .set(state.buffer.keys() as i64);
            self.shared
                .metrics
                .buffered_dns
                .set(state.buffer.dns_len() as i64);
        }
        self.shared.wake.notify_one();
        Box::pin(async { Ok(()) })
    }

    fn close(&mut self) -> BoxFuture<'_, sink::Result<()>> {
        Box::pin(async move {
            self.close_inner().await;
            Ok(())
        })
    }
}

impl Drop for GrpcSink {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
