//! A workload's observed destinations → its egress rules: DNS first, then workloads by
//! selector, hosts by /32, and externals by a budgeted CIDR cover; ports grouped per peer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use leash_records::Protocol;

use super::published::{self, NameIndex};
use super::{Acc, EgressPeer, EgressRule, Options, RuleEvidence, RuleKind};
use crate::cidr::{self, CoverOptions};
use crate::classify::{self, Classifier, DestinationPeer, HostKind, Resolver};
use crate::cluster::{Cluster, LabelSelector, WorkloadId};
use crate::observations::Observations;
use crate::ports;

fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// The observed (protocol, port) pairs towards one peer.
type PortSet = BTreeSet<(Protocol, u16)>;
/// Host addresses sharing a port set, why they need ipBlocks, and their evidence.
type HostGroup = (BTreeSet<IpAddr>, BTreeSet<HostKind>, RuleEvidence);

/// `live`: the workload's previous rules inside the expiry period, whose blocks the covers
/// keep ([`super::previous::kept_blocks`]).
#[expect(
    clippy::too_many_arguments,
    reason = "the one call site passes the walk's state"
)]
pub(super) fn build_rules(
    cluster: &Cluster,
    classifier: &Classifier<'_>,
    obs: &Observations,
    cover_opts: &CoverOptions,
    opts: &Options,
    w: WorkloadId,
    named: &NameIndex<'_>,
    acc: Acc,
    live: &[super::previous::Live],
) -> Vec<EgressRule> {
    let mut claimed = BTreeSet::new();
    let own_ns = &cluster.workloads[w].namespace;
    let group = |set: &BTreeSet<(Protocol, u16)>| {
        ports::group_ports(set.iter().copied(), opts.min_port_run)
    };
    let mut rules = Vec::new();

    for (r, evidence) in acc.dns {
        let dns_ports: BTreeSet<(Protocol, u16)> = classifier.dns_ports(r).into_iter().collect();
        let peers = dns_peers(cluster, own_ns, r);
        let mut notes = Vec::new();
        if let Resolver::Address(ip) = r
            && !opts.classify.node_local_dns.contains(&ip)
            && cover_opts.protected.iter().any(|p| p.contains(&ip))
        {
            notes.push(format!(
                "resolver {ip} is inside the cluster's ranges but no Service or pod owns it in \
                 the snapshot: after DNAT the real resolver pods may not match this ipBlock"
            ));
        }
        // NodeLocal DNSCache in iptables mode answers on the kube-dns ClusterIP itself
        // (NOTRACK, no DNAT): policy then sees the ClusterIP, so allow it too.
        if let Resolver::Service(s) = r
            && cluster.runs_node_local_dns()
        {
            let svc = &cluster.services[s];
            let dialed: BTreeSet<(Protocol, u16)> = [Protocol::Tcp, Protocol::Udp]
                .into_iter()
                .map(|p| (p, classify::DNS_PORT))
                .collect();
            rules.push(EgressRule {
                notes: vec![format!(
                    "NodeLocal DNSCache runs in this cluster; in iptables mode it answers on \
                     the {}/{} ClusterIP without DNAT",
                    svc.namespace, svc.name
                )],
                kind: RuleKind::Dns,
                peers: svc
                    .cluster_ips
                    .iter()
                    .map(|ip| EgressPeer::Block {
                        cidr: host_prefix(*ip),
                        except: Vec::new(),
                        unobserved: 0,
                    })
                    .collect(),
                ports: group(&dialed),
                evidence: evidence.clone(),
                unobserved_addresses: Some(0),
                budget_met: true,
                not_seen_in_window: false,
                also_allowed_by: Vec::new(),
            });
        }
        rules.push(EgressRule {
            notes,
            kind: RuleKind::Dns,
            peers,
            ports: group(&dns_ports),
            evidence,
            unobserved_addresses: None,
            budget_met: true,
            not_seen_in_window: false,
            also_allowed_by: Vec::new(),
        });
    }

    let mut hosts: BTreeMap<PortSet, HostGroup> = BTreeMap::new();
    // Keyed by the previous rule that already allows the destination (if any), so that an
    // old destination's new evidence is built against that rule's blocks alone.
    type ExternalKey = (Option<usize>, PortSet, BTreeSet<String>);
    let mut externals: BTreeMap<ExternalKey, (Vec<IpAddr>, RuleEvidence)> = BTreeMap::new();
    for (peer, by_port) in acc.peers {
        let port_set: BTreeSet<(Protocol, u16)> = by_port.keys().copied().collect();
        let mut evidence = RuleEvidence::default();
        for e in by_port.values() {
            evidence.merge(e);
        }
        match peer {
            DestinationPeer::Workload(dw) => {
                let dst = &cluster.workloads[dw];
                let Some(selector) = dst.selector.clone() else {
                    continue;
                };
                rules.push(EgressRule {
                    kind: RuleKind::Workload(format!(
                        "{}/{}/{}",
                        dst.namespace, dst.kind, dst.name
                    )),
                    peers: vec![EgressPeer::Pods {
                        namespace: (&dst.namespace != own_ns).then(|| dst.namespace.clone()),
                        selector,
                    }],
                    ports: group(&port_set),
                    evidence,
                    unobserved_addresses: None,
                    budget_met: true,
                    not_seen_in_window: false,
                    also_allowed_by: Vec::new(),
                    notes: Vec::new(),
                });
            }
            DestinationPeer::Host(ip, kind) => {
                let e = hosts.entry(port_set).or_default();
                e.0.insert(ip);
                e.1.insert(kind);
                e.2.merge(&evidence);
            }
            DestinationPeer::External(ip) => {
                let mut names = evidence.names.clone();
                if let Some(n) = obs.names_by_ip.get(&ip) {
                    names.extend(n.iter().cloned());
                }
                evidence.names.clone_from(&names);
                let explained = super::previous::explaining(live, ip, &port_set);
                let e = externals.entry((explained, port_set, names)).or_default();
                e.0.push(ip);
                e.1.merge(&evidence);
            }
        }
    }
    for (port_set, (ips, kinds, evidence)) in hosts {
        rules.push(EgressRule {
            kind: RuleKind::Hosts(kinds),
            peers: ips
                .into_iter()
                .map(|ip| EgressPeer::Block {
                    cidr: host_prefix(ip),
                    except: Vec::new(),
                    unobserved: 0,
                })
                .collect(),
            ports: group(&port_set),
            evidence,
            unobserved_addresses: Some(0),
            budget_met: true,
            not_seen_in_window: false,
            also_allowed_by: Vec::new(),
            notes: Vec::new(),
        });
    }
    for ((explained, port_set, names), (mut ips, evidence)) in externals {
        ips.sort();
        ips.dedup();
        let dialed: BTreeSet<IpAddr> = ips.iter().copied().collect();
        // The name, not last week's connections: the other addresses the rule's names
        // resolved to for this workload, where they are external and no other previous rule
        // than the one this group is built against already allows them on these ports.
        let implied: BTreeSet<IpAddr> = named
            .addresses(w, &names)
            .into_iter()
            .filter(|ip| {
                !dialed.contains(ip)
                    && !cover_opts.protected.iter().any(|r| r.contains(ip))
                    && port_set
                        .iter()
                        .all(|&(proto, port)| classifier.is_external(*ip, port, proto))
                    && {
                        let by = super::previous::explaining(live, *ip, &port_set);
                        by.is_none() || by == explained
                    }
            })
            .collect();
        let all: BTreeSet<IpAddr> = dialed.union(&implied).copied().collect();
        let published = if names.is_empty() {
            Vec::new()
        } else {
            published::published_blocks(
                &opts.published,
                &all,
                opts.max_published_prefix_v4,
                opts.max_published_prefix_v6,
                &cover_opts.protected,
            )
        };
        let ips: Vec<IpAddr> = all.into_iter().collect();
        let mut kept = match explained {
            Some(i) => super::previous::blocks_of(&live[i]),
            None => super::previous::kept_blocks(live, &mut claimed, &ips, &group(&port_set)),
        };
        // A published range is one more block to keep whole, as a previous one is.
        kept.extend(published.iter().map(|p| p.net));
        let cover = if kept.is_empty() {
            cidr::cover_addrs(&ips, cover_opts)
        } else {
            let observed: Vec<IpNet> = ips.iter().map(|ip| host_prefix(*ip)).collect();
            cidr::cover_keeping(&observed, &kept, cover_opts)
        };
        let notes = ips
            .iter()
            .filter_map(|ip| {
                cover_opts
                    .protected
                    .iter()
                    .find(|r| r.contains(ip))
                    .map(|r| {
                        format!(
                            "{ip} lies in the protected range {r} (cluster pod/Service range, \
                         metadata or loopback) but no pod or Service holds it now; it was \
                         observed, so it is allowed exactly"
                        )
                    })
            })
            .chain(published.into_iter().map(|p| p.note))
            .chain(published::implied_note(&implied))
            .collect();
        rules.push(EgressRule {
            notes,
            kind: RuleKind::External,
            peers: cover
                .blocks
                .iter()
                .map(|b| EgressPeer::Block {
                    cidr: b.cidr,
                    except: b.except.clone(),
                    unobserved: b.unobserved_allowed,
                })
                .collect(),
            ports: group(&port_set),
            evidence,
            unobserved_addresses: Some(cover.unobserved_allowed()),
            budget_met: cover.budget_met,
            not_seen_in_window: false,
            also_allowed_by: Vec::new(),
        });
    }
    // An empty `ports` or `to` list means "all": never emit one.
    rules.retain(|r| !r.ports.is_empty() && !r.peers.is_empty());
    rules
}

/// The DNS rule's peers: namespaceSelector AND podSelector in one peer for a DNS Service (its
/// own selector, else its backends' workloads), the workload for a resolver pod, an ipBlock /32
/// for an address (NodeLocal DNSCache).
pub(crate) fn dns_peers(cluster: &Cluster, own_ns: &str, r: Resolver) -> Vec<EgressPeer> {
    match r {
        Resolver::Service(s) => {
            let svc = &cluster.services[s];
            let selector_peer = |selector: LabelSelector| EgressPeer::Pods {
                namespace: Some(svc.namespace.clone()),
                selector,
            };
            let block = |ip: IpAddr| EgressPeer::Block {
                cidr: host_prefix(ip),
                except: Vec::new(),
                unobserved: 0,
            };
            // Per backend: pod-network pods by selector (the Service's own, else their
            // workload's); hostNetwork pods and non-pod endpoints by address, because
            // selectors never match them.
            let mut peers = BTreeSet::new();
            let mut any_backend = false;
            for ip in &svc.cluster_ips {
                for proto in [Protocol::Udp, Protocol::Tcp] {
                    let crate::cluster::ServiceLookup::Resolved { backends, .. } =
                        cluster.resolve_service(*ip, classify::DNS_PORT, proto)
                    else {
                        continue;
                    };
                    for b in backends {
                        any_backend = true;
                        let pod = b.pod.filter(|&p| !cluster.pods[p].host_network);
                        let selector = pod.and_then(|p| match &svc.selector {
                            Some(sel) => Some(LabelSelector::labels(sel.clone())),
                            None => cluster
                                .workload_of(p)
                                .and_then(|w| cluster.workloads[w].selector.clone()),
                        });
                        peers.insert(match selector {
                            Some(sel) => selector_peer(sel),
                            None => block(b.ip),
                        });
                    }
                }
            }
            if !any_backend {
                match &svc.selector {
                    Some(sel) => {
                        peers.insert(selector_peer(LabelSelector::labels(sel.clone())));
                    }
                    None => peers.extend(svc.cluster_ips.iter().map(|ip| block(*ip))),
                }
            }
            peers.into_iter().collect()
        }
        Resolver::Pod(w) => {
            let wl = &cluster.workloads[w];
            vec![EgressPeer::Pods {
                namespace: (wl.namespace != own_ns).then(|| wl.namespace.clone()),
                selector: wl.selector.clone().unwrap_or_default(),
            }]
        }
        Resolver::Address(ip) => vec![EgressPeer::Block {
            cidr: host_prefix(ip),
            except: Vec::new(),
            unobserved: 0,
        }],
    }
}
