//! The STATE grammar against a real git repository: `git:REV:PATH` reads the files of a
//! revision, not the working tree.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use leash::policy_source::{Error, PolicySource};

fn policy(name: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  \
         namespace: shop\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n"
    )
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=leash test",
            "-c",
            "user.email=test@leash.invalid",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .status()
        .expect("git runs");
    assert!(status.success(), "git {args:?} failed");
}

/// A repository with `policies/` at two commits: `a` at the first, `a` and `b` at the second,
/// and then `c` only in the working tree.
fn repository() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let repo = tmp.path().join("repo");
    let dir = repo.join("policies");
    std::fs::create_dir_all(dir.join(".hidden")).expect("mkdir");
    git(tmp.path(), &["init", "-q", "-b", "main", "repo"]);
    std::fs::write(dir.join("a.yaml"), policy("a")).expect("write");
    std::fs::write(dir.join("README.md"), "not a policy\n").expect("write");
    std::fs::write(dir.join(".hidden/x.yaml"), policy("hidden")).expect("write");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    std::fs::write(dir.join("b.yaml"), policy("b")).expect("write");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "two"]);
    std::fs::write(dir.join("c.yaml"), policy("c")).expect("write");
    (tmp, repo)
}

fn names(source: &PolicySource) -> Vec<String> {
    let policies = source
        .load()
        .unwrap_or_else(|e| panic!("{source}: {}", leash_records::error::Chain(&e)))
        .expect("a git state gives policies");
    let mut names: Vec<String> = policies
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    names.sort();
    names
}

#[test]
fn reads_each_revision_not_the_working_tree() {
    let (_tmp, repo) = repository();
    let at = |rev: &str| -> PolicySource {
        format!("git:{rev}:{}", repo.join("policies").display())
            .parse()
            .expect("parses")
    };
    assert_eq!(names(&at("HEAD~1")), ["a"]);
    assert_eq!(names(&at("HEAD")), ["a", "b"]);
    assert_eq!(names(&at("main")), ["a", "b"]);
    // The working tree has c.yaml; the plain path reads it, the revision does not.
    assert_eq!(
        names(&PolicySource::Files(repo.join("policies"))),
        ["a", "b", "c"]
    );
    // One file by name.
    let file: PolicySource = format!("git:HEAD:{}", repo.join("policies/b.yaml").display())
        .parse()
        .expect("parses");
    assert_eq!(names(&file), ["b"]);
}

#[test]
fn a_path_deleted_from_the_working_tree_is_read_at_its_revision() {
    let (_tmp, repo) = repository();
    std::fs::remove_dir_all(repo.join("policies")).expect("rm");
    let source: PolicySource = format!("git:HEAD:{}", repo.join("policies").display())
        .parse()
        .expect("parses");
    assert_eq!(names(&source), ["a", "b"]);
}

#[test]
fn errors_name_the_state() {
    let (_tmp, repo) = repository();
    let bad_rev: PolicySource = format!("git:no-such-branch:{}", repo.join("policies").display())
        .parse()
        .expect("parses");
    let e = bad_rev.load().expect_err("unknown revision");
    assert!(matches!(e, Error::Git { .. }), "{e:?}");
    assert!(e.to_string().contains("git:no-such-branch:"), "{e}");

    let missing: PolicySource = format!("git:HEAD~1:{}", repo.join("policies/b.yaml").display())
        .parse()
        .expect("parses");
    let e = missing.load().expect_err("b.yaml is not at HEAD~1");
    assert!(matches!(e, Error::NoSuchPath { .. }), "{e:?}");
    assert!(e.to_string().contains("policies/b.yaml"), "{e}");

    std::fs::write(
        repo.join("policies/bad.yaml"),
        "kind: NetworkPolicy\nspec: [\n",
    )
    .expect("write");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "bad"]);
    let broken: PolicySource = format!("git:HEAD:{}", repo.join("policies").display())
        .parse()
        .expect("parses");
    let e = broken.load().expect_err("bad.yaml does not parse");
    let shown = leash_records::error::Chain(&e).to_string();
    assert!(shown.contains("policies/bad.yaml"), "{shown}");
}

#[test]
fn applied_gives_nothing_of_its_own() {
    assert!(matches!(PolicySource::Applied.load(), Ok(None)));
}
