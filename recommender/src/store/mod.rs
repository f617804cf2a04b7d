//! Where `leash serve` keeps what agents observed.
//!
//! Observations are aggregated by (workload, destination, port, protocol) for flows and by
//! (workload, resolver, query) for DNS, with counts, first and last seen, and names; each DNS
//! observation keeps its query's address history (every address it resolved to, with first
//! and last seen, the latest TTL and CNAME chain: [`AddressSeen`]). Batches
//! from agents are committed exactly once: [`Store::commit`] records the batch id in the same
//! transaction as its observations and ignores an id it has already stored.
//!
//! Persistence only: the [`Store`] trait, its row types, [`sqlite`], the embedded
//! implementation ([`SqliteStore`]), and [`postgres`], a database shared by replicas
//! ([`PostgresStore`]); [`location`] is the one `--store` grammar that names either. It knows nothing of records or of the cluster model:
//! `crate::observations` turns batches into rows and rows into the engine's observations.
//!
//! Ingest, `recommend`, `audit` and `serve` see only the [`Store`] trait; commands open a
//! store through [`Location::open`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use leash_records::Protocol;

pub use crate::evidence::AddressSeen;
use crate::evidence::{PodNames, fold};

pub mod location;
pub mod migrate;
pub mod postgres;
pub mod sqlite;

pub use location::Location;
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// The unit observations are aggregated by: a workload, as the cluster model names it.
///
/// Flows from processes outside any pod are kept under `namespace = ""`, `kind = "Node"` and
/// `name` = the node name, so that nothing an agent sent is lost.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadRef {
    /// The namespace (`""` for node processes).
    pub namespace: String,
    /// Deployment, StatefulSet, DaemonSet, CronJob, Job, ReplicaSet, Pod (bare or unknown pod),
    /// or Node (processes outside pods).
    pub kind: String,
    /// The workload's name (the pod's name for kind Pod).
    pub name: String,
}

/// Identifies an agent's batch (`leash.v1.BatchId`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId {
    /// The agent's node.
    pub node: String,
    /// The agent process's random boot id.
    pub boot_id: String,
    /// The batch's sequence number within the boot id.
    pub seq: u64,
}

/// Flow evidence for one (workload, destination, port, protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowObservation {
    /// Who connected.
    pub workload: WorkloadRef,
    /// The protocol.
    pub protocol: Protocol,
    /// The destination as dialed (pre-DNAT), IPv4-mapped addresses as IPv4.
    pub dst: IpAddr,
    /// The destination port as dialed.
    pub port: u16,
    /// Summed event counts.
    pub count: u64,
    /// Earliest event.
    pub first_seen: DateTime<Utc>,
    /// Latest event.
    pub last_seen: DateTime<Utc>,
    /// DNS names the destination was reached by (lower case, no trailing dot).
    pub names: BTreeSet<String>,
    /// The pods that made the connections: at most [`PodNames::MAX`] by name, and how many
    /// others at least.
    pub pods: PodNames,
    /// Summed TCP connections that were established.
    pub established: u64,
    /// Summed TCP connections that failed.
    pub failed: u64,
}

/// DNS evidence for one (workload, resolver, query name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsObservation {
    /// Who asked.
    pub workload: WorkloadRef,
    /// The resolver address the query went to.
    pub server: IpAddr,
    /// The query name (lower case, no trailing dot).
    pub query: String,
    /// Answers seen.
    pub count: u64,
    /// Earliest answer.
    pub first_seen: DateTime<Utc>,
    /// Latest answer.
    pub last_seen: DateTime<Utc>,
    /// The addresses the query resolved to, each with every name it answered for: the query
    /// name, the owner names of the answer's CNAME chain and the owner of its A/AAAA record
    /// (as `crate::observations::answer_names` computes them).
    pub resolved: BTreeSet<(String, IpAddr)>,
    /// The query name's address history: every address it resolved to, with first and last
    /// seen, the latest TTL and CNAME chain (`crate::observations::answer_addresses`). Kept
    /// per address: a commit merges each address into the stored one ([`AddressSeen::merge`]);
    /// reads return the addresses last seen at or after their `since`; retention
    /// ([`Store::prune`]) removes addresses last seen before its cut, and keeps the
    /// observation while it has newer answers.
    pub addresses: BTreeMap<IpAddr, AddressSeen>,
}

/// One batch of a group commit ([`Store::commit_many`]).
#[derive(Debug, Clone, Copy)]
pub struct BatchCommit<'a> {
    /// The batch's id.
    pub id: &'a BatchId,
    /// Its flow observations.
    pub flows: &'a [FlowObservation],
    /// Its DNS observations.
    pub dns: &'a [DnsObservation],
}

/// What [`Store::commit`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// The batch was new and is now durable.
    Stored,
    /// The batch id was already stored; nothing changed.
    Duplicate,
}

/// Whose observations a scoped read returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Subject {
    /// Every workload.
    #[default]
    All,
    /// The workloads of one namespace.
    Namespace(String),
    /// One workload.
    Workload(WorkloadRef),
}

impl Subject {
    /// Whether `w` is in this subject.
    pub fn contains(&self, w: &WorkloadRef) -> bool {
        match self {
            Subject::All => true,
            Subject::Namespace(ns) => w.namespace == *ns,
            Subject::Workload(one) => w == one,
        }
    }
}

/// What a scoped read ([`Store::flows_in`], [`Store::dns_in`]) returns: observations of a
/// subject last seen at or after `since` (all when `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// The earliest last-seen time kept.
    pub since: Option<DateTime<Utc>>,
    /// Whose observations.
    pub subject: Subject,
}

/// Totals of one workload's flow observations ([`Store::workload_totals`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadTotals {
    /// The workload.
    pub workload: WorkloadRef,
    /// Distinct (destination, port, protocol) observed.
    pub destinations: u64,
    /// Summed event counts (saturating).
    pub count: u64,
    /// Earliest event.
    pub first_seen: DateTime<Utc>,
    /// Latest event.
    pub last_seen: DateTime<Utc>,
}

/// Errors of a store. Each names the database file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database failed (for implementations without a more precise variant).
    #[error("store {path}: {message}")]
    Database {
        /// The database file (or URL).
        path: String,
        /// What failed.
        message: String,
    },
    /// The directory that should hold the database could not be created.
    #[error("store {}: cannot create directory", path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The database could not be opened (missing permissions, a directory, not a database).
    #[error("store {}: cannot open", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        source: BoxError,
    },
    /// The database was written by a newer leash with a schema this build does not know.
    #[error("store {}: schema version {found} is newer than this leash supports ({supported})", path.display())]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The database's schema version.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A schema migration failed; the database stays at the version before it.
    #[error("store {}: migration to schema version {version} ({description}) failed", path.display())]
    Migrate {
        /// The database file.
        path: PathBuf,
        /// The version being migrated to.
        version: i64,
        /// What the migration does.
        description: &'static str,
        /// The underlying error.
        source: BoxError,
    },
    /// An operation on an open database failed.
    #[error("store {}: cannot {operation}", path.display())]
    Operation {
        /// The database file.
        path: PathBuf,
        /// What was being done, e.g. `commit a batch`.
        operation: &'static str,
        /// The underlying error.
        source: BoxError,
    },
    /// A time the store cannot represent (before 1677 or after 2262).
    #[error("store {}: time {time} is outside the storable range (years 1677 to 2262)", path.display())]
    TimeOutOfRange {
        /// The database file.
        path: PathBuf,
        /// The time.
        time: DateTime<Utc>,
    },
    /// A value the store cannot take.
    #[error("store {}: {what}", path.display())]
    Invalid {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A stored value is not what this build wrote (edited or damaged database).
    #[error("store {}: corrupt: {what}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What is wrong, naming the table.
        what: String,
    },
}

/// A boxed underlying error, so the trait does not depend on one database library.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Durable, aggregated observations. Implementations are synchronous; async callers use
/// `spawn_blocking`.
pub trait Store: Send + Sync {
    /// Commits one batch atomically: its id and its observations (merged into the aggregates)
    /// in one transaction. An id already stored changes nothing and returns
    /// [`Commit::Duplicate`].
    fn commit(
        &self,
        id: &BatchId,
        flows: &[FlowObservation],
        dns: &[DnsObservation],
    ) -> Result<Commit>;

    /// Commits several batches in one transaction (a group commit: one durable write for
    /// all of them, which is most of a commit's cost). Each batch is applied, or found already
    /// stored, exactly as [`Store::commit`] would in that order, and the result has one
    /// [`Commit`] per batch. On error nothing of the group is stored.
    ///
    /// The default commits the batches one by one, so on error the ones before the failing
    /// batch stay stored; implementations that can should override it.
    fn commit_many(&self, batches: &[BatchCommit<'_>]) -> Result<Vec<Commit>> {
        batches
            .iter()
            .map(|b| self.commit(b.id, b.flows, b.dns))
            .collect()
    }

    /// Flow observations last seen at or after `since` (all when `None`), sorted by workload,
    /// destination, port and protocol: [`Store::flows_in`] of every workload.
    fn flows(&self, since: Option<DateTime<Utc>>) -> Result<Vec<FlowObservation>> {
        self.flows_in(
            &Scope {
                since,
                subject: Subject::All,
            },
            usize::MAX,
        )
    }

    /// DNS observations last seen at or after `since` (all when `None`), sorted by workload,
    /// resolver and query, each with its addresses last seen at or after `since`:
    /// [`Store::dns_in`] of every workload.
    fn dns(&self, since: Option<DateTime<Utc>>) -> Result<Vec<DnsObservation>> {
        self.dns_in(
            &Scope {
                since,
                subject: Subject::All,
            },
            usize::MAX,
        )
    }

    /// Flow observations in `scope`, at most `max` of them: whole workloads first, in
    /// (namespace, kind, name) order, so a caller asking for one more than it accepts learns
    /// whether there were more. Sorted as [`Store::flows`]. Implementations read only the
    /// subject asked for, without blocking commits.
    fn flows_in(&self, scope: &Scope, max: usize) -> Result<Vec<FlowObservation>>;

    /// DNS observations in `scope`, at most `max` of them (as [`Store::flows_in`]). Sorted as
    /// [`Store::dns`].
    fn dns_in(&self, scope: &Scope, max: usize) -> Result<Vec<DnsObservation>>;

    /// Per-workload totals of flows last seen at or after `since`, for at most `max`
    /// workloads with such flows, in (namespace, kind, name) order, starting after `after`
    /// (a page's last workload). The default totals [`Store::flows`].
    fn workload_totals(
        &self,
        since: Option<DateTime<Utc>>,
        after: Option<&WorkloadRef>,
        max: usize,
    ) -> Result<Vec<WorkloadTotals>> {
        let mut out: Vec<WorkloadTotals> = Vec::new();
        // `flows` is sorted by workload first: totals come out in order.
        for f in self.flows(since)? {
            if after.is_some_and(|a| f.workload <= *a) {
                continue;
            }
            match out.last_mut() {
                Some(t) if t.workload == f.workload => t.add(&f),
                _ => {
                    if out.len() == max {
                        break;
                    }
                    out.push(WorkloadTotals::first(&f));
                }
            }
        }
        Ok(out)
    }

    /// Deletes observations last seen before `before`, the addresses of DNS observations
    /// ([`DnsObservation::addresses`]) last seen before it, batch ids committed before it, and
    /// remembered alerts last seen before it. Returns how many observations were removed
    /// (addresses are not counted).
    fn prune(&self, before: DateTime<Utc>) -> Result<u64>;

    /// The remembered alerts ([`AlertRecord`]), of one namespace when given, sorted by
    /// workload, destination, port and protocol. The default remembers none.
    fn alerts(&self, namespace: Option<&str>) -> Result<Vec<AlertRecord>> {
        let _ = namespace;
        Ok(Vec::new())
    }

    /// Stores `records`, each replacing the one of its key, in one transaction. The default
    /// forgets them (a store without alert memory: alerts are sent again after a restart).
    fn remember_alerts(&self, records: &[AlertRecord]) -> Result<()> {
        let _ = records;
        Ok(())
    }

    /// Every stored batch id with when it was committed, sorted by (node, boot id, seq).
    /// The default (a store that cannot list them) is an error.
    fn batch_ids(&self) -> Result<Vec<(BatchId, DateTime<Utc>)>> {
        Err(Error::Database {
            path: String::new(),
            message: "this store cannot list its batch ids".into(),
        })
    }

    /// Writes another store's contents ([`Export`]): its batch ids with their commit times
    /// (ids already stored are kept as they are), its observations merged into the
    /// aggregates as commits merge them, its alerts replacing those of their keys. Into an
    /// empty store, reading it back gives `data` again. The default is an error.
    fn import(&self, data: &Export) -> Result<()> {
        let _ = data;
        Err(Error::Database {
            path: String::new(),
            message: "this store cannot import".into(),
        })
    }
}

/// A whole store's contents, as `leash store migrate` moves them ([`Store::batch_ids`],
/// [`Store::flows`], [`Store::dns`], [`Store::alerts`] of one store; [`Store::import`] into
/// another).
#[derive(Debug, Clone, Default)]
pub struct Export {
    /// Every batch id, with when it was committed (retention prunes by it).
    pub batches: Vec<(BatchId, DateTime<Utc>)>,
    /// Every flow observation.
    pub flows: Vec<FlowObservation>,
    /// Every DNS observation, with its whole address history.
    pub dns: Vec<DnsObservation>,
    /// Every remembered alert.
    pub alerts: Vec<AlertRecord>,
}

/// An alert of `leash serve` (`crate::serve::alert`), remembered so that a restart does not
/// send it again. Keyed by (workload, destination, port, protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    /// The workload that made the flow.
    pub workload: WorkloadRef,
    /// The destination as dialed.
    pub dst: IpAddr,
    /// The port as dialed.
    pub port: u16,
    /// The protocol.
    pub protocol: Protocol,
    /// When it was first sent.
    pub first_sent: DateTime<Utc>,
    /// When it was last sent.
    pub last_sent: DateTime<Utc>,
    /// The flow's latest event when it was last found.
    pub last_seen: DateTime<Utc>,
    /// How many checks found it with new events.
    pub occurrences: u64,
    /// The alert as last found, as JSON (the `/v1/alerts` shape); opaque to the store.
    pub detail: String,
}

impl AlertRecord {
    /// The record's key, in the order records are sorted by.
    pub fn key(&self) -> (&WorkloadRef, IpAddr, u16, Protocol) {
        (&self.workload, self.dst, self.port, self.protocol)
    }
}

impl WorkloadTotals {
    /// The totals of one flow.
    pub fn first(f: &FlowObservation) -> Self {
        WorkloadTotals {
            workload: f.workload.clone(),
            destinations: 1,
            count: f.count,
            first_seen: f.first_seen,
            last_seen: f.last_seen,
        }
    }

    /// Adds another flow of the same workload.
    pub fn add(&mut self, f: &FlowObservation) {
        self.add_counts(f.count, f.first_seen, f.last_seen);
    }

    /// Adds another destination: `count` events between `first` and `last`.
    pub fn add_counts(&mut self, count: u64, first: DateTime<Utc>, last: DateTime<Utc>) {
        self.destinations = self.destinations.saturating_add(1);
        fold(
            &mut self.count,
            &mut self.first_seen,
            &mut self.last_seen,
            count,
            first,
            last,
        );
    }
}

/// The kind of [`WorkloadRef`] for processes outside any pod.
pub const KIND_NODE: &str = "Node";
/// The kind of [`WorkloadRef`] for a bare pod, or a pod the cluster model does not know.
pub const KIND_POD: &str = "Pod";

impl WorkloadRef {
    /// Whether this is the pseudo-workload of processes outside pods.
    pub fn is_node(&self) -> bool {
        self.kind == KIND_NODE && self.namespace.is_empty()
    }
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_node() {
            write!(f, "Node/{}", self.name)
        } else {
            write!(f, "{}/{}/{}", self.namespace, self.kind, self.name)
        }
    }
}

/// The documented order of flow observations: workload, destination, port, protocol.
pub fn flow_order(o: &FlowObservation) -> (&WorkloadRef, IpAddr, u16, Protocol) {
    (&o.workload, o.dst, o.port, o.protocol)
}

/// The documented order of DNS observations: workload, resolver, query.
pub fn dns_order(o: &DnsObservation) -> (&WorkloadRef, IpAddr, &str) {
    (&o.workload, o.server, o.query.as_str())
}
