//! Shadow enforcement in `leash serve`: how many stored flows are re-evaluated per second
//! after the proposed policies are reloaded (goal: at least 200,000 per second).
//!
//! One evaluation is what [`leash::serve::shadow::watch`] does after a reload, minus the
//! store read: lay the proposal over the applied policies and compile it
//! ([`shadow::proposed_set`]), then judge every stored flow against the applied and the
//! proposed set and fold them into the rollout board ([`shadow::evaluate`]).
//!
//! The cluster: 1,000 Deployments in 20 namespaces, two pods each; every tenth workload has
//! leash's applied policy, and the proposal holds one egress policy per workload (allowing
//! 443 and 53, so that flows to 8443 are denied) plus a default-deny per namespace. The
//! store: `LEASH_BENCH_FLOWS` flow observations (default 200,000) spread over the
//! workloads, to pod and external destinations. Throughput is in stored flows per second.
//!
//! `cargo bench -p leash --bench shadow`

use std::net::{IpAddr, Ipv4Addr};

use chrono::{DateTime, Duration, Utc};
use criterion::{Criterion, Throughput, criterion_group};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use leash::serve::shadow;
use leash::state::ClusterState;
use leash::store::{FlowObservation, WorkloadRef};
use leash_records::{Protocol, Snapshot};
use serde_json::{Value, json};

const NAMESPACES: usize = 20;
const WORKLOADS: usize = 1_000;

fn flows_wanted() -> usize {
    std::env::var("LEASH_BENCH_FLOWS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(200_000)
}

fn base_time() -> DateTime<Utc> {
    DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default()
}

fn namespace(w: usize) -> String {
    format!("ns{}", w % NAMESPACES)
}

fn pod_ip(p: usize) -> IpAddr {
    let p = u32::try_from(p).unwrap_or(u32::MAX);
    IpAddr::V4(Ipv4Addr::from(0x0AF4_0000u32 + p))
}

fn object<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("bench object matches its schema")
}

/// leash's egress policy for workload `w`: 443/TCP and 53/UDP anywhere.
fn policy(w: usize) -> NetworkPolicy {
    object(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("app-{w}-egress"), "namespace": namespace(w),
            "labels": {"app.kubernetes.io/managed-by": "leash"}},
        "spec": {"podSelector": {"matchLabels": {"app": format!("app-{w}")}},
            "policyTypes": ["Egress"],
            "egress": [{"ports": [{"port": 443, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]}]}
    }))
}

fn default_deny(ns: usize) -> NetworkPolicy {
    object(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "default-deny-egress", "namespace": format!("ns{ns}"),
            "labels": {"app.kubernetes.io/managed-by": "leash"}},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"]}
    }))
}

/// The cluster, with every tenth workload's policy applied.
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
                "status": {"phase": "Running", "podIP": pod_ip(p).to_string()}
            })));
        }
        if w % 10 == 0 {
            snapshot.network_policies.push(policy(w));
        }
    }
    ClusterState::build(&snapshot, 1)
}

/// The proposal: every workload's policy and every namespace's default-deny.
fn proposal() -> Vec<NetworkPolicy> {
    (0..WORKLOADS)
        .map(policy)
        .chain((0..NAMESPACES).map(default_deny))
        .collect()
}

/// `n` stored flows: each workload dials pods of other workloads and external addresses,
/// on 443, 53/UDP or 8443.
fn flows(n: usize) -> Vec<FlowObservation> {
    let t = base_time();
    (0..n)
        .map(|i| {
            let w = i % WORKLOADS;
            let k = i / WORKLOADS;
            let (protocol, port) = match k % 3 {
                0 => (Protocol::Tcp, 443),
                1 => (Protocol::Udp, 53),
                _ => (Protocol::Tcp, 8443),
            };
            let dst = if k.is_multiple_of(2) {
                pod_ip((w * 7 + k) % (WORKLOADS * 2))
            } else {
                let k = u32::try_from(k).unwrap_or(u32::MAX);
                IpAddr::V4(Ipv4Addr::from(0xCB00_7100u32.wrapping_add(k)))
            };
            FlowObservation {
                workload: WorkloadRef {
                    namespace: namespace(w),
                    kind: "Deployment".into(),
                    name: format!("app-{w}"),
                },
                protocol,
                dst,
                port,
                count: 3,
                first_seen: t - Duration::days(10),
                last_seen: t,
                names: Default::default(),
                pods: Default::default(),
                established: 0,
                failed: 0,
            }
        })
        .collect()
}

fn bench_shadow(c: &mut Criterion) {
    let state = state();
    let given = proposal();
    let n = flows_wanted();
    let stored = flows(n);
    let mut group = c.benchmark_group("shadow");
    group.sample_size(10);
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(format!("reload: re-evaluate {n} stored flows"), |b| {
        b.iter(|| {
            let given = leash::rollout::board::State {
                network_policies: &given,
                cluster_policies: &[],
            };
            let proposed = shadow::proposed_set(&state, &given).expect("proposal compiles");
            shadow::evaluate(
                &state,
                Some((&proposed, &given)),
                &stored,
                &[],
                Duration::hours(24),
                base_time(),
            )
            .expect("the stage evaluates")
        });
    });
    group.finish();
}

criterion_group!(benches, bench_shadow);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
