//! The local sshd through the real git and ssh clients: clone and push with the generated key
//! and a pinned host key; another key, or an unknown host key, is refused; dropping stops it.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

use std::net::{Ipv4Addr, TcpStream};
use std::path::Path;
use std::process::Output;

use leash_lab::git_server::{branches, create_bare_repo, file_at, git_command, rev_parse};
use leash_lab::sshd::{self, Sshd};

/// The server, or `None` (the test is skipped, with the reason) when sshd is not installed.
fn server() -> Option<Sshd> {
    match Sshd::start() {
        Ok(s) => Some(s),
        Err(sshd::Error::Unavailable(reason)) => {
            eprintln!("SKIPPED: {reason}");
            None
        }
        Err(e) => panic!("sshd failed to start: {e:?}"),
    }
}

/// `git args` in `dir` with `GIT_SSH_COMMAND` set.
fn git_ssh(dir: &Path, ssh: &str, args: &[&str]) -> Output {
    git_command()
        .current_dir(dir)
        .env("GIT_SSH_COMMAND", ssh)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output, sshd: &Sshd) {
    assert!(
        out.status.success(),
        "git: {}\nsshd log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
}

#[test]
fn clone_and_push_over_ssh_with_the_key() {
    let Some(sshd) = server() else { return };
    let root = tempfile::tempdir().unwrap();
    let bare = create_bare_repo(root.path(), "policies.git", &[("np.yaml", "a\n")]).unwrap();
    let main = rev_parse(&bare, "main").unwrap();
    let work = tempfile::tempdir().unwrap();
    let url = sshd.url(&bare);
    assert!(url.starts_with(&format!("ssh://{}@127.0.0.1:{}/", sshd.user(), sshd.port())));

    let out = git_ssh(
        work.path(),
        &sshd.ssh_command(),
        &["clone", "--quiet", &url, "wc"],
    );
    ok(&out, &sshd);
    let wc = work.path().join("wc");
    assert_eq!(std::fs::read_to_string(wc.join("np.yaml")).unwrap(), "a\n");

    std::fs::write(wc.join("np.yaml"), "b\n").unwrap();
    let out = git_ssh(&wc, "", &["commit", "--quiet", "-am", "leash: all"]);
    assert!(out.status.success());
    let out = git_ssh(
        &wc,
        &sshd.ssh_command(),
        &["push", "--quiet", "origin", "HEAD:refs/heads/leash/all"],
    );
    ok(&out, &sshd);
    assert_eq!(branches(&bare).unwrap(), ["leash/all", "main"]);
    assert_eq!(
        file_at(&bare, "leash/all", "np.yaml").unwrap().as_deref(),
        Some("b\n")
    );
    assert_eq!(rev_parse(&bare, "main").unwrap(), main, "main moved");
    assert!(sshd.log().contains("Accepted publickey"), "{}", sshd.log());
}

#[test]
fn another_key_or_an_unknown_host_is_refused() {
    let Some(sshd) = server() else { return };
    let root = tempfile::tempdir().unwrap();
    let bare = create_bare_repo(root.path(), "p.git", &[("a", "a\n")]).unwrap();
    let url = sshd.url(&bare);

    let other = root.path().join("other_key");
    sshd::generate_key(&other).unwrap();
    let out = git_ssh(
        root.path(),
        &sshd.ssh_command_with_key(&other),
        &["clone", "--quiet", &url, "a"],
    );
    assert!(!out.status.success(), "cloned with an unauthorised key");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Permission denied (publickey)"), "{stderr}");

    // The right key, but the host key is not the pinned one: strict checking refuses.
    let empty = root.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let ssh = sshd.ssh_command().replace(
        &sshd.known_hosts().display().to_string(),
        &empty.display().to_string(),
    );
    let out = git_ssh(root.path(), &ssh, &["clone", "--quiet", &url, "b"]);
    assert!(!out.status.success(), "cloned from an unknown host");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Host key verification failed"), "{stderr}");
}

#[test]
fn dropping_stops_the_server() {
    let Some(sshd) = server() else { return };
    let port = sshd.port();
    let key = sshd.client_key();
    assert!(key.is_file());
    assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok());
    drop(sshd);
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err(),
        "still listening"
    );
    assert!(!key.exists(), "the keys outlived the server");
}
