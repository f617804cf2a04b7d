//! The webhook alert sink (`--alert-webhook`): each alert as a JSON POST,
//! `{"alert": {…}, "kind": "egress-denied" | "dns-drift", "text": "…"}`, through the one HTTP client ([`crate::https::Client`]).
//!
//! `text` is a Slack-compatible one-liner (Slack's incoming webhooks read it; so do
//! Mattermost's and many others): the alert's plain-text message ([`Alert::message`]) with
//! Slack's control characters `&`, `<`, `>` escaped, so that a name from the cluster or from
//! DNS cannot make a link or a mention. `alert` is the alert's JSON ([`AlertJson`], the shape
//! of `GET /v1/alerts`).
//!
//! Alerts are queued (bounded) and delivered one at a time by a task of their own, so the check
//! loop never waits for a slow receiver. Connection errors, timeouts, `429` and `5xx` are
//! retried with exponential backoff (a `Retry-After` in seconds is honoured), within a bound on
//! attempts and on total time; any other answer is final. The webhook URL is a secret (Slack's
//! carries its credentials in the path): logs and errors show its origin only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, Uri, header};
use leash_records::error::Chain;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::mpsc;

use super::alert::{Alert, AlertJson, AlertSink};
use crate::https;

/// The largest webhook URL file read, in bytes.
const SECRET_FILE_LIMITS: leash_records::bounded::Limits = leash_records::bounded::Limits {
    max_line: 64 << 10,
    max_file: 64 << 10,
};

/// Alerts waiting for delivery; more are dropped (and counted) until the queue drains.
pub const QUEUE: usize = 256;

/// Errors setting the sink up. None of them shows the URL beyond its origin.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The URL file cannot be read (missing, not a regular file, larger than any URL, not
    /// UTF-8); the error names the file, never its content.
    #[error("cannot read the webhook URL file")]
    Read(#[source] leash_records::bounded::InputError),
    /// The URL of the file is not one leash may call.
    #[error("{}: not a usable webhook URL", path.display())]
    FileUrl {
        /// The file.
        path: PathBuf,
        /// Why.
        source: https::Error,
    },
    /// The HTTP client cannot be built (the CA file).
    #[error("cannot set up the alert webhook's HTTP client")]
    Client(#[source] https::Error),
}

/// A webhook URL, checked by [`https::check_url`]. `Debug` and `Display` show its origin only.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(Uri);

impl std::fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookUrl({})", self.origin())
    }
}

impl std::fmt::Display for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.origin())
    }
}

impl WebhookUrl {
    /// Parses and checks `url` (`https://`, or `http://` to a loopback address).
    pub fn parse(url: &str) -> Result<Self, https::Error> {
        https::check_url(url.trim()).map(WebhookUrl)
    }

    /// Reads the URL from `path` (surrounding whitespace dropped).
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = leash_records::bounded::read_to_string(path, true, SECRET_FILE_LIMITS)
            .map_err(Error::Read)?;
        Self::parse(&text).map_err(|source| Error::FileUrl {
            path: path.to_path_buf(),
            source,
        })
    }

    /// `scheme://host[:port]`: how logs name it.
    pub fn origin(&self) -> String {
        https::origin(&self.0)
    }
}

/// Where the webhook URL comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlSource {
    /// Given on the command line (`--alert-webhook`).
    Url(WebhookUrl),
    /// Read from a file at start (`--alert-webhook-file`).
    File(PathBuf),
}

impl UrlSource {
    /// The URL.
    pub fn resolve(&self) -> Result<WebhookUrl, Error> {
        match self {
            UrlSource::Url(u) => Ok(u.clone()),
            UrlSource::File(path) => WebhookUrl::from_file(path),
        }
    }
}

/// How deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// At most this many attempts per alert.
    pub attempts: u32,
    /// The wait after the first failed attempt; it doubles after each.
    pub first_delay: Duration,
    /// The longest wait between attempts (a longer `Retry-After` is cut to it).
    pub max_delay: Duration,
    /// No attempt starts later than this after the first.
    pub total: Duration,
    /// One attempt's timeout, connection and answer included.
    pub timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 6,
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            total: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The webhook's configuration (`--alert-webhook`, `--alert-webhook-file`,
/// `--alert-webhook-ca-file`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The URL.
    pub url: UrlSource,
    /// A private CA to trust besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Retries.
    pub retry: Retry,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The sink's metric: `leash_alert_webhook_deliveries_total{result}`, `result` one of
/// `delivered`, `failed` (refused, or still failing when the retries ran out) and `dropped`
/// (the queue was full).
#[derive(Debug, Clone, Default)]
pub struct WebhookMetrics {
    deliveries: Family<ResultLabels, Counter>,
}

impl WebhookMetrics {
    /// Registers under `registry`, every result at 0 (so that the family is served, and a
    /// rate can be taken from the start).
    pub fn register(&self, registry: &mut Registry) {
        for result in ["delivered", "failed", "dropped"] {
            let _ = self.deliveries.get_or_create(&ResultLabels { result });
        }
        registry.register(
            "alert_webhook_deliveries",
            "Alerts the webhook sink delivered, failed to deliver, or dropped",
            self.deliveries.clone(),
        );
    }

    fn count(&self, result: &'static str) {
        self.deliveries
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

/// The webhook sink: [`AlertSink::publish`] queues; a task delivers.
#[derive(Debug)]
pub struct WebhookSink {
    queue: mpsc::Sender<Alert>,
    origin: String,
    metrics: WebhookMetrics,
}

impl WebhookSink {
    /// Resolves the URL, builds the client and starts the delivery task (on the current
    /// tokio runtime). The task ends once the sink is dropped and its queue is empty.
    pub fn start(options: &Options, metrics: WebhookMetrics) -> Result<Self, Error> {
        let url = options.url.resolve()?;
        let client = https::Client::new(options.ca_file.as_deref())
            .map_err(Error::Client)?
            .with_timeout(options.retry.timeout);
        let (queue, mut rx) = mpsc::channel::<Alert>(QUEUE);
        let origin = url.origin();
        let retry = options.retry;
        let task_metrics = metrics.clone();
        tokio::spawn(async move {
            while let Some(alert) = rx.recv().await {
                let outcome = deliver(&client, &url, &body(&alert), &retry).await;
                match outcome {
                    Outcome::Delivered { .. } => task_metrics.count("delivered"),
                    Outcome::Failed { attempts, reason } => {
                        task_metrics.count("failed");
                        tracing::warn!(
                            webhook = %url.origin(),
                            attempts,
                            namespace = %alert.workload.namespace,
                            "cannot deliver an alert to the webhook: {reason}"
                        );
                    }
                }
            }
        });
        Ok(WebhookSink {
            queue,
            origin,
            metrics,
        })
    }
}

impl AlertSink for WebhookSink {
    fn publish<'a>(&'a self, alert: &'a Alert) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if self.queue.try_send(alert.clone()).is_err() {
                self.metrics.count("dropped");
                tracing::warn!(webhook = %self.origin, "the alert webhook's queue is full; an alert was dropped");
            }
        })
    }
}

/// The body of a webhook request.
#[derive(Debug, Serialize)]
struct Body {
    alert: AlertJson,
    /// `egress-denied` or `dns-drift` ([`super::alert::AlertKind`]).
    kind: &'static str,
    text: String,
}

/// The JSON body posted for `alert`.
pub fn body(alert: &Alert) -> Bytes {
    let body = Body {
        alert: alert.to_json(),
        kind: alert.kind.as_str(),
        text: text(alert),
    };
    // A struct of strings and numbers always serializes.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// The Slack-compatible one-liner of `alert`: its message with `&`, `<`, `>` escaped, and a
/// link to the pull request carrying the fix, when there is one.
pub fn text(alert: &Alert) -> String {
    let mut text = format!("leash: {}", mrkdwn(&alert.message()));
    if let Some(pr) = &alert.pull_request {
        text.push_str(&format!(
            "; proposed fix in <{}|the pull request>",
            mrkdwn(&super::alert::plain(pr, 2048))
        ));
    }
    text
}

/// `s` with Slack's control characters escaped (`&` → `&amp;`, `<` → `&lt;`, `>` → `&gt;`):
/// text that cannot open a link, a mention or a channel reference.
pub fn mrkdwn(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A `2xx` answer.
    Delivered {
        /// Attempts made.
        attempts: u32,
    },
    /// A final refusal, or failures until the retries ran out.
    Failed {
        /// Attempts made.
        attempts: u32,
        /// The last failure (naming the origin only).
        reason: String,
    },
}

/// Posts `body` to `url`, retrying as `retry` says.
pub async fn deliver(
    client: &https::Client,
    url: &WebhookUrl,
    body: &Bytes,
    retry: &Retry,
) -> Outcome {
    let started = tokio::time::Instant::now();
    let mut delay = retry.first_delay;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let request = Request::builder()
            .method(Method::POST)
            .uri(url.0.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("leash/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body.clone()));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Failed {
                    attempts,
                    reason: format!("cannot build the request: {}", Chain(&e)),
                };
            }
        };
        let (reason, wait) = match client.send(request).await {
            Ok(answer) if answer.status.is_success() => return Outcome::Delivered { attempts },
            Ok(answer) if retryable(answer.status) => {
                let wait = answer.header("retry-after").and_then(retry_after);
                (
                    format!("POST {}: answered {}", url.origin(), answer.status),
                    wait,
                )
            }
            Ok(answer) => {
                return Outcome::Failed {
                    attempts,
                    reason: format!("POST {}: answered {}", url.origin(), answer.status),
                };
            }
            Err(e) => (Chain(&e).to_string(), None),
        };
        let wait = wait.unwrap_or(delay).min(retry.max_delay);
        if attempts >= retry.attempts || started.elapsed() + wait > retry.total {
            return Outcome::Failed { attempts, reason };
        }
        tracing::debug!(webhook = %url.origin(), attempts, "alert webhook failed, retrying: {reason}");
        tokio::time::sleep(wait).await;
        delay = delay.saturating_mul(2).min(retry.max_delay);
    }
}

/// Whether an answer with `status` is worth another attempt.
fn retryable(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// A `Retry-After` of delta-seconds (an HTTP date is ignored: the backoff applies).
fn retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mrkdwn_escapes_slack_controls() {
        assert_eq!(
            mrkdwn("<!channel> & <https://evil.test|click>"),
            "&lt;!channel&gt; &amp; &lt;https://evil.test|click&gt;"
        );
    }

    #[test]
    fn urls_show_their_origin_only() {
        let url = WebhookUrl::parse("https://hooks.slack.test/services/T0/B0/SECRET").expect("url");
        assert_eq!(
            format!("{url} {url:?}"),
            "https://hooks.slack.test WebhookUrl(https://hooks.slack.test)"
        );
        assert!(WebhookUrl::parse("http://hooks.example.test/x").is_err());
    }

    #[test]
    fn retry_after_in_seconds() {
        assert_eq!(retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert!(retryable(StatusCode::SERVICE_UNAVAILABLE));
        assert!(retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(!retryable(StatusCode::BAD_REQUEST));
    }
}
