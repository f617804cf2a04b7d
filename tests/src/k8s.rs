//! Builders of Kubernetes objects (`k8s-openapi` types) for the tests and benches of every
//! crate, in one style: `kind(namespace, name)` starts a builder with realistic defaults,
//! chained setters add to it, and `build()` returns the typed object.
//!
//! ```
//! use leash_lab::k8s;
//!
//! let pod = k8s::pod("shop", "web-7d4-x2")
//!     .uid("6f1c2f9e-3b0a-4c1e-9a7d-2d4b5e6f7a8b")
//!     .labels(&[("app", "web")])
//!     .owner("ReplicaSet", "web-7d4")
//!     .node("n1")
//!     .ip("198.51.100.10")
//!     .port(Some("http"), 8080, "TCP")
//!     .build();
//! assert_eq!(pod.metadata.name.as_deref(), Some("web-7d4-x2"));
//!
//! let svc = k8s::service("shop", "web")
//!     .cluster_ip("198.51.100.130")
//!     .selector(&[("app", "web")])
//!     .port(Some("http"), 80, "http", "TCP")
//!     .build();
//! assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 80);
//! ```
//!
//! The lab's own pods ([`crate::PodSpec`]) describe what to run; these describe only what the
//! API server would hold, for code that reads Kubernetes objects.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, HostIP, Namespace, ObjectReference, Pod, PodIP, PodSpec, PodStatus,
    Service, ServicePort, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

fn meta(namespace: Option<&str>, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: namespace.map(str::to_owned),
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    }
}

fn label_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A namespace `name` labelled `kubernetes.io/metadata.name: name` (as the API server labels
/// every namespace) plus `labels`.
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    let mut m = meta(None, name);
    let mut all = label_map(&[("kubernetes.io/metadata.name", name)]);
    all.extend(label_map(labels));
    m.labels = Some(all);
    Namespace {
        metadata: m,
        ..Namespace::default()
    }
}

/// A pod under construction; see [`pod`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build()`"]
pub struct PodBuilder(Pod);

/// Starts a running pod `namespace/name` with uid `uid-<namespace>-<name>`, one container
/// `main`, and no labels, owner, node, IPs or ports.
pub fn pod(namespace: &str, name: &str) -> PodBuilder {
    let mut m = meta(Some(namespace), name);
    m.uid = Some(format!("uid-{namespace}-{name}"));
    PodBuilder(Pod {
        metadata: m,
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".to_owned(),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_owned()),
            ..PodStatus::default()
        }),
    })
}

impl PodBuilder {
    fn spec(&mut self) -> &mut PodSpec {
        self.0.spec.get_or_insert_with(PodSpec::default)
    }

    fn status(&mut self) -> &mut PodStatus {
        self.0.status.get_or_insert_with(PodStatus::default)
    }

    /// Sets `metadata.uid` (the agent finds pods by it: make it UUID-shaped for cgroup paths).
    pub fn uid(mut self, uid: &str) -> Self {
        self.0.metadata.uid = Some(uid.to_owned());
        self
    }

    /// Adds labels.
    pub fn labels(mut self, pairs: &[(&str, &str)]) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .extend(label_map(pairs));
        self
    }

    /// Adds a controller owner reference `apps/v1` `kind/name` (e.g. `ReplicaSet`).
    pub fn owner(mut self, kind: &str, name: &str) -> Self {
        self.0
            .metadata
            .owner_references
            .get_or_insert_with(Vec::new)
            .push(OwnerReference {
                api_version: "apps/v1".to_owned(),
                kind: kind.to_owned(),
                name: name.to_owned(),
                uid: format!("uid-{name}"),
                controller: Some(true),
                block_owner_deletion: None,
            });
        self
    }

    /// Schedules the pod on `node` (`spec.nodeName`).
    pub fn node(mut self, node: &str) -> Self {
        self.spec().node_name = Some(node.to_owned());
        self
    }

    /// Sets the node's address (`status.hostIP` and `hostIPs`).
    pub fn host_ip(mut self, ip: &str) -> Self {
        let status = self.status();
        status.host_ip = Some(ip.to_owned());
        status.host_ips = Some(vec![HostIP { ip: ip.to_owned() }]);
        self
    }

    /// Sets `spec.hostNetwork: true` (its pod IP is then the node's: add it with [`Self::ip`]).
    pub fn host_network(mut self) -> Self {
        self.spec().host_network = Some(true);
        self
    }

    /// Adds a pod IP (the first also becomes `status.podIP`).
    pub fn ip(mut self, ip: &str) -> Self {
        let status = self.status();
        status.pod_ip.get_or_insert_with(|| ip.to_owned());
        status
            .pod_ips
            .get_or_insert_with(Vec::new)
            .push(PodIP { ip: ip.to_owned() });
        self
    }

    /// Adds a container port to the first container, named or not; `protocol` is `TCP`,
    /// `UDP` or `SCTP`.
    pub fn port(mut self, name: Option<&str>, port: i32, protocol: &str) -> Self {
        let spec = self.spec();
        if spec.containers.is_empty() {
            spec.containers.push(Container {
                name: "main".to_owned(),
                ..Container::default()
            });
        }
        spec.containers[0]
            .ports
            .get_or_insert_with(Vec::new)
            .push(ContainerPort {
                name: name.map(str::to_owned),
                container_port: port,
                protocol: Some(protocol.to_owned()),
                ..ContainerPort::default()
            });
        self
    }

    /// Sets `status.phase` (default `Running`).
    pub fn phase(mut self, phase: &str) -> Self {
        self.status().phase = Some(phase.to_owned());
        self
    }

    /// The pod.
    pub fn build(self) -> Pod {
        self.0
    }
}

/// A Service under construction; see [`service`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build()`"]
pub struct ServiceBuilder(Service);

/// Starts a ClusterIP Service `namespace/name` with no address, selector or ports.
pub fn service(namespace: &str, name: &str) -> ServiceBuilder {
    ServiceBuilder(Service {
        metadata: meta(Some(namespace), name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

impl ServiceBuilder {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.get_or_insert_with(ServiceSpec::default)
    }

    /// Adds a cluster IP (the first also becomes `spec.clusterIP`).
    pub fn cluster_ip(mut self, ip: &str) -> Self {
        let spec = self.spec();
        spec.cluster_ip.get_or_insert_with(|| ip.to_owned());
        spec.cluster_ips
            .get_or_insert_with(Vec::new)
            .push(ip.to_owned());
        self
    }

    /// Adds selector labels.
    pub fn selector(mut self, pairs: &[(&str, &str)]) -> Self {
        self.spec()
            .selector
            .get_or_insert_with(BTreeMap::new)
            .extend(label_map(pairs));
        self
    }

    /// Adds a port; a `target` that parses as a number is a numeric targetPort, otherwise a
    /// named one.
    pub fn port(mut self, name: Option<&str>, port: i32, target: &str, protocol: &str) -> Self {
        let target_port = match target.parse::<i32>() {
            Ok(n) => IntOrString::Int(n),
            Err(_) => IntOrString::String(target.to_owned()),
        };
        self.spec()
            .ports
            .get_or_insert_with(Vec::new)
            .push(ServicePort {
                name: name.map(str::to_owned),
                port,
                target_port: Some(target_port),
                protocol: Some(protocol.to_owned()),
                ..ServicePort::default()
            });
        self
    }

    /// The Service.
    pub fn build(self) -> Service {
        self.0
    }
}

/// An EndpointSlice under construction; see [`endpoint_slice`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build()`"]
pub struct EndpointSliceBuilder {
    slice: EndpointSlice,
    namespace: String,
}

/// Starts an EndpointSlice `<service>-abcde` of Service `namespace/service` for `family`
/// (`IPv4` or `IPv6`), with no ports or endpoints.
pub fn endpoint_slice(namespace: &str, service: &str, family: &str) -> EndpointSliceBuilder {
    let mut m = meta(Some(namespace), &format!("{service}-abcde"));
    m.labels = Some(label_map(&[("kubernetes.io/service-name", service)]));
    EndpointSliceBuilder {
        slice: EndpointSlice {
            metadata: m,
            address_type: family.to_owned(),
            endpoints: Some(Vec::new()),
            ports: None,
        },
        namespace: namespace.to_owned(),
    }
}

impl EndpointSliceBuilder {
    /// Adds a port.
    pub fn port(mut self, name: Option<&str>, port: i32, protocol: &str) -> Self {
        self.slice
            .ports
            .get_or_insert_with(Vec::new)
            .push(EndpointPort {
                name: name.map(str::to_owned),
                port: Some(port),
                protocol: Some(protocol.to_owned()),
                ..EndpointPort::default()
            });
        self
    }

    /// Adds an endpoint `address`, ready or not, backed by pod `pod` of the slice's namespace
    /// (`None` for an endpoint without a pod).
    pub fn endpoint(mut self, address: &str, ready: bool, pod: Option<&str>) -> Self {
        let target_ref = pod.map(|name| ObjectReference {
            kind: Some("Pod".to_owned()),
            namespace: Some(self.namespace.clone()),
            name: Some(name.to_owned()),
            ..ObjectReference::default()
        });
        self.slice
            .endpoints
            .get_or_insert_with(Vec::new)
            .push(Endpoint {
                addresses: vec![address.to_owned()],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    ..EndpointConditions::default()
                }),
                target_ref,
                ..Endpoint::default()
            });
        self
    }

    /// The EndpointSlice.
    pub fn build(self) -> EndpointSlice {
        self.slice
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_defaults_and_setters() {
        let p = pod("shop", "a").build();
        assert_eq!(p.metadata.uid.as_deref(), Some("uid-shop-a"));
        assert_eq!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Running")
        );
        let p = pod("shop", "a")
            .uid("u")
            .labels(&[("app", "a")])
            .labels(&[("tier", "b")])
            .owner("ReplicaSet", "a-7d4")
            .node("n1")
            .host_ip("203.0.113.1")
            .host_network()
            .ip("203.0.113.1")
            .ip("2001:db8::1")
            .port(Some("http"), 8080, "TCP")
            .phase("Pending")
            .build();
        assert_eq!(p.metadata.uid.as_deref(), Some("u"));
        assert_eq!(p.metadata.labels.as_ref().map(BTreeMap::len), Some(2));
        let owner = &p.metadata.owner_references.as_deref().unwrap_or_default()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("ReplicaSet", Some(true))
        );
        let spec = p.spec.unwrap_or_default();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.host_network, Some(true));
        assert_eq!(spec.containers[0].ports.as_ref().map(Vec::len), Some(1));
        let status = p.status.unwrap_or_default();
        assert_eq!(status.pod_ip.as_deref(), Some("203.0.113.1"));
        assert_eq!(status.pod_ips.map(|v| v.len()), Some(2));
        assert_eq!(status.phase.as_deref(), Some("Pending"));
    }

    #[test]
    fn service_and_slice() {
        let s = service("shop", "web")
            .cluster_ip("198.51.100.130")
            .selector(&[("app", "web")])
            .port(Some("http"), 80, "http", "TCP")
            .port(None, 81, "8081", "UDP")
            .build()
            .spec
            .unwrap_or_default();
        assert_eq!(s.cluster_ip.as_deref(), Some("198.51.100.130"));
        let ports = s.ports.unwrap_or_default();
        assert_eq!(
            ports[0].target_port,
            Some(IntOrString::String("http".into()))
        );
        assert_eq!(ports[1].target_port, Some(IntOrString::Int(8081)));
        let e = endpoint_slice("shop", "web", "IPv4")
            .port(Some("http"), 8080, "TCP")
            .endpoint("198.51.100.10", true, Some("web-1"))
            .endpoint("198.51.100.11", false, None)
            .build();
        assert_eq!(e.metadata.name.as_deref(), Some("web-abcde"));
        let endpoints = e.endpoints.unwrap_or_default();
        assert_eq!(endpoints.len(), 2);
        assert!(endpoints[1].target_ref.is_none());
        let ns = namespace("shop", &[("team", "a")]);
        assert_eq!(ns.metadata.labels.map(|l| l.len()), Some(2));
    }
}
