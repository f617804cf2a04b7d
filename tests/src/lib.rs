//! The leash lab: a miniature Kubernetes node on one machine, for tests and the demo.
//!
//! A [`Lab`] is made of
//! - a **node** network namespace, the router of the lab (never the host's root namespace);
//! - **pods**: one network namespace each, joined to the node by a veth pair (`eth0` in the pod,
//!   `vp<i>` in the node), addressed from 198.51.100.0/25 and 2001:db8:1::/64 and routed by the
//!   node; each pod has a cgroup shaped like the kubelet's under the lab's own sub-tree
//!   `<cgroup2 mount>/leash-lab-<pid>-<n>/kubepods.slice/…` ([`Lab::cgroup_root`] is where an agent
//!   attaches);
//! - **external hosts** in an "external" namespace (203.0.113.0/24, 2001:db8:2::/64) behind the
//!   node, with TCP echo and UDP echo servers that count what they receive;
//! - **Services**: ClusterIPs from 198.51.100.128/26 (and 2001:db8:3::/64), implemented as
//!   nftables DNAT in the node namespace, port → targetPort, TCP and UDP, v4 and v6;
//! - optionally a **DNS server** ([`DnsConfig`]) in a `kube-system/coredns-lab` pod behind the
//!   `kube-system/kube-dns` Service at 198.51.100.138, over UDP and TCP.
//!
//! Every address comes from the documentation ranges; nothing is routed to the host. Servers are
//! threads of the test process whose sockets were created inside the lab's namespaces.
//! Dropping the lab stops the servers, kills every process in its cgroups and removes the
//! cgroups and namespaces (veths and nftables rules go with them). Labs are named
//! `leash-lab-<pid>-<n>`, so any number can run side by side; [`sweep_stale`] removes those of
//! dead processes.
//!
//! Processes run in a pod with [`Pod::command`] (any program) or [`Pod::run`] (the `lab-client`
//! binary of this crate: `tcp`, `udp-connected`, `udp-sendto`, `dns`; see its `--help`). The
//! child joins the pod's cgroup first and then enters its network namespace.
//!
//! `lab-client` is found by [`lab_client_path`]: `$LEASH_LAB_CLIENT` if set, else
//! `target/<profile>/lab-client` next to the running test executable; if it is missing there it
//! is built once with `cargo build -p leash-lab --bin lab-client` into the same target directory.
//! Tests of other crates may prefer to build it up front with that command.
//!
//! Addresses: pods get 198.51.100.2.. and 2001:db8:1::2.. in order (the node is .1 / ::1),
//! Services 198.51.100.129.. and 2001:db8:3::81.. (the DNS Service is always 198.51.100.138 /
//! 2001:db8:3::8a, `default/kubernetes` 198.51.100.129), external hosts what you give them in
//! 203.0.113.0/24 and 2001:db8:2::/64. Anything else is rejected with
//! [`Error::AddressNotAllowed`]. Note that a DNS answer through a ClusterIP comes back from
//! port 53 (conntrack reverses the DNAT); query the DNS pod's IP at its own port to see answers
//! from 5353.
//!
//! Besides the lab, the crate holds test tools that need no privileges: a fake Kubernetes API
//! server ([`fake_api`]), the shop demo ([`shop`]), a synthetic cluster and flow generator
//! for scale tests and benches ([`synthetic`]), and the stand-ins of a git host: an HTTP git
//! server with token authentication ([`git_server`]), a local OpenSSH server for git over SSH
//! ([`sshd`]), and GitHub and GitLab pull request APIs ([`forge`]); and a headless Chromium over
//! WebDriver ([`webdriver`]) for the web UI's tests, its benchmark and the demo's screenshot.
//!
//! ```no_run
//! use std::time::Duration;
//! use leash_lab::{DnsConfig, Lab, PodSpec, Port, Proto, ServicePort, ServiceSpec};
//!
//! # fn main() -> leash_lab::Result<()> {
//! if !leash_lab::require_privileged() {
//!     return Ok(()); // skipped, reason printed
//! }
//! let lab = Lab::builder()
//!     .pod(PodSpec::new("shop", "frontend").label("app", "frontend").owner_deployment("frontend"))
//!     .pod(
//!         PodSpec::new("shop", "payment")
//!             .label("app", "payment")
//!             .port(Some("http"), 8080, Proto::Tcp),
//!     )
//!     .service(
//!         ServiceSpec::new("shop", "payment")
//!             .selector("app", "payment")
//!             .port(ServicePort::tcp(80).target_named("http").name("http")),
//!     )
//!     .external("203.0.113.10", [Port::tcp(443), Port::udp(4433)])
//!     .external("2001:db8:2::10", [Port::tcp(443)])
//!     .dns(DnsConfig::new().with_stripe_example())
//!     .build()?;
//!
//! let vip = lab.service("shop/payment").cluster_ip().to_string();
//! let out = lab.pod("shop/frontend").run(&["tcp", &vip, "80", "--count", "2"])?;
//! assert_eq!(out.count("connected"), 2);
//! let pay = lab.pod("shop/payment").ipv4().to_string();
//! let stats = lab.wait_server_stats(&pay, Proto::Tcp, 8080, Duration::from_secs(2), |s| {
//!     s.connections >= 2
//! })?;
//! assert_eq!(stats.connections, 2);
//!
//! let dns = lab.pod("shop/frontend").run(&["dns", "198.51.100.138", "api.stripe.test", "A"])?;
//! assert_eq!(dns.json["rcode"], "NOERROR");
//! std::fs::write("/tmp/snapshot.yaml", lab.snapshot_yaml()?).ok();
//! # Ok(()) }
//! ```

mod client;
mod dns;
mod error;
pub mod fake_api;
pub mod forge;
pub mod git_server;
pub mod k8s;
mod lab;
pub mod markdown;
mod servers;
pub mod shop;
mod snapshot;
mod spec;
pub mod sshd;
pub mod synthetic;
mod sys;
pub mod webdriver;

use std::fs;
use std::path::Path;

use leash_records::error::Chain;

pub use client::{LAB_CLIENT_ENV, LEASH_BIN_ENV, lab_client_path, leash_path};
pub use dns::{
    DnsConfig, DnsFlavour, DnsRecord, DnsStats, LARGE_COUNT, LARGE_NAME, MALFORMED_NAME,
    SERVER_EDNS_PAYLOAD,
};
pub use error::{Error, Result};
pub use lab::{
    API_SERVER_PORT, API_VIP_V4, API_VIP_V6, ClientOutput, DNS_VIP_V4, DNS_VIP_V6,
    EXTERNAL_CIDR_V4, EXTERNAL_CIDR_V6, External, LAB_PREFIX, Lab, LabBuilder, NODE_EXT_IPV4,
    NODE_EXT_IPV6, NODE_IPV4, NODE_IPV6, POD_CIDR_V4, POD_CIDR_V6, Pod, SERVICE_CIDR_V4,
    SERVICE_CIDR_V6, Service, is_lab_address,
};
pub use servers::{Proto, ServerStats};
pub use snapshot::{snapshot_value, snapshot_yaml, write_snapshot};
pub use spec::{
    CgroupDriver, ContainerPort, Owner, PodSpec, Port, Qos, Runtime, ServicePort, ServiceSpec,
    TargetPort,
};
pub use sys::{CGROUP2_SUPER_MAGIC, cgroup2_mount, children_peak_rss_kb};

/// Environment variable that turns privileged-test skips into failures (set by CI).
pub const REQUIRE_PRIVILEGED_ENV: &str = "LEASH_REQUIRE_PRIVILEGED";

/// Checks that a lab can be built here: root, a cgroup v2 mount, `ip` and `nft`, and that a
/// network namespace can be created.
pub fn check_privileged() -> Result<()> {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::NotPrivileged(
            "not running as root (need CAP_SYS_ADMIN and CAP_NET_ADMIN for namespaces and cgroups)"
                .into(),
        ));
    }
    sys::cgroup2_mount()?;
    for tool in ["ip", "nft"] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            || ["/usr/sbin", "/sbin", "/usr/bin"]
                .iter()
                .any(|d| Path::new(d).join(tool).is_file());
        if !found {
            return Err(Error::NotPrivileged(format!(
                "`{tool}` is not installed (run ./scripts/setup.sh)"
            )));
        }
    }
    // A throwaway thread tries to unshare its network namespace; the namespace dies with it.
    std::thread::spawn(|| {
        // SAFETY: plain syscall affecting only this thread.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(Error::NotPrivileged(format!(
                "unshare(CLONE_NEWNET) failed: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(Error::NotPrivileged("probe thread panicked".into())))
}

/// The skip-or-fail rule for privileged tests. Returns `true` when the lab can run. Otherwise
/// prints the reason and returns `false` (the test should return early), or panics with the
/// reason when `LEASH_REQUIRE_PRIVILEGED=1`.
pub fn require_privileged() -> bool {
    match check_privileged() {
        Ok(()) => true,
        Err(e) => {
            if std::env::var(REQUIRE_PRIVILEGED_ENV).is_ok_and(|v| v == "1") {
                panic!(
                    "{REQUIRE_PRIVILEGED_ENV}=1 but the lab cannot run: {}",
                    Chain(&e)
                );
            }
            eprintln!("SKIPPED: the lab cannot run here: {}", Chain(&e));
            false
        }
    }
}

/// Owner pid of a `leash-lab-<pid>-…` name.
fn owner_pid(name: &str) -> Option<i32> {
    name.strip_prefix(LAB_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Removes network namespaces and cgroups of labs whose owning process is gone (e.g. after a
/// test binary was killed). Labs of live processes are never touched. Returns what was removed.
pub fn sweep_stale() -> Vec<String> {
    let mut removed = Vec::new();
    if let Ok(rd) = fs::read_dir(sys::NETNS_RUN_DIR) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = owner_pid(&name)
                && !sys::pid_alive(pid)
                && sys::delete_netns(&name).is_ok()
            {
                removed.push(format!("netns {name}"));
            }
        }
    }
    if let Ok(mount) = sys::cgroup2_mount()
        && let Ok(rd) = fs::read_dir(&mount)
    {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = owner_pid(&name)
                && !sys::pid_alive(pid)
                && sys::remove_cgroup_tree(&e.path()).is_ok()
            {
                removed.push(format!("cgroup {}", e.path().display()));
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests share a lab between client threads.
    #[test]
    fn lab_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Lab>();
        check::<Pod>();
    }

    #[test]
    fn owner_pid_parses_lab_names_only() {
        assert_eq!(owner_pid("leash-lab-123-4-node"), Some(123));
        assert_eq!(owner_pid("leash-lab-77-0"), Some(77));
        assert_eq!(owner_pid("leash-lab-x-0"), None);
        assert_eq!(owner_pid("cni-1234"), None);
    }

    #[test]
    fn uids_are_uuid_shaped_and_distinct() {
        let a = lab::uid_for(&["pod", "1-0", "shop/a"]);
        let b = lab::uid_for(&["pod", "1-1", "shop/a"]);
        assert_ne!(a, b);
        let groups: Vec<usize> = a.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12]);
        assert!(a.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
    }

    #[test]
    fn lab_addresses_are_documentation_ranges_only() {
        for ok in ["198.51.100.7", "203.0.113.200", "2001:db8:2::10"] {
            assert!(is_lab_address(ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "192.0.2.1",
            "10.0.0.1",
            "fd00::1",
            "2001:db9::1",
            "127.0.0.1",
        ] {
            assert!(!is_lab_address(bad.parse().unwrap()), "{bad}");
        }
    }
}
