//! `leash diff` through the built binary: the JSON contract, `--fail-on-break`, the STATE
//! grammar (`applied`, a directory over the applied policies, `git:REV:PATH` in a real git
//! repository), a store as input, `--namespace`, the markdown's sections, and errors that
//! name the state.
//!
//! The reachability lines come from the symbolic engine (`leash::diff::reach`): the tests
//! named `reachability_*` check them; every other test checks the observed flows.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use chrono::{DateTime, Duration, SubsecRound as _, Utc};
use leash::evidence::PodNames;
use leash::store::{BatchId, FlowObservation, SqliteStore, Store as _, WorkloadRef};
use leash_records::Protocol;
use support::cli::{assert_code, p, stderr, stdout};
use support::snapshots;

/// shop: Deployment `frontend` (pods frontend-1 and frontend-2); data: StatefulSet
/// `postgres` (postgres-0, behind Service data/postgres 10.96.0.20); ops: a bare pod
/// `debug`. Applied: the data team's ingress policy (frontend only), and leash's egress
/// policy for frontend (HTTPS to 203.0.113.0/24, and postgres).
fn snapshot() -> String {
    snapshots::list(&[
        snapshots::namespace("shop"),
        snapshots::namespace("data"),
        snapshots::namespace("ops"),
        snapshots::frontend_pod(1, "10.244.1.10"),
        snapshots::frontend_pod(2, "10.244.1.11"),
        snapshots::postgres_pod(),
        DEBUG_POD.to_owned(),
        snapshots::postgres_service(),
        POLICIES.to_owned(),
    ])
}

/// ops' bare pod `debug`.
const DEBUG_POD: &str = r"- apiVersion: v1
  kind: Pod
  metadata: {name: debug, namespace: ops, uid: uid-debug, labels: {app: debug}}
  spec: {nodeName: n1, containers: [{name: sh, image: busybox:1}]}
  status: {phase: Running, podIP: 10.244.3.30, podIPs: [{ip: 10.244.3.30}]}
";

/// The applied policies of [`snapshot`].
const POLICIES: &str = r#"- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: postgres-ingress, namespace: data}
  spec:
    podSelector: {matchLabels: {app: postgres}}
    policyTypes: [Ingress]
    ingress:
    - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}, podSelector: {matchLabels: {app: frontend}}}]
      ports: [{port: 5432, protocol: TCP}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    name: frontend-egress
    namespace: shop
    labels: {app.kubernetes.io/managed-by: leash}
  spec:
    podSelector: {matchLabels: {app: frontend}}
    policyTypes: [Egress]
    egress:
    - to: [{ipBlock: {cidr: 203.0.113.0/24}}]
      ports: [{port: 443, protocol: TCP}]
    - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: data}}, podSelector: {matchLabels: {app: postgres}}}]
      ports: [{port: 5432, protocol: TCP}]
"#;

/// frontend's egress policy, allowing HTTPS to `blocks`, and postgres.
fn frontend_egress(blocks: &[&str]) -> String {
    let to: Vec<String> = blocks
        .iter()
        .map(|b| format!("{{ipBlock: {{cidr: {b}}}}}"))
        .collect();
    format!(
        r"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: frontend-egress
  namespace: shop
  labels: {{app.kubernetes.io/managed-by: leash}}
spec:
  podSelector: {{matchLabels: {{app: frontend}}}}
  policyTypes: [Egress]
  egress:
  - to: [{}]
    ports: [{{port: 443, protocol: TCP}}]
  - to: [{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: data}}}}, podSelector: {{matchLabels: {{app: postgres}}}}}}]
    ports: [{{port: 5432, protocol: TCP}}]
",
        to.join(", ")
    )
}

/// The proposal narrows HTTPS to 203.0.113.0/25 and adds 198.51.100.0/24: one observed flow
/// breaks (203.0.113.200), one is newly allowed (198.51.100.7).
const PROPOSAL: &[&str] = &["203.0.113.0/25", "198.51.100.0/24"];
/// The applied blocks.
const APPLIED: &[&str] = &["203.0.113.0/24"];
/// Only wider: nothing observed breaks.
const WIDER: &[&str] = &["203.0.113.0/24", "198.51.100.0/24"];

fn flow(
    pod: &str,
    dst: &str,
    port: u16,
    count: u64,
    first: &str,
    last: &str,
    names: &str,
) -> String {
    let ns = if pod == "debug" { "ops" } else { "shop" };
    format!(
        r#"{{"v":1,"kind":"flow","node":"n1","pod":{{"uid":"uid-{pod}","namespace":"{ns}","name":"{pod}"}},"cgroup":"/k","protocol":"TCP","dst":"{dst}","dst_port":{port},"count":{count},"first_seen":"{first}","last_seen":"{last}","names":[{names}]}}"#
    )
}

const T8: &str = "2026-11-23T08:00:00Z";

fn flow_lines() -> Vec<String> {
    vec![
        flow("frontend-1", "203.0.113.200", 443, 12, T8, T8, r#""api.example.com""#),
        flow(
            "frontend-2",
            "203.0.113.200",
            443,
            3,
            "2026-11-23T07:00:00Z",
            "2026-11-23T09:00:00Z",
            "",
        ),
        flow("frontend-1", "203.0.113.10", 443, 5, T8, T8, ""),
        flow("frontend-1", "198.51.100.7", 443, 2, T8, T8, ""),
        flow("frontend-1", "10.96.0.20", 5432, 7, T8, T8, ""),
        flow("debug", "10.244.2.20", 5432, 1, T8, T8, ""),
        flow("debug", "198.51.100.7", 443, 1, T8, T8, ""),
        r#"{"v":1,"kind":"dns","node":"n1","pod":{"uid":"uid-frontend-1","namespace":"shop","name":"frontend-1"},"server":"10.96.0.10","query":"cdn.example.net.","qtype":"A","rcode":"NOERROR","answers":[{"name":"cdn.example.net.","type":"A","data":"198.51.100.7","ttl":60}],"time":"2026-11-23T08:00:00Z"}"#.to_owned(),
    ]
}

/// The observed flows that change verdict from the applied policies to the proposal.
const FLOW_LINES: [&str; 2] = [
    r#"{"kind":"flow","source":{"namespace":"shop","workload":"Deployment/frontend","pod":"frontend-1"},"protocol":"TCP","dst":"198.51.100.7","dst_port":443,"from":"deny","to":"allow","events":2,"last_seen":"2026-11-23T08:00:00Z","names":["cdn.example.net"]}"#,
    r#"{"kind":"flow","source":{"namespace":"shop","workload":"Deployment/frontend","pod":"frontend-1"},"protocol":"TCP","dst":"203.0.113.200","dst_port":443,"from":"allow","to":"deny","events":15,"last_seen":"2026-11-23T09:00:00Z","names":["api.example.com"]}"#,
];

/// The reachability changes from the applied policies to the proposal.
const REACH_LINES: [&str; 2] = [
    r#"{"kind":"reachability","source":{"namespace":"shop","workload":"Deployment/frontend"},"change":"newly-allowed","protocol":"TCP","port_from":443,"port_to":443,"destination":{"first":"198.51.100.0","last":"198.51.100.255"}}"#,
    r#"{"kind":"reachability","source":{"namespace":"shop","workload":"Deployment/frontend"},"change":"newly-denied","protocol":"TCP","port_from":443,"port_to":443,"destination":{"first":"203.0.113.128","last":"203.0.113.255"}}"#,
];

/// The snapshot, the flows, and policy directories `proposal` and `wider`.
struct Fixture {
    dir: tempfile::TempDir,
    cluster: PathBuf,
    flows: PathBuf,
    proposal: PathBuf,
    wider: PathBuf,
}

fn write_policy(dir: &Path, blocks: &[&str]) {
    std::fs::create_dir_all(dir.join("shop")).expect("mkdir");
    std::fs::write(
        dir.join("shop/frontend-egress.yaml"),
        frontend_egress(blocks),
    )
    .expect("writes the policy");
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, snapshot()).expect("writes the snapshot");
    let flows = dir.path().join("flows.jsonl");
    std::fs::write(&flows, flow_lines().join("\n") + "\n").expect("writes the flows");
    let proposal = dir.path().join("proposal");
    write_policy(&proposal, PROPOSAL);
    let wider = dir.path().join("wider");
    write_policy(&wider, WIDER);
    Fixture {
        dir,
        cluster,
        flows,
        proposal,
        wider,
    }
}

fn leash_in(dir: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leash"));
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd.args(args)
        .env_remove("LEASH_MAX_INPUT_BYTES")
        .stdin(Stdio::null())
        .output()
        .expect("runs the leash binary")
}

fn leash(args: &[&str]) -> Output {
    leash_in(None, args)
}

/// `leash diff --cluster … --flows … --from FROM --to TO` with `extra` arguments.
fn diff(f: &Fixture, from: &str, to: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "diff",
        "--cluster",
        p(&f.cluster),
        "--flows",
        p(&f.flows),
        "--from",
        from,
        "--to",
        to,
    ];
    args.extend_from_slice(extra);
    leash(&args)
}

/// The lines of a JSON output of this kind (`reachability` or `flow`), each checked to be
/// one JSON object.
fn lines_of(o: &Output, kind: &str) -> Vec<String> {
    stdout(o)
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object per line");
            v["kind"] == kind
        })
        .map(str::to_owned)
        .collect()
}

#[test]
fn json_flow_lines_are_the_contract() {
    let f = fixture();
    let o = diff(&f, "applied", p(&f.proposal), &["--format", "json"]);
    assert_code(&o, 0);
    assert_eq!(lines_of(&o, "flow"), FLOW_LINES);
    // Reachability lines come first, then flows; nothing else.
    let out = stdout(&o);
    let kinds: Vec<String> = out
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON");
            v["kind"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    let mut sorted = kinds.clone();
    sorted.sort_by_key(|k| k != "reachability");
    assert_eq!(kinds, sorted);
    assert!(kinds.iter().all(|k| k == "reachability" || k == "flow"));
    // Same input, same bytes.
    let again = diff(&f, "applied", p(&f.proposal), &["--format", "json"]);
    assert_eq!(out, stdout(&again));
}

#[test]
fn reachability_json_lines_are_the_contract() {
    let f = fixture();
    let o = diff(&f, "applied", p(&f.proposal), &["--format", "json"]);
    assert_code(&o, 0);
    let want: Vec<&str> = REACH_LINES
        .iter()
        .chain(FLOW_LINES.iter())
        .copied()
        .collect();
    assert_eq!(stdout(&o).lines().collect::<Vec<_>>(), want);
}

#[test]
fn reachability_in_markdown_per_workload() {
    let f = fixture();
    let o = diff(&f, "applied", p(&f.proposal), &[]);
    assert_code(&o, 0);
    let md = stdout(&o);
    assert!(
        md.contains(
            "- `shop`: **1 break**; 1 newly allowed, 1 newly denied, 1 observed flow newly \
             allowed; 1 workload changed, 0 unchanged\n"
        ),
        "{md}"
    );
    assert!(
        md.contains(
            "#### `shop/Deployment/frontend`\n\nNewly allowed:\n\n\
             - TCP 443 to `198.51.100.0/24`\n\nNewly denied:\n\n- TCP 443 to `203.0.113.128/25`\n"
        ),
        "{md}"
    );
}

#[test]
fn fail_on_break_exits_3_on_a_break_and_0_without() {
    let f = fixture();
    let o = diff(
        &f,
        "applied",
        p(&f.proposal),
        &["--fail-on-break", "--format", "json"],
    );
    assert_code(&o, 3);
    assert!(
        stderr(&o).contains(&format!(
            "1 observed flow allowed under applied would be denied under {}",
            p(&f.proposal)
        )),
        "{}",
        stderr(&o)
    );
    // The report is still written.
    assert_eq!(lines_of(&o, "flow"), FLOW_LINES);

    let o = diff(
        &f,
        "applied",
        p(&f.wider),
        &["--fail-on-break", "--format", "json"],
    );
    assert_code(&o, 0);
    let flows = lines_of(&o, "flow");
    assert_eq!(flows, [FLOW_LINES[0]], "only the newly allowed flow");

    // Without traffic there is nothing to break: the flag needs --flows or --store.
    let o = leash(&[
        "diff",
        "--cluster",
        p(&f.cluster),
        "--from",
        "applied",
        "--to",
        p(&f.proposal),
        "--fail-on-break",
    ]);
    assert_code(&o, 2);
}

/// A directory is laid over the applied policies: it replaces leash's policy for frontend,
/// and the data team's ingress policy stays (debug's connection to postgres stays denied).
/// Compared with itself, a state changes nothing.
#[test]
fn a_directory_is_combined_with_the_applied_policies() {
    let f = fixture();
    let o = diff(&f, "applied", p(&f.proposal), &["--format", "json"]);
    assert_code(&o, 0);
    assert!(
        !stdout(&o).contains(r#""namespace":"ops""#),
        "debug's flows keep their verdict: {}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains(&format!(
            "leash: --to {}: 1 given, 1 applied kept, 1 applied replaced \
             (NetworkPolicy shop/frontend-egress) (applied: {})",
            p(&f.proposal),
            p(&f.cluster)
        )),
        "{}",
        stderr(&o)
    );
    // The applied policies written out as a directory are the applied state.
    let same = f.dir.path().join("same");
    write_policy(&same, APPLIED);
    let o = diff(&f, "applied", p(&same), &["--format", "json"]);
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "");
    // Two directories: both over the applied policies.
    let o = diff(&f, p(&f.wider), p(&f.proposal), &["--format", "json"]);
    assert_code(&o, 0);
    assert_eq!(lines_of(&o, "flow"), [FLOW_LINES[1]]);
}

/// `git:REV:PATH` reads the policies at a revision, not the working tree.
#[test]
fn git_revisions_are_states() {
    let f = fixture();
    let repo = f.dir.path().join("repo");
    std::fs::create_dir(&repo).expect("mkdir");
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .arg("-C")
            .arg(&repo)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", f.dir.path())
            .output()
            .expect("runs git");
        assert!(o.status.success(), "git {args:?}: {}", stderr(&o));
    };
    git(&["init", "-q", "-b", "main"]);
    write_policy(&repo.join("policies"), APPLIED);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "applied"]);
    write_policy(&repo.join("policies"), PROPOSAL);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "proposal"]);
    // The working tree no longer parses: only the revisions are read.
    std::fs::write(
        repo.join("policies/shop/frontend-egress.yaml"),
        "not: [yaml",
    )
    .expect("w");

    let run = |from: &str, to: &str| {
        leash_in(
            Some(&repo),
            &[
                "diff",
                "--cluster",
                p(&f.cluster),
                "--flows",
                p(&f.flows),
                "--from",
                from,
                "--to",
                to,
                "--format",
                "json",
            ],
        )
    };
    let o = run("git:HEAD~1:policies", "git:HEAD:policies");
    assert_code(&o, 0);
    assert_eq!(lines_of(&o, "flow"), FLOW_LINES);
    // The first revision holds the applied policy: nothing changes against `applied`.
    let o = run("applied", "git:HEAD~1:policies");
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "");
    // A revision that does not exist is bad input naming the state.
    let o = run("git:no-such-rev:policies", "applied");
    assert_code(&o, 2);
    assert!(stderr(&o).contains("--from"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("git:no-such-rev:policies"),
        "{}",
        stderr(&o)
    );
}

/// The store's observations are the traffic: pods as stored, `--since` honoured.
#[test]
fn a_store_is_the_traffic() {
    let f = fixture();
    let db = f.dir.path().join("leash.db");
    let store = SqliteStore::open(&db).expect("store opens");
    let now = Utc::now().trunc_subsecs(0);
    let seen = now - Duration::hours(1);
    let obs = |dst: &str, last: DateTime<Utc>, pods: &[&str]| FlowObservation {
        workload: WorkloadRef {
            namespace: "shop".into(),
            kind: "Deployment".into(),
            name: "frontend".into(),
        },
        protocol: Protocol::Tcp,
        dst: dst.parse().expect("ip"),
        port: 443,
        count: 4,
        first_seen: last,
        last_seen: last,
        names: BTreeSet::from(["api.example.com".to_owned()]),
        established: 4,
        failed: 0,
        pods: PodNames {
            names: pods.iter().map(|p| (*p).to_owned()).collect(),
            more: 0,
        },
    };
    store
        .commit(
            &BatchId {
                node: "n1".into(),
                boot_id: "b".into(),
                seq: 1,
            },
            &[
                obs("203.0.113.200", seen, &["frontend-2"]),
                // Outside --since 7d.
                obs("203.0.113.201", now - Duration::days(8), &["frontend-1"]),
            ],
            &[],
        )
        .expect("commit");
    drop(store);
    let o = leash(&[
        "diff",
        "--cluster",
        p(&f.cluster),
        "--store",
        p(&db),
        "--since",
        "7d",
        "--from",
        "applied",
        "--to",
        p(&f.proposal),
        "--format",
        "json",
        "--fail-on-break",
    ]);
    assert_code(&o, 3);
    let want = format!(
        r#"{{"kind":"flow","source":{{"namespace":"shop","workload":"Deployment/frontend","pod":"frontend-2"}},"protocol":"TCP","dst":"203.0.113.200","dst_port":443,"from":"allow","to":"deny","events":4,"last_seen":"{}","names":["api.example.com"]}}"#,
        leash_records::time::rfc3339(seen)
    );
    assert_eq!(lines_of(&o, "flow"), [want]);
    // Without --since both breaks are there.
    let o = leash(&[
        "diff",
        "--cluster",
        p(&f.cluster),
        "--store",
        p(&db),
        "--from",
        "applied",
        "--to",
        p(&f.proposal),
        "--format",
        "json",
    ]);
    assert_code(&o, 0);
    assert_eq!(lines_of(&o, "flow").len(), 2);
}

#[test]
fn namespace_filters_sources() {
    let f = fixture();
    // debug's flows keep their verdict, so ops alone has nothing to report.
    let o = diff(
        &f,
        "applied",
        p(&f.proposal),
        &["--namespace", "ops", "--format", "json", "--fail-on-break"],
    );
    assert_code(&o, 0);
    assert_eq!(stdout(&o), "");
    let o = diff(&f, "applied", p(&f.proposal), &["--namespace", "ops"]);
    assert_code(&o, 0);
    let md = stdout(&o);
    assert!(
        md.contains("- `ops`: no break; no change (1 workload)\n"),
        "{md}"
    );
    assert!(!md.contains("`shop`"), "{md}");
    assert!(!md.contains("`data`"), "{md}");
    // Repeatable: both namespaces.
    let o = diff(
        &f,
        "applied",
        p(&f.proposal),
        &[
            "--namespace",
            "ops",
            "--namespace",
            "shop",
            "--format",
            "json",
        ],
    );
    assert_code(&o, 0);
    assert_eq!(lines_of(&o, "flow"), FLOW_LINES);
}

#[test]
fn markdown_gives_summaries_breaks_changes_then_unchanged() {
    let f = fixture();
    let o = diff(&f, "applied", p(&f.proposal), &[]);
    assert_code(&o, 0);
    let md = stdout(&o);
    let title = format!("## leash diff: `applied` → `{}`\n", p(&f.proposal));
    assert!(md.starts_with(&title), "{md}");
    let at = |needle: &str| {
        md.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in:\n{md}"))
    };
    let order = [
        at("- `data`: no break; no change (1 workload)\n"),
        at("- `ops`: no break; no change (1 workload)\n"),
        at("- `shop`: **1 break**; "),
        at("### Breaks\n"),
        at(
            "| `shop/Deployment/frontend` | `frontend-1` | `203.0.113.200:443` | TCP | 15 | \
             2026-11-23T09:00:00Z | api.example.com |\n",
        ),
        at("### Changes per workload\n"),
        at("#### `shop/Deployment/frontend`\n"),
        at(
            "- `198.51.100.7:443` TCP (cdn.example.net) from `frontend-1`: 2 events, last seen \
             2026-11-23T08:00:00Z\n",
        ),
        at("### Unchanged\n\n2 of 3 workloads unchanged.\n"),
    ];
    let mut sorted = order;
    sorted.sort_unstable();
    assert_eq!(order, sorted, "{md}");

    let o = diff(&f, "applied", p(&f.proposal), &["--format", "table"]);
    assert_code(&o, 0);
    let table = stdout(&o);
    assert!(
        table.contains(
            "shop/Deployment/frontend  frontend-1  TCP    203.0.113.200:443  allow → deny (break)  15"
        ),
        "{table}"
    );
    assert!(
        table.ends_with("2 of 6 observed flows change verdict, 1 break\n"),
        "{table}"
    );
}

#[test]
fn bad_states_are_bad_input_naming_the_state() {
    let f = fixture();
    let missing = f.dir.path().join("no-such-dir");
    let broken = f.dir.path().join("broken");
    std::fs::create_dir(&broken).expect("mkdir");
    std::fs::write(
        broken.join("bad.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x, namespace: shop}\nspec:\n  podSelector: {}\n  policyTypes: [Sideways]\n",
    )
    .expect("writes");
    let cases: [(&str, &str, &str); 4] = [
        ("applied", "git:main", "git:main"),
        ("applied", p(&missing), p(&missing)),
        (p(&broken), "applied", "bad.yaml"),
        ("", "applied", "--from"),
    ];
    for (from, to, named) in cases {
        let o = diff(&f, from, to, &[]);
        assert_code(&o, 2);
        assert!(stderr(&o).contains(named), "{from} → {to}: {}", stderr(&o));
        assert_eq!(stdout(&o), "", "nothing is reported on bad input");
    }
    let o = diff(&f, p(&broken), "applied", &[]);
    assert!(stderr(&o).contains("--from"), "{}", stderr(&o));
}

/// The kubeadm demo fixture of `recommend` and `guardrails`.
fn kubeadm(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/recommend/kubeadm")
        .join(name)
        .to_str()
        .expect("utf-8 path")
        .to_owned()
}

/// `leash diff --from applied --to DIR` on the guardrails `leash guardrails -o DIR` writes:
/// the reachability changes evaluate the tiers. Every pod-network workload loses the metadata
/// addresses (the Admin tier); the workloads of the namespaces the Baseline default deny
/// covers lose everything but DNS to the DNS pods; kube-system (exempt from the Baseline)
/// loses only the metadata addresses; the hostNetwork node-exporter changes nothing.
#[test]
fn reachability_of_the_guardrails_names_the_workloads_that_lose_egress() {
    let (cluster, flows) = (kubeadm("cluster.yaml"), kubeadm("flows.jsonl"));
    let proposal = tempfile::tempdir().expect("tempdir");
    let guardrails = tempfile::tempdir().expect("tempdir");
    let (p_dir, g_dir) = (p(proposal.path()), p(guardrails.path()));
    let o = leash(&[
        "recommend",
        "--cluster",
        &cluster,
        "--flows",
        &flows,
        "-o",
        p_dir,
    ]);
    assert_code(&o, 0);
    let o = leash(&[
        "guardrails",
        "--cluster",
        &cluster,
        "--flows",
        &flows,
        "--proposed",
        p_dir,
        "-o",
        g_dir,
    ]);
    assert_code(&o, 0);
    let o = leash(&[
        "diff",
        "--cluster",
        &cluster,
        "--flows",
        &flows,
        "--from",
        "applied",
        "--to",
        g_dir,
        "--format",
        "json",
    ]);
    assert_code(&o, 0);
    assert!(
        !stderr(&o).contains("NetworkPolicies only"),
        "{}",
        stderr(&o)
    );
    let changes: Vec<serde_json::Value> = lines_of(&o, "reachability")
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert!(changes.iter().all(|c| c["change"] == "newly-denied"));
    let source = |c: &serde_json::Value| {
        let s = &c["source"];
        format!(
            "{}/{}",
            s["namespace"].as_str().expect("namespace"),
            s["workload"].as_str().expect("a whole workload")
        )
    };
    let sources: BTreeSet<String> = changes.iter().map(source).collect();
    assert_eq!(
        sources,
        BTreeSet::from(
            [
                "billing/StatefulSet/ledger",
                "kube-system/Deployment/coredns",
                "shop/Deployment/api",
                "shop/Deployment/payment",
                "shop/Pod/debug",
            ]
            .map(str::to_owned)
        )
    );
    let of = |workload: &str| -> Vec<&serde_json::Value> {
        changes.iter().filter(|c| source(c) == workload).collect()
    };
    // kube-system: the metadata addresses on every port of every protocol, nothing else.
    let mut coredns: Vec<String> = of("kube-system/Deployment/coredns")
        .iter()
        .map(|c| {
            format!(
                "{} {}-{} {}-{}",
                c["protocol"],
                c["port_from"],
                c["port_to"],
                c["destination"]["first"],
                c["destination"]["last"]
            )
        })
        .collect();
    coredns.sort();
    let mut want: Vec<String> = ["\"SCTP\"", "\"TCP\"", "\"UDP\""]
        .iter()
        .flat_map(|p| {
            [
                format!("{p} 0-65535 \"169.254.169.254\"-\"169.254.169.254\""),
                format!("{p} 0-65535 \"fd00:ec2::254\"-\"fd00:ec2::254\""),
            ]
        })
        .collect();
    want.sort();
    assert_eq!(coredns, want);
    // payment loses HTTPS to the world, and keeps DNS to coredns: only the ports around 53.
    let payment = of("shop/Deployment/payment");
    assert!(payment.iter().any(|c| {
        c["protocol"] == "TCP"
            && c["port_from"].as_u64() <= Some(443)
            && c["port_to"].as_u64() >= Some(443)
            && c["destination"]["first"]
                .as_str()
                .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                .zip(
                    c["destination"]["last"]
                        .as_str()
                        .and_then(|a| a.parse::<std::net::IpAddr>().ok()),
                )
                .is_some_and(|(a, b)| {
                    let ip: std::net::IpAddr = "203.0.113.10".parse().expect("ip");
                    a <= ip && ip <= b
                })
    }));
    let mut to_dns: Vec<String> = payment
        .iter()
        .filter(|c| c["destination"]["workload"] == "Deployment/coredns")
        .map(|c| format!("{} {}-{}", c["protocol"], c["port_from"], c["port_to"]))
        .collect();
    to_dns.sort();
    assert_eq!(
        to_dns,
        [
            "\"SCTP\" 0-65535",
            "\"TCP\" 0-52",
            "\"TCP\" 54-65535",
            "\"UDP\" 0-52",
            "\"UDP\" 54-65535"
        ]
    );
}
