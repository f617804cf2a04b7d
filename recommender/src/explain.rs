//! `leash explain`: why a connection from a pod is allowed or denied, rule by rule.
//!
//! The explanation names, for egress at the source and ingress at the destination, the policy
//! and rule (index, matching peer and port) that allows the connection, or the policies that
//! isolate the pod without allowing it. Through a Service, it explains each backend.

use std::{
    collections::BTreeSet,
    fmt::{self, Write as _},
    net::IpAddr,
};

use leash_records::Protocol;

use crate::eval::{
    ClusterView, DirectionResult, Evaluation, Flow, Half, NearMiss, PolicyId, PolicyRule,
    PolicySet, Reason, RuleMatch, TargetResult, Verdict, evaluate_with_names,
};

/// Errors of `explain`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `--from` is not `NAMESPACE/POD`.
    #[error("invalid --from {input:?}: {message} (expected NAMESPACE/POD)")]
    BadPod {
        /// The argument as given.
        input: String,
        /// What is wrong.
        message: String,
    },
    /// `--to` is not `IP:PORT/PROTO`.
    #[error(
        "invalid --to {input:?}: {message} (expected IP:PORT/PROTO, e.g. 10.96.0.10:53/UDP or [2001:db8::1]:443/TCP)"
    )]
    BadTarget {
        /// The argument as given.
        input: String,
        /// What is wrong.
        message: String,
    },
    /// The source pod is not in the cluster snapshot.
    #[error("pod {0} not found in the cluster snapshot")]
    UnknownPod(PolicyId),
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Parses `NAMESPACE/POD`.
pub fn parse_pod(s: &str) -> Result<PolicyId> {
    let bad = |message: &str| Error::BadPod {
        input: s.to_string(),
        message: message.to_string(),
    };
    let (ns, name) = s.split_once('/').ok_or_else(|| bad("missing '/'"))?;
    if ns.is_empty() || name.is_empty() {
        return Err(bad("empty namespace or pod name"));
    }
    if name.contains('/') {
        return Err(bad("more than one '/'"));
    }
    Ok(PolicyId {
        namespace: ns.to_string(),
        name: name.to_string(),
    })
}

/// Parses `IP:PORT/PROTO` (`[IPv6]:PORT/PROTO` for IPv6). The protocol is case-insensitive
/// and defaults to TCP when `/PROTO` is omitted, as in NetworkPolicy.
pub fn parse_target(s: &str) -> Result<Flow> {
    let bad = |message: String| Error::BadTarget {
        input: s.to_string(),
        message,
    };
    let (hostport, protocol) = match s.rsplit_once('/') {
        Some((hp, proto)) => (hp, proto.parse::<Protocol>().map_err(bad)?),
        None => (s, Protocol::Tcp),
    };
    let (ip, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (ip, port) = rest
            .split_once("]:")
            .ok_or_else(|| bad("an IPv6 address must be written [ADDRESS]:PORT".into()))?;
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| bad(format!("{ip:?} is not an IP address")))?;
        if ip.is_ipv4() {
            return Err(bad("brackets are only for IPv6 addresses".into()));
        }
        (ip, port)
    } else {
        let (ip, port) = hostport
            .rsplit_once(':')
            .ok_or_else(|| bad("missing ':PORT'".into()))?;
        if ip.contains(':') {
            return Err(bad(
                "write an IPv6 address in brackets: [ADDRESS]:PORT".into()
            ));
        }
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| bad(format!("{ip:?} is not an IP address")))?;
        (ip, port)
    };
    let dst_port = match port.parse::<u16>() {
        Ok(p) if p != 0 && !port.starts_with('+') => p,
        _ => return Err(bad(format!("{port:?} is not a port number (1-65535)"))),
    };
    Ok(Flow {
        protocol,
        dst: ip,
        dst_port,
    })
}

/// A rendered explanation, with the evaluation it is built from.
#[derive(Debug, Clone)]
pub struct Explanation {
    /// The source pod.
    pub source: PolicyId,
    /// The connection as the pod made it.
    pub flow: Flow,
    /// The evaluation.
    pub evaluation: Evaluation,
    text: String,
}

impl Explanation {
    /// The final verdict.
    pub fn verdict(&self) -> Verdict {
        self.evaluation.verdict
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Explains a connection from the pod `from` to `flow`.
pub fn explain<V: ClusterView + ?Sized>(
    view: &V,
    policies: &PolicySet,
    from: &PolicyId,
    flow: &Flow,
) -> Result<Explanation> {
    explain_with(view, policies, from, flow, |_| Vec::new())
}

/// [`explain`], with `overlay` changing the evaluation before it is rendered (the
/// CiliumNetworkPolicies of `crate::cilium::mixed`); the lines it returns are shown after
/// the evaluation.
pub fn explain_with<V: ClusterView + ?Sized>(
    view: &V,
    policies: &PolicySet,
    from: &PolicyId,
    flow: &Flow,
    overlay: impl FnOnce(&mut Evaluation) -> Vec<String>,
) -> Result<Explanation> {
    explain_with_names(view, policies, from, flow, &BTreeSet::new(), overlay)
}

/// [`explain_with`], with the DNS names the destination address was resolved from (`--name`):
/// ClusterNetworkPolicies' `domainNames` peers match them.
pub fn explain_with_names<V: ClusterView + ?Sized>(
    view: &V,
    policies: &PolicySet,
    from: &PolicyId,
    flow: &Flow,
    names: &BTreeSet<String>,
    overlay: impl FnOnce(&mut Evaluation) -> Vec<String>,
) -> Result<Explanation> {
    let pod = view
        .pod(&from.namespace, &from.name)
        .ok_or_else(|| Error::UnknownPod(from.clone()))?;
    let mut evaluation = evaluate_with_names(view, policies, pod, flow, names);
    let notes = overlay(&mut evaluation);
    let mut text = render(policies, from, flow, &evaluation);
    for n in notes {
        text.push_str("  ");
        text.push_str(&n);
        text.push('\n');
    }
    Ok(Explanation {
        source: from.clone(),
        flow: *flow,
        evaluation,
        text,
    })
}

fn addr(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

fn render(policies: &PolicySet, from: &PolicyId, flow: &Flow, ev: &Evaluation) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "{from} -> {}/{}: {}",
        addr(flow.dst, flow.dst_port),
        flow.protocol,
        ev.verdict.as_str().to_uppercase()
    );
    match (&ev.service, &ev.problem) {
        (_, Some(problem)) => {
            let _ = writeln!(out, "  denied: {problem}");
            return out;
        }
        (Some(svc), None) => {
            let _ = writeln!(
                out,
                "  {} is Service {svc}: evaluated after DNAT against each of its {} ready backend(s)",
                addr(flow.dst, flow.dst_port),
                ev.targets.len()
            );
        }
        (None, None) => {}
    }
    let indent = if ev.service.is_some() { "    " } else { "  " };
    for t in &ev.targets {
        if ev.service.is_some() {
            let _ = writeln!(
                out,
                "  backend {} ({}): {}",
                addr(t.ip, t.port),
                t.destination,
                t.verdict()
            );
        } else {
            let _ = writeln!(out, "  destination: {}", t.destination);
        }
        render_direction(
            &mut out,
            policies,
            indent,
            "egress at",
            from,
            &t.egress,
            flow.protocol,
        );
        let at = match &t.destination {
            crate::eval::Destination::Pod(id) | crate::eval::Destination::HostNetworkPod(id) => {
                id.to_string()
            }
            crate::eval::Destination::External => addr(t.ip, t.port),
        };
        render_ingress(&mut out, policies, indent, &at, t, flow.protocol);
    }
    out
}

fn render_ingress(
    out: &mut String,
    policies: &PolicySet,
    indent: &str,
    at: &str,
    t: &TargetResult,
    protocol: Protocol,
) {
    let _ = write!(out, "{indent}ingress at {at}: ");
    render_result(out, policies, indent, &t.ingress, protocol, "from");
}

fn render_direction(
    out: &mut String,
    policies: &PolicySet,
    indent: &str,
    label: &str,
    pod: &PolicyId,
    r: &DirectionResult,
    protocol: Protocol,
) {
    let _ = write!(out, "{indent}{label} {pod}: ");
    render_result(out, policies, indent, r, protocol, "to");
}

fn render_result(
    out: &mut String,
    policies: &PolicySet,
    indent: &str,
    r: &DirectionResult,
    protocol: Protocol,
    peer_word: &str,
) {
    let isolated: Vec<String> = r.isolated_by.iter().map(ToString::to_string).collect();
    match r.reason {
        Reason::RuleMatched => {
            let _ = writeln!(out, "allow");
            for m in &r.matches {
                let _ = writeln!(
                    out,
                    "{indent}  allowed by {}",
                    describe_match(policies, m, peer_word, protocol)
                );
            }
        }
        Reason::NoRuleMatched => {
            let _ = writeln!(
                out,
                "deny: isolated by {}; no rule allows it",
                isolated.join(", ")
            );
            for nm in &r.near_misses {
                let _ = writeln!(
                    out,
                    "{indent}  closest: {}",
                    describe_near_miss(policies, nm, peer_word)
                );
            }
        }
        Reason::FromOwnNode if !isolated.is_empty() => {
            let _ = writeln!(
                out,
                "allow: {} (isolated by {})",
                r.reason,
                isolated.join(", ")
            );
        }
        other => {
            let _ = writeln!(out, "{}: {other}", r.verdict);
        }
    }
    // The ClusterNetworkPolicy rules reached, in order: tier, policy, rule and action.
    for m in &r.cluster {
        let _ = writeln!(out, "{indent}  {m}");
    }
    if let Some(c) = &r.conflict {
        let _ = writeln!(out, "{indent}  warning: {c}");
    }
}

fn rule_of<'a>(policies: &'a PolicySet, m: &RuleMatch, peer_word: &str) -> Option<&'a PolicyRule> {
    let p = policies.get(&m.policy)?;
    let rules = if peer_word == "to" {
        p.egress.as_ref()?
    } else {
        p.ingress.as_ref()?
    };
    rules.get(m.rule)
}

fn describe_near_miss(policies: &PolicySet, nm: &NearMiss, peer_word: &str) -> String {
    let dir = if peer_word == "to" {
        "egress"
    } else {
        "ingress"
    };
    let mut s = format!("{} rule {dir}[{}]: ", nm.policy, nm.rule);
    let m = RuleMatch {
        policy: nm.policy.clone(),
        rule: nm.rule,
        peer: None,
        port: None,
    };
    let Some(rule) = rule_of(policies, &m, peer_word) else {
        return s;
    };
    match nm.matched {
        Half::Peer(peer) => {
            match peer.and_then(|i| rule.peers.get(i).map(|p| (i, p))) {
                Some((i, p)) => {
                    let _ = write!(s, "{peer_word}[{i}] {p} matches");
                }
                None => s.push_str("any peer matches"),
            }
            let ports: Vec<String> = rule.ports.iter().map(ToString::to_string).collect();
            let _ = write!(s, ", but no port does (ports: {})", ports.join(", "));
        }
        Half::Port(port) => {
            match port.and_then(|i| rule.ports.get(i).map(|p| (i, p))) {
                Some((i, p)) => {
                    let _ = write!(s, "ports[{i}] {p} matches");
                }
                None => s.push_str("any port matches"),
            }
            let peers: Vec<String> = rule.peers.iter().map(ToString::to_string).collect();
            let _ = write!(s, ", but no peer does ({peer_word}: {})", peers.join("; "));
        }
    }
    s
}

fn describe_match(
    policies: &PolicySet,
    m: &RuleMatch,
    peer_word: &str,
    protocol: Protocol,
) -> String {
    let dir = if peer_word == "to" {
        "egress"
    } else {
        "ingress"
    };
    let mut s = format!("{} rule {dir}[{}]", m.policy, m.rule);
    let Some(rule) = rule_of(policies, m, peer_word) else {
        return s;
    };
    match m.peer.and_then(|i| rule.peers.get(i).map(|p| (i, p))) {
        Some((i, peer)) => {
            let _ = write!(s, ": {peer_word}[{i}] {peer}");
        }
        None => {
            let _ = write!(s, ": any peer");
        }
    }
    match m.port.and_then(|i| rule.ports.get(i).map(|p| (i, p))) {
        Some((i, port)) => {
            let _ = write!(s, ", ports[{i}] {port}");
        }
        None => {
            let _ = write!(s, ", any port ({protocol} included)");
        }
    }
    s
}
