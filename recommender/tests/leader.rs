//! Leader election among `leash serve` replicas with a `coordination.k8s.io/v1` Lease, against
//! the lab's fake API server through kube-rs's real client: exactly one of two candidates
//! leads; when the leader dies the other takes over once the lease expires, counting the
//! transition; a leader that cannot renew stops its singleton work before anybody else may
//! start; a write with a stale `resourceVersion` is a `409 Conflict`.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use leash::serve::leader::{Elector, LeaderMetrics, LeaseRef, Timing, while_leading};
use leash_lab::fake_api::{FakeApi, collection_path};
use tokio::sync::watch;
use tokio::time::Instant;

/// Short enough for a test, with the production proportions (deadline + retry < duration).
const TIMING: Timing = Timing {
    lease_duration: Duration::from_millis(3000),
    renew_deadline: Duration::from_millis(2000),
    retry_period: Duration::from_millis(400),
};

fn lease_ref() -> LeaseRef {
    "leash-system/leash-serve".parse().unwrap()
}

/// A running candidate: its leadership and the task campaigning.
struct Candidate {
    leading: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    metrics: LeaderMetrics,
}

fn candidate(api: &FakeApi, identity: &str) -> Candidate {
    let metrics = LeaderMetrics::default();
    let elector = Elector::new(
        api.client().unwrap(),
        lease_ref(),
        identity.to_owned(),
        TIMING,
        metrics.clone(),
    );
    let (tx, leading) = watch::channel(false);
    Candidate {
        leading,
        task: tokio::spawn(elector.run(tx)),
        metrics,
    }
}

fn served_gauge(metrics: &LeaderMetrics) -> String {
    let mut registry = prometheus_client::registry::Registry::with_prefix("leash");
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines()
        .find(|l| l.starts_with("leash_leader "))
        .unwrap_or_default()
        .to_owned()
}

async fn lease(api: &FakeApi) -> Lease {
    Api::<Lease>::namespaced(api.client().unwrap(), "leash-system")
        .get("leash-serve")
        .await
        .unwrap()
}

/// Waits (bounded) until exactly one of `candidates` leads; its index.
async fn one_leader(candidates: &[&Candidate], within: Duration) -> usize {
    let start = Instant::now();
    loop {
        let leaders: Vec<usize> = (0..candidates.len())
            .filter(|&i| *candidates[i].leading.borrow())
            .collect();
        assert!(leaders.len() <= 1, "two leaders at once: {leaders:?}");
        if let [one] = leaders.as_slice() {
            return *one;
        }
        assert!(start.elapsed() < within, "no leader within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn one_of_two_leads_and_the_other_takes_over_when_it_dies() {
    let api = FakeApi::start().await.unwrap();
    let a = candidate(&api, "serve-a");
    let b = candidate(&api, "serve-b");
    let first = one_leader(&[&a, &b], Duration::from_secs(5)).await;
    let (leader, other, names) = if first == 0 {
        (a, b, ["serve-a", "serve-b"])
    } else {
        (b, a, ["serve-b", "serve-a"])
    };
    // Stays one leader over several renewals.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(*leader.leading.borrow() && !*other.leading.borrow());
    }
    let held = lease(&api).await.spec.unwrap();
    assert_eq!(held.holder_identity.as_deref(), Some(names[0]));
    assert_eq!(held.lease_transitions, Some(0));
    assert_eq!(held.lease_duration_seconds, Some(3));
    assert!(
        held.renew_time > held.acquire_time,
        "renewed since acquired"
    );
    assert_eq!(served_gauge(&leader.metrics), "leash_leader 1");
    assert_eq!(served_gauge(&other.metrics), "leash_leader 0");

    // The leader dies: it stops renewing without releasing the lease.
    leader.task.abort();
    let died = Instant::now();
    let start = Instant::now();
    while !*other.leading.borrow() {
        assert!(start.elapsed() < Duration::from_secs(8), "no takeover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Not before the lease expired on the survivor's clock.
    assert!(died.elapsed() >= TIMING.lease_duration - TIMING.retry_period);
    let taken = lease(&api).await.spec.unwrap();
    assert_eq!(taken.holder_identity.as_deref(), Some(names[1]));
    assert_eq!(taken.lease_transitions, Some(1));
    assert!(taken.acquire_time > held.acquire_time);
    assert_eq!(served_gauge(&other.metrics), "leash_leader 1");
    other.task.abort();
}

#[tokio::test]
async fn a_leader_that_cannot_renew_stops_its_singleton_work_before_another_starts() {
    let api = FakeApi::start().await.unwrap();
    let a = candidate(&api, "serve-a");
    one_leader(&[&a], Duration::from_secs(5)).await;
    // Singleton work on each candidate: counts ticks while leading.
    let ticks_a = Arc::new(AtomicU64::new(0));
    let ticks_b = Arc::new(AtomicU64::new(0));
    let work = |ticks: Arc<AtomicU64>| {
        move || {
            let ticks = Arc::clone(&ticks);
            async move {
                loop {
                    ticks.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    };
    let _work_a = tokio::spawn(while_leading(a.leading.clone(), work(Arc::clone(&ticks_a))));
    let b = candidate(&api, "serve-b");
    let _work_b = tokio::spawn(while_leading(b.leading.clone(), work(Arc::clone(&ticks_b))));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(ticks_a.load(Ordering::SeqCst) > 0, "the leader works");
    assert_eq!(ticks_b.load(Ordering::SeqCst), 0, "the follower does not");

    // The API server refuses every update from now on: nobody can renew nor take over.
    let leases = collection_path::<Lease>();
    api.fail_next("update", Some(&leases), 500, usize::MAX);
    let cut = Instant::now();
    let mut a_rx = a.leading.clone();
    tokio::time::timeout(
        TIMING.renew_deadline + TIMING.retry_period,
        a_rx.wait_for(|l| !*l),
    )
    .await
    .expect("stepped down by the renew deadline")
    .unwrap();
    let stepped_down = cut.elapsed();
    assert!(stepped_down < TIMING.lease_duration);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let frozen = ticks_a.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        ticks_a.load(Ordering::SeqCst),
        frozen,
        "work stopped with leadership"
    );
    assert_eq!(served_gauge(&a.metrics), "leash_leader 0");

    // The API server recovers: exactly one of them leads again, and the work resumes there.
    api.clear_failures();
    let next = one_leader(&[&a, &b], Duration::from_secs(8)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (working, idle) = if next == 0 {
        (&ticks_a, &ticks_b)
    } else {
        (&ticks_b, &ticks_a)
    };
    assert!(working.load(Ordering::SeqCst) > if next == 0 { frozen } else { 0 });
    if next == 1 {
        assert_eq!(
            idle.load(Ordering::SeqCst),
            frozen,
            "the old leader stays idle"
        );
    }
    a.task.abort();
    b.task.abort();
}

#[tokio::test]
async fn a_stale_resource_version_is_a_conflict() {
    let api = FakeApi::start().await.unwrap();
    let a = candidate(&api, "serve-a");
    one_leader(&[&a], Duration::from_secs(5)).await;
    let leases = Api::<Lease>::namespaced(api.client().unwrap(), "leash-system");
    let mut stale = lease(&api).await;
    // The leader renews, changing the resourceVersion.
    tokio::time::sleep(TIMING.retry_period * 2).await;
    stale.spec.as_mut().unwrap().holder_identity = Some("intruder".to_owned());
    let err = leases
        .replace("leash-serve", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("not an API error: {err:?}")
    };
    assert_eq!(status.code, 409);
    assert_eq!(status.reason, "Conflict");
    assert!(
        status
            .message
            .contains("leases.coordination.k8s.io \"leash-serve\"")
    );
    assert_eq!(
        lease(&api).await.spec.unwrap().holder_identity.as_deref(),
        Some("serve-a")
    );
    a.task.abort();
}
