//! The embedded store: one SQLite file (WAL, bundled SQLite), the default of `leash serve`.
//!
//! Schema: workloads and DNS names are interned into integer ids; flow and DNS aggregates
//! are `WITHOUT ROWID` tables keyed by their aggregation key, so a commit is one upsert per
//! observation into one b-tree. Addresses are stored as 4- or 16-byte blobs, times as
//! nanoseconds since the Unix epoch (which limits them to the years 1677–2262), counts as
//! integers saturating at 2^63−1. A DNS observation's address history is `dns_addresses`,
//! one row per (observation, address), merged by one upsert per address of a commit.
//!
//! Migrations are [`MIGRATIONS`], applied in order inside one transaction each; the
//! database's `PRAGMA user_version` is the number of migrations applied.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use leash_records::Protocol;
// Fx hashing: the id caches are probed once per observation on the ingest path.
use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use super::{
    AddressSeen, AlertRecord, BatchCommit, BatchId, Commit, DnsObservation, Error, FlowObservation,
    Result, Scope, Store, Subject, WorkloadRef, WorkloadTotals, dns_order, flow_order,
};
use crate::evidence::PodNames;

/// One schema migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// What it changes, for error messages.
    pub description: &'static str,
    /// The SQL, run in one transaction.
    pub sql: &'static str,
}

/// The schema migrations, in order: the database is at version `n` when the first `n` have
/// been applied. Append new versions; never edit a released one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        description: "aggregated flow and DNS observations, batch ids",
        sql: "
            CREATE TABLE workloads (
                id INTEGER PRIMARY KEY,
                namespace TEXT NOT NULL,
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                UNIQUE (namespace, kind, name)
            );
            CREATE TABLE names (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL UNIQUE
            );
            CREATE TABLE batches (
                node TEXT NOT NULL,
                boot_id TEXT NOT NULL,
                seq INTEGER NOT NULL,
                committed_at INTEGER NOT NULL,
                PRIMARY KEY (node, boot_id, seq)
            ) WITHOUT ROWID;
            CREATE TABLE flows (
                workload INTEGER NOT NULL REFERENCES workloads (id),
                dst BLOB NOT NULL,
                port INTEGER NOT NULL,
                protocol INTEGER NOT NULL,
                count INTEGER NOT NULL,
                first_seen INTEGER NOT NULL,
                last_seen INTEGER NOT NULL,
                established INTEGER NOT NULL,
                failed INTEGER NOT NULL,
                PRIMARY KEY (workload, dst, port, protocol)
            ) WITHOUT ROWID;
            CREATE TABLE flow_names (
                workload INTEGER NOT NULL,
                dst BLOB NOT NULL,
                port INTEGER NOT NULL,
                protocol INTEGER NOT NULL,
                name INTEGER NOT NULL REFERENCES names (id),
                PRIMARY KEY (workload, dst, port, protocol, name)
            ) WITHOUT ROWID;
            CREATE TABLE dns (
                workload INTEGER NOT NULL REFERENCES workloads (id),
                server BLOB NOT NULL,
                query INTEGER NOT NULL REFERENCES names (id),
                count INTEGER NOT NULL,
                first_seen INTEGER NOT NULL,
                last_seen INTEGER NOT NULL,
                PRIMARY KEY (workload, server, query)
            ) WITHOUT ROWID;
            CREATE TABLE dns_resolved (
                workload INTEGER NOT NULL,
                server BLOB NOT NULL,
                query INTEGER NOT NULL,
                name INTEGER NOT NULL REFERENCES names (id),
                ip BLOB NOT NULL,
                PRIMARY KEY (workload, server, query, name, ip)
            ) WITHOUT ROWID;
        ",
    },
    Migration {
        description: "index batch ids by commit time for retention",
        // Batch ids accumulate one per agent push; pruning them by age should not scan all.
        sql: "CREATE INDEX batches_committed_at ON batches (committed_at);",
    },
    Migration {
        description: "the pods that made each flow observation",
        // `flows.pods`: at least this many distinct pods made the flow (0 in rows written
        // before this version, which name none). `flow_pods`: up to `PodNames::MAX` of them
        // by name; a pod past the bound only raises `flows.pods`.
        sql: "
            ALTER TABLE flows ADD COLUMN pods INTEGER NOT NULL DEFAULT 0;
            CREATE TABLE flow_pods (
                workload INTEGER NOT NULL,
                dst BLOB NOT NULL,
                port INTEGER NOT NULL,
                protocol INTEGER NOT NULL,
                pod INTEGER NOT NULL REFERENCES names (id),
                PRIMARY KEY (workload, dst, port, protocol, pod)
            ) WITHOUT ROWID;
        ",
    },
    Migration {
        description: "remembered alerts",
        // Keyed by the workload's names rather than its interned id: pruning deletes
        // workloads without observations, and an alert may outlive its flows' rows.
        sql: "
            CREATE TABLE alerts (
                namespace TEXT NOT NULL,
                kind TEXT NOT NULL,
                name TEXT NOT NULL,
                dst BLOB NOT NULL,
                port INTEGER NOT NULL,
                protocol INTEGER NOT NULL,
                first_sent INTEGER NOT NULL,
                last_sent INTEGER NOT NULL,
                last_seen INTEGER NOT NULL,
                occurrences INTEGER NOT NULL,
                detail TEXT NOT NULL,
                PRIMARY KEY (namespace, kind, name, dst, port, protocol)
            ) WITHOUT ROWID;
            CREATE INDEX alerts_last_seen ON alerts (last_seen);
        ",
    },
    Migration {
        description: "the address history of each DNS observation",
        // One row per (DNS observation, address): when the query first and last resolved to
        // it, and the TTL and CNAME chain of the latest answer. `chain` is the names of the
        // chain, each followed by a zero byte ([`encode_chain`]), so that SQLite's byte-wise
        // order of the blobs is the order of the names' lists, and `commit` can merge in SQL
        // exactly as `AddressSeen::merge` does. Rows of DNS observations stored before this
        // version have no addresses.
        sql: "
            CREATE TABLE dns_addresses (
                workload INTEGER NOT NULL,
                server BLOB NOT NULL,
                query INTEGER NOT NULL,
                ip BLOB NOT NULL,
                first_seen INTEGER NOT NULL,
                last_seen INTEGER NOT NULL,
                ttl INTEGER NOT NULL,
                chain BLOB NOT NULL,
                PRIMARY KEY (workload, server, query, ip)
            ) WITHOUT ROWID;
        ",
    },
];

/// The schema version this build writes: the number of [`MIGRATIONS`].
pub fn schema_version() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// Merges one address of a DNS observation into its history as `AddressSeen::merge` does:
/// the earliest first seen, the latest last seen, and the TTL and chain of the later sighting
/// (on equal last seen, of the larger (TTL, chain)). SQL evaluates every `SET` on the row as
/// it was, so both `CASE`s compare the same values.
const UPSERT_ADDRESS: &str = "
    INSERT INTO dns_addresses (workload, server, query, ip, first_seen, last_seen, ttl, chain)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
    ON CONFLICT DO UPDATE SET
        first_seen = min(first_seen, excluded.first_seen),
        last_seen = max(last_seen, excluded.last_seen),
        ttl = CASE WHEN (excluded.last_seen, excluded.ttl, excluded.chain) > (last_seen, ttl, chain)
            THEN excluded.ttl ELSE ttl END,
        chain = CASE WHEN (excluded.last_seen, excluded.ttl, excluded.chain) > (last_seen, ttl, chain)
            THEN excluded.chain ELSE chain END";

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest count stored; sums saturate here (SQLite integers are signed 64-bit).
const MAX_COUNT: i64 = i64::MAX;

/// Rows per multi-row flow upsert, largest first: a batch's flows go out in statements of
/// these sizes, so that per-statement overhead (bind, step, reset) is paid once per up to 64
/// rows rather than once per row, with at most a few small statements for the remainder.
const FLOW_CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// The parameters of one flow row in the multi-row upsert.
const FLOW_COLUMNS: usize = 10;

/// The flow upserts of [`FLOW_CHUNKS`] rows each, built once.
static FLOW_UPSERTS: LazyLock<[String; 4]> = LazyLock::new(|| FLOW_CHUNKS.map(flow_upsert_sql));

/// At most this many flow–name links are remembered as stored; past it the set starts over
/// (a cache miss only costs a redundant `INSERT … ON CONFLICT DO NOTHING`). 2^19 links of
/// 40 bytes are about 20 MiB with the table's overhead.
const MAX_CACHED_LINKS: usize = 1 << 19;

fn flow_upsert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO flows (workload, dst, port, protocol, count, first_seen, last_seen,
             established, failed, pods) VALUES ",
    );
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    }
    sql.push_str(
        " ON CONFLICT DO UPDATE SET
             count = CASE WHEN count > 9223372036854775807 - excluded.count
                 THEN 9223372036854775807 ELSE count + excluded.count END,
             first_seen = min(first_seen, excluded.first_seen),
             last_seen = max(last_seen, excluded.last_seen),
             established = CASE
                 WHEN established > 9223372036854775807 - excluded.established
                 THEN 9223372036854775807
                 ELSE established + excluded.established END,
             failed = CASE WHEN failed > 9223372036854775807 - excluded.failed
                 THEN 9223372036854775807 ELSE failed + excluded.failed END,
             pods = max(pods, excluded.pods)",
    );
    sql
}

/// A `flow_names` row, a `flow_pods` row, or a pod left out of a full `flow_pods`, known to be
/// stored: (workload id, address, port, protocol, name id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct LinkKey {
    workload: i64,
    name: i64,
    dst: [u8; 16],
    port: u16,
    protocol: u8,
    v6: bool,
    link: Link,
}

/// What a [`LinkKey`] links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Link {
    /// A DNS name of the flow (`flow_names`).
    Name,
    /// A pod of the flow (`flow_pods`).
    Pod,
    /// A pod of the flow past the bound of `flow_pods`: counted, not named.
    PodLeftOut,
}

/// The SQLite store. The connection is behind a mutex: SQLite has one writer anyway.
pub struct SqliteStore {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// Connections for reads, so that reads never wait for the writer's mutex.
    readers: ReadPool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The connection and its caches: ids of interned workloads and names, and the flow–name
/// links already stored (most of a busy agent's batches repeat the links of earlier ones).
struct Inner {
    conn: Connection,
    workloads: HashMap<WorkloadRef, i64>,
    names: HashMap<String, i64>,
    links: HashSet<LinkKey>,
    /// `PRAGMA data_version` when the caches were last known valid: it changes when another
    /// connection (say `leash store prune` on the same file) commits, which may have deleted
    /// rows the caches claim exist.
    data_version: Option<i64>,
    /// The last commit failed because the database was read-only: the connection is opened
    /// again before the next one.
    reopen: bool,
}

/// Whether `e` is SQLite's SQLITE_READONLY (a read-only file system or file).
fn read_only(e: &Error) -> bool {
    let Error::Operation { source, .. } = e else {
        return false;
    };
    source
        .downcast_ref::<rusqlite::Error>()
        .and_then(rusqlite::Error::sqlite_error_code)
        == Some(rusqlite::ErrorCode::ReadOnly)
}

impl Inner {
    fn clear_caches(&mut self) {
        self.workloads.clear();
        self.names.clear();
        self.links.clear();
        self.data_version = None;
    }
}

fn boxed(e: rusqlite::Error) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}

/// Opens the writer's connection to `path` (creating the file): WAL journal,
/// `synchronous=NORMAL`, busy timeout, cache and checkpoint sizes.
fn writer_connection(path: &Path) -> Result<Connection> {
    let open_err = |e: rusqlite::Error| Error::Open {
        path: path.to_path_buf(),
        source: boxed(e),
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    // The first statement reads the file: a non-database file fails here.
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(open_err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::Open {
            path: path.to_path_buf(),
            source: format!("cannot switch to WAL journal mode (got {mode})").into(),
        });
    }
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", false)
        .map_err(open_err)?;
    // A server's working set of aggregates stays in memory (64 MiB of pages), and the WAL
    // is folded back into the database every 64 MiB rather than every 4 MiB: each
    // checkpoint rewrites the pages that changed, and a busy store changes the same ones.
    conn.pragma_update(None, "cache_size", -65_536)
        .map_err(open_err)?;
    conn.pragma_update(None, "wal_autocheckpoint", 16_384)
        .map_err(open_err)?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

impl SqliteStore {
    /// Opens (creating if needed, with its parent directory) the database at `path`, and
    /// migrates it to the current schema. WAL journal, `synchronous=NORMAL` (a commit is
    /// durable across process crashes; a power loss may lose the last commits, never corrupt
    /// the file), busy timeout 5 s.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| Error::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let conn = writer_connection(&path)?;
        let mut store = Self {
            path,
            inner: Mutex::new(Inner {
                conn,
                workloads: HashMap::default(),
                names: HashMap::default(),
                links: HashSet::default(),
                data_version: None,
                reopen: false,
            }),
            readers: ReadPool {
                idle: Mutex::new(Vec::new()),
            },
        };
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing database (as [`Self::open`]), failing when there is no file: a
    /// reader given a wrong path should not get an empty store.
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        match std::fs::metadata(path) {
            Ok(_) => Self::open(path),
            Err(source) => Err(Error::Open {
                path: path.to_path_buf(),
                source: Box::new(source),
            }),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the open database (after [`Self::open`], [`schema_version`]).
    pub fn version(&self) -> Result<i64> {
        let inner = self.lock();
        inner
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.op("read the schema version", e))
    }

    fn migrate(&mut self) -> Result<()> {
        let path = self.path.clone();
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        let found: i64 = inner
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| Error::Open {
                path: path.clone(),
                source: boxed(e),
            })?;
        let supported = schema_version();
        if found > supported {
            return Err(Error::NewerSchema {
                path,
                found,
                supported,
            });
        }
        for (i, m) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(found).unwrap_or(0))
        {
            let version = i64::try_from(i + 1).unwrap_or(i64::MAX);
            let fail = |e: rusqlite::Error| Error::Migrate {
                path: path.clone(),
                version,
                description: m.description,
                source: boxed(e),
            };
            let tx = inner
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(fail)?;
            tx.execute_batch(m.sql).map_err(fail)?;
            tx.pragma_update(None, "user_version", version)
                .map_err(fail)?;
            tx.commit().map_err(fail)?;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| {
            // A panic mid-commit rolled its transaction back (dropped): the connection is
            // sound, but ids cached during it may not exist.
            let mut inner = poisoned.into_inner();
            inner.clear_caches();
            inner
        })
    }

    fn op(&self, operation: &'static str, e: rusqlite::Error) -> Error {
        Error::Operation {
            path: self.path.clone(),
            operation,
            source: boxed(e),
        }
    }

    fn time(&self, t: DateTime<Utc>) -> Result<i64> {
        t.timestamp_nanos_opt()
            .ok_or_else(|| Error::TimeOutOfRange {
                path: self.path.clone(),
                time: t,
            })
    }

    /// Commits `batches` in one transaction (see [`Store::commit_many`]).
    fn commit_inner(&self, inner: &mut Inner, batches: &[BatchCommit<'_>]) -> Result<Vec<Commit>> {
        let op = |e| self.op("commit a batch", e);
        let now = self.time(Utc::now())?;
        let Inner {
            conn,
            workloads,
            names,
            links,
            data_version,
            reopen: _,
        } = inner;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(op)?;
        // Holding the write lock now, nobody else commits until we do: if anyone did since
        // our last commit, forget what the caches say is stored.
        let version: i64 = tx
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(op)?;
        if *data_version != Some(version) {
            workloads.clear();
            names.clear();
            links.clear();
            *data_version = Some(version);
        }
        let mut ids = Ids {
            tx: &tx,
            workloads,
            names,
        };
        let outcomes = batches
            .iter()
            .map(|b| self.apply(&tx, &mut ids, links, now, b))
            .collect::<Result<Vec<_>>>()?;
        if outcomes.iter().all(|c| *c == Commit::Duplicate) {
            // Nothing changed: dropping the transaction rolls back.
            return Ok(outcomes);
        }
        tx.commit().map_err(op)?;
        Ok(outcomes)
    }

    /// Applies one batch inside the group's transaction: records its id, or finds it already
    /// stored (then changes nothing), and merges its observations into the aggregates.
    fn apply(
        &self,
        tx: &rusqlite::Transaction<'_>,
        ids: &mut Ids<'_, '_>,
        links: &mut HashSet<LinkKey>,
        now: i64,
        batch: &BatchCommit<'_>,
    ) -> Result<Commit> {
        let BatchCommit { id, flows, dns } = *batch;
        let op = |e| self.op("commit a batch", e);
        let seq = i64::try_from(id.seq).map_err(|_| Error::Invalid {
            path: self.path.clone(),
            what: format!("batch sequence number {} exceeds 2^63-1", id.seq),
        })?;
        let inserted = tx
            .prepare_cached(
                "INSERT INTO batches (node, boot_id, seq, committed_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![id.node, id.boot_id, seq, now]))
            .map_err(op)?;
        if inserted == 0 {
            return Ok(Commit::Duplicate);
        }
        self.apply_rows(tx, ids, links, flows, dns)?;
        Ok(Commit::Stored)
    }

    /// Merges observations into the aggregates inside `tx` (a batch's, or an import's).
    fn apply_rows(
        &self,
        tx: &rusqlite::Transaction<'_>,
        ids: &mut Ids<'_, '_>,
        links: &mut HashSet<LinkKey>,
        flows: &[FlowObservation],
        dns: &[DnsObservation],
    ) -> Result<()> {
        let op = |e| self.op("commit a batch", e);
        {
            let mut add_flow_name = tx
                .prepare_cached(
                    "INSERT INTO flow_names (workload, dst, port, protocol, name)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                )
                .map_err(op)?;
            let mut keyed = Vec::with_capacity(flows.len());
            // A batch's observations come workload by workload: reuse the last id rather than
            // hashing the same workload again.
            let mut last: Option<(&WorkloadRef, i64)> = None;
            for f in flows {
                let w = match last {
                    Some((r, id)) if *r == f.workload => id,
                    _ => {
                        let id = ids.workload(&f.workload).map_err(op)?;
                        last = Some((&f.workload, id));
                        id
                    }
                };
                keyed.push(FlowRow {
                    workload: w,
                    dst: IpBytes::new(f.dst),
                    port: f.port,
                    protocol: protocol_number(f.protocol),
                    first_seen: self.time(f.first_seen)?,
                    last_seen: self.time(f.last_seen)?,
                    flow: f,
                });
            }
            // Upserts in key order walk the b-tree forward instead of jumping around it.
            keyed.sort_unstable_by(|a, b| a.key().cmp(&b.key()));
            let mut rest = keyed.as_slice();
            for (&rows, sql) in FLOW_CHUNKS.iter().zip(FLOW_UPSERTS.iter()) {
                if rest.len() < rows {
                    continue;
                }
                // Looked up once per size, not per chunk: the cache hashes the whole SQL text.
                let mut upsert = tx.prepare_cached(sql).map_err(op)?;
                while rest.len() >= rows {
                    let (chunk, tail) = rest.split_at(rows);
                    for (i, row) in chunk.iter().enumerate() {
                        row.bind(&mut upsert, i * FLOW_COLUMNS).map_err(op)?;
                    }
                    upsert.raw_execute().map_err(op)?;
                    rest = tail;
                }
            }
            for row in &keyed {
                for n in &row.flow.names {
                    let name = ids.name(n).map_err(op)?;
                    let link = row.link(name);
                    if links.contains(&link) {
                        continue;
                    }
                    add_flow_name
                        .execute(params![
                            row.workload,
                            row.dst.as_slice(),
                            row.port,
                            row.protocol,
                            name
                        ])
                        .map_err(op)?;
                    if links.len() >= MAX_CACHED_LINKS {
                        links.clear();
                    }
                    links.insert(link);
                }
                // Pods of this batch that a full row cannot name: all distinct, and none of
                // the names it keeps.
                let mut left_out: u64 = 0;
                for p in &row.flow.pods.names {
                    let name = ids.name(p).map_err(op)?;
                    let linked = LinkKey {
                        link: Link::Pod,
                        ..row.link(name)
                    };
                    let out = LinkKey {
                        link: Link::PodLeftOut,
                        ..linked
                    };
                    if links.contains(&linked) {
                        continue;
                    }
                    let link =
                        if links.contains(&out) || !self.add_pod(tx, row, name).map_err(op)? {
                            left_out += 1;
                            out
                        } else {
                            linked
                        };
                    if links.len() >= MAX_CACHED_LINKS {
                        links.clear();
                    }
                    links.insert(link);
                }
                if left_out > 0 {
                    self.count_pods_left_out(tx, row, left_out).map_err(op)?;
                }
            }
            let mut upsert_dns = tx
                .prepare_cached(
                    "INSERT INTO dns (workload, server, query, count, first_seen, last_seen)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT DO UPDATE SET
                         count = CASE WHEN count > 9223372036854775807 - excluded.count
                             THEN 9223372036854775807 ELSE count + excluded.count END,
                         first_seen = min(first_seen, excluded.first_seen),
                         last_seen = max(last_seen, excluded.last_seen)",
                )
                .map_err(op)?;
            let mut add_resolved = tx
                .prepare_cached(
                    "INSERT INTO dns_resolved (workload, server, query, name, ip)
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                )
                .map_err(op)?;
            // Prepared on the first observation with addresses: batches without any pay nothing.
            let mut upsert_address: Option<rusqlite::CachedStatement<'_>> = None;
            for d in dns {
                let w = ids.workload(&d.workload).map_err(op)?;
                let server = IpBytes::new(d.server);
                let query = ids.name(&d.query).map_err(op)?;
                upsert_dns
                    .execute(params![
                        w,
                        server.as_slice(),
                        query,
                        clamp(d.count),
                        self.time(d.first_seen)?,
                        self.time(d.last_seen)?,
                    ])
                    .map_err(op)?;
                for (name, ip) in &d.resolved {
                    let name = ids.name(name).map_err(op)?;
                    add_resolved
                        .execute(params![
                            w,
                            server.as_slice(),
                            query,
                            name,
                            IpBytes::new(*ip).as_slice()
                        ])
                        .map_err(op)?;
                }
                if d.addresses.is_empty() {
                    continue;
                }
                let stmt = match &mut upsert_address {
                    Some(stmt) => stmt,
                    None => upsert_address.insert(tx.prepare_cached(UPSERT_ADDRESS).map_err(op)?),
                };
                for (ip, seen) in &d.addresses {
                    let chain = self.encode_chain(&seen.chain)?;
                    stmt.execute(params![
                        w,
                        server.as_slice(),
                        query,
                        IpBytes::new(*ip).as_slice(),
                        self.time(seen.first_seen)?,
                        self.time(seen.last_seen)?,
                        seen.ttl,
                        chain,
                    ])
                    .map_err(op)?;
                }
            }
        }
        Ok(())
    }

    /// Links a pod to a flow row while the row names fewer than [`PodNames::MAX`] pods.
    /// Whether the pod is linked: `false` when the row is full without it.
    fn add_pod(
        &self,
        tx: &rusqlite::Transaction<'_>,
        row: &FlowRow<'_>,
        pod: i64,
    ) -> rusqlite::Result<bool> {
        let max = i64::try_from(PodNames::MAX).unwrap_or(i64::MAX);
        let added = tx
            .prepare_cached(
                "INSERT INTO flow_pods (workload, dst, port, protocol, pod)
                 SELECT ?1, ?2, ?3, ?4, ?5
                 WHERE (SELECT count(*) FROM flow_pods
                        WHERE workload = ?1 AND dst = ?2 AND port = ?3 AND protocol = ?4) < ?6
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                row.workload,
                row.dst.as_slice(),
                row.port,
                row.protocol,
                pod,
                max
            ])?;
        if added > 0 {
            return Ok(true);
        }
        tx.prepare_cached(
            "SELECT 1 FROM flow_pods
             WHERE workload = ?1 AND dst = ?2 AND port = ?3 AND protocol = ?4 AND pod = ?5",
        )?
        .exists(params![
            row.workload,
            row.dst.as_slice(),
            row.port,
            row.protocol,
            pod
        ])
    }

    /// Raises a full row's count of pods to its [`PodNames::MAX`] names and the `left_out`
    /// distinct pods of one batch it could not name: a lower bound, since pods left out by
    /// earlier batches may or may not be among them.
    fn count_pods_left_out(
        &self,
        tx: &rusqlite::Transaction<'_>,
        row: &FlowRow<'_>,
        left_out: u64,
    ) -> rusqlite::Result<()> {
        let at_least = clamp(
            u64::try_from(PodNames::MAX)
                .unwrap_or(u64::MAX)
                .saturating_add(left_out),
        );
        tx.prepare_cached(
            "UPDATE flows SET pods = max(pods, ?5)
             WHERE workload = ?1 AND dst = ?2 AND port = ?3 AND protocol = ?4",
        )?
        .execute(params![
            row.workload,
            row.dst.as_slice(),
            row.port,
            row.protocol,
            at_least
        ])?;
        Ok(())
    }

    fn decode_ip(&self, table: &'static str, bytes: &[u8]) -> Result<IpAddr> {
        match bytes.len() {
            4 => {
                let mut a = [0u8; 4];
                a.copy_from_slice(bytes);
                Ok(IpAddr::V4(Ipv4Addr::from(a)))
            }
            16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(bytes);
                Ok(IpAddr::V6(Ipv6Addr::from(a)))
            }
            n => Err(Error::Corrupt {
                path: self.path.clone(),
                what: format!("{table}: an address of {n} bytes (expected 4 or 16)"),
            }),
        }
    }
}

impl SqliteStore {
    /// A CNAME chain as stored: each name followed by a zero byte. Byte-wise, the blobs
    /// compare as the lists of names do (a name that is a prefix of another ends first, at a
    /// zero byte below every byte of a name), which the merge in SQL relies on. A name with a
    /// zero byte, which no DNS name has, cannot be stored.
    fn encode_chain(&self, chain: &[String]) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(chain.iter().map(|n| n.len() + 1).sum());
        for name in chain {
            if name.as_bytes().contains(&0) {
                return Err(Error::Invalid {
                    path: self.path.clone(),
                    what: format!("a CNAME chain name contains a zero byte: {name:?}"),
                });
            }
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// A stored CNAME chain ([`Self::encode_chain`]) back to its names.
    fn decode_chain(&self, value: rusqlite::types::ValueRef<'_>) -> Result<Vec<String>> {
        let corrupt = |what: &str| Error::Corrupt {
            path: self.path.clone(),
            what: format!("dns_addresses: a CNAME chain {what}"),
        };
        let rusqlite::types::ValueRef::Blob(bytes) = value else {
            return Err(corrupt("that is not a blob"));
        };
        let Some(body) = bytes.strip_suffix(&[0]) else {
            if bytes.is_empty() {
                return Ok(Vec::new());
            }
            return Err(corrupt("without its final zero byte"));
        };
        body.split(|b| *b == 0)
            .map(|name| {
                std::str::from_utf8(name)
                    .map(str::to_owned)
                    .map_err(|_| corrupt("with a name that is not UTF-8"))
            })
            .collect()
    }
}

/// A failure while reading on a read connection: SQL, or a stored value this build did not
/// write.
enum ReadError {
    Sql(rusqlite::Error),
    Store(Error),
}

impl ReadError {
    /// The store error, naming `op` for SQL failures.
    fn or_op(self, op: impl FnOnce(rusqlite::Error) -> Error) -> Error {
        match self {
            ReadError::Sql(e) => op(e),
            ReadError::Store(e) => e,
        }
    }
}

impl From<Error> for ReadError {
    fn from(e: Error) -> Self {
        ReadError::Store(e)
    }
}

type ReadResult<T> = std::result::Result<T, ReadError>;

/// At most this many idle read connections are kept for reuse; more may be open while
/// busy (callers such as the HTTP API bound their own concurrency).
const MAX_IDLE_READERS: usize = 8;

/// Page cache of one read connection: 8 MiB (the writer's is 64 MiB).
const READER_CACHE_KIB: i64 = 8_192;

/// Read-only connections to the database, reused. In WAL mode a reader sees the last commit
/// before its read began and never waits for the writer, nor the writer for it: reads take
/// none of the writer's locks.
struct ReadPool {
    idle: Mutex<Vec<Connection>>,
}

/// A read connection, returned to its pool when dropped.
struct Reader<'p> {
    conn: Option<Connection>,
    pool: &'p ReadPool,
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
    }
}

impl SqliteStore {
    /// Opens the writer's connection again after a commit failed as read-only: SQLite keeps
    /// a file opened on a read-only file system read-only for every connection of the
    /// process, so the idle readers and the old writer are closed first. Until the file
    /// system is writable, the new connection fails too (or is read-only again) and the next
    /// commit tries again; meanwhile the writer is an empty in-memory database, on which
    /// every commit fails, so nothing is acknowledged that is not stored.
    fn reopen(&self, inner: &mut Inner) {
        let Ok(placeholder) = Connection::open_in_memory() else {
            return;
        };
        drop(std::mem::replace(&mut inner.conn, placeholder));
        self.readers
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        inner.clear_caches();
        match writer_connection(&self.path) {
            Ok(conn) => {
                tracing::debug!(path = %self.path.display(), "store writer reopened after a read-only failure");
                inner.conn = conn;
                inner.reopen = false;
            }
            Err(e) => {
                tracing::debug!(path = %self.path.display(), "store writer not reopened: {}", leash_records::error::Chain(&e));
            }
        }
    }

    /// A read connection from the pool, or a new one.
    fn reader(&self) -> Result<Reader<'_>> {
        let pooled = self
            .readers
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => self.open_reader()?,
        };
        Ok(Reader {
            conn: Some(conn),
            pool: &self.readers,
        })
    }

    fn open_reader(&self) -> Result<Connection> {
        let open_err = |e: rusqlite::Error| Error::Open {
            path: self.path.clone(),
            source: boxed(e),
        };
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
        conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)
            .map_err(open_err)?;
        conn.set_prepared_statement_cache_capacity(16);
        Ok(conn)
    }

    /// Runs `f` in one read transaction (one consistent snapshot) on a read connection.
    fn read<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> ReadResult<T>,
    ) -> ReadResult<T> {
        let mut reader = self.reader()?;
        let Some(conn) = reader.conn.as_mut() else {
            return Err(ReadError::Store(Error::Invalid {
                path: self.path.clone(),
                what: "a read connection was used after its return".into(),
            }));
        };
        let tx = conn.transaction().map_err(ReadError::Sql)?;
        let out = f(&tx)?;
        // Nothing was written: ending the read transaction releases its snapshot.
        tx.rollback().map_err(ReadError::Sql)?;
        Ok(out)
    }

    /// Calls `each` with every workload of `subject` (after `after`, when given), in
    /// (namespace, kind, name) order, until it returns `false`.
    fn each_workload(
        &self,
        tx: &rusqlite::Transaction<'_>,
        subject: &Subject,
        after: Option<&WorkloadRef>,
        mut each: impl FnMut(i64, &WorkloadRef) -> ReadResult<bool>,
    ) -> ReadResult<()> {
        // One statement per subject, so that each uses the (namespace, kind, name) index.
        let (sql, args): (&str, Vec<&str>) = match (subject, after) {
            (Subject::All, None) => (
                "SELECT id, namespace, kind, name FROM workloads ORDER BY namespace, kind, name",
                vec![],
            ),
            (Subject::All, Some(a)) => (
                "SELECT id, namespace, kind, name FROM workloads
                 WHERE (namespace, kind, name) > (?1, ?2, ?3) ORDER BY namespace, kind, name",
                vec![&a.namespace, &a.kind, &a.name],
            ),
            (Subject::Namespace(ns), None) => (
                "SELECT id, namespace, kind, name FROM workloads WHERE namespace = ?1
                 ORDER BY namespace, kind, name",
                vec![ns],
            ),
            (Subject::Namespace(ns), Some(a)) => (
                "SELECT id, namespace, kind, name FROM workloads
                 WHERE namespace = ?1 AND (namespace, kind, name) > (?2, ?3, ?4)
                 ORDER BY namespace, kind, name",
                vec![ns, &a.namespace, &a.kind, &a.name],
            ),
            (Subject::Workload(w), None) => (
                "SELECT id, namespace, kind, name FROM workloads
                 WHERE namespace = ?1 AND kind = ?2 AND name = ?3",
                vec![&w.namespace, &w.kind, &w.name],
            ),
            (Subject::Workload(w), Some(a)) => (
                "SELECT id, namespace, kind, name FROM workloads
                 WHERE namespace = ?1 AND kind = ?2 AND name = ?3
                     AND (namespace, kind, name) > (?4, ?5, ?6)",
                vec![
                    &w.namespace,
                    &w.kind,
                    &w.name,
                    &a.namespace,
                    &a.kind,
                    &a.name,
                ],
            ),
        };
        let mut stmt = tx.prepare_cached(sql).map_err(ReadError::Sql)?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(args))
            .map_err(ReadError::Sql)?;
        while let Some(r) = rows.next().map_err(ReadError::Sql)? {
            let id: i64 = r.get(0).map_err(ReadError::Sql)?;
            let workload = WorkloadRef {
                namespace: r.get(1).map_err(ReadError::Sql)?,
                kind: r.get(2).map_err(ReadError::Sql)?,
                name: r.get(3).map_err(ReadError::Sql)?,
            };
            if !each(id, &workload)? {
                break;
            }
        }
        Ok(())
    }

    /// Appends one workload's flows last seen at or after `since` (stored nanoseconds).
    fn workload_flows(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: i64,
        workload: &WorkloadRef,
        since: i64,
        out: &mut Vec<FlowObservation>,
    ) -> ReadResult<()> {
        let first = out.len();
        // (address bytes, port, protocol) → index into `out`, for attaching names.
        let mut index: HashMap<(Vec<u8>, i64, i64), usize> = HashMap::default();
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT dst, port, protocol, count, first_seen, last_seen, established, failed,
                         pods
                     FROM flows WHERE workload = ?1 AND last_seen >= ?2",
                )
                .map_err(ReadError::Sql)?;
            let mut rows = stmt.query(params![id, since]).map_err(ReadError::Sql)?;
            while let Some(r) = rows.next().map_err(ReadError::Sql)? {
                let dst_bytes: Vec<u8> = r.get(0).map_err(ReadError::Sql)?;
                let port: i64 = r.get(1).map_err(ReadError::Sql)?;
                let proto: i64 = r.get(2).map_err(ReadError::Sql)?;
                let dst = self.decode_ip("flows", &dst_bytes)?;
                let port_u16 = u16::try_from(port).map_err(|_| Error::Corrupt {
                    path: self.path.clone(),
                    what: format!("flows: port {port} out of range"),
                })?;
                let protocol = protocol_from_number(proto).ok_or_else(|| Error::Corrupt {
                    path: self.path.clone(),
                    what: format!("flows: unknown protocol number {proto}"),
                })?;
                index.insert((dst_bytes, port, proto), out.len());
                out.push(FlowObservation {
                    workload: workload.clone(),
                    protocol,
                    dst,
                    port: port_u16,
                    count: unclamp(r.get(3).map_err(ReadError::Sql)?),
                    first_seen: DateTime::from_timestamp_nanos(r.get(4).map_err(ReadError::Sql)?),
                    last_seen: DateTime::from_timestamp_nanos(r.get(5).map_err(ReadError::Sql)?),
                    names: BTreeSet::new(),
                    // The count of pods for now; less the names once they are read.
                    pods: PodNames {
                        names: BTreeSet::new(),
                        more: unclamp(r.get(8).map_err(ReadError::Sql)?),
                    },
                    established: unclamp(r.get(6).map_err(ReadError::Sql)?),
                    failed: unclamp(r.get(7).map_err(ReadError::Sql)?),
                });
            }
        }
        if out.len() == first {
            return Ok(());
        }
        attach_names(
            tx,
            "SELECT p.dst, p.port, p.protocol, names.name
             FROM flow_pods p JOIN names ON names.id = p.pod
             WHERE p.workload = ?1",
            id,
            &index,
            out,
            |f| &mut f.pods.names,
        )?;
        for f in out.iter_mut().skip(first) {
            let named = u64::try_from(f.pods.names.len()).unwrap_or(u64::MAX);
            f.pods.more = f.pods.more.saturating_sub(named);
        }
        // Links of flows outside the window have no entry.
        attach_names(
            tx,
            "SELECT n.dst, n.port, n.protocol, names.name
             FROM flow_names n JOIN names ON names.id = n.name
             WHERE n.workload = ?1",
            id,
            &index,
            out,
            |f| &mut f.names,
        )
    }

    /// Appends one workload's DNS observations last seen at or after `since`.
    fn workload_dns(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: i64,
        workload: &WorkloadRef,
        since: i64,
        out: &mut Vec<DnsObservation>,
    ) -> ReadResult<()> {
        let first = out.len();
        // (server bytes, query name id) → index into `out`.
        let mut index: HashMap<(Vec<u8>, i64), usize> = HashMap::default();
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT d.server, d.query, names.name, d.count, d.first_seen, d.last_seen
                     FROM dns d JOIN names ON names.id = d.query
                     WHERE d.workload = ?1 AND d.last_seen >= ?2",
                )
                .map_err(ReadError::Sql)?;
            let mut rows = stmt.query(params![id, since]).map_err(ReadError::Sql)?;
            while let Some(r) = rows.next().map_err(ReadError::Sql)? {
                let server_bytes: Vec<u8> = r.get(0).map_err(ReadError::Sql)?;
                let query_id: i64 = r.get(1).map_err(ReadError::Sql)?;
                let server = self.decode_ip("dns", &server_bytes)?;
                index.insert((server_bytes, query_id), out.len());
                out.push(DnsObservation {
                    workload: workload.clone(),
                    server,
                    query: r.get(2).map_err(ReadError::Sql)?,
                    count: unclamp(r.get(3).map_err(ReadError::Sql)?),
                    first_seen: DateTime::from_timestamp_nanos(r.get(4).map_err(ReadError::Sql)?),
                    last_seen: DateTime::from_timestamp_nanos(r.get(5).map_err(ReadError::Sql)?),
                    resolved: BTreeSet::new(),
                    addresses: std::collections::BTreeMap::new(),
                });
            }
        }
        if out.len() == first {
            return Ok(());
        }
        let mut stmt = tx
            .prepare_cached(
                "SELECT r.server, r.query, names.name, r.ip
                 FROM dns_resolved r JOIN names ON names.id = r.name
                 WHERE r.workload = ?1",
            )
            .map_err(ReadError::Sql)?;
        let mut rows = stmt.query(params![id]).map_err(ReadError::Sql)?;
        while let Some(r) = rows.next().map_err(ReadError::Sql)? {
            let key = (
                r.get(0).map_err(ReadError::Sql)?,
                r.get(1).map_err(ReadError::Sql)?,
            );
            if let Some(&i) = index.get(&key)
                && let Some(d) = out.get_mut(i)
            {
                let ip: Vec<u8> = r.get(3).map_err(ReadError::Sql)?;
                let ip = self.decode_ip("dns_resolved", &ip)?;
                d.resolved.insert((r.get(2).map_err(ReadError::Sql)?, ip));
            }
        }
        // The addresses in the window, as the observations are.
        let mut stmt = tx
            .prepare_cached(
                "SELECT server, query, ip, first_seen, last_seen, ttl, chain
                 FROM dns_addresses WHERE workload = ?1 AND last_seen >= ?2",
            )
            .map_err(ReadError::Sql)?;
        let mut rows = stmt.query(params![id, since]).map_err(ReadError::Sql)?;
        while let Some(r) = rows.next().map_err(ReadError::Sql)? {
            let key = (
                r.get(0).map_err(ReadError::Sql)?,
                r.get(1).map_err(ReadError::Sql)?,
            );
            let Some(d) = index.get(&key).and_then(|&i| out.get_mut(i)) else {
                continue;
            };
            let ip: Vec<u8> = r.get(2).map_err(ReadError::Sql)?;
            let ip = self.decode_ip("dns_addresses", &ip)?;
            let ttl: i64 = r.get(5).map_err(ReadError::Sql)?;
            let ttl = u32::try_from(ttl).map_err(|_| Error::Corrupt {
                path: self.path.clone(),
                what: format!("dns_addresses: TTL {ttl} is out of range"),
            })?;
            let chain = self.decode_chain(r.get_ref(6).map_err(ReadError::Sql)?)?;
            d.addresses.insert(
                ip,
                AddressSeen {
                    first_seen: DateTime::from_timestamp_nanos(r.get(3).map_err(ReadError::Sql)?),
                    last_seen: DateTime::from_timestamp_nanos(r.get(4).map_err(ReadError::Sql)?),
                    ttl,
                    chain,
                },
            );
        }
        Ok(())
    }
}

/// Interns workloads and names inside a commit's transaction.
struct Ids<'t, 'c> {
    tx: &'t rusqlite::Transaction<'c>,
    workloads: &'t mut HashMap<WorkloadRef, i64>,
    names: &'t mut HashMap<String, i64>,
}

impl Ids<'_, '_> {
    fn workload(&mut self, w: &WorkloadRef) -> rusqlite::Result<i64> {
        if let Some(&id) = self.workloads.get(w) {
            return Ok(id);
        }
        self.tx
            .prepare_cached(
                "INSERT INTO workloads (namespace, kind, name) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![w.namespace, w.kind, w.name])?;
        let id: i64 = self
            .tx
            .prepare_cached(
                "SELECT id FROM workloads WHERE namespace = ?1 AND kind = ?2 AND name = ?3",
            )?
            .query_row(params![w.namespace, w.kind, w.name], |r| r.get(0))?;
        self.workloads.insert(w.clone(), id);
        Ok(id)
    }

    fn name(&mut self, n: &str) -> rusqlite::Result<i64> {
        if let Some(&id) = self.names.get(n) {
            return Ok(id);
        }
        self.tx
            .prepare_cached("INSERT INTO names (name) VALUES (?1) ON CONFLICT DO NOTHING")?
            .execute(params![n])?;
        let id: i64 = self
            .tx
            .prepare_cached("SELECT id FROM names WHERE name = ?1")?
            .query_row(params![n], |r| r.get(0))?;
        self.names.insert(n.to_owned(), id);
        Ok(id)
    }
}

/// One flow observation as its upsert binds it.
struct FlowRow<'f> {
    workload: i64,
    dst: IpBytes,
    port: u16,
    protocol: u8,
    first_seen: i64,
    last_seen: i64,
    flow: &'f FlowObservation,
}

impl FlowRow<'_> {
    /// The `flows` primary key, in the table's order.
    fn key(&self) -> (i64, &[u8], u16, u8) {
        (self.workload, self.dst.as_slice(), self.port, self.protocol)
    }

    fn link(&self, name: i64) -> LinkKey {
        LinkKey {
            workload: self.workload,
            name,
            dst: self.dst.bytes,
            port: self.port,
            protocol: self.protocol,
            v6: self.dst.len == 16,
            link: Link::Name,
        }
    }

    /// Binds this row's parameters after the first `offset` of a multi-row upsert.
    fn bind(&self, stmt: &mut rusqlite::Statement<'_>, offset: usize) -> rusqlite::Result<()> {
        let f = self.flow;
        stmt.raw_bind_parameter(offset + 1, self.workload)?;
        stmt.raw_bind_parameter(offset + 2, self.dst.as_slice())?;
        stmt.raw_bind_parameter(offset + 3, self.port)?;
        stmt.raw_bind_parameter(offset + 4, self.protocol)?;
        stmt.raw_bind_parameter(offset + 5, clamp(f.count))?;
        stmt.raw_bind_parameter(offset + 6, self.first_seen)?;
        stmt.raw_bind_parameter(offset + 7, self.last_seen)?;
        stmt.raw_bind_parameter(offset + 8, clamp(f.established))?;
        stmt.raw_bind_parameter(offset + 9, clamp(f.failed))?;
        stmt.raw_bind_parameter(offset + 10, clamp(f.pods.total()))
    }
}

/// An address as stored: 4 bytes for IPv4, 16 for IPv6.
struct IpBytes {
    bytes: [u8; 16],
    len: usize,
}

impl IpBytes {
    fn new(ip: IpAddr) -> Self {
        let mut bytes = [0u8; 16];
        match ip {
            IpAddr::V4(a) => {
                bytes[..4].copy_from_slice(&a.octets());
                Self { bytes, len: 4 }
            }
            IpAddr::V6(a) => Self {
                bytes: a.octets(),
                len: 16,
            },
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The IANA protocol number.
fn protocol_number(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn protocol_from_number(n: i64) -> Option<Protocol> {
    match n {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

/// A `since` bound in stored units; bounds outside the storable range clamp to its ends.
fn since_nanos(since: Option<DateTime<Utc>>) -> i64 {
    match since {
        None => i64::MIN,
        Some(t) => t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
            i64::MIN
        } else {
            i64::MAX
        }),
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(MAX_COUNT)
}

/// Reads `(dst, port, protocol, name)` rows of one workload (`sql` takes the workload id as
/// `?1`) and adds each name to the set `field` picks of the flow `index` maps the key to.
/// Rows of flows outside the read window have no entry and are skipped.
fn attach_names(
    tx: &rusqlite::Transaction<'_>,
    sql: &str,
    id: i64,
    index: &HashMap<(Vec<u8>, i64, i64), usize>,
    out: &mut [FlowObservation],
    field: impl Fn(&mut FlowObservation) -> &mut BTreeSet<String>,
) -> ReadResult<()> {
    let mut stmt = tx.prepare_cached(sql).map_err(ReadError::Sql)?;
    let mut rows = stmt.query(params![id]).map_err(ReadError::Sql)?;
    while let Some(r) = rows.next().map_err(ReadError::Sql)? {
        let key = (
            r.get(0).map_err(ReadError::Sql)?,
            r.get(1).map_err(ReadError::Sql)?,
            r.get(2).map_err(ReadError::Sql)?,
        );
        if let Some(&i) = index.get(&key)
            && let Some(f) = out.get_mut(i)
        {
            field(f).insert(r.get(3).map_err(ReadError::Sql)?);
        }
    }
    Ok(())
}

fn unclamp(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store for SqliteStore {
    fn commit(
        &self,
        id: &BatchId,
        flows: &[FlowObservation],
        dns: &[DnsObservation],
    ) -> Result<Commit> {
        match self
            .commit_many(&[BatchCommit { id, flows, dns }])?
            .as_slice()
        {
            [one] => Ok(*one),
            other => Err(Error::Invalid {
                path: self.path.clone(),
                what: format!("a commit of one batch returned {} outcomes", other.len()),
            }),
        }
    }

    fn commit_many(&self, batches: &[BatchCommit<'_>]) -> Result<Vec<Commit>> {
        let mut inner = self.lock();
        if inner.reopen {
            self.reopen(&mut inner);
        }
        let result = self.commit_inner(&mut inner, batches);
        if let Err(e) = &result {
            // The transaction rolled back; ids cached during it may not exist.
            inner.clear_caches();
            inner.reopen = inner.reopen || read_only(e);
        }
        result
    }

    fn flows_in(&self, scope: &Scope, max: usize) -> Result<Vec<FlowObservation>> {
        let since = since_nanos(scope.since);
        let op = |e| self.op("read flows", e);
        let mut out = Vec::new();
        self.read(|tx| {
            self.each_workload(tx, &scope.subject, None, |id, workload| {
                self.workload_flows(tx, id, workload, since, &mut out)?;
                Ok(out.len() < max)
            })
        })
        .map_err(|e| e.or_op(op))?;
        out.truncate(max);
        out.sort_by(|a, b| flow_order(a).cmp(&flow_order(b)));
        Ok(out)
    }

    fn dns_in(&self, scope: &Scope, max: usize) -> Result<Vec<DnsObservation>> {
        let since = since_nanos(scope.since);
        let op = |e| self.op("read DNS observations", e);
        let mut out = Vec::new();
        self.read(|tx| {
            self.each_workload(tx, &scope.subject, None, |id, workload| {
                self.workload_dns(tx, id, workload, since, &mut out)?;
                Ok(out.len() < max)
            })
        })
        .map_err(|e| e.or_op(op))?;
        out.truncate(max);
        out.sort_by(|a, b| dns_order(a).cmp(&dns_order(b)));
        Ok(out)
    }

    fn workload_totals(
        &self,
        since: Option<DateTime<Utc>>,
        after: Option<&WorkloadRef>,
        max: usize,
    ) -> Result<Vec<WorkloadTotals>> {
        let since = since_nanos(since);
        let op = |e| self.op("read workload totals", e);
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT count, first_seen, last_seen FROM flows
                     WHERE workload = ?1 AND last_seen >= ?2",
                )
                .map_err(ReadError::Sql)?;
            self.each_workload(tx, &Subject::All, after, |id, workload| {
                let mut rows = stmt.query(params![id, since]).map_err(ReadError::Sql)?;
                let mut totals: Option<WorkloadTotals> = None;
                while let Some(r) = rows.next().map_err(ReadError::Sql)? {
                    let count = unclamp(r.get(0).map_err(ReadError::Sql)?);
                    let first = DateTime::from_timestamp_nanos(r.get(1).map_err(ReadError::Sql)?);
                    let last = DateTime::from_timestamp_nanos(r.get(2).map_err(ReadError::Sql)?);
                    match &mut totals {
                        None => {
                            totals = Some(WorkloadTotals {
                                workload: workload.clone(),
                                destinations: 1,
                                count,
                                first_seen: first,
                                last_seen: last,
                            });
                        }
                        Some(t) => t.add_counts(count, first, last),
                    }
                }
                out.extend(totals);
                Ok(out.len() < max)
            })
        })
        .map_err(|e| e.or_op(op))?;
        Ok(out)
    }

    fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        let before = self.time(before)?;
        let mut inner = self.lock();
        // Pruning deletes links, names and workloads the caches would otherwise claim are
        // stored.
        inner.clear_caches();
        let op = |e| self.op("prune", e);
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(op)?;
        tx.execute(
            "DELETE FROM flow_names WHERE (workload, dst, port, protocol) IN
                 (SELECT workload, dst, port, protocol FROM flows WHERE last_seen < ?1)",
            params![before],
        )
        .map_err(op)?;
        tx.execute(
            "DELETE FROM flow_pods WHERE (workload, dst, port, protocol) IN
                 (SELECT workload, dst, port, protocol FROM flows WHERE last_seen < ?1)",
            params![before],
        )
        .map_err(op)?;
        let flows = tx
            .execute("DELETE FROM flows WHERE last_seen < ?1", params![before])
            .map_err(op)?;
        tx.execute(
            "DELETE FROM dns_resolved WHERE (workload, server, query) IN
                 (SELECT workload, server, query FROM dns WHERE last_seen < ?1)",
            params![before],
        )
        .map_err(op)?;
        // Addresses last seen before the cut go, whether or not their observation stays;
        // an observation that goes takes all of its addresses.
        tx.execute(
            "DELETE FROM dns_addresses WHERE last_seen < ?1 OR (workload, server, query) IN
                 (SELECT workload, server, query FROM dns WHERE last_seen < ?1)",
            params![before],
        )
        .map_err(op)?;
        let dns = tx
            .execute("DELETE FROM dns WHERE last_seen < ?1", params![before])
            .map_err(op)?;
        tx.execute(
            "DELETE FROM batches WHERE committed_at < ?1",
            params![before],
        )
        .map_err(op)?;
        tx.execute("DELETE FROM alerts WHERE last_seen < ?1", params![before])
            .map_err(op)?;
        // Interned names and workloads nothing refers to any more: without this, names seen
        // once (say, generated host names) would stay forever.
        tx.execute_batch(
            "DELETE FROM names WHERE id NOT IN (SELECT name FROM flow_names)
                 AND id NOT IN (SELECT pod FROM flow_pods)
                 AND id NOT IN (SELECT query FROM dns)
                 AND id NOT IN (SELECT name FROM dns_resolved);
             DELETE FROM workloads WHERE id NOT IN (SELECT workload FROM flows)
                 AND id NOT IN (SELECT workload FROM dns);",
        )
        .map_err(op)?;
        tx.commit().map_err(op)?;
        Ok(u64::try_from(flows + dns).unwrap_or(u64::MAX))
    }

    fn alerts(&self, namespace: Option<&str>) -> Result<Vec<AlertRecord>> {
        let op = |e| self.op("read remembered alerts", e);
        let mut out = self
            .read(|tx| {
                let mut stmt = tx
                    .prepare_cached(
                        "SELECT namespace, kind, name, dst, port, protocol, first_sent, last_sent,
                                last_seen, occurrences, detail
                         FROM alerts WHERE ?1 IS NULL OR namespace = ?1",
                    )
                    .map_err(ReadError::Sql)?;
                let mut rows = stmt.query(params![namespace]).map_err(ReadError::Sql)?;
                let mut out = Vec::new();
                while let Some(r) = rows.next().map_err(ReadError::Sql)? {
                    let dst: Vec<u8> = r.get(3).map_err(ReadError::Sql)?;
                    let port: i64 = r.get(4).map_err(ReadError::Sql)?;
                    let protocol: i64 = r.get(5).map_err(ReadError::Sql)?;
                    let corrupt = |what: String| Error::Corrupt {
                        path: self.path.clone(),
                        what: format!("alerts: {what}"),
                    };
                    let port = u16::try_from(port)
                        .map_err(|_| corrupt(format!("port {port} is out of range")))?;
                    let protocol = protocol_from_number(protocol)
                        .ok_or_else(|| corrupt(format!("unknown protocol number {protocol}")))?;
                    let time = |i: usize| -> ReadResult<DateTime<Utc>> {
                        Ok(DateTime::from_timestamp_nanos(
                            r.get(i).map_err(ReadError::Sql)?,
                        ))
                    };
                    out.push(AlertRecord {
                        workload: WorkloadRef {
                            namespace: r.get(0).map_err(ReadError::Sql)?,
                            kind: r.get(1).map_err(ReadError::Sql)?,
                            name: r.get(2).map_err(ReadError::Sql)?,
                        },
                        dst: self.decode_ip("alerts", &dst)?,
                        port,
                        protocol,
                        first_sent: time(6)?,
                        last_sent: time(7)?,
                        last_seen: time(8)?,
                        occurrences: unclamp(r.get(9).map_err(ReadError::Sql)?),
                        detail: r.get(10).map_err(ReadError::Sql)?,
                    });
                }
                Ok(out)
            })
            .map_err(|e| e.or_op(op))?;
        // Addresses are stored as blobs, whose order is not the addresses' order.
        out.sort_by(|a, b| a.key().cmp(&b.key()));
        Ok(out)
    }

    fn batch_ids(&self) -> Result<Vec<(BatchId, DateTime<Utc>)>> {
        self.read_batch_ids()
    }

    fn import(&self, data: &super::Export) -> Result<()> {
        {
            let mut inner = self.lock();
            let result = self.import_inner(&mut inner, data);
            if result.is_err() {
                inner.clear_caches();
            }
            result?;
        }
        self.remember_alerts(&data.alerts)
    }

    fn remember_alerts(&self, records: &[AlertRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let op = |e| self.op("remember alerts", e);
        let mut times = Vec::with_capacity(records.len());
        for a in records {
            times.push([
                self.time(a.first_sent)?,
                self.time(a.last_sent)?,
                self.time(a.last_seen)?,
            ]);
        }
        let mut inner = self.lock();
        let tx = inner
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(op)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO alerts (namespace, kind, name, dst, port, protocol,
                         first_sent, last_sent, last_seen, occurrences, detail)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )
                .map_err(op)?;
            for (a, [first, last, seen]) in records.iter().zip(times) {
                stmt.execute(params![
                    a.workload.namespace,
                    a.workload.kind,
                    a.workload.name,
                    IpBytes::new(a.dst.to_canonical()).as_slice(),
                    a.port,
                    protocol_number(a.protocol),
                    first,
                    last,
                    seen,
                    clamp(a.occurrences),
                    a.detail,
                ])
                .map_err(op)?;
            }
        }
        tx.commit().map_err(op)
    }
}

impl SqliteStore {
    /// Every stored batch id with when it was committed, sorted.
    fn read_batch_ids(&self) -> Result<Vec<(BatchId, DateTime<Utc>)>> {
        let op = |e| self.op("read batch ids", e);
        self.read(|tx| {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT node, boot_id, seq, committed_at FROM batches
                     ORDER BY node, boot_id, seq",
                )
                .map_err(ReadError::Sql)?;
            let mut rows = stmt.query([]).map_err(ReadError::Sql)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next().map_err(ReadError::Sql)? {
                let seq: i64 = r.get(2).map_err(ReadError::Sql)?;
                out.push((
                    BatchId {
                        node: r.get(0).map_err(ReadError::Sql)?,
                        boot_id: r.get(1).map_err(ReadError::Sql)?,
                        seq: u64::try_from(seq).map_err(|_| Error::Corrupt {
                            path: self.path.clone(),
                            what: format!("batches: sequence number {seq}"),
                        })?,
                    },
                    DateTime::from_timestamp_nanos(r.get(3).map_err(ReadError::Sql)?),
                ));
            }
            Ok(out)
        })
        .map_err(|e| e.or_op(op))
    }

    /// Writes `data` in one transaction (see [`Store::import`]).
    fn import_inner(&self, inner: &mut Inner, data: &super::Export) -> Result<()> {
        let op = |e| self.op("import", e);
        inner.clear_caches();
        let Inner {
            conn,
            workloads,
            names,
            links,
            ..
        } = inner;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(op)?;
        for (id, at) in &data.batches {
            let seq = i64::try_from(id.seq).map_err(|_| Error::Invalid {
                path: self.path.clone(),
                what: format!("batch sequence number {} exceeds 2^63-1", id.seq),
            })?;
            let at = self.time(*at)?;
            tx.prepare_cached(
                "INSERT INTO batches (node, boot_id, seq, committed_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![id.node, id.boot_id, seq, at]))
            .map_err(op)?;
        }
        let mut ids = Ids {
            tx: &tx,
            workloads,
            names,
        };
        self.apply_rows(&tx, &mut ids, links, &data.flows, &data.dns)?;
        tx.commit().map_err(op)
    }
}

impl SqliteStore {
    /// Whether the batch id is stored.
    pub fn has_batch(&self, id: &BatchId) -> Result<bool> {
        let seq = i64::try_from(id.seq).unwrap_or(i64::MAX);
        let inner = self.lock();
        inner
            .conn
            .prepare_cached("SELECT 1 FROM batches WHERE node = ?1 AND boot_id = ?2 AND seq = ?3")
            .and_then(|mut s| {
                s.query_row(params![id.node, id.boot_id, seq], |_| Ok(()))
                    .optional()
            })
            .map(|r| r.is_some())
            .map_err(|e| self.op("look up a batch id", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(name: &str, t: i64) -> FlowObservation {
        FlowObservation {
            workload: WorkloadRef {
                namespace: "shop".into(),
                kind: "Deployment".into(),
                name: "cart".into(),
            },
            protocol: Protocol::Tcp,
            dst: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
            port: 443,
            count: 1,
            first_seen: DateTime::from_timestamp(t, 0).unwrap_or_default(),
            last_seen: DateTime::from_timestamp(t, 0).unwrap_or_default(),
            names: [name.to_owned()].into(),
            pods: Default::default(),
            established: 1,
            failed: 0,
        }
    }

    fn id(seq: u64) -> BatchId {
        BatchId {
            node: "n".into(),
            boot_id: "b".into(),
            seq,
        }
    }

    /// The cache of stored flow–name links must not outlive the rows: after a prune, by this
    /// connection or by another one on the same file, a re-observed link is stored again.
    #[test]
    fn pruned_links_are_stored_again() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Invalid {
            path: PathBuf::new(),
            what: e.to_string(),
        })?;
        let path = dir.path().join("leash.db");
        let store = SqliteStore::open(&path)?;
        let other = SqliteStore::open(&path)?;
        let late = DateTime::from_timestamp(2_000_000_000, 0).unwrap_or_default();
        for (seq, pruner) in [(1, &store), (3, &other)] {
            store.commit(&id(seq), &[flow("a.example.test", 1_000)], &[])?;
            assert_eq!(pruner.prune(late)?, 1);
            assert!(store.flows(None)?.is_empty());
            store.commit(&id(seq + 1), &[flow("a.example.test", 1_000)], &[])?;
            let flows = store.flows(None)?;
            assert_eq!(flows.len(), 1);
            assert_eq!(
                flows[0].names,
                BTreeSet::from(["a.example.test".to_owned()]),
                "after a prune by {}",
                if std::ptr::eq(pruner, &store) {
                    "this connection"
                } else {
                    "another connection"
                }
            );
            assert_eq!(pruner.prune(late)?, 1);
        }
        Ok(())
    }

    /// A commit does not wait for a read in progress: while a read transaction is open on a
    /// read connection, the writer commits, and the reader keeps its snapshot. (Were reads
    /// on the writer's connection, behind its mutex, this commit could not start.)
    #[test]
    fn a_commit_completes_while_a_read_is_in_progress() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Invalid {
            path: PathBuf::new(),
            what: e.to_string(),
        })?;
        let store = std::sync::Arc::new(SqliteStore::open(dir.path().join("leash.db"))?);
        store.commit(&id(1), &[flow("a.example.test", 1_000)], &[])?;
        let (done_tx, done) = std::sync::mpsc::channel();
        let s = std::sync::Arc::clone(&store);
        // On its own thread, so that a regression fails the test instead of hanging it.
        std::thread::spawn(move || {
            let result = s
                .read(|tx| {
                    let count = |tx: &rusqlite::Transaction<'_>| -> ReadResult<i64> {
                        tx.query_row("SELECT count(*) FROM flows", [], |r| r.get(0))
                            .map_err(ReadError::Sql)
                    };
                    let before = count(tx)?;
                    let mut other = flow("b.example.test", 2_000);
                    other.port = 8443;
                    let committed = s.commit(&id(2), &[other], &[])?;
                    Ok((before, committed, count(tx)?))
                })
                .map_err(|e| e.or_op(|e| s.op("read", e)));
            let _ = done_tx.send(result);
        });
        let (before, committed, during) =
            done.recv_timeout(Duration::from_secs(60))
                .map_err(|_| Error::Invalid {
                    path: PathBuf::new(),
                    what: "the commit waited for the read".into(),
                })??;
        assert_eq!((before, committed, during), (1, Commit::Stored, 1));
        assert_eq!(store.flows(None)?.len(), 2, "a new read sees the commit");
        Ok(())
    }

    /// Scoped reads return exactly what filtering a full read would, names and DNS answers
    /// included, and stop at `max` whole workloads' worth.
    #[test]
    fn scoped_reads_equal_filtered_full_reads() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Invalid {
            path: PathBuf::new(),
            what: e.to_string(),
        })?;
        let store = SqliteStore::open(dir.path().join("leash.db"))?;
        let mut flows = Vec::new();
        let mut dns = Vec::new();
        for (ns, name, t) in [
            ("shop", "cart", 1_000),
            ("shop", "web", 3_000),
            ("bank", "ledger", 3_000),
        ] {
            for port in [443, 8443] {
                let mut f = flow(&format!("{name}.example.test"), t);
                f.workload.namespace = ns.into();
                f.workload.name = name.into();
                f.port = port;
                f.names.insert("also.example.test".into());
                flows.push(f);
            }
            let at = DateTime::from_timestamp(t, 0).unwrap_or_default();
            dns.push(DnsObservation {
                workload: WorkloadRef {
                    namespace: ns.into(),
                    kind: "Deployment".into(),
                    name: name.into(),
                },
                server: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 53)),
                query: format!("{name}.example.test"),
                count: 1,
                first_seen: at,
                last_seen: at,
                resolved: [(
                    format!("{name}.example.test"),
                    IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)),
                )]
                .into(),
                addresses: std::collections::BTreeMap::new(),
            });
        }
        store.commit(&id(1), &flows, &dns)?;
        let web = WorkloadRef {
            namespace: "shop".into(),
            kind: "Deployment".into(),
            name: "web".into(),
        };
        for since in [None, DateTime::from_timestamp(2_000, 0)] {
            let all_flows = store.flows(since)?;
            let all_dns = store.dns(since)?;
            for subject in [
                Subject::All,
                Subject::Namespace("shop".into()),
                Subject::Namespace("none".into()),
                Subject::Workload(web.clone()),
            ] {
                let scope = Scope {
                    since,
                    subject: subject.clone(),
                };
                let want: Vec<_> = all_flows
                    .iter()
                    .filter(|f| subject.contains(&f.workload))
                    .cloned()
                    .collect();
                assert_eq!(store.flows_in(&scope, usize::MAX)?, want, "{scope:?}");
                let want: Vec<_> = all_dns
                    .iter()
                    .filter(|d| subject.contains(&d.workload))
                    .cloned()
                    .collect();
                assert_eq!(store.dns_in(&scope, usize::MAX)?, want, "{scope:?}");
            }
        }
        assert_eq!(store.flows(None)?.len(), 6);
        assert_eq!(
            store.flows_in(&Scope::default(), 3)?.len(),
            3,
            "at most max observations"
        );
        let totals = store.workload_totals(None, None, 2)?;
        let names: Vec<&str> = totals.iter().map(|t| t.workload.name.as_str()).collect();
        assert_eq!(names, ["ledger", "cart"]);
        assert_eq!((totals[0].destinations, totals[0].count), (2, 2));
        let rest = store.workload_totals(
            DateTime::from_timestamp(2_000, 0),
            Some(&totals[0].workload),
            10,
        )?;
        let names: Vec<&str> = rest.iter().map(|t| t.workload.name.as_str()).collect();
        assert_eq!(names, ["web"], "after ledger, in the window");
        Ok(())
    }

    /// Counts the rows of `table` through the store's own connection.
    fn rows(store: &SqliteStore, table: &str) -> Result<i64> {
        let inner = store.lock();
        inner
            .conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .map_err(|e| store.op("count rows", e))
    }

    #[test]
    fn prune_removes_names_and_workloads_nothing_refers_to() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Invalid {
            path: PathBuf::new(),
            what: e.to_string(),
        })?;
        let store = SqliteStore::open(dir.path().join("leash.db"))?;
        let late = DateTime::from_timestamp(2_000_000_000, 0).unwrap_or_default();
        let mut kept = flow("kept.example.test", 1_000);
        kept.last_seen = DateTime::from_timestamp(2_100_000_000, 0).unwrap_or_default();
        kept.workload.name = "kept".into();
        store.commit(
            &id(1),
            &[flow("gone.example.test", 1_000), kept.clone()],
            &[],
        )?;
        assert_eq!((rows(&store, "names")?, rows(&store, "workloads")?), (2, 2));
        assert_eq!(store.prune(late)?, 1);
        // Only what the kept flow refers to is left.
        assert_eq!((rows(&store, "names")?, rows(&store, "workloads")?), (1, 1));
        assert_eq!(store.flows(None)?, [kept.clone()]);
        // The caches forgot the deleted ids: the pruned workload and name come back intact.
        store.commit(&id(2), &[flow("gone.example.test", 1_000)], &[])?;
        let flows = store.flows(None)?;
        assert_eq!(flows.len(), 2);
        assert!(
            flows
                .iter()
                .any(|f| f.names.contains("gone.example.test") && f.workload.name != "kept"),
            "{flows:?}"
        );
        Ok(())
    }

    fn alert(ns: &str, dst: IpAddr, last_seen: i64, occurrences: u64) -> AlertRecord {
        let t = |s| DateTime::from_timestamp(s, 123).unwrap_or_default();
        AlertRecord {
            workload: WorkloadRef {
                namespace: ns.into(),
                kind: "Deployment".into(),
                name: "web".into(),
            },
            dst,
            port: 443,
            protocol: Protocol::Tcp,
            first_sent: t(1_000),
            last_sent: t(1_500),
            last_seen: t(last_seen),
            occurrences,
            detail: format!("{{\"occurrences\":{occurrences}}}"),
        }
    }

    /// Alerts come back as stored, sorted by address (not by their blobs), replaced by key,
    /// filtered by namespace, across a reopen, and pruned with the observations.
    #[test]
    fn alerts_are_remembered_replaced_and_pruned() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::Invalid {
            path: PathBuf::new(),
            what: e.to_string(),
        })?;
        let path = dir.path().join("leash.db");
        let v6 = alert(
            "shop",
            "::1".parse().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            3_000,
            1,
        );
        let v4 = alert("shop", IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 2_000, 1);
        let other = alert("bank", IpAddr::V4(Ipv4Addr::new(203, 0, 113, 8)), 2_000, 4);
        {
            let store = SqliteStore::open(&path)?;
            assert!(store.alerts(None)?.is_empty());
            store.remember_alerts(&[v6.clone(), v4.clone(), other.clone()])?;
            let again = AlertRecord {
                occurrences: 2,
                detail: "{\"occurrences\":2}".into(),
                ..v4.clone()
            };
            store.remember_alerts(std::slice::from_ref(&again))?;
        }
        let store = SqliteStore::open(&path)?;
        let mut v4_now = v4.clone();
        v4_now.occurrences = 2;
        v4_now.detail = "{\"occurrences\":2}".into();
        assert_eq!(
            store.alerts(None)?,
            [other.clone(), v4_now.clone(), v6.clone()]
        );
        assert_eq!(store.alerts(Some("shop"))?, [v4_now, v6.clone()]);
        store.prune(DateTime::from_timestamp(2_500, 0).unwrap_or_default())?;
        assert_eq!(store.alerts(None)?, [v6]);
        Ok(())
    }
}
