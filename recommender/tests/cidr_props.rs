//! Property tests for `leash::cidr`: the exact merge against a bitmap of the input, and the
//! budgeted cover against its rules and against a brute-force optimum on small inputs.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use leash::cidr::{self, Cover, CoverOptions};
use proptest::prelude::*;

/// A prefix as `(first, last, len)` integers of its family.
fn span(n: &IpNet) -> (u128, u128) {
    match n {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

fn is_v4(n: &IpNet) -> bool {
    matches!(n, IpNet::V4(_))
}

fn net(v4: bool, addr: u128, len: u8) -> IpNet {
    if v4 {
        IpNet::V4(
            Ipv4Net::new(Ipv4Addr::from(addr as u32), len)
                .expect("test prefix lengths are valid")
                .trunc(),
        )
    } else {
        IpNet::V6(
            Ipv6Net::new(Ipv6Addr::from(addr), len)
                .expect("test prefix lengths are valid")
                .trunc(),
        )
    }
}

fn contains(n: &IpNet, v4: bool, x: u128) -> bool {
    let (s, e) = span(n);
    is_v4(n) == v4 && s <= x && x <= e
}

fn canonical(n: &IpNet) -> bool {
    n.trunc() == *n
}

const V4_BASE: u128 = 0xC633_6400; // 198.51.100.0/22
const V6_BASE: u128 = 0x2001_0db8_u128 << 96; // 2001:db8::/118

/// Prefixes inside a 1024-address region: `(offset, len)`, len from the region's /22 (or /118).
fn region_nets() -> impl Strategy<Value = Vec<(u16, u8)>> {
    prop::collection::vec((0u16..1024, 0u8..=10), 0..24)
}

fn to_nets(v4: bool, raw: &[(u16, u8)]) -> Vec<IpNet> {
    let (base, width) = if v4 { (V4_BASE, 32) } else { (V6_BASE, 128) };
    raw.iter()
        .map(|&(off, extra)| net(v4, base + u128::from(off), width - 10 + extra))
        .collect()
}

/// The union of `nets` as a bitmap over the region.
fn bitmap(v4: bool, nets: &[IpNet]) -> Vec<bool> {
    let base = if v4 { V4_BASE } else { V6_BASE };
    (0..1024u128)
        .map(|i| nets.iter().any(|n| contains(n, v4, base + i)))
        .collect()
}

/// Checks that `out` is exactly the union of `input` over the region, canonical, sorted,
/// disjoint and made of maximal blocks.
fn check_exact(v4: bool, input: &[IpNet], out: &[IpNet]) -> Result<(), TestCaseError> {
    let base = if v4 { V4_BASE } else { V6_BASE };
    let want = bitmap(v4, input);
    let got = bitmap(v4, out);
    prop_assert_eq!(&want, &got);
    let want_size = want.iter().filter(|b| **b).count() as u128;
    let got_size: u128 = out.iter().map(cidr::net_size).sum();
    prop_assert_eq!(want_size, got_size);
    for n in out {
        prop_assert!(canonical(n), "{} is not canonical", n);
        prop_assert_eq!(is_v4(n), v4);
        // Maximal: the parent prefix is not wholly in the input.
        let (s, _) = span(n);
        if s >= base && n.prefix_len() > (if v4 { 22 } else { 118 }) {
            let parent = net(v4, s, n.prefix_len() - 1);
            let (ps, pe) = span(&parent);
            let whole = (ps..=pe).all(|x| want[(x - base) as usize]);
            prop_assert!(!whole, "{} could merge into {}", n, parent);
        }
    }
    for w in out.windows(2) {
        prop_assert!(
            span(&w[0]).1 < span(&w[1]).0,
            "{} and {} overlap or are unsorted",
            w[0],
            w[1]
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn merge_is_exact_v4(raw in region_nets()) {
        let input = to_nets(true, &raw);
        check_exact(true, &input, &cidr::merge(&input))?;
    }

    #[test]
    fn merge_is_exact_v6(raw in region_nets()) {
        let input = to_nets(false, &raw);
        check_exact(false, &input, &cidr::merge(&input))?;
    }

    #[test]
    fn merge_is_idempotent_and_order_independent(
        (raw, shuffled) in region_nets().prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
        v4 in any::<bool>(),
    ) {
        let input = to_nets(v4, &raw);
        let once = cidr::merge(&input);
        prop_assert_eq!(cidr::merge(&once), once.clone());
        prop_assert_eq!(cidr::merge(&to_nets(v4, &shuffled)), once);
    }

    #[test]
    fn per_family_entry_points_agree(raw4 in region_nets(), raw6 in region_nets(), offs in prop::collection::vec(0u16..1024, 0..64)) {
        let v4 = to_nets(true, &raw4);
        let v6 = to_nets(false, &raw6);
        let mixed: Vec<IpNet> = v6.iter().chain(&v4).copied().collect();
        let mut want: Vec<IpNet> = cidr::merge_v4(&v4.iter().map(|n| match n { IpNet::V4(n) => *n, IpNet::V6(_) => unreachable!() }).collect::<Vec<_>>())
            .into_iter().map(IpNet::V4).collect();
        want.extend(cidr::merge_v6(&v6.iter().map(|n| match n { IpNet::V6(n) => *n, IpNet::V4(_) => unreachable!() }).collect::<Vec<_>>())
            .into_iter().map(IpNet::V6));
        prop_assert_eq!(cidr::merge(&mixed), want);
        // Plain addresses give the same result as /32 prefixes.
        let addrs: Vec<Ipv4Addr> = offs.iter().map(|&o| Ipv4Addr::from((V4_BASE + u128::from(o)) as u32)).collect();
        let as_nets: Vec<IpNet> = addrs.iter().map(|a| IpNet::from(IpAddr::V4(*a))).collect();
        let via_addrs: Vec<IpNet> = cidr::merge_v4_addrs(&addrs).into_iter().map(IpNet::V4).collect();
        prop_assert_eq!(via_addrs, cidr::merge(&as_nets));
    }
}

// ---------------------------------------------------------------------------------------------
// Budgeted cover
// ---------------------------------------------------------------------------------------------

/// Everything needed to judge a cover by brute force over addresses.
struct Case {
    v4: bool,
    observed: BTreeSet<u128>,
    /// Raw protected prefixes (caller's plus built-in).
    protected: Vec<IpNet>,
    opts: CoverOptions,
}

impl Case {
    fn new(v4: bool, observed: BTreeSet<u128>, extra: Vec<IpNet>, opts: CoverOptions) -> Self {
        let mut protected = cidr::builtin_protected();
        protected.extend(extra.iter().copied());
        let opts = CoverOptions {
            protected: extra,
            ..opts
        };
        Case {
            v4,
            observed,
            protected,
            opts,
        }
    }

    fn max_prefix(&self) -> u8 {
        if self.v4 {
            self.opts.max_prefix_v4
        } else {
            self.opts.max_prefix_v6
        }
    }

    fn is_protected(&self, x: u128) -> bool {
        self.protected.iter().any(|p| contains(p, self.v4, x))
    }

    fn observed_in(&self, s: u128, e: u128) -> usize {
        self.observed.range(s..=e).count()
    }

    fn inputs(&self) -> Vec<IpNet> {
        self.observed
            .iter()
            .map(|&x| net(self.v4, x, if self.v4 { 32 } else { 128 }))
            .collect()
    }

    /// The independent definition of a valid block: `None` if `p` may not be chosen, otherwise
    /// `(excepts, unobserved allowed)`.
    fn judge(&self, p: &IpNet) -> Option<(Vec<IpNet>, u128)> {
        let (s, e) = span(p);
        let size = e - s + 1;
        let obs = self.observed_in(s, e) as u128;
        if obs == 0 {
            return None;
        }
        if obs == size {
            return Some((Vec::new(), 0));
        }
        if p.prefix_len() < self.max_prefix() {
            return None;
        }
        let merged = cidr::merge(&self.protected);
        let excepts: Vec<IpNet> = merged
            .into_iter()
            .filter(|r| is_v4(r) == self.v4)
            .filter(|r| {
                let (rs, re) = span(r);
                s <= rs
                    && re <= e
                    && r.prefix_len() > p.prefix_len()
                    && self.observed_in(rs, re) == 0
            })
            .collect();
        let mut cost = 0u128;
        for x in s..=e {
            if self.observed.contains(&x) || excepts.iter().any(|r| contains(r, self.v4, x)) {
                continue;
            }
            if self.is_protected(x) {
                return None;
            }
            cost += 1;
        }
        Some((excepts, cost))
    }

    /// Checks every rule a cover must follow; returns its total cost.
    fn check(&self, c: &Cover) -> Result<u128, TestCaseError> {
        let k = self.opts.max_cidrs.max(1);
        let exact = cidr::merge(&self.inputs());
        if exact.len() <= k {
            prop_assert!(c.budget_met);
            let got: Vec<IpNet> = c.blocks.iter().map(|b| b.cidr).collect();
            prop_assert_eq!(got, exact);
        }
        if c.budget_met {
            prop_assert!(c.blocks.len() <= k);
        } else {
            prop_assert!(c.blocks.len() > k);
        }
        for w in c.blocks.windows(2) {
            prop_assert!(span(&w[0].cidr).1 < span(&w[1].cidr).0);
        }
        for &x in &self.observed {
            let holder = c.blocks.iter().find(|b| contains(&b.cidr, self.v4, x));
            prop_assert!(holder.is_some(), "observed {:#x} not covered", x);
            if let Some(b) = holder {
                prop_assert!(
                    !b.except.iter().any(|r| contains(r, self.v4, x)),
                    "observed {:#x} excepted",
                    x
                );
            }
        }
        let mut total = 0u128;
        for b in &c.blocks {
            prop_assert!(canonical(&b.cidr));
            prop_assert_eq!(is_v4(&b.cidr), self.v4);
            for r in &b.except {
                prop_assert!(canonical(r));
                prop_assert_eq!(is_v4(r), self.v4);
                prop_assert!(
                    r.prefix_len() > b.cidr.prefix_len() && b.cidr.contains(r),
                    "{} not strictly inside {}",
                    r,
                    b.cidr
                );
            }
            let judged = self.judge(&b.cidr);
            prop_assert!(judged.is_some(), "{} may not be chosen", b.cidr);
            if let Some((excepts, cost)) = judged {
                prop_assert_eq!(&b.except, &excepts);
                prop_assert_eq!(b.unobserved_allowed, cost, "cost of {}", b.cidr);
                let (s, e) = span(&b.cidr);
                prop_assert_eq!(b.observed, self.observed_in(s, e) as u128);
                total += cost;
            }
        }
        prop_assert_eq!(c.unobserved_allowed(), total);
        Ok(total)
    }

    /// Brute force: `(blocks, cost)` of every cover of the observed addresses (all inside
    /// `region`) by disjoint valid prefixes inside `region` or containing it.
    fn brute_force(&self, region: &IpNet) -> Vec<(usize, u128)> {
        let width = if self.v4 { 32 } else { 128 };
        let (rs, _) = span(region);
        let mut cands: Vec<(u128, u128, u128)> = Vec::new();
        // Ancestors of the region down to max_prefix, then every prefix inside it.
        for len in self.max_prefix().min(region.prefix_len())..=width {
            if len < region.prefix_len() {
                let p = net(self.v4, rs, len);
                if let Some((_, cost)) = self.judge(&p) {
                    let (s, e) = span(&p);
                    cands.push((s, e, cost));
                }
                continue;
            }
            let step = 1u128 << (width - len);
            let count = cidr::net_size(region) / step;
            for i in 0..count {
                let p = net(self.v4, rs + i * step, len);
                if let Some((_, cost)) = self.judge(&p) {
                    let (s, e) = span(&p);
                    cands.push((s, e, cost));
                }
            }
        }
        cands.sort_unstable();
        let obs: Vec<u128> = self.observed.iter().copied().collect();
        let mut search = Search {
            cands: &cands,
            obs: &obs,
            covers: Vec::new(),
        };
        search.go(0, None, 0, 0);
        search.covers
    }
}

/// Exhaustive search over disjoint candidate prefixes `(first, last, cost)`, sorted by start.
struct Search<'a> {
    cands: &'a [(u128, u128, u128)],
    obs: &'a [u128],
    covers: Vec<(usize, u128)>,
}

impl Search<'_> {
    /// Depth-first over increasing, disjoint candidates that cover the observed addresses in
    /// order: the next candidate must contain the first observed address not yet covered.
    fn go(&mut self, next_obs: usize, after: Option<u128>, used: usize, cost: u128) {
        if next_obs == self.obs.len() {
            self.covers.push((used, cost));
            return;
        }
        let x = self.obs[next_obs];
        for &(s, e, c) in self.cands {
            if after.is_some_and(|a| s <= a) || !(s <= x && x <= e) {
                continue;
            }
            let n = self.obs.partition_point(|&o| o <= e);
            self.go(n, Some(e), used + 1, cost + c);
        }
    }
}

/// A second, independent optimum for medium inputs: a DP over the *uncompressed* binary trie of
/// `region` with exact block counts `0..=cap`, judging every prefix from its definition, plus
/// the region's ancestors down to `max_prefix` as single blocks. Returns `(blocks, cost)` for
/// every feasible count.
fn uncompressed_optimum(case: &Case, region: &IpNet, cap: usize) -> Vec<(usize, u128)> {
    fn solve(case: &Case, p: &IpNet, cap: usize, width: u8) -> Vec<Option<u128>> {
        let (s, e) = span(p);
        let mut f = vec![None; cap + 1];
        if case.observed_in(s, e) == 0 {
            f[0] = Some(0);
            return f;
        }
        if let Some((_, cost)) = case.judge(p) {
            f[1] = Some(cost);
        }
        if p.prefix_len() < width {
            let len = p.prefix_len() + 1;
            let l = solve(case, &net(case.v4, s, len), cap, width);
            let r = solve(
                case,
                &net(case.v4, s + (1u128 << (width - len)), len),
                cap,
                width,
            );
            for (a, la) in l.iter().enumerate() {
                for (b, rb) in r.iter().enumerate().take(cap + 1 - a) {
                    if let (Some(x), Some(y)) = (la, rb) {
                        let c = x + y;
                        if f[a + b].is_none_or(|old| c < old) {
                            f[a + b] = Some(c);
                        }
                    }
                }
            }
        }
        f
    }
    let width = if case.v4 { 32 } else { 128 };
    let mut f = solve(case, region, cap, width);
    let (rs, _) = span(region);
    for len in case.max_prefix()..region.prefix_len() {
        if let Some((_, cost)) = case.judge(&net(case.v4, rs, len))
            && f[1].is_none_or(|old| cost < old)
        {
            f[1] = Some(cost);
        }
    }
    f.iter()
        .enumerate()
        .filter_map(|(j, c)| c.map(|c| (j, c)))
        .collect()
}

/// Small regions: plain, next to the metadata address, inside loopback, and IPv6.
fn small_region(i: usize) -> IpNet {
    let regions = [
        "198.51.100.0/28",
        "198.51.100.48/28",
        "169.254.169.240/28",
        "127.0.0.16/28",
        "2001:db8::10/124",
        "fc00:db8::/124",
    ];
    regions[i].parse().expect("fixed test regions parse")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn cover_is_optimal_on_small_inputs(
        region in 0usize..6,
        mask in 1u16..,
        extra in prop::collection::vec((0u16..16, 0u8..=5), 0..3),
        k in 1usize..=4,
        slack in 0u8..=8,
    ) {
        let region = small_region(region);
        let v4 = is_v4(&region);
        let (rs, _) = span(&region);
        let width: u8 = if v4 { 32 } else { 128 };
        let observed: BTreeSet<u128> = (0..16).filter(|i| mask & (1 << i) != 0).map(|i| rs + i).collect();
        // Extra protected prefixes in or around the region (len width-5 ..= width).
        let extra: Vec<IpNet> = extra.iter().map(|&(off, l)| net(v4, rs + u128::from(off), width - l)).collect();
        let max_prefix = width - slack;
        let opts = CoverOptions {
            max_cidrs: k,
            max_prefix_v4: if v4 { max_prefix } else { 24 },
            max_prefix_v6: if v4 { 48 } else { max_prefix },
            protected: Vec::new(),
        };
        let case = Case::new(v4, observed, extra, opts);
        let c = cidr::cover(&case.inputs(), &case.opts);
        let cost = case.check(&c)?;
        // Within budget the exact merge is kept as is (checked above); the optimum applies beyond.
        let exact = cidr::merge(&case.inputs()).len();
        prop_assume!(exact > k);
        let covers = case.brute_force(&region);
        let within = covers.iter().filter(|(n, _)| *n <= k).map(|&(n, c)| (c, n)).min();
        match within {
            // Least cost, then fewest blocks.
            Some(best) => {
                prop_assert!(c.budget_met, "brute force found a cover within budget: {:?}", best);
                prop_assert_eq!((cost, c.blocks.len()), best, "{:?}", c);
            }
            // Over budget: fewest blocks, then least cost.
            None => {
                prop_assert!(!c.budget_met);
                let fewest = covers.iter().min().copied();
                prop_assert_eq!(Some((c.blocks.len(), cost)), fewest, "{:?}", c);
            }
        }
    }

    #[test]
    fn cover_matches_an_uncompressed_dp_on_medium_inputs(
        offs in prop::collection::vec(0u8.., 1..40),
        extra in prop::collection::vec((any::<u8>(), 0u8..=8), 0..4),
        k in 1usize..=12,
        max_prefix in 22u8..=32,
        metadata in any::<bool>(),
    ) {
        let region: IpNet = if metadata { "169.254.169.0/24" } else { "198.51.100.0/24" }
            .parse()
            .expect("fixed test regions parse");
        let (rs, _) = span(&region);
        let observed: BTreeSet<u128> = offs.iter().map(|&o| rs + u128::from(o)).collect();
        let extra: Vec<IpNet> = extra.iter().map(|&(o, l)| net(true, rs + u128::from(o), 24 + l)).collect();
        let opts = CoverOptions { max_cidrs: k, max_prefix_v4: max_prefix, ..CoverOptions::default() };
        let case = Case::new(true, observed, extra, opts);
        let c = cidr::cover(&case.inputs(), &case.opts);
        let cost = case.check(&c)?;
        prop_assume!(cidr::merge(&case.inputs()).len() > k);
        let all = uncompressed_optimum(&case, &region, case.observed.len());
        let within = all.iter().filter(|(n, _)| *n <= k).map(|&(n, c)| (c, n)).min();
        match within {
            Some(best) => {
                prop_assert!(c.budget_met);
                prop_assert_eq!((cost, c.blocks.len()), best);
            }
            None => {
                prop_assert!(!c.budget_met);
                prop_assert_eq!(Some((c.blocks.len(), cost)), all.iter().min().copied());
            }
        }
    }

    #[test]
    fn cover_follows_the_rules_on_wider_inputs(
        offs in prop::collection::vec(0u16..1024, 1..200),
        extra in prop::collection::vec((0u16..1024, 0u8..=10), 0..5),
        k in 1usize..=16,
        max_prefix in 22u8..=32,
        metadata in any::<bool>(),
    ) {
        // Either the lab range or the /22 holding the metadata address.
        let base: u128 = if metadata { 0xA9FE_A800 } else { V4_BASE };
        let observed: BTreeSet<u128> = offs.iter().map(|&o| base + u128::from(o)).collect();
        let extra: Vec<IpNet> = extra.iter().map(|&(o, l)| net(true, base + u128::from(o), 22 + l)).collect();
        let opts = CoverOptions { max_cidrs: k, max_prefix_v4: max_prefix, ..CoverOptions::default() };
        let case = Case::new(true, observed, extra, opts);
        let c = cidr::cover(&case.inputs(), &case.opts);
        case.check(&c)?;
    }

    #[test]
    fn cover_is_deterministic_and_order_independent(
        (offs, shuffled) in prop::collection::vec(0u16..1024, 1..100)
            .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
        k in 1usize..=8,
    ) {
        let nets = |o: &[u16]| -> Vec<IpNet> { o.iter().map(|&o| net(true, V4_BASE + u128::from(o), 32)).collect() };
        let opts = CoverOptions { max_cidrs: k, ..CoverOptions::default() };
        let a = cidr::cover(&nets(&offs), &opts);
        prop_assert_eq!(&a, &cidr::cover(&nets(&shuffled), &opts));
        prop_assert_eq!(&a, &cidr::cover(&nets(&offs), &opts));
    }

    #[test]
    fn budget_is_shared_optimally_between_families(
        m4 in 1u16..,
        m6 in 1u16..,
        k in 1usize..=4,
    ) {
        // Both families at once: the total cost equals the best split of K between two
        // independent single-family covers.
        let v4: Vec<IpNet> = (0..16).filter(|i| m4 & (1 << i) != 0).map(|i| net(true, V4_BASE + i, 32)).collect();
        let v6: Vec<IpNet> = (0..16).filter(|i| m6 & (1 << i) != 0).map(|i| net(false, V6_BASE + i, 128)).collect();
        let both: Vec<IpNet> = v4.iter().chain(&v6).copied().collect();
        let opts = |k| CoverOptions { max_cidrs: k, max_prefix_v4: 0, max_prefix_v6: 0, ..CoverOptions::default() };
        let c = cidr::cover(&both, &opts(k));
        let mut best: Option<(u128, usize)> = None;
        for a in 1..k {
            let c4 = cidr::cover(&v4, &opts(a));
            let c6 = cidr::cover(&v6, &opts(k - a));
            let cand = (c4.unobserved_allowed() + c6.unobserved_allowed(), c4.blocks.len() + c6.blocks.len());
            if best.is_none_or(|b| cand < b) {
                best = Some(cand);
            }
        }
        match best {
            Some(b) => {
                prop_assert!(c.budget_met);
                prop_assert_eq!((c.unobserved_allowed(), c.blocks.len()), b);
            }
            // K = 1 cannot hold two families.
            None => prop_assert!(!c.budget_met && c.blocks.len() == 2),
        }
    }
}
