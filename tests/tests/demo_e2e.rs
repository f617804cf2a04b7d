//! End to end: runs exactly the demo pipeline (`lab-demo`, what `make demo` runs) into a
//! temporary directory and checks what it leaves behind, re-running `leash audit` on the
//! artifacts independently. Privileged: skips without root (fails with
//! LEASH_REQUIRE_PRIVILEGED=1).
//!
//! `leash` and `leash-agent` are taken from `$LEASH_BIN` / `$LEASH_AGENT_BIN`, else from the
//! target directory of this test (built there with `cargo build` when missing).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup or parse step must fail the test loudly"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use leash_lab::shop::{
    API_PORT, API_TARGET_PORT, COLLECTOR_ADDR, DB_PORT, FRAUD_ADDR, FRAUD_HOST, FRAUD_PORT,
    PAYMENT, STRIPE_ADDRS, STRIPE_HOST, STRIPE_MOVED_ADDR, STRIPE_PORT, SYSLOG_PORT, WORKER,
};
use leash_records::{DnsRecord, FlowRecord, Protocol, Record, read_records};
use serde_json::Value;

/// The strict validator of objects against a published CRD's schema, shared with the
/// recommender's tests (one implementation; it finds `shared/schemas/` above either crate).
#[path = "../../recommender/tests/support/crd.rs"]
#[expect(
    dead_code,
    reason = "the demo checks ClusterNetworkPolicies only, not the Cilium CRD"
)]
mod crd;

/// The published ClusterNetworkPolicy CRDs: the guardrails use the standard channel only, so
/// they are valid under both.
const CNP_CRDS: [&str; 2] = [
    "policy.networking.k8s.io_clusternetworkpolicies.standard.yaml",
    "policy.networking.k8s.io_clusternetworkpolicies.experimental.yaml",
];

/// One demo at a time: each runs an agent and a lab, and they would only compete for the CPU.
static SERIAL: Mutex<()> = Mutex::new(());

/// `target/<profile>` of this test executable.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    deps.parent().unwrap().to_path_buf()
}

/// A workspace binary: `$env`, else `target/<profile>/<name>`. When either of `leash` and
/// `leash-agent` is missing there, both are built once (`cargo build -p leash -p leash-agent
/// --bins`; `cargo test --workspace` has built them already).
fn workspace_bin(env: &str, name: &str) -> PathBuf {
    static BUILT: Mutex<bool> = Mutex::new(false);
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let profile = profile_dir();
    let path = profile.join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !path.is_file() && !*built {
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.args(["build", "-p", "leash", "-p", "leash-agent", "--bins"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env(
                "CARGO_TARGET_DIR",
                profile.parent().expect("target dir above the profile"),
            );
        if profile.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(
            status.success(),
            "cargo build -p leash -p leash-agent --bins"
        );
        *built = true;
    }
    assert!(path.is_file(), "{} missing", path.display());
    path
}

/// What one demo run left behind.
struct Run {
    out: PathBuf,
    stdout: String,
    leash: PathBuf,
    _dir: tempfile::TempDir,
}

fn run_demo(extra: &[&str]) -> Option<Run> {
    if !leash_lab::require_privileged() {
        return None;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let leash = workspace_bin("LEASH_BIN", "leash");
    let agent = workspace_bin("LEASH_AGENT_BIN", "leash-agent");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let t0 = std::time::Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_lab-demo"))
        .arg("--out")
        .arg(&out)
        .arg("--leash")
        .arg(&leash)
        .arg("--agent")
        .arg(&agent)
        .args(extra)
        .output()
        .expect("running lab-demo");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "lab-demo {extra:?} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    eprintln!("lab-demo {extra:?} took {:?}:\n{stdout}", t0.elapsed());
    Some(Run {
        out,
        stdout,
        leash,
        _dir: dir,
    })
}

fn records(path: &Path) -> Vec<Record> {
    let text = std::fs::read_to_string(path).unwrap();
    read_records(text.as_bytes(), path)
        .map(|r| r.expect("valid v1 record").record)
        .collect()
}

/// Flow records per (pod name prefix = workload, dst, port, protocol).
fn flows_of<'a>(recs: &'a [Record], workload: &str) -> Vec<&'a FlowRecord> {
    recs.iter()
        .filter_map(|r| match r {
            Record::Flow(f) => Some(f),
            Record::Dns(_) => None,
        })
        .filter(|f| {
            f.pod
                .as_ref()
                .is_some_and(|p| p.name.starts_with(&format!("{workload}-")))
        })
        .collect()
}

fn dns_of<'a>(recs: &'a [Record], workload: &str) -> Vec<&'a DnsRecord> {
    recs.iter()
        .filter_map(|r| match r {
            Record::Dns(d) => Some(d),
            Record::Flow(_) => None,
        })
        .filter(|d| {
            d.pod
                .as_ref()
                .is_some_and(|p| p.name.starts_with(&format!("{workload}-")))
        })
        .collect()
}

fn has_flow(flows: &[&FlowRecord], dst: IpAddr, port: u16, proto: Protocol) -> bool {
    flows
        .iter()
        .any(|f| f.dst == dst && f.dst_port == port && f.protocol == proto && f.count > 0)
}

/// The recommended NetworkPolicies, by `namespace/name`, as JSON.
fn policies(dir: &Path) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for ns in std::fs::read_dir(dir).unwrap().flatten() {
        if !ns.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(ns.path()).unwrap().flatten() {
            // Beside the policies: the namespace's REPORT.md and evidence.json.
            if f.path().extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(f.path()).unwrap();
            let v: Value = serde_norway::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", f.path().display()));
            assert_eq!(v["kind"], "NetworkPolicy", "{}", f.path().display());
            let key = format!(
                "{}/{}",
                v["metadata"]["namespace"].as_str().unwrap(),
                v["metadata"]["name"].as_str().unwrap()
            );
            out.insert(key, v);
        }
    }
    out
}

/// `(port, protocol)` pairs of every egress rule of a policy, with the rule.
fn rules(policy: &Value) -> Vec<(BTreeSet<(u64, String)>, &Value)> {
    policy["spec"]["egress"]
        .as_array()
        .map(|rules| {
            rules
                .iter()
                .map(|r| {
                    let ports = r["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|p| {
                            (
                                p["port"].as_u64().unwrap_or(0),
                                p["protocol"].as_str().unwrap_or("TCP").to_owned(),
                            )
                        })
                        .collect();
                    (ports, r)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn audit(run: &Run, flows: &Path) -> Vec<Value> {
    audit_with(run, "cluster.yaml", "policies", flows)
}

/// `leash audit --format json` over `out/<cluster>` with `out/<policies>` given.
fn audit_with(run: &Run, cluster: &str, policies: &str, flows: &Path) -> Vec<Value> {
    let out = Command::new(&run.leash)
        .arg("audit")
        .arg("--cluster")
        .arg(run.out.join(cluster))
        .arg("--policies")
        .arg(run.out.join(policies))
        .arg("--flows")
        .arg(flows)
        .args(["--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "leash audit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every check of the demo's artifacts that holds in both modes.
fn check_artifacts(run: &Run) {
    let out = &run.out;
    // The snapshot is the project's contract and knows the api Service.
    let snap = leash_records::snapshot::load_path(&out.join("cluster.yaml")).unwrap();
    let cluster_ip = |name: &str| -> IpAddr {
        snap.services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name))
            .and_then(|s| s.spec.as_ref()?.cluster_ip.as_deref())
            .unwrap_or_else(|| panic!("Service {name} with a ClusterIP in the snapshot"))
            .parse()
            .unwrap()
    };
    let vip = cluster_ip("api");
    let db_vip = cluster_ip("postgres");
    let dns_vip: IpAddr = "198.51.100.138".parse().unwrap();

    // What the agent observed.
    let recs = records(&out.join("flows.jsonl"));
    let fe = flows_of(&recs, "frontend");
    assert!(has_flow(&fe, vip, API_PORT, Protocol::Tcp), "{fe:#?}");
    let api = flows_of(&recs, "api");
    assert!(has_flow(&api, db_vip, DB_PORT, Protocol::Tcp), "{api:#?}");
    let pay = flows_of(&recs, "payment");
    for ip in STRIPE_ADDRS {
        let f = pay
            .iter()
            .find(|f| f.dst == IpAddr::V4(ip) && f.dst_port == STRIPE_PORT)
            .unwrap_or_else(|| panic!("payment -> {ip}:443 in {pay:#?}"));
        assert_eq!(f.protocol, Protocol::Tcp);
        assert!(
            f.names
                .iter()
                .any(|n| n.trim_end_matches('.') == STRIPE_HOST),
            "the flow to {ip} is labelled with the name payment looked up: {f:?}"
        );
        assert!(f.outcome.is_some_and(|o| o.established > 0), "{f:?}");
    }
    let worker = flows_of(&recs, "worker");
    assert!(
        has_flow(
            &worker,
            IpAddr::V4(COLLECTOR_ADDR),
            SYSLOG_PORT,
            Protocol::Udp
        ),
        "{worker:#?}"
    );
    for w in ["frontend", "api", "payment", "worker"] {
        assert!(
            has_flow(&flows_of(&recs, w), dns_vip, 53, Protocol::Udp),
            "{w} used the cluster DNS Service"
        );
    }
    let stripe_dns = dns_of(&recs, "payment")
        .into_iter()
        .find(|d| d.query.trim_end_matches('.') == STRIPE_HOST && d.qtype == "A")
        .expect("payment's lookup of api.stripe.test was recorded");
    assert_eq!(stripe_dns.rcode, "NOERROR");
    let answered: BTreeSet<&str> = stripe_dns
        .answers
        .iter()
        .filter(|a| a.rtype == "A")
        .map(|a| a.data.as_str())
        .collect();
    let want: Vec<String> = STRIPE_ADDRS.iter().map(ToString::to_string).collect();
    assert_eq!(
        answered,
        want.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );

    // One policy per workload with egress, each with a DNS rule; Services on the targetPort.
    let pols = policies(&out.join("policies"));
    let by_app: BTreeMap<&str, &Value> = pols
        .values()
        .filter_map(|p| Some((p["spec"]["podSelector"]["matchLabels"]["app"].as_str()?, p)))
        .collect();
    assert_eq!(
        by_app.keys().copied().collect::<Vec<_>>(),
        ["api", "frontend", "payment", "worker"],
        "{:?}",
        pols.keys()
    );
    assert!(
        pols.contains_key("shop/default-deny-egress"),
        "{:?}",
        pols.keys()
    );
    let dns_rule = BTreeSet::from([(53, "UDP".to_owned()), (53, "TCP".to_owned())]);
    for (app, p) in &by_app {
        assert_eq!(p["spec"]["policyTypes"], serde_json::json!(["Egress"]));
        let rs = rules(p);
        let dns = rs
            .iter()
            .find(|(ports, _)| *ports == dns_rule)
            .unwrap_or_else(|| panic!("{app}: no DNS rule in {p}"));
        let peer = &dns.1["to"][0];
        assert_eq!(
            peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"], "kube-system",
            "{app}: {peer}"
        );
        assert_eq!(
            peer["podSelector"]["matchLabels"]["k8s-app"], "kube-dns",
            "{app}: {peer}"
        );
    }
    let fe_rules = rules(by_app["frontend"]);
    let to_api = fe_rules
        .iter()
        .find(|(ports, _)| ports.contains(&(u64::from(API_TARGET_PORT), "TCP".to_owned())))
        .unwrap_or_else(|| panic!("frontend: no rule on 8080: {}", by_app["frontend"]));
    assert_eq!(
        to_api.1["to"][0]["podSelector"]["matchLabels"]["app"],
        "api"
    );
    assert!(
        fe_rules
            .iter()
            .all(|(ports, _)| !ports.iter().any(|(p, _)| *p == u64::from(API_PORT))),
        "the Service port 80 must not appear, only the targetPort: {}",
        by_app["frontend"]
    );
    let api_rules = rules(by_app["api"]);
    let to_db = api_rules
        .iter()
        .find(|(ports, _)| ports.contains(&(u64::from(DB_PORT), "TCP".to_owned())))
        .unwrap_or_else(|| panic!("api: no rule on 5432: {}", by_app["api"]));
    assert_eq!(
        to_db.1["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "data"
    );
    let pay_rules = rules(by_app["payment"]);
    assert!(
        pay_rules
            .iter()
            .any(|(ports, r)| ports.contains(&(443, "TCP".to_owned()))
                && r["to"]
                    .as_array()
                    .is_some_and(|t| t.iter().all(|p| p["ipBlock"]["cidr"].as_str().is_some()))),
        "payment: ipBlocks on 443: {}",
        by_app["payment"]
    );
    assert!(
        rules(by_app["worker"])
            .iter()
            .any(|(ports, _)| ports.contains(&(514, "UDP".to_owned()))),
        "worker: syslog rule: {}",
        by_app["worker"]
    );
    let index = std::fs::read_to_string(out.join("policies/REPORT.md")).expect("the index");
    assert!(index.contains("shop/REPORT.md"), "{index}");
    let report = std::fs::read_to_string(out.join("policies/shop/REPORT.md")).expect("shop's");
    assert!(report.contains("frontend"), "{report}");
    assert!(
        out.join("policies/shop/evidence.json").is_file(),
        "shop's evidence"
    );

    // The audits, re-run independently on the artifacts.
    let observed = audit(run, &out.join("flows.jsonl"));
    assert!(!observed.is_empty());
    for v in &observed {
        assert_eq!(v["verdict"], "allow", "observed flow denied: {v}");
    }
    let probes = audit(run, &out.join("probes.jsonl"));
    assert_eq!(probes.len(), 4, "{probes:?}");
    let mut denied = BTreeSet::new();
    for v in &probes {
        assert_eq!(v["verdict"], "deny", "probe allowed: {v}");
        denied.insert((
            v["source"]["pod"]
                .as_str()
                .unwrap()
                .split('-')
                .next()
                .unwrap()
                .to_owned(),
            v["dst"].as_str().unwrap().to_owned(),
            v["dst_port"].as_u64().unwrap(),
        ));
    }
    assert!(denied.contains(&("frontend".into(), "169.254.169.254".into(), 80)));
    assert!(denied.contains(&("payment".into(), "203.0.113.10".into(), 80)));
    assert!(
        denied
            .iter()
            .any(|(src, _, port)| src == "frontend" && *port == u64::from(DB_PORT))
    );

    check_guardrails(run);

    // The lockdown: payment's new call was seen, drifted it, and is exactly what the next
    // proposal newly allows.
    let new = records(&out.join("flows-new.jsonl"));
    let fraud = flows_of(&new, "payment");
    assert!(
        fraud.iter().any(|f| f.dst == IpAddr::V4(FRAUD_ADDR)
            && f.dst_port == FRAUD_PORT
            && f.names
                .iter()
                .any(|n| n.trim_end_matches('.') == FRAUD_HOST)),
        "payment's new call, named: {fraud:#?}"
    );
    let rollout: Vec<Value> = std::fs::read_to_string(out.join("rollout.json"))
        .expect("out/rollout.json")
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["kind"] == "workload")
        .collect();
    let phase = |w: &str| {
        rollout
            .iter()
            .find(|l| l["workload"] == w)
            .map(|l| l["phase"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        phase("Deployment/payment").as_deref(),
        Some("drifted"),
        "{rollout:?}"
    );
    assert_eq!(
        phase("Deployment/frontend").as_deref(),
        Some("enforced"),
        "{rollout:?}"
    );
    let diff: Vec<Value> = std::fs::read_to_string(out.join("diff.jsonl"))
        .expect("out/diff.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reach: Vec<&Value> = diff
        .iter()
        .filter(|l| l["kind"] == "reachability")
        .collect();
    let fraud_ip = FRAUD_ADDR.to_string();
    assert_eq!(
        reach,
        [&serde_json::json!({
            "kind": "reachability",
            "source": {"namespace": "shop", "workload": "Deployment/payment"},
            "change": "newly-allowed",
            "protocol": "TCP",
            "port_from": FRAUD_PORT,
            "port_to": FRAUD_PORT,
            "destination": {"first": fraud_ip, "last": fraud_ip},
        })]
    );
    assert!(
        diff.iter()
            .filter(|l| l["kind"] == "flow")
            .all(|l| l["to"] == "allow"),
        "no break: {diff:?}"
    );

    // The loop: the policy repository's main holds the applied proposal; leash pushed
    // leash/shop with payment's new rule and nothing else, and the pull request's body shows
    // the change, no break and the evidence.
    let repo = out.join("policies.git");
    assert_eq!(
        leash_lab::git_server::branches(&repo).unwrap(),
        ["leash/shop", "main"]
    );
    let payment = "shop/payment-egress.yaml";
    let on_main = leash_lab::git_server::file_at(&repo, "main", payment)
        .unwrap()
        .expect("payment's policy on main");
    let on_branch = leash_lab::git_server::file_at(&repo, "leash/shop", payment)
        .unwrap()
        .expect("payment's policy on leash/shop");
    assert!(!on_main.contains(&format!("{fraud_ip}/32")), "{on_main}");
    assert!(on_branch.contains(&format!("{fraud_ip}/32")), "{on_branch}");
    for f in leash_lab::git_server::files_at(&repo, "main").unwrap() {
        if f.ends_with(".yaml") && f != payment {
            assert_eq!(
                leash_lab::git_server::file_at(&repo, "main", &f).unwrap(),
                leash_lab::git_server::file_at(&repo, "leash/shop", &f).unwrap(),
                "only payment's policy changes: {f}"
            );
        }
    }
    let body = std::fs::read_to_string(out.join("pull-request.md")).expect("out/pull-request.md");
    assert!(body.starts_with("<!-- leash:pr group=shop -->"), "{body}");
    for needle in [
        "0 added, 1 changed, 0 removed",
        "No break",
        "TCP 8443 to `203.0.113.60`",
        "`shop/payment-egress` (`Deployment/payment`), changed",
        "leash pr ",
    ] {
        assert!(
            body.to_lowercase().contains(&needle.to_lowercase()),
            "{needle:?} in the body:\n{body}"
        );
    }
    assert!(
        run.stdout.contains("pull request #1"),
        "the loop in the summary:\n{}",
        run.stdout
    );

    // A name moves: api.stripe.test answers a new address after the lockdown. leash flags the
    // DNS answer as drift (the applied policy allows the name's other addresses, not this one)
    // with the answer's time, earlier than payment's first connection to it.
    let moved = IpAddr::V4(STRIPE_MOVED_ADDR);
    let names_audit: Vec<Value> = std::fs::read_to_string(out.join("audit-names.jsonl"))
        .expect("out/audit-names.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        names_audit
            .iter()
            .filter(|l| l["kind"] != "dns-drift")
            .all(|l| l["kind"] == "flow"),
        "flow lines carry kind flow: {names_audit:?}"
    );
    let drift = names_audit
        .iter()
        .find(|l| l["kind"] == "dns-drift" && l["address"] == moved.to_string().as_str())
        .unwrap_or_else(|| panic!("a dns-drift line for {moved}: {names_audit:?}"));
    assert_eq!(drift["name"], STRIPE_HOST, "{drift}");
    assert_eq!(drift["source"]["namespace"], "shop", "{drift}");
    assert_eq!(drift["source"]["workload"], "Deployment/payment", "{drift}");
    assert_eq!(
        drift["ports"],
        serde_json::json!([{"protocol": "TCP", "port": STRIPE_PORT}]),
        "{drift}"
    );
    assert!(
        drift["policies"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p == "shop/payment-egress")),
        "{drift}"
    );
    let drift_time: chrono::DateTime<chrono::Utc> =
        drift["time"].as_str().unwrap().parse().unwrap();
    let names_recs = records(&out.join("flows-names.jsonl"));
    let connected = flows_of(&names_recs, "payment")
        .into_iter()
        .filter(|f| f.dst == moved)
        .map(|f| f.first_seen)
        .min()
        .expect("payment connected to the new address");
    assert!(
        drift_time < connected,
        "drift at {drift_time}, before the connection at {connected}"
    );
    // The Cilium output names what payment asked for.
    let cilium = std::fs::read_to_string(out.join("cilium/shop/payment-egress.yaml"))
        .expect("out/cilium/shop/payment-egress.yaml");
    let cnp: Value = serde_norway::from_str(&cilium).unwrap();
    assert_eq!(cnp["apiVersion"], "cilium.io/v2", "{cilium}");
    assert_eq!(cnp["kind"], "CiliumNetworkPolicy", "{cilium}");
    let fqdn_rule = cnp["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| {
            r["toFQDNs"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f["matchName"] == STRIPE_HOST))
        })
        .unwrap_or_else(|| panic!("a toFQDNs rule for {STRIPE_HOST}:\n{cilium}"));
    assert_eq!(
        fqdn_rule["toPorts"][0]["ports"][0]["port"],
        STRIPE_PORT.to_string(),
        "{cilium}"
    );
    assert!(
        cnp["spec"]["egress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["toPorts"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["rules"]["dns"].is_array()))),
        "the DNS rule lets Cilium's proxy see the lookups:\n{cilium}"
    );
    // The NetworkPolicy output follows the name.
    let named = std::fs::read_to_string(out.join("policies-names/shop/payment-egress.yaml"))
        .expect("out/policies-names/shop/payment-egress.yaml");
    assert!(named.contains(&format!("{moved}/32")), "{named}");
    assert!(run.stdout.contains("A name moves"), "{}", run.stdout);

    // The summary table names every workload and the outcome.
    for w in [
        "shop/frontend",
        "shop/api",
        "shop/payment",
        "shop/worker",
        "data/postgres",
    ] {
        assert!(
            run.stdout.contains(w),
            "{w} in the summary:\n{}",
            run.stdout
        );
    }
    assert!(
        run.stdout
            .contains("every observed flow allowed, every probe denied"),
        "{}",
        run.stdout
    );
}

/// The guardrail objects of `out/<dir>/cluster`, by name, each valid under the published CRDs
/// (strictly).
fn guardrail_objects(out: &Path, dir: &str) -> BTreeMap<String, Value> {
    let schemas: Vec<Value> = CNP_CRDS
        .iter()
        .map(|f| crd::schema(f, "v1alpha2"))
        .collect();
    let mut objects = BTreeMap::new();
    for f in std::fs::read_dir(out.join(dir).join("cluster"))
        .unwrap()
        .flatten()
    {
        let path = f.path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let v: Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for (file, schema) in CNP_CRDS.iter().zip(&schemas) {
            let problems = crd::validate(schema, &v);
            assert!(
                problems.is_empty(),
                "{}: {file}: {problems:?}",
                path.display()
            );
        }
        assert_eq!(v["kind"], "ClusterNetworkPolicy", "{}", path.display());
        let name = v["metadata"]["name"].as_str().unwrap().to_owned();
        assert_eq!(
            path.file_stem().unwrap().to_string_lossy(),
            name,
            "one file per policy, named after it"
        );
        objects.insert(name, v);
    }
    objects
}

/// The `kubernetes.io/metadata.name` values of a policy's namespace subject, with its operator.
fn subject(policy: &Value) -> (String, Vec<String>) {
    let e = &policy["spec"]["subject"]["namespaces"]["matchExpressions"];
    assert_eq!(e.as_array().map(Vec::len), Some(1), "{policy}");
    assert_eq!(e[0]["key"], "kubernetes.io/metadata.name", "{policy}");
    (
        e[0]["operator"].as_str().unwrap().to_owned(),
        e[0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect(),
    )
}

/// The guardrails step: first `shop` deferred (its workloads' egress is not locked down yet),
/// the metadata address denied from every namespace (nothing in the shop dials it), no break;
/// over the proposal nothing deferred, and that final state allows every observed flow and
/// denies the metadata probe by the Admin tier. CEL rules: leash validates every
/// ClusterNetworkPolicy it reads, so the audits below (which read each directory and the
/// guarded snapshot) would refuse an invalid one.
fn check_guardrails(run: &Run) {
    let out = &run.out;
    let names = [
        "guardrails-default-deny",
        "guardrails-dns",
        "guardrails-metadata",
    ];
    let first = guardrail_objects(out, "guardrails");
    let last = guardrail_objects(out, "guardrails-final");
    assert_eq!(first.keys().map(String::as_str).collect::<Vec<_>>(), names);
    assert_eq!(last.keys().map(String::as_str).collect::<Vec<_>>(), names);
    let all = vec![
        "data".to_owned(),
        "kube-system".to_owned(),
        "shop".to_owned(),
    ];
    for g in [&first, &last] {
        let metadata = &g["guardrails-metadata"];
        assert_eq!(metadata["spec"]["tier"], "Admin", "{metadata}");
        assert_eq!(subject(metadata), ("In".to_owned(), all.clone()));
        let rule = &metadata["spec"]["egress"][0];
        assert_eq!(rule["action"], "Deny", "{metadata}");
        assert_eq!(
            rule["to"][0]["networks"],
            serde_json::json!(["169.254.169.254/32", "fd00:ec2::254/128"]),
            "{metadata}"
        );
        assert_eq!(g["guardrails-default-deny"]["spec"]["tier"], "Baseline");
    }
    // Deferred: shop, until its NetworkPolicies go with the guardrails.
    assert_eq!(
        subject(&first["guardrails-default-deny"]),
        (
            "NotIn".to_owned(),
            vec!["kube-system".to_owned(), "shop".to_owned()]
        )
    );
    assert_eq!(
        subject(&last["guardrails-default-deny"]),
        ("NotIn".to_owned(), vec!["kube-system".to_owned()])
    );
    let report = std::fs::read_to_string(out.join("guardrails/cluster/REPORT.md")).unwrap();
    let deferred = report
        .split_once("## Deferred namespaces")
        .unwrap_or_else(|| panic!("deferred namespaces in the report:\n{report}"))
        .1;
    let deferred = deferred.split("\n## ").next().unwrap();
    let rows: Vec<&str> = deferred
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| Namespace"))
        .collect();
    assert_eq!(
        rows,
        ["| shop | Deployment/api, Deployment/frontend, Deployment/payment, Deployment/worker |"],
        "{report}"
    );
    let final_report =
        std::fs::read_to_string(out.join("guardrails-final/cluster/REPORT.md")).unwrap();
    assert!(!final_report.contains("Deferred"), "{final_report}");
    for r in [&report, &final_report] {
        assert!(r.contains("## Rollout order"), "{r}");
        assert!(r.contains("Guardrails, in audit first"), "{r}");
        assert!(r.contains("Then namespace by namespace"), "{r}");
    }
    assert!(
        run.stdout.contains(
            "deferred (egress not locked down yet): shop (Deployment/api, Deployment/frontend, \
             Deployment/payment, Deployment/worker)"
        ),
        "{}",
        run.stdout
    );

    assert!(
        run.stdout.contains("default deny from the start: data\n"),
        "data has no egress: its namespace joins the Baseline at once:\n{}",
        run.stdout
    );

    // No break: the diff's flow lines (if any) deny nothing, and its report says so.
    let diff = std::fs::read_to_string(out.join("guardrails-diff.jsonl")).unwrap();
    for l in diff.lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        assert!(v["kind"] != "flow" || v["to"] == "allow", "a break: {v}");
    }
    // The exact reachability names what the guardrails take: data/postgres (no egress but
    // DNS observed, so not deferred) loses the world outside DNS, and the metadata address is
    // newly denied from the shop's workloads.
    let reach: Vec<Value> = diff
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "reachability" && v["change"] == "newly-denied")
        .collect();
    assert!(
        reach.iter().any(|v| v["source"]["namespace"] == "data"
            && v["source"]["workload"] == "StatefulSet/postgres"),
        "postgres falls to the Baseline default deny: {reach:?}"
    );
    assert!(
        reach.iter().any(|v| v["source"]["namespace"] == "shop"
            && v["destination"]["first"] == "169.254.169.254"
            && v["destination"]["last"] == "169.254.169.254"),
        "the metadata address is newly denied from shop: {reach:?}"
    );
    let md = std::fs::read_to_string(out.join("guardrails-diff.md")).unwrap();
    for ns in ["data", "kube-system", "shop"] {
        assert!(md.contains(&format!("- `{ns}`: no break")), "{ns}: {md}");
    }
    assert!(
        md.contains("None: no observed flow is allowed under"),
        "{md}"
    );

    // Re-run independently: the first guardrails alone allow every observed flow; the final
    // ones alone would break shop's (the deferral is what makes them safe to apply first);
    // with the proposal they allow every observed flow again.
    let flows = out.join("flows.jsonl");
    for v in audit_with(run, "cluster.yaml", "guardrails", &flows) {
        assert_eq!(v["verdict"], "allow", "the first guardrails alone: {v}");
    }
    let alone = audit_with(run, "cluster.yaml", "guardrails-final", &flows);
    let stripe = IpAddr::V4(STRIPE_ADDRS[0]).to_string();
    let to_stripe = alone
        .iter()
        .find(|v| v["dst"] == stripe.as_str() && v["dst_port"] == STRIPE_PORT)
        .unwrap_or_else(|| panic!("payment -> {stripe}: {alone:?}"));
    assert_eq!(to_stripe["verdict"], "deny", "{to_stripe}");
    assert_eq!(
        to_stripe["policies"],
        serde_json::json!(["ClusterNetworkPolicy/guardrails-default-deny"]),
        "{to_stripe}"
    );
    for v in audit_with(run, "cluster-guarded.yaml", "policies", &flows) {
        assert_eq!(v["verdict"], "allow", "the final state: {v}");
    }
    let probes = audit_with(
        run,
        "cluster-guarded.yaml",
        "policies",
        &out.join("probes.jsonl"),
    );
    let metadata = probes
        .iter()
        .find(|v| v["dst"] == "169.254.169.254")
        .unwrap_or_else(|| panic!("the metadata probe: {probes:?}"));
    assert_eq!(metadata["verdict"], "deny", "{metadata}");
    assert_eq!(
        metadata["policies"],
        serde_json::json!(["ClusterNetworkPolicy/guardrails-metadata"]),
        "{metadata}"
    );
    let explained = std::fs::read_to_string(out.join("explain-metadata.txt")).unwrap();
    assert!(
        explained.contains(
            "Admin tier: ClusterNetworkPolicy guardrails-metadata (priority 10) rule 0 \
             (\"deny-cloud-metadata\"): Deny"
        ),
        "{explained}"
    );
}

/// The guardrails' self-check on the lab shop's real evidence, both ways: over the proposal it
/// passes; with an Admin-tier ClusterNetworkPolicy of the platform team applied that denies
/// TEST-NET-3 (where the shop's external hosts live), it fails, naming exactly the observed
/// flows the stack would deny, and writes nothing.
fn check_self_check(run: &Run) {
    let out = &run.out;
    let guardrails = |cluster: &Path, dir: &Path| {
        Command::new(&run.leash)
            .arg("guardrails")
            .arg("--cluster")
            .arg(cluster)
            .arg("--flows")
            .arg(out.join("flows.jsonl"))
            .arg("--proposed")
            .arg(out.join("policies"))
            .arg("-o")
            .arg(dir)
            .output()
            .unwrap()
    };
    let again = out.join("guardrails-again");
    let ok = guardrails(&out.join("cluster.yaml"), &again);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        guardrail_objects(out, "guardrails-again"),
        guardrail_objects(out, "guardrails-final"),
        "the same evidence and proposal give the same guardrails"
    );

    let mut snapshot: Value =
        serde_norway::from_str(&std::fs::read_to_string(out.join("cluster.yaml")).unwrap())
            .unwrap();
    snapshot["items"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": "platform-no-test-net-3"},
            "spec": {"tier": "Admin", "priority": 5, "subject": {"namespaces": {}},
                     "egress": [{"name": "deny", "action": "Deny",
                                 "to": [{"networks": ["203.0.113.0/24"]}]}]},
        }));
    let platform = out.join("cluster-platform.yaml");
    std::fs::write(&platform, serde_norway::to_string(&snapshot).unwrap()).unwrap();
    let refused = out.join("guardrails-refused");
    let failed = guardrails(&platform, &refused);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert_eq!(failed.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("guardrails self-check failed"), "{stderr}");
    let denied: BTreeSet<String> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("leash: denied by the stack: "))
        .map(|l| l.split(" (").next().unwrap().to_owned())
        .collect();
    let mut want: BTreeSet<String> = STRIPE_ADDRS
        .iter()
        .map(|ip| format!("{PAYMENT} -> {ip}:{STRIPE_PORT}/TCP"))
        .collect();
    want.insert(format!("{WORKER} -> {COLLECTOR_ADDR}:{SYSLOG_PORT}/UDP"));
    assert_eq!(denied, want, "{stderr}");
    assert!(!refused.exists(), "a failed self-check writes nothing");
}

/// The pipeline without `leash serve`: the agent writes flows.jsonl, `leash recommend --flows`.
#[test]
fn demo_pipeline_without_serve() {
    let Some(run) = run_demo(&["--no-serve", "--rounds", "2"]) else {
        return;
    };
    check_artifacts(&run);
    check_self_check(&run);
    // leash has no command that imports record files into a store: no store, no map.
    for f in ["leash.db", "map.png", "map-nodes.txt"] {
        assert!(!run.out.join(f).exists(), "{f}");
    }
}

/// The pipeline as `make demo` runs it: the agent streams over mTLS to `leash serve` on SQLite,
/// policies come from the store. Also checks that the store saw everything the agent wrote:
/// `leash recommend --flows out/flows.jsonl` proposes byte-identical policies.
#[test]
fn demo_pipeline_streams_through_leash_serve() {
    let Some(run) = run_demo(&["--rounds", "2"]) else {
        return;
    };
    check_artifacts(&run);
    assert!(run.out.join("leash.db").is_file());
    for f in [
        "ca.pem",
        "server.pem",
        "server-key.pem",
        "lab-node.pem",
        "lab-node-key.pem",
    ] {
        assert!(run.out.join("certs").join(f).is_file(), "certs/{f}");
    }
    let from_file = tempfile::tempdir().unwrap();
    // The store also holds the lockdown step's new call, and out/policies is the proposal
    // made after it, over the locked snapshot.
    let status = Command::new(&run.leash)
        .arg("recommend")
        .arg("--cluster")
        .arg(run.out.join("cluster-locked.yaml"))
        .arg("--flows")
        .arg(run.out.join("flows.jsonl"))
        .arg(run.out.join("flows-new.jsonl"))
        .arg("-o")
        .arg(from_file.path())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        policies(&run.out.join("policies")),
        policies(from_file.path()),
        "policies from the store differ from policies from flows.jsonl"
    );
    check_store_and_map(&run);
}

/// The demo's store and map: `leash recommend --cluster out/cluster.yaml --store out/leash.db`
/// proposes exactly `out/policies` (every YAML file byte for byte); the store is one file (its
/// log folded back); `out/map.png` is a PNG of a browser window and `out/map-nodes.txt` shows
/// every workload of the shop (without `chromedriver`, both are missing unless
/// `LEASH_REQUIRE_BROWSER=1`, which fails the demo).
fn check_store_and_map(run: &Run) {
    let out = &run.out;
    assert!(
        !out.join("leash.db-wal").exists(),
        "the store's log is folded back"
    );
    let again = tempfile::tempdir().unwrap();
    let ran = Command::new(&run.leash)
        .arg("recommend")
        .arg("--cluster")
        .arg(out.join("cluster.yaml"))
        .arg("--store")
        .arg(out.join("leash.db"))
        .arg("-o")
        .arg(again.path())
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "{}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let yaml = |dir: &Path| -> BTreeMap<String, String> {
        let mut files = BTreeMap::new();
        for ns in std::fs::read_dir(dir).unwrap().flatten() {
            for f in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                if f.path().extension().is_some_and(|e| e == "yaml") {
                    let key = f.path().strip_prefix(dir).unwrap().display().to_string();
                    files.insert(key, std::fs::read_to_string(f.path()).unwrap());
                }
            }
        }
        files
    };
    let (kept, reproduced) = (yaml(&out.join("policies")), yaml(again.path()));
    assert!(!kept.is_empty());
    assert_eq!(
        kept, reproduced,
        "recommend over out/leash.db does not reproduce out/policies"
    );

    if leash_lab::webdriver::find().is_err() {
        eprintln!("no chromedriver: the demo took no screenshot");
        assert!(!out.join("map.png").exists());
        return;
    }
    let png = std::fs::read(out.join("map.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG signature");
    assert_eq!(&png[12..16], b"IHDR", "the first chunk is IHDR");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    let (width, height) = (be(16), be(20));
    assert!(
        (800..=4000).contains(&width) && (400..=4000).contains(&height),
        "{width}x{height}"
    );
    assert!(
        png.len() > 10_000,
        "a drawn map, not an empty page: {} bytes",
        png.len()
    );
    let nodes = std::fs::read_to_string(out.join("map-nodes.txt")).unwrap();
    let drawn: BTreeSet<String> = nodes
        .lines()
        .filter_map(|l| l.strip_prefix("wl:"))
        .map(str::to_owned)
        .collect();
    // Every workload of the shop, and only workloads of the lab (its DNS server too).
    let shop: BTreeSet<String> = leash_lab::shop::WORKLOADS
        .iter()
        .map(|(pod, kind, name)| format!("{}/{kind}/{name}", pod.split('/').next().unwrap()))
        .collect();
    assert!(drawn.is_superset(&shop), "the map's workloads: {nodes}");
    let snapshot: Value =
        serde_norway::from_str(&std::fs::read_to_string(out.join("cluster.yaml")).unwrap())
            .unwrap();
    let lab: BTreeSet<String> = snapshot["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let m = &i["metadata"];
            format!(
                "{}/{}/{}",
                m["namespace"].as_str().unwrap_or_default(),
                i["kind"].as_str().unwrap_or_default(),
                m["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    assert!(drawn.is_subset(&lab), "workloads not in the lab: {nodes}");
}

/// Counts stay exact across an agent restart: the demo stops its agent after the first round
/// and a new agent process (new boot id) captures the second. Everything both wrote to
/// flows.jsonl is in the store exactly once, read straight from its SQLite file: the demo's
/// store (`leash.db`, up to the lockdown's call) and the later steps' copy (`leash-loop.db`).
#[test]
fn counts_are_exact_across_an_agent_restart() {
    let Some(run) = run_demo(&["--rounds", "2", "--restart-agent"]) else {
        return;
    };
    check_artifacts(&run);
    let agent_2 = std::fs::read_to_string(run.out.join("agent-2.log")).unwrap();
    assert!(agent_2.contains("capturing"), "{agent_2}");

    // Everything the agents wrote: two for the traffic and one for the lockdown's call into
    // the demo's store; one more for the names step into the copy.
    let mut files = vec!["flows.jsonl", "flows-new.jsonl"];
    for (store, agents) in [("leash.db", 3), ("leash-loop.db", 4)] {
        if store == "leash-loop.db" {
            files.push("flows-names.jsonl");
        }
        let (mut flow_events, mut dns_records) = (0u64, 0u64);
        for r in files.iter().flat_map(|f| records(&run.out.join(f))) {
            match r {
                Record::Flow(f) => flow_events += f.count,
                Record::Dns(_) => dns_records += 1,
            }
        }
        assert!(flow_events > 0 && dns_records > 0);
        let db = rusqlite::Connection::open_with_flags(
            run.out.join(store),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let sum = |sql: &str| -> u64 {
            let v: i64 = db.query_row(sql, [], |r| r.get(0)).unwrap();
            u64::try_from(v).unwrap()
        };
        assert_eq!(
            sum("SELECT coalesce(sum(count), 0) FROM flows"),
            flow_events,
            "{store}"
        );
        assert_eq!(
            sum("SELECT coalesce(sum(count), 0) FROM dns"),
            dns_records,
            "{store}"
        );
        // One boot id per agent process, each batch stored once.
        assert_eq!(
            sum("SELECT count(DISTINCT boot_id) FROM batches"),
            agents,
            "{store}"
        );
    }
}
