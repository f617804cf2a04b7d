//! `leash audit` reports drift from the DNS records of its input, through the built binary:
//! a name moved to an address the policy denies on the port it allows for the name's old
//! address. The JSON lines (flows first, `"kind":"flow"`, in input order; then the drift
//! lines), the table's drift section and `--fail-on-drift`.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use support::cli::{assert_code, p, stderr, stdout};
use support::snapshots;

/// shop: Deployment `payment` (pod payment-1), allowed to api.stripe.test's old address on
/// 443, and a bare pod `free` that no policy selects.
fn snapshot() -> String {
    snapshots::list(&[
        snapshots::namespace("shop"),
        snapshots::deployment("shop", "payment", "payment-1", "10.244.1.10"),
        snapshots::bare_pod("shop", "free", "free", "10.244.1.11"),
        POLICY.to_owned(),
    ])
}

const POLICY: &str = r"- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: payment-egress, namespace: shop}
  spec:
    podSelector: {matchLabels: {app: payment}}
    policyTypes: [Egress]
    egress:
    - to: [{ipBlock: {cidr: 203.0.113.10/32}}]
      ports: [{port: 443, protocol: TCP}]
";

fn flow(pod: &str, dst: &str, port: u16, at: &str) -> String {
    format!(
        r#"{{"v":1,"kind":"flow","node":"n1","pod":{{"uid":"","namespace":"shop","name":"{pod}"}},"cgroup":"/k","protocol":"TCP","dst":"{dst}","dst_port":{port},"count":1,"first_seen":"{at}","last_seen":"{at}"}}"#
    )
}

fn dns(pod: &str, name: &str, address: &str, at: &str) -> String {
    format!(
        r#"{{"v":1,"kind":"dns","node":"n1","pod":{{"uid":"","namespace":"shop","name":"{pod}"}},"server":"10.96.0.10","query":"{name}.","qtype":"A","rcode":"NOERROR","answers":[{{"name":"{name}.","type":"A","data":"{address}","ttl":60}}],"time":"{at}"}}"#
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    cluster: PathBuf,
    flows: PathBuf,
}

/// payment resolves api.stripe.test to .10 and connects on 443; then the name moves to .99.
/// `free` sees the same move, unselected.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, snapshot()).expect("writes the snapshot");
    let flows = dir.path().join("flows.jsonl");
    let lines = [
        dns(
            "payment-1",
            "api.stripe.test",
            "203.0.113.10",
            "2026-11-23T08:00:00Z",
        ),
        flow("payment-1", "203.0.113.10", 443, "2026-11-23T08:00:01Z"),
        dns(
            "free",
            "api.stripe.test",
            "203.0.113.10",
            "2026-11-23T08:00:00Z",
        ),
        dns(
            "payment-1",
            "API.Stripe.test",
            "203.0.113.99",
            "2026-11-23T09:00:00Z",
        ),
        dns(
            "free",
            "api.stripe.test",
            "203.0.113.99",
            "2026-11-23T09:00:00Z",
        ),
        flow("free", "203.0.113.99", 443, "2026-11-23T09:00:01Z"),
    ];
    std::fs::write(&flows, lines.join("\n") + "\n").expect("writes the records");
    Fixture {
        _dir: dir,
        cluster,
        flows,
    }
}

fn audit(f: &Fixture, extra: &[&str]) -> Output {
    let mut args = vec!["audit", "--cluster", p(&f.cluster), "--flows", p(&f.flows)];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_leash"))
        .args(&args)
        .env_remove("LEASH_MAX_INPUT_BYTES")
        .stdin(Stdio::null())
        .output()
        .expect("runs the leash binary")
}

#[test]
fn json_lines_flows_then_drift() {
    let f = fixture();
    let o = audit(&f, &["--format", "json"]);
    assert_code(&o, 0);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            r#"{"kind":"flow","source":{"namespace":"shop","workload":"Deployment/payment","pod":"payment-1"},"protocol":"TCP","dst":"203.0.113.10","dst_port":443,"verdict":"allow","egress":"allow","ingress":"allow","policies":["shop/payment-egress"]}"#,
            r#"{"kind":"flow","source":{"namespace":"shop","workload":"Pod/free","pod":"free"},"protocol":"TCP","dst":"203.0.113.99","dst_port":443,"verdict":"allow","egress":"allow","ingress":"allow","policies":[]}"#,
            r#"{"kind":"dns-drift","source":{"namespace":"shop","pod":"payment-1","workload":"Deployment/payment"},"name":"api.stripe.test","address":"203.0.113.99","ports":[{"protocol":"TCP","port":443}],"time":"2026-11-23T09:00:00Z","policies":["shop/payment-egress"]}"#,
        ]
    );
    // Unchanged input, unchanged bytes.
    assert_eq!(stdout(&audit(&f, &["--format", "json"])), out);
}

#[test]
fn the_table_has_a_drift_section() {
    let f = fixture();
    let o = audit(&f, &[]);
    assert_code(&o, 0);
    let table = stdout(&o);
    assert!(
        table.contains("2 flows: 2 allowed, 0 denied\n\nDRIFT SOURCE"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("shop/payment-1 ") && l.contains("api.stripe.test"))
        .unwrap_or_default();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "shop/payment-1",
            "api.stripe.test",
            "203.0.113.99",
            "TCP/443",
            "shop/payment-egress",
            "2026-11-23T09:00:00Z"
        ],
        "{table}"
    );
    assert!(table.ends_with("1 DNS answer drifted: the policies allow the name's other addresses on these ports, not the new one\n"), "{table}");
}

/// Drift fails `--fail-on-drift`, not `--fail-on-deny`: no connection was denied yet.
#[test]
fn fail_on_drift_exits_3() {
    let f = fixture();
    assert_code(&audit(&f, &["--fail-on-deny"]), 0);
    let o = audit(&f, &["--fail-on-drift"]);
    assert_code(&o, 3);
    assert!(
        stderr(&o).contains("1 DNS answers drifted"),
        "{}",
        stderr(&o)
    );
}
