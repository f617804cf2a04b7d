//! The budgeted cover: at most `max_cidrs` prefixes over the observed addresses, allowing the
//! fewest unobserved addresses, by a dynamic program over the compressed binary trie of the
//! exact blocks.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::merge::merge_words;
use super::word::{Count, Word, common_len, last, split_families, trunc, v4net, v6net};

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
    /// Previous blocks among its leaves (hysteresis; 0 without previous blocks).
    prev: u32,
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
    /// With previous blocks: beside each cost, the previous blocks the choice merges into a
    /// wider block (`barena` parallels `garena`, `sb` parallels `sg`).
    barena: Vec<u32>,
    sb: Vec<u32>,
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
    /// With previous blocks, beside `g`: the previous blocks merged away (else empty).
    b: Vec<u32>,
}

impl<W: Word> Dp<W> {
    /// Solves the DP over the trie of `leaves`: for every node and every budget `j` from its
    /// fewest blocks `lo` up to `lo + slack` (and at most its leaf count), the least cost of
    /// covering its observed addresses with at most `j` blocks, either by its own prefix or by
    /// splitting `j` between its children (a min-plus convolution).
    ///
    /// `prev[i]` says whether leaf `i` is a previous block (empty: none is). Then ties of cost
    /// are broken by the fewest previous blocks merged into wider ones (hysteresis); without,
    /// the plain DP runs unchanged.
    fn solve(leaves: Vec<(W, u8)>, shape: &Shape<W>, slack: u32, prev: &[bool]) -> Self {
        let keeping = !prev.is_empty();
        let mut st = SolveState::<W> {
            nodes: Vec::with_capacity(shape.costs.len()),
            choices: Vec::new(),
            garena: Vec::new(),
            sg: Vec::new(),
            sc: Vec::new(),
            barena: Vec::new(),
            sb: Vec::new(),
        };
        let root = fold_trie(
            &leaves,
            &mut st,
            |st, i| {
                st.garena.push(W::Cost::ZERO);
                if keeping {
                    st.barena.push(0);
                }
                Subtree {
                    // Leaf indices fit in u32 for any input that fits in memory.
                    r: Ref::Leaf(i as u32),
                    leaves: 1,
                    prev: u32::from(prev.get(i).copied().unwrap_or(false)),
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
                    barena,
                    sb,
                } = st;
                let prev_below = left.prev.saturating_add(right.prev);
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
                    let lr = left.g_off..left.g_off + (left.hi - left.lo + 1) as usize;
                    let rr = right.g_off..right.g_off + (right.hi - right.lo + 1) as usize;
                    let (gl, gr) = (&garena[lr.clone()], &garena[rr.clone()]);
                    if keeping {
                        // The own prefix merges every previous block below into one.
                        sb.clear();
                        sb.resize(n, if cost.is_some() { prev_below } else { u32::MAX });
                        let (bl, br) = (&barena[lr], &barena[rr]);
                        convolve_keeping((gl, bl, left.lo), (gr, br, right.lo), lo, sg, sb, sc);
                    } else {
                        convolve(gl, left.lo, gr, right.lo, lo, sg, sc);
                    }
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
                if keeping {
                    barena.truncate(left.g_off);
                    barena.extend_from_slice(sb);
                }
                Subtree {
                    r: Ref::Node(id as u32),
                    leaves: n_leaves,
                    prev: prev_below,
                    observed,
                    lo,
                    hi,
                    g_off,
                }
            },
        );
        let (root, lo, g, b) = match root {
            Some(top) => (
                Some(top.r),
                top.lo,
                st.garena[top.g_off..].to_vec(),
                st.barena
                    .get(top.g_off..)
                    .map(<[u32]>::to_vec)
                    .unwrap_or_default(),
            ),
            None => (None, 0, vec![W::Cost::ZERO], Vec::new()),
        };
        Dp {
            leaves,
            nodes: st.nodes,
            choices: st.choices,
            root,
            lo,
            g,
            b,
        }
    }

    /// The previous blocks merged away by the optimal cover with at most `j` blocks (0
    /// without previous blocks).
    fn broken(&self, j: u32) -> u32 {
        self.b.get((j - self.lo) as usize).copied().unwrap_or(0)
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
        let same = (self.lo..=j).filter(|&i| self.g[(i - self.lo) as usize] == target);
        if self.b.is_empty() {
            return same.min().unwrap_or(j);
        }
        // Hysteresis: among budgets of the same cost, the fewest previous blocks merged away.
        same.min_by_key(|&i| (self.broken(i), i)).unwrap_or(j)
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

/// [`convolve`] with the previous blocks merged away as a second criterion: an entry is
/// replaced when its (cost, merged previous blocks) is strictly beaten. Scalar: only covers
/// that keep previous blocks take this path.
fn convolve_keeping<C: Count>(
    (gl, bl, ll): (&[C], &[u32], u32),
    (gr, br, rl): (&[C], &[u32], u32),
    lo: u32,
    sg: &mut [C],
    sb: &mut [u32],
    sc: &mut [u32],
) {
    let hi = lo + sg.len() as u32 - 1;
    for (ai, (&ga, &ba)) in gl.iter().zip(bl).enumerate() {
        let a = ll + ai as u32;
        if a + rl > hi {
            break;
        }
        let n = gr.len().min((hi - a - rl + 1) as usize);
        let base = (a + rl - lo) as usize;
        for (k, (&gb, &bb)) in gr[..n].iter().zip(&br[..n]).enumerate() {
            let (c, b) = (ga.sat_add(gb), ba.saturating_add(bb));
            let i = base + k;
            if (c, b) < (sg[i], sb[i]) {
                sg[i] = c;
                sb[i] = b;
                sc[i] = a;
            }
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
/// budget `max_cidrs` is shared by the two; IPv4-mapped IPv6 counts as IPv4, as in [`merge`](fn@super::merge)).
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
    cover_with(observed, &[], opts)
}

/// [`cover`] of `observed` and `previous` together; ties of cost prefer the covers that keep
/// the previous blocks (those that remain leaves of the trie) as they are.
fn cover_with(observed: &[IpNet], previous: &[IpNet], opts: &CoverOptions) -> Cover {
    let all: Vec<IpNet>;
    let observed = if previous.is_empty() {
        observed
    } else {
        all = observed.iter().chain(previous).copied().collect();
        &all
    };
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
    let (prev4, prev6) = if previous.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        let (p4, p6) = split_families(previous);
        (previous_leaves(&leaves4, p4), previous_leaves(&leaves6, p6))
    };
    let dp4 = Dp::solve(leaves4, &shape4, slack, &prev4);
    let dp6 = Dp::solve(leaves6, &shape6, slack, &prev6);
    let (j4, j6, budget_met) = split_budget(&dp4, &dp6, k);
    dp4.blocks(j4, &prot4, &mut blocks);
    dp6.blocks(j6, &prot6, &mut blocks);
    Cover { blocks, budget_met }
}

/// Per leaf, whether it is one of the `previous` blocks as it was (not merged with observed
/// addresses into a larger exact block).
fn previous_leaves<W: Word>(leaves: &[(W, u8)], previous: Vec<(W, u8)>) -> Vec<bool> {
    let previous: std::collections::BTreeSet<(W, u8)> = previous.into_iter().collect();
    leaves.iter().map(|l| previous.contains(l)).collect()
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
    let mut best: Option<(u128, u32, u32, u32, u32)> = None;
    for a in dp4.lo..=hi4.min(k - dp6.lo) {
        // The IPv6 side gets the rest of the budget, then gives back what does not lower its cost.
        let b = dp6.fewest(hi6.min(k - a));
        let c = dp4.g[(a - dp4.lo) as usize]
            .to_u128()
            .saturating_add(dp6.g[(b - dp6.lo) as usize]);
        // Cost, then previous blocks merged away (always 0 without them), then blocks.
        let broken = dp4.broken(a).saturating_add(dp6.broken(b));
        let cand = (c, broken, a + b, a, b);
        if best.is_none_or(|bst| (cand.0, cand.1, cand.2) < (bst.0, bst.1, bst.2)) {
            best = Some(cand);
        }
    }
    match best {
        Some((_, _, _, a, b)) => (a, b, true),
        None => (dp4.lo, dp6.lo, false),
    }
}

/// [`cover`] for plain addresses.
pub fn cover_addrs(observed: &[IpAddr], opts: &CoverOptions) -> Cover {
    let nets: Vec<IpNet> = observed.iter().map(|a| IpNet::from(*a)).collect();
    cover(&nets, opts)
}

/// The budgeted cover of `observed` that keeps the `previous` blocks (hysteresis): each
/// previous block is one more observed block, so the cover never splits or drops it, and it
/// changes only when the budget forces it into a wider block. The counts of the result are
/// of `observed` only: a kept block's addresses that were not observed count as unobserved.
/// Without previous blocks this is [`cover`].
pub fn cover_keeping(observed: &[IpNet], previous: &[IpNet], opts: &CoverOptions) -> Cover {
    if previous.is_empty() {
        return cover(observed, opts);
    }
    let mut c = cover_with(observed, previous, opts);
    let exact = super::merge(observed);
    for b in &mut c.blocks {
        let seen = exact
            .iter()
            .filter(|o| b.cidr.contains(*o))
            .fold(0u128, |acc, o| acc.saturating_add(super::net_size(o)));
        let carved = b
            .except
            .iter()
            .fold(0u128, |acc, e| acc.saturating_add(super::net_size(e)));
        b.observed = seen;
        b.unobserved_allowed = super::net_size(&b.cidr)
            .saturating_sub(seen)
            .saturating_sub(carved);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cidr::{merge, merge_addrs};

    /// Two merges of equal cost, one budget short: the one that keeps the previous block
    /// as it is wins, whichever side it is on.
    #[test]
    fn equal_cost_covers_keep_the_previous_blocks() {
        let opts = CoverOptions {
            max_cidrs: 3,
            ..CoverOptions::default()
        };
        let observed = [
            n("10.0.0.0/32"),
            n("10.0.0.2/32"),
            n("10.0.1.0/32"),
            n("10.0.1.2/32"),
        ];
        let cidrs = |c: &Cover| c.blocks.iter().map(|b| b.cidr).collect::<Vec<_>>();
        let plain = cover(&observed, &opts);
        assert_eq!(plain.blocks.len(), 3);
        for (prev, merged) in [
            ("10.0.0.0/32", "10.0.1.0/30"),
            ("10.0.1.2/32", "10.0.0.0/30"),
        ] {
            let c = cover_keeping(&observed, &[n(prev)], &opts);
            assert!(cidrs(&c).contains(&n(prev)), "{prev}: {:?}", cidrs(&c));
            assert!(cidrs(&c).contains(&n(merged)), "{prev}: {:?}", cidrs(&c));
            assert_eq!(c.unobserved_allowed(), plain.unobserved_allowed());
        }
    }

    #[test]
    fn previous_blocks_are_kept_until_the_budget_forces_a_change() {
        let opts = CoverOptions {
            max_cidrs: 2,
            ..CoverOptions::default()
        };
        let prev = [n("203.0.113.0/24")];
        // Inside the previous block: it stays, not narrowed to the observed address.
        let c = cover_keeping(&[n("203.0.113.7/32")], &prev, &opts);
        let cidrs: Vec<IpNet> = c.blocks.iter().map(|b| b.cidr).collect();
        assert_eq!(cidrs, [n("203.0.113.0/24")]);
        assert_eq!(
            (c.blocks[0].observed, c.blocks[0].unobserved_allowed),
            (1, 255)
        );
        // A new address outside: one more block, the previous one unchanged.
        let c = cover_keeping(&[n("203.0.113.7/32"), n("198.51.100.1/32")], &prev, &opts);
        let cidrs: Vec<IpNet> = c.blocks.iter().map(|b| b.cidr).collect();
        assert_eq!(cidrs, [n("198.51.100.1/32"), n("203.0.113.0/24")]);
        // Without previous blocks: the plain cover.
        assert_eq!(
            cover_keeping(&[n("203.0.113.7/32")], &[], &opts),
            cover(&[n("203.0.113.7/32")], &opts)
        );
    }

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
    fn empty_input() {
        assert!(merge(&[]).is_empty());
        let c = cover(&[], &CoverOptions::default());
        assert!(c.blocks.is_empty());
        assert!(c.budget_met);
    }
}
