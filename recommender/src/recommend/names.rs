//! External rules grouped by DNS name: per name a workload's external destinations answered
//! for, the addresses it had in the window, their churn, and how many of them the rules allow.
//!
//! Names are the query names of the workload's DNS answers ([`Observations::history`]) and the
//! names of its flows' evidence (names the agent saw, and every name an answer gave the
//! address: [`Observations::names_by_ip`]). A name is listed when it is tied to an address an
//! external rule of the workload was built from: its answers gave such an address, or the
//! address's flows carry the name. CNAME targets on the chain of a listed query name are not
//! listed apart (the query name is what the pod asked for; the chain is in each address's
//! history). Addresses of external rules that no DNS answer named are listed under "no name"
//! ([`NameChurn::name`] `None`).
//!
//! "New" is relative to the window's end ([`super::previous::window_end`], the last time
//! anything of the observations was seen), never the wall clock, so that the same
//! observations give the same report: an address is new in the last day (week) when it was
//! first seen less than 24 hours (7 days) before that end.
//!
//! Pure: values in, values out.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use leash_records::Protocol;

use super::model::{EgressPeer, EgressRule, PolicySpec, RuleKind};
use crate::classify::{Class, Classifier, DestinationPeer};
use crate::cluster::{Cluster, WorkloadId};
use crate::observations::{History, Observations, merge_seen};

/// The names of every policy's external rules ([`churn`]), and the time "new" is counted
/// back from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Names {
    /// The window's end ([`super::previous::window_end`]); `None` without observations.
    pub window_end: Option<DateTime<Utc>>,
    /// Per workload with external rules, its names ([`name_churn`]'s order).
    pub workloads: BTreeMap<WorkloadId, Vec<NameChurn>>,
}

impl Names {
    /// The names of the workloads `keep` keeps (a namespace's part of a recommendation).
    pub fn only(&self, keep: impl Fn(WorkloadId) -> bool) -> Names {
        Names {
            window_end: self.window_end,
            workloads: self
                .workloads
                .iter()
                .filter(|(w, _)| keep(**w))
                .map(|(w, n)| (*w, n.clone()))
                .collect(),
        }
    }
}

/// One DNS name of a workload's external rules, or its addresses no DNS answer named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameChurn {
    /// The name (normalized: lower case, no trailing dot); `None` for the addresses no DNS
    /// answer named. Tenant-controlled: escape it in every output.
    pub name: Option<String>,
    /// The external rules that allow the name's observed addresses: 1-based positions in
    /// the workload's policy's rules, sorted.
    pub rules: Vec<usize>,
    /// Every address of the name in the window.
    pub addresses: BTreeMap<IpAddr, NameAddress>,
    /// Addresses first seen less than a day before the window's end.
    pub new_last_day: usize,
    /// Addresses first seen less than a week before the window's end.
    pub new_last_week: usize,
    /// How many of [`NameChurn::addresses`] the blocks of [`NameChurn::rules`] contain.
    pub covered: usize,
}

impl NameChurn {
    /// The churn: distinct addresses over the window.
    pub fn distinct(&self) -> usize {
        self.addresses.len()
    }
}

/// One address of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddress {
    /// The first DNS answer that gave it to the workload; for an address known only from
    /// flows (a name from flows' evidence, or no name), its first flow.
    pub first_seen: DateTime<Utc>,
    /// The last such answer (or flow).
    pub last_seen: DateTime<Utc>,
    /// The TTL of the latest answer; `None` when only flows show the address.
    pub ttl: Option<u32>,
    /// The CNAME chain of the latest answer, from the query name (excluded) to the owner
    /// of the address record.
    pub chain: Vec<String>,
    /// Whether the blocks of the name's rules contain it.
    pub covered: bool,
}

/// An external address a workload's flows reached: when, by which names, on which ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reached {
    /// The first flow.
    pub first_seen: DateTime<Utc>,
    /// The last flow.
    pub last_seen: DateTime<Utc>,
    /// The names of its flows' evidence and every name a DNS answer gave the address.
    pub names: BTreeSet<String>,
    /// The (protocol, port) pairs reached, as the policy must allow them.
    pub ports: BTreeSet<(Protocol, u16)>,
}

/// The names of every policy's external rules: for each policy, the external addresses its
/// workload's pods reached (classified as the rules were, so that a Service with external
/// endpoints counts its endpoints) and the address history of the names its pods asked for,
/// grouped by [`name_churn`]. Workloads without external rules have no entry.
pub fn churn(
    cluster: &Cluster,
    obs: &Observations,
    classifier: &mut Classifier<'_>,
    policies: &[PolicySpec],
) -> Names {
    let window_end = super::previous::window_end(obs);
    let mut out = Names {
        window_end,
        workloads: BTreeMap::new(),
    };
    let with_external: BTreeMap<WorkloadId, &PolicySpec> = policies
        .iter()
        .filter(|p| p.rules.iter().any(|r| blocks(r).next().is_some()))
        .map(|p| (p.workload, p))
        .collect();
    if with_external.is_empty() {
        return out;
    }
    let workload = |pod| {
        let p = cluster.pods.get(pod)?;
        let w = cluster.workload_of(pod)?;
        (!p.host_network && with_external.contains_key(&w)).then_some(w)
    };
    let mut reached: BTreeMap<WorkloadId, BTreeMap<IpAddr, Reached>> = BTreeMap::new();
    // In the map's order: what is folded below (earliest, latest, unions) does not depend on
    // it, nor does a classification (the classifier only caches them).
    for (key, ev) in &obs.flows {
        let Some(w) = workload(key.pod) else {
            continue;
        };
        let targets = match classifier.classify(key.dst, key.port, key.protocol) {
            Class::Direct(t) => vec![t],
            Class::Service { targets, .. } => targets,
            Class::Dns(_) | Class::Unresolved(_) => Vec::new(),
        };
        for t in targets {
            let DestinationPeer::External(ip) = t.peer else {
                continue;
            };
            let names = ev
                .names
                .iter()
                .chain(obs.names_by_ip.get(&ip).into_iter().flatten())
                .cloned();
            let r = reached
                .entry(w)
                .or_default()
                .entry(ip)
                .or_insert_with(|| Reached {
                    first_seen: ev.first_seen,
                    last_seen: ev.last_seen,
                    names: BTreeSet::new(),
                    ports: BTreeSet::new(),
                });
            r.first_seen = r.first_seen.min(ev.first_seen);
            r.last_seen = r.last_seen.max(ev.last_seen);
            r.names.extend(names);
            r.ports.insert((t.protocol, t.port));
        }
    }
    let mut histories: BTreeMap<WorkloadId, BTreeMap<String, History>> = BTreeMap::new();
    for ((pod, name), history) in &obs.history {
        let Some(w) = workload(*pod) else {
            continue;
        };
        let mine = histories
            .entry(w)
            .or_default()
            .entry(name.clone())
            .or_default();
        for (ip, seen) in history {
            merge_seen(mine, *ip, seen);
        }
    }
    let none = BTreeMap::new();
    for (w, p) in with_external {
        let names = name_churn(
            window_end,
            &p.rules,
            reached.get(&w).unwrap_or(&none),
            histories.get(&w).unwrap_or(&BTreeMap::new()),
        );
        if !names.is_empty() {
            out.workloads.insert(w, names);
        }
    }
    out
}

/// One workload's names ([module docs](self)): `rules` its policy's rules, `reached` the
/// external addresses its flows reached, `history` the addresses of each name it asked for.
/// Sorted by name, "no name" last.
pub fn name_churn(
    window_end: Option<DateTime<Utc>>,
    rules: &[EgressRule],
    reached: &BTreeMap<IpAddr, Reached>,
    history: &BTreeMap<String, History>,
) -> Vec<NameChurn> {
    // The rules (1-based) that allow each reached address on each of its ports.
    let allowing = |ip: IpAddr, ports: &BTreeSet<(Protocol, u16)>| -> BTreeSet<usize> {
        rules
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                contains(r, ip)
                    && ports.iter().any(|&(proto, port)| {
                        r.ports
                            .iter()
                            .any(|p| p.protocol == proto && p.port <= port && port <= p.last())
                    })
            })
            .map(|(i, _)| i + 1)
            .collect()
    };
    let reached: BTreeMap<IpAddr, (&Reached, BTreeSet<usize>)> = reached
        .iter()
        .map(|(ip, r)| (*ip, (r, allowing(*ip, &r.ports))))
        .filter(|(_, (_, rules))| !rules.is_empty())
        .collect();
    let mut out = Vec::new();
    let mut listed: BTreeSet<&str> = BTreeSet::new();
    let mut answered: BTreeSet<IpAddr> = BTreeSet::new();
    for (name, h) in history {
        // A query answered without addresses (NXDOMAIN, another type) is no history.
        if h.is_empty() {
            continue;
        }
        let tied: Vec<&BTreeSet<usize>> = reached
            .iter()
            .filter(|(ip, (r, _))| h.contains_key(ip) || r.names.contains(name))
            .map(|(_, (_, rules))| rules)
            .collect();
        if tied.is_empty() {
            continue;
        }
        listed.insert(name);
        for seen in h.values() {
            listed.extend(seen.chain.iter().map(String::as_str));
        }
        answered.extend(h.keys().copied());
        let addresses = h.iter().map(|(ip, s)| {
            (
                *ip,
                (s.first_seen, s.last_seen, Some(s.ttl), s.chain.clone()),
            )
        });
        out.push(entry(
            window_end,
            rules,
            Some(name.clone()),
            tied,
            addresses,
        ));
    }
    // Names only flows show (no answer of this workload asked for them in the window).
    let mut flow_names: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
    for (ip, (r, _)) in &reached {
        for n in &r.names {
            if !listed.contains(n.as_str()) {
                flow_names.entry(n).or_default().push(*ip);
            }
        }
    }
    let from_flows = |ips: &[IpAddr]| -> Vec<(IpAddr, Seen)> {
        ips.iter()
            .filter_map(|ip| {
                let (r, _) = reached.get(ip)?;
                Some((*ip, (r.first_seen, r.last_seen, None, Vec::new())))
            })
            .collect()
    };
    for (name, ips) in flow_names {
        let tied = ips.iter().filter_map(|ip| reached.get(ip).map(|(_, r)| r));
        let tied: Vec<&BTreeSet<usize>> = tied.collect();
        out.push(entry(
            window_end,
            rules,
            Some(name.to_owned()),
            tied,
            from_flows(&ips),
        ));
    }
    // Names of answers and names of flows, in one order.
    out.sort_by(|a, b| a.name.cmp(&b.name));
    let unnamed: Vec<IpAddr> = reached
        .iter()
        .filter(|(ip, (r, _))| r.names.is_empty() && !answered.contains(ip))
        .map(|(ip, _)| *ip)
        .collect();
    if !unnamed.is_empty() {
        let tied = unnamed
            .iter()
            .filter_map(|ip| reached.get(ip).map(|(_, r)| r));
        let tied: Vec<&BTreeSet<usize>> = tied.collect();
        out.push(entry(window_end, rules, None, tied, from_flows(&unnamed)));
    }
    out
}

/// What is known of one address: first and last seen, TTL, chain.
type Seen = (DateTime<Utc>, DateTime<Utc>, Option<u32>, Vec<String>);

/// One name's entry: its rules (the union of `tied`), its addresses with whether those rules
/// contain them, and the counts.
fn entry(
    window_end: Option<DateTime<Utc>>,
    rules: &[EgressRule],
    name: Option<String>,
    tied: Vec<&BTreeSet<usize>>,
    addresses: impl IntoIterator<Item = (IpAddr, Seen)>,
) -> NameChurn {
    let mine: BTreeSet<usize> = tied.into_iter().flatten().copied().collect();
    let addresses: BTreeMap<IpAddr, NameAddress> = addresses
        .into_iter()
        .map(|(ip, (first_seen, last_seen, ttl, chain))| {
            let covered = mine
                .iter()
                .filter_map(|i| rules.get(i - 1))
                .any(|r| contains(r, ip));
            (
                ip,
                NameAddress {
                    first_seen,
                    last_seen,
                    ttl,
                    chain,
                    covered,
                },
            )
        })
        .collect();
    let new_since = |d: Duration| match window_end {
        Some(end) => addresses
            .values()
            .filter(|a| a.first_seen > end - d)
            .count(),
        None => 0,
    };
    NameChurn {
        name,
        rules: mine.into_iter().collect(),
        new_last_day: new_since(Duration::days(1)),
        new_last_week: new_since(Duration::days(7)),
        covered: addresses.values().filter(|a| a.covered).count(),
        addresses,
    }
}

/// The ipBlocks of an external rule (or of a previous proposal's rule kept), none for others.
fn blocks(r: &EgressRule) -> impl Iterator<Item = (&ipnet::IpNet, &[ipnet::IpNet])> {
    let external = matches!(r.kind, RuleKind::External | RuleKind::Previous);
    r.peers.iter().filter_map(move |p| match p {
        EgressPeer::Block { cidr, except, .. } if external => Some((cidr, except.as_slice())),
        _ => None,
    })
}

/// Whether a rule's blocks allow `ip` (inside a block and none of its exceptions).
fn contains(r: &EgressRule, ip: IpAddr) -> bool {
    blocks(r).any(|(cidr, except)| cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evidence::AddressSeen;
    use crate::ports::PortRange;
    use crate::recommend::RuleEvidence;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap_or_default()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse()
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    fn rule(kind: RuleKind, cidrs: &[&str], except: &[&str], port: u16) -> EgressRule {
        let net = |s: &&str| s.parse::<ipnet::IpNet>().unwrap_or_default();
        EgressRule::new(
            kind,
            cidrs
                .iter()
                .map(|c| EgressPeer::Block {
                    cidr: net(c),
                    except: except.iter().map(net).collect(),
                    unobserved: 0,
                })
                .collect(),
            vec![PortRange {
                protocol: Protocol::Tcp,
                port,
                end_port: None,
                unobserved: 0,
            }],
            RuleEvidence::default(),
        )
    }

    fn reached(at: &str, names: &[&str], port: u16) -> Reached {
        Reached {
            first_seen: t(at),
            last_seen: t(at),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            ports: [(Protocol::Tcp, port)].into(),
        }
    }

    fn seen(first: &str, last: &str, chain: &[&str]) -> AddressSeen {
        AddressSeen {
            first_seen: t(first),
            last_seen: t(last),
            ttl: 30,
            chain: chain.iter().map(|n| (*n).to_owned()).collect(),
        }
    }

    const END: &str = "2026-11-22T00:00:00Z";

    /// A name that moved: five addresses over two weeks, three reached and allowed, two
    /// answered but not yet reached (not covered); new in the last day and week counted back
    /// from the window's end.
    #[test]
    fn churn_new_addresses_and_coverage() {
        let rules = [
            rule(RuleKind::Dns, &[], &[], 53),
            rule(
                RuleKind::External,
                &["203.0.113.10/31", "203.0.113.12/32"],
                &["203.0.113.11/32"],
                443,
            ),
        ];
        let history: BTreeMap<String, History> = [(
            "api.stripe.test".to_owned(),
            History::from([
                (ip("203.0.113.10"), seen("2026-11-08T00:00:00Z", END, &[])),
                // Excepted from the block: answered, not allowed.
                (
                    ip("203.0.113.11"),
                    seen("2026-11-21T00:00:01Z", END, &["edge.cdn.test"]),
                ),
                (
                    ip("203.0.113.12"),
                    seen("2026-11-15T00:00:01Z", END, &["edge.cdn.test"]),
                ),
                // Exactly a week before the end: not new in the week.
                (ip("203.0.113.13"), seen("2026-11-15T00:00:00Z", END, &[])),
                (ip("203.0.113.14"), seen("2026-11-21T12:00:00Z", END, &[])),
            ]),
        )]
        .into();
        let reached = BTreeMap::from([
            (ip("203.0.113.10"), reached(END, &["api.stripe.test"], 443)),
            (
                ip("203.0.113.12"),
                reached(END, &["api.stripe.test", "edge.cdn.test"], 443),
            ),
        ]);
        let out = name_churn(Some(t(END)), &rules, &reached, &history);
        assert_eq!(
            out.len(),
            1,
            "the CNAME target is not listed apart: {out:?}"
        );
        let n = &out[0];
        assert_eq!(n.name.as_deref(), Some("api.stripe.test"));
        assert_eq!(n.rules, [2]);
        assert_eq!(n.distinct(), 5);
        assert_eq!((n.new_last_day, n.new_last_week), (2, 3));
        assert_eq!(n.covered, 2, "203.0.113.10 and .12; .11 is excepted");
        let covered: Vec<IpAddr> = n
            .addresses
            .iter()
            .filter(|(_, a)| a.covered)
            .map(|(ip, _)| *ip)
            .collect();
        assert_eq!(covered, [ip("203.0.113.10"), ip("203.0.113.12")]);
        assert_eq!(n.addresses[&ip("203.0.113.12")].chain, ["edge.cdn.test"]);
        assert_eq!(n.addresses[&ip("203.0.113.12")].ttl, Some(30));
        // Without a window end nothing counts as new.
        let out = name_churn(None, &rules, &reached, &history);
        assert_eq!((out[0].new_last_day, out[0].new_last_week), (0, 0));
    }

    /// A namespace's part keeps its workloads' names and the window's end.
    #[test]
    fn only_keeps_the_workloads_asked_for() {
        let one = |name: &str| NameChurn {
            name: Some(name.to_owned()),
            rules: vec![1],
            addresses: BTreeMap::new(),
            new_last_day: 0,
            new_last_week: 0,
            covered: 0,
        };
        let names = Names {
            window_end: Some(t(END)),
            workloads: [(1, vec![one("a.test")]), (2, vec![one("b.test")])].into(),
        };
        let part = names.only(|w| w == 2);
        assert_eq!(part.window_end, Some(t(END)));
        assert_eq!(part.workloads.keys().copied().collect::<Vec<_>>(), [2]);
        assert_eq!(part.workloads[&2], [one("b.test")]);
    }

    /// Addresses no answer named are "no name", last; names only flows carry are listed with
    /// the flows' times, sorted among the names of answers; a name whose addresses no
    /// external rule allows is not listed.
    #[test]
    fn no_name_flow_names_and_unrelated_names() {
        let rules = [
            rule(RuleKind::External, &["198.51.100.0/30"], &[], 443),
            rule(RuleKind::External, &["203.0.113.20/32"], &[], 8443),
        ];
        let history: BTreeMap<String, History> = [
            (
                // Resolved, never reached through an external rule.
                "db.shop.svc.cluster.local".to_owned(),
                History::from([(ip("10.96.0.20"), seen(END, END, &[]))]),
            ),
            (
                "web.billing.test".to_owned(),
                History::from([(ip("198.51.100.1"), seen(END, END, &[]))]),
            ),
        ]
        .into();
        let reached = BTreeMap::from([
            (ip("198.51.100.1"), reached(END, &["web.billing.test"], 443)),
            (
                ip("198.51.100.2"),
                reached("2026-11-01T00:00:00Z", &[], 443),
            ),
            (ip("198.51.100.3"), reached(END, &[], 443)),
            (ip("203.0.113.20"), reached(END, &["legacy.test"], 8443)),
            // Reached on a port no rule allows: not an address of these rules.
            (ip("203.0.113.99"), reached(END, &[], 22)),
        ]);
        let out = name_churn(Some(t(END)), &rules, &reached, &history);
        let names: Vec<Option<&str>> = out.iter().map(|n| n.name.as_deref()).collect();
        assert_eq!(names, [Some("legacy.test"), Some("web.billing.test"), None]);
        let legacy = &out[0];
        assert_eq!(legacy.rules, [2]);
        assert_eq!(legacy.addresses[&ip("203.0.113.20")].ttl, None);
        assert_eq!((legacy.covered, legacy.distinct()), (1, 1));
        let none = &out[2];
        assert_eq!(none.rules, [1]);
        assert_eq!(
            none.addresses.keys().copied().collect::<Vec<_>>(),
            [ip("198.51.100.2"), ip("198.51.100.3")]
        );
        assert_eq!(
            (none.covered, none.new_last_day, none.new_last_week),
            (2, 1, 1)
        );
    }
}
