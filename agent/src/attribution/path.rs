//! Parsing a pod UID and container id out of a cgroup v2 path.
//!
//! The kubelet lays pods out in one of two shapes, depending on its cgroup driver:
//!
//! - systemd: `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_with_underscores>.slice/<runtime>-<id>.scope`
//! - cgroupfs: `kubepods/<qos>/pod<uid>/<id>`
//!
//! Guaranteed pods have no QoS level (`kubepods-pod<uid>.slice`, `kubepods/pod<uid>`). Both shapes
//! may sit below any prefix: kind nests them in `/kubelet.slice/kubelet-kubepods.slice/…`, tests in
//! their own sub-tree. The parser therefore looks at each path component on its own rather than
//! anchoring at the root.

/// The QoS class a pod's cgroup is filed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosClass {
    /// No QoS level in the path: the pod sits directly under `kubepods`.
    Guaranteed,
    /// `burstable`.
    Burstable,
    /// `besteffort`.
    BestEffort,
}

impl QosClass {
    fn from_token(token: &str) -> Option<Self> {
        match token {
            "burstable" => Some(Self::Burstable),
            "besteffort" => Some(Self::BestEffort),
            _ => None,
        }
    }
}

/// What a cgroup path says about the pod and container it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod UID, with dashes (systemd's underscores are converted back).
    pub pod_uid: String,
    /// The QoS class the pod is filed under.
    pub qos: QosClass,
    /// The container id, when the path goes below the pod level and names a container.
    pub container_id: Option<String>,
}

/// Parses the pod and container a cgroup path belongs to; `None` for paths outside any pod.
///
/// When several pod levels appear (a kubelet nested inside another pod), the deepest one wins:
/// it is the pod closest to the process. Never panics, whatever the input.
pub fn parse_cgroup_path(path: &str) -> Option<PodCgroup> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut found = None;
    for (index, component) in components.iter().enumerate() {
        let pod = systemd_pod(component).or_else(|| cgroupfs_pod(&components, index));
        if let Some((pod_uid, qos)) = pod {
            let container_id = components.get(index + 1).and_then(|c| container_id(c));
            found = Some(PodCgroup {
                pod_uid,
                qos,
                container_id,
            });
        }
    }
    found
}

/// `kubepods-burstable-pod<uid>.slice`, `kubepods-pod<uid>.slice`, `kubelet-kubepods-…-pod<uid>.slice`.
fn systemd_pod(component: &str) -> Option<(String, QosClass)> {
    let stem = component.strip_suffix(".slice")?;
    let (parents, pod) = stem.rsplit_once('-')?;
    let uid = pod.strip_prefix("pod")?;
    // systemd encodes the slice hierarchy in the name: the parent must be a kubepods slice.
    let (before, last) = match parents.rsplit_once('-') {
        Some((before, last)) => (Some(before), last),
        None => (None, parents),
    };
    let qos = if last == "kubepods" {
        QosClass::Guaranteed
    } else {
        let qos = QosClass::from_token(last)?;
        if before?.rsplit('-').next()? != "kubepods" {
            return None;
        }
        qos
    };
    let uid = uid.replace('_', "-");
    is_pod_uid(&uid).then_some((uid, qos))
}

/// `kubepods/<qos>/pod<uid>` or `kubepods/pod<uid>`, judged at `components[index]`.
fn cgroupfs_pod(components: &[&str], index: usize) -> Option<(String, QosClass)> {
    let uid = components.get(index)?.strip_prefix("pod")?;
    if !is_pod_uid(uid) {
        return None;
    }
    let parent = *components.get(index.checked_sub(1)?)?;
    if parent == "kubepods" {
        return Some((uid.to_owned(), QosClass::Guaranteed));
    }
    let qos = QosClass::from_token(parent)?;
    let grandparent = *components.get(index.checked_sub(2)?)?;
    (grandparent == "kubepods").then(|| (uid.to_owned(), qos))
}

/// A container component: `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope`
/// (systemd driver, also without `.scope`), or a bare id (cgroupfs driver).
fn container_id(component: &str) -> Option<String> {
    let stem = component.strip_suffix(".scope").unwrap_or(component);
    let id = ["cri-containerd-", "crio-", "docker-", "containerd-"]
        .iter()
        .find_map(|prefix| stem.strip_prefix(prefix))
        .unwrap_or(stem);
    // Runtime ids are hex digests; `crio-conmon-<id>` (the monitor, not the container) fails here.
    let plausible = id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit());
    plausible.then(|| id.to_owned())
}

/// A Kubernetes pod UID: an RFC 4122 UUID, or the 32-hex-digit hash the kubelet gives static pods.
pub fn is_pod_uid(uid: &str) -> bool {
    let bytes = uid.as_bytes();
    match bytes.len() {
        32 => bytes.iter().all(u8::is_ascii_hexdigit),
        36 => bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UID: &str = "6f1c2f9e-3b0a-4c1e-9a7d-2d4b5e6f7a8b";
    const UID_US: &str = "6f1c2f9e_3b0a_4c1e_9a7d_2d4b5e6f7a8b";
    const CID: &str = "4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c";

    fn pod(path: &str) -> PodCgroup {
        parse_cgroup_path(path).unwrap_or_else(|| panic!("no pod in {path}"))
    }

    #[test]
    fn systemd_driver_containerd() {
        let p = pod(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{CID}.scope"
        ));
        assert_eq!(p.pod_uid, UID);
        assert_eq!(p.qos, QosClass::Burstable);
        assert_eq!(p.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn systemd_driver_crio_and_docker() {
        let crio = pod(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/crio-{CID}.scope"
        ));
        assert_eq!(crio.qos, QosClass::BestEffort);
        assert_eq!(crio.container_id.as_deref(), Some(CID));
        let docker = pod(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/docker-{CID}.scope"
        ));
        assert_eq!(docker.pod_uid, UID);
        assert_eq!(docker.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn systemd_guaranteed_without_qos_level() {
        let p = pod(&format!(
            "/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{CID}.scope"
        ));
        assert_eq!(p.pod_uid, UID);
        assert_eq!(p.qos, QosClass::Guaranteed);
        assert_eq!(p.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn cgroupfs_driver() {
        let p = pod(&format!("/kubepods/burstable/pod{UID}/{CID}"));
        assert_eq!(p.pod_uid, UID);
        assert_eq!(p.qos, QosClass::Burstable);
        assert_eq!(p.container_id.as_deref(), Some(CID));
        let g = pod(&format!("/kubepods/pod{UID}/{CID}"));
        assert_eq!(g.qos, QosClass::Guaranteed);
        assert_eq!(g.container_id.as_deref(), Some(CID));
        let crio = pod(&format!("/kubepods/besteffort/pod{UID}/crio-{CID}"));
        assert_eq!(crio.qos, QosClass::BestEffort);
        assert_eq!(crio.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn kind_prefix() {
        let p = pod(&format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{CID}.scope"
        ));
        assert_eq!(p.pod_uid, UID);
        assert_eq!(p.qos, QosClass::BestEffort);
        assert_eq!(p.container_id.as_deref(), Some(CID));
        let g = pod(&format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod{UID_US}.slice/cri-containerd-{CID}.scope"
        ));
        assert_eq!(g.qos, QosClass::Guaranteed);
    }

    #[test]
    fn test_subtree_and_docker_in_docker_prefixes() {
        let lab = pod(&format!(
            "/leash-lab-123-0/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{CID}.scope"
        ));
        assert_eq!(lab.pod_uid, UID);
        let dind = pod(&format!("/docker/{CID}/kubepods/burstable/pod{UID}/{CID}"));
        assert_eq!(dind.pod_uid, UID);
        assert_eq!(dind.container_id.as_deref(), Some(CID));
    }

    #[test]
    fn static_pod_hash_uid() {
        let p = pod(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod3b5c1d1e2f3a4b5c6d7e8f9a0b1c2d3e.slice/cri-containerd-{CID}.scope"
        ));
        assert_eq!(p.pod_uid, "3b5c1d1e2f3a4b5c6d7e8f9a0b1c2d3e");
    }

    #[test]
    fn pod_level_and_below_container() {
        let at_pod = pod(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice"
        ));
        assert_eq!(at_pod.pod_uid, UID);
        assert_eq!(at_pod.container_id, None);
        // systemd running inside a container creates its own children below the scope.
        let nested = pod(&format!(
            "/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{CID}.scope/init.scope"
        ));
        assert_eq!(nested.container_id.as_deref(), Some(CID));
        // crio's conmon is not a container.
        let conmon = pod(&format!(
            "/kubepods.slice/kubepods-pod{UID_US}.slice/crio-conmon-{CID}.scope"
        ));
        assert_eq!(conmon.pod_uid, UID);
        assert_eq!(conmon.container_id, None);
    }

    #[test]
    fn deepest_pod_wins() {
        let inner = "0a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9";
        let p = pod(&format!(
            "/kubepods/burstable/pod{UID}/{CID}/kubepods/besteffort/pod{inner}/{CID}"
        ));
        assert_eq!(p.pod_uid, inner);
        assert_eq!(p.qos, QosClass::BestEffort);
    }

    #[test]
    fn non_pod_paths() {
        for path in [
            "/",
            "",
            "/system.slice/containerd.service",
            "/system.slice/kubelet.service",
            "/system.slice/docker-0123456789abcdef.scope",
            "/user.slice/user-1000.slice/session-3.scope",
            "/user.slice/user-1000.slice/user@1000.service/app.slice/podman-1234.scope",
            "/init.scope",
            "/kubepods.slice",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods/burstable",
            "/kubepods",
            "/kubelet.slice/kubelet-kubepods.slice",
            "/machine.slice/libpod-pod1234.slice",
        ] {
            assert_eq!(parse_cgroup_path(path), None, "{path}");
        }
    }

    #[test]
    fn malformed_uids_rejected() {
        for path in [
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podnot_a_uid.slice",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod.slice",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6f1c2f9e_3b0a_4c1e_9a7d_2d4b5e6f7a8.slice",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6f1c2f9e_3b0a_4c1e_9a7d_2d4b5e6f7a8bz.slice",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podzf1c2f9e_3b0a_4c1e_9a7d_2d4b5e6f7a8b.slice",
            "/kubepods/burstable/pod6f1c2f9e-3b0a-4c1e-9a7d",
            "/kubepods/burstable/pod6f1c2f9e3b0a4c1e9a7d2d4b5e6f7a8b00",
            "/kubepods/burstable/pod6f1c2f9e-3b0a-4c1e-9a7d-2d4b5e6f7a8b-",
            "/kubepods/burstable/pod6f1c2f9e+3b0a+4c1e+9a7d+2d4b5e6f7a8b",
        ] {
            assert_eq!(parse_cgroup_path(path), None, "{path}");
        }
    }

    #[test]
    fn pod_component_needs_kubepods_parent() {
        // A `pod<uid>` directory outside the kubepods hierarchy is not a pod.
        assert_eq!(
            parse_cgroup_path(&format!("/system.slice/pod{UID}/{CID}")),
            None
        );
        assert_eq!(
            parse_cgroup_path(&format!("/other/burstable/pod{UID}")),
            None
        );
        assert_eq!(
            parse_cgroup_path(&format!(
                "/machine.slice/machine-burstable-pod{UID_US}.slice"
            )),
            None
        );
        assert_eq!(
            parse_cgroup_path(&format!("/kubepods.slice/kubepods-gold-pod{UID_US}.slice")),
            None
        );
    }

    #[test]
    fn uid_shapes() {
        assert!(is_pod_uid(UID));
        assert!(is_pod_uid("3b5c1d1e2f3a4b5c6d7e8f9a0b1c2d3e"));
        assert!(!is_pod_uid("3b5c1d1e-2f3a4b5c6d7e8f9a0b1c2d3e"));
        assert!(!is_pod_uid(""));
    }

    proptest! {
        #[test]
        fn never_panics(s in ".*") {
            let _ = parse_cgroup_path(&s);
        }

        #[test]
        fn never_panics_on_path_like_input(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("kubepods".to_owned()),
                    Just("kubepods.slice".to_owned()),
                    Just("burstable".to_owned()),
                    "[a-z_-]{0,12}(pod)?[0-9a-f_-]{0,40}(\\.slice|\\.scope)?",
                ],
                0..8,
            )
        ) {
            let path = format!("/{}", parts.join("/"));
            if let Some(p) = parse_cgroup_path(&path) {
                prop_assert!(is_pod_uid(&p.pod_uid));
            }
        }

        #[test]
        fn roundtrip_systemd(uid in "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                             cid in "[0-9a-f]{64}",
                             prefix in "(/[a-z]{1,8}){0,3}") {
            let path = format!(
                "{prefix}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{cid}.scope",
                uid.replace('-', "_")
            );
            let p = parse_cgroup_path(&path);
            prop_assert_eq!(p, Some(PodCgroup { pod_uid: uid, qos: QosClass::BestEffort, container_id: Some(cid) }));
        }
    }
}
