//! The built `leash guardrails` on the kubeadm demo fixture: the YAML stream and `-o DIR`
//! (CRD-valid objects, the report, stale files removed), the self-check over the whole stack
//! (the Baseline deferred without leash's proposal; exit 1 when the stack denies observed traffic), the flags, and bad input (exit 2).

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use leash::cnp::ClusterNetworkPolicy;
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

/// leash's proposal for the fixture, written with `recommend -o`.
fn proposal() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = leash(&[
        "recommend",
        "--cluster",
        &fixture("cluster.yaml"),
        "--flows",
        &fixture("flows.jsonl"),
        "-o",
        dir.path().to_str().expect("utf-8"),
    ]);
    assert_code(&out, 0);
    dir
}

fn guardrails(proposed: &Path, extra: &[&str]) -> Output {
    let cluster = fixture("cluster.yaml");
    let flows = fixture("flows.jsonl");
    let mut args = vec![
        "guardrails",
        "--cluster",
        &cluster,
        "--flows",
        &flows,
        "--proposed",
        proposed.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    leash(&args)
}

fn objects(text: &str) -> Vec<ClusterNetworkPolicy> {
    leash::cnp::objects_of_text(text).expect("the output reads back")
}

fn by_name<'a>(all: &'a [ClusterNetworkPolicy], name: &str) -> &'a ClusterNetworkPolicy {
    all.iter()
        .find(|p| p.name() == name)
        .unwrap_or_else(|| panic!("{name}"))
}

fn subject_values(p: &ClusterNetworkPolicy) -> serde_json::Value {
    serde_json::to_value(&p.spec.subject).expect("json")["namespaces"]["matchExpressions"][0]
        ["values"]
        .clone()
}

#[test]
fn the_stream_is_crd_valid_and_self_checked_with_the_proposal() {
    let prop = proposal();
    let out = guardrails(prop.path(), &[]);
    assert_code(&out, 0);
    let all = objects(&stdout(&out));
    let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
    assert_eq!(
        names,
        [
            "guardrails-default-deny",
            "guardrails-dns",
            "guardrails-metadata"
        ]
    );
    let schema = support::crd::schema(
        "policy.networking.k8s.io_clusternetworkpolicies.standard.yaml",
        "v1alpha2",
    );
    for p in &all {
        let problems = support::crd::validate(&schema, &serde_json::to_value(p).expect("json"));
        assert!(problems.is_empty(), "{}: {problems:?}", p.name());
    }
    assert_eq!(
        subject_values(by_name(&all, "guardrails-default-deny")),
        serde_json::json!(["kube-system"])
    );
    // Unchanged input, unchanged bytes.
    assert_eq!(stdout(&out), stdout(&guardrails(prop.path(), &[])));
}

#[test]
fn without_the_proposal_the_baseline_defers_what_it_would_break_and_says_so() {
    let out = leash(&[
        "guardrails",
        "--cluster",
        &fixture("cluster.yaml"),
        "--flows",
        &fixture("flows.jsonl"),
    ]);
    assert_code(&out, 0);
    let err = stderr(&out);
    assert!(
        err.contains("the Baseline default deny defers 1 namespace(s)") && err.contains(": shop"),
        "{err}"
    );
    let all = objects(&stdout(&out));
    assert_eq!(
        subject_values(by_name(&all, "guardrails-default-deny")),
        serde_json::json!(["kube-system", "shop"])
    );
}

#[test]
fn an_applied_admin_deny_of_observed_traffic_fails_the_self_check_naming_the_flows() {
    // A platform team's Admin deny of TEST-NET-3 is applied: the stack denies payment's
    // external call whatever leash proposes, and the self-check says so (exit 1, nothing out).
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = std::fs::read_to_string(fixture("cluster.yaml")).expect("reads");
    cluster.push_str(
        "\n---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
         metadata:\n  name: platform-deny\nspec:\n  tier: Admin\n  priority: 5\n  subject:\n\
         \x20   namespaces: {}\n  egress:\n  - action: Deny\n    to:\n    - networks: \
         [\"203.0.113.0/24\"]\n",
    );
    let path = dir.path().join("cluster.yaml");
    std::fs::write(&path, cluster).expect("writes");
    let prop = proposal();
    let out = leash(&[
        "guardrails",
        "--cluster",
        path.to_str().expect("utf-8"),
        "--flows",
        &fixture("flows.jsonl"),
        "--proposed",
        prop.path().to_str().expect("utf-8"),
    ]);
    assert_code(&out, 1);
    assert!(stdout(&out).is_empty(), "nothing printed on failure");
    let err = stderr(&out);
    assert!(err.contains("guardrails self-check failed"), "{err}");
    assert!(
        err.contains("shop/payment-7d4-x2 -> 203.0.113.10:443/TCP") && err.contains("Admin tier"),
        "{err}"
    );
}

#[test]
fn a_proposal_directory_holding_earlier_guardrails_is_read_and_they_are_proposed_again() {
    // recommend -o DIR, then guardrails --proposed DIR -o DIR, twice: the second run reads
    // the first run's ClusterNetworkPolicies in DIR and gives the same bytes.
    let prop = proposal();
    let dir = prop.path().to_str().expect("utf-8");
    let run = || {
        let out = guardrails(prop.path(), &["-o", dir]);
        assert_code(&out, 0);
        std::fs::read_to_string(prop.path().join("cluster/guardrails-default-deny.yaml"))
            .expect("written")
    };
    let first = run();
    assert_eq!(first, run());
    let out = guardrails(prop.path(), &[]);
    assert_code(&out, 0);
    assert_eq!(
        subject_values(by_name(&objects(&stdout(&out)), "guardrails-default-deny")),
        serde_json::json!(["kube-system"])
    );
}

#[test]
fn protected_and_exempt_flags_shape_the_tiers() {
    let prop = proposal();
    let out = guardrails(
        prop.path(),
        &[
            "--protected",
            "198.51.100.0/24",
            "--exempt-namespace",
            "kube-system",
            "--exempt-namespace",
            "billing",
        ],
    );
    assert_code(&out, 0);
    let all = objects(&stdout(&out));
    // shop reached 198.51.100.7: left out of the protected deny.
    let protected = by_name(&all, "guardrails-protected");
    assert_eq!(
        subject_values(protected),
        serde_json::json!(["billing", "default", "kube-system"])
    );
    assert_eq!(
        protected.spec.egress[0].to[0].networks,
        Some(vec!["198.51.100.0/24".to_owned()])
    );
    assert_eq!(
        subject_values(by_name(&all, "guardrails-default-deny")),
        serde_json::json!(["billing", "kube-system"])
    );
}

#[test]
fn output_dir_writes_the_policies_and_the_report_and_removes_stale_files() {
    let prop = proposal();
    let out_dir = tempfile::tempdir().expect("tempdir");
    let cluster_dir = out_dir.path().join("cluster");
    std::fs::create_dir_all(&cluster_dir).expect("mkdir");
    std::fs::write(cluster_dir.join("guardrails-protected.yaml"), "stale").expect("writes");
    std::fs::write(cluster_dir.join("team-policy.yaml"), "kept").expect("writes");
    let out = guardrails(
        prop.path(),
        &["-o", out_dir.path().to_str().expect("utf-8")],
    );
    assert_code(&out, 0);
    assert!(stdout(&out).is_empty());
    let mut files: Vec<String> = std::fs::read_dir(&cluster_dir)
        .expect("lists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "REPORT.md",
            "guardrails-default-deny.yaml",
            "guardrails-dns.yaml",
            "guardrails-metadata.yaml",
            "team-policy.yaml"
        ]
    );
    let meta =
        std::fs::read_to_string(cluster_dir.join("guardrails-metadata.yaml")).expect("reads");
    assert_eq!(objects(&meta)[0].name(), "guardrails-metadata");
    let report = std::fs::read_to_string(cluster_dir.join("REPORT.md")).expect("reads");
    assert!(
        report.contains("| guardrails-metadata | Admin | 10 | 1 |"),
        "{report}"
    );
    assert!(report.contains("169.254.169.254/32"), "{report}");
    assert!(report.contains("Baseline Accept DNS"), "{report}");
}

#[test]
fn bad_input_exits_2() {
    let prop = proposal();
    let out = guardrails(prop.path(), &["--protected", "not-a-cidr"]);
    assert_code(&out, 2);
    let out = leash(&[
        "guardrails",
        "--cluster",
        "/nonexistent/cluster.yaml",
        "--flows",
        &fixture("flows.jsonl"),
    ]);
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("/nonexistent/cluster.yaml"),
        "{}",
        stderr(&out)
    );
    // Observations are required.
    let out = leash(&["guardrails", "--cluster", &fixture("cluster.yaml")]);
    assert_code(&out, 2);
}

#[test]
fn recommend_baseline_cnp_drops_the_default_denies_and_keeps_the_dns_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8");
    let cluster = fixture("cluster.yaml");
    let flows = fixture("flows.jsonl");
    let recommend = |extra: &[&str]| {
        let mut args = vec![
            "recommend",
            "--cluster",
            &cluster,
            "--flows",
            &flows,
            "-o",
            d,
        ];
        args.extend_from_slice(extra);
        assert_code(&leash(&args), 0);
    };
    recommend(&[]);
    assert!(dir.path().join("shop/default-deny-egress.yaml").is_file());
    // The Baseline tier replaces it: the earlier file is removed, the workload's stays.
    recommend(&["--baseline", "cnp"]);
    assert!(!dir.path().join("shop/default-deny-egress.yaml").exists());
    let payment =
        std::fs::read_to_string(dir.path().join("shop/payment-egress.yaml")).expect("reads");
    assert!(payment.contains("port: 53"), "{payment}");
    assert!(payment.contains("k8s-app: kube-dns"), "{payment}");
    // The whole stack still allows every observed flow.
    assert_code(&guardrails(dir.path(), &[]), 0);
    let out = leash(&[
        "recommend",
        "--cluster",
        &fixture("cluster.yaml"),
        "--flows",
        &fixture("flows.jsonl"),
        "--baseline",
        "nope",
    ]);
    assert_code(&out, 2);
}

#[test]
fn diff_shows_what_the_guardrails_break_workload_by_workload() {
    let prop = proposal();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8");
    assert_code(&guardrails(prop.path(), &["-o", d]), 0);
    let diff = |to: &str| {
        leash(&[
            "diff",
            "--cluster",
            &fixture("cluster.yaml"),
            "--flows",
            &fixture("flows.jsonl"),
            "--from",
            "applied",
            "--to",
            to,
            "--format",
            "json",
            "--fail-on-break",
        ])
    };
    // The guardrails alone: payment, which no NetworkPolicy selects, falls to the Baseline
    // default deny; its DNS stays allowed.
    let o = diff(d);
    assert_code(&o, 3);
    let out = stdout(&o);
    let breaks: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("{\"kind\":\"flow\""))
        .collect();
    assert!(
        breaks.iter().any(|l| l.contains("\"dst\":\"203.0.113.10\"")
            && l.contains("\"dst_port\":443")
            && l.contains("payment")),
        "{out}"
    );
    assert!(
        !breaks.iter().any(|l| l.contains("\"dst_port\":53")),
        "{out}"
    );
    // With leash's proposal beside them: nothing breaks.
    for entry in std::fs::read_dir(prop.path()).expect("lists") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_dir() {
            let target = dir.path().join(entry.file_name());
            std::fs::create_dir_all(&target).expect("mkdir");
            for f in std::fs::read_dir(entry.path()).expect("lists") {
                let f = f.expect("entry");
                std::fs::copy(f.path(), target.join(f.file_name())).expect("copies");
            }
        }
    }
    assert_code(&diff(d), 0);
}
