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
    assert!(text.starts_with("# Egress of Deployment shop/payment"), "{text}");
    assert!(text.contains("kind: CiliumNetworkPolicy") && text.contains("toFQDNs"));
    let deny = std::fs::read_to_string(dir.path().join("shop/default-deny-egress.yaml"))
        .expect("default deny");
    assert!(deny.contains("kind: NetworkPolicy"), "{deny}");
    // Re-run in place: leash recognises its own Cilium files.
    ok(&recommend(&["--format", "cilium", "-o", d]));
    assert_eq!(std::fs::read_to_string(&file).expect("again"), text);
    ok(&recommend(&["-o", d]));
    let np = std::fs::read_to_string(&file).expect("replaced");
    assert!(np.contains("kind: NetworkPolicy") && !np.contains("toFQDNs"), "{np}");
}

#[test]
fn an_unknown_format_is_a_usage_error() {
    let o = recommend(&["--format", "calico"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("expected networkpolicy or cilium"), "{err}");
}
