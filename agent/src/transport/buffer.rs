//! The gRPC sink's bounded buffer: records wait here until the sender cuts them into a batch.
//!
//! Flow records with the same key (pod, cgroup, protocol, destination, port; the node is the
//! agent's own) are merged: counts and TCP outcomes add up, `first_seen`/`last_seen` widen and
//! names are unioned. So while the recommender is unreachable the buffer grows with the number
//! of distinct keys, not with time, and a long outage costs no more memory than a short one.
//! DNS answers are events that cannot be merged; they get their own, separate bound. Past a
//! bound, records are refused and the caller counts them as dropped.
//!
//! The names of a key are bounded too ([`DEFAULT_MAX_NAMES`]): a pod that resolves a flood of
//! names to one address would otherwise grow one merged record, during an outage, past what
//! the recommender takes in a message, and the whole record, counts included, would be lost.
//! The names buffered first are kept; the names left out are counted.

use std::collections::VecDeque;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use leash_records::{DnsRecord, FlowRecord, Outcome, PodRef, Protocol};
use rustc_hash::FxHashMap;

use crate::sink::{FlowView, PodView};

/// Most names a buffered flow key carries by default: what the recommender accepts per record
/// (four times the agent's default bound per (pod, address), so that merging the records of a
/// few flush intervals loses none).
pub const DEFAULT_MAX_NAMES: usize = leash_records::wire::MAX_NAMES_PER_RECORD;

/// What [`MergeBuffer::push_flow`] did with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Added to a key already buffered: no new memory.
    Merged,
    /// Buffered under a new key.
    Added,
    /// Refused: the buffer holds its maximum of keys.
    Dropped,
}

/// Records cut from the buffer for one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchRecords {
    /// Merged flow records.
    pub flows: Vec<FlowRecord>,
    /// DNS records, in arrival order.
    pub dns: Vec<DnsRecord>,
}

impl BatchRecords {
    /// Number of records.
    pub fn len(&self) -> usize {
        self.flows.len() + self.dns.len()
    }

    /// True if there is no record.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty() && self.dns.is_empty()
    }

    /// Sum of `count` over the flow records.
    pub fn events(&self) -> u64 {
        self.flows.iter().map(|f| f.count).sum()
    }
}

/// The part of a flow key below the cgroup and pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Dest {
    protocol: Protocol,
    dst: IpAddr,
    dst_port: u16,
}

#[derive(Debug, Clone)]
struct FlowSum {
    count: u64,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    /// Sorted, without duplicates.
    names: Vec<String>,
    outcome: Option<Outcome>,
}

impl FlowSum {
    /// The sum of one record; names past `max_names` are left out and added to `dropped`.
    fn new(view: &FlowView<'_>, max_names: usize, dropped: &mut u64) -> Self {
        let kept = view.names.len().min(max_names);
        *dropped += (view.names.len() - kept) as u64;
        Self {
            count: view.count,
            first_seen: view.first_seen.into(),
            last_seen: view.last_seen.into(),
            names: view.names[..kept].to_vec(),
            outcome: view.outcome,
        }
    }

    /// Adds a record of the same key; new names past `max_names` are left out and added to
    /// `dropped`.
    fn merge(&mut self, view: &FlowView<'_>, max_names: usize, dropped: &mut u64) {
        self.count = self.count.saturating_add(view.count);
        self.first_seen = self.first_seen.min(view.first_seen.into());
        self.last_seen = self.last_seen.max(view.last_seen.into());
        for name in view.names {
            // Both lists are short and sorted; a binary search keeps them so.
            if let Err(at) = self.names.binary_search(name) {
                if self.names.len() >= max_names {
                    *dropped += 1;
                } else {
                    self.names.insert(at, name.clone());
                }
            }
        }
        self.outcome = match (self.outcome, view.outcome) {
            (Some(a), Some(b)) => Some(Outcome {
                established: a.established.saturating_add(b.established),
                failed: a.failed.saturating_add(b.failed),
            }),
            (a, b) => a.or(b),
        };
    }
}

/// The flows of one (cgroup, pod).
#[derive(Debug)]
struct PodFlows {
    pod: Option<PodRef>,
    flows: FxHashMap<Dest, FlowSum>,
}

/// Merging, bounded record buffer. See the module docs.
#[derive(Debug)]
pub struct MergeBuffer {
    /// By cgroup path, then pod (almost always one per cgroup), then destination: looked up
    /// with the view's borrowed strings, so a merge allocates nothing.
    groups: FxHashMap<String, Vec<PodFlows>>,
    keys: usize,
    max_keys: usize,
    dns: VecDeque<DnsRecord>,
    max_dns: usize,
    max_names: usize,
    /// Names left out since [`MergeBuffer::take_names_dropped`].
    names_dropped: u64,
}

impl MergeBuffer {
    /// An empty buffer holding at most `max_keys` flow keys and `max_dns` DNS records.
    pub fn new(max_keys: usize, max_dns: usize) -> Self {
        Self {
            groups: FxHashMap::default(),
            keys: 0,
            max_keys,
            dns: VecDeque::new(),
            max_dns,
            max_names: DEFAULT_MAX_NAMES,
            names_dropped: 0,
        }
    }

    /// The same buffer keeping at most `max_names` names per flow key.
    #[must_use]
    pub fn with_max_names(mut self, max_names: usize) -> Self {
        self.max_names = max_names;
        self
    }

    /// Names left out (past the bound per key) since the last call.
    pub fn take_names_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.names_dropped)
    }

    /// Flow keys buffered.
    pub fn keys(&self) -> usize {
        self.keys
    }

    /// DNS records buffered.
    pub fn dns_len(&self) -> usize {
        self.dns.len()
    }

    /// True if nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.keys == 0 && self.dns.is_empty()
    }

    /// Merges `view` into its key, adds the key, or refuses it when the buffer is full.
    pub fn push_flow(&mut self, view: &FlowView<'_>) -> Pushed {
        let dest = Dest {
            protocol: view.protocol,
            dst: view.dst,
            dst_port: view.dst_port,
        };
        let full = self.keys >= self.max_keys;
        let pods = match self.groups.get_mut(view.cgroup) {
            Some(pods) => pods,
            None if full => return Pushed::Dropped,
            None => self.groups.entry(view.cgroup.to_owned()).or_default(),
        };
        let same_pod = |p: &PodFlows| p.pod.as_ref().map(PodView::from) == view.pod;
        let flows = match pods.iter_mut().position(|p| same_pod(p)) {
            Some(at) => &mut pods[at].flows,
            None if full => return Pushed::Dropped,
            None => {
                pods.push(PodFlows {
                    pod: view.pod.map(|p| p.to_pod_ref()),
                    flows: FxHashMap::default(),
                });
                let last = pods.len() - 1;
                &mut pods[last].flows
            }
        };
        if let Some(sum) = flows.get_mut(&dest) {
            sum.merge(view, self.max_names, &mut self.names_dropped);
            return Pushed::Merged;
        }
        if full {
            return Pushed::Dropped;
        }
        flows.insert(
            dest,
            FlowSum::new(view, self.max_names, &mut self.names_dropped),
        );
        self.keys += 1;
        Pushed::Added
    }

    /// Buffers a DNS record; `false` (refused) when `max_dns` are buffered.
    pub fn push_dns(&mut self, record: &DnsRecord) -> bool {
        if self.dns.len() >= self.max_dns {
            return false;
        }
        self.dns.push_back(record.clone());
        true
    }

    /// Takes up to `max_records` records (flows first, then DNS) for a batch, as records of
    /// `node`; `None` when the buffer is empty.
    pub fn cut(&mut self, node: &str, max_records: usize) -> Option<BatchRecords> {
        if self.is_empty() || max_records == 0 {
            return None;
        }
        let mut batch = BatchRecords::default();
        for (cgroup, pods) in &mut self.groups {
            for pod_flows in pods.iter_mut() {
                let room = max_records - batch.flows.len();
                if room == 0 {
                    break;
                }
                let taken = pod_flows.flows.extract_if(|_, _| true).take(room);
                for (dest, sum) in taken {
                    batch.flows.push(FlowRecord {
                        node: node.to_owned(),
                        pod: pod_flows.pod.clone(),
                        cgroup: cgroup.clone(),
                        protocol: dest.protocol,
                        dst: dest.dst,
                        dst_port: dest.dst_port,
                        count: sum.count,
                        first_seen: sum.first_seen,
                        last_seen: sum.last_seen,
                        names: sum.names,
                        outcome: sum.outcome,
                    });
                }
            }
            pods.retain(|p| !p.flows.is_empty());
            if batch.flows.len() == max_records {
                break;
            }
        }
        self.groups.retain(|_, pods| !pods.is_empty());
        self.keys -= batch.flows.len();
        let room = max_records - batch.flows.len();
        let dns = room.min(self.dns.len());
        batch.dns.extend(self.dns.drain(..dns));
        Some(batch)
    }

    /// Takes everything (for the shutdown accounting of what could not be sent).
    pub fn take_all(&mut self, node: &str) -> BatchRecords {
        self.cut(node, usize::MAX).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::testing::{at, pod};
    use leash_records::Record;

    fn flow(
        pod: Option<&PodRef>,
        cgroup: &str,
        port: u16,
        count: u64,
        secs: (i64, i64),
        names: &[&str],
    ) -> FlowRecord {
        FlowRecord {
            node: "n1".to_owned(),
            pod: pod.cloned(),
            cgroup: cgroup.to_owned(),
            protocol: Protocol::Tcp,
            dst: IpAddr::from([203, 0, 113, 10]),
            dst_port: port,
            count,
            first_seen: at(secs.0),
            last_seen: at(secs.1),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            outcome: Some(Outcome {
                established: count,
                failed: 1,
            }),
        }
    }

    fn dns(query: &str) -> DnsRecord {
        match crate::sink::testing::dns(None, query, 1) {
            Record::Dns(d) => d,
            Record::Flow(_) => unreachable!(),
        }
    }

    #[test]
    fn same_key_merges_counts_times_names_and_outcomes() {
        let shop = pod("shop", "pay");
        let mut buf = MergeBuffer::new(10, 10);
        let a = flow(Some(&shop), "/a", 443, 2, (5, 6), &["b.test", "d.test"]);
        let b = flow(Some(&shop), "/a", 443, 3, (1, 9), &["a.test", "d.test"]);
        assert_eq!(buf.push_flow(&FlowView::of(&a)), Pushed::Added);
        assert_eq!(buf.push_flow(&FlowView::of(&b)), Pushed::Merged);
        assert_eq!(buf.keys(), 1);
        let batch = buf.cut("n1", 100).unwrap();
        assert_eq!(
            batch.flows,
            vec![FlowRecord {
                count: 5,
                first_seen: at(1),
                last_seen: at(9),
                names: vec!["a.test".into(), "b.test".into(), "d.test".into()],
                outcome: Some(Outcome {
                    established: 5,
                    failed: 2
                }),
                ..a
            }]
        );
        assert!(buf.is_empty());
        assert_eq!(buf.cut("n1", 100), None);
    }

    #[test]
    fn names_per_key_are_bounded_keeping_the_first_and_counting_the_rest() {
        let mut buf = MergeBuffer::new(10, 10).with_max_names(3);
        let a = flow(None, "/a", 443, 1, (0, 1), &["b.test", "d.test"]);
        let b = flow(
            None,
            "/a",
            443,
            2,
            (1, 2),
            &["a.test", "c.test", "d.test", "e.test"],
        );
        let wide = flow(
            None,
            "/a",
            80,
            4,
            (0, 1),
            &["a.test", "b.test", "c.test", "d.test"],
        );
        buf.push_flow(&FlowView::of(&a));
        assert_eq!(buf.take_names_dropped(), 0);
        assert_eq!(buf.push_flow(&FlowView::of(&b)), Pushed::Merged);
        // d.test is known; a.test fits; c.test and e.test do not.
        assert_eq!(buf.take_names_dropped(), 2);
        assert_eq!(buf.take_names_dropped(), 0, "taken");
        buf.push_flow(&FlowView::of(&wide));
        assert_eq!(buf.take_names_dropped(), 1);
        let mut batch = buf.cut("n1", 10).unwrap();
        batch.flows.sort_by_key(|f| f.dst_port);
        let names: Vec<Vec<String>> = batch.flows.into_iter().map(|f| f.names).collect();
        assert_eq!(
            names,
            [
                vec!["a.test", "b.test", "c.test"],
                vec!["a.test", "b.test", "d.test"]
            ]
        );
    }

    #[test]
    fn pod_cgroup_and_port_separate_keys() {
        let shop = pod("shop", "pay");
        let other = pod("shop", "other");
        let mut buf = MergeBuffer::new(10, 10);
        for f in [
            flow(Some(&shop), "/a", 443, 1, (0, 1), &[]),
            flow(Some(&other), "/a", 443, 1, (0, 1), &[]),
            flow(None, "/a", 443, 1, (0, 1), &[]),
            flow(Some(&shop), "/b", 443, 1, (0, 1), &[]),
            flow(Some(&shop), "/a", 80, 1, (0, 1), &[]),
        ] {
            assert_eq!(buf.push_flow(&FlowView::of(&f)), Pushed::Added);
        }
        assert_eq!(buf.keys(), 5);
    }

    #[test]
    fn bounded_by_keys_not_by_repeats() {
        let mut buf = MergeBuffer::new(3, 2);
        for round in 0..1000 {
            for port in 0..3 {
                let f = flow(None, "/a", port, 1, (round, round), &[]);
                assert_ne!(buf.push_flow(&FlowView::of(&f)), Pushed::Dropped);
            }
            assert!(buf.keys() <= 3);
        }
        let new_key = flow(None, "/a", 9, 7, (0, 0), &[]);
        assert_eq!(buf.push_flow(&FlowView::of(&new_key)), Pushed::Dropped);
        let new_cgroup = flow(None, "/z", 1, 7, (0, 0), &[]);
        assert_eq!(buf.push_flow(&FlowView::of(&new_cgroup)), Pushed::Dropped);
        assert!(buf.push_dns(&dns("a.")));
        assert!(buf.push_dns(&dns("b.")));
        assert!(!buf.push_dns(&dns("c.")), "DNS has its own bound");
        let all = buf.take_all("n1");
        assert_eq!((all.flows.len(), all.dns.len(), all.events()), (3, 2, 3000));
    }

    #[test]
    fn cut_takes_at_most_the_batch_size_and_keeps_the_rest() {
        let mut buf = MergeBuffer::new(100, 100);
        let mut total = 0;
        for (i, cgroup) in ["/a", "/b", "/c"].into_iter().enumerate() {
            for port in 0..10 {
                let f = flow(None, cgroup, port, i as u64 + 1, (0, 1), &[]);
                total += f.count;
                buf.push_flow(&FlowView::of(&f));
            }
        }
        buf.push_dns(&dns("a."));
        let mut sum = 0;
        let mut records = 0;
        while let Some(batch) = buf.cut("n1", 7) {
            assert!(batch.len() <= 7);
            sum += batch.events();
            records += batch.len();
            assert_eq!(buf.keys() + records, 31 - buf.dns_len());
        }
        assert_eq!((sum, records), (total, 31));
    }
}
