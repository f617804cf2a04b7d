//! Records to per-workload observations and back ([`leash::observations`]).

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;

use leash::observations::{self, PodNames, SkipReason};
use leash::store::{self, WorkloadRef};
use leash_records::{DnsRecord, FlowRecord, Outcome, Record};
use support::recommend::{Fx, dns, flow};

fn fx() -> Fx {
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
    fx.pod(
        "shop",
        "debug",
        &[("app", "debug")],
        &["10.244.1.20"],
        false,
        "n1",
        &[],
        None,
    );
    fx
}

fn as_flow(r: Record) -> FlowRecord {
    match r {
        Record::Flow(f) => f,
        Record::Dns(_) => panic!("a flow"),
    }
}

fn as_dns(r: Record) -> DnsRecord {
    match r {
        Record::Dns(d) => d,
        Record::Flow(_) => panic!("a DNS record"),
    }
}

fn wl(ns: &str, kind: &str, name: &str) -> WorkloadRef {
    WorkloadRef {
        namespace: ns.into(),
        kind: kind.into(),
        name: name.into(),
    }
}

#[test]
fn records_become_workload_observations_and_nothing_is_dropped() {
    let cluster = fx().cluster();
    let mut a = as_flow(flow(
        "shop",
        "api-5c9f7d-p0",
        "TCP",
        "203.0.113.7",
        443,
        5,
        &["Pay.test."],
    ));
    a.outcome = Some(Outcome {
        established: 2,
        failed: 1,
    });
    // The other pod of the same Deployment, the same destination (as an IPv4-mapped address).
    let mut b = as_flow(flow(
        "shop",
        "api-5c9f7d-p1",
        "TCP",
        "::ffff:203.0.113.7",
        443,
        7,
        &["pay.test"],
    ));
    b.first_seen = "2026-11-19T00:00:00Z".parse().expect("time");
    b.outcome = Some(Outcome {
        established: 1,
        failed: 0,
    });
    let bare = as_flow(flow("shop", "debug", "UDP", "198.51.100.1", 53, 1, &[]));
    let unknown = as_flow(flow("shop", "ghost-1", "TCP", "198.51.100.2", 80, 2, &[]));
    let mut host = as_flow(flow("x", "y", "TCP", "198.51.100.3", 22, 3, &[]));
    host.pod = None;
    host.node = "n7".into();
    let (mut flows, dns) = observations::from_batch(&cluster, &[a, b, bare, unknown, host], &[]);
    flows.sort_by(|x, y| store::flow_order(x).cmp(&store::flow_order(y)));
    assert!(dns.is_empty());
    let keys: Vec<_> = flows
        .iter()
        .map(|f| (f.workload.clone(), f.dst, f.port, f.count))
        .collect();
    let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
    assert_eq!(
        keys,
        vec![
            (wl("", "Node", "n7"), ip("198.51.100.3"), 22, 3),
            (wl("shop", "Deployment", "api"), ip("203.0.113.7"), 443, 12),
            (wl("shop", "Pod", "debug"), ip("198.51.100.1"), 53, 1),
            (wl("shop", "Pod", "ghost-1"), ip("198.51.100.2"), 80, 2),
        ]
    );
    let api = &flows[1];
    assert_eq!(
        api.first_seen,
        "2026-11-19T00:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .expect("time")
    );
    assert_eq!(api.names, BTreeSet::from(["pay.test".to_owned()]));
    assert_eq!((api.established, api.failed), (3, 1));

    // Back to the engine: the Deployment's evidence on its first pod, the node's counted as
    // unattributed, the unknown pod skipped with its events.
    let (obs, skipped) = observations::from_stored(&cluster, &flows, &dns);
    assert_eq!(obs.unattributed_flows, 3);
    assert_eq!(obs.flows.len(), 2);
    let first = cluster.pod_by_name("shop", "api-5c9f7d-p0").expect("pod");
    assert!(obs.flows.keys().any(|k| k.pod == first && k.port == 443));
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].workload, wl("shop", "Pod", "ghost-1"));
    assert_eq!(skipped[0].reason, SkipReason::NotInCluster);
    assert_eq!(skipped[0].flow_events, 2);
}

#[test]
fn dns_answers_keep_the_cname_chain_names() {
    let cluster = fx().cluster();
    let mut d = as_dns(dns(
        "shop",
        "debug",
        "10.96.0.10",
        "Pay.Test.",
        &["203.0.113.7"],
    ));
    // pay.test → edge.cdn.test → 203.0.113.7
    d.answers[0].name = "edge.cdn.test.".into();
    d.answers.insert(
        0,
        leash_records::DnsAnswer {
            name: "pay.test.".into(),
            rtype: "CNAME".into(),
            data: "edge.cdn.test.".into(),
            ttl: 30,
        },
    );
    let mut again = d.clone();
    again.time = "2026-11-23T00:00:00Z".parse().expect("time");
    let mut unattributed = d.clone();
    unattributed.pod = None;
    let (flows, mut obs) =
        observations::from_batch(&cluster, &[], &[d.clone(), again, unattributed]);
    obs.sort_by(|x, y| store::dns_order(x).cmp(&store::dns_order(y)));
    assert!(flows.is_empty());
    assert_eq!(
        obs.len(),
        2,
        "the pod's two answers merged; the node's apart"
    );
    let pod = &obs[1];
    assert_eq!(pod.workload, wl("shop", "Pod", "debug"));
    assert_eq!((pod.query.as_str(), pod.count), ("pay.test", 2));
    let ip: IpAddr = "203.0.113.7".parse().expect("ip");
    assert_eq!(
        pod.resolved,
        BTreeSet::from([
            ("edge.cdn.test".to_owned(), ip),
            ("pay.test".to_owned(), ip)
        ])
    );
    assert_eq!(obs[0].workload, wl("", "Node", "n1"));

    // The engine learns the same names as from the record itself.
    let (engine, skipped) = observations::from_stored(&cluster, &[], &obs);
    assert!(skipped.is_empty());
    let mut direct = leash::observations::Observations::default();
    direct.add(&Record::Dns(d), &cluster).expect("known pod");
    assert_eq!(engine.names_by_ip, direct.names_by_ip);
    assert_eq!(engine.resolvers, direct.resolvers);
    assert_eq!(engine.dns.values().map(|u| u.count).sum::<u64>(), 2);
}

/// Every count saturates (README, store). DNS query counts of the engine's observations did
/// not: merging observations, or adding a query to a count at the top, overflowed (a panic
/// in debug builds, a wrap in release).
#[test]
fn dns_query_counts_saturate() {
    let cluster = fx().cluster();
    let stored = store::DnsObservation {
        workload: wl("shop", "Pod", "debug"),
        server: "10.96.0.10".parse().expect("ip"),
        query: "pay.test".into(),
        count: u64::MAX - 1,
        first_seen: "2026-11-20T00:00:00Z".parse().expect("time"),
        last_seen: "2026-11-20T00:00:00Z".parse().expect("time"),
        resolved: BTreeSet::new(),
        addresses: Default::default(),
    };
    let (mut a, _) = observations::from_stored(&cluster, &[], std::slice::from_ref(&stored));
    let (b, _) = observations::from_stored(&cluster, &[], &[stored]);
    a.merge(b);
    let counts =
        |o: &observations::Observations| o.dns.values().map(|u| u.count).collect::<Vec<_>>();
    assert_eq!(counts(&a), [u64::MAX]);
    let query = dns("shop", "debug", "10.96.0.10", "pay.test", &["203.0.113.7"]);
    a.add(&query, &cluster).expect("known pod");
    assert_eq!(counts(&a), [u64::MAX]);
}

/// A batch keeps the pods that made each flow, the smallest names up to the bound and the
/// others counted, and the engine gets them back from the store's rows.
#[test]
fn a_batch_keeps_the_pods_of_each_flow_bounded() {
    let mut fx = Fx::new();
    fx.node("n1", "10.0.0.1", "10.244.1.0/24");
    fx.namespace("shop");
    let ips: Vec<String> = (10..22).map(|i| format!("10.244.1.{i}")).collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    let pods = fx.deployment("shop", "api", &[("app", "api")], &ips, &[]);
    let cluster = fx.cluster();
    let records: Vec<FlowRecord> = pods
        .iter()
        .map(|p| as_flow(flow("shop", p, "TCP", "203.0.113.7", 443, 1, &[])))
        .collect();
    let (flows, _) = observations::from_batch(&cluster, &records, &[]);
    assert_eq!(flows.len(), 1);
    let mut sorted = pods.clone();
    sorted.sort();
    let kept: BTreeSet<String> = sorted.iter().take(PodNames::MAX).cloned().collect();
    assert_eq!(
        flows[0].pods,
        PodNames {
            names: kept.clone(),
            more: 4
        }
    );
    let (obs, _) = observations::from_stored(&cluster, &flows, &[]);
    let stored: Vec<&PodNames> = obs.pods.values().collect();
    assert_eq!(
        stored,
        [&PodNames {
            names: kept,
            more: 4
        }]
    );
    // Records from files name their pod in the key; they have no stored pods.
    let mut direct = observations::Observations::default();
    for r in &records {
        direct
            .add(&Record::Flow(r.clone()), &cluster)
            .expect("known pod");
    }
    assert!(direct.pods.is_empty());
    assert_eq!(direct.flows.len(), 12);
}
