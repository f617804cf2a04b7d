//! Prometheus metrics and the `/metrics` HTTP endpoint (`--metrics-addr`).
//!
//! [`Metrics`] is a cheap, cloneable handle: every clone updates the same series, so each
//! component keeps its own clone and the endpoint encodes them all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use leash_records::error::Chain;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Binding the `--metrics-addr` listener failed.
    #[error("cannot listen for metrics on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Encoding the registry failed (a bug: text encoding into a `String` cannot fail otherwise).
    #[error("cannot encode metrics")]
    Encode(#[from] std::fmt::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `kind` label: `flow` or `dns`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Record kind.
    pub kind: &'static str,
}

/// The `cause` label of kernel drops, e.g. `ringbuf_full`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    /// Why the kernel dropped the record.
    pub cause: &'static str,
}

/// The `reason` label: why the recommender refused a record (`leash.v1.RejectReason` in snake
/// case, e.g. `invalid_name`), or why the agent refused a DNS name (a
/// [`leash_records::names::NameError::reason`] word, e.g. `empty`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason word.
    pub reason: &'static str,
}

/// All of the agent's metrics, registered under the `leash_agent_` prefix.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Records written by the sink, by kind.
    pub records_written: Family<KindLabel, Counter>,
    /// Records the sink failed to write.
    pub sink_errors: Counter,
    /// Records the kernel produced (tried to push), by kind; mirrors kernel counters.
    pub kernel_records_produced: Family<KindLabel, Counter>,
    /// Records user space read from the ring buffers, by kind.
    pub kernel_records_delivered: Family<KindLabel, Counter>,
    /// Records the kernel dropped, by cause; mirrors kernel counters.
    pub kernel_drops: Family<CauseLabel, Counter>,
    /// DNS payloads that failed to parse.
    pub dns_parse_errors: Counter,
    /// DNS names refused before they entered a record (query names, answer owners, CNAME
    /// targets), by reason.
    pub dns_names_skipped: Family<ReasonLabel, Counter>,
    /// Names dropped from a (pod, address) entry of the DNS cache over
    /// `--dns-max-names-per-address`.
    pub dns_names_evicted: Counter,
    /// Answers left out of DNS records, by cause (`too_many`, `invalid_name`, `too_large`,
    /// `query_refused`).
    pub dns_answers_cut: Family<CauseLabel, Counter>,
    /// DNS records dropped because more than the pipeline's bound waited for one flush.
    pub dns_records_dropped: Counter,
    /// Lookups of a pod UID (found in a cgroup path) that the pod metadata source did not know.
    pub attribution_misses: Counter,
    /// Flow keys the kernel's LRU map evicted before user space read their final state: events
    /// after their last push may be missing. A steady rise means the map is too small.
    pub flow_keys_evicted: Counter,
    /// cgroup ids that could not be resolved to a path.
    pub cgroup_path_misses: Counter,
    /// Walks of the cgroup tree.
    pub cgroup_rescans: Counter,
    /// Entries in the cgroup id → path cache.
    pub cgroup_path_cache_size: Gauge,
    /// (pod, IP) entries in the DNS cache.
    pub dns_cache_size: Gauge,
    /// Pods known to the pod metadata source.
    pub pod_metadata_size: Gauge,
    /// Errors of the Kubernetes pod watch (each is retried).
    pub kube_watch_errors: Counter,
    /// Transport to the recommender: the gRPC sink's metrics.
    pub transport: TransportMetrics,
}

/// The gRPC sink's metrics (`leash_agent_transport_*`).
#[derive(Clone, Debug, Default)]
pub struct TransportMetrics {
    /// Flow keys in the merge buffer, waiting to be cut into a batch.
    pub buffered_keys: Gauge,
    /// DNS records in the buffer.
    pub buffered_dns: Gauge,
    /// Batches sent but not acknowledged yet.
    pub unacked_batches: Gauge,
    /// Batches sent for the first time.
    pub batches_sent: Counter,
    /// Batches the recommender acknowledged.
    pub batches_acked: Counter,
    /// Batches sent again after a reconnect (same id).
    pub batches_resent: Counter,
    /// 1 while a stream to the recommender is open.
    pub connected: Gauge,
    /// Failed connection attempts and broken streams (each is retried with backoff).
    pub connect_errors: Counter,
    /// Records not delivered, by cause (`buffer_full`, `dns_buffer_full`, `shutdown`,
    /// `unencodable`, and `rejected`, `too_large` and `forbidden` for records the recommender
    /// refused).
    pub dropped_records: Family<CauseLabel, Counter>,
    /// Flow events (the sum of `count`) in those records, by cause.
    pub dropped_events: Family<CauseLabel, Counter>,
    /// Records the recommender refused and listed in its acks, by its reason (they are also
    /// in `dropped_records{cause="rejected"}`).
    pub rejected_records: Family<ReasonLabel, Counter>,
    /// Batches the recommender refused whole (invalid or too large) that were split in two
    /// and resent as halves.
    pub batches_split: Counter,
    /// Names left out of buffered flow records past the bound per key (the records and their
    /// counts are kept).
    pub names_dropped: Counter,
}

impl TransportMetrics {
    fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("transport");
        r.register(
            "buffered_keys",
            "Flow keys in the merge buffer",
            self.buffered_keys.clone(),
        );
        r.register(
            "buffered_dns",
            "DNS records in the buffer",
            self.buffered_dns.clone(),
        );
        r.register(
            "unacked_batches",
            "Batches sent and not acknowledged yet",
            self.unacked_batches.clone(),
        );
        r.register(
            "batches_sent",
            "Batches sent for the first time",
            self.batches_sent.clone(),
        );
        r.register(
            "batches_acked",
            "Batches the recommender acknowledged",
            self.batches_acked.clone(),
        );
        r.register(
            "batches_resent",
            "Batches sent again after a reconnect",
            self.batches_resent.clone(),
        );
        r.register(
            "connected",
            "1 while a stream to the recommender is open",
            self.connected.clone(),
        );
        r.register(
            "connect_errors",
            "Failed connections and broken streams to the recommender",
            self.connect_errors.clone(),
        );
        r.register(
            "dropped_records",
            "Records not delivered to the recommender, by cause",
            self.dropped_records.clone(),
        );
        r.register(
            "dropped_events",
            "Flow events in records not delivered to the recommender, by cause",
            self.dropped_events.clone(),
        );
        r.register(
            "rejected_records",
            "Records the recommender refused as invalid or too large and listed in its acks, by reason",
            self.rejected_records.clone(),
        );
        r.register(
            "batches_split",
            "Batches the recommender refused whole, split in two and resent as halves",
            self.batches_split.clone(),
        );
        r.register(
            "names_dropped",
            "Names left out of buffered flow records past the bound per key",
            self.names_dropped.clone(),
        );
    }

    /// Counts `records` records carrying `events` flow events as dropped for `cause`.
    pub fn add_dropped(&self, cause: &'static str, records: u64, events: u64) {
        let label = CauseLabel { cause };
        self.dropped_records.get_or_create(&label).inc_by(records);
        self.dropped_events.get_or_create(&label).inc_by(events);
    }

    /// Counts `records` records the recommender refused for `reason` (listed in its acks).
    pub fn add_rejected(&self, reason: &'static str, records: u64) {
        self.rejected_records
            .get_or_create(&ReasonLabel { reason })
            .inc_by(records);
    }

    /// Records the recommender refused so far for `reason`.
    pub fn rejected(&self, reason: &'static str) -> u64 {
        self.rejected_records
            .get_or_create(&ReasonLabel { reason })
            .get()
    }

    /// Records dropped so far for `cause`.
    pub fn dropped(&self, cause: &'static str) -> (u64, u64) {
        let label = CauseLabel { cause };
        (
            self.dropped_records.get_or_create(&label).get(),
            self.dropped_events.get_or_create(&label).get(),
        )
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("leash_agent");
        let records_written = Family::<KindLabel, Counter>::default();
        let sink_errors = Counter::default();
        let kernel_records_produced = Family::<KindLabel, Counter>::default();
        let kernel_records_delivered = Family::<KindLabel, Counter>::default();
        let kernel_drops = Family::<CauseLabel, Counter>::default();
        let dns_parse_errors = Counter::default();
        let dns_names_skipped = Family::<ReasonLabel, Counter>::default();
        let dns_names_evicted = Counter::default();
        let dns_answers_cut = Family::<CauseLabel, Counter>::default();
        let dns_records_dropped = Counter::default();
        let attribution_misses = Counter::default();
        let flow_keys_evicted = Counter::default();
        let cgroup_path_misses = Counter::default();
        let cgroup_rescans = Counter::default();
        let cgroup_path_cache_size = Gauge::default();
        let dns_cache_size = Gauge::default();
        let pod_metadata_size = Gauge::default();
        let kube_watch_errors = Counter::default();
        registry.register(
            "records_written",
            "Records written by the sink",
            records_written.clone(),
        );
        registry.register(
            "sink_errors",
            "Records the sink failed to write",
            sink_errors.clone(),
        );
        registry.register(
            "kernel_records_produced",
            "Records the kernel produced",
            kernel_records_produced.clone(),
        );
        registry.register(
            "kernel_records_delivered",
            "Records read from the kernel ring buffers",
            kernel_records_delivered.clone(),
        );
        registry.register(
            "kernel_drops",
            "Records the kernel dropped, by cause",
            kernel_drops.clone(),
        );
        registry.register(
            "dns_parse_errors",
            "DNS payloads that failed to parse",
            dns_parse_errors.clone(),
        );
        registry.register(
            "dns_names_skipped",
            "DNS names refused before they entered a record, by reason",
            dns_names_skipped.clone(),
        );
        registry.register(
            "dns_names_evicted",
            "DNS names dropped from a pod's address entry over --dns-max-names-per-address",
            dns_names_evicted.clone(),
        );
        registry.register(
            "dns_answers_cut",
            "Answers left out of DNS records, by cause",
            dns_answers_cut.clone(),
        );
        registry.register(
            "dns_records_dropped",
            "DNS records dropped because too many waited for one flush",
            dns_records_dropped.clone(),
        );
        registry.register(
            "attribution_misses",
            "Pod UIDs found in a cgroup path but unknown to the pod metadata source",
            attribution_misses.clone(),
        );
        registry.register(
            "flow_keys_evicted",
            "Flow keys evicted from the kernel map before their final state was read",
            flow_keys_evicted.clone(),
        );
        registry.register(
            "cgroup_path_misses",
            "cgroup ids not resolved to a path",
            cgroup_path_misses.clone(),
        );
        registry.register(
            "cgroup_rescans",
            "Walks of the cgroup tree",
            cgroup_rescans.clone(),
        );
        registry.register(
            "cgroup_path_cache_entries",
            "Entries in the cgroup id to path cache",
            cgroup_path_cache_size.clone(),
        );
        registry.register(
            "dns_cache_entries",
            "Pod and IP entries in the DNS cache",
            dns_cache_size.clone(),
        );
        registry.register(
            "pod_metadata_entries",
            "Pods known to the pod metadata source",
            pod_metadata_size.clone(),
        );
        registry.register(
            "kube_watch_errors",
            "Errors of the Kubernetes pod watch",
            kube_watch_errors.clone(),
        );
        let transport = TransportMetrics::default();
        transport.register(&mut registry);
        Self {
            registry: Arc::new(registry),
            records_written,
            sink_errors,
            kernel_records_produced,
            kernel_records_delivered,
            kernel_drops,
            dns_parse_errors,
            dns_names_skipped,
            dns_names_evicted,
            dns_answers_cut,
            dns_records_dropped,
            attribution_misses,
            flow_keys_evicted,
            cgroup_path_misses,
            cgroup_rescans,
            cgroup_path_cache_size,
            dns_cache_size,
            pod_metadata_size,
            kube_watch_errors,
            transport,
        }
    }

    /// Brings a counter mirroring a monotonic kernel total up to `total`.
    ///
    /// Kernel counters are cumulative; Prometheus counters only go up by deltas. A total below the
    /// current value (a reloaded program) is ignored rather than decreasing the counter.
    pub fn mirror_total(counter: &Counter, total: u64) {
        let current = counter.get();
        if total > current {
            counter.inc_by(total - current);
        }
    }

    /// Sets the kernel drop total for `cause` (see [`Self::mirror_total`]).
    pub fn set_kernel_drops(&self, cause: &'static str, total: u64) {
        Self::mirror_total(
            &self.kernel_drops.get_or_create(&CauseLabel { cause }),
            total,
        );
    }

    /// Sets the kernel produced total for `kind` (see [`Self::mirror_total`]).
    pub fn set_kernel_produced(&self, kind: &'static str, total: u64) {
        Self::mirror_total(
            &self
                .kernel_records_produced
                .get_or_create(&KindLabel { kind }),
            total,
        );
    }

    /// Counts records read from the kernel for `kind`.
    pub fn add_kernel_delivered(&self, kind: &'static str, n: u64) {
        self.kernel_records_delivered
            .get_or_create(&KindLabel { kind })
            .inc_by(n);
    }

    /// Counts a DNS name refused for `reason` (a [`leash_records::names::NameError::reason`]).
    pub fn add_dns_name_skipped(&self, reason: &'static str) {
        self.dns_names_skipped
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Counts `n` answers left out of a DNS record for `cause`.
    pub fn add_dns_answers_cut(&self, cause: &'static str, n: u64) {
        if n > 0 {
            self.dns_answers_cut
                .get_or_create(&CauseLabel { cause })
                .inc_by(n);
        }
    }

    /// DNS names refused so far for `reason`.
    pub fn dns_names_skipped_for(&self, reason: &'static str) -> u64 {
        self.dns_names_skipped
            .get_or_create(&ReasonLabel { reason })
            .get()
    }

    /// Answers cut so far for `cause`.
    pub fn dns_answers_cut_for(&self, cause: &'static str) -> u64 {
        self.dns_answers_cut
            .get_or_create(&CauseLabel { cause })
            .get()
    }

    /// Counts records written by a sink for `kind`.
    pub fn add_records_written(&self, kind: &'static str, n: u64) {
        self.records_written
            .get_or_create(&KindLabel { kind })
            .inc_by(n);
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> Result<String> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Requests larger than this, or slower than [`REQUEST_TIMEOUT`], are dropped.
const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A listening `/metrics` endpoint.
///
/// One GET route over HTTP/1.1 with `Connection: close` is all a scraper needs, so this is a small
/// tokio loop rather than a web framework.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    metrics: Metrics,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, metrics: Metrics) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Bind { addr, source })?;
        Ok(Self { listener, metrics })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves scrapes until the future is dropped; each connection gets its own task.
    pub async fn serve(self) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let metrics = self.metrics.clone();
                    tokio::spawn(async move {
                        if let Err(error) = handle(stream, &metrics).await {
                            tracing::debug!(error = %Chain(&error), "metrics connection failed");
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(error = %Chain(&error), "metrics accept failed");
                    // Avoid a hot loop when out of file descriptors.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn handle(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let mut parts = head.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => match metrics.encode() {
            Ok(body) => ("200 OK", CONTENT_TYPE, body),
            Err(error) => (
                "500 Internal Server Error",
                "text/plain",
                format!("{}\n", Chain(&error)),
            ),
        },
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n".to_owned()),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the end of the request head and returns its first line.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if buf.len() > MAX_REQUEST {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text.lines().next().unwrap_or("").to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    fn value(body: &str, series: &str) -> Option<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn scrape_over_http() {
        let metrics = Metrics::new();
        metrics.add_records_written("flow", 3);
        metrics.add_records_written("dns", 1);
        metrics.set_kernel_drops("ringbuf_full", 7);
        metrics.set_kernel_drops("ringbuf_full", 9);
        metrics.set_kernel_drops("ringbuf_full", 4);
        metrics.dns_parse_errors.inc();
        metrics.dns_cache_size.set(42);
        metrics.add_dns_name_skipped("empty");
        metrics.add_dns_answers_cut("invalid_name", 2);
        metrics.add_dns_answers_cut("too_many", 0);
        metrics.dns_names_evicted.inc_by(3);
        let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), metrics.clone())
            .await
            .unwrap();
        let addr = server.local_addr().unwrap();
        let task = tokio::spawn(server.serve());

        let response = get(addr, "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains(CONTENT_TYPE));
        let body = response.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(
            value(body, "leash_agent_records_written_total{kind=\"flow\"}"),
            Some(3.0)
        );
        assert_eq!(
            value(
                body,
                "leash_agent_kernel_drops_total{cause=\"ringbuf_full\"}"
            ),
            Some(9.0)
        );
        assert_eq!(value(body, "leash_agent_dns_parse_errors_total"), Some(1.0));
        assert_eq!(value(body, "leash_agent_dns_cache_entries"), Some(42.0));
        assert_eq!(
            value(
                body,
                "leash_agent_dns_names_skipped_total{reason=\"empty\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                body,
                "leash_agent_dns_answers_cut_total{cause=\"invalid_name\"}"
            ),
            Some(2.0)
        );
        // Nothing cut for a cause: no series (a zero is not counted).
        assert_eq!(
            value(
                body,
                "leash_agent_dns_answers_cut_total{cause=\"too_many\"}"
            ),
            None
        );
        assert_eq!(
            value(body, "leash_agent_dns_names_evicted_total"),
            Some(3.0)
        );
        assert_eq!(
            value(body, "leash_agent_dns_records_dropped_total"),
            Some(0.0)
        );
        assert!(body.ends_with("# EOF\n"));

        // Updates after start are visible on the next scrape.
        metrics.attribution_misses.inc_by(5);
        metrics.flow_keys_evicted.inc_by(2);
        let body = get(addr, "/metrics").await;
        assert!(body.contains("leash_agent_attribution_misses_total 5\n"));
        assert!(body.contains("leash_agent_flow_keys_evicted_total 2\n"));

        assert!(get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }

    #[tokio::test]
    async fn bind_error_names_address() {
        let first = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), Metrics::new())
            .await
            .unwrap();
        let addr = first.local_addr().unwrap();
        let err = MetricsServer::bind(addr, Metrics::new()).await.unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
