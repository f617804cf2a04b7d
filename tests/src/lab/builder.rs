//! Describing a lab ([`LabBuilder`]) and building it, step by step: plan, cgroup root,
//! namespaces, pods, DNAT, servers.

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::addresses::{
    API_SERVER_PORT, API_VIP_V4, API_VIP_V6, DNS_VIP_V4, DNS_VIP_V6, LAB_PREFIX, NODE_IPV4,
    NODE_IPV6, check_lab_address,
};
use super::namespaces::Namespaces;
use super::plan::Plan;
use super::service::External;
use super::{DnsInfo, Lab, NetNs, dnat};
use crate::dns::{DnsConfig, DnsCounters, DnsFlavour, Zone};
use crate::error::{Error, Result};
use crate::servers::{Behaviour, Proto, Servers};
use crate::spec::{Owner, PodSpec, Port, ServicePort, ServiceSpec};
use crate::sys;

static LAB_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Builds a [`Lab`]; see the crate documentation for an example.
#[derive(Clone, Debug, Default)]
pub struct LabBuilder {
    pub(super) namespaces: BTreeSet<String>,
    pub(super) pods: Vec<PodSpec>,
    pub(super) services: Vec<ServiceSpec>,
    pub(super) externals: Vec<(String, Vec<Port>)>,
    pub(super) dns: Option<DnsConfig>,
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

        let namespaces = lab.create_namespaces(&plan)?;
        namespaces.wire(&plan)?;
        let Namespaces {
            node,
            ext,
            pods: pod_ns,
        } = namespaces;

        // Pods: cgroups and records.
        lab.add_pods(&plan, pod_ns, &node)?;
        lab.namespaces = plan.namespaces.clone();
        lab.services = plan.services.clone();

        // Service DNAT in the node namespace.
        dnat::install(&node, &lab.pods, &lab.services)?;

        // Servers: pod ports, external hosts, DNS.
        lab.start_servers(&plan, &node, &ext, self.api_server)?;
        if let (Some(cfg), Some(port)) = (&self.dns, dns_port) {
            lab.start_dns(cfg, port, dns_key.as_deref())?;
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

impl Lab {
    /// Echo servers on the pods' served ports, the API server stand-in on the node, and the
    /// external hosts.
    fn start_servers(
        &mut self,
        plan: &Plan,
        node: &NetNs,
        ext: &NetNs,
        api_server: bool,
    ) -> Result<()> {
        for (i, p) in plan.pods.iter().enumerate() {
            for cp in p.spec.ports.iter().filter(|cp| cp.serve) {
                for ip in self.pods[i].ips() {
                    let fd = Arc::clone(&self.pods[i].netns_fd);
                    let name = self.pods[i].netns_name.clone();
                    self.servers.start(
                        &fd,
                        &name,
                        SocketAddr::new(ip, cp.port),
                        cp.proto,
                        Behaviour::Echo,
                    )?;
                }
            }
        }
        if api_server {
            for ip in [IpAddr::V4(NODE_IPV4), IpAddr::V6(NODE_IPV6)] {
                self.servers.start(
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
                self.servers.start(
                    &ext.fd,
                    &ext.name,
                    SocketAddr::new(*ip, port.port),
                    port.proto,
                    Behaviour::Echo,
                )?;
            }
            self.externals.push(External {
                ip: *ip,
                ports: ports.clone(),
            });
        }
        Ok(())
    }

    /// The DNS server on the DNS pod (`dns_key`), UDP and TCP, v4 and v6, answering for `cfg`'s
    /// zone plus every Service's name.
    fn start_dns(&mut self, cfg: &DnsConfig, port: u16, dns_key: Option<&str>) -> Result<()> {
        let extra: Vec<(String, IpAddr)> = self
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
        let pod = self
            .pods
            .iter()
            .position(|p| Some(p.key().as_str()) == dns_key)
            .ok_or_else(|| Error::Config("DNS pod missing".into()))?;
        let fd = Arc::clone(&self.pods[pod].netns_fd);
        let name = self.pods[pod].netns_name.clone();
        for ip in self.pods[pod].ips() {
            for proto in [Proto::Udp, Proto::Tcp] {
                self.servers.start(
                    &fd,
                    &name,
                    SocketAddr::new(ip, port),
                    proto,
                    Behaviour::Dns(Arc::clone(&zone), Arc::clone(&counters)),
                )?;
            }
        }
        self.dns = Some(DnsInfo {
            pod,
            zone,
            counters,
            port,
        });
        Ok(())
    }
}
