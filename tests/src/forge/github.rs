//! A GitHub REST v3 stand-in for pull requests (see the [module docs](super) for what every
//! stand-in does).
//!
//! Endpoints, under [`GitHub::api_url`] (the server's root, or a GitHub Enterprise-style
//! prefix such as `/api/v3` set with [`GitHubBuilder::api_prefix`]):
//! - `GET /repos/{owner}/{repo}/pulls` with `state` (`open` by default, `closed`, `all`), `head`
//!   (`owner:branch`; a value without `:` is a user filter, as GitHub reads it, so a bare
//!   branch name matches nothing), `base`, `per_page` (default 30, at most 100) and `page`,
//!   newest first, with a `Link` header when there are more pages;
//! - `POST /repos/{owner}/{repo}/pulls` with `title`, `head`, `base`, `body`, `draft`,
//!   `maintainer_can_modify`, `head_repo`: 201 and the pull request; 422 "A pull request already
//!   exists for owner:branch." when one is open for the head;
//! - `GET /repos/{owner}/{repo}/pulls/{number}`;
//! - `PATCH /repos/{owner}/{repo}/pulls/{number}` with `title`, `body`, `state` (`open`,
//!   `closed`), `base`, `maintainer_can_modify`.
//!
//! Checks, in order, with GitHub's answers: a `User-Agent` (403, as GitHub refuses requests
//! without one); the token as `Authorization: Bearer T` or `token T` (401 "Bad credentials";
//! "Requires authentication" when there is none); a rate limit the test asked for (403 or 429,
//! `x-ratelimit-remaining: 0` and `x-ratelimit-reset`, or `retry-after` for a secondary limit);
//! the repository (404 "Not Found"); `Accept: application/vnd.github+json` (or
//! `application/vnd.github.v3+json`, `application/json`; else 415; the stand-in also wants it
//! present, as GitHub's documentation asks); `X-GitHub-Api-Version`, when given, `2022-11-28`
//! (else 400); `Content-Type: application/json` on writes (415); JSON that parses (400
//! "Problems parsing JSON"); documented fields of the right types and the required ones (422
//! "Invalid request."); a body of at most 65,536 characters (422 "Validation Failed", "body is
//! too long (maximum is 65536 characters)").
//!
//! A repository registered with [`GitHubBuilder::repo_with_git`] is tied to a bare repository:
//! a pull request's head and base must be branches there (422 otherwise, as on GitHub, and "No
//! commits between" when they are the same commit), and answers carry their `sha`. Without a
//! git repository, `head.sha` and `base.sha` are absent.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request as HttpRequest, State};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::{
    Kind, Loopback, Reply, Request, TestCa, Throttle, authorization, ceil_secs, check_fields,
    epoch_after, is_json_content, lock, read_request, timestamp,
};

/// GitHub's limit on a pull request's body, in characters.
pub const BODY_LIMIT: usize = 65_536;
/// The API version GitHub documents for `X-GitHub-Api-Version`.
pub const API_VERSION: &str = "2022-11-28";
const DOCS: &str = "https://docs.github.com/rest";
const CREATE_DOCS: &str = "https://docs.github.com/rest/pulls/pulls#create-a-pull-request";
const UPDATE_DOCS: &str = "https://docs.github.com/rest/pulls/pulls#update-a-pull-request";

/// A pull request as the stand-in holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// The repository, `owner/repo`.
    pub repo: String,
    /// Its number.
    pub number: u64,
    /// `open` or `closed`.
    pub state: String,
    /// Whether it was merged (by [`GitHub::merge_pull`]).
    pub merged: bool,
    /// The title.
    pub title: String,
    /// The body, if any.
    pub body: Option<String>,
    /// The head branch (without the owner).
    pub head: String,
    /// The base branch.
    pub base: String,
    /// Whether it is a draft.
    pub draft: bool,
    /// How many times the API changed it after creating it (PATCHes that were accepted).
    pub updates: u32,
    created_at: String,
    updated_at: String,
    closed_at: Option<String>,
}

struct Repo {
    full_name: String,
    git: Option<PathBuf>,
}

struct GitHubState {
    token: String,
    login: String,
    prefix: String,
    base_url: String,
    repos: Vec<Repo>,
    pulls: Vec<PullRequest>,
    requests: Vec<Request>,
    throttle: Throttle,
}

/// How to start a [`GitHub`].
#[derive(Debug, Clone)]
pub struct GitHubBuilder {
    token: String,
    login: String,
    prefix: String,
    repos: Vec<(String, Option<PathBuf>)>,
    tls: Option<TestCa>,
}

impl GitHubBuilder {
    /// Serves repository `owner/repo`.
    pub fn repo(mut self, full_name: &str) -> Self {
        self.repos.push((full_name.to_owned(), None));
        self
    }

    /// Serves repository `owner/repo`, whose branches are those of the bare repository `git`.
    pub fn repo_with_git(mut self, full_name: &str, git: &Path) -> Self {
        self.repos
            .push((full_name.to_owned(), Some(git.to_owned())));
        self
    }

    /// Serves the API under `prefix` (GitHub Enterprise Server's is `/api/v3`).
    pub fn api_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.trim_end_matches('/').to_owned();
        self
    }

    /// The login of the token's user, the author of the pull requests (default `leash-bot`).
    pub fn login(mut self, login: &str) -> Self {
        self.login = login.to_owned();
        self
    }

    /// Serves HTTPS with a certificate from `ca` (clients must trust [`TestCa::ca_pem`]).
    pub fn tls(mut self, ca: &TestCa) -> Self {
        self.tls = Some(ca.clone());
        self
    }

    /// Starts the server on 127.0.0.1.
    pub fn start(self) -> std::io::Result<GitHub> {
        let state = Arc::new(Mutex::new(GitHubState {
            token: self.token,
            login: self.login,
            prefix: self.prefix,
            base_url: String::new(),
            repos: self
                .repos
                .into_iter()
                .map(|(full_name, git)| Repo { full_name, git })
                .collect(),
            pulls: Vec::new(),
            requests: Vec::new(),
            throttle: Throttle::default(),
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let server = Loopback::start("github-stand-in", app, self.tls.as_ref())?;
        lock(&state).base_url = server.base_url();
        Ok(GitHub { state, server })
    }
}

/// The GitHub stand-in. See the module docs.
pub struct GitHub {
    state: Arc<Mutex<GitHubState>>,
    server: Loopback,
}

impl GitHub {
    /// A builder for a stand-in accepting `token`.
    pub fn builder(token: &str) -> GitHubBuilder {
        GitHubBuilder {
            token: token.to_owned(),
            login: "leash-bot".into(),
            prefix: String::new(),
            repos: Vec::new(),
            tls: None,
        }
    }

    /// `http://127.0.0.1:PORT` (`https://` with [`GitHubBuilder::tls`]), where the pull
    /// requests' `html_url`s point.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The API's root URL (what a client's `--api-url` takes): the base URL and the prefix.
    pub fn api_url(&self) -> String {
        format!("{}{}", self.base_url(), lock(&self.state).prefix)
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.state).requests.clone()
    }

    /// Every request so far, forgetting them (the next call starts afresh).
    pub fn take_requests(&self) -> Vec<Request> {
        std::mem::take(&mut lock(&self.state).requests)
    }

    /// The pull requests of `repo` (`owner/repo`), by number.
    pub fn pulls(&self, repo: &str) -> Vec<PullRequest> {
        lock(&self.state)
            .pulls
            .iter()
            .filter(|p| p.repo.eq_ignore_ascii_case(repo))
            .cloned()
            .collect()
    }

    /// Pull request `number` of `repo`.
    pub fn pull(&self, repo: &str, number: u64) -> Option<PullRequest> {
        self.pulls(repo).into_iter().find(|p| p.number == number)
    }

    /// Closes a pull request as a user would in the web interface. Returns whether it existed.
    pub fn close_pull(&self, repo: &str, number: u64) -> bool {
        self.user_change(repo, number, false)
    }

    /// Merges a pull request as a user would (it is then closed and merged).
    pub fn merge_pull(&self, repo: &str, number: u64) -> bool {
        self.user_change(repo, number, true)
    }

    fn user_change(&self, repo: &str, number: u64, merge: bool) -> bool {
        let mut state = lock(&self.state);
        let Some(p) = state
            .pulls
            .iter_mut()
            .find(|p| p.repo.eq_ignore_ascii_case(repo) && p.number == number)
        else {
            return false;
        };
        let now = timestamp(false);
        p.state = "closed".into();
        p.merged |= merge;
        p.closed_at = Some(now.clone());
        p.updated_at = now;
        true
    }

    /// Opens a pull request as someone else would (not through the API, not recorded).
    /// Returns its number.
    pub fn open_pull(&self, repo: &str, head: &str, base: &str, title: &str) -> u64 {
        let mut state = lock(&self.state);
        let repo = state
            .repos
            .iter()
            .find(|r| r.full_name.eq_ignore_ascii_case(repo))
            .map_or_else(|| repo.to_owned(), |r| r.full_name.clone());
        state.add_pull(&repo, head, base, title, None, false)
    }

    /// Answers the next `count` API requests with the primary rate limit: `status` (403 or
    /// 429), `x-ratelimit-remaining: 0` and `x-ratelimit-reset` `reset_after` from then.
    pub fn rate_limit_next(&self, count: usize, status: u16, reset_after: Duration) {
        lock(&self.state).throttle = Throttle {
            remaining: count,
            reset_after,
            secondary: false,
            status,
        };
    }

    /// Answers the next `count` API requests with a secondary rate limit: `status` (403 or
    /// 429) and `retry-after` (whole seconds of `retry_after`, rounded up).
    pub fn secondary_rate_limit_next(&self, count: usize, status: u16, retry_after: Duration) {
        lock(&self.state).throttle = Throttle {
            remaining: count,
            reset_after: retry_after,
            secondary: true,
            status,
        };
    }
}

fn error(status: u16, message: &str, docs: &str) -> Reply {
    Reply::json(
        status,
        &json!({"message": message, "documentation_url": docs, "status": status.to_string()}),
    )
}

fn validation_failed(errors: Value, docs: &str) -> Reply {
    Reply::json(
        422,
        &json!({
            "message": "Validation Failed",
            "errors": errors,
            "documentation_url": docs,
            "status": "422",
        }),
    )
}

fn invalid_request(problem: &str, docs: &str) -> Reply {
    error(422, &format!("Invalid request.\n\n{problem}"), docs)
}

fn not_found() -> Reply {
    error(404, "Not Found", DOCS)
}

async fn handle(State(state): State<Arc<Mutex<GitHubState>>>, request: HttpRequest) -> Response {
    let req = match read_request(request).await {
        Ok(req) => req,
        Err(reply) => return reply.into_response(),
    };
    let mut state = lock(&state);
    state.requests.push(req.clone());
    state.answer(&req).into_response()
}

impl GitHubState {
    fn answer(&mut self, req: &Request) -> Reply {
        if req.header("user-agent").is_none_or(str::is_empty) {
            return Reply::text(
                403,
                "Request forbidden by administrative rules. Please make sure your request has a \
                 User-Agent header (https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required).\n",
            );
        }
        let token = authorization(req, "bearer").or_else(|| authorization(req, "token"));
        match token {
            None => return error(401, "Requires authentication", DOCS),
            Some(t) if t != self.token => return error(401, "Bad credentials", DOCS),
            Some(_) => {}
        }
        if self.throttle.take() {
            return self.rate_limited();
        }
        let Some(path) = req.path.strip_prefix(self.prefix.as_str()) else {
            return not_found();
        };
        let segments: Vec<&str> = path.split('/').collect();
        let (owner, repo, number) = match segments.as_slice() {
            ["", "repos", owner, repo, "pulls"] => (*owner, *repo, None),
            ["", "repos", owner, repo, "pulls", n] => match n.parse::<u64>() {
                Ok(n) => (*owner, *repo, Some(n)),
                Err(_) => return not_found(),
            },
            _ => return not_found(),
        };
        let Some(full_name) = self
            .repos
            .iter()
            .find(|r| r.full_name.eq_ignore_ascii_case(&format!("{owner}/{repo}")))
            .map(|r| r.full_name.clone())
        else {
            return not_found();
        };
        match req.header("accept").map(str::trim) {
            Some(
                "application/vnd.github+json"
                | "application/vnd.github.v3+json"
                | "application/json",
            ) => {}
            other => {
                return error(
                    415,
                    &format!(
                        "Unsupported 'Accept' header: {:?}. Must accept 'application/vnd.github+json'.",
                        other.unwrap_or("")
                    ),
                    DOCS,
                );
            }
        }
        if let Some(v) = req.header("x-github-api-version")
            && v != API_VERSION
        {
            return error(400, &format!("API version '{v}' is not supported."), DOCS);
        }
        let write = matches!(req.method.as_str(), "POST" | "PATCH");
        if write && !is_json_content(req) {
            return error(
                415,
                "Unsupported 'Content-Type' header: the body must be application/json.",
                DOCS,
            );
        }
        let body = if write {
            match serde_json::from_str::<Value>(&req.body) {
                Ok(v) => Some(v),
                Err(_) => return error(400, "Problems parsing JSON", DOCS),
            }
        } else {
            None
        };
        match (req.method.as_str(), number, body) {
            ("GET", None, _) => self.list(req, &full_name),
            ("POST", None, Some(body)) => self.create(&full_name, &body),
            ("GET", Some(n), _) => match self.find(&full_name, n) {
                Some(i) => Reply::json(200, &self.to_json(&self.pulls[i])),
                None => not_found(),
            },
            ("PATCH", Some(n), Some(body)) => self.update(&full_name, n, &body),
            _ => not_found(),
        }
    }

    fn rate_limited(&self) -> Reply {
        let t = self.throttle;
        if t.secondary {
            error(
                t.status,
                "You have exceeded a secondary rate limit. Please wait a few minutes before you \
                 try again.",
                "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api#about-secondary-rate-limits",
            )
            .with("retry-after", ceil_secs(t.reset_after).to_string())
            .with("x-ratelimit-limit", "5000")
            .with("x-ratelimit-remaining", "4990")
            .with("x-ratelimit-used", "10")
            .with("x-ratelimit-reset", epoch_after(Duration::from_secs(3600)).to_string())
            .with("x-ratelimit-resource", "core")
        } else {
            error(
                t.status,
                "API rate limit exceeded for user ID 1.",
                "https://docs.github.com/rest/using-the-rest-api/rate-limits-for-the-rest-api",
            )
            .with("x-ratelimit-limit", "5000")
            .with("x-ratelimit-remaining", "0")
            .with("x-ratelimit-used", "5000")
            .with("x-ratelimit-reset", epoch_after(t.reset_after).to_string())
            .with("x-ratelimit-resource", "core")
        }
    }

    fn find(&self, repo: &str, number: u64) -> Option<usize> {
        self.pulls
            .iter()
            .position(|p| p.repo == repo && p.number == number)
    }

    fn git_dir(&self, repo: &str) -> Option<&Path> {
        self.repos
            .iter()
            .find(|r| r.full_name == repo)
            .and_then(|r| r.git.as_deref())
    }

    fn sha(&self, repo: &str, branch: &str) -> Option<String> {
        let dir = self.git_dir(repo)?;
        crate::git_server::rev_parse(dir, &format!("refs/heads/{branch}"))
            .ok()
            .flatten()
    }

    fn owner(repo: &str) -> &str {
        repo.split('/').next().unwrap_or(repo)
    }

    fn add_pull(
        &mut self,
        repo: &str,
        head: &str,
        base: &str,
        title: &str,
        body: Option<String>,
        draft: bool,
    ) -> u64 {
        // Pull requests and issues share their numbers; the stand-in has only pull requests.
        let number = self
            .pulls
            .iter()
            .filter(|p| p.repo == repo)
            .map(|p| p.number)
            .max()
            .unwrap_or(0)
            + 1;
        let now = timestamp(false);
        self.pulls.push(PullRequest {
            repo: repo.to_owned(),
            number,
            state: "open".into(),
            merged: false,
            title: title.to_owned(),
            body,
            head: head.to_owned(),
            base: base.to_owned(),
            draft,
            updates: 0,
            created_at: now.clone(),
            updated_at: now,
            closed_at: None,
        });
        number
    }

    fn to_json(&self, p: &PullRequest) -> Value {
        let owner = Self::owner(&p.repo);
        let name = p.repo.split_once('/').map_or("", |(_, n)| n);
        let api = format!("{}{}", self.base_url, self.prefix);
        let branch = |branch: &str| {
            let mut b = json!({
                "label": format!("{owner}:{branch}"),
                "ref": branch,
                "user": {"login": owner, "type": "Organization"},
                "repo": {"name": name, "full_name": p.repo, "private": true},
            });
            if let Some(sha) = self.sha(&p.repo, branch) {
                b["sha"] = json!(sha);
            }
            b
        };
        json!({
            "url": format!("{api}/repos/{}/pulls/{}", p.repo, p.number),
            "id": 1_000_000 + p.number,
            "node_id": format!("PR_lab{}", p.number),
            "html_url": format!("{}/{}/pull/{}", self.base_url, p.repo, p.number),
            "number": p.number,
            "state": p.state,
            "locked": false,
            "title": p.title,
            "body": p.body,
            "user": {"login": self.login, "id": 1, "type": "User"},
            "created_at": p.created_at,
            "updated_at": p.updated_at,
            "closed_at": p.closed_at,
            "merged_at": if p.merged { json!(p.closed_at) } else { Value::Null },
            "merged": p.merged,
            "draft": p.draft,
            "maintainer_can_modify": false,
            "head": branch(&p.head),
            "base": branch(&p.base),
        })
    }

    fn list(&self, req: &Request, repo: &str) -> Reply {
        let state = req.query_param("state").unwrap_or("open");
        if !matches!(state, "open" | "closed" | "all") {
            return validation_failed(
                json!([{"resource": "PullRequest", "field": "state", "code": "invalid"}]),
                "https://docs.github.com/rest/pulls/pulls#list-pull-requests",
            );
        }
        let per_page = req
            .query_param("per_page")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(30)
            .clamp(1, 100);
        let page = req
            .query_param("page")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let owner = Self::owner(repo);
        let head = req.query_param("head");
        let mut matching: Vec<&PullRequest> = self
            .pulls
            .iter()
            .filter(|p| p.repo == repo)
            .filter(|p| state == "all" || p.state == state)
            .filter(|p| req.query_param("base").is_none_or(|b| p.base == b))
            .filter(|p| match head.map(|h| h.split_once(':').ok_or(h)) {
                None => true,
                Some(Ok((user, branch))) => user.eq_ignore_ascii_case(owner) && p.head == branch,
                // Without `:`, GitHub reads the value as a user or organisation.
                Some(Err(user)) => user.eq_ignore_ascii_case(owner),
            })
            .collect();
        let ascending = req.query_param("direction") == Some("asc");
        matching.sort_by_key(|p| p.number);
        if !ascending {
            matching.reverse();
        }
        let total = matching.len();
        let items: Vec<Value> = matching
            .into_iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .map(|p| self.to_json(p))
            .collect();
        let mut reply = Reply::json(200, &Value::Array(items));
        if page * per_page < total {
            let mut query: Vec<(String, String)> = req
                .query
                .iter()
                .filter(|(k, _)| k != "page")
                .cloned()
                .collect();
            query.push(("page".into(), (page + 1).to_string()));
            let q: String = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(&query)
                .finish();
            reply = reply.with(
                "link",
                format!("<{}{}?{q}>; rel=\"next\"", self.base_url, req.path),
            );
        }
        reply
    }

    fn body_too_long(body: Option<&str>, docs: &str) -> Option<Reply> {
        body.filter(|b| b.chars().count() > BODY_LIMIT).map(|_| {
            validation_failed(
                json!([{
                    "resource": "PullRequest",
                    "code": "custom",
                    "field": "body",
                    "message": format!("body is too long (maximum is {BODY_LIMIT} characters)"),
                }]),
                docs,
            )
        })
    }

    fn already_exists(owner: &str, head: &str, docs: &str) -> Reply {
        validation_failed(
            json!([{
                "resource": "PullRequest",
                "code": "custom",
                "message": format!("A pull request already exists for {owner}:{head}."),
            }]),
            docs,
        )
    }

    fn create(&mut self, repo: &str, body: &Value) -> Reply {
        let fields = [
            ("title", Kind::Str),
            ("head", Kind::Str),
            ("head_repo", Kind::Str),
            ("base", Kind::Str),
            ("body", Kind::Str),
            ("maintainer_can_modify", Kind::Bool),
            ("draft", Kind::Bool),
            ("issue", Kind::Int),
        ];
        let object = match check_fields(body, &fields) {
            Ok(o) => o,
            Err(problem) => return invalid_request(&problem, CREATE_DOCS),
        };
        let text = |name: &str| object.get(name).and_then(Value::as_str);
        let (Some(head), Some(base), Some(title)) = (text("head"), text("base"), text("title"))
        else {
            let missing = ["head", "base", "title"]
                .into_iter()
                .find(|f| text(f).is_none())
                .unwrap_or("head");
            return invalid_request(&format!("{missing:?} wasn't supplied."), CREATE_DOCS);
        };
        if let Some(reply) = Self::body_too_long(text("body"), CREATE_DOCS) {
            return reply;
        }
        let owner = Self::owner(repo).to_owned();
        let branch = match head.split_once(':') {
            None => head,
            Some((user, branch)) if user.eq_ignore_ascii_case(&owner) => branch,
            // Forks are not modelled: another user's head is not found.
            Some(_) => "",
        };
        let invalid = |field: &str| {
            validation_failed(
                json!([{"resource": "PullRequest", "field": field, "code": "invalid"}]),
                CREATE_DOCS,
            )
        };
        if branch.is_empty() {
            return invalid("head");
        }
        if self.git_dir(repo).is_some() {
            let (Some(head_sha), Some(base_sha)) = (self.sha(repo, branch), self.sha(repo, base))
            else {
                return invalid(if self.sha(repo, branch).is_none() {
                    "head"
                } else {
                    "base"
                });
            };
            if head_sha == base_sha {
                return validation_failed(
                    json!([{
                        "resource": "PullRequest",
                        "code": "custom",
                        "message": format!("No commits between {base} and {branch}"),
                    }]),
                    CREATE_DOCS,
                );
            }
        }
        if self
            .pulls
            .iter()
            .any(|p| p.repo == repo && p.state == "open" && p.head == branch)
        {
            return Self::already_exists(&owner, branch, CREATE_DOCS);
        }
        let draft = object
            .get("draft")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let number = self.add_pull(
            repo,
            branch,
            base,
            title,
            text("body").map(str::to_owned),
            draft,
        );
        let Some(i) = self.find(repo, number) else {
            return not_found();
        };
        let answer = self.to_json(&self.pulls[i]);
        let url = answer["url"].as_str().unwrap_or_default().to_owned();
        Reply::json(201, &answer).with("location", url)
    }

    fn update(&mut self, repo: &str, number: u64, body: &Value) -> Reply {
        let fields = [
            ("title", Kind::Str),
            ("body", Kind::Str),
            ("state", Kind::Str),
            ("base", Kind::Str),
            ("maintainer_can_modify", Kind::Bool),
        ];
        let object: &Map<String, Value> = match check_fields(body, &fields) {
            Ok(o) => o,
            Err(problem) => return invalid_request(&problem, UPDATE_DOCS),
        };
        let Some(i) = self.find(repo, number) else {
            return not_found();
        };
        let text = |name: &str| object.get(name).and_then(Value::as_str);
        if let Some(reply) = Self::body_too_long(text("body"), UPDATE_DOCS) {
            return reply;
        }
        let new_state = text("state");
        if let Some(s) = new_state
            && !matches!(s, "open" | "closed")
        {
            return validation_failed(
                json!([{"resource": "PullRequest", "field": "state", "code": "invalid"}]),
                UPDATE_DOCS,
            );
        }
        let p = &self.pulls[i];
        if new_state == Some("open") && p.state == "closed" {
            if p.merged {
                return validation_failed(
                    json!([{"resource": "PullRequest", "code": "custom",
                            "message": "Cannot reopen a merged pull request."}]),
                    UPDATE_DOCS,
                );
            }
            if self
                .pulls
                .iter()
                .any(|o| o.repo == repo && o.state == "open" && o.head == p.head)
            {
                return Self::already_exists(Self::owner(repo), &p.head, UPDATE_DOCS);
            }
        }
        let now = timestamp(false);
        let p = &mut self.pulls[i];
        if let Some(t) = text("title") {
            p.title = t.to_owned();
        }
        if let Some(b) = text("body") {
            p.body = Some(b.to_owned());
        }
        if let Some(b) = text("base") {
            p.base = b.to_owned();
        }
        match new_state {
            Some("closed") if p.state == "open" => {
                p.state = "closed".into();
                p.closed_at = Some(now.clone());
            }
            Some("open") if p.state == "closed" => {
                p.state = "open".into();
                p.closed_at = None;
            }
            _ => {}
        }
        p.updated_at = now;
        p.updates += 1;
        Reply::json(200, &self.to_json(&self.pulls[i]))
    }
}
