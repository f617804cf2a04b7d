//! `leash recommend -o DIR` end to end: REPORT.md groups a policy's external rules by DNS
//! name, with each name's addresses over the window, its churn, the new addresses of the last
//! day and week, and how many its rules allow; addresses without a name are "no name";
//! names are escaped; `evidence.json` carries each name's address history.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};
use support::cli::{assert_code, p};

fn cluster() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recommend/kubeadm/cluster.yaml")
}

fn leash(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leash"))
        .args(args)
        .output()
        .expect("runs the leash binary")
}

fn pod() -> Value {
    json!({"uid": "00000000-0000-0000-0000-0000000000a1", "namespace": "shop", "name": "payment-7d4-x2"})
}

/// A DNS answer to `query` at `time`: `answers` as (owner, type, data, ttl).
fn answer(time: &str, query: &str, answers: &[(&str, &str, &str, u32)]) -> Value {
    json!({
        "v": 1, "kind": "dns", "node": "n1", "pod": pod(), "cgroup": "/k",
        "server": "10.96.0.10", "query": query, "qtype": "A", "rcode": "NOERROR",
        "answers": answers.iter().map(|(name, rtype, data, ttl)| json!({
            "name": name, "type": rtype, "data": data, "ttl": ttl
        })).collect::<Vec<_>>(),
        "time": time
    })
}

fn flow(dst: &str, first: &str, last: &str, names: &[&str]) -> Value {
    json!({
        "v": 1, "kind": "flow", "node": "n1", "pod": pod(), "cgroup": "/k",
        "protocol": "TCP", "dst": dst, "dst_port": 443, "count": 3,
        "first_seen": first, "last_seen": last, "names": names
    })
}

const HOSTILE: &str = "*pwn*.[x](https://evil.test)_@admin.test";

/// `api.stripe.test` had 203.0.113.10 for weeks, gained .11 five days before the window's
/// end and moved (behind a CNAME) to .12 half a day before it; the pod connected to .10 and
/// .11 only. 198.51.100.7 was reached without any DNS answer.
fn records() -> String {
    let lines = [
        answer(
            "2026-11-01T00:00:00Z",
            "api.stripe.test.",
            &[("api.stripe.test.", "A", "203.0.113.10", 60)],
        ),
        answer(
            "2026-11-20T00:00:00Z",
            "api.stripe.test.",
            &[
                ("api.stripe.test.", "A", "203.0.113.10", 60),
                ("api.stripe.test.", "A", "203.0.113.11", 60),
            ],
        ),
        answer(
            "2026-11-24T12:00:00Z",
            "Api.Stripe.Test.",
            &[
                ("api.stripe.test.", "CNAME", "edge.stripe-cdn.test.", 300),
                ("edge.stripe-cdn.test.", "A", "203.0.113.12", 20),
            ],
        ),
        flow(
            "203.0.113.10",
            "2026-11-01T00:00:01Z",
            "2026-11-24T00:00:00Z",
            &["api.stripe.test"],
        ),
        flow(
            "203.0.113.11",
            "2026-11-20T00:00:01Z",
            "2026-11-24T00:00:00Z",
            &["api.stripe.test"],
        ),
        flow(
            "198.51.100.7",
            "2026-11-02T00:00:00Z",
            "2026-11-25T00:00:00Z",
            &[],
        ),
        answer(
            "2026-11-24T23:00:00Z",
            HOSTILE,
            &[(HOSTILE, "A", "198.51.100.20", 5)],
        ),
        flow(
            "198.51.100.20",
            "2026-11-24T23:00:01Z",
            "2026-11-24T23:00:02Z",
            &[],
        ),
    ];
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// The REPORT.md rows of the names section of `shop/payment-egress`.
fn name_rows(report: &str) -> Vec<&str> {
    let section = report
        .split("#### External destinations by name")
        .nth(1)
        .expect("a names section");
    section
        .lines()
        .skip_while(|l| !l.starts_with("|---"))
        .skip(1)
        .take_while(|l| l.starts_with('|'))
        .collect()
}

#[test]
fn the_report_groups_external_rules_by_name_with_their_churn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flows = dir.path().join("records.jsonl");
    std::fs::write(&flows, records()).expect("writes records");
    let run = |out: &Path| {
        let o = leash(&[
            "recommend",
            "--cluster",
            p(&cluster()),
            "--flows",
            p(&flows),
            "-o",
            p(out),
        ]);
        assert_code(&o, 0);
    };
    let out = dir.path().join("out");
    run(&out);
    let report = std::fs::read_to_string(out.join("shop/REPORT.md")).expect("report");
    assert!(
        report.contains("before the window's end (2026-11-25T00:00:00Z)"),
        "{report}"
    );
    let rows = name_rows(&report);
    assert_eq!(rows.len(), 3, "{rows:#?}");
    // Sorted by name (`*` before letters), "no name" last.
    assert!(
        rows[1].starts_with("| api.stripe.test | "),
        "the chain's target is not a name of its own: {rows:#?}"
    );
    let stripe: Vec<&str> = rows[1].split(" | ").collect();
    assert_eq!(
        stripe[2..],
        [
            // The name's new address was never dialed, but the rule follows the name
            // (`recommend::published`): all three are covered.
            "203.0.113.10, 203.0.113.11, 203.0.113.12",
            "3",
            "1",
            "2",
            "3 of 3 addresses |"
        ],
        "{report}"
    );
    // The hostile name, escaped: no emphasis, link or mention survives.
    assert!(rows[0].starts_with(r"| \*pwn\*.\[x\]"), "{}", rows[0]);
    assert!(!rows[0].contains("@admin"), "{}", rows[0]);
    assert!(!rows[0].contains("https://"), "{}", rows[0]);
    assert!(
        rows[0].ends_with("| 198.51.100.20 | 1 | 1 | 1 | 1 of 1 address |"),
        "{}",
        rows[0]
    );
    assert!(
        rows[2].starts_with("| no name | ")
            && rows[2].ends_with("| 198.51.100.7 | 1 | 0 | 0 | 1 of 1 address |"),
        "{}",
        rows[2]
    );
    // The rule numbers are the policy table's external rules.
    let rule: usize = stripe[1].parse().expect("one rule number");
    let table_row = report
        .lines()
        .find(|l| l.starts_with(&format!("| {rule} | external | ")))
        .expect("the external rule in the policy table");
    assert!(table_row.contains("203.0.113.10/31"), "{table_row}");

    // evidence.json: every address of each name, with first and last seen, TTL and chain.
    let evidence: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("shop/evidence.json")).expect("evidence"),
    )
    .expect("JSON");
    assert_eq!(evidence["window_end"], "2026-11-25T00:00:00Z");
    let names = &evidence["policies"][0]["names"];
    assert_eq!(names[1]["name"], "api.stripe.test");
    assert_eq!(names[1]["churn"], 3);
    assert_eq!(
        names[1]["addresses"][2],
        json!({
            "address": "203.0.113.12",
            "first_seen": "2026-11-24T12:00:00Z",
            "last_seen": "2026-11-24T12:00:00Z",
            "ttl": 20,
            "chain": ["edge.stripe-cdn.test"],
            "covered": true
        })
    );
    assert_eq!(
        names[1]["addresses"][0]["first_seen"], "2026-11-01T00:00:00Z",
        "the first answer, not the first flow"
    );
    assert_eq!(names[2]["name"], Value::Null);
    assert_eq!(
        names[2]["addresses"][0]["ttl"],
        Value::Null,
        "flows only: no TTL"
    );

    // The same records give the same bytes.
    let again = dir.path().join("again");
    run(&again);
    for f in ["shop/REPORT.md", "shop/evidence.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).expect("first"),
            std::fs::read(again.join(f)).expect("second"),
            "{f}"
        );
    }
}

/// The rows of REPORT.md's names section and the `names` of evidence.json.
fn names_of(out: &Path) -> (String, Value) {
    let report = std::fs::read_to_string(out.join("shop/REPORT.md")).expect("report");
    let evidence: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("shop/evidence.json")).expect("evidence"),
    )
    .expect("JSON");
    (
        name_rows(&report).join("\n"),
        evidence["policies"][0]["names"].clone(),
    )
}

/// The same records committed to a store, one batch per record (so that every address is
/// merged across commits) and the file reopened: `recommend --store` reports the same names.
#[test]
fn the_store_path_reports_the_same_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flows = dir.path().join("records.jsonl");
    std::fs::write(&flows, records()).expect("writes records");
    let db = dir.path().join("leash.db");
    {
        let cluster = leash::cluster::Cluster::load(&cluster()).expect("fixture cluster");
        let store = leash::store::SqliteStore::open(&db).expect("store opens");
        for (seq, line) in records().lines().enumerate() {
            let record: leash_records::Record = serde_json::from_str(line).expect("a record");
            let (f, d) = match record {
                leash_records::Record::Flow(f) => {
                    leash::observations::from_batch(&cluster, &[f], &[])
                }
                leash_records::Record::Dns(d) => {
                    leash::observations::from_batch(&cluster, &[], &[d])
                }
            };
            let id = leash::store::BatchId {
                node: "n1".into(),
                boot_id: "boot".into(),
                seq: seq as u64,
            };
            leash::store::Store::commit(&store, &id, &f, &d).expect("commits");
        }
    }
    let snapshot = cluster();
    let run = |input: &[&str], out: &Path| {
        let mut args = vec!["recommend", "--cluster", p(&snapshot), "-o", p(out)];
        args.extend_from_slice(input);
        let o = leash(&args);
        assert_code(&o, 0);
        names_of(out)
    };
    let from_files = run(&["--flows", p(&flows)], &dir.path().join("files"));
    let from_store = run(&["--store", p(&db)], &dir.path().join("store"));
    assert!(from_files.0.contains("api.stripe.test"), "{}", from_files.0);
    assert_eq!(from_store, from_files);
}
