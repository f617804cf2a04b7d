//! The PostgreSQL schema and its versioned migrations.
//!
//! Keys are the observations' own values rather than interned ids (as SQLite's are), so
//! that several replicas writing and pruning one database need no shared cache: a workload
//! is its (namespace, kind, name), an address an `inet`, a DNS name its text. Every text
//! column is `COLLATE "C"`, so that comparisons and `ORDER BY` are byte-wise, as Rust's
//! `String` order is, whatever the database's default collation. Times are nanoseconds since
//! the Unix epoch in `bigint` (as SQLite's: the same range, years 1677–2262), counts `bigint`
//! saturating at 2^63−1. A CNAME chain is `bytea`: the names, each followed by a zero byte,
//! so that `bytea`'s byte-wise order is the order of the names' lists (see
//! `super::UPSERT_ADDRESSES`).
//!
//! `leash_schema` holds one row per applied migration. [`super::PostgresStore::connect`]
//! applies the missing ones in one transaction under `pg_advisory_xact_lock`
//! ([`MIGRATION_LOCK`]): replicas starting at once wait for the first, then find the schema
//! current.

/// One schema migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// What it changes, for error messages.
    pub description: &'static str,
    /// The SQL (one or more statements).
    pub sql: &'static str,
}

/// The advisory lock key held while migrating (`'leash'` in ASCII).
pub const MIGRATION_LOCK: i64 = 0x006c_6561_7368;

/// Creates the migrations table; run under the lock before reading it.
pub const CREATE_VERSIONS: &str = "
    CREATE TABLE IF NOT EXISTS leash_schema (
        version integer PRIMARY KEY,
        description text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
    )";

/// The migrations, in order. Version 1 is the whole schema of SQLite's version 5 (flows,
/// DNS, batch ids, pods, alerts, address history); version 2 lets ingest updates be HOT.
/// Append; never edit a released one.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        description: "observations, batch ids, pods, alerts and DNS address history",
        sql: r#"
        CREATE TABLE batches (
            node text COLLATE "C" NOT NULL,
            boot_id text COLLATE "C" NOT NULL,
            seq bigint NOT NULL,
            committed_at bigint NOT NULL,
            PRIMARY KEY (node, boot_id, seq)
        );
        CREATE INDEX batches_committed_at ON batches (committed_at);
        CREATE TABLE flows (
            namespace text COLLATE "C" NOT NULL,
            kind text COLLATE "C" NOT NULL,
            name text COLLATE "C" NOT NULL,
            dst inet NOT NULL,
            port integer NOT NULL,
            protocol smallint NOT NULL,
            count bigint NOT NULL,
            first_seen bigint NOT NULL,
            last_seen bigint NOT NULL,
            established bigint NOT NULL,
            failed bigint NOT NULL,
            pods bigint NOT NULL,
            PRIMARY KEY (namespace, kind, name, dst, port, protocol)
        );
        CREATE INDEX flows_last_seen ON flows (last_seen);
        CREATE TABLE flow_names (
            namespace text COLLATE "C" NOT NULL,
            kind text COLLATE "C" NOT NULL,
            name text COLLATE "C" NOT NULL,
            dst inet NOT NULL,
            port integer NOT NULL,
            protocol smallint NOT NULL,
            dns_name text COLLATE "C" NOT NULL,
            PRIMARY KEY (namespace, kind, name, dst, port, protocol, dns_name)
        );
        CREATE TABLE flow_pods (
            namespace text COLLATE "C" NOT NULL,
            kind text COLLATE "C" NOT NULL,
            name text COLLATE "C" NOT NULL,
            dst inet NOT NULL,
            port integer NOT NULL,
            protocol smallint NOT NULL,
            pod text COLLATE "C" NOT NULL,
            PRIMARY KEY (namespace, kind, name, dst, port, protocol, pod)
        );
        CREATE TABLE dns (
            namespace text COLLATE "C" NOT NULL,
            kind text COLLATE "C" NOT NULL,
            name text COLLATE "C" NOT NULL,
            server inet NOT NULL,
            query text COLLATE "C" NOT NULL,
            count bigint NOT NULL,
            first_seen bigint NOT NULL,
            last_seen bigint NOT NULL,
            PRIMARY KEY (namespace, kind, name, server, query)
        );
        CREATE INDEX dns_last_seen ON dns (last_seen);
        CREATE TABLE dns_resolved (
            namespace text COLLATE "C" NOT NULL,
            kind text COLLATE "C" NOT NULL,
            name text COLLATE "C" NOT NULL,
            server inet NOT NULL,
            query text COLLATE "C" NOT NULL,
            answer text COLLATE "C" NOT NULL,
            ip inet NOT NULL,
            PRIMARY KEY (namespace, kind, name, server, query, answer, ip)
        );
        CREATE TABLE dns_addresses (
            namespace text COLLATE "C" NOT NULL,
            kind text COLLATE "C" NOT NULL,
            name text COLLATE "C" NOT NULL,
            server inet NOT NULL,
            query text COLLATE "C" NOT NULL,
            ip inet NOT NULL,
            first_seen bigint NOT NULL,
            last_seen bigint NOT NULL,
            ttl bigint NOT NULL,
            chain bytea NOT NULL,
            PRIMARY KEY (namespace, kind, name, server, query, ip)
        );
        CREATE INDEX dns_addresses_last_seen ON dns_addresses (last_seen);
        CREATE TABLE alerts (
            namespace text COLLATE "C" NOT NULL,
            kind text COLLATE "C" NOT NULL,
            name text COLLATE "C" NOT NULL,
            dst inet NOT NULL,
            port integer NOT NULL,
            protocol smallint NOT NULL,
            first_sent bigint NOT NULL,
            last_sent bigint NOT NULL,
            last_seen bigint NOT NULL,
            occurrences bigint NOT NULL,
            detail text NOT NULL,
            PRIMARY KEY (namespace, kind, name, dst, port, protocol)
        );
        CREATE INDEX alerts_last_seen ON alerts (last_seen);
    "#,
    },
    Migration {
        description: "HOT updates of observations: no last_seen index, fillfactor 70",
        // Every ingest upsert changes `last_seen`; while it is indexed no update can be HOT
        // (heap-only: no index entry written), so each one wrote a new entry in the primary
        // key and in the `last_seen` index. Reads by `since` keep most rows anyway and scan;
        // hourly retention scans once. Free room on each page lets the new row version stay on
        // its page (existing pages get it as they are rewritten). Idempotent, and replicas
        // starting at once run it once, under the migration lock.
        sql: r#"
        DROP INDEX IF EXISTS flows_last_seen;
        DROP INDEX IF EXISTS dns_last_seen;
        DROP INDEX IF EXISTS dns_addresses_last_seen;
        ALTER TABLE flows SET (fillfactor = 70);
        ALTER TABLE dns SET (fillfactor = 70);
        ALTER TABLE dns_addresses SET (fillfactor = 70);
    "#,
    },
];

/// The schema version this build writes: the number of [`MIGRATIONS`].
pub fn schema_version() -> i64 {
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}
