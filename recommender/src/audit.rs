//! `leash audit`: evaluates every observed flow against a set of policies.
//!
//! The library side of the command: load the policies ([`load_policies`]), take the flows
//! from record files ([`read_flows`]) or from a store's observations ([`stored_flows`]), each
//! with its [`Origin`], evaluate them in input order ([`audit`]) and render the report as
//! JSON lines or a table ([`AuditReport`]). The input's DNS answers ([`read_inputs`],
//! [`stored_answers`]) give the report's drift ([`crate::drift::from_answers`]). The CLI maps
//! [`AuditReport::any_denied`] to exit code 3 under `--fail-on-deny`,
//! [`AuditReport::any_drift`] under `--fail-on-drift`, and every [`Error`] to exit code 2.

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    net::IpAddr,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use leash_records::bounded::{self, InputError, Limits};
use leash_records::{PodRef, Record, RecordError, read_records_limited};
use serde::Serialize;

use crate::cluster::Cluster;
use crate::observations::{Evidence, FlowKey, Observations};

use crate::eval::{
    self, ClusterView, CompiledPolicy, Evaluation, Flow, PodView, PolicyId, PolicySet, Reason,
    Verdict, evaluate,
};

/// Errors of `audit`; each names the file (and line or object) at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read.
    #[error("{}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A policy file is not valid YAML/JSON or holds a malformed object.
    #[error(transparent)]
    Parse(#[from] leash_records::SnapshotError),
    /// An input exceeds its bounds, or is not a regular file where one is needed.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A policy the API server would reject.
    #[error("{}", path.display())]
    InvalidPolicy {
        /// The file it was read from.
        path: PathBuf,
        /// What is wrong, naming the policy and field.
        source: eval::Error,
    },
    /// The same policy in two places.
    #[error("{}: NetworkPolicy {policy} is already defined in {}", path.display(), first.display())]
    DuplicatePolicy {
        /// The second file.
        path: PathBuf,
        /// `namespace/name`.
        policy: PolicyId,
        /// The first file.
        first: PathBuf,
    },
    /// A CiliumNetworkPolicy that cannot be read or is outside leash's subset.
    #[error("{}", path.display())]
    InvalidCilium {
        /// The file it was read from.
        path: PathBuf,
        /// What is wrong, naming the policy and field.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The same CiliumNetworkPolicy in two places.
    #[error("{}: CiliumNetworkPolicy {policy} is already defined in {}", path.display(), first.display())]
    DuplicateCilium {
        /// The second file.
        path: PathBuf,
        /// `namespace/name`.
        policy: String,
        /// The first file.
        first: PathBuf,
    },
    /// A ClusterNetworkPolicy that cannot be read or is invalid under its CRD.
    #[error("{}", path.display())]
    InvalidClusterPolicy {
        /// The file it was read from.
        path: PathBuf,
        /// What is wrong, naming the policy and field.
        source: crate::cnp::ReadError,
    },
    /// The same ClusterNetworkPolicy in two places.
    #[error("{}: ClusterNetworkPolicy {policy} is already defined in {}", path.display(), first.display())]
    DuplicateClusterPolicy {
        /// The second file.
        path: PathBuf,
        /// The name.
        policy: String,
        /// The first file.
        first: PathBuf,
    },
    /// A ClusterNetworkPolicy given where only NetworkPolicies are read.
    #[error("this state is read for its NetworkPolicies only; {}: ClusterNetworkPolicy {policy} (audit, explain, diff, guardrails, rollout status and serve --proposed evaluate ClusterNetworkPolicies)", path.display())]
    ClusterPolicyNotCompared {
        /// The file.
        path: PathBuf,
        /// The name.
        policy: String,
    },
    /// A CiliumNetworkPolicy given where only NetworkPolicies are compared.
    #[error("diff compares NetworkPolicies only; {}: CiliumNetworkPolicy {policy} (audit and explain evaluate CiliumNetworkPolicies)", path.display())]
    CiliumNotCompared {
        /// The file.
        path: PathBuf,
        /// `namespace/name`.
        policy: String,
    },
    /// A flow record could not be read.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A flow without a pod.
    #[error("{}:{line}: flow record has no pod; audit needs the source pod", path.display())]
    UnattributedFlow {
        /// The flows file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
    },
    /// A flow for a pod that is not in the cluster snapshot.
    #[error(
        "{}:{line}: flow record for unknown pod {namespace}/{name} (uid {uid:?}) not in the cluster snapshot",
        path.display()
    )]
    UnknownPod {
        /// The flows file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The record's namespace.
        namespace: String,
        /// The record's pod name.
        name: String,
        /// The record's pod uid.
        uid: String,
    },
    /// A stored flow for a pod that is not in the cluster the policies are evaluated in.
    #[error("store: flow for unknown pod {namespace}/{name} not in the cluster model")]
    UnknownStoredPod {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        name: String,
    },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn is_policy_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// A directory walk: the real root, and the real directories visited.
struct Walk {
    root: PathBuf,
    seen: HashSet<(u64, u64)>,
    files: Vec<PathBuf>,
}

/// Collects policy files under `dir`, recursively, skipping hidden entries. Each real
/// directory is visited once (symlink loops end), a symlink to a directory outside the tree
/// is not followed, and a policy-named entry that is not a regular file (a FIFO, a socket, a
/// device) is an error naming it: opening it could block, or never end.
fn walk(dir: &Path, w: &mut Walk) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let meta = std::fs::metadata(dir).map_err(io(dir))?;
    if !w.seen.insert((meta.dev(), meta.ino())) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(io(dir))?;
    entries.sort();
    for path in entries {
        if is_hidden(&path) {
            continue;
        }
        let own = std::fs::symlink_metadata(&path).map_err(io(&path))?;
        let (meta, linked) = if own.file_type().is_symlink() {
            match std::fs::metadata(&path) {
                Ok(m) => (m, true),
                // A dangling link: reading it says so, if it is a policy file.
                Err(_) => {
                    if is_policy_file(&path) {
                        w.files.push(path);
                    }
                    continue;
                }
            }
        } else {
            (own, false)
        };
        if meta.is_dir() {
            if linked {
                let real = std::fs::canonicalize(&path).map_err(io(&path))?;
                if !real.starts_with(&w.root) {
                    continue;
                }
            }
            walk(&path, w)?;
        } else if is_policy_file(&path) {
            if let Some(kind) = bounded::kind_of(meta.file_type()) {
                return Err(InputError::NotRegular { path, kind }.into());
            }
            w.files.push(path);
        }
    }
    Ok(())
}

/// The policies of a file or of a directory tree, each with the file it came from.
///
/// A directory is walked recursively in sorted order, reading `*.yaml`, `*.yml` and `*.json`
/// (hidden entries skipped). Files may be multi-document streams or `List`s. Objects of other
/// kinds (a `kustomization.yaml`, a Deployment next to its policy) are ignored, as
/// `kubectl apply -f` would apply them separately. Every policy is validated; errors name
/// the file and the policy. Finding no policy at all is not an error: an empty set is a valid
/// state (it isolates nothing), and the caller says so.
///
/// Symlinks to directories are followed only within the tree, and each real directory is
/// read once; files found in the tree must be regular files. Every file is read within the
/// [`Limits`] of the environment.
pub fn load_policy_files(path: &Path) -> Result<Vec<(PathBuf, NetworkPolicy)>> {
    policies_of_texts(policy_texts(path)?)
}

/// The texts of the policy files of `path` (see [`load_policy_files`]), as `(text, path)`.
fn policy_texts(path: &Path) -> Result<Vec<Result<(String, PathBuf)>>> {
    let limits = Limits::from_env()?;
    let files = if path.is_dir() {
        let root = std::fs::canonicalize(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut w = Walk {
            root,
            seen: HashSet::new(),
            files: Vec::new(),
        };
        walk(path, &mut w)?;
        w.files
    } else {
        vec![path.to_path_buf()]
    };
    // A file named by the user is read whatever it is (bounded); one found by the walk must
    // be a regular file, also when it was swapped for a FIFO after the walk looked.
    let named = !path.is_dir();
    Ok(files
        .into_iter()
        .map(|file| Ok((bounded::read_to_string(&file, !named, limits)?, file)))
        .collect())
}

/// [`policies_of_texts`], with the ClusterNetworkPolicies kept (validated, a name given twice
/// refused) rather than refused: `diff`'s observed flows compare the tiers of both states.
pub fn tiers_of_texts(
    texts: impl IntoIterator<Item = Result<(String, PathBuf)>>,
) -> Result<(Vec<NetworkPolicy>, Vec<crate::cnp::ClusterNetworkPolicy>)> {
    let (policies, cilium, cluster) = mixed_of_texts(texts)?;
    if let Some((path, c)) = cilium.into_iter().next() {
        return Err(Error::CiliumNotCompared {
            path,
            policy: format!("{}/{}", c.metadata.namespace, c.metadata.name),
        });
    }
    Ok((
        policies.into_iter().map(|(_, np)| np).collect(),
        cluster.into_iter().map(|(_, c)| c).collect(),
    ))
}

/// The texts of the policy files of `path` for [`tiers_of_texts`].
pub fn tiers_of_files(
    path: &Path,
) -> Result<(Vec<NetworkPolicy>, Vec<crate::cnp::ClusterNetworkPolicy>)> {
    tiers_of_texts(policy_texts(path)?)
}

/// The policies of files already read, as `(text, name)` in order: parsed, validated, and
/// refused when one is defined twice. The name is what errors show (a path, or a git
/// revision and path). A CiliumNetworkPolicy is refused, naming it: the commands that take
/// a policy STATE (`rollout`, `serve --proposed`) compare NetworkPolicies only (`diff` reads
/// ClusterNetworkPolicies with [`tiers_of_texts`]).
pub fn policies_of_texts(
    texts: impl IntoIterator<Item = Result<(String, PathBuf)>>,
) -> Result<Vec<(PathBuf, NetworkPolicy)>> {
    let (policies, cilium, cluster) = mixed_of_texts(texts)?;
    if let Some((path, c)) = cluster.into_iter().next() {
        return Err(Error::ClusterPolicyNotCompared {
            path,
            policy: c.name().to_owned(),
        });
    }
    match cilium.into_iter().next() {
        Some((path, c)) => Err(Error::CiliumNotCompared {
            path,
            policy: format!("{}/{}", c.metadata.namespace, c.metadata.name),
        }),
        None => Ok(policies),
    }
}

/// NetworkPolicies, CiliumNetworkPolicies and ClusterNetworkPolicies with their files.
pub type MixedPolicies = (
    Vec<(PathBuf, NetworkPolicy)>,
    Vec<(PathBuf, crate::cilium::CiliumNetworkPolicy)>,
    Vec<(PathBuf, crate::cnp::ClusterNetworkPolicy)>,
);

/// The NetworkPolicies, the CiliumNetworkPolicies (leash's subset, [`crate::cilium`]) and the
/// ClusterNetworkPolicies ([`crate::cnp`]) of a file or directory tree, for `audit` and `explain`; each validated and refused when defined
/// twice, naming its file.
pub fn load_mixed(path: &Path) -> Result<MixedPolicies> {
    mixed_of_texts(policy_texts(path)?)
}

/// [`policies_of_texts`], keeping the CiliumNetworkPolicies.
fn mixed_of_texts(
    texts: impl IntoIterator<Item = Result<(String, PathBuf)>>,
) -> Result<MixedPolicies> {
    let mut out: Vec<(PathBuf, NetworkPolicy)> = Vec::new();
    let mut cilium = Vec::new();
    let mut seen: HashMap<PolicyId, PathBuf> = HashMap::new();
    let mut seen_cilium: HashMap<String, PathBuf> = HashMap::new();
    let mut cluster = Vec::new();
    let mut seen_cluster: HashMap<String, PathBuf> = HashMap::new();
    for text in texts {
        let (text, file) = text?;
        let snapshot = leash_records::snapshot::parse_str(&text, &file)?;
        for v in &snapshot.cluster_network_policies {
            let Some(c) = crate::cnp::object_of_value(v.clone()).map_err(|source| {
                Error::InvalidClusterPolicy {
                    path: file.clone(),
                    source,
                }
            })?
            else {
                continue;
            };
            if let Some(first) = seen_cluster.insert(c.name().to_owned(), file.clone()) {
                return Err(Error::DuplicateClusterPolicy {
                    path: file.clone(),
                    policy: c.name().to_owned(),
                    first,
                });
            }
            cluster.push((file.clone(), c));
        }
        let cilium_kind = format!("{}/{}", crate::cilium::API_VERSION, crate::cilium::KIND);
        if snapshot.ignored.contains_key(&cilium_kind) {
            let invalid = |source| Error::InvalidCilium {
                path: file.clone(),
                source,
            };
            for c in crate::cilium::objects_of_text(&text).map_err(|e| invalid(e.into()))? {
                crate::cilium::eval::PolicySet::new(std::slice::from_ref(&c))
                    .map_err(|e| invalid(e.into()))?;
                let id = format!("{}/{}", c.metadata.namespace, c.metadata.name);
                if let Some(first) = seen_cilium.insert(id.clone(), file.clone()) {
                    return Err(Error::DuplicateCilium {
                        path: file.clone(),
                        policy: id,
                        first,
                    });
                }
                cilium.push((file.clone(), c));
            }
        }
        for np in snapshot.network_policies {
            let compiled = CompiledPolicy::compile(&np).map_err(|source| Error::InvalidPolicy {
                path: file.clone(),
                source,
            })?;
            if let Some(first) = seen.get(&compiled.id) {
                return Err(Error::DuplicatePolicy {
                    path: file.clone(),
                    policy: compiled.id,
                    first: first.clone(),
                });
            }
            seen.insert(compiled.id, file.clone());
            out.push((file.clone(), np));
        }
    }
    Ok((out, cilium, cluster))
}

/// The policies of a file or directory tree (see [`load_policy_files`]).
pub fn load_policies(path: &Path) -> Result<Vec<NetworkPolicy>> {
    Ok(load_policy_files(path)?
        .into_iter()
        .map(|(_, np)| np)
        .collect())
}

/// The validated policy set of a file or directory tree.
pub fn load_policy_set(path: &Path) -> Result<PolicySet> {
    let policies = load_policies(path)?;
    // Every policy was validated and deduplicated with its file name above.
    PolicySet::new(&policies).map_err(|source| Error::InvalidPolicy {
        path: path.to_path_buf(),
        source,
    })
}

/// Where an audited flow was observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line of a record file.
    File {
        /// The file (`-` for stdin).
        path: PathBuf,
        /// 1-based line.
        line: usize,
    },
    /// The observation store of `leash serve`.
    Store,
}

impl Origin {
    /// The line of a file origin.
    pub fn line(&self) -> Option<usize> {
        match self {
            Origin::File { line, .. } => Some(*line),
            Origin::Store => None,
        }
    }
}

/// A flow to audit: where it was observed, the pod that made it, and what it dialed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributedFlow {
    /// Where it was observed.
    pub origin: Origin,
    /// The source pod, resolved by uid, else by namespace and name. `None` for a record
    /// without a pod, which [`audit`] refuses naming its file and line.
    pub pod: Option<PodRef>,
    /// The destination as dialed (before DNAT).
    pub flow: Flow,
}

/// The flows of observations read from a store, as audit input: one per (pod, destination,
/// port, protocol), sorted, each with its evidence. A workload's flows come from the pod its
/// evidence is attached to (see `crate::observations::from_stored`).
pub fn stored_flows<'o>(
    cluster: &Cluster,
    obs: &'o Observations,
) -> Vec<(AttributedFlow, &'o Evidence)> {
    let mut keys: Vec<(&FlowKey, &Evidence)> = obs.flows.iter().collect();
    keys.sort_by_key(|(k, _)| **k);
    keys.into_iter()
        .filter_map(|(k, ev)| {
            let pod = cluster.pods.get(k.pod)?;
            let flow = AttributedFlow {
                origin: Origin::Store,
                pod: Some(PodRef {
                    uid: pod.uid.clone().unwrap_or_default(),
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                }),
                flow: Flow {
                    protocol: k.protocol,
                    dst: k.dst,
                    dst_port: k.port,
                },
            };
            Some((flow, ev))
        })
        .collect()
}

/// Reads the flow records of a JSON-lines file (`-` for stdin), skipping DNS records,
/// within the [`Limits`] of the environment.
pub fn read_flows(path: &Path) -> Result<Vec<AttributedFlow>> {
    Ok(read_inputs(path)?.0)
}

/// Reads the flow records of a JSON-lines file (`-` for stdin), in order, and its DNS
/// records as answers for [`crate::drift::from_answers`] (those without a pod are left out),
/// within the [`Limits`] of the environment.
pub fn read_inputs(path: &Path) -> Result<(Vec<AttributedFlow>, Vec<crate::drift::Answer>)> {
    let limits = Limits::from_env()?;
    let located = if path == Path::new("-") {
        read_records_limited(std::io::stdin().lock(), path, limits)
            .collect::<Result<Vec<_>, _>>()?
    } else {
        let file = bounded::open(path, false)?;
        read_records_limited(file, path, limits).collect::<Result<Vec<_>, _>>()?
    };
    let mut flows = Vec::new();
    let mut answers = Vec::new();
    for l in located {
        match l.record {
            Record::Flow(flow) => flows.push(AttributedFlow {
                origin: Origin::File {
                    path: path.to_path_buf(),
                    line: l.line,
                },
                pod: flow.pod,
                flow: Flow {
                    protocol: flow.protocol,
                    dst: flow.dst,
                    dst_port: flow.dst_port,
                },
            }),
            Record::Dns(dns) => {
                let addresses = crate::observations::answer_addresses(&dns);
                if let Some(pod) = dns.pod
                    && !addresses.is_empty()
                {
                    answers.push(crate::drift::Answer {
                        pod,
                        name: crate::observations::normalize_name(&dns.query),
                        addresses,
                    });
                }
            }
        }
    }
    Ok((flows, answers))
}

/// The DNS answers of observations read from a store ([`Observations::history`]), as input
/// for [`crate::drift::from_answers`]: one per (pod standing in for its workload, name).
pub fn stored_answers(cluster: &Cluster, obs: &Observations) -> Vec<crate::drift::Answer> {
    obs.history
        .iter()
        .filter_map(|((pod, name), history)| {
            let pod = cluster.pods.get(*pod)?;
            Some(crate::drift::Answer {
                pod: PodRef {
                    uid: pod.uid.clone().unwrap_or_default(),
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                },
                name: name.clone(),
                addresses: history.clone(),
            })
        })
        .collect()
}

/// The verdict for one input flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Where the flow was observed.
    pub origin: Origin,
    /// The source pod, `namespace/name`.
    pub source: PolicyId,
    /// The source pod's workload, `Kind/name` ([`crate::json::workload`]).
    pub workload: String,
    /// The flow as observed (before DNAT).
    pub flow: Flow,
    /// The evaluation.
    pub evaluation: Evaluation,
}

/// One verdict per input flow, in input order, and the drift of the input's DNS answers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditReport {
    /// The entries, in input order.
    pub entries: Vec<AuditEntry>,
    /// The drift of the input's DNS answers ([`crate::drift::from_answers`]), sorted; empty
    /// until the caller sets it.
    pub drift: Vec<crate::drift::Drift>,
}

/// Evaluates every flow, in input order. A flow without a pod, or for a pod not in the
/// cluster, is an error naming its origin (file and line, or the store).
pub fn audit<V: ClusterView + ?Sized>(
    view: &V,
    policies: &PolicySet,
    flows: &[AttributedFlow],
) -> Result<AuditReport> {
    // Agents emit many records per key over time: evaluate each (pod, flow) once.
    let mut cache: HashMap<(PolicyId, Flow), Evaluation> = HashMap::new();
    let mut entries = Vec::with_capacity(flows.len());
    for af in flows {
        let Some(pod) = af.pod.as_ref().and_then(|r| view.pod_by_ref(r)) else {
            return Err(unattributed(af));
        };
        let source = PolicyId {
            namespace: pod.namespace().to_string(),
            name: pod.name().to_string(),
        };
        let workload = view.pod_workload(pod).map_or_else(
            || crate::json::bare_pod(pod.name()),
            |(kind, name)| crate::json::workload(kind, name),
        );
        let flow = af.flow;
        let evaluation = cache
            .entry((source.clone(), flow))
            .or_insert_with(|| evaluate(view, policies, pod, &flow))
            .clone();
        entries.push(AuditEntry {
            origin: af.origin.clone(),
            source,
            workload,
            flow,
            evaluation,
        });
    }
    Ok(AuditReport {
        entries,
        drift: Vec::new(),
    })
}

/// Evaluates again, with the names the source workload's lookups returned for the flow's
/// destination (`asked`, from the DNS evidence), the entries that have such names: for the
/// `domainNames` peers of ClusterNetworkPolicies.
pub fn with_names(
    report: &mut AuditReport,
    cluster: &Cluster,
    policies: &PolicySet,
    asked: &crate::cilium::mixed::AskedNames,
) {
    for e in &mut report.entries {
        let Some(id) = cluster.pod_by_name(&e.source.namespace, &e.source.name) else {
            continue;
        };
        let Some(names) = cluster
            .workload_of(id)
            .and_then(|w| asked.get(&w))
            .and_then(|by_ip| by_ip.get(&e.flow.dst.to_canonical()))
        else {
            continue;
        };
        if let Some(pod) = cluster.pods.get(id) {
            e.evaluation = eval::evaluate_with_names(cluster, policies, pod, &e.flow, names);
        }
    }
}

/// Every ClusterNetworkPolicy conflict of the report's evaluations (equal priorities that
/// disagree, evaluated as deny), sorted and once each.
pub fn conflicts(report: &AuditReport) -> Vec<eval::Conflict> {
    let all: std::collections::BTreeSet<&eval::Conflict> = report
        .entries
        .iter()
        .flat_map(|e| &e.evaluation.conflicts)
        .collect();
    all.into_iter().cloned().collect()
}

/// The error for a flow whose pod is missing or not in the cluster, naming its origin.
fn unattributed(af: &AttributedFlow) -> Error {
    match (&af.origin, &af.pod) {
        (Origin::File { path, line }, None) => Error::UnattributedFlow {
            path: path.clone(),
            line: *line,
        },
        (Origin::File { path, line }, Some(r)) => Error::UnknownPod {
            path: path.clone(),
            line: *line,
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            uid: r.uid.clone(),
        },
        (Origin::Store, r) => Error::UnknownStoredPod {
            namespace: r.as_ref().map_or_else(String::new, |r| r.namespace.clone()),
            name: r.as_ref().map_or_else(String::new, |r| r.name.clone()),
        },
    }
}

/// The JSON shape of one verdict; field order is part of the contract.
#[derive(Serialize)]
struct JsonEntry<'a> {
    kind: &'static str,
    source: JsonSource<'a>,
    protocol: &'static str,
    dst: String,
    dst_port: u16,
    verdict: Verdict,
    egress: Verdict,
    ingress: Verdict,
    policies: Vec<String>,
    /// ClusterNetworkPolicy conflicts (equal priorities that disagree), when any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
}

#[derive(Serialize)]
struct JsonSource<'a> {
    namespace: &'a str,
    /// `Kind/name`, as in every JSON output.
    workload: &'a str,
    pod: &'a str,
}

fn host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The output format of `leash audit --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// One JSON object per flow per line ([`AuditReport::to_json_lines`]).
    Json,
    /// An aligned table with a summary ([`AuditReport::to_table`]).
    #[default]
    Table,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(Format::Json),
            "table" => Ok(Format::Table),
            other => Err(format!("unknown format {other:?} (expected json or table)")),
        }
    }
}

impl AuditReport {
    /// Renders the report in `format`.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => self.to_json_lines(),
            Format::Table => self.to_table(),
        }
    }

    /// Whether any flow is denied (`--fail-on-deny` exits 3 then).
    pub fn any_denied(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.evaluation.verdict == Verdict::Deny)
    }

    /// The number of denied flows.
    pub fn denied(&self) -> usize {
        self.entries
            .iter()
            .filter(|e| e.evaluation.verdict == Verdict::Deny)
            .count()
    }

    /// Whether any DNS answer drifted (`--fail-on-drift` exits 3 then).
    pub fn any_drift(&self) -> bool {
        !self.drift.is_empty()
    }

    /// One JSON object per flow, one per line, each line ending with `\n`, in input order:
    /// `{"kind":"flow","source":{"namespace":…,"workload":"Kind/name","pod":…},"protocol":…,"dst":…,"dst_port":…,"verdict":…,
    /// "egress":…,"ingress":…,"policies":[…]}`; then one line per drift
    /// ([`crate::drift::Drift::to_json`], `"kind":"dns-drift"`), sorted.
    pub fn to_json_lines(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            let entry = JsonEntry {
                kind: "flow",
                source: JsonSource {
                    namespace: &e.source.namespace,
                    workload: &e.workload,
                    pod: &e.source.name,
                },
                protocol: e.flow.protocol.as_str(),
                dst: e.flow.dst.to_string(),
                dst_port: e.flow.dst_port,
                verdict: e.evaluation.verdict,
                egress: e.evaluation.egress,
                ingress: e.evaluation.ingress,
                policies: e
                    .evaluation
                    .policies()
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                warnings: e
                    .evaluation
                    .conflicts
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            };
            // Plain strings, numbers and enums: serialization cannot fail.
            if let Ok(line) = serde_json::to_string(&entry) {
                out.push_str(&line);
                out.push('\n');
            }
        }
        for d in &self.drift {
            out.push_str(&d.to_json());
            out.push('\n');
        }
        out
    }

    /// An aligned, human-readable table with a summary line.
    pub fn to_table(&self) -> String {
        let header = [
            "SOURCE",
            "PROTO",
            "DESTINATION",
            "VERDICT",
            "EGRESS",
            "INGRESS",
            "POLICIES",
            "NOTE",
        ];
        let rows: Vec<[String; 8]> = self
            .entries
            .iter()
            .map(|e| {
                let ev = &e.evaluation;
                let policies = ev.policies();
                let mut notes = Vec::new();
                match (&ev.problem, &ev.service) {
                    (Some(p), _) => notes.push(p.to_string()),
                    (None, Some(s)) => notes.push(format!("via Service {s}")),
                    (None, None) => {}
                }
                if ev
                    .targets
                    .iter()
                    .any(|t| t.egress.reason == Reason::SourceHostNetwork)
                {
                    notes.push("hostNetwork source: NetworkPolicy cannot restrict it".into());
                }
                let note = notes.join("; ");
                [
                    e.source.to_string(),
                    e.flow.protocol.to_string(),
                    host_port(e.flow.dst, e.flow.dst_port),
                    ev.verdict.to_string(),
                    ev.egress.to_string(),
                    ev.ingress.to_string(),
                    if policies.is_empty() {
                        "-".to_string()
                    } else {
                        policies
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                    note,
                ]
            })
            .collect();
        let mut out = crate::render::columns::aligned(header, &rows);
        let total = self.entries.len();
        let denied = self.denied();
        let _ = writeln!(
            out,
            "{total} flow{}: {} allowed, {denied} denied",
            if total == 1 { "" } else { "s" },
            total - denied
        );
        if !self.drift.is_empty() {
            out.push('\n');
            out.push_str(&self.drift_table());
        }
        out
    }

    /// The drift section of the table: one row per drift, and its count. Names come from DNS
    /// answers: shown as plain text.
    fn drift_table(&self) -> String {
        let header = [
            "DRIFT SOURCE",
            "NAME",
            "NEW ADDRESS",
            "PORTS",
            "POLICIES",
            "ANSWERED",
        ];
        let rows: Vec<[String; 6]> = self
            .drift
            .iter()
            .map(|d| {
                [
                    d.source.to_string(),
                    crate::render::escape::plain(&d.name, 253),
                    d.address.to_string(),
                    d.ports_text(),
                    d.policies
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    leash_records::time::rfc3339(d.time),
                ]
            })
            .collect();
        let mut out = crate::render::columns::aligned(header, &rows);
        let n = self.drift.len();
        let _ = writeln!(
            out,
            "{n} DNS answer{} drifted: the policies allow the name's other addresses on these ports, not the new one",
            if n == 1 { "" } else { "s" },
        );
        out
    }
}
