//! The PostgreSQL store's write path against a real server (`support::postgres`; skipped
//! when PostgreSQL is not installed, unless `LEASH_REQUIRE_PRIVILEGED=1`):
//!
//! - a group commit stores what committing its batches one by one stores (the group's rows
//!   are merged into one set of statements), on PostgreSQL and on SQLite, pods past the
//!   bound, names, DNS answers and address history included;
//! - migration 2 on a database of version 1: data kept, the `last_seen` indexes gone, and
//!   an ingest update of a stored flow is HOT.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use leash::evidence::PodNames;
use leash::store::{
    AddressSeen, BatchCommit, BatchId, Commit, DnsObservation, FlowObservation, Location,
    PostgresStore, SqliteStore, Store, WorkloadRef, postgres::schema,
};
use leash_records::Protocol;
use leash_records::error::Chain;

fn t(secs: u64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_790_000_000 + i64::try_from(secs).expect("small"), 0)
        .expect("test time")
}

fn connect(url: &str) -> PostgresStore {
    let Ok(Location::Postgres(url)) = url.parse::<Location>() else {
        panic!("not a PostgreSQL URL: {url}")
    };
    PostgresStore::connect(&url).unwrap_or_else(|e| panic!("connect: {}", Chain(&e)))
}

/// A small deterministic generator (no dependency on a random crate's stream).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

/// Batch `b`: flows of some of 3 workloads to 4 destinations, naming pods from 14 (past the bound of
/// 8), with names; DNS queries with answers and address sightings.
fn batch(rng: &mut Lcg, b: u64) -> (Vec<FlowObservation>, Vec<DnsObservation>) {
    let workloads: Vec<WorkloadRef> = ["api", "web", "db"]
        .iter()
        .map(|n| WorkloadRef {
            namespace: "shop".into(),
            kind: "Deployment".into(),
            name: (*n).into(),
        })
        .collect();
    let mut flows = Vec::new();
    // One row per key, as a batch's observations are (aggregated by key).
    for (w, d) in workloads.iter().flat_map(|w| (0..4).map(move |d| (w, d))) {
        if rng.next(2) == 0 {
            continue;
        }
        let dst: IpAddr = format!("203.0.113.{}", 10 + d).parse().expect("address");
        let pods: BTreeSet<String> = (0..rng.next(6))
            .map(|_| format!("{}-{:02}", w.name, rng.next(14)))
            .collect();
        let names: BTreeSet<String> = (0..rng.next(3))
            .map(|_| format!("svc-{}.example.test", rng.next(5)))
            .collect();
        let count = 1 + rng.next(5);
        flows.push(FlowObservation {
            workload: w.clone(),
            protocol: if d == 3 { Protocol::Udp } else { Protocol::Tcp },
            dst,
            port: 443,
            count,
            first_seen: t(b * 10 + rng.next(5)),
            last_seen: t(b * 10 + 5 + rng.next(5)),
            names,
            pods: PodNames {
                names: pods,
                more: rng.next(3),
            },
            established: count,
            failed: rng.next(2),
        });
    }
    let mut dns = Vec::new();
    for (w, q) in workloads.iter().flat_map(|w| (0..3).map(move |q| (w, q))) {
        if rng.next(3) != 0 {
            continue;
        }
        let q = format!("svc-{q}.example.test");
        let mut o = DnsObservation {
            workload: w.clone(),
            server: "198.51.100.53".parse().expect("address"),
            query: q.clone(),
            count: 1 + rng.next(3),
            first_seen: t(b * 10),
            last_seen: t(b * 10 + rng.next(9)),
            resolved: Default::default(),
            addresses: Default::default(),
        };
        for _ in 0..rng.next(3) {
            let a: IpAddr = format!("198.51.100.{}", 1 + rng.next(4))
                .parse()
                .expect("address");
            o.resolved.insert((q.clone(), a));
            o.addresses.insert(
                a,
                AddressSeen {
                    first_seen: t(b * 10 + rng.next(3)),
                    last_seen: t(b * 10 + 3 + rng.next(3)),
                    ttl: u32::try_from(rng.next(3) * 30).expect("small"),
                    chain: (0..rng.next(2))
                        .map(|i| format!("c{i}.example.test"))
                        .collect(),
                },
            );
        }
        dns.push(o);
    }
    (flows, dns)
}

fn id(seq: u64) -> BatchId {
    BatchId {
        node: "node-1".into(),
        boot_id: "boot-1".into(),
        seq,
    }
}

#[test]
fn a_group_stores_what_its_batches_store_one_by_one() {
    let Some(pg) = support::postgres::postgres_or_skip() else {
        return;
    };
    let mut rng = Lcg(17);
    let batches: Vec<(BatchId, Vec<FlowObservation>, Vec<DnsObservation>)> = (1..=24)
        .map(|b| {
            let (f, d) = batch(&mut rng, b);
            (id(b), f, d)
        })
        .collect();
    let grouped = connect(&pg.create_database("grouped"));
    let one_by_one = connect(&pg.create_database("one_by_one"));
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = SqliteStore::open(dir.path().join("leash.db")).expect("sqlite");
    for (id, f, d) in &batches {
        for store in [&one_by_one as &dyn Store, &sqlite] {
            assert_eq!(store.commit(id, f, d).expect("commit"), Commit::Stored);
        }
    }
    // Groups of 1 to 7 batches, each with a batch already stored and one given twice.
    let mut start = 0;
    for size in [1usize, 3, 7, 5, 2, 6] {
        let end = (start + size).min(batches.len());
        let mut group: Vec<BatchCommit<'_>> = batches[start..end]
            .iter()
            .map(|(id, flows, dns)| BatchCommit { id, flows, dns })
            .collect();
        let mut expected = vec![Commit::Stored; group.len()];
        if let Some(first) = group.first().map(|b| BatchCommit { ..*b }) {
            group.push(first);
            expected.push(Commit::Duplicate);
        }
        if start > 0 {
            let (id, flows, dns) = &batches[start - 1];
            group.insert(1.min(group.len()), BatchCommit { id, flows, dns });
            expected.insert(1.min(expected.len()), Commit::Duplicate);
        }
        assert_eq!(grouped.commit_many(&group).expect("group"), expected);
        start = end;
    }
    assert_eq!(start, batches.len());
    let flows = grouped.flows(None).expect("flows");
    assert!(
        flows
            .iter()
            .any(|f| f.pods.names.len() == PodNames::MAX && f.pods.more > 0),
        "the data fills some flow's pods past the bound"
    );
    assert_eq!(
        one_by_one.flows(None).expect("flows"),
        sqlite.flows(None).expect("flows")
    );
    assert_eq!(flows, one_by_one.flows(None).expect("flows"));
    let dns = grouped.dns(None).expect("dns");
    assert!(dns.iter().any(|d| !d.addresses.is_empty()));
    assert_eq!(dns, one_by_one.dns(None).expect("dns"));
    assert_eq!(dns, sqlite.dns(None).expect("dns"));
    assert_eq!(
        pg.psql("grouped", "SELECT count(*) FROM batches"),
        batches.len().to_string()
    );
}

#[test]
fn migration_2_keeps_version_1_data_and_makes_ingest_updates_hot() {
    let Some(pg) = support::postgres::postgres_or_skip() else {
        return;
    };
    let url = pg.create_database("v1");
    // A database as a version-1 leash left it, with a flow.
    let v1 = schema::MIGRATIONS.first().expect("version 1");
    pg.psql("v1", schema::CREATE_VERSIONS);
    pg.psql("v1", v1.sql);
    pg.psql(
        "v1",
        "INSERT INTO leash_schema (version, description) VALUES (1, 'v1');
         INSERT INTO flows VALUES ('shop', 'Deployment', 'api', '203.0.113.7', 443, 6, 5,
             1790000000000000000, 1790000010000000000, 5, 0, 0)",
    );
    // Two replicas start at once: each migration is applied once.
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| connect(&url));
        let b = s.spawn(|| connect(&url));
        (a.join().expect("a"), b.join().expect("b"))
    });
    assert_eq!(a.version().expect("version"), schema::schema_version());
    assert_eq!(
        pg.psql(
            "v1",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM leash_schema"
        ),
        "1,2"
    );
    assert_eq!(
        pg.psql(
            "v1",
            "SELECT count(*) FROM pg_indexes WHERE indexname LIKE '%last_seen'"
        ),
        "1",
        "only alerts_last_seen is left"
    );
    assert_eq!(
        pg.psql(
            "v1",
            "SELECT reloptions::text FROM pg_class WHERE relname = 'flows'"
        ),
        "{fillfactor=70}"
    );
    let before = a.flows(None).expect("flows");
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].count, 5);
    drop(b);
    // Updates of the stored flow (each changes last_seen) are heap-only.
    let mut f = before[0].clone();
    for seq in 1..=3 {
        f.count = 1;
        f.last_seen = t(100 + seq);
        f.first_seen = f.last_seen;
        a.commit(&id(seq), std::slice::from_ref(&f), &[])
            .expect("commit");
    }
    let after = a.flows(None).expect("flows");
    assert_eq!(after[0].count, 8);
    assert_eq!(after[0].last_seen, t(103));
    // Statistics reach the collector when the writer's backend goes idle (within seconds).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let hot = pg.psql(
            "v1",
            "SELECT n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'flows'",
        );
        if hot == "3" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "HOT updates of flows: {hot}, not 3"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
