//! The non-pod address space: ipBlock boundaries, the addresses that are not destinations of
//! their own (pod and Service addresses, IPv4-mapped IPv6), NodePorts on node addresses, and
//! the changes towards the ranges left.

use std::collections::{BTreeMap, BTreeSet};

use super::rules::{allowed, direction, entries};
use super::sets::{Family, addr, key, merge_ranges, without};
use super::{Engine, Entry, STATES, Target};
use crate::eval::{PolicyPeer, PolicySet};

/// The ipBlock boundaries of both states, per family: the start of every interval, sorted.
pub(super) fn policy_bounds(states: [&PolicySet; 2]) -> [Vec<u128>; 2] {
    let mut bounds: [Vec<u128>; 2] = [Vec::new(), Vec::new()];
    for s in STATES {
        for p in states[s].iter() {
            for rule in p.egress.iter().chain(&p.ingress).flatten() {
                for peer in &rule.peers {
                    if let PolicyPeer::IpBlock { cidr, except } = peer {
                        for net in std::iter::once(cidr).chain(except) {
                            push_bounds(&mut bounds, net);
                        }
                    }
                }
            }
        }
    }
    for b in &mut bounds {
        b.sort_unstable();
        b.dedup();
    }
    bounds
}

impl Engine<'_> {
    /// Fills the holes (pod addresses, from `units`, and Service addresses), the node addresses
    /// and the NodePorts.
    pub(super) fn add_address_space(&mut self) {
        let cluster = self.cluster;
        let mut holes: [Vec<(u128, u128)>; 2] = [Vec::new(), Vec::new()];
        for &(_, ip) in &self.units {
            let (f, x) = key(ip);
            holes[f.index()].push((x, x));
        }
        for s in &cluster.services {
            for &ip in s.cluster_ips.iter().chain(&s.external_ips) {
                let (f, x) = key(ip);
                holes[f.index()].push((x, x));
            }
        }
        // ::ffff:0:0/96: the evaluator reads these as IPv4 addresses.
        holes[1].push((0xffff_0000_0000, 0xffff_ffff_ffff));
        self.holes = holes.map(merge_ranges);

        // NodePorts: on a node's address they lead to a Service, not to the node.
        for s in &cluster.services {
            for p in &s.ports {
                if let Some(np) = p.node_port {
                    self.node_ports.add(p.protocol, np, np);
                }
            }
        }
        let node_ips = cluster.nodes.iter().flat_map(|n| n.ips.iter()).chain(
            cluster
                .pods
                .iter()
                .filter(|p| p.host_network)
                .flat_map(|p| p.ips.iter()),
        );
        for ip in node_ips {
            let (f, x) = key(*ip);
            self.node_addresses[f.index()].push(x);
        }
        for v in &mut self.node_addresses {
            v.sort_unstable();
            v.dedup();
        }
    }

    /// The changes of a source class (whose egress changed) towards non-pod addresses.
    pub(super) fn external_changes(&self, sk: usize) -> BTreeSet<(Entry, Target)> {
        let mut out = BTreeSet::new();
        let group = self.sources[sk].group;
        let g = &self.groups[group];
        // The intervals between this class's own ipBlock boundaries (and its tiers' networks
        // and Node addresses).
        let mut bounds: [Vec<u128>; 2] = [Vec::new(), Vec::new()];
        for st in STATES {
            for rule in g.egress[st].iter().flat_map(|p| direction(p, true)) {
                for peer in &rule.peers {
                    if let PolicyPeer::IpBlock { cidr, except } = peer {
                        for net in std::iter::once(cidr).chain(except) {
                            push_bounds(&mut bounds, net);
                        }
                    }
                }
            }
        }
        self.tier_bounds(group, &mut bounds);
        for f in Family::ALL {
            let mut starts = std::mem::take(&mut bounds[f.index()]);
            starts.push(0);
            starts.sort_unstable();
            starts.dedup();
            let mut runs = Runs::default();
            for (i, &lo) in starts.iter().enumerate() {
                let hi = starts.get(i + 1).map_or(f.max(), |next| next - 1);
                let ip = addr(f, lo);
                let verdicts = STATES.map(|st| {
                    self.tiered(
                        st,
                        group,
                        true,
                        |p| self.tier_egress_peer(p, None, ip),
                        None,
                        || {
                            (!g.egress[st].is_empty()).then(|| {
                                allowed(
                                    &g.egress[st],
                                    true,
                                    |p| self.egress_peer(p, None, ip),
                                    None,
                                )
                            })
                        },
                    )
                });
                if verdicts[0] == verdicts[1] {
                    continue;
                }
                let plain = entries(&verdicts);
                let cut = verdicts.clone().map(|v| v.minus(&self.node_ports));
                let at_node = entries(&cut);
                for (plo, phi) in without(lo, hi, &self.holes[f.index()]) {
                    // On a node's address, NodePorts lead to Services: leave them out.
                    let nodes: &[u128] = if self.node_ports.is_empty() {
                        &[]
                    } else {
                        let n = &self.node_addresses[f.index()];
                        let a = n.partition_point(|x| *x < plo);
                        let z = n.partition_point(|x| *x <= phi);
                        &n[a..z]
                    };
                    let mut cur = Some(plo);
                    for &n in nodes {
                        let c = cur.unwrap_or(n);
                        if n > c {
                            runs.add(c, n - 1, &plain, f, &mut out);
                        }
                        runs.add(n, n, &at_node, f, &mut out);
                        cur = n.checked_add(1);
                    }
                    if let Some(c) = cur
                        && c <= phi
                    {
                        runs.add(c, phi, &plain, f, &mut out);
                    }
                }
            }
            runs.flush(f, &mut out);
        }
        out
    }
}

/// Open address runs per entry, so that adjacent pieces with the same entry merge.
#[derive(Default)]
struct Runs {
    open: BTreeMap<Entry, (u128, u128)>,
}

impl Runs {
    fn add(
        &mut self,
        lo: u128,
        hi: u128,
        entries: &[Entry],
        f: Family,
        out: &mut BTreeSet<(Entry, Target)>,
    ) {
        for e in entries {
            match self.open.get_mut(e) {
                Some(run) if run.1.checked_add(1) == Some(lo) => run.1 = hi,
                Some(run) => {
                    let old = std::mem::replace(run, (lo, hi));
                    out.insert((*e, range(f, old)));
                }
                None => {
                    self.open.insert(*e, (lo, hi));
                }
            }
        }
    }

    fn flush(&mut self, f: Family, out: &mut BTreeSet<(Entry, Target)>) {
        for (e, run) in std::mem::take(&mut self.open) {
            out.insert((e, range(f, run)));
        }
    }
}

fn range(f: Family, (lo, hi): (u128, u128)) -> Target {
    Target::Range {
        first: addr(f, lo),
        last: addr(f, hi),
    }
}

pub(super) fn push_bounds(bounds: &mut [Vec<u128>; 2], net: &ipnet::IpNet) {
    let (f, lo) = key(net.network());
    let (_, hi) = key(net.broadcast());
    bounds[f.index()].push(lo);
    if hi < f.max() {
        bounds[f.index()].push(hi + 1);
    }
}
