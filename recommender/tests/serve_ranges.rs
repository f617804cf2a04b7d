//! `leash serve --ip-ranges` with the pull-request loop, end to end: a real `leash serve`
//! process over a snapshot and a store, and a real bare git repository holding the first
//! proposal. The range file changes while serve runs: a malformed version is logged, naming
//! the file and the entry, and changes nothing; a new range that covers the workload's named
//! destination triggers a run that pushes the proposal using it, saying what triggered it.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use leash_lab::git_server::{self, create_bare_repo};
use support::http;
use support::serve_process::ServeProcess;
use support::snapshots;
use support::store_flows::{commit, deployment_flow};

fn snapshot() -> String {
    snapshots::list(&[
        snapshots::namespace("shop"),
        snapshots::deployment("shop", "payment", "payment-x2", "198.51.100.10"),
    ])
}

/// Every file under `dir`, relative, with its text.
fn files_under(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn wait_for(what: &str, check: impl FnMut() -> bool) {
    http::wait_for(
        what,
        Duration::from_secs(60),
        Duration::from_millis(100),
        check,
    );
}

/// The store holds payment's flow to `api.pay.test` (203.0.113.50:443); the repository's
/// `main` holds the proposal made without ranges (a /32), which the cluster applies.
fn lab(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let db = dir.join("store/leash.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let at = Utc::now() - chrono::Duration::hours(1);
    commit(
        &db,
        1,
        &[deployment_flow(
            "shop",
            "payment",
            "203.0.113.50",
            443,
            &["api.pay.test"],
            at,
        )],
    );
    let bare = dir.join("cluster-without-policies.yaml");
    std::fs::write(&bare, snapshot()).unwrap();
    let out = dir.join("first-proposal");
    let status = Command::new(env!("CARGO_BIN_EXE_leash"))
        .arg("recommend")
        .arg("--cluster")
        .arg(&bare)
        .arg("--store")
        .arg(&db)
        .arg("-o")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "leash recommend -o: {status}");
    let (policies, _) = leash::render::outdir::read_previous(&out).unwrap();
    let mut cluster = snapshot();
    for p in &policies {
        cluster.push_str(&format!("- {}\n", serde_json::to_string(p).unwrap()));
    }
    let cluster_file = dir.join("cluster.yaml");
    std::fs::write(&cluster_file, cluster).unwrap();
    let files: Vec<(String, String)> = files_under(&out)
        .into_iter()
        .map(|(p, t)| (format!("policies/{p}"), t))
        .collect();
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    let repo = create_bare_repo(&dir.join("git"), "policies.git", &files).unwrap();
    (db, cluster_file, repo)
}

#[test]
fn changed_ranges_become_a_pull_request() {
    let dir = tempfile::tempdir().unwrap();
    let (db, cluster, repo) = lab(dir.path());
    let ranges = dir.path().join("saas.yaml");
    std::fs::write(&ranges, "payments:\n  - 2001:db8:5000::/48\n").unwrap();
    let flags: Vec<String> = vec![
        "--pr-repo".into(),
        repo.to_string_lossy().into_owned(),
        "--pr-path".into(),
        "policies".into(),
        "--pr-provider".into(),
        "none".into(),
        "--pr-interval".into(),
        "1h".into(),
        "--ip-ranges".into(),
        ranges.to_string_lossy().into_owned(),
        "--ip-ranges-poll".into(),
        "200ms".into(),
    ];
    let mut server = ServeProcess::start(dir.path(), &db, &cluster, "1s", &flags);
    let tip = || git_server::rev_parse(&repo, "leash/shop").unwrap();

    // Nothing changed: no run.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(tip(), None, "{}", server.log());

    // A malformed version: logged with the file and entry; the previous ranges stay.
    std::fs::write(&ranges, "# broken\npayments:\n  - 203.0.113.0/33\n").unwrap();
    let named = |l: &&str| {
        l.contains("saas.yaml")
            && l.contains("payments")
            && l.contains("[0]: ")
            && l.contains("203.0.113.0/33")
            && l.contains("is not a CIDR")
            && l.contains("the previous ranges stay")
    };
    wait_for("the malformed file's log line", || {
        server.log().lines().any(|l| named(&l))
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(tip(), None, "a malformed file triggers nothing");

    // The provider's list now covers the destination: a run pushes the proposal that uses it.
    std::fs::write(
        &ranges,
        "# the vendor's new list\npayments:\n  - 203.0.113.0/24\n  - 2001:db8:5000::/48\n",
    )
    .unwrap();
    wait_for("the pushed branch", || tip().is_some());
    let tip = tip().unwrap();
    let policy = git_server::file_at(&repo, &tip, "policies/shop/payment-egress.yaml")
        .unwrap()
        .unwrap();
    assert!(policy.contains("cidr: 203.0.113.0/24"), "{policy}");
    assert!(!policy.contains("203.0.113.50/32"), "{policy}");
    let report = git_server::file_at(&repo, &tip, "policies/shop/REPORT.md")
        .unwrap()
        .unwrap();
    assert!(
        report.contains("payments, published range, covers 1 observed address"),
        "{report}"
    );
    let message = git_server::git(&repo, &["log", "-1", "--format=%B", &tip]).unwrap();
    assert!(
        message.contains("the published ranges changed"),
        "the commit names the trigger:\n{message}"
    );
    server.assert_running();
}
