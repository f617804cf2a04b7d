//! The rollout board through the built binary: `leash rollout status` (table and JSON),
//! `leash recommend --ready-only`, and `leash serve --proposed` over real HTTP (the
//! `/v1/rollout` endpoints, the metrics, and a reload when the proposed directory changes or
//! a git branch gets a new commit).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use leash::store::{BatchId, FlowObservation, SqliteStore, Store};
use serde_json::Value;
use support::http::{free_port, get};
use support::store_flows;

const LEASH: &str = env!("CARGO_BIN_EXE_leash");

fn leash(args: &[&str]) -> Output {
    Command::new(LEASH)
        .args(args)
        .output()
        .expect("runs the leash binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A cluster snapshot: per (namespace, name, pod IP) a Deployment with one pod labelled
/// `app: name`, then `extra` (more objects, as YAML list items).
fn snapshot(workloads: &[(&str, &str, &str)], extra: &str) -> String {
    let mut out = String::from("apiVersion: v1\nkind: List\nitems:\n");
    let mut namespaces: Vec<&str> = workloads.iter().map(|w| w.0).collect();
    namespaces.dedup();
    for ns in namespaces {
        out.push_str(&format!(
            "- apiVersion: v1\n  kind: Namespace\n  metadata: {{name: {ns}, labels: {{kubernetes.io/metadata.name: {ns}}}}}\n"
        ));
    }
    for (ns, name, ip) in workloads {
        out.push_str(&format!(
            r#"- apiVersion: apps/v1
  kind: Deployment
  metadata: {{name: {name}, namespace: {ns}, uid: uid-deploy-{name}}}
  spec:
    selector: {{matchLabels: {{app: {name}}}}}
    template:
      metadata: {{labels: {{app: {name}}}}}
      spec: {{containers: [{{name: c, image: i}}]}}
- apiVersion: v1
  kind: Pod
  metadata:
    name: {name}-x1
    namespace: {ns}
    uid: uid-pod-{name}
    labels: {{app: {name}}}
    ownerReferences: [{{apiVersion: apps/v1, kind: Deployment, name: {name}, uid: uid-deploy-{name}, controller: true}}]
  spec: {{nodeName: n1, containers: [{{name: c, image: i}}]}}
  status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}
"#
        ));
    }
    out.push_str(extra);
    out
}

/// An egress NetworkPolicy `ns/name` for pods `app: app`, allowing TCP `ports`; with
/// leash's managed-by label when `leash`.
fn egress_policy(ns: &str, name: &str, app: &str, ports: &[u16], leash: bool) -> String {
    let labels = if leash {
        ", labels: {app.kubernetes.io/managed-by: leash}"
    } else {
        ""
    };
    let ports: Vec<String> = ports.iter().map(|p| format!("{{port: {p}}}")).collect();
    format!(
        "- apiVersion: networking.k8s.io/v1\n  kind: NetworkPolicy\n  metadata: {{name: {name}, namespace: {ns}{labels}}}\n  spec:\n    podSelector: {{matchLabels: {{app: {app}}}}}\n    policyTypes: [Egress]\n    egress: [{{ports: [{}]}}]\n",
        ports.join(", ")
    )
}

/// The same policy as a file of its own (a document, not a list item).
fn policy_file(ns: &str, name: &str, app: &str, ports: &[u16]) -> String {
    let item = egress_policy(ns, name, app, ports, true);
    item.lines()
        .map(|l| {
            l.strip_prefix("- ")
                .or_else(|| l.strip_prefix("  "))
                .unwrap_or(l)
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn rfc3339(t: DateTime<Utc>) -> String {
    leash_records::time::rfc3339(t)
}

/// A v1 flow record from the pod of Deployment `name`, first seen `first`, last seen an
/// hour before now.
fn record(ns: &str, name: &str, dst: &str, port: u16, count: u64, first: DateTime<Utc>) -> String {
    let last = Utc::now() - chrono::Duration::hours(1);
    let last = last.max(first);
    format!(
        r#"{{"v":1,"kind":"flow","node":"n1","pod":{{"uid":"uid-pod-{name}","namespace":"{ns}","name":"{name}-x1"}},"cgroup":"/k","protocol":"TCP","dst":"{dst}","dst_port":{port},"count":{count},"first_seen":"{}","last_seen":"{}","names":[]}}"#,
        rfc3339(first),
        rfc3339(last)
    )
}

fn days_ago(d: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::days(d)
}

/// shop: `api` dials 443 and 8443, `batch` 443, `web` 443 (leash's applied policy allows
/// it), `fresh` 443 since an hour ago; bank: `ledger`, whose egress a hand-written policy
/// restricts.
fn board_fixture(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let cluster = dir.join("cluster.yaml");
    std::fs::write(
        &cluster,
        snapshot(
            &[
                ("bank", "ledger", "10.0.2.10"),
                ("shop", "api", "10.0.1.10"),
                ("shop", "batch", "10.0.1.11"),
                ("shop", "fresh", "10.0.1.13"),
                ("shop", "web", "10.0.1.12"),
            ],
            &(egress_policy("shop", "web-egress", "web", &[443], true)
                + &egress_policy("bank", "ledger-egress", "ledger", &[443], false)),
        ),
    )
    .unwrap();
    let old = days_ago(8);
    let flows = dir.join("flows.jsonl");
    let lines = [
        record("shop", "api", "203.0.113.4", 443, 5, old),
        record("shop", "api", "203.0.113.4", 8443, 3, old),
        record("shop", "batch", "203.0.113.5", 443, 2, old),
        record("shop", "web", "203.0.113.6", 443, 2, old),
        record(
            "shop",
            "fresh",
            "203.0.113.7",
            443,
            1,
            Utc::now() - chrono::Duration::hours(1),
        ),
        record("bank", "ledger", "203.0.113.8", 443, 1, old),
    ];
    std::fs::write(&flows, lines.join("\n") + "\n").unwrap();
    let proposed = dir.join("proposed");
    std::fs::create_dir(&proposed).unwrap();
    write_proposal(&proposed, &[443]);
    (cluster, flows, proposed)
}

/// The proposal: `api` may use `api_ports`, `batch` 443, `fresh` only 80.
fn write_proposal(dir: &Path, api_ports: &[u16]) {
    std::fs::write(
        dir.join("api-egress.yaml"),
        policy_file("shop", "api-egress", "api", api_ports),
    )
    .unwrap();
    std::fs::write(
        dir.join("batch-egress.yaml"),
        policy_file("shop", "batch-egress", "batch", &[443]),
    )
    .unwrap();
    std::fs::write(
        dir.join("fresh-egress.yaml"),
        policy_file("shop", "fresh-egress", "fresh", &[80]),
    )
    .unwrap();
}

fn json_lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The JSON lines of `rollout status`: the guardrails stage first (`"kind":"guardrails"`),
/// then the workloads (`"kind":"workload"`).
fn board_lines(o: &Output) -> (Value, Vec<Value>) {
    let mut lines = json_lines(o);
    assert!(!lines.is_empty(), "no stage line");
    let stage = lines.remove(0);
    assert_eq!(stage["kind"], "guardrails", "{stage}");
    assert!(lines.iter().all(|l| l["kind"] == "workload"), "{lines:?}");
    (stage, lines)
}

fn phases(objects: &[Value]) -> Vec<(String, String, String)> {
    objects
        .iter()
        .map(|o| {
            (
                o["namespace"].as_str().unwrap().to_owned(),
                o["workload"].as_str().unwrap().to_owned(),
                o["phase"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn owned(rows: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    rows.iter()
        .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
        .collect()
}

/// The expected board of [`board_fixture`] with its proposal.
const BOARD: [(&str, &str, &str); 5] = [
    ("bank", "Deployment/ledger", "unmanaged"),
    ("shop", "Deployment/api", "would-deny"),
    ("shop", "Deployment/batch", "ready"),
    ("shop", "Deployment/fresh", "observing"),
    ("shop", "Deployment/web", "enforced"),
];

#[test]
fn rollout_status_json_and_table() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, flows, proposed) = board_fixture(dir.path());
    let base = [
        "rollout",
        "status",
        "--cluster",
        path_str(&cluster),
        "--flows",
        path_str(&flows),
        "--proposed",
        path_str(&proposed),
    ];
    let o = leash(&[&base[..], &["--format", "json"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (stage, objects) = board_lines(&o);
    assert_eq!(stage["phase"], "absent", "{stage}");
    assert_eq!(phases(&objects), owned(&BOARD));
    let api = &objects[1];
    let observed = api["observed_for_seconds"].as_u64().unwrap();
    assert!(
        (8 * 86_400 - 120..=8 * 86_400 + 120).contains(&observed),
        "{observed}"
    );
    assert_eq!(api["would_deny"].as_array().unwrap().len(), 1, "{api}");
    assert_eq!(api["would_deny"][0]["dst"], "203.0.113.4");
    assert_eq!(api["would_deny"][0]["dst_port"], 8443);
    assert_eq!(api["would_deny"][0]["protocol"], "TCP");
    assert_eq!(api["would_deny"][0]["events"], 3);
    assert!(
        api["would_deny"][0]["last_seen"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(objects[0]["policies"][0], "bank/ledger-egress");

    let o = leash(&base);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("STAGE 1  guardrails  absent  no guardrails applied or proposed"),
        "{table}"
    );
    assert_eq!(lines[1], "STAGE 2  namespaces", "{table}");
    assert!(lines[2].starts_with("NAMESPACE  WORKLOAD"), "{table}");
    for (i, (ns, workload, phase)) in BOARD.iter().enumerate() {
        let cells: Vec<&str> = lines[i + 3].split_whitespace().collect();
        assert_eq!(&cells[..3], [*ns, *workload, *phase], "{table}");
    }
    assert!(
        lines[4].contains("203.0.113.4:8443/TCP (3 events)"),
        "{table}"
    );
    assert_eq!(
        lines[8],
        "5 workloads: 1 unmanaged, 1 enforced, 1 observing, 1 would-deny, 1 ready"
    );
    assert!(
        lines[9].starts_with("Stage order: 1. the guardrails"),
        "{table}"
    );
    assert_eq!(lines.len(), 10, "{table}");

    // Without a proposal there is no would-deny; --namespace narrows the board.
    let o = leash(&[
        "rollout",
        "status",
        "--cluster",
        path_str(&cluster),
        "--flows",
        path_str(&flows),
        "--namespace",
        "shop",
        "--format",
        "json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        phases(&board_lines(&o).1),
        owned(&[
            ("shop", "Deployment/api", "ready"),
            ("shop", "Deployment/batch", "ready"),
            ("shop", "Deployment/fresh", "observing"),
            ("shop", "Deployment/web", "enforced"),
        ])
    );

    // A proposal that cannot be read is bad input, naming it.
    let o = leash(&[
        "rollout",
        "status",
        "--cluster",
        path_str(&cluster),
        "--flows",
        path_str(&flows),
        "--proposed",
        "/nonexistent/policies",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("/nonexistent/policies"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn recommend_ready_only_writes_ready_workloads_and_lists_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(
        &cluster,
        snapshot(
            &[
                ("bank", "ledger", "10.0.2.10"),
                ("data", "etl", "10.0.3.10"),
                ("shop", "api", "10.0.1.10"),
                ("shop", "fresh", "10.0.1.13"),
            ],
            &egress_policy("bank", "ledger-egress", "ledger", &[443], false),
        ),
    )
    .unwrap();
    let old = days_ago(8);
    let flows = dir.path().join("flows.jsonl");
    let lines = [
        record("shop", "api", "203.0.113.4", 443, 5, old),
        record(
            "shop",
            "fresh",
            "203.0.113.7",
            443,
            1,
            Utc::now() - chrono::Duration::hours(1),
        ),
        record("bank", "ledger", "203.0.113.8", 443, 1, old),
        record("data", "etl", "203.0.113.9", 443, 1, old),
    ];
    std::fs::write(&flows, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");
    let args = [
        "recommend",
        "--cluster",
        path_str(&cluster),
        "--flows",
        path_str(&flows),
        "-o",
        path_str(&out),
    ];
    let o = leash(&[&args[..], &["--ready-only"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let exists = |p: &str| out.join(p).exists();
    assert!(exists("shop/api-egress.yaml"));
    assert!(exists("data/etl-egress.yaml"));
    assert!(exists("data/default-deny-egress.yaml"));
    assert!(!exists("shop/fresh-egress.yaml"), "fresh is observing");
    assert!(!exists("bank/ledger-egress.yaml"), "ledger is unmanaged");
    // A default-deny would cut off the withheld workloads' egress.
    assert!(!exists("shop/default-deny-egress.yaml"));
    assert!(!exists("bank/default-deny-egress.yaml"));
    // Each namespace's report lists its withheld workloads.
    let report = ["bank/REPORT.md", "shop/REPORT.md"]
        .map(|f| std::fs::read_to_string(out.join(f)).unwrap())
        .concat();
    assert!(
        report.contains("### Not ready: no policy written (--ready-only)"),
        "{report}"
    );
    assert!(
        report.contains("| bank/Deployment/ledger | `unmanaged` | an egress NetworkPolicy leash did not write selects it (bank/ledger-egress) |"),
        "{report}"
    );
    assert!(
        report.contains("| shop/Deployment/fresh | `observing` | observed for 1h 0m, less than the minimum of 1d 0h |"),
        "{report}"
    );
    assert!(!report.contains("shop/Deployment/api |"), "{report}");

    // Without the flag every workload gets its policy.
    let all = dir.path().join("all");
    let o = leash(&[&args[..5], &["-o", path_str(&all)]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(all.join("shop/fresh-egress.yaml").exists());
    assert!(all.join("shop/default-deny-egress.yaml").exists());
    assert!(
        !std::fs::read_to_string(all.join("shop/REPORT.md"))
            .unwrap()
            .contains("--ready-only")
    );

    // The YAML stream follows the same rule: ready policies, even where no default-deny is.
    let o = leash(&[&args[..5], &["--ready-only"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let yaml = String::from_utf8_lossy(&o.stdout);
    assert!(yaml.contains("name: api-egress"), "{yaml}");
    assert!(yaml.contains("name: etl-egress"), "{yaml}");
    assert!(!yaml.contains("name: fresh-egress"), "{yaml}");
    assert_eq!(
        yaml.matches("name: default-deny-egress").count(),
        1,
        "{yaml}"
    );
}

#[test]
fn recommend_ready_only_counts_the_applied_cluster_network_policies() {
    // An applied Admin deny of etl's destination: etl's traffic is denied today, so it is
    // `drifted`, not `ready`, and its policy is withheld.
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster.yaml");
    let mut text = snapshot(
        &[("data", "etl", "10.0.3.10"), ("shop", "api", "10.0.1.10")],
        "",
    );
    text.push_str(
        "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\n\
         metadata:\n  name: platform-deny\nspec:\n  tier: Admin\n  priority: 5\n  subject:\n\
         \x20   namespaces: {}\n  egress:\n  - action: Deny\n    to:\n    - networks: \
         [\"203.0.113.9/32\"]\n",
    );
    std::fs::write(&cluster, text).unwrap();
    let old = days_ago(8);
    let flows = dir.path().join("flows.jsonl");
    let lines = [
        record("shop", "api", "203.0.113.4", 443, 5, old),
        record("data", "etl", "203.0.113.9", 443, 1, old),
    ];
    std::fs::write(&flows, lines.join("\n") + "\n").unwrap();
    let out = dir.path().join("out");
    let o = leash(&[
        "recommend",
        "--cluster",
        path_str(&cluster),
        "--flows",
        path_str(&flows),
        "-o",
        path_str(&out),
        "--ready-only",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out.join("shop/api-egress.yaml").exists());
    assert!(!out.join("data/etl-egress.yaml").exists(), "etl is drifted");
    let report = std::fs::read_to_string(out.join("data/REPORT.md")).unwrap();
    assert!(
        report.contains("| data/Deployment/etl | `drifted` | the applied policies deny 1 recent flow: 203.0.113.9:443/TCP"),
        "{report}"
    );
}

/// A running `leash serve --insecure`, killed on drop.
struct Server {
    child: Child,
    /// `--http`: health and metrics.
    http: SocketAddr,
    /// `--ui-listen`: the `/v1` read API.
    ui: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts on `cluster` and the store `db` with `--proposed proposed`, polled every
    /// 200 ms; the check interval is an hour, so only a reload re-evaluates the store.
    fn start(cluster: &Path, db: &Path, proposed: &str) -> Server {
        let http = free_port();
        let ui = free_port();
        let child = Command::new(LEASH)
            .arg("serve")
            .arg("--insecure")
            .args(["--listen", &free_port().to_string()])
            .args(["--http", &http.to_string()])
            .args(["--ui-listen", &ui.to_string()])
            .arg("--store")
            .arg(db)
            .arg("--cluster")
            .arg(cluster)
            .args(["--proposed", proposed, "--proposed-poll", "200ms"])
            .args(["--check-interval", "1h"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut server = Server { child, http, ui };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = get(server.ui, "/v1/rollout") {
                return server;
            }
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("leash serve exited before its board was ready: {status}");
            }
            assert!(Instant::now() < deadline, "no rollout board in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The answer of a rollout endpoint: `{"guardrails":…,"workloads":[…]}`.
    fn answer(&self, path: &str) -> Value {
        let (status, body) = get(self.ui, path).unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The workloads of a rollout endpoint's answer.
    fn board(&self, path: &str) -> Vec<Value> {
        let answer = self.answer(path);
        answer["workloads"].as_array().unwrap().clone()
    }

    fn metrics(&self) -> String {
        get(self.http, "/metrics").unwrap().1
    }

    /// Waits (at most 20 s) until `/v1/rollout` gives `phase` for `workload`.
    fn wait_for_phase(&self, workload: &str, phase: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let board = self.board("/v1/rollout");
            if board
                .iter()
                .any(|o| o["workload"] == workload && o["phase"] == phase)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{workload} not {phase} in 20 s: {board:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The store of [`board_fixture`]'s flows, as agents would have delivered them.
fn store(path: &Path) {
    let store = SqliteStore::open(path).unwrap();
    let flow = |ns: &str, name: &str, dst: &str, port: u16, count: u64, first: DateTime<Utc>| {
        FlowObservation {
            count,
            first_seen: first,
            last_seen: Utc::now() - chrono::Duration::minutes(5),
            established: count,
            ..store_flows::deployment_flow(ns, name, dst, port, &[], first)
        }
    };
    let old = days_ago(8);
    store
        .commit(
            &BatchId {
                node: "n1".into(),
                boot_id: "b".into(),
                seq: 1,
            },
            &[
                flow("shop", "api", "203.0.113.4", 443, 5, old),
                flow("shop", "api", "203.0.113.4", 8443, 3, old),
                flow("shop", "batch", "203.0.113.5", 443, 2, old),
                flow("shop", "web", "203.0.113.6", 443, 2, old),
                flow(
                    "shop",
                    "fresh",
                    "203.0.113.7",
                    443,
                    1,
                    Utc::now() - chrono::Duration::hours(1),
                ),
                flow("bank", "ledger", "203.0.113.8", 443, 1, old),
            ],
            &[],
        )
        .unwrap();
}

#[test]
fn serve_shadow_evaluates_the_proposal_and_reloads_it_when_the_directory_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _flows, proposed) = board_fixture(dir.path());
    let db = dir.path().join("leash.db");
    store(&db);
    let server = Server::start(&cluster, &db, path_str(&proposed));

    let answer = server.answer("/v1/rollout");
    assert_eq!(answer["guardrails"]["phase"], "absent", "{answer}");
    let board = server.board("/v1/rollout");
    assert_eq!(phases(&board), owned(&BOARD));
    assert_eq!(board[1]["would_deny"][0]["dst_port"], 8443);
    let shop = server.board("/v1/namespaces/shop/rollout");
    assert_eq!(phases(&shop), owned(&BOARD[1..]));
    let (status, body) = get(server.ui, "/v1/namespaces/nowhere/rollout").unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"nowhere\""), "{body}");

    let metrics = server.metrics();
    for line in [
        "leash_rollout_workloads{phase=\"would-deny\"} 1\n",
        "leash_rollout_workloads{phase=\"ready\"} 1\n",
        "leash_rollout_workloads{phase=\"drifted\"} 0\n",
        // api's 8443 flow (3 events), and fresh's 443 flow that the proposal limits to 80.
        "leash_shadow_denied_total{namespace=\"shop\",workload=\"Deployment/api\"} 3\n",
        "leash_shadow_denied_total{namespace=\"shop\",workload=\"Deployment/fresh\"} 1\n",
        "leash_proposed_reloads_total 0\n",
        "leash_guardrails_stage{phase=\"absent\"} 1\n",
        "leash_guardrails_breaks 0\n",
    ] {
        assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
    }

    // The proposal now allows 8443: the reload re-evaluates the store at once (the check
    // interval is an hour).
    write_proposal(&proposed, &[443, 8443]);
    server.wait_for_phase("Deployment/api", "ready");
    let metrics = server.metrics();
    for line in [
        "leash_rollout_workloads{phase=\"would-deny\"} 0\n",
        "leash_rollout_workloads{phase=\"ready\"} 2\n",
        "leash_proposed_reloads_total 1\n",
        // A counter: what was denied stays counted.
        "leash_shadow_denied_total{namespace=\"shop\",workload=\"Deployment/api\"} 3\n",
    ] {
        assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
    }

    // A proposal that no longer parses keeps the previous one, and is counted.
    std::fs::write(
        proposed.join("api-egress.yaml"),
        "kind: NetworkPolicy\nspec: [",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server
        .metrics()
        .contains("leash_proposed_reload_errors_total 1")
    {
        assert!(Instant::now() < deadline, "no reload error counted in 20 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let board = server.board("/v1/rollout");
    assert_eq!(board[1]["phase"], "ready", "{board:?}");
}

fn git(repo: &Path, args: &[&str]) {
    let o = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=leash test",
            "-c",
            "user.email=test@leash.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn serve_follows_a_git_branch_of_proposed_policies() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _flows, _dir_proposal) = board_fixture(dir.path());
    let db = dir.path().join("leash.db");
    store(&db);
    let repo = dir.path().join("repo");
    let policies = repo.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    write_proposal(&policies, &[443]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "proposal"]);
    // The working tree differs from the revision: only the commit counts.
    write_proposal(&policies, &[443, 8443]);

    let source = format!("git:main:{}", policies.display());
    let server = Server::start(&cluster, &db, &source);
    assert_eq!(phases(&server.board("/v1/rollout")), owned(&BOARD));

    // A new commit on the branch is a new proposal.
    git(&repo, &["commit", "-q", "-a", "-m", "allow 8443"]);
    server.wait_for_phase("Deployment/api", "ready");
    assert!(
        server
            .metrics()
            .contains("leash_proposed_reloads_total 1\n"),
        "{}",
        server.metrics()
    );
}

/// A proposal that allows every flow of [`board_fixture`]: `api` 443 and 8443, `batch`,
/// `fresh` and `web` 443 (leash's whole proposal: web's applied policy is leash's).
fn write_full_proposal(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, ports) in [
        ("api", &[443, 8443][..]),
        ("batch", &[443]),
        ("fresh", &[443]),
        ("web", &[443]),
    ] {
        std::fs::write(
            dir.join(format!("{name}-egress.yaml")),
            policy_file("shop", &format!("{name}-egress"), name, ports),
        )
        .unwrap();
    }
}

/// `leash guardrails -o out` on the fixture, over `proposed` when given.
fn write_guardrails(cluster: &Path, flows: &Path, proposed: Option<&Path>, out: &Path) {
    let mut args = vec![
        "guardrails",
        "--cluster",
        path_str(cluster),
        "--flows",
        path_str(flows),
        "-o",
        path_str(out),
    ];
    if let Some(p) = proposed {
        args.extend(["--proposed", path_str(p)]);
    }
    let o = leash(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out.join("cluster/guardrails-default-deny.yaml").exists());
}

/// `(namespace/workload, flows)` of a stage's `breaks`.
fn breaks(stage: &Value) -> Vec<(String, usize)> {
    stage["breaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                format!(
                    "{}/{}",
                    b["namespace"].as_str().unwrap(),
                    b["workload"].as_str().unwrap()
                ),
                b["flows"].as_array().unwrap().len(),
            )
        })
        .collect()
}

/// The workloads whose egress the applied policies do not lock down, with their flows.
const UNLOCKED: [(&str, usize); 3] = [
    ("shop/Deployment/api", 2),
    ("shop/Deployment/batch", 1),
    ("shop/Deployment/fresh", 1),
];

fn unlocked() -> Vec<(String, usize)> {
    UNLOCKED
        .iter()
        .map(|(w, n)| ((*w).to_owned(), *n))
        .collect()
}

#[test]
fn rollout_status_shows_the_guardrails_stage_first() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, flows, proposed) = board_fixture(dir.path());
    // Proposed over the applied state: the Baseline defers shop, and breaks nothing.
    write_guardrails(&cluster, &flows, None, &proposed);
    let status = |proposed: &Path, format: &str| {
        let o = leash(&[
            "rollout",
            "status",
            "--cluster",
            path_str(&cluster),
            "--flows",
            path_str(&flows),
            "--proposed",
            path_str(proposed),
            "--format",
            format,
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        o
    };
    let o = status(&proposed, "json");
    let (stage, workloads) = board_lines(&o);
    assert_eq!(stage["phase"], "ready", "{stage}");
    assert_eq!(stage["breaks"], serde_json::json!([]), "{stage}");
    assert_eq!(stage["applied"], serde_json::json!([]), "{stage}");
    let proposed_names = stage["proposed"].as_array().unwrap();
    assert!(
        proposed_names.contains(&Value::from("guardrails-default-deny")),
        "{stage}"
    );
    // The workloads' phases with the guardrails in the proposed state: unchanged.
    assert_eq!(phases(&workloads), owned(&BOARD));
    let table = String::from_utf8_lossy(&status(&proposed, "table").stdout).into_owned();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("STAGE 1  guardrails  ready  "),
        "{table}"
    );
    assert_eq!(lines[1], "STAGE 2  namespaces", "{table}");

    // Proposed over a full proposal, the Baseline covers shop: applied before shop's
    // NetworkPolicies, it would break every shop workload that none selects yet.
    let full = dir.path().join("full");
    write_full_proposal(&full);
    write_guardrails(&cluster, &flows, Some(&full), &full);
    let o = status(&full, "json");
    let (stage, workloads) = board_lines(&o);
    assert_eq!(stage["phase"], "would-break", "{stage}");
    assert_eq!(breaks(&stage), unlocked(), "{stage}");
    assert_eq!(stage["breaks"][0]["flows"][1]["dst_port"], 8443, "{stage}");
    // With the full proposal's NetworkPolicies over them, the workloads are ready.
    assert_eq!(
        phases(&workloads),
        owned(&[
            ("bank", "Deployment/ledger", "unmanaged"),
            ("shop", "Deployment/api", "ready"),
            ("shop", "Deployment/batch", "ready"),
            ("shop", "Deployment/fresh", "observing"),
            ("shop", "Deployment/web", "enforced"),
        ])
    );
    let o = status(&full, "table");
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "STAGE 1  guardrails  would-break  the proposed guardrails would break the observed \
         traffic of 3 workloads: shop/Deployment/api (2 flows), shop/Deployment/batch (1 flow), \
         shop/Deployment/fresh (1 flow)",
        "{table}"
    );
    assert_eq!(
        lines[1],
        "  would break  shop/Deployment/api  2 flows: 203.0.113.4:443/TCP (5 events), \
         203.0.113.4:8443/TCP (3 events)",
        "{table}"
    );
    assert!(
        lines[3].starts_with("  would break  shop/Deployment/fresh  "),
        "{table}"
    );
    assert_eq!(lines[4], "STAGE 2  namespaces", "{table}");
    assert!(lines[5].starts_with("NAMESPACE  WORKLOAD"), "{table}");
    assert!(
        lines[lines.len() - 1].starts_with("Stage order: "),
        "{table}"
    );
    // Deterministic.
    assert_eq!(status(&full, "table").stdout, o.stdout);
}

#[test]
fn serve_shows_the_guardrails_stage_and_reevaluates_it_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, flows, proposed) = board_fixture(dir.path());
    write_guardrails(&cluster, &flows, None, &proposed);
    let db = dir.path().join("leash.db");
    store(&db);
    let server = Server::start(&cluster, &db, path_str(&proposed));

    let answer = server.answer("/v1/rollout");
    assert_eq!(answer["guardrails"]["phase"], "ready", "{answer}");
    assert_eq!(
        phases(answer["workloads"].as_array().unwrap()),
        owned(&BOARD)
    );
    let metrics = server.metrics();
    for line in [
        "leash_guardrails_stage{phase=\"ready\"} 1\n",
        "leash_guardrails_stage{phase=\"would-break\"} 0\n",
        "leash_guardrails_stage{phase=\"absent\"} 0\n",
        "leash_guardrails_breaks 0\n",
    ] {
        assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
    }

    // New guardrails, proposed over the full proposal: the reload re-evaluates the stage.
    let full = dir.path().join("full");
    write_full_proposal(&full);
    write_guardrails(&cluster, &flows, Some(&full), &full);
    for entry in std::fs::read_dir(full.join("cluster")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            proposed.join("cluster").join(entry.file_name()),
        )
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let answer = server.answer("/v1/rollout");
        if answer["guardrails"]["phase"] == "would-break" {
            break answer;
        }
        assert!(
            Instant::now() < deadline,
            "not would-break in 20 s: {answer}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(breaks(&answer["guardrails"]), unlocked(), "{answer}");
    let metrics = server.metrics();
    for line in [
        "leash_guardrails_stage{phase=\"ready\"} 0\n",
        "leash_guardrails_stage{phase=\"would-break\"} 1\n",
        "leash_guardrails_breaks 3\n",
        "leash_proposed_reloads_total 1\n",
    ] {
        assert!(metrics.contains(line), "{line:?} not in\n{metrics}");
    }
    // A namespace's answer: the cluster's phase, its own workloads' breaks only.
    let bank = server.answer("/v1/namespaces/bank/rollout");
    assert_eq!(bank["guardrails"]["phase"], "would-break", "{bank}");
    assert_eq!(
        bank["guardrails"]["breaks"],
        serde_json::json!([]),
        "{bank}"
    );
    assert_eq!(
        phases(bank["workloads"].as_array().unwrap()),
        owned(&BOARD[..1])
    );
    let shop = server.answer("/v1/namespaces/shop/rollout");
    assert_eq!(breaks(&shop["guardrails"]), unlocked(), "{shop}");
}
