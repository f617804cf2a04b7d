//! Where flushed records go.
//!
//! The flush loop hands each flow to a [`Sink`] as a borrowed [`FlowView`] (no per-record
//! allocation: the strings point into the attribution and DNS state) and each DNS answer as a
//! [`DnsRecord`], then calls [`Sink::flush`] once per chunk. Records arrive already in the
//! deterministic output order (the pipeline sorts keys, not records). Capture and aggregation
//! only know the trait, so the JSON-lines file and the gRPC stream to the recommender are two
//! implementations, and [`FanOut`] feeds both. The async methods return boxed futures (rather
//! than `async fn`) so that the trait stays object-safe and the agent picks sinks at run time
//! (`Box<dyn Sink>`).

use std::cmp::Ordering;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use futures::future::BoxFuture;
use leash_records::{DnsRecord, FlowRecord, Outcome, PodRef, Protocol, Record};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::metrics::Metrics;

mod json;

/// Errors of a sink.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The output file could not be created.
    #[error("cannot create output file {path}")]
    Open {
        /// The `--output` path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing or flushing the output failed.
    #[error("cannot write records to {target}")]
    Write {
        /// The output (`stdout` or the file path).
        target: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The pod of a [`FlowView`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodView<'a> {
    /// Namespace (first: the output order is namespace, name, uid).
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// `metadata.uid`.
    pub uid: &'a str,
}

impl PodView<'_> {
    /// The owned contract type.
    pub fn to_pod_ref(&self) -> PodRef {
        PodRef {
            uid: self.uid.to_owned(),
            namespace: self.namespace.to_owned(),
            name: self.name.to_owned(),
        }
    }
}

impl<'a> From<&'a PodRef> for PodView<'a> {
    fn from(p: &'a PodRef) -> Self {
        Self {
            namespace: &p.namespace,
            name: &p.name,
            uid: &p.uid,
        }
    }
}

/// A `kind: flow` record whose strings are borrowed: what the pipeline hands to sinks.
/// [`FlowView::write_json`] writes exactly the bytes `serde_json` writes for the equivalent
/// [`Record::Flow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowView<'a> {
    /// The node that observed the flow.
    pub node: &'a str,
    /// The pod, `None` when unattributed.
    pub pod: Option<PodView<'a>>,
    /// The cgroup v2 path.
    pub cgroup: &'a str,
    /// Transport protocol.
    pub protocol: Protocol,
    /// Destination address.
    pub dst: IpAddr,
    /// Destination port.
    pub dst_port: u16,
    /// Events since the key's previous record.
    pub count: u64,
    /// Earliest event bound (a `SystemTime`, as the kernel clock gives it: converting to a
    /// calendar type per record would cost more than formatting it).
    pub first_seen: SystemTime,
    /// Latest event bound.
    pub last_seen: SystemTime,
    /// DNS names for `dst`, sorted.
    pub names: &'a [String],
    /// TCP outcomes.
    pub outcome: Option<Outcome>,
}

impl<'a> FlowView<'a> {
    /// A view of an owned record.
    pub fn of(record: &'a FlowRecord) -> Self {
        Self {
            node: &record.node,
            pod: record.pod.as_ref().map(PodView::from),
            cgroup: &record.cgroup,
            protocol: record.protocol,
            dst: record.dst,
            dst_port: record.dst_port,
            count: record.count,
            first_seen: record.first_seen.into(),
            last_seen: record.last_seen.into(),
            names: &record.names,
            outcome: record.outcome,
        }
    }

    /// The owned contract record.
    pub fn to_record(&self) -> FlowRecord {
        FlowRecord {
            node: self.node.to_owned(),
            pod: self.pod.map(|p| p.to_pod_ref()),
            cgroup: self.cgroup.to_owned(),
            protocol: self.protocol,
            dst: self.dst,
            dst_port: self.dst_port,
            count: self.count,
            first_seen: self.first_seen.into(),
            last_seen: self.last_seen.into(),
            names: self.names.to_vec(),
            outcome: self.outcome,
        }
    }

    /// Appends the record as one JSON object (no newline), byte-identical to `serde_json`'s
    /// serialisation of [`Record::Flow`].
    pub fn write_json(&self, out: &mut Vec<u8>) {
        json::write_flow(self, out);
    }
}

/// A destination for records.
///
/// `write_*` only buffer (they never wait on I/O, so a slow or absent destination cannot stall
/// the capture loop); [`Sink::flush`] hands the buffered records on.
pub trait Sink: Send {
    /// Buffers one flow record.
    fn write_flow(&mut self, flow: &FlowView<'_>);

    /// Buffers one DNS record.
    fn write_dns(&mut self, dns: &DnsRecord);

    /// Passes on what was buffered since the last flush, as far as the sink promises (the
    /// JSON-lines sink writes and flushes its output; the gRPC sink only wakes its sender).
    fn flush(&mut self) -> BoxFuture<'_, Result<()>>;

    /// Flushes and releases the output; called once on shutdown after the last flush.
    fn close(&mut self) -> BoxFuture<'_, Result<()>>;
}

/// Sorts DNS records into the output order: by pod (unattributed first), cgroup, time, query,
/// server and type.
pub fn sort_dns(records: &mut [DnsRecord]) {
    records.sort_by(compare_dns);
}

fn pod_key(pod: Option<&PodRef>) -> Option<PodView<'_>> {
    pod.map(PodView::from)
}

fn compare_dns(x: &DnsRecord, y: &DnsRecord) -> Ordering {
    (
        pod_key(x.pod.as_ref()),
        &x.cgroup,
        x.time,
        &x.query,
        x.server,
        &x.qtype,
    )
        .cmp(&(
            pod_key(y.pod.as_ref()),
            &y.cgroup,
            y.time,
            &y.query,
            y.server,
            &y.qtype,
        ))
}

/// Sends every record to several sinks (`--output` and `--recommender` together).
pub struct FanOut {
    sinks: Vec<Box<dyn Sink>>,
}

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOut")
            .field("sinks", &self.sinks.len())
            .finish()
    }
}

impl FanOut {
    /// A fan-out over `sinks`, written in this order.
    pub fn new(sinks: Vec<Box<dyn Sink>>) -> Self {
        Self { sinks }
    }
}

impl Sink for FanOut {
    fn write_flow(&mut self, flow: &FlowView<'_>) {
        for sink in &mut self.sinks {
            sink.write_flow(flow);
        }
    }

    fn write_dns(&mut self, dns: &DnsRecord) {
        for sink in &mut self.sinks {
            sink.write_dns(dns);
        }
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            // Every sink gets its flush even when an earlier one failed; the first error wins.
            let mut first = Ok(());
            for sink in &mut self.sinks {
                let result = sink.flush().await;
                if first.is_ok() {
                    first = result;
                }
            }
            first
        })
    }

    fn close(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut first = Ok(());
            for sink in &mut self.sinks {
                let result = sink.close().await;
                if first.is_ok() {
                    first = result;
                }
            }
            first
        })
    }
}

/// Where a [`JsonLinesSink`] writes.
enum Output {
    /// A regular file, written with plain `write(2)` on the calling thread. A page-cache write
    /// does not wait for a reader, and the flush loop awaits the write anyway; going through
    /// `tokio::fs` instead copied every buffer once more and handed each write to a blocking
    /// thread (a wake-up and two context switches per chunk), about a fifth of the agent's
    /// CPU at 100k keys (`benches/agent_scale.rs`).
    File(std::fs::File),
    /// stdout (may be a pipe with a slow reader) or any other writer, asynchronously.
    Async(Box<dyn AsyncWrite + Send + Unpin>),
}

impl Output {
    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Self::File(file) => std::io::Write::write_all(file, buf),
            Self::Async(out) => {
                out.write_all(buf).await?;
                out.flush().await
            }
        }
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Self::File(file) => std::io::Write::flush(file),
            Self::Async(out) => out.flush().await,
        }
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        match self {
            Self::File(file) => std::io::Write::flush(file),
            Self::Async(out) => {
                out.flush().await?;
                out.shutdown().await
            }
        }
    }
}

/// Writes one JSON object per line (`--output FILE|-`), writing and flushing on every
/// [`Sink::flush`].
pub struct JsonLinesSink {
    out: Output,
    buf: Vec<u8>,
    writer: json::FlowWriter,
    flows: u64,
    dns: u64,
    target: String,
    metrics: Metrics,
}

impl std::fmt::Debug for JsonLinesSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLinesSink")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl JsonLinesSink {
    /// Largest serialisation buffer kept between flushes (bytes).
    const KEEP_BUFFER: usize = 4 << 20;

    /// Opens `--output`: `-` is stdout, anything else a file created (or truncated) now.
    pub async fn open(output: &str, metrics: Metrics) -> Result<Self> {
        if output == "-" {
            return Ok(Self::from_writer(tokio::io::stdout(), "stdout", metrics));
        }
        let path = Path::new(output);
        let file = std::fs::File::create(path).map_err(|source| Error::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::with_output(Output::File(file), output, metrics))
    }

    /// A sink over any writer; `target` names it in errors.
    pub fn from_writer(
        out: impl AsyncWrite + Send + Unpin + 'static,
        target: &str,
        metrics: Metrics,
    ) -> Self {
        Self::with_output(Output::Async(Box::new(out)), target, metrics)
    }

    fn with_output(out: Output, target: &str, metrics: Metrics) -> Self {
        Self {
            out,
            buf: Vec::new(),
            writer: json::FlowWriter::default(),
            flows: 0,
            dns: 0,
            target: target.to_owned(),
            metrics,
        }
    }

    async fn write_out(&mut self) -> Result<()> {
        let (flows, dns) = (
            std::mem::take(&mut self.flows),
            std::mem::take(&mut self.dns),
        );
        if self.buf.is_empty() {
            return Ok(());
        }
        let written = self.out.write_all(&self.buf).await;
        self.buf.clear();
        // Keep a modest buffer between flushes; a burst's large buffer is given back.
        if self.buf.capacity() > Self::KEEP_BUFFER {
            self.buf = Vec::new();
        }
        if let Err(source) = written {
            self.metrics.sink_errors.inc_by(flows + dns);
            return Err(Error::Write {
                target: self.target.clone(),
                source,
            });
        }
        self.metrics.add_records_written("flow", flows);
        self.metrics.add_records_written("dns", dns);
        Ok(())
    }
}

impl Sink for JsonLinesSink {
    fn write_flow(&mut self, flow: &FlowView<'_>) {
        self.writer.write(flow, &mut self.buf);
        self.buf.push(b'\n');
        self.flows += 1;
    }

    fn write_dns(&mut self, dns: &DnsRecord) {
        // Few DNS records: the contract's own serialiser, through an owned copy.
        let record = Record::Dns(dns.clone());
        let len = self.buf.len();
        if serde_json::to_writer(&mut self.buf, &record).is_ok() {
            self.buf.push(b'\n');
            self.dns += 1;
        } else {
            // Unreachable for these plain structs; counted rather than written half.
            self.buf.truncate(len);
            self.metrics.sink_errors.inc();
        }
    }

    fn flush(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.write_out())
    }

    fn close(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.write_out().await?;
            let target = self.target.clone();
            // Shutting down stdout would close the process's fd 1 for everyone else.
            let result = if target == "stdout" {
                self.out.flush().await
            } else {
                self.out.shutdown().await
            };
            result.map_err(|source| Error::Write { target, source })
        })
    }
}

/// Builders of v1 records, for tests here and in integration tests (feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    // `make product-check` builds the library with this cfg and without the `testing`
    // feature: it passes only if this module is left out of the product.
    #[cfg(leash_product_build)]
    compile_error!("test-only code compiled into the product library");

    use std::net::IpAddr;

    use chrono::{DateTime, TimeDelta, Utc};
    use leash_records::{DnsRecord, FlowRecord, PodRef, Protocol, Record};

    /// A fixed instant plus `secs`.
    pub fn at(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + TimeDelta::days(20_000) + TimeDelta::seconds(secs)
    }

    /// A pod reference `namespace/name` (uid derived from the name).
    pub fn pod(namespace: &str, name: &str) -> PodRef {
        PodRef {
            uid: format!("uid-{namespace}-{name}"),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// A TCP flow record.
    pub fn flow(pod: Option<PodRef>, dst: &str, port: u16, count: u64) -> Record {
        Record::Flow(FlowRecord {
            node: "n1".to_owned(),
            pod,
            cgroup: "/kubepods.slice/test".to_owned(),
            protocol: Protocol::Tcp,
            dst: dst.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            dst_port: port,
            count,
            first_seen: at(0),
            last_seen: at(1),
            names: Vec::new(),
            outcome: None,
        })
    }

    /// A DNS record with no answers.
    pub fn dns(pod: Option<PodRef>, query: &str, secs: i64) -> Record {
        Record::Dns(DnsRecord {
            node: "n1".to_owned(),
            pod,
            cgroup: "/kubepods.slice/test".to_owned(),
            server: IpAddr::from([198, 51, 100, 53]),
            query: query.to_owned(),
            qtype: "A".to_owned(),
            rcode: "NOERROR".to_owned(),
            answers: Vec::new(),
            time: at(secs),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn flow_of(record: &Record) -> &FlowRecord {
        match record {
            Record::Flow(f) => f,
            Record::Dns(_) => panic!("not a flow"),
        }
    }

    fn dns_of(record: Record) -> DnsRecord {
        match record {
            Record::Dns(d) => d,
            Record::Flow(_) => panic!("not a DNS record"),
        }
    }

    #[tokio::test]
    async fn writes_json_lines_to_a_file_per_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let metrics = Metrics::new();
        let mut sink = JsonLinesSink::open(path.to_str().unwrap(), metrics.clone())
            .await
            .unwrap();
        let shop = pod("shop", "payment");
        let flows = [
            flow(None, "198.51.100.1", 80, 1),
            flow(Some(shop.clone()), "203.0.113.10", 443, 12),
        ];
        let answer = dns(Some(shop.clone()), "api.stripe.test.", 5);
        sink.write_dns(&dns_of(answer.clone()));
        for f in &flows {
            sink.write_flow(&FlowView::of(flow_of(f)));
        }
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "",
            "buffered until flush"
        );
        sink.flush().await.unwrap();
        // Flushed: readable before close, in the order written.
        let text = std::fs::read_to_string(&path).unwrap();
        let records: Vec<Record> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records, vec![answer, flows[0].clone(), flows[1].clone()]);
        assert!(text.lines().all(|l| l.starts_with(r#"{"v":1,"kind":""#)));
        assert_eq!(
            text.lines().nth(1).unwrap(),
            flows[0].to_json_line(),
            "the contract's own bytes"
        );

        sink.write_dns(&dns_of(dns(None, "b.test.", 1)));
        sink.flush().await.unwrap();
        sink.flush().await.unwrap();
        sink.write_flow(&FlowView::of(flow_of(&flows[0])));
        sink.close().await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 5, "close writes what was buffered");
        let written = |kind| {
            metrics
                .records_written
                .get_or_create(&crate::metrics::KindLabel { kind })
                .get()
        };
        assert_eq!((written("flow"), written("dns")), (3, 2));
    }

    #[test]
    fn dns_order_is_independent_of_input_order() {
        let base: Vec<DnsRecord> = vec![
            dns(None, "b.test.", 2),
            dns(None, "a.test.", 2),
            dns(None, "z.test.", 1),
            dns(Some(pod("ns", "p")), "a.test.", 0),
        ]
        .into_iter()
        .map(dns_of)
        .collect();
        let mut sorted = base.clone();
        sort_dns(&mut sorted);
        let mut reversed: Vec<_> = base.into_iter().rev().collect();
        sort_dns(&mut reversed);
        assert_eq!(sorted, reversed);
        let queries: Vec<_> = sorted.iter().map(|d| d.query.as_str()).collect();
        assert_eq!(queries, ["z.test.", "a.test.", "b.test.", "a.test."]);
        assert!(sorted[3].pod.is_some(), "unattributed first");
    }

    #[tokio::test]
    async fn fan_out_writes_every_record_to_every_sink() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let metrics = Metrics::new();
        let mut sink = FanOut::new(vec![
            Box::new(
                JsonLinesSink::open(a.to_str().unwrap(), metrics.clone())
                    .await
                    .unwrap(),
            ),
            Box::new(
                JsonLinesSink::open(b.to_str().unwrap(), metrics.clone())
                    .await
                    .unwrap(),
            ),
        ]);
        let f = flow(None, "198.51.100.1", 80, 3);
        sink.write_flow(&FlowView::of(flow_of(&f)));
        sink.write_dns(&dns_of(dns(None, "a.test.", 1)));
        sink.flush().await.unwrap();
        sink.close().await.unwrap();
        let (a, b) = (
            std::fs::read_to_string(a).unwrap(),
            std::fs::read_to_string(b).unwrap(),
        );
        assert_eq!(a, b);
        assert_eq!(a.lines().next().unwrap(), f.to_json_line());
        assert_eq!(a.lines().count(), 2);
    }

    #[tokio::test]
    async fn open_error_names_the_path() {
        let err = JsonLinesSink::open("/nonexistent-dir/leash/out.jsonl", Metrics::new())
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-dir/leash/out.jsonl"),
            "{err}"
        );
    }

    /// The OS cause is the error's source, not part of its message: walking the chain meets
    /// it once, and the chain printer shows it once, after the path.
    #[tokio::test]
    async fn open_error_holds_its_cause_once() {
        let err = JsonLinesSink::open("/nonexistent-dir/leash/out.jsonl", Metrics::new())
            .await
            .unwrap_err();
        let cause = std::io::Error::from_raw_os_error(libc::ENOENT).to_string();
        let mut all = Vec::new();
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&err);
        while let Some(e) = next {
            all.push(e.to_string());
            next = e.source();
        }
        let all = all.join("\n");
        assert_eq!(all.matches(&cause).count(), 1, "{all}");
        assert_eq!(
            leash_records::error::Chain(&err).to_string(),
            format!("cannot create output file /nonexistent-dir/leash/out.jsonl: {cause}")
        );
    }

    #[tokio::test]
    async fn write_errors_are_reported_and_counted() {
        let metrics = Metrics::new();
        // A full pipe: the reader side is dropped, so writes fail with EPIPE / BrokenPipe.
        let (reader, writer) = tokio::io::duplex(16);
        drop(reader);
        let mut sink = JsonLinesSink::from_writer(writer, "pipe", metrics.clone());
        sink.write_flow(&FlowView::of(flow_of(&flow(None, "198.51.100.1", 80, 1))));
        let err = sink.flush().await.unwrap_err();
        assert!(err.to_string().contains("pipe"), "{err}");
        assert_eq!(metrics.sink_errors.get(), 1);
    }
}
