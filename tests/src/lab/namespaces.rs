//! The lab's network namespaces (node, external hosts, one per pod) and how they are wired:
//! veth pairs, addresses and routes.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use super::addresses::{
    EXTERNAL_CIDR_V4, EXTERNAL_CIDR_V6, LAB_PREFIX, NODE_EXT_IPV4, NODE_EXT_IPV6, NODE_IPV4,
    NODE_IPV6,
};
use super::plan::Plan;
use super::{Lab, NetNs};
use crate::error::Result;
use crate::sys;

/// The namespaces of a lab being built.
pub(super) struct Namespaces {
    /// The node: the router of the lab.
    pub(super) node: NetNs,
    /// The external hosts.
    pub(super) ext: NetNs,
    /// One per planned pod, in plan order; `None` for `hostNetwork` pods.
    pub(super) pods: Vec<Option<NetNs>>,
}

impl Lab {
    /// Creates the node, external and pod namespaces, with IPv6 duplicate address detection off
    /// everywhere and forwarding on in the node.
    pub(super) fn create_namespaces(&mut self, plan: &Plan) -> Result<Namespaces> {
        let id = self.id.clone();
        let node = self.add_netns(&format!("{LAB_PREFIX}{id}-node"))?;
        let ext = self.add_netns(&format!("{LAB_PREFIX}{id}-ext"))?;
        let no_dad = [
            ("net.ipv6.conf.all.accept_dad", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ];
        sys::set_net_sysctls(
            &node.fd,
            &node.name,
            &[
                no_dad[0],
                no_dad[1],
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
            ],
        )?;
        sys::set_net_sysctls(&ext.fd, &ext.name, &no_dad)?;
        let mut pod_ns: Vec<Option<NetNs>> = Vec::new();
        for (i, p) in plan.pods.iter().enumerate() {
            if p.spec.host_network {
                pod_ns.push(None);
                continue;
            }
            let ns = self.add_netns(&format!("{LAB_PREFIX}{id}-p{i}"))?;
            sys::set_net_sysctls(&ns.fd, &ns.name, &no_dad)?;
            pod_ns.push(Some(ns));
        }
        Ok(Namespaces {
            node,
            ext,
            pods: pod_ns,
        })
    }

    /// Creates a named network namespace; the lab deletes it at Drop.
    fn add_netns(&mut self, name: &str) -> Result<NetNs> {
        sys::run("ip", &["netns", "add", name], None, None)?;
        self.netns_created.push(name.to_owned());
        let fd = Arc::new(sys::open_ro(&sys::netns_path(name))?);
        Ok(NetNs {
            name: name.to_owned(),
            fd,
        })
    }
}

impl Namespaces {
    /// Links and addresses. The node routes every pod by a /32 (/128) on its veth, so pod to
    /// pod traffic is routed through the node (and its conntrack sees both directions of
    /// DNATed flows, unlike on a bridge).
    pub(super) fn wire(&self, plan: &Plan) -> Result<()> {
        let (node, ext, pod_ns) = (&self.node, &self.ext, &self.pods);
        let mut nb = String::new();
        let _ = writeln!(nb, "link set lo up");
        let _ = writeln!(nb, "addr add {NODE_IPV4}/32 dev lo");
        let _ = writeln!(nb, "addr add {NODE_IPV6}/128 dev lo");
        for (i, (p, ns)) in plan.pods.iter().zip(pod_ns).enumerate() {
            let Some(ns) = ns else { continue };
            let v = format!("vp{i}");
            let _ = writeln!(
                nb,
                "link add {v} type veth peer name eth0 netns {}",
                ns.name
            );
            let _ = writeln!(nb, "link set {v} up");
            let _ = writeln!(nb, "addr add {NODE_IPV4}/32 dev {v}");
            let _ = writeln!(nb, "addr add {NODE_IPV6}/128 dev {v} nodad");
            let _ = writeln!(nb, "route add {}/32 dev {v}", p.ipv4);
            let _ = writeln!(nb, "route add {}/128 dev {v}", p.ipv6);
        }
        let _ = writeln!(
            nb,
            "link add vext type veth peer name eth0 netns {}",
            ext.name
        );
        let _ = writeln!(nb, "link set vext up");
        let _ = writeln!(nb, "addr add {NODE_EXT_IPV4}/32 dev vext");
        let _ = writeln!(nb, "addr add {NODE_EXT_IPV6}/128 dev vext nodad");
        let _ = writeln!(nb, "route add {EXTERNAL_CIDR_V4} dev vext");
        let _ = writeln!(nb, "route add {EXTERNAL_CIDR_V6} dev vext");
        sys::run("ip", &["-batch", "-"], Some(&node.fd), Some(&nb))?;

        for (p, ns) in plan.pods.iter().zip(pod_ns) {
            let Some(ns) = ns else { continue };
            let b = format!(
                "link set lo up\nlink set eth0 up\naddr add {v4}/32 dev eth0\n\
                 addr add {v6}/128 dev eth0 nodad\n\
                 route add 0.0.0.0/0 via {NODE_IPV4} dev eth0 onlink\n\
                 route add ::/0 via {NODE_IPV6} dev eth0 onlink\n",
                v4 = p.ipv4,
                v6 = p.ipv6
            );
            sys::run("ip", &["-batch", "-"], Some(&ns.fd), Some(&b))?;
        }
        let mut eb = String::from("link set lo up\nlink set eth0 up\n");
        for (ip, _) in &plan.externals {
            match ip {
                IpAddr::V4(v4) => {
                    let _ = writeln!(eb, "addr add {v4}/32 dev eth0");
                }
                IpAddr::V6(v6) => {
                    let _ = writeln!(eb, "addr add {v6}/128 dev eth0 nodad");
                }
            }
        }
        let _ = writeln!(
            eb,
            "route add 0.0.0.0/0 via {NODE_EXT_IPV4} dev eth0 onlink"
        );
        let _ = writeln!(eb, "route add ::/0 via {NODE_EXT_IPV6} dev eth0 onlink");
        sys::run("ip", &["-batch", "-"], Some(&ext.fd), Some(&eb))?;
        Ok(())
    }
}
