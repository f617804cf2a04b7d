//! The built `leash` binary: `recommend` output layout, golden output, determinism, stdin,
//! and the error contract (one line naming the file and line or object, exit code 2).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/recommend")
        .join(name)
}

fn leash(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leash"))
        .args(args)
        .output()
        .expect("runs the leash binary")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit code 2 and one error line containing every `needle`.
fn assert_bad_input(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one error line, got: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn kubeadm_args() -> (String, String) {
    (
        path_str(&fixture("kubeadm/cluster.yaml")).to_owned(),
        path_str(&fixture("kubeadm/flows.jsonl")).to_owned(),
    )
}

#[test]
fn stream_matches_golden_and_is_deterministic() {
    let (cluster, flows) = kubeadm_args();
    let a = leash(&["recommend", "--cluster", &cluster, "--flows", &flows]);
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    let b = leash(&["recommend", "--cluster", &cluster, "--flows", &flows]);
    assert_eq!(a.stdout, b.stdout, "byte-for-byte deterministic");
    let golden = fixture("kubeadm/expected.yaml");
    if std::env::var_os("LEASH_BLESS").is_some() {
        std::fs::write(&golden, &a.stdout).expect("writes golden");
    }
    let want = std::fs::read_to_string(&golden).expect("golden file (LEASH_BLESS=1 writes it)");
    assert_eq!(String::from_utf8_lossy(&a.stdout), want);
}

#[test]
fn output_dir_layout() {
    let (cluster, flows) = kubeadm_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let o = leash(&[
        "recommend",
        "--cluster",
        &cluster,
        "--flows",
        &flows,
        "-o",
        path_str(dir.path()),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty(), "with -o nothing goes to stdout");
    let mut files: Vec<String> = Vec::new();
    for e in walk(dir.path()) {
        files.push(
            e.strip_prefix(dir.path())
                .expect("inside")
                .display()
                .to_string(),
        );
    }
    files.sort();
    assert_eq!(
        files,
        vec![
            "REPORT.md",
            "kube-system/REPORT.md",
            "kube-system/evidence.json",
            "shop/REPORT.md",
            "shop/default-deny-egress.yaml",
            "shop/evidence.json",
            "shop/payment-egress.yaml"
        ]
    );
    let policy =
        std::fs::read_to_string(dir.path().join("shop/payment-egress.yaml")).expect("policy");
    assert!(policy.contains("name: payment-egress"), "{policy}");
    assert!(
        policy.starts_with("# Egress of Deployment shop/payment"),
        "{policy}"
    );
    let summary = stderr(&o);
    assert!(summary.contains("1 policy for 1 namespace;"), "{summary}");
    assert!(
        summary.contains("2 workloads would be fully isolated by default-deny"),
        "{summary}"
    );
    assert!(policy.contains("- Egress"), "{policy}");
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect("report");
    for (file, needle) in [
        ("shop/REPORT.md", "shop/Pod/debug"),
        ("shop/REPORT.md", "Would be fully isolated by default-deny"),
        (
            "kube-system/REPORT.md",
            "kube-system/DaemonSet/node-exporter",
        ),
        ("kube-system/REPORT.md", "not enforceable"),
        ("shop/REPORT.md", "api.stripe.test"),
        ("shop/REPORT.md", "Service shop/api 80/TCP → 8080"),
        ("REPORT.md", "[shop/REPORT.md](shop/REPORT.md)"),
        (
            "REPORT.md",
            "[kube-system/evidence.json](kube-system/evidence.json)",
        ),
    ] {
        let report = read(file);
        assert!(
            report.contains(needle),
            "{needle:?} missing from {file}:\n{report}"
        );
    }
    // The policy carries the policy, not the evidence.
    assert!(!policy.contains("events"), "{policy}");
    // Same input, same files, byte for byte.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let o = leash(&[
        "recommend",
        "--cluster",
        &cluster,
        "--flows",
        &flows,
        "-o",
        path_str(dir2.path()),
    ]);
    assert_eq!(o.status.code(), Some(0));
    for f in &files {
        assert_eq!(
            std::fs::read(dir.path().join(f)).expect("a"),
            std::fs::read(dir2.path().join(f)).expect("b"),
            "{f} differs between runs"
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("readable").flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn flows_from_stdin() {
    let (cluster, flows) = kubeadm_args();
    let input = std::fs::read(&flows).expect("flows");
    let mut child = Command::new(env!("CARGO_BIN_EXE_leash"))
        .args(["recommend", "--cluster", &cluster, "--flows", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawns");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(&input).expect("writes");
    }
    let o = child.wait_with_output().expect("waits");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let from_file = leash(&["recommend", "--cluster", &cluster, "--flows", &flows]);
    assert_eq!(o.stdout, from_file.stdout);
}

#[test]
fn unknown_pod_names_file_and_line() {
    let (cluster, _) = kubeadm_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let flows = dir.path().join("f.jsonl");
    std::fs::write(
        &flows,
        concat!(
            r#"{"v":1,"kind":"flow","node":"n1","pod":{"uid":"","namespace":"shop","name":"payment-7d4-x2"},"cgroup":"/k","protocol":"TCP","dst":"203.0.113.1","dst_port":443,"count":1,"first_seen":"2026-11-23T08:00:00Z","last_seen":"2026-11-25T08:00:00Z","names":[]}"#,
            "\n\n",
            r#"{"v":1,"kind":"flow","node":"n1","pod":{"uid":"","namespace":"shop","name":"ghost"},"cgroup":"/k","protocol":"TCP","dst":"203.0.113.1","dst_port":443,"count":1,"first_seen":"2026-11-23T08:00:00Z","last_seen":"2026-11-25T08:00:00Z","names":[]}"#,
            "\n"
        ),
    )
    .expect("writes");
    let o = leash(&[
        "recommend",
        "--cluster",
        &cluster,
        "--flows",
        path_str(&flows),
    ]);
    assert_bad_input(&o, &[&format!("{}:3", flows.display()), "shop/ghost"]);
}

#[test]
fn malformed_record_names_file_and_line() {
    let (cluster, _) = kubeadm_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let flows = dir.path().join("bad.jsonl");
    std::fs::write(
        &flows,
        "{\"v\":1,\"kind\":\"flow\",\"dst\":\"not-an-ip\"}\n",
    )
    .expect("writes");
    let o = leash(&[
        "recommend",
        "--cluster",
        &cluster,
        "--flows",
        path_str(&flows),
    ]);
    assert_bad_input(&o, &[&format!("{}:1", flows.display())]);
}

#[test]
fn malformed_yaml_names_the_file_and_line() {
    let (_, flows) = kubeadm_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("c.yaml");
    std::fs::write(
        &cluster,
        "apiVersion: v1\nkind: List\nitems:\n- {kind: Pod, metadata: [\n",
    )
    .expect("writes");
    let o = leash(&[
        "recommend",
        "--cluster",
        path_str(&cluster),
        "--flows",
        &flows,
    ]);
    assert_bad_input(&o, &[path_str(&cluster)]);
}

#[test]
fn invalid_cidr_names_the_object() {
    let (_, flows) = kubeadm_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("c.yaml");
    let text = std::fs::read_to_string(fixture("kubeadm/cluster.yaml"))
        .expect("fixture")
        .replace("podCIDRs: [10.244.2.0/24]", "podCIDRs: [10.244.2.0/33]");
    std::fs::write(&cluster, text).expect("writes");
    let o = leash(&[
        "recommend",
        "--cluster",
        path_str(&cluster),
        "--flows",
        &flows,
    ]);
    assert_bad_input(&o, &[path_str(&cluster), "Node n2", "10.244.2.0/33"]);
}

#[test]
fn missing_file_is_bad_input() {
    let (cluster, _) = kubeadm_args();
    let o = leash(&[
        "recommend",
        "--cluster",
        &cluster,
        "--flows",
        "/nonexistent/flows.jsonl",
    ]);
    assert_bad_input(&o, &["/nonexistent/flows.jsonl"]);
}

/// Recommend into a directory, then audit the observed flows against it: everything passes.
/// Remove the workload policy and keep only the default deny: `--fail-on-deny` exits 3.
#[test]
fn audit_round_trip_and_fail_on_deny_exit_3() {
    let (cluster, flows) = kubeadm_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("policies");
    let o = leash(&[
        "recommend",
        "--cluster",
        &cluster,
        "--flows",
        &flows,
        "-o",
        path_str(&out),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    std::fs::remove_file(out.join("REPORT.md")).expect("report exists");

    let o = leash(&[
        "audit",
        "--cluster",
        &cluster,
        "--policies",
        path_str(&out),
        "--flows",
        &flows,
        "--format",
        "json",
        "--fail-on-deny",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\n{}",
        stderr(&o),
        String::from_utf8_lossy(&o.stdout)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let input_flows = std::fs::read_to_string(&flows)
        .expect("flows")
        .lines()
        .filter(|l| l.contains("\"kind\":\"flow\""))
        .count();
    assert_eq!(lines.len(), input_flows, "one object per input flow");
    assert!(lines.iter().all(|l| l["verdict"] == "allow"), "{lines:#?}");
    assert_eq!(lines[0]["source"]["namespace"], "shop");

    std::fs::remove_file(out.join("shop/payment-egress.yaml")).expect("policy exists");
    let o = leash(&[
        "audit",
        "--cluster",
        &cluster,
        "--policies",
        path_str(&out),
        "--flows",
        &flows,
        "--fail-on-deny",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(table.contains("deny"), "{table}");
    // Without --fail-on-deny the same denials exit 0.
    let o = leash(&[
        "audit",
        "--cluster",
        &cluster,
        "--policies",
        path_str(&out),
        "--flows",
        &flows,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn explain_names_the_allowing_policy() {
    let (cluster, flows) = kubeadm_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("p");
    let o = leash(&[
        "recommend",
        "--cluster",
        &cluster,
        "--flows",
        &flows,
        "-o",
        path_str(&out),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = leash(&[
        "explain",
        "--cluster",
        &cluster,
        "--policies",
        path_str(&out),
        "--from",
        "shop/payment-7d4-x2",
        "--to",
        "10.96.10.10:80/TCP",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("shop/payment-egress"), "{text}");
    // The debug pod is isolated by the default deny only.
    let o = leash(&[
        "explain",
        "--cluster",
        &cluster,
        "--policies",
        path_str(&out),
        "--from",
        "shop/debug",
        "--to",
        "203.0.113.10:443/TCP",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("default-deny-egress"), "{text}");
}

#[test]
fn audit_and_explain_bad_input_exit_2() {
    let (cluster, flows) = kubeadm_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x, namespace: shop}\nspec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.0.1/24}\n",
    )
    .expect("writes");
    let o = leash(&[
        "audit",
        "--cluster",
        &cluster,
        "--policies",
        path_str(&bad),
        "--flows",
        &flows,
    ]);
    assert_bad_input(&o, &[path_str(&bad), "10.0.0.1/24"]);
    let o = leash(&[
        "explain",
        "--cluster",
        &cluster,
        "--policies",
        path_str(&bad),
        "--from",
        "shop",
        "--to",
        "10.0.0.1:1/TCP",
    ]);
    assert_bad_input(&o, &["shop"]);
}

/// A second run into the same directory removes the policies it no longer recommends (only
/// files leash wrote), so the directory diff is the real change.
#[test]
fn rerun_removes_stale_leash_policies_only() {
    let (cluster, flows) = kubeadm_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path();
    // Left over from an earlier run: a leash policy for a workload now gone, in a namespace
    // now without policies, and hand-written files leash must not touch, even one that
    // carries leash's label but not its header.
    std::fs::create_dir_all(out.join("shop")).expect("mkdir");
    std::fs::create_dir_all(out.join("gone")).expect("mkdir");
    let stale = "# Egress of Deployment shop/old, generated by `leash recommend` from observed \
                 traffic.\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  \
                 name: old-egress\n  labels:\n    app.kubernetes.io/managed-by: leash\n";
    std::fs::write(out.join("shop/old-egress.yaml"), stale).expect("writes");
    std::fs::write(out.join("gone/default-deny-egress.yaml"), stale).expect("writes");
    std::fs::write(out.join("shop/hand-written.yaml"), "kind: NetworkPolicy\n").expect("writes");
    let labelled = stale.lines().skip(1).collect::<Vec<_>>().join("\n");
    std::fs::write(out.join("shop/labelled-egress.yaml"), &labelled).expect("writes");
    let o = leash(&[
        "recommend",
        "--cluster",
        &cluster,
        "--flows",
        &flows,
        "-o",
        path_str(out),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut files: Vec<String> = walk(out)
        .iter()
        .map(|p| p.strip_prefix(out).expect("inside").display().to_string())
        .collect();
    files.sort();
    assert_eq!(
        files,
        vec![
            "REPORT.md",
            "kube-system/REPORT.md",
            "kube-system/evidence.json",
            "shop/REPORT.md",
            "shop/default-deny-egress.yaml",
            "shop/evidence.json",
            "shop/hand-written.yaml",
            "shop/labelled-egress.yaml",
            "shop/payment-egress.yaml"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(out.join("shop/labelled-egress.yaml")).expect("reads"),
        labelled
    );
    assert!(
        !out.join("gone").exists(),
        "the emptied namespace directory is removed"
    );
}

/// `--namespace NS…` and `--flows FILE…` take several values after one flag, or repeated
/// flags; a namespace without traffic yields nothing.
#[test]
fn multi_value_flags() {
    let (cluster, flows) = kubeadm_args();
    let a = leash(&[
        "recommend",
        "--cluster",
        &cluster,
        "--namespace",
        "shop",
        "billing",
        "--flows",
        &flows,
        &flows,
    ]);
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    let b = leash(&[
        "recommend",
        "--cluster",
        &cluster,
        "--flows",
        &flows,
        "--flows",
        &flows,
    ]);
    assert_eq!(a.stdout, b.stdout, "only shop has policies either way");
    // Reading the same records twice doubles the evidence (in the report: policy files
    // carry none), not the rules.
    let dir = tempfile::tempdir().expect("tempdir");
    let o = leash(&[
        "recommend",
        "--cluster",
        &cluster,
        "--flows",
        &flows,
        &flows,
        "-o",
        path_str(dir.path()),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = std::fs::read_to_string(dir.path().join("shop/REPORT.md")).expect("report");
    assert!(text.contains("366 events from 2 pod(s)"), "{text}");
    let c = leash(&[
        "recommend",
        "--cluster",
        &cluster,
        "--namespace",
        "billing",
        "--flows",
        &flows,
    ]);
    assert_eq!(c.status.code(), Some(0), "{}", stderr(&c));
    assert!(
        c.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&c.stdout)
    );
}

/// An applied egress policy that leash did not write and that selects a workload leash
/// proposes a policy for needs a human; leash's own policies, ingress-only policies and
/// policies of other namespaces do not.
#[test]
fn egress_already_restricted_by_another_author_needs_attention() {
    let (cluster, flows) = kubeadm_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshot = dir.path().join("cluster.yaml");
    let mut text = std::fs::read_to_string(&cluster).expect("fixture");
    text.push_str(
        r#"
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: payment-lockdown, namespace: shop}
spec:
  podSelector: {matchLabels: {tier: backend}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: payment-egress-old
  namespace: shop
  labels: {app.kubernetes.io/managed-by: leash}
spec:
  podSelector: {matchLabels: {app: payment}}
  policyTypes: [Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: payment-ingress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: payment}}
  ingress: [{}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: everything, namespace: kube-system}
spec:
  podSelector: {}
  policyTypes: [Egress]
"#,
    );
    std::fs::write(&snapshot, text).expect("write snapshot");
    let report = report_of(path_str(&snapshot), &flows, &dir.path().join("out"));
    let section = report
        .split("### Egress already restricted by another author")
        .nth(1)
        .unwrap_or_else(|| panic!("no section in\n{report}"));
    let section = section.split("\n### ").next().unwrap_or(section);
    assert!(
        section.contains("| shop/Deployment/payment | shop/payment-lockdown |"),
        "{section}"
    );
    for other in [
        "payment-egress-old",
        "payment-ingress",
        "kube-system/everything",
    ] {
        assert!(!section.contains(other), "{other} flagged:\n{section}");
    }

    // Without another author's egress policy, nothing is flagged.
    let report = report_of(&cluster, &flows, &dir.path().join("plain"));
    assert!(
        !report.contains("Egress already restricted by another author"),
        "{report}"
    );
}

/// REPORT.md of a successful `leash recommend --cluster CLUSTER --flows FLOWS -o OUT`.
fn report_of(cluster: &str, flows: &str, out: &Path) -> String {
    let o = leash(&[
        "recommend",
        "--cluster",
        cluster,
        "--flows",
        flows,
        "-o",
        path_str(out),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    std::fs::read_to_string(out.join("shop/REPORT.md")).expect("report")
}
