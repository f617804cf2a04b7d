//! `leash-agent`: the command line. Parses flags, sets up logging and signals, and runs
//! [`leash_agent::pipeline::run`].

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use leash_agent::{
    pipeline::{self, AgentConfig, PodSource},
    transport::TransportConfig,
};
use leash_records::error::Chain;

/// Records every pod's outbound connections and DNS answers with eBPF, as v1 JSON lines.
#[derive(Parser, Debug)]
#[command(name = "leash-agent", version)]
struct Cli {
    /// cgroup v2 directory to attach to (default: the detected cgroup v2 root).
    #[arg(long, value_name = "DIR")]
    cgroup: Option<PathBuf>,
    /// Pod metadata from a cluster snapshot (a Kubernetes List, YAML or JSON).
    #[arg(long, value_name = "FILE", conflicts_with = "kube")]
    cluster_snapshot: Option<PathBuf>,
    /// Pod metadata from the Kubernetes API (in-cluster config or kubeconfig), watching pods
    /// with spec.nodeName = --node-name. The default inside a cluster.
    #[arg(long)]
    kube: bool,
    /// Where JSON-lines records go: a file, or `-` for stdout. The default is stdout unless
    /// --recommender is given; both together send records to both.
    #[arg(long, value_name = "FILE|-")]
    output: Option<String>,
    /// Stream records to the recommender's gRPC endpoint, `https://HOST:PORT` (mutual TLS with
    /// --tls-ca/--tls-cert/--tls-key), or `http://HOST:PORT` with --insecure.
    #[arg(long, value_name = "URL")]
    recommender: Option<String>,
    /// CA certificate that signed the recommender's certificate (PEM).
    #[arg(long, value_name = "FILE", requires = "recommender")]
    tls_ca: Option<PathBuf>,
    /// This agent's client certificate (PEM).
    #[arg(long, value_name = "FILE", requires = "recommender")]
    tls_cert: Option<PathBuf>,
    /// This agent's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "recommender")]
    tls_key: Option<PathBuf>,
    /// Send this projected ServiceAccount token (audience `leash`) on every stream to the
    /// recommender, which binds the batches to the token's node (`leash serve --agent-auth
    /// token`). Read again for each stream and every minute, as the kubelet rotates it.
    #[arg(long, value_name = "FILE", requires = "recommender")]
    token_file: Option<PathBuf>,
    /// Talk to the recommender in plaintext (http://); never use across a network you do not
    /// control.
    #[arg(long, requires = "recommender")]
    insecure: bool,
    /// Most distinct flow keys buffered for the recommender while it is unreachable (repeats
    /// of a key are merged; new keys past this are dropped and counted).
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    buffer_keys: usize,
    /// On shutdown, how long to wait for the recommender to acknowledge the last records.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    shutdown_timeout: Duration,
    /// How often aggregated records are written.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    flush_interval: Duration,
    /// Stop by itself after this long (flushing first).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// This node's name (default: $NODE_NAME, else the hostname).
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,
    /// Serve Prometheus metrics on this address, e.g. 0.0.0.0:9090.
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// Extra source ports whose answers are parsed as DNS (53 is always included), e.g. 5353.
    #[arg(long = "dns-port", value_name = "PORT")]
    dns_ports: Vec<u16>,
    /// How long a DNS name keeps labelling an address after its TTL ran out.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    dns_grace: Duration,
    /// Most DNS names kept per pod and address (so per flow record): the first name the pod
    /// asked for, then the most recent ones. At most what the recommender accepts per record.
    #[arg(long, value_name = "N", default_value_t = 16,
          value_parser = clap::value_parser!(u16)
              .range(1..=leash_records::wire::MAX_NAMES_PER_RECORD as i64))]
    dns_max_names_per_address: u16,
}

/// Every duration flag is an interval or a timeout: positive, range-checked by the one
/// grammar of `leash_records::duration`.
fn parse_duration(s: &str) -> Result<Duration, leash_records::duration::Error> {
    leash_records::duration::parse_positive(s)
}

fn node_name(flag: Option<String>) -> String {
    if let Some(name) = flag.or_else(|| std::env::var("NODE_NAME").ok()) {
        return name;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %Chain(&e), "cannot install signal handlers; stop with --duration");
            std::future::pending::<()>().await;
        }
    }
}

fn main() -> ExitCode {
    // `LEASH_LOG`, else `RUST_LOG`, else `info`: the rule `leash` follows too.
    leash_records::log::init_stderr();
    let cli = Cli::parse();
    let mut dns_ports = vec![53];
    dns_ports.extend(cli.dns_ports.iter().copied().filter(|p| *p != 53));
    dns_ports.sort_unstable();
    dns_ports.dedup();
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let pods = match (cli.cluster_snapshot, cli.kube || in_cluster) {
        (Some(path), _) => PodSource::Snapshot(path),
        (None, true) => PodSource::Kube,
        (None, false) => PodSource::None,
    };
    let node = node_name(cli.node_name);
    let recommender = match &cli.recommender {
        Some(url) => {
            let tls = [
                cli.tls_ca.as_ref(),
                cli.tls_cert.as_ref(),
                cli.tls_key.as_ref(),
            ];
            match TransportConfig::validate(url, cli.insecure, tls) {
                Ok(tls) => {
                    let mut transport = TransportConfig::new(url, tls, &node);
                    transport.buffer_keys = cli.buffer_keys;
                    transport.shutdown_timeout = cli.shutdown_timeout;
                    transport.token_file = cli.token_file;
                    Some(transport)
                }
                Err(e) => {
                    eprintln!("leash-agent: {}", Chain(&e));
                    return ExitCode::from(2);
                }
            }
        }
        None => None,
    };
    let output = match (cli.output, &recommender) {
        (Some(output), _) => Some(output),
        (None, None) => Some("-".to_owned()),
        (None, Some(_)) => None,
    };
    let config = AgentConfig {
        cgroup: cli.cgroup,
        pods,
        output,
        recommender,
        flush_interval: cli.flush_interval,
        duration: cli.duration,
        node_name: node,
        metrics_addr: cli.metrics_addr,
        dns_ports,
        dns_grace: cli.dns_grace,
        dns_max_names: usize::from(cli.dns_max_names_per_address),
    };
    // One thread: the loop is sequential anyway, and a single thread avoids cross-thread
    // wake-ups on every ring notification (measured as a large share of the agent's CPU).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("leash-agent: cannot start the async runtime: {}", Chain(&e));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(pipeline::run(config, shutdown_signal())) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leash-agent: {}", Chain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent's duration flags share the recommender's grammar and range: too long or
    /// zero is a usage error (exit 2).
    #[test]
    fn duration_flags_are_range_checked() {
        for (flag, value, message) in [
            ("--flush-interval", "300000years", "longer than the maximum"),
            ("--shutdown-timeout", "0s", "greater than zero"),
            ("--dns-grace", "24", "invalid duration"),
        ] {
            let Err(e) = Cli::try_parse_from(["leash-agent", flag, value]) else {
                panic!("{flag} {value} parsed");
            };
            assert_eq!(e.exit_code(), 2, "{flag} {value}");
            assert!(e.to_string().contains(message), "{flag} {value}: {e}");
        }
        assert!(Cli::try_parse_from(["leash-agent", "--duration", "1000y"]).is_ok());
    }
}
