//! Errors print each cause once (README, "Conventions"): an error's message never includes
//! its source, and whatever shows an error to a person prints the chain
//! (`leash_records::error::Chain`). Before, a printer that walked `source()` printed every
//! cause twice: `store x.db: cannot open: No such file…: No such file…`.

use std::error::Error;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use leash::store::SqliteStore;
use leash_records::error::Chain;

/// A cluster snapshot the CLI accepts, so that the command gets as far as the store or the
/// policies.
const SNAPSHOT: &str = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Namespace\n  metadata: {name: shop}\n";

fn leash(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leash"))
        .args(args)
        .env_remove("LEASH_MAX_INPUT_BYTES")
        .stdin(Stdio::null())
        .output()
        .expect("runs the leash binary")
}

fn p(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The one `leash: error:` line of `stderr` (other lines are notes, e.g. about the policies).
fn error_line(stderr: &str) -> &str {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("leash: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0]
}

/// The messages of `e` and of every error below it, top first.
fn messages(e: &(dyn Error + 'static)) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = Some(e);
    while let Some(e) = next {
        out.push(e.to_string());
        next = e.source();
    }
    out
}

/// The OS's text for `errno`, as `io::Error` prints it.
fn os_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// Walking `source()` of a store error meets the OS cause once, and the chain printer
/// prints the one-line message the CLI always printed.
#[test]
fn a_store_error_holds_its_cause_once() {
    let err = SqliteStore::open_existing("/nonexistent-dir/x.db").expect_err("missing store");
    let cause = os_text(libc::ENOENT);
    let all = messages(&err).join("\n");
    assert_eq!(all.matches(&cause).count(), 1, "{all}");
    assert_eq!(
        Chain(&err).to_string(),
        format!("store /nonexistent-dir/x.db: cannot open: {cause}")
    );
}

/// The same for a policy file that cannot be opened, and for TLS and bounded input errors
/// of the contract crate.
#[test]
fn file_errors_hold_their_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("file");
    std::fs::write(&file, "x").expect("write");
    // A path below a regular file: ENOTDIR, whoever runs the test (root reads anything).
    let below = file.join("p.yaml");
    let cause = os_text(libc::ENOTDIR);

    let policies = leash::audit::load_policies(&below).expect_err("not a directory");
    let certs = leash_records::tls::read_certs(&below).expect_err("not a directory");
    let input = leash_records::bounded::read_to_string(
        &below,
        true,
        leash_records::bounded::Limits::default(),
    )
    .expect_err("not a directory");
    let errors: [&(dyn Error + 'static); 3] = [&policies, &certs, &input];
    for err in errors {
        let all = messages(err).join("\n");
        assert_eq!(all.matches(&cause).count(), 1, "{all}");
        let shown = Chain(err).to_string();
        assert_eq!(shown.matches(&cause).count(), 1, "{shown}");
        assert!(shown.starts_with(&err.to_string()), "{shown}");
        assert!(shown.contains(p(&below)), "{shown}");
    }
}

/// Through the binary: a store that cannot be opened is named, with the OS cause exactly
/// once, on one stderr line.
#[test]
fn leash_prints_a_store_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, SNAPSHOT).expect("write");
    let cause = os_text(libc::ENOENT);
    for command in ["recommend", "audit"] {
        let o = leash(&[
            command,
            "--cluster",
            p(&cluster),
            "--store",
            "/nonexistent-dir/x.db",
        ]);
        assert_eq!(o.status.code(), Some(2), "{command}: {o:?}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(stderr.matches(&cause).count(), 1, "{command}: {stderr}");
        assert_eq!(
            error_line(&stderr),
            format!("leash: error: store /nonexistent-dir/x.db: cannot open: {cause}"),
            "{command}"
        );
    }
}

/// Through the binary: `audit --policies` on a file that cannot be read names it, with the
/// OS cause exactly once.
#[test]
fn leash_prints_a_policy_file_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, SNAPSHOT).expect("write");
    let flows = dir.path().join("flows.jsonl");
    std::fs::write(&flows, "").expect("write");
    let below = cluster.join("policies.yaml");
    let cause = os_text(libc::ENOTDIR);
    let o = leash(&[
        "audit",
        "--cluster",
        p(&cluster),
        "--flows",
        p(&flows),
        "--policies",
        p(&below),
    ]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.matches(&cause).count(), 1, "{stderr}");
    assert_eq!(
        error_line(&stderr),
        format!("leash: error: {}: cannot open: {cause}", below.display())
    );
}
