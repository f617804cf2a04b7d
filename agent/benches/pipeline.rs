//! User-space cost per kernel record along the agent's real path (goal: ≤ 1 µs per record).
//!
//! Every figure is reported per record (criterion `Throughput::Elements`): the `thrpt` line
//! reads in ns/record. The measurement is the benchmark thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`), not wall time, because the bench machine is shared: time the
//! thread spends preempted by other work is not the agent's cost. (The `time` line is CPU time
//! per iteration of 100k records.)
//!
//! The workload is one node with 50 pods in kubelet-shaped cgroups (a temporary directory tree:
//! cgroup ids are directory inodes, as on a real node) and 100,000 distinct flow keys (70 % TCP,
//! mixed IPv4/IPv6), 20 % of whose destinations were resolved through DNS by their pod.
//!
//! - `decode`: kernel key + value to a [`FlowSample`] (`FlowSample::from_kernel`, the public
//!   part of the ring decoder; the private `decode_flow` adds one 80-byte unaligned copy).
//! - `observe/new_keys`, `observe/refresh`: [`Aggregator::observe`] of 100k first pushes, and
//!   of 100k refresh pushes into an aggregator that already tracks every key.
//! - `flush`: [`Aggregator::flush`] of 100k pending deltas.
//! - `attribute_cached`, `dns_names_for`: [`Attributor::attribute`] (cache hit) and
//!   [`DnsTracker::names_for`] per flow.
//! - `record_json`: the pipeline's output path for 100k deltas: group per cgroup and attribute
//!   once per group (`group_flows` alone), look up DNS names, serialise straight from the
//!   borrowed `FlowView` (`json_line` alone; `json_line_serde` is the contract's serde path for
//!   comparison, with the owned record cloned as the agent used to build it).
//! - `interval/steady_100k` and `interval/first_100k`: one whole flush interval of the pipeline
//!   loop (decode and observe every ring record, the settle scan, flush, attribute, DNS names,
//!   serialise into one buffer), per ring record. "steady": every key already known
//!   and refreshed once; "first": 100k new keys.
//! - `dns_observe`: one DNS ring payload (real wire bytes): parse with hickory, cache, build and
//!   serialise the `kind: dns` record.
//!
//! Not included: the ring read itself (a memory-mapped consumer position update) and the map
//! lookups of the settle step (syscalls); `agent_scale` measures the real agent with both.
//!
//! `cargo bench -p leash-agent --bench pipeline`

use std::{
    collections::HashMap,
    hint::black_box,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::MetadataExt as _,
    path::Path,
    str::FromStr as _,
    time::Duration,
};

use agent_ebpf::{FAMILY_V4, FAMILY_V6, FlowKey, FlowValue, PROTO_TCP, PROTO_UDP};
use chrono::{DateTime, Utc};
use criterion::{
    BatchSize, Criterion, Throughput, criterion_group, criterion_main,
    measurement::{Measurement, ValueFormatter},
};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RData, Record as DnsRr, RecordType, rdata::A, rdata::AAAA, rdata::CNAME},
};
use leash_agent::{
    aggregate::{Aggregator, FlowDelta, SampleSource, cgroup_runs},
    attribution::{Attributor, CgroupPaths, PodInfo, PodStore},
    capture::{FlowSample, KernelClock},
    dns::{DnsCacheConfig, DnsTracker},
    metrics::Metrics,
    pipeline::{FlowGroup, flow_view, group_flows},
    sink::FlowView,
};
use leash_lab::k8s;
use leash_records::{FlowRecord, Record};

/// Distinct flow keys in the workload.
const KEYS: usize = 100_000;
/// Pods on the node.
const PODS: usize = 50;
/// Every fifth destination address of a pod was resolved through DNS by that pod.
const RESOLVED_EVERY: usize = 5;
/// Kernel monotonic time of the workload's first event (ns).
const T0: u64 = 1_000_000_000_000;
/// Refresh interval of the simulated kernel programs.
const REFRESH: Duration = Duration::from_secs(1);
const NODE: &str = "bench-node";
/// Deltas taken per part of a flush (the pipeline's chunk size).
const FLUSH_PART: usize = 4096;

/// Criterion measurement: CPU time of the benchmark thread. criterion only ships wall time.
struct ThreadCpu;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpu {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &NsFormatter
    }
}

/// Shows CPU ns per iteration, and throughput as CPU ns per record.
struct NsFormatter;

impl ValueFormatter for NsFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match typical {
            t if t < 1e3 => (1.0, "ns"),
            t if t < 1e6 => (1e-3, "µs"),
            t if t < 1e9 => (1e-6, "ms"),
            _ => (1e-9, "s"),
        };
        for v in values {
            *v *= factor;
        }
        unit
    }

    fn scale_throughputs(
        &self,
        _typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let (n, unit) = match *throughput {
            Throughput::Elements(n) => (n, "ns/record"),
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) => (n, "ns/byte"),
            Throughput::Bits(n) => (n, "ns/bit"),
        };
        for v in values {
            *v /= n.max(1) as f64;
        }
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

struct PodFixture {
    cgroup_id: u64,
    uid: String,
}

/// One node's worth of state: cgroup tree, pod store, attributor, DNS cache, flow keys.
struct Workload {
    _dir: tempfile::TempDir,
    clock: KernelClock,
    pods: Vec<PodFixture>,
    attributor: Attributor,
    dns: DnsTracker,
    keys: Vec<FlowKey>,
    /// Wire-format DNS responses, one per resolved destination.
    dns_payloads: Vec<(u64, Vec<u8>)>,
}

fn pod_uid(i: usize) -> String {
    format!("{i:08x}-1b2c-4d3e-8f40-{:012x}", i * 7919)
}

fn container_id(i: usize) -> String {
    format!("{:064x}", (i as u128 + 1) * 0x9e37_79b9_7f4a_7c15)
}

/// Distinct destination addresses each pod talks to.
const IPS_PER_POD: usize = 100;

/// Destination of key `i` (pod `i % PODS`): one of its pod's [`IPS_PER_POD`] addresses (a
/// quarter IPv6 in 2001:db8:2::/64, the rest in 203.0.113.0/24) and a port.
fn destination(i: usize) -> (IpAddr, u16) {
    let pod = i % PODS;
    let j = i / PODS;
    let host = j % IPS_PER_POD;
    let port = 1024 + (j / IPS_PER_POD) as u16;
    if host % 4 == 3 {
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, pod as u16 + 1, host as u16 + 1);
        (IpAddr::V6(v6), port)
    } else {
        (IpAddr::V4(Ipv4Addr::new(203, 0, 113, host as u8 + 1)), port)
    }
}

fn flow_key(cgroup_id: u64, protocol: u8, dst: IpAddr, port: u16) -> FlowKey {
    let mut addr = [0u8; 16];
    let family = match dst {
        IpAddr::V4(v4) => {
            addr[..4].copy_from_slice(&v4.octets());
            FAMILY_V4
        }
        IpAddr::V6(v6) => {
            addr = v6.octets();
            FAMILY_V6
        }
    };
    FlowKey {
        cgroup_id,
        addr,
        port,
        protocol,
        family,
        pad: [0; 4],
    }
}

fn dns_name(s: &str) -> Name {
    Name::from_str(s).unwrap_or_else(|e| panic!("bench DNS name {s:?}: {e}"))
}

/// A real response: `svc-<i>.example.test` CNAME `edge-<i>.cdn.test` A/AAAA `ip`.
fn dns_response(i: usize, ip: IpAddr) -> Vec<u8> {
    let query = dns_name(&format!("svc-{i}.example.test."));
    let edge = dns_name(&format!("edge-{i}.cdn.test."));
    let qtype = if ip.is_ipv4() {
        RecordType::A
    } else {
        RecordType::AAAA
    };
    let mut msg = Message::new(i as u16, MessageType::Response, OpCode::Query);
    msg.metadata.response_code = ResponseCode::NoError;
    msg.metadata.recursion_desired = true;
    msg.metadata.recursion_available = true;
    msg.add_query(Query::query(query.clone(), qtype));
    msg.add_answer(DnsRr::from_rdata(
        query,
        300,
        RData::CNAME(CNAME(edge.clone())),
    ));
    let data = match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    };
    msg.add_answer(DnsRr::from_rdata(edge, 60, data));
    msg.to_vec()
        .unwrap_or_else(|e| panic!("encoding bench DNS message: {e}"))
}

impl Workload {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir for the cgroup tree");
        let metrics = Metrics::new();
        let store = PodStore::new(metrics.clone());
        let mut pods = Vec::new();
        for i in 0..PODS {
            let uid = pod_uid(i);
            let qos = ["burstable", "besteffort"][i % 2];
            let path = dir.path().join(format!(
                "kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{}.slice/cri-containerd-{}.scope",
                uid.replace('-', "_"),
                container_id(i)
            ));
            std::fs::create_dir_all(&path).expect("create pod cgroup directory");
            let pod = k8s::pod("shop", &format!("app-{i}-7d4-x2"))
                .uid(&uid)
                .node(NODE)
                .labels(&[("app", "bench")])
                .build();
            store.upsert(PodInfo::from_pod(&pod).expect("fixture pod has a uid"));
            pods.push(PodFixture {
                cgroup_id: inode(&path),
                uid,
            });
        }
        let mut attributor = Attributor::new(
            CgroupPaths::new(dir.path(), metrics.clone()),
            store,
            metrics.clone(),
        );
        for pod in &pods {
            let a = attributor.attribute(pod.cgroup_id);
            assert_eq!(
                a.pod_uid.as_deref(),
                Some(pod.uid.as_str()),
                "bench cgroup tree must attribute to its pod"
            );
            assert!(a.pod.is_some(), "bench pod must be known to the store");
        }

        let clock = KernelClock::from_offset_ns(1_700_000_000_000_000_000);
        let mut dns = DnsTracker::new(DnsCacheConfig::default(), metrics);
        let now = DateTime::<Utc>::from(clock.to_system_time(T0));
        let mut keys = Vec::with_capacity(KEYS);
        let mut dns_payloads = Vec::new();
        for i in 0..KEYS {
            let pod = &pods[i % PODS];
            let (dst, port) = destination(i);
            let protocol = if i % 10 < 7 { PROTO_TCP } else { PROTO_UDP };
            keys.push(flow_key(pod.cgroup_id, protocol, dst, port));
            // Each pod resolved every fifth of its addresses once (first key to that address).
            let host = (i / PODS) % IPS_PER_POD;
            if i / PODS < IPS_PER_POD && host.is_multiple_of(RESOLVED_EVERY) {
                let payload = dns_response(i, dst);
                let attribution = attributor.attribute(pod.cgroup_id);
                dns.observe(
                    &payload,
                    "198.51.100.138".parse().expect("ip"),
                    now,
                    NODE,
                    &attribution,
                )
                .expect("bench DNS response parses");
                dns_payloads.push((pod.cgroup_id, payload));
            }
        }
        Self {
            _dir: dir,
            clock,
            pods,
            attributor,
            dns,
            keys,
            dns_payloads,
        }
    }

    /// The kernel value of key `i` after `round` refresh pushes (one event per round).
    fn value(&self, i: usize, round: u64) -> FlowValue {
        let first = T0 + i as u64;
        let last = first + round * REFRESH.as_nanos() as u64;
        FlowValue {
            count: round + 1,
            first_seen_ns: first,
            last_seen_ns: last,
            last_emit_ns: last,
            established: if self.keys[i].protocol == PROTO_TCP {
                round + 1
            } else {
                0
            },
            failed: 0,
            notice_emit_ns: 0,
        }
    }

    /// The ring records (key, value) of one refresh round over every key.
    fn ring_round(&self, round: u64) -> Vec<(FlowKey, FlowValue)> {
        (0..self.keys.len())
            .map(|i| (self.keys[i], self.value(i, round)))
            .collect()
    }

    fn samples(&self, round: u64) -> Vec<FlowSample> {
        self.ring_round(round)
            .iter()
            .map(|(k, v)| FlowSample::from_kernel(k, v, &self.clock).expect("valid key"))
            .collect()
    }

    fn aggregator(&self) -> Aggregator {
        Aggregator::new(REFRESH, self.clock)
    }
}

fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat cgroup dir").ino()
}

/// The pipeline's flow record as an owned record (the agent's own functions).
fn flow_record(delta: &FlowDelta, attributor: &mut Attributor, dns: &DnsTracker) -> FlowRecord {
    let attribution = attributor.attribute(delta.id.cgroup_id);
    let names = dns.names_for(
        &attribution,
        delta.id.dst,
        DateTime::<Utc>::from(delta.last_seen),
    );
    flow_view(NODE, &attribution, delta, &names)
        .expect("the bench only makes TCP and UDP flows")
        .to_record()
}

/// Writes the flush's flows as the pipeline does: grouped per cgroup, attributed once per
/// group, labelled, serialised straight from the borrowed view.
fn write_flows(
    deltas: &[FlowDelta],
    attributor: &mut Attributor,
    dns: &DnsTracker,
    text: &mut Vec<u8>,
) {
    for group in group_flows(&cgroup_runs(deltas), attributor) {
        for delta in &deltas[group.deltas.clone()] {
            write_line(&group, delta, dns, text);
        }
    }
}

/// One delta of `group` as the pipeline writes it: labelled, serialised from the view.
fn write_line(group: &FlowGroup, delta: &FlowDelta, dns: &DnsTracker, text: &mut Vec<u8>) {
    let at = DateTime::<Utc>::from(delta.last_seen);
    let names = dns.names_for(&group.attribution, delta.id.dst, at);
    if let Some(view) = flow_view(NODE, &group.attribution, delta, &names) {
        view.write_json(text);
        text.push(b'\n');
    }
}

/// One flush interval of the pipeline loop over `ring` (see the module docs); returns the
/// serialised batch size so nothing is optimised away.
fn interval(
    agg: &mut Aggregator,
    ring: &[(FlowKey, FlowValue)],
    clock: &KernelClock,
    attributor: &mut Attributor,
    dns: &DnsTracker,
    now_ns: u64,
) -> usize {
    // As the pipeline folds ring records: in batches of 64.
    let mut batch = Vec::with_capacity(64);
    for part in ring.chunks(64) {
        batch.clear();
        batch.extend(
            part.iter()
                .filter_map(|(key, value)| FlowSample::from_kernel(key, value, clock)),
        );
        agg.observe_all(&batch, SampleSource::Ring);
    }
    black_box(agg.due_for_settle(now_ns));
    // As the pipeline's flush: per-cgroup runs, then each group's deltas in parts.
    let mut runs = Vec::new();
    agg.begin_flush(&mut runs);
    let mut text = Vec::with_capacity(ring.len() * 256);
    let mut deltas = Vec::with_capacity(FLUSH_PART);
    for group in group_flows(&runs, attributor) {
        for at in group.deltas.clone().step_by(FLUSH_PART) {
            deltas.clear();
            agg.take_deltas(at..group.deltas.end.min(at + FLUSH_PART), &mut deltas);
            for delta in &deltas {
                write_line(&group, delta, dns, &mut text);
            }
        }
    }
    agg.end_flush();
    text.len()
}

fn bench(c: &mut Criterion<ThreadCpu>) {
    let mut w = Workload::new();
    let ring0 = w.ring_round(0);
    let ring1 = w.ring_round(1);
    let samples0 = w.samples(0);
    let samples1 = w.samples(1);
    let mut seen = w.aggregator();
    for s in &samples0 {
        seen.observe(s, SampleSource::Ring);
    }
    let mut pending = seen.clone();
    assert_eq!(pending.flush().len(), KEYS);
    let seen_flushed = pending.clone();
    let mut with_refresh = seen_flushed.clone();
    for s in &samples1 {
        with_refresh.observe(s, SampleSource::Ring);
    }
    let deltas = with_refresh.clone().flush();
    assert_eq!(deltas.len(), KEYS);
    let labelled = deltas
        .iter()
        .filter(|d| !flow_record(d, &mut w.attributor, &w.dns).names.is_empty())
        .count();
    assert_eq!(
        labelled,
        KEYS / RESOLVED_EVERY,
        "a fifth of the flows should carry DNS names"
    );
    let elements = Throughput::Elements(KEYS as u64);
    let empty = w.aggregator();

    let mut g = c.benchmark_group("per_record");
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    g.throughput(elements.clone());

    g.bench_function("decode", |b| {
        b.iter(|| {
            for (k, v) in &ring1 {
                black_box(FlowSample::from_kernel(k, v, &w.clock));
            }
        })
    });
    g.bench_function("observe/new_keys", |b| {
        b.iter_batched(
            || empty.clone(),
            |mut agg| {
                for s in &samples0 {
                    agg.observe(s, SampleSource::Ring);
                }
                agg
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("observe/refresh", |b| {
        b.iter_batched(
            || seen_flushed.clone(),
            |mut agg| {
                for s in &samples1 {
                    agg.observe(s, SampleSource::Ring);
                }
                agg
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("flush", |b| {
        b.iter_batched(
            || with_refresh.clone(),
            |mut agg| agg.flush(),
            BatchSize::LargeInput,
        )
    });
    g.bench_function("attribute_cached", |b| {
        b.iter(|| {
            for d in &deltas {
                black_box(w.attributor.attribute(d.id.cgroup_id));
            }
        })
    });
    let attributions: HashMap<u64, _> = w
        .pods
        .iter()
        .map(|p| (p.cgroup_id, w.attributor.attribute(p.cgroup_id)))
        .collect();
    g.bench_function("dns_names_for", |b| {
        b.iter(|| {
            for d in &deltas {
                let a = &attributions[&d.id.cgroup_id];
                let at = DateTime::<Utc>::from(d.last_seen);
                black_box(w.dns.names_for(a, d.id.dst, at));
            }
        })
    });
    g.bench_function("record_json", |b| {
        b.iter(|| {
            let mut text = Vec::with_capacity(KEYS * 256);
            write_flows(&deltas, &mut w.attributor, &w.dns, &mut text);
            text.len()
        })
    });
    let records: Vec<FlowRecord> = deltas
        .iter()
        .map(|d| flow_record(d, &mut w.attributor, &w.dns))
        .collect();
    g.bench_function("group_flows", |b| {
        b.iter(|| black_box(group_flows(&cgroup_runs(&deltas), &mut w.attributor)))
    });
    g.bench_function("json_line", |b| {
        b.iter(|| {
            let mut text = Vec::with_capacity(KEYS * 256);
            for r in &records {
                FlowView::of(r).write_json(&mut text);
                text.push(b'\n');
            }
            text.len()
        })
    });
    g.bench_function("json_line_serde", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for r in &records {
                bytes += Record::Flow(r.clone()).to_json_line().len();
            }
            bytes
        })
    });
    let now_ns = T0 + 3 * REFRESH.as_nanos() as u64;
    g.bench_function("interval/steady_100k", |b| {
        b.iter_batched(
            || seen_flushed.clone(),
            |mut agg| {
                interval(
                    &mut agg,
                    &ring1,
                    &w.clock,
                    &mut w.attributor,
                    &w.dns,
                    now_ns,
                )
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("interval/first_100k", |b| {
        b.iter_batched(
            || empty.clone(),
            |mut agg| {
                interval(
                    &mut agg,
                    &ring0,
                    &w.clock,
                    &mut w.attributor,
                    &w.dns,
                    now_ns,
                )
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("per_dns_record");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(w.dns_payloads.len() as u64));
    let server: IpAddr = "198.51.100.138".parse().expect("ip");
    let time = DateTime::<Utc>::from(w.clock.to_system_time(T0 + 1));
    g.bench_function("dns_observe", |b| {
        b.iter(|| {
            let mut bytes = 0;
            for (cgroup_id, payload) in &w.dns_payloads {
                let a = w.attributor.attribute(*cgroup_id);
                if let Some(r) = w.dns.observe(payload, server, time, NODE, &a) {
                    bytes += Record::Dns(r).to_json_line().len();
                }
            }
            bytes
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench
}
criterion_main!(benches);
