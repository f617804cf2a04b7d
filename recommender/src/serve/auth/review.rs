//! TokenReview and SubjectAccessReview through the recommender's own client: who a token
//! belongs to, and whether that user may `get` the virtual resource `egressmaps.leash.dev` in
//! a namespace. The requests are built by pure functions ([`token_review`], [`access_review`]);
//! the token travels only in the TokenReview's body.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::PostParams;
use leash_records::access::ApiAccess;

use super::session::Token;

/// The API group of the virtual resource RBAC grants access to the egress map with.
pub const GROUP: &str = "leash.dev";

/// The virtual resource: `get` on `egressmaps` in a namespace shows that namespace's map.
pub const RESOURCE: &str = "egressmaps";

/// The verb checked.
pub const VERB: &str = "get";

/// The permissions [`Reviewer`] uses (`--ui-auth kube`): `create` on TokenReviews and
/// SubjectAccessReviews, nothing else.
pub const REVIEW_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        group: "authentication.k8s.io",
        resource: "tokenreviews",
        verbs: &["create"],
    },
    ApiAccess {
        group: "authorization.k8s.io",
        resource: "subjectaccessreviews",
        verbs: &["create"],
    },
];

/// How long one review may take before the request is answered `503`.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a review could not be made (the token's owner is not to blame: `503`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed the review (e.g. `403`: the recommender may not
    /// create TokenReviews or SubjectAccessReviews).
    #[error("the API server did not answer the {what}")]
    Api {
        /// `TokenReview` or `SubjectAccessReview`.
        what: &'static str,
        /// The client's error (it never holds the token: the body is not in it).
        source: kube::Error,
    },
    /// The API server did not answer in time.
    #[error("the {what} timed out after {TIMEOUT:?}")]
    Timeout {
        /// `TokenReview` or `SubjectAccessReview`.
        what: &'static str,
    },
    /// The API server evaluated the access review with an error and did not allow it.
    #[error("the SubjectAccessReview failed in the API server: {message}")]
    Evaluation {
        /// `status.evaluationError`.
        message: String,
    },
}

/// Reviews tokens and access with the API server.
pub struct Reviewer {
    client: kube::Client,
}

impl Reviewer {
    /// A reviewer using `client`'s credentials.
    pub fn new(client: kube::Client) -> Self {
        Reviewer { client }
    }

    /// The user `token` authenticates as, `None` when the API server does not authenticate it.
    pub async fn token(&self, token: &Token) -> Result<Option<UserInfo>, Error> {
        const WHAT: &str = "TokenReview";
        let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
        let review = token_review(token);
        let answer = tokio::time::timeout(TIMEOUT, api.create(&PostParams::default(), &review))
            .await
            .map_err(|_| Error::Timeout { what: WHAT })?
            .map_err(|source| Error::Api { what: WHAT, source })?;
        Ok(authenticated(&answer))
    }

    /// Whether `user` may `get` egressmaps in `namespace` (`""`: in every namespace).
    pub async fn allowed(&self, user: &UserInfo, namespace: &str) -> Result<bool, Error> {
        const WHAT: &str = "SubjectAccessReview";
        let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
        let review = access_review(user, namespace);
        let answer = tokio::time::timeout(TIMEOUT, api.create(&PostParams::default(), &review))
            .await
            .map_err(|_| Error::Timeout { what: WHAT })?
            .map_err(|source| Error::Api { what: WHAT, source })?;
        match answer.status {
            Some(s) if s.allowed => Ok(true),
            Some(s) => match s.evaluation_error {
                // Denied with an error: the authorizer could not decide; say so rather
                // than answer an empty map.
                Some(message) if !message.is_empty() && s.denied != Some(true) => {
                    Err(Error::Evaluation { message })
                }
                _ => Ok(false),
            },
            None => Ok(false),
        }
    }
}

/// The TokenReview asking who `token` is.
pub fn token_review(token: &Token) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: token.expose().to_owned(),
            audiences: None,
        },
        ..TokenReview::default()
    }
}

/// The user of an answered TokenReview, if it authenticated the token.
pub fn authenticated(review: &TokenReview) -> Option<UserInfo> {
    let status = review.status.as_ref()?;
    if status.authenticated != Some(true) {
        return None;
    }
    status
        .user
        .clone()
        .filter(|u| u.username.as_deref().is_some_and(|n| !n.is_empty()))
}

/// The SubjectAccessReview asking whether `user` may `get` egressmaps.leash.dev in
/// `namespace` (`""`: all namespaces, as a cluster-wide grant gives).
pub fn access_review(user: &UserInfo, namespace: &str) -> SubjectAccessReview {
    SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: user.username.clone(),
            groups: user.groups.clone(),
            uid: user.uid.clone(),
            extra: user.extra.clone(),
            resource_attributes: Some(ResourceAttributes {
                group: Some(GROUP.to_owned()),
                resource: Some(RESOURCE.to_owned()),
                verb: Some(VERB.to_owned()),
                namespace: (!namespace.is_empty()).then(|| namespace.to_owned()),
                ..ResourceAttributes::default()
            }),
            non_resource_attributes: None,
        },
        ..SubjectAccessReview::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::TokenReviewStatus;

    #[test]
    fn reviews_ask_for_the_user_and_the_virtual_resource() {
        let user = UserInfo {
            username: Some("alice".into()),
            groups: Some(vec!["team-shop".into()]),
            uid: Some("u1".into()),
            extra: None,
        };
        let json = serde_json::to_value(access_review(&user, "shop")).expect("JSON");
        assert_eq!(json["apiVersion"], "authorization.k8s.io/v1");
        assert_eq!(json["kind"], "SubjectAccessReview");
        assert_eq!(json["spec"]["user"], "alice");
        assert_eq!(json["spec"]["groups"][0], "team-shop");
        let attributes = &json["spec"]["resourceAttributes"];
        assert_eq!(attributes["group"], "leash.dev");
        assert_eq!(attributes["resource"], "egressmaps");
        assert_eq!(attributes["verb"], "get");
        assert_eq!(attributes["namespace"], "shop");
        let all = serde_json::to_value(access_review(&user, "")).expect("JSON");
        assert!(all["spec"]["resourceAttributes"].get("namespace").is_none());

        let token = Token::parse("abc.def").expect("a token");
        let json = serde_json::to_value(token_review(&token)).expect("JSON");
        assert_eq!(json["apiVersion"], "authentication.k8s.io/v1");
        assert_eq!(json["spec"]["token"], "abc.def");
    }

    #[test]
    fn only_an_authenticated_named_user_counts() {
        let answer = |authenticated, name: &str| TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                user: Some(UserInfo {
                    username: Some(name.into()),
                    ..UserInfo::default()
                }),
                ..TokenReviewStatus::default()
            }),
            ..TokenReview::default()
        };
        assert!(authenticated(&answer(true, "alice")).is_some());
        assert!(authenticated(&answer(false, "alice")).is_none());
        assert!(authenticated(&answer(true, "")).is_none());
        assert!(authenticated(&TokenReview::default()).is_none());
    }
}
