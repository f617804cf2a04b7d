//! `leash pr --guardrails`: the cluster guardrails as their own pull request, the first stage
//! of a rollout.
//!
//! Through the built binary against a real bare repository and the GitHub stand-in over
//! loopback: the guardrails' pull request is opened first, holds only
//! `<path>/cluster/guardrails-*.yaml` and `<path>/cluster/REPORT.md`, is up to date on a
//! second run, and is updated once a namespace's pull request is merged (the Baseline's
//! deferral shrinks); the namespace groups leave `cluster/` alone. The gate (guardrails that
//! would break observed traffic are refused) is shown on the group's pure logic, since a
//! proposal made over the merge's state defers every namespace it would break.

#[expect(
    dead_code,
    reason = "each test crate uses only part of the shared test support"
)]
mod support;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use leash::classify::ClassifierConfig;
use leash::guardrails::{self, Options, Stack};
use leash::pr::body::{self, GuardrailsInput};
use leash::pr::guardrails::{self as group, State};
use leash::pr::run::{GroupReport, Outcome, describe};
use leash::recommend;
use leash_lab::forge::github::GitHub;
use leash_lab::forge::{Request, random_token};
use leash_lab::git_server::{branches, create_bare_repo, file_at, files_at, git, rev_parse};
use support::cli::{assert_code, p, stdout};
use support::recommend::{Fx, run};
use support::snapshots;

// ---- The group's logic, pure ----

fn shop() -> (Fx, Vec<leash_records::Record>) {
    support::recommend::small_shop()
}

const EMPTY: State<'static> = State {
    applied: &[],
    base: &[],
    applied_cluster: &[],
    base_guardrails: &[],
};

#[test]
fn over_the_merged_state_the_guardrails_break_nothing_and_defer_what_is_not_locked_down() {
    let (fx, records) = shop();
    let r = run(&fx, &records, &recommend::Options::default());
    let config = ClassifierConfig::default();

    // Nothing applied or merged: shop (its egress unlocked) is deferred, nothing breaks.
    let first =
        group::propose(&r.cluster, &r.obs, &config, &Options::default(), &EMPTY).expect("proposes");
    assert_eq!(
        first.guardrails.deferred.keys().collect::<Vec<_>>(),
        ["shop"]
    );
    assert!(first.stage.breaks.is_empty(), "{:?}", first.stage.breaks);
    assert_eq!(first.stage.phase, guardrails::stage::Phase::Ready);

    // The base branch gains shop's policies (its pull request merged): shop joins the
    // Baseline, still breaking nothing, and the proposal differs (an update of the pull
    // request, with another digest).
    let merged = State {
        base: &r.policies,
        ..EMPTY
    };
    let second = group::propose(&r.cluster, &r.obs, &config, &Options::default(), &merged)
        .expect("proposes");
    assert!(
        second.guardrails.deferred.is_empty(),
        "{:?}",
        second.guardrails.deferred
    );
    assert!(second.stage.breaks.is_empty(), "{:?}", second.stage.breaks);
    assert_ne!(
        group::digest_line(&first.guardrails.policies),
        group::digest_line(&second.guardrails.policies)
    );
    // The digest names the policies, whatever their order.
    let mut reversed = second.guardrails.policies.clone();
    reversed.reverse();
    assert_eq!(
        group::digest_line(&reversed),
        group::digest_line(&second.guardrails.policies)
    );

    // Once those guardrails are merged too, the base's guardrails are the stage's "before":
    // proposing again changes nothing.
    let with_guardrails = State {
        base: &r.policies,
        base_guardrails: &second.guardrails.policies,
        ..EMPTY
    };
    let third = group::propose(
        &r.cluster,
        &r.obs,
        &config,
        &Options::default(),
        &with_guardrails,
    )
    .expect("proposes");
    assert_eq!(third.guardrails.policies, second.guardrails.policies);
    assert!(third.stage.breaks.is_empty());
}

#[test]
fn guardrails_that_would_break_observed_traffic_are_refused_with_every_workload() {
    // Guardrails made for the end of the rollout (shop locked down: no deferral), checked
    // over a state where shop's policies are not merged: the Baseline default deny would
    // deny web's calls. The gate must list them, not fail the self-check.
    let (fx, records) = shop();
    let r = run(&fx, &records, &recommend::Options::default());
    let g = guardrails::propose(
        &r.cluster,
        &r.obs,
        &ClassifierConfig::default(),
        &Options::default(),
        &Stack {
            network_policies: &r.policies,
            cluster_policies: &[],
        },
    )
    .expect("proposes");
    assert!(g.deferred.is_empty());
    let checked = group::check(&r.cluster, &r.obs, g, &EMPTY).expect("the stage reports");
    let broken: Vec<String> = checked
        .stage
        .breaks
        .iter()
        .map(|w| format!("{}/{}", w.namespace, w.workload))
        .collect();
    assert!(
        broken.contains(&"shop/Deployment/web".to_owned()),
        "{broken:?}"
    );
    assert!(broken.iter().all(|w| w.starts_with("shop/")), "{broken:?}");
    let web = checked
        .stage
        .breaks
        .iter()
        .find(|w| w.workload == "Deployment/web")
        .expect("web");
    assert!(
        web.flows
            .iter()
            .any(|f| f.destination() == "203.0.113.7:443/TCP"),
        "{web:?}"
    );

    // The outcome says so on the command line, naming each flow.
    let report = GroupReport {
        group: "guardrails".into(),
        branch: "leash/guardrails".into(),
        namespaces: Default::default(),
        outcome: Outcome::RefusedGuardrails {
            breaks: checked.stage.breaks.clone(),
        },
    };
    let text = describe(&report);
    assert!(
        text.starts_with("guardrails: refused: the guardrails break the observed traffic of "),
        "{text}"
    );
    assert!(
        text.contains("shop Deployment/web -> 203.0.113.7:443/TCP, 5 events"),
        "{text}"
    );

    // With --allow-breaks the body warns loudly and lists every flow, names escaped.
    let input = GuardrailsInput {
        guardrails: &checked.guardrails,
        before: &[],
        breaks: &checked.stage.breaks,
        window: None,
        command: "leash pr --guardrails",
        trigger: None,
        allow_breaks: true,
    };
    let full = body::guardrails_full_body(&input);
    assert!(full.contains("> [!CAUTION]"), "{full}");
    assert!(
        full.contains("| `shop/Deployment/web` | `203.0.113.7:443/TCP` | 5 |"),
        "{full}"
    );
    assert!(full.contains(r"api\.example\.test"), "{full}");
    assert!(
        body::guardrails_title(&input).ends_with("workloads broken)")
            || body::guardrails_title(&input).ends_with("workload broken)"),
        "{}",
        body::guardrails_title(&input)
    );
}

#[test]
fn a_namespace_whose_policies_lag_behind_its_traffic_is_warned_about_not_failed() {
    // shop's default deny alone is applied: web's calls are denied by a NetworkPolicy, with
    // or without the guardrails. No break of the guardrails' (the Baseline never decides
    // for shop), so the group proposes them and warns.
    let (fx, records) = shop();
    let r = run(&fx, &records, &recommend::Options::default());
    let deny: Vec<_> = r
        .policies
        .iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some("shop")
                && p.metadata.name.as_deref() == Some("default-deny-egress")
        })
        .cloned()
        .collect();
    assert_eq!(deny.len(), 1, "{:?}", r.policies);
    let state = State {
        applied: &deny,
        ..EMPTY
    };
    let made = group::propose(
        &r.cluster,
        &r.obs,
        &ClassifierConfig::default(),
        &Options::default(),
        &state,
    )
    .expect("proposes");
    assert!(made.stage.breaks.is_empty(), "{:?}", made.stage.breaks);
    assert!(
        made.guardrails.deferred.is_empty(),
        "{:?}",
        made.guardrails.deferred
    );
    assert!(
        made.denied_already
            .iter()
            .all(|d| d.pod.starts_with("shop/")),
        "{:?}",
        made.denied_already
    );
    let warning = made.warning().expect("a warning");
    assert!(
        warning.starts_with("guardrails: ")
            && warning.contains("observed flow(s) are denied with or without the guardrails"),
        "{warning}"
    );
    // Nothing lags behind over the whole proposal: no warning.
    let merged = State {
        base: &r.policies,
        ..state
    };
    let clean = group::propose(
        &r.cluster,
        &r.obs,
        &ClassifierConfig::default(),
        &Options::default(),
        &merged,
    )
    .expect("proposes");
    assert_eq!(clean.warning(), None);
}

#[test]
fn the_body_explains_the_stage_order_and_the_deferrals_and_fits_the_limit() {
    let (fx, records) = shop();
    let r = run(&fx, &records, &recommend::Options::default());
    let made = group::propose(
        &r.cluster,
        &r.obs,
        &ClassifierConfig::default(),
        &Options::default(),
        &EMPTY,
    )
    .expect("proposes");
    let input = GuardrailsInput {
        guardrails: &made.guardrails,
        before: &[],
        breaks: &made.stage.breaks,
        window: None,
        command: "leash pr --guardrails",
        trigger: Some("newly ready: *web* in `shop`"),
        allow_breaks: false,
    };
    let full = body::guardrails_full_body(&input);
    assert!(
        full.starts_with("<!-- leash:pr group=guardrails -->\n"),
        "{full}"
    );
    assert!(full.contains(guardrails::STAGE_ORDER), "{full}");
    assert!(
        full.contains("- Observed traffic: breaks no workload's observed traffic"),
        "{full}"
    );
    assert!(full.contains("- Deferred namespaces: `shop` "), "{full}");
    assert!(full.contains("## Deferred namespaces"), "{full}");
    assert!(
        full.contains("| `guardrails-default-deny` | added |"),
        "{full}"
    );
    assert!(!full.contains("# leash guardrails"), "{full}");
    assert!(!full.contains("[!CAUTION]"), "{full}");
    // The trigger is tenant text: escaped.
    assert!(
        full.contains(r"newly ready\: \*web\* in \`shop\`"),
        "{full}"
    );
    let title = body::guardrails_title(&input);
    assert_eq!(
        title,
        format!(
            "leash: cluster guardrails ({} ClusterNetworkPolicies)",
            made.guardrails.policies.len()
        )
    );
    let message = body::guardrails_commit_message(&input);
    assert!(message.starts_with(&format!("{title}\n\n")), "{message}");
    assert!(message.contains("Deferred by the Baseline"), "{message}");
    assert!(message.contains("- guardrails-default-deny\n"), "{message}");

    // Over the limit: the summary and a link to the report on the branch.
    let short = body::guardrails_body(&input, 1200, Some("https://forge.test/r/cluster/REPORT.md"));
    assert!(short.chars().count() <= 1200, "{short}");
    assert!(
        short.starts_with("<!-- leash:pr group=guardrails -->\n"),
        "{short}"
    );
    assert!(
        short.contains("[the guardrails' report](<https://forge.test/r/cluster/REPORT.md>)"),
        "{short}"
    );
    // Same input, same bytes.
    assert_eq!(full, body::guardrails_full_body(&input));
}

// ---- Through the binary, with a real repository and the GitHub stand-in ----

/// shop: Deployment `frontend`; data: StatefulSet `postgres` behind data/postgres. No
/// policy applied.
fn snapshot() -> String {
    snapshots::list(&[
        snapshots::namespace("shop"),
        snapshots::namespace("data"),
        snapshots::frontend_pod(1, "10.244.1.10"),
        snapshots::postgres_pod(),
        snapshots::postgres_service(),
    ])
}

/// A flow record of `pod` in `ns` to `dst:port`/TCP.
fn flow(ns: &str, pod: &str, dst: &str, port: u16, names: &str) -> String {
    format!(
        r#"{{"v":1,"kind":"flow","node":"n1","pod":{{"uid":"uid-{pod}","namespace":"{ns}","name":"{pod}"}},"cgroup":"/k","protocol":"TCP","dst":"{dst}","dst_port":{port},"count":10,"first_seen":"2026-11-20T08:00:00Z","last_seen":"2026-11-23T08:00:00Z","names":[{names}]}}"#
    )
}

/// frontend calls the payment API and postgres; postgres sends backups out.
fn flows() -> Vec<String> {
    vec![
        flow(
            "shop",
            "frontend-1",
            "203.0.113.10",
            443,
            r#""api.pay.test""#,
        ),
        flow("shop", "frontend-1", "10.96.0.20", 5432, ""),
        flow(
            "data",
            "postgres-0",
            "198.51.100.5",
            443,
            r#""backup.test""#,
        ),
    ]
}

struct Lab {
    _tmp: tempfile::TempDir,
    bare: PathBuf,
    cluster: PathBuf,
    cache: PathBuf,
    token_file: PathBuf,
    flows: PathBuf,
    gh: GitHub,
}

fn lab() -> Lab {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bare = create_bare_repo(
        &tmp.path().join("repos"),
        "policies.git",
        &[("README.md", "the team's policies\n")],
    )
    .expect("bare repository");
    let cluster = tmp.path().join("cluster.yaml");
    std::fs::write(&cluster, snapshot()).expect("snapshot");
    let token = random_token("ghp_");
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token");
    let flows_path = tmp.path().join("flows.jsonl");
    std::fs::write(&flows_path, flows().join("\n") + "\n").expect("flows");
    let gh = GitHub::builder(&token)
        .repo_with_git("o/policies", &bare)
        .start()
        .expect("GitHub stand-in");
    Lab {
        cache: tmp.path().join("cache"),
        _tmp: tmp,
        bare,
        cluster,
        token_file,
        flows: flows_path,
        gh,
    }
}

impl Lab {
    /// `leash pr --guardrails` to the stand-in, proposal under `policies`, and `extra`.
    fn pr(&self, extra: &[&str]) -> Output {
        let api = self.gh.api_url();
        let mut args = vec![
            "pr",
            "--cluster",
            p(&self.cluster),
            "--flows",
            p(&self.flows),
            "--repo",
            p(&self.bare),
            "--path",
            "policies",
            "--cache-dir",
            p(&self.cache),
            "--provider",
            "github",
            "--api-url",
            &api,
            "--project",
            "o/policies",
            "--token-file",
            p(&self.token_file),
            "--guardrails",
        ];
        args.extend_from_slice(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_leash"))
            .args(&args)
            .env_remove("LEASH_GIT_TOKEN")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(Stdio::null())
            .output()
            .expect("runs leash");
        assert_code(&out, 0);
        out
    }

    /// The user merges `branch`: main fast-forwards to it.
    fn merge(&self, branch: &str) {
        git(
            &self.bare,
            &[
                "update-ref",
                "refs/heads/main",
                &format!("refs/heads/{branch}"),
            ],
        )
        .expect("merge");
    }

    fn tip(&self, rev: &str) -> Option<String> {
        rev_parse(&self.bare, rev).expect("rev-parse")
    }

    /// The files `rev` changes from main's tip `base`.
    fn changed(&self, base: &str, rev: &str) -> Vec<String> {
        let out = git(&self.bare, &["diff", "--name-only", base, rev]).expect("diff");
        out.lines().map(str::to_owned).collect()
    }

    /// The `values` of the default deny's NotIn namespace selector on `rev`.
    fn left_out(&self, rev: &str) -> String {
        let text = file_at(
            &self.bare,
            rev,
            "policies/cluster/guardrails-default-deny.yaml",
        )
        .expect("reads")
        .expect("the default deny");
        let v: serde_json::Value = serde_norway::from_str(&text).expect("yaml");
        v["spec"]["subject"]["namespaces"]["matchExpressions"][0]["values"].to_string()
    }
}

fn lines(requests: &[Request]) -> Vec<String> {
    requests.iter().map(Request::line).collect()
}

fn body_of(r: &Request) -> String {
    r.json
        .as_ref()
        .and_then(|j| j["body"].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn the_guardrails_pull_request_goes_first_and_follows_the_merges() {
    let lab = lab();
    let main = lab.tip("main").expect("main");

    // First run: the guardrails' pull request first, then one per namespace.
    let o = lab.pr(&[]);
    let out = stdout(&o);
    let order: Vec<&str> = out.lines().filter_map(|l| l.split(':').next()).collect();
    assert_eq!(order, ["guardrails", "data", "shop"], "{out}");
    assert!(
        out.contains("guardrails: pushed ") && out.contains(" to leash/guardrails, opened #1 "),
        "{out}"
    );
    assert_eq!(
        branches(&lab.bare).expect("branches"),
        ["leash/data", "leash/guardrails", "leash/shop", "main"]
    );
    assert_eq!(lab.tip("main").as_deref(), Some(&*main), "main moved");
    let requests = lab.gh.requests();
    assert_eq!(
        lines(&requests)[..3],
        [
            "GET /repos/o/policies/pulls?head=o%3Aleash%2Fguardrails&state=closed&per_page=100",
            "GET /repos/o/policies/pulls?head=o%3Aleash%2Fguardrails&state=open&per_page=100",
            "POST /repos/o/policies/pulls",
        ]
    );

    // Its branch changes only the guardrails' files, under policies/cluster/.
    let changed = lab.changed(&main, "leash/guardrails");
    assert!(!changed.is_empty());
    assert!(
        changed.iter().all(|f| f == "policies/cluster/REPORT.md"
            || (f.starts_with("policies/cluster/guardrails-") && f.ends_with(".yaml"))),
        "{changed:?}"
    );
    assert!(changed.contains(&"policies/cluster/guardrails-default-deny.yaml".to_owned()));
    // Nothing is locked down yet: both namespaces are deferred (and kube-system exempt).
    assert_eq!(
        lab.left_out("leash/guardrails"),
        r#"["data","kube-system","shop"]"#
    );
    // The namespace branches never touch cluster/.
    for branch in ["leash/shop", "leash/data"] {
        let changed = lab.changed(&main, branch);
        assert!(
            changed.iter().all(|f| !f.starts_with("policies/cluster/")),
            "{branch}: {changed:?}"
        );
    }

    // Its body: marker, digest, the stage order, no breaks, the deferrals.
    let post = &requests[2];
    assert_eq!(
        post.json.as_ref().and_then(|j| j["head"].as_str()),
        Some("leash/guardrails")
    );
    let title = post
        .json
        .as_ref()
        .and_then(|j| j["title"].as_str())
        .unwrap_or_default();
    assert!(title.starts_with("leash: cluster guardrails ("), "{title}");
    let body = body_of(post);
    assert!(
        body.starts_with("<!-- leash:pr group=guardrails -->\n<!-- leash:proposal sha256="),
        "{body}"
    );
    assert!(body.contains("## Rollout order"), "{body}");
    assert!(
        body.contains("breaks no workload's observed traffic"),
        "{body}"
    );
    assert!(
        body.contains("- Deferred namespaces: `data`, `shop` "),
        "{body}"
    );
    // A namespace's body says it is the second stage.
    let shop_post = requests
        .iter()
        .filter(|r| r.line() == "POST /repos/o/policies/pulls")
        .find(|r| r.json.as_ref().and_then(|j| j["head"].as_str()) == Some("leash/shop"))
        .expect("shop's pull request");
    assert!(
        body_of(shop_post).contains(body::STAGE_TWO),
        "{}",
        body_of(shop_post)
    );

    // Second run, same input: the guardrails' branch holds these guardrails.
    let before = lab.gh.requests().len();
    let tip = lab.tip("leash/guardrails");
    let o = lab.pr(&[]);
    assert!(
        stdout(&o).contains("guardrails: leash/guardrails already holds these policies"),
        "{}",
        stdout(&o)
    );
    assert_eq!(lab.tip("leash/guardrails"), tip);
    assert_eq!(lab.gh.requests().len(), before, "no API call");

    // shop's pull request is merged: the next run updates the guardrails' pull request, and
    // the Baseline covers shop.
    lab.merge("leash/shop");
    assert!(lab.gh.merge_pull("o/policies", 3));
    let o = lab.pr(&[]);
    let out = stdout(&o);
    assert!(out.contains(" to leash/guardrails, updated #1 "), "{out}");
    assert!(out.contains("shop: unchanged"), "{out}");
    assert_eq!(
        lab.left_out("leash/guardrails"),
        r#"["data","kube-system"]"#
    );
    let update = lab
        .gh
        .requests()
        .into_iter()
        .rfind(|r| r.line().starts_with("PATCH "))
        .expect("an update");
    assert!(
        body_of(&update).contains("- Deferred namespaces: `data` "),
        "{}",
        body_of(&update)
    );

    // The guardrails are merged too: the next runs leave them, and the namespace groups
    // (by namespace, then all at once) neither fail on the files in cluster/ nor remove them.
    lab.merge("leash/guardrails");
    let merged = lab.tip("main").expect("main");
    let o = lab.pr(&[]);
    assert!(
        stdout(&o).contains("guardrails: unchanged"),
        "{}",
        stdout(&o)
    );
    // shop's proposal is read from main beside the guardrails' files: unchanged.
    assert!(stdout(&o).contains("shop: unchanged"), "{}", stdout(&o));
    let o = lab.pr(&["--group-by", "all"]);
    let out = stdout(&o);
    assert!(out.contains("guardrails: unchanged"), "{out}");
    assert!(out.contains(" to leash/all, opened "), "{out}");
    let all = lab.changed(&merged, "leash/all");
    assert!(
        all.iter().all(|f| !f.starts_with("policies/cluster/")),
        "{all:?}"
    );
    let files = files_at(&lab.bare, "leash/all").expect("files");
    assert!(
        files.contains(&"policies/cluster/guardrails-default-deny.yaml".to_owned())
            && files.contains(&"policies/cluster/REPORT.md".to_owned()),
        "{files:?}"
    );
}

#[test]
fn a_namespace_named_cluster_is_refused_clearly_and_the_others_run() {
    let lab = lab();
    let snapshot = snapshots::list(&[
        snapshots::namespace("cluster"),
        snapshots::namespace("shop"),
        snapshots::frontend_pod(1, "10.244.1.10"),
        snapshots::deployment("cluster", "app", "app-1", "10.244.3.10"),
    ]);
    std::fs::write(&lab.cluster, snapshot).expect("snapshot");
    let mut more = flows()[..2].to_vec();
    more.push(
        flow("cluster", "app-1", "203.0.113.20", 443, "").replace("uid-app-1", "uid-pod-app"),
    );
    std::fs::write(&lab.flows, more.join("\n") + "\n").expect("flows");
    let api = lab.gh.api_url();
    let out = Command::new(env!("CARGO_BIN_EXE_leash"))
        .args([
            "pr",
            "--cluster",
            p(&lab.cluster),
            "--flows",
            p(&lab.flows),
            "--repo",
            p(&lab.bare),
            "--path",
            "policies",
            "--cache-dir",
            p(&lab.cache),
            "--provider",
            "github",
            "--api-url",
            &api,
            "--project",
            "o/policies",
            "--token-file",
            p(&lab.token_file),
            "--guardrails",
        ])
        .env_remove("LEASH_GIT_TOKEN")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::null())
        .output()
        .expect("runs leash");
    assert_code(&out, 2);
    let text = stdout(&out);
    assert!(
        text.contains(
            "cluster: failed: namespace cluster: its directory policies/cluster holds the \
             guardrails"
        ),
        "{text}"
    );
    assert!(text.contains(" to leash/guardrails, opened "), "{text}");
    assert!(text.contains(" to leash/shop, opened "), "{text}");
    assert_eq!(
        branches(&lab.bare).expect("branches"),
        ["leash/guardrails", "leash/shop", "main"]
    );
}

#[test]
fn a_dry_run_pushes_nothing_and_a_declined_proposal_is_not_opened_again() {
    let lab = lab();
    let o = lab.pr(&["--dry-run"]);
    let out = stdout(&o);
    assert!(
        out.starts_with(
            "guardrails: would commit to leash/guardrails and propose \"leash: cluster \
             guardrails ("
        ),
        "{out}"
    );
    assert!(
        out.contains("<!-- leash:pr group=guardrails -->\n<!-- leash:proposal sha256="),
        "{out}"
    );
    assert_eq!(branches(&lab.bare).expect("branches"), ["main"]);
    assert!(lab.gh.requests().is_empty(), "a dry run calls no API");

    lab.pr(&[]);
    assert!(lab.gh.close_pull("o/policies", 1));
    git(&lab.bare, &["branch", "-D", "leash/guardrails"]).expect("delete the branch");
    let o = lab.pr(&[]);
    assert!(
        stdout(&o).contains(
            "guardrails: a closed pull request of leash/guardrails proposed these policies; not \
             proposed again"
        ),
        "{}",
        stdout(&o)
    );
    assert_eq!(lab.tip("leash/guardrails"), None, "nothing pushed");
}

#[test]
fn the_files_replace_stale_guardrails_keep_others_and_never_follow_a_symlink() {
    let (fx, records) = shop();
    let r = run(&fx, &records, &recommend::Options::default());
    let made = group::propose(
        &r.cluster,
        &r.obs,
        &ClassifierConfig::default(),
        &Options::default(),
        &EMPTY,
    )
    .expect("proposes");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("repo/policies");
    group::write(&dir, &made.guardrails).expect("writes");
    assert_eq!(
        group::read(&dir, "main").expect("reads"),
        made.guardrails.policies
    );
    // A guardrail an earlier run wrote and this one no longer proposes goes; the team's file
    // stays.
    let cluster = dir.join("cluster");
    let stale = cluster.join("guardrails-protected.yaml");
    std::fs::copy(cluster.join("guardrails-metadata.yaml"), &stale).expect("copies");
    std::fs::write(cluster.join("notes.yaml"), "kind: ConfigMap\n").expect("writes");
    group::write(&dir, &made.guardrails).expect("writes");
    assert!(!stale.exists());
    assert!(cluster.join("notes.yaml").exists());

    // A symlinked report is refused, its target untouched.
    let outside = tmp.path().join("outside.md");
    std::fs::write(&outside, "mine\n").expect("writes");
    std::fs::remove_file(cluster.join("REPORT.md")).expect("removes");
    std::os::unix::fs::symlink(&outside, cluster.join("REPORT.md")).expect("links");
    let err = group::write(&dir, &made.guardrails).expect_err("a symlink");
    assert!(matches!(err, group::Error::Link { .. }), "{err}");
    assert_eq!(std::fs::read_to_string(&outside).expect("reads"), "mine\n");
}
