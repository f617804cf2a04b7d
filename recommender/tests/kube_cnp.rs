//! ClusterNetworkPolicies from the live API (the lab's fake API server, through kube-rs's real
//! client): listed and watched into the model that `serve` evaluates and that `audit --kube`
//! reads, invalid ones named; a cluster without the CRD (the API's `404`) works, logs it once
//! and picks up a CRD installed later; a `403` is a warning naming the permission.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leash::cluster::watch::{self, API_ACCESS, WatchOptions, load_once, watch_cluster};
use leash::state::ClusterState;
use leash_lab::fake_api::FakeApi;
use serde_json::{Value, json};
use support::cli::{assert_code, stderr, stdout};
use tokio::sync::watch as channel;

const GV: &str = "policy.networking.k8s.io/v1alpha2";
const CNPS: &str = "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/recommend/kubeadm")
        .join(name)
}

/// The kubeadm fixture's objects into the fake API server, each in its kind's collection.
fn load_cluster(api: &FakeApi) {
    let text = std::fs::read_to_string(fixture("cluster.yaml")).unwrap();
    let list: Value = serde_norway::from_str(&text).unwrap();
    for item in list["items"].as_array().unwrap() {
        let kind = item["kind"].as_str().unwrap().to_lowercase();
        let plural = match kind.strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{kind}s"),
        };
        let api_version = item["apiVersion"].as_str().unwrap();
        let collection = if api_version.contains('/') {
            format!("/apis/{api_version}/{plural}")
        } else {
            format!("/api/{api_version}/{plural}")
        };
        api.apply_json(&collection, item.clone());
    }
}

/// The shop's guardrail (as in `cnp_cli.rs`): the lab's 198.51.100.0/24 denied by the Admin
/// tier.
fn guard() -> Value {
    json!({"apiVersion": GV, "kind": "ClusterNetworkPolicy", "metadata": {"name": "guard"},
        "spec": {"tier": "Admin", "priority": 10,
            "subject": {"namespaces": {"matchLabels": {"team": "shop"}}},
            "egress": [{"name": "no-lab", "action": "Deny",
                        "to": [{"networks": ["198.51.100.0/24"]}]}]}})
}

fn baseline() -> Value {
    json!({"apiVersion": GV, "kind": "ClusterNetworkPolicy", "metadata": {"name": "baseline"},
        "spec": {"tier": "Baseline", "priority": 50, "subject": {"namespaces": {}},
            "egress": [{"action": "Deny", "to": [{"networks": ["203.0.113.0/24"]}]}]}})
}

fn cnp_names(s: &ClusterState) -> Vec<String> {
    s.cluster_policies
        .iter()
        .map(|c| c.name().to_owned())
        .collect()
}

fn fast(recheck_ms: u64) -> WatchOptions {
    WatchOptions {
        debounce: Duration::from_millis(100),
        cnp_recheck: Duration::from_millis(recheck_ms),
    }
}

/// Waits up to 20 s for a published state satisfying `cond`.
async fn state_where(
    rx: &mut channel::Receiver<Option<Arc<ClusterState>>>,
    what: &str,
    cond: impl Fn(&ClusterState) -> bool,
) -> Arc<ClusterState> {
    let outcome = {
        let wait = rx.wait_for(|s| s.as_deref().is_some_and(&cond));
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .map(|r| r.map(|state| state.clone()))
    };
    match outcome {
        Ok(Ok(state)) => state.unwrap(),
        Ok(Err(_)) => panic!("the watch task ended while waiting for: {what}"),
        Err(_) => panic!(
            "timed out waiting for: {what}; last: {:?}",
            rx.borrow()
                .as_ref()
                .map(|s| (s.generation, cnp_names(s), s.rejected.clone()))
        ),
    }
}

/// Every request stayed within the declared permissions.
fn assert_within_declared(api: &FakeApi) {
    for r in api.requests() {
        let a = r
            .access()
            .unwrap_or_else(|| panic!("outside the API: {r:?}"));
        assert!(
            API_ACCESS.iter().any(|d| d.group == a.group
                && d.resource == a.resource
                && d.verbs.contains(&a.verb)),
            "undeclared {a:?}"
        );
    }
}

fn cnp_lists(api: &FakeApi) -> usize {
    api.requests()
        .iter()
        .filter(|r| r.path == CNPS && !r.is_watch())
        .count()
}

/// What the code under test logs, captured (tests here run on one thread, so a thread's
/// default subscriber sees the watch tasks too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn lines_with(&self, needle: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }
}

#[tokio::test]
async fn listed_and_watched_policies_reach_the_model_and_invalid_ones_are_named() {
    let api = FakeApi::start().await.unwrap();
    api.serve_kind(GV, "clusternetworkpolicies", "ClusterNetworkPolicy", false);
    load_cluster(&api);
    api.apply_json(CNPS, guard());
    let (mut rx, task) = watch_cluster::<ClusterState>(api.client().unwrap(), fast(60_000));
    let s = state_where(&mut rx, "listed", |s| !s.cluster_policies.is_empty()).await;
    assert_eq!(cnp_names(&s), ["guard"]);
    assert!(s.rejected.is_empty(), "{:?}", s.rejected);

    // A watch event adds one: the model serve evaluates has it.
    api.apply_json(CNPS, baseline());
    let s = state_where(&mut rx, "added", |s| s.cluster_policies.len() == 2).await;
    assert_eq!(cnp_names(&s), ["baseline", "guard"]);

    // An invalid one (priority beyond the CRD's 1000) is named, not silently dropped.
    let mut broken = guard();
    broken["metadata"]["name"] = json!("broken");
    broken["spec"]["priority"] = json!(5000);
    api.apply_json(CNPS, broken);
    let s = state_where(&mut rx, "rejected", |s| !s.rejected.is_empty()).await;
    let rejected: Vec<(&str, &str)> = s
        .rejected
        .iter()
        .map(|r| (r.kind.as_str(), r.name.as_str()))
        .collect();
    assert_eq!(rejected, [("ClusterNetworkPolicy", "broken")]);
    assert!(
        s.rejected[0].reason.contains("priority"),
        "{:?}",
        s.rejected
    );
    assert_eq!(cnp_names(&s), ["baseline", "guard"]);

    // Deleted, it leaves the model.
    assert!(api.delete_json(CNPS, "", "guard"));
    let s = state_where(&mut rx, "deleted", |s| s.cluster_policies.len() == 1).await;
    assert_eq!(cnp_names(&s), ["baseline"]);
    assert_eq!(s.watch_errors, 0);

    // The one-shot loader reads them the same way.
    let once = load_once::<ClusterState>(api.client().unwrap())
        .await
        .unwrap();
    assert_eq!(cnp_names(&once), ["baseline"]);
    assert_eq!(once.rejected.len(), 1, "{:?}", once.rejected);
    assert_within_declared(&api);
    task.abort();
}

#[tokio::test]
async fn without_the_crd_the_model_works_logs_once_and_picks_up_a_later_install() {
    let (logs, _guard) = Logs::capture();
    let api = FakeApi::start().await.unwrap();
    api.unserve(GV);
    load_cluster(&api);
    // The fake speaks the real API: discovery and lists of the group answer 404.
    let client = api.client().unwrap();
    let err = client.list_api_group_resources(GV).await.unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"),
        "{err:?}"
    );

    let (mut rx, task) = watch_cluster::<ClusterState>(api.client().unwrap(), fast(150));
    let s = state_where(&mut rx, "ready without the CRD", |_| true).await;
    assert!(s.cluster_policies.is_empty());
    assert!(s.cluster.pod_by_name("shop", "payment-7d4-x2").is_some());
    assert_eq!(s.watch_errors, 0, "a missing CRD is no watch error");
    // Re-checked on the interval, logged once.
    for _ in 0..200 {
        if cnp_lists(&api) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(cnp_lists(&api) >= 4, "{} lists", cnp_lists(&api));
    let said = logs.lines_with("ClusterNetworkPolicies are not served");
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("INFO"), "{said:?}");
    assert!(
        logs.lines_with("WARN").is_empty(),
        "{:?}",
        logs.lines_with("WARN")
    );

    // The CRD is installed later: discovery names it, and the next check reads its objects.
    api.serve_kind(GV, "clusternetworkpolicies", "ClusterNetworkPolicy", false);
    let found = client.list_api_group_resources(GV).await.unwrap();
    assert_eq!(found.resources[0].name, "clusternetworkpolicies");
    assert!(!found.resources[0].namespaced);
    api.apply_json(CNPS, guard());
    let s = state_where(&mut rx, "picked up", |s| !s.cluster_policies.is_empty()).await;
    assert_eq!(cnp_names(&s), ["guard"]);

    // Uninstalled again: none, logged once more.
    api.unserve(GV);
    let s = state_where(&mut rx, "gone", |s| s.cluster_policies.is_empty()).await;
    assert!(s.cluster.pod_by_name("shop", "payment-7d4-x2").is_some());
    assert_eq!(
        logs.lines_with("ClusterNetworkPolicies are not served")
            .len(),
        2
    );

    // One-shot loading: none, no error.
    let once = load_once::<ClusterState>(api.client().unwrap())
        .await
        .unwrap();
    assert!(once.cluster_policies.is_empty());
    assert!(once.cluster.pod_by_name("shop", "payment-7d4-x2").is_some());
    task.abort();
}

#[tokio::test]
async fn forbidden_is_a_warning_naming_the_permission() {
    let (logs, _guard) = Logs::capture();
    let api = FakeApi::start().await.unwrap();
    load_cluster(&api);
    api.apply_json(CNPS, guard());
    api.fail_next("list", Some(CNPS), 403, usize::MAX);
    let (mut rx, task) = watch_cluster::<ClusterState>(api.client().unwrap(), fast(150));
    let s = state_where(&mut rx, "ready though forbidden", |_| true).await;
    assert!(s.cluster_policies.is_empty());
    assert!(s.cluster.pod_by_name("shop", "payment-7d4-x2").is_some());
    let warned = logs.lines_with("forbidden");
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("WARN") && warned[0].contains(watch::cnp::PERMISSION),
        "{warned:?}"
    );
    assert!(watch::cnp::PERMISSION.contains("clusternetworkpolicies.policy.networking.k8s.io"));

    // Granted: the next check reads them.
    api.clear_failures();
    let s = state_where(&mut rx, "granted", |s| !s.cluster_policies.is_empty()).await;
    assert_eq!(cnp_names(&s), ["guard"]);
    task.abort();

    api.fail_next("list", Some(CNPS), 403, 1);
    let once = load_once::<ClusterState>(api.client().unwrap())
        .await
        .unwrap();
    assert!(once.cluster_policies.is_empty());
    assert_eq!(logs.lines_with("forbidden").len(), 2);
}

fn audit_kube(kubeconfig: &Path) -> Output {
    let flows = fixture("flows.jsonl");
    Command::new(env!("CARGO_BIN_EXE_leash"))
        .args(["audit", "--kube", "--kubeconfig"])
        .arg(kubeconfig)
        .arg("--flows")
        .arg(flows)
        .args(["--format", "json"])
        .output()
        .unwrap()
}

/// The JSON line of the flow to `dst:port`.
fn line(out: &str, dst: &str, port: u16) -> String {
    let needle = format!("\"dst\":\"{dst}\",\"dst_port\":{port},");
    out.lines()
        .find(|l| l.contains(&needle))
        .unwrap_or_else(|| panic!("no flow to {dst}:{port} in\n{out}"))
        .to_owned()
}

#[test]
fn audit_kube_evaluates_the_clusters_policies_and_works_without_the_crd() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(FakeApi::start()).unwrap();
    load_cluster(&api);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();

    // No CRD: the audit runs, allowing the lab flow, and says so once.
    api.unserve(GV);
    let o = audit_kube(&kubeconfig);
    assert_code(&o, 0);
    let lab = line(&stdout(&o), "198.51.100.7", 9000);
    assert!(lab.contains("\"verdict\":\"allow\""), "{lab}");
    assert_eq!(
        stderr(&o)
            .matches("ClusterNetworkPolicies are not served")
            .count(),
        1,
        "{}",
        stderr(&o)
    );

    // Installed, with the guard: the Admin Deny decides.
    api.serve_kind(GV, "clusternetworkpolicies", "ClusterNetworkPolicy", false);
    api.apply_json(CNPS, guard());
    let o = audit_kube(&kubeconfig);
    assert_code(&o, 0);
    let lab = line(&stdout(&o), "198.51.100.7", 9000);
    assert!(
        lab.contains("\"verdict\":\"deny\"") && lab.contains("ClusterNetworkPolicy/guard"),
        "{lab}"
    );
    assert!(!stderr(&o).contains("not served"), "{}", stderr(&o));

    // Forbidden: a warning naming the permission, the audit still runs.
    api.fail_next("list", Some(CNPS), 403, 1);
    let o = audit_kube(&kubeconfig);
    assert_code(&o, 0);
    assert!(
        stderr(&o).contains(watch::cnp::PERMISSION),
        "{}",
        stderr(&o)
    );
    let lab = line(&stdout(&o), "198.51.100.7", 9000);
    assert!(lab.contains("\"verdict\":\"allow\""), "{lab}");
}
