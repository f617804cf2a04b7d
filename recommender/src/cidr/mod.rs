//! CIDR arithmetic for ipBlocks: the exact merge and the budgeted optimal cover.
//!
//! - [`merge`] (and the per-family [`merge_v4`], [`merge_v4_addrs`], …) returns the minimal set of
//!   canonical prefixes whose union is exactly the input: the same output as Python's
//!   `ipaddress.collapse_addresses`. It sorts and deduplicates plain integers, joins runs into
//!   ranges and cuts each range into maximal aligned blocks, all in one linear pass.
//! - [`cover`] keeps the exact merge when it has at most `max_cidrs` blocks. Otherwise it picks the
//!   cover of at most `max_cidrs` prefixes that allows the fewest unobserved addresses, by a dynamic
//!   program over the compressed binary trie of the exact blocks. It never chooses a prefix shorter
//!   than `max_prefix` and never allows an unobserved address of a protected range (it carves those
//!   out with `except`). When the budget cannot be met under these rules it returns the cover with
//!   the fewest blocks and says so in [`Cover::budget_met`].
//!
//! IPv4 and IPv6 are handled separately; the combined entry points put IPv4 first.

use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::{Add, BitAnd, BitOr, BitXor, Not, Shl, Shr, Sub};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

// ---------------------------------------------------------------------------------------------
// Address words
// ---------------------------------------------------------------------------------------------

/// A cost or address count. IPv4 counts fit in `u64`; IPv6 counts use `u128` and saturate at
/// `u128::MAX` (only `::/0` itself is that large).
trait Count: Copy + Ord + Debug {
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
trait Word:
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

fn v4net(start: u32, len: u8) -> Ipv4Net {
    // `len` comes from our own arithmetic and is always ≤ 32.
    Ipv4Net::new_assert(Ipv4Addr::from(start), len.min(32))
}

fn v6net(start: u128, len: u8) -> Ipv6Net {
    // `len` comes from our own arithmetic and is always ≤ 128.
    Ipv6Net::new_assert(Ipv6Addr::from(start), len.min(128))
}

/// The host bits of a prefix of length `len`.
#[inline]
fn host_mask<W: Word>(len: u8) -> W {
    if len >= W::BITS {
        W::ZERO
    } else {
        W::MAX >> u32::from(len)
    }
}

/// The last address of the prefix `start/len`.
#[inline]
fn last<W: Word>(start: W, len: u8) -> W {
    start | host_mask(len)
}

/// `addr` with its host bits cleared.
#[inline]
fn trunc<W: Word>(addr: W, len: u8) -> W {
    addr & !host_mask::<W>(len)
}

/// Length of the common prefix of `a` and `b`, in bits.
#[inline]
fn common_len<W: Word>(a: W, b: W) -> u8 {
    let x = a ^ b;
    if x == W::ZERO {
        W::BITS
    } else {
        // leading_zeros < BITS ≤ 128, so it fits.
        x.leading_zeros_() as u8
    }
}

// ---------------------------------------------------------------------------------------------
// Exact merge
// ---------------------------------------------------------------------------------------------

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
fn merge_words<W: Word>(nets: impl Iterator<Item = (W, u8)>) -> Vec<(W, u8)> {
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

/// Prefixes of one family as `(address, length)`.
type Prefixes<W> = Vec<(W, u8)>;

/// Splits mixed-family prefixes into IPv4 and IPv6 words.
fn split_families(nets: &[IpNet]) -> (Prefixes<u32>, Prefixes<u128>) {
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

/// The number of addresses in `net` (saturating at `u128::MAX` for `::/0`).
pub fn net_size(net: &IpNet) -> u128 {
    match net {
        IpNet::V4(n) => u128::from(u32::block_size(n.prefix_len())),
        IpNet::V6(n) => u128::block_size(n.prefix_len()),
    }
}

// ---------------------------------------------------------------------------------------------
// Budgeted cover
// ---------------------------------------------------------------------------------------------

/// Ranges that no cover may open unless an address in them was observed:
/// the cloud metadata address, loopback (both families) and IPv6 unique-local addresses.
/// Callers add the cluster's pod and service CIDRs through [`CoverOptions::protected`].
pub fn builtin_protected() -> Vec<IpNet> {
    vec![
        IpNet::V4(v4net(u32::from(Ipv4Addr::new(169, 254, 169, 254)), 32)),
        IpNet::V4(v4net(u32::from(Ipv4Addr::new(127, 0, 0, 0)), 8)),
        IpNet::V6(v6net(u128::from(Ipv6Addr::LOCALHOST), 128)),
        IpNet::V6(v6net(0xfc00u128 << 112, 7)),
    ]
}

/// Knobs of [`cover`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoverOptions {
    /// The budget K: at most this many blocks per rule (`--max-cidrs`). Zero is treated as one.
    pub max_cidrs: usize,
    /// No chosen IPv4 prefix is shorter than this (`--max-prefix`, default 24), unless it is an
    /// exactly observed block.
    pub max_prefix_v4: u8,
    /// No chosen IPv6 prefix is shorter than this (default 48), unless exactly observed.
    pub max_prefix_v6: u8,
    /// Extra protected ranges (cluster pod and service CIDRs). [`builtin_protected`] is always
    /// added.
    pub protected: Vec<IpNet>,
}

impl Default for CoverOptions {
    fn default() -> Self {
        Self {
            max_cidrs: 8,
            max_prefix_v4: 24,
            max_prefix_v6: 48,
            protected: Vec::new(),
        }
    }
}

/// One ipBlock of a cover.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Block {
    /// The canonical prefix.
    pub cidr: IpNet,
    /// Canonical prefixes strictly inside `cidr` that are carved out: protected, never observed.
    pub except: Vec<IpNet>,
    /// Observed addresses inside the block.
    pub observed: u128,
    /// Addresses the block allows that were not observed (excepted ones are not counted).
    pub unobserved_allowed: u128,
}

/// The result of [`cover`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cover {
    /// The blocks, IPv4 first, sorted by address; pairwise disjoint.
    pub blocks: Vec<Block>,
    /// False when no cover within `max_cidrs` blocks respects `max_prefix` and the protected
    /// ranges; `blocks` is then the cover with the fewest blocks (and, among those, the fewest
    /// unobserved addresses).
    pub budget_met: bool,
}

impl Cover {
    /// Total unobserved addresses allowed by all blocks (saturating).
    pub fn unobserved_allowed(&self) -> u128 {
        self.blocks
            .iter()
            .fold(0u128, |acc, b| acc.saturating_add(b.unobserved_allowed))
    }
}

/// How much of a protected range was observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Nothing observed: carve it out with `except` wherever a block straddles it.
    None,
    /// Entirely observed: nothing to protect.
    All,
    /// Partly observed: no block may straddle it (an `except` would drop observed addresses).
    Some,
}

/// The protected ranges of one family, merged and classified against the observed blocks.
struct Protected<W: Word> {
    nets: Vec<(W, u8)>,
    seen: Vec<Seen>,
}

impl<W: Word> Protected<W> {
    fn new(protected: impl Iterator<Item = (W, u8)>, leaves: &[(W, u8)]) -> Self {
        let nets = merge_words(protected);
        let seen = nets
            .iter()
            .map(|&(s, len)| {
                let e = last(s, len);
                // A leaf that starts at or before `s` may contain the whole range.
                let i = leaves.partition_point(|&(ls, _)| ls <= s);
                if i > 0 {
                    let (ls, ll) = leaves[i - 1];
                    if last(ls, ll) >= e {
                        return Seen::All;
                    }
                }
                // Otherwise every leaf that starts inside the range lies inside it.
                let j = leaves.partition_point(|&(ls, _)| ls < s);
                let k = leaves.partition_point(|&(ls, _)| ls <= e);
                if j == k {
                    return Seen::None;
                }
                let total = leaves[j..k]
                    .iter()
                    .fold(W::Count::ZERO, |acc, &(_, l)| acc.sat_add(W::block_size(l)));
                if total == W::block_size(len) {
                    Seen::All
                } else {
                    Seen::Some
                }
            })
            .collect();
        Self { nets, seen }
    }

    /// For a non-exact candidate prefix `start/len`: `None` if it may not be chosen, otherwise the
    /// number of protected addresses it must carve out.
    #[inline]
    fn carve(&self, start: W, len: u8) -> Option<W::Count> {
        if self.nets.is_empty() {
            return Some(W::Count::ZERO);
        }
        let end = last(start, len);
        let i = self.nets.partition_point(|&(s, _)| s <= start);
        if i > 0 {
            let (s, l) = self.nets[i - 1];
            if last(s, l) >= end {
                // Entirely protected and not entirely observed.
                return None;
            }
        }
        let j = self.nets.partition_point(|&(s, _)| s < start);
        let mut carved = W::Count::ZERO;
        for (&(s, l), &seen) in self.nets[j..].iter().zip(&self.seen[j..]) {
            if s > end {
                break;
            }
            match seen {
                Seen::None => carved = carved.sat_add(W::block_size(l)),
                Seen::All => {}
                Seen::Some => return None,
            }
        }
        Some(carved)
    }

    /// The `except` entries of a chosen candidate prefix.
    fn excepts(&self, start: W, len: u8) -> Vec<IpNet> {
        let end = last(start, len);
        let j = self.nets.partition_point(|&(s, _)| s < start);
        self.nets[j..]
            .iter()
            .zip(&self.seen[j..])
            .take_while(|&(&(s, _), _)| s <= end)
            .filter(|(_, seen)| **seen == Seen::None)
            .map(|(&(s, l), _)| W::to_net(s, l))
            .collect()
    }
}

/// Folds the compressed binary trie over `leaves` (sorted, disjoint prefixes) bottom-up, without
/// building it: a stack holds the right spine, and each new leaf closes every subtree that
/// branches deeper than its common prefix with the previous leaf. `leaf(st, i)` makes the value
/// of leaf `i`; `join(st, left, right, start, len)` makes the value of the branching node
/// `start/len`; both share the state `st`. Joins happen in the same order on every call with the
/// same leaves.
fn fold_trie<W: Word, S, T>(
    leaves: &[(W, u8)],
    st: &mut S,
    mut leaf: impl FnMut(&mut S, usize) -> T,
    mut join: impl FnMut(&mut S, T, T, W, u8) -> T,
) -> Option<T> {
    // (value, first address of the subtree, common-prefix length with the entry below)
    let mut stack: Vec<(T, W, Option<u8>)> = Vec::new();
    let mut pop_join = |stack: &mut Vec<(T, W, Option<u8>)>, st: &mut S| {
        if let (Some((r, _, depth)), Some((l, start, link))) = (stack.pop(), stack.pop()) {
            let depth = depth.unwrap_or(0);
            let start = trunc(start, depth);
            stack.push((join(st, l, r, start, depth), start, link));
        }
    };
    let mut prev: Option<W> = None;
    for (i, &(s, _)) in leaves.iter().enumerate() {
        let link = prev.map(|p| common_len(p, s));
        if let Some(d) = link {
            while stack.len() >= 2 && stack.last().and_then(|e| e.2).is_some_and(|l| l > d) {
                pop_join(&mut stack, st);
            }
        }
        stack.push((leaf(st, i), s, link));
        prev = Some(s);
    }
    while stack.len() >= 2 {
        pop_join(&mut stack, st);
    }
    stack.pop().map(|e| e.0)
}

/// First pass over one family: which branching nodes may be chosen, at what cost, and the
/// fewest blocks any cover needs. Needing that minimum before the DP lets every node cap its
/// cost vector at `lo + slack` budgets instead of K.
struct Shape<W: Word> {
    /// Cost of choosing each branching node, in join order; `None` if it may not be chosen.
    costs: Vec<Option<W::Cost>>,
    /// Fewest blocks that can cover the family (0 when empty).
    lo: u32,
}

impl<W: Word> Shape<W> {
    fn new(leaves: &[(W, u8)], max_prefix: u8, protected: &Protected<W>) -> Self {
        let mut costs = Vec::with_capacity(leaves.len().saturating_sub(1));
        let lo = fold_trie(
            leaves,
            &mut costs,
            |_, i| (1u32, W::block_size(leaves[i].1)),
            |costs, (llo, lobs), (rlo, robs), start, depth| {
                let observed = lobs.sat_add(robs);
                let cost = if depth >= max_prefix {
                    protected.carve(start, depth).map(|carved| {
                        W::cost(W::block_size(depth).sat_sub(observed).sat_sub(carved))
                    })
                } else {
                    None
                };
                costs.push(cost);
                let lo = if cost.is_some() {
                    1
                } else {
                    llo.saturating_add(rlo)
                };
                (lo, observed)
            },
        )
        .map_or(0, |(lo, _)| lo);
        Self { costs, lo }
    }
}

/// A reference into the trie: an exact block (leaf) or a branching node.
#[derive(Debug, Clone, Copy)]
enum Ref {
    Leaf(u32),
    Node(u32),
}

/// A branching node of the compressed trie, kept for rebuilding the chosen cover.
#[derive(Debug, Clone, Copy)]
struct Node<W: Word> {
    start: W,
    len: u8,
    left: Ref,
    right: Ref,
    /// Fewest blocks that can cover the subtree.
    lo: u32,
    /// Offset of this node's choices (one per budget `lo..=hi`) in [`Dp::choices`]: 0 means
    /// "choose this node's own prefix", `a > 0` means "give `a` blocks to the left child".
    choice_off: usize,
    observed: W::Count,
    cost: W::Cost,
}

/// A subtree during the second pass.
struct Subtree<C> {
    r: Ref,
    leaves: usize,
    observed: C,
    lo: u32,
    hi: u32,
    /// Offset of its cost vector in the arena (`g[j - lo]`: least cost with at most `j` blocks).
    g_off: usize,
}

/// Working storage of [`Dp::solve`].
struct SolveState<W: Word> {
    nodes: Vec<Node<W>>,
    choices: Vec<u32>,
    /// Cost vectors of the pending subtrees, back to back in stack order: the two being joined
    /// are always the last two.
    garena: Vec<W::Cost>,
    sg: Vec<W::Cost>,
    sc: Vec<u32>,
}

/// The solved dynamic program of one family.
struct Dp<W: Word> {
    leaves: Vec<(W, u8)>,
    nodes: Vec<Node<W>>,
    choices: Vec<u32>,
    root: Option<Ref>,
    /// Fewest blocks that can cover everything.
    lo: u32,
    /// `g[j - lo]`: least cost with at most `j` blocks.
    g: Vec<W::Cost>,
}

impl<W: Word> Dp<W> {
    /// Solves the DP over the trie of `leaves`: for every node and every budget `j` from its
    /// fewest blocks `lo` up to `lo + slack` (and at most its leaf count), the least cost of
    /// covering its observed addresses with at most `j` blocks, either by its own prefix or by
    /// splitting `j` between its children (a min-plus convolution).
    fn solve(leaves: Vec<(W, u8)>, shape: &Shape<W>, slack: u32) -> Self {
        let mut st = SolveState::<W> {
            nodes: Vec::with_capacity(shape.costs.len()),
            choices: Vec::new(),
            garena: Vec::new(),
            sg: Vec::new(),
            sc: Vec::new(),
        };
        let root = fold_trie(
            &leaves,
            &mut st,
            |st, i| {
                st.garena.push(W::Cost::ZERO);
                Subtree {
                    // Leaf indices fit in u32 for any input that fits in memory.
                    r: Ref::Leaf(i as u32),
                    leaves: 1,
                    observed: W::block_size(leaves[i].1),
                    lo: 1,
                    hi: 1,
                    g_off: st.garena.len() - 1,
                }
            },
            |st, left, right, start, depth| {
                let SolveState {
                    nodes,
                    choices,
                    garena,
                    sg,
                    sc,
                } = st;
                let id = nodes.len();
                let cost = shape.costs.get(id).copied().flatten();
                let observed = left.observed.sat_add(right.observed);
                let n_leaves = left.leaves + right.leaves;
                let lo = if cost.is_some() {
                    1
                } else {
                    left.lo.saturating_add(right.lo)
                };
                let cap = u32::try_from(n_leaves).unwrap_or(u32::MAX);
                let hi = cap.min(lo.saturating_add(slack)).max(lo);
                let n = (hi - lo + 1) as usize;
                sg.clear();
                sc.clear();
                sg.resize(n, cost.unwrap_or(W::Cost::MAX));
                sc.resize(n, 0);
                {
                    let gl = &garena[left.g_off..left.g_off + (left.hi - left.lo + 1) as usize];
                    let gr = &garena[right.g_off..right.g_off + (right.hi - right.lo + 1) as usize];
                    convolve(gl, left.lo, gr, right.lo, lo, sg, sc);
                }
                nodes.push(Node {
                    start,
                    len: depth,
                    left: left.r,
                    right: right.r,
                    lo,
                    choice_off: choices.len(),
                    observed,
                    cost: cost.unwrap_or(W::Cost::MAX),
                });
                choices.extend_from_slice(sc);
                garena.truncate(left.g_off);
                let g_off = garena.len();
                garena.extend_from_slice(sg);
                Subtree {
                    r: Ref::Node(id as u32),
                    leaves: n_leaves,
                    observed,
                    lo,
                    hi,
                    g_off,
                }
            },
        );
        let (root, lo, g) = match root {
            Some(top) => (Some(top.r), top.lo, st.garena[top.g_off..].to_vec()),
            None => (None, 0, vec![W::Cost::ZERO]),
        };
        Dp {
            leaves,
            nodes: st.nodes,
            choices: st.choices,
            root,
            lo,
            g,
        }
    }

    /// The best budget for this family alone: `(blocks, cost)`.
    fn best(&self, k: u32) -> (u32, W::Cost) {
        if self.root.is_none() {
            return (0, W::Cost::ZERO);
        }
        let hi = self.lo + self.g.len() as u32 - 1;
        let top = if self.lo > k { self.lo } else { hi.min(k) };
        let j = self.fewest(top);
        (j, self.g[(j - self.lo) as usize])
    }

    /// The fewest blocks reaching the same cost as `j` blocks (`lo ≤ j ≤ hi`).
    fn fewest(&self, j: u32) -> u32 {
        let target = self.g[(j - self.lo) as usize];
        (self.lo..=j)
            .find(|&i| self.g[(i - self.lo) as usize] == target)
            .unwrap_or(j)
    }

    /// Emits the blocks of the optimal cover with at most `j` blocks, sorted.
    fn blocks(&self, j: u32, protected: &Protected<W>, out: &mut Vec<Block>) {
        let Some(root) = self.root else {
            return;
        };
        let mut todo = vec![(root, j)];
        while let Some((r, j)) = todo.pop() {
            match r {
                Ref::Leaf(i) => {
                    let (s, l) = self.leaves[i as usize];
                    out.push(Block {
                        cidr: W::to_net(s, l),
                        except: Vec::new(),
                        observed: W::block_size(l).to_u128(),
                        unobserved_allowed: 0,
                    });
                }
                Ref::Node(id) => {
                    let node = &self.nodes[id as usize];
                    let ch = self.choices[node.choice_off + (j - node.lo) as usize];
                    if ch == 0 {
                        out.push(Block {
                            cidr: W::to_net(node.start, node.len),
                            except: protected.excepts(node.start, node.len),
                            observed: node.observed.to_u128(),
                            unobserved_allowed: node.cost.to_u128(),
                        });
                    } else {
                        // Right first so that the left subtree is emitted first.
                        todo.push((node.right, j - ch));
                        todo.push((node.left, ch));
                    }
                }
            }
        }
    }
}

/// Min-plus convolution of the children's cost vectors `gl` (budgets from `ll`) and `gr` (from
/// `rl`) into `sg`/`sc` (budgets from `lo`, as many as `sg` holds): an entry is replaced only when
/// strictly beaten, and `sc` records the left child's share.
fn convolve<C: Count>(gl: &[C], ll: u32, gr: &[C], rl: u32, lo: u32, sg: &mut [C], sc: &mut [u32]) {
    let hi = lo + sg.len() as u32 - 1;
    for (ai, &ga) in gl.iter().enumerate() {
        let a = ll + ai as u32;
        if a + rl > hi {
            break;
        }
        let n = gr.len().min((hi - a - rl + 1) as usize);
        let base = (a + rl - lo) as usize;
        let sg = &mut sg[base..base + n];
        let sc = &mut sc[base..base + n];
        for ((out, ch), &gb) in sg.iter_mut().zip(sc.iter_mut()).zip(&gr[..n]) {
            let c = ga.sat_add(gb);
            // Branch-free with an unconditional store, so that the loop vectorizes: which side
            // wins is data-dependent and unpredictable.
            let mask = 0u32.wrapping_sub(u32::from(c < *out));
            *ch = (*ch & !mask) | (a & mask);
            *out = if c < *out { c } else { *out };
        }
    }
}

/// Exact blocks of one family as blocks of a cover.
fn exact_blocks<W: Word>(leaves: &[(W, u8)], out: &mut Vec<Block>) {
    out.extend(leaves.iter().map(|&(s, l)| Block {
        cidr: W::to_net(s, l),
        except: Vec::new(),
        observed: W::block_size(l).to_u128(),
        unobserved_allowed: 0,
    }));
}

/// The budgeted cover of the observed addresses and prefixes `observed` (both families; the
/// budget `max_cidrs` is shared by the two; IPv4-mapped IPv6 counts as IPv4, as in [`merge`]).
///
/// If the exact merge has at most `max_cidrs` blocks it is returned unchanged. Otherwise the
/// result is the cover of at most `max_cidrs` blocks with the fewest allowed unobserved addresses
/// where every chosen prefix is an exact block or at least `max_prefix` long, and no unobserved
/// address of a protected range is allowed (`except` carves out protected ranges with no
/// observed address; a prefix that would straddle a partly observed protected range, or lie inside
/// a protected range, is split instead). Ties prefer fewer blocks.
///
/// Cost: a sort, then two linear passes over the n exact blocks; the second keeps, per trie
/// node, a cost vector of at most `K - lo + 1` entries (lo = the fewest blocks possible), so the
/// worst case is O(n·K) time and O(n·K) memory for the choices, and O(n) when the budget cannot
/// be met. 1M distinct IPv4 addresses at K = 256 take a fraction of a second
/// (`benches/cidr.rs`).
pub fn cover(observed: &[IpNet], opts: &CoverOptions) -> Cover {
    let (v4, v6) = split_families(observed);
    let leaves4 = merge_words(v4.into_iter());
    let leaves6 = merge_words(v6.into_iter());
    let k = u32::try_from(opts.max_cidrs.max(1)).unwrap_or(u32::MAX);
    let mut blocks = Vec::new();
    if leaves4.len() + leaves6.len() <= opts.max_cidrs.max(1) {
        exact_blocks(&leaves4, &mut blocks);
        exact_blocks(&leaves6, &mut blocks);
        return Cover {
            blocks,
            budget_met: true,
        };
    }
    let (p4, p6) = split_families(&[builtin_protected(), opts.protected.clone()].concat());
    let prot4 = Protected::new(p4.into_iter(), &leaves4);
    let prot6 = Protected::new(p6.into_iter(), &leaves6);
    let shape4 = Shape::new(&leaves4, opts.max_prefix_v4.min(32), &prot4);
    let shape6 = Shape::new(&leaves6, opts.max_prefix_v6.min(128), &prot6);
    // Budgets beyond the fewest blocks, to be shared by both families.
    let slack = k.saturating_sub(shape4.lo.saturating_add(shape6.lo));
    let dp4 = Dp::solve(leaves4, &shape4, slack);
    let dp6 = Dp::solve(leaves6, &shape6, slack);
    let (j4, j6, budget_met) = split_budget(&dp4, &dp6, k);
    dp4.blocks(j4, &prot4, &mut blocks);
    dp6.blocks(j6, &prot6, &mut blocks);
    Cover { blocks, budget_met }
}

/// Shares the budget `k` between the two families: least total cost, then fewest blocks.
fn split_budget(dp4: &Dp<u32>, dp6: &Dp<u128>, k: u32) -> (u32, u32, bool) {
    if dp4.root.is_none() {
        let (j, _) = dp6.best(k);
        return (0, j, j <= k);
    }
    if dp6.root.is_none() {
        let (j, _) = dp4.best(k);
        return (j, 0, j <= k);
    }
    let lo_sum = dp4.lo.saturating_add(dp6.lo);
    if lo_sum > k {
        // Infeasible: fewest blocks everywhere.
        return (dp4.lo, dp6.lo, false);
    }
    let hi4 = dp4.lo + dp4.g.len() as u32 - 1;
    let hi6 = dp6.lo + dp6.g.len() as u32 - 1;
    let mut best: Option<(u128, u32, u32, u32)> = None;
    for a in dp4.lo..=hi4.min(k - dp6.lo) {
        // The IPv6 side gets the rest of the budget, then gives back what does not lower its cost.
        let b = dp6.fewest(hi6.min(k - a));
        let c = dp4.g[(a - dp4.lo) as usize]
            .to_u128()
            .saturating_add(dp6.g[(b - dp6.lo) as usize]);
        let cand = (c, a + b, a, b);
        if best.is_none_or(|bst| (cand.0, cand.1) < (bst.0, bst.1)) {
            best = Some(cand);
        }
    }
    match best {
        Some((_, _, a, b)) => (a, b, true),
        None => (dp4.lo, dp6.lo, false),
    }
}

/// [`cover`] for plain addresses.
pub fn cover_addrs(observed: &[IpAddr], opts: &CoverOptions) -> Cover {
    let nets: Vec<IpNet> = observed.iter().map(|a| IpNet::from(*a)).collect();
    cover(&nets, opts)
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

    fn cidrs(c: &Cover) -> Vec<String> {
        c.blocks.iter().map(|b| b.cidr.to_string()).collect()
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

    #[test]
    fn exact_cover_within_budget_is_returned_as_is() {
        let c = cover_addrs(
            &[a("198.51.100.1"), a("198.51.100.9")],
            &CoverOptions::default(),
        );
        assert!(c.budget_met);
        assert_eq!(cidrs(&c), ["198.51.100.1/32", "198.51.100.9/32"]);
        assert_eq!(c.unobserved_allowed(), 0);
    }

    #[test]
    fn four_addresses_with_budget_one_give_smallest_covering_prefix() {
        let addrs = [
            a("198.51.100.3"),
            a("198.51.100.9"),
            a("198.51.100.17"),
            a("198.51.100.30"),
        ];
        let opts = CoverOptions {
            max_cidrs: 1,
            ..CoverOptions::default()
        };
        let c = cover_addrs(&addrs, &opts);
        assert!(c.budget_met);
        assert_eq!(cidrs(&c), ["198.51.100.0/27"]);
        assert_eq!(c.blocks[0].observed, 4);
        assert_eq!(c.blocks[0].unobserved_allowed, 28);
    }

    #[test]
    fn budget_two_picks_the_cheaper_split() {
        // .0,.1,.2 (dense) and .200: best 2-cover is .0/30 (1 unobserved) + .200/32.
        let addrs = [
            a("198.51.100.0"),
            a("198.51.100.1"),
            a("198.51.100.2"),
            a("198.51.100.200"),
        ];
        let opts = CoverOptions {
            max_cidrs: 2,
            ..CoverOptions::default()
        };
        let c = cover_addrs(&addrs, &opts);
        assert!(c.budget_met);
        assert_eq!(cidrs(&c), ["198.51.100.0/30", "198.51.100.200/32"]);
        assert_eq!(c.unobserved_allowed(), 1);
    }

    #[test]
    fn never_widens_past_max_prefix() {
        // Two /24s apart: with K=1 a /23 would be needed, which is shorter than /24.
        let addrs = [a("198.51.100.1"), a("198.51.101.1"), a("198.51.101.2")];
        let opts = CoverOptions {
            max_cidrs: 1,
            ..CoverOptions::default()
        };
        let c = cover_addrs(&addrs, &opts);
        assert!(!c.budget_met);
        assert_eq!(cidrs(&c), ["198.51.100.1/32", "198.51.101.0/30"]);
        assert!(c.blocks.iter().all(|b| b.cidr.prefix_len() >= 24));
    }

    #[test]
    fn metadata_address_is_excepted_next_to_observed_neighbour() {
        let addrs = [
            a("169.254.169.253"),
            a("169.254.169.240"),
            a("169.254.169.250"),
        ];
        let opts = CoverOptions {
            max_cidrs: 1,
            ..CoverOptions::default()
        };
        let c = cover_addrs(&addrs, &opts);
        assert!(c.budget_met);
        assert_eq!(cidrs(&c), ["169.254.169.240/28"]);
        assert_eq!(c.blocks[0].except, vec![n("169.254.169.254/32")]);
        // 16 addresses, 3 observed, 1 excepted.
        assert_eq!(c.blocks[0].unobserved_allowed, 12);
    }

    #[test]
    fn observed_protected_address_needs_no_except() {
        let addrs = [a("169.254.169.254"), a("169.254.169.250")];
        let opts = CoverOptions {
            max_cidrs: 1,
            ..CoverOptions::default()
        };
        let c = cover_addrs(&addrs, &opts);
        assert_eq!(cidrs(&c), ["169.254.169.248/29"]);
        assert!(c.blocks[0].except.is_empty());
        assert_eq!(c.blocks[0].unobserved_allowed, 6);
    }

    #[test]
    fn partly_observed_protected_range_is_split_around() {
        // Service CIDR 198.51.100.16/28 with one observed address: no block may straddle it,
        // and nothing inside it may be widened.
        let addrs = [a("198.51.100.1"), a("198.51.100.20"), a("198.51.100.40")];
        let opts = CoverOptions {
            max_cidrs: 1,
            protected: vec![n("198.51.100.16/28")],
            ..CoverOptions::default()
        };
        let c = cover_addrs(&addrs, &opts);
        assert!(!c.budget_met);
        assert_eq!(
            cidrs(&c),
            ["198.51.100.1/32", "198.51.100.20/32", "198.51.100.40/32"]
        );
        let opts = CoverOptions {
            max_cidrs: 2,
            ..opts
        };
        let c = cover_addrs(&addrs, &opts);
        assert!(!c.budget_met);
        assert_eq!(c.blocks.len(), 3);
    }

    #[test]
    fn unobserved_protected_range_inside_a_block_is_excepted() {
        let addrs = [a("198.51.100.1"), a("198.51.100.40")];
        let opts = CoverOptions {
            max_cidrs: 1,
            protected: vec![n("198.51.100.16/28")],
            ..CoverOptions::default()
        };
        let c = cover_addrs(&addrs, &opts);
        assert!(c.budget_met);
        assert_eq!(cidrs(&c), ["198.51.100.0/26"]);
        assert_eq!(c.blocks[0].except, vec![n("198.51.100.16/28")]);
        assert_eq!(c.blocks[0].unobserved_allowed, 64 - 2 - 16);
    }

    #[test]
    fn budget_is_shared_between_families() {
        let addrs = [
            a("198.51.100.1"),
            a("198.51.100.2"),
            a("2001:db8::1"),
            a("2001:db8::2"),
        ];
        let opts = CoverOptions {
            max_cidrs: 3,
            ..CoverOptions::default()
        };
        let c = cover_addrs(&addrs, &opts);
        assert!(c.budget_met);
        // Either family can merge at cost 2 (/30 holding .1 and .2); IPv4 is first in the tie.
        assert_eq!(c.blocks.len(), 3);
        assert_eq!(c.unobserved_allowed(), 2);
    }

    #[test]
    fn ipv4_mapped_ipv6_counts_as_ipv4() {
        let got = merge_addrs(&[a("::ffff:198.51.100.1"), a("198.51.100.0")]);
        assert_eq!(got, vec![n("198.51.100.0/31")]);
        assert_eq!(
            merge(&[n("::ffff:198.51.100.0/120")]),
            vec![n("198.51.100.0/24")]
        );
        // Shorter than /96 it is an ordinary IPv6 prefix.
        assert_eq!(merge(&[n("::/80")]), vec![n("::/80")]);
    }

    #[test]
    fn whole_ipv4_space_costs_fit() {
        // The root of the IPv4 trie: the largest cost an IPv4 node can have.
        let opts = CoverOptions {
            max_cidrs: 1,
            max_prefix_v4: 0,
            ..CoverOptions::default()
        };
        let c = cover_addrs(&[a("0.0.0.1"), a("255.255.255.255")], &opts);
        assert!(c.budget_met);
        assert_eq!(cidrs(&c), ["0.0.0.0/0"]);
        assert_eq!(
            c.blocks[0].except,
            vec![n("127.0.0.0/8"), n("169.254.169.254/32")]
        );
        assert_eq!(c.blocks[0].observed, 2);
        assert_eq!(
            c.blocks[0].unobserved_allowed,
            (1u128 << 32) - 2 - (1 << 24) - 1
        );
    }

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

    #[test]
    fn empty_input() {
        assert!(merge(&[]).is_empty());
        let c = cover(&[], &CoverOptions::default());
        assert!(c.blocks.is_empty());
        assert!(c.budget_met);
    }
}
