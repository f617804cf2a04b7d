//! `lab-demo`: the whole leash loop on one machine, on the demo shop (`leash_lab::shop`).
//!
//! ```text
//! lab-demo [--out DIR] [--leash BIN] [--agent BIN] [--rounds N] [--no-serve] [--restart-agent]
//! ```
//! Steps, each failing with a message that names it and shows the failing command's stderr:
//! 1. start the shop lab and write `DIR/cluster.yaml`;
//! 2. `leash certs` into `DIR/certs`, then `leash serve` on free loopback ports with its SQLite
//!    store at `DIR/leash.db`, and wait for `/readyz`;
//! 3. run `leash-agent` on the lab's cgroup, writing `DIR/flows.jsonl` and streaming over mTLS to
//!    `leash serve`; wait until it captures;
//! 4. generate the shop's traffic, then stop the agent with SIGTERM (it flushes and waits for
//!    acknowledgements);
//! 5. write `DIR/probes.jsonl`, flows the shop never made;
//! 6. `leash recommend --store DIR/leash.db` into `DIR/policies` (policies, and per namespace
//!    REPORT.md and evidence.json, indexed by `DIR/policies/REPORT.md`);
//! 7. `leash audit` of `DIR/flows.jsonl` (every flow must be allowed) and of `DIR/probes.jsonl`
//!    (every probe must be denied), as JSON lines in `DIR/audit-flows.jsonl` and
//!    `DIR/audit-probes.jsonl`; then the guardrails, first in a rollout (`guardrails`): `leash
//!    guardrails` defers the namespaces not locked down yet and its diff breaks nothing; over
//!    the proposal nothing is deferred and the final state allows every observed flow;
//! 8. lock down (`lockdown`): apply the proposal to the snapshot, make one new call, then
//!    `leash rollout status`, `leash recommend --previous` and `leash diff` must show exactly it;
//! 9. the first `leash serve` stops: `DIR/leash.db` is the demo's store, what `DIR/policies`
//!    was made from; the later steps work on a copy, `DIR/leash-loop.db` (`map`); the loop
//!    (`pull_request`): an alert on the new call opens a pull request;
//! 10. a name moves (`names`): `api.stripe.test` answers a new address; drift is reported
//!     before payment connects to it, the Cilium output names the name, the report shows
//!     its churn;
//! 11. print a summary table and stop `leash serve`;
//! 12. the map (`map`): `leash serve` over `DIR/leash.db` and `DIR/cluster.yaml`, headless
//!     Chromium on its UI: `DIR/map.png` and the nodes it drew, `DIR/map-nodes.txt` (skipped
//!     without `chromedriver` unless `LEASH_REQUIRE_BROWSER=1`).
//!
//! `--restart-agent` stops the agent after half of the rounds and starts a new one for the rest
//! (its records are appended to `DIR/flows.jsonl`), to show that counts stay exact across an
//! agent restart. `--no-serve` skips certificates and `leash serve`: the agent only writes `DIR/flows.jsonl` and
//! `leash recommend` reads it with `--flows`; leash has no command that imports record files into a store,
//! so there is no `DIR/leash.db` and no map then. `leash` and `leash-agent` are found next to this
//! binary unless given. Exit status 0 when every check passed, 1 otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod guardrails;
mod lockdown;
mod map;
mod names;
mod pull_request;

use leash_lab::shop::{self, Shop};
use leash_records::error::Chain;
use serde_json::Value;

/// How long `leash serve` may take to report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to load and attach its programs.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the agent may take to flush and get its last batches acknowledged after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for any one foreground command (certs, recommend, audit).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The agent stops by itself after this long, should the demo die without stopping it.
const AGENT_SAFETY_DURATION: &str = "120s";
/// The client name the agent's certificate carries: the node name it reports.
const CLIENT_NAME: &str = shop::NODE_NAME;

const USAGE: &str = "usage: lab-demo [--out DIR] [--leash BIN] [--agent BIN] [--rounds N] [--no-serve] [--restart-agent]";

struct Opts {
    out: PathBuf,
    leash: Option<PathBuf>,
    agent: Option<PathBuf>,
    rounds: u32,
    serve: bool,
    restart_agent: bool,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Opts, String> {
    let mut o = Opts {
        out: PathBuf::from("out"),
        leash: None,
        agent: None,
        rounds: 3,
        serve: true,
        restart_agent: false,
    };
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--out" => o.out = PathBuf::from(value()?),
            "--leash" => o.leash = Some(PathBuf::from(value()?)),
            "--agent" => o.agent = Some(PathBuf::from(value()?)),
            "--rounds" => {
                let v = value()?;
                o.rounds = v
                    .parse()
                    .ok()
                    .filter(|r| (1..=20).contains(r))
                    .ok_or_else(|| format!("--rounds must be 1..=20, got {v:?}"))?;
            }
            "--no-serve" => o.serve = false,
            "--restart-agent" => o.restart_agent = true,
            "--help" | "-h" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(o)
}

/// A failed step: its name and what went wrong.
#[derive(Debug)]
struct Failure {
    step: &'static str,
    message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step `{}` failed: {}", self.step, self.message)
    }
}

type Result<T, E = Failure> = std::result::Result<T, E>;

fn fail(step: &'static str, message: impl std::fmt::Display) -> Failure {
    Failure {
        step,
        message: message.to_string(),
    }
}

/// A command line for messages.
fn cmdline(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a foreground command did.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion (bounded by [`COMMAND_TIMEOUT`]), capturing its output.
fn run(step: &'static str, cmd: &mut Command) -> Result<Ran> {
    let line = cmdline(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(step, format!("cannot start `{line}`: {}", Chain(&e))))?;
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = reader(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let err = reader(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let status = wait_bounded(&mut child, COMMAND_TIMEOUT);
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(fail(
            step,
            format!("`{line}` did not finish within {COMMAND_TIMEOUT:?}; killed"),
        ));
    };
    Ok(Ran {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs `cmd` and requires exit status 0.
fn run_ok(step: &'static str, cmd: &mut Command) -> Result<Ran> {
    let line = cmdline(cmd);
    let ran = run(step, cmd)?;
    if !ran.status.success() {
        return Err(fail(
            step,
            format!(
                "`{line}` exited with {}; stderr:\n{}",
                ran.status,
                ran.stderr.trim_end()
            ),
        ));
    }
    Ok(ran)
}

fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => return None,
        }
    }
}

/// A background process whose stderr goes to a log file. Killed at Drop if still running, so a
/// failing demo leaves nothing behind.
struct Background {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    log_thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    /// Starts `cmd`; returns it and a channel that receives once a stderr line contains `marker`
    /// (never, without a marker).
    fn start(
        step: &'static str,
        name: &'static str,
        cmd: &mut Command,
        log: PathBuf,
        marker: Option<&'static str>,
    ) -> Result<(Self, mpsc::Receiver<()>)> {
        let line = cmdline(cmd);
        let mut file = std::fs::File::create(&log).map_err(|e| {
            fail(
                step,
                format!("creating {}: {e}", log.display(), e = Chain(&e)),
            )
        })?;
        let _ = writeln!(file, "$ {line}");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| fail(step, format!("cannot start `{line}`: {}", Chain(&e))))?;
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take();
        let log_thread = std::thread::spawn(move || {
            let Some(stderr) = stderr else { return };
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if marker.is_some_and(|m| line.contains(m)) {
                    let _ = tx.send(());
                }
                let _ = writeln!(file, "{line}");
            }
        });
        Ok((
            Self {
                name,
                child: Some(child),
                log,
                log_thread: Some(log_thread),
            },
            rx,
        ))
    }

    /// Its log so far (for error messages), at most the last 40 lines.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "last lines of {} ({}):\n{}",
            self.log.display(),
            self.name,
            lines[from..].join("\n")
        )
    }

    /// Whether it already exited (and how).
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for it to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = wait_bounded(self.child.as_mut()?, timeout);
        if status.is_some() {
            self.child = None;
            if let Some(t) = self.log_thread.take() {
                let _ = t.join();
            }
        }
        status
    }

    /// Sends SIGTERM and waits up to `timeout` for a successful exit.
    fn stop(&mut self, step: &'static str, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(fail(step, format!("{} is not running", self.name)));
        };
        if let Ok(pid) = i32::try_from(child.id())
            && child.try_wait().ok().flatten().is_none()
        {
            // SAFETY: kill(2) on our own child, not yet reaped, so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let status = wait_bounded(&mut child, timeout);
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
        match status {
            Some(s) if s.success() => Ok(s),
            Some(s) => Err(fail(
                step,
                format!("{} exited with {s}; {}", self.name, self.log_tail()),
            )),
            None => Err(fail(
                step,
                format!(
                    "{} did not exit within {timeout:?} of SIGTERM; killed; {}",
                    self.name,
                    self.log_tail()
                ),
            )),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits up to `timeout` for `/readyz` on `http` to answer 200, failing `step` when the server
/// exits first or never becomes ready.
fn wait_ready(
    step: &'static str,
    bg: &mut Background,
    http: SocketAddr,
    timeout: Duration,
) -> Result<()> {
    poll_until(
        step,
        bg,
        timeout,
        &format!("answer 200 from http://{http}/readyz"),
        || (http_status(http, "/readyz") == Some(200)).then_some(()),
    )
}

/// Calls `check` every 100 ms until it gives a value, failing `step` when `bg` exits first or
/// `timeout` passes (the message says what was awaited, `what`, and shows `bg`'s log).
fn poll_until<T>(
    step: &'static str,
    bg: &mut Background,
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Ok(v);
        }
        if let Some(status) = bg.exited() {
            return Err(fail(
                step,
                format!("{} exited with {status}; {}", bg.name, bg.log_tail()),
            ));
        }
        if Instant::now() >= deadline {
            return Err(fail(
                step,
                format!("no {what} within {timeout:?}; {}", bg.log_tail()),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free port on 127.0.0.1 (bound and released; the demo owns the machine's loopback briefly).
fn free_port(step: &'static str) -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| fail(step, format!("finding a free loopback port: {}", Chain(&e))))
}

/// The status code of `GET path` on `addr`, over plain HTTP/1.1.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The body of a `200` answer to `GET path` on `addr`, over plain HTTP/1.1 (`Connection:
/// close`, so the body runs to the end of the stream).
fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.take(16 << 20).read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.split_whitespace()
        .nth(1)
        .is_some_and(|code| code == "200")
        .then(|| body.to_owned())
}

/// Finds a binary: the flag's value, else next to this executable.
fn locate(step: &'static str, given: Option<&PathBuf>, name: &str, flag: &str) -> Result<PathBuf> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(p.clone())
        } else {
            Err(fail(step, format!("{flag} {}: no such file", p.display())))
        };
    }
    let exe =
        std::env::current_exe().map_err(|e| fail(step, format!("current_exe: {}", Chain(&e))))?;
    let candidate = exe.with_file_name(name);
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(fail(
            step,
            format!(
                "{name} not found at {} (build it with `cargo build -p {} --bins`, or pass {flag} BIN)",
                candidate.display(),
                if name == "leash" {
                    "leash"
                } else {
                    "leash-agent"
                },
            ),
        ))
    }
}

/// One audit verdict line of `leash audit --format json`.
#[derive(Debug)]
struct Verdict {
    source: String,
    protocol: String,
    dst: String,
    dst_port: u64,
    allowed: bool,
}

fn parse_audit(step: &'static str, json_lines: &str) -> Result<Vec<Verdict>> {
    json_lines
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l).map_err(|e| {
                fail(
                    step,
                    format!("audit output line {}: {e}: {l}", i + 1, e = Chain(&e)),
                )
            })?;
            Ok((i, l, v))
        })
        .filter(|r| !matches!(r, Ok((_, _, v)) if v["kind"] == "dns-drift"))
        .map(|r| {
            let (i, l, v) = r?;
            if v["kind"] != "flow" {
                return Err(fail(
                    step,
                    format!(
                        "audit output line {}: not a flow or dns-drift line: {l}",
                        i + 1
                    ),
                ));
            }
            let verdict = v["verdict"].as_str().unwrap_or_default();
            if verdict != "allow" && verdict != "deny" {
                return Err(fail(
                    step,
                    format!("audit output line {}: no verdict: {l}", i + 1),
                ));
            }
            Ok(Verdict {
                source: format!(
                    "{}/{}",
                    v["source"]["namespace"].as_str().unwrap_or_default(),
                    v["source"]["pod"].as_str().unwrap_or_default()
                ),
                protocol: v["protocol"].as_str().unwrap_or_default().to_owned(),
                dst: v["dst"].as_str().unwrap_or_default().to_owned(),
                dst_port: v["dst_port"].as_u64().unwrap_or_default(),
                allowed: verdict == "allow",
            })
        })
        .collect()
}

/// Per-workload counts for the summary.
#[derive(Default)]
struct Row {
    flows: u64,
    dns: u64,
    destinations: BTreeSet<String>,
    policy: Option<String>,
    allowed: usize,
    probes: usize,
    probes_denied: usize,
}

/// The workload name of a pod key, from the shop's table.
fn workload_of(pod: &str) -> String {
    shop::WORKLOADS
        .iter()
        .find(|(k, _, _)| *k == pod)
        .map_or_else(
            || pod.to_owned(),
            |(k, _, name)| format!("{}/{name}", k.split('/').next().unwrap_or_default()),
        )
}

/// Counts records per workload from the agent's output.
fn count_records(rows: &mut BTreeMap<String, Row>, flows: &str) -> (usize, usize) {
    let (mut nflow, mut ndns) = (0, 0);
    for l in flows.lines() {
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            continue;
        };
        let pod = format!(
            "{}/{}",
            v["pod"]["namespace"].as_str().unwrap_or("-"),
            v["pod"]["name"].as_str().unwrap_or("-")
        );
        let row = rows.entry(workload_of(&pod)).or_default();
        match v["kind"].as_str() {
            Some("flow") => {
                nflow += 1;
                row.flows += v["count"].as_u64().unwrap_or(0);
                row.destinations.insert(format!(
                    "{}:{}/{}",
                    v["dst"].as_str().unwrap_or("?"),
                    v["dst_port"],
                    v["protocol"].as_str().unwrap_or("?")
                ));
            }
            Some("dns") => {
                ndns += 1;
                row.dns += 1;
            }
            _ => {}
        }
    }
    (nflow, ndns)
}

/// The policy files below `dir` (`<ns>/<name>.yaml`), as `ns/name`.
fn policy_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for ns in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !ns.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "yaml")
                && let Some(stem) = p.file_stem()
            {
                out.push(format!(
                    "{}/{}",
                    ns.file_name().to_string_lossy(),
                    stem.to_string_lossy()
                ));
            }
        }
    }
    out.sort();
    out
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn demo(o: &Opts) -> Result<()> {
    let t0 = Instant::now();
    let mut timings: Vec<(&str, Duration)> = Vec::new();
    let mut lap = {
        let mut last = Instant::now();
        move |name: &'static str, timings: &mut Vec<(&str, Duration)>| {
            timings.push((name, last.elapsed()));
            last = Instant::now();
        }
    };

    let leash = locate("locate binaries", o.leash.as_ref(), "leash", "--leash")?;
    let agent_bin = locate(
        "locate binaries",
        o.agent.as_ref(),
        "leash-agent",
        "--agent",
    )?;
    leash_lab::check_privileged().map_err(|e| fail("check privileges", Chain(&e)))?;
    let out = &o.out;
    std::fs::create_dir_all(out).map_err(|e| {
        fail(
            "prepare out",
            format!("{}: {e}", out.display(), e = Chain(&e)),
        )
    })?;
    for stale in [
        "cluster.yaml",
        "flows.jsonl",
        "probes.jsonl",
        "REPORT.md",
        "leash.db",
        "leash.db-wal",
        "leash.db-shm",
        "leash-loop.db",
        "leash-loop.db-wal",
        "leash-loop.db-shm",
        "map.png",
        "map-nodes.txt",
        "audit-flows.jsonl",
        "audit-probes.jsonl",
        "flows-2.jsonl",
        "flows-new.jsonl",
        "cluster-locked.yaml",
        "rollout.json",
        "diff.jsonl",
    ] {
        let _ = std::fs::remove_file(out.join(stale));
    }
    let _ = std::fs::remove_dir_all(out.join("policies"));
    let _ = std::fs::remove_dir_all(out.join("certs"));

    // 1. The shop.
    eprintln!("== starting the shop lab");
    let shop = Shop::start().map_err(|e| fail("start the shop", Chain(&e)))?;
    let lab = shop.lab();
    let cluster = out.join("cluster.yaml");
    lab.write_snapshot(&cluster)
        .map_err(|e| fail("write the cluster snapshot", Chain(&e)))?;
    eprintln!(
        "   {} pods in namespaces shop and data, node {}; snapshot {}",
        lab.pods().len(),
        lab.node_name(),
        cluster.display()
    );
    lap("lab", &mut timings);

    // 2. Certificates and leash serve.
    let certs = out.join("certs");
    let mut serve = None;
    let mut grpc = None;
    if o.serve {
        eprintln!("== leash certs + leash serve (mTLS, SQLite)");
        run_ok(
            "generate certificates",
            Command::new(&leash)
                .arg("certs")
                .arg("--out")
                .arg(&certs)
                .args(["--server-name", "localhost", "--server-name", "127.0.0.1"])
                .args(["--client", CLIENT_NAME]),
        )?;
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port("start leash serve")?));
        let http = SocketAddr::from(([127, 0, 0, 1], free_port("start leash serve")?));
        let (mut bg, _) = Background::start(
            "start leash serve",
            "leash serve",
            Command::new(&leash)
                .arg("serve")
                .arg("--listen")
                .arg(listen.to_string())
                .arg("--http")
                .arg(http.to_string())
                .arg("--ui-listen")
                .arg(
                    SocketAddr::from(([127, 0, 0, 1], free_port("start leash serve")?)).to_string(),
                )
                .arg("--store")
                .arg(out.join("leash.db"))
                .arg("--cluster")
                .arg(&cluster)
                .arg("--tls-cert")
                .arg(certs.join("server.pem"))
                .arg("--tls-key")
                .arg(certs.join("server-key.pem"))
                .arg("--tls-client-ca")
                .arg(certs.join("ca.pem"))
                .env("LEASH_LOG", "info")
                .env("NO_COLOR", "1"),
            out.join("serve.log"),
            None,
        )?;
        wait_ready("start leash serve", &mut bg, http, READY_TIMEOUT)?;
        eprintln!("   gRPC https://{listen}, HTTP http://{http} ready");
        serve = Some(bg);
        grpc = Some(listen);
        lap("serve", &mut timings);
    }

    // 3. The agent.
    eprintln!("== leash-agent on the lab's cgroup");
    let flows = out.join("flows.jsonl");
    // Streams to `plain` in plaintext when given (a later step's `leash serve --insecure`),
    // else over mTLS to the first `leash serve`, if any.
    let start_agent_to =
        |output: &Path, log: &str, plain: Option<SocketAddr>| -> Result<Background> {
            let mut cmd = Command::new(&agent_bin);
            cmd.arg("--cgroup")
                .arg(lab.cgroup_root())
                .arg("--cluster-snapshot")
                .arg(&cluster)
                .arg("--output")
                .arg(output)
                .args(["--flush-interval", "1s"])
                .args(["--duration", AGENT_SAFETY_DURATION])
                .arg("--node-name")
                .arg(lab.node_name())
                .env("LEASH_LOG", "info")
                .env("NO_COLOR", "1");
            if let Some(listen) = plain {
                cmd.arg("--recommender")
                    .arg(format!("http://{listen}"))
                    .arg("--insecure");
            } else if let Some(listen) = grpc {
                cmd.arg("--recommender")
                    .arg(format!("https://{listen}"))
                    .arg("--tls-ca")
                    .arg(certs.join("ca.pem"))
                    .arg("--tls-cert")
                    .arg(certs.join(format!("{CLIENT_NAME}.pem")))
                    .arg("--tls-key")
                    .arg(certs.join(format!("{CLIENT_NAME}-key.pem")));
            }
            let (mut agent, attached) = Background::start(
                "start leash-agent",
                "leash-agent",
                &mut cmd,
                out.join(log),
                Some("capturing"),
            )?;
            match attached.recv_timeout(ATTACH_TIMEOUT) {
                Ok(()) => Ok(agent),
                Err(mpsc::RecvTimeoutError::Timeout) => Err(fail(
                    "start leash-agent",
                    format!(
                        "it did not log `capturing` within {ATTACH_TIMEOUT:?}; {}",
                        agent.log_tail()
                    ),
                )),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Its stderr closed: it is exiting. The status follows the closed pipe shortly.
                    let status = agent.wait_exit(Duration::from_secs(5));
                    Err(fail(
                        "start leash-agent",
                        format!(
                            "it exited ({}) before capturing; {}",
                            status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string()),
                            agent.log_tail()
                        ),
                    ))
                }
            }
        };
    let start_agent = |output: &Path, log: &str| start_agent_to(output, log, None);
    let mut agent = start_agent(&flows, "agent.log")?;
    lap("agent attach", &mut timings);

    // 4. Traffic, then stop the agent (with --restart-agent: half of it, a new agent, the rest).
    let first = if o.restart_agent {
        (o.rounds / 2).max(1)
    } else {
        o.rounds
    };
    eprintln!("== the shop's traffic ({first} rounds)");
    let traffic = shop
        .traffic(first)
        .map_err(|e| fail("generate traffic", Chain(&e)))?;
    let (mut conns, mut datagrams, mut lookups) = traffic.totals();
    let mut traffic_time = traffic.elapsed;
    lap("traffic", &mut timings);
    agent.stop("stop leash-agent", STOP_TIMEOUT)?;
    if o.restart_agent {
        // A new process (new boot id) takes over; the first one flushed and was acknowledged
        // before exiting, so together they stored every event exactly once.
        let second = o.rounds.saturating_sub(first).max(1);
        eprintln!("== a new leash-agent, then {second} more rounds");
        let flows_2 = out.join("flows-2.jsonl");
        let mut agent_2 = start_agent(&flows_2, "agent-2.log")?;
        let traffic = shop
            .traffic(second)
            .map_err(|e| fail("generate traffic", Chain(&e)))?;
        let (c, d, l) = traffic.totals();
        (conns, datagrams, lookups) = (conns + c, datagrams + d, lookups + l);
        traffic_time += traffic.elapsed;
        agent_2.stop("stop the second leash-agent", STOP_TIMEOUT)?;
        // One record file for both: the contract's counts are deltas, so they still add up.
        let text = std::fs::read(&flows_2).map_err(|e| {
            fail(
                "stop the second leash-agent",
                format!("{}: {e}", flows_2.display(), e = Chain(&e)),
            )
        })?;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&flows)
            .and_then(|mut f| f.write_all(&text))
            .map_err(|e| {
                fail(
                    "stop the second leash-agent",
                    format!("{}: {e}", flows.display(), e = Chain(&e)),
                )
            })?;
        let _ = std::fs::remove_file(&flows_2);
    }
    eprintln!(
        "   {conns} TCP connections, {datagrams} UDP datagrams, {lookups} DNS lookups in {}",
        secs(traffic_time)
    );
    let flows_text = std::fs::read_to_string(&flows).map_err(|e| {
        fail(
            "stop leash-agent",
            format!("{}: {e}", flows.display(), e = Chain(&e)),
        )
    })?;
    if flows_text.trim().is_empty() {
        return Err(fail(
            "stop leash-agent",
            format!("{} is empty; {}", flows.display(), agent.log_tail()),
        ));
    }
    lap("agent stop", &mut timings);

    // 5. Probes.
    let probes_path = out.join("probes.jsonl");
    let probes = shop
        .probes(&probes_path)
        .map_err(|e| fail("write probes", Chain(&e)))?;

    // 6. Recommend.
    eprintln!("== leash recommend");
    let policies = out.join("policies");
    let mut cmd = Command::new(&leash);
    cmd.arg("recommend");
    if o.serve {
        cmd.arg("--store").arg(out.join("leash.db"));
    } else {
        cmd.arg("--flows").arg(&flows);
    }
    cmd.arg("--cluster").arg(&cluster).arg("-o").arg(&policies);
    let rec = run_ok("recommend policies", &mut cmd)?;
    if !policies.join("REPORT.md").is_file() {
        return Err(fail(
            "recommend policies",
            format!(
                "no REPORT.md in {}; stderr:\n{}",
                policies.display(),
                rec.stderr.trim_end()
            ),
        ));
    }
    let files = policy_files(&policies);
    if !files.iter().any(|f| !f.ends_with("/default-deny-egress")) {
        let source = if o.serve {
            "the store: did the agent's batches reach `leash serve`? see agent.log and serve.log"
        } else {
            "flows.jsonl"
        };
        return Err(fail(
            "recommend policies",
            format!(
                "no workload policy in {} from {source}; stderr:\n{}",
                policies.display(),
                rec.stderr.trim_end()
            ),
        ));
    }
    lap("recommend", &mut timings);

    // 7. Audits.
    eprintln!("== leash audit: observed flows, then probes");
    let audit = |what: &Path, fail_on_deny: bool, step: &'static str| -> Result<Vec<Verdict>> {
        let mut cmd = Command::new(&leash);
        cmd.arg("audit")
            .arg("--cluster")
            .arg(&cluster)
            .arg("--policies")
            .arg(&policies)
            .arg("--flows")
            .arg(what)
            .args(["--format", "json"]);
        if fail_on_deny {
            cmd.arg("--fail-on-deny");
        }
        let ran = run_ok(step, &mut cmd)?;
        parse_audit(step, &ran.stdout)
    };
    let observed = audit(&flows, true, "audit observed flows")?;
    let denied: Vec<&Verdict> = observed.iter().filter(|v| !v.allowed).collect();
    if !denied.is_empty() || observed.is_empty() {
        return Err(fail(
            "audit observed flows",
            format!(
                "{} of {} observed flows denied: {denied:?}",
                denied.len(),
                observed.len()
            ),
        ));
    }
    let probed = audit(&probes_path, false, "audit probes")?;
    write_lines(out, "audit-flows.jsonl", &observed);
    write_lines(out, "audit-probes.jsonl", &probed);
    let allowed: Vec<&Verdict> = probed.iter().filter(|v| v.allowed).collect();
    if !allowed.is_empty() || probed.len() != probes.len() {
        return Err(fail(
            "audit probes",
            format!(
                "{} of {} probes allowed (expected {} verdicts, all deny): {allowed:?}",
                allowed.len(),
                probed.len(),
                probes.len()
            ),
        ));
    }
    lap("audit", &mut timings);

    // 7b. The guardrails, first in a rollout: deferred, then over the proposal.
    let guarded = guardrails::guardrails(
        &leash,
        out,
        &shop,
        &guardrails::Inputs {
            cluster: &cluster,
            policies: &policies,
            flows: &flows,
            probes: &probes_path,
            observed: &if o.serve {
                lockdown::Observed::Store(out.join("leash.db"))
            } else {
                lockdown::Observed::Flows(vec![flows.clone()])
            },
        },
    )?;
    lap("guardrails", &mut timings);

    // 8. Lock down, then keep it true.
    let observed_in = if o.serve {
        lockdown::Observed::Store(out.join("leash.db"))
    } else {
        lockdown::Observed::Flows(vec![flows.clone()])
    };
    let initial = lockdown::read_tree("read the proposal", &policies)?;
    let pr_source = match &observed_in {
        // The loop works on a copy: DIR/leash.db stays what the proposal was made from.
        lockdown::Observed::Store(_) => pull_request::Source::Serve(out.join("leash-loop.db")),
        lockdown::Observed::Flows(files) => {
            let mut files = files.clone();
            files.push(out.join("flows-new.jsonl"));
            pull_request::Source::Flows(files)
        }
    };
    let locked = lockdown::lockdown(&leash, out, &shop, &policies, observed_in, &start_agent)?;
    lap("lockdown", &mut timings);

    // 9. The loop: an alert on the new call opens a pull request. The first serve stops
    // first: the loop's serve works on the same store.
    if let Some(mut bg) = serve.take() {
        bg.stop("stop leash serve", STOP_TIMEOUT)?;
        let step = "keep the store";
        map::checkpoint(step, &out.join("leash.db"))?;
        map::copy_store(step, &out.join("leash.db"), &out.join("leash-loop.db"))?;
    }
    let looped = pull_request::pull_request(
        &leash,
        out,
        &initial,
        &out.join("cluster-locked.yaml"),
        pr_source,
    )?;
    lap("pull request", &mut timings);

    // 10. A name moves: drift before the connection, names in the outputs.
    let names_in = if o.serve {
        names::Observed::Store(out.join("leash-loop.db"))
    } else {
        names::Observed::Flows(vec![flows.clone(), out.join("flows-new.jsonl")])
    };
    let named = names::names(
        &leash,
        out,
        &shop,
        &out.join("cluster-locked.yaml"),
        names_in,
        &start_agent_to,
    )?;
    if o.serve {
        // Its `leash serve` stopped: fold the copy's log back, one file left.
        map::checkpoint("names", &out.join("leash-loop.db"))?;
    }
    lap("names", &mut timings);

    // 11. Summary.
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    for (pod, _, _) in shop::WORKLOADS {
        rows.entry(workload_of(pod)).or_default();
    }
    let (nflow, ndns) = count_records(&mut rows, &flows_text);
    for (w, row) in &mut rows {
        let (ns, name) = w.split_once('/').unwrap_or(("", w));
        row.policy = files
            .iter()
            .find(|f| {
                *f == &format!("{ns}/{name}-egress") || f.starts_with(&format!("{ns}/{name}-"))
            })
            .cloned();
    }
    for v in &observed {
        let row = rows.entry(workload_of(&v.source)).or_default();
        row.allowed += 1;
    }
    for v in &probed {
        let row = rows.entry(workload_of(&v.source)).or_default();
        row.probes += 1;
        row.probes_denied += usize::from(!v.allowed);
    }
    if let Some(mut bg) = serve.take() {
        bg.stop("stop leash serve", STOP_TIMEOUT)?;
    }
    lap("stop", &mut timings);

    // 12. The map of the demo's store, in a browser.
    let shot = if o.serve {
        map::screenshot(&leash, out, &cluster, &out.join("leash.db"))?
    } else {
        eprintln!(
            "== no store and no map: leash has no command that imports record files into a store"
        );
        None
    };
    lap("map", &mut timings);
    print!(
        "{}",
        summary(o, &rows, (nflow, ndns), &files, &timings, t0.elapsed())
    );
    print!("{}", guardrails::summary(&guarded));
    print!("{}", lockdown_summary(&locked));
    print!("{}", loop_summary(&looped));
    print!("{}", names_summary(&named));
    print!("{}", map_summary(o, shot.as_ref()));
    Ok(())
}

fn write_lines(out: &Path, name: &str, verdicts: &[Verdict]) {
    let mut s = String::new();
    for v in verdicts {
        let _ = writeln!(
            s,
            "{}",
            serde_json::json!({"source": v.source, "protocol": v.protocol, "dst": v.dst,
                               "dst_port": v.dst_port,
                               "verdict": if v.allowed { "allow" } else { "deny" }})
        );
    }
    let _ = std::fs::write(out.join(name), s);
}

fn summary(
    o: &Opts,
    rows: &BTreeMap<String, Row>,
    (nflow, ndns): (usize, usize),
    files: &[String],
    timings: &[(&str, Duration)],
    total: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nleash demo ({}): every observed flow allowed, every probe denied\n",
        if o.serve {
            "agent -> mTLS -> leash serve -> SQLite"
        } else {
            "--no-serve: agent -> flows.jsonl"
        }
    );
    let _ = writeln!(
        s,
        "{:<16} {:>6} {:>5} {:>6}  {:<30} {:>9} {:>14}",
        "WORKLOAD", "EVENTS", "DNS", "DESTS", "POLICY", "ALLOWED", "PROBES DENIED"
    );
    for (w, r) in rows {
        let _ = writeln!(
            s,
            "{:<16} {:>6} {:>5} {:>6}  {:<30} {:>9} {:>14}",
            w,
            r.flows,
            r.dns,
            r.destinations.len(),
            r.policy.as_deref().unwrap_or("(none: no egress)"),
            r.allowed,
            format!("{}/{}", r.probes_denied, r.probes)
        );
    }
    let deny = files
        .iter()
        .filter(|f| f.ends_with("/default-deny-egress"))
        .count();
    let _ = writeln!(
        s,
        "\n{nflow} flow records and {ndns} DNS records; {} policies ({} workload, {deny} default-deny)",
        files.len(),
        files.len() - deny,
    );
    let times: Vec<String> = timings
        .iter()
        .map(|(n, d)| format!("{n} {}", secs(*d)))
        .collect();
    let _ = writeln!(s, "time: {} total ({})", secs(total), times.join(", "));
    let _ = writeln!(
        s,
        "artifacts: {0}/cluster.yaml {0}/flows.jsonl {0}/policies/ (REPORT.md) \
         {0}/cluster-locked.yaml {0}/rollout.json {0}/diff.jsonl {0}/policies.git \
         {0}/pull-request.md",
        o.out.display()
    );
    s
}

fn map_summary(o: &Opts, shot: Option<&map::Shot>) -> String {
    let out = o.out.display();
    match shot {
        Some(shot) => format!(
            "\nthe map: {out}/map.png ({} nodes; workloads {}); the store: {out}/leash.db\n  \
             again: leash serve --cluster {out}/cluster.yaml --store {out}/leash.db --insecure\n",
            shot.nodes,
            shot.workloads.join(", ")
        ),
        None if o.serve => format!(
            "\nthe store: {out}/leash.db (no screenshot: chromedriver is missing)\n  \
             again: leash serve --cluster {out}/cluster.yaml --store {out}/leash.db --insecure\n"
        ),
        None => String::new(),
    }
}

fn loop_summary(l: &pull_request::Outcome) -> String {
    let mut s = String::from("\nthe loop: ");
    match &l.alert {
        Some(a) => {
            let _ = write!(s, "alert {a}\n  -> ");
        }
        None => s.push_str("leash pr -> "),
    }
    let _ = writeln!(
        s,
        "pull request #{} \"{}\" ({} -> main; body in pull-request.md)",
        l.number, l.title, l.branch
    );
    s
}

fn names_summary(n: &names::Outcome) -> String {
    let mut s = String::from("\nA name moves:\n");
    let _ = writeln!(
        s,
        "  drift: {} ({} ms before the connection)",
        n.drift,
        n.ahead.num_milliseconds()
    );
    if let Some(a) = &n.alert {
        let _ = writeln!(s, "  alert: {a}");
    }
    let _ = writeln!(s, "  cilium: {} names the name (toFQDNs)", n.cilium_file);
    let _ = writeln!(s, "  report: {}", n.churn);
    s
}

fn lockdown_summary(l: &lockdown::Outcome) -> String {
    let mut s = String::from("\nlockdown: the proposal applied, then one new call\n");
    let phases: Vec<String> = l.phases.iter().map(|(w, p)| format!("{w} {p}")).collect();
    let _ = writeln!(s, "rollout status: {}", phases.join(", "));
    let _ = writeln!(
        s,
        "recommend --previous: changed {}",
        l.changed
            .iter()
            .map(|f| format!("{f}.yaml"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "diff applied -> proposal: {}; {} observed flow(s) change verdict, no break",
        l.reachability.join(", "),
        l.flow_changes
    );
    s
}

fn main() -> ExitCode {
    let opts = match parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("lab-demo: {e}");
            return ExitCode::from(2);
        }
    };
    match demo(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn options_parse_and_reject_bad_values() {
        let o = parse(args(&["--out", "/tmp/x", "--no-serve", "--rounds", "2"])).unwrap();
        assert_eq!(o.out, PathBuf::from("/tmp/x"));
        assert!(!o.serve);
        assert_eq!(o.rounds, 2);
        let d = parse(args(&[])).unwrap();
        assert!(d.serve);
        assert_eq!(d.out, PathBuf::from("out"));
        assert!(parse(args(&["--rounds", "0"])).is_err());
        assert!(parse(args(&["--leash"])).is_err());
        assert!(parse(args(&["--bogus"])).is_err());
    }

    #[test]
    fn audit_json_lines_parse_and_bad_lines_name_the_step() {
        let v = parse_audit(
            "audit probes",
            concat!(
                r#"{"kind":"flow","source":{"namespace":"shop","pod":"p"},"protocol":"TCP","dst":"203.0.113.10","dst_port":80,"verdict":"deny","egress":"deny","ingress":"allow","policies":[]}"#,
                "\n",
                r#"{"kind":"dns-drift","source":{"namespace":"shop","pod":"p"},"name":"a.test","address":"203.0.113.9"}"#,
            ),
        )
        .unwrap();
        assert_eq!(v.len(), 1, "drift lines are not verdicts");
        assert!(!v[0].allowed);
        assert_eq!(v[0].source, "shop/p");
        assert_eq!(v[0].dst_port, 80);
        let e =
            parse_audit("audit probes", "{\"kind\":\"flow\",\"verdict\":\"maybe\"}").unwrap_err();
        assert!(e.to_string().contains("no verdict"), "{e}");
        let e = parse_audit("audit probes", "{\"verdict\":\"allow\"}").unwrap_err();
        assert!(e.to_string().contains("not a flow"), "{e}");
        assert!(e.to_string().contains("step `audit probes` failed"), "{e}");
        assert!(parse_audit("x", "not json").is_err());
    }

    #[test]
    fn records_are_counted_per_workload() {
        let mut rows = BTreeMap::new();
        let text = format!(
            "{}\n{}\n{}\n",
            serde_json::json!({"kind":"flow","pod":{"namespace":"shop","name":shop::FRONTEND.split('/').nth(1).unwrap()},
                               "dst":"198.51.100.129","dst_port":80,"protocol":"TCP","count":4}),
            serde_json::json!({"kind":"dns","pod":{"namespace":"shop","name":shop::FRONTEND.split('/').nth(1).unwrap()}}),
            serde_json::json!({"kind":"flow","pod":null,"dst":"203.0.113.9","dst_port":1,"protocol":"UDP","count":1}),
        );
        assert_eq!(count_records(&mut rows, &text), (2, 1));
        let fe = &rows["shop/frontend"];
        assert_eq!((fe.flows, fe.dns, fe.destinations.len()), (4, 1, 1));
        assert!(rows.contains_key("-/-"));
    }
}
