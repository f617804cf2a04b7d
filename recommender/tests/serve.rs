//! `leash serve` end to end, through the real binary: certificates from `leash certs`, agents'
//! batches over a real mTLS gRPC connection, the SQLite store across a restart, the HTTP read
//! API, and unexpected-egress alerts (as a metric, and as a Kubernetes Event with `--kube`
//! against the lab's fake API server).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use leash_records::tls::{TlsConnector, TlsFiles};
use leash_records::wire::v1::ingest_client::IngestClient;
use leash_records::wire::{self, v1};
use leash_records::{DnsAnswer, DnsRecord, FlowRecord, PodRef, Protocol};
use support::http::{self, free_port, get};

const LEASH: &str = env!("CARGO_BIN_EXE_leash");

/// A namespace with one Deployment whose egress is already locked down to DNS only.
const SNAPSHOT: &str = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: shop, labels: {kubernetes.io/metadata.name: shop}}
- apiVersion: apps/v1
  kind: Deployment
  metadata: {name: web, namespace: shop, uid: uid-deploy-web}
  spec:
    selector: {matchLabels: {app: web}}
    template:
      metadata: {labels: {app: web}}
      spec: {containers: [{name: web, image: web:1}]}
- apiVersion: apps/v1
  kind: ReplicaSet
  metadata:
    name: web-7d4
    namespace: shop
    uid: uid-rs-web
    ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: web, uid: uid-deploy-web, controller: true}]
  spec:
    selector: {matchLabels: {app: web}}
- apiVersion: v1
  kind: Pod
  metadata:
    name: web-7d4-x2
    namespace: shop
    uid: uid-pod-web
    labels: {app: web, pod-template-hash: 7d4}
    ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d4, uid: uid-rs-web, controller: true}]
  spec: {nodeName: n1, containers: [{name: web, image: web:1}]}
  status: {phase: Running, podIP: 198.51.100.10, podIPs: [{ip: 198.51.100.10}]}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: web-dns-only, namespace: shop}
  spec:
    podSelector: {matchLabels: {app: web}}
    policyTypes: [Egress]
    egress:
    - ports: [{port: 53, protocol: UDP}]
"#;

/// A running `leash serve`, killed on drop.
struct Server {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    /// `--ui-listen`: the `/v1` read API.
    ui: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(dir: &Path, cluster: &[&str], grpc: SocketAddr, http: SocketAddr) -> Server {
        let db = dir.join("leash.db");
        let store = ["--store", db.to_str().unwrap()];
        Server::start_with(dir, cluster, &store, grpc, http)
    }

    /// As [`Server::start`], with `store` the store's flags.
    fn start_with(
        dir: &Path,
        cluster: &[&str],
        store: &[&str],
        grpc: SocketAddr,
        http: SocketAddr,
    ) -> Server {
        let certs = dir.join("certs");
        let ui = free_port();
        let child = Command::new(LEASH)
            .arg("serve")
            .args(["--listen", &grpc.to_string(), "--http", &http.to_string()])
            .args(["--ui-listen", &ui.to_string()])
            .args(store)
            .args(cluster)
            .arg("--tls-cert")
            .arg(certs.join("server.pem"))
            .arg("--tls-key")
            .arg(certs.join("server-key.pem"))
            .arg("--tls-client-ca")
            .arg(certs.join("ca.pem"))
            .args(["--check-interval", "1s"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut server = Server {
            child,
            grpc,
            http,
            ui,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = get(server.http, "/readyz") {
                return server;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("leash serve exited before it was ready: {status}");
            }
            assert!(Instant::now() < deadline, "leash serve not ready in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "leash serve ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn certs(dir: &Path) -> PathBuf {
    let out = dir.join("certs");
    let status = Command::new(LEASH)
        .args(["certs", "--out"])
        .arg(&out)
        .args(["--server-name", "127.0.0.1", "--client", "n1"])
        .status()
        .unwrap();
    assert!(status.success());
    out
}

fn flow(dst: &str, port: u16, count: u64, at: DateTime<Utc>) -> FlowRecord {
    FlowRecord {
        node: "n1".into(),
        pod: Some(PodRef {
            uid: "uid-pod-web".into(),
            namespace: "shop".into(),
            name: "web-7d4-x2".into(),
        }),
        cgroup: "/kubepods.slice/x".into(),
        protocol: Protocol::Tcp,
        dst: dst.parse().unwrap(),
        dst_port: port,
        count,
        first_seen: at,
        last_seen: at,
        names: vec!["api.stripe.test".into()],
        outcome: None,
    }
}

fn batch(seq: u64, flows: &[FlowRecord]) -> v1::Batch {
    wire::batch_to_wire(
        v1::BatchId {
            node: "n1".into(),
            boot_id: "boot-1".into(),
            seq,
        },
        flows,
        &[],
    )
    .unwrap()
}

/// Pushes batches over one mTLS stream and returns the acks' `duplicate` flags in order.
async fn push(certs: &Path, grpc: SocketAddr, batches: Vec<v1::Batch>) -> Vec<(u64, bool)> {
    let connector = TlsConnector::new(TlsFiles {
        cert: certs.join("n1.pem"),
        key: certs.join("n1-key.pem"),
        ca: certs.join("ca.pem"),
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{grpc}"))
        .unwrap()
        .connect_with_connector(connector)
        .await
        .unwrap();
    let n = batches.len();
    let mut client = IngestClient::new(channel);
    let mut acks = client
        .push(tokio_stream::iter(batches))
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        let ack = acks.message().await.unwrap().expect("an ack per batch");
        out.push((ack.id.unwrap().seq, ack.duplicate));
    }
    out
}

fn wait_for(check: impl FnMut() -> bool, what: &str) {
    http::wait_for(
        what,
        Duration::from_secs(20),
        Duration::from_millis(200),
        check,
    );
}

#[test]
fn serve_ingests_exactly_once_and_answers_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), SNAPSHOT).unwrap();
    let certs = certs(dir.path());
    let cluster = dir.path().join("cluster.yaml");
    let cluster_args = ["--cluster", cluster.to_str().unwrap()];
    let (grpc, http) = (free_port(), free_port());
    let server = Server::start(dir.path(), &cluster_args, grpc, http);
    let rt = tokio::runtime::Runtime::new().unwrap();

    let now = Utc::now();
    let b1 = batch(1, &[flow("203.0.113.10", 443, 5, now)]);
    let b2 = batch(2, &[flow("203.0.113.10", 443, 3, now)]);
    // The second b1 is a resend after a lost ack: stored once.
    let acks = rt.block_on(push(
        &certs,
        server.grpc,
        vec![b1.clone(), b2.clone(), b1.clone()],
    ));
    assert_eq!(acks, vec![(1, false), (2, false), (1, true)]);

    let (status, body) = get(
        server.ui,
        "/v1/namespaces/shop/workloads/Deployment/web/destinations",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let dests: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dests[0]["dst"], "203.0.113.10");
    assert_eq!(dests[0]["port"], 443);
    assert_eq!(dests[0]["count"], 8, "5 + 3, the resend ignored: {body}");
    assert_eq!(dests[0]["names"][0], "api.stripe.test");

    let (status, yaml) = get(server.ui, "/v1/namespaces/shop/recommendations").unwrap();
    assert_eq!(status, 200, "{yaml}");
    assert!(yaml.contains("203.0.113.10/32"), "{yaml}");
    assert!(yaml.contains("port: 443"), "{yaml}");
    assert!(yaml.contains("default-deny-egress"), "{yaml}");

    // The applied policy allows DNS only: the stored flow is denied, and named.
    let (status, body) = get(server.ui, "/v1/namespaces/shop/audit").unwrap();
    assert_eq!(status, 200, "{body}");
    let audit: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(audit["applied_policies"], 1);
    let web = &audit["workloads"][0];
    assert_eq!(
        (web["kind"].as_str(), web["name"].as_str()),
        (Some("Deployment"), Some("web"))
    );
    assert_eq!(
        (web["allowed"].as_u64(), web["denied"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(web["flows"][0]["policies"][0], "shop/web-dns-only");

    // The unexpected-egress check runs every second.
    wait_for(
        || {
            get(server.http, "/metrics").is_ok_and(|(_, m)| {
                m.contains("leash_unexpected_egress_total{namespace=\"shop\"} 1")
            })
        },
        "the unexpected egress metric",
    );

    let (status, _) = get(server.ui, "/v1/namespaces/nope/audit").unwrap();
    assert_eq!(status, 404);
    // A window reaching before any representable time is refused, not a dead handler.
    let (status, body) = get(server.ui, "/v1/workloads?since=300000years").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("1000 years"), "{body}");
    let (status, body) = get(server.ui, "/v1/workloads").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"present\":true"), "{body}");

    assert!(server.stop().success(), "clean exit on SIGTERM");

    // Restart on the same store: counts kept, old ids still known.
    let server = Server::start(dir.path(), &cluster_args, free_port(), free_port());
    let acks = rt.block_on(push(&certs, server.grpc, vec![b2]));
    assert_eq!(acks, vec![(2, true)]);
    let (_, body) = get(
        server.ui,
        "/v1/namespaces/shop/workloads/Deployment/web/destinations",
    )
    .unwrap();
    assert!(body.contains("\"count\":8"), "{body}");
}

/// Two `leash serve` replicas on one PostgreSQL database (its URL in a file): an agent's
/// batches, resent to the other replica after a lost ack, are stored once; both answer from
/// the shared store; both stop cleanly (the store's connections close on the way out).
#[test]
fn serve_replicas_on_postgres_store_each_batch_once() {
    let Some(pg) = support::postgres::postgres_or_skip() else {
        return;
    };
    let url = pg.create_database("serve");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), SNAPSHOT).unwrap();
    let certs = certs(dir.path());
    let url_file = dir.path().join("store-url");
    std::fs::write(&url_file, format!("{url}\n")).unwrap();
    let cluster = dir.path().join("cluster.yaml");
    let cluster_args = ["--cluster", cluster.to_str().unwrap()];
    let store = ["--store-file", url_file.to_str().unwrap()];
    let a = Server::start_with(dir.path(), &cluster_args, &store, free_port(), free_port());
    let b = Server::start_with(dir.path(), &cluster_args, &store, free_port(), free_port());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let now = Utc::now();
    let b1 = batch(1, &[flow("203.0.113.10", 443, 5, now)]);
    let b2 = batch(2, &[flow("203.0.113.10", 443, 3, now)]);
    let b3 = batch(3, &[flow("203.0.113.11", 443, 1, now)]);
    assert_eq!(
        rt.block_on(push(&certs, a.grpc, vec![b1.clone(), b2.clone()])),
        vec![(1, false), (2, false)]
    );
    // The agent reconnects to the other replica and resends what it has no ack for.
    assert_eq!(
        rt.block_on(push(&certs, b.grpc, vec![b2, b3, b1])),
        vec![(2, true), (3, false), (1, true)]
    );
    for server in [&a, &b] {
        let (status, body) = get(
            server.ui,
            "/v1/namespaces/shop/workloads/Deployment/web/destinations",
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let dests: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(dests[0]["count"], 8, "5 + 3, the resends ignored: {body}");
        assert_eq!(dests[1]["count"], 1, "{body}");
    }
    assert_eq!(pg.psql("serve", "SELECT count(*) FROM batches"), "3");
    assert!(a.stop().success(), "clean exit on SIGTERM");
    assert!(b.stop().success(), "clean exit on SIGTERM");
}

#[test]
fn serve_refuses_agents_without_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), SNAPSHOT).unwrap();
    let certs = certs(dir.path());
    let cluster = dir.path().join("cluster.yaml");
    let server = Server::start(
        dir.path(),
        &["--cluster", cluster.to_str().unwrap()],
        free_port(),
        free_port(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Plaintext gRPC to the mTLS port: no batch gets through.
    let result = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect()
            .await;
        match channel {
            Err(e) => Err(e.to_string()),
            Ok(ch) => IngestClient::new(ch)
                .push(tokio_stream::iter(vec![batch(
                    1,
                    &[flow("203.0.113.10", 443, 1, Utc::now())],
                )]))
                .await
                .map(|_| ())
                .map_err(|s| s.to_string()),
        }
    });
    assert!(result.is_err(), "a client without a certificate was served");
    let _ = certs;
    let (_, body) = get(server.ui, "/v1/workloads").unwrap();
    assert_eq!(body.trim(), "[]", "nothing was stored");
}

/// The snapshot's objects into the fake API server, by kind.
fn load_into(api: &leash_lab::fake_api::FakeApi) {
    load_snapshot(api, SNAPSHOT);
}

/// A snapshot's objects into the fake API server, by kind.
fn load_snapshot(api: &leash_lab::fake_api::FakeApi, snapshot: &str) {
    let list: serde_json::Value = serde_norway::from_str(snapshot).unwrap();
    for item in list["items"].as_array().unwrap() {
        let collection = match item["kind"].as_str().unwrap() {
            "Namespace" => "/api/v1/namespaces",
            "Pod" => "/api/v1/pods",
            "Deployment" => "/apis/apps/v1/deployments",
            "ReplicaSet" => "/apis/apps/v1/replicasets",
            "NetworkPolicy" => "/apis/networking.k8s.io/v1/networkpolicies",
            other => panic!("no collection for {other}"),
        };
        api.apply_json(collection, item.clone());
    }
}

#[test]
fn serve_with_kube_watches_the_cluster_and_creates_events_for_unexpected_egress() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(leash_lab::fake_api::FakeApi::start()).unwrap();
    load_into(&api);
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let server = Server::start(
        dir.path(),
        &[
            "--kube",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            // These tests push with the client certificate alone (ingest_identity.rs: tokens).
            "--agent-auth",
            "mtls",
        ],
        free_port(),
        free_port(),
    );

    let acks = rt.block_on(push(
        &certs,
        server.grpc,
        vec![batch(1, &[flow("203.0.113.10", 443, 2, Utc::now())])],
    ));
    assert_eq!(acks, vec![(1, false)]);
    // Attributed through the live model: the Deployment, not the pod.
    let (status, body) = get(
        server.ui,
        "/v1/namespaces/shop/workloads/Deployment/web/destinations",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");

    wait_for(
        || {
            api.requests().iter().any(|r| {
                r.method == "POST"
                    && r.path == "/apis/events.k8s.io/v1/namespaces/shop/events"
                    && String::from_utf8_lossy(&r.body).contains("UnexpectedEgress")
                    && String::from_utf8_lossy(&r.body).contains("203.0.113.10:443")
            })
        },
        "an UnexpectedEgress event",
    );
    let event = api
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/events"))
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
    assert_eq!(body["regarding"]["kind"], "Pod");
    assert_eq!(body["regarding"]["name"], "web-7d4-x2");
    assert!(
        body["note"].as_str().unwrap().contains("shop/web-dns-only"),
        "the note names the isolating policy: {body}"
    );

    // A policy change in the cluster reaches the served audit: allow 443 and the flow passes.
    let mut policy: serde_json::Value =
        serde_norway::from_str::<serde_json::Value>(SNAPSHOT).unwrap()["items"][4].clone();
    policy["spec"]["egress"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"ports": [{"port": 443, "protocol": "TCP"}]}));
    api.apply_json("/apis/networking.k8s.io/v1/networkpolicies", policy);
    wait_for(
        || {
            get(server.ui, "/v1/namespaces/shop/audit")
                .is_ok_and(|(_, b)| b.contains("\"allowed\":1,\"denied\":0"))
        },
        "the audit to follow the updated policy",
    );
    assert!(server.stop().success());
}

/// web's DNS answer at `at`: `name` resolves to `addresses`.
fn answer(name: &str, addresses: &[&str], at: DateTime<Utc>) -> DnsRecord {
    DnsRecord {
        node: "n1".into(),
        pod: Some(PodRef {
            uid: "uid-pod-web".into(),
            namespace: "shop".into(),
            name: "web-7d4-x2".into(),
        }),
        cgroup: "/kubepods.slice/x".into(),
        server: "10.96.0.10".parse().unwrap(),
        query: format!("{name}."),
        qtype: "A".into(),
        rcode: "NOERROR".into(),
        answers: addresses
            .iter()
            .map(|a| DnsAnswer {
                name: format!("{name}."),
                rtype: "A".into(),
                data: (*a).into(),
                ttl: 60,
            })
            .collect(),
        time: at,
    }
}

fn batch_with_dns(seq: u64, flows: &[FlowRecord], dns: &[DnsRecord]) -> v1::Batch {
    wire::batch_to_wire(
        v1::BatchId {
            node: "n1".into(),
            boot_id: "boot-1".into(),
            seq,
        },
        flows,
        dns,
    )
    .unwrap()
}

/// A webhook stand-in over real loopback HTTP: answers `200` and keeps each request body.
struct Webhook {
    addr: SocketAddr,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Webhook {
    fn start() -> Webhook {
        use std::io::{Read as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = std::sync::Arc::clone(&bodies);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then the body of Content-Length bytes.
                let body = loop {
                    let Ok(n) = stream.read(&mut buf) else {
                        break None;
                    };
                    if n == 0 {
                        break None;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&raw).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length: usize = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            break Some(body.to_owned());
                        }
                    }
                };
                if let Some(body) = body {
                    keep.lock().unwrap().push(body);
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Webhook { addr, bodies }
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter_map(|b| serde_json::from_str(b).ok())
            .collect()
    }
}

/// A DNS answer moves api.stripe.test to an address web's applied policy does not allow,
/// while it allows the old one on 443: before any connection to the new address, the drift
/// is counted, the webhook gets a `dns-drift` alert with the fix, and the API server an
/// `EgressDrift` Event; `/v1/alerts` remembers it.
#[test]
fn serve_flags_dns_drift_as_answers_are_ingested() {
    let snapshot = SNAPSHOT.replace(
        "    - ports: [{port: 53, protocol: UDP}]\n",
        "    - ports: [{port: 53, protocol: UDP}]\n    - to: [{ipBlock: {cidr: 203.0.113.10/32}}]\n      ports: [{port: 443, protocol: TCP}]\n",
    );
    assert_ne!(snapshot, SNAPSHOT);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(leash_lab::fake_api::FakeApi::start()).unwrap();
    load_snapshot(&api, &snapshot);
    let dir = tempfile::tempdir().unwrap();
    let certs = certs(dir.path());
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let webhook = Webhook::start();
    let url = format!("http://{}/hook", webhook.addr);
    // A long check interval: drift must not wait for it.
    let server = Server::start(
        dir.path(),
        &[
            "--kube",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--agent-auth",
            "mtls",
            "--alert-webhook",
            &url,
        ],
        free_port(),
        free_port(),
    );
    let metric = |line: &str| {
        get(server.http, "/metrics").is_ok_and(|(_, body)| body.lines().any(|l| l == line))
    };
    assert!(
        metric("leash_dns_drift_total 0"),
        "served at 0 from the start"
    );

    let t0 = Utc::now() - chrono::Duration::minutes(5);
    // The old address, and a connection to it on 443: allowed.
    let acks = rt.block_on(push(
        &certs,
        server.grpc,
        vec![batch_with_dns(
            1,
            &[flow("203.0.113.10", 443, 1, t0)],
            &[answer("api.stripe.test", &["203.0.113.10"], t0)],
        )],
    ));
    assert_eq!(acks, vec![(1, false)]);
    // The name moves; no connection to the new address is ever sent.
    let t1 = t0 + chrono::Duration::minutes(1);
    let acks = rt.block_on(push(
        &certs,
        server.grpc,
        vec![batch_with_dns(
            2,
            &[],
            &[answer("api.stripe.test", &["203.0.113.99"], t1)],
        )],
    ));
    assert_eq!(acks, vec![(2, false)]);

    wait_for(|| metric("leash_dns_drift_total 1"), "the drift metric");
    wait_for(|| !webhook.bodies().is_empty(), "the drift on the webhook");
    let bodies = webhook.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:#?}");
    let body = &bodies[0];
    assert_eq!(body["kind"], "dns-drift", "{body}");
    let alert = &body["alert"];
    assert_eq!(alert["type"], "dns-drift");
    assert_eq!(alert["dst"], "203.0.113.99");
    assert_eq!(alert["port"], 443);
    assert_eq!(alert["protocol"], "TCP");
    assert_eq!(alert["workload"], "Deployment/web");
    assert_eq!(alert["names"], serde_json::json!(["api.stripe.test"]));
    assert_eq!(alert["policies"], serde_json::json!(["shop/web-dns-only"]));
    let fix = alert["fix"].as_str().unwrap_or_default();
    assert!(
        fix.contains("203.0.113.99/32") && fix.contains("443"),
        "{fix}"
    );
    assert!(
        body["text"]
            .as_str()
            .unwrap_or_default()
            .contains("api.stripe.test"),
        "{body}"
    );

    wait_for(
        || {
            api.requests().iter().any(|r| {
                r.method == "POST"
                    && r.path == "/apis/events.k8s.io/v1/namespaces/shop/events"
                    && String::from_utf8_lossy(&r.body).contains("EgressDrift")
            })
        },
        "an EgressDrift event",
    );
    let event = api
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && String::from_utf8_lossy(&r.body).contains("EgressDrift"))
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(&event.body).unwrap();
    assert_eq!(event["regarding"]["name"], "web-7d4-x2");
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("203.0.113.99") && note.contains("api.stripe.test"),
        "{note}"
    );
    // Nothing was denied: no connection to the new address happened.
    assert!(
        !api.requests()
            .iter()
            .any(|r| String::from_utf8_lossy(&r.body).contains("UnexpectedEgress")),
        "no UnexpectedEgress event"
    );

    let (status, alerts) = get(server.ui, "/v1/alerts").unwrap();
    assert_eq!(status, 200, "{alerts}");
    let alerts: serde_json::Value = serde_json::from_str(&alerts).unwrap();
    assert_eq!(alerts[0]["type"], "dns-drift", "{alerts}");
    assert_eq!(alerts[0]["dst"], "203.0.113.99", "{alerts}");
    assert!(server.stop().success());

    // After a restart the same answer is not sent again; a new move is.
    let server = Server::start(
        dir.path(),
        &[
            "--kube",
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--agent-auth",
            "mtls",
            "--alert-webhook",
            &url,
        ],
        free_port(),
        free_port(),
    );
    let t2 = t1 + chrono::Duration::minutes(1);
    let acks = rt.block_on(push(
        &certs,
        server.grpc,
        vec![batch_with_dns(
            3,
            &[],
            &[
                answer("api.stripe.test", &["203.0.113.99"], t2),
                answer("api.stripe.test", &["203.0.113.98"], t2),
            ],
        )],
    ));
    assert_eq!(acks, vec![(3, false)]);
    let metric = |line: &str| {
        get(server.http, "/metrics").is_ok_and(|(_, body)| body.lines().any(|l| l == line))
    };
    wait_for(|| metric("leash_dns_drift_total 1"), "the new drift");
    wait_for(
        || webhook.bodies().len() >= 2,
        "the new drift on the webhook",
    );
    // Both addresses were in one batch, checked together: anything resent would be by now.
    std::thread::sleep(Duration::from_millis(500));
    assert!(metric("leash_dns_drift_total 1"));
    let dsts: Vec<serde_json::Value> = webhook
        .bodies()
        .iter()
        .map(|b| b["alert"]["dst"].clone())
        .collect();
    assert_eq!(dsts, ["203.0.113.99", "203.0.113.98"], "nothing sent twice");
    assert!(server.stop().success());
}
