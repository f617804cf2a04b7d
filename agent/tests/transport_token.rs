//! The agent's ServiceAccount token (`--token-file`) against a real tonic `Ingest` server on
//! loopback: every stream carries the file's current content as `authorization: Bearer`,
//! a rotated file (replaced as the kubelet does, by a rename) reaches the server on a new
//! stream without losing or doubling a count, UNAUTHENTICATED is retried with the file read
//! again, and a batch refused with PERMISSION_DENIED is dropped whole, counted, never resent.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

use std::{
    net::IpAddr,
    path::Path,
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeDelta, Utc};
use leash_agent::{
    metrics::Metrics,
    sink::{FlowView, Sink},
    transport::{GrpcSink, TransportConfig, testing::RecordingServer as Server},
};
use leash_records::{DnsRecord, FlowRecord, PodRef, Protocol};

const NODE: &str = "node-a";
const WAIT: Duration = Duration::from_secs(20);
const TEST_LIMIT: Duration = Duration::from_secs(60);

fn flow(port: u16, count: u64) -> FlowRecord {
    let t = DateTime::<Utc>::UNIX_EPOCH + TimeDelta::days(20_000);
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
        first_seen: t,
        last_seen: t + TimeDelta::seconds(1),
        names: vec!["api.test".to_owned()],
        outcome: None,
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
        time: DateTime::<Utc>::UNIX_EPOCH + TimeDelta::days(20_000),
    }
}

/// Writes flows on `ports` (count 2 each) and flushes; returns the events written.
async fn write(sink: &mut GrpcSink, ports: std::ops::Range<u16>) -> u64 {
    let mut events = 0;
    for port in ports {
        let f = flow(port, 2);
        events += f.count;
        sink.write_flow(&FlowView::of(&f));
    }
    sink.flush().await.unwrap();
    events
}

/// Replaces the token file as the kubelet does: a new file renamed over the old one.
fn rotate(path: &Path, token: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, format!("{token}\n")).unwrap();
    std::fs::rename(&next, path).unwrap();
}

fn config(server: &Server, token: &Path) -> TransportConfig {
    let mut c = TransportConfig::new(&server.url(), None, NODE);
    c.backoff_base = Duration::from_millis(20);
    c.backoff_max = Duration::from_millis(200);
    c.batch_records = 50;
    c.max_unacked = 4;
    c.token_file = Some(token.to_owned());
    c.token_check = Duration::from_millis(100);
    c
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn bounded<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test ends in time");
}

#[tokio::test]
async fn a_rotated_token_goes_on_a_new_stream_and_nothing_is_lost_or_doubled() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        rotate(&token, "token-1");
        let server = Server::start_new(None).await;
        server.require_authorization(Some("Bearer token-1"));
        let metrics = Metrics::new();
        let mut sink = GrpcSink::start(config(&server, &token), &metrics).unwrap();
        let mut written = write(&mut sink, 0..60).await;
        wait_for("the first records stored", || {
            server.seen().events == written
        })
        .await;

        // The kubelet rotates the token; the old one is then refused.
        rotate(&token, "token-2");
        server.require_authorization(Some("Bearer token-2"));
        wait_for("a stream with the new token", || {
            server.seen().tokens.last() == Some(&Some("Bearer token-2".to_owned()))
        })
        .await;
        written += write(&mut sink, 100..160).await;
        sink.close().await.unwrap();

        let seen = server.seen();
        assert_eq!(seen.events, written, "every event once");
        assert_eq!(
            seen.tokens.first(),
            Some(&Some("Bearer token-1".to_owned()))
        );
        assert!(
            seen.tokens
                .iter()
                .all(|t| matches!(t.as_deref(), Some("Bearer token-1" | "Bearer token-2"))),
            "{:?}",
            seen.tokens
        );
        for cause in ["rejected", "forbidden", "shutdown"] {
            assert_eq!(metrics.transport.dropped(cause), (0, 0), "{cause}");
        }
    })
    .await;
}

#[tokio::test]
async fn unauthenticated_is_retried_reading_the_token_file_again() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        rotate(&token, "not-yet-valid");
        let server = Server::start_new(None).await;
        server.require_authorization(Some("Bearer valid"));
        let metrics = Metrics::new();
        let mut sink = GrpcSink::start(config(&server, &token), &metrics).unwrap();
        let written = write(&mut sink, 0..30).await;
        wait_for("refused streams", || server.seen().unauthenticated >= 2).await;
        assert_eq!(server.seen().events, 0);

        rotate(&token, "valid");
        wait_for("the records stored", || server.seen().events == written).await;
        sink.close().await.unwrap();
        assert_eq!(server.seen().events, written);
        assert_eq!(metrics.transport.dropped("forbidden"), (0, 0));
        assert_eq!(metrics.transport.dropped("rejected"), (0, 0));
    })
    .await;
}

#[tokio::test]
async fn a_forbidden_batch_is_dropped_whole_and_never_resent() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        rotate(&token, "token-a");
        let server = Server::start_new(None).await;
        server.forbid(true);
        let metrics = Metrics::new();
        let mut sink =
            GrpcSink::start_with_boot_id(config(&server, &token), &metrics, "boot-f".into())
                .unwrap();
        let refused = write(&mut sink, 0..6).await;
        sink.write_dns(&dns(1));
        sink.write_dns(&dns(2));
        sink.flush().await.unwrap();
        wait_for("the batch dropped", || {
            metrics.transport.dropped("forbidden").0 == 8
        })
        .await;
        {
            let seen = server.seen();
            // One batch, refused once: neither split into halves nor resent.
            assert_eq!(seen.forbidden, 1);
            assert_eq!(seen.arrivals.len(), 1, "{:?}", seen.arrivals);
            assert!(seen.arrivals.values().all(|n| *n == 1));
            assert!(seen.stored.is_empty());
        }
        assert_eq!(metrics.transport.dropped("forbidden"), (8, refused));
        assert_eq!(metrics.transport.batches_split.get(), 0);

        server.forbid(false);
        let written = write(&mut sink, 200..230).await;
        sink.close().await.unwrap();
        assert_eq!(server.seen().events, written);
    })
    .await;
}

#[tokio::test]
async fn an_unusable_token_file_stops_the_agent_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("missing-token");
    let server = Server::start_new(None).await;
    let metrics = Metrics::new();
    let e = GrpcSink::start(config(&server, &token), &metrics).expect_err("no file");
    let message = leash_records::error::Chain(&e).to_string();
    assert!(message.contains("missing-token"), "{message}");
    std::fs::write(&token, "two words\n").unwrap();
    let e = GrpcSink::start(config(&server, &token), &metrics).expect_err("no token");
    let message = leash_records::error::Chain(&e).to_string();
    assert!(
        message.contains("holds no token") && !message.contains("words"),
        "{message}"
    );
}
