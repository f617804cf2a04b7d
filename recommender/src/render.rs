//! Rendering: canonical YAML for policies, the multi-document stream, the `-o DIR` layout and
//! `REPORT.md`. Byte-for-byte deterministic: maps are sorted, nothing depends on time or order
//! of input.

use std::fmt::Write as _;

use k8s_openapi::api::networking::v1::NetworkPolicy;

use crate::cluster::Cluster;
use crate::recommend::{
    self, EgressPeer, EgressRule, PolicySpec, Recommendation, RuleEvidence, RuleKind,
};

pub mod cilium;
pub mod columns;
pub mod escape;
pub mod evidence;
pub mod names;
pub mod outdir;

pub use outdir::{files, write_dir};

/// Errors rendering output.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// YAML serialization failed.
    #[error("cannot serialize policy {name}")]
    Yaml {
        /// The policy.
        name: String,
        /// The serializer's error.
        source: serde_norway::Error,
    },
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One policy as a YAML document (no `---` separator), keys in reading order: identity
/// first (`apiVersion`, `kind`, `metadata.name`, `namespace`), then `podSelector`,
/// `policyTypes`, and each rule's `to` before its `ports`, each port's `protocol`, `port`,
/// `endPort`. Deterministic: the order is fixed here, maps are sorted.
pub fn policy_yaml(p: &NetworkPolicy) -> Result<String> {
    serde_norway::to_string(&Ordered::from(p)).map_err(|source| Error::Yaml {
        name: format!(
            "{}/{}",
            p.metadata.namespace.as_deref().unwrap_or(""),
            p.metadata.name.as_deref().unwrap_or("")
        ),
        source,
    })
}

/// A NetworkPolicy view whose field order is the order of the YAML.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Ordered<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: OrderedMeta<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<OrderedSpec<'a>>,
}

#[derive(serde::Serialize)]
struct OrderedMeta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<&'a String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<&'a std::collections::BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<&'a std::collections::BTreeMap<String, String>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct OrderedSpec<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_selector: Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy_types: Option<&'a Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ingress: Option<&'a Vec<k8s_openapi::api::networking::v1::NetworkPolicyIngressRule>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    egress: Option<Vec<OrderedRule<'a>>>,
}

#[derive(serde::Serialize)]
struct OrderedRule<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ports: Option<Vec<OrderedPort<'a>>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct OrderedPort<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<&'a String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<&'a k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    end_port: Option<i32>,
}

impl<'a> From<&'a NetworkPolicy> for Ordered<'a> {
    fn from(p: &'a NetworkPolicy) -> Self {
        let m = &p.metadata;
        Ordered {
            api_version: "networking.k8s.io/v1",
            kind: "NetworkPolicy",
            metadata: OrderedMeta {
                name: m.name.as_ref(),
                namespace: m.namespace.as_ref(),
                labels: m.labels.as_ref(),
                annotations: m.annotations.as_ref(),
            },
            spec: p.spec.as_ref().map(|s| OrderedSpec {
                pod_selector: s.pod_selector.as_ref(),
                policy_types: s.policy_types.as_ref(),
                ingress: s.ingress.as_ref(),
                egress: s
                    .egress
                    .as_ref()
                    .map(|rules| rules.iter().map(OrderedRule::from).collect()),
            }),
        }
    }
}

impl<'a> From<&'a k8s_openapi::api::networking::v1::NetworkPolicyEgressRule> for OrderedRule<'a> {
    fn from(r: &'a k8s_openapi::api::networking::v1::NetworkPolicyEgressRule) -> Self {
        OrderedRule {
            to: r.to.as_ref(),
            ports: r.ports.as_ref().map(|ports| {
                ports
                    .iter()
                    .map(|p| OrderedPort {
                        protocol: p.protocol.as_ref(),
                        port: p.port.as_ref(),
                        end_port: p.end_port,
                    })
                    .collect()
            }),
        }
    }
}

/// Egress rules as a YAML sequence, what goes under a policy's `spec.egress`, in the field
/// order of [`policy_yaml`] (an alert's proposed fix). `what` names them in an error.
pub fn egress_yaml(
    what: &str,
    rules: &[k8s_openapi::api::networking::v1::NetworkPolicyEgressRule],
) -> Result<String> {
    let ordered: Vec<OrderedRule<'_>> = rules.iter().map(OrderedRule::from).collect();
    serde_norway::to_string(&ordered).map_err(|source| Error::Yaml {
        name: what.to_owned(),
        source,
    })
}

/// All policies as one multi-document YAML stream.
pub fn yaml_stream(policies: &[NetworkPolicy]) -> Result<String> {
    let mut out = String::new();
    for p in policies {
        out.push_str("---\n");
        out.push_str(&policy_yaml(p)?);
    }
    Ok(out)
}

/// `1 policy`, `2 policies`: the count with the word that agrees with it.
pub(crate) fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// A one-paragraph summary for the terminal: what was written and what needs attention.
pub fn summary(rec: &Recommendation) -> String {
    // Count the namespaces of the workload policies too: with `--baseline cnp` there are no
    // default denies, and the policies still belong to namespaces.
    let namespaces: std::collections::BTreeSet<&str> = rec
        .default_deny_namespaces
        .iter()
        .map(String::as_str)
        .chain(rec.policies.iter().map(|p| p.namespace.as_str()))
        .collect();
    let mut s = format!(
        "leash: {} for {}",
        plural(rec.policies.len(), "policy", "policies"),
        plural(namespaces.len(), "namespace", "namespaces"),
    );
    for (n, what) in [
        (
            rec.isolated.len(),
            "workloads would be fully isolated by default-deny",
        ),
        (rec.briefly_observed.len(), "workloads observed too briefly"),
        (
            rec.host_network.len(),
            "hostNetwork workloads not enforceable",
        ),
        (rec.unselectable.len(), "workloads without stable labels"),
        (rec.unresolved.len(), "flows that became no rule"),
        (
            rec.policies
                .iter()
                .flat_map(|p| &p.rules)
                .filter(|r| !r.budget_met)
                .count(),
            "rules over the CIDR budget",
        ),
        (
            rec.changes.len(),
            "rule changes since the previous proposal",
        ),
        (
            rec.policies
                .iter()
                .flat_map(|p| &p.rules)
                .filter(|r| r.not_seen_in_window)
                .count(),
            "previous rules kept without evidence in this window",
        ),
    ] {
        if n > 0 {
            let _ = write!(s, "; {n} {what}");
        }
    }
    s.push_str(" (details in REPORT.md with -o DIR)");
    s
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map_or_else(|| "-".to_owned(), leash_records::time::rfc3339)
}

/// A human span such as `3d 4h`, `2h 5m`, `40s`.
pub fn human_duration(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    let (days, hours, mins, secs) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else if mins > 0 {
        format!("{mins}m {secs}s")
    } else {
        format!("{secs}s")
    }
}

/// Escapes text for a Markdown table cell.
pub(crate) fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

pub(crate) use escape::md;

/// A Markdown code span showing `s` literally: fenced by more backticks than any run of them
/// inside, control characters replaced as in [`md`]. In a table, pass it through [`cell`].
pub(crate) fn code(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_control() {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect();
    let longest = s.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    // A span that starts or ends with a backtick needs a space, which the parser strips.
    if s.starts_with('`') || s.ends_with('`') {
        format!("{fence} {s} {fence}")
    } else {
        format!("{fence}{s}{fence}")
    }
}

/// A list of names or other text from the data, each escaped ([`md`]), shortened after `max`
/// items, for a table cell.
pub(crate) fn list(items: impl IntoIterator<Item = String>, max: usize) -> String {
    let all: Vec<String> = items.into_iter().map(|i| md(&i)).collect();
    if all.is_empty() {
        return "-".to_owned();
    }
    let shown: Vec<&str> = all.iter().take(max).map(String::as_str).collect();
    let mut s = shown.join(", ");
    if all.len() > max {
        let _ = write!(s, " (+{} more)", all.len() - max);
    }
    cell(&s)
}

fn peer_text(p: &EgressPeer) -> String {
    match p {
        EgressPeer::Pods {
            namespace,
            selector,
        } => match namespace {
            Some(ns) => format!("ns {} AND pods {}", code(ns), code(&selector.to_string())),
            None => format!("pods {}", code(&selector.to_string())),
        },
        EgressPeer::Block {
            cidr,
            except,
            unobserved,
        } => {
            let mut s = code(&cidr.to_string());
            if !except.is_empty() {
                let ex: Vec<String> = except.iter().map(|e| code(&e.to_string())).collect();
                let _ = write!(s, " except {}", ex.join(", "));
            }
            if *unobserved > 0 {
                let _ = write!(s, " (+{unobserved} unobserved)");
            }
            s
        }
    }
}

fn rule_kind(r: &EgressRule) -> String {
    match &r.kind {
        RuleKind::Dns => "DNS".to_owned(),
        RuleKind::Workload(w) => format!("workload {}", md(w)),
        RuleKind::Hosts(kinds) => kinds
            .iter()
            .map(|k| k.describe())
            .collect::<Vec<_>>()
            .join(", "),
        RuleKind::External => "external".to_owned(),
        RuleKind::Previous => "previous proposal".to_owned(),
    }
}

fn ports_text(r: &EgressRule) -> String {
    r.ports
        .iter()
        .map(|p| match p.end_port {
            Some(e) => format!("{}-{}/{}", p.port, e, p.protocol),
            None => format!("{}/{}", p.port, p.protocol),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn over_permission(r: &EgressRule) -> String {
    if r.kind == RuleKind::Previous {
        return "kept from the previous proposal".to_owned();
    }
    let addresses = match r.unobserved_addresses {
        None => "selector".to_owned(),
        Some(0) => "0 (exact)".to_owned(),
        Some(n) if r.budget_met => format!("{n} unobserved addresses"),
        Some(n) => format!("{n} unobserved addresses (CIDR budget NOT met)"),
    };
    let ports: u32 = r.ports.iter().map(|p| p.unobserved).sum();
    if ports > 0 {
        format!("{addresses}; {ports} unobserved ports in ranges")
    } else {
        addresses
    }
}

fn evidence_cells(e: &RuleEvidence) -> String {
    format!(
        "{} | {} | {} | {} | {}",
        e.count,
        time(e.first_seen),
        time(e.last_seen),
        list(e.names.iter().cloned(), 5),
        pod_list(e, 5),
    )
}

/// The source pods of a rule: at most `max` names, then "and N more", or "and at least N
/// more" when a store left pods unnamed (it keeps a bounded number per observation).
fn pod_list(e: &RuleEvidence, max: usize) -> String {
    let named = e.pods.len();
    let shown: Vec<String> = e.pods.iter().take(max).map(|p| md(p)).collect();
    let rest = u64::try_from(named - shown.len())
        .unwrap_or(u64::MAX)
        .saturating_add(e.more_pods);
    let at_least = if e.more_pods > 0 { "at least " } else { "" };
    let mut s = shown.join(", ");
    match (shown.is_empty(), rest) {
        (true, 0) => return "-".to_owned(),
        (true, _) => {
            let _ = write!(s, "{at_least}{rest} pods");
        }
        (false, 0) => {}
        (false, _) => {
            let _ = write!(s, " and {at_least}{rest} more");
        }
    }
    cell(&s)
}

/// The report of a whole recommendation, every namespace in one text: what a reviewer of
/// the policy pull request needs. With `-o DIR` each namespace gets its own
/// ([`namespace_report`]) and DIR's `REPORT.md` indexes them ([`index`]).
pub fn report(cluster: &Cluster, rec: &Recommendation) -> String {
    report_titled(cluster, rec, "# leash egress recommendation")
}

/// `<ns>/REPORT.md`: the report of the namespace's part of `rec` ([`scoped`]).
pub fn namespace_report(cluster: &Cluster, rec: &Recommendation, ns: &str) -> String {
    report_titled(
        cluster,
        &scoped(cluster, rec, ns),
        &format!("# leash egress recommendation: namespace {}", code(ns)),
    )
}

/// The namespaces `rec` has anything to report for (a policy, a finding or a change),
/// sorted: each gets `<ns>/REPORT.md` and `<ns>/evidence.json`.
pub fn namespaces(cluster: &Cluster, rec: &Recommendation) -> std::collections::BTreeSet<String> {
    let ns_of = |w: usize| cluster.workloads.get(w).map(|w| w.namespace.clone());
    let mut out: std::collections::BTreeSet<String> =
        rec.default_deny_namespaces.iter().cloned().collect();
    out.extend(rec.policies.iter().map(|p| p.namespace.clone()));
    out.extend(rec.changes.iter().map(|c| c.namespace.clone()));
    let workloads = rec
        .isolated
        .iter()
        .chain(rec.briefly_observed.iter().map(|(w, _)| w))
        .chain(rec.host_network.iter().map(|h| &h.workload))
        .chain(&rec.unselectable)
        .chain(rec.unresolved.iter().map(|u| &u.workload))
        .chain(rec.shared_egress.iter().map(|e| &e.workload))
        .chain(rec.withheld.iter().map(|w| &w.workload));
    out.extend(workloads.filter_map(|&w| ns_of(w)));
    out
}

/// The part of `rec` about namespace `ns`: its policies, findings and changes. What belongs
/// to no namespace (unattributed traffic, observations left out) stays in the index.
pub fn scoped(cluster: &Cluster, rec: &Recommendation, ns: &str) -> Recommendation {
    let here = |w: &usize| cluster.workloads.get(*w).is_some_and(|w| w.namespace == ns);
    Recommendation {
        policies: rec
            .policies
            .iter()
            .filter(|p| p.namespace == ns)
            .cloned()
            .collect(),
        default_deny_namespaces: rec
            .default_deny_namespaces
            .iter()
            .filter(|n| *n == ns)
            .cloned()
            .collect(),
        isolated: rec.isolated.iter().copied().filter(here).collect(),
        briefly_observed: rec
            .briefly_observed
            .iter()
            .filter(|(w, _)| here(w))
            .cloned()
            .collect(),
        host_network: rec
            .host_network
            .iter()
            .filter(|h| here(&h.workload))
            .cloned()
            .collect(),
        unselectable: rec.unselectable.iter().copied().filter(here).collect(),
        unresolved: rec
            .unresolved
            .iter()
            .filter(|u| here(&u.workload))
            .cloned()
            .collect(),
        unattributed_flows: 0,
        min_observation: rec.min_observation,
        skipped_input: Vec::new(),
        shared_egress: rec
            .shared_egress
            .iter()
            .filter(|e| here(&e.workload))
            .cloned()
            .collect(),
        has_previous: rec.has_previous,
        changes: rec
            .changes
            .iter()
            .filter(|c| c.namespace == ns)
            .cloned()
            .collect(),
        withheld: rec
            .withheld
            .iter()
            .filter(|w| here(&w.workload))
            .cloned()
            .collect(),
        names: rec.names.only(|w| here(&w)),
    }
}

/// DIR's `REPORT.md` with `-o DIR`: a table of the namespaces with their counts and links to
/// `<ns>/REPORT.md` and `<ns>/evidence.json`, then what belongs to no namespace.
pub fn index(cluster: &Cluster, rec: &Recommendation) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# leash egress recommendation\n");
    let _ = writeln!(
        s,
        "{} in {}. Each namespace has its own report (the evidence of every rule, what \
         needs attention, the changes since the previous proposal) and `evidence.json` (the \
         same evidence, for machines and for `leash recommend --previous`).\n",
        plural(rec.policies.len(), "workload policy", "workload policies"),
        plural(rec.default_deny_namespaces.len(), "namespace", "namespaces"),
    );
    let _ = writeln!(
        s,
        "| namespace | policies | needs attention | changes | report | evidence |\n|---|---|---|---|---|---|"
    );
    for ns in namespaces(cluster, rec) {
        let part = scoped(cluster, rec, &ns);
        let attention = part.isolated.len()
            + part.withheld.len()
            + part.briefly_observed.len()
            + part.host_network.len()
            + part.unselectable.len()
            + part.unresolved.len()
            + part.shared_egress.len()
            + part
                .policies
                .iter()
                .flat_map(|p| &p.rules)
                .filter(|r| !r.budget_met)
                .count();
        // Namespaces are checked DNS-1123 labels before any file is written: safe in a link.
        let _ = writeln!(
            s,
            "| {} | {} | {attention} | {} | [{ns}/REPORT.md]({ns}/REPORT.md) | [{ns}/evidence.json]({ns}/evidence.json) |",
            cell(&code(&ns)),
            part.policies.len(),
            if rec.has_previous {
                part.changes.len().to_string()
            } else {
                "new".to_owned()
            },
        );
    }
    s.push('\n');
    if rec.unattributed_flows > 0 || !rec.skipped_input.is_empty() {
        let _ = writeln!(s, "## In no namespace\n");
        unattributed_sections(&mut s, rec);
    }
    s
}

/// Unattributed traffic and observations left out: sections of the index (with `-o DIR`)
/// or of the whole report. Returns whether there was any.
fn unattributed_sections(s: &mut String, rec: &Recommendation) -> bool {
    let mut any = false;
    if rec.unattributed_flows > 0 {
        any = true;
        let _ = writeln!(
            s,
            "### Unattributed traffic\n\n{} flow events came from host processes, not pods; \
             NetworkPolicy does not apply to them.\n",
            rec.unattributed_flows
        );
    }
    if !rec.skipped_input.is_empty() {
        any = true;
        let _ = writeln!(
            s,
            "### Observations left out\n\nThese observations match nothing in the cluster \
             model (the workload was deleted or renamed), so none of their traffic is in the \
             policies.\n"
        );
        for line in &rec.skipped_input {
            let _ = writeln!(s, "- {}", md(line));
        }
        s.push('\n');
    }
    any
}

/// "Changes since the previous proposal": per policy, each added, widened, narrowed and
/// removed rule with the evidence that caused it.
fn changes_section(s: &mut String, rec: &Recommendation) {
    let _ = writeln!(s, "## Changes since the previous proposal\n");
    if !rec.has_previous {
        let _ = writeln!(
            s,
            "No previous proposal (`--previous DIR`, or leash's applied policies): every rule \
             is new.\n"
        );
        return;
    }
    if rec.changes.is_empty() {
        let _ = writeln!(s, "None: every rule is as in the previous proposal.\n");
        return;
    }
    let mut current: Option<(&str, &str)> = None;
    for c in &rec.changes {
        if current != Some((&c.namespace, &c.policy)) {
            if current.is_some() {
                s.push('\n');
            }
            current = Some((&c.namespace, &c.policy));
            let _ = writeln!(
                s,
                "### {} for {}/{}\n\n| change | before | after | events | last seen | pods | why |\n|---|---|---|---|---|---|---|",
                code(&format!("{}/{}", c.namespace, c.policy)),
                md(&c.namespace),
                md(&c.workload),
            );
        }
        let rule = |r: &Option<String>| {
            r.as_deref()
                .map_or_else(|| "-".to_owned(), |r| cell(&code(r)))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            c.kind.as_str(),
            rule(&c.before),
            rule(&c.after),
            c.evidence.count,
            time(c.evidence.last_seen),
            pod_list(&c.evidence, 5),
            cell(&md(&c.why)),
        );
    }
    s.push('\n');
}

/// A report with its own title line.
fn report_titled(cluster: &Cluster, rec: &Recommendation, title: &str) -> String {
    let mut s = String::new();
    let wname = |w: usize| {
        cluster
            .workloads
            .get(w)
            .map_or_else(String::new, |w| md(&w.to_string()))
    };
    let _ = writeln!(s, "{title}\n");
    let _ = writeln!(
        s,
        "{} in {}, each namespace with `default-deny-egress`. Every rule below lists the \
         traffic that justifies it. Before writing, every observed flow of these workloads \
         was checked with leash's NetworkPolicy evaluator and is allowed.\n",
        plural(rec.policies.len(), "workload policy", "workload policies"),
        plural(rec.default_deny_namespaces.len(), "namespace", "namespaces"),
    );

    let _ = writeln!(s, "## Needs attention\n");
    let mut attention = false;
    if !rec.isolated.is_empty() {
        attention = true;
        let _ = writeln!(
            s,
            "### Would be fully isolated by default-deny\n\nNo egress that a policy can allow was \
             observed from these workloads, so they get no allow policy. `default-deny-egress` will block all their \
             egress. Confirm that this is intended before merging.\n"
        );
        for w in &rec.isolated {
            let _ = writeln!(s, "- {}", wname(*w));
        }
        s.push('\n');
    }
    if !rec.briefly_observed.is_empty() {
        attention = true;
        let _ = writeln!(
            s,
            "### Observed too briefly to trust (under {})\n\nTraffic that did not happen in \
             this window (nightly jobs, failovers) is missing from these policies.\n",
            human_duration(rec.min_observation)
        );
        for (w, d) in &rec.briefly_observed {
            let _ = writeln!(s, "- {}: observed for {}", wname(*w), human_duration(*d));
        }
        s.push('\n');
    }
    if !rec.shared_egress.is_empty() {
        attention = true;
        let _ = writeln!(
            s,
            "### Egress already restricted by another author\n\nAn applied egress \
             NetworkPolicy that leash did not write already selects these workloads' pods. \
             leash's policy allows what was observed on its own, but two authors of one \
             workload's egress need a human: decide who owns it, then remove or merge the other \
             policy.\n\n| workload | other policies |\n|---|---|"
        );
        for e in &rec.shared_egress {
            let _ = writeln!(
                s,
                "| {} | {} |",
                cell(&wname(e.workload)),
                list(e.policies.iter().cloned(), 8)
            );
        }
        s.push('\n');
    }
    attention |= crate::rollout::report_withheld(&mut s, cluster, &rec.withheld);
    if !rec.host_network.is_empty() {
        attention = true;
        let _ = writeln!(
            s,
            "### hostNetwork egress: not enforceable by NetworkPolicy\n\nThese workloads run in \
             the node's network namespace; NetworkPolicy cannot restrict them, so no policy is \
             written for them.\n\n| workload | events | destinations |\n|---|---|---|"
        );
        for h in &rec.host_network {
            let _ = writeln!(
                s,
                "| {} | {} | {} |",
                cell(&wname(h.workload)),
                h.evidence.count,
                list(h.evidence.destinations.iter().cloned(), 8)
            );
        }
        s.push('\n');
    }
    if !rec.unselectable.is_empty() {
        attention = true;
        let _ = writeln!(
            s,
            "### No stable labels: no policy written\n\nThese workloads' pods carry only \
             unstable labels (hashes, uids, job names), so no selector can target them across \
             restarts. Label them and re-run. Where their namespace gets `default-deny-egress`, \
             it WILL block their observed egress.\n"
        );
        for w in &rec.unselectable {
            let ns = cluster.workloads.get(*w).map(|w| w.namespace.as_str());
            let blocked = ns.is_some_and(|ns| rec.default_deny_namespaces.iter().any(|d| d == ns));
            let _ = writeln!(
                s,
                "- {}{}",
                wname(*w),
                if blocked {
                    " (blocked by default-deny-egress!)"
                } else {
                    ""
                }
            );
        }
        s.push('\n');
    }
    if !rec.unresolved.is_empty() {
        attention = true;
        let _ = writeln!(
            s,
            "### Flows that became no rule\n\n| workload | destination | events | reason |\n|---|---|---|---|"
        );
        for u in &rec.unresolved {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                cell(&wname(u.workload)),
                cell(&md(&u.destination)),
                u.count,
                cell(&md(&u.reason))
            );
        }
        s.push('\n');
    }
    let over_budget: Vec<(&PolicySpec, usize, &EgressRule)> = rec
        .policies
        .iter()
        .flat_map(|p| {
            p.rules
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.budget_met)
                .map(move |(i, r)| (p, i + 1, r))
        })
        .collect();
    if !over_budget.is_empty() {
        attention = true;
        let _ = writeln!(
            s,
            "### CIDR budget not met\n\nThese rules need more ipBlocks than `--max-cidrs` \
             allows: no cover within the budget stays inside `--max-prefix-v4` / \
             `--max-prefix-v6` and off the protected ranges, so each keeps the cover with the \
             fewest blocks. Allow wider blocks, raise `--max-cidrs`, or allow these \
             destinations by DNS name with an FQDN policy (e.g. Cilium `toFQDNs`), which \
             NetworkPolicy cannot express.\n\n| policy | rule | ipBlocks | DNS names | what would fix it |\n|---|---|---|---|---|"
        );
        for (p, i, r) in over_budget {
            let _ = writeln!(
                s,
                "| {} | {i} | {} | {} | {} |",
                cell(&code(&format!("{}/{}", p.namespace, p.name))),
                block_counts(r),
                list(r.evidence.names.iter().cloned(), 5),
                budget_fixes(r),
            );
        }
        s.push('\n');
    }
    if unattributed_sections(&mut s, rec) {
        attention = true;
    }
    if !attention {
        let _ = writeln!(s, "Nothing.\n");
    }
    changes_section(&mut s, rec);

    let _ = writeln!(s, "## Policies\n");
    for p in &rec.policies {
        let _ = writeln!(
            s,
            "### {} for {}\n\nSelects pods {}. {} rules; {}.\n",
            code(&format!("{}/{}", p.namespace, p.name)),
            wname(p.workload),
            code(&p.pod_selector.to_string()),
            p.rules.len(),
            recommend::evidence_summary(&p.evidence)
        );
        let _ = writeln!(
            s,
            "| # | kind | to | ports | over-permission | events | first seen | last seen | DNS names | pods |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        for (i, r) in p.rules.iter().enumerate() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} |",
                i + 1,
                cell(&rule_kind(r)),
                cell(
                    &r.peers
                        .iter()
                        .map(peer_text)
                        .collect::<Vec<_>>()
                        .join("<br>")
                ),
                ports_text(r),
                over_permission(r),
                evidence_cells(&r.evidence)
            );
        }
        s.push('\n');
        for (i, r) in p.rules.iter().enumerate() {
            for n in &r.notes {
                let _ = writeln!(s, "> **rule {}:** {}\n", i + 1, md(n));
            }
            if !r.also_allowed_by.is_empty() {
                let _ = writeln!(
                    s,
                    "> **rule {}:** also allowed by applied policies leash did not write: {}. \
                     leash's rule stays, so that its policies stand alone if those are deleted.\n",
                    i + 1,
                    list(r.also_allowed_by.iter().cloned(), 8)
                );
            }
        }
        names::section(&mut s, &rec.names, p);
        let _ = writeln!(s, "<details><summary>destinations as dialed</summary>\n");
        for (i, r) in p.rules.iter().enumerate() {
            let _ = writeln!(
                s,
                "- rule {}: {}",
                i + 1,
                list(r.evidence.destinations.iter().cloned(), 20)
            );
        }
        let _ = writeln!(s, "\n</details>\n");
    }
    s
}

/// How many ipBlocks a rule has, per family: `1486 (IPv6 1486)`.
fn block_counts(r: &EgressRule) -> String {
    let (v4, v6) = block_families(r);
    let mut parts = Vec::new();
    if v4 > 0 {
        parts.push(format!("IPv4 {v4}"));
    }
    if v6 > 0 {
        parts.push(format!("IPv6 {v6}"));
    }
    format!("{} ({})", v4 + v6, parts.join(", "))
}

/// The number of IPv4 and IPv6 ipBlocks of a rule.
fn block_families(r: &EgressRule) -> (usize, usize) {
    r.peers.iter().fold((0, 0), |(v4, v6), p| match p {
        EgressPeer::Block {
            cidr: ipnet::IpNet::V4(_),
            ..
        } => (v4 + 1, v6),
        EgressPeer::Block {
            cidr: ipnet::IpNet::V6(_),
            ..
        } => (v4, v6 + 1),
        EgressPeer::Pods { .. } => (v4, v6),
    })
}

/// What would bring a rule over its CIDR budget within it: a wider maximum prefix for each
/// family with blocks to join (one block cannot get fewer), more blocks, or an FQDN policy.
fn budget_fixes(r: &EgressRule) -> String {
    let (v4, v6) = block_families(r);
    let mut fixes = Vec::new();
    if v6 > 1 {
        fixes.push("a wider `--max-prefix-v6` (a smaller number)".to_owned());
    }
    if v4 > 1 {
        fixes.push("a wider `--max-prefix-v4` (a smaller number)".to_owned());
    }
    fixes.push(format!("`--max-cidrs {}`", v4 + v6));
    fixes.push(if r.evidence.names.is_empty() {
        "an FQDN policy".to_owned()
    } else {
        "an FQDN policy for its DNS names".to_owned()
    });
    fixes.join(", or ")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::cluster::{LabelSelector, Workload};
    use crate::recommend::Unresolved;

    #[test]
    fn text_and_code_are_escaped_for_markdown() {
        assert_eq!(md("api.stripe.test"), "api.stripe.test");
        assert_eq!(md("_sip._tcp.x"), "\\_sip.\\_tcp.x");
        assert_eq!(
            md("<b>[x](y)*z*`w`&amp;\\"),
            "\\<b\\>\\[x\\](y)\\*z\\*\\`w\\`\\&\u{200b}amp;\\\\"
        );
        assert_eq!(md("a\nb\rc"), "a\u{fffd}b\u{fffd}c");
        assert_eq!(code("shop/web"), "`shop/web`");
        assert_eq!(code("a`b"), "``a`b``");
        assert_eq!(code("`a``"), "``` `a`` ```");
        assert_eq!(code("x\ny"), "`x\u{fffd}y`");
    }

    /// Where every `<` of `report` is: escaped, or one of the report's own tags.
    fn raw_html(report: &str) -> Vec<&str> {
        const OWN: [&str; 5] = ["<br>", "<details>", "</details>", "<summary>", "</summary>"];
        report
            .match_indices('<')
            .filter(|(i, _)| !report[..*i].ends_with('\\'))
            .map(|(i, _)| &report[i..report.len().min(i + 16)])
            .filter(|rest| !OWN.iter().any(|t| rest.starts_with(t)))
            .collect()
    }

    /// Pipes of `line` that separate table cells (not escaped).
    fn cell_pipes(line: &str) -> usize {
        line.match_indices('|')
            .filter(|(i, _)| !line[..*i].ends_with('\\'))
            .count()
    }

    fn two_namespaces() -> (Cluster, Recommendation) {
        let mut cluster = Cluster::default();
        for (ns, name) in [("alpha", "web"), ("beta", "api")] {
            cluster.workloads.push(Workload {
                namespace: ns.into(),
                kind: "Deployment".into(),
                name: name.into(),
                selector: Some(LabelSelector::default()),
            });
        }
        let policy = |w: usize, ns: &str, name: &str| PolicySpec {
            workload: w,
            namespace: ns.into(),
            name: name.into(),
            pod_selector: LabelSelector::default(),
            rules: Vec::new(),
            evidence: RuleEvidence::default(),
        };
        let rec = Recommendation {
            policies: vec![
                policy(0, "alpha", "web-egress"),
                policy(1, "beta", "api-egress"),
            ],
            default_deny_namespaces: vec!["alpha".into(), "beta".into()],
            unattributed_flows: 7,
            isolated: vec![1],
            ..Recommendation::default()
        };
        (cluster, rec)
    }

    #[test]
    fn the_index_links_each_namespace_and_keeps_what_has_none() {
        let (cluster, rec) = two_namespaces();
        let index = index(&cluster, &rec);
        assert!(
            index.contains("| `alpha` | 1 | 0 | new | [alpha/REPORT.md](alpha/REPORT.md) | [alpha/evidence.json](alpha/evidence.json) |"),
            "{index}"
        );
        assert!(index.contains("| `beta` | 1 | 1 | new |"), "{index}");
        assert!(
            index.contains("## In no namespace") && index.contains("7 flow events"),
            "{index}"
        );
        let alpha = namespace_report(&cluster, &rec, "alpha");
        assert!(
            alpha.starts_with("# leash egress recommendation: namespace `alpha`"),
            "{alpha}"
        );
        assert!(
            alpha.contains("`alpha/web-egress`") && !alpha.contains("api"),
            "{alpha}"
        );
        assert!(!alpha.contains("Unattributed"), "{alpha}");
        assert!(namespace_report(&cluster, &rec, "beta").contains("beta/Deployment/api"));
    }

    #[test]
    fn the_changes_section_lists_each_change_with_its_evidence() {
        let (cluster, mut rec) = two_namespaces();
        assert!(report(&cluster, &rec).contains("No previous proposal"));
        rec.has_previous = true;
        assert!(
            report(&cluster, &rec).contains("None: every rule is as in the previous proposal.")
        );
        let at = chrono::DateTime::<chrono::Utc>::from_timestamp(1_764_000_000, 0);
        rec.changes = vec![
            crate::recommend::Change {
                namespace: "alpha".into(),
                policy: "web-egress".into(),
                workload: "Deployment/web".into(),
                kind: crate::recommend::ChangeKind::Widened,
                before: Some("to 10.0.0.0/25 on 443/TCP".into()),
                after: Some("to 10.0.0.0/24 on 443/TCP".into()),
                evidence: RuleEvidence {
                    count: 5,
                    last_seen: at,
                    pods: BTreeSet::from(["web-1".into()]),
                    ..RuleEvidence::default()
                },
                why: "observed in this window, beyond the previous rule".into(),
            },
            crate::recommend::Change {
                namespace: "alpha".into(),
                policy: "web-egress".into(),
                workload: "Deployment/web".into(),
                kind: crate::recommend::ChangeKind::Removed,
                before: Some("to 192.0.2.1/32 on 80/TCP".into()),
                after: None,
                evidence: RuleEvidence::default(),
                why: "last seen 2025-01-01T00:00:00Z, older than --expire-after".into(),
            },
        ];
        let alpha = namespace_report(&cluster, &rec, "alpha");
        assert!(
            alpha.contains("### `alpha/web-egress` for alpha/Deployment/web"),
            "{alpha}"
        );
        assert!(
            alpha.contains("| widened | `to 10.0.0.0/25 on 443/TCP` | `to 10.0.0.0/24 on 443/TCP` | 5 | 2025-11-24T16:00:00Z | web-1 | observed in this window, beyond the previous rule |"),
            "{alpha}"
        );
        assert!(
            alpha.contains("| removed | `to 192.0.2.1/32 on 80/TCP` | - | 0 | - | - | last seen"),
            "{alpha}"
        );
        let beta = namespace_report(&cluster, &rec, "beta");
        assert!(
            beta.contains("None: every rule is as in the previous proposal."),
            "{beta}"
        );
        assert!(index(&cluster, &rec).contains("| `alpha` | 1 | 0 | 2 |"));
    }

    /// Names that bypassed ingest (an old store, a snapshot nobody checked) cannot inject
    /// HTML, links, headings or table cells into REPORT.md.
    #[test]
    fn hostile_names_stay_text_in_the_report() {
        let hostile = "evil|<script>alert(1)</script>\n# Owned";
        let mut cluster = Cluster::default();
        cluster.workloads.push(Workload {
            namespace: "shop".into(),
            kind: "Deployment".into(),
            name: hostile.into(),
            selector: None,
        });
        let evidence = RuleEvidence {
            count: 1,
            names: BTreeSet::from(["<img src=x onerror=alert(1)>".into(), "a|b".into()]),
            pods: BTreeSet::from(["p_1_ [x](http://e.test)".into()]),
            destinations: BTreeSet::from(["203.0.113.1:443/TCP\n| x | y |".into()]),
            ..RuleEvidence::default()
        };
        let rule = EgressRule {
            kind: RuleKind::Workload(hostile.into()),
            peers: vec![EgressPeer::Pods {
                namespace: Some("ns|`x".into()),
                selector: LabelSelector::default(),
            }],
            ports: Vec::new(),
            evidence: evidence.clone(),
            unobserved_addresses: None,
            budget_met: true,
            not_seen_in_window: false,
            also_allowed_by: Vec::new(),
            notes: vec!["note <b>bold</b>".into()],
        };
        let rec = Recommendation {
            policies: vec![PolicySpec {
                workload: 0,
                namespace: "shop".into(),
                name: "evil`x".into(),
                pod_selector: LabelSelector::default(),
                rules: vec![rule],
                evidence,
            }],
            isolated: vec![0],
            unresolved: vec![Unresolved {
                workload: 0,
                destination: "[x](http://e.test)".into(),
                reason: "a *b* <i>".into(),
                count: 1,
            }],
            skipped_input: vec!["skipped <x>\n## Injected".into()],
            ..Recommendation::default()
        };
        let report = report(&cluster, &rec);
        assert_eq!(raw_html(&report), Vec::<&str>::new(), "{report}");
        for line in report.lines() {
            assert!(
                !line.starts_with("# Owned") && !line.starts_with("## Injected"),
                "{line:?}\n{report}"
            );
            // Every table row keeps its number of cells.
            if line.starts_with("| ") {
                let header = if line.contains("| # |") || line.split(" | ").count() > 6 {
                    11
                } else {
                    5
                };
                assert_eq!(cell_pipes(line), header, "{line:?}\n{report}");
            }
        }
        assert!(report.contains("### ``shop/evil`x`` for "), "{report}");
        // Link syntax only escaped.
        assert!(
            report
                .match_indices("](")
                .all(|(i, _)| report[..i].ends_with('\\')),
            "{report}"
        );
    }
}
