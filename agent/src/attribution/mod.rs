//! Attribution: from a kernel cgroup id to a cgroup path and, when it is a pod's, to the pod.
//!
//! - [`cgroupfs`]: find the cgroup v2 mount, resolve ids (directory inodes) to paths.
//! - [`path`]: parse the pod UID and container id out of a kubelet cgroup path.
//! - [`pods`]: pod metadata by UID, from a cluster snapshot; [`kube_watch`] fills it from the API.
//! - [`Attributor`] ties them together for the capture loop.

pub mod cgroupfs;
pub mod kube_watch;
pub mod path;
pub mod pods;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use leash_records::PodRef;

pub use cgroupfs::{CgroupPaths, find_cgroup2_mount};
pub use kube_watch::watch_pods;
pub use path::{PodCgroup, QosClass, parse_cgroup_path};
pub use pods::{OwnerRef, PodInfo, PodStore};

use crate::metrics::Metrics;

/// Errors of attribution.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No cgroup v2 filesystem is mounted where we looked.
    #[error(
        "no cgroup v2 mount found (checked {}); leash-agent needs the unified hierarchy: \
         mount it (e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`) or boot with \
         systemd.unified_cgroup_hierarchy=1",
        display_paths(checked)
    )]
    NoCgroup2Mount {
        /// The candidate paths that were not cgroup v2.
        checked: Vec<PathBuf>,
    },
    /// `statfs(2)` failed on a path.
    #[error("statfs {path}")]
    Statfs {
        /// The path passed to statfs.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A path given as a cgroup is not below the cgroup v2 mount.
    #[error("{path} is not below the cgroup v2 mount {mount}")]
    OutsideMount {
        /// The offending path.
        path: PathBuf,
        /// The cgroup v2 mount.
        mount: PathBuf,
    },
    /// Reading the cgroup tree failed.
    #[error("reading cgroup directory {path}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The cluster snapshot could not be loaded.
    #[error(transparent)]
    Snapshot(#[from] leash_records::SnapshotError),
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `Result` with attribution's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who a kernel record belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribution {
    /// The cgroup path relative to the cgroup v2 mount, starting with `/`. When the id could not
    /// be resolved (the cgroup vanished before a scan saw it) this is `cgroupid:<id>`, which
    /// cannot be confused with a path.
    pub cgroup: Arc<str>,
    /// The pod UID parsed from the path, even when the metadata source does not know the pod.
    pub pod_uid: Option<Arc<str>>,
    /// The container id parsed from the path.
    pub container_id: Option<Arc<str>>,
    /// The pod's metadata, when the path names a pod the metadata source knows.
    pub pod: Option<Arc<PodInfo>>,
}

impl Attribution {
    /// An attribution for a process outside any pod (or before metadata is known).
    pub fn cgroup_only(cgroup: impl Into<Arc<str>>) -> Self {
        Self {
            cgroup: cgroup.into(),
            pod_uid: None,
            container_id: None,
            pod: None,
        }
    }

    /// The pod as the v1 record contract names it (`null` when unattributed).
    pub fn pod_ref(&self) -> Option<PodRef> {
        self.pod.as_ref().map(|p| p.pod_ref())
    }

    /// The key that groups per-pod state (the DNS cache): the pod UID, or the cgroup path for
    /// processes outside any pod. All containers of a pod share one key.
    pub fn pod_key(&self) -> &str {
        self.pod_uid.as_deref().unwrap_or(&self.cgroup)
    }
}

/// What a cgroup id resolved to, cached: ids are never reused, so this never goes stale.
#[derive(Debug)]
struct Resolved {
    cgroup: Arc<str>,
    pod_uid: Option<Arc<str>>,
    container_id: Option<Arc<str>>,
}

/// Maps cgroup ids to [`Attribution`]s: path cache, path parser and pod metadata together.
///
/// Pod metadata is looked up on every call rather than cached, so a pod the kube watch learns
/// about after its first packets is attributed from then on.
#[derive(Debug)]
pub struct Attributor {
    paths: CgroupPaths,
    pods: PodStore,
    resolved: HashMap<u64, Arc<Resolved>>,
    capacity: usize,
    metrics: Metrics,
}

impl Attributor {
    /// Combines a cgroup path resolver and a pod store.
    pub fn new(paths: CgroupPaths, pods: PodStore, metrics: Metrics) -> Self {
        Self {
            paths,
            pods,
            resolved: HashMap::new(),
            capacity: CgroupPaths::DEFAULT_CAPACITY,
            metrics,
        }
    }

    /// The pod store (to share with a kube watch).
    pub fn pods(&self) -> &PodStore {
        &self.pods
    }

    /// Attributes a record from cgroup `cgroup_id`.
    ///
    /// A pod UID found in the path but unknown to the pod store gives `pod: None` (with
    /// `pod_uid` kept) and counts an attribution miss.
    pub fn attribute(&mut self, cgroup_id: u64) -> Attribution {
        self.attribute_inner(cgroup_id, None)
    }

    /// Attributes an event that cgroup `cgroup_id` produced at `seen_at`; a cgroup created
    /// after the last walk of the tree is found by a new walk (see
    /// [`CgroupPaths::resolve_seen`]). The agent's loop uses this one.
    pub fn attribute_seen(&mut self, cgroup_id: u64, seen_at: SystemTime) -> Attribution {
        self.attribute_inner(cgroup_id, Some(seen_at))
    }

    fn attribute_inner(&mut self, cgroup_id: u64, seen_at: Option<SystemTime>) -> Attribution {
        let resolved = match self.resolved.get(&cgroup_id) {
            Some(r) => r.clone(),
            None => match match seen_at {
                Some(at) => self.paths.resolve_seen(cgroup_id, at),
                None => self.paths.resolve(cgroup_id),
            } {
                Some(cgroup) => {
                    let parsed = parse_cgroup_path(&cgroup);
                    let r = Arc::new(Resolved {
                        pod_uid: parsed.as_ref().map(|p| Arc::from(p.pod_uid.as_str())),
                        container_id: parsed.and_then(|p| p.container_id).map(Arc::from),
                        cgroup,
                    });
                    if self.resolved.len() >= self.capacity {
                        // Rare (more live cgroups than capacity): start over rather than track age.
                        self.resolved.clear();
                    }
                    self.resolved.insert(cgroup_id, r.clone());
                    r
                }
                None => return Attribution::cgroup_only(format!("cgroupid:{cgroup_id}")),
            },
        };
        let pod = resolved.pod_uid.as_deref().and_then(|uid| {
            let pod = self.pods.get(uid);
            if pod.is_none() {
                self.metrics.attribution_misses.inc();
            }
            pod
        });
        Attribution {
            cgroup: resolved.cgroup.clone(),
            pod_uid: resolved.pod_uid.clone(),
            container_id: resolved.container_id.clone(),
            pod,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leash_lab::k8s;
    use std::os::unix::fs::MetadataExt;

    const UID: &str = "6f1c2f9e-3b0a-4c1e-9a7d-2d4b5e6f7a8b";
    const CID: &str = "4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c";

    #[test]
    fn attributes_pods_misses_and_plain_cgroups() {
        let dir = tempfile::tempdir().unwrap();
        let pod_dir = dir.path().join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope",
            UID.replace('-', "_")
        ));
        let unknown_uid = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";
        let unknown_dir = dir.path().join(format!("kubepods/pod{unknown_uid}/{CID}"));
        let sys_dir = dir.path().join("system.slice/sshd.service");
        for d in [&pod_dir, &unknown_dir, &sys_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        let ino = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();

        let metrics = Metrics::new();
        let store = PodStore::new(metrics.clone());
        store.upsert(
            PodInfo::from_pod(
                &k8s::pod("shop", "payment-7d4-x2")
                    .uid(UID)
                    .node("n1")
                    .build(),
            )
            .unwrap(),
        );
        let mut attributor = Attributor::new(
            CgroupPaths::new(dir.path(), metrics.clone()),
            store.clone(),
            metrics.clone(),
        );

        let a = attributor.attribute(ino(&pod_dir));
        assert_eq!(
            a.pod_ref().map(|p| (p.namespace, p.name)),
            Some(("shop".to_owned(), "payment-7d4-x2".to_owned()))
        );
        assert_eq!(a.container_id.as_deref(), Some(CID));
        assert!(a.cgroup.starts_with("/kubepods.slice/"));
        assert_eq!(a.pod_key(), UID);

        let miss = attributor.attribute(ino(&unknown_dir));
        assert_eq!(miss.pod, None);
        assert_eq!(miss.pod_uid.as_deref(), Some(unknown_uid));
        assert_eq!(miss.pod_key(), unknown_uid);
        assert_eq!(metrics.attribution_misses.get(), 1);

        // The pod shows up later (kube watch latency): attributed from then on.
        store.upsert(
            PodInfo::from_pod(&k8s::pod("ns", "late").uid(unknown_uid).node("n1").build()).unwrap(),
        );
        assert_eq!(
            attributor
                .attribute(ino(&unknown_dir))
                .pod
                .map(|p| p.name.clone()),
            Some("late".to_owned())
        );

        let sys = attributor.attribute(ino(&sys_dir));
        assert_eq!(&*sys.cgroup, "/system.slice/sshd.service");
        assert_eq!(sys.pod_uid, None);
        assert_eq!(sys.pod_key(), "/system.slice/sshd.service");
        assert_eq!(metrics.attribution_misses.get(), 1);

        let gone = attributor.attribute(u64::MAX);
        assert_eq!(&*gone.cgroup, format!("cgroupid:{}", u64::MAX));
        assert_eq!(gone.pod, None);
    }

    #[test]
    fn no_mount_error_is_clear() {
        let err = Error::NoCgroup2Mount {
            checked: vec!["/sys/fs/cgroup".into(), "/sys/fs/cgroup/unified".into()],
        };
        let text = err.to_string();
        assert!(text.contains("no cgroup v2 mount"), "{text}");
        assert!(text.contains("/sys/fs/cgroup/unified"), "{text}");
    }
}
