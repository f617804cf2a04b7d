//! The fake API server through kube-rs's real client: paging, selectors on lists and watches,
//! version replay, 410 Gone, writes, and injected failures.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use leash_lab::fake_api::{FakeApi, collection_path};
use serde_json::json;

fn pod(ns: &str, name: &str, app: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}
    }))
    .unwrap()
}

fn names(pods: &[Pod]) -> Vec<String> {
    pods.iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect()
}

/// The next event of a watch, within 10 s.
async fn next<S>(stream: &mut S) -> WatchEvent<Pod>
where
    S: futures::Stream<Item = kube::Result<WatchEvent<Pod>>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(10), stream.try_next())
        .await
        .expect("no watch event within 10 s")
        .unwrap()
        .expect("the watch ended")
}

fn event_name(e: &WatchEvent<Pod>) -> (&'static str, String) {
    match e {
        WatchEvent::Added(p) => ("ADDED", p.metadata.name.clone().unwrap()),
        WatchEvent::Modified(p) => ("MODIFIED", p.metadata.name.clone().unwrap()),
        WatchEvent::Deleted(p) => ("DELETED", p.metadata.name.clone().unwrap()),
        WatchEvent::Bookmark(_) => ("BOOKMARK", String::new()),
        WatchEvent::Error(s) => ("ERROR", s.code.to_string()),
    }
}

#[tokio::test]
async fn lists_page_and_filter_by_namespace_labels_and_fields() {
    let api = FakeApi::start().await.unwrap();
    assert!(api.addr().ip().is_loopback());
    for (ns, name, app, node) in [
        ("a", "p1", "web", "n1"),
        ("a", "p2", "db", "n1"),
        ("b", "p3", "web", "n2"),
        ("b", "p4", "web", "n1"),
        ("b", "p5", "cache", "n1"),
    ] {
        api.apply(&pod(ns, name, app, node));
    }
    let client = api.client().unwrap();
    let all: Api<Pod> = Api::all(client.clone());

    // Pages of two, following continue tokens.
    let first = all.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(names(&first.items), ["p1", "p2"]);
    let token = first.metadata.continue_.clone().unwrap();
    let second = all
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&second.items), ["p3", "p4"]);
    let token = second.metadata.continue_.clone().unwrap();
    let last = all
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(names(&last.items), ["p5"]);
    assert!(last.metadata.continue_.is_none_or(|c| c.is_empty()));

    let in_b: Api<Pod> = Api::namespaced(client.clone(), "b");
    let web_on_n1 = in_b
        .list(
            &ListParams::default()
                .labels("app in (web,db)")
                .fields("spec.nodeName=n1"),
        )
        .await
        .unwrap();
    assert_eq!(names(&web_on_n1.items), ["p4"]);
    let not_web = all
        .list(&ListParams::default().labels("app!=web"))
        .await
        .unwrap();
    assert_eq!(names(&not_web.items), ["p2", "p5"]);

    let requests = api.requests();
    assert_eq!(requests.len(), 5);
    let access = requests[3].access().unwrap();
    assert_eq!(
        (
            access.resource.as_str(),
            access.verb,
            access.namespace.as_deref()
        ),
        ("pods", "list", Some("b"))
    );
    assert_eq!(requests[3].param("labelSelector"), Some("app in (web,db)"));
}

#[tokio::test]
async fn watches_replay_follow_selectors_and_expire() {
    let api = FakeApi::start().await.unwrap();
    api.apply(&pod("a", "p1", "web", "n1"));
    let rv = api.resource_version();
    api.apply(&pod("a", "p2", "web", "n1"));
    let all: Api<Pod> = Api::all(api.client().unwrap());

    // From a version: the newer event is replayed, then live ones follow, filtered.
    let params = WatchParams::default().labels("app=web");
    let mut stream = all.watch(&params, &rv.to_string()).await.unwrap().boxed();
    assert_eq!(
        event_name(&next(&mut stream).await),
        ("ADDED", "p2".to_owned())
    );
    api.apply(&pod("a", "other", "db", "n1"));
    api.apply(&pod("a", "p1", "db", "n1")); // leaves the selector: DELETED for this watch
    assert_eq!(
        event_name(&next(&mut stream).await),
        ("DELETED", "p1".to_owned())
    );
    api.apply(&pod("a", "p1", "web", "n1")); // back in: ADDED
    assert_eq!(
        event_name(&next(&mut stream).await),
        ("ADDED", "p1".to_owned())
    );
    api.apply(&pod("a", "p1", "web", "n2"));
    assert_eq!(
        event_name(&next(&mut stream).await),
        ("MODIFIED", "p1".to_owned())
    );
    assert!(api.delete::<Pod>("a", "p2"));
    assert_eq!(
        event_name(&next(&mut stream).await),
        ("DELETED", "p2".to_owned())
    );
    assert_eq!(api.watch_count(Some(&collection_path::<Pod>())), 1);

    // Expired: an ERROR event with 410, then the end of the stream.
    api.expire_watches();
    assert_eq!(
        event_name(&next(&mut stream).await),
        ("ERROR", "410".to_owned())
    );
    let end = tokio::time::timeout(Duration::from_secs(10), stream.try_next()).await;
    assert!(matches!(end, Ok(Ok(None))), "{end:?}");

    // Resuming from the old version now gets 410 at once; from "0", the current objects.
    let mut stale = all
        .watch(&WatchParams::default(), &rv.to_string())
        .await
        .unwrap()
        .boxed();
    assert_eq!(
        event_name(&next(&mut stale).await),
        ("ERROR", "410".to_owned())
    );
    let mut fresh = all
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(event_name(&next(&mut fresh).await));
    }
    assert_eq!(
        seen,
        [("ADDED", "other".to_owned()), ("ADDED", "p1".to_owned())]
    );

    // An injected HTTP failure is what the client sees instead of a stream.
    api.fail_next_watches(500, 1);
    let err = all.watch(&WatchParams::default(), "0").await.err();
    assert!(
        matches!(&err, Some(kube::Error::Api(s)) if s.code == 500),
        "{err:?}"
    );
    assert!(all.watch(&WatchParams::default(), "0").await.is_ok());
}

#[tokio::test]
async fn writes_are_stored_recorded_and_announced() {
    let api = FakeApi::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(api.client().unwrap(), "shop");
    let mut stream = cms
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();

    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"generateName": "cfg-"}, "data": {"a": "1", "b": "2"}
    }))
    .unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(name.starts_with("cfg-"), "{name}");
    assert_eq!(created.metadata.namespace.as_deref(), Some("shop"));
    assert!(created.metadata.uid.is_some());

    let patched = cms
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"a": null, "c": "3"}})),
        )
        .await
        .unwrap();
    let data = patched.data.unwrap();
    assert_eq!(
        data.keys().map(String::as_str).collect::<Vec<_>>(),
        ["b", "c"]
    );

    // A second create of the same name conflicts; a missing object is 404.
    let mut dup = created.clone();
    dup.metadata.resource_version = None;
    let err = cms.create(&PostParams::default(), &dup).await.err();
    assert!(
        matches!(&err, Some(kube::Error::Api(s)) if s.code == 409),
        "{err:?}"
    );
    let err = cms.get("nope").await.err();
    assert!(
        matches!(&err, Some(kube::Error::Api(s)) if s.code == 404),
        "{err:?}"
    );
    cms.delete(&name, &Default::default()).await.unwrap();

    let mut kinds = Vec::new();
    for _ in 0..3 {
        let event = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        kinds.push(match event {
            WatchEvent::Added(_) => "ADDED",
            WatchEvent::Modified(_) => "MODIFIED",
            WatchEvent::Deleted(_) => "DELETED",
            _ => "other",
        });
    }
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);

    let requests = api.requests();
    let verbs: Vec<&str> = requests.iter().map(|r| r.access().unwrap().verb).collect();
    assert_eq!(
        verbs,
        ["watch", "create", "patch", "create", "get", "delete"]
    );
    let patch = &requests[2];
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        patch.body_json().unwrap(),
        json!({"data": {"a": null, "c": "3"}})
    );
    assert!(api.objects("/api/v1/configmaps").is_empty());
}
