//! Prometheus metrics of the ingest service.

use leash_records::wire::{self, v1};
use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Why a batch was rejected (the `cause` label of `leash_ingest_rejected_batches_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A record or the batch id failed validation.
    Malformed,
    /// More records than the configured limit per batch.
    TooManyRecords,
    /// The encoded message exceeded the maximum decoding size.
    TooLarge,
    /// The store failed to commit.
    Store,
    /// The batch's node is not the node of the caller's token (`--agent-auth token`).
    WrongNode,
}

impl Cause {
    fn label(self) -> &'static str {
        match self {
            Cause::Malformed => "malformed",
            Cause::TooManyRecords => "too_many_records",
            Cause::TooLarge => "too_large",
            Cause::Store => "store",
            Cause::WrongNode => "wrong_node",
        }
    }
}

type Labels = [(&'static str, &'static str); 1];

/// The ingest counters and the commit latency histogram; cheap to update from any thread.
#[derive(Debug, Clone)]
pub struct Metrics {
    stored: Counter,
    duplicates: Counter,
    rejected: Family<Labels, Counter>,
    refused_streams: Family<Labels, Counter>,
    refused_records: Family<Labels, Counter>,
    records: Family<Labels, Counter>,
    commit_seconds: Histogram,
    batches_per_commit: Histogram,
    queued: Gauge,
}

impl Default for Metrics {
    /// Every cause of a rejected batch and of a refused stream is served from the start, at 0.
    fn default() -> Self {
        let rejected: Family<Labels, Counter> = Family::default();
        for cause in [
            Cause::Malformed,
            Cause::TooManyRecords,
            Cause::TooLarge,
            Cause::Store,
            Cause::WrongNode,
        ] {
            let _ = rejected.get_or_create(&[("cause", cause.label())]);
        }
        let refused_streams: Family<Labels, Counter> = Family::default();
        for cause in super::identity::STREAM_CAUSES {
            let _ = refused_streams.get_or_create(&[("cause", cause)]);
        }
        Metrics {
            stored: Counter::default(),
            duplicates: Counter::default(),
            rejected,
            refused_streams,
            refused_records: Family::default(),
            records: Family::default(),
            // 100 µs to ~52 s: a slow store shows in the top buckets, not only in +Inf.
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 20)),
            // 1 to 64 (the most batches one transaction takes).
            batches_per_commit: Histogram::new(exponential_buckets(1.0, 2.0, 7)),
            queued: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Registers the metrics under `ingest_*` of `registry`: `leash_ingest_*` in `leash
    /// serve`, whose registry carries the `leash` prefix (as for `leash_grpc_*`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("ingest");
        r.register(
            "batches_stored",
            "Batches committed to the store",
            self.stored.clone(),
        );
        r.register(
            "duplicate_batches",
            "Batches acknowledged as duplicates (already stored) and ignored",
            self.duplicates.clone(),
        );
        r.register(
            "rejected_batches",
            "Batches rejected, by cause",
            self.rejected.clone(),
        );
        r.register(
            "refused_streams",
            "Streams ended because the agent's token does not allow them (--agent-auth token), \
             by cause: no_token, invalid_token, wrong_identity, no_node or review_unavailable",
            self.refused_streams.clone(),
        );
        r.register(
            "rejected_records",
            "Records refused from stored batches (listed in the ack, not stored), by reason: \
             invalid_name, invalid_pod, invalid_field or too_large",
            self.refused_records.clone(),
        );
        r.register(
            "records",
            "Records of stored batches, by kind (flow or dns)",
            self.records.clone(),
        );
        r.register(
            "commit_seconds",
            "Time of one store transaction (a group commit of one or more batches)",
            self.commit_seconds.clone(),
        );
        r.register(
            "batches_per_commit",
            "Batches committed together in one store transaction",
            self.batches_per_commit.clone(),
        );
        r.register(
            "queued_batches",
            "Converted batches waiting for the store writer",
            self.queued.clone(),
        );
    }

    /// Batches stored so far: serve's egress map is built again when it grows.
    pub fn batches_stored(&self) -> u64 {
        self.stored.get()
    }

    pub(crate) fn stored(&self, flows: usize, dns: usize) {
        self.stored.inc();
        self.records
            .get_or_create(&[("kind", "flow")])
            .inc_by(flows as u64);
        self.records
            .get_or_create(&[("kind", "dns")])
            .inc_by(dns as u64);
    }

    pub(crate) fn duplicate(&self) {
        self.duplicates.inc();
    }

    pub(crate) fn rejected(&self, cause: Cause) {
        self.rejected
            .get_or_create(&[("cause", cause.label())])
            .inc();
    }

    pub(crate) fn refused_stream(&self, cause: &'static str) {
        self.refused_streams
            .get_or_create(&[("cause", cause)])
            .inc();
    }

    pub(crate) fn refused_record(&self, reason: v1::RejectReason) {
        self.refused_records
            .get_or_create(&[("reason", wire::reason_label(reason))])
            .inc();
    }

    pub(crate) fn queued(&self, change: i64) {
        self.queued.inc_by(change);
    }

    pub(crate) fn commit_took(&self, seconds: f64, batches: usize) {
        self.commit_seconds.observe(seconds);
        self.batches_per_commit.observe(batches as f64);
    }
}
