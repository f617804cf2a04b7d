//! Version skew during a DaemonSet rollout: agents of the previous wire version, still running
//! while `leash serve` is already new, keep working. Their messages are built as they built
//! them (prost messages without the fields added since: `Batch.flow_groups`, `Ack.rejected`):
//! ungrouped flows and DNS records are stored with exact counts, a record the new server
//! refuses is listed in an ack the old agent reads without that field (the rest of its batch
//! is stored), and resends are duplicates.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use chrono::{DateTime, Utc};
use leash::store::{SqliteStore, Store};
use leash_records::wire::v1;
use support::serve_process::ServeProcess;
use support::snapshots;
use tokio_stream::wrappers::ReceiverStream;

/// `leash.v1.Batch` as agents before `flow_groups` compiled it: every flow carries its pod.
#[derive(Clone, PartialEq, prost::Message)]
struct OldBatch {
    #[prost(message, optional, tag = "1")]
    id: Option<v1::BatchId>,
    #[prost(message, repeated, tag = "2")]
    flows: Vec<v1::Flow>,
    #[prost(message, repeated, tag = "3")]
    dns: Vec<v1::Dns>,
}

/// `leash.v1.Ack` as agents before `rejected` compiled it.
#[derive(Clone, PartialEq, prost::Message)]
struct OldAck {
    #[prost(message, optional, tag = "1")]
    id: Option<v1::BatchId>,
    #[prost(bool, tag = "2")]
    duplicate: bool,
}

fn t() -> i64 {
    let t: DateTime<Utc> = "2026-11-25T09:00:00Z".parse().expect("time");
    t.timestamp_nanos_opt().expect("nanos")
}

fn pod() -> Option<v1::Pod> {
    Some(v1::Pod {
        uid: "uid-pod-web".into(),
        namespace: "shop".into(),
        name: "web-x2".into(),
    })
}

fn flow(port: u32, count: u64, name: &str) -> v1::Flow {
    v1::Flow {
        pod: pod(),
        cgroup: String::new(),
        protocol: v1::Protocol::Tcp as i32,
        dst: vec![203, 0, 113, 10],
        dst_port: port,
        count,
        first_seen_unix_nanos: t(),
        last_seen_unix_nanos: t(),
        names: vec![name.to_owned()],
        outcome: None,
    }
}

fn old_batch(seq: u64) -> OldBatch {
    OldBatch {
        id: Some(v1::BatchId {
            node: "node-old".into(),
            boot_id: "boot-1".into(),
            seq,
        }),
        // The second flow's name is empty: refused alone by the new server.
        flows: vec![flow(443, 5, "api.stripe.test"), flow(8443, 7, "")],
        dns: vec![v1::Dns {
            pod: pod(),
            cgroup: String::new(),
            server: vec![198, 51, 100, 53],
            query: "api.stripe.test".into(),
            qtype: "A".into(),
            rcode: "NOERROR".into(),
            answers: vec![v1::DnsAnswer {
                name: "api.stripe.test".into(),
                r#type: "A".into(),
                data: "203.0.113.10".into(),
                ttl: 60,
            }],
            time_unix_nanos: t(),
        }],
    }
}

/// An old agent's stream: sends `batches`, reads as many acks with its own `Ack`.
async fn old_agent(server: &ServeProcess, batches: Vec<OldBatch>) -> Vec<OldAck> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let n = batches.len();
    let (tx, rx) = tokio::sync::mpsc::channel(n.max(1));
    for b in batches {
        tx.send(b).await.expect("queued");
    }
    let codec = tonic_prost::ProstCodec::<OldBatch, OldAck>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/leash.v1.Ingest/Push");
    let mut acks = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec)
        .await
        .expect("call")
        .into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        let ack = tokio::time::timeout(std::time::Duration::from_secs(30), acks.message())
            .await
            .expect("an ack in time")
            .expect("acked")
            .expect("stream open");
        out.push(ack);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_of_the_previous_wire_version_is_stored_by_the_new_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, snapshots::shop_web_dns_only_and_bank("db")).expect("snapshot");
    let path = dir.path().join("leash.db");
    let server = tokio::task::block_in_place(|| {
        ServeProcess::start(dir.path(), &path, &cluster, "1h", &[] as &[&str])
    });

    let acks = old_agent(&server, vec![old_batch(1), old_batch(2)]).await;
    let seen: Vec<(u64, bool)> = acks
        .iter()
        .map(|a| (a.id.as_ref().map_or(0, |i| i.seq), a.duplicate))
        .collect();
    assert_eq!(seen, [(1, false), (2, false)]);
    // The refused record was counted (the new ack listed it; the old agent skipped the field).
    assert_eq!(
        server.metric("leash_ingest_rejected_records_total{reason=\"invalid_name\"}"),
        Some(2.0),
        "{}",
        server.metrics()
    );
    // A resend after a reconnect, as the old agent does: a duplicate.
    let acks = old_agent(&server, vec![old_batch(2)]).await;
    assert!(acks[0].duplicate, "{acks:?}");
    drop(server);

    let store = SqliteStore::open_existing(&path).expect("store");
    let flows = store.flows(None).expect("flows");
    let counts: Vec<(u16, u64)> = flows.iter().map(|f| (f.port, f.count)).collect();
    assert_eq!(
        counts,
        [(443, 10)],
        "the valid flow of both batches, once each"
    );
    let dns = store.dns(None).expect("dns");
    assert_eq!(dns.len(), 1, "{dns:?}");
    assert_eq!(dns[0].count, 2);
    assert_eq!(store.batch_ids().expect("ids").len(), 2);
}

/// The other direction: an agent newer than the server. A server before `flow_groups` would
/// decode a new agent's batch without its grouped flows and acknowledge it: they would be
/// lost. Hence the order of an upgrade (README, "Reliability"): the recommender first, then
/// the agents' DaemonSet.
#[test]
fn a_server_before_flow_groups_would_drop_a_new_agents_flows() {
    let record = leash_records::FlowRecord {
        node: "node-new".into(),
        pod: Some(leash_records::PodRef {
            uid: "uid-pod-web".into(),
            namespace: "shop".into(),
            name: "web-x2".into(),
        }),
        cgroup: "/kubepods/pod-web".into(),
        protocol: leash_records::Protocol::Tcp,
        dst: [203, 0, 113, 10].into(),
        dst_port: 443,
        count: 3,
        first_seen: "2026-11-25T09:00:00Z".parse().expect("time"),
        last_seen: "2026-11-25T09:00:00Z".parse().expect("time"),
        names: vec!["api.stripe.test".into()],
        outcome: None,
    };
    let id = v1::BatchId {
        node: "node-new".into(),
        boot_id: "boot-1".into(),
        seq: 1,
    };
    let new = leash_records::wire::batch_to_wire(id, &[record], &[]).expect("batch");
    assert!(
        new.flows.is_empty() && new.flow_groups.len() == 1,
        "{new:?}"
    );
    let old = <OldBatch as prost::Message>::decode(prost::Message::encode_to_vec(&new).as_slice())
        .expect("an old server decodes it");
    assert!(old.flows.is_empty(), "grouped flows are invisible to it");
}
