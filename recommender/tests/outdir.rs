//! `leash recommend -o DIR` through the built binary: everything it writes and deletes stays
//! inside DIR, symlinks are never followed, only leash's own files in the namespaces of the
//! run are removed, a failed run changes nothing, and long names still get a file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use leash_records::names::display_prefix;
use serde_json::json;

/// A cluster of bare pods, each labelled `app: web` and sending TCP to 203.0.113.10:`port`,
/// written as a JSON snapshot and a flows file under `root`.
struct Input {
    cluster: PathBuf,
    flows: PathBuf,
}

/// `pods`: (namespace, pod name, destination port).
fn input(root: &Path, tag: &str, pods: &[(&str, &str, u16)]) -> Input {
    let mut namespaces: Vec<&str> = pods.iter().map(|(ns, _, _)| *ns).collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    let mut items: Vec<serde_json::Value> = namespaces
        .iter()
        .map(|ns| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .collect();
    items.push(json!({
        "apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}
    }));
    let mut flows = String::new();
    for (i, (ns, name, port)) in pods.iter().enumerate() {
        let ip = format!("10.244.1.{}", i + 10);
        items.push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns,
                         "uid": format!("00000000-0000-0000-0000-{:012x}", i + 1),
                         "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        }));
        flows.push_str(
            &json!({
                "v": 1, "kind": "flow", "node": "n1",
                "pod": {"uid": "", "namespace": ns, "name": name},
                "cgroup": "/k", "protocol": "TCP", "dst": "203.0.113.10", "dst_port": port,
                "count": 5, "first_seen": "2026-11-20T00:00:00Z",
                "last_seen": "2026-11-24T00:00:00Z", "names": []
            })
            .to_string(),
        );
        flows.push('\n');
    }
    let cluster = root.join(format!("{tag}-cluster.json"));
    let flows_path = root.join(format!("{tag}-flows.jsonl"));
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(&cluster, list.to_string()).expect("writes the snapshot");
    std::fs::write(&flows_path, flows).expect("writes the flows");
    Input {
        cluster,
        flows: flows_path,
    }
}

fn recommend(input: &Input, dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_leash"))
        .arg("recommend")
        .arg("--cluster")
        .arg(&input.cluster)
        .arg("--flows")
        .arg(&input.flows)
        .arg("-o")
        .arg(dir)
        .args(extra)
        .output()
        .expect("runs the leash binary")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_ok(o: &Output) {
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(o));
}

/// Asserts exit code 2 and one error line containing every `needle`.
fn assert_bad_input(o: &Output, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one error line: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
}

/// What a path is, without following symlinks.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Dir,
    File(Vec<u8>),
    Link(PathBuf),
}

/// Everything under `dir`, by relative path, symlinks as links (never followed).
fn tree(dir: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("readable").flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).expect("inside").to_path_buf();
            let ft = e.file_type().expect("file type");
            let entry = if ft.is_symlink() {
                Entry::Link(std::fs::read_link(&p).expect("link"))
            } else if ft.is_dir() {
                todo.push(p.clone());
                Entry::Dir
            } else {
                Entry::File(std::fs::read(&p).expect("file"))
            };
            out.insert(rel, entry);
        }
    }
    out
}

fn files(dir: &Path) -> Vec<String> {
    tree(dir)
        .into_iter()
        .filter(|(_, e)| !matches!(e, Entry::Dir))
        .map(|(p, _)| p.display().to_string())
        .collect()
}

/// A policy file as an earlier leash run wrote it, for a workload that is gone now.
fn stale_leash_policy(ns: &str, name: &str) -> String {
    format!(
        "# Egress of Pod {ns}/{name}, generated by `leash recommend` from observed traffic.\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}-egress\n  \
         namespace: {ns}\n  labels:\n    app.kubernetes.io/managed-by: leash\nspec:\n  \
         podSelector: {{}}\n  policyTypes:\n  - Egress\n"
    )
}

#[test]
fn namespace_outside_dir_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("x/y/out");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let absolute = root.path().join("abs-ns");
    let absolute = absolute.to_str().expect("utf-8");
    for bad in ["../../escape-ns", absolute] {
        let input = input(root.path(), "bad", &[("ok", "web", 443), (bad, "web", 443)]);
        let o = recommend(&input, &dir, &[]);
        // Names in errors are escaped (`/` too), so a hostile name cannot forge output.
        let shown = format!("namespace {}", display_prefix(bad));
        assert_bad_input(&o, &[&shown, "DNS-1123 label"]);
        assert!(!root.path().join("x/escape-ns").exists(), "escaped DIR");
        assert!(
            !root.path().join("abs-ns").exists(),
            "wrote to an absolute path"
        );
        assert!(tree(&dir).is_empty(), "nothing written: {:?}", files(&dir));
    }
}

#[test]
fn invalid_workload_name_is_refused_naming_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("out");
    let input = input(root.path(), "a", &[("shop", "Web_Server", 443)]);
    let o = recommend(&input, &dir, &[]);
    assert_bad_input(&o, &["\"Web_Server\"", "shop", "DNS-1123 subdomain"]);
    assert!(!dir.exists(), "DIR was not even created");
}

#[test]
fn namespace_filter_must_be_a_namespace_name() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("out");
    std::fs::create_dir_all(root.path().join("victim")).expect("mkdir");
    std::fs::write(
        root.path().join("victim/old-egress.yaml"),
        stale_leash_policy("victim", "old"),
    )
    .expect("writes");
    let input = input(root.path(), "a", &[("shop", "web", 443)]);
    let o = recommend(&input, &dir, &["--namespace", "../victim"]);
    let shown = format!("--namespace {}", display_prefix("../victim"));
    assert_bad_input(&o, &[&shown, "DNS-1123 label"]);
    assert!(root.path().join("victim/old-egress.yaml").exists());
}

#[test]
fn symlinked_file_is_never_written_through() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("out");
    let outside = root.path().join("precious.txt");
    std::fs::write(&outside, "precious\n").expect("writes");
    std::fs::create_dir_all(dir.join("shop")).expect("mkdir");
    std::os::unix::fs::symlink(&outside, dir.join("shop/web-egress.yaml")).expect("symlink");
    let before = tree(&dir);
    let input = input(root.path(), "a", &[("shop", "web", 443)]);
    let o = recommend(&input, &dir, &[]);
    assert_bad_input(&o, &["shop/web-egress.yaml", "symlink"]);
    assert_eq!(
        std::fs::read_to_string(&outside).expect("reads"),
        "precious\n"
    );
    assert_eq!(tree(&dir), before, "a failed run changes nothing");
}

#[test]
fn symlinked_namespace_directory_is_not_entered() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("out");
    let outside = root.path().join("elsewhere");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let theirs = outside.join("old-egress.yaml");
    std::fs::write(&theirs, stale_leash_policy("other", "old")).expect("writes");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::os::unix::fs::symlink(&outside, dir.join("other")).expect("symlink");
    let input = input(root.path(), "a", &[("shop", "web", 443)]);

    // A namespace this run writes to: refused, nothing written.
    std::os::unix::fs::symlink(&outside, dir.join("shop")).expect("symlink");
    let o = recommend(&input, &dir, &[]);
    assert_bad_input(&o, &["shop", "symlink"]);
    assert_eq!(std::fs::read_dir(&outside).expect("reads").count(), 1);
    std::fs::remove_file(dir.join("shop")).expect("unlinks");

    // A namespace it only cleans: not entered, and the run says so.
    let o = recommend(&input, &dir, &[]);
    assert_ok(&o);
    assert!(
        theirs.exists(),
        "leash-labelled YAML outside DIR was deleted"
    );
    assert!(
        stderr(&o).contains("warning") && stderr(&o).contains("other"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        files(&dir),
        [
            "REPORT.md",
            "other",
            "shop/REPORT.md",
            "shop/default-deny-egress.yaml",
            "shop/evidence.json",
            "shop/web-egress.yaml"
        ]
    );
}

#[test]
fn namespace_filter_keeps_other_namespaces_files() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("out");
    let both = input(
        root.path(),
        "a",
        &[("alpha", "web", 443), ("beta", "api", 443)],
    );
    assert_ok(&recommend(&both, &dir, &[]));
    let beta: Vec<String> = files(&dir)
        .into_iter()
        .filter(|f| f.starts_with("beta/"))
        .collect();
    assert_eq!(
        beta,
        [
            "beta/REPORT.md",
            "beta/api-egress.yaml",
            "beta/default-deny-egress.yaml",
            "beta/evidence.json"
        ]
    );

    // alpha's workload is gone: its stale policy goes, beta's files stay.
    let alpha = input(
        root.path(),
        "b",
        &[("alpha", "db", 5432), ("beta", "api", 443)],
    );
    let o = recommend(&alpha, &dir, &["--namespace", "alpha"]);
    assert_ok(&o);
    assert_eq!(
        files(&dir),
        [
            "REPORT.md",
            "alpha/REPORT.md",
            "alpha/db-egress.yaml",
            "alpha/default-deny-egress.yaml",
            "alpha/evidence.json",
            "beta/REPORT.md",
            "beta/api-egress.yaml",
            "beta/default-deny-egress.yaml",
            "beta/evidence.json"
        ]
    );
}

#[test]
fn foreign_files_survive_and_stale_leash_files_go() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("out");
    std::fs::create_dir_all(dir.join("shop")).expect("mkdir");
    std::fs::create_dir_all(dir.join("gone")).expect("mkdir");
    // Foreign files, some mentioning leash's label: never touched.
    let kustomization = "resources:\n- shop/web-egress.yaml\n\
                         # commonLabels: {app.kubernetes.io/managed-by: leash}\n\
                         labels:\n  app.kubernetes.io/managed-by: leash\n";
    std::fs::write(dir.join("kustomization.yaml"), kustomization).expect("writes");
    std::fs::write(dir.join("README.md"), "# Our policies\n").expect("writes");
    std::fs::write(dir.join("shop/kustomization.yaml"), kustomization).expect("writes");
    let labelled_only = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
                         metadata:\n  name: hand-egress\n  labels:\n    \
                         app.kubernetes.io/managed-by: leash\n";
    std::fs::write(dir.join("shop/hand-egress.yaml"), labelled_only).expect("writes");
    // leash's own files from an earlier run, for workloads and namespaces now gone.
    std::fs::write(
        dir.join("shop/old-egress.yaml"),
        stale_leash_policy("shop", "old"),
    )
    .expect("writes");
    std::fs::write(
        dir.join("gone/old-egress.yaml"),
        stale_leash_policy("gone", "old"),
    )
    .expect("writes");
    let foreign: BTreeMap<PathBuf, Entry> = tree(&dir)
        .into_iter()
        .filter(|(p, _)| !p.ends_with("old-egress.yaml") && !p.starts_with("gone"))
        .collect();

    let input = input(root.path(), "a", &[("shop", "web", 443)]);
    assert_ok(&recommend(&input, &dir, &[]));
    assert_ok(&recommend(&input, &dir, &["--namespace", "shop"]));
    let after = tree(&dir);
    for (p, e) in &foreign {
        assert_eq!(after.get(p), Some(e), "{} was touched", p.display());
    }
    assert_eq!(
        files(&dir),
        [
            "README.md",
            "REPORT.md",
            "kustomization.yaml",
            "shop/REPORT.md",
            "shop/default-deny-egress.yaml",
            "shop/evidence.json",
            "shop/hand-egress.yaml",
            "shop/kustomization.yaml",
            "shop/web-egress.yaml"
        ]
    );
    assert!(
        !dir.join("gone").exists(),
        "the emptied namespace directory is removed"
    );
}

#[test]
fn failed_run_leaves_dir_byte_identical() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("out");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("kustomization.yaml"), "resources: []\n").expect("writes");
    std::fs::write(dir.join("README.md"), "# Our policies\n").expect("writes");
    let first = input(
        root.path(),
        "a",
        &[("alpha", "web", 443), ("beta", "api", 443)],
    );
    assert_ok(&recommend(&first, &dir, &[]));
    let before = tree(&dir);

    // alpha's policy would change and beta's would go, but the second namespace holds an
    // invalid name: the run fails before anything is written.
    let second = input(
        root.path(),
        "b",
        &[("alpha", "web", 8443), ("beta", "Bad_Name", 443)],
    );
    let o = recommend(&second, &dir, &[]);
    assert_bad_input(&o, &["\"Bad_Name\""]);
    assert_eq!(tree(&dir), before, "a failed run changed DIR");
}

#[test]
fn longest_workload_name_gets_a_stable_file() {
    let root = tempfile::tempdir().expect("tempdir");
    // A valid 253-character pod name: four dot-separated labels.
    let name = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(61)
    );
    assert_eq!(name.len(), 253);
    let input = input(root.path(), "a", &[("shop", &name, 443)]);
    let mut seen = Vec::new();
    for run in ["one", "two"] {
        let dir = root.path().join(run);
        assert_ok(&recommend(&input, &dir, &[]));
        // A re-run into the same directory keeps the one file.
        assert_ok(&recommend(&input, &dir, &[]));
        let policies: Vec<String> = files(&dir)
            .into_iter()
            .filter(|f| f.starts_with("shop/") && f.ends_with(".yaml"))
            .filter(|f| !f.ends_with("/default-deny-egress.yaml"))
            .collect();
        assert_eq!(policies.len(), 1, "{policies:?}");
        let file = policies[0].trim_start_matches("shop/").to_owned();
        assert!(file.len() <= 255, "{} bytes", file.len());
        assert!(file.starts_with(&name[..200]), "readable prefix: {file}");
        assert!(file.ends_with(".yaml"), "{file}");
        let text = std::fs::read_to_string(dir.join("shop").join(&file)).expect("reads");
        // The policy keeps its full (valid, 253-character) name inside.
        let policy_name = leash::recommend::policy_name(&name);
        assert_eq!(policy_name.len(), 253);
        assert!(text.contains(&format!("name: {policy_name}\n")), "{text}");
        seen.push(file);
    }
    assert_eq!(seen[0], seen[1], "the same file name every run");
}

#[test]
fn long_workload_names_sharing_a_prefix_get_distinct_policies() {
    // Two valid names that agree in their first 251 characters: cutting them to fit
    // `-egress` alone gave one policy name twice (a failed self-check, exit 1).
    let stem = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(59)
    );
    let (one, two) = (format!("{stem}x1"), format!("{stem}x2"));
    assert_eq!(one.len(), 253);
    let root = tempfile::tempdir().expect("tempdir");
    let input = input(
        root.path(),
        "a",
        &[("shop", &one, 443), ("shop", &two, 443)],
    );
    let dir = root.path().join("out");
    assert_ok(&recommend(&input, &dir, &[]));
    let policies: Vec<String> = files(&dir)
        .into_iter()
        .filter(|f| f.starts_with("shop/") && f.ends_with(".yaml"))
        .filter(|f| !f.ends_with("/default-deny-egress.yaml"))
        .collect();
    assert_eq!(policies.len(), 2, "{policies:?}");
    let (a, b) = (
        leash::recommend::policy_name(&one),
        leash::recommend::policy_name(&two),
    );
    assert_ne!(a, b);
    for name in [&a, &b] {
        assert!(name.len() <= 253 && name.ends_with("-egress"), "{name}");
        assert_eq!(
            leash_records::names::dns1123_subdomain(name),
            Ok(()),
            "{name}"
        );
    }
}
