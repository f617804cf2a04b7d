//! The egress map of `leash serve`'s UI: `/v1` answers must take < 50 ms at 2,000 workloads
//! and 20,000 edges. Times [`map::build`] (done once per commit, cached by serve), the views
//! the UI asks for ([`Map::overview`], [`Map::namespace`] of 200 workloads, [`Map::workload`])
//! and their JSON serialization.
//!
//! The cluster: 2,000 Deployments of two pods each, each behind a Service, in 40 namespaces
//! (`ns-00` holds 200 of them, the 39 others 46 or 47); CoreDNS, the API server. Each
//! workload dials 10 destinations from both pods: DNS, the Services of three neighbours in its
//! namespace, a pod of a workload in another namespace, the API server, three of 40 external
//! names and one nameless address. That is 20,000 workload edges from 40,000 observed flows,
//! each judged under the applied policies (a default deny in four namespaces) and under a
//! proposal (pods, DNS and half the named addresses), 1% of the named flows flagged as drift.
//!
//! `cargo bench -p leash --bench map` (quick settings: 10 samples, 2 s each).

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chrono::{DateTime, Utc};
use criterion::{Criterion, criterion_group};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use leash::classify::ClassifierConfig;
use leash::cluster::Cluster;
use leash::eval::PolicySet;
use leash::map::{self, Filter, FlowRef, Inputs, Map};
use leash::observations::{AddressSeen, Evidence, FlowKey, Observations};
use leash::rollout;
use leash_lab::k8s;
use leash_records::{Protocol, Snapshot};
use serde_json::{Value, json};

const WORKLOADS: usize = 2_000;
/// Workloads of `ns-00`, the namespace expanded.
const BIG: usize = 200;
/// The other namespaces.
const OTHERS: usize = 39;
const NAMES: usize = 40;

fn base_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default()
}

fn namespace(w: usize) -> String {
    if w < BIG {
        "ns-00".to_owned()
    } else {
        format!("ns-{:02}", 1 + (w - BIG) % OTHERS)
    }
}

fn v4(base: [u8; 4], offset: usize) -> Ipv4Addr {
    let o = u32::try_from(offset).unwrap_or(u32::MAX);
    Ipv4Addr::from(u32::from(Ipv4Addr::from(base)).wrapping_add(o))
}

fn pod_ip(w: usize, i: usize) -> Ipv4Addr {
    v4([10, 64, 0, 0], w * 2 + i)
}

fn service_ip(w: usize) -> Ipv4Addr {
    v4([10, 96, 16, 0], w)
}

fn object<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("bench object matches its schema")
}

/// The workloads of namespace `ns`'s order, for neighbours.
fn members() -> BTreeMap<String, Vec<usize>> {
    let mut out: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for w in 0..WORKLOADS {
        out.entry(namespace(w)).or_default().push(w);
    }
    out
}

fn cluster() -> Cluster {
    let mut s = Snapshot::default();
    s.namespaces.push(k8s::namespace("kube-system", &[]));
    s.namespaces.push(k8s::namespace("default", &[]));
    for ns in members().keys() {
        s.namespaces.push(k8s::namespace(ns, &[]));
    }
    s.pods.push(
        k8s::pod("kube-system", "coredns-0")
            .labels(&[("k8s-app", "kube-dns")])
            .ip("10.63.255.2")
            .node("node-1")
            .port(Some("dns"), 53, "UDP")
            .build(),
    );
    s.services.push(
        k8s::service("kube-system", "kube-dns")
            .cluster_ip("10.96.0.10")
            .selector(&[("k8s-app", "kube-dns")])
            .port(Some("dns"), 53, "53", "UDP")
            .build(),
    );
    s.endpoint_slices.push(
        k8s::endpoint_slice("kube-system", "kube-dns", "IPv4")
            .port(Some("dns"), 53, "UDP")
            .endpoint("10.63.255.2", true, Some("coredns-0"))
            .build(),
    );
    s.services.push(
        k8s::service("default", "kubernetes")
            .cluster_ip("10.96.0.1")
            .port(Some("https"), 443, "6443", "TCP")
            .build(),
    );
    s.endpoint_slices.push(
        k8s::endpoint_slice("default", "kubernetes", "IPv4")
            .port(Some("https"), 6443, "TCP")
            .endpoint("172.18.0.2", true, None)
            .build(),
    );
    for w in 0..WORKLOADS {
        let ns = namespace(w);
        let app = format!("app-{w}");
        s.deployments.push(object(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": app, "namespace": ns, "uid": format!("d-{w}")},
            "spec": {"selector": {"matchLabels": {"app": app}},
                "template": {"metadata": {"labels": {"app": app}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}}}
        })));
        let mut slice = k8s::endpoint_slice(&ns, &app, "IPv4").port(Some("http"), 8080, "TCP");
        for i in 0..2 {
            let pod = format!("{app}-{i}");
            s.pods.push(
                k8s::pod(&ns, &pod)
                    .labels(&[("app", &app)])
                    .owner("Deployment", &app)
                    .ip(&pod_ip(w, i).to_string())
                    .node("node-1")
                    .port(Some("http"), 8080, "TCP")
                    .build(),
            );
            slice = slice.endpoint(&pod_ip(w, i).to_string(), true, Some(&pod));
        }
        s.services.push(
            k8s::service(&ns, &app)
                .cluster_ip(&service_ip(w).to_string())
                .selector(&[("app", &app)])
                .port(Some("http"), 80, "8080", "TCP")
                .build(),
        );
        s.endpoint_slices.push(slice.build());
    }
    Cluster::from_snapshot(&s).expect("bench cluster is valid")
}

/// External name `k`'s address for the `j`th of a workload's names.
fn named(k: usize, j: usize) -> IpAddr {
    IpAddr::V4(v4([203, 0, 113, 0], k * 3 + j % 3))
}

/// Every workload's 10 destinations, from both its pods, and the DNS answers naming them.
fn observations(cluster: &Cluster) -> Observations {
    let mut obs = Observations::default();
    obs.resolvers
        .insert(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)));
    let members = members();
    let t = base_time();
    for w in 0..WORKLOADS {
        let ns = namespace(w);
        let peers = &members[&ns];
        let me = peers.iter().position(|&p| p == w).unwrap_or(0);
        let mut dests: Vec<(IpAddr, u16, Protocol, Option<String>)> = vec![
            ([10, 96, 0, 10].into(), 53, Protocol::Udp, None),
            ([10, 96, 0, 1].into(), 443, Protocol::Tcp, None),
            (
                IpAddr::V4(pod_ip((w * 7 + 13) % WORKLOADS, 0)),
                8080,
                Protocol::Tcp,
                None,
            ),
            (
                IpAddr::V4(v4([198, 51, 100, 0], w % 200)),
                443,
                Protocol::Tcp,
                None,
            ),
        ];
        for j in 1..=3 {
            let peer = peers[(me + j) % peers.len()];
            dests.push((IpAddr::V4(service_ip(peer)), 80, Protocol::Tcp, None));
        }
        for j in 0..3 {
            let k = (w + j * 7) % NAMES;
            dests.push((
                named(k, j),
                443,
                Protocol::Tcp,
                Some(format!("api{k}.example.test")),
            ));
        }
        for i in 0..2 {
            let Some(pod) = cluster.pod_by_name(&ns, &format!("app-{w}-{i}")) else {
                continue;
            };
            for (n, (dst, port, protocol, name)) in dests.iter().enumerate() {
                let first = t - chrono::Duration::days(7) + chrono::Duration::seconds(n as i64);
                let last = t - chrono::Duration::hours((w % 48) as i64);
                let mut ev = Evidence::new(1 + (w + n) as u64 % 20, first, last);
                if let Some(name) = name {
                    ev.names.insert(name.clone());
                    obs.names_by_ip
                        .entry(*dst)
                        .or_default()
                        .insert(name.clone());
                    obs.history.entry((pod, name.clone())).or_default().insert(
                        *dst,
                        AddressSeen {
                            first_seen: first,
                            last_seen: last,
                            ttl: 30,
                            chain: Vec::new(),
                        },
                    );
                }
                let key = FlowKey {
                    pod,
                    dst: *dst,
                    port: *port,
                    protocol: *protocol,
                };
                obs.flows.insert(key, ev);
            }
        }
    }
    obs
}

fn policy(v: Value) -> NetworkPolicy {
    object(v)
}

/// Applied: a default deny in ns-01 to ns-04.
fn applied() -> Vec<NetworkPolicy> {
    (1..=4)
        .map(|n| {
            policy(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "default-deny", "namespace": format!("ns-{n:02}")},
                "spec": {"podSelector": {}, "policyTypes": ["Egress"]}
            }))
        })
        .collect()
}

/// Proposed, over the applied: every namespace may reach pods, DNS and half the named
/// addresses.
fn proposal() -> Vec<NetworkPolicy> {
    let mut out = applied();
    for ns in members().keys() {
        out.push(policy(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "leash-egress", "namespace": ns,
                "labels": {"app.kubernetes.io/managed-by": "leash"}},
            "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
                {"to": [{"namespaceSelector": {}}]},
                {"ports": [{"port": 53, "protocol": "UDP"}]},
                {"to": [{"ipBlock": {"cidr": "203.0.113.0/25"}}], "ports": [{"port": 443, "protocol": "TCP"}]}
            ]}
        })));
    }
    out
}

fn bench_map(c: &mut Criterion) {
    let cluster = cluster();
    let obs = observations(&cluster);
    let applied_objects = applied();
    let applied = PolicySet::new(&applied_objects).expect("applied policies compile");
    let proposed = PolicySet::new(&proposal()).expect("proposal compiles");
    let drifted: Vec<FlowRef> = (0..WORKLOADS)
        .step_by(100)
        .map(|w| FlowRef {
            namespace: namespace(w),
            workload: format!("Deployment/app-{w}"),
            address: named(w % NAMES, 0),
            port: 443,
            protocol: Protocol::Tcp,
        })
        .collect();
    let phases = rollout::phases(
        &cluster,
        &obs,
        &rollout::Policies {
            applied: &applied_objects,
            applied_set: &applied,
            proposed: Some(&proposed),
        },
        &rollout::Options {
            min_observation: chrono::Duration::hours(24),
            now: base_time(),
            namespaces: BTreeSet::new(),
        },
    );
    let config = ClassifierConfig::default();
    let inputs = Inputs {
        proposed: Some(&proposed),
        drifted: &drifted,
        phases: &phases,
        ..Inputs::new(&applied, &config, base_time())
    };
    let built: Map = map::build(&cluster, &obs, &inputs);
    let all = Filter::default();
    let overview = built.overview(&all);
    let ns = built.namespace("ns-00", &all);
    let detail = built.workload("ns-00", "Deployment/app-0");
    println!(
        "map: {} workloads, {} namespaces, {} flows, {} edges, {} destination groups; \
         overview {} nodes, {} edges, {} bytes; ns-00 {} nodes, {} edges, {} bytes; \
         app-0 {} rows, {} bytes",
        built.workloads().len(),
        members().len(),
        obs.flows.len(),
        built.edges().len(),
        built.destinations().len(),
        overview.nodes.len(),
        overview.edges.len(),
        json_len(&overview),
        ns.nodes.len(),
        ns.edges.len(),
        json_len(&ns),
        detail.as_ref().map_or(0, |d| d.destinations.len()),
        json_len(&detail),
    );

    let mut group = c.benchmark_group("map");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(2));
    group.bench_function("build (2,000 workloads, 40,000 flows)", |b| {
        b.iter(|| black_box(map::build(&cluster, &obs, &inputs)));
    });
    group.bench_function("overview", |b| b.iter(|| black_box(built.overview(&all))));
    group.bench_function("overview + JSON", |b| {
        b.iter(|| black_box(serde_json::to_vec(&built.overview(&all))))
    });
    let search = Filter {
        search: Some("api7".into()),
        ..Filter::default()
    };
    group.bench_function("overview, search + JSON", |b| {
        b.iter(|| black_box(serde_json::to_vec(&built.overview(&search))))
    });
    group.bench_function("namespace ns-00 (200 workloads)", |b| {
        b.iter(|| black_box(built.namespace("ns-00", &all)))
    });
    group.bench_function("namespace ns-00 (200 workloads) + JSON", |b| {
        b.iter(|| black_box(serde_json::to_vec(&built.namespace("ns-00", &all))))
    });
    group.bench_function("workload + JSON", |b| {
        b.iter(|| {
            black_box(serde_json::to_vec(
                &built.workload("ns-00", "Deployment/app-0"),
            ))
        })
    });
    group.finish();
}

/// A view's JSON length, printed with the figures.
fn json_len<T: serde::Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(0, |v| v.len())
}

criterion_group!(benches, bench_map);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
