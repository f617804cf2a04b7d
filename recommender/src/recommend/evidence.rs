//! What backs a rule: the fold of observed evidence (counts, time bounds, names, pods and
//! destinations as dialed).

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};

use crate::evidence::merge_pods;
use crate::observations::{Evidence, PodNames};

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
    /// At least this many other source pods, not named: a store keeps a bounded number of
    /// pod names per observation ([`PodNames`]).
    pub more_pods: u64,
    /// Destinations as dialed (`10.96.0.10:53/UDP`, `Service shop/api 80/TCP → 8080`).
    pub destinations: BTreeSet<String>,
}

impl RuleEvidence {
    pub(super) fn add(&mut self, ev: &Evidence, pods: Who<'_>, destination: String) {
        self.fold(ev.count, Some(ev.first_seen), Some(ev.last_seen));
        self.names.extend(ev.names.iter().cloned());
        match pods {
            Who::Pod(pod) => {
                self.pods.insert(pod.to_owned());
            }
            Who::Stored(p) => merge_pods(
                &mut self.pods,
                &mut self.more_pods,
                p.names.iter().map(String::as_str),
                p.more,
            ),
        }
        self.destinations.insert(destination);
    }

    pub(super) fn merge(&mut self, o: &RuleEvidence) {
        self.fold(o.count, o.first_seen, o.last_seen);
        self.names.extend(o.names.iter().cloned());
        merge_pods(
            &mut self.pods,
            &mut self.more_pods,
            o.pods.iter().map(String::as_str),
            o.more_pods,
        );
        self.destinations.extend(o.destinations.iter().cloned());
    }

    /// The one evidence fold ([`crate::evidence::fold`]), on times that may be unset.
    fn fold(&mut self, count: u64, first: Option<DateTime<Utc>>, last: Option<DateTime<Utc>>) {
        let (Some(first), Some(last)) = (first.or(self.first_seen), last.or(self.last_seen)) else {
            self.count = self.count.saturating_add(count);
            return;
        };
        let mut f = self.first_seen.unwrap_or(first);
        let mut l = self.last_seen.unwrap_or(last);
        crate::evidence::fold(&mut self.count, &mut f, &mut l, count, first, last);
        self.first_seen = Some(f);
        self.last_seen = Some(l);
    }

    /// How long the evidence spans.
    pub fn span(&self) -> Duration {
        match (self.first_seen, self.last_seen) {
            (Some(f), Some(l)) => l - f,
            _ => Duration::zero(),
        }
    }
}

/// Who made a flow: the key's pod, or the pods a store kept for the flow (whose key's pod
/// only stands in for its workload).
#[derive(Debug, Clone, Copy)]
pub(super) enum Who<'a> {
    /// The pod of the observation's key.
    Pod(&'a str),
    /// The pods stored with the observation.
    Stored(&'a PodNames),
}
