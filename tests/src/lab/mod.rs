//! Building, using and tearing down a lab, by concern:
//! - [`addresses`]: the address plan (documentation ranges only) and its checks;
//! - [`plan`]: names, ids and addresses decided before anything is created;
//! - [`builder`]: [`LabBuilder`], and the build steps in order;
//! - [`namespaces`]: network namespaces, veths, addresses and routes;
//! - [`cgroups`]: kubelet-shaped pod cgroups;
//! - [`dnat`]: Services as nftables DNAT in the node;
//! - [`pod`] and [`service`]: the running lab's objects;
//! - [`teardown`]: what Drop removes.

mod addresses;
mod builder;
mod cgroups;
mod dnat;
mod namespaces;
mod plan;
mod pod;
mod service;
mod teardown;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use addresses::{
    API_SERVER_PORT, API_VIP_V4, API_VIP_V6, DNS_VIP_V4, DNS_VIP_V6, EXTERNAL_CIDR_V4,
    EXTERNAL_CIDR_V6, LAB_PREFIX, NODE_EXT_IPV4, NODE_EXT_IPV6, NODE_IPV4, NODE_IPV6, POD_CIDR_V4,
    POD_CIDR_V6, SERVICE_CIDR_V4, SERVICE_CIDR_V6, is_lab_address,
};
pub use builder::LabBuilder;
pub(crate) use dnat::resolve_target;
pub(crate) use plan::uid_for;
pub use pod::{ClientOutput, Pod};
pub use service::{External, Service};

use leash_records::error::Chain;

use crate::dns::{DnsCounters, DnsStats, Zone};
use crate::error::{Error, Result};
use crate::servers::{Proto, ServerStats, Servers};
use crate::sys;

/// A named network namespace with an open handle.
#[derive(Debug)]
pub(crate) struct NetNs {
    pub(crate) name: String,
    pub(crate) fd: Arc<OwnedFd>,
}

/// The lab's DNS server.
struct DnsInfo {
    /// Index of its pod in the lab's pods.
    pod: usize,
    /// The zone it answers from, shared with its server threads.
    zone: Arc<Zone>,
    counters: Arc<DnsCounters>,
    port: u16,
}

/// A running lab. Dropping it stops servers, kills pod processes, and removes its cgroups and
/// network namespaces (and with them veths and nftables rules).
pub struct Lab {
    id: String,
    node_name: String,
    cgroup_mount: PathBuf,
    cgroup_root: PathBuf,
    cgroup_created: bool,
    netns_created: Vec<String>,
    node: Option<NetNs>,
    ext: Option<NetNs>,
    pub(crate) namespaces: BTreeSet<String>,
    pub(crate) pods: Vec<Pod>,
    pub(crate) services: Vec<Service>,
    externals: Vec<External>,
    servers: Servers,
    dns: Option<DnsInfo>,
    pub(crate) extra_objects: Vec<serde_json::Value>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("id", &self.id)
            .field("cgroup_root", &self.cgroup_root)
            .field("pods", &self.pods.iter().map(Pod::key).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Lab {
    /// Starts describing a lab.
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// The lab's unique id, `<pid>-<n>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The node's name (as in the snapshot's Node and pods' `spec.nodeName`).
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// The cgroup v2 mount point (e.g. `/sys/fs/cgroup/unified`).
    pub fn cgroup_mount(&self) -> &Path {
        &self.cgroup_mount
    }

    /// The lab's cgroup root, `<mount>/leash-lab-<id>`: attach the agent here.
    pub fn cgroup_root(&self) -> &Path {
        &self.cgroup_root
    }

    /// The name of the node network namespace.
    pub fn node_netns(&self) -> &str {
        self.node.as_ref().map_or("", |n| n.name.as_str())
    }

    /// The name of the external hosts' network namespace.
    pub fn external_netns(&self) -> &str {
        self.ext.as_ref().map_or("", |n| n.name.as_str())
    }

    /// Every network namespace this lab created (they vanish at Drop).
    pub fn netns_names(&self) -> &[String] {
        &self.netns_created
    }

    /// The pod `namespace/name`. Panics with a clear message if there is none (tests only name
    /// pods they created); see [`Lab::try_pod`].
    pub fn pod(&self, key: &str) -> &Pod {
        match self.try_pod(key) {
            Ok(p) => p,
            Err(e) => panic!("{}", Chain(&e)),
        }
    }

    /// The pod `namespace/name`.
    pub fn try_pod(&self, key: &str) -> Result<&Pod> {
        self.pods
            .iter()
            .find(|p| p.key() == key)
            .ok_or_else(|| Error::NotFound {
                kind: "pod",
                key: key.to_owned(),
            })
    }

    /// All pods (the DNS pod first, when configured).
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The Service `namespace/name`. Panics if there is none; see [`Lab::try_service`].
    pub fn service(&self, key: &str) -> &Service {
        match self.try_service(key) {
            Ok(s) => s,
            Err(e) => panic!("{}", Chain(&e)),
        }
    }

    /// The Service `namespace/name`.
    pub fn try_service(&self, key: &str) -> Result<&Service> {
        self.services
            .iter()
            .find(|s| s.key() == key)
            .ok_or_else(|| Error::NotFound {
                kind: "service",
                key: key.to_owned(),
            })
    }

    /// All Services.
    pub fn services(&self) -> &[Service] {
        &self.services
    }

    /// The external hosts.
    pub fn externals(&self) -> &[External] {
        &self.externals
    }

    /// The kube-dns ClusterIP (v4), when DNS is configured.
    pub fn dns_service_ip(&self) -> Option<Ipv4Addr> {
        self.dns.as_ref().map(|_| DNS_VIP_V4)
    }

    /// The DNS pod (`kube-system/coredns-lab`, or `openshift-dns/dns-default-lab`), when DNS is
    /// configured.
    pub fn dns_pod(&self) -> Option<&Pod> {
        self.dns.as_ref().map(|d| &self.pods[d.pod])
    }

    /// The port the DNS pod listens on.
    pub fn dns_port(&self) -> Option<u16> {
        self.dns.as_ref().map(|d| d.port)
    }

    /// Moves `name` to `ips` in the lab's DNS zone: from now on its A/AAAA answers are these
    /// (a CNAME of the name stays). Addresses must be lab addresses, as in [`crate::DnsConfig`].
    pub fn set_dns_addresses(&self, name: &str, ips: &[IpAddr]) -> Result<()> {
        let dns = self
            .dns
            .as_ref()
            .ok_or_else(|| Error::Config("the lab runs no DNS server".into()))?;
        dns.zone
            .set_addresses(name, ips, addresses::check_lab_address)
    }

    /// What the DNS server has received (all of its sockets together).
    pub fn dns_stats(&self) -> DnsStats {
        self.dns
            .as_ref()
            .map(|d| d.counters.snapshot())
            .unwrap_or_default()
    }

    /// What the server at `ip`:`port`/`proto` has received (external hosts, pod ports, DNS).
    pub fn server_stats(&self, ip: &str, proto: Proto, port: u16) -> Result<ServerStats> {
        let addr = addresses::parse_ip(ip)?;
        self.servers
            .find(addr, proto, port)
            .map(|s| s.counters.snapshot())
            .ok_or_else(|| Error::NotFound {
                kind: "server",
                key: format!("{ip} {proto} {port}"),
            })
    }

    /// Polls [`Lab::server_stats`] until `pred` holds or `timeout` passes; returns the last stats.
    /// Server threads count asynchronously, so assert with this rather than right after a client.
    pub fn wait_server_stats(
        &self,
        ip: &str,
        proto: Proto,
        port: u16,
        timeout: Duration,
        pred: impl Fn(&ServerStats) -> bool,
    ) -> Result<ServerStats> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.server_stats(ip, proto, port)?;
            if pred(&s) || Instant::now() >= deadline {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Runs `nft list ruleset` in the node namespace (for debugging and tests).
    pub fn nft_ruleset(&self) -> Result<String> {
        let node = self
            .node
            .as_ref()
            .ok_or_else(|| Error::Config("lab has no node namespace".into()))?;
        sys::run("nft", &["list", "ruleset"], Some(&node.fd), None)
    }
}
