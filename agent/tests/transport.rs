//! The gRPC sink against a real tonic `Ingest` server on loopback, with mutual TLS from
//! rcgen-generated certificates: exact counts across a server restart, bounded memory during
//! an outage, resends with their original ids, a wrong CA retried, plaintext refused without
//! `--insecure`; records the recommender refuses (listed in acks, or batches refused whole by
//! a recommender of the previous version or for their size) dropped and counted, never resent,
//! while every other record is delivered; overload retried. No root needed.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

use std::{
    collections::BTreeSet,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeDelta, Utc};
use leash_agent::{
    metrics::Metrics,
    sink::{FlowView, Sink},
    transport::{
        GrpcSink, TlsFiles, TransportConfig,
        testing::{Answers, RecordingServer as Server},
    },
};
use leash_records::{DnsRecord, FlowRecord, Outcome, PodRef, Protocol};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

const NODE: &str = "node-a";
const WAIT: Duration = Duration::from_secs(20);
/// Every test that could resend forever ends within this.
const TEST_LIMIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------- certificates

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

fn new_leaf(ca: &Ca, cn: &str, sans: &[&str]) -> (String, String) {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A CA, a server certificate for 127.0.0.1 and an agent client certificate, as files; plus a
/// second, unrelated CA (`other-ca.pem`).
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("leash test CA");
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", &ca.pem);
        let (cert, key) = new_leaf(&ca, "leash", &["localhost", "127.0.0.1"]);
        write("server.pem", &cert);
        write("server-key.pem", &key);
        let (cert, key) = new_leaf(&ca, NODE, &[]);
        write("agent.pem", &cert);
        write("agent-key.pem", &key);
        write("other-ca.pem", &new_ca("someone else's CA").pem);
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn server(&self) -> TlsFiles {
        TlsFiles {
            cert: self.path("server.pem"),
            key: self.path("server-key.pem"),
            ca: self.path("ca.pem"),
        }
    }

    fn agent(&self, ca: &str) -> TlsFiles {
        TlsFiles {
            cert: self.path("agent.pem"),
            key: self.path("agent-key.pem"),
            ca: self.path(ca),
        }
    }
}

// ---------------------------------------------------------------- records

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::<Utc>::UNIX_EPOCH + TimeDelta::days(20_000) + TimeDelta::seconds(secs)
}

fn flow(port: u16, count: u64, secs: i64) -> FlowRecord {
    FlowRecord {
        node: NODE.to_owned(),
        pod: Some(PodRef {
            uid: "uid-1".to_owned(),
            namespace: "shop".to_owned(),
            name: "payment".to_owned(),
        }),
        cgroup: "/kubepods.slice/pod-1".to_owned(),
        protocol: Protocol::Tcp,
        dst: IpAddr::from([203, 0, 113, 10]),
        dst_port: port,
        count,
        first_seen: at(secs),
        last_seen: at(secs + 1),
        names: vec!["api.test".to_owned()],
        outcome: Some(Outcome {
            established: count,
            failed: 0,
        }),
    }
}

/// A flow whose name is empty, as the root-owned DNS answer of issue 10 made it: refused by
/// the recommender (and by the test server).
fn invalid_flow(port: u16, count: u64) -> FlowRecord {
    FlowRecord {
        names: vec![String::new()],
        ..flow(port, count, 0)
    }
}

fn dns(i: u64) -> DnsRecord {
    DnsRecord {
        node: NODE.to_owned(),
        pod: None,
        cgroup: "/system.slice/x".to_owned(),
        server: IpAddr::from([198, 51, 100, 53]),
        query: format!("q{i}.test."),
        qtype: "A".to_owned(),
        rcode: "NOERROR".to_owned(),
        answers: Vec::new(),
        time: at(i as i64),
    }
}

fn config(server: &Server, tls: Option<TlsFiles>) -> TransportConfig {
    let mut c = TransportConfig::new(&server.url(), tls, NODE);
    c.backoff_base = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.batch_records = 50;
    c.max_unacked = 4;
    c.shutdown_timeout = Duration::from_secs(10);
    c
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn transport_value(metrics: &Metrics, name: &str) -> f64 {
    let text = metrics.encode().unwrap();
    text.lines()
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name).then(|| v.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// The agent's log lines on one test thread, captured.
///
/// One global subscriber serves every test of this binary and hands each line to the capture
/// of the thread that logged it (the tests run on current-thread runtimes). A scoped
/// subscriber (`set_default`) is not enough: while other test threads create and drop theirs,
/// tracing may cache a call site as uninteresting, and a line goes missing.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<LogCapture>> = const { std::cell::RefCell::new(None) };
}

/// Writes a log line to the current thread's capture, if any.
struct ThreadCapture;

impl std::io::Write for ThreadCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|c| {
            if let Some(cap) = c.borrow().as_ref() {
                cap.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Ends the capture of this thread's lines when dropped.
struct Capturing;

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURE.with(|c| c.borrow_mut().take());
    }
}

impl LogCapture {
    /// Captures this thread's INFO and higher lines until the guard drops.
    fn start(&self) -> Capturing {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let subscriber = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .with_writer(|| ThreadCapture)
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("the only global subscriber of this test binary");
        });
        CAPTURE.with(|c| *c.borrow_mut() = Some(self.clone()));
        Capturing
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test ends in time (no endless resend)");
}

/// Writes 120 valid flows (count 2) on ports 0..120, one invalid flow (count 7) and 5 DNS
/// records; flushes. Returns the events written.
async fn write_with_one_invalid(sink: &mut GrpcSink) -> u64 {
    let mut written = 0;
    for port in 0..120u16 {
        let f = flow(port, 2, 0);
        written += f.count;
        sink.write_flow(&FlowView::of(&f));
    }
    let bad = invalid_flow(9_999, 7);
    written += bad.count;
    sink.write_flow(&FlowView::of(&bad));
    for i in 0..5 {
        sink.write_dns(&dns(i));
    }
    sink.flush().await.unwrap();
    written
}

/// Writes 30 more valid flows (count 3) on ports 200..230 and flushes: they must get through
/// after a refusal. Returns the events written.
async fn write_later(sink: &mut GrpcSink) -> u64 {
    let mut written = 0;
    for port in 200..230u16 {
        let f = flow(port, 3, 5);
        written += f.count;
        sink.write_flow(&FlowView::of(&f));
    }
    sink.flush().await.unwrap();
    written
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn counts_are_exact_across_a_server_restart() {
    let pki = Pki::new();
    let mut server = Server::start_new(Some(pki.server())).await;
    let metrics = Metrics::new();
    let mut sink = GrpcSink::start_with_boot_id(
        config(&server, Some(pki.agent("ca.pem"))),
        &metrics,
        "boot-1".into(),
    )
    .unwrap();
    let mut written = 0u64;
    let mut dns_written = 0u64;
    for round in 0..60u64 {
        for port in 0..40u16 {
            let f = flow(port + (round % 3) as u16 * 40, round + 1, round as i64);
            written += f.count;
            sink.write_flow(&FlowView::of(&f));
        }
        sink.write_dns(&dns(round));
        dns_written += 1;
        sink.flush().await.unwrap();
        if round == 20 {
            wait_for("some acks", || server.seen().acks > 0).await;
            server.stop().await;
        }
        if round == 40 {
            server.start().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sink.close().await.unwrap();
    let (records, events) = metrics.transport.dropped("shutdown");
    assert_eq!(
        (records, events),
        (0, 0),
        "everything acknowledged before the deadline"
    );
    {
        let s = server.seen();
        assert_eq!(s.events, written, "sum of counts stored = sum written");
        assert_eq!(s.dns, dns_written);
        assert_eq!(s.invalid, 0);
        let seqs: BTreeSet<u64> = s.arrivals.keys().map(|(_, seq)| *seq).collect();
        let max = *seqs.last().unwrap();
        assert_eq!(seqs, (1..=max).collect(), "every id from 1, none skipped");
        assert!(s.arrivals.keys().all(|(boot, _)| boot == "boot-1"));
    }
    assert!(metrics.transport.batches_acked.get() >= metrics.transport.batches_sent.get());
    assert!(
        metrics.transport.connect_errors.get() > 0,
        "the outage was seen"
    );
    server.stop().await;
}

#[tokio::test]
async fn unacked_batches_are_resent_with_their_original_ids_in_order() {
    let mut server = Server::start_new(None).await;
    server.refuse_acks(true);
    let metrics = Metrics::new();
    let mut c = config(&server, None);
    c.ack_timeout = Duration::from_millis(300);
    let mut sink = GrpcSink::start_with_boot_id(c, &metrics, "boot-r".into()).unwrap();
    let mut written = 0;
    for port in 0..120u16 {
        let f = flow(port, 2, 0);
        written += f.count;
        sink.write_flow(&FlowView::of(&f));
    }
    sink.flush().await.unwrap();
    // 120 keys in batches of 50: 3 batches, sent, never acked: the stream times out and the
    // same ids come again.
    wait_for("a resend", || metrics.transport.batches_resent.get() >= 3).await;
    server.refuse_acks(false);
    sink.close().await.unwrap();
    {
        let s = server.seen();
        assert_eq!(s.events, written, "duplicates are not counted twice");
        let ids: Vec<_> = s.arrivals.keys().cloned().collect();
        assert_eq!(
            ids,
            vec![
                ("boot-r".to_owned(), 1),
                ("boot-r".to_owned(), 2),
                ("boot-r".to_owned(), 3)
            ]
        );
        assert!(s.arrivals.values().all(|n| *n >= 2), "each id came again");
        // Each connection sends the un-acked batches in order: 1, 2, 3, 1, 2, 3, ...
        for window in s.order.chunks(3) {
            assert_eq!(window, [1, 2, 3]);
        }
    }
    assert_eq!(metrics.transport.dropped("shutdown"), (0, 0));
    server.stop().await;
}

#[tokio::test]
async fn memory_stays_bounded_during_an_outage_and_overflow_is_counted() {
    let server = Server::start_new(None).await;
    let url = server.url();
    let mut dead = server;
    dead.stop().await;
    let metrics = Metrics::new();
    let mut c = TransportConfig::new(&url, None, NODE);
    c.buffer_keys = 100;
    c.buffer_dns = 10;
    c.backoff_base = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(100);
    c.shutdown_timeout = Duration::from_secs(10);
    let mut sink = GrpcSink::start_with_boot_id(c, &metrics, "boot-o".into()).unwrap();
    let mut written = 0u64;
    // Many repeats of the same 100 keys: merged, nothing dropped, buffer never above 100.
    for round in 0..200u64 {
        for port in 0..100u16 {
            let f = flow(port, 1, round as i64);
            written += 1;
            sink.write_flow(&FlowView::of(&f));
        }
        sink.flush().await.unwrap();
        assert!(sink.buffered_keys() <= 100);
    }
    assert_eq!(metrics.transport.dropped("buffer_full"), (0, 0));
    // New keys past the bound are dropped and counted, with their events.
    for port in 100..150u16 {
        let f = flow(port, 3, 0);
        written += f.count;
        sink.write_flow(&FlowView::of(&f));
    }
    for i in 0..15 {
        sink.write_dns(&dns(i));
    }
    sink.flush().await.unwrap();
    assert_eq!(sink.buffered_keys(), 100);
    assert_eq!(metrics.transport.dropped("buffer_full"), (50, 150));
    assert_eq!(metrics.transport.dropped("dns_buffer_full"), (5, 0));
    assert_eq!(
        transport_value(&metrics, "leash_agent_transport_buffered_keys"),
        100.0
    );
    // The recommender comes back: everything buffered is delivered.
    dead.start().await;
    sink.close().await.unwrap();
    let delivered = dead.seen().events;
    let (_, dropped) = metrics.transport.dropped("buffer_full");
    assert_eq!(
        delivered + dropped,
        written,
        "produced = delivered + dropped"
    );
    assert_eq!(delivered, 200 * 100);
    assert_eq!(dead.seen().flows, 100, "one merged record per key");
    assert_eq!(dead.seen().dns, 10);
    dead.stop().await;
}

#[tokio::test]
async fn shutdown_deadline_counts_what_was_not_delivered() {
    let server = Server::start_new(None).await;
    let url = server.url();
    let mut dead = server;
    dead.stop().await;
    let metrics = Metrics::new();
    let mut c = TransportConfig::new(&url, None, NODE);
    c.shutdown_timeout = Duration::from_millis(300);
    let mut sink = GrpcSink::start_with_boot_id(c, &metrics, "boot-s".into()).unwrap();
    for port in 0..10u16 {
        sink.write_flow(&FlowView::of(&flow(port, 4, 0)));
    }
    sink.flush().await.unwrap();
    let started = Instant::now();
    sink.close().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "close keeps its deadline"
    );
    assert_eq!(metrics.transport.dropped("shutdown"), (10, 40));
}

#[tokio::test]
async fn a_wrong_ca_fails_the_handshake_and_is_retried() {
    let pki = Pki::new();
    let server = Server::start_new(Some(pki.server())).await;
    let metrics = Metrics::new();
    let mut c = config(&server, Some(pki.agent("other-ca.pem")));
    c.shutdown_timeout = Duration::from_millis(200);
    let mut sink = GrpcSink::start_with_boot_id(c, &metrics, "boot-w".into()).unwrap();
    sink.write_flow(&FlowView::of(&flow(1, 1, 0)));
    sink.flush().await.unwrap();
    wait_for("retries", || metrics.transport.connect_errors.get() >= 3).await;
    assert_eq!(metrics.transport.connected.get(), 0);
    assert_eq!(server.seen().arrivals.len(), 0, "nothing got through");
    assert!(transport_value(&metrics, "leash_agent_transport_connect_errors_total") >= 3.0);
    sink.close().await.unwrap();
    assert_eq!(metrics.transport.dropped("shutdown"), (1, 1));
}

#[tokio::test]
async fn plaintext_tls_and_url_options_are_validated() {
    let p = PathBuf::from("/x.pem");
    let all = [Some(&p), Some(&p), Some(&p)];
    let none = [None, None, None];
    assert!(
        TransportConfig::validate("https://r:7443", false, all)
            .unwrap()
            .is_some()
    );
    assert!(
        TransportConfig::validate("http://r:7443", true, none)
            .unwrap()
            .is_none()
    );
    for (url, insecure, tls, needle) in [
        ("http://r:7443", false, none, "--insecure"),
        (
            "https://r:7443",
            false,
            [Some(&p), None, Some(&p)],
            "--tls-cert",
        ),
        ("https://r:7443", true, none, "http://"),
        ("http://r:7443", true, all, "plaintext"),
        ("r:7443", false, all, "https://"),
        ("ftp://r:7443", false, all, "scheme"),
        ("https://r:7443/path", false, all, "path"),
    ] {
        let err = TransportConfig::validate(url, insecure, tls)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{url}: {err}");
    }
    // A bad TLS file stops the sink at start, naming the file.
    let err = GrpcSink::start(
        TransportConfig::new(
            "https://127.0.0.1:1",
            Some(TlsFiles {
                cert: Path::new("/nonexistent/agent.pem").to_owned(),
                key: Path::new("/nonexistent/agent-key.pem").to_owned(),
                ca: Path::new("/nonexistent/ca.pem").to_owned(),
            }),
            NODE,
        ),
        &Metrics::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("/nonexistent/"), "{err}");
}

#[test]
fn the_agent_refuses_plaintext_without_insecure() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_leash-agent"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--recommender", "http://127.0.0.1:7443", "--duration", "1s"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--insecure"), "{err}");
    let (code, err) = run(&[
        "--recommender",
        "https://127.0.0.1:7443",
        "--tls-ca",
        "/ca.pem",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--tls-cert"), "{err}");
    let (code, err) = run(&["--insecure", "--duration", "1s"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--recommender"), "{err}");
}

/// A TLS file that cannot be read stops the agent with one line: what failed, the file, and
/// the OS cause once (errors print their chain; no message repeats its source).
#[test]
fn the_agent_names_an_unreadable_tls_file_with_its_cause_once() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leash-agent"))
        .args([
            "--recommender",
            "https://127.0.0.1:7443",
            "--tls-ca",
            "/nonexistent/ca.pem",
            "--tls-cert",
            "/nonexistent/agent.pem",
            "--tls-key",
            "/nonexistent/agent-key.pem",
            "--duration",
            "1s",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let cause = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
    assert_eq!(err.matches(&cause).count(), 1, "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("leash-agent: "))
        .unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(
        line.ends_with(&format!("cannot read /nonexistent/ca.pem: {cause}")),
        "{line}"
    );
}

#[tokio::test]
async fn a_refusal_by_an_old_recommender_costs_only_the_invalid_record() {
    // The runtime is single-threaded: the sender task logs into this thread's subscriber.
    let log = LogCapture::default();
    let _capturing = log.start();
    bounded(async {
        let pki = Pki::new();
        let server = Server::start_new(Some(pki.server())).await;
        server.answer_like(Answers::Old);
        let metrics = Metrics::new();
        let mut sink = GrpcSink::start_with_boot_id(
            config(&server, Some(pki.agent("ca.pem"))),
            &metrics,
            "boot-old".into(),
        )
        .unwrap();
        let mut written = write_with_one_invalid(&mut sink).await;
        wait_for("the invalid record dropped", || {
            metrics.transport.dropped("rejected").0 == 1
        })
        .await;
        written += write_later(&mut sink).await;
        sink.close().await.unwrap();
        let s = server.seen();
        assert_eq!(metrics.transport.dropped("rejected"), (1, 7));
        assert_eq!(
            metrics.transport.dropped("shutdown"),
            (0, 0),
            "every other record acknowledged"
        );
        assert_eq!(s.events + 7, written, "produced = delivered + dropped");
        assert_eq!((s.flows, s.dns), (150, 5));
        assert_eq!(
            s.acks_with_rejected, 0,
            "the old server lists no refused records"
        );
        // The batch of 50 holding the invalid record is halved until the record is alone: one
        // refusal per level, at most ceil(log2(50)) + 1 = 7.
        assert!(
            (1..=7).contains(&s.refused_batches),
            "{} refusals",
            s.refused_batches
        );
        assert_eq!(metrics.transport.batches_split.get() + 1, s.refused_batches);
        assert_eq!(
            metrics.transport.connect_errors.get(),
            0,
            "a refusal is not an outage"
        );
        assert_eq!(
            transport_value(
                &metrics,
                "leash_agent_transport_dropped_records_total{cause=\"rejected\"}"
            ),
            1.0
        );
        assert_eq!(
            transport_value(
                &metrics,
                "leash_agent_transport_dropped_events_total{cause=\"rejected\"}"
            ),
            7.0
        );
    })
    .await;
    let text = log.text();
    assert!(
        text.contains("refused records") && text.contains("refused=rejected=1"),
        "{text}"
    );
    assert!(
        text.contains("names[0]: empty"),
        "the server's reason: {text}"
    );
    assert!(!text.contains("unreachable"), "{text}");
}

#[tokio::test]
async fn records_listed_as_refused_in_an_ack_are_counted_and_never_resent() {
    bounded(async {
        let server = Server::start_new(None).await;
        server.answer_like(Answers::Current);
        let metrics = Metrics::new();
        let mut sink =
            GrpcSink::start_with_boot_id(config(&server, None), &metrics, "boot-new".into())
                .unwrap();
        let mut written = write_with_one_invalid(&mut sink).await;
        written += write_later(&mut sink).await;
        sink.close().await.unwrap();
        let s = server.seen();
        assert_eq!(metrics.transport.dropped("rejected"), (1, 7));
        assert_eq!(metrics.transport.rejected("invalid_name"), 1);
        assert_eq!(metrics.transport.dropped("shutdown"), (0, 0));
        assert_eq!(s.events + 7, written, "produced = delivered + dropped");
        assert_eq!((s.flows, s.dns, s.rejected), (150, 5, 1));
        assert_eq!(s.acks_with_rejected, 1);
        assert_eq!(s.refused_batches, 0);
        assert!(
            s.arrivals.values().all(|n| *n == 1),
            "no batch sent twice: {:?}",
            s.arrivals
        );
        assert_eq!(metrics.transport.batches_resent.get(), 0);
        assert_eq!(metrics.transport.batches_split.get(), 0);
        assert_eq!(
            transport_value(
                &metrics,
                "leash_agent_transport_rejected_records_total{reason=\"invalid_name\"}"
            ),
            1.0
        );
    })
    .await;
}

#[tokio::test]
async fn a_record_over_the_message_limit_is_split_out_and_dropped_by_either_version() {
    bounded(async {
        for answers in [Answers::Current, Answers::Old] {
            let server = Server::start_limited(None, Some(16 * 1024)).await;
            server.answer_like(answers);
            let metrics = Metrics::new();
            let mut c = config(&server, None);
            // The record must reach the wire whole: the buffer's bound on names would cut it.
            c.max_names_per_key = 10_000;
            let mut sink = GrpcSink::start_with_boot_id(c, &metrics, "boot-big".into()).unwrap();
            let mut written = 0;
            for port in 0..120u16 {
                let f = flow(port, 2, 0);
                written += f.count;
                sink.write_flow(&FlowView::of(&f));
            }
            // A name flood: one record of about 40 KB, over the 16 KiB limit on its own.
            let big = FlowRecord {
                names: (0..2_000)
                    .map(|i| format!("flood-{i:05}.big.test"))
                    .collect(),
                ..flow(9_999, 11, 0)
            };
            written += big.count;
            sink.write_flow(&FlowView::of(&big));
            sink.flush().await.unwrap();
            wait_for("the large record dropped", || {
                metrics.transport.dropped("too_large").0 == 1
            })
            .await;
            written += write_later(&mut sink).await;
            sink.close().await.unwrap();
            let s = server.seen();
            assert_eq!(
                metrics.transport.dropped("too_large"),
                (1, 11),
                "{answers:?}"
            );
            assert_eq!(metrics.transport.dropped("shutdown"), (0, 0), "{answers:?}");
            assert_eq!(s.events + 11, written, "{answers:?}: delivered + dropped");
            assert_eq!(s.flows, 150, "{answers:?}");
            assert!(
                (1..=7).contains(&s.too_large),
                "{answers:?}: {}",
                s.too_large
            );
            assert_eq!(metrics.transport.batches_split.get() + 1, s.too_large);
            assert_eq!(metrics.transport.connect_errors.get(), 0, "{answers:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_batch_whose_id_is_refused_drops_each_record_once_and_the_stream_moves_on() {
    bounded(async {
        let server = Server::start_new(None).await;
        server.refuse_all(true);
        let metrics = Metrics::new();
        let mut sink =
            GrpcSink::start_with_boot_id(config(&server, None), &metrics, "boot-id".into())
                .unwrap();
        let mut refused_events = 0;
        for port in 0..6u16 {
            let f = flow(port, 5, 0);
            refused_events += f.count;
            sink.write_flow(&FlowView::of(&f));
        }
        sink.write_dns(&dns(1));
        sink.write_dns(&dns(2));
        sink.flush().await.unwrap();
        wait_for("all 8 records dropped", || {
            metrics.transport.dropped("rejected").0 == 8
        })
        .await;
        {
            let s = server.seen();
            // 8 records halve into a full binary tree: 2 * 8 - 1 batches, each refused once.
            assert_eq!(s.refused_batches, 15);
            assert_eq!(s.arrivals.len(), 15);
            assert!(s.arrivals.values().all(|n| *n == 1), "{:?}", s.arrivals);
            assert!(s.stored.is_empty());
        }
        assert_eq!(metrics.transport.dropped("rejected"), (8, refused_events));
        // The recommender takes batches again: the agent still sends.
        server.refuse_all(false);
        let written = write_later(&mut sink).await;
        sink.close().await.unwrap();
        assert_eq!(server.seen().events, written);
        assert_eq!(metrics.transport.dropped("shutdown"), (0, 0));
        assert_eq!(metrics.transport.dropped("rejected").0, 8);
    })
    .await;
}

#[tokio::test]
async fn unavailable_is_retried_with_the_same_batch() {
    bounded(async {
        let server = Server::start_new(None).await;
        server.unavailable_for(2);
        let metrics = Metrics::new();
        let mut sink =
            GrpcSink::start_with_boot_id(config(&server, None), &metrics, "boot-u".into()).unwrap();
        let mut written = 0;
        for port in 0..10u16 {
            let f = flow(port, 3, 0);
            written += f.count;
            sink.write_flow(&FlowView::of(&f));
        }
        sink.flush().await.unwrap();
        sink.close().await.unwrap();
        let s = server.seen();
        assert_eq!(s.unavailable, 2);
        assert_eq!(
            s.arrivals.get(&("boot-u".to_owned(), 1)),
            Some(&3),
            "the same batch, twice refused for now, then stored"
        );
        assert_eq!(s.events, written);
        for cause in ["rejected", "too_large", "shutdown"] {
            assert_eq!(metrics.transport.dropped(cause), (0, 0), "{cause}");
        }
        assert_eq!(metrics.transport.batches_split.get(), 0);
        assert!(metrics.transport.connect_errors.get() >= 2);
    })
    .await;
}

#[tokio::test]
async fn a_name_flood_during_an_outage_keeps_the_counts_and_bounds_the_names() {
    bounded(async {
        let mut server = Server::start_new(None).await;
        server.stop().await;
        let metrics = Metrics::new();
        let mut sink =
            GrpcSink::start_with_boot_id(config(&server, None), &metrics, "boot-f".into()).unwrap();
        // One key, 100 flush intervals, 16 new names each: 1,600 names for one address.
        let mut written = 0;
        for round in 0..100u64 {
            let mut names: Vec<String> = (0..16)
                .map(|i| format!("flood-{round:03}-{i:02}.test"))
                .collect();
            names.sort();
            let f = FlowRecord {
                names,
                ..flow(443, 1, round as i64)
            };
            written += f.count;
            sink.write_flow(&FlowView::of(&f));
            sink.flush().await.unwrap();
        }
        assert_eq!(sink.buffered_keys(), 1);
        assert_eq!(metrics.transport.names_dropped.get(), 1_600 - 64);
        server.start().await;
        sink.close().await.unwrap();
        let s = server.seen();
        assert_eq!(
            (s.flows, s.events),
            (1, written),
            "the record and its counts"
        );
        assert_eq!(s.max_names, 64, "the names the buffer took first");
        assert_eq!(metrics.transport.dropped("shutdown"), (0, 0));
        assert_eq!(
            transport_value(&metrics, "leash_agent_transport_names_dropped_total"),
            1_536.0
        );
    })
    .await;
}
