//! A local OpenSSH server for tests of git over SSH: Debian's `sshd` (`openssh-server`, which
//! `scripts/setup.sh` installs) on a free port of 127.0.0.1, with a configuration of its own in
//! a private directory, so nothing of the machine's SSH set-up is read or changed.
//!
//! [`Sshd::start`] generates a host key and a client key (`ssh-keygen`, ed25519, per run; never
//! committed), authorises the client key for the current user only (public key authentication
//! only, no passwords, no PAM), writes a known-hosts file pinning the host key, and waits until
//! the server greets. Logins run the user's shell with the command the client asks for, so
//! `git clone ssh://…` runs `git-upload-pack` on a bare repository path as it would on a git
//! host (no `ForceCommand`). [`Sshd::ssh_command`] is the `GIT_SSH_COMMAND` that uses the key
//! and checks the host key strictly; [`Sshd::url`] the repository URL.
//!
//! When run as root (as the tests are here), the server needs OpenSSH's privilege separation
//! directory, `/run/sshd`, which Debian's service unit normally creates; `start` creates it
//! (mode 0755) if it is missing. `StrictModes no` lets the keys live in a temporary directory.
//! When `sshd` is not installed, `start` answers [`Error::Unavailable`], and tests skip with the
//! reason. Dropping the [`Sshd`] stops the server (SIGTERM, then SIGKILL after 5 s) and removes
//! its directory.

use std::fs;
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where Debian installs the server; `$PATH` is searched after it.
pub const SSHD_PATH: &str = "/usr/sbin/sshd";
/// How long the server has to greet after starting.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong starting the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `sshd` or `ssh-keygen` is not installed (`scripts/setup.sh` installs `openssh-server`).
    #[error("sshd is unavailable: {0}")]
    Unavailable(String),
    /// A file or socket operation failed.
    #[error("{what}")]
    Io {
        /// What was attempted, naming the file.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A helper command failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// The exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The server exited or did not greet within the timeout.
    #[error("sshd on port {port} did not come up: {log}")]
    NotReady {
        /// The port it was given.
        port: u16,
        /// The end of its log.
        log: String,
    },
}

/// A running `sshd`. See the module docs.
pub struct Sshd {
    child: Child,
    dir: PathBuf,
    port: u16,
    user: String,
}

/// The `sshd` binary, if installed.
pub fn sshd_path() -> Option<PathBuf> {
    if Path::new(SSHD_PATH).is_file() {
        return Some(PathBuf::from(SSHD_PATH));
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("sshd"))
            .find(|f| f.is_file())
    })
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// The name of the effective user, from the password database (sshd logs that user in).
fn user_name() -> Result<String, Error> {
    // SAFETY: getpwuid_r writes only into `pwd` and `buf`, both live and sized as passed, and
    // `found` points at `pwd` (or is null) afterwards; pw_name then points into `buf`.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 16 << 10];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::geteuid(),
            &raw mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &raw mut found,
        );
        if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
            return Err(Error::Io {
                what: "getpwuid_r: the effective user has no entry in the password database"
                    .to_owned(),
                source: std::io::Error::from_raw_os_error(if rc == 0 { libc::ENOENT } else { rc }),
            });
        }
        Ok(std::ffi::CStr::from_ptr(pwd.pw_name)
            .to_string_lossy()
            .into_owned())
    }
}

/// Runs a helper command, returning its stdout.
fn run(cmd: &mut Command) -> Result<String, Error> {
    let line = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Unavailable(format!("cannot run {line}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Command {
            cmd: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Generates an ed25519 key pair at `path` (and `path.pub`), without a passphrase.
pub fn generate_key(path: &Path) -> Result<(), Error> {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "leash-lab", "-f"])
        .arg(path))
    .map(drop)
}

/// A free port on 127.0.0.1 (the kernel's choice; the listener is closed again, and `start`
/// retries should another process take it in between).
fn free_port() -> Result<u16, Error> {
    let l =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("binding a free port".into()))?;
    let port = l
        .local_addr()
        .map_err(io("reading the free port".into()))?
        .port();
    Ok(port)
}

/// Whether an SSH server greets on `port` within `timeout`.
fn greets(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let mut banner = [0u8; 8];
    s.read_exact(&mut banner).is_ok() && &banner == b"SSH-2.0-"
}

/// The server's version, `(major, minor)` of `OpenSSH_9.2p1, …` (`(0, 0)` if unknown).
fn version(sshd: &Path) -> (u32, u32) {
    // `sshd -V` prints the version on stderr (older ones exit 1 on the unknown option, still
    // printing it).
    let Ok(out) = Command::new(sshd).arg("-V").stdin(Stdio::null()).output() else {
        return (0, 0);
    };
    let text = String::from_utf8_lossy(&out.stderr);
    let Some(v) = text.split("OpenSSH_").nth(1) else {
        return (0, 0);
    };
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// Waits (at most [`READY_TIMEOUT`]) until the server greets on `port`, or fails with the end
/// of its log if it exits or stays silent.
fn wait_ready(child: &mut Child, port: u16, log: &Path) -> Result<(), Error> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if greets(port, Duration::from_secs(1)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(5).collect();
    Err(Error::NotReady {
        port,
        log: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
    })
}

/// Stops a server: SIGTERM, then SIGKILL if it has not exited within 5 s.
fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Sshd {
    /// Starts a server for the current user. See the module docs.
    pub fn start() -> Result<Self, Error> {
        let Some(sshd) = sshd_path() else {
            return Err(Error::Unavailable(format!(
                "{SSHD_PATH} is not installed (run ./scripts/setup.sh)"
            )));
        };
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "leash-lab-sshd-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let result = Self::start_in(&sshd, &dir);
        if result.is_err() {
            let _ = fs::remove_dir_all(&dir);
        }
        result
    }

    fn start_in(sshd: &Path, dir: &Path) -> Result<Self, Error> {
        fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io(format!("chmod {}", dir.display())))?;
        let user = user_name()?;
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } == 0 && !Path::new("/run/sshd").is_dir() {
            // OpenSSH's privilege separation chroot; Debian's unit creates it at boot.
            fs::create_dir_all("/run/sshd").map_err(io("creating /run/sshd".into()))?;
            fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755))
                .map_err(io("chmod /run/sshd".into()))?;
        }
        let host_key = dir.join("host_ed25519");
        let client_key = dir.join("client_ed25519");
        generate_key(&host_key)?;
        generate_key(&client_key)?;
        let client_pub = dir.join("client_ed25519.pub");
        let authorized = dir.join("authorized_keys");
        fs::copy(&client_pub, &authorized)
            .map_err(io(format!("writing {}", authorized.display())))?;
        let host_pub = fs::read_to_string(dir.join("host_ed25519.pub"))
            .map_err(io(format!("reading {}", host_key.display())))?;
        // `type key` without the comment.
        let host_pub: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        let host_pub = host_pub.join(" ");

        // OpenSSH 9.8 and later penalise a source address after failed logins; a test that
        // shows a refusal must not lock out the next connection from 127.0.0.1.
        let penalties = if version(sshd) >= (9, 8) {
            "PerSourcePenalties no\n"
        } else {
            ""
        };
        let mut last = None;
        for _ in 0..3 {
            let port = free_port()?;
            let known_hosts = dir.join("known_hosts");
            fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_pub}\n"))
                .map_err(io(format!("writing {}", known_hosts.display())))?;
            let config = dir.join("sshd_config");
            fs::write(
                &config,
                format!(
                    "# leash-lab: a test server, loopback only, keys only\n\
                     Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {host}\n\
                     PidFile {pid}\n\
                     AuthorizedKeysFile {authorized}\n\
                     AllowUsers {user}\n\
                     AuthenticationMethods publickey\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\n\
                     UsePAM no\n\
                     StrictModes no\n\
                     UseDNS no\n\
                     PrintMotd no\n\
                     X11Forwarding no\n\
                     AllowTcpForwarding no\n\
                     AllowAgentForwarding no\n\
                     PermitTTY no\n\
                     LoginGraceTime 30\n\
                     LogLevel VERBOSE\n\
                     {penalties}",
                    host = host_key.display(),
                    pid = dir.join("sshd.pid").display(),
                    authorized = authorized.display(),
                ),
            )
            .map_err(io(format!("writing {}", config.display())))?;
            let log_path = dir.join("sshd.log");
            let log = fs::File::create(&log_path)
                .map_err(io(format!("creating {}", log_path.display())))?;
            // -D: stay in the foreground (a child of the test); -e: log to stderr (the file).
            let mut child = Command::new(sshd)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| Error::Unavailable(format!("cannot run {}: {e}", sshd.display())))?;
            match wait_ready(&mut child, port, &log_path) {
                Ok(()) => {
                    return Ok(Sshd {
                        child,
                        dir: dir.to_owned(),
                        port,
                        user,
                    });
                }
                Err(e) => {
                    stop(&mut child);
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(Error::NotReady {
            port: 0,
            log: String::new(),
        }))
    }

    /// The port it listens on (127.0.0.1 only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user whose key is authorised (the current user).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The client's private key.
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client_ed25519")
    }

    /// The known-hosts file pinning the server's host key as `[127.0.0.1]:PORT`.
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// The `GIT_SSH_COMMAND` for this server: the client key only, no user or system ssh
    /// configuration, strict host key checking against [`Self::known_hosts`], never a prompt.
    pub fn ssh_command(&self) -> String {
        self.ssh_command_with_key(&self.client_key())
    }

    /// [`Self::ssh_command`] with another private key (to show it is refused).
    pub fn ssh_command_with_key(&self, key: &Path) -> String {
        format!(
            "ssh -F /dev/null -i '{}' -p {} -o IdentitiesOnly=yes -o BatchMode=yes \
             -o UserKnownHostsFile='{}' -o GlobalKnownHostsFile=/dev/null \
             -o StrictHostKeyChecking=yes",
            key.display(),
            self.port,
            self.known_hosts().display()
        )
    }

    /// `ssh://USER@127.0.0.1:PORT/ABSOLUTE/PATH` for a repository at `repo`.
    pub fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repo.display()
        )
    }

    /// The server's log so far (`LogLevel VERBOSE`: connections, accepted and refused keys).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        stop(&mut self.child);
        let _ = fs::remove_dir_all(&self.dir);
    }
}
