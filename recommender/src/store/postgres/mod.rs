//! The PostgreSQL store: one database shared by any number of `leash serve` replicas and
//! readers, with the semantics of the SQLite store ([`super::SqliteStore`]).
//!
//! - **Exactly once.** A batch id is inserted into `batches` (primary key (node, boot id,
//!   seq)) in the transaction of its observations, `ON CONFLICT DO NOTHING`: a second
//!   commit of the id, by this process or another replica, waits for the first transaction
//!   and then finds the id stored, and changes nothing.
//! - **Aggregation and group commit.** [`Store::commit_many`] is one transaction, and its
//!   new batches' rows go out merged, as one multi-row upsert per table (`INSERT … SELECT
//!   FROM unnest($1, …) ON CONFLICT DO UPDATE`), in key order so that concurrent replicas
//!   lock rows in the same order; the links of flows to names and pods are read once per
//!   flow and only the new ones inserted (`write.rs`). A deadlock or serialization failure
//!   between replicas retries the whole group. `COPY` into a staging table was measured
//!   against `unnest` in the ingest benchmark (README, Benchmarks); `unnest` is kept.
//! - **Address history.** Merged in SQL as `AddressSeen::merge` does ([`UPSERT_ADDRESSES`]);
//!   duplicates within one group are first merged with `AddressSeen::merge` itself, since
//!   one upsert statement cannot update a row twice.
//! - **Migrations**: `schema.rs`, under an advisory lock.
//!
//! The driver is `tokio-postgres`. [`Store`] is synchronous and is called from blocking
//! threads (`spawn_blocking`, the ingest writer's thread, the read API's threads), some of
//! which are inside a tokio `block_on` already (the ingest writer): a nested runtime would
//! panic. So the store owns a runtime of one worker thread on which every connection's I/O
//! task runs, and callers wait for a query's answer with `futures::executor::block_on`
//! (the client's futures only exchange messages with the connection task): no caller
//! enters a tokio runtime, and no async worker of the caller's runtime is used. Connections:
//! one writer behind a mutex (one process commits one group at a time anyway: the ingest
//! writer is one thread), and a small pool of readers, as the SQLite store has; a pool crate
//! would add nothing to that shape.

mod read;
pub mod schema;
pub mod tls;
mod write;

pub use write::UPSERT_ADDRESSES;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use leash_records::Protocol;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, IsolationLevel, Row, Transaction};

use super::location::PostgresUrl;
use super::{
    AddressSeen, AlertRecord, BatchCommit, BatchId, Commit, DnsObservation, Error, FlowObservation,
    Result, Scope, Store, WorkloadRef, WorkloadTotals,
};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle read connections kept for reuse.
const MAX_IDLE_READERS: usize = 8;

/// How often a group commit is tried when replicas deadlock or conflict.
const COMMIT_TRIES: usize = 5;

/// The largest count stored; sums saturate here.
const MAX_COUNT: i64 = i64::MAX;

/// The PostgreSQL store. See the module's documentation.
pub struct PostgresStore {
    /// The URL without its password, for messages.
    shown: PathBuf,
    config: tokio_postgres::Config,
    tls: tls::MakeRustls,
    /// Runs every connection's I/O; shut down in the background on drop (a runtime may not
    /// be dropped where blocking is not allowed).
    runtime: Option<tokio::runtime::Runtime>,
    writer: Mutex<Option<Client>>,
    idle: Mutex<Vec<Client>>,
    /// Flows go out by `COPY` rather than `unnest` (`write.rs`; the benchmark compares).
    copy_upserts: AtomicBool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn boxed(e: impl std::error::Error + Send + Sync + 'static) -> super::BoxError {
    Box::new(e)
}

/// Waits for a client future on the calling thread (see the module's documentation).
fn wait<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

impl PostgresStore {
    /// Connects to the database at `url` and migrates it to this build's schema.
    pub fn connect(url: &PostgresUrl) -> Result<Self> {
        let shown = PathBuf::from(url.redacted());
        let invalid = |what: String| Error::Invalid {
            path: shown.clone(),
            what,
        };
        let (driver_url, settings) = tls::split_url(url.expose()).map_err(&invalid)?;
        let mut config: tokio_postgres::Config = driver_url.parse().map_err(|e| Error::Open {
            path: shown.clone(),
            source: boxed(e),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("leash");
        }
        config.ssl_mode(match settings.mode {
            tls::SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            tls::SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = tls::MakeRustls(Arc::new(tls::client_config(&settings).map_err(&invalid)?));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("leash-postgres")
            .enable_all()
            .build()
            .map_err(|e| Error::Open {
                path: shown.clone(),
                source: boxed(e),
            })?;
        let store = Self {
            shown,
            config,
            tls,
            runtime: Some(runtime),
            writer: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            copy_upserts: AtomicBool::new(false),
        };
        let mut client = store.new_client().map_err(|e| Error::Open {
            path: store.shown.clone(),
            source: e,
        })?;
        store.migrate(&mut client)?;
        *store.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(client);
        Ok(store)
    }

    /// The URL, without its password.
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// A new connection, its I/O task on the store's runtime.
    fn new_client(&self) -> std::result::Result<Client, super::BoxError> {
        let Some(rt) = &self.runtime else {
            return Err("the store's runtime is gone".into());
        };
        let config = self.config.clone();
        let tls = self.tls.clone();
        let join = rt.spawn(async move {
            let (client, connection) = config.connect(tls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %leash_records::error::Chain(&e), "PostgreSQL connection closed");
                }
            });
            Ok::<_, tokio_postgres::Error>(client)
        });
        match wait(join) {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(boxed(e)),
            Err(e) => Err(boxed(e)),
        }
    }

    fn op(&self, operation: &'static str, e: tokio_postgres::Error) -> Error {
        Error::Operation {
            path: self.shown.clone(),
            operation,
            source: boxed(e),
        }
    }

    fn op_boxed(&self, operation: &'static str, source: super::BoxError) -> Error {
        Error::Operation {
            path: self.shown.clone(),
            operation,
            source,
        }
    }

    fn time(&self, t: DateTime<Utc>) -> Result<i64> {
        t.timestamp_nanos_opt()
            .ok_or_else(|| Error::TimeOutOfRange {
                path: self.shown.clone(),
                time: t,
            })
    }

    fn corrupt(&self, what: String) -> Error {
        Error::Corrupt {
            path: self.shown.clone(),
            what,
        }
    }

    /// The schema version of the database.
    pub fn version(&self) -> Result<i64> {
        self.read("read the schema version", async |tx| {
            let row = tx
                .query_one(
                    "SELECT coalesce(max(version), 0)::int8 FROM leash_schema",
                    &[],
                )
                .await?;
            Ok(row.try_get::<_, i64>(0)?)
        })
    }

    fn migrate(&self, client: &mut Client) -> Result<()> {
        let supported = schema::schema_version();
        let found = wait(async {
            let tx = client.transaction().await?;
            // Replicas starting at once: the first migrates, the others wait here and then
            // find every migration applied. The lock ends with the transaction.
            tx.execute(
                "SELECT pg_advisory_xact_lock($1)",
                &[&schema::MIGRATION_LOCK],
            )
            .await?;
            tx.batch_execute(schema::CREATE_VERSIONS).await?;
            let found: i64 = tx
                .query_one(
                    "SELECT coalesce(max(version), 0)::int8 FROM leash_schema",
                    &[],
                )
                .await?
                .try_get(0)?;
            if found > supported {
                return Ok::<_, MigrateError>(found);
            }
            for (i, m) in schema::MIGRATIONS
                .iter()
                .enumerate()
                .skip(usize::try_from(found).unwrap_or(0))
            {
                let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
                tx.batch_execute(m.sql)
                    .await
                    .map_err(|e| MigrateError::Step(i64::from(version), m.description, e))?;
                tx.execute(
                    "INSERT INTO leash_schema (version, description) VALUES ($1, $2)",
                    &[&version, &m.description],
                )
                .await
                .map_err(|e| MigrateError::Step(i64::from(version), m.description, e))?;
            }
            tx.commit().await?;
            Ok(found)
        })
        .map_err(|e| match e {
            MigrateError::Sql(e) => Error::Open {
                path: self.shown.clone(),
                source: boxed(e),
            },
            MigrateError::Step(version, description, e) => Error::Migrate {
                path: self.shown.clone(),
                version,
                description,
                source: boxed(e),
            },
        })?;
        if found > supported {
            return Err(Error::NewerSchema {
                path: self.shown.clone(),
                found,
                supported,
            });
        }
        Ok(())
    }

    /// Runs `f` in one read-only, repeatable-read transaction (one snapshot) on a pooled
    /// read connection; once more on a new connection when a pooled one was lost (the
    /// server restarted).
    fn read<T>(
        &self,
        operation: &'static str,
        f: impl AsyncFn(&Transaction<'_>) -> std::result::Result<T, ReadError>,
    ) -> Result<T> {
        let mut fresh = false;
        loop {
            let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut client = match pooled {
                Some(c) if !c.is_closed() && !fresh => c,
                _ => {
                    fresh = true;
                    self.new_client().map_err(|e| self.op_boxed(operation, e))?
                }
            };
            let out = wait(async {
                let tx = client
                    .build_transaction()
                    .isolation_level(IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                let out = f(&tx).await?;
                tx.rollback().await?;
                Ok::<_, ReadError>(out)
            });
            if !client.is_closed() {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < MAX_IDLE_READERS {
                    idle.push(client);
                }
            }
            return match out {
                Ok(v) => Ok(v),
                Err(ReadError::Sql(e)) if e.is_closed() && !fresh => {
                    fresh = true;
                    continue;
                }
                Err(ReadError::Sql(e)) => Err(self.op(operation, e)),
                Err(ReadError::Store(e)) => Err(e),
            };
        }
    }

    /// Runs `f` in a read-write transaction on the writer connection (reconnecting when it
    /// was lost), retrying deadlocks and serialization failures between replicas. With
    /// `again_if_lost` (`f` may run twice: a batch id makes a commit's second run a
    /// duplicate), a connection lost mid-transaction is replaced and `f` runs again once.
    fn write<T>(
        &self,
        operation: &'static str,
        again_if_lost: bool,
        mut f: impl AsyncFnMut(&Transaction<'_>) -> std::result::Result<T, ReadError>,
    ) -> Result<T> {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut tries = 0;
        let mut lost = false;
        loop {
            tries += 1;
            let client = match writer.take() {
                Some(c) if !c.is_closed() => c,
                _ => self.new_client().map_err(|e| self.op_boxed(operation, e))?,
            };
            let client = writer.insert(client);
            let out = wait(async {
                let tx = client.transaction().await?;
                let out = f(&tx).await?;
                tx.commit().await?;
                Ok::<_, ReadError>(out)
            });
            match out {
                Ok(v) => return Ok(v),
                Err(ReadError::Sql(e)) if tries < COMMIT_TRIES && retryable(&e) => continue,
                Err(ReadError::Sql(e)) if again_if_lost && e.is_closed() && !lost => {
                    lost = true;
                    continue;
                }
                Err(ReadError::Sql(e)) => return Err(self.op(operation, e)),
                Err(ReadError::Store(e)) => return Err(e),
            }
        }
    }

    /// Every stored batch id with when it was committed (for `leash store migrate`).
    fn read_batch_ids(&self) -> Result<Vec<(BatchId, DateTime<Utc>)>> {
        let rows = self.read("read batch ids", async |tx| {
            Ok(tx
                .query(
                    "SELECT node, boot_id, seq, committed_at FROM batches
                         ORDER BY node, boot_id, seq",
                    &[],
                )
                .await?)
        })?;
        rows.iter()
            .map(|r| {
                let seq: i64 = r.try_get(2).map_err(|e| self.op("read batch ids", e))?;
                Ok((
                    BatchId {
                        node: r.try_get(0).map_err(|e| self.op("read batch ids", e))?,
                        boot_id: r.try_get(1).map_err(|e| self.op("read batch ids", e))?,
                        seq: u64::try_from(seq)
                            .map_err(|_| self.corrupt(format!("batches: seq {seq}")))?,
                    },
                    DateTime::from_timestamp_nanos(
                        r.try_get(3).map_err(|e| self.op("read batch ids", e))?,
                    ),
                ))
            })
            .collect()
    }
}

/// Whether a failed transaction may succeed when tried again: replicas that deadlocked or
/// conflicted.
fn retryable(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

enum MigrateError {
    Sql(tokio_postgres::Error),
    Step(i64, &'static str, tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for MigrateError {
    fn from(e: tokio_postgres::Error) -> Self {
        MigrateError::Sql(e)
    }
}

/// A failure inside a transaction: SQL, or a value this build cannot store or did not write.
enum ReadError {
    Sql(tokio_postgres::Error),
    Store(Error),
}

impl From<tokio_postgres::Error> for ReadError {
    fn from(e: tokio_postgres::Error) -> Self {
        ReadError::Sql(e)
    }
}

impl From<Error> for ReadError {
    fn from(e: Error) -> Self {
        ReadError::Store(e)
    }
}

/// The IANA protocol number.
fn protocol_number(p: Protocol) -> i16 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

fn protocol_from_number(n: i16) -> Option<Protocol> {
    match n {
        6 => Some(Protocol::Tcp),
        17 => Some(Protocol::Udp),
        132 => Some(Protocol::Sctp),
        _ => None,
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(MAX_COUNT)
}

fn unclamp(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
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

/// A CNAME chain as stored: each name followed by a zero byte (`schema.rs`).
fn encode_chain(chain: &[String]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(chain.iter().map(|n| n.len() + 1).sum());
    for name in chain {
        if name.as_bytes().contains(&0) {
            return Err(format!("a CNAME chain name contains a zero byte: {name:?}"));
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
    }
    Ok(out)
}

fn decode_chain(bytes: &[u8]) -> std::result::Result<Vec<String>, &'static str> {
    let Some(body) = bytes.strip_suffix(&[0]) else {
        if bytes.is_empty() {
            return Ok(Vec::new());
        }
        return Err("without its final zero byte");
    };
    body.split(|b| *b == 0)
        .map(|name| {
            std::str::from_utf8(name)
                .map(str::to_owned)
                .map_err(|_| "with a name that is not UTF-8")
        })
        .collect()
}

impl PostgresStore {
    fn alert_from_row(&self, r: &Row) -> std::result::Result<AlertRecord, ReadError> {
        let port: i32 = r.try_get("port")?;
        let proto: i16 = r.try_get("protocol")?;
        Ok(AlertRecord {
            workload: WorkloadRef {
                namespace: r.try_get("namespace")?,
                kind: r.try_get("kind")?,
                name: r.try_get("name")?,
            },
            dst: r.try_get("dst")?,
            port: u16::try_from(port)
                .map_err(|_| self.corrupt(format!("alerts: port {port} is out of range")))?,
            protocol: protocol_from_number(proto)
                .ok_or_else(|| self.corrupt(format!("alerts: unknown protocol number {proto}")))?,
            first_sent: DateTime::from_timestamp_nanos(r.try_get("first_sent")?),
            last_sent: DateTime::from_timestamp_nanos(r.try_get("last_sent")?),
            last_seen: DateTime::from_timestamp_nanos(r.try_get("last_seen")?),
            occurrences: unclamp(r.try_get("occurrences")?),
            detail: r.try_get("detail")?,
        })
    }
}

impl Store for PostgresStore {
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
                path: self.shown.clone(),
                what: format!("a commit of one batch returned {} outcomes", other.len()),
            }),
        }
    }

    fn commit_many(&self, batches: &[BatchCommit<'_>]) -> Result<Vec<Commit>> {
        let now = self.time(Utc::now())?;
        let ids: Vec<&BatchId> = batches.iter().map(|b| b.id).collect();
        self.write("commit a batch", true, async |tx| {
            let new = self.insert_batches(tx, &ids, now).await?;
            // The new batches' observations, in order, as one set of statements.
            let stored: Vec<(&[FlowObservation], &[DnsObservation])> = batches
                .iter()
                .zip(&new)
                .filter(|(_, new)| **new)
                .map(|(b, _)| (b.flows, b.dns))
                .collect();
            self.apply(tx, &stored).await?;
            Ok(new
                .iter()
                .map(|new| {
                    if *new {
                        Commit::Stored
                    } else {
                        Commit::Duplicate
                    }
                })
                .collect())
        })
    }

    fn flows_in(&self, scope: &Scope, max: usize) -> Result<Vec<FlowObservation>> {
        self.read_flows(scope, max)
    }

    fn dns_in(&self, scope: &Scope, max: usize) -> Result<Vec<DnsObservation>> {
        self.read_dns(scope, max)
    }

    fn workload_totals(
        &self,
        since: Option<DateTime<Utc>>,
        after: Option<&WorkloadRef>,
        max: usize,
    ) -> Result<Vec<WorkloadTotals>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let since = since_nanos(since);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let after = after.cloned();
        let rows = self.read("read workload totals", async |tx| {
            let (ns, kind, name) = match &after {
                Some(a) => (Some(&a.namespace), Some(&a.kind), Some(&a.name)),
                None => (None, None, None),
            };
            // Sums in `numeric` (no overflow), saturating as `WorkloadTotals::add_counts`
            // does at 2^64-1, read back as text.
            Ok(tx
                .query(
                    "SELECT namespace, kind, name, count(*)::int8,
                             least(sum(count::numeric), 18446744073709551615)::text,
                             min(first_seen), max(last_seen)
                         FROM flows WHERE last_seen >= $1
                           AND ($2::text IS NULL
                                OR (namespace, kind, name) > ($2::text, $3::text, $4::text))
                         GROUP BY namespace, kind, name
                         ORDER BY namespace, kind, name
                         LIMIT $5",
                    &[&since, &ns, &kind, &name, &limit],
                )
                .await?)
        })?;
        let get = |e| self.op("read workload totals", e);
        rows.iter()
            .map(|r| {
                let count: String = r.try_get(4).map_err(get)?;
                Ok(WorkloadTotals {
                    workload: WorkloadRef {
                        namespace: r.try_get(0).map_err(get)?,
                        kind: r.try_get(1).map_err(get)?,
                        name: r.try_get(2).map_err(get)?,
                    },
                    destinations: unclamp(r.try_get(3).map_err(get)?),
                    count: count
                        .parse()
                        .map_err(|_| self.corrupt(format!("flows: a sum of counts {count:?}")))?,
                    first_seen: DateTime::from_timestamp_nanos(r.try_get(5).map_err(get)?),
                    last_seen: DateTime::from_timestamp_nanos(r.try_get(6).map_err(get)?),
                })
            })
            .collect()
    }

    fn prune(&self, before: DateTime<Utc>) -> Result<u64> {
        let before = self.time(before)?;
        self.write("prune", true, async |tx| {
            tx.execute(
                "DELETE FROM flow_names n USING flows f
                     WHERE (n.namespace, n.kind, n.name, n.dst, n.port, n.protocol)
                         = (f.namespace, f.kind, f.name, f.dst, f.port, f.protocol)
                       AND f.last_seen < $1",
                &[&before],
            )
            .await?;
            tx.execute(
                "DELETE FROM flow_pods n USING flows f
                     WHERE (n.namespace, n.kind, n.name, n.dst, n.port, n.protocol)
                         = (f.namespace, f.kind, f.name, f.dst, f.port, f.protocol)
                       AND f.last_seen < $1",
                &[&before],
            )
            .await?;
            let flows = tx
                .execute("DELETE FROM flows WHERE last_seen < $1", &[&before])
                .await?;
            tx.execute(
                "DELETE FROM dns_resolved r USING dns d
                     WHERE (r.namespace, r.kind, r.name, r.server, r.query)
                         = (d.namespace, d.kind, d.name, d.server, d.query)
                       AND d.last_seen < $1",
                &[&before],
            )
            .await?;
            // Addresses last seen before the cut go, whether or not their observation
            // stays; an observation that goes takes all of its addresses.
            tx.execute("DELETE FROM dns_addresses WHERE last_seen < $1", &[&before])
                .await?;
            tx.execute(
                "DELETE FROM dns_addresses a USING dns d
                     WHERE (a.namespace, a.kind, a.name, a.server, a.query)
                         = (d.namespace, d.kind, d.name, d.server, d.query)
                       AND d.last_seen < $1",
                &[&before],
            )
            .await?;
            let dns = tx
                .execute("DELETE FROM dns WHERE last_seen < $1", &[&before])
                .await?;
            tx.execute("DELETE FROM batches WHERE committed_at < $1", &[&before])
                .await?;
            tx.execute("DELETE FROM alerts WHERE last_seen < $1", &[&before])
                .await?;
            Ok(flows.saturating_add(dns))
        })
    }

    fn alerts(&self, namespace: Option<&str>) -> Result<Vec<AlertRecord>> {
        let mut out = self.read("read remembered alerts", async |tx| {
            let rows = tx
                .query(
                    "SELECT namespace, kind, name, dst, port, protocol, first_sent,
                             last_sent, last_seen, occurrences, detail
                         FROM alerts WHERE $1::text IS NULL OR namespace = $1",
                    &[&namespace],
                )
                .await?;
            rows.iter()
                .map(|r| self.alert_from_row(r))
                .collect::<std::result::Result<Vec<_>, _>>()
        })?;
        out.sort_by(|a, b| a.key().cmp(&b.key()));
        Ok(out)
    }

    fn remember_alerts(&self, records: &[AlertRecord]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.write("remember alerts", true, async |tx| {
            self.upsert_alerts(tx, records).await
        })
    }

    fn batch_ids(&self) -> Result<Vec<(BatchId, DateTime<Utc>)>> {
        self.read_batch_ids()
    }

    fn import(&self, data: &super::Export) -> Result<()> {
        let mut times = Vec::with_capacity(data.batches.len());
        for (_, at) in &data.batches {
            times.push(self.time(*at)?);
        }
        let times = &times;
        self.write("import", false, async |tx| {
            for ((id, _), at) in data.batches.iter().zip(times) {
                self.insert_batches(tx, &[id], *at).await?;
            }
            self.apply(tx, &[(&data.flows, &data.dns)]).await?;
            if !data.alerts.is_empty() {
                self.upsert_alerts(tx, &data.alerts).await?;
            }
            Ok(())
        })
    }
}
