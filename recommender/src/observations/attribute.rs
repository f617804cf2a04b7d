//! Reading flow and DNS records and attributing each to its pod of the [`Cluster`], and so
//! to the pod's workload: record files → [`Observations`].

use std::borrow::Cow;
use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use leash_records::bounded::{self, InputError, Limits, LineReader};
use leash_records::error::Chain;
use leash_records::{DnsRecord, FlowRecord, PodRef, Protocol, Record, RecordError, TimeError};

use super::{Evidence, FlowKey, Observations, answer_addresses, answer_names, normalize_name};
use crate::cluster::{Cluster, PodId};

/// Errors reading records.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A line is not a valid record, or the input could not be read within its bounds.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A record names a pod that is not in the cluster snapshot.
    #[error("{}:{line}: {kind} record for unknown pod {namespace}/{name} (uid {uid:?}) not in the cluster snapshot", path.display())]
    UnknownPod {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// `flow` or `dns`.
        kind: &'static str,
        /// Namespace in the record.
        namespace: String,
        /// Name in the record.
        name: String,
        /// uid in the record.
        uid: String,
    },
    /// A record's time is before 1970, in the future, or `first_seen` is after `last_seen`.
    #[error("{}:{line}", path.display())]
    Time {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        source: TimeError,
    },
}

/// Result with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Observations {
    /// Reads every input (`-` is stdin) in order, each within the [`Limits`] of the
    /// environment.
    pub fn read_paths(paths: &[PathBuf], cluster: &Cluster) -> Result<Self> {
        let limits = Limits::from_env().map_err(RecordError::from)?;
        let mut obs = Self::default();
        for path in paths {
            if path.as_os_str() == "-" {
                let stdin = std::io::stdin();
                obs.read_limited(stdin.lock(), path, cluster, limits)?;
            } else {
                let file = bounded::open(path, false).map_err(RecordError::from)?;
                obs.read_limited(file, path, cluster, limits)?;
            }
        }
        Ok(obs)
    }

    /// Reads JSON-lines records from one input. Lines are parsed on every available core:
    /// the input is cut into blocks at line ends, each worker folds its blocks into its own
    /// observations, and the results are merged (sums, minima, maxima and unions, so the
    /// outcome does not depend on scheduling). The error reported is the one on the earliest
    /// line, as a sequential reader would report it.
    pub fn read(&mut self, reader: impl Read, path: &Path, cluster: &Cluster) -> Result<()> {
        self.read_limited(reader, path, cluster, Limits::default())
    }

    /// [`Self::read`] within `limits`.
    pub fn read_limited(
        &mut self,
        reader: impl Read,
        path: &Path,
        cluster: &Cluster,
        limits: Limits,
    ) -> Result<()> {
        let now = Utc::now();
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(threads * 2);
        let rx = std::sync::Mutex::new(rx);
        let (read_result, results) = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut local = Observations::default();
                        let mut lines: Vec<(usize, usize)> = Vec::new();
                        let mut first_err: Option<(usize, usize, ChunkError)> = None;
                        loop {
                            let next = match rx.lock() {
                                Ok(guard) => guard.recv(),
                                Err(_) => break,
                            };
                            let Ok((index, bytes)) = next else { break };
                            let (count, err) = local.add_chunk(&bytes, cluster, now);
                            lines.push((index, count));
                            if let Some((rel, e)) = err
                                && first_err
                                    .as_ref()
                                    .is_none_or(|(i, r, _)| (index, rel) < (*i, *r))
                            {
                                first_err = Some((index, rel, e));
                            }
                        }
                        (local, lines, first_err)
                    })
                })
                .collect();
            let read_result = send_blocks(LineReader::new(reader, path, limits), &tx);
            drop(tx);
            let results: Vec<_> = workers
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect();
            (read_result, results)
        });
        // Line numbers: each block starts after the lines of the blocks before it.
        let mut counts: Vec<(usize, usize)> =
            results.iter().flat_map(|r| r.1.iter().copied()).collect();
        counts.sort_unstable();
        let mut first_line = vec![1usize; counts.len() + 1];
        for (i, (_, n)) in counts.iter().enumerate() {
            first_line[i + 1] = first_line[i] + n;
        }
        let mut first_err: Option<(usize, usize, ChunkError)> = None;
        for (local, _, err) in results {
            self.merge(local);
            if let Some((i, r, e)) = err
                && first_err
                    .as_ref()
                    .is_none_or(|(fi, fr, _)| (i, r) < (*fi, *fr))
            {
                first_err = Some((i, r, e));
            }
        }
        if let Some((index, rel, e)) = first_err {
            let line = first_line.get(index).copied().unwrap_or(1) + rel;
            return Err(match e {
                ChunkError::Parse(message) => Error::Record(RecordError::Invalid {
                    path: path.to_path_buf(),
                    line,
                    message,
                }),
                ChunkError::Utf8 => Error::Record(RecordError::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("line {line}: stream did not contain valid UTF-8"),
                    ),
                }),
                ChunkError::Record(u) => u.at(path, line),
            });
        }
        read_result.map_err(|e| Error::Record(e.into()))
    }

    /// Folds one block of whole lines in; returns its line count and the first error with
    /// its 0-based line within the block.
    fn add_chunk(
        &mut self,
        bytes: &[u8],
        cluster: &Cluster,
        now: DateTime<Utc>,
    ) -> (usize, Option<(usize, ChunkError)>) {
        let (text, bad_utf8) = match std::str::from_utf8(bytes) {
            Ok(t) => (t, false),
            // Lines before the invalid byte are still read, as a sequential reader would.
            Err(e) => {
                let valid = &bytes[..e.valid_up_to()];
                let cut = valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
                (std::str::from_utf8(&bytes[..cut]).unwrap_or_default(), true)
            }
        };
        let mut count = 0;
        for (rel, line) in text.lines().enumerate() {
            count = rel + 1;
            if line.trim().is_empty() {
                continue;
            }
            let result = match parse_wire_flow(line) {
                Some(w) => {
                    self.records += 1;
                    leash_records::check_flow_times(w.parts.first_seen, w.parts.last_seen, now)
                        .map_err(Unlocated::Time)
                        .and_then(|()| {
                            self.add_flow_parts(
                                &w.parts,
                                w.names.iter().map(|n| n.as_ref()),
                                cluster,
                            )
                        })
                }
                None => match parse_record(line) {
                    Ok(record) => self.add_checked(&record, cluster, now),
                    Err(message) => return (count, Some((rel, ChunkError::Parse(message)))),
                },
            };
            if let Err(u) = result {
                return (count, Some((rel, ChunkError::Record(u))));
            }
        }
        if bad_utf8 {
            let rel = count;
            let total = bytes.iter().filter(|&&b| b == b'\n').count();
            return (total.max(count + 1), Some((rel, ChunkError::Utf8)));
        }
        (count, None)
    }

    /// Adds one record, whose times must pass [`Record::check_times`]. Errors come back
    /// without a location; [`Self::read`] adds it.
    pub fn add(&mut self, record: &Record, cluster: &Cluster) -> Result<(), Unlocated> {
        self.add_checked(record, cluster, Utc::now())
    }

    /// [`Self::add`] with the time the bounds are checked against.
    fn add_checked(
        &mut self,
        record: &Record,
        cluster: &Cluster,
        now: DateTime<Utc>,
    ) -> Result<(), Unlocated> {
        record.check_times(now).map_err(Unlocated::Time)?;
        match record {
            Record::Flow(f) => self.add_flow(f, cluster),
            Record::Dns(d) => {
                self.records += 1;
                self.add_dns(d, cluster)
            }
        }
    }

    fn add_flow(&mut self, f: &FlowRecord, cluster: &Cluster) -> Result<(), Unlocated> {
        self.records += 1;
        self.add_flow_inner(f, cluster)
    }

    fn add_flow_inner(&mut self, f: &FlowRecord, cluster: &Cluster) -> Result<(), Unlocated> {
        self.add_flow_parts(
            &FlowParts {
                pod: f.pod.as_ref().map(|p| WirePod {
                    uid: Cow::Borrowed(&p.uid),
                    namespace: Cow::Borrowed(&p.namespace),
                    name: Cow::Borrowed(&p.name),
                }),
                protocol: f.protocol,
                dst: f.dst,
                dst_port: f.dst_port,
                count: f.count,
                first_seen: f.first_seen,
                last_seen: f.last_seen,
            },
            f.names.iter().map(String::as_str),
            cluster,
        )
    }

    /// Adds one flow given by parts; shared by the contract type and the fast path.
    fn add_flow_parts<'n>(
        &mut self,
        f: &FlowParts<'_>,
        names: impl Iterator<Item = &'n str>,
        cluster: &Cluster,
    ) -> Result<(), Unlocated> {
        let Some(p) = &f.pod else {
            self.unattributed_flows = self.unattributed_flows.saturating_add(f.count);
            return Ok(());
        };
        let found = (!p.uid.is_empty())
            .then(|| cluster.pod_by_uid(&p.uid))
            .flatten()
            .or_else(|| cluster.pod_by_name(&p.namespace, &p.name));
        let pod = found.ok_or_else(|| Unlocated::UnknownPod {
            kind: "flow",
            pod: PodRef {
                uid: p.uid.to_string(),
                namespace: p.namespace.to_string(),
                name: p.name.to_string(),
            },
        })?;
        let key = FlowKey {
            pod,
            dst: f.dst.to_canonical(),
            port: f.dst_port,
            protocol: f.protocol,
        };
        let ev = self
            .flows
            .entry(key)
            .or_insert_with(|| Evidence::new(0, f.first_seen, f.last_seen));
        ev.add(f.count, f.first_seen, f.last_seen);
        for n in names {
            // Agents send names normalized already: allocate only for a new name.
            let trimmed = n.trim_end_matches('.');
            if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
                ev.names.insert(trimmed.to_ascii_lowercase());
            } else if !ev.names.contains(trimmed) {
                ev.names.insert(trimmed.to_owned());
            }
        }
        Ok(())
    }

    fn add_dns(&mut self, d: &DnsRecord, cluster: &Cluster) -> Result<(), Unlocated> {
        let server = d.server.to_canonical();
        self.resolvers.insert(server);
        for (name, ip) in answer_names(d) {
            self.names_by_ip.entry(ip).or_default().insert(name);
        }
        let Some(pod_ref) = &d.pod else {
            return Ok(());
        };
        let pod = resolve_pod(cluster, pod_ref).ok_or_else(|| Unlocated::UnknownPod {
            kind: "dns",
            pod: pod_ref.clone(),
        })?;
        let query = normalize_name(&d.query);
        let addresses = answer_addresses(d);
        // An answer without addresses (NXDOMAIN, another type) is no history, as in the store.
        if !query.is_empty() && !addresses.is_empty() {
            let history = self.history.entry((pod, query)).or_default();
            for (ip, seen) in addresses {
                super::merge_seen(history, ip, &seen);
            }
        }
        let e = self
            .dns
            .entry((pod, server))
            .or_insert_with(|| Evidence::new(0, d.time, d.time));
        e.add(1, d.time, d.time);
        let q = normalize_name(&d.query);
        if !q.is_empty() {
            e.names.insert(q);
        }
        Ok(())
    }
}

/// Size of the blocks the reader hands to the parsing workers.
const BLOCK: usize = 4 << 20;

/// Why a block stopped.
#[derive(Debug)]
enum ChunkError {
    /// Not a valid record.
    Parse(String),
    /// Invalid UTF-8.
    Utf8,
    /// A valid record that names an unknown pod, or similar.
    Record(Unlocated),
}

/// Reads the input in blocks cut at line ends and sends them, numbered, to the workers.
fn send_blocks(
    mut lines: LineReader<impl Read>,
    tx: &std::sync::mpsc::SyncSender<(usize, Vec<u8>)>,
) -> Result<(), InputError> {
    let mut index = 0;
    while let Some(block) = lines.next_block(BLOCK)? {
        if tx.send((index, block)).is_err() {
            return Ok(());
        }
        index += 1;
    }
    Ok(())
}

/// The authoritative parse of one line: the `leash-records` contract.
pub fn parse_record(line: &str) -> Result<Record, String> {
    serde_json::from_str::<Record>(line).map_err(|e| Chain(&e).to_string())
}

/// The hot-loop parse of a flow line, as an owned [`FlowRecord`]: `None` for anything the
/// fast path does not take (other kinds, versions, invalid lines), which then goes through
/// [`parse_record`], the authority for what is valid and for error messages. Exposed so that
/// tests can hold the two parsers to the same answers.
pub fn parse_flow_fast(line: &str) -> Option<FlowRecord> {
    let w: WireFlow<'_> = serde_json::from_str(line).ok()?;
    if w.v != u64::from(leash_records::record::VERSION) || w.kind != "flow" {
        return None;
    }
    Some(FlowRecord {
        node: w.node.into_owned(),
        pod: w.pod.map(|p| PodRef {
            uid: p.uid.into_owned(),
            namespace: p.namespace.into_owned(),
            name: p.name.into_owned(),
        }),
        cgroup: w.cgroup.into_owned(),
        protocol: w.protocol,
        dst: w.dst,
        dst_port: w.dst_port,
        count: w.count,
        first_seen: w.first_seen,
        last_seen: w.last_seen,
        names: w.names.into_iter().map(Cow::into_owned).collect(),
        outcome: w.outcome,
    })
}

/// A pod reference, borrowed from the input line when it can be.
#[derive(Debug, serde::Deserialize)]
struct WirePod<'a> {
    #[serde(default, borrow)]
    uid: Cow<'a, str>,
    #[serde(borrow)]
    namespace: Cow<'a, str>,
    #[serde(borrow)]
    name: Cow<'a, str>,
}

/// The fields of a flow that matter here.
#[derive(Debug)]
struct FlowParts<'a> {
    pod: Option<WirePod<'a>>,
    protocol: Protocol,
    dst: IpAddr,
    dst_port: u16,
    count: u64,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
}

/// A v1 flow line, borrowing its strings. It mirrors [`FlowRecord`] field for field (same
/// required fields, same defaults, same types) so that it accepts exactly what the contract
/// accepts; the property tests hold it to that.
#[derive(Debug, serde::Deserialize)]
struct WireFlow<'a> {
    v: u64,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    node: Cow<'a, str>,
    #[serde(borrow)]
    pod: Option<WirePod<'a>>,
    #[serde(default, borrow)]
    cgroup: Cow<'a, str>,
    protocol: Protocol,
    dst: IpAddr,
    dst_port: u16,
    count: u64,
    first_seen: DateTime<Utc>,
    last_seen: DateTime<Utc>,
    #[serde(default, borrow)]
    names: Vec<Cow<'a, str>>,
    #[serde(default)]
    outcome: Option<leash_records::Outcome>,
}

/// A parsed fast-path flow.
struct Wire<'a> {
    parts: FlowParts<'a>,
    names: Vec<Cow<'a, str>>,
}

fn parse_wire_flow(line: &str) -> Option<Wire<'_>> {
    let w: WireFlow<'_> = serde_json::from_str(line).ok()?;
    if w.v != u64::from(leash_records::record::VERSION) || w.kind != "flow" {
        return None;
    }
    Some(Wire {
        parts: FlowParts {
            pod: w.pod,
            protocol: w.protocol,
            dst: w.dst,
            dst_port: w.dst_port,
            count: w.count,
            first_seen: w.first_seen,
            last_seen: w.last_seen,
        },
        names: w.names,
    })
}

/// Finds a record's pod: by uid, else by namespace and name (a StatefulSet pod recreated
/// under the same name keeps its identity).
pub fn resolve_pod(cluster: &Cluster, r: &PodRef) -> Option<PodId> {
    (!r.uid.is_empty())
        .then(|| cluster.pod_by_uid(&r.uid))
        .flatten()
        .or_else(|| cluster.pod_by_name(&r.namespace, &r.name))
}

/// A record error before its file and line are attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unlocated {
    /// The record's pod is not in the cluster.
    UnknownPod {
        /// `flow` or `dns`.
        kind: &'static str,
        /// The reference.
        pod: PodRef,
    },
    /// A time outside what can have been observed (see [`leash_records::check_time`]).
    Time(TimeError),
}

impl Unlocated {
    /// Attaches the location.
    pub fn at(self, path: &Path, line: usize) -> Error {
        let path = path.to_path_buf();
        match self {
            Self::UnknownPod { kind, pod } => Error::UnknownPod {
                path,
                line,
                kind,
                namespace: pod.namespace,
                name: pod.name,
                uid: pod.uid,
            },
            Self::Time(source) => Error::Time { path, line, source },
        }
    }
}
