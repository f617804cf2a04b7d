//! After lockdown: notice egress that the applied policies deny.
//!
//! Every interval, the flows stored since the previous check are evaluated against the
//! NetworkPolicies applied in the cluster, as one current pod of their workload. A denied
//! flow from a workload means it tried something its policy does not allow: a new dependency
//! to add, or something to investigate. Each (workload, destination, port, protocol) is an
//! alert: a log line, a metric, and each sink (Kubernetes Events with `--kube`, a webhook with
//! `--alert-webhook`), carrying the DNS names the destination was reached by, the proposed fix
//! (the egress rule `leash recommend` would write for the flow) and the pull request that
//! carries it, when there is one.
//!
//! Alerts are remembered in the store ([`crate::store::AlertRecord`]): a restart does not send
//! them again. A remembered alert whose flow has new events *recurs*: its `occurrences` grow by
//! one per check that finds new events, it is fed to the `recurrences` channel of [`watch`]
//! (as a new alert is), and it is sent again once `repeat` has passed since it was last sent.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use leash_records::Protocol;
use leash_records::error::Chain;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use super::ModelRx;
use super::verdicts::judge;
use crate::eval::Verdict;
use crate::recommend;
use crate::state::ClusterState;
use crate::store::{AlertRecord, FlowObservation, Store, WorkloadRef};

/// What an alert reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AlertKind {
    /// A stored flow the applied policies deny (Event reason `UnexpectedEgress`).
    #[default]
    #[serde(rename = "egress-denied")]
    EgressDenied,
    /// A DNS answer moved a name to an address the applied policies deny on the ports they
    /// allow for its other addresses ([`crate::drift`]; Event reason `EgressDrift`), before
    /// any connection to it.
    #[serde(rename = "dns-drift")]
    DnsDrift,
}

impl AlertKind {
    /// `egress-denied` or `dns-drift`: the webhook's `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::EgressDenied => "egress-denied",
            AlertKind::DnsDrift => "dns-drift",
        }
    }
}

/// One denied flow, or one drifted DNS answer (then `dst` is the new address, `names` the
/// name, `last_seen` the answer's time and `count` 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// What it reports.
    pub kind: AlertKind,
    /// The workload that made it.
    pub workload: WorkloadRef,
    /// The pod it was evaluated as (namespace is the workload's).
    pub pod: String,
    /// The destination as dialed.
    pub dst: IpAddr,
    /// The port as dialed.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// Events seen so far.
    pub count: u64,
    /// Last seen.
    pub last_seen: DateTime<Utc>,
    /// DNS names the destination was reached by.
    pub names: Vec<String>,
    /// The policies that isolate the pod without allowing the flow.
    pub policies: Vec<String>,
    /// The proposed fix: the egress rules that would allow the flow, as the YAML sequence
    /// that goes under the workload's policy's `spec.egress` (usually one rule). `None`
    /// when the recommender has no rule for it (e.g. a Service without endpoints).
    pub fix: Option<String>,
    /// The web URL of the pull request that proposes the workload's namespace's policies,
    /// when there is one.
    pub pull_request: Option<String>,
    /// How many checks found the flow with new events (1 when first found).
    pub occurrences: u64,
    /// When it was first sent.
    pub first_sent: DateTime<Utc>,
    /// When it was last sent (now, when it is being sent).
    pub last_sent: DateTime<Utc>,
}

/// An alert as JSON: the webhook's `alert` and each item of `GET /v1/alerts`. Keys are in
/// sorted order; the workload is `Kind/name` ([`crate::json`]), times RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertJson {
    /// [`Alert::count`].
    pub count: u64,
    /// [`Alert::dst`].
    pub dst: IpAddr,
    /// [`Alert::first_sent`].
    pub first_sent: String,
    /// [`Alert::fix`].
    pub fix: Option<String>,
    /// The workload's kind.
    pub kind: String,
    /// [`Alert::last_seen`].
    pub last_seen: String,
    /// [`Alert::last_sent`].
    pub last_sent: String,
    /// The workload's name.
    pub name: String,
    /// [`Alert::names`].
    pub names: Vec<String>,
    /// The workload's namespace.
    pub namespace: String,
    /// [`Alert::occurrences`].
    pub occurrences: u64,
    /// [`Alert::pod`].
    pub pod: String,
    /// [`Alert::policies`].
    pub policies: Vec<String>,
    /// [`Alert::port`].
    pub port: u16,
    /// [`Alert::protocol`].
    pub protocol: String,
    /// [`Alert::pull_request`].
    pub pull_request: Option<String>,
    /// [`Alert::kind`] (`egress-denied` when absent: alerts remembered before drift).
    #[serde(rename = "type", default)]
    pub alert_type: AlertKind,
    /// `Kind/name`.
    pub workload: String,
}

/// The longest alert message, in bytes: an Event's note is limited to 1 kB, and a log line
/// should stay a line.
pub const MAX_MESSAGE: usize = 1024;
/// DNS names shown per alert; the rest are counted.
const NAMES_SHOWN: usize = 5;
/// The longest name or other value shown, in characters (a DNS name has at most 253).
const MAX_SHOWN: usize = 253;

/// `s` as plain text on one line: control and invisible formatting characters (line breaks,
/// bidirectional overrides) become U+FFFD, and it is cut after `max` characters. Names are
/// checked where they enter, but one from an older store may hold anything, and the message
/// ends up in logs and in `kubectl describe`.
pub(crate) fn plain(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| {
            if crate::render::escape::is_replaced(c) {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect();
    if s.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// A list of values as plain text, at most `shown` of them, the rest counted.
fn plain_list(items: &[String], shown: usize) -> String {
    let mut out = items
        .iter()
        .take(shown)
        .map(|n| plain(n, MAX_SHOWN))
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > shown {
        out.push_str(&format!(" and {} more", items.len() - shown));
    }
    out
}

impl Alert {
    /// A one-line plain-text description, used for logs and Event notes: every value from
    /// the data is made plain (`plain`), names are capped at five, and the whole at
    /// [`MAX_MESSAGE`] bytes.
    pub fn message(&self) -> String {
        let dst = match self.dst {
            IpAddr::V4(a) => format!("{a}:{}", self.port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
        };
        let names = if self.names.is_empty() {
            String::new()
        } else {
            format!(" ({})", plain_list(&self.names, NAMES_SHOWN))
        };
        let mut message = match self.kind {
            AlertKind::EgressDenied => self.denied_message(&dst, &names),
            AlertKind::DnsDrift => format!(
                "{}/{} {} was given {} for {} by DNS; the applied policies allow the name's other addresses on {}/{} but not this one ({}); answered {}",
                plain(&self.workload.kind, MAX_SHOWN),
                plain(&self.workload.name, MAX_SHOWN),
                plain(&self.pod, MAX_SHOWN),
                self.dst,
                plain_list(&self.names, NAMES_SHOWN),
                self.protocol,
                self.port,
                plain_list(&self.policies, NAMES_SHOWN),
                leash_records::time::rfc3339(self.last_seen),
            ),
        };
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE - '…'.len_utf8();
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
            message.push('…');
        }
        message
    }

    fn denied_message(&self, dst: &str, names: &str) -> String {
        format!(
            "{}/{} {} sent {} egress to {dst}/{}{names} that the applied policies deny ({}); last seen {}",
            plain(&self.workload.kind, MAX_SHOWN),
            plain(&self.workload.name, MAX_SHOWN),
            plain(&self.pod, MAX_SHOWN),
            self.count,
            self.protocol,
            plain_list(&self.policies, NAMES_SHOWN),
            leash_records::time::rfc3339(self.last_seen),
        )
    }
}

impl Alert {
    /// The key alerts are remembered by.
    pub fn key(&self) -> AlertKey {
        (self.workload.clone(), self.dst, self.port, self.protocol)
    }

    /// The alert as JSON ([`AlertJson`]).
    pub fn to_json(&self) -> AlertJson {
        let time = leash_records::time::rfc3339;
        AlertJson {
            count: self.count,
            dst: self.dst,
            first_sent: time(self.first_sent),
            fix: self.fix.clone(),
            kind: self.workload.kind.clone(),
            last_seen: time(self.last_seen),
            last_sent: time(self.last_sent),
            name: self.workload.name.clone(),
            names: self.names.clone(),
            namespace: self.workload.namespace.clone(),
            occurrences: self.occurrences,
            pod: self.pod.clone(),
            policies: self.policies.clone(),
            port: self.port,
            protocol: self.protocol.as_str().to_owned(),
            pull_request: self.pull_request.clone(),
            alert_type: self.kind,
            workload: crate::json::workload(&self.workload.kind, &self.workload.name),
        }
    }

    /// The store's record of the alert, its JSON as the detail.
    pub fn record(&self) -> Result<AlertRecord, serde_json::Error> {
        Ok(AlertRecord {
            workload: self.workload.clone(),
            dst: self.dst,
            port: self.port,
            protocol: self.protocol,
            first_sent: self.first_sent,
            last_sent: self.last_sent,
            last_seen: self.last_seen,
            occurrences: self.occurrences,
            detail: serde_json::to_string(&self.to_json())?,
        })
    }
}

/// Where alerts go besides the log and the metric: Kubernetes Events with `--kube`
/// (`EventAlerts`), a webhook with `--alert-webhook` ([`super::webhook::WebhookSink`]).
pub trait AlertSink: Send + Sync {
    /// Publishes one alert; failures are the sink's to log. It is awaited by the check loop:
    /// a sink that may take long queues the alert and returns.
    fn publish<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, ()>;
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AlertLabels {
    namespace: String,
}

/// The watcher's metrics.
#[derive(Debug, Clone, Default)]
pub struct AlertMetrics {
    unexpected: Family<AlertLabels, Counter>,
    checks: Counter,
}

impl AlertMetrics {
    /// Registers under `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "unexpected_egress",
            "Distinct (workload, destination, port, protocol) flows denied by the applied policies",
            self.unexpected.clone(),
        );
        registry.register(
            "egress_checks",
            "Checks of stored flows against the applied policies",
            self.checks.clone(),
        );
    }
}

/// What alerts are remembered by: (workload, destination, port, protocol).
pub type AlertKey = (WorkloadRef, IpAddr, u16, Protocol);

/// What is remembered of an alert between checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    /// When it was first sent.
    pub first_sent: DateTime<Utc>,
    /// When it was last sent.
    pub last_sent: DateTime<Utc>,
    /// The flow's latest event when it was last found: later events are new.
    pub last_seen: DateTime<Utc>,
    /// How many checks found it with new events.
    pub occurrences: u64,
}

/// The alerts remembered, by key.
pub type Memory = BTreeMap<AlertKey, Remembered>;

/// The memory held by stored records.
pub fn memory_of(records: &[AlertRecord]) -> Memory {
    records
        .iter()
        .map(|r| {
            (
                (r.workload.clone(), r.dst, r.port, r.protocol),
                Remembered {
                    first_sent: r.first_sent,
                    last_sent: r.last_sent,
                    last_seen: r.last_seen,
                    occurrences: r.occurrences,
                },
            )
        })
        .collect()
}

/// What a check does with a denied flow that is new or has new events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The alert, with its occurrences and times updated.
    pub alert: Alert,
    /// Whether it goes to the log and the sinks now: new, or `repeat` has passed since it
    /// was last sent.
    pub send: bool,
    /// Whether it was remembered before: a recurrence.
    pub recurred: bool,
}

/// The context of one check: its time and what alerts carry.
#[derive(Debug, Clone, Copy)]
pub struct Check<'a> {
    /// Now.
    pub now: DateTime<Utc>,
    /// A recurring alert is sent again once this has passed since it was last sent.
    pub repeat: Duration,
    /// The recommender's knobs, for the proposed fix.
    pub options: &'a recommend::Options,
    /// Open pull requests by namespace (web URLs).
    pub pull_requests: &'a BTreeMap<String, String>,
}

/// Finds denied flows among `flows` that are new or have events after those `memory`
/// remembers, and updates `memory`. Pure: no I/O.
pub fn denied_flows(
    state: &ClusterState,
    flows: &[FlowObservation],
    memory: &mut Memory,
    check: &Check<'_>,
) -> Result<Vec<Found>, crate::audit::Error> {
    let fresh: Vec<FlowObservation> = flows
        .iter()
        .filter(|f| {
            memory
                .get(&(f.workload.clone(), f.dst, f.port, f.protocol))
                .is_none_or(|r| f.last_seen > r.last_seen)
        })
        .cloned()
        .collect();
    let (judged, _skipped) = judge(state, &fresh)?;
    let repeat = chrono::Duration::from_std(check.repeat).unwrap_or(chrono::Duration::MAX);
    let mut out = Vec::new();
    for j in judged {
        if j.evaluation.verdict != Verdict::Deny {
            continue;
        }
        let key: AlertKey = (
            j.workload.clone(),
            j.flow.dst,
            j.flow.dst_port,
            j.flow.protocol,
        );
        let last_seen = j.evidence.last_seen;
        let (now, recurred, send) = match memory.get(&key) {
            None => (
                Remembered {
                    first_sent: check.now,
                    last_sent: check.now,
                    last_seen,
                    occurrences: 1,
                },
                false,
                true,
            ),
            Some(r) if last_seen <= r.last_seen => continue,
            Some(r) => {
                let again = check.now.signed_duration_since(r.last_sent) >= repeat;
                (
                    Remembered {
                        first_sent: r.first_sent,
                        last_sent: if again { check.now } else { r.last_sent },
                        last_seen,
                        occurrences: r.occurrences.saturating_add(1),
                    },
                    true,
                    again,
                )
            }
        };
        memory.insert(key, now);
        let source = fresh.iter().find(|f| {
            f.workload == j.workload
                && f.dst.to_canonical() == j.flow.dst
                && f.port == j.flow.dst_port
                && f.protocol == j.flow.protocol
        });
        let fix = source.and_then(|f| proposed_fix(state, f, check.options));
        let alert = Alert {
            kind: AlertKind::EgressDenied,
            pull_request: check.pull_requests.get(&j.workload.namespace).cloned(),
            workload: j.workload,
            pod: j.pod,
            dst: j.flow.dst,
            port: j.flow.dst_port,
            protocol: j.flow.protocol,
            count: j.evidence.count,
            last_seen,
            names: j.evidence.names.into_iter().collect(),
            policies: j
                .evaluation
                .policies()
                .iter()
                .map(ToString::to_string)
                .collect(),
            fix,
            occurrences: now.occurrences,
            first_sent: now.first_sent,
            last_sent: now.last_sent,
        };
        out.push(Found {
            send,
            recurred,
            alert,
        });
    }
    Ok(out)
}

/// The egress rules `leash recommend` would write for `flow` alone, as the YAML sequence
/// that goes under the workload's policy's `spec.egress`; `None` when it writes none.
pub fn proposed_fix(
    state: &ClusterState,
    flow: &FlowObservation,
    options: &recommend::Options,
) -> Option<String> {
    let cluster = &state.cluster;
    let (obs, _skipped) =
        crate::observations::from_stored(cluster, std::slice::from_ref(flow), &[]);
    let mut options = options.clone();
    options.namespaces = [flow.workload.namespace.clone()].into();
    let rec = recommend::recommend(cluster, &obs, &options);
    let policy = rec.policies.iter().find(|p| {
        let w = &cluster.workloads[p.workload];
        w.namespace == flow.workload.namespace
            && w.kind == flow.workload.kind
            && w.name == flow.workload.name
    })?;
    let object = recommend::to_network_policy(cluster, policy);
    let rules = object
        .spec
        .and_then(|s| s.egress)
        .filter(|r| !r.is_empty())?;
    match crate::render::egress_yaml(&flow.workload.to_string(), &rules) {
        Ok(yaml) => Some(yaml),
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "cannot render the proposed fix of an alert");
            None
        }
    }
}

/// How far before the previous check's start the next check reads.
const LOOKBACK: chrono::Duration = chrono::Duration::minutes(10);

/// How the check runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often stored flows are checked.
    pub interval: Duration,
    /// A recurring alert is sent again once this has passed since it was last sent
    /// (`--alert-repeat`).
    pub repeat: Duration,
    /// Remembered alerts last seen longer ago than this are forgotten (`--retention`, as the
    /// store prunes their records).
    pub retention: Duration,
    /// The recommender's knobs, for the proposed fix.
    pub recommend: recommend::Options,
}

/// Runs the check every `options.interval` until the task is dropped. The memory of alerts
/// is loaded from `store` first, and every alert found is written back to it.
///
/// `pull_requests` holds the web URL of the open pull request of each namespace (the
/// pull-request loop sends it); alerts carry their namespace's. `recurrences` receives every
/// alert a check finds: a new one (`occurrences` 1) and each recurrence (a check found new
/// events of a remembered key), with its current `occurrences`, whether or not it is sent
/// again; when the channel is full the alert is dropped from it (`try_send`), never waited
/// for.
pub async fn watch(
    store: Arc<dyn Store>,
    model: ModelRx,
    options: Options,
    metrics: AlertMetrics,
    sinks: Vec<Arc<dyn AlertSink>>,
    pull_requests: tokio::sync::watch::Receiver<BTreeMap<String, String>>,
    recurrences: Option<tokio::sync::mpsc::Sender<Alert>>,
) {
    let mut memory = load_memory(&store).await;
    let mut since: Option<DateTime<Utc>> = None;
    let mut ticker = tokio::time::interval(options.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(current) = model.borrow().clone() else {
            continue;
        };
        let started = Utc::now();
        let reader = Arc::clone(&store);
        let flows = match tokio::task::spawn_blocking(move || reader.flows(since)).await {
            Ok(Ok(flows)) => flows,
            Ok(Err(e)) => {
                tracing::warn!(error = %Chain(&e), "cannot read flows to check against applied policies");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "flow check task failed");
                continue;
            }
        };
        if let Some(oldest) = leash_records::duration::window_start(started, options.retention) {
            memory.retain(|_, r| r.last_seen >= oldest);
        }
        let prs = pull_requests.borrow().clone();
        let check = Check {
            now: started,
            repeat: options.repeat,
            options: &options.recommend,
            pull_requests: &prs,
        };
        let found = match denied_flows(&current, &flows, &mut memory, &check) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "cannot evaluate stored flows");
                continue;
            }
        };
        metrics.checks.inc();
        // Remembered before they are sent: a restart in between loses an alert rather than
        // sending it twice. A store that cannot remember does not silence alerts.
        remember(&store, &found).await;
        for f in &found {
            let alert = &f.alert;
            if let Some(tx) = &recurrences
                && tx.try_send(alert.clone()).is_err()
            {
                tracing::debug!(namespace = %alert.workload.namespace, "the recurrence feed is full or closed; dropped one");
            }
            if !f.send {
                continue;
            }
            tracing::warn!(namespace = %alert.workload.namespace, occurrences = alert.occurrences, "{}", alert.message());
            if !f.recurred {
                metrics
                    .unexpected
                    .get_or_create(&AlertLabels {
                        namespace: alert.workload.namespace.clone(),
                    })
                    .inc();
            }
            for sink in &sinks {
                sink.publish(alert).await;
            }
        }
        // Agents deliver a flow some time after its last event (flush interval, outages), so
        // look back generously; the memory keeps each key to one alert per new events.
        since = Some(started - LOOKBACK);
    }
}

/// The memory of alerts in `store`; empty (logged) when it cannot be read.
async fn load_memory(store: &Arc<dyn Store>) -> Memory {
    let reader = Arc::clone(store);
    match tokio::task::spawn_blocking(move || reader.alerts(None)).await {
        Ok(Ok(mut records)) => {
            // A drift alert was about an answer: a denied connection to its address later is
            // an alert of its own, after a restart as before it.
            records.retain(|r| !is_drift(r));
            memory_of(&records)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %Chain(&e), "cannot read remembered alerts; alerts may be sent again");
            Memory::new()
        }
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "reading remembered alerts failed; alerts may be sent again");
            Memory::new()
        }
    }
}

/// Whether a remembered alert is a DNS drift ([`AlertKind::DnsDrift`]).
fn is_drift(record: &AlertRecord) -> bool {
    serde_json::from_str::<AlertJson>(&record.detail)
        .is_ok_and(|a| a.alert_type == AlertKind::DnsDrift)
}

/// Writes the alerts found to `store`; failures are logged.
async fn remember(store: &Arc<dyn Store>, found: &[Found]) {
    if found.is_empty() {
        return;
    }
    let records: Result<Vec<AlertRecord>, _> = found.iter().map(|f| f.alert.record()).collect();
    let records = match records {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "cannot encode alerts to remember");
            return;
        }
    };
    let writer = Arc::clone(store);
    match tokio::task::spawn_blocking(move || writer.remember_alerts(&records)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %Chain(&e), "cannot remember alerts; a restart sends them again");
        }
        Err(e) => {
            tracing::warn!(error = %Chain(&e), "remembering alerts failed; a restart sends them again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(names: Vec<String>, name: &str) -> Alert {
        Alert {
            kind: AlertKind::EgressDenied,
            workload: WorkloadRef {
                namespace: "shop".into(),
                kind: "Deployment".into(),
                name: name.into(),
            },
            pod: "web-1".into(),
            dst: "203.0.113.10".parse().expect("address"),
            port: 443,
            protocol: Protocol::Tcp,
            count: 3,
            last_seen: DateTime::from_timestamp(1_800_000_000, 0).expect("time"),
            names,
            policies: vec!["shop/web-egress".into()],
            fix: None,
            pull_request: None,
            occurrences: 1,
            first_sent: DateTime::from_timestamp(1_800_000_060, 0).expect("time"),
            last_sent: DateTime::from_timestamp(1_800_000_060, 0).expect("time"),
        }
    }

    #[test]
    fn messages_name_the_flow() {
        assert_eq!(
            alert(vec!["api.stripe.test".into()], "web").message(),
            "Deployment/web web-1 sent 3 egress to 203.0.113.10:443/TCP (api.stripe.test) that \
             the applied policies deny (shop/web-egress); last seen 2027-01-15T08:00:00Z"
        );
    }

    /// A drift says which name moved where, and its JSON carries its type; an alert
    /// remembered before drift existed reads as `egress-denied`.
    #[test]
    fn drift_messages_name_the_answer() {
        let mut a = alert(vec!["api.stripe.test\nforged".into()], "web");
        a.kind = AlertKind::DnsDrift;
        a.dst = "203.0.113.99".parse().expect("address");
        assert_eq!(
            a.message(),
            "Deployment/web web-1 was given 203.0.113.99 for api.stripe.test\u{fffd}forged by \
             DNS; the applied policies allow the name's other addresses on TCP/443 but not this \
             one (shop/web-egress); answered 2027-01-15T08:00:00Z"
        );
        let json = serde_json::to_value(a.to_json()).expect("JSON");
        assert_eq!(json["type"], "dns-drift");
        let record = a.record().expect("record");
        assert!(is_drift(&record));
        let mut old = serde_json::to_value(alert(vec![], "web").to_json()).expect("JSON");
        old.as_object_mut().expect("object").remove("type");
        let old: AlertJson = serde_json::from_value(old).expect("an old alert reads");
        assert_eq!(old.alert_type, AlertKind::EgressDenied);
    }

    /// Names that bypassed ingest (an old store) cannot add lines, hide text or grow the
    /// Event past its limit.
    #[test]
    fn hostile_names_stay_one_bounded_line() {
        let mut names: Vec<String> = (0..100).map(|i| format!("n{i}.test")).collect();
        names.insert(0, "evil.test\nWarning: forged line\u{202e}".into());
        names.insert(1, "x".repeat(10_000));
        let m = alert(names, "web\r\nforged").message();
        assert!(m.len() <= MAX_MESSAGE, "{} bytes", m.len());
        assert!(
            !m.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{m:?}"
        );
        assert!(
            m.starts_with("Deployment/web\u{fffd}\u{fffd}forged web-1 sent 3 egress"),
            "{m}"
        );
        assert!(
            m.contains("(evil.test\u{fffd}Warning: forged line\u{fffd}, xxx"),
            "{m}"
        );
        assert!(
            m.contains(&format!(", {}…, n0.test", "x".repeat(253))),
            "{m}"
        );
        assert!(m.contains(" and 97 more)"), "{m}");
    }
}
