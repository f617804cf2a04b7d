//! Pod cgroups, shaped like the kubelet's under the lab's own sub-tree.

use std::fs;
use std::sync::Arc;

use super::addresses::LAB_PREFIX;
use super::plan::{Plan, PlannedPod};
use super::pod::Pod;
use super::{Lab, NetNs};
use crate::error::{Error, Result};
use crate::spec::{CgroupDriver, Qos};
use crate::sys;

impl PlannedPod {
    /// The cgroup path below the lab root, shaped like the kubelet's.
    pub(super) fn cgroup_rel_in_lab(&self) -> String {
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

impl Lab {
    /// Creates each planned pod's cgroup and records the pod, in its own network namespace
    /// (`pod_ns`, in plan order) or, for `hostNetwork` pods (`None`), the node's.
    pub(super) fn add_pods(
        &mut self,
        plan: &Plan,
        pod_ns: Vec<Option<NetNs>>,
        node: &NetNs,
    ) -> Result<()> {
        let id = &self.id;
        let cgroup_root = &self.cgroup_root;
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
            self.pods.push(Pod {
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
        Ok(())
    }
}
