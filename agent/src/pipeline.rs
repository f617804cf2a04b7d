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
//! On shutdown it detaches, drains the rings, reads the keys with a residue (or sweeps the
//! whole map after a flow drop) and flushes, so every counted event reaches the sink.

use std::{future::Future, net::SocketAddr, ops::Range, path::PathBuf, time::Duration};

use agent_ebpf::Counter;
use chrono::{DateTime, Utc};
use leash_records::error::Chain;
use leash_records::{DnsRecord, Outcome, Protocol};

use crate::{
    aggregate::{Aggregator, CgroupRun, FlowDelta, SampleSource},
    attribution::{self, Attribution, Attributor, CgroupPaths, PodInfo, PodStore},
    capture::{self, Capture, CaptureConfig, CaptureEvent, KernelCounters, monotonic_now_ns},
    dns::{DnsCacheConfig, DnsTracker},
    metrics::{Metrics, MetricsServer},
    sink::{self, FanOut, FlowView, JsonLinesSink, PodView, Sink},
    transport::{GrpcSink, TransportConfig},
};

/// Kernel records handled per wake-up before other work (flush, signals) gets a turn.
const DRAIN_BATCH: usize = 4096;

/// Pause after the rings ran empty. The flow ring holds about 10k records, so records are
/// only at risk above about half a million per second (the kernel pushes a key at most once
/// per refresh interval, so that is half a million new keys per second), and then they are
/// counted and recovered by a sweep. Each wake-up costs tens of microseconds of scheduling
/// on a small VM, so fewer, larger batches are cheaper per record.
const RING_POLL_PAUSE: Duration = Duration::from_millis(20);

/// Flow samples folded into the aggregator together ([`Aggregator::observe_all`] prefetches
/// a batch's index slots before looking them up).
const OBSERVE_BATCH: usize = 64;

/// Flow records built and written per sink batch.
const FLUSH_CHUNK: usize = 4096;

/// DNS records held for one flush; more are dropped and counted (`dns_records_dropped`). Any
/// pod can send itself DNS answers as fast as loopback carries them; each record is at most
/// about 4.5 KiB ([`crate::dns::MAX_ANSWER_BYTES`]), so this bounds the wait to about 45 MiB.
/// The names of dropped records still label flows (they are cached before the record is built).
const MAX_PENDING_DNS: usize = 10_000;

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
    #[error("cannot configure the Kubernetes client")]
    Kube(#[from] kube::Error),
    /// The recommender transport could not be set up.
    #[error("cannot set up the recommender transport")]
    Transport(#[from] crate::transport::Error),
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
    /// JSON lines to `-` (stdout) or a file; `None` when only the recommender gets records.
    pub output: Option<String>,
    /// Stream records to the recommender over gRPC.
    pub recommender: Option<TransportConfig>,
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
    /// Most DNS names kept per (pod, address), so per flow record.
    pub dns_max_names: usize,
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

    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(output) = &config.output {
        sinks.push(Box::new(
            JsonLinesSink::open(output, metrics.clone()).await?,
        ));
    }
    if let Some(transport) = &config.recommender {
        sinks.push(Box::new(GrpcSink::start(transport.clone(), &metrics)?));
    }
    let mut sink: Box<dyn Sink> = match sinks.len() {
        1 => sinks.remove(0),
        _ => Box::new(FanOut::new(sinks)),
    };

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
                max_names: config.dns_max_names,
                ..DnsCacheConfig::default()
            },
            metrics.clone(),
        ),
        pending: Vec::new(),
        pending_dropped: 0,
        samples: Vec::with_capacity(OBSERVE_BATCH),
        deltas: Vec::new(),
        runs: Vec::new(),
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
                state.fold_samples();
                if drained < DRAIN_BATCH {
                    // Caught up. The kernel wakes a reader that has caught up on every new
                    // record, so without a pause each record would cost a wake-up; pausing
                    // lets records gather (the rings hold far more than a pause's worth).
                    tokio::time::sleep(RING_POLL_PAUSE).await;
                }
            }
            _ = tick.tick() => {
                state.settle(&capture, monotonic_now_ns())?;
                state.flush(&capture, &mut attributor, sink.as_mut()).await?;
            }
            _ = &mut deadline => break,
            _ = &mut shutdown => break,
        }
    }

    // Final: stop new events, take what the rings hold, then read every key with a residue.
    // No event can follow the detach, so every push window is over. A lost push or notice (a
    // flow drop) makes the flush sweep the whole map, as during the run; without one, keys
    // without a notice after their latest push have nothing left to read.
    capture.detach()?;
    while let Some(event) = capture.try_next_event()? {
        state.on_event(event, &mut attributor);
    }
    state.fold_samples();
    state.settle(&capture, u64::MAX)?;
    state
        .flush(&capture, &mut attributor, sink.as_mut())
        .await?;
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
    /// DNS records waiting for the next flush (at most [`MAX_PENDING_DNS`]).
    pending: Vec<DnsRecord>,
    /// DNS records dropped since the last flush because `pending` was full.
    pending_dropped: u64,
    /// Flow ring samples not yet folded into the aggregator (up to [`OBSERVE_BATCH`]).
    samples: Vec<crate::capture::FlowSample>,
    /// A part of the flush's flow deltas (scratch, kept between flushes).
    deltas: Vec<FlowDelta>,
    /// The flush's per-cgroup runs (scratch, kept between flushes).
    runs: Vec<CgroupRun>,
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
                self.samples.push(sample);
                if self.samples.len() >= OBSERVE_BATCH {
                    self.fold_samples();
                }
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
                    if self.pending.len() < MAX_PENDING_DNS {
                        self.pending.push(record);
                    } else {
                        self.pending_dropped += 1;
                        self.metrics.dns_records_dropped.inc();
                    }
                }
            }
            CaptureEvent::Malformed(error) => {
                self.metrics.dns_parse_errors.inc();
                tracing::debug!(error = %Chain(&error), "skipping undecodable kernel record");
            }
        }
    }

    /// Folds the flow samples read so far into the aggregator.
    fn fold_samples(&mut self) {
        self.aggregator
            .observe_all(&self.samples, SampleSource::Ring);
        self.samples.clear();
    }

    /// Reads the residue of keys that went quiet, so their last events are not left behind.
    /// `now_ns` is the kernel's monotonic time (`u64::MAX` once detached: every window is over).
    fn settle(&mut self, capture: &Capture, now_ns: u64) -> Result<()> {
        self.fold_samples();
        let mut gone = Vec::new();
        let due = self.aggregator.due_for_settle(now_ns);
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
        sink: &mut dyn Sink,
    ) -> Result<()> {
        self.fold_samples();
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
        let mut dns = std::mem::take(&mut self.pending);
        if self.pending_dropped > 0 {
            tracing::warn!(
                dropped = std::mem::take(&mut self.pending_dropped),
                kept = dns.len(),
                "more DNS answers than one flush holds; dropped the rest (their names still label flows)"
            );
        }
        self.summary.dns_records += dns.len() as u64;
        sink::sort_dns(&mut dns);
        for record in &dns {
            sink.write_dns(record);
        }
        // Flows go out in bounded chunks: a flush of 100k keys never holds 100k deltas or
        // records' JSON at once. Deltas come sorted within a cgroup and cgroups are put in
        // output order, so no record is ever sorted (or built as an owned record).
        let mut runs = std::mem::take(&mut self.runs);
        self.aggregator.begin_flush(&mut runs);
        let groups = group_flows(&runs, attributor);
        let mut deltas = std::mem::take(&mut self.deltas);
        let mut in_chunk = dns.len();
        // Without any cached name there is nothing to look up (nor a time to convert).
        let no_names = self.dns.cache().is_empty();
        for group in &groups {
            for at in group.deltas.clone().step_by(FLUSH_CHUNK) {
                deltas.clear();
                let part = at..group.deltas.end.min(at + FLUSH_CHUNK);
                self.aggregator.take_deltas(part, &mut deltas);
                for delta in &deltas {
                    let names = if no_names {
                        Vec::new()
                    } else {
                        let last_seen = DateTime::<Utc>::from(delta.last_seen);
                        self.dns
                            .names_for(&group.attribution, delta.id.dst, last_seen)
                    };
                    let Some(view) = flow_view(&self.node, &group.attribution, delta, &names)
                    else {
                        continue;
                    };
                    sink.write_flow(&view);
                    self.summary.flow_records += 1;
                    self.summary.flow_events += delta.count;
                    in_chunk += 1;
                    if in_chunk >= FLUSH_CHUNK {
                        sink.flush().await?;
                        in_chunk = 0;
                    }
                }
            }
        }
        self.aggregator.end_flush();
        deltas.clear();
        self.deltas = deltas;
        self.runs = runs;
        sink.flush().await?;
        self.dns.purge(now);
        Ok(())
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

/// The flow deltas of one cgroup, attributed once.
#[derive(Debug, Clone)]
pub struct FlowGroup {
    /// Who the cgroup belongs to.
    pub attribution: Attribution,
    /// The group's deltas: the range of its [`CgroupRun`].
    pub deltas: Range<usize>,
}

/// Attributes each per-cgroup run of a flush (see [`Aggregator::begin_flush`], or
/// [`crate::aggregate::cgroup_runs`] of [`Aggregator::flush`]'s result) once, and puts the
/// groups in output order: by pod (namespace, name, uid; unattributed first), then cgroup
/// path, then cgroup id. Within a group the deltas are already in output order (destination,
/// port, protocol), so the records come out sorted without sorting records.
pub fn group_flows(runs: &[CgroupRun], attributor: &mut Attributor) -> Vec<FlowGroup> {
    let mut groups: Vec<FlowGroup> = runs
        .iter()
        .map(|run| FlowGroup {
            attribution: attributor.attribute_seen(run.cgroup_id, run.last_seen),
            deltas: run.deltas.clone(),
        })
        .collect();
    fn key(g: &FlowGroup) -> (Option<PodView<'_>>, &str, usize) {
        (
            g.attribution.pod.as_deref().map(pod_view),
            &g.attribution.cgroup,
            // Runs are in cgroup id order: the start breaks ties by cgroup id.
            g.deltas.start,
        )
    }
    groups.sort_by(|a, b| key(a).cmp(&key(b)));
    groups
}

fn pod_view(pod: &PodInfo) -> PodView<'_> {
    PodView {
        namespace: &pod.namespace,
        name: &pod.name,
        uid: &pod.uid,
    }
}

/// The v1 flow record for one delta of a cgroup attributed as `attribution`, labelled with
/// `names` (from [`DnsTracker::names_for`]), borrowed. `None` for protocols NetworkPolicy
/// cannot express (e.g. ICMP ping sockets).
pub fn flow_view<'a>(
    node: &'a str,
    attribution: &'a Attribution,
    delta: &FlowDelta,
    names: &'a [String],
) -> Option<FlowView<'a>> {
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
    let outcome = (protocol == Protocol::Tcp).then_some(Outcome {
        established: delta.established,
        failed: delta.failed,
    });
    Some(FlowView {
        node,
        pod: attribution.pod.as_deref().map(pod_view),
        cgroup: &attribution.cgroup,
        protocol,
        dst: delta.id.dst,
        dst_port: delta.id.dst_port,
        count: delta.count,
        first_seen: delta.first_seen,
        last_seen: delta.last_seen,
        names,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::os::unix::fs::MetadataExt as _;

    use super::*;
    use crate::capture::{FlowId, KernelClock};
    use crate::dns::DnsCacheConfig;
    use crate::sink::testing::at;
    use leash_lab::k8s;

    fn delta(clock: &KernelClock, cgroup_id: u64, protocol: u8, dst: &str, port: u16) -> FlowDelta {
        FlowDelta {
            id: FlowId {
                cgroup_id,
                protocol,
                dst: dst.parse().unwrap(),
                dst_port: port,
            },
            count: 1,
            established: 0,
            failed: 0,
            first_seen_ns: 1,
            last_seen_ns: 2,
            first_seen: clock.to_system_time(1),
            last_seen: clock.to_system_time(2),
        }
    }

    /// A pod answering itself faster than the agent flushes: at most [`MAX_PENDING_DNS`] DNS
    /// records wait, the rest are counted; their names still label the pod's flows.
    #[test]
    fn pending_dns_records_are_bounded_and_counted() {
        use crate::capture::{DnsPacket, DnsTransport};
        use crate::dns::testing::{TestRecord, response};
        use hickory_proto::op::ResponseCode;
        use hickory_proto::rr::RecordType;

        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let mut attributor = Attributor::new(
            CgroupPaths::new(dir.path(), metrics.clone()),
            PodStore::new(metrics.clone()),
            metrics.clone(),
        );
        let clock = KernelClock::from_offset_ns(0);
        let mut state = State {
            aggregator: Aggregator::new(Duration::from_secs(1), clock),
            dns: DnsTracker::new(DnsCacheConfig::default(), metrics.clone()),
            pending: Vec::new(),
            pending_dropped: 0,
            samples: Vec::new(),
            deltas: Vec::new(),
            runs: Vec::new(),
            summary: Summary::default(),
            flow_losses_seen: 0,
            delivered_flows: 0,
            delivered_dns: 0,
            node: "n1".to_owned(),
            metrics: metrics.clone(),
        };
        let packet = |name: &'static str, addr: [u8; 4]| {
            CaptureEvent::Dns(DnsPacket {
                cgroup_id: 7,
                time: std::time::SystemTime::now(),
                server: IpAddr::from([127, 0, 0, 1]),
                server_port: 53,
                transport: DnsTransport::Udp,
                payload: response(
                    name,
                    RecordType::A,
                    ResponseCode::NoError,
                    &[TestRecord::Addr(name, IpAddr::from(addr), 60)],
                ),
                truncated: false,
            })
        };
        for _ in 0..MAX_PENDING_DNS + 4 {
            state.on_event(packet("a.flood.test.", [203, 0, 113, 1]), &mut attributor);
        }
        state.on_event(
            packet("last.flood.test.", [203, 0, 113, 2]),
            &mut attributor,
        );
        assert_eq!(state.pending.len(), MAX_PENDING_DNS);
        assert_eq!(state.pending_dropped, 5);
        assert_eq!(metrics.dns_records_dropped.get(), 5);
        let attribution = attributor.attribute(7);
        assert_eq!(
            state
                .dns
                .names_for(&attribution, IpAddr::from([203, 0, 113, 2]), Utc::now()),
            ["last.flood.test"]
        );
    }

    /// The records come out in the contract's order (pod, cgroup, destination, port,
    /// protocol) from groups and the aggregator's delta order alone, whatever the cgroup ids.
    #[test]
    fn flows_come_out_in_output_order_without_sorting_records() {
        let dir = tempfile::tempdir().unwrap();
        let uid = |n: u32| format!("0000000{n}-0000-4000-8000-000000000000");
        let pod_dir = |n: u32| {
            dir.path().join(format!(
                "kubepods.slice/kubepods-pod{}.slice/cri-containerd-{}.scope",
                uid(n).replace('-', "_"),
                "ab".repeat(32)
            ))
        };
        // Created so that directory inodes (cgroup ids) do not follow output order.
        let dirs = [
            pod_dir(1),
            dir.path().join("system.slice/b.service"),
            pod_dir(2),
            dir.path().join("system.slice/a.service"),
        ];
        for d in &dirs {
            std::fs::create_dir_all(d).unwrap();
        }
        let ids: Vec<u64> = dirs
            .iter()
            .map(|d| std::fs::metadata(d).unwrap().ino())
            .collect();
        let metrics = Metrics::new();
        let pods = PodStore::new(metrics.clone());
        // Pod 1 is "zeta/z", pod 2 is "alpha/a": alpha sorts first.
        for (n, ns, name) in [(1, "zeta", "z"), (2, "alpha", "a")] {
            let pod = k8s::pod(ns, name).uid(&uid(n)).node("n1").build();
            pods.upsert(PodInfo::from_pod(&pod).unwrap());
        }
        let mut attributor = Attributor::new(
            CgroupPaths::new(dir.path(), metrics.clone()),
            pods,
            metrics.clone(),
        );
        let clock = KernelClock::from_offset_ns(0);
        let mut agg = Aggregator::new(Duration::from_secs(1), clock);
        let tcp = agent_ebpf::PROTO_TCP;
        let udp = agent_ebpf::PROTO_UDP;
        for &id in &ids {
            for (proto, dst, port) in [
                (udp, "203.0.113.5", 53),
                (tcp, "2001:db8::1", 443),
                (tcp, "203.0.113.5", 53),
                (tcp, "198.51.100.9", 8080),
                (1, "198.51.100.9", 0),
            ] {
                let d = delta(&clock, id, proto, dst, port);
                let sample = crate::capture::FlowSample {
                    id: d.id,
                    count: 1,
                    first_seen_ns: 1,
                    last_seen_ns: 2,
                    emitted_ns: 2,
                    residual_notice: false,
                    established: 0,
                    failed: 0,
                    first_seen: d.first_seen,
                    last_seen: d.last_seen,
                };
                agg.observe(&sample, SampleSource::Ring);
            }
        }
        let deltas = agg.flush();
        let dns = DnsTracker::new(DnsCacheConfig::default(), metrics);
        let mut got = Vec::new();
        for group in group_flows(&crate::aggregate::cgroup_runs(&deltas), &mut attributor) {
            for d in &deltas[group.deltas.clone()] {
                let names = dns.names_for(&group.attribution, d.id.dst, at(0));
                if let Some(view) = flow_view("n1", &group.attribution, d, &names) {
                    got.push(view.to_record());
                }
            }
        }
        assert_eq!(got.len(), 16, "ICMP is skipped");
        let mut want = got.clone();
        want.sort_by(|x, y| {
            let key = |f: &leash_records::FlowRecord| {
                (
                    f.pod
                        .as_ref()
                        .map(|p| (p.namespace.clone(), p.name.clone(), p.uid.clone())),
                    f.cgroup.clone(),
                    f.dst,
                    f.dst_port,
                    f.protocol,
                )
            };
            key(x).cmp(&key(y))
        });
        assert_eq!(got, want);
        let order: Vec<_> = got
            .iter()
            .step_by(4)
            .map(|f| {
                f.pod
                    .as_ref()
                    .map_or(f.cgroup.as_str(), |p| p.name.as_str())
            })
            .collect();
        assert_eq!(
            order,
            [
                "/system.slice/a.service",
                "/system.slice/b.service",
                "a",
                "z"
            ]
        );
        let first: Vec<(IpAddr, u16, Protocol)> = got[..4]
            .iter()
            .map(|f| (f.dst, f.dst_port, f.protocol))
            .collect();
        assert_eq!(
            first,
            [
                ("198.51.100.9".parse().unwrap(), 8080, Protocol::Tcp),
                ("203.0.113.5".parse().unwrap(), 53, Protocol::Tcp),
                ("203.0.113.5".parse().unwrap(), 53, Protocol::Udp),
                ("2001:db8::1".parse().unwrap(), 443, Protocol::Tcp),
            ]
        );
    }
}
