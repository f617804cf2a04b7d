//! Unit tests of the parts below the HTTP layer.

use serde_json::json;

use super::objects::merge_patch;
use super::request::{Request, Target};
use super::select::Filter;

fn req(method: &str, path: &str, query: &[(&str, &str)]) -> Request {
    Request {
        method: method.into(),
        path: path.into(),
        query: query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        content_type: None,
        body: Vec::new(),
    }
}

#[test]
fn paths_name_group_resource_namespace_and_verb() {
    let a = |m, p, q: &[(&str, &str)]| req(m, p, q).access().unwrap();
    let list = a("GET", "/api/v1/pods", &[]);
    assert_eq!(
        (list.group.as_str(), list.resource.as_str(), list.verb),
        ("", "pods", "list")
    );
    let watch = a(
        "GET",
        "/apis/networking.k8s.io/v1/networkpolicies",
        &[("watch", "true")],
    );
    assert_eq!(
        (watch.group.as_str(), watch.resource.as_str(), watch.verb),
        ("networking.k8s.io", "networkpolicies", "watch")
    );
    let create = a("POST", "/apis/events.k8s.io/v1/namespaces/shop/events", &[]);
    assert_eq!(
        (create.resource.as_str(), create.verb, create.namespace),
        ("events", "create", Some("shop".into()))
    );
    let patch = a(
        "PATCH",
        "/apis/events.k8s.io/v1/namespaces/shop/events/e1",
        &[],
    );
    assert_eq!(patch.verb, "patch");
    let ns = a("GET", "/api/v1/namespaces", &[]);
    assert_eq!((ns.resource.as_str(), ns.verb), ("namespaces", "list"));
    let one = a("GET", "/api/v1/namespaces/shop", &[]);
    assert_eq!((one.resource.as_str(), one.verb), ("namespaces", "get"));
    assert!(req("GET", "/version", &[]).access().is_none());
}

#[test]
fn selectors_match_labels_and_fields() {
    let pod = json!({"metadata": {"name": "a", "namespace": "shop",
        "labels": {"app": "web", "tier": "front"}}, "spec": {"nodeName": "n1"}});
    let f = |labels: &str, fields: &str| {
        let target = Target::parse("/api/v1/pods").unwrap();
        Filter::new(
            &target,
            &req(
                "GET",
                "/api/v1/pods",
                &[("labelSelector", labels), ("fieldSelector", fields)],
            ),
        )
        .unwrap()
        .matches(&pod)
    };
    assert!(f("app=web", "spec.nodeName=n1"));
    assert!(f("app in (db, web),tier", "metadata.namespace==shop"));
    assert!(!f("app notin (web)", ""));
    assert!(!f("", "spec.nodeName=n2"));
    assert!(f("!missing,app!=db", "spec.nodeName!=n2"));
    assert!(!f("missing", ""));
}

#[test]
fn merge_patch_follows_rfc_7386() {
    let mut doc = json!({"a": 1, "b": {"c": 2, "d": 3}});
    merge_patch(&mut doc, &json!({"a": null, "b": {"c": 5}, "e": [1]}));
    assert_eq!(doc, json!({"b": {"c": 5, "d": 3}, "e": [1]}));
}

#[test]
fn reviews_answer_from_tokens_and_grants() {
    use super::reviews::{Grant, Reviews, Subject, User};
    let mut reviews = Reviews::default();
    reviews.tokens.insert(
        "t-alice".into(),
        User {
            username: "alice".into(),
            groups: vec!["team-shop".into()],
            ..User::default()
        },
    );
    reviews.grants.push(Grant {
        subject: Subject::Group("team-shop".into()),
        namespace: Some("shop".into()),
        verb: "get".into(),
        group: "leash.dev".into(),
        resource: "egressmaps".into(),
    });
    let post = |path: &str, body: serde_json::Value| Request {
        method: "POST".into(),
        path: path.into(),
        query: Vec::new(),
        content_type: Some("application/json".into()),
        body: body.to_string().into_bytes(),
    };
    let tr = |token: &str| {
        post(
            super::TOKEN_REVIEWS,
            json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                   "spec": {"token": token}}),
        )
    };
    let (code, answer) = reviews.handle(&tr("t-alice")).unwrap();
    assert_eq!(code, 201);
    assert_eq!(answer["status"]["authenticated"], true);
    assert_eq!(answer["status"]["user"]["username"], "alice");
    let (code, answer) = reviews.handle(&tr("nope")).unwrap();
    assert_eq!(code, 201);
    assert!(answer["status"].get("authenticated").is_none());
    assert_eq!(reviews.handle(&tr("")).unwrap().0, 422);

    // A node-bound token for audience `leash`: authenticated for it only, with its node.
    reviews.tokens.insert(
        "t-agent".into(),
        User {
            username: "system:serviceaccount:leash-system:leash-agent".into(),
            extra: [(
                "authentication.kubernetes.io/node-name".to_owned(),
                vec!["node-a".to_owned()],
            )]
            .into(),
            audiences: vec!["leash".into()],
            ..User::default()
        },
    );
    let tr_for = |token: &str, audiences: serde_json::Value| {
        post(
            super::TOKEN_REVIEWS,
            json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                   "spec": {"token": token, "audiences": audiences}}),
        )
    };
    let (_, answer) = reviews
        .handle(&tr_for("t-agent", json!(["leash"])))
        .unwrap();
    assert_eq!(answer["status"]["authenticated"], true);
    assert_eq!(answer["status"]["audiences"], json!(["leash"]));
    assert_eq!(
        answer["status"]["user"]["extra"]["authentication.kubernetes.io/node-name"],
        json!(["node-a"])
    );
    let (_, answer) = reviews.handle(&tr("t-agent")).unwrap();
    assert!(answer["status"].get("authenticated").is_none());
    assert!(
        answer["status"]["error"]
            .as_str()
            .unwrap()
            .contains("is invalid for the target audiences")
    );
    // The UI's token is the API server's: not for `leash`.
    let (_, answer) = reviews
        .handle(&tr_for("t-alice", json!(["leash"])))
        .unwrap();
    assert!(answer["status"].get("authenticated").is_none());

    let sar = |ns: Option<&str>| {
        let mut attributes = json!({"verb": "get", "group": "leash.dev", "resource": "egressmaps"});
        if let Some(ns) = ns {
            attributes["namespace"] = json!(ns);
        }
        post(
            super::ACCESS_REVIEWS,
            json!({"kind": "SubjectAccessReview", "apiVersion": "authorization.k8s.io/v1",
                   "spec": {"user": "alice", "groups": ["team-shop"],
                            "resourceAttributes": attributes}}),
        )
    };
    let allowed = |ns| reviews.handle(&sar(ns)).unwrap().1["status"]["allowed"].clone();
    assert_eq!(allowed(Some("shop")), true);
    assert_eq!(allowed(Some("bank")), false);
    // A RoleBinding does not grant all namespaces.
    assert_eq!(allowed(None), false);

    reviews.refuse = Some(403);
    let (code, answer) = reviews.handle(&sar(Some("shop"))).unwrap();
    assert_eq!((code, answer["reason"].as_str()), (403, Some("Forbidden")));
    assert!(reviews.handle(&req("GET", "/api/v1/pods", &[])).is_none());
}
