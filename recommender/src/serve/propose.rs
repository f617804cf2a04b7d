//! The closed loop: `leash serve --pr-repo` keeps the policy repository true. On the
//! interval, and soon after a trigger, the proposal is made again from the store and the
//! same run as `leash pr` ([`crate::pr::run`]) commits, pushes and opens or updates the pull
//! requests. Triggers: an unexpected-egress alert that keeps recurring (`--pr-after`
//! occurrences), workloads newly `ready` on the rollout board, and new published ranges
//! (`--ip-ranges` files that changed, [`super::ranges`]). Each pull request says
//! what triggered it. The interval counts from the last run, remembered under the clone
//! cache (`last-run`) so that restarts do not postpone it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use leash_records::error::Chain;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};

use super::ModelRx;
use super::alert::{Alert, AlertKey};
use super::shadow::{Board, BoardRx};
use crate::pr::run::{self, Outcome, Report, Target};
use crate::rollout::Phase;
use crate::store::Store;

/// What the loop needs.
#[derive(Debug)]
pub struct Options {
    /// Where the proposal goes (`--pr-repo` and its twins).
    pub target: Target,
    /// How to run (`--pr-allow-breaks`, the recommender's knobs, the reproducing command).
    pub run: run::Options,
    /// A run at least this often (`--pr-interval`).
    pub interval: Duration,
    /// An alert triggers a run once it recurred this many times (`--pr-after`).
    pub after: u64,
}

/// Namespace → the web URL of the pull request that carries its proposal; alerts link it.
pub type PullsTx = watch::Sender<BTreeMap<String, String>>;

/// The results a run is counted by.
const RESULTS: [&str; 4] = ["pushed", "unchanged", "refused", "error"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

/// The loop's metrics.
#[derive(Debug, Clone, Default)]
pub struct PrMetrics {
    runs: Family<ResultLabels, Counter>,
    open: Gauge,
    last_success: Gauge<f64, AtomicU64>,
}

impl PrMetrics {
    /// Registers under `registry`.
    pub fn register(&self, registry: &mut Registry) {
        // Every result at 0 from the start: a rate over the family works before the first
        // run, and the family is served without `--pr-repo` too.
        for result in RESULTS {
            let _ = self.runs.get_or_create(&ResultLabels {
                result: result.to_owned(),
            });
        }
        registry.register(
            "pr_runs",
            "Runs of the pull-request loop by result: pushed (a branch changed), unchanged, \
             refused (the change breaks observed traffic), error",
            self.runs.clone(),
        );
        registry.register(
            "pr_open",
            "Pull requests leash opened or updated that carry a proposal not yet in the base \
             branch",
            self.open.clone(),
        );
        registry.register(
            "pr_last_success_timestamp_seconds",
            "When a run of the pull-request loop last completed without error (Unix time)",
            self.last_success.clone(),
        );
    }

    fn count(&self, result: &str) {
        self.runs
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }
}

/// How long the loop waits after a trigger for others to fold into the same run.
const DEBOUNCE: Duration = Duration::from_secs(1);
/// The longest a trigger waits for its run while more keep coming.
const DEBOUNCE_MAX: Duration = Duration::from_secs(5);

/// What the loop listens to besides the interval.
struct Triggers {
    recurrences: mpsc::Receiver<Alert>,
    alerts_open: bool,
    board: BoardRx,
    board_open: bool,
    /// Keys that triggered a run already (once per key and process).
    triggered: HashSet<AlertKey>,
    /// The workloads `ready` on the last board; `None` before the first.
    ready: Option<BTreeSet<(String, String)>>,
    /// An alert triggers once it recurred this many times (`--pr-after`).
    after: u64,
    /// The namespaces the loop proposes for (`--pr-namespace`); empty means all.
    scope: BTreeSet<String>,
    /// The published ranges (`--ip-ranges`), when there are files to watch.
    ranges: Option<super::ranges::RangesRx>,
}

/// The trigger of new published ranges; pending forever without them (or once closed).
async fn ranges_changed(rx: &mut Option<super::ranges::RangesRx>) -> Option<String> {
    let Some(r) = rx else {
        return std::future::pending().await;
    };
    if r.changed().await.is_err() {
        *rx = None;
        return None;
    }
    let text = super::ranges::files_text(&r.borrow_and_update());
    Some(format!("the published ranges changed: {text}"))
}

impl Triggers {
    /// The next trigger from an alert or the board; `None` for news that triggers nothing
    /// (and, forever, once both feeds are closed).
    async fn next(&mut self) -> Option<String> {
        if !self.alerts_open && !self.board_open && self.ranges.is_none() {
            return std::future::pending().await;
        }
        tokio::select! {
            t = ranges_changed(&mut self.ranges) => t,
            alert = self.recurrences.recv(), if self.alerts_open => match alert {
                Some(a) => recurring(&a, self.after, &self.scope, &mut self.triggered),
                None => { self.alerts_open = false; None }
            },
            changed = self.board.changed(), if self.board_open => match changed {
                Ok(()) => {
                    let board = self.board.borrow_and_update().clone();
                    newly_ready(board.as_deref(), &self.scope, &mut self.ready)
                }
                Err(_) => { self.board_open = false; None }
            },
        }
    }
}

/// Runs until the task is dropped, once the model is there: on the interval (the first run
/// one interval after start), and soon after a trigger (others arriving within [`DEBOUNCE`]
/// share its run, for at most [`DEBOUNCE_MAX`]). Runs never overlap; triggers that arrive
/// during a run are folded into the next one.
#[expect(
    clippy::too_many_arguments,
    reason = "the one call site, serve::run, hands over each feed of the loop"
)]
pub async fn watch(
    store: Arc<dyn Store>,
    mut model: ModelRx,
    board: BoardRx,
    recurrences: mpsc::Receiver<Alert>,
    opts: Arc<Options>,
    metrics: PrMetrics,
    pulls: PullsTx,
    ranges: Option<super::ranges::RangesRx>,
) {
    if model.wait_for(Option::is_some).await.is_err() {
        return;
    }
    let first = first_run_in(
        last_run(&opts.target.cache),
        chrono::Utc::now(),
        opts.interval,
    );
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + first, opts.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut triggers = Triggers {
        recurrences,
        alerts_open: true,
        board,
        board_open: true,
        triggered: HashSet::new(),
        ready: None,
        after: opts.after,
        scope: opts.run.propose.recommend.namespaces.clone(),
        ranges,
    };
    loop {
        let trigger = tokio::select! {
            _ = ticker.tick() => format!(
                "the periodic run (every {})",
                humantime::format_duration(opts.interval)
            ),
            t = triggers.next() => match t {
                Some(first) => fold(first, &mut triggers).await,
                None => continue,
            },
        };
        let published = triggers.ranges.as_ref().map(|r| Arc::clone(&r.borrow()));
        run_once(&store, &model, &opts, &metrics, &pulls, trigger, published).await;
        // The interval counts from the last run, across restarts too.
        ticker.reset();
        remember_run(&opts.target.cache, chrono::Utc::now());
    }
}

/// The file under the clone cache that holds when the last run ended (RFC 3339): a restart
/// more often than `--pr-interval` must not postpone the periodic run forever.
const LAST_RUN: &str = "last-run";

/// When the last run ended, if a run was remembered under `cache`.
fn last_run(cache: &std::path::Path) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = std::fs::read_to_string(cache.join(LAST_RUN)).ok()?;
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Remembers under `cache` that a run ended at `at`; a failure is logged (the periodic run then
/// waits a whole interval after a restart).
fn remember_run(cache: &std::path::Path, at: chrono::DateTime<chrono::Utc>) {
    let path = cache.join(LAST_RUN);
    let tmp = cache.join(format!("{LAST_RUN}.tmp"));
    let written = std::fs::create_dir_all(cache)
        .and_then(|()| std::fs::write(&tmp, leash_records::time::rfc3339(at) + "\n"))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(error = %Chain(&e), path = %path.display(), "cannot remember the pull-request run's time");
    }
}

/// How long until the first periodic run: an interval after the last run remembered (at
/// once when that is past), an interval after start without one, never more than an
/// interval (a clock set back).
fn first_run_in(
    last: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
    interval: Duration,
) -> Duration {
    let Some(last) = last else {
        return interval;
    };
    let since = now.signed_duration_since(last).to_std().unwrap_or_default();
    interval.saturating_sub(since)
}

/// `first` and the triggers that follow it until none came for [`DEBOUNCE`] (waiting at
/// most [`DEBOUNCE_MAX`]), joined.
async fn fold(first: String, triggers: &mut Triggers) -> String {
    let mut all = vec![first];
    let now = tokio::time::Instant::now;
    let deadline = now() + DEBOUNCE_MAX;
    let mut quiet = now() + DEBOUNCE;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(quiet.min(deadline)) => break,
            t = triggers.next() => {
                // News that triggers nothing (every check's board) does not delay the run.
                if let Some(t) = t {
                    all.push(t);
                    quiet = now() + DEBOUNCE;
                }
            }
        }
    }
    all.join("; ")
}

/// The trigger of a recurring alert, once it recurred `after` times (once per key), in a
/// namespace of `scope` (empty meaning all).
fn recurring(
    alert: &Alert,
    after: u64,
    scope: &BTreeSet<String>,
    triggered: &mut HashSet<AlertKey>,
) -> Option<String> {
    // A drift is news at once: the name moved, and the next connection to it is denied.
    let drift = alert.kind == crate::serve::alert::AlertKind::DnsDrift;
    if (!drift && alert.occurrences < after)
        || !(scope.is_empty() || scope.contains(&alert.workload.namespace))
    {
        return None;
    }
    if !triggered.insert(alert.key()) {
        return None;
    }
    let dst = std::net::SocketAddr::new(alert.dst, alert.port);
    if drift {
        return Some(format!(
            "DNS drift for {}/{} in {}: {} moved to {dst}/{}",
            alert.workload.kind,
            alert.workload.name,
            alert.workload.namespace,
            alert.names.join(", "),
            alert.protocol,
        ));
    }
    Some(format!(
        "unexpected egress from {}/{} in {} to {dst}/{}, seen in {} checks",
        alert.workload.kind,
        alert.workload.name,
        alert.workload.namespace,
        alert.protocol,
        alert.occurrences
    ))
}

/// The trigger of workloads (in `scope`, empty meaning all) that became `ready` since the
/// last board. The first board only sets what is known: workloads ready at start are not new,
/// and the periodic run covers them.
fn newly_ready(
    board: Option<&Board>,
    scope: &BTreeSet<String>,
    seen: &mut Option<BTreeSet<(String, String)>>,
) -> Option<String> {
    let current = board?;
    let now: BTreeSet<(String, String)> = current
        .statuses
        .iter()
        .filter(|s| s.phase == Phase::Ready)
        .filter(|s| scope.is_empty() || scope.contains(&s.namespace))
        .map(|s| (s.namespace.clone(), s.workload.clone()))
        .collect();
    let new: Vec<String> = match seen {
        Some(before) => now
            .difference(before)
            .map(|(ns, w)| format!("{w} in {ns}"))
            .collect(),
        None => Vec::new(),
    };
    *seen = Some(now);
    if new.is_empty() {
        return None;
    }
    Some(format!("newly ready: {}", new.join(", ")))
}

/// One run of [`run::run`] over the whole store, on a blocking thread, with the current
/// published ranges when they are watched.
async fn run_once(
    store: &Arc<dyn Store>,
    model: &ModelRx,
    opts: &Arc<Options>,
    metrics: &PrMetrics,
    pulls: &PullsTx,
    trigger: String,
    published: Option<Arc<crate::ranges::PublishedRanges>>,
) {
    let Some(state) = model.borrow().clone() else {
        return;
    };
    let store = Arc::clone(store);
    let opts = Arc::clone(opts);
    let handle = tokio::runtime::Handle::current();
    tracing::info!(%trigger, "pull-request run");
    let done = tokio::task::spawn_blocking(move || -> Result<Report, String> {
        let (observations, skipped) =
            crate::observations::load(store.as_ref(), &state.cluster, None)
                .map_err(|e| Chain(&e).to_string())?;
        let skipped = crate::recommend::skipped_lines(&skipped);
        let observed = crate::proposal::Observed {
            cluster: &state.cluster,
            applied: &state.policies,
            applied_cluster: &state.cluster_policies,
            applied_source: "the cluster",
            observations: &observations,
            history: None,
            as_of: chrono::Utc::now(),
            skipped: &skipped,
        };
        let mut run_opts = run::Options {
            trigger: Some(trigger),
            ..opts.run.clone()
        };
        if let Some(p) = published {
            run_opts.propose.recommend.published = p;
        }
        run::run(&opts.target, &observed, &run_opts, &handle).map_err(|e| Chain(&e).to_string())
    })
    .await;
    let report = match done {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            metrics.count("error");
            tracing::warn!(error = %e, "pull-request run failed");
            return;
        }
        Err(e) => {
            metrics.count("error");
            tracing::warn!(error = %Chain(&e), "pull-request run task failed");
            return;
        }
    };
    metrics.count(result(&report));
    metrics
        .last_success
        .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
    pulls.send_modify(|open| {
        for g in &report.groups {
            match &g.outcome {
                Outcome::Pushed {
                    pull_request: Some(pr),
                    ..
                } => {
                    let url = match pr {
                        crate::pr::provider::Outcome::Created(p)
                        | crate::pr::provider::Outcome::Updated(p) => p.url.clone(),
                    };
                    for ns in &g.namespaces {
                        open.insert(ns.clone(), url.clone());
                    }
                }
                // The base holds the proposal: its pull request was merged or is obsolete.
                Outcome::Unchanged => {
                    for ns in &g.namespaces {
                        open.remove(ns);
                    }
                }
                _ => {}
            }
        }
        let distinct: BTreeSet<&String> = open.values().collect();
        metrics
            .open
            .set(i64::try_from(distinct.len()).unwrap_or(i64::MAX));
    });
    for w in &report.warnings {
        tracing::warn!(warning = %w, "pull-request run");
    }
    for g in &report.groups {
        match &g.outcome {
            Outcome::Refused { breaks } => tracing::warn!(
                group = %g.group,
                breaks = breaks.len(),
                "pull request refused: the change breaks observed traffic (--pr-allow-breaks)"
            ),
            Outcome::RefusedGuardrails { breaks } => tracing::warn!(
                group = %g.group,
                workloads = breaks.len(),
                "pull request refused: the guardrails break observed traffic (--pr-allow-breaks)"
            ),
            Outcome::Failed { error, .. } => tracing::warn!(
                group = %g.group,
                %error,
                "pull request failed; the other groups ran"
            ),
            Outcome::Pushed { commit, .. } => {
                tracing::info!(group = %g.group, branch = %g.branch, %commit, "pull request pushed")
            }
            // `--pr-dry-run`: the log is where the commit and the body are shown.
            Outcome::DryRun { .. } => tracing::info!("{}", run::describe(g)),
            _ => {}
        }
    }
}

/// The run's result label: the strongest of its groups' outcomes.
fn result(report: &Report) -> &'static str {
    if report.refused() {
        "refused"
    } else if report.failed().is_some() {
        "error"
    } else if report
        .groups
        .iter()
        .any(|g| matches!(g.outcome, Outcome::Pushed { .. }))
    {
        "pushed"
    } else {
        "unchanged"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::WorkloadRef;
    use leash_records::Protocol;

    fn status(ns: &str, workload: &str, phase: Phase) -> crate::rollout::WorkloadStatus {
        crate::rollout::WorkloadStatus {
            namespace: ns.into(),
            workload: workload.into(),
            phase,
            observed_for_seconds: 0,
            would_deny: Vec::new(),
            denied: Vec::new(),
            policies: Vec::new(),
            id: 0,
            min_observation: chrono::Duration::hours(24),
        }
    }

    fn board(statuses: Vec<crate::rollout::WorkloadStatus>) -> Board {
        Board {
            statuses,
            stage: crate::guardrails::stage::Stage {
                phase: crate::guardrails::stage::Phase::Absent,
                applied: Vec::new(),
                proposed: Vec::new(),
                breaks: Vec::new(),
                denied: Vec::new(),
            },
            model_generation: 1,
            proposal_generation: Some(1),
            flows: 0,
            evaluated_at: chrono::Utc::now(),
        }
    }

    fn alert(ns: &str, occurrences: u64) -> Alert {
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        Alert {
            kind: crate::serve::alert::AlertKind::EgressDenied,
            workload: WorkloadRef {
                namespace: ns.into(),
                kind: "Deployment".into(),
                name: "payment".into(),
            },
            pod: "payment-1".into(),
            dst: "2001:db8::60".parse().expect("address"),
            port: 8443,
            protocol: Protocol::Tcp,
            count: 2,
            last_seen: t,
            names: Vec::new(),
            policies: Vec::new(),
            fix: None,
            pull_request: None,
            occurrences,
            first_sent: t,
            last_sent: t,
        }
    }

    /// The first board is what is known; a workload turning `ready` later triggers once;
    /// workloads outside the scope never do.
    #[test]
    fn workloads_newly_ready_trigger_once() {
        let all = BTreeSet::new();
        let mut seen = None;
        assert_eq!(newly_ready(None, &all, &mut seen), None, "no board yet");
        assert_eq!(seen, None);
        let first = board(vec![
            status("shop", "Deployment/a", Phase::Ready),
            status("shop", "Deployment/b", Phase::Observing),
        ]);
        assert_eq!(newly_ready(Some(&first), &all, &mut seen), None);
        let second = board(vec![
            status("bank", "Deployment/z", Phase::Ready),
            status("shop", "Deployment/a", Phase::Ready),
            status("shop", "Deployment/b", Phase::Ready),
        ]);
        assert_eq!(
            newly_ready(Some(&second), &all, &mut seen).as_deref(),
            Some("newly ready: Deployment/z in bank, Deployment/b in shop")
        );
        assert_eq!(newly_ready(Some(&second), &all, &mut seen), None, "once");

        // Scoped to shop: bank's workload turning ready is not a trigger.
        let shop = BTreeSet::from(["shop".to_owned()]);
        let mut seen = None;
        assert_eq!(newly_ready(Some(&first), &shop, &mut seen), None);
        assert_eq!(
            newly_ready(Some(&second), &shop, &mut seen).as_deref(),
            Some("newly ready: Deployment/b in shop")
        );
        // Leaving `ready` and coming back is new again.
        assert_eq!(newly_ready(Some(&first), &shop, &mut seen), None);
        assert_eq!(
            newly_ready(Some(&second), &shop, &mut seen).as_deref(),
            Some("newly ready: Deployment/b in shop")
        );
    }

    /// The first periodic run: an interval after start, or after the last run remembered
    /// (at once when that is past).
    #[test]
    fn the_first_periodic_run_counts_from_the_last_run() {
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("time");
        let hour = Duration::from_secs(3600);
        let ago = |s: i64| Some(now - chrono::Duration::seconds(s));
        assert_eq!(first_run_in(None, now, hour), hour);
        assert_eq!(first_run_in(ago(600), now, hour), Duration::from_secs(3000));
        assert_eq!(first_run_in(ago(7200), now, hour), Duration::ZERO);
        assert_eq!(first_run_in(ago(-600), now, hour), hour, "clock set back");

        let dir = tempfile::tempdir().expect("temporary directory");
        let cache = dir.path().join("repos");
        assert_eq!(last_run(&cache), None);
        remember_run(&cache, now);
        assert_eq!(last_run(&cache), Some(now));
    }

    /// An alert triggers at `after` occurrences, once per key, only in scope.
    #[test]
    fn a_recurring_alert_triggers_once_per_key() {
        let all = BTreeSet::new();
        let mut triggered = HashSet::new();
        assert_eq!(recurring(&alert("shop", 2), 3, &all, &mut triggered), None);
        assert_eq!(
            recurring(&alert("shop", 3), 3, &all, &mut triggered).as_deref(),
            Some(
                "unexpected egress from Deployment/payment in shop to [2001:db8::60]:8443/TCP, \
                 seen in 3 checks"
            )
        );
        assert_eq!(recurring(&alert("shop", 4), 3, &all, &mut triggered), None);
        assert!(recurring(&alert("bank", 5), 3, &all, &mut triggered).is_some());
        let shop = BTreeSet::from(["shop".to_owned()]);
        let mut triggered = HashSet::new();
        assert_eq!(recurring(&alert("bank", 5), 3, &shop, &mut triggered), None);
        assert!(triggered.is_empty());
        // A drift triggers at once.
        let mut drift = alert("shop", 1);
        drift.kind = crate::serve::alert::AlertKind::DnsDrift;
        drift.names = vec!["api.stripe.test".into()];
        assert_eq!(
            recurring(&drift, 3, &shop, &mut triggered).as_deref(),
            Some(
                "DNS drift for Deployment/payment in shop: api.stripe.test moved to [2001:db8::60]:8443/TCP"
            )
        );
    }

    /// Triggers arriving within the debounce share a run; board updates that trigger nothing
    /// (one per check) do not delay it.
    #[tokio::test]
    async fn triggers_soon_after_one_share_its_run() {
        let (alerts_tx, recurrences) = mpsc::channel(16);
        let same = Arc::new(board(vec![status("shop", "Deployment/a", Phase::Ready)]));
        let (board_tx, board_rx) = watch::channel(None);
        let mut triggers = Triggers {
            recurrences,
            alerts_open: true,
            board: board_rx,
            board_open: true,
            triggered: HashSet::new(),
            ready: None,
            after: 2,
            scope: BTreeSet::new(),
            ranges: None,
        };
        let feed = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            alerts_tx.send(alert("shop", 1)).await.expect("open");
            alerts_tx.send(alert("shop", 2)).await.expect("open");
            for _ in 0..40 {
                board_tx.send_replace(Some(Arc::clone(&same)));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let start = std::time::Instant::now();
        let joined = fold("the first".to_owned(), &mut triggers).await;
        let took = start.elapsed();
        assert_eq!(
            joined,
            "the first; unexpected egress from Deployment/payment in shop to \
             [2001:db8::60]:8443/TCP, seen in 2 checks"
        );
        assert!(took >= Duration::from_millis(1300), "{took:?}");
        assert!(took < Duration::from_millis(4000), "{took:?}");
        feed.abort();
    }
}
