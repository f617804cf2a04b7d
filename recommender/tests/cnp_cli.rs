//! The built `leash` binary with ClusterNetworkPolicies: `audit --policies` reads them beside
//! NetworkPolicies (domainNames by the input's DNS evidence, conflicts warned on stderr and in
//! the JSON), `explain` names the tier, policy, rule and action, a cluster snapshot's
//! ClusterNetworkPolicies count as applied, invalid ones are refused naming file and rule, and
//! `diff` evaluates observed flows with each compared state's tiers.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::cli::{assert_code, stderr, stdout};

fn fixture(name: &str) -> String {
    let p: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/recommend/kubeadm")
        .join(name);
    p.to_str().expect("utf-8 path").to_owned()
}

fn leash(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leash"))
        .args(args)
        .output()
        .expect("runs the leash binary")
}

/// The shop's guardrail: the stripe name accepted, the rest of 203.0.113.0/24 and the lab's
/// 198.51.100.0/24 denied.
const GUARD: &str = "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guard}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {matchLabels: {team: shop}}}
  egress:
  - {name: stripe, action: Accept, to: [{domainNames: [api.stripe.test]}], protocols: [{tcp: {destinationPort: {number: 443}}}]}
  - {name: no-world, action: Deny, to: [{networks: [203.0.113.0/24]}]}
  - {name: no-lab, action: Deny, to: [{networks: [198.51.100.0/24]}]}
";

/// Same priority as GUARD, disagreeing on 198.51.100.0/24.
const OTHER: &str = "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: other}
spec:
  tier: Admin
  priority: 10
  subject: {namespaces: {}}
  egress:
  - {action: Accept, to: [{networks: [198.51.100.0/24]}]}
";

fn policy_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).expect("writes a policy");
    }
    dir
}

fn audit(extra: &[&str]) -> Output {
    let cluster = fixture("cluster.yaml");
    let flows = fixture("flows.jsonl");
    let mut args = vec![
        "audit",
        "--cluster",
        &cluster,
        "--flows",
        &flows,
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    leash(&args)
}

/// The JSON line of the flow to `dst:port`.
fn line<'a>(out: &'a str, dst: &str, port: u16) -> &'a str {
    let needle = format!("\"dst\":\"{dst}\",\"dst_port\":{port},");
    out.lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no flow to {dst}:{port} in\n{out}"))
}

#[test]
fn audit_evaluates_given_cluster_network_policies() {
    let dir = policy_dir(&[("guard.yaml", GUARD)]);
    let d = dir.path().to_str().expect("utf-8");
    let o = audit(&["--policies", d, "--policies-only"]);
    assert_code(&o, 0);
    let out = stdout(&o);
    // Allowed by its name (the input's DNS answers), denied by network, by the Admin tier.
    let stripe = line(&out, "203.0.113.10", 443);
    assert!(
        stripe.contains("\"verdict\":\"allow\"")
            && stripe.contains("\"policies\":[\"ClusterNetworkPolicy/guard\"]"),
        "{stripe}"
    );
    let lab = line(&out, "198.51.100.7", 9000);
    assert!(
        lab.contains("\"verdict\":\"deny\"")
            && lab.contains("\"policies\":[\"ClusterNetworkPolicy/guard\"]"),
        "{lab}"
    );
    // Not a subject: kube-system's node exporter.
    assert!(
        line(&out, "203.0.113.99", 443).contains("\"verdict\":\"allow\""),
        "{out}"
    );
    assert!(!out.contains("warnings"), "{out}");
    assert_eq!(
        out,
        stdout(&audit(&["--policies", d, "--policies-only"])),
        "byte-stable"
    );
    assert_code(
        &audit(&["--policies", d, "--policies-only", "--fail-on-deny"]),
        3,
    );
}

#[test]
fn audit_warns_on_equal_priority_conflicts_and_denies() {
    let dir = policy_dir(&[("guard.yaml", GUARD), ("other.yaml", OTHER)]);
    let d = dir.path().to_str().expect("utf-8");
    let o = audit(&["--policies", d, "--policies-only"]);
    assert_code(&o, 0);
    let want = "ClusterNetworkPolicies guard (Deny by rule 2) and other (Accept by rule 0) have the same priority 10 in the Admin tier and disagree; evaluated as deny";
    let err = stderr(&o);
    assert!(err.contains(&format!("leash: warning: {want}")), "{err}");
    assert_eq!(err.matches("leash: warning:").count(), 1, "once: {err}");
    let lab = line(&stdout(&o), "198.51.100.7", 9000).to_owned();
    assert!(
        lab.contains("\"verdict\":\"deny\"") && lab.contains(&format!("\"warnings\":[\"{want}\"]")),
        "{lab}"
    );
}

fn explain(policies: &str, to: &str, extra: &[&str]) -> String {
    let cluster = fixture("cluster.yaml");
    let mut args = vec![
        "explain",
        "--cluster",
        &cluster,
        "--policies",
        policies,
        "--policies-only",
        "--from",
        "shop/payment-7d4-x2",
        "--to",
        to,
    ];
    args.extend_from_slice(extra);
    let o = leash(&args);
    assert_code(&o, 0);
    stdout(&o)
}

#[test]
fn explain_names_the_tier_the_policy_the_rule_and_its_action() {
    let dir = policy_dir(&[("guard.yaml", GUARD)]);
    let d = dir.path().to_str().expect("utf-8");
    let out = explain(d, "198.51.100.7:9000/TCP", &[]);
    assert!(
        out.lines().next().is_some_and(|l| l.ends_with("DENY")),
        "{out}"
    );
    assert!(
        out.contains("deny: denied by a ClusterNetworkPolicy of the Admin tier"),
        "{out}"
    );
    assert!(
        out.contains(
            "Admin tier: ClusterNetworkPolicy guard (priority 10) rule 2 (\"no-lab\"): Deny"
        ),
        "{out}"
    );
    // domainNames by the names given: without, the network rule denies; with, the name's.
    let bare = explain(d, "203.0.113.10:443/TCP", &[]);
    assert!(bare.contains("rule 1 (\"no-world\"): Deny"), "{bare}");
    let named = explain(d, "203.0.113.10:443/TCP", &["--name", "API.stripe.test."]);
    assert!(
        named.lines().next().is_some_and(|l| l.ends_with("ALLOW")),
        "{named}"
    );
    assert!(named.contains("rule 0 (\"stripe\"): Accept"), "{named}");
    // A conflict is named in the explanation too.
    let dir = policy_dir(&[("guard.yaml", GUARD), ("other.yaml", OTHER)]);
    let d = dir.path().to_str().expect("utf-8");
    let out = explain(d, "198.51.100.7:9000/TCP", &[]);
    assert!(
        out.contains(
            "warning: ClusterNetworkPolicies guard (Deny by rule 2) and other (Accept by rule 0)"
        ),
        "{out}"
    );
}

#[test]
fn a_snapshots_cluster_network_policies_count_as_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster.yaml");
    let text = std::fs::read_to_string(fixture("cluster.yaml")).expect("fixture");
    std::fs::write(&cluster, format!("{text}\n---\n{GUARD}")).expect("writes");
    let c = cluster.to_str().expect("utf-8");
    let flows = fixture("flows.jsonl");
    let o = leash(&[
        "audit",
        "--cluster",
        c,
        "--flows",
        &flows,
        "--format",
        "json",
    ]);
    assert_code(&o, 0);
    let lab = line(&stdout(&o), "198.51.100.7", 9000).to_owned();
    assert!(
        lab.contains("\"verdict\":\"deny\"") && lab.contains("ClusterNetworkPolicy/guard"),
        "{lab}"
    );
    // --policies-only leaves the applied ones out; a given one of the same name replaces it.
    let empty = policy_dir(&[]);
    let e = empty.path().to_str().expect("utf-8");
    let o = leash(&[
        "audit",
        "--cluster",
        c,
        "--flows",
        &flows,
        "--format",
        "json",
        "--policies",
        e,
        "--policies-only",
    ]);
    assert!(line(&stdout(&o), "198.51.100.7", 9000).contains("\"verdict\":\"allow\""));
    let relaxed = GUARD.replace("198.51.100.0/24", "198.51.100.128/25");
    let given = policy_dir(&[("guard.yaml", &relaxed)]);
    let g = given.path().to_str().expect("utf-8");
    let o = leash(&[
        "audit",
        "--cluster",
        c,
        "--flows",
        &flows,
        "--format",
        "json",
        "--policies",
        g,
    ]);
    assert!(
        line(&stdout(&o), "198.51.100.7", 9000).contains("\"verdict\":\"allow\""),
        "{}",
        stdout(&o)
    );
    // An invalid applied one is refused naming the snapshot and the rule.
    let bad = GUARD.replace("198.51.100.0/24", "198.51.100.0/33");
    std::fs::write(&cluster, format!("{text}\n---\n{bad}")).expect("writes");
    let o = leash(&["audit", "--cluster", c, "--flows", &flows]);
    assert_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains(c)
            && err.contains("ClusterNetworkPolicy guard")
            && err.contains("Invalid CIDR format provided"),
        "{err}"
    );
}

#[test]
fn invalid_given_policies_are_refused_naming_file_and_rule() {
    let bad = GUARD.replace("{number: 443}", "{range: {start: 443, end: 443}}");
    let dir = policy_dir(&[("guard.yaml", &bad)]);
    let d = dir.path().to_str().expect("utf-8");
    let o = audit(&["--policies", d]);
    assert_code(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains("guard.yaml")
            && err.contains("ClusterNetworkPolicy guard")
            && err.contains("spec.egress[0].protocols[0].tcp.destinationPort.range: Start port must be less than End port"),
        "{err}"
    );
    let dup = policy_dir(&[("a.yaml", GUARD), ("b.yaml", GUARD)]);
    let o = audit(&["--policies", dup.path().to_str().expect("utf-8")]);
    assert_code(&o, 2);
    assert!(
        stderr(&o).contains("ClusterNetworkPolicy guard is already defined in"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn diff_compares_the_tiers_of_both_states() {
    // The --to state's Admin Deny of the lab range breaks payment's flows there, and the
    // reachability section counts the tiers too: payment loses the whole range.
    let deny = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: no-lab}\nspec: {tier: Admin, priority: 3, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [198.51.100.0/24]}]}]}\n";
    let dir = policy_dir(&[("no-lab.yaml", deny)]);
    let o = leash(&[
        "diff",
        "--cluster",
        &fixture("cluster.yaml"),
        "--flows",
        &fixture("flows.jsonl"),
        "--from",
        "applied",
        "--to",
        dir.path().to_str().expect("utf-8"),
        "--format",
        "json",
    ]);
    assert_code(&o, 0);
    let out = stdout(&o);
    let breaks: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("{\"kind\":\"flow\""))
        .collect();
    assert!(
        breaks
            .iter()
            .any(|l| l.contains("\"dst\":\"198.51.100.7\"")),
        "{out}"
    );
    assert!(
        !breaks
            .iter()
            .any(|l| l.contains("\"dst\":\"203.0.113.10\"")),
        "{out}"
    );
    let reach: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("{\"kind\":\"reachability\""))
        .collect();
    assert!(
        reach
            .iter()
            .any(|l| l.contains("\"workload\":\"Deployment/payment\"")
                && l.contains("\"change\":\"newly-denied\"")
                && l.contains(
                    "\"destination\":{\"first\":\"198.51.100.0\",\"last\":\"198.51.100.255\"}"
                )),
        "{out}"
    );
    assert!(
        reach
            .iter()
            .all(|l| l.contains("\"first\":\"198.51.100.0\",\"last\":\"198.51.100.255\"")),
        "{out}"
    );
    assert!(
        !stderr(&o).contains("NetworkPolicies only"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn diff_matches_domain_names_of_observed_flows_by_the_dns_evidence() {
    // An Admin Deny of api.stripe.test (domainNames, experimental): the observed flows to the
    // addresses that name resolved to become breaks; the 198.51.100.7 flow does not.
    let deny = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: no-stripe}\nspec: {tier: Admin, priority: 3, subject: {namespaces: {}}, egress: [{action: Deny, to: [{domainNames: [api.stripe.test]}]}]}\n";
    let dir = policy_dir(&[("no-stripe.yaml", deny)]);
    let o = leash(&[
        "diff",
        "--cluster",
        &fixture("cluster.yaml"),
        "--flows",
        &fixture("flows.jsonl"),
        "--from",
        "applied",
        "--to",
        dir.path().to_str().expect("utf-8"),
        "--format",
        "json",
    ]);
    assert_code(&o, 0);
    let out = stdout(&o);
    let broken: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("{\"kind\":\"flow\"") && l.contains("\"to\":\"deny\""))
        .collect();
    for dst in ["203.0.113.10", "203.0.113.11", "203.0.113.12"] {
        assert!(
            broken
                .iter()
                .any(|l| l.contains(&format!("\"dst\":\"{dst}\""))),
            "{dst}: {out}"
        );
    }
    assert!(
        !broken
            .iter()
            .any(|l| l.contains("\"dst\":\"198.51.100.7\"")),
        "{out}"
    );
}

#[test]
fn diff_evaluates_observed_flows_with_the_applied_cluster_network_policies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster.yaml");
    let text = std::fs::read_to_string(fixture("cluster.yaml")).expect("fixture");
    // The Admin tier accepts the lab range whatever the NetworkPolicies say.
    let lab = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: lab}\nspec: {tier: Admin, priority: 3, subject: {namespaces: {}}, egress: [{action: Accept, to: [{networks: [198.51.100.0/24]}]}]}\n";
    std::fs::write(&cluster, format!("{text}\n---\n{lab}")).expect("writes");
    let proposal = policy_dir(&[(
        "deny.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\nspec: {podSelector: {}, policyTypes: [Egress]}\n",
    )]);
    let flows = fixture("flows.jsonl");
    let o = leash(&[
        "diff",
        "--cluster",
        cluster.to_str().expect("utf-8"),
        "--flows",
        &flows,
        "--from",
        "applied",
        "--to",
        proposal.path().to_str().expect("utf-8"),
        "--format",
        "json",
    ]);
    assert_code(&o, 0);
    let out = stdout(&o);
    let breaks: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("{\"kind\":\"flow\""))
        .collect();
    // The default deny breaks the stripe flow, not the lab range's.
    assert!(
        breaks
            .iter()
            .any(|l| l.contains("\"dst\":\"203.0.113.10\"")),
        "{out}"
    );
    assert!(
        !breaks
            .iter()
            .any(|l| l.contains("\"dst\":\"198.51.100.7\"")),
        "{out}"
    );
    // So do the reachability changes: shop loses the world but the lab range, which the
    // Admin tier accepts.
    let ranges: Vec<(std::net::IpAddr, std::net::IpAddr)> = out
        .lines()
        .filter(|l| l.starts_with("{\"kind\":\"reachability\""))
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            let d = &v["destination"];
            Some((
                d["first"].as_str()?.parse().ok()?,
                d["last"].as_str()?.parse().ok()?,
            ))
        })
        .collect();
    let inside = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        ranges.iter().any(|(a, b)| *a <= ip && ip <= *b)
    };
    assert!(inside("203.0.113.10"), "{out}");
    assert!(!inside("198.51.100.7"), "{out}");
}

const CILIUM_LAB: &str = "apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: lab, namespace: shop}
spec:
  endpointSelector: {}
  egress:
  - toCIDRSet: [{cidr: 198.51.100.0/24}]
";

#[test]
fn the_admin_tier_comes_before_cilium_network_policies_and_the_baseline_after() {
    // The Admin tier's Deny beats the CiliumNetworkPolicy's allow.
    let dir = policy_dir(&[("guard.yaml", GUARD), ("cilium.yaml", CILIUM_LAB)]);
    let d = dir.path().to_str().expect("utf-8");
    let out = explain(d, "198.51.100.7:9000/TCP", &[]);
    assert!(
        out.lines().next().is_some_and(|l| l.ends_with("DENY")),
        "{out}"
    );
    assert!(
        out.contains("CiliumNetworkPolicy: not consulted, the Admin tier decided"),
        "{out}"
    );
    // A pod a CiliumNetworkPolicy selects never reaches the Baseline tier's Deny.
    let baseline = "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: base}
spec: {tier: Baseline, priority: 1, subject: {namespaces: {}}, egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]}
";
    let dir = policy_dir(&[("base.yaml", baseline), ("cilium.yaml", CILIUM_LAB)]);
    let d = dir.path().to_str().expect("utf-8");
    let out = explain(d, "198.51.100.7:9000/TCP", &[]);
    assert!(
        out.lines().next().is_some_and(|l| l.ends_with("ALLOW")),
        "{out}"
    );
    // Without it, the Baseline denies.
    let dir = policy_dir(&[("base.yaml", baseline)]);
    let out = explain(
        dir.path().to_str().expect("utf-8"),
        "198.51.100.7:9000/TCP",
        &[],
    );
    assert!(
        out.lines().next().is_some_and(|l| l.ends_with("DENY")),
        "{out}"
    );
    assert!(
        out.contains("Baseline tier: ClusterNetworkPolicy base (priority 1) rule 0: Deny"),
        "{out}"
    );
}
