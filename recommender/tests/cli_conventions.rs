//! The conventions of the `leash` command line (README, "Conventions"), through the built
//! binary: exit codes, the workload reference in JSON, the duration grammar, and the policy
//! state `audit` and `explain` evaluate (an empty set, the applied policies combined with a
//! given set, `--policies-only`).

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use chrono::{Duration, Utc};
use leash::store::{BatchId, FlowObservation, SqliteStore, Store as _, WorkloadRef};
use leash_records::Protocol;
use support::cli::{assert_code, p, stderr};
use support::snapshots;

/// shop: Deployment `web` (pod web-1) and a bare pod `worker`; db: `postgres-0`. Applied
/// policies: an ingress policy of the database team, and two leash-managed egress policies
/// in shop (web: DNS only; worker: nothing).
fn snapshot() -> String {
    snapshots::list(&[
        snapshots::namespace("shop"),
        snapshots::namespace("db"),
        snapshots::deployment("shop", "web", "web-1", "10.244.1.10"),
        REST.to_owned(),
    ])
}

/// The bare pods and the applied policies of [`snapshot`].
const REST: &str = r#"- apiVersion: v1
  kind: Pod
  metadata: {name: worker, namespace: shop, uid: uid-pod-worker, labels: {app: worker}}
  spec: {nodeName: n1, containers: [{name: worker, image: worker:1}]}
  status: {phase: Running, podIP: 10.244.1.11, podIPs: [{ip: 10.244.1.11}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: postgres-0, namespace: db, uid: uid-pod-pg, labels: {app: postgres}}
  spec: {nodeName: n1, containers: [{name: pg, image: pg:1, ports: [{containerPort: 5432}]}]}
  status: {phase: Running, podIP: 10.244.2.20, podIPs: [{ip: 10.244.2.20}]}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: postgres-ingress, namespace: db}
  spec:
    podSelector: {matchLabels: {app: postgres}}
    policyTypes: [Ingress]
    ingress:
    - from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: api}}}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    name: web-egress
    namespace: shop
    labels: {app.kubernetes.io/managed-by: leash}
  spec:
    podSelector: {matchLabels: {app: web}}
    policyTypes: [Egress]
    egress:
    - ports: [{port: 53, protocol: UDP}]
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    name: worker-egress
    namespace: shop
    labels: {app.kubernetes.io/managed-by: leash}
  spec:
    podSelector: {matchLabels: {app: worker}}
    policyTypes: [Egress]
"#;

/// The proposal: web's new egress policy (HTTPS out, and the database). It says nothing of
/// worker, so the applied leash policy isolating worker goes.
const PROPOSAL: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web-egress
  namespace: shop
  labels: {app.kubernetes.io/managed-by: leash}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 203.0.113.0/24}}]
    ports: [{port: 443, protocol: TCP}]
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: db}}}]
    ports: [{port: 5432, protocol: TCP}]
"#;

fn flow(pod: &str, uid: &str, dst: &str, port: u16) -> String {
    format!(
        r#"{{"v":1,"kind":"flow","node":"n1","pod":{{"uid":"{uid}","namespace":"shop","name":"{pod}"}},"cgroup":"/k","protocol":"TCP","dst":"{dst}","dst_port":{port},"count":1,"first_seen":"2026-11-23T08:00:00Z","last_seen":"2026-11-23T08:00:00Z","names":[]}}"#
    )
}

/// The snapshot, the proposal directory, an empty policy directory and the flows.
struct Fixture {
    dir: tempfile::TempDir,
    cluster: PathBuf,
    proposal: PathBuf,
    empty: PathBuf,
    flows: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, snapshot()).expect("writes the snapshot");
    let proposal = dir.path().join("proposal");
    std::fs::create_dir_all(proposal.join("shop")).expect("mkdir");
    std::fs::write(proposal.join("shop/web-egress.yaml"), PROPOSAL).expect("writes");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    std::fs::write(empty.join("README.md"), "no policies yet\n").expect("writes");
    let flows = dir.path().join("flows.jsonl");
    let lines = [
        flow("web-1", "uid-pod-web", "203.0.113.10", 443),
        flow("web-1", "uid-pod-web", "10.244.2.20", 5432),
        flow("worker", "uid-pod-worker", "203.0.113.10", 443),
    ];
    std::fs::write(&flows, lines.join("\n") + "\n").expect("writes the flows");
    Fixture {
        dir,
        cluster,
        proposal,
        empty,
        flows,
    }
}

fn leash(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leash"))
        .args(args)
        .env_remove("LEASH_MAX_INPUT_BYTES")
        .stdin(Stdio::null())
        .output()
        .expect("runs the leash binary")
}

/// `audit --format json` with `extra` arguments: each flow's (workload, verdict, egress,
/// ingress), in input order.
fn audit_json(f: &Fixture, extra: &[&str]) -> (Output, Vec<[String; 4]>) {
    let mut args = vec![
        "audit",
        "--cluster",
        p(&f.cluster),
        "--flows",
        p(&f.flows),
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let o = leash(&args);
    let rows = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object per line");
            let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_owned();
            [
                s(&v["source"]["workload"]),
                s(&v["verdict"]),
                s(&v["egress"]),
                s(&v["ingress"]),
            ]
        })
        .collect();
    (o, rows)
}

fn row(workload: &str, verdict: &str, egress: &str, ingress: &str) -> [String; 4] {
    [workload, verdict, egress, ingress].map(str::to_owned)
}

/// The applied policies and the proposal together: the proposal replaces the leash-managed
/// policies of shop (web's, and worker's, which it leaves out); db's ingress policy stays.
#[test]
fn audit_combines_the_given_set_with_the_applied_policies() {
    let f = fixture();
    let (o, rows) = audit_json(&f, &["--policies", p(&f.proposal)]);
    assert_code(&o, 0);
    assert_eq!(
        rows,
        [
            row("Deployment/web", "allow", "allow", "allow"),
            // Egress allowed by the proposal, ingress still denied by db's own policy.
            row("Deployment/web", "deny", "allow", "deny"),
            // worker-egress (leash-managed, in shop) was replaced: worker is not isolated.
            row("Pod/worker", "allow", "allow", "allow"),
        ]
    );
    let err = stderr(&o);
    assert!(
        err.contains("1 given, 1 applied kept, 2 applied replaced")
            && err.contains("NetworkPolicy shop/web-egress")
            && err.contains("NetworkPolicy shop/worker-egress"),
        "{err}"
    );
    let json = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        json.contains(r#""policies":["db/postgres-ingress"]"#),
        "{json}"
    );

    // The given set alone: db's ingress policy is not part of it.
    let (o, rows) = audit_json(&f, &["--policies", p(&f.proposal), "--policies-only"]);
    assert_code(&o, 0);
    assert_eq!(
        rows,
        [
            row("Deployment/web", "allow", "allow", "allow"),
            row("Deployment/web", "allow", "allow", "allow"),
            row("Pod/worker", "allow", "allow", "allow"),
        ]
    );

    // Without --policies: what is applied in the snapshot.
    let (o, rows) = audit_json(&f, &[]);
    assert_code(&o, 0);
    assert_eq!(
        rows,
        [
            row("Deployment/web", "deny", "deny", "allow"),
            row("Deployment/web", "deny", "deny", "deny"),
            row("Pod/worker", "deny", "deny", "allow"),
        ]
    );
}

/// `explain` evaluates the same policy state as `audit`.
#[test]
fn explain_uses_the_same_policy_state() {
    let f = fixture();
    let explain = |extra: &[&str]| {
        let mut args = vec![
            "explain",
            "--cluster",
            p(&f.cluster),
            "--from",
            "shop/web-1",
            "--to",
            "10.244.2.20:5432/TCP",
        ];
        args.extend_from_slice(extra);
        let o = leash(&args);
        assert_code(&o, 0);
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let combined = explain(&["--policies", p(&f.proposal)]);
    assert!(combined.contains("db/postgres-ingress"), "{combined}");
    let alone = explain(&["--policies", p(&f.proposal), "--policies-only"]);
    assert!(!alone.contains("db/postgres-ingress"), "{alone}");
}

/// An empty policy directory is a valid set: nothing is isolated, everything is allowed,
/// and stderr says so. It used to fail with "no NetworkPolicy found".
#[test]
fn an_empty_policy_directory_is_an_empty_set() {
    let f = fixture();
    let (o, rows) = audit_json(
        &f,
        &[
            "--policies",
            p(&f.empty),
            "--policies-only",
            "--fail-on-deny",
        ],
    );
    assert_code(&o, 0);
    assert_eq!(rows.len(), 3);
    assert!(rows.iter().all(|r| r[1] == "allow"), "{rows:?}");
    let err = stderr(&o);
    assert!(
        err.contains(p(&f.empty)) && err.contains("no NetworkPolicy found"),
        "{err}"
    );
    assert!(err.contains("nothing is isolated"), "{err}");

    // With the applied policies, an empty proposal replaces nothing.
    let (o, with_applied) = audit_json(&f, &["--policies", p(&f.empty)]);
    assert_code(&o, 0);
    let (_, applied) = audit_json(&f, &[]);
    assert_eq!(with_applied, applied);

    // A snapshot without policies and no --policies: the same empty state.
    let bare = f.dir.path().join("bare.yaml");
    let without: String = snapshot()
        .split("\n- ")
        .filter(|item| !item.contains("kind: NetworkPolicy"))
        .collect::<Vec<_>>()
        .join("\n- ");
    std::fs::write(&bare, without).expect("writes");
    let o = leash(&[
        "explain",
        "--cluster",
        p(&bare),
        "--from",
        "shop/worker",
        "--to",
        "203.0.113.10:443/TCP",
    ]);
    assert_code(&o, 0);
    assert!(stderr(&o).contains("nothing is isolated"), "{}", stderr(&o));
}

/// 0 success, 1 runtime failure, 2 bad input or usage, 3 a requested check found a problem.
#[test]
fn exit_codes() {
    let f = fixture();
    let audit = |extra: &[&str]| {
        let mut args = vec!["audit", "--cluster", p(&f.cluster), "--flows", p(&f.flows)];
        args.extend_from_slice(extra);
        leash(&args)
    };
    // 0, and 3 for the same denials under --fail-on-deny.
    assert_code(&audit(&["--policies", p(&f.proposal)]), 0);
    let o = audit(&["--policies", p(&f.proposal), "--fail-on-deny"]);
    assert_code(&o, 3);
    assert!(stderr(&o).contains("1 of 3 flows denied"), "{}", stderr(&o));
    assert_code(
        &audit(&[
            "--policies",
            p(&f.proposal),
            "--policies-only",
            "--fail-on-deny",
        ]),
        0,
    );

    // 2: usage (clap) and bad input.
    assert_code(&audit(&["--no-such-flag"]), 2);
    assert_code(&audit(&["--policies-only"]), 2);
    assert_code(&audit(&["--policies", p(&f.dir.path().join("missing"))]), 2);
    let o = leash(&[
        "explain",
        "--cluster",
        p(&f.cluster),
        "--from",
        "shop",
        "--to",
        "x",
    ]);
    assert_code(&o, 2);

    // 1: a runtime failure, here writing the answer to a full device.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let o = Command::new(env!("CARGO_BIN_EXE_leash"))
        .args(["audit", "--cluster", p(&f.cluster), "--flows", p(&f.flows)])
        .stdout(full)
        .output()
        .expect("runs the leash binary");
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("cannot write to stdout"),
        "{}",
        stderr(&o)
    );

    // 1: the network (an API server that is not there).
    let kubeconfig = f.dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
         clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1', insecure-skip-tls-verify: true}}]\n\
         users: [{name: u, user: {token: t}}]\n\
         contexts: [{name: c, context: {cluster: k, user: u}}]\n",
    )
    .expect("writes");
    let o = leash(&[
        "audit",
        "--kube",
        "--kubeconfig",
        p(&kubeconfig),
        "--flows",
        p(&f.flows),
    ]);
    assert_code(&o, 1);
    assert!(stderr(&o).contains("Kubernetes API"), "{}", stderr(&o));
}

/// A store holding web's flows, one seen an hour ago and one three hours ago.
fn store(f: &Fixture) -> PathBuf {
    let db = f.dir.path().join("leash.db");
    let store = SqliteStore::open(&db).expect("store opens");
    let now = Utc::now();
    let observation = |dst: &str, ago: Duration| FlowObservation {
        workload: WorkloadRef {
            namespace: "shop".into(),
            kind: "Deployment".into(),
            name: "web".into(),
        },
        protocol: Protocol::Tcp,
        dst: dst.parse().expect("ip"),
        port: 443,
        count: 1,
        first_seen: now - ago,
        last_seen: now - ago,
        names: BTreeSet::new(),
        established: 1,
        failed: 0,
        pods: Default::default(),
    };
    let id = BatchId {
        node: "n1".into(),
        boot_id: "b".into(),
        seq: 1,
    };
    store
        .commit(
            &id,
            &[
                observation("203.0.113.10", Duration::hours(1)),
                observation("203.0.113.11", Duration::hours(3)),
            ],
            &[],
        )
        .expect("commit");
    db
}

/// `--since` takes the grammar `?since=` takes (humantime): `1h30m` used to fail on the
/// command line only.
#[test]
fn since_takes_one_grammar() {
    let f = fixture();
    let db = store(&f);
    let audited = |since: &str| {
        let o = leash(&[
            "audit",
            "--cluster",
            p(&f.cluster),
            "--store",
            p(&db),
            "--since",
            since,
            "--format",
            "json",
        ]);
        assert_code(&o, 0);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            out.lines()
                .all(|l| l.contains(r#""workload":"Deployment/web""#)),
            "{out}"
        );
        out.lines().count()
    };
    assert_eq!(audited("1h30m"), 1);
    assert_eq!(audited("1h 30m"), 1);
    assert_eq!(audited("4h"), 2);
    let o = leash(&[
        "recommend",
        "--cluster",
        p(&f.cluster),
        "--store",
        p(&db),
        "--since",
        "1h30m",
    ]);
    assert_code(&o, 0);
    let yaml = String::from_utf8_lossy(&o.stdout);
    assert!(
        yaml.contains("203.0.113.10/32") && !yaml.contains("203.0.113.11"),
        "{yaml}"
    );
}

/// One range check for every duration flag: too long, malformed or (for intervals) zero is
/// a usage error, exit 2, naming the value.
#[test]
fn duration_flags_share_one_range_check() {
    let f = fixture();
    let db = store(&f);
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "audit",
                "--cluster",
                p(&f.cluster),
                "--store",
                p(&db),
                "--since",
                "300000years",
            ],
            "longer than the maximum",
        ),
        (
            &[
                "recommend",
                "--cluster",
                p(&f.cluster),
                "--store",
                p(&db),
                "--since",
                "24",
            ],
            "invalid duration",
        ),
        (
            &[
                "recommend",
                "--cluster",
                p(&f.cluster),
                "--flows",
                p(&f.flows),
                "--min-observation",
                "1001y",
            ],
            "longer than the maximum",
        ),
        (
            &[
                "serve",
                "--cluster",
                p(&f.cluster),
                "--insecure",
                "--retention",
                "1h30",
            ],
            "invalid duration",
        ),
        (
            &[
                "serve",
                "--cluster",
                p(&f.cluster),
                "--insecure",
                "--check-interval",
                "0s",
            ],
            "greater than zero",
        ),
    ];
    for (args, needle) in cases {
        let o = leash(args);
        assert_code(&o, 2);
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}
