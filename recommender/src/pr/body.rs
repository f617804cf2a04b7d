//! The pull request's title, commit message and markdown body: pure functions of what the
//! pull request is about ([`Input`]), deterministic (same input, same bytes).
//!
//! The body, in order: a hidden marker (`<!-- leash:pr group=… -->`, how leash recognises its
//! pull requests), a summary (policies added, changed, removed and unchanged, the rollout
//! phases, the counts of the diff), a loud warning when the change breaks observed traffic,
//! the diff ([`crate::diff::render::markdown`]: breaks, then newly allowed and denied per
//! workload), the evidence of every added or changed rule, the observation window, the
//! trigger and the command that reproduces it. Every value from the cluster or DNS goes
//! through [`escape`] or a code span. Past a provider's limit, [`body`] gives a short body
//! that links the full one, which the caller commits on the branch.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyEgressRule};

use crate::render::escape;
pub use crate::render::escape::{BREAK, escape, plain};

use crate::cnp::ClusterNetworkPolicy;
use crate::guardrails::stage::WorkloadFlows;
use crate::recommend::{ANNOTATION_WORKLOAD, ChangeKind, EgressRule, PolicySpec, RuleEvidence};
use crate::render::{cell, code, plural};
use crate::rollout::{Phase, WorkloadStatus};

/// GitHub's limit on a pull request's body, in characters.
pub const GITHUB_MAX_BODY: usize = 65_536;
/// GitLab's limit on a merge request's description, in characters.
pub const GITLAB_MAX_BODY: usize = 1_048_576;

/// The longest title, in characters.
pub const MAX_TITLE: usize = 120;
/// The longest commit subject line, in characters.
pub const MAX_SUBJECT: usize = 72;
/// Policies named per list of the commit message; the others are counted.
const MAX_LISTED: usize = 10;
/// DNS names and pods shown per rule; the others are counted.
const MAX_NAMES: usize = 5;
/// The longest group name shown in a title or subject, in characters.
const MAX_GROUP: usize = 63;

/// What one pull request is about: a group (a namespace, or `all`) of the new proposal.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The cluster model the proposal was made on.
    pub cluster: &'a crate::cluster::Cluster,
    /// The group: a namespace (`shop`), or `all`.
    pub group: &'a str,
    /// The recommendation, already scoped to the group's namespaces.
    pub recommendation: &'a crate::recommend::Recommendation,
    /// leash's policies of the group on the base branch.
    pub before: &'a [NetworkPolicy],
    /// leash's policies of the group in the new proposal.
    pub after: &'a [NetworkPolicy],
    /// Base proposal (over the applied policies) to the new proposal (over the applied
    /// policies), with the observed flows.
    pub diff: &'a crate::diff::Diff,
    /// The rollout status of the group's workloads.
    pub rollout: &'a [WorkloadStatus],
    /// The observation window.
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The command that reproduces the proposal, free of secrets.
    pub command: &'a str,
    /// What triggered the pull request in `leash serve`, if anything; shown escaped.
    pub trigger: Option<&'a str>,
    /// Whether the change may break observed traffic (`--allow-breaks`).
    pub allow_breaks: bool,
    /// Whether the guardrails' pull request goes first (`--guardrails`): one line says so.
    pub guardrails: bool,
}

/// How one policy changes from the base branch to the new proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PolicyChange {
    /// New in the proposal.
    Added,
    /// In both, with another spec.
    Changed,
    /// On the base branch only.
    Removed,
    /// In both, with the same spec.
    Unchanged,
}

impl PolicyChange {
    /// `added`, `changed`, `removed`, `unchanged`.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyChange::Added => "added",
            PolicyChange::Changed => "changed",
            PolicyChange::Removed => "removed",
            PolicyChange::Unchanged => "unchanged",
        }
    }
}

/// One policy of the base branch or the proposal and how it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyEntry {
    /// The namespace.
    pub namespace: String,
    /// The policy's name.
    pub name: String,
    /// The workload it is for (`Kind/name`, from leash's annotation); `None` for a
    /// namespace's default deny.
    pub workload: Option<String>,
    /// How it changes.
    pub change: PolicyChange,
}

/// Every policy of `before` and `after`, by (namespace, name), and how its spec changes.
/// Metadata (labels, annotations) does not count: nothing changed means no policy spec
/// changed.
pub fn policy_changes(before: &[NetworkPolicy], after: &[NetworkPolicy]) -> Vec<PolicyEntry> {
    type Key = (String, String);
    let key = |p: &NetworkPolicy| -> Key {
        (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        )
    };
    let workload = |p: &NetworkPolicy| {
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION_WORKLOAD))
            .cloned()
    };
    let old: BTreeMap<Key, &NetworkPolicy> = before.iter().map(|p| (key(p), p)).collect();
    let new: BTreeMap<Key, &NetworkPolicy> = after.iter().map(|p| (key(p), p)).collect();
    let keys: BTreeSet<&Key> = old.keys().chain(new.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (change, p) = match (old.get(k), new.get(k)) {
                (None, Some(n)) => (PolicyChange::Added, n),
                (Some(o), None) => (PolicyChange::Removed, o),
                (Some(o), Some(n)) if o.spec == n.spec => (PolicyChange::Unchanged, n),
                (Some(_), Some(n)) => (PolicyChange::Changed, n),
                (None, None) => return None,
            };
            Some(PolicyEntry {
                namespace: k.0.clone(),
                name: k.1.clone(),
                workload: workload(p),
                change,
            })
        })
        .collect()
}

/// How many policies changed each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Policies added.
    pub added: usize,
    /// Policies changed.
    pub changed: usize,
    /// Policies removed.
    pub removed: usize,
    /// Policies unchanged.
    pub unchanged: usize,
}

impl Counts {
    /// The counts of `entries`.
    pub fn of(entries: &[PolicyEntry]) -> Self {
        let mut c = Counts::default();
        for e in entries {
            match e.change {
                PolicyChange::Added => c.added += 1,
                PolicyChange::Changed => c.changed += 1,
                PolicyChange::Removed => c.removed += 1,
                PolicyChange::Unchanged => c.unchanged += 1,
            }
        }
        c
    }

    /// Whether any policy spec changes.
    pub fn any(&self) -> bool {
        self.added + self.changed + self.removed > 0
    }

    /// `1 added, 2 changed`: the nonzero changes, or `no policy change`.
    fn changes_text(&self) -> String {
        let parts: Vec<String> = [
            (self.added, "added"),
            (self.changed, "changed"),
            (self.removed, "removed"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if parts.is_empty() {
            "no policy change".to_owned()
        } else {
            parts.join(", ")
        }
    }
}

/// The hidden first line of a body, by which leash recognises its pull requests.
pub fn marker(group: &str) -> String {
    format!("<!-- leash:pr group={} -->", marker_value(group))
}

/// `namespace shop`, or `all namespaces`, as plain text.
fn scope_plain(group: &str, max_group: usize) -> String {
    if group == "all" {
        "all namespaces".to_owned()
    } else {
        format!("namespace {}", plain(group, max_group))
    }
}

/// `(1 added, 2 changed, 1 break)`.
fn title_counts(input: &Input) -> String {
    let counts = Counts::of(&policy_changes(input.before, input.after));
    let mut s = counts.changes_text();
    let breaks = input.diff.breaks().count();
    if breaks > 0 {
        let _ = write!(s, ", {}", plural(breaks, "break", "breaks"));
    }
    s
}

/// The pull request's title: `leash: egress policies for namespace shop (1 added, 2
/// changed)`. One line of at most [`MAX_TITLE`] characters, names as plain text.
pub fn title(input: &Input) -> String {
    let t = format!(
        "leash: egress policies for {} ({})",
        scope_plain(input.group, MAX_GROUP),
        title_counts(input)
    );
    escape::truncate(&t, MAX_TITLE)
}

/// The commit message: a subject line of at most [`MAX_SUBJECT`] characters, a blank line,
/// and a bounded summary: the policies added, changed and removed (with their workloads), the
/// reachability and observed-traffic counts, and the trigger.
pub fn commit_message(input: &Input) -> String {
    let counts = title_counts(input);
    let fixed = format!("leash: egress policies for  ({counts})")
        .chars()
        .count();
    // The group gets what the rest of the line leaves.
    let room = MAX_SUBJECT
        .saturating_sub(fixed + "namespace ".len())
        .max(8);
    let subject = escape::truncate(
        &format!(
            "leash: egress policies for {} ({counts})",
            scope_plain(input.group, room)
        ),
        MAX_SUBJECT,
    );
    let mut out = format!("{subject}\n\n");
    let entries = policy_changes(input.before, input.after);
    for change in [
        PolicyChange::Added,
        PolicyChange::Changed,
        PolicyChange::Removed,
    ] {
        let these: Vec<&PolicyEntry> = entries.iter().filter(|e| e.change == change).collect();
        if these.is_empty() {
            continue;
        }
        let _ = writeln!(out, "Policies {} ({}):", change.as_str(), these.len());
        for e in these.iter().take(MAX_LISTED) {
            let workload = e
                .workload
                .as_deref()
                .map(|w| format!(" ({})", plain(w, 80)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "- {}/{}{workload}",
                plain(&e.namespace, MAX_GROUP),
                plain(&e.name, 80)
            );
        }
        if these.len() > MAX_LISTED {
            let _ = writeln!(out, "- and {} more", these.len() - MAX_LISTED);
        }
    }
    let s = reach_counts(input.diff);
    let _ = writeln!(
        out,
        "Reachability: {} newly allowed, {} newly denied.",
        s.0, s.1
    );
    if input.diff.observed.is_some() {
        let (breaks, allowed) = flow_counts(input.diff);
        let _ = writeln!(
            out,
            "Observed traffic: {}, {} newly allowed.",
            plural(breaks, "break", "breaks"),
            plural(allowed, "flow", "flows")
        );
    }
    if let Some(t) = input.trigger {
        let _ = writeln!(out, "Triggered by: {}", plain(t, 200));
    }
    out
}

/// (newly allowed, newly denied) reachability changes.
fn reach_counts(diff: &crate::diff::Diff) -> (usize, usize) {
    let allowed = diff
        .reachability
        .iter()
        .filter(|c| c.change == crate::diff::Change::NewlyAllowed)
        .count();
    (allowed, diff.reachability.len() - allowed)
}

/// (breaks, observed flows newly allowed).
fn flow_counts(diff: &crate::diff::Diff) -> (usize, usize) {
    let breaks = diff.breaks().count();
    (breaks, diff.flow_changes().len() - breaks)
}

/// The body within `max_chars` characters: the full body ([`full_body`]) when it fits, else a
/// short one (the marker, the summary's counts, the breaks, the trigger, and a note on the
/// limit linking `full_report_url`, the full body the caller commits on the branch). Never cut
/// inside a construct: when even the short body is too long, whole lines are left out, the
/// intro and summary first, then the trigger, the warning, the note and the marker last.
pub fn body(input: &Input, max_chars: usize, full_report_url: Option<&str>) -> String {
    let full = full_body(input);
    if full.chars().count() <= max_chars {
        return full;
    }
    short_body(input, max_chars, full_report_url)
}

/// The short body of [`body`].
fn short_body(input: &Input, max_chars: usize, full_report_url: Option<&str>) -> String {
    let where_ = match full_report_url {
        Some(url) => format!("[the full report]({})", link_destination(url)),
        None => "the full report committed on this branch".to_owned(),
    };
    let note = format!(
        "The full body is longer than this provider's limit ({max_chars} characters): read \
         {where_}."
    );
    // Blocks (priority, whether it goes whole, lines): past the limit, lines are left out from
    // the end of the lowest-priority block first, whole lines only (the warning's quote all at
    // once), so every construct left stays intact.
    let mut blocks: Vec<(u8, bool, Vec<String>)> = vec![
        (6, false, vec![marker(input.group)]),
        (1, false, vec![intro(input)]),
        (2, false, summary_lines(input)),
    ];
    let breaks = input.diff.breaks().count();
    if breaks > 0 {
        let lines = warning(breaks, input.allow_breaks)
            .lines()
            .map(str::to_owned)
            .collect();
        blocks.push((4, true, lines));
    }
    if let Some(t) = input.trigger {
        blocks.push((3, false, vec![format!("Triggered by: {}", escape(t))]));
    }
    blocks.push((5, false, vec![note]));
    fit(blocks, max_chars)
}

/// Blocks (priority, whether it goes whole, lines) within `max_chars`: past the limit, lines
/// are left out from the end of the lowest-priority block first, whole lines only (a whole
/// block all at once), so every construct left stays intact.
fn fit(mut blocks: Vec<(u8, bool, Vec<String>)>, max_chars: usize) -> String {
    let text = |blocks: &[(u8, bool, Vec<String>)]| {
        let parts: Vec<String> = blocks
            .iter()
            .filter(|(_, _, lines)| !lines.is_empty())
            .map(|(_, _, lines)| lines.join("\n"))
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!("{}\n", parts.join("\n\n"))
        }
    };
    let mut out = text(&blocks);
    while out.chars().count() > max_chars {
        let Some((_, whole, lines)) = blocks
            .iter_mut()
            .filter(|(_, _, lines)| !lines.is_empty())
            .min_by_key(|(priority, _, _)| *priority)
        else {
            return String::new();
        };
        if *whole {
            lines.clear();
        } else {
            lines.pop();
        }
        out = text(&blocks);
    }
    out
}

/// A URL as a markdown link destination: in angle brackets, with what would end it encoded.
fn link_destination(url: &str) -> String {
    let mut s = String::from("<");
    for c in url.chars() {
        match c {
            '<' => s.push_str("%3C"),
            '>' => s.push_str("%3E"),
            ' ' => s.push_str("%20"),
            '\\' => s.push_str("%5C"),
            c if escape::is_replaced(c) => {}
            c => s.push(c),
        }
    }
    s.push('>');
    s
}

/// The first paragraph: what the pull request proposes.
fn intro(input: &Input) -> String {
    let scope = if input.group == "all" {
        "all namespaces".to_owned()
    } else {
        format!("namespace {}", code(input.group))
    };
    let mut s = format!(
        "**leash** proposes the egress NetworkPolicies of {scope}, from the traffic it observed."
    );
    if input.guardrails {
        s.push(' ');
        s.push_str(STAGE_TWO);
    }
    s
}

/// The line of a namespace's body with `--guardrails`.
pub const STAGE_TWO: &str = "Stage 2 of the rollout: the cluster guardrails pull request \
    goes first (in audit, then enforced), then each namespace's like this one.";

/// The summary's list: policies, rollout phases, diff counts.
fn summary_lines(input: &Input) -> Vec<String> {
    let c = Counts::of(&policy_changes(input.before, input.after));
    let mut out = vec![format!(
        "- Policies: {} added, {} changed, {} removed, {} unchanged",
        c.added, c.changed, c.removed, c.unchanged
    )];
    let phases: Vec<String> = crate::rollout::counts(input.rollout)
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(p, n)| format!("{n} {}", p.as_str()))
        .collect();
    out.push(format!(
        "- Rollout phases of {}: {}",
        plural(input.rollout.len(), "workload", "workloads"),
        if phases.is_empty() {
            "none".to_owned()
        } else {
            phases.join(", ")
        }
    ));
    let (allowed, denied) = reach_counts(input.diff);
    let mut diff = format!("- Reachability: {allowed} newly allowed, {denied} newly denied");
    match &input.diff.observed {
        None => diff.push_str("; observed traffic not given, breaks not checked"),
        Some(_) => {
            let (breaks, flows) = flow_counts(input.diff);
            let b = plural(breaks, "break", "breaks");
            let b = if breaks > 0 { format!("**{b}**") } else { b };
            let _ = write!(
                diff,
                "; observed traffic: {b}, {} newly allowed",
                plural(flows, "flow", "flows")
            );
        }
    }
    out.push(diff);
    out
}

/// The loud warning of a change that breaks observed traffic, as a quote.
fn warning(breaks: usize, allow_breaks: bool) -> String {
    let what = format!(
        "> [!CAUTION]\n> **This change breaks {}**: traffic seen in the observation window is \
         allowed by the base branch's policies and denied by these.",
        plural(breaks, "observed flow", "observed flows")
    );
    if allow_breaks {
        format!(
            "{what} It was opened with `--allow-breaks`: merge it only if these flows must \
             stop.\n"
        )
    } else {
        format!("{what} leash opens such a change only with `--allow-breaks`: do not merge it.\n")
    }
}

/// The unbounded body, which the caller commits on the branch when it is over the limit.
pub fn full_body(input: &Input) -> String {
    let mut out = marker(input.group);
    out.push('\n');
    out.push_str(&intro(input));
    out.push_str("\n\n## Summary\n\n");
    for l in summary_lines(input) {
        out.push_str(&l);
        out.push('\n');
    }
    let entries = policy_changes(input.before, input.after);
    policies_table(&mut out, &entries);
    rollout_table(&mut out, input.rollout);

    let breaks = input.diff.breaks().count();
    if breaks > 0 {
        out.push('\n');
        out.push_str(&warning(breaks, input.allow_breaks));
    }
    out.push('\n');
    out.push_str(&crate::diff::render::markdown(input.diff));

    evidence_section(&mut out, input, &entries);

    closing(&mut out, input.window, input.trigger, input.command);
    out
}

/// The policies that change, one row each.
fn policies_table(out: &mut String, entries: &[PolicyEntry]) {
    let changed: Vec<&PolicyEntry> = entries
        .iter()
        .filter(|e| e.change != PolicyChange::Unchanged)
        .collect();
    if changed.is_empty() {
        return;
    }
    out.push_str("\n| Policy | Workload | Change |\n|---|---|---|\n");
    for e in changed {
        let workload = e.workload.as_deref().map_or_else(
            || "default deny of the namespace".to_owned(),
            |w| cell(&code(w)),
        );
        let _ = writeln!(
            out,
            "| {} | {workload} | {} |",
            cell(&code(&format!("{}/{}", e.namespace, e.name))),
            e.change.as_str()
        );
    }
}

/// Every workload's rollout phase and why, one row each, in phase order.
fn rollout_table(out: &mut String, statuses: &[WorkloadStatus]) {
    if statuses.is_empty() {
        return;
    }
    let mut rows: Vec<&WorkloadStatus> = statuses.iter().collect();
    let rank = |p: Phase| {
        Phase::ALL
            .iter()
            .position(|&q| q == p)
            .unwrap_or(usize::MAX)
    };
    rows.sort_by(|a, b| {
        (rank(a.phase), &a.namespace, &a.workload).cmp(&(rank(b.phase), &b.namespace, &b.workload))
    });
    out.push_str("\n| Workload | Phase | Why |\n|---|---|---|\n");
    for s in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            cell(&code(&format!("{}/{}", s.namespace, s.workload))),
            s.phase.as_str(),
            escape(&s.why())
        );
    }
}

/// The evidence of every added or changed rule of the proposal's added or changed policies,
/// and the rules the changed ones dropped.
fn evidence_section(out: &mut String, input: &Input, entries: &[PolicyEntry]) {
    out.push_str("\n## Evidence\n");
    let changed: BTreeMap<(&str, &str), PolicyChange> = entries
        .iter()
        .filter(|e| matches!(e.change, PolicyChange::Added | PolicyChange::Changed))
        .map(|e| ((e.namespace.as_str(), e.name.as_str()), e.change))
        .collect();
    let before_rules = |ns: &str, name: &str| -> Vec<&NetworkPolicyEgressRule> {
        input
            .before
            .iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && p.metadata.name.as_deref() == Some(name)
            })
            .filter_map(|p| p.spec.as_ref()?.egress.as_ref())
            .flatten()
            .collect()
    };
    let mut any = false;
    let mut policies: Vec<&PolicySpec> = input.recommendation.policies.iter().collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for p in policies {
        let Some(&change) = changed.get(&(p.namespace.as_str(), p.name.as_str())) else {
            continue;
        };
        // The rules as written: rule i of the spec is egress rule i of the object.
        let object = crate::recommend::to_network_policy(input.cluster, p);
        let written: Vec<NetworkPolicyEgressRule> =
            object.spec.and_then(|s| s.egress).unwrap_or_default();
        let old = before_rules(&p.namespace, &p.name);
        let new_rules: Vec<&EgressRule> = p
            .rules
            .iter()
            .zip(written.iter())
            .filter(|(_, w)| !old.contains(w))
            .map(|(r, _)| r)
            .collect();
        let removed: Vec<&crate::recommend::Change> = input
            .recommendation
            .changes
            .iter()
            .filter(|c| {
                c.kind == ChangeKind::Removed && c.namespace == p.namespace && c.policy == p.name
            })
            .collect();
        if new_rules.is_empty() && removed.is_empty() {
            continue;
        }
        any = true;
        let workload = input
            .cluster
            .workloads
            .get(p.workload)
            .map(|w| crate::json::workload(&w.kind, &w.name))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "\n### {} ({}), {}",
            code(&format!("{}/{}", p.namespace, p.name)),
            code(&workload),
            change.as_str()
        );
        if !new_rules.is_empty() {
            out.push_str(
                "\n| Rule | Events | First seen | Last seen | DNS names | Pods |\n\
                 |---|---|---|---|---|---|\n",
            );
            for r in new_rules {
                let _ = writeln!(
                    out,
                    "| {} | {} |",
                    cell(&code(&r.key())),
                    evidence_cells(&r.evidence)
                );
            }
        }
        if !removed.is_empty() {
            out.push_str("\nRules removed:\n\n");
            for c in removed {
                let _ = writeln!(
                    out,
                    "- {}: {}",
                    code(c.before.as_deref().unwrap_or("-")),
                    escape(&c.why)
                );
            }
        }
    }
    if !any {
        out.push_str("\nNo rule added or changed.\n");
    }
}

/// Events, first and last seen, DNS names and pods of a rule, as table cells.
fn evidence_cells(e: &RuleEvidence) -> String {
    let time =
        |t: Option<DateTime<Utc>>| t.map_or_else(|| "-".to_owned(), leash_records::time::rfc3339);
    format!(
        "{} | {} | {} | {} | {}",
        e.count,
        time(e.first_seen),
        time(e.last_seen),
        bounded(&e.names, 0),
        bounded(&e.pods, e.more_pods),
    )
}

/// At most [`MAX_NAMES`] items, escaped, then `(+N more)` for the others and `unnamed`.
fn bounded(items: &BTreeSet<String>, unnamed: u64) -> String {
    if items.is_empty() && unnamed == 0 {
        return "-".to_owned();
    }
    let mut s = items
        .iter()
        .take(MAX_NAMES)
        .map(|i| escape(i))
        .collect::<Vec<_>>()
        .join(", ");
    let more = u64::try_from(items.len().saturating_sub(MAX_NAMES))
        .unwrap_or(u64::MAX)
        .saturating_add(unnamed);
    if more > 0 {
        if !s.is_empty() {
            s.push(' ');
        }
        let at_least = if unnamed > 0 { "at least " } else { "" };
        let _ = write!(s, "(+{at_least}{more} more)");
    }
    s
}

/// `command` as a fenced code block: the fence is longer than any run of backticks inside,
/// so no line of it closes the block; control characters other than line breaks become
/// U+FFFD.
fn code_block(command: &str) -> String {
    let text: String = command
        .chars()
        .map(|c| {
            if c != '\n' && escape::is_replaced(c) {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect();
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest.max(2) + 1);
    format!("{fence}sh\n{}\n{fence}\n", text.trim_end_matches('\n'))
}

/// The group in the marker comment, which must stay one HTML comment: ASCII letters, digits,
/// `.`, `_` and `-` as they are, every other byte as `%XX`.
pub fn marker_value(group: &str) -> String {
    let mut out = String::with_capacity(group.len());
    for b in group.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the guardrails' pull request is about ([`super::guardrails`]).
#[derive(Debug, Clone, Copy)]
pub struct GuardrailsInput<'a> {
    /// The proposed guardrails.
    pub guardrails: &'a crate::guardrails::Guardrails,
    /// leash's guardrails on the base branch.
    pub before: &'a [ClusterNetworkPolicy],
    /// The workloads whose observed traffic the proposal would break
    /// ([`crate::guardrails::stage::Stage::breaks`]).
    pub breaks: &'a [WorkloadFlows],
    /// The observation window.
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    /// The command that reproduces the proposal, free of secrets.
    pub command: &'a str,
    /// What triggered the pull request in `leash serve`, if anything; shown escaped.
    pub trigger: Option<&'a str>,
    /// Whether the change may break observed traffic (`--allow-breaks`).
    pub allow_breaks: bool,
}

/// How each guardrail changes from the base branch to the proposal, by name (canonical
/// texts compared).
pub fn guardrail_changes(
    before: &[ClusterNetworkPolicy],
    after: &[ClusterNetworkPolicy],
) -> Vec<(String, PolicyChange)> {
    let text = |ps: &[ClusterNetworkPolicy]| -> BTreeMap<String, String> {
        ps.iter()
            .map(|p| {
                (
                    p.name().to_owned(),
                    crate::guardrails::object_yaml(p).unwrap_or_default(),
                )
            })
            .collect()
    };
    let (old, new) = (text(before), text(after));
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    names
        .into_iter()
        .map(|n| {
            let change = match (old.get(n), new.get(n)) {
                (None, _) => PolicyChange::Added,
                (Some(_), None) => PolicyChange::Removed,
                (Some(o), Some(n)) if o == n => PolicyChange::Unchanged,
                _ => PolicyChange::Changed,
            };
            (n.clone(), change)
        })
        .collect()
}

/// `6 ClusterNetworkPolicies`, and the breaks.
fn guardrails_counts(input: &GuardrailsInput) -> String {
    let mut s = plural(
        input.guardrails.policies.len(),
        "ClusterNetworkPolicy",
        "ClusterNetworkPolicies",
    );
    if !input.breaks.is_empty() {
        let _ = write!(
            s,
            ", {} broken",
            plural(input.breaks.len(), "workload", "workloads")
        );
    }
    s
}

/// The guardrails' pull request title: `leash: cluster guardrails (6 ClusterNetworkPolicies)`.
pub fn guardrails_title(input: &GuardrailsInput) -> String {
    escape::truncate(
        &format!("leash: cluster guardrails ({})", guardrails_counts(input)),
        MAX_TITLE,
    )
}

/// The guardrails' commit message: the subject, the guardrails added, changed and removed,
/// the deferred namespaces, the breaks and the trigger.
pub fn guardrails_commit_message(input: &GuardrailsInput) -> String {
    let subject = escape::truncate(
        &format!("leash: cluster guardrails ({})", guardrails_counts(input)),
        MAX_SUBJECT,
    );
    let mut out = format!("{subject}\n\n");
    let changes = guardrail_changes(input.before, &input.guardrails.policies);
    for change in [
        PolicyChange::Added,
        PolicyChange::Changed,
        PolicyChange::Removed,
    ] {
        let these: Vec<&String> = changes
            .iter()
            .filter(|(_, c)| *c == change)
            .map(|(n, _)| n)
            .collect();
        if these.is_empty() {
            continue;
        }
        let _ = writeln!(out, "Guardrails {} ({}):", change.as_str(), these.len());
        for n in these.iter().take(MAX_LISTED) {
            let _ = writeln!(out, "- {}", plain(n, 80));
        }
        if these.len() > MAX_LISTED {
            let _ = writeln!(out, "- and {} more", these.len() - MAX_LISTED);
        }
    }
    let deferred = &input.guardrails.deferred;
    if !deferred.is_empty() {
        let shown: Vec<String> = deferred
            .keys()
            .take(MAX_LISTED)
            .map(|ns| plain(ns, MAX_GROUP))
            .collect();
        let more = deferred.len().saturating_sub(MAX_LISTED);
        let _ = writeln!(
            out,
            "Deferred by the Baseline (egress not locked down yet): {}{}.",
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(
        out,
        "Observed traffic: {} broken.",
        plural(input.breaks.len(), "workload", "workloads")
    );
    if let Some(t) = input.trigger {
        let _ = writeln!(out, "Triggered by: {}", plain(t, 200));
    }
    out
}

/// The guardrails body's first paragraph.
fn guardrails_intro(input: &GuardrailsInput) -> String {
    format!(
        "**leash** proposes the cluster guardrails: {} (`policy.networking.k8s.io/v1alpha2`), \
         the first stage of a cluster-wide rollout, before every namespace's NetworkPolicies.",
        plural(
            input.guardrails.policies.len(),
            "ClusterNetworkPolicy",
            "ClusterNetworkPolicies"
        )
    )
}

/// The guardrails body's summary list.
fn guardrails_summary(input: &GuardrailsInput) -> Vec<String> {
    let mut c = Counts::default();
    for (_, change) in guardrail_changes(input.before, &input.guardrails.policies) {
        match change {
            PolicyChange::Added => c.added += 1,
            PolicyChange::Changed => c.changed += 1,
            PolicyChange::Removed => c.removed += 1,
            PolicyChange::Unchanged => c.unchanged += 1,
        }
    }
    let mut out = vec![format!(
        "- Guardrails: {} added, {} changed, {} removed, {} unchanged",
        c.added, c.changed, c.removed, c.unchanged
    )];
    out.push(if input.breaks.is_empty() {
        "- Observed traffic: breaks no workload's observed traffic (over the applied policies \
         and the base branch's proposal)"
            .to_owned()
    } else {
        format!(
            "- Observed traffic: **breaks the observed traffic of {}**",
            plural(input.breaks.len(), "workload", "workloads")
        )
    });
    let deferred = &input.guardrails.deferred;
    out.push(if deferred.is_empty() {
        "- Deferred namespaces: none, the Baseline default deny covers every namespace but the \
         exempt ones"
            .to_owned()
    } else {
        format!(
            "- Deferred namespaces: {} (no NetworkPolicy locks their egress down yet; they join \
             the Baseline once their pull requests are merged and applied)",
            deferred
                .keys()
                .map(|ns| code(ns))
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    out
}

/// The loud warning and the list of every workload the guardrails would break.
fn guardrails_breaks(input: &GuardrailsInput) -> String {
    let what = format!(
        "> [!CAUTION]\n> **These guardrails break the observed traffic of {}**: traffic seen in \
         the observation window is allowed by the base branch's state and denied by these.",
        plural(input.breaks.len(), "workload", "workloads")
    );
    let mut out = if input.allow_breaks {
        format!(
            "{what} It was opened with `--allow-breaks`: merge it only if these flows must \
             stop.\n"
        )
    } else {
        format!("{what} leash opens such a change only with `--allow-breaks`: do not merge it.\n")
    };
    out.push_str(
        "\n| Workload | Destination | Events | Last seen | DNS names |\n|---|---|---|---|---|\n",
    );
    for w in input.breaks {
        for f in &w.flows {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                cell(&code(&format!("{}/{}", w.namespace, w.workload))),
                cell(&code(&f.destination())),
                f.events,
                leash_records::time::rfc3339(f.last_seen),
                bounded(&f.names.iter().cloned().collect(), 0),
            );
        }
    }
    out
}

/// The guardrails' body within `max_chars`: the whole one when it fits, else the marker, the
/// summary, the breaks and a note linking the full report (`cluster/REPORT.md` on the branch,
/// at `report_url`).
pub fn guardrails_body(
    input: &GuardrailsInput,
    max_chars: usize,
    report_url: Option<&str>,
) -> String {
    let full = guardrails_full_body(input);
    if full.chars().count() <= max_chars {
        return full;
    }
    let where_ = match report_url {
        Some(url) => format!("[the guardrails' report]({})", link_destination(url)),
        None => "the guardrails' report committed on this branch".to_owned(),
    };
    let mut blocks: Vec<(u8, bool, Vec<String>)> = vec![
        (6, false, vec![marker(super::guardrails::GROUP)]),
        (1, false, vec![guardrails_intro(input)]),
        (2, false, guardrails_summary(input)),
    ];
    if !input.breaks.is_empty() {
        blocks.push((
            4,
            true,
            guardrails_breaks(input)
                .lines()
                .map(str::to_owned)
                .collect(),
        ));
    }
    if let Some(t) = input.trigger {
        blocks.push((3, false, vec![format!("Triggered by: {}", escape(t))]));
    }
    blocks.push((
        5,
        false,
        vec![format!(
            "The full body is longer than this provider's limit ({max_chars} characters): \
             read {where_}."
        )],
    ));
    fit(blocks, max_chars)
}

/// The guardrails' unbounded body: the marker, the intro, the summary, the breaks, the
/// guardrails' report ([`crate::guardrails::report_md`]: the policies, the rollout order, the
/// deferred namespaces and every justification), the window, the trigger, the command.
pub fn guardrails_full_body(input: &GuardrailsInput) -> String {
    let mut out = marker(super::guardrails::GROUP);
    out.push('\n');
    out.push_str(&guardrails_intro(input));
    out.push_str("\n\n## Summary\n\n");
    for l in guardrails_summary(input) {
        out.push_str(&l);
        out.push('\n');
    }
    let changed: Vec<(String, PolicyChange)> =
        guardrail_changes(input.before, &input.guardrails.policies)
            .into_iter()
            .filter(|(_, c)| *c != PolicyChange::Unchanged)
            .collect();
    if !changed.is_empty() {
        out.push_str("\n| Guardrail | Change |\n|---|---|\n");
        for (name, change) in changed {
            let _ = writeln!(out, "| {} | {} |", cell(&code(&name)), change.as_str());
        }
    }
    if !input.breaks.is_empty() {
        out.push('\n');
        out.push_str(&guardrails_breaks(input));
    }
    // The report as `leash guardrails -o` writes it, under this body's title.
    let report = crate::guardrails::report_md(input.guardrails);
    let report = report
        .strip_prefix("# leash guardrails\n")
        .unwrap_or(&report);
    out.push_str("\n## The guardrails\n");
    out.push_str(report);
    closing(&mut out, input.window, input.trigger, input.command);
    out
}

/// The closing sections of every body: the observation window, the trigger, and the command
/// that reproduces the run.
fn closing(
    out: &mut String,
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    trigger: Option<&str>,
    command: &str,
) {
    out.push_str("\n## Observation window\n\n");
    match window {
        Some((from, to)) => {
            let _ = writeln!(
                out,
                "From {} to {} ({}).",
                leash_records::time::rfc3339(from),
                leash_records::time::rfc3339(to),
                crate::render::human_duration(to - from)
            );
        }
        None => out.push_str("No observation backs this proposal.\n"),
    }
    if let Some(t) = trigger {
        let _ = writeln!(out, "\n## Trigger\n\n{}", escape(t));
    }
    out.push_str("\n## Reproduce\n\n");
    out.push_str(&code_block(command));
}
