//! The PostgreSQL store's write path: a group commit's batch ids, observations and alerts.
//!
//! A group (`Store::commit_many`) is one transaction, and its new batches' observations go
//! out as ONE set of statements, not one per batch: the rows of every stored batch of the
//! group are merged by key first (sums saturate, first seen is the earliest, last seen the
//! latest, names and addresses merge as the model merges them), which is what applying the
//! batches one after the other would store, with fewer rows and statements. Each statement
//! is a multi-row `INSERT … SELECT FROM unnest($1, …) ON CONFLICT`, in key order so that
//! concurrent replicas lock rows in the same order.
//!
//! The name and pod links of flows are not probed row by row: one statement reads the links
//! each flow of the group already has (one index range scan per flow), the new links are
//! computed here, and only those are inserted (usually few: keys repeat). A flow names at
//! most [`PodNames::MAX`] pods, the first seen (batch by batch, by name within a batch),
//! exactly as the SQLite store and the batch-by-batch statements do: see [`pod_links`].
//! The flows upsert runs first and locks the group's flow rows, so that replicas writing the
//! same flow read its links one after the other.
//!
//! `COPY … FROM STDIN BINARY` into a temporary staging table, then `INSERT … SELECT … ON
//! CONFLICT`, is the other way to send the flows ([`PostgresStore::set_copy_upserts`], for
//! the ingest benchmark, which measures both in one run; `unnest` is the default, see the
//! README's benchmarks).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use leash_records::Protocol;
use tokio_postgres::Transaction;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::{
    AddressSeen, AlertRecord, BatchId, DnsObservation, Error, FlowObservation, PostgresStore,
    ReadError, WorkloadRef, clamp, encode_chain, protocol_number,
};
use crate::evidence::PodNames;

/// Merges a DNS observation's addresses into their history as `AddressSeen::merge` does:
/// the earliest first seen, the latest last seen, and the TTL and chain of the later sighting
/// (on equal last seen, of the larger (TTL, chain)). PostgreSQL evaluates every `SET` on the
/// row as it was, so both `CASE`s compare the same values; row comparison is lexicographic,
/// `bigint` compares as Rust's integers and `bytea` byte-wise, as the encoded chains'
/// `Vec<String>` order (`schema.rs`).
pub const UPSERT_ADDRESSES: &str = r#"
    INSERT INTO dns_addresses AS d (namespace, kind, name, server, query, ip, first_seen,
        last_seen, ttl, chain)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::inet[], $5::text[],
        $6::inet[], $7::int8[], $8::int8[], $9::int8[], $10::bytea[])
    ON CONFLICT (namespace, kind, name, server, query, ip) DO UPDATE SET
        first_seen = least(d.first_seen, excluded.first_seen),
        last_seen = greatest(d.last_seen, excluded.last_seen),
        ttl = CASE WHEN (excluded.last_seen, excluded.ttl, excluded.chain)
                > (d.last_seen, d.ttl, d.chain) THEN excluded.ttl ELSE d.ttl END,
        chain = CASE WHEN (excluded.last_seen, excluded.ttl, excluded.chain)
                > (d.last_seen, d.ttl, d.chain) THEN excluded.chain ELSE d.chain END"#;

/// What a flows upsert does with a stored row (shared by the `unnest` and `COPY` forms).
const ON_FLOW_CONFLICT: &str = r#"
    ON CONFLICT (namespace, kind, name, dst, port, protocol) DO UPDATE SET
        count = CASE WHEN f.count > 9223372036854775807 - excluded.count
            THEN 9223372036854775807 ELSE f.count + excluded.count END,
        first_seen = least(f.first_seen, excluded.first_seen),
        last_seen = greatest(f.last_seen, excluded.last_seen),
        established = CASE WHEN f.established > 9223372036854775807 - excluded.established
            THEN 9223372036854775807 ELSE f.established + excluded.established END,
        failed = CASE WHEN f.failed > 9223372036854775807 - excluded.failed
            THEN 9223372036854775807 ELSE f.failed + excluded.failed END,
        pods = greatest(f.pods, excluded.pods)"#;

const UPSERT_FLOWS: &str = r#"
    INSERT INTO flows AS f (namespace, kind, name, dst, port, protocol, count, first_seen,
        last_seen, established, failed, pods)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::inet[], $5::int4[],
        $6::int2[], $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[])"#;

/// The staging table of the `COPY` form: one per connection, emptied at each commit.
const CREATE_FLOW_STAGE: &str = r#"
    CREATE TEMPORARY TABLE IF NOT EXISTS leash_flow_stage (
        namespace text COLLATE "C" NOT NULL, kind text COLLATE "C" NOT NULL,
        name text COLLATE "C" NOT NULL, dst inet NOT NULL, port integer NOT NULL,
        protocol smallint NOT NULL, count bigint NOT NULL, first_seen bigint NOT NULL,
        last_seen bigint NOT NULL, established bigint NOT NULL, failed bigint NOT NULL,
        pods bigint NOT NULL
    ) ON COMMIT DELETE ROWS"#;

const COPY_FLOW_STAGE: &str = "COPY leash_flow_stage (namespace, kind, name, dst, port, \
    protocol, count, first_seen, last_seen, established, failed, pods) FROM STDIN BINARY";

const UPSERT_FLOWS_FROM_STAGE: &str = r#"
    INSERT INTO flows AS f (namespace, kind, name, dst, port, protocol, count, first_seen,
        last_seen, established, failed, pods)
    SELECT * FROM leash_flow_stage"#;

/// The name and pod links each flow has: one row per given flow, by its 1-based position.
const SELECT_FLOW_LINKS: &str = r#"
    SELECT k.i::int8,
        ARRAY(SELECT n.dns_name FROM flow_names n
              WHERE (n.namespace, n.kind, n.name, n.dst, n.port, n.protocol)
                  = (k.namespace, k.kind, k.name, k.dst, k.port, k.protocol)) AS names,
        ARRAY(SELECT p.pod FROM flow_pods p
              WHERE (p.namespace, p.kind, p.name, p.dst, p.port, p.protocol)
                  = (k.namespace, k.kind, k.name, k.dst, k.port, k.protocol)) AS pods
    FROM unnest($1::text[], $2::text[], $3::text[], $4::inet[], $5::int4[], $6::int2[])
        WITH ORDINALITY AS k (namespace, kind, name, dst, port, protocol, i)"#;

/// New links only; another replica may have added the same one since they were read.
const INSERT_FLOW_NAMES: &str = r#"
    INSERT INTO flow_names (namespace, kind, name, dst, port, protocol, dns_name)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::inet[], $5::int4[],
        $6::int2[], $7::text[])
    ON CONFLICT DO NOTHING"#;

const INSERT_FLOW_PODS: &str = r#"
    INSERT INTO flow_pods (namespace, kind, name, dst, port, protocol, pod)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::inet[], $5::int4[],
        $6::int2[], $7::text[])
    ON CONFLICT DO NOTHING"#;

/// Raises a full flow's count of pods to a lower bound of the pods it could not name.
const RAISE_FLOW_PODS: &str = r#"
    UPDATE flows f SET pods = greatest(f.pods, r.pods)
    FROM unnest($1::text[], $2::text[], $3::text[], $4::inet[], $5::int4[], $6::int2[],
        $7::int8[]) AS r (namespace, kind, name, dst, port, protocol, pods)
    WHERE (f.namespace, f.kind, f.name, f.dst, f.port, f.protocol)
        = (r.namespace, r.kind, r.name, r.dst, r.port, r.protocol)"#;

const UPSERT_DNS: &str = r#"
    INSERT INTO dns AS d (namespace, kind, name, server, query, count, first_seen, last_seen)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::inet[], $5::text[],
        $6::int8[], $7::int8[], $8::int8[])
    ON CONFLICT (namespace, kind, name, server, query) DO UPDATE SET
        count = CASE WHEN d.count > 9223372036854775807 - excluded.count
            THEN 9223372036854775807 ELSE d.count + excluded.count END,
        first_seen = least(d.first_seen, excluded.first_seen),
        last_seen = greatest(d.last_seen, excluded.last_seen)"#;

const INSERT_RESOLVED: &str = r#"
    INSERT INTO dns_resolved (namespace, kind, name, server, query, answer, ip)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::inet[], $5::text[],
        $6::text[], $7::inet[])
    ON CONFLICT DO NOTHING"#;

/// Batch ids, the new ones returned.
const INSERT_BATCHES: &str = r#"
    INSERT INTO batches (node, boot_id, seq, committed_at)
    SELECT b.node, b.boot_id, b.seq, $4 FROM unnest($1::text[], $2::text[], $3::int8[])
        AS b (node, boot_id, seq)
    ON CONFLICT DO NOTHING
    RETURNING node, boot_id, seq"#;

const UPSERT_ALERTS: &str = r#"
    INSERT INTO alerts (namespace, kind, name, dst, port, protocol, first_sent,
        last_sent, last_seen, occurrences, detail)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::inet[],
        $5::int4[], $6::int2[], $7::int8[], $8::int8[], $9::int8[], $10::int8[],
        $11::text[])
    ON CONFLICT (namespace, kind, name, dst, port, protocol) DO UPDATE SET
        first_sent = excluded.first_sent, last_sent = excluded.last_sent,
        last_seen = excluded.last_seen, occurrences = excluded.occurrences,
        detail = excluded.detail"#;

/// The key columns of a workload, as parameter arrays.
#[derive(Default)]
struct WorkloadCols<'a> {
    namespace: Vec<&'a str>,
    kind: Vec<&'a str>,
    name: Vec<&'a str>,
}

impl<'a> WorkloadCols<'a> {
    fn push(&mut self, w: &'a WorkloadRef) {
        self.namespace.push(&w.namespace);
        self.kind.push(&w.kind);
        self.name.push(&w.name);
    }
}

/// The key columns of flows, as parameter arrays.
#[derive(Default)]
struct FlowKeyCols<'a> {
    w: WorkloadCols<'a>,
    dst: Vec<IpAddr>,
    port: Vec<i32>,
    proto: Vec<i16>,
}

impl<'a> FlowKeyCols<'a> {
    fn push(&mut self, (wl, ip, port, proto): &FlowKey<'a>) {
        self.w.push(wl);
        self.dst.push(*ip);
        self.port.push(i32::from(*port));
        self.proto.push(protocol_number(*proto));
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 6] {
        [
            &self.w.namespace,
            &self.w.kind,
            &self.w.name,
            &self.dst,
            &self.port,
            &self.proto,
        ]
    }

    fn is_empty(&self) -> bool {
        self.dst.is_empty()
    }
}

/// Flow keys with one more text column (a DNS name or a pod) or number, as parameter arrays.
#[derive(Default)]
struct FlowLinkCols<'a, T> {
    keys: FlowKeyCols<'a>,
    value: Vec<T>,
}

impl<'a, T: ToSql + Sync> FlowLinkCols<'a, T> {
    fn push(&mut self, key: &FlowKey<'a>, value: T) {
        self.keys.push(key);
        self.value.push(value);
    }

    async fn execute(&self, tx: &Transaction<'_>, sql: &str) -> Result<(), ReadError> {
        if self.keys.is_empty() {
            return Ok(());
        }
        let [a, b, c, d, e, f] = self.keys.params();
        tx.execute(sql, &[a, b, c, d, e, f, &self.value]).await?;
        Ok(())
    }
}

type FlowKey<'a> = (&'a WorkloadRef, IpAddr, u16, Protocol);
type DnsKey<'a> = (&'a WorkloadRef, IpAddr, &'a str);

/// One flow observation merged from a group's rows of the same key.
struct FlowAgg<'a> {
    count: u64,
    first: i64,
    last: i64,
    established: u64,
    failed: u64,
    pods: u64,
    names: BTreeSet<&'a str>,
    /// (the batch's position in the group, a pod it names)
    pod_names: BTreeSet<(usize, &'a str)>,
}

/// One DNS observation merged from a group's rows of the same key.
struct DnsAgg<'a> {
    count: u64,
    first: i64,
    last: i64,
    resolved: BTreeSet<(&'a str, IpAddr)>,
    addresses: BTreeMap<IpAddr, AddressSeen>,
}

/// A flow's pod links after a group, as committing its batches one by one stores them: the
/// pods of `seen` (batch position, name) that `have` lacks are linked in order of first
/// batch, by name within a batch, while the flow names fewer than `max`; a batch with pods
/// that find no room raises the flow's count of pods to `max` plus their number (a lower
/// bound: they are distinct and unnamed). Returns the pods to link and the raised count, if
/// any.
pub(super) fn pod_links<'a>(
    have: &BTreeSet<&str>,
    seen: &BTreeSet<(usize, &'a str)>,
    max: usize,
) -> (Vec<&'a str>, Option<u64>) {
    let mut room = max.saturating_sub(have.len());
    let mut linked: BTreeSet<&str> = BTreeSet::new();
    let mut unnamed: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    for (_, pod) in seen {
        if have.contains(pod) || linked.contains(pod) || unnamed.contains(pod) {
            continue;
        }
        if room > 0 {
            room -= 1;
            linked.insert(pod);
            out.push(*pod);
        } else {
            unnamed.insert(pod);
        }
    }
    // Per batch, its pods that found no room (a pod unnamed at its first batch stays
    // unnamed: the flow was full then and stays full).
    let mut per_batch: BTreeMap<usize, u64> = BTreeMap::new();
    for (batch, pod) in seen {
        if unnamed.contains(pod) {
            *per_batch.entry(*batch).or_default() += 1;
        }
    }
    let raised = per_batch
        .values()
        .max()
        .map(|n| u64::try_from(max).unwrap_or(u64::MAX).saturating_add(*n));
    (out, raised)
}

impl PostgresStore {
    /// Whether flows go out by `COPY` into a staging table (`true`) or as one `unnest`
    /// upsert (`false`, the default). For the ingest benchmark, which compares both.
    #[doc(hidden)]
    pub fn set_copy_upserts(&self, copy: bool) {
        self.copy_upserts.store(copy, Ordering::Relaxed);
    }

    /// Inserts the batch ids of a group committed at `at`; `true` for each new one, in
    /// order (an id given twice is new at its first place only).
    pub(super) async fn insert_batches(
        &self,
        tx: &Transaction<'_>,
        ids: &[&BatchId],
        at: i64,
    ) -> Result<Vec<bool>, ReadError> {
        let mut distinct: BTreeMap<(&str, &str, i64), bool> = BTreeMap::new();
        let mut keys = Vec::with_capacity(ids.len());
        for id in ids {
            let seq = i64::try_from(id.seq).map_err(|_| Error::Invalid {
                path: self.shown.clone(),
                what: format!("batch sequence number {} exceeds 2^63-1", id.seq),
            })?;
            let key = (id.node.as_str(), id.boot_id.as_str(), seq);
            distinct.insert(key, false);
            keys.push(key);
        }
        let (mut node, mut boot, mut seq) = (Vec::new(), Vec::new(), Vec::new());
        for (n, b, s) in distinct.keys() {
            node.push(*n);
            boot.push(*b);
            seq.push(*s);
        }
        let rows = tx.query(INSERT_BATCHES, &[&node, &boot, &seq, &at]).await?;
        for r in &rows {
            let key: (&str, &str, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            if let Some(new) = distinct.get_mut(&key) {
                *new = true;
            }
        }
        Ok(keys
            .iter()
            .map(|k| distinct.get_mut(k).is_some_and(std::mem::take))
            .collect())
    }

    /// Applies the observations of a group's new batches, in order, inside `tx` (their ids
    /// are the caller's): one set of statements for all of them.
    pub(super) async fn apply(
        &self,
        tx: &Transaction<'_>,
        batches: &[(&[FlowObservation], &[DnsObservation])],
    ) -> Result<(), ReadError> {
        self.apply_flows(tx, batches).await?;
        self.apply_dns(tx, batches).await
    }

    async fn apply_flows(
        &self,
        tx: &Transaction<'_>,
        batches: &[(&[FlowObservation], &[DnsObservation])],
    ) -> Result<(), ReadError> {
        // Rows of one key merged first (one statement cannot update a row twice), in key
        // order (replicas lock rows in the same order).
        let mut fl: BTreeMap<FlowKey<'_>, FlowAgg<'_>> = BTreeMap::new();
        for (b, (flows, _)) in batches.iter().enumerate() {
            for f in *flows {
                let first = self.time(f.first_seen)?;
                let last = self.time(f.last_seen)?;
                let key = (&f.workload, f.dst.to_canonical(), f.port, f.protocol);
                let agg = fl.entry(key).or_insert_with(|| FlowAgg {
                    count: 0,
                    first,
                    last,
                    established: 0,
                    failed: 0,
                    pods: 0,
                    names: BTreeSet::new(),
                    pod_names: BTreeSet::new(),
                });
                agg.count = agg.count.saturating_add(f.count);
                agg.first = agg.first.min(first);
                agg.last = agg.last.max(last);
                agg.established = agg.established.saturating_add(f.established);
                agg.failed = agg.failed.saturating_add(f.failed);
                agg.pods = agg.pods.max(f.pods.total());
                agg.names.extend(f.names.iter().map(String::as_str));
                agg.pod_names
                    .extend(f.pods.names.iter().map(|p| (b, p.as_str())));
            }
        }
        if fl.is_empty() {
            return Ok(());
        }
        self.upsert_flows(tx, &fl).await?;

        // The links the flows with names or pods have (read after the upsert locked them).
        let linked: Vec<(&FlowKey<'_>, &FlowAgg<'_>)> = fl
            .iter()
            .filter(|(_, a)| !a.names.is_empty() || !a.pod_names.is_empty())
            .collect();
        if linked.is_empty() {
            return Ok(());
        }
        let mut keys = FlowKeyCols::default();
        for (k, _) in &linked {
            keys.push(k);
        }
        let rows = tx.query(SELECT_FLOW_LINKS, &keys.params()).await?;
        let mut have: Vec<(Vec<String>, Vec<String>)> = vec![Default::default(); linked.len()];
        for r in &rows {
            let i: i64 = r.try_get(0)?;
            let slot = usize::try_from(i)
                .ok()
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| have.get_mut(i))
                .ok_or_else(|| self.corrupt(format!("flow links: row {i} of {}", linked.len())))?;
            *slot = (r.try_get(1)?, r.try_get(2)?);
        }
        let mut names: FlowLinkCols<'_, &str> = FlowLinkCols::default();
        let mut pods: FlowLinkCols<'_, &str> = FlowLinkCols::default();
        let mut raised: FlowLinkCols<'_, i64> = FlowLinkCols::default();
        for ((key, agg), (have_names, have_pods)) in linked.iter().zip(&have) {
            let have_names: BTreeSet<&str> = have_names.iter().map(String::as_str).collect();
            for n in &agg.names {
                if !have_names.contains(n) {
                    names.push(key, *n);
                }
            }
            let have_pods: BTreeSet<&str> = have_pods.iter().map(String::as_str).collect();
            let (new, more) = pod_links(&have_pods, &agg.pod_names, PodNames::MAX);
            for p in new {
                pods.push(key, p);
            }
            if let Some(n) = more {
                raised.push(key, clamp(n));
            }
        }
        names.execute(tx, INSERT_FLOW_NAMES).await?;
        pods.execute(tx, INSERT_FLOW_PODS).await?;
        raised.execute(tx, RAISE_FLOW_PODS).await
    }

    /// The flows upsert, by `unnest` or by `COPY` ([`Self::set_copy_upserts`]).
    async fn upsert_flows(
        &self,
        tx: &Transaction<'_>,
        fl: &BTreeMap<FlowKey<'_>, FlowAgg<'_>>,
    ) -> Result<(), ReadError> {
        if self.copy_upserts.load(Ordering::Relaxed) {
            tx.batch_execute(CREATE_FLOW_STAGE).await?;
            let sink = tx.copy_in(COPY_FLOW_STAGE).await?;
            let types = [
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::INET,
                Type::INT4,
                Type::INT2,
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::INT8,
            ];
            let writer = BinaryCopyInWriter::new(sink, &types);
            let mut writer = std::pin::pin!(writer);
            for ((wl, ip, p, pr), a) in fl {
                let (port, proto) = (i32::from(*p), protocol_number(*pr));
                let (count, est, failed, pods) = (
                    clamp(a.count),
                    clamp(a.established),
                    clamp(a.failed),
                    clamp(a.pods),
                );
                let row: [&(dyn ToSql + Sync); 12] = [
                    &wl.namespace,
                    &wl.kind,
                    &wl.name,
                    ip,
                    &port,
                    &proto,
                    &count,
                    &a.first,
                    &a.last,
                    &est,
                    &failed,
                    &pods,
                ];
                writer.as_mut().write(&row).await?;
            }
            writer.finish().await?;
            // A new staging table's heap is read in the order it was written: key order.
            tx.execute(
                &format!("{UPSERT_FLOWS_FROM_STAGE} {ON_FLOW_CONFLICT}"),
                &[],
            )
            .await?;
            return Ok(());
        }
        let mut keys = FlowKeyCols::default();
        let (mut count, mut first, mut last) = (Vec::new(), Vec::new(), Vec::new());
        let (mut est, mut failed, mut pods) = (Vec::new(), Vec::new(), Vec::new());
        for (key, a) in fl {
            keys.push(key);
            count.push(clamp(a.count));
            first.push(a.first);
            last.push(a.last);
            est.push(clamp(a.established));
            failed.push(clamp(a.failed));
            pods.push(clamp(a.pods));
        }
        let [a, b, c, d, e, f] = keys.params();
        tx.execute(
            &format!("{UPSERT_FLOWS} {ON_FLOW_CONFLICT}"),
            &[
                a, b, c, d, e, f, &count, &first, &last, &est, &failed, &pods,
            ],
        )
        .await?;
        Ok(())
    }

    async fn apply_dns(
        &self,
        tx: &Transaction<'_>,
        batches: &[(&[FlowObservation], &[DnsObservation])],
    ) -> Result<(), ReadError> {
        let mut dn: BTreeMap<DnsKey<'_>, DnsAgg<'_>> = BTreeMap::new();
        for d in batches.iter().flat_map(|(_, dns)| *dns) {
            let first = self.time(d.first_seen)?;
            let last = self.time(d.last_seen)?;
            let agg = dn
                .entry((&d.workload, d.server, d.query.as_str()))
                .or_insert_with(|| DnsAgg {
                    count: 0,
                    first,
                    last,
                    resolved: BTreeSet::new(),
                    addresses: BTreeMap::new(),
                });
            agg.count = agg.count.saturating_add(d.count);
            agg.first = agg.first.min(first);
            agg.last = agg.last.max(last);
            agg.resolved
                .extend(d.resolved.iter().map(|(n, ip)| (n.as_str(), *ip)));
            for (ip, seen) in &d.addresses {
                // The model's own merge for duplicates within the group.
                match agg.addresses.get_mut(ip) {
                    Some(a) => a.merge(seen),
                    None => {
                        agg.addresses.insert(*ip, seen.clone());
                    }
                }
            }
        }
        if dn.is_empty() {
            return Ok(());
        }
        let mut w = WorkloadCols::default();
        let (mut server, mut query, mut count, mut first, mut last) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut rw = WorkloadCols::default();
        let (mut rserver, mut rquery, mut ranswer, mut rip) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut aw = WorkloadCols::default();
        let (mut aserver, mut aquery, mut aip) = (Vec::new(), Vec::new(), Vec::new());
        let (mut afirst, mut alast, mut attl, mut achain) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for ((wl, srv, q), a) in &dn {
            w.push(wl);
            server.push(*srv);
            query.push(*q);
            count.push(clamp(a.count));
            first.push(a.first);
            last.push(a.last);
            for (n, ip) in &a.resolved {
                rw.push(wl);
                rserver.push(*srv);
                rquery.push(*q);
                ranswer.push(*n);
                rip.push(*ip);
            }
            for (ip, seen) in &a.addresses {
                aw.push(wl);
                aserver.push(*srv);
                aquery.push(*q);
                aip.push(*ip);
                afirst.push(self.time(seen.first_seen)?);
                alast.push(self.time(seen.last_seen)?);
                attl.push(i64::from(seen.ttl));
                achain.push(encode_chain(&seen.chain).map_err(|what| Error::Invalid {
                    path: self.shown.clone(),
                    what,
                })?);
            }
        }
        tx.execute(
            UPSERT_DNS,
            &[
                &w.namespace,
                &w.kind,
                &w.name,
                &server,
                &query,
                &count,
                &first,
                &last,
            ],
        )
        .await?;
        if !ranswer.is_empty() {
            tx.execute(
                INSERT_RESOLVED,
                &[
                    &rw.namespace,
                    &rw.kind,
                    &rw.name,
                    &rserver,
                    &rquery,
                    &ranswer,
                    &rip,
                ],
            )
            .await?;
        }
        if !aip.is_empty() {
            tx.execute(
                UPSERT_ADDRESSES,
                &[
                    &aw.namespace,
                    &aw.kind,
                    &aw.name,
                    &aserver,
                    &aquery,
                    &aip,
                    &afirst,
                    &alast,
                    &attl,
                    &achain,
                ],
            )
            .await?;
        }
        Ok(())
    }

    pub(super) async fn upsert_alerts(
        &self,
        tx: &Transaction<'_>,
        records: &[AlertRecord],
    ) -> Result<(), ReadError> {
        // The last record of a key wins, as one replacing upsert after the other would.
        let mut by_key: BTreeMap<FlowKey<'_>, &AlertRecord> = BTreeMap::new();
        for a in records {
            by_key.insert((&a.workload, a.dst.to_canonical(), a.port, a.protocol), a);
        }
        let mut keys = FlowKeyCols::default();
        let (mut fs, mut ls, mut seen, mut occ, mut detail) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (key, a) in &by_key {
            keys.push(key);
            fs.push(self.time(a.first_sent)?);
            ls.push(self.time(a.last_sent)?);
            seen.push(self.time(a.last_seen)?);
            occ.push(clamp(a.occurrences));
            detail.push(a.detail.as_str());
        }
        let [a, b, c, d, e, f] = keys.params();
        tx.execute(
            UPSERT_ALERTS,
            &[a, b, c, d, e, f, &fs, &ls, &seen, &occ, &detail],
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::pod_links;
    use std::collections::BTreeSet;

    fn set<'a>(v: &[&'a str]) -> BTreeSet<&'a str> {
        v.iter().copied().collect()
    }

    #[test]
    fn pods_fill_the_room_by_first_batch_then_name() {
        let seen: BTreeSet<(usize, &str)> =
            [(0, "c"), (0, "d"), (1, "a"), (1, "c"), (1, "e")].into();
        // Room for 3: batch 0's c, d, then batch 1's smallest new name, a; e finds no room.
        let (new, raised) = pod_links(&set(&["x"]), &seen, 4);
        assert_eq!(new, ["c", "d", "a"]);
        assert_eq!(raised, Some(5));
    }

    #[test]
    fn a_full_flow_counts_each_batch_unnamed_pods_and_keeps_the_largest() {
        let seen: BTreeSet<(usize, &str)> =
            [(0, "p"), (0, "q"), (1, "p"), (1, "r"), (1, "s"), (2, "a")].into();
        let (new, raised) = pod_links(&set(&["m", "n"]), &seen, 2);
        assert!(new.is_empty());
        // Batch 1 has three unnamed pods (p again, r, s): as committed alone, it raises the
        // count to 2 + 3.
        assert_eq!(raised, Some(5));
        // Already linked pods are neither linked again nor counted.
        let (new, raised) = pod_links(&set(&["p", "q"]), &seen, 8);
        assert_eq!(new, ["r", "s", "a"]);
        assert_eq!(raised, None);
    }
}
