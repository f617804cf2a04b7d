//! End-to-end tests of `leash-agent` with real kernel events, in the lab (`leash-lab`).
//!
//! Each test builds its own lab (so tests run in parallel), writes the lab's cluster snapshot,
//! and starts the real binary as users run it:
//! `leash-agent --cgroup <lab cgroup root> --cluster-snapshot <file> --output <file>
//! --flush-interval 200ms --duration 90s --node-name <lab node>`.
//! Once the agent logs `capturing`, lab pods make traffic with `lab-client`; then the test stops
//! the agent with SIGINT (a clean shutdown flushes everything it holds; `--duration` is only a
//! safety net; one test stops it with SIGTERM, one lets `--duration` end it) and asserts on the
//! exact JSON lines written. Every line is also checked against the structural contract
//! (`"v":1`, `kind`, `node`, a resolved cgroup path, RFC3339 times in order and within the run).
//! `LEASH_E2E_DUMP=1` prints each agent's output.
//!
//! The drop-accounting test drives the capture library directly, because it must stall the
//! consumer on purpose. The hostile-DNS test also starts a real `leash serve --insecure` (found
//! or built by [`leash_lab::leash_path`]; `LEASH_BIN` overrides it) and reads what it stored
//! through its HTTP API.
//!
//! These tests need root and BPF: without them they skip with a reason, unless
//! `LEASH_REQUIRE_PRIVILEGED=1`, which makes them fail instead. `lab-client` is found, or built
//! once into this target directory, by [`leash_lab::lab_client_path`] (set `LEASH_LAB_CLIENT`
//! to use a prebuilt one).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use leash_agent::aggregate::{Aggregator, SampleSource};
use leash_agent::capture::{Capture, CaptureConfig, CaptureEvent};
use leash_agent::dns::checked_name;
use leash_lab::{
    CgroupDriver, ClientOutput, DNS_VIP_V4, DNS_VIP_V6, DnsConfig, Lab, Pod, PodSpec, Port, Qos,
    Runtime,
};
use leash_records::{DnsRecord, FlowRecord, PodRef, Protocol, Record};

/// The agent's flush interval in these tests (and thus the kernel's per-key refresh interval).
const FLUSH: Duration = Duration::from_millis(200);
/// Safety net only: every test stops the agent with SIGINT as soon as its traffic is done.
const SAFETY_DURATION: &str = "90s";
/// How long the agent may take to load and attach on a busy machine.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to flush and exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Slack allowed between record times and the test's own clock (conversion of kernel times).
const CLOCK_SLACK: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Running the agent
// ---------------------------------------------------------------------------------------------

/// A running `leash-agent` on a lab. Killed on drop if a test fails before stopping it.
struct Agent {
    child: Option<Child>,
    dir: tempfile::TempDir,
    output: PathBuf,
    node: String,
    log: Arc<Mutex<String>>,
    log_thread: Option<thread::JoinHandle<()>>,
    metrics: Option<SocketAddr>,
    started: SystemTime,
    /// The `--duration` given.
    duration: Duration,
}

/// How to start an [`Agent`].
#[derive(Default)]
struct Options<'a> {
    /// Serve metrics on a free loopback port.
    metrics: bool,
    /// `--duration` (default [`SAFETY_DURATION`]).
    duration: Option<&'a str>,
    /// Further command-line arguments.
    extra: &'a [&'a str],
}

impl Agent {
    /// Starts the agent on `lab`'s cgroup root and waits until it has attached.
    fn start(lab: &Lab) -> Self {
        Self::start_with(lab, &Options::default())
    }

    /// As [`Agent::start`], with options.
    fn start_with(lab: &Lab, options: &Options) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshot = dir.path().join("snapshot.yaml");
        lab.write_snapshot(&snapshot)
            .expect("writing the lab snapshot");
        let output = dir.path().join("records.jsonl");
        let node = lab.node_name().to_owned();
        let metrics = options.metrics.then(free_loopback_port);
        let started = SystemTime::now();

        let mut cmd = Command::new(env!("CARGO_BIN_EXE_leash-agent"));
        cmd.arg("--cgroup")
            .arg(lab.cgroup_root())
            .arg("--cluster-snapshot")
            .arg(&snapshot)
            .arg("--output")
            .arg(&output)
            .arg("--flush-interval")
            .arg(format!("{}ms", FLUSH.as_millis()))
            .arg("--duration")
            .arg(options.duration.unwrap_or(SAFETY_DURATION))
            .arg("--node-name")
            .arg(&node)
            .env("LEASH_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(addr) = metrics {
            cmd.arg("--metrics-addr").arg(addr.to_string());
        }
        cmd.args(options.extra);
        let mut child = cmd.spawn().expect("spawning leash-agent");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (attached_tx, attached_rx) = mpsc::channel();
        let log_writer = Arc::clone(&log);
        let log_thread = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("capturing") {
                    let _ = attached_tx.send(());
                }
                let mut log = log_writer.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut agent = Self {
            child: Some(child),
            dir,
            output,
            node,
            log,
            log_thread: Some(log_thread),
            metrics,
            started,
            duration: humantime::parse_duration(options.duration.unwrap_or(SAFETY_DURATION))
                .expect("a valid --duration"),
        };
        match attached_rx.recv_timeout(ATTACH_TIMEOUT) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "leash-agent did not log `capturing` within {ATTACH_TIMEOUT:?}; log:\n{}",
                agent.log()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = agent
                    .child
                    .as_mut()
                    .and_then(|c| wait_bounded(c, STOP_TIMEOUT));
                panic!(
                    "leash-agent exited before attaching ({status:?}); log:\n{}",
                    agent.log()
                );
            }
        }
        agent
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The snapshot file the agent reads.
    fn snapshot_path(&self) -> PathBuf {
        self.dir.path().join("snapshot.yaml")
    }

    /// The whole `/metrics` response, `None` when it does not answer.
    fn scrape(&self) -> Option<String> {
        let addr = self.metrics?;
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut body = String::new();
        stream.read_to_string(&mut body).ok()?;
        Some(body)
    }

    /// Scrapes one metric sample by its exact series, e.g. `name` or `name{label="v"}`.
    fn metric(&self, name: &str) -> Option<f64> {
        let body = self.scrape()?;
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .find(|(series, _)| *series == name)
            .and_then(|(_, v)| v.trim().parse().ok())
    }

    /// Polls a metric until `pred` holds or `timeout` passes; returns the last value seen.
    fn wait_metric(&self, name: &str, timeout: Duration, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.metric(name);
            if let Some(v) = value
                && (pred(v) || Instant::now() >= deadline)
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "metric {name} not served within {timeout:?}; metrics:\n{}\nlog:\n{}",
                self.scrape().unwrap_or_default(),
                self.log()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the agent with SIGINT, waits for a clean exit and reads what it wrote.
    fn stop(self) -> Output {
        self.finish(Some(libc::SIGINT))
    }

    /// Stops the agent with SIGTERM, waits for a clean exit and reads what it wrote.
    fn terminate(self) -> Output {
        self.finish(Some(libc::SIGTERM))
    }

    /// Waits for the agent to stop by itself (`--duration`) and reads what it wrote.
    fn wait_exit(self) -> Output {
        self.finish(None)
    }

    fn finish(mut self, signal: Option<libc::c_int>) -> Output {
        let mut child = self.child.take().expect("agent still running");
        let mut timeout = STOP_TIMEOUT;
        if let Some(signal) = signal {
            let pid = i32::try_from(child.id()).expect("pid fits in i32");
            // SAFETY: kill(2) on our own child, not yet waited for, so the pid is still ours.
            let rc = unsafe { libc::kill(pid, signal) };
            assert_eq!(rc, 0, "kill({signal}): {}", std::io::Error::last_os_error());
        } else {
            timeout += self.duration;
        }
        let status = wait_bounded(&mut child, timeout);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
        let log = self.log();
        let status = status.unwrap_or_else(|| {
            panic!("leash-agent did not exit within {timeout:?} (signal {signal:?}); log:\n{log}")
        });
        assert!(
            status.success(),
            "leash-agent failed: {status}; log:\n{log}"
        );
        let stopped = SystemTime::now();
        Output::read(&self.output, &self.node, (self.started, stopped), log)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for `child` at most `timeout`; `None` if it is still running.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            _ => return None,
        }
    }
}

/// A loopback port that was free a moment ago (the agent's metrics endpoint binds it).
fn free_loopback_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr")
}

// ---------------------------------------------------------------------------------------------
// Reading and checking records
// ---------------------------------------------------------------------------------------------

/// A flow key as the tests compare it.
type Key = (Protocol, IpAddr, u16);
/// Summed (count, established, failed) of one key.
type Totals = (u64, u64, u64);

/// What the agent wrote.
struct Output {
    records: Vec<Record>,
    log: String,
}

impl Output {
    /// Reads the agent's output file, checking every line's structure, then parses it with the
    /// project's own contract reader.
    fn read(path: &Path, node: &str, window: (SystemTime, SystemTime), log: String) -> Self {
        let text = fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}; agent log:\n{log}", path.display()));
        let lo = DateTime::<Utc>::from(window.0 - CLOCK_SLACK);
        let hi = DateTime::<Utc>::from(window.1 + CLOCK_SLACK);
        if std::env::var_os("LEASH_E2E_DUMP").is_some() {
            eprintln!("--- {} ---\n{text}", path.display());
        }
        let mut lines = 0;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            lines += 1;
            check_line(line, i + 1, node, (lo, hi));
        }
        let records: Vec<Record> = leash_records::read_records(text.as_bytes(), path)
            .map(|r| r.unwrap_or_else(|e| panic!("{e}")).record)
            .collect();
        assert_eq!(records.len(), lines, "every line is one record");
        Self { records, log }
    }

    fn flows(&self) -> impl Iterator<Item = &FlowRecord> {
        self.records.iter().filter_map(|r| match r {
            Record::Flow(f) => Some(f),
            Record::Dns(_) => None,
        })
    }

    fn dns(&self) -> impl Iterator<Item = &DnsRecord> {
        self.records.iter().filter_map(|r| match r {
            Record::Dns(d) => Some(d),
            Record::Flow(_) => None,
        })
    }

    /// Flow records of one cgroup and key.
    fn flows_of(&self, cgroup: &str, key: Key) -> Vec<&FlowRecord> {
        self.flows()
            .filter(|f| f.cgroup == cgroup && (f.protocol, f.dst, f.dst_port) == key)
            .collect()
    }

    /// Summed totals per key of one cgroup.
    fn totals(&self, cgroup: &str) -> BTreeMap<Key, Totals> {
        let mut out = BTreeMap::<Key, Totals>::new();
        for f in self.flows().filter(|f| f.cgroup == cgroup) {
            let t = out.entry((f.protocol, f.dst, f.dst_port)).or_default();
            t.0 += f.count;
            if let Some(o) = &f.outcome {
                t.1 += o.established;
                t.2 += o.failed;
            }
        }
        out
    }

    /// The cgroups that have flow records.
    fn flow_cgroups(&self) -> BTreeSet<String> {
        self.flows().map(|f| f.cgroup.clone()).collect()
    }

    /// DNS records of one cgroup, summarised and sorted.
    fn dns_of(&self, cgroup: &str) -> Vec<DnsSummary> {
        let mut out: Vec<DnsSummary> = self
            .dns()
            .filter(|d| d.cgroup == cgroup)
            .map(DnsSummary::of)
            .collect();
        out.sort();
        out
    }

    /// Asserts that every record of a lab pod's cgroup names that pod exactly as the snapshot
    /// does, that TCP flows carry an outcome, and that nothing else claims a pod.
    fn assert_attribution(&self, lab: &Lab) {
        self.assert_attribution_with(lab, &[]);
    }

    /// As [`Output::assert_attribution`], with further cgroups that belong to a lab pod (e.g.
    /// containers the test started).
    fn assert_attribution_with(&self, lab: &Lab, extra: &[(&str, &Pod)]) {
        let pods: BTreeMap<&str, PodRef> = lab
            .pods()
            .iter()
            .map(|p| (p.cgroup_rel(), pod_ref(p)))
            .chain(extra.iter().map(|(cgroup, p)| (*cgroup, pod_ref(p))))
            .collect();
        for r in &self.records {
            let (cgroup, pod) = match r {
                Record::Flow(f) => {
                    if f.protocol == Protocol::Tcp {
                        assert!(f.outcome.is_some(), "TCP flow without outcome: {f:?}");
                    }
                    (&f.cgroup, &f.pod)
                }
                Record::Dns(d) => (&d.cgroup, &d.pod),
            };
            assert_eq!(
                pod.as_ref(),
                pods.get(cgroup.as_str()),
                "attribution of {r:?}; agent log:\n{}",
                self.log
            );
        }
    }
}

/// Checks one raw JSON line against the structural contract.
fn check_line(line: &str, no: usize, node: &str, (lo, hi): (DateTime<Utc>, DateTime<Utc>)) {
    let v: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("line {no}: not JSON ({e}): {line}"));
    assert_eq!(v["v"], 1, "line {no}: v must be 1: {line}");
    assert_eq!(v["node"], node, "line {no}: node: {line}");
    // No cgroup of these tests vanishes while the agent runs, so every one must resolve to a
    // path (`cgroupid:<id>` is the agent's fallback when it could not).
    assert!(
        v["cgroup"].as_str().is_some_and(|c| c.starts_with('/')),
        "line {no}: cgroup is not a resolved path: {line}"
    );
    assert!(
        v["pod"].is_null() || v["pod"].is_object(),
        "line {no}: pod: {line}"
    );
    let time = |field: &str| -> DateTime<Utc> {
        let s = v[field]
            .as_str()
            .unwrap_or_else(|| panic!("line {no}: {field} missing: {line}"));
        let t = DateTime::parse_from_rfc3339(s)
            .unwrap_or_else(|e| panic!("line {no}: {field} {s:?} is not RFC3339: {e}"))
            .with_timezone(&Utc);
        assert!(
            lo <= t && t <= hi,
            "line {no}: {field} {t} outside the test's run [{lo}, {hi}]"
        );
        t
    };
    match v["kind"].as_str() {
        Some("flow") => {
            let (first, last) = (time("first_seen"), time("last_seen"));
            assert!(
                first <= last,
                "line {no}: first_seen after last_seen: {line}"
            );
        }
        Some("dns") => {
            time("time");
        }
        other => panic!("line {no}: bad kind {other:?}: {line}"),
    }
}

/// The comparable content of a DNS record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct DnsSummary {
    query: String,
    qtype: String,
    rcode: String,
    server: IpAddr,
    /// (name, type, data, ttl) in packet order.
    answers: Vec<(String, String, String, u32)>,
}

impl DnsSummary {
    fn of(d: &DnsRecord) -> Self {
        Self {
            query: d.query.clone(),
            qtype: d.qtype.clone(),
            rcode: d.rcode.clone(),
            server: d.server,
            answers: d
                .answers
                .iter()
                .map(|a| (a.name.clone(), a.rtype.clone(), a.data.clone(), a.ttl))
                .collect(),
        }
    }

    fn new(query: &str, qtype: &str, server: IpAddr, answers: &[(&str, &str, &str)]) -> Self {
        Self {
            query: query.to_owned(),
            qtype: qtype.to_owned(),
            rcode: "NOERROR".to_owned(),
            server,
            answers: answers
                .iter()
                .map(|(n, t, d)| ((*n).to_owned(), (*t).to_owned(), (*d).to_owned(), 60))
                .collect(),
        }
    }
}

fn pod_ref(p: &Pod) -> PodRef {
    PodRef {
        uid: p.uid().to_owned(),
        namespace: p.namespace().to_owned(),
        name: p.name().to_owned(),
    }
}

fn key(protocol: Protocol, dst: &str, port: u16) -> Key {
    (protocol, dst.parse().expect("test address"), port)
}

fn tcp(dst: &str, port: u16) -> Key {
    key(Protocol::Tcp, dst, port)
}

fn udp(dst: &str, port: u16) -> Key {
    key(Protocol::Udp, dst, port)
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// Asserts every record of `key` from `pod` carries exactly `want` as names.
fn assert_names(out: &Output, pod: &Pod, key: Key, want: &[&str]) {
    let records = out.flows_of(pod.cgroup_rel(), key);
    assert!(!records.is_empty(), "no flow {key:?} from {}", pod.key());
    for r in records {
        assert_eq!(
            r.names,
            names(want),
            "names of {key:?} from {}: {r:?}",
            pod.key()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------------

/// Runs `lab-client` in `pod` (success not required).
fn client(pod: &Pod, args: &[&str]) -> ClientOutput {
    pod.run(args)
        .unwrap_or_else(|e| panic!("lab-client {args:?} in {}: {e}", pod.key()))
}

/// Runs `lab-client` in `pod` and requires it to succeed.
fn client_ok(pod: &Pod, args: &[&str]) -> ClientOutput {
    let out = client(pod, args);
    assert!(
        out.success(),
        "lab-client {args:?} in {} failed: {}\n{}",
        pod.key(),
        out.stdout,
        out.stderr
    );
    out
}

/// Runs a DNS query with `lab-client` and checks the lab server answered it.
fn query(pod: &Pod, args: &[&str]) -> ClientOutput {
    let mut full = vec!["dns"];
    full.extend_from_slice(args);
    let out = client_ok(pod, &full);
    assert_eq!(out.json["parsed"], true, "{}", out.stdout);
    assert_eq!(out.json["truncated"], false, "{}", out.stdout);
    out
}

// ---------------------------------------------------------------------------------------------
// 1. TCP
// ---------------------------------------------------------------------------------------------

#[test]
fn tcp_v4_and_v6_flows_with_established_and_failed_outcomes() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("shop", "web-6b7-k2").label("app", "web"))
        .external("203.0.113.10", [Port::tcp(443)])
        .external("2001:db8:2::10", [Port::tcp(443)])
        .build()
        .expect("building the lab");
    let pod = lab.pod("shop/web-6b7-k2");
    let agent = Agent::start(&lab);

    let out = client_ok(pod, &["tcp", "203.0.113.10", "443", "--count", "3"]);
    assert_eq!(out.count("connected"), 3);
    let out = client_ok(pod, &["tcp", "2001:db8:2::10", "443", "--count", "2"]);
    assert_eq!(out.count("connected"), 2);
    // Nothing listens on 444: the external host resets, the connect fails.
    let out = client(pod, &["tcp", "203.0.113.10", "444", "--count", "2"]);
    assert_eq!(out.count("failed"), 2, "{}", out.stdout);
    let out = client(pod, &["tcp", "2001:db8:2::10", "444"]);
    assert_eq!(out.count("failed"), 1, "{}", out.stdout);
    // An IPv4-mapped IPv6 destination is the IPv4 flow.
    let out = client_ok(pod, &["tcp", "::ffff:203.0.113.10", "443"]);
    assert_eq!(out.count("connected"), 1);

    let out = agent.stop();
    out.assert_attribution(&lab);
    let want = BTreeMap::from([
        (tcp("203.0.113.10", 443), (4, 4, 0)),
        (tcp("2001:db8:2::10", 443), (2, 2, 0)),
        (tcp("203.0.113.10", 444), (2, 0, 2)),
        (tcp("2001:db8:2::10", 444), (1, 0, 1)),
    ]);
    assert_eq!(out.totals(pod.cgroup_rel()), want, "log:\n{}", out.log);
    assert_eq!(
        out.flow_cgroups(),
        BTreeSet::from([pod.cgroup_rel().to_owned()])
    );
    assert!(out.flows().all(|f| f.names.is_empty()), "no DNS, no names");
    assert_eq!(out.dns().count(), 0);
}

// ---------------------------------------------------------------------------------------------
// 2. UDP
// ---------------------------------------------------------------------------------------------

/// Connected UDP is seen at `connect()` (one event per connect, however many datagrams follow);
/// unconnected UDP at every `sendto()`.
#[test]
fn connected_and_unconnected_udp_v4_and_v6_are_counted_exactly() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("media", "streamer-0"))
        .external("203.0.113.20", [Port::udp(4433), Port::udp(4434)])
        .external("2001:db8:2::20", [Port::udp(4433), Port::udp(4434)])
        .build()
        .expect("building the lab");
    let pod = lab.pod("media/streamer-0");
    let agent = Agent::start(&lab);

    for (dst, connects, sends) in [("203.0.113.20", 2, 5), ("2001:db8:2::20", 3, 4)] {
        for _ in 0..connects {
            let out = client_ok(
                pod,
                &["udp-connected", dst, "4433", "--count", "3", "--wait-echo"],
            );
            assert_eq!(out.count("echoed"), 3);
        }
        let n = sends.to_string();
        let out = client_ok(
            pod,
            &["udp-sendto", dst, "4434", "--count", &n, "--wait-echo"],
        );
        assert_eq!(out.count("echoed"), sends);
    }

    let out = agent.terminate();
    out.assert_attribution(&lab);
    let want = BTreeMap::from([
        (udp("203.0.113.20", 4433), (2, 0, 0)),
        (udp("203.0.113.20", 4434), (5, 0, 0)),
        (udp("2001:db8:2::20", 4433), (3, 0, 0)),
        (udp("2001:db8:2::20", 4434), (4, 0, 0)),
    ]);
    assert_eq!(out.totals(pod.cgroup_rel()), want, "log:\n{}", out.log);
    assert_eq!(
        out.flow_cgroups(),
        BTreeSet::from([pod.cgroup_rel().to_owned()])
    );
    assert_eq!(out.dns().count(), 0, "echo replies are not DNS");
}

/// `--duration` stops the agent by itself, and what it saw is flushed before it exits.
#[test]
fn agent_stops_by_itself_after_duration_and_flushes() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("shop", "worker-0"))
        .external("203.0.113.10", [Port::tcp(443), Port::udp(4433)])
        .build()
        .expect("building the lab");
    let pod = lab.pod("shop/worker-0");
    let agent = Agent::start_with(
        &lab,
        &Options {
            // Long enough that the two client runs finish inside it even on a loaded machine.
            duration: Some("8s"),
            ..Options::default()
        },
    );
    let spawned = agent.started;
    client_ok(pod, &["tcp", "203.0.113.10", "443", "--count", "2"]);
    client_ok(pod, &["udp-sendto", "203.0.113.10", "4433", "--count", "3"]);
    let out = agent.wait_exit();
    // The agent's deadline starts after it was spawned, so it cannot have run for less than
    // --duration since the spawn (a lower bound that load cannot break).
    let ran = SystemTime::now()
        .duration_since(spawned)
        .unwrap_or_default();
    assert!(
        ran >= Duration::from_secs(8),
        "stopped after {ran:?}, before --duration 8s"
    );
    out.assert_attribution(&lab);
    assert_eq!(
        out.totals(pod.cgroup_rel()),
        BTreeMap::from([
            (tcp("203.0.113.10", 443), (2, 2, 0)),
            (udp("203.0.113.10", 4433), (3, 0, 0)),
        ]),
        "log:\n{}",
        out.log
    );
}

// ---------------------------------------------------------------------------------------------
// 3. DNS
// ---------------------------------------------------------------------------------------------

/// The lab's answer to `api.stripe.test A`: the CNAME, then the target's three A records.
fn stripe_chain() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("api.stripe.test.", "CNAME", "edge.stripe.test."),
        ("edge.stripe.test.", "A", "203.0.113.10"),
        ("edge.stripe.test.", "A", "203.0.113.11"),
        ("edge.stripe.test.", "A", "203.0.113.12"),
    ]
}

#[test]
fn dns_answers_over_udp_and_tcp_v4_and_v6_label_later_flows() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("shop", "checkout-5f8-abc").label("app", "checkout"))
        .external("203.0.113.11", [Port::tcp(443)])
        .external("2001:db8:2::10", [Port::tcp(443)])
        .external("203.0.113.105", [Port::tcp(443)])
        .dns(DnsConfig::new().with_stripe_example())
        .build()
        .expect("building the lab");
    let pod = lab.pod("shop/checkout-5f8-abc");
    let vip4 = DNS_VIP_V4.to_string();
    let vip6 = DNS_VIP_V6.to_string();
    let big = leash_lab::LARGE_NAME;
    let agent = Agent::start(&lab);

    query(pod, &[&vip4, "api.stripe.test", "A"]);
    query(pod, &[&vip4, "api.stripe.test", "AAAA", "--tcp"]);
    query(pod, &[&vip4, "api.stripe.test", "CNAME"]);
    query(pod, &[&vip6, "edge.stripe.test", "A", "--tcp"]);
    query(pod, &[&vip6, "edge.stripe.test", "AAAA"]);
    // Larger than 512 bytes: over UDP with EDNS (1232, the client's default) and over TCP.
    let large = query(pod, &[&vip4, big, "A"]);
    assert!(large.count("bytes") > 512, "{}", large.stdout);
    let large = query(pod, &[&vip4, big, "A", "--no-edns", "--tcp"]);
    assert!(large.count("bytes") > 512, "{}", large.stdout);
    // Then connect to resolved addresses.
    client_ok(pod, &["tcp", "203.0.113.11", "443", "--count", "2"]);
    client_ok(pod, &["tcp", "2001:db8:2::10", "443"]);
    client_ok(pod, &["tcp", "203.0.113.105", "443"]);

    let out = agent.stop();
    out.assert_attribution(&lab);
    let v4: IpAddr = DNS_VIP_V4.into();
    let v6: IpAddr = DNS_VIP_V6.into();
    let big_fqdn = format!("{big}.");
    let big_answers: Vec<(String, String, String, u32)> = (0..leash_lab::LARGE_COUNT)
        .map(|i| {
            let ip = format!("203.0.113.{}", 100 + u16::from(i));
            (big_fqdn.clone(), "A".to_owned(), ip, 60)
        })
        .collect();
    let big_record = DnsSummary {
        answers: big_answers,
        ..DnsSummary::new(&big_fqdn, "A", v4, &[])
    };
    let mut want = vec![
        DnsSummary::new("api.stripe.test.", "A", v4, &stripe_chain()),
        DnsSummary::new(
            "api.stripe.test.",
            "AAAA",
            v4,
            &[
                ("api.stripe.test.", "CNAME", "edge.stripe.test."),
                ("edge.stripe.test.", "AAAA", "2001:db8:2::10"),
            ],
        ),
        DnsSummary::new(
            "api.stripe.test.",
            "CNAME",
            v4,
            &[("api.stripe.test.", "CNAME", "edge.stripe.test.")],
        ),
        DnsSummary::new("edge.stripe.test.", "A", v6, &stripe_chain()[1..]),
        DnsSummary::new(
            "edge.stripe.test.",
            "AAAA",
            v6,
            &[("edge.stripe.test.", "AAAA", "2001:db8:2::10")],
        ),
        big_record.clone(),
        big_record,
    ];
    want.sort();
    assert_eq!(out.dns_of(pod.cgroup_rel()), want, "log:\n{}", out.log);
    assert_eq!(
        out.dns().count(),
        want.len(),
        "DNS records of other cgroups"
    );

    let flows = BTreeMap::from([
        // The queries themselves: 3 UDP (sendto) and 1 TCP to the v4 VIP, 1 + 1 to the v6 VIP.
        (udp(&vip4, 53), (3, 0, 0)),
        (tcp(&vip4, 53), (2, 2, 0)),
        (udp(&vip6, 53), (1, 0, 0)),
        (tcp(&vip6, 53), (1, 1, 0)),
        (tcp("203.0.113.11", 443), (2, 2, 0)),
        (tcp("2001:db8:2::10", 443), (1, 1, 0)),
        (tcp("203.0.113.105", 443), (1, 1, 0)),
    ]);
    assert_eq!(out.totals(pod.cgroup_rel()), flows, "log:\n{}", out.log);
    let stripe = ["api.stripe.test", "edge.stripe.test"];
    assert_names(&out, pod, tcp("203.0.113.11", 443), &stripe);
    assert_names(&out, pod, tcp("2001:db8:2::10", 443), &stripe);
    assert_names(&out, pod, tcp("203.0.113.105", 443), &[big]);
    assert_names(&out, pod, udp(&vip4, 53), &[]);
}

/// Answers from a 5353-style resolver are captured when the port is configured, and only then:
/// two agents watch the same lab, one with `--dns-port 5353`.
#[test]
fn dns_answers_from_a_configured_resolver_port() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("shop", "api-6d9-w2"))
        .dns(DnsConfig::openshift().with_stripe_example())
        .build()
        .expect("building the lab");
    assert_eq!(lab.dns_port(), Some(5353));
    let pod = lab.pod("shop/api-6d9-w2");
    let resolver = lab.dns_pod().expect("DNS pod").ipv4().to_string();
    let vip4 = DNS_VIP_V4.to_string();
    let with_port = Agent::start_with(
        &lab,
        &Options {
            extra: &["--dns-port", "5353"],
            ..Options::default()
        },
    );
    let without = Agent::start(&lab);

    // Straight to the resolver: the answer comes from port 5353.
    query(pod, &[&resolver, "api.stripe.test", "A", "--port", "5353"]);
    query(
        pod,
        &[
            &resolver,
            "api.stripe.test",
            "AAAA",
            "--port",
            "5353",
            "--tcp",
        ],
    );
    // Through the Service: port 53 → 5353, the answer comes back from the VIP's port 53.
    query(pod, &[&vip4, "api.stripe.test", "A"]);

    let v4: IpAddr = DNS_VIP_V4.into();
    let direct: IpAddr = resolver.parse().expect("address");
    let through_service = DnsSummary::new("api.stripe.test.", "A", v4, &stripe_chain());
    let mut want = vec![
        DnsSummary::new("api.stripe.test.", "A", direct, &stripe_chain()),
        DnsSummary::new(
            "api.stripe.test.",
            "AAAA",
            direct,
            &[
                ("api.stripe.test.", "CNAME", "edge.stripe.test."),
                ("edge.stripe.test.", "AAAA", "2001:db8:2::10"),
            ],
        ),
        through_service.clone(),
    ];
    want.sort();
    let flows = BTreeMap::from([
        (udp(&resolver, 5353), (1, 0, 0)),
        (tcp(&resolver, 5353), (1, 1, 0)),
        (udp(&vip4, 53), (1, 0, 0)),
    ]);

    let out = with_port.stop();
    out.assert_attribution(&lab);
    assert_eq!(out.dns_of(pod.cgroup_rel()), want, "log:\n{}", out.log);
    assert_eq!(out.totals(pod.cgroup_rel()), flows);

    let out = without.stop();
    out.assert_attribution(&lab);
    assert_eq!(
        out.dns_of(pod.cgroup_rel()),
        vec![through_service],
        "only port 53 by default; log:\n{}",
        out.log
    );
    assert_eq!(out.totals(pod.cgroup_rel()), flows);
}

// ---------------------------------------------------------------------------------------------
// 4. Malformed DNS
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_dns_answer_is_skipped_and_the_agent_keeps_recording() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("shop", "cart-0"))
        .external("203.0.113.10", [Port::tcp(443)])
        .dns(DnsConfig::new().with_stripe_example())
        .build()
        .expect("building the lab");
    let pod = lab.pod("shop/cart-0");
    let vip4 = DNS_VIP_V4.to_string();
    let agent = Agent::start_with(
        &lab,
        &Options {
            metrics: true,
            ..Options::default()
        },
    );
    let errors = "leash_agent_dns_parse_errors_total";
    assert_eq!(
        agent.wait_metric(errors, Duration::from_secs(10), |_| true),
        0.0
    );

    for mode in [&[][..], &["--tcp"][..]] {
        let mut args = vec!["dns", vip4.as_str(), leash_lab::MALFORMED_NAME, "A"];
        args.extend_from_slice(mode);
        let out = client_ok(pod, &args);
        assert_eq!(
            out.json["parsed"], false,
            "the lab must send garbage: {}",
            out.stdout
        );
    }
    // Both answers reach the agent and are counted as parse errors, nothing else is.
    let seen = agent.wait_metric(errors, Duration::from_secs(15), |v| v >= 2.0);
    assert_eq!(seen, 2.0, "log:\n{}", agent.log());

    // The agent is still recording: a good answer and later flows.
    query(pod, &[&vip4, "api.stripe.test", "A"]);
    client_ok(pod, &["tcp", "203.0.113.10", "443", "--count", "2"]);
    assert_eq!(agent.metric(errors), Some(2.0));

    let out = agent.stop();
    out.assert_attribution(&lab);
    let v4: IpAddr = DNS_VIP_V4.into();
    assert_eq!(
        out.dns_of(pod.cgroup_rel()),
        vec![DnsSummary::new(
            "api.stripe.test.",
            "A",
            v4,
            &stripe_chain()
        )],
        "log:\n{}",
        out.log
    );
    assert_eq!(out.dns().count(), 1);
    let flows = BTreeMap::from([
        (udp(&vip4, 53), (2, 0, 0)),
        (tcp(&vip4, 53), (1, 1, 0)),
        (tcp("203.0.113.10", 443), (2, 2, 0)),
    ]);
    assert_eq!(out.totals(pod.cgroup_rel()), flows, "log:\n{}", out.log);
    assert_names(
        &out,
        pod,
        tcp("203.0.113.10", 443),
        &["api.stripe.test", "edge.stripe.test"],
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Two pods
// ---------------------------------------------------------------------------------------------

#[test]
fn two_pods_flows_and_dns_names_never_mix() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("team-a", "alpha-7c9-d4").label("app", "alpha"))
        .pod(PodSpec::new("team-b", "beta-55f-q8").label("app", "beta"))
        .external("203.0.113.10", [Port::tcp(443)])
        .external("203.0.113.50", [Port::tcp(5432), Port::udp(4433)])
        .dns(
            DnsConfig::new()
                .with_stripe_example()
                .a("db.partner.test", ["203.0.113.50"]),
        )
        .build()
        .expect("building the lab");
    let alpha = lab.pod("team-a/alpha-7c9-d4");
    let beta = lab.pod("team-b/beta-55f-q8");
    let vip4 = DNS_VIP_V4.to_string();
    let agent = Agent::start(&lab);

    // Both pods at the same time, to the same destinations; each resolves only one name.
    thread::scope(|s| {
        s.spawn(|| {
            query(alpha, &[&vip4, "api.stripe.test", "A"]);
            client_ok(alpha, &["tcp", "203.0.113.10", "443", "--count", "3"]);
            client_ok(alpha, &["tcp", "203.0.113.50", "5432"]);
        });
        s.spawn(|| {
            query(beta, &[&vip4, "db.partner.test", "A"]);
            client_ok(beta, &["tcp", "203.0.113.10", "443", "--count", "2"]);
            client_ok(beta, &["tcp", "203.0.113.50", "5432", "--count", "4"]);
            client_ok(
                beta,
                &["udp-sendto", "203.0.113.50", "4433", "--count", "2"],
            );
        });
    });

    let out = agent.stop();
    out.assert_attribution(&lab);
    assert_eq!(
        out.flow_cgroups(),
        BTreeSet::from([alpha.cgroup_rel().to_owned(), beta.cgroup_rel().to_owned()])
    );
    assert_eq!(
        out.totals(alpha.cgroup_rel()),
        BTreeMap::from([
            (udp(&vip4, 53), (1, 0, 0)),
            (tcp("203.0.113.10", 443), (3, 3, 0)),
            (tcp("203.0.113.50", 5432), (1, 1, 0)),
        ]),
        "log:\n{}",
        out.log
    );
    assert_eq!(
        out.totals(beta.cgroup_rel()),
        BTreeMap::from([
            (udp(&vip4, 53), (1, 0, 0)),
            (tcp("203.0.113.10", 443), (2, 2, 0)),
            (tcp("203.0.113.50", 5432), (4, 4, 0)),
            (udp("203.0.113.50", 4433), (2, 0, 0)),
        ]),
        "log:\n{}",
        out.log
    );
    // Names learned by one pod label only that pod's flows.
    let stripe = ["api.stripe.test", "edge.stripe.test"];
    assert_names(&out, alpha, tcp("203.0.113.10", 443), &stripe);
    assert_names(&out, alpha, tcp("203.0.113.50", 5432), &[]);
    assert_names(&out, beta, tcp("203.0.113.10", 443), &[]);
    assert_names(&out, beta, tcp("203.0.113.50", 5432), &["db.partner.test"]);
    assert_names(&out, beta, udp("203.0.113.50", 4433), &["db.partner.test"]);

    let v4: IpAddr = DNS_VIP_V4.into();
    assert_eq!(
        out.dns_of(alpha.cgroup_rel()),
        vec![DnsSummary::new(
            "api.stripe.test.",
            "A",
            v4,
            &stripe_chain()
        )]
    );
    assert_eq!(
        out.dns_of(beta.cgroup_rel()),
        vec![DnsSummary::new(
            "db.partner.test.",
            "A",
            v4,
            &[("db.partner.test.", "A", "203.0.113.50")]
        )]
    );
    assert_eq!(out.dns().count(), 2);
}

// ---------------------------------------------------------------------------------------------
// 6. 10,000 connects
// ---------------------------------------------------------------------------------------------

#[test]
fn ten_thousand_connects_are_counted_exactly_in_few_records() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("load", "client-0"))
        .external("203.0.113.30", [Port::tcp(8443)])
        .build()
        .expect("building the lab");
    let pod = lab.pod("load/client-0");
    let agent = Agent::start(&lab);

    let window = Instant::now();
    let out = client_ok(pod, &["tcp", "203.0.113.30", "8443", "--count", "10000"]);
    assert_eq!(out.count("connected"), 10_000);
    let connects_took = window.elapsed();
    let out = agent.stop();
    let elapsed = window.elapsed();
    // A record of the key can only come out of a flush, and one flush writes at most one
    // record per key. Flushes happen on the agent's 200 ms ticks (never closer together, missed
    // ticks are delayed) and once more on shutdown. The key has no events before `window`
    // started and the agent has exited when `elapsed` is measured, so its records come from at
    // most elapsed/200ms + 1 ticks plus the final flush. (The kernel's refresh interval equals
    // the flush interval, so this is also about how often the kernel pushes an active key.)
    let ticks = u64::try_from(elapsed.as_millis() / FLUSH.as_millis()).expect("small");
    let bound = ticks + 2;
    let n = u64::try_from(
        out.flows_of(pod.cgroup_rel(), tcp("203.0.113.30", 8443))
            .len(),
    )
    .expect("small");
    eprintln!(
        "10,000 connects in {connects_took:?}, agent stopped after {elapsed:?}: {n} records \
         (bound {bound})"
    );
    assert!(
        n >= 1 && n <= bound,
        "{n} records for one key, bound {bound}"
    );
    out.assert_attribution(&lab);
    assert_eq!(
        out.totals(pod.cgroup_rel()),
        BTreeMap::from([(tcp("203.0.113.30", 8443), (10_000, 10_000, 0))]),
        "log:\n{}",
        out.log
    );
}

/// A burst of distinct keys through the binary: whether or not the agent keeps up with the
/// ring (a drop triggers its recovery sweep), every connect is in the output exactly once.
#[test]
fn a_burst_of_distinct_flows_is_recorded_completely() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("load", "scanner-1"))
        // Only the address matters: every port connected to is closed and answers with RST.
        .external("203.0.113.41", [Port::tcp(443)])
        .build()
        .expect("building the lab");
    let pod = lab.pod("load/scanner-1");
    let agent = Agent::start_with(
        &lab,
        &Options {
            metrics: true,
            ..Options::default()
        },
    );
    let keys: u16 = 20_000;
    let base: u16 = 10_000;
    let (keys_arg, base_arg) = (keys.to_string(), base.to_string());
    let out = client(
        pod,
        &[
            "tcp",
            "203.0.113.41",
            &base_arg,
            "--count",
            &keys_arg,
            "--port-span",
            &keys_arg,
            "--timeout-ms",
            "2000",
        ],
    );
    assert_eq!(out.count("failed"), u64::from(keys), "{}", out.stdout);
    let ring_full = agent.metric(r#"leash_agent_kernel_drops_total{cause="flow_ring_full"}"#);
    let out = agent.stop();
    eprintln!("{keys} distinct keys; kernel drops metric: {ring_full:?}");
    out.assert_attribution(&lab);
    let totals = out.totals(pod.cgroup_rel());
    let want: BTreeMap<Key, Totals> = (0..keys)
        .map(|i| (tcp("203.0.113.41", base + i), (1, 0, 1)))
        .collect();
    if totals != want {
        let missing = want.keys().filter(|k| !totals.contains_key(k)).count();
        let wrong: Vec<_> = totals
            .iter()
            .filter(|(k, t)| want.get(k) != Some(t))
            .take(5)
            .collect();
        panic!(
            "{} keys recorded, {missing} missing; first wrong: {wrong:?}; log:\n{}",
            totals.len(),
            out.log
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Drops when the consumer stalls (library)
// ---------------------------------------------------------------------------------------------

/// How many flow records the kernel's flow ring holds: each takes the record plus the ring's
/// 8-byte header, rounded up to 8 bytes.
fn flow_ring_capacity() -> u64 {
    let record = std::mem::size_of::<agent_ebpf::FlowRecord>() + 8;
    let slot = record.div_ceil(8) * 8;
    u64::from(agent_ebpf::FLOW_RING_BYTES) / u64::try_from(slot).expect("small")
}

#[test]
fn stalled_consumer_drops_are_counted_and_nothing_is_lost() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("load", "scanner-0"))
        // Only the address matters: every port connected to is closed and answers with RST.
        .external("203.0.113.40", [Port::tcp(443)])
        .build()
        .expect("building the lab");
    let pod = lab.pod("load/scanner-0");
    // 1.5 ring capacities of new keys (one push each) plus margin: the stalled ring overflows,
    // while the kernel map keeps every key.
    let capacity = flow_ring_capacity();
    let keys = capacity * 3 / 2 + 1_000;
    let base: u16 = 20_000;
    assert!(u64::from(base) + keys <= 65_535, "ports fit");
    assert!(
        keys < u64::from(agent_ebpf::FLOWS_MAX_ENTRIES),
        "the map holds every key"
    );
    let keys_arg = keys.to_string();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let config = CaptureConfig::new(lab.cgroup_root());
        let mut capture = Capture::start(&config).expect("Capture::start on the lab root");
        // Nobody reads while the pod connects to `keys` distinct ports.
        let out = client(
            pod,
            &[
                "tcp",
                "203.0.113.40",
                &base.to_string(),
                "--count",
                &keys_arg,
                "--port-span",
                &keys_arg,
                "--timeout-ms",
                "2000",
            ],
        );
        assert_eq!(
            out.count("failed"),
            keys,
            "every port is closed: {}",
            out.stdout
        );
        capture.detach().expect("detach");

        let mut agg = Aggregator::new(config.refresh, capture.clock());
        let mut delivered = 0u64;
        while let Some(event) = capture.try_next_event().expect("draining the rings") {
            match event {
                CaptureEvent::Flow(sample) => {
                    delivered += 1;
                    agg.observe(&sample, SampleSource::Ring);
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
        let counters = capture.counters().expect("kernel counters");
        let produced = counters.get(agent_ebpf::Counter::FlowProduced);
        let dropped = counters.get(agent_ebpf::Counter::FlowRingFull);
        eprintln!(
            "{keys} keys, ring capacity {capacity}: produced {produced}, delivered {delivered}, \
             dropped {dropped}"
        );
        assert!(dropped > 0, "the stalled ring must overflow: {counters:?}");
        assert!(
            delivered <= capacity,
            "{delivered} > ring capacity {capacity}"
        );
        assert_eq!(
            produced,
            delivered + dropped,
            "zero unaccounted losses: {counters:?}"
        );
        assert_eq!(counters.get(agent_ebpf::Counter::FlowMapUpdateFailed), 0);

        // The kernel map still has every count: a sweep recovers what the ring dropped.
        for sample in capture.sweep().expect("sweep") {
            agg.observe(&sample, SampleSource::Lookup);
        }
        let (mut count, mut failed) = (0u64, 0u64);
        let mut ports = BTreeSet::new();
        let dst: IpAddr = "203.0.113.40".parse().expect("address");
        for d in agg.flush() {
            assert_eq!(
                d.id.cgroup_id,
                pod.cgroup_id(),
                "only the pod made traffic: {d:?}"
            );
            assert_eq!(
                (d.id.protocol, d.id.dst),
                (agent_ebpf::PROTO_TCP, dst),
                "{d:?}"
            );
            assert!(d.first_seen <= d.last_seen, "{d:?}");
            count += d.count;
            failed += d.failed;
            ports.insert(d.id.dst_port);
        }
        assert_eq!(count, keys, "every connect counted once");
        assert_eq!(failed, keys, "every connect's failure counted");
        assert_eq!(u64::try_from(ports.len()).expect("small"), keys);
        assert_eq!(ports.first().copied(), Some(base));
    });
}

// ---------------------------------------------------------------------------------------------
// 8. Attribution through the snapshot
// ---------------------------------------------------------------------------------------------

/// Runs `lab-client <args>` in a new cgroup `dir` (created here, below the lab's root, so the
/// lab removes it) and the network namespace `netns` (a name under `/run/netns`). Returns the
/// cgroup's path as the agent reports it (relative to the mount) and the client's output.
fn run_in_new_cgroup(lab: &Lab, dir: &Path, netns: &str, args: &[&str]) -> (String, ClientOutput) {
    assert!(
        dir.starts_with(lab.cgroup_root()),
        "{} outside the lab",
        dir.display()
    );
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    let procs = OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
        .expect("open cgroup.procs");
    let netns = File::open(Path::new("/run/netns").join(netns)).expect("open netns");
    let bin = leash_lab::lab_client_path().expect("lab-client");
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null());
    let (procs_fd, netns_fd) = (procs.as_raw_fd(), netns.as_raw_fd());
    // SAFETY: only write(2) and setns(2), async-signal-safe, on fds that stay open (owned by
    // `procs` and `netns`) until the child is spawned. The cgroup is joined first, as the lab
    // does for its pods (`ip netns exec` would remount /sys).
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("running lab-client");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("lab-client {args:?} printed no JSON: {stdout}"));
    let rel = dir
        .strip_prefix(lab.cgroup_mount())
        .expect("below the mount");
    let output = ClientOutput {
        status: out.status,
        json,
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        output.success(),
        "lab-client {args:?} in {}: {}\n{}",
        dir.display(),
        output.stdout,
        output.stderr
    );
    (format!("/{}", rel.display()), output)
}

/// A process in the lab's cgroup tree but in no pod: `<lab root>/system.slice/<unit>`, in the
/// lab's node network namespace.
fn run_outside_pods(lab: &Lab, args: &[&str]) -> (String, ClientOutput) {
    let dir = lab
        .cgroup_root()
        .join("system.slice/leash-e2e-probe.service");
    run_in_new_cgroup(lab, &dir, lab.node_netns(), args)
}

/// Runs `lab-client <args>` in a new container of `pod` (a sibling scope of its first
/// container, as after a container restart), in the pod's network namespace.
fn run_in_new_container(lab: &Lab, pod: &Pod, id: u8, args: &[&str]) -> (String, ClientOutput) {
    let slice = pod.cgroup_path().parent().expect("pod slice");
    let container_id = format!("{id:02x}").repeat(32);
    let dir = slice.join(format!("cri-containerd-{container_id}.scope"));
    run_in_new_cgroup(lab, &dir, pod.netns(), args)
}

/// Containers that start while the agent runs (a restart, a rollout, several pods scheduled
/// at once) are attributed to their pods from their very first event, even when they start
/// close together.
#[test]
fn containers_started_while_running_are_attributed_from_their_first_event() {
    if !leash_lab::require_privileged() {
        return;
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("shop", "alpha-0"))
        .pod(PodSpec::new("shop", "beta-0"))
        .external("203.0.113.10", [Port::tcp(443)])
        .dns(DnsConfig::new().with_stripe_example())
        .build()
        .expect("building the lab");
    let vip4 = DNS_VIP_V4.to_string();
    let agent = Agent::start(&lab);

    // Each new container resolves a name first, then connects to the answer.
    let dns = ["dns", vip4.as_str(), "api.stripe.test", "A"];
    let connect = ["tcp", "203.0.113.10", "443"];
    let mut containers = Vec::new();
    for (i, key) in ["shop/alpha-0", "shop/beta-0"].into_iter().enumerate() {
        let pod = lab.pod(key);
        let id = u8::try_from(0xa0 + i).expect("small");
        let (cgroup, _) = run_in_new_container(&lab, pod, id, &dns);
        run_in_new_container(&lab, pod, id, &connect);
        containers.push((pod, cgroup));
    }

    let out = agent.stop();
    let extra: Vec<(&str, &Pod)> = containers.iter().map(|(p, c)| (c.as_str(), *p)).collect();
    out.assert_attribution_with(&lab, &extra);
    let v4: IpAddr = DNS_VIP_V4.into();
    for (pod, cgroup) in &containers {
        assert_eq!(
            out.dns_of(cgroup),
            vec![DnsSummary::new(
                "api.stripe.test.",
                "A",
                v4,
                &stripe_chain()
            )],
            "the new container's DNS answer, attributed to {}; all records: {:#?}",
            pod.key(),
            out.records
        );
        assert_eq!(
            out.totals(cgroup),
            BTreeMap::from([
                (udp(&vip4, 53), (1, 0, 0)),
                (tcp("203.0.113.10", 443), (1, 1, 0))
            ]),
            "{cgroup}"
        );
        for f in out.flows_of(cgroup, tcp("203.0.113.10", 443)) {
            assert_eq!(
                f.names,
                names(&["api.stripe.test", "edge.stripe.test"]),
                "{f:?}"
            );
        }
    }
    let unresolved: Vec<&Record> = out
        .records
        .iter()
        .filter(|r| match r {
            Record::Flow(f) => !f.cgroup.starts_with('/'),
            Record::Dns(d) => !d.cgroup.starts_with('/'),
        })
        .collect();
    assert!(unresolved.is_empty(), "unresolved cgroups: {unresolved:#?}");
}

#[test]
fn pods_of_every_cgroup_shape_are_attributed_through_the_snapshot() {
    if !leash_lab::require_privileged() {
        return;
    }
    let shapes = [
        PodSpec::new("shop", "sd-burstable-1"),
        PodSpec::new("shop", "sd-guaranteed-1").qos(Qos::Guaranteed),
        PodSpec::new("shop", "sd-besteffort-crio-1")
            .qos(Qos::BestEffort)
            .runtime(Runtime::Crio),
        PodSpec::new("batch", "sd-docker-1").runtime(Runtime::Docker),
        PodSpec::new("legacy", "cgfs-burstable-1").cgroup_driver(CgroupDriver::Cgroupfs),
        PodSpec::new("legacy", "cgfs-guaranteed-1")
            .cgroup_driver(CgroupDriver::Cgroupfs)
            .qos(Qos::Guaranteed),
        PodSpec::new("legacy", "cgfs-besteffort-1")
            .cgroup_driver(CgroupDriver::Cgroupfs)
            .qos(Qos::BestEffort),
        PodSpec::new("monitoring", "node-exporter-x7").host_network(),
    ];
    let mut builder = Lab::builder().external("203.0.113.10", [Port::tcp(443)]);
    for spec in shapes {
        builder = builder.pod(spec);
    }
    let lab = builder.build().expect("building the lab");
    let agent = Agent::start(&lab);

    // A distinct count per pod, so a mix-up cannot go unnoticed.
    let mut want = BTreeMap::new();
    for (i, pod) in lab.pods().iter().enumerate() {
        let n = u64::try_from(i).expect("small") + 1;
        let out = client_ok(
            pod,
            &["tcp", "203.0.113.10", "443", "--count", &n.to_string()],
        );
        assert_eq!(out.count("connected"), n);
        want.insert(pod.cgroup_rel().to_owned(), n);
    }
    let (outside, out) = run_outside_pods(&lab, &["tcp", "203.0.113.10", "443", "--count", "20"]);
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    want.insert(outside.clone(), 20);
    let snapshot = leash_records::snapshot::load_path(&agent.snapshot_path()).expect("snapshot");

    let out = agent.stop();
    out.assert_attribution(&lab);
    let got: BTreeMap<String, u64> = out
        .flow_cgroups()
        .into_iter()
        .map(|cg| {
            let totals = out.totals(&cg);
            assert_eq!(totals.len(), 1, "{cg}: {totals:?}");
            let t = totals
                .get(&tcp("203.0.113.10", 443))
                .copied()
                .unwrap_or_default();
            assert_eq!(t.0, t.1, "{cg}: every connect established: {t:?}");
            (cg, t.0)
        })
        .collect();
    assert_eq!(got, want, "log:\n{}", out.log);

    // Pod fields are the snapshot's: uid, namespace and name of the pod with that uid.
    for pod in lab.pods() {
        let meta = snapshot
            .pods
            .iter()
            .map(|p| &p.metadata)
            .find(|m| m.uid.as_deref() == Some(pod.uid()))
            .unwrap_or_else(|| panic!("{} not in the snapshot", pod.key()));
        let from_snapshot = PodRef {
            uid: pod.uid().to_owned(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        };
        for f in out.flows().filter(|f| f.cgroup == pod.cgroup_rel()) {
            assert_eq!(
                f.pod.as_ref(),
                Some(&from_snapshot),
                "{}: {f:?}",
                pod.cgroup_rel()
            );
        }
    }
    // The process outside any pod keeps its cgroup path and has no pod.
    let outside_flows = out
        .flows()
        .filter(|f| f.cgroup == outside)
        .collect::<Vec<_>>();
    assert!(!outside_flows.is_empty());
    assert!(
        outside_flows.iter().all(|f| f.pod.is_none()),
        "{outside_flows:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 9. Hostile DNS answers, through a real `leash serve`
// ---------------------------------------------------------------------------------------------

/// How long `leash serve` may take to report ready.
const SERVE_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `leash serve --insecure` on free loopback ports, storing into a temporary SQLite
/// file, with the lab's snapshot as its cluster. Killed on drop.
struct Serve {
    child: Option<Child>,
    grpc: SocketAddr,
    http: SocketAddr,
    /// `--ui-listen`: the `/v1` API.
    ui: SocketAddr,
    dir: tempfile::TempDir,
}

impl Serve {
    fn start(lab: &Lab) -> Self {
        let leash = leash_lab::leash_path().expect("finding or building `leash`");
        let dir = tempfile::tempdir().expect("tempdir");
        let snapshot = dir.path().join("snapshot.yaml");
        lab.write_snapshot(&snapshot)
            .expect("writing the lab snapshot");
        let (grpc, http, ui) = (
            free_loopback_port(),
            free_loopback_port(),
            free_loopback_port(),
        );
        let log = File::create(dir.path().join("serve.log")).expect("creating serve.log");
        let child = Command::new(leash)
            .arg("serve")
            .arg("--insecure")
            .arg("--listen")
            .arg(grpc.to_string())
            .arg("--http")
            .arg(http.to_string())
            .arg("--ui-listen")
            .arg(ui.to_string())
            .arg("--store")
            .arg(dir.path().join("leash.db"))
            .arg("--cluster")
            .arg(&snapshot)
            .env("LEASH_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning leash serve");
        let mut serve = Self {
            child: Some(child),
            grpc,
            http,
            ui,
            dir,
        };
        let deadline = Instant::now() + SERVE_READY_TIMEOUT;
        loop {
            if serve
                .get_on(serve.http, "/readyz")
                .is_some_and(|(status, _)| status == 200)
            {
                return serve;
            }
            let exited = serve
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "leash serve not ready within {SERVE_READY_TIMEOUT:?} (exit {exited:?}); log:\n{}",
                serve.log()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The agent's `--recommender` arguments.
    fn agent_args(&self) -> [String; 3] {
        [
            "--recommender".to_owned(),
            format!("http://{}", self.grpc),
            "--insecure".to_owned(),
        ]
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// `GET path` on the `/v1` API (the UI listener): status and body, `None` when it does
    /// not answer.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        self.get_on(self.ui, path)
    }

    /// `GET path` on `addr`. HTTP/1.0, so that the body is never chunked: it ends when the
    /// server closes the connection.
    fn get_on(&self, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_owned()))
    }

    /// The stored destinations of `pod`'s workload (its namespace has no other workload).
    fn destinations(&self, pod: &Pod) -> Vec<serde_json::Value> {
        let (status, body) = self.get("/v1/workloads").expect("GET /v1/workloads");
        assert_eq!(status, 200, "/v1/workloads: {body}");
        let list: Vec<serde_json::Value> = serde_json::from_str(&body).expect("workloads JSON");
        let Some(w) = list.iter().find(|w| w["namespace"] == pod.namespace()) else {
            return Vec::new();
        };
        let path = format!(
            "/v1/namespaces/{}/workloads/{}/{}/destinations",
            pod.namespace(),
            w["kind"].as_str().expect("kind"),
            w["name"].as_str().expect("name")
        );
        let (status, body) = self.get(&path).expect("GET destinations");
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("destinations JSON")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The stored destination `dst:port`, if any.
fn stored<'a>(
    list: &'a [serde_json::Value],
    dst: &str,
    port: u16,
) -> Option<&'a serde_json::Value> {
    list.iter().find(|d| d["dst"] == dst && d["port"] == port)
}

/// A pod answers itself over loopback (from port 53, in its own network namespace) with an A
/// record owned by the root name `.`, then with 2,000 distinct names for one address. Before the
/// fix, the first became the name `""` in a flow record, which `leash serve` refuses, and the
/// agent resent that batch forever: nothing more from the node was stored. Now the root-owned
/// name and the flood are cut in the agent and counted on `/metrics`, and the attacker's later
/// flows and another pod's flows are stored by a real `leash serve`.
#[test]
fn hostile_dns_answers_are_cut_and_the_node_keeps_delivering() {
    if !leash_lab::require_privileged() {
        return;
    }
    const FLOOD: u64 = 2_000;
    let lab = Lab::builder()
        .pod(PodSpec::new("hostile", "attacker-0"))
        .pod(PodSpec::new("shop", "cart-0"))
        .external("203.0.113.10", [Port::tcp(443)])
        .external("203.0.113.11", [Port::tcp(443)])
        .dns(DnsConfig::new().with_stripe_example())
        .build()
        .expect("building the lab");
    let attacker = lab.pod("hostile/attacker-0");
    let cart = lab.pod("shop/cart-0");
    let serve = Serve::start(&lab);
    let recommender = serve.agent_args();
    let extra: Vec<&str> = recommender.iter().map(String::as_str).collect();
    let agent = Agent::start_with(
        &lab,
        &Options {
            metrics: true,
            extra: &extra,
            ..Options::default()
        },
    );
    let wait = Duration::from_secs(30);

    // 1. The root-owned answer, then a flow to its address.
    let out = client_ok(attacker, &["dns-self", "root-owned", "203.0.113.11"]);
    assert_eq!(out.json["received"], 1, "{}", out.stdout);
    let skipped = "leash_agent_dns_names_skipped_total{reason=\"empty\"}";
    assert_eq!(
        agent.wait_metric(skipped, wait, |v| v >= 1.0),
        1.0,
        "log:\n{}",
        agent.log()
    );
    client_ok(attacker, &["tcp", "203.0.113.11", "443", "--count", "2"]);
    // Let that flow's record go out (and, before the fix, be refused) before the rest.
    thread::sleep(FLUSH * 3);

    // 2. The flood of names for the same address, then more flows to it.
    let count = FLOOD.to_string();
    let out = client_ok(
        attacker,
        &["dns-self", "flood", "203.0.113.11", "--count", &count],
    );
    assert_eq!(out.json["received"], FLOOD, "{}", out.stdout);
    let evicted = "leash_agent_dns_names_evicted_total";
    assert_eq!(
        agent.wait_metric(evicted, wait, |v| v >= (FLOOD - 16) as f64),
        (FLOOD - 16) as f64,
        "all but 16 names evicted; log:\n{}",
        agent.log()
    );
    client_ok(attacker, &["tcp", "203.0.113.11", "443", "--count", "3"]);

    // 3. Another pod, as usual.
    let vip4 = DNS_VIP_V4.to_string();
    query(cart, &[&vip4, "api.stripe.test", "A"]);
    client_ok(cart, &["tcp", "203.0.113.10", "443", "--count", "2"]);

    assert_eq!(
        agent.metric("leash_agent_dns_answers_cut_total{cause=\"invalid_name\"}"),
        Some(1.0)
    );
    assert_eq!(agent.metric(skipped), Some(1.0));
    let out = agent.stop();
    out.assert_attribution(&lab);

    // What the agent wrote: every name valid, at most 16 per record; the last record to the
    // flooded address has the first name asked for and the 15 most recent.
    for f in out.flows() {
        assert!(f.names.len() <= 16, "{f:?}");
        for n in &f.names {
            assert!(leash_records::names::dns_name(n).is_ok(), "{n:?} in {f:?}");
        }
    }
    for d in out.dns() {
        assert!(checked_name(&d.query).is_ok(), "{d:?}");
        for a in &d.answers {
            assert!(checked_name(&a.name).is_ok(), "{d:?}");
        }
    }
    let flooded = out.flows_of(attacker.cgroup_rel(), tcp("203.0.113.11", 443));
    let last = flooded.last().expect("attacker flows to 203.0.113.11");
    let mut want: Vec<String> = std::iter::once(0)
        .chain(FLOOD - 15..FLOOD)
        .map(|i| format!("n{i}.flood.lab.test"))
        .collect();
    want.sort();
    assert_eq!(last.names, want, "log:\n{}", out.log);
    assert_eq!(
        out.totals(attacker.cgroup_rel())[&tcp("203.0.113.11", 443)],
        (5, 5, 0)
    );

    // What `leash serve` stored: the attacker's flows before and after the answers, and the
    // other pod's.
    let deadline = Instant::now() + wait;
    let (hostile, shop) = loop {
        let (hostile, shop) = (serve.destinations(attacker), serve.destinations(cart));
        let done = stored(&hostile, "203.0.113.11", 443).is_some_and(|d| d["count"] == 5)
            && stored(&shop, "203.0.113.10", 443).is_some_and(|d| d["count"] == 2);
        if done || Instant::now() >= deadline {
            break (hostile, shop);
        }
        thread::sleep(Duration::from_millis(200));
    };
    let flood = stored(&hostile, "203.0.113.11", 443).unwrap_or_else(|| {
        panic!(
            "attacker's flows not stored: {hostile:?}\nagent log:\n{}\nserve log:\n{}",
            out.log,
            serve.log()
        )
    });
    assert_eq!(flood["count"], 5, "{flood}");
    let names = flood["names"].as_array().expect("names");
    assert!(names.len() <= 16, "{flood}");
    let cart_flow = stored(&shop, "203.0.113.10", 443).unwrap_or_else(|| {
        panic!(
            "the other pod's flows not stored: {shop:?}\nagent log:\n{}\nserve log:\n{}",
            out.log,
            serve.log()
        )
    });
    assert_eq!(cart_flow["count"], 2, "{cart_flow}");
    assert_eq!(
        cart_flow["names"],
        serde_json::json!(["api.stripe.test", "edge.stripe.test"])
    );
}
