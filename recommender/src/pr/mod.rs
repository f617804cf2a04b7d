//! `leash pr` and the closed loop of `leash serve`: a proposal becomes a branch of the
//! team's policy repository and a pull request a reviewer can merge without fear.
//!
//! - [`secret`]: the token, read from a file or the environment, never shown.
//! - [`git`]: the working copy (the `git` command): clone or fetch into a cache, check out
//!   the base, commit, push leash's own branches only.
//! - [`provider`]: the pull and merge request APIs (GitHub REST v3, GitLab REST v4).
//! - [`body`]: the pull request's markdown (pure).
//! - [`guardrails`]: the cluster guardrails' pull request (`--guardrails`), the first stage.
//! - [`run`]: one run, from the working copy to the pull requests, the same for `leash pr`
//!   and `leash serve`.

pub mod body;
pub mod git;
pub mod guardrails;
pub mod provider;
pub mod run;
pub mod secret;
