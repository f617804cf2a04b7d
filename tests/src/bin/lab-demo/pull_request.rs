//! The demo's loop: after the lockdown and the shop's new call, leash keeps the policy
//! repository true by itself.
//!
//! 1. the team's policy repository (`DIR/policies.git`, a local bare repository) holds
//!    leash's first proposal on `main`: merged and applied (`DIR/cluster-locked.yaml`);
//! 2. a GitHub stand-in on loopback serves its pull requests;
//! 3. `leash serve --pr-repo` on the store (or, with `--no-serve`, `leash pr --flows`) sees
//!    payment's new call denied by the applied policies: an alert (`/v1/alerts`), which
//!    triggers a pull-request run;
//! 4. the pull request `leash/shop` is opened; its body (`DIR/pull-request.md`) carries the
//!    diff: the fraud-check API newly allowed for payment, and no break.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use leash_lab::forge::github::GitHub;
use leash_lab::git_server;
use leash_lab::shop;
use leash_records::error::Chain;

use super::{Background, READY_TIMEOUT, Result, STOP_TIMEOUT, fail, free_port, run_ok};

/// The repository at the stand-in.
const PROJECT: &str = "shop/policies";

/// How long the loop may take to open the pull request.
const PR_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the loop reads the observations.
pub(crate) enum Source {
    /// `leash serve --pr-repo` on this store: the alert triggers the run.
    Serve(PathBuf),
    /// `leash pr --flows` over these record files.
    Flows(Vec<PathBuf>),
}

/// What the loop did, for the summary.
pub(crate) struct Outcome {
    /// The alert that triggered it (serve), as `/v1/alerts` gave it.
    pub alert: Option<String>,
    /// The pull request's number, title and branch.
    pub number: u64,
    pub title: String,
    pub branch: String,
}

/// Runs the loop. `initial` is leash's first proposal (the files that were applied),
/// `locked` the snapshot with them applied.
pub(crate) fn pull_request(
    leash: &Path,
    out: &Path,
    initial: &std::collections::BTreeMap<String, String>,
    locked: &Path,
    source: Source,
) -> Result<Outcome> {
    // 1. The team's repository.
    let step = "policy repository";
    eprintln!("== the policy repository holds the applied proposal: policies.git (main)");
    let bare = out.join("policies.git");
    let _ = std::fs::remove_dir_all(&bare);
    let files: Vec<(&str, &str)> = initial
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    git_server::create_bare_repo(out, "policies.git", &files).map_err(|e| fail(step, Chain(&e)))?;
    let main_before = git_server::rev_parse(&bare, "main").map_err(|e| fail(step, Chain(&e)))?;

    // 2. The provider.
    let step = "GitHub stand-in";
    let token = leash_lab::forge::random_token("ghp_");
    let github = GitHub::builder(&token)
        .repo_with_git(PROJECT, &bare)
        .start()
        .map_err(|e| fail(step, Chain(&e)))?;
    let token_file = out.join("github-token");
    std::fs::write(&token_file, &token)
        .map_err(|e| fail(step, format!("{}: {}", token_file.display(), Chain(&e))))?;
    let pr_flags = |prefix: &str| -> Vec<String> {
        vec![
            format!("--{prefix}repo"),
            bare.display().to_string(),
            format!("--{prefix}provider"),
            "github".into(),
            format!("--{prefix}api-url"),
            github.api_url(),
            format!("--{prefix}project"),
            PROJECT.into(),
            format!("--{prefix}token-file"),
            token_file.display().to_string(),
        ]
    };

    // 3. The alert and the run.
    let mut alert = None;
    match source {
        Source::Serve(store) => {
            let step = "leash serve --pr-repo";
            eprintln!(
                "== leash serve --pr-repo: an alert on payment's new call opens a pull request"
            );
            let listen = SocketAddr::from(([127, 0, 0, 1], free_port(step)?));
            let http = SocketAddr::from(([127, 0, 0, 1], free_port(step)?));
            // The UI listener: `/v1`.
            let ui = SocketAddr::from(([127, 0, 0, 1], free_port(step)?));
            let mut cmd = Command::new(leash);
            cmd.arg("serve")
                .args(["--listen", &listen.to_string(), "--http", &http.to_string()])
                .args(["--ui-listen", &ui.to_string()])
                .arg("--store")
                .arg(&store)
                .arg("--cluster")
                .arg(locked)
                .args(["--insecure", "--check-interval", "1s", "--pr-after", "1"])
                .arg("--state-dir")
                .arg(out.join("state"))
                .args(pr_flags("pr-"))
                .env("LEASH_LOG", "info")
                .env("NO_COLOR", "1");
            let (mut serve, _) = Background::start(
                step,
                "leash serve --pr-repo",
                &mut cmd,
                out.join("serve-pr.log"),
                None,
            )?;
            super::poll_until(
                step,
                &mut serve,
                READY_TIMEOUT + PR_TIMEOUT,
                "pull request",
                || (!github.pulls(PROJECT).is_empty()).then_some(()),
            )?;
            let alerts = super::http_get(ui, "/v1/alerts")
                .ok_or_else(|| fail(step, "GET /v1/alerts failed"))?;
            let listed: Vec<serde_json::Value> = serde_json::from_str(&alerts)
                .map_err(|e| fail(step, format!("/v1/alerts: {}: {alerts}", Chain(&e))))?;
            let fraud = IpAddr::V4(shop::FRAUD_ADDR).to_string();
            let found = listed
                .iter()
                .find(|a| a["dst"] == fraud.as_str())
                .ok_or_else(|| {
                    fail(
                        step,
                        format!("/v1/alerts has no alert for {fraud}: {alerts}"),
                    )
                })?;
            alert = Some(format!(
                "{} {} -> {}:{}/{} ({}), occurrences {}",
                found["namespace"].as_str().unwrap_or_default(),
                found["workload"].as_str().unwrap_or_default(),
                fraud,
                found["port"],
                found["protocol"].as_str().unwrap_or_default(),
                found["names"]
                    .as_array()
                    .map(|n| n
                        .iter()
                        .filter_map(|v| v.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
                found["occurrences"],
            ));
            std::fs::write(out.join("alerts.json"), &alerts).map_err(|e| fail(step, Chain(&e)))?;
            serve.stop("stop leash serve --pr-repo", STOP_TIMEOUT)?;
        }
        Source::Flows(files) => {
            let step = "leash pr";
            eprintln!("== leash pr: payment's new call, proposed as a pull request");
            let mut cmd = Command::new(leash);
            cmd.arg("pr")
                .arg("--cluster")
                .arg(locked)
                .arg("--flows")
                .args(&files)
                .arg("--cache-dir")
                .arg(out.join("state").join("repos"))
                .args(pr_flags(""));
            run_ok(step, &mut cmd)?;
        }
    }

    // 4. The pull request.
    let step = "the pull request";
    let pulls = github.pulls(PROJECT);
    let [pr] = pulls.as_slice() else {
        return Err(fail(
            step,
            format!("expected one pull request, got {pulls:?}"),
        ));
    };
    let branch = format!("leash/{}", shop::SHOP_NS);
    if pr.head != branch || pr.base != "main" || pr.state != "open" {
        return Err(fail(
            step,
            format!("expected an open {branch} -> main, got {pr:?}"),
        ));
    }
    let body = pr.body.clone().unwrap_or_default();
    let fraud = IpAddr::V4(shop::FRAUD_ADDR).to_string();
    if !body.contains(&fraud) || !body.contains("payment") {
        return Err(fail(
            step,
            format!("the body does not show {fraud} for payment:\n{body}"),
        ));
    }
    std::fs::write(out.join("pull-request.md"), &body).map_err(|e| fail(step, Chain(&e)))?;
    let main_after = git_server::rev_parse(&bare, "main").map_err(|e| fail(step, Chain(&e)))?;
    if main_after != main_before {
        return Err(fail(step, "leash changed the base branch"));
    }
    let payment_file = format!("{}/payment-egress.yaml", shop::SHOP_NS);
    let on_branch = git_server::file_at(&bare, &branch, &payment_file)
        .map_err(|e| fail(step, Chain(&e)))?
        .unwrap_or_default();
    if !on_branch.contains(&format!("{fraud}/32")) {
        return Err(fail(
            step,
            format!("{branch}:{payment_file} does not allow {fraud}/32"),
        ));
    }
    eprintln!(
        "   pull request #{} {} ({branch} -> main):\n\n{body}\n",
        pr.number, pr.title
    );
    Ok(Outcome {
        alert,
        number: pr.number,
        title: pr.title.clone(),
        branch,
    })
}
