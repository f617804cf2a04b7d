//! Synthesis: classified observations → one egress NetworkPolicy per workload.
//!
//! The result, [`Recommendation`], is a plain model (policies, rules with their evidence, and
//! the findings the report lists); [`to_network_policy`] turns a policy into the Kubernetes
//! object. Everything is sorted so that the same observations always give the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use ipnet::IpNet;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use leash_records::Protocol;

use crate::cidr::{self, CoverOptions};
use crate::classify::{self, Class, Classifier, HostKind, Peer, Resolver, Target};
use crate::cluster::{Cluster, NAMESPACE_NAME_LABEL, Selector, WorkloadId};
use crate::eval::{self, ClusterView, PolicySet};
use crate::input::{Evidence, Observations};
use crate::ports::{self, PortRange};

/// Annotation naming the generator.
pub const ANNOTATION_GENERATED_BY: &str = "leash.dev/generated-by";
/// Annotation naming the workload a policy is for.
pub const ANNOTATION_WORKLOAD: &str = "leash.dev/workload";
/// Annotation summarizing the evidence.
pub const ANNOTATION_EVIDENCE: &str = "leash.dev/evidence";
/// The name of the per-namespace default-deny policy.
pub const DEFAULT_DENY_NAME: &str = "default-deny-egress";

/// Knobs of [`recommend`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Resolver discovery.
    pub classify: classify::Config,
    /// At most this many ipBlocks per external rule (`--max-cidrs`).
    pub max_cidrs: usize,
    /// Never widen an IPv4 block past this prefix (`--max-prefix-v4`).
    pub max_prefix_v4: u8,
    /// Never widen an IPv6 block past this prefix (`--max-prefix-v6`).
    pub max_prefix_v6: u8,
    /// Workloads observed for less than this are flagged (`--min-observation`).
    pub min_observation: Duration,
    /// Only these source namespaces (`--namespace`); empty means all.
    pub namespaces: BTreeSet<String>,
    /// Consecutive ports from which a run becomes `port`/`endPort`.
    pub min_port_run: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            classify: classify::Config::default(),
            max_cidrs: 8,
            max_prefix_v4: 24,
            max_prefix_v6: 48,
            min_observation: Duration::hours(24),
            namespaces: BTreeSet::new(),
            min_port_run: ports::DEFAULT_MIN_RUN,
        }
    }
}

/// What backs a rule: counts, time bounds, names, pods, destinations.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuleEvidence {
    /// Events (summed `count`; DNS queries for DNS-record evidence).
    pub count: u64,
    /// First seen.
    pub first_seen: Option<DateTime<Utc>>,
    /// Last seen.
    pub last_seen: Option<DateTime<Utc>>,
    /// DNS names.
    pub names: BTreeSet<String>,
    /// Source pods (`namespace/name` is implied: the workload's namespace).
    pub pods: BTreeSet<String>,
    /// Destinations as dialed (`10.96.0.10:53/UDP`, `Service shop/api 80/TCP → 8080`).
    pub destinations: BTreeSet<String>,
}

impl RuleEvidence {
    fn add(&mut self, ev: &Evidence, pod: &str, destination: String) {
        self.count = self.count.saturating_add(ev.count);
        self.first_seen = Some(
            self.first_seen
                .map_or(ev.first_seen, |f| f.min(ev.first_seen)),
        );
        self.last_seen = Some(self.last_seen.map_or(ev.last_seen, |l| l.max(ev.last_seen)));
        self.names.extend(ev.names.iter().cloned());
        self.pods.insert(pod.to_owned());
        self.destinations.insert(destination);
    }

    fn merge(&mut self, o: &RuleEvidence) {
        self.count = self.count.saturating_add(o.count);
        self.first_seen = match (self.first_seen, o.first_seen) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_seen = match (self.last_seen, o.last_seen) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.names.extend(o.names.iter().cloned());
        self.pods.extend(o.pods.iter().cloned());
        self.destinations.extend(o.destinations.iter().cloned());
    }

    /// How long the evidence spans.
    pub fn span(&self) -> Duration {
        match (self.first_seen, self.last_seen) {
            (Some(f), Some(l)) => l - f,
            _ => Duration::zero(),
        }
    }
}

/// A peer of a generated rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerSpec {
    /// Pods by labels; `namespace` set adds a namespaceSelector on
    /// `kubernetes.io/metadata.name` in the **same** peer (AND).
    Pods {
        /// The namespace, when it is not the policy's own.
        namespace: Option<String>,
        /// The pod selector.
        selector: Selector,
    },
    /// An ipBlock.
    Block {
        /// Canonical CIDR.
        cidr: IpNet,
        /// Canonical CIDRs strictly inside `cidr`.
        except: Vec<IpNet>,
        /// Addresses the block allows that were never observed.
        unobserved: u128,
    },
}

/// What a rule is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum RuleKind {
    /// DNS resolution.
    Dns,
    /// Pods of a workload (directly or behind a Service).
    Workload(String),
    /// Addresses selectors cannot match.
    Hosts(BTreeSet<HostKind>),
    /// External addresses.
    External,
}

/// One egress rule with its justification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// What it is for.
    pub kind: RuleKind,
    /// Peers (OR).
    pub peers: Vec<PeerSpec>,
    /// Ports (OR); never empty, protocol always explicit.
    pub ports: Vec<PortRange>,
    /// Evidence.
    pub evidence: RuleEvidence,
    /// For ipBlock rules: addresses allowed that were never observed.
    pub unobserved_addresses: Option<u128>,
    /// For ipBlock rules: whether the CIDR budget could be met.
    pub budget_met: bool,
    /// Things a reviewer should know about this rule.
    pub notes: Vec<String>,
}

/// The recommended policy of one workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySpec {
    /// The workload.
    pub workload: WorkloadId,
    /// Namespace.
    pub namespace: String,
    /// Policy name (`<workload>-egress`).
    pub name: String,
    /// The workload's pod selector.
    pub pod_selector: Selector,
    /// Rules, in a fixed order: DNS, workloads, hosts, externals.
    pub rules: Vec<Rule>,
    /// All evidence of the workload.
    pub evidence: RuleEvidence,
}

/// Egress of a hostNetwork workload: reported, never enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetworkFinding {
    /// The workload.
    pub workload: WorkloadId,
    /// Evidence.
    pub evidence: RuleEvidence,
}

/// A flow that could not become a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unresolved {
    /// The source workload.
    pub workload: WorkloadId,
    /// `dst:port/proto` as dialed.
    pub destination: String,
    /// Why.
    pub reason: String,
    /// Events.
    pub count: u64,
}

/// Everything `recommend` decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recommendation {
    /// One policy per workload with observed egress, sorted by (namespace, name).
    pub policies: Vec<PolicySpec>,
    /// Namespaces that get `default-deny-egress`, sorted.
    pub default_deny_namespaces: Vec<String>,
    /// Workloads in those namespaces without observed egress: default-deny isolates them.
    pub isolated: Vec<WorkloadId>,
    /// Workloads whose egress was observed for less than `--min-observation`, with the span.
    pub briefly_observed: Vec<(WorkloadId, Duration)>,
    /// hostNetwork workloads' egress.
    pub host_network: Vec<HostNetworkFinding>,
    /// Workloads with egress but no stable label to select them by.
    pub unselectable: Vec<WorkloadId>,
    /// Flows that became no rule.
    pub unresolved: Vec<Unresolved>,
    /// Flow events not attributed to a pod.
    pub unattributed_flows: u64,
    /// The minimum observation span used.
    pub min_observation: Duration,
    /// Observations that were left out, one line each (e.g. stored workloads that are gone
    /// from the cluster model), sorted: their traffic is in no policy. Filled by the caller
    /// that read them (`recommend --store`).
    pub skipped_input: Vec<String>,
}

/// Per-workload accumulation before rules are built.
#[derive(Default)]
struct Acc {
    dns: BTreeMap<Resolver, RuleEvidence>,
    peers: BTreeMap<Peer, BTreeMap<(Protocol, u16), RuleEvidence>>,
}

fn dest(ip: IpAddr, port: u16, proto: Protocol) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}/{proto}"),
        IpAddr::V6(a) => format!("[{a}]:{port}/{proto}"),
    }
}

/// Builds the recommendation. Pure: no I/O.
pub fn recommend(cluster: &Cluster, obs: &Observations, opts: &Options) -> Recommendation {
    let mut classifier = Classifier::new(cluster, &opts.classify, obs);
    let in_scope = |ns: &str| opts.namespaces.is_empty() || opts.namespaces.contains(ns);
    let mut accs: BTreeMap<WorkloadId, Acc> = BTreeMap::new();
    let mut host_network: BTreeMap<WorkloadId, RuleEvidence> = BTreeMap::new();
    let mut unresolved: BTreeMap<(WorkloadId, String, String), u64> = BTreeMap::new();

    // Sorted iteration keeps every derived set independent of the input order.
    let mut keys: Vec<_> = obs.flows.iter().collect();
    keys.sort_by_key(|(k, _)| **k);
    for (key, ev) in keys {
        let Some(pod) = cluster.pods.get(key.pod) else {
            continue;
        };
        let Some(w) = cluster.workload_of(key.pod) else {
            continue;
        };
        if !in_scope(&pod.namespace) {
            continue;
        }
        let dialed = dest(key.dst, key.port, key.protocol);
        if pod.host_network {
            host_network
                .entry(w)
                .or_default()
                .add(ev, &pod.name, dialed);
            continue;
        }
        let acc = accs.entry(w).or_default();
        match classifier.classify(key.dst, key.port, key.protocol) {
            Class::Dns(r) => acc.dns.entry(r).or_default().add(ev, &pod.name, dialed),
            Class::Direct(t) => add_target(acc, t, ev, &pod.name, dialed),
            Class::Service { service, targets } => {
                let svc = &cluster.services[service];
                let label = format!(
                    "Service {}/{} {}/{}",
                    svc.namespace, svc.name, key.port, key.protocol
                );
                for t in targets {
                    add_target(acc, t, ev, &pod.name, format!("{label} → {}", t.port));
                }
            }
            Class::Unresolved(reason) => {
                *unresolved.entry((w, dialed, reason)).or_default() += ev.count;
            }
        }
    }
    // DNS records: a workload that resolved names gets the DNS rule even without a flow.
    for (&(pod_id, server), u) in &obs.dns {
        let Some(pod) = cluster.pods.get(pod_id) else {
            continue;
        };
        let Some(w) = cluster.workload_of(pod_id) else {
            continue;
        };
        if !in_scope(&pod.namespace) || pod.host_network {
            continue;
        }
        let ev = Evidence {
            count: u.queries,
            first_seen: u.first_seen,
            last_seen: u.last_seen,
            names: u.names.clone(),
        };
        let r = classifier.resolver(server);
        accs.entry(w).or_default().dns.entry(r).or_default().add(
            &ev,
            &pod.name,
            format!("{server} (DNS queries)"),
        );
    }

    let mut rec = Recommendation {
        min_observation: opts.min_observation,
        unattributed_flows: obs.unattributed_flows,
        ..Recommendation::default()
    };
    let cover_opts = CoverOptions {
        max_cidrs: opts.max_cidrs,
        max_prefix_v4: opts.max_prefix_v4,
        max_prefix_v6: opts.max_prefix_v6,
        protected: cluster.protected_ranges(),
    };
    for (w, acc) in accs {
        let wl = &cluster.workloads[w];
        let Some(selector) = wl.selector.clone() else {
            rec.unselectable.push(w);
            continue;
        };
        let rules = build_rules(cluster, &classifier, obs, &cover_opts, opts, w, acc);
        if rules.is_empty() {
            continue;
        }
        let mut evidence = RuleEvidence::default();
        for r in &rules {
            evidence.merge(&r.evidence);
        }
        if evidence.span() < opts.min_observation {
            rec.briefly_observed.push((w, evidence.span()));
        }
        rec.policies.push(PolicySpec {
            workload: w,
            namespace: wl.namespace.clone(),
            name: String::new(),
            pod_selector: selector,
            rules,
            evidence,
        });
    }
    name_policies(cluster, &mut rec.policies);
    rec.policies
        .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let deny: BTreeSet<String> = rec.policies.iter().map(|p| p.namespace.clone()).collect();
    let with_policy: BTreeSet<WorkloadId> = rec.policies.iter().map(|p| p.workload).collect();
    for (w, wl) in cluster.workloads.iter().enumerate() {
        let live = cluster
            .workload_pods(w)
            .iter()
            .any(|&p| !cluster.pods[p].terminated && !cluster.pods[p].host_network);
        if live
            && deny.contains(&wl.namespace)
            && !with_policy.contains(&w)
            && !rec.unselectable.contains(&w)
        {
            rec.isolated.push(w);
        }
    }
    rec.default_deny_namespaces = deny.into_iter().collect();
    rec.host_network = host_network
        .into_iter()
        .map(|(workload, evidence)| HostNetworkFinding { workload, evidence })
        .collect();
    rec.unresolved = unresolved
        .into_iter()
        .map(|((workload, destination, reason), count)| Unresolved {
            workload,
            destination,
            reason,
            count,
        })
        .collect();
    rec
}

fn add_target(acc: &mut Acc, t: Target, ev: &Evidence, pod: &str, destination: String) {
    acc.peers
        .entry(t.peer)
        .or_default()
        .entry((t.protocol, t.port))
        .or_default()
        .add(ev, pod, destination);
}

fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// The observed (protocol, port) pairs towards one peer.
type PortSet = BTreeSet<(Protocol, u16)>;
/// Host addresses sharing a port set, why they need ipBlocks, and their evidence.
type HostGroup = (BTreeSet<IpAddr>, BTreeSet<HostKind>, RuleEvidence);

fn build_rules(
    cluster: &Cluster,
    classifier: &Classifier<'_>,
    obs: &Observations,
    cover_opts: &CoverOptions,
    opts: &Options,
    w: WorkloadId,
    acc: Acc,
) -> Vec<Rule> {
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
            rules.push(Rule {
                notes: vec![format!(
                    "NodeLocal DNSCache runs in this cluster; in iptables mode it answers on \
                     the {}/{} ClusterIP without DNAT",
                    svc.namespace, svc.name
                )],
                kind: RuleKind::Dns,
                peers: svc
                    .cluster_ips
                    .iter()
                    .map(|ip| PeerSpec::Block {
                        cidr: host_prefix(*ip),
                        except: Vec::new(),
                        unobserved: 0,
                    })
                    .collect(),
                ports: group(&dialed),
                evidence: evidence.clone(),
                unobserved_addresses: Some(0),
                budget_met: true,
            });
        }
        rules.push(Rule {
            notes,
            kind: RuleKind::Dns,
            peers,
            ports: group(&dns_ports),
            evidence,
            unobserved_addresses: None,
            budget_met: true,
        });
    }

    let mut hosts: BTreeMap<PortSet, HostGroup> = BTreeMap::new();
    let mut externals: BTreeMap<(PortSet, BTreeSet<String>), (Vec<IpAddr>, RuleEvidence)> =
        BTreeMap::new();
    for (peer, by_port) in acc.peers {
        let port_set: BTreeSet<(Protocol, u16)> = by_port.keys().copied().collect();
        let mut evidence = RuleEvidence::default();
        for e in by_port.values() {
            evidence.merge(e);
        }
        match peer {
            Peer::Workload(dw) => {
                let dst = &cluster.workloads[dw];
                let Some(selector) = dst.selector.clone() else {
                    continue;
                };
                rules.push(Rule {
                    kind: RuleKind::Workload(format!(
                        "{}/{}/{}",
                        dst.namespace, dst.kind, dst.name
                    )),
                    peers: vec![PeerSpec::Pods {
                        namespace: (&dst.namespace != own_ns).then(|| dst.namespace.clone()),
                        selector,
                    }],
                    ports: group(&port_set),
                    evidence,
                    unobserved_addresses: None,
                    budget_met: true,
                    notes: Vec::new(),
                });
            }
            Peer::Host(ip, kind) => {
                let e = hosts.entry(port_set).or_default();
                e.0.insert(ip);
                e.1.insert(kind);
                e.2.merge(&evidence);
            }
            Peer::External(ip) => {
                let mut names = evidence.names.clone();
                if let Some(n) = obs.names_by_ip.get(&ip) {
                    names.extend(n.iter().cloned());
                }
                evidence.names.clone_from(&names);
                let e = externals.entry((port_set, names)).or_default();
                e.0.push(ip);
                e.1.merge(&evidence);
            }
        }
    }
    for (port_set, (ips, kinds, evidence)) in hosts {
        rules.push(Rule {
            kind: RuleKind::Hosts(kinds),
            peers: ips
                .into_iter()
                .map(|ip| PeerSpec::Block {
                    cidr: host_prefix(ip),
                    except: Vec::new(),
                    unobserved: 0,
                })
                .collect(),
            ports: group(&port_set),
            evidence,
            unobserved_addresses: Some(0),
            budget_met: true,
            notes: Vec::new(),
        });
    }
    for ((port_set, _names), (mut ips, evidence)) in externals {
        ips.sort();
        ips.dedup();
        let cover = cidr::cover_addrs(&ips, cover_opts);
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
            .collect();
        rules.push(Rule {
            notes,
            kind: RuleKind::External,
            peers: cover
                .blocks
                .iter()
                .map(|b| PeerSpec::Block {
                    cidr: b.cidr,
                    except: b.except.clone(),
                    unobserved: b.unobserved_allowed,
                })
                .collect(),
            ports: group(&port_set),
            evidence,
            unobserved_addresses: Some(cover.unobserved_allowed()),
            budget_met: cover.budget_met,
        });
    }
    // An empty `ports` or `to` list means "all": never emit one.
    rules.retain(|r| !r.ports.is_empty() && !r.peers.is_empty());
    rules
}

/// The DNS rule's peers: namespaceSelector AND podSelector in one peer for a DNS Service (its
/// own selector, else its backends' workloads), the workload for a resolver pod, an ipBlock /32
/// for an address (NodeLocal DNSCache).
fn dns_peers(cluster: &Cluster, own_ns: &str, r: Resolver) -> Vec<PeerSpec> {
    match r {
        Resolver::Service(s) => {
            let svc = &cluster.services[s];
            let selector_peer = |selector: Selector| PeerSpec::Pods {
                namespace: Some(svc.namespace.clone()),
                selector,
            };
            let block = |ip: IpAddr| PeerSpec::Block {
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
                            Some(sel) => Some(Selector::labels(sel.clone())),
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
                        peers.insert(selector_peer(Selector::labels(sel.clone())));
                    }
                    None => peers.extend(svc.cluster_ips.iter().map(|ip| block(*ip))),
                }
            }
            peers.into_iter().collect()
        }
        Resolver::Pod(w) => {
            let wl = &cluster.workloads[w];
            vec![PeerSpec::Pods {
                namespace: (wl.namespace != own_ns).then(|| wl.namespace.clone()),
                selector: wl.selector.clone().unwrap_or_default(),
            }]
        }
        Resolver::Address(ip) => vec![PeerSpec::Block {
            cidr: host_prefix(ip),
            except: Vec::new(),
            unobserved: 0,
        }],
    }
}

/// Maximum length of a Kubernetes object name (DNS-1123 subdomain).
const MAX_NAME: usize = 253;

/// Names each policy `<workload>-egress`, adding the kind when two workloads of one namespace
/// share a name, and keeping names valid DNS-1123 subdomains.
fn name_policies(cluster: &Cluster, policies: &mut [PolicySpec]) {
    let mut count: BTreeMap<(String, String), usize> = BTreeMap::new();
    for p in policies.iter() {
        let w = &cluster.workloads[p.workload];
        *count
            .entry((w.namespace.clone(), w.name.clone()))
            .or_default() += 1;
    }
    for p in policies.iter_mut() {
        let w = &cluster.workloads[p.workload];
        let clash = count
            .get(&(w.namespace.clone(), w.name.clone()))
            .copied()
            .unwrap_or(0)
            > 1
            || policy_name(&w.name) == DEFAULT_DENY_NAME;
        let base = if clash {
            format!("{}-{}", w.name, w.kind.to_ascii_lowercase())
        } else {
            w.name.clone()
        };
        p.name = policy_name(&base);
    }
}

/// `<base>-egress`, lower-cased to DNS-1123 and at most 253 characters (a long base keeps a
/// prefix and a stable hash of the whole, [`leash_records::names::shorten`]).
pub fn policy_name(base: &str) -> String {
    let suffix = "-egress";
    let clean: String = base
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    // A long name keeps a prefix and a hash of the whole, so two workloads whose names share
    // the first 246 characters still get distinct policies.
    let clean = leash_records::names::shorten(&clean, MAX_NAME - suffix.len());
    let trimmed = clean.trim_matches(|c: char| c == '-' || c == '.');
    let base = if trimmed.is_empty() {
        "workload"
    } else {
        trimmed
    };
    format!("{base}{suffix}")
}

/// A one-line evidence summary for the policy annotation (deterministic: derived from the
/// observations only).
pub fn evidence_summary(e: &RuleEvidence) -> String {
    let fmt = |t: Option<DateTime<Utc>>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
    };
    format!(
        "{} events from {} pod(s), {} to {}",
        e.count,
        e.pods.len(),
        fmt(e.first_seen),
        fmt(e.last_seen)
    )
}

fn k8s_peer(p: &PeerSpec) -> net::NetworkPolicyPeer {
    match p {
        PeerSpec::Pods {
            namespace,
            selector,
        } => net::NetworkPolicyPeer {
            namespace_selector: namespace.as_ref().map(|ns| meta::LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    NAMESPACE_NAME_LABEL.to_owned(),
                    ns.clone(),
                )])),
                match_expressions: None,
            }),
            pod_selector: Some(selector.to_k8s()),
            ip_block: None,
        },
        PeerSpec::Block { cidr, except, .. } => net::NetworkPolicyPeer {
            ip_block: Some(net::IPBlock {
                cidr: cidr.to_string(),
                except: (!except.is_empty())
                    .then(|| except.iter().map(ToString::to_string).collect()),
            }),
            namespace_selector: None,
            pod_selector: None,
        },
    }
}

fn k8s_port(p: &PortRange) -> net::NetworkPolicyPort {
    net::NetworkPolicyPort {
        protocol: Some(p.protocol.as_str().to_owned()),
        port: Some(IntOrString::Int(i32::from(p.port))),
        end_port: p.end_port.map(i32::from),
    }
}

/// The labels leash puts on every policy it writes.
fn managed_labels() -> BTreeMap<String, String> {
    BTreeMap::from([(
        "app.kubernetes.io/managed-by".to_owned(),
        "leash".to_owned(),
    )])
}

/// The Kubernetes object of a recommended policy.
pub fn to_network_policy(cluster: &Cluster, p: &PolicySpec) -> net::NetworkPolicy {
    let w = &cluster.workloads[p.workload];
    let annotations = BTreeMap::from([
        (
            ANNOTATION_GENERATED_BY.to_owned(),
            "leash recommend".to_owned(),
        ),
        (
            ANNOTATION_WORKLOAD.to_owned(),
            format!("{}/{}", w.kind, w.name),
        ),
        (
            ANNOTATION_EVIDENCE.to_owned(),
            evidence_summary(&p.evidence),
        ),
    ]);
    net::NetworkPolicy {
        metadata: meta::ObjectMeta {
            name: Some(p.name.clone()),
            namespace: Some(p.namespace.clone()),
            labels: Some(managed_labels()),
            annotations: Some(annotations),
            ..meta::ObjectMeta::default()
        },
        spec: Some(net::NetworkPolicySpec {
            pod_selector: Some(p.pod_selector.to_k8s()),
            policy_types: Some(vec!["Egress".to_owned()]),
            egress: Some(
                p.rules
                    .iter()
                    .map(|r| net::NetworkPolicyEgressRule {
                        to: Some(r.peers.iter().map(k8s_peer).collect()),
                        ports: Some(r.ports.iter().map(k8s_port).collect()),
                    })
                    .collect(),
            ),
            ingress: None,
        }),
    }
}

/// The `default-deny-egress` policy of a namespace: selects every pod, allows no egress.
pub fn default_deny(namespace: &str) -> net::NetworkPolicy {
    net::NetworkPolicy {
        metadata: meta::ObjectMeta {
            name: Some(DEFAULT_DENY_NAME.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(managed_labels()),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_GENERATED_BY.to_owned(),
                "leash recommend".to_owned(),
            )])),
            ..meta::ObjectMeta::default()
        },
        spec: Some(net::NetworkPolicySpec {
            pod_selector: Some(meta::LabelSelector::default()),
            policy_types: Some(vec!["Egress".to_owned()]),
            egress: None,
            ingress: None,
        }),
    }
}

/// Every policy of a recommendation as Kubernetes objects: per namespace, the default deny
/// first, then the workloads' policies by name.
pub fn all_policies(cluster: &Cluster, rec: &Recommendation) -> Vec<net::NetworkPolicy> {
    let mut out = Vec::new();
    for ns in &rec.default_deny_namespaces {
        out.push(default_deny(ns));
        for p in rec.policies.iter().filter(|p| &p.namespace == ns) {
            out.push(to_network_policy(cluster, p));
        }
    }
    out
}

/// An observed flow the generated policies would deny.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Denied {
    /// The source pod, `namespace/name`.
    pub pod: String,
    /// `dst:port/proto` as dialed.
    pub destination: String,
    /// The evaluator's reason.
    pub reason: String,
}

/// Checks the recommendation with the one NetworkPolicy evaluator: every observed flow from a
/// pod that got a policy must be allowed at egress by the generated policies (the default
/// denies included). Flows the report already lists as unresolved, hostNetwork or from
/// unselectable workloads are skipped. Returns the denied flows, sorted.
pub fn self_check<V: ClusterView + Sync + ?Sized>(
    cluster: &Cluster,
    view: &V,
    obs: &Observations,
    rec: &Recommendation,
) -> Result<(), SelfCheckError> {
    let set = PolicySet::new(&all_policies(cluster, rec))
        .map_err(|e| SelfCheckError::Invalid(e.to_string()))?;
    let covered: BTreeSet<WorkloadId> = rec.policies.iter().map(|p| p.workload).collect();
    // Egress depends on the source only through its namespace and labels: evaluate each
    // distinct (namespace, labels) once per destination, with a representative pod.
    let mut reps: std::collections::HashMap<(&str, &crate::cluster::Labels), usize> =
        std::collections::HashMap::new();
    let mut checks: BTreeSet<(usize, IpAddr, u16, Protocol)> = BTreeSet::new();
    for key in obs.flows.keys() {
        let Some(pod) = cluster.pods.get(key.pod) else {
            continue;
        };
        let Some(w) = cluster.workload_of(key.pod) else {
            continue;
        };
        if !covered.contains(&w)
            || pod.host_network
            || classify::unenforceable(key.dst, key.port).is_some()
        {
            continue;
        }
        let rep = *reps.entry((&pod.namespace, &pod.labels)).or_insert(key.pod);
        checks.insert((rep, key.dst, key.port, key.protocol));
    }
    let checks: Vec<_> = checks.into_iter().collect();
    let check_one = |&(rep, dst, port, protocol): &(usize, IpAddr, u16, Protocol)| {
        let pod = &cluster.pods[rep];
        let source = view.pod(&pod.namespace, &pod.name)?;
        let flow = eval::Flow {
            protocol,
            dst,
            dst_port: port,
        };
        let ev = eval::evaluate(view, &set, source, &flow);
        // A flow with no backend at all is reported as unresolved, not checked here.
        if ev.problem.is_some() || ev.egress != eval::Verdict::Deny {
            return None;
        }
        let reason = ev
            .targets
            .iter()
            .filter(|t| t.egress.verdict == eval::Verdict::Deny)
            .map(|t| format!("{} {}:{}: {}", t.destination, t.ip, t.port, t.egress.reason))
            .collect::<Vec<_>>()
            .join("; ");
        Some(Denied {
            pod: format!("{}/{}", pod.namespace, pod.name),
            destination: dest(dst, port, protocol),
            reason,
        })
    };
    // Evaluations are independent: spread them over the available cores.
    let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let chunk = checks.len().div_ceil(threads).max(1);
    let mut denied: Vec<Denied> = std::thread::scope(|s| {
        let handles: Vec<_> = checks
            .chunks(chunk)
            .map(|part| s.spawn(|| part.iter().filter_map(check_one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                // A panicking evaluator is a bug; re-raise it on this thread.
                h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
            })
            .collect()
    });
    denied.sort();
    if denied.is_empty() {
        Ok(())
    } else {
        Err(SelfCheckError::Denied(denied))
    }
}

/// Why the self-check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelfCheckError {
    /// A generated policy fails the evaluator's validation.
    #[error("a generated policy is invalid: {0}")]
    Invalid(String),
    /// Observed flows would be denied.
    #[error("{} observed flow(s) would be denied, first: {} -> {} ({})",
        .0.len(),
        .0.first().map_or("", |d| d.pod.as_str()),
        .0.first().map_or("", |d| d.destination.as_str()),
        .0.first().map_or("", |d| d.reason.as_str()))]
    Denied(Vec<Denied>),
}

/// Errors of the end-to-end `recommend`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The cluster snapshot is unreadable or invalid.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::LoadError),
    /// A record file is unreadable or invalid.
    #[error(transparent)]
    Input(#[from] crate::input::Error),
    /// The observation store could not be read.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The generated policies would deny an observed flow: a bug, never written out.
    #[error("self-check failed, refusing to write policies: {0}")]
    SelfCheck(#[from] SelfCheckError),
}

/// The result of [`run`]: the model (needed to render) and the decisions.
#[derive(Debug)]
pub struct Outcome {
    /// The cluster model.
    pub cluster: Cluster,
    /// The observations read.
    pub observations: Observations,
    /// The recommendation.
    pub recommendation: Recommendation,
}

/// `leash recommend` end to end, without output: load the snapshot, read the records,
/// synthesize, self-check.
pub fn run(
    cluster_path: &std::path::Path,
    flows: &[std::path::PathBuf],
    opts: &Options,
) -> Result<Outcome, Error> {
    let cluster = Cluster::load(cluster_path)?;
    let observations = Observations::read_paths(flows, &cluster)?;
    run_observations(cluster, observations, opts)
}

/// `leash recommend` on observations already attributed to the cluster's pods (e.g. from a
/// store): synthesize and self-check.
pub fn run_observations(
    cluster: Cluster,
    observations: Observations,
    opts: &Options,
) -> Result<Outcome, Error> {
    let recommendation = recommend(&cluster, &observations, opts);
    // The cluster model is itself a view for the evaluator.
    self_check(&cluster, &cluster, &observations, &recommendation)?;
    Ok(Outcome {
        cluster,
        observations,
        recommendation,
    })
}

/// `leash recommend --store`: load the snapshot, read the store's observations last seen at
/// or after `since`, synthesize, self-check. Also returns the stored workloads that could not
/// be attributed to the snapshot's pods.
pub fn run_store(
    cluster_path: &std::path::Path,
    store_path: &std::path::Path,
    since: Option<DateTime<Utc>>,
    opts: &Options,
) -> Result<(Outcome, Vec<crate::store::Skipped>), Error> {
    let cluster = Cluster::load(cluster_path)?;
    let store = crate::store::SqliteStore::open_existing(store_path)?;
    let (observations, skipped) = crate::store::load(&store, &cluster, since)?;
    let mut outcome = run_observations(cluster, observations, opts)?;
    outcome.recommendation.skipped_input = skipped_lines(&skipped);
    Ok((outcome, skipped))
}

/// The report lines of skipped stored observations, sorted.
pub fn skipped_lines(skipped: &[crate::store::Skipped]) -> Vec<String> {
    let mut lines: Vec<String> = skipped.iter().map(ToString::to_string).collect();
    lines.sort();
    lines
}
