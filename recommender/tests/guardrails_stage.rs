//! The guardrails as the first stage of a rollout (`guardrails::stage`): each phase on the
//! shop fixture with guardrails from `guardrails::propose`, the workloads a proposal would
//! break (with their flows), what applied guardrails deny, and foreign ClusterNetworkPolicies
//! left alone; and the proposed state's tiers of the rollout board.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use leash::classify::ClassifierConfig;
use leash::cnp::ClusterNetworkPolicy;
use leash::guardrails::stage::{self, Input, Phase, Stage};
use leash::guardrails::{self, Guardrails, Options, Stack};
use leash::observations::Observations;
use leash::recommend;
use leash::rollout::board;
use support::recommend::{Fx, Run, deployment_pod, flow, run};

fn shop() -> (Fx, Vec<leash_records::Record>) {
    support::recommend::small_shop()
}

/// The guardrails proposed for `r` over `network_policies` (nothing else applied).
fn propose(r: &Run, network_policies: &[NetworkPolicy]) -> Guardrails {
    guardrails::propose(
        &r.cluster,
        &r.obs,
        &ClassifierConfig::default(),
        &Options::default(),
        &Stack {
            network_policies,
            cluster_policies: &[],
        },
    )
    .expect("proposes")
}

fn stage_of(
    r: &Run,
    obs: &Observations,
    network_policies: &[NetworkPolicy],
    cluster_policies: &[ClusterNetworkPolicy],
    proposed: Option<&[ClusterNetworkPolicy]>,
) -> Stage {
    stage::stage(
        &r.cluster,
        obs,
        &Input {
            network_policies,
            cluster_policies,
            proposed,
        },
    )
    .expect("evaluates")
}

/// `(namespace/workload, [destination])` of a stage's list.
fn listed(w: &[stage::WorkloadFlows]) -> Vec<(String, Vec<String>)> {
    w.iter()
        .map(|w| {
            (
                format!("{}/{}", w.namespace, w.workload),
                w.flows.iter().map(|f| f.destination()).collect(),
            )
        })
        .collect()
}

fn owned(rows: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
    rows.iter()
        .map(|(w, f)| ((*w).to_owned(), f.iter().map(|s| (*s).to_owned()).collect()))
        .collect()
}

/// A ClusterNetworkPolicy from YAML `spec`, without leash's label.
fn cnp(name: &str, spec: &str) -> ClusterNetworkPolicy {
    let spec: serde_json::Value = serde_norway::from_str(spec).expect("YAML spec");
    serde_json::from_value(serde_json::json!({
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("a ClusterNetworkPolicy")
}

fn names(ps: &[ClusterNetworkPolicy]) -> Vec<&str> {
    ps.iter().map(|p| p.name()).collect()
}

#[test]
fn without_guardrails_applied_or_proposed_the_stage_is_absent() {
    let (fx, records) = shop();
    let r = run(&fx, &records, &recommend::Options::default());
    let s = stage_of(&r, &r.obs, &[], &[], None);
    assert_eq!(s.phase, Phase::Absent);
    assert!(s.applied.is_empty() && s.proposed.is_empty());
    assert!(s.breaks.is_empty() && s.denied.is_empty());
    assert!(s.why().contains("leash guardrails"), "{}", s.why());
}

#[test]
fn guardrails_proposed_over_the_applied_state_are_ready() {
    // Nothing applied: the Baseline defers shop, whose egress no NetworkPolicy locks down.
    let (fx, records) = shop();
    let r = run(&fx, &records, &recommend::Options::default());
    let g = propose(&r, &[]);
    assert!(g.deferred.contains_key("shop"), "{:?}", g.deferred);
    let s = stage_of(&r, &r.obs, &[], &[], Some(&g.policies));
    assert_eq!(s.phase, Phase::Ready, "{s:?}");
    assert!(s.breaks.is_empty(), "{s:?}");
    assert!(s.applied.is_empty());
    assert_eq!(
        s.proposed,
        [
            "guardrails-default-deny",
            "guardrails-dns",
            "guardrails-metadata"
        ]
    );
    assert!(
        s.why().starts_with("3 proposed guardrails break no"),
        "{}",
        s.why()
    );
}

#[test]
fn guardrails_not_deferred_would_break_every_workload_with_traffic_they_deny() {
    // Proposed over leash's NetworkPolicies, but those are not applied: the Baseline default
    // deny covers shop, whose pods no NetworkPolicy selects yet. web's call to api and to
    // 203.0.113.7 and api's metadata call break; DNS (the Baseline accept) and batch don't.
    let (fx, records) = shop();
    let r = run(&fx, &records, &recommend::Options::default());
    let g = propose(&r, &r.policies);
    assert!(g.deferred.is_empty(), "{:?}", g.deferred);
    let s = stage_of(&r, &r.obs, &[], &[], Some(&g.policies));
    assert_eq!(s.phase, Phase::WouldBreak, "{s:?}");
    assert_eq!(
        listed(&s.breaks),
        owned(&[
            ("shop/Deployment/api", &["169.254.169.254:80/TCP"]),
            (
                "shop/Deployment/web",
                &["10.244.1.11:8080/TCP", "203.0.113.7:443/TCP"]
            ),
        ])
    );
    let web = &s.breaks[1];
    assert_eq!(web.flows[1].events, 5);
    assert_eq!(web.flows[1].names, ["api.example.test"]);
    assert!(
        s.why()
            .contains("would break the observed traffic of 2 workloads"),
        "{}",
        s.why()
    );
    // Once leash's NetworkPolicies are applied, the same guardrails break nothing.
    let s = stage_of(&r, &r.obs, &r.policies, &[], Some(&g.policies));
    assert_eq!(s.phase, Phase::Ready, "{s:?}");
}

#[test]
fn applied_guardrails_equal_to_the_proposal_that_deny_nothing_are_enforced() {
    let (fx, records) = shop();
    let r = run(&fx, &records, &recommend::Options::default());
    let g = propose(&r, &[]);
    for proposed in [None, Some(&g.policies[..])] {
        let s = stage_of(&r, &r.obs, &[], &g.policies, proposed);
        assert_eq!(s.phase, Phase::Enforced, "{s:?}");
        assert_eq!(s.applied, names(&g.policies));
        assert!(s.breaks.is_empty() && s.denied.is_empty(), "{s:?}");
    }
}

#[test]
fn applied_guardrails_that_deny_a_new_flow_have_drifted() {
    // batch never used the metadata address, so the metadata deny covers it; then its worker
    // calls it.
    let (fx, mut records) = shop();
    let r = run(&fx, &records, &recommend::Options::default());
    let g = propose(&r, &[]);
    records.push(flow(
        "batch",
        &deployment_pod("worker"),
        "TCP",
        "169.254.169.254",
        80,
        4,
        &[],
    ));
    let mut obs = Observations::default();
    for rec in &records {
        obs.add(rec, &r.cluster).expect("fixture pods");
    }
    let s = stage_of(&r, &obs, &[], &g.policies, None);
    assert_eq!(s.phase, Phase::Drifted, "{s:?}");
    assert_eq!(
        listed(&s.denied),
        owned(&[("batch/Deployment/worker", &["169.254.169.254:80/TCP"])])
    );
    assert_eq!(s.denied[0].flows[0].events, 4);
    assert!(
        s.why()
            .contains("deny observed flows of 1 workload: batch/Deployment/worker (1 flow)"),
        "{}",
        s.why()
    );
}

#[test]
fn foreign_cluster_network_policies_stay_in_both_states() {
    // A platform team's Admin Accept of web's external call, named like leash's guardrails but
    // without leash's label: not a guardrail, so the proposal does not replace it, and the
    // Baseline never sees that flow.
    let (fx, records) = shop();
    let r = run(&fx, &records, &recommend::Options::default());
    let foreign = cnp(
        "guardrails-partner",
        "{tier: Admin, priority: 5, subject: {namespaces: {}}, egress: [{action: Accept, to: [{networks: [203.0.113.7/32]}]}]}",
    );
    assert!(!guardrails::is_guardrail(&foreign));
    let g = propose(&r, &r.policies);
    assert!(g.policies.iter().all(guardrails::is_guardrail));
    let applied = [foreign.clone()];
    let s = stage_of(&r, &r.obs, &[], &applied, Some(&g.policies));
    assert!(s.applied.is_empty(), "not leash's: {s:?}");
    assert_eq!(s.phase, Phase::WouldBreak);
    // 203.0.113.7 stays accepted by the foreign policy: only the other two flows break.
    assert_eq!(
        listed(&s.breaks),
        owned(&[
            ("shop/Deployment/api", &["169.254.169.254:80/TCP"]),
            ("shop/Deployment/web", &["10.244.1.11:8080/TCP"]),
        ])
    );

    // The board's proposed tiers: given guardrails replace leash's applied ones (an old one
    // no longer proposed is gone), the foreign one stays; a given foreign policy replaces the
    // applied one of its name.
    let mut old = g.policies[0].clone();
    old.metadata.name = Some("guardrails-old".into());
    let applied = [foreign.clone(), old];
    let tiers = board::proposed_tiers(&applied, &g.policies);
    assert_eq!(
        names(&tiers),
        [
            "guardrails-default-deny",
            "guardrails-dns",
            "guardrails-metadata",
            "guardrails-partner"
        ]
    );
    let replaced = cnp(
        "guardrails-partner",
        "{tier: Admin, priority: 6, subject: {namespaces: {}}, egress: [{action: Accept, to: [{networks: [203.0.113.7/32]}]}]}",
    );
    let tiers = board::proposed_tiers(&applied, std::slice::from_ref(&replaced));
    assert_eq!(names(&tiers), ["guardrails-old", "guardrails-partner"]);
    assert_eq!(tiers[1].spec.priority, 6);
    assert!(board::given_guardrails(&[replaced]).is_none());
}

#[test]
fn the_board_evaluates_workloads_against_the_applied_cluster_network_policies() {
    // The applied guardrails deny batch's new metadata call: the workload is drifted on the
    // board too, and the stage comes with it.
    let (fx, mut records) = shop();
    let r = run(&fx, &records, &recommend::Options::default());
    let g = propose(&r, &[]);
    records.push(flow(
        "batch",
        &deployment_pod("worker"),
        "TCP",
        "169.254.169.254",
        80,
        1,
        &[],
    ));
    let mut obs = Observations::default();
    for rec in &records {
        obs.add(rec, &r.cluster).expect("fixture pods");
    }
    let applied = board::State {
        network_policies: &[],
        cluster_policies: &g.policies,
    };
    let opts = leash::rollout::Options {
        min_observation: chrono::Duration::zero(),
        now: chrono::Utc::now(),
        namespaces: Default::default(),
    };
    let b = board::board(&r.cluster, &obs, &applied, None, &opts).expect("evaluates");
    assert_eq!(b.stage.phase, Phase::Drifted);
    let worker = b
        .workloads
        .iter()
        .find(|w| w.workload == "Deployment/worker")
        .expect("on the board");
    assert_eq!(worker.phase, leash::rollout::Phase::Drifted, "{worker:?}");
    let text = leash::rollout::render(&b.stage, &b.workloads, leash::rollout::Format::Table);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("STAGE 1  guardrails  drifted  "),
        "{text}"
    );
    assert_eq!(
        lines[1],
        "  denied  batch/Deployment/worker  1 flow: 169.254.169.254:80/TCP (1 event)"
    );
    assert_eq!(lines[2], "STAGE 2  namespaces");
    assert!(lines[3].starts_with("NAMESPACE "), "{text}");
    assert_eq!(
        lines.last().copied(),
        Some(leash::rollout::render::STAGE_ORDER_LINE)
    );
    let json = leash::rollout::render(&b.stage, &b.workloads, leash::rollout::Format::Json);
    let first = json.lines().next().expect("the stage");
    assert!(
        first.starts_with(r#"{"kind":"guardrails","phase":"drifted","applied":["#),
        "{first}"
    );
    assert!(
        json.lines()
            .skip(1)
            .all(|l| l.starts_with(r#"{"kind":"workload","namespace":"#)),
        "{json}"
    );
}
