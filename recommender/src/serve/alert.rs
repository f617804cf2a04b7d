//! After lockdown: notice egress that the applied policies deny.
//!
//! Every interval, the flows stored since the previous check are evaluated against the
//! NetworkPolicies applied in the cluster, as one current pod of their workload. A denied
//! flow from a workload means it tried something its policy does not allow: a new dependency
//! to add, or something to investigate. Each (workload, destination, port, protocol) is
//! reported once per process: a log line, a metric, and (with `--kube`) a Kubernetes Event on
//! the pod, carrying the DNS names the destination was reached by.

use std::collections::HashSet;
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

use super::ModelRx;
use super::verdicts::judge;
use crate::eval::Verdict;
use crate::state::ClusterState;
use crate::store::{FlowObservation, Store, WorkloadRef};

/// One denied flow, reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
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
fn plain(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .take(max)
        .map(|c| {
            if c.is_control()
                || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
            {
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
        let mut message = format!(
            "{}/{} {} sent {} egress to {dst}/{}{names} that the applied policies deny ({}); last seen {}",
            plain(&self.workload.kind, MAX_SHOWN),
            plain(&self.workload.name, MAX_SHOWN),
            plain(&self.pod, MAX_SHOWN),
            self.count,
            self.protocol,
            plain_list(&self.policies, NAMES_SHOWN),
            leash_records::time::rfc3339(self.last_seen),
        );
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
}

/// Where alerts go besides the log and the metric (Kubernetes Events with `--kube`).
pub trait AlertSink: Send + Sync {
    /// Publishes one alert; failures are the sink's to log.
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

/// Finds denied flows among `flows`, skipping keys in `seen` and adding new ones to it.
pub fn denied_flows(
    state: &ClusterState,
    flows: &[FlowObservation],
    seen: &mut HashSet<(WorkloadRef, IpAddr, u16, Protocol)>,
) -> Result<Vec<Alert>, crate::audit::Error> {
    let fresh: Vec<FlowObservation> = flows
        .iter()
        .filter(|f| !seen.contains(&(f.workload.clone(), f.dst, f.port, f.protocol)))
        .cloned()
        .collect();
    let (judged, _skipped) = judge(state, &fresh)?;
    let mut out = Vec::new();
    for j in judged {
        if j.evaluation.verdict != Verdict::Deny {
            continue;
        }
        let key = (
            j.workload.clone(),
            j.flow.dst,
            j.flow.dst_port,
            j.flow.protocol,
        );
        if !seen.insert(key) {
            continue;
        }
        out.push(Alert {
            workload: j.workload,
            pod: j.pod,
            dst: j.flow.dst,
            port: j.flow.dst_port,
            protocol: j.flow.protocol,
            count: j.evidence.count,
            last_seen: j.evidence.last_seen,
            names: j.evidence.names.into_iter().collect(),
            policies: j
                .evaluation
                .policies()
                .iter()
                .map(ToString::to_string)
                .collect(),
        });
    }
    Ok(out)
}

/// How far before the previous check's start the next check reads.
const LOOKBACK: chrono::Duration = chrono::Duration::minutes(10);

/// Runs the check every `interval` until the task is dropped.
pub async fn watch(
    store: Arc<dyn Store>,
    model: ModelRx,
    interval: Duration,
    metrics: AlertMetrics,
    sink: Option<Arc<dyn AlertSink>>,
) {
    let mut seen = HashSet::new();
    let mut since: Option<DateTime<Utc>> = None;
    let mut ticker = tokio::time::interval(interval);
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
        let alerts = match denied_flows(&current, &flows, &mut seen) {
            Ok(alerts) => alerts,
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "cannot evaluate stored flows");
                continue;
            }
        };
        metrics.checks.inc();
        for alert in &alerts {
            tracing::warn!(namespace = %alert.workload.namespace, "{}", alert.message());
            metrics
                .unexpected
                .get_or_create(&AlertLabels {
                    namespace: alert.workload.namespace.clone(),
                })
                .inc();
            if let Some(sink) = &sink {
                sink.publish(alert).await;
            }
        }
        // Agents deliver a flow some time after its last event (flush interval, outages), so
        // look back generously; `seen` keeps each key to one alert.
        since = Some(started - LOOKBACK);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(names: Vec<String>, name: &str) -> Alert {
        Alert {
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
