//! The DNS names of an answer, as every part of leash normalizes them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use leash_records::DnsRecord;

use crate::evidence::AddressSeen;

/// The names a DNS answer gives each address, as (name, address) pairs: every A/AAAA
/// address gets the query name, the owner names of the answer's CNAME records (the chain),
/// and its own record's owner name. Addresses are canonical ([`IpAddr::to_canonical`]: an
/// IPv4-mapped IPv6 address is the IPv4 address), names normalized ([`normalize_name`]);
/// answers whose data is not an address are ignored.
pub fn answer_names(d: &DnsRecord) -> BTreeSet<(String, IpAddr)> {
    let mut chain: BTreeSet<String> = BTreeSet::new();
    chain.insert(normalize_name(&d.query));
    for a in &d.answers {
        if a.rtype.eq_ignore_ascii_case("CNAME") {
            chain.insert(normalize_name(&a.name));
        }
    }
    chain.retain(|n| !n.is_empty());
    let mut out = BTreeSet::new();
    for a in &d.answers {
        if (a.rtype.eq_ignore_ascii_case("A") || a.rtype.eq_ignore_ascii_case("AAAA"))
            && let Ok(ip) = a.data.parse::<IpAddr>()
        {
            let ip = ip.to_canonical();
            out.extend(chain.iter().map(|n| (n.clone(), ip)));
            out.insert((normalize_name(&a.name), ip));
        }
    }
    out
}

/// The addresses a DNS answer gives its query name, each with the answer's time, the TTL of
/// its address record and the CNAME chain followed from the query name to that record's owner
/// (without the query name). Address records the chain from the query name does not reach
/// (answers a resolver added) still count, with the chain up to where it stopped. Addresses
/// are canonical and names normalized as in [`answer_names`]; an address given twice keeps
/// the larger TTL.
pub fn answer_addresses(d: &DnsRecord) -> BTreeMap<IpAddr, AddressSeen> {
    let query = normalize_name(&d.query);
    let mut cname: BTreeMap<String, String> = BTreeMap::new();
    for a in &d.answers {
        if a.rtype.eq_ignore_ascii_case("CNAME") {
            cname
                .entry(normalize_name(&a.name))
                .or_insert_with(|| normalize_name(&a.data));
        }
    }
    // Follow the chain from the query name, at most once per name (a loop ends it).
    let mut chain: Vec<String> = Vec::new();
    let mut at = query.clone();
    while let Some(next) = cname.get(&at) {
        if next == &query || chain.contains(next) {
            break;
        }
        chain.push(next.clone());
        at.clone_from(next);
    }
    let mut out: BTreeMap<IpAddr, AddressSeen> = BTreeMap::new();
    for a in &d.answers {
        if !(a.rtype.eq_ignore_ascii_case("A") || a.rtype.eq_ignore_ascii_case("AAAA")) {
            continue;
        }
        let Ok(ip) = a.data.parse::<IpAddr>() else {
            continue;
        };
        let owner = normalize_name(&a.name);
        let upto = if owner == query {
            0
        } else {
            chain
                .iter()
                .position(|n| *n == owner)
                .map_or(chain.len(), |i| i + 1)
        };
        let seen = AddressSeen {
            first_seen: d.time,
            last_seen: d.time,
            ttl: a.ttl,
            chain: chain[..upto].to_vec(),
        };
        match out.get_mut(&ip.to_canonical()) {
            Some(have) => have.merge(&seen),
            None => {
                out.insert(ip.to_canonical(), seen);
            }
        }
    }
    out
}

/// Normalizes a DNS name: lower case, without the trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use leash_records::{DnsAnswer, DnsRecord};

    use super::*;

    fn answer(name: &str, rtype: &str, data: &str, ttl: u32) -> DnsAnswer {
        DnsAnswer {
            name: name.into(),
            rtype: rtype.into(),
            data: data.into(),
            ttl,
        }
    }

    fn record(query: &str, answers: Vec<DnsAnswer>) -> DnsRecord {
        DnsRecord {
            node: "n".into(),
            pod: None,
            cgroup: String::new(),
            server: "198.51.100.53".parse().expect("ip"),
            query: query.into(),
            qtype: "A".into(),
            rcode: "NOERROR".into(),
            answers,
            time: "2026-12-07T10:00:00Z".parse().expect("time"),
        }
    }

    #[test]
    fn addresses_carry_ttl_and_the_cname_chain_from_the_query() {
        let d = record(
            "Files.Example.test.",
            vec![
                answer("files.example.test.", "CNAME", "edge.cdn.test.", 300),
                answer("edge.cdn.test.", "CNAME", "pop7.cdn.test.", 60),
                answer("pop7.cdn.test.", "A", "203.0.113.7", 20),
                answer("pop7.cdn.test.", "A", "203.0.113.8", 30),
            ],
        );
        let got = answer_addresses(&d);
        let ips: Vec<IpAddr> = got.keys().copied().collect();
        assert_eq!(
            ips,
            vec![
                "203.0.113.7".parse::<IpAddr>().expect("ip"),
                "203.0.113.8".parse().expect("ip")
            ]
        );
        let seen = &got[&ips[0]];
        assert_eq!(seen.ttl, 20);
        assert_eq!(seen.chain, vec!["edge.cdn.test", "pop7.cdn.test"]);
        assert_eq!(seen.first_seen, d.time);
        assert_eq!(got[&ips[1]].ttl, 30);
    }

    #[test]
    fn a_direct_answer_has_no_chain_and_a_cname_loop_ends() {
        let d = record(
            "a.test.",
            vec![
                answer("a.test.", "CNAME", "b.test.", 5),
                answer("b.test.", "CNAME", "a.test.", 5),
                answer("a.test.", "A", "198.51.100.1", 9),
                answer("a.test.", "AAAA", "::ffff:198.51.100.2", 9),
            ],
        );
        let got = answer_addresses(&d);
        let one = &got[&"198.51.100.1".parse::<IpAddr>().expect("ip")];
        assert!(one.chain.is_empty(), "{one:?}");
        // IPv4-mapped answers are the IPv4 address.
        assert!(got.contains_key(&"198.51.100.2".parse::<IpAddr>().expect("ip")));
    }

    #[test]
    fn merging_keeps_the_latest_ttl_and_the_widest_times() {
        let t = |s: &str| s.parse().expect("time");
        let mut a = AddressSeen {
            first_seen: t("2026-12-07T10:00:00Z"),
            last_seen: t("2026-12-07T11:00:00Z"),
            ttl: 60,
            chain: vec!["x.test".into()],
        };
        let b = AddressSeen {
            first_seen: t("2026-12-07T09:00:00Z"),
            last_seen: t("2026-12-07T10:30:00Z"),
            ttl: 5,
            chain: Vec::new(),
        };
        let mut b2 = b.clone();
        b2.merge(&a);
        a.merge(&b);
        assert_eq!(a, b2, "merging is order independent");
        assert_eq!(a.first_seen, t("2026-12-07T09:00:00Z"));
        assert_eq!(a.last_seen, t("2026-12-07T11:00:00Z"));
        assert_eq!(a.ttl, 60);
        assert_eq!(a.chain, vec!["x.test".to_owned()]);
    }
}
