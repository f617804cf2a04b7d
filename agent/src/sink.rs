//! Where flushed records go.
//!
//! The flush loop hands each batch of v1 [`Record`]s to a [`Sink`]. Capture and aggregation only
//! know the trait, so a gRPC sink to the recommender can be added as another implementation.
//! The trait returns boxed futures (rather than `async fn`) so that it stays object-safe and the
//! agent can pick a sink at run time (`Box<dyn Sink>`).

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use leash_records::{PodRef, Record};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::metrics::Metrics;

/// Errors of a sink.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The output file could not be created.
    #[error("cannot create output file {path}: {source}")]
    Open {
        /// The `--output` path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing or flushing the output failed.
    #[error("cannot write records to {target}: {source}")]
    Write {
        /// The output (`stdout` or the file path).
        target: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A destination for batches of records.
pub trait Sink: Send {
    /// Writes one batch and makes it durable to the degree the sink offers (a JSON-lines sink
    /// flushes). The sink may reorder the batch (see [`sort_batch`]).
    fn write_batch(&mut self, batch: Vec<Record>) -> BoxFuture<'_, Result<()>>;

    /// Flushes and releases the output; called once on shutdown after the last batch.
    fn close(&mut self) -> BoxFuture<'_, Result<()>>;
}

/// Sorts a batch into the deterministic output order: flows before DNS answers; then by pod
/// (unattributed first), cgroup; flows by destination, port, protocol and time; DNS answers by
/// time, query and server.
pub fn sort_batch(batch: &mut [Record]) {
    batch.sort_by(compare);
}

fn pod_key(pod: Option<&PodRef>) -> Option<(&str, &str, &str)> {
    pod.map(|p| (p.namespace.as_str(), p.name.as_str(), p.uid.as_str()))
}

fn compare(a: &Record, b: &Record) -> Ordering {
    match (a, b) {
        (Record::Flow(_), Record::Dns(_)) => Ordering::Less,
        (Record::Dns(_), Record::Flow(_)) => Ordering::Greater,
        (Record::Flow(x), Record::Flow(y)) => {
            (pod_key(x.pod.as_ref()), &x.cgroup, x.dst, x.dst_port)
                .cmp(&(pod_key(y.pod.as_ref()), &y.cgroup, y.dst, y.dst_port))
                .then_with(|| x.protocol.as_str().cmp(y.protocol.as_str()))
                .then_with(|| {
                    (x.first_seen, x.last_seen, x.count).cmp(&(y.first_seen, y.last_seen, y.count))
                })
        }
        (Record::Dns(x), Record::Dns(y)) => (
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
            )),
    }
}

fn kind(record: &Record) -> &'static str {
    match record {
        Record::Flow(_) => "flow",
        Record::Dns(_) => "dns",
    }
}

/// Writes one JSON object per line (`--output FILE|-`), flushing after every batch.
pub struct JsonLinesSink {
    out: Box<dyn AsyncWrite + Send + Unpin>,
    buf: Vec<u8>,
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
    /// Largest serialisation buffer kept between batches (bytes).
    const KEEP_BUFFER: usize = 4 << 20;

    /// Opens `--output`: `-` is stdout, anything else a file created (or truncated) now.
    pub async fn open(output: &str, metrics: Metrics) -> Result<Self> {
        if output == "-" {
            return Ok(Self::from_writer(tokio::io::stdout(), "stdout", metrics));
        }
        let path = Path::new(output);
        let file = tokio::fs::File::create(path)
            .await
            .map_err(|source| Error::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self::from_writer(file, output, metrics))
    }

    /// A sink over any writer; `target` names it in errors.
    pub fn from_writer(
        out: impl AsyncWrite + Send + Unpin + 'static,
        target: &str,
        metrics: Metrics,
    ) -> Self {
        Self {
            out: Box::new(out),
            buf: Vec::new(),
            target: target.to_owned(),
            metrics,
        }
    }

    async fn write_sorted(&mut self, mut batch: Vec<Record>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        sort_batch(&mut batch);
        // One reused buffer for the whole batch: no per-record String, and the allocation
        // survives between flushes instead of growing and shrinking every interval.
        let mut text = std::mem::take(&mut self.buf);
        text.clear();
        for record in &batch {
            if let Err(e) = serde_json::to_writer(&mut text, record) {
                self.buf = text;
                self.metrics.sink_errors.inc_by(batch.len() as u64);
                return Err(Error::Write {
                    target: self.target.clone(),
                    source: std::io::Error::other(e),
                });
            }
            text.push(b'\n');
        }
        let written = async {
            self.out.write_all(&text).await?;
            self.out.flush().await
        }
        .await;
        // Keep a modest buffer between flushes; a burst's large buffer is given back.
        if text.capacity() > Self::KEEP_BUFFER {
            text = Vec::new();
        }
        self.buf = text;
        if let Err(source) = written {
            self.metrics.sink_errors.inc_by(batch.len() as u64);
            return Err(Error::Write {
                target: self.target.clone(),
                source,
            });
        }
        let flows = batch.iter().filter(|r| kind(r) == "flow").count() as u64;
        self.metrics.add_records_written("flow", flows);
        self.metrics
            .add_records_written("dns", batch.len() as u64 - flows);
        Ok(())
    }
}

impl Sink for JsonLinesSink {
    fn write_batch(&mut self, batch: Vec<Record>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.write_sorted(batch))
    }

    fn close(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let target = self.target.clone();
            let result = async {
                self.out.flush().await?;
                // Shutting down stdout would close the process's fd 1 for everyone else.
                if target != "stdout" {
                    self.out.shutdown().await?;
                }
                Ok(())
            }
            .await;
            result.map_err(|source| Error::Write { target, source })
        })
    }
}

/// Builders of v1 records, for tests here and in integration tests.
pub mod testing {
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

    #[tokio::test]
    async fn writes_sorted_json_lines_to_a_file_per_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let metrics = Metrics::new();
        let mut sink = JsonLinesSink::open(path.to_str().unwrap(), metrics.clone())
            .await
            .unwrap();
        let shop = pod("shop", "payment");
        sink.write_batch(vec![
            dns(Some(shop.clone()), "api.stripe.test.", 5),
            flow(Some(shop.clone()), "203.0.113.10", 443, 12),
            flow(None, "198.51.100.1", 80, 1),
            flow(Some(shop.clone()), "203.0.113.10", 80, 2),
            flow(Some(pod("alpha", "a")), "203.0.113.99", 1, 1),
        ])
        .await
        .unwrap();
        // Flushed per batch: readable before close.
        let text = std::fs::read_to_string(&path).unwrap();
        let records: Vec<Record> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            records,
            vec![
                flow(None, "198.51.100.1", 80, 1),
                flow(Some(pod("alpha", "a")), "203.0.113.99", 1, 1),
                flow(Some(shop.clone()), "203.0.113.10", 80, 2),
                flow(Some(shop.clone()), "203.0.113.10", 443, 12),
                dns(Some(shop.clone()), "api.stripe.test.", 5),
            ]
        );
        assert!(text.lines().all(|l| l.starts_with(r#"{"v":1,"kind":""#)));

        sink.write_batch(vec![dns(None, "b.test.", 1)])
            .await
            .unwrap();
        sink.write_batch(Vec::new()).await.unwrap();
        sink.close().await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 6);
        assert_eq!(
            metrics
                .records_written
                .get_or_create(&crate::metrics::KindLabel { kind: "flow" })
                .get(),
            4
        );
        assert_eq!(
            metrics
                .records_written
                .get_or_create(&crate::metrics::KindLabel { kind: "dns" })
                .get(),
            2
        );
    }

    #[test]
    fn order_is_independent_of_input_order() {
        let base = vec![
            dns(None, "b.test.", 2),
            dns(None, "a.test.", 2),
            dns(None, "z.test.", 1),
            flow(Some(pod("ns", "p")), "2001:db8::1", 53, 1),
            flow(Some(pod("ns", "p")), "198.51.100.1", 53, 1),
        ];
        let mut sorted = base.clone();
        sort_batch(&mut sorted);
        let mut reversed: Vec<_> = base.into_iter().rev().collect();
        sort_batch(&mut reversed);
        assert_eq!(sorted, reversed);
        let queries: Vec<_> = sorted
            .iter()
            .filter_map(|r| match r {
                Record::Dns(d) => Some(d.query.as_str()),
                Record::Flow(_) => None,
            })
            .collect();
        assert_eq!(queries, ["z.test.", "a.test.", "b.test."]);
        assert!(matches!(&sorted[0], Record::Flow(f) if f.dst.is_ipv4()));
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

    #[tokio::test]
    async fn write_errors_are_reported_and_counted() {
        let metrics = Metrics::new();
        // A full pipe: the reader side is dropped, so writes fail with EPIPE / BrokenPipe.
        let (reader, writer) = tokio::io::duplex(16);
        drop(reader);
        let mut sink = JsonLinesSink::from_writer(writer, "pipe", metrics.clone());
        let err = sink
            .write_batch(vec![flow(None, "198.51.100.1", 80, 1)])
            .await
            .unwrap_err();
        assert!(err.to_string().contains("pipe"), "{err}");
        assert_eq!(metrics.sink_errors.get(), 1);
    }
}
