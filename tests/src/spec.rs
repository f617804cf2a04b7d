//! What a lab is made of: pods, services, external hosts.

use std::collections::BTreeMap;

use crate::servers::Proto;

/// A pod's QoS class, which shapes its cgroup path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Qos {
    /// No QoS level in the path: `kubepods.slice/kubepods-pod<uid>.slice` or `kubepods/pod<uid>`.
    Guaranteed,
    /// `kubepods-burstable.slice` / `kubepods/burstable` (the default).
    #[default]
    Burstable,
    /// `kubepods-besteffort.slice` / `kubepods/besteffort`.
    BestEffort,
}

impl Qos {
    /// The Kubernetes `status.qosClass` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "Guaranteed",
            Self::Burstable => "Burstable",
            Self::BestEffort => "BestEffort",
        }
    }
}

/// The kubelet cgroup driver whose layout the pod's cgroup imitates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CgroupDriver {
    /// `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/<runtime>-<id>.scope`.
    #[default]
    Systemd,
    /// `kubepods/<qos>/pod<uid>/<id>`.
    Cgroupfs,
}

/// The container runtime, which names the systemd scope.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Runtime {
    /// `cri-containerd-<id>.scope` (the default).
    #[default]
    Containerd,
    /// `crio-<id>.scope`.
    Crio,
    /// `docker-<id>.scope`.
    Docker,
}

impl Runtime {
    pub(crate) fn scope_prefix(self) -> &'static str {
        match self {
            Self::Containerd => "cri-containerd",
            Self::Crio => "crio",
            Self::Docker => "docker",
        }
    }

    pub(crate) fn id_scheme(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::Crio => "cri-o",
            Self::Docker => "docker",
        }
    }
}

/// The controller owning a pod. Deployments produce a ReplicaSet `<name>-<hash>` in between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A Deployment (via a ReplicaSet).
    Deployment(String),
    /// A bare ReplicaSet.
    ReplicaSet(String),
    /// A StatefulSet.
    StatefulSet(String),
    /// A DaemonSet.
    DaemonSet(String),
    /// A Job.
    Job(String),
}

/// A port a pod's container declares. By default the lab also runs an echo server on it
/// (TCP echo / UDP echo) on both pod addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    /// Optional port name (used by named `targetPort`s).
    pub name: Option<String>,
    /// The port number.
    pub port: u16,
    /// TCP or UDP.
    pub proto: Proto,
    /// Whether the lab runs an echo server on it.
    pub serve: bool,
}

/// Describes one pod.
///
/// ```
/// use leash_lab::{PodSpec, Proto, Qos};
/// let p = PodSpec::new("shop", "payment-7d4-x2")
///     .label("app", "payment")
///     .owner_deployment("payment")
///     .port(Some("http"), 8080, Proto::Tcp)
///     .qos(Qos::Guaranteed);
/// assert_eq!(p.key(), "shop/payment-7d4-x2");
/// ```
#[derive(Clone, Debug)]
pub struct PodSpec {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) uid: Option<String>,
    pub(crate) ipv4: Option<String>,
    pub(crate) ipv6: Option<String>,
    pub(crate) qos: Qos,
    pub(crate) driver: CgroupDriver,
    pub(crate) runtime: Runtime,
    pub(crate) owner: Option<Owner>,
    pub(crate) ports: Vec<ContainerPort>,
    pub(crate) container: String,
    pub(crate) image: String,
    pub(crate) host_network: bool,
}

impl PodSpec {
    /// A pod `name` in namespace `namespace`, container `app`, burstable, systemd driver, containerd.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            labels: BTreeMap::new(),
            uid: None,
            ipv4: None,
            ipv6: None,
            qos: Qos::default(),
            driver: CgroupDriver::default(),
            runtime: Runtime::default(),
            owner: None,
            ports: Vec::new(),
            container: "app".to_owned(),
            image: "registry.lab.test/app:1".to_owned(),
            host_network: false,
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Adds one label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Adds labels.
    pub fn labels<'a>(mut self, labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        for (k, v) in labels {
            self.labels.insert(k.to_owned(), v.to_owned());
        }
        self
    }

    /// Sets the pod UID (default: derived from the lab id and pod key, unique per lab).
    pub fn uid(mut self, uid: &str) -> Self {
        self.uid = Some(uid.to_owned());
        self
    }

    /// Sets an address explicitly (v4 in 198.51.100.2-126, v6 in 2001:db8:1::/64). By default
    /// addresses are assigned in order from 198.51.100.2 / 2001:db8:1::2.
    pub fn ip(mut self, ip: &str) -> Self {
        if ip.contains(':') {
            self.ipv6 = Some(ip.to_owned());
        } else {
            self.ipv4 = Some(ip.to_owned());
        }
        self
    }

    /// Sets the QoS class (shapes the cgroup path).
    pub fn qos(mut self, qos: Qos) -> Self {
        self.qos = qos;
        self
    }

    /// Sets the cgroup driver layout.
    pub fn cgroup_driver(mut self, driver: CgroupDriver) -> Self {
        self.driver = driver;
        self
    }

    /// Sets the container runtime (names the systemd scope).
    pub fn runtime(mut self, runtime: Runtime) -> Self {
        self.runtime = runtime;
        self
    }

    /// Owned by Deployment `name` (through ReplicaSet `name-<hash>`).
    pub fn owner_deployment(mut self, name: &str) -> Self {
        self.owner = Some(Owner::Deployment(name.to_owned()));
        self
    }

    /// Sets any owner.
    pub fn owner(mut self, owner: Owner) -> Self {
        self.owner = Some(owner);
        self
    }

    /// Declares a container port and runs an echo server on it.
    pub fn port(mut self, name: Option<&str>, port: u16, proto: Proto) -> Self {
        self.ports.push(ContainerPort {
            name: name.map(str::to_owned),
            port,
            proto,
            serve: true,
        });
        self
    }

    /// Declares a container port without running a server on it.
    pub fn port_unserved(mut self, name: Option<&str>, port: u16, proto: Proto) -> Self {
        self.ports.push(ContainerPort {
            name: name.map(str::to_owned),
            port,
            proto,
            serve: false,
        });
        self
    }

    /// Sets the container name and image shown in the snapshot.
    pub fn container(mut self, name: &str, image: &str) -> Self {
        self.container = name.to_owned();
        self.image = image.to_owned();
        self
    }

    /// Makes this a `hostNetwork: true` pod: it runs in the lab's node namespace and has the
    /// node's addresses (198.51.100.1, 2001:db8:1::1). It still gets its own cgroup.
    pub fn host_network(mut self) -> Self {
        self.host_network = true;
        self
    }
}

/// A Service's `targetPort`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    /// A port number on the pod.
    Number(u16),
    /// A container port name, resolved per pod.
    Named(String),
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Optional name.
    pub name: Option<String>,
    /// The Service port (on the ClusterIP).
    pub port: u16,
    /// Where it goes on the backend pods.
    pub target: TargetPort,
    /// TCP or UDP.
    pub proto: Proto,
}

impl ServicePort {
    /// A TCP port whose target port is the same number.
    pub fn tcp(port: u16) -> Self {
        Self {
            name: None,
            port,
            target: TargetPort::Number(port),
            proto: Proto::Tcp,
        }
    }

    /// A UDP port whose target port is the same number.
    pub fn udp(port: u16) -> Self {
        Self {
            proto: Proto::Udp,
            ..Self::tcp(port)
        }
    }

    /// Sets a numeric target port.
    pub fn target(mut self, port: u16) -> Self {
        self.target = TargetPort::Number(port);
        self
    }

    /// Sets a named target port (a container port name).
    pub fn target_named(mut self, name: &str) -> Self {
        self.target = TargetPort::Named(name.to_owned());
        self
    }

    /// Names the port.
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }
}

/// Describes a ClusterIP Service: an nftables DNAT from its VIP to the ready pods matching the
/// selector in its namespace.
///
/// ```
/// use leash_lab::{ServicePort, ServiceSpec};
/// let s = ServiceSpec::new("shop", "payment")
///     .selector("app", "payment")
///     .port(ServicePort::tcp(80).target(8080).name("http"));
/// assert_eq!(s.key(), "shop/payment");
/// ```
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) selector: BTreeMap<String, String>,
    pub(crate) ports: Vec<ServicePort>,
    pub(crate) cluster_ip: Option<String>,
    pub(crate) cluster_ip_v6: Option<String>,
    pub(crate) labels: BTreeMap<String, String>,
    pub(crate) endpoints: Vec<String>,
}

impl ServiceSpec {
    /// A Service `name` in `namespace`, no ports yet.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            selector: BTreeMap::new(),
            ports: Vec::new(),
            cluster_ip: None,
            cluster_ip_v6: None,
            labels: BTreeMap::new(),
            endpoints: Vec::new(),
        }
    }

    /// Adds a manual endpoint address (for a Service without selector, like `default/kubernetes`):
    /// traffic to the VIP goes to this address at each port's numeric `targetPort`. The address
    /// must be a lab address.
    pub fn endpoint(mut self, ip: &str) -> Self {
        self.endpoints.push(ip.to_owned());
        self
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Adds a selector term.
    pub fn selector(mut self, key: &str, value: &str) -> Self {
        self.selector.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Adds a label on the Service object.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Adds a port.
    pub fn port(mut self, port: ServicePort) -> Self {
        self.ports.push(port);
        self
    }

    /// Sets the ClusterIP (v4 in 198.51.100.129-190, or v6 in 2001:db8:3::/64). By default VIPs
    /// are assigned from 198.51.100.129 / 2001:db8:3::81 upwards (198.51.100.138 is kube-dns).
    pub fn cluster_ip(mut self, ip: &str) -> Self {
        if ip.contains(':') {
            self.cluster_ip_v6 = Some(ip.to_owned());
        } else {
            self.cluster_ip = Some(ip.to_owned());
        }
        self
    }
}

/// A port on an external host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port {
    /// TCP or UDP.
    pub proto: Proto,
    /// Port number.
    pub port: u16,
}

impl Port {
    /// A TCP port (echo server).
    pub fn tcp(port: u16) -> Self {
        Self {
            proto: Proto::Tcp,
            port,
        }
    }

    /// A UDP port (echo sink).
    pub fn udp(port: u16) -> Self {
        Self {
            proto: Proto::Udp,
            port,
        }
    }
}
