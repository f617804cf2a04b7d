//! `recommend` on small fixture clusters: each test pins one behaviour the issue names (DNS
//! discovery, targetPort, cross-namespace AND, hostNetwork, API server, external covers, port
//! runs, isolation reporting, determinism). Every run is self-checked with the evaluator and
//! every policy checked against the API server's validation rules (see
//! `support::recommend::run`).

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use leash::recommend::Options;
use leash_lab::synthetic;
use support::recommend::{Fx, dns, flow, policy, run};

/// (protocol, port, endPort) of a rule.
fn ports(r: &NetworkPolicyEgressRule) -> Vec<(String, i32, Option<i32>)> {
    r.ports
        .iter()
        .flatten()
        .map(|p| {
            let port = match &p.port {
                Some(IntOrString::Int(n)) => *n,
                other => panic!("non-numeric port {other:?}"),
            };
            (p.protocol.clone().unwrap_or_default(), port, p.end_port)
        })
        .collect()
}

fn rules(p: &NetworkPolicy) -> &[NetworkPolicyEgressRule] {
    p.spec
        .as_ref()
        .and_then(|s| s.egress.as_deref())
        .unwrap_or_default()
}

fn ns_of(peer: &NetworkPolicyPeer) -> Option<String> {
    peer.namespace_selector
        .as_ref()
        .and_then(|s| s.match_labels.as_ref())
        .and_then(|l| l.get("kubernetes.io/metadata.name"))
        .cloned()
}

fn pod_labels(peer: &NetworkPolicyPeer) -> BTreeMap<String, String> {
    peer.pod_selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default()
}

fn cidrs(r: &NetworkPolicyEgressRule) -> Vec<String> {
    r.to.iter()
        .flatten()
        .filter_map(|p| p.ip_block.as_ref().map(|b| b.cidr.clone()))
        .collect()
}

/// A rule whose only peer is a selector in namespace `ns` (None: the policy's own) with these
/// pod labels.
fn selector_rule<'a>(
    p: &'a NetworkPolicy,
    ns: Option<&str>,
    labels: &[(&str, &str)],
) -> &'a NetworkPolicyEgressRule {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    rules(p)
        .iter()
        .find(|r| {
            r.to.iter()
                .flatten()
                .any(|peer| ns_of(peer).as_deref() == ns && pod_labels(peer) == want)
        })
        .unwrap_or_else(|| panic!("no rule to {ns:?} {labels:?} in {p:#?}"))
}

fn rule_with_cidr<'a>(p: &'a NetworkPolicy, cidr: &str) -> &'a NetworkPolicyEgressRule {
    rules(p)
        .iter()
        .find(|r| cidrs(r).iter().any(|c| c == cidr))
        .unwrap_or_else(|| panic!("no rule with {cidr}"))
}

/// A shop namespace with a `web` Deployment (two pods) that the tests make flows from.
fn shop() -> Fx {
    let mut fx = Fx::new();
    fx.node("n1", "10.0.0.1", "10.244.1.0/24");
    fx.node("n2", "10.0.0.2", "10.244.2.0/24");
    fx.namespace("shop");
    fx.deployment(
        "shop",
        "web",
        &[("app", "web")],
        &["10.244.1.10", "10.244.1.11"],
        &[],
    );
    fx
}

const WEB0: &str = "web-5c9f7d-p0";
const WEB1: &str = "web-5c9f7d-p1";

#[test]
fn kubeadm_dns_rule_is_one_and_peer_udp_and_tcp_53() {
    let mut fx = shop();
    fx.kubeadm_dns();
    let r = run(
        &fx,
        &[flow("shop", WEB0, "UDP", "10.96.0.10", 53, 10, &[])],
        &Options::default(),
    );
    let p = policy(&r, "shop", "web-egress");
    let rule = selector_rule(p, Some("kube-system"), &[("k8s-app", "kube-dns")]);
    // namespaceSelector AND podSelector in ONE peer, not two peers (which would OR).
    assert_eq!(rule.to.as_ref().map(Vec::len), Some(1));
    assert_eq!(
        ports(rule),
        vec![("TCP".into(), 53, None), ("UDP".into(), 53, None)],
        "TCP must be allowed too, even though only UDP was observed"
    );
}

#[test]
fn openshift_dns_uses_the_real_target_port_5353() {
    let mut fx = shop();
    fx.openshift_dns();
    let r = run(
        &fx,
        &[
            dns(
                "shop",
                WEB0,
                "172.30.0.10",
                "db.example.test.",
                &["203.0.113.5"],
            ),
            flow("shop", WEB0, "UDP", "172.30.0.10", 53, 3, &[]),
        ],
        &Options::default(),
    );
    let p = policy(&r, "shop", "web-egress");
    let rule = selector_rule(
        p,
        Some("openshift-dns"),
        &[("dns.operator.openshift.io/daemonset-dns", "default")],
    );
    assert_eq!(
        ports(rule),
        vec![("TCP".into(), 5353, None), ("UDP".into(), 5353, None)]
    );
    assert!(
        !r.yaml.contains("port: 53\n"),
        "a rule on 53 breaks DNS on OpenShift:\n{}",
        r.yaml
    );
}

#[test]
fn dns_records_alone_give_the_dns_rule() {
    let mut fx = shop();
    fx.kubeadm_dns();
    // The workload resolved a name but no flow to the resolver was recorded.
    let r = run(
        &fx,
        &[dns("shop", WEB1, "10.96.0.10", "x.test.", &["203.0.113.9"])],
        &Options::default(),
    );
    let p = policy(&r, "shop", "web-egress");
    selector_rule(p, Some("kube-system"), &[("k8s-app", "kube-dns")]);
    // The queried names are the DNS rule's evidence.
    let dns_rule = &r.rec.policies[0].rules[0];
    assert_eq!(dns_rule.kind, leash::recommend::RuleKind::Dns);
    assert!(
        dns_rule.evidence.names.contains("x.test"),
        "{:?}",
        dns_rule.evidence
    );
}

#[test]
fn node_local_dns_is_an_ipblock_32_with_udp_and_tcp() {
    let mut fx = shop();
    fx.kubeadm_dns();
    let r = run(
        &fx,
        &[
            dns("shop", WEB0, "169.254.20.10", "x.test.", &["203.0.113.9"]),
            flow("shop", WEB0, "UDP", "169.254.20.10", 53, 4, &[]),
        ],
        &Options::default(),
    );
    let p = policy(&r, "shop", "web-egress");
    let rule = rule_with_cidr(p, "169.254.20.10/32");
    assert_eq!(
        ports(rule),
        vec![("TCP".into(), 53, None), ("UDP".into(), 53, None)]
    );
    // kube-dns was not used, so no rule for it.
    assert!(!r.yaml.contains("k8s-app: kube-dns"), "{}", r.yaml);
}

#[test]
fn configured_node_local_dns_address() {
    let fx = shop();
    let mut opts = Options::default();
    opts.classify.node_local_dns = ["198.51.100.53".parse().unwrap()].into_iter().collect();
    let r = run(
        &fx,
        &[flow("shop", WEB0, "UDP", "198.51.100.53", 53, 1, &[])],
        &opts,
    );
    let rule = rule_with_cidr(policy(&r, "shop", "web-egress"), "198.51.100.53/32");
    assert_eq!(
        ports(rule),
        vec![("TCP".into(), 53, None), ("UDP".into(), 53, None)]
    );
}

#[test]
fn service_port_80_becomes_named_target_port_8080_via_selector() {
    let mut fx = shop();
    fx.deployment(
        "shop",
        "api",
        &[("app", "api")],
        &["10.244.2.20"],
        &[(Some("http"), 8080, "TCP")],
    );
    fx.service(
        "shop",
        "api",
        "10.96.10.10",
        Some(&[("app", "api")]),
        &[("web", 80, "TCP", IntOrString::String("http".into()))],
    );
    let r = run(
        &fx,
        &[flow("shop", WEB0, "TCP", "10.96.10.10", 80, 5, &[])],
        &Options::default(),
    );
    let p = policy(&r, "shop", "web-egress");
    let rule = selector_rule(p, None, &[("app", "api")]);
    assert_eq!(
        ports(rule),
        vec![("TCP".into(), 8080, None)],
        "targetPort, not the Service port"
    );
    assert!(
        !r.yaml.contains("10.96.10.10"),
        "never the ClusterIP:\n{}",
        r.yaml
    );
}

#[test]
fn service_target_port_from_endpoint_slices() {
    let mut fx = shop();
    let pods = fx.deployment(
        "shop",
        "api",
        &[("app", "api")],
        &["10.244.2.20"],
        &[(Some("http"), 8080, "TCP")],
    );
    fx.service(
        "shop",
        "api",
        "10.96.10.10",
        Some(&[("app", "api")]),
        &[("web", 80, "TCP", IntOrString::String("http".into()))],
    );
    // The slice says 8081 (the pod's port changed): the slice wins, it is what kube-proxy uses.
    fx.slice(
        "shop",
        "api",
        &[("web", 8081, "TCP")],
        &[("10.244.2.20", Some(&pods[0]))],
    );
    let r = run(
        &fx,
        &[flow("shop", WEB0, "TCP", "10.96.10.10", 80, 5, &[])],
        &Options::default(),
    );
    let rule = selector_rule(policy(&r, "shop", "web-egress"), None, &[("app", "api")]);
    assert_eq!(ports(rule), vec![("TCP".into(), 8081, None)]);
}

#[test]
fn cross_namespace_pod_gets_namespace_and_pod_selector_in_one_peer() {
    let mut fx = shop();
    fx.namespace("billing");
    fx.snap.stateful_sets.push(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "ledger", "namespace": "billing"},
            "spec": {"serviceName": "ledger", "selector": {"matchLabels": {"app": "ledger"}},
                     "template": {"metadata": {"labels": {"app": "ledger"}}}}
        }))
        .unwrap(),
    );
    fx.pod(
        "billing",
        "ledger-0",
        &[
            ("app", "ledger"),
            ("controller-revision-hash", "ledger-6c5"),
            ("statefulset.kubernetes.io/pod-name", "ledger-0"),
        ],
        &["10.244.2.30"],
        false,
        "n2",
        &[(None, 5432, "TCP")],
        Some(("StatefulSet", "ledger")),
    );
    let r = run(
        &fx,
        &[flow("shop", WEB0, "TCP", "10.244.2.30", 5432, 2, &[])],
        &Options::default(),
    );
    let rule = selector_rule(
        policy(&r, "shop", "web-egress"),
        Some("billing"),
        &[("app", "ledger")],
    );
    assert_eq!(rule.to.as_ref().map(Vec::len), Some(1));
    assert_eq!(ports(rule), vec![("TCP".into(), 5432, None)]);
}

#[test]
fn bare_pod_gets_smallest_unique_stable_selector() {
    let mut fx = shop();
    // Two bare pods share `team`; only `role` tells them apart. The uid-valued label and the
    // job-name label are never used.
    fx.pod(
        "shop",
        "a",
        &[
            ("team", "x"),
            ("role", "cache"),
            ("job-name", "j1"),
            ("owner-id", "8a1f5c2e-0b7d-4c39-9e1a-2b3c4d5e6f70"),
        ],
        &["10.244.1.40"],
        false,
        "n1",
        &[(None, 6379, "TCP")],
        None,
    );
    fx.pod(
        "shop",
        "b",
        &[("team", "x"), ("role", "queue")],
        &["10.244.1.41"],
        false,
        "n1",
        &[],
        None,
    );
    let r = run(
        &fx,
        &[flow("shop", WEB0, "TCP", "10.244.1.40", 6379, 2, &[])],
        &Options::default(),
    );
    let rule = selector_rule(policy(&r, "shop", "web-egress"), None, &[("role", "cache")]);
    assert_eq!(ports(rule), vec![("TCP".into(), 6379, None)]);
}

#[test]
fn deployment_selector_never_has_pod_template_hash() {
    let mut fx = shop();
    fx.deployment("shop", "api", &[("app", "api")], &["10.244.2.20"], &[]);
    let r = run(
        &fx,
        &[flow("shop", WEB0, "TCP", "10.244.2.20", 9000, 1, &[])],
        &Options::default(),
    );
    assert!(!r.yaml.contains("pod-template-hash"), "{}", r.yaml);
    let p = policy(&r, "shop", "web-egress");
    assert_eq!(
        p.spec
            .as_ref()
            .and_then(|s| s.pod_selector.as_ref())
            .and_then(|s| s.match_labels.clone()),
        Some(BTreeMap::from([("app".to_owned(), "web".to_owned())]))
    );
}

#[test]
fn api_server_is_ipblock_32_on_endpoint_port_6443() {
    let mut fx = shop();
    fx.api_server("10.0.0.1", 6443);
    let r = run(
        &fx,
        &[flow("shop", WEB0, "TCP", "10.96.0.1", 443, 3, &[])],
        &Options::default(),
    );
    let rule = rule_with_cidr(policy(&r, "shop", "web-egress"), "10.0.0.1/32");
    assert_eq!(ports(rule), vec![("TCP".into(), 6443, None)]);
    assert!(!r.yaml.contains("port: 443"), "{}", r.yaml);
}

#[test]
fn k3s_api_server_port_6444_is_read_not_guessed() {
    let mut fx = shop();
    fx.api_server("10.0.0.2", 6444);
    let r = run(
        &fx,
        &[flow("shop", WEB0, "TCP", "10.96.0.1", 443, 3, &[])],
        &Options::default(),
    );
    let rule = rule_with_cidr(policy(&r, "shop", "web-egress"), "10.0.0.2/32");
    assert_eq!(ports(rule), vec![("TCP".into(), 6444, None)]);
}

#[test]
fn host_network_destination_is_ipblock_with_real_port() {
    let mut fx = shop();
    fx.namespace("monitoring");
    fx.pod(
        "monitoring",
        "node-exporter-n2",
        &[("app", "node-exporter")],
        &["10.0.0.2"],
        true,
        "n2",
        &[(Some("metrics"), 9100, "TCP")],
        None,
    );
    let r = run(
        &fx,
        &[flow("shop", WEB0, "TCP", "10.0.0.2", 9100, 3, &[])],
        &Options::default(),
    );
    let rule = rule_with_cidr(policy(&r, "shop", "web-egress"), "10.0.0.2/32");
    assert_eq!(ports(rule), vec![("TCP".into(), 9100, None)]);
    assert!(
        !r.yaml.contains("node-exporter"),
        "selectors cannot match hostNetwork pods:\n{}",
        r.yaml
    );
}

#[test]
fn host_network_source_gets_no_policy_and_is_reported() {
    let mut fx = shop();
    fx.namespace("monitoring");
    fx.pod(
        "monitoring",
        "agent-n1",
        &[("app", "agent")],
        &["10.0.0.1"],
        true,
        "n1",
        &[],
        None,
    );
    let r = run(
        &fx,
        &[flow(
            "monitoring",
            "agent-n1",
            "TCP",
            "203.0.113.7",
            443,
            3,
            &[],
        )],
        &Options::default(),
    );
    assert!(r.policies.is_empty(), "{}", r.yaml);
    assert_eq!(r.rec.host_network.len(), 1);
    let report = leash::render::report(&r.cluster, &r.rec);
    assert!(report.contains("not enforceable"), "{report}");
    assert!(report.contains("monitoring/Pod/agent-n1"), "{report}");
}

#[test]
fn external_name_with_three_ips_is_one_rule_exactly_merged() {
    let fx = shop();
    let ips = ["203.0.113.10", "203.0.113.11", "203.0.113.12"];
    let mut recs = vec![dns("shop", WEB0, "10.96.0.10", "api.stripe.test.", &ips)];
    for ip in ips {
        recs.push(flow("shop", WEB0, "TCP", ip, 443, 2, &["api.stripe.test"]));
    }
    let r = run(&fx, &recs, &Options::default());
    let rule = rule_with_cidr(policy(&r, "shop", "web-egress"), "203.0.113.10/31");
    assert_eq!(cidrs(rule), vec!["203.0.113.10/31", "203.0.113.12/32"]);
    assert_eq!(ports(rule), vec![("TCP".into(), 443, None)]);
    let report = leash::render::report(&r.cluster, &r.rec);
    assert!(report.contains("api.stripe.test"), "{report}");
    assert!(report.contains("0 (exact)"), "{report}");
}

#[test]
fn externals_over_budget_are_covered_within_max_cidrs_and_max_prefix() {
    let fx = shop();
    // 12 scattered addresses in one /24, budget 2: the cover may not widen past /24.
    let recs: Vec<_> = (0..12u8)
        .map(|i| {
            flow(
                "shop",
                WEB0,
                "TCP",
                &format!("198.51.100.{}", i * 20 + 1),
                443,
                1,
                &[],
            )
        })
        .collect();
    let opts = Options {
        max_cidrs: 2,
        ..Options::default()
    };
    let r = run(&fx, &recs, &opts);
    let p = policy(&r, "shop", "web-egress");
    let ext = rules(p)
        .iter()
        .find(|r| !cidrs(r).is_empty())
        .expect("external rule");
    assert!(cidrs(ext).len() <= 2, "{:?}", cidrs(ext));
    for c in cidrs(ext) {
        let n: ipnet::IpNet = c.parse().unwrap();
        assert!(n.prefix_len() >= 24, "{c} wider than /24");
    }
    let rule = r.rec.policies[0]
        .rules
        .iter()
        .find(|r| r.unobserved_addresses.is_some())
        .unwrap();
    assert!(
        rule.unobserved_addresses.unwrap() > 0,
        "the report states the over-permission"
    );
    let report = leash::render::report(&r.cluster, &r.rec);
    assert!(
        report.contains(" unobserved)"),
        "per-block over-permission:\n{report}"
    );
}

/// The section of `report` under `## heading`, up to the next `## `.
fn report_section<'a>(report: &'a str, heading: &str) -> &'a str {
    let start = report
        .find(&format!("## {heading}\n"))
        .unwrap_or_else(|| panic!("no {heading:?} in\n{report}"));
    let rest = &report[start + heading.len() + 4..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

#[test]
fn a_missed_cidr_budget_needs_attention_and_says_what_would_fix_it() {
    let fx = shop();
    // Three IPv6 addresses in three /48s, budget 2: no cover within /48 has two blocks.
    let recs: Vec<_> = ["2001:db8:1::1", "2001:db8:2::1", "2001:db8:3::1"]
        .iter()
        .map(|dst| flow("shop", WEB0, "TCP", dst, 443, 1, &["api.stripe.test"]))
        .collect();
    let opts = Options {
        max_cidrs: 2,
        ..Options::default()
    };
    let r = run(&fx, &recs, &opts);
    let (i, rule) = r.rec.policies[0]
        .rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.kind == leash::recommend::RuleKind::External)
        .expect("external rule");
    assert!(!rule.budget_met, "{:?}", rule);
    assert_eq!(rule.peers.len(), 3);
    let report = leash::render::report(&r.cluster, &r.rec);
    // It used to say "Nothing." here while the rule below said "CIDR budget NOT met".
    let attention = report_section(&report, "Needs attention");
    assert!(!attention.contains("Nothing."), "{attention}");
    assert!(attention.contains("### CIDR budget not met"), "{attention}");
    let row = attention
        .lines()
        .find(|l| l.starts_with("| `shop/web-egress` |"))
        .unwrap_or_else(|| panic!("no row for the rule:\n{attention}"));
    assert!(
        row.starts_with(&format!("| `shop/web-egress` | {} | 3 (IPv6 3) |", i + 1)),
        "{row}"
    );
    assert!(row.contains("api.stripe.test"), "{row}");
    // What would fix it: only IPv6 blocks, so a wider --max-prefix-v6, not -v4.
    assert!(row.contains("`--max-prefix-v6`"), "{row}");
    assert!(!row.contains("--max-prefix-v4"), "{row}");
    assert!(row.contains("`--max-cidrs 3`"), "{row}");
    assert!(row.contains("FQDN policy"), "{row}");
    assert!(
        leash::render::summary(&r.rec).contains("1 rules over the CIDR budget"),
        "{}",
        leash::render::summary(&r.rec)
    );
}

#[test]
fn externals_with_different_ports_or_names_are_separate_rules() {
    let fx = shop();
    let recs = vec![
        flow("shop", WEB0, "TCP", "203.0.113.1", 443, 1, &["a.test"]),
        flow("shop", WEB0, "TCP", "203.0.113.2", 443, 1, &["b.test"]),
        flow("shop", WEB0, "TCP", "203.0.113.3", 80, 1, &["a.test"]),
    ];
    let r = run(&fx, &recs, &Options::default());
    let p = policy(&r, "shop", "web-egress");
    assert_eq!(rules(p).len(), 3, "{}", r.yaml);
}

#[test]
fn dense_port_run_becomes_end_port_and_protocols_never_mix() {
    let fx = shop();
    let mut recs: Vec<_> = (9000..=9005)
        .map(|p| flow("shop", WEB0, "TCP", "203.0.113.50", p, 1, &[]))
        .collect();
    recs.push(flow("shop", WEB0, "UDP", "203.0.113.50", 9000, 1, &[]));
    recs.push(flow("shop", WEB0, "TCP", "203.0.113.50", 9100, 1, &[]));
    let r = run(&fx, &recs, &Options::default());
    let rule = rule_with_cidr(policy(&r, "shop", "web-egress"), "203.0.113.50/32");
    assert_eq!(
        ports(rule),
        vec![
            ("TCP".into(), 9000, Some(9005)),
            ("TCP".into(), 9100, None),
            ("UDP".into(), 9000, None)
        ]
    );
}

#[test]
fn unobserved_workload_gets_no_policy_and_is_reported_isolated() {
    let mut fx = shop();
    fx.deployment("shop", "quiet", &[("app", "quiet")], &["10.244.2.50"], &[]);
    let r = run(
        &fx,
        &[flow("shop", WEB0, "TCP", "203.0.113.1", 443, 1, &[])],
        &Options::default(),
    );
    assert!(
        r.policies
            .iter()
            .all(|p| p.metadata.name.as_deref() != Some("quiet-egress"))
    );
    for p in &r.policies {
        let spec = p.spec.as_ref().unwrap();
        if p.metadata.name.as_deref() != Some("default-deny-egress") {
            assert!(
                !spec.egress.as_deref().unwrap_or_default().is_empty(),
                "rule-less allow policy"
            );
        }
    }
    let report = leash::render::report(&r.cluster, &r.rec);
    assert!(
        report.contains("Would be fully isolated by default-deny"),
        "{report}"
    );
    assert!(report.contains("shop/Deployment/quiet"), "{report}");
}

#[test]
fn default_deny_per_namespace_with_a_policy_only() {
    let mut fx = shop();
    fx.namespace("other");
    fx.deployment("other", "idle", &[("app", "idle")], &["10.244.2.60"], &[]);
    let r = run(
        &fx,
        &[flow("shop", WEB0, "TCP", "203.0.113.1", 443, 1, &[])],
        &Options::default(),
    );
    let denies: Vec<_> = r
        .policies
        .iter()
        .filter(|p| p.metadata.name.as_deref() == Some("default-deny-egress"))
        .map(|p| p.metadata.namespace.clone().unwrap())
        .collect();
    assert_eq!(denies, vec!["shop"]);
    let spec = policy(&r, "shop", "default-deny-egress")
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(
        spec.policy_types.as_deref(),
        Some(&["Egress".to_owned()][..])
    );
    assert!(spec.egress.is_none());
}

#[test]
fn namespace_filter_limits_sources() {
    let mut fx = shop();
    fx.namespace("other");
    let pods = fx.deployment("other", "job", &[("app", "job")], &["10.244.2.60"], &[]);
    let recs = vec![
        flow("shop", WEB0, "TCP", "203.0.113.1", 443, 1, &[]),
        flow("other", &pods[0], "TCP", "203.0.113.2", 443, 1, &[]),
    ];
    let opts = Options {
        namespaces: ["other".to_owned()].into_iter().collect(),
        ..Options::default()
    };
    let r = run(&fx, &recs, &opts);
    assert!(
        r.policies
            .iter()
            .all(|p| p.metadata.namespace.as_deref() == Some("other")),
        "{}",
        r.yaml
    );
    policy(&r, "other", "job-egress");
}

#[test]
fn brief_observation_is_flagged() {
    let fx = shop();
    let r = run(
        &fx,
        &[flow("shop", WEB0, "TCP", "203.0.113.1", 443, 1, &[])],
        &Options {
            min_observation: chrono::Duration::days(7),
            ..Options::default()
        },
    );
    assert_eq!(r.rec.briefly_observed.len(), 1);
    let report = leash::render::report(&r.cluster, &r.rec);
    assert!(report.contains("Observed too briefly"), "{report}");
    let r = run(
        &fx,
        &[flow("shop", WEB0, "TCP", "203.0.113.1", 443, 1, &[])],
        &Options::default(),
    );
    assert!(
        r.rec.briefly_observed.is_empty(),
        "4 days of evidence is more than 24h"
    );
}

#[test]
fn dual_stack_external_v6_is_its_own_family() {
    let fx = shop();
    let recs = vec![
        flow("shop", WEB0, "TCP", "2001:db8::10", 443, 1, &["v6.test"]),
        flow("shop", WEB0, "TCP", "2001:db8::11", 443, 1, &["v6.test"]),
    ];
    let r = run(&fx, &recs, &Options::default());
    let rule = rule_with_cidr(policy(&r, "shop", "web-egress"), "2001:db8::10/127");
    assert_eq!(ports(rule), vec![("TCP".into(), 443, None)]);
}

#[test]
fn service_without_endpoints_is_reported_not_ruled() {
    let mut fx = shop();
    fx.service(
        "shop",
        "gone",
        "10.96.10.99",
        Some(&[("app", "gone")]),
        &[("web", 80, "TCP", IntOrString::Int(8080))],
    );
    let r = run(
        &fx,
        &[
            flow("shop", WEB0, "TCP", "10.96.10.99", 80, 1, &[]),
            flow("shop", WEB0, "TCP", "203.0.113.1", 443, 1, &[]),
        ],
        &Options::default(),
    );
    assert_eq!(r.rec.unresolved.len(), 1);
    assert!(
        r.rec.unresolved[0].reason.contains("no endpoints"),
        "{:?}",
        r.rec.unresolved
    );
    assert!(!r.yaml.contains("8080"), "{}", r.yaml);
}

#[test]
fn self_check_catches_a_policy_that_denies_an_observed_flow() {
    let fx = shop();
    let recs = [flow("shop", WEB0, "TCP", "203.0.113.1", 443, 1, &[])];
    let cluster = fx.cluster();
    let mut obs = leash::observations::Observations::default();
    for r in &recs {
        obs.add(r, &cluster).unwrap();
    }
    let mut rec = leash::recommend::recommend(&cluster, &obs, &Options::default());
    // Sabotage: allow 444 instead of 443.
    rec.policies[0].rules[0].ports[0].port = 444;
    let err = leash::recommend::self_check(&cluster, &fx.view(), &obs, &rec).unwrap_err();
    let leash::recommend::SelfCheckError::Denied(d) = err else {
        panic!("{err}")
    };
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].pod, format!("shop/{WEB0}"));
    assert_eq!(d[0].destination, "203.0.113.1:443/TCP");
}

#[test]
fn output_is_identical_for_shuffled_input() {
    let mut fx = shop();
    fx.kubeadm_dns();
    fx.api_server("10.0.0.1", 6443);
    let mut recs = vec![
        dns(
            "shop",
            WEB0,
            "10.96.0.10",
            "api.stripe.test.",
            &["203.0.113.10", "203.0.113.11"],
        ),
        flow("shop", WEB0, "UDP", "10.96.0.10", 53, 3, &[]),
        flow(
            "shop",
            WEB1,
            "TCP",
            "203.0.113.10",
            443,
            1,
            &["api.stripe.test"],
        ),
        flow("shop", WEB0, "TCP", "203.0.113.11", 443, 1, &[]),
        flow("shop", WEB1, "TCP", "10.96.0.1", 443, 1, &[]),
        flow("shop", WEB1, "TCP", "198.51.100.3", 8443, 1, &[]),
    ];
    let a = run(&fx, &recs, &Options::default());
    recs.reverse();
    let b = run(&fx, &recs, &Options::default());
    assert_eq!(a.yaml, b.yaml);
    assert_eq!(
        leash::render::files(&a.cluster, &a.rec).unwrap(),
        leash::render::files(&b.cluster, &b.rec).unwrap()
    );
}

#[test]
fn synthetic_cluster_end_to_end_through_files() {
    let shape = synthetic::Shape {
        nodes: 4,
        namespaces: 3,
        deployments_per_namespace: 4,
        pods_per_deployment: 3,
        flow_records: 3_000,
    };
    // The bench's full shape is the issue's: 5,000 nodes, 150,000 pods, 10M records.
    let full = synthetic::Shape::FULL;
    assert_eq!(
        (full.nodes, full.pods(), full.flow_records),
        (5_000, 150_000, 10_000_000)
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = dir.path().join("cluster.json");
    let flows = dir.path().join("flows.jsonl");
    let mut buf = Vec::new();
    synthetic::write_snapshot(&shape, &mut buf).expect("generates");
    std::fs::write(&snap, buf).expect("writes");
    let mut buf = Vec::new();
    synthetic::write_flows(&shape, &mut buf).expect("generates");
    std::fs::write(&flows, buf).expect("writes");
    // The command's I/O: load the snapshot, read the records.
    let cluster = leash::cluster::Cluster::load(&snap).expect("loads");
    let observations =
        leash::observations::Observations::read_paths(&[flows], &cluster).expect("reads records");
    // `checked` self-checks every observed flow with the evaluator before returning.
    let recommendation = leash::recommend::checked(&cluster, &observations, &Options::default())
        .expect("recommends");
    assert_eq!(observations.records, 3_000);
    assert_eq!(cluster.pods.len(), 37);
    // Every Deployment talks, so each gets a policy; every namespace a default deny.
    assert_eq!(recommendation.policies.len(), 12);
    assert_eq!(
        recommendation.default_deny_namespaces,
        vec!["ns-0", "ns-1", "ns-2"]
    );
    let p = &recommendation.policies[0];
    assert!(
        p.rules
            .iter()
            .any(|r| r.kind == leash::recommend::RuleKind::Dns)
    );
    for np in leash::recommend::all_policies(&cluster, &recommendation) {
        assert_eq!(support::recommend::validate(&np), Vec::<String>::new());
    }
}

#[test]
fn node_port_from_inside_is_treated_like_the_cluster_ip() {
    let mut fx = shop();
    fx.deployment(
        "shop",
        "api",
        &[("app", "api")],
        &["10.244.2.20"],
        &[(Some("http"), 8080, "TCP")],
    );
    fx.snap.services.push(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "api", "namespace": "shop"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.10.10", "selector": {"app": "api"},
                     "ports": [{"name": "web", "port": 80, "protocol": "TCP", "targetPort": "http", "nodePort": 30080}]}
        }))
        .unwrap(),
    );
    // The pod dials node n2's address on the node port. Where DNAT happens first (the local
    // node with kube-proxy, socket-level load balancing) policy sees the backend and the
    // targetPort; elsewhere it sees the node address and the node port. Both are allowed,
    // and both evaluator views (with and without NodePort DNAT) agree.
    let r = run(
        &fx,
        &[flow("shop", WEB0, "TCP", "10.0.0.2", 30080, 1, &[])],
        &Options::default(),
    );
    let p = policy(&r, "shop", "web-egress");
    let rule = selector_rule(p, None, &[("app", "api")]);
    assert_eq!(ports(rule), vec![("TCP".into(), 8080, None)]);
    assert_eq!(
        ports(rule_with_cidr(p, "10.0.0.2/32")),
        vec![("TCP".into(), 30080, None)]
    );
    leash::recommend::self_check(&r.cluster, &r.cluster, &r.obs, &r.rec)
        .expect("model view allows it");
}

#[test]
fn workload_named_default_deny_does_not_collide() {
    let mut fx = shop();
    let pods = fx.deployment(
        "shop",
        "default-deny",
        &[("app", "dd")],
        &["10.244.2.70"],
        &[],
    );
    let r = run(
        &fx,
        &[flow("shop", &pods[0], "TCP", "203.0.113.1", 443, 1, &[])],
        &Options::default(),
    );
    let names: Vec<_> = r
        .policies
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(
        names,
        vec!["default-deny-egress", "default-deny-deployment-egress"]
    );
}

#[test]
fn observed_address_in_a_protected_range_is_allowed_exactly_and_flagged() {
    let fx = shop();
    // 10.244.1.99 is in node n1's pod CIDR but no pod holds it (a pod that went away).
    let r = run(
        &fx,
        &[flow("shop", WEB0, "TCP", "10.244.1.99", 8443, 1, &[])],
        &Options::default(),
    );
    let rule = rule_with_cidr(policy(&r, "shop", "web-egress"), "10.244.1.99/32");
    assert_eq!(ports(rule), vec![("TCP".into(), 8443, None)]);
    let report = leash::render::report(&r.cluster, &r.rec);
    assert!(
        report.contains("lies in the protected range 10.244.1.0/24"),
        "{report}"
    );
}

#[test]
fn loopback_and_port_zero_become_no_rule_and_are_reported() {
    let fx = shop();
    let r = run(
        &fx,
        &[
            flow("shop", WEB0, "TCP", "127.0.0.1", 8080, 1, &[]),
            flow("shop", WEB0, "UDP", "203.0.113.8", 0, 1, &[]),
            flow("shop", WEB0, "TCP", "203.0.113.9", 443, 1, &[]),
        ],
        &Options::default(),
    );
    let p = policy(&r, "shop", "web-egress");
    assert_eq!(rules(p).len(), 1, "{}", r.yaml);
    assert_eq!(cidrs(&rules(p)[0]), vec!["203.0.113.9/32"]);
    let reasons: Vec<_> = r.rec.unresolved.iter().map(|u| u.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("loopback")),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r.contains("port 0")), "{reasons:?}");
}

#[test]
fn cron_job_pods_resolve_to_the_cron_job_with_template_labels() {
    let mut fx = shop();
    fx.snap.cron_jobs.push(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": {"name": "backup", "namespace": "shop"},
            "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": {
                "metadata": {"labels": {"app": "backup"}},
                "spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}}}}}
        }))
        .unwrap(),
    );
    fx.snap.jobs.push(
        serde_json::from_value(serde_json::json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "backup-29000000", "namespace": "shop",
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "backup", "uid": "c", "controller": true}]},
            "spec": {"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "8a1f5c2e-0b7d-4c39-9e1a-2b3c4d5e6f70"}},
                     "template": {"metadata": {"labels": {"app": "backup"}},
                                  "spec": {"containers": [{"name": "c", "image": "i"}], "restartPolicy": "Never"}}}
        }))
        .unwrap(),
    );
    fx.pod(
        "shop",
        "backup-29000000-x7k2p",
        &[
            ("app", "backup"),
            ("job-name", "backup-29000000"),
            ("batch.kubernetes.io/job-name", "backup-29000000"),
            (
                "batch.kubernetes.io/controller-uid",
                "8a1f5c2e-0b7d-4c39-9e1a-2b3c4d5e6f70",
            ),
            ("controller-uid", "8a1f5c2e-0b7d-4c39-9e1a-2b3c4d5e6f70"),
        ],
        &["10.244.1.60"],
        false,
        "n1",
        &[],
        Some(("Job", "backup-29000000")),
    );
    let r = run(
        &fx,
        &[flow(
            "shop",
            "backup-29000000-x7k2p",
            "TCP",
            "203.0.113.30",
            443,
            1,
            &[],
        )],
        &Options::default(),
    );
    let p = policy(&r, "shop", "backup-egress");
    assert_eq!(
        p.spec
            .as_ref()
            .and_then(|s| s.pod_selector.as_ref())
            .and_then(|s| s.match_labels.clone()),
        Some(BTreeMap::from([("app".to_owned(), "backup".to_owned())]))
    );
    assert_eq!(
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("leash.dev/workload"))
            .map(String::as_str),
        Some("CronJob/backup")
    );
}

#[test]
fn missing_replica_set_still_resolves_the_deployment_by_name() {
    let mut fx = shop();
    // Only the pod is in the snapshot; its owner follows `<deployment>-<pod-template-hash>`.
    fx.pod(
        "shop",
        "cart-6f7b9c-abcde",
        &[("app", "cart"), ("pod-template-hash", "6f7b9c")],
        &["10.244.1.70"],
        false,
        "n1",
        &[],
        Some(("ReplicaSet", "cart-6f7b9c")),
    );
    let r = run(
        &fx,
        &[flow(
            "shop",
            "cart-6f7b9c-abcde",
            "TCP",
            "203.0.113.31",
            443,
            1,
            &[],
        )],
        &Options::default(),
    );
    let p = policy(&r, "shop", "cart-egress");
    assert_eq!(
        p.spec
            .as_ref()
            .and_then(|s| s.pod_selector.as_ref())
            .and_then(|s| s.match_labels.clone()),
        Some(BTreeMap::from([("app".to_owned(), "cart".to_owned())]))
    );
}

#[test]
fn pod_with_only_unstable_labels_gets_no_policy_and_is_flagged() {
    let mut fx = shop();
    fx.pod(
        "shop",
        "oneoff",
        &[
            ("controller-uid", "8a1f5c2e-0b7d-4c39-9e1a-2b3c4d5e6f70"),
            ("job-name", "oneoff"),
        ],
        &["10.244.1.80"],
        false,
        "n1",
        &[],
        None,
    );
    let r = run(
        &fx,
        &[
            flow("shop", "oneoff", "TCP", "203.0.113.32", 443, 1, &[]),
            flow("shop", WEB0, "TCP", "203.0.113.33", 443, 1, &[]),
        ],
        &Options::default(),
    );
    assert!(
        r.policies
            .iter()
            .all(|p| p.metadata.name.as_deref() != Some("oneoff-egress"))
    );
    let report = leash::render::report(&r.cluster, &r.rec);
    assert!(
        report.contains("shop/Pod/oneoff (blocked by default-deny-egress!)"),
        "{report}"
    );
    // It had egress, so it is not listed among the workloads without any.
    assert!(
        r.rec
            .isolated
            .iter()
            .all(|&w| r.cluster.workloads[w].name != "oneoff"),
        "{:?}",
        r.rec.isolated
    );
}

/// Many lines (several parse blocks): the parallel reader gives exactly the observations of
/// adding the records one by one, and errors name the right line across block boundaries.
#[test]
fn parallel_reader_matches_sequential_and_numbers_lines_across_blocks() {
    let fx = shop();
    let cluster = fx.cluster();
    let mut text = String::new();
    let mut records = Vec::new();
    for i in 0..40_000u32 {
        let pod = if i % 3 == 0 { WEB0 } else { WEB1 };
        let r = flow(
            "shop",
            pod,
            if i % 5 == 0 { "UDP" } else { "TCP" },
            &format!("203.0.113.{}", i % 200),
            443 + u16::try_from(i % 7).unwrap(),
            u64::from(i % 11),
            &["a.test"],
        );
        text.push_str(&r.to_json_line());
        text.push_str(if i % 1000 == 0 { "\r\n\n" } else { "\n" });
        records.push(r);
    }
    assert!(text.len() > 3 * (4 << 20) / 2, "spans several blocks");
    let mut parallel = leash::observations::Observations::default();
    parallel
        .read(
            std::io::Cursor::new(text.clone()),
            std::path::Path::new("mem"),
            &cluster,
        )
        .expect("reads");
    let mut sequential = leash::observations::Observations::default();
    for r in &records {
        sequential.add(r, &cluster).expect("adds");
    }
    assert_eq!(parallel.records, 40_000);
    assert_eq!(parallel.flows, sequential.flows);

    // An unknown pod far into the input: the error names its line (blank lines count).
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    let bad = flow("shop", "ghost", "TCP", "203.0.113.1", 443, 1, &[]).to_json_line() + "\n";
    let bad_garbage = "{not json\n".to_owned();
    lines.insert(30_500, &bad);
    lines.insert(35_000, &bad_garbage);
    let with_errors: String = lines.concat();
    let err = leash::observations::Observations::default()
        .read(
            std::io::Cursor::new(with_errors),
            std::path::Path::new("mem"),
            &cluster,
        )
        .unwrap_err()
        .to_string();
    // `lines` holds every line, blank ones included: index 30_500 is line 30_501.
    assert!(err.starts_with("mem:30501:"), "{err}");
    assert!(err.contains("shop/ghost"), "{err}");
}

#[test]
fn host_network_dns_backends_are_allowed_by_address() {
    let mut fx = shop();
    fx.namespace("kube-system");
    // CoreDNS running on the host network: selectors cannot match it.
    fx.pod(
        "kube-system",
        "coredns-host-n1",
        &[("k8s-app", "kube-dns")],
        &["10.0.0.1"],
        true,
        "n1",
        &[(Some("dns"), 53, "UDP"), (Some("dns-tcp"), 53, "TCP")],
        None,
    );
    fx.service(
        "kube-system",
        "kube-dns",
        "10.96.0.10",
        Some(&[("k8s-app", "kube-dns")]),
        &[
            ("dns", 53, "UDP", IntOrString::Int(53)),
            ("dns-tcp", 53, "TCP", IntOrString::Int(53)),
        ],
    );
    fx.slice(
        "kube-system",
        "kube-dns",
        &[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
        &[("10.0.0.1", Some("coredns-host-n1"))],
    );
    let r = run(
        &fx,
        &[flow("shop", WEB0, "UDP", "10.96.0.10", 53, 3, &[])],
        &Options::default(),
    );
    let rule = rule_with_cidr(policy(&r, "shop", "web-egress"), "10.0.0.1/32");
    assert_eq!(
        ports(rule),
        vec![("TCP".into(), 53, None), ("UDP".into(), 53, None)]
    );
    // The model-based evaluator (which knows the DNAT) agrees.
    leash::recommend::self_check(&r.cluster, &r.cluster, &r.obs, &r.rec).expect("allowed");
}

#[test]
fn node_local_dns_in_iptables_mode_also_allows_the_kube_dns_cluster_ip() {
    let mut fx = shop();
    fx.kubeadm_dns();
    fx.pod(
        "kube-system",
        "node-local-dns-n1",
        &[("k8s-app", "node-local-dns")],
        &["10.0.0.1"],
        true,
        "n1",
        &[],
        Some(("DaemonSet", "node-local-dns")),
    );
    let r = run(
        &fx,
        &[flow("shop", WEB0, "UDP", "10.96.0.10", 53, 3, &[])],
        &Options::default(),
    );
    let p = policy(&r, "shop", "web-egress");
    selector_rule(p, Some("kube-system"), &[("k8s-app", "kube-dns")]);
    let rule = rule_with_cidr(p, "10.96.0.10/32");
    assert_eq!(
        ports(rule),
        vec![("TCP".into(), 53, None), ("UDP".into(), 53, None)]
    );
}

/// The reader-ordered YAML loses nothing: it parses back to the same object.
#[test]
fn policy_yaml_round_trips() {
    let mut fx = shop();
    fx.kubeadm_dns();
    fx.api_server("10.0.0.1", 6443);
    let mut recs: Vec<_> = (9000..=9005)
        .map(|p| flow("shop", WEB0, "TCP", "203.0.113.50", p, 1, &[]))
        .collect();
    recs.push(flow("shop", WEB0, "UDP", "10.96.0.10", 53, 1, &[]));
    recs.push(flow("shop", WEB1, "TCP", "10.96.0.1", 443, 1, &[]));
    let r = run(&fx, &recs, &Options::default());
    assert!(r.yaml.contains("endPort: 9005"), "{}", r.yaml);
    for p in &r.policies {
        let text = leash::render::policy_yaml(p).unwrap();
        let back: NetworkPolicy = serde_norway::from_str(&text).unwrap();
        assert_eq!(&back, p, "{text}");
    }
}

#[test]
fn ipv6_service_resolves_to_the_v6_backend_by_selector() {
    let mut fx = shop();
    fx.pod(
        "shop",
        "api-0",
        &[("app", "api")],
        &["10.244.2.20", "2001:db8:244::20"],
        false,
        "n2",
        &[(Some("http"), 8080, "TCP")],
        None,
    );
    fx.service(
        "shop",
        "api6",
        "2001:db8:96::a",
        Some(&[("app", "api")]),
        &[("web", 80, "TCP", IntOrString::String("http".into()))],
    );
    let r = run(
        &fx,
        &[
            flow("shop", WEB0, "TCP", "2001:db8:96::a", 80, 1, &[]),
            // The same pod by its IPv6 address directly: the same selector rule.
            flow("shop", WEB0, "TCP", "2001:db8:244::20", 8080, 1, &[]),
        ],
        &Options::default(),
    );
    let p = policy(&r, "shop", "web-egress");
    assert_eq!(rules(p).len(), 1, "{}", r.yaml);
    let rule = selector_rule(p, None, &[("app", "api")]);
    assert_eq!(ports(rule), vec![("TCP".into(), 8080, None)]);
}
