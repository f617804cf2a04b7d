//! What the READMEs promise of a running `leash serve`, checked on the real binary: every
//! metric they name is on the served `/metrics` (as `leash_*`, never `leash_leash_*`), and the
//! log filter follows `LEASH_LOG`, else `RUST_LOG`, else `info` (the agent's rule too).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use leash_records::wire::v1::ingest_client::IngestClient;
use leash_records::wire::{self, v1};
use leash_records::{FlowRecord, PodRef, Protocol};
use support::http::{self, free_port};
use support::snapshots;

const LEASH: &str = env!("CARGO_BIN_EXE_leash");

const EMPTY_CLUSTER: &str = "apiVersion: v1\nkind: List\nitems: []\n";

/// A Deployment's pod whose egress is locked down to DNS: [`batch`]'s flow is unexpected.
fn locked_down() -> String {
    snapshots::list(&[
        snapshots::namespace("shop"),
        snapshots::bare_pod("shop", "web", "web-7d4-x2", "198.51.100.10"),
        snapshots::dns_only("shop", "web"),
    ])
}

/// A running `leash serve --insecure` with its stderr collected; killed on drop.
struct Server {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts on the cluster `snapshot` with `args` and exactly the log variables `env` gives
    /// (the test's own are removed).
    fn start(snapshot: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let cluster = dir.path().join("cluster.yaml");
        std::fs::write(&cluster, snapshot).unwrap();
        let (grpc, http) = (free_port(), free_port());
        let mut command = Command::new(LEASH);
        command
            .arg("serve")
            .arg("--insecure")
            .args(["--listen", &grpc.to_string(), "--http", &http.to_string()])
            .args(["--ui-listen", &free_port().to_string()])
            .arg("--store")
            .arg(dir.path().join("leash.db"))
            .arg("--cluster")
            .arg(&cluster)
            .args(args)
            .env_remove("LEASH_LOG")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        let pipe = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let reader = std::thread::spawn({
            let stderr = Arc::clone(&stderr);
            move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    stderr.lock().unwrap().push(line);
                }
            }
        });
        let mut server = Server {
            child,
            grpc,
            http,
            stderr,
            reader: Some(reader),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = get(server.http, "/readyz") {
                return server;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!(
                    "leash serve exited before it was ready: {status}\n{}",
                    server.stderr.lock().unwrap().join("\n")
                );
            }
            assert!(Instant::now() < deadline, "leash serve not ready in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pushes one batch over plaintext gRPC and waits for its ack.
    fn push_one(&self) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
                .unwrap()
                .connect()
                .await
                .unwrap();
            let mut client = IngestClient::new(channel);
            let mut acks = client
                .push(tokio_stream::iter([batch()]))
                .await
                .unwrap()
                .into_inner();
            let ack = acks.message().await.unwrap().expect("an ack");
            assert_eq!(ack.id.map(|id| id.seq), Some(1));
        });
    }

    /// SIGTERM, wait for the exit, and everything it wrote to stderr.
    fn stop(mut self) -> Vec<String> {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "leash serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        std::mem::take(&mut *self.stderr.lock().unwrap())
    }
}

/// One batch of two flows from `shop/web-7d4-x2`: one stored, one refused.
fn batch() -> v1::Batch {
    let now = chrono::Utc::now();
    let flow = FlowRecord {
        node: "n1".into(),
        pod: Some(PodRef {
            uid: "uid-pod-web".into(),
            namespace: "shop".into(),
            name: "web-7d4-x2".into(),
        }),
        cgroup: "/kubepods.slice/x".into(),
        protocol: Protocol::Tcp,
        dst: "203.0.113.10".parse().unwrap(),
        dst_port: 443,
        count: 1,
        first_seen: now,
        last_seen: now,
        names: vec!["api.stripe.test".into()],
        outcome: None,
    };
    let id = v1::BatchId {
        node: "n1".into(),
        boot_id: "boot-1".into(),
        seq: 1,
    };
    let mut other = flow.clone();
    other.dst = "203.0.113.11".parse().unwrap();
    let mut batch = wire::batch_to_wire(id, &[flow, other], &[]).unwrap();
    // A name no DNS answer may give: this record is refused (`rejected_records`).
    batch.flow_groups[0].flows[1].names = vec![String::new()];
    batch
}

/// A minimal HTTP/1.1 GET: the status and the body (the server answers with a length).
fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let answer = http::get_answer(addr, path)?;
    assert!(!answer.chunked, "chunked answer to {path}");
    Ok((answer.status, answer.body))
}

/// The metric names of `leash serve` the README names: `leash_*` but not the agent's
/// `leash_agent_*`, without labels (`leash_ingest_rejected_records_total`, `leash_ingest_*`).
fn readme_metric_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for readme in ["../README.md", "../deploy/README.md"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(readme);
        let text = std::fs::read_to_string(&path).unwrap();
        for span in leash_lab::markdown::code_spans(&text) {
            let name = span.split('{').next().unwrap_or_default();
            let metric_like = name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '*');
            if name.starts_with("leash_") && !name.starts_with("leash_agent_") && metric_like {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

/// The names a Prometheus text exposes: family names (`# TYPE`), their `_total` form for
/// counters, and every sample name.
fn served_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(family.to_owned());
            if kind == "counter" {
                names.insert(format!("{family}_total"));
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let sample = line.split(['{', ' ']).next().unwrap_or_default();
            names.insert(sample.to_owned());
        }
    }
    names
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend(payload);
    out
}

/// A plaintext HTTP/2 connection that opens an `Ingest/Push` stream, sends the first 10 bytes
/// of a 1,000-byte message and then nothing, so that the read timeout resets the stream.
fn stalled_stream(grpc: SocketAddr) -> TcpStream {
    const SETTINGS: u8 = 4;
    let mut s = TcpStream::connect(grpc).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(PREFACE).unwrap();
    s.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
    // The server's settings, acknowledged (they apply from the acknowledgement on).
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).unwrap();
        let mut payload = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
        s.read_exact(&mut payload).unwrap();
        if head[3] == SETTINGS && head[4] & 1 == 0 {
            s.write_all(&frame(SETTINGS, 1, 0, &[])).unwrap();
            break;
        }
    }
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/leash.v1.Ingest/Push"),
        (":authority", "127.0.0.1"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        // HPACK: a literal header field without indexing, plain strings.
        block.extend([0, u8::try_from(name.len()).unwrap()]);
        block.extend(name.as_bytes());
        block.push(u8::try_from(value.len()).unwrap());
        block.extend(value.as_bytes());
    }
    s.write_all(&frame(1, 4, 1, &block)).unwrap(); // HEADERS, END_HEADERS
    let mut message = vec![0u8];
    message.extend(1000u32.to_be_bytes());
    message.extend([0x5a; 5]);
    s.write_all(&frame(0, 0, 1, &message)).unwrap(); // DATA
    s
}

#[test]
fn every_metric_the_readmes_name_is_on_the_served_metrics() {
    let named = readme_metric_names();
    assert!(named.contains("leash_ingest_*"), "{named:?}");
    // A proposal that denies the pushed flow too, so that the shadow counter gets a value.
    let proposed = tempfile::tempdir().unwrap();
    std::fs::write(
        proposed.path().join("web-egress.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web-egress, namespace: shop}\nspec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Egress]}\n",
    )
    .unwrap();
    // Short timeouts and a per-address limit of 2, so that each labelled family gets a value.
    let server = Server::start(
        &locked_down(),
        &[
            "--proposed",
            proposed.path().to_str().unwrap(),
            "--check-interval",
            "1s",
            "--max-connections-per-address",
            "2",
            "--handshake-timeout",
            "2s",
            "--read-timeout",
            "1s",
        ],
        &[],
    );
    // ingest_*, and an unexpected flow for the check.
    server.push_one();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !get(server.http, "/metrics")
        .unwrap()
        .1
        .contains("\nleash_grpc_connections 0\n")
    {
        assert!(
            Instant::now() < deadline,
            "the agent's connection stays open"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // streams_reset{read_timeout}, then connections_closed{handshake} (a silent connection)
    // and connections_refused{per_address} (a third connection while both are open).
    let stalled = stalled_stream(server.grpc);
    let silent = TcpStream::connect(server.grpc).unwrap();
    let refused = TcpStream::connect(server.grpc).unwrap();

    let missing = |served: &BTreeSet<String>| -> Vec<String> {
        named
            .iter()
            .filter(|name| match name.strip_suffix('*') {
                Some(prefix) => !served.iter().any(|s| s.starts_with(prefix)),
                None => !served.contains(*name),
            })
            .cloned()
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let served = loop {
        let (status, text) = get(server.http, "/metrics").unwrap();
        assert_eq!(status, 200, "{text}");
        let served = served_names(&text);
        if missing(&served).is_empty() || Instant::now() > deadline {
            break served;
        }
        std::thread::sleep(Duration::from_millis(200));
    };

    let doubled: Vec<&String> = served
        .iter()
        .filter(|n| n.starts_with("leash_leash_"))
        .collect();
    assert!(doubled.is_empty(), "prefixed twice: {doubled:?}");
    let foreign: Vec<&String> = served.iter().filter(|n| !n.starts_with("leash_")).collect();
    assert!(foreign.is_empty(), "not under leash_: {foreign:?}");
    assert!(
        served.contains("leash_ingest_batches_stored_total"),
        "{served:?}"
    );
    assert_eq!(
        missing(&served),
        Vec::<String>::new(),
        "the READMEs name these, which leash serve does not serve; it serves {served:?}"
    );
    // A graceful stop waits for open connections.
    drop((stalled, silent, refused));
    server.stop();
}

fn has(lines: &[String], level: &str, message: &str) -> bool {
    lines
        .iter()
        .any(|l| l.contains(level) && l.contains(message))
}

fn any_level(lines: &[String], level: &str) -> bool {
    lines.iter().any(|l| l.contains(level))
}

#[test]
fn leash_log_sets_the_log_filter_and_rust_log_is_its_fallback() {
    // The manifests' LEASH_LOG=debug: leash's own debug lines appear.
    let server = Server::start(EMPTY_CLUSTER, &[], &[("LEASH_LOG", "debug")]);
    server.push_one();
    let lines = server.stop();
    assert!(has(&lines, "DEBUG", "ingest stream opened"), "{lines:#?}");

    // Neither variable: info, no debug.
    let server = Server::start(EMPTY_CLUSTER, &[], &[]);
    server.push_one();
    let lines = server.stop();
    assert!(has(&lines, "INFO", "leash serve ready"), "{lines:#?}");
    assert!(!any_level(&lines, "DEBUG"), "{lines:#?}");

    // LEASH_LOG wins over RUST_LOG.
    let server = Server::start(
        EMPTY_CLUSTER,
        &[],
        &[("LEASH_LOG", "warn"), ("RUST_LOG", "debug")],
    );
    server.push_one();
    let lines = server.stop();
    assert!(!any_level(&lines, "INFO"), "{lines:#?}");
    assert!(!any_level(&lines, "DEBUG"), "{lines:#?}");

    // RUST_LOG alone still works.
    let server = Server::start(EMPTY_CLUSTER, &[], &[("RUST_LOG", "debug")]);
    server.push_one();
    let lines = server.stop();
    assert!(has(&lines, "DEBUG", "ingest stream opened"), "{lines:#?}");

    // A filter that does not parse: info, and a warning that says so.
    let server = Server::start(EMPTY_CLUSTER, &[], &[("LEASH_LOG", "leash=loud")]);
    let lines = server.stop();
    assert!(has(&lines, "WARN", "invalid log filter"), "{lines:#?}");
    assert!(has(&lines, "INFO", "leash serve ready"), "{lines:#?}");
}
