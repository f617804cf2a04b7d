//! A recording `Ingest` server for tests and benchmarks: a real tonic server on loopback
//! (plaintext or mutual TLS) that stores batch ids, sums the counts of the batches it stores
//! (each id once), can refuse to acknowledge, and can be stopped and restarted on its port.
//!
//! It answers what it cannot take like a recommender of either version, to test both against
//! the agent ([`Answers`]): a flow with a name that is no valid DNS name (an empty one, as a
//! root-owned answer makes) is its invalid record, and `--max-message-bytes` its size limit. It can also refuse every batch
//! (an id the recommender does not take) or answer UNAVAILABLE (overload).
//!
//! Test-only: compiled for this crate's unit tests and with the `testing` feature, which only
//! this crate's own dev-dependency enables.

// `make product-check` builds the library with this cfg and without the `testing`
// feature: it passes only if this module is left out of the product.
#[cfg(leash_product_build)]
compile_error!("test-only code compiled into the product library");

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use leash_records::error::Chain;
use leash_records::names;
use leash_records::tls::{self, TlsFiles};
use leash_records::wire::{self, v1};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::split::{self, WireRecord};

/// How the server answers invalid records and oversized messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Answers {
    /// As the `leash.v1` contract says: the valid records of a batch are stored and the invalid
    /// ones listed in the ack's `rejected`; an oversized message ends the stream with
    /// RESOURCE_EXHAUSTED.
    #[default]
    Current,
    /// As recommenders before `Ack.rejected`: a batch with an invalid record is refused whole
    /// with INVALID_ARGUMENT, which ends the stream; acks never list refused records; an
    /// oversized message ends the stream with tonic's own status (OUT_OF_RANGE).
    Old,
}

/// What the server saw, across restarts.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Times each `(boot_id, seq)` arrived, refused or not.
    pub arrivals: BTreeMap<(String, u64), u32>,
    /// Sequence numbers in arrival order.
    pub order: Vec<u64>,
    /// The ids stored (each stored once; a later arrival is a duplicate).
    pub stored: BTreeSet<(String, u64)>,
    /// Sum of `count` over the flows stored (each id counted once).
    pub events: u64,
    /// Flow records stored.
    pub flows: u64,
    /// DNS records stored.
    pub dns: u64,
    /// The most names a stored flow record carried.
    pub max_names: usize,
    /// Acks sent.
    pub acks: u64,
    /// Batches that failed validation.
    pub invalid: u64,
    /// Records left out of stored batches and listed in acks as refused.
    pub rejected: u64,
    /// Acks that listed refused records.
    pub acks_with_rejected: u64,
    /// Batches refused whole with INVALID_ARGUMENT (an invalid record with [`Answers::Old`],
    /// or every batch while refusing all).
    pub refused_batches: u64,
    /// Messages over the size limit.
    pub too_large: u64,
    /// Batches answered UNAVAILABLE.
    pub unavailable: u64,
    /// The `authorization` value of every stream opened, in order (`None`: not sent).
    pub tokens: Vec<Option<String>>,
    /// Streams refused with UNAUTHENTICATED (not the required token).
    pub unauthenticated: u64,
    /// Batches refused with PERMISSION_DENIED.
    pub forbidden: u64,
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Seen>>,
    refuse_acks: Arc<AtomicBool>,
    /// [`Answers`] as a number: 0 current, 1 old.
    answers: Arc<AtomicU8>,
    refuse_all: Arc<AtomicBool>,
    unavailable: Arc<AtomicU32>,
    /// Streams without this `authorization` value are refused with UNAUTHENTICATED.
    required_token: Arc<Mutex<Option<String>>>,
    forbid: Arc<AtomicBool>,
}

impl Recorder {
    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answers(&self) -> Answers {
        match self.answers.load(Ordering::SeqCst) {
            1 => Answers::Old,
            _ => Answers::Current,
        }
    }

    /// The answer to one batch: an ack, nothing (acks refused), or a status that ends the
    /// stream.
    fn answer(&self, batch: v1::Batch) -> Result<Option<v1::Ack>, Status> {
        let Some(id) = batch.id.clone() else {
            self.seen().invalid += 1;
            return Err(Status::invalid_argument("batch has no id"));
        };
        let name = format!("batch {}/{}/{}", id.node, id.boot_id, id.seq);
        {
            let mut seen = self.seen();
            seen.order.push(id.seq);
            *seen
                .arrivals
                .entry((id.boot_id.clone(), id.seq))
                .or_insert(0) += 1;
        }
        let take_one = |n: u32| n.checked_sub(1);
        if self
            .unavailable
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, take_one)
            .is_ok()
        {
            self.seen().unavailable += 1;
            return Err(Status::unavailable(format!(
                "{name}: the store is busy; retry"
            )));
        }
        if self.forbid.load(Ordering::SeqCst) {
            self.seen().forbidden += 1;
            return Err(Status::permission_denied(format!(
                "{name}: node {:?} is not the caller's node",
                id.node
            )));
        }
        if self.refuse_all.load(Ordering::SeqCst) {
            self.seen().refused_batches += 1;
            return Err(Status::invalid_argument(format!(
                "{name}: batch id: node: refused"
            )));
        }
        let invalid = invalid_records(&batch);
        let answers = self.answers();
        if answers == Answers::Old
            && let Some((index, detail)) = invalid.first()
        {
            self.seen().refused_batches += 1;
            return Err(Status::invalid_argument(format!(
                "{name}: record {index}: {detail}"
            )));
        }
        let valid = split::select(&batch, |i| !invalid.iter().any(|(at, _)| *at == i));
        let valid = wire::batch_from_wire(valid).map_err(|e| {
            self.seen().invalid += 1;
            Status::invalid_argument(format!("{name}: {}", Chain(&e)))
        })?;
        let duplicate = {
            let mut seen = self.seen();
            let duplicate = !seen.stored.insert((id.boot_id.clone(), id.seq));
            if !duplicate {
                seen.events += valid.flows.iter().map(|f| f.count).sum::<u64>();
                seen.flows += valid.flows.len() as u64;
                let most = valid.flows.iter().map(|f| f.names.len()).max();
                seen.max_names = seen.max_names.max(most.unwrap_or(0));
                seen.dns += valid.dns.len() as u64;
                seen.rejected += invalid.len() as u64;
            }
            duplicate
        };
        if self.refuse_acks.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let rejected: Vec<v1::RejectedRecord> = invalid
            .into_iter()
            .map(|(index, detail)| v1::RejectedRecord {
                index: u32::try_from(index).unwrap_or(u32::MAX),
                reason: v1::RejectReason::InvalidName as i32,
                detail,
            })
            .collect();
        let mut seen = self.seen();
        seen.acks += 1;
        if !rejected.is_empty() {
            seen.acks_with_rejected += 1;
        }
        Ok(Some(v1::Ack {
            id: Some(id),
            duplicate,
            rejected,
        }))
    }

    /// The status that ends the stream after reading a message failed.
    fn read_error(&self, status: Status) -> Status {
        if status.code() != Code::OutOfRange {
            return status;
        }
        self.seen().too_large += 1;
        match self.answers() {
            Answers::Old => status,
            Answers::Current => {
                Status::resource_exhausted(format!("batch message too large: {}", status.message()))
            }
        }
    }
}

/// The records this server refuses, as (contract index, detail): a flow with a name that is
/// no DNS name as leash stores it ([`names::dns_name`]: an empty name, a bad character, …).
fn invalid_records(batch: &v1::Batch) -> Vec<(usize, String)> {
    split::records(batch)
        .enumerate()
        .filter_map(|(i, record)| match record {
            WireRecord::Flow { flow, .. } => flow.names.iter().enumerate().find_map(|(n, name)| {
                names::dns_name(name)
                    .err()
                    .map(|e| (i, format!("names[{n}]: {}", Chain(&e))))
            }),
            WireRecord::Dns(_) => None,
        })
        .collect()
}

type AckStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::Ack, Status>> + Send>>;

#[tonic::async_trait]
impl v1::ingest_server::Ingest for Recorder {
    type PushStream = AckStream;

    async fn push(
        &self,
        request: Request<Streaming<v1::Batch>>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.seen().tokens.push(token.clone());
        let required = self
            .required_token
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if required.is_some() && token != required {
            self.seen().unauthenticated += 1;
            return Err(Status::unauthenticated("the token is not valid"));
        }
        let mut batches = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                // Answers go out in order; an error is the stream's last answer.
                let answer = match batches.message().await {
                    Ok(Some(batch)) => this.answer(batch),
                    Ok(None) => break,
                    Err(status) => Err(this.read_error(status)),
                };
                let last = answer.is_err();
                let answer = match answer {
                    Ok(Some(ack)) => Ok(ack),
                    Ok(None) => continue,
                    Err(status) => Err(status),
                };
                if tx.send(answer).await.is_err() || last {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The recording server. Dropping it stops it.
///
/// It runs on its own thread and runtime: stopping it drops that runtime, which closes the
/// listener and every open connection at once, as a crashed recommender would.
pub struct RecordingServer {
    addr: SocketAddr,
    tls: Option<TlsFiles>,
    max_message_bytes: Option<usize>,
    recorder: Recorder,
    running: Option<(oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl std::fmt::Debug for RecordingServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingServer")
            .field("addr", &self.addr)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl RecordingServer {
    /// Starts on `127.0.0.1:0`, with mutual TLS when `tls` is given (server certificate and
    /// key, and the CA client certificates must chain to).
    ///
    /// # Panics
    /// If loopback cannot be bound or the TLS files are bad (test set-up errors).
    pub async fn start_new(tls: Option<TlsFiles>) -> Self {
        Self::start_limited(tls, None).await
    }

    /// [`RecordingServer::start_new`] with a limit on the size of a message it reads, as
    /// `leash serve --max-message-bytes` (tonic's default of 4 MiB when `None`).
    ///
    /// # Panics
    /// As [`RecordingServer::start_new`].
    pub async fn start_limited(tls: Option<TlsFiles>, max_message_bytes: Option<usize>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {}", Chain(&e)));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {}", Chain(&e)));
        let mut server = Self {
            addr,
            tls,
            max_message_bytes,
            recorder: Recorder::default(),
            running: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        if let Some(files) = &self.tls {
            // Fail here, in the caller's thread, rather than silently in the server's.
            tls::server_config(files).unwrap_or_else(|e| panic!("server TLS: {}", Chain(&e)));
        }
        let mut svc = v1::ingest_server::IngestServer::new(self.recorder.clone());
        if let Some(limit) = self.max_message_bytes {
            svc = svc.max_decoding_message_size(limit);
        }
        let tls_files = self.tls.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let _ = listener.set_nonblocking(true);
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                let server = tonic::transport::Server::builder();
                match tls_files {
                    Some(files) => {
                        let Ok(config) = tls::server_config(&files) else {
                            return;
                        };
                        let (_keep, rx) = tokio::sync::watch::channel(config);
                        let incoming = tls::incoming(listener, rx, Duration::from_secs(5));
                        tokio::select! {
                            _ = server.serve_with_incoming(svc, incoming) => {}
                            _ = stopped => {}
                        }
                    }
                    None => {
                        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                        tokio::select! {
                            _ = server.serve_with_incoming(svc, incoming) => {}
                            _ = stopped => {}
                        }
                    }
                }
            });
            // Dropping the runtime here ends every connection task with it.
        });
        self.running = Some((stop, thread));
    }

    /// Stops serving: the listener and every open stream are gone (an outage).
    pub async fn stop(&mut self) {
        if let Some((stop, thread)) = self.running.take() {
            let _ = stop.send(());
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// Serves again on the same port.
    ///
    /// # Panics
    /// If the port cannot be bound again within 20 s.
    pub async fn start(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let listener = loop {
            match std::net::TcpListener::bind(self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => {
                    panic!("rebind {}: {e}", self.addr, e = Chain(&e))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
    }

    /// `https://127.0.0.1:PORT` with TLS, else `http://…`.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.addr.port())
    }

    /// While `true`, batches are stored but not acknowledged.
    pub fn refuse_acks(&self, refuse: bool) {
        self.recorder.refuse_acks.store(refuse, Ordering::SeqCst);
    }

    /// Answers invalid records and oversized messages as `answers` says (from the next batch).
    pub fn answer_like(&self, answers: Answers) {
        let n = match answers {
            Answers::Current => 0,
            Answers::Old => 1,
        };
        self.recorder.answers.store(n, Ordering::SeqCst);
    }

    /// While `true`, every batch is refused whole with INVALID_ARGUMENT, as for an id the
    /// recommender does not take.
    pub fn refuse_all(&self, refuse: bool) {
        self.recorder.refuse_all.store(refuse, Ordering::SeqCst);
    }

    /// Answers the next `batches` batches with UNAVAILABLE (overload), each ending its stream.
    pub fn unavailable_for(&self, batches: u32) {
        self.recorder.unavailable.store(batches, Ordering::SeqCst);
    }

    /// Refuses every stream whose `authorization` value is not `value` with UNAUTHENTICATED
    /// (`None`: takes any).
    pub fn require_authorization(&self, value: Option<&str>) {
        *self
            .recorder
            .required_token
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = value.map(str::to_owned);
    }

    /// While `true`, every batch is refused with PERMISSION_DENIED, as a recommender refuses
    /// a batch of another node than the agent's token.
    pub fn forbid(&self, forbid: bool) {
        self.recorder.forbid.store(forbid, Ordering::SeqCst);
    }

    /// A copy of what the server saw.
    pub fn seen(&self) -> Seen {
        self.recorder.seen().clone()
    }
}

impl Drop for RecordingServer {
    fn drop(&mut self) {
        if let Some((stop, _thread)) = self.running.take() {
            // The thread ends by itself; not joined here (this may run inside a runtime).
            let _ = stop.send(());
        }
    }
}
