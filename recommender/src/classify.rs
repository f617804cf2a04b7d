//! What each observed destination *is*, as NetworkPolicy sees it (after DNAT).
//!
//! A destination is the DNS resolver, a Service ClusterIP (translated to its backends and
//! targetPort), a pod (selected by its workload), an address selectors cannot match (a
//! hostNetwork pod, a node, the API server, a non-pod endpoint), or external.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use crate::cluster::{Cluster, ServiceId, ServiceLookup, WorkloadId};
use crate::observations::Observations;
use leash_records::Protocol;

/// The NodeLocal DNSCache default listen address.
pub const NODE_LOCAL_DNS_DEFAULT: IpAddr = IpAddr::V4(Ipv4Addr::new(169, 254, 20, 10));

/// The DNS port a client dials.
pub const DNS_PORT: u16 = 53;

/// Why an address needs an ipBlock /32 rather than a selector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostKind {
    /// The API server (an endpoint of `default/kubernetes`).
    ApiServer,
    /// A node address (or a hostNetwork pod on it).
    Node,
    /// A Service endpoint that is not a pod.
    Endpoint,
    /// A pod whose labels offer no stable selector: its IP is used, and flagged in the report.
    UnselectablePod,
}

impl HostKind {
    /// A short description for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Self::ApiServer => "API server endpoint",
            Self::Node => "node / hostNetwork pod",
            Self::Endpoint => "Service endpoint (not a pod)",
            Self::UnselectablePod => "pod without stable labels (ephemeral IP!)",
        }
    }
}

/// What a flow reaches after DNAT: the peer a rule must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DestinationPeer {
    /// The pods of a workload, selectable by labels.
    Workload(WorkloadId),
    /// An address selectors cannot match; needs an ipBlock /32.
    Host(IpAddr, HostKind),
    /// An address outside the cluster.
    External(IpAddr),
}

/// The resolver a pod used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resolver {
    /// A DNS Service (kube-dns, dns-default, …): namespaceSelector AND podSelector.
    Service(ServiceId),
    /// A resolver pod reached by its IP: its workload's selector.
    Pod(WorkloadId),
    /// A resolver reached by address (NodeLocal DNSCache, an upstream): ipBlock /32.
    Address(IpAddr),
}

/// One post-DNAT target of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// The peer.
    pub peer: DestinationPeer,
    /// The port the policy must allow (the targetPort for Services).
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

/// How a flow's destination was classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Class {
    /// A DNS query to a resolver.
    Dns(Resolver),
    /// Direct targets (a pod, a host, an external address).
    Direct(Target),
    /// Through a Service: every backend is a target.
    Service {
        /// The Service.
        service: ServiceId,
        /// The backends as targets (deduplicated, sorted).
        targets: Vec<Target>,
    },
    /// Cannot become a rule; the reason goes to the report.
    Unresolved(String),
}

/// Classifier configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassifierConfig {
    /// NodeLocal DNSCache addresses (`--node-local-dns`; default 169.254.20.10).
    pub node_local_dns: BTreeSet<IpAddr>,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            node_local_dns: BTreeSet::from([NODE_LOCAL_DNS_DEFAULT]),
        }
    }
}

/// Why a destination can be neither allowed nor denied by NetworkPolicy, if it cannot.
/// Loopback never leaves the pod; port 0 cannot be written in a policy (and an empty port
/// list would allow every port).
pub fn unenforceable(dst: IpAddr, port: u16) -> Option<&'static str> {
    if dst.is_loopback() {
        Some("loopback: never leaves the pod, NetworkPolicy does not apply")
    } else if port == 0 {
        Some("port 0 cannot be expressed in a NetworkPolicy")
    } else {
        None
    }
}

/// The classifier: the cluster, the discovered resolvers, and a cache per destination.
#[derive(Debug)]
pub struct Classifier<'a> {
    cluster: &'a Cluster,
    config: &'a ClassifierConfig,
    /// Addresses that answered DNS (from DNS records), plus NodeLocal addresses.
    resolvers: BTreeSet<IpAddr>,
    /// Whether any DNS record was read (else resolvers are guessed from port 53).
    saw_dns: bool,
    cache: HashMap<(IpAddr, u16, Protocol), Class>,
}

impl<'a> Classifier<'a> {
    /// A classifier for these observations (their DNS records name the resolvers).
    pub fn new(cluster: &'a Cluster, config: &'a ClassifierConfig, obs: &Observations) -> Self {
        let mut resolvers = obs.resolvers.clone();
        let saw_dns = !resolvers.is_empty();
        resolvers.extend(config.node_local_dns.iter().copied());
        Self {
            cluster,
            config,
            resolvers,
            saw_dns,
            cache: HashMap::new(),
        }
    }

    /// Whether `ip` is a resolver address: named by DNS records or NodeLocal, or, when the
    /// agent captured no DNS at all, any Service address dialed on port 53.
    fn is_resolver(&self, ip: IpAddr, port: u16, proto: Protocol) -> bool {
        if !matches!(proto, Protocol::Udp | Protocol::Tcp) || port != DNS_PORT {
            return false;
        }
        self.resolvers.contains(&ip) || (!self.saw_dns && self.cluster.service_by_ip(ip).is_some())
    }

    /// The resolver behind an address.
    pub fn resolver(&self, ip: IpAddr) -> Resolver {
        if self.config.node_local_dns.contains(&ip) {
            return Resolver::Address(ip);
        }
        if let Some(s) = self.cluster.service_by_ip(ip) {
            return Resolver::Service(s);
        }
        if let Some(p) = self.cluster.pod_by_ip(ip)
            && let Some(w) = self.cluster.workload_of(p)
            && self.cluster.workloads[w].selector.is_some()
        {
            return Resolver::Pod(w);
        }
        Resolver::Address(ip)
    }

    /// Classifies a destination as dialed.
    pub fn classify(&mut self, dst: IpAddr, port: u16, protocol: Protocol) -> Class {
        if let Some(c) = self.cache.get(&(dst, port, protocol)) {
            return c.clone();
        }
        let c = self.classify_uncached(dst, port, protocol);
        self.cache.insert((dst, port, protocol), c.clone());
        c
    }

    /// Whether `dst` dialed on `port`/`protocol` would be an external address
    /// ([`DestinationPeer::External`]): not the resolver, a Service, a pod or a node.
    pub fn is_external(&self, dst: IpAddr, port: u16, protocol: Protocol) -> bool {
        matches!(
            self.classify_uncached(dst, port, protocol),
            Class::Direct(Target {
                peer: DestinationPeer::External(_),
                ..
            })
        )
    }

    fn classify_uncached(&self, dst: IpAddr, port: u16, protocol: Protocol) -> Class {
        if let Some(reason) = unenforceable(dst, port) {
            return Class::Unresolved(reason.to_owned());
        }
        if self.is_resolver(dst, port, protocol) {
            return Class::Dns(self.resolver(dst));
        }
        let c = self.cluster;
        match c.resolve_service(dst, port, protocol) {
            ServiceLookup::NotService => {}
            ServiceLookup::NoSuchPort(s) => {
                let svc = &c.services[s];
                return Class::Unresolved(format!(
                    "Service {}/{} has no port {port}/{protocol}",
                    svc.namespace, svc.name
                ));
            }
            ServiceLookup::Resolved {
                service, backends, ..
            } => {
                if backends.is_empty() {
                    let svc = &c.services[service];
                    return Class::Unresolved(format!(
                        "Service {}/{} has no endpoints for port {port}/{protocol}",
                        svc.namespace, svc.name
                    ));
                }
                let svc = &c.services[service];
                let is_api = svc.namespace == "default" && svc.name == "kubernetes";
                let mut targets: Vec<Target> = backends
                    .iter()
                    .map(|b| {
                        let peer = match b.pod {
                            Some(p) => self.pod_peer(p, b.ip),
                            None if is_api => DestinationPeer::Host(b.ip, HostKind::ApiServer),
                            None if c.node_by_ip(b.ip).is_some() => {
                                DestinationPeer::Host(b.ip, HostKind::Node)
                            }
                            None => DestinationPeer::Host(b.ip, HostKind::Endpoint),
                        };
                        Target {
                            peer,
                            port: b.port,
                            protocol,
                        }
                    })
                    .collect();
                // Reached on a node port: whether the DNAT happens before the egress check
                // depends on the implementation (and, with kube-proxy, on whether the node is
                // the local one), so allow the node address on the node port as well.
                if !svc.cluster_ips.contains(&dst) && !svc.external_ips.contains(&dst) {
                    targets.push(Target {
                        peer: DestinationPeer::Host(dst, HostKind::Node),
                        port,
                        protocol,
                    });
                }
                targets.sort();
                targets.dedup();
                return Class::Service { service, targets };
            }
        }
        let peer = if let Some(p) = c.pod_by_ip(dst) {
            self.pod_peer(p, dst)
        } else if c.node_by_ip(dst).is_some() || !c.host_pods_by_ip(dst).is_empty() {
            DestinationPeer::Host(dst, HostKind::Node)
        } else {
            DestinationPeer::External(dst)
        };
        Class::Direct(Target {
            peer,
            port,
            protocol,
        })
    }

    fn pod_peer(&self, pod: usize, ip: IpAddr) -> DestinationPeer {
        let c = self.cluster;
        let Some(p) = c.pods.get(pod) else {
            return DestinationPeer::External(ip);
        };
        if p.host_network {
            return DestinationPeer::Host(ip, HostKind::Node);
        }
        match c.workload_of(pod) {
            Some(w) if c.workloads[w].selector.is_some() => DestinationPeer::Workload(w),
            _ => DestinationPeer::Host(ip, HostKind::UnselectablePod),
        }
    }

    /// The DNS rule's ports for a resolver: UDP **and** TCP at the real target port. For a
    /// Service these are its port-53 targetPorts resolved on the backends (5353 on OpenShift);
    /// a protocol the Service lacks reuses the other's ports.
    pub fn dns_ports(&self, r: Resolver) -> Vec<(Protocol, u16)> {
        let mut by_proto: BTreeMap<Protocol, BTreeSet<u16>> = BTreeMap::new();
        if let Resolver::Service(s) = r {
            for proto in [Protocol::Udp, Protocol::Tcp] {
                let ports = self.cluster.service_target_ports(s, DNS_PORT, proto);
                by_proto.entry(proto).or_default().extend(ports);
            }
        }
        let all: BTreeSet<u16> = by_proto.values().flatten().copied().collect();
        let fallback = if all.is_empty() {
            BTreeSet::from([DNS_PORT])
        } else {
            all
        };
        let mut out = Vec::new();
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let ports = by_proto
                .get(&proto)
                .filter(|p| !p.is_empty())
                .unwrap_or(&fallback);
            out.extend(ports.iter().map(|p| (proto, *p)));
        }
        out
    }
}
