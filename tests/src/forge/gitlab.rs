//! A GitLab REST v4 stand-in for merge requests (see the [module docs](super) for what every
//! stand-in does).
//!
//! Endpoints, under [`GitLab::api_url`] (`http://127.0.0.1:PORT/api/v4`); `{id}` is the
//! project's numeric id or its URL-encoded path (`group%2Fproject`; an unencoded path does not
//! match, as on GitLab):
//! - `GET /projects/{id}/merge_requests` with `state` (`opened`, `closed`, `locked`, `merged`,
//!   `all`; all by default), `source_branch`, `target_branch`, `per_page` (default 20, at most
//!   100) and `page`, newest first, with `X-Total`, `X-Page`, `X-Per-Page` and `X-Next-Page`;
//! - `POST /projects/{id}/merge_requests` with `source_branch`, `target_branch`, `title`
//!   (required), `description`, `labels`, `assignee_id(s)`, `reviewer_ids`, `milestone_id`,
//!   `remove_source_branch`, `squash`, `allow_collaboration`, `target_project_id`: 201 and the
//!   merge request; 409 `{"message":["Another open merge request already exists for this
//!   source branch: !N"]}` when one is open for the source branch;
//! - `GET /projects/{id}/merge_requests/{iid}`;
//! - `PUT /projects/{id}/merge_requests/{iid}` with `title`, `description`, `state_event`
//!   (`close`, `reopen`), `target_branch`, `labels`, … (at least one).
//!
//! Checks, in order, with GitLab's answers: the token as `PRIVATE-TOKEN: T` or `Authorization:
//! Bearer T` (401 `{"message":"401 Unauthorized"}`); a rate limit the test asked for (429, plain
//! text "Retry later", `Retry-After`, `RateLimit-Remaining: 0`, `RateLimit-Reset`); the project
//! (404 `{"message":"404 Project Not Found"}`; a missing merge request is `404 Not found`);
//! `Content-Type: application/json` on writes (415; GitLab would also take a form); JSON that
//! parses and documented fields of the right types (400 `{"error": …}`, Grape's shape, also for
//! missing required ones); a description of at most 1,048,576 characters (400
//! `{"message":{"description":["is too long (maximum is 1048576 characters)"]}}`).
//!
//! A project registered with [`GitLabBuilder::project_with_git`] carries the head commit of the
//! source branch in `sha`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request as HttpRequest, State};
use axum::response::Response;
use serde_json::{Value, json};

use super::{
    Kind, Loopback, Reply, Request, TestCa, Throttle, authorization, ceil_secs, check_fields,
    epoch_after, is_json_content, lock, read_request, timestamp,
};

/// GitLab's limit on a merge request's description, in characters.
pub const DESCRIPTION_LIMIT: usize = 1_048_576;

/// A merge request as the stand-in holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeRequest {
    /// The project's path, `group/project`.
    pub project: String,
    /// Its number in the project (`!iid`).
    pub iid: u64,
    /// `opened`, `closed` or `merged`.
    pub state: String,
    /// The title.
    pub title: String,
    /// The description, if any.
    pub description: Option<String>,
    /// The source branch.
    pub source_branch: String,
    /// The target branch.
    pub target_branch: String,
    /// How many times the API changed it after creating it (PUTs that were accepted).
    pub updates: u32,
    created_at: String,
    updated_at: String,
    closed_at: Option<String>,
}

struct Project {
    id: u64,
    path: String,
    git: Option<PathBuf>,
}

struct GitLabState {
    token: String,
    username: String,
    base_url: String,
    projects: Vec<Project>,
    merge_requests: Vec<MergeRequest>,
    requests: Vec<Request>,
    throttle: Throttle,
}

/// How to start a [`GitLab`].
#[derive(Debug, Clone)]
pub struct GitLabBuilder {
    token: String,
    username: String,
    projects: Vec<(String, Option<PathBuf>)>,
    tls: Option<TestCa>,
}

impl GitLabBuilder {
    /// Serves project `group/project` (ids are given in order from 1).
    pub fn project(mut self, path: &str) -> Self {
        self.projects.push((path.to_owned(), None));
        self
    }

    /// Serves project `group/project`, whose branches are those of the bare repository `git`.
    pub fn project_with_git(mut self, path: &str, git: &Path) -> Self {
        self.projects.push((path.to_owned(), Some(git.to_owned())));
        self
    }

    /// The username of the token's user, the author of the merge requests (default
    /// `leash-bot`).
    pub fn username(mut self, username: &str) -> Self {
        self.username = username.to_owned();
        self
    }

    /// Serves HTTPS with a certificate from `ca` (clients must trust [`TestCa::ca_pem`]).
    pub fn tls(mut self, ca: &TestCa) -> Self {
        self.tls = Some(ca.clone());
        self
    }

    /// Starts the server on 127.0.0.1.
    pub fn start(self) -> std::io::Result<GitLab> {
        let state = Arc::new(Mutex::new(GitLabState {
            token: self.token,
            username: self.username,
            base_url: String::new(),
            projects: self
                .projects
                .into_iter()
                .zip(1..)
                .map(|((path, git), id)| Project { id, path, git })
                .collect(),
            merge_requests: Vec::new(),
            requests: Vec::new(),
            throttle: Throttle::default(),
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let server = Loopback::start("gitlab-stand-in", app, self.tls.as_ref())?;
        lock(&state).base_url = server.base_url();
        Ok(GitLab { state, server })
    }
}

/// The GitLab stand-in. See the module docs.
pub struct GitLab {
    state: Arc<Mutex<GitLabState>>,
    server: Loopback,
}

impl GitLab {
    /// A builder for a stand-in accepting `token`.
    pub fn builder(token: &str) -> GitLabBuilder {
        GitLabBuilder {
            token: token.to_owned(),
            username: "leash-bot".into(),
            projects: Vec::new(),
            tls: None,
        }
    }

    /// `http://127.0.0.1:PORT` (`https://` with [`GitLabBuilder::tls`]), where the merge
    /// requests' `web_url`s point.
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The API's root, `http://127.0.0.1:PORT/api/v4`.
    pub fn api_url(&self) -> String {
        format!("{}/api/v4", self.base_url())
    }

    /// The numeric id of project `path`.
    pub fn project_id(&self, path: &str) -> Option<u64> {
        lock(&self.state)
            .projects
            .iter()
            .find(|p| p.path.eq_ignore_ascii_case(path))
            .map(|p| p.id)
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.state).requests.clone()
    }

    /// Every request so far, forgetting them.
    pub fn take_requests(&self) -> Vec<Request> {
        std::mem::take(&mut lock(&self.state).requests)
    }

    /// The merge requests of `project` (`group/project`), by iid.
    pub fn merge_requests(&self, project: &str) -> Vec<MergeRequest> {
        lock(&self.state)
            .merge_requests
            .iter()
            .filter(|m| m.project.eq_ignore_ascii_case(project))
            .cloned()
            .collect()
    }

    /// Merge request `iid` of `project`.
    pub fn merge_request(&self, project: &str, iid: u64) -> Option<MergeRequest> {
        self.merge_requests(project)
            .into_iter()
            .find(|m| m.iid == iid)
    }

    /// Closes a merge request as a user would. Returns whether it existed.
    pub fn close_merge_request(&self, project: &str, iid: u64) -> bool {
        self.user_change(project, iid, "closed")
    }

    /// Merges a merge request as a user would.
    pub fn merge_merge_request(&self, project: &str, iid: u64) -> bool {
        self.user_change(project, iid, "merged")
    }

    fn user_change(&self, project: &str, iid: u64, state: &str) -> bool {
        let mut s = lock(&self.state);
        let Some(m) = s
            .merge_requests
            .iter_mut()
            .find(|m| m.project.eq_ignore_ascii_case(project) && m.iid == iid)
        else {
            return false;
        };
        let now = timestamp(true);
        m.state = state.to_owned();
        m.closed_at = Some(now.clone());
        m.updated_at = now;
        true
    }

    /// Answers the next `count` API requests with 429, `Retry-After` (whole seconds of
    /// `retry_after`, rounded up) and `RateLimit-Reset` that far from then.
    pub fn rate_limit_next(&self, count: usize, retry_after: Duration) {
        lock(&self.state).throttle = Throttle {
            remaining: count,
            reset_after: retry_after,
            secondary: false,
            status: 429,
        };
    }
}

fn message(status: u16, text: &str) -> Reply {
    Reply::json(status, &json!({ "message": text }))
}

/// Grape's parameter errors: `{"error": "title is missing"}`.
fn bad_params(text: &str) -> Reply {
    Reply::json(400, &json!({ "error": text }))
}

async fn handle(State(state): State<Arc<Mutex<GitLabState>>>, request: HttpRequest) -> Response {
    let req = match read_request(request).await {
        Ok(req) => req,
        Err(reply) => return reply.into_response(),
    };
    let mut state = lock(&state);
    state.requests.push(req.clone());
    state.answer(&req).into_response()
}

/// Decodes `%XX` escapes of one path segment.
fn decode_segment(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl GitLabState {
    fn answer(&mut self, req: &Request) -> Reply {
        let token = req
            .header("private-token")
            .or_else(|| authorization(req, "bearer"));
        if token != Some(self.token.as_str()) {
            return message(401, "401 Unauthorized");
        }
        if self.throttle.take() {
            let after = self.throttle.reset_after;
            let reset = epoch_after(after);
            let reset_time = chrono::DateTime::from_timestamp(i64::try_from(reset).unwrap_or(0), 0)
                .map(|t| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
                .unwrap_or_default();
            return Reply::text(429, "Retry later\n")
                .with("retry-after", ceil_secs(after).to_string())
                .with("ratelimit-name", "throttle_authenticated_api")
                .with("ratelimit-limit", "2000")
                .with("ratelimit-observed", "2001")
                .with("ratelimit-remaining", "0")
                .with("ratelimit-reset", reset.to_string())
                .with("ratelimit-resettime", reset_time);
        }
        let segments: Vec<&str> = req.path.split('/').collect();
        let (id, iid) = match segments.as_slice() {
            ["", "api", "v4", "projects", id, "merge_requests"] => (*id, None),
            ["", "api", "v4", "projects", id, "merge_requests", n] => match n.parse::<u64>() {
                Ok(n) => (*id, Some(n)),
                Err(_) => return message(404, "404 Not found"),
            },
            _ => return message(404, "404 Not found"),
        };
        let id = decode_segment(id);
        let Some(project) = self
            .projects
            .iter()
            .find(|p| p.id.to_string() == id || p.path.eq_ignore_ascii_case(&id))
            .map(|p| p.path.clone())
        else {
            return message(404, "404 Project Not Found");
        };
        let write = matches!(req.method.as_str(), "POST" | "PUT");
        if write && !is_json_content(req) {
            return message(415, "415 Unsupported Media Type: send application/json");
        }
        let body = if write {
            match serde_json::from_str::<Value>(&req.body) {
                Ok(v) => Some(v),
                Err(_) => {
                    return bad_params(
                        "The provided content-type 'application/json' is not valid JSON",
                    );
                }
            }
        } else {
            None
        };
        match (req.method.as_str(), iid, body) {
            ("GET", None, _) => self.list(req, &project),
            ("POST", None, Some(body)) => self.create(&project, &body),
            ("GET", Some(n), _) => match self.find(&project, n) {
                Some(i) => Reply::json(200, &self.to_json(&self.merge_requests[i])),
                None => message(404, "404 Not found"),
            },
            ("PUT", Some(n), Some(body)) => self.update(&project, n, &body),
            _ => message(405, "405 Method Not Allowed"),
        }
    }

    fn find(&self, project: &str, iid: u64) -> Option<usize> {
        self.merge_requests
            .iter()
            .position(|m| m.project == project && m.iid == iid)
    }

    fn project(&self, path: &str) -> Option<&Project> {
        self.projects.iter().find(|p| p.path == path)
    }

    fn to_json(&self, m: &MergeRequest) -> Value {
        let project = self.project(&m.project);
        let id = project.map_or(0, |p| p.id);
        let sha = project.and_then(|p| p.git.as_deref()).and_then(|dir| {
            crate::git_server::rev_parse(dir, &format!("refs/heads/{}", m.source_branch))
                .ok()
                .flatten()
        });
        let author = json!({"id": 1, "username": self.username, "name": self.username,
                            "state": "active"});
        json!({
            "id": 10_000 + m.iid,
            "iid": m.iid,
            "project_id": id,
            "title": m.title,
            "description": m.description,
            "state": m.state,
            "created_at": m.created_at,
            "updated_at": m.updated_at,
            "closed_at": m.closed_at,
            "merged_at": if m.state == "merged" { json!(m.closed_at) } else { Value::Null },
            "target_branch": m.target_branch,
            "source_branch": m.source_branch,
            "source_project_id": id,
            "target_project_id": id,
            "author": author,
            "draft": false,
            "work_in_progress": false,
            "merge_status": "can_be_merged",
            "detailed_merge_status": "mergeable",
            "sha": sha,
            "references": {"short": format!("!{}", m.iid),
                           "full": format!("{}!{}", m.project, m.iid)},
            "web_url": format!("{}/{}/-/merge_requests/{}", self.base_url, m.project, m.iid),
        })
    }

    fn list(&self, req: &Request, project: &str) -> Reply {
        let state = req.query_param("state").unwrap_or("all");
        if !matches!(state, "opened" | "closed" | "locked" | "merged" | "all") {
            return bad_params("state does not have a valid value");
        }
        let per_page = req
            .query_param("per_page")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(20)
            .clamp(1, 100);
        let page = req
            .query_param("page")
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(1)
            .max(1);
        let mut matching: Vec<&MergeRequest> = self
            .merge_requests
            .iter()
            .filter(|m| m.project == project)
            .filter(|m| state == "all" || m.state == state)
            .filter(|m| {
                req.query_param("source_branch")
                    .is_none_or(|b| m.source_branch == b)
            })
            .filter(|m| {
                req.query_param("target_branch")
                    .is_none_or(|b| m.target_branch == b)
            })
            .collect();
        matching.sort_by_key(|m| std::cmp::Reverse(m.iid));
        let total = matching.len();
        let items: Vec<Value> = matching
            .into_iter()
            .skip((page - 1) * per_page)
            .take(per_page)
            .map(|m| self.to_json(m))
            .collect();
        let next = if page * per_page < total {
            (page + 1).to_string()
        } else {
            String::new()
        };
        Reply::json(200, &Value::Array(items))
            .with("x-total", total.to_string())
            .with("x-page", page.to_string())
            .with("x-per-page", per_page.to_string())
            .with("x-next-page", next)
    }

    fn too_long(description: Option<&str>) -> Option<Reply> {
        description
            .filter(|d| d.chars().count() > DESCRIPTION_LIMIT)
            .map(|_| {
                Reply::json(
                    400,
                    &json!({"message": {"description": [format!(
                        "is too long (maximum is {DESCRIPTION_LIMIT} characters)")]}}),
                )
            })
    }

    fn conflict(&self, project: &str, source: &str, except: Option<u64>) -> Option<Reply> {
        self.merge_requests
            .iter()
            .find(|m| {
                m.project == project
                    && m.state == "opened"
                    && m.source_branch == source
                    && Some(m.iid) != except
            })
            .map(|m| {
                Reply::json(
                    409,
                    &json!({"message": [format!(
                        "Another open merge request already exists for this source branch: !{}",
                        m.iid)]}),
                )
            })
    }

    fn create(&mut self, project: &str, body: &Value) -> Reply {
        let fields = [
            ("source_branch", Kind::Str),
            ("target_branch", Kind::Str),
            ("title", Kind::Str),
            ("description", Kind::Str),
            ("assignee_id", Kind::Int),
            ("assignee_ids", Kind::IntArray),
            ("reviewer_ids", Kind::IntArray),
            ("labels", Kind::StrOrStrArray),
            ("milestone_id", Kind::Int),
            ("remove_source_branch", Kind::Bool),
            ("allow_collaboration", Kind::Bool),
            ("squash", Kind::Bool),
            ("target_project_id", Kind::Int),
        ];
        let object = match check_fields(body, &fields) {
            Ok(o) => o,
            Err(problem) => return bad_params(&problem),
        };
        let text = |name: &str| object.get(name).and_then(Value::as_str);
        let missing: Vec<String> = ["source_branch", "target_branch", "title"]
            .into_iter()
            .filter(|f| text(f).is_none())
            .map(|f| format!("{f} is missing"))
            .collect();
        let (Some(source), Some(target), Some(title)) =
            (text("source_branch"), text("target_branch"), text("title"))
        else {
            return bad_params(&missing.join(", "));
        };
        if let Some(reply) = Self::too_long(text("description")) {
            return reply;
        }
        if source == target {
            return Reply::json(
                400,
                &json!({"message": ["You can't use same project/branch for source and target"]}),
            );
        }
        if let Some(reply) = self.conflict(project, source, None) {
            return reply;
        }
        let iid = self
            .merge_requests
            .iter()
            .filter(|m| m.project == project)
            .map(|m| m.iid)
            .max()
            .unwrap_or(0)
            + 1;
        let now = timestamp(true);
        self.merge_requests.push(MergeRequest {
            project: project.to_owned(),
            iid,
            state: "opened".into(),
            title: title.to_owned(),
            description: text("description").map(str::to_owned),
            source_branch: source.to_owned(),
            target_branch: target.to_owned(),
            updates: 0,
            created_at: now.clone(),
            updated_at: now,
            closed_at: None,
        });
        let Some(i) = self.find(project, iid) else {
            return message(404, "404 Not found");
        };
        Reply::json(201, &self.to_json(&self.merge_requests[i]))
    }

    fn update(&mut self, project: &str, iid: u64, body: &Value) -> Reply {
        let fields = [
            ("title", Kind::Str),
            ("description", Kind::Str),
            ("state_event", Kind::Str),
            ("target_branch", Kind::Str),
            ("assignee_id", Kind::Int),
            ("assignee_ids", Kind::IntArray),
            ("reviewer_ids", Kind::IntArray),
            ("labels", Kind::StrOrStrArray),
            ("add_labels", Kind::StrOrStrArray),
            ("remove_labels", Kind::StrOrStrArray),
            ("milestone_id", Kind::Int),
            ("remove_source_branch", Kind::Bool),
            ("allow_collaboration", Kind::Bool),
            ("squash", Kind::Bool),
            ("discussion_locked", Kind::Bool),
        ];
        let object = match check_fields(body, &fields) {
            Ok(o) => o,
            Err(problem) => return bad_params(&problem),
        };
        if object.is_empty() {
            let names: Vec<&str> = fields.iter().map(|(n, _)| *n).collect();
            return bad_params(&format!(
                "{} are missing, at least one parameter must be provided",
                names.join(", ")
            ));
        }
        let Some(i) = self.find(project, iid) else {
            return message(404, "404 Not found");
        };
        let text = |name: &str| object.get(name).and_then(Value::as_str);
        if let Some(reply) = Self::too_long(text("description")) {
            return reply;
        }
        let event = text("state_event");
        if let Some(e) = event
            && !matches!(e, "close" | "reopen")
        {
            return bad_params("state_event does not have a valid value");
        }
        let m = &self.merge_requests[i];
        if event == Some("reopen")
            && m.state == "closed"
            && let Some(reply) = self.conflict(project, &m.source_branch.clone(), Some(iid))
        {
            return reply;
        }
        let now = timestamp(true);
        let m = &mut self.merge_requests[i];
        if let Some(t) = text("title") {
            m.title = t.to_owned();
        }
        if let Some(d) = text("description") {
            m.description = Some(d.to_owned());
        }
        if let Some(t) = text("target_branch") {
            m.target_branch = t.to_owned();
        }
        match event {
            Some("close") if m.state == "opened" => {
                m.state = "closed".into();
                m.closed_at = Some(now.clone());
            }
            Some("reopen") if m.state == "closed" => {
                m.state = "opened".into();
                m.closed_at = None;
            }
            _ => {}
        }
        m.updated_at = now;
        m.updates += 1;
        Reply::json(200, &self.to_json(&self.merge_requests[i]))
    }
}
