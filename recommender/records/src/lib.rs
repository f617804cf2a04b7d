//! The contracts shared by `leash-agent` and `leash`, kept in one crate so the two sides cannot drift.
//!
//! - [`access`]: the Kubernetes API permissions each binary declares it uses.
//! - [`bounded`]: bounded reading of input files (line length, file size, file type).
//! - [`codec`]: the gRPC codec of `leash.v1` (prost, decoded from one contiguous slice).
//! - [`duration`]: the one duration grammar of every flag and query parameter, range-checked.
//! - [`error`]: [`Chain`](error::Chain), the one printer of an error and its causes (an
//!   error's message never includes its source; the printers print the chain).
//! - [`log`]: the one logging rule of both binaries (`LEASH_LOG`, else `RUST_LOG`, else `info`).
//! - [`names`]: which DNS names, Kubernetes names and label keys leash accepts.
//! - [`record`]: the v1 JSON-lines records (`kind: flow` and `kind: dns`) and a reader that
//!   names the file and line of every bad record.
//! - [`snapshot`]: a cluster snapshot, as `kubectl get … -A -o yaml` prints it, loaded into
//!   `k8s-openapi` types.
//! - [`time`]: the one RFC 3339 form of timestamps shown to people (reports, annotations, alerts).
//! - [`tls`]: rustls configurations for both ends of the gRPC stream (mTLS, reloaded from files).
//! - [`wire`]: the `leash.v1` gRPC messages, client and server, and their conversions to records.

pub mod access;
pub mod bounded;
pub mod codec;
pub mod duration;
pub mod error;
pub mod log;
pub mod names;
pub mod record;
pub mod snapshot;
pub mod time;
pub mod tls;
pub mod wire;

pub use record::{
    DnsAnswer, DnsRecord, FlowRecord, Located, Outcome, PodRef, Protocol, Record, RecordError,
    TimeError, check_flow_times, check_time, read_records, read_records_limited,
};
pub use snapshot::{Snapshot, SnapshotError};
