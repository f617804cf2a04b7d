//! REPORT.md's "External destinations by name" of one policy: per DNS name of its external
//! rules ([`crate::recommend::names`]), the addresses it had in the window, their churn, how
//! many are new, and how many the rules' blocks cover; then the addresses no answer named.
//! Names come from DNS answers, which tenants control: every one is escaped ([`super::md`]).

use std::fmt::Write as _;

use super::{cell, md, plural};
use crate::recommend::PolicySpec;
use crate::recommend::names::{NameChurn, Names};

/// Addresses listed per name; the rest are counted.
const MAX_ADDRESSES: usize = 8;

/// Appends the section of policy `p`, when its workload has names ([`Names::workloads`]).
pub(crate) fn section(s: &mut String, names: &Names, p: &PolicySpec) {
    let Some(list) = names.workloads.get(&p.workload).filter(|l| !l.is_empty()) else {
        return;
    };
    let end = names
        .window_end
        .map_or_else(|| "-".to_owned(), leash_records::time::rfc3339);
    let _ = writeln!(
        s,
        "#### External destinations by name\n\nEvery address each name resolved to for this \
         workload in the window (churn: how many distinct), how many were first seen less \
         than a day and a week before the window's end ({end}), and how many the blocks of \
         the name's rules allow. Addresses no rule allows come first: the name moved, and \
         the policy does not follow. \"no name\" lists the addresses no DNS answer named.\n\n\
         | name | rules | addresses | churn | new (day) | new (week) | covered |\n\
         |---|---|---|---|---|---|---|"
    );
    for n in list {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} of {} |",
            name_cell(n),
            n.rules
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            addresses_cell(n),
            n.distinct(),
            n.new_last_day,
            n.new_last_week,
            n.covered,
            plural(n.distinct(), "address", "addresses"),
        );
    }
    s.push('\n');
}

/// The name, escaped; a name no DNS answer of the workload asked for in the window (only
/// its flows carry it) says so.
fn name_cell(n: &NameChurn) -> String {
    match &n.name {
        None => "no name".to_owned(),
        Some(name) if n.addresses.values().all(|a| a.ttl.is_none()) => {
            cell(&format!("{} (from flows only)", md(name)))
        }
        Some(name) => cell(&md(name)),
    }
}

/// The addresses, those no rule allows first (marked), then in address order; at most
/// [`MAX_ADDRESSES`], then how many more.
fn addresses_cell(n: &NameChurn) -> String {
    let mut all: Vec<_> = n.addresses.iter().collect();
    all.sort_by_key(|(ip, a)| (a.covered, **ip));
    let mut shown: Vec<String> = all
        .iter()
        .take(MAX_ADDRESSES)
        .map(|(ip, a)| {
            if a.covered {
                ip.to_string()
            } else {
                format!("{ip} (not allowed)")
            }
        })
        .collect();
    if all.len() > MAX_ADDRESSES {
        shown.push(format!("and {} more", all.len() - MAX_ADDRESSES));
    }
    cell(&shown.join(", "))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use super::*;
    use crate::cluster::LabelSelector;
    use crate::recommend::RuleEvidence;
    use crate::recommend::names::NameAddress;

    fn address(covered: bool) -> NameAddress {
        NameAddress {
            first_seen: chrono::DateTime::UNIX_EPOCH,
            last_seen: chrono::DateTime::UNIX_EPOCH,
            ttl: Some(30),
            chain: Vec::new(),
            covered,
        }
    }

    #[test]
    fn hostile_names_are_escaped_and_lists_bounded() {
        let addresses: BTreeMap<IpAddr, NameAddress> = (1..=10u8)
            .map(|i| (IpAddr::from([203, 0, 113, i]), address(i != 7)))
            .collect();
        let names = Names {
            window_end: None,
            workloads: [(
                0,
                vec![NameChurn {
                    name: Some("*evil*|x_[a](http://h.test)@team#1".to_owned()),
                    rules: vec![2, 3],
                    addresses,
                    new_last_day: 1,
                    new_last_week: 4,
                    covered: 9,
                }],
            )]
            .into(),
        };
        let p = PolicySpec {
            workload: 0,
            namespace: "shop".into(),
            name: "api-egress".into(),
            pod_selector: LabelSelector::default(),
            rules: Vec::new(),
            evidence: RuleEvidence::default(),
        };
        let mut s = String::new();
        section(&mut s, &names, &p);
        let row = s
            .lines()
            .find(|l| l.contains("evil"))
            .unwrap_or_default()
            .to_owned();
        assert!(row.contains(r"\*evil\*\|x\_\[a\]"), "{row}");
        assert!(!row.contains("@team"), "a mention stays broken: {row}");
        assert_eq!(row.matches(" | ").count(), 6, "one cell per column: {row}");
        assert!(
            row.contains(
                "| 2, 3 | 203.0.113.7 (not allowed), 203.0.113.1, 203.0.113.2, 203.0.113.3, \
                 203.0.113.4, 203.0.113.5, 203.0.113.6, 203.0.113.8, and 2 more | 10 | 1 | 4 | \
                 9 of 10 addresses |"
            ),
            "{row}"
        );
        // No names: no section.
        let mut none = String::new();
        section(&mut none, &Names::default(), &p);
        assert!(none.is_empty());
    }
}
