//! `leash audit` library tests: policy loading from real files, flows read from a real
//! JSON-lines file, verdicts in input order, JSON and table rendering, and error messages.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::path::{Path, PathBuf};

use leash::{
    audit::{
        AttributedFlow, Error, Format, audit, load_policies, load_policy_files, load_policy_set,
        read_flows,
    },
    cluster::Cluster,
    eval::{PolicySet, Verdict},
};
use leash_records::error::Chain;
use support::eval::lab_cluster;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval")
        .join(rel)
}

fn report() -> leash::audit::AuditReport {
    let policies = load_policy_set(&fixture("policies")).expect("fixture policies load");
    let flows = read_flows(&fixture("flows.jsonl")).expect("fixture flows load");
    audit(&lab_cluster(), &policies, &flows).expect("audit succeeds")
}

#[test]
fn loads_policies_recursively_sorted_skipping_hidden_and_other_kinds() {
    let files = load_policy_files(&fixture("policies")).expect("loads");
    let got: Vec<(String, String)> = files
        .iter()
        .map(|(path, np)| {
            let rel = path
                .strip_prefix(fixture("policies"))
                .expect("under the dir")
                .display()
                .to_string();
            (rel, np.metadata.name.clone().unwrap_or_default())
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "db/ingress.yaml".to_string(),
                "postgres-ingress".to_string()
            ),
            (
                "shop/egress.yaml".to_string(),
                "default-deny-egress".to_string()
            ),
            ("shop/egress.yaml".to_string(), "web-egress".to_string()),
        ]
    );
    // A single file works too.
    assert_eq!(
        load_policies(&fixture("policies/shop/egress.yaml"))
            .expect("loads")
            .len(),
        2
    );
}

#[test]
fn json_lines_one_per_flow_in_input_order() {
    let json = report().to_json_lines();
    let want = [
        r#"{"kind":"flow","source":{"namespace":"shop","workload":"Pod/web","pod":"web"},"protocol":"UDP","dst":"10.96.0.10","dst_port":53,"verdict":"allow","egress":"allow","ingress":"allow","policies":["shop/web-egress"]}"#,
        r#"{"kind":"flow","source":{"namespace":"shop","workload":"Pod/web","pod":"web"},"protocol":"TCP","dst":"203.0.113.10","dst_port":443,"verdict":"allow","egress":"allow","ingress":"allow","policies":["shop/web-egress"]}"#,
        r#"{"kind":"flow","source":{"namespace":"shop","workload":"Pod/web","pod":"web"},"protocol":"TCP","dst":"10.96.0.30","dst_port":5432,"verdict":"deny","egress":"allow","ingress":"deny","policies":["db/postgres-ingress"]}"#,
        r#"{"kind":"flow","source":{"namespace":"shop","workload":"Pod/worker","pod":"worker"},"protocol":"TCP","dst":"203.0.113.10","dst_port":443,"verdict":"deny","egress":"deny","ingress":"allow","policies":["shop/default-deny-egress"]}"#,
        r#"{"kind":"flow","source":{"namespace":"shop","workload":"Pod/web","pod":"web"},"protocol":"TCP","dst":"203.0.113.10","dst_port":443,"verdict":"allow","egress":"allow","ingress":"allow","policies":["shop/web-egress"]}"#,
        r#"{"kind":"flow","source":{"namespace":"shop","workload":"Pod/web","pod":"web"},"protocol":"TCP","dst":"2001:db8:ffff::1","dst_port":443,"verdict":"deny","egress":"deny","ingress":"allow","policies":["shop/default-deny-egress","shop/web-egress"]}"#,
    ];
    let got: Vec<&str> = json.lines().collect();
    assert_eq!(got, want);
    assert!(json.ends_with('\n'));
    for line in json.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("valid JSON");
        assert!(v.is_object());
    }
}

#[test]
fn entries_keep_file_lines_and_skip_dns_records() {
    let r = report();
    let lines: Vec<usize> = r.entries.iter().filter_map(|e| e.origin.line()).collect();
    // Line 5 is a DNS record and line 6 is blank.
    assert_eq!(lines, [1, 2, 3, 4, 7, 8]);
    assert!(r.any_denied());
    assert_eq!(r.denied(), 3);
}

#[test]
fn input_order_is_preserved_not_sorted() {
    let mut flows = read_flows(&fixture("flows.jsonl")).expect("loads");
    flows.reverse();
    let policies = load_policy_set(&fixture("policies")).expect("loads");
    let r = audit(&lab_cluster(), &policies, &flows).expect("audit");
    let lines: Vec<usize> = r.entries.iter().filter_map(|e| e.origin.line()).collect();
    assert_eq!(lines, [8, 7, 4, 3, 2, 1]);
    assert_eq!(r.entries[0].evaluation.verdict, Verdict::Deny);
    assert_eq!(r.entries[1].evaluation.verdict, Verdict::Allow);
}

#[test]
fn table_is_aligned_with_a_summary() {
    let table = report().to_table();
    let want = "\
SOURCE       PROTO  DESTINATION             VERDICT  EGRESS  INGRESS  POLICIES                                  NOTE
shop/web     UDP    10.96.0.10:53           allow    allow   allow    shop/web-egress                           via Service kube-system/kube-dns
shop/web     TCP    203.0.113.10:443        allow    allow   allow    shop/web-egress
shop/web     TCP    10.96.0.30:5432         deny     allow   deny     db/postgres-ingress                       via Service db/postgres-svc
shop/worker  TCP    203.0.113.10:443        deny     deny    allow    shop/default-deny-egress
shop/web     TCP    203.0.113.10:443        allow    allow   allow    shop/web-egress
shop/web     TCP    [2001:db8:ffff::1]:443  deny     deny    allow    shop/default-deny-egress,shop/web-egress
6 flows: 3 allowed, 3 denied
";
    assert_eq!(table, want, "got:\n{table}");
}

#[test]
fn empty_report_renders_and_allows() {
    let r = audit(&lab_cluster(), &PolicySet::default(), &[]).expect("audit");
    assert!(!r.any_denied());
    assert_eq!(r.to_json_lines(), "");
    assert!(r.to_table().ends_with("0 flows: 0 allowed, 0 denied\n"));
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir");
    }
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn unknown_pod_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = std::fs::read_to_string(fixture("flows.jsonl")).expect("read");
    let first = good.lines().next().expect("a line");
    let ghost = first
        .replace("\"uid-shop-web\"", "\"uid-ghost\"")
        .replace("\"name\":\"web\"", "\"name\":\"ghost\"");
    let path = write(
        dir.path(),
        "flows.jsonl",
        &format!("{first}\n{first}\n{ghost}\n"),
    );
    let flows = read_flows(&path).expect("parses");
    let err = audit(&lab_cluster(), &PolicySet::default(), &flows).expect_err("unknown pod");
    assert!(matches!(err, Error::UnknownPod { line: 3, .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "{}:3: flow record for unknown pod shop/ghost (uid \"uid-ghost\") not in the cluster snapshot",
            path.display()
        )
    );
}

#[test]
fn unattributed_flow_is_an_error_naming_file_and_line() {
    let flows = read_flows(&fixture("flows.jsonl")).expect("parses");
    let mut one = flows[..2].to_vec();
    one[1].pod = None;
    let err = audit(&lab_cluster(), &PolicySet::default(), &one).expect_err("no pod");
    assert_eq!(
        err.to_string(),
        format!(
            "{}:2: flow record has no pod; audit needs the source pod",
            fixture("flows.jsonl").display()
        )
    );
}

#[test]
fn bad_flow_line_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "f.jsonl", "{\"v\":1,\"kind\":\"flow\"}\n");
    let err = read_flows(&path).expect_err("invalid");
    assert!(
        err.to_string()
            .starts_with(&format!("{}:1: invalid record", path.display())),
        "{err}"
    );
}

#[test]
fn uid_resolves_before_name() {
    // A record whose uid names web but whose name is stale still audits as shop/web.
    let flows = read_flows(&fixture("flows.jsonl")).expect("parses");
    let mut one: Vec<AttributedFlow> = flows[..1].to_vec();
    if let Some(p) = one[0].pod.as_mut() {
        p.name = "web-old".into();
    }
    let r = audit(&lab_cluster(), &PolicySet::default(), &one).expect("audit");
    assert_eq!(r.entries[0].source.to_string(), "shop/web");
}

const GOOD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec: {podSelector: {}}\n";

#[test]
fn policy_errors_name_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();

    let bad_yaml = write(d, "a/bad.yaml", "kind: [unclosed\n");
    let err = load_policies(&bad_yaml).expect_err("bad yaml").to_string();
    assert!(
        err.starts_with(&format!("{}:", bad_yaml.display())),
        "{err}"
    );
    assert!(err.contains("invalid YAML/JSON"), "{err}");

    let host_bits = write(
        d,
        "b/cidr.yaml",
        &format!(
            "{GOOD}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: q, namespace: shop}}\nspec: {{podSelector: {{}}, egress: [{{to: [{{ipBlock: {{cidr: 10.0.0.1/8}}}}]}}]}}\n"
        ),
    );
    // As a person sees it: the message, then its cause.
    let err = Chain(&load_policies(&host_bits).expect_err("host bits")).to_string();
    assert_eq!(
        err,
        format!(
            "{}: NetworkPolicy shop/q: spec.egress[0].to[0].ipBlock.cidr: CIDR \"10.0.0.1/8\" has host bits set beyond the prefix (the network is 10.0.0.0/8)",
            host_bits.display()
        )
    );

    let schema = write(
        d,
        "c/schema.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: s, namespace: shop}\nspec: {podSelector: 7}\n",
    );
    let err = load_policies(&schema).expect_err("schema").to_string();
    assert!(
        err.starts_with(&format!(
            "{}: document 1 (NetworkPolicy shop/s)",
            schema.display()
        )),
        "{err}"
    );

    let dup = tempfile::tempdir().expect("tempdir");
    let first = write(dup.path(), "1.yaml", GOOD);
    let second = write(dup.path(), "2.yml", GOOD);
    let err = load_policies(dup.path())
        .expect_err("duplicate")
        .to_string();
    assert_eq!(
        err,
        format!(
            "{}: NetworkPolicy shop/p is already defined in {}",
            second.display(),
            first.display()
        )
    );

    // An empty set is a valid state (nothing isolated); the CLI says so on stderr.
    let empty = tempfile::tempdir().expect("tempdir");
    write(empty.path(), "notes.txt", GOOD);
    assert!(load_policies(empty.path()).expect("empty set").is_empty());
    assert!(load_policy_set(empty.path()).expect("empty set").is_empty());

    let missing = d.join("nope.yaml");
    let err = load_policies(&missing).expect_err("missing").to_string();
    assert!(err.starts_with(&missing.display().to_string()), "{err}");
}

#[test]
fn table_notes_host_network_sources() {
    let flows = read_flows(&fixture("flows.jsonl")).expect("parses");
    let mut one: Vec<AttributedFlow> = flows[1..2].to_vec();
    if let Some(p) = one[0].pod.as_mut() {
        p.uid = String::new();
        p.name = "host-agent".into();
    }
    let policies = load_policy_set(&fixture("policies")).expect("loads");
    let r = audit(&lab_cluster(), &policies, &one).expect("audit");
    assert_eq!(r.entries[0].evaluation.verdict, Verdict::Allow);
    let table = r.to_table();
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("shop/host-agent")
                && l.ends_with("hostNetwork source: NetworkPolicy cannot restrict it")),
        "{table}"
    );
}

#[test]
fn formats_parse_and_render() {
    let r = report();
    assert_eq!("json".parse::<Format>(), Ok(Format::Json));
    assert_eq!("table".parse::<Format>(), Ok(Format::Table));
    assert!(
        "yaml"
            .parse::<Format>()
            .expect_err("unknown")
            .contains("expected json or table")
    );
    assert_eq!(r.render(Format::Json), r.to_json_lines());
    assert_eq!(r.render(Format::Table), r.to_table());
}

/// The CLI path: a snapshot file loaded into the real cluster model gives the same verdicts
/// as the in-memory view built from the same objects.
#[test]
fn audit_through_a_snapshot_file_and_the_cluster_model() {
    let parts = support::eval::lab_cluster_parts();
    let mut items = Vec::new();
    for v in parts
        .namespaces
        .iter()
        .map(serde_json::to_value)
        .chain(parts.pods.iter().map(serde_json::to_value))
        .chain(parts.services.iter().map(serde_json::to_value))
        .chain(parts.slices.iter().map(serde_json::to_value))
    {
        items.push(v.expect("serializes"));
    }
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
    let dir = tempfile::tempdir().expect("tempdir");
    let snap = write(
        dir.path(),
        "cluster.yaml",
        &serde_norway::to_string(&list).expect("yaml"),
    );
    let cluster = Cluster::load(&snap).expect("snapshot loads");
    let policies = load_policy_set(&fixture("policies")).expect("loads");
    let flows = read_flows(&fixture("flows.jsonl")).expect("loads");
    let via_model = audit(&cluster, &policies, &flows).expect("audit");
    assert_eq!(via_model.to_json_lines(), report().to_json_lines());
    assert_eq!(via_model.to_table(), report().to_table());
}
