//! Interval sets of the reachability engine: ports per protocol, and addresses per IP family.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use leash_records::Protocol;

/// The protocols NetworkPolicy knows, in the order [`PortSet`] stores them.
pub const PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

fn index(p: Protocol) -> usize {
    match p {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
        Protocol::Sctp => 2,
    }
}

/// A set of (protocol, port) pairs: per protocol, sorted disjoint inclusive ranges, with
/// adjacent ranges merged (so equal sets have equal representations).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PortSet([Vec<(u16, u16)>; 3]);

impl PortSet {
    /// No port of any protocol.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Every port (0 included, as an absent `ports` or `port` matches it) of every protocol.
    pub fn full() -> Self {
        Self([
            vec![(0, u16::MAX)],
            vec![(0, u16::MAX)],
            vec![(0, u16::MAX)],
        ])
    }

    /// Whether the set holds nothing.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Vec::is_empty)
    }

    /// Whether the set holds every port of every protocol.
    pub fn is_full(&self) -> bool {
        self.0.iter().all(|v| v.as_slice() == [(0, u16::MAX)])
    }

    /// Adds the ports `lo..=hi` of `protocol`.
    pub fn add(&mut self, protocol: Protocol, lo: u16, hi: u16) {
        let v = &mut self.0[index(protocol)];
        v.push((lo, hi));
        normalize(v);
    }

    /// Adds every port of `protocol`.
    pub fn add_protocol(&mut self, protocol: Protocol) {
        self.0[index(protocol)] = vec![(0, u16::MAX)];
    }

    /// Adds every pair of `other`.
    pub fn union_with(&mut self, other: &PortSet) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            if b.is_empty() {
                continue;
            }
            a.extend_from_slice(b);
            normalize(a);
        }
    }

    /// The pairs in both sets.
    pub fn intersect(&self, other: &PortSet) -> PortSet {
        let mut out = PortSet::empty();
        for (i, (a, b)) in self.0.iter().zip(&other.0).enumerate() {
            let (mut x, mut y) = (0, 0);
            while x < a.len() && y < b.len() {
                let lo = a[x].0.max(b[y].0);
                let hi = a[x].1.min(b[y].1);
                if lo <= hi {
                    out.0[i].push((lo, hi));
                }
                if a[x].1 < b[y].1 {
                    x += 1;
                } else {
                    y += 1;
                }
            }
        }
        out
    }

    /// The pairs of `self` not in `other`.
    pub fn minus(&self, other: &PortSet) -> PortSet {
        let mut out = PortSet::empty();
        for (i, (a, b)) in self.0.iter().zip(&other.0).enumerate() {
            for &(lo, hi) in a {
                // Walk the ranges of `b` that overlap lo..=hi, keeping the gaps.
                let mut cur = u32::from(lo);
                let start = b.partition_point(|r| r.1 < lo);
                for &(blo, bhi) in &b[start..] {
                    if blo > hi {
                        break;
                    }
                    if u32::from(blo) > cur {
                        out.0[i].push((to_port(cur), blo - 1));
                    }
                    cur = u32::from(bhi) + 1;
                }
                if cur <= u32::from(hi) {
                    out.0[i].push((to_port(cur), hi));
                }
            }
        }
        out
    }

    /// Every maximal range, as (protocol, first, last), in protocol then port order.
    pub fn ranges(&self) -> impl Iterator<Item = (Protocol, u16, u16)> + '_ {
        PROTOCOLS
            .iter()
            .zip(&self.0)
            .flat_map(|(p, v)| v.iter().map(move |&(lo, hi)| (*p, lo, hi)))
    }
}

/// A port from a `u32` known to be at most `u16::MAX`.
fn to_port(x: u32) -> u16 {
    u16::try_from(x).unwrap_or(u16::MAX)
}

fn normalize(v: &mut Vec<(u16, u16)>) {
    v.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(v.len());
    for &(lo, hi) in v.iter() {
        match out.last_mut() {
            Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    *v = out;
}

/// An IP family; addresses of each family are numbers in their own space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// IPv4: 0 ..= 2^32 - 1.
    V4,
    /// IPv6: 0 ..= 2^128 - 1.
    V6,
}

impl Family {
    /// Both families, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// The last address of the family's space.
    pub fn max(self) -> u128 {
        match self {
            Family::V4 => u128::from(u32::MAX),
            Family::V6 => u128::MAX,
        }
    }

    /// 0 for IPv4, 1 for IPv6 (to index per-family arrays).
    pub fn index(self) -> usize {
        match self {
            Family::V4 => 0,
            Family::V6 => 1,
        }
    }
}

/// An address as (family, number).
pub fn key(ip: IpAddr) -> (Family, u128) {
    match ip {
        IpAddr::V4(a) => (Family::V4, u128::from(u32::from(a))),
        IpAddr::V6(a) => (Family::V6, u128::from(a)),
    }
}

/// The address numbered `x` in `family`.
pub fn addr(family: Family, x: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(u32::try_from(x).unwrap_or(u32::MAX))),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(x)),
    }
}

/// Sorted disjoint inclusive address ranges of one family, adjacent ones merged.
pub fn merge_ranges(mut v: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    v.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::with_capacity(v.len());
    for (lo, hi) in v {
        match out.last_mut() {
            Some(last) if last.1 == u128::MAX || lo <= last.1 + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// The parts of `lo..=hi` outside the sorted, merged `holes`.
pub fn without(lo: u128, hi: u128, holes: &[(u128, u128)]) -> Vec<(u128, u128)> {
    let mut out = Vec::new();
    let mut cur = lo;
    let start = holes.partition_point(|h| h.1 < lo);
    for &(hlo, hhi) in &holes[start..] {
        if hlo > hi {
            break;
        }
        if hlo > cur {
            out.push((cur, hlo - 1));
        }
        match hhi.checked_add(1) {
            Some(next) => cur = next,
            None => return out,
        }
        if cur > hi {
            return out;
        }
    }
    out.push((cur, hi));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_set_algebra() {
        let mut a = PortSet::empty();
        a.add(Protocol::Tcp, 80, 90);
        a.add(Protocol::Tcp, 91, 100);
        a.add(Protocol::Udp, 53, 53);
        assert_eq!(
            a.ranges().collect::<Vec<_>>(),
            [(Protocol::Tcp, 80, 100), (Protocol::Udp, 53, 53)]
        );
        let mut b = PortSet::empty();
        b.add(Protocol::Tcp, 85, 85);
        b.add(Protocol::Tcp, 100, 200);
        assert_eq!(
            a.minus(&b).ranges().collect::<Vec<_>>(),
            [
                (Protocol::Tcp, 80, 84),
                (Protocol::Tcp, 86, 99),
                (Protocol::Udp, 53, 53)
            ]
        );
        assert_eq!(
            a.intersect(&b).ranges().collect::<Vec<_>>(),
            [(Protocol::Tcp, 85, 85), (Protocol::Tcp, 100, 100)]
        );
        assert!(PortSet::full().minus(&PortSet::full()).is_empty());
        assert_eq!(
            PortSet::full().minus(&a).ranges().next(),
            Some((Protocol::Tcp, 0, 79))
        );
    }

    #[test]
    fn holes_are_cut_out() {
        assert_eq!(
            without(0, 10, &[(0, 0), (5, 6), (10, 12)]),
            [(1, 4), (7, 9)]
        );
        assert_eq!(without(0, u128::MAX, &[(3, u128::MAX)]), [(0, 2)]);
        assert_eq!(without(4, 4, &[(4, 4)]), []);
        assert_eq!(merge_ranges(vec![(5, 6), (1, 4), (8, 9)]), [(1, 6), (8, 9)]);
    }
}
