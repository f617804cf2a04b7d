//! Records to per-workload observations and back ([`leash::store::observe`]).

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;

use leash::store::{self, SkipReason, WorkloadRef};
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
    let (mut flows, dns) = store::from_batch(&cluster, &[a, b, bare, unknown, host], &[]);
    flows.sort_by(|x, y| store::observe::flow_order(x).cmp(&store::observe::flow_order(y)));
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
    let (obs, skipped) = store::observations(&cluster, &flows, &dns);
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
    let (flows, mut obs) = store::from_batch(&cluster, &[], &[d.clone(), again, unattributed]);
    obs.sort_by(|x, y| store::observe::dns_order(x).cmp(&store::observe::dns_order(y)));
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
    let (engine, skipped) = store::observations(&cluster, &[], &obs);
    assert!(skipped.is_empty());
    let mut direct = leash::input::Observations::default();
    direct.add(&Record::Dns(d), &cluster).expect("known pod");
    assert_eq!(engine.names_by_ip, direct.names_by_ip);
    assert_eq!(engine.resolvers, direct.resolvers);
    assert_eq!(engine.dns.values().map(|u| u.queries).sum::<u64>(), 2);
}
