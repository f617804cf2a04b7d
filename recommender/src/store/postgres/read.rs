//! The PostgreSQL store's observation reads ([`Store::flows_in`], [`Store::dns_in`] and the
//! unscoped [`Store::flows`], [`Store::dns`]).
//!
//! - **Whole reads** (no `max`: `recommend`, `audit`, the shadow and map reads) stream each
//!   table once with a plain sequential scan, in no order: the observations, then their
//!   links (a flow's DNS names and pods; a DNS observation's answers and address history).
//!   Rows are decoded as they arrive, never collected. The observations are then sorted as
//!   the trait returns them, and each link row is attached to its observation by key: first
//!   where the previous link went or the next observation (links are stored in their batch's
//!   key order, so that is usually it), else by binary search. A link whose observation is
//!   not read (last seen before `since`) matches nothing and is dropped. The correlated
//!   subqueries this replaced (an index probe per observation and link table) and their
//!   `ORDER BY` cost the server more than the client's sort and search:
//!   `cargo bench -p leash --bench recommend_store` and the README.
//! - **Pages** (`max` bounded: the HTTP API) ask for the first `max` observations in key order
//!   with their links as arrays, in one query: an index scan and a probe per row returned,
//!   which is cheap for a page and does not read a whole subject's links.
//!
//! All queries of a read run in one repeatable-read transaction: one snapshot.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::pin::pin;

use chrono::DateTime;
use futures::TryStreamExt as _;
use leash_records::Protocol;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Transaction};

use super::{PostgresStore, ReadError, decode_chain, protocol_from_number, since_nanos, unclamp};
use crate::evidence::PodNames;
use crate::store::{
    AddressSeen, DnsObservation, FlowObservation, Result, Scope, Subject, WorkloadRef, dns_order,
    flow_order,
};

/// A flow's columns, first in every flow query (their indices are `flow_head`'s).
const FLOW_COLUMNS: &str = "t.namespace, t.kind, t.name, t.dst, t.port, t.protocol, t.count, \
    t.first_seen, t.last_seen, t.established, t.failed, t.pods";

/// A DNS observation's columns, first in every DNS query (their indices are `dns_head`'s).
const DNS_COLUMNS: &str =
    "t.namespace, t.kind, t.name, t.server, t.query, t.count, t.first_seen, t.last_seen";

/// A page of flows: `FLOW_COLUMNS`, then the names (12) and pods (13) as arrays.
const SELECT_FLOWS_PAGE: &str = r#"
    SELECT t.namespace, t.kind, t.name, t.dst, t.port, t.protocol, t.count, t.first_seen,
        t.last_seen, t.established, t.failed, t.pods,
        ARRAY(SELECT n.dns_name FROM flow_names n
              WHERE (n.namespace, n.kind, n.name, n.dst, n.port, n.protocol)
                  = (t.namespace, t.kind, t.name, t.dst, t.port, t.protocol)) AS names,
        ARRAY(SELECT p.pod FROM flow_pods p
              WHERE (p.namespace, p.kind, p.name, p.dst, p.port, p.protocol)
                  = (t.namespace, t.kind, t.name, t.dst, t.port, t.protocol)) AS pod_names
    FROM flows t WHERE t.last_seen >= $1"#;

/// A page of DNS observations: `DNS_COLUMNS`, then the answers (8, 9) and the address
/// history (10 to 14) as arrays.
const SELECT_DNS_PAGE: &str = r#"
    SELECT t.namespace, t.kind, t.name, t.server, t.query, t.count, t.first_seen, t.last_seen,
        ARRAY(SELECT r.answer FROM dns_resolved r
              WHERE (r.namespace, r.kind, r.name, r.server, r.query)
                  = (t.namespace, t.kind, t.name, t.server, t.query)
              ORDER BY r.answer, r.ip) AS answers,
        ARRAY(SELECT r.ip FROM dns_resolved r
              WHERE (r.namespace, r.kind, r.name, r.server, r.query)
                  = (t.namespace, t.kind, t.name, t.server, t.query)
              ORDER BY r.answer, r.ip) AS answer_ips,
        a.ips, a.firsts, a.lasts, a.ttls, a.chains
    FROM dns t
    CROSS JOIN LATERAL (
        SELECT coalesce(array_agg(x.ip ORDER BY x.ip), '{}') AS ips,
            coalesce(array_agg(x.first_seen ORDER BY x.ip), '{}') AS firsts,
            coalesce(array_agg(x.last_seen ORDER BY x.ip), '{}') AS lasts,
            coalesce(array_agg(x.ttl ORDER BY x.ip), '{}') AS ttls,
            coalesce(array_agg(x.chain ORDER BY x.ip), '{}') AS chains
        FROM dns_addresses x
        WHERE (x.namespace, x.kind, x.name, x.server, x.query)
            = (t.namespace, t.kind, t.name, t.server, t.query)
          AND x.last_seen >= $1
    ) a
    WHERE t.last_seen >= $1"#;

/// The `AND …` conditions (on `t`) and parameters of `subject`, numbered from `$first`.
fn subject_filter(subject: &Subject, first: usize) -> (String, Vec<&str>) {
    let (a, b, c) = (first, first + 1, first + 2);
    match subject {
        Subject::All => (String::new(), Vec::new()),
        Subject::Namespace(ns) => (format!(" AND t.namespace = ${a}"), vec![ns.as_str()]),
        Subject::Workload(w) => (
            format!(" AND t.namespace = ${a} AND t.kind = ${b} AND t.name = ${c}"),
            vec![w.namespace.as_str(), w.kind.as_str(), w.name.as_str()],
        ),
    }
}

/// Runs `sql` and hands each row to `each` as it arrives.
async fn each_row(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    mut each: impl FnMut(&Row) -> std::result::Result<(), ReadError>,
) -> std::result::Result<(), ReadError> {
    let rows = tx.query_raw(sql, params.iter().copied()).await?;
    let mut rows = pin!(rows);
    while let Some(row) = rows.try_next().await? {
        each(&row)?;
    }
    Ok(())
}

/// Finds link rows' observations in observations sorted by key: where the previous link
/// went or just after it (links come in their batch's key order), else by binary search.
#[derive(Default)]
struct Finder {
    last: usize,
}

impl Finder {
    /// The index of the item `cmp` (the item's key against the wanted one) finds equal.
    fn find<T>(&mut self, items: &[T], cmp: impl Fn(&T) -> Ordering) -> Option<usize> {
        let near = [self.last, self.last.saturating_add(1)];
        let found = match near
            .into_iter()
            .find(|&i| items.get(i).is_some_and(|x| cmp(x) == Ordering::Equal))
        {
            Some(i) => i,
            None => items.binary_search_by(&cmp).ok()?,
        };
        self.last = found;
        Some(found)
    }
}

/// The workload of a row's first three columns, borrowed from the row.
fn workload_key(r: &Row) -> std::result::Result<(&str, &str, &str), ReadError> {
    Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
}

fn workload_order(w: &WorkloadRef) -> (&str, &str, &str) {
    (&w.namespace, &w.kind, &w.name)
}

/// How many pods a flow stored with `total` pods has beyond its `named` ones.
fn pods_beyond_names(total: u64, named: &BTreeSet<String>) -> u64 {
    total.saturating_sub(u64::try_from(named.len()).unwrap_or(u64::MAX))
}

/// The DNS observation of a link row (its first five columns: the observation's key).
fn find_dns(
    finder: &mut Finder,
    out: &[DnsObservation],
    r: &Row,
) -> std::result::Result<Option<usize>, ReadError> {
    let key = (
        workload_key(r)?,
        r.try_get::<_, IpAddr>(3)?,
        r.try_get::<_, &str>(4)?,
    );
    Ok(finder.find(out, |d| {
        (workload_order(&d.workload), d.server, d.query.as_str()).cmp(&key)
    }))
}

impl PostgresStore {
    /// [`Store::flows_in`](crate::store::Store::flows_in).
    pub(super) fn read_flows(&self, scope: &Scope, max: usize) -> Result<Vec<FlowObservation>> {
        if max != usize::MAX {
            return self.flows_page(scope, max);
        }
        let since = since_nanos(scope.since);
        let (filter, args) = subject_filter(&scope.subject, 2);
        let flows_sql =
            format!("SELECT {FLOW_COLUMNS} FROM flows t WHERE t.last_seen >= $1{filter}");
        let (link_filter, link_args) = subject_filter(&scope.subject, 1);
        let link_sql = |table: &str, column: &str| {
            format!(
                "SELECT t.namespace, t.kind, t.name, t.dst, t.port, t.protocol, t.{column}
                 FROM {table} t WHERE true{link_filter}"
            )
        };
        let (names_sql, pods_sql) = (
            link_sql("flow_names", "dns_name"),
            link_sql("flow_pods", "pod"),
        );
        self.read("read flows", async |tx| {
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&since];
            params.extend(args.iter().map(|a| a as &(dyn ToSql + Sync)));
            let mut out = Vec::new();
            each_row(tx, &flows_sql, &params, |r| {
                out.push(self.flow_head(r)?);
                Ok(())
            })
            .await?;
            // In key order, so that links can be found by key.
            out.sort_unstable_by(|a, b| flow_order(a).cmp(&flow_order(b)));
            let link_params: Vec<&(dyn ToSql + Sync)> =
                link_args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
            for (sql, pods) in [(&names_sql, false), (&pods_sql, true)] {
                let mut finder = Finder::default();
                each_row(tx, sql, &link_params, |r| {
                    let Some((w, dst, port, protocol)) = self.flow_link_key(r)? else {
                        return Ok(());
                    };
                    let key = (w, dst, port, protocol);
                    let Some(i) = finder.find(&out, |f| {
                        (workload_order(&f.workload), f.dst, f.port, f.protocol).cmp(&key)
                    }) else {
                        return Ok(());
                    };
                    let value: String = r.try_get(6)?;
                    if let Some(f) = out.get_mut(i) {
                        if pods {
                            f.pods.names.insert(value);
                        } else {
                            f.names.insert(value);
                        }
                    }
                    Ok(())
                })
                .await?;
            }
            for f in &mut out {
                f.pods.more = pods_beyond_names(f.pods.more, &f.pods.names);
            }
            Ok(out)
        })
    }

    /// The first `max` flows of `scope` in key order, with their links, in one query.
    fn flows_page(&self, scope: &Scope, max: usize) -> Result<Vec<FlowObservation>> {
        let since = since_nanos(scope.since);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let (filter, args) = subject_filter(&scope.subject, 2);
        let sql = format!(
            "{SELECT_FLOWS_PAGE}{filter} ORDER BY t.namespace, t.kind, t.name, t.dst, t.port,
             t.protocol LIMIT {limit}"
        );
        let mut out = self.read("read flows", async |tx| {
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&since];
            params.extend(args.iter().map(|a| a as &(dyn ToSql + Sync)));
            let mut out = Vec::new();
            each_row(tx, &sql, &params, |r| {
                let mut f = self.flow_head(r)?;
                let names: Vec<String> = r.try_get(12)?;
                let pod_names: Vec<String> = r.try_get(13)?;
                f.names = names.into_iter().collect();
                f.pods.names = pod_names.into_iter().collect();
                f.pods.more = pods_beyond_names(f.pods.more, &f.pods.names);
                out.push(f);
                Ok(())
            })
            .await?;
            Ok(out)
        })?;
        out.sort_unstable_by(|a, b| flow_order(a).cmp(&flow_order(b)));
        Ok(out)
    }

    /// A flow of `FLOW_COLUMNS` without its links, its `pods.more` holding the stored count
    /// of pods until its pods' names are known ([`pods_beyond_names`]).
    fn flow_head(&self, r: &Row) -> std::result::Result<FlowObservation, ReadError> {
        let port: i32 = r.try_get(4)?;
        let proto: i16 = r.try_get(5)?;
        let port = u16::try_from(port)
            .map_err(|_| self.corrupt(format!("flows: port {port} out of range")))?;
        let protocol = protocol_from_number(proto)
            .ok_or_else(|| self.corrupt(format!("flows: unknown protocol number {proto}")))?;
        Ok(FlowObservation {
            workload: WorkloadRef {
                namespace: r.try_get(0)?,
                kind: r.try_get(1)?,
                name: r.try_get(2)?,
            },
            protocol,
            dst: r.try_get(3)?,
            port,
            count: unclamp(r.try_get(6)?),
            first_seen: DateTime::from_timestamp_nanos(r.try_get(7)?),
            last_seen: DateTime::from_timestamp_nanos(r.try_get(8)?),
            names: BTreeSet::new(),
            pods: PodNames {
                names: BTreeSet::new(),
                more: unclamp(r.try_get(11)?),
            },
            established: unclamp(r.try_get(9)?),
            failed: unclamp(r.try_get(10)?),
        })
    }

    /// The flow key of a link row (its first six columns), borrowed from the row; `None` for
    /// a key no flow can have (a port or protocol a flow would be refused for).
    #[expect(
        clippy::type_complexity,
        reason = "the key as `flow_order` orders it, borrowed"
    )]
    fn flow_link_key<'r>(
        &self,
        r: &'r Row,
    ) -> std::result::Result<Option<((&'r str, &'r str, &'r str), IpAddr, u16, Protocol)>, ReadError>
    {
        let port: i32 = r.try_get(4)?;
        let proto: i16 = r.try_get(5)?;
        let (Ok(port), Some(protocol)) = (u16::try_from(port), protocol_from_number(proto)) else {
            return Ok(None);
        };
        Ok(Some((workload_key(r)?, r.try_get(3)?, port, protocol)))
    }

    /// [`Store::dns_in`](crate::store::Store::dns_in).
    pub(super) fn read_dns(&self, scope: &Scope, max: usize) -> Result<Vec<DnsObservation>> {
        if max != usize::MAX {
            return self.dns_page(scope, max);
        }
        let since = since_nanos(scope.since);
        let (filter, args) = subject_filter(&scope.subject, 2);
        let dns_sql = format!("SELECT {DNS_COLUMNS} FROM dns t WHERE t.last_seen >= $1{filter}");
        let (link_filter, link_args) = subject_filter(&scope.subject, 1);
        let resolved_sql = format!(
            "SELECT t.namespace, t.kind, t.name, t.server, t.query, t.answer, t.ip
             FROM dns_resolved t WHERE true{link_filter}"
        );
        let addresses_sql = format!(
            "SELECT t.namespace, t.kind, t.name, t.server, t.query, t.ip, t.first_seen,
                 t.last_seen, t.ttl, t.chain
             FROM dns_addresses t WHERE t.last_seen >= $1{filter}"
        );
        self.read("read DNS observations", async |tx| {
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&since];
            params.extend(args.iter().map(|a| a as &(dyn ToSql + Sync)));
            let mut out = Vec::new();
            each_row(tx, &dns_sql, &params, |r| {
                out.push(self.dns_head(r)?);
                Ok(())
            })
            .await?;
            out.sort_unstable_by(|a, b| dns_order(a).cmp(&dns_order(b)));
            let link_params: Vec<&(dyn ToSql + Sync)> =
                link_args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
            let mut finder = Finder::default();
            each_row(tx, &resolved_sql, &link_params, |r| {
                if let Some(i) = find_dns(&mut finder, &out, r)?
                    && let Some(d) = out.get_mut(i)
                {
                    d.resolved.insert((r.try_get(5)?, r.try_get(6)?));
                }
                Ok(())
            })
            .await?;
            let mut finder = Finder::default();
            each_row(tx, &addresses_sql, &params, |r| {
                if let Some(i) = find_dns(&mut finder, &out, r)?
                    && let Some(d) = out.get_mut(i)
                {
                    let (ip, seen) = self.address_seen(
                        r.try_get(5)?,
                        r.try_get(6)?,
                        r.try_get(7)?,
                        r.try_get(8)?,
                        r.try_get(9)?,
                    )?;
                    d.addresses.insert(ip, seen);
                }
                Ok(())
            })
            .await?;
            Ok(out)
        })
    }

    /// The first `max` DNS observations of `scope` in key order, with their links, in one
    /// query.
    fn dns_page(&self, scope: &Scope, max: usize) -> Result<Vec<DnsObservation>> {
        let since = since_nanos(scope.since);
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let (filter, args) = subject_filter(&scope.subject, 2);
        let sql = format!(
            "{SELECT_DNS_PAGE}{filter} ORDER BY t.namespace, t.kind, t.name, t.server, t.query
             LIMIT {limit}"
        );
        let mut out = self.read("read DNS observations", async |tx| {
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&since];
            params.extend(args.iter().map(|a| a as &(dyn ToSql + Sync)));
            let mut out = Vec::new();
            each_row(tx, &sql, &params, |r| {
                let mut d = self.dns_head(r)?;
                let answers: Vec<String> = r.try_get(8)?;
                let answer_ips: Vec<IpAddr> = r.try_get(9)?;
                let ips: Vec<IpAddr> = r.try_get(10)?;
                let firsts: Vec<i64> = r.try_get(11)?;
                let lasts: Vec<i64> = r.try_get(12)?;
                let ttls: Vec<i64> = r.try_get(13)?;
                let chains: Vec<&[u8]> = r.try_get(14)?;
                for (i, ip) in ips.into_iter().enumerate() {
                    let (Some(first), Some(last), Some(ttl), Some(chain)) =
                        (firsts.get(i), lasts.get(i), ttls.get(i), chains.get(i))
                    else {
                        return Err(self
                            .corrupt("dns_addresses: columns of unequal lengths".into())
                            .into());
                    };
                    let (ip, seen) = self.address_seen(ip, *first, *last, *ttl, chain)?;
                    d.addresses.insert(ip, seen);
                }
                d.resolved = answers.into_iter().zip(answer_ips).collect();
                out.push(d);
                Ok(())
            })
            .await?;
            Ok(out)
        })?;
        out.sort_unstable_by(|a, b| dns_order(a).cmp(&dns_order(b)));
        Ok(out)
    }

    /// A DNS observation of `DNS_COLUMNS` without its answers and address history.
    fn dns_head(&self, r: &Row) -> std::result::Result<DnsObservation, ReadError> {
        Ok(DnsObservation {
            workload: WorkloadRef {
                namespace: r.try_get(0)?,
                kind: r.try_get(1)?,
                name: r.try_get(2)?,
            },
            server: r.try_get(3)?,
            query: r.try_get(4)?,
            count: unclamp(r.try_get(5)?),
            first_seen: DateTime::from_timestamp_nanos(r.try_get(6)?),
            last_seen: DateTime::from_timestamp_nanos(r.try_get(7)?),
            resolved: BTreeSet::new(),
            addresses: BTreeMap::new(),
        })
    }

    /// One address of a query's history, as stored.
    fn address_seen(
        &self,
        ip: IpAddr,
        first: i64,
        last: i64,
        ttl: i64,
        chain: &[u8],
    ) -> std::result::Result<(IpAddr, AddressSeen), ReadError> {
        let ttl = u32::try_from(ttl)
            .map_err(|_| self.corrupt(format!("dns_addresses: TTL {ttl} is out of range")))?;
        let chain = decode_chain(chain)
            .map_err(|what| self.corrupt(format!("dns_addresses: a CNAME chain {what}")))?;
        Ok((
            ip,
            AddressSeen {
                first_seen: DateTime::from_timestamp_nanos(first),
                last_seen: DateTime::from_timestamp_nanos(last),
                ttl,
                chain,
            },
        ))
    }
}
