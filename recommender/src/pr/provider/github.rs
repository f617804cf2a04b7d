//! GitHub REST v3 pull requests (github.com and GitHub Enterprise Server).
//!
//! - find: `GET /repos/{owner}/{repo}/pulls?head={owner}:{branch}&state=open&per_page=100`
//!   (`state=closed` for the ones a reviewer closed);
//! - create: `POST /repos/{owner}/{repo}/pulls` with `title`, `head`, `base`, `body`;
//! - update: `PATCH /repos/{owner}/{repo}/pulls/{number}` with `title` and `body`.
//!
//! Headers: `Authorization: Bearer T`, `Accept: application/vnd.github+json`,
//! `X-GitHub-Api-Version: 2022-11-28`. Rate limits: 403 or 429 with `retry-after` (secondary)
//! or `x-ratelimit-remaining: 0` and `x-ratelimit-reset` (primary, epoch seconds).

use chrono::{DateTime, Utc};
use hyper::header::{ACCEPT, AUTHORIZATION, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Api, Call, Found, Kind, Limit, PER_PAGE, Proposal, PullRequest, after, encode_path, epoch,
    header_secs, json_message,
};
use crate::https;
use crate::pr::secret::Secret;

/// GitHub's limit on a pull request's body, in characters.
pub const BODY_LIMIT: usize = 65_536;

/// The REST API version leash is written against.
pub const API_VERSION: &str = "2022-11-28";

/// The host of github.com's API, whose web interface is `github.com`.
const PUBLIC_API_HOST: &str = "api.github.com";

pub(super) struct GitHub;

/// `GET …/pulls?head=OWNER:BRANCH&state=STATE`.
fn find(project: &str, branch: &str, state: &str) -> Call {
    let (path, owner) = pulls(project);
    Call {
        method: Method::GET,
        path,
        query: vec![
            ("head", format!("{owner}:{branch}")),
            ("state", state.to_owned()),
            ("per_page", PER_PAGE.to_owned()),
        ],
        body: None,
    }
}

#[derive(Deserialize)]
struct Pull {
    number: u64,
    html_url: String,
    state: String,
    head: Head,
    #[serde(default)]
    body: Option<String>,
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "ref")]
    branch: String,
}

impl From<Pull> for Found {
    fn from(p: Pull) -> Self {
        Found {
            open: p.state == "open",
            body: p.body,
            pull: PullRequest {
                number: p.number,
                url: p.html_url,
                branch: p.head.branch,
            },
        }
    }
}

/// `/repos/{owner}/{repo}/pulls`, and the owner.
fn pulls(project: &str) -> (String, &str) {
    let owner = project.split('/').next().unwrap_or(project);
    (format!("/repos/{}/pulls", encode_path(project)), owner)
}

impl Api for GitHub {
    fn kind(&self) -> Kind {
        Kind::Github
    }

    fn max_body_chars(&self) -> usize {
        BODY_LIMIT
    }

    fn headers(&self, token: &Secret) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = vec![
            (
                ACCEPT,
                HeaderValue::from_static("application/vnd.github+json"),
            ),
            (
                HeaderName::from_static("x-github-api-version"),
                HeaderValue::from_static(API_VERSION),
            ),
        ];
        // A Secret is printable ASCII, always a valid header value.
        if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {}", token.expose())) {
            value.set_sensitive(true);
            headers.push((AUTHORIZATION, value));
        }
        headers
    }

    fn find_open(&self, project: &str, branch: &str) -> Call {
        find(project, branch, "open")
    }

    fn find_closed(&self, project: &str, branch: &str) -> Call {
        find(project, branch, "closed")
    }

    fn create(&self, project: &str, p: &Proposal<'_>) -> Call {
        Call {
            method: Method::POST,
            path: pulls(project).0,
            query: Vec::new(),
            // The head is in the project itself, so a plain branch name (no `owner:`).
            body: Some(json!({"title": p.title, "head": p.branch, "base": p.base, "body": p.body})),
        }
    }

    fn update(&self, project: &str, number: u64, p: &Proposal<'_>) -> Call {
        Call {
            method: Method::PATCH,
            path: format!("{}/{number}", pulls(project).0),
            query: Vec::new(),
            body: Some(json!({"title": p.title, "body": p.body})),
        }
    }

    fn decode_one(&self, body: &[u8]) -> serde_json::Result<Found> {
        serde_json::from_slice::<Pull>(body).map(Found::from)
    }

    fn decode_list(&self, body: &[u8]) -> serde_json::Result<Vec<Found>> {
        serde_json::from_slice::<Vec<Pull>>(body).map(|v| v.into_iter().map(Found::from).collect())
    }

    fn already_exists(&self, status: StatusCode, body: &[u8]) -> bool {
        status == StatusCode::UNPROCESSABLE_ENTITY
            && self.message(body).contains("A pull request already exists")
    }

    fn rate_limit(&self, answer: &https::Response, now: DateTime<Utc>) -> Limit {
        let status = answer.status;
        if status != StatusCode::FORBIDDEN && status != StatusCode::TOO_MANY_REQUESTS {
            return Limit::No;
        }
        if let Some(secs) = header_secs(answer, "retry-after") {
            return Limit::Until(after(now, secs));
        }
        if answer.header("x-ratelimit-remaining").map(str::trim) == Some("0") {
            return Limit::Until(header_secs(answer, "x-ratelimit-reset").and_then(epoch));
        }
        // A 403 is also a permission refusal; only its message tells a limit apart.
        if status == StatusCode::TOO_MANY_REQUESTS
            || self
                .message(&answer.body)
                .to_ascii_lowercase()
                .contains("rate limit")
        {
            return Limit::Until(None);
        }
        Limit::No
    }

    fn message(&self, body: &[u8]) -> String {
        let mut message = json_message(body);
        let details: Vec<String> = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("errors").and_then(Value::as_array).cloned())
            .unwrap_or_default()
            .iter()
            .map(|e| match e.get("message").and_then(Value::as_str) {
                Some(m) => m.to_owned(),
                None => {
                    let text = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
                    format!("{} {}", text("field"), text("code"))
                        .trim()
                        .to_owned()
                }
            })
            .filter(|m| !m.is_empty())
            .collect();
        if !details.is_empty() {
            message = format!("{message}: {}", details.join("; "));
        }
        message
    }

    fn web_root(&self, api_url: &str) -> String {
        let api_url = api_url.trim_end_matches('/');
        let host = api_url.parse::<hyper::Uri>().ok();
        if host
            .as_ref()
            .and_then(hyper::Uri::host)
            .is_some_and(|h| h.eq_ignore_ascii_case(PUBLIC_API_HOST))
        {
            return "https://github.com".to_owned();
        }
        api_url
            .strip_suffix("/api/v3")
            .unwrap_or(api_url)
            .to_owned()
    }

    fn file_url(&self, web_root: &str, project: &str, branch: &str, path: &str) -> String {
        format!(
            "{web_root}/{}/blob/{}/{}",
            encode_path(project),
            encode_path(branch),
            encode_path(path)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_root_of_github_com_and_enterprise() {
        assert_eq!(
            GitHub.web_root("https://api.github.com/"),
            "https://github.com"
        );
        assert_eq!(
            GitHub.web_root("https://ghe.example.test/api/v3"),
            "https://ghe.example.test"
        );
        assert_eq!(
            GitHub.web_root("http://127.0.0.1:8080"),
            "http://127.0.0.1:8080"
        );
    }

    #[test]
    fn validation_messages_carry_their_details() {
        let body = br#"{"message":"Validation Failed","errors":[{"resource":"PullRequest","code":"custom","message":"A pull request already exists for o:leash/all."},{"resource":"PullRequest","field":"base","code":"invalid"}]}"#;
        assert_eq!(
            GitHub.message(body),
            "Validation Failed: A pull request already exists for o:leash/all.; base invalid"
        );
        assert!(GitHub.already_exists(StatusCode::UNPROCESSABLE_ENTITY, body));
        assert!(!GitHub.already_exists(StatusCode::BAD_REQUEST, body));
    }
}
