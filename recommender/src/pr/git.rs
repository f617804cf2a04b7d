//! The working copy of `leash pr`: the team's policy repository, cloned into a cache that
//! leash owns, through the `git` command line (what users already trust for authentication,
//! SSH and proxies; no git library in the build).
//!
//! [`WorkingCopy::sync`] fetches the base branch and leash's own branches (those under the
//! branch prefix) into `CACHE/<hash of the URL>` under an exclusive lock, and checks the
//! base out; [`WorkingCopy::checkout`], [`WorkingCopy::commit`] and [`WorkingCopy::push`] do
//! the rest. `push` refuses the base branch and any branch outside the prefix before git
//! runs, and forces only with a lease on the tip `sync` fetched.
//!
//! Every command runs hardened (`command`): none of the caller's `GIT_*` variables, no
//! system or global configuration, no prompts, credential helpers, hooks of the clone or
//! signing, a timeout that kills it and its helpers, bounded output. The token
//! ([`Auth::Token`]) travels only as an `http.extraHeader` in the environment of the commands
//! that talk to the remote: never in arguments, URLs, `.git/config`, errors or logs (git's
//! stderr is redacted). Redirects are not followed, so the header never reaches another host.
//! Remote addresses are checked first (`url`): `http://` only to loopback, no credentials in
//! the address, no remote helpers.

mod command;
mod url;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use command::Runner;
use url::{Refusal, Transport};

use crate::pr::secret::{Secret, TOKEN_ENV};

/// The longest one git command may run (a clone of a large repository over a slow link
/// included) before it is killed; also how long [`WorkingCopy::sync`] waits for the lock.
pub const TIMEOUT: Duration = Duration::from_secs(300);

/// Where fetched branches are kept in the clone.
const TRACKING: &str = "refs/remotes/origin/";

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong with the working copy. Every message names the command, URL or branch;
/// none holds the token (git's output is redacted before it gets here).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repository address is not one leash accepts.
    #[error("{url}: {reason}")]
    Url {
        /// The address.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// The repository address carries credentials (shown without them).
    #[error(
        "{url}: the repository address carries credentials; remove them and give the token \
         with --token-file or ${TOKEN_ENV}"
    )]
    Credentials {
        /// The address without its credentials.
        url: String,
    },
    /// The authentication does not fit the address (a token over SSH, a key over HTTPS).
    #[error("{url}: {reason}")]
    Auth {
        /// The address.
        url: String,
        /// Why.
        reason: &'static str,
    },
    /// A branch name, branch prefix, directory or commit message leash was given is unusable.
    #[error("{what} {value:?}: {reason}")]
    Name {
        /// What it is (`branch`, `base branch`, `branch prefix`, `directory`, `commit`).
        what: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The commit author is unusable.
    #[error("commit author {name:?} <{email}>: {reason}")]
    Author {
        /// The name.
        name: String,
        /// The e-mail address.
        email: String,
        /// Why.
        reason: &'static str,
    },
    /// A file or directory of the cache cannot be used.
    #[error("{what}")]
    Io {
        /// What was attempted, naming the file.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Another leash holds the cache's lock for this repository.
    #[error("{}: another leash run holds this repository's cache (waited {after:?})", lock.display())]
    Busy {
        /// The lock file.
        lock: PathBuf,
        /// How long leash waited.
        after: Duration,
    },
    /// git cannot be started (not installed?).
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A git command ran past its timeout and was killed.
    #[error("`{command}` did not finish within {after:?} and was killed")]
    Timeout {
        /// The command line.
        command: String,
        /// The timeout.
        after: Duration,
    },
    /// A git command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Git {
        /// The command line (the URL included; never the token).
        command: String,
        /// Its exit status.
        status: String,
        /// The end of its stderr, redacted, on one line.
        stderr: String,
    },
    /// The repository refused the credentials (a token refused over HTTPS, or no usable
    /// SSH key): the configuration's fault, not the network's.
    #[error(
        "`{command}`: the repository refused the credentials (HTTPS: the token of --token-file, --pr-token-file or $LEASH_GIT_TOKEN; SSH: --ssh-key): {stderr}"
    )]
    Denied {
        /// The command line (the URL included; never the token).
        command: String,
        /// The end of its stderr, redacted, on one line.
        stderr: String,
    },
    /// The base branch does not exist on the remote.
    #[error("{url}: the base branch {base:?} does not exist")]
    NoBase {
        /// The address.
        url: String,
        /// The branch.
        base: String,
    },
    /// leash refused to push (before running git): the base branch, or a branch outside its
    /// prefix.
    #[error("refusing to push to branch {branch:?}: {reason}")]
    Refused {
        /// The branch.
        branch: String,
        /// Why.
        reason: String,
    },
    /// The remote rejected the push (a lease that no longer holds, a protected branch, a
    /// hook).
    #[error("{url}: push to branch {branch:?} rejected: {reason}")]
    Rejected {
        /// The address.
        url: String,
        /// The branch.
        branch: String,
        /// What git and the remote said.
        reason: String,
    },
}

/// How leash authenticates to the remote.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Nothing: a local path, `file://`, anonymous HTTPS, or SSH with the user's own keys.
    None,
    /// HTTPS with a token, sent as `Authorization: Basic base64(user:token)` (GitHub takes
    /// `x-access-token`, GitLab `oauth2`, see `secret::BASIC_USERS`).
    Token {
        /// The Basic user name.
        user: String,
        /// The token.
        token: Secret,
    },
    /// SSH with a private key file only (no agent identities, no prompts).
    SshKey {
        /// The private key.
        key: PathBuf,
        /// The known-hosts file that alone pins the host key; the user's own when `None`.
        /// Host keys are checked strictly either way.
        known_hosts: Option<PathBuf>,
    },
}

/// The repository leash proposes to.
#[derive(Debug, Clone)]
pub struct Remote {
    /// `https://…`, `http://…` (loopback only), `ssh://…` or `user@host:path`, `file://…` or
    /// a local path.
    pub url: String,
    /// How to authenticate.
    pub auth: Auth,
    /// The CA certificates (PEM) trusted for an `https://` remote instead of the machine's;
    /// ignored for other transports.
    pub ca_file: Option<PathBuf>,
}

/// Who leash's commits are by (author and committer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    /// The name.
    pub name: String,
    /// The e-mail address.
    pub email: String,
}

impl Author {
    /// `Name <email>`, as `--author` takes it.
    pub fn parse(text: &str) -> Result<Self> {
        let parsed = text
            .trim()
            .strip_suffix('>')
            .and_then(|t| t.rsplit_once('<'))
            .map(|(name, email)| Author {
                name: name.trim().to_owned(),
                email: email.trim().to_owned(),
            });
        let author = parsed.ok_or_else(|| Error::Author {
            name: text.to_owned(),
            email: String::new(),
            reason: "expected `Name <email>`",
        })?;
        check_author(&author)?;
        Ok(author)
    }
}

/// Checks what [`WorkingCopy::sync`] checks before it runs git: the base branch and the
/// prefix, the address and the authentication for its transport. For refusing a bad
/// configuration at start (`leash serve --pr-repo`), not at the first run.
pub fn check(remote: &Remote, base: &str, prefix: &str) -> Result<()> {
    checked(remote, base, prefix, TIMEOUT).map(|_| ())
}

fn checked(
    remote: &Remote,
    base: &str,
    prefix: &str,
    timeout: Duration,
) -> Result<(url::Address, Runner)> {
    check_branch("base branch", base)?;
    check_prefix(prefix)?;
    if base.starts_with(prefix) {
        return Err(Error::Name {
            what: "base branch",
            value: base.to_owned(),
            reason: "starts with the branch prefix, under which leash force-pushes",
        });
    }
    let cwd = std::env::current_dir().map_err(|source| Error::Io {
        what: "reading the current directory".into(),
        source,
    })?;
    let address = url::parse(&remote.url, &cwd).map_err(|r| match r {
        Refusal::Credentials { shown } => Error::Credentials { url: shown },
        Refusal::Other(reason) => Error::Url {
            url: redact_opt(&remote.auth, &remote.url),
            reason,
        },
    })?;
    let runner = runner_for(&address, remote, timeout)?;
    Ok((address, runner))
}

/// `url` as messages show it: without credentials, if it has any.
pub fn display_url(url: &str) -> String {
    match url::parse(url, Path::new("/")) {
        Ok(_) | Err(url::Refusal::Other(_)) => url.to_owned(),
        Err(url::Refusal::Credentials { shown }) => shown,
    }
}

/// Whether `url` is reached over HTTP(S), where a token authenticates.
pub fn is_http(url: &str) -> bool {
    url::parse(url, Path::new("/"))
        .is_ok_and(|a| matches!(a.transport, url::Transport::Https | url::Transport::Http))
}

/// A clone leash owns, locked for this value's lifetime. See the module docs.
pub struct WorkingCopy {
    dir: PathBuf,
    url: String,
    base: String,
    prefix: String,
    base_commit: String,
    runner: Runner,
    /// Holds the `flock` until dropped.
    _lock: File,
}

impl std::fmt::Debug for WorkingCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkingCopy")
            .field("dir", &self.dir)
            .field("url", &self.url)
            .field("base", &self.base)
            .field("prefix", &self.prefix)
            .field("base_commit", &self.base_commit)
            .finish_non_exhaustive()
    }
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

impl WorkingCopy {
    /// Clones (the first time) or fetches `remote` into `cache/<stable short hash of the
    /// URL>`: the `base` branch and every branch starting with `prefix` (e.g. `leash/`),
    /// pruning deleted ones, then checks the base out. Errors if the base branch does not
    /// exist on the remote. Holds an exclusive lock on the cache for this value's lifetime,
    /// waiting for another run's at most [`TIMEOUT`].
    pub fn sync(cache: &Path, remote: Remote, base: &str, prefix: &str) -> Result<Self> {
        Self::sync_with_timeout(cache, remote, base, prefix, TIMEOUT)
    }

    /// [`Self::sync`] with another timeout for each git command and for the lock.
    pub fn sync_with_timeout(
        cache: &Path,
        remote: Remote,
        base: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self> {
        let (address, mut runner) = checked(&remote, base, prefix, timeout)?;

        std::fs::create_dir_all(cache).map_err(|source| Error::Io {
            what: format!("creating the cache directory {}", cache.display()),
            source,
        })?;
        // Absolute: git runs in the work tree with `GIT_DIR` given, which a relative path
        // would resolve against the wrong directory.
        let cache = &cache.canonicalize().map_err(|source| Error::Io {
            what: format!("resolving the cache directory {}", cache.display()),
            source,
        })?;
        let name = short_hash(&address.url);
        let lock_path = cache.join(format!("{name}.lock"));
        let lock = lock(&lock_path, timeout)?;
        let dir = cache.join(&name);
        let git_dir = dir.join(".git");

        // A clone that is not a repository any more (an interrupted first clone) is made
        // again; `GIT_DIR` is always explicit, so git never wanders into a parent repository.
        runner.repo = Some((git_dir.clone(), dir.clone()));
        let valid = git_dir.is_dir()
            && runner
                .run(&dir, &[os("rev-parse"), os("--git-dir")], false, &[], None)
                .is_ok_and(|o| o.status.success());
        if !valid {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|source| Error::Io {
                    what: format!("removing the damaged clone {}", dir.display()),
                    source,
                })?;
            }
            std::fs::create_dir_all(&dir).map_err(|source| Error::Io {
                what: format!("creating {}", dir.display()),
                source,
            })?;
            // Not through `GIT_DIR`/`GIT_WORK_TREE`, which would write `core.worktree`.
            let repo = runner.repo.take();
            runner.ok(cache, &[os("init"), os("--quiet"), dir.as_os_str()])?;
            runner.repo = repo;
        }

        let base_spec = format!("+refs/heads/{base}:{TRACKING}{base}");
        let prefix_spec = format!("+refs/heads/{prefix}*:{TRACKING}{prefix}*");
        let args = [
            os("fetch"),
            os("--quiet"),
            os("--no-tags"),
            os("--prune"),
            os("--no-recurse-submodules"),
            os("--no-write-fetch-head"),
            os(&address.url),
            os(&base_spec),
            os(&prefix_spec),
        ];
        let out = runner.run(&dir, &args, true, &[], None)?;
        if !out.status.success() {
            if out.stderr.contains("couldn't find remote ref") {
                return Err(Error::NoBase {
                    url: address.url,
                    base: base.to_owned(),
                });
            }
            runner.check(&args, &out)?;
        }
        let base_commit =
            resolve(&runner, &dir, &format!("{TRACKING}{base}"))?.ok_or_else(|| Error::NoBase {
                url: address.url.clone(),
                base: base.to_owned(),
            })?;
        let wc = WorkingCopy {
            dir,
            url: address.url,
            base: base.to_owned(),
            prefix: prefix.to_owned(),
            base_commit,
            runner,
            _lock: lock,
        };
        wc.checkout(&wc.base_commit)?;
        Ok(wc)
    }

    /// The work tree.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The full id of the fetched base branch's commit.
    pub fn base_commit(&self) -> &str {
        &self.base_commit
    }

    /// The tip of a remote branch (e.g. `leash/shop`) as fetched (or as leash pushed it
    /// since), `None` if it does not exist.
    pub fn branch_tip(&self, branch: &str) -> Option<String> {
        check_branch("branch", branch).ok()?;
        resolve(&self.runner, &self.dir, &format!("{TRACKING}{branch}"))
            .ok()
            .flatten()
    }

    /// Makes the work tree exactly `commit`: detached HEAD, index and files reset, untracked
    /// and ignored files removed.
    pub fn checkout(&self, commit: &str) -> Result<()> {
        let id = self.commit_id(commit)?;
        self.runner.ok(
            &self.dir,
            &[
                os("checkout"),
                os("--quiet"),
                os("--force"),
                os("--detach"),
                os(&id),
            ],
        )?;
        self.runner.ok(
            &self.dir,
            &[os("reset"), os("--quiet"), os("--hard"), os(&id)],
        )?;
        self.runner.ok(&self.dir, &[os("clean"), os("-ffdxq")])?;
        Ok(())
    }

    /// Stages everything under `subdir` (relative to the work tree: additions, changes,
    /// deletions, files the repository's `.gitignore` would skip included) and commits it on
    /// top of HEAD with `message`, `author` as author and committer. `Ok(None)` when nothing
    /// changed.
    pub fn commit(&self, subdir: &Path, message: &str, author: &Author) -> Result<Option<String>> {
        let pathspec = pathspec(subdir)?;
        check_author(author)?;
        if message.trim().is_empty() {
            return Err(Error::Name {
                what: "commit message",
                value: String::new(),
                reason: "is empty",
            });
        }
        // A pathspec that matches nothing (no such directory, nothing tracked there) is an
        // error to `git add`; it means nothing to stage.
        let tracked = self.runner.ok(
            &self.dir,
            &[os("ls-files"), os("--cached"), os("--"), os(&pathspec)],
        )?;
        if self.dir.join(subdir).exists() || !tracked.is_empty() {
            self.runner.ok(
                &self.dir,
                &[
                    os("add"),
                    os("--all"),
                    os("--force"),
                    os("--"),
                    os(&pathspec),
                ],
            )?;
        }
        let args = [os("diff"), os("--cached"), os("--quiet")];
        let out = self.runner.run(&self.dir, &args, false, &[], None)?;
        match out.status.code() {
            Some(0) => return Ok(None),
            Some(1) => {}
            _ => self.runner.check(&args, &out).map(drop)?,
        }
        let identity = [
            ("GIT_AUTHOR_NAME", author.name.as_str()),
            ("GIT_AUTHOR_EMAIL", author.email.as_str()),
            ("GIT_COMMITTER_NAME", author.name.as_str()),
            ("GIT_COMMITTER_EMAIL", author.email.as_str()),
        ];
        let args = [
            os("commit"),
            os("--quiet"),
            os("--no-verify"),
            os("--no-gpg-sign"),
            os("--cleanup=whitespace"),
            os("--file=-"),
        ];
        let out = self
            .runner
            .run(&self.dir, &args, false, &identity, Some(message.as_bytes()))?;
        self.runner.check(&args, &out)?;
        self.commit_id("HEAD").map(Some)
    }

    /// Pushes `commit` to `refs/heads/<branch>` of the remote. Refuses, before running git,
    /// the base branch and any branch not under the prefix. Forces only with a lease: the
    /// remote branch must still be at the tip [`Self::sync`] fetched (or leash last pushed),
    /// or not exist if it did not.
    pub fn push(&self, commit: &str, branch: &str) -> Result<()> {
        check_branch("branch", branch)?;
        let refuse = |reason: String| Error::Refused {
            branch: branch.to_owned(),
            reason,
        };
        if branch == self.base {
            return Err(refuse("it is the base branch".into()));
        }
        if !branch.starts_with(&self.prefix) || branch.len() == self.prefix.len() {
            return Err(refuse(format!(
                "leash pushes only to its own branches, under {:?}",
                self.prefix
            )));
        }
        let id = self.commit_id(commit)?;
        let expected = self.branch_tip(branch).unwrap_or_default();
        let lease = format!("--force-with-lease=refs/heads/{branch}:{expected}");
        let refspec = format!("{id}:refs/heads/{branch}");
        let args = [
            os("push"),
            os("--porcelain"),
            os("--no-verify"),
            os(&lease),
            os(&self.url),
            os(&refspec),
        ];
        let out = self.runner.run(&self.dir, &args, true, &[], None)?;
        if !out.status.success() {
            return Err(self.rejection(branch, &args, &out));
        }
        self.runner.ok(
            &self.dir,
            &[
                os("update-ref"),
                os(&format!("{TRACKING}{branch}")),
                os(&id),
            ],
        )?;
        Ok(())
    }

    /// The error for a failed push: the remote's verdict on the branch when git reported one.
    fn rejection(&self, branch: &str, args: &[&OsStr], out: &command::Output) -> Error {
        // `--porcelain`: `!<TAB>FROM:TO<TAB>[rejected] (stale info)`.
        let target = format!("refs/heads/{branch}");
        let verdict = out.stdout.lines().find_map(|line| {
            let mut fields = line.split('\t');
            let flag = fields.next()?;
            let refs = fields.next()?;
            let summary = fields.next()?;
            (flag == "!" && refs.ends_with(&target)).then(|| summary.trim().to_owned())
        });
        let Some(verdict) = verdict else {
            return match self.runner.check(args, out) {
                Err(e) => e,
                Ok(()) => Error::Git {
                    command: self.runner.show(args),
                    status: out.status.to_string(),
                    stderr: String::new(),
                },
            };
        };
        let verdict = self.runner.redact(&verdict);
        let mut reason = if verdict.contains("stale info") {
            format!(
                "{verdict}: the branch changed on the remote since leash fetched it; sync again"
            )
        } else {
            verdict
        };
        let remote: Vec<&str> = out
            .stderr
            .lines()
            .filter_map(|l| l.strip_prefix("remote:"))
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if !remote.is_empty() {
            reason.push_str("; remote: ");
            reason.push_str(&command::shown_stderr(&remote.join("\n")));
        }
        Error::Rejected {
            url: self.url.clone(),
            branch: branch.to_owned(),
            reason,
        }
    }

    /// The full id of the commit `rev` names in the clone.
    fn commit_id(&self, rev: &str) -> Result<String> {
        if rev.is_empty() || rev.starts_with('-') || rev.chars().any(|c| c.is_control()) {
            return Err(Error::Name {
                what: "commit",
                value: rev.to_owned(),
                reason: "is not a revision",
            });
        }
        resolve(&self.runner, &self.dir, rev)?.ok_or_else(|| Error::Name {
            what: "commit",
            value: rev.to_owned(),
            reason: "does not exist in the clone",
        })
    }
}

/// The commit `rev` names, `None` if none.
fn resolve(runner: &Runner, dir: &Path, rev: &str) -> Result<Option<String>> {
    let spec = format!("{rev}^{{commit}}");
    let out = runner.run(
        dir,
        &[os("rev-parse"), os("--verify"), os("--quiet"), os(&spec)],
        false,
        &[],
        None,
    )?;
    let id = out.stdout.trim();
    Ok((out.status.success() && !id.is_empty()).then(|| id.to_owned()))
}

/// `text` with the token of `auth` redacted.
fn redact_opt(auth: &Auth, text: &str) -> String {
    match auth {
        Auth::Token { token, .. } => token.redact(text),
        _ => text.to_owned(),
    }
}

/// How commands run for `remote` at `address`: credentials, trust and the one protocol
/// allowed.
fn runner_for(address: &url::Address, remote: &Remote, timeout: Duration) -> Result<Runner> {
    let mut runner = Runner {
        timeout,
        repo: None,
        remote_config: vec![
            // A redirect would carry the authorization header to another host.
            ("http.followRedirects".into(), "false".into()),
        ],
        remote_env: vec![(
            "GIT_ALLOW_PROTOCOL",
            OsString::from(address.transport.protocol()),
        )],
        remote_env_removed: Vec::new(),
        secret: None,
        secret_forms: Vec::new(),
    };
    let http = matches!(address.transport, Transport::Https | Transport::Http);
    let auth_error = |reason| Error::Auth {
        url: address.url.clone(),
        reason,
    };
    match &remote.auth {
        Auth::None => {
            if address.transport == Transport::Ssh {
                runner
                    .remote_env
                    .push(("GIT_SSH_COMMAND", ssh_command(None, None).into()));
            }
        }
        Auth::Token { user, token } => {
            if !http {
                return Err(auth_error("a token authenticates over https:// only"));
            }
            if user.is_empty() || user.contains(':') || !user.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err(auth_error(
                    "the token's user name is empty or holds ':' or non-printable characters",
                ));
            }
            let basic = crate::pr::secret::base64(format!("{user}:{}", token.expose()).as_bytes());
            runner.remote_config.push((
                "http.extraHeader".into(),
                format!("Authorization: Basic {basic}"),
            ));
            runner.secret = Some(token.clone());
            runner.secret_forms.push(basic);
        }
        Auth::SshKey { key, known_hosts } => {
            if address.transport != Transport::Ssh {
                return Err(auth_error("a key file authenticates over SSH only"));
            }
            runner.remote_env.push((
                "GIT_SSH_COMMAND",
                ssh_command(Some(key), known_hosts.as_deref()).into(),
            ));
        }
    }
    if address.transport == Transport::Https
        && let Some(ca) = &remote.ca_file
    {
        if !ca.is_file() {
            return Err(Error::Io {
                what: format!("{}: the CA file does not exist", ca.display()),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        // `GIT_SSL_CAINFO` overrides any configuration; it must name this file alone.
        runner
            .remote_env
            .push(("GIT_SSL_CAINFO", ca.as_os_str().to_owned()));
        runner.remote_env_removed.push("GIT_SSL_CAPATH");
    }
    Ok(runner)
}

/// The `GIT_SSH_COMMAND`: batch mode (never a prompt), strict host key checking, and with a
/// key that key alone; with a known-hosts file that file alone.
fn ssh_command(key: Option<&Path>, known_hosts: Option<&Path>) -> String {
    let mut cmd = String::from("ssh -o BatchMode=yes -o StrictHostKeyChecking=yes");
    if let Some(key) = key {
        cmd.push_str(" -o IdentitiesOnly=yes -i ");
        cmd.push_str(&shell_quote(&key.to_string_lossy()));
    }
    if let Some(kh) = known_hosts {
        cmd.push_str(" -o UserKnownHostsFile=");
        cmd.push_str(&shell_quote(&kh.to_string_lossy()));
        cmd.push_str(" -o GlobalKnownHostsFile=/dev/null");
    }
    cmd
}

/// `s` single-quoted for the shell git runs `GIT_SSH_COMMAND` with.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The first 16 hex digits of the SHA-256 of `url`: the clone's directory name.
fn short_hash(url: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Takes the exclusive `flock` on `path`, waiting at most `timeout`.
fn lock(path: &Path, timeout: Duration) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| Error::Io {
            what: format!("opening the lock file {}", path.display()),
            source,
        })?;
    let deadline = Instant::now() + timeout;
    loop {
        // SAFETY: plain syscall on a descriptor `file` owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Error::Io {
                what: format!("locking {}", path.display()),
                source: err,
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::Busy {
                lock: path.to_path_buf(),
                after: timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checks a branch name by git's rules for references (`git check-ref-format`), and that git
/// cannot read it as an option.
fn check_branch(what: &'static str, name: &str) -> Result<()> {
    let bad = |reason| Error::Name {
        what,
        value: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("is empty"));
    }
    if name.starts_with('-') {
        return Err(bad("starts with '-'"));
    }
    if name == "HEAD" || name == "@" {
        return Err(bad("is reserved"));
    }
    if name.ends_with('/') || name.ends_with('.') {
        return Err(bad("ends with '/' or '.'"));
    }
    check_ref_part(name).map_err(bad)
}

/// Checks a branch prefix: what a branch name may start with (it may end with `/`).
fn check_prefix(prefix: &str) -> Result<()> {
    let bad = |reason| Error::Name {
        what: "branch prefix",
        value: prefix.to_owned(),
        reason,
    };
    if prefix.is_empty() {
        return Err(bad("is empty: leash would own every branch"));
    }
    if prefix.starts_with('-') {
        return Err(bad("starts with '-'"));
    }
    check_ref_part(prefix.strip_suffix('/').unwrap_or(prefix)).map_err(bad)
}

/// git's rules for the components of a reference name.
fn check_ref_part(name: &str) -> std::result::Result<(), &'static str> {
    if name.chars().any(|c| {
        c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    }) {
        return Err("holds a space, a control character or one of ~^:?*[\\");
    }
    if name.contains("..") || name.contains("@{") {
        return Err("holds '..' or '@{'");
    }
    if name.starts_with('/') {
        return Err("starts with '/'");
    }
    for part in name.split('/') {
        if part.is_empty() {
            return Err("holds an empty component ('//')");
        }
        if part.starts_with('.') || part.ends_with(".lock") {
            return Err("has a component that starts with '.' or ends with '.lock'");
        }
    }
    Ok(())
}

/// `subdir` as a literal pathspec (`.` for the whole tree); it must stay inside the work tree
/// and out of `.git`.
fn pathspec(subdir: &Path) -> Result<String> {
    let bad = |reason| Error::Name {
        what: "directory",
        value: subdir.display().to_string(),
        reason,
    };
    let mut parts = Vec::new();
    for c in subdir.components() {
        match c {
            Component::Normal(p) => {
                let p = p.to_str().ok_or_else(|| bad("is not UTF-8"))?;
                if parts.is_empty() && p == ".git" {
                    return Err(bad("is inside .git"));
                }
                parts.push(p);
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(bad("must be relative and stay inside the repository"));
            }
        }
    }
    if parts.is_empty() {
        return Ok(".".into());
    }
    Ok(format!(":(literal){}", parts.join("/")))
}

/// Checks the commit identity: git refuses empty names and strips or rejects `<`, `>` and
/// line breaks.
fn check_author(author: &Author) -> Result<()> {
    let bad = |reason| Error::Author {
        name: author.name.clone(),
        email: author.email.clone(),
        reason,
    };
    for field in [&author.name, &author.email] {
        if field.trim().is_empty() {
            return Err(bad("the name and the e-mail address must not be empty"));
        }
        if field
            .chars()
            .any(|c| c.is_control() || c == '<' || c == '>')
        {
            return Err(bad("holds '<', '>' or a control character"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authors_parse_from_name_and_address() {
        assert_eq!(
            Author::parse("leash bot <leash@example.test>").expect("author"),
            Author {
                name: "leash bot".into(),
                email: "leash@example.test".into()
            }
        );
        for bad in ["leash", "<x@y>", "a <>", "a <b\nc>", "a <b<c>"] {
            assert!(Author::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn urls_shown_without_credentials() {
        assert_eq!(
            display_url("https://x-access-token:ghp_secret@github.test/o/r.git"),
            "https://github.test/o/r.git"
        );
        assert!(is_http("https://github.test/o/r.git"));
        assert!(is_http("http://127.0.0.1:9/o/r.git"));
        assert!(!is_http("git@github.test:o/r.git"));
        assert!(!is_http("/srv/policies.git"));
    }

    #[test]
    fn branch_names_follow_gits_rules() {
        for ok in ["main", "leash/shop", "release-1.2", "a/b/c"] {
            check_branch("branch", ok).expect(ok);
        }
        for bad in [
            "", "-x", "HEAD", "a..b", "a b", "a:b", "a*", "a/", "/a", "a//b", ".a", "a/.b",
            "a.lock", "a@{1}", "a.", "a~1", "a^", "a\\b", "a\x01",
        ] {
            assert!(check_branch("branch", bad).is_err(), "{bad:?}");
        }
        check_prefix("leash/").expect("prefix");
        check_prefix("leash-").expect("prefix");
        for bad in ["", "-", "a*", "a//", "../"] {
            assert!(check_prefix(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pathspecs_stay_inside_the_work_tree() {
        assert_eq!(
            pathspec(Path::new("policies/shop")).expect("ok"),
            ":(literal)policies/shop"
        );
        assert_eq!(pathspec(Path::new("./a/./b")).expect("ok"), ":(literal)a/b");
        assert_eq!(pathspec(Path::new("*")).expect("ok"), ":(literal)*");
        assert_eq!(pathspec(Path::new("")).expect("ok"), ".");
        for bad in ["../x", "/etc", "a/../../b", ".git", ".git/hooks"] {
            assert!(pathspec(Path::new(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_ssh_command_quotes_paths() {
        assert_eq!(
            ssh_command(
                Some(Path::new("/k/it's key")),
                Some(Path::new("/k/known hosts"))
            ),
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes \
             -i '/k/it'\\''s key' -o UserKnownHostsFile='/k/known hosts' \
             -o GlobalKnownHostsFile=/dev/null"
        );
        assert_eq!(
            ssh_command(None, None),
            "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes"
        );
    }

    #[test]
    fn authors_without_angle_brackets_or_line_breaks() {
        let a = |n: &str, e: &str| Author {
            name: n.into(),
            email: e.into(),
        };
        check_author(&a("leash", "leash@example.com")).expect("ok");
        for (n, e) in [("", "x@y"), ("x", " "), ("a <b>", "x@y"), ("a", "x@y\n")] {
            assert!(check_author(&a(n, e)).is_err(), "{n:?} {e:?}");
        }
    }

    #[test]
    fn clone_directories_are_stable_and_short() {
        assert_eq!(short_hash("https://h/r.git"), short_hash("https://h/r.git"));
        assert_ne!(short_hash("https://h/r.git"), short_hash("https://h/s.git"));
        assert_eq!(short_hash("x").len(), 16);
    }
}
