//! `leash serve` on a store whose disk fills up (a small tmpfs): ingest answers UNAVAILABLE
//! (the agent keeps the batch and resends it), `/healthz` stays `200` and says why (a restart
//! would not free the disk), `/readyz` stays `200` (out of the Service, the agents' resends
//! that find out space returned would stop), `leash_ingest_store_failing` is 1; once space
//! returns the resent batches are stored, each once, and everything is as before. A store on a
//! file system mounted read-only: the same answers; once writable again, the resent batches
//! are stored without a restart.
//!
//! Mounting needs root: without it the test is skipped with a message, unless
//! `LEASH_REQUIRE_PRIVILEGED=1`, which makes it fail.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use chrono::{DateTime, Utc};
use leash::store::{SqliteStore, Store};
use leash_records::{
    FlowRecord, PodRef, Protocol,
    wire::{self, v1, v1::ingest_client::IngestClient},
};
use support::http::get;
use support::serve_process::ServeProcess;
use support::snapshots;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, transport::Endpoint};

/// A tmpfs of `size` mounted on a fresh directory; unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` when this process may not mount (not root, no CAP_SYS_ADMIN).
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().expect("tempdir");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "leash-test"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// The tmpfs, or `None` after saying why the test is skipped; panics instead when
/// `LEASH_REQUIRE_PRIVILEGED=1`.
fn tmpfs_or_skip(size: &str) -> Option<Tmpfs> {
    let fs = Tmpfs::mount(size);
    if fs.is_none() {
        let required = std::env::var("LEASH_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "LEASH_REQUIRE_PRIVILEGED=1 but a tmpfs cannot be mounted (run as root)"
        );
        eprintln!(
            "SKIPPED: mounting a tmpfs needs root; run as root (LEASH_REQUIRE_PRIVILEGED=1 makes this a failure)"
        );
    }
    fs
}

fn batch(seq: u64) -> v1::Batch {
    let t: DateTime<Utc> = "2026-11-25T09:00:00Z".parse().expect("time");
    let flows: Vec<FlowRecord> = (0..50u16)
        .map(|p| FlowRecord {
            node: "node-a".into(),
            pod: Some(PodRef {
                uid: "uid-pod-web".into(),
                namespace: "shop".into(),
                name: "web-x2".into(),
            }),
            cgroup: String::new(),
            protocol: Protocol::Tcp,
            dst: [203, 0, 113, 10].into(),
            dst_port: 1000 + p,
            count: 1,
            first_seen: t,
            last_seen: t,
            names: vec!["api.stripe.test".into()],
            outcome: None,
        })
        .collect();
    let id = v1::BatchId {
        node: "node-a".into(),
        boot_id: "boot-1".into(),
        seq,
    };
    wire::batch_to_wire(id, &flows, &[]).expect("valid batch")
}

/// One stream, as the agent opens after a reconnect: `seqs` in order; their acks, or the
/// status that ended the stream.
async fn push(
    addr: SocketAddr,
    seqs: std::ops::RangeInclusive<u64>,
) -> Result<Vec<v1::Ack>, Status> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client = IngestClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let n = seqs.clone().count();
    for s in seqs {
        tx.send(batch(s)).await.expect("queued");
    }
    let mut acks = client.push(ReceiverStream::new(rx)).await?.into_inner();
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(std::time::Duration::from_secs(30), acks.message())
            .await
            .expect("an answer in time")?
        {
            Some(ack) => out.push(ack),
            None => return Err(Status::aborted("stream ended early")),
        }
    }
    Ok(out)
}

/// Fills the file system under `dir` with `filler` until a write fails with ENOSPC.
fn fill(filler: &Path) {
    let mut f = std::fs::File::create(filler).expect("creates the filler");
    let chunk = vec![0u8; 64 << 10];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    // What is left of a partial page too.
    while f.write_all(&[0u8; 512]).is_ok() {}
}

fn healthz(server: &ServeProcess) -> (u16, String) {
    get(server.http, "/healthz").expect("GET /healthz")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_unavailable_and_everything_resumes_when_space_returns() {
    let Some(fs) = tmpfs_or_skip("8m") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, snapshots::shop_web_dns_only_and_bank("db")).expect("snapshot");
    let store: PathBuf = fs.path().join("leash.db");
    let server = tokio::task::block_in_place(|| {
        ServeProcess::start(dir.path(), &store, &cluster, "1h", &[] as &[&str])
    });

    assert_eq!(push(server.grpc, 1..=1).await.expect("stored").len(), 1);
    assert_eq!(healthz(&server), (200, "ok\n".to_owned()));

    // The disk fills up: the batch is refused as transient, by name, and nothing is lost.
    let filler = fs.path().join("filler");
    fill(&filler);
    let status = push(server.grpc, 2..=4)
        .await
        .expect_err("the disk is full");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("batch node-a/boot-1/2"),
        "{status:?}"
    );
    assert!(status.message().contains("disk is full"), "{status:?}");
    let (code, body) = healthz(&server);
    assert_eq!(code, 200, "a full disk does not restart the pod: {body}");
    assert!(
        body.starts_with("ok, degraded: store commits fail since "),
        "{body}"
    );
    assert!(body.contains("disk is full"), "{body}");
    assert_eq!(
        get(server.http, "/readyz").expect("GET /readyz").0,
        200,
        "agents must still reach it to find out space returned"
    );
    assert_eq!(server.metric("leash_ingest_store_failing"), Some(1.0));
    assert!(
        server
            .metric("leash_ingest_rejected_batches_total{cause=\"store\"}")
            .is_some_and(|n| n >= 1.0),
        "{}",
        server.metrics()
    );
    // Still full on a resend (the agent's backoff): still UNAVAILABLE, still running.
    let status = push(server.grpc, 2..=4)
        .await
        .expect_err("the disk is still full");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // Space returns: the agent's resends are stored, once each, and health is plain again.
    std::fs::remove_file(&filler).expect("frees the space");
    // (A batch read ahead of the refused one may have been stored, its ack lost with the
    // stream: its resend is answered `duplicate`. The store's contents below say "once".)
    let acks = push(server.grpc, 2..=4)
        .await
        .expect("stored after space returned");
    let seqs: Vec<u64> = acks
        .iter()
        .filter_map(|a| a.id.as_ref().map(|i| i.seq))
        .collect();
    assert_eq!(seqs, [2, 3, 4]);
    assert_eq!(healthz(&server), (200, "ok\n".to_owned()));
    assert_eq!(server.metric("leash_ingest_store_failing"), Some(0.0));
    let acks = push(server.grpc, 1..=4).await.expect("resent");
    assert!(acks.iter().all(|a| a.duplicate), "{acks:?}");
    drop(server);

    let store = SqliteStore::open_existing(&store).expect("opens the store");
    let mut seqs: Vec<u64> = store
        .batch_ids()
        .expect("batch ids")
        .into_iter()
        .map(|(id, _)| id.seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2, 3, 4]);
    let flows = store.flows(None).expect("flows");
    assert_eq!(flows.len(), 50);
    assert!(flows.iter().all(|f| f.count == 4), "{flows:?}");
    drop(store);
    drop(fs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_store_is_unavailable_and_resumes_when_writable() {
    let Some(fs) = tmpfs_or_skip("8m") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, snapshots::shop_web_dns_only_and_bank("db")).expect("snapshot");
    let store: PathBuf = fs.path().join("leash.db");
    let start = || {
        tokio::task::block_in_place(|| {
            ServeProcess::start(dir.path(), &store, &cluster, "1h", &[] as &[&str])
        })
    };
    let server = start();
    assert_eq!(push(server.grpc, 1..=1).await.expect("stored").len(), 1);
    // The kernel refuses to make a file system with files open for writing read-only
    // (EBUSY): it is read-only when the pod starts (a volume mounted read-only, or remounted
    // so by the kernel after an I/O error).
    drop(server);
    remount(fs.path(), "ro");
    let server = start();
    let status = push(server.grpc, 2..=3)
        .await
        .expect_err("the store is read-only");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("readonly database"), "{status:?}");
    let (code, body) = healthz(&server);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("readonly database"), "{body}");
    assert_eq!(server.metric("leash_ingest_store_failing"), Some(1.0));

    // Writable again: the resend is stored without a restart (the writer's connection is
    // opened again after a read-only failure).
    remount(fs.path(), "rw");
    let acks = push(server.grpc, 2..=3)
        .await
        .expect("stored once writable");
    assert!(acks.iter().all(|a| !a.duplicate), "{acks:?}");
    assert_eq!(healthz(&server), (200, "ok\n".to_owned()));
    drop(server);
    let store = SqliteStore::open_existing(&store).expect("opens the store");
    assert_eq!(store.batch_ids().expect("batch ids").len(), 3);
    drop(store);
    drop(fs);
}

fn remount(path: &Path, mode: &str) {
    let ok = Command::new("mount")
        .args(["-o", &format!("remount,{mode}")])
        .arg(path)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mount -o remount,{mode}");
}
