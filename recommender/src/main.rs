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
        /// The cluster snapshot (a Kubernetes List or multi-document stream, YAML or JSON).
        #[arg(long)]
        cluster: PathBuf,
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
        /// here instead of printing a YAML stream.
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
        /// The cluster snapshot.
        #[arg(long)]
        cluster: PathBuf,
        /// A policy file or a directory of them (searched recursively).
        #[arg(long)]
        policies: PathBuf,
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
        /// The cluster snapshot.
        #[arg(long)]
        cluster: PathBuf,
        /// A policy file or a directory of them.
        #[arg(long)]
        policies: PathBuf,
        /// The source pod, `NAMESPACE/POD`.
        #[arg(long)]
        from: String,
        /// The destination as dialed, `IP:PORT/PROTO` (`[v6]:PORT/PROTO` for IPv6).
        #[arg(long)]
        to: String,
    },
}

/// Parses `90s`, `15m`, `24h`, `7d`.
fn parse_duration(s: &str) -> Result<chrono::Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (expected e.g. 24h, 90m, 7d)"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" | "" => 3600,
        "d" => 86400,
        _ => return Err(format!("invalid duration unit in {s:?} (use s, m, h or d)")),
    };
    n.checked_mul(secs)
        .and_then(chrono::Duration::try_seconds)
        .ok_or_else(|| format!("duration {s:?} out of range"))
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
            cluster,
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
            let out = match &store {
                Some(store) => leash::synth::run_store(&cluster, store, since_time(since), &opts)
                    .map(|(out, skipped)| {
                        report_skipped(&skipped);
                        out
                    }),
                None => leash::synth::run(&cluster, &flows, &opts),
            }
            .map_err(|e| match e {
                // Our own bug, not the user's input.
                leash::synth::Error::SelfCheck(_) => Failure {
                    code: 1,
                    message: e.to_string(),
                },
                e => bad_input(e),
            })?;
            eprintln!("{}", leash::render::summary(&out.recommendation));
            match output {
                Some(dir) => leash::render::write_dir(&dir, &out.cluster, &out.recommendation)
                    .map_err(bad_input)?,
                None => {
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
            cluster,
            policies,
            flows,
            store,
            since,
            format,
            fail_on_deny,
        } => {
            let cluster = leash::cluster::Cluster::load(&cluster).map_err(bad_input)?;
            let set = leash::audit::load_policy_set(&policies).map_err(bad_input)?;
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
            cluster,
            policies,
            from,
            to,
        } => {
            let from = leash::explain::parse_pod(&from).map_err(bad_input)?;
            let flow = leash::explain::parse_target(&to).map_err(bad_input)?;
            let cluster = leash::cluster::Cluster::load(&cluster).map_err(bad_input)?;
            let set = leash::audit::load_policy_set(&policies).map_err(bad_input)?;
            let explanation =
                leash::explain::explain(&cluster, &set, &from, &flow).map_err(bad_input)?;
            write_stdout(&explanation.to_string())
        }
    }
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
