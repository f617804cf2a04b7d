//! The shared word types of the exact merge and the budgeted cover: an address of one family
//! as an unsigned integer ([`Word`]: `u32` for IPv4, `u128` for IPv6), address counts and costs
//! ([`Count`]), and the prefix arithmetic on them, so that every algorithm is written once for
//! both families.

use std::fmt::Debug;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::{Add, BitAnd, BitOr, BitXor, Not, Shl, Shr, Sub};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A cost or address count. IPv4 counts fit in `u64`; IPv6 counts use `u128` and saturate at
/// `u128::MAX` (only `::/0` itself is that large).
pub(super) trait Count: Copy + Ord + Debug {
    const ZERO: Self;
    const MAX: Self;
    fn sat_add(self, other: Self) -> Self;
    fn sat_sub(self, other: Self) -> Self;
    fn to_u128(self) -> u128;
}

macro_rules! impl_count {
    ($t:ty) => {
        impl Count for $t {
            const ZERO: Self = 0;
            const MAX: Self = <$t>::MAX;
            #[inline]
            fn sat_add(self, other: Self) -> Self {
                self.saturating_add(other)
            }
            #[inline]
            fn sat_sub(self, other: Self) -> Self {
                self.saturating_sub(other)
            }
            #[inline]
            fn to_u128(self) -> u128 {
                u128::from(self)
            }
        }
    };
}
impl_count!(u32);
impl_count!(u64);
impl_count!(u128);

/// An address of one family as an unsigned integer (`u32` for IPv4, `u128` for IPv6), so that all
/// the arithmetic below is written once.
pub(super) trait Word:
    Copy
    + Ord
    + Debug
    + BitAnd<Output = Self>
    + BitOr<Output = Self>
    + BitXor<Output = Self>
    + Not<Output = Self>
    + Shl<u32, Output = Self>
    + Shr<u32, Output = Self>
    + Add<Output = Self>
    + Sub<Output = Self>
{
    const BITS: u8;
    const ZERO: Self;
    const ONE: Self;
    const MAX: Self;
    type Count: Count;
    /// A cover cost (unobserved addresses). For IPv4 it fits in `u32`: a branching node holds at
    /// least two observed addresses, so its cost is below 2^32 - 1, and so is any sum of costs of
    /// disjoint nodes. `u32` halves the DP's memory traffic and lets its inner loop vectorize.
    type Cost: Count;
    fn cost(unobserved: Self::Count) -> Self::Cost;
    fn leading_zeros_(self) -> u32;
    fn trailing_zeros_(self) -> u32;
    /// Number of addresses in a prefix of length `len` (saturating).
    fn block_size(len: u8) -> Self::Count;
    fn to_net(start: Self, len: u8) -> IpNet;
    /// Sorts addresses ascending (the merge of plain addresses is dominated by this sort).
    fn sort(words: &mut Vec<Self>);
}

impl Word for u32 {
    const BITS: u8 = 32;
    const ZERO: Self = 0;
    const ONE: Self = 1;
    const MAX: Self = u32::MAX;
    type Count = u64;
    type Cost = u32;
    #[inline]
    fn cost(unobserved: u64) -> u32 {
        u32::try_from(unobserved).unwrap_or(u32::MAX)
    }
    #[inline]
    fn leading_zeros_(self) -> u32 {
        self.leading_zeros()
    }
    #[inline]
    fn trailing_zeros_(self) -> u32 {
        self.trailing_zeros()
    }
    #[inline]
    fn block_size(len: u8) -> u64 {
        1u64 << (32 - u32::from(len.min(32)))
    }
    fn to_net(start: Self, len: u8) -> IpNet {
        IpNet::V4(v4net(start, len))
    }
    fn sort(words: &mut Vec<Self>) {
        radix_sort_u32(words);
    }
}

impl Word for u128 {
    const BITS: u8 = 128;
    const ZERO: Self = 0;
    const ONE: Self = 1;
    const MAX: Self = u128::MAX;
    type Count = u128;
    type Cost = u128;
    #[inline]
    fn cost(unobserved: u128) -> u128 {
        unobserved
    }
    #[inline]
    fn leading_zeros_(self) -> u32 {
        self.leading_zeros()
    }
    #[inline]
    fn trailing_zeros_(self) -> u32 {
        self.trailing_zeros()
    }
    #[inline]
    fn block_size(len: u8) -> u128 {
        if len == 0 {
            u128::MAX
        } else {
            1u128 << (128 - u32::from(len.min(128)))
        }
    }
    fn to_net(start: Self, len: u8) -> IpNet {
        IpNet::V6(v6net(start, len))
    }
    fn sort(words: &mut Vec<Self>) {
        words.sort_unstable();
    }
}

/// LSD radix sort of `u32` keys in three passes of 11 bits, skipping a pass when every key has
/// the same digit (addresses from one /11 need only two). On 1M random addresses it takes a
/// fraction of `sort_unstable`'s time, which dominates the exact merge; it is a few lines, so
/// not worth a dependency.
fn radix_sort_u32(words: &mut Vec<u32>) {
    const DIGIT: u32 = 11;
    const BUCKETS: usize = 1 << DIGIT;
    if words.len() < 1 << 12 {
        words.sort_unstable();
        return;
    }
    let n = words.len();
    let mut hist = vec![[0usize; BUCKETS]; 3];
    for &w in words.iter() {
        for (pass, h) in hist.iter_mut().enumerate() {
            h[((w >> (pass as u32 * DIGIT)) as usize) & (BUCKETS - 1)] += 1;
        }
    }
    let mut other = vec![0u32; n];
    for (pass, h) in hist.iter_mut().enumerate() {
        if h.contains(&n) {
            continue;
        }
        let mut sum = 0;
        for c in h.iter_mut() {
            let count = *c;
            *c = sum;
            sum += count;
        }
        let shift = pass as u32 * DIGIT;
        for &w in words.iter() {
            let b = ((w >> shift) as usize) & (BUCKETS - 1);
            other[h[b]] = w;
            h[b] += 1;
        }
        std::mem::swap(words, &mut other);
    }
}

pub(super) fn v4net(start: u32, len: u8) -> Ipv4Net {
    // `len` comes from our own arithmetic and is always ≤ 32.
    Ipv4Net::new_assert(Ipv4Addr::from(start), len.min(32))
}

pub(super) fn v6net(start: u128, len: u8) -> Ipv6Net {
    // `len` comes from our own arithmetic and is always ≤ 128.
    Ipv6Net::new_assert(Ipv6Addr::from(start), len.min(128))
}

/// The host bits of a prefix of length `len`.
#[inline]
pub(super) fn host_mask<W: Word>(len: u8) -> W {
    if len >= W::BITS {
        W::ZERO
    } else {
        W::MAX >> u32::from(len)
    }
}

/// The last address of the prefix `start/len`.
#[inline]
pub(super) fn last<W: Word>(start: W, len: u8) -> W {
    start | host_mask(len)
}

/// `addr` with its host bits cleared.
#[inline]
pub(super) fn trunc<W: Word>(addr: W, len: u8) -> W {
    addr & !host_mask::<W>(len)
}

/// Length of the common prefix of `a` and `b`, in bits.
#[inline]
pub(super) fn common_len<W: Word>(a: W, b: W) -> u8 {
    let x = a ^ b;
    if x == W::ZERO {
        W::BITS
    } else {
        // leading_zeros < BITS ≤ 128, so it fits.
        x.leading_zeros_() as u8
    }
}

/// Prefixes of one family as `(address, length)`.
pub(super) type Prefixes<W> = Vec<(W, u8)>;

/// Splits mixed-family prefixes into IPv4 and IPv6 words.
pub(super) fn split_families(nets: &[IpNet]) -> (Prefixes<u32>, Prefixes<u128>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for n in nets {
        match n {
            IpNet::V4(n) => v4.push((u32::from(n.addr()), n.prefix_len())),
            IpNet::V6(n) => {
                let a = u128::from(n.addr());
                // NetworkPolicy rejects IPv4-mapped IPv6 CIDRs, and the kernel reports IPv4
                // peers of dual-stack sockets that way: count them as the IPv4 they are.
                if a >> 32 == 0xffff && n.prefix_len() >= 96 {
                    v4.push((a as u32, n.prefix_len() - 96));
                } else {
                    v6.push((a, n.prefix_len()));
                }
            }
        }
    }
    (v4, v6)
}

/// The number of addresses in `net` (saturating at `u128::MAX` for `::/0`).
pub fn net_size(net: &IpNet) -> u128 {
    match net {
        IpNet::V4(n) => u128::from(u32::block_size(n.prefix_len())),
        IpNet::V6(n) => u128::block_size(n.prefix_len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radix_sort_matches_std_sort() {
        // Large enough to take the radix path; one digit constant, others random.
        let mut x: u64 = 7;
        let mut words: Vec<u32> = (0..20_000)
            .map(|i| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                if i % 3 == 0 {
                    0x0A00_0000 | (x >> 43) as u32
                } else {
                    (x >> 32) as u32
                }
            })
            .collect();
        let mut want = words.clone();
        want.sort_unstable();
        radix_sort_u32(&mut words);
        assert_eq!(words, want);
        let mut same = vec![0x0A00_0001u32; 5000];
        radix_sort_u32(&mut same);
        assert!(same.iter().all(|&w| w == 0x0A00_0001));
    }
}
