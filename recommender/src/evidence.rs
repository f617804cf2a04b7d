//! What was seen of one key, and the one way two sightings combine.
//!
//! Every aggregate in leash (records read from files, a batch turned into store rows, stored
//! rows turned back into observations, a rule's evidence, a workload's totals) folds counts
//! and times the same way: counts add, saturating; first seen is the earliest; last seen the
//! latest ([`fold`]). [`Evidence`] adds the names a destination was reached by, [`PodNames`]
//! the pods that made the connections, bounded where they are stored.
//!
//! A leaf module: the store, observations and recommendation all use it, and it uses none of
//! them.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

/// Folds one sighting (`count` events between `first` and `last`) into an aggregate: counts
/// add, saturating at `u64::MAX`; the first time is the earliest, the last the latest.
pub fn fold(
    count: &mut u64,
    first_seen: &mut DateTime<Utc>,
    last_seen: &mut DateTime<Utc>,
    more: u64,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
) {
    *count = count.saturating_add(more);
    *first_seen = (*first_seen).min(first);
    *last_seen = (*last_seen).max(last);
}

/// What was seen of a key: summed counts, time bounds and names. For a flow the count is of
/// events and the names are those the destination was reached by; for a pod's use of a
/// resolver the count is of queries and the names are those queried. Names are lower case,
/// without the trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// Events (flows) or queries (DNS), summed, saturating.
    pub count: u64,
    /// The earliest time seen.
    pub first_seen: DateTime<Utc>,
    /// The latest time seen.
    pub last_seen: DateTime<Utc>,
    /// The DNS names seen with it.
    pub names: BTreeSet<String>,
}

impl Evidence {
    /// `count` events between `first_seen` and `last_seen`, without names.
    pub fn new(count: u64, first_seen: DateTime<Utc>, last_seen: DateTime<Utc>) -> Self {
        Self {
            count,
            first_seen,
            last_seen,
            names: BTreeSet::new(),
        }
    }

    /// Folds `count` more events between `first` and `last` in ([`fold`]).
    pub fn add(&mut self, count: u64, first: DateTime<Utc>, last: DateTime<Utc>) {
        fold(
            &mut self.count,
            &mut self.first_seen,
            &mut self.last_seen,
            count,
            first,
            last,
        );
    }

    /// Folds another piece of evidence in: its counts and times, and its names.
    pub fn merge(&mut self, other: &Evidence) {
        self.add(other.count, other.first_seen, other.last_seen);
        self.names.extend(other.names.iter().cloned());
    }
}

/// The pods that made a stored flow observation: some by name, and at least `more` others.
///
/// A batch names at most [`PodNames::MAX`] pods per observation (the smallest names) and a
/// store keeps at most as many (the first to arrive), so that a workload whose pods are
/// replaced daily does not grow its rows without bound. Once names have been left out, the
/// number of the others is a lower bound: the store cannot tell a pod it left out from one it
/// left out before. Exact as long as nothing was left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNames {
    /// Pod names (without namespace: the workload's).
    pub names: BTreeSet<String>,
    /// At least this many other pods, not named.
    pub more: u64,
}

impl PodNames {
    /// Pod names a store keeps per observation.
    pub const MAX: usize = 8;

    /// How many pods at least: the named ones and the others.
    pub fn total(&self) -> u64 {
        u64::try_from(self.names.len())
            .unwrap_or(u64::MAX)
            .saturating_add(self.more)
    }

    /// Folds another set in ([`merge_pods`]).
    pub fn merge(&mut self, other: &PodNames) {
        merge_pods(
            &mut self.names,
            &mut self.more,
            other.names.iter().map(String::as_str),
            other.more,
        );
    }
}

/// Folds pods (`other` by name and `other_more` others) into `names` and `more`: the union
/// of the names, and as many others as either side proves at least (the others of one side
/// may be named by the other, so they do not add up).
pub fn merge_pods<'a>(
    names: &mut BTreeSet<String>,
    more: &mut u64,
    other: impl IntoIterator<Item = &'a str>,
    other_more: u64,
) {
    let len = |n: &BTreeSet<String>| u64::try_from(n.len()).unwrap_or(u64::MAX);
    let mine = len(names).saturating_add(*more);
    let mut theirs = other_more;
    for n in other {
        theirs = theirs.saturating_add(1);
        if !names.contains(n) {
            names.insert(n.to_owned());
        }
    }
    *more = mine.max(theirs).saturating_sub(len(names));
}

/// One address a DNS name resolved to, as one workload saw it: when first and last, and the
/// TTL and CNAME chain of the latest answer that gave it. The store keeps one per
/// (workload, resolver, query name, address): the name's address history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressSeen {
    /// The earliest answer that gave it.
    pub first_seen: DateTime<Utc>,
    /// The latest answer that gave it.
    pub last_seen: DateTime<Utc>,
    /// The TTL, in seconds, of the latest answer's address record.
    pub ttl: u32,
    /// The CNAME chain of the latest answer: the names followed from the query name to the
    /// owner of the address record, in order, without the query name itself (normalized:
    /// lower case, no trailing dot). Empty when the query name owns the address record.
    pub chain: Vec<String>,
}

impl AddressSeen {
    /// Folds another sighting of the same address in: times as [`fold`] does; the TTL and
    /// chain of the later sighting (on equal last seen, the larger of the two, so that the
    /// result does not depend on the order sightings come in).
    pub fn merge(&mut self, other: &AddressSeen) {
        let later =
            (other.last_seen, other.ttl, &other.chain) > (self.last_seen, self.ttl, &self.chain);
        if later {
            self.ttl = other.ttl;
            self.chain.clone_from(&other.chain);
        }
        let mut count = 0;
        fold(
            &mut count,
            &mut self.first_seen,
            &mut self.last_seen,
            0,
            other.first_seen,
            other.last_seen,
        );
    }
}
