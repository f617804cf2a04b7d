//! `pr::provider` against the GitHub and GitLab stand-ins of `leash_lab::forge`, over real
//! HTTP (and HTTPS with a per-run CA): the requests' methods, paths, headers and bodies, the
//! providers' error shapes, rate limits, and the token kept out of every error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use leash::pr::provider::{
    Client, Endpoint, Error, Kind, Outcome, Proposal, PullRequest, default_api_url,
    project_from_url,
};
use leash::pr::secret::Secret;
use leash_lab::forge::github::GitHub;
use leash_lab::forge::gitlab::GitLab;
use leash_lab::forge::{Request, TestCa, random_token};
use leash_records::error::Chain;

const REPO: &str = "acme/policies";
const PROJECT: &str = "platform/net/policies";
const GITLAB_PATH: &str = "/api/v4/projects/platform%2Fnet%2Fpolicies/merge_requests";

/// A token written to a file of its own, read the way `--token-file` reads it.
struct Token {
    text: String,
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Token {
    fn new(prefix: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        let text = random_token(prefix);
        std::fs::write(&path, format!("{text}\n")).expect("write token");
        Token {
            text,
            _dir: dir,
            path,
        }
    }

    fn secret(&self) -> Secret {
        Secret::from_file(&self.path).expect("token file")
    }
}

fn client(kind: Kind, api_url: &str, project: &str, token: &Token) -> Client {
    Client::new(Endpoint {
        kind,
        api_url: api_url.to_owned(),
        project: project.to_owned(),
        token: token.secret(),
        ca_file: None,
    })
    .expect("client")
}

fn proposal<'a>(branch: &'a str, title: &'a str, body: &'a str) -> Proposal<'a> {
    Proposal {
        branch,
        base: "main",
        title,
        body,
    }
}

/// The error's whole chain, checked to be free of every token of the test.
fn shown(e: &Error, tokens: &[&Token]) -> String {
    let text = Chain(e).to_string();
    let debug = format!("{e:?}");
    for t in tokens {
        assert!(!text.contains(&t.text), "the token in {text}");
        assert!(!debug.contains(&t.text), "the token in {debug}");
    }
    text
}

fn lines(requests: &[Request]) -> Vec<String> {
    requests.iter().map(Request::line).collect()
}

/// What every GitHub request must carry, and the token nowhere else.
fn check_github_headers(r: &Request, token: &Token) {
    let expected = format!("Bearer {}", token.text);
    assert_eq!(
        r.header("authorization"),
        Some(expected.as_str()),
        "{}",
        r.line()
    );
    assert_eq!(r.header("accept"), Some("application/vnd.github+json"));
    assert_eq!(r.header("x-github-api-version"), Some("2022-11-28"));
    let agent = format!("leash/{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(r.header("user-agent"), Some(agent.as_str()));
    if r.method != "GET" {
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert!(!r.contains_outside(&token.text, "authorization"), "{r:?}");
}

/// What every GitLab request must carry, and the token nowhere else.
fn check_gitlab_headers(r: &Request, token: &Token) {
    assert_eq!(
        r.header("private-token"),
        Some(token.text.as_str()),
        "{}",
        r.line()
    );
    assert!(r.header("authorization").is_none());
    let agent = format!("leash/{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(r.header("user-agent"), Some(agent.as_str()));
    if r.method != "GET" {
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert!(!r.contains_outside(&token.text, "private-token"), "{r:?}");
}

fn github(token: &Token) -> GitHub {
    GitHub::builder(&token.text)
        .repo(REPO)
        .start()
        .expect("GitHub stand-in")
}

fn gitlab(token: &Token) -> GitLab {
    GitLab::builder(&token.text)
        .project(PROJECT)
        .start()
        .expect("GitLab stand-in")
}

fn github_find_line(branch: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("head", format!("acme:{branch}").as_str()),
            ("state", "open"),
            ("per_page", "100"),
        ])
        .finish();
    format!("GET /repos/{REPO}/pulls?{query}")
}

fn gitlab_find_line(branch: &str) -> String {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("source_branch", branch),
            ("state", "opened"),
            ("per_page", "100"),
        ])
        .finish();
    format!("GET {GITLAB_PATH}?{query}")
}

#[tokio::test]
async fn github_creates_then_updates_the_same_pull_request() {
    let token = Token::new("ghp_");
    let gh = github(&token);
    let c = client(Kind::Github, &gh.api_url(), REPO, &token);

    let first = c
        .open_or_update(&proposal("leash/shop", "leash: shop egress", "first body"))
        .await
        .expect("create");
    let created = PullRequest {
        number: 1,
        url: format!("{}/{REPO}/pull/1", gh.base_url()),
        branch: "leash/shop".into(),
    };
    assert_eq!(first, Outcome::Created(created.clone()));
    let requests = gh.take_requests();
    assert_eq!(
        lines(&requests),
        [
            github_find_line("leash/shop"),
            format!("POST /repos/{REPO}/pulls")
        ]
    );
    assert_eq!(
        requests[1].json,
        Some(serde_json::json!({
            "title": "leash: shop egress", "head": "leash/shop", "base": "main", "body": "first body"
        }))
    );
    for r in &requests {
        check_github_headers(r, &token);
    }

    let second = c
        .open_or_update(&proposal(
            "leash/shop",
            "leash: shop egress (2)",
            "second body",
        ))
        .await
        .expect("update");
    assert_eq!(second, Outcome::Updated(created));
    let requests = gh.take_requests();
    assert_eq!(
        lines(&requests),
        [
            github_find_line("leash/shop"),
            format!("PATCH /repos/{REPO}/pulls/1")
        ]
    );
    assert_eq!(
        requests[1].json,
        Some(serde_json::json!({"title": "leash: shop egress (2)", "body": "second body"}))
    );
    for r in &requests {
        check_github_headers(r, &token);
    }
    let pulls = gh.pulls(REPO);
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].title, "leash: shop egress (2)");
    assert_eq!(pulls[0].body.as_deref(), Some("second body"));
    assert_eq!((pulls[0].state.as_str(), pulls[0].updates), ("open", 1));

    // Another branch is another pull request; the find filters by head.
    assert_eq!(c.find_open("leash/all").await.expect("find"), None);
    assert_eq!(
        c.find_open("leash/shop")
            .await
            .expect("find")
            .map(|p| p.number),
        Some(1)
    );
}

#[tokio::test]
async fn github_closed_pull_request_is_not_reopened() {
    let token = Token::new("ghp_");
    let gh = github(&token);
    let c = client(Kind::Github, &gh.api_url(), REPO, &token);
    let p = proposal("leash/all", "leash: policies", "body");
    c.open_or_update(&p).await.expect("create");
    assert!(gh.close_pull(REPO, 1));
    gh.take_requests();

    let next = c.open_or_update(&p).await.expect("create again");
    assert!(
        matches!(&next, Outcome::Created(pr) if pr.number == 2),
        "{next:?}"
    );
    let requests = gh.take_requests();
    assert_eq!(
        lines(&requests),
        [
            github_find_line("leash/all"),
            format!("POST /repos/{REPO}/pulls")
        ]
    );
    let pulls = gh.pulls(REPO);
    assert_eq!(
        pulls
            .iter()
            .map(|p| (p.number, p.state.as_str(), p.updates))
            .collect::<Vec<_>>(),
        [(1, "closed", 0), (2, "open", 0)]
    );
}

#[tokio::test]
async fn github_already_exists_race_updates_the_other_runs_pull_request() {
    let token = Token::new("ghp_");
    let gh = github(&token);
    let c = client(Kind::Github, &gh.api_url(), REPO, &token);
    // Another run opened it after this one looked (what `open_or_update` does between its
    // find and its create).
    let theirs = gh.open_pull(REPO, "leash/shop", "main", "theirs");

    let outcome = c
        .create(&proposal("leash/shop", "ours", "our body"))
        .await
        .expect("race handled");
    assert!(
        matches!(&outcome, Outcome::Updated(pr) if pr.number == theirs),
        "{outcome:?}"
    );
    let requests = gh.take_requests();
    assert_eq!(
        lines(&requests),
        [
            format!("POST /repos/{REPO}/pulls"),
            github_find_line("leash/shop"),
            format!("PATCH /repos/{REPO}/pulls/{theirs}")
        ]
    );
    let pulls = gh.pulls(REPO);
    assert_eq!(pulls.len(), 1);
    assert_eq!(pulls[0].title, "ours");
    assert_eq!(pulls[0].body.as_deref(), Some("our body"));
}

#[tokio::test]
async fn github_refusals_are_named_without_the_token() {
    let token = Token::new("ghp_");
    let wrong = Token::new("ghp_");
    let gh = github(&token);
    let p = proposal("leash/shop", "t", "b");

    let e = client(Kind::Github, &gh.api_url(), REPO, &wrong)
        .open_or_update(&p)
        .await
        .expect_err("bad token");
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    let text = shown(&e, &[&token, &wrong]);
    let origin = gh.base_url();
    assert_eq!(
        text,
        format!(
            "GitHub at {origin}: the token was refused (Bad credentials); check the token file (--token-file, or --pr-token-file of serve) or $LEASH_GIT_TOKEN"
        )
    );

    let e = client(Kind::Github, &gh.api_url(), "acme/missing", &token)
        .open_or_update(&p)
        .await
        .expect_err("missing repo");
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    assert_eq!(
        shown(&e, &[&token]),
        format!("GitHub at {origin}: project acme/missing not found, or the token cannot see it")
    );

    // A body over GitHub's limit is refused before any request; one at the limit passes.
    let c = client(Kind::Github, &gh.api_url(), REPO, &token);
    assert_eq!(c.max_body_chars(), 65_536);
    gh.take_requests();
    let long = "é".repeat(65_537);
    let e = c
        .open_or_update(&proposal("leash/shop", "t", &long))
        .await
        .expect_err("too long");
    assert!(
        matches!(
            e,
            Error::BodyTooLong {
                chars: 65_537,
                limit: 65_536,
                ..
            }
        ),
        "{e:?}"
    );
    shown(&e, &[&token]);
    assert!(gh.requests().is_empty());
    let at_limit = "é".repeat(65_536);
    c.open_or_update(&proposal("leash/shop", "t", &at_limit))
        .await
        .expect("at the limit");
    assert_eq!(gh.pulls(REPO)[0].body.as_deref(), Some(at_limit.as_str()));
}

/// A provider's answer that echoes the token (here GitHub's "No commits between main and
/// BRANCH", for a branch named like the token) reaches the error redacted.
#[tokio::test]
async fn answers_echoing_the_token_are_redacted() {
    let token = Token::new("ghp_");
    let root = tempfile::tempdir().expect("tempdir");
    let bare =
        leash_lab::git_server::create_bare_repo(root.path(), "policies.git", &[("README.md", "x")])
            .expect("bare repository");
    leash_lab::git_server::git(&bare, &["branch", &token.text, "main"]).expect("branch");
    let gh = GitHub::builder(&token.text)
        .repo_with_git(REPO, &bare)
        .start()
        .expect("GitHub stand-in");
    let c = client(Kind::Github, &gh.api_url(), REPO, &token);
    let e = c
        .create(&proposal(&token.text, "t", "b"))
        .await
        .expect_err("no commits");
    assert!(matches!(e, Error::Refused { status: 422, .. }), "{e:?}");
    assert_eq!(
        shown(&e, &[&token]),
        format!(
            "GitHub at {}: POST /repos/{REPO}/pulls: refused with 422: Validation Failed: No commits between main and [redacted]",
            gh.base_url()
        )
    );
}

/// The reset time of a rate limit, within the stand-in's rounding of the epoch seconds.
fn assert_reset_near(reset: Option<DateTime<Utc>>, expected: DateTime<Utc>) {
    let reset = reset.expect("a reset time");
    let off = (reset - expected).num_seconds().abs();
    assert!(off <= 3, "reset {reset} vs {expected}");
}

fn gap(requests: &[Request], a: usize, b: usize) -> Duration {
    requests[b]
        .at
        .duration_since(requests[a].at)
        .unwrap_or_default()
}

#[tokio::test]
async fn github_short_rate_limits_are_waited_out() {
    let token = Token::new("ghp_");
    let gh = github(&token);
    let c = client(Kind::Github, &gh.api_url(), REPO, &token);

    // Primary: 403, x-ratelimit-remaining 0, x-ratelimit-reset about a second away.
    gh.rate_limit_next(1, 403, Duration::from_secs(1));
    let out = c
        .open_or_update(&proposal("leash/shop", "t", "b"))
        .await
        .expect("retried");
    assert!(matches!(out, Outcome::Created(_)), "{out:?}");
    let requests = gh.take_requests();
    assert_eq!(
        lines(&requests),
        [
            github_find_line("leash/shop"),
            github_find_line("leash/shop"),
            format!("POST /repos/{REPO}/pulls")
        ]
    );
    assert!(gap(&requests, 0, 1) >= Duration::from_millis(900));

    // Secondary: 429 with retry-after 1, on the write.
    gh.secondary_rate_limit_next(1, 429, Duration::from_secs(1));
    let p = proposal("leash/other", "t", "b");
    let out = c.create(&p).await.expect("retried");
    assert!(matches!(out, Outcome::Created(_)), "{out:?}");
    let requests = gh.take_requests();
    assert_eq!(requests.len(), 2);
    assert!(gap(&requests, 0, 1) >= Duration::from_millis(900));
    assert_eq!(gh.pulls(REPO).len(), 2);

    // A limit that keeps coming back ends after a bounded number of retries.
    gh.rate_limit_next(100, 429, Duration::from_secs(1));
    let e = c.find_open("leash/shop").await.expect_err("still limited");
    assert!(
        matches!(e, Error::RateLimited { reset: Some(_), .. }),
        "{e:?}"
    );
    shown(&e, &[&token]);
    assert_eq!(
        gh.take_requests().len(),
        1 + leash::pr::provider::MAX_RATE_LIMIT_RETRIES as usize
    );
}

#[tokio::test]
async fn github_long_rate_limits_fail_with_the_reset_time() {
    let token = Token::new("ghp_");
    let gh = github(&token);
    let c = client(Kind::Github, &gh.api_url(), REPO, &token);

    gh.rate_limit_next(1, 403, Duration::from_secs(3600));
    let asked = Utc::now();
    let e = c
        .open_or_update(&proposal("leash/shop", "t", "b"))
        .await
        .expect_err("limited");
    let Error::RateLimited { reset, .. } = &e else {
        panic!("{e:?}");
    };
    assert_reset_near(*reset, asked + chrono::Duration::seconds(3600));
    let text = shown(&e, &[&token]);
    let at = leash_records::time::rfc3339(reset.expect("reset"));
    assert_eq!(
        text,
        format!("GitHub at {}: rate limited until {at}", gh.base_url())
    );
    assert_eq!(gh.take_requests().len(), 1, "no retry for a long limit");

    // A secondary limit longer than the client waits.
    let c = c.with_max_wait(Duration::from_secs(5));
    gh.secondary_rate_limit_next(1, 403, Duration::from_secs(120));
    let asked = Utc::now();
    let e = c.find_open("leash/shop").await.expect_err("limited");
    let Error::RateLimited { reset, .. } = &e else {
        panic!("{e:?}");
    };
    assert_reset_near(*reset, asked + chrono::Duration::seconds(120));
    assert_eq!(gh.take_requests().len(), 1);
    assert!(gh.pulls(REPO).is_empty());
}

#[tokio::test]
async fn gitlab_creates_then_updates_the_same_merge_request() {
    let token = Token::new("glpat-");
    let gl = gitlab(&token);
    let c = client(Kind::Gitlab, &gl.api_url(), PROJECT, &token);
    assert_eq!(c.max_body_chars(), 1_048_576);

    let first = c
        .open_or_update(&proposal("leash/shop", "leash: shop egress", "first"))
        .await
        .expect("create");
    let created = PullRequest {
        number: 1,
        url: format!("{}/{PROJECT}/-/merge_requests/1", gl.base_url()),
        branch: "leash/shop".into(),
    };
    assert_eq!(first, Outcome::Created(created.clone()));
    let requests = gl.take_requests();
    assert_eq!(
        lines(&requests),
        [
            gitlab_find_line("leash/shop"),
            format!("POST {GITLAB_PATH}")
        ]
    );
    assert_eq!(
        requests[1].json,
        Some(serde_json::json!({
            "source_branch": "leash/shop", "target_branch": "main",
            "title": "leash: shop egress", "description": "first"
        }))
    );
    for r in &requests {
        check_gitlab_headers(r, &token);
    }

    let second = c
        .open_or_update(&proposal("leash/shop", "leash: shop egress (2)", "second"))
        .await
        .expect("update");
    assert_eq!(second, Outcome::Updated(created));
    let requests = gl.take_requests();
    assert_eq!(
        lines(&requests),
        [
            gitlab_find_line("leash/shop"),
            format!("PUT {GITLAB_PATH}/1")
        ]
    );
    assert_eq!(
        requests[1].json,
        Some(serde_json::json!({"title": "leash: shop egress (2)", "description": "second"}))
    );
    for r in &requests {
        check_gitlab_headers(r, &token);
    }
    let mrs = gl.merge_requests(PROJECT);
    assert_eq!(mrs.len(), 1);
    assert_eq!(
        (mrs[0].title.as_str(), mrs[0].description.as_deref()),
        ("leash: shop egress (2)", Some("second"))
    );
    assert_eq!((mrs[0].state.as_str(), mrs[0].updates), ("opened", 1));
}

#[tokio::test]
async fn gitlab_closed_merge_request_is_not_reopened_and_races_update() {
    let token = Token::new("glpat-");
    let gl = gitlab(&token);
    let c = client(Kind::Gitlab, &gl.api_url(), PROJECT, &token);
    let p = proposal("leash/all", "leash: policies", "body");
    c.open_or_update(&p).await.expect("create");
    assert!(gl.close_merge_request(PROJECT, 1));
    gl.take_requests();

    let next = c.open_or_update(&p).await.expect("create again");
    assert!(
        matches!(&next, Outcome::Created(mr) if mr.number == 2),
        "{next:?}"
    );
    let requests = gl.take_requests();
    assert_eq!(
        lines(&requests),
        [gitlab_find_line("leash/all"), format!("POST {GITLAB_PATH}")]
    );

    // Another run that looked before !2 was opened creates too: GitLab's 409, and that run
    // updates !2 instead.
    let other = client(Kind::Gitlab, &gl.api_url(), PROJECT, &token);
    let raced = other
        .create(&proposal(
            "leash/all",
            "leash: policies (other run)",
            "other",
        ))
        .await
        .expect("race handled");
    assert!(
        matches!(&raced, Outcome::Updated(mr) if mr.number == 2),
        "{raced:?}"
    );
    let requests = gl.take_requests();
    assert_eq!(
        lines(&requests),
        [
            format!("POST {GITLAB_PATH}"),
            gitlab_find_line("leash/all"),
            format!("PUT {GITLAB_PATH}/2")
        ]
    );
    let mrs = gl.merge_requests(PROJECT);
    assert_eq!(
        mrs.iter()
            .map(|m| (m.iid, m.state.as_str(), m.title.as_str()))
            .collect::<Vec<_>>(),
        [
            (1, "closed", "leash: policies"),
            (2, "opened", "leash: policies (other run)")
        ]
    );
}

#[tokio::test]
async fn gitlab_refusals_and_rate_limits() {
    let token = Token::new("glpat-");
    let wrong = Token::new("glpat-");
    let gl = gitlab(&token);
    let origin = gl.base_url();
    let p = proposal("leash/shop", "t", "b");

    let e = client(Kind::Gitlab, &gl.api_url(), PROJECT, &wrong)
        .find_open("leash/shop")
        .await
        .expect_err("bad token");
    assert!(matches!(e, Error::Unauthorized { .. }), "{e:?}");
    assert_eq!(
        shown(&e, &[&token, &wrong]),
        format!(
            "GitLab at {origin}: the token was refused (401 Unauthorized); check the token file (--token-file, or --pr-token-file of serve) or $LEASH_GIT_TOKEN"
        )
    );

    let e = client(Kind::Gitlab, &gl.api_url(), "platform/missing", &token)
        .open_or_update(&p)
        .await
        .expect_err("missing project");
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    assert_eq!(
        shown(&e, &[&token]),
        format!(
            "GitLab at {origin}: project platform/missing not found, or the token cannot see it"
        )
    );

    // A bad request is refused with GitLab's message: the same branch as source and target.
    let c = client(Kind::Gitlab, &gl.api_url(), PROJECT, &token);
    let e = c
        .open_or_update(&Proposal {
            branch: "main",
            base: "main",
            title: "t",
            body: "b",
        })
        .await
        .expect_err("same branch");
    assert!(matches!(e, Error::Refused { status: 400, .. }), "{e:?}");
    assert_eq!(
        shown(&e, &[&token]),
        format!(
            "GitLab at {origin}: POST /projects/platform%2Fnet%2Fpolicies/merge_requests: refused with 400: You can't use same project/branch for source and target"
        )
    );

    // 429 with Retry-After 1: waited out.
    gl.take_requests();
    gl.rate_limit_next(1, Duration::from_secs(1));
    let out = c.open_or_update(&p).await.expect("retried");
    assert!(matches!(out, Outcome::Created(_)), "{out:?}");
    let requests = gl.take_requests();
    assert_eq!(
        lines(&requests),
        [
            gitlab_find_line("leash/shop"),
            gitlab_find_line("leash/shop"),
            format!("POST {GITLAB_PATH}")
        ]
    );
    assert!(gap(&requests, 0, 1) >= Duration::from_millis(900));

    // 429 for an hour: the reset time, no retry.
    gl.rate_limit_next(1, Duration::from_secs(3600));
    let asked = Utc::now();
    let e = c.open_or_update(&p).await.expect_err("limited");
    let Error::RateLimited { reset, .. } = &e else {
        panic!("{e:?}");
    };
    assert_reset_near(*reset, asked + chrono::Duration::seconds(3600));
    let at = leash_records::time::rfc3339(reset.expect("reset"));
    assert_eq!(
        shown(&e, &[&token]),
        format!("GitLab at {origin}: rate limited until {at}")
    );
    assert_eq!(gl.take_requests().len(), 1);
    assert_eq!(gl.merge_requests(PROJECT).len(), 1);
}

fn write_ca(dir: &Path, ca: &TestCa) -> PathBuf {
    let path = dir.join("ca.pem");
    std::fs::write(&path, ca.ca_pem()).expect("write CA");
    path
}

#[tokio::test]
async fn https_trusts_the_given_ca_and_no_other() {
    let token = Token::new("ghp_");
    let ca = TestCa::generate().expect("CA");
    let gh = GitHub::builder(&token.text)
        .repo(REPO)
        .api_prefix("/api/v3")
        .tls(&ca)
        .start()
        .expect("GitHub stand-in over HTTPS");
    assert!(gh.api_url().starts_with("https://127.0.0.1:"));
    let dir = tempfile::tempdir().expect("tempdir");
    let endpoint = |ca_file: Option<PathBuf>| Endpoint {
        kind: Kind::Github,
        api_url: gh.api_url(),
        project: REPO.into(),
        token: token.secret(),
        ca_file,
    };

    let e = Client::new(endpoint(None))
        .expect("client")
        .open_or_update(&proposal("leash/shop", "t", "b"))
        .await
        .expect_err("an unknown CA");
    assert!(matches!(e, Error::Http(_)), "{e:?}");
    let text = shown(&e, &[&token]);
    assert!(text.contains("certificate"), "{text}");
    assert!(
        text.starts_with(&format!("GET {}: request failed", gh.base_url())),
        "{text}"
    );
    assert!(gh.requests().is_empty(), "nothing got through");

    let c = Client::new(endpoint(Some(write_ca(dir.path(), &ca)))).expect("client");
    let out = c
        .open_or_update(&proposal("leash/shop", "t", "b"))
        .await
        .expect("over HTTPS");
    assert_eq!(
        out.pull_request().url,
        format!("{}/{REPO}/pull/1", gh.base_url())
    );
    let requests = gh.take_requests();
    assert_eq!(requests[0].path, format!("/api/v3/repos/{REPO}/pulls"));
    for r in &requests {
        check_github_headers(r, &token);
    }
    // Enterprise: the web host is the API URL's.
    assert_eq!(
        c.file_url("leash/shop", "policies/REPORT.md"),
        format!(
            "{}/{REPO}/blob/leash/shop/policies/REPORT.md",
            gh.base_url()
        )
    );
}

#[test]
fn plain_http_is_refused_unless_loopback() {
    let token = Token::new("ghp_");
    for kind in [Kind::Github, Kind::Gitlab] {
        let e = Client::new(Endpoint {
            kind,
            api_url: "http://git.example.test/api/v4".into(),
            project: "acme/policies".into(),
            token: token.secret(),
            ca_file: None,
        })
        .expect_err("plain http to a remote host");
        assert!(matches!(e, Error::Http(_)), "{e:?}");
        assert_eq!(
            shown(&e, &[&token]),
            "http://git.example.test: plain http is accepted only for loopback addresses; use https"
        );
    }
    for ok in [
        "http://127.0.0.1:9/api/v4",
        "http://[::1]:9",
        "https://git.example.test/api/v4",
    ] {
        client(Kind::Gitlab, ok, PROJECT, &token);
    }
    let e = Client::new(Endpoint {
        kind: Kind::None,
        api_url: "https://api.github.com".into(),
        project: REPO.into(),
        token: token.secret(),
        ca_file: None,
    })
    .expect_err("provider none");
    assert!(matches!(e, Error::Endpoint { .. }), "{e:?}");
}

#[test]
fn projects_from_repository_urls() {
    for (url, project) in [
        ("https://github.com/acme/policies", Some("acme/policies")),
        (
            "https://github.com/acme/policies.git",
            Some("acme/policies"),
        ),
        ("https://github.com/acme/policies/", Some("acme/policies")),
        (
            "https://x-access-token@github.com/acme/policies.git",
            Some("acme/policies"),
        ),
        (
            "ssh://git@github.com/acme/policies.git",
            Some("acme/policies"),
        ),
        (
            "ssh://git@gitlab.example.test:2222/platform/net/policies.git",
            Some("platform/net/policies"),
        ),
        ("git@github.com:acme/policies.git", Some("acme/policies")),
        (
            "gitlab.example.test:platform/policies",
            Some("platform/policies"),
        ),
        (
            "http://127.0.0.1:8080/platform/net/policies.git",
            Some("platform/net/policies"),
        ),
        ("https://github.com/acme", None),
        ("/srv/git/policies.git", None),
        ("./policies", None),
        ("../mirror/acme/policies.git", None),
        ("policies", None),
        ("file:///srv/git/acme/policies.git", None),
    ] {
        assert_eq!(project_from_url(url).as_deref(), project, "{url}");
    }
}

#[test]
fn default_api_urls() {
    for (kind, url, api) in [
        (
            Kind::Github,
            "https://github.com/acme/policies.git",
            Some("https://api.github.com"),
        ),
        (
            Kind::Github,
            "git@github.com:acme/policies.git",
            Some("https://api.github.com"),
        ),
        (
            Kind::Github,
            "https://ghe.example.test/acme/policies.git",
            Some("https://ghe.example.test/api/v3"),
        ),
        (
            Kind::Github,
            "ssh://git@ghe.example.test:2222/acme/policies.git",
            Some("https://ghe.example.test/api/v3"),
        ),
        (
            Kind::Gitlab,
            "https://gitlab.com/platform/net/policies.git",
            Some("https://gitlab.com/api/v4"),
        ),
        (
            Kind::Gitlab,
            "git@gitlab.example.test:platform/policies.git",
            Some("https://gitlab.example.test/api/v4"),
        ),
        (
            Kind::Gitlab,
            "https://gitlab.example.test:8443/platform/policies.git",
            Some("https://gitlab.example.test:8443/api/v4"),
        ),
        (
            Kind::Gitlab,
            "http://127.0.0.1:8080/platform/policies.git",
            Some("http://127.0.0.1:8080/api/v4"),
        ),
        (Kind::Gitlab, "/srv/git/policies.git", None),
        (Kind::Github, "file:///srv/git/policies.git", None),
        (Kind::None, "https://github.com/acme/policies.git", None),
    ] {
        assert_eq!(default_api_url(kind, url).as_deref(), api, "{kind:?} {url}");
    }
}

#[test]
fn file_urls_link_the_branch() {
    let token = Token::new("ghp_");
    let gh = client(Kind::Github, "https://api.github.com", REPO, &token);
    assert_eq!(
        gh.file_url("leash/shop", "policies/shop/REPORT.md"),
        "https://github.com/acme/policies/blob/leash/shop/policies/shop/REPORT.md"
    );
    assert_eq!(
        gh.file_url("leash/team a", "policies/a b#c.md"),
        "https://github.com/acme/policies/blob/leash/team%20a/policies/a%20b%23c.md"
    );
    let ghe = client(
        Kind::Github,
        "https://ghe.example.test/api/v3/",
        REPO,
        &token,
    );
    assert_eq!(
        ghe.file_url("leash/all", "REPORT.md"),
        "https://ghe.example.test/acme/policies/blob/leash/all/REPORT.md"
    );
    let gl = client(
        Kind::Gitlab,
        "https://gitlab.example.test/api/v4",
        PROJECT,
        &token,
    );
    assert_eq!(
        gl.file_url("leash/shop", "policies/REPORT.md"),
        "https://gitlab.example.test/platform/net/policies/-/blob/leash/shop/policies/REPORT.md"
    );
}
