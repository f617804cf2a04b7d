//! What backs a rule: the fold of observed evidence (counts, time bounds, names, pods and
//! destinations as dialed).

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};

use crate::input::Evidence;

/// What backs a rule: counts, time bounds, names, pods, destinations.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleEvidence {
    /// Events (summed `count`; DNS queries for DNS-record evidence).
    pub count: u64,
    /// First seen.
    pub first_seen: Option<DateTime<Utc>>,
    /// Last seen.
    pub last_seen: Option<DateTime<Utc>>,
    /// DNS names.
    pub names: BTreeSet<String>,
    /// Source pods (`namespace/name` is implied: the workload's namespace).
    pub pods: BTreeSet<String>,
    /// Destinations as dialed (`10.96.0.10:53/UDP`, `Service shop/api 80/TCP → 8080`).
    pub destinations: BTreeSet<String>,
}

impl RuleEvidence {
    pub(super) fn add(&mut self, ev: &Evidence, pod: &str, destination: String) {
        self.count = self.count.saturating_add(ev.count);
        self.first_seen = Some(
            self.first_seen
                .map_or(ev.first_seen, |f| f.min(ev.first_seen)),
        );
        self.last_seen = Some(self.last_seen.map_or(ev.last_seen, |l| l.max(ev.last_seen)));
        self.names.extend(ev.names.iter().cloned());
        self.pods.insert(pod.to_owned());
        self.destinations.insert(destination);
    }

    pub(super) fn merge(&mut self, o: &RuleEvidence) {
        self.count = self.count.saturating_add(o.count);
        self.first_seen = match (self.first_seen, o.first_seen) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_seen = match (self.last_seen, o.last_seen) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.names.extend(o.names.iter().cloned());
        self.pods.extend(o.pods.iter().cloned());
        self.destinations.extend(o.destinations.iter().cloned());
    }

    /// How long the evidence spans.
    pub fn span(&self) -> Duration {
        match (self.first_seen, self.last_seen) {
            (Some(f), Some(l)) => l - f,
            _ => Duration::zero(),
        }
    }
}
