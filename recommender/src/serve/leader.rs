//! Leader election among `leash serve` replicas, with a `coordination.k8s.io/v1` Lease.
//!
//! Every replica serves ingest, the read API and the UI. The singleton work (the periodic
//! checks that raise alerts, the pull-request loop, retention) runs only on the replica that
//! holds the Lease: [`while_leading`] starts it when this replica becomes leader and aborts
//! it when leadership is lost.
//!
//! The protocol is client-go's: a replica reads the Lease; it takes it when nobody holds it
//! or when the holder has not renewed it for [`LEASE_DURATION`] of this replica's own clock
//! (so clocks of different nodes are never compared); every write is a `PUT` carrying the
//! `resourceVersion` that was read, so of two replicas racing for one Lease the API server
//! accepts one and answers the other `409 Conflict`.
//!
//! **No overlap.** Let `t` be the instant (on the leader's clock) at which it *sent* its last
//! successful renewal. The renewal was stored at or after `t`, so another replica sees it at
//! or after `t` and may acquire no earlier than `t + LEASE_DURATION` (15 s). The leader steps
//! down at `t + RENEW_DEADLINE` (10 s) at the latest: every attempt while leading is bounded
//! by that deadline with a timer, whatever the API server does. The remaining 5 s cover the
//! abort of the singleton tasks (a cancellation at their next `.await`) and a difference of
//! clock *rates* (not offsets) between nodes.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::api::PostParams;
use leash_records::error::Chain;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a Lease stays valid after its last renewal, for the others: they take it over
/// only when they have seen no renewal for this long.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// A leader that could not renew for this long steps down; shorter than [`LEASE_DURATION`]
/// so that it has stopped before anybody else may start (see the module's doc).
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the Lease is renewed by the leader, and tried by the others.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// The Lease's name by default.
pub const DEFAULT_NAME: &str = "leash-serve";
/// The Lease's namespace when the pod's (`POD_NAMESPACE`) is unknown.
pub const DEFAULT_NAMESPACE: &str = "leash-system";
/// The downward-API variable holding the pod's namespace.
pub const POD_NAMESPACE_ENV: &str = "POD_NAMESPACE";
/// The downward-API variable holding the pod's name: this replica's identity.
pub const POD_NAME_ENV: &str = "POD_NAME";

/// What the election does with the API: read, create and renew (replace) its Lease, in its
/// namespace only (deploy/overlays/ha grants exactly this with a Role).
pub const LEASE_ACCESS: &[leash_records::access::ApiAccess] = &[leash_records::access::ApiAccess {
    group: "coordination.k8s.io",
    resource: "leases",
    verbs: &["get", "create", "update"],
}];

/// The election's timing; [`Timing::default`] is the constants above. Tests shorten it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// See [`LEASE_DURATION`].
    pub lease_duration: Duration,
    /// See [`RENEW_DEADLINE`]; must be shorter than `lease_duration`.
    pub renew_deadline: Duration,
    /// See [`RETRY_PERIOD`]; must be shorter than `renew_deadline`.
    pub retry_period: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: LEASE_DURATION,
            renew_deadline: RENEW_DEADLINE,
            retry_period: RETRY_PERIOD,
        }
    }
}

/// Where the Lease is: `NAMESPACE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRef {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
}

impl LeaseRef {
    /// The default: `leash-serve` in the pod's namespace (`POD_NAMESPACE`), else in
    /// `leash-system`.
    pub fn from_env() -> Self {
        let namespace = std::env::var(POD_NAMESPACE_ENV)
            .ok()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        Self {
            namespace,
            name: DEFAULT_NAME.to_owned(),
        }
    }
}

impl std::str::FromStr for LeaseRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
        }
    }
}

impl std::fmt::Display for LeaseRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// This replica's identity in the Lease: the pod's name (`POD_NAME`, unique in its namespace),
/// else the host name and the process id (two processes on one host must not share one).
pub fn identity() -> String {
    if let Some(pod) = std::env::var(POD_NAME_ENV).ok().filter(|p| !p.is_empty()) {
        return pod;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "leash-serve".to_owned());
    format!("{host}_{}", std::process::id())
}

/// The `leash_leader` gauge: 1 on the replica that runs the singleton work, 0 elsewhere.
#[derive(Debug, Clone, Default)]
pub struct LeaderMetrics {
    leader: Gauge,
}

impl LeaderMetrics {
    /// Registers `leash_leader`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "leader",
            "1 on the replica that runs the singleton work (alert checks, pull requests, retention), 0 on the others",
            self.leader.clone(),
        );
    }

    fn set(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
}

/// Leadership without an election (one replica, `--cluster FILE`): always the leader. Keep
/// the sender: the receiver keeps `true` while it lives.
pub fn always(metrics: &LeaderMetrics) -> (watch::Sender<bool>, watch::Receiver<bool>) {
    metrics.set(true);
    watch::channel(true)
}

/// How long a resigning replica waits for its Lease's release before it exits anyway (an
/// unreachable API server must not hold up a shutdown; the Lease then expires as after a
/// crash).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// This replica's leadership: a receiver that is `true` while it leads, and what keeps it
/// alive (the election, or the constant `true` of a single replica).
pub struct Leadership {
    leading: watch::Receiver<bool>,
    _always: Option<watch::Sender<bool>>,
    _election: Option<AbortGuard>,
    resign: Resign,
}

impl Leadership {
    /// `true` while this replica leads.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// What asks the election to end (graceful shutdown) and waits for its Lease's release.
    pub fn resign(&self) -> Resign {
        self.resign.clone()
    }
}

/// Ends a replica's candidacy on graceful shutdown: a leader stops its singleton work and
/// releases the Lease (an empty holder, as client-go's `ReleaseOnCancel`), so that another
/// replica takes over at its next try instead of after [`LEASE_DURATION`].
#[derive(Clone)]
pub struct Resign {
    ask: std::sync::Arc<tokio::sync::Notify>,
    done: watch::Receiver<bool>,
}

impl Resign {
    /// A resignation that has nothing to do (a single replica without an election).
    fn done() -> Self {
        let (_, done) = watch::channel(true);
        Self {
            ask: std::sync::Arc::default(),
            done,
        }
    }

    /// Asks the election to end; returns at once.
    pub fn ask(&self) {
        self.ask.notify_one();
    }

    /// Waits until the election has ended (the Lease released when it was held), at most
    /// [`RELEASE_TIMEOUT`].
    pub async fn finished(&self) {
        let mut done = self.done.clone();
        let _ = tokio::time::timeout(RELEASE_TIMEOUT, done.wait_for(|d| *d)).await;
    }
}

/// Starts campaigning for `lease` through `client` (with [`Timing::default`]), or, without a
/// Lease, leads alone.
pub fn start(
    lease: Option<LeaseRef>,
    client: Option<kube::Client>,
    metrics: LeaderMetrics,
) -> Leadership {
    match (lease, client) {
        (Some(lease), Some(client)) => {
            let (tx, rx) = watch::channel(false);
            metrics.set(false);
            let elector = Elector::new(client, lease, identity(), Timing::default(), metrics);
            let (resign, ended) = resignation();
            let task = tokio::spawn(elector.run_until_resigned(tx, ended));
            Leadership {
                leading: rx,
                _always: None,
                _election: Some(AbortGuard(task.abort_handle())),
                resign,
            }
        }
        _ => {
            let (tx, rx) = always(&metrics);
            Leadership {
                leading: rx,
                _always: Some(tx),
                _election: None,
                resign: Resign::done(),
            }
        }
    }
}

/// The election's side of a [`Resign`]: asked to end, and says when it has.
pub struct Resigned {
    ask: std::sync::Arc<tokio::sync::Notify>,
    done: watch::Sender<bool>,
}

/// A [`Resign`] and the [`Resigned`] an [`Elector`] ends with.
pub fn resignation() -> (Resign, Resigned) {
    let ask = std::sync::Arc::new(tokio::sync::Notify::new());
    let (done_tx, done) = watch::channel(false);
    (
        Resign {
            ask: std::sync::Arc::clone(&ask),
            done,
        },
        Resigned { ask, done: done_tx },
    )
}

/// Feeds a fresh receiver from a shared one, so that a consumer that takes its receiver by
/// value can be started again each term: run the returned future beside the consumer. What is
/// sent while nobody leads waits in the shared channel (senders use `try_send`).
pub fn relay<T: Send + 'static>(
    shared: std::sync::Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<T>>>,
    capacity: usize,
) -> (
    tokio::sync::mpsc::Receiver<T>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    let forward = async move {
        loop {
            let item = {
                let mut source = shared.lock().await;
                source.recv().await
            };
            let Some(item) = item else { return };
            if tx.send(item).await.is_err() {
                return;
            }
        }
    };
    (rx, forward)
}

/// One replica's candidacy for one Lease.
pub struct Elector {
    api: Api<Lease>,
    lease: LeaseRef,
    identity: String,
    timing: Timing,
    metrics: LeaderMetrics,
}

/// What one attempt to acquire or renew learned.
enum Attempt {
    /// This replica holds the Lease, renewed by this attempt.
    Held,
    /// Somebody else holds it (or won the race to it).
    Lost,
}

impl Elector {
    /// A candidate named `identity` for `lease`.
    pub fn new(
        client: kube::Client,
        lease: LeaseRef,
        identity: String,
        timing: Timing,
        metrics: LeaderMetrics,
    ) -> Self {
        Self {
            api: Api::namespaced(client, &lease.namespace),
            lease,
            identity,
            timing,
            metrics,
        }
    }

    /// Campaigns until the receivers are all gone, sending `true` while this replica leads.
    pub async fn run(self, leading: watch::Sender<bool>) {
        let (_resign, resigned) = resignation();
        self.run_until_resigned(leading, resigned).await;
    }

    /// [`Self::run`] until asked to resign through `resigned`: then a leader sends `false`
    /// (its singleton work is aborted), releases the Lease, and says it is done.
    pub async fn run_until_resigned(self, leading: watch::Sender<bool>, resigned: Resigned) {
        let ask = std::sync::Arc::clone(&resigned.ask);
        let asked = tokio::select! {
            () = self.campaign(&leading) => false,
            () = ask.notified() => true,
        };
        if asked {
            if *leading.borrow() {
                self.metrics.set(false);
                let _ = leading.send(false);
                // Let the aborted singleton tasks reach their cancellation point first.
                tokio::task::yield_now().await;
            }
            // Also when not known to lead: an acquisition may have been stored just before
            // the campaign was interrupted. `release` changes only a Lease held by us.
            match tokio::time::timeout(RELEASE_TIMEOUT, self.release()).await {
                Ok(Ok(true)) => {
                    tracing::info!(lease = %self.lease, identity = %self.identity, "leader election: released the lease");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.lease, error = %Chain(&e), "leader election: cannot release the lease: it expires by itself");
                }
                Err(_) => {
                    tracing::warn!(lease = %self.lease, "leader election: releasing the lease timed out: it expires by itself");
                }
            }
        }
        let _ = resigned.done.send(true);
    }

    /// Gives the Lease up if this replica holds it: an empty holder and a one-second
    /// duration, the `resourceVersion` read kept (a concurrent writer wins). `Ok(false)`: not
    /// ours.
    async fn release(&self) -> Result<bool, kube::Error> {
        let Some(mut current) = self.api.get_opt(&self.lease.name).await? else {
            return Ok(false);
        };
        let spec = current.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        current.spec = Some(LeaseSpec {
            holder_identity: Some(String::new()),
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..spec
        });
        self.api
            .replace(&self.lease.name, &PostParams::default(), &current)
            .await?;
        Ok(true)
    }

    /// The campaign loop; returns when the receivers are gone.
    async fn campaign(&self, leading: &watch::Sender<bool>) {
        // The other holder's record as last seen, and when it was first seen (our clock).
        let mut observed: Option<(Observed, Instant)> = None;
        let mut renewed: Option<Instant> = None;
        tracing::info!(lease = %self.lease, identity = %self.identity, "leader election: campaigning");
        loop {
            if leading.is_closed() {
                return;
            }
            let started = Instant::now();
            let outcome = match renewed {
                // Leading: the attempt must not outlive the deadline.
                Some(last) => {
                    let deadline = last + self.timing.renew_deadline;
                    tokio::time::timeout_at(deadline, self.attempt(&mut observed))
                        .await
                        .unwrap_or(Attempt::Lost)
                }
                None => self.attempt(&mut observed).await,
            };
            match (outcome, renewed) {
                (Attempt::Held, None) => {
                    tracing::info!(lease = %self.lease, identity = %self.identity, "leader election: leading");
                    renewed = Some(started);
                    self.metrics.set(true);
                    let _ = leading.send(true);
                }
                (Attempt::Held, Some(_)) => renewed = Some(started),
                (Attempt::Lost, Some(last))
                    if Instant::now() >= last + self.timing.renew_deadline =>
                {
                    tracing::warn!(lease = %self.lease, identity = %self.identity, "leader election: could not renew before the deadline: stepping down");
                    renewed = None;
                    self.metrics.set(false);
                    let _ = leading.send(false);
                }
                (Attempt::Lost, _) => {}
            }
            let mut next = started + self.timing.retry_period;
            if let Some(last) = renewed {
                // Wake up at the deadline at the latest, to step down on time.
                next = next.min(last + self.timing.renew_deadline);
            }
            tokio::time::sleep_until(next).await;
        }
    }

    /// Reads the Lease and takes or renews it when it is free, expired or ours.
    async fn attempt(&self, observed: &mut Option<(Observed, Instant)>) -> Attempt {
        match self.try_attempt(observed).await {
            Ok(a) => a,
            Err(e) => {
                if conflict(&e) {
                    tracing::debug!(lease = %self.lease, "leader election: another replica updated the lease first");
                } else {
                    tracing::warn!(lease = %self.lease, error = %Chain(&e), "leader election: cannot read or write the lease");
                }
                Attempt::Lost
            }
        }
    }

    async fn try_attempt(
        &self,
        observed: &mut Option<(Observed, Instant)>,
    ) -> Result<Attempt, kube::Error> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let duration = i32::try_from(self.timing.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(current) = self.api.get_opt(&self.lease.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease.name.clone()),
                    namespace: Some(self.lease.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(duration),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            self.api.create(&PostParams::default(), &lease).await?;
            return Ok(Attempt::Held);
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == self.identity;
        if !ours && !holder.is_empty() {
            let record = Observed {
                holder: holder.clone(),
                renew: spec.renew_time.clone(),
                version: current.metadata.resource_version.clone(),
            };
            let seen = match observed.take() {
                Some((old, at)) if old == record => at,
                _ => Instant::now(),
            };
            *observed = Some((record, seen));
            // Expired only after a whole lease duration without a change, on our clock.
            let held_for = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(self.timing.lease_duration, Duration::from_secs);
            if seen.elapsed() < held_for {
                return Ok(Attempt::Lost);
            }
            tracing::info!(lease = %self.lease, previous = %holder, "leader election: the lease expired: taking it over");
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        let mut next = current;
        next.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(duration),
            acquire_time: if ours {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if ours {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..spec
        });
        // `next` keeps the resourceVersion read: a concurrent writer makes this a 409.
        self.api
            .replace(&self.lease.name, &PostParams::default(), &next)
            .await?;
        *observed = None;
        Ok(Attempt::Held)
    }
}

/// The parts of another holder's record whose change means it is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Observed {
    holder: String,
    renew: Option<MicroTime>,
    version: Option<String>,
}

/// Whether `e` is the API server's `409 Conflict` (a stale `resourceVersion`, or a create
/// that lost the race).
fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

/// Runs the task `start` makes while `leading` is `true`: started when leadership is gained,
/// aborted (at its next `.await`) as soon as it is lost, started afresh on the next term.
/// A task that ends by itself is not restarted within the same term. Returns when the
/// sender is gone.
pub async fn while_leading<F, Fut>(mut leading: watch::Receiver<bool>, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        // Aborted when leadership is lost, and when this function is dropped (aborted).
        let task = AbortGuard(tokio::spawn(start()).abort_handle());
        let lost = leading.wait_for(|l| !*l).await.is_ok();
        drop(task);
        if !lost {
            return;
        }
    }
}

/// Aborts its task when dropped.
struct AbortGuard(tokio::task::AbortHandle);

impl Drop for AbortGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ref_parses_namespace_slash_name() {
        let r: LeaseRef = "leash-system/leash-serve".parse().expect("valid");
        assert_eq!(r.namespace, "leash-system");
        assert_eq!(r.name, "leash-serve");
        assert_eq!(r.to_string(), "leash-system/leash-serve");
        for bad in ["", "a", "/b", "a/", "a/b/c"] {
            assert!(bad.parse::<LeaseRef>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_leader_stops_before_another_may_start() {
        let t = Timing::default();
        // Deadline + the abort's slack must stay below what the others wait.
        assert!(t.renew_deadline + t.retry_period < t.lease_duration);
        assert!(t.retry_period < t.renew_deadline);
    }

    #[tokio::test]
    async fn while_leading_starts_and_aborts_with_leadership() {
        let ms = Duration::from_millis;
        let (tx, rx) = watch::channel(false);
        let (runs_tx, mut runs) = tokio::sync::mpsc::unbounded_channel::<&'static str>();
        let task = tokio::spawn(while_leading(rx, move || {
            let runs = runs_tx.clone();
            async move {
                let _ = runs.send("started");
                loop {
                    tokio::time::sleep(ms(10)).await;
                    let _ = runs.send("tick");
                }
            }
        }));
        tokio::time::sleep(ms(100)).await;
        assert!(runs.try_recv().is_err(), "nothing runs before leadership");
        tx.send(true).expect("receiver alive");
        tokio::time::sleep(ms(100)).await;
        assert_eq!(runs.try_recv().ok(), Some("started"));
        tx.send(false).expect("receiver alive");
        tokio::time::sleep(ms(50)).await;
        while runs.try_recv().is_ok() {}
        tokio::time::sleep(ms(100)).await;
        assert!(runs.try_recv().is_err(), "the task stopped with leadership");
        tx.send(true).expect("receiver alive");
        tokio::time::sleep(ms(50)).await;
        assert_eq!(runs.try_recv().ok(), Some("started"), "restarted next term");
        drop(tx);
        tokio::time::sleep(ms(50)).await;
        assert!(task.is_finished());
        while runs.try_recv().is_ok() {}
        tokio::time::sleep(ms(50)).await;
        assert!(runs.try_recv().is_err(), "the task stopped with the sender");
    }
}
