//! The built `leash` binary stays bounded on any input: endless and oversized files, FIFOs
//! and symlink loops in a policy directory, snapshots with invalid objects, record times
//! outside what can have been observed, and an existing CA in `leash certs --out`. Every
//! failure is exit code 2 with one line naming the file (and line or object).
//!
//! Every run is killed after [`DEADLINE`], so a regression to hanging or reading without end
//! fails the test instead of stalling the suite.

use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far longer than any of these runs takes; only a hang reaches it.
const DEADLINE: Duration = Duration::from_secs(60);

fn kubeadm(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/recommend/kubeadm")
        .join(name)
        .to_str()
        .expect("utf-8 path")
        .to_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// What a run left: its exit code and stderr.
struct Run {
    code: Option<i32>,
    stderr: String,
}

/// Runs `leash` with `env` set, killing it at [`DEADLINE`] (then the test fails).
fn leash_env(args: &[&str], env: &[(&str, &str)]) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    let err_path = dir.path().join("stderr");
    let err_file = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_leash"))
        .args(args)
        .env_remove("LEASH_MAX_INPUT_BYTES")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .expect("runs the leash binary");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waits") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("leash {args:?} did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::fs::File::open(&err_path)
        .expect("stderr file")
        .read_to_string(&mut stderr)
        .expect("reads stderr");
    Run {
        code: status.code(),
        stderr,
    }
}

fn leash(args: &[&str]) -> Run {
    leash_env(args, &[])
}

/// Asserts exit code 2 and one error line containing every `needle`.
#[track_caller]
fn assert_bad_input(r: &Run, needles: &[&str]) {
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    assert_eq!(
        r.stderr.trim_end().lines().count(),
        1,
        "one error line, got: {}",
        r.stderr
    );
    for n in needles {
        assert!(r.stderr.contains(n), "{n:?} not in {:?}", r.stderr);
    }
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

const POLICY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: payment-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {app: payment}}
  policyTypes: [Egress]
  egress: [{ports: [{port: 443, protocol: TCP}]}]
";

/// A policy directory holding one valid policy.
fn policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("payment.yaml"), POLICY).expect("writes policy");
    dir
}

#[test]
fn endless_inputs_stop_at_the_line_limit_naming_the_file() {
    let (cluster, flows) = (kubeadm("cluster.yaml"), kubeadm("flows.jsonl"));
    let policies = policy_dir();
    let pol = s(policies.path());
    let want = ["/dev/zero:1: line longer than 16777216 bytes"];
    let r = leash(&["recommend", "--cluster", "/dev/zero", "--flows", &flows]);
    assert_bad_input(&r, &want);
    let r = leash(&["recommend", "--cluster", &cluster, "--flows", "/dev/zero"]);
    assert_bad_input(&r, &want);
    let r = leash(&[
        "audit",
        "--cluster",
        &cluster,
        "--policies",
        pol,
        "--flows",
        "/dev/zero",
    ]);
    assert_bad_input(&r, &want);
    let r = leash(&[
        "audit",
        "--cluster",
        &cluster,
        "--policies",
        "/dev/zero",
        "--flows",
        &flows,
    ]);
    assert_bad_input(&r, &want);
}

#[test]
fn file_size_limit_comes_from_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = kubeadm("cluster.yaml");
    let one = std::fs::read_to_string(kubeadm("flows.jsonl")).expect("flows");
    let big = dir.path().join("big.jsonl");
    std::fs::write(&big, one.repeat(40)).expect("writes flows");
    let args = ["recommend", "--cluster", &cluster, "--flows", s(&big)];
    // Under the default limit it is read.
    assert_eq!(leash(&args).code, Some(0));
    let r = leash_env(&args, &[("LEASH_MAX_INPUT_BYTES", "64K")]);
    assert_bad_input(
        &r,
        &[&format!(
            "{}: larger than 65536 bytes (set LEASH_MAX_INPUT_BYTES",
            big.display()
        )],
    );
    let r = leash_env(&args, &[("LEASH_MAX_INPUT_BYTES", "lots")]);
    assert_bad_input(&r, &["LEASH_MAX_INPUT_BYTES=\"lots\""]);
}

/// Makes a FIFO at `path` (mkfifo(3), so no tool beyond the test binary is needed).
fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("no NUL in the path");
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {}",
        path.display()
    );
}

#[test]
fn fifo_in_a_policy_directory_is_refused_without_blocking() {
    let dir = policy_dir();
    let fifo = dir.path().join("waiting.yaml");
    mkfifo(&fifo);
    let (cluster, flows) = (kubeadm("cluster.yaml"), kubeadm("flows.jsonl"));
    let r = leash(&[
        "audit",
        "--cluster",
        &cluster,
        "--policies",
        s(dir.path()),
        "--flows",
        &flows,
    ]);
    assert_bad_input(
        &r,
        &[&format!(
            "{}: is a FIFO, not a regular file",
            fifo.display()
        )],
    );
}

#[test]
fn symlink_loops_are_walked_once_and_links_out_of_the_tree_not_followed() {
    let dir = policy_dir();
    let root = dir.path();
    // Before, each of these doubled the walk per level, until paths grew too long.
    for name in ["a", "b", "c", "d"] {
        std::os::unix::fs::symlink(".", root.join(name)).expect("symlink");
    }
    std::fs::create_dir(root.join("sub")).expect("mkdir");
    std::os::unix::fs::symlink("..", root.join("sub/up")).expect("symlink");
    // Outside the tree: a file that would fail the audit if it were read.
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("broken.yaml"), "kind: [").expect("writes");
    std::os::unix::fs::symlink(outside.path(), root.join("elsewhere")).expect("symlink");
    let (cluster, flows) = (kubeadm("cluster.yaml"), kubeadm("flows.jsonl"));
    let r = leash(&[
        "audit",
        "--cluster",
        &cluster,
        "--policies",
        s(root),
        "--flows",
        &flows,
    ]);
    // The policy is found once (twice would be "already defined"), the outside file never.
    assert_eq!(r.code, Some(0), "{}", r.stderr);
}

/// The kubeadm snapshot with `from` replaced by `to` (once), in a temporary file.
fn edited_cluster(dir: &Path, from: &str, to: &[u8]) -> PathBuf {
    let text = std::fs::read(kubeadm("cluster.yaml")).expect("cluster");
    let at = text
        .windows(from.len())
        .position(|w| w == from.as_bytes())
        .expect("fixture text");
    let mut out = text[..at].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&text[at + from.len()..]);
    let path = dir.join("cluster.yaml");
    std::fs::write(&path, out).expect("writes cluster");
    path
}

const PAYMENT_LABELS: &str = "    name: payment-7d4-x2\n    namespace: shop\n    uid: 00000000-0000-0000-0000-0000000000a1\n    labels: {app: payment, tier: backend, pod-template-hash: 7d4}";

#[test]
fn invalid_label_key_is_bad_input_naming_the_object() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flows = kubeadm("flows.jsonl");
    // In the workload's selector it became the generated policy's podSelector, and the
    // self-check failed with exit 1.
    let cluster = edited_cluster(
        dir.path(),
        "selector: {matchLabels: {app: payment}}",
        b"selector: {matchLabels: {\"app payment!\": x}}",
    );
    let r = leash(&["recommend", "--cluster", s(&cluster), "--flows", &flows]);
    assert_bad_input(
        &r,
        &[
            &cluster.display().to_string(),
            "(Deployment shop/payment): spec.selector.matchLabels: invalid label key \"app payment!\"",
        ],
    );
    assert!(!r.stderr.contains("self-check"), "{}", r.stderr);
    // In a pod's own labels.
    let labels = PAYMENT_LABELS.replace("tier: backend", "\"tier backend!\": x");
    let cluster = edited_cluster(dir.path(), PAYMENT_LABELS, labels.as_bytes());
    let r = leash(&["recommend", "--cluster", s(&cluster), "--flows", &flows]);
    assert_bad_input(
        &r,
        &["(Pod shop/payment-7d4-x2): metadata.labels: invalid label key \"tier backend!\""],
    );
}

#[test]
fn pod_without_a_name_and_bad_utf8_are_located() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flows = kubeadm("flows.jsonl");
    let unnamed = PAYMENT_LABELS.replace("    name: payment-7d4-x2\n", "");
    let cluster = edited_cluster(dir.path(), PAYMENT_LABELS, unnamed.as_bytes());
    let r = leash(&["recommend", "--cluster", s(&cluster), "--flows", &flows]);
    assert_bad_input(
        &r,
        &[
            &format!("{}: document 1, item ", cluster.display()),
            "(Pod shop/<unnamed>): metadata.name is missing or empty",
        ],
    );

    let cluster = edited_cluster(dir.path(), "tier: backend", b"tier: back\xffend");
    let line = std::fs::read(&cluster)
        .expect("cluster")
        .split(|&b| b == b'\n')
        .position(|l| l.contains(&0xff))
        .expect("the bad byte")
        + 1;
    let r = leash(&["recommend", "--cluster", s(&cluster), "--flows", &flows]);
    assert_bad_input(
        &r,
        &[&format!("{}:{line}: invalid UTF-8", cluster.display())],
    );
}

/// The kubeadm flows with the second line's times replaced.
fn flows_with_times(dir: &Path, first: &str, last: &str) -> PathBuf {
    let text = std::fs::read_to_string(kubeadm("flows.jsonl")).expect("flows");
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    lines[1] = lines[1]
        .replace(
            "\"first_seen\":\"2026-11-23T08:00:00Z\"",
            &format!("\"first_seen\":\"{first}\""),
        )
        .replace(
            "\"last_seen\":\"2026-11-25T08:00:00Z\"",
            &format!("\"last_seen\":\"{last}\""),
        );
    assert!(
        lines[1].contains(first) && lines[1].contains(last),
        "{}",
        lines[1]
    );
    let path = dir.join(format!("flows-{first}-{last}.jsonl"));
    std::fs::write(&path, lines.join("\n") + "\n").expect("writes flows");
    path
}

#[test]
fn recommend_and_audit_apply_one_time_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = policy_dir();
    let cluster = kubeadm("cluster.yaml");
    for (first, last, want) in [
        (
            "2026-11-25T09:00:00Z",
            "2026-11-25T08:00:00Z",
            "is after last_seen",
        ),
        (
            "1900-01-01T00:00:00Z",
            "2026-11-25T08:00:00Z",
            "first_seen 1900-01-01 00:00:00 UTC is not after 1970-01-01",
        ),
        (
            "2026-11-23T08:00:00Z",
            "2999-01-01T00:00:00Z",
            "last_seen 2999-01-01 00:00:00 UTC is more than a day after the current time",
        ),
    ] {
        let flows = flows_with_times(dir.path(), first, last);
        let at = format!("{}:2: ", flows.display());
        let r = leash(&["recommend", "--cluster", &cluster, "--flows", s(&flows)]);
        assert_bad_input(&r, &[&at, want]);
        let r = leash(&[
            "audit",
            "--cluster",
            &cluster,
            "--policies",
            s(policies.path()),
            "--flows",
            s(&flows),
        ]);
        assert_bad_input(&r, &[&at, want]);
    }
}

#[test]
fn certs_reuse_the_ca_unless_forced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("pki");
    let o = s(&out);
    let certs = |client: &str, force: bool| {
        let mut args = vec![
            "certs",
            "--out",
            o,
            "--server-name",
            "leash.test",
            "--client",
            client,
        ];
        if force {
            args.push("--force");
        }
        leash(&args)
    };
    let read = |name: &str| std::fs::read(out.join(name)).expect("reads");
    let r = certs("node-a", false);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let (ca, ca_key) = (read("ca.pem"), read("ca-key.pem"));

    let r = certs("node-b", false);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("signed by the existing CA"),
        "{}",
        r.stderr
    );
    assert_eq!(read("ca.pem"), ca, "the CA is kept");
    assert_eq!(read("ca-key.pem"), ca_key, "the CA key is kept");
    assert!(out.join("node-b.pem").exists());
    for key in [
        "ca-key.pem",
        "server-key.pem",
        "node-a-key.pem",
        "node-b-key.pem",
    ] {
        let mode = std::fs::metadata(out.join(key))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }

    // A key that is not the CA's: refused, and the key is not printed.
    std::fs::copy(out.join("server-key.pem"), out.join("ca-key.pem")).expect("copies");
    let r = certs("node-c", false);
    assert_bad_input(&r, &["is not the key of", "--force"]);
    assert!(!r.stderr.contains("PRIVATE KEY"), "{}", r.stderr);
    // Half a CA: refused.
    std::fs::remove_file(out.join("ca-key.pem")).expect("removes");
    let r = certs("node-c", false);
    assert_bad_input(&r, &["ca.pem exists but", "ca-key.pem does not", "--force"]);
    assert!(!out.join("node-c.pem").exists());

    let r = certs("node-c", true);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("a new CA"), "{}", r.stderr);
    assert_ne!(read("ca.pem"), ca, "--force makes a new CA");
}
