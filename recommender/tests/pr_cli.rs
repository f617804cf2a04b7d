//! `leash pr` through the built binary, against real repositories (a bare repository over a
//! local path, `git http-backend` behind a token-checking HTTP server, a private `sshd`) and
//! the GitHub and GitLab stand-ins over loopback HTTP (leash-lab's).
//!
//! Each test shows what reaches the repository (branches, files, the base branch left alone)
//! and the provider (every request recorded), and that a run whose policies did not change
//! makes no commit, no push and no API call.
//!
//! The SSH test needs `sshd` (`openssh-server`); without it the test skips with the reason,
//! unless `LEASH_REQUIRE_PRIVILEGED=1`, which makes it fail.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use leash_lab::forge::github::GitHub;
use leash_lab::forge::gitlab::GitLab;
use leash_lab::forge::{Request, random_token};
use leash_lab::git_server::{
    GitServer, branches, create_bare_repo, file_at, files_at, find_text, git, rev_parse,
};
use support::cli::{assert_code, p, stderr, stdout};
use support::snapshots;
use support::sshd::sshd_or_skip;
use support::store_flows::commit_records;

/// shop: Deployment `frontend` (pod frontend-1); data: StatefulSet `postgres` (postgres-0,
/// behind Service data/postgres 10.96.0.20). No policy applied.
fn snapshot() -> String {
    snapshots::list(&[
        snapshots::namespace("shop"),
        snapshots::namespace("data"),
        snapshots::frontend_pod(1, "10.244.1.10"),
        snapshots::postgres_pod(),
        snapshots::postgres_service(),
    ])
}

/// A bare pod in shop without labels: no selector can target it, so the namespace's
/// default deny blocks its egress (a real break of observed traffic).
const UNLABELLED_POD: &str = r"
- apiVersion: v1
  kind: Pod
  metadata: {name: debug, namespace: shop, uid: uid-debug}
  spec: {nodeName: n1, containers: [{name: sh, image: busybox:1}]}
  status: {phase: Running, podIP: 10.244.1.30, podIPs: [{ip: 10.244.1.30}]}
";

const FIRST: &str = "2026-11-20T08:00:00Z";
const LAST: &str = "2026-11-23T08:00:00Z";

/// A flow record from `pod` (of namespace `ns`) to `dst:port`/TCP, seen from [`FIRST`] to
/// [`LAST`].
fn flow(ns: &str, pod: &str, dst: &str, port: u16, names: &str) -> String {
    format!(
        r#"{{"v":1,"kind":"flow","node":"n1","pod":{{"uid":"uid-{pod}","namespace":"{ns}","name":"{pod}"}},"cgroup":"/k","protocol":"TCP","dst":"{dst}","dst_port":{port},"count":10,"first_seen":"{FIRST}","last_seen":"{LAST}","names":[{names}]}}"#
    )
}

/// The shop's usual traffic: frontend calls the payment API and postgres; postgres sends
/// backups to 198.51.100.5.
fn base_flows() -> Vec<String> {
    vec![
        flow(
            "shop",
            "frontend-1",
            "203.0.113.10",
            443,
            r#""api.pay.test""#,
        ),
        flow("shop", "frontend-1", "10.96.0.20", 5432, ""),
        flow(
            "data",
            "postgres-0",
            "198.51.100.5",
            443,
            r#""backup.test""#,
        ),
    ]
}

/// `lines` with every time moved `days` later: the next days' records of the same traffic.
fn later(lines: &[String], days: u32) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            l.replace("2026-11-20T", &format!("2026-11-{}T", 20 + days))
                .replace("2026-11-23T", &format!("2026-11-{}T", 23 + days))
        })
        .collect()
}

/// The lab: a bare repository with the team's files, a snapshot, a token file, a cache.
struct Lab {
    tmp: tempfile::TempDir,
    bare: PathBuf,
    cluster: PathBuf,
    cache: PathBuf,
    token: String,
    token_file: PathBuf,
}

/// The team's files, which leash must never touch.
const TEAM_FILES: &[(&str, &str)] = &[
    ("README.md", "the team's policies\n"),
    ("other/x.yaml", "kind: ConfigMap # not leash's\n"),
    (
        "policies/shop/custom.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: custom, namespace: shop}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n",
    ),
];

fn lab(snapshot: &str) -> Lab {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bare = create_bare_repo(&tmp.path().join("repos"), "policies.git", TEAM_FILES)
        .expect("bare repository");
    let cluster = tmp.path().join("cluster.yaml");
    std::fs::write(&cluster, snapshot).expect("writes the snapshot");
    let token = random_token("ghp_");
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    Lab {
        cache: tmp.path().join("cache"),
        tmp,
        bare,
        cluster,
        token,
        token_file,
    }
}

impl Lab {
    /// Writes `lines` as a flow file named `name`.
    fn flows(&self, name: &str, lines: &[String]) -> PathBuf {
        let path = self.tmp.path().join(name);
        std::fs::write(&path, lines.join("\n") + "\n").expect("writes the flows");
        path
    }

    /// `leash pr --cluster C --flows F --repo BARE --path policies --cache-dir CACHE` and `extra`.
    fn pr(&self, flows: &Path, extra: &[&str]) -> Output {
        self.pr_repo(p(&self.bare), flows, extra, &[])
    }

    fn pr_repo(&self, repo: &str, flows: &Path, extra: &[&str], env: &[(&str, &str)]) -> Output {
        self.pr_at(repo, Some("policies"), flows, extra, env)
    }

    /// `leash pr --cluster C --flows F --repo REPO [--path PATH] --cache-dir CACHE` and
    /// `extra`, with `env`.
    fn pr_at(
        &self,
        repo: &str,
        path: Option<&str>,
        flows: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Output {
        let mut args = vec![
            "pr",
            "--cluster",
            p(&self.cluster),
            "--flows",
            p(flows),
            "--repo",
            repo,
        ];
        if let Some(path) = path {
            args.extend(["--path", path]);
        }
        args.extend(["--cache-dir", p(&self.cache)]);
        args.extend_from_slice(extra);
        leash(&args, env)
    }

    /// `leash pr` on `flows` with [`Lab::github_flags`].
    fn pr_github(&self, flows: &Path, api: &str) -> Output {
        self.pr(flows, &self.github_flags(api))
    }

    /// [`Lab::pr_github`], which must exit 0.
    #[track_caller]
    fn pr_github_ok(&self, flows: &Path, api: &str) -> Output {
        let o = self.pr_github(flows, api);
        assert_code(&o, 0);
        o
    }

    /// The base flows and frontend's new destination 192.0.2.50:8443 (resolved from `names`),
    /// written as `more.jsonl`.
    fn more_flows(&self, names: &str) -> PathBuf {
        let mut more = base_flows();
        more.push(flow("shop", "frontend-1", "192.0.2.50", 8443, names));
        self.flows("more.jsonl", &more)
    }

    /// The GitHub flags for stand-in `gh`, the token from the token file.
    fn github_flags<'a>(&'a self, api: &'a str) -> Vec<&'a str> {
        vec![
            "--provider",
            "github",
            "--api-url",
            api,
            "--project",
            "o/policies",
            "--token-file",
            p(&self.token_file),
        ]
    }

    /// The user merges pull request `number` of leash/shop: main fast-forwards to it.
    #[track_caller]
    fn merge_shop(&self, gh: &GitHub, number: u64) {
        git(
            &self.bare,
            &["update-ref", "refs/heads/main", "refs/heads/leash/shop"],
        )
        .expect("merge");
        assert!(gh.merge_pull("o/policies", number));
    }

    fn tip(&self, branch: &str) -> Option<String> {
        rev_parse(&self.bare, branch).expect("rev-parse")
    }

    fn branches(&self) -> Vec<String> {
        branches(&self.bare).expect("branches")
    }

    /// The token appears nowhere: not in the outputs, the cache, or the repository.
    #[track_caller]
    fn assert_no_token(&self, token: &str, outputs: &[&Output]) {
        for o in outputs {
            assert!(!stdout(o).contains(token), "token on stdout: {}", stdout(o));
            assert!(!stderr(o).contains(token), "token on stderr: {}", stderr(o));
        }
        if self.cache.exists() {
            assert_eq!(
                find_text(&self.cache, token).expect("searches"),
                Vec::<String>::new()
            );
        }
        assert_eq!(
            find_text(&self.bare, token).expect("searches"),
            Vec::<String>::new()
        );
    }
}

/// The lab on [`snapshot`], the GitHub stand-in serving its repository, the base flows
/// file and the stand-in's API URL.
fn github_lab() -> (Lab, GitHub, PathBuf, String) {
    let lab = lab(&snapshot());
    let gh = github(&lab);
    let flows = lab.flows("flows.jsonl", &base_flows());
    let api = gh.api_url();
    (lab, gh, flows, api)
}

fn github(lab: &Lab) -> GitHub {
    GitHub::builder(&lab.token)
        .repo_with_git("o/policies", &lab.bare)
        .start()
        .expect("GitHub stand-in")
}

fn leash(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leash"));
    cmd.args(args)
        .env_remove("LEASH_GIT_TOKEN")
        .env_remove("LEASH_MAX_INPUT_BYTES")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("runs the leash binary")
}

/// The stand-in got no request beyond its first `requests`.
#[track_caller]
fn assert_no_new_request(gh: &GitHub, requests: usize, why: &str) {
    assert_eq!(gh.requests().len(), requests, "{why}");
}

#[track_caller]
fn assert_stdout_contains(o: &Output, text: &str) {
    assert!(stdout(o).contains(text), "{}", stdout(o));
}

/// `METHOD path?query` of every request.
fn lines(requests: &[Request]) -> Vec<String> {
    requests.iter().map(Request::line).collect()
}

/// The `body` of a request's JSON.
fn json_str<'a>(r: &'a Request, field: &str) -> &'a str {
    r.json
        .as_ref()
        .and_then(|j| j[field].as_str())
        .unwrap_or_else(|| panic!("no {field} in {}", r.line()))
}

/// The first run opens one pull request per namespace, each on its own branch holding that
/// namespace's files, the team's files and the base branch untouched.
#[test]
fn first_run_opens_one_pull_request_per_namespace() {
    let (lab, gh, flows, api) = github_lab();
    let main = lab.tip("main").expect("main");
    let o = lab.pr_github_ok(&flows, &api);
    let out = stdout(&o);
    assert!(
        out.contains("data: pushed ") && out.contains(" to leash/data, opened #1 "),
        "{out}"
    );
    assert!(out.contains(" to leash/shop, opened #2 "), "{out}");

    assert_eq!(lab.branches(), ["leash/data", "leash/shop", "main"]);
    assert_eq!(lab.tip("main").as_deref(), Some(&*main), "main moved");
    let team = ["README.md", "other/x.yaml", "policies/shop/custom.yaml"];
    let mut shop: Vec<&str> = team.to_vec();
    shop.extend([
        "policies/shop/REPORT.md",
        "policies/shop/default-deny-egress.yaml",
        "policies/shop/evidence.json",
        "policies/shop/frontend-egress.yaml",
    ]);
    shop.sort_unstable();
    assert_eq!(files_at(&lab.bare, "leash/shop").expect("files"), shop);
    let data = files_at(&lab.bare, "leash/data").expect("files");
    assert!(
        data.iter()
            .all(|f| !f.starts_with("policies/shop/") || team.contains(&f.as_str())),
        "{data:?}"
    );
    assert!(
        data.contains(&"policies/data/postgres-egress.yaml".to_owned())
            && data.contains(&"policies/data/evidence.json".to_owned()),
        "{data:?}"
    );
    for (path, text) in TEAM_FILES {
        for branch in ["leash/shop", "leash/data"] {
            assert_eq!(
                file_at(&lab.bare, branch, path).expect("file").as_deref(),
                Some(*text),
                "{branch}:{path}"
            );
        }
    }
    let policy = file_at(
        &lab.bare,
        "leash/shop",
        "policies/shop/frontend-egress.yaml",
    )
    .expect("file")
    .expect("policy");
    assert!(policy.contains("203.0.113.10/32"), "{policy}");
    // One commit on top of main, by leash, with a summary.
    assert_eq!(
        git(&lab.bare, &["rev-parse", "leash/shop^"]).expect("parent"),
        main
    );
    let message = git(
        &lab.bare,
        &["log", "-1", "--format=%an <%ae>%n%B", "leash/shop"],
    )
    .expect("log");
    assert!(
        message.starts_with("leash <leash@localhost>\nleash: egress policies for namespace shop"),
        "{message}"
    );

    // Per new branch: the closed ones (a reviewer may have turned this proposal down), the
    // open one, then create; the token in the Authorization header.
    let requests = gh.requests();
    assert_eq!(
        lines(&requests),
        [
            "GET /repos/o/policies/pulls?head=o%3Aleash%2Fdata&state=closed&per_page=100",
            "GET /repos/o/policies/pulls?head=o%3Aleash%2Fdata&state=open&per_page=100",
            "POST /repos/o/policies/pulls",
            "GET /repos/o/policies/pulls?head=o%3Aleash%2Fshop&state=closed&per_page=100",
            "GET /repos/o/policies/pulls?head=o%3Aleash%2Fshop&state=open&per_page=100",
            "POST /repos/o/policies/pulls",
        ]
    );
    for r in &requests {
        assert_eq!(
            r.header("authorization"),
            Some(&*format!("Bearer {}", lab.token))
        );
        assert!(!r.contains_outside(&lab.token, "authorization"), "{r:?}");
    }
    let post = &requests[5];
    assert_eq!(json_str(post, "head"), "leash/shop");
    assert_eq!(json_str(post, "base"), "main");
    let body = json_str(post, "body");
    assert!(body.starts_with("<!-- leash:pr group=shop -->\n"), "{body}");
    // The second line names the proposal: the digest of the group's policies.
    let digest = body.lines().nth(1).unwrap_or_default();
    assert!(
        digest.starts_with("<!-- leash:proposal sha256=") && digest.len() == 95,
        "{digest}"
    );
    assert!(body.contains("## leash diff: "), "{body}");
    assert!(body.contains("## Evidence"), "{body}");
    assert!(body.contains("203.0.113.10/32"), "{body}");
    // Names from the cluster and DNS are escaped for markdown.
    assert!(body.contains(r"| api\.pay\.test | frontend\-1 |"), "{body}");
    assert!(
        body.contains("From 2026-11-20T08:00:00Z to 2026-11-23T08:00:00Z"),
        "{body}"
    );
    assert!(body.contains("```sh\nleash pr --cluster "), "{body}");
    assert!(
        !body.contains("198.51.100.5"),
        "data's evidence in shop's body"
    );
    let pulls = gh.pulls("o/policies");
    assert_eq!(pulls.len(), 2);
    assert!(pulls.iter().all(|p| p.state == "open" && p.base == "main"));
    assert_eq!(
        json_str(&requests[2], "body").lines().next(),
        Some("<!-- leash:pr group=data -->")
    );
    lab.assert_no_token(&lab.token, &[&o]);
}

/// A second run with the same observations changes nothing anywhere; new observations update
/// the same pull request, and only that namespace's branch moves.
#[test]
fn same_observations_do_nothing_and_new_ones_update_the_same_pull_request() {
    let (lab, gh, flows, api) = github_lab();
    lab.pr_github_ok(&flows, &api);
    let requests = gh.requests().len();
    let (shop, data) = (lab.tip("leash/shop"), lab.tip("leash/data"));

    let o = lab.pr_github_ok(&flows, &api);
    assert_stdout_contains(&o, "shop: leash/shop already holds these policies");
    assert_no_new_request(&gh, requests, "an API call without a change");
    assert_eq!(lab.tip("leash/shop"), shop);
    assert_eq!(lab.tip("leash/data"), data);

    // The next days' records of the same traffic: the evidence and reports differ, the
    // policies do not, so nothing happens either.
    let next = lab.flows("next.jsonl", &later(&base_flows(), 2));
    let o = lab.pr_github_ok(&next, &api);
    assert_stdout_contains(&o, "shop: leash/shop already holds these policies");
    assert_no_new_request(&gh, requests, "an API call for new evidence alone");
    assert_eq!(lab.tip("leash/shop"), shop);

    // frontend calls a new address: the same pull request, updated.
    let flows = lab.more_flows(r#""new.pay.test""#);
    let o = lab.pr_github_ok(&flows, &api);
    assert_stdout_contains(&o, " to leash/shop, updated #2 ");
    let new = gh.requests();
    assert_eq!(
        lines(&new[requests..]),
        [
            "GET /repos/o/policies/pulls?head=o%3Aleash%2Fshop&state=open&per_page=100",
            "PATCH /repos/o/policies/pulls/2",
        ]
    );
    assert!(json_str(&new[requests + 1], "body").contains("192.0.2.50"));
    assert_ne!(lab.tip("leash/shop"), shop);
    assert_eq!(lab.tip("leash/data"), data, "data's branch moved");
    let policy = file_at(
        &lab.bare,
        "leash/shop",
        "policies/shop/frontend-egress.yaml",
    )
    .expect("file")
    .expect("policy");
    assert!(policy.contains("192.0.2.50/32"), "{policy}");
    let pull = gh.pull("o/policies", 2).expect("#2");
    assert_eq!((pull.state.as_str(), pull.updates), ("open", 1));
    assert!(pull.body.is_some_and(|b| b.contains(r"new\.pay\.test")));
    assert_eq!(gh.pulls("o/policies").len(), 2, "a new pull request");
    assert_eq!(gh.pull("o/policies", 1).expect("#1").updates, 0);
}

/// A pull request the user closed is not reopened; the next change opens a new one.
#[test]
fn a_closed_pull_request_is_not_reopened_and_the_next_change_opens_a_new_one() {
    let (lab, gh, flows, api) = github_lab();
    lab.pr_github_ok(&flows, &api);
    assert!(gh.close_pull("o/policies", 2));
    let requests = gh.requests().len();
    let shop = lab.tip("leash/shop");

    lab.pr_github_ok(&flows, &api);
    assert_no_new_request(&gh, requests, "an API call without a change");
    assert_eq!(lab.tip("leash/shop"), shop);
    assert_eq!(gh.pull("o/policies", 2).expect("#2").state, "closed");

    let flows = lab.more_flows("");
    let o = lab.pr_github_ok(&flows, &api);
    assert_stdout_contains(&o, " to leash/shop, opened #3 ");
    let new = gh.requests();
    assert_eq!(
        lines(&new[requests..]),
        [
            "GET /repos/o/policies/pulls?head=o%3Aleash%2Fshop&state=open&per_page=100",
            "POST /repos/o/policies/pulls",
        ]
    );
    let closed = gh.pull("o/policies", 2).expect("#2");
    assert_eq!((closed.state.as_str(), closed.updates), ("closed", 0));
    let opened = gh.pull("o/policies", 3).expect("#3");
    assert_eq!(
        (opened.state.as_str(), opened.head.as_str()),
        ("open", "leash/shop")
    );
}

/// A reviewer closes the pull request and deletes its branch (GitHub offers both in one
/// click): the same proposal is not opened again — the closed one carries its digest —, and
/// the next change is.
#[test]
fn a_declined_proposal_whose_branch_was_deleted_is_not_proposed_again() {
    let (lab, gh, flows, api) = github_lab();
    lab.pr_github_ok(&flows, &api);
    assert!(gh.close_pull("o/policies", 2));
    git(&lab.bare, &["branch", "-D", "leash/shop"]).expect("delete the branch");
    let requests = gh.requests().len();

    let o = lab.pr_github_ok(&flows, &api);
    assert_stdout_contains(
        &o,
        "shop: a closed pull request of leash/shop proposed these policies; not proposed again",
    );
    assert_eq!(
        lines(&gh.requests()[requests..]),
        ["GET /repos/o/policies/pulls?head=o%3Aleash%2Fshop&state=closed&per_page=100"],
        "only the closed pull requests are read"
    );
    assert_eq!(lab.tip("leash/shop"), None, "nothing pushed");
    assert_eq!(gh.pulls("o/policies").len(), 2);

    // A new destination is a new proposal: a new pull request.
    let requests = gh.requests().len();
    let flows = lab.more_flows("");
    let o = lab.pr_github_ok(&flows, &api);
    assert_stdout_contains(&o, " to leash/shop, opened #3 ");
    assert_eq!(
        lines(&gh.requests()[requests..]),
        [
            "GET /repos/o/policies/pulls?head=o%3Aleash%2Fshop&state=closed&per_page=100",
            "GET /repos/o/policies/pulls?head=o%3Aleash%2Fshop&state=open&per_page=100",
            "POST /repos/o/policies/pulls",
        ]
    );
    assert_eq!(gh.pull("o/policies", 2).expect("#2").state, "closed");
}

/// Once the user merged leash's branch, the same observations are unchanged against the base:
/// no commit, no API call.
#[test]
fn after_a_merge_the_same_observations_are_unchanged() {
    let (lab, gh, flows, api) = github_lab();
    lab.pr_github_ok(&flows, &api);
    // The user merges #2: main fast-forwards to leash/shop.
    lab.merge_shop(&gh, 2);
    let requests = gh.requests().len();
    let tips: Vec<Option<String>> = lab.branches().iter().map(|b| lab.tip(b)).collect();

    let o = lab.pr_github_ok(&flows, &api);
    assert_stdout_contains(&o, "shop: unchanged (the base branch holds these policies)");
    assert_stdout_contains(&o, "data: leash/data already holds these policies");
    assert_no_new_request(&gh, requests, "an API call without a change");
    let after: Vec<Option<String>> = lab.branches().iter().map(|b| lab.tip(b)).collect();
    assert_eq!(after, tips);

    // The next change to shop starts from the merged main and opens a new pull request.
    let main = lab.tip("main").expect("main");
    let flows = lab.more_flows("");
    let o = lab.pr_github_ok(&flows, &api);
    assert_stdout_contains(&o, " to leash/shop, opened #3 ");
    assert_eq!(
        git(&lab.bare, &["rev-parse", "leash/shop^"]).expect("parent"),
        main
    );
    let diff = git(
        &lab.bare,
        &[
            "diff",
            "--stat",
            "main",
            "leash/shop",
            "--",
            "policies/shop/frontend-egress.yaml",
        ],
    )
    .expect("diff");
    assert!(diff.contains("1 file changed"), "{diff}");
    assert_eq!(lab.tip("main").as_deref(), Some(&*main));
}

/// `--dry-run` prints the commit message and the body, and pushes and asks nothing.
#[test]
fn dry_run_prints_and_pushes_nothing() {
    let (lab, gh, flows, api) = github_lab();
    let mut args = lab.github_flags(&api);
    args.push("--dry-run");
    let o = lab.pr(&flows, &args);
    assert_code(&o, 0);
    let out = stdout(&o);
    assert!(
        out.contains("shop: would commit to leash/shop and propose \"leash: egress policies for namespace shop"),
        "{out}"
    );
    assert!(
        out.contains("--- commit message\nleash: egress policies for namespace shop"),
        "{out}"
    );
    assert!(
        out.contains("--- body\n<!-- leash:pr group=shop -->\n"),
        "{out}"
    );
    assert!(out.contains("203.0.113.10/32"), "{out}");
    assert_eq!(lab.branches(), ["main"]);
    assert_eq!(gh.requests(), []);
}

/// A change that denies observed traffic the base allowed is refused (exit 3, the breaks
/// printed, nothing pushed for that namespace); `--allow-breaks` opens it with a warning.
#[test]
fn a_change_that_breaks_observed_traffic_is_refused_unless_allowed() {
    let lab = lab(&format!("{}{UNLABELLED_POD}", snapshot()));
    let gh = github(&lab);
    let mut lines_ = base_flows();
    lines_.push(flow("shop", "debug", "198.51.100.9", 443, ""));
    let flows = lab.flows("flows.jsonl", &lines_);
    let api = gh.api_url();
    let o = lab.pr_github(&flows, &api);
    assert_code(&o, 3);
    let out = stdout(&o);
    assert!(
        out.contains(
            "shop: refused: the change breaks 1 observed flow (--allow-breaks opens it anyway):"
        ),
        "{out}"
    );
    assert!(
        out.contains("  shop Pod/debug (debug) -> 198.51.100.9:443/TCP, 10 events, last seen 2026-11-23T08:00:00Z"),
        "{out}"
    );
    assert!(stderr(&o).contains("--allow-breaks"), "{}", stderr(&o));
    // The other namespace still got its pull request; shop got nothing.
    assert_eq!(lab.branches(), ["leash/data", "main"]);
    assert!(
        gh.requests()
            .iter()
            .all(|r| !r.line().contains("leash%2Fshop") && !r.body.contains("leash/shop")),
        "{:?}",
        lines(&gh.requests())
    );

    let mut args = lab.github_flags(&api);
    args.push("--allow-breaks");
    let o = lab.pr(&flows, &args);
    assert_code(&o, 0);
    assert_stdout_contains(&o, " to leash/shop, opened #2 ");
    let pull = gh.pull("o/policies", 2).expect("#2");
    let body = pull.body.expect("a body");
    assert!(
        body.contains("> [!CAUTION]\n> **This change breaks 1 observed flow**"),
        "{body}"
    );
    assert!(body.contains("opened with `--allow-breaks`"), "{body}");
    assert!(pull.title.contains("1 break"), "{}", pull.title);
}

/// GitLab: a merge request with the token in `PRIVATE-TOKEN`; `--group-by all` makes one
/// branch with every namespace and the index.
#[test]
fn gitlab_one_merge_request_for_all_namespaces() {
    let lab = lab(&snapshot());
    let gl = GitLab::builder(&lab.token)
        .project_with_git("g/policies", &lab.bare)
        .start()
        .expect("GitLab stand-in");
    let main = lab.tip("main");
    let flows = lab.flows("flows.jsonl", &base_flows());
    let api = gl.api_url();
    let flags = [
        "--provider",
        "gitlab",
        "--api-url",
        &api,
        "--project",
        "g/policies",
        "--token-file",
        p(&lab.token_file),
        "--group-by",
        "all",
    ];
    let o = lab.pr(&flows, &flags);
    assert_code(&o, 0);
    assert_stdout_contains(&o, "all: pushed ");
    assert_stdout_contains(&o, " to leash/all, opened #1 ");
    assert_eq!(lab.branches(), ["leash/all", "main"]);
    assert_eq!(lab.tip("main"), main);
    let files = files_at(&lab.bare, "leash/all").expect("files");
    for f in [
        "policies/REPORT.md",
        "policies/shop/frontend-egress.yaml",
        "policies/data/postgres-egress.yaml",
        "policies/shop/custom.yaml",
        "README.md",
    ] {
        assert!(files.contains(&f.to_owned()), "{f} missing: {files:?}");
    }
    let requests = gl.requests();
    assert_eq!(
        lines(&requests),
        [
            "GET /api/v4/projects/g%2Fpolicies/merge_requests?source_branch=leash%2Fall&state=closed&per_page=100",
            "GET /api/v4/projects/g%2Fpolicies/merge_requests?source_branch=leash%2Fall&state=opened&per_page=100",
            "POST /api/v4/projects/g%2Fpolicies/merge_requests",
        ]
    );
    for r in &requests {
        assert_eq!(r.header("private-token"), Some(&*lab.token));
        assert!(!r.contains_outside(&lab.token, "private-token"), "{r:?}");
    }
    let mrs = gl.merge_requests("g/policies");
    assert_eq!(mrs.len(), 1);
    let mr = &mrs[0];
    assert_eq!(
        (
            mr.source_branch.as_str(),
            mr.target_branch.as_str(),
            mr.state.as_str()
        ),
        ("leash/all", "main", "opened")
    );
    let body = mr.description.clone().expect("description");
    assert!(body.starts_with("<!-- leash:pr group=all -->\n"), "{body}");
    assert!(
        body.contains("198.51.100.5") && body.contains("203.0.113.10"),
        "{body}"
    );
    lab.assert_no_token(&lab.token, &[&o]);

    // Again: nothing to do.
    let tip = lab.tip("leash/all");
    let o = lab.pr(&flows, &flags);
    assert_code(&o, 0);
    assert_eq!(
        stdout(&o),
        "all: leash/all already holds these policies\n",
        "{}",
        stderr(&o)
    );
    assert_eq!(gl.requests().len(), 3);
    assert_eq!(lab.tip("leash/all"), tip);
}

/// The repository over HTTP with token authentication: the token from `--token-file`, then
/// from `LEASH_GIT_TOKEN`, reaches neither the outputs nor the clone nor the repository.
#[test]
fn http_repository_with_a_token_keeps_the_token_secret() {
    let lab = lab(&snapshot());
    let server = GitServer::start(&lab.tmp.path().join("repos"), &lab.token).expect("git server");
    let gh = github(&lab);
    let url = server.url("policies.git");
    let api = gh.api_url();
    let flows = lab.flows("flows.jsonl", &base_flows());
    let o = lab.pr_repo(&url, &flows, &lab.github_flags(&api), &[]);
    assert_code(&o, 0);
    assert_stdout_contains(&o, " to leash/shop, opened #2 ");
    assert_eq!(lab.branches(), ["leash/data", "leash/shop", "main"]);
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.service() == Some("git-receive-pack")),
        "nothing pushed over HTTP"
    );

    // The token from the environment, for a change.
    let flows = lab.more_flows("");
    let o2 = lab.pr_repo(
        &url,
        &flows,
        &[
            "--provider",
            "github",
            "--api-url",
            &api,
            "--project",
            "o/policies",
        ],
        &[("LEASH_GIT_TOKEN", &lab.token)],
    );
    assert_code(&o2, 0);
    assert_stdout_contains(&o2, " to leash/shop, updated #2 ");
    lab.assert_no_token(&lab.token, &[&o, &o2]);
    assert!(!stdout(&o).contains(&lab.token) && !stdout(&o2).contains(&lab.token));
}

/// A wrong token fails with a message that names the repository or the API, not the token.
#[test]
fn a_wrong_token_fails_without_showing_it() {
    let lab = lab(&snapshot());
    let server = GitServer::start(&lab.tmp.path().join("repos"), &lab.token).expect("git server");
    let gh = github(&lab);
    let wrong = random_token("ghp_");
    let wrong_file = lab.tmp.path().join("wrong");
    std::fs::write(&wrong_file, &wrong).expect("writes");
    let api = gh.api_url();
    let flows = lab.flows("flows.jsonl", &base_flows());
    let flags = [
        "--provider",
        "github",
        "--api-url",
        &api,
        "--project",
        "o/policies",
        "--token-file",
        p(&wrong_file),
    ];
    // Over HTTP, git is refused first: the configuration's fault (exit 2), said as such.
    let url = server.url("policies.git");
    let o = lab.pr_repo(&url, &flows, &flags, &[]);
    assert_code(&o, 2);
    assert!(stderr(&o).contains(&url), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("the repository refused the credentials"),
        "{}",
        stderr(&o)
    );
    assert_eq!(lab.branches(), ["main"]);
    assert_eq!(gh.requests(), []);
    // Over a local path, the API refuses it.
    let o2 = lab.pr(&flows, &flags);
    assert_code(&o2, 2);
    assert!(
        stderr(&o2).contains(&format!("GitHub at {api}: the token was refused")),
        "{}",
        stderr(&o2)
    );
    lab.assert_no_token(&wrong, &[&o, &o2]);
    // The API refused the first call (the closed pull requests of the new branch), before
    // anything was pushed.
    assert_eq!(lab.branches(), ["main"]);

    // With the right token, the pull requests are opened after all.
    let o3 = lab.pr_github(&flows, &api);
    assert_code(&o3, 0);
    assert_eq!(
        gh.pulls("o/policies").len(),
        2,
        "{}\n{:?}",
        stdout(&o3),
        lines(&gh.requests())
    );
}

/// Usage errors exit 2 before any request: no project for a local path, plain http to a
/// host that is not loopback.
#[test]
fn usage_errors_exit_2_before_any_request() {
    let (lab, gh, flows, api) = github_lab();
    let o = lab.pr(
        &flows,
        &[
            "--provider",
            "github",
            "--api-url",
            &api,
            "--token-file",
            p(&lab.token_file),
        ],
    );
    assert_code(&o, 2);
    assert!(stderr(&o).contains("--project"), "{}", stderr(&o));

    let o = lab.pr(&flows, &["--provider", "none", "--base", "release"]);
    assert_code(&o, 2);
    assert!(stderr(&o).contains("release"), "{}", stderr(&o));

    let o = lab.pr(
        &flows,
        &[
            "--provider",
            "github",
            "--api-url",
            "http://api.example.test/",
            "--project",
            "o/policies",
            "--token-file",
            p(&lab.token_file),
        ],
    );
    assert_code(&o, 2);
    assert!(
        stderr(&o).contains("http://api.example.test"),
        "{}",
        stderr(&o)
    );
    assert_eq!(gh.requests(), []);
    assert_eq!(lab.branches(), ["main"]);

    // --path stays inside the repository: nothing is written outside it, even with
    // --dry-run.
    let outside = lab.tmp.path().join("outside");
    for path in [
        p(&outside).to_owned(),
        "../../outside".to_owned(),
        ".git/hooks".to_owned(),
    ] {
        let o = lab.pr_at(
            p(&lab.bare),
            Some(&path),
            &flows,
            &["--provider", "none", "--dry-run"],
            &[],
        );
        assert_code(&o, 2);
        assert!(stderr(&o).contains(&path), "{}", stderr(&o));
        assert!(!outside.exists(), "{path}: written outside the repository");
    }
    assert_eq!(lab.branches(), ["main"]);
}

/// The repository over SSH with a key file and pinned host keys; `--provider none` only
/// pushes.
#[test]
fn ssh_repository_with_a_key_pushes_the_branches() {
    let Some(sshd) = sshd_or_skip() else {
        return;
    };
    let lab = lab(&snapshot());
    let main = lab.tip("main");
    let flows = lab.flows("flows.jsonl", &base_flows());
    let url = sshd.url(&lab.bare);
    let key = sshd.client_key();
    let known = sshd.known_hosts();
    let o = lab.pr_repo(
        &url,
        &flows,
        &[
            "--provider",
            "none",
            "--ssh-key",
            p(&key),
            "--ssh-known-hosts",
            p(&known),
        ],
        &[],
    );
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("shop: pushed ") && !stdout(&o).contains("opened"),
        "{}\n{}",
        stdout(&o),
        sshd.log()
    );
    assert_eq!(lab.branches(), ["leash/data", "leash/shop", "main"]);
    assert_eq!(lab.tip("main"), main);
    assert!(
        files_at(&lab.bare, "leash/shop")
            .expect("files")
            .contains(&"policies/shop/frontend-egress.yaml".to_owned())
    );
}

/// A `--path` that is a symlink in the repository (to a directory outside it) is refused:
/// leash never writes through the repository's links.
#[test]
fn a_symlinked_path_in_the_repository_is_refused() {
    let lab = lab(&snapshot());
    let victim = lab.tmp.path().join("victim");
    std::fs::create_dir_all(&victim).expect("mkdir");
    // The team's repository holds `policies -> VICTIM`.
    let scratch = lab.tmp.path().join("scratch");
    git(
        lab.tmp.path(),
        &["clone", "--quiet", p(&lab.bare), p(&scratch)],
    )
    .expect("clone");
    std::fs::remove_dir_all(scratch.join("policies")).expect("rm");
    std::os::unix::fs::symlink(&victim, scratch.join("policies")).expect("symlink");
    git(&scratch, &["add", "--all"]).expect("add");
    git(&scratch, &["commit", "--quiet", "-m", "link"]).expect("commit");
    git(&scratch, &["push", "--quiet", "origin", "main"]).expect("push");
    let flows = lab.flows("flows.jsonl", &base_flows());
    for extra in [
        &["--provider", "none"][..],
        &["--provider", "none", "--dry-run"],
    ] {
        let o = lab.pr(&flows, extra);
        assert_code(&o, 2);
        assert!(stderr(&o).contains("policies"), "{}", stderr(&o));
        assert_eq!(
            std::fs::read_dir(&victim).expect("lists").count(),
            0,
            "written through the link"
        );
    }
    assert_eq!(lab.branches(), ["main"]);
}

/// shop with `n` Deployments `app-I` (one pod each, 10.244.5.I).
fn many_workloads(n: usize) -> String {
    let mut s = String::from(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: shop, labels: {kubernetes.io/metadata.name: shop}}\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            r"- apiVersion: v1
  kind: Pod
  metadata:
    name: app-{i}-1
    namespace: shop
    uid: uid-app-{i}-1
    labels: {{app: app-{i}, pod-template-hash: 5d8f}}
    ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: app-{i}-5d8f, uid: uid-rs-{i}, controller: true}}]
  spec: {{nodeName: n1, containers: [{{name: c, image: c:1}}]}}
  status: {{phase: Running, podIP: 10.244.{}.{}, podIPs: [{{ip: 10.244.{}.{}}}]}}
",
            5 + i / 200,
            i % 200 + 1,
            5 + i / 200,
            i % 200 + 1,
        ));
    }
    s
}

/// A body over GitHub's limit: the full body is committed on the branch, and the pull
/// request's body, within the limit, links it.
#[test]
fn a_body_over_the_limit_links_the_full_body_on_the_branch() {
    const N: usize = 300;
    let lab = lab(&many_workloads(N));
    let gh = github(&lab);
    let lines_: Vec<String> = (0..N)
        .map(|i| {
            flow(
                "shop",
                &format!("app-{i}-1"),
                &format!("198.18.{}.{}", i / 200, i % 200 + 1),
                443,
                &format!(r#""svc-{i}.partner.test""#),
            )
        })
        .collect();
    let flows = lab.flows("flows.jsonl", &lines_);
    let api = gh.api_url();
    lab.pr_github_ok(&flows, &api);
    let pull = gh.pull("o/policies", 1).expect("#1");
    let body = pull.body.expect("body");
    assert!(body.chars().count() <= 65_536, "{}", body.len());
    assert!(body.starts_with("<!-- leash:pr group=shop -->\n"), "{body}");
    let link = format!(
        "{}/o/policies/blob/leash/shop/policies/shop/PULL_REQUEST.md",
        gh.base_url()
    );
    assert!(body.contains(&link), "{body}");
    let full = file_at(&lab.bare, "leash/shop", "policies/shop/PULL_REQUEST.md")
        .expect("file")
        .expect("the full body on the branch");
    assert!(full.chars().count() > 65_536, "{}", full.len());
    assert!(
        full.contains("svc\\-299\\.partner\\.test"),
        "the last evidence row"
    );

    // Unchanged observations: still nothing to do (the full body is not a policy).
    let requests = gh.requests().len();
    let tip = lab.tip("leash/shop");
    lab.pr_github_ok(&flows, &api);
    assert_eq!(gh.requests().len(), requests);
    assert_eq!(lab.tip("leash/shop"), tip);

    // Merged; the next change is small and its body fits: the full body of the last one,
    // now on main, is removed rather than left to mislead.
    lab.merge_shop(&gh, 1);
    let mut more = lines_;
    more.push(flow("shop", "app-0-1", "192.0.2.50", 8443, ""));
    let flows = lab.flows("more.jsonl", &more);
    lab.pr_github_ok(&flows, &api);
    let body = gh.pull("o/policies", 2).expect("#2").body.expect("body");
    assert!(!body.contains("PULL_REQUEST.md"), "{body}");
    assert_eq!(
        file_at(&lab.bare, "leash/shop", "policies/shop/PULL_REQUEST.md").expect("file"),
        None
    );
}

/// A workload gone from the cluster: its merged policy is removed on leash's branch, and the
/// team's file beside it stays.
#[test]
fn a_workload_gone_from_the_cluster_has_its_policy_removed() {
    let (lab, gh, flows, api) = github_lab();
    lab.pr_github_ok(&flows, &api);
    lab.merge_shop(&gh, 2);
    // frontend is deleted: the snapshot without its pod, the records without its flows.
    let snapshot = snapshot();
    let start = snapshot
        .find("- apiVersion: v1\n  kind: Pod\n")
        .expect("first pod");
    let end = start
        + snapshot[start..]
            .find("- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: postgres-0")
            .expect("second pod");
    let without = format!("{}{}", &snapshot[..start], &snapshot[end..]);
    assert!(!without.contains("frontend"), "{without}");
    std::fs::write(&lab.cluster, without).expect("writes");
    let flows = lab.flows("after.jsonl", &base_flows()[2..]);
    let o = lab.pr_github_ok(&flows, &api);
    assert_stdout_contains(&o, " to leash/shop, opened #3 ");
    let files = files_at(&lab.bare, "leash/shop").expect("files");
    assert!(
        !files.iter().any(|f| f.ends_with("frontend-egress.yaml") || f.ends_with("default-deny-egress.yaml")),
        "{files:?}"
    );
    assert!(
        files.contains(&"policies/shop/custom.yaml".to_owned()),
        "{files:?}"
    );
    let body = gh.pull("o/policies", 3).expect("#3").body.expect("body");
    assert!(body.contains("2 removed"), "{body}");
}

/// The defaults: `--path .` (the repository's root) and, for a local path, no provider: the
/// branches are pushed, the team's files stay.
#[test]
fn defaults_write_at_the_root_and_only_push_for_a_local_path() {
    let lab = lab(&snapshot());
    let flows = lab.flows("flows.jsonl", &base_flows());
    let o = lab.pr_at(p(&lab.bare), None, &flows, &[], &[]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("shop: pushed ") && !stdout(&o).contains('#'),
        "{}",
        stdout(&o)
    );
    assert_eq!(lab.branches(), ["leash/data", "leash/shop", "main"]);
    let files = files_at(&lab.bare, "leash/shop").expect("files");
    assert!(
        files.contains(&"shop/frontend-egress.yaml".to_owned())
            && !files
                .iter()
                .any(|f| f.starts_with("data/") || f == "REPORT.md"),
        "{files:?}"
    );
    for (path, text) in TEAM_FILES {
        assert_eq!(
            file_at(&lab.bare, "leash/shop", path)
                .expect("file")
                .as_deref(),
            Some(*text),
            "{path}"
        );
    }
}

/// The observations from `leash serve`'s store: the first run pushes, the second (the same
/// store, later) changes nothing.
#[test]
fn from_the_store_the_second_run_changes_nothing() {
    use leash_records::Record;

    let lab = lab(&snapshot());
    let now = chrono::Utc::now();
    let first = leash_records::time::rfc3339(now - chrono::Duration::days(3));
    let last = leash_records::time::rfc3339(now - chrono::Duration::hours(1));
    let text = base_flows()
        .join("\n")
        .replace(FIRST, &first)
        .replace(LAST, &last);
    let path = lab.tmp.path().join("records.jsonl");
    let flows: Vec<leash_records::FlowRecord> =
        leash_records::read_records(std::io::Cursor::new(text.into_bytes()), &path)
            .filter_map(|l| match l.expect("a valid record").record {
                Record::Flow(f) => Some(f),
                Record::Dns(_) => None,
            })
            .collect();
    assert_eq!(flows.len(), 3);
    let cluster = leash::cluster::Cluster::load(&lab.cluster).expect("snapshot");
    let db = lab.tmp.path().join("leash.db");
    commit_records(&db, &cluster, &flows);

    let run = || {
        leash(
            &[
                "pr",
                "--cluster",
                p(&lab.cluster),
                "--store",
                p(&db),
                "--since",
                "7d",
                "--repo",
                p(&lab.bare),
                "--path",
                "policies",
                "--cache-dir",
                p(&lab.cache),
                "--provider",
                "none",
            ],
            &[],
        )
    };
    let o = run();
    assert_code(&o, 0);
    assert_stdout_contains(&o, " to leash/shop\n");
    let tip = lab.tip("leash/shop").expect("pushed");
    let o = run();
    assert_code(&o, 0);
    assert_stdout_contains(&o, "shop: leash/shop already holds these policies");
    assert_eq!(lab.tip("leash/shop").as_deref(), Some(&*tip));
}

/// HTTPS with a private CA (`--api-ca-file`) for both the git server and the API, whatever
/// the machine's `GIT_SSL_CAINFO` says; without the CA, the run fails before any push.
#[test]
fn https_with_a_private_ca() {
    let lab = lab(&snapshot());
    let ca = leash_lab::forge::TestCa::generate().expect("CA");
    let ca_file = lab.tmp.path().join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).expect("writes");
    let server =
        GitServer::start_tls(&lab.tmp.path().join("repos"), &lab.token, &ca).expect("git server");
    let gh = GitHub::builder(&lab.token)
        .repo_with_git("o/policies", &lab.bare)
        .tls(&ca)
        .start()
        .expect("GitHub stand-in");
    let url = server.url("policies.git");
    assert!(url.starts_with("https://"), "{url}");
    let api = gh.api_url();
    let flows = lab.flows("flows.jsonl", &base_flows());
    let mut flags = lab.github_flags(&api);
    // Without the CA: git refuses the server's certificate.
    let o = lab.pr_repo(&url, &flows, &flags, &[("GIT_SSL_CAINFO", "/dev/null")]);
    assert_ne!(o.status.code(), Some(0), "{}", stdout(&o));
    assert_eq!(lab.branches(), ["main"]);
    assert_eq!(gh.requests(), []);
    flags.extend(["--api-ca-file", p(&ca_file)]);
    let o = lab.pr_repo(&url, &flows, &flags, &[("GIT_SSL_CAINFO", "/dev/null")]);
    assert_code(&o, 0);
    assert_stdout_contains(&o, " to leash/shop, opened #2 ");
    assert_eq!(lab.branches(), ["leash/data", "leash/shop", "main"]);
    lab.assert_no_token(&lab.token, &[&o]);
}
