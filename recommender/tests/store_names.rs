//! The address history of DNS names in the SQLite store: kept across reopening, merged as
//! `AddressSeen::merge` merges (across batches and group commits), pruned by retention,
//! migrated from the previous schema, refused when corrupt, and carried into the engine's
//! observations.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use leash::observations::{self, History, merge_seen};
use leash::store::sqlite::{MIGRATIONS, schema_version};
use leash::store::{
    AddressSeen, BatchCommit, BatchId, Commit, DnsObservation, Error, SqliteStore, Store,
    WorkloadRef,
};
use proptest::prelude::*;
use support::recommend::Fx;

fn t0() -> DateTime<Utc> {
    "2026-11-20T00:00:00Z".parse().expect("test time")
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + Duration::seconds(secs)
}

fn wl(name: &str) -> WorkloadRef {
    WorkloadRef {
        namespace: "shop".into(),
        kind: "Deployment".into(),
        name: name.into(),
    }
}

fn id(seq: u64) -> BatchId {
    BatchId {
        node: "n1".into(),
        boot_id: "boot-1".into(),
        seq,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn seen(first: i64, last: i64, ttl: u32, chain: &[&str]) -> AddressSeen {
    AddressSeen {
        first_seen: at(first),
        last_seen: at(last),
        ttl,
        chain: chain.iter().map(|n| (*n).to_owned()).collect(),
    }
}

/// One DNS observation of `api` asking `query`, with `addresses`; its times span theirs.
fn dns(query: &str, addresses: &[(&str, AddressSeen)]) -> DnsObservation {
    let first = addresses.iter().map(|(_, s)| s.first_seen).min();
    let last = addresses.iter().map(|(_, s)| s.last_seen).max();
    DnsObservation {
        workload: wl("api"),
        server: ip("10.96.0.10"),
        query: query.into(),
        count: 1,
        first_seen: first.unwrap_or_else(t0),
        last_seen: last.unwrap_or_else(t0),
        resolved: addresses
            .iter()
            .map(|(a, _)| (query.to_owned(), ip(a)))
            .collect(),
        addresses: addresses.iter().map(|(a, s)| (ip(a), s.clone())).collect(),
    }
}

fn history(store: &dyn Store, query: &str) -> History {
    store
        .dns(None)
        .expect("reads")
        .into_iter()
        .filter(|d| d.query == query)
        .flat_map(|d| d.addresses)
        .collect()
}

#[test]
fn the_history_survives_closing_and_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("leash.db");
    let want: History = [
        (ip("203.0.113.10"), seen(0, 60, 30, &[])),
        (
            ip("2001:db8::10"),
            seen(10, 20, 300, &["edge.cdn.test", "a.edge.cdn.test"]),
        ),
    ]
    .into();
    {
        let store = SqliteStore::open(&path).expect("opens");
        let d = dns(
            "api.stripe.test",
            &[
                ("203.0.113.10", seen(0, 60, 30, &[])),
                (
                    "2001:db8::10",
                    seen(10, 20, 300, &["edge.cdn.test", "a.edge.cdn.test"]),
                ),
            ],
        );
        assert_eq!(
            store.commit(&id(1), &[], &[d]).expect("commits"),
            Commit::Stored
        );
    }
    let store = SqliteStore::open_existing(&path).expect("reopens");
    assert_eq!(history(&store, "api.stripe.test"), want);
    // The scoped read fills them alike.
    let scoped = store
        .dns_in(&leash::store::Scope::default(), usize::MAX)
        .expect("reads");
    assert_eq!(scoped[0].addresses, want);
}

/// The merge in SQL is `AddressSeen::merge`: the widest times, the TTL and chain of the later
/// sighting, and on equal last seen the larger (TTL, chain), chains compared as lists (a
/// chain that is a prefix of another is the smaller).
#[test]
fn commits_merge_addresses_as_address_seen_merge_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path().join("leash.db")).expect("opens");
    let a = "203.0.113.10";
    let sightings = [
        seen(100, 200, 60, &["x.cdn.test"]),
        // Older: only widens the first seen.
        seen(50, 150, 999, &["z.cdn.test"]),
        // Same last seen, smaller TTL: the chain stays.
        seen(120, 200, 30, &["zz.cdn.test"]),
        // Same last seen and TTL, a longer chain with the stored one as its prefix: larger.
        seen(130, 200, 60, &["x.cdn.test", "y.cdn.test"]),
        // Same last seen and TTL, a chain that sorts before: smaller.
        seen(130, 200, 60, &["a.cdn.test", "z.cdn.test"]),
    ];
    let mut model = History::new();
    for (i, s) in sightings.iter().enumerate() {
        store
            .commit(&id(i as u64), &[], &[dns("api.test", &[(a, s.clone())])])
            .expect("commits");
        merge_seen(&mut model, ip(a), s);
        assert_eq!(history(&store, "api.test"), model, "after sighting {i}");
    }
    assert_eq!(
        model[&ip(a)],
        seen(50, 200, 60, &["x.cdn.test", "y.cdn.test"])
    );
    // A later answer replaces TTL and chain, even with a smaller TTL and no chain.
    store
        .commit(
            &id(99),
            &[],
            &[dns("api.test", &[(a, seen(300, 300, 5, &[]))])],
        )
        .expect("commits");
    assert_eq!(history(&store, "api.test")[&ip(a)], seen(50, 300, 5, &[]));
}

#[derive(Debug, Clone)]
struct Sighting {
    addr: usize,
    first: i64,
    span: i64,
    ttl: u32,
    chain: usize,
}

const ADDRS: [&str; 3] = ["203.0.113.1", "203.0.113.2", "2001:db8::1"];
const CHAINS: [&[&str]; 5] = [
    &[],
    &["a.test"],
    &["a.test", "b.test"],
    &["a.test-b"],
    &["b.test"],
];

fn sighting() -> impl Strategy<Value = Sighting> {
    (0..ADDRS.len(), 0i64..4, 0i64..3, 0u32..3, 0..CHAINS.len()).prop_map(
        |(addr, first, span, ttl, chain)| Sighting {
            addr,
            first,
            span,
            ttl,
            chain,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any sightings, cut into batches and the batches into group commits (one transaction
    /// each), give the history that folding them with `merge_seen` gives; a batch resent
    /// changes nothing.
    #[test]
    fn batches_and_group_commits_merge_like_the_model(
        batches in prop::collection::vec(prop::collection::vec(sighting(), 1..4), 1..8),
        group in 1usize..4,
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path().join("leash.db")).expect("opens");
        let mut model = History::new();
        let rows: Vec<Vec<DnsObservation>> = batches
            .iter()
            .map(|b| {
                // One observation per batch, as a batch aggregates by query: its sightings of
                // one address are merged first.
                let mut addresses: BTreeMap<IpAddr, AddressSeen> = BTreeMap::new();
                for s in b {
                    let one = seen(s.first, s.first + s.span, s.ttl, CHAINS[s.chain]);
                    merge_seen(&mut addresses, ip(ADDRS[s.addr]), &one);
                    merge_seen(&mut model, ip(ADDRS[s.addr]), &one);
                }
                let list: Vec<(&str, AddressSeen)> = addresses
                    .iter()
                    .map(|(a, s)| (ADDRS.iter().copied().find(|x| ip(x) == *a).unwrap_or("::"), s.clone()))
                    .collect();
                vec![dns("api.test", &list)]
            })
            .collect();
        let ids: Vec<BatchId> = (0..rows.len() as u64).map(id).collect();
        let commits: Vec<BatchCommit<'_>> = rows
            .iter()
            .zip(&ids)
            .map(|(dns, id)| BatchCommit { id, flows: &[], dns })
            .collect();
        for chunk in commits.chunks(group) {
            let out = store.commit_many(chunk).expect("commits");
            prop_assert!(out.iter().all(|c| *c == Commit::Stored));
        }
        prop_assert_eq!(history(&store, "api.test"), model.clone());
        prop_assert_eq!(
            store.commit_many(&commits).expect("commits"),
            vec![Commit::Duplicate; commits.len()]
        );
        prop_assert_eq!(history(&store, "api.test"), model);
    }
}

#[test]
fn retention_removes_old_addresses_and_keeps_new_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path().join("leash.db")).expect("opens");
    let day = 86_400;
    store
        .commit(
            &id(1),
            &[],
            &[
                // Moved: the old address was last seen on day 1, the new one on day 5.
                dns(
                    "api.stripe.test",
                    &[
                        ("203.0.113.10", seen(0, day, 30, &[])),
                        ("203.0.113.11", seen(3 * day, 5 * day, 30, &[])),
                    ],
                ),
                // Only old answers: the whole observation goes.
                dns("old.test", &[("203.0.113.20", seen(0, day, 30, &[]))]),
            ],
        )
        .expect("commits");
    assert_eq!(
        store.prune(at(2 * day)).expect("prunes"),
        1,
        "old.test's row"
    );
    let rows = store.dns(None).expect("reads");
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].query, "api.stripe.test");
    assert_eq!(
        rows[0].addresses,
        BTreeMap::from([(ip("203.0.113.11"), seen(3 * day, 5 * day, 30, &[]))])
    );
    // The pruned address comes back as new when answered again.
    store
        .commit(
            &id(2),
            &[],
            &[dns(
                "old.test",
                &[("203.0.113.20", seen(6 * day, 6 * day, 60, &[]))],
            )],
        )
        .expect("commits");
    assert_eq!(
        history(&store, "old.test"),
        History::from([(ip("203.0.113.20"), seen(6 * day, 6 * day, 60, &[]))])
    );
    // A read's window applies to addresses as it does to observations.
    let recent = store.dns(Some(at(4 * day))).expect("reads");
    let api = recent
        .iter()
        .find(|d| d.query == "api.stripe.test")
        .expect("in the window");
    assert_eq!(
        api.addresses.keys().copied().collect::<Vec<_>>(),
        [ip("203.0.113.11")]
    );
}

/// A store written before the history was kept (schema version 4, which added the alerts
/// table) opens and migrates; its DNS rows have no addresses until answers come.
#[test]
fn a_store_of_the_previous_schema_migrates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("v4.db");
    let previous = 4;
    assert_eq!(
        MIGRATIONS[previous].description,
        "the address history of each DNS observation"
    );
    {
        let conn = rusqlite::Connection::open(&path).expect("sqlite");
        for m in &MIGRATIONS[..previous] {
            conn.execute_batch(m.sql).expect("old schema");
        }
        conn.pragma_update(None, "user_version", 4)
            .expect("version");
        conn.execute_batch(
            "INSERT INTO workloads (id, namespace, kind, name) VALUES (1, 'shop', 'Deployment', 'api');
             INSERT INTO names (id, name) VALUES (1, 'api.test');
             INSERT INTO dns VALUES (1, X'0A60000A', 1, 2, 1000000000, 2000000000);",
        )
        .expect("old rows");
    }
    let store = SqliteStore::open(&path).expect("migrates");
    assert_eq!(store.version().expect("version"), schema_version());
    let rows = store.dns(None).expect("reads");
    assert_eq!(rows.len(), 1);
    assert!(rows[0].addresses.is_empty());
    let mut d = dns("api.test", &[("203.0.113.10", seen(0, 10, 30, &[]))]);
    d.workload = wl("api");
    store.commit(&id(1), &[], &[d]).expect("commits");
    let rows = store.dns(None).expect("reads");
    assert_eq!(rows[0].count, 3);
    assert_eq!(
        rows[0].addresses,
        BTreeMap::from([(ip("203.0.113.10"), seen(0, 10, 30, &[]))])
    );
}

#[test]
fn corrupt_stored_values_name_the_table() {
    for (what, sql) in [
        ("TTL", "UPDATE dns_addresses SET ttl = -1"),
        ("chain", "UPDATE dns_addresses SET chain = X'61'"),
        ("chain", "UPDATE dns_addresses SET chain = X'FF00'"),
        ("chain", "UPDATE dns_addresses SET chain = 'a.test'"),
        ("address", "UPDATE dns_addresses SET ip = X'0102'"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leash.db");
        let store = SqliteStore::open(&path).expect("opens");
        store
            .commit(
                &id(1),
                &[],
                &[dns(
                    "api.test",
                    &[("203.0.113.10", seen(0, 10, 30, &["a.test"]))],
                )],
            )
            .expect("commits");
        rusqlite::Connection::open(&path)
            .and_then(|c| c.execute_batch(sql))
            .expect("damages");
        match store.dns(None) {
            Err(Error::Corrupt { what: w, .. }) => {
                assert!(w.starts_with("dns_addresses: "), "{what}: {w}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[test]
fn a_chain_name_with_a_zero_byte_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path().join("leash.db")).expect("opens");
    let d = dns("api.test", &[("203.0.113.10", seen(0, 10, 30, &["a\0b"]))]);
    assert!(matches!(
        store.commit(&id(1), &[], &[d]),
        Err(Error::Invalid { .. })
    ));
    assert!(store.dns(None).expect("reads").is_empty(), "nothing stored");
}

/// Readers see each commit whole: an observation with the addresses of the same commit,
/// never a count from one and addresses from another, while the writer keeps committing.
#[test]
fn concurrent_readers_see_whole_commits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(SqliteStore::open(dir.path().join("leash.db")).expect("opens"));
    let rounds: u64 = 40;
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut reads = 0;
                loop {
                    let rows = store.dns(None).expect("reads");
                    if let Some(d) = rows.first() {
                        // Commit n adds address n and one answer.
                        assert_eq!(d.addresses.len() as u64, d.count, "{d:?}");
                        if d.count == rounds {
                            return reads;
                        }
                    }
                    reads += 1;
                }
            })
        })
        .collect();
    for n in 1..=rounds {
        let a = format!("2001:db8::{n:x}");
        store
            .commit(
                &id(n),
                &[],
                &[dns(
                    "api.test",
                    &[(a.as_str(), seen(n as i64, n as i64, 30, &[]))],
                )],
            )
            .expect("commits");
    }
    for r in readers {
        r.join().expect("a reader saw whole commits");
    }
}

/// The engine's observations built from stored rows carry the history, per (the workload's
/// stand-in pod, query name).
#[test]
fn observations_from_the_store_carry_the_history() {
    let mut fx = Fx::new();
    fx.node("n1", "10.0.0.1", "10.244.1.0/24");
    fx.kubeadm_dns();
    fx.namespace("shop");
    fx.deployment(
        "shop",
        "api",
        &[("app", "api")],
        &["10.244.1.10", "10.244.1.11"],
        &[],
    );
    let cluster = fx.cluster();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path().join("leash.db")).expect("opens");
    let one = dns("api.stripe.test", &[("203.0.113.10", seen(0, 10, 30, &[]))]);
    let two = dns(
        "api.stripe.test",
        &[
            ("203.0.113.10", seen(20, 30, 60, &["edge.test"])),
            ("203.0.113.11", seen(40, 50, 60, &[])),
        ],
    );
    store.commit(&id(1), &[], &[one]).expect("commits");
    store.commit(&id(2), &[], &[two]).expect("commits");
    let (obs, skipped) = observations::load(&store, &cluster, None).expect("loads");
    assert!(skipped.is_empty());
    let keys: Vec<_> = obs.history.keys().collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let (pod, name) = keys[0];
    assert_eq!(name, "api.stripe.test");
    assert_eq!(
        cluster
            .workload_of(*pod)
            .map(|w| cluster.workloads[w].name.clone()),
        Some("api".to_owned())
    );
    assert_eq!(
        obs.history[keys[0]],
        History::from([
            (ip("203.0.113.10"), seen(0, 30, 60, &["edge.test"])),
            (ip("203.0.113.11"), seen(40, 50, 60, &[])),
        ])
    );
}
