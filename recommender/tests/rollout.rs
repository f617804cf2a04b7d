//! Rollout phases on fixture clusters: each phase, the order of precedence between them,
//! and the two rules of what does not count (a ClusterNetworkPolicy never makes a workload
//! `unmanaged`; a namespace's default-deny alone never makes it `enforced`).

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use leash::cluster::Cluster;
use leash::eval::PolicySet;
use leash::observations::Observations;
use leash::policy_state::{MANAGED_BY, combine};
use leash::rollout::{self, Phase, Policies, WorkloadStatus};
use leash_records::Record;
use support::eval::policy;
use support::recommend::{Fx, deployment_pod as pod, deployments, dns, flow};

/// The fixture records' flows were first seen at 2026-11-20T00:00:00Z.
fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

/// A week after the fixture's first evidence.
fn a_week_later() -> DateTime<Utc> {
    at("2026-11-27T00:00:00Z")
}

/// `ns/name` with leash's managed-by label.
fn managed(id: &str, spec: &str) -> NetworkPolicy {
    let mut p = policy(id, spec);
    p.metadata.labels = Some(BTreeMap::from([(
        MANAGED_BY.0.to_owned(),
        MANAGED_BY.1.to_owned(),
    )]));
    p
}

/// shop: six Deployments, one per phase, each dialing one or two external addresses.
fn shop() -> Fx {
    deployments("shop", &["legacy", "cart", "web", "fresh", "api", "batch"])
}

/// Every workload's flows: 443 to its own address; `cart` also dials 5432, `api` also 8443.
fn records() -> Vec<Record> {
    let mut out = Vec::new();
    for (i, name) in ["legacy", "cart", "web", "api", "batch"].iter().enumerate() {
        out.push(flow(
            "shop",
            &pod(name),
            "TCP",
            &format!("203.0.113.{}", i + 1),
            443,
            4,
            &[],
        ));
    }
    out.push(flow(
        "shop",
        &pod("cart"),
        "TCP",
        "198.51.100.7",
        5432,
        2,
        &[],
    ));
    out.push(flow(
        "shop",
        &pod("api"),
        "TCP",
        "203.0.113.4",
        8443,
        3,
        &["api.partner.test"],
    ));
    out
}

/// `fresh` was first seen only at the `now` of the test: observed for 0 seconds.
fn fresh_record(now: DateTime<Utc>) -> Record {
    let mut r = flow("shop", &pod("fresh"), "TCP", "203.0.113.9", 443, 1, &[]);
    if let Record::Flow(f) = &mut r {
        f.first_seen = now;
        f.last_seen = now;
    }
    r
}

fn observations(cluster: &Cluster, records: &[Record]) -> Observations {
    let mut obs = Observations::default();
    for r in records {
        obs.add(r, cluster).expect("records name fixture pods");
    }
    obs
}

/// An egress policy for `app=name` allowing TCP 443 only.
const ALLOW_443: &str = "{podSelector: {matchLabels: {app: NAME}}, policyTypes: [Egress], egress: [{ports: [{port: 443}]}]}";

fn allow_443(id: &str, app: &str, leash: bool) -> NetworkPolicy {
    let spec = ALLOW_443.replace("NAME", app);
    if leash {
        managed(id, &spec)
    } else {
        policy(id, &spec)
    }
}

/// The applied policies: a hand-written one on `legacy`, leash's on `cart` and `web`.
fn applied() -> Vec<NetworkPolicy> {
    vec![
        allow_443("shop/legacy-egress", "legacy", false),
        allow_443("shop/cart-egress", "cart", true),
        allow_443("shop/web-egress", "web", true),
    ]
}

/// The proposal: 443 for `api` (which also dials 8443), all of `batch`'s and `fresh`'s.
fn proposal() -> Vec<NetworkPolicy> {
    vec![
        allow_443("shop/api-egress", "api", true),
        allow_443("shop/batch-egress", "batch", true),
        managed(
            "shop/fresh-egress",
            "{podSelector: {matchLabels: {app: fresh}}, policyTypes: [Egress], egress: [{ports: [{port: 80}]}]}",
        ),
    ]
}

fn statuses(
    cluster: &Cluster,
    obs: &Observations,
    applied: &[NetworkPolicy],
    proposed: Option<&[NetworkPolicy]>,
    now: DateTime<Utc>,
) -> Vec<WorkloadStatus> {
    let applied_set = PolicySet::new(applied).expect("applied policies compile");
    let proposed = proposed
        .map(|given| PolicySet::new(&combine(applied, given).objects).expect("proposal compiles"));
    rollout::phases(
        cluster,
        obs,
        &Policies {
            applied,
            applied_set: &applied_set,
            proposed: proposed.as_ref(),
        },
        &rollout::Options {
            min_observation: Duration::hours(24),
            now,
            namespaces: Default::default(),
        },
    )
}

fn phase_of<'a>(s: &'a [WorkloadStatus], workload: &str) -> &'a WorkloadStatus {
    s.iter()
        .find(|w| w.workload == workload)
        .unwrap_or_else(|| panic!("{workload} not on the board: {s:#?}"))
}

fn phases(s: &[WorkloadStatus]) -> Vec<(&str, Phase)> {
    s.iter().map(|w| (w.workload.as_str(), w.phase)).collect()
}

#[test]
fn each_phase_first_that_applies() {
    let fx = shop();
    let cluster = fx.cluster();
    let now = a_week_later();
    let mut recs = records();
    recs.push(fresh_record(now - Duration::hours(2)));
    let obs = observations(&cluster, &recs);
    let s = statuses(&cluster, &obs, &applied(), Some(&proposal()), now);
    assert_eq!(
        phases(&s),
        [
            ("Deployment/api", Phase::WouldDeny),
            ("Deployment/batch", Phase::Ready),
            // Its 5432 flow is denied by leash's applied policy: drifted before enforced.
            ("Deployment/cart", Phase::Drifted),
            // The proposal denies its flow too, but it was seen only two hours ago.
            ("Deployment/fresh", Phase::Observing),
            // A hand-written egress policy selects it: unmanaged, though it denies nothing.
            ("Deployment/legacy", Phase::Unmanaged),
            ("Deployment/web", Phase::Enforced),
        ],
        "{s:#?}"
    );

    let api = phase_of(&s, "Deployment/api");
    assert_eq!(api.observed_for_seconds, 7 * 86_400);
    assert_eq!(api.would_deny.len(), 1, "{api:#?}");
    let d = &api.would_deny[0];
    assert_eq!(d.destination(), "203.0.113.4:8443/TCP");
    assert_eq!(d.events, 3);
    assert_eq!(d.names, ["api.partner.test"]);
    assert_eq!(d.last_seen, at("2026-11-24T00:00:00Z"));
    assert!(api.denied.is_empty());
    assert!(api.why().contains("203.0.113.4:8443/TCP"), "{}", api.why());

    let cart = phase_of(&s, "Deployment/cart");
    assert_eq!(
        cart.denied
            .iter()
            .map(|f| f.destination())
            .collect::<Vec<_>>(),
        ["198.51.100.7:5432/TCP"]
    );
    assert_eq!(cart.policies, ["shop/cart-egress"]);
    assert_eq!(
        phase_of(&s, "Deployment/legacy").policies,
        ["shop/legacy-egress"]
    );
    assert_eq!(phase_of(&s, "Deployment/web").policies, ["shop/web-egress"]);
    let fresh = phase_of(&s, "Deployment/fresh");
    assert_eq!(fresh.observed_for_seconds, 2 * 3600);
    assert_eq!(fresh.would_deny.len(), 1, "listed even while observing");

    let json = rollout::to_json_lines(&s);
    let first = json.lines().next().expect("one line per workload");
    assert_eq!(
        first,
        r#"{"kind":"workload","namespace":"shop","workload":"Deployment/api","phase":"would-deny","observed_for_seconds":604800,"would_deny":[{"dst":"203.0.113.4","dst_port":8443,"protocol":"TCP","events":3,"last_seen":"2026-11-24T00:00:00Z","names":["api.partner.test"]}],"denied":[],"policies":[]}"#
    );
    assert_eq!(json.lines().count(), 6);
}

#[test]
fn precedence_follows_the_table_order() {
    let fx = shop();
    let cluster = fx.cluster();
    let now = a_week_later();
    let obs = observations(&cluster, &records());
    // legacy is both unmanaged and drifted (its foreign policy denies what it dials on 8080).
    let mut recs = records();
    recs.push(flow(
        "shop",
        &pod("legacy"),
        "TCP",
        "203.0.113.1",
        8080,
        1,
        &[],
    ));
    let with_denied = observations(&cluster, &recs);
    let s = statuses(&cluster, &with_denied, &applied(), None, now);
    let legacy = phase_of(&s, "Deployment/legacy");
    assert_eq!(legacy.phase, Phase::Unmanaged);
    assert_eq!(legacy.denied.len(), 1, "denied, but unmanaged comes first");

    // enforced before observing: web, seen only an hour before `now`, is still enforced.
    let early = at("2026-11-20T01:00:00Z");
    let s = statuses(&cluster, &obs, &applied(), Some(&proposal()), early);
    assert_eq!(phase_of(&s, "Deployment/web").phase, Phase::Enforced);
    // observing before would-deny and ready.
    assert_eq!(phase_of(&s, "Deployment/api").phase, Phase::Observing);
    assert_eq!(phase_of(&s, "Deployment/batch").phase, Phase::Observing);
    assert_eq!(phase_of(&s, "Deployment/api").observed_for_seconds, 3600);
}

#[test]
fn without_a_proposal_there_is_no_would_deny() {
    let fx = shop();
    let cluster = fx.cluster();
    let obs = observations(&cluster, &records());
    let s = statuses(&cluster, &obs, &applied(), None, a_week_later());
    let api = phase_of(&s, "Deployment/api");
    assert_eq!(api.phase, Phase::Ready);
    assert!(api.would_deny.is_empty());
    assert!(s.iter().all(|w| w.phase != Phase::WouldDeny), "{s:#?}");
    // A workload never seen is observing, for 0 seconds.
    let fresh = phase_of(&s, "Deployment/fresh");
    assert_eq!(
        (fresh.phase, fresh.observed_for_seconds),
        (Phase::Observing, 0)
    );
}

#[test]
fn dns_evidence_counts_as_observed() {
    let fx = shop();
    let cluster = fx.cluster();
    // fresh made no flow, but asked the resolver on 2026-11-22.
    let obs = observations(
        &cluster,
        &[dns(
            "shop",
            &pod("fresh"),
            "10.96.0.10",
            "db.test",
            &["203.0.113.50"],
        )],
    );
    let s = statuses(&cluster, &obs, &[], None, a_week_later());
    let fresh = phase_of(&s, "Deployment/fresh");
    assert_eq!(fresh.phase, Phase::Ready);
    assert_eq!(fresh.observed_for_seconds, 5 * 86_400);
}

#[test]
fn a_cluster_network_policy_never_makes_a_workload_unmanaged() {
    // The snapshot as a user gives it: the ClusterNetworkPolicy is read apart
    // (`Snapshot::cluster_network_policies`), so the applied NetworkPolicies never hold it.
    let text = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Namespace
  metadata: {name: shop, labels: {kubernetes.io/metadata.name: shop}}
- apiVersion: v1
  kind: Pod
  metadata: {name: batch, namespace: shop, labels: {app: batch}}
  spec: {nodeName: n1, containers: [{name: c, image: i}]}
  status: {phase: Running, podIP: 10.0.1.20, podIPs: [{ip: 10.0.1.20}]}
- apiVersion: policy.networking.k8s.io/v1alpha2
  kind: ClusterNetworkPolicy
  metadata: {name: deny-egress}
  spec:
    tier: Admin
    priority: 10
    subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: batch}}}}
    egress: [{name: deny-all, action: Deny, to: [{networks: ["0.0.0.0/0"]}]}]
"#;
    let snap = leash_records::snapshot::parse_str(text, std::path::Path::new("cluster.yaml"))
        .expect("snapshot parses");
    assert_eq!(snap.cluster_network_policies.len(), 1);
    assert!(snap.ignored.is_empty(), "{:?}", snap.ignored);
    assert!(snap.network_policies.is_empty());
    let cluster = Cluster::from_snapshot(&snap).expect("model");
    let obs = observations(
        &cluster,
        &[flow("shop", "batch", "TCP", "203.0.113.5", 443, 1, &[])],
    );
    let s = statuses(&cluster, &obs, &snap.network_policies, None, a_week_later());
    assert_eq!(phases(&s), [("Pod/batch", Phase::Ready)]);
}

#[test]
fn a_namespace_default_deny_alone_does_not_make_a_workload_enforced() {
    let fx = shop();
    let cluster = fx.cluster();
    let deny = managed(
        "shop/default-deny-egress",
        "{podSelector: {}, policyTypes: [Egress]}",
    );
    // fresh has no flow to be denied: only the default-deny selects it.
    let s = statuses(
        &cluster,
        &Observations::default(),
        std::slice::from_ref(&deny),
        None,
        a_week_later(),
    );
    let fresh = phase_of(&s, "Deployment/fresh");
    assert_eq!(fresh.phase, Phase::Observing, "{fresh:#?}");
    assert!(fresh.policies.is_empty());
    // With leash's own workload policy besides it, it is enforced.
    let own = allow_443("shop/fresh-egress", "fresh", true);
    let s = statuses(
        &cluster,
        &Observations::default(),
        &[deny, own],
        None,
        a_week_later(),
    );
    let fresh = phase_of(&s, "Deployment/fresh");
    assert_eq!(fresh.phase, Phase::Enforced);
    assert_eq!(fresh.policies, ["shop/fresh-egress"]);
}

#[test]
fn the_table_names_each_phase_and_why() {
    let fx = shop();
    let cluster = fx.cluster();
    let obs = observations(&cluster, &records());
    let s = statuses(
        &cluster,
        &obs,
        &applied(),
        Some(&proposal()),
        a_week_later(),
    );
    let table = rollout::to_table(&s);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAMESPACE  WORKLOAD"), "{table}");
    assert!(
        lines[1].starts_with("shop       Deployment/api     would-deny  7d 0h"),
        "{table}"
    );
    assert!(
        lines[1].ends_with(
            "the proposal denies 1 recent flow: 203.0.113.4:8443/TCP api.partner.test (3 events)"
        ),
        "{table}"
    );
    assert_eq!(
        lines.last().copied(),
        Some("6 workloads: 1 unmanaged, 1 drifted, 1 enforced, 1 observing, 1 would-deny, 1 ready")
    );
    assert_eq!(table, rollout::to_table(&s), "deterministic");
}

#[test]
fn a_flow_to_a_service_without_backends_is_no_policy_denial() {
    let mut fx = shop();
    // A Service whose backends are gone: kube-proxy rejects the connection, no policy does.
    fx.service(
        "shop",
        "gone",
        "10.96.0.50",
        None,
        &[(
            "http",
            80,
            "TCP",
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080),
        )],
    );
    let cluster = fx.cluster();
    let mut recs = records();
    recs.push(flow("shop", &pod("web"), "TCP", "10.96.0.50", 80, 2, &[]));
    recs.push(flow("shop", &pod("batch"), "TCP", "10.96.0.50", 80, 2, &[]));
    let obs = observations(&cluster, &recs);
    let s = statuses(
        &cluster,
        &obs,
        &applied(),
        Some(&proposal()),
        a_week_later(),
    );
    let web = phase_of(&s, "Deployment/web");
    assert_eq!(web.phase, Phase::Enforced, "{web:#?}");
    let batch = phase_of(&s, "Deployment/batch");
    assert_eq!(batch.phase, Phase::Ready, "{batch:#?}");
    assert!(batch.would_deny.is_empty());
}
