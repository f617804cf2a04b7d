//! Two `leash serve --kube` processes against the lab's fake API server, sharing the default
//! Lease: exactly one leads (`leash_leader`) and runs the alert checks; both serve ingest
//! health and the read API; when the leader is killed the other takes over once the lease
//! expires, and the Lease counts the transition.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::http::{get, wait_for};
use support::serve_process::ServeProcess;

const LEASES: &str = "/apis/coordination.k8s.io/v1/leases";

fn leading(s: &ServeProcess) -> bool {
    s.metric("leash_leader") == Some(1.0)
}

fn checks(s: &ServeProcess) -> f64 {
    s.metric("leash_egress_checks_total").unwrap_or(0.0)
}

/// Waits until exactly one of `a` and `b` leads; returns (leader, follower).
fn elect(a: ServeProcess, b: ServeProcess) -> (ServeProcess, ServeProcess) {
    wait_for(
        "one leader",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || leading(&a) || leading(&b),
    );
    assert!(
        !(leading(&a) && leading(&b)),
        "two leaders:\n{}\n{}",
        a.log(),
        b.log()
    );
    if leading(&a) { (a, b) } else { (b, a) }
}

/// Waits until `s` has run at least `n` alert checks.
fn wait_checks(what: &str, s: &ServeProcess, n: f64) {
    wait_for(
        what,
        Duration::from_secs(10),
        Duration::from_millis(200),
        || checks(s) >= n,
    );
}

#[test]
fn two_replicas_elect_one_leader_and_the_other_takes_over_when_it_dies() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(leash_lab::fake_api::FakeApi::start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let source = ["--kube", "--kubeconfig", kubeconfig.to_str().unwrap()];
    let none: [&str; 0] = [];
    let start = |name: &str| {
        ServeProcess::start_from(
            dir.path(),
            &dir.path().join(format!("{name}.db")),
            &source,
            "1s",
            &none,
        )
    };
    let (leader, mut follower) = elect(start("a"), start("b"));
    let lease = api
        .get_json(LEASES, "leash-system", "leash-serve")
        .expect("the lease was created");
    assert_eq!(lease["spec"]["leaseTransitions"], 0);
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
    let first_holder = lease["spec"]["holderIdentity"].as_str().unwrap().to_owned();
    // Only the leader runs the periodic checks; both serve health and the read API.
    wait_checks("the leader's checks", &leader, 2.0);
    assert_eq!(checks(&follower), 0.0, "the follower runs no checks");
    for s in [&leader, &follower] {
        assert_eq!(get(s.http, "/readyz").unwrap().0, 200);
        assert_eq!(get(s.ui, "/v1/workloads").unwrap().0, 200);
    }

    // The leader dies without releasing the lease.
    drop(leader);
    let died = Instant::now();
    wait_for(
        "the takeover",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            follower.assert_running();
            leading(&follower)
        },
    );
    // Not before the lease had expired (15 s without a renewal, minus one retry period).
    assert!(
        died.elapsed() >= Duration::from_secs(13),
        "{:?}",
        died.elapsed()
    );
    let lease = api.get_json(LEASES, "leash-system", "leash-serve").unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert_ne!(
        lease["spec"]["holderIdentity"].as_str().unwrap(),
        first_holder
    );
    wait_checks("the new leader's checks", &follower, 1.0);
    assert!(
        follower.log().contains("leader election: leading"),
        "{}",
        follower.log()
    );
}

/// Two replicas sharing one PostgreSQL store (as `deploy/overlays/ha` runs them): one leads;
/// stopped gracefully (SIGTERM, as in a rolling update), it releases the Lease and the other
/// leads at its next try, long before the lease would have expired; both read the one store.
#[test]
fn on_postgres_a_leader_stopped_gracefully_hands_the_lease_over_at_once() {
    let Some(pg) = support::postgres::postgres_or_skip() else {
        return;
    };
    let url = pg.create_database("ha");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let api = rt.block_on(leash_lab::fake_api::FakeApi::start()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let source = ["--kube", "--kubeconfig", kubeconfig.to_str().unwrap()];
    let none: [&str; 0] = [];
    let start = || ServeProcess::start_from(dir.path(), Path::new(&url), &source, "1s", &none);
    let (mut leader, mut follower) = elect(start(), start());
    wait_checks("the leader's checks", &leader, 1.0);
    // Both answer the read API from the shared store.
    assert_eq!(
        leader.get_json("/v1/workloads"),
        follower.get_json("/v1/workloads")
    );

    let status = leader.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}\n{}", leader.log());
    let stopped = Instant::now();
    assert!(
        leader.log().contains("leader election: released the lease"),
        "{}",
        leader.log()
    );
    let lease = api.get_json(LEASES, "leash-system", "leash-serve").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "", "released: {lease}");
    wait_for(
        "the takeover",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || {
            follower.assert_running();
            leading(&follower)
        },
    );
    // At the follower's next try (every 2 s), not after the 15 s expiry of a crash.
    assert!(
        stopped.elapsed() < Duration::from_secs(6),
        "{:?}",
        stopped.elapsed()
    );
    let lease = api.get_json(LEASES, "leash-system", "leash-serve").unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);
    wait_checks("the new leader's checks", &follower, 1.0);
}

/// `--leader-elect` needs the API server: with `--cluster FILE` (one replica) it is refused
/// before anything starts; a malformed `--leader-lease` too.
#[test]
fn leader_election_is_refused_without_the_api_server() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot = dir.path().join("cluster.yaml");
    std::fs::write(&snapshot, "apiVersion: v1\nkind: List\nitems: []\n").unwrap();
    let run = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_leash"))
            .args(["serve", "--insecure", "--cluster"])
            .arg(&snapshot)
            .arg("--store")
            .arg(dir.path().join("leash.db"))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--leader-elect"]);
    support::cli::assert_code(&out, 2);
    assert!(
        support::cli::stderr(&out).contains("--leader-elect needs --kube"),
        "{}",
        support::cli::stderr(&out)
    );
    let out = run(&["--leader-lease", "no-slash"]);
    support::cli::assert_code(&out, 2);
    assert!(support::cli::stderr(&out).contains("NAMESPACE/NAME"));
}
