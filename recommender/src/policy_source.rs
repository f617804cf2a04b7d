//! Where a policy state comes from: the STATE grammar of `diff --from/--to`, `serve
//! --proposed` and every command that names a set of policies.
//!
//! - `applied`: the NetworkPolicies of the cluster source, nothing given;
//! - `git:REV:PATH`: the policy files under PATH at revision REV of the git repository
//!   that holds PATH (the current directory's repository when PATH is relative);
//! - anything else: a file or directory of policies, read as `audit --policies` reads it.
//!
//! A state other than `applied` is laid over the applied policies by the caller with
//! [`crate::policy_state::combine`]. Reading a git revision runs the `git` command: it is
//! the one implementation of git's object format a user's machine already trusts, and it
//! reads the repository without touching the working tree.

use std::{
    fmt,
    path::{Component, Path, PathBuf},
    process::Command,
    str::FromStr,
};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use leash_records::bounded::Limits;

use crate::audit;

/// Errors of reading a policy state; each names the state.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The state is not `applied`, `git:REV:PATH` or a path.
    #[error("policy state {state:?}: {message}")]
    Syntax {
        /// The state as given.
        state: String,
        /// What is wrong with it.
        message: &'static str,
    },
    /// Reading or validating the policy files failed.
    #[error("policy state {state}")]
    Policies {
        /// The state.
        state: String,
        /// What failed, naming the file (boxed: audit's errors are large).
        source: Box<audit::Error>,
    },
    /// The `git` command could not run, or refused.
    #[error("policy state {state}: git {args}: {message}")]
    Git {
        /// The state.
        state: String,
        /// The git arguments that failed.
        args: String,
        /// git's own message (its stderr's first line), or why it could not run.
        message: String,
    },
    /// The revision has no such path.
    #[error("policy state {state}: {path} does not exist at revision {rev}")]
    NoSuchPath {
        /// The state.
        state: String,
        /// The path inside the repository.
        path: String,
        /// The revision.
        rev: String,
    },
    /// A file at the revision exceeds the input bound.
    #[error("policy state {state}: {path} is {size} bytes, above the {max}-byte input limit")]
    TooLarge {
        /// The state.
        state: String,
        /// The file inside the repository.
        path: String,
        /// Its size.
        size: u64,
        /// The bound.
        max: u64,
    },
}

/// `Result` of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A policy state, as named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// The policies applied in the cluster source.
    Applied,
    /// A file or directory of policy files.
    Files(PathBuf),
    /// The policy files under `path` at revision `rev` of a git repository.
    Git {
        /// The revision (a branch, tag, commit or any expression git resolves).
        rev: String,
        /// The file or directory; relative to the current directory when relative.
        path: PathBuf,
    },
}

impl FromStr for PolicySource {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let syntax = |message| Error::Syntax {
            state: s.to_owned(),
            message,
        };
        if s.is_empty() {
            return Err(syntax("empty; give applied, a path, or git:REV:PATH"));
        }
        if s == "applied" {
            return Ok(PolicySource::Applied);
        }
        let Some(rest) = s.strip_prefix("git:") else {
            return Ok(PolicySource::Files(PathBuf::from(s)));
        };
        let Some((rev, path)) = rest.split_once(':') else {
            return Err(syntax("a git state is git:REV:PATH"));
        };
        if rev.is_empty() {
            return Err(syntax("the revision of git:REV:PATH is empty"));
        }
        // A revision is passed to git as an argument: one that starts with '-' would be read
        // as an option.
        if rev.starts_with('-') {
            return Err(syntax("a revision cannot start with '-'"));
        }
        let path = if path.is_empty() { "." } else { path };
        Ok(PolicySource::Git {
            rev: rev.to_owned(),
            path: PathBuf::from(path),
        })
    }
}

impl fmt::Display for PolicySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicySource::Applied => f.write_str("applied"),
            PolicySource::Files(path) => write!(f, "{}", path.display()),
            PolicySource::Git { rev, path } => write!(f, "git:{rev}:{}", path.display()),
        }
    }
}

impl PolicySource {
    /// The policies this state gives, validated, a policy defined twice refused; `None` for
    /// [`PolicySource::Applied`]. An empty set is valid (it isolates nothing).
    pub fn load(&self) -> Result<Option<Vec<NetworkPolicy>>> {
        let files = match self {
            PolicySource::Applied => return Ok(None),
            PolicySource::Files(path) => audit::load_policy_files(path),
            PolicySource::Git { rev, path } => {
                let texts = self.git_texts(rev, path)?;
                audit::policies_of_texts(texts.into_iter().map(Ok))
            }
        };
        let files = files.map_err(|source| Error::Policies {
            state: self.to_string(),
            source: Box::new(source),
        })?;
        Ok(Some(files.into_iter().map(|(_, np)| np).collect()))
    }

    /// [`PolicySource::load`], with the state's ClusterNetworkPolicies kept (`diff`'s observed
    /// flows evaluate both states' tiers).
    pub fn load_tiers(
        &self,
    ) -> Result<Option<(Vec<NetworkPolicy>, Vec<crate::cnp::ClusterNetworkPolicy>)>> {
        let read = match self {
            PolicySource::Applied => return Ok(None),
            PolicySource::Files(path) => audit::tiers_of_files(path),
            PolicySource::Git { rev, path } => {
                let texts = self.git_texts(rev, path)?;
                audit::tiers_of_texts(texts.into_iter().map(Ok))
            }
        };
        read.map(Some).map_err(|source| Error::Policies {
            state: self.to_string(),
            source: Box::new(source),
        })
    }

    /// The policy files under `path` at `rev`, as `(text, "git:COMMIT:file")`, sorted by path.
    fn git_texts(&self, rev: &str, path: &Path) -> Result<Vec<(String, PathBuf)>> {
        let state = self.to_string();
        let (repo, inside) = repository_of(&state, path)?;
        let commit = git(
            &state,
            &repo,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &format!("{rev}^{{commit}}"),
            ],
        )?;
        let commit = commit.trim().to_owned();
        let inside_str = inside.to_string_lossy().into_owned();
        let mut args = vec!["ls-tree", "-r", "-z", "-l", "--full-tree", &commit, "--"];
        if !inside_str.is_empty() {
            args.push(&inside_str);
        }
        let listing = git(&state, &repo, &args)?;
        let limits = Limits::from_env().map_err(|e| Error::Policies {
            state: state.clone(),
            source: Box::new(e.into()),
        })?;
        let mut files: Vec<(String, String)> = Vec::new();
        let mut any = false;
        for entry in listing.split('\0').filter(|e| !e.is_empty()) {
            any = true;
            // "<mode> <type> <object> <size>\t<path>"
            let Some((meta, file)) = entry.split_once('\t') else {
                continue;
            };
            let fields: Vec<&str> = meta.split_whitespace().collect();
            let [_, "blob", object, size] = fields.as_slice() else {
                continue;
            };
            // A file named by the state is read whatever its name; inside a directory only
            // policy files, hidden entries skipped, as `audit::load_policy_files` walks.
            let named = file == inside_str;
            if !named {
                let below = Path::new(file)
                    .strip_prefix(&inside)
                    .unwrap_or(Path::new(file));
                let hidden = below.components().any(
                    |c| matches!(c, Component::Normal(n) if n.to_string_lossy().starts_with('.')),
                );
                if hidden || !audit::is_policy_file(Path::new(file)) {
                    continue;
                }
            }
            let size: u64 = size.parse().unwrap_or(u64::MAX);
            if size > limits.max_file {
                return Err(Error::TooLarge {
                    state,
                    path: file.to_owned(),
                    size,
                    max: limits.max_file,
                });
            }
            files.push((file.to_owned(), (*object).to_owned()));
        }
        if !any && !inside_str.is_empty() {
            return Err(Error::NoSuchPath {
                state,
                path: inside_str,
                rev: rev.to_owned(),
            });
        }
        files.sort();
        files
            .into_iter()
            .map(|(file, object)| {
                let text = git(&state, &repo, &["cat-file", "blob", &object])?;
                Ok((text, PathBuf::from(format!("git:{commit}:{file}"))))
            })
            .collect()
    }
}

/// The repository holding `path` and the path inside it (empty for its root). A relative
/// path is the current directory's; an absolute one need not exist in the working tree (it
/// may exist only at the revision), so the nearest existing ancestor finds the repository.
fn repository_of(state: &str, path: &Path) -> Result<(PathBuf, PathBuf)> {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::Git {
                state: state.to_owned(),
                args: "(current directory)".to_owned(),
                message: e.to_string(),
            })?
            .join(path)
    };
    let normal = normalise(&absolute);
    let mut existing = normal.as_path();
    let mut rest: Vec<&std::ffi::OsStr> = Vec::new();
    while !existing.is_dir() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => break,
        }
    }
    let top = git(state, existing, &["rev-parse", "--show-toplevel"])?;
    let top = PathBuf::from(top.trim_end_matches('\n'));
    let real = std::fs::canonicalize(existing).unwrap_or_else(|_| existing.to_path_buf());
    let top_real = std::fs::canonicalize(&top).unwrap_or(top);
    let mut inside = real
        .strip_prefix(&top_real)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    for name in rest.iter().rev() {
        inside.push(name);
    }
    Ok((top_real, inside))
}

/// `a/./b/../c` → `a/c`, without touching the file system (the path may not exist).
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Runs `git -C dir args…` and returns its stdout; a failure carries git's first stderr line.
fn git(state: &str, dir: &Path, args: &[&str]) -> Result<String> {
    let failed = |message: String| Error::Git {
        state: state.to_owned(),
        args: args.join(" "),
        message,
    };
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        // The user's pager, editor or prompts must not run inside a command.
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_PAGER", "cat")
        .output()
        .map_err(|e| failed(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or("").trim();
        return Err(failed(if first.is_empty() {
            format!("exited with {}", out.status)
        } else {
            first.to_owned()
        }));
    }
    String::from_utf8(out.stdout).map_err(|_| failed("output is not UTF-8".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            "applied".parse::<PolicySource>().ok(),
            Some(PolicySource::Applied)
        );
        assert_eq!(
            "policies/".parse::<PolicySource>().ok(),
            Some(PolicySource::Files(PathBuf::from("policies/")))
        );
        assert_eq!(
            "git:HEAD~1:deploy/policies".parse::<PolicySource>().ok(),
            Some(PolicySource::Git {
                rev: "HEAD~1".to_owned(),
                path: PathBuf::from("deploy/policies"),
            })
        );
        assert_eq!(
            "git:main:".parse::<PolicySource>().ok(),
            Some(PolicySource::Git {
                rev: "main".to_owned(),
                path: PathBuf::from("."),
            })
        );
    }

    #[test]
    fn refuses_malformed_states() {
        for bad in ["", "git:main", "git::dir", "git:--output=x:dir"] {
            let e = bad.parse::<PolicySource>().err();
            assert!(
                matches!(e, Some(Error::Syntax { .. })),
                "{bad:?} gave {e:?}"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["applied", "a/b", "git:v1:x/y"] {
            let parsed: Option<PolicySource> = s.parse().ok();
            assert_eq!(parsed.map(|p| p.to_string()).as_deref(), Some(s));
        }
    }

    #[test]
    fn normalise_drops_dots() {
        assert_eq!(normalise(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
    }
}
