//! Running one `git` command, hardened: nothing of the caller's git environment or of the
//! system's and user's git configuration, no prompts, no credential helpers, no hooks, no
//! signing; a timeout that kills the command and everything it started; bounded output; the
//! token only in the environment of the commands that talk to the remote, and redacted from
//! whatever they print.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{Error, Result};
use crate::pr::secret::Secret;

/// What is kept of a command's stdout (leash reads ids and short lists from it).
const MAX_STDOUT: usize = 1 << 20;
/// What is kept of a command's stderr (its end, where git says what failed).
const MAX_STDERR: usize = 64 << 10;
/// What of stderr goes into an error message (its end).
const MAX_STDERR_SHOWN: usize = 2000;
/// How long the output pipes may stay open after git exited before its process group is
/// killed (a helper it left behind).
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// Inherited variables kept: the trust store the user configured for git (overridden by a
/// remote's own CA file).
const ENV_KEPT: [&str; 2] = ["GIT_SSL_CAINFO", "GIT_SSL_CAPATH"];

/// Configuration every command gets (as `GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`).
const HARDENING: [(&str, &str); 10] = [
    // No credential helper may be asked for, or store, anything.
    ("credential.helper", ""),
    // No hook of the clone runs (the remote's own hooks, its branch protection, still do).
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    // Nothing keeps running after the command returns (or is killed).
    ("gc.autoDetach", "false"),
    ("maintenance.autoDetach", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("submodule.recurse", "false"),
    ("advice.detachedHead", "false"),
];

/// One command's result.
pub(crate) struct Output {
    /// The exit status.
    pub status: ExitStatus,
    /// Its stdout (bounded), lossily decoded.
    pub stdout: String,
    /// Its stderr (the end, bounded), redacted.
    pub stderr: String,
}

/// How commands run for one remote. See the module docs.
pub(crate) struct Runner {
    /// The longest any command may run.
    pub timeout: Duration,
    /// The repository (`GIT_DIR`, `GIT_WORK_TREE`) once there is one.
    pub repo: Option<(PathBuf, PathBuf)>,
    /// Configuration for commands that talk to the remote (the authorization header among it).
    pub remote_config: Vec<(String, String)>,
    /// Environment for commands that talk to the remote (`GIT_SSH_COMMAND`, CA file, allowed
    /// protocol).
    pub remote_env: Vec<(&'static str, OsString)>,
    /// Inherited variables removed from commands that talk to the remote (the machine's CA
    /// file when the remote names its own).
    pub remote_env_removed: Vec<&'static str>,
    /// The token, to redact from what git prints, and its other forms.
    pub secret: Option<Secret>,
    /// Extra texts to redact (the authorization header's value).
    pub secret_forms: Vec<String>,
}

impl Runner {
    /// `text` with the token, in every form it travels in, replaced.
    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = match &self.secret {
            Some(s) => s.redact(text),
            None => text.to_owned(),
        };
        for form in &self.secret_forms {
            if !form.is_empty() && out.contains(form.as_str()) {
                out = out.replace(form.as_str(), crate::pr::secret::REDACTED);
            }
        }
        out
    }

    /// The command line as shown in errors (it never holds the token).
    pub(crate) fn show(&self, args: &[&OsStr]) -> String {
        let mut line = String::from("git");
        for a in args {
            line.push(' ');
            line.push_str(&a.to_string_lossy());
        }
        self.redact(&line)
    }

    /// Runs `git args` in `cwd`. `remote`: the command talks to the remote (it gets the
    /// credentials). `env`: more variables (the commit's identity). `stdin`: bytes fed to it.
    pub(crate) fn run(
        &self,
        cwd: &Path,
        args: &[&OsStr],
        remote: bool,
        env: &[(&str, &str)],
        stdin: Option<&[u8]>,
    ) -> Result<Output> {
        let shown = || self.show(args);
        let mut cmd = Command::new("git");
        for (name, _) in std::env::vars_os() {
            let keep = name.to_str().is_some_and(|n| {
                !(n.starts_with("GIT_") || n.starts_with("SSH_ASKPASS") || n == "LANGUAGE")
                    || (ENV_KEPT.contains(&n) && !(remote && self.remote_env_removed.contains(&n)))
            });
            if !keep {
                cmd.env_remove(&name);
            }
        }
        cmd.current_dir(cwd)
            .args(args)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_TERMINAL_PROMPT", "0")
            // English messages: some are matched (a missing base branch, a stale lease).
            .env("LC_ALL", "C");
        if let Some((git_dir, work_tree)) = &self.repo {
            // Never discover a repository: a damaged clone must not lead git to a parent one.
            cmd.env("GIT_DIR", git_dir).env("GIT_WORK_TREE", work_tree);
        }
        let mut config: Vec<(&str, &str)> = HARDENING.to_vec();
        if remote {
            config.extend(
                self.remote_config
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
            for (name, value) in &self.remote_env {
                cmd.env(name, value);
            }
        } else {
            // Only the commands that talk to the remote may reach one.
            cmd.env("GIT_ALLOW_PROTOCOL", "");
        }
        cmd.env("GIT_CONFIG_COUNT", config.len().to_string());
        for (i, (key, value)) in config.iter().enumerate() {
            cmd.env(format!("GIT_CONFIG_KEY_{i}"), key)
                .env(format!("GIT_CONFIG_VALUE_{i}"), value);
        }
        cmd.envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a timeout kills git and the helpers it started (ssh,
            // git-remote-https, a local upload-pack).
            .process_group(0);
        let mut child = cmd.spawn().map_err(|source| Error::Spawn {
            command: shown(),
            source,
        })?;
        let pgid = child.id() as libc::pid_t;
        let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send((false, read_head(out, MAX_STDOUT)));
            });
        }
        if let Some(err) = child.stderr.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send((true, read_tail(err, MAX_STDERR)));
            });
        }
        drop(tx);
        if let (Some(mut pipe), Some(bytes)) = (child.stdin.take(), stdin) {
            let bytes = bytes.to_vec();
            // A thread: git may write before it has read all of its input.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }

        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(1);
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => {}
                Err(source) => {
                    kill_group(pgid);
                    let _ = child.wait();
                    return Err(Error::Spawn {
                        command: shown(),
                        source,
                    });
                }
            }
            if Instant::now() >= deadline {
                kill_group(pgid);
                let _ = child.wait();
                return Err(Error::Timeout {
                    command: shown(),
                    after: self.timeout,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        };
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        // Both readers end when their pipe closes; returns whether both did within `wait`.
        let collect = |wait: Duration, out: &mut Vec<u8>, err: &mut Vec<u8>| {
            let until = Instant::now() + wait;
            loop {
                match rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
                    Ok((true, bytes)) => *err = bytes,
                    Ok((false, bytes)) => *out = bytes,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return true,
                    Err(mpsc::RecvTimeoutError::Timeout) => return false,
                }
            }
        };
        if !collect(PIPE_GRACE, &mut stdout, &mut stderr) {
            // A helper git left behind holds a pipe: the group still has a member, so its id
            // is not reused and names only what git started.
            kill_group(pgid);
            collect(Duration::from_millis(200), &mut stdout, &mut stderr);
        }
        Ok(Output {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: self.redact(&String::from_utf8_lossy(&stderr)),
        })
    }

    /// [`Self::run`] (local, no input) that must succeed; returns stdout, trimmed.
    pub(crate) fn ok(&self, cwd: &Path, args: &[&OsStr]) -> Result<String> {
        let out = self.run(cwd, args, false, &[], None)?;
        self.check(args, &out)?;
        Ok(out.stdout.trim().to_owned())
    }

    /// An error naming the command unless `out` is a success.
    pub(crate) fn check(&self, args: &[&OsStr], out: &Output) -> Result<()> {
        if out.status.success() {
            return Ok(());
        }
        let stderr = shown_stderr(&out.stderr);
        if refused_credentials(&stderr) {
            return Err(Error::Denied {
                command: self.show(args),
                stderr,
            });
        }
        Err(Error::Git {
            command: self.show(args),
            status: out.status.to_string(),
            stderr,
        })
    }
}

/// Whether git's stderr says the remote refused the credentials: git's own words for a
/// refused or missing HTTP authorization (with prompts disabled) and OpenSSH's for a key.
fn refused_credentials(stderr: &str) -> bool {
    [
        "Authentication failed",
        "could not read Username",
        "could not read Password",
        "The requested URL returned error: 401",
        "The requested URL returned error: 403",
        "Permission denied (publickey",
    ]
    .iter()
    .any(|m| stderr.contains(m))
}

/// Kills every process of group `pgid` (ESRCH when none is left is fine).
fn kill_group(pgid: libc::pid_t) {
    if pgid > 0 {
        // SAFETY: plain syscall; a negative id names the process group leash created.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// The first `max` bytes of `r`, reading on to the end so the writer never blocks.
fn read_head(mut r: impl Read, max: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        let room = max.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    kept
}

/// The last `max` bytes (about) of `r`.
fn read_tail(mut r: impl Read, max: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf) {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * max {
            kept.drain(..kept.len() - max);
        }
    }
    if kept.len() > max {
        kept.drain(..kept.len() - max);
    }
    kept
}

/// stderr as shown in an error: its last lines without git's hints, one line, bounded.
pub(crate) fn shown_stderr(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
        .collect();
    let text: String = lines
        .join("; ")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let count = text.chars().count();
    if count <= MAX_STDERR_SHOWN {
        return text;
    }
    let tail: String = text.chars().skip(count - MAX_STDERR_SHOWN).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_credentials_are_told_apart() {
        assert!(refused_credentials(
            "fatal: could not read Username for 'http://127.0.0.1:9': terminal prompts disabled"
        ));
        assert!(refused_credentials(
            "git@h: Permission denied (publickey). fatal: Could not read from remote repository."
        ));
        assert!(!refused_credentials(
            "fatal: unable to access 'https://h/': Could not resolve host: h"
        ));
    }

    #[test]
    fn stderr_is_one_bounded_line_without_hints() {
        assert_eq!(
            shown_stderr("hint: try this\nerror: one\r\n\nfatal: two\n"),
            "error: one; fatal: two"
        );
        let long = "x".repeat(5000);
        let shown = shown_stderr(&long);
        assert_eq!(shown.chars().count(), MAX_STDERR_SHOWN + 1);
        assert!(shown.starts_with('…'));
    }

    #[test]
    fn output_is_bounded() {
        let data = vec![b'a'; 100_000];
        assert_eq!(read_head(&data[..], 10).len(), 10);
        let mut data = vec![b'a'; 100_000];
        data.extend_from_slice(b"END");
        let tail = read_tail(&data[..], 10);
        assert_eq!(tail.len(), 10);
        assert!(tail.ends_with(b"END"));
    }
}
