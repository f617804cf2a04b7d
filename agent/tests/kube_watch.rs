//! The kube pod watch against the lab's fake API server ([`leash_lab::fake_api`]), through
//! kube-rs's real HTTP client: list and watch with a `spec.nodeName` field selector, events
//! replayed from the watch's `resourceVersion`, watches ended (resume) and expired with `410 Gone`
//! (re-list).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use leash_agent::attribution::{PodStore, watch_pods};
use leash_agent::metrics::Metrics;
use leash_lab::fake_api::{FakeApi, collection_path};
use leash_lab::k8s;

const UID_A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const UID_B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const UID_C: &str = "cccccccc-0000-4000-8000-000000000003";
const UID_D: &str = "dddddddd-0000-4000-8000-000000000004";
const UID_E: &str = "eeeeeeee-0000-4000-8000-000000000005";
const UID_F: &str = "ffffffff-0000-4000-8000-000000000006";

/// Polls `cond` every 20 ms for up to 15 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..750 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn names(store: &PodStore) -> Vec<String> {
    store.pods().iter().map(|p| p.name.clone()).collect()
}

#[tokio::test]
async fn store_follows_adds_updates_deletes_and_relists() {
    let api = FakeApi::start().await.unwrap();
    for pod in [
        k8s::pod("shop", "a")
            .uid(UID_A)
            .node("n1")
            .labels(&[("app", "a")])
            .owner("ReplicaSet", "a-7d4")
            .build(),
        k8s::pod("shop", "b").uid(UID_B).node("n1").build(),
        k8s::pod("shop", "c-elsewhere")
            .uid(UID_C)
            .node("n2")
            .build(),
    ] {
        api.apply(&pod);
    }
    let metrics = Metrics::new();
    let store = PodStore::new(metrics.clone());
    let watch = tokio::spawn({
        let (client, store, metrics) = (api.client().unwrap(), store.clone(), metrics.clone());
        async move { watch_pods(client, "n1", store, metrics).await }
    });

    // Initial list: this node's pods only.
    tokio::time::timeout(Duration::from_secs(15), store.wait_synced())
        .await
        .expect("initial list");
    assert_eq!(names(&store), ["a", "b"]);
    let a = store.get(UID_A).unwrap();
    assert_eq!(a.owner.as_ref().map(|o| o.name.as_str()), Some("a-7d4"));
    assert_eq!(metrics.pod_metadata_size.get(), 2);
    let requests = api.requests();
    assert!(
        requests.iter().any(|r| r.path == collection_path::<Pod>()
            && !r.is_watch()
            && r.param("fieldSelector") == Some("spec.nodeName=n1")),
        "{requests:?}"
    );
    // The agent only lists and watches pods (what its ClusterRole grants).
    for r in &requests {
        let access = r.access().unwrap();
        let declared = leash_agent::attribution::pods::API_ACCESS.iter().any(|a| {
            a.group == access.group
                && a.resource == access.resource
                && a.verbs.contains(&access.verb)
        });
        assert!(declared, "undeclared API access {access:?} by {r:?}");
    }

    // ADDED (plus one for another node, which the selector keeps away).
    api.apply(
        &k8s::pod("kube-system", "d")
            .uid(UID_D)
            .node("n1")
            .host_network()
            .build(),
    );
    api.apply(
        &k8s::pod("shop", "other-node")
            .uid("99999999-0000-4000-8000-000000000009")
            .node("n2")
            .build(),
    );
    eventually("pod d added", || store.get(UID_D).is_some()).await;
    assert!(store.get(UID_D).unwrap().host_network);

    // MODIFIED.
    api.apply(
        &k8s::pod("shop", "a")
            .uid(UID_A)
            .node("n1")
            .labels(&[("app", "a"), ("version", "2")])
            .build(),
    );
    eventually("pod a relabelled", || {
        store
            .get(UID_A)
            .is_some_and(|p| p.labels.get("version").map(String::as_str) == Some("2"))
    })
    .await;

    // DELETED.
    assert!(api.delete::<Pod>("shop", "b"));
    eventually("pod b deleted", || store.get(UID_B).is_none()).await;
    // Sorted by namespace, then name: kube-system/d first.
    assert_eq!(names(&store), ["d", "a"]);

    // The watch ends (server timeout): the client resumes from its version, no event lost.
    api.end_watches();
    api.apply(&k8s::pod("shop", "e").uid(UID_E).node("n1").build());
    eventually("pod e added after watch restart", || {
        store.get(UID_E).is_some()
    })
    .await;

    // Changes while the watch is down, then 410 Gone: the re-list replaces the store.
    assert!(api.delete_silently::<Pod>("shop", "a"));
    api.apply_silently(&k8s::pod("shop", "f").uid(UID_F).node("n1").build());
    api.expire_watches();
    eventually("re-list applied", || {
        store.get(UID_F).is_some() && store.get(UID_A).is_none()
    })
    .await;
    assert_eq!(names(&store), ["d", "e", "f"]);
    assert!(metrics.kube_watch_errors.get() >= 1);
    assert_eq!(metrics.pod_metadata_size.get(), 3);
    assert!(store.get("99999999-0000-4000-8000-000000000009").is_none());

    watch.abort();
}
