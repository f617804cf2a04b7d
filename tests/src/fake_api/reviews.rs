//! TokenReview (`POST /apis/authentication.k8s.io/v1/tokenreviews`) and SubjectAccessReview
//! (`POST /apis/authorization.k8s.io/v1/subjectaccessreviews`), answered from what the test
//! configured: tokens and the users they stand for ([`super::FakeApi::add_token`]), and RBAC
//! grants as RoleBindings (one namespace) and ClusterRoleBindings (all namespaces) give them
//! ([`super::FakeApi::grant`]).
//!
//! Answers have the real API's shapes: `201 Created` with the review and its `status`
//! (`authenticated`, `user` with its `extra` and the `audiences` granted, or `error`;
//! `allowed`, with a `reason`); `422 Invalid` for a
//! review without a token, or without user, groups or attributes; and, after
//! [`super::FakeApi::refuse_reviews`], the API's own `401 Unauthorized` or `403 Forbidden` as
//! when the client's credentials are bad or lack `create` on the review resources.
//!
//! Audiences work as in kube-apiserver: a TokenReview without `spec.audiences` asks for the
//! API server's own ([`API_AUDIENCE`]); a token is authenticated only when its audiences
//! (the API server's unless given, as for a default ServiceAccount token) meet those asked
//! for, and `status.audiences` lists the ones they share; otherwise the real error text.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::request::Request;
use super::store::status;

/// The TokenReview collection.
pub const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// The SubjectAccessReview collection.
pub const ACCESS_REVIEWS: &str = "/apis/authorization.k8s.io/v1/subjectaccessreviews";

/// The API server's own audience: what a token without other audiences is for.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc";

/// Who a token authenticates as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The user name.
    pub username: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// The user's `extra` (a projected token's pod and node, e.g.
    /// `authentication.kubernetes.io/node-name`).
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
    /// The token's audiences; empty: [`API_AUDIENCE`].
    #[serde(default)]
    pub audiences: Vec<String>,
}

/// One RBAC grant: `verb` on `group`/`resource`, to a user or a group, in one namespace (a
/// RoleBinding) or in all (`namespace: None`, a ClusterRoleBinding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `User:NAME` or `Group:NAME`, as a binding's subject.
    pub subject: Subject,
    /// The namespace, `None` for every namespace.
    pub namespace: Option<String>,
    /// The verb, e.g. `get`.
    pub verb: String,
    /// The API group, e.g. `leash.dev`.
    pub group: String,
    /// The plural resource, e.g. `egressmaps`.
    pub resource: String,
}

/// A binding's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A user by name.
    User(String),
    /// A group by name.
    Group(String),
}

/// The configured identities and grants.
#[derive(Default)]
pub(super) struct Reviews {
    pub(super) tokens: BTreeMap<String, User>,
    pub(super) grants: Vec<Grant>,
    /// `401` or `403`: the API refuses the client's own reviews.
    pub(super) refuse: Option<u16>,
}

impl Reviews {
    /// The answer to `req` if it is a review, `None` for any other request.
    pub(super) fn handle(&self, req: &Request) -> Option<(u16, Value)> {
        let kind = match (req.method.as_str(), req.path.as_str()) {
            ("POST", TOKEN_REVIEWS) => "tokenreviews",
            ("POST", ACCESS_REVIEWS) => "subjectaccessreviews",
            _ => return None,
        };
        if let Some(code) = self.refuse {
            return Some(refused(code, kind));
        }
        let Some(body) = req.body_json() else {
            return Some((
                400,
                status(400, "BadRequest", "the request body is not JSON"),
            ));
        };
        Some(if kind == "tokenreviews" {
            self.token_review(body)
        } else {
            self.access_review(body)
        })
    }

    fn token_review(&self, mut review: Value) -> (u16, Value) {
        if review["kind"] != "TokenReview" || review["apiVersion"] != "authentication.k8s.io/v1" {
            return (
                400,
                status(400, "BadRequest", "the body is not a TokenReview"),
            );
        }
        let token = review["spec"]["token"].as_str().unwrap_or_default();
        if token.is_empty() {
            return invalid(
                "tokenreviews.authentication.k8s.io",
                "spec.token: Required value",
            );
        }
        let asked: Vec<String> = match review["spec"]["audiences"].as_array() {
            Some(a) if !a.is_empty() => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => vec![API_AUDIENCE.to_owned()],
        };
        review["status"] = match self.tokens.get(token) {
            Some(user) => {
                let own = if user.audiences.is_empty() {
                    vec![API_AUDIENCE.to_owned()]
                } else {
                    user.audiences.clone()
                };
                let shared: Vec<&String> = own.iter().filter(|a| asked.contains(a)).collect();
                if shared.is_empty() {
                    // kube-apiserver's text (Go's %q of the two lists).
                    json!({"user": {}, "error": format!(
                        "[invalid bearer token, token audiences {own:?} is invalid for the \
                         target audiences {asked:?}]")})
                } else {
                    let mut u = json!({"username": user.username,
                        "uid": format!("uid-{}", user.username), "groups": user.groups});
                    if !user.extra.is_empty() {
                        u["extra"] = json!(user.extra);
                    }
                    json!({"authenticated": true, "user": u, "audiences": shared})
                }
            }
            // The real server omits `authenticated: false` and says why in `error`.
            None => json!({"user": {}, "error": "[invalid bearer token, token lookup failed]"}),
        };
        (201, review)
    }

    fn access_review(&self, mut review: Value) -> (u16, Value) {
        if review["kind"] != "SubjectAccessReview"
            || review["apiVersion"] != "authorization.k8s.io/v1"
        {
            return (
                400,
                status(400, "BadRequest", "the body is not a SubjectAccessReview"),
            );
        }
        let spec = &review["spec"];
        let user = spec["user"].as_str().unwrap_or_default().to_owned();
        let groups: Vec<String> = spec["groups"]
            .as_array()
            .map(|g| {
                g.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if user.is_empty() && groups.is_empty() {
            return invalid(
                "subjectaccessreviews.authorization.k8s.io",
                "spec.user: Invalid value: \"\": at least one of user or group must be specified",
            );
        }
        let attributes = &spec["resourceAttributes"];
        if !attributes.is_object() || spec.get("nonResourceAttributes").is_some() {
            return invalid(
                "subjectaccessreviews.authorization.k8s.io",
                "spec.resourceAttributes: Invalid value: \"null\": exactly one of \
                 nonResourceAttributes or resourceAttributes must be specified",
            );
        }
        let field = |name: &str| attributes[name].as_str().unwrap_or_default();
        let namespace = field("namespace");
        let grant = self.grants.iter().find(|g| {
            let subject = match &g.subject {
                Subject::User(u) => *u == user,
                Subject::Group(name) => groups.contains(name),
            };
            let place = match &g.namespace {
                None => true,
                Some(ns) => !namespace.is_empty() && ns == namespace,
            };
            subject
                && place
                && g.verb == field("verb")
                && g.group == field("group")
                && g.resource == field("resource")
        });
        review["status"] = match grant {
            Some(g) => json!({"allowed": true, "reason": match &g.namespace {
                Some(ns) => format!("RBAC: allowed by RoleBinding in namespace {ns:?}"),
                None => "RBAC: allowed by ClusterRoleBinding".to_owned(),
            }}),
            None => json!({"allowed": false}),
        };
        (201, review)
    }
}

/// The API's `422 Invalid` for a review of `resource` (`plural.group`).
fn invalid(resource: &str, message: &str) -> (u16, Value) {
    (
        422,
        status(
            422,
            "Invalid",
            &format!("{resource} \"\" is invalid: {message}"),
        ),
    )
}

/// The API's own refusal of the client: `401` for bad credentials, `403` for missing RBAC.
fn refused(code: u16, resource: &str) -> (u16, Value) {
    if code == 401 {
        return (401, status(401, "Unauthorized", "Unauthorized"));
    }
    let group = if resource == "tokenreviews" {
        "authentication.k8s.io"
    } else {
        "authorization.k8s.io"
    };
    (
        code,
        status(
            code,
            "Forbidden",
            &format!(
                "{resource}.{group} is forbidden: User \"system:anonymous\" cannot create \
                 resource \"{resource}\" in API group \"{group}\" at the cluster scope"
            ),
        ),
    )
}
