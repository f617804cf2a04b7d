//! The lab's error type.

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

/// Everything that can go wrong while building, using or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The lab needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create namespaces and cgroups.
    #[error("the lab needs root privileges: {0}")]
    NotPrivileged(String),
    /// No cgroup v2 mount was found (checked /sys/fs/cgroup, /sys/fs/cgroup/unified, /proc/self/mountinfo).
    #[error(
        "no cgroup v2 mount found (checked /sys/fs/cgroup, /sys/fs/cgroup/unified and /proc/self/mountinfo)"
    )]
    NoCgroup2,
    /// A system call failed.
    #[error("{syscall}({what}) failed")]
    Syscall {
        /// Name of the system call, e.g. `setns`.
        syscall: &'static str,
        /// What it was applied to.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        /// What was attempted, e.g. `mkdir`.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// An external command could not be started.
    #[error("cannot run `{cmd}`")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The OS error.
        source: io::Error,
    },
    /// An external command exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line (and, for batches, the input).
        cmd: String,
        /// The exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The lab description is invalid (duplicate pod, unknown namespace, ...).
    #[error("invalid lab configuration: {0}")]
    Config(String),
    /// An address lies outside the documentation ranges the lab may use.
    #[error("address {addr} is not allowed here: the lab uses only {allowed}")]
    AddressNotAllowed {
        /// The rejected address.
        addr: IpAddr,
        /// The range(s) allowed for that role.
        allowed: &'static str,
    },
    /// An address string did not parse.
    #[error("invalid IP address {0:?}")]
    BadAddress(String),
    /// No pod, service or server with that key exists in the lab.
    #[error("no {kind} {key:?} in this lab")]
    NotFound {
        /// `pod`, `service`, `server`.
        kind: &'static str,
        /// The key that was looked up.
        key: String,
    },
    /// A workspace binary (`lab-client`, `leash`) could not be found or built.
    #[error("workspace binary: {0}")]
    ClientBinary(String),
    /// `lab-client` printed something that is not the expected JSON.
    #[error(
        "lab-client {args:?} printed no JSON result (status {status}): stdout {stdout:?} stderr {stderr:?}"
    )]
    ClientOutput {
        /// Its arguments.
        args: Vec<String>,
        /// Its exit status.
        status: String,
        /// Its stdout.
        stdout: String,
        /// Its stderr.
        stderr: String,
    },
    /// Encoding a DNS message failed.
    #[error("DNS encoding of {name}: {message}")]
    Dns {
        /// The name being answered.
        name: String,
        /// What hickory-proto reported.
        message: String,
    },
    /// Rendering the snapshot failed.
    #[error("rendering the cluster snapshot: {0}")]
    Snapshot(String),
    /// A server thread could not start.
    #[error("server {addr} {proto}: {message}")]
    Server {
        /// Listen address and port.
        addr: String,
        /// `TCP` or `UDP`.
        proto: &'static str,
        /// What failed.
        message: String,
    },
}

/// The lab's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn sys(syscall: &'static str, what: impl Into<String>) -> Self {
        Self::Syscall {
            syscall,
            what: what.into(),
            source: io::Error::last_os_error(),
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
