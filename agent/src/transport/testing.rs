//! A recording `Ingest` server for tests and benchmarks: a real tonic server on loopback
//! (plaintext or mutual TLS) that stores batch ids, sums the counts of the batches it stores
//! (each id once), can refuse to acknowledge, and can be stopped and restarted on its port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use leash_records::tls::{self, TlsFiles};
use leash_records::wire::{self, v1};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// What the server saw, across restarts.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Times each `(boot_id, seq)` arrived.
    pub arrivals: BTreeMap<(String, u64), u32>,
    /// Sequence numbers in arrival order.
    pub order: Vec<u64>,
    /// Sum of `count` over the flows of stored batches (each id counted once).
    pub events: u64,
    /// Flow records stored.
    pub flows: u64,
    /// DNS records stored.
    pub dns: u64,
    /// Acks sent.
    pub acks: u64,
    /// Batches that failed validation.
    pub invalid: u64,
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Seen>>,
    refuse_acks: Arc<AtomicBool>,
}

impl Recorder {
    fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

type AckStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::Ack, Status>> + Send>>;

#[tonic::async_trait]
impl v1::ingest_server::Ingest for Recorder {
    type PushStream = AckStream;

    async fn push(
        &self,
        request: Request<Streaming<v1::Batch>>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let mut batches = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(batch)) = batches.message().await {
                let Ok(batch) = wire::batch_from_wire(batch) else {
                    this.seen().invalid += 1;
                    continue;
                };
                let duplicate = {
                    let mut seen = this.seen();
                    seen.order.push(batch.id.seq);
                    let n = seen
                        .arrivals
                        .entry((batch.id.boot_id.clone(), batch.id.seq))
                        .or_insert(0);
                    *n += 1;
                    let duplicate = *n > 1;
                    if !duplicate {
                        seen.events += batch.flows.iter().map(|f| f.count).sum::<u64>();
                        seen.flows += batch.flows.len() as u64;
                        seen.dns += batch.dns.len() as u64;
                    }
                    duplicate
                };
                if this.refuse_acks.load(Ordering::SeqCst) {
                    continue;
                }
                let ack = v1::Ack {
                    id: Some(batch.id),
                    duplicate,
                    rejected: Vec::new(),
                };
                if tx.send(Ok(ack)).await.is_err() {
                    break;
                }
                this.seen().acks += 1;
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
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local_addr: {e}"));
        let mut server = Self {
            addr,
            tls,
            recorder: Recorder::default(),
            running: None,
        };
        server.serve(listener);
        server
    }

    fn serve(&mut self, listener: std::net::TcpListener) {
        if let Some(files) = &self.tls {
            // Fail here, in the caller's thread, rather than silently in the server's.
            tls::server_config(files).unwrap_or_else(|e| panic!("server TLS: {e}"));
        }
        let svc = v1::ingest_server::IngestServer::new(self.recorder.clone());
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
                Err(e) if Instant::now() > deadline => panic!("rebind {}: {e}", self.addr),
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
