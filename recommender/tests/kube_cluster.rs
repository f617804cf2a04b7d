//! The live cluster model against the lab's fake API server, through kube-rs's real HTTP client:
//! initial lists and readiness, updates and deletions, watch restarts and `410 Gone` re-lists,
//! one-shot loading, objects that do not decode, the Events publisher, and the API permissions
//! the code declares against the requests it actually made.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use leash::cluster::events::{EVENTS_ACCESS, EventPublisher, workload_reference};
use leash::cluster::watch::{API_ACCESS, WatchOptions, load_once, watch_cluster};
use leash::cluster::{Cluster, ServiceLookup};
use leash::state::ClusterState;
use leash_lab::fake_api::{FakeApi, Request, collection_path};
use leash_records::Protocol;
use leash_records::access::ApiAccess;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;

fn typed<K: DeserializeOwned>(v: Value) -> K {
    serde_json::from_value(v).unwrap()
}

fn pod(name: &str, ip: &str, labels: Value, owner: Option<(&str, &str, &str)>) -> Pod {
    let owners: Vec<Value> = owner
        .map(|(api_version, kind, owner)| {
            json!({"apiVersion": api_version, "kind": kind, "name": owner,
                   "uid": format!("uid-{owner}"), "controller": true})
        })
        .into_iter()
        .collect();
    typed(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": labels,
                     "ownerReferences": owners},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                 "ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    }))
}

/// A small shop: a Deployment (through its ReplicaSet), a StatefulSet behind a Service with a
/// named targetPort, a CronJob's Job, a DaemonSet, and a default-deny egress policy.
fn load_fixtures(api: &FakeApi) {
    for ns in ["shop", "kube-system"] {
        api.apply(&typed::<Namespace>(
            json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}}),
        ));
    }
    api.apply(&typed::<Node>(json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "n1"},
        "status": {"addresses": [{"type": "InternalIP", "address": "203.0.113.1"}]}})));
    api.apply(&typed::<Deployment>(
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "frontend", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "frontend"}},
                 "template": {"metadata": {"labels": {"app": "frontend"}}}}}),
    ));
    api.apply(&typed::<ReplicaSet>(
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "frontend-7d4", "namespace": "shop",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                "name": "frontend", "uid": "uid-frontend", "controller": true}]},
        "spec": {"selector": {"matchLabels": {"app": "frontend", "pod-template-hash": "7d4"}},
                 "template": {"metadata": {"labels": {"app": "frontend"}}}}}),
    ));
    api.apply(&pod(
        "frontend-7d4-x1",
        "198.51.100.10",
        json!({"app": "frontend", "pod-template-hash": "7d4"}),
        Some(("apps/v1", "ReplicaSet", "frontend-7d4")),
    ));
    api.apply(&typed::<StatefulSet>(
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "api"}}, "serviceName": "api",
                 "template": {"metadata": {"labels": {"app": "api"}}}}}),
    ));
    api.apply(&pod(
        "api-0",
        "198.51.100.11",
        json!({"app": "api"}),
        Some(("apps/v1", "StatefulSet", "api")),
    ));
    api.apply(&typed::<Service>(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "api", "namespace": "shop"},
        "spec": {"clusterIP": "198.51.100.130", "clusterIPs": ["198.51.100.130"],
                 "selector": {"app": "api"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}})));
    api.apply(&typed::<EndpointSlice>(
        json!({"apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "api-abc", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "api"}},
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["198.51.100.11"], "conditions": {"ready": true},
                       "targetRef": {"kind": "Pod", "name": "api-0", "namespace": "shop"}}]}),
    ));
    api.apply(&typed::<CronJob>(
        json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "backup", "namespace": "shop"},
        "spec": {"schedule": "0 * * * *", "jobTemplate": {"spec": {"template": {
            "metadata": {"labels": {"app": "backup"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}}}}}),
    ));
    api.apply(&typed::<Job>(
        json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "backup-100", "namespace": "shop",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "backup",
                "uid": "uid-backup", "controller": true}]},
        "spec": {"template": {"metadata": {"labels": {"app": "backup"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}}}),
    ));
    api.apply(&pod(
        "backup-100-z",
        "198.51.100.12",
        json!({"app": "backup"}),
        Some(("batch/v1", "Job", "backup-100")),
    ));
    api.apply(&typed::<DaemonSet>(
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "kube-system"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
                 "template": {"metadata": {"labels": {"app": "agent"}}}}}),
    ));
    api.apply(&typed::<NetworkPolicy>(
        json!({"apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy", "metadata": {"name": "default-deny", "namespace": "shop",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}", "team": "a"},
            "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
        "spec": {"podSelector": {}, "policyTypes": ["Egress"]}}),
    ));
}

fn workload_of(cluster: &Cluster, ns: &str, pod: &str) -> Option<String> {
    let p = cluster.pod_by_name(ns, pod)?;
    let w = cluster.workload_of(p)?;
    Some(cluster.workloads[w].to_string())
}

fn pod_names(state: &ClusterState) -> Vec<String> {
    state
        .cluster
        .pods
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect()
}

/// Waits up to 20 s for a published state satisfying `cond`.
async fn state_where(
    rx: &mut watch::Receiver<Option<Arc<ClusterState>>>,
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
            "timed out waiting for: {what}; last state: {:?}",
            rx.borrow()
                .as_ref()
                .map(|s| (s.generation, pod_names(s), s.rejected.clone()))
        ),
    }
}

/// Every request stayed within the declared permissions.
fn assert_within(requests: &[Request], declared: &[ApiAccess]) {
    assert!(!requests.is_empty());
    for r in requests {
        let access = r
            .access()
            .unwrap_or_else(|| panic!("request outside the resource API: {r:?}"));
        let ok = declared.iter().any(|d| {
            d.group == access.group
                && d.resource == access.resource
                && d.verbs.contains(&access.verb)
        });
        assert!(
            ok,
            "undeclared API access {access:?} by {} {}",
            r.method, r.path
        );
    }
}

fn fast() -> WatchOptions {
    WatchOptions {
        debounce: Duration::from_millis(100),
        ..WatchOptions::default()
    }
}

#[tokio::test]
async fn initial_lists_build_the_model_and_readiness_waits_for_all_of_them() {
    let api = FakeApi::start().await.unwrap();
    load_fixtures(&api);
    // The CronJob list fails until released: every other kind is listed, but the model waits.
    let cronjobs = collection_path::<CronJob>();
    api.fail_next("list", Some(&cronjobs), 500, usize::MAX);
    let (mut rx, task) = watch_cluster::<ClusterState>(api.client().unwrap(), fast());
    let cronjob_lists = || {
        api.requests()
            .iter()
            .filter(|r| r.path == cronjobs && !r.is_watch())
            .count()
    };
    let mut waited = 0;
    loop {
        let requests = api.requests();
        let listed_others = API_ACCESS
            .iter()
            .filter(|a| a.resource != "cronjobs")
            .all(|a| {
                requests.iter().any(|r| {
                    r.access()
                        .is_some_and(|x| x.resource == a.resource && x.verb == "list")
                })
            });
        if listed_others && cronjob_lists() >= 2 {
            break;
        }
        waited += 1;
        assert!(
            waited < 1000,
            "the lists were not all attempted within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give the other kinds' events time to be processed, then check nothing was published.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rx.borrow().is_none(),
        "published before every kind was listed"
    );
    api.clear_failures();

    let state = state_where(&mut rx, "the first state", |_| true).await;
    assert!(cronjob_lists() >= 3, "{} CronJob lists", cronjob_lists());
    assert!(state.watch_errors >= 2, "{}", state.watch_errors);
    assert_eq!(state.generation, 1);

    let c = &state.cluster;
    assert_eq!(
        pod_names(&state),
        ["shop/api-0", "shop/backup-100-z", "shop/frontend-7d4-x1"]
    );
    assert_eq!(
        workload_of(c, "shop", "frontend-7d4-x1").as_deref(),
        Some("shop/Deployment/frontend")
    );
    assert_eq!(
        workload_of(c, "shop", "api-0").as_deref(),
        Some("shop/StatefulSet/api")
    );
    assert_eq!(
        workload_of(c, "shop", "backup-100-z").as_deref(),
        Some("shop/CronJob/backup")
    );
    let vip: IpAddr = "198.51.100.130".parse().unwrap();
    match c.resolve_service(vip, 80, Protocol::Tcp) {
        ServiceLookup::Resolved { backends, .. } => {
            let got: Vec<(String, u16)> = backends
                .iter()
                .map(|b| (b.ip.to_string(), b.port))
                .collect();
            assert_eq!(got, [("198.51.100.11".to_owned(), 8080)]);
        }
        other => panic!("{other:?}"),
    }
    assert!(c.node_by_ip("203.0.113.1".parse().unwrap()).is_some());
    assert!(c.namespaces.contains_key("kube-system"));
    let policies: Vec<_> = state
        .policies
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(policies, ["default-deny"]);
    assert_eq!(state.policy_set.len(), 1);
    // The stores drop what the model never reads.
    let meta = &state.policies[0].metadata;
    assert!(meta.managed_fields.is_none());
    let annotations: Vec<_> = meta.annotations.iter().flatten().map(|(k, _)| k).collect();
    assert_eq!(annotations, ["team"]);
    assert!(state.rejected.is_empty(), "{:?}", state.rejected);

    assert_within(&api.requests(), API_ACCESS);
    task.abort();
}

#[tokio::test]
async fn updates_deletions_restarts_and_410_gone_converge() {
    let api = FakeApi::start().await.unwrap();
    load_fixtures(&api);
    let (mut rx, task) = watch_cluster::<ClusterState>(api.client().unwrap(), fast());
    let first = state_where(&mut rx, "ready", |_| true).await;

    // MODIFIED: a relabelled pod; ADDED: a new policy.
    api.apply(&pod(
        "api-0",
        "198.51.100.11",
        json!({"app": "api", "track": "canary"}),
        Some(("apps/v1", "StatefulSet", "api")),
    ));
    api.apply(&typed::<NetworkPolicy>(
        json!({"apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy", "metadata": {"name": "allow-dns", "namespace": "shop"},
        "spec": {"podSelector": {}, "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}}),
    ));
    let s = state_where(&mut rx, "relabelled pod and new policy", |s| {
        let relabelled = s.cluster.pod_by_name("shop", "api-0").is_some_and(|p| {
            s.cluster.pods[p].labels.get("track").map(String::as_str) == Some("canary")
        });
        relabelled && s.policies.len() == 2
    })
    .await;
    assert!(s.generation > first.generation);

    // DELETED: the Service and a pod.
    assert!(api.delete::<Service>("shop", "api"));
    assert!(api.delete::<Pod>("shop", "backup-100-z"));
    let s = state_where(&mut rx, "service and pod deleted", |s| {
        s.cluster.service_by_name("shop", "api").is_none()
            && s.cluster.pod_by_name("shop", "backup-100-z").is_none()
    })
    .await;
    assert_eq!(pod_names(&s), ["shop/api-0", "shop/frontend-7d4-x1"]);

    // The watches end (server timeout): the client resumes from its versions, nothing lost.
    api.end_watches();
    api.apply(&pod("web-1", "198.51.100.20", json!({"app": "web"}), None));
    state_where(&mut rx, "pod added after watch restart", |s| {
        s.cluster.pod_by_name("shop", "web-1").is_some()
    })
    .await;

    // Changes no event tells of, then 410 Gone mid-stream: the re-list converges.
    assert!(api.delete_silently::<Pod>("shop", "frontend-7d4-x1"));
    api.apply_silently(&pod("late", "198.51.100.21", json!({"app": "late"}), None));
    api.expire_watches();
    let s = state_where(&mut rx, "re-list after 410", |s| {
        s.cluster.pod_by_name("shop", "late").is_some()
            && s.cluster.pod_by_name("shop", "frontend-7d4-x1").is_none()
    })
    .await;
    assert_eq!(pod_names(&s), ["shop/api-0", "shop/late", "shop/web-1"]);

    // Watches end, history is compacted, and the resumed watches get 410 Gone as their first
    // event (after two failing with HTTP 500): again a re-list.
    api.fail_next_watches(500, 2);
    api.end_watches();
    api.compact();
    assert!(api.delete_silently::<NetworkPolicy>("shop", "allow-dns"));
    assert!(api.delete_silently::<Pod>("shop", "web-1"));
    let s = state_where(&mut rx, "re-list after a resumed watch got 410", |s| {
        s.policies.len() == 1 && s.cluster.pod_by_name("shop", "web-1").is_none()
    })
    .await;
    assert_eq!(pod_names(&s), ["shop/api-0", "shop/late"]);
    assert!(s.watch_errors >= 4, "{}", s.watch_errors);
    let relists = api
        .requests()
        .iter()
        .filter(|r| r.path == collection_path::<Pod>() && !r.is_watch())
        .count();
    assert!(relists >= 3, "{relists} pod lists");

    assert_within(&api.requests(), API_ACCESS);
    task.abort();
}

#[tokio::test]
async fn undecodable_and_invalid_objects_are_named_and_skipped() {
    let api = FakeApi::start().await.unwrap();
    load_fixtures(&api);
    let pods = collection_path::<Pod>();
    api.apply_json(
        &pods,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "garbled", "namespace": "shop"},
               "spec": {"containers": 7}}),
    );
    api.apply(&pod("bad-ip", "not-an-ip", json!({}), None));
    let (mut rx, task) = watch_cluster::<ClusterState>(api.client().unwrap(), fast());
    let s = state_where(&mut rx, "ready", |_| true).await;
    let rejected: Vec<(&str, &str)> = s
        .rejected
        .iter()
        .map(|r| (r.kind.as_str(), r.name.as_str()))
        .collect();
    assert_eq!(rejected, [("Pod", "shop/bad-ip"), ("Pod", "shop/garbled")]);
    let garbled = &s.rejected[1];
    assert!(garbled.reason.contains("does not decode"), "{garbled:?}");
    assert!(
        s.rejected[0].reason.contains("not-an-ip"),
        "{:?}",
        s.rejected[0]
    );
    // The rest of the cluster is there.
    assert_eq!(
        pod_names(&s),
        ["shop/api-0", "shop/backup-100-z", "shop/frontend-7d4-x1"]
    );

    // Fixed, the object joins the model; the broken one deleted, it leaves the rejects.
    api.apply(&pod("bad-ip", "198.51.100.30", json!({}), None));
    assert!(api.delete_json(&pods, "shop", "garbled"));
    let s = state_where(&mut rx, "fixed and deleted", |s| s.rejected.is_empty()).await;
    assert!(s.cluster.pod_by_name("shop", "bad-ip").is_some());

    // The one-shot loader skips them the same way.
    api.apply_json(
        &pods,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "garbled-2", "namespace": "shop"},
               "status": {"podIPs": "x"}}),
    );
    let once = load_once::<ClusterState>(api.client().unwrap())
        .await
        .unwrap();
    assert_eq!(once.rejected.len(), 1, "{:?}", once.rejected);
    assert_eq!(once.rejected[0].name, "shop/garbled-2");
    assert_eq!(once.cluster.pods.len(), 4);
    task.abort();
}

#[tokio::test]
async fn load_once_lists_each_kind_once_through_a_kubeconfig() {
    let api = FakeApi::start().await.unwrap();
    load_fixtures(&api);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let client = leash::cluster::watch::client(Some(&kubeconfig))
        .await
        .unwrap();
    let state = load_once::<ClusterState>(client).await.unwrap();
    assert_eq!(state.cluster.pods.len(), 3);
    assert_eq!(
        workload_of(&state.cluster, "shop", "frontend-7d4-x1").as_deref(),
        Some("shop/Deployment/frontend")
    );
    assert_eq!(state.policies.len(), 1);
    let requests = api.requests();
    assert_within(&requests, API_ACCESS);
    assert_eq!(requests.len(), API_ACCESS.len(), "one list per kind");
    assert!(requests.iter().all(|r| !r.is_watch()));

    // A failing list names the resource.
    api.fail_next("list", Some(&collection_path::<StatefulSet>()), 403, 1);
    let client = api.client().unwrap();
    let err = load_once::<ClusterState>(client)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("apps/statefulsets"), "{err}");

    // A missing kubeconfig names the file.
    let missing = dir.path().join("nope");
    let err = match leash::cluster::watch::client(Some(&missing)).await {
        Ok(_) => panic!("a missing kubeconfig was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("nope"), "{err}");
}

#[tokio::test]
async fn unexpected_egress_events_are_created_then_patched() {
    let api = FakeApi::start().await.unwrap();
    load_fixtures(&api);
    let state = load_once::<ClusterState>(api.client().unwrap())
        .await
        .unwrap();
    let c = &state.cluster;
    let pod = c.pod_by_name("shop", "frontend-7d4-x1").unwrap();
    let regarding = workload_reference(c, c.workload_of(pod).unwrap());
    api.clear_requests();

    let publisher = EventPublisher::new(api.client().unwrap(), Some("leash-0".into()));
    let message = "shop/Deployment/frontend sent TCP to 203.0.113.50:443, denied by its policies";
    publisher
        .publish_unexpected_egress(&regarding, message)
        .await
        .unwrap();
    publisher
        .publish_unexpected_egress(&regarding, message)
        .await
        .unwrap();

    let requests = api.requests();
    assert_within(&requests, EVENTS_ACCESS);
    let methods: Vec<&str> = requests.iter().map(|r| r.method.as_str()).collect();
    assert_eq!(methods, ["POST", "PATCH"]);
    assert_eq!(
        requests[0].path,
        "/apis/events.k8s.io/v1/namespaces/shop/events"
    );
    let body = requests[0].body_json().unwrap();
    assert_eq!(body["type"], "Warning");
    assert_eq!(body["reason"], "UnexpectedEgress");
    assert_eq!(body["note"], message);
    assert_eq!(body["reportingController"], "leash");
    assert_eq!(body["reportingInstance"], "leash-0");
    assert_eq!(body["regarding"]["kind"], "Deployment");
    assert_eq!(body["regarding"]["apiVersion"], "apps/v1");
    assert_eq!(body["regarding"]["name"], "frontend");
    let name = body["metadata"]["name"].as_str().unwrap();
    assert_eq!(
        requests[1].path,
        format!("/apis/events.k8s.io/v1/namespaces/shop/events/{name}")
    );
    // The repeat is counted in the stored event's series.
    let stored = api
        .get_json("/apis/events.k8s.io/v1/events", "shop", name)
        .unwrap();
    assert_eq!(stored["series"]["count"], 2, "{stored}");
}

#[tokio::test]
async fn bursts_are_debounced_and_the_task_ends_with_its_receivers() {
    let api = FakeApi::start().await.unwrap();
    load_fixtures(&api);
    let options = WatchOptions {
        debounce: Duration::from_millis(300),
        ..WatchOptions::default()
    };
    let (mut rx, task) = watch_cluster::<ClusterState>(api.client().unwrap(), options);
    let first = state_where(&mut rx, "ready", |_| true).await;

    // A burst of 40 changes lands in one or two rebuilds, not forty.
    for i in 0..40 {
        api.apply(&pod(
            &format!("burst-{i:02}"),
            &format!("198.51.100.{}", 40 + i),
            json!({"app": "burst"}),
            None,
        ));
    }
    let s = state_where(&mut rx, "the whole burst", |s| {
        s.cluster.pods_in_namespace("shop").count() == 43
    })
    .await;
    let rebuilds = s.generation - first.generation;
    assert!(
        (1..=2).contains(&rebuilds),
        "{rebuilds} rebuilds for one burst"
    );

    // With every receiver gone, the task ends (and its watches close).
    drop(rx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the watch task outlived its receivers")
        .unwrap();
    for _ in 0..500 {
        if api.watch_count(None) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(api.watch_count(None), 0, "watches left open");
}
