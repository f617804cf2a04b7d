//! The ingest benchmarks' data (`ingest.rs`, `ingest_replicas.rs`): 200 DaemonSet workloads
//! with 2 pods each, every pod talking to many destinations; a batch carries `per_batch`
//! distinct pod-level keys, taken in turn from a universe of 400 pods × 100 destinations, so
//! keys repeat across batches as an agent's do; every 20th record goes to a destination never
//! seen before. Records come by cgroup, as the agent sends them, about 10 per pod per batch.

use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, Utc};
use leash_records::{FlowRecord, Outcome, PodRef, Protocol};

pub const WORKLOADS: usize = 200;
pub const PODS: usize = WORKLOADS * 2;
pub const DESTINATIONS: usize = 100;

/// Each record's count (the stored counts sum to this times the records).
pub const COUNT: u64 = 3;

pub fn base_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default()
}

pub fn dst(i: usize) -> IpAddr {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    // 203.0.113.0/24 and, past 256 destinations, the same low byte in other /24s of
    // 198.51.100.0/22-like blocks: the address value itself does not matter to the store.
    IpAddr::V4(Ipv4Addr::from(
        0xCB00_7100u32 + (i % 256) + ((i / 256) << 8),
    ))
}

pub fn pod(p: usize) -> PodRef {
    let w = p / 2;
    PodRef {
        uid: format!("6f1c2a9e-0000-4000-8000-{p:012}"),
        namespace: format!("ns{}", w % 10),
        name: format!("app-{w}-{p}"),
    }
}

/// The pods of the cluster the server attributes records with: `WORKLOADS` DaemonSets of
/// two pods, as Kubernetes objects.
pub fn pod_objects() -> Vec<serde_json::Value> {
    (0..PODS)
        .map(|p| {
            let w = p / 2;
            let PodRef {
                uid,
                namespace,
                name,
            } = pod(p);
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "uid": uid,
                    "labels": {"app": format!("app-{w}")},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                        "name": format!("app-{w}"), "uid": "x", "controller": true}]},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i"}]},
                "status": {"phase": "Running", "podIP": format!("10.244.{}.{}", p / 250, p % 250)}
            })
        })
        .collect()
}

/// The records of batch `round` (0-based) of agent `node` running the pods `pods` (a range
/// of `0..PODS`; of even bounds, so that a workload's two pods stay on one node), as an
/// agent sends them: in the order its merge buffer cuts them, by cgroup (so `batch_to_wire`
/// sends each pod's runs as one flow group, as the agent's batches do).
pub fn records(
    node: &str,
    pods: std::ops::Range<usize>,
    round: usize,
    per_batch: usize,
) -> Vec<FlowRecord> {
    let t = base_time() + chrono::Duration::seconds(i64::try_from(round).unwrap_or(0));
    let n = pods.len().max(1);
    let mut records: Vec<FlowRecord> = (0..per_batch)
        .map(|i| {
            let k = (round * per_batch + i) % (n * DESTINATIONS);
            let p = pods.start + k % n;
            let d = if i % 20 == 0 {
                DESTINATIONS + round * per_batch / 20 + i / 20
            } else {
                k / n
            };
            let pod = pod(p);
            FlowRecord {
                node: node.into(),
                cgroup: format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{:064x}.scope",
                    pod.uid.replace('-', "_"),
                    p
                ),
                pod: Some(pod),
                protocol: Protocol::Tcp,
                dst: dst(d),
                dst_port: 443,
                count: COUNT,
                first_seen: t,
                last_seen: t + chrono::Duration::milliseconds(900),
                names: vec![format!("svc-{}.example.test", d % 50)],
                outcome: Some(Outcome {
                    established: 3,
                    failed: 0,
                }),
            }
        })
        .collect();
    records.sort_by(|a, b| a.cgroup.cmp(&b.cgroup));
    records
}

/// `/proc/<pid>/stat`'s fields after the command name.
pub fn proc_stat(pid: u32) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    // From field 3 (state, not a number: 0) on.
    Some(
        rest.split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect(),
    )
}

fn ticks() -> f64 {
    // SAFETY: plain sysconf.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// The CPU seconds (user + system, all threads) of a live process.
pub fn process_cpu(pid: u32) -> Option<f64> {
    // utime, stime are fields 14–15: indices 11–12 from field 3.
    let f = proc_stat(pid)?;
    Some(f.get(11..13)?.iter().sum::<u64>() as f64 / ticks())
}

/// The CPU seconds of the PostgreSQL server: the postmaster's own and its reaped children's
/// time, plus that of its live children (backends, WAL writer, checkpointer, …).
pub fn postgres_cpu(postmaster: u32) -> Result<f64, Box<dyn std::error::Error + Send + Sync>> {
    let main = proc_stat(postmaster).ok_or("the postmaster is gone")?;
    // utime, stime, cutime, cstime are fields 14–17: indices 11–14 from field 3.
    let mut total: u64 = main.get(11..15).map_or(0, |f| f.iter().sum());
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(f) = proc_stat(pid)
            && f.get(1) == Some(&u64::from(postmaster))
        {
            total += f.get(11..13).map_or(0, |f| f.iter().sum::<u64>());
        }
    }
    Ok(total as f64 / ticks())
}

/// The load average (1, 5, 15 minutes), as `/proc/loadavg` says.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".to_owned())
}
