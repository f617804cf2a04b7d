//! Stable proposals through the built binary (issue 12, sections 2 and 3): the `-o DIR`
//! layout (policies without evidence, `<ns>/REPORT.md`, `<ns>/evidence.json`, the index),
//! `recommend --previous DIR`, leash's applied policies as the previous proposal, expiry
//! messages, the changes section, the applied policies that also allow a rule, and the
//! warning of `serve` about a retention shorter than the expiry.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, Duration, Utc};
use support::store_flows::commit_records;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/recommend/kubeadm")
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

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// The fixture's records with every time moved by `days`, without the flows to `drop`, and
/// with a copy of each flow to `copy_from` sent to `copy_to` instead.
fn flows(dir: &Path, name: &str, days: i64, drop: &str, copy: Option<(&str, &str)>) -> PathBuf {
    let text = std::fs::read_to_string(fixture("flows.jsonl")).expect("fixture");
    let mut out = String::new();
    for line in text.lines() {
        let mut r: serde_json::Value = serde_json::from_str(line).expect("a record");
        if r["dst"].as_str().is_some_and(|d| d.starts_with(drop)) {
            continue;
        }
        for k in ["time", "first_seen", "last_seen"] {
            if let Some(t) = r[k].as_str() {
                let t: DateTime<Utc> = t.parse().expect("a time");
                r[k] = serde_json::Value::String(leash_records::time::rfc3339(
                    t + Duration::days(days),
                ));
            }
        }
        out.push_str(&r.to_string());
        out.push('\n');
        if let Some((from, to)) = copy
            && r["dst"].as_str() == Some(from)
        {
            r["dst"] = serde_json::Value::String(to.to_owned());
            r["names"] = serde_json::json!([]);
            out.push_str(&r.to_string());
            out.push('\n');
        }
    }
    let path = dir.join(name);
    std::fs::write(&path, out).expect("writes");
    path
}

/// `leash recommend --cluster CLUSTER --flows FLOWS -o OUT [extra…]`, which must succeed.
fn recommend(cluster: &Path, flows: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "recommend",
        "--cluster",
        path_str(cluster),
        "--flows",
        path_str(flows),
        "-o",
        path_str(out),
    ];
    args.extend_from_slice(extra);
    let o = leash(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    o
}

/// Every file under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("lists").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).expect("inside").display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The rows of the changes section of a namespace report.
fn changes(report: &str) -> String {
    report
        .split("## Changes since the previous proposal")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or_else(|| panic!("no changes section:\n{report}"))
        .to_owned()
}

#[test]
fn layout_keeps_evidence_out_of_policies_and_a_rerun_changes_no_policy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    recommend(&fixture("cluster.yaml"), &fixture("flows.jsonl"), &out, &[]);
    assert_eq!(
        tree(&out),
        [
            "REPORT.md",
            "kube-system/REPORT.md",
            "kube-system/evidence.json",
            "shop/REPORT.md",
            "shop/default-deny-egress.yaml",
            "shop/evidence.json",
            "shop/payment-egress.yaml",
        ]
    );
    let policy = read(&out, "shop/payment-egress.yaml");
    assert!(
        !policy.contains("events") && !policy.contains("2026-"),
        "{policy}"
    );
    // evidence.json: per rule, events, first and last seen, names, pods; an empty List.
    let ev: serde_json::Value =
        serde_json::from_str(&read(&out, "shop/evidence.json")).expect("JSON");
    assert_eq!(ev["kind"], "List");
    assert_eq!(ev["items"], serde_json::json!([]));
    assert_eq!(ev["generator"], "leash recommend");
    let rules = ev["policies"][0]["rules"].as_array().expect("rules");
    assert_eq!(ev["policies"][0]["policy"], "payment-egress");
    let stripe = rules
        .iter()
        .find(|r| {
            r["key"]
                .as_str()
                .is_some_and(|k| k.contains("203.0.113.10/31"))
        })
        .expect("the stripe rule");
    assert_eq!(stripe["events"], 20);
    assert_eq!(stripe["last_seen"], "2026-11-25T08:00:00Z");
    assert_eq!(stripe["names"], serde_json::json!(["api.stripe.test"]));
    assert_eq!(
        stripe["pods"],
        serde_json::json!(["payment-7d4-x2", "payment-7d4-y3"])
    );
    // The index links each namespace's report and evidence.
    let index = read(&out, "REPORT.md");
    assert!(
        index.contains("[shop/REPORT.md](shop/REPORT.md)"),
        "{index}"
    );
    assert!(
        index.contains("[shop/evidence.json](shop/evidence.json)"),
        "{index}"
    );
    assert!(changes(&read(&out, "shop/REPORT.md")).contains("No previous proposal"));

    // The same records again, over the previous proposal: policies and evidence byte for
    // byte the same, and no change listed.
    let before: Vec<(String, Vec<u8>)> = tree(&out)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(out.join(&f)).expect("reads");
            (f, bytes)
        })
        .collect();
    let o = recommend(
        &fixture("cluster.yaml"),
        &fixture("flows.jsonl"),
        &out,
        &["--previous", path_str(&out)],
    );
    for (f, bytes) in &before {
        if !f.ends_with("REPORT.md") {
            assert_eq!(
                &std::fs::read(out.join(f)).expect("reads"),
                bytes,
                "{f} changed"
            );
        }
    }
    assert!(
        changes(&read(&out, "shop/REPORT.md"))
            .contains("None: every rule is as in the previous proposal"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_later_window_adds_keeps_and_expires_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = fixture("cluster.yaml");
    // This week: 198.51.100.7 no longer called, a new address 203.0.113.200 called.
    let now = flows(
        dir.path(),
        "now.jsonl",
        0,
        "198.51.100.",
        Some(("203.0.113.12", "203.0.113.200")),
    );
    for (days_ago, expired) in [(10, false), (40, true)] {
        let out = dir.path().join(format!("out-{days_ago}"));
        let then = flows(
            dir.path(),
            &format!("then-{days_ago}.jsonl"),
            -days_ago,
            "-",
            None,
        );
        recommend(&cluster, &then, &out, &[]);
        let before = read(&out, "shop/payment-egress.yaml");
        recommend(&cluster, &now, &out, &["--previous", path_str(&out)]);
        let policy = read(&out, "shop/payment-egress.yaml");
        let report = read(&out, "shop/REPORT.md");
        let section = changes(&report);
        assert!(
            section.contains("| added | - | `to 203.0.113.200/32 on 443/TCP` |"),
            "{section}"
        );
        let last_seen = leash_records::time::rfc3339(
            "2026-11-25T08:00:00Z"
                .parse::<DateTime<Utc>>()
                .expect("time")
                - Duration::days(days_ago),
        );
        let ev: serde_json::Value =
            serde_json::from_str(&read(&out, "shop/evidence.json")).expect("JSON");
        let old_rule = ev["policies"][0]["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .find(|r| {
                r["key"]
                    .as_str()
                    .is_some_and(|k| k.contains("198.51.100.7/32"))
            })
            .cloned();
        if expired {
            assert!(!policy.contains("198.51.100.7/32"), "{policy}");
            assert!(
                section.contains("| removed | `to 198.51.100.7/32 on 9000-9003/TCP` | - |")
                    && section
                        .contains(&format!("last seen {last_seen}, older than --expire-after")),
                "{section}"
            );
            assert!(old_rule.is_none());
        } else {
            // Kept, in its place, and said so.
            assert!(policy.contains("198.51.100.7/32"), "{policy}");
            assert!(
                report.contains(&format!("not seen in this window; last seen {last_seen}")),
                "{report}"
            );
            let old_rule = old_rule.expect("the kept rule's evidence");
            assert_eq!(old_rule["seen_in_window"], false);
            assert_eq!(old_rule["last_seen"], last_seen.as_str());
            assert!(!section.contains("198.51.100.7"), "{section}");
            // The previous rules keep their order; the new one comes last.
            let at = |needle: &str| policy.find(needle).unwrap_or_else(|| panic!("{needle}"));
            assert!(at("198.51.100.7/32") < at("203.0.113.200/32"), "{policy}");
            assert_eq!(
                before
                    .lines()
                    .filter(|l| l.contains("cidr:"))
                    .collect::<Vec<_>>(),
                policy
                    .lines()
                    .filter(|l| l.contains("cidr:") && !l.contains("203.0.113.200"))
                    .collect::<Vec<_>>(),
            );
        }
    }
}

#[test]
fn applied_leash_policies_are_the_previous_proposal_and_others_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("first");
    recommend(
        &fixture("cluster.yaml"),
        &fixture("flows.jsonl"),
        &first,
        &[],
    );
    // The proposal is applied, and another team's policy also allows the stripe addresses.
    let mut snapshot = std::fs::read_to_string(fixture("cluster.yaml")).expect("fixture");
    snapshot.push_str("\n---\n");
    snapshot.push_str(&read(&first, "shop/payment-egress.yaml"));
    snapshot.push_str(
        "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: payment-stripe, namespace: shop}
spec:
  podSelector: {matchLabels: {app: payment}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 203.0.113.0/24}}]}]
",
    );
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, snapshot).expect("writes");
    let out = dir.path().join("second");
    recommend(&cluster, &fixture("flows.jsonl"), &out, &[]);
    let report = read(&out, "shop/REPORT.md");
    // The applied leash policy was the previous proposal: nothing changed.
    assert!(
        changes(&report).contains("None: every rule is as in the previous proposal"),
        "{report}"
    );
    // leash's own rule for the stripe addresses stays, and the other policy is named.
    let policy = read(&out, "shop/payment-egress.yaml");
    assert!(policy.contains("cidr: 203.0.113.10/31"), "{policy}");
    assert_eq!(policy, read(&first, "shop/payment-egress.yaml"));
    assert!(
        report
            .contains("also allowed by applied policies leash did not write: shop/payment-stripe."),
        "{report}"
    );
    let ev: serde_json::Value =
        serde_json::from_str(&read(&out, "shop/evidence.json")).expect("JSON");
    let named: Vec<&serde_json::Value> = ev["policies"][0]["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| r["also_allowed_by"] == serde_json::json!(["shop/payment-stripe"]))
        .collect();
    assert_eq!(named.len(), 1, "{ev}");
    assert!(
        named[0]["key"]
            .as_str()
            .is_some_and(|k| k.contains("203.0.113.10/31"))
    );
}

#[test]
fn a_missing_previous_directory_is_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let o = leash(&[
        "recommend",
        "--cluster",
        path_str(&fixture("cluster.yaml")),
        "--flows",
        path_str(&fixture("flows.jsonl")),
        "--previous",
        path_str(&missing),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(path_str(&missing)), "{}", stderr(&o));
}

/// `serve` warns when the store would forget evidence before a rule can expire. The
/// warning comes before any other check, so a run refused for another reason shows it.
#[test]
fn serve_warns_when_retention_is_shorter_than_expiry() {
    let run = |extra: &[&str]| {
        let mut args = vec![
            "serve",
            "--cluster",
            "/nonexistent",
            "--insecure",
            "--max-inflight-bytes",
            "1",
        ];
        args.extend_from_slice(extra);
        let o = leash(&args);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        stderr(&o)
    };
    let warning = "--retention is shorter than --expire-after";
    let short = run(&["--retention", "7d"]);
    assert!(
        short.contains(warning) && short.contains("7days"),
        "{short}"
    );
    assert!(
        !run(&[]).contains(warning),
        "the defaults (45d, 30d) are consistent"
    );
    assert!(
        run(&["--retention", "20d", "--expire-after", "10d"])
            .lines()
            .all(|l| !l.contains(warning))
    );
    assert!(run(&["--retention", "20d", "--expire-after", "21d"]).contains(warning));
}

/// The last evidence of a previous rule comes from the store's whole retention, not only
/// `--since`: here leash's applied policy is the previous proposal (no evidence file), and
/// the store last saw its 198.51.100.7 traffic 20 days ago, outside the 7-day window.
#[test]
fn the_store_dates_previous_rules_beyond_the_window() {
    use leash_records::{FlowRecord, Record};

    let dir = tempfile::tempdir().expect("tempdir");
    let first = dir.path().join("first");
    recommend(
        &fixture("cluster.yaml"),
        &fixture("flows.jsonl"),
        &first,
        &[],
    );
    let mut snapshot = std::fs::read_to_string(fixture("cluster.yaml")).expect("fixture");
    snapshot.push_str("\n---\n");
    snapshot.push_str(&read(&first, "shop/payment-egress.yaml"));
    let cluster_file = dir.path().join("cluster.yaml");
    std::fs::write(&cluster_file, snapshot).expect("writes");

    // The fixture's flows, 198.51.100.7 last seen 20 days ago, the rest an hour ago.
    let now = DateTime::<Utc>::from_timestamp(Utc::now().timestamp(), 0).expect("now");
    let old = now - Duration::days(20);
    let cluster = leash::cluster::Cluster::load(&fixture("cluster.yaml")).expect("fixture");
    let path = fixture("flows.jsonl");
    let file = std::fs::File::open(&path).expect("fixture flows");
    let flows: Vec<FlowRecord> = leash_records::read_records(std::io::BufReader::new(file), &path)
        .filter_map(|l| match l.expect("valid").record {
            Record::Flow(mut f) => {
                let at = if f.dst.to_string().starts_with("198.51.100.") {
                    old
                } else {
                    now - Duration::hours(1)
                };
                f.first_seen = at - Duration::hours(1);
                f.last_seen = at;
                Some(f)
            }
            Record::Dns(_) => None,
        })
        .collect();
    let db = dir.path().join("leash.db");
    commit_records(&db, &cluster, &flows);

    let run = |expire: &str, out: &str| {
        let out = dir.path().join(out);
        let o = leash(&[
            "recommend",
            "--cluster",
            path_str(&cluster_file),
            "--store",
            path_str(&db),
            "--since",
            "7d",
            "--expire-after",
            expire,
            "-o",
            path_str(&out),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        (
            read(&out, "shop/payment-egress.yaml"),
            read(&out, "shop/REPORT.md"),
        )
    };
    let stamp = leash_records::time::rfc3339(old);
    let (policy, report) = run("30d", "kept");
    assert!(policy.contains("198.51.100.7/32"), "{policy}");
    assert!(
        report.contains(&format!("not seen in this window; last seen {stamp}")),
        "{report}"
    );
    let (policy, report) = run("10d", "expired");
    assert!(!policy.contains("198.51.100.7/32"), "{policy}");
    assert!(
        changes(&report).contains(&format!("last seen {stamp}, older than --expire-after")),
        "{report}"
    );
}
