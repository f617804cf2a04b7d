//! The sender task: connects (mutual TLS or explicit plaintext), streams batches over
//! `Ingest.Push`, matches acks, resends after reconnects, and splits or drops what the
//! recommender refuses for good. See the [module docs](super).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use leash_records::error::Chain;
use leash_records::tls;
use leash_records::wire::{self, v1};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::backoff::Backoff;
use super::split::{self, WireRecord};
use super::{Error, Result, SentBatch, Shared, State, TransportConfig};

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
                reason: Chain(&e).to_string(),
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let tls = match &config.tls {
            Some(files) => {
                // Read the files once now, so that a bad file stops the agent at start with
                // the file's name; the connector re-reads them per connection (renewals).
                tls::client_config(files).map_err(|e| Error::Tls(Chain(&e).to_string()))?;
                Some(tls::TlsConnector::new(files.clone()))
            }
            None => None,
        };
        if let Some(path) = &config.token_file {
            // A missing or empty file stops the agent at start, naming the file; later it is
            // read again for every stream.
            super::token::read(path)?;
        }
        Ok(Self { endpoint, tls })
    }

    async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        match &self.tls {
            Some(tls) => self.endpoint.connect_with_connector(tls.clone()).await,
            None => self.endpoint.connect().await,
        }
    }
}

/// Refused records are logged at most this often, as a summary: a hostile pod can make them
/// at flood rates, and the counters are exact anyway.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Text from the recommender or from records is logged at most this long, escaped.
const EXCERPT_CHARS: usize = 160;

/// Why a stream ended.
#[derive(Debug)]
enum Ended {
    /// Everything was acknowledged after `close`.
    Done,
    /// The recommender refused the oldest un-acked batch for good; it was split in two or, a
    /// single record, dropped. The connection is fine: open a new stream on it.
    Refused,
    /// The token file changed: open a new stream on the same connection with the new token.
    Rotated,
    /// The stream broke; reconnect.
    Broken(String),
}

/// How the recommender refused a batch whole, for good (`Ack` in `ingest.proto`): the same
/// batch would be refused again, so it is split and resent as halves, and a single refused
/// record is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// INVALID_ARGUMENT: the batch is invalid (recommenders before `Ack.rejected` answered an
    /// invalid record this way too).
    Invalid,
    /// RESOURCE_EXHAUSTED (too many records, too large a message), or OUT_OF_RANGE, which is
    /// how tonic reports a message over the receiver's limit when nothing maps it.
    TooLarge,
    /// PERMISSION_DENIED: this agent may not write the batch (its node is not its token's,
    /// or the token is not the agents'). Halves would be refused too: dropped whole.
    Forbidden,
}

impl Refusal {
    /// The permanent refusal `status` stands for; `None` when it is transient (UNAVAILABLE,
    /// a broken connection, anything else), to be retried with backoff.
    fn of(status: &Status) -> Option<Self> {
        match status.code() {
            Code::InvalidArgument => Some(Refusal::Invalid),
            Code::ResourceExhausted | Code::OutOfRange => Some(Refusal::TooLarge),
            Code::PermissionDenied => Some(Refusal::Forbidden),
            _ => None,
        }
    }

    /// The `cause` a dropped single record is counted under.
    fn cause(self) -> &'static str {
        match self {
            Refusal::Invalid => "rejected",
            Refusal::TooLarge => "too_large",
            Refusal::Forbidden => "forbidden",
        }
    }

    /// Whether halves of the batch could be taken.
    fn splits(self) -> bool {
        self != Refusal::Forbidden
    }
}

/// Summarises refused records in the log: the first at once, then at most one line per
/// [`REFUSAL_LOG_EVERY`] with the counts since the last line and one example.
#[derive(Debug, Default)]
struct RefusalLog {
    last: Option<Instant>,
    /// Records refused since the last line, by cause and reason.
    pending: BTreeMap<String, u64>,
}

impl RefusalLog {
    /// Counts `records` refused for `what` towards the next line.
    fn add(&mut self, what: String, records: u64) {
        *self.pending.entry(what).or_default() += records;
    }

    /// Writes the line if one is due; `example` describes the latest refusal.
    fn log(&mut self, example: impl FnOnce() -> String) {
        let now = Instant::now();
        if self.pending.is_empty()
            || self
                .last
                .is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_EVERY)
        {
            return;
        }
        let refused = self
            .pending
            .iter()
            .map(|(what, n)| format!("{what}={n}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::warn!(
            %refused,
            example = %example(),
            "the recommender refused records as invalid, too large or forbidden: dropped, never resent (counted in leash_agent_transport_dropped_records_total)"
        );
        self.pending.clear();
        self.last = Some(now);
    }
}

/// At most [`EXCERPT_CHARS`] characters of `text`, escaped (`\n`, `\"`, `\u{1b}`, …) so
/// that text chosen by a pod or a peer cannot forge log lines or terminal sequences.
fn excerpt(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(EXCERPT_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push('…');
    }
    out
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
    let mut refusals = RefusalLog::default();
    let mut failures: u64 = 0;
    loop {
        if finished(&shared) {
            return;
        }
        let reason = match connector.connect().await {
            Ok(channel) => {
                let mut first = true;
                loop {
                    // A refusal ends the stream, not the connection: each one splits a batch
                    // or drops a record, so this loop ends after at most 2n - 1 streams for
                    // n records.
                    let ended =
                        session(&shared, channel.clone(), &mut backoff, &mut refusals, first).await;
                    match ended {
                        Ended::Done => return,
                        Ended::Refused | Ended::Rotated if finished(&shared) => return,
                        Ended::Refused | Ended::Rotated => first = false,
                        Ended::Broken(reason) => break reason,
                    }
                }
            }
            Err(e) => format!("connect: {}", Chain(&e)),
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

/// Numbers `batch` with the next sequence number and wraps it for the un-acked window.
fn number(shared: &Shared, state: &mut State, mut batch: v1::Batch) -> SentBatch {
    let seq = state.next_seq;
    state.next_seq += 1;
    batch.id = Some(batch_id(shared, seq));
    SentBatch {
        seq,
        records: batch.record_count() as u64,
        events: split::events(&batch),
        batch,
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
        let id = batch_id(shared, state.next_seq);
        match wire::batch_to_wire(id, &records.flows, &records.dns) {
            Ok(batch) => {
                let sent = number(shared, &mut state, batch);
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
                tracing::error!(error = %Chain(&e), records = records.len(), "batch cannot be encoded; dropped");
            }
        }
    }
}

/// One stream: resend the un-acked batches, then send new ones as they are cut and match acks.
async fn session(
    shared: &Shared,
    channel: Channel,
    backoff: &mut Backoff,
    refusals: &mut RefusalLog,
    first: bool,
) -> Ended {
    let config = &shared.config;
    let resend: Vec<v1::Batch> = shared
        .lock()
        .unacked
        .iter()
        .map(|b| b.batch.clone())
        .collect();
    // Room for the whole window, so sending never waits for the transport. Halves of refused
    // batches can make the window larger than `max_unacked`; nothing is cut until it shrinks.
    let (tx, rx) = mpsc::channel::<v1::Batch>(config.max_unacked.max(resend.len()) + 1);
    for batch in resend {
        if tx.send(batch).await.is_err() {
            return Ended::Broken("stream closed".to_owned());
        }
        shared.metrics.batches_resent.inc();
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let sent_token = match &config.token_file {
        Some(path) => match super::token::read(path) {
            Ok(value) => {
                request
                    .metadata_mut()
                    .insert("authorization", value.clone());
                Some(value)
            }
            Err(e) => return Ended::Broken(Chain(&e).to_string()),
        },
        None => None,
    };
    let mut token_check =
        tokio::time::interval_at(Instant::now() + config.token_check, config.token_check);
    let mut client = v1::ingest_client::IngestClient::new(channel);
    let mut acks = match client.push(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return ended_by(shared, &status, refusals, "push"),
    };
    shared.metrics.connected.set(1);
    if first {
        tracing::info!(url = %config.url, "streaming records to the recommender");
    }
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
                    on_ack(shared, &ack, refusals);
                    backoff.reset();
                    progress = Instant::now();
                }
                Ok(None) => return Ended::Broken("the recommender closed the stream".to_owned()),
                Err(status) => return ended_by(shared, &status, refusals, "stream"),
            },
            () = tokio::time::sleep_until(ack_deadline), if waiting => {
                return Ended::Broken(format!("no ack within {:?}", config.ack_timeout));
            }
            _ = token_check.tick(), if sent_token.is_some() => {
                if let Some(path) = &config.token_file
                    && super::token::read(path).is_ok_and(|now| Some(now) != sent_token)
                {
                    // Un-acked batches go again on the new stream; the recommender
                    // acknowledges those it stored as duplicates.
                    tracing::debug!("the token file changed: a new stream with the new token");
                    return Ended::Rotated;
                }
            }
        }
    }
}

/// How a stream that the recommender ended with `status` ended: a permanent refusal of the
/// oldest un-acked batch (the recommender answers in order, so every batch before it was
/// acknowledged), or a break to retry with backoff.
fn ended_by(shared: &Shared, status: &Status, refusals: &mut RefusalLog, at: &str) -> Ended {
    if let Some(refusal) = Refusal::of(status)
        && refuse_oldest(shared, refusal, status, refusals)
    {
        return Ended::Refused;
    }
    Ended::Broken(format!(
        "{at}: {:?}: {}",
        status.code(),
        excerpt(status.message())
    ))
}

/// Splits the oldest un-acked batch into halves with fresh ids, sent first on the next
/// stream, or drops it when it is a single record (counted under the refusal's cause).
/// `false` when nothing was un-acked, so the refusal answers no batch of ours.
fn refuse_oldest(
    shared: &Shared,
    refusal: Refusal,
    status: &Status,
    refusals: &mut RefusalLog,
) -> bool {
    let mut state = shared.lock();
    let Some(oldest) = state.unacked.pop_front() else {
        return false;
    };
    let halves = if refusal.splits() {
        split::halves(&oldest.batch)
    } else {
        None
    };
    match halves {
        Some((first, second)) => {
            let first = number(shared, &mut state, first);
            let second = number(shared, &mut state, second);
            tracing::debug!(
                seq = oldest.seq,
                records = oldest.records,
                halves = ?(first.seq, second.seq),
                code = ?status.code(),
                message = %excerpt(status.message()),
                "the recommender refused a batch whole; resending its records in two halves"
            );
            state.unacked.push_front(second);
            state.unacked.push_front(first);
            shared.metrics.batches_split.inc();
        }
        None => {
            shared
                .metrics
                .add_dropped(refusal.cause(), oldest.records, oldest.events);
            refusals.add(refusal.cause().to_owned(), oldest.records);
            refusals.log(|| {
                format!(
                    "{}: {:?}: {}",
                    describe_single(&oldest.batch),
                    status.code(),
                    excerpt(status.message())
                )
            });
        }
    }
    shared
        .metrics
        .unacked_batches
        .set(state.unacked.len() as i64);
    true
}

/// The record of a one-record batch, for the log: its kind, pod (escaped) and destination or
/// DNS server; never its names, which whoever answers DNS chooses.
fn describe_single(batch: &v1::Batch) -> String {
    let mut text = format!("batch {}", batch.id.as_ref().map_or(0, |id| id.seq));
    let pod = |pod: Option<&v1::Pod>| {
        pod.map_or_else(
            || "unattributed".to_owned(),
            |p| format!("pod {}/{}", excerpt(&p.namespace), excerpt(&p.name)),
        )
    };
    match split::records(batch).next() {
        Some(WireRecord::Flow { pod: p, flow, .. }) => {
            let _ = write!(
                text,
                ", flow of {} to {} port {} with {} names",
                pod(p),
                wire_addr(&flow.dst),
                flow.dst_port,
                flow.names.len()
            );
        }
        Some(WireRecord::Dns(d)) => {
            let _ = write!(
                text,
                ", DNS answer to {} from {} with {} answers",
                pod(d.pod.as_ref()),
                wire_addr(&d.server),
                d.answers.len()
            );
        }
        None => text.push_str(", no record"),
    }
    text
}

/// A wire address (4 or 16 bytes) for the log.
fn wire_addr(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .map_or_else(|_| "?".to_owned(), |a| IpAddr::from(a).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .map_or_else(|_| "?".to_owned(), |a| IpAddr::from(a).to_string()),
        n => format!("<{n} bytes>"),
    }
}

/// Records of a batch that an ack lists as refused.
#[derive(Debug, Default, PartialEq, Eq)]
struct Refused {
    /// Records and their flow events, by reason (`invalid_name`, …), each record once.
    by_reason: BTreeMap<&'static str, (u64, u64)>,
    /// Listed indices that are no record of the batch (ignored).
    out_of_range: usize,
    /// The first listed record: its index, reason and the recommender's detail, escaped.
    example: Option<String>,
}

/// The records of `batch` that `rejected` lists, counted once each by reason.
fn refused(batch: &v1::Batch, rejected: &[v1::RejectedRecord]) -> Refused {
    let mut out = Refused::default();
    let count = batch.record_count();
    let mut listed: BTreeMap<usize, &v1::RejectedRecord> = BTreeMap::new();
    for r in rejected {
        match usize::try_from(r.index) {
            Ok(i) if i < count => {
                listed.entry(i).or_insert(r);
            }
            _ => out.out_of_range += 1,
        }
    }
    let Some((first, _)) = listed.first_key_value() else {
        return out;
    };
    let first = *first;
    for (i, record) in split::records(batch).enumerate().skip(first) {
        let Some(r) = listed.get(&i) else {
            continue;
        };
        let reason = reason_label(r.reason());
        let entry = out.by_reason.entry(reason).or_default();
        entry.0 += 1;
        entry.1 += record.events();
        if out.example.is_none() {
            out.example = Some(format!("record {i}: {reason}: {}", excerpt(&r.detail)));
        }
    }
    out
}

/// The metric label of a refusal reason; reasons this agent does not know are `unspecified`.
fn reason_label(reason: v1::RejectReason) -> &'static str {
    match reason {
        v1::RejectReason::InvalidName => "invalid_name",
        v1::RejectReason::InvalidPod => "invalid_pod",
        v1::RejectReason::InvalidField => "invalid_field",
        v1::RejectReason::TooLarge => "too_large",
        v1::RejectReason::Unspecified => "unspecified",
    }
}

/// Counts and logs the records an ack of `batch` lists as refused: they were not stored and
/// are not resent.
fn count_refused(shared: &Shared, batch: &SentBatch, ack: &v1::Ack, refusals: &mut RefusalLog) {
    let refused = refused(&batch.batch, &ack.rejected);
    if refused.out_of_range > 0 {
        tracing::warn!(
            seq = batch.seq,
            records = batch.records,
            listed = refused.out_of_range,
            "the recommender's ack lists refused records that the batch does not have; ignored"
        );
    }
    for (reason, (records, events)) in refused.by_reason {
        shared.metrics.add_rejected(reason, records);
        shared.metrics.add_dropped("rejected", records, events);
        refusals.add(format!("rejected/{reason}"), records);
    }
    refusals.log(|| {
        format!(
            "batch {}, {}",
            batch.seq,
            refused.example.unwrap_or_default()
        )
    });
}

fn on_ack(shared: &Shared, ack: &v1::Ack, refusals: &mut RefusalLog) {
    let Some(id) = &ack.id else {
        tracing::warn!("ack without a batch id ignored");
        return;
    };
    if id.boot_id != shared.boot_id || id.node != shared.config.node {
        tracing::warn!(node = %id.node, boot_id = %id.boot_id, seq = id.seq, "ack for another agent's batch ignored");
        return;
    }
    let mut state = shared.lock();
    let at = state.unacked.iter().position(|b| b.seq == id.seq);
    // Refused records are counted with the batch's first ack only: a later ack of the same id
    // (after a resend) finds no batch here.
    if let Some(batch) = at.and_then(|at| state.unacked.remove(at)) {
        shared.metrics.batches_acked.inc();
        shared
            .metrics
            .unacked_batches
            .set(state.unacked.len() as i64);
        drop(state);
        if !ack.rejected.is_empty() {
            count_refused(shared, &batch, ack, refusals);
        }
    }
}

/// An error with its sources, `a: b: c` (tonic's transport errors hide the cause otherwise).
#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(index: u32, reason: v1::RejectReason, detail: &str) -> v1::RejectedRecord {
        v1::RejectedRecord {
            index,
            reason: reason as i32,
            detail: detail.to_owned(),
        }
    }

    /// Two ungrouped flows (counts 1, 2), a group of two (counts 3, 4), one DNS record.
    fn batch() -> v1::Batch {
        let flow = |count| v1::Flow {
            count,
            ..Default::default()
        };
        v1::Batch {
            id: None,
            flows: vec![flow(1), flow(2)],
            flow_groups: vec![v1::FlowGroup {
                pod: None,
                cgroup: "/a".into(),
                flows: vec![flow(3), flow(4)],
            }],
            dns: vec![v1::Dns::default()],
        }
    }

    #[test]
    fn refused_records_count_once_by_reason_with_their_events() {
        let r = refused(
            &batch(),
            &[
                rejected(3, v1::RejectReason::InvalidName, "names[0]: empty"),
                rejected(1, v1::RejectReason::InvalidName, "names[2]: empty"),
                rejected(3, v1::RejectReason::TooLarge, "listed twice"),
                rejected(4, v1::RejectReason::InvalidField, "server: 3 bytes"),
                rejected(5, v1::RejectReason::InvalidPod, "no such record"),
                rejected(u32::MAX, v1::RejectReason::InvalidPod, "no such record"),
            ],
        );
        let expected: BTreeMap<&str, (u64, u64)> =
            [("invalid_name", (2, 2 + 4)), ("invalid_field", (1, 0))].into();
        assert_eq!(r.by_reason, expected);
        assert_eq!(r.out_of_range, 2);
        assert_eq!(
            r.example.as_deref(),
            Some("record 1: invalid_name: names[2]: empty")
        );
    }

    #[test]
    fn an_unknown_reason_counts_as_unspecified() {
        let mut unknown = rejected(0, v1::RejectReason::Unspecified, "");
        unknown.reason = 99;
        let r = refused(&batch(), &[unknown]);
        assert_eq!(r.by_reason, [("unspecified", (1, 1))].into());
    }

    #[test]
    fn statuses_that_refuse_for_good_and_those_that_are_retried() {
        for (code, refusal) in [
            (Code::InvalidArgument, Some(Refusal::Invalid)),
            (Code::ResourceExhausted, Some(Refusal::TooLarge)),
            (Code::OutOfRange, Some(Refusal::TooLarge)),
            (Code::Unavailable, None),
            (Code::Internal, None),
            (Code::Unknown, None),
            (Code::Cancelled, None),
            (Code::DeadlineExceeded, None),
            (Code::Unauthenticated, None),
            (Code::PermissionDenied, Some(Refusal::Forbidden)),
        ] {
            assert_eq!(Refusal::of(&Status::new(code, "x")), refusal, "{code:?}");
        }
    }

    #[test]
    fn excerpts_are_escaped_and_bounded() {
        assert_eq!(excerpt("a\nb\"\u{1b}[31m"), "a\\nb\\\"\\u{1b}[31m");
        let long = "é".repeat(EXCERPT_CHARS + 5);
        let e = excerpt(&long);
        assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
        assert!(e.ends_with('…'));
        assert_eq!(
            excerpt(&"x".repeat(EXCERPT_CHARS)),
            "x".repeat(EXCERPT_CHARS)
        );
    }
}
