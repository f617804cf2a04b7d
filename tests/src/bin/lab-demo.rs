//! `lab-demo`: builds a demo lab, optionally runs `leash-agent` on it, generates traffic from its
//! pods and prints what the agent recorded.
//!
//! ```text
//! lab-demo [--agent PATH] [--duration-secs N] [--output FILE] [--snapshot FILE]
//! ```
//! With `--agent`, it runs `PATH --cgroup <lab cgroup root> --cluster-snapshot <snapshot>
//! --output <file> --flush-interval 1s --duration <N>s --node-name <node>` (the agent's CLI
//! contract), generates traffic once the agent had time to attach, waits for the agent to exit
//! and prints its JSON lines on stdout. Without `--agent` it only generates the traffic and
//! prints what the lab's servers received. A summary goes to stderr.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use leash_lab::{DnsConfig, Lab, PodSpec, Port, Proto, ServicePort, ServiceSpec};

/// Time the agent gets to load and attach before traffic starts.
const ATTACH_GRACE: Duration = Duration::from_secs(2);

struct Opts {
    agent: Option<PathBuf>,
    duration: u64,
    output: Option<PathBuf>,
    snapshot: Option<PathBuf>,
}

fn parse() -> Result<Opts, String> {
    let mut o = Opts {
        agent: None,
        duration: 6,
        output: None,
        snapshot: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--agent" => o.agent = Some(PathBuf::from(value()?)),
            "--output" => o.output = Some(PathBuf::from(value()?)),
            "--snapshot" => o.snapshot = Some(PathBuf::from(value()?)),
            "--duration-secs" => {
                let v = value()?;
                o.duration = v
                    .parse()
                    .ok()
                    .filter(|d| (3..=600).contains(d))
                    .ok_or_else(|| format!("--duration-secs must be 3..=600, got {v:?}"))?;
            }
            "--help" | "-h" => {
                return Err(
                    "usage: lab-demo [--agent PATH] [--duration-secs N] [--output FILE] [--snapshot FILE]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(o)
}

fn build_lab() -> leash_lab::Result<Lab> {
    Lab::builder()
        .pod(
            PodSpec::new("shop", "frontend-7d4-x2")
                .label("app", "frontend")
                .owner_deployment("frontend"),
        )
        .pod(
            PodSpec::new("shop", "payment-5c9-q7")
                .label("app", "payment")
                .owner_deployment("payment")
                .port(Some("http"), 8080, Proto::Tcp),
        )
        .pod(
            PodSpec::new("shop", "cart-0")
                .label("app", "cart")
                .owner(leash_lab::Owner::StatefulSet("cart".into())),
        )
        .service(
            ServiceSpec::new("shop", "payment")
                .selector("app", "payment")
                .port(ServicePort::tcp(80).target_named("http").name("http")),
        )
        .external("203.0.113.10", [Port::tcp(443)])
        .external("203.0.113.11", [Port::tcp(443)])
        .external("2001:db8:2::10", [Port::tcp(443)])
        .external("203.0.113.50", [Port::udp(4433), Port::tcp(5432)])
        .dns(
            DnsConfig::new()
                .with_stripe_example()
                .a("db.partner.test", ["203.0.113.50"]),
        )
        .api_server()
        .build()
}

/// The traffic every demo run generates: (pod, lab-client arguments).
fn traffic(lab: &Lab) -> Vec<(&'static str, Vec<String>)> {
    let dns = lab
        .dns_service_ip()
        .map_or_else(|| "198.51.100.138".to_owned(), |ip| ip.to_string());
    let payment_vip = lab.service("shop/payment").cluster_ip().to_string();
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    vec![
        (
            "shop/frontend-7d4-x2",
            s(&["dns", &dns, "api.stripe.test", "A"]),
        ),
        (
            "shop/frontend-7d4-x2",
            s(&["dns", &dns, "api.stripe.test", "AAAA", "--tcp"]),
        ),
        (
            "shop/frontend-7d4-x2",
            s(&["tcp", "203.0.113.10", "443", "--count", "5"]),
        ),
        (
            "shop/frontend-7d4-x2",
            s(&["tcp", "2001:db8:2::10", "443", "--count", "2"]),
        ),
        (
            "shop/frontend-7d4-x2",
            s(&["tcp", &payment_vip, "80", "--count", "3", "--send", "GET /"]),
        ),
        (
            "shop/payment-5c9-q7",
            s(&["dns", &dns, "db.partner.test", "A", "--connected"]),
        ),
        (
            "shop/payment-5c9-q7",
            s(&["tcp", "203.0.113.50", "5432", "--count", "2"]),
        ),
        (
            "shop/payment-5c9-q7",
            s(&["udp-sendto", "203.0.113.50", "4433", "--count", "4"]),
        ),
        ("shop/payment-5c9-q7", s(&["tcp", "198.51.100.129", "443"])),
        (
            "shop/cart-0",
            s(&["udp-connected", "203.0.113.50", "4433", "--count", "2"]),
        ),
        (
            "shop/cart-0",
            s(&["tcp", "203.0.113.11", "444", "--timeout-ms", "500"]),
        ),
        (
            "shop/cart-0",
            s(&["dns", &dns, leash_lab::MALFORMED_NAME, "A"]),
        ),
    ]
}

fn run() -> Result<(), String> {
    let o = parse()?;
    leash_lab::check_privileged().map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let lab = build_lab().map_err(|e| format!("building the lab: {e}"))?;
    eprintln!(
        "lab {} up in {:?}: cgroup root {}, {} pods",
        lab.id(),
        t0.elapsed(),
        lab.cgroup_root().display(),
        lab.pods().len()
    );
    let tmp = std::env::temp_dir().join(format!("leash-lab-demo-{}", lab.id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("mkdir {}: {e}", tmp.display()))?;
    let snapshot = o
        .snapshot
        .clone()
        .unwrap_or_else(|| tmp.join("snapshot.yaml"));
    lab.write_snapshot(&snapshot).map_err(|e| e.to_string())?;
    eprintln!("cluster snapshot: {}", snapshot.display());
    let output = o
        .output
        .clone()
        .unwrap_or_else(|| tmp.join("records.jsonl"));

    let mut agent = match &o.agent {
        Some(path) => {
            let child = Command::new(path)
                .arg("--cgroup")
                .arg(lab.cgroup_root())
                .arg("--cluster-snapshot")
                .arg(&snapshot)
                .arg("--output")
                .arg(&output)
                .args(["--flush-interval", "1s"])
                .arg("--duration")
                .arg(format!("{}s", o.duration))
                .arg("--node-name")
                .arg(lab.node_name())
                .stdin(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting {}: {e}", path.display()))?;
            std::thread::sleep(ATTACH_GRACE);
            Some(child)
        }
        None => None,
    };

    for (pod, args) in traffic(&lab) {
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        match lab.pod(pod).run(&argv) {
            Ok(out) => eprintln!("{pod}: lab-client {} -> {}", args.join(" "), out.json),
            Err(e) => eprintln!("{pod}: lab-client {} failed: {e}", args.join(" ")),
        }
    }

    if let Some(child) = agent.as_mut() {
        // Bounded: the agent stops by itself after --duration; allow 10 s more, then kill it.
        let deadline = Instant::now() + Duration::from_secs(o.duration + 10);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    eprintln!("agent exited: {status}");
                    break;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    eprintln!("agent did not stop within {}s; killed", o.duration + 10);
                    break;
                }
            }
        }
        let records = std::fs::read_to_string(&output)
            .map_err(|e| format!("reading {}: {e}", output.display()))?;
        print!("{records}");
        eprintln!(
            "{} records in {}",
            records.lines().count(),
            output.display()
        );
    } else {
        for e in lab.externals() {
            for p in &e.ports {
                if let Ok(s) = lab.server_stats(&e.ip.to_string(), p.proto, p.port) {
                    println!(
                        "{} {} {}: connections {} datagrams {} bytes {} from {:?}",
                        e.ip, p.proto, p.port, s.connections, s.datagrams, s.bytes, s.peers
                    );
                }
            }
        }
        let d = lab.dns_stats();
        println!(
            "dns: {} UDP + {} TCP queries: {:?}",
            d.udp_queries, d.tcp_queries, d.queries
        );
    }
    if o.snapshot.is_none() && o.output.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-demo: {e}");
            ExitCode::FAILURE
        }
    }
}
