//! Reviews with the API server, shared by the UI's gate (`serve::auth`) and the agents'
//! ingest (`ingest::identity`): the bearer [`Token`] (never shown), the TokenReview asking
//! who a token is ([`token_review`], [`authenticated`], [`review_token`]), and the one way a
//! review is sent ([`create`]: bounded by [`TIMEOUT`], errors that never hold the token).
//!
//! A review with audiences (`["leash"]` for agents' projected tokens) is authenticated only
//! when the API server says so *and* lists one of them in `status.audiences`: an
//! authenticator that ignores audiences would otherwise accept a token minted for another
//! service.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use kube::api::PostParams;

/// How long one review may take before it counts as the API server not answering.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The longest token accepted (service account tokens are about 1 KiB; OIDC ones a few).
pub const MAX_TOKEN_BYTES: usize = 16 << 10;

/// Why a review could not be made (the token's owner is not to blame: `503` for the UI,
/// `UNAVAILABLE` for agents).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed the review (e.g. `403`: the recommender may not
    /// create TokenReviews or SubjectAccessReviews), or could not be reached.
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

/// A bearer token. `Debug` and `Display` never show it; [`Token::expose`] is the one way to
/// read it, where it goes into a TokenReview.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token([redacted])")
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Token {
    /// A token from its text (surrounding whitespace dropped); `None` when empty, too long or
    /// not printable ASCII.
    pub fn parse(text: &str) -> Option<Token> {
        let t = text.trim();
        (!t.is_empty() && t.len() <= MAX_TOKEN_BYTES && t.bytes().all(|b| b.is_ascii_graphic()))
            .then(|| Token(t.to_owned()))
    }

    /// The token of an `Authorization` header's value: `Bearer TOKEN`; `None` for any other
    /// scheme or a malformed token.
    pub fn from_bearer(value: &str) -> Option<Token> {
        value.strip_prefix("Bearer ").and_then(Token::parse)
    }

    /// The token's text, for the TokenReview's body. Nothing else may call it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Its SHA-256: the key its decisions are cached under.
    pub fn digest(&self) -> [u8; 32] {
        let d = ring::digest::digest(&ring::digest::SHA256, self.0.as_bytes());
        let mut out = [0; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

/// Creates `object` (a review) with the API server, bounded by [`TIMEOUT`]; the answer is
/// the review with its `status`.
pub async fn create<K>(client: &kube::Client, what: &'static str, object: &K) -> Result<K, Error>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: kube::Api<K> = kube::Api::all(client.clone());
    tokio::time::timeout(TIMEOUT, api.create(&PostParams::default(), object))
        .await
        .map_err(|_| Error::Timeout { what })?
        .map_err(|source| Error::Api { what, source })
}

/// The user `token` authenticates as for `audiences` (`&[]`: the API server's own), `None`
/// when the API server does not authenticate it.
pub async fn review_token(
    client: &kube::Client,
    token: &Token,
    audiences: &[&str],
) -> Result<Option<UserInfo>, Error> {
    let answer = create(client, "TokenReview", &token_review(token, audiences)).await?;
    Ok(authenticated(&answer, audiences))
}

/// The TokenReview asking who `token` is, for `audiences` (none: the API server's own).
pub fn token_review(token: &Token, audiences: &[&str]) -> TokenReview {
    TokenReview {
        spec: TokenReviewSpec {
            token: token.expose().to_owned(),
            audiences: (!audiences.is_empty())
                .then(|| audiences.iter().map(|a| (*a).to_owned()).collect()),
        },
        ..TokenReview::default()
    }
}

/// The user of an answered TokenReview, if it authenticated the token with a user name (and,
/// when `audiences` were asked for, for one of them).
pub fn authenticated(review: &TokenReview, audiences: &[&str]) -> Option<UserInfo> {
    let status = review.status.as_ref()?;
    if status.authenticated != Some(true) {
        return None;
    }
    if !audiences.is_empty()
        && !status
            .audiences
            .iter()
            .flatten()
            .any(|a| audiences.contains(&a.as_str()))
    {
        return None;
    }
    status
        .user
        .clone()
        .filter(|u| u.username.as_deref().is_some_and(|n| !n.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::TokenReviewStatus;

    fn answer(authenticated: bool, name: &str, audiences: Option<&[&str]>) -> TokenReview {
        TokenReview {
            status: Some(TokenReviewStatus {
                authenticated: Some(authenticated),
                audiences: audiences.map(|a| a.iter().map(|s| (*s).to_owned()).collect()),
                user: Some(UserInfo {
                    username: Some(name.into()),
                    ..UserInfo::default()
                }),
                ..TokenReviewStatus::default()
            }),
            ..TokenReview::default()
        }
    }

    #[test]
    fn a_review_asks_for_the_token_and_its_audiences() {
        let token = Token::parse("abc.def").expect("a token");
        let json = serde_json::to_value(token_review(&token, &[])).expect("JSON");
        assert_eq!(json["apiVersion"], "authentication.k8s.io/v1");
        assert_eq!(json["kind"], "TokenReview");
        assert_eq!(json["spec"]["token"], "abc.def");
        assert!(json["spec"].get("audiences").is_none());
        let json = serde_json::to_value(token_review(&token, &["leash"])).expect("JSON");
        assert_eq!(json["spec"]["audiences"], serde_json::json!(["leash"]));
    }

    #[test]
    fn only_an_authenticated_named_user_of_the_audience_counts() {
        assert!(authenticated(&answer(true, "alice", None), &[]).is_some());
        assert!(authenticated(&answer(false, "alice", None), &[]).is_none());
        assert!(authenticated(&answer(true, "", None), &[]).is_none());
        assert!(authenticated(&TokenReview::default(), &[]).is_none());
        let leash = ["leash"];
        assert!(authenticated(&answer(true, "a", Some(&["leash"])), &leash).is_some());
        // An authenticator that ignores audiences answers without them, or with its own.
        assert!(authenticated(&answer(true, "a", None), &leash).is_none());
        let other: &[&str] = &["https://kubernetes.default.svc"];
        assert!(authenticated(&answer(true, "a", Some(other)), &leash).is_none());
    }

    #[test]
    fn tokens_are_printable_bounded_and_never_shown() {
        let token = Token::parse(" secret-value\n").expect("a token");
        assert_eq!(token.expose(), "secret-value");
        assert_eq!(format!("{token} {token:?}"), "[redacted] Token([redacted])");
        assert!(Token::parse("").is_none());
        assert!(Token::parse("a b").is_none());
        assert!(Token::parse(&"x".repeat(MAX_TOKEN_BYTES + 1)).is_none());
        assert_eq!(
            Token::from_bearer("Bearer abc").map(|t| t.digest()),
            Token::parse("abc").map(|t| t.digest())
        );
        assert!(Token::from_bearer("Basic abc").is_none());
        assert!(Token::from_bearer("Bearer ").is_none());
        assert!(Token::from_bearer("bearer abc").is_none());
    }
}
