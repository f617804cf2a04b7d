//! `leash serve` against clients that hold on to it: stalled messages, silent connections,
//! too many connections from one address, too many streams on one connection. The server runs
//! in process ([`leash::serve::run`]) with mutual TLS on loopback and shortened limits; the
//! misbehaving clients speak HTTP/2 frame by frame (a well-behaved client library would never
//! open a stream beyond the server's limit), a well-behaved agent uses the gRPC client.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use leash::serve::{ClusterSource, Config, conn::Limits};
use leash_records::tls::{self, TlsConnector, TlsFiles};
use leash_records::wire::{self, v1, v1::ingest_client::IngestClient};
use leash_records::{FlowRecord, PodRef, Protocol};
use support::http;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// The longest any expected event may take; the limits under test are far shorter.
const WAIT: Duration = Duration::from_secs(10);

const AGENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

// ---- the server ----------------------------------------------------------------------------

/// A `leash serve` in this process, stopped on drop.
struct Server {
    grpc: SocketAddr,
    http: SocketAddr,
    dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

impl Server {
    /// Starts the server with `limits` and messages of at most `max_message_bytes`, and waits
    /// until it answers `/readyz`.
    async fn start(limits: Limits, max_message_bytes: usize) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        leash::certs::generate(
            dir.path(),
            &["127.0.0.1".to_owned()],
            &["node-a".to_owned()],
        )
        .expect("certificates");
        let snapshot = dir.path().join("cluster.yaml");
        std::fs::write(&snapshot, "apiVersion: v1\nkind: List\nitems: []\n").expect("snapshot");
        let (grpc, http) = (free_port(), free_port());
        let config = Config {
            listen: grpc,
            http,
            ui: free_port(),
            ui_auth: None,
            ui_transport: leash::serve::auth::UiTransport::Http,
            store: leash::store::Location::Sqlite(dir.path().join("leash.db")),
            cluster: ClusterSource::File(snapshot),
            tls: Some(TlsFiles {
                cert: dir.path().join("server.pem"),
                key: dir.path().join("server-key.pem"),
                ca: dir.path().join("ca.pem"),
            }),
            retention: Duration::from_secs(86_400),
            check_interval: Duration::from_secs(3600),
            max_batch_records: 1000,
            max_message_bytes,
            options: leash::recommend::Options::default(),
            limits,
            rollout: leash::serve::shadow::Options::default(),
            alerts: leash::serve::AlertOptions::default(),
            pull_requests: None,
            ranges: None,
            leader: None,
            agents: Default::default(),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = leash::serve::run(config, shutdown).await {
                panic!("leash serve failed: {e}");
            }
        });
        let server = Server {
            grpc,
            http,
            dir,
            _stop: stop,
            task,
        };
        wait_until("the server is ready", || async {
            get(server.http, "/readyz")
                .await
                .is_ok_and(|(s, _)| s == 200)
        })
        .await;
        server
    }

    fn client_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.path("node-a.pem"),
            key: self.path("node-a-key.pem"),
            ca: self.path("ca.pem"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A metric's value from `/metrics` (`name` includes its labels, if any), 0 if absent.
    async fn metric(&self, name: &str) -> f64 {
        let (_, text) = get(self.http, "/metrics").await.expect("metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// A TCP connection to the gRPC port from `from`.
    async fn tcp(&self, from: IpAddr) -> std::io::Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        socket.connect(self.grpc).await
    }

    /// A TCP + mutual TLS connection to the gRPC port from `from`, with the agent certificate.
    async fn tls(&self, from: IpAddr) -> std::io::Result<Tls> {
        let tcp = self.tcp(from).await?;
        let config = tls::client_config(&self.client_files()).map_err(std::io::Error::other)?;
        let name =
            rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(std::io::Error::other)?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
    }

    /// An HTTP/2 connection over [`Server::tls`], settings exchanged.
    async fn h2(&self, from: IpAddr) -> std::io::Result<H2> {
        H2::handshake(self.tls(from).await?).await
    }

    /// The well-behaved agent: a gRPC client over its own connection from 127.0.0.1.
    async fn agent(&self) -> IngestClient<tonic::transport::Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("https://{}", self.grpc))
            .expect("uri")
            .connect_with_connector(TlsConnector::new(self.client_files()))
            .await
            .expect("the agent connects");
        IngestClient::new(channel)
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A minimal HTTP/1.1 GET: status and body.
async fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    let answer = http::parse_answer(&raw);
    Ok((answer.status, answer.body))
}

/// Polls `done` every 20 ms for up to [`WAIT`].
async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads until the peer closes the connection (EOF or an error); false if it is still open
/// after `within`.
async fn closed_within(io: &mut (impl AsyncRead + Unpin), within: Duration) -> bool {
    let drain = async {
        let mut buf = [0u8; 4096];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, drain).await.is_ok()
}

// ---- HTTP/2 frame by frame -----------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 3;
const CANCEL: u32 = 8;
const REFUSED_STREAM: u32 = 7;
/// HTTP/2's default maximum frame size, which the server keeps.
const MAX_FRAME: usize = 16_384;

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn error_code(&self) -> Option<u32> {
        let bytes: [u8; 4] = self.payload.get(..4)?.try_into().ok()?;
        Some(u32::from_be_bytes(bytes))
    }
}

/// An HTTP/2 client connection driven frame by frame.
struct H2 {
    io: Tls,
    /// The server's SETTINGS_MAX_CONCURRENT_STREAMS.
    max_streams: Option<u32>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("a small frame");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// An HPACK literal header field without indexing, plain strings (all shorter than 127).
fn header(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0, u8::try_from(name.len()).expect("short name")];
    out.extend(name.as_bytes());
    out.push(u8::try_from(value.len()).expect("short value"));
    out.extend(value.as_bytes());
    out
}

impl H2 {
    /// Sends the preface and settings, reads the server's settings and acknowledges them (the
    /// server applies its own limits from that acknowledgement on).
    async fn handshake(mut io: Tls) -> std::io::Result<H2> {
        io.write_all(PREFACE).await?;
        io.write_all(&frame(SETTINGS, 0, 0, &[])).await?;
        let mut h2 = H2 {
            io,
            max_streams: None,
        };
        loop {
            let f = h2.read().await?;
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                for setting in f.payload.chunks_exact(6) {
                    let id = u16::from_be_bytes([setting[0], setting[1]]);
                    let value =
                        u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]);
                    if id == SETTINGS_MAX_CONCURRENT_STREAMS {
                        h2.max_streams = Some(value);
                    }
                }
                h2.io.write_all(&frame(SETTINGS, ACK, 0, &[])).await?;
                return Ok(h2);
            }
        }
    }

    async fn read(&mut self) -> std::io::Result<Frame> {
        let mut head = [0u8; 9];
        self.io.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let mut payload = vec![0u8; len];
        self.io.read_exact(&mut payload).await?;
        Ok(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Opens a `leash.v1.Ingest/Push` call on `stream`.
    async fn open(&mut self, stream: u32) -> std::io::Result<()> {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "https"),
            (":path", "/leash.v1.Ingest/Push"),
            (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ] {
            block.extend(header(name, value));
        }
        self.io
            .write_all(&frame(HEADERS, END_HEADERS, stream, &block))
            .await
    }

    /// Sends the start of a gRPC message that announces `announced` bytes, with `sent` of
    /// them, and then nothing: a stalled client. `sent` stays under HTTP/2's initial windows
    /// (65,535 bytes), so no flow control is needed.
    async fn stall(&mut self, stream: u32, announced: u32, sent: usize) -> std::io::Result<()> {
        let mut message = vec![0u8];
        message.extend(announced.to_be_bytes());
        message.resize(5 + sent, 0x5a);
        for chunk in message.chunks(MAX_FRAME) {
            self.io.write_all(&frame(DATA, 0, stream, chunk)).await?;
        }
        self.io.flush().await
    }

    async fn reset(&mut self, stream: u32) -> std::io::Result<()> {
        self.io
            .write_all(&frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()))
            .await
    }

    /// Reads frames until one on `stream` ends it (END_STREAM or RST_STREAM) and returns
    /// that frame; `None` if none came within `within`.
    async fn ended(&mut self, stream: u32, within: Duration) -> Option<Frame> {
        let wait = async {
            loop {
                let f = self.read().await.ok()?;
                if f.stream == stream && (f.kind == RST_STREAM || f.flags & END_STREAM != 0) {
                    return Some(f);
                }
            }
        };
        tokio::time::timeout(within, wait).await.ok().flatten()
    }
}

// ---- the tests -----------------------------------------------------------------------------

/// The bytes of a message that 127.0.0.x stalls on: under HTTP/2's initial window.
const STALLED: usize = 60_000;

#[tokio::test]
async fn a_stalled_message_is_reset_after_the_read_timeout_and_its_bytes_are_released() {
    let server = Server::start(
        Limits {
            read_timeout: Duration::from_millis(500),
            ..Limits::default()
        },
        16 << 20,
    )
    .await;
    let mut client = server.h2(loopback(2)).await.expect("connect");
    client.open(1).await.expect("open");
    // 60 kB of an announced 16 MB, then silence.
    client.stall(1, 16_000_000, STALLED).await.expect("send");

    let end = client
        .ended(1, WAIT)
        .await
        .expect("the server ends the stalled stream");
    assert!(
        end.kind == HEADERS || end.kind == RST_STREAM,
        "frame {}",
        end.kind
    );
    assert_eq!(
        server
            .metric("leash_grpc_streams_reset_total{cause=\"read_timeout\"}")
            .await,
        1.0
    );
    wait_until("the stalled message's bytes are released", || async {
        server.metric("leash_grpc_inflight_bytes").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn in_flight_bytes_stay_within_the_budget_while_clients_stall() {
    const BUDGET: usize = 128 << 10;
    let server = Server::start(
        Limits {
            max_inflight_bytes: BUDGET,
            // Every byte draws on the shared budget.
            inflight_bytes_per_connection: 0,
            max_connections_per_address: 2,
            read_timeout: Duration::from_secs(60),
            ..Limits::default()
        },
        BUDGET,
    )
    .await;
    // Four clients from two addresses stall with 60 kB each: 240 kB, more than the budget.
    let mut clients = Vec::new();
    for from in [2, 2, 3, 3] {
        let mut c = server.h2(loopback(from)).await.expect("connect");
        c.open(1).await.expect("open");
        c.stall(1, 100_000, STALLED).await.expect("send");
        clients.push(c);
    }
    wait_until("the stalled clients fill the budget", || async {
        server.metric("leash_grpc_inflight_bytes").await >= BUDGET as f64
    })
    .await;
    // Each stream may read one frame past the budget, and no more, however long they wait.
    let bound = (BUDGET + 4 * MAX_FRAME) as f64;
    for _ in 0..25 {
        let held = server.metric("leash_grpc_inflight_bytes").await;
        assert!(held <= bound, "{held} bytes in flight, over {bound}");
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    drop(clients);
    wait_until("closed clients' bytes are released", || async {
        server.metric("leash_grpc_inflight_bytes").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_well_behaved_agent_keeps_getting_acks_while_stalled_clients_fill_the_budget() {
    const BUDGET: usize = 64 << 10;
    const ALLOWANCE: usize = 16 << 10;
    let server = Server::start(
        Limits {
            max_connections_per_address: 2,
            max_inflight_bytes: BUDGET,
            inflight_bytes_per_connection: ALLOWANCE,
            read_timeout: Duration::from_secs(60),
            ..Limits::default()
        },
        16 << 20,
    )
    .await;
    // 127.0.0.2 stalls on every stream it may open (2 connections × 2 streams), and tries
    // two connections more. Two streams share a connection's initial window: half each.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut c = server.h2(loopback(2)).await.expect("connect");
        for stream in [1, 3] {
            c.open(stream).await.expect("open");
            c.stall(stream, 16_000_000, STALLED / 2)
                .await
                .expect("send");
        }
        stalled.push(c);
    }
    for _ in 0..2 {
        assert!(
            server.h2(loopback(2)).await.is_err(),
            "a third connection is refused"
        );
    }
    // 120 kB stalled: both connections' allowances and the whole budget.
    let full = (BUDGET + 2 * ALLOWANCE) as f64;
    wait_until("the stalled streams fill the budget", || async {
        server.metric("leash_grpc_inflight_bytes").await >= full
    })
    .await;

    let mut agent = server.agent().await;
    let t: chrono::DateTime<chrono::Utc> = "2026-11-25T09:00:00Z".parse().expect("time");
    let batches: Vec<v1::Batch> = (1..=5)
        .map(|seq| {
            let flow = FlowRecord {
                node: "node-a".into(),
                pod: Some(PodRef {
                    uid: String::new(),
                    namespace: "shop".into(),
                    name: "web".into(),
                }),
                cgroup: String::new(),
                protocol: Protocol::Tcp,
                dst: [203, 0, 113, 7].into(),
                dst_port: 443,
                count: 1,
                first_seen: t,
                last_seen: t,
                names: vec![],
                outcome: None,
            };
            let id = v1::BatchId {
                node: "node-a".into(),
                boot_id: "boot-1".into(),
                seq,
            };
            wire::batch_to_wire(id, &[flow], &[]).expect("valid batch")
        })
        .collect();
    let mut acks = agent
        .push(tokio_stream::iter(batches))
        .await
        .expect("push")
        .into_inner();
    for seq in 1..=5 {
        let ack = tokio::time::timeout(WAIT, acks.message())
            .await
            .expect("an ack in time")
            .expect("an ack, not an error")
            .expect("the stream stays open");
        assert_eq!(ack.id.map(|id| id.seq), Some(seq));
    }
    // The stalled clients held the budget all along.
    assert!(server.metric("leash_grpc_inflight_bytes").await >= full);
    assert_eq!(server.metric("leash_grpc_connections").await, 3.0);
    drop(stalled);
}

#[tokio::test]
async fn connections_beyond_the_per_address_limit_are_refused_at_accept() {
    let server = Server::start(
        Limits {
            max_connections_per_address: 2,
            handshake_timeout: Duration::from_secs(30),
            ..Limits::default()
        },
        16 << 20,
    )
    .await;
    let first = server.h2(AGENT).await.expect("first connection");
    let _second = server.h2(AGENT).await.expect("second connection");
    assert!(
        server.h2(AGENT).await.is_err(),
        "a third connection from the same address is refused"
    );
    assert_eq!(
        server
            .metric("leash_grpc_connections_refused_total{limit=\"per_address\"}")
            .await,
        1.0
    );
    // Another address has its own allowance.
    let _other = server
        .h2(loopback(3))
        .await
        .expect("another address connects");
    assert_eq!(server.metric("leash_grpc_connections").await, 3.0);
    // A closed connection gives its place back.
    drop(first);
    wait_until("a place is free again", || async {
        server.h2(AGENT).await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn streams_beyond_the_per_connection_limit_are_refused() {
    let server = Server::start(
        Limits {
            max_streams_per_connection: 2,
            ..Limits::default()
        },
        16 << 20,
    )
    .await;
    let mut client = server.h2(AGENT).await.expect("connect");
    assert_eq!(
        client.max_streams,
        Some(2),
        "the server announces its limit"
    );
    // A client that ignores the announcement opens a third stream anyway.
    for stream in [1, 3, 5] {
        client.open(stream).await.expect("open");
    }
    let wait = async {
        loop {
            let f = client.read().await.expect("the connection stays open");
            if f.kind == RST_STREAM {
                return f;
            }
        }
    };
    let reset = tokio::time::timeout(WAIT, wait)
        .await
        .expect("a stream is refused");
    assert_eq!(reset.stream, 5, "the third stream is the one refused");
    assert_eq!(reset.error_code(), Some(REFUSED_STREAM));
}

#[tokio::test]
async fn silent_connections_are_closed_after_the_handshake_and_idle_timeouts() {
    let timeout = Duration::from_millis(500);
    let server = Server::start(
        Limits {
            handshake_timeout: timeout,
            idle_timeout: timeout,
            ..Limits::default()
        },
        16 << 20,
    )
    .await;
    // Each is closed within a few times its timeout (the default handshake timeout, 10 s,
    // would not do).
    let within = Duration::from_secs(5);

    // gRPC port: no TLS handshake.
    let mut tcp = server.tcp(AGENT).await.expect("connect");
    assert!(closed_within(&mut tcp, within).await, "no TLS handshake");
    // TLS, then no HTTP/2 preface.
    let mut tls = server.tls(AGENT).await.expect("tls");
    assert!(closed_within(&mut tls, within).await, "no HTTP/2 preface");
    // HTTP/2, then no stream.
    let mut h2 = server.h2(AGENT).await.expect("h2");
    assert!(closed_within(&mut h2.io, within).await, "no stream");
    // A stream, then none for the idle timeout.
    let mut h2 = server.h2(AGENT).await.expect("h2");
    h2.open(1).await.expect("open");
    h2.reset(1).await.expect("reset");
    assert!(
        closed_within(&mut h2.io, within).await,
        "idle after a stream"
    );
    assert_eq!(
        server
            .metric("leash_grpc_connections_closed_total{cause=\"handshake\"}")
            .await,
        3.0
    );
    assert_eq!(
        server
            .metric("leash_grpc_connections_closed_total{cause=\"idle\"}")
            .await,
        1.0
    );

    // HTTP port: nothing, or headers that never end.
    let mut silent = TcpStream::connect(server.http).await.expect("connect");
    assert!(
        closed_within(&mut silent, within).await,
        "HTTP: nothing sent"
    );
    let mut partial = TcpStream::connect(server.http).await.expect("connect");
    partial
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: leash\r\n")
        .await
        .expect("write");
    assert!(
        closed_within(&mut partial, within).await,
        "HTTP: partial headers"
    );
    // The HTTP port still serves.
    let (status, _) = get(server.http, "/healthz").await.expect("healthz");
    assert_eq!(status, 200);
}
