//! The plan of a lab: names, ids and addresses, decided and checked before anything is created.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::addresses::{
    DNS_VIP_V4, DNS_VIP_V6, NODE_EXT_IPV4, NODE_EXT_IPV6, NODE_IPV4, NODE_IPV6, check_lab_address,
    in_v4, in_v6_64, parse_ip, pod_v4, pod_v6, svc_v4, svc_v6,
};
use super::builder::LabBuilder;
use super::service::Service;
use crate::error::{Error, Result};
use crate::spec::{PodSpec, Port, ServiceSpec};

/// Addresses and names decided before anything is created.
pub(super) struct PlannedPod {
    pub(super) spec: PodSpec,
    pub(super) uid: String,
    pub(super) container_id: String,
    pub(super) ipv4: Ipv4Addr,
    pub(super) ipv6: Ipv6Addr,
}

/// Everything decided for a lab before anything is created.
pub(super) struct Plan {
    pub(super) namespaces: BTreeSet<String>,
    pub(super) pods: Vec<PlannedPod>,
    pub(super) services: Vec<Service>,
    pub(super) externals: Vec<(IpAddr, Vec<Port>)>,
}

fn hash64(parts: &[&str]) -> u64 {
    let mut h = DefaultHasher::new();
    parts.hash(&mut h);
    h.finish()
}

/// A UUID-shaped (version 4 layout) id derived from `parts`.
pub(crate) fn uid_for(parts: &[&str]) -> String {
    let a = hash64(&[parts, &["a"]].concat());
    let b = hash64(&[parts, &["b"]].concat());
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

fn container_id_for(parts: &[&str]) -> String {
    (0..4).fold(String::new(), |mut s, i| {
        let _ = write!(s, "{:016x}", hash64(&[parts, &[&i.to_string()]].concat()));
        s
    })
}

impl Plan {
    pub(super) fn new(b: &LabBuilder, id: &str) -> Result<Self> {
        let mut namespaces = b.namespaces.clone();
        let mut pods = Vec::new();
        let mut used4 = BTreeSet::new();
        let mut used6 = BTreeSet::new();
        let mut keys = BTreeSet::new();
        // Explicit addresses first, so automatic ones avoid them.
        for p in &b.pods {
            if let Some(s) = &p.ipv4 {
                used4.insert(pod_v4(s)?);
            }
            if let Some(s) = &p.ipv6 {
                used6.insert(pod_v6(s)?);
            }
        }
        let mut next4 = 2u8;
        let mut next6 = 2u16;
        for p in &b.pods {
            if !keys.insert(p.key()) {
                return Err(Error::Config(format!("duplicate pod {}", p.key())));
            }
            namespaces.insert(p.namespace.clone());
            let (ipv4, ipv6) = if p.host_network {
                (NODE_IPV4, NODE_IPV6)
            } else {
                let v4 = match &p.ipv4 {
                    Some(s) => pod_v4(s)?,
                    None => loop {
                        if next4 > 126 {
                            return Err(Error::Config(
                                "too many pods: the pod subnet 198.51.100.0/25 holds 125".into(),
                            ));
                        }
                        let c = Ipv4Addr::new(198, 51, 100, next4);
                        next4 += 1;
                        if used4.insert(c) {
                            break c;
                        }
                    },
                };
                let v6 = match &p.ipv6 {
                    Some(s) => pod_v6(s)?,
                    None => loop {
                        let c = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, next6);
                        next6 += 1;
                        if used6.insert(c) {
                            break c;
                        }
                    },
                };
                (v4, v6)
            };
            let key = p.key();
            pods.push(PlannedPod {
                uid: p.uid.clone().unwrap_or_else(|| uid_for(&["pod", id, &key])),
                container_id: container_id_for(&["container", id, &key]),
                spec: p.clone(),
                ipv4,
                ipv6,
            });
        }
        let mut services = Vec::new();
        let mut skeys = BTreeSet::new();
        // Explicit VIPs first, so automatic ones avoid them; the DNS VIP is always reserved.
        let mut vips4 = BTreeSet::from([DNS_VIP_V4]);
        let mut vips6 = BTreeSet::from([DNS_VIP_V6]);
        let mut explicit4 = BTreeSet::new();
        let mut explicit6 = BTreeSet::new();
        for s in &b.services {
            if let Some(ip) = s.cluster_ip.as_deref().map(svc_v4).transpose()? {
                let reserved = ip == DNS_VIP_V4 && !is_dns_service(b, s);
                if reserved || !explicit4.insert(ip) {
                    return Err(Error::Config(format!("ClusterIP {ip} used twice")));
                }
                vips4.insert(ip);
            }
            if let Some(ip) = s.cluster_ip_v6.as_deref().map(svc_v6).transpose()? {
                let reserved = ip == DNS_VIP_V6 && !is_dns_service(b, s);
                if reserved || !explicit6.insert(ip) {
                    return Err(Error::Config(format!("ClusterIP {ip} used twice")));
                }
                vips6.insert(ip);
            }
        }
        let mut next_vip = 129u8;
        for s in &b.services {
            if !skeys.insert(s.key()) {
                return Err(Error::Config(format!("duplicate service {}", s.key())));
            }
            namespaces.insert(s.namespace.clone());
            let v4 = match s.cluster_ip.as_deref().map(svc_v4).transpose()? {
                Some(ip) => ip,
                None => loop {
                    if next_vip > 190 {
                        return Err(Error::Config(
                            "too many services for 198.51.100.128/26".into(),
                        ));
                    }
                    let c = Ipv4Addr::new(198, 51, 100, next_vip);
                    next_vip += 1;
                    if vips4.insert(c) {
                        break c;
                    }
                },
            };
            let v6 = match s.cluster_ip_v6.as_deref().map(svc_v6).transpose()? {
                Some(ip) => ip,
                None => {
                    // Mirror the v4 host part (2001:db8:3::81 for .129), or the next free one.
                    let mut n = u16::from(v4.octets()[3]);
                    loop {
                        let c = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, n);
                        n = n.wrapping_add(1);
                        if vips6.insert(c) {
                            break c;
                        }
                    }
                }
            };
            let mut manual_endpoints = Vec::new();
            for e in &s.endpoints {
                let ip = parse_ip(e)?;
                check_lab_address(ip)?;
                manual_endpoints.push(ip);
            }
            let backends = if s.selector.is_empty() {
                Vec::new()
            } else {
                pods.iter()
                    .enumerate()
                    .filter(|(_, p)| {
                        p.spec.namespace == s.namespace
                            && s.selector
                                .iter()
                                .all(|(k, v)| p.spec.labels.get(k) == Some(v))
                    })
                    .map(|(i, _)| i)
                    .collect()
            };
            services.push(Service {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                cluster_ip: v4,
                cluster_ip_v6: v6,
                ports: s.ports.clone(),
                selector: s.selector.clone(),
                labels: s.labels.clone(),
                uid: uid_for(&["service", id, &s.key()]),
                backends,
                manual_endpoints,
            });
        }
        let mut externals: Vec<(IpAddr, Vec<Port>)> = Vec::new();
        for (s, ports) in &b.externals {
            let ip = parse_ip(s)?;
            let ok = match ip {
                IpAddr::V4(v4) => in_v4(v4, [203, 0, 113, 0], 24) && v4 != NODE_EXT_IPV4,
                IpAddr::V6(v6) => in_v6_64(v6, 2) && v6 != NODE_EXT_IPV6,
            };
            if !ok {
                return Err(Error::AddressNotAllowed {
                    addr: ip,
                    allowed: "203.0.113.2-254 and 2001:db8:2::/64 (except ::1) for external hosts",
                });
            }
            if let Some(e) = externals.iter_mut().find(|(e, _)| *e == ip) {
                e.1.extend(ports.iter().copied());
            } else {
                externals.push((ip, ports.clone()));
            }
        }
        Ok(Self {
            namespaces,
            pods,
            services,
            externals,
        })
    }
}

/// Whether `s` is the Service the builder added for its DNS server (which owns the DNS VIP).
fn is_dns_service(b: &LabBuilder, s: &ServiceSpec) -> bool {
    b.dns.is_some()
        && matches!(
            s.key().as_str(),
            "kube-system/kube-dns" | "openshift-dns/dns-default"
        )
}
