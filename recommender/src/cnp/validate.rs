//! What the API server checks of a ClusterNetworkPolicy beyond its serde shape: the CRD's
//! structural limits (exactly-one-of fields, item counts, ranges, patterns) and its CEL rules
//! (`x-kubernetes-validations`), which no JSON-schema validator checks. Each CEL rule is one
//! function returning the CRD's own message. Errors name the field.

use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sSelector;

use super::{
    ClusterNetworkPolicy, EgressPeer, EgressRule, IngressPeer, NamespacedPod, Port, PortRange,
    ProtocolPort,
};
use crate::cluster::LabelSelector;

/// A rule of the CRD the object breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// The field, as a path (`spec.egress[0].to[1].networks[0]`).
    pub field: String,
    /// The CRD's message, or what the schema requires.
    pub message: String,
}

type Result<T = (), E = Invalid> = std::result::Result<T, E>;

fn invalid(field: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// The CEL rule of `destinationPort.range`: `self.start < self.end`.
pub fn start_before_end(range: &PortRange, field: &str) -> Result {
    if range.start < range.end {
        Ok(())
    } else {
        Err(invalid(field, "Start port must be less than End port"))
    }
}

/// The CEL rule of every `networks` entry: `isCIDR(self)`, Kubernetes' CEL CIDR library (an
/// address and a decimal prefix length without leading zeros; host bits allowed; IPv4
/// octets without leading zeros; no zone; no IPv4-mapped IPv6 address).
pub fn is_cidr(s: &str, field: &str) -> Result {
    if parse_cel_cidr(s).is_some() {
        Ok(())
    } else {
        Err(invalid(field, "Invalid CIDR format provided"))
    }
}

/// A CIDR as `isCIDR` accepts it, truncated to its network.
pub fn parse_cel_cidr(s: &str) -> Option<ipnet::IpNet> {
    let (addr, bits) = s.split_once('/')?;
    // std's parsers refuse IPv4 octets with leading zeros and IPv6 zones, as Go's netip does.
    let addr: IpAddr = addr.parse().ok()?;
    if bits.is_empty()
        || !bits.bytes().all(|b| b.is_ascii_digit())
        || (bits.len() > 1 && bits.starts_with('0'))
    {
        return None;
    }
    if let IpAddr::V6(v6) = addr
        && v6.to_ipv4_mapped().is_some()
    {
        return None;
    }
    let bits: u8 = bits.parse().ok()?;
    ipnet::IpNet::new(addr, bits).ok().map(|n| n.trunc())
}

/// The message of the egress rule's CEL rule (experimental channel).
pub const NAMED_PORT_MESSAGE: &str = "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames";

/// The CEL rule of an egress rule (experimental channel):
/// `!(self.to.exists(peer, has(peer.networks) || has(peer.nodes) || has(peer.domainNames))
/// && has(self.protocols) && self.protocols.exists(protocol, has(protocol.destinationNamedPort)))`.
pub fn no_named_port_with_address_peers(rule: &EgressRule, field: &str) -> Result {
    let address_peer = rule
        .to
        .iter()
        .any(|p| p.networks.is_some() || p.nodes.is_some() || p.domain_names.is_some());
    let named = rule
        .protocols
        .iter()
        .flatten()
        .any(|p| p.destination_named_port.is_some());
    if address_peer && named {
        Err(invalid(field, NAMED_PORT_MESSAGE))
    } else {
        Ok(())
    }
}

/// Every check of the CRD (schema limits and CEL rules) on one object.
pub fn validate(c: &ClusterNetworkPolicy) -> Result {
    if c.api_version != super::API_VERSION {
        return Err(invalid(
            "apiVersion",
            format!("must be {}", super::API_VERSION),
        ));
    }
    if c.kind != super::KIND {
        return Err(invalid("kind", format!("must be {}", super::KIND)));
    }
    if c.name().is_empty() {
        return Err(invalid("metadata.name", "Required value"));
    }
    let s = &c.spec;
    if !(0..=1000).contains(&s.priority) {
        return Err(invalid("spec.priority", "must be between 0 and 1000"));
    }
    match (&s.subject.namespaces, &s.subject.pods) {
        (Some(n), None) => selector(n, "spec.subject.namespaces")?,
        (None, Some(p)) => namespaced_pod(p, "spec.subject.pods")?,
        _ => {
            return Err(invalid(
                "spec.subject",
                "exactly one of namespaces or pods must be set",
            ));
        }
    }
    count(s.ingress.len(), 0, "spec.ingress")?;
    count(s.egress.len(), 0, "spec.egress")?;
    for (i, r) in s.ingress.iter().enumerate() {
        let at = format!("spec.ingress[{i}]");
        rule_name(r.name.as_deref(), &at)?;
        count(r.from.len(), 1, &format!("{at}.from"))?;
        for (j, p) in r.from.iter().enumerate() {
            ingress_peer(p, &format!("{at}.from[{j}]"))?;
        }
        protocols(r.protocols.as_deref(), &at)?;
    }
    for (i, r) in s.egress.iter().enumerate() {
        let at = format!("spec.egress[{i}]");
        rule_name(r.name.as_deref(), &at)?;
        count(r.to.len(), 1, &format!("{at}.to"))?;
        for (j, p) in r.to.iter().enumerate() {
            egress_peer(p, &format!("{at}.to[{j}]"))?;
        }
        protocols(r.protocols.as_deref(), &at)?;
        no_named_port_with_address_peers(r, &at)?;
    }
    Ok(())
}

/// Between `min` and 25 items, the CRD's `minItems`/`maxItems`.
fn count(n: usize, min: usize, field: &str) -> Result {
    if n < min {
        Err(invalid(field, format!("must have at least {min} item(s)")))
    } else if n > 25 {
        Err(invalid(field, "must have at most 25 items"))
    } else {
        Ok(())
    }
}

fn rule_name(name: Option<&str>, at: &str) -> Result {
    match name {
        Some(n) if n.chars().count() > 100 => Err(invalid(
            &format!("{at}.name"),
            "may not be longer than 100 characters",
        )),
        _ => Ok(()),
    }
}

fn selector(s: &K8sSelector, field: &str) -> Result {
    LabelSelector::parse(s, field)
        .map(drop)
        .map_err(|m| invalid(field, m))
}

fn namespaced_pod(p: &NamespacedPod, field: &str) -> Result {
    if let Some(n) = &p.namespace_selector {
        selector(n, &format!("{field}.namespaceSelector"))?;
    }
    selector(&p.pod_selector, &format!("{field}.podSelector"))
}

fn one_field(set: usize, field: &str, names: &str) -> Result {
    if set == 1 {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("exactly one of {names} must be set"),
        ))
    }
}

fn ingress_peer(p: &IngressPeer, at: &str) -> Result {
    one_field(
        usize::from(p.namespaces.is_some()) + usize::from(p.pods.is_some()),
        at,
        "namespaces or pods",
    )?;
    if let Some(n) = &p.namespaces {
        selector(n, &format!("{at}.namespaces"))?;
    }
    if let Some(pods) = &p.pods {
        namespaced_pod(pods, &format!("{at}.pods"))?;
    }
    Ok(())
}

fn egress_peer(p: &EgressPeer, at: &str) -> Result {
    one_field(
        [
            p.namespaces.is_some(),
            p.pods.is_some(),
            p.networks.is_some(),
            p.nodes.is_some(),
            p.domain_names.is_some(),
        ]
        .into_iter()
        .filter(|b| *b)
        .count(),
        at,
        "namespaces, pods, networks, nodes or domainNames",
    )?;
    if let Some(n) = &p.namespaces {
        selector(n, &format!("{at}.namespaces"))?;
    }
    if let Some(pods) = &p.pods {
        namespaced_pod(pods, &format!("{at}.pods"))?;
    }
    if let Some(n) = &p.nodes {
        selector(n, &format!("{at}.nodes"))?;
    }
    if let Some(nets) = &p.networks {
        let field = format!("{at}.networks");
        count(nets.len(), 1, &field)?;
        for (k, n) in nets.iter().enumerate() {
            let field = format!("{field}[{k}]");
            if n.len() > 43 {
                return Err(invalid(&field, "may not be longer than 43 characters"));
            }
            is_cidr(n, &field)?;
        }
        unique(nets, &field)?;
    }
    if let Some(names) = &p.domain_names {
        let field = format!("{at}.domainNames");
        count(names.len(), 1, &field)?;
        for (k, n) in names.iter().enumerate() {
            if !is_domain_name(n) {
                return Err(invalid(
                    &format!("{field}[{k}]"),
                    "must be a domain name, optionally starting with \"*.\"",
                ));
            }
        }
        unique(names, &field)?;
    }
    Ok(())
}

/// `x-kubernetes-list-type: set`: no duplicates.
fn unique(items: &[String], field: &str) -> Result {
    let mut seen = std::collections::BTreeSet::new();
    match items.iter().position(|i| !seen.insert(i)) {
        Some(k) => Err(invalid(&format!("{field}[{k}]"), "Duplicate value")),
        None => Ok(()),
    }
}

/// The CRD's pattern for domain names:
/// `^(\*\.)?([a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$`
/// (its `A-z` class also admits `[\]^_` and the backtick as a label's first character).
pub fn is_domain_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    let s = s.strip_suffix('.').unwrap_or(s);
    let labels: Vec<&str> = s.split('.').collect();
    labels.len() >= 2 && labels.iter().all(|l| is_label(l))
}

fn is_label(l: &str) -> bool {
    let b = l.as_bytes();
    let first = |c: u8| (b'A'..=b'z').contains(&c) || c.is_ascii_digit();
    let last = |c: u8| c.is_ascii_alphanumeric();
    let mid = |c: u8| c.is_ascii_alphanumeric() || c == b'-' || c == b'_';
    match b {
        [] => false,
        [c] => first(*c),
        [f, m @ .., l] => first(*f) && m.iter().all(|c| mid(*c)) && last(*l),
    }
}

fn protocols(list: Option<&[ProtocolPort]>, at: &str) -> Result {
    let Some(list) = list else { return Ok(()) };
    let field = format!("{at}.protocols");
    count(list.len(), 1, &field)?;
    for (i, p) in list.iter().enumerate() {
        let at = format!("{field}[{i}]");
        one_field(
            [
                p.tcp.is_some(),
                p.udp.is_some(),
                p.sctp.is_some(),
                p.destination_named_port.is_some(),
            ]
            .into_iter()
            .filter(|b| *b)
            .count(),
            &at,
            "tcp, udp, sctp or destinationNamedPort",
        )?;
        for (name, ports) in [("tcp", &p.tcp), ("udp", &p.udp), ("sctp", &p.sctp)] {
            let Some(ports) = ports else { continue };
            let at = format!("{at}.{name}");
            let Some(port) = &ports.destination_port else {
                return Err(invalid(&at, "must have at least 1 property"));
            };
            port_of(port, &format!("{at}.destinationPort"))?;
        }
    }
    Ok(())
}

fn port_of(p: &Port, at: &str) -> Result {
    let in_range = |n: i32, f: &str| {
        if (1..=65535).contains(&n) {
            Ok(())
        } else {
            Err(invalid(f, "must be between 1 and 65535"))
        }
    };
    match (p.number, &p.range) {
        (Some(n), None) => in_range(n, &format!("{at}.number")),
        (None, Some(r)) => {
            let f = format!("{at}.range");
            in_range(r.start, &format!("{f}.start"))?;
            in_range(r.end, &format!("{f}.end"))?;
            start_before_end(r, &f)
        }
        _ => Err(invalid(at, "exactly one of number or range must be set")),
    }
}
