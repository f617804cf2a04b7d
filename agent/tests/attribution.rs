//! Attribution against the real cgroup v2 tree: lab pods in kubelet-shaped cgroups, metadata from
//! the lab's cluster snapshot file.
//!
//! Needs root (the lab creates cgroups and namespaces). Without it the test skips with a reason,
//! unless `LEASH_REQUIRE_PRIVILEGED=1`.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step must fail the test loudly"
)]

use std::os::fd::AsRawFd;
use std::process::Stdio;

use leash_agent::attribution::{
    Attributor, CgroupPaths, PodStore, QosClass, cgroupfs, find_cgroup2_mount, parse_cgroup_path,
};
use leash_agent::metrics::Metrics;
use leash_lab::{CgroupDriver, Lab, Owner, PodSpec, Qos, Runtime};

/// The kernel's own cgroup id of `dir`, from the file handle `name_to_handle_at(2)` returns on
/// cgroupfs (an 8-byte id), to check that "cgroup id = directory inode" holds on this kernel.
fn kernel_cgroup_id(dir: &std::path::Path) -> u64 {
    #[repr(C)]
    struct Handle {
        handle_bytes: u32,
        handle_type: i32,
        f_handle: [u8; 8],
    }
    let file = std::fs::File::open(dir).unwrap();
    let mut handle = Handle {
        handle_bytes: 8,
        handle_type: 0,
        f_handle: [0; 8],
    };
    let mut mount_id = 0;
    // SAFETY: `handle` is a file_handle with room for the 8 bytes it announces; the path is "".
    let rc = unsafe {
        libc::name_to_handle_at(
            file.as_raw_fd(),
            c"".as_ptr(),
            (&raw mut handle).cast(),
            &mut mount_id,
            libc::AT_EMPTY_PATH,
        )
    };
    assert_eq!(
        rc,
        0,
        "name_to_handle_at: {}",
        std::io::Error::last_os_error()
    );
    u64::from_ne_bytes(handle.f_handle)
}

#[test]
fn lab_pods_attributed_through_snapshot() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(
            PodSpec::new("shop", "payment")
                .label("app", "payment")
                .owner_deployment("payment"),
        )
        .pod(
            PodSpec::new("shop", "cart")
                .qos(Qos::BestEffort)
                .runtime(Runtime::Crio)
                .owner(Owner::StatefulSet("cart".into())),
        )
        .pod(
            PodSpec::new("batch", "report")
                .qos(Qos::Guaranteed)
                .cgroup_driver(CgroupDriver::Cgroupfs)
                .runtime(Runtime::Docker),
        )
        .pod(PodSpec::new("kube-system", "proxy").host_network())
        .pod(PodSpec::new("shop", "ghost"))
        .build()
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let snapshot_path = dir.path().join("snapshot.yaml");
    lab.write_snapshot(&snapshot_path).unwrap();

    let metrics = Metrics::new();
    let store = PodStore::load_snapshot(&snapshot_path, metrics.clone()).unwrap();
    // A pod that exists as a cgroup but that the metadata source does not know.
    let ghost = lab.pod("shop/ghost");
    store.remove(ghost.uid());

    let mount = find_cgroup2_mount().unwrap();
    assert!(cgroupfs::is_cgroup2(&mount).unwrap());
    assert_eq!(mount, lab.cgroup_mount());
    let paths = CgroupPaths::new(&mount, metrics.clone())
        .with_scan_root(lab.cgroup_root())
        .unwrap();
    let mut attributor = Attributor::new(paths, store, metrics.clone());

    for pod in lab.pods() {
        assert_eq!(
            kernel_cgroup_id(pod.cgroup_path()),
            pod.cgroup_id(),
            "{}",
            pod.key()
        );
        let a = attributor.attribute(pod.cgroup_id());
        assert_eq!(&*a.cgroup, pod.cgroup_rel(), "{}", pod.key());
        assert_eq!(a.pod_uid.as_deref(), Some(pod.uid()), "{}", pod.key());
        assert_eq!(
            a.container_id.as_deref(),
            Some(pod.container_id()),
            "{}",
            pod.key()
        );
        if pod.key() == "shop/ghost" {
            assert_eq!(a.pod, None);
            assert_eq!(a.pod_key(), ghost.uid());
            continue;
        }
        let info = a
            .pod
            .unwrap_or_else(|| panic!("{} not attributed", pod.key()));
        assert_eq!(
            (info.namespace.as_str(), info.name.as_str()),
            (pod.namespace(), pod.name())
        );
        assert_eq!(&info.labels, pod.labels());
        assert_eq!(info.host_network, pod.is_host_network());
    }
    assert_eq!(metrics.attribution_misses.get(), 1);

    let mut owner = |key: &str| {
        attributor
            .attribute(lab.pod(key).cgroup_id())
            .pod
            .and_then(|p| p.owner.clone())
            .map(|o| (o.kind, o.name))
    };
    assert_eq!(
        owner("shop/cart"),
        Some(("StatefulSet".into(), "cart".into()))
    );
    assert_eq!(
        owner("shop/payment").map(|o| o.0),
        Some("ReplicaSet".into())
    );

    // QoS shapes parse as laid out.
    let qos = |key: &str| parse_cgroup_path(lab.pod(key).cgroup_rel()).map(|p| p.qos);
    assert_eq!(qos("shop/cart"), Some(QosClass::BestEffort));
    assert_eq!(qos("batch/report"), Some(QosClass::Guaranteed));

    // A real process in a pod: the kernel's view of its cgroup is the path we report.
    let payment = lab.pod("shop/payment");
    let mut child = payment
        .command("sleep")
        .arg("10")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v2 = proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap();
    assert_eq!(&*attributor.attribute(payment.cgroup_id()).cgroup, v2);

    // The lab's root itself is outside any pod but still has a path.
    let root_id =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(lab.cgroup_root()).unwrap());
    let root = attributor.attribute(root_id);
    assert_eq!(root.pod_uid, None);
    assert!(root.cgroup.starts_with("/leash-lab-"), "{}", root.cgroup);
}
