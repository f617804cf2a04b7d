//! A wire batch's records in the order the `leash.v1` contract numbers them (`flows`, then each
//! of `flow_groups` with its flows, then `dns`): their flow events, a selection of them, and
//! halves of a batch the recommender refused whole.
//!
//! The agent works on the encoded batch it keeps until the ack, never on records decoded back:
//! a refused batch may hold exactly the records that would not decode.

use std::ops::Range;

use leash_records::wire::v1;

/// One record of a wire batch.
#[derive(Debug, Clone, Copy)]
pub enum WireRecord<'a> {
    /// A flow record; for a grouped flow, `pod` and `cgroup` are its group's.
    Flow {
        /// The pod the flow is attributed to.
        pod: Option<&'a v1::Pod>,
        /// The cgroup path.
        cgroup: &'a str,
        /// The flow's own fields.
        flow: &'a v1::Flow,
    },
    /// A DNS record.
    Dns(&'a v1::Dns),
}

impl WireRecord<'_> {
    /// Flow events the record carries: a flow's `count`, 0 for DNS.
    pub fn events(&self) -> u64 {
        match self {
            WireRecord::Flow { flow, .. } => flow.count,
            WireRecord::Dns(_) => 0,
        }
    }
}

/// The records of `batch` in contract order.
pub fn records(batch: &v1::Batch) -> impl Iterator<Item = WireRecord<'_>> {
    let flows = batch.flows.iter().map(|f| WireRecord::Flow {
        pod: f.pod.as_ref(),
        cgroup: &f.cgroup,
        flow: f,
    });
    let grouped = batch.flow_groups.iter().flat_map(|g| {
        g.flows.iter().map(move |f| WireRecord::Flow {
            pod: g.pod.as_ref(),
            cgroup: &g.cgroup,
            flow: f,
        })
    });
    flows
        .chain(grouped)
        .chain(batch.dns.iter().map(WireRecord::Dns))
}

/// Sum of `count` over the batch's flows, grouped or not.
pub fn events(batch: &v1::Batch) -> u64 {
    records(batch).map(|r| r.events()).sum()
}

/// The records of `batch` at contract positions for which `keep` is true, in order, under the
/// batch's id. Groups keep their pod and cgroup; a group left without flows is left out.
pub fn select(batch: &v1::Batch, mut keep: impl FnMut(usize) -> bool) -> v1::Batch {
    let mut at = 0usize;
    let mut pick = |items: &[v1::Flow]| -> Vec<v1::Flow> {
        let start = at;
        at += items.len();
        items
            .iter()
            .enumerate()
            .filter(|(i, _)| keep(start + i))
            .map(|(_, f)| f.clone())
            .collect()
    };
    let flows = pick(&batch.flows);
    let mut flow_groups = Vec::new();
    for g in &batch.flow_groups {
        let flows = pick(&g.flows);
        if !flows.is_empty() {
            flow_groups.push(v1::FlowGroup {
                pod: g.pod.clone(),
                cgroup: g.cgroup.clone(),
                flows,
            });
        }
    }
    let dns = batch
        .dns
        .iter()
        .enumerate()
        .filter(|(i, _)| keep(at + i))
        .map(|(_, d)| d.clone())
        .collect();
    v1::Batch {
        id: batch.id.clone(),
        flows,
        dns,
        flow_groups,
    }
}

/// The records at contract positions `range`, under the batch's id.
pub fn slice(batch: &v1::Batch, range: Range<usize>) -> v1::Batch {
    select(batch, |i| range.contains(&i))
}

/// The first and the second half of the batch's records (the first half is the smaller one
/// when the count is odd), both under the batch's id; `None` for fewer than two records,
/// which cannot be split.
pub fn halves(batch: &v1::Batch) -> Option<(v1::Batch, v1::Batch)> {
    let n = batch.record_count();
    if n < 2 {
        return None;
    }
    let mid = n / 2;
    Some((slice(batch, 0..mid), slice(batch, mid..n)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn flow(count: u64) -> v1::Flow {
        v1::Flow {
            dst: vec![203, 0, 113, 7],
            dst_port: 443,
            count,
            names: vec![format!("n{count}.test")],
            ..Default::default()
        }
    }

    fn dns(query: &str) -> v1::Dns {
        v1::Dns {
            query: query.to_owned(),
            ..Default::default()
        }
    }

    /// `ungrouped` flows, then groups of the given sizes, then `dns` DNS records; flow counts
    /// number the flows 1, 2, 3, … in contract order.
    fn batch(ungrouped: usize, groups: &[usize], dns_len: usize) -> v1::Batch {
        let mut n = 0u64;
        let mut next = || {
            n += 1;
            flow(n)
        };
        let flows = (0..ungrouped).map(|_| next()).collect();
        let flow_groups = groups
            .iter()
            .enumerate()
            .map(|(g, len)| v1::FlowGroup {
                pod: Some(v1::Pod {
                    uid: format!("u{g}"),
                    namespace: "shop".into(),
                    name: format!("p{g}"),
                }),
                cgroup: format!("/g{g}"),
                flows: (0..*len).map(|_| next()).collect(),
            })
            .collect();
        v1::Batch {
            id: Some(v1::BatchId {
                node: "n1".into(),
                boot_id: "b".into(),
                seq: 7,
            }),
            flows,
            dns: (0..dns_len).map(|i| dns(&format!("q{i}.test"))).collect(),
            flow_groups,
        }
    }

    /// Each record as (pod name, cgroup, count) or the DNS query, in order.
    fn flat(batch: &v1::Batch) -> Vec<(String, String, u64)> {
        records(batch)
            .map(|r| match r {
                WireRecord::Flow { pod, cgroup, flow } => (
                    pod.map(|p| p.name.clone()).unwrap_or_default(),
                    cgroup.to_owned(),
                    flow.count,
                ),
                WireRecord::Dns(d) => (String::new(), d.query.clone(), 0),
            })
            .collect()
    }

    #[test]
    fn records_follow_the_contract_order() {
        let b = batch(2, &[1, 2], 2);
        let counts: Vec<u64> = records(&b).map(|r| r.events()).collect();
        assert_eq!(counts, [1, 2, 3, 4, 5, 0, 0]);
        assert_eq!(events(&b), 15);
        let grouped: Vec<_> = flat(&b)[2..5].iter().map(|r| r.1.clone()).collect();
        assert_eq!(grouped, ["/g0", "/g1", "/g1"]);
    }

    #[test]
    fn select_keeps_groups_sources_and_drops_empty_groups() {
        let b = batch(1, &[2, 1, 2], 1);
        // Keep flow 1 (ungrouped), the second flow of group 0, none of group 1, all of group 2.
        let kept = select(&b, |i| [0, 2, 4, 5].contains(&i));
        assert_eq!(kept.flows.len(), 1);
        let cgroups: Vec<_> = kept.flow_groups.iter().map(|g| g.cgroup.as_str()).collect();
        assert_eq!(cgroups, ["/g0", "/g2"]);
        assert_eq!(kept.flow_groups[0].flows[0].count, 3);
        assert!(kept.dns.is_empty());
        assert_eq!(kept.id, b.id);
    }

    #[test]
    fn a_single_record_does_not_split() {
        assert!(halves(&batch(0, &[1], 0)).is_none());
        assert!(halves(&batch(0, &[], 1)).is_none());
        assert!(halves(&batch(0, &[], 0)).is_none());
    }

    proptest! {
        /// The halves are non-empty, each at most half (rounded up) of the records, and
        /// together they are the batch's records in order, with their events.
        #[test]
        fn halves_partition_the_records_in_order(
            ungrouped in 0usize..4,
            groups in proptest::collection::vec(0usize..5, 0..5),
            dns_len in 0usize..5,
        ) {
            let b = batch(ungrouped, &groups, dns_len);
            let n = b.record_count();
            match halves(&b) {
                None => prop_assert!(n < 2),
                Some((first, second)) => {
                    prop_assert!(first.record_count() >= 1 && second.record_count() >= 1);
                    prop_assert!(second.record_count() <= n.div_ceil(2));
                    prop_assert_eq!(first.record_count() + second.record_count(), n);
                    prop_assert_eq!(events(&first) + events(&second), events(&b));
                    let mut joined = flat(&first);
                    joined.extend(flat(&second));
                    prop_assert_eq!(joined, flat(&b));
                    prop_assert!(first.flow_groups.iter().chain(&second.flow_groups).all(|g| !g.flows.is_empty()));
                }
            }
        }
    }
}
