//! A store written by the previous schema version is migrated in place when `leash serve`
//! starts on it, with nothing lost: the older database is built with the production
//! migrations minus the last ([`sqlite::MIGRATIONS`]) and written with that version's SQL, as
//! the previous release wrote it; after the upgrade every flow, name, DNS answer, alert and
//! batch id reads back, and a batch id stored before the upgrade is still a duplicate.
//!
//! PostgreSQL: the upgrade from its version 1 to 2, by the store's opening as `leash serve`
//! opens it and by two replicas at once, is `store_postgres_write.rs`
//! (`migration_2_keeps_version_1_data_and_makes_ingest_updates_hot`).

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;

use chrono::{DateTime, Duration, DurationRound, Utc};
use leash::store::{BatchId, Commit, SqliteStore, Store, sqlite};
use rusqlite::{Connection, params};
use support::serve_process::ServeProcess;
use support::snapshots;

fn nanos(t: DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().expect("a storable time")
}

fn v4(addr: &str) -> Vec<u8> {
    match addr.parse::<IpAddr>().expect("an address") {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Writes a database at schema version `MIGRATIONS.len() - 1`, with one workload's flow (two
/// names, one pod), its DNS query and answers, an alert and two batch ids, at `at`.
fn write_previous_version(path: &std::path::Path, at: DateTime<Utc>) -> i64 {
    let previous = sqlite::MIGRATIONS.len() - 1;
    let mut conn = Connection::open(path).expect("creates the database");
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .expect("WAL");
    for m in &sqlite::MIGRATIONS[..previous] {
        let tx = conn.transaction().expect("transaction");
        tx.execute_batch(m.sql).expect(m.description);
        tx.commit().expect("commit");
    }
    let version = i64::try_from(previous).expect("few migrations");
    conn.pragma_update(None, "user_version", version)
        .expect("version");
    let t = nanos(at);
    conn.execute_batch(&format!(
        "INSERT INTO workloads (id, namespace, kind, name) VALUES (1, 'shop', 'Deployment', 'web');
         INSERT INTO names (id, name) VALUES (1, 'api.stripe.test'), (2, 'stripe.test'), (3, 'web-x2');
         INSERT INTO batches (node, boot_id, seq, committed_at)
             VALUES ('n1', 'boot-1', 1, {t}), ('n1', 'boot-1', 2, {t});
         INSERT INTO flow_pods (workload, dst, port, protocol, pod) VALUES (1, x'cb00710a', 443, 6, 3);
         INSERT INTO flow_names (workload, dst, port, protocol, name)
             VALUES (1, x'cb00710a', 443, 6, 1), (1, x'cb00710a', 443, 6, 2);
         INSERT INTO dns (workload, server, query, count, first_seen, last_seen)
             VALUES (1, x'c633640a', 1, 9, {t}, {t});
         INSERT INTO dns_resolved (workload, server, query, name, ip)
             VALUES (1, x'c633640a', 1, 1, x'cb00710a');"
    ))
    .expect("previous version's rows");
    conn.execute(
        "INSERT INTO flows (workload, dst, port, protocol, count, first_seen, last_seen,
             established, failed, pods) VALUES (1, ?1, 443, 6, 42, ?2, ?2, 40, 2, 1)",
        params![v4("203.0.113.10"), t],
    )
    .expect("flow");
    conn.execute(
        "INSERT INTO alerts (namespace, kind, name, dst, port, protocol, first_sent, last_sent,
             last_seen, occurrences, detail)
         VALUES ('shop', 'Deployment', 'web', ?1, 443, 6, ?2, ?2, ?2, 3, 'denied by shop/web')",
        params![v4("203.0.113.10"), t],
    )
    .expect("alert");
    version
}

#[test]
fn serve_migrates_the_previous_schema_in_place_with_nothing_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, snapshots::shop_web_dns_only_and_bank("db")).expect("snapshot");
    let path = dir.path().join("leash.db");
    // Recent: serve's retention keeps it.
    let at = (Utc::now() - Duration::hours(1))
        .duration_trunc(Duration::seconds(1))
        .expect("a time");
    let previous = write_previous_version(&path, at);

    let server = ServeProcess::start(dir.path(), &path, &cluster, "1h", &[] as &[&str]);
    // Served from the upgraded store.
    let workloads = server.get_json("/v1/workloads");
    assert!(workloads.to_string().contains("\"web\""), "{workloads}");
    drop(server);

    let store = SqliteStore::open_existing(&path).expect("opens the upgraded store");
    assert_eq!(store.version().expect("version"), sqlite::schema_version());
    assert_eq!(previous + 1, sqlite::schema_version());

    let flows = store.flows(None).expect("flows");
    assert_eq!(flows.len(), 1, "{flows:?}");
    let f = &flows[0];
    assert_eq!(
        (
            f.workload.namespace.as_str(),
            f.workload.kind.as_str(),
            f.workload.name.as_str()
        ),
        ("shop", "Deployment", "web")
    );
    assert_eq!(f.dst, "203.0.113.10".parse::<IpAddr>().expect("ip"));
    assert_eq!((f.port, f.count, f.established, f.failed), (443, 42, 40, 2));
    assert_eq!((f.first_seen, f.last_seen), (at, at));
    assert_eq!(
        f.names,
        BTreeSet::from(["api.stripe.test".to_owned(), "stripe.test".to_owned()])
    );

    let dns = store.dns(None).expect("dns");
    assert_eq!(dns.len(), 1, "{dns:?}");
    assert_eq!(
        (dns[0].query.as_str(), dns[0].count),
        ("api.stripe.test", 9)
    );
    assert_eq!(
        dns[0].resolved,
        BTreeSet::from([(
            "api.stripe.test".to_owned(),
            "203.0.113.10".parse::<IpAddr>().expect("ip")
        )])
    );
    // Written before the address history existed: none, as the migration says.
    assert!(dns[0].addresses.is_empty());

    let alerts = store.alerts(None).expect("alerts");
    assert_eq!(alerts.len(), 1, "{alerts:?}");

    let mut ids: Vec<u64> = store
        .batch_ids()
        .expect("batch ids")
        .into_iter()
        .map(|(id, _)| id.seq)
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [1, 2]);
    // An agent resending a batch stored before the upgrade: a duplicate, not counted again.
    let resent = BatchId {
        node: "n1".into(),
        boot_id: "boot-1".into(),
        seq: 2,
    };
    assert_eq!(
        store.commit(&resent, &flows, &[]).expect("commit"),
        Commit::Duplicate
    );
    assert_eq!(store.flows(None).expect("flows")[0].count, 42);
}
