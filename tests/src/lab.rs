//! Building, using and tearing down a lab.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::client;
use crate::dns::{DnsConfig, DnsCounters, DnsFlavour, DnsStats, Zone};
use crate::error::{Error, Result};
use crate::servers::{Behaviour, Proto, ServerStats, Servers};
use crate::spec::{
    CgroupDriver, ContainerPort, Owner, PodSpec, Port, Qos, ServicePort, ServiceSpec, TargetPort,
};
use crate::sys;

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
/// The `default/kubernetes` ClusterIP (with [`LabBuilder::api_server`]).
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

static LAB_COUNTER: AtomicU64 = AtomicU64::new(0);

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn in_v6_64(ip: Ipv6Addr, third: u16) -> bool {
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

fn parse_ip(s: &str) -> Result<IpAddr> {
    s.trim()
        .parse()
        .map_err(|_| Error::BadAddress(s.to_owned()))
}

fn check_lab_address(ip: IpAddr) -> Result<()> {
    if is_lab_address(ip) {
        Ok(())
    } else {
        Err(Error::AddressNotAllowed {
            addr: ip,
            allowed: "198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32",
        })
    }
}

/// A named network namespace with an open handle.
#[derive(Debug)]
pub(crate) struct NetNs {
    pub(crate) name: String,
    pub(crate) fd: Arc<OwnedFd>,
}

/// A pod of a running lab.
#[derive(Debug)]
pub struct Pod {
    namespace: String,
    name: String,
    uid: String,
    labels: BTreeMap<String, String>,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
    netns_name: String,
    netns_fd: Arc<OwnedFd>,
    cgroup_path: PathBuf,
    cgroup_rel: String,
    cgroup_id: u64,
    container_id: String,
    procs_fd: Arc<OwnedFd>,
    pub(crate) owner: Option<Owner>,
    pub(crate) ports: Vec<ContainerPort>,
    pub(crate) container: String,
    pub(crate) image: String,
    pub(crate) qos: Qos,
    pub(crate) runtime_scheme: &'static str,
    host_network: bool,
}

/// What `lab-client` reported.
#[derive(Clone, Debug)]
pub struct ClientOutput {
    /// Its exit status.
    pub status: ExitStatus,
    /// The JSON object it printed (its last stdout line).
    pub json: serde_json::Value,
    /// Full stdout.
    pub stdout: String,
    /// Full stderr.
    pub stderr: String,
}

impl ClientOutput {
    /// Whether the client exited 0 (every attempt succeeded).
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// A numeric field of the JSON result, 0 when absent.
    pub fn count(&self, field: &str) -> u64 {
        self.json
            .get(field)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    }
}

impl Pod {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The pod name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod UID (as in `metadata.uid`, dashes).
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// The labels.
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// The pod's IPv4 address.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4
    }

    /// The pod's IPv6 address.
    pub fn ipv6(&self) -> Ipv6Addr {
        self.ipv6
    }

    /// Both addresses, v4 first.
    pub fn ips(&self) -> [IpAddr; 2] {
        [IpAddr::V4(self.ipv4), IpAddr::V6(self.ipv6)]
    }

    /// The name of the network namespace (under `/run/netns`).
    pub fn netns(&self) -> &str {
        &self.netns_name
    }

    /// Absolute path of the container's cgroup directory.
    pub fn cgroup_path(&self) -> &Path {
        &self.cgroup_path
    }

    /// The cgroup path relative to the cgroup v2 mount, with a leading `/`
    /// (what `/proc/<pid>/cgroup` shows, and what the agent reports).
    pub fn cgroup_rel(&self) -> &str {
        &self.cgroup_rel
    }

    /// The cgroup id (inode of the cgroup directory).
    pub fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }

    /// The 64-hex container id.
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// Whether this is a `hostNetwork` pod (runs in the node namespace).
    pub fn is_host_network(&self) -> bool {
        self.host_network
    }

    /// A command that, when spawned, first joins this pod's cgroup and then enters its network
    /// namespace (in that order, in the child before exec).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let procs = Arc::clone(&self.procs_fd);
        let netns = Arc::clone(&self.netns_fd);
        // SAFETY: the closure only calls write(2) and setns(2), both async-signal-safe, on fds
        // kept open by the Arcs it owns.
        unsafe {
            cmd.pre_exec(move || {
                // "0" moves the writing task: this child.
                if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `lab-client <args>` in this pod and waits for it (bounded by the client's own
    /// timeouts). Returns its output even when it exits non-zero (e.g. refused connections).
    /// The JSON fields are listed in the `lab-client` source (`tests/src/bin/lab-client.rs`).
    ///
    /// ```no_run
    /// # fn f(lab: &leash_lab::Lab) -> leash_lab::Result<()> {
    /// let out = lab.pod("shop/frontend").run(&["tcp", "203.0.113.10", "443", "--count", "3"])?;
    /// assert_eq!(out.count("connected"), 3);
    /// # Ok(()) }
    /// ```
    pub fn run(&self, args: &[&str]) -> Result<ClientOutput> {
        let bin = client::lab_client_path()?;
        let line = sys::cmdline(&bin.display().to_string(), args);
        let out = self
            .command(&bin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| Error::Spawn { cmd: line, source })?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok());
        match json {
            Some(json) => Ok(ClientOutput {
                status: out.status,
                json,
                stdout,
                stderr,
            }),
            None => Err(Error::ClientOutput {
                args: args.iter().map(|s| (*s).to_owned()).collect(),
                status: out.status.to_string(),
                stdout,
                stderr,
            }),
        }
    }

    /// Starts `lab-client <args>` in this pod without waiting (stdout piped). The lab kills it at
    /// Drop at the latest (through the cgroup).
    pub fn spawn(&self, args: &[&str]) -> Result<Child> {
        let bin = client::lab_client_path()?;
        let line = sys::cmdline(&bin.display().to_string(), args);
        self.command(&bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| Error::Spawn { cmd: line, source })
    }
}

/// A Service of a running lab.
#[derive(Clone, Debug)]
pub struct Service {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) cluster_ip: Ipv4Addr,
    pub(crate) cluster_ip_v6: Ipv6Addr,
    pub(crate) ports: Vec<ServicePort>,
    pub(crate) selector: BTreeMap<String, String>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) uid: String,
    /// Indices into the lab's pods.
    pub(crate) backends: Vec<usize>,
    /// Endpoints given by address (Services without selector).
    pub(crate) manual_endpoints: Vec<IpAddr>,
}

impl Service {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The IPv4 ClusterIP.
    pub fn cluster_ip(&self) -> Ipv4Addr {
        self.cluster_ip
    }

    /// The IPv6 ClusterIP.
    pub fn cluster_ip_v6(&self) -> Ipv6Addr {
        self.cluster_ip_v6
    }

    /// The ports.
    pub fn ports(&self) -> &[ServicePort] {
        &self.ports
    }

    /// The Service's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Service's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// An external host (in the lab's "external" namespace, routed via the node).
#[derive(Clone, Debug)]
pub struct External {
    /// Its address.
    pub ip: IpAddr,
    /// Its served ports.
    pub ports: Vec<Port>,
}

struct DnsInfo {
    pod: usize,
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

/// Builds a [`Lab`]; see the crate documentation for an example.
#[derive(Clone, Debug, Default)]
pub struct LabBuilder {
    namespaces: BTreeSet<String>,
    pods: Vec<PodSpec>,
    services: Vec<ServiceSpec>,
    externals: Vec<(String, Vec<Port>)>,
    dns: Option<DnsConfig>,
    node_name: Option<String>,
    extra_objects: Vec<serde_json::Value>,
    api_server: bool,
}

impl LabBuilder {
    /// Adds an arbitrary Kubernetes object (e.g. a NetworkPolicy) to the lab's snapshot, after
    /// the objects the lab generates. The lab does not enforce it.
    pub fn snapshot_object(mut self, object: serde_json::Value) -> Self {
        self.extra_objects.push(object);
        self
    }

    /// Declares a namespace (namespaces of pods and services are added automatically).
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespaces.insert(ns.to_owned());
        self
    }

    /// Adds a pod.
    pub fn pod(mut self, pod: PodSpec) -> Self {
        self.pods.push(pod);
        self
    }

    /// Adds a ClusterIP Service.
    pub fn service(mut self, svc: ServiceSpec) -> Self {
        self.services.push(svc);
        self
    }

    /// Adds an external host address (203.0.113.0/24 or 2001:db8:2::/64, not .1/::1) with
    /// servers on `ports`. Call again with the v6 address for a dual-stack host.
    pub fn external(mut self, ip: &str, ports: impl IntoIterator<Item = Port>) -> Self {
        self.externals
            .push((ip.to_owned(), ports.into_iter().collect()));
        self
    }

    /// Runs the lab DNS server in a `kube-system/coredns-lab` pod behind the `kube-system/kube-dns`
    /// Service (198.51.100.138 / 2001:db8:3::8a, port 53 → the configured listen port), or, with
    /// [`DnsConfig::openshift`], in `openshift-dns/dns-default-lab` behind
    /// `openshift-dns/dns-default` (same VIPs, port 53 → 5353).
    pub fn dns(mut self, cfg: DnsConfig) -> Self {
        self.dns = Some(cfg);
        self
    }

    /// Adds the `default/kubernetes` Service (198.51.100.129 / 2001:db8:3::81, `https` 443 →
    /// 6443) whose endpoints are the node's addresses, with a TCP echo server on the node at
    /// 198.51.100.1:6443 and `[2001:db8:1::1]:6443` standing in for the API server.
    pub fn api_server(mut self) -> Self {
        self.api_server = true;
        self
    }

    /// Names the node (default `lab-node-<id>`).
    pub fn node_name(mut self, name: &str) -> Self {
        self.node_name = Some(name.to_owned());
        self
    }

    /// Creates everything. On error, whatever was created is removed again.
    pub fn build(mut self) -> Result<Lab> {
        crate::check_privileged()?;
        let mount = sys::cgroup2_mount()?;
        crate::sweep_stale();
        let id = format!(
            "{}-{}",
            std::process::id(),
            LAB_COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let dns_port = self.dns.as_ref().map(DnsConfig::listen_port);
        let dns_key = self.dns.clone().map(|cfg| self.add_dns_objects(&cfg));
        if self.api_server {
            self.services.insert(
                0,
                ServiceSpec::new("default", "kubernetes")
                    .label("component", "apiserver")
                    .label("provider", "kubernetes")
                    .cluster_ip(&API_VIP_V4.to_string())
                    .cluster_ip(&API_VIP_V6.to_string())
                    .port(ServicePort::tcp(443).target(API_SERVER_PORT).name("https"))
                    .endpoint(&NODE_IPV4.to_string())
                    .endpoint(&NODE_IPV6.to_string()),
            );
        }
        let plan = Plan::new(&self, &id)?;
        let node_name = self
            .node_name
            .clone()
            .unwrap_or_else(|| format!("lab-node-{id}"));
        let cgroup_root = mount.join(format!("{LAB_PREFIX}{id}"));
        let mut lab = Lab {
            id: id.clone(),
            node_name,
            cgroup_mount: mount.clone(),
            cgroup_root: cgroup_root.clone(),
            cgroup_created: false,
            netns_created: Vec::new(),
            node: None,
            ext: None,
            namespaces: BTreeSet::new(),
            pods: Vec::new(),
            services: Vec::new(),
            externals: Vec::new(),
            servers: Servers::new(),
            dns: None,
            extra_objects: self.extra_objects.clone(),
        };
        fs::create_dir(&cgroup_root).map_err(|e| Error::io("mkdir", &cgroup_root, e))?;
        lab.cgroup_created = true;

        // Namespaces: node, external, one per (non-hostNetwork) pod.
        let node = lab.add_netns(&format!("{LAB_PREFIX}{id}-node"))?;
        let ext = lab.add_netns(&format!("{LAB_PREFIX}{id}-ext"))?;
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
            let ns = lab.add_netns(&format!("{LAB_PREFIX}{id}-p{i}"))?;
            sys::set_net_sysctls(&ns.fd, &ns.name, &no_dad)?;
            pod_ns.push(Some(ns));
        }

        // Links and addresses. The node routes every pod by a /32 (/128) on its veth, so pod to
        // pod traffic is routed through the node (and its conntrack sees both directions of
        // DNATed flows, unlike on a bridge).
        let mut nb = String::new();
        let _ = writeln!(nb, "link set lo up");
        let _ = writeln!(nb, "addr add {NODE_IPV4}/32 dev lo");
        let _ = writeln!(nb, "addr add {NODE_IPV6}/128 dev lo");
        for (i, (p, ns)) in plan.pods.iter().zip(&pod_ns).enumerate() {
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

        for (p, ns) in plan.pods.iter().zip(&pod_ns) {
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

        // Pods: cgroups and records.
        for (p, ns) in plan.pods.iter().zip(pod_ns) {
            let rel = p.cgroup_rel_in_lab();
            let path = cgroup_root.join(&rel);
            fs::create_dir_all(&path).map_err(|e| Error::io("mkdir -p", &path, e))?;
            let cgroup_id = sys::cgroup_id(&path)?;
            let procs_fd = Arc::new(sys::open_wo(&path.join("cgroup.procs"))?);
            let (netns_name, netns_fd) = match ns {
                Some(ns) => (ns.name, ns.fd),
                None => (node.name.clone(), Arc::clone(&node.fd)),
            };
            let cgroup_rel = format!("/{LAB_PREFIX}{id}/{rel}");
            lab.pods.push(Pod {
                namespace: p.spec.namespace.clone(),
                name: p.spec.name.clone(),
                uid: p.uid.clone(),
                labels: p.spec.labels.clone(),
                ipv4: p.ipv4,
                ipv6: p.ipv6,
                netns_name,
                netns_fd,
                cgroup_path: path,
                cgroup_rel,
                cgroup_id,
                container_id: p.container_id.clone(),
                procs_fd,
                owner: p.spec.owner.clone(),
                ports: p.spec.ports.clone(),
                container: p.spec.container.clone(),
                image: p.spec.image.clone(),
                qos: p.spec.qos,
                runtime_scheme: p.spec.runtime.id_scheme(),
                host_network: p.spec.host_network,
            });
        }
        lab.namespaces = plan.namespaces.clone();
        lab.services = plan.services.clone();

        // Service DNAT in the node namespace.
        let rules = nft_ruleset(&lab.pods, &lab.services);
        sys::run("nft", &["-f", "-"], Some(&node.fd), Some(&rules))?;

        // Servers: pod ports, external hosts, DNS.
        for (i, p) in plan.pods.iter().enumerate() {
            for cp in p.spec.ports.iter().filter(|cp| cp.serve) {
                for ip in lab.pods[i].ips() {
                    let fd = Arc::clone(&lab.pods[i].netns_fd);
                    let name = lab.pods[i].netns_name.clone();
                    lab.servers.start(
                        &fd,
                        &name,
                        SocketAddr::new(ip, cp.port),
                        cp.proto,
                        Behaviour::Echo,
                    )?;
                }
            }
        }
        if self.api_server {
            for ip in [IpAddr::V4(NODE_IPV4), IpAddr::V6(NODE_IPV6)] {
                lab.servers.start(
                    &node.fd,
                    &node.name,
                    SocketAddr::new(ip, API_SERVER_PORT),
                    Proto::Tcp,
                    Behaviour::Echo,
                )?;
            }
        }
        for (ip, ports) in &plan.externals {
            for port in ports {
                lab.servers.start(
                    &ext.fd,
                    &ext.name,
                    SocketAddr::new(*ip, port.port),
                    port.proto,
                    Behaviour::Echo,
                )?;
            }
            lab.externals.push(External {
                ip: *ip,
                ports: ports.clone(),
            });
        }
        if let (Some(cfg), Some(port)) = (&self.dns, dns_port) {
            let extra: Vec<(String, IpAddr)> = lab
                .services
                .iter()
                .flat_map(|s| {
                    let n = format!("{}.{}.svc.cluster.local", s.name, s.namespace);
                    [
                        (n.clone(), IpAddr::V4(s.cluster_ip)),
                        (n, IpAddr::V6(s.cluster_ip_v6)),
                    ]
                })
                .collect();
            let zone = Arc::new(Zone::build(cfg, &extra, check_lab_address)?);
            let counters = Arc::new(DnsCounters::default());
            let pod = lab
                .pods
                .iter()
                .position(|p| Some(p.key()) == dns_key)
                .ok_or_else(|| Error::Config("DNS pod missing".into()))?;
            let fd = Arc::clone(&lab.pods[pod].netns_fd);
            let name = lab.pods[pod].netns_name.clone();
            for ip in lab.pods[pod].ips() {
                for proto in [Proto::Udp, Proto::Tcp] {
                    lab.servers.start(
                        &fd,
                        &name,
                        SocketAddr::new(ip, port),
                        proto,
                        Behaviour::Dns(Arc::clone(&zone), Arc::clone(&counters)),
                    )?;
                }
            }
            lab.dns = Some(DnsInfo {
                pod,
                counters,
                port,
            });
        }
        lab.node = Some(node);
        lab.ext = Some(ext);
        Ok(lab)
    }

    /// Adds the DNS pod and Service for `cfg`'s flavour; returns the pod's key.
    fn add_dns_objects(&mut self, cfg: &DnsConfig) -> String {
        let port = cfg.listen_port();
        let (pod, svc) = match cfg.flavour() {
            DnsFlavour::Kubeadm => (
                PodSpec::new("kube-system", "coredns-lab")
                    .label("k8s-app", "kube-dns")
                    .owner_deployment("coredns")
                    .container("coredns", "registry.k8s.io/coredns/coredns:v1.11.1"),
                ServiceSpec::new("kube-system", "kube-dns")
                    .selector("k8s-app", "kube-dns")
                    .label("k8s-app", "kube-dns"),
            ),
            DnsFlavour::OpenShift => (
                PodSpec::new("openshift-dns", "dns-default-lab")
                    .label("dns.operator.openshift.io/daemonset-dns", "default")
                    .owner(Owner::DaemonSet("dns-default".into()))
                    .container("dns", "quay.io/openshift/origin-coredns:4.16"),
                ServiceSpec::new("openshift-dns", "dns-default")
                    .selector("dns.operator.openshift.io/daemonset-dns", "default")
                    .label("dns.operator.openshift.io/owning-dns", "default"),
            ),
        };
        let pod = pod
            .port_unserved(Some("dns"), port, Proto::Udp)
            .port_unserved(Some("dns-tcp"), port, Proto::Tcp);
        let key = pod.key();
        self.pods.insert(0, pod);
        let svc = svc
            .cluster_ip(&DNS_VIP_V4.to_string())
            .cluster_ip(&DNS_VIP_V6.to_string())
            .port(ServicePort::udp(53).name("dns").target_named("dns"))
            .port(ServicePort::tcp(53).name("dns-tcp").target_named("dns-tcp"));
        self.services.insert(0, svc);
        key
    }
}

/// Addresses and names decided before anything is created.
struct PlannedPod {
    spec: PodSpec,
    uid: String,
    container_id: String,
    ipv4: Ipv4Addr,
    ipv6: Ipv6Addr,
}

impl PlannedPod {
    /// The cgroup path below the lab root, shaped like the kubelet's.
    fn cgroup_rel_in_lab(&self) -> String {
        let qos = match self.spec.qos {
            Qos::Guaranteed => None,
            Qos::Burstable => Some("burstable"),
            Qos::BestEffort => Some("besteffort"),
        };
        let cid = &self.container_id;
        match self.spec.driver {
            CgroupDriver::Systemd => {
                let uid_ = self.uid.replace('-', "_");
                let prefix = self.spec.runtime.scope_prefix();
                match qos {
                    Some(q) => format!(
                        "kubepods.slice/kubepods-{q}.slice/kubepods-{q}-pod{uid_}.slice/{prefix}-{cid}.scope"
                    ),
                    None => {
                        format!("kubepods.slice/kubepods-pod{uid_}.slice/{prefix}-{cid}.scope")
                    }
                }
            }
            CgroupDriver::Cgroupfs => match qos {
                Some(q) => format!("kubepods/{q}/pod{}/{cid}", self.uid),
                None => format!("kubepods/pod{}/{cid}", self.uid),
            },
        }
    }
}

struct Plan {
    namespaces: BTreeSet<String>,
    pods: Vec<PlannedPod>,
    services: Vec<Service>,
    externals: Vec<(IpAddr, Vec<Port>)>,
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
    fn new(b: &LabBuilder, id: &str) -> Result<Self> {
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

fn pod_v4(s: &str) -> Result<Ipv4Addr> {
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

fn pod_v6(s: &str) -> Result<Ipv6Addr> {
    match parse_ip(s)? {
        IpAddr::V6(v6) if in_v6_64(v6, 1) && v6 != NODE_IPV6 && !v6.is_unspecified() => Ok(v6),
        ip => Err(Error::AddressNotAllowed {
            addr: ip,
            allowed: "2001:db8:1::/64 (except ::1) for pod IPv6 addresses",
        }),
    }
}

fn svc_v4(s: &str) -> Result<Ipv4Addr> {
    match parse_ip(s)? {
        IpAddr::V4(v4) if in_v4(v4, [198, 51, 100, 128], 26) && v4.octets()[3] != 128 => Ok(v4),
        ip => Err(Error::AddressNotAllowed {
            addr: ip,
            allowed: "198.51.100.129-190 for ClusterIPs",
        }),
    }
}

fn svc_v6(s: &str) -> Result<Ipv6Addr> {
    match parse_ip(s)? {
        IpAddr::V6(v6) if in_v6_64(v6, 3) => Ok(v6),
        ip => Err(Error::AddressNotAllowed {
            addr: ip,
            allowed: "2001:db8:3::/64 for IPv6 ClusterIPs",
        }),
    }
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
            Err(e) => panic!("{e}"),
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
            Err(e) => panic!("{e}"),
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

    /// What the DNS server has received (all of its sockets together).
    pub fn dns_stats(&self) -> DnsStats {
        self.dns
            .as_ref()
            .map(|d| d.counters.snapshot())
            .unwrap_or_default()
    }

    /// What the server at `ip`:`port`/`proto` has received (external hosts, pod ports, DNS).
    pub fn server_stats(&self, ip: &str, proto: Proto, port: u16) -> Result<ServerStats> {
        let addr = parse_ip(ip)?;
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

impl Drop for Lab {
    fn drop(&mut self) {
        self.servers.stop_all();
        if self.cgroup_created
            && let Err(e) = sys::remove_cgroup_tree(&self.cgroup_root)
        {
            tracing::warn!("lab {}: removing cgroups: {e}", self.id);
            eprintln!("leash-lab {}: removing cgroups: {e}", self.id);
        }
        for ns in &self.netns_created {
            if let Err(e) = sys::delete_netns(ns) {
                tracing::warn!("lab {}: deleting netns {ns}: {e}", self.id);
                eprintln!("leash-lab {}: deleting netns {ns}: {e}", self.id);
            }
        }
    }
}
