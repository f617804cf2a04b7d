//! The agent's memory figures live in one place, the top-level README's benchmark table, which
//! `agent_scale` measures; deploy/README.md and the manifests refer to it instead of keeping a
//! copy that goes stale, and the agent's memory limit leaves room over it.

use std::path::Path;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use leash_deploy::stage;

/// The benchmark table's row that deploy/README.md refers to.
const PEAK_ROW: &str = "agent peak RSS with 100,000 active flow keys";

fn read(relative: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first `**N MiB**` figure of the README's [`PEAK_ROW`] row.
fn measured_peak_mib(readme: &str) -> f64 {
    let row = readme
        .lines()
        .find(|l| l.starts_with(&format!("| {PEAK_ROW} |")))
        .unwrap_or_else(|| panic!("README.md has no benchmark row {PEAK_ROW:?}"));
    row.split("**")
        .skip(1)
        .step_by(2)
        .find_map(|bold| bold.strip_suffix(" MiB")?.parse().ok())
        .unwrap_or_else(|| panic!("no **N MiB** figure in {row:?}"))
}

/// MiB of a memory quantity in the forms the manifests use (`96Mi`, `1Gi`).
fn mib(q: &Quantity) -> f64 {
    let s = q.0.as_str();
    let parsed = if let Some(n) = s.strip_suffix("Mi") {
        n.parse::<f64>().ok()
    } else if let Some(n) = s.strip_suffix("Gi") {
        n.parse::<f64>().ok().map(|g| g * 1024.0)
    } else {
        None
    };
    parsed.unwrap_or_else(|| panic!("memory quantity {s:?} not in Mi or Gi"))
}

/// The lines of deploy/README.md's Memory bullet.
fn memory_bullet(deploy_readme: &str) -> String {
    let mut lines = deploy_readme
        .lines()
        .skip_while(|l| !l.starts_with("- **Memory**"));
    let mut bullet = lines.next().unwrap_or_default().to_owned();
    for l in lines.take_while(|l| l.starts_with("  ")) {
        bullet.push(' ');
        bullet.push_str(l.trim());
    }
    bullet
}

#[test]
fn deploy_docs_refer_to_the_measured_peak_instead_of_copying_it() {
    let peak = measured_peak_mib(&read("../README.md"));
    let bullet = memory_bullet(&read("README.md"));
    assert!(
        bullet.contains(PEAK_ROW) && bullet.contains("--bench agent_scale"),
        "deploy/README.md's Memory bullet should name the README row and the bench: {bullet:?}"
    );
    // The only figure it states is the limit itself.
    let figures: Vec<&str> = bullet
        .split(" MiB")
        .filter_map(|before| before.rsplit(['(', ' ']).next())
        .filter(|n| n.parse::<f64>().is_ok())
        .collect();
    assert_eq!(figures, ["256"], "{bullet:?}");
    for line in read("base/agent.yaml").lines() {
        let comment = line.trim_start();
        assert!(
            !(comment.starts_with('#') && comment.contains("MiB")),
            "base/agent.yaml states its own measurement: {line:?}"
        );
    }

    // The agent's memory request covers the measured peak, and its limit doubles it.
    for m in stage::every_rendering().unwrap_or_else(|e| panic!("{e}")) {
        let resources = m
            .daemon_set("leash-agent")
            .and_then(|d| d.spec.template.spec.as_ref())
            .and_then(|p| p.containers.iter().find(|c| c.name == "agent"))
            .and_then(|c| c.resources.as_ref())
            .unwrap_or_else(|| panic!("{}: no agent resources", m.source));
        let of = |list: &Option<std::collections::BTreeMap<String, Quantity>>| {
            list.as_ref()
                .and_then(|l| l.get("memory"))
                .map(mib)
                .unwrap_or_else(|| panic!("{}: no agent memory", m.source))
        };
        let (request, limit) = (of(&resources.requests), of(&resources.limits));
        assert!(
            request >= peak,
            "{}: request {request} MiB < peak {peak} MiB",
            m.source
        );
        assert!(
            limit >= 2.0 * peak,
            "{}: limit {limit} MiB < 2 × peak {peak} MiB",
            m.source
        );
        assert_eq!(
            limit, 256.0,
            "{}: the limit deploy/README.md states",
            m.source
        );
    }
}
