//! A real HTTP git server for tests: `git http-backend` (from the installed git, found with
//! `git --exec-path`) run as a CGI program behind a small HTTP server on 127.0.0.1, serving the
//! smart HTTP protocol (`info/refs`, `git-upload-pack`, `git-receive-pack`) for every bare
//! repository under a root directory.
//!
//! Every request must carry the server's token, as GitHub and GitLab require for git over
//! HTTPS: HTTP Basic with any user name and the token as the password (or `Authorization:
//! Bearer TOKEN`). Others get `401` with `WWW-Authenticate: Basic realm="leash-lab git"`, which
//! makes the git command ask its credential helpers and retry with credentials. Every request is
//! recorded ([`GitRequest`]) with its method, path, user and whether it was let in.
//!
//! [`GitServer::start_tls`] serves HTTPS instead, with a certificate from a
//! [`TestCa`](crate::forge::TestCa) made for the run.
//!
//! Bodies are streamed both ways (a push's pack goes straight to the backend's stdin, a clone's
//! pack straight from its stdout); a request body over [`MAX_GIT_BODY`] is refused, the CGI
//! headers are bounded too. The backend runs with `GIT_HTTP_EXPORT_ALL` and `http.receivepack`
//! set and a configuration isolated from the machine's.
//!
//! [`create_bare_repo`] makes a bare repository with one commit on `main` (fixed author and
//! dates, so its commit id is the same on every run); [`git`] runs the git command isolated
//! from the user's and system's configuration, for the tests' own checks.
//!
//! ```no_run
//! # fn main() -> Result<(), leash_lab::git_server::Error> {
//! use leash_lab::git_server::{GitServer, create_bare_repo, git};
//! let root = std::env::temp_dir().join("repos");
//! create_bare_repo(&root, "policies.git", &[("README.md", "policies\n")])?;
//! let token = leash_lab::forge::random_token("lab_");
//! let server = GitServer::start(&root, &token)?;
//! let url = server.url_with_credentials("policies.git");
//! git(&root, &["clone", &url, "checkout"])?;
//! # Ok(()) }
//! ```

use std::io::{self as stdio, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request as HttpRequest, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};

use crate::forge::{Loopback, TestCa, lock};

/// Request bodies (pushes' packs) larger than this are refused with 413.
pub const MAX_GIT_BODY: usize = 256 << 20;
/// The CGI header block may not be larger than this.
const MAX_CGI_HEADERS: usize = 64 << 10;
/// What is kept of the backend's stderr per request.
const MAX_STDERR: u64 = 64 << 10;
/// The realm of the `WWW-Authenticate` challenge.
pub const REALM: &str = "leash-lab git";

/// Fixed identity and dates for the commits the helpers make.
const IDENTITY: [(&str, &str); 6] = [
    ("GIT_AUTHOR_NAME", "leash-lab"),
    ("GIT_AUTHOR_EMAIL", "lab@leash.test"),
    ("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z"),
    ("GIT_COMMITTER_NAME", "leash-lab"),
    ("GIT_COMMITTER_EMAIL", "lab@leash.test"),
    ("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z"),
];

/// What can go wrong setting up or querying repositories and the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// git (or its `git-http-backend`) is not installed; `scripts/setup.sh` installs it.
    #[error("git is unavailable: {0}")]
    Unavailable(String),
    /// A file or socket operation failed.
    #[error("{what}")]
    Io {
        /// What was attempted, naming the file.
        what: String,
        /// The OS error.
        source: stdio::Error,
    },
    /// A git command failed.
    #[error("`git {args}` in {dir} failed ({status}): {stderr}")]
    Git {
        /// The arguments.
        args: String,
        /// The directory it ran in.
        dir: PathBuf,
        /// The exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
}

/// One request the git server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitRequest {
    /// `GET` or `POST`.
    pub method: String,
    /// The path as sent, e.g. `/policies.git/info/refs`.
    pub path: String,
    /// The raw query, e.g. `service=git-receive-pack`.
    pub query: String,
    /// The Basic user name, when the request carried credentials.
    pub user: Option<String>,
    /// Whether the token was right (the request reached the backend).
    pub authorized: bool,
    /// The `User-Agent`, e.g. `git/2.47.3`.
    pub user_agent: Option<String>,
    /// The declared `Content-Length` (`None` for a chunked body, as git sends large packs).
    pub content_length: Option<u64>,
}

impl GitRequest {
    /// The service asked for: `git-upload-pack` (fetch, clone) or `git-receive-pack` (push).
    pub fn service(&self) -> Option<&str> {
        if let Some(s) = self.query.strip_prefix("service=") {
            return Some(s.split('&').next().unwrap_or(s));
        }
        self.path
            .rsplit('/')
            .next()
            .filter(|s| s.starts_with("git-"))
    }
}

struct Shared {
    token: String,
    root: PathBuf,
    backend: PathBuf,
    requests: Mutex<Vec<GitRequest>>,
    stderr: Mutex<String>,
}

/// The HTTP git server. See the module docs.
pub struct GitServer {
    shared: Arc<Shared>,
    server: Loopback,
}

impl GitServer {
    /// Serves the bare repositories under `root` over HTTP to clients presenting `token`.
    pub fn start(root: &Path, token: &str) -> Result<Self, Error> {
        Self::start_with(root, token, None)
    }

    /// [`Self::start`] over HTTPS, with a certificate from `ca` (git must be told to trust it:
    /// `-c http.sslCAInfo=FILE` with [`TestCa::ca_pem`] in FILE).
    pub fn start_tls(root: &Path, token: &str, ca: &TestCa) -> Result<Self, Error> {
        Self::start_with(root, token, Some(ca))
    }

    fn start_with(root: &Path, token: &str, tls: Option<&TestCa>) -> Result<Self, Error> {
        let backend = http_backend()?;
        let root = root.canonicalize().map_err(|source| Error::Io {
            what: format!("resolving {}", root.display()),
            source,
        })?;
        let shared = Arc::new(Shared {
            token: token.to_owned(),
            root,
            backend,
            requests: Mutex::default(),
            stderr: Mutex::default(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let server = Loopback::start("git-server", app, tls).map_err(|source| Error::Io {
            what: "starting the git HTTP server".into(),
            source,
        })?;
        Ok(GitServer { shared, server })
    }

    /// `http://127.0.0.1:PORT` (`https://` when started with [`Self::start_tls`]).
    pub fn base_url(&self) -> String {
        self.server.base_url()
    }

    /// The URL of repository `name` (a path under the root, e.g. `policies.git`), without
    /// credentials.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{}", self.base_url(), name.trim_start_matches('/'))
    }

    /// The URL of `name` with the token in it (`http://x-access-token:TOKEN@…`), for the tests'
    /// own git commands (a product never puts a token in a URL it might log or store).
    pub fn url_with_credentials(&self, name: &str) -> String {
        let base = self.base_url();
        let (scheme, host) = base.split_once("://").unwrap_or(("http", &base));
        format!(
            "{scheme}://x-access-token:{}@{host}/{}",
            self.shared.token,
            name.trim_start_matches('/')
        )
    }

    /// The directory served.
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// The token clients must present.
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// Every request so far, in order.
    pub fn requests(&self) -> Vec<GitRequest> {
        lock(&self.shared.requests).clone()
    }

    /// What the backend printed on stderr so far (bounded), for failure messages.
    pub fn backend_stderr(&self) -> String {
        lock(&self.shared.stderr).clone()
    }
}

/// The installed `git-http-backend`.
fn http_backend() -> Result<PathBuf, Error> {
    let out = Command::new("git")
        .arg("--exec-path")
        .output()
        .map_err(|e| Error::Unavailable(format!("cannot run `git --exec-path`: {e}")))?;
    if !out.status.success() {
        return Err(Error::Unavailable(format!(
            "`git --exec-path` failed ({})",
            out.status
        )));
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let backend = Path::new(&dir).join("git-http-backend");
    if backend.is_file() {
        Ok(backend)
    } else {
        Err(Error::Unavailable(format!(
            "{} does not exist",
            backend.display()
        )))
    }
}

/// The user name of a request with the right token (`Some("")` for a bearer token), or `None`.
fn authorize(headers: &HeaderMap, token: &str) -> (Option<String>, bool) {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return (None, false);
    };
    let Some((scheme, rest)) = value.split_once(' ') else {
        return (None, false);
    };
    if scheme.eq_ignore_ascii_case("bearer") {
        return (Some(String::new()), rest.trim() == token);
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return (None, false);
    }
    let Some(decoded) = base64_decode(rest.trim()) else {
        return (None, false);
    };
    let decoded = String::from_utf8_lossy(&decoded).into_owned();
    match decoded.split_once(':') {
        Some((user, password)) => (Some(user.to_owned()), password == token),
        None => (Some(decoded), false),
    }
}

/// Standard base64 (with or without padding); `None` if malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Decodes `%XX` escapes of a path (CGI's `PATH_INFO` is decoded).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn plain(status: StatusCode, text: &str) -> Response {
    let mut r = Response::new(Body::from(text.to_owned()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Answers one request: refuses it without the token, else runs the backend on it.
async fn handle(State(shared): State<Arc<Shared>>, request: HttpRequest) -> Response {
    let (parts, body) = request.into_parts();
    let header = |name: &HeaderName| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (user, authorized) = authorize(&parts.headers, &shared.token);
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    lock(&shared.requests).push(GitRequest {
        method: parts.method.as_str().to_owned(),
        path: path.clone(),
        query: query.clone(),
        user: user.clone(),
        authorized,
        user_agent: header(&header::USER_AGENT),
        content_length: header(&header::CONTENT_LENGTH).and_then(|v| v.parse().ok()),
    });
    if !authorized {
        let mut r = plain(StatusCode::UNAUTHORIZED, "authentication required\n");
        if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{REALM}\"")) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        return r;
    }
    let content_length = header(&header::CONTENT_LENGTH);
    if content_length
        .as_deref()
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_GIT_BODY)
    {
        return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    }

    let mut cmd = Command::new(&shared.backend);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &shared.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        // Command-line configuration: pushes allowed, and repositories made by another user
        // (a test running unprivileged against a root-made fixture) still served.
        .env("GIT_CONFIG_COUNT", "2")
        .env("GIT_CONFIG_KEY_0", "http.receivepack")
        .env("GIT_CONFIG_VALUE_0", "true")
        .env("GIT_CONFIG_KEY_1", "safe.directory")
        .env("GIT_CONFIG_VALUE_1", "*")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", percent_decode(&path))
        .env("QUERY_STRING", &query)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REMOTE_USER", user.as_deref().unwrap_or("token"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(v) = header(&header::CONTENT_TYPE) {
        cmd.env("CONTENT_TYPE", v);
    }
    if let Some(v) = content_length {
        cmd.env("CONTENT_LENGTH", v);
    }
    // Protocol v2 and gzip-compressed fetch negotiations reach the backend as CGI variables.
    if let Some(v) = header(&HeaderName::from_static("git-protocol")) {
        cmd.env("HTTP_GIT_PROTOCOL", v);
    }
    if let Some(v) = header(&header::CONTENT_ENCODING) {
        cmd.env("HTTP_CONTENT_ENCODING", v);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("cannot run git-http-backend: {e}\n"),
            );
        }
    };
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        let _ = child.kill();
        let _ = child.wait();
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no pipes to the backend\n",
        );
    };

    // The backend's pipes are blocking: a thread each, joined to the async side by channels
    // (tokio's process support is not among the workspace's features).
    feed_stdin(body, stdin);
    let errors = shared.clone();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.take(MAX_STDERR).read_to_string(&mut text);
        if !text.is_empty() {
            lock(&errors.stderr).push_str(&text);
        }
    });
    let (head_tx, head_rx) = oneshot::channel();
    let (body_tx, body_rx) = mpsc::channel::<stdio::Result<Bytes>>(4);
    std::thread::spawn(move || relay_stdout(child, stdout, head_tx, body_tx));
    let (status, headers) = match head_rx.await {
        Ok(Ok(head)) => head,
        Ok(Err(e)) => {
            return plain(
                StatusCode::BAD_GATEWAY,
                &format!("git-http-backend answered badly: {e}\n"),
            );
        }
        Err(_) => return plain(StatusCode::BAD_GATEWAY, "git-http-backend vanished\n"),
    };
    let stream = futures::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(n, v);
        }
    }
    response
}

/// Streams the request body into the backend's stdin; past [`MAX_GIT_BODY`] it is cut off
/// (the backend then fails on the truncated pack). Closing stdin ends the request.
fn feed_stdin(body: Body, mut stdin: ChildStdin) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(4);
    std::thread::spawn(move || {
        while let Some(chunk) = rx.blocking_recv() {
            if stdin.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut data = body.into_data_stream();
        let mut total = 0usize;
        while let Some(Ok(chunk)) = data.next().await {
            total += chunk.len();
            if total > MAX_GIT_BODY || tx.send(chunk).await.is_err() {
                break;
            }
        }
    });
}

/// The CGI answer's status and headers.
type Head = (StatusCode, Vec<(String, String)>);

/// Reads the backend's answer: the header block goes to `head`, the rest to `body` in chunks.
/// If the receiver goes away (the client left, or the server stopped) the backend is killed;
/// in every case it is waited for.
fn relay_stdout(
    mut child: Child,
    stdout: ChildStdout,
    head: oneshot::Sender<Result<Head, String>>,
    body: mpsc::Sender<stdio::Result<Bytes>>,
) {
    let mut out = stdio::BufReader::new(stdout);
    let parsed = read_cgi_headers(&mut out);
    let ok = parsed.is_ok();
    if head.send(parsed).is_err() || !ok {
        let _ = child.kill();
        let _ = child.wait();
        return;
    }
    loop {
        let mut buf = vec![0u8; 64 << 10];
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                buf.truncate(n);
                if body.blocking_send(Ok(Bytes::from(buf))).is_err() {
                    let _ = child.kill();
                    break;
                }
            }
            Err(e) => {
                let _ = body.blocking_send(Err(e));
                let _ = child.kill();
                break;
            }
        }
    }
    let _ = child.wait();
}

/// Reads the CGI header block (`Status: 200 OK`, `Name: value`, …, blank line).
fn read_cgi_headers(out: &mut impl BufRead) -> Result<Head, String> {
    let mut status = StatusCode::OK;
    let mut headers = Vec::new();
    let mut total = 0usize;
    loop {
        let mut line = String::new();
        let n = out
            .take((MAX_CGI_HEADERS - total) as u64)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("no end of the CGI headers".into());
        }
        total += n;
        if total >= MAX_CGI_HEADERS {
            return Err("CGI headers too large".into());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Ok((status, headers));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("malformed CGI header {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split(' ').next().unwrap_or_default();
            status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .ok_or_else(|| format!("bad CGI status {value:?}"))?;
        } else {
            headers.push((name.to_owned(), value.to_owned()));
        }
    }
}

/// Variables of the environment that would change what the tests' git commands do: a
/// repository elsewhere, trust settings (`GIT_SSL_CAINFO` overrides `-c http.sslCAInfo`, and
/// machines set it), credentials from a helper program, another ssh.
pub const GIT_ENV_REMOVED: [&str; 12] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
    "GIT_SSL_NO_VERIFY",
    "GIT_SSL_CERT",
    "GIT_SSL_KEY",
    "GIT_ASKPASS",
    "SSH_ASKPASS",
    "GIT_SSH",
    "GIT_SSH_COMMAND",
];

/// A git command isolated from the machine's configuration (no system or global config, none
/// of [`GIT_ENV_REMOVED`], no prompts, fixed identity and dates), to which the caller adds
/// arguments and environment.
pub fn git_command() -> Command {
    let mut cmd = Command::new("git");
    for var in GIT_ENV_REMOVED {
        cmd.env_remove(var);
    }
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .envs(IDENTITY);
    cmd
}

/// Runs `git args` in `dir` (isolated, see [`git_command`]) and returns its stdout, trimmed.
pub fn git(dir: &Path, args: &[&str]) -> Result<String, Error> {
    let out = git_command()
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Unavailable(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(Error::Git {
            args: args.join(" "),
            dir: dir.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Creates the bare repository `root/name` with one commit on `main` holding `files` (paths
/// relative to the repository, directories made as needed) and returns its path. The commit's
/// author and dates are fixed, so the same files give the same commit id on every run.
pub fn create_bare_repo(root: &Path, name: &str, files: &[(&str, &str)]) -> Result<PathBuf, Error> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let io = |what: String| move |source| Error::Io { what, source };
    std::fs::create_dir_all(root).map_err(io(format!("creating {}", root.display())))?;
    let bare = root.join(name);
    let bare_s = bare.to_string_lossy().into_owned();
    git(
        root,
        &[
            "init",
            "--quiet",
            "--bare",
            "--initial-branch=main",
            &bare_s,
        ],
    )?;
    let scratch = std::env::temp_dir().join(format!(
        "leash-lab-seed-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        for (path, text) in files {
            let file = scratch.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(io(format!("creating {}", parent.display())))?;
            }
            std::fs::write(&file, text).map_err(io(format!("writing {}", file.display())))?;
        }
        std::fs::create_dir_all(&scratch).map_err(io(format!("creating {}", scratch.display())))?;
        git(&scratch, &["init", "--quiet", "--initial-branch=main"])?;
        git(&scratch, &["add", "--all"])?;
        git(
            &scratch,
            &["commit", "--quiet", "--allow-empty", "-m", "Initial commit"],
        )?;
        git(&scratch, &["push", "--quiet", &bare_s, "main"])?;
        Ok(bare.clone())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// The commit id `rev` names in `repo` (`None` if it names nothing, e.g. a branch not pushed).
pub fn rev_parse(repo: &Path, rev: &str) -> Result<Option<String>, Error> {
    let spec = format!("{rev}^{{commit}}");
    match git(repo, &["rev-parse", "--verify", "--quiet", &spec]) {
        Ok(id) => Ok(Some(id)),
        Err(Error::Git { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The branches of `repo`, sorted.
pub fn branches(repo: &Path) -> Result<Vec<String>, Error> {
    let out = git(
        repo,
        &["for-each-ref", "--format=%(refname:short)", "refs/heads/"],
    )?;
    let mut names: Vec<String> = out.lines().map(str::to_owned).collect();
    names.sort();
    Ok(names)
}

/// The files at `rev` in `repo`, sorted.
pub fn files_at(repo: &Path, rev: &str) -> Result<Vec<String>, Error> {
    let out = git(repo, &["ls-tree", "-r", "--name-only", rev])?;
    let mut names: Vec<String> = out.lines().map(str::to_owned).collect();
    names.sort();
    Ok(names)
}

/// The text of `path` at `rev` in `repo` (`None` if it does not exist there).
pub fn file_at(repo: &Path, rev: &str, path: &str) -> Result<Option<String>, Error> {
    let spec = format!("{rev}:{path}");
    let out = git_command()
        .current_dir(repo)
        .args(["cat-file", "-p", &spec])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Unavailable(format!("cannot run git: {e}")))?;
    Ok(out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Protects `branch` of the bare repository `repo` as a forge's branch protection does: a
/// `pre-receive` hook refuses every update of it (whatever the transport: HTTP, SSH or a local
/// path), with GitHub's message, so a test shows that a client never pushes to it.
pub fn protect_branch(repo: &Path, branch: &str) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let hooks = repo.join("hooks");
    let hook = hooks.join("pre-receive");
    let io = |what: String| move |source| Error::Io { what, source };
    std::fs::create_dir_all(&hooks).map_err(io(format!("creating {}", hooks.display())))?;
    let mut text = if hook.is_file() {
        std::fs::read_to_string(&hook).map_err(io(format!("reading {}", hook.display())))?
    } else {
        "#!/bin/sh\n# leash-lab: protected branches\nwhile read -r old new ref; do\n  case \"$ref\" in\n"
            .to_owned()
    };
    let tail = "  esac\ndone\nexit 0\n";
    if let Some(body) = text.strip_suffix(tail) {
        text = body.to_owned();
    }
    // Single-quoted for the shell (branch names may hold `$`, `(` or quotes).
    let quoted = branch.replace('\'', "'\\''");
    text.push_str(&format!(
        "    'refs/heads/{quoted}') echo 'error: GH006: Protected branch update failed for \
         refs/heads/{quoted}.' >&2; exit 1 ;;\n"
    ));
    text.push_str(tail);
    std::fs::write(&hook, text).map_err(io(format!("writing {}", hook.display())))?;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755))
        .map_err(io(format!("chmod {}", hook.display())))?;
    Ok(())
}

/// Where `needle` (a token, say) occurs under `dir`: every file's raw bytes (a working copy,
/// its `.git/config` and logs, a bare repository's refs and config), and, when `dir` is a
/// repository or a working copy, the content of every object (loose objects are compressed, so
/// their bytes alone would hide it). Returns the places, sorted: file paths relative to `dir`,
/// or `object <id>`. Files larger than 64 MiB are skipped.
pub fn find_text(dir: &Path, needle: &str) -> Result<Vec<String>, Error> {
    const MAX_FILE: u64 = 64 << 20;
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| Error::Io {
            what: format!("listing {}", d.display()),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file()
                && meta.len() <= MAX_FILE
                && let Ok(bytes) = std::fs::read(&path)
                && contains(&bytes, needle.as_bytes())
            {
                let rel = path.strip_prefix(dir).unwrap_or(&path);
                found.push(rel.display().to_string());
            }
        }
    }
    // Every object of the repository, decompressed, with its id.
    let out = git_command()
        .current_dir(dir)
        .args([
            "cat-file",
            "--batch-all-objects",
            "--unordered",
            "--batch=%(objectname) %(objectsize)",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Unavailable(format!("cannot run git: {e}")))?;
    if out.status.success() {
        // `<id> <size>\n<content>\n`, object after object.
        let mut rest = &out.stdout[..];
        while let Some(eol) = rest.iter().position(|b| *b == b'\n') {
            let head = String::from_utf8_lossy(&rest[..eol]).into_owned();
            let Some((id, size)) = head.split_once(' ') else {
                break;
            };
            let Ok(size) = size.parse::<usize>() else {
                break;
            };
            let start = eol + 1;
            let Some(content) = rest.get(start..start + size) else {
                break;
            };
            if contains(content, needle.as_bytes()) {
                found.push(format!("object {id}"));
            }
            rest = rest.get(start + size + 1..).unwrap_or_default();
        }
    }
    found.sort();
    found.dedup();
    Ok(found)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_basic_credentials() {
        assert_eq!(
            base64_decode("dXNlcjpwYXNz").as_deref(),
            Some(&b"user:pass"[..])
        );
        assert_eq!(base64_decode("YQ==").as_deref(), Some(&b"a"[..]));
        assert_eq!(base64_decode("YWI=").as_deref(), Some(&b"ab"[..]));
        assert_eq!(base64_decode("not base64!"), None);
    }

    #[test]
    fn authorize_wants_the_token_as_password_or_bearer() {
        let mut h = HeaderMap::new();
        assert_eq!(authorize(&h, "t0k"), (None, false));
        // "x:t0k" and "x:bad"
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eDp0MGs="),
        );
        assert_eq!(authorize(&h, "t0k"), (Some("x".into()), true));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eDpiYWQ="),
        );
        assert_eq!(authorize(&h, "t0k"), (Some("x".into()), false));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer t0k"),
        );
        assert_eq!(authorize(&h, "t0k"), (Some(String::new()), true));
    }

    #[test]
    fn service_names_the_protocol() {
        let r = |path: &str, query: &str| GitRequest {
            method: "GET".into(),
            path: path.into(),
            query: query.into(),
            user: None,
            authorized: true,
            user_agent: None,
            content_length: None,
        };
        assert_eq!(
            r("/a.git/info/refs", "service=git-receive-pack").service(),
            Some("git-receive-pack")
        );
        assert_eq!(
            r("/a.git/git-upload-pack", "").service(),
            Some("git-upload-pack")
        );
        assert_eq!(r("/a.git/HEAD", "").service(), None);
    }
}
