//! The GitHub and GitLab stand-ins through a real HTTP client (hyper): the pull request and
//! merge request flows, every error shape, rate limits, and what the stand-ins record.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use hyper::Request;
use hyper::header::HeaderMap;
use hyper_util::rt::TokioIo;
use leash_lab::forge::github::{self, GitHub};
use leash_lab::forge::gitlab::{self, GitLab};
use leash_lab::forge::{TestCa, random_token};
use leash_lab::git_server::{create_bare_repo, git};
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};

/// An answer: status, headers, body (JSON when it parses, else `Value::String`).
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One request on a fresh connection, within 10 s.
async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
    let uri: hyper::Uri = url.parse().unwrap();
    let authority = uri.authority().unwrap().to_string();
    let stream = tokio::net::TcpStream::connect(&authority).await.unwrap();
    exchange(stream, &uri, method, headers, body).await
}

/// [`send`] over TLS, trusting only `ca_pem`; the handshake's failure is returned.
async fn send_tls(
    ca_pem: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Answer, std::io::Error> {
    let uri: hyper::Uri = url.parse().unwrap();
    assert_eq!(uri.scheme_str(), Some("https"));
    let authority = uri.authority().unwrap().to_string();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(uri.host().unwrap().to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    Ok(exchange(tls, &uri, method, headers, None).await)
}

async fn exchange<I>(
    io: I,
    uri: &hyper::Uri,
    method: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let authority = uri.authority().unwrap().to_string();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut builder = Request::builder()
        .method(method)
        .uri(uri.path_and_query().unwrap().as_str())
        .header("host", &authority);
    for (n, v) in headers {
        builder = builder.header(*n, *v);
    }
    let request = builder
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_owned())))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("no answer within 10 s")
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(Body::new(response.into_body()), 16 << 20)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Answer {
        status,
        headers,
        body,
    }
}

// ---------------------------------------------------------------- GitHub

/// A client speaking to GitHub as its documentation asks.
struct Gh {
    api: String,
    auth: String,
}

impl Gh {
    fn new(api: String, token: &str) -> Self {
        Gh {
            api,
            auth: format!("Bearer {token}"),
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let mut headers = vec![
            ("authorization", self.auth.as_str()),
            ("accept", "application/vnd.github+json"),
            ("x-github-api-version", github::API_VERSION),
            ("user-agent", "leash-test"),
        ];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let text = body.map(|b| b.to_string());
        send(
            method,
            &format!("{}{path}", self.api),
            &headers,
            text.as_deref(),
        )
        .await
    }
}

fn github(token: &str) -> GitHub {
    GitHub::builder(token)
        .repo("acme/policies")
        .start()
        .unwrap()
}

fn pr_body(title: &str, head: &str) -> Value {
    json!({"title": title, "head": head, "base": "main", "body": "the diff"})
}

#[tokio::test]
async fn github_pull_request_flow() {
    let token = random_token("ghp_");
    let gh = github(&token);
    let c = Gh::new(gh.api_url(), &token);
    let list = "/repos/acme/policies/pulls?head=acme:leash/shop&state=open";

    let a = c.call("GET", list, None).await;
    assert_eq!((a.status, a.body.clone()), (200, json!([])));

    let a = c
        .call(
            "POST",
            "/repos/acme/policies/pulls",
            Some(pr_body("leash: shop", "leash/shop")),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["number"], 1);
    assert_eq!(a.body["state"], "open");
    assert_eq!(a.body["title"], "leash: shop");
    assert_eq!(a.body["body"], "the diff");
    assert_eq!(a.body["head"]["ref"], "leash/shop");
    assert_eq!(a.body["head"]["label"], "acme:leash/shop");
    assert_eq!(a.body["base"]["ref"], "main");
    assert_eq!(
        a.body["html_url"],
        format!("{}/acme/policies/pull/1", gh.base_url())
    );
    assert_eq!(
        a.header("location"),
        Some(format!("{}/repos/acme/policies/pulls/1", gh.api_url()).as_str())
    );
    assert!(
        a.body["head"].get("sha").is_none(),
        "no git repository, no sha"
    );

    let a = c.call("GET", list, None).await;
    let found = a.body.as_array().unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["number"], 1);
    // A bare branch name is a user filter to GitHub: it matches nothing.
    let a = c
        .call("GET", "/repos/acme/policies/pulls?head=leash/shop", None)
        .await;
    assert_eq!(a.body, json!([]));

    let a = c
        .call(
            "PATCH",
            "/repos/acme/policies/pulls/1",
            Some(json!({"title": "leash: shop (2)", "body": "new diff"})),
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(
        (a.body["title"].as_str(), a.body["body"].as_str()),
        (Some("leash: shop (2)"), Some("new diff"))
    );
    let pr = gh.pull("acme/policies", 1).unwrap();
    assert_eq!((pr.updates, pr.body.as_deref()), (1, Some("new diff")));

    // The user closes it: it is no longer open, and a new one gets a new number.
    assert!(gh.close_pull("acme/policies", 1));
    let a = c.call("GET", list, None).await;
    assert_eq!(a.body, json!([]));
    let a = c
        .call(
            "GET",
            "/repos/acme/policies/pulls?head=acme:leash/shop&state=closed",
            None,
        )
        .await;
    assert_eq!(a.body[0]["state"], "closed");
    assert!(a.body[0]["closed_at"].is_string());
    let a = c.call("GET", "/repos/acme/policies/pulls/1", None).await;
    assert_eq!((a.status, a.body["state"].as_str()), (200, Some("closed")));
    let a = c
        .call(
            "POST",
            "/repos/acme/policies/pulls",
            Some(pr_body("leash: shop", "acme:leash/shop")),
        )
        .await;
    assert_eq!((a.status, a.body["number"].as_u64()), (201, Some(2)));
    // Reopening the closed one while #2 is open: GitHub refuses.
    let a = c
        .call(
            "PATCH",
            "/repos/acme/policies/pulls/1",
            Some(json!({"state": "open"})),
        )
        .await;
    assert_eq!(a.status, 422);
    assert_eq!(
        a.body["errors"][0]["message"],
        "A pull request already exists for acme:leash/shop."
    );
    // Closing through the API.
    let a = c
        .call(
            "PATCH",
            "/repos/acme/policies/pulls/2",
            Some(json!({"state": "closed"})),
        )
        .await;
    assert_eq!((a.status, a.body["state"].as_str()), (200, Some("closed")));
    let states: Vec<_> = gh
        .pulls("acme/policies")
        .iter()
        .map(|p| p.state.clone())
        .collect();
    assert_eq!(states, ["closed", "closed"]);

    // Everything was recorded, with its headers and body.
    let requests = gh.requests();
    assert_eq!(requests.len(), 11);
    let post = &requests[1];
    assert_eq!(post.line(), "POST /repos/acme/policies/pulls");
    assert_eq!(post.header("content-type"), Some("application/json"));
    assert_eq!(post.json.as_ref().unwrap()["head"], "leash/shop");
    assert_eq!(requests[0].query_param("head"), Some("acme:leash/shop"));
    assert!(
        requests
            .iter()
            .all(|r| !r.contains_outside(&token, "authorization"))
    );
    assert_eq!(gh.take_requests().len(), 11);
    assert!(gh.requests().is_empty());
}

#[tokio::test]
async fn github_error_shapes() {
    let token = random_token("ghp_");
    let gh = github(&token);
    let c = Gh::new(gh.api_url(), &token);
    let pulls = format!("{}/repos/acme/policies/pulls", gh.api_url());

    // Authentication.
    let a = send(
        "GET",
        &pulls,
        &[
            ("user-agent", "t"),
            ("accept", "application/vnd.github+json"),
        ],
        None,
    )
    .await;
    assert_eq!(
        (a.status, a.body["message"].as_str()),
        (401, Some("Requires authentication"))
    );
    let wrong = Gh::new(gh.api_url(), "ghp_wrong");
    let a = wrong.call("GET", "/repos/acme/policies/pulls", None).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.body["message"], "Bad credentials");
    assert!(a.body["documentation_url"].is_string());
    let a = send(
        "GET",
        &pulls,
        &[
            ("user-agent", "t"),
            ("accept", "application/vnd.github+json"),
            ("authorization", &format!("token {token}")),
        ],
        None,
    )
    .await;
    assert_eq!(a.status, 200, "the `token` scheme is accepted too");
    let a = send(
        "GET",
        &pulls,
        &[("authorization", &format!("Bearer {token}"))],
        None,
    )
    .await;
    assert_eq!(a.status, 403, "no User-Agent");

    // Unknown repository, unknown pull request, unknown path.
    let a = c.call("GET", "/repos/acme/nope/pulls", None).await;
    assert_eq!(
        (a.status, a.body["message"].as_str()),
        (404, Some("Not Found"))
    );
    let a = c.call("GET", "/repos/acme/policies/pulls/9", None).await;
    assert_eq!(a.status, 404);
    let a = c.call("GET", "/repos/acme/policies/issues", None).await;
    assert_eq!(a.status, 404);

    // Headers: Accept, API version, Content-Type.
    let auth = format!("Bearer {token}");
    let a = send(
        "GET",
        &pulls,
        &[("user-agent", "t"), ("authorization", &auth)],
        None,
    )
    .await;
    assert_eq!(a.status, 415, "no Accept");
    let a = send(
        "GET",
        &pulls,
        &[
            ("user-agent", "t"),
            ("authorization", &auth),
            ("accept", "application/vnd.github+json"),
            ("x-github-api-version", "2001-01-01"),
        ],
        None,
    )
    .await;
    assert_eq!(a.status, 400);
    let a = send(
        "POST",
        &pulls,
        &[
            ("user-agent", "t"),
            ("authorization", &auth),
            ("accept", "application/vnd.github+json"),
            ("content-type", "text/plain"),
        ],
        Some(&pr_body("t", "b").to_string()),
    )
    .await;
    assert_eq!(a.status, 415);
    let a = send(
        "POST",
        &pulls,
        &[
            ("user-agent", "t"),
            ("authorization", &auth),
            ("accept", "application/vnd.github+json"),
            ("content-type", "application/json"),
        ],
        Some("{not json"),
    )
    .await;
    assert_eq!(
        (a.status, a.body["message"].as_str()),
        (400, Some("Problems parsing JSON"))
    );

    // Body shape.
    let a = c
        .call(
            "POST",
            "/repos/acme/policies/pulls",
            Some(json!({"title": "t", "base": "main"})),
        )
        .await;
    assert_eq!(a.status, 422);
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("\"head\" wasn't supplied")
    );
    let a = c
        .call(
            "POST",
            "/repos/acme/policies/pulls",
            Some(json!({"title": "t", "head": "b", "base": "main", "labels": ["x"]})),
        )
        .await;
    assert_eq!(a.status, 422, "undocumented field");
    let a = c
        .call(
            "POST",
            "/repos/acme/policies/pulls",
            Some(json!({"title": 5, "head": "b", "base": "main"})),
        )
        .await;
    assert_eq!(a.status, 422, "wrong type");
    let a = c
        .call(
            "POST",
            "/repos/acme/policies/pulls",
            Some(json!({"title": "t", "head": "other:b", "base": "main"})),
        )
        .await;
    assert_eq!(a.status, 422, "another owner's head");

    // The body limit: 65,536 characters pass (multi-byte ones count as one), one more fails.
    let limit: String = "é".repeat(github::BODY_LIMIT);
    let a = c
        .call(
            "POST",
            "/repos/acme/policies/pulls",
            Some(json!({"title": "t", "head": "big", "base": "main", "body": limit})),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    let over = format!("{limit}x");
    let a = c
        .call(
            "PATCH",
            "/repos/acme/policies/pulls/1",
            Some(json!({"body": over})),
        )
        .await;
    assert_eq!(a.status, 422);
    assert_eq!(a.body["message"], "Validation Failed");
    assert_eq!(a.body["errors"][0]["field"], "body");
    assert_eq!(
        a.body["errors"][0]["message"],
        "body is too long (maximum is 65536 characters)"
    );

    // A second pull request for the same head: the documented 422.
    let a = c
        .call(
            "POST",
            "/repos/acme/policies/pulls",
            Some(pr_body("again", "big")),
        )
        .await;
    assert_eq!(a.status, 422);
    assert_eq!(
        a.body,
        json!({
            "message": "Validation Failed",
            "errors": [{"resource": "PullRequest", "code": "custom",
                        "message": "A pull request already exists for acme:big."}],
            "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
            "status": "422",
        })
    );
    assert_eq!(gh.pulls("acme/policies").len(), 1);
    // A pull request someone else opened counts too.
    let n = gh.open_pull("acme/policies", "manual", "main", "by hand");
    assert_eq!(n, 2);
    let a = c
        .call(
            "POST",
            "/repos/acme/policies/pulls",
            Some(pr_body("mine", "manual")),
        )
        .await;
    assert_eq!(a.status, 422);
    // Every request was recorded, refused ones included.
    assert_eq!(gh.requests().len(), 19);
}

#[tokio::test]
async fn github_rate_limits() {
    let token = random_token("ghp_");
    let gh = github(&token);
    let c = Gh::new(gh.api_url(), &token);
    let list = "/repos/acme/policies/pulls?state=open";

    gh.rate_limit_next(2, 403, Duration::from_secs(2));
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for _ in 0..2 {
        let a = c.call("GET", list, None).await;
        assert_eq!(a.status, 403);
        assert_eq!(a.header("x-ratelimit-remaining"), Some("0"));
        let reset: u64 = a.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((now + 2..=now + 4).contains(&reset), "{reset} vs {now}");
        assert!(
            a.body["message"]
                .as_str()
                .unwrap()
                .starts_with("API rate limit exceeded")
        );
    }
    assert_eq!(c.call("GET", list, None).await.status, 200);

    gh.secondary_rate_limit_next(1, 429, Duration::from_millis(1500));
    let a = c.call("GET", list, None).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after"), Some("2"));
    assert_ne!(a.header("x-ratelimit-remaining"), Some("0"));
    assert!(
        a.body["message"]
            .as_str()
            .unwrap()
            .contains("secondary rate limit")
    );
    assert_eq!(c.call("GET", list, None).await.status, 200);

    // A bad token is told so, not rate limited.
    gh.rate_limit_next(1, 403, Duration::from_secs(1));
    let a = Gh::new(gh.api_url(), "nope").call("GET", list, None).await;
    assert_eq!(a.status, 401);
    assert_eq!(c.call("GET", list, None).await.status, 403);
}

#[tokio::test]
async fn github_with_a_git_repository_and_an_enterprise_prefix() {
    let root = tempfile::tempdir().unwrap();
    let bare = create_bare_repo(root.path(), "p.git", &[("a.yaml", "a\n")]).unwrap();
    let token = random_token("ghp_");
    let gh = GitHub::builder(&token)
        .repo_with_git("acme/policies", &bare)
        .api_prefix("/api/v3")
        .login("bot")
        .start()
        .unwrap();
    assert_eq!(gh.api_url(), format!("{}/api/v3", gh.base_url()));
    let c = Gh::new(gh.api_url(), &token);

    // The head branch must have been pushed.
    let a = c
        .call(
            "POST",
            "/repos/acme/policies/pulls",
            Some(pr_body("t", "leash/all")),
        )
        .await;
    assert_eq!(a.status, 422);
    assert_eq!(a.body["errors"][0]["field"], "head");
    git(&bare, &["branch", "leash/all", "main"]).unwrap();
    let a = c
        .call(
            "POST",
            "/repos/acme/policies/pulls",
            Some(pr_body("t", "leash/all")),
        )
        .await;
    assert_eq!(a.status, 422, "same commit as main");
    assert_eq!(
        a.body["errors"][0]["message"],
        "No commits between main and leash/all"
    );

    let work = tempfile::tempdir().unwrap();
    let bare_s = bare.to_string_lossy().into_owned();
    git(work.path(), &["clone", "--quiet", &bare_s, "wc"]).unwrap();
    let wc = work.path().join("wc");
    git(&wc, &["commit", "--quiet", "--allow-empty", "-m", "change"]).unwrap();
    git(
        &wc,
        &[
            "push",
            "--quiet",
            "--force",
            "origin",
            "HEAD:refs/heads/leash/all",
        ],
    )
    .unwrap();
    let a = c
        .call(
            "POST",
            "/repos/acme/policies/pulls",
            Some(pr_body("t", "leash/all")),
        )
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(
        a.body["head"]["sha"],
        git(&wc, &["rev-parse", "HEAD"]).unwrap()
    );
    assert_eq!(
        a.body["base"]["sha"],
        git(&bare, &["rev-parse", "main"]).unwrap()
    );
    assert_eq!(a.body["user"]["login"], "bot");

    // Outside the prefix there is no API.
    let a = send(
        "GET",
        &format!("{}/repos/acme/policies/pulls", gh.base_url()),
        &[
            ("user-agent", "t"),
            ("accept", "application/vnd.github+json"),
            ("authorization", &format!("Bearer {token}")),
        ],
        None,
    )
    .await;
    assert_eq!(a.status, 404);
}

#[tokio::test]
async fn github_pages_with_link_headers() {
    let token = random_token("ghp_");
    let gh = github(&token);
    for i in 0..3 {
        gh.open_pull("acme/policies", &format!("b{i}"), "main", "t");
    }
    let c = Gh::new(gh.api_url(), &token);
    let a = c
        .call("GET", "/repos/acme/policies/pulls?per_page=2", None)
        .await;
    let numbers: Vec<_> = a
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [3, 2], "newest first");
    let link = a.header("link").unwrap();
    assert!(
        link.contains("page=2") && link.ends_with("rel=\"next\""),
        "{link}"
    );
    let a = c
        .call("GET", "/repos/acme/policies/pulls?per_page=2&page=2", None)
        .await;
    assert_eq!(a.body.as_array().unwrap().len(), 1);
    assert!(a.header("link").is_none());
    let a = c
        .call("GET", "/repos/acme/policies/pulls?state=bogus", None)
        .await;
    assert_eq!(a.status, 422);
}

// ---------------------------------------------------------------- GitLab

struct Gl {
    api: String,
    token: String,
}

impl Gl {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let mut headers = vec![("private-token", self.token.as_str())];
        if body.is_some() {
            headers.push(("content-type", "application/json"));
        }
        let text = body.map(|b| b.to_string());
        send(
            method,
            &format!("{}{path}", self.api),
            &headers,
            text.as_deref(),
        )
        .await
    }
}

const MRS: &str = "/projects/acme%2Fplatform%2Fpolicies/merge_requests";

fn gitlab(token: &str) -> (GitLab, Gl) {
    let gl = GitLab::builder(token)
        .project("acme/platform/policies")
        .start()
        .unwrap();
    let c = Gl {
        api: gl.api_url(),
        token: token.to_owned(),
    };
    (gl, c)
}

fn mr_body(title: &str, source: &str) -> Value {
    json!({"source_branch": source, "target_branch": "main", "title": title,
           "description": "the diff"})
}

#[tokio::test]
async fn gitlab_merge_request_flow() {
    let token = random_token("glpat-");
    let (gl, c) = gitlab(&token);
    let list = format!("{MRS}?source_branch=leash/shop&state=opened");

    let a = c.call("GET", &list, None).await;
    assert_eq!((a.status, a.body.clone()), (200, json!([])));
    let a = c
        .call("POST", MRS, Some(mr_body("leash: shop", "leash/shop")))
        .await;
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.body["iid"], 1);
    assert_eq!(a.body["state"], "opened");
    assert_eq!(a.body["source_branch"], "leash/shop");
    assert_eq!(a.body["target_branch"], "main");
    assert_eq!(a.body["description"], "the diff");
    assert_eq!(a.body["project_id"], 1);
    assert_eq!(
        a.body["web_url"],
        format!(
            "{}/acme/platform/policies/-/merge_requests/1",
            gl.base_url()
        )
    );

    let a = c.call("GET", &list, None).await;
    assert_eq!(a.body.as_array().unwrap().len(), 1);
    assert_eq!(a.header("x-total"), Some("1"));
    // The numeric id names the same project.
    let a = c.call("GET", "/projects/1/merge_requests/1", None).await;
    assert_eq!((a.status, a.body["iid"].as_u64()), (200, Some(1)));
    assert_eq!(gl.project_id("acme/platform/policies"), Some(1));

    let a = c
        .call(
            "PUT",
            &format!("{MRS}/1"),
            Some(json!({"title": "leash: shop (2)", "description": "new"})),
        )
        .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["title"], "leash: shop (2)");
    assert_eq!(
        gl.merge_request("acme/platform/policies", 1)
            .unwrap()
            .updates,
        1
    );

    // A second one for the same source branch: the documented 409.
    let a = c
        .call("POST", MRS, Some(mr_body("again", "leash/shop")))
        .await;
    assert_eq!(a.status, 409);
    assert_eq!(
        a.body,
        json!({"message": ["Another open merge request already exists for this source branch: !1"]})
    );

    // The user closes it; the next one is !2, and !1 cannot be reopened beside it.
    assert!(gl.close_merge_request("acme/platform/policies", 1));
    assert_eq!(c.call("GET", &list, None).await.body, json!([]));
    let a = c
        .call(
            "GET",
            &format!("{MRS}?source_branch=leash/shop&state=closed"),
            None,
        )
        .await;
    assert_eq!(a.body[0]["iid"], 1);
    let a = c
        .call("POST", MRS, Some(mr_body("leash: shop", "leash/shop")))
        .await;
    assert_eq!((a.status, a.body["iid"].as_u64()), (201, Some(2)));
    let a = c
        .call(
            "PUT",
            &format!("{MRS}/1"),
            Some(json!({"state_event": "reopen"})),
        )
        .await;
    assert_eq!(a.status, 409);
    let a = c
        .call(
            "PUT",
            &format!("{MRS}/2"),
            Some(json!({"state_event": "close"})),
        )
        .await;
    assert_eq!((a.status, a.body["state"].as_str()), (200, Some("closed")));
    let a = c
        .call(
            "PUT",
            &format!("{MRS}/1"),
            Some(json!({"state_event": "reopen"})),
        )
        .await;
    assert_eq!((a.status, a.body["state"].as_str()), (200, Some("opened")));
    assert!(gl.merge_merge_request("acme/platform/policies", 1));
    assert_eq!(
        gl.merge_request("acme/platform/policies", 1).unwrap().state,
        "merged"
    );

    let requests = gl.requests();
    assert_eq!(requests[1].line(), format!("POST /api/v4{MRS}"));
    assert_eq!(requests[1].header("private-token"), Some(token.as_str()));
    assert_eq!(
        requests[1].json.as_ref().unwrap()["source_branch"],
        "leash/shop"
    );
    assert_eq!(requests[0].query_param("state"), Some("opened"));
    assert!(
        requests
            .iter()
            .all(|r| !r.contains_outside(&token, "private-token"))
    );
}

#[tokio::test]
async fn gitlab_error_shapes() {
    let token = random_token("glpat-");
    let (gl, c) = gitlab(&token);
    let url = format!("{}{MRS}", gl.api_url());

    let a = send("GET", &url, &[], None).await;
    assert_eq!(
        (a.status, a.body.clone()),
        (401, json!({"message": "401 Unauthorized"}))
    );
    let a = send("GET", &url, &[("private-token", "wrong")], None).await;
    assert_eq!(a.status, 401);
    let a = send(
        "GET",
        &url,
        &[("authorization", &format!("Bearer {token}"))],
        None,
    )
    .await;
    assert_eq!(a.status, 200, "Bearer is accepted too");

    let a = c
        .call("GET", "/projects/acme%2Fnope/merge_requests", None)
        .await;
    assert_eq!(
        (a.status, a.body.clone()),
        (404, json!({"message": "404 Project Not Found"}))
    );
    let a = c
        .call(
            "GET",
            "/projects/acme/platform/policies/merge_requests",
            None,
        )
        .await;
    assert_eq!(a.status, 404, "an unencoded path does not name the project");
    let a = c.call("GET", &format!("{MRS}/7"), None).await;
    assert_eq!(
        (a.status, a.body.clone()),
        (404, json!({"message": "404 Not found"}))
    );

    let a = send(
        "POST",
        &url,
        &[
            ("private-token", &token),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        Some("title=t"),
    )
    .await;
    assert_eq!(a.status, 415);
    let a = c
        .call("POST", MRS, Some(json!({"source_branch": "b"})))
        .await;
    assert_eq!(
        (a.status, a.body.clone()),
        (
            400,
            json!({"error": "target_branch is missing, title is missing"})
        )
    );
    let a = c
        .call(
            "POST",
            MRS,
            Some(json!({"source_branch": "b", "target_branch": "main", "title": "t", "body": "x"})),
        )
        .await;
    assert_eq!(a.status, 400, "`body` is GitHub's field, not GitLab's");
    let a = c.call("PUT", &format!("{MRS}/1"), Some(json!({}))).await;
    assert_eq!(a.status, 400);
    let a = c.call("GET", &format!("{MRS}?state=open"), None).await;
    assert_eq!(a.status, 400, "GitLab says `opened`");

    let limit = "x".repeat(gitlab::DESCRIPTION_LIMIT);
    let a = c
        .call("POST", MRS, Some(json!({"source_branch": "b", "target_branch": "main", "title": "t", "description": limit})))
        .await;
    assert_eq!(a.status, 201);
    let a = c
        .call(
            "PUT",
            &format!("{MRS}/1"),
            Some(json!({"description": format!("{limit}y")})),
        )
        .await;
    assert_eq!(
        (a.status, a.body.clone()),
        (
            400,
            json!({"message": {"description": ["is too long (maximum is 1048576 characters)"]}})
        )
    );
}

#[tokio::test]
async fn gitlab_rate_limit_and_git_sha() {
    let root = tempfile::tempdir().unwrap();
    let bare = create_bare_repo(root.path(), "p.git", &[("a.yaml", "a\n")]).unwrap();
    git(&bare, &["branch", "leash/all", "main"]).unwrap();
    let token = random_token("glpat-");
    let gl = GitLab::builder(&token)
        .project_with_git("acme/policies", &bare)
        .start()
        .unwrap();
    let c = Gl {
        api: gl.api_url(),
        token: token.clone(),
    };
    gl.rate_limit_next(1, Duration::from_secs(3));
    let a = c
        .call("GET", "/projects/acme%2Fpolicies/merge_requests", None)
        .await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after"), Some("3"));
    assert_eq!(a.header("ratelimit-remaining"), Some("0"));
    assert!(a.header("ratelimit-reset").unwrap().parse::<u64>().is_ok());
    assert_eq!(a.body, Value::String("Retry later\n".into()));
    let a = c
        .call(
            "POST",
            "/projects/acme%2Fpolicies/merge_requests",
            Some(mr_body("t", "leash/all")),
        )
        .await;
    assert_eq!(a.status, 201);
    assert_eq!(a.body["sha"], git(&bare, &["rev-parse", "main"]).unwrap());
}

// ---------------------------------------------------------------- HTTPS

#[tokio::test]
async fn https_with_the_test_ca() {
    let ca = TestCa::generate().unwrap();
    let token = random_token("ghp_");
    let gh = GitHub::builder(&token)
        .repo("acme/policies")
        .tls(&ca)
        .start()
        .unwrap();
    assert!(gh.api_url().starts_with("https://127.0.0.1:"));
    let auth = format!("Bearer {token}");
    let headers = [
        ("authorization", auth.as_str()),
        ("accept", "application/vnd.github+json"),
        ("user-agent", "t"),
    ];
    let url = format!("{}/repos/acme/policies/pulls", gh.api_url());
    let a = send_tls(ca.ca_pem(), "GET", &url, &headers).await.unwrap();
    assert_eq!((a.status, a.body), (200, json!([])));
    let n = gh.open_pull("acme/policies", "b", "main", "t");
    let a = send_tls(ca.ca_pem(), "GET", &format!("{url}/{n}"), &headers)
        .await
        .unwrap();
    assert_eq!(
        a.body["html_url"],
        format!("{}/acme/policies/pull/1", gh.base_url())
    );

    // A client trusting another CA refuses the server; the server goes on serving.
    let other = TestCa::generate().unwrap();
    let e = send_tls(other.ca_pem(), "GET", &url, &headers)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("certificate"), "{e}");
    let gl_token = random_token("glpat-");
    let gl = GitLab::builder(&gl_token)
        .project("acme/policies")
        .tls(&ca)
        .start()
        .unwrap();
    let a = send_tls(
        ca.ca_pem(),
        "GET",
        &format!("{}/projects/1/merge_requests", gl.api_url()),
        &[("private-token", &gl_token)],
    )
    .await
    .unwrap();
    assert_eq!(a.status, 200);
    let a = send_tls(ca.ca_pem(), "GET", &url, &headers).await.unwrap();
    assert_eq!(a.status, 200);
}
