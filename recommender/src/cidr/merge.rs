//! The exact merge: the minimal set of canonical prefixes whose union is exactly the input, in
//! one linear pass after a sort.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::word::{Word, last, split_families, trunc, v4net, v6net};

/// Appends the maximal aligned blocks of the inclusive range `[lo, hi]` to `out`.
#[inline]
fn push_range<W: Word>(mut lo: W, hi: W, out: &mut Vec<(W, u8)>) {
    let bits = u32::from(W::BITS);
    loop {
        // Largest block allowed by the alignment of `lo` (`trailing_zeros(0)` is the full width).
        let align = lo.trailing_zeros_();
        // Largest block that fits in the remaining count `hi - lo + 1`.
        let span = hi - lo;
        let fit = if span == W::MAX {
            bits
        } else {
            bits - 1 - (span + W::ONE).leading_zeros_()
        };
        let k = align.min(fit);
        // k ≤ bits ≤ 128.
        let len = (bits - k) as u8;
        out.push((lo, len));
        let end = last(lo, len);
        if end == hi {
            return;
        }
        lo = end + W::ONE;
    }
}

/// Collapses sorted addresses (duplicates allowed) into blocks.
fn collapse_sorted_addrs<W: Word>(sorted: &[W], out: &mut Vec<(W, u8)>) {
    let mut it = sorted.iter().copied();
    let Some(first) = it.next() else {
        return;
    };
    let (mut lo, mut hi) = (first, first);
    for a in it {
        if a == hi {
            continue;
        }
        // `a > hi`, so `hi < MAX` and `hi + 1` cannot overflow.
        if a == hi + W::ONE {
            hi = a;
            continue;
        }
        push_range(lo, hi, out);
        lo = a;
        hi = a;
    }
    push_range(lo, hi, out);
}

/// Collapses inclusive ranges sorted by start (overlaps allowed) into blocks.
fn collapse_sorted_ranges<W: Word>(sorted: &[(W, W)], out: &mut Vec<(W, u8)>) {
    let mut it = sorted.iter().copied();
    let Some((mut lo, mut hi)) = it.next() else {
        return;
    };
    for (s, e) in it {
        if hi == W::MAX {
            break;
        }
        if s <= hi + W::ONE {
            hi = hi.max(e);
            continue;
        }
        push_range(lo, hi, out);
        lo = s;
        hi = e;
    }
    push_range(lo, hi, out);
}

/// Exact merge of prefixes given as `(address, len)`; host bits are ignored.
pub(super) fn merge_words<W: Word>(nets: impl Iterator<Item = (W, u8)>) -> Vec<(W, u8)> {
    let mut ranges: Vec<(W, W)> = nets
        .map(|(a, len)| {
            let s = trunc(a, len);
            (s, last(s, len))
        })
        .collect();
    ranges.sort_unstable();
    let mut out = Vec::new();
    collapse_sorted_ranges(&ranges, &mut out);
    out
}

/// Exact merge of plain addresses.
fn merge_addr_words<W: Word>(mut words: Vec<W>) -> Vec<(W, u8)> {
    W::sort(&mut words);
    let mut out = Vec::with_capacity(words.len() / 2 + 1);
    collapse_sorted_addrs(&words, &mut out);
    out
}

/// The minimal set of canonical IPv4 prefixes covering exactly `addrs`, sorted.
pub fn merge_v4_addrs(addrs: &[Ipv4Addr]) -> Vec<Ipv4Net> {
    let words: Vec<u32> = addrs.iter().map(|a| u32::from(*a)).collect();
    merge_addr_words(words)
        .into_iter()
        .map(|(s, l)| v4net(s, l))
        .collect()
}

/// The minimal set of canonical IPv6 prefixes covering exactly `addrs`, sorted.
pub fn merge_v6_addrs(addrs: &[Ipv6Addr]) -> Vec<Ipv6Net> {
    let words: Vec<u128> = addrs.iter().map(|a| u128::from(*a)).collect();
    merge_addr_words(words)
        .into_iter()
        .map(|(s, l)| v6net(s, l))
        .collect()
}

/// The minimal set of canonical IPv4 prefixes covering exactly the union of `nets`, sorted.
/// Host bits in the input are ignored (`10.0.0.1/24` counts as `10.0.0.0/24`).
pub fn merge_v4(nets: &[Ipv4Net]) -> Vec<Ipv4Net> {
    merge_words(nets.iter().map(|n| (u32::from(n.addr()), n.prefix_len())))
        .into_iter()
        .map(|(s, l)| v4net(s, l))
        .collect()
}

/// The minimal set of canonical IPv6 prefixes covering exactly the union of `nets`, sorted.
/// Host bits in the input are ignored.
pub fn merge_v6(nets: &[Ipv6Net]) -> Vec<Ipv6Net> {
    merge_words(nets.iter().map(|n| (u128::from(n.addr()), n.prefix_len())))
        .into_iter()
        .map(|(s, l)| v6net(s, l))
        .collect()
}

/// The exact merge of mixed-family prefixes: IPv4 blocks first, then IPv6, each sorted.
/// IPv4-mapped IPv6 prefixes (`::ffff:a.b.c.d/96+n`) are treated as IPv4 (`a.b.c.d/n`).
pub fn merge(nets: &[IpNet]) -> Vec<IpNet> {
    let (v4, v6) = split_families(nets);
    let mut out: Vec<IpNet> = merge_words(v4.into_iter())
        .into_iter()
        .map(|(s, l)| u32::to_net(s, l))
        .collect();
    out.extend(
        merge_words(v6.into_iter())
            .into_iter()
            .map(|(s, l)| u128::to_net(s, l)),
    );
    out
}

/// The exact merge of mixed-family addresses: IPv4 blocks first, then IPv6, each sorted.
pub fn merge_addrs(addrs: &[IpAddr]) -> Vec<IpNet> {
    let nets: Vec<IpNet> = addrs.iter().map(|a| IpNet::from(*a)).collect();
    merge(&nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn two_neighbours_collapse() {
        assert_eq!(
            merge_addrs(&[a("10.0.0.1"), a("10.0.0.0")]),
            vec![n("10.0.0.0/31")]
        );
    }

    #[test]
    fn unaligned_run_splits_into_maximal_blocks() {
        // 10.0.0.1 ..= 10.0.0.6 → .1/32, .2/31, .4/31, .6/32
        let addrs: Vec<IpAddr> = (1..=6).map(|i| a(&format!("10.0.0.{i}"))).collect();
        let got: Vec<String> = merge_addrs(&addrs)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            got,
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
    }

    #[test]
    fn contained_and_overlapping_prefixes_are_absorbed() {
        let got = merge(&[
            n("10.0.1.0/24"),
            n("10.0.0.7/32"),
            n("10.0.0.0/24"),
            n("10.0.2.0/23"),
            n("2001:db8::1/128"),
            n("2001:db8::/127"),
        ]);
        assert_eq!(got, vec![n("10.0.0.0/22"), n("2001:db8::/127")]);
    }

    #[test]
    fn host_bits_are_ignored() {
        assert_eq!(merge(&[n("10.0.0.77/24")]), vec![n("10.0.0.0/24")]);
    }

    #[test]
    fn full_ranges_do_not_overflow() {
        assert_eq!(
            merge(&[n("0.0.0.0/0"), n("1.2.3.4/32")]),
            vec![n("0.0.0.0/0")]
        );
        assert_eq!(merge(&[n("::/0"), n("::1/128")]), vec![n("::/0")]);
        assert_eq!(
            merge(&[n("255.255.255.255/32"), n("255.255.255.254/32")]),
            vec![n("255.255.255.254/31")]
        );
        assert_eq!(
            merge_v4_addrs(&[Ipv4Addr::new(255, 255, 255, 255), Ipv4Addr::new(0, 0, 0, 0)]),
            vec![
                "0.0.0.0/32".parse::<Ipv4Net>().unwrap(),
                "255.255.255.255/32".parse().unwrap()
            ]
        );
    }
}
