//! The pull request's title, commit message and body (`leash::pr::body`) on fixtures built
//! through production code: a base proposal and a new one from `recommend`, their diff from
//! `diff::diff`, the rollout phases from `rollout::phases`. What a reviewer reads must count
//! right, warn about breaks, show the evidence of what changed only, stay within the limit,
//! and never let a name from the cluster or DNS become markup.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use leash::cluster::Cluster;
use leash::diff::Diff;
use leash::eval::PolicySet;
use leash::observations::Observations;
use leash::pr::body::{
    self, BREAK, GITHUB_MAX_BODY, Input, MAX_SUBJECT, MAX_TITLE, PolicyChange, escape,
};
use leash::recommend::{self, Recommendation};
use leash::rollout::{self, WorkloadStatus};
use leash_records::Record;
use proptest::prelude::*;
use support::recommend::{Fx, deployment_pod as pod, deployments, flow};

/// A DNS name a tenant controls, written to become a link, an image, HTML, a mention and a
/// heading.
const HOSTILE: &str = "x](http://evil)<img src=x>@team\n# injected";

const COMMAND: &str =
    "leash pr --cluster snap.json --store leash.db --repo https://git.example/p.git";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("RFC 3339")
        .with_timezone(&Utc)
}

/// shop: four Deployments.
fn shop() -> Fx {
    deployments("shop", &["api", "web", "cart", "fresh"])
}

/// The base branch's observations: api, web and cart each dial one address on 443.
fn base_records() -> Vec<Record> {
    ["api", "web", "cart"]
        .iter()
        .enumerate()
        .map(|(i, w)| {
            flow(
                "shop",
                &pod(w),
                "TCP",
                &format!("203.0.113.{}", i + 1),
                443,
                4,
                &[],
            )
        })
        .collect()
}

/// The new observations: web gains a dependency (on a name `web_name`), and fresh starts
/// dialing out.
fn new_records(web_name: &str) -> Vec<Record> {
    let mut out = base_records();
    out.push(flow(
        "shop",
        &pod("web"),
        "TCP",
        "198.51.100.7",
        8443,
        3,
        &[web_name],
    ));
    out.push(flow(
        "shop",
        &pod("fresh"),
        "TCP",
        "203.0.113.9",
        443,
        2,
        &["fresh.example.com"],
    ));
    out
}

fn observations(cluster: &Cluster, records: &[Record]) -> Observations {
    let mut obs = Observations::default();
    for r in records {
        obs.add(r, cluster).expect("records name fixture pods");
    }
    obs
}

/// Everything one pull request is built from.
struct Case {
    cluster: Cluster,
    rec: Recommendation,
    before: Vec<NetworkPolicy>,
    after: Vec<NetworkPolicy>,
    diff: Diff,
    rollout: Vec<WorkloadStatus>,
}

impl Case {
    /// The base proposal from `base`, the new one from `proposal`, compared on the traffic
    /// `observed`.
    fn new(base: &[Record], proposal: &[Record], observed: &[Record]) -> Case {
        let cluster = shop().cluster();
        let opts = recommend::Options {
            namespaces: BTreeSet::from(["shop".to_owned()]),
            ..recommend::Options::default()
        };
        let before = recommend::all_policies(
            &cluster,
            &recommend::recommend(&cluster, &observations(&cluster, base), &opts),
        );
        let rec = recommend::recommend(&cluster, &observations(&cluster, proposal), &opts);
        let after = recommend::all_policies(&cluster, &rec);
        let from = leash::policy_state::compiled(&[], &before).expect("base compiles");
        let to = leash::policy_state::compiled(&[], &after).expect("proposal compiles");
        let obs = observations(&cluster, observed);
        let diff = leash::diff::diff(
            &cluster,
            ("base", &from),
            ("proposal", &to),
            Some(&obs),
            &leash::diff::Options {
                namespaces: BTreeSet::from(["shop".to_owned()]),
            },
        );
        let rollout = rollout::phases(
            &cluster,
            &obs,
            &rollout::Policies {
                applied: &[],
                applied_set: &PolicySet::default(),
                proposed: Some(&to),
            },
            &rollout::Options {
                min_observation: Duration::hours(24),
                now: at("2026-11-27T00:00:00Z"),
                namespaces: BTreeSet::from(["shop".to_owned()]),
            },
        );
        Case {
            cluster,
            rec,
            before,
            after,
            diff,
            rollout,
        }
    }

    /// web gains a dependency on `web_name`, fresh starts dialing out: no break.
    fn growing(web_name: &str) -> Case {
        let new = new_records(web_name);
        Case::new(&base_records(), &new, &new)
    }

    /// The proposal forgets api's flow, which is still observed: a break.
    fn breaking() -> Case {
        let observed = new_records("pay.example.com");
        let proposal: Vec<Record> = observed
            .iter()
            .filter(|r| !matches!(r, Record::Flow(f) if f.pod.as_ref().is_some_and(|p| p.name == pod("api"))))
            .cloned()
            .collect();
        Case::new(&base_records(), &proposal, &observed)
    }

    fn input(&self) -> Input<'_> {
        Input {
            cluster: &self.cluster,
            group: "shop",
            recommendation: &self.rec,
            before: &self.before,
            after: &self.after,
            diff: &self.diff,
            rollout: &self.rollout,
            window: Some((at("2026-11-20T00:00:00Z"), at("2026-11-24T00:00:00Z"))),
            command: COMMAND,
            trigger: None,
            allow_breaks: false,
            guardrails: false,
        }
    }
}

/// The text between `from` and the next line starting with `until`.
fn section<'a>(text: &'a str, from: &str, until: &str) -> &'a str {
    let start = text
        .find(from)
        .unwrap_or_else(|| panic!("{from:?} in {text}"));
    let rest = &text[start..];
    let end = rest[from.len()..]
        .find(&format!("\n{until}"))
        .map_or(rest.len(), |e| e + from.len());
    &rest[..end]
}

#[test]
fn summary_counts_policies_added_changed_and_unchanged() {
    let case = Case::growing("pay.example.com");
    let input = case.input();
    let entries: Vec<(String, PolicyChange)> = body::policy_changes(&case.before, &case.after)
        .into_iter()
        .map(|e| (e.name, e.change))
        .collect();
    assert_eq!(
        entries,
        [
            ("api-egress".to_owned(), PolicyChange::Unchanged),
            ("cart-egress".to_owned(), PolicyChange::Unchanged),
            ("default-deny-egress".to_owned(), PolicyChange::Unchanged),
            ("fresh-egress".to_owned(), PolicyChange::Added),
            ("web-egress".to_owned(), PolicyChange::Changed),
        ]
    );

    let full = body::full_body(&input);
    assert!(full.starts_with("<!-- leash:pr group=shop -->\n"), "{full}");
    assert!(
        full.contains("\n- Policies: 1 added, 1 changed, 0 removed, 3 unchanged\n"),
        "{full}"
    );
    assert!(
        full.contains(
            "| `shop/fresh-egress` | `Deployment/fresh` | added |\n\
             | `shop/web-egress` | `Deployment/web` | changed |\n"
        ),
        "{full}"
    );
    // The rollout phases, counted from the same statuses.
    let phases: Vec<String> = rollout::counts(&case.rollout)
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(p, n)| format!("{n} {}", p.as_str()))
        .collect();
    assert!(!phases.is_empty());
    assert!(
        full.contains(&format!(
            "\n- Rollout phases of 4 workloads: {}\n",
            phases.join(", ")
        )),
        "{full}"
    );
    // Every workload's phase has its row.
    for s in &case.rollout {
        assert!(
            full.contains(&format!("| `shop/{}` | {} |", s.workload, s.phase.as_str())),
            "{full}"
        );
    }
    assert!(
        full.contains("\n- Reachability: 2 newly allowed, 0 newly denied; observed traffic: 0 breaks, 2 flows newly allowed\n"),
        "{full}"
    );
    assert!(!full.contains("[!CAUTION]"), "{full}");
    assert!(
        full.contains("\n## Observation window\n\nFrom 2026-11-20T00:00:00Z to 2026-11-24T00:00:00Z (4d 0h).\n"),
        "{full}"
    );
    assert!(
        full.ends_with(&format!("\n## Reproduce\n\n```sh\n{COMMAND}\n```\n")),
        "{full}"
    );

    assert_eq!(
        body::title(&input),
        "leash: egress policies for namespace shop (1 added, 1 changed)"
    );
    let msg = body::commit_message(&input);
    let mut lines = msg.lines();
    assert_eq!(
        lines.next(),
        Some("leash: egress policies for namespace shop (1 added, 1 changed)")
    );
    assert_eq!(lines.next(), Some(""));
    assert!(
        msg.contains(
            "Policies added (1):\n- shop/fresh-egress (Deployment/fresh)\n\
             Policies changed (1):\n- shop/web-egress (Deployment/web)\n"
        ),
        "{msg}"
    );
    assert!(!msg.contains("Policies removed"), "{msg}");
    assert!(
        msg.contains("Observed traffic: 0 breaks, 2 flows newly allowed.\n"),
        "{msg}"
    );
}

#[test]
fn nothing_changed_counts_as_no_change() {
    let case = Case::new(&base_records(), &base_records(), &base_records());
    let counts = body::Counts::of(&body::policy_changes(&case.before, &case.after));
    assert!(!counts.any());
    assert_eq!(counts.unchanged, 4);
    assert_eq!(
        body::title(&case.input()),
        "leash: egress policies for namespace shop (no policy change)"
    );
    let full = body::full_body(&case.input());
    assert!(
        full.contains("\n## Evidence\n\nNo rule added or changed.\n"),
        "{full}"
    );
}

#[test]
fn breaks_are_listed_and_warned_about() {
    let case = Case::breaking();
    let mut input = case.input();
    assert_eq!(case.diff.breaks().count(), 1);
    let full = body::full_body(&input);
    let warning = "> [!CAUTION]\n> **This change breaks 1 observed flow**";
    let w = full.find(warning).unwrap_or_else(|| panic!("{full}"));
    assert!(full[w..].contains("do not merge it"), "{full}");
    // The warning first, then the breaks, then the changes per workload.
    let breaks = full.find("### Breaks").expect("breaks section");
    let row = full
        .find("| `shop/Deployment/api` | `api-5c9f7d-p0` | `203.0.113.1:443` | TCP |")
        .unwrap_or_else(|| panic!("{full}"));
    let changes = full.find("### Changes per workload").expect("changes");
    assert!(w < breaks && breaks < row && row < changes, "{full}");
    assert!(full.contains("observed traffic: **1 break**"), "{full}");
    assert!(
        body::title(&input).ends_with(", 1 break)"),
        "{}",
        body::title(&input)
    );
    assert!(
        body::commit_message(&input).contains("Observed traffic: 1 break,"),
        "{}",
        body::commit_message(&input)
    );

    input.allow_breaks = true;
    let allowed = body::full_body(&input);
    assert!(allowed.contains(warning), "{allowed}");
    assert!(
        allowed.contains("It was opened with `--allow-breaks`"),
        "{allowed}"
    );
    assert!(!allowed.contains("do not merge it"), "{allowed}");
}

#[test]
fn evidence_covers_added_and_changed_rules_only() {
    let case = Case::growing("pay.example.com");
    let full = body::full_body(&case.input());
    let evidence = section(&full, "\n## Evidence\n", "## ");
    let key_of = |policy: &str, needle: &str| {
        case.rec
            .policies
            .iter()
            .filter(|p| p.name == policy)
            .flat_map(|p| &p.rules)
            .map(|r| r.key())
            .find(|k| k.contains(needle))
            .unwrap_or_else(|| panic!("{policy}: a rule with {needle}"))
    };
    // web's new rule and fresh's rule, with their events, times, names and pods.
    let web_new = key_of("web-egress", "198.51.100.7");
    assert!(
        evidence.contains(&format!(
            "### `shop/web-egress` (`Deployment/web`), changed\n\n\
             | Rule | Events | First seen | Last seen | DNS names | Pods |\n|---|---|---|---|---|---|\n\
             | `{web_new}` | 3 | 2026-11-20T00:00:00Z | 2026-11-24T00:00:00Z | pay\\.example\\.com | web\\-5c9f7d\\-p0 |\n"
        )),
        "{evidence}"
    );
    let fresh = key_of("fresh-egress", "203.0.113.9");
    assert!(
        evidence.contains("### `shop/fresh-egress` (`Deployment/fresh`), added\n"),
        "{evidence}"
    );
    assert!(
        evidence.contains(&format!("| `{fresh}` | 2 |")),
        "{evidence}"
    );
    // web's old rule is unchanged, api's and cart's policies too: no evidence for them.
    let web_old = key_of("web-egress", "203.0.113.2");
    assert!(!evidence.contains(&web_old), "{evidence}");
    assert!(!evidence.contains("api-egress"), "{evidence}");
    assert!(!evidence.contains("cart-egress"), "{evidence}");
    assert!(!evidence.contains("203.0.113.1"), "{evidence}");
}

/// A rule the new proposal drops (its evidence expired) shows under its changed policy, with
/// why; the rule it keeps shows no evidence.
#[test]
fn rules_removed_from_a_changed_policy_say_why() {
    let cluster = shop().cluster();
    let opts = recommend::Options {
        namespaces: BTreeSet::from(["shop".to_owned()]),
        ..recommend::Options::default()
    };
    let mut base = base_records();
    base.push(flow(
        "shop",
        &pod("web"),
        "TCP",
        "198.51.100.7",
        8443,
        3,
        &[],
    ));
    let base_rec = recommend::recommend(&cluster, &observations(&cluster, &base), &opts);
    let before = recommend::all_policies(&cluster, &base_rec);
    let index: recommend::previous::EvidenceIndex = base_rec
        .policies
        .iter()
        .flat_map(|p| {
            p.rules.iter().map(|r| {
                (
                    (p.namespace.clone(), p.name.clone(), r.key()),
                    r.evidence.clone(),
                )
            })
        })
        .collect();
    let (previous, skipped) = recommend::Previous::from_policies(&before, &index);
    assert!(skipped.is_empty(), "{skipped:?}");
    // The new window sees web's 8443 only (newer than the rest); 443 has expired by then.
    let mut new: Vec<Record> = base_records()
        .into_iter()
        .filter(|r| !matches!(r, Record::Flow(f) if f.pod.as_ref().is_some_and(|p| p.name == pod("web"))))
        .collect();
    let mut late = flow("shop", &pod("web"), "TCP", "198.51.100.7", 8443, 3, &[]);
    if let Record::Flow(f) = &mut late {
        f.first_seen = at("2026-12-06T00:00:00Z");
        f.last_seen = at("2026-12-06T00:00:00Z");
    }
    new.push(late);
    let obs = observations(&cluster, &new);
    let rec = recommend::recommend_stable(
        &cluster,
        &obs,
        &opts,
        &recommend::Stability {
            previous: Some(&previous),
            history: None,
            as_of: at("2026-12-06T00:00:00Z"),
            expire_after: Duration::days(10),
        },
    );
    let removed: Vec<&recommend::Change> = rec
        .changes
        .iter()
        .filter(|c| c.policy == "web-egress" && c.kind == recommend::ChangeKind::Removed)
        .collect();
    assert_eq!(removed.len(), 1, "{:?}", rec.changes);
    let after = recommend::all_policies(&cluster, &rec);
    let from = leash::policy_state::compiled(&[], &before).expect("compiles");
    let to = leash::policy_state::compiled(&[], &after).expect("compiles");
    let diff = leash::diff::diff(
        &cluster,
        ("base", &from),
        ("proposal", &to),
        Some(&obs),
        &leash::diff::Options::default(),
    );
    let input = Input {
        cluster: &cluster,
        group: "shop",
        recommendation: &rec,
        before: &before,
        after: &after,
        diff: &diff,
        rollout: &[],
        window: None,
        command: COMMAND,
        trigger: None,
        allow_breaks: false,
        guardrails: false,
    };
    let full = body::full_body(&input);
    let evidence = section(&full, "\n## Evidence\n", "## ");
    let old = removed[0].before.as_deref().expect("a removed rule's key");
    assert!(old.contains("203.0.113.2"), "{old}");
    assert!(
        evidence.contains(&format!(
            "### `shop/web-egress` (`Deployment/web`), changed\n\nRules removed:\n\n- `{old}`: {}\n",
            escape(&removed[0].why)
        )),
        "{evidence}"
    );
    // The rule kept has no row: it did not change.
    assert!(!evidence.contains("| `to 198.51.100.7"), "{evidence}");
}

/// Whether `c` at byte `i` of `s` is preceded by an odd number of backslashes.
fn escaped_at(s: &str, i: usize) -> bool {
    s[..i].chars().rev().take_while(|&c| c == '\\').count() % 2 == 1
}

/// No markup from the hostile text: no link or image, no HTML, no heading, no mention.
fn assert_inert(text: &str) {
    assert!(
        text.match_indices("](").all(|(i, _)| escaped_at(text, i)),
        "a link: {text}"
    );
    assert!(
        text.match_indices("<img").all(|(i, _)| escaped_at(text, i)),
        "HTML: {text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with('#') && l.contains("injected")),
        "a heading: {text}"
    );
    assert!(
        text.match_indices('@')
            .all(|(i, _)| text[i + 1..].starts_with(BREAK)),
        "a mention: {text}"
    );
}

#[test]
fn hostile_names_cannot_become_markup() {
    let case = Case::growing(HOSTILE);
    let mut input = case.input();
    let trigger = format!("unexpected egress to {HOSTILE} | `x`");
    input.trigger = Some(&trigger);
    let full = body::full_body(&input);
    // The part of the body leash writes itself; the diff section is `diff::render`'s.
    let diff_start = full.find("\n## leash diff:").expect("diff section");
    let evidence_start = full.find("\n## Evidence\n").expect("evidence");
    let own = format!("{}{}", &full[..diff_start], &full[evidence_start..]);
    assert_inert(&own);
    // The name shows, escaped, in its rule's evidence row, which keeps its seven cells.
    let escaped = escape(HOSTILE);
    let row = own
        .lines()
        .find(|l| l.contains(&escaped))
        .unwrap_or_else(|| panic!("{own}"));
    assert_eq!(
        row.match_indices('|')
            .filter(|(i, _)| !escaped_at(row, *i))
            .count(),
        7,
        "{row}"
    );
    // HTML only in the marker, raw `<` nowhere else.
    assert_eq!(
        own.match_indices('<')
            .filter(|(i, _)| !escaped_at(&own, *i))
            .count(),
        1,
        "{own}"
    );
    // The trigger is one escaped line.
    assert!(
        own.contains(&format!("\n## Trigger\n\n{}\n", escape(&trigger))),
        "{own}"
    );
    // The short body says what triggered it, as inert.
    let short = body::body(&input, 1200, Some("https://x.example/r.md"));
    assert!(short.chars().count() <= 1200, "{short}");
    assert!(
        short.contains(&format!("\nTriggered by: {}\n", escape(&trigger))),
        "{short}"
    );
    assert_inert(
        short
            .replace("[the full report](<https://x.example/r.md>)", "")
            .as_str(),
    );
    // The title and commit message: one line each, no line break from the name.
    let title = body::title(&input);
    assert!(!title.contains('\n'));
    let msg = body::commit_message(&input);
    let trigger_line = msg
        .lines()
        .find(|l| l.starts_with("Triggered by:"))
        .expect("trigger line");
    assert!(trigger_line.contains("@\u{200B}team"), "{trigger_line}");
    assert!(!msg.contains("\n# injected"), "{msg}");
}

/// The diff section is `diff::render::markdown`'s, whose names go through `render::md`: it
/// backslash-escapes emphasis, links, code and HTML, but leaves `@` (a mention) and `scheme://`
/// (an autolink) as they are. Ignored until `render::md` neutralises them too.
#[test]
fn hostile_names_cannot_become_markup_in_the_diff_section() {
    let case = Case::growing("x](http://evil.example)<img src=x>@team\n# injected");
    let full = body::full_body(&case.input());
    assert!(full.contains("Observed traffic newly allowed"), "{full}");
    assert_inert(&full);
    assert!(!full.contains("http://evil.example"), "an autolink: {full}");
}

/// Names the cluster model refuses (a pod with a pipe and backticks, a namespace that would
/// close the marker) may still come from a store an older version wrote: their cells, code
/// spans, marker and code block hold.
#[test]
fn hostile_pods_groups_and_commands_stay_in_their_constructs() {
    let mut case = Case::growing("pay.example.com");
    let hostile_pod = "a|`b` @x\n<i>";
    for p in case
        .rec
        .policies
        .iter_mut()
        .filter(|p| p.name == "web-egress")
    {
        for r in &mut p.rules {
            r.evidence.pods.insert(hostile_pod.to_owned());
        }
    }
    let group = "shop --> <b>@all</b>";
    let mut input = case.input();
    input.group = group;
    input.command = "leash pr\n```\n# not a heading";
    let full = body::full_body(&input);
    assert!(
        full.starts_with("<!-- leash:pr group=shop%20--%3E%20%3Cb%3E%40all%3C%2Fb%3E -->\n"),
        "{full}"
    );
    // The group shows in a code span, where nothing is markup.
    assert!(
        full.contains("namespace `shop --> <b>@all</b>`, from"),
        "{full}"
    );
    let evidence = section(&full, "\n## Evidence\n", "## ");
    assert_inert(evidence);
    let row = evidence
        .lines()
        .find(|l| l.contains(&escape(hostile_pod)))
        .unwrap_or_else(|| panic!("{evidence}"));
    assert_eq!(
        row.match_indices('|')
            .filter(|(i, _)| !escaped_at(row, *i))
            .count(),
        7,
        "{row}"
    );
    // The command's fence is longer than the backticks inside it.
    assert!(
        full.ends_with("\n````sh\nleash pr\n```\n# not a heading\n````\n"),
        "{full}"
    );
    assert_eq!(
        body::title(&input),
        "leash: egress policies for namespace shop --> <b>@\u{200B}all</b> (1 added, 1 changed)"
    );
    let msg = body::commit_message(&input);
    let subject = msg.lines().next().expect("subject");
    assert!(subject.chars().count() <= MAX_SUBJECT, "{subject}");
}

#[test]
fn subjects_and_titles_stay_bounded() {
    let case = Case::growing("pay.example.com");
    let long = "n".repeat(300);
    let mut input = case.input();
    input.group = &long;
    let title = body::title(&input);
    assert!(title.chars().count() <= MAX_TITLE, "{title}");
    let msg = body::commit_message(&input);
    let subject = msg.lines().next().expect("subject");
    assert!(subject.chars().count() <= MAX_SUBJECT, "{subject}");
    assert!(subject.ends_with("(1 added, 1 changed)"), "{subject}");
    assert!(msg[subject.len()..].starts_with("\n\n"), "{msg}");
    input.group = "all";
    assert_eq!(
        body::title(&input),
        "leash: egress policies for all namespaces (1 added, 1 changed)"
    );
    assert!(body::full_body(&input).starts_with("<!-- leash:pr group=all -->\n**leash** proposes the egress NetworkPolicies of all namespaces,"));
}

#[test]
fn a_body_over_the_limit_becomes_the_short_one() {
    let case = Case::breaking();
    let input = case.input();
    let full = body::full_body(&input);
    // Within the limit, the full body.
    assert_eq!(body::body(&input, GITHUB_MAX_BODY, None), full);
    // Characters count, not bytes: the body has multibyte characters (`→`).
    let chars = full.chars().count();
    assert!(full.len() > chars);
    assert_eq!(body::body(&input, chars, None), full);

    let url = "https://git.example/p/blob/leash/shop/PULL_REQUEST.md";
    let max = chars - 1;
    let short = body::body(&input, max, Some(url));
    assert!(short.chars().count() <= max);
    assert!(
        short.starts_with("<!-- leash:pr group=shop -->\n"),
        "{short}"
    );
    assert!(
        short.contains(&format!("[the full report](<{url}>)")),
        "{short}"
    );
    assert!(
        short.contains("- Policies: 1 added, 1 changed, 1 removed, 2 unchanged"),
        "{short}"
    );
    assert!(
        short.contains("**This change breaks 1 observed flow**"),
        "{short}"
    );
    assert!(!short.contains("### Breaks"), "{short}");
    // Every line of it is whole: one the full body has, or the note.
    for line in short.lines() {
        assert!(
            line.is_empty()
                || full.lines().any(|l| l == line)
                || line.starts_with("The full body is longer"),
            "{line:?}"
        );
    }

    // A tighter limit drops the summary before the note and the marker.
    let tight = body::body(&input, 260, Some(url));
    assert!(tight.chars().count() <= 260, "{tight}");
    assert!(
        tight.starts_with("<!-- leash:pr group=shop -->\n"),
        "{tight}"
    );
    assert!(tight.contains(url), "{tight}");
    // Every limit: within it, whole lines, the warning's quote whole or gone, and what goes
    // first is the intro and summary, then the trigger, the warning, the note, the marker.
    let mut input = input;
    input.trigger = Some("an alert");
    let full = body::full_body(&input);
    for max in (0..700).step_by(7) {
        let s = body::body(&input, max, Some(url));
        assert!(s.chars().count() <= max, "{max}: {s:?}");
        for line in s.lines() {
            assert!(
                line.is_empty()
                    || full.lines().any(|l| l == line)
                    || line.starts_with("The full body is longer")
                    || line == "Triggered by: an alert",
                "{max}: {line:?}"
            );
        }
        assert_eq!(
            s.contains("> [!CAUTION]"),
            s.contains("> **This change breaks"),
            "{max}: {s}"
        );
        if !s.is_empty() {
            assert!(s.starts_with("<!-- leash:pr group=shop -->"), "{max}: {s}");
        }
        if s.contains("[!CAUTION]") {
            assert!(s.contains(url), "{max}: {s}");
        }
        if s.contains("Triggered by") {
            assert!(s.contains("[!CAUTION]"), "{max}: {s}");
        }
        if s.contains("- Policies:") {
            assert!(s.contains("Triggered by"), "{max}: {s}");
        }
    }
}

#[test]
fn same_input_same_bytes() {
    let render = |case: &Case| {
        let input = case.input();
        [
            body::title(&input),
            body::commit_message(&input),
            body::full_body(&input),
            body::body(&input, 1500, Some("https://x.example/r.md")),
        ]
    };
    let one = Case::breaking();
    let two = Case::breaking();
    assert_eq!(render(&one), render(&two));
    // The order the policies come in does not matter.
    let mut reversed = Case::breaking();
    reversed.before.reverse();
    reversed.after.reverse();
    assert_eq!(render(&one), render(&reversed));
}

/// Reads escaped text back: backslash pairs to their character, the inserted breaks dropped.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            BREAK => {}
            c => out.push(c),
        }
    }
    out
}

proptest! {
    /// Escaped text holds no raw line break or control character, every ASCII punctuation
    /// character is backslash-escaped, every reference sigil is broken, no `www.` is left,
    /// and it reads back as the original.
    #[test]
    fn escaped_text_is_inert(s in prop_oneof![
        any::<String>(),
        "[\\[\\]()<>!@#*_`|\\\\:/.wW&;~$%^=+\n\r\t \u{2028}\u{202e}a-z0-9-]{0,40}",
    ]) {
        let e = escape(&s);
        prop_assert!(!e.chars().any(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}')), "{e:?}");
        let mut chars = e.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\\' {
                let next = chars.next();
                prop_assert!(next.is_some_and(|n| n.is_ascii_punctuation()), "{e:?}");
                if let Some(n) = next && ['@', '#', '!', '~', '%', '$', '&'].contains(&n) {
                    prop_assert_eq!(chars.next(), Some(BREAK), "{:?}", e);
                }
            } else {
                prop_assert!(!c.is_ascii_punctuation(), "unescaped {c:?} in {e:?}");
            }
        }
        prop_assert!(!e.to_ascii_lowercase().contains("www\\."), "{e:?}");
        prop_assert!(!e.contains(":\\/"), "a URL scheme: {e:?}");
        let want: String = s
            .chars()
            .filter(|&c| c != BREAK)
            .map(|c| if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200B}'..='\u{200F}' | '\u{061C}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}') { '\u{FFFD}' } else { c })
            .collect();
        prop_assert_eq!(unescape(&e), want);
    }
}
