//! `leash`: the command line. All logic lives in the library; this file parses arguments,
//! calls it, and maps errors to exit codes ([`Failure`]: 1 runtime, 2 bad input or usage,
//! 3 a requested check found a problem).

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Parser, Subcommand};
use leash_records::error::Chain;

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
    #[command(group(ArgGroup::new("observed").args(["flows", "store", "store_file"])))]
    Recommend {
        #[command(flatten)]
        source: ClusterArgs,
        #[command(flatten)]
        observed: ObservedArgs,
        /// Write `<ns>/<workload>-egress.yaml`, `<ns>/default-deny-egress.yaml` and REPORT.md
        /// here instead of printing a YAML stream; remove the policy files earlier runs wrote
        /// that this run no longer recommends (only in the namespaces it covers).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// `networkpolicy`: Kubernetes NetworkPolicies (portable, by address); `cilium`:
        /// CiliumNetworkPolicies (`cilium.io/v2`) with external names as `toFQDNs`, which
        /// need Cilium's DNS proxy (the default denies stay NetworkPolicies).
        #[arg(long, default_value = "networkpolicy")]
        format: leash::render::cilium::Format,
        /// `networkpolicy`: a `default-deny-egress` NetworkPolicy per namespace; `cnp`: none,
        /// the Baseline tier of `leash guardrails` denies by default instead.
        #[arg(long, default_value = "networkpolicy")]
        baseline: leash::guardrails::Baseline,
        #[command(flatten)]
        knobs: RecommendArgs,
        /// The last proposal (normally the `-o` DIR of the last run), with its evidence.json
        /// files; default: leash's policies applied in the cluster source.
        #[arg(long)]
        previous: Option<PathBuf>,
    },
    /// Evaluate every flow against a set of policies (egress at the source, ingress at the
    /// destination, Services after DNAT) and print a verdict for each: per flow record, or
    /// with `--store` per stored (pod, destination, port, protocol).
    #[command(group(ArgGroup::new("observed").args(["flows", "store", "store_file"])))]
    Audit {
        #[command(flatten)]
        source: ClusterArgs,
        #[command(flatten)]
        policies: PolicyArgs,
        #[command(flatten)]
        observed: ObservedArgs,
        /// `json`: one object per flow, in input order; `table`: aligned, with a summary.
        #[arg(long, default_value = "table")]
        format: leash::audit::Format,
        /// Exit with 3 when any flow is denied.
        #[arg(long)]
        fail_on_deny: bool,
        /// Exit with 3 when any DNS answer drifted (a name moved to an address the policies
        /// deny on the ports they allow for its other addresses).
        #[arg(long)]
        fail_on_drift: bool,
    },
    /// Name the policy and rule that allow a connection, or the policies that isolate the
    /// pod without allowing it.
    Explain {
        #[command(flatten)]
        source: ClusterArgs,
        #[command(flatten)]
        policies: PolicyArgs,
        /// The source pod, `NAMESPACE/POD`.
        #[arg(long)]
        from: String,
        /// The destination as dialed, `IP:PORT/PROTO` (`[v6]:PORT/PROTO` for IPv6).
        #[arg(long)]
        to: String,
        /// A name the pod's DNS lookup returned the destination for (repeatable): what
        /// CiliumNetworkPolicies' `toFQDNs` rules match.
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Propose the cluster baseline as ClusterNetworkPolicies: Admin denies to the cloud
    /// metadata addresses (where never used) and `--protected` ranges, a Baseline DNS accept
    /// and default deny; self-checked over the whole stack.
    #[command(group(ArgGroup::new("observed").args(["flows", "store", "store_file"])))]
    Guardrails {
        #[command(flatten)]
        source: ClusterArgs,
        #[command(flatten)]
        observed: ObservedArgs,
        /// Write `DIR/cluster/guardrails-*.yaml` and `DIR/cluster/REPORT.md` instead of a YAML
        /// stream (stale `guardrails-*.yaml` files there are removed).
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// A namespace the Baseline default deny leaves alone (repeatable); given, it
        /// replaces the default (kube-system and the CNI's namespaces present).
        #[arg(long = "exempt-namespace")]
        exempt: Vec<String>,
        /// A range the Admin tier denies from every namespace never observed reaching it
        /// (repeatable).
        #[arg(long)]
        protected: Vec<ipnet::IpNet>,
        /// Allow the experimental channel's fields (checked against its CRD).
        #[arg(long)]
        experimental: bool,
        /// leash's proposal (a policy file or directory, or `git:REV:PATH`), laid over the
        /// applied NetworkPolicies: the guardrails are proposed for (and self-checked over)
        /// that state. Without it the Baseline defers every namespace whose egress the
        /// applied NetworkPolicies do not lock down yet.
        #[arg(long)]
        proposed: Option<leash::policy_source::PolicySource>,
    },
    /// Compare two policy states: the exact reachability change per source workload, and the
    /// observed traffic whose verdict changes (allowed before and denied after: a break).
    Diff(DiffArgs),
    /// Each workload's rollout phase from its observed flows, the applied policies and a
    /// proposal: unmanaged, drifted, enforced, observing, would-deny or ready.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Propose the policies as pull requests to the team's policy repository: per namespace
    /// (or for all) a branch with the proposal in the layout of `recommend -o`, committed,
    /// pushed and opened or updated as a pull request with the diff and the evidence; nothing
    /// at all when no policy changed. Exit 3 when a change would break observed traffic.
    Pr(Box<PrCommand>),
    /// Run the recommender as a service: agents stream records over gRPC (mTLS) into a
    /// SQLite store; HTTP serves health, metrics, recommendations, destinations and audits.
    Serve(Box<ServeArgs>),
    /// Work on a store of `leash serve`: `migrate` moves one into another.
    #[command(subcommand)]
    Store(StoreCommand),
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

/// `leash store`.
#[derive(Subcommand)]
enum StoreCommand {
    /// Move a store into another (SQLite to PostgreSQL, or back): every batch id, flow and DNS
    /// observation with its names, pods and address history, and remembered alert. The
    /// target must be empty; the counts are checked after. Stop `leash serve` first.
    Migrate(MigrateArgs),
}

/// `leash store migrate`.
#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("source").required(true).args(["from", "from_file"])))]
#[command(group(ArgGroup::new("target").required(true).args(["to", "to_file"])))]
struct MigrateArgs {
    /// The store to read (the `--store` grammar: `PATH`, `sqlite:PATH`, `postgres://…`).
    #[arg(long, value_name = "STORE")]
    from: Option<leash::store::Location>,
    /// Read `--from`'s value from this file (one line).
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
    /// The store to write (created if missing).
    #[arg(long, value_name = "STORE")]
    to: Option<leash::store::Location>,
    /// Read `--to`'s value from this file (one line): a password stays out of arguments.
    #[arg(long, value_name = "FILE")]
    to_file: Option<PathBuf>,
    /// Merge into a target that already holds data (observations add up as commits do;
    /// the counts are not compared).
    #[arg(long)]
    into_non_empty: bool,
}

/// `leash store migrate`: exit 2 for a store that cannot be opened or a non-empty target,
/// 1 when the move fails or the counts differ.
fn store_migrate(args: &MigrateArgs) -> Result<(), Failure> {
    use leash::store::Location;
    let from = Location::resolve(args.from.as_ref(), args.from_file.as_deref())
        .map_err(bad_input)?
        .ok_or_else(|| Failure::BadInput("--from or --from-file is required".into()))?;
    let to = Location::resolve(args.to.as_ref(), args.to_file.as_deref())
        .map_err(bad_input)?
        .ok_or_else(|| Failure::BadInput("--to or --to-file is required".into()))?;
    let source = from.open_existing().map_err(bad_input)?;
    let target = to.open().map_err(bad_input)?;
    match leash::store::migrate::migrate(&*source, &*target, args.into_non_empty) {
        Ok(moved) => write_stdout(&format!("leash: moved {moved} from {from} to {to}\n")),
        Err(e @ leash::store::migrate::Error::NotEmpty(_)) => Err(bad_input(e)),
        Err(e) => Err(runtime_error(e)),
    }
}

/// `leash rollout`.
#[derive(Subcommand)]
enum RolloutCommand {
    /// The guardrails stage first (what the proposed guardrails would break), then one line
    /// (or JSON object) per workload: its phase, how long it was observed, and the flows the
    /// applied policies or the proposal deny.
    #[command(group(ArgGroup::new("observed").args(["flows", "store", "store_file"])))]
    Status {
        #[command(flatten)]
        source: ClusterArgs,
        #[command(flatten)]
        observed: ObservedArgs,
        /// The proposal: a policy file or directory, or `git:REV:PATH`; laid over the applied
        /// policies as `audit --policies` does. Without it there is no `would-deny`. Its
        /// ClusterNetworkPolicies are laid over the applied ones (leash's guardrails replace
        /// the applied guardrails): the guardrails stage.
        #[arg(long)]
        proposed: Option<leash::policy_source::PolicySource>,
        /// A workload observed for less than this is `observing`.
        #[arg(long, default_value = "24h", value_parser = leash_records::duration::parse_chrono)]
        min_observation: chrono::Duration,
        /// Only workloads in these namespaces. Repeatable.
        #[arg(long = "namespace", num_args = 1..)]
        namespaces: Vec<String>,
        /// `table`: the stage, then aligned, with a summary; `json`: one object per line, the
        /// stage (`"kind":"guardrails"`) then each workload (`"kind":"workload"`).
        #[arg(long, default_value = "table")]
        format: leash::rollout::Format,
    },
}

/// The recommender's knobs of `recommend` and `pr`, and their `--pr-` twins of `leash
/// serve`: one list, so they never drift apart.
macro_rules! recommend_flags {
    ($(#[$meta:meta])* $name:ident, $prefix:literal) => {
        $(#[$meta])*
        #[derive(clap::Args, Debug, Clone)]
        struct $name {
            /// Only workloads in these namespaces. Repeatable.
            #[arg(id = concat!($prefix, "namespace"), long = concat!($prefix, "namespace"), num_args = 1..)]
            namespaces: Vec<String>,
            /// At most this many ipBlocks per external rule.
            #[arg(id = concat!($prefix, "max-cidrs"), long = concat!($prefix, "max-cidrs"), default_value_t = 8)]
            max_cidrs: usize,
            /// Never widen an IPv4 block beyond this prefix length.
            #[arg(id = concat!($prefix, "max-prefix-v4"), long = concat!($prefix, "max-prefix-v4"), default_value_t = 24, value_parser = clap::value_parser!(u8).range(0..=32))]
            max_prefix_v4: u8,
            /// Never widen an IPv6 block beyond this prefix length.
            #[arg(id = concat!($prefix, "max-prefix-v6"), long = concat!($prefix, "max-prefix-v6"), default_value_t = 48, value_parser = clap::value_parser!(u8).range(0..=128))]
            max_prefix_v6: u8,
            /// Flag workloads observed for less than this (e.g. 24h, 90m, 7d).
            #[arg(id = concat!($prefix, "min-observation"), long = concat!($prefix, "min-observation"), default_value = "24h", value_parser = leash_records::duration::parse_chrono)]
            min_observation: chrono::Duration,
            /// NodeLocal DNSCache addresses. Repeatable; default 169.254.20.10.
            #[arg(id = concat!($prefix, "node-local-dns"), long = concat!($prefix, "node-local-dns"), num_args = 1..)]
            node_local_dns: Vec<IpAddr>,
            /// Drop a previous rule whose last evidence is older than this (e.g. 30d).
            #[arg(id = concat!($prefix, "expire-after"), long = concat!($prefix, "expire-after"), default_value = "30d", value_parser = leash_records::duration::parse_chrono)]
            expire_after: chrono::Duration,
            /// Write policies only for workloads whose rollout phase is `ready` (and keep those
            /// of `enforced` ones); REPORT.md lists the others with their phase and why.
            #[arg(id = concat!($prefix, "ready-only"), long = concat!($prefix, "ready-only"))]
            ready_only: bool,
            /// Published ranges: the same flags for every command (`leash serve` watches them).
            #[command(flatten)]
            ranges: IpRangesArgs,
        }

        impl $name {
            /// The proposal's options; exit 2 when a range file cannot be used.
            fn options(&self) -> Result<leash::proposal::Options, Failure> {
                let mut recommend = leash::recommend::Options {
                    max_cidrs: self.max_cidrs,
                    max_prefix_v4: self.max_prefix_v4,
                    max_prefix_v6: self.max_prefix_v6,
                    min_observation: self.min_observation,
                    namespaces: self.namespaces.iter().cloned().collect(),
                    published: self.ranges.load()?,
                    max_published_prefix_v4: self.ranges.max_published_prefix_v4,
                    max_published_prefix_v6: self.ranges.max_published_prefix_v6,
                    ..leash::recommend::Options::default()
                };
                if !self.node_local_dns.is_empty() {
                    recommend.classify.node_local_dns = self.node_local_dns.iter().copied().collect();
                }
                Ok(leash::proposal::Options {
                    recommend,
                    expire_after: self.expire_after,
                    ready_only: self.ready_only,
                    rollout: false,
                })
            }
        }
    };
}

/// Published provider ranges (`leash::ranges`) for `recommend`, `pr` and `serve`.
#[derive(clap::Args, Debug, Clone)]
struct IpRangesArgs {
    /// Published ranges: AWS ip-ranges.json, Google Cloud cloud.json, Azure Service Tags
    /// JSON, or a YAML map of names to CIDR lists. A named external rule allows the range
    /// its addresses fall in instead of /32s. Repeatable.
    #[arg(long = "ip-ranges", num_args = 1.., value_name = "FILE")]
    ip_ranges: Vec<PathBuf>,
    /// Use no published IPv4 range wider than this prefix length.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(0..=32))]
    max_published_prefix_v4: u8,
    /// Use no published IPv6 range wider than this prefix length.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u8).range(0..=128))]
    max_published_prefix_v6: u8,
}

impl IpRangesArgs {
    /// The files' ranges; exit 2 naming the file and entry when one cannot be used.
    fn load(&self) -> Result<std::sync::Arc<leash::ranges::PublishedRanges>, Failure> {
        leash::ranges::load(&self.ip_ranges)
            .map(std::sync::Arc::new)
            .map_err(bad_input)
    }
}

recommend_flags!(
    /// The recommender's knobs of `recommend` and `pr`.
    RecommendArgs, ""
);
recommend_flags!(
    /// The recommender's knobs of the pull-request loop of `leash serve`.
    ServePrRecommendArgs, "pr-"
);

/// `leash pr`.
#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("observed").args(["flows", "store", "store_file"])))]
struct PrCommand {
    #[command(flatten)]
    source: ClusterArgs,
    #[command(flatten)]
    observed: ObservedArgs,
    #[command(flatten)]
    target: PrArgs,
    /// Where clones of the repository are kept; default `$XDG_CACHE_HOME/leash/repos`
    /// (`~/.cache/leash/repos`).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    #[command(flatten)]
    knobs: RecommendArgs,
}

/// The flags of `leash pr` that say where the proposal goes, and their `--pr-` twins of
/// `leash serve`: one list, so the two never drift apart.
macro_rules! pr_flags {
    ($(#[$meta:meta])* $name:ident, $prefix:literal, required = $required:literal) => {
        $(#[$meta])*
        #[derive(clap::Args, Debug, Clone)]
        struct $name {
            /// The policy repository: an `https://` or `ssh://` URL, `user@host:path`, or a
            /// local path (`http://` only on loopback).
            #[arg(id = concat!($prefix, "repo"), long = concat!($prefix, "repo"), required = $required, value_name = "URL|PATH")]
            repo: Option<String>,
            /// The proposal's directory inside the repository, in the layout of
            /// `recommend -o`.
            #[arg(id = concat!($prefix, "path"), long = concat!($prefix, "path"), default_value = ".", value_name = "DIR")]
            path: PathBuf,
            /// The branch pull requests go to; leash never pushes to it.
            #[arg(id = concat!($prefix, "base"), long = concat!($prefix, "base"), default_value = "main")]
            base: String,
            /// leash's branches are `<prefix><namespace>` or `<prefix>all`; only they are pushed.
            #[arg(id = concat!($prefix, "branch-prefix"), long = concat!($prefix, "branch-prefix"), default_value = "leash/")]
            branch_prefix: String,
            /// One pull request per namespace, or one for all.
            #[arg(id = concat!($prefix, "group-by"), long = concat!($prefix, "group-by"), value_enum, default_value = "namespace")]
            group_by: leash::pr::run::GroupBy,
            /// The pull request API; default from the repository URL's host (`github…` or
            /// `gitlab…`), `none` for a local path. `none` only pushes branches.
            #[arg(id = concat!($prefix, "provider"), long = concat!($prefix, "provider"), value_enum)]
            provider: Option<leash::pr::provider::Kind>,
            /// The provider's API (GitHub Enterprise, self-hosted GitLab); default from the
            /// repository URL.
            #[arg(id = concat!($prefix, "api-url"), long = concat!($prefix, "api-url"), value_name = "URL")]
            api_url: Option<String>,
            /// A PEM CA bundle to trust for the provider's API and the repository's HTTPS
            /// (a private CA), besides the system's.
            #[arg(id = concat!($prefix, "api-ca-file"), long = concat!($prefix, "api-ca-file"), value_name = "FILE")]
            api_ca_file: Option<PathBuf>,
            /// The repository at the provider (`owner/repo`, `group/project`); default from
            /// the repository URL; needed for a local path or a mirror.
            #[arg(id = concat!($prefix, "project"), long = concat!($prefix, "project"), value_name = "OWNER/NAME")]
            project: Option<String>,
            /// A file holding the provider's token (for HTTPS git and the API); default:
            /// the environment variable LEASH_GIT_TOKEN.
            #[arg(id = concat!($prefix, "token-file"), long = concat!($prefix, "token-file"), value_name = "FILE")]
            token_file: Option<PathBuf>,
            /// For an SSH repository: the private key file.
            #[arg(id = concat!($prefix, "ssh-key"), long = concat!($prefix, "ssh-key"), value_name = "FILE")]
            ssh_key: Option<PathBuf>,
            /// For an SSH repository: the known_hosts file the server's key must be in.
            #[arg(id = concat!($prefix, "ssh-known-hosts"), long = concat!($prefix, "ssh-known-hosts"), value_name = "FILE")]
            ssh_known_hosts: Option<PathBuf>,
            /// Author and committer of leash's commits, `Name <email>`.
            #[arg(id = concat!($prefix, "author"), long = concat!($prefix, "author"), default_value = "leash <leash@localhost>")]
            author: String,
            /// Open the pull request even when the change breaks observed traffic.
            #[arg(id = concat!($prefix, "allow-breaks"), long = concat!($prefix, "allow-breaks"))]
            allow_breaks: bool,
            /// Print each commit message and pull request body; push nothing, call no API.
            #[arg(id = concat!($prefix, "dry-run"), long = concat!($prefix, "dry-run"))]
            dry_run: bool,
            /// Propose the cluster guardrails (ClusterNetworkPolicies, as `leash guardrails`)
            /// as their own pull request, branch `<prefix>guardrails`, files under
            /// `<path>/cluster/`, before the namespaces'. Off by default: it needs a
            /// ClusterNetworkPolicy implementation in the cluster.
            #[arg(id = concat!($prefix, "guardrails"), long = concat!($prefix, "guardrails"))]
            guardrails: bool,
            /// With guardrails: a namespace the Baseline default deny leaves alone
            /// (repeatable); given, it replaces the default (kube-system and the CNI's).
            #[arg(id = concat!($prefix, "exempt-namespace"), long = concat!($prefix, "exempt-namespace"), requires = concat!($prefix, "guardrails"), value_name = "NS")]
            exempt: Vec<String>,
            /// With guardrails: a range the Admin tier denies from every namespace never
            /// observed reaching it (repeatable).
            #[arg(id = concat!($prefix, "protected"), long = concat!($prefix, "protected"), requires = concat!($prefix, "guardrails"), value_name = "CIDR")]
            protected: Vec<ipnet::IpNet>,
        }

        impl $name {
            /// The flags, whatever their prefix.
            fn spec(&self) -> PrSpec {
                PrSpec {
                    repo: self.repo.clone(),
                    path: self.path.clone(),
                    base: self.base.clone(),
                    branch_prefix: self.branch_prefix.clone(),
                    group_by: self.group_by,
                    provider: self.provider,
                    api_url: self.api_url.clone(),
                    api_ca_file: self.api_ca_file.clone(),
                    project: self.project.clone(),
                    token_file: self.token_file.clone(),
                    ssh_key: self.ssh_key.clone(),
                    ssh_known_hosts: self.ssh_known_hosts.clone(),
                    author: self.author.clone(),
                    allow_breaks: self.allow_breaks,
                    dry_run: self.dry_run,
                    guardrails: self.guardrails.then(|| leash::guardrails::Options {
                        exempt: (!self.exempt.is_empty())
                            .then(|| self.exempt.iter().cloned().collect()),
                        protected: self.protected.clone(),
                        experimental: false,
                    }),
                }
            }
        }
    };
}

pr_flags!(
    /// Where `leash pr` proposes.
    PrArgs, "", required = true
);
pr_flags!(
    /// The pull-request loop of `leash serve` (`--pr-repo` turns it on).
    ServePrArgs, "pr-", required = false
);

/// The flags of [`pr_flags!`], whatever their prefix.
#[derive(Debug, Clone)]
struct PrSpec {
    repo: Option<String>,
    path: PathBuf,
    base: String,
    branch_prefix: String,
    group_by: leash::pr::run::GroupBy,
    provider: Option<leash::pr::provider::Kind>,
    api_url: Option<String>,
    api_ca_file: Option<PathBuf>,
    project: Option<String>,
    token_file: Option<PathBuf>,
    ssh_key: Option<PathBuf>,
    ssh_known_hosts: Option<PathBuf>,
    author: String,
    allow_breaks: bool,
    dry_run: bool,
    /// `--guardrails` and its knobs.
    guardrails: Option<leash::guardrails::Options>,
}

/// Where `recommend`, `audit`, `pr` and `rollout status` read the observations: record files
/// or the store of `leash serve` (the command's `observed` group requires one of them).
#[derive(clap::Args, Debug, Clone)]
struct ObservedArgs {
    /// Flow and DNS records (JSON lines, v1); `-` reads stdin. Repeatable.
    #[arg(long = "flows", num_args = 1..)]
    flows: Vec<PathBuf>,
    /// The observation store of `leash serve`, instead of `--flows`: a SQLite file (`PATH`,
    /// `sqlite:PATH`) or `postgres://…`. Default: `$LEASH_STORE` (when no `--flows`).
    #[arg(long, value_name = "STORE")]
    store: Option<leash::store::Location>,
    /// Read `--store`'s value from this file (one line): a password stays out of arguments.
    #[arg(long, value_name = "FILE")]
    store_file: Option<PathBuf>,
    /// With a store: only observations last seen within this long (e.g. 7d, 1h30m).
    #[arg(long, conflicts_with = "flows", value_parser = leash_records::duration::parse)]
    since: Option<std::time::Duration>,
}

impl ObservedArgs {
    /// The observations, attributed to `cluster`'s pods, and the stored ones that could not
    /// be (said on stderr).
    fn observe(
        &self,
        cluster: &leash::cluster::Cluster,
    ) -> Result<
        (
            leash::observations::Observations,
            Vec<leash::observations::Skipped>,
        ),
        Failure,
    > {
        let store = observed_store(self.store.as_ref(), self.store_file.as_deref(), &self.flows)?;
        observe(cluster, store.as_ref(), self.since, &self.flows)
    }

    /// The store's whole retention when `--since` narrows the window ([`store_history`]).
    fn history(
        &self,
        cluster: &leash::cluster::Cluster,
    ) -> Result<Option<leash::observations::Observations>, Failure> {
        let store = observed_store(self.store.as_ref(), self.store_file.as_deref(), &self.flows)?;
        store_history(store.as_ref(), self.since, cluster)
    }

    /// The end of the observation window ([`window_end`]).
    fn window_end(
        &self,
        observations: &leash::observations::Observations,
    ) -> chrono::DateTime<chrono::Utc> {
        // Exactly one of the records and a store is read (`observed_store`).
        window_end(self.flows.is_empty(), observations)
    }
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

/// The policies `audit` and `explain` evaluate: the policy state (`leash::policy_state`).
#[derive(clap::Args, Debug, Clone)]
struct PolicyArgs {
    /// A policy file or a directory of them (searched recursively): a proposal. It replaces
    /// the applied policies labelled `app.kubernetes.io/managed-by: leash` in the namespaces
    /// it covers, and applied ones of the same namespace and name; the other applied
    /// policies (those of the snapshot, or of the API server with `--kube`) stay. Without
    /// it, the applied policies alone.
    #[arg(long)]
    policies: Option<PathBuf>,
    /// Evaluate the `--policies` set alone, without the applied policies.
    #[arg(long, requires = "policies")]
    policies_only: bool,
}

/// `leash diff`.
#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("observed").args(["flows", "store", "store_file"])))]
struct DiffArgs {
    #[command(flatten)]
    source: ClusterArgs,
    /// The state before: `applied` (the cluster source's policies), a policy file or
    /// directory (over the applied policies, as `audit --policies`), or `git:REV:PATH`.
    #[arg(long, value_name = "STATE")]
    from: leash::policy_source::PolicySource,
    /// The state after, in the grammar of `--from`.
    #[arg(long, value_name = "STATE")]
    to: leash::policy_source::PolicySource,
    /// Flow and DNS records (JSON lines, v1) whose flows are evaluated under both states;
    /// `-` reads stdin. Repeatable.
    #[arg(long = "flows", num_args = 1..)]
    flows: Vec<PathBuf>,
    /// The observation store of `leash serve`, instead of `--flows` (the grammar of
    /// `recommend --store`). Not `$LEASH_STORE`: diff reads observations only when asked.
    #[arg(long, value_name = "STORE")]
    store: Option<leash::store::Location>,
    /// Read `--store`'s value from this file (one line).
    #[arg(long, value_name = "FILE")]
    store_file: Option<PathBuf>,
    /// With a store: only observations last seen within this long (e.g. 7d, 1h30m).
    #[arg(long, conflicts_with = "flows", value_parser = leash_records::duration::parse)]
    since: Option<std::time::Duration>,
    /// Only sources in these namespaces. Repeatable.
    #[arg(long = "namespace", num_args = 1..)]
    namespaces: Vec<String>,
    /// `markdown` (a pull-request body), `json` (one object per line) or `table`.
    #[arg(long, default_value = "markdown")]
    format: leash::diff::Format,
    /// Exit with 3 when an observed flow allowed under `--from` is denied under `--to`.
    #[arg(long, requires = "observed")]
    fail_on_break: bool,
}

/// `leash serve`.
#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("transport").required(true).args(["tls_cert", "insecure"])))]
struct ServeArgs {
    /// gRPC ingest address (agents connect here).
    #[arg(long, default_value = "0.0.0.0:7443")]
    listen: std::net::SocketAddr,
    /// HTTP address: /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http: std::net::SocketAddr,
    /// The UI listener: the web UI and the /v1 read API. Reach it with `kubectl
    /// port-forward`; another address than loopback needs --ui-auth.
    #[arg(long, default_value = "127.0.0.1:8081")]
    ui_listen: std::net::SocketAddr,
    /// The UI listener's authentication: `kube` (bearer tokens and RBAC through the API
    /// server: TokenReview, SubjectAccessReview of `get` on egressmaps.leash.dev per
    /// namespace; needs --kube) or `none`. Default: none on loopback; refused elsewhere.
    #[arg(long, value_name = "kube|none")]
    ui_auth: Option<leash::serve::auth::UiAuth>,
    /// The UI listener's PEM certificate chain: with --ui-tls-key it speaks HTTPS (HTTP/1.1
    /// and h2; no client certificates), reloading both files when they change. Required for
    /// --ui-auth kube beyond loopback.
    #[arg(long, requires = "ui_tls_key")]
    ui_tls_cert: Option<PathBuf>,
    /// The UI listener's PEM private key (with --ui-tls-cert).
    #[arg(long, requires = "ui_tls_cert")]
    ui_tls_key: Option<PathBuf>,
    /// Serve --ui-auth kube over plain HTTP beyond loopback: only behind a proxy that
    /// terminates TLS in front of leash.
    #[arg(long, conflicts_with = "ui_tls_cert")]
    ui_insecure_http: bool,
    /// The store (created if missing): a SQLite file (`PATH`, `sqlite:PATH`) or
    /// `postgres://…`. Default: `$LEASH_STORE`, else /var/lib/leash/leash.db.
    #[arg(long, value_name = "STORE")]
    store: Option<leash::store::Location>,
    /// Read `--store`'s value from this file (one line): a password stays out of arguments.
    #[arg(long, value_name = "FILE", conflicts_with = "store")]
    store_file: Option<PathBuf>,
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
    /// How agents are identified: `token` (each stream carries the agent's projected
    /// ServiceAccount token, audience `leash`, reviewed with TokenReview; a batch is accepted
    /// only for the node the token is bound to) or `mtls` (the shared client certificate
    /// only: any agent may write for any node). Default: token with --kube; mtls with
    /// --cluster FILE, which has no API server to review tokens.
    #[arg(long, value_name = "token|mtls")]
    agent_auth: Option<leash::ingest::identity::AgentAuth>,
    /// With --agent-auth token: the agents' user, `system:serviceaccount:NAMESPACE:NAME`.
    #[arg(long, value_name = "USER",
          default_value = leash::ingest::identity::DEFAULT_AGENT_USER)]
    agent_service_account: String,
    /// Accept agents over plaintext gRPC without client certificates. For tests only.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key", "tls_client_ca"])]
    insecure: bool,
    /// Delete observations last seen longer ago than this. Keep it at least
    /// `--expire-after`: a rule's last evidence comes from what the store still holds.
    #[arg(long, default_value = "45d", value_parser = leash_records::duration::parse)]
    retention: std::time::Duration,
    /// The `--expire-after` of the recommendations made from this store: `serve` warns when
    /// `--retention` is shorter.
    #[arg(long, default_value = "30d", value_parser = leash_records::duration::parse)]
    expire_after: std::time::Duration,
    /// How often stored flows are checked against the applied policies (unexpected egress).
    #[arg(long, default_value = "60s", value_parser = leash_records::duration::parse_positive)]
    check_interval: std::time::Duration,
    /// Elect one leader among the replicas with a coordination.k8s.io Lease: only the leader
    /// runs the alert checks, the pull-request loop and retention. Default: on with --kube,
    /// off (one replica) with --cluster FILE.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true")]
    leader_elect: Option<bool>,
    /// The Lease, NAMESPACE/NAME. Default: leash-serve in $POD_NAMESPACE, else leash-system.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    leader_lease: Option<leash::serve::leader::LeaseRef>,
    /// At most this many records in one batch.
    #[arg(long, default_value_t = 65_536)]
    max_batch_records: usize,
    /// At most this many bytes in one gRPC message.
    #[arg(long, default_value_t = 16 << 20)]
    max_message_bytes: usize,
    /// At most this many ipBlocks per external rule (served recommendations).
    #[arg(long, default_value_t = 8)]
    max_cidrs: usize,
    /// Proposed policies to shadow-evaluate every stored flow against (a file or directory,
    /// or `git:REV:PATH`), laid over the applied ones: the rollout board's `would-deny`.
    #[arg(long)]
    proposed: Option<leash::policy_source::PolicySource>,
    /// How often `--proposed` is read again; when its policies changed, the stored flows
    /// are evaluated again at once.
    #[arg(long, default_value = "10s", value_parser = leash_records::duration::parse_positive)]
    proposed_poll: std::time::Duration,
    /// On the rollout board, a workload observed for less than this is `observing`.
    #[arg(long, default_value = "24h", value_parser = leash_records::duration::parse_chrono)]
    min_observation: chrono::Duration,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    alerts: AlertArgs,
    #[command(flatten)]
    pr: ServePrArgs,
    #[command(flatten)]
    pr_knobs: ServePrRecommendArgs,
    /// How often the `--ip-ranges` files are looked at; changed ranges trigger a
    /// pull-request run.
    #[arg(long, default_value = "30s", value_parser = leash_records::duration::parse_positive)]
    ip_ranges_poll: std::time::Duration,
    /// With `--pr-repo`: a pull-request run at least this often.
    #[arg(long, default_value = "24h", value_parser = leash_records::duration::parse_positive)]
    pr_interval: std::time::Duration,
    /// With `--pr-repo`: an unexpected-egress alert triggers a run once it recurred in this
    /// many checks.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pr_after: u64,
    /// Where `serve` keeps its working state (the clones of `--pr-repo`); default: the
    /// store's directory, on the recommender's volume.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

/// Where `leash serve`'s alerts go (see `leash::serve::webhook`).
#[derive(clap::Args, Debug)]
struct AlertArgs {
    /// POST every alert as JSON to this URL (https, or http to loopback), with retries.
    #[arg(long, value_parser = leash::serve::webhook::WebhookUrl::parse)]
    alert_webhook: Option<leash::serve::webhook::WebhookUrl>,
    /// Read the webhook URL from this file (it is a secret: Slack's carries its credentials).
    #[arg(long, conflicts_with = "alert_webhook")]
    alert_webhook_file: Option<PathBuf>,
    /// Trust this PEM CA for the webhook, besides the system's roots.
    #[arg(long)]
    alert_webhook_ca_file: Option<PathBuf>,
    /// Send an alert that keeps happening again after this long.
    #[arg(long, default_value = "24h", value_parser = leash_records::duration::parse_positive)]
    alert_repeat: std::time::Duration,
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

/// Why a command failed. Each kind is one exit code (README, "Conventions"); clap's own
/// usage errors exit 2 as well.
enum Failure {
    /// Exit 1: I/O, the network, a provider, or a failed self-check (a bug of leash's).
    Runtime(String),
    /// Exit 2: bad input or usage (a file named on the command line that is missing or
    /// malformed, a bad value).
    BadInput(String),
    /// Exit 3: a check the user asked for found a problem (`--fail-on-deny`, `--fail-on-break`).
    CheckFailed(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Runtime(_) => 1,
            Failure::BadInput(_) => 2,
            Failure::CheckFailed(_) => 3,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Runtime(m) | Failure::BadInput(m) | Failure::CheckFailed(m) => m,
        }
    }
}

/// Exit 2 with `e` and its causes (errors never include their source in their message).
fn bad_input(e: impl std::error::Error) -> Failure {
    Failure::BadInput(Chain(&e).to_string())
}

/// Exit 1 with `e` and its causes.
fn runtime_error(e: impl std::error::Error) -> Failure {
    Failure::Runtime(Chain(&e).to_string())
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Store(StoreCommand::Migrate(args)) => store_migrate(&args),
        Command::Recommend {
            source,
            observed,
            output,
            format,
            baseline,
            knobs,
            previous,
        } => {
            let options = knobs.options()?;
            let (cluster, applied) = load_cluster(&source)?;
            let (observations, skipped) = observed.observe(&cluster)?;
            // Stability: the previous proposal, and the last evidence of its rules over the
            // store's whole retention (not only --since).
            let prev = previous_proposal(previous.as_deref(), &applied.policies)?;
            let history = observed.history(&cluster)?;
            let skipped = leash::recommend::skipped_lines(&skipped);
            let inputs = leash::proposal::Observed {
                cluster: &cluster,
                applied: &applied.policies,
                applied_cluster: &applied.cluster_policies,
                applied_source: &applied.source,
                observations: &observations,
                history: history.as_ref(),
                as_of: observed.window_end(&observations),
                skipped: &skipped,
            };
            let proposal =
                leash::proposal::propose(&inputs, prev.as_ref(), &options, chrono::Utc::now())
                    .map_err(proposal_failure)?;
            let mut recommendation = proposal.recommendation;
            leash::guardrails::apply_baseline(&mut recommendation, baseline);
            // `--format cilium`: the same recommendation as CiliumNetworkPolicies, with their
            // own self-check (a failure is leash's bug, as for the NetworkPolicies).
            let cilium = match format {
                leash::render::cilium::Format::NetworkPolicy => None,
                leash::render::cilium::Format::Cilium => Some(
                    leash::render::cilium::checked(&cluster, &recommendation, &observations)
                        .map_err(|e| proposal_failure(leash::proposal::Error::SelfCheck(e)))?,
                ),
            };
            match output {
                Some(dir) => {
                    // Every name is checked and DIR inspected before anything is written; a
                    // failed run leaves DIR as it was, and says only why.
                    let written = leash::render::outdir::write_dir_as(
                        &dir,
                        &cluster,
                        &recommendation,
                        &options.recommend.namespaces,
                        cilium.as_ref(),
                    )
                    .map_err(|e| match e {
                        // The checks passed; writing failed.
                        leash::render::outdir::Error::Io { .. }
                        | leash::render::outdir::Error::Render(_)
                        | leash::render::outdir::Error::RenderCilium(_) => runtime_error(e),
                        e => bad_input(e),
                    })?;
                    for w in &written.warnings {
                        eprintln!("leash: warning: {w}");
                    }
                    eprintln!("{}", leash::render::summary(&recommendation));
                }
                None => {
                    eprintln!("{}", leash::render::summary(&recommendation));
                    // Serializing our own objects: a bug, not the user's input.
                    let text = match &cilium {
                        Some(c) => leash::render::cilium::yaml_stream(&recommendation, c)
                            .map_err(runtime_error)?,
                        None => leash::render::yaml_stream(&leash::recommend::all_policies(
                            &cluster,
                            &recommendation,
                        ))
                        .map_err(runtime_error)?,
                    };
                    write_stdout(&text)?;
                }
            }
            Ok(())
        }
        Command::Audit {
            source,
            policies,
            observed,
            format,
            fail_on_deny,
            fail_on_drift,
        } => {
            let store = observed_store(
                observed.store.as_ref(),
                observed.store_file.as_deref(),
                &observed.flows,
            )?;
            let ObservedArgs { flows, since, .. } = observed;
            let (cluster, applied) = load_cluster(&source)?;
            let (set, cilium) = policy_state(applied, &policies)?;
            let mut located = Vec::new();
            // Drift: the input's DNS answers and the connections that give each name's ports.
            let mut answers = Vec::new();
            let mut connections = Vec::new();
            if let Some(store) = &store {
                let store = open_store(store)?;
                let (obs, skipped) =
                    leash::observations::load(&*store, &cluster, since_time(since))
                        .map_err(bad_input)?;
                report_skipped(&skipped);
                if obs.unattributed_flows > 0 {
                    eprintln!(
                        "leash: {} flow events outside pods are not audited",
                        obs.unattributed_flows
                    );
                }
                answers = leash::audit::stored_answers(&cluster, &obs);
                for (flow, ev) in leash::audit::stored_flows(&cluster, &obs) {
                    if let Some(pod) = &flow.pod {
                        connections.push(leash::drift::Connection {
                            pod: pod.clone(),
                            flow: flow.flow,
                            names: ev.names.clone(),
                        });
                    }
                    located.push(flow);
                }
            }
            for f in &flows {
                let (read, dns) = leash::audit::read_inputs(f).map_err(bad_input)?;
                connections.extend(read.iter().filter_map(|a| {
                    Some(leash::drift::Connection {
                        pod: a.pod.clone()?,
                        flow: a.flow,
                        names: Default::default(),
                    })
                }));
                located.extend(read);
                answers.extend(dns);
            }
            let mut report = leash::audit::audit(&cluster, &set, &located).map_err(bad_input)?;
            if set.cluster_policies().has_domain_names() {
                // ClusterNetworkPolicies' domainNames match the names the input's DNS
                // records returned for each address.
                let (obs, _) = observe(&cluster, store.as_ref(), since, &flows)?;
                let asked = leash::cilium::mixed::asked_names(&cluster, &obs);
                leash::audit::with_names(&mut report, &cluster, &set, &asked);
            }
            report.drift = leash::drift::from_answers(&cluster, &set, &answers, &connections);
            if !cilium.is_empty() {
                // The CiliumNetworkPolicies' toFQDNs need the names the input's DNS records
                // returned for each address.
                let (obs, _) = observe(&cluster, store.as_ref(), since, &flows)?;
                let overlay = leash::cilium::mixed::Overlay::new(
                    &cluster,
                    cilium,
                    Some(&obs),
                    std::collections::BTreeSet::new(),
                );
                for e in &mut report.entries {
                    if let Some(pod) = cluster.pod_by_name(&e.source.namespace, &e.source.name) {
                        overlay.apply(&cluster, pod, e.flow.protocol, &mut e.evaluation);
                    }
                }
            }
            for c in leash::audit::conflicts(&report) {
                eprintln!("leash: warning: {c}");
            }
            write_stdout(&report.render(format))?;
            if fail_on_deny && report.any_denied() {
                return Err(Failure::CheckFailed(format!(
                    "{} of {} flows denied",
                    report.denied(),
                    report.entries.len()
                )));
            }
            if fail_on_drift && report.any_drift() {
                return Err(Failure::CheckFailed(format!(
                    "{} DNS answers drifted",
                    report.drift.len()
                )));
            }
            Ok(())
        }
        Command::Explain {
            source,
            policies,
            from,
            to,
            names,
        } => {
            let from = leash::explain::parse_pod(&from).map_err(bad_input)?;
            let flow = leash::explain::parse_target(&to).map_err(bad_input)?;
            let (cluster, applied) = load_cluster(&source)?;
            let (set, cilium) = policy_state(applied, &policies)?;
            let names: BTreeSet<String> = names
                .iter()
                .map(|n| leash::observations::normalize_name(n))
                .collect();
            let overlay =
                leash::cilium::mixed::Overlay::new(&cluster, cilium.clone(), None, names.clone());
            let explanation =
                leash::explain::explain_with_names(&cluster, &set, &from, &flow, &names, |ev| {
                    match cluster.pod_by_name(&from.namespace, &from.name) {
                        Some(pod) if !cilium.is_empty() => {
                            overlay.apply(&cluster, pod, flow.protocol, ev)
                        }
                        _ => Vec::new(),
                    }
                })
                .map_err(bad_input)?;
            write_stdout(&explanation.to_string())
        }
        Command::Rollout(RolloutCommand::Status {
            source,
            observed,
            proposed,
            min_observation,
            namespaces,
            format,
        }) => {
            let (cluster, applied) = load_cluster(&source)?;
            let given = match &proposed {
                Some(p) => p.load_tiers().map_err(bad_input)?,
                None => None,
            };
            let (observations, _skipped) = observed.observe(&cluster)?;
            let board = rollout_board(
                &cluster,
                &applied,
                &observations,
                given.as_ref(),
                min_observation,
                namespaces.into_iter().collect(),
            )?;
            write_stdout(&leash::rollout::render(
                &board.stage,
                &board.workloads,
                format,
            ))
        }
        Command::Guardrails {
            source,
            observed,
            output,
            exempt,
            protected,
            experimental,
            proposed,
        } => guardrails(
            source,
            observed,
            output,
            exempt,
            protected,
            experimental,
            proposed,
        ),
        Command::Pr(args) => pr(*args),
        Command::Serve(args) => serve(*args),
        Command::Diff(args) => diff(args),
        Command::Certs {
            out,
            server_names,
            clients,
            force,
        } => {
            let ca =
                leash::certs::generate_with(&out, &server_names, &clients, force).map_err(|e| {
                    match e {
                        leash::certs::Error::Write { .. }
                        | leash::certs::Error::Generate { .. } => runtime_error(e),
                        e => bad_input(e),
                    }
                })?;
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

/// `leash guardrails`: propose, self-check over the whole stack (exit 1 on failure: a bug or
/// traffic the guardrails would break), then print or write `-o DIR`.
fn guardrails(
    source: ClusterArgs,
    observed: ObservedArgs,
    output: Option<PathBuf>,
    exempt: Vec<String>,
    protected: Vec<ipnet::IpNet>,
    experimental: bool,
    proposed: Option<leash::policy_source::PolicySource>,
) -> Result<(), Failure> {
    let (cluster, applied) = load_cluster(&source)?;
    // The proposal may hold guardrails already (`guardrails -o` into recommend's directory):
    // they are proposed again; its other ClusterNetworkPolicies are laid over the applied ones.
    let (given, given_tiers) = match &proposed {
        Some(p) => p.load_tiers().map_err(bad_input)?.unwrap_or_default(),
        None => Default::default(),
    };
    let tiers = leash::rollout::board::proposed_tiers(&applied.cluster_policies, &given_tiers);
    let (observations, _skipped) = observed.observe(&cluster)?;
    let options = leash::guardrails::Options {
        exempt: (!exempt.is_empty()).then(|| exempt.into_iter().collect()),
        protected,
        experimental,
    };
    let config = leash::classify::ClassifierConfig::default();
    // The NetworkPolicies in force: the applied ones, with the proposal over them when given.
    let nps = leash::policy_state::combine(&applied.policies, &given);
    let stack = leash::guardrails::Stack {
        network_policies: &nps.objects,
        cluster_policies: &tiers,
    };
    let g = leash::guardrails::propose(&cluster, &observations, &config, &options, &stack)
        .map_err(runtime_error)?;
    if !g.deferred.is_empty() {
        eprintln!(
            "leash: the Baseline default deny defers {} namespace(s) whose egress no \
             NetworkPolicy locks down yet: {} (see REPORT.md)",
            g.deferred.len(),
            g.deferred.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    leash::guardrails::self_check(&cluster, &cluster, &observations, &g, &stack).map_err(|e| {
        if let leash::guardrails::Error::Denied(denied) = &e {
            for d in denied {
                eprintln!(
                    "leash: denied by the stack: {} -> {} ({})",
                    d.pod, d.destination, d.reason
                );
            }
        }
        Failure::Runtime(format!("guardrails self-check failed: {}", Chain(&e)))
    })?;
    match output {
        Some(dir) => {
            let written = leash::guardrails::outdir::write_dir(&dir, &g).map_err(runtime_error)?;
            eprintln!(
                "leash: wrote {} guardrail file(s) to {}",
                written.len(),
                dir.join("cluster").display()
            );
            Ok(())
        }
        None => write_stdout(&leash::guardrails::yaml(&g).map_err(runtime_error)?),
    }
}

/// The previous proposal of `recommend`: `--previous DIR`, else leash's applied policies
/// (without evidence), else none. Rules that cannot be carried are said on stderr.
fn previous_proposal(
    dir: Option<&std::path::Path>,
    applied: &[k8s_openapi::api::networking::v1::NetworkPolicy],
) -> Result<Option<leash::recommend::Previous>, Failure> {
    let (policies, evidence) = match dir {
        Some(dir) => leash::render::outdir::read_previous(dir).map_err(bad_input)?,
        None => (applied.to_vec(), Default::default()),
    };
    let (prev, skipped) = leash::recommend::Previous::from_policies(&policies, &evidence);
    for s in skipped {
        eprintln!("leash: {s}");
    }
    Ok((dir.is_some() || !prev.policies.is_empty()).then_some(prev))
}

/// The observations of the store's whole retention when `--since` narrows the window (the
/// last evidence of previous rules), else none: the window's are the history.
fn store_history(
    store: Option<&leash::store::Location>,
    since: Option<std::time::Duration>,
    cluster: &leash::cluster::Cluster,
) -> Result<Option<leash::observations::Observations>, Failure> {
    match (store, since) {
        (Some(path), Some(_)) => Ok(Some(
            leash::observations::load(&*open_store(path)?, cluster, None)
                .map_err(bad_input)?
                .0,
        )),
        _ => Ok(None),
    }
}

/// The end of the observation window: a store's ends now; record files end at their last
/// observation, so that a re-run on the same files gives the same bytes.
fn window_end(
    from_store: bool,
    observations: &leash::observations::Observations,
) -> chrono::DateTime<chrono::Utc> {
    if from_store {
        chrono::Utc::now()
    } else {
        leash::recommend::previous::window_end(observations).unwrap_or_else(chrono::Utc::now)
    }
}

/// A proposal that could not be made: a failed self-check is leash's bug (exit 1), an
/// applied policy that cannot be evaluated is the input's (exit 2).
fn proposal_failure(e: leash::proposal::Error) -> Failure {
    match e {
        leash::proposal::Error::SelfCheck(_) => runtime_error(e),
        leash::proposal::Error::Applied { .. } => bad_input(e),
    }
}

/// Reads observations from a store or from record files, attributed to `cluster`'s pods,
/// with the stored observations that could not be (also said on stderr).
fn observe(
    cluster: &leash::cluster::Cluster,
    store: Option<&leash::store::Location>,
    since: Option<std::time::Duration>,
    flows: &[PathBuf],
) -> Result<
    (
        leash::observations::Observations,
        Vec<leash::observations::Skipped>,
    ),
    Failure,
> {
    match store {
        Some(path) => {
            let store = open_store(path)?;
            let (observations, skipped) =
                leash::observations::load(&*store, cluster, since_time(since))
                    .map_err(bad_input)?;
            report_skipped(&skipped);
            Ok((observations, skipped))
        }
        None => Ok((
            leash::observations::Observations::read_paths(flows, cluster).map_err(bad_input)?,
            Vec::new(),
        )),
    }
}

/// Opens the store of `leash serve` for reading; a missing SQLite file is an error, not an
/// empty store.
fn open_store(location: &leash::store::Location) -> Result<Box<dyn leash::store::Store>, Failure> {
    location.open_existing().map_err(bad_input)
}

/// The store a command reads observations from: `--store`, `--store-file`, else
/// `$LEASH_STORE` when no `--flows` are given; `None` with `--flows`. Neither is a usage
/// error.
fn observed_store(
    store: Option<&leash::store::Location>,
    store_file: Option<&std::path::Path>,
    flows: &[PathBuf],
) -> Result<Option<leash::store::Location>, Failure> {
    if !flows.is_empty() {
        return Ok(None);
    }
    match leash::store::Location::resolve(store, store_file).map_err(bad_input)? {
        Some(l) => Ok(Some(l)),
        None => Err(Failure::BadInput(format!(
            "one of --flows, --store or --store-file is required (or {})",
            leash::store::location::ENV
        ))),
    }
}

/// A tokio runtime for the commands that talk to the network.
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(format!("cannot start the async runtime: {}", Chain(&e))))
}

/// The NetworkPolicies applied in the cluster source, and where they were read.
struct Applied {
    /// As the source holds them.
    policies: Vec<k8s_openapi::api::networking::v1::NetworkPolicy>,
    /// The applied ClusterNetworkPolicies (a snapshot's; the API server's are not read yet).
    cluster_policies: Vec<leash::cnp::ClusterNetworkPolicy>,
    /// The snapshot file, or the API server.
    source: String,
}

/// The cluster model from `--cluster FILE` or from the API server with `--kube`, and the
/// NetworkPolicies applied there (the snapshot's, or the API server's).
fn load_cluster(args: &ClusterArgs) -> Result<(leash::cluster::Cluster, Applied), Failure> {
    if let Some(path) = &args.cluster {
        let snapshot = leash_records::snapshot::load_path(path).map_err(bad_input)?;
        let cluster = leash::cluster::Cluster::from_snapshot(&snapshot)
            .map_err(|source| leash::cluster::LoadError::Model {
                path: path.clone(),
                source,
            })
            .map_err(bad_input)?;
        // Validated against their CRD (the file may be a pipe: never read twice).
        let invalid = |e: &dyn std::error::Error| {
            Failure::BadInput(format!("{}: {}", path.display(), Chain(e)))
        };
        let mut cluster_policies: Vec<leash::cnp::ClusterNetworkPolicy> = Vec::new();
        for v in &snapshot.cluster_network_policies {
            let Some(c) = leash::cnp::object_of_value(v.clone()).map_err(|e| invalid(&e))? else {
                continue;
            };
            cluster_policies.push(c);
        }
        // A name given twice is refused with the set.
        leash::eval::ClusterPolicies::new(&cluster_policies).map_err(|e| invalid(&e))?;
        let applied = Applied {
            policies: snapshot.network_policies,
            cluster_policies,
            source: path.display().to_string(),
        };
        return Ok((cluster, applied));
    }
    // What loading logs (objects left out, ClusterNetworkPolicies not served or forbidden)
    // must reach stderr, not vanish.
    init_logging();
    let state = runtime()?
        .block_on(async {
            let client = leash::cluster::watch::client(args.kubeconfig.as_deref()).await?;
            leash::cluster::watch::load_once::<leash::state::ClusterState>(client).await
        })
        .map_err(|e| {
            Failure::Runtime(format!(
                "cannot read the cluster from the Kubernetes API: {}",
                Chain(&e)
            ))
        })?;
    state.log_rejected(None);
    let applied = Applied {
        policies: state.policies,
        cluster_policies: state.cluster_policies,
        source: "the Kubernetes API".to_owned(),
    };
    Ok((state.cluster, applied))
}

/// The policies `audit` and `explain` evaluate (see `leash::policy_state`): the applied
/// ones, with `--policies` in place of those it replaces, or with `--policies-only` the
/// given set alone. An empty state is valid (nothing is isolated); stderr says so.
/// With them, the CiliumNetworkPolicies of `--policies` (Cilium enforces both kinds).
fn policy_state(
    applied: Applied,
    args: &PolicyArgs,
) -> Result<(leash::eval::PolicySet, leash::cilium::eval::PolicySet), Failure> {
    let mut cilium = Vec::new();
    // ClusterNetworkPolicies: the given ones replace the applied ones of the same name.
    let mut cluster = applied.cluster_policies.clone();
    let state = match &args.policies {
        None => leash::policy_state::combine(&applied.policies, &[]),
        Some(path) => {
            let (given, given_cilium, given_cluster) =
                leash::audit::load_mixed(path).map_err(bad_input)?;
            let given: Vec<_> = given.into_iter().map(|(_, np)| np).collect();
            cilium = given_cilium.into_iter().map(|(_, c)| c).collect();
            let given_cluster: Vec<_> = given_cluster.into_iter().map(|(_, c)| c).collect();
            if args.policies_only {
                cluster.clear();
            }
            cluster.retain(|a| given_cluster.iter().all(|g| g.name() != a.name()));
            cluster.extend(given_cluster);
            if given.is_empty() && cilium.is_empty() && cluster.is_empty() {
                eprintln!(
                    "leash: {}: no NetworkPolicy found (looked for *.yaml, *.yml and *.json): \
                     the given set is empty",
                    path.display()
                );
            }
            if args.policies_only {
                leash::policy_state::given_only(&given)
            } else {
                let state = leash::policy_state::combine(&applied.policies, &given);
                if state.kept + state.replaced.len() > 0 {
                    eprintln!(
                        "leash: policy state: {} given, {} applied kept, {} applied replaced{} \
                         (applied: {}; --policies-only evaluates the given set alone)",
                        given.len(),
                        state.kept,
                        state.replaced.len(),
                        listed(&state.replaced),
                        applied.source,
                    );
                }
                state
            }
        }
    };
    if state.objects.is_empty() && cilium.is_empty() && cluster.is_empty() {
        eprintln!(
            "leash: no NetworkPolicy to evaluate: nothing is isolated, every connection is allowed"
        );
    }
    // The given policies were validated with their files; an error is in an applied one.
    let set = leash::eval::PolicySet::new(&state.objects)
        .and_then(|s| s.with_cluster_policies(&cluster))
        .map_err(|e| Failure::BadInput(format!("{}: {}", applied.source, Chain(&e))))?;
    let cilium = leash::cilium::eval::PolicySet::new(&cilium).map_err(bad_input)?;
    Ok((set, cilium))
}

/// The rollout board (`leash::rollout::board`): the guardrails stage, then every workload's
/// phase, against the applied policies and, when `given` is, the proposal (NetworkPolicies
/// and ClusterNetworkPolicies) laid over them.
fn rollout_board(
    cluster: &leash::cluster::Cluster,
    applied: &Applied,
    observations: &leash::observations::Observations,
    given: Option<&(
        Vec<k8s_openapi::api::networking::v1::NetworkPolicy>,
        Vec<leash::cnp::ClusterNetworkPolicy>,
    )>,
    min_observation: chrono::Duration,
    namespaces: BTreeSet<String>,
) -> Result<leash::rollout::board::Board, Failure> {
    use leash::rollout::board::State;
    let state = State {
        network_policies: &applied.policies,
        cluster_policies: &applied.cluster_policies,
    };
    let given = given.map(|(np, cnp)| State {
        network_policies: np,
        cluster_policies: cnp,
    });
    let opts = leash::rollout::Options {
        min_observation,
        now: chrono::Utc::now(),
        namespaces,
    };
    leash::rollout::board::board(cluster, observations, &state, given.as_ref(), &opts)
        .map_err(|e| Failure::BadInput(format!("{}: {}", applied.source, Chain(&e))))
}

/// `leash diff`: both states over the same cluster source, the observed traffic when
/// given, the report on stdout; exit 3 on a break with `--fail-on-break`.
fn diff(args: DiffArgs) -> Result<(), Failure> {
    // The states' files are read while the cluster loads: neither needs the other, and both
    // take seconds on a large cluster.
    let (loaded, from_given, to_given) = std::thread::scope(|s| {
        let from = s.spawn(|| args.from.load_tiers());
        let to = s.spawn(|| args.to.load_tiers());
        let loaded = load_cluster(&args.source);
        let from = from.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        let to = to.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        (loaded, from, to)
    });
    let (cluster, applied) = loaded?;
    // A state other than `applied` replaces the applied policies it covers, as `--policies`
    // does. Errors name the state; the flag says which side.
    let state = |flag: &str,
                 s: &leash::policy_source::PolicySource,
                 given: leash::policy_source::Result<Option<(Vec<_>, Vec<_>)>>| {
        let given = given.map_err(|e| Failure::BadInput(format!("{flag}: {}", Chain(&e))))?;
        // The state's ClusterNetworkPolicies replace the applied ones of the same name.
        let (given, given_tiers) = match given {
            Some((np, cnp)) => (Some(np), cnp),
            None => (None, Vec::new()),
        };
        let tiers = leash::guardrails::lay_over(&applied.cluster_policies, &given_tiers);
        let state =
            leash::policy_state::combine(&applied.policies, given.as_deref().unwrap_or(&[]));
        if let Some(given) = &given {
            eprintln!(
                "leash: {flag} {s}: {} given, {} applied kept, {} applied replaced{} (applied: {})",
                given.len(),
                state.kept,
                state.replaced.len(),
                listed(&state.replaced),
                applied.source,
            );
        }
        // The given policies were validated with their files; an error is in an applied one.
        // Each state's tiers: the applied ClusterNetworkPolicies with the state's over them.
        leash::eval::PolicySet::new(&state.objects)
            .and_then(|s| s.with_cluster_policies(&tiers))
            .map_err(|e| Failure::BadInput(format!("{}: {}", applied.source, Chain(&e))))
    };
    let before = state("--from", &args.from, from_given)?;
    let after = state("--to", &args.to, to_given)?;
    if [&before, &after]
        .iter()
        .any(|s| s.cluster_policies().has_domain_names())
    {
        eprintln!(
            "leash: the reachability changes match ClusterNetworkPolicy domainNames peers to no \
             address (observed flows use the DNS evidence)"
        );
    }
    let store = match (&args.store, &args.store_file) {
        (None, None) => None,
        (store, file) => {
            leash::store::Location::resolve(store.as_ref(), file.as_deref()).map_err(bad_input)?
        }
    };
    let observations = if store.is_some() || !args.flows.is_empty() {
        let (obs, _) = observe(&cluster, store.as_ref(), args.since, &args.flows)?;
        if obs.unattributed_flows > 0 {
            eprintln!(
                "leash: {} flow events outside pods are not evaluated",
                obs.unattributed_flows
            );
        }
        Some(obs)
    } else {
        None
    };
    let opts = leash::diff::Options {
        namespaces: args.namespaces.into_iter().collect(),
    };
    let report = leash::diff::diff(
        &cluster,
        (&args.from.to_string(), &before),
        (&args.to.to_string(), &after),
        observations.as_ref(),
        &opts,
    );
    write_stdout(&leash::diff::render::render(&report, args.format))?;
    let breaks = report.breaks().count();
    if args.fail_on_break && breaks > 0 {
        return Err(Failure::CheckFailed(format!(
            "{breaks} observed flow{} allowed under {} would be denied under {}",
            if breaks == 1 { "" } else { "s" },
            args.from,
            args.to
        )));
    }
    Ok(())
}

/// ` (a, b, c and N more)`: a bounded list for one stderr line; empty for none.
fn listed(keys: &[leash::policy_state::ObjectKey]) -> String {
    const SHOWN: usize = 5;
    if keys.is_empty() {
        return String::new();
    }
    let names: Vec<String> = keys.iter().take(SHOWN).map(ToString::to_string).collect();
    let more = keys.len().saturating_sub(SHOWN);
    if more == 0 {
        format!(" ({})", names.join(", "))
    } else {
        format!(" ({} and {more} more)", names.join(", "))
    }
}

/// `leash pr`: the proposal over the base branch's, then per group a commit, a push and a
/// pull request; `--dry-run` prints them instead. Exit 3 when a group was refused for
/// breaking observed traffic (the others still ran).
fn pr(args: PrCommand) -> Result<(), Failure> {
    let spec = args.target.spec();
    let cache = match args.cache_dir {
        Some(dir) => dir,
        None => default_cache_dir()?,
    };
    let target = pr_target(&spec, cache)?;
    let (cluster, applied) = load_cluster(&args.source)?;
    let (observations, skipped) = args.observed.observe(&cluster)?;
    let history = args.observed.history(&cluster)?;
    let skipped = leash::recommend::skipped_lines(&skipped);
    let observed = leash::proposal::Observed {
        cluster: &cluster,
        applied: &applied.policies,
        applied_cluster: &applied.cluster_policies,
        applied_source: &applied.source,
        observations: &observations,
        history: history.as_ref(),
        as_of: args.observed.window_end(&observations),
        skipped: &skipped,
    };
    let opts = leash::pr::run::Options {
        propose: args.knobs.options()?,
        allow_breaks: spec.allow_breaks,
        dry_run: spec.dry_run,
        command: reproducing_command(),
        trigger: None,
        guardrails: spec.guardrails.clone(),
    };
    let rt = runtime()?;
    let report = leash::pr::run::run(&target, &observed, &opts, rt.handle()).map_err(pr_failure)?;
    for w in &report.warnings {
        eprintln!("leash: {w}");
    }
    let mut out = String::new();
    for g in &report.groups {
        out.push_str(&leash::pr::run::describe(g));
    }
    write_stdout(&out)?;
    match report.failed() {
        Some(true) => return Err(Failure::BadInput("a group failed (see above)".to_owned())),
        Some(false) => return Err(Failure::Runtime("a group failed (see above)".to_owned())),
        None => {}
    }
    if report.refused() {
        return Err(Failure::CheckFailed(
            "a pull request was refused: its change breaks observed traffic (see above; \
             --allow-breaks opens it anyway)"
                .to_owned(),
        ));
    }
    Ok(())
}

/// `$XDG_CACHE_HOME/leash/repos`, else `$HOME/.cache/leash/repos`.
fn default_cache_dir() -> Result<PathBuf, Failure> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })
        .ok_or_else(|| {
            Failure::BadInput("neither XDG_CACHE_HOME nor HOME is set: give --cache-dir".to_owned())
        })?;
    Ok(base.join("leash").join("repos"))
}

/// The command line as run, for a pull request's body: its arguments hold paths, never a
/// secret (tokens come from files or the environment).
fn reproducing_command() -> String {
    let quote = |a: String| {
        if !a.is_empty()
            && a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c))
        {
            a
        } else {
            format!("'{}'", a.replace('\'', r"'\''"))
        }
    };
    std::iter::once("leash".to_owned())
        .chain(std::env::args().skip(1).map(quote))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The target of `leash pr` and of `serve --pr-repo` from their flags: the remote with its
/// authentication, the provider's client, the author. Every problem is the user's input.
fn pr_target(spec: &PrSpec, cache: PathBuf) -> Result<leash::pr::run::Target, Failure> {
    use leash::pr::{git, provider, secret::Secret};
    let repo = spec
        .repo
        .clone()
        .ok_or_else(|| Failure::BadInput("--repo is required".to_owned()))?;
    let kind = match spec.provider {
        Some(k) => k,
        None => provider::infer_kind(&repo).ok_or_else(|| {
            Failure::BadInput(format!(
                "{}: cannot tell the provider from the repository's host; give --provider \
                 github, gitlab or none",
                git::display_url(&repo)
            ))
        })?,
    };
    let token = Secret::from_file_or_env(spec.token_file.as_deref()).map_err(bad_input)?;
    let auth = match (&spec.ssh_key, &token) {
        (Some(key), _) => git::Auth::SshKey {
            key: key.clone(),
            known_hosts: spec.ssh_known_hosts.clone(),
        },
        (None, Some(token)) if git::is_http(&repo) => git::Auth::Token {
            user: kind.git_user().to_owned(),
            token: token.clone(),
        },
        _ => git::Auth::None,
    };
    let client = match kind {
        provider::Kind::None => None,
        // A dry run calls no API: it needs no token.
        _ if spec.dry_run && token.is_none() => None,
        kind => {
            let token = token.ok_or_else(|| {
                Failure::BadInput(format!(
                    "--provider {}: a token is needed: --token-file FILE or the environment \
                     variable {}",
                    kind.name(),
                    leash::pr::secret::TOKEN_ENV
                ))
            })?;
            let api_url = match &spec.api_url {
                Some(u) => u.clone(),
                None => provider::default_api_url(kind, &repo).ok_or_else(|| {
                    Failure::BadInput(format!(
                        "{}: cannot tell the provider's API from the repository; give --api-url",
                        git::display_url(&repo)
                    ))
                })?,
            };
            let project = match &spec.project {
                Some(p) => p.clone(),
                None => provider::project_from_url(&repo).ok_or_else(|| {
                    Failure::BadInput(format!(
                        "{}: cannot tell the project from the repository; give --project \
                         OWNER/NAME",
                        git::display_url(&repo)
                    ))
                })?,
            };
            Some(
                provider::Client::new(provider::Endpoint {
                    kind,
                    api_url,
                    project,
                    token,
                    ca_file: spec.api_ca_file.clone(),
                })
                .map_err(bad_input)?,
            )
        }
    };
    let author = git::Author::parse(&spec.author).map_err(bad_input)?;
    let remote = git::Remote {
        url: repo,
        auth,
        ca_file: spec.api_ca_file.clone(),
    };
    // Refused now, not at each run of `serve`'s loop.
    git::check(&remote, &spec.base, &spec.branch_prefix).map_err(bad_input)?;
    Ok(leash::pr::run::Target {
        remote,
        cache,
        path: spec.path.clone(),
        base: spec.base.clone(),
        branch_prefix: spec.branch_prefix.clone(),
        group_by: spec.group_by,
        provider: client,
        author,
    })
}

/// A failed run: the provider's or git's refusal of the user's configuration (a bad token,
/// a missing project or branch) and bad files are input (exit 2); the rest runtime (exit 1).
fn pr_failure(e: leash::pr::run::Error) -> Failure {
    if e.is_input() {
        bad_input(e)
    } else {
        runtime_error(e)
    }
}

/// `leash serve`: runs until SIGINT or SIGTERM.
fn serve(args: ServeArgs) -> Result<(), Failure> {
    leash::serve::conn::return_freed_buffers_to_the_system();
    init_logging();
    if args.retention < args.expire_after {
        tracing::warn!(
            retention = %humantime::format_duration(args.retention),
            expire_after = %humantime::format_duration(args.expire_after),
            "--retention is shorter than --expire-after: rules will expire from proposals \
             while still in use, because the store forgets their evidence first"
        );
    }
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
        return Err(Failure::BadInput(format!(
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
    // The store: --store, --store-file, $LEASH_STORE, else the default file.
    let store = leash::store::Location::resolve(args.store.as_ref(), args.store_file.as_deref())
        .map_err(bad_input)?
        .unwrap_or_else(|| leash::store::Location::Sqlite("/var/lib/leash/leash.db".into()));
    let pull_requests = match &args.pr.repo {
        None => None,
        Some(repo) => {
            let spec = args.pr.spec();
            let state_dir = match (&args.state_dir, &store) {
                (Some(d), _) => d.clone(),
                (None, leash::store::Location::Sqlite(path)) => path
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf),
                (None, leash::store::Location::Postgres(_)) => {
                    return Err(Failure::BadInput(
                        "--repo with a PostgreSQL --store needs --state-dir (the working copies' directory)"
                            .to_owned(),
                    ));
                }
            };
            let cluster_flag = match &args.source.cluster {
                Some(path) => format!("--cluster {}", path.display()),
                None => "--kube".to_owned(),
            };
            let mut command = format!(
                "leash pr {cluster_flag} --store {} --repo {repo} --path {} --base {} --group-by {}",
                store,
                spec.path.display(),
                spec.base,
                match spec.group_by {
                    leash::pr::run::GroupBy::Namespace => "namespace",
                    leash::pr::run::GroupBy::All => "all",
                },
            );
            if let Some(g) = &spec.guardrails {
                command.push_str(" --guardrails");
                for ns in g.exempt.iter().flatten() {
                    command.push_str(&format!(" --exempt-namespace {ns}"));
                }
                for range in &g.protected {
                    command.push_str(&format!(" --protected {range}"));
                }
            }
            Some(std::sync::Arc::new(leash::serve::propose::Options {
                target: pr_target(&spec, state_dir.join("repos"))?,
                run: leash::pr::run::Options {
                    propose: args.pr_knobs.options()?,
                    allow_breaks: spec.allow_breaks,
                    dry_run: spec.dry_run,
                    command,
                    trigger: None,
                    guardrails: spec.guardrails.clone(),
                },
                interval: args.pr_interval,
                after: args.pr_after,
            }))
        }
    };
    let leader = match (args.leader_elect, &args.source.cluster) {
        (Some(true), Some(_)) => {
            return Err(Failure::BadInput("--leader-elect needs --kube".to_owned()));
        }
        (Some(false), _) | (None, Some(_)) => None,
        (Some(true) | None, None) => Some(
            args.leader_lease
                .clone()
                .unwrap_or_else(leash::serve::leader::LeaseRef::from_env),
        ),
    };
    let config = leash::serve::Config {
        leader,
        limits,
        listen: args.listen,
        http: args.http,
        ui: args.ui_listen,
        ui_auth: args.ui_auth,
        ui_transport: match (args.ui_tls_cert, args.ui_tls_key) {
            (Some(cert), Some(key)) => {
                leash::serve::auth::UiTransport::Https(leash_records::tls::ServerIdentity {
                    cert,
                    key,
                })
            }
            _ if args.ui_insecure_http => leash::serve::auth::UiTransport::InsecureHttp,
            _ => leash::serve::auth::UiTransport::Http,
        },
        store,
        cluster,
        tls,
        retention: args.retention,
        check_interval: args.check_interval,
        max_batch_records: args.max_batch_records,
        max_message_bytes: args.max_message_bytes,
        options: leash::recommend::Options {
            max_cidrs: args.max_cidrs,
            published: args.pr_knobs.ranges.load()?,
            max_published_prefix_v4: args.pr_knobs.ranges.max_published_prefix_v4,
            max_published_prefix_v6: args.pr_knobs.ranges.max_published_prefix_v6,
            ..leash::recommend::Options::default()
        },
        ranges: Some(leash::serve::ranges::Options {
            files: args.pr_knobs.ranges.ip_ranges.clone(),
            poll: args.ip_ranges_poll,
        }),
        rollout: leash::serve::shadow::Options {
            proposed: args.proposed,
            poll: args.proposed_poll,
            min_observation: args.min_observation,
        },
        alerts: leash::serve::AlertOptions {
            repeat: args.alerts.alert_repeat,
            webhook: args
                .alerts
                .alert_webhook
                .map(leash::serve::webhook::UrlSource::Url)
                .or(args
                    .alerts
                    .alert_webhook_file
                    .map(leash::serve::webhook::UrlSource::File))
                .map(|url| leash::serve::webhook::Options {
                    url,
                    ca_file: args.alerts.alert_webhook_ca_file,
                    retry: leash::serve::webhook::Retry::default(),
                }),
        },
        pull_requests,
        agents: leash::ingest::identity::Options {
            mode: args.agent_auth,
            user: args.agent_service_account,
        },
    };
    runtime()?
        .block_on(leash::serve::run(config, shutdown_signal()))
        .map_err(|e| match e {
            // A --cluster file or TLS file that cannot be used is the user's input.
            leash::serve::Error::Cluster(_)
            | leash::serve::Error::Tls(_)
            | leash::serve::Error::Proposed(_)
            | leash::serve::Error::UiAuth(_)
            | leash::serve::Error::AgentAuth(_)
            | leash::serve::Error::Webhook(_) => bad_input(e),
            e => runtime_error(e),
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

/// `--since`: the earliest last-seen time to read, counted back from now, as `?since=` is.
fn since_time(since: Option<std::time::Duration>) -> Option<chrono::DateTime<chrono::Utc>> {
    since.and_then(|d| leash_records::duration::window_start(chrono::Utc::now(), d))
}

/// Stored observations that could not be used, on stderr.
fn report_skipped(skipped: &[leash::observations::Skipped]) {
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
        .map_err(|e| Failure::Runtime(format!("cannot write to stdout: {}", Chain(&e))))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("leash: error: {}", f.message());
            ExitCode::from(f.code())
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
        let cases: [&[&str]; 4] = [
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
            &[
                "leash",
                "rollout",
                "status",
                "--cluster",
                "c",
                "--flows",
                "f",
                "--min-observation",
                "2000y",
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
        let Err(e) = Cli::try_parse_from([
            "leash",
            "serve",
            "--cluster",
            "c",
            "--insecure",
            "--proposed-poll",
            "0s",
        ]) else {
            panic!("a zero proposed poll parsed");
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
