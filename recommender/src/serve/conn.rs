//! What one gRPC client may hold of `leash serve`: connections, streams, time and memory.
//!
//! Agents keep one connection with one `Push` stream open, so anything beyond a few of each
//! is a client misbehaving, and a stalled or hostile client must not pin the server's memory.
//!
//! - **Connections** ([`incoming`]): at most [`Limits::max_connections`] in all and
//!   [`Limits::max_connections_per_address`] from one client address are open; one over either
//!   limit is closed right at accept, before its TLS handshake, and counted in
//!   `leash_grpc_connections_refused_total`. All agents share one certificate today, so a
//!   per-identity limit would be global: the client address is what tells clients apart.
//! - **Time** ([`Tracked`]): the TLS handshake must finish within
//!   [`Limits::handshake_timeout`], and the connection must then open its first stream within
//!   the same time (so one that never sends its HTTP/2 preface is closed). A connection with no
//!   open stream for [`Limits::idle_timeout`] is closed; HTTP/2 keepalive pings (set up in
//!   [`super::run`]) close connections whose peer went away.
//! - **Streams**: HTTP/2 `max_concurrent_streams` refuses streams beyond
//!   [`Limits::max_streams_per_connection`] (set up in [`super::run`]).
//! - **Memory in flight** ([`StreamLayer`]): tonic buffers a message until it is complete, up
//!   to `--max-message-bytes` per stream. Every byte of a message not yet complete is
//!   counted (`leash_grpc_inflight_bytes`). Each connection may hold
//!   [`Limits::inflight_bytes_per_connection`] of them on its own (an agent's batches are
//!   smaller, so stalled clients never hold them up); bytes beyond that are drawn from one
//!   budget of [`Limits::max_inflight_bytes`] for the whole server. A stream reads its next
//!   HTTP/2 DATA frame only while its connection is within its allowance or the budget has
//!   room; otherwise it waits, and HTTP/2 flow control stops its client. Bytes are given back
//!   when the message is complete (tonic decodes it at once) or the stream ends. A stream with
//!   an incomplete message that gets no byte further for [`Limits::read_timeout`] (its client
//!   stalls, or it waits for budget that stalled clients hold) is reset, which frees its
//!   bytes; a stream between messages holds nothing and may wait as long as it likes. A
//!   stream waiting for budget stops waiting when its connection closes.
//!
//! The bound: a frame is charged after it is read, so each open stream may pass its limit by
//! one DATA frame (16 KiB, HTTP/2's default maximum frame size, which the server keeps).
//! Partially received messages therefore hold at most `max_inflight_bytes + c ×
//! (inflight_bytes_per_connection + max_streams_per_connection × 16 KiB)` with `c` connections
//! open (at most `max_connections`). Below tonic, hyper buffers at most one connection window
//! ([`CONNECTION_WINDOW`]) per connection for streams that are not read, and each connection
//! has its TLS and HTTP/2 state. Tonic reserves a message's announced length at its first
//! bytes; that reservation is address space, not memory, until the bytes arrive.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use http_body::{Frame, SizeHint};
use leash_records::error::Chain;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, futures::OwnedNotified, mpsc};
use tokio::time::Sleep;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http::{Request, Response};
use tonic::transport::server::Connected;

/// The HTTP/2 flow-control window of one connection (and of each of its streams): what a
/// client may send that the server has not read yet. Agents' batches are a few hundred KiB,
/// so 1 MiB keeps a healthy stream streaming.
pub const CONNECTION_WINDOW: u32 = 1 << 20;

/// What one gRPC client may hold; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open gRPC connections in all.
    pub max_connections: usize,
    /// Open gRPC connections from one client IP address.
    pub max_connections_per_address: usize,
    /// Concurrent HTTP/2 streams (calls) on one connection.
    pub max_streams_per_connection: u32,
    /// For the TLS handshake, and then again for the first stream to open.
    pub handshake_timeout: Duration,
    /// A stream with an incomplete message that receives nothing for this long is reset.
    pub read_timeout: Duration,
    /// A connection without an open stream for this long is closed.
    pub idle_timeout: Duration,
    /// Bytes of partially received messages, over all streams, beyond each connection's
    /// [`Limits::inflight_bytes_per_connection`]: the shared budget.
    pub max_inflight_bytes: usize,
    /// Bytes of partially received messages each connection may hold without drawing on the
    /// shared budget, so that stalled clients filling it do not hold up an agent's batches.
    pub inflight_bytes_per_connection: usize,
}

impl Default for Limits {
    /// An agent needs one connection with one stream; a few of each leave room for a
    /// reconnect that overlaps the dying connection. The budget holds 16 messages of the
    /// default 16 MiB limit, more than 4 connections × 2 streams from one address can fill.
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_address: 4,
            max_streams_per_connection: 2,
            handshake_timeout: leash_records::tls::DEFAULT_HANDSHAKE_TIMEOUT,
            read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_inflight_bytes: 256 << 20,
            inflight_bytes_per_connection: CONNECTION_WINDOW as usize,
        }
    }
}

/// The gRPC connection metrics, under `leash_grpc_*`.
#[derive(Debug, Clone, Default)]
struct Metrics {
    open: Gauge,
    refused: Family<Labels, Counter>,
    closed: Family<Labels, Counter>,
    reset: Family<Labels, Counter>,
    inflight: Gauge,
}

type Labels = [(&'static str, &'static str); 1];

/// The state [`incoming`], [`Tracked`] and [`StreamLayer`] share: limits, open connections
/// per address, the memory budget and the metrics. Create one per server.
#[derive(Debug)]
pub struct Shared {
    limits: Limits,
    metrics: Metrics,
    open: Mutex<Open>,
    /// Bytes of incomplete messages held now.
    inflight: AtomicUsize,
    /// The part of them drawn from the shared budget.
    budget_used: AtomicUsize,
    /// Woken when bytes are given back to the budget.
    released: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl Shared {
    /// The state for a server with these limits.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Shared {
            limits,
            metrics: Metrics::default(),
            open: Mutex::new(Open::default()),
            inflight: AtomicUsize::new(0),
            budget_used: AtomicUsize::new(0),
            released: Arc::new(Notify::new()),
        })
    }

    /// Registers the metrics under `leash_grpc_*`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("grpc");
        let m = &self.metrics;
        r.register("connections", "Open gRPC connections", m.open.clone());
        r.register(
            "connections_refused",
            "gRPC connections closed at accept, by the limit they were over (per_address, total)",
            m.refused.clone(),
        );
        r.register(
            "connections_closed",
            "gRPC connections closed by the server, by cause (handshake: no TLS handshake or first stream in time; idle: no stream for the idle timeout)",
            m.closed.clone(),
        );
        r.register(
            "streams_reset",
            "gRPC streams reset with an incomplete message, by cause (read_timeout: the client sent nothing; budget: no in-flight budget freed in time)",
            m.reset.clone(),
        );
        r.register(
            "inflight_bytes",
            "Bytes of partially received gRPC messages held by the server",
            m.inflight.clone(),
        );
    }

    /// The bytes of partially received messages held now.
    pub fn inflight_bytes(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    /// A slot for a new connection from `ip`, or `None` (counted) when a limit is reached.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let over = if open.total >= self.limits.max_connections {
            Some("total")
        } else if open.per_address.get(&ip).copied().unwrap_or(0)
            >= self.limits.max_connections_per_address
        {
            Some("per_address")
        } else {
            None
        };
        if let Some(limit) = over {
            drop(open);
            self.metrics
                .refused
                .get_or_create(&[("limit", limit)])
                .inc();
            return None;
        }
        open.total += 1;
        *open.per_address.entry(ip).or_insert(0) += 1;
        self.metrics.open.inc();
        Some(Slot {
            shared: Arc::clone(self),
            ip,
        })
    }

    /// Whether a stream of `connection` may read more: its connection is within its
    /// allowance, or the shared budget has room.
    fn may_read(&self, connection: Option<&Streams>) -> bool {
        connection.is_some_and(|c| {
            c.inflight.load(Ordering::Acquire) < self.limits.inflight_bytes_per_connection
        }) || self.budget_used.load(Ordering::Acquire) < self.limits.max_inflight_bytes
    }

    /// Changes the bytes a stream of `connection` holds from `from` to `to`: what exceeds the
    /// connection's allowance is drawn from (or given back to) the shared budget. Wakes
    /// waiting streams when bytes are freed.
    fn recharge(&self, connection: Option<&Streams>, from: usize, to: usize) {
        let allowance = match connection {
            Some(_) => self.limits.inflight_bytes_per_connection,
            None => 0,
        };
        let over = |n: usize| n.saturating_sub(allowance);
        if to > from {
            let d = to - from;
            let before = connection.map_or(0, |c| c.inflight.fetch_add(d, Ordering::AcqRel));
            self.budget_used
                .fetch_add(over(before + d) - over(before), Ordering::AcqRel);
            let now = self.inflight.fetch_add(d, Ordering::AcqRel) + d;
            self.metrics.inflight.set(gauge_value(now));
        } else if from > to {
            let d = from - to;
            let before = connection.map_or(d, |c| c.inflight.fetch_sub(d, Ordering::AcqRel));
            self.budget_used
                .fetch_sub(over(before) - over(before - d), Ordering::AcqRel);
            let now = self.inflight.fetch_sub(d, Ordering::AcqRel) - d;
            self.metrics.inflight.set(gauge_value(now));
            self.released.notify_waiters();
        }
    }
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One admitted connection's place in the limits; given back on drop.
#[derive(Debug)]
struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .shared
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_address.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.per_address.remove(&self.ip);
            }
        }
        drop(open);
        self.shared.metrics.open.dec();
    }
}

/// Admitted connections, for `Server::serve_with_incoming`. Dropping it stops accepting.
#[derive(Debug)]
pub struct Incoming<IO> {
    connections: tokio_stream::wrappers::ReceiverStream<io::Result<Tracked<IO>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<IO> tokio_stream::Stream for Incoming<IO> {
    type Item = io::Result<Tracked<IO>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.connections).poll_next(cx)
    }
}

impl<IO> Drop for Incoming<IO> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections on `listener`, closes those over the connection limits at once, and
/// runs `handshake` (TLS, or nothing for plaintext) on the others concurrently, within
/// [`Limits::handshake_timeout`]. A failed or late handshake is logged and counted; it never
/// reaches tonic.
///
/// # Panics
/// Outside a tokio runtime.
pub fn incoming<IO, F, Fut>(
    listener: TcpListener,
    shared: Arc<Shared>,
    handshake: F,
) -> Incoming<IO>
where
    IO: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<IO>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let task = tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!("accept failed: {}", Chain(&e));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Some(slot) = shared.admit(remote.ip().to_canonical()) else {
                tracing::debug!(%remote, "connection refused: over the connection limits");
                drop(tcp);
                continue;
            };
            let timeout = shared.limits.handshake_timeout;
            let shaking = handshake(tcp);
            let shared = Arc::clone(&shared);
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(timeout, shaking).await {
                    Ok(Ok(io)) => {
                        let _ = tx.send(Ok(Tracked::new(io, slot, shared))).await;
                    }
                    Ok(Err(e)) => {
                        if e.kind() == io::ErrorKind::TimedOut {
                            shared.closed("handshake");
                        }
                        tracing::warn!("handshake with {remote} failed: {}", Chain(&e));
                    }
                    Err(_) => {
                        shared.closed("handshake");
                        tracing::warn!("handshake with {remote} timed out after {timeout:?}");
                    }
                }
            });
        }
    });
    Incoming {
        connections: tokio_stream::wrappers::ReceiverStream::new(rx),
        task,
    }
}

impl Shared {
    fn closed(&self, cause: &'static str) {
        self.metrics.closed.get_or_create(&[("cause", cause)]).inc();
    }
}

/// One connection's open streams, shared by its [`Tracked`] IO and its streams' guards.
#[derive(Debug, Default)]
struct Streams {
    open: AtomicUsize,
    /// Whether a stream was ever opened: before that, the handshake timeout applies.
    opened: AtomicBool,
    /// Whether the connection is gone: its streams waiting for budget stop waiting.
    closed: AtomicBool,
    /// Bytes of incomplete messages its streams hold.
    inflight: AtomicUsize,
    /// The connection's reader, woken when its last stream ends so that its idle timer starts.
    reader: AtomicWaker,
}

/// Counts a stream as open on its connection until dropped.
#[derive(Debug)]
struct StreamGuard(Arc<Streams>);

impl StreamGuard {
    fn new(streams: Arc<Streams>) -> Self {
        streams.opened.store(true, Ordering::Release);
        streams.open.fetch_add(1, Ordering::AcqRel);
        StreamGuard(streams)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.reader.wake();
        }
    }
}

/// What handlers see of a [`Tracked`] connection: `I`, the wrapped connection's own info.
/// [`StreamLayer`] takes this out of each request and puts `I` back, so handlers find the
/// usual `TlsConnectInfo` or `TcpConnectInfo`.
#[derive(Debug, Clone)]
pub struct TrackedInfo<I> {
    inner: I,
    streams: Arc<Streams>,
}

/// An admitted connection: holds its place in the connection limits, and closes itself when
/// no stream opens in time (see the module documentation).
#[derive(Debug)]
pub struct Tracked<IO> {
    io: IO,
    streams: Arc<Streams>,
    shared: Arc<Shared>,
    /// Armed while the connection has no open stream.
    idle: Option<Pin<Box<Sleep>>>,
    _slot: Slot,
}

impl<IO> Tracked<IO> {
    fn new(io: IO, slot: Slot, shared: Arc<Shared>) -> Self {
        Tracked {
            io,
            streams: Arc::default(),
            shared,
            idle: None,
            _slot: slot,
        }
    }

    /// `Err(TimedOut)` once the connection has had no open stream for its timeout. Called
    /// when a read would wait, so the timer wakes the connection's task.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.streams.reader.register(cx.waker());
        if self.streams.open.load(Ordering::Acquire) > 0 {
            self.idle = None;
            return Ok(());
        }
        let first = !self.streams.opened.load(Ordering::Acquire);
        let limit = if first {
            self.shared.limits.handshake_timeout
        } else {
            self.shared.limits.idle_timeout
        };
        let timer = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        let (cause, what) = if first {
            ("handshake", "opened no stream")
        } else {
            ("idle", "had no open stream")
        };
        self.shared.closed(cause);
        tracing::debug!("closing a gRPC connection that {what} for {limit:?}");
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connection {what} for {limit:?}"),
        ))
    }
}

impl<IO> Drop for Tracked<IO> {
    fn drop(&mut self) {
        self.streams.closed.store(true, Ordering::Release);
        // Its streams may wait for budget, where they do not read their (now failed) bodies.
        self.shared.released.notify_waiters();
    }
}

impl<IO: Connected> Connected for Tracked<IO> {
    type ConnectInfo = TrackedInfo<IO::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        TrackedInfo {
            inner: self.io.connect_info(),
            streams: Arc::clone(&self.streams),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Pending => match this.poll_idle(cx) {
                Ok(()) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            },
            ready => ready,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// A tonic server layer for connections from [`incoming`] whose own connect info is `I`:
/// counts each stream on its connection and charges its incomplete messages to the budget.
#[derive(Debug)]
pub struct StreamLayer<I> {
    shared: Arc<Shared>,
    _info: PhantomData<fn() -> I>,
}

impl<I> StreamLayer<I> {
    /// The layer for a server sharing `shared` with its [`incoming`].
    pub fn new(shared: Arc<Shared>) -> Self {
        StreamLayer {
            shared,
            _info: PhantomData,
        }
    }
}

impl<I> Clone for StreamLayer<I> {
    fn clone(&self) -> Self {
        StreamLayer::new(Arc::clone(&self.shared))
    }
}

impl<S, I> tower::Layer<S> for StreamLayer<I> {
    type Service = StreamService<S, I>;

    fn layer(&self, inner: S) -> Self::Service {
        StreamService {
            inner,
            shared: Arc::clone(&self.shared),
            _info: PhantomData,
        }
    }
}

/// The service of [`StreamLayer`].
#[derive(Debug)]
pub struct StreamService<S, I> {
    inner: S,
    shared: Arc<Shared>,
    _info: PhantomData<fn() -> I>,
}

impl<S: Clone, I> Clone for StreamService<S, I> {
    fn clone(&self) -> Self {
        StreamService {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            _info: PhantomData,
        }
    }
}

impl<S, I, B> tower::Service<Request<Body>> for StreamService<S, I>
where
    S: tower::Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
    I: Clone + Send + Sync + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let guard = request
            .extensions_mut()
            .remove::<TrackedInfo<I>>()
            .map(|info| {
                request.extensions_mut().insert(info.inner);
                Arc::new(StreamGuard::new(info.streams))
            });
        let shared = Arc::clone(&self.shared);
        let request_guard = guard.clone();
        let request = request.map(|body| {
            Body::new(InflightBody {
                inner: body,
                shared,
                framing: Framing::default(),
                held: 0,
                stalled: None,
                budget: None,
                stream: request_guard,
            })
        });
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // The stream stays open while its response is sent.
            Ok(response.map(|body| {
                Body::new(Guarded {
                    inner: Body::new(body),
                    _stream: guard,
                })
            }))
        })
    }
}

/// A response body that keeps its stream counted as open.
struct Guarded<B> {
    inner: B,
    _stream: Option<Arc<StreamGuard>>,
}

impl<B> http_body::Body for Guarded<B>
where
    B: http_body::Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a stream is in gRPC's framing: each message is a 5-byte prefix (a compression flag
/// and a big-endian u32 length) and that many bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Framing {
    prefix: [u8; 5],
    /// Bytes of `prefix` read so far (5 once it is complete).
    prefix_read: usize,
    /// Bytes of the message body still to come once the prefix is complete.
    body_left: usize,
    /// Bytes of the current, incomplete message received so far (prefix included).
    partial: usize,
}

impl Framing {
    /// Consumes `data`; returns the bytes of the incomplete message at its end (0 when `data`
    /// ends on a message boundary).
    fn advance(&mut self, mut data: &[u8]) -> usize {
        while !data.is_empty() {
            if self.prefix_read < 5 {
                let take = (5 - self.prefix_read).min(data.len());
                self.prefix[self.prefix_read..self.prefix_read + take]
                    .copy_from_slice(&data[..take]);
                self.prefix_read += take;
                self.partial += take;
                data = &data[take..];
                if self.prefix_read == 5 {
                    let [_, a, b, c, d] = self.prefix;
                    self.body_left = u32::from_be_bytes([a, b, c, d]) as usize;
                }
            } else {
                let take = self.body_left.min(data.len());
                self.body_left -= take;
                self.partial += take;
                data = &data[take..];
            }
            if self.prefix_read == 5 && self.body_left == 0 {
                self.prefix_read = 0;
                self.partial = 0;
            }
        }
        self.partial
    }
}

/// A request body that charges its incomplete message to the budget; see the module
/// documentation.
struct InflightBody {
    inner: Body,
    shared: Arc<Shared>,
    framing: Framing,
    /// Bytes charged to the budget now (the incomplete message's).
    held: usize,
    /// Armed while a message is incomplete and nothing arrives.
    stalled: Option<Pin<Box<Sleep>>>,
    /// Armed while waiting for budget.
    budget: Option<Pin<Box<OwnedNotified>>>,
    stream: Option<Arc<StreamGuard>>,
}

impl InflightBody {
    /// Whether the budget has room; if not, registers for a wake-up when it may have. `Err`
    /// when the stream's connection closed meanwhile.
    fn poll_budget(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        loop {
            if self.shared.may_read(connection(self.stream.as_ref())) {
                self.budget = None;
                return Poll::Ready(Ok(()));
            }
            if self.connection_closed() {
                self.budget = None;
                self.release();
                return Poll::Ready(Err(Status::unavailable(
                    "the connection closed while the stream waited for in-flight budget",
                )));
            }
            let released = Arc::clone(&self.shared.released);
            let notified = self
                .budget
                .get_or_insert_with(|| Box::pin(released.notified_owned()));
            // Registered before checking again, so a release in between is not missed.
            notified.as_mut().enable();
            let stream = self.stream.as_ref();
            if self.shared.may_read(connection(stream)) || closed(stream) {
                self.budget = None;
                continue;
            }
            match notified.as_mut().poll(cx) {
                Poll::Ready(()) => self.budget = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn connection_closed(&self) -> bool {
        closed(self.stream.as_ref())
    }

    /// Gives back all bytes held.
    fn release(&mut self) {
        let held = std::mem::take(&mut self.held);
        self.shared
            .recharge(connection(self.stream.as_ref()), held, 0);
    }

    /// Resets the stream once its incomplete message has waited for its timeout.
    fn poll_stalled(&mut self, cx: &mut Context<'_>, for_budget: bool) -> Poll<Status> {
        if self.held == 0 {
            self.stalled = None;
            return Poll::Pending;
        }
        let limit = self.shared.limits.read_timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.stalled = None;
        let held = self.held;
        self.release();
        let (cause, status) = if for_budget {
            (
                "budget",
                Status::unavailable(format!(
                    "the server's budget for incomplete messages stayed full for {limit:?} while {held} bytes of a message waited; retry"
                )),
            )
        } else {
            (
                "read_timeout",
                Status::deadline_exceeded(format!(
                    "no bytes for {limit:?} with {held} bytes of a message received; stream reset"
                )),
            )
        };
        self.shared
            .metrics
            .reset
            .get_or_create(&[("cause", cause)])
            .inc();
        tracing::debug!("{}", status.message());
        Poll::Ready(status)
    }
}

fn connection(stream: Option<&Arc<StreamGuard>>) -> Option<&Streams> {
    stream.map(|s| &*s.0)
}

fn closed(stream: Option<&Arc<StreamGuard>>) -> bool {
    stream.is_some_and(|s| s.0.closed.load(Ordering::Acquire))
}

impl http_body::Body for InflightBody {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        match this.poll_budget(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(status)) => return Poll::Ready(Some(Err(status))),
            Poll::Pending => {
                return match this.poll_stalled(cx, true) {
                    Poll::Ready(status) => Poll::Ready(Some(Err(status))),
                    Poll::Pending => Poll::Pending,
                };
            }
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.stalled = None;
                    let partial = this.framing.advance(data);
                    this.shared
                        .recharge(connection(this.stream.as_ref()), this.held, partial);
                    this.held = partial;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match this.poll_stalled(cx, false) {
                Poll::Ready(status) => Poll::Ready(Some(Err(status))),
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for InflightBody {
    fn drop(&mut self) {
        self.release();
    }
}

/// Has glibc's malloc give every block of 128 KiB or more its own mapping, returned to the
/// system when freed. By default glibc raises that threshold to the largest block freed so
/// far (up to 32 MiB); after the first large message buffer is freed, buffers of up to
/// `--max-message-bytes` then come from its heaps, which keep freed memory: the buffers of
/// stalled clients stayed resident after they closed. Call it once, before the server starts.
pub fn return_freed_buffers_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt sets one of the allocator's parameters, under glibc's own lock; no
        // memory is touched.
        let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10) };
    }
}

/// Serves `router` over HTTP/1 on `listener` until `stop` turns true, then lets open
/// requests finish. A connection whose request headers (the first request's, or the next one
/// on a kept-alive connection) are not complete within `header_timeout` is closed: a client
/// sending nothing, or its headers a byte at a time, holds no socket for longer.
pub async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    header_timeout: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    serve(listener, router, None, header_timeout, stop).await;
}

/// [`serve_http`] over TLS without client certificates (the UI listener with
/// `--ui-tls-cert`): each connection's handshake uses the configuration `tls` holds at its
/// accept ([`leash_records::tls::ReloadingServerConfig`]) and must finish within
/// `header_timeout`; a client that is not speaking TLS (plain HTTP) fails it and is closed
/// unanswered. ALPN picks HTTP/2 (`h2`) or HTTP/1.1; HTTP/2 requests carry their host as the
/// URI's authority, which is copied into `Host` for the handlers that read it (the login
/// form's same-origin check).
pub async fn serve_https(
    listener: TcpListener,
    router: axum::Router,
    tls: tokio::sync::watch::Receiver<Arc<rustls::ServerConfig>>,
    header_timeout: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let router = router.layer(axum::middleware::map_request(host_from_authority));
    serve(listener, router, Some(tls), header_timeout, stop).await;
}

/// Sets `Host` from the URI's authority when the request has none (HTTP/2's `:authority`).
async fn host_from_authority(mut request: axum::extract::Request) -> axum::extract::Request {
    if !request.headers().contains_key(axum::http::header::HOST)
        && let Some(value) = request
            .uri()
            .authority()
            .and_then(|a| axum::http::HeaderValue::from_str(a.as_str()).ok())
    {
        request
            .headers_mut()
            .insert(axum::http::header::HOST, value);
    }
    request
}

type HttpService = hyper_util::service::TowerToHyperService<axum::Router>;

/// The accept loop of [`serve_http`] and [`serve_https`].
async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<tokio::sync::watch::Receiver<Arc<rustls::ServerConfig>>>,
    header_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped(&mut stop) => break,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("HTTP accept failed: {}", Chain(&e));
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let stop = stop.clone();
        let config = tls.as_ref().map(|t| t.borrow().clone());
        connections.spawn(async move {
            let result = match config {
                None => {
                    let _ = tcp.set_nodelay(true);
                    http1(tcp, service, header_timeout, stop).await
                }
                Some(config) => {
                    match leash_records::tls::handshake(tcp, config, header_timeout).await {
                        Ok(tls) if tls.alpn_protocol() == Some(b"h2") => {
                            http2(tls, service, stop).await
                        }
                        Ok(tls) => http1(tls, service, header_timeout, stop).await,
                        Err(e) => {
                            // Scanners and plain-HTTP clients end here: not worth a warning.
                            tracing::debug!("TLS handshake with {remote} failed: {}", Chain(&e));
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!("HTTP connection ended: {}", Chain(&e));
            }
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// One HTTP/1 connection, closed gracefully when `stop` turns true.
async fn http1<I>(
    io: I,
    service: HttpService,
    header_timeout: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> hyper::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        () = stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

/// One HTTP/2 connection (TLS only, by ALPN), closed gracefully when `stop` turns true;
/// keepalive pings close it when its client went away.
async fn http2<I>(
    io: I,
    service: HttpService,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> hyper::Result<()>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(super::KEEPALIVE_INTERVAL))
        .keep_alive_timeout(super::KEEPALIVE_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        () = stopped(&mut stop) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    }
}

async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::Framing;
    use proptest::prelude::*;

    /// The incomplete message's bytes after each chunk, computed from the message sizes.
    fn expected(sizes: &[usize], cuts: &[usize]) -> Vec<usize> {
        let mut starts = Vec::new();
        let mut at = 0;
        for s in sizes {
            starts.push((at, at + 5 + s));
            at += 5 + s;
        }
        cuts.iter()
            .map(|&cut| {
                starts
                    .iter()
                    .find(|&&(start, end)| start < cut && cut < end)
                    .map_or(0, |&(start, _)| cut - start)
            })
            .collect()
    }

    proptest! {
        #[test]
        fn framing_tracks_the_incomplete_message(
            sizes in proptest::collection::vec(0usize..300, 0..6),
            splits in proptest::collection::vec(0usize..2000, 0..12),
        ) {
            let mut wire = Vec::new();
            for &s in &sizes {
                wire.push(0);
                wire.extend_from_slice(&u32::try_from(s).unwrap_or(u32::MAX).to_be_bytes());
                wire.extend(std::iter::repeat_n(7u8, s));
            }
            let mut cuts: Vec<usize> = splits.iter().map(|s| s % (wire.len() + 1)).collect();
            cuts.push(wire.len());
            cuts.sort_unstable();
            cuts.dedup();
            let mut framing = Framing::default();
            let mut got = Vec::new();
            let mut from = 0;
            for &cut in &cuts {
                got.push(framing.advance(&wire[from..cut]));
                from = cut;
            }
            prop_assert_eq!(got, expected(&sizes, &cuts));
        }

        #[test]
        fn framing_takes_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut framing = Framing::default();
            let partial = framing.advance(&data);
            prop_assert!(partial <= data.len());
        }
    }
}
