//! Published provider ranges and names through the built binary (issue 14, section 3):
//! `leash recommend --ip-ranges` covers a name's addresses with the published range they fall
//! in (with the report's note), never with a range wider than `--max-published-prefix-v4/-v6`;
//! a named rule also allows the other addresses its name resolved to for the workload, never
//! in-cluster ones; a malformed range file exits 2 naming the file and entry.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::cli::{assert_code, p, stderr};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn leash(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leash"))
        .args(args)
        .output()
        .expect("runs the leash binary")
}

const POD: &str =
    r#"{"uid":"00000000-0000-0000-0000-0000000000a1","namespace":"shop","name":"payment-7d4-x2"}"#;

fn dns(query: &str, answers: &[&str], time: &str) -> String {
    let answers: Vec<String> = answers
        .iter()
        .map(|a| {
            let t = if a.contains(':') { "AAAA" } else { "A" };
            format!(r#"{{"name":"{query}.","type":"{t}","data":"{a}","ttl":60}}"#)
        })
        .collect();
    format!(
        r#"{{"v":1,"kind":"dns","node":"n1","pod":{POD},"cgroup":"/k","server":"10.96.0.10","query":"{query}.","qtype":"A","rcode":"NOERROR","answers":[{}],"time":"{time}"}}"#,
        answers.join(",")
    )
}

fn flow(dst: &str, port: u16, name: &str) -> String {
    format!(
        r#"{{"v":1,"kind":"flow","node":"n1","pod":{POD},"cgroup":"/k","protocol":"TCP","dst":"{dst}","dst_port":{port},"count":4,"first_seen":"2026-11-23T08:00:00Z","last_seen":"2026-11-25T08:00:00Z","names":["{name}"]}}"#
    )
}

/// shop/payment resolves three names and dials some of their addresses on 443:
/// - `bucket.s3.test`: three addresses in AWS S3 us-east-1's 198.51.100.0/24, two dialed;
///   the answer rotated to the third later;
/// - `api.stripe.test`: two addresses in no range given, one dialed;
/// - `v6.ec2.test`: one address in AWS EC2 eu-west-1's 2001:db8:2000::/36 (wider than /40);
/// - `internal.test`: an external address, dialed, and the kube-dns ClusterIP (in-cluster:
///   never allowed by an ipBlock of an external rule).
fn records(dir: &Path) -> PathBuf {
    let lines = [
        r#"{"v":1,"kind":"flow","node":"n1","pod":POD,"cgroup":"/k","protocol":"UDP","dst":"10.96.0.10","dst_port":53,"count":40,"first_seen":"2026-11-23T08:00:00Z","last_seen":"2026-11-25T08:00:00Z","names":[]}"#.replace("POD", POD),
        dns("bucket.s3.test", &["198.51.100.10", "198.51.100.11"], "2026-11-23T08:00:00Z"),
        dns("bucket.s3.test", &["198.51.100.12"], "2026-11-24T08:00:00Z"),
        dns("api.stripe.test", &["203.0.113.200", "203.0.113.202"], "2026-11-23T08:00:00Z"),
        dns("v6.ec2.test", &["2001:db8:2000::5"], "2026-11-23T08:00:00Z"),
        dns("internal.test", &["203.0.113.250", "10.96.0.10"], "2026-11-23T08:00:00Z"),
        flow("198.51.100.10", 443, "bucket.s3.test"),
        flow("198.51.100.11", 443, "bucket.s3.test"),
        flow("203.0.113.200", 443, "api.stripe.test"),
        flow("2001:db8:2000::5", 443, "v6.ec2.test"),
        flow("203.0.113.250", 443, "internal.test"),
    ];
    let path = dir.join("flows.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("writes records");
    path
}

/// `leash recommend` of [`records`] with `extra` flags into `dir/out`: the payment policy and
/// the shop report.
fn recommend(dir: &Path, extra: &[&str]) -> (String, String) {
    let flows = records(dir);
    recommend_into(dir, &flows, "out", extra)
}

/// `leash recommend --flows flows -o dir/out` with `extra` flags: the payment policy and the
/// shop report.
fn recommend_into(dir: &Path, flows: &Path, out: &str, extra: &[&str]) -> (String, String) {
    let out = dir.join(out);
    let cluster = fixture("recommend/kubeadm/cluster.yaml");
    let mut args = vec![
        "recommend",
        "--cluster",
        p(&cluster),
        "--flows",
        p(flows),
        "-o",
        p(&out),
    ];
    args.extend_from_slice(extra);
    let o = leash(&args);
    assert_code(&o, 0);
    let read =
        |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    (read("shop/payment-egress.yaml"), read("shop/REPORT.md"))
}

fn cidrs(policy: &str) -> Vec<String> {
    let mut c: Vec<String> = policy
        .lines()
        .filter_map(|l| l.trim().strip_prefix("cidr: "))
        .map(ToOwned::to_owned)
        .collect();
    c.sort();
    c
}

/// A name's addresses inside a published range become that range, with the note; the other
/// addresses a name resolved to are allowed too; a range wider than the maximum is not used;
/// in-cluster answers never become ipBlocks.
#[test]
fn published_ranges_and_names_cover_the_rules() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let aws = fixture("ranges/aws-ip-ranges.json");
    let (policy, report) = recommend(dir.path(), &["--ip-ranges", p(&aws)]);
    let got = cidrs(&policy);
    for want in [
        "198.51.100.0/24",
        "2001:db8:2000::5/128",
        "203.0.113.200/32",
        "203.0.113.202/32",
        "203.0.113.250/32",
    ] {
        assert!(got.contains(&want.to_owned()), "{want}: {policy}");
    }
    assert!(
        !got.iter().any(|c| c.starts_with("198.51.100.1")),
        "no /32s inside the range: {policy}"
    );
    assert!(!got.iter().any(|c| c.starts_with("10.96.")), "{policy}");
    assert!(
        report.contains("AWS S3 us-east-1, published range, covers 3 observed addresses"),
        "{report}"
    );
    assert!(
        report.contains(
            "also allows 1 address its DNS names resolved to for this workload, not dialed in \
             the window: 203.0.113.202"
        ),
        "{report}"
    );
    assert!(
        !report.contains("AWS EC2 eu-west-1"),
        "/36 is wider than /40: {report}"
    );
    assert!(
        !report.contains("AWS AMAZON"),
        "the specific service is used: {report}"
    );

    // A wider IPv6 maximum uses EC2's /36; a narrower IPv4 one leaves S3's /24 out.
    let (policy, report) = recommend(
        dir.path(),
        &[
            "--ip-ranges",
            p(&aws),
            "--max-published-prefix-v4",
            "25",
            "--max-published-prefix-v6",
            "36",
        ],
    );
    let got = cidrs(&policy);
    assert!(got.contains(&"2001:db8:2000::/36".to_owned()), "{policy}");
    assert!(!got.contains(&"198.51.100.0/24".to_owned()), "{policy}");
    assert!(got.contains(&"198.51.100.10/31".to_owned()), "{policy}");
    assert!(
        got.contains(&"198.51.100.12/32".to_owned()),
        "name-implied: {policy}"
    );
    assert!(
        report.contains("AWS EC2 eu-west-1, published range, covers 1 observed address"),
        "{report}"
    );
    assert!(
        !report.contains("AWS S3 us-east-1, published range"),
        "{report}"
    );
}

/// Without range files, a name's other addresses are still allowed, and the output is
/// byte-stable.
#[test]
fn names_without_ranges() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (policy, _) = recommend(dir.path(), &[]);
    let got = cidrs(&policy);
    for want in ["198.51.100.10/31", "198.51.100.12/32", "203.0.113.202/32"] {
        assert!(got.contains(&want.to_owned()), "{want}: {policy}");
    }
    assert!(!got.iter().any(|c| c.starts_with("10.96.")), "{policy}");
    let (again, _) = recommend(dir.path(), &[]);
    assert_eq!(policy, again);
}

/// A range file that cannot be used: exit 2, one line naming the file and the entry.
#[test]
fn malformed_range_files_exit_2() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let flows = records(dir.path());
    let cluster = fixture("recommend/kubeadm/cluster.yaml");
    for (file, want) in [
        (
            "aws-bad-cidr.json",
            r#"aws-bad-cidr.json: prefixes[3].ip_prefix: "198.51.100.0/33" is not an IPv4 CIDR"#,
        ),
        (
            "azure-host-bits.json",
            "values[2].properties.addressPrefixes[0]: \"203.0.113.77/26\" has host bits set",
        ),
        ("missing.json", "missing.json: cannot open"),
    ] {
        let path = fixture("ranges").join(file);
        let o = leash(&[
            "recommend",
            "--cluster",
            p(&cluster),
            "--flows",
            p(&flows),
            "--ip-ranges",
            p(&fixture("ranges/saas.yaml")),
            p(&path),
        ]);
        assert_code(&o, 2);
        let err = stderr(&o);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(want), "{want:?} not in {err:?}");
    }
}

/// Every format reads in one run; `pr` and `serve` take the same flags.
#[test]
fn every_format_and_every_command() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let files: Vec<PathBuf> = [
        "aws-ip-ranges.json",
        "gcp-cloud.json",
        "azure-service-tags.json",
        "saas.yaml",
    ]
    .iter()
    .map(|f| fixture("ranges").join(f))
    .collect();
    let mut extra = vec!["--ip-ranges"];
    extra.extend(files.iter().map(|f| p(f)));
    let (_, report) = recommend(dir.path(), &extra);
    // 203.0.113.200 and .202: Google Cloud us-central1's /24 is the most specific range
    // (AWS CloudFront's /26 stops at .191; Azure's are AzureCloud, a catch-all).
    assert!(
        report.contains("Google Cloud us-central1, published range, covers 2 observed addresses"),
        "{report}"
    );
    assert!(
        report.contains("Google Cloud us-central1, published range, covers 1 observed address"),
        "internal.test: {report}"
    );
    for command in [vec!["pr", "--help"], vec!["serve", "--help"]] {
        let o = leash(&command);
        assert_code(&o, 0);
        let help = String::from_utf8_lossy(&o.stdout);
        for flag in [
            "--ip-ranges",
            "--max-published-prefix-v4",
            "--max-published-prefix-v6",
        ] {
            assert!(help.contains(flag), "{command:?}: {flag}");
        }
    }
}

/// A name that moved: the previous proposal allows its old address; the new answer, not yet
/// dialed, is added over it (what serve's loop turns into a pull request), and nothing else
/// changes.
#[test]
fn a_moved_name_gets_its_new_address_over_the_previous_proposal() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let before = [
        dns("api.pay.test", &["203.0.113.10"], "2026-11-23T08:00:00Z"),
        flow("203.0.113.10", 443, "api.pay.test"),
    ];
    let first = dir.path().join("first.jsonl");
    std::fs::write(&first, before.join("\n") + "\n").expect("writes");
    let (policy, _) = recommend_into(dir.path(), &first, "out1", &[]);
    assert!(
        cidrs(&policy).contains(&"203.0.113.10/32".to_owned()),
        "{policy}"
    );

    let mut after = before.to_vec();
    after.push(dns(
        "api.pay.test",
        &["203.0.113.99"],
        "2026-11-25T08:00:00Z",
    ));
    let second = dir.path().join("second.jsonl");
    std::fs::write(&second, after.join("\n") + "\n").expect("writes");
    let previous = dir.path().join("out1");
    let (policy, report) =
        recommend_into(dir.path(), &second, "out2", &["--previous", p(&previous)]);
    let got = cidrs(&policy);
    assert!(got.contains(&"203.0.113.10/32".to_owned()), "{policy}");
    assert!(got.contains(&"203.0.113.99/32".to_owned()), "{policy}");
    assert!(report.contains("| widened |"), "{report}");
    assert!(
        report.contains("not dialed in the window: 203.0.113.99"),
        "{report}"
    );

    // Unchanged input over this proposal: the same policy, no change.
    let (again, report) = recommend_into(
        dir.path(),
        &second,
        "out3",
        &["--previous", p(&dir.path().join("out2"))],
    );
    assert_eq!(again, policy);
    assert!(
        report.contains("None: every rule is as in the previous proposal."),
        "{report}"
    );
}

/// A proposal that uses a published range is stable over itself.
#[test]
fn published_ranges_are_stable_over_the_previous_proposal() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let flows = records(dir.path());
    let aws = fixture("ranges/aws-ip-ranges.json");
    let (first, _) = recommend_into(dir.path(), &flows, "out1", &["--ip-ranges", p(&aws)]);
    assert!(
        cidrs(&first).contains(&"198.51.100.0/24".to_owned()),
        "{first}"
    );
    let previous = dir.path().join("out1");
    let (second, report) = recommend_into(
        dir.path(),
        &flows,
        "out2",
        &["--ip-ranges", p(&aws), "--previous", p(&previous)],
    );
    assert_eq!(first, second);
    assert!(
        report.contains("None: every rule is as in the previous proposal."),
        "{report}"
    );
    assert!(
        report.contains("AWS S3 us-east-1, published range, covers 3 observed addresses"),
        "{report}"
    );
}
