//! The working copy of `leash pr` against real repositories: a bare repository over a local
//! path, `git http-backend` behind a token-checking HTTP(S) server, and a private `sshd`
//! (leash-lab's stand-ins). Each test shows the branch, the commit, the files and the base
//! branch left alone, and that the token reaches no file and no error.
//!
//! The SSH test needs `sshd` (`openssh-server`); without it the test skips with the reason,
//! unless `LEASH_REQUIRE_PRIVILEGED=1`, which makes it fail.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use leash::pr::git::{Auth, Author, Error, Remote, WorkingCopy};
use leash::pr::secret::Secret;
use leash_lab::forge::{TestCa, random_token};
use leash_lab::git_server::{
    GitServer, branches, create_bare_repo, file_at, files_at, find_text, git, protect_branch,
    rev_parse,
};
use leash_records::error::Chain;
use support::sshd::sshd_or_skip;

fn author() -> Author {
    Author {
        name: "leash bot".into(),
        email: "leash@example.test".into(),
    }
}

fn local(repo: &Path) -> Remote {
    Remote {
        url: repo.to_str().expect("utf-8 path").to_owned(),
        auth: Auth::None,
        ca_file: None,
    }
}

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, text).expect("write");
}

fn seed(root: &Path) -> PathBuf {
    create_bare_repo(
        root,
        "policies.git",
        &[
            ("README.md", "the team's policies\n"),
            (
                "policies/other/team.yaml",
                "kind: NetworkPolicy # by hand\n",
            ),
            (
                "policies/shop/custom.yaml",
                "kind: NetworkPolicy # by the team\n",
            ),
        ],
    )
    .expect("bare repository")
}

/// Writes the proposal for `shop` and commits it.
fn propose(wc: &WorkingCopy, files: &[(&str, &str)], message: &str) -> Option<String> {
    for (name, text) in files {
        write(wc.dir(), &format!("policies/shop/{name}"), text);
    }
    wc.commit(Path::new("policies/shop"), message, &author())
        .expect("commit")
}

fn token_file(dir: &Path, token: &str) -> Secret {
    let path = dir.join(format!("token-{}", &token[..8]));
    std::fs::write(&path, format!("{token}\n")).expect("token file");
    Secret::from_file(&path).expect("token")
}

#[test]
fn local_repository_gets_leash_branch_and_nothing_else() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bare = seed(&tmp.path().join("repos"));
    let base = rev_parse(&bare, "main").expect("rev-parse").expect("main");
    let cache = tmp.path().join("cache");

    let wc = WorkingCopy::sync(&cache, local(&bare), "main", "leash/").expect("sync");
    assert_eq!(wc.base_commit(), base);
    assert!(wc.dir().starts_with(&cache), "{}", wc.dir().display());
    assert_eq!(wc.branch_tip("leash/shop"), None);
    // The base is checked out.
    assert_eq!(
        std::fs::read_to_string(wc.dir().join("README.md")).expect("README"),
        "the team's policies\n"
    );
    // Files outside the directory never go into leash's commit, even when changed.
    write(wc.dir(), "README.md", "changed by someone\n");
    write(wc.dir(), "stray.txt", "not leash's\n");
    let a = "kind: NetworkPolicy # a\n";
    let b = "kind: NetworkPolicy # b\n";
    let message = "leash: egress policies for shop\n\n# Summary\n2 workloads\n";
    let c1 = propose(&wc, &[("a.yaml", a), ("b.yaml", b)], message).expect("a commit");
    wc.push(&c1, "leash/shop").expect("push");

    assert_eq!(branches(&bare).expect("branches"), ["leash/shop", "main"]);
    assert_eq!(
        rev_parse(&bare, "leash/shop").expect("rev").as_deref(),
        Some(&*c1)
    );
    assert_eq!(
        files_at(&bare, "leash/shop").expect("files"),
        [
            "README.md",
            "policies/other/team.yaml",
            "policies/shop/a.yaml",
            "policies/shop/b.yaml",
            "policies/shop/custom.yaml"
        ]
    );
    assert_eq!(
        file_at(&bare, "leash/shop", "policies/shop/a.yaml")
            .expect("a")
            .as_deref(),
        Some(a)
    );
    assert_eq!(
        file_at(&bare, "leash/shop", "README.md")
            .expect("readme")
            .as_deref(),
        Some("the team's policies\n")
    );
    let log = git(
        &bare,
        &[
            "log",
            "-1",
            "--format=%an <%ae>|%cn <%ce>|%P|%B",
            "leash/shop",
        ],
    )
    .expect("log");
    assert_eq!(
        log,
        format!(
            "leash bot <leash@example.test>|leash bot <leash@example.test>|{base}|{}",
            message.trim_end()
        ),
        "author, committer, parent and message (markdown headings kept)"
    );
    assert_eq!(
        rev_parse(&bare, "main").expect("rev").as_deref(),
        Some(&*base)
    );
    assert_eq!(wc.branch_tip("leash/shop").as_deref(), Some(&*c1));

    // Never the base branch, never a branch outside the prefix.
    for branch in [
        "main",
        "feature/x",
        "leash/",
        "leash",
        "-f",
        "leash/../main",
    ] {
        let e = wc.push(&c1, branch).expect_err(branch);
        assert!(
            matches!(e, Error::Refused { .. } | Error::Name { .. }),
            "{branch}: {e:?}"
        );
        assert!(Chain(&e).to_string().contains(branch), "{}", Chain(&e));
    }
    assert_eq!(branches(&bare).expect("branches"), ["leash/shop", "main"]);
    assert_eq!(
        rev_parse(&bare, "main").expect("rev").as_deref(),
        Some(&*base)
    );

    // checkout makes the work tree exactly the commit: changes, untracked and ignored files go.
    write(wc.dir(), ".gitignore", "*.tmp\n");
    write(wc.dir(), "x.tmp", "ignored\n");
    wc.checkout(&c1).expect("checkout");
    for gone in ["stray.txt", "x.tmp", ".gitignore"] {
        assert!(!wc.dir().join(gone).exists(), "{gone}");
    }
    assert_eq!(
        std::fs::read_to_string(wc.dir().join("README.md")).expect("README"),
        "the team's policies\n"
    );
    drop(wc);

    // A second run with the same files: nothing to commit on top of leash's branch.
    let wc = WorkingCopy::sync(&cache, local(&bare), "main", "leash/").expect("second sync");
    let tip = wc.branch_tip("leash/shop").expect("fetched tip");
    assert_eq!(tip, c1);
    wc.checkout(&tip).expect("checkout tip");
    assert_eq!(propose(&wc, &[("a.yaml", a), ("b.yaml", b)], "again"), None);

    // Changes and deletions under the directory are committed.
    std::fs::remove_file(wc.dir().join("policies/shop/b.yaml")).expect("rm");
    let a2 = "kind: NetworkPolicy # a, wider\n";
    let c2 = propose(&wc, &[("a.yaml", a2)], "leash: shop changed").expect("commit");
    wc.push(&c2, "leash/shop").expect("fast-forward push");
    assert_eq!(
        files_at(&bare, "leash/shop").expect("files"),
        [
            "README.md",
            "policies/other/team.yaml",
            "policies/shop/a.yaml",
            "policies/shop/custom.yaml"
        ]
    );
    assert_eq!(
        file_at(&bare, "leash/shop", "policies/shop/a.yaml")
            .expect("a")
            .as_deref(),
        Some(a2)
    );
    assert_eq!(
        rev_parse(&bare, "main").expect("rev").as_deref(),
        Some(&*base)
    );
}

#[test]
fn force_with_lease_protects_others_pushes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bare = seed(&tmp.path().join("repos"));
    let cache = tmp.path().join("cache");
    let wc = WorkingCopy::sync(&cache, local(&bare), "main", "leash/").expect("sync");
    let c1 = propose(&wc, &[("a.yaml", "one\n")], "leash: one").expect("commit");
    wc.push(&c1, "leash/shop").expect("push");
    drop(wc);

    let wc = WorkingCopy::sync(&cache, local(&bare), "main", "leash/").expect("sync");
    // Someone else pushes to leash/shop (and creates leash/new) after leash fetched.
    let other = tmp.path().join("other");
    let bare_s = bare.to_str().expect("utf-8");
    git(tmp.path(), &["clone", "--quiet", bare_s, "other"]).expect("clone");
    git(&other, &["checkout", "--quiet", "leash/shop"]).expect("checkout");
    write(&other, "policies/shop/a.yaml", "theirs\n");
    git(&other, &["commit", "--quiet", "-am", "by hand"]).expect("commit");
    git(
        &other,
        &[
            "push",
            "--quiet",
            "origin",
            "leash/shop",
            "leash/shop:leash/new",
        ],
    )
    .expect("push");
    let theirs = rev_parse(&bare, "leash/shop")
        .expect("rev")
        .expect("theirs");

    wc.checkout(wc.base_commit()).expect("checkout");
    let c2 = propose(&wc, &[("a.yaml", "two\n")], "leash: two").expect("commit");
    for branch in ["leash/shop", "leash/new"] {
        let e = wc.push(&c2, branch).expect_err("stale lease");
        let text = Chain(&e).to_string();
        assert!(matches!(e, Error::Rejected { .. }), "{e:?}");
        assert!(text.contains(branch) && text.contains(bare_s), "{text}");
        assert!(
            text.contains("stale info") && text.contains("sync again"),
            "{text}"
        );
        assert_eq!(
            rev_parse(&bare, branch).expect("rev").as_deref(),
            Some(&*theirs)
        );
    }
    drop(wc);

    // After a fresh sync leash owns the branch again and force-pushes over the rewritten one.
    let wc = WorkingCopy::sync(&cache, local(&bare), "main", "leash/").expect("sync");
    assert_eq!(wc.branch_tip("leash/shop").as_deref(), Some(&*theirs));
    let c3 = propose(&wc, &[("a.yaml", "three\n")], "leash: three").expect("commit");
    let parent = git(&bare, &["rev-parse", &format!("{c3}^")]);
    assert!(parent.is_err(), "c3 is not in the bare repository yet");
    wc.push(&c3, "leash/shop")
        .expect("non-fast-forward push with lease");
    assert_eq!(
        rev_parse(&bare, "leash/shop").expect("rev").as_deref(),
        Some(&*c3)
    );
    assert_eq!(
        git(&bare, &["merge-base", "--is-ancestor", &theirs, &c3]).ok(),
        None,
        "a rewrite, not a fast-forward"
    );

    // A deleted branch is pruned from the working copy at the next sync.
    git(&bare, &["branch", "-D", "leash/new"]).expect("delete");
    drop(wc);
    let wc = WorkingCopy::sync(&cache, local(&bare), "main", "leash/").expect("sync");
    assert_eq!(wc.branch_tip("leash/new"), None);
    assert_eq!(wc.branch_tip("leash/shop").as_deref(), Some(&*c3));
}

#[test]
fn remote_protection_and_hooks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bare = seed(&tmp.path().join("repos"));
    let base = rev_parse(&bare, "main").expect("rev").expect("main");
    protect_branch(&bare, "main").expect("protect");
    protect_branch(&bare, "leash/locked").expect("protect");
    let cache = tmp.path().join("cache");
    let wc = WorkingCopy::sync(&cache, local(&bare), "main", "leash/").expect("sync");

    // The clone's own hooks never run (those `--no-verify` would not skip among them).
    let marker = tmp.path().join("hook-ran");
    for name in [
        "post-checkout",
        "post-commit",
        "pre-push",
        "reference-transaction",
    ] {
        let hook = wc.dir().join(".git/hooks").join(name);
        std::fs::write(
            &hook,
            format!("#!/bin/sh\necho {name} >> '{}'\nexit 1\n", marker.display()),
        )
        .expect("hook");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    wc.checkout(wc.base_commit()).expect("checkout");
    let c = propose(
        &wc,
        &[("shop.yaml", "kind: NetworkPolicy\n")],
        "leash: shop",
    )
    .expect("commit");
    wc.push(&c, "leash/shop")
        .expect("push next to a protected base");
    assert!(
        !marker.exists(),
        "the clone's hooks ran: {:?}",
        std::fs::read_to_string(&marker)
    );

    // The remote's hooks do run: its branch protection answers leash.
    let e = wc.push(&c, "leash/locked").expect_err("protected");
    let text = Chain(&e).to_string();
    assert!(matches!(e, Error::Rejected { .. }), "{e:?}");
    assert!(
        text.contains("GH006") && text.contains("leash/locked"),
        "{text}"
    );

    assert_eq!(
        rev_parse(&bare, "main").expect("rev").as_deref(),
        Some(&*base)
    );
    assert_eq!(branches(&bare).expect("branches"), ["leash/shop", "main"]);
    for (path, text) in [
        ("README.md", "the team's policies\n"),
        (
            "policies/other/team.yaml",
            "kind: NetworkPolicy # by hand\n",
        ),
        (
            "policies/shop/custom.yaml",
            "kind: NetworkPolicy # by the team\n",
        ),
    ] {
        assert_eq!(
            file_at(&bare, "leash/shop", path).expect("file").as_deref(),
            Some(text)
        );
    }
}

#[test]
fn addresses_and_bases_refused_before_any_io() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    let token = random_token("lab_");
    let secret = token_file(tmp.path(), &token);
    let remote = |url: &str| Remote {
        url: url.to_owned(),
        auth: Auth::Token {
            user: "x-access-token".into(),
            token: secret.clone(),
        },
        ca_file: None,
    };
    let mut errors = Vec::new();
    for url in [
        "http://192.0.2.1/policies.git",
        "http://git.example.com/policies.git",
        "git://127.0.0.1/policies.git",
        "ext::sh -c true",
        "ssh://git@127.0.0.1/policies.git",
        "-upload-pack=true",
    ] {
        let started = Instant::now();
        let e = WorkingCopy::sync(&cache, remote(url), "main", "leash/").expect_err(url);
        assert!(
            matches!(e, Error::Url { .. } | Error::Auth { .. }),
            "{url}: {e:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(1), "{url}");
        errors.push(Chain(&e).to_string());
    }
    let e = WorkingCopy::sync(
        &cache,
        remote(&format!("https://x-access-token:{token}@127.0.0.1:9/p.git")),
        "main",
        "leash/",
    )
    .expect_err("credentials");
    let text = Chain(&e).to_string();
    assert_eq!(
        text,
        "https://127.0.0.1:9/p.git: the repository address carries credentials; remove them and \
         give the token with --token-file or $LEASH_GIT_TOKEN"
    );
    errors.push(text);
    for (base, prefix) in [("leash/main", "leash/"), ("main", ""), ("-main", "leash/")] {
        let e = WorkingCopy::sync(&cache, remote("https://127.0.0.1:9/p.git"), base, prefix)
            .expect_err(base);
        assert!(matches!(e, Error::Name { .. }), "{e:?}");
    }
    assert!(!cache.exists(), "nothing was written before the checks");
    for text in errors {
        assert!(!text.contains(&token), "{text}");
    }
}

#[test]
fn https_with_a_token_and_a_private_ca() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("repos");
    let bare = seed(&root);
    let base = rev_parse(&bare, "main").expect("rev").expect("main");
    let token = random_token("lab_");
    let wrong = random_token("lab_");
    let secrets = tmp.path().join("secrets");
    std::fs::create_dir_all(&secrets).expect("mkdir");
    let cache = tmp.path().join("cache");
    let mut errors = Vec::new();
    let with = |url: String, secret: &Secret, ca_file: Option<PathBuf>| Remote {
        url,
        auth: Auth::Token {
            user: "x-access-token".into(),
            token: secret.clone(),
        },
        ca_file,
    };

    // Plain HTTP on loopback.
    let server = GitServer::start(&root, &token).expect("git server");
    let url = server.url("policies.git");
    let e = WorkingCopy::sync(
        &cache,
        with(url.clone(), &token_file(&secrets, &wrong), None),
        "main",
        "leash/",
    )
    .expect_err("wrong token");
    let text = Chain(&e).to_string();
    assert!(matches!(e, Error::Denied { .. }), "{e:?}");
    assert!(text.contains(&url), "{text}");
    assert!(!text.contains(&wrong), "{text}");
    errors.push(text);
    let anonymous = Remote {
        url: url.clone(),
        auth: Auth::None,
        ca_file: None,
    };
    let e =
        WorkingCopy::sync(&cache, anonymous, "main", "leash/").expect_err("no token, no prompt");
    errors.push(Chain(&e).to_string());

    let secret = token_file(&secrets, &token);
    let wc = WorkingCopy::sync(&cache, with(url.clone(), &secret, None), "main", "leash/")
        .expect("sync");
    assert_eq!(wc.base_commit(), base);
    let c = propose(&wc, &[("a.yaml", "over http\n")], "leash: http").expect("commit");
    wc.push(&c, "leash/shop").expect("push");
    assert_eq!(
        rev_parse(&bare, "leash/shop").expect("rev").as_deref(),
        Some(&*c)
    );
    assert_eq!(wc.branch_tip("main").as_deref(), Some(&*base));
    let requests = server.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.authorized && r.service() == Some("git-receive-pack")),
        "{requests:?}"
    );
    for r in requests.iter().filter(|r| r.authorized) {
        assert_eq!(r.user.as_deref(), Some("x-access-token"), "{r:?}");
    }
    for r in &requests {
        assert!(
            !r.path.contains(&token) && !r.query.contains(&token),
            "{r:?}"
        );
    }
    drop(wc);
    drop(server);

    // HTTPS with the run's CA: trusted through ca_file only.
    let ca = TestCa::generate().expect("ca");
    let ca_file = tmp.path().join("ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).expect("ca file");
    let server = GitServer::start_tls(&root, &token, &ca).expect("tls git server");
    let url = server.url("policies.git");
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let e = WorkingCopy::sync(&cache, with(url.clone(), &secret, None), "main", "leash/")
        .expect_err("untrusted certificate");
    let text = Chain(&e).to_string();
    assert!(
        text.contains(&url) && text.contains("certificate"),
        "{text}"
    );
    errors.push(text);
    let wc = WorkingCopy::sync(
        &cache,
        with(url.clone(), &secret, Some(ca_file)),
        "main",
        "leash/",
    )
    .expect("sync over https");
    let c = propose(&wc, &[("a.yaml", "over https\n")], "leash: https").expect("commit");
    wc.push(&c, "leash/tls").expect("push over https");
    assert_eq!(
        rev_parse(&bare, "leash/tls").expect("rev").as_deref(),
        Some(&*c)
    );
    assert_eq!(
        rev_parse(&bare, "main").expect("rev").as_deref(),
        Some(&*base)
    );
    drop(wc);

    // The token is nowhere: not in the clone (config, logs, objects), not in any error.
    let basic = leash::pr::secret::base64(format!("x-access-token:{token}").as_bytes());
    for needle in [&token, &wrong, &basic] {
        assert_eq!(
            find_text(&cache, needle).expect("find"),
            Vec::<String>::new()
        );
        assert_eq!(
            find_text(&bare, needle).expect("find"),
            Vec::<String>::new()
        );
    }
    for text in &errors {
        assert!(!text.contains(&token) && !text.contains(&wrong), "{text}");
    }
}

#[test]
fn a_hanging_remote_times_out_and_the_cache_is_locked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = tmp.path().join("cache");
    // Accepts connections (the kernel does) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/policies.git", silent.local_addr().expect("addr"));
    let remote = Remote {
        url: url.clone(),
        auth: Auth::None,
        ca_file: None,
    };
    let started = Instant::now();
    let e =
        WorkingCopy::sync_with_timeout(&cache, remote, "main", "leash/", Duration::from_secs(2))
            .expect_err("timeout");
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert!(Chain(&e).to_string().contains(&url), "{}", Chain(&e));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let bare = seed(&tmp.path().join("repos"));
    let wc = WorkingCopy::sync(&cache, local(&bare), "main", "leash/").expect("sync");
    let e = WorkingCopy::sync_with_timeout(
        &cache,
        local(&bare),
        "main",
        "leash/",
        Duration::from_millis(300),
    )
    .expect_err("locked");
    assert!(matches!(e, Error::Busy { .. }), "{e:?}");
    drop(wc);
    WorkingCopy::sync(&cache, local(&bare), "main", "leash/").expect("free again");

    let e = WorkingCopy::sync(&cache, local(&bare), "release", "leash/").expect_err("no base");
    assert!(matches!(e, Error::NoBase { .. }), "{e:?}");
    assert!(
        Chain(&e).to_string().contains("\"release\""),
        "{}",
        Chain(&e)
    );
}

#[test]
fn ssh_with_a_key_file() {
    let Some(sshd) = sshd_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let bare = seed(&tmp.path().join("repos"));
    let base = rev_parse(&bare, "main").expect("rev").expect("main");
    let cache = tmp.path().join("cache");
    let url = sshd.url(&bare);
    let remote = |key: PathBuf, known_hosts: PathBuf| Remote {
        url: url.clone(),
        auth: Auth::SshKey {
            key,
            known_hosts: Some(known_hosts),
        },
        ca_file: None,
    };

    let wc = WorkingCopy::sync(
        &cache,
        remote(sshd.client_key(), sshd.known_hosts()),
        "main",
        "leash/",
    )
    .unwrap_or_else(|e| panic!("sync over ssh: {}\n{}", Chain(&e), sshd.log()));
    assert_eq!(wc.base_commit(), base);
    let c = propose(&wc, &[("a.yaml", "over ssh\n")], "leash: ssh").expect("commit");
    wc.push(&c, "leash/shop").expect("push over ssh");
    assert_eq!(
        rev_parse(&bare, "leash/shop").expect("rev").as_deref(),
        Some(&*c)
    );
    assert_eq!(
        rev_parse(&bare, "main").expect("rev").as_deref(),
        Some(&*base)
    );
    drop(wc);

    // Another host key pinned: the server is not trusted.
    let other = tmp.path().join("other_host");
    leash_lab::sshd::generate_key(&other).expect("key");
    let other_pub = std::fs::read_to_string(tmp.path().join("other_host.pub")).expect("pub");
    let pinned: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    let wrong_hosts = tmp.path().join("wrong_known_hosts");
    std::fs::write(
        &wrong_hosts,
        format!("[127.0.0.1]:{} {}\n", sshd.port(), pinned.join(" ")),
    )
    .expect("known_hosts");
    let e = WorkingCopy::sync(
        &cache,
        remote(sshd.client_key(), wrong_hosts),
        "main",
        "leash/",
    )
    .expect_err("wrong host key");
    let text = Chain(&e).to_string();
    assert!(
        text.contains(&url) && text.contains("Host key verification failed"),
        "{text}"
    );

    // A key the server does not know is refused.
    let e = WorkingCopy::sync(&cache, remote(other, sshd.known_hosts()), "main", "leash/")
        .expect_err("unknown key");
    let text = Chain(&e).to_string();
    assert!(
        text.contains(&url) && text.contains("Permission denied"),
        "{text}"
    );
}
