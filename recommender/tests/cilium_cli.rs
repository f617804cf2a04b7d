//! The built `leash` binary with `recommend --format cilium`: the stream, `-o DIR` (written,
//! re-run in place, replaced by the NetworkPolicy format), and the flag's errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> String {
    let p: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/recommend/kubeadm")
        .join(name);
    p.to_str().expect("utf-8 path").to_owned()
}

fn recommend(extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leash"))
        .args(["recommend", "--cluster", &fixture("cluster.yaml")])
        .args(["--flows", &fixture("flows.jsonl")])
        .args(extra)
        .output()
        .expect("runs the leash binary")
}

fn ok(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_stream_is_cilium_network_policies_and_deterministic() {
    let a = ok(&recommend(&["--format", "cilium"]));
    assert_eq!(a, ok(&recommend(&["--format", "cilium"])), "byte-stable");
    assert!(a.contains("kind: CiliumNetworkPolicy"), "{a}");
    assert!(a.contains("- matchName: api.stripe.test"), "{a}");
    assert!(a.contains("- kube-apiserver"), "{a}");
    // Every CiliumNetworkPolicy reads back through the strict subset.
    for doc in a.split("---\n").filter(|d| d.contains("cilium.io/v2")) {
        leash::cilium::from_yaml(doc).unwrap_or_else(|e| panic!("{e}\n{doc}"));
    }
    // The default stays NetworkPolicy.
    let np = ok(&recommend(&[]));
    assert!(!np.contains("CiliumNetworkPolicy") && np.contains("kind: NetworkPolicy"));
    assert_eq!(np, ok(&recommend(&["--format", "networkpolicy"])));
}

#[test]
fn output_dir_writes_cilium_files_and_each_format_replaces_the_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8");
    ok(&recommend(&["--format", "cilium", "-o", d]));
    let file = dir.path().join("shop/payment-egress.yaml");
    let text = std::fs::read_to_string(&file).expect("payment's policy");
    assert!(
        text.starts_with("# Egress of Deployment shop/payment"),
        "{text}"
    );
    assert!(text.contains("kind: CiliumNetworkPolicy") && text.contains("toFQDNs"));
    let deny = std::fs::read_to_string(dir.path().join("shop/default-deny-egress.yaml"))
        .expect("default deny");
    assert!(deny.contains("kind: NetworkPolicy"), "{deny}");
    // Re-run in place: leash recognises its own Cilium files.
    ok(&recommend(&["--format", "cilium", "-o", d]));
    assert_eq!(std::fs::read_to_string(&file).expect("again"), text);
    ok(&recommend(&["-o", d]));
    let np = std::fs::read_to_string(&file).expect("replaced");
    assert!(
        np.contains("kind: NetworkPolicy") && !np.contains("toFQDNs"),
        "{np}"
    );
}

#[test]
fn an_unknown_format_is_a_usage_error() {
    let o = recommend(&["--format", "calico"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("expected networkpolicy or cilium"), "{err}");
}

fn leash(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leash"))
        .args(args)
        .output()
        .expect("runs the leash binary")
}

/// `recommend --format cilium -o DIR` of the fixture.
fn cilium_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    ok(&recommend(&[
        "--format",
        "cilium",
        "-o",
        dir.path().to_str().expect("utf-8"),
    ]));
    dir
}

#[test]
fn audit_evaluates_cilium_policies_with_the_names_of_the_input() {
    let dir = cilium_dir();
    let d = dir.path().to_str().expect("utf-8");
    let (cluster, flows) = (fixture("cluster.yaml"), fixture("flows.jsonl"));
    let base = [
        "audit",
        "--cluster",
        &cluster,
        "--flows",
        &flows,
        "--policies",
        d,
    ];
    let all = ok(&leash(
        &[&base[..], &["--policies-only", "--fail-on-deny"]].concat(),
    ));
    assert!(all.contains("13 allowed, 0 denied"), "{all}");
    // Name another host: the addresses api.stripe.test returned are denied now, by the
    // CiliumNetworkPolicy selecting the pod (the NetworkPolicy default deny alone would say
    // the same; the policy named is the Cilium one).
    let file = dir.path().join("shop/payment-egress.yaml");
    let text = std::fs::read_to_string(&file).expect("policy");
    std::fs::write(
        &file,
        text.replace("matchName: api.stripe.test", "matchName: other.stripe.test"),
    )
    .expect("rewrites");
    let o = leash(
        &[
            &base[..],
            &["--policies-only", "--fail-on-deny", "--format", "json"],
        ]
        .concat(),
    );
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let stripe: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("\"dst\":\"203.0.113.1"))
        .collect();
    assert_eq!(stripe.len(), 3, "{out}");
    assert!(
        stripe
            .iter()
            .all(|l| l.contains("\"verdict\":\"deny\"") && l.contains("shop/payment-egress")),
        "{out}"
    );
    assert!(
        out.lines()
            .filter(|l| l.contains("\"verdict\":\"deny\""))
            .count()
            == 3,
        "{out}"
    );
}

#[test]
fn explain_matches_to_fqdns_by_the_names_given() {
    let dir = cilium_dir();
    let d = dir.path().to_str().expect("utf-8");
    let cluster = fixture("cluster.yaml");
    let base = [
        "explain",
        "--cluster",
        &cluster,
        "--policies",
        d,
        "--policies-only",
        "--from",
        "shop/payment-7d4-x2",
        "--to",
        "203.0.113.10:443/TCP",
    ];
    let bare = ok(&leash(&base));
    assert!(
        bare.lines().next().is_some_and(|l| l.ends_with("DENY")),
        "{bare}"
    );
    assert!(
        bare.contains("no DNS lookup returned this address"),
        "{bare}"
    );
    let named = ok(&leash(
        &[&base[..], &["--name", "API.stripe.test."]].concat(),
    ));
    assert!(
        named.lines().next().is_some_and(|l| l.ends_with("ALLOW")),
        "{named}"
    );
    assert!(
        named.contains("toFQDNs matchName api.stripe.test"),
        "{named}"
    );
}

#[test]
fn diff_refuses_cilium_policies_naming_them_and_audit_refuses_fields_outside_the_subset() {
    let dir = cilium_dir();
    let d = dir.path().to_str().expect("utf-8");
    let cluster = fixture("cluster.yaml");
    let o = leash(&[
        "diff",
        "--cluster",
        &cluster,
        "--from",
        "applied",
        "--to",
        d,
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("diff compares NetworkPolicies only")
            && err.contains("payment-egress.yaml: CiliumNetworkPolicy shop/payment-egress"),
        "{err}"
    );
    let file = dir.path().join("shop/payment-egress.yaml");
    let text = std::fs::read_to_string(&file).expect("policy");
    std::fs::write(
        &file,
        text.replace("  egress:\n", "  egressDeny: []\n  egress:\n"),
    )
    .expect("rewrites");
    let o = leash(&[
        "audit",
        "--cluster",
        &cluster,
        "--flows",
        &fixture("flows.jsonl"),
        "--policies",
        d,
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("payment-egress.yaml")
            && err.contains("egressDeny")
            && err.contains("shop/payment-egress"),
        "{err}"
    );
}
