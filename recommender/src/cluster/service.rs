//! Service resolution: where a connection to a Service address leads after kube-proxy's DNAT.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::index::{Cluster, PodId, ServiceId};
use super::inventory::{Protocol, ServicePort, TargetPort};

/// Where a Service port leads for one backend address.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServiceBackend {
    /// The backend address.
    pub ip: IpAddr,
    /// The resolved numeric target port.
    pub port: u16,
    /// The backend pod, when known.
    pub pod: Option<PodId>,
}

/// Outcome of [`Cluster::resolve_service`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceLookup {
    /// The address belongs to no Service.
    NotService,
    /// The Service has no port matching the flow's port and protocol.
    NoSuchPort(ServiceId),
    /// Resolved (the backend list may be empty when nothing backs the Service).
    Resolved {
        /// The Service.
        service: ServiceId,
        /// The matched Service port.
        port: ServicePort,
        /// The backends, sorted; ready ones only unless none are ready.
        backends: Vec<ServiceBackend>,
    },
}

impl Cluster {
    /// Resolves a connection to `ip:port/proto` through a Service, as kube-proxy's DNAT would:
    /// EndpointSlices when the Service has any, else its selector (a pod that is not running
    /// counts as not ready), with named target ports resolved on each backend pod for the flow's
    /// protocol.
    pub fn resolve_service(&self, ip: IpAddr, port: u16, proto: Protocol) -> ServiceLookup {
        let (sid, sp) = if let Some(sid) = self.service_by_ip(ip) {
            let svc = &self.services[sid];
            match svc
                .ports
                .iter()
                .find(|p| p.port == port && p.protocol == proto)
            {
                Some(sp) => (sid, sp),
                None => return ServiceLookup::NoSuchPort(sid),
            }
        } else if let Some(&(sid, idx)) = self.node_ports.get(&(port, proto))
            && (self.node_by_ip(ip).is_some() || !self.host_pods_by_ip(ip).is_empty())
        {
            // A NodePort reached from inside the cluster is DNATed like the ClusterIP.
            (sid, &self.services[sid].ports[idx])
        } else {
            return ServiceLookup::NotService;
        };
        let svc = &self.services[sid];
        let family_ok = |a: &IpAddr| a.is_ipv4() == ip.is_ipv4();
        let slices = self.endpoint_slices(&svc.namespace, &svc.name);
        let mut ready = Vec::new();
        let mut all = Vec::new();
        if !slices.is_empty() {
            for s in slices {
                let Some(slp) = s
                    .ports
                    .iter()
                    .find(|p| p.name == sp.name && p.protocol == proto)
                else {
                    continue;
                };
                for e in &s.endpoints {
                    for a in e.addresses.iter().filter(|a| family_ok(a)) {
                        let pod = e
                            .pod
                            .as_ref()
                            .and_then(|n| self.pod_by_name(&svc.namespace, n))
                            .or_else(|| self.pod_by_ip(*a));
                        let b = ServiceBackend {
                            ip: *a,
                            port: slp.port,
                            pod,
                        };
                        if e.ready {
                            ready.push(b.clone());
                        }
                        all.push(b);
                    }
                }
            }
        } else if let Some(sel) = &svc.selector {
            for p in self.pods_in_namespace(&svc.namespace) {
                let pod = &self.pods[p];
                if pod.terminated || !sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v)) {
                    continue;
                }
                let target = match &sp.target_port {
                    TargetPort::Number(n) => Some(*n),
                    TargetPort::Name(name) => pod
                        .ports
                        .iter()
                        .find(|c| c.name.as_deref() == Some(name) && c.protocol == proto)
                        .map(|c| c.port),
                };
                let Some(target) = target else { continue };
                for a in pod.ips.iter().filter(|a| family_ok(a)) {
                    let b = ServiceBackend {
                        ip: *a,
                        port: target,
                        pod: Some(p),
                    };
                    // The EndpointSlice controller would list a pod that is not running as a
                    // not-ready endpoint: the same fallback as for slices applies.
                    if pod.running {
                        ready.push(b.clone());
                    }
                    all.push(b);
                }
            }
        }
        let mut backends = if ready.is_empty() { all } else { ready };
        backends.sort();
        backends.dedup();
        ServiceLookup::Resolved {
            service: sid,
            port: sp.clone(),
            backends,
        }
    }

    /// The target port of Service `sid` for the given Service port and protocol, resolved to
    /// numbers over its backends (several when named ports differ between pods).
    pub fn service_target_ports(&self, sid: ServiceId, port: u16, proto: Protocol) -> Vec<u16> {
        let Some(svc) = self.services.get(sid) else {
            return Vec::new();
        };
        let Some(ip) = svc.cluster_ips.first().or(svc.external_ips.first()) else {
            return Vec::new();
        };
        match self.resolve_service(*ip, port, proto) {
            ServiceLookup::Resolved { backends, .. } => {
                let set: BTreeSet<u16> = backends.iter().map(|b| b.port).collect();
                set.into_iter().collect()
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1 as core;

    fn pod(name: &str, ip: &str, phase: &str) -> core::Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "ns", "name": name, "labels": {"app": "a"}},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": phase, "podIP": ip},
        }))
        .expect("pod")
    }

    fn backends(pods: &[core::Pod]) -> Vec<IpAddr> {
        let svc: core::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": "ns", "name": "s"},
            "spec": {"clusterIP": "10.96.0.5", "selector": {"app": "a"}, "ports": [{"port": 80}]},
        }))
        .expect("service");
        let c = Cluster::from_objects(&[], &[], pods, &[svc], &[], &[], &[], &[], &[], &[], &[])
            .expect("valid");
        let ip = "10.96.0.5".parse().expect("ip");
        match c.resolve_service(ip, 80, Protocol::Tcp) {
            ServiceLookup::Resolved { backends, .. } => backends.iter().map(|b| b.ip).collect(),
            other => panic!("{other:?}"),
        }
    }

    /// Without EndpointSlices, pods that are not running are backends only when no pod is.
    #[test]
    fn selector_fallback_prefers_running_pods() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let running = pod("r", "10.0.0.1", "Running");
        let pending = pod("p", "10.0.0.2", "Pending");
        let done = pod("d", "10.0.0.3", "Succeeded");
        assert_eq!(
            backends(&[running, pending.clone(), done.clone()]),
            [ip("10.0.0.1")]
        );
        assert_eq!(backends(&[pending, done]), [ip("10.0.0.2")]);
    }
}
