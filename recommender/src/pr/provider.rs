//! The pull and merge request APIs: GitHub REST v3 ([`github`]) and GitLab REST v4
//! ([`gitlab`]), in three steps each: find the open one for a branch, update its title and
//! body, or create one.
//!
//! Every call goes through [`crate::https::Client`] (verified HTTPS, plain `http://` only to a
//! loopback address). The token travels in one header only and never appears in an error:
//! the providers' answers pass through [`Secret::redact`] before they go into one, bounded to
//! [`MAX_MESSAGE_CHARS`]. Rate limits are waited out when the wait is short
//! ([`Client::with_max_wait`]), and reported with their reset time otherwise.

mod github;
mod gitlab;
mod url;

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, StatusCode};
use leash_records::time::rfc3339;
use serde_json::Value;

use crate::https;
use crate::pr::secret::Secret;

pub use url::{default_api_url, infer_kind, project_from_url};

/// `User-Agent` of every request (GitHub refuses requests without one).
pub const USER_AGENT_VALUE: &str = concat!("leash/", env!("CARGO_PKG_VERSION"));

/// The longest excerpt of a provider's answer an error carries, in characters.
pub const MAX_MESSAGE_CHARS: usize = 500;

/// The longest rate limit waited out by default; a longer one fails with
/// [`Error::RateLimited`].
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(60);

/// How many times one request is retried after a rate limit before giving up.
pub const MAX_RATE_LIMIT_RETRIES: u32 = 3;

/// The wait when a rate limit gives no time (GitHub documents "at least one minute" for a
/// secondary limit without `retry-after`).
const UNKNOWN_WAIT: Duration = Duration::from_secs(60);

/// The shortest wait after a rate limit, so that a reset time already past (clock skew) does
/// not turn into a burst of retries.
const MIN_WAIT: Duration = Duration::from_secs(1);

/// Page size of the branch-filtered lists: at most one open pull request per branch is
/// expected, and the largest page both providers allow makes sure a few stale ones do not
/// hide it.
const PER_PAGE: &str = "100";

/// Errors of the providers' APIs. None of them carries the token: the providers' answers are
/// redacted before they go into one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint cannot be used: provider `none`, or a project that is not a path of the
    /// provider's form (`owner/repo`, `group/project`).
    #[error("{reason}")]
    Endpoint {
        /// What is wrong.
        reason: String,
    },
    /// The provider refused the token (401).
    #[error(
        "{provider} at {api}: the token was refused ({message}); check the token file (--token-file, or --pr-token-file of serve) or ${}",
        crate::pr::secret::TOKEN_ENV
    )]
    Unauthorized {
        /// `GitHub` or `GitLab`.
        provider: &'static str,
        /// The API's origin.
        api: String,
        /// The provider's message, redacted and bounded.
        message: String,
    },
    /// The project does not exist, or the token cannot see it (404: both providers hide
    /// private projects from tokens without access).
    #[error("{provider} at {api}: project {project} not found, or the token cannot see it")]
    NotFound {
        /// `GitHub` or `GitLab`.
        provider: &'static str,
        /// The API's origin.
        api: String,
        /// The project.
        project: String,
    },
    /// Rate limited for longer than the client waits, or still after its retries.
    #[error("{provider} at {api}: rate limited {}", until(*.reset))]
    RateLimited {
        /// `GitHub` or `GitLab`.
        provider: &'static str,
        /// The API's origin.
        api: String,
        /// When the limit resets, if the provider said.
        reset: Option<DateTime<Utc>>,
    },
    /// Any other answer than success.
    #[error("{provider} at {api}: {method} {path}: refused with {status}: {message}")]
    Refused {
        /// `GitHub` or `GitLab`.
        provider: &'static str,
        /// The API's origin.
        api: String,
        /// The method.
        method: String,
        /// The path under the API URL, without the query.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The provider's message, redacted and bounded.
        message: String,
    },
    /// The request failed before an answer, or the API URL is refused.
    #[error(transparent)]
    Http(#[from] https::Error),
    /// A success answer that is not the JSON the API documents.
    #[error(
        "{provider} at {api}: {method} {path}: the answer is not the documented JSON: {message}"
    )]
    Decode {
        /// `GitHub` or `GitLab`.
        provider: &'static str,
        /// The API's origin.
        api: String,
        /// The method.
        method: String,
        /// The path under the API URL, without the query.
        path: String,
        /// What does not decode, redacted and bounded.
        message: String,
    },
    /// The body is longer than the provider accepts; the caller links the full report
    /// instead (see [`Client::max_body_chars`]).
    #[error("{provider}: the body has {chars} characters, more than the {limit} it accepts")]
    BodyTooLong {
        /// `GitHub` or `GitLab`.
        provider: &'static str,
        /// The body's length in characters.
        chars: usize,
        /// The provider's limit.
        limit: usize,
    },
    /// The provider said a pull request is already open for the branch (another run made it
    /// at the same time), but it cannot be found.
    #[error(
        "{provider} at {api}: a pull request for branch {branch} already exists, but no open one was found"
    )]
    Vanished {
        /// `GitHub` or `GitLab`.
        provider: &'static str,
        /// The API's origin.
        api: String,
        /// The branch.
        branch: String,
    },
}

fn until(reset: Option<DateTime<Utc>>) -> String {
    match reset {
        Some(t) => format!("until {}", rfc3339(t)),
        None => "(no reset time given)".to_owned(),
    }
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The provider (`--provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Kind {
    /// GitHub or GitHub Enterprise Server: REST v3 pull requests.
    Github,
    /// GitLab or a self-hosted GitLab: REST v4 merge requests.
    Gitlab,
    /// No provider: branches are pushed, and no pull request is opened.
    None,
}

impl Kind {
    /// `GitHub`, `GitLab` or `none`, as messages name it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Github => "GitHub",
            Kind::Gitlab => "GitLab",
            Kind::None => "none",
        }
    }

    /// The user name a token goes with in git's HTTPS Basic authorization: GitHub takes
    /// `x-access-token`, GitLab `oauth2` (both among [`crate::pr::secret::BASIC_USERS`], which
    /// redaction knows).
    pub fn git_user(self) -> &'static str {
        match self {
            Kind::Gitlab => "oauth2",
            Kind::Github | Kind::None => "x-access-token",
        }
    }
}

/// Where and as whom the client calls.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The provider; not [`Kind::None`].
    pub kind: Kind,
    /// The API's root URL (`https://api.github.com`, `https://HOST/api/v3`,
    /// `https://HOST/api/v4`); see [`default_api_url`].
    pub api_url: String,
    /// The project: GitHub `owner/repo`, GitLab `group/sub/project`; see
    /// [`project_from_url`].
    pub project: String,
    /// The token.
    pub token: Secret,
    /// A CA file (PEM) to trust besides the system's roots (`--api-ca-file`).
    pub ca_file: Option<PathBuf>,
}

/// A pull request (GitHub) or merge request (GitLab).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// GitHub's number, GitLab's `iid` (`!N`).
    pub number: u64,
    /// Its web page.
    pub url: String,
    /// The head (source) branch.
    pub branch: String,
}

/// What to propose.
#[derive(Debug, Clone, Copy)]
pub struct Proposal<'a> {
    /// The head (source) branch, pushed already.
    pub branch: &'a str,
    /// The base (target) branch.
    pub base: &'a str,
    /// The title.
    pub title: &'a str,
    /// The body, markdown, at most [`Client::max_body_chars`] characters.
    pub body: &'a str,
}

/// What [`Client::open_or_update`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new pull request.
    Created(PullRequest),
    /// The open pull request of the branch, with a new title and body.
    Updated(PullRequest),
}

impl Outcome {
    /// The pull request, created or updated.
    pub fn pull_request(&self) -> &PullRequest {
        match self {
            Outcome::Created(p) | Outcome::Updated(p) => p,
        }
    }
}

/// A pull request as an answer shows it, open or not.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    pull: PullRequest,
    open: bool,
    /// The body (GitHub) or description (GitLab).
    body: Option<String>,
}

/// A request to send: path under the API URL (with its query), method, JSON body.
#[derive(Debug)]
struct Call {
    method: Method,
    path: String,
    query: Vec<(&'static str, String)>,
    body: Option<Value>,
}

/// What a rate-limited answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// Not rate limited.
    No,
    /// Rate limited until then (`None`: no time given).
    Until(Option<DateTime<Utc>>),
}

/// What differs between the providers: paths, headers, answers.
trait Api: Sync {
    fn kind(&self) -> Kind;
    fn max_body_chars(&self) -> usize;
    /// The headers besides `User-Agent` and `Content-Type`: the token, `Accept`, versions.
    fn headers(&self, token: &Secret) -> Vec<(HeaderName, HeaderValue)>;
    fn find_open(&self, project: &str, branch: &str) -> Call;
    /// The closed (and, on GitLab, merged) pull requests of `branch`, newest first.
    fn find_closed(&self, project: &str, branch: &str) -> Call;
    fn create(&self, project: &str, p: &Proposal<'_>) -> Call;
    fn update(&self, project: &str, number: u64, p: &Proposal<'_>) -> Call;
    fn decode_one(&self, body: &[u8]) -> serde_json::Result<Found>;
    fn decode_list(&self, body: &[u8]) -> serde_json::Result<Vec<Found>>;
    /// Whether a refused creation says one is already open for the branch.
    fn already_exists(&self, status: StatusCode, body: &[u8]) -> bool;
    fn rate_limit(&self, answer: &https::Response, now: DateTime<Utc>) -> Limit;
    /// The message of an error answer, unredacted and unbounded.
    fn message(&self, body: &[u8]) -> String;
    /// The web interface's root (`https://github.com`, `https://HOST`) from the API URL.
    fn web_root(&self, api_url: &str) -> String;
    fn file_url(&self, web_root: &str, project: &str, branch: &str, path: &str) -> String;
}

fn api_of(kind: Kind) -> Option<&'static dyn Api> {
    match kind {
        Kind::Github => Some(&github::GitHub),
        Kind::Gitlab => Some(&gitlab::GitLab),
        Kind::None => None,
    }
}

/// A client of one project's pull requests.
#[derive(Clone)]
pub struct Client {
    api: &'static dyn Api,
    api_url: String,
    origin: String,
    project: String,
    token: Secret,
    http: https::Client,
    max_wait: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("kind", &self.api.kind())
            .field("api", &self.origin)
            .field("project", &self.project)
            .field("token", &self.token)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `endpoint`: the API URL is checked (https, or http to a loopback
    /// address) and the CA file read before any request.
    pub fn new(endpoint: Endpoint) -> Result<Self> {
        let Some(api) = api_of(endpoint.kind) else {
            return Err(Error::Endpoint {
                reason: "provider none has no pull request API".to_owned(),
            });
        };
        let uri = https::check_url(&endpoint.api_url)?;
        let project = endpoint.project.trim_matches('/').to_owned();
        let segments: Vec<&str> = project.split('/').collect();
        let well_formed = segments
            .iter()
            .all(|s| !s.is_empty() && *s != "." && *s != "..")
            && match endpoint.kind {
                Kind::Github => segments.len() == 2,
                _ => segments.len() >= 2,
            };
        if !well_formed {
            let form = match endpoint.kind {
                Kind::Github => "owner/repo",
                _ => "group/project",
            };
            return Err(Error::Endpoint {
                reason: format!(
                    "{}: project {:?} is not of the form {form}",
                    api.kind().name(),
                    endpoint.project
                ),
            });
        }
        let http = https::Client::new(endpoint.ca_file.as_deref())?;
        Ok(Client {
            api,
            api_url: endpoint.api_url.trim_end_matches('/').to_owned(),
            origin: https::origin(&uri),
            project,
            token: endpoint.token,
            http,
            max_wait: DEFAULT_MAX_WAIT,
        })
    }

    /// The same client waiting out rate limits of at most `max_wait` (default
    /// [`DEFAULT_MAX_WAIT`]); a longer one fails at once with [`Error::RateLimited`].
    pub fn with_max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// The provider.
    pub fn kind(&self) -> Kind {
        self.api.kind()
    }

    /// The project, as given (`owner/repo`, `group/project`).
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The longest body the provider accepts, in characters (GitHub 65,536, GitLab
    /// 1,048,576).
    pub fn max_body_chars(&self) -> usize {
        self.api.max_body_chars()
    }

    /// The open pull request whose head is `branch`, if there is one (the oldest, should
    /// there be several). GitHub: `GET /repos/{owner}/{repo}/pulls?head={owner}:{branch}&state=open`;
    /// GitLab: `GET /projects/{path}/merge_requests?source_branch={branch}&state=opened`.
    pub async fn find_open(&self, branch: &str) -> Result<Option<PullRequest>> {
        let call = self.api.find_open(&self.project, branch);
        let answer = self.send(&call).await?;
        let found = self
            .api
            .decode_list(&answer.body)
            .map_err(|e| self.decode_error(&call, &e))?;
        // A server that ignores a malformed filter answers with every pull request (GitHub
        // does): keep only the branch's open ones.
        Ok(found
            .into_iter()
            .filter(|f| f.open && f.pull.branch == branch)
            .map(|f| f.pull)
            .min_by_key(|p| p.number))
    }

    /// The closed pull requests whose head is `branch`, with their bodies, newest first: what
    /// a reviewer already turned down (or merged). GitHub: `GET
    /// /repos/{owner}/{repo}/pulls?head={owner}:{branch}&state=closed`; GitLab: `GET
    /// /projects/{path}/merge_requests?source_branch={branch}&state=closed`.
    pub async fn closed(&self, branch: &str) -> Result<Vec<(PullRequest, String)>> {
        let call = self.api.find_closed(&self.project, branch);
        let answer = self.send(&call).await?;
        let found = self
            .api
            .decode_list(&answer.body)
            .map_err(|e| self.decode_error(&call, &e))?;
        let mut closed: Vec<Found> = found
            .into_iter()
            .filter(|f| !f.open && f.pull.branch == branch)
            .collect();
        closed.sort_by_key(|f| std::cmp::Reverse(f.pull.number));
        Ok(closed
            .into_iter()
            .map(|f| (f.pull, f.body.unwrap_or_default()))
            .collect())
    }

    /// Updates the open pull request of `p.branch` (title and body), or creates one. A closed
    /// one is never reopened: a new one is created. When the provider says one already
    /// exists (another run created it meanwhile), that one is found again and updated.
    pub async fn open_or_update(&self, p: &Proposal<'_>) -> Result<Outcome> {
        self.check_body(p)?;
        match self.find_open(p.branch).await? {
            Some(open) => self.update(open.number, p).await.map(Outcome::Updated),
            None => self.create(p).await,
        }
    }

    /// Creates a pull request for `p`. When the provider says one is already open for the
    /// branch (GitHub 422 "A pull request already exists", GitLab 409: a race with another
    /// run), finds it and updates it instead.
    pub async fn create(&self, p: &Proposal<'_>) -> Result<Outcome> {
        self.check_body(p)?;
        let call = self.api.create(&self.project, p);
        let answer = self.send_raw(&call).await?;
        if self.api.already_exists(answer.status, &answer.body) {
            tracing::info!(
                provider = self.api.kind().name(),
                branch = p.branch,
                "a pull request was opened meanwhile; updating it"
            );
            let Some(open) = self.find_open(p.branch).await? else {
                return Err(Error::Vanished {
                    provider: self.api.kind().name(),
                    api: self.origin.clone(),
                    branch: p.branch.to_owned(),
                });
            };
            return self.update(open.number, p).await.map(Outcome::Updated);
        }
        let answer = self.check(&call, answer)?;
        let found = self
            .api
            .decode_one(&answer.body)
            .map_err(|e| self.decode_error(&call, &e))?;
        Ok(Outcome::Created(found.pull))
    }

    /// Sets the title and body of pull request `number` (never its state).
    pub async fn update(&self, number: u64, p: &Proposal<'_>) -> Result<PullRequest> {
        self.check_body(p)?;
        let call = self.api.update(&self.project, number, p);
        let answer = self.send(&call).await?;
        let found = self
            .api
            .decode_one(&answer.body)
            .map_err(|e| self.decode_error(&call, &e))?;
        Ok(found.pull)
    }

    /// A web link to `path` on `branch` (a report committed there): GitHub
    /// `https://HOST/owner/repo/blob/BRANCH/PATH` (`github.com` for `api.github.com`, the API
    /// URL's host for Enterprise), GitLab `https://HOST/group/project/-/blob/BRANCH/PATH`.
    /// Each segment is percent-encoded.
    pub fn file_url(&self, branch: &str, path: &str) -> String {
        let root = self.api.web_root(&self.api_url);
        self.api.file_url(&root, &self.project, branch, path)
    }

    fn check_body(&self, p: &Proposal<'_>) -> Result<()> {
        let chars = p.body.chars().count();
        let limit = self.api.max_body_chars();
        if chars > limit {
            return Err(Error::BodyTooLong {
                provider: self.api.kind().name(),
                chars,
                limit,
            });
        }
        Ok(())
    }

    /// Sends `call`, waiting out rate limits, and turns any answer but success into an error.
    async fn send(&self, call: &Call) -> Result<https::Response> {
        let answer = self.send_raw(call).await?;
        self.check(call, answer)
    }

    /// Sends `call`, waiting out short rate limits; any other answer is returned.
    async fn send_raw(&self, call: &Call) -> Result<https::Response> {
        let mut url = format!("{}{}", self.api_url, call.path);
        if !call.query.is_empty() {
            let query = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&call.query)
                .finish();
            url.push('?');
            url.push_str(&query);
        }
        let body = call.body.as_ref().map(Value::to_string);
        let mut retries = 0;
        loop {
            let request = self.request(call, &url, body.as_deref())?;
            let answer = self.http.send(request).await?;
            let now = Utc::now();
            let Limit::Until(reset) = self.api.rate_limit(&answer, now) else {
                return Ok(answer);
            };
            let wait = reset.map_or(UNKNOWN_WAIT, |t| {
                (t - now).to_std().unwrap_or(Duration::ZERO).max(MIN_WAIT)
            });
            if retries >= MAX_RATE_LIMIT_RETRIES || wait > self.max_wait {
                return Err(Error::RateLimited {
                    provider: self.api.kind().name(),
                    api: self.origin.clone(),
                    reset: reset.or_else(|| chrono::Duration::from_std(wait).ok().map(|w| now + w)),
                });
            }
            retries += 1;
            tracing::warn!(
                provider = self.api.kind().name(),
                api = %self.origin,
                wait = %humantime::format_duration(wait),
                "rate limited; waiting before retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    fn request(
        &self,
        call: &Call,
        url: &str,
        body: Option<&str>,
    ) -> Result<hyper::Request<Full<Bytes>>> {
        let mut builder = hyper::Request::builder()
            .method(call.method.clone())
            .uri(url)
            .header(USER_AGENT, USER_AGENT_VALUE);
        for (name, value) in self.api.headers(&self.token) {
            builder = builder.header(name, value);
        }
        if body.is_some() {
            builder = builder.header(CONTENT_TYPE, "application/json");
        }
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_owned()));
        builder.body(Full::new(bytes)).map_err(|_| {
            Error::Http(https::Error::Url {
                url: self.origin.clone(),
                reason: "a request to this API URL cannot be built",
            })
        })
    }

    /// Success answers pass; the others become errors.
    fn check(&self, call: &Call, answer: https::Response) -> Result<https::Response> {
        let provider = self.api.kind().name();
        match answer.status {
            s if s.is_success() => Ok(answer),
            StatusCode::UNAUTHORIZED => Err(Error::Unauthorized {
                provider,
                api: self.origin.clone(),
                message: self.excerpt(&self.api.message(&answer.body)),
            }),
            StatusCode::NOT_FOUND => Err(Error::NotFound {
                provider,
                api: self.origin.clone(),
                project: self.project.clone(),
            }),
            status => Err(Error::Refused {
                provider,
                api: self.origin.clone(),
                method: call.method.to_string(),
                path: call.path.clone(),
                status: status.as_u16(),
                message: self.excerpt(&self.api.message(&answer.body)),
            }),
        }
    }

    fn decode_error(&self, call: &Call, e: &serde_json::Error) -> Error {
        Error::Decode {
            provider: self.api.kind().name(),
            api: self.origin.clone(),
            method: call.method.to_string(),
            path: call.path.clone(),
            message: self.excerpt(&e.to_string()),
        }
    }

    /// `text` as an error may show it: the token redacted, control characters (a terminal's
    /// escapes) replaced, at most [`MAX_MESSAGE_CHARS`] characters.
    fn excerpt(&self, text: &str) -> String {
        let redacted = self.token.redact(text.trim());
        let mut out: String = redacted
            .chars()
            .take(MAX_MESSAGE_CHARS)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if redacted.chars().count() > MAX_MESSAGE_CHARS {
            out.push('…');
        }
        out
    }
}

/// `s` percent-encoded as one path segment: everything but RFC 3986's unreserved
/// characters is escaped (GitLab's project ids are `group%2Fproject`).
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `path`'s segments, each percent-encoded, joined by `/`.
fn encode_path(path: &str) -> String {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// The message of a JSON error answer (`{"message": …}`, `{"error": …}`), else the text.
fn json_message(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return text.into_owned();
    };
    let field = value.get("message").or_else(|| value.get("error"));
    match field {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => text.into_owned(),
    }
}

/// A header's value as whole seconds.
fn header_secs(answer: &https::Response, name: &str) -> Option<u64> {
    answer.header(name).and_then(|v| v.trim().parse().ok())
}

/// A time `secs` seconds after the epoch.
fn epoch(secs: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(i64::try_from(secs).ok()?, 0)
}

/// `now` plus `secs` seconds.
fn after(now: DateTime<Utc>, secs: u64) -> Option<DateTime<Utc>> {
    now.checked_add_signed(chrono::Duration::seconds(i64::try_from(secs).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Secret {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "glpat-unit-secret-1234\n").expect("write");
        Secret::from_file(&path).expect("token")
    }

    #[test]
    fn debug_never_shows_the_token() {
        for kind in [Kind::Github, Kind::Gitlab] {
            let client = Client::new(Endpoint {
                kind,
                api_url: "https://git.example.test/api/v4".into(),
                project: "group/project".into(),
                token: token(),
                ca_file: None,
            })
            .expect("client");
            let shown = format!("{client:?} {client:#?}");
            assert!(!shown.contains("glpat-unit-secret-1234"), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
            assert!(shown.contains("https://git.example.test"), "{shown}");
        }
    }

    #[test]
    fn excerpts_are_redacted_bounded_and_single_line() {
        let client = Client::new(Endpoint {
            kind: Kind::Github,
            api_url: "https://api.github.com".into(),
            project: "o/r".into(),
            token: token(),
            ca_file: None,
        })
        .expect("client");
        let text = format!("bad \x1b[31mglpat-unit-secret-1234\n{}", "x".repeat(2000));
        let e = client.excerpt(&text);
        assert!(!e.contains("glpat-unit-secret-1234"), "{e}");
        assert!(e.starts_with("bad  [31m[redacted] xx"), "{e}");
        assert_eq!(e.chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("group/sub project"), "group%2Fsub%20project");
        assert_eq!(encode_segment("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(encode_path("/leash/shop ü/"), "leash/shop%20%C3%BC");
    }

    #[test]
    fn malformed_projects_and_provider_none_are_refused() {
        for (kind, project) in [
            (Kind::Github, "only"),
            (Kind::Github, "a/b/c"),
            (Kind::Gitlab, "only"),
            (Kind::Gitlab, "a//b"),
            (Kind::Gitlab, "a/../b"),
            (Kind::None, "a/b"),
        ] {
            let e = Client::new(Endpoint {
                kind,
                api_url: "https://api.github.com".into(),
                project: project.into(),
                token: token(),
                ca_file: None,
            })
            .expect_err(project);
            assert!(
                matches!(e, Error::Endpoint { .. }),
                "{kind:?} {project}: {e}"
            );
        }
    }
}
