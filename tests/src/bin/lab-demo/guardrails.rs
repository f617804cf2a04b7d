//! The demo's guardrails step: the cluster baseline (`leash guardrails`, ClusterNetworkPolicies)
//! goes first in a rollout, so it runs after the first proposal and before the lockdown.
//!
//! 1. `leash guardrails` with no proposal (`DIR/guardrails`): the Baseline default deny defers
//!    every namespace whose observed egress no applied NetworkPolicy locks down (the shop's
//!    namespace: its workloads call each other and external hosts), the Admin tier denies the
//!    cloud metadata address from every namespace (no workload of the shop ever dials it: only
//!    a probe record names it), and leash's self-check over the stack passes;
//! 2. `leash diff --from applied --to DIR/guardrails --fail-on-break`
//!    (`DIR/guardrails-diff.jsonl`, and the markdown in `DIR/guardrails-diff.md`): applying
//!    them first breaks no workload's observed traffic;
//! 3. `leash guardrails --proposed DIR/policies` (`DIR/guardrails-final`): over the proposal
//!    nothing is deferred, and the self-check passes over guardrails and proposal: the final
//!    state;
//! 4. the final state applied (`DIR/cluster-guarded.yaml`: the snapshot with the final
//!    guardrails) with the proposal given: `leash audit` allows every observed flow
//!    (`DIR/audit-guarded-flows.jsonl`), denies the metadata probe by `guardrails-metadata`
//!    (`DIR/audit-guarded-probes.jsonl`), and `leash explain` names the Admin tier, the policy,
//!    the rule and its action (`DIR/explain-metadata.txt`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use leash_lab::shop::{self, Shop};
use leash_records::error::Chain;
use serde_json::Value;

use super::lockdown::{Observed, json_lines, read_tree, write};
use super::{Result, fail, run_ok};

/// The Admin tier's metadata deny, as `leash guardrails` names it.
const METADATA_POLICY: &str = "guardrails-metadata";
/// The Baseline tier's default deny, as `leash guardrails` names it.
const DEFAULT_DENY_POLICY: &str = "guardrails-default-deny";
/// The heading of the report's deferred namespaces.
const DEFERRED_HEADING: &str = "## Deferred namespaces";
/// The heading of the report's stage order.
const ROLLOUT_HEADING: &str = "## Rollout order";

/// What the guardrails step found, for the summary.
pub(crate) struct Outcome {
    /// Namespaces the first guardrails defer, with their workloads (`Kind/name`).
    pub deferred: BTreeMap<String, BTreeSet<String>>,
    /// The namespaces the first Baseline default deny covers at once (no egress to defer).
    pub baseline_first: BTreeSet<String>,
    /// The namespaces the metadata deny covers.
    pub metadata: BTreeSet<String>,
    /// The exempt namespaces (the Baseline leaves them out in both stages).
    pub exempt: BTreeSet<String>,
    /// Observed flows the final state allows (all of them).
    pub allowed: usize,
    /// The deciding rule of the metadata probe, as `leash explain` printed it.
    pub explained: String,
}

/// What the earlier steps left for this one.
pub(crate) struct Inputs<'a> {
    /// The lab's snapshot (`DIR/cluster.yaml`).
    pub cluster: &'a Path,
    /// leash's first proposal (`recommend -o DIR/policies`).
    pub policies: &'a Path,
    /// The agent's records (`DIR/flows.jsonl`, written in both modes).
    pub flows: &'a Path,
    /// The probe records (`DIR/probes.jsonl`).
    pub probes: &'a Path,
    /// Where the leash commands read the observations (the store, or the records).
    pub observed: &'a Observed,
}

/// Runs the guardrails step over `inputs`.
pub(crate) fn guardrails(
    leash: &Path,
    out: &Path,
    shop: &Shop,
    inputs: &Inputs<'_>,
) -> Result<Outcome> {
    let Inputs {
        cluster,
        policies,
        flows,
        probes,
        observed,
    } = *inputs;
    let first_dir = out.join("guardrails");
    let final_dir = out.join("guardrails-final");
    let _ = std::fs::remove_dir_all(&first_dir);
    let _ = std::fs::remove_dir_all(&final_dir);
    let namespaces = namespaces(&shop.lab().snapshot_value());
    let (egress, metadata_users) = evidence("guardrails", flows)?;

    // 1. First: nothing proposed yet.
    let step = "guardrails";
    eprintln!("== leash guardrails: the cluster baseline goes first");
    let mut cmd = Command::new(leash);
    cmd.args(["guardrails", "--cluster"]).arg(cluster);
    observed.args(&mut cmd);
    cmd.arg("-o").arg(&first_dir);
    let ran = run_ok(step, &mut cmd)?;
    let first = read_tree(step, &first_dir.join("cluster"))?;
    let report = first.get("REPORT.md").map_or("", String::as_str);
    let deferred = deferred_table(report);
    let names: Vec<&str> = deferred.keys().map(String::as_str).collect();
    if !ran
        .stderr
        .contains(&format!("defers {} namespace(s)", deferred.len()))
        || !ran.stderr.contains(&names.join(", "))
    {
        return Err(fail(
            step,
            format!(
                "stderr should name the deferred namespaces {names:?}:\n{}",
                ran.stderr
            ),
        ));
    }
    if !report.contains(ROLLOUT_HEADING) {
        return Err(fail(
            step,
            format!("no {ROLLOUT_HEADING:?} in REPORT.md:\n{report}"),
        ));
    }
    let first_objects = objects(step, &first)?;
    let left_out_first = not_in(step, &first_objects, DEFAULT_DENY_POLICY)?;
    let metadata = subject_in(step, &first_objects, METADATA_POLICY)?;
    let unobserved: BTreeSet<String> = namespaces.difference(&metadata_users).cloned().collect();
    if metadata != unobserved {
        return Err(fail(
            step,
            format!(
                "{METADATA_POLICY} covers {metadata:?}; expected every namespace never observed \
                 using {} ({unobserved:?})",
                shop::METADATA_ADDR
            ),
        ));
    }
    eprintln!(
        "   deferred: {}; metadata denied from {}",
        names.join(", "),
        metadata.iter().cloned().collect::<Vec<_>>().join(", ")
    );

    // 2. Applying them first breaks nothing.
    let step = "guardrails diff";
    eprintln!("== leash diff --from applied --to {}", first_dir.display());
    let diff = |format: &str| {
        let mut cmd = Command::new(leash);
        cmd.args(["diff", "--cluster"]).arg(cluster);
        cmd.args(["--from", "applied", "--to"]).arg(&first_dir);
        observed.args(&mut cmd);
        cmd.args(["--format", format, "--fail-on-break"]);
        run_ok(step, &mut cmd)
    };
    let json = diff("json")?;
    write(step, &out.join("guardrails-diff.jsonl"), &json.stdout)?;
    let breaks: Vec<Value> = json_lines(step, &json.stdout)?
        .into_iter()
        .filter(|l| l["kind"] == "flow" && l["to"] == "deny")
        .collect();
    if !breaks.is_empty() {
        return Err(fail(step, format!("the guardrails break {breaks:?}")));
    }
    let md = diff("markdown")?;
    write(step, &out.join("guardrails-diff.md"), &md.stdout)?;
    eprintln!("   no break");

    // 3. Over the proposal: nothing deferred, the final state.
    let step = "guardrails over the proposal";
    eprintln!(
        "== leash guardrails --proposed {}: the final state",
        policies.display()
    );
    let mut cmd = Command::new(leash);
    cmd.args(["guardrails", "--cluster"]).arg(cluster);
    observed.args(&mut cmd);
    cmd.arg("--proposed").arg(policies);
    cmd.arg("-o").arg(&final_dir);
    let ran = run_ok(step, &mut cmd)?;
    let last = read_tree(step, &final_dir.join("cluster"))?;
    let report = last.get("REPORT.md").map_or("", String::as_str);
    if report.contains(DEFERRED_HEADING) || ran.stderr.contains("defers") {
        return Err(fail(
            step,
            format!(
                "nothing should be deferred over the proposal; stderr:\n{}\n{report}",
                ran.stderr
            ),
        ));
    }
    let last_objects = objects(step, &last)?;
    let exempt = not_in(step, &last_objects, DEFAULT_DENY_POLICY)?;
    let joined: BTreeSet<String> = left_out_first.difference(&exempt).cloned().collect();
    if joined != deferred.keys().cloned().collect::<BTreeSet<_>>() {
        return Err(fail(
            step,
            format!(
                "the Baseline default deny leaves out {exempt:?} over the proposal and \
                 {left_out_first:?} without it: the difference should be the deferred {names:?}"
            ),
        ));
    }
    // Deferred: every namespace but the exempt ones with a workload whose observed egress
    // (DNS aside) no NetworkPolicy locks down before the proposal, with exactly those workloads.
    let expected: BTreeMap<String, BTreeSet<String>> = egress
        .into_iter()
        .filter(|(ns, _)| !exempt.contains(ns))
        .collect();
    if deferred != expected {
        return Err(fail(
            "guardrails",
            format!(
                "deferred {deferred:?}; expected the namespaces with non-DNS egress {expected:?}"
            ),
        ));
    }

    // 4. The final state applied: every observed flow allowed, the metadata probe denied by
    // the Admin tier.
    let step = "audit the final state";
    eprintln!("== leash audit: the final guardrails applied, the proposal given");
    let guarded = out.join("cluster-guarded.yaml");
    let mut snapshot = shop.lab().snapshot_value();
    let items = snapshot["items"]
        .as_array_mut()
        .ok_or_else(|| fail(step, "the lab's snapshot is not a List"))?;
    items.extend(last_objects);
    let yaml = serde_norway::to_string(&snapshot).map_err(|e| fail(step, Chain(&e)))?;
    write(step, &guarded, &yaml)?;
    let audit = |records: &Path, fail_on_deny: bool| {
        let mut cmd = Command::new(leash);
        cmd.args(["audit", "--cluster"]).arg(&guarded);
        cmd.arg("--policies").arg(policies);
        cmd.arg("--flows").arg(records);
        cmd.args(["--format", "json"]);
        if fail_on_deny {
            cmd.arg("--fail-on-deny");
        }
        let ran = run_ok(step, &mut cmd)?;
        Ok::<_, super::Failure>((json_lines(step, &ran.stdout)?, ran.stdout))
    };
    let (verdicts, text) = audit(flows, true)?;
    write(step, &out.join("audit-guarded-flows.jsonl"), &text)?;
    let flows_only: Vec<&Value> = verdicts.iter().filter(|v| v["kind"] == "flow").collect();
    if flows_only.is_empty() || flows_only.iter().any(|v| v["verdict"] != "allow") {
        return Err(fail(
            step,
            format!("every observed flow must be allowed: {flows_only:?}"),
        ));
    }
    let (verdicts, text) = audit(probes, false)?;
    write(step, &out.join("audit-guarded-probes.jsonl"), &text)?;
    let metadata_addr = IpAddr::V4(shop::METADATA_ADDR).to_string();
    let probe = verdicts
        .iter()
        .find(|v| v["dst"] == metadata_addr.as_str())
        .ok_or_else(|| {
            fail(
                step,
                format!("no verdict for the metadata probe: {verdicts:?}"),
            )
        })?;
    let by_metadata = serde_json::json!([format!("ClusterNetworkPolicy/{METADATA_POLICY}")]);
    if probe["verdict"] != "deny" || probe["policies"] != by_metadata {
        return Err(fail(
            step,
            format!("the metadata probe must be denied by {METADATA_POLICY} alone: {probe}"),
        ));
    }

    let step = "explain the metadata deny";
    let to = format!("{metadata_addr}:80/TCP");
    let mut cmd = Command::new(leash);
    cmd.args(["explain", "--cluster"]).arg(&guarded);
    cmd.arg("--policies").arg(policies);
    cmd.args(["--from", shop::FRONTEND, "--to", &to]);
    let ran = run_ok(step, &mut cmd)?;
    write(step, &out.join("explain-metadata.txt"), &ran.stdout)?;
    let explained = ran
        .stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("Admin tier:") && l.contains(METADATA_POLICY))
        .filter(|l| l.ends_with(": Deny") && l.contains("rule 0"))
        .map(str::to_owned)
        .ok_or_else(|| {
            fail(
                step,
                format!(
                    "`leash explain` should name the Admin tier, {METADATA_POLICY}, its rule and \
                     Deny:\n{}",
                    ran.stdout
                ),
            )
        })?;
    eprintln!("   {} -> {to}: {explained}", shop::FRONTEND);
    Ok(Outcome {
        baseline_first: namespaces.difference(&left_out_first).cloned().collect(),
        deferred,
        metadata,
        exempt,
        allowed: flows_only.len(),
        explained,
    })
}

/// The summary's lines.
pub(crate) fn summary(g: &Outcome) -> String {
    let mut s = String::from("\nguardrails: first in the rollout, then over the proposal\n");
    let list = |set: &mut dyn Iterator<Item = &String>| set.cloned().collect::<Vec<_>>().join(", ");
    let _ = writeln!(
        s,
        "deferred (egress not locked down yet): {}",
        g.deferred
            .iter()
            .map(|(ns, w)| format!("{ns} ({})", list(&mut w.iter())))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        s,
        "default deny from the start: {}",
        list(&mut g.baseline_first.iter())
    );
    let _ = writeln!(
        s,
        "metadata denied from: {}; exempt: {}",
        list(&mut g.metadata.iter()),
        list(&mut g.exempt.iter())
    );
    let _ = writeln!(
        s,
        "diff applied -> guardrails: no break; over the proposal nothing deferred, {} observed \
         flow(s) allowed",
        g.allowed
    );
    let _ = writeln!(s, "explain: {}", g.explained);
    s
}

/// The namespaces of a snapshot `List`.
fn namespaces(snapshot: &Value) -> BTreeSet<String> {
    snapshot["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["kind"] == "Namespace")
        .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

/// From the agent's records: the namespaces with egress other than DNS, with their workloads
/// (`Kind/name`, from the shop's table), and the namespaces observed dialling the metadata
/// address.
#[expect(
    clippy::type_complexity,
    reason = "two maps, named by the doc and the caller's bindings"
)]
fn evidence(
    step: &'static str,
    flows: &Path,
) -> Result<(BTreeMap<String, BTreeSet<String>>, BTreeSet<String>)> {
    let text = std::fs::read_to_string(flows)
        .map_err(|e| fail(step, format!("{}: {}", flows.display(), Chain(&e))))?;
    let mut egress: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut metadata = BTreeSet::new();
    for line in json_lines(step, &text)? {
        let (Some(ns), Some(pod)) = (
            line["pod"]["namespace"].as_str(),
            line["pod"]["name"].as_str(),
        ) else {
            continue;
        };
        if line["kind"] != "flow" {
            continue;
        }
        if line["dst"] == IpAddr::V4(shop::METADATA_ADDR).to_string().as_str() {
            metadata.insert(ns.to_owned());
        }
        if line["dst_port"] == 53 {
            continue;
        }
        let key = format!("{ns}/{pod}");
        let workload = shop::WORKLOADS
            .iter()
            .find(|(k, _, _)| *k == key)
            .map_or(key.clone(), |(_, kind, name)| format!("{kind}/{name}"));
        egress.entry(ns.to_owned()).or_default().insert(workload);
    }
    Ok((egress, metadata))
}

/// The rows of REPORT.md's deferred namespaces table.
fn deferred_table(report: &str) -> BTreeMap<String, BTreeSet<String>> {
    let Some((_, section)) = report.split_once(DEFERRED_HEADING) else {
        return BTreeMap::new();
    };
    let section = section.split("\n## ").next().unwrap_or_default();
    section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l
                .trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect();
            match cells.as_slice() {
                [ns, workloads] if *ns != "Namespace" && !ns.starts_with("---") => Some((
                    (*ns).to_owned(),
                    workloads.split(", ").map(str::to_owned).collect(),
                )),
                _ => None,
            }
        })
        .collect()
}

/// The guardrail objects of an `-o DIR/cluster` tree, each checked for its kind and version.
fn objects(step: &'static str, tree: &BTreeMap<String, String>) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (file, text) in tree.iter().filter(|(f, _)| f.ends_with(".yaml")) {
        let v: Value = serde_norway::from_str(text)
            .map_err(|e| fail(step, format!("{file}: {}", Chain(&e))))?;
        if v["kind"] != "ClusterNetworkPolicy"
            || v["apiVersion"] != "policy.networking.k8s.io/v1alpha2"
        {
            return Err(fail(
                step,
                format!("{file}: not a ClusterNetworkPolicy: {v}"),
            ));
        }
        out.push(v);
    }
    Ok(out)
}

fn named<'a>(step: &'static str, objects: &'a [Value], name: &str) -> Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["metadata"]["name"] == name)
        .ok_or_else(|| fail(step, format!("no {name} among the guardrails")))
}

/// The values of the one `kubernetes.io/metadata.name` expression with `operator` of a
/// policy's namespace subject.
fn subject_values(
    step: &'static str,
    objects: &[Value],
    name: &str,
    operator: &str,
) -> Result<BTreeSet<String>> {
    let p = named(step, objects, name)?;
    let exprs = p["spec"]["subject"]["namespaces"]["matchExpressions"]
        .as_array()
        .filter(|e| e.len() == 1)
        .ok_or_else(|| {
            fail(
                step,
                format!("{name}: one namespace expression expected: {p}"),
            )
        })?;
    let e = &exprs[0];
    if e["key"] != "kubernetes.io/metadata.name" || e["operator"] != operator {
        return Err(fail(
            step,
            format!("{name}: expected {operator} on kubernetes.io/metadata.name: {e}"),
        ));
    }
    Ok(e["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect())
}

/// The namespaces a policy's subject leaves out (`NotIn`).
fn not_in(step: &'static str, objects: &[Value], name: &str) -> Result<BTreeSet<String>> {
    subject_values(step, objects, name, "NotIn")
}

/// The namespaces a policy's subject names (`In`).
fn subject_in(step: &'static str, objects: &[Value], name: &str) -> Result<BTreeSet<String>> {
    subject_values(step, objects, name, "In")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deferred_table_is_read_from_the_report() {
        let report = "# leash guardrails\n\n## Rollout order\n\n1. x\n\n## Deferred namespaces\n\n\
                      Text.\n\n| Namespace | Workloads |\n|---|---|\n\
                      | shop | Deployment/api, Deployment/frontend |\n| data | StatefulSet/postgres |\n\n\
                      ## Why\n\n- **x**: | a | b |\n";
        let t = deferred_table(report);
        assert_eq!(t.keys().collect::<Vec<_>>(), ["data", "shop"]);
        assert_eq!(
            t["shop"],
            BTreeSet::from([
                "Deployment/api".to_owned(),
                "Deployment/frontend".to_owned()
            ])
        );
        assert!(deferred_table("# leash guardrails\n\n## Why\n").is_empty());
    }

    #[test]
    fn subjects_are_read_by_operator() {
        let objs = vec![
            serde_json::json!({"metadata": {"name": "p"}, "spec": {"subject": {
            "namespaces": {"matchExpressions": [{"key": "kubernetes.io/metadata.name",
            "operator": "NotIn", "values": ["kube-system", "shop"]}]}}}}),
        ];
        assert_eq!(
            not_in("t", &objs, "p").unwrap(),
            BTreeSet::from(["kube-system".to_owned(), "shop".to_owned()])
        );
        assert!(subject_in("t", &objs, "p").is_err());
        assert!(not_in("t", &objs, "q").is_err());
    }
}
