//! The demo's last step: lock down, then keep it true.
//!
//! 1. apply the proposal to the lab's snapshot (`DIR/cluster-locked.yaml`): leash evaluates
//!    the policies itself, so "applied" means "in the cluster source";
//! 2. the shop makes one call it never made before (payment to the fraud-check API);
//! 3. `leash rollout status` must show payment `drifted` and every other workload with a
//!    policy `enforced` (`DIR/rollout.json`);
//! 4. `leash recommend --previous DIR/policies -o DIR/policies` proposes the new rule, and only
//!    payment's policy file changes;
//! 5. `leash diff --from applied --to DIR/policies --fail-on-break` shows exactly the new
//!    destination as newly allowed for payment, and no break (`DIR/diff.jsonl`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use leash_lab::shop::{self, Shop};
use leash_records::error::Chain;
use serde_json::Value;

use super::{Background, Result, STOP_TIMEOUT, fail, run_ok};

/// Where the leash commands read the observations from.
pub(crate) enum Observed {
    /// `--store DB`: the agent streams to `leash serve`.
    Store(PathBuf),
    /// `--flows FILE...`: the agent's record files.
    Flows(Vec<PathBuf>),
}

impl Observed {
    pub(crate) fn args(&self, cmd: &mut Command) {
        match self {
            Observed::Store(db) => {
                cmd.arg("--store").arg(db);
            }
            Observed::Flows(files) => {
                cmd.arg("--flows").args(files);
            }
        }
    }
}

/// What the lockdown step found, for the summary.
pub(crate) struct Outcome {
    /// Workload (`ns/name`) → rollout phase after the new call.
    pub phases: BTreeMap<String, String>,
    /// Policy files (`ns/name`) that `recommend --previous` changed.
    pub changed: Vec<String>,
    /// The diff's reachability lines, as `source -> destination proto/ports (change)`.
    pub reachability: Vec<String>,
    /// Observed flows whose verdict changes, and how many of them are breaks.
    pub flow_changes: usize,
}

/// Runs the lockdown step. `start_agent(records_file, log_name)` starts an agent like the
/// demo's; `observed` is where the earlier steps' observations are.
pub(crate) fn lockdown(
    leash: &Path,
    out: &Path,
    shop: &Shop,
    policies: &Path,
    observed: Observed,
    start_agent: &dyn Fn(&Path, &str) -> Result<Background>,
) -> Result<Outcome> {
    // 1. Apply the proposal.
    let step = "apply the proposal";
    let locked = out.join("cluster-locked.yaml");
    let mut snapshot = shop.lab().snapshot_value();
    let before = read_tree(step, policies)?;
    let items = snapshot["items"]
        .as_array_mut()
        .ok_or_else(|| fail(step, "the lab's snapshot is not a List"))?;
    let mut applied = 0;
    for (file, text) in &before {
        if !file.ends_with(".yaml") {
            continue;
        }
        for doc in serde_norway::Deserializer::from_str(text) {
            let value = <Value as serde::Deserialize>::deserialize(doc)
                .map_err(|e| fail(step, format!("{file}: {}", Chain(&e))))?;
            if value["kind"] == "NetworkPolicy" {
                items.push(value);
                applied += 1;
            }
        }
    }
    let yaml = serde_norway::to_string(&snapshot).map_err(|e| fail(step, Chain(&e)))?;
    std::fs::write(&locked, yaml)
        .map_err(|e| fail(step, format!("{}: {}", locked.display(), Chain(&e))))?;
    eprintln!(
        "   {applied} policies applied to the lab's snapshot: {}",
        locked.display()
    );

    // 2. A call the shop never made.
    let step = "make a new call";
    eprintln!(
        "== the shop makes a new call: payment -> {} ({}:{})",
        shop::FRAUD_HOST,
        shop::FRAUD_ADDR,
        shop::FRAUD_PORT
    );
    let new_flows = out.join("flows-new.jsonl");
    let mut agent = start_agent(&new_flows, "agent-new.log")?;
    shop.new_call().map_err(|e| fail(step, Chain(&e)))?;
    agent.stop("stop leash-agent after the new call", STOP_TIMEOUT)?;
    let observed = match observed {
        Observed::Flows(mut files) => {
            files.push(new_flows);
            Observed::Flows(files)
        }
        store => store,
    };

    // 3. Rollout status.
    let step = "rollout status";
    eprintln!("== leash rollout status");
    let mut cmd = Command::new(leash);
    cmd.args(["rollout", "status", "--cluster"]).arg(&locked);
    observed.args(&mut cmd);
    cmd.args(["--format", "json"]);
    let ran = run_ok(step, &mut cmd)?;
    write(step, &out.join("rollout.json"), &ran.stdout)?;
    let mut phases = BTreeMap::new();
    // The first line is the guardrails stage (`"kind":"guardrails"`).
    for line in json_lines(step, &ran.stdout)?
        .into_iter()
        .filter(|l| l["kind"] == "workload")
    {
        let workload = format!(
            "{}/{}",
            line["namespace"].as_str().unwrap_or_default(),
            line["workload"]
                .as_str()
                .and_then(|w| w.split_once('/'))
                .map_or("", |(_, name)| name)
        );
        phases.insert(
            workload,
            line["phase"].as_str().unwrap_or_default().to_owned(),
        );
    }
    let payment = super::workload_of(shop::PAYMENT);
    if phases.get(&payment).map(String::as_str) != Some("drifted") {
        return Err(fail(
            step,
            format!("{payment} should be drifted after its new call; phases: {phases:?}"),
        ));
    }
    for (workload, phase) in &phases {
        let has_policy = before
            .keys()
            .any(|f| f.starts_with(&format!("{workload}-")));
        if workload != &payment && has_policy && phase != "enforced" {
            return Err(fail(
                step,
                format!(
                    "{workload} has an applied policy and no new call: expected enforced, got {phase}"
                ),
            ));
        }
    }
    eprintln!("   {payment}: drifted (the applied policies deny its new call)");

    // 4. The next proposal, from the previous one.
    let step = "recommend --previous";
    eprintln!("== leash recommend --previous");
    let mut cmd = Command::new(leash);
    cmd.args(["recommend", "--cluster"]).arg(&locked);
    observed.args(&mut cmd);
    cmd.arg("--previous").arg(policies).arg("-o").arg(policies);
    run_ok(step, &mut cmd)?;
    let after = read_tree(step, policies)?;
    let changed: Vec<String> = after
        .iter()
        .filter(|(f, text)| f.ends_with(".yaml") && before.get(*f) != Some(*text))
        .map(|(f, _)| f.trim_end_matches(".yaml").to_owned())
        .collect();
    let expected_file = format!("{payment}-egress");
    if changed != [expected_file.clone()] {
        return Err(fail(
            step,
            format!("only {expected_file}.yaml should change; changed: {changed:?}"),
        ));
    }
    eprintln!("   only {expected_file}.yaml changed");

    // 5. What exactly changes.
    let step = "diff";
    eprintln!("== leash diff --from applied --to {}", policies.display());
    let mut cmd = Command::new(leash);
    cmd.args(["diff", "--cluster"]).arg(&locked);
    cmd.args(["--from", "applied", "--to"]).arg(policies);
    observed.args(&mut cmd);
    cmd.args(["--format", "json", "--fail-on-break"]);
    let ran = run_ok(step, &mut cmd)?;
    write(step, &out.join("diff.jsonl"), &ran.stdout)?;
    let lines = json_lines(step, &ran.stdout)?;
    let reach: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "reachability")
        .collect();
    let fraud = IpAddr::V4(shop::FRAUD_ADDR).to_string();
    let expected = serde_json::json!({
        "kind": "reachability",
        "source": {"namespace": shop::SHOP_NS, "workload": "Deployment/payment"},
        "change": "newly-allowed",
        "protocol": "TCP",
        "port_from": shop::FRAUD_PORT,
        "port_to": shop::FRAUD_PORT,
        "destination": {"first": fraud, "last": fraud},
    });
    if reach != [&expected] {
        return Err(fail(
            step,
            format!("expected exactly {expected} as the reachability change; got {reach:?}"),
        ));
    }
    let flows: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "flow").collect();
    let new_call_allowed = flows.iter().any(|l| {
        l["dst"] == fraud.as_str()
            && l["dst_port"] == shop::FRAUD_PORT
            && l["from"] == "deny"
            && l["to"] == "allow"
    });
    if !new_call_allowed || flows.iter().any(|l| l["to"] == "deny") {
        return Err(fail(
            step,
            format!(
                "expected the new call to change from deny to allow, and no break; got {flows:?}"
            ),
        ));
    }
    eprintln!(
        "   newly allowed: {payment} -> {fraud} TCP/{}; no break",
        shop::FRAUD_PORT
    );
    Ok(Outcome {
        phases,
        changed,
        reachability: vec![format!(
            "{payment} -> {fraud} TCP/{} (newly allowed)",
            shop::FRAUD_PORT
        )],
        flow_changes: flows.len(),
    })
}

/// Every file under `dir`, by its path relative to `dir`, with its text.
pub(crate) fn read_tree(step: &'static str, dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d)
            .map_err(|e| fail(step, format!("{}: {}", d.display(), Chain(&e))))?;
        for entry in entries {
            let path = entry
                .map_err(|e| fail(step, format!("{}: {}", d.display(), Chain(&e))))?
                .path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| fail(step, format!("{}: {}", path.display(), Chain(&e))))?;
            let rel = path
                .strip_prefix(dir)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            files.insert(rel, text);
        }
    }
    Ok(files)
}

pub(crate) fn json_lines(step: &'static str, text: &str) -> Result<Vec<Value>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| fail(step, format!("not a JSON line: {l:?}: {}", Chain(&e))))
        })
        .collect()
}

pub(crate) fn write(step: &'static str, path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| fail(step, format!("{}: {}", path.display(), Chain(&e))))
}
