//! The lab's address plan: every address comes from the documentation ranges, and each kind of
//! object (pod, Service, external host) from its own part of them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::{Error, Result};

/// Prefix of every lab's netns names and cgroup directory: `leash-lab-<pid>-<n>`.
pub const LAB_PREFIX: &str = "leash-lab-";

/// The node-side gateway of every pod: 198.51.100.1 (also the node's InternalIP).
pub const NODE_IPV4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The node-side IPv6 gateway of every pod.
pub const NODE_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The node's address towards the external namespace.
pub const NODE_EXT_IPV4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The node's IPv6 address towards the external namespace.
pub const NODE_EXT_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
/// The kube-dns ClusterIP.
pub const DNS_VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 138);
/// The kube-dns IPv6 ClusterIP.
pub const DNS_VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x8a);
/// The `default/kubernetes` ClusterIP (with [`LabBuilder::api_server`](super::LabBuilder::api_server)).
pub const API_VIP_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 129);
/// The `default/kubernetes` IPv6 ClusterIP.
pub const API_VIP_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 3, 0, 0, 0, 0, 0x81);
/// The port the lab's "API server" listens on in the node namespace.
pub const API_SERVER_PORT: u16 = 6443;
/// The pod IPv4 subnet.
pub const POD_CIDR_V4: &str = "198.51.100.0/25";
/// The pod IPv6 subnet.
pub const POD_CIDR_V6: &str = "2001:db8:1::/64";
/// The Service IPv4 range.
pub const SERVICE_CIDR_V4: &str = "198.51.100.128/26";
/// The Service IPv6 range.
pub const SERVICE_CIDR_V6: &str = "2001:db8:3::/64";
/// The external hosts' IPv4 range.
pub const EXTERNAL_CIDR_V4: &str = "203.0.113.0/24";
/// The external hosts' IPv6 range.
pub const EXTERNAL_CIDR_V6: &str = "2001:db8:2::/64";

pub(super) fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

pub(super) fn in_v6_64(ip: Ipv6Addr, third: u16) -> bool {
    let s = ip.segments();
    s[0] == 0x2001 && s[1] == 0xdb8 && s[2] == third && s[3] == 0
}

/// Whether `ip` is one the lab may use at all: 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32.
pub fn is_lab_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => in_v4(v4, [198, 51, 100, 0], 24) || in_v4(v4, [203, 0, 113, 0], 24),
        IpAddr::V6(v6) => v6.segments()[0] == 0x2001 && v6.segments()[1] == 0xdb8,
    }
}

pub(super) fn parse_ip(s: &str) -> Result<IpAddr> {
    s.trim()
        .parse()
        .map_err(|_| Error::BadAddress(s.to_owned()))
}

pub(super) fn check_lab_address(ip: IpAddr) -> Result<()> {
    if is_lab_address(ip) {
        Ok(())
    } else {
        Err(Error::AddressNotAllowed {
            addr: ip,
            allowed: "198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32",
        })
    }
}

pub(super) fn pod_v4(s: &str) -> Result<Ipv4Addr> {
    match parse_ip(s)? {
        IpAddr::V4(v4)
            if in_v4(v4, [198, 51, 100, 0], 25) && v4.octets()[3] >= 2 && v4.octets()[3] <= 126 =>
        {
            Ok(v4)
        }
        ip => Err(Error::AddressNotAllowed {
            addr: ip,
            allowed: "198.51.100.2-126 for pod IPv4 addresses",
        }),
    }
}

pub(super) fn pod_v6(s: &str) -> Result<Ipv6Addr> {
    match parse_ip(s)? {
        IpAddr::V6(v6) if in_v6_64(v6, 1) && v6 != NODE_IPV6 && !v6.is_unspecified() => Ok(v6),
        ip => Err(Error::AddressNotAllowed {
            addr: ip,
            allowed: "2001:db8:1::/64 (except ::1) for pod IPv6 addresses",
        }),
    }
}

pub(super) fn svc_v4(s: &str) -> Result<Ipv4Addr> {
    match parse_ip(s)? {
        IpAddr::V4(v4) if in_v4(v4, [198, 51, 100, 128], 26) && v4.octets()[3] != 128 => Ok(v4),
        ip => Err(Error::AddressNotAllowed {
            addr: ip,
            allowed: "198.51.100.129-190 for ClusterIPs",
        }),
    }
}

pub(super) fn svc_v6(s: &str) -> Result<Ipv6Addr> {
    match parse_ip(s)? {
        IpAddr::V6(v6) if in_v6_64(v6, 3) => Ok(v6),
        ip => Err(Error::AddressNotAllowed {
            addr: ip,
            allowed: "2001:db8:3::/64 for IPv6 ClusterIPs",
        }),
    }
}
