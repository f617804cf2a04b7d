//! TokenReview and SubjectAccessReview through the recommender's own client: who a token
//! belongs to, and whether that user may `get` the virtual resource `egressmaps.leash.dev` in
//! a namespace. The requests are built by pure functions ([`token_review`], [`access_review`]);
//! the token travels only in the TokenReview's body. The TokenReview, the token and the
//! errors are `crate::kube_review`'s, which ingest shares for agents' tokens.

use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use leash_records::access::ApiAccess;

pub use crate::kube_review::{Error, authenticated, token_review};
use crate::kube_review::{Token, create, review_token};

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
        review_token(&self.client, token, &[]).await
    }

    /// Whether `user` may `get` egressmaps in `namespace` (`""`: in every namespace).
    pub async fn allowed(&self, user: &UserInfo, namespace: &str) -> Result<bool, Error> {
        let review = access_review(user, namespace);
        let answer = create(&self.client, "SubjectAccessReview", &review).await?;
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
        let json = serde_json::to_value(token_review(&token, &[])).expect("JSON");
        assert_eq!(json["apiVersion"], "authentication.k8s.io/v1");
        assert_eq!(json["spec"]["token"], "abc.def");
    }
}
