//! The sender task: connects (mutual TLS or explicit plaintext), streams batches over
//! `Ingest.Push`, matches acks, resends after reconnects. See the [module docs](super).

use std::sync::Arc;
use std::time::Duration;

use leash_records::tls;
use leash_records::wire::{self, v1};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::backoff::Backoff;
use super::{Error, Result, SentBatch, Shared, TransportConfig};

/// Connection attempts give up after this long (the attempt is then retried with backoff).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Makes connections to the recommender: the endpoint and, for `https`, the TLS client config.
#[derive(Clone)]
pub struct Connector {
    endpoint: Endpoint,
    tls: Option<tls::TlsConnector>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("uri", self.endpoint.uri())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Connector {
    /// Reads the TLS files now (so a bad file stops the agent at start, naming the file) and
    /// prepares the endpoint; no connection is made yet.
    pub fn new(config: &TransportConfig) -> Result<Self> {
        let endpoint = Endpoint::from_shared(config.url.clone())
            .map_err(|e| Error::Url {
                url: config.url.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let tls = match &config.tls {
            Some(files) => {
                // Read the files once now, so that a bad file stops the agent at start with
                // the file's name; the connector re-reads them per connection (renewals).
                tls::client_config(files).map_err(|e| Error::Tls(e.to_string()))?;
                Some(tls::TlsConnector::new(files.clone()))
            }
            None => None,
        };
        Ok(Self { endpoint, tls })
    }

    async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match &self.tls {
            Some(tls) => self.endpoint.connect_with_connector(tls.clone()).await,
            None => self.endpoint.connect().await,
        }
    }
}

/// Why a stream ended.
#[derive(Debug)]
enum Ended {
    /// Everything was acknowledged after `close`.
    Done,
    /// The stream broke; reconnect.
    Broken(String),
}

/// The sender task: runs until everything is acknowledged after `close` (or is aborted at the
/// shutdown deadline).
pub(super) async fn run(shared: Arc<Shared>, connector: Connector) {
    let seed = shared
        .boot_id
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let config = &shared.config;
    let mut backoff = Backoff::new(config.backoff_base, config.backoff_max, seed);
    let mut failures: u64 = 0;
    loop {
        if finished(&shared) {
            return;
        }
        let reason = match connector.connect().await {
            Ok(channel) => match session(&shared, channel, &mut backoff).await {
                Ended::Done => return,
                Ended::Broken(reason) => reason,
            },
            Err(e) => format!("connect: {}", error_chain(&e)),
        };
        shared.metrics.connected.set(0);
        shared.metrics.connect_errors.inc();
        failures += 1;
        let delay = backoff.next_delay();
        // The first failure, then every tenth: an outage is visible without flooding the log.
        if failures % 10 == 1 {
            tracing::warn!(
                url = %config.url,
                error = %reason,
                failures,
                retry_in = ?delay,
                "recommender unreachable; buffering records"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.closed.notified() => {}
        }
    }
}

/// True once `close` was called and nothing is left to send or to be acknowledged.
fn finished(shared: &Shared) -> bool {
    let state = shared.lock();
    state.closing && state.buffer.is_empty() && state.unacked.is_empty()
}

fn batch_id(shared: &Shared, seq: u64) -> v1::BatchId {
    v1::BatchId {
        node: shared.config.node.clone(),
        boot_id: shared.boot_id.clone(),
        seq,
    }
}

/// Cuts the next batch if the un-acked window has room; `None` when there is nothing to cut
/// (or no room). Records that cannot be encoded are counted as dropped (`unencodable`).
fn cut_batch(shared: &Shared) -> Option<SentBatch> {
    let mut state = shared.lock();
    loop {
        if state.unacked.len() >= shared.config.max_unacked {
            return None;
        }
        let records = state
            .buffer
            .cut(&shared.config.node, shared.config.batch_records)?;
        shared.metrics.buffered_keys.set(state.buffer.keys() as i64);
        shared
            .metrics
            .buffered_dns
            .set(state.buffer.dns_len() as i64);
        let seq = state.next_seq;
        match wire::batch_to_wire(batch_id(shared, seq), &records.flows, &records.dns) {
            Ok(batch) => {
                state.next_seq += 1;
                let sent = SentBatch {
                    seq,
                    records: records.len() as u64,
                    events: records.events(),
                    batch,
                };
                state.unacked.push_back(sent.clone());
                shared
                    .metrics
                    .unacked_batches
                    .set(state.unacked.len() as i64);
                return Some(sent);
            }
            Err(e) => {
                // Only impossible records get here (times before 1970 or after 2262).
                shared
                    .metrics
                    .add_dropped("unencodable", records.len() as u64, records.events());
                tracing::error!(error = %e, records = records.len(), "batch cannot be encoded; dropped");
            }
        }
    }
}

/// One stream: resend the un-acked batches, then send new ones as they are cut and match acks.
async fn session(shared: &Shared, channel: Channel, backoff: &mut Backoff) -> Ended {
    let config = &shared.config;
    // Room for the whole window, so sending never waits for the transport.
    let (tx, rx) = mpsc::channel::<v1::Batch>(config.max_unacked + 1);
    let resend: Vec<v1::Batch> = shared
        .lock()
        .unacked
        .iter()
        .map(|b| b.batch.clone())
        .collect();
    for batch in resend {
        if tx.send(batch).await.is_err() {
            return Ended::Broken("stream closed".to_owned());
        }
        shared.metrics.batches_resent.inc();
    }
    let mut client = v1::ingest_client::IngestClient::new(channel);
    let mut acks = match client.push(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Ended::Broken(format!("push: {status}")),
    };
    shared.metrics.connected.set(1);
    tracing::info!(url = %config.url, "streaming records to the recommender");
    let mut progress = Instant::now();
    loop {
        while let Some(sent) = cut_batch(shared) {
            if tx.send(sent.batch).await.is_err() {
                return Ended::Broken("stream closed".to_owned());
            }
            shared.metrics.batches_sent.inc();
            progress = Instant::now();
        }
        let waiting = {
            let state = shared.lock();
            if state.closing && state.buffer.is_empty() && state.unacked.is_empty() {
                return Ended::Done;
            }
            !state.unacked.is_empty()
        };
        let ack_deadline = progress + config.ack_timeout;
        tokio::select! {
            () = shared.wake.notified() => {}
            ack = acks.message() => match ack {
                Ok(Some(ack)) => {
                    on_ack(shared, &ack);
                    backoff.reset();
                    progress = Instant::now();
                }
                Ok(None) => return Ended::Broken("the recommender closed the stream".to_owned()),
                Err(status) => return Ended::Broken(format!("stream: {status}")),
            },
            () = tokio::time::sleep_until(ack_deadline), if waiting => {
                return Ended::Broken(format!("no ack within {:?}", config.ack_timeout));
            }
        }
    }
}

fn on_ack(shared: &Shared, ack: &v1::Ack) {
    let Some(id) = &ack.id else {
        tracing::warn!("ack without a batch id ignored");
        return;
    };
    if id.boot_id != shared.boot_id || id.node != shared.config.node {
        tracing::warn!(node = %id.node, boot_id = %id.boot_id, seq = id.seq, "ack for another agent's batch ignored");
        return;
    }
    let mut state = shared.lock();
    if let Some(at) = state.unacked.iter().position(|b| b.seq == id.seq) {
        state.unacked.remove(at);
        shared.metrics.batches_acked.inc();
        shared
            .metrics
            .unacked_batches
            .set(state.unacked.len() as i64);
    }
}

/// An error with its sources, `a: b: c` (tonic's transport errors hide the cause otherwise).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
