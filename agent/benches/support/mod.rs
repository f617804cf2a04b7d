//! Helpers shared by the benches that run the real `leash-agent` binary (`agent_scale`,
//! `outage`): finding the binary, reading `/proc`, scraping `/metrics`, and a started agent
//! whose stderr is collected by a thread. Included with `mod support;`.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

/// `target/<profile>` of this executable (`target/release/deps/<bench>-<hash>`).
fn profile_dir() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let dir = exe.parent().ok_or("executable has no parent")?;
    Ok(if dir.ends_with("deps") {
        dir.parent().ok_or("deps has no parent")?.to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// The release agent: `$LEASH_AGENT_BIN` (must be a file), else
/// `<target>/release/leash-agent`, built when missing if `build_if_missing`, else an error
/// saying how to build it.
pub fn agent_binary(bench: &str, build_if_missing: bool) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("LEASH_AGENT_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("$LEASH_AGENT_BIN={} is not a file", p.display()))
        };
    }
    let profile = profile_dir()?;
    let target = profile.parent().ok_or("profile dir has no parent")?;
    let bin = target.join("release").join("leash-agent");
    if bin.is_file() {
        return Ok(bin);
    }
    if !build_if_missing {
        return Err(format!(
            "{} missing: cargo build --release -p leash-agent first",
            bin.display()
        ));
    }
    eprintln!("{bench}: building {}", bin.display());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-p",
            "leash-agent",
            "--bin",
            "leash-agent",
        ])
        .env("CARGO_TARGET_DIR", target)
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() || !bin.is_file() {
        return Err(format!("cargo build of {} failed: {status}", bin.display()));
    }
    Ok(bin)
}

/// A `kB` line of `/proc/<pid>/status` (e.g. `VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: i32, key: &str) -> Result<u64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("/proc/{pid}/status has no {key}"))
}

/// `GET /metrics` over loopback; returns `series{labels} -> value` of the `leash_agent_`
/// series (empty if there are none).
pub fn scrape(addr: SocketAddr) -> Result<BTreeMap<String, f64>, String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("write {addr}: {e}"))?;
    let mut body = String::new();
    s.read_to_string(&mut body)
        .map_err(|e| format!("read {addr}: {e}"))?;
    let mut out = BTreeMap::new();
    for line in body.lines().filter(|l| l.starts_with("leash_agent_")) {
        if let Some((name, value)) = line.rsplit_once(' ')
            && let Ok(v) = value.parse::<f64>()
        {
            out.insert(name.to_owned(), v);
        }
    }
    Ok(out)
}

/// A running agent: its pid and its stderr lines (as a channel and as a log).
pub struct Agent {
    /// The agent's pid.
    pub pid: i32,
    lines: mpsc::Receiver<String>,
    /// Every stderr line so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    /// Starts `command` (the agent and its flags) with stdin and stdout null and stderr
    /// collected by a thread.
    pub fn spawn(mut command: Command) -> Result<Self, String> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting {:?}: {e}", command.get_program()))?;
        let pid = i32::try_from(child.id()).map_err(|_| "pid out of range")?;
        let stderr = child.stderr.take().ok_or("no stderr pipe")?;
        // The Child handle is dropped without waiting; `Agent::stop` reaps the pid.
        drop(child);
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let keep = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = keep.lock() {
                    l.push(line.clone());
                }
                let _ = tx.send(line);
            }
        });
        Ok(Self {
            pid,
            lines: rx,
            log,
        })
    }

    /// Waits for a stderr line containing `needle`; the error carries the agent's log.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Ok(line),
                Ok(_) => {}
                Err(_) => {
                    return Err(format!(
                        "agent did not log {needle:?} within {timeout:?}; its log:\n{}",
                        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
                    ));
                }
            }
        }
    }

    /// SIGTERM, then reap with `wait4` for the exit status and rusage (peak RSS, total CPU).
    /// Bounded: SIGKILL after `timeout`.
    pub fn stop(&self, timeout: Duration) -> Result<(i32, libc::rusage), String> {
        // SAFETY: signalling our own child by pid.
        if unsafe { libc::kill(self.pid, libc::SIGTERM) } != 0 {
            return Err(format!("kill: {}", std::io::Error::last_os_error()));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let mut status = 0;
            // SAFETY: zeroed rusage is a valid out-buffer.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: valid out-pointers; `pid` is our child.
            let rc = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut usage) };
            if rc == self.pid {
                return Ok((status, usage));
            }
            if rc < 0 {
                return Err(format!("wait4: {}", std::io::Error::last_os_error()));
            }
            if Instant::now() > deadline {
                // SAFETY: as above.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                return Err(format!("agent did not stop within {timeout:?}; killed"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
