//! `guardrails`: the proposed ClusterNetworkPolicies are valid under the CRD, the Admin tier
//! denies the metadata address where it was never used, the Baseline tier accepts DNS to the
//! discovered resolvers, the limits split into numbered policies, and the self-check over the
//! whole stack passes on the shop (with leash's proposal) and fails without it.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeSet;

use ipnet::IpNet;
use leash::classify::ClassifierConfig;
use leash::cnp::{ClusterNetworkPolicy, Tier};
use leash::guardrails::{self, Error, Guardrails, Options, Stack};
use leash::recommend;
use support::recommend::{Fx, deployment_pod, dns, flow, run};

const STANDARD: &str = "policy.networking.k8s.io_clusternetworkpolicies.standard.yaml";
const EXPERIMENTAL: &str = "policy.networking.k8s.io_clusternetworkpolicies.experimental.yaml";

fn shop() -> (Fx, Vec<leash_records::Record>) {
    support::recommend::small_shop()
}

/// The guardrails over leash's proposal (the final state of a rollout).
fn propose(
    fx: &Fx,
    records: &[leash_records::Record],
    opts: &Options,
) -> (support::recommend::Run, Guardrails) {
    let r = run(fx, records, &recommend::Options::default());
    let g = guardrails::propose(
        &r.cluster,
        &r.obs,
        &ClassifierConfig::default(),
        opts,
        &Stack {
            network_policies: &r.policies,
            cluster_policies: &[],
        },
    )
    .expect("proposes");
    (r, g)
}

/// The stack of the self-check: leash's proposal.
fn with_proposal(r: &support::recommend::Run) -> Stack<'_> {
    Stack {
        network_policies: &r.policies,
        cluster_policies: &[],
    }
}

fn by_name<'a>(g: &'a Guardrails, name: &str) -> &'a ClusterNetworkPolicy {
    g.policies
        .iter()
        .find(|p| p.name() == name)
        .unwrap_or_else(|| {
            panic!(
                "{name} among {:?}",
                g.policies.iter().map(|p| p.name()).collect::<Vec<_>>()
            )
        })
}

/// Valid under the standard CRD (hence the experimental one, a superset) and its CEL rules.
fn crd_valid(g: &Guardrails) {
    for file in [STANDARD, EXPERIMENTAL] {
        let schema = support::crd::schema(file, "v1alpha2");
        for p in &g.policies {
            let v = serde_json::to_value(p).expect("serializes");
            let problems = support::crd::validate(&schema, &v);
            assert!(problems.is_empty(), "{file}: {}: {problems:?}", p.name());
        }
    }
    for p in &g.policies {
        leash::cnp::validate(p).expect("passes the CEL rules");
        // Standard channel only: no experimental peers.
        assert!(
            p.spec
                .egress
                .iter()
                .flat_map(|r| &r.to)
                .all(|peer| peer.nodes.is_none() && peer.domain_names.is_none()),
            "{}",
            p.name()
        );
    }
}

#[test]
fn shop_guardrails_are_valid_and_pass_the_self_check_with_the_proposal() {
    let (fx, records) = shop();
    let (r, g) = propose(&fx, &records, &Options::default());
    crd_valid(&g);
    let names: Vec<&str> = g.policies.iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        [
            "guardrails-default-deny",
            "guardrails-dns",
            "guardrails-metadata"
        ]
    );

    // The metadata deny leaves out shop, which used it, and says why.
    let meta = by_name(&g, "guardrails-metadata");
    assert_eq!(meta.spec.tier, Tier::Admin);
    let subject = serde_json::to_value(&meta.spec.subject).expect("json");
    let values = &subject["namespaces"]["matchExpressions"][0]["values"];
    assert_eq!(values, &serde_json::json!(["batch", "kube-system"]));
    assert!(
        g.justifications
            .iter()
            .any(|j| j.text.contains("namespace shop left out") && j.text.contains("shop/api"))
    );

    // Baseline: every namespace but kube-system; DNS to the CoreDNS pods on UDP and TCP 53.
    let deny = by_name(&g, "guardrails-default-deny");
    assert_eq!(deny.spec.tier, Tier::Baseline);
    let subject = serde_json::to_value(&deny.spec.subject).expect("json");
    assert_eq!(
        subject["namespaces"]["matchExpressions"][0]["operator"],
        "NotIn"
    );
    assert_eq!(
        subject["namespaces"]["matchExpressions"][0]["values"],
        serde_json::json!(["kube-system"])
    );
    let dns_rule = serde_json::to_value(&by_name(&g, "guardrails-dns").spec.egress).expect("json");
    assert_eq!(
        dns_rule[0]["to"][0]["pods"]["podSelector"]["matchLabels"]["k8s-app"],
        "kube-dns"
    );
    assert_eq!(
        dns_rule[0]["protocols"],
        serde_json::json!([
            {"tcp": {"destinationPort": {"number": 53}}},
            {"udp": {"destinationPort": {"number": 53}}}
        ])
    );

    // The whole stack: guardrails plus leash's proposal allow every observed flow, and deny
    // the metadata address from batch and kube-system.
    guardrails::self_check(&r.cluster, &fx.view(), &r.obs, &g, &with_proposal(&r))
        .expect("self-check");

    // Deterministic bytes.
    let (_, again) = propose(&fx, &records, &Options::default());
    assert_eq!(
        guardrails::yaml(&g).expect("yaml"),
        guardrails::yaml(&again).expect("yaml")
    );
}

#[test]
fn without_networkpolicies_the_baseline_breaks_external_traffic_and_the_self_check_says_so() {
    let (fx, records) = shop();
    let (r, g) = propose(&fx, &records, &Options::default());
    let err = guardrails::self_check(&r.cluster, &fx.view(), &r.obs, &g, &Stack::default())
        .expect_err("the default deny denies web's external flow");
    let Error::Denied(denied) = err else {
        panic!("{err}");
    };
    assert!(
        denied
            .iter()
            .any(|d| d.destination == "203.0.113.7:443/TCP"),
        "{denied:?}"
    );
    // DNS stays allowed by the Baseline accept.
    assert!(
        !denied.iter().any(|d| d.destination.contains(":53/")),
        "{denied:?}"
    );
}

#[test]
fn over_the_applied_policies_alone_the_baseline_defers_the_namespaces_it_would_break() {
    // Nothing applied yet: the guardrails must go first and break nothing. shop's web dials
    // api and an external address with no NetworkPolicy: shop is deferred. batch only
    // resolves names (the Baseline's DNS accept): it gets the default deny. (api's call to
    // the metadata address would be denied by the Baseline too.)
    let (fx, records) = shop();
    let r = run(&fx, &records, &recommend::Options::default());
    let g = guardrails::propose(
        &r.cluster,
        &r.obs,
        &ClassifierConfig::default(),
        &Options::default(),
        &Stack::default(),
    )
    .expect("proposes");
    crd_valid(&g);
    assert_eq!(
        g.deferred.keys().map(String::as_str).collect::<Vec<_>>(),
        ["shop"]
    );
    assert_eq!(
        g.deferred["shop"]
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["Deployment/api", "Deployment/web"]
    );
    for name in ["guardrails-default-deny", "guardrails-dns"] {
        let subject = serde_json::to_value(&by_name(&g, name).spec.subject).expect("json");
        assert_eq!(
            subject["namespaces"]["matchExpressions"][0],
            serde_json::json!({
                "key": "kubernetes.io/metadata.name",
                "operator": "NotIn",
                "values": ["kube-system", "shop"]
            }),
            "{name}"
        );
    }
    // The Admin tier is not deferred: the metadata deny still covers batch.
    let meta =
        serde_json::to_value(&by_name(&g, "guardrails-metadata").spec.subject).expect("json");
    assert_eq!(
        meta["namespaces"]["matchExpressions"][0]["values"],
        serde_json::json!(["batch", "kube-system"])
    );
    // Safe to apply first: the self-check over the applied state alone passes.
    guardrails::self_check(&r.cluster, &fx.view(), &r.obs, &g, &Stack::default())
        .expect("breaks nothing");
    // The report says why and what comes next.
    let report = guardrails::report_md(&g);
    assert!(report.contains("## Deferred namespaces"), "{report}");
    assert!(
        report.contains("| shop | Deployment/api, Deployment/web |"),
        "{report}"
    );
    assert!(report.contains("## Rollout order"), "{report}");
    assert!(
        g.justifications
            .iter()
            .any(|j| j.text.starts_with("namespace shop deferred")),
        "{:?}",
        g.justifications
    );

    // Once shop's proposal is applied, the next proposal covers shop too.
    let applied = guardrails::propose(
        &r.cluster,
        &r.obs,
        &ClassifierConfig::default(),
        &Options::default(),
        &with_proposal(&r),
    )
    .expect("proposes");
    assert!(applied.deferred.is_empty(), "{:?}", applied.deferred);
    assert!(!guardrails::report_md(&applied).contains("## Deferred namespaces"));
}

#[test]
fn a_metadata_deny_dropped_from_the_stack_fails_the_self_check() {
    let (fx, records) = shop();
    let (r, mut g) = propose(&fx, &records, &Options::default());
    g.policies.retain(|p| p.name() != "guardrails-metadata");
    let err = guardrails::self_check(&r.cluster, &fx.view(), &r.obs, &g, &with_proposal(&r))
        .expect_err("metadata allowed");
    assert!(matches!(err, Error::MetadataAllowed { .. }), "{err}");
}

#[test]
fn protected_ranges_split_at_the_api_limits_with_stable_names() {
    let (fx, records) = shop();
    // 700 /32s: 25 per peer, 25 peers per rule, 25 rules per policy = 15 625 per policy; so
    // one policy, 2 rules (28 peers). Plus a range shop reaches: shop is left out.
    let mut protected: Vec<IpNet> = (0..700u32)
        .map(|i| {
            IpNet::from(std::net::IpAddr::from([
                198,
                18,
                (i / 256) as u8,
                (i % 256) as u8,
            ]))
        })
        .collect();
    protected.push("203.0.113.0/24".parse().expect("cidr"));
    let opts = Options {
        protected,
        ..Options::default()
    };
    let (r, g) = propose(&fx, &records, &opts);
    crd_valid(&g);
    let p = by_name(&g, "guardrails-protected");
    assert_eq!(p.spec.egress.len(), 2);
    assert_eq!(p.spec.egress[0].to.len(), 25);
    assert!(
        p.spec
            .egress
            .iter()
            .flat_map(|r| &r.to)
            .all(|peer| peer.networks.as_ref().is_some_and(|n| n.len() <= 25))
    );
    let subject = serde_json::to_value(&p.spec.subject).expect("json");
    assert_eq!(
        subject["namespaces"]["matchExpressions"][0]["values"],
        serde_json::json!(["batch", "kube-system"])
    );
    guardrails::self_check(&r.cluster, &fx.view(), &r.obs, &g, &with_proposal(&r))
        .expect("self-check");

    // 25 * 25 * 25 + 1 ranges: two policies, numbered.
    let many: Vec<IpNet> = (0..(25 * 25 * 25 + 1) as u32)
        .map(|i| {
            IpNet::from(std::net::IpAddr::from([
                10,
                200,
                (i / 256) as u8,
                (i % 256) as u8,
            ]))
        })
        .collect();
    let (_, g) = propose(
        &fx,
        &records,
        &Options {
            protected: many,
            ..Options::default()
        },
    );
    let names: BTreeSet<&str> = g.policies.iter().map(|p| p.name()).collect();
    assert!(
        names.contains("guardrails-protected-1") && names.contains("guardrails-protected-2"),
        "{names:?}"
    );
    assert_eq!(by_name(&g, "guardrails-protected-1").spec.egress.len(), 25);
    crd_valid(&g);
}

#[test]
fn node_local_dns_and_host_network_resolvers_are_accepted_by_address() {
    // NodeLocal DNSCache: a hostNetwork DaemonSet on 169.254.20.10, plus kube-dns.
    let mut fx = Fx::new();
    fx.kubeadm_dns();
    fx.namespace("shop");
    fx.node("n1", "10.0.0.1", "10.244.1.0/24");
    fx.pod(
        "kube-system",
        "node-local-dns-abc",
        &[("k8s-app", "node-local-dns")],
        &["10.0.0.1"],
        true,
        "n1",
        &[],
        None,
    );
    fx.deployment("shop", "web", &[("app", "web")], &["10.244.1.10"], &[]);
    // A hostNetwork pod of shop: no ClusterNetworkPolicy applies to it, its flow is no break.
    fx.pod(
        "shop",
        "agent-n1",
        &[("app", "agent")],
        &["10.0.0.1"],
        true,
        "n1",
        &[],
        None,
    );
    let web = deployment_pod("web");
    let records = vec![
        flow("shop", "agent-n1", "TCP", "203.0.113.50", 443, 2, &[]),
        dns(
            "shop",
            &web,
            "169.254.20.10",
            "api.example.test",
            &["203.0.113.7"],
        ),
        dns(
            "shop",
            &web,
            "10.96.0.10",
            "db.example.test",
            &["198.51.100.9"],
        ),
        flow("shop", &web, "UDP", "169.254.20.10", 53, 3, &[]),
        flow("shop", &web, "TCP", "10.96.0.10", 53, 1, &[]),
        flow("shop", &web, "TCP", "203.0.113.7", 443, 5, &[]),
    ];
    let (r, g) = propose(&fx, &records, &Options::default());
    crd_valid(&g);
    let dns_rules =
        serde_json::to_string(&by_name(&g, "guardrails-dns").spec.egress).expect("json");
    // Link-local mode: the NodeLocal address; iptables mode: the kube-dns ClusterIP itself.
    assert!(dns_rules.contains("169.254.20.10/32"), "{dns_rules}");
    assert!(dns_rules.contains("10.96.0.10/32"), "{dns_rules}");
    guardrails::self_check(&r.cluster, &fx.view(), &r.obs, &g, &with_proposal(&r))
        .expect("self-check");
    // Without the proposal, the web pod (no NetworkPolicy) still resolves through the
    // Baseline accept: only the external flow is denied.
    let Err(Error::Denied(denied)) =
        guardrails::self_check(&r.cluster, &fx.view(), &r.obs, &g, &Stack::default())
    else {
        panic!("the external flow is denied");
    };
    assert_eq!(
        denied
            .iter()
            .map(|d| d.destination.as_str())
            .collect::<Vec<_>>(),
        ["203.0.113.7:443/TCP"]
    );
}
