//! The closed loop of `leash serve --pr-repo`, end to end: a real `leash serve` process over a
//! snapshot and a store, a real bare git repository holding a first proposal (made with
//! `leash recommend -o`), and the GitHub stand-in over loopback HTTP. Flows written into the
//! store between checks make an unexpected-egress alert recur; after `--pr-after` occurrences
//! a pull request is opened, saying what triggered it, and alerts link it. A workload newly
//! `ready` triggers one too; the interval counts from the last run; a failing run is counted
//! and serve goes on.

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
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use leash::store::FlowObservation;
use leash_lab::forge::github::GitHub;
use leash_lab::forge::random_token;
use leash_lab::git_server::{self, create_bare_repo};
use support::http::{self, get};
use support::serve_process::ServeProcess;
use support::snapshots;
use support::store_flows::{self, commit};

/// The repository at the stand-in.
const PROJECT: &str = "acme/policies";

/// shop/payment, with no policy yet: the base's proposal is made from its first flows; bank/db,
/// not yet observed, which becomes `ready` when its flows arrive.
fn snapshot() -> String {
    snapshots::list(&[
        snapshots::namespace("shop"),
        snapshots::deployment("shop", "payment", "payment-x2", "198.51.100.10"),
        snapshots::namespace("bank"),
        snapshots::deployment("bank", "db", "db-y7", "198.51.100.20"),
    ])
}

/// The destination the base's proposal allows.
const KNOWN: (&str, u16) = ("203.0.113.50", 443);
/// The new destination: denied by the applied policies, the alert that recurs.
const NEW: (&str, u16) = ("203.0.113.60", 8443);
/// What the pull request says triggered it (with the occurrences appended).
const TRIGGER: &str =
    "unexpected egress from Deployment/payment in shop to 203.0.113.60:8443/TCP, seen in";

fn flow(dst: (&str, u16), at: DateTime<Utc>) -> FlowObservation {
    flow_of("shop", "payment", dst, at)
}

fn flow_of(ns: &str, name: &str, (dst, port): (&str, u16), at: DateTime<Utc>) -> FlowObservation {
    store_flows::deployment_flow(ns, name, dst, port, &[], at)
}

/// Every file under `dir`, relative, with its text, sorted.
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

/// The world of one test: a store whose first flows made the base's proposal, a snapshot
/// whose applied policies are that proposal, the repository holding it on `main` under
/// `policies/`, and the GitHub stand-in tied to it.
struct Lab {
    dir: tempfile::TempDir,
    db: PathBuf,
    repo: PathBuf,
    github: GitHub,
    token: String,
    token_file: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("store");
        std::fs::create_dir_all(&store_dir).unwrap();
        let db = store_dir.join("leash.db");
        commit(
            &db,
            1,
            &[flow(KNOWN, Utc::now() - chrono::Duration::hours(1))],
        );
        let bare_snapshot = dir.path().join("cluster-without-policies.yaml");
        std::fs::write(&bare_snapshot, snapshot()).unwrap();
        let out = dir.path().join("first-proposal");
        let status = Command::new(env!("CARGO_BIN_EXE_leash"))
            .arg("recommend")
            .arg("--cluster")
            .arg(&bare_snapshot)
            .arg("--store")
            .arg(&db)
            .arg("-o")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "leash recommend -o: {status}");

        // The cluster applies the base's proposal.
        let (policies, _) = leash::render::outdir::read_previous(&out).unwrap();
        assert!(!policies.is_empty(), "the first proposal has policies");
        let mut snapshot = snapshot();
        for p in &policies {
            snapshot.push_str(&format!("- {}\n", serde_json::to_string(p).unwrap()));
        }
        std::fs::write(dir.path().join("cluster.yaml"), snapshot).unwrap();

        let mut files: Vec<(String, String)> = files_under(&out)
            .into_iter()
            .map(|(p, t)| (format!("policies/{p}"), t))
            .collect();
        files.push(("README.md".into(), "Our policies.\n".into()));
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, t)| (p.as_str(), t.as_str()))
            .collect();
        let repo = create_bare_repo(&dir.path().join("git"), "policies.git", &files).unwrap();

        let token = random_token("ghp_");
        let github = GitHub::builder(&token)
            .repo_with_git(PROJECT, &repo)
            .start()
            .unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{token}\n")).unwrap();
        Lab {
            dir,
            db,
            repo,
            github,
            token,
            token_file,
        }
    }

    /// The `--pr-` flags for the repository and the stand-in, and `--pr-after`.
    fn pr_flags(&self, after: u64) -> Vec<String> {
        vec![
            "--pr-repo".into(),
            self.repo.to_string_lossy().into_owned(),
            "--pr-path".into(),
            "policies".into(),
            "--pr-provider".into(),
            "github".into(),
            "--pr-api-url".into(),
            self.github.api_url(),
            "--pr-project".into(),
            PROJECT.into(),
            "--pr-token-file".into(),
            self.token_file.to_string_lossy().into_owned(),
            "--pr-after".into(),
            after.to_string(),
        ]
    }

    fn branch_tip(&self, branch: &str) -> Option<String> {
        git_server::rev_parse(&self.repo, branch).unwrap()
    }
}

/// `leash serve` over the lab's snapshot and store, checking every second.
fn serve(lab: &Lab, extra: &[String]) -> ServeProcess {
    ServeProcess::start(
        lab.dir.path(),
        &lab.db,
        &lab.dir.path().join("cluster.yaml"),
        "1s",
        extra,
    )
}

fn alerts(server: &ServeProcess) -> serde_json::Value {
    server.get_json("/v1/alerts")
}

/// The occurrences of the alert of `dst`, 0 when there is none.
fn occurrences(server: &ServeProcess, (dst, port): (&str, u16)) -> u64 {
    alerts(server)
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["dst"] == dst && a["port"] == port)
        .and_then(|a| a["occurrences"].as_u64())
        .unwrap_or(0)
}

fn wait_for(what: &str, check: impl FnMut() -> bool) {
    http::wait_for(
        what,
        Duration::from_secs(60),
        Duration::from_millis(100),
        check,
    );
}

/// Writes new events of the new destination and waits until a check found them: the alert's
/// occurrences reach `n`.
fn recur(lab: &Lab, server: &ServeProcess, seq: u64, n: u64) {
    commit(&lab.db, seq, &[flow(NEW, Utc::now())]);
    wait_for(&format!("occurrence {n}"), || occurrences(server, NEW) >= n);
    assert_eq!(occurrences(server, NEW), n, "one occurrence per check");
}

/// The markdown body without its escapes, to look for plain text in it.
fn unescaped(body: &str) -> String {
    body.replace(['\\', '\u{200B}'], "")
}

/// The clone directories under `repos` (`<hash>`, besides their lock files).
fn clones(repos: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(repos) else {
        return Vec::new();
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect()
}

/// Lock down, alert, recur, pull request: none before `--pr-after` occurrences; then one on
/// `leash/shop` whose body and commit name the trigger; metrics and alerts show it; the same
/// key recurring again triggers nothing; the clone lives under `--state-dir` and nothing else
/// is written beside the store.
#[test]
fn a_recurring_alert_opens_one_pull_request_that_names_its_trigger() {
    let lab = Lab::new();
    let state_dir = lab.dir.path().join("state");
    let mut flags = lab.pr_flags(3);
    flags.extend([
        "--pr-interval".into(),
        "1h".into(),
        "--state-dir".into(),
        state_dir.to_string_lossy().into_owned(),
    ]);
    let mut server = serve(&lab, &flags);
    let main_before = lab.branch_tip("main").unwrap();

    // Two occurrences: below --pr-after, no run, no pull request, no API call.
    recur(&lab, &server, 2, 1);
    recur(&lab, &server, 3, 2);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(lab.github.pulls(PROJECT).is_empty());
    assert!(
        lab.github.requests().is_empty(),
        "{:?}",
        lab.github.requests()
    );
    let runs: f64 = ["pushed", "unchanged", "refused", "error"]
        .iter()
        .filter_map(|r| server.metric(&format!("leash_pr_runs_total{{result=\"{r}\"}}")))
        .sum();
    assert_eq!(
        runs,
        0.0,
        "no run at start nor below --pr-after:\n{}",
        server.metrics()
    );
    assert_eq!(lab.branch_tip("leash/shop"), None);

    // The third: a run, one pull request from leash/shop to main.
    recur(&lab, &server, 4, 3);
    wait_for("the pull request", || !lab.github.pulls(PROJECT).is_empty());
    let pulls = lab.github.pulls(PROJECT);
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    let pr = &pulls[0];
    assert_eq!((pr.head.as_str(), pr.base.as_str()), ("leash/shop", "main"));
    assert_eq!(pr.state, "open");
    let body = pr.body.clone().unwrap();
    assert!(
        unescaped(&body).contains(&format!("## Trigger\n\n{TRIGGER} 3 checks")),
        "the body names the trigger:\n{body}"
    );
    assert!(
        body.contains("203"),
        "the diff names the destination:\n{body}"
    );
    let tip = lab.branch_tip("leash/shop").unwrap();
    let message = git_server::git(&lab.repo, &["log", "-1", "--format=%B", &tip]).unwrap();
    assert!(
        message.contains(&format!("{TRIGGER} 3 checks")),
        "the commit names the trigger:\n{message}"
    );
    let policy = git_server::file_at(&lab.repo, &tip, "policies/shop/payment-egress.yaml")
        .unwrap()
        .unwrap_or_else(|| panic!("{:?}", git_server::files_at(&lab.repo, &tip).unwrap()));
    assert!(policy.contains("203.0.113.60/32"), "{policy}");
    assert!(policy.contains("8443"), "{policy}");
    assert_eq!(
        lab.branch_tip("main").unwrap(),
        main_before,
        "main is never pushed to"
    );

    // /metrics.
    wait_for("the run's metrics", || {
        server.metric("leash_pr_runs_total{result=\"pushed\"}") == Some(1.0)
    });
    assert_eq!(server.metric("leash_pr_open"), Some(1.0));
    let last = server
        .metric("leash_pr_last_success_timestamp_seconds")
        .unwrap();
    let now = Utc::now().timestamp() as f64;
    assert!(last > now - 120.0 && last <= now + 1.0, "{last} vs {now}");

    // The alert links the pull request once it recurs after the run.
    let url = format!("{}/{PROJECT}/pull/{}", lab.github.base_url(), pr.number);
    recur(&lab, &server, 5, 4);
    let alerts = alerts(&server);
    let alert = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["dst"] == NEW.0)
        .unwrap();
    assert_eq!(alert["pull_request"], url.as_str(), "{alerts}");

    // The same key keeps recurring: no new trigger, no run, no API call.
    let requests = lab.github.requests().len();
    recur(&lab, &server, 6, 5);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(lab.github.requests().len(), requests, "no API call");
    assert_eq!(lab.github.pulls(PROJECT).len(), 1);
    assert_eq!(lab.branch_tip("leash/shop").unwrap(), tip);
    assert_eq!(
        server.metric("leash_pr_runs_total{result=\"unchanged\"}"),
        Some(0.0),
        "no run: {}",
        server.metrics()
    );
    assert_eq!(
        server.metric("leash_pr_runs_total{result=\"pushed\"}"),
        Some(1.0)
    );

    // The clone is under --state-dir/repos; beside the store, only the store's files.
    let clones = clones(&state_dir.join("repos"));
    assert_eq!(clones.len(), 1, "{clones:?}");
    assert!(clones[0].join(".git").is_dir(), "{clones:?}");
    let mut beside: Vec<String> = std::fs::read_dir(lab.db.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("leash.db"))
        .collect();
    beside.sort();
    assert!(beside.is_empty(), "written beside the store: {beside:?}");

    let log = server.log();
    assert!(!log.contains(&lab.token), "the token is never logged");
    for dir in [&state_dir, &lab.repo] {
        assert_eq!(
            git_server::find_text(dir, &lab.token).unwrap(),
            Vec::<String>::new(),
            "the token is nowhere in {}",
            dir.display()
        );
    }
    server.assert_running();
}

/// Without `--state-dir`, the clone is under the store's directory; a periodic run comes one
/// interval after start, not at start; a run with nothing new (the branch already holds the
/// proposal) makes no commit and no API call and counts `unchanged`; after a restart, the
/// interval counts from the last run.
#[test]
fn the_periodic_run_waits_an_interval_and_a_run_with_nothing_new_calls_no_api() {
    let lab = Lab::new();
    // The new destination is already in the store, so the first run proposes it.
    commit(&lab.db, 2, &[flow(NEW, Utc::now())]);
    let mut flags = lab.pr_flags(100);
    flags.extend(["--pr-interval".into(), "4s".into()]);
    let started = Instant::now();
    let server = serve(&lab, &flags);
    std::thread::sleep(Duration::from_millis(1500));
    if started.elapsed() < Duration::from_millis(3500) {
        assert!(
            lab.github.requests().is_empty() && lab.branch_tip("leash/shop").is_none(),
            "no run at start"
        );
    }
    wait_for("the periodic run", || {
        server.metric("leash_pr_runs_total{result=\"pushed\"}") == Some(1.0)
    });
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "the first periodic run is one interval after start"
    );
    let pulls = lab.github.pulls(PROJECT);
    assert_eq!(pulls.len(), 1);
    assert!(
        unescaped(pulls[0].body.as_deref().unwrap())
            .contains("## Trigger\n\nthe periodic run (every 4s)"),
        "{:?}",
        pulls[0].body
    );
    let tip = lab.branch_tip("leash/shop").unwrap();
    let requests = lab.github.requests().len();

    // The next run: the branch holds these policies already.
    wait_for("the second periodic run", || {
        server.metric("leash_pr_runs_total{result=\"unchanged\"}") == Some(1.0)
    });
    assert_eq!(lab.github.requests().len(), requests, "no API call");
    assert_eq!(lab.branch_tip("leash/shop").unwrap(), tip, "no commit");
    assert_eq!(lab.github.pulls(PROJECT)[0].updates, 0);

    let clones = clones(&lab.db.parent().unwrap().join("repos"));
    assert_eq!(clones.len(), 1, "the clone is beside the store: {clones:?}");
    assert!(clones[0].join(".git").is_dir());

    // A restart more than an interval after the last run runs at once: restarting more often
    // than --pr-interval does not postpone the periodic run forever.
    drop(server);
    std::thread::sleep(Duration::from_secs(5));
    let mut flags = lab.pr_flags(100);
    // Due 16 s after the last run, about 11 s after this start; an interval after start
    // would be 16 s.
    flags.extend(["--pr-interval".into(), "16s".into()]);
    let started = Instant::now();
    let server = serve(&lab, &flags);
    wait_for("the run after the restart", || {
        server.metric("leash_pr_runs_total{result=\"unchanged\"}") == Some(1.0)
    });
    assert!(
        started.elapsed() < Duration::from_secs(14),
        "due since the last run, not an interval after start: {:?}",
        started.elapsed()
    );
    assert_eq!(lab.github.requests().len(), requests, "no API call");
}

/// A run the provider refuses (a wrong token: 401) counts as an error; serve keeps running
/// and checking; the token is in no log line.
#[test]
fn a_failing_run_counts_an_error_and_serve_keeps_running() {
    let lab = Lab::new();
    let wrong = random_token("ghp_");
    std::fs::write(&lab.token_file, format!("{wrong}\n")).unwrap();
    let mut flags = lab.pr_flags(1);
    flags.extend(["--pr-interval".into(), "1h".into()]);
    let mut server = serve(&lab, &flags);
    recur(&lab, &server, 2, 1);
    wait_for("the failed run", || {
        server.metric("leash_pr_runs_total{result=\"error\"}") == Some(1.0)
    });
    let requests = lab.github.requests();
    assert!(!requests.is_empty());
    assert!(lab.github.pulls(PROJECT).is_empty());
    assert_eq!(server.metric("leash_pr_open"), Some(0.0));
    assert_eq!(
        server.metric("leash_pr_last_success_timestamp_seconds"),
        Some(0.0)
    );

    // Still serving and checking.
    recur(&lab, &server, 3, 2);
    server.assert_running();
    assert!(matches!(get(server.http, "/readyz"), Ok((200, _))));
    let log = server.log();
    assert!(log.contains("pull-request run failed"), "{log}");
    assert!(!log.contains(&wrong), "the token is never logged:\n{log}");
    assert!(!log.contains(&lab.token));
}

/// A workload that becomes `ready` on the rollout board (bank/db, observed for longer than
/// `--min-observation` once its first flows arrive) triggers a run: its pull request opens on
/// `leash/bank` and names it.
#[test]
fn a_workload_newly_ready_opens_its_pull_request() {
    let lab = Lab::new();
    let mut flags = lab.pr_flags(100);
    flags.extend([
        "--pr-interval".into(),
        "1h".into(),
        "--min-observation".into(),
        "30m".into(),
    ]);
    let server = serve(&lab, &flags);
    wait_for("the first board", || {
        get(server.ui, "/v1/rollout").is_ok_and(|(status, _)| status == 200)
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(lab.github.requests().is_empty());

    let first_seen = Utc::now() - chrono::Duration::hours(1);
    let mut db = flow_of("bank", "db", ("203.0.113.70", 5432), first_seen);
    db.last_seen = Utc::now();
    commit(&lab.db, 2, &[db]);
    wait_for("the pull request", || !lab.github.pulls(PROJECT).is_empty());
    let pulls = lab.github.pulls(PROJECT);
    assert_eq!(pulls.len(), 1, "{pulls:?}");
    assert_eq!(pulls[0].head, "leash/bank");
    let body = pulls[0].body.clone().unwrap();
    assert!(
        unescaped(&body).contains("## Trigger\n\nnewly ready: Deployment/db in bank"),
        "{body}"
    );
    wait_for("the run's metric", || {
        server.metric("leash_pr_runs_total{result=\"pushed\"}") == Some(1.0)
    });
    assert_eq!(lab.branch_tip("leash/shop"), None, "shop is unchanged");
}

/// web's DNS answer for `name` at `at`, as an agent sends it.
fn dns_answer(name: &str, address: &str, at: DateTime<Utc>) -> leash_records::DnsRecord {
    leash_records::DnsRecord {
        node: "n1".into(),
        pod: Some(leash_records::PodRef {
            uid: String::new(),
            namespace: "shop".into(),
            name: "payment-x2".into(),
        }),
        cgroup: "/kubepods.slice/x".into(),
        server: "10.96.0.10".parse().unwrap(),
        query: format!("{name}."),
        qtype: "A".into(),
        rcode: "NOERROR".into(),
        answers: vec![leash_records::DnsAnswer {
            name: format!("{name}."),
            rtype: "A".into(),
            data: address.into(),
            ttl: 60,
        }],
        time: at,
    }
}

/// Sends one batch of DNS answers to serve's plaintext gRPC ingest, as an agent does, and
/// waits for its ack.
fn push_dns(server: &ServeProcess, seq: u64, dns: &[leash_records::DnsRecord]) {
    use leash_records::wire::{self, v1};
    let batch = wire::batch_to_wire(
        v1::BatchId {
            node: "n1".into(),
            boot_id: "boot-1".into(),
            seq,
        },
        &[],
        dns,
    )
    .unwrap();
    let grpc = server.grpc;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ack = rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = v1::ingest_client::IngestClient::new(channel);
        let mut acks = client
            .push(tokio_stream::iter(vec![batch]))
            .await
            .unwrap()
            .into_inner();
        acks.message().await.unwrap()
    });
    assert!(ack.is_some_and(|a| !a.duplicate), "the batch is stored");
}

/// A DNS answer moving the known destination's name to an address the applied policy does
/// not allow triggers a run at once, whatever `--pr-after`, and the run names it. No flow to
/// the new address exists.
#[test]
fn a_dns_drift_triggers_a_run_at_once() {
    let lab = Lab::new();
    let mut flags = lab.pr_flags(100);
    flags.extend(["--pr-interval".into(), "1h".into()]);
    let server = serve(&lab, &flags);
    let runs = |server: &ServeProcess| -> f64 {
        ["pushed", "unchanged", "refused", "error"]
            .iter()
            .filter_map(|r| server.metric(&format!("leash_pr_runs_total{{result=\"{r}\"}}")))
            .sum()
    };
    let t = Utc::now() - chrono::Duration::minutes(2);
    push_dns(&server, 1, &[dns_answer("api.stripe.test", KNOWN.0, t)]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(runs(&server), 0.0, "the known address triggers nothing");
    assert_eq!(server.metric("leash_dns_drift_total"), Some(0.0));

    push_dns(
        &server,
        2,
        &[dns_answer(
            "api.stripe.test",
            "203.0.113.61",
            t + chrono::Duration::minutes(1),
        )],
    );
    wait_for("the drift", || {
        server.metric("leash_dns_drift_total") == Some(1.0)
    });
    wait_for("the run the drift triggered", || runs(&server) >= 1.0);
    let log = server.log();
    assert!(
        log.contains(
            "DNS drift for Deployment/payment in shop: api.stripe.test moved to 203.0.113.61:443/TCP"
        ),
        "the run names its trigger:\n{log}"
    );
    // The incremental pull request follows the name: the rule now allows the new address
    // (the name's address history, `recommend::published`), before any flow to it.
    wait_for("the pushed proposal", || {
        server.metric("leash_pr_runs_total{result=\"pushed\"}") >= Some(1.0)
    });
    let tip = lab.branch_tip("leash/shop").unwrap();
    let policy = git_server::file_at(&lab.repo, &tip, "policies/shop/payment-egress.yaml")
        .unwrap()
        .unwrap_or_else(|| panic!("{:?}", git_server::files_at(&lab.repo, &tip).unwrap()));
    assert!(policy.contains("203.0.113.61/32"), "{policy}");
    assert!(policy.contains(&format!("{}/32", KNOWN.0)), "{policy}");
}

/// `--pr-guardrails`: each run proposes the cluster guardrails first, as their own pull
/// request on `leash/guardrails` under `policies/cluster/`; the namespace's pull request
/// says it is the second stage; the second run changes nothing.
#[test]
fn with_pr_guardrails_the_guardrails_pull_request_comes_first() {
    let lab = Lab::new();
    commit(&lab.db, 2, &[flow(NEW, Utc::now())]);
    let mut flags = lab.pr_flags(100);
    flags.extend([
        "--pr-interval".into(),
        "2s".into(),
        "--pr-guardrails".into(),
        "--pr-protected".into(),
        "198.51.100.128/25".into(),
    ]);
    let server = serve(&lab, &flags);
    wait_for("the periodic run", || {
        server.metric("leash_pr_runs_total{result=\"pushed\"}") == Some(1.0)
    });
    let pulls = lab.github.pulls(PROJECT);
    let heads: Vec<(u64, &str)> = pulls.iter().map(|p| (p.number, p.head.as_str())).collect();
    assert_eq!(heads, [(1, "leash/guardrails"), (2, "leash/shop")]);
    let guardrails = pulls[0].body.as_deref().unwrap();
    assert!(guardrails.contains("## Rollout order"), "{guardrails}");
    assert!(
        guardrails.contains("--guardrails --protected 198.51.100.128/25"),
        "{guardrails}"
    );
    assert!(
        pulls[1]
            .body
            .as_deref()
            .unwrap()
            .contains(leash::pr::body::STAGE_TWO),
        "{:?}",
        pulls[1].body
    );
    let files = git_server::files_at(&lab.repo, "leash/guardrails").unwrap();
    assert!(
        files.contains(&"policies/cluster/guardrails-protected.yaml".to_owned())
            && files.contains(&"policies/cluster/REPORT.md".to_owned()),
        "{files:?}"
    );
    let tip = lab.branch_tip("leash/guardrails").unwrap();
    wait_for("the second run", || {
        server.metric("leash_pr_runs_total{result=\"unchanged\"}") == Some(1.0)
    });
    assert_eq!(lab.branch_tip("leash/guardrails").unwrap(), tip);
    assert_eq!(lab.github.pulls(PROJECT)[0].updates, 0);
}
