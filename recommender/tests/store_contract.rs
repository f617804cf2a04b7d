//! The store contract, run against every implementation: SQLite on a real file, and
//! PostgreSQL on a real server (`support::postgres`; skipped when PostgreSQL is not
//! installed, unless `LEASH_REQUIRE_PRIVILEGED=1`). Each case gets an empty store.
//!
//! Then what only a shared database has: two stores (replicas) committing the same batch id
//! at once, migrations run by several at once, a wrong password.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Barrier};

use chrono::{DateTime, Duration, Utc};
use leash::evidence::PodNames;
use leash::store::{
    AddressSeen, AlertRecord, BatchCommit, BatchId, Commit, DnsObservation, Error, Export,
    FlowObservation, Location, PostgresStore, Scope, SqliteStore, Store, Subject, WorkloadRef,
    postgres::schema,
};
use leash_records::Protocol;
use leash_records::error::Chain;

fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_790_000_000 + secs, 0).expect("test time")
}

fn wl(ns: &str, name: &str) -> WorkloadRef {
    WorkloadRef {
        namespace: ns.into(),
        kind: "Deployment".into(),
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

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn flow(
    w: &WorkloadRef,
    dst: &str,
    port: u16,
    count: u64,
    first: i64,
    last: i64,
) -> FlowObservation {
    FlowObservation {
        workload: w.clone(),
        protocol: Protocol::Tcp,
        dst: ip(dst),
        port,
        count,
        first_seen: t(first),
        last_seen: t(last),
        names: Default::default(),
        pods: Default::default(),
        established: count,
        failed: 0,
    }
}

fn dns(w: &WorkloadRef, query: &str, count: u64, first: i64, last: i64) -> DnsObservation {
    DnsObservation {
        workload: w.clone(),
        server: ip("198.51.100.138"),
        query: query.into(),
        count,
        first_seen: t(first),
        last_seen: t(last),
        resolved: Default::default(),
        addresses: Default::default(),
    }
}

fn seen(first: i64, last: i64, ttl: u32, chain: &[&str]) -> AddressSeen {
    AddressSeen {
        first_seen: t(first),
        last_seen: t(last),
        ttl,
        chain: chain.iter().map(|c| (*c).to_owned()).collect(),
    }
}

fn alert(ns: &str, dst: &str, last_seen: i64, occurrences: u64) -> AlertRecord {
    AlertRecord {
        workload: wl(ns, "api"),
        dst: ip(dst),
        port: 443,
        protocol: Protocol::Tcp,
        first_sent: t(0),
        last_sent: t(last_seen),
        last_seen: t(last_seen),
        occurrences,
        detail: format!("{{\"n\":{occurrences}}}"),
    }
}

/// One case of the contract, run on an empty store.
type Case = fn(&dyn Store);

/// The contract's cases, by name.
const CASES: &[(&str, Case)] = &[
    ("exactly_once", exactly_once),
    ("aggregation", aggregation),
    ("group_commit", group_commit),
    ("failing_group_commit", failing_group_commit),
    ("retention_and_since", retention_and_since),
    ("dns_history", dns_history),
    ("alerts", alerts),
    ("scoped_reads_and_totals", scoped_reads_and_totals),
    ("pods_bounded", pods_bounded),
    ("saturation", saturation),
    ("concurrent_readers", concurrent_readers),
    ("export_import", export_import),
    ("whole_reads_and_pages_agree", whole_reads_and_pages_agree),
];

fn exactly_once(store: &dyn Store) {
    let api = wl("shop", "api");
    let f = [flow(&api, "203.0.113.7", 443, 3, 0, 10)];
    assert_eq!(
        store.commit(&id("n1", 1), &f, &[]).expect("commit"),
        Commit::Stored
    );
    assert_eq!(
        store.commit(&id("n1", 1), &f, &[]).expect("commit"),
        Commit::Duplicate
    );
    // Another node's batch of the same sequence number is another batch.
    assert_eq!(
        store.commit(&id("n2", 1), &f, &[]).expect("commit"),
        Commit::Stored
    );
    let flows = store.flows(None).expect("flows");
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].count, 6);
    let ids: Vec<BatchId> = store
        .batch_ids()
        .expect("batch ids")
        .into_iter()
        .map(|(b, _)| b)
        .collect();
    assert_eq!(ids, [id("n1", 1), id("n2", 1)]);
}

fn aggregation(store: &dyn Store) {
    let api = wl("shop", "api");
    let mut a = flow(&api, "203.0.113.7", 443, 2, 100, 200);
    a.names = ["api.stripe.test".to_owned()].into();
    a.failed = 1;
    let mut b = flow(&api, "203.0.113.7", 443, 5, 50, 150);
    b.names = ["pay.stripe.test".to_owned()].into();
    let v6 = flow(&api, "2001:db8:2::7", 443, 1, 10, 20);
    let mut udp = flow(&api, "203.0.113.7", 443, 1, 10, 20);
    udp.protocol = Protocol::Udp;
    let mut d1 = dns(&api, "api.stripe.test", 2, 100, 100);
    d1.resolved = [("api.stripe.test".to_owned(), ip("203.0.113.7"))].into();
    let mut d2 = dns(&api, "api.stripe.test", 3, 300, 300);
    d2.resolved = [("edge.stripe.test".to_owned(), ip("203.0.113.8"))].into();
    store
        .commit(&id("n1", 1), &[a, v6.clone()], &[d1])
        .expect("commit");
    store
        .commit(&id("n1", 2), &[b, udp.clone()], &[d2])
        .expect("commit");
    let flows = store.flows(None).expect("flows");
    assert_eq!(flows.len(), 3, "{flows:?}");
    // Sorted by workload, destination (IPv4 before IPv6), port, protocol.
    assert_eq!(
        flows
            .iter()
            .map(|f| (f.dst, f.protocol))
            .collect::<Vec<_>>(),
        [
            (ip("203.0.113.7"), Protocol::Tcp),
            (ip("203.0.113.7"), Protocol::Udp),
            (ip("2001:db8:2::7"), Protocol::Tcp)
        ]
    );
    let tcp = &flows[0];
    assert_eq!(
        (
            tcp.count,
            tcp.first_seen,
            tcp.last_seen,
            tcp.established,
            tcp.failed
        ),
        (7, t(50), t(200), 7, 1)
    );
    assert_eq!(
        tcp.names.iter().map(String::as_str).collect::<Vec<_>>(),
        ["api.stripe.test", "pay.stripe.test"]
    );
    assert_eq!(flows[1], udp);
    assert_eq!(flows[2], v6);
    let d = store.dns(None).expect("dns");
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].count, d[0].first_seen, d[0].last_seen),
        (5, t(100), t(300))
    );
    assert_eq!(
        d[0].resolved,
        [
            ("api.stripe.test".to_owned(), ip("203.0.113.7")),
            ("edge.stripe.test".to_owned(), ip("203.0.113.8"))
        ]
        .into()
    );
}

fn group_commit(store: &dyn Store) {
    let api = wl("shop", "api");
    let at = |count| [flow(&api, "203.0.113.7", 443, count, 0, 10)];
    let (one, two, four, eight) = (at(1), at(2), at(4), at(8));
    store.commit(&id("n1", 1), &one, &[]).expect("commit");
    let (n1_1, n1_2, n2_1) = (id("n1", 1), id("n1", 2), id("n2", 1));
    let group = [
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
        BatchCommit {
            id: &n1_2,
            flows: &eight,
            dns: &[],
        },
    ];
    assert_eq!(
        store.commit_many(&group).expect("group"),
        [
            Commit::Duplicate,
            Commit::Stored,
            Commit::Stored,
            Commit::Duplicate
        ]
    );
    assert_eq!(store.flows(None).expect("flows")[0].count, 1 + 2 + 4);
}

fn failing_group_commit(store: &dyn Store) {
    let api = wl("shop", "api");
    let good = [flow(&api, "203.0.113.7", 443, 5, 0, 10)];
    let mut bad = flow(&api, "203.0.113.8", 443, 5, 0, 10);
    bad.last_seen = DateTime::<Utc>::MAX_UTC;
    let bad = [bad];
    let (a, b) = (id("n1", 1), id("n1", 2));
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
        .expect_err("an unstorable time fails the group");
    assert!(
        matches!(err, Error::TimeOutOfRange { .. }),
        "{}",
        Chain(&err)
    );
    assert!(store.flows(None).expect("flows").is_empty());
    // Nothing of the group was stored: the first batch is new again.
    assert_eq!(
        store.commit(&a, &good, &[]).expect("commit"),
        Commit::Stored
    );
}

fn retention_and_since(store: &dyn Store) {
    let api = wl("shop", "api");
    let old = flow(&api, "203.0.113.7", 443, 1, 0, 100);
    let new = flow(&api, "203.0.113.8", 443, 1, 0, 300);
    let mut old_dns = dns(&api, "old.example.test", 1, 0, 100);
    old_dns.resolved = [("old.example.test".to_owned(), ip("203.0.113.7"))].into();
    let new_dns = dns(&api, "new.example.test", 1, 0, 300);
    store
        .commit(
            &id("n1", 1),
            &[old, new.clone()],
            &[old_dns, new_dns.clone()],
        )
        .expect("commit");
    let since = store.flows(Some(t(200))).expect("flows");
    assert_eq!(since, std::slice::from_ref(&new));
    assert_eq!(
        store.dns(Some(t(200))).expect("dns"),
        std::slice::from_ref(&new_dns)
    );
    assert_eq!(
        store.flows(Some(t(100))).expect("flows").len(),
        2,
        "since is inclusive"
    );
    // Prune at a time after the commit: the batch id goes too.
    let removed = store.prune(t(200)).expect("prune");
    assert_eq!(removed, 2);
    assert_eq!(store.flows(None).expect("flows"), [new]);
    assert_eq!(store.dns(None).expect("dns"), [new_dns]);
    store
        .prune(Utc::now() + Duration::hours(1))
        .expect("prune all");
    assert!(store.batch_ids().expect("ids").is_empty());
    assert!(store.flows(None).expect("flows").is_empty());
}

fn dns_history(store: &dyn Store) {
    let api = wl("shop", "api");
    let q = "api.example.test";
    // Sightings of two addresses over three commits, one a group of two batches; the model
    // is `AddressSeen::merge`.
    let sightings: [&[(&str, AddressSeen)]; 4] = [
        &[
            ("203.0.113.7", seen(0, 10, 60, &["edge.example.test"])),
            ("2001:db8:2::7", seen(5, 5, 30, &[])),
        ],
        &[("203.0.113.7", seen(20, 30, 300, &[]))],
        // The same last seen: the larger (TTL, chain) wins.
        &[("203.0.113.7", seen(30, 30, 300, &["a.example.test"]))],
        &[("203.0.113.7", seen(1, 25, 5, &["z.example.test"]))],
    ];
    let mut model: BTreeMap<IpAddr, AddressSeen> = BTreeMap::new();
    let mut obs = Vec::new();
    for s in &sightings {
        let mut d = dns(&api, q, 1, 0, 40);
        for (a, seen) in s.iter() {
            d.addresses.insert(ip(a), seen.clone());
            match model.get_mut(&ip(a)) {
                Some(m) => m.merge(seen),
                None => {
                    model.insert(ip(a), seen.clone());
                }
            }
        }
        obs.push(d);
    }
    store.commit(&id("n1", 1), &[], &obs[..1]).expect("commit");
    store.commit(&id("n1", 2), &[], &obs[1..2]).expect("commit");
    let (b3, b4) = (id("n1", 3), id("n1", 4));
    store
        .commit_many(&[
            BatchCommit {
                id: &b3,
                flows: &[],
                dns: &obs[2..3],
            },
            BatchCommit {
                id: &b4,
                flows: &[],
                dns: &obs[3..4],
            },
        ])
        .expect("group");
    let stored = store.dns(None).expect("dns");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].addresses, model);
    // `since` narrows the addresses as the observations.
    let recent = store.dns(Some(t(20))).expect("dns");
    assert_eq!(
        recent[0].addresses.keys().copied().collect::<Vec<_>>(),
        [ip("203.0.113.7")]
    );
    // Retention drops old addresses and keeps the observation while it has newer answers.
    store.prune(t(20)).expect("prune");
    let kept = store.dns(None).expect("dns");
    assert_eq!(kept.len(), 1);
    assert_eq!(
        kept[0].addresses.keys().copied().collect::<Vec<_>>(),
        [ip("203.0.113.7")]
    );
    // A chain name with a zero byte cannot be stored faithfully: refused.
    let mut bad = dns(&api, q, 1, 0, 40);
    bad.addresses
        .insert(ip("203.0.113.9"), seen(0, 1, 1, &["a\0b"]));
    assert!(store.commit(&id("n1", 9), &[], &[bad]).is_err());
}

fn alerts(store: &dyn Store) {
    assert!(store.alerts(None).expect("alerts").is_empty());
    store
        .remember_alerts(&[
            alert("shop", "203.0.113.8", 100, 1),
            alert("shop", "203.0.113.7", 100, 1),
            alert("bank", "203.0.113.7", 300, 1),
        ])
        .expect("remember");
    // A record replaces the one of its key; the last of one call wins.
    store
        .remember_alerts(&[
            alert("shop", "203.0.113.7", 300, 2),
            alert("shop", "203.0.113.7", 300, 3),
        ])
        .expect("remember");
    let all = store.alerts(None).expect("alerts");
    assert_eq!(
        all.iter()
            .map(|a| (a.workload.namespace.as_str(), a.dst, a.occurrences))
            .collect::<Vec<_>>(),
        [
            ("bank", ip("203.0.113.7"), 1),
            ("shop", ip("203.0.113.7"), 3),
            ("shop", ip("203.0.113.8"), 1)
        ]
    );
    assert_eq!(all[1], alert("shop", "203.0.113.7", 300, 3));
    assert_eq!(store.alerts(Some("bank")).expect("alerts").len(), 1);
    store.prune(t(200)).expect("prune");
    assert_eq!(store.alerts(None).expect("alerts").len(), 2);
}

fn scoped_reads_and_totals(store: &dyn Store) {
    let mut flows = Vec::new();
    for (ns, name, n) in [
        ("bank", "ledger", 2),
        ("shop", "api", 3),
        ("shop", "web", 1),
    ] {
        for i in 0..n {
            flows.push(flow(
                &wl(ns, name),
                &format!("203.0.113.{}", 10 + i),
                443,
                2,
                0,
                10 + i64::from(i),
            ));
        }
    }
    store.commit(&id("n1", 1), &flows, &[]).expect("commit");
    let all = store.flows(None).expect("flows");
    for subject in [
        Subject::All,
        Subject::Namespace("shop".into()),
        Subject::Workload(wl("shop", "api")),
        Subject::Workload(wl("shop", "nobody")),
    ] {
        let scope = Scope {
            since: Some(t(11)),
            subject: subject.clone(),
        };
        let want: Vec<FlowObservation> = all
            .iter()
            .filter(|f| subject.contains(&f.workload) && f.last_seen >= t(11))
            .cloned()
            .collect();
        assert_eq!(store.flows_in(&scope, usize::MAX).expect("scoped"), want);
        // Whole workloads first: the first `max` in order.
        let two = store.flows_in(&scope, 2).expect("scoped");
        assert_eq!(two, want.iter().take(2).cloned().collect::<Vec<_>>());
    }
    let totals = store.workload_totals(None, None, 10).expect("totals");
    assert_eq!(
        totals
            .iter()
            .map(|t| (t.workload.name.as_str(), t.destinations, t.count))
            .collect::<Vec<_>>(),
        [("ledger", 2, 4), ("api", 3, 6), ("web", 1, 2)]
    );
    assert_eq!(totals[1].last_seen, t(12));
    let page = store
        .workload_totals(None, Some(&wl("bank", "ledger")), 1)
        .expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].workload, wl("shop", "api"));
    let since = store.workload_totals(Some(t(12)), None, 10).expect("since");
    assert_eq!(since.len(), 1);
    assert_eq!((since[0].destinations, since[0].count), (1, 2));
}

fn pods_bounded(store: &dyn Store) {
    let api = wl("shop", "api");
    let with = |names: &[String], more: u64| {
        let mut f = flow(&api, "203.0.113.7", 443, 1, 0, 10);
        f.pods = PodNames {
            names: names.iter().cloned().collect(),
            more,
        };
        f
    };
    let pods: Vec<String> = (0..12).map(|i| format!("api-{i:02}")).collect();
    store
        .commit(&id("n1", 1), &[with(&pods[..3], 0)], &[])
        .expect("commit");
    let first = &store.flows(None).expect("flows")[0].pods;
    assert_eq!(first.names.len(), 3);
    assert_eq!(first.more, 0);
    // Ten more, two already known: the row fills to the bound, the rest are counted.
    store
        .commit(&id("n1", 2), &[with(&pods[1..12], 0)], &[])
        .expect("commit");
    let p = &store.flows(None).expect("flows")[0].pods;
    assert_eq!(p.names.len(), PodNames::MAX);
    assert_eq!(
        p.names.iter().cloned().collect::<Vec<_>>(),
        pods[..PodNames::MAX].to_vec(),
        "the first to arrive, in name order"
    );
    assert_eq!(p.total(), 12);
}

/// Names, pods, answers and address history stay with their own observation, whether a
/// read takes everything (`max` unbounded) or a page; links of observations that a read
/// leaves out (`since`, subject) go nowhere. Batches arrive out of key order.
fn whole_reads_and_pages_agree(store: &dyn Store) {
    let mut batches: Vec<(Vec<FlowObservation>, Vec<DnsObservation>)> = Vec::new();
    for round in 0..3u8 {
        let (mut flows, mut dns_obs) = (Vec::new(), Vec::new());
        for (ns, name) in [("shop", "web"), ("bank", "ledger"), ("shop", "api")] {
            let w = wl(ns, name);
            for i in 0..4u8 {
                let last = i64::from(round * 10 + i);
                let mut f = flow(&w, &format!("203.0.113.{}", round * 4 + i), 443, 1, 0, last);
                if i % 2 == 0 {
                    f.names = [format!("{name}-{round}-{i}.example.test")].into();
                }
                f.pods = PodNames {
                    names: [format!("{name}-pod-{i}")].into(),
                    more: u64::from(i),
                };
                flows.push(f);
            }
            let mut d = dns(
                &w,
                &format!("{name}-{round}.example.test"),
                1,
                0,
                i64::from(round * 10 + 3),
            );
            let a = ip(&format!("198.51.100.{}", round + 1));
            d.resolved = [(d.query.clone(), a)].into();
            d.addresses = [(
                a,
                seen(0, i64::from(round * 10 + 1), 30, &["edge.example.test"]),
            )]
            .into();
            dns_obs.push(d);
        }
        flows.reverse();
        batches.push((flows, dns_obs));
    }
    for (seq, (f, d)) in batches.iter().enumerate().rev() {
        store
            .commit(&id("n1", seq as u64 + 1), f, d)
            .expect("commit");
    }
    let mut all_flows: Vec<FlowObservation> = batches.iter().flat_map(|b| b.0.clone()).collect();
    all_flows.sort_by(|a, b| {
        (&a.workload, a.dst, a.port, a.protocol).cmp(&(&b.workload, b.dst, b.port, b.protocol))
    });
    let mut all_dns: Vec<DnsObservation> = batches.iter().flat_map(|b| b.1.clone()).collect();
    all_dns
        .sort_by(|a, b| (&a.workload, a.server, &a.query).cmp(&(&b.workload, b.server, &b.query)));
    assert_eq!(store.flows(None).expect("flows"), all_flows);
    assert_eq!(store.dns(None).expect("dns"), all_dns);
    for since in [None, Some(t(12)), Some(t(40))] {
        for subject in [
            Subject::All,
            Subject::Namespace("shop".into()),
            Subject::Workload(wl("bank", "ledger")),
        ] {
            let scope = Scope {
                since,
                subject: subject.clone(),
            };
            let kept = |w: &WorkloadRef, last: DateTime<Utc>| {
                subject.contains(w) && since.is_none_or(|s| last >= s)
            };
            let want: Vec<_> = all_flows
                .iter()
                .filter(|f| kept(&f.workload, f.last_seen))
                .cloned()
                .collect();
            assert_eq!(store.flows_in(&scope, usize::MAX).expect("whole"), want);
            assert_eq!(store.flows_in(&scope, 1_000).expect("page"), want);
            let want: Vec<_> = all_dns
                .iter()
                .filter(|d| kept(&d.workload, d.last_seen))
                .cloned()
                .map(|mut d| {
                    d.addresses
                        .retain(|_, a| since.is_none_or(|s| a.last_seen >= s));
                    d
                })
                .collect();
            assert_eq!(store.dns_in(&scope, usize::MAX).expect("whole"), want);
            assert_eq!(store.dns_in(&scope, 1_000).expect("page"), want);
        }
    }
}

fn saturation(store: &dyn Store) {
    let api = wl("shop", "api");
    let big = flow(&api, "203.0.113.7", 443, u64::MAX, 0, 10);
    store
        .commit(&id("n1", 1), std::slice::from_ref(&big), &[])
        .expect("commit");
    store.commit(&id("n1", 2), &[big], &[]).expect("commit");
    let f = &store.flows(None).expect("flows")[0];
    assert_eq!(f.count, i64::MAX as u64);
    assert_eq!(f.established, i64::MAX as u64);
}

fn concurrent_readers(store: &dyn Store) {
    // Readers on other threads see whole commits only: a batch's two flows together.
    let api = wl("shop", "api");
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    let mut reads = 0;
                    while !stop.load(std::sync::atomic::Ordering::Acquire) || reads == 0 {
                        let flows = store.flows(None).expect("read");
                        let total: u64 = flows.iter().map(|f| f.count).sum();
                        assert_eq!(total % 2, 0, "a half commit was visible: {flows:?}");
                        reads += 1;
                    }
                })
            })
            .collect();
        for seq in 0..40 {
            let f = [
                flow(&api, "203.0.113.7", 443, 1, 0, 10),
                flow(&api, "203.0.113.8", 443, 1, 0, 10),
            ];
            store.commit(&id("n1", seq), &f, &[]).expect("commit");
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        for r in readers {
            r.join().expect("reader");
        }
    });
    assert_eq!(store.flows(None).expect("flows")[0].count, 40);
}

fn export_import(store: &dyn Store) {
    // What `leash store migrate` relies on: an export imported into an empty store reads
    // back the same.
    let api = wl("shop", "api");
    let mut f = flow(&api, "203.0.113.7", 443, 3, 0, 10);
    f.names = ["api.example.test".to_owned()].into();
    f.pods = PodNames {
        names: ["api-1".to_owned()].into(),
        more: 4,
    };
    let mut d = dns(&api, "api.example.test", 2, 0, 10);
    d.resolved = [("api.example.test".to_owned(), ip("203.0.113.7"))].into();
    d.addresses
        .insert(ip("203.0.113.7"), seen(0, 10, 60, &["edge.example.test"]));
    let data = Export {
        batches: vec![(id("n1", 1), t(5)), (id("n2", 7), t(6))],
        flows: vec![f],
        dns: vec![d],
        alerts: vec![alert("shop", "203.0.113.7", 10, 2)],
    };
    store.import(&data).expect("import");
    assert_eq!(store.batch_ids().expect("ids"), data.batches);
    assert_eq!(store.flows(None).expect("flows"), data.flows);
    assert_eq!(store.dns(None).expect("dns"), data.dns);
    assert_eq!(store.alerts(None).expect("alerts"), data.alerts);
    // An imported batch id is a stored one.
    assert_eq!(
        store.commit(&id("n1", 1), &[], &[]).expect("commit"),
        Commit::Duplicate
    );
}

#[test]
fn sqlite_keeps_the_contract() {
    for (name, case) in CASES {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path().join("leash.db")).expect("store opens");
        eprintln!("sqlite: {name}");
        case(&store);
    }
}

fn connect(url: &str) -> PostgresStore {
    let Ok(Location::Postgres(url)) = url.parse::<Location>() else {
        panic!("not a PostgreSQL URL")
    };
    PostgresStore::connect(&url).unwrap_or_else(|e| panic!("connect: {}", Chain(&e)))
}

#[test]
fn postgres_keeps_the_contract() {
    let Some(pg) = support::postgres::postgres_or_skip() else {
        return;
    };
    for (name, case) in CASES {
        let store = connect(&pg.create_database(name));
        eprintln!("postgres: {name}");
        case(&store);
    }
}

#[test]
fn postgres_replicas_commit_a_batch_id_once_and_migrate_once() {
    let Some(pg) = support::postgres::postgres_or_skip() else {
        return;
    };
    let url = pg.create_database("replicas");
    // Migrations by several at once: one schema, each version applied once.
    let barrier = Barrier::new(4);
    let stores: Vec<PostgresStore> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    connect(&url)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("connects"))
            .collect()
    });
    assert_eq!(
        pg.psql(
            "replicas",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM leash_schema"
        ),
        (1..=schema::schema_version())
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(
        stores[0].version().expect("version"),
        schema::schema_version()
    );
    // Two replicas commit the same batch ids at once, many times: each is stored once.
    let stores = Arc::new(stores);
    let api = wl("shop", "api");
    let barrier = Barrier::new(2);
    let outcomes: Vec<Vec<Commit>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|r| {
                let (stores, api, barrier) = (&stores, &api, &barrier);
                s.spawn(move || {
                    let mut out = Vec::new();
                    for seq in 0..30 {
                        let f = [
                            flow(api, "203.0.113.7", 443, 1, 0, 10),
                            flow(api, "203.0.113.8", 443, 1, 0, 10),
                        ];
                        barrier.wait();
                        out.push(stores[r].commit(&id("n1", seq), &f, &[]).expect("commit"));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("replica"))
            .collect()
    });
    for seq in 0..30 {
        let stored = outcomes.iter().filter(|o| o[seq] == Commit::Stored).count();
        assert_eq!(stored, 1, "batch {seq}: {outcomes:?}");
    }
    for f in stores[1].flows(None).expect("flows") {
        assert_eq!(f.count, 30);
    }
    assert_eq!(pg.psql("replicas", "SELECT count(*) FROM batches"), "30");
}

#[test]
fn postgres_errors_never_show_the_password() {
    let Some(pg) = support::postgres::postgres_or_skip() else {
        return;
    };
    pg.create_database("pw");
    let wrong = pg.url_with_password("pw", "not-the-Secret-91");
    let Ok(Location::Postgres(url)) = wrong.parse::<Location>() else {
        panic!("not a PostgreSQL URL")
    };
    let err = PostgresStore::connect(&url).expect_err("a wrong password is refused");
    let shown = Chain(&err).to_string();
    assert!(!shown.contains("not-the-Secret-91"), "{shown}");
    assert!(shown.contains("postgres://leash:***@127.0.0.1"), "{shown}");
    assert!(shown.contains("password authentication failed"), "{shown}");
    // A database from a newer leash is refused, by version.
    let url = pg.create_database("newer");
    drop(connect(&url));
    pg.psql(
        "newer",
        "INSERT INTO leash_schema (version, description) VALUES (99, 'future')",
    );
    let Ok(Location::Postgres(url)) = url.parse::<Location>() else {
        panic!("not a PostgreSQL URL")
    };
    let err = PostgresStore::connect(&url).expect_err("newer schema");
    assert!(
        matches!(err, Error::NewerSchema { found: 99, .. }),
        "{}",
        Chain(&err)
    );
}

/// `sslmode` is honoured: a server that accepts TLS clients only; `disable` is refused,
/// `require` encrypts, `verify-full` checks the chain and the name, `verify-ca` the chain.
#[test]
fn postgres_tls_honours_sslmode() {
    let Some(bin) = support::postgres::bin_dir() else {
        // postgres_or_skip says why, or fails under LEASH_REQUIRE_PRIVILEGED=1.
        assert!(support::postgres::postgres_or_skip().is_none());
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    leash::certs::generate(&certs, &["127.0.0.1".to_owned()], &[]).expect("certificates");
    let other = dir.path().join("other");
    leash::certs::generate(&other, &["127.0.0.1".to_owned()], &[]).expect("another CA");
    let pg = support::postgres::Postgres::start_with(
        &bin,
        Some((&certs.join("server.pem"), &certs.join("server-key.pem"))),
    );
    pg.create_database("tls");
    let base = format!(
        "postgres://{}:{}@127.0.0.1:{}/tls",
        support::postgres::USER,
        support::postgres::PASSWORD,
        pg.port()
    );
    let by_name = base.replace("127.0.0.1", "localhost");
    let ca = certs.join("ca.pem");
    let other_ca = other.join("ca.pem");
    let try_url = |url: String| -> Result<(), String> {
        let Ok(Location::Postgres(url)) = url.parse::<Location>() else {
            panic!("not a PostgreSQL URL")
        };
        PostgresStore::connect(&url)
            .map(drop)
            .map_err(|e| Chain(&e).to_string())
    };
    let rootcert = |p: &std::path::Path| p.to_str().expect("utf-8").replace('/', "%2F");
    assert!(try_url(format!("{base}?sslmode=disable")).is_err());
    try_url(format!("{base}?sslmode=require")).expect("require");
    try_url(base.clone()).expect("prefer, the default");
    try_url(format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        rootcert(&ca)
    ))
    .expect("verify-full against the CA");
    let wrong_ca = try_url(format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        rootcert(&other_ca)
    ))
    .expect_err("another CA");
    assert!(
        !wrong_ca.contains(support::postgres::PASSWORD),
        "{wrong_ca}"
    );
    // The certificate names 127.0.0.1, not localhost.
    try_url(format!(
        "{by_name}?sslmode=verify-full&sslrootcert={}",
        rootcert(&ca)
    ))
    .expect_err("a name the certificate does not carry");
    try_url(format!(
        "{by_name}?sslmode=verify-ca&sslrootcert={}",
        rootcert(&ca)
    ))
    .expect("verify-ca checks the chain only");
    try_url(format!("{base}?sslmode=bogus")).expect_err("an unknown sslmode");
}

/// A restarted server: the store's connections are replaced, a commit that failed while the
/// server was away is accepted when resent, and nothing is lost or doubled.
#[test]
fn postgres_restart_is_survived() {
    let Some(mut pg) = support::postgres::postgres_or_skip() else {
        return;
    };
    let store = connect(&pg.create_database("restart"));
    let api = wl("shop", "api");
    let f = [flow(&api, "203.0.113.7", 443, 1, 0, 10)];
    store.commit(&id("n1", 1), &f, &[]).expect("commit");
    assert_eq!(store.flows(None).expect("flows").len(), 1);
    pg.restart();
    // The writer's and the reader's connections are gone; each is replaced on use (a lost
    // commit is run again once: its batch id keeps it exactly once).
    let second = store
        .commit(&id("n1", 2), &f, &[])
        .unwrap_or_else(|e| panic!("a commit after the restart: {}", Chain(&e)));
    assert_eq!(second, Commit::Stored);
    assert_eq!(
        store.commit(&id("n1", 2), &f, &[]).expect("commit"),
        Commit::Duplicate
    );
    assert_eq!(
        store.flows(None).expect("read after the restart")[0].count,
        2
    );
    assert_eq!(store.batch_ids().expect("ids").len(), 2);
}

/// The address history merged in SQL equals `AddressSeen::merge` folded over any sightings
/// (chains that are prefixes of each other, equal last seens, v4 and v6), whether the
/// sightings come one batch each, several in one batch (the same key repeated), or several
/// batches in one group commit; on both stores.
#[test]
fn address_history_merges_like_the_model_on_both_stores() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    const ADDRS: [&str; 3] = ["203.0.113.1", "203.0.113.2", "2001:db8::1"];
    const CHAINS: [&[&str]; 5] = [
        &[],
        &["a.test"],
        &["a.test", "b.test"],
        &["a.test-b"],
        &["b.test"],
    ];
    let pg = support::postgres::postgres_or_skip();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut stores: Vec<Box<dyn Store>> = vec![Box::new(
        SqliteStore::open(dir.path().join("leash.db")).expect("opens"),
    )];
    if let Some(pg) = &pg {
        stores.push(Box::new(connect(&pg.create_database("history"))));
    }
    let sighting = (0..ADDRS.len(), 0i64..4, 0i64..3, 0u32..3, 0..CHAINS.len());
    let strategy = (
        prop::collection::vec(prop::collection::vec(sighting, 1..4), 1..6),
        1usize..4,
    );
    let case = std::sync::atomic::AtomicU64::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 32,
        ..Config::default()
    });
    runner
        .run(&strategy, |(batches, group)| {
            let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let query = format!("api-{case}.test");
            let node = format!("n{case}");
            let mut model: BTreeMap<IpAddr, AddressSeen> = BTreeMap::new();
            let rows: Vec<Vec<DnsObservation>> = batches
                .iter()
                .map(|b| {
                    b.iter()
                        .map(|&(addr, first, span, ttl, chain)| {
                            let one = seen(first, first + span, ttl, CHAINS[chain]);
                            match model.get_mut(&ip(ADDRS[addr])) {
                                Some(m) => m.merge(&one),
                                None => {
                                    model.insert(ip(ADDRS[addr]), one.clone());
                                }
                            }
                            let mut d = dns(&wl("shop", "api"), &query, 1, 0, 10);
                            d.addresses.insert(ip(ADDRS[addr]), one);
                            d
                        })
                        .collect()
                })
                .collect();
            let ids: Vec<BatchId> = (0..rows.len() as u64).map(|s| id(&node, s)).collect();
            let commits: Vec<BatchCommit<'_>> = rows
                .iter()
                .zip(&ids)
                .map(|(dns, id)| BatchCommit {
                    id,
                    flows: &[],
                    dns,
                })
                .collect();
            for store in &stores {
                for chunk in commits.chunks(group) {
                    store.commit_many(chunk).expect("commits");
                }
                let stored = store.dns(None).expect("dns");
                let got = stored
                    .iter()
                    .find(|d| d.query == query)
                    .map(|d| d.addresses.clone())
                    .unwrap_or_default();
                prop_assert_eq!(&got, &model);
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
}
