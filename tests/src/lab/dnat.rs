//! Services as nftables DNAT in the node namespace.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::NetNs;
use super::pod::Pod;
use super::service::Service;
use crate::error::Result;
use crate::servers::Proto;
use crate::spec::{ServicePort, TargetPort};
use crate::sys;

/// Loads the DNAT rules of `services` into the node namespace.
pub(super) fn install(node: &NetNs, pods: &[Pod], services: &[Service]) -> Result<()> {
    let rules = nft_ruleset(pods, services);
    sys::run("nft", &["-f", "-"], Some(&node.fd), Some(&rules))?;
    Ok(())
}

/// Resolves a Service port's target on one pod: a number, or the named container port.
pub(crate) fn resolve_target(pod: &Pod, sp: &ServicePort) -> Option<u16> {
    match &sp.target {
        TargetPort::Number(n) => Some(*n),
        TargetPort::Named(name) => pod
            .ports
            .iter()
            .find(|cp| cp.name.as_deref() == Some(name) && cp.proto == sp.proto)
            .map(|cp| cp.port),
    }
}

/// The nftables ruleset: one `inet` table with a prerouting DNAT per Service port and family,
/// spreading over backends round-robin with `numgen`.
fn nft_ruleset(pods: &[Pod], services: &[Service]) -> String {
    let mut pre = String::new();
    let mut chains = String::new();
    for (si, s) in services.iter().enumerate() {
        for (pi, sp) in s.ports.iter().enumerate() {
            let l4 = match sp.proto {
                Proto::Tcp => "tcp",
                Proto::Udp => "udp",
            };
            for v6 in [false, true] {
                let mut eps: Vec<(IpAddr, u16)> = s
                    .backends
                    .iter()
                    .filter_map(|&b| {
                        let pod = &pods[b];
                        let ip = if v6 {
                            IpAddr::V6(pod.ipv6)
                        } else {
                            IpAddr::V4(pod.ipv4)
                        };
                        resolve_target(pod, sp).map(|port| (ip, port))
                    })
                    .collect();
                if let TargetPort::Number(port) = sp.target {
                    eps.extend(
                        s.manual_endpoints
                            .iter()
                            .filter(|ip| ip.is_ipv6() == v6)
                            .map(|ip| (*ip, port)),
                    );
                }
                if eps.is_empty() {
                    continue;
                }
                let (fam, vip) = if v6 {
                    ("ip6", IpAddr::V6(s.cluster_ip_v6))
                } else {
                    ("ip", IpAddr::V4(s.cluster_ip))
                };
                let chain = format!("svc{si}_p{pi}_{fam}");
                let _ = writeln!(
                    pre,
                    "    {fam} daddr {vip} {l4} dport {} jump {chain}",
                    sp.port
                );
                let mut vmap = Vec::new();
                for (ei, (ip, port)) in eps.iter().enumerate() {
                    let ep = format!("{chain}_e{ei}");
                    let to = if v6 {
                        format!("[{ip}]:{port}")
                    } else {
                        format!("{ip}:{port}")
                    };
                    let _ = writeln!(
                        chains,
                        "  chain {ep} {{\n    meta l4proto {l4} dnat {fam} to {to}\n  }}"
                    );
                    vmap.push(format!("{ei} : jump {ep}"));
                }
                let _ = writeln!(
                    chains,
                    "  chain {chain} {{\n    numgen inc mod {} vmap {{ {} }}\n  }}",
                    eps.len(),
                    vmap.join(", ")
                );
            }
        }
    }
    format!(
        "table inet leash_lab {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{pre}  }}\n{chains}}}\n"
    )
}
