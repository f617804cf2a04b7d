//! The agent's one loop: kernel events in, v1 records out.
//!
//! [`run`] starts capture on the attach cgroup and then, until shutdown:
//! - folds flow samples into per-key deltas ([`Aggregator`]) and DNS payloads into the
//!   per-pod name cache ([`DnsTracker`]), which also yields `kind: dns` records;
//! - every flush interval: settles quiet keys, reads the kernel counters (a recovery sweep of
//!   the kernel map follows any new flow-ring drop, so a dropped push loses nothing), turns the
//!   deltas into `kind: flow` records labelled with pod and DNS names, and hands the batch to
//!   the [`Sink`].
//!
//! On shutdown it detaches, drains the rings, sweeps the kernel map once more and flushes, so
//! every counted event reaches the sink.

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

use agent_ebpf::Counter;
use chrono::{DateTime, Utc};
use leash_records::{FlowRecord, Outcome, Protocol, Record};

use crate::{
    aggregate::{Aggregator, FlowDelta, SampleSource},
    attribution::{self, Attributor, CgroupPaths, PodStore},
    capture::{self, Capture, CaptureConfig, CaptureEvent, KernelCounters, monotonic_now_ns},
    dns::{DnsCacheConfig, DnsTracker},
    metrics::{Metrics, MetricsServer},
    sink::{self, JsonLinesSink, Sink},
};

/// Kernel records handled per wake-up before other work (flush, signals) gets a turn.
const DRAIN_BATCH: usize = 4096;

/// Pause after the rings ran empty. The flow ring holds about 12k records, so records are
/// only at risk above millions per second, and then they are counted and recovered by a sweep.
const RING_POLL_PAUSE: Duration = Duration::from_millis(2);

/// Flow records built and written per sink batch.
const FLUSH_CHUNK: usize = 4096;

/// Errors that stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Finding the cgroup mount or loading pod metadata failed.
    #[error(transparent)]
    Attribution(#[from] attribution::Error),
    /// Loading, attaching or reading the kernel programs failed.
    #[error(transparent)]
    Capture(#[from] capture::Error),
    /// Writing records failed.
    #[error(transparent)]
    Sink(#[from] sink::Error),
    /// The metrics endpoint could not start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::Error),
    /// The Kubernetes client could not be configured.
    #[error("kubernetes client: {0}")]
    Kube(#[from] kube::Error),
}

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where pod metadata comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodSource {
    /// No metadata: records carry cgroup paths, `pod` is null.
    None,
    /// A cluster snapshot file.
    Snapshot(PathBuf),
    /// A watch on the Kubernetes API for pods on this node (in-cluster or kubeconfig).
    Kube,
}

/// Everything [`run`] needs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// cgroup v2 directory to attach to; `None` = the detected cgroup v2 root.
    pub cgroup: Option<PathBuf>,
    /// Pod metadata source.
    pub pods: PodSource,
    /// `-` for stdout, or a file path.
    pub output: String,
    /// How often records are flushed (and the kernel's per-key refresh interval).
    pub flush_interval: Duration,
    /// Stop by itself after this long, flushing first.
    pub duration: Option<Duration>,
    /// This node's name, written into every record.
    pub node_name: String,
    /// Serve Prometheus metrics here.
    pub metrics_addr: Option<SocketAddr>,
    /// Source ports whose answers are parsed as DNS (53 plus e.g. 5353).
    pub dns_ports: Vec<u16>,
    /// How long a DNS name keeps labelling an address after its TTL ran out.
    pub dns_grace: Duration,
}

/// What a run did, for the final log line and for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Flow records written.
    pub flow_records: u64,
    /// DNS records written.
    pub dns_records: u64,
    /// Sum of `count` over the flow records written.
    pub flow_events: u64,
    /// The kernel counters at the end.
    pub kernel: KernelCounters,
}

/// Runs the agent until `shutdown` completes or `config.duration` elapses.
pub async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<Summary> {
    let metrics = Metrics::new();
    let mount = attribution::find_cgroup2_mount()?;
    let attach = config.cgroup.clone().unwrap_or_else(|| mount.clone());

    let pods = match &config.pods {
        PodSource::None => PodStore::new(metrics.clone()),
        PodSource::Snapshot(path) => PodStore::load_snapshot(path, metrics.clone())?,
        PodSource::Kube => {
            let store = PodStore::new(metrics.clone());
            let client = kube::Client::try_default().await?;
            let (node, watched, watch_metrics) =
                (config.node_name.clone(), store.clone(), metrics.clone());
            tokio::spawn(async move {
                attribution::watch_pods(client, &node, watched, watch_metrics).await;
            });
            store
        }
    };
    let paths = CgroupPaths::new(&mount, metrics.clone()).with_scan_root(&attach)?;
    let mut attributor = Attributor::new(paths, pods, metrics.clone());

    if let Some(addr) = config.metrics_addr {
        let server = MetricsServer::bind(addr, metrics.clone()).await?;
        tokio::spawn(server.serve());
    }

    let mut sink = JsonLinesSink::open(&config.output, metrics.clone()).await?;

    let mut capture_config = CaptureConfig::new(&attach);
    capture_config.refresh = config.flush_interval;
    capture_config.dns_ports = config.dns_ports.clone();
    let mut capture = Capture::start(&capture_config)?;
    tracing::info!(cgroup = %attach.display(), node = %config.node_name, "capturing");

    let mut state = State {
        aggregator: Aggregator::new(capture_config.refresh, capture.clock()),
        dns: DnsTracker::new(
            DnsCacheConfig {
                grace: config.dns_grace,
                ..DnsCacheConfig::default()
            },
            metrics.clone(),
        ),
        pending: Vec::new(),
        summary: Summary::default(),
        flow_losses_seen: 0,
        delivered_flows: 0,
        delivered_dns: 0,
        node: config.node_name.clone(),
        metrics,
    };

    let deadline = async {
        match config.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(config.flush_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;

    loop {
        tokio::select! {
            event = capture.next_event() => {
                state.on_event(event?, &mut attributor);
                // Drain what is already there before going back to select: one wake-up
                // serves many records.
                let mut drained = 0;
                while drained < DRAIN_BATCH {
                    match capture.try_next_event()? {
                        Some(event) => state.on_event(event, &mut attributor),
                        None => break,
                    }
                    drained += 1;
                }
                if drained < DRAIN_BATCH {
                    // Caught up. The kernel wakes a reader that has caught up on every new
                    // record, so without a pause each record would cost a wake-up; pausing
                    // lets records gather (the rings hold far more than a pause's worth).
                    tokio::time::sleep(RING_POLL_PAUSE).await;
                }
            }
            _ = tick.tick() => {
                state.settle(&capture)?;
                state.flush(&capture, &mut attributor, &mut sink).await?;
            }
            _ = &mut deadline => break,
            _ = &mut shutdown => break,
        }
    }

    // Final: stop new events, take what the rings hold, then everything the map still counts.
    capture.detach()?;
    while let Some(event) = capture.try_next_event()? {
        state.on_event(event, &mut attributor);
    }
    for sample in capture.sweep()? {
        state.aggregator.observe(&sample, SampleSource::Lookup);
    }
    state.flush(&capture, &mut attributor, &mut sink).await?;
    sink.close().await?;
    let summary = state.summary;
    tracing::info!(
        flow_records = summary.flow_records,
        dns_records = summary.dns_records,
        flow_events = summary.flow_events,
        flow_drops = summary.kernel.flow_drops(),
        dns_drops = summary.kernel.dns_drops(),
        "stopped"
    );
    Ok(summary)
}

/// The loop's state between kernel and sink.
struct State {
    aggregator: Aggregator,
    dns: DnsTracker,
    /// DNS records waiting for the next flush.
    pending: Vec<Record>,
    summary: Summary,
    /// Flow pushes lost so far (ring full or map full); a change triggers a recovery sweep.
    flow_losses_seen: u64,
    /// Ring records received since the last flush (exported then, not per record).
    delivered_flows: u64,
    delivered_dns: u64,
    node: String,
    metrics: Metrics,
}

impl State {
    fn on_event(&mut self, event: CaptureEvent, attributor: &mut Attributor) {
        match event {
            CaptureEvent::Flow(sample) => {
                self.delivered_flows += 1;
                self.aggregator.observe(&sample, SampleSource::Ring);
            }
            CaptureEvent::Dns(packet) => {
                self.delivered_dns += 1;
                let attribution = attributor.attribute_seen(packet.cgroup_id, packet.time);
                let time = DateTime::<Utc>::from(packet.time);
                if let Some(record) = self.dns.observe(
                    &packet.payload,
                    packet.server,
                    time,
                    &self.node,
                    &attribution,
                ) {
                    self.pending.push(Record::Dns(record));
                }
            }
            CaptureEvent::Malformed(error) => {
                self.metrics.dns_parse_errors.inc();
                tracing::debug!(%error, "skipping undecodable kernel record");
            }
        }
    }

    /// Reads the residue of keys that went quiet, so their last events are not left behind.
    fn settle(&mut self, capture: &Capture) -> Result<()> {
        let mut gone = Vec::new();
        let due = self.aggregator.due_for_settle(monotonic_now_ns());
        // Few keys: one lookup each; many: one batched walk of the map (capture decides).
        for (id, sample) in capture.lookup_many(&due)? {
            match sample {
                Some(sample) => self.aggregator.observe(&sample, SampleSource::Lookup),
                None => {
                    self.aggregator.mark_settled(&id);
                    gone.push(id);
                }
            }
        }
        if !gone.is_empty() {
            // Evicted before their last state was read: events after their last push, if
            // any, are gone. Said out loud rather than lost silently.
            self.metrics.flow_keys_evicted.inc_by(gone.len() as u64);
            tracing::warn!(
                keys = gone.len(),
                "flow keys evicted from the kernel map before settling; events after their last push may be missing"
            );
        }
        // Keys are only read when the kernel reported a residue, so evicted keys are found
        // here: the kernel map holds at most FLOWS_MAX_ENTRIES keys, so once we track twice
        // that many, at least half are gone. Reading the idle ones then costs at most two
        // reads per new key, amortised, and keeps memory bounded.
        if self.aggregator.len() > 2 * agent_ebpf::FLOWS_MAX_ENTRIES as usize {
            let idle = self.aggregator.idle_keys();
            for (id, sample) in capture.lookup_many(&idle)? {
                match sample {
                    Some(sample) => self.aggregator.observe(&sample, SampleSource::Lookup),
                    None => {
                        self.aggregator.mark_settled(&id);
                        gone.push(id);
                    }
                }
            }
        }
        // Keys the kernel evicted are done; forgetting them keeps memory bounded.
        self.aggregator.forget(&gone);
        Ok(())
    }

    async fn flush(
        &mut self,
        capture: &Capture,
        attributor: &mut Attributor,
        sink: &mut JsonLinesSink,
    ) -> Result<()> {
        self.metrics
            .add_kernel_delivered("flow", std::mem::take(&mut self.delivered_flows));
        self.metrics
            .add_kernel_delivered("dns", std::mem::take(&mut self.delivered_dns));
        let counters = capture.counters()?;
        self.export_counters(&counters);
        let losses = counters.flow_drops() + counters.get(Counter::FlowMapUpdateFailed);
        if losses != self.flow_losses_seen {
            // A push was lost: the kernel map still holds the counts, so read all of it.
            self.flow_losses_seen = losses;
            let samples = capture.sweep()?;
            tracing::warn!(
                lost_pushes = losses,
                recovered_keys = samples.len(),
                "flow ring overflowed; recovered counts from the kernel map"
            );
            for sample in samples {
                self.aggregator.observe(&sample, SampleSource::Lookup);
            }
        }
        self.summary.kernel = counters;

        let now = Utc::now();
        // DNS first, so the names they carry are in the cache before flows are labelled.
        let dns = std::mem::take(&mut self.pending);
        self.summary.dns_records += dns.len() as u64;
        if !dns.is_empty() {
            sink.write_batch(dns).await?;
        }
        // Build and write flows in bounded chunks: a flush of 100k keys never holds 100k
        // records and their JSON at once.
        let deltas = self.aggregator.flush();
        for chunk in deltas.chunks(FLUSH_CHUNK) {
            let mut batch = Vec::with_capacity(chunk.len());
            for delta in chunk {
                if let Some(record) = self.flow_record(delta, attributor) {
                    self.summary.flow_events += delta.count;
                    batch.push(Record::Flow(record));
                }
            }
            self.summary.flow_records += batch.len() as u64;
            if !batch.is_empty() {
                sink.write_batch(batch).await?;
            }
        }
        self.dns.purge(now);
        Ok(())
    }

    fn flow_record(&self, delta: &FlowDelta, attributor: &mut Attributor) -> Option<FlowRecord> {
        flow_record(&self.node, delta, attributor, &self.dns)
    }

    fn export_counters(&self, counters: &KernelCounters) {
        for counter in Counter::ALL {
            let value = counters.get(counter);
            match counter {
                Counter::FlowProduced => self.metrics.set_kernel_produced("flow", value),
                Counter::DnsProduced => self.metrics.set_kernel_produced("dns", value),
                other => self.metrics.set_kernel_drops(other.name(), value),
            }
        }
    }
}

/// The v1 flow record for one delta: attributed to its pod (or cgroup) and labelled with the
/// DNS names that resolved to its destination for that pod. `None` for protocols NetworkPolicy
/// cannot express (e.g. ICMP ping sockets).
pub fn flow_record(
    node: &str,
    delta: &FlowDelta,
    attributor: &mut Attributor,
    dns: &DnsTracker,
) -> Option<FlowRecord> {
    let protocol = match delta.id.protocol {
        agent_ebpf::PROTO_TCP => Protocol::Tcp,
        agent_ebpf::PROTO_UDP => Protocol::Udp,
        other => {
            tracing::debug!(
                protocol = other,
                "skipping flow of a protocol NetworkPolicy cannot express"
            );
            return None;
        }
    };
    let attribution = attributor.attribute_seen(delta.id.cgroup_id, delta.last_seen);
    let last_seen = DateTime::<Utc>::from(delta.last_seen);
    let names = dns.names_for(&attribution, delta.id.dst, last_seen);
    let outcome = (protocol == Protocol::Tcp).then_some(Outcome {
        established: delta.established,
        failed: delta.failed,
    });
    Some(FlowRecord {
        node: node.to_owned(),
        pod: attribution.pod_ref(),
        cgroup: attribution.cgroup.to_string(),
        protocol,
        dst: delta.id.dst,
        dst_port: delta.id.dst_port,
        count: delta.count,
        first_seen: DateTime::<Utc>::from(delta.first_seen),
        last_seen,
        names,
        outcome,
    })
}
