//! The HTTP git server through the real git command: clone and push with the token, refusals
//! without it, a push larger than git's post buffer (a chunked, streamed request body), and
//! the bare repository helpers.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

use std::path::Path;

use leash_lab::forge::{TestCa, random_token};
use leash_lab::git_server::{
    self, GitServer, branches, create_bare_repo, file_at, files_at, find_text, git, git_command,
    protect_branch, rev_parse,
};

/// A server over a fresh root holding `policies.git` (README.md and deploy/np.yaml on main).
fn setup() -> (tempfile::TempDir, GitServer) {
    let root = tempfile::tempdir().unwrap();
    create_bare_repo(
        root.path(),
        "policies.git",
        &[
            ("README.md", "policies\n"),
            ("deploy/np.yaml", "kind: NetworkPolicy\n"),
        ],
    )
    .unwrap();
    let server = GitServer::start(root.path(), &random_token("lab_")).unwrap();
    (root, server)
}

/// Runs git in `dir` and returns (success, stderr).
fn try_git(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = git_command().current_dir(dir).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bare_repo_has_one_reproducible_commit_on_main() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let files = [("x/y.txt", "y\n"), ("z.txt", "z\n")];
    let ra = create_bare_repo(a.path(), "r.git", &files).unwrap();
    let rb = create_bare_repo(b.path(), "r.git", &files).unwrap();
    assert_eq!(branches(&ra).unwrap(), ["main"]);
    let head = rev_parse(&ra, "main").unwrap().unwrap();
    assert_eq!(Some(head.clone()), rev_parse(&rb, "main").unwrap());
    assert_eq!(git(&ra, &["rev-list", "--count", "main"]).unwrap(), "1");
    assert_eq!(files_at(&ra, "main").unwrap(), ["x/y.txt", "z.txt"]);
    assert_eq!(
        file_at(&ra, "main", "x/y.txt").unwrap().as_deref(),
        Some("y\n")
    );
    assert_eq!(file_at(&ra, "main", "nope").unwrap(), None);
    assert_eq!(rev_parse(&ra, "leash/shop").unwrap(), None);
    assert_eq!(
        git(&ra, &["symbolic-ref", "HEAD"]).unwrap(),
        "refs/heads/main"
    );
}

#[test]
fn clone_and_push_with_the_token() {
    let (root, server) = setup();
    let bare = root.path().join("policies.git");
    let main_before = rev_parse(&bare, "main").unwrap().unwrap();
    let work = tempfile::tempdir().unwrap();
    let url = server.url_with_credentials("policies.git");
    git(work.path(), &["clone", "--quiet", &url, "wc"]).unwrap();
    let wc = work.path().join("wc");
    assert_eq!(
        std::fs::read_to_string(wc.join("deploy/np.yaml")).unwrap(),
        "kind: NetworkPolicy\n"
    );
    assert_eq!(git(&wc, &["rev-parse", "HEAD"]).unwrap(), main_before);

    git(&wc, &["switch", "--quiet", "-c", "leash/shop"]).unwrap();
    std::fs::write(wc.join("deploy/shop.yaml"), "kind: NetworkPolicy # shop\n").unwrap();
    git(&wc, &["add", "--all"]).unwrap();
    git(&wc, &["commit", "--quiet", "-m", "leash: shop"]).unwrap();
    git(&wc, &["push", "--quiet", "origin", "leash/shop"]).unwrap();

    let pushed = git(&wc, &["rev-parse", "HEAD"]).unwrap();
    assert_eq!(rev_parse(&bare, "leash/shop").unwrap(), Some(pushed));
    assert_eq!(
        file_at(&bare, "leash/shop", "deploy/shop.yaml")
            .unwrap()
            .as_deref(),
        Some("kind: NetworkPolicy # shop\n")
    );
    assert_eq!(
        rev_parse(&bare, "main").unwrap(),
        Some(main_before),
        "main moved"
    );
    assert_eq!(branches(&bare).unwrap(), ["leash/shop", "main"]);

    // A force-push of the branch (what `leash pr` does to its own branches) is accepted too.
    git(
        &wc,
        &["commit", "--quiet", "--amend", "-m", "leash: shop, again"],
    )
    .unwrap();
    git(&wc, &["push", "--quiet", "--force", "origin", "leash/shop"]).unwrap();
    let amended = git(&wc, &["rev-parse", "HEAD"]).unwrap();
    assert_eq!(rev_parse(&bare, "leash/shop").unwrap(), Some(amended));

    let requests = server.requests();
    let services: Vec<_> = requests
        .iter()
        .filter(|r| r.authorized)
        .filter_map(|r| r.service())
        .collect();
    assert!(services.contains(&"git-upload-pack"), "{requests:?}");
    assert!(services.contains(&"git-receive-pack"), "{requests:?}");
    assert!(
        requests
            .iter()
            .filter(|r| r.authorized)
            .all(|r| r.user.as_deref() == Some("x-access-token")),
        "{requests:?}"
    );
    assert!(requests.iter().all(|r| !r.path.contains(server.token())));
}

#[test]
fn refused_without_the_token_or_with_a_wrong_one() {
    let (root, server) = setup();
    let work = tempfile::tempdir().unwrap();

    let (ok, stderr) = try_git(
        work.path(),
        &["clone", "--quiet", &server.url("policies.git"), "a"],
    );
    assert!(!ok, "cloned without credentials");
    // The 401's Basic challenge made git look for credentials (and, with prompts off, fail).
    assert!(stderr.contains("could not read Username"), "{stderr}");

    let wrong = format!(
        "http://x-access-token:wrong@{}/policies.git",
        &server.base_url()[7..]
    );
    let (ok, stderr) = try_git(work.path(), &["clone", "--quiet", &wrong, "b"]);
    assert!(!ok, "cloned with a wrong token");
    assert!(stderr.contains("Authentication failed"), "{stderr}");

    let requests = server.requests();
    assert!(!requests.is_empty());
    assert!(requests.iter().all(|r| !r.authorized), "{requests:?}");
    assert!(
        requests
            .iter()
            .any(|r| r.user.as_deref() == Some("x-access-token"))
    );

    // A push with a wrong token changes nothing.
    let bare = root.path().join("policies.git");
    let wc = work.path().join("c");
    git(
        work.path(),
        &[
            "clone",
            "--quiet",
            &server.url_with_credentials("policies.git"),
            "c",
        ],
    )
    .unwrap();
    git(&wc, &["commit", "--quiet", "--allow-empty", "-m", "sneaky"]).unwrap();
    let (ok, _) = try_git(&wc, &["push", "--quiet", &wrong, "HEAD:refs/heads/sneaky"]);
    assert!(!ok, "pushed with a wrong token");
    assert_eq!(branches(&bare).unwrap(), ["main"]);
}

#[test]
fn credentials_from_a_helper_after_the_challenge() {
    // The way a product hands git a token without putting it in a URL: a credential helper
    // reading it from the environment, asked only after the server's 401 challenge.
    let (root, server) = setup();
    let work = tempfile::tempdir().unwrap();
    let out = git_command()
        .current_dir(work.path())
        .env("LAB_TOKEN", server.token())
        .args([
            "-c",
            "credential.helper=",
            "-c",
            "credential.helper=!f() { echo username=leash; echo \"password=$LAB_TOKEN\"; }; f",
            "clone",
            "--quiet",
            &server.url("policies.git"),
            "wc",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let requests = server.requests();
    assert!(
        !requests[0].authorized && requests[0].user.is_none(),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.authorized && r.user.as_deref() == Some("leash"))
    );
    assert_eq!(
        rev_parse(&work.path().join("wc"), "HEAD").unwrap(),
        rev_parse(&root.path().join("policies.git"), "main").unwrap()
    );
}

#[test]
fn large_push_streams_through() {
    // Larger than git's default http.postBuffer (1 MiB): git probes with a 4-byte request,
    // then sends the pack chunked, without a Content-Length, and the server streams it into
    // the backend.
    let (root, server) = setup();
    let work = tempfile::tempdir().unwrap();
    git(
        work.path(),
        &[
            "clone",
            "--quiet",
            &server.url_with_credentials("policies.git"),
            "wc",
        ],
    )
    .unwrap();
    let wc = work.path().join("wc");
    // Incompressible content: a simple generator, so the pack stays about 3 MiB.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let blob: Vec<u8> = (0..3 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(wc.join("big.bin"), &blob).unwrap();
    git(&wc, &["add", "big.bin"]).unwrap();
    git(&wc, &["commit", "--quiet", "-m", "big"]).unwrap();
    git(&wc, &["push", "--quiet", "origin", "HEAD:refs/heads/big"]).unwrap();
    let bare = root.path().join("policies.git");
    assert_eq!(
        rev_parse(&bare, "big").unwrap(),
        rev_parse(&wc, "HEAD").unwrap(),
        "backend: {}",
        server.backend_stderr()
    );
    let pack = server
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.method == "POST" && r.path.ends_with("/git-receive-pack"))
        .unwrap();
    assert_eq!(pack.content_length, None, "the pack was not sent chunked");
    let size = git(&bare, &["cat-file", "-s", "big:big.bin"]).unwrap();
    assert_eq!(size, (3 << 20).to_string());
}

#[test]
fn missing_git_is_reported_as_unavailable() {
    // The error a missing installation gives names the cause, so tests can skip with a reason.
    let e = git_server::Error::Unavailable("cannot run `git --exec-path`".into());
    assert_eq!(
        e.to_string(),
        "git is unavailable: cannot run `git --exec-path`"
    );
}

#[test]
fn find_text_sees_tokens_in_files_and_objects() {
    let (root, server) = setup();
    let bare = root.path().join("policies.git");
    let token = server.token().to_owned();
    let work = tempfile::tempdir().unwrap();
    git(
        work.path(),
        &[
            "clone",
            "--quiet",
            &server.url_with_credentials("policies.git"),
            "wc",
        ],
    )
    .unwrap();
    let wc = work.path().join("wc");
    assert_eq!(find_text(&bare, &token).unwrap(), Vec::<String>::new());
    // A URL with credentials lands in the working copy's configuration.
    assert_eq!(find_text(&wc, &token).unwrap(), [".git/config"]);

    // A committed token is found in the (compressed) objects, pushed or not.
    std::fs::write(wc.join("leak.txt"), format!("token={token}\n")).unwrap();
    git(&wc, &["add", "leak.txt"]).unwrap();
    git(&wc, &["commit", "--quiet", "-m", "leak"]).unwrap();
    git(&wc, &["push", "--quiet", "origin", "HEAD:refs/heads/leak"]).unwrap();
    let blob = git(&wc, &["rev-parse", "HEAD:leak.txt"]).unwrap();
    let in_bare = find_text(&bare, &token).unwrap();
    assert_eq!(in_bare, [format!("object {blob}")]);
    let in_wc = find_text(&wc, &token).unwrap();
    assert!(in_wc.contains(&format!("object {blob}")), "{in_wc:?}");
    assert!(in_wc.contains(&"leak.txt".to_owned()), "{in_wc:?}");
    assert!(
        find_text(&bare, "no such text anywhere")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_protected_branch_refuses_pushes() {
    let (root, server) = setup();
    let bare = root.path().join("policies.git");
    protect_branch(&bare, "main").unwrap();
    protect_branch(&bare, "it's-$(x)").unwrap();
    let main = rev_parse(&bare, "main").unwrap();
    let work = tempfile::tempdir().unwrap();
    let url = server.url_with_credentials("policies.git");
    git(work.path(), &["clone", "--quiet", &url, "wc"]).unwrap();
    let wc = work.path().join("wc");
    git(
        &wc,
        &["commit", "--quiet", "--allow-empty", "-m", "to main"],
    )
    .unwrap();
    for target in ["main", "it's-$(x)"] {
        let (ok, stderr) = try_git(
            &wc,
            &["push", "--quiet", "origin", &format!("HEAD:{target}")],
        );
        assert!(!ok, "pushed to the protected {target}");
        assert!(
            stderr.contains(&format!(
                "Protected branch update failed for refs/heads/{target}"
            )),
            "{stderr}"
        );
    }
    assert_eq!(rev_parse(&bare, "main").unwrap(), main);
    // Other branches still take pushes.
    git(
        &wc,
        &["push", "--quiet", "origin", "HEAD:refs/heads/leash/all"],
    )
    .unwrap();
    assert_eq!(branches(&bare).unwrap(), ["leash/all", "main"]);
}

#[test]
fn https_clone_trusts_only_the_test_ca() {
    let root = tempfile::tempdir().unwrap();
    create_bare_repo(root.path(), "p.git", &[("a", "a\n")]).unwrap();
    let ca = TestCa::generate().unwrap();
    let server = GitServer::start_tls(root.path(), &random_token("lab_"), &ca).unwrap();
    let url = server.url_with_credentials("p.git");
    assert!(url.starts_with("https://x-access-token:"), "{url}");
    let work = tempfile::tempdir().unwrap();
    let (ok, stderr) = try_git(work.path(), &["clone", "--quiet", &url, "untrusted"]);
    assert!(!ok, "cloned without trusting the CA");
    assert!(stderr.contains("certificate"), "{stderr}");

    let ca_file = work.path().join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let trust = format!("http.sslCAInfo={}", ca_file.display());
    git(work.path(), &["-c", &trust, "clone", "--quiet", &url, "wc"]).unwrap();
    assert_eq!(
        std::fs::read_to_string(work.path().join("wc/a")).unwrap(),
        "a\n"
    );
    let wc = work.path().join("wc");
    git(&wc, &["commit", "--quiet", "--allow-empty", "-m", "x"]).unwrap();
    git(
        &wc,
        &[
            "-c",
            &trust,
            "push",
            "--quiet",
            "origin",
            "HEAD:refs/heads/leash/all",
        ],
    )
    .unwrap();
    assert_eq!(
        branches(&root.path().join("p.git")).unwrap(),
        ["leash/all", "main"]
    );
}
