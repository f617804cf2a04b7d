//! GitLab REST v4 merge requests (gitlab.com and self-hosted).
//!
//! - find: `GET /projects/{path}/merge_requests?source_branch={branch}&state=opened&per_page=100`
//!   (`state=closed` for the ones a reviewer closed);
//! - create: `POST /projects/{path}/merge_requests` with `source_branch`, `target_branch`,
//!   `title`, `description`;
//! - update: `PUT /projects/{path}/merge_requests/{iid}` with `title` and `description`.
//!
//! `{path}` is the project's path URL-encoded as one segment (`group%2Fsub%2Fproject`). The
//! token travels as `PRIVATE-TOKEN`. Rate limits: 429 with `Retry-After` (seconds) or
//! `RateLimit-Reset` (epoch seconds).

use chrono::{DateTime, Utc};
use hyper::header::{ACCEPT, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    Api, Call, Found, Kind, Limit, PER_PAGE, Proposal, PullRequest, after, encode_path,
    encode_segment, epoch, header_secs,
};
use crate::https;
use crate::pr::secret::Secret;

/// GitLab's limit on a merge request's description, in characters.
pub const DESCRIPTION_LIMIT: usize = 1_048_576;

pub(super) struct GitLab;

/// `GET …/merge_requests?source_branch=BRANCH&state=STATE`.
fn find(project: &str, branch: &str, state: &str) -> Call {
    Call {
        method: Method::GET,
        path: merge_requests(project),
        query: vec![
            ("source_branch", branch.to_owned()),
            ("state", state.to_owned()),
            ("per_page", PER_PAGE.to_owned()),
        ],
        body: None,
    }
}

#[derive(Deserialize)]
struct MergeRequest {
    iid: u64,
    web_url: String,
    state: String,
    source_branch: String,
    #[serde(default)]
    description: Option<String>,
}

impl From<MergeRequest> for Found {
    fn from(m: MergeRequest) -> Self {
        Found {
            open: m.state == "opened",
            body: m.description,
            pull: PullRequest {
                number: m.iid,
                url: m.web_url,
                branch: m.source_branch,
            },
        }
    }
}

fn merge_requests(project: &str) -> String {
    format!("/projects/{}/merge_requests", encode_segment(project))
}

/// The text of a message that may be a string, a list (`["…"]`) or an object of lists
/// (`{"description": ["is too long"]}`).
fn flatten(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(flatten).collect::<Vec<_>>().join("; "),
        Value::Object(fields) => fields
            .iter()
            .map(|(k, v)| format!("{k} {}", flatten(v)))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

impl Api for GitLab {
    fn kind(&self) -> Kind {
        Kind::Gitlab
    }

    fn max_body_chars(&self) -> usize {
        DESCRIPTION_LIMIT
    }

    fn headers(&self, token: &Secret) -> Vec<(HeaderName, HeaderValue)> {
        let mut headers = vec![(ACCEPT, HeaderValue::from_static("application/json"))];
        // A Secret is printable ASCII, always a valid header value.
        if let Ok(mut value) = HeaderValue::from_str(token.expose()) {
            value.set_sensitive(true);
            headers.push((HeaderName::from_static("private-token"), value));
        }
        headers
    }

    fn find_open(&self, project: &str, branch: &str) -> Call {
        find(project, branch, "opened")
    }

    fn find_closed(&self, project: &str, branch: &str) -> Call {
        find(project, branch, "closed")
    }

    fn create(&self, project: &str, p: &Proposal<'_>) -> Call {
        Call {
            method: Method::POST,
            path: merge_requests(project),
            query: Vec::new(),
            body: Some(json!({
                "source_branch": p.branch,
                "target_branch": p.base,
                "title": p.title,
                "description": p.body,
            })),
        }
    }

    fn update(&self, project: &str, number: u64, p: &Proposal<'_>) -> Call {
        Call {
            method: Method::PUT,
            path: format!("{}/{number}", merge_requests(project)),
            query: Vec::new(),
            body: Some(json!({"title": p.title, "description": p.body})),
        }
    }

    fn decode_one(&self, body: &[u8]) -> serde_json::Result<Found> {
        serde_json::from_slice::<MergeRequest>(body).map(Found::from)
    }

    fn decode_list(&self, body: &[u8]) -> serde_json::Result<Vec<Found>> {
        serde_json::from_slice::<Vec<MergeRequest>>(body)
            .map(|v| v.into_iter().map(Found::from).collect())
    }

    fn already_exists(&self, status: StatusCode, body: &[u8]) -> bool {
        status == StatusCode::CONFLICT && self.message(body).contains("already exists")
    }

    fn rate_limit(&self, answer: &https::Response, now: DateTime<Utc>) -> Limit {
        if answer.status != StatusCode::TOO_MANY_REQUESTS {
            return Limit::No;
        }
        if let Some(secs) = header_secs(answer, "retry-after") {
            return Limit::Until(after(now, secs));
        }
        Limit::Until(header_secs(answer, "ratelimit-reset").and_then(epoch))
    }

    fn message(&self, body: &[u8]) -> String {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => match v.get("message").or_else(|| v.get("error")) {
                Some(m) => flatten(m),
                None => v.to_string(),
            },
            Err(_) => String::from_utf8_lossy(body).into_owned(),
        }
    }

    fn web_root(&self, api_url: &str) -> String {
        let api_url = api_url.trim_end_matches('/');
        api_url
            .strip_suffix("/api/v4")
            .unwrap_or(api_url)
            .to_owned()
    }

    fn file_url(&self, web_root: &str, project: &str, branch: &str, path: &str) -> String {
        format!(
            "{web_root}/{}/-/blob/{}/{}",
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
    fn messages_of_every_shape() {
        assert_eq!(
            GitLab.message(br#"{"message":["Another open merge request already exists for this source branch: !1"]}"#),
            "Another open merge request already exists for this source branch: !1"
        );
        assert_eq!(
            GitLab.message(
                br#"{"message":{"description":["is too long (maximum is 1048576 characters)"]}}"#
            ),
            "description is too long (maximum is 1048576 characters)"
        );
        assert_eq!(
            GitLab.message(br#"{"error":"title is missing"}"#),
            "title is missing"
        );
        assert_eq!(GitLab.message(b"Retry later\n"), "Retry later\n");
    }

    #[test]
    fn web_root_drops_the_api_path() {
        assert_eq!(
            GitLab.web_root("https://git.example.test/gitlab/api/v4/"),
            "https://git.example.test/gitlab"
        );
    }
}
