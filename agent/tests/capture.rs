//! Privileged tests of the kernel programs and the capture layer with real kernel events.
//!
//! Each test makes its own cgroup under the cgroup2 mount, attaches the programs to it, and
//! runs a child process inside it (this test binary re-executed on the ignored
//! `capture_child` entry point) that talks to listeners of this process on loopback only.
//!
//! Without root these tests skip with a message, unless `LEASH_REQUIRE_PRIVILEGED=1`.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
    str::FromStr as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RData, Record, RecordType, rdata::A},
};
use leash_agent::{
    aggregate::{Aggregator, FlowDelta, SampleSource},
    capture::{
        Capture, CaptureConfig, CaptureEvent, DnsPacket, DnsTransport, FlowId, FlowSample,
        LOOKUP_MANY_PER_KEY_MAX, MapRead,
    },
};

const CHILD_ENV: &str = "LEASH_CAPTURE_CHILD";

/// Returns the cgroup2 mount if the test can run; otherwise skips (or fails when required).
fn privileged() -> Option<PathBuf> {
    let required = std::env::var("LEASH_REQUIRE_PRIVILEGED").is_ok_and(|v| v == "1");
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mount = leash_agent::attribution::find_cgroup2_mount().ok();
    let reason = match (root, &mount) {
        (false, _) => "not root",
        (true, None) => "no cgroup2 mount found",
        (true, Some(_)) => return mount,
    };
    assert!(
        !required,
        "LEASH_REQUIRE_PRIVILEGED=1 but cannot run: {reason}"
    );
    eprintln!("SKIP: privileged capture test needs root and cgroup2 ({reason})");
    None
}

/// A temporary cgroup, removed on drop.
struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    fn new(mount: &Path, name: &str) -> Self {
        let path = mount.join(format!("leash-capture-{name}-{}", std::process::id()));
        // A leftover from a crashed run is reused.
        if !path.exists() {
            std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        }
        Self { path }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Children have exited by now; retry briefly while the kernel reaps them.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove {}", self.path.display());
    }
}

/// Runs this test binary's `capture_child` entry inside `cgroup` with the given actions.
fn run_child(cgroup: &Path, actions: &[String]) {
    let exe = std::env::current_exe().expect("current_exe");
    let procs = cgroup.join("cgroup.procs");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--ignored",
        "--exact",
        "capture_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, actions.join("\n"))
    .env_remove("LEASH_REQUIRE_PRIVILEGED");
    // SAFETY: the closure only performs async-signal-safe syscalls (open/write/close on a
    // pre-built C path) before exec.
    let procs_c = std::ffi::CString::new(procs.to_str().expect("utf-8 path")).expect("no NUL");
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs_c.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process itself.
            let rc = libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
            if rc != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("spawning the child");
    assert!(
        out.status.success(),
        "child failed: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Child entry point: performs the actions in `LEASH_CAPTURE_CHILD`, one per line:
/// `tcp ADDR N` (N connects, errors ignored), `udpc ADDR N` (connected UDP sends),
/// `udps ADDR N` (unconnected sends), `udpports ADDR N` (one send to each of N ports from
/// ADDR's port on), `dns ADDR` (UDP query, waits for the answer),
/// `dnstcp ADDR` (TCP query, waits for the answer), `unshare_net` (the following actions run in
/// a new network namespace with loopback down).
#[test]
#[ignore = "child-process entry point, run by the other tests in this file"]
fn capture_child() {
    let spec = std::env::var(CHILD_ENV).expect("capture_child runs only as a child");
    for line in spec.lines() {
        if line == "unshare_net" {
            // This thread moves to a fresh, private network namespace whose loopback is down:
            // connects there fail locally without a single packet being sent.
            // SAFETY: plain syscall; affects only the calling thread.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            );
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        let addr: SocketAddr = parts[1].parse().expect("address");
        let n: usize = parts.get(2).map_or(1, |n| n.parse().expect("count"));
        let any = |a: &SocketAddr| -> SocketAddr {
            if a.is_ipv4() {
                "0.0.0.0:0".parse().unwrap()
            } else {
                "[::]:0".parse().unwrap()
            }
        };
        match parts[0] {
            "tcp" => {
                for _ in 0..n {
                    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
                }
            }
            "udpc" => {
                for _ in 0..n {
                    let s = UdpSocket::bind(any(&addr)).expect("bind");
                    s.connect(addr).expect("connect");
                    s.send(b"x").expect("send");
                }
            }
            "udps" => {
                let s = UdpSocket::bind(any(&addr)).expect("bind");
                for _ in 0..n {
                    s.send_to(b"x", addr).expect("send_to");
                }
            }
            "udpports" => {
                // N unconnected sends to N consecutive ports: N distinct flow keys.
                let s = UdpSocket::bind(any(&addr)).expect("bind");
                for i in 0..n {
                    let port = addr
                        .port()
                        .wrapping_add(u16::try_from(i).expect("port offset"));
                    let _ = s.send_to(b"x", SocketAddr::new(addr.ip(), port));
                }
            }
            "dns" => {
                let s = UdpSocket::bind(any(&addr)).expect("bind");
                s.set_read_timeout(Some(Duration::from_secs(3)))
                    .expect("timeout");
                s.send_to(&query_bytes(), addr).expect("send_to");
                let mut buf = [0u8; 65535];
                let (len, _) = s.recv_from(&mut buf).expect("DNS answer");
                assert!(len > 12);
            }
            "dnstcp" => {
                let mut s =
                    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(3)))
                    .expect("timeout");
                let q = query_bytes();
                let mut framed = (q.len() as u16).to_be_bytes().to_vec();
                framed.extend_from_slice(&q);
                s.write_all(&framed).expect("write");
                let mut len = [0u8; 2];
                s.read_exact(&mut len).expect("length");
                let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
                s.read_exact(&mut body).expect("body");
            }
            other => panic!("unknown child action {other}"),
        }
    }
}

/// Child entry point for privilege tests: `Capture::start` on the cgroup in
/// `LEASH_CAPTURE_START`, printing `START OK` or `START ERROR: <message>`.
#[test]
#[ignore = "child-process entry point, run by the privilege tests in this file"]
fn capture_start_child() {
    let cgroup = std::env::var("LEASH_CAPTURE_START").expect("runs only as a child");
    let rt = runtime();
    let _guard = rt.enter();
    match Capture::start(&CaptureConfig::new(cgroup)) {
        Ok(_) => println!("START OK"),
        Err(e) => println!("START ERROR: {e}"),
    }
}

/// Runs `capture_start_child` under `setpriv` with exactly `caps` (e.g. "+bpf,+perfmon").
fn start_with_caps(cgroup: &Path, caps: &str) -> String {
    let exe = std::env::current_exe().expect("current_exe");
    let out = Command::new("setpriv")
        .arg(format!("--inh-caps=-all{caps}"))
        .arg(format!("--ambient-caps=-all{caps}"))
        .arg(format!("--bounding-set=-all{caps}"))
        .arg("--")
        .arg(exe)
        .args(["--ignored", "--exact", "capture_start_child", "--nocapture"])
        .env("LEASH_CAPTURE_START", cgroup)
        .output()
        .expect("setpriv (util-linux) runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        stdout.contains("START "),
        "child did not report: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn runs_with_exactly_bpf_perfmon_net_admin_and_names_missing_capabilities() {
    let Some(mount) = privileged() else { return };
    let cg = TestCgroup::new(&mount, "caps");
    let ok = start_with_caps(&cg.path, ",+bpf,+perfmon,+net_admin");
    assert!(
        ok.contains("START OK"),
        "with CAP_BPF+CAP_PERFMON+CAP_NET_ADMIN: {ok}"
    );
    let denied = start_with_caps(&cg.path, "");
    assert!(
        denied.contains("START ERROR"),
        "without capabilities: {denied}"
    );
    for cap in ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"] {
        assert!(denied.contains(cap), "error names {cap}: {denied}");
    }
}

fn query_bytes() -> Vec<u8> {
    let mut q = Message::new(0x4242, MessageType::Query, OpCode::Query);
    q.add_query(Query::query(
        Name::from_str("api.lab.test.").expect("name"),
        RecordType::A,
    ));
    q.to_vec().expect("encode query")
}

/// A real DNS answer with `n` A records for api.lab.test.
fn answer_bytes(n: u8) -> Vec<u8> {
    let mut m = Message::new(0x4242, MessageType::Response, OpCode::Query);
    let name = Name::from_str("api.lab.test.").expect("name");
    m.add_query(Query::query(name.clone(), RecordType::A));
    for i in 0..n {
        let ip = std::net::Ipv4Addr::new(203, 0, 113, i);
        m.add_answer(Record::from_rdata(name.clone(), 60, RData::A(A(ip))));
    }
    m.to_vec().expect("encode answer")
}

/// Loopback servers owned by the test process (outside the observed cgroup).
struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Servers {
    fn new() -> Self {
        Self {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        }
    }

    /// A TCP listener that accepts and closes connections; answers DNS-over-TCP if `dns`.
    fn tcp(&mut self, addr: &str, dns: Option<Vec<u8>>) -> SocketAddr {
        self.tcp_split(addr, dns, None)
    }

    /// Like [`Servers::tcp`]; with `split = Some(n)` the framed answer is written as two
    /// segments (first `n` bytes, a pause, the rest), so the client receives a continuation
    /// segment.
    fn tcp_split(&mut self, addr: &str, dns: Option<Vec<u8>>, split: Option<usize>) -> SocketAddr {
        let l = TcpListener::bind(addr).expect("bind tcp");
        l.set_nonblocking(true).expect("nonblocking");
        let local = l.local_addr().expect("addr");
        let stop = self.stop.clone();
        self.threads.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        if let Some(answer) = &dns {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                            let mut len = [0u8; 2];
                            if s.read_exact(&mut len).is_ok() {
                                let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                                let _ = s.read_exact(&mut q);
                                let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
                                framed.extend_from_slice(answer);
                                match split {
                                    Some(n) => {
                                        let _ = s.set_nodelay(true);
                                        let _ = s.write_all(&framed[..n]);
                                        thread::sleep(Duration::from_millis(50));
                                        let _ = s.write_all(&framed[n..]);
                                    }
                                    None => {
                                        let _ = s.write_all(&framed);
                                    }
                                }
                                // Let the client read before closing.
                                let _ = s.read(&mut len);
                            }
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(1)),
                }
            }
        }));
        local
    }

    /// A UDP socket that answers every datagram with `answer` (or swallows it).
    fn udp(&mut self, addr: &str, answer: Option<Vec<u8>>) -> SocketAddr {
        let s = UdpSocket::bind(addr).expect("bind udp");
        s.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let local = s.local_addr().expect("addr");
        let stop = self.stop.clone();
        self.threads.push(thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, from)) = s.recv_from(&mut buf)
                    && let Some(a) = &answer
                {
                    let _ = s.send_to(a, from);
                }
            }
        }));
        local
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a capture run produced.
#[derive(Default)]
struct Collected {
    /// Summed deltas per flow (count, established, failed).
    totals: BTreeMap<FlowId, (u64, u64, u64)>,
    /// Number of ring pushes per flow (residual notices not included).
    records: BTreeMap<FlowId, usize>,
    /// Number of residual notices per flow.
    notices: BTreeMap<FlowId, usize>,
    /// Keys read back by the settle step (before the final sweep).
    settle_reads: Vec<FlowId>,
    deltas: Vec<FlowDelta>,
    /// Number of deltas obtained before the final sweep (ring records + settle lookups).
    deltas_before_sweep: usize,
    dns: Vec<DnsPacket>,
}

impl Collected {
    /// Summed deltas per flow over `deltas[..n]`.
    fn totals_of(&self, n: usize) -> BTreeMap<FlowId, (u64, u64, u64)> {
        let mut totals: BTreeMap<FlowId, (u64, u64, u64)> = BTreeMap::new();
        for d in &self.deltas[..n] {
            let t = totals.entry(d.id).or_default();
            t.0 += d.count;
            t.1 += d.established;
            t.2 += d.failed;
        }
        totals
    }
}

/// Reads events until `quiet` passes without one, then detaches, drains, and sweeps.
async fn collect(mut capture: Capture, config: &CaptureConfig, quiet: Duration) -> Collected {
    let mut agg = Aggregator::new(config.refresh, capture.clock());
    let mut out = Collected::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let handle = |event: CaptureEvent, agg: &mut Aggregator, out: &mut Collected| match event {
        CaptureEvent::Flow(sample) => {
            let per_flow = if sample.residual_notice {
                &mut out.notices
            } else {
                &mut out.records
            };
            *per_flow.entry(sample.id).or_default() += 1;
            agg.observe(&sample, SampleSource::Ring);
        }
        CaptureEvent::Dns(packet) => out.dns.push(packet),
        CaptureEvent::Malformed(e) => panic!("malformed ring record: {e}"),
    };
    while Instant::now() < deadline {
        match tokio::time::timeout(quiet, capture.next_event()).await {
            Ok(event) => handle(event.expect("next_event"), &mut agg, &mut out),
            Err(_) => break,
        }
        out.deltas.extend(agg.flush());
    }
    // Settle the keys whose last record is older than the refresh interval.
    tokio::time::sleep(config.refresh).await;
    out.settle_reads = agg.due_for_settle(leash_agent::capture::monotonic_now_ns());
    for &id in &out.settle_reads {
        match capture.lookup(&id).expect("lookup") {
            Some(sample) => agg.observe(&sample, SampleSource::Lookup),
            None => agg.mark_settled(&id),
        }
    }
    out.deltas.extend(agg.flush());
    capture.detach().expect("detach");
    out.deltas_before_sweep = out.deltas.len();
    while let Some(event) = capture.try_next_event().expect("drain") {
        handle(event, &mut agg, &mut out);
    }
    for sample in capture.sweep().expect("sweep") {
        agg.observe(&sample, SampleSource::Lookup);
    }
    out.deltas.extend(agg.flush());
    let counters = capture.counters().expect("counters");
    assert_eq!(
        counters.flow_drops(),
        0,
        "no flow drops expected: {counters:?}"
    );
    assert_eq!(
        counters.dns_drops(),
        0,
        "no DNS drops expected: {counters:?}"
    );
    for d in &out.deltas {
        assert!(
            d.first_seen <= d.last_seen,
            "delta bounds out of order: {d:?}"
        );
    }
    out.totals = out.totals_of(out.deltas.len());
    out
}

fn flow(cgroup_id: u64, protocol: u8, dst: &SocketAddr) -> FlowId {
    FlowId {
        cgroup_id,
        protocol,
        dst: dst.ip(),
        dst_port: dst.port(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn flows_of_every_kind_are_recorded_with_tcp_outcome() {
    let Some(mount) = privileged() else { return };
    let cg = TestCgroup::new(&mount, "kinds");
    let mut servers = Servers::new();
    let tcp4 = servers.tcp("127.0.0.1:0", None);
    let tcp6 = servers.tcp("[::1]:0", None);
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let udp4 = servers.udp("127.0.0.1:0", None);
    let udp6 = servers.udp("[::1]:0", None);
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", tcp4.port())
        .parse()
        .expect("addr");

    runtime().block_on(async {
        let config = CaptureConfig {
            refresh: Duration::from_millis(200),
            ..CaptureConfig::new(&cg.path)
        };
        let started = Instant::now();
        let capture = Capture::start(&config).expect("Capture::start");
        eprintln!("load + attach took {:?}", started.elapsed());
        let id = capture.cgroup_id();
        run_child(
            &cg.path,
            &[
                format!("tcp {tcp4} 3"),
                format!("tcp {tcp6} 2"),
                format!("tcp {closed} 1"),
                format!("tcp {mapped} 1"),
                format!("udpc {udp4} 2"),
                format!("udps {udp4} 5"),
                format!("udpc {udp6} 1"),
                format!("udps {udp6} 4"),
                // Last: a connect that never gets an answer (the socket is closed while
                // pending), counted as failed by the release hook.
                "unshare_net".to_owned(),
                "tcp 127.0.0.1:9 1".to_owned(),
            ],
        );
        let got = collect(capture, &config, Duration::from_millis(500)).await;
        let expect = [
            // 3 direct + 1 through the IPv4-mapped address, all reported as IPv4.
            (flow(id, 6, &tcp4), (4, 4, 0)),
            (flow(id, 6, &tcp6), (2, 2, 0)),
            (flow(id, 6, &closed), (1, 0, 1)),
            // connected (2) and unconnected (5) UDP to the same destination.
            (flow(id, 17, &udp4), (7, 0, 0)),
            (flow(id, 17, &udp6), (5, 0, 0)),
            (
                flow(id, 6, &"127.0.0.1:9".parse().expect("addr")),
                (1, 0, 1),
            ),
        ];
        for (key, want) in expect {
            assert_eq!(
                got.totals.get(&key),
                Some(&want),
                "flow {key:?}; all: {:#?}",
                got.totals
            );
        }
        // Ring records plus one settle lookup per quiet key already gave the exact counts;
        // the final sweep found nothing left.
        assert_eq!(
            got.totals_of(got.deltas_before_sweep),
            got.totals,
            "settle missed counts"
        );
        assert!(
            got.totals.keys().all(|k| k.cgroup_id == id
                && !matches!(k.dst, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())),
            "unexpected flows: {:#?}",
            got.totals
        );
    });
}

#[test]
fn ten_thousand_connects_are_counted_exactly_in_few_records() {
    let Some(mount) = privileged() else { return };
    let cg = TestCgroup::new(&mount, "10k");
    let mut servers = Servers::new();
    let tcp4 = servers.tcp("127.0.0.1:0", None);
    runtime().block_on(async {
        let config = CaptureConfig::new(&cg.path);
        let capture = Capture::start(&config).expect("Capture::start");
        let id = flow(capture.cgroup_id(), 6, &tcp4);
        let started = Instant::now();
        run_child(&cg.path, &[format!("tcp {tcp4} 10000")]);
        let elapsed = started.elapsed();
        let got = collect(capture, &config, Duration::from_millis(1500)).await;
        let (count, established, failed) = got.totals.get(&id).copied().unwrap_or_default();
        assert_eq!(count, 10_000, "sum of deltas");
        assert_eq!(established + failed, 10_000, "every connect has an outcome");
        let records = got.records.get(&id).copied().unwrap_or(0);
        eprintln!(
            "10000 connects in {elapsed:?} -> {records} ring records, {} deltas",
            got.deltas.len()
        );
        // The kernel pushes a key at most once per refresh interval (plus its creation), so the
        // record count follows the duration, not the connect rate; one extra for the outcome
        // of the last connects arriving after the final push.
        let bound = elapsed.as_secs_f64() / config.refresh.as_secs_f64() + 2.0;
        assert!(
            records >= 1 && (records as f64) <= bound,
            "{records} ring records for 10000 connects in {elapsed:?} (bound {bound:.0})"
        );
        assert!(
            records <= 100,
            "{records} records is not a handful for 10000 connects"
        );
        // At most one residual notice per push window.
        let notices = got.notices.get(&id).copied().unwrap_or(0);
        assert!(notices <= records, "{notices} notices for {records} pushes");
    });
}

#[test]
fn keys_without_residual_events_are_never_read_back() {
    let Some(mount) = privileged() else { return };
    let cg = TestCgroup::new(&mount, "residual");
    let mut servers = Servers::new();
    // IPv6, so that its (ephemeral) port cannot be one of the IPv4 keys below.
    let udp6 = servers.udp("[::1]:0", None);
    runtime().block_on(async {
        let config = CaptureConfig::new(&cg.path);
        let capture = Capture::start(&config).expect("Capture::start");
        let id = capture.cgroup_id();
        // 2,000 keys with one event each (closed loopback ports), then one key with 5 events
        // well within one refresh interval.
        let keys: u16 = 2_000;
        let base: u16 = 40_000;
        run_child(
            &cg.path,
            &[
                format!("udpports 127.0.0.1:{base} {keys}"),
                format!("udps {udp6} 5"),
            ],
        );
        let got = collect(capture, &config, Duration::from_millis(500)).await;
        let busy = flow(id, 17, &udp6);
        for port in base..base + keys {
            let key = flow(id, 17, &format!("127.0.0.1:{port}").parse().expect("addr"));
            assert_eq!(got.totals.get(&key), Some(&(1, 0, 0)), "port {port}");
            assert_eq!(got.notices.get(&key), None, "port {port} had no residue");
        }
        assert_eq!(got.totals.get(&busy), Some(&(5, 0, 0)));
        assert_eq!(got.records.get(&busy), Some(&1), "one push: the first send");
        assert_eq!(
            got.notices.get(&busy),
            Some(&1),
            "one notice per push window"
        );
        assert_eq!(got.settle_reads, vec![busy], "only the noticed key is read");
        // The settle read alone completed the counts; the final sweep added nothing.
        assert_eq!(
            got.totals_of(got.deltas_before_sweep),
            got.totals,
            "settle missed counts"
        );
    });
}

#[test]
fn dns_answers_are_captured_intact_over_udp_and_tcp() {
    let Some(mount) = privileged() else { return };
    let cg = TestCgroup::new(&mount, "dns");
    let small = answer_bytes(2);
    // > 1232 bytes: proves the copy is not limited to classic 512-byte DNS.
    let large = answer_bytes(120);
    assert!(large.len() > 1232, "large answer is {} bytes", large.len());
    let mut servers = Servers::new();
    let udp = servers.udp("127.0.0.1:0", Some(small.clone()));
    let udp_large = servers.udp("[::1]:0", Some(large.clone()));
    let tcp = servers.tcp("127.0.0.1:0", Some(small.clone()));
    // The answer arrives in two segments: only the first (message start) is captured.
    let tcp_split = servers.tcp_split("[::1]:0", Some(large.clone()), Some(2 + 100));
    // Not a configured DNS port: must not be captured.
    let other = servers.udp("127.0.0.1:0", Some(small.clone()));
    runtime().block_on(async {
        let config = CaptureConfig {
            dns_ports: vec![
                53,
                udp.port(),
                udp_large.port(),
                tcp.port(),
                tcp_split.port(),
            ],
            ..CaptureConfig::new(&cg.path)
        };
        let capture = Capture::start(&config).expect("Capture::start");
        let id = capture.cgroup_id();
        run_child(
            &cg.path,
            &[
                format!("dns {udp}"),
                format!("dns {udp_large}"),
                format!("dnstcp {tcp}"),
                format!("dnstcp {tcp_split}"),
                format!("dns {other}"),
            ],
        );
        let got = collect(capture, &config, Duration::from_millis(500)).await;
        let find = |server: &SocketAddr, transport| {
            let found: Vec<&DnsPacket> = got
                .dns
                .iter()
                .filter(|p| {
                    p.server == server.ip()
                        && p.server_port == server.port()
                        && p.transport == transport
                })
                .collect();
            assert_eq!(found.len(), 1, "one packet from {server}: {:#?}", got.dns);
            found[0].clone()
        };
        for (server, transport, bytes) in [
            (udp, DnsTransport::Udp, &small),
            (udp_large, DnsTransport::Udp, &large),
            (tcp, DnsTransport::Tcp, &small),
        ] {
            let p = find(&server, transport);
            assert_eq!(p.cgroup_id, id);
            assert!(!p.truncated);
            assert_eq!(&p.payload, bytes, "payload from {server} intact");
            let m = Message::from_vec(&p.payload).expect("hickory parses the captured answer");
            assert_eq!(m.answers.len(), if bytes.len() > 1232 { 120 } else { 2 });
        }
        let p = find(&tcp_split, DnsTransport::Tcp);
        assert!(p.truncated, "first of two segments is a truncated message");
        assert_eq!(
            p.payload,
            large[..100],
            "first segment's payload, prefix stripped"
        );
        assert!(
            got.dns.iter().all(|p| p.server_port != other.port()),
            "unconfigured port captured"
        );
    });
}

#[test]
fn missing_cgroup_directory_is_a_clear_error() {
    let Some(mount) = privileged() else { return };
    runtime().block_on(async {
        let path = mount.join("leash-capture-does-not-exist");
        let err = Capture::start(&CaptureConfig::new(&path)).expect_err("must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("leash-capture-does-not-exist") && msg.contains("not found"),
            "{msg}"
        );
    });
}

#[test]
fn stalled_consumer_drops_are_counted_and_recovered_by_a_sweep() {
    let Some(mount) = privileged() else { return };
    let cg = TestCgroup::new(&mount, "stall");
    runtime().block_on(async {
        let config = CaptureConfig::new(&cg.path);
        let mut capture = Capture::start(&config).expect("Capture::start");
        let id = capture.cgroup_id();
        // 20,000 new keys while nobody reads: more records than the flow ring holds
        // (1 MiB / 88 bytes ≈ 11,900). Destinations are closed loopback ports.
        let keys: u16 = 20_000;
        let base: u16 = 30_000;
        run_child(&cg.path, &[format!("udpports 127.0.0.1:{base} {keys}")]);
        let mut agg = Aggregator::new(config.refresh, capture.clock());
        let mut delivered = 0u64;
        while let Some(event) = capture.try_next_event().expect("drain") {
            if let CaptureEvent::Flow(sample) = event {
                delivered += 1;
                agg.observe(&sample, SampleSource::Ring);
            }
        }
        let counters = capture.counters().expect("counters");
        let produced = counters.get(agent_ebpf::Counter::FlowProduced);
        let dropped = counters.flow_drops();
        eprintln!("produced {produced}, delivered {delivered}, dropped {dropped}");
        assert!(dropped > 0, "the stalled ring must overflow: {counters:?}");
        assert_eq!(produced, delivered + dropped, "zero unaccounted losses");
        // Drops happened: a recovery sweep restores the exact counts.
        for sample in capture.sweep().expect("sweep") {
            agg.observe(&sample, SampleSource::Lookup);
        }
        let mut total = 0u64;
        let mut ports = std::collections::BTreeSet::new();
        for d in agg.flush() {
            if d.id.cgroup_id == id && d.id.protocol == 17 {
                total += d.count;
                ports.insert(d.id.dst_port);
            }
        }
        assert_eq!(total, u64::from(keys));
        assert_eq!(ports.len(), usize::from(keys));
    });
}

#[test]
fn batched_sweep_matches_the_per_key_walk_on_thousands_of_keys() {
    let Some(mount) = privileged() else { return };
    let cg = TestCgroup::new(&mount, "batch");
    runtime().block_on(async {
        let config = CaptureConfig::new(&cg.path);
        let capture = Capture::start(&config).expect("Capture::start");
        let id = capture.cgroup_id();
        // 3,000 IPv4 + 600 IPv6 UDP keys (closed loopback ports) and one TCP key.
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        run_child(
            &cg.path,
            &[
                "udpports 127.0.0.1:20000 3000".to_owned(),
                "udpports [::1]:20000 600".to_owned(),
                format!("tcp {closed} 3"),
            ],
        );
        // The child has exited: the map no longer changes between the reads below.
        let batched = capture.sweep_with(MapRead::Batched).expect("batched sweep");
        assert!(
            capture.batch_reads_supported(),
            "kernel ≥ 5.6 has batch ops"
        );
        let per_key = capture.sweep_with(MapRead::PerKey).expect("per-key sweep");
        assert_eq!(batched.len(), per_key.len());
        assert_eq!(batched, per_key, "batched and per-key walks differ");
        assert_eq!(capture.sweep().expect("sweep"), batched);
        assert_eq!(capture.flow_keys().expect("flow_keys"), batched.len());
        assert!(batched.is_sorted_by_key(|s| s.id), "sweep output is sorted");

        let mine: Vec<&FlowSample> = batched.iter().filter(|s| s.id.cgroup_id == id).collect();
        let udp_ports = |v4: bool| -> std::collections::BTreeSet<u16> {
            mine.iter()
                .filter(|s| s.id.protocol == 17 && s.id.dst.is_ipv4() == v4)
                .map(|s| s.id.dst_port)
                .collect()
        };
        assert_eq!(udp_ports(true), (20_000..23_000).collect());
        assert_eq!(udp_ports(false), (20_000..20_600).collect());
        assert!(
            mine.iter()
                .filter(|s| s.id.protocol == 17)
                .all(|s| s.count == 1),
            "one send per UDP key"
        );
        let tcp = mine
            .iter()
            .find(|s| s.id == flow(id, 6, &closed))
            .expect("TCP key");
        assert_eq!((tcp.count, tcp.failed), (3, 3), "{tcp:?}");
        assert_eq!(mine.len(), 3_601);
    });
}

#[test]
fn lookup_many_mixes_present_and_absent_ids_below_and_above_the_threshold() {
    let Some(mount) = privileged() else { return };
    let cg = TestCgroup::new(&mount, "many");
    runtime().block_on(async {
        let config = CaptureConfig::new(&cg.path);
        let capture = Capture::start(&config).expect("Capture::start");
        let id = capture.cgroup_id();
        run_child(&cg.path, &["udpports 127.0.0.1:40000 2000".to_owned()]);
        let present: Vec<FlowSample> = capture.sweep().expect("sweep");
        assert_eq!(present.len(), 2_000);
        let absent = |port: u16| FlowId {
            cgroup_id: id,
            protocol: 17,
            dst: IpAddr::from([127, 0, 0, 1]),
            dst_port: port,
        };
        // Interleave present and absent ids (absent: ports never sent to, the TCP twin of a
        // present key, another cgroup), with a repeated id; input order must be kept.
        let mut large: Vec<FlowId> = Vec::new();
        for (i, s) in present.iter().enumerate() {
            large.push(s.id);
            if i % 4 == 0 {
                large.push(absent(1_000 + u16::try_from(i).expect("small")));
            }
        }
        large.push(FlowId {
            protocol: 6,
            ..present[7].id
        });
        large.push(FlowId {
            cgroup_id: id + 1,
            ..present[9].id
        });
        large.push(present[3].id);
        large.reverse();
        let small: Vec<FlowId> = large.iter().step_by(97).copied().collect();
        assert!(small.len() <= LOOKUP_MANY_PER_KEY_MAX && small.len() > 10);
        assert!(!capture.lookup_many_would_batch(small.len()));
        assert!(capture.lookup_many_would_batch(large.len()));

        for ids in [&small, &large] {
            let expected: Vec<(FlowId, Option<FlowSample>)> = ids
                .iter()
                .map(|i| (*i, present.iter().find(|s| s.id == *i).copied()))
                .collect();
            let hits = expected.iter().filter(|(_, s)| s.is_some()).count();
            assert!(hits > 0 && hits < ids.len(), "a mix of present and absent");
            for method in [MapRead::Auto, MapRead::PerKey, MapRead::Batched] {
                let got = capture
                    .lookup_many_with(ids, method)
                    .expect("lookup_many_with");
                assert_eq!(got, expected, "{method:?} with {} ids", ids.len());
            }
            assert_eq!(capture.lookup_many(ids).expect("lookup_many"), expected);
            for (i, sample) in &expected {
                assert_eq!(&capture.lookup(i).expect("lookup"), sample);
            }
        }
        assert!(capture.lookup_many(&[]).expect("empty").is_empty());
    });
}
