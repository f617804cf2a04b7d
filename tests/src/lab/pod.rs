//! A pod of a running lab, and running processes in it.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;

use crate::client;
use crate::error::{Error, Result};
use crate::spec::{ContainerPort, Owner, Qos};
use crate::sys;

/// A pod of a running lab.
#[derive(Debug)]
pub struct Pod {
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) uid: String,
    pub(super) labels: BTreeMap<String, String>,
    pub(super) ipv4: Ipv4Addr,
    pub(super) ipv6: Ipv6Addr,
    pub(super) netns_name: String,
    pub(super) netns_fd: Arc<OwnedFd>,
    pub(super) cgroup_path: PathBuf,
    pub(super) cgroup_rel: String,
    pub(super) cgroup_id: u64,
    pub(super) container_id: String,
    pub(super) procs_fd: Arc<OwnedFd>,
    pub(crate) owner: Option<Owner>,
    pub(crate) ports: Vec<ContainerPort>,
    pub(crate) container: String,
    pub(crate) image: String,
    pub(crate) qos: Qos,
    pub(crate) runtime_scheme: &'static str,
    pub(super) host_network: bool,
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
