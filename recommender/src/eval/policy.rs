//! Validation and compilation of `NetworkPolicy` objects into a form that is cheap to evaluate.
//!
//! Everything the API server would reject is an error here, so a bad policy never turns into a
//! silent match or a silent miss. Defaulting (`policyTypes`, `protocol`, absent selectors) is
//! applied once, here, so the evaluator never has to think about it.

use std::{fmt, net::IpAddr};

use ipnet::IpNet;
use k8s_openapi::{
    api::networking::v1::{
        IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use leash_records::Protocol;

use super::{Error, PolicyId, Result};
use crate::cluster::LabelSelector;

/// An IANA service name, as a named port must be: at most 15 characters of `[a-z0-9-]`,
/// at least one letter, no leading, trailing or doubled hyphen.
fn is_port_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--")
}

/// Parses a CIDR strictly: canonical network address, no host bits, no IPv4-mapped IPv6.
pub(crate) fn parse_cidr(s: &str) -> Result<IpNet, String> {
    // std's address parsers reject IPv4 octets with leading zeros; ipnet's own parser does not.
    let bad = || format!("invalid CIDR {s:?} (expected address/prefix)");
    let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    if prefix.is_empty()
        || !prefix.bytes().all(|b| b.is_ascii_digit())
        || (prefix.len() > 1 && prefix.starts_with('0'))
    {
        return Err(bad());
    }
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    let net = IpNet::new(addr, prefix).map_err(|_| bad())?;
    if net.trunc() != net {
        return Err(format!(
            "CIDR {s:?} has host bits set beyond the prefix (the network is {})",
            net.trunc()
        ));
    }
    if let IpNet::V6(n) = net
        && n.addr().to_ipv4_mapped().is_some()
    {
        return Err(format!("CIDR {s:?} is an IPv4-mapped IPv6 block"));
    }
    Ok(net)
}

/// Which namespaces a selector peer reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceMatch {
    /// Only the policy's own namespace (a `podSelector` without `namespaceSelector`).
    Own(String),
    /// Namespaces whose labels match.
    Selector(LabelSelector),
}

/// One validated `to`/`from` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyPeer {
    /// Pods selected by namespace and pod labels (AND'ed). hostNetwork pods never match.
    Pods {
        /// The namespaces.
        namespaces: NamespaceMatch,
        /// The pods inside them; an absent `podSelector` is the empty selector.
        pods: LabelSelector,
    },
    /// An address range, minus exceptions. Matches pod IPs too.
    IpBlock {
        /// The range.
        cidr: IpNet,
        /// Excluded sub-ranges, each strictly inside `cidr`.
        except: Vec<IpNet>,
    },
}

impl PolicyPeer {
    fn compile(peer: &NetworkPolicyPeer, own_ns: &str, at: &str) -> Result<Self, String> {
        match (&peer.ip_block, &peer.namespace_selector, &peer.pod_selector) {
            (None, None, None) => Err(format!(
                "{at}: a peer must set podSelector, namespaceSelector or ipBlock"
            )),
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(format!(
                "{at}: ipBlock cannot be combined with podSelector or namespaceSelector"
            )),
            (Some(block), None, None) => Self::compile_block(block, &format!("{at}.ipBlock")),
            (None, ns, pods) => {
                let namespaces = match ns {
                    Some(s) => NamespaceMatch::Selector(LabelSelector::parse(
                        s,
                        &format!("{at}.namespaceSelector"),
                    )?),
                    None => NamespaceMatch::Own(own_ns.to_string()),
                };
                let pods = match pods {
                    Some(s) => LabelSelector::parse(s, &format!("{at}.podSelector"))?,
                    None => LabelSelector::default(),
                };
                Ok(PolicyPeer::Pods { namespaces, pods })
            }
        }
    }

    fn compile_block(block: &IPBlock, at: &str) -> Result<Self, String> {
        let cidr = parse_cidr(&block.cidr).map_err(|e| format!("{at}.cidr: {e}"))?;
        let mut except = Vec::new();
        for (i, e) in block.except.iter().flatten().enumerate() {
            let net = parse_cidr(e).map_err(|m| format!("{at}.except[{i}]: {m}"))?;
            let inside = match (cidr, net) {
                (IpNet::V4(c), IpNet::V4(n)) => c.contains(&n) && n.prefix_len() > c.prefix_len(),
                (IpNet::V6(c), IpNet::V6(n)) => c.contains(&n) && n.prefix_len() > c.prefix_len(),
                _ => false,
            };
            if !inside {
                return Err(format!(
                    "{at}.except[{i}]: {e} is not strictly inside {} (or is of another IP family)",
                    block.cidr
                ));
            }
            except.push(net);
        }
        Ok(PolicyPeer::IpBlock { cidr, except })
    }

    /// Whether an address is inside the block (and outside its exceptions).
    pub(crate) fn block_contains(cidr: &IpNet, except: &[IpNet], ip: IpAddr) -> bool {
        cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
    }
}

impl fmt::Display for PolicyPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyPeer::Pods {
                namespaces: NamespaceMatch::Own(ns),
                pods,
            } => write!(f, "pods {} in namespace {ns}", pods.braced()),
            PolicyPeer::Pods {
                namespaces: NamespaceMatch::Selector(ns),
                pods,
            } if pods.is_empty() => write!(f, "all pods in namespaces {}", ns.braced()),
            PolicyPeer::Pods {
                namespaces: NamespaceMatch::Selector(ns),
                pods,
            } => write!(f, "pods {} in namespaces {}", pods.braced(), ns.braced()),
            PolicyPeer::IpBlock { cidr, except } if except.is_empty() => {
                write!(f, "ipBlock {cidr}")
            }
            PolicyPeer::IpBlock { cidr, except } => {
                let ex: Vec<String> = except.iter().map(ToString::to_string).collect();
                write!(f, "ipBlock {cidr} except {}", ex.join(", "))
            }
        }
    }
}

/// Which ports of a protocol a port entry allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMatch {
    /// Every port (an entry without `port`).
    Any,
    /// An inclusive numeric range (`port`, or `port`..=`endPort`).
    Range(u16, u16),
    /// A named port, resolved on the destination pod's container ports.
    Named(String),
}

/// One validated `ports` entry; the protocol is defaulted to TCP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRule {
    /// The protocol.
    pub protocol: Protocol,
    /// The ports.
    pub port: PortMatch,
}

impl PortRule {
    fn compile(p: &NetworkPolicyPort, at: &str) -> Result<Self, String> {
        let protocol = match p.protocol.as_deref() {
            None => Protocol::Tcp,
            Some("TCP") => Protocol::Tcp,
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            Some(other) => {
                return Err(format!(
                    "{at}.protocol: unsupported protocol {other:?} (expected TCP, UDP or SCTP)"
                ));
            }
        };
        let port = match (&p.port, p.end_port) {
            (None, None) => PortMatch::Any,
            (None, Some(_)) => return Err(format!("{at}.endPort: requires port")),
            (Some(IntOrString::String(name)), None) => {
                if !is_port_name(name) {
                    return Err(format!("{at}.port: invalid port name {name:?}"));
                }
                PortMatch::Named(name.clone())
            }
            (Some(IntOrString::String(_)), Some(_)) => {
                return Err(format!("{at}.endPort: requires a numeric port"));
            }
            (Some(IntOrString::Int(n)), end) => {
                let start = port_number(*n).map_err(|e| format!("{at}.port: {e}"))?;
                let end = match end {
                    None => start,
                    Some(e) => {
                        let end = port_number(e).map_err(|m| format!("{at}.endPort: {m}"))?;
                        if end < start {
                            return Err(format!(
                                "{at}.endPort: {end} must be at least port {start}"
                            ));
                        }
                        end
                    }
                };
                PortMatch::Range(start, end)
            }
        };
        Ok(PortRule { protocol, port })
    }
}

fn port_number(n: i32) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("{n} is not a port number (1-65535)")),
    }
}

impl fmt::Display for PortRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortMatch::Any => write!(f, "any {} port", self.protocol),
            PortMatch::Range(a, b) if a == b => write!(f, "{a}/{}", self.protocol),
            PortMatch::Range(a, b) => write!(f, "{a}-{b}/{}", self.protocol),
            PortMatch::Named(n) => write!(f, "{n}/{} (named)", self.protocol),
        }
    }
}

/// One validated ingress or egress rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRule {
    /// The peers (`to` or `from`); empty matches every peer.
    pub peers: Vec<PolicyPeer>,
    /// The ports; empty matches every port and protocol.
    pub ports: Vec<PortRule>,
}

/// A validated policy with its defaulting applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// `namespace/name`.
    pub id: PolicyId,
    /// The pods it applies to, inside its namespace.
    pub pod_selector: LabelSelector,
    /// `Some` when the policy isolates ingress: the rules (possibly none).
    pub ingress: Option<Vec<PolicyRule>>,
    /// `Some` when the policy isolates egress: the rules (possibly none).
    pub egress: Option<Vec<PolicyRule>>,
}

impl CompiledPolicy {
    /// Validates one policy, applying `policyTypes`, `podSelector` and `protocol` defaulting.
    pub fn compile(np: &NetworkPolicy) -> Result<Self> {
        let name = np.metadata.name.clone().unwrap_or_default();
        let namespace = np.metadata.namespace.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(Error::InvalidPolicy {
                policy: format!("{namespace}/<unnamed>"),
                message: "metadata.name is missing".into(),
            });
        }
        if namespace.is_empty() {
            return Err(Error::InvalidPolicy {
                policy: name,
                message: "metadata.namespace is missing (leash does not guess a namespace)".into(),
            });
        }
        let id = PolicyId { namespace, name };
        let invalid = |message: String| Error::InvalidPolicy {
            policy: id.to_string(),
            message,
        };
        let default_spec = NetworkPolicySpec::default();
        let spec = np.spec.as_ref().unwrap_or(&default_spec);
        let pod_selector = match &spec.pod_selector {
            Some(s) => LabelSelector::parse(s, "spec.podSelector").map_err(invalid)?,
            None => LabelSelector::default(),
        };
        let egress_rules = spec.egress.as_deref().unwrap_or_default();
        let ingress_rules = spec.ingress.as_deref().unwrap_or_default();
        let (mut isolates_ingress, mut isolates_egress) = (false, false);
        match spec.policy_types.as_deref() {
            None | Some([]) => {
                // The API server's defaulting: Ingress always, Egress only with egress rules.
                isolates_ingress = true;
                isolates_egress = !egress_rules.is_empty();
            }
            Some(types) => {
                for t in types {
                    match t.as_str() {
                        "Ingress" => isolates_ingress = true,
                        "Egress" => isolates_egress = true,
                        other => {
                            return Err(invalid(format!(
                                "spec.policyTypes: unknown type {other:?} (expected Ingress or Egress)"
                            )));
                        }
                    }
                }
            }
        }
        let egress = compile_rules(
            egress_rules
                .iter()
                .map(|r| (r.to.as_deref(), r.ports.as_deref())),
            &id.namespace,
            "egress",
            "to",
        )
        .map_err(invalid)?;
        let ingress = compile_rules(
            ingress_rules
                .iter()
                .map(|r| (r.from.as_deref(), r.ports.as_deref())),
            &id.namespace,
            "ingress",
            "from",
        )
        .map_err(invalid)?;
        Ok(CompiledPolicy {
            id,
            pod_selector,
            ingress: isolates_ingress.then_some(ingress),
            egress: isolates_egress.then_some(egress),
        })
    }
}

/// Compiles the rules of one direction; `dir` and `peer_field` name them in errors.
fn compile_rules<'a>(
    rules: impl Iterator<
        Item = (
            Option<&'a [NetworkPolicyPeer]>,
            Option<&'a [NetworkPolicyPort]>,
        ),
    >,
    own_ns: &str,
    dir: &str,
    peer_field: &str,
) -> Result<Vec<PolicyRule>, String> {
    rules
        .enumerate()
        .map(|(i, (peers, ports))| {
            let at = format!("spec.{dir}[{i}]");
            let peers = peers
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(j, p)| PolicyPeer::compile(p, own_ns, &format!("{at}.{peer_field}[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            let ports = ports
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(j, p)| PortRule::compile(p, &format!("{at}.ports[{j}]")))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(PolicyRule { peers, ports })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_strict() {
        assert!(parse_cidr("10.0.0.0/24").is_ok());
        assert!(parse_cidr("2001:db8::/32").is_ok());
        assert!(parse_cidr("10.0.0.1/24").unwrap_err().contains("host bits"));
        assert!(parse_cidr("010.0.0.0/24").is_err());
        assert!(parse_cidr("10.0.0.0").is_err());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("10.0.0.0/024").is_err());
        assert!(parse_cidr("10.0.0.0/+8").is_err());
        assert!(parse_cidr("0.0.0.0/0").is_ok());
        assert!(
            parse_cidr("::ffff:10.0.0.0/120")
                .unwrap_err()
                .contains("IPv4-mapped")
        );
    }

    #[test]
    fn port_names() {
        for ok in ["http", "dns-tcp", "a1", "metrics-port-15"] {
            assert!(is_port_name(ok), "{ok}");
        }
        for bad in ["", "HTTP", "-a", "a-", "a--b", "123", "abcdefghijklmnop"] {
            assert!(!is_port_name(bad), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_cidr_never_panics(s in "\\PC{0,50}") {
            let _ = parse_cidr(&s);
        }

        #[test]
        fn accepted_ipv4_cidrs_are_canonical(a in 0u8..=255, b in 0u8..=255, c in 0u8..=255, d in 0u8..=255, p in 0u8..=40, zero in proptest::bool::ANY) {
            let s = if zero { format!("{a}.{b}.0{c}.{d}/{p}") } else { format!("{a}.{b}.{c}.{d}/{p}") };
            if let Ok(net) = parse_cidr(&s) {
                proptest::prop_assert_eq!(net.to_string(), s);
            }
        }

        #[test]
        fn block_contains_agrees_with_bit_arithmetic(
            base in proptest::prelude::any::<u32>(),
            len in 0u8..32,
            ex in proptest::prelude::any::<u32>(),
            ex_extra in 1u8..=32,
            ip in proptest::prelude::any::<u32>(),
        ) {
            let mask = |l: u8| if l == 0 { 0 } else { u32::MAX << (32 - u32::from(l)) };
            let net = base & mask(len);
            let ex_len = len.saturating_add(ex_extra).min(32);
            // An exception strictly inside the block.
            let ex_net = (net | (ex & !mask(len))) & mask(ex_len);
            let v4 = |a: u32| std::net::IpAddr::V4(std::net::Ipv4Addr::from(a));
            let cidr = IpNet::new(v4(net), len).unwrap();
            let except = vec![IpNet::new(v4(ex_net), ex_len).unwrap()];
            let want = (ip & mask(len)) == net && (ip & mask(ex_len)) != ex_net;
            proptest::prop_assert_eq!(PolicyPeer::block_contains(&cidr, &except, v4(ip)), want);
            // Addresses of the other family never match.
            let v6 = std::net::IpAddr::V6(std::net::Ipv4Addr::from(ip).to_ipv6_mapped());
            proptest::prop_assert!(!PolicyPeer::block_contains(&cidr, &[], v6));
        }
    }
}
