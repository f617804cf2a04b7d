//! The built `leash` binary with `--store`: `recommend` and `audit` read a SQLite store this
//! test fills from the kubeadm fixture's records, and agree with the `--flows` path.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::Utc;
use leash::cluster::Cluster;
use leash::observations;
use leash::store::{BatchId, FlowObservation, SqliteStore, Store, WorkloadRef};
use leash_records::{DnsRecord, FlowRecord, Protocol, Record};

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

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The fixture's records, aggregated in three batches and committed to a new store at `db`.
fn fill_store(db: &Path) -> SqliteStore {
    let cluster = Cluster::load(&fixture("cluster.yaml")).expect("fixture cluster");
    let path = fixture("flows.jsonl");
    let file = std::fs::File::open(&path).expect("fixture flows");
    let records: Vec<Record> = leash_records::read_records(BufReader::new(file), &path)
        .map(|l| l.expect("valid fixture record").record)
        .collect();
    let store = SqliteStore::open(db).expect("store opens");
    for (seq, chunk) in records.chunks(records.len().div_ceil(3)).enumerate() {
        let flows: Vec<FlowRecord> = chunk
            .iter()
            .filter_map(|r| match r {
                Record::Flow(f) => Some(f.clone()),
                Record::Dns(_) => None,
            })
            .collect();
        let dns: Vec<DnsRecord> = chunk
            .iter()
            .filter_map(|r| match r {
                Record::Dns(d) => Some(d.clone()),
                Record::Flow(_) => None,
            })
            .collect();
        let (f, d) = observations::from_batch(&cluster, &flows, &dns);
        let id = BatchId {
            node: "n1".into(),
            boot_id: "boot".into(),
            seq: seq as u64,
        };
        store.commit(&id, &f, &d).expect("commit");
    }
    store
}

#[test]
fn recommend_from_a_store_matches_recommend_from_the_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("leash.db");
    drop(fill_store(&db));
    let cluster = fixture("cluster.yaml");
    let flows = fixture("flows.jsonl");
    let from_flows = leash(&[
        "recommend",
        "--cluster",
        path_str(&cluster),
        "--flows",
        path_str(&flows),
    ]);
    assert_eq!(from_flows.status.code(), Some(0), "{}", stderr(&from_flows));
    let from_store = leash(&[
        "recommend",
        "--cluster",
        path_str(&cluster),
        "--store",
        path_str(&db),
    ]);
    assert_eq!(from_store.status.code(), Some(0), "{}", stderr(&from_store));
    assert!(stdout(&from_store).contains("kind: NetworkPolicy"));
    assert_eq!(stdout(&from_store), stdout(&from_flows));

    // A window covering everything changes nothing; one covering nothing gives no policy.
    let wide = leash(&[
        "recommend",
        "--cluster",
        path_str(&cluster),
        "--store",
        path_str(&db),
        "--since",
        "100000d",
    ]);
    assert_eq!(wide.status.code(), Some(0), "{}", stderr(&wide));
    assert_eq!(wide.stdout, from_store.stdout);
    let narrow = leash(&[
        "recommend",
        "--cluster",
        path_str(&cluster),
        "--store",
        path_str(&db),
        "--since",
        "1s",
    ]);
    assert_eq!(narrow.status.code(), Some(0), "{}", stderr(&narrow));
    assert!(
        !stdout(&narrow).contains("kind: NetworkPolicy"),
        "the fixture's traffic is older than a second: {}",
        stdout(&narrow)
    );
}

#[test]
fn recommend_from_a_store_writes_the_output_directory_and_reports_skipped_workloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("leash.db");
    let store = fill_store(&db);
    // Traffic of a workload the snapshot no longer has.
    let now = Utc::now();
    let gone = FlowObservation {
        workload: WorkloadRef {
            namespace: "shop".into(),
            kind: "Deployment".into(),
            name: "gone".into(),
        },
        protocol: Protocol::Tcp,
        dst: "198.51.100.250".parse().expect("ip"),
        port: 443,
        count: 7,
        first_seen: now,
        last_seen: now,
        names: Default::default(),
        pods: Default::default(),
        established: 0,
        failed: 0,
    };
    let id = BatchId {
        node: "n2".into(),
        boot_id: "b".into(),
        seq: 1,
    };
    store.commit(&id, &[gone], &[]).expect("commit");
    drop(store);

    let out = dir.path().join("out");
    let o = leash(&[
        "recommend",
        "--cluster",
        path_str(&fixture("cluster.yaml")),
        "--store",
        path_str(&db),
        "-o",
        path_str(&out),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    assert!(
        err.contains("skipped shop/Deployment/gone") && err.contains("7 flow events"),
        "{err}"
    );
    let report = std::fs::read_to_string(out.join("REPORT.md")).expect("REPORT.md");
    assert!(report.contains("# leash egress recommendation"), "{report}");
    assert!(out.join("shop/payment-egress.yaml").is_file());
    assert!(
        !report.contains("198.51.100.250"),
        "skipped traffic is in no rule"
    );
    // The reviewer of the pull request sees what was left out, not only the operator.
    let left_out = report
        .split("### Observations left out")
        .nth(1)
        .expect("a section for what was left out");
    assert!(
        left_out.contains("skipped shop/Deployment/gone") && left_out.contains("7 flow events"),
        "{report}"
    );
}

#[test]
fn audit_from_a_store_allows_everything_recommended_and_fails_on_deny() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("leash.db");
    let store = fill_store(&db);
    let stored = store.flows(None).expect("flows");
    let pod_flows = stored.iter().filter(|f| !f.workload.is_node()).count();
    drop(store);
    let cluster = fixture("cluster.yaml");
    let policies = dir.path().join("policies");
    let o = leash(&[
        "recommend",
        "--cluster",
        path_str(&cluster),
        "--store",
        path_str(&db),
        "-o",
        path_str(&policies),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    std::fs::remove_file(policies.join("REPORT.md")).expect("report");

    let o = leash(&[
        "audit",
        "--cluster",
        path_str(&cluster),
        "--policies",
        path_str(&policies),
        "--store",
        path_str(&db),
        "--format",
        "json",
        "--fail-on-deny",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stderr(&o), stdout(&o));
    let lines: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(!lines.is_empty());
    // One verdict per stored pod flow (each workload's flows attributed to one pod).
    assert_eq!(lines.len(), pod_flows);
    assert!(lines.iter().all(|l| l["verdict"] == "allow"), "{lines:#?}");

    std::fs::remove_file(policies.join("shop/payment-egress.yaml")).expect("policy exists");
    let o = leash(&[
        "audit",
        "--cluster",
        path_str(&cluster),
        "--policies",
        path_str(&policies),
        "--store",
        path_str(&db),
        "--fail-on-deny",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stdout(&o).contains("deny"));
}

#[test]
fn exactly_one_of_flows_and_store_and_errors_name_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = fixture("cluster.yaml");
    let flows = fixture("flows.jsonl");
    let missing = dir.path().join("missing.db");
    for cmd in ["recommend", "audit"] {
        let mut base = vec![cmd, "--cluster", path_str(&cluster)];
        if cmd == "audit" {
            base.extend(["--policies", path_str(&cluster)]);
        }
        let both = leash(
            &[
                base.as_slice(),
                &["--flows", path_str(&flows), "--store", path_str(&missing)],
            ]
            .concat(),
        );
        assert_eq!(both.status.code(), Some(2), "{cmd}: {}", stderr(&both));
        assert!(
            stderr(&both).contains("cannot be used with"),
            "{}",
            stderr(&both)
        );

        let neither = leash(&base);
        assert_eq!(
            neither.status.code(),
            Some(2),
            "{cmd}: {}",
            stderr(&neither)
        );
        assert!(stderr(&neither).contains("--store"), "{}", stderr(&neither));

        let since_without_store = leash(
            &[
                base.as_slice(),
                &["--flows", path_str(&flows), "--since", "1d"],
            ]
            .concat(),
        );
        assert_eq!(since_without_store.status.code(), Some(2));
    }

    // A store that does not exist is not created empty: exit 2, the path named.
    let o = leash(&[
        "recommend",
        "--cluster",
        path_str(&cluster),
        "--store",
        path_str(&missing),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains(path_str(&missing)), "{}", stderr(&o));
    assert!(!missing.exists());

    // A file that is not a database.
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 4096]).expect("write");
    let o = leash(&[
        "recommend",
        "--cluster",
        path_str(&cluster),
        "--store",
        path_str(&junk),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(path_str(&junk)) && err.contains("not a database"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// README: with `--store`, REPORT.md's "pods" column names the pods that made the
/// connections (up to the store's bound per observation, then "and N more"), not one
/// stand-in pod per workload.
#[test]
fn recommend_from_a_store_reports_the_pods_that_connected() {
    let mut fx = support::recommend::Fx::new();
    fx.node("n1", "10.0.0.1", "10.244.1.0/24");
    fx.namespace("shop");
    let web = fx.deployment(
        "shop",
        "web",
        &[("app", "web")],
        &["10.244.1.40", "10.244.1.41", "10.244.1.42"],
        &[],
    );
    let ips: Vec<String> = (10..22).map(|i| format!("10.244.1.{i}")).collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    let api = fx.deployment("shop", "api", &[("app", "api")], &ips, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshot = dir.path().join("cluster.json");
    std::fs::write(&snapshot, snapshot_json(&fx.snap)).expect("write the snapshot");
    let cluster = fx.cluster();

    // web's second and third pods call one destination; all twelve of api's another, in
    // two batches from two nodes.
    let calls = |pods: &[String], dst: &str| -> Vec<FlowRecord> {
        pods.iter()
            .map(
                |p| match support::recommend::flow("shop", p, "TCP", dst, 443, 1, &[]) {
                    Record::Flow(f) => f,
                    Record::Dns(_) => unreachable!("a flow record"),
                },
            )
            .collect()
    };
    let db = dir.path().join("leash.db");
    let store = SqliteStore::open(&db).expect("store opens");
    let mut first = calls(&web[1..], "203.0.113.7");
    first.extend(calls(&api[..6], "198.51.100.9"));
    let second = calls(&api[6..], "198.51.100.9");
    for (seq, batch) in [first, second].iter().enumerate() {
        let (f, d) = observations::from_batch(&cluster, batch, &[]);
        let id = BatchId {
            node: format!("n{seq}"),
            boot_id: "boot".into(),
            seq: 1,
        };
        store.commit(&id, &f, &d).expect("commit");
    }
    drop(store);

    let out = dir.path().join("out");
    let o = leash(&[
        "recommend",
        "--cluster",
        path_str(&snapshot),
        "--store",
        path_str(&db),
        "-o",
        path_str(&out),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report = std::fs::read_to_string(out.join("shop/REPORT.md")).expect("REPORT.md");
    let row = |dst: &str| -> &str {
        report
            .lines()
            .find(|l| l.starts_with('|') && l.contains(dst))
            .unwrap_or_else(|| panic!("a rule for {dst}:\n{report}"))
    };
    // The pods that called, not the workload's first pod standing in for all of them.
    let web_row = row("203.0.113.7");
    assert!(
        web_row.ends_with("| web-5c9f7d-p1, web-5c9f7d-p2 |"),
        "{web_row}"
    );
    // Twelve pods: five shown; of the other seven, the store named three and counted four.
    let api_row = row("198.51.100.9");
    assert!(
        api_row.ends_with(
            "| api-5c9f7d-p0, api-5c9f7d-p1, api-5c9f7d-p10, api-5c9f7d-p11, api-5c9f7d-p2 \
             and at least 7 more |"
        ),
        "{api_row}"
    );
}

/// A snapshot file of `snap`: one `List` of its objects, as `kubectl get -o json` writes.
fn snapshot_json(snap: &leash_records::Snapshot) -> String {
    fn items<T: serde::Serialize>(objects: &[T], out: &mut Vec<serde_json::Value>) {
        out.extend(
            objects
                .iter()
                .map(|o| serde_json::to_value(o).expect("objects serialize")),
        );
    }
    let mut all = Vec::new();
    items(&snap.namespaces, &mut all);
    items(&snap.nodes, &mut all);
    items(&snap.pods, &mut all);
    items(&snap.services, &mut all);
    items(&snap.endpoint_slices, &mut all);
    items(&snap.replica_sets, &mut all);
    items(&snap.deployments, &mut all);
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": all}).to_string()
}
