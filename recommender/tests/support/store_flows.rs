//! Observations written straight into a SQLite store, as ingest would have committed them, for
//! the tests of `leash serve`'s checks over a store.

use std::path::Path;

use chrono::{DateTime, Utc};
use leash::cluster::Cluster;
use leash::store::{BatchId, FlowObservation, SqliteStore, Store as _, WorkloadRef};
use leash_records::{FlowRecord, Protocol};

/// Deployment `name` in `ns` sent TCP to `dst:port` at `at`, twice, both connections
/// established, resolving `names`.
pub fn deployment_flow(
    ns: &str,
    name: &str,
    dst: &str,
    port: u16,
    names: &[&str],
    at: DateTime<Utc>,
) -> FlowObservation {
    FlowObservation {
        workload: WorkloadRef {
            namespace: ns.into(),
            kind: "Deployment".into(),
            name: name.into(),
        },
        protocol: Protocol::Tcp,
        dst: dst.parse().expect("a fixture IP address"),
        port,
        count: 2,
        first_seen: at,
        last_seen: at,
        names: names.iter().map(|n| (*n).to_owned()).collect(),
        pods: Default::default(),
        established: 2,
        failed: 0,
    }
}

/// Commits `flows` as batch `seq` of node n1, as ingest would.
pub fn commit(store: &Path, seq: u64, flows: &[FlowObservation]) {
    let store = SqliteStore::open(store).expect("opens the store");
    let id = BatchId {
        node: "n1".into(),
        boot_id: "test".into(),
        seq,
    };
    store.commit(&id, flows, &[]).expect("commits the batch");
}

/// Commits agents' flow records, joined to `cluster` as ingest joins them, as the one batch of
/// node n1.
pub fn commit_records(store: &Path, cluster: &Cluster, flows: &[FlowRecord]) {
    let store = SqliteStore::open(store).expect("store opens");
    let (f, d) = leash::observations::from_batch(cluster, flows, &[]);
    let id = BatchId {
        node: "n1".into(),
        boot_id: "boot".into(),
        seq: 0,
    };
    store.commit(&id, &f, &d).expect("commit");
}
