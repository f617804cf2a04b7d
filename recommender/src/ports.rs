//! Port grouping for egress rules: observed numeric ports of one peer become NetworkPolicy port
//! entries, with dense runs folded into `port` + `endPort`.
//!
//! The protocol is always explicit and every entry has exactly one protocol, so TCP, UDP and SCTP
//! never share an entry. Output is sorted by protocol, then port.

use leash_records::Protocol;

/// Default length from which a run of consecutive observed ports becomes a range.
pub const DEFAULT_MIN_RUN: usize = 4;

/// One NetworkPolicy port entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    /// The protocol; never omitted.
    pub protocol: Protocol,
    /// The (first) port, 1..=65535.
    pub port: u16,
    /// The last port of the range, inclusive and greater than `port`; `None` for a single port.
    pub end_port: Option<u16>,
    /// Ports the entry allows that were not observed (0 for an exact run or a single port).
    pub unobserved: u32,
}

impl PortRange {
    /// The last port the entry allows.
    pub fn last(&self) -> u16 {
        self.end_port.unwrap_or(self.port)
    }

    /// Number of ports the entry allows.
    pub fn width(&self) -> u32 {
        u32::from(self.last()) - u32::from(self.port) + 1
    }

    /// Whether the entry allows `port` over `protocol`.
    pub fn allows(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol == protocol && self.port <= port && port <= self.last()
    }
}

/// Groups observed `(protocol, port)` pairs of one peer into port entries.
///
/// Ports are sorted and deduplicated per protocol. A run of at least `min_run` consecutive ports
/// (values below 2 count as 2) becomes one `port`/`endPort` entry; shorter runs stay single ports.
/// Port 0 is skipped: NetworkPolicy cannot name it (callers report such flows separately).
pub fn group_ports(
    observed: impl IntoIterator<Item = (Protocol, u16)>,
    min_run: usize,
) -> Vec<PortRange> {
    let min_run = min_run.max(2);
    let mut seen: Vec<(Protocol, u16)> = observed.into_iter().filter(|&(_, p)| p != 0).collect();
    seen.sort_unstable();
    seen.dedup();
    let mut out = Vec::new();
    let mut i = 0;
    while i < seen.len() {
        let (proto, first) = seen[i];
        // Extend the run while the next port of the same protocol follows directly.
        let mut j = i + 1;
        while j < seen.len()
            && seen[j].0 == proto
            && u32::from(seen[j].1) == u32::from(seen[j - 1].1) + 1
        {
            j += 1;
        }
        let run = j - i;
        if run >= min_run {
            out.push(PortRange {
                protocol: proto,
                port: first,
                end_port: Some(seen[j - 1].1),
                unobserved: 0,
            });
        } else {
            out.extend(seen[i..j].iter().map(|&(protocol, port)| PortRange {
                protocol,
                port,
                end_port: None,
                unobserved: 0,
            }));
        }
        i = j;
    }
    out
}

/// Ports allowed by `range` that are not in `observed` (same protocol only).
pub fn unobserved_in(range: &PortRange, observed: &[(Protocol, u16)]) -> u32 {
    let mut hits: Vec<u16> = observed
        .iter()
        .filter(|&&(p, port)| range.allows(p, port))
        .map(|&(_, port)| port)
        .collect();
    hits.sort_unstable();
    hits.dedup();
    // `hits.len()` ≤ 65536, so it fits.
    range.width() - hits.len() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    use Protocol::{Sctp, Tcp, Udp};
    use proptest::strategy::Strategy;

    fn single(protocol: Protocol, port: u16) -> PortRange {
        PortRange {
            protocol,
            port,
            end_port: None,
            unobserved: 0,
        }
    }

    fn range(protocol: Protocol, port: u16, end: u16) -> PortRange {
        PortRange {
            protocol,
            port,
            end_port: Some(end),
            unobserved: 0,
        }
    }

    #[test]
    fn four_consecutive_ports_become_a_range() {
        let got = group_ports([(Tcp, 8003), (Tcp, 8000), (Tcp, 8002), (Tcp, 8001)], 4);
        assert_eq!(got, vec![range(Tcp, 8000, 8003)]);
    }

    #[test]
    fn three_consecutive_ports_stay_single() {
        let got = group_ports([(Tcp, 8000), (Tcp, 8001), (Tcp, 8002), (Tcp, 443)], 4);
        assert_eq!(
            got,
            vec![
                single(Tcp, 443),
                single(Tcp, 8000),
                single(Tcp, 8001),
                single(Tcp, 8002)
            ]
        );
    }

    #[test]
    fn threshold_is_a_parameter() {
        let got = group_ports([(Udp, 10), (Udp, 11)], 2);
        assert_eq!(got, vec![range(Udp, 10, 11)]);
        // A threshold of 1 cannot turn a single port into a range.
        assert_eq!(group_ports([(Udp, 10)], 1), vec![single(Udp, 10)]);
    }

    #[test]
    fn protocols_are_never_mixed() {
        let got = group_ports(
            [
                (Tcp, 53),
                (Udp, 53),
                (Udp, 54),
                (Tcp, 54),
                (Sctp, 53),
                (Tcp, 55),
                (Tcp, 56),
            ],
            4,
        );
        assert_eq!(
            got,
            vec![
                range(Tcp, 53, 56),
                single(Udp, 53),
                single(Udp, 54),
                single(Sctp, 53)
            ]
        );
    }

    #[test]
    fn duplicates_and_port_zero() {
        let got = group_ports([(Tcp, 443), (Tcp, 443), (Tcp, 0)], 4);
        assert_eq!(got, vec![single(Tcp, 443)]);
    }

    #[test]
    fn top_of_the_port_space() {
        let got = group_ports((65532..=65535).map(|p| (Tcp, p)), 4);
        assert_eq!(got, vec![range(Tcp, 65532, 65535)]);
    }

    #[test]
    fn unobserved_counts_gaps_only() {
        let r = range(Tcp, 100, 109);
        let observed: Vec<(Protocol, u16)> =
            (100..=105).map(|p| (Tcp, p)).chain([(Udp, 107)]).collect();
        assert_eq!(unobserved_in(&r, &observed), 4);
        assert_eq!(r.width(), 10);
        let exact = group_ports(observed.iter().copied(), 4);
        for e in &exact {
            assert_eq!(unobserved_in(e, &observed), 0);
        }
    }

    fn proto(i: u8) -> Protocol {
        match i % 3 {
            0 => Tcp,
            1 => Udp,
            _ => Sctp,
        }
    }

    proptest::proptest! {
        #[test]
        fn grouping_allows_exactly_the_observed_ports(
            (raw, shuffled) in proptest::collection::vec((0u8..3, 0u16..120), 0..150)
                .prop_flat_map(|v| (proptest::strategy::Just(v.clone()), proptest::strategy::Just(v).prop_shuffle())),
            min_run in 0usize..8,
        ) {
            use proptest::prop_assert;
            use proptest::prop_assert_eq;
            let observed: Vec<(Protocol, u16)> = raw.iter().map(|&(p, port)| (proto(p), port)).collect();
            let got = group_ports(observed.iter().copied(), min_run);
            let set: std::collections::BTreeSet<(Protocol, u16)> =
                observed.iter().copied().filter(|&(_, p)| p != 0).collect();
            // Every observed port is allowed by exactly one entry.
            for &(p, port) in &set {
                prop_assert_eq!(got.iter().filter(|e| e.allows(p, port)).count(), 1);
            }
            for (i, e) in got.iter().enumerate() {
                // Nothing unobserved is allowed.
                for port in e.port..=e.last() {
                    prop_assert!(set.contains(&(e.protocol, port)));
                }
                prop_assert_eq!(e.unobserved, 0);
                prop_assert_eq!(unobserved_in(e, &observed), 0);
                let run_start = e.port == 0 || !set.contains(&(e.protocol, e.port - 1));
                let run_end = e.last() == u16::MAX || !set.contains(&(e.protocol, e.last() + 1));
                if let Some(end) = e.end_port {
                    // A range is a whole maximal run of at least the threshold.
                    prop_assert!(end > e.port);
                    prop_assert!(e.width() as usize >= min_run.max(2));
                    prop_assert!(run_start && run_end);
                } else {
                    // A single port sits in a maximal run shorter than the threshold.
                    let mut lo = e.port;
                    while lo > 1 && set.contains(&(e.protocol, lo - 1)) {
                        lo -= 1;
                    }
                    let mut hi = e.port;
                    while hi < u16::MAX && set.contains(&(e.protocol, hi + 1)) {
                        hi += 1;
                    }
                    prop_assert!(((hi - lo) as usize + 1) < min_run.max(2));
                }
                if i > 0 {
                    prop_assert!((got[i - 1].protocol, got[i - 1].port) < (e.protocol, e.port));
                }
            }
            let again: Vec<(Protocol, u16)> = shuffled.iter().map(|&(p, port)| (proto(p), port)).collect();
            prop_assert_eq!(group_ports(again, min_run), got);
        }
    }
}
