//! Per-pod cache of which names resolved to which IP.
//!
//! **Labelling rule.** An address answer labels its IP with its owner name and with every name
//! that leads to it through the response's CNAME chain, the queried name included: for
//! `api.stripe.test CNAME edge.stripe.test` + `edge.stripe.test A 203.0.113.10`, the IP gets
//! both `api.stripe.test` (what the pod asked for, what a policy author recognises) and
//! `edge.stripe.test` (what actually resolved). Each label expires at the smallest TTL along its
//! path to the address, then stays usable for a grace period, because clients keep using
//! addresses after their TTL (connection pools, long-lived connections).
//!
//! Names are stored lower case without the trailing dot. Only `NOERROR` answers count; give the
//! cache responses [`super::check_response`] returned, so that every name is valid. Entries are
//! keyed by a pod key (the pod UID, or the cgroup path for processes outside pods), so two pods
//! never see each other's answers. Size is bounded per pod and in total; when over a bound the
//! least recently updated (pod, IP) entry goes first.
//!
//! **Names per address** are bounded too (`max_names`, `--dns-max-names-per-address`): a pod can
//! answer itself with any number of names for one address, and each of them would otherwise
//! ride along in every flow record to that address. The entry keeps the name the pod asked for
//! first (the first query name whose answer led to the address), then the most recently
//! answered ones; the least recently answered other name goes first, counted in
//! `dns_names_evicted`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::{AnswerData, DnsResponse};
use crate::metrics::Metrics;

/// Bounds and timing of a [`DnsCache`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsCacheConfig {
    /// How long a name stays usable after its TTL ran out.
    pub grace: Duration,
    /// Maximum IP entries per pod key.
    pub max_per_pod: usize,
    /// Maximum IP entries over all pod keys.
    pub max_total: usize,
    /// Longest CNAME chain followed (guards against loops and hostile chains).
    pub max_chain: usize,
    /// Maximum names per (pod, IP) entry: the names of one flow record.
    pub max_names: usize,
}

impl Default for DnsCacheConfig {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(300),
            max_per_pod: 4096,
            max_total: 65_536,
            max_chain: 16,
            max_names: 16,
        }
    }
}

/// The names of one (pod, IP).
#[derive(Debug)]
struct IpEntry {
    names: BTreeMap<Arc<str>, NameSlot>,
    /// The first query name that led to this IP: kept whatever else arrives, until it expires.
    asked: Option<Arc<str>>,
    seq: u64,
}

/// One name of an [`IpEntry`].
#[derive(Debug, Clone, Copy)]
struct NameSlot {
    /// When the name stops being valid (TTL, before grace).
    expires: DateTime<Utc>,
    /// When an answer last gave this name (the cache's name counter), for eviction.
    answered: u64,
}

#[derive(Debug, Default)]
struct PodEntries {
    by_ip: HashMap<IpAddr, IpEntry>,
    /// Update order of this pod's entries, for per-pod eviction.
    order: BTreeMap<u64, IpAddr>,
}

/// IP → names, per pod key. See the module docs for the labelling rule.
#[derive(Debug)]
pub struct DnsCache {
    config: DnsCacheConfig,
    pods: HashMap<Arc<str>, PodEntries>,
    /// Update order of all entries, for global eviction.
    order: BTreeMap<u64, (Arc<str>, IpAddr)>,
    next_seq: u64,
    /// Counter stamping each name an answer gives (its [`NameSlot::answered`]).
    next_answer: u64,
    metrics: Metrics,
}

impl DnsCache {
    /// An empty cache.
    pub fn new(config: DnsCacheConfig, metrics: Metrics) -> Self {
        Self {
            config: DnsCacheConfig {
                max_per_pod: config.max_per_pod.max(1),
                max_total: config.max_total.max(1),
                max_names: config.max_names.max(1),
                ..config
            },
            pods: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            next_answer: 0,
            metrics,
        }
    }

    /// Number of (pod, IP) entries.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Records the answers of `response`, received at `at` by the pod with `pod_key`.
    pub fn insert(&mut self, pod_key: &str, response: &DnsResponse, at: DateTime<Utc>) {
        if response.rcode != "NOERROR" {
            return;
        }
        // Reverse CNAME edges: target → [(alias, ttl)], to walk from an address's owner back to
        // every name that led to it.
        let mut aliases: HashMap<String, Vec<(String, u32)>> = HashMap::new();
        let query = super::normalize(&response.query);
        for answer in &response.answers {
            if let AnswerData::Cname(target) = &answer.data {
                aliases
                    .entry(super::normalize(target))
                    .or_default()
                    .push((super::normalize(&answer.name), answer.ttl));
            }
        }
        let mut labels: Vec<(IpAddr, Vec<(String, u32)>)> = Vec::new();
        for answer in &response.answers {
            if let AnswerData::Addr(ip) = answer.data {
                labels.push((
                    ip,
                    self.chain(&aliases, super::normalize(&answer.name), answer.ttl),
                ));
            }
        }
        if labels.is_empty() {
            return;
        }
        let pod_key: Arc<str> = match self.pods.get_key_value(pod_key) {
            Some((key, _)) => key.clone(),
            None => Arc::from(pod_key),
        };
        for (ip, names) in labels {
            self.upsert(&pod_key, ip, names, &query, at);
        }
        self.metrics.dns_cache_size.set(self.len() as i64);
    }

    /// `owner` and every alias leading to it, each with the smallest TTL on its path.
    fn chain(
        &self,
        aliases: &HashMap<String, Vec<(String, u32)>>,
        owner: String,
        ttl: u32,
    ) -> Vec<(String, u32)> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut out = Vec::new();
        let mut frontier = vec![(owner, ttl, 0usize)];
        while let Some((name, ttl, depth)) = frontier.pop() {
            if !seen.insert(name.clone()) {
                continue;
            }
            if depth < self.config.max_chain
                && let Some(parents) = aliases.get(&name)
            {
                for (alias, alias_ttl) in parents {
                    frontier.push((alias.clone(), ttl.min(*alias_ttl), depth + 1));
                }
            }
            out.push((name, ttl));
        }
        out
    }

    fn upsert(
        &mut self,
        pod_key: &Arc<str>,
        ip: IpAddr,
        names: Vec<(String, u32)>,
        query: &str,
        at: DateTime<Utc>,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let pod = self.pods.entry(pod_key.clone()).or_default();
        let entry = pod.by_ip.entry(ip).or_insert_with(|| IpEntry {
            names: BTreeMap::new(),
            asked: None,
            seq,
        });
        // Re-stamp the entry as most recently updated.
        pod.order.remove(&entry.seq);
        self.order.remove(&entry.seq);
        entry.seq = seq;
        pod.order.insert(seq, ip);
        self.order.insert(seq, (pod_key.clone(), ip));
        // Each name is stamped in chain order (the address's owner first), so a response that
        // alone brings more than `max_names` names keeps the aliases nearest the question.
        for (name, ttl) in names {
            let expires = at + TimeDelta::seconds(i64::from(ttl));
            let answered = self.next_answer;
            self.next_answer += 1;
            match entry.names.get_mut(name.as_str()) {
                Some(slot) => {
                    slot.expires = slot.expires.max(expires);
                    slot.answered = answered;
                }
                None => {
                    entry
                        .names
                        .insert(Arc::from(name), NameSlot { expires, answered });
                }
            }
        }
        if entry.asked.is_none()
            && let Some((name, _)) = entry.names.get_key_value(query)
        {
            entry.asked = Some(name.clone());
        }
        while entry.names.len() > self.config.max_names {
            let oldest = entry
                .names
                .iter()
                .filter(|(name, _)| entry.asked.as_ref() != Some(name))
                .min_by_key(|(_, slot)| slot.answered)
                .map(|(name, _)| name.clone());
            let Some(oldest) = oldest else { break };
            entry.names.remove(&oldest);
            self.metrics.dns_names_evicted.inc();
        }
        // Per-pod bound, then the global one.
        while pod.by_ip.len() > self.config.max_per_pod {
            let Some((old_seq, old_ip)) = pod.order.pop_first() else {
                break;
            };
            pod.by_ip.remove(&old_ip);
            self.order.remove(&old_seq);
        }
        while self.order.len() > self.config.max_total {
            let Some((_, (old_key, old_ip))) = self.order.pop_first() else {
                break;
            };
            self.remove_entry(&old_key, old_ip);
        }
    }

    fn remove_entry(&mut self, pod_key: &str, ip: IpAddr) {
        if let Some(pod) = self.pods.get_mut(pod_key) {
            if let Some(entry) = pod.by_ip.remove(&ip) {
                pod.order.remove(&entry.seq);
            }
            if pod.by_ip.is_empty() {
                self.pods.remove(pod_key);
            }
        }
    }

    /// The names that resolved to `ip` for `pod_key` and are still valid at `at` (TTL plus
    /// grace): sorted, deduplicated, lower case, without trailing dot.
    pub fn names_for(&self, pod_key: &str, ip: IpAddr, at: DateTime<Utc>) -> Vec<String> {
        let grace = TimeDelta::from_std(self.config.grace).unwrap_or(TimeDelta::MAX);
        let Some(entry) = self.pods.get(pod_key).and_then(|p| p.by_ip.get(&ip)) else {
            return Vec::new();
        };
        entry
            .names
            .iter()
            .filter(|(_, slot)| {
                at <= slot
                    .expires
                    .checked_add_signed(grace)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC)
            })
            .map(|(name, _)| name.to_string())
            .collect()
    }

    /// Drops names (and then entries) whose TTL plus grace ended before `at`; call it
    /// periodically, e.g. on each flush. Returns the number of entries removed.
    pub fn purge(&mut self, at: DateTime<Utc>) -> usize {
        let grace = TimeDelta::from_std(self.config.grace).unwrap_or(TimeDelta::MAX);
        let mut dead = Vec::new();
        for (key, pod) in &mut self.pods {
            for (ip, entry) in &mut pod.by_ip {
                entry.names.retain(|_, slot| {
                    at <= slot
                        .expires
                        .checked_add_signed(grace)
                        .unwrap_or(DateTime::<Utc>::MAX_UTC)
                });
                if entry
                    .asked
                    .as_ref()
                    .is_some_and(|asked| !entry.names.contains_key(asked))
                {
                    entry.asked = None;
                }
                if entry.names.is_empty() {
                    dead.push((key.clone(), *ip, entry.seq));
                }
            }
        }
        for (key, ip, seq) in &dead {
            self.order.remove(seq);
            self.remove_entry(key, *ip);
        }
        self.metrics.dns_cache_size.set(self.len() as i64);
        dead.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_response;
    use super::super::testing::{TestRecord::*, response};
    use super::*;
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::RecordType;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T09:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn secs(s: i64) -> TimeDelta {
        TimeDelta::seconds(s)
    }

    fn stripe() -> DnsResponse {
        parse_response(&response(
            "API.Stripe.test.",
            RecordType::A,
            ResponseCode::NoError,
            &[
                Cname("API.Stripe.test.", "edge.stripe.test.", 300),
                Addr("edge.stripe.test.", ip("203.0.113.10"), 60),
                Addr("edge.stripe.test.", ip("203.0.113.11"), 60),
            ],
        ))
        .unwrap()
    }

    fn cache(grace_secs: u64) -> DnsCache {
        DnsCache::new(
            DnsCacheConfig {
                grace: Duration::from_secs(grace_secs),
                ..DnsCacheConfig::default()
            },
            Metrics::new(),
        )
    }

    #[test]
    fn cname_chain_labels_every_name() {
        let mut c = cache(300);
        c.insert("pod-a", &stripe(), t0());
        assert_eq!(
            c.names_for("pod-a", ip("203.0.113.10"), t0()),
            ["api.stripe.test", "edge.stripe.test"]
        );
        assert_eq!(
            c.names_for("pod-a", ip("203.0.113.11"), t0()),
            ["api.stripe.test", "edge.stripe.test"]
        );
        assert!(c.names_for("pod-a", ip("203.0.113.12"), t0()).is_empty());
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn long_chain_and_aaaa() {
        let r = parse_response(&response(
            "a.test.",
            RecordType::AAAA,
            ResponseCode::NoError,
            &[
                Cname("a.test.", "b.test.", 100),
                Cname("b.test.", "c.test.", 100),
                Addr("c.test.", ip("2001:db8::10"), 100),
            ],
        ))
        .unwrap();
        let mut c = cache(0);
        c.insert("p", &r, t0());
        assert_eq!(
            c.names_for("p", ip("2001:db8::10"), t0()),
            ["a.test", "b.test", "c.test"]
        );
    }

    #[test]
    fn cname_loop_terminates() {
        let r = parse_response(&response(
            "a.test.",
            RecordType::A,
            ResponseCode::NoError,
            &[
                Cname("a.test.", "b.test.", 100),
                Cname("b.test.", "a.test.", 100),
                Addr("a.test.", ip("198.51.100.1"), 100),
            ],
        ))
        .unwrap();
        let mut c = cache(0);
        c.insert("p", &r, t0());
        assert_eq!(
            c.names_for("p", ip("198.51.100.1"), t0()),
            ["a.test", "b.test"]
        );
    }

    #[test]
    fn ttl_then_grace_then_gone() {
        let mut c = cache(300);
        c.insert("p", &stripe(), t0());
        let addr = ip("203.0.113.10");
        // The A record's 60 s bounds both labels (the CNAME's 300 s is longer).
        assert_eq!(c.names_for("p", addr, t0() + secs(60)).len(), 2);
        assert_eq!(
            c.names_for("p", addr, t0() + secs(360)).len(),
            2,
            "within grace"
        );
        assert!(
            c.names_for("p", addr, t0() + secs(361)).is_empty(),
            "after grace"
        );
        // No grace: gone right after the TTL.
        let mut strict = cache(0);
        strict.insert("p", &stripe(), t0());
        assert_eq!(strict.names_for("p", addr, t0() + secs(60)).len(), 2);
        assert!(strict.names_for("p", addr, t0() + secs(61)).is_empty());
    }

    #[test]
    fn shorter_cname_ttl_bounds_alias_only() {
        let r = parse_response(&response(
            "api.test.",
            RecordType::A,
            ResponseCode::NoError,
            &[
                Cname("api.test.", "edge.test.", 10),
                Addr("edge.test.", ip("198.51.100.7"), 100),
            ],
        ))
        .unwrap();
        let mut c = cache(0);
        c.insert("p", &r, t0());
        assert_eq!(
            c.names_for("p", ip("198.51.100.7"), t0() + secs(50)),
            ["edge.test"]
        );
    }

    #[test]
    fn refresh_extends_expiry() {
        let mut c = cache(0);
        c.insert("p", &stripe(), t0());
        c.insert("p", &stripe(), t0() + secs(50));
        assert_eq!(
            c.names_for("p", ip("203.0.113.10"), t0() + secs(100)).len(),
            2
        );
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn pods_never_mix() {
        let mut c = cache(300);
        c.insert("pod-a", &stripe(), t0());
        let other = parse_response(&response(
            "db.internal.test.",
            RecordType::A,
            ResponseCode::NoError,
            &[Addr("db.internal.test.", ip("203.0.113.10"), 60)],
        ))
        .unwrap();
        c.insert("pod-b", &other, t0());
        assert_eq!(
            c.names_for("pod-a", ip("203.0.113.10"), t0()),
            ["api.stripe.test", "edge.stripe.test"]
        );
        assert_eq!(
            c.names_for("pod-b", ip("203.0.113.10"), t0()),
            ["db.internal.test"]
        );
        assert!(c.names_for("pod-c", ip("203.0.113.10"), t0()).is_empty());
    }

    #[test]
    fn errors_and_non_address_answers_add_nothing() {
        let mut c = cache(300);
        let nx = parse_response(&response(
            "x.test.",
            RecordType::A,
            ResponseCode::NXDomain,
            &[Addr("x.test.", ip("198.51.100.9"), 60)],
        ))
        .unwrap();
        c.insert("p", &nx, t0());
        let txt = parse_response(&response(
            "x.test.",
            RecordType::TXT,
            ResponseCode::NoError,
            &[Txt("x.test.", "v", 60)],
        ))
        .unwrap();
        c.insert("p", &txt, t0());
        assert!(c.is_empty());
    }

    #[test]
    fn bounded_per_pod_and_total_oldest_first() {
        let metrics = Metrics::new();
        let mut c = DnsCache::new(
            DnsCacheConfig {
                max_per_pod: 3,
                max_total: 5,
                ..DnsCacheConfig::default()
            },
            metrics.clone(),
        );
        let one = |addr: &'static str| {
            parse_response(&response(
                "n.test.",
                RecordType::A,
                ResponseCode::NoError,
                &[Addr("n.test.", ip(addr), 60)],
            ))
            .unwrap()
        };
        for (i, addr) in [
            "198.51.100.1",
            "198.51.100.2",
            "198.51.100.3",
            "198.51.100.4",
        ]
        .iter()
        .enumerate()
        {
            c.insert("a", &one(addr), t0() + secs(i as i64));
        }
        // Per pod: .1 (oldest) evicted.
        assert!(c.names_for("a", ip("198.51.100.1"), t0()).is_empty());
        assert_eq!(c.names_for("a", ip("198.51.100.4"), t0()), ["n.test"]);
        // Refreshing .2 makes .3 the oldest of pod a.
        c.insert("a", &one("198.51.100.2"), t0() + secs(10));
        for addr in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
            c.insert("b", &one(addr), t0() + secs(20));
        }
        // Total 5 of 6: the globally oldest entry (a's .3) went.
        assert_eq!(c.len(), 5);
        assert_eq!(metrics.dns_cache_size.get(), 5);
        assert!(c.names_for("a", ip("198.51.100.3"), t0()).is_empty());
        assert_eq!(c.names_for("a", ip("198.51.100.4"), t0()), ["n.test"]);
        assert_eq!(c.names_for("a", ip("198.51.100.2"), t0()), ["n.test"]);
        assert_eq!(c.names_for("b", ip("203.0.113.1"), t0()), ["n.test"]);
    }

    /// A response to `query` whose answer gives `owner` the address `addr`.
    fn answer(query: &str, owner: &str, addr: &str, ttl: u32) -> DnsResponse {
        let mut msg = super::super::testing::message(
            "placeholder.test.",
            RecordType::A,
            ResponseCode::NoError,
            &[],
        );
        msg.queries.clear();
        msg.add_query(hickory_proto::op::Query::query(
            super::super::testing::name(query),
            RecordType::A,
        ));
        msg.add_answer(hickory_proto::rr::Record::from_rdata(
            super::super::testing::name(owner),
            ttl,
            hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A(addr.parse().unwrap())),
        ));
        parse_response(&msg.to_vec().unwrap()).unwrap()
    }

    fn bounded(max_names: usize, metrics: &Metrics) -> DnsCache {
        DnsCache::new(
            DnsCacheConfig {
                max_names,
                ..DnsCacheConfig::default()
            },
            metrics.clone(),
        )
    }

    #[test]
    fn names_per_address_keep_the_first_asked_then_the_most_recent() {
        let metrics = Metrics::new();
        let mut c = bounded(4, &metrics);
        let addr = ip("203.0.113.20");
        for i in 0..10 {
            let n = format!("n{i}.flood.test.");
            c.insert("p", &answer(&n, &n, "203.0.113.20", 60), t0() + secs(i));
        }
        // n0 was asked first; n7..n9 are the most recent.
        assert_eq!(
            c.names_for("p", addr, t0()),
            [
                "n0.flood.test",
                "n7.flood.test",
                "n8.flood.test",
                "n9.flood.test"
            ]
        );
        assert_eq!(metrics.dns_names_evicted.get(), 6);
        // Answering n7 again makes it the most recent: n8 goes next.
        c.insert(
            "p",
            &answer("n7.flood.test.", "n7.flood.test.", "203.0.113.20", 60),
            t0() + secs(20),
        );
        c.insert(
            "p",
            &answer("n10.flood.test.", "n10.flood.test.", "203.0.113.20", 60),
            t0() + secs(21),
        );
        assert_eq!(
            c.names_for("p", addr, t0()),
            [
                "n0.flood.test",
                "n10.flood.test",
                "n7.flood.test",
                "n9.flood.test"
            ]
        );
        assert_eq!(metrics.dns_names_evicted.get(), 7);
        // Other addresses and pods have their own bound.
        c.insert(
            "q",
            &answer("other.test.", "other.test.", "203.0.113.20", 60),
            t0(),
        );
        assert_eq!(c.names_for("q", addr, t0()), ["other.test"]);
    }

    #[test]
    fn the_asked_name_is_the_first_query_that_led_to_the_address() {
        let metrics = Metrics::new();
        let mut c = bounded(2, &metrics);
        let addr = ip("203.0.113.21");
        // A question whose answer is about another name does not pin anything.
        c.insert("p", &answer("x.test.", "y.test.", "203.0.113.21", 60), t0());
        c.insert("p", &answer("z.test.", "z.test.", "203.0.113.21", 60), t0());
        c.insert("p", &answer("w.test.", "w.test.", "203.0.113.21", 60), t0());
        c.insert("p", &answer("v.test.", "v.test.", "203.0.113.21", 60), t0());
        assert_eq!(c.names_for("p", addr, t0()), ["v.test", "z.test"]);
        // Once the asked name expires and is purged, the next question that leads here is kept.
        let mut c = bounded(2, &metrics);
        c.insert("p", &answer("a.test.", "a.test.", "203.0.113.21", 10), t0());
        c.insert(
            "p",
            &answer("b.test.", "b.test.", "203.0.113.21", 1000),
            t0(),
        );
        c.purge(t0() + secs(10 + 300 + 1));
        assert_eq!(c.names_for("p", addr, t0()), ["b.test"]);
        c.insert(
            "p",
            &answer("c.test.", "c.test.", "203.0.113.21", 1000),
            t0(),
        );
        c.insert(
            "p",
            &answer("d.test.", "d.test.", "203.0.113.21", 1000),
            t0(),
        );
        c.insert(
            "p",
            &answer("e.test.", "e.test.", "203.0.113.21", 1000),
            t0(),
        );
        // c.test is the new asked name; b.test, older than d.test and e.test, went first.
        assert_eq!(c.names_for("p", addr, t0()), ["c.test", "e.test"]);
    }

    #[test]
    fn default_bound_is_sixteen_names() {
        let metrics = Metrics::new();
        let mut c = DnsCache::new(DnsCacheConfig::default(), metrics.clone());
        for i in 0..2000 {
            let n = format!("n{i}.flood.test.");
            c.insert("p", &answer(&n, &n, "203.0.113.22", 60), t0());
        }
        let names = c.names_for("p", ip("203.0.113.22"), t0());
        assert_eq!(names.len(), 16);
        assert!(names.contains(&"n0.flood.test".to_owned()));
        assert!(names.contains(&"n1999.flood.test".to_owned()));
        assert_eq!(metrics.dns_names_evicted.get(), 2000 - 16);
    }

    #[test]
    fn purge_removes_expired_entries() {
        let metrics = Metrics::new();
        let mut c = DnsCache::new(
            DnsCacheConfig {
                grace: Duration::from_secs(10),
                ..DnsCacheConfig::default()
            },
            metrics.clone(),
        );
        c.insert("p", &stripe(), t0());
        assert_eq!(c.purge(t0() + secs(70)), 0);
        assert_eq!(c.purge(t0() + secs(71)), 2);
        assert!(c.is_empty());
        assert_eq!(metrics.dns_cache_size.get(), 0);
        // Still usable after a purge.
        c.insert("p", &stripe(), t0() + secs(100));
        assert_eq!(c.len(), 2);
    }
}
