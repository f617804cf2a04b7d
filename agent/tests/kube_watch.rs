//! The kube pod watch against a fake API server, through kube-rs's real HTTP client.
//!
//! The fake speaks just enough HTTP/1.1 for `GET /api/v1/pods` (list) and
//! `GET /api/v1/pods?watch=true` (a chunked stream of watch events), honours `fieldSelector`
//! on `spec.nodeName`, replays events newer than the watch's `resourceVersion` (as the real
//! server does), and can end watches or expire them with a 410 to force a re-list.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use leash_agent::attribution::pods::fixtures;
use leash_agent::attribution::{PodStore, watch_pods};
use leash_agent::metrics::Metrics;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const UID_A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const UID_B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const UID_C: &str = "cccccccc-0000-4000-8000-000000000003";
const UID_D: &str = "dddddddd-0000-4000-8000-000000000004";
const UID_E: &str = "eeeeeeee-0000-4000-8000-000000000005";
const UID_F: &str = "ffffffff-0000-4000-8000-000000000006";

/// What a watch connection receives: an event line, or the end of the stream.
enum WatchMsg {
    Event(String),
    End,
}

#[derive(Default)]
struct State {
    pods: BTreeMap<String, Pod>,
    resource_version: u64,
    /// Every event ever sent, with the resource version it created, for replay.
    log: Vec<(u64, String, String)>,
    watchers: Vec<(String, mpsc::UnboundedSender<WatchMsg>)>,
    requests: Vec<String>,
}

impl State {
    fn bump(&mut self, pod: &mut Pod) -> u64 {
        self.resource_version += 1;
        pod.metadata.resource_version = Some(self.resource_version.to_string());
        self.resource_version
    }

    /// Records an event and sends it to the live watches whose selector matches.
    fn publish(&mut self, kind: &str, pod: &Pod, rv: u64) {
        let node = node_of(pod);
        let line = json!({"type": kind, "object": pod}).to_string();
        self.log.push((rv, node.clone(), line.clone()));
        self.watchers.retain(|(selector_node, tx)| {
            if *selector_node != node {
                return true;
            }
            tx.send(WatchMsg::Event(line.clone())).is_ok()
        });
    }
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

#[derive(Clone)]
struct FakeApi {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
}

impl FakeApi {
    async fn start(pods: Vec<Pod>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let api = FakeApi {
            state: Arc::default(),
            addr,
        };
        for pod in pods {
            api.set_silently(pod);
        }
        let server = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let server = server.clone();
                tokio::spawn(async move { server.serve(stream).await });
            }
        });
        api
    }

    fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Changes the server's state without any watch event (as if it happened while the agent's
    /// watch was down and the events were compacted away).
    fn set_silently(&self, mut pod: Pod) {
        let mut state = self.lock();
        state.bump(&mut pod);
        let uid = pod.metadata.uid.clone().unwrap();
        state.pods.insert(uid, pod);
    }

    fn remove_silently(&self, uid: &str) {
        let mut state = self.lock();
        state.resource_version += 1;
        state.pods.remove(uid);
    }

    fn apply(&self, mut pod: Pod) {
        let mut state = self.lock();
        let rv = state.bump(&mut pod);
        let uid = pod.metadata.uid.clone().unwrap();
        let kind = if state.pods.contains_key(&uid) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        state.pods.insert(uid, pod.clone());
        state.publish(kind, &pod, rv);
    }

    fn delete(&self, uid: &str) {
        let mut state = self.lock();
        let mut pod = state.pods.remove(uid).unwrap();
        let rv = state.bump(&mut pod);
        state.publish("DELETED", &pod, rv);
    }

    /// Ends every watch stream cleanly (the client should resume from its last version).
    fn end_watches(&self) {
        for (_, tx) in self.lock().watchers.drain(..) {
            let _ = tx.send(WatchMsg::End);
        }
    }

    /// Tells every watch its version is gone (410) and ends it; the client must re-list.
    fn expire_watches(&self) {
        let mut state = self.lock();
        state.log.clear();
        let gone = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410
        }})
        .to_string();
        for (_, tx) in state.watchers.drain(..) {
            let _ = tx.send(WatchMsg::Event(gone.clone()));
            let _ = tx.send(WatchMsg::End);
        }
    }

    fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    async fn serve(&self, mut stream: TcpStream) {
        let Some(target) = read_request_target(&mut stream).await else {
            return;
        };
        self.lock().requests.push(target.clone());
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let params: BTreeMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), percent_decode(v)))
            .collect();
        if path != "/api/v1/pods" {
            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","code":404}"#;
            let _ = write_response(&mut stream, "404 Not Found", body).await;
            return;
        }
        let node = params
            .get("fieldSelector")
            .and_then(|s| s.strip_prefix("spec.nodeName="))
            .unwrap_or("")
            .to_owned();
        if params.get("watch").map(String::as_str) == Some("true") {
            let since: u64 = params
                .get("resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            self.stream_watch(stream, node, since).await;
        } else {
            let body = {
                let state = self.lock();
                let items: Vec<&Pod> = state
                    .pods
                    .values()
                    .filter(|p| node.is_empty() || node_of(p) == node)
                    .collect();
                json!({
                    "kind": "PodList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": state.resource_version.to_string()},
                    "items": items,
                })
                .to_string()
            };
            let _ = write_response(&mut stream, "200 OK", &body).await;
        }
    }

    async fn stream_watch(&self, mut stream: TcpStream, node: String, since: u64) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        {
            // Replay and subscribe under one lock, so no event falls in between.
            let mut state = self.lock();
            for (rv, event_node, line) in &state.log {
                if *rv > since && *event_node == node {
                    let _ = tx.send(WatchMsg::Event(line.clone()));
                }
            }
            state.watchers.push((node, tx));
        }
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
        if stream.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        while let Some(msg) = rx.recv().await {
            match msg {
                WatchMsg::Event(line) => {
                    let chunk = format!("{:x}\r\n{line}\n\r\n", line.len() + 1);
                    if stream.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                WatchMsg::End => break,
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
        let _ = stream.shutdown().await;
    }
}

async fn read_request_target(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let line = text.lines().next()?;
    let mut parts = line.split(' ');
    (parts.next()? == "GET").then_some(())?;
    parts.next().map(str::to_owned)
}

async fn write_response(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `cond` every 20 ms for up to 15 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..750 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn names(store: &PodStore) -> Vec<String> {
    store.pods().iter().map(|p| p.name.clone()).collect()
}

#[tokio::test]
async fn store_follows_adds_updates_deletes_and_relists() {
    let api = FakeApi::start(vec![
        fixtures::owned_by(
            fixtures::pod("shop", "a", UID_A, "n1", &[("app", "a")]),
            "ReplicaSet",
            "a-7d4",
        ),
        fixtures::pod("shop", "b", UID_B, "n1", &[]),
        fixtures::pod("shop", "c-elsewhere", UID_C, "n2", &[]),
    ])
    .await;
    let metrics = Metrics::new();
    let store = PodStore::new(metrics.clone());
    let watch = tokio::spawn({
        let (client, store, metrics) = (api.client(), store.clone(), metrics.clone());
        async move { watch_pods(client, "n1", store, metrics).await }
    });

    // Initial list: this node's pods only.
    tokio::time::timeout(Duration::from_secs(15), store.wait_synced())
        .await
        .expect("initial list");
    assert_eq!(names(&store), ["a", "b"]);
    let a = store.get(UID_A).unwrap();
    assert_eq!(a.owner.as_ref().map(|o| o.name.as_str()), Some("a-7d4"));
    assert_eq!(metrics.pod_metadata_size.get(), 2);
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("/api/v1/pods?")
                && r.contains("fieldSelector=spec.nodeName%3Dn1")),
        "{requests:?}"
    );

    // ADDED (plus one for another node, which the selector keeps away).
    api.apply(fixtures::host_network(fixtures::pod(
        "kube-system",
        "d",
        UID_D,
        "n1",
        &[],
    )));
    api.apply(fixtures::pod(
        "shop",
        "other-node",
        "99999999-0000-4000-8000-000000000009",
        "n2",
        &[],
    ));
    eventually("pod d added", || store.get(UID_D).is_some()).await;
    assert!(store.get(UID_D).unwrap().host_network);

    // MODIFIED.
    api.apply(fixtures::pod(
        "shop",
        "a",
        UID_A,
        "n1",
        &[("app", "a"), ("version", "2")],
    ));
    eventually("pod a relabelled", || {
        store
            .get(UID_A)
            .is_some_and(|p| p.labels.get("version").map(String::as_str) == Some("2"))
    })
    .await;

    // DELETED.
    api.delete(UID_B);
    eventually("pod b deleted", || store.get(UID_B).is_none()).await;
    // Sorted by namespace, then name: kube-system/d first.
    assert_eq!(names(&store), ["d", "a"]);

    // The watch ends (server timeout): the client resumes from its version, no event lost.
    api.end_watches();
    api.apply(fixtures::pod("shop", "e", UID_E, "n1", &[]));
    eventually("pod e added after watch restart", || {
        store.get(UID_E).is_some()
    })
    .await;

    // Changes while the watch is down, then 410 Gone: the re-list replaces the store.
    api.remove_silently(UID_A);
    api.set_silently(fixtures::pod("shop", "f", UID_F, "n1", &[]));
    api.expire_watches();
    eventually("re-list applied", || {
        store.get(UID_F).is_some() && store.get(UID_A).is_none()
    })
    .await;
    assert_eq!(names(&store), ["d", "e", "f"]);
    assert!(metrics.kube_watch_errors.get() >= 1);
    assert_eq!(metrics.pod_metadata_size.get(), 3);
    assert!(store.get("99999999-0000-4000-8000-000000000009").is_none());

    watch.abort();
}
