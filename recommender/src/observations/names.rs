//! The DNS names of an answer, as every part of leash normalizes them.

use std::collections::BTreeSet;
use std::net::IpAddr;

use leash_records::DnsRecord;

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

/// Normalizes a DNS name: lower case, without the trailing dot.
pub fn normalize_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}
