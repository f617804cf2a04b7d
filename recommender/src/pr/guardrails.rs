//! The guardrails' pull request (`--guardrails`): the cluster guardrails
//! ([`crate::guardrails`]) as their own group, `guardrails`, on the branch
//! `<prefix>guardrails`, proposed before every namespace's: they are the first stage of a
//! cluster-wide rollout ([`crate::guardrails::STAGE_ORDER`]).
//!
//! The group owns `<path>/cluster/` (`guardrails-*.yaml` and `REPORT.md`, the layout of
//! `leash guardrails -o`) and writes nothing else; the namespace groups never write there.
//!
//! The guardrails are proposed over the state the merge will produce ([`State`]): the applied
//! NetworkPolicies with the base branch's proposal over them, and the applied
//! ClusterNetworkPolicies. So as namespace pull requests merge, the Baseline's deferrals
//! shrink and the next run updates the guardrails' pull request. [`check`] is the gate: the
//! self-check over that state, then the guardrails stage ([`stage::stage`]) from the base
//! branch's guardrails to the new ones, whose breaks refuse the pull request unless
//! `--allow-breaks`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::run::{self, Outcome};
use super::{body, git, provider};
use crate::classify::ClassifierConfig;
use crate::cluster::Cluster;
use crate::cnp::ClusterNetworkPolicy;
use crate::guardrails::stage::{self, Stage};
use crate::guardrails::{self, Guardrails, PREFIX, Stack};
use crate::observations::Observations;
use crate::proposal::Observed;

/// The group's name, and the last part of its branch.
pub const GROUP: &str = "guardrails";

/// The group's directory under `--path`.
pub const DIR: &str = "cluster";

/// Why the guardrails' group failed. Its pull request is then not proposed; the namespace
/// groups still are.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A guardrails file of a branch cannot be read.
    #[error("{what}: {}: cannot read", path.display())]
    Io {
        /// The branch.
        what: String,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A guardrails file of a branch is not valid ClusterNetworkPolicies.
    #[error("{what}: {}: not valid ClusterNetworkPolicies", path.display())]
    Parse {
        /// The branch.
        what: String,
        /// The file.
        path: PathBuf,
        /// Why.
        source: crate::cnp::ReadError,
    },
    /// A file or directory the group writes is a symlink or not what it should be.
    #[error(
        "{}: is a symlink or not a regular file or directory in the repository; leash does \
         not follow it",
        path.display()
    )]
    Link {
        /// The path in the working copy.
        path: PathBuf,
    },
    /// A file of the working copy cannot be written or removed.
    #[error("{}: cannot write", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The guardrails cannot be rendered (a bug: nothing was written).
    #[error("cannot render the guardrails")]
    Render(#[source] guardrails::outdir::Error),
    /// The guardrails cannot be proposed.
    #[error("the guardrails cannot be proposed")]
    Propose(#[source] guardrails::Error),
    /// The proposed guardrails fail their self-check over the state the merge will produce.
    #[error(
        "the proposed guardrails fail their self-check over the applied policies and the base \
         branch's proposal"
    )]
    SelfCheck(#[source] guardrails::Error),
    /// The guardrails stage cannot be evaluated.
    #[error("the guardrails stage cannot be evaluated")]
    Stage(#[source] stage::Error),
    /// A namespace named like the guardrails' directory: its files would land among them.
    #[error(
        "namespace {DIR}: its directory {} holds the guardrails with --guardrails; leave the \
         namespace out (--namespace) or turn --guardrails off",
        path.display()
    )]
    Collision {
        /// The directory inside the repository.
        path: PathBuf,
    },
}

impl Error {
    /// Whether the repository's files or the user's choices are at fault, rather than leash.
    pub fn is_input(&self) -> bool {
        matches!(
            self,
            Error::Io { .. } | Error::Parse { .. } | Error::Link { .. } | Error::Collision { .. }
        )
    }
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The state the guardrails are proposed over: what merging the base branch produces.
#[derive(Debug, Clone, Copy)]
pub struct State<'a> {
    /// The NetworkPolicies applied in the cluster.
    pub applied: &'a [NetworkPolicy],
    /// leash's NetworkPolicies on the base branch (its proposal, merged).
    pub base: &'a [NetworkPolicy],
    /// The ClusterNetworkPolicies applied in the cluster.
    pub applied_cluster: &'a [ClusterNetworkPolicy],
    /// leash's guardrails on the base branch (merged, maybe not applied yet).
    pub base_guardrails: &'a [ClusterNetworkPolicy],
}

/// The guardrails proposed over a [`State`], checked.
#[derive(Debug, Clone)]
pub struct Proposal {
    /// The guardrails.
    pub guardrails: Guardrails,
    /// The stage from the base branch's guardrails to these: its `breaks` must be empty.
    pub stage: Stage,
    /// Observed flows the self-check found denied although the stage shows no break: the
    /// state denies them with or without the guardrails (a namespace's NetworkPolicies behind
    /// its traffic, which that namespace's pull request updates). Warned about, not failed.
    pub denied_already: Vec<crate::recommend::Denied>,
}

impl Proposal {
    /// The warning about [`Self::denied_already`], if any; names as plain text.
    pub fn warning(&self) -> Option<String> {
        let first = self.denied_already.first()?;
        Some(format!(
            "guardrails: {} observed flow(s) are denied with or without the guardrails, by the \
             NetworkPolicies of the applied state and the base branch's proposal (first: {} -> \
             {}, {}); the namespaces' pull requests address them",
            self.denied_already.len(),
            body::plain(&first.pod, 130),
            body::plain(&first.destination, 60),
            body::plain(&first.reason, 200),
        ))
    }
}

/// Proposes the guardrails over `state` and checks them ([`check`]).
pub fn propose(
    cluster: &Cluster,
    obs: &Observations,
    config: &ClassifierConfig,
    opts: &guardrails::Options,
    state: &State<'_>,
) -> Result<Proposal> {
    let nps = crate::policy_state::combine(state.applied, state.base);
    let stack = Stack {
        network_policies: &nps.objects,
        cluster_policies: state.applied_cluster,
    };
    let g = guardrails::propose(cluster, obs, config, opts, &stack).map_err(Error::Propose)?;
    check(cluster, obs, g, state)
}

/// The gate of a proposal over `state`: the stage from the base branch's guardrails (laid
/// over the applied ones) to `g` lists every workload whose observed traffic `g` would break,
/// and the self-check over the applied ClusterNetworkPolicies and the NetworkPolicies the
/// merge produces must pass. Observed flows it finds denied are the stage's to tell: with
/// breaks, the guardrails deny them (refused, or opened with `--allow-breaks`); without, the
/// state denies them already, guardrails or not ([`Proposal::denied_already`]).
pub fn check(
    cluster: &Cluster,
    obs: &Observations,
    g: Guardrails,
    state: &State<'_>,
) -> Result<Proposal> {
    let nps = crate::policy_state::combine(state.applied, state.base);
    // Merged guardrails replace leash's applied ones; none merged: the applied state as it is.
    let before = if state.base_guardrails.is_empty() {
        state.applied_cluster.to_vec()
    } else {
        guardrails::replace_guardrails(state.applied_cluster, state.base_guardrails)
    };
    let stage = stage::stage(
        cluster,
        obs,
        &stage::Input {
            network_policies: &nps.objects,
            cluster_policies: &before,
            proposed: Some(&g.policies),
        },
    )
    .map_err(Error::Stage)?;
    let stack = Stack {
        network_policies: &nps.objects,
        cluster_policies: state.applied_cluster,
    };
    let denied_already = match guardrails::self_check(cluster, cluster, obs, &g, &stack) {
        Ok(()) => Vec::new(),
        Err(guardrails::Error::Denied(_)) if !stage.breaks.is_empty() => Vec::new(),
        Err(guardrails::Error::Denied(denied)) => denied,
        Err(e) => return Err(Error::SelfCheck(e)),
    };
    Ok(Proposal {
        guardrails: g,
        stage,
        denied_already,
    })
}

/// `<!-- leash:proposal sha256=HEX -->` over the guardrails' canonical texts: a closed pull
/// request that carries it proposed exactly them.
pub fn digest_line(policies: &[ClusterNetworkPolicy]) -> String {
    run::digest_of(&stage::canonical(policies))
}

/// leash's guardrails in `dir/cluster/` (the `guardrails-*.yaml` files; their objects that
/// are leash's: [`guardrails::is_guardrail`]), sorted by name; none when it does not exist.
/// Symlinks are not followed.
pub fn read(dir: &Path, what: &str) -> Result<Vec<ClusterNetworkPolicy>> {
    let cluster = dir.join(DIR);
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io {
            what: what.to_owned(),
            path,
            source,
        }
    };
    match std::fs::symlink_metadata(&cluster) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(Error::Link { path: cluster }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&cluster)(e)),
    }
    let mut files: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(&cluster).map_err(io(&cluster))? {
        let entry = entry.map_err(io(&cluster))?;
        let ours = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(".yaml"));
        if ours && entry.file_type().map_err(io(&entry.path()))?.is_file() {
            files.push(entry.path());
        }
    }
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let objects = crate::cnp::objects_of_text(&text).map_err(|source| Error::Parse {
            what: what.to_owned(),
            path: path.clone(),
            source,
        })?;
        out.extend(objects.into_iter().filter(guardrails::is_guardrail));
    }
    out.sort_by(|a, b| a.name().cmp(b.name()));
    Ok(out)
}

/// Writes the guardrails' files into `dir/cluster/` and removes the `guardrails-*.yaml` files
/// they no longer hold; symlinks are refused, never followed (the caller checks the
/// directories above `dir`).
pub fn write(dir: &Path, g: &Guardrails) -> Result<()> {
    let files = guardrails::outdir::files(g).map_err(Error::Render)?;
    let cluster = dir.join(DIR);
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Write { path, source }
    };
    for d in [dir, cluster.as_path()] {
        match std::fs::symlink_metadata(d) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(Error::Link { path: d.to_owned() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(d).map_err(write_err(d))?;
            }
            Err(e) => return Err(write_err(d)(e)),
        }
    }
    let keep: BTreeSet<PathBuf> = files.iter().map(|(rel, _)| dir.join(rel)).collect();
    for (rel, text) in &files {
        let path = dir.join(rel);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if !m.is_file() => return Err(Error::Link { path }),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(write_err(&path)(e)),
        }
        std::fs::write(&path, text).map_err(write_err(&path))?;
    }
    for entry in std::fs::read_dir(&cluster).map_err(write_err(&cluster))? {
        let entry = entry.map_err(write_err(&cluster))?;
        let path = entry.path();
        let stale = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(".yaml"))
            && !keep.contains(&path)
            && entry.file_type().map_err(write_err(&path))?.is_file();
        if stale {
            std::fs::remove_file(&path).map_err(write_err(&path))?;
        }
    }
    Ok(())
}

/// The guardrails group of one run, after the base branch is checked out and read: propose,
/// compare with the base branch and the branch tip, gate, then write, commit, push and open
/// or update the pull request. Errors of this group's own ([`Error`]) come back as
/// [`run::Error::Guardrails`]; the caller reports them as the group's outcome.
#[expect(
    clippy::too_many_arguments,
    reason = "one run's context, as propose_group takes it"
)]
pub(super) fn group(
    wc: &git::WorkingCopy,
    target: &run::Target,
    observed: &Observed<'_>,
    opts: &run::Options,
    gopts: &guardrails::Options,
    rt: &tokio::runtime::Handle,
    base_policies: &[NetworkPolicy],
    dir: &Path,
    warnings: &mut Vec<String>,
) -> run::Result<Outcome> {
    let branch = format!("{}{GROUP}", target.branch_prefix);
    let base_guardrails = read(dir, &target.base)?;
    let state = State {
        applied: observed.applied,
        base: base_policies,
        applied_cluster: observed.applied_cluster,
        base_guardrails: &base_guardrails,
    };
    let made = propose(
        observed.cluster,
        observed.observations,
        &opts.propose.recommend.classify,
        gopts,
        &state,
    )?;
    warnings.extend(made.warning());
    let after = &made.guardrails.policies;
    let canonical = stage::canonical(after);
    if stage::canonical(&base_guardrails) == canonical {
        return Ok(Outcome::Unchanged);
    }
    if let Some(tip) = wc.branch_tip(&branch) {
        wc.checkout(&tip)?;
        run::no_link(wc.dir(), &target.path.join(DIR))?;
        if stage::canonical(&read(dir, &branch)?) == canonical {
            return Ok(Outcome::UpToDate);
        }
    }
    if !made.stage.breaks.is_empty() && !opts.allow_breaks {
        return Ok(Outcome::RefusedGuardrails {
            breaks: made.stage.breaks,
        });
    }
    let digest = digest_line(after);
    if let Some(url) = run::declined(wc, target, opts, rt, &branch, &digest)? {
        return Ok(Outcome::Declined { url });
    }

    let input = body::GuardrailsInput {
        guardrails: &made.guardrails,
        before: &base_guardrails,
        breaks: &made.stage.breaks,
        window: run::window(observed.observations, observed.as_of),
        command: &opts.command,
        trigger: opts.trigger.as_deref(),
        allow_breaks: opts.allow_breaks,
    };
    let title = body::guardrails_title(&input);
    let message = body::guardrails_commit_message(&input);
    let max = target
        .provider
        .as_ref()
        .map_or(body::GITHUB_MAX_BODY, provider::Client::max_body_chars)
        .saturating_sub(digest.chars().count() + 1);
    // The report's path in the repository (`./` left out).
    let report: PathBuf = target
        .path
        .join(DIR)
        .join(crate::render::outdir::REPORT)
        .components()
        .filter(|c| *c != std::path::Component::CurDir)
        .collect();
    let report = report.to_string_lossy();
    let link = match &target.provider {
        Some(p) => p.file_url(&branch, &report),
        None => report.into_owned(),
    };
    let body_text = run::with_digest(&body::guardrails_body(&input, max, Some(&link)), &digest);

    let base_commit = wc.base_commit().to_owned();
    wc.checkout(&base_commit)?;
    run::no_link(wc.dir(), &target.path.join(DIR))?;
    write(dir, &made.guardrails)?;
    run::publish(
        wc,
        target,
        opts,
        rt,
        run::Publish {
            branch: &branch,
            base_commit: &base_commit,
            subdir: &target.path.join(DIR),
            message,
            title,
            body: body_text,
        },
    )
}
