//! `leash guardrails`: the cluster baseline as ClusterNetworkPolicies, pure.
//!
//! - **Admin tier** (evaluated before every NetworkPolicy, so no namespace owner can undo it):
//!   `guardrails-metadata` denies egress to the cloud metadata addresses from every namespace
//!   never observed using them (priority [`PRIORITY_METADATA`]); `guardrails-protected-N`
//!   denies egress to the `--protected` ranges from every namespace never observed reaching
//!   them (priority [`PRIORITY_PROTECTED`]).
//! - **Baseline tier** (reached only by pods no NetworkPolicy selects):
//!   `guardrails-dns-N` accepts DNS to the discovered DNS pods and ports on UDP and TCP
//!   (priority [`PRIORITY_DNS`]), then `guardrails-default-deny` denies all other egress
//!   (priority [`PRIORITY_DEFAULT_DENY`]); both for every namespace but the exempt ones.
//!
//! The API's limits (25 rules per policy, 25 peers per rule, 25 CIDRs per `networks` peer)
//! are met by splitting into policies with stable, numbered names. Every object passes
//! [`cnp::validate`]. `outdir` writes `-o DIR` (the one I/O of the module).

pub mod outdir;
pub mod stage;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta,
};
use leash_records::Protocol;
use leash_records::error::Chain;

use crate::classify::{Class, Classifier, ClassifierConfig, Resolver};
use crate::cluster::{Cluster, NAMESPACE_NAME_LABEL};
use crate::cnp::{
    self, Action, ClusterNetworkPolicy, EgressPeer, EgressRule, NamespacedPod, Port, ProtocolPort,
    ProtocolPorts, Spec, Subject, Tier,
};
use crate::eval::{self, ClusterView, PolicySet};
use crate::observations::Observations;
use crate::recommend;
use crate::render::escape;

/// The cloud metadata addresses (AWS, GCP, Azure, … on IPv4; AWS on IPv6).
pub const METADATA: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
];
/// Admin priority of the metadata deny: first of leash's guardrails.
pub const PRIORITY_METADATA: i32 = 10;
/// Admin priority of the `--protected` denies.
pub const PRIORITY_PROTECTED: i32 = 20;
/// Baseline priority of the DNS accept: before the default deny.
pub const PRIORITY_DNS: i32 = 900;
/// Baseline priority of the default deny: last, so a team's own Baseline policies (lower
/// numbers) come first.
pub const PRIORITY_DEFAULT_DENY: i32 = 1000;
/// The API's limit on rules per policy, peers per rule and CIDRs per `networks` peer.
pub const MAX: usize = 25;
/// Name prefix of every object.
pub const PREFIX: &str = "guardrails-";
/// The Baseline default deny's name.
pub const DEFAULT_DENY: &str = "guardrails-default-deny";
/// Namespaces CNIs install themselves into: exempt by default when they exist.
pub const CNI_NAMESPACES: [&str; 5] = [
    "calico-system",
    "tigera-operator",
    "kube-flannel",
    "cilium",
    "antrea-system",
];

/// Knobs of [`propose`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Namespaces the Baseline default deny leaves alone; `None`: [`default_exempt`].
    pub exempt: Option<BTreeSet<String>>,
    /// Ranges the Admin tier denies (`--protected`).
    pub protected: Vec<IpNet>,
    /// Experimental-channel fields allowed (`--experimental`). The guardrails need none
    /// today; the objects are then checked against the experimental CRD.
    pub experimental: bool,
}

/// Why something was proposed or left out, for the report.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Justification {
    /// The policy (or `-` when nothing was proposed).
    pub policy: String,
    /// Why; tenant text inside is raw (escaped by the renderer).
    pub text: String,
}

/// The proposal.
#[derive(Debug, Clone, PartialEq)]
pub struct Guardrails {
    /// The objects, sorted by name.
    pub policies: Vec<ClusterNetworkPolicy>,
    /// Every rule's justification and every exclusion, sorted.
    pub justifications: Vec<Justification>,
    /// The exempt namespaces.
    pub exempt: BTreeSet<String>,
    /// Namespaces the Baseline tier leaves out for now, with the workloads (`Kind/name`)
    /// whose observed egress it would deny: no NetworkPolicy of the stack locks them down
    /// yet. They join once their namespace is locked down and the guardrails are proposed
    /// again, so that the guardrails break nothing whenever they are applied.
    pub deferred: BTreeMap<String, BTreeSet<String>>,
    /// Namespaces observed using a metadata address, with the pods (`ns/name`) that did.
    pub metadata_users: BTreeMap<String, BTreeSet<String>>,
    /// Namespaces observed reaching a protected range, with the pods that did.
    pub protected_users: BTreeMap<String, BTreeSet<String>>,
}

/// Why the guardrails cannot be proposed or failed their self-check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A generated object fails the CRD's checks (a bug: reported, never written).
    #[error("generated ClusterNetworkPolicy {name} is invalid: {message}")]
    Invalid {
        /// The object.
        name: String,
        /// What failed.
        message: String,
    },
    /// The stack could not be compiled by the evaluator.
    #[error("the policy stack is invalid: {0}")]
    Stack(String),
    /// Observed flows would be denied by the stack.
    #[error("{} observed flow(s) would be denied, first: {} -> {} ({})",
        .0.len(),
        .0.first().map_or("", |d| d.pod.as_str()),
        .0.first().map_or("", |d| d.destination.as_str()),
        .0.first().map_or("", |d| d.reason.as_str()))]
    Denied(Vec<recommend::Denied>),
    /// A metadata address is still allowed from a namespace that never used it.
    #[error("the metadata address {address} stays allowed from {pod}")]
    MetadataAllowed {
        /// The address.
        address: IpAddr,
        /// The pod checked, `ns/name`.
        pod: String,
    },
}

/// `type Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The default exempt namespaces: `kube-system`, plus each of [`CNI_NAMESPACES`] the cluster
/// has (the model knows a namespace from its object or from its pods).
pub fn default_exempt(cluster: &Cluster) -> BTreeSet<String> {
    let mut out = BTreeSet::from(["kube-system".to_owned()]);
    let all = namespaces(cluster);
    out.extend(
        CNI_NAMESPACES
            .iter()
            .filter(|n| all.contains(**n))
            .map(|n| (*n).to_owned()),
    );
    out
}

/// Every namespace the model knows: Namespace objects and the namespaces of pods.
fn namespaces(cluster: &Cluster) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = cluster.namespaces.keys().cloned().collect();
    out.extend(cluster.pods.iter().map(|p| p.namespace.clone()));
    out
}

/// `kubernetes.io/metadata.name <op> [values]`.
fn names_selector(op: &str, values: &BTreeSet<String>) -> LabelSelector {
    LabelSelector {
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: NAMESPACE_NAME_LABEL.to_owned(),
            operator: op.to_owned(),
            values: Some(values.iter().cloned().collect()),
        }]),
        match_labels: None,
    }
}

/// Every non-exempt namespace: `NotIn` the exempt ones (also new namespaces), or every
/// namespace when none is exempt.
fn non_exempt(exempt: &BTreeSet<String>) -> LabelSelector {
    if exempt.is_empty() {
        LabelSelector::default()
    } else {
        names_selector("NotIn", exempt)
    }
}

fn object(
    name: String,
    tier: Tier,
    priority: i32,
    subject: LabelSelector,
    egress: Vec<EgressRule>,
) -> ClusterNetworkPolicy {
    ClusterNetworkPolicy {
        api_version: cnp::API_VERSION.to_owned(),
        kind: cnp::KIND.to_owned(),
        metadata: ObjectMeta {
            name: Some(name),
            annotations: Some(BTreeMap::from([(
                recommend::ANNOTATION_GENERATED_BY.to_owned(),
                "leash guardrails".to_owned(),
            )])),
            labels: Some(BTreeMap::from([(
                crate::policy_state::MANAGED_BY.0.to_owned(),
                crate::policy_state::MANAGED_BY.1.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Spec {
            tier,
            priority,
            subject: Subject {
                namespaces: Some(subject),
                pods: None,
            },
            ingress: Vec::new(),
            egress,
        },
        status: None,
    }
}

/// Splits `rules` into policies of at most [`MAX`] rules: one policy is named `base`, more are
/// `base-1`, `base-2`, … (stable for the same input).
fn split(
    base: &str,
    tier: Tier,
    priority: i32,
    subject: &LabelSelector,
    rules: Vec<EgressRule>,
) -> Vec<ClusterNetworkPolicy> {
    let chunks: Vec<Vec<EgressRule>> = rules.chunks(MAX).map(<[EgressRule]>::to_vec).collect();
    let many = chunks.len() > 1;
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, rules)| {
            let name = if many {
                format!("{base}-{}", i + 1)
            } else {
                base.to_owned()
            };
            object(name, tier, priority, subject.clone(), rules)
        })
        .collect()
}

/// Peers of `networks` for these CIDRs: at most [`MAX`] CIDRs per peer.
fn network_peers(cidrs: &BTreeSet<IpNet>) -> Vec<EgressPeer> {
    let all: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
    all.chunks(MAX)
        .map(|c| EgressPeer {
            networks: Some(c.to_vec()),
            ..EgressPeer::default()
        })
        .collect()
}

/// Rules with `action` over `peers`, at most [`MAX`] peers each, named `name`, `name-2`, ….
fn rules(
    name: &str,
    action: Action,
    peers: Vec<EgressPeer>,
    protocols: Option<Vec<ProtocolPort>>,
) -> Vec<EgressRule> {
    peers
        .chunks(MAX)
        .enumerate()
        .map(|(i, to)| EgressRule {
            name: Some(if i == 0 {
                name.to_owned()
            } else {
                format!("{name}-{}", i + 1)
            }),
            action,
            to: to.to_vec(),
            protocols: protocols.clone(),
        })
        .collect()
}

/// Namespaces (with their pods) observed dialing an address inside `ranges`.
fn users(
    cluster: &Cluster,
    obs: &Observations,
    ranges: &[IpNet],
) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for key in obs.flows.keys() {
        let Some(pod) = cluster.pods.get(key.pod) else {
            continue;
        };
        let dst = key.dst.to_canonical();
        if ranges.iter().any(|r| r.contains(&dst)) {
            out.entry(pod.namespace.clone())
                .or_default()
                .insert(format!("{}/{}", pod.namespace, pod.name));
        }
    }
    out
}

/// The resolvers the observed pods used, as the classifier names them (`recommend`'s).
fn resolvers(
    cluster: &Cluster,
    config: &ClassifierConfig,
    obs: &Observations,
) -> BTreeSet<Resolver> {
    let mut classifier = Classifier::new(cluster, config, obs);
    let mut out = BTreeSet::new();
    let mut keys: Vec<_> = obs.flows.keys().collect();
    keys.sort_by_key(|k| (k.dst, k.port, k.protocol));
    for k in keys {
        if let Class::Dns(r) = classifier.classify(k.dst, k.port, k.protocol) {
            out.insert(r);
        }
    }
    for (_, ip) in obs.dns.keys() {
        out.insert(classifier.resolver(*ip));
    }
    out
}

/// A `recommend` peer as a ClusterNetworkPolicy peer: pods AND their namespace, or a network.
fn cnp_peer(p: &recommend::EgressPeer) -> EgressPeer {
    match p {
        recommend::EgressPeer::Pods {
            namespace,
            selector,
        } => EgressPeer {
            pods: Some(NamespacedPod {
                namespace_selector: namespace
                    .as_ref()
                    .map(|n| names_selector("In", &BTreeSet::from([n.clone()]))),
                pod_selector: selector.to_k8s(),
            }),
            ..EgressPeer::default()
        },
        recommend::EgressPeer::Block { cidr, .. } => EgressPeer {
            networks: Some(vec![cidr.to_string()]),
            ..EgressPeer::default()
        },
    }
}

fn ports(set: &BTreeSet<(Protocol, u16)>) -> Vec<ProtocolPort> {
    set.iter()
        .filter_map(|&(proto, port)| {
            let p = Some(ProtocolPorts {
                destination_port: Some(Port {
                    number: Some(i32::from(port)),
                    range: None,
                }),
            });
            match proto {
                Protocol::Tcp => Some(ProtocolPort {
                    tcp: p,
                    ..ProtocolPort::default()
                }),
                Protocol::Udp => Some(ProtocolPort {
                    udp: p,
                    ..ProtocolPort::default()
                }),
                _ => None,
            }
        })
        .collect()
}

/// The policies the guardrails are applied over: what decides the Baseline's deferrals.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stack<'a> {
    /// The NetworkPolicies in force: the applied ones, with a proposal laid over them when
    /// the guardrails go with it.
    pub network_policies: &'a [NetworkPolicy],
    /// The applied ClusterNetworkPolicies (leash's earlier guardrails among them are
    /// replaced).
    pub cluster_policies: &'a [ClusterNetworkPolicy],
}

/// Proposes the guardrails for this cluster and these observations, over `stack`: the
/// Baseline tier defers every namespace where it would deny observed traffic
/// ([`Guardrails::deferred`]), so that the guardrails can go first in a rollout.
pub fn propose(
    cluster: &Cluster,
    obs: &Observations,
    config: &ClassifierConfig,
    opts: &Options,
    stack: &Stack<'_>,
) -> Result<Guardrails> {
    let exempt = opts
        .exempt
        .clone()
        .unwrap_or_else(|| default_exempt(cluster));
    let all = namespaces(cluster);
    let mut policies = Vec::new();
    let mut why = Vec::new();

    // Admin: metadata.
    let meta_nets: Vec<IpNet> = METADATA.iter().map(|ip| IpNet::from(*ip)).collect();
    let metadata_users = users(cluster, obs, &meta_nets);
    for (ns, pods) in &metadata_users {
        why.push(Justification {
            policy: "guardrails-metadata".into(),
            text: format!(
                "namespace {ns} left out: observed using a metadata address ({})",
                pods.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    let meta_subject: BTreeSet<String> = all
        .iter()
        .filter(|n| !metadata_users.contains_key(*n))
        .cloned()
        .collect();
    if meta_subject.is_empty() {
        why.push(Justification {
            policy: "-".into(),
            text: "no metadata guardrail: every namespace was observed using it".into(),
        });
    } else {
        let peers = network_peers(&meta_nets.iter().copied().collect());
        policies.push(object(
            "guardrails-metadata".into(),
            Tier::Admin,
            PRIORITY_METADATA,
            names_selector("In", &meta_subject),
            rules("deny-cloud-metadata", Action::Deny, peers, None),
        ));
        why.push(Justification {
            policy: "guardrails-metadata".into(),
            text: format!(
                "Admin Deny to {}: the cloud metadata service hands out node credentials; \
                 {} namespace(s) never observed using it",
                meta_nets
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                meta_subject.len()
            ),
        });
    }

    // Admin: protected ranges.
    let protected: BTreeSet<IpNet> = opts.protected.iter().map(IpNet::trunc).collect();
    let list: Vec<IpNet> = protected.iter().copied().collect();
    let protected_users = users(cluster, obs, &list);
    if !protected.is_empty() {
        for (ns, pods) in &protected_users {
            why.push(Justification {
                policy: "guardrails-protected".into(),
                text: format!(
                    "namespace {ns} left out: observed reaching a protected range ({})",
                    pods.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            });
        }
        let subject: BTreeSet<String> = all
            .iter()
            .filter(|n| !protected_users.contains_key(*n))
            .cloned()
            .collect();
        if !subject.is_empty() {
            let made = split(
                "guardrails-protected",
                Tier::Admin,
                PRIORITY_PROTECTED,
                &names_selector("In", &subject),
                rules(
                    "deny-protected",
                    Action::Deny,
                    network_peers(&protected),
                    None,
                ),
            );
            for p in &made {
                why.push(Justification {
                    policy: p.name().to_owned(),
                    text: format!(
                        "Admin Deny to the --protected ranges ({}) from {} namespace(s) never \
                         observed reaching them",
                        list.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        subject.len()
                    ),
                });
            }
            policies.extend(made);
        }
    }
    let admin = Admin {
        policies,
        why,
        metadata_users,
        protected_users,
    };
    let all_in = baseline(
        admin.clone(),
        exempt.clone(),
        BTreeMap::new(),
        cluster,
        obs,
        config,
    )?;
    let deferred = deferrals(cluster, obs, &all_in, stack)?;
    if deferred.is_empty() {
        return Ok(all_in);
    }
    baseline(admin, exempt, deferred, cluster, obs, config)
}

/// The Admin tier's part of a proposal, which the Baseline is added to.
#[derive(Clone)]
struct Admin {
    policies: Vec<ClusterNetworkPolicy>,
    why: Vec<Justification>,
    metadata_users: BTreeMap<String, BTreeSet<String>>,
    protected_users: BTreeMap<String, BTreeSet<String>>,
}

/// The namespaces (with their workloads) where the Baseline default deny of `g` would deny
/// observed traffic that the stack's NetworkPolicies leave to it: their workloads' egress is
/// not yet locked down by a NetworkPolicy.
fn deferrals(
    cluster: &Cluster,
    obs: &Observations,
    g: &Guardrails,
    stack: &Stack<'_>,
) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let set = stack_set(g, stack)?;
    let checks = observed_checks(cluster, obs);
    let denied_by_baseline = |&(p, dst, port, protocol): &(usize, IpAddr, u16, Protocol)| {
        let flow = eval::Flow {
            protocol,
            dst,
            dst_port: port,
        };
        let ev = eval::evaluate(cluster, &set, &cluster.pods[p], &flow);
        ev.problem.is_none()
            && ev.targets.iter().any(|t| {
                t.egress.verdict == eval::Verdict::Deny
                    && t.egress
                        .deciding_cluster_rule()
                        .is_some_and(|m| m.policy == DEFAULT_DENY)
            })
    };
    let verdicts = crate::parallel::map(&checks, denied_by_baseline);
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (&(p, ..), denied) in checks.iter().zip(verdicts) {
        if denied {
            let pod = &cluster.pods[p];
            out.entry(pod.namespace.clone())
                .or_default()
                .insert(crate::diff::flows::workload_of(cluster, pod).workload);
        }
    }
    Ok(out)
}

/// The policies in force once the guardrails are applied, compiled: the stack's
/// NetworkPolicies, its ClusterNetworkPolicies with leash's earlier guardrails replaced by
/// `g`'s.
fn stack_set(g: &Guardrails, stack: &Stack<'_>) -> Result<PolicySet> {
    let tiers = replace_guardrails(stack.cluster_policies, &g.policies);
    PolicySet::new(stack.network_policies)
        .and_then(|s| s.with_cluster_policies(&tiers))
        .map_err(|e| Error::Stack(Chain(&e).to_string()))
}

/// The observed flows a policy can enforce, once per (pod, destination, port, protocol):
/// from pod-network pods, to destinations NetworkPolicy can restrict. Sorted.
fn observed_checks(cluster: &Cluster, obs: &Observations) -> Vec<(usize, IpAddr, u16, Protocol)> {
    let mut checks: BTreeSet<(usize, IpAddr, u16, Protocol)> = BTreeSet::new();
    for key in obs.flows.keys() {
        let Some(pod) = cluster.pods.get(key.pod) else {
            continue;
        };
        if pod.host_network || crate::classify::unenforceable(key.dst, key.port).is_some() {
            continue;
        }
        checks.insert((key.pod, key.dst, key.port, key.protocol));
    }
    checks.into_iter().collect()
}

/// The Baseline tier over `admin`, for every namespace but `exempt` and `deferred`.
fn baseline(
    admin: Admin,
    exempt: BTreeSet<String>,
    deferred: BTreeMap<String, BTreeSet<String>>,
    cluster: &Cluster,
    obs: &Observations,
    config: &ClassifierConfig,
) -> Result<Guardrails> {
    let Admin {
        mut policies,
        mut why,
        metadata_users,
        protected_users,
    } = admin;
    let left_out: BTreeSet<String> = exempt.iter().chain(deferred.keys()).cloned().collect();
    let subject = non_exempt(&left_out);
    for (ns, workloads) in &deferred {
        why.push(Justification {
            policy: DEFAULT_DENY.into(),
            text: format!(
                "namespace {ns} deferred: no NetworkPolicy locks down the egress of {} yet, so \
                 the Baseline default deny would break its observed traffic; lock the \
                 namespace down (leash recommend), then propose the guardrails again",
                workloads.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        });
    }
    // Baseline: DNS, one rule set per port set, peers from recommend's DNS rule.
    let classifier = Classifier::new(cluster, config, obs);
    let mut by_ports: BTreeMap<BTreeSet<(Protocol, u16)>, BTreeSet<String>> = BTreeMap::new();
    let mut dns_peers: BTreeMap<BTreeSet<(Protocol, u16)>, Vec<EgressPeer>> = BTreeMap::new();
    for r in resolvers(cluster, config, obs) {
        let ports_of: BTreeSet<(Protocol, u16)> = classifier.dns_ports(r).into_iter().collect();
        let mut peers: Vec<EgressPeer> = recommend::dns_peers(cluster, "", r)
            .iter()
            .map(cnp_peer)
            .collect();
        // NodeLocal DNSCache in iptables mode answers on the DNS Service's ClusterIP itself
        // without DNAT (as recommend's DNS rule says): allow the ClusterIP on port 53 too.
        if let Resolver::Service(s) = r
            && cluster.runs_node_local_dns()
        {
            let ips: BTreeSet<IpNet> = cluster.services[s]
                .cluster_ips
                .iter()
                .map(|ip| IpNet::from(*ip))
                .collect();
            let p53 = BTreeSet::from([
                (Protocol::Tcp, crate::classify::DNS_PORT),
                (Protocol::Udp, crate::classify::DNS_PORT),
            ]);
            dns_peers
                .entry(p53.clone())
                .or_default()
                .extend(network_peers(&ips));
            by_ports
                .entry(p53)
                .or_default()
                .insert("the DNS Service's ClusterIP (NodeLocal DNSCache)".into());
        }
        by_ports
            .entry(ports_of.clone())
            .or_default()
            .insert(match r {
                Resolver::Service(s) => format!(
                    "Service {}/{}",
                    cluster.services[s].namespace, cluster.services[s].name
                ),
                Resolver::Pod(w) => format!(
                    "{} {}/{}",
                    cluster.workloads[w].kind,
                    cluster.workloads[w].namespace,
                    cluster.workloads[w].name
                ),
                Resolver::Address(ip) => format!("address {ip}"),
            });
        dns_peers.entry(ports_of).or_default().append(&mut peers);
    }
    let mut dns_rules = Vec::new();
    for (i, (set, mut peers)) in dns_peers.into_iter().enumerate() {
        peers.sort_by_key(|p| serde_json::to_string(p).unwrap_or_default());
        peers.dedup();
        let name = if i == 0 {
            "dns".to_owned()
        } else {
            format!("dns-{}", i + 1)
        };
        dns_rules.extend(rules(&name, Action::Accept, peers, Some(ports(&set))));
    }
    let dns_made = split(
        "guardrails-dns",
        Tier::Baseline,
        PRIORITY_DNS,
        &subject,
        dns_rules,
    );
    for p in &dns_made {
        why.push(Justification {
            policy: p.name().to_owned(),
            text: format!(
                "Baseline Accept DNS (UDP and TCP) to the discovered resolvers: {}; reaches only \
                 pods no NetworkPolicy selects (a NetworkPolicy that selects a pod decides)",
                by_ports
                    .values()
                    .flatten()
                    .cloned()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    if dns_made.is_empty() {
        why.push(Justification {
            policy: "-".into(),
            text: "no DNS resolver observed: no Baseline DNS accept".into(),
        });
    }
    policies.extend(dns_made);
    // The defaults are 0.0.0.0/0 and ::/0.
    let everything = BTreeSet::from([
        IpNet::V4(ipnet::Ipv4Net::default()),
        IpNet::V6(ipnet::Ipv6Net::default()),
    ]);
    policies.push(object(
        DEFAULT_DENY.into(),
        Tier::Baseline,
        PRIORITY_DEFAULT_DENY,
        subject,
        rules(
            "default-deny",
            Action::Deny,
            network_peers(&everything),
            None,
        ),
    ));
    why.push(Justification {
        policy: DEFAULT_DENY.into(),
        text: format!(
            "Baseline Deny of all other egress for every namespace but the exempt ones ({}){}; \
             replaces the per-namespace default-deny NetworkPolicies (recommend --baseline cnp)",
            exempt.iter().cloned().collect::<Vec<_>>().join(", "),
            if deferred.is_empty() {
                String::new()
            } else {
                format!(
                    " and the deferred ones ({})",
                    deferred.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }
        ),
    });
    policies.sort_by(|a, b| a.name().cmp(b.name()));
    for p in &policies {
        cnp::validate(p).map_err(|e| Error::Invalid {
            name: p.name().to_owned(),
            message: e.to_string(),
        })?;
    }
    why.sort();
    Ok(Guardrails {
        policies,
        justifications: why,
        exempt,
        deferred,
        metadata_users,
        protected_users,
    })
}

/// The objects as one YAML stream, canonical (serde, sorted by name).
pub fn yaml(g: &Guardrails) -> Result<String, crate::render::Error> {
    let mut out = String::new();
    for p in &g.policies {
        out.push_str("---\n");
        out.push_str(&object_yaml(p)?);
    }
    Ok(out)
}

/// One object's canonical YAML: the types' field order, maps sorted.
pub fn object_yaml(p: &ClusterNetworkPolicy) -> Result<String, crate::render::Error> {
    serde_norway::to_string(p).map_err(|source| crate::render::Error::Yaml {
        name: p.name().to_owned(),
        source,
    })
}

/// `REPORT.md` of `-o DIR`: the rules, why, what was left out and deferred, and the stage
/// order of a rollout; tenant text escaped.
pub fn report_md(g: &Guardrails) -> String {
    let mut out = String::from("# leash guardrails\n\n");
    out.push_str(
        "ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`). The Admin tier is \
         evaluated before every NetworkPolicy; the Baseline tier only for pods no \
         NetworkPolicy selects.\n\n",
    );
    let _ = writeln!(
        out,
        "Exempt namespaces: {}\n",
        g.exempt
            .iter()
            .map(|n| escape::md(n))
            .collect::<Vec<_>>()
            .join(", ")
    );
    out.push_str("| Policy | Tier | Priority | Rules |\n|---|---|---|---|\n");
    for p in &g.policies {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            escape::md(p.name()),
            p.spec.tier.as_str(),
            p.spec.priority,
            p.spec.egress.len()
        );
    }
    out.push_str(STAGE_ORDER);
    if !g.deferred.is_empty() {
        out.push_str(
            "\n## Deferred namespaces\n\nThe Baseline default deny leaves these namespaces \
             out for now: it would deny the observed egress of these workloads, which no \
             NetworkPolicy locks down yet. Lock each namespace down, then propose the \
             guardrails again: it joins the Baseline.\n\n| Namespace | Workloads |\n|---|---|\n",
        );
        for (ns, workloads) in &g.deferred {
            let _ = writeln!(
                out,
                "| {} | {} |",
                escape::md(ns),
                workloads
                    .iter()
                    .map(|w| escape::md(w))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    out.push_str("\n## Why\n\n");
    for j in &g.justifications {
        let _ = writeln!(
            out,
            "- **{}**: {}",
            escape::md(&j.policy),
            escape::md(&j.text)
        );
    }
    out
}

/// The stage order of a cluster-wide rollout, for the reports and pull requests.
pub const STAGE_ORDER: &str = "\n## Rollout order\n\n\
1. **Guardrails, in audit first.** Shadow-evaluate them before enforcing: `leash rollout \
status --proposed DIR` (or `leash serve --proposed DIR`) shows the guardrails stage and every \
workload whose observed traffic they would break, which must be none. Then apply them. They \
go first because they protect every namespace at once and break nothing: the Admin tier \
leaves out namespaces observed using what it denies, and the Baseline tier defers namespaces \
whose egress no NetworkPolicy locks down yet.\n\
2. **Then namespace by namespace.** Propose each namespace's NetworkPolicies (`leash \
recommend`), watch its workloads reach `ready` on the rollout board, and apply them.\n\
3. **Then the guardrails again.** Each locked-down namespace joins the Baseline tier's \
default deny the next time the guardrails are proposed (the pull-request loop does it by \
itself).\n";

/// The self-check over the whole stack (the guardrails over `stack`: the applied policies and,
/// when given, leash's proposal): every observed flow a policy can enforce from a pod-network
/// pod is allowed, and each metadata address is denied from one pod of every namespace that
/// never used it.
pub fn self_check<V: ClusterView + Sync + ?Sized>(
    cluster: &Cluster,
    view: &V,
    obs: &Observations,
    g: &Guardrails,
    stack: &Stack<'_>,
) -> Result<()> {
    let set = stack_set(g, stack)?;
    let checks = observed_checks(cluster, obs);
    let check_one = |&(p, dst, port, protocol): &(usize, IpAddr, u16, Protocol)| {
        let pod = &cluster.pods[p];
        let source = view.pod(&pod.namespace, &pod.name)?;
        let flow = eval::Flow {
            protocol,
            dst,
            dst_port: port,
        };
        let names = obs
            .names_by_ip
            .get(&dst.to_canonical())
            .cloned()
            .unwrap_or_default();
        let ev = eval::evaluate_with_names(view, &set, source, &flow, &names);
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
        Some(recommend::Denied {
            pod: format!("{}/{}", pod.namespace, pod.name),
            destination: format!("{dst}:{port}/{}", protocol.as_str()),
            reason,
        })
    };
    let mut denied: Vec<_> = crate::parallel::map(&checks, check_one)
        .into_iter()
        .flatten()
        .collect();
    denied.sort();
    if !denied.is_empty() {
        return Err(Error::Denied(denied));
    }
    // The metadata address, from one pod-network pod of each namespace that never used it.
    let mut seen = BTreeSet::new();
    for pod in &cluster.pods {
        if pod.host_network
            || g.metadata_users.contains_key(&pod.namespace)
            || !seen.insert(pod.namespace.as_str())
        {
            continue;
        }
        let Some(source) = view.pod(&pod.namespace, &pod.name) else {
            continue;
        };
        for address in METADATA {
            let flow = eval::Flow {
                protocol: Protocol::Tcp,
                dst: address,
                dst_port: 80,
            };
            if eval::evaluate(view, &set, source, &flow).egress != eval::Verdict::Deny {
                return Err(Error::MetadataAllowed {
                    address,
                    pod: format!("{}/{}", pod.namespace, pod.name),
                });
            }
        }
    }
    Ok(())
}

/// Whether `p` is one of leash's guardrails: its name and leash's managed-by label.
pub fn is_guardrail(p: &ClusterNetworkPolicy) -> bool {
    p.name().starts_with(PREFIX) && crate::policy_state::is_managed(&p.metadata)
}

/// The applied ClusterNetworkPolicies with leash's guardrails replaced by `guardrails` (all
/// of them: a guardrail no longer proposed is removed, as `-o DIR` and the pull request
/// remove its file), and any other of the same name as one of `guardrails` too. Sorted by
/// name.
pub fn replace_guardrails(
    applied: &[ClusterNetworkPolicy],
    guardrails: &[ClusterNetworkPolicy],
) -> Vec<ClusterNetworkPolicy> {
    let kept: Vec<ClusterNetworkPolicy> = applied
        .iter()
        .filter(|a| !is_guardrail(a))
        .cloned()
        .collect();
    lay_over(&kept, guardrails)
}

/// The applied ClusterNetworkPolicies with `given` in place of those of the same name, sorted
/// by name: a policy state's tiers (as `diff` lays them).
pub fn lay_over(
    applied: &[ClusterNetworkPolicy],
    given: &[ClusterNetworkPolicy],
) -> Vec<ClusterNetworkPolicy> {
    let mut out: Vec<ClusterNetworkPolicy> = applied
        .iter()
        .filter(|a| !given.iter().any(|g| g.name() == a.name()))
        .chain(given)
        .cloned()
        .collect();
    out.sort_by(|a, b| a.name().cmp(b.name()));
    out
}

/// `recommend --baseline`: where each namespace's default deny comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Baseline {
    /// A `default-deny-egress` NetworkPolicy per namespace (the default).
    #[default]
    NetworkPolicy,
    /// The guardrails' Baseline tier: no per-namespace default-deny NetworkPolicies.
    Cnp,
}

impl std::str::FromStr for Baseline {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "networkpolicy" => Ok(Baseline::NetworkPolicy),
            "cnp" => Ok(Baseline::Cnp),
            other => Err(format!(
                "unknown baseline {other:?} (expected networkpolicy or cnp)"
            )),
        }
    }
}

/// `recommend --baseline cnp`'s one filter: drops the per-namespace default-deny
/// NetworkPolicies, which the guardrails' Baseline tier replaces. The per-workload policies
/// keep their DNS rule: a NetworkPolicy that selects a pod decides its verdict, so the
/// Baseline tier's DNS accept never reaches it.
pub fn apply_baseline(rec: &mut recommend::Recommendation, baseline: Baseline) {
    if baseline == Baseline::Cnp {
        rec.default_deny_namespaces.clear();
    }
}
