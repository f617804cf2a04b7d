//! The agent runs, and captures, under exactly the capabilities its DaemonSet grants.
//!
//! The capabilities are read from the rendered manifests (`kubectl kustomize deploy/base`),
//! not written down here, so this test follows any change to the DaemonSet. The real
//! `leash-agent` runs under `setpriv` with those capabilities as its bounding, inheritable and
//! ambient sets and `no_new_privs` (the container's `allowPrivilegeEscalation: false`), on a
//! lab pod that makes TCP connections; the records must count them exactly. A control run
//! without CAP_NET_ADMIN must fail, which shows `setpriv` really restricts the agent.
//!
//! Also checked, without privileges: `leash-agent --help` knows every flag the DaemonSet
//! passes.
//!
//! Needs root, BPF and `setpriv` (util-linux): without them it skips with a reason, unless
//! `LEASH_REQUIRE_PRIVILEGED=1`, which makes it fail instead.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Container;
use leash_lab::{Lab, PodSpec, Port};
use leash_records::{Protocol, Record};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Renders `deploy/base` and returns the agent DaemonSet.
fn rendered_daemon_set() -> DaemonSet {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base");
    let kubectl = std::env::var_os("KUBECTL").unwrap_or_else(|| "kubectl".into());
    let out = Command::new(kubectl)
        .arg("kustomize")
        .arg(&base)
        .output()
        .unwrap_or_else(|e| panic!("running kubectl kustomize {}: {e}", base.display()));
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        base.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let snapshot = leash_records::snapshot::parse_str(&text, &base)
        .unwrap_or_else(|e| panic!("parsing the rendered manifests: {e}"));
    let mut sets = snapshot.daemon_sets;
    assert_eq!(sets.len(), 1, "deploy/base renders one DaemonSet");
    sets.remove(0)
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let pod = ds
        .spec
        .template
        .spec
        .as_ref()
        .expect("the DaemonSet has a pod template");
    pod.containers
        .iter()
        .find(|c| c.name == "agent")
        .expect("a container named agent")
}

/// The capabilities the DaemonSet adds, e.g. `["BPF", "NET_ADMIN", "PERFMON"]`, after checking
/// that it drops all others.
fn granted_capabilities(c: &Container) -> Vec<String> {
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .expect("the agent container sets capabilities");
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_owned()][..]),
        "drop: [ALL]"
    );
    let mut add = caps.add.clone().unwrap_or_default();
    add.sort();
    add
}

/// The bit of a capability in `/proc/<pid>/status` masks (linux/capability.h).
fn cap_bit(name: &str) -> u32 {
    match name {
        "NET_ADMIN" => 12,
        "SYS_ADMIN" => 21,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other} is not known to this test"),
    }
}

/// `setpriv` arguments confining a process to `caps` (Kubernetes names, e.g. `NET_ADMIN`).
fn setpriv_args(caps: &[String], no_new_privs: bool) -> Vec<String> {
    let list: String = caps
        .iter()
        .map(|c| format!(",+{}", c.to_lowercase()))
        .collect();
    let mut args = vec![
        format!("--inh-caps=-all{list}"),
        format!("--ambient-caps=-all{list}"),
        format!("--bounding-set=-all{list}"),
    ];
    if no_new_privs {
        args.push("--no-new-privs".into());
    }
    args.push("--".into());
    args
}

fn setpriv_available() -> bool {
    Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A capability mask line (`CapEff:`, `CapBnd:`, …) of `/proc/<pid>/status`.
fn cap_mask(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading status");
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim();
    u64::from_str_radix(hex, 16).expect("hex mask")
}

/// A `leash-agent` started under `setpriv`, with its log collected.
struct Confined {
    child: Option<Child>,
    log: Arc<Mutex<String>>,
    attached: mpsc::Receiver<()>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Confined {
    fn spawn(setpriv: &[String], agent_args: &[String]) -> Self {
        let mut child = Command::new("setpriv")
            .args(setpriv)
            .arg(env!("CARGO_BIN_EXE_leash-agent"))
            .args(agent_args)
            .env("LEASH_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning setpriv leash-agent");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, attached) = mpsc::channel();
        let writer = Arc::clone(&log);
        let reader = thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("capturing") {
                    let _ = tx.send(());
                }
                let mut log = writer.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        Self {
            child: Some(child),
            log,
            attached,
            reader: Some(reader),
        }
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Waits for the agent to exit (after `signal`, if any); returns its status and log.
    fn finish(mut self, signal: Option<libc::c_int>) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        if let Some(signal) = signal {
            let pid = i32::try_from(child.id()).expect("pid fits in i32");
            // SAFETY: kill(2) on our own child, not yet waited for, so the pid is still ours.
            let rc = unsafe { libc::kill(pid, signal) };
            assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "leash-agent did not exit in {STOP_TIMEOUT:?}; log:\n{}",
                        self.log()
                    );
                }
            }
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        (status, self.log())
    }
}

impl Drop for Confined {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The agent's arguments for a lab run (the lab replaces `--kube` and `--recommender`, which
/// need a cluster: what this test proves is the capabilities).
fn lab_args(lab: &Lab, dir: &Path, output: &Path) -> Vec<String> {
    let snapshot = dir.join("snapshot.yaml");
    lab.write_snapshot(&snapshot)
        .expect("writing the lab snapshot");
    let path = |p: &Path| p.display().to_string();
    vec![
        "--cgroup".into(),
        path(lab.cgroup_root()),
        "--cluster-snapshot".into(),
        path(&snapshot),
        "--output".into(),
        path(output),
        "--flush-interval".into(),
        "200ms".into(),
        "--duration".into(),
        "90s".into(),
        "--node-name".into(),
        lab.node_name().to_owned(),
    ]
}

#[test]
fn agent_captures_under_exactly_the_daemonsets_capabilities() {
    let ds = rendered_daemon_set();
    let container = agent_container(&ds);
    let caps = granted_capabilities(container);
    assert!(
        !caps.iter().any(|c| c == "SYS_ADMIN"),
        "the DaemonSet must not grant SYS_ADMIN"
    );
    let no_new_privs = container
        .security_context
        .as_ref()
        .and_then(|s| s.allow_privilege_escalation)
        == Some(false);
    assert!(
        no_new_privs,
        "the DaemonSet sets allowPrivilegeEscalation: false"
    );

    if !leash_lab::require_privileged() {
        return;
    }
    if !setpriv_available() {
        let msg = "setpriv (util-linux) is not installed";
        assert!(
            std::env::var("LEASH_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "LEASH_REQUIRE_PRIVILEGED=1 but {msg}"
        );
        eprintln!("SKIPPED: {msg}");
        return;
    }

    let lab = Lab::builder()
        .pod(PodSpec::new("shop", "web-6b7-k2").label("app", "web"))
        .external("203.0.113.10", [Port::tcp(443)])
        .build()
        .expect("building the lab");
    let pod = lab.pod("shop/web-6b7-k2");
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("records.jsonl");

    let agent = Confined::spawn(
        &setpriv_args(&caps, no_new_privs),
        &lab_args(&lab, dir.path(), &output),
    );
    match agent.attached.recv_timeout(ATTACH_TIMEOUT) {
        Ok(()) => {}
        Err(_) => panic!(
            "leash-agent did not attach under {caps:?} within {ATTACH_TIMEOUT:?}; log:\n{}",
            agent.log()
        ),
    }
    // The running agent holds exactly the granted capabilities, no more.
    let want: u64 = caps.iter().map(|c| 1u64 << cap_bit(c)).sum();
    for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
        assert_eq!(
            cap_mask(agent.pid(), field),
            want,
            "{field} of the agent (want {caps:?})"
        );
    }
    assert_eq!(
        cap_mask(agent.pid(), "NoNewPrivs:"),
        1,
        "no_new_privs is set"
    );

    let out = pod
        .run(&["tcp", "203.0.113.10", "443", "--count", "5"])
        .unwrap_or_else(|e| panic!("lab-client in {}: {e}", pod.key()));
    assert!(
        out.success(),
        "lab-client failed: {}\n{}",
        out.stdout,
        out.stderr
    );
    assert_eq!(out.count("connected"), 5);

    let (status, log) = agent.finish(Some(libc::SIGINT));
    assert!(
        status.success(),
        "leash-agent failed under {caps:?}: {status}; log:\n{log}"
    );
    let text = std::fs::read_to_string(&output).expect("reading the records");
    let mut totals = BTreeMap::<(Protocol, String, u16), (u64, u64)>::new();
    for r in leash_records::read_records(text.as_bytes(), &output) {
        let r = r.unwrap_or_else(|e| panic!("{e}"));
        if let Record::Flow(f) = r.record
            && f.cgroup == pod.cgroup_rel()
        {
            assert_eq!(
                f.pod.as_ref().map(|p| p.name.as_str()),
                Some("web-6b7-k2"),
                "attribution: {f:?}"
            );
            let t = totals
                .entry((f.protocol, f.dst.to_string(), f.dst_port))
                .or_default();
            t.0 += f.count;
            t.1 += f.outcome.map_or(0, |o| o.established);
        }
    }
    assert_eq!(
        totals,
        BTreeMap::from([((Protocol::Tcp, "203.0.113.10".to_owned(), 443), (5, 5))]),
        "log:\n{log}"
    );
}

#[test]
fn agent_without_net_admin_fails_to_attach() {
    // The control for the test above: if setpriv did not restrict, this would capture.
    let caps: Vec<String> = granted_capabilities(agent_container(&rendered_daemon_set()))
        .into_iter()
        .filter(|c| c != "NET_ADMIN")
        .collect();
    if !leash_lab::require_privileged() || !setpriv_available() {
        assert!(
            std::env::var("LEASH_REQUIRE_PRIVILEGED").as_deref() != Ok("1") || setpriv_available(),
            "LEASH_REQUIRE_PRIVILEGED=1 but setpriv is not installed"
        );
        return;
    }
    let lab = Lab::builder()
        .pod(PodSpec::new("shop", "web-6b7-k2"))
        .build()
        .expect("building the lab");
    let dir = tempfile::tempdir().expect("tempdir");
    let output = dir.path().join("records.jsonl");
    let agent = Confined::spawn(
        &setpriv_args(&caps, true),
        &lab_args(&lab, dir.path(), &output),
    );
    let (status, log) = agent.finish(None);
    assert!(
        !status.success(),
        "the agent must not run without CAP_NET_ADMIN; log:\n{log}"
    );
    assert!(!log.contains("capturing"), "log:\n{log}");
    assert!(
        log.contains("CAP_NET_ADMIN"),
        "the error names the capabilities; log:\n{log}"
    );
}

#[test]
fn agent_accepts_every_flag_the_daemonset_passes() {
    let ds = rendered_daemon_set();
    let args = agent_container(&ds).args.clone().unwrap_or_default();
    let out = Command::new(env!("CARGO_BIN_EXE_leash-agent"))
        .arg("--help")
        .output()
        .expect("running leash-agent --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let word = |c: char| c.is_ascii_alphanumeric() || c == '-';
    let missing: Vec<&String> = args
        .iter()
        .filter(|a| a.starts_with("--"))
        .filter(|flag| {
            let flag = flag.split('=').next().unwrap_or(flag);
            !help.match_indices(flag).any(|(at, _)| {
                !help[..at].chars().next_back().is_some_and(word)
                    && !help[at + flag.len()..].chars().next().is_some_and(word)
            })
        })
        .collect();
    assert!(
        missing.is_empty(),
        "leash-agent --help lacks {missing:?}:\n{help}"
    );
}
