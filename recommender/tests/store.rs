//! The SQLite store on a real database file: exactly-once commits, aggregation, persistence,
//! migrations, retention, sorted output and errors that name the file.

use std::collections::BTreeSet;
use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use leash::evidence::PodNames;
use leash::store::sqlite::{MIGRATIONS, schema_version};
use leash::store::{
    BatchCommit, BatchId, Commit, DnsObservation, Error, FlowObservation, SqliteStore, Store,
    WorkloadRef,
};
use leash_records::Protocol;
use leash_records::error::Chain;

fn t(s: &str) -> DateTime<Utc> {
    s.parse().expect("test time")
}

fn wl(ns: &str, kind: &str, name: &str) -> WorkloadRef {
    WorkloadRef {
        namespace: ns.into(),
        kind: kind.into(),
        name: name.into(),
    }
}

fn id(node: &str, seq: u64) -> BatchId {
    BatchId {
        node: node.into(),
        boot_id: "boot-1".into(),
        seq,
    }
}

#[expect(clippy::too_many_arguments, reason = "one observation in one call")]
fn flow(
    w: &WorkloadRef,
    dst: &str,
    port: u16,
    count: u64,
    first: &str,
    last: &str,
    names: &[&str],
    outcome: (u64, u64),
) -> FlowObservation {
    FlowObservation {
        workload: w.clone(),
        protocol: Protocol::Tcp,
        dst: dst.parse().expect("test address"),
        port,
        count,
        first_seen: t(first),
        last_seen: t(last),
        names: names.iter().map(|n| (*n).to_owned()).collect(),
        pods: Default::default(),
        established: outcome.0,
        failed: outcome.1,
    }
}

fn dns(
    w: &WorkloadRef,
    query: &str,
    count: u64,
    at: &str,
    resolved: &[(&str, &str)],
) -> DnsObservation {
    DnsObservation {
        workload: w.clone(),
        server: "10.96.0.10".parse().expect("test address"),
        query: query.into(),
        count,
        first_seen: t(at),
        last_seen: t(at),
        resolved: resolved
            .iter()
            .map(|(n, ip)| ((*n).to_owned(), ip.parse::<IpAddr>().expect("test address")))
            .collect(),
        addresses: Default::default(),
    }
}

fn open(dir: &tempfile::TempDir) -> SqliteStore {
    SqliteStore::open(dir.path().join("leash.db")).expect("store opens")
}

#[test]
fn a_batch_committed_twice_counts_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let api = wl("shop", "Deployment", "api");
    let f = [flow(
        &api,
        "203.0.113.7",
        443,
        5,
        "2026-11-20T00:00:00Z",
        "2026-11-20T01:00:00Z",
        &["pay.test"],
        (2, 1),
    )];
    let d = [dns(
        &api,
        "pay.test",
        3,
        "2026-11-20T00:00:00Z",
        &[("pay.test", "203.0.113.7")],
    )];
    assert_eq!(
        store.commit(&id("n1", 1), &f, &d).expect("commit"),
        Commit::Stored
    );
    assert_eq!(
        store.commit(&id("n1", 1), &f, &d).expect("commit"),
        Commit::Duplicate
    );
    // The same sequence number from another boot or node is another batch.
    let other_boot = BatchId {
        boot_id: "boot-2".into(),
        ..id("n1", 1)
    };
    assert_eq!(
        store.commit(&other_boot, &f, &[]).expect("commit"),
        Commit::Stored
    );
    assert_eq!(
        store.commit(&id("n2", 1), &f, &[]).expect("commit"),
        Commit::Stored
    );
    assert_eq!(
        store.commit(&id("n2", 1), &f, &d).expect("commit"),
        Commit::Duplicate
    );

    let flows = store.flows(None).expect("flows");
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].count, 15, "three distinct batches of 5");
    assert_eq!((flows[0].established, flows[0].failed), (6, 3));
    let dnss = store.dns(None).expect("dns");
    assert_eq!(dnss.len(), 1);
    assert_eq!(
        dnss[0].count, 3,
        "the duplicate's DNS answers were not added"
    );
    assert!(store.has_batch(&id("n1", 1)).expect("lookup"));
    assert!(!store.has_batch(&id("n1", 2)).expect("lookup"));
}

#[test]
fn observations_merge_counts_times_names_and_answers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let api = wl("shop", "Deployment", "api");
    store
        .commit(
            &id("n1", 1),
            &[flow(
                &api,
                "203.0.113.7",
                443,
                5,
                "2026-11-20T10:00:00Z",
                "2026-11-20T11:00:00Z",
                &["a.test"],
                (1, 0),
            )],
            &[dns(
                &api,
                "a.test",
                1,
                "2026-11-20T10:00:00Z",
                &[("a.test", "203.0.113.7")],
            )],
        )
        .expect("commit");
    store
        .commit(
            &id("n1", 2),
            &[flow(
                &api,
                "203.0.113.7",
                443,
                7,
                "2026-11-20T09:00:00.000000001Z",
                "2026-11-20T10:30:00Z",
                &["b.test", "a.test"],
                (0, 4),
            )],
            &[dns(
                &api,
                "a.test",
                2,
                "2026-11-21T10:00:00Z",
                &[("edge.a.test", "203.0.113.8")],
            )],
        )
        .expect("commit");
    let flows = store.flows(None).expect("flows");
    assert_eq!(flows.len(), 1);
    let f = &flows[0];
    assert_eq!(f.count, 12);
    assert_eq!(
        f.first_seen,
        t("2026-11-20T09:00:00.000000001Z"),
        "nanoseconds survive"
    );
    assert_eq!(f.last_seen, t("2026-11-20T11:00:00Z"));
    assert_eq!(
        f.names,
        BTreeSet::from(["a.test".to_owned(), "b.test".to_owned()])
    );
    assert_eq!((f.established, f.failed), (1, 4));
    let d = &store.dns(None).expect("dns")[0];
    assert_eq!(d.count, 3);
    assert_eq!(
        (d.first_seen, d.last_seen),
        (t("2026-11-20T10:00:00Z"), t("2026-11-21T10:00:00Z"))
    );
    assert_eq!(
        d.resolved,
        BTreeSet::from([
            ("a.test".to_owned(), "203.0.113.7".parse().expect("ip")),
            ("edge.a.test".to_owned(), "203.0.113.8".parse().expect("ip")),
        ])
    );
}

#[test]
fn observations_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let api = wl("shop", "Deployment", "api");
    let node = wl("", "Node", "n1");
    let f = [
        flow(
            &api,
            "2001:db8::7",
            443,
            5,
            "2026-11-20T00:00:00Z",
            "2026-11-20T01:00:00Z",
            &[],
            (0, 0),
        ),
        flow(
            &node,
            "198.51.100.1",
            22,
            1,
            "2026-11-20T00:00:00Z",
            "2026-11-20T00:00:00Z",
            &[],
            (0, 0),
        ),
    ];
    let d = [dns(&api, "x.test", 1, "2026-11-20T00:00:00Z", &[])];
    let (before_f, before_d) = {
        let store = open(&dir);
        store.commit(&id("n1", 9), &f, &d).expect("commit");
        (
            store.flows(None).expect("flows"),
            store.dns(None).expect("dns"),
        )
    };
    let store = open(&dir);
    assert_eq!(store.flows(None).expect("flows"), before_f);
    assert_eq!(store.dns(None).expect("dns"), before_d);
    assert_eq!(before_f.len(), 2);
    // The batch id persisted too: a resend after a restart is still a duplicate.
    assert_eq!(
        store.commit(&id("n1", 9), &f, &d).expect("commit"),
        Commit::Duplicate
    );
    assert_eq!(store.flows(None).expect("flows"), before_f);
}

#[test]
fn output_is_sorted_by_workload_destination_port_protocol() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let a = wl("a", "Deployment", "z");
    let b = wl("b", "Deployment", "a");
    let mut udp = flow(
        &a,
        "10.0.0.1",
        53,
        1,
        "2026-11-20T00:00:00Z",
        "2026-11-20T00:00:00Z",
        &[],
        (0, 0),
    );
    udp.protocol = Protocol::Udp;
    let mut input = vec![
        flow(
            &b,
            "10.0.0.1",
            80,
            1,
            "2026-11-20T00:00:00Z",
            "2026-11-20T00:00:00Z",
            &[],
            (0, 0),
        ),
        flow(
            &a,
            "2001:db8::1",
            80,
            1,
            "2026-11-20T00:00:00Z",
            "2026-11-20T00:00:00Z",
            &[],
            (0, 0),
        ),
        flow(
            &a,
            "10.0.0.2",
            80,
            1,
            "2026-11-20T00:00:00Z",
            "2026-11-20T00:00:00Z",
            &[],
            (0, 0),
        ),
        flow(
            &a,
            "10.0.0.1",
            443,
            1,
            "2026-11-20T00:00:00Z",
            "2026-11-20T00:00:00Z",
            &[],
            (0, 0),
        ),
        flow(
            &a,
            "10.0.0.1",
            53,
            1,
            "2026-11-20T00:00:00Z",
            "2026-11-20T00:00:00Z",
            &[],
            (0, 0),
        ),
        udp,
        flow(
            &wl("a", "CronJob", "z"),
            "10.0.0.9",
            1,
            1,
            "2026-11-20T00:00:00Z",
            "2026-11-20T00:00:00Z",
            &[],
            (0, 0),
        ),
    ];
    // Commit in an order unlike the sorted one.
    input.reverse();
    store.commit(&id("n1", 1), &input, &[]).expect("commit");
    let got: Vec<_> = store
        .flows(None)
        .expect("flows")
        .into_iter()
        .map(|f| (f.workload, f.dst, f.port, f.protocol))
        .collect();
    let mut want: Vec<_> = input
        .iter()
        .map(|f| (f.workload.clone(), f.dst, f.port, f.protocol))
        .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(got[0].0, wl("a", "CronJob", "z"));
    assert_eq!(
        (got[1].2, got[1].3, got[2].3),
        (53, Protocol::Tcp, Protocol::Udp)
    );
    assert!(
        got[4].1.is_ipv4() && got[5].1.is_ipv6(),
        "IPv4 sorts before IPv6 within a workload"
    );

    let d = [
        dns(&b, "b.test", 1, "2026-11-20T00:00:00Z", &[]),
        dns(&a, "z.test", 1, "2026-11-20T00:00:00Z", &[]),
        dns(&a, "a.test", 1, "2026-11-20T00:00:00Z", &[]),
    ];
    store.commit(&id("n1", 2), &[], &d).expect("commit");
    let q: Vec<_> = store
        .dns(None)
        .expect("dns")
        .into_iter()
        .map(|d| d.query)
        .collect();
    assert_eq!(q, ["a.test", "z.test", "b.test"]);
}

#[test]
fn since_and_prune_use_last_seen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let api = wl("shop", "Deployment", "api");
    let old = flow(
        &api,
        "203.0.113.1",
        443,
        1,
        "2026-10-01T00:00:00Z",
        "2026-10-02T00:00:00Z",
        &["old.test"],
        (0, 0),
    );
    let new = flow(
        &api,
        "203.0.113.2",
        443,
        1,
        "2026-10-01T00:00:00Z",
        "2026-11-20T00:00:00Z",
        &["new.test"],
        (0, 0),
    );
    let d_old = dns(
        &api,
        "old.test",
        1,
        "2026-10-01T00:00:00Z",
        &[("old.test", "203.0.113.1")],
    );
    let d_new = dns(
        &api,
        "new.test",
        1,
        "2026-11-20T00:00:00Z",
        &[("new.test", "203.0.113.2")],
    );
    store
        .commit(
            &id("n1", 1),
            &[old.clone(), new.clone()],
            &[d_old, d_new.clone()],
        )
        .expect("commit");

    let cut = t("2026-11-01T00:00:00Z");
    assert_eq!(store.flows(Some(cut)).expect("flows"), vec![new.clone()]);
    assert_eq!(store.dns(Some(cut)).expect("dns"), vec![d_new.clone()]);
    assert_eq!(store.flows(None).expect("flows").len(), 2);
    // At exactly last_seen the observation is kept ("at or after").
    assert_eq!(store.flows(Some(new.last_seen)).expect("flows").len(), 1);

    assert_eq!(
        store.prune(cut).expect("prune"),
        2,
        "one flow and one DNS observation"
    );
    assert_eq!(store.flows(None).expect("flows"), vec![new]);
    assert_eq!(store.dns(None).expect("dns"), vec![d_new]);
    // A key seen again after pruning starts afresh, without the pruned names.
    let again = flow(
        &api,
        "203.0.113.1",
        443,
        4,
        "2026-11-21T00:00:00Z",
        "2026-11-21T00:00:00Z",
        &[],
        (0, 0),
    );
    store
        .commit(&id("n1", 2), std::slice::from_ref(&again), &[])
        .expect("commit");
    let flows = store.flows(None).expect("flows");
    assert_eq!(flows[0], again);

    // Batch ids committed before the cut go too (they were committed "now", so a cut in the
    // future removes them and the same id is new again).
    store.prune(Utc::now() + Duration::days(1)).expect("prune");
    assert!(!store.has_batch(&id("n1", 1)).expect("lookup"));
    assert!(store.flows(None).expect("flows").is_empty());
}

#[test]
fn a_version_1_database_is_migrated_with_its_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v1.db");
    {
        // A database as the first schema version wrote it.
        let conn = rusqlite::Connection::open(&path).expect("sqlite");
        conn.execute_batch(MIGRATIONS[0].sql).expect("v1 schema");
        conn.pragma_update(None, "user_version", 1)
            .expect("version");
        conn.execute(
            "INSERT INTO workloads (id, namespace, kind, name) VALUES (1, 'shop', 'Deployment', 'api')",
            [],
        )
        .expect("insert");
        conn.execute(
            "INSERT INTO flows VALUES (1, X'CB007107', 443, 6, 3, 1000000000, 2000000000, 0, 0)",
            [],
        )
        .expect("insert");
        conn.execute("INSERT INTO batches VALUES ('n1', 'boot-1', 1, 5)", [])
            .expect("insert");
    }
    let store = SqliteStore::open(&path).expect("migrates");
    assert!(
        schema_version() >= 2,
        "there is a migration after version 1"
    );
    assert_eq!(store.version().expect("version"), schema_version());
    let flows = store.flows(None).expect("flows");
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].workload, wl("shop", "Deployment", "api"));
    assert_eq!(flows[0].dst, "203.0.113.7".parse::<IpAddr>().expect("ip"));
    assert_eq!((flows[0].port, flows[0].count), (443, 3));
    assert_eq!(
        flows[0].first_seen,
        DateTime::from_timestamp(1, 0).expect("time")
    );
    // The migration's index exists, and the old batch id still deduplicates.
    assert_eq!(
        store.commit(&id("n1", 1), &flows, &[]).expect("commit"),
        Commit::Duplicate
    );
    drop(store);
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    let index: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = 'batches_committed_at'",
            [],
            |r| r.get(0),
        )
        .expect("query");
    assert_eq!(index, 1);
}

#[test]
fn a_database_from_a_newer_leash_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("future.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("sqlite");
        conn.pragma_update(None, "user_version", 99)
            .expect("version");
    }
    let err = SqliteStore::open(&path).expect_err("refused");
    assert!(
        matches!(err, Error::NewerSchema { found: 99, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory where the file should be.
    let err = SqliteStore::open(dir.path()).expect_err("a directory is no database");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    assert!(matches!(err, Error::Open { .. }), "{err:?}");

    // A file that is not a database.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 8192]).expect("write");
    let err = SqliteStore::open(&junk).expect_err("not a database");
    // As a person sees it: the message, then its cause.
    let msg = Chain(&err).to_string();
    assert!(msg.contains(&junk.display().to_string()), "{msg}");
    assert!(msg.contains("not a database"), "{msg}");

    // A parent that cannot be created (a file in the way).
    let blocked = junk.join("sub/leash.db");
    let err = SqliteStore::open(&blocked).expect_err("parent is a file");
    assert!(matches!(err, Error::CreateDir { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&junk.display().to_string()),
        "{err}"
    );
}

#[test]
fn the_parent_directory_is_created() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("var/lib/leash/leash.db");
    let store = SqliteStore::open(&path).expect("opens");
    assert_eq!(store.path(), path);
    assert!(path.is_file());
    let mode: String = rusqlite::Connection::open(&path)
        .expect("sqlite")
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("query");
    assert_eq!(mode, "wal");
}

#[test]
fn unstorable_times_are_errors_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let api = wl("shop", "Deployment", "api");
    let mut f = flow(
        &api,
        "203.0.113.7",
        443,
        5,
        "2026-11-20T00:00:00Z",
        "2026-11-20T01:00:00Z",
        &[],
        (0, 0),
    );
    f.last_seen = t("2500-01-01T00:00:00Z");
    let err = store
        .commit(&id("n1", 1), &[f], &[])
        .expect_err("year 2500");
    assert!(matches!(err, Error::TimeOutOfRange { .. }), "{err:?}");
    // Rolled back: the batch id is not taken, nothing was stored.
    assert!(!store.has_batch(&id("n1", 1)).expect("lookup"));
    assert!(store.flows(None).expect("flows").is_empty());
}

#[test]
fn a_group_commit_applies_each_batch_once_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let api = wl("shop", "Deployment", "api");
    let at = |count, dst: &str| {
        flow(
            &api,
            dst,
            443,
            count,
            "2026-11-20T00:00:00Z",
            "2026-11-20T01:00:00Z",
            &["api.stripe.test"],
            (count, 0),
        )
    };
    let one = [at(1, "203.0.113.7")];
    let two = [at(2, "203.0.113.7"), at(20, "203.0.113.8")];
    let four = [at(4, "203.0.113.7")];
    let eight = [at(8, "203.0.113.7")];
    assert_eq!(
        store.commit(&id("n1", 1), &one, &[]).expect("commit"),
        Commit::Stored
    );
    let (n1_1, n1_2, n2_1) = (id("n1", 1), id("n1", 2), id("n2", 1));
    let group = [
        // Already stored before the group.
        BatchCommit {
            id: &n1_1,
            flows: &eight,
            dns: &[],
        },
        BatchCommit {
            id: &n1_2,
            flows: &two,
            dns: &[],
        },
        BatchCommit {
            id: &n2_1,
            flows: &four,
            dns: &[],
        },
        // The same id twice in one group (an agent that resent on a new stream).
        BatchCommit {
            id: &n1_2,
            flows: &eight,
            dns: &[],
        },
    ];
    assert_eq!(
        store.commit_many(&group).expect("group commit"),
        [
            Commit::Duplicate,
            Commit::Stored,
            Commit::Stored,
            Commit::Duplicate
        ]
    );
    let flows = store.flows(None).expect("flows");
    let counts: Vec<(String, u64, u64)> = flows
        .iter()
        .map(|f| (f.dst.to_string(), f.count, f.established))
        .collect();
    assert_eq!(
        counts,
        [
            ("203.0.113.7".to_owned(), 1 + 2 + 4, 1 + 2 + 4),
            ("203.0.113.8".to_owned(), 20, 20)
        ]
    );
    // A group of nothing but stored ids changes nothing.
    assert_eq!(
        store.commit_many(&group[..1]).expect("group commit"),
        [Commit::Duplicate]
    );
    assert_eq!(store.flows(None).expect("flows"), flows);
}

#[test]
fn a_failing_group_commit_stores_none_of_its_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let api = wl("shop", "Deployment", "api");
    let good = [flow(
        &api,
        "203.0.113.7",
        443,
        5,
        "2026-11-20T00:00:00Z",
        "2026-11-20T01:00:00Z",
        &[],
        (0, 0),
    )];
    let mut bad = good.clone();
    bad[0].last_seen = t("2500-01-01T00:00:00Z");
    let (a, b) = (id("n1", 1), id("n2", 1));
    let err = store
        .commit_many(&[
            BatchCommit {
                id: &a,
                flows: &good,
                dns: &[],
            },
            BatchCommit {
                id: &b,
                flows: &bad,
                dns: &[],
            },
        ])
        .expect_err("year 2500");
    assert!(matches!(err, Error::TimeOutOfRange { .. }), "{err:?}");
    assert!(!store.has_batch(&a).expect("lookup"));
    assert!(!store.has_batch(&b).expect("lookup"));
    assert!(store.flows(None).expect("flows").is_empty());
    // The good batch alone still goes in: the failed group left nothing behind.
    assert_eq!(
        store.commit(&a, &good, &[]).expect("commit"),
        Commit::Stored
    );
    assert_eq!(store.flows(None).expect("flows")[0].count, 5);
}

#[test]
fn counts_saturate_instead_of_wrapping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let api = wl("shop", "Deployment", "api");
    let f = flow(
        &api,
        "203.0.113.7",
        443,
        u64::MAX,
        "2026-11-20T00:00:00Z",
        "2026-11-20T01:00:00Z",
        &[],
        (0, 0),
    );
    store
        .commit(&id("n1", 1), std::slice::from_ref(&f), &[])
        .expect("commit");
    store.commit(&id("n1", 2), &[f], &[]).expect("commit");
    assert_eq!(store.flows(None).expect("flows")[0].count, i64::MAX as u64);
}

#[test]
fn the_store_is_shared_across_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = std::sync::Arc::new(open(&dir));
    let api = wl("shop", "Deployment", "api");
    let handles: Vec<_> = (0..4u64)
        .map(|node| {
            let store = store.clone();
            let api = api.clone();
            std::thread::spawn(move || {
                for seq in 0..25 {
                    let f = flow(
                        &api,
                        "203.0.113.7",
                        443,
                        1,
                        "2026-11-20T00:00:00Z",
                        "2026-11-20T01:00:00Z",
                        &[],
                        (0, 0),
                    );
                    store
                        .commit(&id(&format!("n{node}"), seq), &[f], &[])
                        .expect("commit");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    assert_eq!(store.flows(None).expect("flows")[0].count, 100);
}

fn with_pods(names: &[&str], more: u64) -> FlowObservation {
    let mut f = flow(
        &wl("shop", "Deployment", "api"),
        "203.0.113.7",
        443,
        1,
        "2026-11-20T00:00:00Z",
        "2026-11-20T00:00:00Z",
        &[],
        (0, 0),
    );
    f.pods = PodNames {
        names: names.iter().map(|n| (*n).to_owned()).collect(),
        more,
    };
    f
}

fn stored_pods(store: &SqliteStore) -> PodNames {
    let flows = store.flows(None).expect("flows");
    assert_eq!(flows.len(), 1);
    flows[0].pods.clone()
}

/// README (`leash recommend --store`): the pods that made a flow are stored with it, at most
/// `PodNames::MAX` by name and the others counted, at least as many as one batch proves.
#[test]
fn pods_are_stored_bounded_and_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&dir);
    let named =
        |names: &[&str]| -> BTreeSet<String> { names.iter().map(|n| (*n).to_owned()).collect() };
    store
        .commit(
            &id("n1", 1),
            &[with_pods(&["p0", "p1", "p2", "p3", "p4", "p5"], 0)],
            &[],
        )
        .expect("commit");
    assert_eq!(
        stored_pods(&store),
        PodNames {
            names: named(&["p0", "p1", "p2", "p3", "p4", "p5"]),
            more: 0
        }
    );
    // Two more fit; p8 and p9 are counted: p0 to p9 are ten pods.
    store
        .commit(
            &id("n2", 1),
            &[with_pods(&["p0", "p6", "p7", "p8", "p9"], 0)],
            &[],
        )
        .expect("commit");
    let full = PodNames {
        names: named(&["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"]),
        more: 2,
    };
    assert_eq!(stored_pods(&store), full);
    // The same pods again prove nothing new.
    store
        .commit(&id("n3", 1), &[with_pods(&["p8", "p9"], 0)], &[])
        .expect("commit");
    assert_eq!(stored_pods(&store), full);
    // A batch that itself counted pods past its names proves that many.
    store
        .commit(&id("n4", 1), &[with_pods(&["p0"], 14)], &[])
        .expect("commit");
    assert_eq!(
        stored_pods(&store),
        PodNames {
            more: 7,
            ..full.clone()
        }
    );
    // Reopened, the same; pruned, the pods go with their flow.
    drop(store);
    let store = open(&dir);
    assert_eq!(stored_pods(&store).more, 7);
    assert_eq!(store.prune(t("2027-01-01T00:00:00Z")).expect("prune"), 1);
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join("leash.db")).expect("sqlite");
    let (links, names): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM flow_pods), (SELECT count(*) FROM names)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("query");
    assert_eq!((links, names), (0, 0));
}

/// A store written before pods were stored (schema version 2) opens: its flows name no pods,
/// and later commits add them.
#[test]
fn a_version_2_database_gains_the_pods_of_new_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v2.db");
    {
        let conn = rusqlite::Connection::open(&path).expect("sqlite");
        for m in &MIGRATIONS[..2] {
            conn.execute_batch(m.sql).expect("old schema");
        }
        conn.pragma_update(None, "user_version", 2)
            .expect("version");
        conn.execute(
            "INSERT INTO workloads (id, namespace, kind, name) VALUES (1, 'shop', 'Deployment', 'api')",
            [],
        )
        .expect("insert");
        conn.execute(
            "INSERT INTO flows VALUES (1, X'CB007107', 443, 6, 3, 1000000000, 2000000000, 0, 0)",
            [],
        )
        .expect("insert");
    }
    let store = SqliteStore::open(&path).expect("migrates");
    assert_eq!(store.version().expect("version"), schema_version());
    assert_eq!(stored_pods(&store), PodNames::default());
    store
        .commit(&id("n1", 1), &[with_pods(&["p0", "p1"], 0)], &[])
        .expect("commit");
    let flows = store.flows(None).expect("flows");
    assert_eq!(flows[0].count, 4);
    assert_eq!(
        flows[0].pods,
        PodNames {
            names: BTreeSet::from(["p0".to_owned(), "p1".to_owned()]),
            more: 0
        }
    );
}
