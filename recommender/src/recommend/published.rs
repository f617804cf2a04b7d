//! What a named external rule covers besides the addresses dialed in the window: the name,
//! not last week's connections.
//!
//! - [`NameIndex`]: every address each name resolved to for a workload (its pods' address
//!   history, [`Observations::history`](crate::observations::Observations::history)). A rule
//!   towards a name also allows the name's other addresses on its ports, so that a name whose
//!   answers rotate stays allowed, and a name that moved gets its new address (drift).
//! - [`published_blocks`]: the published provider ranges ([`crate::ranges`]) the rule's
//!   addresses fall in, no wider than `--max-published-prefix-v4/-v6`: the rule allows the
//!   range instead of /32s, with a note for the report.
//!
//! Pure: takes values, does no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::cluster::{Cluster, PodId, WorkloadId};
use crate::observations::History;
use crate::ranges::{PublishedRange, PublishedRanges};

/// Every address each (normalized) name resolved to, per workload.
#[derive(Debug, Default)]
pub(super) struct NameIndex<'a> {
    by_workload: HashMap<WorkloadId, BTreeMap<&'a str, BTreeSet<IpAddr>>>,
}

impl<'a> NameIndex<'a> {
    /// Indexes the address history of every pod of the cluster by its workload.
    pub(super) fn new(cluster: &Cluster, history: &'a BTreeMap<(PodId, String), History>) -> Self {
        let mut by_workload: HashMap<WorkloadId, BTreeMap<&'a str, BTreeSet<IpAddr>>> =
            HashMap::new();
        for ((pod, name), h) in history {
            let Some(w) = cluster.workload_of(*pod) else {
                continue;
            };
            by_workload
                .entry(w)
                .or_default()
                .entry(name.as_str())
                .or_default()
                .extend(h.keys().map(|ip| ip.to_canonical()));
        }
        Self { by_workload }
    }

    /// The addresses any of `names` resolved to for workload `w`, sorted.
    pub(super) fn addresses(&self, w: WorkloadId, names: &BTreeSet<String>) -> BTreeSet<IpAddr> {
        let Some(by_name) = self.by_workload.get(&w) else {
            return BTreeSet::new();
        };
        names
            .iter()
            .filter_map(|n| by_name.get(n.as_str()))
            .flatten()
            .copied()
            .collect()
    }
}

/// A published range a rule allows, and the report's note about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PublishedBlock {
    /// The range.
    pub net: IpNet,
    /// `AWS S3 us-east-1, published range, covers 14 observed addresses`.
    pub note: String,
}

/// Whether two prefixes share an address (prefixes either nest or are disjoint).
fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(b) || b.contains(a)
}

/// The published ranges that cover `ips` (a rule's observed addresses): for each address
/// the most specific range that contains it ([`PublishedRanges::containing`]: a specific
/// service before a catch-all list such as AWS `AMAZON`, then the narrowest, then a regional
/// one), no wider than `max_v4` / `max_v6` and overlapping no `protected` range (the
/// cluster's pod and Service ranges, metadata, loopback); a range inside another chosen one
/// is dropped. Each comes with its note, counting the addresses of `ips` it holds. Sorted by
/// range.
pub(super) fn published_blocks(
    published: &PublishedRanges,
    ips: &BTreeSet<IpAddr>,
    max_v4: u8,
    max_v6: u8,
    protected: &[IpNet],
) -> Vec<PublishedBlock> {
    if published.is_empty() {
        return Vec::new();
    }
    let usable = |r: &&PublishedRange| {
        let max = match r.net {
            IpNet::V4(_) => max_v4,
            IpNet::V6(_) => max_v6,
        };
        r.net.prefix_len() >= max && !protected.iter().any(|p| overlaps(p, &r.net))
    };
    let mut chosen: BTreeMap<IpNet, &PublishedRange> = BTreeMap::new();
    for ip in ips {
        if let Some(r) = published.containing(*ip).into_iter().find(usable) {
            chosen.entry(r.net).or_insert(r);
        }
    }
    let nets: Vec<IpNet> = chosen.keys().copied().collect();
    chosen
        .into_iter()
        .filter(|(net, _)| !nets.iter().any(|o| o != net && o.contains(net)))
        .map(|(net, r)| {
            let n = ips.iter().filter(|ip| net.contains(*ip)).count();
            PublishedBlock {
                net,
                note: format!(
                    "{}, published range, covers {n} observed address{}",
                    r.label,
                    if n == 1 { "" } else { "es" }
                ),
            }
        })
        .collect()
}

/// The note of a rule that allows addresses its names resolved to but that were not dialed:
/// how many, and the first few.
pub(super) fn implied_note(implied: &BTreeSet<IpAddr>) -> Option<String> {
    const SHOWN: usize = 8;
    if implied.is_empty() {
        return None;
    }
    let mut list: Vec<String> = implied
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect();
    if implied.len() > SHOWN {
        list.push(format!("and {} more", implied.len() - SHOWN));
    }
    Some(format!(
        "also allows {} address{} its DNS names resolved to for this workload, not dialed in \
         the window: {}",
        implied.len(),
        if implied.len() == 1 { "" } else { "es" },
        list.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranges::{Provider, PublishedRange};

    fn range(net: &str, label: &str, generic: bool) -> PublishedRange {
        PublishedRange {
            net: net.parse().expect("net"),
            label: label.to_owned(),
            provider: Provider::Aws,
            service: String::new(),
            region: "r".to_owned(),
            generic,
        }
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().expect("address")).collect()
    }

    fn published() -> PublishedRanges {
        PublishedRanges::new(
            vec![
                range("198.51.100.0/24", "AWS AMAZON us-east-1", true),
                range("198.51.100.0/24", "AWS S3 us-east-1", false),
                range("198.51.100.128/25", "AWS EC2 us-east-1", false),
                range("203.0.113.0/24", "wide", false),
                range("2001:db8::/36", "AWS S3 eu-west-1", false),
                range("2001:db8:1000::/40", "AWS S3 us-east-1", false),
            ],
            vec![],
        )
    }

    fn shown(b: &[PublishedBlock]) -> Vec<String> {
        b.iter().map(|b| format!("{} {}", b.net, b.note)).collect()
    }

    /// The specific service over AMAZON; a narrower range inside a chosen one is dropped and
    /// its addresses counted by the wider one; ranges wider than the maximum and ranges over
    /// protected ones are not used.
    #[test]
    fn ranges_chosen_for_a_rule() {
        let p = published();
        let got = published_blocks(
            &p,
            &ips(&[
                "198.51.100.1",
                "198.51.100.2",
                "198.51.100.200",
                "2001:db8::1",
            ]),
            16,
            40,
            &[],
        );
        assert_eq!(
            shown(&got),
            ["198.51.100.0/24 AWS S3 us-east-1, published range, covers 3 observed addresses"]
        );
        let got = published_blocks(
            &p,
            &ips(&["198.51.100.200", "2001:db8:1000::9"]),
            25,
            40,
            &[],
        );
        assert_eq!(
            shown(&got),
            [
                "198.51.100.128/25 AWS EC2 us-east-1, published range, covers 1 observed address",
                "2001:db8:1000::/40 AWS S3 us-east-1, published range, covers 1 observed address",
            ]
        );
        let protected: Vec<IpNet> = vec!["203.0.113.64/26".parse().expect("net")];
        assert!(published_blocks(&p, &ips(&["203.0.113.1"]), 16, 40, &protected).is_empty());
        assert!(published_blocks(&p, &ips(&["203.0.113.1"]), 25, 40, &[]).is_empty());
        assert!(
            published_blocks(
                &PublishedRanges::default(),
                &ips(&["203.0.113.1"]),
                0,
                0,
                &[]
            )
            .is_empty()
        );
    }

    #[test]
    fn the_implied_note_lists_the_first_addresses() {
        assert_eq!(implied_note(&BTreeSet::new()), None);
        assert_eq!(
            implied_note(&ips(&["203.0.113.7"])).as_deref(),
            Some(
                "also allows 1 address its DNS names resolved to for this workload, not dialed \
                 in the window: 203.0.113.7"
            )
        );
        let many: Vec<String> = (1..=10).map(|i| format!("203.0.113.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let note = implied_note(&ips(&many)).expect("note");
        assert!(note.starts_with("also allows 10 addresses"), "{note}");
        assert!(note.ends_with("203.0.113.8, and 2 more"), "{note}");
    }
}
