//! `leash`: the command line. All logic lives in the library; this file parses arguments,
//! calls it, and maps errors to exit codes (2: bad input, 3: denied with `--fail-on-deny`).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "leash",
    version,
    about = "Least-privilege egress NetworkPolicies from observed traffic"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Propose one egress NetworkPolicy per workload from observed flows.
    #[command(group(ArgGroup::new("observed").required(true).args(["flows", "store"])))]
    Recommend {
        #[command(flatten)]
        source: ClusterArgs,
        /// Flow and DNS records (JSON lines, v1); `-` reads stdin. Repeatable.
        #[arg(long = "flows", num_args = 1..)]
        flows: Vec<PathBuf>,
        /// The observation store of `leash serve` (a SQLite file), instead of `--flows`.
        #[arg(long)]
        store: Option<PathBuf>,
        /// With `--store`: only observations last seen within this long (e.g. 7d, 24h).
        #[arg(long, requires = "store", conflicts_with = "flows", value_parser = parse_duration)]
        since: Option<chrono::Duration>,
        /// Write `<ns>/<workload>-egress.yaml`, `<ns>/default-deny-egress.yaml` and REPORT.md
        /// here instead of printing a YAML stream; remove the policy files earlier runs wrote
        /// that this run no longer recommends (only in the namespaces it covers).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Only workloads in these namespaces. Repeatable.
        #[arg(long = "namespace", num_args = 1..)]
        namespaces: Vec<String>,
        /// At most this many ipBlocks per external rule.
        #[arg(long, default_value_t = 8)]
        max_cidrs: usize,
        /// Never widen an IPv4 block beyond this prefix length.
        #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u8).range(0..=32))]
        max_prefix_v4: u8,
        /// Never widen an IPv6 block beyond this prefix length.
        #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u8).range(0..=128))]
        max_prefix_v6: u8,
        /// Flag workloads observed for less than this (e.g. 24h, 90m, 7d).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        min_observation: chrono::Duration,
        /// NodeLocal DNSCache addresses. Repeatable; default 169.254.20.10.
        #[arg(long = "node-local-dns", num_args = 1..)]
        node_local_dns: Vec<IpAddr>,
    },
    /// Evaluate every flow against a set of policies (egress at the source, ingress at the
    /// destination, Services after DNAT) and print a verdict for each.
    #[command(group(ArgGroup::new("observed").required(true).args(["flows", "store"])))]
    Audit {
        #[command(flatten)]
        source: ClusterArgs,
        /// A policy file or a directory of them (searched recursively). With `--kube` and no
        /// `--policies`, the NetworkPolicies applied in the cluster.
        #[arg(long)]
        policies: Option<PathBuf>,
        /// Flow records (JSON lines, v1). Repeatable.
        #[arg(long = "flows", num_args = 1..)]
        flows: Vec<PathBuf>,
        /// The observation store of `leash serve` (a SQLite file), instead of `--flows`: one
        /// verdict per stored (pod, destination, port, protocol).
        #[arg(long)]
        store: Option<PathBuf>,
        /// With `--store`: only observations last seen within this long (e.g. 7d, 24h).
        #[arg(long, requires = "store", conflicts_with = "flows", value_parser = parse_duration)]
        since: Option<chrono::Duration>,
        /// `json`: one object per flow, in input order; `table`: aligned, with a summary.
        #[arg(long, default_value = "table")]
        format: leash::audit::Format,
        /// Exit with 3 when any flow is denied.
        #[arg(long)]
        fail_on_deny: bool,
    },
    /// Name the policy and rule that allow a connection, or the policies that isolate the
    /// pod without allowing it.
    Explain {
        #[command(flatten)]
        source: ClusterArgs,
        /// A policy file or a directory of them. With `--kube` and no `--policies`, the
        /// NetworkPolicies applied in the cluster.
        #[arg(long)]
        policies: Option<PathBuf>,
        /// The source pod, `NAMESPACE/POD`.
        #[arg(long)]
        from: String,
        /// The destination as dialed, `IP:PORT/PROTO` (`[v6]:PORT/PROTO` for IPv6).
        #[arg(long)]
        to: String,
    },
    /// Run the recommender as a service: agents stream records over gRPC (mTLS) into a
    /// SQLite store; HTTP serves health, metrics, recommendations, destinations and audits.
    Serve(Box<ServeArgs>),
    /// Write mTLS certificates for `leash serve` and its agents (PEM files), signed by the CA
    /// in `--out` (made there if missing).
    Certs {
        /// The directory to write `ca.pem`, `server.pem`, `server-key.pem`, `<client>.pem`
        /// and `<client>-key.pem` into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// A DNS name or IP address the server is reached by. Repeatable.
        #[arg(long = "server-name", required = true, num_args = 1..)]
        server_names: Vec<String>,
        /// A client (agent) certificate to issue, by common name. Repeatable.
        #[arg(long = "client", num_args = 1..)]
        clients: Vec<String>,
        /// Make a new CA even if `ca.pem` and `ca-key.pem` exist in `--out` (certificates the
        /// old CA signed stop being trusted). Without it, the existing CA signs.
        #[arg(long)]
        force: bool,
    },
}

/// Where the cluster model comes from: a snapshot file, or the API server.
#[derive(clap::Args, Debug, Clone)]
struct ClusterArgs {
    /// The cluster snapshot (a Kubernetes List or multi-document stream, YAML or JSON).
    #[arg(long, required_unless_present = "kube", conflicts_with = "kube")]
    cluster: Option<PathBuf>,
    /// Read the cluster from the Kubernetes API (in-cluster config, `$KUBECONFIG`, or
    /// `--kubeconfig`) instead of a snapshot.
    #[arg(long)]
    kube: bool,
    /// With `--kube`: this kubeconfig file.
    #[arg(long, requires = "kube")]
    kubeconfig: Option<PathBuf>,
}

/// `leash serve`.
#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("transport").required(true).args(["tls_cert", "insecure"])))]
struct ServeArgs {
    /// gRPC ingest address (agents connect here).
    #[arg(long, default_value = "0.0.0.0:7443")]
    listen: std::net::SocketAddr,
    /// HTTP address: /healthz, /readyz, /metrics and the /v1 read API.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http: std::net::SocketAddr,
    /// The SQLite store (created if missing).
    #[arg(long, default_value = "/var/lib/leash/leash.db")]
    store: PathBuf,
    #[command(flatten)]
    source: ClusterArgs,
    /// The server's PEM certificate chain (mTLS).
    #[arg(long, requires_all = ["tls_key", "tls_client_ca"])]
    tls_cert: Option<PathBuf>,
    /// The server's PEM private key.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The PEM CA bundle agents' client certificates must chain to.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Accept agents over plaintext gRPC without client certificates. For tests only.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "tls_client_ca"])]
    insecure: bool,
    /// Delete observations last seen longer ago than this.
    #[arg(long, default_value = "30d", value_parser = leash_records::duration::parse)]
    retention: std::time::Duration,
    /// How often stored flows are checked against the applied policies (unexpected egress).
    #[arg(long, default_value = "60s", value_parser = leash_records::duration::parse_positive)]
    check_interval: std::time::Duration,
    /// At most this many records in one batch.
    #[arg(long, default_value_t = 65_536)]
    max_batch_records: usize,
    /// At most this many bytes in one gRPC message.
    #[arg(long, default_value_t = 16 << 20)]
    max_message_bytes: usize,
    /// At most this many ipBlocks per external rule (served recommendations).
    #[arg(long, default_value_t = 8)]
    max_cidrs: usize,
    #[command(flatten)]
    limits: LimitArgs,
}

/// What one gRPC client may hold of `leash serve` (see `leash::serve::conn`).
#[derive(clap::Args, Debug)]
struct LimitArgs {
    /// At most this many open gRPC connections in all; more are closed at accept.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// At most this many open gRPC connections from one client IP address; more are closed
    /// at accept. Raise it when agents reach the server through NAT or a proxy.
    #[arg(long, default_value_t = 4)]
    max_connections_per_address: usize,
    /// At most this many concurrent gRPC streams on one connection (an agent needs one).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    max_streams_per_connection: u32,
    /// A TLS handshake, a connection's first stream and HTTP request headers must complete
    /// within this.
    #[arg(long, default_value = "10s", value_parser = leash_records::duration::parse_positive)]
    handshake_timeout: std::time::Duration,
    /// A stream that has sent part of a message and then nothing for this long is reset.
    #[arg(long, default_value = "30s", value_parser = leash_records::duration::parse_positive)]
    read_timeout: std::time::Duration,
    /// A gRPC connection without an open stream for this long is closed.
    #[arg(long, default_value = "5m", value_parser = leash_records::duration::parse_positive)]
    idle_timeout: std::time::Duration,
    /// At most this many bytes of partially received gRPC messages, over all clients and
    /// beyond each connection's --inflight-bytes-per-connection; at least --max-message-bytes.
    #[arg(long, default_value_t = 256 << 20)]
    max_inflight_bytes: usize,
    /// Bytes of partially received messages each gRPC connection may hold without drawing on
    /// --max-inflight-bytes.
    #[arg(long, default_value_t = 1 << 20)]
    inflight_bytes_per_connection: usize,
}

/// A window or span (`24h`, `7d`, `90m`), as `leash_records::duration` parses every duration.
fn parse_duration(s: &str) -> Result<chrono::Duration, leash_records::duration::Error> {
    leash_records::duration::parse_chrono(s)
}

/// A failure and the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

fn bad_input(e: impl std::fmt::Display) -> Failure {
    Failure {
        code: 2,
        message: e.to_string(),
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Recommend {
            source,
            flows,
            store,
            since,
            output,
            namespaces,
            max_cidrs,
            max_prefix_v4,
            max_prefix_v6,
            min_observation,
            node_local_dns,
        } => {
            let mut opts = leash::synth::Options {
                max_cidrs,
                max_prefix_v4,
                max_prefix_v6,
                min_observation,
                namespaces: namespaces.into_iter().collect(),
                ..leash::synth::Options::default()
            };
            if !node_local_dns.is_empty() {
                opts.classify.node_local_dns = node_local_dns.into_iter().collect::<BTreeSet<_>>();
            }
            let (cluster, _) = load_cluster(&source)?;
            let (observations, skipped) = observe(&cluster, store.as_deref(), since, &flows)?;
            let mut out = leash::synth::run_observations(cluster, observations, &opts).map_err(
                |e| match e {
                    // Our own bug, not the user's input.
                    leash::synth::Error::SelfCheck(_) => Failure {
                        code: 1,
                        message: e.to_string(),
                    },
                    e => bad_input(e),
                },
            )?;
            out.recommendation.skipped_input = leash::synth::skipped_lines(&skipped);
            match output {
                Some(dir) => {
                    // Every name is checked and DIR inspected before anything is written; a
                    // failed run leaves DIR as it was, and says only why.
                    let written = leash::render::write_dir(
                        &dir,
                        &out.cluster,
                        &out.recommendation,
                        &opts.namespaces,
                    )
                    .map_err(bad_input)?;
                    for w in &written.warnings {
                        eprintln!("leash: warning: {w}");
                    }
                    eprintln!("{}", leash::render::summary(&out.recommendation));
                }
                None => {
                    eprintln!("{}", leash::render::summary(&out.recommendation));
                    let text = leash::render::yaml_stream(&leash::synth::all_policies(
                        &out.cluster,
                        &out.recommendation,
                    ))
                    .map_err(bad_input)?;
                    write_stdout(&text)?;
                }
            }
            Ok(())
        }
        Command::Audit {
            source,
            policies,
            flows,
            store,
            since,
            format,
            fail_on_deny,
        } => {
            let (cluster, applied) = load_cluster(&source)?;
            let set = match (policies, applied) {
                (Some(path), _) => leash::audit::load_policy_set(&path).map_err(bad_input)?,
                (None, Some(applied)) => applied,
                (None, None) => {
                    return Err(bad_input(
                        "--policies is required unless --kube audits against the applied policies",
                    ));
                }
            };
            let mut located = Vec::new();
            if let Some(store) = &store {
                let input = leash::store::audit_input(store, &cluster, since_time(since))
                    .map_err(bad_input)?;
                report_skipped(&input.skipped);
                if input.unattributed_flows > 0 {
                    eprintln!(
                        "leash: {} flow events outside pods are not audited",
                        input.unattributed_flows
                    );
                }
                located = input.flows;
            }
            for f in &flows {
                located.extend(leash::audit::read_flows(f).map_err(bad_input)?);
            }
            let report = leash::audit::audit(&cluster, &set, &located).map_err(bad_input)?;
            write_stdout(&report.render(format))?;
            if fail_on_deny && report.any_denied() {
                return Err(Failure {
                    code: 3,
                    message: format!(
                        "{} of {} flows denied",
                        report.denied(),
                        report.entries.len()
                    ),
                });
            }
            Ok(())
        }
        Command::Explain {
            source,
            policies,
            from,
            to,
        } => {
            let from = leash::explain::parse_pod(&from).map_err(bad_input)?;
            let flow = leash::explain::parse_target(&to).map_err(bad_input)?;
            let (cluster, applied) = load_cluster(&source)?;
            let set = match (policies, applied) {
                (Some(path), _) => leash::audit::load_policy_set(&path).map_err(bad_input)?,
                (None, Some(applied)) => applied,
                (None, None) => {
                    return Err(bad_input(
                        "--policies is required unless --kube explains with the applied policies",
                    ));
                }
            };
            let explanation =
                leash::explain::explain(&cluster, &set, &from, &flow).map_err(bad_input)?;
            write_stdout(&explanation.to_string())
        }
        Command::Serve(args) => serve(*args),
        Command::Certs {
            out,
            server_names,
            clients,
            force,
        } => {
            let ca = leash::certs::generate_with(&out, &server_names, &clients, force)
                .map_err(bad_input)?;
            let what = match ca {
                leash::certs::CaSource::Reused => {
                    "server and client certificates, signed by the existing CA,"
                }
                leash::certs::CaSource::Created => "a new CA, server and client certificates",
            };
            eprintln!("leash: wrote {what} to {}", out.display());
            Ok(())
        }
    }
}

/// Reads observations from a store or from record files, attributed to `cluster`'s pods,
/// with the stored observations that could not be (also said on stderr).
fn observe(
    cluster: &leash::cluster::Cluster,
    store: Option<&std::path::Path>,
    since: Option<chrono::Duration>,
    flows: &[PathBuf],
) -> Result<(leash::input::Observations, Vec<leash::store::Skipped>), Failure> {
    match store {
        Some(path) => {
            let store = leash::store::SqliteStore::open_existing(path).map_err(bad_input)?;
            let (observations, skipped) =
                leash::store::load(&store, cluster, since_time(since)).map_err(bad_input)?;
            report_skipped(&skipped);
            Ok((observations, skipped))
        }
        None => Ok((
            leash::input::Observations::read_paths(flows, cluster).map_err(bad_input)?,
            Vec::new(),
        )),
    }
}

/// A tokio runtime for the commands that talk to the network.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot start the async runtime: {e}"),
        })
}

/// The cluster model from `--cluster FILE`, or from the API server with `--kube` (then also
/// the NetworkPolicies applied there).
fn load_cluster(
    args: &ClusterArgs,
) -> Result<(leash::cluster::Cluster, Option<leash::eval::PolicySet>), Failure> {
    if let Some(path) = &args.cluster {
        return Ok((
            leash::cluster::Cluster::load(path).map_err(bad_input)?,
            None,
        ));
    }
    let state = runtime()?
        .block_on(async {
            let client = leash::cluster::kube::client(args.kubeconfig.as_deref()).await?;
            leash::cluster::kube::load_once(client).await
        })
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot read the cluster from the Kubernetes API: {e}"),
        })?;
    state.log_rejected(None);
    Ok((state.cluster, Some(state.policy_set)))
}

/// `leash serve`: runs until SIGINT or SIGTERM.
fn serve(args: ServeArgs) -> Result<(), Failure> {
    leash::serve::conn::return_freed_buffers_to_the_system();
    init_logging();
    let cluster = match (&args.source.cluster, args.source.kube) {
        (Some(path), _) => leash::serve::ClusterSource::File(path.clone()),
        (None, _) => leash::serve::ClusterSource::Kube {
            kubeconfig: args.source.kubeconfig.clone(),
        },
    };
    let tls = match (args.tls_cert, args.tls_key, args.tls_client_ca) {
        (Some(cert), Some(key), Some(ca)) => Some(leash_records::tls::TlsFiles { cert, key, ca }),
        _ => None,
    };
    if args.limits.max_inflight_bytes < args.max_message_bytes {
        return Err(bad_input(format!(
            "--max-inflight-bytes ({}) must be at least --max-message-bytes ({})",
            args.limits.max_inflight_bytes, args.max_message_bytes
        )));
    }
    let limits = &args.limits;
    let limits = leash::serve::conn::Limits {
        max_connections: limits.max_connections,
        max_connections_per_address: limits.max_connections_per_address,
        max_streams_per_connection: limits.max_streams_per_connection,
        handshake_timeout: limits.handshake_timeout,
        read_timeout: limits.read_timeout,
        idle_timeout: limits.idle_timeout,
        max_inflight_bytes: limits.max_inflight_bytes,
        inflight_bytes_per_connection: limits.inflight_bytes_per_connection,
    };
    let config = leash::serve::Config {
        limits,
        listen: args.listen,
        http: args.http,
        store: args.store,
        cluster,
        tls,
        retention: args.retention,
        check_interval: args.check_interval,
        max_batch_records: args.max_batch_records,
        max_message_bytes: args.max_message_bytes,
        options: leash::synth::Options {
            max_cidrs: args.max_cidrs,
            ..leash::synth::Options::default()
        },
    };
    runtime()?
        .block_on(leash::serve::run(config, shutdown_signal()))
        .map_err(|e| Failure {
            code: 1,
            message: e.to_string(),
        })
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a SIGTERM handler, SIGINT still stops the server.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Logs to stderr as the agent does: `LEASH_LOG`, else `RUST_LOG`, else `info`.
fn init_logging() {
    leash_records::log::init_stderr();
}

/// `--since`: the earliest last-seen time to read, counted back from now.
fn since_time(since: Option<chrono::Duration>) -> Option<chrono::DateTime<chrono::Utc>> {
    // A window reaching past the earliest representable time means everything.
    since.and_then(|d| chrono::Utc::now().checked_sub_signed(d))
}

/// Stored observations that could not be used, on stderr.
fn report_skipped(skipped: &[leash::store::Skipped]) {
    for s in skipped {
        eprintln!("leash: {s}");
    }
}

fn write_stdout(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| {
            if text.ends_with('\n') || text.is_empty() {
                Ok(())
            } else {
                stdout.write_all(b"\n")
            }
        })
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure {
            code: 1,
            message: format!("cannot write to stdout: {e}"),
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("leash: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every duration flag goes through the one grammar: too long is a usage error (exit 2)
    /// naming the value, never a panic further on.
    #[test]
    fn duration_flags_are_range_checked() {
        let cases: [&[&str]; 3] = [
            &[
                "leash",
                "recommend",
                "--cluster",
                "c",
                "--store",
                "s",
                "--since",
                "300000years",
            ],
            &[
                "leash",
                "recommend",
                "--cluster",
                "c",
                "--flows",
                "f",
                "--min-observation",
                "2000y",
            ],
            &[
                "leash",
                "serve",
                "--cluster",
                "c",
                "--insecure",
                "--retention",
                "300000years",
            ],
        ];
        for args in cases {
            let Err(e) = Cli::try_parse_from(args) else {
                panic!("{args:?} parsed");
            };
            assert_eq!(e.exit_code(), 2, "{args:?}");
            assert!(e.to_string().contains("longer than the maximum"), "{e}");
        }
        let Err(e) = Cli::try_parse_from([
            "leash",
            "serve",
            "--cluster",
            "c",
            "--insecure",
            "--check-interval",
            "0s",
        ]) else {
            panic!("a zero check interval parsed");
        };
        assert!(e.to_string().contains("greater than zero"), "{e}");
        assert!(
            Cli::try_parse_from([
                "leash",
                "serve",
                "--cluster",
                "c",
                "--insecure",
                "--retention",
                "1000y"
            ])
            .is_ok()
        );
    }
}
