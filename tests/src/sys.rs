//! Thin wrappers over the system: cgroup v2 discovery, network namespaces, external commands.

use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// `CGROUP2_SUPER_MAGIC` from `linux/magic.h`.
pub const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// Where `ip netns add` keeps its namespace handles.
pub const NETNS_RUN_DIR: &str = "/run/netns";

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Config(format!("path {} contains a NUL byte", path.display())))
}

/// Whether `path` is the root of a cgroup v2 mount (by filesystem magic).
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = cstring(path) else { return false };
    // SAFETY: statfs writes into a zeroed, properly sized struct; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    // f_type's width and signedness differ between libc targets.
    let magic = st.f_type as u64;
    rc == 0 && magic == CGROUP2_SUPER_MAGIC
}

/// Finds the cgroup v2 mount: `/sys/fs/cgroup` (pure v2), `/sys/fs/cgroup/unified` (hybrid), or
/// the first `cgroup2` entry of `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Result<PathBuf> {
    for cand in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if is_cgroup2(Path::new(cand)) {
            return Ok(PathBuf::from(cand));
        }
    }
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
    for line in info.lines() {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> ... - <fstype> <source> <super opts>"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2")
            && let Some(mp) = left.split_whitespace().nth(4)
            && is_cgroup2(Path::new(mp))
        {
            return Ok(PathBuf::from(mp));
        }
    }
    Err(Error::NoCgroup2)
}

/// The cgroup id of a cgroup v2 directory: its inode number.
pub fn cgroup_id(path: &Path) -> Result<u64> {
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|e| Error::io("stat", path, e))
}

/// Opens a file read-only with `O_CLOEXEC` (std does that by default).
pub fn open_ro(path: &Path) -> Result<OwnedFd> {
    fs::File::open(path)
        .map(OwnedFd::from)
        .map_err(|e| Error::io("open", path, e))
}

/// Opens a file write-only (for `cgroup.procs`).
pub fn open_wo(path: &Path) -> Result<OwnedFd> {
    fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map(OwnedFd::from)
        .map_err(|e| Error::io("open", path, e))
}

/// The handle of a named network namespace.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Moves the calling *thread* into the network namespace `fd`.
pub fn setns_net(fd: BorrowedFd<'_>, what: &str) -> Result<()> {
    // SAFETY: plain syscall on a valid fd.
    if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(Error::sys("setns", format!("CLONE_NEWNET, {what}")));
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has entered the network namespace `fd`. The calling thread's
/// namespace is untouched, so this is safe in multi-threaded test binaries.
pub fn in_netns<T: Send>(
    fd: &OwnedFd,
    what: &str,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            setns_net(fd.as_fd(), what)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Config(format!("thread in netns {what} panicked"))))
    })
}

/// Writes `value` to a sysctl under `/proc/sys/` as seen from network namespace `fd`.
pub fn set_net_sysctls(fd: &OwnedFd, what: &str, entries: &[(&str, &str)]) -> Result<()> {
    in_netns(fd, what, || {
        for (key, value) in entries {
            let path = Path::new("/proc/sys").join(key.replace('.', "/"));
            fs::write(&path, value).map_err(|e| Error::io("write sysctl", &path, e))?;
        }
        Ok(())
    })
}

/// Renders a command line for error messages.
pub fn cmdline(program: &str, args: &[&str]) -> String {
    let mut s = program.to_owned();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Runs `program args` (optionally inside network namespace `netns`, entered in the child via
/// `setns` before exec, optionally feeding `stdin`) and returns its stdout.
pub fn run(
    program: &str,
    args: &[&str],
    netns: Option<&Arc<OwnedFd>>,
    stdin: Option<&str>,
) -> Result<String> {
    let line = cmdline(program, args);
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(fd) = netns {
        let fd = Arc::clone(fd);
        // SAFETY: the closure only calls setns(2), which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        cmd: line.clone(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|source| Error::Spawn {
                cmd: line.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        cmd: line.clone(),
        source,
    })?;
    if !out.status.success() {
        let mut cmd = line;
        if let Some(input) = stdin {
            cmd.push_str(" <<EOF\n");
            cmd.push_str(input);
            cmd.push_str("EOF");
        }
        return Err(Error::Command {
            cmd,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Deletes a named network namespace the way `ip netns del` does: detach the bind mount, unlink.
pub fn delete_netns(name: &str) -> Result<()> {
    let path = netns_path(name);
    let c = cstring(&path)?;
    // SAFETY: plain syscall with a NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        let err = io::Error::last_os_error();
        // EINVAL: not a mount point (half-created); still try to unlink.
        if err.raw_os_error() != Some(libc::EINVAL) && err.raw_os_error() != Some(libc::ENOENT) {
            return Err(Error::Syscall {
                syscall: "umount2",
                what: path.display().to_string(),
                source: err,
            });
        }
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("unlink", path, e)),
    }
}

/// Kills every process in the cgroup sub-tree `dir` (via `cgroup.kill`, falling back to SIGKILL
/// per pid), waits (bounded) until it is empty, then removes the directories bottom-up.
pub fn remove_cgroup_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if fs::write(dir.join("cgroup.kill"), "1").is_err() {
        kill_procs_recursive(dir);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while populated(dir) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    remove_dirs_bottom_up(dir)
}

fn populated(dir: &Path) -> bool {
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|s| s.lines().any(|l| l.trim() == "populated 1"))
        .unwrap_or(false)
}

fn kill_procs_recursive(dir: &Path) {
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: plain syscall.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                kill_procs_recursive(&e.path());
            }
        }
    }
}

fn remove_dirs_bottom_up(dir: &Path) -> Result<()> {
    let rd = fs::read_dir(dir).map_err(|e| Error::io("read_dir", dir, e))?;
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_dirs_bottom_up(&e.path())?;
        }
    }
    // rmdir of a cgroup can briefly fail with EBUSY while killed tasks are being reaped.
    let mut last = None;
    for _ in 0..200 {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(Error::io(
        "rmdir",
        dir,
        last.unwrap_or_else(|| io::Error::other("unknown")),
    ))
}

/// Whether a process with this pid exists.
pub fn pid_alive(pid: i32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// The largest peak resident set size of this process's waited-for children, in kB (from
/// `getrusage(RUSAGE_CHILDREN)`), for benches that run a release binary.
pub fn children_peak_rss_kb() -> Option<u64> {
    // SAFETY: getrusage writes into the zeroed struct it is given and reads nothing else.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) == 0).then_some(u)
    }?;
    u64::try_from(usage.ru_maxrss).ok()
}
