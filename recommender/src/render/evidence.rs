//! `<namespace>/evidence.json`: the evidence of every rule of a namespace's policies, for
//! machines, and for the next run (`recommend --previous`). The policy files carry the
//! policy only; what backs each rule (events, first and last seen, DNS names, pods) changes
//! with every run and lives here and in REPORT.md, with each policy's external destinations
//! by DNS name and every address each name had (`crate::recommend::names`).
//!
//! Deterministic: fields in a fixed order, lists sorted, times in RFC 3339.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::recommend::{Recommendation, RuleEvidence};

/// The value of `generator` in every evidence file leash writes: how it recognises its own.
pub const GENERATOR: &str = "leash recommend";

/// The version of the file's shape.
pub const FORMAT: u32 = 1;

/// The file name, in each namespace directory.
pub const FILE: &str = "evidence.json";

/// One namespace's evidence file. It is also an empty Kubernetes `List` (`apiVersion: v1`,
/// `kind: List`, no `items`), so that tools that read every `.json` file of a policy
/// directory (`kubectl apply -f DIR`, `leash audit --policies DIR`) find nothing to apply
/// in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceFile {
    /// Always `v1`.
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,
    /// Always `List`.
    #[serde(default)]
    pub kind: String,
    /// Always empty.
    #[serde(default)]
    pub items: Vec<serde_json::Value>,
    /// Always [`GENERATOR`].
    pub generator: String,
    /// Always [`FORMAT`].
    pub format: u32,
    /// The namespace.
    pub namespace: String,
    /// The window's end that the names' "new" counts are relative to, RFC 3339
    /// (`crate::recommend::names`); only when a policy lists names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_end: Option<String>,
    /// Its workload policies, by name.
    pub policies: Vec<PolicyEvidence>,
}

/// The evidence of one policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEvidence {
    /// The policy name.
    pub policy: String,
    /// The workload, `Kind/name`.
    pub workload: String,
    /// One entry per egress rule, in the policy's order.
    pub rules: Vec<Rule>,
    /// The external rules by DNS name, with each name's address history
    /// (`crate::recommend::names`): sorted by name, the addresses no answer named (`name`
    /// null) last. Absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<NameEvidence>,
}

/// One DNS name of a policy's external rules, or the addresses no answer named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameEvidence {
    /// The name; null for the addresses no DNS answer named.
    pub name: Option<String>,
    /// The rules (1-based) that allow its observed addresses.
    pub rules: Vec<usize>,
    /// Distinct addresses in the window.
    pub churn: usize,
    /// Addresses first seen less than a day before the window's end.
    pub new_last_day: usize,
    /// Addresses first seen less than a week before the window's end.
    pub new_last_week: usize,
    /// How many of the addresses the rules' blocks allow.
    pub covered: usize,
    /// Every address, in address order.
    pub addresses: Vec<AddressEvidence>,
}

/// One address of a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressEvidence {
    /// The address.
    pub address: String,
    /// The first answer that gave it (or its first flow, without an answer), RFC 3339.
    pub first_seen: String,
    /// The last one, RFC 3339.
    pub last_seen: String,
    /// The TTL of the latest answer, in seconds; absent when only flows show the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u32>,
    /// The CNAME chain of the latest answer, from the query name (excluded) to the owner of
    /// the address record.
    #[serde(default)]
    pub chain: Vec<String>,
    /// Whether the rules' blocks allow it.
    pub covered: bool,
}

/// The names of workload `w` as evidence ([`NameEvidence`]).
fn names(rec: &Recommendation, w: usize) -> Vec<NameEvidence> {
    let Some(list) = rec.names.workloads.get(&w) else {
        return Vec::new();
    };
    list.iter()
        .map(|n| NameEvidence {
            name: n.name.clone(),
            rules: n.rules.clone(),
            churn: n.distinct(),
            new_last_day: n.new_last_day,
            new_last_week: n.new_last_week,
            covered: n.covered,
            addresses: n
                .addresses
                .iter()
                .map(|(ip, a)| AddressEvidence {
                    address: ip.to_string(),
                    first_seen: leash_records::time::rfc3339(a.first_seen),
                    last_seen: leash_records::time::rfc3339(a.last_seen),
                    ttl: a.ttl,
                    chain: a.chain.clone(),
                    covered: a.covered,
                })
                .collect(),
        })
        .collect()
}

/// The evidence of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// 1-based position in the policy's `egress`.
    pub rule: usize,
    /// What the rule allows (`to … on …`): matches the rule in the next run.
    pub key: String,
    /// False for a rule kept from the previous proposal without evidence in this window.
    pub seen_in_window: bool,
    /// Events (DNS queries for a DNS rule's query evidence).
    pub events: u64,
    /// First seen, RFC 3339.
    pub first_seen: Option<String>,
    /// Last seen, RFC 3339.
    pub last_seen: Option<String>,
    /// DNS names, sorted.
    pub names: BTreeSet<String>,
    /// Source pods, sorted.
    pub pods: BTreeSet<String>,
    /// At least this many more source pods, not named (a store's bound).
    #[serde(default)]
    pub more_pods: u64,
    /// Destinations as dialed, sorted.
    #[serde(default)]
    pub destinations: BTreeSet<String>,
    /// Applied policies leash did not write that also allow these flows, sorted.
    #[serde(default)]
    pub also_allowed_by: Vec<String>,
}

/// The evidence file of namespace `ns`, as JSON text ending in a newline.
pub fn render(cluster: &Cluster, rec: &Recommendation, ns: &str) -> String {
    let time = |t: Option<DateTime<Utc>>| t.map(leash_records::time::rfc3339);
    let named = rec
        .policies
        .iter()
        .any(|p| p.namespace == ns && rec.names.workloads.contains_key(&p.workload));
    let file = EvidenceFile {
        window_end: if named {
            time(rec.names.window_end)
        } else {
            None
        },
        api_version: "v1".to_owned(),
        kind: "List".to_owned(),
        items: Vec::new(),
        generator: GENERATOR.to_owned(),
        format: FORMAT,
        namespace: ns.to_owned(),
        policies: rec
            .policies
            .iter()
            .filter(|p| p.namespace == ns)
            .map(|p| PolicyEvidence {
                policy: p.name.clone(),
                workload: cluster
                    .workloads
                    .get(p.workload)
                    .map(|w| crate::json::workload(&w.kind, &w.name))
                    .unwrap_or_default(),
                rules: p
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, r)| Rule {
                        rule: i + 1,
                        key: r.key(),
                        seen_in_window: !r.not_seen_in_window,
                        events: r.evidence.count,
                        first_seen: time(r.evidence.first_seen),
                        last_seen: time(r.evidence.last_seen),
                        names: r.evidence.names.clone(),
                        pods: r.evidence.pods.clone(),
                        more_pods: r.evidence.more_pods,
                        destinations: r.evidence.destinations.clone(),
                        also_allowed_by: r.also_allowed_by.clone(),
                    })
                    .collect(),
                names: names(rec, p.workload),
            })
            .collect(),
    };
    // Serializing plain strings and numbers cannot fail.
    let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
    text.push('\n');
    text
}

/// Why an evidence file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON of the evidence file's shape.
    #[error("not an evidence file of leash")]
    Shape(#[source] serde_json::Error),
    /// Valid JSON that another tool wrote (its `generator` is not leash's).
    #[error("not written by leash (generator {0:?})")]
    NotLeash(String),
    /// A time that is not RFC 3339.
    #[error("policy {policy} rule {rule}: {field} is not an RFC 3339 time")]
    Time {
        /// The policy.
        policy: String,
        /// The rule.
        rule: usize,
        /// `first_seen` or `last_seen`.
        field: &'static str,
    },
}

/// The rules' evidence of an evidence file: (namespace, policy, rule key, evidence).
pub fn parse(text: &str) -> Result<Vec<(String, String, String, RuleEvidence)>, ParseError> {
    let file: EvidenceFile = serde_json::from_str(text).map_err(ParseError::Shape)?;
    if file.generator != GENERATOR {
        return Err(ParseError::NotLeash(file.generator));
    }
    let mut out = Vec::new();
    for p in file.policies {
        for r in p.rules {
            let time = |t: &Option<String>, field| {
                t.as_deref()
                    .map(|t| {
                        DateTime::parse_from_rfc3339(t)
                            .map(|t| t.with_timezone(&Utc))
                            .map_err(|_| ParseError::Time {
                                policy: p.policy.clone(),
                                rule: r.rule,
                                field,
                            })
                    })
                    .transpose()
            };
            let evidence = RuleEvidence {
                count: r.events,
                first_seen: time(&r.first_seen, "first_seen")?,
                last_seen: time(&r.last_seen, "last_seen")?,
                names: r.names,
                pods: r.pods,
                more_pods: r.more_pods,
                destinations: r.destinations,
            };
            out.push((file.namespace.clone(), p.policy.clone(), r.key, evidence));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_generator_is_refused() {
        let text = r#"{"generator":"other","format":1,"namespace":"x","policies":[]}"#;
        assert!(matches!(parse(text), Err(ParseError::NotLeash(g)) if g == "other"));
        assert!(matches!(parse("[]"), Err(ParseError::Shape(_))));
    }

    #[test]
    fn an_empty_namespace_round_trips() {
        let text = render(&Cluster::default(), &Recommendation::default(), "shop");
        assert!(text.ends_with("}\n"), "{text}");
        assert_eq!(parse(&text).expect("parses"), Vec::new());
    }
}
