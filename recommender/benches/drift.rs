//! Drift checking in `leash serve`: how many DNS answers per second one core checks (goal: at
//! least 100,000 per second per core).
//!
//! One answer is what [`leash::serve::drift::watch`] does per address of a stored batch's
//! DNS observation: [`Tracker::answer`] against the applied policies, minus the store and the
//! alert sinks.
//!
//! The cluster: 1,000 Deployments in 20 namespaces, two pods each, each with leash's egress
//! policy allowing its five names' four rotating addresses (`/128`s) on 443/TCP. The tracker
//! knows every workload's history and ports, and has checked every known address once (the
//! steady state of a running server). The answers: `LEASH_BENCH_ANSWERS` (default 1,000,000)
//! answers of random workloads for one of their names, 99% with a known address, 1% with a
//! new address outside the policy (each a drift). Throughput is in answers per second, on one
//! thread; the bench also prints it.
//!
//! `cargo bench -p leash --bench drift`

use std::hint::black_box;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

use chrono::{DateTime, Utc};
use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use leash::cluster::PodId;
use leash::drift::Tracker;
use leash::state::ClusterState;
use leash::store::WorkloadRef;
use leash_records::{Protocol, Snapshot};
use serde_json::{Value, json};

const NAMESPACES: usize = 20;
const WORKLOADS: usize = 1_000;
/// Names each workload resolves, out of [`NAMES`] in all.
const NAMES_PER_WORKLOAD: usize = 5;
const NAMES: usize = 200;
/// Addresses each name rotates through.
const ROTATING: usize = 4;

fn answers_wanted() -> usize {
    std::env::var("LEASH_BENCH_ANSWERS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(1_000_000)
}

fn time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default()
}

fn namespace(w: usize) -> String {
    format!("ns{}", w % NAMESPACES)
}

fn name(n: usize) -> String {
    format!("api-{n}.example.test")
}

fn names_of(w: usize) -> impl Iterator<Item = usize> {
    (0..NAMES_PER_WORKLOAD).map(move |j| (w * 3 + j * 41) % NAMES)
}

fn segment(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// The `r`th address of name `n`: 2001:db8:N::R (documentation prefix).
fn address(n: usize, r: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0xdb8,
        segment(n),
        0,
        0,
        0,
        0,
        segment(r + 1),
    ))
}

/// A new address, outside every policy: 2001:db8:ffff::/48.
fn new_address(i: usize) -> IpAddr {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    IpAddr::V6(Ipv6Addr::new(
        0x2001,
        0xdb8,
        0xffff,
        0,
        0,
        0,
        segment((i >> 16) as usize),
        segment((i & 0xffff) as usize),
    ))
}

fn object<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("bench object matches its schema")
}

/// Workload `w`'s egress policy: its names' addresses on 443/TCP.
fn policy(w: usize) -> NetworkPolicy {
    let to: Vec<Value> = names_of(w)
        .flat_map(|n| (0..ROTATING).map(move |r| address(n, r)))
        .map(|ip| json!({"ipBlock": {"cidr": format!("{ip}/128")}}))
        .collect();
    object(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("app-{w}-egress"), "namespace": namespace(w),
            "labels": {"app.kubernetes.io/managed-by": "leash"}},
        "spec": {"podSelector": {"matchLabels": {"app": format!("app-{w}")}},
            "policyTypes": ["Egress"],
            "egress": [{"to": to, "ports": [{"port": 443, "protocol": "TCP"}]}]}
    }))
}

fn state() -> ClusterState {
    let mut snapshot = Snapshot::default();
    for w in 0..WORKLOADS {
        snapshot.deployments.push(object(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": format!("app-{w}"), "namespace": namespace(w), "uid": format!("d-{w}")},
            "spec": {"selector": {"matchLabels": {"app": format!("app-{w}")}},
                "template": {"metadata": {"labels": {"app": format!("app-{w}")}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]}}}
        })));
        for i in 0..2 {
            let p = w * 2 + i;
            snapshot.pods.push(object(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("app-{w}-{i}"), "namespace": namespace(w),
                    "uid": format!("uid-{p}"), "labels": {"app": format!("app-{w}")},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                        "name": format!("app-{w}"), "uid": format!("d-{w}"), "controller": true}]},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "i"}]},
                "status": {"phase": "Running", "podIP": format!("10.244.{}.{}", p / 250, p % 250 + 1)}
            })));
        }
        snapshot.network_policies.push(policy(w));
    }
    ClusterState::build(&snapshot, 1)
}

/// Each workload: its reference and the pod standing in for it.
fn workloads(state: &ClusterState) -> Vec<(WorkloadRef, PodId)> {
    (0..WORKLOADS)
        .map(|w| {
            let pod = state
                .cluster
                .pod_by_name(&namespace(w), &format!("app-{w}-0"))
                .expect("the bench's pod");
            (
                WorkloadRef {
                    namespace: namespace(w),
                    kind: "Deployment".into(),
                    name: format!("app-{w}"),
                },
                pod,
            )
        })
        .collect()
}

/// One answer: (workload index, name, address).
type Answer = (usize, String, IpAddr);

/// xorshift64*: deterministic answers.
fn answers(n: usize) -> Vec<Answer> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        usize::try_from(x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33).unwrap_or(0)
    };
    (0..n)
        .map(|i| {
            let w = next() % WORKLOADS;
            let j = next() % NAMES_PER_WORKLOAD;
            let nm = names_of(w).nth(j).unwrap_or(0);
            let ip = if i % 100 == 99 {
                new_address(i)
            } else {
                address(nm, next() % ROTATING)
            };
            (w, name(nm), ip)
        })
        .collect()
}

/// A tracker in the steady state: every workload's history and ports learnt, every known
/// address checked once.
fn warmed(state: &ClusterState, workloads: &[(WorkloadRef, PodId)]) -> Tracker {
    let mut tracker = Tracker::new();
    for (w, (reference, pod)) in workloads.iter().enumerate() {
        for n in names_of(w) {
            let nm = name(n);
            tracker.learn_addresses(reference, &nm, (0..ROTATING).map(|r| address(n, r)));
            for r in 0..ROTATING {
                tracker.learn_flow(
                    reference,
                    address(n, r),
                    (Protocol::Tcp, 443),
                    std::iter::once(&nm),
                );
            }
            for r in 0..ROTATING {
                let drift = tracker.answer(
                    &state.cluster,
                    &state.policy_set,
                    reference,
                    &state.cluster.pods[*pod],
                    *pod,
                    &nm,
                    address(n, r),
                    time(),
                );
                assert!(drift.is_none(), "known addresses are allowed");
            }
        }
    }
    tracker
}

/// Checks every answer; returns the drifts found.
fn run(
    tracker: &mut Tracker,
    state: &ClusterState,
    workloads: &[(WorkloadRef, PodId)],
    answers: &[Answer],
) -> usize {
    let mut drifts = 0;
    for (w, nm, ip) in answers {
        let (reference, pod) = &workloads[*w];
        if tracker
            .answer(
                &state.cluster,
                &state.policy_set,
                reference,
                &state.cluster.pods[*pod],
                *pod,
                nm,
                *ip,
                time(),
            )
            .is_some()
        {
            drifts += 1;
        }
    }
    drifts
}

fn bench_drift(c: &mut Criterion) {
    let state = state();
    let workloads = workloads(&state);
    let n = answers_wanted();
    let answers = answers(n);

    // One timed pass, printed: the figure the README quotes.
    let mut tracker = warmed(&state, &workloads);
    let start = Instant::now();
    let drifts = run(&mut tracker, &state, &workloads, &answers);
    let took = start.elapsed().as_secs_f64();
    assert_eq!(drifts, n / 100, "every new address is a drift");
    println!(
        "drift: {n} answers ({drifts} drifts) in {took:.3} s: {:.0} answers/s on one core",
        n as f64 / took.max(f64::EPSILON)
    );

    let mut group = c.benchmark_group("drift");
    group.sample_size(10);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(format!("check {n} DNS answers, 1% new addresses"), |b| {
        b.iter_batched(
            || warmed(&state, &workloads),
            |mut tracker| black_box(run(&mut tracker, &state, &workloads, &answers)),
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, bench_drift);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
